//! Low-level primitives shared by the hand-written and the generated code: a bounds-checked,
//! zero-copy reader over [`Bytes`] and the matching writers.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::WireError;
use crate::strings::{LongString, ShortString};
use crate::table::FieldTable;

/// A cursor over a frame payload. Every read is checked against the remaining input; slices
/// are taken with [`Bytes::slice`], so strings and blobs share the receive buffer.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    context: &'static str,
}

impl<'a> Reader<'a> {
    /// `context` names what is being decoded; it ends up in [`WireError::Truncated`].
    pub fn new(buf: &'a Bytes, context: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            context,
        }
    }

    /// Changes what [`WireError::Truncated`] / [`WireError::TrailingBytes`] will name.
    pub fn set_context(&mut self, context: &'static str) {
        self.context = context;
    }

    /// Octets not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self) -> WireError {
        WireError::Truncated {
            context: self.context,
        }
    }

    /// Takes the next `n` octets as a zero-copy slice.
    pub fn take(&mut self, n: usize) -> Result<Bytes, WireError> {
        if n > self.remaining() {
            return Err(self.truncated());
        }
        let start = self.pos;
        self.pos += n;
        Ok(self.buf.slice(start..self.pos))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.get(..N))
            .ok_or_else(|| self.truncated())?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        self.pos += N;
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }

    pub fn i8(&mut self) -> Result<i8, WireError> {
        self.array().map(i8::from_be_bytes)
    }

    pub fn i16(&mut self) -> Result<i16, WireError> {
        self.array().map(i16::from_be_bytes)
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        self.array().map(i32::from_be_bytes)
    }

    pub fn i64(&mut self) -> Result<i64, WireError> {
        self.array().map(i64::from_be_bytes)
    }

    pub fn f32(&mut self) -> Result<f32, WireError> {
        self.array().map(f32::from_be_bytes)
    }

    pub fn f64(&mut self) -> Result<f64, WireError> {
        self.array().map(f64::from_be_bytes)
    }

    /// A `u32`-length-prefixed blob, bounded by the remaining input.
    pub fn long_bytes(&mut self) -> Result<Bytes, WireError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// `shortstr`: one length octet, then that many octets of UTF-8.
    pub fn shortstr(&mut self) -> Result<ShortString, WireError> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        ShortString::from_utf8_bytes(bytes)
    }

    /// `longstr`: `u32` length, then that many arbitrary octets.
    pub fn longstr(&mut self) -> Result<LongString, WireError> {
        self.long_bytes().map(LongString)
    }

    /// `table`: `u32` byte length, then the field-value pairs.
    pub fn table(&mut self) -> Result<FieldTable, WireError> {
        let bytes = self.long_bytes()?;
        crate::table::decode_table_body(&bytes, 0)
    }

    /// Errors unless every octet has been consumed.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(WireError::TrailingBytes {
                context: self.context,
                count,
            }),
        }
    }
}

/// Writes a `shortstr`. Fails (writing nothing) if it is longer than 255 bytes.
pub fn put_shortstr(out: &mut BytesMut, s: &[u8]) -> Result<(), WireError> {
    let len = u8::try_from(s.len()).map_err(|_| WireError::ShortStringTooLong(s.len()))?;
    out.put_u8(len);
    out.put_slice(s);
    Ok(())
}

/// Writes a `u32`-length-prefixed blob (`longstr`, `'x'` byte array).
pub fn put_long_bytes(out: &mut BytesMut, s: &[u8]) -> Result<(), WireError> {
    let len = u32::try_from(s.len()).map_err(|_| WireError::LongValueTooLong(s.len()))?;
    out.put_u32(len);
    out.put_slice(s);
    Ok(())
}

/// Writes a `longstr`.
pub fn put_longstr(out: &mut BytesMut, s: &LongString) -> Result<(), WireError> {
    put_long_bytes(out, s.as_bytes())
}

/// Writes a `table` (length-prefixed).
pub fn put_table(out: &mut BytesMut, t: &FieldTable) -> Result<(), WireError> {
    crate::table::encode_table_prefixed(out, t)
}

/// Runs `f` against `out`; if it fails, `out` is restored to its previous length so that a
/// failed encode never leaves half a value behind.
pub fn atomically(
    out: &mut BytesMut,
    f: impl FnOnce(&mut BytesMut) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let start = out.len();
    let result = f(out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Size of a `shortstr` on the wire.
pub fn shortstr_size(s: &ShortString) -> usize {
    1 + s.len()
}

/// Size of a `longstr` on the wire.
pub fn longstr_size(s: &LongString) -> usize {
    4 + s.0.len()
}

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
    fn reader_bounds() {
        let b = Bytes::from_static(&[0, 1, 0, 0, 0, 2, 0xAB]);
        let mut r = Reader::new(&b, "test");
        assert_eq!(r.u16().unwrap(), 1);
        assert_eq!(r.u32().unwrap(), 2);
        assert_eq!(r.remaining(), 1);
        assert!(r.finish().is_err());
        assert_eq!(
            r.u16().unwrap_err(),
            WireError::Truncated { context: "test" }
        );
        // a failed read consumes nothing
        assert_eq!(r.u8().unwrap(), 0xAB);
        assert!(r.finish().is_ok());
        assert!(r.u8().is_err());
    }

    #[test]
    fn long_bytes_length_past_end() {
        let b = Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2]);
        let mut r = Reader::new(&b, "blob");
        assert!(matches!(r.long_bytes(), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn shortstr_zero_copy() {
        let b = Bytes::from(vec![3, b'a', b'b', b'c', 9]);
        let mut r = Reader::new(&b, "s");
        let s = r.shortstr().unwrap();
        assert_eq!(s.as_str(), "abc");
        assert_eq!(s.as_bytes().as_ptr(), b[1..].as_ptr());
    }

    #[test]
    fn put_shortstr_rejects_long() {
        let mut out = BytesMut::new();
        let long = vec![b'a'; 256];
        assert_eq!(
            put_shortstr(&mut out, &long),
            Err(WireError::ShortStringTooLong(256))
        );
        assert!(out.is_empty());
        put_shortstr(&mut out, &long[..255]).unwrap();
        assert_eq!(out.len(), 256);
        assert_eq!(out[0], 255);
    }

    #[test]
    fn atomically_rolls_back() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let r = atomically(&mut out, |o| {
            o.put_slice(b"partial");
            Err(WireError::InvalidUtf8)
        });
        assert!(r.is_err());
        assert_eq!(&out[..], b"keep");
    }
}
