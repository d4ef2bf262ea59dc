//! The connection's outgoing side: a bounded buffer of encoded frames that the writer task
//! drains to the socket, and the [`DeliverySink`] every subscription's queue delivers into.
//! Deliveries are numbered and recorded as unacknowledged in the broker's
//! `session::Session` under the same lock that appends their MESSAGE frames, so tags reach
//! the wire in order.
//!
//! Backpressure: above `high_watermark` buffered bytes, queues stop delivering (`ready`
//! is false; they are dispatched again once the writer drained) and the reader stops
//! reading the socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::BytesMut;
use pier_broker::session::Session as Unacked;
use pier_broker::{Delivery, DeliverySink, Queue};
use pier_stomp_wire::{encode_heartbeat, Command, Frame, Version};
use pier_wire::ShortString;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::headers::{format_destination, message_headers};
use super::session::message_id;

/// A subscription as the sink needs it to write MESSAGE frames.
#[derive(Debug, Clone)]
pub(crate) struct SubOut {
    pub id: String,
    /// 1.2 with an ack mode other than auto: MESSAGE carries `ack`.
    pub ack_header: bool,
}

pub(crate) struct State {
    buf: BytesMut,
    pub version: Version,
    pub session_id: String,
    pub unacked: Unacked,
    /// By consumer tag.
    pub subs: HashMap<ShortString, SubOut>,
    waiting: Vec<Weak<Queue>>,
    closed: bool,
    /// Subscriptions the broker cancelled (their queue was deleted).
    pub cancelled: Vec<ShortString>,
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    pending: AtomicUsize,
    high_watermark: usize,
    writer: Notify,
    /// Woken when the buffer drained below the watermark.
    pub drained: Notify,
    /// Persistent SENDs whose receipt waits for the disk.
    pub durable_receipts: AtomicUsize,
    pub receipts_done: Notify,
}

impl Outbox {
    pub fn new(high_watermark: usize, session_id: String) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State {
                buf: BytesMut::with_capacity(4096),
                version: Version::V1_0,
                session_id,
                unacked: Unacked::new(),
                subs: HashMap::new(),
                waiting: Vec::new(),
                closed: false,
                cancelled: Vec::new(),
            }),
            pending: AtomicUsize::new(0),
            high_watermark,
            writer: Notify::new(),
            drained: Notify::new(),
            durable_receipts: AtomicUsize::new(0),
            receipts_done: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub fn is_full(&self) -> bool {
        self.pending_bytes() >= self.high_watermark
    }

    /// Queues a frame (a frame that cannot be encoded is logged and dropped).
    pub fn send(&self, frame: &Frame) {
        let mut st = self.lock();
        let version = st.version;
        Self::append(&mut st, &self.pending, frame, version);
        drop(st);
        self.writer.notify_one();
    }

    pub fn send_heartbeat(&self) {
        let mut st = self.lock();
        encode_heartbeat(&mut st.buf);
        self.pending.store(st.buf.len(), Ordering::Release);
        drop(st);
        self.writer.notify_one();
    }

    fn append(st: &mut State, pending: &AtomicUsize, frame: &Frame, version: Version) {
        match frame.encode(version, &mut st.buf) {
            // RabbitMQ writes an LF after every frame (its `trailing_lf`).
            Ok(()) => encode_heartbeat(&mut st.buf),
            Err(e) => tracing::warn!("STOMP frame not sent: {e}"),
        }
        pending.store(st.buf.len(), Ordering::Release);
    }

    /// No more frames: the writer drains what is there and ends.
    pub fn finish(&self) {
        self.lock().closed = true;
        self.writer.notify_one();
    }

    /// Writes buffered frames until [`Outbox::finish`] (or a write fails); `on_write` is
    /// called after each write (heart-beat bookkeeping).
    pub async fn run_writer<W: AsyncWrite + Unpin>(
        self: Arc<Self>,
        mut wr: W,
        on_write: impl Fn(),
    ) -> std::io::Result<()> {
        loop {
            let (chunk, closed, waiting) = {
                let mut st = self.lock();
                let chunk = st.buf.split();
                let waiting = if chunk.is_empty() {
                    std::mem::take(&mut st.waiting)
                } else {
                    Vec::new()
                };
                (chunk, st.closed, waiting)
            };
            if chunk.is_empty() {
                for q in waiting.iter().filter_map(Weak::upgrade) {
                    q.dispatch();
                }
                if closed {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                self.writer.notified().await;
                continue;
            }
            let written = wr.write_all(&chunk).await.and(wr.flush().await);
            let waiting = {
                let mut st = self.lock();
                self.pending.store(st.buf.len(), Ordering::Release);
                if st.buf.len() < self.high_watermark {
                    std::mem::take(&mut st.waiting)
                } else {
                    Vec::new()
                }
            };
            written?;
            on_write();
            self.drained.notify_waiters();
            for q in waiting.iter().filter_map(Weak::upgrade) {
                q.dispatch();
            }
        }
    }
}

/// The sink the connection's consumers deliver into.
pub(crate) struct Sink(pub Arc<Outbox>);

impl DeliverySink for Sink {
    fn deliver(&self, d: Delivery) {
        let outbox = &self.0;
        let mut st = outbox.lock();
        let tag = st.unacked.delivered(
            &d.queue,
            d.consumer,
            d.offset,
            d.ack_required,
            crate::coarse_clock::now_ms(),
        );
        let Some(sub) = st.subs.get(&d.consumer_tag).cloned() else {
            return;
        };
        let id = message_id(&sub.id, &st.session_id, tag);
        let m = &d.message;
        let destination = format_destination(&m.exchange, &m.routing_key);
        let mut f = Frame::new(Command::Message)
            .header("subscription", sub.id.as_str())
            .header("destination", destination)
            .header("message-id", id.as_str())
            .header("redelivered", if d.redelivered { "true" } else { "false" });
        if sub.ack_header {
            f.headers.push("ack", id);
        }
        message_headers(&m.properties, &mut f.headers);
        // content-length always: bodies may hold NULs (RabbitMQ writes it for every body).
        f.body = m.body.clone();
        f.headers.push("content-length", m.body.len().to_string());
        let version = st.version;
        Outbox::append(&mut st, &outbox.pending, &f, version);
        drop(st);
        outbox.writer.notify_one();
    }

    fn ready(&self) -> bool {
        !self.0.is_full()
    }

    fn notify_when_ready(&self, queue: Weak<Queue>) {
        // Called under the queue's lock: the writer dispatches it once the buffer drained.
        self.0.lock().waiting.push(queue);
        self.0.writer.notify_one();
    }

    fn cancelled(&self, consumer_tag: &ShortString) {
        self.0.lock().cancelled.push(consumer_tag.clone());
    }
}
