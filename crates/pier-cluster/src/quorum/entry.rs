//! A quorum queue's Raft log entry: one queue command with the leader's time, in a small
//! hand-written binary format (the message body is the bulk of an entry: one length-prefixed
//! copy, no serde framing around it), decoded with every length checked first.
//!
//! ```text
//!  u8 version (1) · u64 at (leader's broker clock, ms) · u64 unix (ms) · u8 op · fields
//!  op 1 enqueue   u8 has_publisher [u64 publisher u64 seq] str8 exchange str8 routing key
//!                 bytes32 AMQP properties · bytes32 body
//!  op 2 checkout  u64 consumer · str8 tag · u64 connection · u8 flags (1 ack, 2 exclusive,
//!                 4 credit mode) · u32 prefetch · i32 priority · bytes32 arguments (field
//!                 table) · u32 credit
//!  op 3 cancel u64 · op 4 credit u64 u32 u8 · op 5..8 settle/return/release/discard u32 n,
//!  n × u64 · op 9 publisher down u64 · op 10 tick · op 11 purge · op 12 delete · op 13 get u8
//!  op 14 batch    u32 n × op (not nested)
//!  op 15 reconfigure  u64 version · policy settings:
//!                 4 × opt u64 (message ttl, expires, max length, max length bytes) ·
//!                 u8 overflow (0 drop-head, 1 reject-publish, 2 reject-publish-dlx) ·
//!                 2 × opt str8 (dead-letter exchange, routing key) · opt i64 delivery limit ·
//!                 u8 dead-letter strategy (0 default, 1 at-most-once, 2 at-least-once)
//!  op 16 dead-lettered (at-least-once dead letters confirmed) u32 n, n × u64
//!  op 17 suspect  u64 consumer · u8 suspected (1: its node is out of the leader's reach, 0: back)
//!  opt x: u8 0 (none) | u8 1 · x
//! ```
//!
//! New ops take new codes under the same entry version, so logs written before them stay
//! readable (a node too old to know an op refuses the entry: upgrade every node first).

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use pier_broker::args::{Overflow, PolicySettings};
use pier_broker::message::Message;
use pier_broker::queue::engine::ConsumerSettings;
use pier_wire::{decode_field_table, encode_field_table, BasicProperties, ShortString};

const VERSION: u8 = 1;

/// Version, `at` and `unix`: where the op starts.
const HEADER: usize = 17;

/// The most ops one batch entry holds: a message's offset is its place in the log, the
/// entry's index and the op's position in 16 bits (`machine::offset_at`).
pub const MAX_BATCH_OPS: usize = 1 << 16;

/// What a log entry asks of the queue.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueOp {
    Enqueue {
        /// `(publisher, sequence)` for deduplication of resends after a leader change.
        publisher: Option<(u64, u64)>,
        exchange: ShortString,
        routing_key: ShortString,
        /// The AMQP 0-9-1 property bytes, as the publisher sent them.
        properties: Bytes,
        body: Bytes,
    },
    Checkout {
        consumer: u64,
        settings: ConsumerSettings,
    },
    Cancel {
        consumer: u64,
    },
    Credit {
        consumer: u64,
        credit: u32,
        drain: bool,
    },
    Settle(Vec<u64>),
    /// Put back by a nack or recover (a return, not a failed delivery).
    Return(Vec<u64>),
    /// Put back as a failed delivery (basic.reject with requeue, the consumer's channel
    /// gone, a new leader taking over): RabbitMQ 4.3's `delivery_count` goes up too.
    Fail(Vec<u64>),
    Release(Vec<u64>),
    Discard(Vec<u64>),
    PublisherDown(u64),
    Tick,
    Purge,
    Delete,
    Get {
        ack_required: bool,
    },
    /// A policy changed the queue's settings. Every node applies policy changes from the
    /// cluster's metadata and proposes this; `version` is the metadata log index of the
    /// change, and a member ignores a version not above the last one it applied, so late
    /// or repeated proposals never undo a newer change.
    Reconfigure {
        version: u64,
        /// Boxed: rare, and larger than every other op.
        settings: Box<PolicySettings>,
    },
    /// Several ops applied in order at the entry's time: what one node's writer had queued,
    /// committed as one Raft entry (one append, one fsync, one replication) instead of one
    /// each. Not nested.
    Batch(Vec<QueueOp>),
    /// At-least-once dead letters their target queues confirmed: they leave the queue.
    DeadLettered(Vec<u64>),
    /// The leader cannot reach the consumer's node (`suspected`), or can again: the
    /// consumer keeps its subscription and gets nothing meanwhile (RabbitMQ's
    /// `suspected_down`; `Command::Suspect`).
    Suspect {
        consumer: u64,
        suspected: bool,
    },
}

impl QueueOp {
    /// About the bytes `encode_op` writes (exact for bodies and properties, a generous
    /// allowance for the rest).
    pub fn size_hint(&self) -> usize {
        match self {
            QueueOp::Enqueue {
                exchange,
                routing_key,
                properties,
                body,
                ..
            } => 32 + exchange.len() + routing_key.len() + properties.len() + body.len(),
            QueueOp::Settle(v)
            | QueueOp::Return(v)
            | QueueOp::Fail(v)
            | QueueOp::Release(v)
            | QueueOp::Discard(v)
            | QueueOp::DeadLettered(v) => 8 + 8 * v.len(),
            QueueOp::Batch(ops) => 8 + ops.iter().map(QueueOp::size_hint).sum::<usize>(),
            _ => 64,
        }
    }
}

/// One entry: the op and the leader's clocks when it proposed it (every member applies the
/// op at that time, so TTLs and timeouts expire alike everywhere).
///
/// An entry keeps its encoding once made or decoded from (a proposed entry goes to the log
/// and to every follower: encoded once), and a decoded entry builds its op only when it is
/// first asked for. Entries are read back from the log to be replicated (twice on a leader
/// of three) and to be applied, and arrive in frames before they are appended and read
/// again: only applying needs the op, so each member builds it once. Decoding still checks
/// the whole entry, so a bad or unknown op fails where it is read, as before.
#[derive(Clone)]
pub struct QueueEntry {
    pub at: u64,
    pub unix: u64,
    /// At least one of `op` and `raw` is set; once encoded the entry does not change
    /// (`set_clock` and `op_mut` forget the encoding).
    op: OnceLock<QueueOp>,
    raw: OnceLock<Bytes>,
}

impl PartialEq for QueueEntry {
    fn eq(&self, other: &QueueEntry) -> bool {
        (self.at, self.unix) == (other.at, other.unix) && self.op() == other.op()
    }
}

impl std::fmt::Debug for QueueEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueEntry")
            .field("at", &self.at)
            .field("unix", &self.unix)
            .field("op", self.op())
            .finish()
    }
}

impl Default for QueueEntry {
    fn default() -> Self {
        QueueEntry::new(0, 0, QueueOp::Tick)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("queue log entry truncated ({0})")]
    Truncated(&'static str),
    #[error("queue log entry version {0} is not known")]
    Version(u8),
    #[error("queue log entry op {0} is not known")]
    Op(u8),
    #[error("queue log entry field {0} is invalid")]
    Invalid(&'static str),
    #[error("queue log entry field {0} is too long to encode")]
    TooLong(&'static str),
}

impl QueueOp {
    fn code(&self) -> u8 {
        match self {
            QueueOp::Enqueue { .. } => 1,
            QueueOp::Checkout { .. } => 2,
            QueueOp::Cancel { .. } => 3,
            QueueOp::Credit { .. } => 4,
            QueueOp::Settle(_) => 5,
            QueueOp::Return(_) => 6,
            QueueOp::Release(_) => 7,
            QueueOp::Discard(_) => 8,
            QueueOp::PublisherDown(_) => 9,
            QueueOp::Tick => 10,
            QueueOp::Purge => 11,
            QueueOp::Delete => 12,
            QueueOp::Get { .. } => 13,
            QueueOp::Batch(_) => 14,
            QueueOp::Reconfigure { .. } => 15,
            QueueOp::DeadLettered(_) => 16,
            QueueOp::Suspect { .. } => 17,
            QueueOp::Fail(_) => 18,
        }
    }

    /// The op of a published message.
    pub fn enqueue(message: &Message, publisher: Option<(u64, u64)>) -> QueueOp {
        QueueOp::Enqueue {
            publisher,
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            properties: message.amqp_properties().clone(),
            body: message.body.clone(),
        }
    }
}

/// A consumer's settings (a checkout's, a snapshot's consumers').
pub(super) fn put_settings(
    out: &mut BytesMut,
    settings: &ConsumerSettings,
) -> Result<(), EntryError> {
    put_str8(out, &settings.tag);
    out.put_u64_le(settings.connection);
    out.put_u8(
        u8::from(settings.ack_required)
            | u8::from(settings.exclusive) << 1
            | u8::from(settings.credit.is_some()) << 2,
    );
    out.put_u32_le(settings.prefetch);
    out.put_i32_le(settings.priority);
    let mut table = BytesMut::new();
    encode_field_table(&mut table, &settings.arguments)
        .map_err(|_| EntryError::TooLong("arguments"))?;
    put_bytes32(out, &table, "arguments")?;
    out.put_u32_le(settings.credit.unwrap_or(0));
    Ok(())
}

/// A message as an enqueue carries it: exchange, routing key, AMQP properties, body.
pub(super) fn put_message(out: &mut BytesMut, m: &Message) -> Result<(), EntryError> {
    put_str8(out, &m.exchange);
    put_str8(out, &m.routing_key);
    put_bytes32(out, m.amqp_properties(), "properties")?;
    put_bytes32(out, &m.body, "body")
}

pub(super) fn put_str8(out: &mut BytesMut, s: &ShortString) {
    // A ShortString holds at most 255 bytes.
    out.put_u8(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.put_slice(s.as_bytes());
}

pub(super) fn put_bytes32(
    out: &mut BytesMut,
    b: &[u8],
    field: &'static str,
) -> Result<(), EntryError> {
    out.put_u32_le(u32::try_from(b.len()).map_err(|_| EntryError::TooLong(field))?);
    out.put_slice(b);
    Ok(())
}

/// A policy's settings (a reconfigure's, a snapshot's).
pub(super) fn put_policy(out: &mut BytesMut, p: &PolicySettings) {
    for v in [p.message_ttl, p.expires, p.max_length, p.max_length_bytes] {
        match v {
            Some(v) => {
                out.put_u8(1);
                out.put_u64_le(v);
            }
            None => out.put_u8(0),
        }
    }
    out.put_u8(match p.overflow {
        Overflow::DropHead => 0,
        Overflow::RejectPublish => 1,
        Overflow::RejectPublishDlx => 2,
    });
    for v in [&p.dead_letter_exchange, &p.dead_letter_routing_key] {
        match v {
            Some(s) => {
                out.put_u8(1);
                put_str8(out, s);
            }
            None => out.put_u8(0),
        }
    }
    match p.delivery_limit {
        Some(n) => {
            out.put_u8(1);
            out.put_i64_le(n);
        }
        None => out.put_u8(0),
    }
    out.put_u8(match p.dead_letter_strategy.as_deref() {
        Some("at-most-once") => 1,
        Some("at-least-once") => 2,
        _ => 0,
    });
}

fn put_offsets(out: &mut BytesMut, offsets: &[u64]) -> Result<(), EntryError> {
    out.put_u32_le(u32::try_from(offsets.len()).map_err(|_| EntryError::TooLong("offsets"))?);
    for o in offsets {
        out.put_u64_le(*o);
    }
    Ok(())
}

fn encode_op(out: &mut BytesMut, op: &QueueOp) -> Result<(), EntryError> {
    out.put_u8(op.code());
    match op {
        QueueOp::Enqueue {
            publisher,
            exchange,
            routing_key,
            properties,
            body,
        } => {
            match publisher {
                Some((p, s)) => {
                    out.put_u8(1);
                    out.put_u64_le(*p);
                    out.put_u64_le(*s);
                }
                None => out.put_u8(0),
            }
            put_str8(out, exchange);
            put_str8(out, routing_key);
            put_bytes32(out, properties, "properties")?;
            put_bytes32(out, body, "body")?;
        }
        QueueOp::Checkout { consumer, settings } => {
            out.put_u64_le(*consumer);
            put_settings(out, settings)?;
        }
        QueueOp::Cancel { consumer } | QueueOp::PublisherDown(consumer) => {
            out.put_u64_le(*consumer);
        }
        QueueOp::Credit {
            consumer,
            credit,
            drain,
        } => {
            out.put_u64_le(*consumer);
            out.put_u32_le(*credit);
            out.put_u8(u8::from(*drain));
        }
        QueueOp::Settle(o)
        | QueueOp::Return(o)
        | QueueOp::Fail(o)
        | QueueOp::Release(o)
        | QueueOp::Discard(o)
        | QueueOp::DeadLettered(o) => {
            put_offsets(out, o)?;
        }
        QueueOp::Tick | QueueOp::Purge | QueueOp::Delete => {}
        QueueOp::Get { ack_required } => out.put_u8(u8::from(*ack_required)),
        QueueOp::Suspect {
            consumer,
            suspected,
        } => {
            out.put_u64_le(*consumer);
            out.put_u8(u8::from(*suspected));
        }
        QueueOp::Reconfigure { version, settings } => {
            out.put_u64_le(*version);
            put_policy(out, settings);
        }
        QueueOp::Batch(ops) => {
            if ops.len() > MAX_BATCH_OPS {
                return Err(EntryError::TooLong("batch"));
            }
            out.put_u32_le(u32::try_from(ops.len()).map_err(|_| EntryError::TooLong("batch"))?);
            for op in ops {
                if matches!(op, QueueOp::Batch(_)) {
                    return Err(EntryError::Invalid("nested batch"));
                }
                encode_op(out, op)?;
            }
        }
    }
    Ok(())
}

impl QueueEntry {
    pub fn new(at: u64, unix: u64, op: QueueOp) -> QueueEntry {
        QueueEntry {
            at,
            unix,
            op: OnceLock::from(op),
            raw: OnceLock::new(),
        }
    }

    /// The op (built from the encoding the first time it is asked for).
    pub fn op(&self) -> &QueueOp {
        self.op.get_or_init(|| {
            let raw = self.raw.get().cloned().unwrap_or_default();
            let mut r = Reader {
                buf: &raw,
                pos: HEADER,
            };
            // `decode` checked these very bytes: this cannot fail.
            r.op(true).unwrap_or_else(|e| {
                tracing::error!("a checked queue log entry does not decode: {e}");
                QueueOp::Batch(Vec::new())
            })
        })
    }

    /// The op to change (before the entry is encoded: forgets any encoding).
    pub fn op_mut(&mut self) -> &mut QueueOp {
        self.op();
        self.raw = OnceLock::new();
        match self.op.get_mut() {
            Some(op) => op,
            None => unreachable!("op() set it"),
        }
    }

    pub fn into_op(self) -> QueueOp {
        self.op();
        self.op.into_inner().unwrap_or(QueueOp::Tick)
    }

    /// Appends the encoded entry to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EntryError> {
        if let Some(raw) = self.raw.get() {
            out.put_slice(raw);
            return Ok(());
        }
        out.put_u8(VERSION);
        out.put_u64_le(self.at);
        out.put_u64_le(self.unix);
        encode_op(out, self.op())
    }

    /// The op at `position` of a batch (position 0 of any other entry: the op itself); a
    /// message enqueued there has offset `machine::offset_at(index, position)`.
    pub fn op_at(&self, position: usize) -> Option<&QueueOp> {
        match self.op() {
            QueueOp::Batch(ops) => ops.get(position),
            op if position == 0 => Some(op),
            _ => None,
        }
    }

    pub fn to_bytes(&self) -> Result<Bytes, EntryError> {
        if let Some(b) = self.raw.get() {
            return Ok(b.clone());
        }
        // Sized up front: a batch of a few hundred bodies would otherwise grow (and copy)
        // the buffer a dozen times.
        let mut out = BytesMut::with_capacity(HEADER + self.op().size_hint());
        self.encode(&mut out)?;
        let b = out.freeze();
        let _ = self.raw.set(b.clone());
        Ok(b)
    }

    /// About the bytes of its encoding.
    pub fn size_hint(&self) -> usize {
        match self.raw.get() {
            Some(raw) => raw.len(),
            None => HEADER + self.op().size_hint(),
        }
    }

    /// Sets the leader's clocks (before the entry is encoded: forgets any encoding).
    pub fn set_clock(&mut self, at: u64, unix: u64) {
        self.op();
        self.at = at;
        self.unix = unix;
        self.raw = OnceLock::new();
    }

    /// Decodes one entry (the whole of `input`); bodies are zero-copy slices of it.
    pub fn decode(input: &Bytes) -> Result<QueueEntry, EntryError> {
        let mut r = Reader { buf: input, pos: 0 };
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(EntryError::Version(version));
        }
        let at = r.u64("at")?;
        let unix = r.u64("unix")?;
        r.check_op(true)?;
        if r.pos != input.len() {
            return Err(EntryError::Invalid("trailing bytes"));
        }
        Ok(QueueEntry {
            at,
            unix,
            op: OnceLock::new(),
            raw: OnceLock::from(input.clone()),
        })
    }
}

/// Rebuilds the message of an enqueue op (`None` when its properties do not decode).
pub fn message_of(op: &QueueOp) -> Option<Message> {
    let QueueOp::Enqueue {
        exchange,
        routing_key,
        properties,
        body,
        ..
    } = op
    else {
        return None;
    };
    let decoded = BasicProperties::decode(properties).ok()?;
    Some(Message::from_amqp(
        exchange.clone(),
        routing_key.clone(),
        decoded,
        properties.clone(),
        body.clone(),
    ))
}

pub(super) struct Reader<'a> {
    pub(super) buf: &'a Bytes,
    pub(super) pos: usize,
}

impl Reader<'_> {
    /// One op (`batch`: a batch may follow; a batch's own ops may not be batches).
    pub(super) fn op(&mut self, batch: bool) -> Result<QueueOp, EntryError> {
        let code = self.u8("op")?;
        Ok(match code {
            1 => {
                let publisher = match self.u8("publisher flag")? {
                    0 => None,
                    1 => Some((self.u64("publisher")?, self.u64("sequence")?)),
                    _ => return Err(EntryError::Invalid("publisher flag")),
                };
                QueueOp::Enqueue {
                    publisher,
                    exchange: self.str8("exchange")?,
                    routing_key: self.str8("routing key")?,
                    properties: self.bytes32("properties")?,
                    body: self.bytes32("body")?,
                }
            }
            2 => QueueOp::Checkout {
                consumer: self.u64("consumer")?,
                settings: self.settings()?,
            },
            3 => QueueOp::Cancel {
                consumer: self.u64("consumer")?,
            },
            4 => QueueOp::Credit {
                consumer: self.u64("consumer")?,
                credit: self.u32("credit")?,
                drain: self.bool("drain")?,
            },
            5 => QueueOp::Settle(self.offsets()?),
            6 => QueueOp::Return(self.offsets()?),
            18 => QueueOp::Fail(self.offsets()?),
            7 => QueueOp::Release(self.offsets()?),
            8 => QueueOp::Discard(self.offsets()?),
            16 => QueueOp::DeadLettered(self.offsets()?),
            9 => QueueOp::PublisherDown(self.u64("publisher")?),
            10 => QueueOp::Tick,
            11 => QueueOp::Purge,
            12 => QueueOp::Delete,
            13 => QueueOp::Get {
                ack_required: self.bool("ack required")?,
            },
            15 => QueueOp::Reconfigure {
                version: self.u64("version")?,
                settings: Box::new(self.policy()?),
            },
            17 => QueueOp::Suspect {
                consumer: self.u64("consumer")?,
                suspected: self.bool("suspected")?,
            },
            14 if batch => {
                // Each op takes at least its code byte: checked before anything is built.
                let n = self.u32("batch")? as usize;
                if n > MAX_BATCH_OPS {
                    return Err(EntryError::Invalid("batch of more than 65,536 ops"));
                }
                if n > self.buf.len().saturating_sub(self.pos) {
                    return Err(EntryError::Truncated("batch"));
                }
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    ops.push(self.op(false)?);
                }
                QueueOp::Batch(ops)
            }
            other => return Err(EntryError::Op(other)),
        })
    }

    /// Checks one op as `op` would read it, building nothing for the ops a batch is made
    /// of (enqueues and settlements); the rare ones are read and dropped.
    fn check_op(&mut self, batch: bool) -> Result<(), EntryError> {
        let start = self.pos;
        match self.u8("op")? {
            1 => {
                match self.u8("publisher flag")? {
                    0 => {}
                    1 => {
                        self.take(16, "publisher")?;
                    }
                    _ => return Err(EntryError::Invalid("publisher flag")),
                }
                for what in ["exchange", "routing key"] {
                    let n = usize::from(self.u8(what)?);
                    std::str::from_utf8(self.take(n, what)?)
                        .map_err(|_| EntryError::Invalid(what))?;
                }
                for what in ["properties", "body"] {
                    let n = self.u32(what)? as usize;
                    self.take(n, what)?;
                }
            }
            5..=8 | 16 => {
                let n = self.u32("offset count")? as usize;
                self.take(n.saturating_mul(8), "offsets")?;
            }
            14 if batch => {
                let n = self.u32("batch")? as usize;
                if n > MAX_BATCH_OPS {
                    return Err(EntryError::Invalid("batch of more than 65,536 ops"));
                }
                for _ in 0..n {
                    self.check_op(false)?;
                }
            }
            _ => {
                self.pos = start;
                self.op(batch)?;
            }
        }
        Ok(())
    }

    pub(super) fn settings(&mut self) -> Result<ConsumerSettings, EntryError> {
        let tag = self.str8("tag")?;
        let connection = self.u64("connection")?;
        let flags = self.u8("flags")?;
        if flags & !0b111 != 0 {
            return Err(EntryError::Invalid("flags"));
        }
        let prefetch = self.u32("prefetch")?;
        let priority = self.u32("priority")? as i32;
        let table = self.bytes32("arguments")?;
        let arguments = decode_field_table(&table).map_err(|_| EntryError::Invalid("arguments"))?;
        let credit = self.u32("credit")?;
        Ok(ConsumerSettings {
            tag,
            connection,
            ack_required: flags & 1 != 0,
            exclusive: flags & 2 != 0,
            prefetch,
            priority,
            arguments,
            credit: (flags & 4 != 0).then_some(credit),
        })
    }

    fn present(&mut self, what: &'static str) -> Result<bool, EntryError> {
        self.bool(what)
    }

    pub(super) fn policy(&mut self) -> Result<PolicySettings, EntryError> {
        let mut n = [None; 4];
        for (slot, what) in
            n.iter_mut()
                .zip(["message ttl", "expires", "max length", "max length bytes"])
        {
            if self.present(what)? {
                *slot = Some(self.u64(what)?);
            }
        }
        let overflow = match self.u8("overflow")? {
            0 => Overflow::DropHead,
            1 => Overflow::RejectPublish,
            2 => Overflow::RejectPublishDlx,
            _ => return Err(EntryError::Invalid("overflow")),
        };
        let dlx = match self.present("dead-letter exchange")? {
            true => Some(self.str8("dead-letter exchange")?),
            false => None,
        };
        let dlrk = match self.present("dead-letter routing key")? {
            true => Some(self.str8("dead-letter routing key")?),
            false => None,
        };
        let delivery_limit = match self.present("delivery limit")? {
            true => Some(self.u64("delivery limit")? as i64),
            false => None,
        };
        let dead_letter_strategy = match self.u8("dead-letter strategy")? {
            0 => None,
            1 => Some("at-most-once".to_owned()),
            2 => Some("at-least-once".to_owned()),
            _ => return Err(EntryError::Invalid("dead-letter strategy")),
        };
        let [message_ttl, expires, max_length, max_length_bytes] = n;
        Ok(PolicySettings {
            message_ttl,
            expires,
            max_length,
            max_length_bytes,
            overflow,
            dead_letter_exchange: dlx,
            dead_letter_routing_key: dlrk,
            delivery_limit,
            dead_letter_strategy,
        })
    }

    pub(super) fn message(&mut self) -> Result<Message, EntryError> {
        let exchange = self.str8("exchange")?;
        let routing_key = self.str8("routing key")?;
        let properties = self.bytes32("properties")?;
        let body = self.bytes32("body")?;
        let decoded =
            BasicProperties::decode(&properties).map_err(|_| EntryError::Invalid("properties"))?;
        Ok(Message::from_amqp(
            exchange,
            routing_key,
            decoded,
            properties,
            body,
        ))
    }

    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], EntryError> {
        let end = self.pos.checked_add(n).ok_or(EntryError::Truncated(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(EntryError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, EntryError> {
        Ok(self.take(1, what)?.first().copied().unwrap_or_default())
    }

    pub(super) fn bool(&mut self, what: &'static str) -> Result<bool, EntryError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(EntryError::Invalid(what)),
        }
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, EntryError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| EntryError::Truncated(what))?,
        ))
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, EntryError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| EntryError::Truncated(what))?,
        ))
    }

    pub(super) fn str8(&mut self, what: &'static str) -> Result<ShortString, EntryError> {
        let n = usize::from(self.u8(what)?);
        let start = self.pos;
        self.take(n, what)?;
        ShortString::try_from_bytes(self.buf.slice(start..start + n))
            .map_err(|_| EntryError::Invalid(what))
    }

    pub(super) fn bytes32(&mut self, what: &'static str) -> Result<Bytes, EntryError> {
        let n = self.u32(what)? as usize;
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.buf.slice(start..start + n))
    }

    pub(super) fn offsets(&mut self) -> Result<Vec<u64>, EntryError> {
        let n = self.u32("offset count")? as usize;
        // Checked against what is left before anything is allocated.
        if n.saturating_mul(8) > self.buf.len().saturating_sub(self.pos) {
            return Err(EntryError::Truncated("offsets"));
        }
        (0..n).map(|_| self.u64("offset")).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub(crate) mod tests {
    use super::*;
    use pier_wire::FieldTable;
    use proptest::prelude::*;

    /// The op of an encoded entry, read in full at once (what decoding did before it
    /// only checked); `None` where that fails.
    fn read_whole(b: &Bytes) -> Option<QueueOp> {
        let mut r = Reader { buf: b, pos: 0 };
        (r.u8("version").ok()? == VERSION).then_some(())?;
        r.take(16, "clocks").ok()?;
        let op = r.op(true).ok()?;
        (r.pos == b.len()).then_some(op)
    }

    fn batch_entry(mut ops: Vec<QueueOp>) -> QueueEntry {
        let op = match ops.len() {
            1 => ops.remove(0),
            _ => QueueOp::Batch(ops),
        };
        QueueEntry::new(1, 2, op)
    }

    pub(crate) fn op_strategy() -> impl Strategy<Value = QueueOp> {
        let offsets = proptest::collection::vec(0..64u64, 0..6);
        prop_oneof![
            (
                proptest::option::of((0..4u64, 0..100u64)),
                "[a-z]{0,8}",
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(publisher, rk, body)| QueueOp::Enqueue {
                    publisher,
                    exchange: ShortString::from("amq.topic"),
                    routing_key: ShortString::try_from_string(rk).unwrap(),
                    properties: BasicProperties::default().to_bytes().unwrap(),
                    body: Bytes::from(body),
                }),
            (
                0..4u64,
                any::<bool>(),
                0..5u32,
                proptest::option::of(0..5u32)
            )
                .prop_map(|(consumer, ack_required, prefetch, credit)| {
                    QueueOp::Checkout {
                        consumer,
                        settings: ConsumerSettings {
                            tag: ShortString::from(format!("ctag-{consumer}").as_str()),
                            connection: 7,
                            ack_required,
                            exclusive: false,
                            prefetch,
                            priority: 0,
                            arguments: FieldTable::new(),
                            credit,
                        },
                    }
                }),
            (0..4u64).prop_map(|consumer| QueueOp::Cancel { consumer }),
            (0..4u64, any::<bool>()).prop_map(|(consumer, suspected)| QueueOp::Suspect {
                consumer,
                suspected
            }),
            (0..4u64, 0..5u32, any::<bool>()).prop_map(|(consumer, credit, drain)| {
                QueueOp::Credit {
                    consumer,
                    credit,
                    drain,
                }
            }),
            offsets.clone().prop_map(QueueOp::Settle),
            offsets.clone().prop_map(QueueOp::Return),
            offsets.clone().prop_map(QueueOp::Fail),
            offsets.clone().prop_map(QueueOp::Release),
            offsets.clone().prop_map(QueueOp::Discard),
            offsets.prop_map(QueueOp::DeadLettered),
            (0..4u64).prop_map(QueueOp::PublisherDown),
            Just(QueueOp::Tick),
            Just(QueueOp::Purge),
            any::<bool>().prop_map(|ack_required| QueueOp::Get { ack_required }),
            policy_strategy().prop_map(|(version, settings)| QueueOp::Reconfigure {
                version,
                settings: Box::new(settings),
            }),
        ]
    }

    pub(crate) fn policy_strategy() -> impl Strategy<Value = (u64, PolicySettings)> {
        (
            0..6u64,
            proptest::option::of(1..300u64),
            proptest::option::of(100..900u64),
            proptest::option::of(0..6u64),
            proptest::option::of(0..200u64),
            0..3u8,
            any::<bool>(),
            proptest::option::of("[a-z]{0,6}"),
            proptest::option::of(-1..4i64),
        )
            .prop_map(
                |(version, ttl, expires, len, bytes, overflow, dlx, dlrk, limit)| {
                    (
                        version,
                        PolicySettings {
                            message_ttl: ttl,
                            expires,
                            max_length: len,
                            max_length_bytes: bytes,
                            overflow: [
                                Overflow::DropHead,
                                Overflow::RejectPublish,
                                Overflow::RejectPublishDlx,
                            ][usize::from(overflow)],
                            dead_letter_exchange: dlx.then(|| ShortString::from("dlx")),
                            dead_letter_routing_key: dlrk
                                .map(|k| ShortString::try_from_string(k).unwrap()),
                            delivery_limit: limit,
                            // Varied with the version: every encoding of the strategy.
                            dead_letter_strategy: match version % 3 {
                                0 => None,
                                1 => Some("at-most-once".to_owned()),
                                _ => Some("at-least-once".to_owned()),
                            },
                        },
                    )
                },
            )
    }

    proptest! {
        #[test]
        fn entries_round_trip(op in op_strategy(), at in any::<u64>(), unix in any::<u64>()) {
            let e = QueueEntry::new(at, unix, op);
            let b = e.to_bytes().unwrap();
            prop_assert_eq!(QueueEntry::decode(&b).unwrap(), e);
        }

        /// Any cut or any changed byte decodes to an error or to some entry: never a panic.
        /// Decoding checks without building the op: it accepts exactly what reading the
        /// whole op accepts, and the op built later is the one that reading gives.
        #[test]
        fn damaged_entries_never_panic(
            ops in proptest::collection::vec(op_strategy(), 1..5),
            cut in any::<usize>(),
            at in any::<usize>(),
            x in any::<u8>(),
        ) {
            let b = batch_entry(ops).to_bytes().unwrap();
            let cut = cut % (b.len() + 1);
            let mut v = b.to_vec();
            let i = at % v.len();
            v[i] ^= x;
            for damaged in [b.slice(..cut), Bytes::from(v)] {
                let eager = read_whole(&damaged);
                match QueueEntry::decode(&damaged) {
                    Ok(e) => prop_assert_eq!(Some(e.op()), eager.as_ref()),
                    Err(_) => prop_assert!(eager.is_none()),
                }
            }
        }
    }

    #[test]
    fn a_message_survives_the_round_trip() {
        let props = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let m = Message::from_amqp(
            "x".into(),
            "rk".into(),
            props.clone(),
            props.to_bytes().unwrap(),
            Bytes::from_static(b"body"),
        );
        let e = QueueEntry::new(5, 6, QueueOp::enqueue(&m, Some((1, 2))));
        let back = QueueEntry::decode(&e.to_bytes().unwrap()).unwrap();
        assert_eq!(message_of(back.op()).unwrap(), m);
        assert_eq!(
            QueueEntry::decode(&Bytes::from_static(&[2])),
            Err(EntryError::Version(2))
        );
        // A huge offset count is refused before anything is allocated for it.
        let mut b = BytesMut::new();
        b.put_u8(1);
        b.put_u64_le(0);
        b.put_u64_le(0);
        b.put_u8(5);
        b.put_u32_le(u32::MAX);
        assert_eq!(
            QueueEntry::decode(&b.freeze()),
            Err(EntryError::Truncated("offsets"))
        );
    }

    /// An entry is encoded once: again it is the same bytes, decoded it is its input, and
    /// new clocks forget the encoding.
    #[test]
    fn an_entry_keeps_its_encoding() {
        let mut e = QueueEntry::new(0, 0, QueueOp::Settle(vec![1, 2, 3]));
        e.set_clock(5, 6);
        let a = e.to_bytes().unwrap();
        assert_eq!(a.as_ptr(), e.to_bytes().unwrap().as_ptr());
        let d = QueueEntry::decode(&a).unwrap();
        assert_eq!(d, e);
        assert_eq!(d.to_bytes().unwrap().as_ptr(), a.as_ptr());
        e.set_clock(7, 8);
        let b = e.to_bytes().unwrap();
        assert_ne!(a, b);
        assert_eq!(QueueEntry::decode(&b).unwrap().at, 7);
    }
}
