//! A queue: an ordered log of message references plus the consumers that drain it.
//!
//! ```text
//!  publish ─► level[p] [ requeued (by offset) | ready (FIFO) | paged (FIFO) ] ─► dispatch ─► sinks
//!                      ▲                                                 │
//!                      └──────── nack/reject/recover/close ◄─────────────┘ (unacked: held by channels)
//! ```
//!
//! Every message gets a monotonically increasing offset when it enters the queue. Messages
//! handed out but not yet acknowledged are tracked by the channel that received them, not here;
//! when they come back they are re-inserted at their original offset, so FIFO order survives
//! requeueing. The offset is also what a persistent store keys its records by.
//!
//! A priority queue (`x-max-priority`) has one such level per priority and always serves the
//! highest non-empty one; a plain queue has a single level.
//!
//! Expiry (message TTL) is checked at the head of each level, as RabbitMQ does: an expired
//! message is never delivered, and [`Queue::tick`] removes expired heads even when nobody
//! consumes. `next_expiry` is a lower bound on every head's expiry time, so a tick on a queue
//! where nothing can have expired is one atomic load.
//!
//! Paging: past `PAGE_OUT_BYTES` of ready bodies in memory, a new message keeps only its
//! place, as a 16-byte [`PagedEntry`] in its level's `paged` tail; its body is in the durable
//! store if it is stored, else in the scratch paging store (`PagedEntry::paging`). Every paged
//! entry of a level is newer than every in-memory one, so once a tail exists new arrivals join
//! it, and `page_in` moves batches from its front into `ready` as the head drains; a paging
//! record is released as soon as it is read back or its message leaves.
//!
//! Dead letters (rejected, expired, over-length messages of a queue with a dead-letter
//! exchange) are collected while the lock is held and routed by the vhost after it is
//! released: a queue never publishes into another queue under its own lock.
//!
//! All state sits behind one `std::sync::Mutex`, never held across an `.await` (the broker has
//! no async code), and dispatch runs inline on whichever thread published or acked.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use pier_store::StoreHandle;
use pier_wire::{FieldTable, ShortString};

use crate::args::{parse_expiration, Overflow, QueueConfig};
use crate::clock::{Clock, NEVER};
use crate::consumer::{
    next_consumer_id, ConnectionId, ConsumerId, ConsumerSpec, Delivery, Settled,
};
use crate::deadletter::{DeadLetter, DeathReason};
use crate::error::{BrokerError, Result};
use crate::message::Message;
use crate::persist::{to_stored, to_stored_expiring, PublishDurability, QueueStore};
use crate::vhost::VHost;
use crate::waits::{stamp, WaitHistogram, WaitSummary, WaitWindow};

/// One queued message. Kept to 32 bytes: a queue's in-memory cost per message is this plus
/// the store's index entry, and long queues hold millions of them.
#[derive(Debug, Clone)]
struct Entry {
    offset: u64,
    /// Always `Some` for entries in a level (paged-out messages are `PagedEntry`s instead).
    message: Option<Arc<Message>>,
    /// Clock milliseconds after which the message is expired; `NEVER` without a TTL.
    expires_at: u64,
    /// Body size in the low 30 bits, saturated; the top bit is the redelivered flag.
    size_flags: u32,
    /// When the message entered the queue (`waits::stamp`), for measured time in queue.
    enqueued_at: u32,
}

const REDELIVERED_BIT: u32 = 1 << 31;
const SIZE_MASK: u32 = (1 << 30) - 1;

impl Entry {
    fn new(
        offset: u64,
        message: Arc<Message>,
        redelivered: bool,
        expires_at: u64,
        enqueued_at: u32,
    ) -> Self {
        // Bodies are capped by max_message_size far below 1 GiB; saturate rather than wrap.
        let size = u32::try_from(message.body_size())
            .unwrap_or(u32::MAX)
            .min(SIZE_MASK);
        Entry {
            offset,
            message: Some(message),
            expires_at,
            size_flags: size | if redelivered { REDELIVERED_BIT } else { 0 },
            enqueued_at,
        }
    }

    fn size(&self) -> u64 {
        u64::from(self.size_flags & SIZE_MASK)
    }

    fn redelivered(&self) -> bool {
        self.size_flags & REDELIVERED_BIT != 0
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at < now
    }
}

/// A ready message whose body is not in memory: only its place. 16 bytes, because a long
/// backlog is millions of these (the store's index entry is the rest of the per-message cost).
/// No expiry time is kept: it is recomputed from `enqueued_at` (queue TTL) or read back with
/// the body (per-message TTL, stored deadline); see `PagedExpiry`.
#[derive(Debug, Clone, Copy)]
struct PagedEntry {
    offset: u64,
    /// Body size in the low 28 bits (saturated), then the expiry kind (2 bits), paging and
    /// redelivered flags.
    bits: u32,
    /// When the message entered the queue (`waits::stamp`).
    enqueued_at: u32,
}

const P_REDELIVERED: u32 = 1 << 31;
/// In the node's scratch paging store (not the durable one): that record is released when the
/// body is read back or the message leaves the queue.
const P_PAGING: u32 = 1 << 30;
const P_EXPIRY_SHIFT: u32 = 28;
const P_SIZE_MASK: u32 = (1 << P_EXPIRY_SHIFT) - 1;

/// What a paged entry's expiry time is, without its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PagedExpiry {
    Never = 0,
    /// Exactly `enqueued + config.message_ttl`.
    QueueTtl = 1,
    /// Only the body knows (per-message TTL, or a deadline stored before a restart); at least
    /// `enqueued`.
    Other = 2,
}

impl PagedEntry {
    fn new(
        offset: u64,
        size: u64,
        redelivered: bool,
        paging: bool,
        expiry: PagedExpiry,
        enqueued_at: u32,
    ) -> Self {
        let size = u32::try_from(size).unwrap_or(u32::MAX).min(P_SIZE_MASK);
        let mut bits = size | ((expiry as u32) << P_EXPIRY_SHIFT);
        if redelivered {
            bits |= P_REDELIVERED;
        }
        if paging {
            bits |= P_PAGING;
        }
        PagedEntry {
            offset,
            bits,
            enqueued_at,
        }
    }

    fn size(&self) -> u64 {
        u64::from(self.bits & P_SIZE_MASK)
    }

    fn paging(&self) -> bool {
        self.bits & P_PAGING != 0
    }

    fn redelivered(&self) -> bool {
        self.bits & P_REDELIVERED != 0
    }

    fn expiry(&self) -> PagedExpiry {
        match (self.bits >> P_EXPIRY_SHIFT) & 3 {
            0 => PagedExpiry::Never,
            1 => PagedExpiry::QueueTtl,
            _ => PagedExpiry::Other,
        }
    }
}

/// The clock time a message stamped `stamp` entered the queue (exact for waits under ~49 days,
/// the range of a `u32` of milliseconds).
fn enqueued_ms(now: u64, stamp: u32) -> u64 {
    now.saturating_sub(crate::waits::waited_ms(now, stamp))
}

/// Bodies a queue keeps in memory; beyond it, newer messages are kept only on disk (the
/// durable store for stored messages, the paging store for the rest) and read back in batches
/// as the head of the queue drains.
pub const PAGE_OUT_BYTES: u64 = 8 * 1024 * 1024;
/// After the paging store refused to register a queue, how long before it is asked again.
const PAGING_RETRY_MS: u64 = 5_000;
/// Paging-store queue names must be unique for the process (a queue name can be reused).
static PAGING_QUEUE_SEQ: AtomicU64 = AtomicU64::new(0);
/// How many paged-out messages one read-back fetches at most (and how many bytes).
const PAGE_IN_BATCH: usize = 4096;
const PAGE_IN_BYTES: u64 = 4 * 1024 * 1024;

/// One priority level: requeued messages by offset (always older than every ready one, so they
/// come first), never-delivered ones with their bodies in arrival order, then never-delivered
/// ones whose bodies are paged out (always newer than every `ready` one).
#[derive(Debug, Default)]
struct Level {
    ready: VecDeque<Entry>,
    requeued: BTreeMap<u64, Entry>,
    paged: VecDeque<PagedEntry>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.requeued.is_empty() && self.paged.is_empty()
    }

    /// Only the paged-out tail is left: the head must be read back before it can leave.
    fn needs_page_in(&self) -> bool {
        self.ready.is_empty() && self.requeued.is_empty() && !self.paged.is_empty()
    }

    /// The in-memory head (None when empty or when only the paged tail is left).
    fn head(&self) -> Option<&Entry> {
        match self.requeued.first_key_value() {
            Some((_, e)) => Some(e),
            None => self.ready.front(),
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        match self.requeued.pop_first() {
            Some((_, e)) => Some(e),
            None => {
                let e = self.ready.pop_front();
                release_drained(&mut self.ready);
                e
            }
        }
    }

    fn pop_paged(&mut self) -> Option<PagedEntry> {
        let p = self.paged.pop_front();
        release_drained(&mut self.paged);
        p
    }
}

/// A deque never gives memory back by itself: a queue that once held 10 million messages would
/// keep their 400 MB after draining. Shrinking to twice the length once it falls below a
/// quarter of the capacity costs O(1) amortised per pop.
fn release_drained<T>(d: &mut VecDeque<T>) {
    const KEEP: usize = 1024;
    if d.capacity() > KEEP && d.len() < d.capacity() / 4 {
        d.shrink_to((d.len() * 2).max(KEEP));
    }
}

#[derive(Debug)]
struct ConsumerSlot {
    id: ConsumerId,
    spec: ConsumerSpec,
    unacked: u32,
    /// The sink said it was full and will call `dispatch` when it drains.
    waiting_for_sink: bool,
}

impl ConsumerSlot {
    fn under_prefetch(&self) -> bool {
        !self.spec.ack_required || self.spec.prefetch == 0 || self.unacked < self.spec.prefetch
    }
}

#[derive(Debug, Default)]
pub(crate) struct QueueState {
    next_offset: u64,
    /// One level, or `max_priority + 1` for a priority queue (index = priority).
    levels: Vec<Level>,
    ready_count: usize,
    ready_bytes: u64,
    /// Bytes of ready message bodies held in memory (paged-out ones excluded).
    mem_bytes: u64,
    /// Ready messages whose bodies are paged out.
    paged: usize,
    /// Bodies of paged entries that could not be written out (no paging store, or it refused
    /// the queue): kept here so that the tail keeps its order. Rare, usually empty.
    held: HashMap<u64, Arc<Message>>,
    unacked: u64,
    /// Expiry times of delivered, unacknowledged messages that have one (by offset), so that a
    /// requeued message keeps its original expiry, as in RabbitMQ.
    unacked_expiry: HashMap<u64, u64>,
    /// Delivered, unacknowledged messages that are in the store (acked there on settle).
    unacked_stored: HashSet<u64>,
    consumers: Vec<ConsumerSlot>,
    round_robin: usize,
    had_consumers: bool,
    deleted: bool,
    /// Last time the queue was used (declared, consumed from, basic.get), for `x-expires`.
    last_used: u64,
    /// This queue's place in the paging store, registered on its first page-out.
    paging_id: Option<pier_store::QueueId>,
    /// Clock time before which a failed paging registration is not retried.
    paging_retry_at: u64,
    /// Measured time in queue of completed messages; allocated on the first one.
    waits: Option<Box<WaitWindow>>,
}

impl QueueState {
    fn ready_len(&self) -> usize {
        self.ready_count
    }

    /// A message stamped `enqueued_at` was completed (acked, or delivered without ack).
    fn completed(&mut self, now: u64, enqueued_at: u32) {
        self.waits
            .get_or_insert_with(Box::default)
            .record(now, crate::waits::waited_ms(now, enqueued_at));
    }

    fn highest_level(&self) -> Option<usize> {
        self.levels.iter().rposition(|l| !l.is_empty())
    }

    fn level_mut(&mut self, level: usize) -> Option<&mut Level> {
        self.levels.get_mut(level)
    }

    fn took(&mut self, entry: &Entry) {
        self.ready_count = self.ready_count.saturating_sub(1);
        self.ready_bytes = self.ready_bytes.saturating_sub(entry.size());
        if entry.message.is_some() {
            self.mem_bytes = self.mem_bytes.saturating_sub(entry.size());
        } else {
            self.paged = self.paged.saturating_sub(1);
        }
    }

    fn added(&mut self, entry: &Entry) {
        self.ready_count += 1;
        self.ready_bytes += entry.size();
        if entry.message.is_some() {
            self.mem_bytes += entry.size();
        } else {
            self.paged += 1;
        }
    }

    /// Appends a paged entry to its level's tail; `held` is its body if it stays in memory.
    fn push_paged(&mut self, level: usize, p: PagedEntry, held: Option<Arc<Message>>) {
        let Some(l) = self.levels.get_mut(level) else {
            return;
        };
        l.paged.push_back(p);
        self.ready_count += 1;
        self.ready_bytes += p.size();
        match held {
            Some(m) => {
                self.mem_bytes += p.size();
                self.held.insert(p.offset, m);
            }
            None => self.paged += 1,
        }
    }

    /// Accounts for a paged entry taken off its tail; returns its body if it was held.
    fn untrack_paged(&mut self, p: &PagedEntry) -> Option<Arc<Message>> {
        self.ready_count = self.ready_count.saturating_sub(1);
        self.ready_bytes = self.ready_bytes.saturating_sub(p.size());
        if !self.held.is_empty() {
            if let Some(m) = self.held.remove(&p.offset) {
                self.mem_bytes = self.mem_bytes.saturating_sub(p.size());
                return Some(m);
            }
        }
        self.paged = self.paged.saturating_sub(1);
        None
    }

    /// Takes the in-memory head of the highest non-empty level; returns it with its level.
    /// None also when that level has only paged entries left (see `Level::needs_page_in`).
    fn pop(&mut self) -> Option<(Entry, usize)> {
        let level = self.highest_level()?;
        let entry = self.level_mut(level)?.pop()?;
        self.took(&entry);
        Some((entry, level))
    }

    fn clear(&mut self) -> usize {
        let n = self.ready_count;
        for l in &mut self.levels {
            l.ready = VecDeque::new();
            l.requeued.clear();
            l.paged = VecDeque::new();
        }
        self.held.clear();
        self.ready_count = 0;
        self.ready_bytes = 0;
        self.mem_bytes = 0;
        self.paged = 0;
        n
    }
}

/// A queue's access to the paging store.
struct Pager {
    handle: StoreHandle,
    /// Paged-out messages whose write has not been confirmed (by offset). The entry goes when
    /// the write is done, and stays if it failed, so a failed paging write never loses the
    /// message: page-in takes it from here. Shares the body with the store command (no copy).
    /// A leaf lock: the store thread's callbacks take it, so it is never held while waiting on
    /// the store.
    in_flight: Arc<Mutex<HashMap<u64, Arc<Message>>>>,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pager")
    }
}

impl Pager {
    fn in_flight(&self) -> MutexGuard<'_, HashMap<u64, Arc<Message>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Immutable properties fixed at declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug)]
pub struct Queue {
    name: ShortString,
    vhost: String,
    options: QueueOptions,
    config: QueueConfig,
    clock: Arc<Clock>,
    /// Where dead letters are routed (the owning vhost).
    router: Weak<VHost>,
    /// A lower bound on the expiry time of every level's head (`NEVER`: nothing expires).
    next_expiry: AtomicU64,
    /// `x-expires`: when the queue is deleted if it stays unused (`NEVER` while consumed).
    idle_deadline: AtomicU64,
    /// Arrivals, deliveries and acks, for management rates (relaxed atomics).
    counters: crate::counters::QueueCounters,
    /// Set for durable queues of a vhost with storage: persistent messages are stored here.
    store: OnceLock<QueueStore>,
    /// Set when the broker has a data directory: other messages page out here.
    pager: OnceLock<Pager>,
    state: Mutex<QueueState>,
}

/// Point-in-time figures for declare-ok, management and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u32,
    pub ready_bytes: u64,
    /// Bytes of ready bodies held in memory (the rest are paged out to the store).
    pub memory_bytes: u64,
    /// Ready messages whose bodies are only on disk.
    pub paged_out: u64,
}

/// What removing a consumer left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerRemoved {
    pub existed: bool,
    /// An auto-delete queue just lost its last consumer: the vhost should delete it.
    pub auto_delete_now: bool,
}

/// What became of a message published to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Enqueued (or delivered, or dropped by its own TTL/length rules): the publish succeeded.
    Accepted,
    /// Refused by `x-overflow` reject-publish(-dlx): the publisher gets a basic.nack.
    Rejected,
    /// The queue was deleted meanwhile.
    Gone,
}

/// What a tick found for the vhost to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TickAction {
    None,
    /// `x-expires` ran out: delete the queue.
    Delete,
}

impl Queue {
    /// A queue with no extensions configured and its own clock (tests, tools).
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

    /// A queue with resolved settings, sharing its vhost's clock; dead letters go to `router`.
    pub fn with_config(
        name: ShortString,
        vhost: String,
        options: QueueOptions,
        config: QueueConfig,
        clock: Arc<Clock>,
        router: Weak<VHost>,
    ) -> Arc<Self> {
        let levels = usize::from(config.max_priority.unwrap_or(0)) + 1;
        let now = clock.now_ms();
        let idle_deadline = config.expires.map_or(NEVER, |e| now.saturating_add(e));
        Arc::new(Queue {
            name,
            vhost,
            options,
            config,
            clock,
            router,
            next_expiry: AtomicU64::new(NEVER),
            idle_deadline: AtomicU64::new(idle_deadline),
            counters: crate::counters::QueueCounters::default(),
            store: OnceLock::new(),
            pager: OnceLock::new(),
            state: Mutex::new(QueueState {
                levels: (0..levels).map(|_| Level::default()).collect(),
                last_used: now,
                ..QueueState::default()
            }),
        })
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

    /// The settings in force (arguments merged with any policy).
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub fn is_exclusive(&self) -> bool {
        self.options.exclusive_owner.is_some()
    }

    /// Makes this (durable) queue store its persistent messages. Set once, at declaration or
    /// recovery, before the queue is shared.
    pub fn attach_store(&self, store: QueueStore) {
        let _ = self.store.set(store);
    }

    pub fn store(&self) -> Option<&QueueStore> {
        self.store.get()
    }

    /// Lets this queue page bodies that are not in the durable store out to `paging` (the
    /// node's scratch store). Set once, before the queue is shared.
    pub fn attach_paging(&self, paging: StoreHandle) {
        let _ = self.pager.set(Pager {
            handle: paging,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        });
    }

    fn is_stored(&self, message: &Message) -> bool {
        self.store.get().is_some() && message.is_persistent()
    }

    /// Tells the store these messages left the queue for good. Sent under the queue lock so
    /// that the store sees a queue's appends and acks in the order they happened.
    fn store_ack(&self, offsets: Vec<u64>) {
        if offsets.is_empty() {
            return;
        }
        if let Some(s) = self.store.get() {
            if let Err(e) = s.handle.ack(s.id, offsets) {
                tracing::error!(queue = %self.name, vhost = %self.vhost, "store ack failed: {e}");
            }
        }
    }

    /// Refills a recovered durable queue: messages in offset order, with their redelivered
    /// flags and stored expiry deadlines (Unix ms), and the offset to continue from.
    pub fn restore(&self, messages: Vec<(u64, Arc<Message>, bool, Option<u64>)>, next_offset: u64) {
        let mut st = self.lock();
        let now = self.clock.now_ms();
        let unix_now = crate::persist::unix_ms();
        st.next_offset = st.next_offset.max(next_offset);
        for (offset, message, redelivered, deadline) in messages {
            // A stored deadline is kept (whatever time passed while the broker was down, as
            // RabbitMQ does); messages stored without one get their TTL from now.
            let expires_at = match deadline {
                Some(d) => now.saturating_add(d.saturating_sub(unix_now)),
                None => self.expiry_for(&message, now).0,
            };
            let level = self.level_of(&message);
            st.next_offset = st.next_offset.max(offset + 1);
            // Like the TTL, time in queue counts from the recovery.
            let tail = st.levels.get(level).is_some_and(|l| !l.paged.is_empty());
            if tail || st.mem_bytes > PAGE_OUT_BYTES {
                // A long recovered queue keeps only its head in memory; the stored deadline
                // (if any) is read back with the body.
                let p = PagedEntry::new(
                    offset,
                    message.body_size() as u64,
                    redelivered,
                    false,
                    self.paged_expiry_kind(expires_at, now),
                    stamp(now),
                );
                let head = st.levels.get(level).is_some_and(Level::is_empty);
                st.push_paged(level, p, None);
                if head {
                    self.lower_next_expiry(self.paged_bound(&p, now).0);
                }
                continue;
            }
            let entry = Entry::new(offset, message, redelivered, expires_at, stamp(now));
            st.added(&entry);
            if let Some(l) = st.level_mut(level) {
                l.ready.push_back(entry);
            }
            self.lower_next_expiry(expires_at);
        }
    }

    /// Slots the ready deques hold (capacity, not length).
    #[cfg(test)]
    pub(crate) fn ready_capacity(&self) -> usize {
        self.lock()
            .levels
            .iter()
            .map(|l| l.ready.capacity() + l.paged.capacity())
            .sum()
    }

    /// A poisoned lock means a panic elsewhere mid-update; the state itself is still consistent
    /// enough to serve (every mutation is a few plain field writes), so keep going.
    pub(crate) fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    pub fn stats(&self) -> QueueStats {
        let st = self.lock();
        QueueStats {
            ready: st.ready_len() as u64,
            unacked: st.unacked,
            consumers: u32::try_from(st.consumers.len()).unwrap_or(u32::MAX),
            ready_bytes: st.ready_bytes,
            memory_bytes: st.mem_bytes,
            paged_out: st.paged as u64,
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    // ---- time ----

    /// The queue was used (declared, basic.get): restart its `x-expires` period.
    pub fn touch(&self) {
        let mut st = self.lock();
        self.touch_locked(&mut st);
    }

    fn touch_locked(&self, st: &mut QueueState) {
        let now = self.clock.now_ms();
        st.last_used = now;
        self.update_idle_deadline(st);
    }

    fn update_idle_deadline(&self, st: &QueueState) {
        let deadline = match self.config.expires {
            Some(e) if st.consumers.is_empty() && !st.deleted => st.last_used.saturating_add(e),
            _ => NEVER,
        };
        self.idle_deadline.store(deadline, Ordering::Relaxed);
    }

    /// Whether a tick at `now` has anything to do here (lock-free).
    pub(crate) fn tick_due(&self, now: u64) -> bool {
        let expiry = self.next_expiry.load(Ordering::Relaxed);
        let idle = self.idle_deadline.load(Ordering::Relaxed);
        (expiry != NEVER && expiry < now) || (idle != NEVER && idle <= now)
    }

    /// Removes expired heads (dead-lettering them) and reports whether `x-expires` ran out.
    pub(crate) fn tick(self: &Arc<Self>, now: u64) -> TickAction {
        let mut dead = Vec::new();
        let action = {
            let mut st = self.lock();
            if st.deleted {
                return TickAction::None;
            }
            self.expire_heads(&mut st, now, &mut dead);
            // Expired heads may have uncovered deliverable messages for waiting consumers.
            self.dispatch_locked(&mut st, now, &mut dead);
            let idle = self.idle_deadline.load(Ordering::Relaxed);
            if st.consumers.is_empty() && idle != NEVER && idle <= now {
                TickAction::Delete
            } else {
                TickAction::None
            }
        };
        self.route_dead_letters(dead);
        action
    }

    /// The expiry time of a message entering this queue now (the lower of the queue's and the
    /// message's TTL); the TTL itself is returned too (0 has special meaning on publish).
    fn expiry_for(&self, message: &Message, now: u64) -> (u64, Option<u64>) {
        let per_message = message
            .properties
            .expiration
            .as_ref()
            .and_then(|e| parse_expiration(e).ok());
        let ttl = match (self.config.message_ttl, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (ttl.map_or(NEVER, |t| now.saturating_add(t)), ttl)
    }

    fn lower_next_expiry(&self, at: u64) {
        if at != NEVER {
            self.next_expiry.fetch_min(at, Ordering::Relaxed);
        }
    }

    /// How a message entering the paged tail (at `enqueued`, expiring at `expires_at`) will
    /// find its expiry again without its body.
    fn paged_expiry_kind(&self, expires_at: u64, enqueued: u64) -> PagedExpiry {
        if expires_at == NEVER {
            PagedExpiry::Never
        } else if self
            .config
            .message_ttl
            .is_some_and(|t| enqueued.saturating_add(t) == expires_at)
        {
            PagedExpiry::QueueTtl
        } else {
            PagedExpiry::Other
        }
    }

    /// A lower bound on a paged entry's expiry time, and whether it is exact.
    fn paged_bound(&self, p: &PagedEntry, now: u64) -> (u64, bool) {
        let enqueued = enqueued_ms(now, p.enqueued_at);
        match (p.expiry(), self.config.message_ttl) {
            (PagedExpiry::Never, _) => (NEVER, true),
            (PagedExpiry::QueueTtl, Some(t)) => (enqueued.saturating_add(t), true),
            _ => (enqueued, false),
        }
    }

    /// A lower bound on the expiry of a level's head, in memory or paged.
    fn head_bound(&self, l: &Level) -> u64 {
        match l.head() {
            Some(h) => h.expires_at,
            None => l
                .paged
                .front()
                .map_or(NEVER, |p| self.paged_bound(p, self.clock.now_ms()).0),
        }
    }

    /// Drops (or dead-letters) every expired head when one may be due, then recomputes the
    /// lower bound from the heads left.
    fn expire_heads(&self, st: &mut QueueState, now: u64, dead: &mut Vec<DeadLetter>) {
        let bound = self.next_expiry.load(Ordering::Relaxed);
        if bound == NEVER || bound >= now {
            return;
        }
        let mut next = NEVER;
        let mut expired = Vec::new();
        let mut spilled = Vec::new();
        let dlx = self.config.dead_letter_exchange.is_some();
        for i in 0..st.levels.len() {
            while let Some(level) = st.levels.get_mut(i) {
                match level.head() {
                    Some(h) if h.expired(now) => {
                        let Some(e) = level.pop() else { break };
                        st.took(&e);
                        if self.entry_stored(&e) {
                            expired.push(e.offset);
                        }
                        if let Some(m) = e.message {
                            self.dead_letter(dead, m, DeathReason::Expired);
                        }
                        continue;
                    }
                    Some(h) => {
                        next = next.min(h.expires_at);
                        break;
                    }
                    None => {}
                }
                // Only the paged tail is left: its head's expiry is known without the body
                // unless it has its own TTL; dead-lettering needs the body anyway.
                let Some(p) = level.paged.front().copied() else {
                    break;
                };
                let (bound, exact) = self.paged_bound(&p, now);
                if bound >= now {
                    next = next.min(bound);
                    break;
                }
                if !exact || dlx {
                    if !self.page_in(st, i) {
                        next = next.min(bound);
                        break;
                    }
                    continue;
                }
                level.pop_paged();
                let held = st.untrack_paged(&p);
                self.paged_left(&p, held.is_some(), &mut expired, &mut spilled);
            }
        }
        self.next_expiry.store(next, Ordering::Relaxed);
        self.store_ack(expired);
        self.paging_release(st, spilled);
    }

    fn dead_letter(&self, dead: &mut Vec<DeadLetter>, message: Arc<Message>, reason: DeathReason) {
        if self.config.dead_letter_exchange.is_some() {
            dead.push(DeadLetter { message, reason });
        }
    }

    /// Hands dead letters to the vhost, outside the queue lock.
    pub(crate) fn route_dead_letters(self: &Arc<Self>, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        if let Some(vh) = self.router.upgrade() {
            vh.route_dead_letters(self, dead);
        }
    }

    // ---- publishing ----

    /// Appends a message and delivers what consumers can take; dead letters it causes are
    /// routed before it returns.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> Published {
        self.publish_durable(message, None)
    }

    /// `publish`, and when the message is stored, `durability` learns when it is on disk.
    pub fn publish_durable(
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
        let mut st = self.lock();
        let now = self.clock.now_ms();
        let offset = match self.admit(&mut st, &message, dead) {
            Ok(offset) => offset,
            Err(refused) => return refused,
        };
        let (expires_at, ttl) = self.expiry_for(&message, now);
        if self.is_stored(&message) {
            if let Some(s) = self.store.get() {
                let refs = vec![pier_store::QueueRef {
                    queue: s.id,
                    offset,
                }];
                // With a TTL the deadline is stored too, so that recovery keeps it.
                let deadline = ttl.map(|t| crate::persist::unix_ms().saturating_add(t));
                let copy = to_stored_expiring(&message, deadline);
                // Appended under the lock: the store needs a queue's offsets in order, and
                // must see the append before any ack of this message.
                if let Err(e) = crate::persist::append_durable(&s.handle, refs, copy, durability) {
                    tracing::error!(queue = %self.name, vhost = %self.vhost, "store append failed: {e}");
                }
            }
        }
        self.enqueue_locked(&mut st, message, offset, now, (expires_at, ttl), dead);
        Published::Accepted
    }

    /// The first half of a publish, under the lock: refuses it (deleted queue, `x-overflow`
    /// reject-publish) or takes the message's offset. Nothing is enqueued yet.
    pub(crate) fn admit(
        &self,
        st: &mut QueueState,
        message: &Arc<Message>,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<u64, Published> {
        if st.deleted {
            return Err(Published::Gone);
        }
        let size = message.body_size() as u64;
        if self.config.overflow != Overflow::DropHead {
            let too_many = self
                .config
                .max_length
                .is_some_and(|m| st.ready_count as u64 + 1 > m);
            let too_big = self
                .config
                .max_length_bytes
                .is_some_and(|m| st.ready_bytes + size > m);
            if too_many || too_big {
                if self.config.overflow == Overflow::RejectPublishDlx {
                    self.dead_letter(dead, Arc::clone(message), DeathReason::MaxLen);
                }
                return Err(Published::Rejected);
            }
        }
        let offset = st.next_offset;
        st.next_offset += 1;
        crate::counters::QueueCounters::add(&self.counters.published, 1);
        Ok(offset)
    }

    /// The broker clock's now (ms), as this queue sees it.
    pub(crate) fn clock_now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Whether a publish of `message` here can share one store record with other queues: it
    /// is stored, and without a TTL (the stored copy of an expiring message carries this
    /// queue's own deadline).
    pub(crate) fn shares_record(&self, message: &Message) -> bool {
        self.is_stored(message) && self.expiry_for(message, 0).1.is_none()
    }

    /// The second half of a publish, under the same lock hold as `admit` (and after the store
    /// append, if any): enqueues the message at `offset` and delivers what consumers can take.
    pub(crate) fn enqueue_locked(
        self: &Arc<Self>,
        st: &mut QueueState,
        message: Arc<Message>,
        offset: u64,
        now: u64,
        (expires_at, ttl): (u64, Option<u64>),
        dead: &mut Vec<DeadLetter>,
    ) {
        let level = self.level_of(&message);
        let stored = self.is_stored(&message);
        let Some(l) = st.levels.get(level) else {
            return;
        };
        let becomes_head = l.is_empty();
        let ttl0 = (ttl == Some(0)).then(|| Arc::clone(&message));
        if !l.paged.is_empty() {
            // Older messages of this level are paged out: FIFO puts this one behind them.
            let size = message.body_size() as u64;
            let (paging, held) = match self.write_out(st, offset, &message, stored, now) {
                Some(paging) => (paging, None),
                None => (false, Some(message)),
            };
            let kind = self.paged_expiry_kind(expires_at, now);
            let p = PagedEntry::new(offset, size, false, paging, kind, stamp(now));
            st.push_paged(level, p, held);
        } else {
            let entry = Entry::new(offset, message, false, expires_at, stamp(now));
            st.added(&entry);
            let Some(l) = st.level_mut(level) else {
                return;
            };
            l.ready.push_back(entry);
            if becomes_head {
                self.lower_next_expiry(expires_at);
            }
        }
        self.dispatch_locked(st, now, dead);
        if let Some(message) = ttl0 {
            // TTL 0: delivered right now or never.
            self.expire_newest(st, level, offset, message, dead);
        }
        self.drop_over_limit(st, dead);
        if st.mem_bytes > PAGE_OUT_BYTES {
            self.page_out_newest(st, level, offset, stored, now);
        }
    }

    /// A TTL-0 message that was not delivered at once is dropped (dead-lettered), wherever it
    /// waits: still the newest of its level, in memory or paged.
    fn expire_newest(
        &self,
        st: &mut QueueState,
        level: usize,
        offset: u64,
        message: Arc<Message>,
        dead: &mut Vec<DeadLetter>,
    ) {
        let Some(l) = st.levels.get_mut(level) else {
            return;
        };
        let mut stored = Vec::new();
        let mut spilled = Vec::new();
        if l.ready.back().is_some_and(|e| e.offset == offset) && l.paged.is_empty() {
            let Some(e) = l.ready.pop_back() else { return };
            st.took(&e);
            if self.entry_stored(&e) {
                stored.push(e.offset);
            }
        } else if l.paged.back().is_some_and(|p| p.offset == offset) {
            let Some(p) = l.paged.pop_back() else { return };
            let held = st.untrack_paged(&p);
            self.paged_left(&p, held.is_some(), &mut stored, &mut spilled);
        } else {
            return;
        }
        self.store_ack(stored);
        self.paging_release(st, spilled);
        self.dead_letter(dead, message, DeathReason::Expired);
    }

    /// Where a paged entry leaving the queue without being read back has a record to release.
    fn paged_left(
        &self,
        p: &PagedEntry,
        held: bool,
        stored: &mut Vec<u64>,
        spilled: &mut Vec<u64>,
    ) {
        if held {
            // Never written anywhere.
        } else if p.paging() {
            spilled.push(p.offset);
        } else {
            stored.push(p.offset);
        }
    }

    /// Past the in-memory budget the newest message (just published, still at the back of its
    /// level) keeps only its place, in its level's paged tail. Without a paging store a message
    /// that is not stored stays in memory (the tail is empty here, so FIFO holds either way).
    fn page_out_newest(
        &self,
        st: &mut QueueState,
        level: usize,
        offset: u64,
        stored: bool,
        now: u64,
    ) {
        let Some(message) = st
            .levels
            .get(level)
            .filter(|l| l.paged.is_empty())
            .and_then(|l| l.ready.back())
            .filter(|e| e.offset == offset)
            .and_then(|e| e.message.clone())
        else {
            return;
        };
        let Some(paging) = self.write_out(st, offset, &message, stored, now) else {
            return;
        };
        let Some(e) = st.level_mut(level).and_then(|l| l.ready.pop_back()) else {
            return;
        };
        st.took(&e);
        let kind = self.paged_expiry_kind(e.expires_at, enqueued_ms(now, e.enqueued_at));
        let p = PagedEntry::new(
            offset,
            e.size(),
            e.redelivered(),
            paging,
            kind,
            e.enqueued_at,
        );
        st.push_paged(level, p, None);
    }

    /// Makes sure a message's body is on disk so that it can leave memory: a stored one already
    /// is (`Some(false)`); any other is written to the paging store (`Some(true)`). None if
    /// there is no paging store or it is unavailable: the body must stay in memory.
    fn write_out(
        &self,
        st: &mut QueueState,
        offset: u64,
        message: &Arc<Message>,
        stored: bool,
        now: u64,
    ) -> Option<bool> {
        if stored {
            return Some(false);
        }
        {
            let pager = self.pager.get()?;
            let id = self.paging_queue(st, pager, now)?;
            pager.in_flight().insert(offset, Arc::clone(message));
            let in_flight = Arc::clone(&pager.in_flight);
            let refs = vec![pier_store::QueueRef { queue: id, offset }];
            let name = self.name.clone();
            // Never blocks on our lock (the store thread takes only `in_flight`); blocks here
            // while the paging thread is behind, which holds publishers back.
            let sent = pager
                .handle
                .append(refs, to_stored(message), move |r| match r {
                    Ok(_) => {
                        in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&offset);
                    }
                    // The body stays in `in_flight`, where page-in finds it.
                    Err(e) => tracing::warn!(queue = %name, offset, "paging write failed, message kept in memory: {e}"),
                });
            if let Err(e) = sent {
                pager.in_flight().remove(&offset);
                tracing::warn!(queue = %self.name, "paging store unavailable, message kept in memory: {e}");
                return None;
            }
        }
        Some(true)
    }

    /// This queue's id in the paging store, registering it on first use (one blocking round
    /// trip to the paging thread, once per queue).
    fn paging_queue(
        &self,
        st: &mut QueueState,
        pager: &Pager,
        now: u64,
    ) -> Option<pier_store::QueueId> {
        if let Some(id) = st.paging_id {
            return Some(id);
        }
        if now < st.paging_retry_at {
            return None;
        }
        let seq = PAGING_QUEUE_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{seq}:{}:{}", self.vhost, self.name);
        match pager.handle.call(move |s| s.open_queue(&name)) {
            Ok(Ok(id)) => {
                st.paging_id = Some(id);
                Some(id)
            }
            Ok(Err(e)) | Err(e) => {
                tracing::error!(queue = %self.name, vhost = %self.vhost, "paging store refused the queue, bodies stay in memory: {e}");
                st.paging_retry_at = now.saturating_add(PAGING_RETRY_MS);
                None
            }
        }
    }

    /// Releases paging records of messages that left the queue or were read back.
    fn paging_release(&self, st: &QueueState, offsets: Vec<u64>) {
        if offsets.is_empty() {
            return;
        }
        let Some(pager) = self.pager.get() else {
            return;
        };
        {
            let mut in_flight = pager.in_flight();
            if !in_flight.is_empty() {
                for o in &offsets {
                    in_flight.remove(o);
                }
            }
        }
        if let Some(id) = st.paging_id {
            if let Err(e) = pager.handle.ack(id, offsets) {
                tracing::error!(queue = %self.name, "paging store ack failed: {e}");
            }
        }
    }

    /// Drops every paging record of this queue at once (purge, delete): the paging queue is
    /// deleted (O(1) on disk) and a new one is registered if the queue pages again.
    fn paging_drop_all(&self, st: &mut QueueState) {
        let Some(pager) = self.pager.get() else {
            return;
        };
        pager.in_flight().clear();
        if let Some(id) = st.paging_id.take() {
            let sent = pager
                .handle
                .send(pier_store::Command::Run(Box::new(move |s| {
                    if let Err(e) = s.delete_queue(id) {
                        tracing::error!("deleting a queue's paging records: {e}");
                    }
                })));
            if let Err(e) = sent {
                tracing::error!(queue = %self.name, "paging store delete failed: {e}");
            }
        }
    }

    /// Whether a departing in-memory entry has a record in the durable store to ack.
    fn entry_stored(&self, e: &Entry) -> bool {
        e.message.as_ref().is_some_and(|m| self.is_stored(m))
    }

    /// Makes sure the next message to leave the queue has its body in memory, reading a batch
    /// of paged-out messages back from the store if needed. False if it could not.
    fn ensure_head_loaded(&self, st: &mut QueueState) -> bool {
        let Some(level) = st.highest_level() else {
            return true;
        };
        let needs = st.levels.get(level).is_some_and(Level::needs_page_in);
        !needs || self.page_in(st, level)
    }

    /// Moves the first paged-out messages of a level (up to `PAGE_IN_BATCH` / `PAGE_IN_BYTES`)
    /// from its tail into `ready`, reading their bodies back from the store that holds them
    /// (one blocking round trip per store; store threads never wait for a queue lock, so
    /// holding ours meanwhile cannot deadlock). Paging records are released once read: the body
    /// is in memory again. False if the level still has no in-memory head.
    fn page_in(&self, st: &mut QueueState, level: usize) -> bool {
        let Some(l) = st.levels.get(level) else {
            return false;
        };
        let mut durable = Vec::new();
        let mut spilled = Vec::new();
        let mut bytes = 0u64;
        let mut batch = 0usize;
        for p in &l.paged {
            if batch >= PAGE_IN_BATCH || (bytes >= PAGE_IN_BYTES && batch > 0) {
                break;
            }
            batch += 1;
            bytes += p.size();
            if st.held.contains_key(&p.offset) {
                continue;
            }
            if p.paging() {
                spilled.push(p.offset);
            } else {
                durable.push(p.offset);
            }
        }
        let mut by_offset: HashMap<u64, ReadBack> = HashMap::new();
        if !durable.is_empty() {
            let Some(store) = self.store.get() else {
                tracing::error!(queue = %self.name, "paged-out stored messages but no store");
                return false;
            };
            match read_back(&store.handle, store.id, durable.clone()) {
                Ok(v) => by_offset.extend(
                    durable
                        .iter()
                        .copied()
                        .zip(v)
                        .filter_map(|(o, m)| Some((o, m?))),
                ),
                Err(e) => {
                    tracing::error!(queue = %self.name, "paging messages in failed: {e}");
                    return false;
                }
            }
        }
        if !spilled.is_empty() {
            let (Some(pager), Some(id)) = (self.pager.get(), st.paging_id) else {
                tracing::error!(queue = %self.name, "paged-out messages but no paging store");
                return false;
            };
            // Writes not yet confirmed (or failed) are served from memory.
            let mut wanted = Vec::new();
            {
                let in_flight = pager.in_flight();
                for &o in &spilled {
                    match in_flight.get(&o) {
                        Some(m) => {
                            by_offset.insert(o, (Arc::clone(m), None));
                        }
                        None => wanted.push(o),
                    }
                }
            }
            if !wanted.is_empty() {
                match read_back(&pager.handle, id, wanted.clone()) {
                    Ok(v) => by_offset
                        .extend(wanted.into_iter().zip(v).filter_map(|(o, m)| Some((o, m?)))),
                    Err(e) => {
                        tracing::error!(queue = %self.name, "paging messages in failed: {e}");
                        return false;
                    }
                }
            }
        }
        let now = self.clock.now_ms();
        let unix_now = crate::persist::unix_ms();
        let mut lost = Vec::new();
        for _ in 0..batch {
            let Some(p) = st.levels.get_mut(level).and_then(Level::pop_paged) else {
                break;
            };
            let body = match st.untrack_paged(&p) {
                Some(m) => Some((m, None)),
                None => by_offset.remove(&p.offset),
            };
            let Some((message, deadline)) = body else {
                lost.push(p);
                continue;
            };
            // A stored deadline (restored message) wins; otherwise the TTL counts from when
            // the message entered the queue, as if it had never left memory.
            let expires_at = match deadline {
                Some(d) => now.saturating_add(d.saturating_sub(unix_now)),
                None => self.expiry_for(&message, enqueued_ms(now, p.enqueued_at)).0,
            };
            let e = Entry::new(
                p.offset,
                message,
                p.redelivered(),
                expires_at,
                p.enqueued_at,
            );
            st.added(&e);
            if let Some(l) = st.level_mut(level) {
                l.ready.push_back(e);
            }
        }
        if !lost.is_empty() {
            // Unreadable (the store logged why): dropping beats serving a broken message.
            tracing::error!(queue = %self.name, count = lost.len(), "paged-out messages could not be read back and are dropped");
        }
        let lost_stored = lost
            .iter()
            .filter(|p| !p.paging())
            .map(|p| p.offset)
            .collect();
        self.store_ack(lost_stored);
        self.paging_release(st, spilled);
        match st.levels.get(level).and_then(Level::head) {
            Some(h) => {
                self.lower_next_expiry(h.expires_at);
                true
            }
            None => false,
        }
    }

    /// drop-head: removes (dead-letters) messages from the head while over a length limit.
    fn drop_over_limit(&self, st: &mut QueueState, dead: &mut Vec<DeadLetter>) {
        if self.config.overflow != Overflow::DropHead {
            return;
        }
        let mut dropped = Vec::new();
        let mut spilled = Vec::new();
        loop {
            let too_many = self
                .config
                .max_length
                .is_some_and(|m| st.ready_count as u64 > m);
            let too_big = self
                .config
                .max_length_bytes
                .is_some_and(|m| st.ready_bytes > m);
            if !(too_many || too_big) {
                break;
            }
            if self.config.dead_letter_exchange.is_some() && !self.ensure_head_loaded(st) {
                break;
            }
            if let Some((e, level)) = st.pop() {
                self.after_pop(st, level);
                if self.entry_stored(&e) {
                    dropped.push(e.offset);
                }
                if let Some(m) = e.message {
                    self.dead_letter(dead, m, DeathReason::MaxLen);
                }
                continue;
            }
            // Only a paged tail is left at the head (no dead-letter exchange: no body needed).
            let Some(level) = st.highest_level() else {
                break;
            };
            let Some(p) = st.level_mut(level).and_then(Level::pop_paged) else {
                break;
            };
            let held = st.untrack_paged(&p);
            self.paged_left(&p, held.is_some(), &mut dropped, &mut spilled);
            self.after_pop(st, level);
        }
        self.store_ack(dropped);
        self.paging_release(st, spilled);
    }

    fn level_of(&self, message: &Message) -> usize {
        match self.config.max_priority {
            None => 0,
            Some(max) => usize::from(message.properties.priority.unwrap_or(0).min(max)),
        }
    }

    /// A head was taken from `level`: the new head may expire earlier than the bound says.
    fn after_pop(&self, st: &QueueState, level: usize) {
        if let Some(l) = st.levels.get(level) {
            self.lower_next_expiry(self.head_bound(l));
        }
    }

    // ---- delivery ----

    /// Delivers as much as consumers' credit allows. Sinks call this when they drain.
    pub fn dispatch(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut st = self.lock();
            for c in &mut st.consumers {
                c.waiting_for_sink = false;
            }
            let now = self.clock.now_ms();
            self.dispatch_locked(&mut st, now, &mut dead);
        }
        self.route_dead_letters(dead);
    }

    fn dispatch_locked(
        self: &Arc<Self>,
        st: &mut QueueState,
        now: u64,
        dead: &mut Vec<DeadLetter>,
    ) {
        if st.deleted {
            return;
        }
        // Stored messages handed out without acks, and the highest stored offset delivered.
        let mut gone = Vec::new();
        let mut delivered_upto: Option<u64> = None;
        loop {
            self.expire_heads(st, now, dead);
            if st.ready_len() == 0 || st.consumers.is_empty() {
                break;
            }
            // Before taking credit: a head that cannot be read back stops the dispatch.
            if !self.ensure_head_loaded(st) {
                break;
            }
            let Some(idx) = self.pick_consumer(st) else {
                break;
            };
            let Some((entry, level)) = st.pop() else {
                break;
            };
            self.after_pop(st, level);
            let redelivered = entry.redelivered();
            let Some(message) = entry.message else {
                // ensure_head_loaded just loaded this head; nothing else runs under our lock.
                tracing::error!(queue = %self.name, offset = entry.offset, "paged-out head after loading");
                break;
            };
            let Some(slot) = st.consumers.get_mut(idx) else {
                return;
            };
            if slot.spec.ack_required {
                slot.unacked += 1;
            }
            let ack_required = slot.spec.ack_required;
            self.count_delivery(ack_required);
            let delivery = Delivery {
                queue: Arc::clone(self),
                consumer: Some(slot.id),
                consumer_tag: slot.spec.tag.clone(),
                offset: entry.offset,
                message,
                redelivered,
                ack_required,
                enqueued_at: entry.enqueued_at,
            };
            let sink = Arc::clone(&slot.spec.sink);
            if !ack_required {
                // Without acks a delivery is the message's completion.
                st.completed(now, entry.enqueued_at);
            }
            if ack_required {
                st.unacked += 1;
                if entry.expires_at != NEVER {
                    st.unacked_expiry.insert(entry.offset, entry.expires_at);
                }
            }
            if self.is_stored(&delivery.message) {
                if ack_required {
                    st.unacked_stored.insert(entry.offset);
                    delivered_upto =
                        Some(delivered_upto.map_or(entry.offset, |d| d.max(entry.offset)));
                } else {
                    gone.push(entry.offset);
                }
            }
            st.round_robin = idx + 1;
            sink.deliver(delivery);
        }
        self.store_ack(gone);
        if let (Some(upto), Some(s)) = (delivered_upto, self.store.get()) {
            // So that after a restart these come back flagged redelivered.
            if let Err(e) = s.handle.mark_delivered(s.id, upto) {
                tracing::error!(queue = %self.name, "store mark_delivered failed: {e}");
            }
        }
    }

    /// Round-robin among the highest-priority consumers that can take a message now; takes
    /// the channel credit for the one it returns. With single active consumer only the first
    /// registered consumer is ever picked.
    fn pick_consumer(self: &Arc<Self>, st: &mut QueueState) -> Option<usize> {
        let n = st.consumers.len();
        if self.config.single_active_consumer {
            return (n > 0 && self.can_take(st, 0)).then_some(0);
        }
        let first_priority = st.consumers.first()?.spec.priority;
        let start = st.round_robin;
        if st
            .consumers
            .iter()
            .all(|c| c.spec.priority == first_priority)
        {
            return (0..n)
                .map(|i| (start + i) % n)
                .find(|&idx| self.can_take(st, idx));
        }
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Stable: round-robin order is kept within a priority.
        order.sort_by_key(|&i| {
            std::cmp::Reverse(st.consumers.get(i).map_or(i32::MIN, |c| c.spec.priority))
        });
        order.into_iter().find(|&idx| self.can_take(st, idx))
    }

    fn can_take(self: &Arc<Self>, st: &mut QueueState, idx: usize) -> bool {
        let Some(slot) = st.consumers.get_mut(idx) else {
            return false;
        };
        if slot.waiting_for_sink || !slot.under_prefetch() {
            return false;
        }
        if !slot.spec.sink.ready() {
            slot.waiting_for_sink = true;
            slot.spec.sink.notify_when_ready(Arc::downgrade(self));
            return false;
        }
        // Whoever releases channel credit re-dispatches the channel's queues.
        !slot.spec.ack_required || slot.spec.channel_credit.try_acquire()
    }

    /// basic.get: the next message, with the count of messages left ready.
    pub fn get(self: &Arc<Self>, ack_required: bool) -> Option<(Delivery, u32)> {
        let mut dead = Vec::new();
        let result = {
            let mut st = self.lock();
            if st.deleted {
                return None;
            }
            let now = self.clock.now_ms();
            self.touch_locked(&mut st);
            self.expire_heads(&mut st, now, &mut dead);
            if !self.ensure_head_loaded(&mut st) {
                return None;
            }
            match st.pop() {
                None => None,
                Some((entry, level)) if entry.message.is_none() => {
                    // ensure_head_loaded just loaded this head under the same lock.
                    tracing::error!(queue = %self.name, offset = entry.offset, "paged-out head after loading");
                    st.added(&entry);
                    if let Some(l) = st.level_mut(level) {
                        l.ready.push_front(entry);
                    }
                    None
                }
                Some((entry, level)) => {
                    self.after_pop(&st, level);
                    self.count_delivery(ack_required);
                    if !ack_required {
                        st.completed(now, entry.enqueued_at);
                    }
                    if ack_required {
                        st.unacked += 1;
                        if entry.expires_at != NEVER {
                            st.unacked_expiry.insert(entry.offset, entry.expires_at);
                        }
                    }
                    let redelivered = entry.redelivered();
                    let message = entry.message?;
                    if self.is_stored(&message) {
                        if ack_required {
                            st.unacked_stored.insert(entry.offset);
                            if let Some(s) = self.store.get() {
                                if let Err(e) = s.handle.mark_delivered(s.id, entry.offset) {
                                    tracing::error!(queue = %self.name, "store mark_delivered failed: {e}");
                                }
                            }
                        } else {
                            self.store_ack(vec![entry.offset]);
                        }
                    }
                    let remaining = u32::try_from(st.ready_len()).unwrap_or(u32::MAX);
                    Some((
                        Delivery {
                            queue: Arc::clone(self),
                            consumer: None,
                            consumer_tag: ShortString::default(),
                            offset: entry.offset,
                            message,
                            redelivered,
                            ack_required,
                            enqueued_at: entry.enqueued_at,
                        },
                        remaining,
                    ))
                }
            }
        };
        self.route_dead_letters(dead);
        result
    }

    // ---- consumers ----

    /// Adds a consumer. Exclusive consumers need an idle queue; nobody joins an exclusive one.
    /// `on_added` runs under the queue lock once the consumer is accepted and before anything is
    /// delivered to it: the place to send basic.consume-ok so that it precedes the deliveries.
    pub fn add_consumer(
        self: &Arc<Self>,
        spec: ConsumerSpec,
        on_added: impl FnOnce(),
    ) -> Result<ConsumerId> {
        let mut dead = Vec::new();
        let id = {
            let mut st = self.lock();
            if st.deleted {
                return Err(BrokerError::not_found(
                    crate::error::ObjectKind::Queue,
                    &self.name,
                    &self.vhost,
                ));
            }
            let taken = st.consumers.iter().any(|c| c.spec.exclusive);
            // RabbitMQ refuses exclusive consumers on single-active-consumer queues outright.
            let sac = spec.exclusive && self.config.single_active_consumer;
            if taken || sac || (spec.exclusive && !st.consumers.is_empty()) {
                return Err(BrokerError::ExclusiveConsumer {
                    name: self.name.to_string(),
                    vhost: self.vhost.clone(),
                });
            }
            let id = next_consumer_id();
            st.consumers.push(ConsumerSlot {
                id,
                spec,
                unacked: 0,
                waiting_for_sink: false,
            });
            st.had_consumers = true;
            self.touch_locked(&mut st);
            on_added();
            let now = self.clock.now_ms();
            self.dispatch_locked(&mut st, now, &mut dead);
            id
        };
        self.route_dead_letters(dead);
        Ok(id)
    }

    pub fn remove_consumer(self: &Arc<Self>, id: ConsumerId) -> ConsumerRemoved {
        let mut dead = Vec::new();
        let removed = {
            let mut st = self.lock();
            let before = st.consumers.len();
            // Order is kept: with single active consumer the next one registered takes over.
            st.consumers.retain(|c| c.id != id);
            let existed = st.consumers.len() != before;
            if st.round_robin >= st.consumers.len() {
                st.round_robin = 0;
            }
            let auto_delete_now = existed
                && self.options.auto_delete
                && st.had_consumers
                && st.consumers.is_empty()
                && !st.deleted;
            if existed {
                self.touch_locked(&mut st);
            }
            // A departing consumer may have been what held messages back from others.
            let now = self.clock.now_ms();
            self.dispatch_locked(&mut st, now, &mut dead);
            ConsumerRemoved {
                existed,
                auto_delete_now,
            }
        };
        self.route_dead_letters(dead);
        removed
    }

    // ---- settlement ----

    fn settle_locked<I>(&self, st: &mut QueueState, consumer: Option<ConsumerId>, offsets: I)
    where
        I: ExactSizeIterator<Item = u64> + Clone,
    {
        let count = u32::try_from(offsets.len()).unwrap_or(u32::MAX);
        st.unacked = st.unacked.saturating_sub(u64::from(count));
        if !st.unacked_expiry.is_empty() {
            for o in offsets.clone() {
                st.unacked_expiry.remove(&o);
            }
        }
        if !st.unacked_stored.is_empty() {
            let stored: Vec<u64> = offsets.filter(|o| st.unacked_stored.remove(o)).collect();
            self.store_ack(stored);
        }
        if let Some(id) = consumer {
            if let Some(slot) = st.consumers.iter_mut().find(|c| c.id == id) {
                slot.unacked = slot.unacked.saturating_sub(count);
            }
        }
    }

    /// Settles deliveries (by offset) made to `consumer` (None: basic.get) that were acked, and
    /// delivers what the freed credit allows.
    pub fn settle(self: &Arc<Self>, consumer: Option<ConsumerId>, acked: &[Settled]) {
        let mut dead = Vec::new();
        {
            let mut st = self.lock();
            let now = self.clock.now_ms();
            for a in acked {
                st.completed(now, a.enqueued_at);
            }
            self.settle_locked(&mut st, consumer, acked.iter().map(|a| a.offset));
            crate::counters::QueueCounters::add(&self.counters.acked, acked.len() as u64);
            self.dispatch_locked(&mut st, now, &mut dead);
        }
        self.route_dead_letters(dead);
    }

    /// Settles deliveries rejected without requeue: like `settle`, and they are dead-lettered
    /// (reason `rejected`) when the queue has a dead-letter exchange.
    pub fn reject(
        self: &Arc<Self>,
        consumer: Option<ConsumerId>,
        messages: Vec<(u64, Arc<Message>)>,
    ) {
        let mut dead = Vec::new();
        {
            let mut st = self.lock();
            self.settle_locked(&mut st, consumer, messages.iter().map(|(o, _)| *o));
            for (_, m) in messages {
                self.dead_letter(&mut dead, m, DeathReason::Rejected);
            }
            let now = self.clock.now_ms();
            self.dispatch_locked(&mut st, now, &mut dead);
        }
        self.route_dead_letters(dead);
    }

    /// Puts delivered messages back at their original positions (within their priority),
    /// marked redelivered, keeping their original expiry, and settles them for their consumer.
    /// `consumer` is None for basic.get or when the consumer is already gone.
    /// Each message comes with the enqueue stamp its delivery carried, so time in queue keeps
    /// counting from when it first arrived.
    pub fn requeue(
        self: &Arc<Self>,
        consumer: Option<ConsumerId>,
        messages: impl IntoIterator<Item = (Settled, Arc<Message>)>,
    ) {
        let mut dead = Vec::new();
        {
            let mut st = self.lock();
            let mut count = 0u32;
            for (
                Settled {
                    offset,
                    enqueued_at,
                },
                message,
            ) in messages
            {
                count += 1;
                st.unacked = st.unacked.saturating_sub(1);
                let expires_at = st.unacked_expiry.remove(&offset).unwrap_or(NEVER);
                st.unacked_stored.remove(&offset);
                if st.deleted {
                    continue;
                }
                let level = self.level_of(&message);
                let entry = Entry::new(offset, message, true, expires_at, enqueued_at);
                st.added(&entry);
                if let Some(l) = st.level_mut(level) {
                    l.requeued.insert(offset, entry);
                }
                self.lower_next_expiry(expires_at);
            }
            if let Some(id) = consumer {
                if let Some(slot) = st.consumers.iter_mut().find(|c| c.id == id) {
                    slot.unacked = slot.unacked.saturating_sub(count);
                }
            }
            let now = self.clock.now_ms();
            self.dispatch_locked(&mut st, now, &mut dead);
            self.drop_over_limit(&mut st, &mut dead);
        }
        self.route_dead_letters(dead);
    }

    /// Drops every ready message (not the unacked ones); returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.lock();
        if self.store.get().is_some() {
            // Unacked deliveries stay in the store (they may still be requeued), so the ready
            // ones are acked one by one rather than purging the store's queue.
            let mut stored: Vec<u64> = st
                .levels
                .iter()
                .flat_map(|l| l.requeued.values().chain(l.ready.iter()))
                .filter(|e| self.entry_stored(e))
                .map(|e| e.offset)
                .collect();
            // Paged entries neither in the paging store nor held are in the durable one.
            stored.extend(
                st.levels
                    .iter()
                    .flat_map(|l| l.paged.iter())
                    .filter(|p| !p.paging() && !st.held.contains_key(&p.offset))
                    .map(|p| p.offset),
            );
            self.store_ack(stored);
        }
        // Unacked deliveries hold their bodies in memory, so every paging record is a ready one.
        self.paging_drop_all(&mut st);
        let n = st.clear();
        self.next_expiry.store(NEVER, Ordering::Relaxed);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Marks the queue deleted and drops its messages. Returns the ready count it had and the
    /// consumers to notify (outside the lock).
    pub(crate) fn mark_deleted(&self) -> (u32, Vec<ConsumerSpec>) {
        let mut st = self.lock();
        if st.deleted {
            return (0, Vec::new());
        }
        st.deleted = true;
        self.paging_drop_all(&mut st);
        let n = u32::try_from(st.clear()).unwrap_or(u32::MAX);
        st.unacked_expiry.clear();
        self.next_expiry.store(NEVER, Ordering::Relaxed);
        self.idle_deadline.store(NEVER, Ordering::Relaxed);
        let consumers = st.consumers.drain(..).map(|c| c.spec).collect();
        (n, consumers)
    }

    /// Measured time in queue (enqueue to ack) over the last `waits::WINDOW_MS`.
    pub fn time_in_queue(&self) -> WaitSummary {
        let mut h = WaitHistogram::default();
        self.time_in_queue_into(&mut h);
        h.summary()
    }

    /// Adds this queue's time-in-queue samples of the window to `into` (vhost aggregates).
    pub fn time_in_queue_into(&self, into: &mut WaitHistogram) {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        if let Some(w) = st.waits.as_deref() {
            if w.is_stale(now) {
                // Nothing completed for a whole window: give the ring's memory back.
                st.waits = None;
            } else {
                w.merge_into(now, into);
            }
        }
    }

    /// Arrivals, deliveries and acks so far.
    pub fn counters(&self) -> crate::counters::QueueCountersSnapshot {
        self.counters.snapshot()
    }

    fn count_delivery(&self, ack_required: bool) {
        use crate::counters::QueueCounters;
        QueueCounters::add(&self.counters.delivered, 1);
        if !ack_required {
            QueueCounters::add(&self.counters.delivered_no_ack, 1);
        }
    }

    /// The consumers as management lists them.
    pub fn consumers(&self) -> Vec<crate::consumer::ConsumerInfo> {
        let st = self.lock();
        let sac = self.config.single_active_consumer;
        st.consumers
            .iter()
            .enumerate()
            .map(|(i, c)| crate::consumer::ConsumerInfo {
                tag: c.spec.tag.clone(),
                connection: c.spec.connection,
                channel: c.spec.sink.channel_number(),
                ack_required: c.spec.ack_required,
                exclusive: c.spec.exclusive,
                prefetch: c.spec.prefetch,
                priority: c.spec.priority,
                arguments: c.spec.arguments.clone(),
                active: !sac || i == 0,
            })
            .collect()
    }

    pub fn consumer_tags(&self) -> Vec<ShortString> {
        self.lock()
            .consumers
            .iter()
            .map(|c| c.spec.tag.clone())
            .collect()
    }

    /// With single active consumer: the tag of the consumer receiving messages.
    pub fn active_consumer_tag(&self) -> Option<ShortString> {
        let st = self.lock();
        if self.config.single_active_consumer {
            st.consumers.first().map(|c| c.spec.tag.clone())
        } else {
            None
        }
    }
}

/// Reads messages back from a store thread (one round trip), in the order asked; `None` for
/// one that is gone or whose properties no longer decode.
/// A message read back from a store, with the expiry deadline (Unix ms) stored with it.
type ReadBack = (Arc<Message>, Option<u64>);

/// With each message, the expiry deadline (Unix ms) stored with it, if any.
fn read_back(
    handle: &StoreHandle,
    id: pier_store::QueueId,
    offsets: Vec<u64>,
) -> pier_store::Result<Vec<Option<ReadBack>>> {
    handle.call(move |s| {
        offsets
            .iter()
            .map(|&o| {
                s.read(id, o)
                    .ok()
                    .and_then(crate::persist::from_stored_expiring)
                    .map(|(m, d)| (Arc::new(m), d))
            })
            .collect()
    })
}

#[cfg(test)]
mod entry_tests {
    use super::*;

    #[test]
    fn entry_stays_small() {
        // Per-message index cost is tracked: the enqueue stamp must not grow the entry.
        assert!(std::mem::size_of::<Entry>() <= 32);
    }

    #[test]
    fn entry_packs_size_and_redelivered() {
        let m = Arc::new(Message::from_properties(
            ShortString::from(""),
            ShortString::from("k"),
            pier_wire::BasicProperties::default(),
            bytes::Bytes::from_static(b"hello"),
        ));
        let e = Entry::new(7, Arc::clone(&m), true, NEVER, 42);
        assert_eq!((e.size(), e.redelivered(), e.enqueued_at), (5, true, 42));
        let e = Entry::new(7, m, false, NEVER, 0);
        assert_eq!((e.size(), e.redelivered()), (5, false));
    }

    #[test]
    fn paged_entry_is_16_bytes_and_packs_its_flags() {
        // A paged-out message costs this in the queue plus the store's 20-byte index entry.
        assert_eq!(std::mem::size_of::<PagedEntry>(), 16);
        for kind in [
            PagedExpiry::Never,
            PagedExpiry::QueueTtl,
            PagedExpiry::Other,
        ] {
            let p = PagedEntry::new(u64::MAX, 1 << 40, true, false, kind, 9);
            assert_eq!(
                (p.offset, p.size(), p.redelivered(), p.paging(), p.expiry()),
                (u64::MAX, u64::from(P_SIZE_MASK), true, false, kind)
            );
            let p = PagedEntry::new(3, 1024, false, true, kind, 9);
            assert_eq!(
                (
                    p.size(),
                    p.redelivered(),
                    p.paging(),
                    p.expiry(),
                    p.enqueued_at
                ),
                (1024, false, true, kind, 9)
            );
        }
    }

    /// The figure docs/storage.md quotes: heap bytes per paged-out message in a queue's tail
    /// (capacity, not length: what the allocator gave), for 1M messages.
    #[test]
    fn paged_tail_heap_bytes_per_message() {
        let mut st = QueueState {
            levels: vec![Level::default()],
            ..QueueState::default()
        };
        let n = 1_000_000u64;
        for o in 0..n {
            let p = PagedEntry::new(o, 1024, false, false, PagedExpiry::Never, 0);
            st.push_paged(0, p, None);
        }
        assert_eq!((st.ready_count, st.paged), (n as usize, n as usize));
        assert_eq!(st.ready_bytes, n * 1024);
        let heap = st.levels[0].paged.capacity() * std::mem::size_of::<PagedEntry>();
        let per = heap as f64 / n as f64;
        println!("queue tail: {n} paged entries, {heap} heap bytes, {per:.1} bytes/message");
        assert!(per < 17.0, "{per}");
    }
}
