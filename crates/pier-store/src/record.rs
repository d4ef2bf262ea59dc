//! Record framing shared by every file of the store (segments, ack files, the queue registry).
//!
//! ```text
//!  0        4          8      9
//!  +--------+----------+------+---------------------+
//!  | len    | crc32c   | type | payload (len-1 B)   |
//!  +--------+----------+------+---------------------+
//!   u32 LE    u32 LE     u8
//!  len   = 1 + payload length (covers type + payload; never 0)
//!  crc32c over: len (4 bytes LE) ‖ type ‖ payload
//! ```
//!
//! The checksum covers the length too, so a torn or flipped length is caught like any other
//! damage. A zero length is always invalid: it is what a pre-zeroed or sparse tail reads as.
//!
//! [`scan`] walks a buffer of records. On damage it looks for the next position where a whole,
//! checksummed record starts (resynchronisation): if one exists the damage was in the middle of
//! the file (a corrupt region, skipped); if none does, it was a torn tail (truncated by the
//! caller). Nothing is ever returned whose checksum did not verify.

/// Bytes before the payload: len (4) + crc (4) + type (1).
pub const HEADER_LEN: usize = 9;

/// Record types. One namespace for all files so a record can never be misread as another kind.
pub mod kind {
    /// A message with its queue references, references first (segments of store format 1;
    /// read, no longer written).
    pub const MESSAGE_V1: u8 = 0x01;
    /// A batch of acknowledgements of references in one segment (ack files).
    pub const ACKS: u8 = 0x02;
    /// A message with its queue references, references last (segments of store format 2:
    /// the publisher encodes and checksums everything before them).
    pub const MESSAGE: u8 = 0x03;
    /// Queue registry: a queue name got a disk id.
    pub const QUEUE_ADDED: u8 = 0x10;
    /// Queue registry: a disk id is dead (queue deleted or purged).
    pub const QUEUE_REMOVED: u8 = 0x11;
    /// Queue registry: the highest offset handed to a consumer.
    pub const DELIVERED: u8 = 0x12;
    /// Queue registry: the next disk id to hand out (kept across compactions).
    pub const NEXT_ID: u8 = 0x13;
    /// Queue registry: how often a message came back to its queue (a quorum queue's
    /// delivery count, kept across restarts).
    pub const RETURNED: u8 = 0x14;
    /// Queue registry: a message is a kept (at-least-once) dead letter.
    pub const DEAD_LETTER: u8 = 0x15;
}

/// Size on disk of a record whose payload is `payload_len` bytes.
pub fn encoded_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

/// Appends one record to `out`; `write_payload` writes the payload at the end of `out`.
pub fn encode(out: &mut Vec<u8>, ty: u8, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.push(ty);
    write_payload(out);
    let len = u32::try_from(out.len() - start - 8).unwrap_or(u32::MAX);
    let len_bytes = len.to_le_bytes();
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&len_bytes),
        out.get(start + 8..).unwrap_or_default(),
    );
    let header = len_bytes.into_iter().chain(crc.to_le_bytes());
    for (dst, src) in out.iter_mut().skip(start).zip(header) {
        *dst = src;
    }
}

/// What sits at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole record whose checksum verified.
    Record {
        ty: u8,
        payload: &'a [u8],
        /// Header + payload.
        total: usize,
    },
    /// Not a valid record here (bad length, bad checksum, unknown type, or cut short).
    Invalid,
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Parses the record at the front of `buf`. `valid_type` rejects types this file never holds,
/// `max_len` bounds the length field (so garbage cannot make us hash gigabytes).
pub fn parse(buf: &[u8], max_len: usize, valid_type: impl Fn(u8) -> bool) -> Parsed<'_> {
    let (Some(len), Some(crc)) = (read_u32(buf, 0), read_u32(buf, 4)) else {
        return Parsed::Invalid;
    };
    let len = len as usize;
    if len == 0 || len > max_len.saturating_add(1) {
        return Parsed::Invalid;
    }
    let Some(body) = buf.get(8..8 + len) else {
        return Parsed::Invalid;
    };
    let Some((&ty, payload)) = body.split_first() else {
        return Parsed::Invalid;
    };
    if !valid_type(ty) {
        return Parsed::Invalid;
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&(len as u32).to_le_bytes()), body);
    if actual != crc {
        return Parsed::Invalid;
    }
    Parsed::Record {
        ty,
        payload,
        total: 8 + len,
    }
}

/// The result of scanning a buffer of records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Where valid data ends: the file should be truncated here (equal to the buffer length when
    /// the tail is intact).
    pub valid_end: usize,
    /// Damaged regions `[start, end)` in the middle of the buffer that were skipped.
    pub corrupt: Vec<(usize, usize)>,
    /// Bytes after `valid_end` (a torn tail), 0 when none.
    pub torn_bytes: usize,
}

/// Walks the records of `buf` from `start`, calling `on_record(position, type, payload)` for
/// every record whose checksum verified, in order.
pub fn scan(
    buf: &[u8],
    start: usize,
    max_len: usize,
    valid_type: impl Fn(u8) -> bool + Copy,
    mut on_record: impl FnMut(usize, u8, &[u8]),
) -> ScanOutcome {
    let mut out = ScanOutcome::default();
    let mut pos = start;
    loop {
        let Some(rest) = buf.get(pos..) else {
            out.valid_end = pos.min(buf.len());
            return out;
        };
        if rest.is_empty() {
            out.valid_end = pos;
            return out;
        }
        if let Parsed::Record { ty, payload, total } = parse(rest, max_len, valid_type) {
            on_record(pos, ty, payload);
            pos += total;
            continue;
        }
        // Damage at `pos`. Is there a valid record further on?
        match resync(buf, pos + 1, max_len, valid_type) {
            Some(next) => {
                out.corrupt.push((pos, next));
                pos = next;
            }
            None => {
                out.valid_end = pos;
                out.torn_bytes = buf.len() - pos;
                return out;
            }
        }
    }
}

/// The first position at or after `from` where a whole valid record starts. Cheap checks (zero
/// length, length past the end, unknown type) come before the checksum, so zero-filled tails
/// and random bytes are skipped quickly.
fn resync(
    buf: &[u8],
    from: usize,
    max_len: usize,
    valid_type: impl Fn(u8) -> bool + Copy,
) -> Option<usize> {
    let last = buf.len().checked_sub(HEADER_LEN)?;
    (from..=last).find(|&p| {
        buf.get(p..)
            .is_some_and(|rest| matches!(parse(rest, max_len, valid_type), Parsed::Record { .. }))
    })
}

/// A bounds-checked little-endian reader over a payload; every accessor returns `None` past
/// the end so decoding garbage can never panic.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    /// Position of the next byte, relative to the start of the payload.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.bytes(1)?.first().copied()
    }

    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(2)?.try_into().ok()?))
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn any(_: u8) -> bool {
        true
    }

    fn rec(ty: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, ty, |o| o.extend_from_slice(payload));
        v
    }

    #[test]
    fn round_trip() {
        let v = rec(kind::MESSAGE, b"hello");
        assert_eq!(v.len(), encoded_len(5));
        match parse(&v, 1 << 20, any) {
            Parsed::Record { ty, payload, total } => {
                assert_eq!(
                    (ty, payload, total),
                    (kind::MESSAGE, &b"hello"[..], v.len())
                );
            }
            Parsed::Invalid => panic!("valid record rejected"),
        }
    }

    #[test]
    fn empty_payload_is_valid_zero_length_is_not() {
        let v = rec(kind::ACKS, b"");
        assert!(matches!(parse(&v, 16, any), Parsed::Record { .. }));
        assert_eq!(parse(&[0u8; 32], 16, any), Parsed::Invalid);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let v = rec(kind::MESSAGE, b"some payload bytes");
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut w = v.clone();
                w[i] ^= 1 << bit;
                assert_eq!(parse(&w, 1 << 20, any), Parsed::Invalid, "flip {i}:{bit}");
            }
        }
    }

    #[test]
    fn scan_skips_middle_damage_and_truncates_torn_tail() {
        let mut buf = Vec::new();
        for i in 0..5u8 {
            buf.extend(rec(kind::MESSAGE, &[i; 20]));
        }
        let rlen = encoded_len(20);
        buf[rlen * 2 + 3] ^= 0xff; // damage record 2's crc
        buf.extend(&rec(kind::MESSAGE, &[9; 20])[..15]); // torn record
        let mut seen = Vec::new();
        let out = scan(&buf, 0, 1 << 20, any, |pos, _, p| seen.push((pos, p[0])));
        assert_eq!(
            seen.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![0, 1, 3, 4]
        );
        assert_eq!(out.corrupt, vec![(rlen * 2, rlen * 3)]);
        assert_eq!(out.valid_end, rlen * 5);
        assert_eq!(out.torn_bytes, 15);
    }

    #[test]
    fn zero_tail_is_torn() {
        let mut buf = rec(kind::MESSAGE, b"x");
        buf.extend([0u8; 4096]);
        let out = scan(&buf, 0, 1 << 20, any, |_, _, _| {});
        assert_eq!(out.valid_end, encoded_len(1));
        assert_eq!(out.torn_bytes, 4096);
        assert!(out.corrupt.is_empty());
    }

    #[test]
    fn reader_never_reads_past_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0201));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(3));
        assert!(r.is_empty());
        assert_eq!(r.bytes(usize::MAX), None);
    }
}
