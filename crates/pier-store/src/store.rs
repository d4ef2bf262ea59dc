//! The [`MessageStore`] trait every backend implements, and the types of its API.
//!
//! Two watermarks, two signals (openraft's `IOFlushed` idea):
//!
//! * **readable**: `append` returns at once with a [`Seq`]; the message can be read back from
//!   that moment on (from the write buffer until it is flushed).
//! * **durable**: [`MessageStore::commit`] (or `sync`) writes the buffered records out and
//!   fdatasyncs them, then reports the highest durable [`Seq`]. Publisher confirms fire on this
//!   one, never on the first.
//!
//! The trait is synchronous and takes `&mut self`: a backend is owned by one thread, which is
//! what [`crate::StoreThread`] provides (a dedicated thread with a bounded command channel and
//! group commit), so async code never blocks on the disk.

use std::time::{Duration, Instant};

use crate::commit::{SyncJob, SyncPlan};
use crate::error::StoreError;
use crate::message::{EncodedMessage, StoredMessage};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A queue of a store, as handed out by [`MessageStore::open_queue`]. It is a handle valid for
/// the life of the store object (after a reopen, call `open_queue` or `queues` again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u32);

/// Store-wide append sequence number: every append gets the next one. Watermarks are
/// expressed in it: every append with `seq <= durable_seq()` is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// One destination of an append: the queue and the offset the broker gave the message there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRef {
    pub queue: QueueId,
    pub offset: u64,
}

/// How often a message came back to its queue: every counted return (RabbitMQ's
/// `acquired_count`, which 4.2 shows as `x-delivery-count` and limits), and the failed
/// deliveries among them (rejected with requeue, or the consumer's channel went away:
/// RabbitMQ 4.3's `delivery_count`, which 4.3 shows and limits). The queue engine keeps it
/// per message; the store records it so that it carries on after a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Returns {
    pub count: u32,
    pub failed: u32,
}

impl Returns {
    /// One more return, failed or not.
    pub fn plus_one(self, failed: bool) -> Returns {
        Returns {
            count: self.count.saturating_add(1),
            failed: self.failed.saturating_add(u32::from(failed)),
        }
    }
}

/// A message still held for a queue, as listed after recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveMessage {
    pub offset: u64,
    /// It was (or may have been) handed to a consumer before the restart: deliver it with
    /// `redelivered = true`.
    pub redelivered: bool,
    /// How often it came back to its queue, as last recorded with
    /// [`MessageStore::mark_returned`] (a quorum queue's delivery counts).
    pub returns: Returns,
    /// It is a kept dead letter, with the reason code given to
    /// [`MessageStore::mark_dead_letter`].
    pub dead_letter: Option<u8>,
}

/// A queue known to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub id: QueueId,
    pub name: String,
    /// Live messages.
    pub messages: u64,
    /// The first offset the broker may use for the next message of this queue (above every
    /// offset the store has seen or marked delivered, so offsets are never reused).
    pub next_offset: u64,
}

/// When appends become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Group commit: every commit fdatasyncs; confirms wait for it. The default, and the only
    /// policy that keeps the promise "confirmed means on disk".
    #[default]
    Always,
    /// fdatasync at most this often; confirms wait for the next sync (bounded latency, fewer
    /// syncs under light load).
    Interval(Duration),
    /// Never fsync: data is written to the OS page cache and confirmed; the OS decides when it
    /// reaches the disk. A machine crash can lose confirmed messages; a broker crash cannot.
    Never,
}

/// Point-in-time figures for management and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub queues: u64,
    pub live_messages: u64,
    /// Segment files on disk (including the active one).
    pub segments: u64,
    /// Bytes of segment and ack files on disk.
    pub disk_bytes: u64,
    /// Heap bytes of the per-message index.
    pub index_bytes: u64,
    pub last_seq: Seq,
    pub flushed_seq: Seq,
    pub durable_seq: Seq,
    /// fdatasyncs of data files so far (appends / syncs = the group-commit batch size).
    pub syncs: u64,
}

/// A message store backend. See the module docs for the durability contract.
///
/// Errors: a validation error (unknown queue, offset not increasing, too large) concerns only
/// the call; an error for which [`StoreError::loses_unflushed`] is true means every append
/// with a seq above [`MessageStore::flushed_seq`] was discarded (nack those publishers).
pub trait MessageStore: Send {
    /// The queue named `name`, registered durably if new. Idempotent.
    fn open_queue(&mut self, name: &str) -> Result<QueueId>;

    /// [`MessageStore::open_queue`] for several names; a store may register the new ones in
    /// one durable write (a cluster node applies many declarations in one batch).
    fn open_queues(&mut self, names: &[String]) -> Result<Vec<QueueId>> {
        names.iter().map(|n| self.open_queue(n)).collect()
    }

    /// Every queue the store knows, with its live count (after a reopen: what was recovered).
    fn queues(&self) -> Vec<QueueInfo>;

    /// The live messages of a queue in offset order (FIFO order survives restarts).
    fn live_messages(&self, queue: QueueId) -> Result<Vec<LiveMessage>>;

    /// Stores one message for one or more queues (fan-out stores the body once). Each offset
    /// must be above the queue's previous one. Returns at once: readable, not yet durable.
    fn append(&mut self, refs: &[QueueRef], message: &StoredMessage) -> Result<Seq>;

    /// `append` of a message the caller encoded already (on the publishing thread, see
    /// [`EncodedMessage`]), so that the thread owning the store only copies bytes. Backends
    /// that keep messages in another form use the message inside (the default).
    fn append_encoded(&mut self, refs: &[QueueRef], message: &EncodedMessage) -> Result<Seq> {
        self.append(refs, message.message())
    }

    /// Reads a live message back.
    fn read(&mut self, queue: QueueId, offset: u64) -> Result<StoredMessage>;

    /// Acknowledges (removes) messages of a queue; unknown or already-acked offsets are
    /// ignored. Returns how many were live. Acks are flushed with the next commit but synced
    /// lazily: after a crash a recently acked message may come back (at-least-once), never a
    /// message acked before a clean close.
    fn ack(&mut self, queue: QueueId, offsets: &[u64]) -> Result<usize>;

    /// Records that messages up to `offset` were handed to a consumer, so that after a restart
    /// the unacked ones come back with `redelivered = true`. Advisory, written lazily.
    fn mark_delivered(&mut self, queue: QueueId, offset: u64) -> Result<()>;

    /// Records that the live message at `offset` came back to its queue as often as
    /// `returns` says, so that a quorum queue's delivery count (and its delivery limit) carries on after
    /// a restart. Advisory, written lazily like the delivered marks; forgotten when the
    /// message is acked; ignored for an offset that is not live.
    fn mark_returned(&mut self, queue: QueueId, offset: u64, returns: Returns) -> Result<()>;

    /// Records that the live message at `offset` left its queue as an at-least-once dead
    /// letter (`reason`: the caller's code) and is kept until its targets confirm it, then
    /// acked; after a restart it comes back as one. Advisory and lazy like `mark_returned`.
    fn mark_dead_letter(&mut self, queue: QueueId, offset: u64, reason: u8) -> Result<()>;

    /// Drops every live message of the queue (including ones delivered and unacked: purge
    /// with unacked deliveries outstanding should `ack` the ready offsets instead). Durable
    /// when it returns. Returns how many were dropped.
    fn purge_queue(&mut self, queue: QueueId) -> Result<u64>;

    /// Forgets the queue and its messages. Durable when it returns.
    fn delete_queue(&mut self, queue: QueueId) -> Result<u64>;

    /// Writes buffered records out to the OS (readable by any other reader of the files).
    /// Returns the flushed watermark.
    fn flush(&mut self) -> Result<Seq>;

    /// Flushes and fdatasyncs. Returns the durable watermark.
    fn sync(&mut self) -> Result<Seq>;

    /// Applies the sync policy: flush, and sync when the policy says so. Returns the durable
    /// watermark. The group-commit step: call it once per batch of appends.
    fn commit(&mut self) -> Result<Seq>;

    /// Pipelined group commit, first half: writes buffered records out like `commit`, but
    /// instead of fdatasyncing, returns what must be synced (a [`SyncJob`]) and the watermark
    /// that will then be durable, so that another thread can sync while this one goes on.
    /// The default commits synchronously (nothing left to sync).
    fn prepare_commit(&mut self) -> Result<SyncPlan> {
        self.commit().map(|durable| SyncPlan { durable, job: None })
    }

    /// Pipelined group commit, second half: a job from `prepare_commit` ran with `result`.
    /// Jobs are reported in the order they were handed out. A failed job is a failed
    /// fdatasync: the backend must refuse writes from then on and count nothing above its
    /// durable watermark as flushed (see [`StoreError::Poisoned`]).
    fn synced(&mut self, job: &SyncJob, result: &Result<()>) {
        let _ = (job, result);
    }

    /// When a commit is due even without new work (`SyncPolicy::Interval`, lazy ack syncs).
    fn next_deadline(&self) -> Option<Instant>;

    fn last_seq(&self) -> Seq;
    fn flushed_seq(&self) -> Seq;
    fn durable_seq(&self) -> Seq;

    fn stats(&self) -> StoreStats;

    /// Flushes and syncs everything (acks and delivery marks included). A store dropped
    /// without `close` behaves like a crash: unflushed appends are lost.
    fn close(&mut self) -> Result<()>;
}
