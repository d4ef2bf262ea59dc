//! Queues: the handle the rest of the broker talks to, whatever the queue's kind.
//!
//! ```text
//!  routing, channels, management ──► Arc<Queue> (handle: name, vhost, options, kind)
//!                                        │
//!                                        ├─ Backend::Classic ─► ClassicQueue (classic.rs): lock +
//!                                        │                     runtime that carries out effects
//!                                        │                        │ Command        ▲ Effect
//!                                        │                        ▼                │
//!                                        │                      QueueEngine (engine/): the
//!                                        │                      deterministic state machine
//!                                        ├─ Backend::Stream ──► StreamQueue (stream/): a stream
//!                                        │                      queue over its log in pier-store
//!                                        └─ Backend::Remote ──► RemoteQueue (remote.rs): a durable
//!                                                              queue homed on another cluster node,
//!                                                              reached through a QueueLink
//! ```
//!
//! Quorum queues run on the same engine runtime as classic ones (`Backend::Classic` is "the
//! engine behind a lock"), with the quorum settings (`EngineConfig::quorum`: every message
//! stored, delivery limit, queue-level consumer timeout) and `kind` = `Quorum`: a group of one
//! member until a Raft log per queue drives the engine (docs/quorum-queues.md). Streams are
//! another backend (`queue/stream/`), and a queue homed on another cluster node is a `Remote`
//! one (`queue/remote.rs`); `kind.rs` decides which one a declaration gets.
//!
//! Every message gets a monotonically increasing offset when it enters the queue; messages
//! handed out and not yet settled stay checked out in the engine, and come back at their
//! original offset when returned, so FIFO order survives requeueing. The offset is also what
//! a persistent store keys its records by.

pub(crate) mod classic;
pub mod engine;
pub mod kind;
pub mod remote;
pub mod stream;

use std::sync::{Arc, RwLock, Weak};

use pier_store::StoreHandle;
use pier_wire::{FieldTable, ShortString};

use crate::args::{DeliveryCounting, QueueConfig};
use crate::clock::Clock;
use crate::cluster::BoxFuture;
use crate::consumer::{ConnectionId, ConsumerId, ConsumerSpec, Delivery};
use crate::deadletter::DeadLetter;
use crate::error::{BrokerError, ObjectKind, Result};
use crate::message::Message;
use crate::persist::{PublishDurability, QueueStore};
use crate::vhost::VHost;
use crate::waits::{WaitHistogram, WaitSummary};

use classic::ClassicQueue;
pub use engine::{EngineConfig, Published, Recovered, Returns, PAGE_OUT_BYTES};
pub use kind::QueueType;
use remote::RemoteQueue;
pub use remote::{QueueLink, RemoteConsumer, RemoteGot, Settlement};
use stream::StreamQueue;

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

/// What basic.get took: the delivery and the ready messages left, or nothing.
pub type Got = Option<(Delivery, u32)>;

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
/// difference costs a few hundred bytes per stream or remote queue, a `Box` would cost every
/// classic publish an indirection.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Classic(ClassicQueue),
    Stream(StreamQueue),
    /// A durable queue homed on another cluster node.
    Remote(RemoteQueue),
}

/// A queue, as routing, channels and management see it.
pub struct Queue {
    name: ShortString,
    vhost: String,
    options: QueueOptions,
    kind: QueueType,
    /// Replaced when a policy changes (`Queue::reconfigure`); read per dead letter and per
    /// management listing, so a lock and a cheap clone of the `Arc`.
    config: RwLock<Arc<QueueConfig>>,
    backend: Backend,
    /// Its deletion was proposed to the cluster (auto-delete, `x-expires`): not again.
    deletion_proposed: std::sync::atomic::AtomicBool,
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
        Queue::on_engine(
            QueueType::Classic,
            name,
            vhost,
            options,
            config,
            clock,
            router,
        )
    }

    /// A queue of an engine-backed kind (classic or quorum) with resolved settings.
    pub fn on_engine(
        kind: QueueType,
        name: ShortString,
        vhost: String,
        options: QueueOptions,
        config: QueueConfig,
        clock: Arc<Clock>,
        router: Weak<VHost>,
    ) -> Arc<Self> {
        let engine = match kind {
            QueueType::Quorum => EngineConfig::quorum(config.clone()),
            _ => EngineConfig::classic(config.clone(), options.auto_delete),
        };
        let kind = match kind {
            QueueType::Quorum => QueueType::Quorum,
            _ => QueueType::Classic,
        };
        Arc::new(Queue {
            name,
            vhost,
            options,
            kind,
            config: RwLock::new(Arc::new(config)),
            backend: Backend::Classic(ClassicQueue::new(engine, clock, router)),
            deletion_proposed: Default::default(),
        })
    }

    /// A handle to a durable queue homed on another node, reached through `link`.
    pub fn remote(
        name: ShortString,
        vhost: String,
        kind: QueueType,
        options: QueueOptions,
        config: QueueConfig,
        link: Arc<dyn QueueLink>,
    ) -> Arc<Self> {
        Arc::new(Queue {
            name,
            vhost,
            options,
            kind,
            config: RwLock::new(Arc::new(config)),
            backend: Backend::Remote(RemoteQueue::new(link)),
            deletion_proposed: Default::default(),
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
            config: RwLock::new(Arc::new(config)),
            backend: Backend::Stream(StreamQueue::new(stream)),
            deletion_proposed: Default::default(),
        });
        if let Backend::Stream(s) = &q.backend {
            s.listen(Arc::downgrade(&q));
        }
        q
    }

    /// What became of an at-least-once dead letter this queue keeps at `offset`: `ok`,
    /// every target queue confirmed it, and it may leave; else it is routed again later.
    pub fn dead_letter_settled(&self, offset: u64, ok: bool) {
        match &self.backend {
            Backend::Classic(c) => c.dead_letter_settled(offset, ok),
            Backend::Remote(r) => r.link().dead_letter_settled(offset, ok),
            Backend::Stream(_) => {}
        }
    }

    fn classic_opt(&self) -> Option<&ClassicQueue> {
        match &self.backend {
            Backend::Classic(c) => Some(c),
            Backend::Stream(_) | Backend::Remote(_) => None,
        }
    }

    pub(crate) fn remote_backend(&self) -> Option<&RemoteQueue> {
        match &self.backend {
            Backend::Remote(r) => Some(r),
            Backend::Classic(_) | Backend::Stream(_) => None,
        }
    }

    /// The stream runtime, when this queue is a stream.
    pub fn stream_queue(&self) -> Option<&StreamQueue> {
        match &self.backend {
            Backend::Stream(s) => Some(s),
            Backend::Classic(_) | Backend::Remote(_) => None,
        }
    }

    /// The log, when this queue is a stream (the stream protocol reads and writes it).
    pub fn stream(&self) -> Option<&Arc<pier_store::stream::Stream>> {
        self.stream_queue().map(StreamQueue::stream)
    }

    /// Whether this queue is homed on another node.
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::Remote(_))
    }

    /// The node this queue is homed on, when it is another one.
    pub fn home_node(&self) -> Option<&str> {
        self.remote_backend().map(|r| r.link().node())
    }

    /// Its deletion is being proposed to the cluster: true the first time only.
    pub(crate) fn propose_deletion_once(&self) -> bool {
        !self
            .deletion_proposed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// The proposal failed: it may be proposed again.
    pub fn deletion_not_proposed(&self) {
        self.deletion_proposed
            .store(false, std::sync::atomic::Ordering::Release);
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

    /// The settings in force (arguments merged with the policy in force).
    pub fn config(&self) -> Arc<QueueConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// A policy changed: `config` (arguments merged with the policy now in force) replaces
    /// the settings, and the queue enforces them at once. Returns false when nothing a
    /// policy can change differs (then nothing happens). A classic (or single-member quorum)
    /// queue applies them to its engine, a stream to its retention; a queue homed on another
    /// node only records them (its home node applies the same policy change itself), and a
    /// replicated quorum queue proposes them to its log through its link, so that every
    /// member changes at the same place.
    pub fn reconfigure(self: &Arc<Self>, config: QueueConfig) -> bool {
        let before = {
            let mut c = self.config.write().unwrap_or_else(|p| p.into_inner());
            if **c == config {
                return false;
            }
            std::mem::replace(&mut *c, Arc::new(config.clone()))
        };
        let settings = crate::args::PolicySettings::of(&config);
        match &self.backend {
            Backend::Classic(c) if crate::args::PolicySettings::of(&before) != settings => {
                let delivery_limit = match self.kind {
                    QueueType::Quorum => engine::quorum_delivery_limit(config.delivery_limit),
                    _ => None,
                };
                c.reconfigure(self, settings, delivery_limit);
            }
            Backend::Classic(_) => {}
            Backend::Stream(s) => s.reconfigure(&config),
            Backend::Remote(r) if crate::args::PolicySettings::of(&before) != settings => {
                r.link().reconfigure(self, settings);
            }
            Backend::Remote(_) => {}
        }
        true
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
    /// recovery, before the queue is shared. A remote queue stores nothing here.
    pub fn attach_store(&self, store: QueueStore) {
        if let Some(c) = self.classic_opt() {
            c.attach_store(store);
        }
    }

    pub fn store(&self) -> Option<&QueueStore> {
        self.classic_opt().and_then(|c| c.store())
    }

    /// Lets this queue page bodies that are not in the durable store out to `paging` (the
    /// node's scratch store). Set once, before the queue is shared.
    pub fn attach_paging(&self, paging: StoreHandle) {
        if let Some(c) = self.classic_opt() {
            c.attach_paging(paging);
        }
    }

    /// Refills a recovered durable queue: messages in offset order, with their redelivered
    /// flags and stored expiry deadlines (Unix ms), and the offset to continue from.
    pub fn restore(self: &Arc<Self>, messages: Vec<Recovered>, next_offset: u64) {
        if let Some(c) = self.classic_opt() {
            c.restore(self, messages, next_offset);
        }
    }

    /// Whether this queue writes `message` to its durable store: a classic queue with a store
    /// keeps persistent messages (delivery mode 2), a quorum queue (or a stream) every
    /// message. The one place that decides it (publishers' credit and confirms, fan-out).
    pub fn stores(&self, message: &Message) -> bool {
        if self.stream_queue().is_some() {
            return true;
        }
        self.store().is_some() && (self.kind.stores_every_message() || message.is_persistent())
    }

    /// Whether a publish of `message` here can share one store record with other queues: it
    /// is stored, and without a TTL (the stored copy of an expiring message carries this
    /// queue's own deadline).
    pub(crate) fn shares_record(&self, message: &Message) -> bool {
        self.stream_queue().is_none()
            && self.stores(message)
            && self
                .config
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .message_ttl
                .is_none()
            && message.properties.expiration.is_none()
    }

    /// The message as this queue delivers it: a quorum queue adds its counts from the first
    /// redelivery on, as RabbitMQ 4 does: 4.2 `x-delivery-count` (every return), 4.3
    /// `x-acquired-count` (every return) and, once a delivery failed, `x-delivery-count`
    /// (the failed ones) (`rabbit_fifo_client:add_delivery_count_header`).
    pub fn as_delivered(&self, message: Arc<Message>, returns: Returns) -> Arc<Message> {
        if self.kind != QueueType::Quorum || returns.count == 0 {
            return message;
        }
        let count = |n: u32| pier_wire::FieldValue::LongLongInt(i64::from(n));
        let counting = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .delivery_counting;
        match counting {
            DeliveryCounting::V4_2 => {
                Message::with_header(&message, "x-delivery-count", count(returns.count))
            }
            DeliveryCounting::V4_3 if returns.failed == 0 => {
                Message::with_header(&message, "x-acquired-count", count(returns.count))
            }
            DeliveryCounting::V4_3 => Message::with_headers(
                &message,
                [
                    ("x-acquired-count", count(returns.count)),
                    ("x-delivery-count", count(returns.failed)),
                ],
            ),
        }
    }

    /// Whether a publish of `message` here waits for something before it is confirmed: the
    /// disk (a message the queue stores: `stores`), the paging
    /// store (a classic queue past its memory budget: transient messages too, so that a
    /// publisher cannot outrun it; see `ClassicQueue::page_out`) or the queue's home node.
    pub(crate) fn needs_durability(&self, message: &Message) -> bool {
        match &self.backend {
            Backend::Classic(c) => self.stores(message) || c.pages_out(),
            // Every message appended to a stream is confirmed after fsync.
            Backend::Stream(_) | Backend::Remote(_) => true,
        }
    }

    // ---- figures ----

    pub fn stats(&self) -> QueueStats {
        match &self.backend {
            Backend::Classic(c) => c.with_engine(|e| e.stats()),
            Backend::Stream(s) => s.stats(),
            Backend::Remote(r) => r.stats(),
        }
    }

    pub fn is_deleted(&self) -> bool {
        match &self.backend {
            Backend::Classic(c) => c.with_engine(|e| e.is_deleted()),
            Backend::Stream(s) => s.stream().shared().is_deleted(),
            Backend::Remote(r) => r.is_deleted(),
        }
    }

    /// Arrivals, deliveries and acks so far (lock-free; a remote queue's as last reported
    /// by its home node).
    pub fn counters(&self) -> crate::counters::QueueCountersSnapshot {
        match &self.backend {
            Backend::Classic(c) => c.counters().snapshot(),
            Backend::Stream(s) => s.counters().snapshot(),
            Backend::Remote(r) => r.counters(),
        }
    }

    /// A remote queue's figures as its home node reported them (management refreshes them).
    pub fn set_remote_figures(
        &self,
        stats: QueueStats,
        counters: crate::counters::QueueCountersSnapshot,
    ) {
        if let Some(r) = self.remote_backend() {
            r.set_figures(stats, counters);
        }
    }

    /// Measured time in queue (enqueue to ack) over the last `waits::WINDOW_MS`.
    pub fn time_in_queue(&self) -> WaitSummary {
        let mut h = WaitHistogram::default();
        self.time_in_queue_into(&mut h);
        h.summary()
    }

    /// Adds this queue's time-in-queue samples of the window to `into` (vhost aggregates).
    pub fn time_in_queue_into(&self, into: &mut WaitHistogram) {
        if let Some(c) = self.classic_opt() {
            c.time_in_queue_into(into);
        }
    }

    /// The consumers as management lists them (a remote queue: this node's consumers).
    pub fn consumers(&self) -> Vec<crate::consumer::ConsumerInfo> {
        let c = match &self.backend {
            Backend::Classic(c) => c,
            Backend::Stream(s) => {
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
                    .collect()
            }
            Backend::Remote(r) => return r.consumers(),
        };
        let channels = c.consumer_channels();
        c.with_engine(|e| {
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
        match &self.backend {
            Backend::Classic(c) => {
                c.with_engine(|e| e.consumers().map(|(_, s, _)| s.tag.clone()).collect())
            }
            Backend::Stream(s) => s.consumers().into_iter().map(|(_, c)| c.tag).collect(),
            Backend::Remote(r) => r.consumers().into_iter().map(|c| c.tag).collect(),
        }
    }

    /// With single active consumer: the tag of the consumer receiving messages.
    pub fn active_consumer_tag(&self) -> Option<ShortString> {
        if !self.config().single_active_consumer {
            return None;
        }
        self.classic_opt()?
            .with_engine(|e| e.consumers().next().map(|(_, s, _)| s.tag.clone()))
    }

    // ---- time ----

    /// The queue was used (declared, basic.get): restart its `x-expires` period.
    pub fn touch(self: &Arc<Self>) {
        if let Some(c) = self.classic_opt() {
            c.touch(self);
        }
    }

    /// Whether a tick at `now` has anything to do here (lock-free).
    pub(crate) fn tick_due(&self, now: u64) -> bool {
        self.classic_opt().is_some_and(|c| c.tick_due(now))
    }

    /// Removes expired heads (dead-lettering them) and reports whether `x-expires` ran out.
    pub(crate) fn tick(self: &Arc<Self>) -> TickAction {
        match self.classic_opt() {
            Some(c) if c.tick(self) => TickAction::Delete,
            _ => TickAction::None,
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
    /// is held (the vhost's dead-letter loop uses this). A remote queue forwards the message
    /// to its home node; `durability` then waits for the home node's confirmation.
    pub(crate) fn publish_collect(
        self: &Arc<Self>,
        message: Arc<Message>,
        dead: &mut Vec<DeadLetter>,
        durability: Option<&Arc<PublishDurability>>,
    ) -> Published {
        match &self.backend {
            Backend::Classic(c) => c.publish_collect(self, message, dead, durability),
            Backend::Stream(s) => s.publish(&message, durability),
            Backend::Remote(r) => r.publish(self, &message, durability),
        }
    }

    /// Hands dead letters to the vhost, outside the queue lock.
    #[cfg(test)]
    pub(crate) fn route_dead_letters(self: &Arc<Self>, dead: Vec<DeadLetter>) {
        if let Some(c) = self.classic_opt() {
            c.route_dead_letters(self, dead);
        }
    }

    /// Fan-out: the classic runtime of this queue, whose lock a shared-record publish holds
    /// (only queues with a store share records, and only classic queues have one).
    pub(crate) fn classic_runtime(&self) -> Option<&ClassicQueue> {
        self.classic_opt()
    }

    // ---- delivery ----

    /// Delivers as much as consumers' credit allows. Sinks call this when they drain.
    pub fn dispatch(self: &Arc<Self>) {
        match &self.backend {
            Backend::Classic(c) => c.dispatch(self),
            Backend::Stream(s) => s.dispatch(self),
            Backend::Remote(r) => r.dispatch(self),
        }
    }

    /// basic.get: the next message, with the count of messages left ready. A remote queue
    /// answers through [`Queue::get_remote`] (the server awaits it); here it has nothing. The
    /// channel refuses basic.get on a stream before it gets here (540).
    pub fn get(self: &Arc<Self>, ack_required: bool) -> Option<(Delivery, u32)> {
        self.classic_opt()?.get(self, ack_required)
    }

    /// Adds a consumer. Exclusive consumers need an idle queue; nobody joins an exclusive one.
    /// `on_added` runs under the queue lock once the consumer is accepted and before anything is
    /// delivered to it: the place to send basic.consume-ok so that it precedes the deliveries.
    /// A remote queue's consumers are added with [`Queue::consume_remote`].
    pub fn add_consumer(
        self: &Arc<Self>,
        spec: ConsumerSpec,
        on_added: impl FnOnce(),
    ) -> Result<ConsumerId> {
        if let Some(s) = self.stream_queue() {
            return s.add_consumer(self, spec, on_added);
        }
        let Some(c) = self.classic_opt() else {
            return Err(BrokerError::NotImplemented(format!(
                "queue '{}' is on node {}: consume through the cluster",
                self.name,
                self.home_node().unwrap_or("?")
            )));
        };
        c.add_consumer(self, spec, on_added).map_err(|r| match r {
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
        match &self.backend {
            Backend::Classic(c) => {
                let (existed, auto_delete_now) = c.remove_consumer(self, id);
                ConsumerRemoved {
                    existed,
                    auto_delete_now,
                }
            }
            Backend::Stream(s) => ConsumerRemoved {
                existed: s.remove_consumer(id),
                auto_delete_now: false,
            },
            // The home node decides auto-deletion.
            Backend::Remote(r) => ConsumerRemoved {
                existed: r.remove_consumer(self, id),
                auto_delete_now: false,
            },
        }
    }

    // ---- a queue on another node (the server awaits these) ----

    /// basic.consume on a remote queue: the consumer is registered here at once and with
    /// the home node by the future. Deliveries wait until [`Queue::activate_remote`] (after
    /// consume-ok). `None` for a local queue.
    pub fn consume_remote(
        self: &Arc<Self>,
        spec: ConsumerSpec,
    ) -> Option<(ConsumerId, BoxFuture<Result<()>>)> {
        Some(self.remote_backend()?.consume(self, spec))
    }

    /// consume-ok went out: deliveries may flow to the consumer.
    pub fn activate_remote(self: &Arc<Self>, id: ConsumerId) {
        if let Some(r) = self.remote_backend() {
            r.activate(self, id);
        }
    }

    /// basic.cancel of a remote queue's consumer: resolves once every delivery the home
    /// node sent it has been handed over.
    pub fn cancel_remote(self: &Arc<Self>, id: ConsumerId) -> Option<BoxFuture<()>> {
        Some(self.remote_backend()?.cancel(self, id))
    }

    /// basic.get on a remote queue.
    pub fn get_remote(self: &Arc<Self>, ack_required: bool) -> Option<BoxFuture<Result<Got>>> {
        Some(self.remote_backend()?.get(self, ack_required))
    }

    /// queue.purge on a remote queue.
    pub fn purge_remote(self: &Arc<Self>) -> Option<BoxFuture<Result<u32>>> {
        Some(self.remote_backend()?.purge(self))
    }

    /// A remote queue's figures from its home node (`touch`: counts as use, x-expires).
    pub fn stats_remote(self: &Arc<Self>, touch: bool) -> Option<BoxFuture<Result<QueueStats>>> {
        Some(self.remote_backend()?.fetch_stats(self, touch))
    }

    /// RabbitMQ's error for a queue whose home node is down or cut off, when it is.
    pub fn unavailable(&self) -> Option<BrokerError> {
        let r = self.remote_backend()?;
        r.link().session().is_none().then(|| r.home_down(self))
    }

    /// A delivery from the home node for this node's consumer `id` (the cluster's message
    /// path calls this in arrival order).
    #[allow(clippy::too_many_arguments)]
    pub fn remote_deliver(
        self: &Arc<Self>,
        id: ConsumerId,
        session: u64,
        offset: u64,
        redelivered: bool,
        ack_required: bool,
        enqueued_at: u32,
        message: Arc<Message>,
    ) {
        if let Some(r) = self.remote_backend() {
            r.deliver(
                self,
                id,
                session,
                offset,
                redelivered,
                ack_required,
                enqueued_at,
                message,
            );
        }
    }

    /// The home node cancelled this node's consumer `id` (the queue was deleted there).
    /// The ids of this node's consumers of a queue reached over a link (none otherwise).
    pub fn remote_consumer_ids(&self) -> Vec<ConsumerId> {
        self.remote_backend()
            .map(RemoteQueue::consumer_ids)
            .unwrap_or_default()
    }

    pub fn remote_consumer_cancelled(&self, id: ConsumerId) {
        if let Some(r) = self.remote_backend() {
            r.consumer_cancelled(self, id);
        }
    }

    /// The link session to the home node ended: this node's consumers are cancelled.
    pub fn remote_session_ended(&self, session: u64) {
        if let Some(r) = self.remote_backend() {
            r.session_ended(session);
        }
    }

    // ---- settlement ----

    /// Deliveries (by offset) acknowledged: they leave the queue, their consumers' credit
    /// frees up and more is delivered.
    pub fn settle(self: &Arc<Self>, offsets: &[u64]) {
        match &self.backend {
            Backend::Classic(c) => c.settle(self, offsets),
            Backend::Stream(s) => s.settle(self, offsets),
            Backend::Remote(r) => r.settle(self, offsets, Settlement::Ack),
        }
    }

    /// Deliveries rejected without requeue: settled, and dead-lettered (reason `rejected`)
    /// when the queue has a dead-letter exchange.
    pub fn reject(self: &Arc<Self>, offsets: &[u64]) {
        match &self.backend {
            Backend::Classic(c) => c.discard(self, offsets),
            Backend::Stream(s) => s.settle(self, offsets),
            Backend::Remote(r) => r.settle(self, offsets, Settlement::Reject),
        }
    }

    /// Puts delivered messages back at their original positions (within their priority),
    /// marked redelivered, keeping their original expiry and enqueue time. `failed`: failed
    /// deliveries (basic.reject with requeue, the consumer's channel gone), which RabbitMQ
    /// 4.3's quorum queues count apart from nacks and recovers (`DeliveryCounting`).
    pub fn requeue(self: &Arc<Self>, offsets: &[u64], failed: bool) {
        match &self.backend {
            Backend::Classic(c) => c.requeue(self, offsets, failed),
            // Nothing is requeued in a log: the consumer's credit comes back.
            Backend::Stream(s) => s.settle(self, offsets),
            Backend::Remote(r) => r.settle(
                self,
                offsets,
                if failed {
                    Settlement::Fail
                } else {
                    Settlement::Requeue
                },
            ),
        }
    }

    /// Puts back deliveries that never reached a client (a consumer on another node went
    /// away while they were on their way): not counted as redeliveries.
    pub fn release(self: &Arc<Self>, offsets: &[u64]) {
        match &self.backend {
            Backend::Classic(c) => c.release(self, offsets),
            Backend::Stream(s) => s.settle(self, offsets),
            Backend::Remote(r) => r.settle(self, offsets, Settlement::Release),
        }
    }

    /// Drops every ready message (not the unacked ones); returns how many. A remote
    /// queue's purge is sent to its home node without waiting (the count is not known here:
    /// 0); the server awaits [`Queue::purge_remote`] instead.
    pub fn purge(self: &Arc<Self>) -> u32 {
        match &self.backend {
            Backend::Classic(c) => u32::try_from(c.purge(self)).unwrap_or(u32::MAX),
            Backend::Stream(_) => 0,
            Backend::Remote(r) => {
                drop(r.purge(self));
                0
            }
        }
    }

    /// This handle is replaced by another of the same queue (a stream's leader moved): its
    /// consumers are cancelled, and a stream led here stops (its files stay).
    pub(crate) fn retire(self: &Arc<Self>) {
        match &self.backend {
            Backend::Classic(_) => {}
            Backend::Stream(s) => s.retire(),
            Backend::Remote(r) => {
                r.mark_deleted();
            }
        }
    }

    /// Marks the queue deleted, drops its messages and cancels its consumers (their sinks are
    /// told). Returns the ready count it had.
    pub(crate) fn mark_deleted(self: &Arc<Self>) -> u32 {
        match &self.backend {
            Backend::Classic(c) => u32::try_from(c.delete(self)).unwrap_or(u32::MAX),
            Backend::Stream(s) => u32::try_from(s.delete()).unwrap_or(u32::MAX),
            Backend::Remote(r) => r.mark_deleted(),
        }
    }

    /// Slots the ready deques hold (capacity, not length).
    #[cfg(test)]
    pub(crate) fn ready_capacity(&self) -> usize {
        self.classic_opt()
            .map_or(0, |c| c.with_engine(|e| e.ready_capacity()))
    }
}
