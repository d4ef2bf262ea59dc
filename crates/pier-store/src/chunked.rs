//! A double-ended queue of small `Copy` records stored in fixed-size chunks.
//!
//! Long queues keep one small record per message (the store's 20-byte index entry, the queue
//! engine's 16-byte paged entry). In a `VecDeque` those cost up to twice their size, because
//! its capacity doubles: 5 million 20-byte entries sit in room for 8.4 million (33 B each),
//! and every doubling briefly holds the old and the new buffer. Here the records live in
//! chunks of at most [`CHUNK_BYTES`], allocated as the queue grows and freed as it drains, so
//! the slack is at most one chunk at each end whatever the length, growth never copies more
//! than one chunk, and a drained queue gives its memory back without shrinking heuristics.
//! A queue with a few records has one small chunk that grows like a `Vec`, so ten thousand
//! nearly empty queues do not each pay a whole chunk.
//!
//! Why 14 KiB: it is jemalloc's largest small size class. From 16 KiB up an allocation is
//! "large", and with jemalloc's default `cache_oblivious` every large allocation is given one
//! extra page (to randomise its cache index): 16 KiB chunks cost 20 KiB, 25% more per record,
//! which is what a 2M-message backlog measured before this was sized.
//!
//! Every chunk but the first and last is full, which keeps indexing (and so binary search)
//! O(1) per step. Inserting in the middle is rare (the store's recovery of out-of-order
//! records) and rebuilds the chunks.

use std::collections::VecDeque;

/// Bytes of records per chunk at most (see the module docs).
pub const CHUNK_BYTES: usize = 14 * 1024;

#[derive(Clone)]
pub struct ChunkedDeque<T: Copy> {
    /// Each chunk holds at most `Self::CHUNK` records; all but the first and the last hold
    /// exactly that many.
    chunks: VecDeque<Vec<T>>,
    /// Records already taken off the front of the first chunk.
    head: usize,
    len: usize,
}

impl<T: Copy> Default for ChunkedDeque<T> {
    fn default() -> Self {
        ChunkedDeque {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
        }
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for ChunkedDeque<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Copy + PartialEq> PartialEq for ChunkedDeque<T> {
    /// Equal contents, however they are chunked.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T: Copy + Eq> Eq for ChunkedDeque<T> {}

impl<T: Copy> FromIterator<T> for ChunkedDeque<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut d = ChunkedDeque::default();
        for x in iter {
            d.push_back(x);
        }
        d
    }
}

impl<T: Copy> ChunkedDeque<T> {
    /// Records per chunk.
    pub const CHUNK: usize = {
        let size = std::mem::size_of::<T>();
        if size == 0 || size >= CHUNK_BYTES {
            1
        } else {
            CHUNK_BYTES / size
        }
    };

    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records the allocated chunks have room for (what the allocator really gave).
    pub fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }

    pub fn push_back(&mut self, x: T) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < Self::CHUNK => {
                if c.len() == c.capacity() {
                    // Only a queue's single chunk starts small; never past a chunk's size.
                    let want = (c.capacity() * 2).max(4).min(Self::CHUNK);
                    c.reserve_exact(want - c.len());
                }
                c.push(x);
            }
            _ => {
                // The first chunk of a queue grows like a Vec; later ones are whole at once.
                let mut c = Vec::with_capacity(if self.chunks.is_empty() {
                    4.min(Self::CHUNK)
                } else {
                    Self::CHUNK
                });
                c.push(x);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front()?;
        let x = *first.get(self.head)?;
        self.head += 1;
        self.len -= 1;
        if self.head >= first.len() {
            self.chunks.pop_front();
            self.head = 0;
        }
        Some(x)
    }

    pub fn pop_back(&mut self) -> Option<T> {
        let single = self.chunks.len() == 1;
        let last = self.chunks.back_mut()?;
        let x = last.pop()?;
        self.len -= 1;
        if last.is_empty() || (single && last.len() <= self.head) {
            self.chunks.pop_back();
            if single {
                self.head = 0;
            }
        }
        Some(x)
    }

    pub fn front(&self) -> Option<&T> {
        self.chunks.front()?.get(self.head)
    }

    pub fn back(&self) -> Option<&T> {
        if self.len == 0 {
            return None;
        }
        self.chunks.back()?.last()
    }

    /// Where record `i` (from the front) is: (chunk, position in it).
    fn locate(&self, i: usize) -> Option<(usize, usize)> {
        if i >= self.len {
            return None;
        }
        let first = self.chunks.front()?.len() - self.head;
        if i < first {
            return Some((0, self.head + i));
        }
        let rest = i - first;
        Some((1 + rest / Self::CHUNK, rest % Self::CHUNK))
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        let (c, p) = self.locate(i)?;
        self.chunks.get(c)?.get(p)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        let (c, p) = self.locate(i)?;
        self.chunks.get_mut(c)?.get_mut(p)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        let head = self.head;
        self.chunks
            .iter()
            .enumerate()
            .flat_map(move |(k, c)| c.get(if k == 0 { head } else { 0 }..).unwrap_or(&[]))
    }

    pub fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut T> + '_ {
        let head = self.head;
        self.chunks.iter_mut().enumerate().flat_map(move |(k, c)| {
            c.get_mut(if k == 0 { head } else { 0 }..)
                .unwrap_or(&mut [])
        })
    }

    /// Binary search over records sorted by `key` (as `slice::binary_search_by_key`).
    pub fn binary_search_by_key<K: Ord>(
        &self,
        key: &K,
        f: impl Fn(&T) -> K,
    ) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0usize, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(x) = self.get(mid) else {
                return Err(lo);
            };
            match f(x).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// Inserts at position `at` (at most `len`). O(n): rebuilds the chunks.
    pub fn insert(&mut self, at: usize, x: T) {
        if at >= self.len {
            self.push_back(x);
            return;
        }
        let old = std::mem::take(self);
        for (i, y) in old.iter().enumerate() {
            if i == at {
                self.push_back(x);
            }
            self.push_back(*y);
        }
    }

    /// Keeps the records for which `keep` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let old = std::mem::take(self);
        for y in old.iter() {
            if keep(y) {
                self.push_back(*y);
            }
        }
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        PushBack(u32),
        PopFront,
        PopBack,
        Insert(usize, u32),
        Retain(u32),
        SetAt(usize, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<u32>().prop_map(Op::PushBack),
            3 => Just(Op::PopFront),
            1 => Just(Op::PopBack),
            1 => (any::<usize>(), any::<u32>()).prop_map(|(a, x)| Op::Insert(a, x)),
            1 => (2u32..5).prop_map(Op::Retain),
            1 => (any::<usize>(), any::<u32>()).prop_map(|(a, x)| Op::SetAt(a, x)),
        ]
    }

    proptest! {
        /// Behaves as a `VecDeque` under any mix of operations, across chunk boundaries.
        #[test]
        fn behaves_as_a_vecdeque(ops in proptest::collection::vec((op(), 1usize..3000), 1..40)) {
            let mut d = ChunkedDeque::new();
            let mut m: VecDeque<u32> = VecDeque::new();
            for (op, n) in ops {
                for k in 0..n {
                    match &op {
                        Op::PushBack(x) => { d.push_back(x ^ k as u32); m.push_back(x ^ k as u32); }
                        Op::PopFront => prop_assert_eq!(d.pop_front(), m.pop_front()),
                        Op::PopBack => prop_assert_eq!(d.pop_back(), m.pop_back()),
                        Op::Insert(at, x) if k == 0 => {
                            let at = if m.is_empty() { 0 } else { at % (m.len() + 1) };
                            d.insert(at, *x);
                            m.insert(at, *x);
                        }
                        Op::Retain(r) if k == 0 => {
                            d.retain(|x| x % r != 0);
                            m.retain(|x| x % r != 0);
                        }
                        Op::SetAt(at, x) if k == 0 && !m.is_empty() => {
                            let at = at % m.len();
                            *d.get_mut(at).unwrap() = *x;
                            m[at] = *x;
                        }
                        _ => {}
                    }
                }
                prop_assert_eq!(d.len(), m.len());
                prop_assert_eq!(d.front(), m.front());
                prop_assert_eq!(d.back(), m.back());
                prop_assert!(d.iter().eq(m.iter()));
                prop_assert!(d.iter().rev().eq(m.iter().rev()));
                if !m.is_empty() {
                    for i in [0, m.len() / 2, m.len() - 1] {
                        prop_assert_eq!(d.get(i), m.get(i));
                    }
                }
                prop_assert!(d.get(m.len()).is_none());
                // Slack: at most one partly used chunk at each end.
                prop_assert!(d.capacity() <= m.len() + 2 * ChunkedDeque::<u32>::CHUNK);
            }
        }
    }

    #[test]
    fn binary_search_finds_every_record() {
        let d: ChunkedDeque<u64> = (0..5000u64).map(|x| x * 2).collect();
        let mut d2 = d.clone();
        for _ in 0..700 {
            d2.pop_front();
        }
        for (dd, base) in [(&d, 0u64), (&d2, 700)] {
            for i in base..5000 {
                assert_eq!(
                    dd.binary_search_by_key(&(i * 2), |x| *x),
                    Ok((i - base) as usize)
                );
                assert_eq!(
                    dd.binary_search_by_key(&(i * 2 + 1), |x| *x),
                    Err((i - base) as usize + 1)
                );
            }
        }
    }

    #[test]
    fn a_short_queue_holds_a_short_chunk() {
        let d: ChunkedDeque<[u8; 20]> = (0..3u8).map(|x| [x; 20]).collect();
        assert!(d.capacity() <= 4);
        let d: ChunkedDeque<[u8; 20]> = (0..100u8).map(|x| [x; 20]).collect();
        assert!(d.capacity() <= 128);
    }

    #[test]
    fn a_drained_deque_holds_no_memory() {
        let mut d: ChunkedDeque<u64> = (0..100_000u64).collect();
        assert!(d.capacity() <= 100_000 + ChunkedDeque::<u64>::CHUNK);
        const { assert!(ChunkedDeque::<u64>::CHUNK * 8 <= CHUNK_BYTES) };
        while d.pop_front().is_some() {}
        assert_eq!(d.capacity(), 0);
        assert!(d.is_empty());
    }
}
