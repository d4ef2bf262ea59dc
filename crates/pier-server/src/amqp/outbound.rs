//! Everything a connection sends goes through its `Outbound`: a bounded queue of frames and
//! deliveries that one writer task drains into the socket, many frames per `write` call.
//!
//! ```text
//!  reader task ──(replies)──────────┐
//!  queue dispatch (any thread) ──► Outbound { items, per-channel delivery tags + unacked } ──► writer task ──► socket
//!                                    ▲ bytes pending > high watermark: sinks report "not ready", the reader pauses
//! ```
//!
//! Delivery tags are assigned under the same lock that orders items, so tags reach the wire in
//! increasing order per channel even when several queues deliver at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pier_broker::session::{Confirm, Session, Unacked};
use pier_broker::{Delivery, DeliverySink, Message, Queue};
use pier_wire::{
    encode_basic_deliver, encode_body_frames, encode_content_header, encode_heartbeat,
    encode_method_frame, BasicCancel, Method, ShortString,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Fixed cost counted per queued item on top of its body, so many empty messages still count.
const ITEM_OVERHEAD: usize = 64;
/// A basic.ack frame: header 7, class and method 4, tag 8, flags 1, end 1.
const ACK_FRAME_LEN: usize = 21;

/// One open channel as the Outbound sees it: the broker's session (tags, unacked records,
/// confirms) and what AMQP 0-9-1 orders around it.
#[derive(Default)]
struct ChannelState {
    session: Session,
    /// While this channel deletes a queue: the basic.cancel notifications for its own
    /// consumers of it, sent after queue.delete-ok (`send_deferred_cancels`), as RabbitMQ
    /// orders them.
    deferred_cancels: Option<Vec<ShortString>>,
}

enum Item {
    Frames(Bytes),
    /// A publisher confirm (basic.ack), encoded when written: a later ack of the same
    /// channel that finds it still queued last takes its place (`push_confirm`).
    Ack {
        channel: u16,
        tag: u64,
        multiple: bool,
    },
    Deliver {
        channel: u16,
        tag: u64,
        consumer_tag: ShortString,
        redelivered: bool,
        message: Arc<Message>,
    },
    GetOk {
        channel: u16,
        tag: u64,
        redelivered: bool,
        message_count: u32,
        message: Arc<Message>,
    },
    Return {
        channel: u16,
        reply_code: u16,
        reply_text: ShortString,
        message: Arc<Message>,
    },
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// Each open channel's delivery and confirm bookkeeping (the broker's `Session`), under
    /// the lock that orders the frames, so tags reach the wire in order.
    channels: HashMap<u16, ChannelState>,
    /// Deliveries that arrived for a channel already gone; the reader requeues them.
    orphans: Vec<Unacked>,
    /// The writer should flush and stop.
    finishing: bool,
}

pub(crate) struct Outbound {
    state: Mutex<State>,
    pending_bytes: AtomicUsize,
    high_watermark: usize,
    frame_max: AtomicU32,
    wake_writer: Notify,
    drained: Notify,
    waiting_queues: Mutex<Vec<Weak<Queue>>>,
}

impl Outbound {
    pub fn new(high_watermark: usize, frame_max: u32) -> Arc<Self> {
        Arc::new(Outbound {
            state: Mutex::new(State::default()),
            pending_bytes: AtomicUsize::new(0),
            high_watermark,
            frame_max: AtomicU32::new(frame_max),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            waiting_queues: Mutex::new(Vec::new()),
        })
    }

    // A poisoned lock only follows a panic in another task of this connection; the state is
    // plain collections, still usable for an orderly close.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_congested(&self) -> bool {
        self.pending_bytes.load(Ordering::Acquire) >= self.high_watermark
    }

    /// Waits until the writer has drained below the high watermark. Cancel-safe.
    pub async fn wait_uncongested(&self) {
        while self.is_congested() {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_congested() {
                return;
            }
            notified.await;
        }
    }

    fn push(&self, st: &mut State, item: Item, size: usize) {
        st.items.push_back(item);
        self.pending_bytes
            .fetch_add(size + ITEM_OVERHEAD, Ordering::AcqRel);
        self.wake_writer.notify_one();
    }

    pub fn send_method(&self, channel: u16, method: &Method) {
        let mut buf = BytesMut::with_capacity(method.encoded_size() + 8);
        encode_method_frame(&mut buf, channel, method);
        let len = buf.len();
        let mut st = self.lock();
        self.push(&mut st, Item::Frames(buf.freeze()), len);
    }

    pub fn send_return(
        &self,
        channel: u16,
        reply_code: u16,
        reply_text: &str,
        message: Arc<Message>,
    ) {
        let size = message.body_size();
        let mut st = self.lock();
        self.push(
            &mut st,
            Item::Return {
                channel,
                reply_code,
                reply_text: ShortString::truncated(reply_text),
                message,
            },
            size,
        );
    }

    pub fn open_channel(&self, channel: u16) {
        self.lock()
            .channels
            .insert(channel, ChannelState::default());
    }

    /// Forgets a channel and hands back what it had unacked (to be requeued).
    pub fn close_channel(&self, channel: u16) -> Vec<Unacked> {
        let mut st = self.lock();
        let mut out: Vec<Unacked> = st
            .channels
            .remove(&channel)
            .map(|mut c| c.session.take_all())
            .unwrap_or_default();
        out.append(&mut st.orphans);
        out
    }

    /// RabbitMQ tells a channel's consumers of a queue that this very channel deletes only
    /// after queue.delete-ok: from here until `send_deferred_cancels`, this channel's
    /// basic.cancel notifications wait.
    pub fn defer_cancels(&self, channel: u16) {
        if let Some(ch) = self.lock().channels.get_mut(&channel) {
            ch.deferred_cancels = Some(Vec::new());
        }
    }

    pub fn send_deferred_cancels(&self, channel: u16) {
        let mut st = self.lock();
        let Some(tags) = st
            .channels
            .get_mut(&channel)
            .and_then(|ch| ch.deferred_cancels.take())
        else {
            return;
        };
        for tag in tags {
            self.push_cancel(&mut st, channel, tag);
        }
    }

    fn push_cancel(&self, st: &mut State, channel: u16, consumer_tag: ShortString) {
        let m = Method::BasicCancel(BasicCancel {
            consumer_tag,
            nowait: true,
        });
        let mut buf = BytesMut::with_capacity(m.encoded_size() + 8);
        encode_method_frame(&mut buf, channel, &m);
        let len = buf.len();
        self.push(st, Item::Frames(buf.freeze()), len);
    }

    /// Runs `f` on a channel's session (acks, nacks, recover, timeouts).
    pub fn with_channel<R>(&self, channel: u16, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        self.lock()
            .channels
            .get_mut(&channel)
            .map(|c| f(&mut c.session))
    }

    /// Bytes queued for the socket and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// Open channels.
    pub fn channel_count(&self) -> usize {
        self.lock().channels.len()
    }

    /// Each open channel's delivery count (its last tag) and unacked count, for management.
    pub fn channel_snapshot(&self) -> Vec<crate::registry::ChannelInfo> {
        let st = self.lock();
        let mut out: Vec<crate::registry::ChannelInfo> = st
            .channels
            .iter()
            .map(|(&number, d)| {
                let (deliveries, unacked) = d.session.counts();
                crate::registry::ChannelInfo {
                    number,
                    deliveries,
                    unacked,
                }
            })
            .collect();
        out.sort_by_key(|c| c.number);
        out
    }

    pub fn take_orphans(&self) -> Vec<Unacked> {
        std::mem::take(&mut self.lock().orphans)
    }

    /// basic.get-ok: assigns the tag and queues the frames.
    pub fn send_get_ok(&self, channel: u16, delivery: Delivery, message_count: u32) {
        let size = delivery.message.body_size();
        let mut st = self.lock();
        let Some(ch) = st.channels.get_mut(&channel) else {
            return;
        };
        let tag = ch.session.delivered(
            &delivery.queue,
            None,
            delivery.offset,
            delivery.ack_required,
            crate::coarse_clock::now_ms(),
        );
        self.push(
            &mut st,
            Item::GetOk {
                channel,
                tag,
                redelivered: delivery.redelivered,
                message_count,
                message: delivery.message,
            },
            size,
        );
    }

    /// The reader routed every publish up to `upto`: confirm what no longer waits.
    pub fn confirm_published(&self, channel: u16, upto: u64) {
        let mut st = self.lock();
        let c = st
            .channels
            .get_mut(&channel)
            .and_then(|c| c.session.published(upto));
        self.push_confirm(&mut st, channel, c);
    }

    /// Publish `seq` waits for the store (registered before it is routed).
    pub fn confirm_wait(&self, channel: u16, seq: u64) {
        if let Some(ch) = self.lock().channels.get_mut(&channel) {
            ch.session.wait_durable(seq);
        }
    }

    /// The store answered for publish `seq` (called on the store thread).
    pub fn confirm_durable(&self, channel: u16, seq: u64, ok: bool) {
        let mut st = self.lock();
        let Some((nack, ack)) = st
            .channels
            .get_mut(&channel)
            .map(|c| c.session.durable(seq, ok))
        else {
            return;
        };
        self.push_confirm(&mut st, channel, nack);
        self.push_confirm(&mut st, channel, ack);
    }

    /// Publish `seq` was refused (x-overflow reject-publish): basic.nack now.
    pub fn confirm_nack(&self, channel: u16, seq: u64) {
        let mut st = self.lock();
        let c = st
            .channels
            .get_mut(&channel)
            .map(|c| c.session.refused(seq));
        self.push_confirm(&mut st, channel, c);
    }

    fn push_confirm(&self, st: &mut State, channel: u16, confirm: Option<Confirm>) {
        let Some(c) = confirm else { return };
        if c.ack {
            // A replicated queue answers a committed batch publish by publish, each answer
            // releasing the next tags. An ack queued last for this channel is its latest
            // confirm (a nack would follow it), so it and this one cover one run of tags:
            // one ack-multiple says both, one frame instead of one per publish (and one
            // write, one wake-up of the client each).
            if let Some(Item::Ack {
                channel: ch,
                tag,
                multiple,
            }) = st.items.back_mut()
            {
                if *ch == channel && c.tag > *tag {
                    *tag = c.tag;
                    *multiple = true;
                    return;
                }
            }
            let item = Item::Ack {
                channel,
                tag: c.tag,
                multiple: c.multiple,
            };
            self.push(st, item, ACK_FRAME_LEN);
            return;
        }
        let m = if c.ack {
            Method::BasicAck(pier_wire::BasicAck {
                delivery_tag: c.tag,
                multiple: c.multiple,
            })
        } else {
            Method::BasicNack(pier_wire::BasicNack {
                delivery_tag: c.tag,
                multiple: c.multiple,
                requeue: false,
            })
        };
        let mut buf = BytesMut::with_capacity(m.encoded_size() + 8);
        encode_method_frame(&mut buf, channel, &m);
        let len = buf.len();
        self.push(st, Item::Frames(buf.freeze()), len);
    }

    /// Asks the writer to flush what is queued and stop.
    pub fn finish(&self) {
        self.lock().finishing = true;
        self.wake_writer.notify_one();
    }

    fn deliver(&self, channel: u16, d: Delivery) {
        let size = d.message.body_size();
        let mut st = self.lock();
        let Some(ch) = st.channels.get_mut(&channel) else {
            if d.ack_required {
                st.orphans.push(Unacked {
                    tag: 0,
                    queue: d.queue,
                    consumer: d.consumer,
                    offset: d.offset,
                    delivered_at: 0,
                });
            }
            return;
        };
        let tag = ch.session.delivered(
            &d.queue,
            d.consumer,
            d.offset,
            d.ack_required,
            crate::coarse_clock::now_ms(),
        );
        self.push(
            &mut st,
            Item::Deliver {
                channel,
                tag,
                consumer_tag: d.consumer_tag,
                redelivered: d.redelivered,
                message: d.message,
            },
            size,
        );
    }

    fn wake_waiting_queues(&self) {
        let waiting = std::mem::take(
            &mut *self
                .waiting_queues
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for q in waiting {
            if let Some(q) = q.upgrade() {
                q.dispatch();
            }
        }
    }

    /// The writer task: drains items into `out` in batches, sends heartbeats when idle for
    /// `heartbeat / 2`, and returns once `finish` was called and everything is flushed.
    pub async fn run_writer<W: AsyncWrite + Unpin>(
        self: Arc<Self>,
        mut out: W,
        heartbeat: Duration,
    ) -> std::io::Result<()> {
        // Starts small (idle connections) and grows with the batches it carries.
        let mut buf = BytesMut::with_capacity(4 * 1024);
        let mut batch: VecDeque<Item> = VecDeque::new();
        let idle = if heartbeat.is_zero() {
            Duration::from_secs(3600 * 24)
        } else {
            heartbeat / 2
        };
        loop {
            let finishing = {
                let mut st = self.lock();
                std::mem::swap(&mut st.items, &mut batch);
                st.finishing
            };
            if batch.is_empty() {
                if finishing {
                    out.flush().await?;
                    let _ = out.shutdown().await;
                    return Ok(());
                }
                if !self.is_congested() {
                    // Covers a queue that registered just after the last drain.
                    self.wake_waiting_queues();
                }
                match tokio::time::timeout(idle, self.wake_writer.notified()).await {
                    Ok(()) => continue,
                    Err(_) => {
                        encode_heartbeat(&mut buf);
                    }
                }
            }
            let frame_max = self.frame_max.load(Ordering::Relaxed);
            let mut released = 0usize;
            while let Some(item) = batch.pop_front() {
                released += encode_item(&mut buf, item, frame_max) + ITEM_OVERHEAD;
                // Bound the buffer: large bodies go out before more is encoded.
                if buf.len() >= 256 * 1024 {
                    out.write_all(&buf).await?;
                    buf.clear();
                }
            }
            if !buf.is_empty() {
                out.write_all(&buf).await?;
                buf.clear();
            }
            if buf.capacity() > 1024 * 1024 {
                buf = BytesMut::with_capacity(4 * 1024);
            }
            let before = self.pending_bytes.fetch_sub(released, Ordering::AcqRel);
            if before >= self.high_watermark && before - released < self.high_watermark {
                self.drained.notify_waiters();
            }
            if before - released < self.high_watermark {
                self.wake_waiting_queues();
            }
        }
    }
}

/// Encodes one item; returns the size it was accounted with.
fn encode_item(buf: &mut BytesMut, item: Item, frame_max: u32) -> usize {
    match item {
        Item::Frames(b) => {
            buf.extend_from_slice(&b);
            b.len()
        }
        Item::Ack {
            channel,
            tag,
            multiple,
        } => {
            let m = Method::BasicAck(pier_wire::BasicAck {
                delivery_tag: tag,
                multiple,
            });
            encode_method_frame(buf, channel, &m);
            ACK_FRAME_LEN
        }
        Item::Deliver {
            channel,
            tag,
            consumer_tag,
            redelivered,
            message,
        } => {
            encode_basic_deliver(
                buf,
                channel,
                frame_max,
                &consumer_tag,
                tag,
                redelivered,
                &message.exchange,
                &message.routing_key,
                message.amqp_properties(),
                &message.body,
            );
            message.body_size()
        }
        Item::GetOk {
            channel,
            tag,
            redelivered,
            message_count,
            message,
        } => {
            let m = Method::BasicGetOk(pier_wire::BasicGetOk {
                delivery_tag: tag,
                redelivered,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                message_count,
            });
            encode_content(buf, channel, frame_max, &m, &message);
            message.body_size()
        }
        Item::Return {
            channel,
            reply_code,
            reply_text,
            message,
        } => {
            let m = Method::BasicReturn(pier_wire::BasicReturn {
                reply_code,
                reply_text,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            });
            encode_content(buf, channel, frame_max, &m, &message);
            message.body_size()
        }
    }
}

fn encode_content(
    buf: &mut BytesMut,
    channel: u16,
    frame_max: u32,
    method: &Method,
    message: &Message,
) {
    encode_method_frame(buf, channel, method);
    encode_content_header(
        buf,
        channel,
        60,
        message.body.len() as u64,
        message.amqp_properties(),
    );
    encode_body_frames(buf, channel, &message.body, frame_max);
}

/// The `DeliverySink` of one channel.
pub(crate) struct ChannelSink {
    pub outbound: Arc<Outbound>,
    pub channel: u16,
    /// channel.flow: false pauses deliveries.
    pub flow_active: AtomicBool,
    /// The client announced `consumer_cancel_notify`.
    pub cancel_notify: bool,
}

impl DeliverySink for ChannelSink {
    fn deliver(&self, delivery: Delivery) {
        self.outbound.deliver(self.channel, delivery);
    }

    fn ready(&self) -> bool {
        self.flow_active.load(Ordering::Acquire) && !self.outbound.is_congested()
    }

    fn notify_when_ready(&self, queue: Weak<Queue>) {
        let mut w = self
            .outbound
            .waiting_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !w.iter().any(|q| q.ptr_eq(&queue)) {
            w.push(queue);
        }
        // The writer may have drained between the readiness check and this registration.
        drop(w);
        if !self.outbound.is_congested() && self.flow_active.load(Ordering::Acquire) {
            self.outbound.wake_writer.notify_one();
        }
    }

    fn channel_number(&self) -> Option<u16> {
        Some(self.channel)
    }

    fn cancelled(&self, consumer_tag: &ShortString) {
        let mut st = self.outbound.lock();
        let Some(ch) = st.channels.get_mut(&self.channel) else {
            return;
        };
        ch.session.consumer_cancelled(consumer_tag.clone());
        if !self.cancel_notify {
            return;
        }
        if let Some(deferred) = ch.deferred_cancels.as_mut() {
            deferred.push(consumer_tag.clone());
            return;
        }
        self.outbound
            .push_cancel(&mut st, self.channel, consumer_tag.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pier_wire::{decode_frame, Frame};

    /// What the writer sends for what is queued now, as methods.
    async fn written(o: &Arc<Outbound>) -> Vec<Method> {
        o.finish();
        let mut out: Vec<u8> = Vec::new();
        Arc::clone(o)
            .run_writer(&mut out, Duration::ZERO)
            .await
            .unwrap();
        let mut buf = BytesMut::from(&out[..]);
        let mut methods = Vec::new();
        while let Some(f) = decode_frame(&mut buf, 131_072).unwrap() {
            if let Frame::Method { method, .. } = f {
                methods.push(method);
            }
        }
        methods
    }

    fn ack(tag: u64, multiple: bool) -> Method {
        Method::BasicAck(pier_wire::BasicAck {
            delivery_tag: tag,
            multiple,
        })
    }

    /// An outbound whose channel 1 routed publishes 1..=n, each waiting for the disk.
    fn publishing(n: u64) -> Arc<Outbound> {
        let o = Outbound::new(1 << 20, 131_072);
        o.open_channel(1);
        for seq in 1..=n {
            o.confirm_wait(1, seq);
        }
        o.confirm_published(1, n);
        o
    }

    #[tokio::test]
    async fn confirms_answered_one_by_one_go_out_as_one_ack() {
        let o = publishing(5);
        for seq in 1..=5 {
            o.confirm_durable(1, seq, true);
        }
        assert_eq!(written(&o).await, [ack(5, true)]);
    }

    #[tokio::test]
    async fn acks_are_not_merged_across_a_nack_or_backwards() {
        let o = publishing(6);
        o.confirm_durable(1, 1, true); // ack 1
        o.confirm_durable(1, 3, true); // waits for 2
        o.confirm_durable(1, 2, false); // nack 2, then ack up to 3
        o.confirm_durable(1, 4, true); // merges with that ack
        o.confirm_durable(1, 6, true); // waits for 5
        o.confirm_durable(1, 5, true);
        assert_eq!(
            written(&o).await,
            [
                ack(1, false),
                Method::BasicNack(pier_wire::BasicNack {
                    delivery_tag: 2,
                    multiple: false,
                    requeue: false,
                }),
                ack(6, true),
            ]
        );
    }
}
