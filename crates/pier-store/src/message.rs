//! What the store keeps of a message, and its record payload.
//!
//! Two payload layouts exist; both are read, only the second is written:
//!
//! ```text
//!  format 2, record type 0x03 (MESSAGE, written since store format 2), little-endian:
//!  +-------+----------+-------+----+-----------+-------+----------+------+--------+------------------------------+
//!  | x_len | exchange | k_len | rk | props_len | props | body_len | body | nrefs  | refs: (disk_id u32,          |
//!  |  u8   |          |  u8   |    |    u32    |       |   u32    |      |  u16   |        offset u64) × nrefs   |
//!  +-------+----------+-------+----+-----------+-------+----------+------+--------+------------------------------+
//!  \______________ checksummed by the publisher (EncodedMessage) ____________/ \___ added by the store thread ___/
//!
//!  format 1, record type 0x01 (MESSAGE_V1, segments of store format 1): the same fields with
//!  nrefs + refs first.
//! ```
//!
//! Why the references come last (format 2): everything before them is known to the publisher,
//! so the publishing thread runs the crc32c over it ([`EncodedMessage`], over the message's
//! own buffers: no copy, no allocation); the store thread, the serial section, only copies the
//! bytes into its write buffer (the one copy a record needs anyway), appends the queue
//! references (whose disk ids only it knows) and continues the checksum over those few bytes
//! (`crc32c_append`). The record length (first field of the frame) covers the references too;
//! the publisher knows how many there will be.
//!
//! `props` are the exact content-header bytes the publisher sent (property flags + properties),
//! so a recovered message is delivered byte-for-byte as published and nothing is re-encoded.
//! One record serves every durable queue of one store the message was routed to (fan-out
//! stores the body once per store); each reference carries that queue's offset.

use bytes::Bytes;
use pier_wire::ShortString;

use crate::record::{kind, Reader};

/// The parts of a message the broker needs to deliver it again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredMessage {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    /// Encoded property flags + properties, exactly as received.
    pub raw_properties: Bytes,
    pub body: Bytes,
}

impl StoredMessage {
    pub fn new(
        exchange: ShortString,
        routing_key: ShortString,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        StoredMessage {
            exchange,
            routing_key,
            raw_properties,
            body,
        }
    }
}

/// A message record checksummed ahead of time, on the publishing thread: the crc32c of the
/// frame's length and type and of every field up to the queue references, computed over the
/// message's own buffers (nothing is copied or allocated here). A store finishes it with
/// [`EncodedMessage::finish_into`]: it copies the fields into its write buffer (the one copy
/// a record needs anyway), appends the references and continues the checksum over those few
/// bytes. Built by [`crate::StoreHandle::append`]; backends that keep messages in another form
/// read [`EncodedMessage::message`].
#[derive(Debug, Clone)]
pub struct EncodedMessage {
    message: StoredMessage,
    /// The frame's length field, None when the message cannot be framed.
    frame_len: Option<u32>,
    /// crc32c over the length field, the type and the payload bytes before the references.
    crc: u32,
    nrefs: usize,
}

impl EncodedMessage {
    /// Checksums `message` for a record with `nrefs` queue references. Never fails: a message
    /// that cannot be framed (more than 65535 references, a field over 4 GiB) is refused by
    /// the store when appended.
    pub fn new(message: StoredMessage, nrefs: usize) -> Self {
        // The frame's length field counts the type byte and the whole payload, references
        // included.
        let frame_len = payload_len(nrefs, &message).and_then(|len| u32::try_from(len + 1).ok());
        let crc = frame_len.map_or(0, |len| {
            let mut head = [0u8; 5];
            for (d, s) in head
                .iter_mut()
                .zip(len.to_le_bytes().into_iter().chain([kind::MESSAGE]))
            {
                *d = s;
            }
            fields_crc(crc32c::crc32c(&head), &message)
        });
        EncodedMessage {
            message,
            frame_len,
            crc,
            nrefs,
        }
    }

    /// The message itself (for backends that do not keep records).
    pub fn message(&self) -> &StoredMessage {
        &self.message
    }

    /// How many references the record was encoded for.
    pub fn nrefs(&self) -> usize {
        self.nrefs
    }

    /// Bytes of the whole record once finished, or None if the message cannot be framed.
    pub fn record_len(&self) -> Option<usize> {
        self.frame_len.map(|l| l as usize + 8)
    }

    /// Appends the finished record to `out`: header, fields, references, and the checksum in
    /// the header. `refs.len()` must be the `nrefs` it was encoded for (the caller checks; a
    /// mismatch writes a record whose checksum fails, never a wrong message).
    pub(crate) fn finish_into(&self, out: &mut Vec<u8>, refs: &[DiskRef]) {
        let start = out.len();
        out.reserve(self.record_len().unwrap_or(0));
        out.extend_from_slice(&self.frame_len.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.push(kind::MESSAGE);
        encode_fields(out, &self.message);
        let refs_at = out.len();
        out.extend_from_slice(&(refs.len() as u16).to_le_bytes());
        for r in refs {
            out.extend_from_slice(&r.disk_id.to_le_bytes());
            out.extend_from_slice(&r.offset.to_le_bytes());
        }
        let crc = crc32c::crc32c_append(self.crc, out.get(refs_at..).unwrap_or_default());
        for (dst, src) in out.iter_mut().skip(start + 4).zip(crc.to_le_bytes()) {
            *dst = src;
        }
    }
}

/// A reference from a message record to a queue, as written on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskRef {
    pub disk_id: u32,
    pub offset: u64,
}

/// Payload length of a message record, or None when a field cannot be framed (too many
/// references, a property block or body over 4 GiB). The same for both formats.
pub(crate) fn payload_len(nrefs: usize, m: &StoredMessage) -> Option<usize> {
    u16::try_from(nrefs).ok()?;
    u32::try_from(m.raw_properties.len()).ok()?;
    u32::try_from(m.body.len()).ok()?;
    let len = 2
        + nrefs * 12
        + 1
        + m.exchange.len()
        + 1
        + m.routing_key.len()
        + 4
        + m.raw_properties.len()
        + 4
        + m.body.len();
    // The frame's u32 length field must hold it (with the type byte).
    u32::try_from(len + 1).ok()?;
    Some(len)
}

/// The message fields, in the order both formats share.
fn encode_fields(out: &mut Vec<u8>, m: &StoredMessage) {
    // Short strings are at most 255 bytes by construction (pier-wire guarantees it).
    out.push(m.exchange.len().min(255) as u8);
    out.extend_from_slice(
        m.exchange
            .as_bytes()
            .get(..255)
            .unwrap_or(m.exchange.as_bytes()),
    );
    out.push(m.routing_key.len().min(255) as u8);
    out.extend_from_slice(
        m.routing_key
            .as_bytes()
            .get(..255)
            .unwrap_or(m.routing_key.as_bytes()),
    );
    out.extend_from_slice(&(m.raw_properties.len() as u32).to_le_bytes());
    out.extend_from_slice(&m.raw_properties);
    out.extend_from_slice(&(m.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&m.body);
}

/// Continues `crc` over the bytes [`encode_fields`] writes, without writing them.
fn fields_crc(crc: u32, m: &StoredMessage) -> u32 {
    let exchange = m.exchange.as_bytes();
    let exchange = exchange.get(..255).unwrap_or(exchange);
    let key = m.routing_key.as_bytes();
    let key = key.get(..255).unwrap_or(key);
    let mut c = Crc::new(crc);
    c.push(&[exchange.len() as u8]);
    c.push(exchange);
    c.push(&[key.len() as u8]);
    c.push(key);
    c.push(&(m.raw_properties.len() as u32).to_le_bytes());
    c.push(&m.raw_properties);
    c.push(&(m.body.len() as u32).to_le_bytes());
    c.push(&m.body);
    c.finish()
}

/// A crc32c over pieces, the small ones gathered in a stack buffer first: every
/// `crc32c_append` call has a fixed cost, and a record's header fields are a handful of
/// one- to four-byte pieces.
struct Crc {
    crc: u32,
    buf: [u8; 256],
    len: usize,
}

impl Crc {
    fn new(crc: u32) -> Self {
        Crc {
            crc,
            buf: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.len;
        if bytes.len() > room {
            self.flush();
            if bytes.len() > self.buf.len() / 2 {
                self.crc = crc32c::crc32c_append(self.crc, bytes);
                return;
            }
        }
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            self.crc =
                crc32c::crc32c_append(self.crc, self.buf.get(..self.len).unwrap_or_default());
            self.len = 0;
        }
    }

    fn finish(mut self) -> u32 {
        self.flush();
        self.crc
    }
}

/// Writes a format-1 payload (references first). Only tests write it now: it is how the
/// format-1 records a store of an older Pier left behind are made.
#[cfg(test)]
pub(crate) fn encode_payload_v1(out: &mut Vec<u8>, refs: &[DiskRef], m: &StoredMessage) {
    out.extend_from_slice(&(refs.len() as u16).to_le_bytes());
    for r in refs {
        out.extend_from_slice(&r.disk_id.to_le_bytes());
        out.extend_from_slice(&r.offset.to_le_bytes());
    }
    encode_fields(out, m);
}

/// Whether a record type is a message record (either format).
pub(crate) fn is_message(ty: u8) -> bool {
    ty == kind::MESSAGE || ty == kind::MESSAGE_V1
}

/// Where the fields sit in a payload: (exchange, routing key, properties, body) as
/// (start, len), and the references' (start, count). None if the payload is malformed.
struct Layout {
    exchange: (usize, usize),
    routing_key: (usize, usize),
    properties: (usize, usize),
    body: (usize, usize),
    refs: (usize, usize),
}

fn read_fields(r: &mut Reader<'_>) -> Option<[(usize, usize); 4]> {
    let xl = usize::from(r.u8()?);
    let x_at = r.position();
    r.bytes(xl)?;
    let kl = usize::from(r.u8()?);
    let k_at = r.position();
    r.bytes(kl)?;
    let pl = r.u32()? as usize;
    let p_at = r.position();
    r.bytes(pl)?;
    let bl = r.u32()? as usize;
    let b_at = r.position();
    r.bytes(bl)?;
    Some([(x_at, xl), (k_at, kl), (p_at, pl), (b_at, bl)])
}

fn layout(ty: u8, payload: &[u8]) -> Option<Layout> {
    let mut r = Reader::new(payload);
    let (fields, refs) = match ty {
        kind::MESSAGE => {
            let fields = read_fields(&mut r)?;
            let n = usize::from(r.u16()?);
            let at = r.position();
            r.bytes(n * 12)?;
            (fields, (at, n))
        }
        kind::MESSAGE_V1 => {
            let n = usize::from(r.u16()?);
            let at = r.position();
            r.bytes(n * 12)?;
            (read_fields(&mut r)?, (at, n))
        }
        _ => return None,
    };
    if !r.is_empty() {
        return None;
    }
    let [exchange, routing_key, properties, body] = fields;
    Some(Layout {
        exchange,
        routing_key,
        properties,
        body,
        refs,
    })
}

/// Reads only the references of a message record of type `ty` (recovery needs nothing else,
/// so bodies are never copied). None if the payload is malformed.
pub(crate) fn decode_refs(ty: u8, payload: &[u8], out: &mut Vec<DiskRef>) -> Option<()> {
    out.clear();
    let l = layout(ty, payload)?;
    let mut r = Reader::new(payload.get(l.refs.0..)?);
    for _ in 0..l.refs.1 {
        out.push(DiskRef {
            disk_id: r.u32()?,
            offset: r.u64()?,
        });
    }
    Some(())
}

/// Decodes a whole message payload of record type `ty` held in `buf` (a shared buffer: the
/// strings, properties and body are zero-copy slices of it). None if the payload is malformed.
pub(crate) fn decode_message(ty: u8, buf: &Bytes) -> Option<StoredMessage> {
    let l = layout(ty, buf)?;
    let slice = |(at, len): (usize, usize)| buf.slice(at..at + len);
    let exchange = ShortString::try_from_bytes(slice(l.exchange)).ok()?;
    let routing_key = ShortString::try_from_bytes(slice(l.routing_key)).ok()?;
    Some(StoredMessage {
        exchange,
        routing_key,
        raw_properties: slice(l.properties),
        body: slice(l.body),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::record;

    fn sample() -> StoredMessage {
        StoredMessage::new(
            ShortString::from("amq.topic"),
            ShortString::from("a.b.c"),
            Bytes::from_static(&[0x90, 0x00, 0x02]),
            Bytes::from_static(b"body bytes"),
        )
    }

    const REFS: [DiskRef; 2] = [
        DiskRef {
            disk_id: 7,
            offset: 42,
        },
        DiskRef {
            disk_id: 9,
            offset: u64::MAX,
        },
    ];

    /// A finished format-2 record: (type, payload).
    fn v2(m: &StoredMessage, refs: &[DiskRef]) -> Vec<u8> {
        let e = EncodedMessage::new(m.clone(), refs.len());
        let mut out = Vec::new();
        e.finish_into(&mut out, refs);
        assert_eq!(Some(out.len()), e.record_len());
        out
    }

    #[test]
    fn publisher_encoded_record_equals_one_encoded_at_once() {
        let m = sample();
        let rec = v2(&m, &REFS);
        // The same bytes as framing the whole payload in one go (one crc over everything).
        let mut whole = Vec::new();
        record::encode(&mut whole, kind::MESSAGE, |o| {
            encode_fields(o, &m);
            o.extend_from_slice(&2u16.to_le_bytes());
            for r in REFS {
                o.extend_from_slice(&r.disk_id.to_le_bytes());
                o.extend_from_slice(&r.offset.to_le_bytes());
            }
        });
        assert_eq!(rec, whole);
        let record::Parsed::Record { ty, payload, total } =
            record::parse(&rec, rec.len(), is_message)
        else {
            panic!("a finished record must verify")
        };
        assert_eq!((ty, total), (kind::MESSAGE, rec.len()));
        let mut got = Vec::new();
        decode_refs(ty, payload, &mut got).unwrap();
        assert_eq!(got, REFS);
        assert_eq!(
            decode_message(ty, &Bytes::copy_from_slice(payload)).unwrap(),
            m
        );
        assert_eq!(payload.len(), payload_len(2, &m).unwrap());
    }

    #[test]
    fn format_1_payloads_still_decode() {
        let m = sample();
        let mut out = Vec::new();
        encode_payload_v1(&mut out, &REFS, &m);
        assert_eq!(out.len(), payload_len(2, &m).unwrap());
        let mut got = Vec::new();
        decode_refs(kind::MESSAGE_V1, &out, &mut got).unwrap();
        assert_eq!(got, REFS);
        assert_eq!(
            decode_message(kind::MESSAGE_V1, &Bytes::from(out)).unwrap(),
            m
        );
    }

    #[test]
    fn a_wrong_reference_count_never_verifies() {
        let e = EncodedMessage::new(sample(), 1);
        let mut out = Vec::new();
        e.finish_into(&mut out, &REFS);
        assert_eq!(
            record::parse(&out, out.len(), is_message),
            record::Parsed::Invalid
        );
    }

    #[test]
    fn unframable_messages_have_no_record() {
        let e = EncodedMessage::new(sample(), 70_000);
        assert_eq!(e.record_len(), None);
        assert_eq!(e.message(), &sample());
    }

    #[test]
    fn truncated_or_padded_payloads_are_rejected() {
        for ty in [kind::MESSAGE, kind::MESSAGE_V1] {
            let mut out = Vec::new();
            if ty == kind::MESSAGE {
                out = v2(&sample(), &[])[record::HEADER_LEN..].to_vec();
            } else {
                encode_payload_v1(&mut out, &[], &sample());
            }
            assert!(decode_message(ty, &Bytes::copy_from_slice(&out)).is_some());
            for cut in 0..out.len() {
                assert!(decode_message(ty, &Bytes::copy_from_slice(&out[..cut])).is_none());
                assert!(decode_refs(ty, &out[..cut], &mut Vec::new()).is_none());
            }
            out.push(0);
            assert!(decode_message(ty, &Bytes::from(out)).is_none());
        }
    }

    #[test]
    fn invalid_utf8_in_names_is_rejected() {
        let mut out = v2(&sample(), &[])[record::HEADER_LEN..].to_vec();
        out[1] = 0xff; // first byte of the exchange name
        assert!(decode_message(kind::MESSAGE, &Bytes::from(out)).is_none());
    }
}
