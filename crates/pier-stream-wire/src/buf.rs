//! A bounds-checked, zero-copy big-endian reader over [`Bytes`], shared by the three codecs.
//!
//! Every read is checked against the remaining input; blobs are [`Bytes::slice`]s of the
//! input, so message bodies and chunk payloads share the receive buffer. A failed read
//! reports [`Short`], which each codec turns into its own typed error.

use bytes::Bytes;

/// A read ran past the end of its input. `context` names the field being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Short {
    pub context: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a Bytes) -> Self {
        Reader {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    /// A reader over `buf[from..]`.
    pub fn at(buf: &'a Bytes, from: usize) -> Self {
        Reader {
            buf,
            pos: from.min(buf.len()),
            end: buf.len(),
        }
    }

    pub fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next `n` octets as a zero-copy slice.
    pub fn take(&mut self, n: usize, context: &'static str) -> Result<Bytes, Short> {
        if n > self.remaining() {
            return Err(Short { context });
        }
        let start = self.pos;
        self.pos += n;
        Ok(self.buf.slice(start..self.pos))
    }

    /// The next `n` octets, borrowed.
    pub fn take_slice(&mut self, n: usize, context: &'static str) -> Result<&'a [u8], Short> {
        if n > self.remaining() {
            return Err(Short { context });
        }
        let start = self.pos;
        self.pos += n;
        let buf: &'a Bytes = self.buf;
        buf.get(start..self.pos).ok_or(Short { context })
    }

    /// Everything left, as a zero-copy slice.
    pub fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.end;
        self.buf.slice(start..self.end)
    }

    fn array<const N: usize>(&mut self, context: &'static str) -> Result<[u8; N], Short> {
        let bytes = self.take_slice(N, context)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn peek_u8(&self) -> Option<u8> {
        if self.pos < self.end {
            self.buf.get(self.pos).copied()
        } else {
            None
        }
    }

    pub fn u8(&mut self, context: &'static str) -> Result<u8, Short> {
        let [b] = self.array::<1>(context)?;
        Ok(b)
    }

    pub fn u16(&mut self, context: &'static str) -> Result<u16, Short> {
        self.array(context).map(u16::from_be_bytes)
    }

    pub fn i16(&mut self, context: &'static str) -> Result<i16, Short> {
        self.array(context).map(i16::from_be_bytes)
    }

    pub fn u32(&mut self, context: &'static str) -> Result<u32, Short> {
        self.array(context).map(u32::from_be_bytes)
    }

    pub fn i32(&mut self, context: &'static str) -> Result<i32, Short> {
        self.array(context).map(i32::from_be_bytes)
    }

    pub fn u64(&mut self, context: &'static str) -> Result<u64, Short> {
        self.array(context).map(u64::from_be_bytes)
    }

    pub fn i64(&mut self, context: &'static str) -> Result<i64, Short> {
        self.array(context).map(i64::from_be_bytes)
    }

    pub fn bytes<const N: usize>(&mut self, context: &'static str) -> Result<[u8; N], Short> {
        self.array(context)
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320): what Erlang's `erlang:crc32/1`
/// computes and what Osiris stores in a chunk header.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The same CRC, a byte at a time (the reference the fast one is checked against).
#[cfg(test)]
fn crc32_table(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        let idx = usize::from((crc as u8) ^ b);
        // CRC_TABLE has 256 entries and idx < 256.
        let entry = CRC_TABLE.get(idx).copied().unwrap_or(0);
        crc = (crc >> 8) ^ entry;
    }
    !crc
}

// Evaluated at compile time: an out-of-bounds index would fail the build, not a peer's frame.
#[cfg(test)]
#[allow(clippy::indexing_slicing)]
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_values() {
        // erlang:crc32(<<"123456789">>) =:= 16#CBF43926 (the standard check value).
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        let long: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for n in [1, 7, 64, 1000, 10_000] {
            assert_eq!(crc32(&long[..n]), crc32_table(&long[..n]));
        }
    }

    #[test]
    fn reader_bounds() {
        let b = Bytes::from_static(&[0, 1, 2, 3, 4]);
        let mut r = Reader::new(&b);
        assert_eq!(r.u16("a").unwrap(), 1);
        assert_eq!(r.remaining(), 3);
        assert!(r.u32("b").is_err());
        // a failed read consumes nothing
        assert_eq!(r.remaining(), 3);
        assert_eq!(&r.take(2, "c").unwrap()[..], &[2, 3]);
        assert_eq!(r.rest(), Bytes::from_static(&[4]));
        assert!(r.is_empty());
    }
}
