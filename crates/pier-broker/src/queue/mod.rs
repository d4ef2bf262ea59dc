//! Queues: the handle the rest of the broker talks to, whatever the queue's kind.
//!
//! ```text
//!  routing, channels, management ──► Arc<Queue> (handle: name, vhost, options, kind)
//!                                        │
//!                                        └─ Backend::Classic ─► ClassicQueue (classic.rs): lock +
//!                                                              runtime that carries out effects
//!                                                                 │ Command        ▲ Effect
//!                                                                 ▼                │
//!                                                               QueueEngine (engine/): the
//!                                                               deterministic state machine
//! ```
//!
//! Quorum queues and streams are further backends of the same handle (their issues build
//! them); `kind.rs` decides which one a declaration gets.
//!
//! Every message gets a monotonically increasing offset when it enters the queue; messages
//! handed out and not yet settled stay checked out in the engine, and come back at their
//! original offset when returned, so FIFO order survives requeueing. The offset is also what
//! a persistent store keys its records by.

pub(crate) mod classic;
pub mod engine;
pub mod kind;
pub mod stream;

use std::sync::{Arc, Weak};

use pier_store::StoreHandle;
use pier_wire::{FieldTable, ShortString};

use crate::args::QueueConfig;
use crate::clock::Clock;
use crate::consumer::{ConnectionId, ConsumerId, ConsumerSpec, Delivery};
use crate::deadletter::DeadLetter;
use crate::error::{BrokerError, ObjectKind, Result};
use crate::message::Message;
use crate::persist::{PublishDurability, QueueStore};
use crate::vhost::VHost;
use crate::waits::{WaitHistogram, WaitSummary};

use classic::ClassicQueue;
pub use engine::{EngineConfig, Published, Recovered, PAGE_OUT_BYTES};
pub use kind::QueueType;
use stream::StreamQueue;

/// The runtime a stream queue's classic-only calls get: never attached to anything, never
/// holding a message.
fn idle_classic() -> &'static ClassicQueue {
    static IDLE: std::sync::OnceLock<ClassicQueue> = std::sync::OnceLock::new();
    IDLE.get_or_init(|| {
        ClassicQueue::new(
            EngineConfig::classic(QueueConfig::default(), false),
            Arc::new(Clock::new()),
            Weak::new(),
        )
    })
}

/// Immutable properties fixed at declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// Point-in-time figures for declare-ok, management and tests.
pub type QueueStats = engine::EngineStats;

/// What removing a consumer left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerRemoved {
    pub existed: bool,
    /// An auto-delete queue just lost its last consumer: the vhost should delete it.
    pub auto_delete_now: bool,
}

/// What a tick found for the vhost to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TickAction {
    None,
    /// `x-expires` ran out: delete the queue.
    Delete,
}

/// The implementation behind a handle. One per queue, inline in its `Arc<Queue>`: the size
/// difference costs a few hundred bytes per stream queue, a `Box` would cost every classic
/// publish an indirection.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Classic(ClassicQueue),
    Stream(StreamQueue),
}

/// A queue, as routing, channels and management see it.
pub struct Queue {
    name: ShortString,
    vhost: String,
    options: QueueOptions,
    kind: QueueType,
    config: QueueConfig,
    backend: Backend,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("vhost", &self.vhost)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// A classic queue with no extensions configured and its own clock (tests, tools).
    pub fn new(name: ShortString, vhost: String, options: QueueOptions) -> Arc<Self> {
        Queue::with_config(
            name,
            vhost,
            options,
            QueueConfig::default(),
            Arc::new(Clock::new()),
            Weak::new(),
        )
    }

    /// A classic queue with resolved settings, sharing its vhost's clock; dead letters go to
    /// `router`.
    pub fn with_config(
        name: ShortString,
        vhost: String,
        options: QueueOptions,
        config: QueueConfig,
        clock: Arc<Clock>,
        router: Weak<VHost>,
    ) -> Arc<Self> {
        let engine = EngineConfig::classic(config.clone(), options.auto_delete);
        Arc::new(Queue {
            name,
            vhost,
            options,
            kind: QueueType::Classic,
            config,
            backend: Backend::Classic(ClassicQueue::new(engine, clock, router)),
        })
    }

    /// A stream queue around an opened log (declaration and recovery).
    pub(crate) fn with_stream(
        name: ShortString,
        vhost: String,
        options: QueueOptions,
        config: QueueConfig,
        stream: Arc<pier_store::stream::Stream>,
    ) -> Arc<Self> {
        let q = Arc::new(Queue {
            name,
            vhost,
            options,
            kind: QueueType::Stream,
            config,
            backend: Backend::Stream(StreamQueue::new(stream)),
        });
        if let Backend::Stream(s) = &q.backend {
            s.listen(Arc::downgrade(&q));
        }
        q
    }

    /// The classic runtime. Only classic queues reach the callers of this (fan-out of shared
    /// records, paging, recovery of stored messages); a stream answers with an idle,
    /// never-used classic runtime so that nothing here can panic.
    fn classic(&self) -> &ClassicQueue {
        match &self.backend {
            Backend::Classic(c) => c,
            Backend::Stream(_) => idle_classic(),
        }
    }

    /// The stream runtime, when this queue is a stream.
    pub fn stream_queue(&self) -> Option<&StreamQueue> {
        match &self.backend {
            Backend::Stream(s) => Some(s),
            Backend::Classic(_) => None,
        }
    }

    /// The log, when this queue is a stream (the stream protocol reads and writes it).
    pub fn stream(&self) -> Option<&Arc<pier_store::stream::Stream>> {
        self.stream_queue().map(StreamQueue::stream)
    }

    pub fn name(&self) -> &ShortString {
        &self.name
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    /// The queue's kind (`x-queue-type`).
    pub fn kind(&self) -> QueueType {
        self.kind
    }

    /// The settings in force (arguments merged with any policy).
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub fn is_exclusive(&self) -> bool {
        self.options.exclusive_owner.is_some()
    }

    /// 405 if another connection owns this exclusive queue.
    pub fn check_access(&self, connection: ConnectionId) -> Result<()> {
        match self.options.exclusive_owner {
            Some(owner) if owner != connection => Err(BrokerError::ResourceLocked {
                name: self.name.to_string(),
                vhost: self.vhost.clone(),
            }),
            _ => Ok(()),
        }
    }

    // ---- storage ----

    /// Makes this (durable) queue store its persistent messages. Set once, at declaration or
    /// recovery, before the queue is shared.
    pub fn attach_store(&self, store: QueueStore) {
        if self.stream_queue().is_some() {
            return;
        }
        self.classic().attach_store(store);
    }

    /// Whether messages arriving now are paged out (a classic queue past its memory budget):
    /// publishers then take connection credit for transient messages too.
    pub fn pages_out(&self) -> bool {
        matches!(&self.backend, Backend::Classic(c) if c.pages_out())
    }

    pub fn store(&self) -> Option<&QueueStore> {
        if self.stream_queue().is_some() {
            return None;
        }
        self.classic().store()
    }

    /// Lets this queue page bodies that are not in the durable store out to `paging` (the
    /// node's scratch store). Set once, before the queue is shared.
    pub fn attach_paging(&self, paging: StoreHandle) {
        if self.stream_queue().is_some() {
            return;
        }
        self.classic().attach_paging(paging);
    }

    /// Refills a recovered durable queue: messages in offset order, with their redelivered
    /// flags and stored expiry deadlines (Unix ms), and the offset to continue from.
    pub fn restore(self: &Arc<Self>, messages: Vec<Recovered>, next_offset: u64) {
        if self.stream_queue().is_some() {
            return;
        }
        self.classic().restore(self, messages, next_offset);
    }

    /// Whether a publish of `message` here can share one store record with other queues: it
    /// is stored, and without a TTL (the stored copy of an expiring message carries this
    /// queue's own deadline).
    pub(crate) fn shares_record(&self, message: &Message) -> bool {
        self.store().is_some()
            && message.is_persistent()
            && self.config.message_ttl.is_none()
            && message.properties.expiration.is_none()
    }

    // ---- figures ----

    pub fn stats(&self) -> QueueStats {
        if let Some(s) = self.stream_queue() {
            return s.stats();
        }
        self.classic().with_engine(|e| e.stats())
    }

    pub fn is_deleted(&self) -> bool {
        if let Some(s) = self.stream_queue() {
            return s.stream().shared().is_deleted();
        }
        self.classic().with_engine(|e| e.is_deleted())
    }

    /// Arrivals, deliveries and acks so far (lock-free).
    pub fn counters(&self) -> crate::counters::QueueCountersSnapshot {
        if let Some(s) = self.stream_queue() {
            return s.counters().snapshot();
        }
        self.classic().counters().snapshot()
    }

    /// Measured time in queue (enqueue to ack) over the last `waits::WINDOW_MS`.
    pub fn time_in_queue(&self) -> WaitSummary {
        let mut h = WaitHistogram::default();
        self.time_in_queue_into(&mut h);
        h.summary()
    }

    /// Adds this queue's time-in-queue samples of the window to `into` (vhost aggregates).
    pub fn time_in_queue_into(&self, into: &mut WaitHistogram) {
        self.classic().time_in_queue_into(into);
    }

    /// The consumers as management lists them.
    pub fn consumers(&self) -> Vec<crate::consumer::ConsumerInfo> {
        if let Some(s) = self.stream_queue() {
            return s
                .consumers()
                .into_iter()
                .map(|(_, spec)| crate::consumer::ConsumerInfo {
                    channel: spec.sink.channel_number(),
                    tag: spec.tag,
                    connection: spec.connection,
                    ack_required: spec.ack_required,
                    exclusive: spec.exclusive,
                    prefetch: spec.prefetch,
                    priority: spec.priority,
                    arguments: spec.arguments,
                    active: true,
                })
                .collect();
        }
        let channels = self.classic().consumer_channels();
        self.classic().with_engine(|e| {
            e.consumers()
                .map(|(id, s, active)| crate::consumer::ConsumerInfo {
                    tag: s.tag.clone(),
                    connection: s.connection,
                    channel: channels.get(&id).copied().flatten(),
                    ack_required: s.ack_required,
                    exclusive: s.exclusive,
                    prefetch: s.prefetch,
                    priority: s.priority,
                    arguments: s.arguments.clone(),
                    active,
                })
                .collect()
        })
    }

    pub fn consumer_tags(&self) -> Vec<ShortString> {
        if let Some(s) = self.stream_queue() {
            return s.consumers().into_iter().map(|(_, c)| c.tag).collect();
        }
        self.classic()
            .with_engine(|e| e.consumers().map(|(_, s, _)| s.tag.clone()).collect())
    }

    /// With single active consumer: the tag of the consumer receiving messages.
    pub fn active_consumer_tag(&self) -> Option<ShortString> {
        if !self.config.single_active_consumer {
            return None;
        }
        self.classic()
            .with_engine(|e| e.consumers().next().map(|(_, s, _)| s.tag.clone()))
    }

    // ---- time ----

    /// The queue was used (declared, basic.get): restart its `x-expires` period.
    pub fn touch(self: &Arc<Self>) {
        if self.stream_queue().is_some() {
            return;
        }
        self.classic().touch(self);
    }

    /// Whether a tick at `now` has anything to do here (lock-free).
    pub(crate) fn tick_due(&self, now: u64) -> bool {
        if self.stream_queue().is_some() {
            return false;
        }
        self.classic().tick_due(now)
    }

    /// Removes expired heads (dead-lettering them) and reports whether `x-expires` ran out.
    pub(crate) fn tick(self: &Arc<Self>) -> TickAction {
        if self.classic().tick(self) {
            TickAction::Delete
        } else {
            TickAction::None
        }
    }

    // ---- publishing ----

    /// Appends a message and delivers what consumers can take; dead letters it causes are
    /// routed before it returns. Tests only: messages enter queues through `VHost::publish`.
    #[cfg(test)]
    pub(crate) fn publish(self: &Arc<Self>, message: Arc<Message>) -> Published {
        self.publish_durable(message, None)
    }

    /// `publish`, and when the message is stored, `durability` learns when it is on disk.
    #[cfg(test)]
    pub(crate) fn publish_durable(
        self: &Arc<Self>,
        message: Arc<Message>,
        durability: Option<&Arc<PublishDurability>>,
    ) -> Published {
        let mut dead = Vec::new();
        let result = self.publish_collect(message, &mut dead, durability);
        self.route_dead_letters(dead);
        result
    }

    /// `publish` without routing the dead letters: the caller routes them once no queue lock
    /// is held (the vhost's dead-letter loop uses this).
    pub(crate) fn publish_collect(
        self: &Arc<Self>,
        message: Arc<Message>,
        dead: &mut Vec<DeadLetter>,
        durability: Option<&Arc<PublishDurability>>,
    ) -> Published {
        if let Some(s) = self.stream_queue() {
            return s.publish(&message, durability);
        }
        self.classic()
            .publish_collect(self, message, dead, durability)
    }

    /// Hands dead letters to the vhost, outside the queue lock.
    #[cfg(test)]
    pub(crate) fn route_dead_letters(self: &Arc<Self>, dead: Vec<DeadLetter>) {
        self.classic().route_dead_letters(self, dead);
    }

    /// Fan-out: the classic runtime of this queue, whose lock a shared-record publish holds.
    pub(crate) fn classic_runtime(&self) -> &ClassicQueue {
        self.classic()
    }

    // ---- delivery ----

    /// Delivers as much as consumers' credit allows. Sinks call this when they drain.
    pub fn dispatch(self: &Arc<Self>) {
        if let Some(s) = self.stream_queue() {
            return s.dispatch(self);
        }
        self.classic().dispatch(self);
    }

    /// basic.get: the next message, with the count of messages left ready.
    pub fn get(self: &Arc<Self>, ack_required: bool) -> Option<(Delivery, u32)> {
        if self.stream_queue().is_some() {
            // The channel refuses basic.get on a stream before it gets here (540).
            return None;
        }
        self.classic().get(self, ack_required)
    }

    /// Adds a consumer. Exclusive consumers need an idle queue; nobody joins an exclusive one.
    /// `on_added` runs under the queue lock once the consumer is accepted and before anything is
    /// delivered to it: the place to send basic.consume-ok so that it precedes the deliveries.
    pub fn add_consumer(
        self: &Arc<Self>,
        spec: ConsumerSpec,
        on_added: impl FnOnce(),
    ) -> Result<ConsumerId> {
        if let Some(s) = self.stream_queue() {
            return s.add_consumer(self, spec, on_added);
        }
        self.classic()
            .add_consumer(self, spec, on_added)
            .map_err(|r| match r {
                engine::Refusal::Deleted => {
                    BrokerError::not_found(ObjectKind::Queue, &self.name, &self.vhost)
                }
                engine::Refusal::ExclusiveConsumer => BrokerError::ExclusiveConsumer {
                    name: self.name.to_string(),
                    vhost: self.vhost.clone(),
                },
            })
    }

    pub fn remove_consumer(self: &Arc<Self>, id: ConsumerId) -> ConsumerRemoved {
        if let Some(s) = self.stream_queue() {
            return ConsumerRemoved {
                existed: s.remove_consumer(id),
                auto_delete_now: false,
            };
        }
        let (existed, auto_delete_now) = self.classic().remove_consumer(self, id);
        ConsumerRemoved {
            existed,
            auto_delete_now,
        }
    }

    // ---- settlement ----

    /// Deliveries (by offset) acknowledged: they leave the queue, their consumers' credit
    /// frees up and more is delivered.
    pub fn settle(self: &Arc<Self>, offsets: &[u64]) {
        if let Some(s) = self.stream_queue() {
            return s.settle(self, offsets);
        }
        self.classic().settle(self, offsets);
    }

    /// Deliveries rejected without requeue: settled, and dead-lettered (reason `rejected`)
    /// when the queue has a dead-letter exchange.
    pub fn reject(self: &Arc<Self>, offsets: &[u64]) {
        if let Some(s) = self.stream_queue() {
            return s.settle(self, offsets);
        }
        self.classic().discard(self, offsets);
    }

    /// Puts delivered messages back at their original positions (within their priority),
    /// marked redelivered, keeping their original expiry and enqueue time.
    pub fn requeue(self: &Arc<Self>, offsets: &[u64]) {
        if let Some(s) = self.stream_queue() {
            // Nothing is requeued in a log: the consumer's credit comes back.
            return s.settle(self, offsets);
        }
        self.classic().requeue(self, offsets);
    }

    /// Drops every ready message (not the unacked ones); returns how many.
    pub fn purge(self: &Arc<Self>) -> u32 {
        if self.stream_queue().is_some() {
            return 0;
        }
        u32::try_from(self.classic().purge(self)).unwrap_or(u32::MAX)
    }

    /// Marks the queue deleted, drops its messages and cancels its consumers (their sinks are
    /// told). Returns the ready count it had.
    pub(crate) fn mark_deleted(self: &Arc<Self>) -> u32 {
        if let Some(s) = self.stream_queue() {
            return u32::try_from(s.delete()).unwrap_or(u32::MAX);
        }
        u32::try_from(self.classic().delete(self)).unwrap_or(u32::MAX)
    }

    /// Slots the ready deques hold (capacity, not length).
    #[cfg(test)]
    pub(crate) fn ready_capacity(&self) -> usize {
        self.classic().with_engine(|e| e.ready_capacity())
    }
}
