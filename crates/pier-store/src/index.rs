//! The in-memory index of one queue: where each live message sits on disk, in offset order.
//!
//! This is the only per-message memory the segment store keeps, so it is kept small: one
//! 20-byte [`IndexEntry`] per message in a [`ChunkedDeque`] (chunks of 1024, no per-element
//! allocation, at most two partly used chunks of slack whatever the length).
//! Bodies stay on disk and are read back by (segment, position, length) in one `pread`.
//!
//! Acknowledgements usually arrive in FIFO order and pop entries off the front. An ack out of
//! order marks its entry as a tombstone; tombstones at the front are popped as soon as they
//! get there, and when tombstones outnumber live entries the deque is compacted, so memory
//! stays proportional to the live messages (plus a bounded slack).

use crate::chunked::ChunkedDeque;

/// Where a message of a queue lives. 20 bytes: `u64` + 3 × `u32`, packed to 4-byte alignment
/// (a naturally aligned `u64` would pad it to 24), with the flags in the top bits of the length
/// (records are at most [`MAX_RECORD_LEN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct IndexEntry {
    /// The queue's offset for this message (monotonic per queue).
    pub offset: u64,
    /// Segment id.
    pub segment: u32,
    /// Byte position of the record in the segment (segments are at most 4 GiB).
    pub position: u32,
    /// Whole record length (header included, so a read is a single `pread`) in the low 30
    /// bits; the acked and redelivered flags above.
    len_flags: u32,
}

/// The largest record an index entry can describe; the store refuses larger ones
/// (`StoreConfig::max_record_size` is clamped to it).
pub const MAX_RECORD_LEN: u32 = (1 << 30) - 1;
const ACKED: u32 = 1 << 31;
const REDELIVERED: u32 = 1 << 30;

impl IndexEntry {
    /// `len` must be at most [`MAX_RECORD_LEN`] (the store never writes longer records).
    pub fn new(offset: u64, segment: u32, position: u32, len: u32) -> Self {
        debug_assert!(len <= MAX_RECORD_LEN);
        IndexEntry {
            offset,
            segment,
            position,
            len_flags: len & MAX_RECORD_LEN,
        }
    }

    /// Whole record length, header included.
    pub fn record_len(&self) -> u32 {
        self.len_flags & MAX_RECORD_LEN
    }

    pub fn is_acked(&self) -> bool {
        self.len_flags & ACKED != 0
    }

    /// Recovered from disk with an offset at or below the queue's delivered mark.
    pub fn is_redelivered(&self) -> bool {
        self.len_flags & REDELIVERED != 0
    }

    pub(crate) fn set_redelivered(&mut self) {
        self.len_flags |= REDELIVERED;
    }
}

/// The live messages of one queue, in offset order.
#[derive(Debug, Default, Clone)]
pub struct QueueIndex {
    entries: ChunkedDeque<IndexEntry>,
    live: u64,
}

/// Tombstones are compacted away once there are more than this many and they outnumber the
/// live entries (amortised O(1) per ack).
const COMPACT_MIN_TOMBSTONES: usize = 1024;

impl QueueIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Live (unacknowledged) messages.
    pub fn len(&self) -> u64 {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The highest offset held (live or tombstone).
    pub fn last_offset(&self) -> Option<u64> {
        self.entries.back().map(|e| e.offset)
    }

    /// Appends an entry; offsets must increase. Returns false (and changes nothing) otherwise.
    pub fn push(&mut self, entry: IndexEntry) -> bool {
        if self.last_offset().is_some_and(|last| entry.offset <= last) {
            return false;
        }
        self.entries.push_back(entry);
        self.live += 1;
        true
    }

    /// Inserts an entry at its place in offset order (recovery: records of one queue are in
    /// offset order on disk, so this is nearly always a push). False if the offset is present.
    pub fn insert(&mut self, entry: IndexEntry) -> bool {
        if self.push(entry) {
            return true;
        }
        match self
            .entries
            .binary_search_by_key(&{ entry.offset }, |e| e.offset)
        {
            Ok(_) => false,
            Err(at) => {
                self.entries.insert(at, entry);
                self.live += 1;
                true
            }
        }
    }

    fn position(&self, offset: u64) -> Option<usize> {
        // Consumers mostly settle in order: the oldest entry is the usual one.
        if self.entries.front().is_some_and(|e| e.offset == offset) {
            return Some(0);
        }
        self.entries
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()
    }

    /// The live entry for `offset`.
    pub fn get(&self, offset: u64) -> Option<&IndexEntry> {
        self.entries
            .get(self.position(offset)?)
            .filter(|e| !e.is_acked())
    }

    /// Acknowledges `offset`: returns its entry if it was live (a second ack returns None, so
    /// the caller never releases the same reference twice).
    pub fn ack(&mut self, offset: u64) -> Option<IndexEntry> {
        let at = self.position(offset)?;
        let e = self.entries.get_mut(at)?;
        if e.is_acked() {
            return None;
        }
        e.len_flags |= ACKED;
        let taken = *e;
        self.live -= 1;
        while self.entries.front().is_some_and(IndexEntry::is_acked) {
            self.entries.pop_front();
        }
        let tombstones = self.entries.len() - self.live as usize;
        if tombstones > COMPACT_MIN_TOMBSTONES && tombstones > self.live as usize {
            self.entries.retain(|e| !e.is_acked());
        }
        Some(taken)
    }

    /// Live entries in offset order.
    pub fn iter(&self) -> impl Iterator<Item = &IndexEntry> + '_ {
        self.entries.iter().filter(|e| !e.is_acked())
    }

    /// Removes and returns the entries at the back that satisfy `pred` (used to undo appends
    /// whose write failed; they are always the newest).
    pub(crate) fn pop_back_while(
        &mut self,
        mut pred: impl FnMut(&IndexEntry) -> bool,
    ) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        while let Some(e) = self.entries.back().copied() {
            if !pred(&e) {
                break;
            }
            self.entries.pop_back();
            if !e.is_acked() {
                self.live -= 1;
            }
            out.push(e);
        }
        out
    }

    pub(crate) fn mark_redelivered_upto(&mut self, upto: u64) {
        for e in self.entries.iter_mut().take_while(|e| e.offset <= upto) {
            e.set_redelivered();
        }
    }

    /// Heap bytes held by this index (capacity, not length: what the allocator really gave).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<IndexEntry>()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn e(offset: u64) -> IndexEntry {
        IndexEntry::new(offset, 1, offset as u32 * 10, 10)
    }

    #[test]
    fn draining_gives_memory_back() {
        let mut ix = QueueIndex::new();
        for o in 0..100_000 {
            assert!(ix.push(e(o)));
        }
        let full = ix.heap_bytes();
        for o in 0..99_990 {
            assert!(ix.ack(o).is_some());
        }
        assert!(ix.heap_bytes() < full / 16, "{} of {full}", ix.heap_bytes());
        assert_eq!(
            ix.iter().map(|e| e.offset).collect::<Vec<_>>(),
            (99_990..100_000).collect::<Vec<_>>()
        );
    }

    #[test]
    fn entry_is_20_bytes() {
        // The figure docs/storage.md quotes; a field added here must be paid for.
        assert_eq!(std::mem::size_of::<IndexEntry>(), 20);
    }

    #[test]
    fn flags_do_not_touch_the_length() {
        let mut x = IndexEntry::new(u64::MAX - 1, 7, u32::MAX, MAX_RECORD_LEN);
        x.set_redelivered();
        x.len_flags |= ACKED;
        assert_eq!(
            (x.record_len(), x.is_acked(), x.is_redelivered()),
            (MAX_RECORD_LEN, true, true)
        );
        let (o, s, p) = (x.offset, x.segment, x.position);
        assert_eq!((o, s, p), (u64::MAX - 1, 7, u32::MAX));
    }

    #[test]
    fn push_requires_increasing_offsets() {
        let mut q = QueueIndex::new();
        assert!(q.push(e(1)));
        assert!(!q.push(e(1)));
        assert!(!q.push(e(0)));
        assert!(q.push(e(5)));
        assert_eq!(q.len(), 2);
        assert!(q.insert(e(3)));
        assert!(!q.insert(e(3)));
        assert_eq!(
            q.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
    }

    #[test]
    fn acks_in_and_out_of_order() {
        let mut q = QueueIndex::new();
        for i in 0..10 {
            q.push(e(i));
        }
        assert!(q.ack(5).is_some());
        assert!(q.ack(5).is_none(), "double ack must not release twice");
        assert!(q.get(5).is_none());
        assert!(q.ack(0).is_some());
        assert!(q.ack(1).is_some());
        assert_eq!(q.len(), 7);
        assert_eq!({ q.entries.front().unwrap().offset }, 2);
        assert!(q.ack(100).is_none());
        assert_eq!(
            q.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![2, 3, 4, 6, 7, 8, 9]
        );
    }

    #[test]
    fn tombstones_are_compacted() {
        let mut q = QueueIndex::new();
        for i in 0..10_000 {
            q.push(e(i));
        }
        // Keep the head unacked so nothing pops off the front.
        for i in 1..10_000 {
            q.ack(i);
        }
        assert_eq!(q.len(), 1);
        assert!(q.entries.len() <= COMPACT_MIN_TOMBSTONES + 2);
    }

    #[test]
    fn pop_back_undoes_appends() {
        let mut q = QueueIndex::new();
        for i in 0..5 {
            q.push(e(i));
        }
        q.ack(4);
        let undone = q.pop_back_while(|e| e.offset >= 3);
        assert_eq!(undone.len(), 2);
        assert_eq!(q.len(), 3);
        assert_eq!(q.last_offset(), Some(2));
    }
}
