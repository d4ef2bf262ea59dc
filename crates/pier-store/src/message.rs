//! What the store keeps of a message, and its record payload.
//!
//! ```text
//!  message record payload (type 0x01), little-endian:
//!  +--------+------------------------------+-------+----------+-------+----+-----------+-------+-----------+------+
//!  | nrefs  | refs: (disk_id u32,          | x_len | exchange | k_len | rk | props_len | props | body_len  | body |
//!  |  u16   |        offset u64) × nrefs   |  u8   |          |  u8   |    |    u32    |       |    u32    |      |
//!  +--------+------------------------------+-------+----------+-------+----+-----------+-------+-----------+------+
//! ```
//!
//! `props` are the exact content-header bytes the publisher sent (property flags + properties),
//! so a recovered message is delivered byte-for-byte as published and nothing is re-encoded.
//! One record serves every durable queue the message was routed to (fan-out stores the body
//! once); each reference carries that queue's offset.

use bytes::Bytes;
use pier_wire::ShortString;

use crate::record::Reader;

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

/// A reference from a message record to a queue, as written on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskRef {
    pub disk_id: u32,
    pub offset: u64,
}

/// Payload length of a message record, or None when a field cannot be framed (too many
/// references, a property block or body over 4 GiB).
pub(crate) fn payload_len(nrefs: usize, m: &StoredMessage) -> Option<usize> {
    u16::try_from(nrefs).ok()?;
    u32::try_from(m.raw_properties.len()).ok()?;
    u32::try_from(m.body.len()).ok()?;
    Some(
        2 + nrefs * 12
            + 1
            + m.exchange.len()
            + 1
            + m.routing_key.len()
            + 4
            + m.raw_properties.len()
            + 4
            + m.body.len(),
    )
}

/// Writes the payload; the caller has checked [`payload_len`].
pub(crate) fn encode_payload(out: &mut Vec<u8>, refs: &[DiskRef], m: &StoredMessage) {
    out.extend_from_slice(&(refs.len() as u16).to_le_bytes());
    for r in refs {
        out.extend_from_slice(&r.disk_id.to_le_bytes());
        out.extend_from_slice(&r.offset.to_le_bytes());
    }
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

/// Reads only the references (recovery needs nothing else, so bodies are never copied).
pub(crate) fn decode_refs(payload: &[u8], out: &mut Vec<DiskRef>) -> Option<()> {
    out.clear();
    let mut r = Reader::new(payload);
    let n = r.u16()?;
    for _ in 0..n {
        out.push(DiskRef {
            disk_id: r.u32()?,
            offset: r.u64()?,
        });
    }
    Some(())
}

/// Decodes a whole message payload held in `buf` (a shared buffer: the strings, properties
/// and body are zero-copy slices of it). None if the payload is malformed.
pub(crate) fn decode_message(buf: &Bytes) -> Option<StoredMessage> {
    let mut r = Reader::new(buf);
    let n = r.u16()?;
    r.bytes(usize::from(n) * 12)?;
    let xl = r.u8()?;
    let x_at = r.position();
    r.bytes(usize::from(xl))?;
    let kl = r.u8()?;
    let k_at = r.position();
    r.bytes(usize::from(kl))?;
    let pl = r.u32()? as usize;
    let p_at = r.position();
    r.bytes(pl)?;
    let bl = r.u32()? as usize;
    let b_at = r.position();
    r.bytes(bl)?;
    if !r.is_empty() {
        return None;
    }
    let exchange = ShortString::try_from_bytes(buf.slice(x_at..x_at + usize::from(xl))).ok()?;
    let routing_key = ShortString::try_from_bytes(buf.slice(k_at..k_at + usize::from(kl))).ok()?;
    Some(StoredMessage {
        exchange,
        routing_key,
        raw_properties: buf.slice(p_at..p_at + pl),
        body: buf.slice(b_at..b_at + bl),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sample() -> StoredMessage {
        StoredMessage::new(
            ShortString::from("amq.topic"),
            ShortString::from("a.b.c"),
            Bytes::from_static(&[0x90, 0x00, 0x02]),
            Bytes::from_static(b"body bytes"),
        )
    }

    #[test]
    fn round_trip_with_refs() {
        let m = sample();
        let refs = [
            DiskRef {
                disk_id: 7,
                offset: 42,
            },
            DiskRef {
                disk_id: 9,
                offset: u64::MAX,
            },
        ];
        let mut out = Vec::new();
        encode_payload(&mut out, &refs, &m);
        assert_eq!(out.len(), payload_len(2, &m).unwrap());
        let mut got = Vec::new();
        decode_refs(&out, &mut got).unwrap();
        assert_eq!(got, refs);
        assert_eq!(decode_message(&Bytes::from(out)).unwrap(), m);
    }

    #[test]
    fn truncated_or_padded_payloads_are_rejected() {
        let mut out = Vec::new();
        encode_payload(&mut out, &[], &sample());
        for cut in 0..out.len() {
            assert!(decode_message(&Bytes::copy_from_slice(&out[..cut])).is_none());
        }
        out.push(0);
        assert!(decode_message(&Bytes::from(out)).is_none());
    }

    #[test]
    fn invalid_utf8_in_names_is_rejected() {
        let mut out = Vec::new();
        encode_payload(&mut out, &[], &sample());
        out[3] = 0xff; // first byte of the exchange name
        assert!(decode_message(&Bytes::from(out)).is_none());
    }
}
