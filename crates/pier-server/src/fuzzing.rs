//! Connection fuzzing (feature `fuzzing`): turns arbitrary bytes into a client conversation and
//! plays it against the real connection code ([`crate::serve_connection`]) over an in-memory
//! stream, checking that the server neither panics nor hangs and that nothing of the
//! connection is left in the broker afterwards.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/connection.rs` and the deterministic
//! smoke test `crates/pier-server/tests/connection_fuzz_smoke.rs`.
//!
//! ```text
//!  fuzz bytes ─script()─► [Write(frames) | Sleep | Shutdown]* ─duplex─► serve_connection ─► Broker
//!                                                        ◄─drained──┘
//! ```
//!
//! The bytes are read structurally (a byte-driven generator, not `arbitrary`, so no extra
//! dependency): most inputs start with a valid handshake, then mostly well-formed method
//! frames with fuzzer-chosen arguments from small pools of names (so that declares, binds,
//! publishes and consumes meet), content, heartbeats, and now and then garbage, truncated or
//! corrupted frames. Exhausted input reads as zeros.
#![allow(clippy::panic)] // panicking is how a fuzz invariant fails

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pier_broker::Broker;
use pier_wire::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::{Registry, ServerConfig};

/// One step of a scripted client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Bytes written to the server in one write.
    Write(Vec<u8>),
    /// The client pauses (virtual time: the runtime's clock is paused and auto-advances).
    Sleep(Duration),
    /// The server begins shutting down (connections are closed with 320).
    Shutdown,
}

/// Reads the fuzz input front to back; past its end every read is 0.
struct Src<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Src<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n.max(1)
    }
    /// Up to `max` raw bytes.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.u8()).collect()
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        let i = self.below(items.len());
        items[i].clone()
    }
}

const QUEUES: &[&str] = &["q0", "q1", "q2", "", "amq.rabbitmq.reply-to", "amq.q"];
const EXCHANGES: &[&str] = &[
    "",
    "x0",
    "x1",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "amq.match",
    "amq.default",
];
const KINDS: &[&str] = &[
    "direct",
    "fanout",
    "topic",
    "headers",
    "x-delayed-message",
    "x-consistent-hash",
    "bogus",
];
const KEYS: &[&str] = &["", "q0", "q1", "a.b", "#", "*.b", "a.*.#", "q2"];
const TAGS: &[&str] = &["", "c0", "c1", "amq.ctag-x"];
const ARG_KEYS: &[&str] = &[
    "x-max-length",
    "x-max-length-bytes",
    "x-message-ttl",
    "x-expires",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-mode",
    "x-delayed-type",
    "alternate-exchange",
    "x-match",
    "x-priority",
    "x-cancel-on-ha-failover",
    "x-consumer-timeout",
    "x-delay",
    "x-stream-offset",
    "k",
];
const ARG_STRINGS: &[&str] = &[
    "",
    "x0",
    "q1",
    "all",
    "any",
    "drop-head",
    "reject-publish",
    "reject-publish-dlx",
    "lazy",
    "classic",
    "quorum",
    "stream",
    "direct",
    "topic",
];

fn short(src: &mut Src<'_>, pool: &[&str]) -> ShortString {
    if src.below(16) == 0 {
        // Anything, including invalid UTF-8 (the encoder writes the bytes as they are).
        ShortString::try_from_bytes(Bytes::from(src.bytes(40)))
            .unwrap_or_else(|_| ShortString::from("\u{fffd}"))
    } else {
        ShortString::from(src.pick(pool))
    }
}

fn value(src: &mut Src<'_>, depth: u8) -> FieldValue {
    match src.below(12) {
        0 => FieldValue::Bool(src.bool()),
        1 => FieldValue::ShortShortInt(src.u8() as i8),
        2 => FieldValue::ShortInt(src.u16() as i16),
        3 => FieldValue::LongInt(i32::from(src.u8() as i8) * 1000),
        4 => FieldValue::LongLongInt(src.u64() as i64),
        5 => FieldValue::LongUInt(src.u32()),
        6 => FieldValue::Double(f64::from(src.u16()) / 7.0),
        7 if depth < 3 => FieldValue::Table(table(src, depth + 1)),
        8 if depth < 3 => {
            let n = src.below(3);
            FieldValue::Array((0..n).map(|_| value(src, depth + 1)).collect())
        }
        9 => FieldValue::Void,
        10 => FieldValue::Timestamp(src.u64()),
        _ => FieldValue::LongString(LongString::from(src.pick(ARG_STRINGS))),
    }
}

fn table(src: &mut Src<'_>, depth: u8) -> FieldTable {
    let mut t = FieldTable::new();
    // Mostly empty: arguments change semantics a lot, and most real declares have none.
    let n = if src.below(3) == 0 { src.below(4) } else { 0 };
    for _ in 0..n {
        let key = short(src, ARG_KEYS);
        t.insert(key, value(src, depth));
    }
    t
}

fn channel(src: &mut Src<'_>) -> u16 {
    match src.u8() {
        0..=199 => 1 + u16::from(src.u8() % 3),
        200..=229 => 0,
        _ => src.u16(),
    }
}

fn properties(src: &mut Src<'_>) -> BasicProperties {
    let mut p = BasicProperties::default();
    let flags = src.u8();
    if flags & 1 != 0 {
        p.delivery_mode = Some(1 + src.u8() % 2);
    }
    if flags & 2 != 0 {
        p.priority = Some(src.u8() % 12);
    }
    if flags & 4 != 0 {
        p.expiration = Some(ShortString::from(src.pick(&["0", "10", "1000", "-1", "x"])));
    }
    if flags & 8 != 0 {
        p.headers = Some(table(src, 0));
    }
    if flags & 16 != 0 {
        p.reply_to = Some(short(src, QUEUES));
    }
    if flags & 32 != 0 {
        p.user_id = Some(ShortString::from(src.pick(&["guest", "other"])));
    }
    if flags & 64 != 0 {
        p.message_id = Some(short(src, KEYS));
    }
    p
}

/// A method a client might send (and a few only servers send), with fuzzer-chosen arguments.
fn method(src: &mut Src<'_>) -> Method {
    let nowait = |src: &mut Src<'_>| src.below(8) == 0;
    match src.below(40) {
        0..=2 => Method::ChannelOpen(ChannelOpen::default()),
        3 => Method::ChannelClose(ChannelClose {
            reply_code: 200,
            reply_text: ShortString::from("bye"),
            class_id: 0,
            method_id: 0,
        }),
        4 => Method::ChannelCloseOk(ChannelCloseOk {}),
        5 => Method::ChannelFlow(ChannelFlow { active: src.bool() }),
        6 => Method::AccessRequest(AccessRequest {
            realm: ShortString::from("/data"),
            ..AccessRequest::default()
        }),
        7 | 8 => Method::ExchangeDeclare(ExchangeDeclare {
            ticket: 0,
            exchange: short(src, EXCHANGES),
            kind: short(src, KINDS),
            passive: src.below(6) == 0,
            durable: src.bool(),
            auto_delete: src.below(4) == 0,
            internal: src.below(6) == 0,
            nowait: nowait(src),
            arguments: table(src, 0),
        }),
        9 => Method::ExchangeDelete(ExchangeDelete {
            ticket: 0,
            exchange: short(src, EXCHANGES),
            if_unused: src.bool(),
            nowait: nowait(src),
        }),
        10 | 11 => Method::ExchangeBind(ExchangeBind {
            ticket: 0,
            destination: short(src, EXCHANGES),
            source: short(src, EXCHANGES),
            routing_key: short(src, KEYS),
            nowait: nowait(src),
            arguments: table(src, 0),
        }),
        12 => Method::ExchangeUnbind(ExchangeUnbind {
            ticket: 0,
            destination: short(src, EXCHANGES),
            source: short(src, EXCHANGES),
            routing_key: short(src, KEYS),
            nowait: nowait(src),
            arguments: table(src, 0),
        }),
        13..=15 => Method::QueueDeclare(QueueDeclare {
            ticket: 0,
            queue: short(src, QUEUES),
            passive: src.below(6) == 0,
            durable: src.bool(),
            exclusive: src.below(3) == 0,
            auto_delete: src.below(4) == 0,
            nowait: nowait(src),
            arguments: table(src, 0),
        }),
        16 | 17 => Method::QueueBind(QueueBind {
            ticket: 0,
            queue: short(src, QUEUES),
            exchange: short(src, EXCHANGES),
            routing_key: short(src, KEYS),
            nowait: nowait(src),
            arguments: table(src, 0),
        }),
        18 => Method::QueuePurge(QueuePurge {
            ticket: 0,
            queue: short(src, QUEUES),
            nowait: nowait(src),
        }),
        19 => Method::QueueDelete(QueueDelete {
            ticket: 0,
            queue: short(src, QUEUES),
            if_unused: src.bool(),
            if_empty: src.bool(),
            nowait: nowait(src),
        }),
        20 => Method::QueueUnbind(QueueUnbind {
            ticket: 0,
            queue: short(src, QUEUES),
            exchange: short(src, EXCHANGES),
            routing_key: short(src, KEYS),
            arguments: table(src, 0),
        }),
        21 => Method::BasicQos(BasicQos {
            prefetch_size: if src.below(8) == 0 { src.u32() } else { 0 },
            prefetch_count: u16::from(src.u8() % 5),
            global: src.bool(),
        }),
        22..=24 => Method::BasicConsume(BasicConsume {
            ticket: 0,
            queue: short(src, QUEUES),
            consumer_tag: short(src, TAGS),
            no_local: src.below(8) == 0,
            no_ack: src.bool(),
            exclusive: src.below(4) == 0,
            nowait: nowait(src),
            arguments: table(src, 0),
        }),
        25 => Method::BasicCancel(BasicCancel {
            consumer_tag: short(src, TAGS),
            nowait: nowait(src),
        }),
        26 | 27 => Method::BasicGet(BasicGet {
            ticket: 0,
            queue: short(src, QUEUES),
            no_ack: src.bool(),
        }),
        28..=30 => Method::BasicAck(BasicAck {
            delivery_tag: delivery_tag(src),
            multiple: src.bool(),
        }),
        31 => Method::BasicReject(BasicReject {
            delivery_tag: delivery_tag(src),
            requeue: src.bool(),
        }),
        32 => Method::BasicNack(BasicNack {
            delivery_tag: delivery_tag(src),
            multiple: src.bool(),
            requeue: src.bool(),
        }),
        33 => {
            if src.bool() {
                Method::BasicRecover(BasicRecover {
                    requeue: src.bool(),
                })
            } else {
                Method::BasicRecoverAsync(BasicRecoverAsync {
                    requeue: src.bool(),
                })
            }
        }
        34 => Method::ConfirmSelect(ConfirmSelect {
            nowait: nowait(src),
        }),
        35 => match src.below(3) {
            0 => Method::TxSelect(TxSelect {}),
            1 => Method::TxCommit(TxCommit {}),
            _ => Method::TxRollback(TxRollback {}),
        },
        36 => match src.below(5) {
            0 => Method::ConnectionClose(ConnectionClose {
                reply_code: 200,
                reply_text: ShortString::from("bye"),
                class_id: 0,
                method_id: 0,
            }),
            1 => Method::ConnectionCloseOk(ConnectionCloseOk {}),
            2 => Method::ConnectionUpdateSecret(ConnectionUpdateSecret {
                new_secret: LongString::from("s"),
                reason: ShortString::from("r"),
            }),
            3 => Method::ConnectionBlocked(ConnectionBlocked::default()),
            _ => Method::ConnectionTuneOk(ConnectionTuneOk::default()),
        },
        // Methods only a server sends.
        37 => match src.below(4) {
            0 => Method::BasicDeliver(BasicDeliver {
                delivery_tag: 1,
                ..BasicDeliver::default()
            }),
            1 => Method::ChannelOpenOk(ChannelOpenOk::default()),
            2 => Method::BasicGetEmpty(BasicGetEmpty::default()),
            _ => Method::ConnectionStart(ConnectionStart::default()),
        },
        38 => Method::ChannelFlowOk(ChannelFlowOk { active: src.bool() }),
        _ => Method::BasicPublish(BasicPublish {
            ticket: 0,
            exchange: short(src, EXCHANGES),
            routing_key: short(src, KEYS),
            mandatory: src.below(4) == 0,
            immediate: src.below(16) == 0,
        }),
    }
}

fn delivery_tag(src: &mut Src<'_>) -> u64 {
    match src.below(8) {
        0 => 0,
        1 => src.u64(),
        _ => u64::from(src.u8() % 8) + 1,
    }
}

fn method_frame(out: &mut Vec<u8>, channel: u16, m: &Method) {
    let mut buf = BytesMut::new();
    // Invalid fuzzed strings may fail to encode; the frame is then just left out.
    if try_encode_method_frame(&mut buf, channel, m).is_ok() {
        out.extend_from_slice(&buf);
    }
}

/// A publish with its content (usually well-formed: header then body frames that fit).
fn publish(src: &mut Src<'_>, out: &mut Vec<u8>, frame_max: u32) {
    let ch = channel(src);
    let m = Method::BasicPublish(BasicPublish {
        ticket: 0,
        exchange: short(src, EXCHANGES),
        routing_key: short(src, KEYS),
        mandatory: src.below(4) == 0,
        immediate: src.below(32) == 0,
    });
    method_frame(out, ch, &m);
    let body_len = match src.below(8) {
        0 => 0,
        1 => usize::from(src.u16()) * 4,
        _ => src.below(64),
    };
    let announced = match src.below(16) {
        0 => body_len as u64 + 1,
        1 => body_len.saturating_sub(1) as u64,
        2 => src.u64(),
        _ => body_len as u64,
    };
    let props = properties(src);
    let Ok(raw) = props.to_bytes() else { return };
    let mut buf = BytesMut::new();
    let class = if src.below(32) == 0 {
        50
    } else {
        class_id::BASIC
    };
    encode_content_header(&mut buf, ch, class, announced, &raw);
    let fill = src.u8();
    let body = vec![fill; body_len];
    let fm = if src.below(16) == 0 { 0 } else { frame_max };
    encode_body_frames(&mut buf, ch, &body, fm);
    out.extend_from_slice(&buf);
}

/// The handshake a client sends before the server answers, all at once (the server reads it
/// in order as its own replies go out); sometimes broken somewhere.
fn handshake(src: &mut Src<'_>, out: &mut Vec<u8>) -> u32 {
    let mode = src.u8();
    if mode % 32 == 0 {
        // Garbage instead of (or before) a header.
        out.extend(src.bytes(24));
        if src.bool() {
            out.extend_from_slice(&PROTOCOL_HEADER);
        }
        return 131_072;
    }
    out.extend_from_slice(&PROTOCOL_HEADER);
    let mut caps = FieldTable::new();
    for (bit, name) in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "basic.nack",
    ]
    .iter()
    .enumerate()
    {
        if mode & (1 << (bit % 8)) != 0 {
            caps.insert(*name, FieldValue::Bool(true));
        }
    }
    let mut props = FieldTable::new();
    props.insert("capabilities", FieldValue::Table(caps));
    let (mechanism, response): (&str, &[u8]) = match mode % 32 {
        1 => ("PLAIN", b"\0guest\0wrong"),
        2 => (
            "AMQPLAIN",
            b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest",
        ),
        3 => ("EXTERNAL", b""),
        4 => ("PLAIN", b"guest"),
        _ => ("PLAIN", b"\0guest\0guest"),
    };
    method_frame(
        out,
        0,
        &Method::ConnectionStartOk(ConnectionStartOk {
            client_properties: props,
            mechanism: ShortString::from(mechanism),
            response: LongString::from(response),
            locale: ShortString::from("en_US"),
        }),
    );
    let tune = src.u8();
    let frame_max = match tune % 4 {
        0 => 4096,
        1 => 0,
        _ => 131_072,
    };
    method_frame(
        out,
        0,
        &Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: if tune & 0x10 != 0 { 2 } else { 0 },
            frame_max,
            heartbeat: if tune & 0x60 == 0x60 { 1 } else { 0 },
        }),
    );
    let vhost = if tune & 0x80 != 0 && src.below(8) == 0 {
        "nope"
    } else {
        "/"
    };
    method_frame(
        out,
        0,
        &Method::ConnectionOpen(ConnectionOpen {
            virtual_host: ShortString::from(vhost),
            ..ConnectionOpen::default()
        }),
    );
    if frame_max == 0 {
        131_072
    } else {
        frame_max
    }
}

/// Interprets fuzz input as a client's conversation.
pub fn script(data: &[u8]) -> Vec<Step> {
    let mut src = Src { data, pos: 0 };
    let mut steps = Vec::new();
    let mut out = Vec::new();
    let frame_max = handshake(&mut src, &mut out);
    // Cap the work per input: long inputs are not more interesting, just slower.
    let mut budget = 400usize;
    while !src.done() && budget > 0 {
        budget -= 1;
        match src.u8() {
            0..=139 => {
                let ch = channel(&mut src);
                let m = method(&mut src);
                method_frame(&mut out, ch, &m);
            }
            140..=199 => publish(&mut src, &mut out, frame_max),
            200..=209 => {
                // A content header or body on its own.
                let ch = channel(&mut src);
                let mut buf = BytesMut::new();
                if src.bool() {
                    let raw = properties(&mut src).to_bytes().unwrap_or_default();
                    encode_content_header(&mut buf, ch, class_id::BASIC, u64::from(src.u8()), &raw);
                } else {
                    encode_body_frames(&mut buf, ch, &src.bytes(16), frame_max);
                }
                out.extend_from_slice(&buf);
            }
            210..=219 => {
                let mut buf = BytesMut::new();
                encode_heartbeat(&mut buf);
                if src.below(8) == 0 {
                    // Heartbeat on a channel other than 0.
                    buf[2] = 1;
                }
                out.extend_from_slice(&buf);
            }
            220..=229 => {
                // A write boundary, sometimes with a pause (heartbeats, timers, consumer
                // timeouts get their chance).
                steps.push(Step::Write(std::mem::take(&mut out)));
                if src.bool() {
                    let ms = u64::from(src.u16());
                    steps.push(Step::Sleep(Duration::from_millis(ms * 20)));
                }
            }
            230..=237 => {
                // A frame with one byte changed.
                let ch = channel(&mut src);
                let m = method(&mut src);
                let mut frame = Vec::new();
                method_frame(&mut frame, ch, &m);
                if !frame.is_empty() {
                    let i = src.below(frame.len());
                    frame[i] ^= src.u8() | 1;
                }
                out.extend(frame);
            }
            238..=243 => {
                // A frame cut short (what follows is read as part of it).
                let ch = channel(&mut src);
                let m = method(&mut src);
                let mut frame = Vec::new();
                method_frame(&mut frame, ch, &m);
                frame.truncate(src.below(frame.len()));
                out.extend(frame);
            }
            244..=249 => out.extend(src.bytes(32)),
            250 => {
                steps.push(Step::Write(std::mem::take(&mut out)));
                steps.push(Step::Shutdown);
            }
            _ => {
                // A frame header announcing a size, with random type and payload.
                let kind = src.pick(&[1u8, 2, 3, 4, 8, 0, 0xCE]);
                let ch = channel(&mut src);
                let payload = src.bytes(24);
                out.push(kind);
                out.extend_from_slice(&ch.to_be_bytes());
                out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                out.extend(payload);
                out.push(FRAME_END);
            }
        }
    }
    if !out.is_empty() {
        steps.push(Step::Write(out));
    }
    steps
}

/// A server configuration for fuzzing: RabbitMQ's defaults, with the consumer timeout short
/// enough to trigger within a script's pauses.
pub fn config() -> ServerConfig {
    ServerConfig {
        consumer_timeout: Some(Duration::from_secs(60)),
        ..ServerConfig::default()
    }
}

/// Plays `data` (see [`script`]) against a fresh in-memory broker and checks the invariants:
/// no panic, the connection ends within a generous (virtual) time bound after the client
/// hangs up, and afterwards no consumer, exclusive queue or unacknowledged message of the
/// connection remains. Panics on a violation. Returns how many bytes the server sent.
pub fn run(data: &[u8]) -> usize {
    let steps = script(data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Virtual time: timeouts (handshake, close, heartbeat) pass instantly when idle.
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(run_steps(steps))
}

async fn run_steps(steps: Vec<Step>) -> usize {
    let broker = Arc::new(Broker::with_defaults());
    let registry = Arc::new(Registry::new());
    let shutdown = CancellationToken::new();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let serve = tokio::spawn(crate::serve_connection(
        server,
        Arc::clone(&broker),
        Arc::clone(&registry),
        config(),
        shutdown.clone(),
    ));
    let (mut rd, mut wr) = tokio::io::split(client);
    // The server's output is drained so that it never stalls on a full pipe.
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0;
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            total += n;
        }
        total
    });
    for step in steps {
        match step {
            Step::Write(bytes) => {
                if wr.write_all(&bytes).await.is_err() {
                    break; // the server hung up
                }
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
            Step::Shutdown => shutdown.cancel(),
        }
    }
    let _ = wr.shutdown().await;
    // close_timeout (3 s) and the handshake timeout (10 s) bound every wait after EOF.
    match tokio::time::timeout(Duration::from_secs(120), serve).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("connection task failed: {e}"),
        Err(_) => panic!("connection did not finish within 120 s after the client hung up"),
    }
    drop(wr);
    let sent = match tokio::time::timeout(Duration::from_secs(30), drain).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => panic!("drain task failed: {e}"),
        Err(_) => panic!("server output not closed after the connection ended"),
    };
    assert_eq!(
        registry.connection_count(),
        0,
        "connection still registered"
    );
    for vhost in broker.vhosts() {
        for q in vhost.queues() {
            assert!(
                !q.is_exclusive(),
                "exclusive queue {:?} outlived its connection",
                q.name()
            );
            let stats = q.stats();
            assert_eq!(stats.consumers, 0, "queue {:?} kept a consumer", q.name());
            assert_eq!(
                stats.unacked,
                0,
                "queue {:?} kept unacked messages",
                q.name()
            );
        }
    }
    sent
}

/// Hand-made seed conversations (generator input, see [`script`]), written to
/// `fuzz/corpus/connection/` and replayed by the smoke test.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Op bytes of `script` and `method`.
    const M: u8 = 0; // method frame
    const PUB: u8 = 140; // publish with content
    const SPLIT: u8 = 220; // write boundary
    const CH1: [u8; 2] = [0, 0]; // channel() -> 1
                                 // method() indices
    const OPEN: u8 = 0;
    const QDECL: u8 = 13;
    const CONSUME: u8 = 22;
    const GET: u8 = 26;
    const ACK: u8 = 28;
    const CONFIRM: u8 = 34;
    const TX: u8 = 35;
    const QOS: u8 = 21;
    const CLOSE_CONN: u8 = 36;
    let hs = [5u8, 2]; // PLAIN guest, frame_max 131072, no heartbeat
    let m = |idx: u8, args: &[u8]| -> Vec<u8> {
        let mut v = vec![M, CH1[0], CH1[1], idx];
        v.extend_from_slice(args);
        v
    };
    // queue.declare "q0": short(pool index 0) = [nonzero, 0], passive no, durable no,
    // exclusive no, auto_delete no, nowait no, no arguments.
    let qdecl = m(QDECL, &[1, 0, 1, 0, 1, 1, 1, 1]);
    // basic.publish to "" with key "q0": channel, exchange "", key "q0", no mandatory,
    // no immediate, body 10 bytes, announced exact, persistent, basic class, fill, frame_max.
    let publish = [
        PUB, CH1[0], CH1[1], 1, 0, 1, 1, 1, 1, 2, 10, 5, 1, 1, 2, b'x', 1,
    ];
    // connection.close on channel 0 (channel() reads 200 as 0).
    let close = [M, 200, CLOSE_CONN, 0];
    let mut conversation = hs.to_vec();
    conversation.extend(m(OPEN, &[]));
    conversation.extend(&qdecl);
    conversation.extend(m(QOS, &[1, 2, 0]));
    conversation.extend(m(CONSUME, &[1, 0, 1, 1, 1, 0, 1, 1, 1]));
    for _ in 0..3 {
        conversation.extend(&publish);
    }
    conversation.extend([SPLIT, 0]);
    conversation.extend(m(ACK, &[2, 1, 1]));
    conversation.extend(m(ACK, &[2, 3, 0]));
    conversation.extend(&close);

    let mut confirms = hs.to_vec();
    confirms.extend(m(OPEN, &[]));
    confirms.extend(m(CONFIRM, &[1]));
    confirms.extend(&qdecl);
    for _ in 0..4 {
        confirms.extend(&publish);
    }
    confirms.extend(m(GET, &[1, 0, 0]));
    confirms.extend(m(ACK, &[2, 0, 0]));
    confirms.extend(&close);

    let mut tx = hs.to_vec();
    tx.extend(m(OPEN, &[]));
    tx.extend(m(TX, &[0]));
    tx.extend(&qdecl);
    tx.extend(&publish);
    tx.extend(m(TX, &[1]));
    tx.extend(&publish);
    tx.extend(m(TX, &[2]));
    tx.extend(m(GET, &[1, 0, 0]));
    tx.extend(m(ACK, &[2, 0, 0]));
    tx.extend(m(TX, &[1]));

    let mut exclusive = hs.to_vec();
    exclusive.extend(m(OPEN, &[]));
    // exclusive, server-named queue consumed without acks, then a hang-up with unacked ones
    exclusive.extend(m(QDECL, &[1, 3, 1, 0, 0, 1, 1, 1]));
    exclusive.extend(&qdecl);
    exclusive.extend(m(CONSUME, &[1, 0, 1, 1, 1, 0, 1, 1, 1]));
    exclusive.extend(&publish);
    exclusive.extend(&publish);

    vec![
        ("publish_consume_ack", conversation),
        ("confirms_get", confirms),
        ("tx", tx),
        ("exclusive_hangup", exclusive),
        ("handshake_only", hs.to_vec()),
    ]
}
