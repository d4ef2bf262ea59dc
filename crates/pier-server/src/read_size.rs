//! How much a connection asks of each socket read: shared by the AMQP and stream readers.
//!
//! A busy connection reads more at once (fewer wake-ups per frame, and a buffer whose
//! frames are still referenced is replaced less often: the frame begun at its end is copied
//! into the next one); an idle one keeps its reads small (memory per connection).

use bytes::BytesMut;

/// The size of the next read: doubles (up to `max`) after a read that filled the room it
/// had, halves (down to `min`) after one that brought less than a quarter of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadSize {
    size: usize,
    min: usize,
    max: usize,
}

impl ReadSize {
    pub(crate) fn new(min: usize, max: usize) -> ReadSize {
        ReadSize {
            size: min,
            min,
            max: max.max(min),
        }
    }

    /// Makes room in `buf` for the next read; the room to pass to [`ReadSize::read`].
    pub(crate) fn reserve(&self, buf: &mut BytesMut) -> usize {
        let room = self.size.max(buf.capacity() - buf.len());
        buf.reserve(self.size);
        room
    }

    /// A read brought `n` bytes into `room` (from [`ReadSize::reserve`]).
    pub(crate) fn read(&mut self, n: usize, room: usize) {
        if n >= room {
            self.size = (self.size * 2).min(self.max);
        } else if n < self.size / 4 {
            self.size = (self.size / 2).max(self.min);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_reads_grow_to_the_max_and_small_ones_shrink_to_the_min() {
        let mut r = ReadSize::new(4, 32);
        let mut buf = BytesMut::new();
        let mut sizes = Vec::new();
        for _ in 0..5 {
            let room = r.reserve(&mut buf);
            assert!(buf.capacity() - buf.len() >= r.size);
            r.read(room, room);
            sizes.push(r.size);
        }
        assert_eq!(sizes, [8, 16, 32, 32, 32]);
        // A read of a quarter or more keeps the size; less halves it, down to the min.
        r.read(8, 1 << 20);
        assert_eq!(r.size, 32);
        for want in [16, 8, 4, 4] {
            r.read(1, 1 << 20);
            assert_eq!(r.size, want);
        }
    }
}
