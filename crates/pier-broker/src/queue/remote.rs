//! A durable queue homed on another node of the cluster: the `Remote` backend of the queue
//! handle. Its messages live on the home node; this handle forwards what clients here do to
//! it over the cluster's message path (a [`QueueLink`], implemented by `pier-cluster`), and
//! hands what comes back to the consumers of this node.
//!
//! ```text
//!  this node                                          home node
//!  publish ─► RemoteQueue::publish ─► link ══════════► classic queue (enqueue, fsync)
//!     ◄─ confirm (DurabilityHold completed) ◄═════════ ◄┘
//!  basic.consume ─► consume (slot: pending) ═════════► proxy consumer (prefetch, window)
//!  sink ◄─ slot buffer ◄─ deliver ◄══════════════════ ◄ Deliver (≤ window in flight)
//!     └─ handed to the sink ─► credit back ══════════► window reopens
//!  ack/nack/reject ─► settle ════════════════════════► Settle / Return / Discard
//! ```
//!
//! **Flow control.** The home node's proxy consumer has a window of deliveries (count and
//! bytes) it may have on their way here; this node gives credit back as it hands deliveries
//! to the consuming channel, and only while the channel can take them (its outbound below the
//! bound, its channel-wide prefetch). A slow consumer therefore holds at most one window here,
//! and the per-consumer prefetch is counted where the messages are, on the home node.
//! Publishes hold their publisher's durability token until the home node confirms them
//! (enqueued, and fsync'd when the message is stored), so connection credit and publisher
//! confirms work as for a local queue.
//!
//! **Sessions.** Each connection to the home node is a new link session. Delivery offsets
//! handed to channels carry the session in their top 16 bits; a settlement from an older
//! session is dropped (the home node requeued those messages when that session ended).
//!
//! Nothing here blocks or awaits: futures returned are awaited by the server.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pier_wire::{FieldTable, ShortString};

use super::{Published, Queue, QueueStats};
use crate::cluster::BoxFuture;
use crate::consumer::{next_consumer_id, ChannelCredit, ConsumerId, ConsumerSpec, Delivery};
use crate::consumer::{ConsumerInfo, DeliverySink};
use crate::counters::QueueCountersSnapshot;
use crate::error::BrokerError;
use crate::message::Message;
use crate::persist::{DurabilityHold, PublishDurability};

/// Offsets on the home node stay below this; the bits above carry the link session.
const SESSION_SHIFT: u32 = 48;
const OFFSET_MASK: u64 = (1 << SESSION_SHIFT) - 1;

/// A home node's proxy consumer may have this many deliveries on their way to this node...
pub const WINDOW_MESSAGES: u32 = 512;
/// ...and this many body bytes (one larger message may go over it).
pub const WINDOW_BYTES: u64 = 4 << 20;
/// Credit goes back once this much of the window was handed to the channel.
const RETURN_MESSAGES: u32 = WINDOW_MESSAGES / 4;
const RETURN_BYTES: u64 = WINDOW_BYTES / 4;

/// The offset a channel sees for home offset `offset` delivered in link session `session`.
pub fn encode_offset(session: u64, offset: u64) -> u64 {
    ((session & 0xFFFF) << SESSION_SHIFT) | (offset & OFFSET_MASK)
}

/// The link session (its low 16 bits) and home offset of a channel's offset.
pub fn decode_offset(offset: u64) -> (u64, u64) {
    (offset >> SESSION_SHIFT, offset & OFFSET_MASK)
}

/// What becomes of deliveries, as the home node applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Acknowledged.
    Ack,
    /// Put back, redelivered (nack, recover).
    Requeue,
    /// Put back, redelivered, as a failed delivery (reject, the consumer's channel gone).
    Fail,
    /// Rejected without requeue (dead-lettered when the queue has a DLX).
    Reject,
    /// Put back uncounted: it never reached a client.
    Release,
}

/// A consumer as the home node needs it.
#[derive(Debug, Clone)]
pub struct RemoteConsumer {
    pub tag: ShortString,
    pub ack_required: bool,
    pub exclusive: bool,
    pub prefetch: u32,
    pub priority: i32,
    pub arguments: FieldTable,
}

/// A message basic.get took on the home node.
#[derive(Debug, Clone)]
pub struct RemoteGot {
    /// The link session it came in.
    pub session: u64,
    pub offset: u64,
    pub redelivered: bool,
    pub enqueued_at: u32,
    pub message: Arc<Message>,
    /// Ready messages left.
    pub remaining: u32,
}

/// The message path to the queues of one other node (implemented by `pier-cluster`).
///
/// Everything is sent in call order on one ordered stream per node pair; requests that
/// return a future are sent when called (the future only waits for the answer), so dropping
/// the future does not take the request back.
pub trait QueueLink: Send + Sync + 'static {
    /// The home node's name.
    fn node(&self) -> &str;

    /// The current link session, while the home node is connected and answering.
    fn session(&self) -> Option<u64>;

    /// Sends a publish; `hold` is completed when the home node confirms it. `Err` gives the
    /// hold back when nothing was sent (the link is down).
    fn publish(
        &self,
        queue: &Queue,
        message: &Arc<Message>,
        hold: Option<DurabilityHold>,
    ) -> Result<(), Option<DurabilityHold>>;

    /// Settles deliveries of `session` (home offsets).
    fn settle(&self, queue: &Queue, session: u64, how: Settlement, offsets: Vec<u64>);

    /// Gives `consumer`'s proxy on the home node credit back: `count` deliveries, `bytes`.
    fn credit(&self, queue: &Queue, consumer: ConsumerId, count: u32, bytes: u64);

    /// Registers `consumer` (this node's id) with the home node; deliveries for it arrive
    /// through [`Queue::remote_deliver`]. Answers the link session it was registered in.
    fn consume(
        &self,
        queue: &Arc<Queue>,
        consumer: ConsumerId,
        spec: RemoteConsumer,
    ) -> BoxFuture<Result<u64, BrokerError>>;

    /// Cancels `consumer`; the answer comes after every delivery the home node sent it.
    fn cancel(&self, queue: &Queue, consumer: ConsumerId) -> BoxFuture<()>;

    /// basic.get.
    fn get(
        &self,
        queue: &Queue,
        ack_required: bool,
    ) -> BoxFuture<Result<Option<RemoteGot>, BrokerError>>;

    /// queue.purge: the ready messages dropped.
    fn purge(&self, queue: &Queue) -> BoxFuture<Result<u32, BrokerError>>;

    /// The queue's figures on its home node; `touch` counts as use (`x-expires`).
    fn stats(&self, queue: &Queue, touch: bool) -> BoxFuture<Result<QueueStats, BrokerError>>;

    /// What became of an at-least-once dead letter this node routed for the queue (its
    /// leader): `ok`, every target confirmed it. Only replicated queues keep dead letters.
    fn dead_letter_settled(&self, offset: u64, ok: bool) {
        let _ = (offset, ok);
    }

    /// A delivery came for a consumer this node does not have (it went away and the home
    /// node did not hear of it: a replicated queue's cancel lost in a partition). The
    /// delivery itself goes back with `settle`; a replicated queue also cancels the consumer
    /// there, so that it is not handed more. By default nothing more.
    fn consumer_unknown(&self, queue: &Queue, consumer: ConsumerId) {
        let _ = (queue, consumer);
    }

    /// A policy changed the queue's settings on this node. A classic queue's home node
    /// applies the same policy change itself (policies are cluster metadata), so by default
    /// nothing is sent; a replicated quorum queue puts them in its log.
    fn reconfigure(&self, _queue: &Arc<Queue>, _settings: crate::args::PolicySettings) {}
}

/// A delivery that arrived for a consumer and waits for its channel.
struct Incoming {
    session: u64,
    offset: u64,
    redelivered: bool,
    enqueued_at: u32,
    message: Arc<Message>,
}

/// One consumer of this node.
struct Slot {
    tag: ShortString,
    sink: Arc<dyn DeliverySink>,
    channel_credit: Arc<ChannelCredit>,
    ack_required: bool,
    exclusive: bool,
    prefetch: u32,
    priority: i32,
    arguments: FieldTable,
    connection: crate::consumer::ConnectionId,
    /// consume-ok was sent: deliveries may go to the sink.
    active: bool,
    buffer: VecDeque<Incoming>,
    /// The sink said it was full and will call `dispatch` when it drains.
    waiting: bool,
    /// Credit not yet given back (count, bytes).
    owed: (u32, u64),
}

#[derive(Default)]
struct Figures {
    stats: QueueStats,
    counters: QueueCountersSnapshot,
}

pub(crate) struct RemoteQueue {
    link: Arc<dyn QueueLink>,
    figures: Mutex<Figures>,
    consumers: Mutex<HashMap<ConsumerId, Slot>>,
    deleted: AtomicBool,
}

impl RemoteQueue {
    pub(crate) fn new(link: Arc<dyn QueueLink>) -> Self {
        RemoteQueue {
            link,
            figures: Mutex::new(Figures::default()),
            consumers: Mutex::new(HashMap::new()),
            deleted: AtomicBool::new(false),
        }
    }

    pub(crate) fn link(&self) -> &Arc<dyn QueueLink> {
        &self.link
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<ConsumerId, Slot>> {
        self.consumers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn figures(&self) -> MutexGuard<'_, Figures> {
        self.figures.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn home_down(&self, q: &Queue) -> BrokerError {
        BrokerError::HomeNodeDown {
            node: self.link.node().to_owned(),
            name: q.name().to_string(),
            vhost: q.vhost().to_owned(),
        }
    }

    // ---- figures ----

    pub(crate) fn stats(&self) -> QueueStats {
        let mut s = self.figures().stats;
        s.consumers = s
            .consumers
            .max(u32::try_from(self.slots().len()).unwrap_or(0));
        s
    }

    pub(crate) fn counters(&self) -> QueueCountersSnapshot {
        self.figures().counters
    }

    pub(crate) fn set_figures(&self, stats: QueueStats, counters: QueueCountersSnapshot) {
        let mut f = self.figures();
        f.stats = stats;
        f.counters = counters;
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The ids of this node's consumers of the queue.
    pub(crate) fn consumer_ids(&self) -> Vec<ConsumerId> {
        self.slots().keys().copied().collect()
    }

    pub(crate) fn consumers(&self) -> Vec<ConsumerInfo> {
        self.slots()
            .values()
            .map(|s| ConsumerInfo {
                tag: s.tag.clone(),
                connection: s.connection,
                channel: s.sink.channel_number(),
                ack_required: s.ack_required,
                exclusive: s.exclusive,
                prefetch: s.prefetch,
                priority: s.priority,
                arguments: s.arguments.clone(),
                active: true,
            })
            .collect()
    }

    // ---- publishing and settling ----

    pub(crate) fn publish(
        &self,
        q: &Queue,
        message: &Arc<Message>,
        durability: Option<&Arc<PublishDurability>>,
    ) -> Published {
        // A stream whose leader is out of reach refuses the publish (a nack): RabbitMQ
        // confirms a stream publish only once its leader has written it, and a replicated
        // stream is not "down" as a classic queue is.
        let stream = q.kind() == crate::queue::QueueType::Stream;
        if self.is_deleted() {
            // A stream's handle is retired when its leader moves: the publisher resends.
            return if stream {
                Published::Rejected
            } else {
                Published::Gone
            };
        }
        if self.link.session().is_none() {
            // RabbitMQ 3.10 drops a classic queue whose node is down from routing: unroutable.
            return if stream {
                Published::Rejected
            } else {
                Published::Gone
            };
        }
        let hold = durability.map(PublishDurability::hold);
        match self.link.publish(q, message, hold) {
            Ok(()) => Published::Accepted,
            Err(hold) => {
                // Not sent: routed nowhere, which confirms as RabbitMQ does (a stream's nacks).
                if let Some(h) = hold {
                    h.complete(!stream);
                }
                if stream {
                    Published::Rejected
                } else {
                    Published::Gone
                }
            }
        }
    }

    /// Settles offsets handed to channels (session-tagged); those of an older link session
    /// are dropped: the home node put them back when that session ended.
    pub(crate) fn settle(&self, q: &Queue, offsets: &[u64], how: Settlement) {
        let Some(current) = self.link.session() else {
            return;
        };
        let mut home: Vec<u64> = Vec::with_capacity(offsets.len());
        for o in offsets {
            let (session, offset) = decode_offset(*o);
            if session == current & 0xFFFF {
                home.push(offset);
            }
        }
        if !home.is_empty() {
            self.link.settle(q, current, how, home);
        }
    }

    // ---- consumers ----

    /// Registers a consumer and asks the home node for it. Deliveries that arrive before
    /// [`RemoteQueue::activate`] wait (consume-ok goes first). On an error the consumer is
    /// forgotten.
    pub(crate) fn consume(
        &self,
        q: &Arc<Queue>,
        spec: ConsumerSpec,
    ) -> (ConsumerId, BoxFuture<Result<(), BrokerError>>) {
        let id = next_consumer_id();
        if self.is_deleted() {
            let e = BrokerError::NotFound {
                kind: crate::error::ObjectKind::Queue,
                name: q.name().to_string(),
                vhost: q.vhost().to_owned(),
            };
            return (id, Box::pin(async move { Err(e) }));
        }
        if self.link.session().is_none() {
            let e = self.home_down(q);
            return (id, Box::pin(async move { Err(e) }));
        }
        let remote = RemoteConsumer {
            tag: spec.tag.clone(),
            ack_required: spec.ack_required,
            exclusive: spec.exclusive,
            prefetch: spec.prefetch,
            priority: spec.priority,
            arguments: spec.arguments.clone(),
        };
        self.slots().insert(
            id,
            Slot {
                tag: spec.tag,
                sink: spec.sink,
                channel_credit: spec.channel_credit,
                ack_required: spec.ack_required,
                exclusive: spec.exclusive,
                prefetch: spec.prefetch,
                priority: spec.priority,
                arguments: spec.arguments,
                connection: spec.connection,
                active: false,
                buffer: VecDeque::new(),
                waiting: false,
                owed: (0, 0),
            },
        );
        let asked = self.link.consume(q, id, remote);
        let q = Arc::clone(q);
        let fut = async move {
            match asked.await {
                Ok(_session) => Ok(()),
                Err(e) => {
                    if let Some(r) = q.remote_backend() {
                        r.forget(&q, id);
                    }
                    Err(e)
                }
            }
        };
        (id, Box::pin(fut))
    }

    /// consume-ok was sent: what waited goes to the sink.
    pub(crate) fn activate(&self, q: &Arc<Queue>, id: ConsumerId) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(&id) {
            slot.active = true;
            self.flush(q, id, slot);
        }
    }

    /// basic.cancel: asks the home node and waits for its answer (every delivery sent before
    /// it has arrived by then and went to the sink); what still waits here goes back uncounted.
    pub(crate) fn cancel(&self, q: &Arc<Queue>, id: ConsumerId) -> BoxFuture<()> {
        let asked = self.link.cancel(q, id);
        let q = Arc::clone(q);
        Box::pin(async move {
            asked.await;
            if let Some(r) = q.remote_backend() {
                r.forget(&q, id);
            }
        })
    }

    /// The consumer goes now (its channel closes): the home node is told, what waits here
    /// goes back uncounted.
    pub(crate) fn remove_consumer(&self, q: &Queue, id: ConsumerId) -> bool {
        let existed = self.forget(q, id);
        if existed {
            drop(self.link.cancel(q, id));
        }
        existed
    }

    /// Drops a consumer's slot, releasing what it buffered and giving its credit back.
    fn forget(&self, q: &Queue, id: ConsumerId) -> bool {
        let Some(slot) = self.slots().remove(&id) else {
            return false;
        };
        self.release_buffer(q, slot.buffer);
        true
    }

    fn release_buffer(&self, q: &Queue, buffer: VecDeque<Incoming>) {
        let Some(current) = self.link.session() else {
            return;
        };
        let offsets: Vec<u64> = buffer
            .into_iter()
            .filter(|i| i.session == current)
            .map(|i| i.offset)
            .collect();
        if !offsets.is_empty() {
            self.link.settle(q, current, Settlement::Release, offsets);
        }
    }

    /// A delivery from the home node for consumer `id` (called in arrival order).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver(
        &self,
        q: &Arc<Queue>,
        id: ConsumerId,
        session: u64,
        offset: u64,
        redelivered: bool,
        ack_required: bool,
        enqueued_at: u32,
        message: Arc<Message>,
    ) {
        let incoming = Incoming {
            session,
            offset,
            redelivered,
            enqueued_at,
            message,
        };
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&id) else {
            drop(slots);
            // Its consumer went away meanwhile: back to the queue, uncounted (nothing to do
            // for a delivery without acks: it is gone, as on a closed channel).
            if ack_required {
                self.link
                    .settle(q, session, Settlement::Release, vec![incoming.offset]);
            }
            self.link.consumer_unknown(q, id);
            return;
        };
        slot.buffer.push_back(incoming);
        if slot.active && !slot.waiting {
            self.flush(q, id, slot);
        }
    }

    /// Hands what `slot` buffered to its sink as far as the channel can take it, and gives
    /// credit back for it.
    fn flush(&self, q: &Arc<Queue>, id: ConsumerId, slot: &mut Slot) {
        while let Some(front) = slot.buffer.front() {
            if !slot.sink.ready() {
                slot.waiting = true;
                slot.sink.notify_when_ready(Arc::downgrade(q));
                break;
            }
            if slot.ack_required && !slot.channel_credit.try_acquire() {
                // Whoever releases channel credit re-dispatches the channel's queues.
                break;
            }
            let size = front.message.body_size() as u64;
            let Some(i) = slot.buffer.pop_front() else {
                break;
            };
            slot.owed.0 += 1;
            slot.owed.1 += size;
            slot.sink.deliver(Delivery {
                queue: Arc::clone(q),
                consumer: Some(id),
                consumer_tag: slot.tag.clone(),
                offset: encode_offset(i.session, i.offset),
                message: i.message,
                redelivered: i.redelivered,
                ack_required: slot.ack_required,
                enqueued_at: i.enqueued_at,
            });
        }
        let (n, bytes) = slot.owed;
        if n >= RETURN_MESSAGES || bytes >= RETURN_BYTES || (slot.buffer.is_empty() && n > 0) {
            slot.owed = (0, 0);
            self.link.credit(q, id, n, bytes);
        }
    }

    /// The channel can take more (it drained, or released channel credit).
    pub(crate) fn dispatch(&self, q: &Arc<Queue>) {
        let mut slots = self.slots();
        for (id, slot) in slots.iter_mut() {
            slot.waiting = false;
            if slot.active && !slot.buffer.is_empty() {
                self.flush(q, *id, slot);
            }
        }
    }

    /// The home node cancelled consumer `id` (its queue was deleted there).
    pub(crate) fn consumer_cancelled(&self, q: &Queue, id: ConsumerId) {
        let slot = self.slots().remove(&id);
        if let Some(slot) = slot {
            self.release_buffer(q, slot.buffer);
            slot.sink.cancelled(&slot.tag);
        }
    }

    /// The link session `session` ended (the home node went down or was cut off): its
    /// consumers are cancelled, as RabbitMQ cancels consumers of a queue whose node is down.
    /// What they buffered is dropped: the home node puts it back itself.
    pub(crate) fn session_ended(&self, session: u64) {
        let _ = session;
        let gone: Vec<Slot> = self.slots().drain().map(|(_, s)| s).collect();
        for slot in gone {
            slot.sink.cancelled(&slot.tag);
        }
    }

    /// basic.get on the home node.
    pub(crate) fn get(
        &self,
        q: &Arc<Queue>,
        ack_required: bool,
    ) -> BoxFuture<Result<super::Got, BrokerError>> {
        if self.link.session().is_none() {
            let e = self.home_down(q);
            return Box::pin(async move { Err(e) });
        }
        let asked = self.link.get(q, ack_required);
        let q = Arc::clone(q);
        Box::pin(async move {
            Ok(asked.await?.map(|g| {
                (
                    Delivery {
                        queue: Arc::clone(&q),
                        consumer: None,
                        consumer_tag: ShortString::default(),
                        offset: encode_offset(g.session, g.offset),
                        message: g.message,
                        redelivered: g.redelivered,
                        ack_required,
                        enqueued_at: g.enqueued_at,
                    },
                    g.remaining,
                )
            }))
        })
    }

    pub(crate) fn purge(&self, q: &Queue) -> BoxFuture<Result<u32, BrokerError>> {
        if self.link.session().is_none() {
            let e = self.home_down(q);
            return Box::pin(async move { Err(e) });
        }
        self.link.purge(q)
    }

    /// The queue's figures from its home node (also kept as the last known ones).
    pub(crate) fn fetch_stats(
        &self,
        q: &Arc<Queue>,
        touch: bool,
    ) -> BoxFuture<Result<QueueStats, BrokerError>> {
        if self.link.session().is_none() {
            let e = self.home_down(q);
            return Box::pin(async move { Err(e) });
        }
        let asked = self.link.stats(q, touch);
        let q = Arc::clone(q);
        Box::pin(async move {
            let s = asked.await?;
            if let Some(r) = q.remote_backend() {
                r.figures().stats = s;
            }
            Ok(s)
        })
    }

    /// The queue was deleted (the cluster applied its deletion): this node's consumers are
    /// cancelled.
    pub(crate) fn mark_deleted(&self) -> u32 {
        self.deleted.store(true, Ordering::Release);
        let gone: Vec<Slot> = self.slots().drain().map(|(_, s)| s).collect();
        for slot in gone {
            slot.sink.cancelled(&slot.tag);
        }
        u32::try_from(self.figures().stats.ready).unwrap_or(u32::MAX)
    }
}
