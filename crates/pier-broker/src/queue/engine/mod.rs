//! The queue engine: one queue's logic as a deterministic state machine.
//!
//! ```text
//!   Command ──► QueueEngine::apply(command, context) ──► Reply + [Effect]
//!               (no I/O, no locks, no clock reads,        │
//!                no global counters)                       ▼
//!                                          runtime (classic.rs): store appends/acks,
//!                                          paging reads/writes, consumer sinks, dead letters
//! ```
//!
//! The commands follow RabbitMQ's queue machine (`rabbit_fifo`): enqueue (with an optional
//! publisher id and sequence number, for deduplication), checkout and cancel of consumers
//! (with prefetch or credit), settle (ack), return (requeue, counting deliveries), discard
//! (reject without requeue: dead-letter), credit, purge, delete, and a tick that drives message
//! TTL, `x-expires` and consumer timeouts. Everything the engine would otherwise look up itself
//! arrives in the [`Context`]: the time (`now`, `unix_now`), whether bodies can be spilled to a
//! paging store, and the [`Gate`] that says whether a consumer's channel can take a delivery.
//!
//! **Determinism.** The same commands applied to the same state, with the same context values
//! and gate answers, give the same state, reply and effects (tested by replaying generated
//! command sequences from scratch and from a snapshot: `tests_determinism.rs`). Nothing
//! iterates a hash map; ids and offsets are counted in the state.
//!
//! **Bodies do not drive decisions.** Which message goes to which consumer, what expires and
//! what is dropped depends only on metadata kept in the state (offset, size, priority level,
//! expiry, delivery count). Whether a body is in memory is a local matter: a delivery or dead
//! letter whose body is on disk carries `message: None`, and the runtime reads it back and
//! reports it with [`Command::PagedIn`]. This is what lets a Raft log drive the same engine on
//! replicas whose memory differs. The one input that is not replicable is the [`Gate`]: a
//! replicated queue uses one that only looks at engine credit (see `Gate`).

mod dispatch;
mod expiry;
mod limits;
mod paging;
mod publish;
mod reconfigure;
mod settle;
mod snapshot;
pub(crate) mod state;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_determinism;

use std::collections::BTreeMap;
use std::sync::Arc;

use pier_wire::ShortString;

use crate::args::{PolicySettings, QueueConfig};
use crate::clock::NEVER;
use crate::consumer::ConsumerId;
use crate::deadletter::DeathReason;
use crate::message::Message;
use crate::waits::WaitWindow;

pub use snapshot::{
    CheckedOutParts, ConsumerParts, EntryParts, LevelParts, Snapshot, SnapshotParts,
};
use state::{CheckedOut, Consumer, Level};
pub use state::{ConsumerSettings, Returns};

/// Bodies a queue keeps in memory by default; beyond it, newer messages are kept only on disk
/// (the durable store for stored messages, the paging store for the rest) and read back in
/// batches as the head of the queue drains.
pub const PAGE_OUT_BYTES: u64 = 8 * 1024 * 1024;
/// What one message with its body in memory costs beyond its body, for the memory budget: the
/// shared `Message` (with its `Arc` counts), its 32-byte queue entry and the typical
/// allocations behind its properties and routing key. Counting bodies alone let a backlog of
/// small messages keep half a million of them (130+ bytes each) in memory under an 8 MB
/// budget of 16-byte bodies. A constant, so that the budget is a pure function of the command
/// sequence (the engine's determinism contract).
pub const MESSAGE_OVERHEAD: u64 = (std::mem::size_of::<crate::message::Message>()
    + 2 * std::mem::size_of::<usize>()
    + std::mem::size_of::<state::Entry>()
    + 64) as u64;
/// How many paged-out messages one read-back fetches at most (and how many bytes).
pub(crate) const PAGE_IN_BATCH: usize = 4096;
pub(crate) const PAGE_IN_BYTES: u64 = 4 * 1024 * 1024;

/// Settings fixed when the queue is created.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Arguments merged with the policy: TTLs, limits, dead lettering, priorities, SAC.
    pub queue: QueueConfig,
    pub auto_delete: bool,
    /// The queue has a durable store: its persistent messages are stored.
    pub stores_persistent: bool,
    /// With a durable store, transient messages are stored too (quorum queues keep every
    /// message, whatever its delivery mode).
    pub stores_transient: bool,
    /// Memory for ready messages (bodies plus `MESSAGE_OVERHEAD` each) before new arrivals
    /// are paged out.
    pub memory_budget: u64,
    /// Cancel a consumer (returning its messages) when a delivery to it stays unsettled this
    /// long (RabbitMQ 4's quorum-queue behaviour; classic queues leave it to the channel).
    pub consumer_timeout: Option<u64>,
    /// Dead-letter (or drop) a message returned more than this many times (`x-delivery-limit`).
    pub delivery_limit: Option<u32>,
    /// RabbitMQ 4's quorum-queue priorities: always on, two levels (priority 5 and above is
    /// high, everything else normal), high delivered two to one against normal while both
    /// have messages. Ignores `max_priority` (refused on quorum queues).
    pub two_priorities: bool,
}

impl EngineConfig {
    /// A classic queue's engine settings.
    pub fn classic(queue: QueueConfig, auto_delete: bool) -> Self {
        EngineConfig {
            queue,
            auto_delete,
            stores_persistent: false,
            stores_transient: false,
            memory_budget: PAGE_OUT_BYTES,
            consumer_timeout: None,
            delivery_limit: None,
            two_priorities: false,
        }
    }

    /// A quorum queue's engine settings (a single-member group today): every message is
    /// stored, messages returned more than the delivery limit are dead-lettered (or
    /// dropped), and `x-consumer-timeout` cancels a consumer whose delivery stays unsettled.
    pub fn quorum(queue: QueueConfig) -> Self {
        EngineConfig {
            stores_transient: true,
            consumer_timeout: queue.consumer_timeout,
            delivery_limit: quorum_delivery_limit(queue.delivery_limit),
            queue,
            auto_delete: false,
            stores_persistent: false,
            memory_budget: PAGE_OUT_BYTES,
            two_priorities: true,
        }
    }

    /// How many priority levels the queue has.
    pub fn level_count(&self) -> usize {
        if self.two_priorities {
            2
        } else {
            usize::from(self.queue.max_priority.unwrap_or(0)) + 1
        }
    }
}

/// Quorum queues' high level starts above this priority (RabbitMQ 4: 0–4 normal, 5+ high).
pub const QUORUM_NORMAL_PRIORITY_MAX: u8 = 4;
/// High-priority messages a quorum queue hands out per normal one while both wait
/// (RabbitMQ 4's `rabbit_fifo_q` weight).
const HIGH_PRIORITY_WEIGHT: u8 = 2;

/// RabbitMQ 4's default delivery limit of quorum queues.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// The delivery limit a quorum queue runs with: RabbitMQ 4's default of 20 when neither
/// argument nor policy set one, none when the value is negative (`-1` turns it off).
pub fn quorum_delivery_limit(configured: Option<i64>) -> Option<u32> {
    match configured {
        None => Some(DEFAULT_DELIVERY_LIMIT),
        Some(n) if n < 0 => None,
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
    }
}

/// A publisher's identity and the sequence number of one of its messages: an enqueue whose
/// sequence number is not above the last one seen from that publisher is a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherSeq {
    pub publisher: u64,
    pub seq: u64,
}

/// Where an enqueued persistent message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// The engine asks for its own append (`Effect::StoreAppend`) when the message is stored.
    Own,
    /// The caller appends one record for several queues (fan-out): no append effect.
    Shared,
}

/// A message recovered from the durable store.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub offset: u64,
    pub message: Arc<Message>,
    /// It may have been delivered before the restart.
    pub redelivered: bool,
    /// The expiry deadline stored with it (Unix milliseconds).
    pub deadline: Option<u64>,
    /// How often it had come back to the queue (recorded with `StoreReturned`).
    pub returns: Returns,
    /// It was a kept at-least-once dead letter (recorded with `StoreDeadLetter`): it is
    /// kept again and routed again.
    pub dead_letter: Option<DeathReason>,
}

/// Why the engine cancelled a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    QueueDeleted,
    /// A delivery stayed unsettled longer than the consumer timeout.
    Timeout,
}

/// The inputs to one command.
pub enum Command<'a> {
    /// A published message.
    Enqueue {
        message: Arc<Message>,
        publisher: Option<PublisherSeq>,
        store: StoreMode,
    },
    /// Forget a publisher's deduplication state (it went away).
    PublisherDown { publisher: u64 },
    /// Messages read back from the durable store at start-up, in offset order.
    Recover {
        messages: Vec<Recovered>,
        next_offset: u64,
    },
    /// A consumer subscribes.
    Checkout {
        consumer: ConsumerId,
        settings: ConsumerSettings,
    },
    /// A consumer unsubscribes; its unsettled deliveries stay checked out until settled or
    /// returned (AMQP 0-9-1 semantics).
    Cancel { consumer: ConsumerId },
    /// Credit mode: `credit` more deliveries may go to the consumer; with `drain`, credit
    /// that cannot be used now is given back.
    Credit {
        consumer: ConsumerId,
        credit: u32,
        drain: bool,
    },
    /// basic.get.
    Get { ack_required: bool },
    /// Deliveries acknowledged.
    Settle { offsets: &'a [u64] },
    /// Deliveries put back (nack/reject with requeue, recover, channel closed); `failed`:
    /// a failed delivery in RabbitMQ 4.3's sense (basic.reject with requeue, the consumer's
    /// channel or connection went away), not a nack or recover.
    Return { offsets: &'a [u64], failed: bool },
    /// Deliveries put back that never reached a client (a consumer on another node was
    /// cancelled while they were on their way): back at their place, not counted as a
    /// return, so neither the redelivered flag nor the delivery limit sees them.
    Release { offsets: &'a [u64] },
    /// Deliveries rejected without requeue: dead-lettered when the queue has a DLX.
    Discard { offsets: &'a [u64] },
    /// Deliveries whose bodies could not be read back: they leave the queue.
    Lost { offsets: &'a [u64] },
    /// At-least-once dead letters that their target queues confirmed: they leave the queue.
    DeadLettered { offsets: &'a [u64] },
    /// At-least-once dead letters to route again (their targets did not take them): their
    /// `DeadLetter` effects once more.
    RetryDeadLetters { offsets: &'a [u64] },
    /// Bodies read back from disk (for `PageIn` and for deliveries without a body), by
    /// offset (the runtime reads them into this map; the engine takes it as it is).
    PagedIn {
        bodies: BTreeMap<u64, Option<Arc<Message>>>,
    },
    /// A `PageOut` could not be carried out: the body stays in memory.
    SpillFailed { offset: u64, message: Arc<Message> },
    /// Consumers' channels may take deliveries again.
    Dispatch,
    /// The queue was used (declared, basic.get): restart its `x-expires` period.
    Touch,
    /// Periodic: TTL, `x-expires`, consumer timeouts.
    Tick,
    /// Drop every ready message.
    Purge,
    /// The queue is deleted.
    Delete,
    /// A policy changed: the settings it can change take effect now (a lower length limit
    /// drops the oldest messages at once with drop-head, dead-lettered as `maxlen`).
    /// Messages already in the queue keep the expiry they got when they entered, as in
    /// RabbitMQ; `delivery_limit` is the engine's (`EngineConfig::delivery_limit`). Boxed:
    /// rare, and every command would otherwise carry its size.
    Reconfigure {
        settings: Box<PolicySettings>,
        delivery_limit: Option<u32>,
    },
    /// A replicated queue's consumer whose node the leader cannot reach (`suspected`), or
    /// can again: RabbitMQ's `suspected_down`. A suspected consumer keeps its subscription
    /// and gets nothing; what it had checked out goes back (flagged redelivered, not counted
    /// against the delivery limit: a partition is not a failed delivery); with single active
    /// consumer it stops being the active one and waits behind the others.
    Suspect {
        consumer: ConsumerId,
        suspected: bool,
    },
}

/// A message leaving the queue for a consumer (or basic.get).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// None for basic.get.
    pub consumer: Option<ConsumerId>,
    pub offset: u64,
    /// None: the body is on disk (in the paging store when `in_paging`, else the durable one).
    pub message: Option<Arc<Message>>,
    pub in_paging: bool,
    pub redelivered: bool,
    /// How often it was returned before (RabbitMQ's delivery counts).
    pub returns: Returns,
    pub ack_required: bool,
    pub enqueued_at: u32,
}

/// What the runtime carries out after a command, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Deliver(Delivered),
    /// Store a persistent message (with its expiry deadline, Unix ms).
    StoreAppend {
        offset: u64,
        message: Arc<Message>,
        deadline: Option<u64>,
    },
    /// A stored message left the queue for good.
    StoreAck {
        offset: u64,
    },
    /// A stored message was handed to a consumer (it comes back redelivered after a restart).
    StoreDelivered {
        offset: u64,
    },
    /// A stored message of a quorum queue came back to the queue, `returns` times in all:
    /// recorded so that its delivery count (and the delivery limit) carries on after a
    /// restart.
    StoreReturned {
        offset: u64,
        returns: Returns,
    },
    /// A stored message of a quorum queue is now a kept at-least-once dead letter: recorded
    /// so that after a restart it is one again (not a ready message).
    StoreDeadLetter {
        offset: u64,
        reason: DeathReason,
    },
    /// Write a body that is not in the durable store to the paging store.
    PageOut {
        offset: u64,
        message: Arc<Message>,
    },
    /// Read these bodies back (the head of a paged tail); answer with `PagedIn`.
    PageIn {
        stored: Vec<u64>,
        spilled: Vec<u64>,
    },
    /// A paging-store record is no longer needed.
    PagingRelease {
        offset: u64,
    },
    /// Every paging-store record of the queue is no longer needed.
    PagingDropAll,
    /// Republish to the dead-letter exchange (body on disk when `message` is None). With
    /// `kept` (at-least-once dead lettering) the queue keeps the message until the runtime
    /// reports, with `DeadLettered`, that its targets have it; else it is gone already.
    DeadLetter {
        offset: u64,
        message: Option<Arc<Message>>,
        in_paging: bool,
        reason: DeathReason,
        kept: bool,
    },
    ConsumerCancelled {
        consumer: ConsumerId,
        tag: ShortString,
        reason: CancelReason,
    },
    /// Credit mode with drain: credit given back unused.
    Drained {
        consumer: ConsumerId,
        credit: u32,
    },
    /// `x-expires` ran out: delete the queue.
    Expired,
}

/// What became of a message published to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Enqueued (or delivered, or dropped by its own TTL/length rules, or a duplicate): the
    /// publish succeeded.
    Accepted,
    /// Refused by `x-overflow` reject-publish(-dlx): the publisher gets a basic.nack.
    Rejected,
    /// The queue was deleted meanwhile.
    Gone,
}

/// The direct answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Done,
    Enqueued {
        result: Published,
        /// The offset the message got (None when it was not enqueued).
        offset: Option<u64>,
    },
    Got {
        delivery: Option<Delivered>,
        /// Ready messages left.
        remaining: u64,
    },
    Cancelled {
        existed: bool,
        /// An auto-delete queue just lost its last consumer: delete it.
        auto_delete_now: bool,
    },
    /// Ready messages dropped (purge, delete).
    Dropped(u64),
    /// `PagedIn`: messages at the head of a paged tail whose bodies could not be read back
    /// and were dropped.
    Lost(u64),
}

/// Why a consumer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue was deleted meanwhile (RabbitMQ's 404).
    Deleted,
    /// An exclusive consumer is in the way, or one is asked for where it cannot be (403).
    ExclusiveConsumer,
}

/// Whether a consumer's channel can take a delivery right now. The engine asks only when it
/// has a message for that consumer and the consumer's own credit allows it, and delivers
/// when the answer is yes (so an implementation may take channel-wide credit).
///
/// Classic queues answer from the channel (outbound buffer below its bound, `channel.flow`,
/// channel-wide prefetch). A replicated queue must give the same answer on every replica, so
/// it uses [`OpenGate`] and expresses flow control as `Credit` commands instead.
pub trait Gate {
    fn admit(&mut self, consumer: ConsumerId) -> bool;
}

/// A gate that always admits: flow control by engine credit only.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenGate;

impl Gate for OpenGate {
    fn admit(&mut self, _: ConsumerId) -> bool {
        true
    }
}

/// Time and local capabilities for one command.
pub struct Context<'a> {
    /// The broker clock (monotonic milliseconds).
    pub now: u64,
    /// Wall-clock milliseconds since the Unix epoch (stored expiry deadlines).
    pub unix_now: u64,
    /// A paging store can take bodies that are not in the durable store.
    pub can_spill: bool,
    /// The runtime reads paged-out bodies back ahead of need (`Effect::PageIn`). A replicated
    /// queue's follower does not: it delivers nothing, and asking would cost it a scan of
    /// its paged tail for every message taken.
    pub reads_back: bool,
    pub gate: &'a mut dyn Gate,
}

/// Monotonic counters for management (arrivals, deliveries, acks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub published: u64,
    pub delivered: u64,
    pub delivered_no_ack: u64,
    pub acked: u64,
}

/// Point-in-time figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u32,
    pub ready_bytes: u64,
    /// Bytes of ready bodies held in memory.
    pub memory_bytes: u64,
    /// Ready messages whose bodies are only on disk.
    pub paged_out: u64,
    /// At-least-once dead letters kept until their targets confirm them.
    pub dead_letters: u64,
    pub dead_letter_bytes: u64,
}

/// One queue's state. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEngine {
    config: EngineConfig,
    next_offset: u64,
    /// One level, or `max_priority + 1` for a priority queue (index = priority); two for a
    /// quorum queue (`EngineConfig::two_priorities`).
    levels: Vec<Level>,
    /// Two-level queues: heads taken since the last turn of the normal level (0 ..=
    /// `HIGH_PRIORITY_WEIGHT`), state like any other (snapshots carry it).
    dequeues: u8,
    ready_count: usize,
    ready_bytes: u64,
    /// Bytes of ready message bodies held in memory (paged-out ones excluded).
    mem_bytes: u64,
    /// Ready messages whose bodies are paged out.
    paged: usize,
    /// Bodies of paged entries that could not be written out (`SpillFailed`), kept so that the
    /// tail keeps its order. Rare, usually empty.
    held: BTreeMap<u64, Arc<Message>>,
    /// Exact expiry times of paged entries whose expiry is `PagedExpiry::Listed`.
    paged_deadlines: BTreeMap<u64, u64>,
    /// Delivered, unsettled messages by offset.
    checked_out: BTreeMap<u64, CheckedOut>,
    consumers: Vec<Consumer>,
    round_robin: usize,
    had_consumers: bool,
    deleted: bool,
    /// Last time the queue was used (declared, consumed from, basic.get), for `x-expires`.
    last_used: u64,
    /// A lower bound on the expiry time of every level's head (`NEVER`: nothing expires).
    next_expiry: u64,
    /// When a tick must look for timed-out deliveries (`NEVER`: none can be).
    next_timeout_check: u64,
    /// Highest sequence number seen per publisher (deduplication).
    publishers: BTreeMap<u64, u64>,
    /// At-least-once dead letters, kept (with their store records) until the runtime
    /// reports that their target queues confirmed them (`DeadLettered`).
    dead_letters: BTreeMap<u64, (state::Entry, DeathReason)>,
    dead_letter_bytes: u64,
    counters: EngineCounters,
    /// Measured time in queue of completed messages; allocated on the first one.
    waits: Option<Box<WaitWindow>>,
    /// Levels whose tail front was asked for (`PageIn`) in this runtime step: one request
    /// per step is enough, the runtime answers it before the next command.
    page_in_asked: Vec<usize>,
}

impl QueueEngine {
    pub fn new(config: EngineConfig, now: u64) -> Self {
        let levels = config.level_count();
        QueueEngine {
            levels: (0..levels).map(|_| Level::default()).collect(),
            dequeues: 0,
            config,
            next_offset: 0,
            ready_count: 0,
            ready_bytes: 0,
            mem_bytes: 0,
            paged: 0,
            held: BTreeMap::new(),
            paged_deadlines: BTreeMap::new(),
            checked_out: BTreeMap::new(),
            consumers: Vec::new(),
            round_robin: 0,
            had_consumers: false,
            deleted: false,
            last_used: now,
            next_expiry: NEVER,
            next_timeout_check: NEVER,
            publishers: BTreeMap::new(),
            dead_letters: BTreeMap::new(),
            dead_letter_bytes: 0,
            counters: EngineCounters::default(),
            waits: None,
            page_in_asked: Vec::new(),
        }
    }

    /// Applies one command. Effects are appended to `out` (the runtime reuses the buffer).
    /// Only `Checkout` can fail (RabbitMQ's refusals of exclusive consumers, a deleted queue).
    pub fn apply(
        &mut self,
        command: Command<'_>,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Result<Reply, Refusal> {
        if !matches!(command, Command::PagedIn { .. }) {
            self.page_in_asked.clear();
        }
        let reply = match command {
            Command::Enqueue {
                message,
                publisher,
                store,
            } => self.enqueue(message, publisher, store, cx, out),
            Command::PublisherDown { publisher } => {
                self.publishers.remove(&publisher);
                Reply::Done
            }
            Command::Recover {
                messages,
                next_offset,
            } => self.recover(messages, next_offset, cx),
            Command::Checkout { consumer, settings } => {
                return self.checkout(consumer, settings, cx, out)
            }
            Command::Cancel { consumer } => self.cancel(consumer, cx, out),
            Command::Credit {
                consumer,
                credit,
                drain,
            } => self.credit(consumer, credit, drain, cx, out),
            Command::Get { ack_required } => self.get(ack_required, cx, out),
            Command::Settle { offsets } => self.settle(offsets, cx, out),
            Command::Return { offsets, failed } => {
                self.return_messages(offsets, Some(failed), cx, out)
            }
            Command::Release { offsets } => self.return_messages(offsets, None, cx, out),
            Command::Discard { offsets } => self.discard(offsets, cx, out),
            Command::Lost { offsets } => self.lost(offsets, cx, out),
            Command::DeadLettered { offsets } => self.dead_lettered(offsets, out),
            Command::RetryDeadLetters { offsets } => {
                for o in offsets {
                    if let Some((e, reason)) = self.dead_letters.get(o) {
                        out.push(Effect::DeadLetter {
                            offset: *o,
                            message: e.message.clone(),
                            in_paging: e.in_paging(),
                            reason: *reason,
                            kept: true,
                        });
                    }
                }
                Reply::Done
            }
            Command::PagedIn { bodies } => self.paged_in(bodies, cx, out),
            Command::SpillFailed { offset, message } => self.spill_failed(offset, message),
            Command::Dispatch => {
                self.dispatch(cx, out);
                Reply::Done
            }
            Command::Touch => {
                self.last_used = cx.now;
                Reply::Done
            }
            Command::Tick => self.tick(cx, out),
            Command::Purge => self.purge(out),
            Command::Delete => self.delete(out),
            Command::Reconfigure {
                settings,
                delivery_limit,
            } => self.reconfigure(*settings, delivery_limit, cx, out),
            Command::Suspect {
                consumer,
                suspected,
            } => self.suspect(consumer, suspected, cx, out),
        };
        Ok(reply)
    }

    // ---- read-only views ----

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The queue has a durable store from now on (set before it is shared).
    pub fn set_stores_persistent(&mut self, stored: bool) {
        self.config.stores_persistent = stored;
    }

    /// A replicated queue numbers its messages by their place in its log, so that a body
    /// kept only there is found again: the next enqueue takes offset `to` if that is ahead.
    /// Called the same way on every member (before each enqueue), it keeps them identical.
    pub fn advance_offset(&mut self, to: u64) {
        self.next_offset = self.next_offset.max(to);
    }

    /// The lowest offset of a message still in the queue whose body is not in memory (ready,
    /// paged out, returned or checked out): a replicated queue's log keeps its bodies from
    /// there on. A scan of what is in memory: for a periodic task, not for every command.
    pub fn oldest_on_disk(&self) -> Option<u64> {
        let bodiless = |e: &state::Entry| e.message.is_none().then_some(e.offset);
        let mut oldest: Option<u64> = None;
        let mut see = |o: Option<u64>| {
            if let Some(o) = o {
                oldest = Some(oldest.map_or(o, |m| m.min(o)));
            }
        };
        for l in &self.levels {
            see(l.ready.iter().find_map(bodiless));
            see(l.requeued.values().find_map(|r| bodiless(&r.entry)));
            // The tail is in offset order: its first entry not held in memory.
            see(l
                .paged
                .iter()
                .find(|p| !self.held.contains_key(&p.offset))
                .map(|p| p.offset));
        }
        see(self.checked_out.values().find_map(|c| bodiless(&c.entry)));
        see(self.dead_letters.values().find_map(|(e, _)| bodiless(e)));
        oldest
    }

    /// The at-least-once dead letters not confirmed yet, oldest first (body on disk when
    /// `None`): a new leader, or a retry, routes them again.
    pub fn dead_letters_kept(
        &self,
    ) -> impl Iterator<Item = (u64, Option<&Arc<Message>>, bool, DeathReason)> + '_ {
        self.dead_letters
            .iter()
            .map(|(o, (e, r))| (*o, e.message.as_ref(), e.in_paging(), *r))
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            ready: self.ready_count as u64,
            unacked: self.checked_out.len() as u64,
            // As RabbitMQ counts them: suspected consumers (out of reach) are not.
            consumers: u32::try_from(self.consumers.iter().filter(|c| !c.suspected).count())
                .unwrap_or(u32::MAX),
            ready_bytes: self.ready_bytes,
            memory_bytes: self.mem_bytes,
            paged_out: self.paged as u64,
            dead_letters: self.dead_letters.len() as u64,
            dead_letter_bytes: self.dead_letter_bytes,
        }
    }

    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// A lower bound on when a message at a head expires (`NEVER`: none can).
    pub fn next_expiry(&self) -> u64 {
        self.next_expiry
    }

    /// When `x-expires` deletes the queue if it stays unused (`NEVER`: not now).
    pub fn idle_deadline(&self) -> u64 {
        match self.config.queue.expires {
            Some(e) if self.consumers.is_empty() && !self.deleted => {
                self.last_used.saturating_add(e)
            }
            _ => NEVER,
        }
    }

    /// When a tick has something to look at (`NEVER`: nothing).
    pub fn next_tick(&self) -> u64 {
        self.next_expiry
            .saturating_add(1)
            .min(self.idle_deadline())
            .min(self.next_timeout_check)
    }

    /// Consumers in subscription order: (id, settings, active). With single active consumer
    /// only the first one not suspected is active; a suspected consumer is never active.
    pub fn consumers(&self) -> impl Iterator<Item = (ConsumerId, &ConsumerSettings, bool)> {
        let sac = self.config.queue.single_active_consumer;
        let first = self.consumers.iter().position(|c| !c.suspected);
        self.consumers.iter().enumerate().map(move |(i, c)| {
            let active = !c.suspected && (!sac || Some(i) == first);
            (c.id, &c.settings, active)
        })
    }

    /// The consumers marked suspected (`Command::Suspect`), in subscription order.
    pub fn suspected_consumers(&self) -> impl Iterator<Item = ConsumerId> + '_ {
        self.consumers.iter().filter(|c| c.suspected).map(|c| c.id)
    }

    /// The consumer a delivery at `offset` went to, if it is still checked out.
    pub fn checked_out_to(&self, offset: u64) -> Option<Option<ConsumerId>> {
        self.checked_out.get(&offset).map(|c| c.consumer)
    }

    /// Every offset handed out and not settled yet, in offset order (a quorum queue's new
    /// leader returns them: it cannot know which of them reached their consumers).
    pub fn checked_out_offsets(&self) -> Vec<u64> {
        self.checked_out.keys().copied().collect()
    }

    /// Measured time in queue: the ring of histograms, if any message completed.
    pub fn waits(&self) -> Option<&WaitWindow> {
        self.waits.as_deref()
    }

    /// Drops the time-in-queue ring once nothing completed for a whole window.
    pub fn release_stale_waits(&mut self, now: u64) {
        if self.waits.as_deref().is_some_and(|w| w.is_stale(now)) {
            self.waits = None;
        }
    }

    /// Slots the ready deques hold (capacity, not length).
    #[cfg(test)]
    pub(crate) fn ready_capacity(&self) -> usize {
        self.levels
            .iter()
            .map(|l| l.ready.capacity() + l.paged.capacity())
            .sum()
    }

    // ---- helpers shared by the concerns ----

    /// Whether a message entering now is stored in the durable store.
    fn is_stored(&self, message: &Message) -> bool {
        self.config.stores_persistent && (self.config.stores_transient || message.is_persistent())
    }

    fn level_of(&self, message: &Message) -> usize {
        let priority = message.properties.priority.unwrap_or(0);
        if self.config.two_priorities {
            return usize::from(priority > QUORUM_NORMAL_PRIORITY_MAX);
        }
        match self.config.queue.max_priority {
            None => 0,
            Some(max) => usize::from(priority.min(max)),
        }
    }

    fn highest_level(&self) -> Option<usize> {
        self.levels.iter().rposition(|l| !l.is_empty())
    }

    /// The level whose head goes next, counting the turn for a two-level queue. Returned
    /// messages go first (RabbitMQ's quorum queues keep them apart, ahead of both levels).
    /// Otherwise high goes first, but every third turn the normal head goes if it is older
    /// than the high one (RabbitMQ 4's `rabbit_fifo_q`: 2:1 while both have messages).
    fn next_level(&mut self) -> Option<usize> {
        if !self.config.two_priorities {
            return self.highest_level();
        }
        let returned = |l: &Level| l.requeued.first_key_value().map(|(o, _)| *o);
        match (
            self.levels.first().and_then(returned),
            self.levels.get(1).and_then(returned),
        ) {
            (Some(n), Some(h)) => return Some(usize::from(h < n)),
            (Some(_), None) => return Some(0),
            (None, Some(_)) => return Some(1),
            (None, None) => {}
        }
        let head = |l: Option<&Level>| l.and_then(|l| l.head()).map(|h| h.offset());
        let (normal, high) = (head(self.levels.first()), head(self.levels.get(1)));
        let turn = self.dequeues;
        let level = match (normal, high) {
            (None, None) => return None,
            (Some(n), Some(h)) if turn == HIGH_PRIORITY_WEIGHT => usize::from(h < n),
            (_, Some(_)) => 1,
            (Some(_), None) => 0,
        };
        self.dequeues = if turn >= HIGH_PRIORITY_WEIGHT {
            0
        } else {
            turn + 1
        };
        Some(level)
    }

    fn lower_next_expiry(&mut self, at: u64) {
        if at != NEVER {
            self.next_expiry = self.next_expiry.min(at);
        }
    }

    /// A message stamped `enqueued_at` was completed (acked, or delivered without ack).
    fn completed(&mut self, now: u64, enqueued_at: u32) {
        self.waits
            .get_or_insert_with(Box::default)
            .record(now, crate::waits::waited_ms(now, enqueued_at));
    }

    /// Whether new arrivals join a paged tail (their bodies are paged out).
    pub fn has_paged_tail(&self) -> bool {
        self.levels.iter().any(|l| !l.paged.is_empty())
    }

    /// Whether the ready messages with bodies in memory cost more than the memory budget
    /// (bodies plus [`MESSAGE_OVERHEAD`] each).
    pub(super) fn over_budget(&self) -> bool {
        let in_memory = self.ready_count.saturating_sub(self.paged) as u64;
        self.mem_bytes
            .saturating_add(in_memory.saturating_mul(MESSAGE_OVERHEAD))
            > self.config.memory_budget
    }

    /// An in-memory entry (or one whose body is on disk) is gone from the ready set.
    fn took(&mut self, entry: &state::Entry) {
        self.ready_count = self.ready_count.saturating_sub(1);
        self.ready_bytes = self.ready_bytes.saturating_sub(entry.size());
        if entry.message.is_some() {
            self.mem_bytes = self.mem_bytes.saturating_sub(entry.size());
        } else {
            self.paged = self.paged.saturating_sub(1);
        }
    }

    fn added(&mut self, entry: &state::Entry) {
        self.ready_count += 1;
        self.ready_bytes += entry.size();
        if entry.message.is_some() {
            self.mem_bytes += entry.size();
        } else {
            self.paged += 1;
        }
    }

    /// Where an entry leaving the queue for good (not read back, not delivered) has a record
    /// to release: the durable store, the paging store, or none.
    fn release_entry(&self, e: &state::Entry, out: &mut Vec<Effect>) {
        match &e.message {
            Some(m) => {
                if self.is_stored(m) {
                    out.push(Effect::StoreAck { offset: e.offset });
                }
            }
            None if e.in_paging() => out.push(Effect::PagingRelease { offset: e.offset }),
            None => out.push(Effect::StoreAck { offset: e.offset }),
        }
    }

    /// At-least-once dead lettering is in force: asked for, with `x-overflow`
    /// reject-publish and a dead-letter exchange (else RabbitMQ falls back to at-most-once).
    pub(super) fn at_least_once(&self) -> bool {
        let q = &self.config.queue;
        q.dead_letter_exchange.is_some()
            && q.overflow == crate::args::Overflow::RejectPublish
            && q.dead_letter_strategy.as_deref() == Some("at-least-once")
    }

    /// A message leaves the queue for good (expired, rejected, over a limit): dead-lettered
    /// when the queue has a dead-letter exchange. At most once, it goes now; at least once,
    /// the queue keeps it, and its store record, until `DeadLettered`.
    fn dead_letter(&mut self, out: &mut Vec<Effect>, e: state::Entry, reason: DeathReason) {
        let message = e.message.clone();
        self.dead_letter_carrying(out, e, message, reason);
    }

    /// `dead_letter`, the effect carrying `message` (a body the caller has in hand while the
    /// entry's is on disk).
    fn dead_letter_carrying(
        &mut self,
        out: &mut Vec<Effect>,
        e: state::Entry,
        message: Option<Arc<Message>>,
        reason: DeathReason,
    ) {
        if self.config.queue.dead_letter_exchange.is_none() {
            self.release_entry(&e, out);
            return;
        }
        let kept = self.at_least_once();
        if kept && self.config.stores_persistent && self.entry_stored(&e) {
            out.push(Effect::StoreDeadLetter {
                offset: e.offset,
                reason,
            });
        }
        out.push(Effect::DeadLetter {
            offset: e.offset,
            // Where the entry's body is on disk (read only when the effect carries none).
            in_paging: e.in_paging(),
            message,
            reason,
            kept,
        });
        if kept {
            self.dead_letter_bytes += e.size();
            self.dead_letters.insert(e.offset, (e, reason));
        } else {
            self.release_entry(&e, out);
        }
    }

    /// At-least-once dead letters their targets confirmed leave the queue.
    fn dead_lettered(&mut self, offsets: &[u64], out: &mut Vec<Effect>) -> Reply {
        for o in offsets {
            if let Some((e, _)) = self.dead_letters.remove(o) {
                self.dead_letter_bytes = self.dead_letter_bytes.saturating_sub(e.size());
                self.release_entry(&e, out);
            }
        }
        Reply::Done
    }
}
