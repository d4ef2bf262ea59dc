//! Data representations of MQTT (3.1.1 §1.5, 5.0 §1.5): a bounds-checked zero-copy reader
//! over one packet, variable byte integers, UTF-8 strings and binary data, and their writers.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// The largest value a variable byte integer can carry (four octets).
pub const MAX_VARINT: u32 = 268_435_455;

/// Reads one packet's variable header and payload. Every read is checked against the
/// bytes left; blobs are [`Bytes::slice`]s of the input.
#[derive(Debug)]
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

    pub fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// A reader over the next `n` octets (a property block); this one skips past them.
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        let r = Reader {
            buf: self.buf,
            pos: self.pos,
            end: self.pos + n,
        };
        self.pos += n;
        Ok(r)
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        let start = self.pos;
        self.pos += n;
        Ok(self.buf.slice(start..self.pos))
    }

    fn take_slice(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        let start = self.pos;
        self.pos += n;
        let buf: &'a Bytes = self.buf;
        buf.get(start..self.pos).ok_or(DecodeError::Truncated(what))
    }

    /// Everything left, zero-copy.
    pub fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.end;
        self.buf.slice(start..self.end)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        match self.take_slice(1, what)? {
            [b] => Ok(*b),
            _ => Err(DecodeError::Truncated(what)),
        }
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        match self.take_slice(2, what)? {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(DecodeError::Truncated(what)),
        }
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        match self.take_slice(4, what)? {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(DecodeError::Truncated(what)),
        }
    }

    /// A variable byte integer (§1.5.5): at most four octets.
    pub fn varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8(what)?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedVarInt(what))
    }

    /// Two-octet length, then that many octets (§1.5.6 binary data), zero-copy.
    pub fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    /// A UTF-8 encoded string (§1.5.4): well-formed UTF-8 (so no surrogates) and no U+0000.
    pub fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let n = self.u16(what)?;
        let raw = self.take_slice(usize::from(n), what)?;
        utf8(raw, what).map(str::to_owned)
    }
}

/// Checks the MQTT rules for a UTF-8 encoded string: well-formed UTF-8 (which excludes the
/// surrogates U+D800..U+DFFF and over-long forms) without U+0000. Control characters and
/// non-characters are a SHOULD NOT in the spec and are accepted, as RabbitMQ and mosquitto
/// accept them.
pub(crate) fn utf8<'b>(raw: &'b [u8], what: &'static str) -> Result<&'b str, DecodeError> {
    let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8(what))?;
    if raw.contains(&0) {
        return Err(DecodeError::NullCharacter(what));
    }
    Ok(s)
}

/// Octets a variable byte integer takes.
pub(crate) fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(
    out: &mut BytesMut,
    v: u32,
    what: &'static str,
) -> Result<(), EncodeError> {
    if v > MAX_VARINT {
        return Err(EncodeError::TooLong {
            what,
            len: v as usize,
        });
    }
    let mut x = v;
    loop {
        let mut b = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if x == 0 {
            return Ok(());
        }
    }
}

pub(crate) fn put_binary(
    out: &mut BytesMut,
    b: &[u8],
    what: &'static str,
) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::TooLong { what, len: b.len() })?;
    out.put_u16(n);
    out.put_slice(b);
    Ok(())
}

/// Writes a UTF-8 string; refuses U+0000 (a peer would reject it as malformed).
pub(crate) fn put_string(
    out: &mut BytesMut,
    s: &str,
    what: &'static str,
) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::NullCharacter(what));
    }
    put_binary(out, s.as_bytes(), what)
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

    fn enc(v: u32) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_varint(&mut b, v, "v").unwrap();
        b.to_vec()
    }

    #[test]
    fn varint_spec_table() {
        // The boundaries of table 1.1 (3.1.1) / 1-1 (5.0).
        for (v, bytes) in [
            (0, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xff, 0xff, 0x7f]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (268_435_455, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            assert_eq!(enc(v), bytes, "{v}");
            assert_eq!(varint_len(v), bytes.len());
            let b = Bytes::from(bytes);
            assert_eq!(Reader::new(&b).varint("v").unwrap(), v);
        }
        assert!(put_varint(&mut BytesMut::new(), MAX_VARINT + 1, "v").is_err());
        let five = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(
            Reader::new(&five).varint("v"),
            Err(DecodeError::MalformedVarInt("v"))
        );
    }

    #[test]
    fn strings() {
        let ok = Bytes::from_static(b"\x00\x03a/b");
        assert_eq!(Reader::new(&ok).string("s").unwrap(), "a/b");
        let nul = Bytes::from_static(b"\x00\x03a\x00b");
        assert_eq!(
            Reader::new(&nul).string("s"),
            Err(DecodeError::NullCharacter("s"))
        );
        // U+D800 encoded as UTF-8 (ED A0 80) is not UTF-8.
        let surrogate = Bytes::from_static(b"\x00\x03\xed\xa0\x80");
        assert_eq!(
            Reader::new(&surrogate).string("s"),
            Err(DecodeError::InvalidUtf8("s"))
        );
        // The spec's example (§1.5.4.1): U+2A6D4 then U+FEFF, which must not be stripped.
        let ex = Bytes::from_static(b"\x00\x08A\xf0\xaa\x9b\x94\xef\xbb\xbf");
        assert_eq!(Reader::new(&ex).string("s").unwrap(), "A\u{2A6D4}\u{FEFF}");
        let short = Bytes::from_static(b"\x00\x05ab");
        assert_eq!(
            Reader::new(&short).string("s"),
            Err(DecodeError::Truncated("s"))
        );
        assert!(put_string(&mut BytesMut::new(), "a\0", "s").is_err());
        assert!(put_string(&mut BytesMut::new(), &"x".repeat(65_536), "s").is_err());
        assert!(put_string(&mut BytesMut::new(), &"x".repeat(65_535), "s").is_ok());
    }
}
