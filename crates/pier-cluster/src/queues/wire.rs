//! The message path's frames, sans I/O: what goes over a connection's lane between the node a
//! client is on and a queue's home node.
//!
//! ```text
//!  lane frame payload: u8 op | fields (big-endian; str: u32 len + UTF-8; bytes: u32 len)
//!  message: u8 len + exchange | u8 len + routing key | bytes properties (AMQP) | bytes body
//!
//!  client node ─► home node              home node ─► client node
//!  1 Publish  seq vhost queue message    9  Deliver   consumer offset flags stamp message
//!  2 Settle   vhost queue how offsets    10 Cancelled consumer
//!  3 Credit   consumer count bytes       11 Confirms  (seq, ok)*
//!  4 Consume  req consumer vhost queue   12 Reply     req reply
//!             spec
//!  5 Cancel   req consumer
//!  6 Get      req vhost queue ack
//!  7 Purge    req vhost queue
//!  8 Stats    req vhost queue touch
//!  13 StatsAll req (every queue homed there: management's figures)
//!
//!  quorum queue leader ─► member node
//!  16 QuorumDeliveries vhost queue term u32 n, n × (consumer offset flags stamp message)
//!  15 QuorumCancelled  vhost queue consumer
//!  (14, one delivery without the count, is still read)
//! ```
//!
//! Bodies and properties travel as they are (the publisher's property bytes are kept, as
//! the store keeps them), and are sliced, not copied, out of the received frame.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pier_broker::persist::{from_stored, to_stored};
use pier_broker::{Message, QueueCountersSnapshot, QueueStats, RemoteConsumer, Settlement};
use pier_store::StoredMessage;
use pier_wire::{FieldTable, ShortString};

use crate::transport::frame::{self, FrameError, Kind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("lane frame ends early")]
    Short,
    #[error("unknown lane op {0}")]
    UnknownOp(u8),
    #[error("lane frame: {0}")]
    Invalid(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A queue's figures as its home node reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub stats: QueueStats,
    pub counters: QueueCountersSnapshot,
}

/// A message basic.get took.
#[derive(Debug, Clone)]
pub struct Got {
    pub offset: u64,
    pub redelivered: bool,
    pub enqueued_at: u32,
    pub remaining: u32,
    pub message: Arc<Message>,
}

/// The answer to a request (`req`).
#[derive(Debug, Clone)]
pub enum Reply {
    Done,
    /// Refused on the home node: AMQP reply code and text (without the code's name).
    Error {
        code: u16,
        text: String,
    },
    Got(Option<Got>),
    Purged(u32),
    Figures(Figures),
    /// (vhost, queue, figures) of every queue homed on the answering node.
    AllFigures(Vec<(String, String, Figures)>),
}

#[derive(Debug, Clone)]
pub enum LaneMsg {
    Publish {
        /// 0: nobody waits for a confirm.
        seq: u64,
        vhost: String,
        queue: String,
        message: Arc<Message>,
    },
    Settle {
        vhost: String,
        queue: String,
        how: Settlement,
        offsets: Vec<u64>,
    },
    Credit {
        consumer: u64,
        count: u32,
        bytes: u64,
    },
    Consume {
        req: u64,
        consumer: u64,
        vhost: String,
        queue: String,
        spec: RemoteConsumer,
    },
    Cancel {
        req: u64,
        consumer: u64,
    },
    Get {
        req: u64,
        vhost: String,
        queue: String,
        ack_required: bool,
    },
    Purge {
        req: u64,
        vhost: String,
        queue: String,
    },
    Stats {
        req: u64,
        vhost: String,
        queue: String,
        touch: bool,
    },
    StatsAll {
        req: u64,
    },
    Deliver {
        consumer: u64,
        offset: u64,
        redelivered: bool,
        ack_required: bool,
        enqueued_at: u32,
        message: Arc<Message>,
    },
    Cancelled {
        consumer: u64,
    },
    /// From a quorum queue's leader: deliveries to consumers of the receiving node (its own
    /// consumer ids), in the leader's term (the session their settlements must name). One
    /// frame carries what one applied entry hands that node (the queue named once).
    QuorumDeliver {
        vhost: String,
        queue: String,
        term: u64,
        deliveries: Vec<Delivery>,
    },
    /// From a quorum queue's leader: the queue cancelled that consumer of the receiving node.
    QuorumCancelled {
        vhost: String,
        queue: String,
        consumer: u64,
    },
    Confirms {
        confirms: Vec<(u64, bool)>,
    },
    Reply {
        req: u64,
        reply: Reply,
    },
}

const PUBLISH: u8 = 1;
const SETTLE: u8 = 2;
const CREDIT: u8 = 3;
const CONSUME: u8 = 4;
const CANCEL: u8 = 5;
const GET: u8 = 6;
const PURGE: u8 = 7;
const STATS: u8 = 8;
const DELIVER: u8 = 9;
const CANCELLED: u8 = 10;
const CONFIRMS: u8 = 11;
const REPLY: u8 = 12;
const STATS_ALL: u8 = 13;
const QUORUM_DELIVER: u8 = 14;
const QUORUM_CANCELLED: u8 = 15;
const QUORUM_DELIVERIES: u8 = 16;

const R_DONE: u8 = 0;
const R_ERROR: u8 = 1;
const R_GOT: u8 = 2;
const R_EMPTY: u8 = 3;
const R_PURGED: u8 = 4;
const R_FIGURES: u8 = 5;
const R_ALL: u8 = 6;

/// One delivery to a consumer of the receiving node (its id there): a home node's
/// `Deliver` carries one, a quorum leader's `QuorumDeliver` several.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub consumer: u64,
    pub offset: u64,
    pub redelivered: bool,
    pub ack_required: bool,
    pub enqueued_at: u32,
    pub message: Arc<Message>,
}

impl Delivery {
    /// What it adds to a lane frame.
    pub fn encoded_len(&self) -> usize {
        21 + message_len(&self.message)
    }
}

fn put_delivery(
    out: &mut BytesMut,
    consumer: u64,
    offset: u64,
    redelivered: bool,
    ack_required: bool,
    enqueued_at: u32,
    message: &Message,
) {
    out.put_u64(consumer);
    out.put_u64(offset);
    out.put_u8(u8::from(redelivered) | (u8::from(ack_required) << 1));
    out.put_u32(enqueued_at);
    put_message(out, message);
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.put_slice(b);
}

fn put_short(out: &mut BytesMut, s: &ShortString) {
    let b = s.as_bytes();
    out.put_u8(u8::try_from(b.len()).unwrap_or(u8::MAX));
    out.put_slice(b.get(..255.min(b.len())).unwrap_or_default());
}

fn message_len(m: &Message) -> usize {
    2 + m.exchange.len() + m.routing_key.len() + 8 + m.amqp_properties().len() + m.body.len()
}

fn put_message(out: &mut BytesMut, m: &Message) {
    let s = to_stored(m);
    put_short(out, &s.exchange);
    put_short(out, &s.routing_key);
    put_bytes(out, &s.raw_properties);
    put_bytes(out, &s.body);
}

fn settlement_byte(how: Settlement) -> u8 {
    match how {
        Settlement::Ack => 0,
        Settlement::Requeue => 1,
        Settlement::Reject => 2,
        Settlement::Release => 3,
        Settlement::Fail => 4,
    }
}

fn put_figures(out: &mut BytesMut, f: &Figures) {
    let s = &f.stats;
    for v in [
        s.ready,
        s.unacked,
        u64::from(s.consumers),
        s.ready_bytes,
        s.memory_bytes,
        s.paged_out,
        f.counters.published,
        f.counters.delivered,
        f.counters.delivered_no_ack,
        f.counters.acked,
    ] {
        out.put_u64(v);
    }
}

/// Encodes `msg` as a complete transport frame (lane kind).
pub fn encode(msg: &LaneMsg) -> Result<Bytes, WireError> {
    let capacity = match msg {
        LaneMsg::Publish { message, .. } | LaneMsg::Deliver { message, .. } => {
            64 + message_len(message)
        }
        LaneMsg::QuorumDeliver { deliveries, .. } => {
            64 + deliveries.iter().map(Delivery::encoded_len).sum::<usize>()
        }
        LaneMsg::Settle { offsets, .. } => 64 + 8 * offsets.len(),
        LaneMsg::Confirms { confirms } => 8 + 9 * confirms.len(),
        LaneMsg::Reply {
            reply: Reply::AllFigures(all),
            ..
        } => 16 + all.len() * 120,
        _ => 64,
    };
    let mut out = frame::begin(Kind::Lane, 0, capacity);
    match msg {
        LaneMsg::Publish {
            seq,
            vhost,
            queue,
            message,
        } => {
            out.put_u8(PUBLISH);
            out.put_u64(*seq);
            put_str(&mut out, vhost);
            put_str(&mut out, queue);
            put_message(&mut out, message);
        }
        LaneMsg::Settle {
            vhost,
            queue,
            how,
            offsets,
        } => {
            out.put_u8(SETTLE);
            put_str(&mut out, vhost);
            put_str(&mut out, queue);
            out.put_u8(settlement_byte(*how));
            out.put_u32(u32::try_from(offsets.len()).unwrap_or(u32::MAX));
            for o in offsets {
                out.put_u64(*o);
            }
        }
        LaneMsg::Credit {
            consumer,
            count,
            bytes,
        } => {
            out.put_u8(CREDIT);
            out.put_u64(*consumer);
            out.put_u32(*count);
            out.put_u64(*bytes);
        }
        LaneMsg::Consume {
            req,
            consumer,
            vhost,
            queue,
            spec,
        } => {
            out.put_u8(CONSUME);
            out.put_u64(*req);
            out.put_u64(*consumer);
            put_str(&mut out, vhost);
            put_str(&mut out, queue);
            put_short(&mut out, &spec.tag);
            out.put_u8(u8::from(spec.ack_required) | (u8::from(spec.exclusive) << 1));
            out.put_u32(spec.prefetch);
            out.put_i32(spec.priority);
            let args = pier_store::encode_arguments(&spec.arguments)
                .map_err(|e| WireError::Invalid(format!("consumer arguments: {e}")))?;
            put_bytes(&mut out, &args);
        }
        LaneMsg::Cancel { req, consumer } => {
            out.put_u8(CANCEL);
            out.put_u64(*req);
            out.put_u64(*consumer);
        }
        LaneMsg::Get {
            req,
            vhost,
            queue,
            ack_required,
        } => {
            out.put_u8(GET);
            out.put_u64(*req);
            put_str(&mut out, vhost);
            put_str(&mut out, queue);
            out.put_u8(u8::from(*ack_required));
        }
        LaneMsg::Purge { req, vhost, queue } => {
            out.put_u8(PURGE);
            out.put_u64(*req);
            put_str(&mut out, vhost);
            put_str(&mut out, queue);
        }
        LaneMsg::Stats {
            req,
            vhost,
            queue,
            touch,
        } => {
            out.put_u8(STATS);
            out.put_u64(*req);
            put_str(&mut out, vhost);
            put_str(&mut out, queue);
            out.put_u8(u8::from(*touch));
        }
        LaneMsg::StatsAll { req } => {
            out.put_u8(STATS_ALL);
            out.put_u64(*req);
        }
        LaneMsg::QuorumDeliver {
            vhost,
            queue,
            term,
            deliveries,
        } => {
            out.put_u8(QUORUM_DELIVERIES);
            put_str(&mut out, vhost);
            put_str(&mut out, queue);
            out.put_u64(*term);
            out.put_u32(u32::try_from(deliveries.len()).unwrap_or(u32::MAX));
            for d in deliveries {
                put_delivery(
                    &mut out,
                    d.consumer,
                    d.offset,
                    d.redelivered,
                    d.ack_required,
                    d.enqueued_at,
                    &d.message,
                );
            }
        }
        LaneMsg::QuorumCancelled {
            vhost,
            queue,
            consumer,
        } => {
            out.put_u8(QUORUM_CANCELLED);
            put_str(&mut out, vhost);
            put_str(&mut out, queue);
            out.put_u64(*consumer);
        }
        LaneMsg::Deliver {
            consumer,
            offset,
            redelivered,
            ack_required,
            enqueued_at,
            message,
        } => {
            out.put_u8(DELIVER);
            put_delivery(
                &mut out,
                *consumer,
                *offset,
                *redelivered,
                *ack_required,
                *enqueued_at,
                message,
            );
        }
        LaneMsg::Cancelled { consumer } => {
            out.put_u8(CANCELLED);
            out.put_u64(*consumer);
        }
        LaneMsg::Confirms { confirms } => {
            out.put_u8(CONFIRMS);
            out.put_u32(u32::try_from(confirms.len()).unwrap_or(u32::MAX));
            for (seq, ok) in confirms {
                out.put_u64(*seq);
                out.put_u8(u8::from(*ok));
            }
        }
        LaneMsg::Reply { req, reply } => {
            out.put_u8(REPLY);
            out.put_u64(*req);
            match reply {
                Reply::Done => out.put_u8(R_DONE),
                Reply::Error { code, text } => {
                    out.put_u8(R_ERROR);
                    out.put_u16(*code);
                    put_str(&mut out, text);
                }
                Reply::Got(Some(g)) => {
                    out.put_u8(R_GOT);
                    out.put_u64(g.offset);
                    out.put_u8(u8::from(g.redelivered));
                    out.put_u32(g.enqueued_at);
                    out.put_u32(g.remaining);
                    put_message(&mut out, &g.message);
                }
                Reply::Got(None) => out.put_u8(R_EMPTY),
                Reply::Purged(n) => {
                    out.put_u8(R_PURGED);
                    out.put_u32(*n);
                }
                Reply::Figures(f) => {
                    out.put_u8(R_FIGURES);
                    put_figures(&mut out, f);
                }
                Reply::AllFigures(all) => {
                    out.put_u8(R_ALL);
                    out.put_u32(u32::try_from(all.len()).unwrap_or(u32::MAX));
                    for (vhost, queue, f) in all {
                        put_str(&mut out, vhost);
                        put_str(&mut out, queue);
                        put_figures(&mut out, f);
                    }
                }
            }
        }
    }
    Ok(frame::finish(out)?)
}

/// Reads fields off a received payload (slices share its buffer).
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.0.remaining() < n {
            Err(WireError::Short)
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }

    fn i32(&mut self) -> Result<i32, WireError> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }

    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.0.split_to(n))
    }

    fn delivery(&mut self) -> Result<Delivery, WireError> {
        let consumer = self.u64()?;
        let offset = self.u64()?;
        let flags = self.u8()?;
        let enqueued_at = self.u32()?;
        Ok(Delivery {
            consumer,
            offset,
            redelivered: flags & 1 != 0,
            ack_required: flags & 2 != 0,
            enqueued_at,
            message: self.message()?,
        })
    }

    fn string(&mut self) -> Result<String, WireError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Invalid("a name is not UTF-8".into()))
    }

    fn short(&mut self) -> Result<ShortString, WireError> {
        let n = usize::from(self.u8()?);
        self.need(n)?;
        let b = self.0.split_to(n);
        let s = std::str::from_utf8(&b)
            .map_err(|_| WireError::Invalid("a short string is not UTF-8".into()))?;
        Ok(ShortString::from(s))
    }

    fn message(&mut self) -> Result<Arc<Message>, WireError> {
        let exchange = self.short()?;
        let routing_key = self.short()?;
        let raw_properties = self.bytes()?;
        let body = self.bytes()?;
        from_stored(StoredMessage {
            exchange,
            routing_key,
            raw_properties,
            body,
        })
        .map(Arc::new)
        .ok_or_else(|| WireError::Invalid("message properties do not decode".into()))
    }

    fn figures(&mut self) -> Result<Figures, WireError> {
        let mut v = [0u64; 10];
        for x in &mut v {
            *x = self.u64()?;
        }
        let [ready, unacked, consumers, ready_bytes, memory_bytes, paged_out, published, delivered, delivered_no_ack, acked] =
            v;
        Ok(Figures {
            stats: QueueStats {
                ready,
                unacked,
                consumers: u32::try_from(consumers).unwrap_or(u32::MAX),
                ready_bytes,
                memory_bytes,
                paged_out,
                // Kept dead letters are a replicated queue's; its figures come from the
                // members, not over this wire.
                ..QueueStats::default()
            },
            counters: QueueCountersSnapshot {
                published,
                delivered,
                delivered_no_ack,
                acked,
            },
        })
    }
}

/// Decodes one lane frame's payload.
pub fn decode(payload: Bytes) -> Result<LaneMsg, WireError> {
    let mut r = Reader(payload);
    let op = r.u8()?;
    let msg = match op {
        PUBLISH => LaneMsg::Publish {
            seq: r.u64()?,
            vhost: r.string()?,
            queue: r.string()?,
            message: r.message()?,
        },
        SETTLE => {
            let vhost = r.string()?;
            let queue = r.string()?;
            let how = match r.u8()? {
                0 => Settlement::Ack,
                1 => Settlement::Requeue,
                2 => Settlement::Reject,
                3 => Settlement::Release,
                4 => Settlement::Fail,
                other => return Err(WireError::Invalid(format!("settlement {other}"))),
            };
            let n = r.u32()? as usize;
            r.need(n.saturating_mul(8))?;
            let mut offsets = Vec::with_capacity(n);
            for _ in 0..n {
                offsets.push(r.u64()?);
            }
            LaneMsg::Settle {
                vhost,
                queue,
                how,
                offsets,
            }
        }
        CREDIT => LaneMsg::Credit {
            consumer: r.u64()?,
            count: r.u32()?,
            bytes: r.u64()?,
        },
        CONSUME => {
            let req = r.u64()?;
            let consumer = r.u64()?;
            let vhost = r.string()?;
            let queue = r.string()?;
            let tag = r.short()?;
            let flags = r.u8()?;
            let prefetch = r.u32()?;
            let priority = r.i32()?;
            let args = r.bytes()?;
            let arguments: FieldTable = pier_store::decode_arguments(&args)
                .map_err(|e| WireError::Invalid(format!("consumer arguments: {e}")))?;
            LaneMsg::Consume {
                req,
                consumer,
                vhost,
                queue,
                spec: RemoteConsumer {
                    tag,
                    ack_required: flags & 1 != 0,
                    exclusive: flags & 2 != 0,
                    prefetch,
                    priority,
                    arguments,
                },
            }
        }
        CANCEL => LaneMsg::Cancel {
            req: r.u64()?,
            consumer: r.u64()?,
        },
        GET => LaneMsg::Get {
            req: r.u64()?,
            vhost: r.string()?,
            queue: r.string()?,
            ack_required: r.u8()? != 0,
        },
        PURGE => LaneMsg::Purge {
            req: r.u64()?,
            vhost: r.string()?,
            queue: r.string()?,
        },
        STATS => LaneMsg::Stats {
            req: r.u64()?,
            vhost: r.string()?,
            queue: r.string()?,
            touch: r.u8()? != 0,
        },
        STATS_ALL => LaneMsg::StatsAll { req: r.u64()? },
        QUORUM_DELIVER => LaneMsg::QuorumDeliver {
            vhost: r.string()?,
            queue: r.string()?,
            term: r.u64()?,
            deliveries: vec![r.delivery()?],
        },
        QUORUM_DELIVERIES => {
            let vhost = r.string()?;
            let queue = r.string()?;
            let term = r.u64()?;
            let n = r.u32()? as usize;
            // Room for what the frame can hold, not for what a count claims.
            let mut deliveries = Vec::with_capacity(n.min(r.0.remaining() / 21));
            for _ in 0..n {
                deliveries.push(r.delivery()?);
            }
            LaneMsg::QuorumDeliver {
                vhost,
                queue,
                term,
                deliveries,
            }
        }
        QUORUM_CANCELLED => LaneMsg::QuorumCancelled {
            vhost: r.string()?,
            queue: r.string()?,
            consumer: r.u64()?,
        },
        DELIVER => {
            let d = r.delivery()?;
            LaneMsg::Deliver {
                consumer: d.consumer,
                offset: d.offset,
                redelivered: d.redelivered,
                ack_required: d.ack_required,
                enqueued_at: d.enqueued_at,
                message: d.message,
            }
        }
        CANCELLED => LaneMsg::Cancelled { consumer: r.u64()? },
        CONFIRMS => {
            let n = r.u32()? as usize;
            r.need(n.saturating_mul(9))?;
            let mut confirms = Vec::with_capacity(n);
            for _ in 0..n {
                confirms.push((r.u64()?, r.u8()? != 0));
            }
            LaneMsg::Confirms { confirms }
        }
        REPLY => {
            let req = r.u64()?;
            let reply = match r.u8()? {
                R_DONE => Reply::Done,
                R_ERROR => Reply::Error {
                    code: r.u16()?,
                    text: r.string()?,
                },
                R_GOT => Reply::Got(Some(Got {
                    offset: r.u64()?,
                    redelivered: r.u8()? != 0,
                    enqueued_at: r.u32()?,
                    remaining: r.u32()?,
                    message: r.message()?,
                })),
                R_EMPTY => Reply::Got(None),
                R_PURGED => Reply::Purged(r.u32()?),
                R_FIGURES => Reply::Figures(r.figures()?),
                R_ALL => {
                    let n = r.u32()? as usize;
                    // Each entry is at least two lengths and the figures.
                    r.need(n.saturating_mul(8 + 80))?;
                    let mut all = Vec::with_capacity(n);
                    for _ in 0..n {
                        all.push((r.string()?, r.string()?, r.figures()?));
                    }
                    Reply::AllFigures(all)
                }
                other => return Err(WireError::Invalid(format!("reply kind {other}"))),
            };
            LaneMsg::Reply { req, reply }
        }
        other => return Err(WireError::UnknownOp(other)),
    };
    if r.0.has_remaining() {
        return Err(WireError::Invalid(format!(
            "{} bytes after lane op {op}",
            r.0.remaining()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::transport::frame::decode as decode_frame;
    use pier_wire::{BasicProperties, FieldValue};

    fn message(body: &str) -> Arc<Message> {
        let props = BasicProperties {
            delivery_mode: Some(2),
            correlation_id: Some(ShortString::from("c-1")),
            ..BasicProperties::default()
        };
        Arc::new(Message::new(
            ShortString::from("amq.topic"),
            ShortString::from("a.b"),
            props,
            Bytes::from(body.to_owned()),
        ))
    }

    /// Encodes, takes the frame apart as the reader does, decodes.
    fn round_trip(msg: &LaneMsg) -> LaneMsg {
        let bytes = encode(msg).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let f = decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!(f.kind, Kind::Lane);
        assert!(buf.is_empty());
        decode(f.payload).unwrap()
    }

    #[test]
    fn every_op_round_trips() {
        let m = message("hello");
        match round_trip(&LaneMsg::Publish {
            seq: 7,
            vhost: "/".into(),
            queue: "q".into(),
            message: Arc::clone(&m),
        }) {
            LaneMsg::Publish {
                seq,
                vhost,
                queue,
                message,
            } => {
                assert_eq!((seq, vhost.as_str(), queue.as_str()), (7, "/", "q"));
                assert_eq!(message.body, m.body);
                assert_eq!(message.exchange, m.exchange);
                assert_eq!(message.routing_key, m.routing_key);
                assert_eq!(message.properties, m.properties);
                assert_eq!(message.amqp_properties(), m.amqp_properties());
            }
            other => panic!("{other:?}"),
        }
        for how in [
            Settlement::Ack,
            Settlement::Requeue,
            Settlement::Fail,
            Settlement::Reject,
            Settlement::Release,
        ] {
            match round_trip(&LaneMsg::Settle {
                vhost: "v".into(),
                queue: "q".into(),
                how,
                offsets: vec![1, 5, 9],
            }) {
                LaneMsg::Settle {
                    how: back, offsets, ..
                } => {
                    assert_eq!(back, how);
                    assert_eq!(offsets, vec![1, 5, 9]);
                }
                other => panic!("{other:?}"),
            }
        }
        let mut args = FieldTable::new();
        args.insert("x-priority", FieldValue::LongInt(5));
        match round_trip(&LaneMsg::Consume {
            req: 3,
            consumer: 44,
            vhost: "/".into(),
            queue: "q".into(),
            spec: RemoteConsumer {
                tag: ShortString::from("ctag"),
                ack_required: true,
                exclusive: false,
                prefetch: 10,
                priority: -2,
                arguments: args.clone(),
            },
        }) {
            LaneMsg::Consume {
                req,
                consumer,
                spec,
                ..
            } => {
                assert_eq!((req, consumer), (3, 44));
                assert_eq!(spec.tag.as_str(), "ctag");
                assert!(spec.ack_required && !spec.exclusive);
                assert_eq!((spec.prefetch, spec.priority), (10, -2));
                assert_eq!(spec.arguments, args);
            }
            other => panic!("{other:?}"),
        }
        match round_trip(&LaneMsg::Deliver {
            consumer: 9,
            offset: 1 << 40,
            redelivered: true,
            ack_required: false,
            enqueued_at: 77,
            message: Arc::clone(&m),
        }) {
            LaneMsg::Deliver {
                consumer,
                offset,
                redelivered,
                ack_required,
                enqueued_at,
                message,
            } => {
                assert_eq!((consumer, offset, enqueued_at), (9, 1 << 40, 77));
                assert!(redelivered && !ack_required);
                assert_eq!(message.body, m.body);
            }
            other => panic!("{other:?}"),
        }
        let one = |consumer, offset| Delivery {
            consumer,
            offset,
            redelivered: offset == 6,
            ack_required: true,
            enqueued_at: 3,
            message: Arc::clone(&m),
        };
        match round_trip(&LaneMsg::QuorumDeliver {
            vhost: "v".into(),
            queue: "qq".into(),
            term: 7,
            deliveries: vec![one(9, 5), one(4, 6)],
        }) {
            LaneMsg::QuorumDeliver {
                vhost,
                queue,
                term,
                deliveries,
            } => {
                assert_eq!((vhost.as_str(), queue.as_str(), term), ("v", "qq", 7));
                let got: Vec<_> = deliveries
                    .iter()
                    .map(|d| {
                        (
                            d.consumer,
                            d.offset,
                            d.redelivered,
                            d.ack_required,
                            d.enqueued_at,
                        )
                    })
                    .collect();
                assert_eq!(got, [(9, 5, false, true, 3), (4, 6, true, true, 3)]);
                assert!(deliveries.iter().all(|d| d.message.body == m.body));
            }
            other => panic!("{other:?}"),
        }
        // A quorum delivery frame up to its deliveries, by hand.
        let head = |op: u8| {
            let mut b = BytesMut::new();
            b.put_u8(op);
            put_str(&mut b, "v");
            put_str(&mut b, "qq");
            b.put_u64(7);
            b
        };
        // The one-delivery form (op 14) of earlier builds still reads.
        let mut old = head(QUORUM_DELIVER);
        put_delivery(&mut old, 9, 5, false, true, 3, &m);
        match decode(old.freeze()).unwrap() {
            LaneMsg::QuorumDeliver { deliveries, .. } => {
                assert_eq!(deliveries.len(), 1);
                assert_eq!((deliveries[0].consumer, deliveries[0].offset), (9, 5));
            }
            other => panic!("{other:?}"),
        }
        // A count larger than the frame holds is a short frame, not a huge allocation.
        let mut lying = head(QUORUM_DELIVERIES);
        lying.put_u32(u32::MAX);
        assert_eq!(decode(lying.freeze()).unwrap_err(), WireError::Short);
        match round_trip(&LaneMsg::Confirms {
            confirms: vec![(1, true), (2, false)],
        }) {
            LaneMsg::Confirms { confirms } => assert_eq!(confirms, vec![(1, true), (2, false)]),
            other => panic!("{other:?}"),
        }
        let figures = Figures {
            stats: QueueStats {
                ready: 1,
                unacked: 2,
                consumers: 3,
                ready_bytes: 4,
                memory_bytes: 5,
                paged_out: 6,
                ..QueueStats::default()
            },
            counters: QueueCountersSnapshot {
                published: 7,
                delivered: 8,
                delivered_no_ack: 9,
                acked: 10,
            },
        };
        for reply in [
            Reply::Done,
            Reply::Error {
                code: 404,
                text: "no queue 'q' in vhost '/'".into(),
            },
            Reply::Got(None),
            Reply::Got(Some(Got {
                offset: 3,
                redelivered: true,
                enqueued_at: 1,
                remaining: 2,
                message: Arc::clone(&m),
            })),
            Reply::Purged(12),
            Reply::Figures(figures),
            Reply::AllFigures(vec![("/".into(), "q".into(), figures)]),
        ] {
            // Messages compare by content (their property bytes cache aside).
            let show = |r: &Reply| match r {
                Reply::Got(Some(g)) => format!(
                    "{} {} {} {} {:?} {:?} {:?}",
                    g.offset,
                    g.redelivered,
                    g.enqueued_at,
                    g.remaining,
                    g.message.properties,
                    g.message.body,
                    g.message.amqp_properties()
                ),
                other => format!("{other:?}"),
            };
            let shown = show(&reply);
            match round_trip(&LaneMsg::Reply { req: 5, reply }) {
                LaneMsg::Reply { req: 5, reply } => assert_eq!(show(&reply), shown),
                other => panic!("{other:?}"),
            }
        }
        for msg in [
            LaneMsg::Credit {
                consumer: 1,
                count: 2,
                bytes: 3,
            },
            LaneMsg::Cancel {
                req: 1,
                consumer: 2,
            },
            LaneMsg::Cancelled { consumer: 4 },
            LaneMsg::QuorumCancelled {
                vhost: "/".into(),
                queue: "qq".into(),
                consumer: 4,
            },
            LaneMsg::StatsAll { req: 9 },
            LaneMsg::Get {
                req: 1,
                vhost: "/".into(),
                queue: "q".into(),
                ack_required: true,
            },
            LaneMsg::Purge {
                req: 1,
                vhost: "/".into(),
                queue: "q".into(),
            },
            LaneMsg::Stats {
                req: 1,
                vhost: "/".into(),
                queue: "q".into(),
                touch: true,
            },
        ] {
            let shown = format!("{msg:?}");
            assert_eq!(format!("{:?}", round_trip(&msg)), shown);
        }
    }

    #[test]
    fn truncated_and_hostile_payloads_are_errors() {
        let bytes = encode(&LaneMsg::Publish {
            seq: 1,
            vhost: "/".into(),
            queue: "q".into(),
            message: message("body"),
        })
        .unwrap();
        let payload = bytes.slice(13..);
        for cut in 0..payload.len() {
            assert!(decode(payload.slice(..cut)).is_err(), "cut at {cut}");
        }
        // A count far beyond the payload is refused before anything is allocated for it.
        let mut evil = BytesMut::new();
        evil.put_u8(CONFIRMS);
        evil.put_u32(u32::MAX);
        assert_eq!(decode(evil.freeze()).unwrap_err(), WireError::Short);
        assert_eq!(
            decode(Bytes::from_static(&[200])).unwrap_err(),
            WireError::UnknownOp(200)
        );
        let mut trailing = BytesMut::from(&payload[..]);
        trailing.put_u8(0);
        assert!(decode(trailing.freeze()).is_err());
    }
}
