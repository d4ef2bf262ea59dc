//! The queue engine's data: entries, priority levels, consumers and checked-out messages.
//!
//! Memory per message is what long queues pay, so the entry types are packed: a ready message
//! with its body in memory is a 32-byte [`Entry`], one whose body is on disk a 16-byte
//! [`PagedEntry`] (plus the store's own index entry).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use pier_store::ChunkedDeque;
use pier_wire::{FieldTable, ShortString};

use crate::consumer::{ConnectionId, ConsumerId};
use crate::message::Message;

/// One queued message. Kept to 32 bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub offset: u64,
    /// The body, or `None` when it is only on disk (where: see [`Entry::in_paging`]). Entries
    /// in `ready` and `requeued` always have one after the runtime's step (see `PagedIn`).
    pub message: Option<Arc<Message>>,
    /// Clock milliseconds after which the message is expired; `NEVER` without a TTL.
    pub expires_at: u64,
    /// Body size in the low 30 bits (saturated); bit 31: redelivered; bit 30: a body that is
    /// not in memory is in the paging store (else in the durable store).
    pub size_flags: u32,
    /// When the message entered the queue (`waits::stamp`), for measured time in queue.
    pub enqueued_at: u32,
}

const E_REDELIVERED: u32 = 1 << 31;
const E_PAGING: u32 = 1 << 30;
const E_SIZE_MASK: u32 = (1 << 30) - 1;

impl Entry {
    pub fn new(
        offset: u64,
        message: Arc<Message>,
        redelivered: bool,
        expires_at: u64,
        enqueued_at: u32,
    ) -> Self {
        // Bodies are capped by max_message_size far below 1 GiB; saturate rather than wrap.
        let size = u32::try_from(message.body_size())
            .unwrap_or(u32::MAX)
            .min(E_SIZE_MASK);
        Entry {
            offset,
            message: Some(message),
            expires_at,
            size_flags: size | if redelivered { E_REDELIVERED } else { 0 },
            enqueued_at,
        }
    }

    /// An entry whose body stays on disk (read back when needed).
    pub fn on_disk(p: &PagedEntry, expires_at: u64) -> Self {
        let size = u32::try_from(p.size()).unwrap_or(u32::MAX).min(E_SIZE_MASK);
        let mut size_flags = size;
        if p.redelivered() {
            size_flags |= E_REDELIVERED;
        }
        if p.paging() {
            size_flags |= E_PAGING;
        }
        Entry {
            offset: p.offset,
            message: None,
            expires_at,
            size_flags,
            enqueued_at: p.enqueued_at,
        }
    }

    pub fn size(&self) -> u64 {
        u64::from(self.size_flags & E_SIZE_MASK)
    }

    pub fn redelivered(&self) -> bool {
        self.size_flags & E_REDELIVERED != 0
    }

    pub fn set_redelivered(&mut self) {
        self.size_flags |= E_REDELIVERED;
    }

    /// Without a body in memory: whether it is in the paging store (else the durable one).
    pub fn in_paging(&self) -> bool {
        self.size_flags & E_PAGING != 0
    }
}

/// A ready message whose body is not in memory: only its place. 16 bytes, because a long
/// backlog is millions of these. The expiry is not kept here: it is recomputed from
/// `enqueued_at` (queue TTL) or looked up in the engine's `paged_deadlines` (per-message TTL,
/// stored deadline), see [`PagedExpiry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PagedEntry {
    pub offset: u64,
    /// Body size in the low 28 bits (saturated), then the expiry kind (2 bits), paging and
    /// redelivered flags.
    bits: u32,
    /// When the message entered the queue (`waits::stamp`).
    pub enqueued_at: u32,
}

const P_REDELIVERED: u32 = 1 << 31;
/// In the node's scratch paging store (not the durable one): that record is released when the
/// body is read back or the message leaves the queue.
const P_PAGING: u32 = 1 << 30;
const P_EXPIRY_SHIFT: u32 = 28;
const P_SIZE_MASK: u32 = (1 << P_EXPIRY_SHIFT) - 1;

/// How a paged entry's expiry time is found without its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PagedExpiry {
    Never = 0,
    /// Exactly `enqueued + config.message_ttl`.
    QueueTtl = 1,
    /// In the engine's `paged_deadlines`, by offset.
    Listed = 2,
}

impl PagedEntry {
    pub fn new(
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

    pub fn size(&self) -> u64 {
        u64::from(self.bits & P_SIZE_MASK)
    }

    pub fn paging(&self) -> bool {
        self.bits & P_PAGING != 0
    }

    pub fn redelivered(&self) -> bool {
        self.bits & P_REDELIVERED != 0
    }

    /// Its expiry is found another way from now on (`reconfigure.rs`).
    pub fn set_expiry(&mut self, expiry: PagedExpiry) {
        self.bits = (self.bits & !(3 << P_EXPIRY_SHIFT)) | ((expiry as u32) << P_EXPIRY_SHIFT);
    }

    pub fn expiry(&self) -> PagedExpiry {
        match (self.bits >> P_EXPIRY_SHIFT) & 3 {
            0 => PagedExpiry::Never,
            1 => PagedExpiry::QueueTtl,
            _ => PagedExpiry::Listed,
        }
    }
}

/// How often a message came back (the store records the same counts; see
/// `DeliveryCounting` for which one limits).
pub use pier_store::Returns;

/// A message put back by a consumer, waiting at its original place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Requeued {
    pub entry: Entry,
    pub returns: Returns,
}

/// One priority level: requeued messages by offset (always older than every ready one, so they
/// come first), never-delivered ones with their bodies in arrival order, then never-delivered
/// ones whose bodies are paged out (always newer than every `ready` one).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Level {
    pub ready: VecDeque<Entry>,
    pub requeued: BTreeMap<u64, Requeued>,
    /// Chunked: a backlog of millions pays 16 bytes each, not a doubling deque's up to 32.
    pub paged: ChunkedDeque<PagedEntry>,
}

/// The head of a level, wherever it is.
pub(crate) enum Head<'a> {
    Memory(&'a Entry),
    Paged(&'a PagedEntry),
}

impl Head<'_> {
    pub fn offset(&self) -> u64 {
        match self {
            Head::Memory(e) => e.offset,
            Head::Paged(p) => p.offset,
        }
    }
}

impl Level {
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.requeued.is_empty() && self.paged.is_empty()
    }

    pub fn head(&self) -> Option<Head<'_>> {
        if let Some((_, r)) = self.requeued.first_key_value() {
            return Some(Head::Memory(&r.entry));
        }
        if let Some(e) = self.ready.front() {
            return Some(Head::Memory(e));
        }
        self.paged.front().map(Head::Paged)
    }

    /// Takes the in-memory head (requeued first, then ready) with its return count.
    pub fn pop_memory(&mut self) -> Option<(Entry, Returns)> {
        if let Some((_, r)) = self.requeued.pop_first() {
            return Some((r.entry, r.returns));
        }
        let e = self.ready.pop_front();
        release_drained(&mut self.ready);
        e.map(|e| (e, Returns::default()))
    }

    pub fn pop_paged(&mut self) -> Option<PagedEntry> {
        self.paged.pop_front()
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

/// What a consumer asked for when it subscribed (the protocol-neutral part of
/// `ConsumerSpec`; the runtime keeps the channel side).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSettings {
    pub tag: ShortString,
    pub connection: ConnectionId,
    pub ack_required: bool,
    pub exclusive: bool,
    /// Prefetch: at most this many unacknowledged deliveries (0: no limit). Ignored in credit
    /// mode.
    pub prefetch: u32,
    pub priority: i32,
    pub arguments: FieldTable,
    /// `Some(n)`: credit mode (AMQP 1.0 links, the stream protocol): n deliveries may go out,
    /// and more credit comes with `Command::Credit`, not with acknowledgements.
    pub credit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Consumer {
    pub id: ConsumerId,
    pub settings: ConsumerSettings,
    /// Deliveries to it not yet settled.
    pub unacked: u32,
    /// Credit mode: deliveries still allowed.
    pub credit: u32,
    /// Credit mode: use up the credit or give it back (`Command::Credit { drain: true }`).
    pub drain: bool,
    /// Its node is out of the leader's reach (`Command::Suspect`): it gets nothing.
    pub suspected: bool,
}

impl Consumer {
    /// Whether the engine's own accounting allows one more delivery to it.
    pub fn has_credit(&self) -> bool {
        match self.settings.credit {
            Some(_) => self.credit > 0,
            None => {
                !self.settings.ack_required
                    || self.settings.prefetch == 0
                    || self.unacked < self.settings.prefetch
            }
        }
    }
}

/// A message delivered and not yet settled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckedOut {
    /// None: taken with basic.get.
    pub consumer: Option<ConsumerId>,
    pub entry: Entry,
    pub returns: Returns,
    /// Its priority level (where it goes back when returned).
    pub level: u8,
    /// Clock milliseconds of the delivery (consumer timeouts).
    pub delivered_at: u64,
}
