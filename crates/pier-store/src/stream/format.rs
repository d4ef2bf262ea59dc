//! On-disk formats of a stream: segment files of Osiris chunks and their index files.
//!
//! ```text
//!  <first chunk id, 20 digits>.segment   "PSTRSEG\0" u32 version | chunk | chunk | ...
//!  <first chunk id, 20 digits>.index     "PSTRIDX\0" u32 version | record | record | ...
//!
//!  index record (36 octets, one per chunk, in chunk order):
//!  0          8           16        20     24            28    29       32        36
//!  | chunk id | timestamp | position| size | num records | type| 0 0 0  | crc32c  |
//!    u64        i64 (ms)    u32       u32    u32           u8            of 0..32
//! ```
//!
//! A chunk is stored exactly as [`pier_stream_wire::Chunk::encode_stored`] writes it (48-octet
//! header, bloom filter, data entries, trailer); its data CRC is checked on recovery. Segments
//! are at most 4 GiB (positions are `u32`; RabbitMQ's limit on the segment size is 3 GB).

use crate::stream::StreamError;

pub const SEGMENT_MAGIC: &[u8; 8] = b"PSTRSEG\0";
pub const INDEX_MAGIC: &[u8; 8] = b"PSTRIDX\0";
pub const FORMAT_VERSION: u32 = 1;
/// Magic + version.
pub const FILE_HEADER_LEN: u64 = 12;
pub const INDEX_RECORD_LEN: usize = 36;

/// The file header of a segment or index file.
pub fn file_header(magic: &[u8; 8]) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(magic);
    h[8..].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    h
}

/// Whether `bytes` start with the header of that magic and the current version.
pub fn check_header(bytes: &[u8], magic: &[u8; 8]) -> bool {
    bytes.len() >= FILE_HEADER_LEN as usize
        && bytes.get(..8) == Some(&magic[..])
        && bytes.get(8..12) == Some(&FORMAT_VERSION.to_be_bytes()[..])
}

/// One index record: where a chunk is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRecord {
    pub chunk_id: u64,
    pub timestamp: i64,
    /// Byte position of the chunk in its segment.
    pub position: u32,
    /// Stored size of the chunk (header, bloom, data, trailer).
    pub size: u32,
    pub num_records: u32,
    /// [`pier_stream_wire::ChunkType::code`].
    pub chunk_type: u8,
}

impl IndexRecord {
    pub fn encode(&self) -> [u8; INDEX_RECORD_LEN] {
        let mut b = [0u8; INDEX_RECORD_LEN];
        b[0..8].copy_from_slice(&self.chunk_id.to_be_bytes());
        b[8..16].copy_from_slice(&self.timestamp.to_be_bytes());
        b[16..20].copy_from_slice(&self.position.to_be_bytes());
        b[20..24].copy_from_slice(&self.size.to_be_bytes());
        b[24..28].copy_from_slice(&self.num_records.to_be_bytes());
        b[28] = self.chunk_type;
        let crc = crc32c::crc32c(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes a record; `None` when it is short or its checksum does not match.
    pub fn decode(b: &[u8]) -> Option<IndexRecord> {
        let b: &[u8; INDEX_RECORD_LEN] = b.get(..INDEX_RECORD_LEN)?.try_into().ok()?;
        let crc = u32::from_be_bytes(b[32..36].try_into().ok()?);
        if crc32c::crc32c(&b[..32]) != crc || b[29..32] != [0, 0, 0] {
            return None;
        }
        Some(IndexRecord {
            chunk_id: u64::from_be_bytes(b[0..8].try_into().ok()?),
            timestamp: i64::from_be_bytes(b[8..16].try_into().ok()?),
            position: u32::from_be_bytes(b[16..20].try_into().ok()?),
            size: u32::from_be_bytes(b[20..24].try_into().ok()?),
            num_records: u32::from_be_bytes(b[24..28].try_into().ok()?),
            chunk_type: b[28],
        })
    }

    /// The chunk id after this chunk.
    pub fn next_chunk_id(&self) -> u64 {
        self.chunk_id.saturating_add(u64::from(self.num_records))
    }

    /// The position after this chunk.
    pub fn end(&self) -> u64 {
        u64::from(self.position) + u64::from(self.size)
    }
}

/// `00000000000000000042.segment` for the segment whose first chunk id is 42.
pub fn segment_name(first_chunk_id: u64) -> String {
    format!("{first_chunk_id:020}.segment")
}

pub fn index_name(first_chunk_id: u64) -> String {
    format!("{first_chunk_id:020}.index")
}

/// The first chunk id a segment file name stands for.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".segment")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Tracking entries, carried in the trailer of chunks (`ChunkType::User` chunks: the
/// sequences of the publishers whose messages they hold; `TrackingDelta`: consumer offsets
/// stored since; `TrackingSnapshot`, first in each segment: everything known).
///
/// ```text
///  entry: kind u8 (0 writer sequence, 1 consumer offset) | id length u8 | id | value u64
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackingEntry {
    /// A publisher reference and its highest publishing id written.
    Writer { reference: String, sequence: u64 },
    /// A consumer reference and the offset it stored.
    Offset { reference: String, offset: u64 },
}

const TRK_WRITER: u8 = 0;
const TRK_OFFSET: u8 = 1;

impl TrackingEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, id, value) = match self {
            TrackingEntry::Writer {
                reference,
                sequence,
            } => (TRK_WRITER, reference, *sequence),
            TrackingEntry::Offset { reference, offset } => (TRK_OFFSET, reference, *offset),
        };
        // References are at most 255 bytes (the protocol's limit is 256 characters; the
        // server refuses longer ones before they get here).
        let id = id.as_bytes().get(..id.len().min(255)).unwrap_or_default();
        out.push(kind);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&value.to_be_bytes());
    }

    /// Decodes a whole trailer; an entry that does not parse ends it with an error.
    pub fn decode_all(mut b: &[u8]) -> Result<Vec<TrackingEntry>, StreamError> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let bad = || StreamError::Corrupt("tracking trailer".into());
            let (&kind, rest) = b.split_first().ok_or_else(bad)?;
            let (&len, rest) = rest.split_first().ok_or_else(bad)?;
            let id = rest.get(..usize::from(len)).ok_or_else(bad)?;
            let value = rest
                .get(usize::from(len)..usize::from(len) + 8)
                .ok_or_else(bad)?;
            let value = u64::from_be_bytes(value.try_into().map_err(|_| bad())?);
            let reference = String::from_utf8_lossy(id).into_owned();
            out.push(match kind {
                TRK_WRITER => TrackingEntry::Writer {
                    reference,
                    sequence: value,
                },
                TRK_OFFSET => TrackingEntry::Offset {
                    reference,
                    offset: value,
                },
                _ => return Err(bad()),
            });
            b = rest.get(usize::from(len) + 8..).unwrap_or_default();
        }
        Ok(out)
    }
}

/// A chunk trailer: tracking entries, then the crc32c of them (Osiris's chunk CRC covers
/// the data entries only; the trailer carries publisher sequences, which must not be
/// believed unchecked).
pub fn encode_trailer(entries: &[TrackingEntry]) -> Vec<u8> {
    let mut b = Vec::new();
    if entries.is_empty() {
        return b;
    }
    for e in entries {
        e.encode(&mut b);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    b
}

/// The trailer length Osiris gives the trailer Pier stores in `stored` octets: the same
/// tracking entries without the CRC Pier puts after them. `Deliver` sends the chunk header
/// with this one (the trailer itself is not sent), as clients compare it with RabbitMQ's.
pub fn osiris_trailer_length(stored: u32) -> u32 {
    if stored == 0 {
        0
    } else {
        stored.saturating_sub(4)
    }
}

/// Decodes and checks a trailer written by [`encode_trailer`].
pub fn decode_trailer(b: &[u8]) -> Result<Vec<TrackingEntry>, StreamError> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let split = b
        .len()
        .checked_sub(4)
        .ok_or_else(|| StreamError::Corrupt("tracking trailer".into()))?;
    let (entries, crc) = b.split_at(split);
    let crc = u32::from_be_bytes(
        crc.try_into()
            .map_err(|_| StreamError::Corrupt("tracking trailer".into()))?,
    );
    if crc32c::crc32c(entries) != crc {
        return Err(StreamError::Corrupt("tracking trailer checksum".into()));
    }
    TrackingEntry::decode_all(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn index_records_round_trip(chunk_id: u64, timestamp: i64, position: u32, size: u32,
                                    num_records: u32, chunk_type in 0u8..3) {
            let r = IndexRecord { chunk_id, timestamp, position, size, num_records, chunk_type };
            prop_assert_eq!(IndexRecord::decode(&r.encode()), Some(r));
        }

        #[test]
        fn a_flipped_bit_is_caught(chunk_id: u64, position: u32, bit in 0usize..(INDEX_RECORD_LEN * 8)) {
            let r = IndexRecord { chunk_id, timestamp: 7, position, size: 100, num_records: 3, chunk_type: 0 };
            let mut b = r.encode();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(IndexRecord::decode(&b), None);
        }

        #[test]
        fn any_bytes_decode_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = IndexRecord::decode(&b);
            let _ = TrackingEntry::decode_all(&b);
            let _ = decode_trailer(&b);
        }

        #[test]
        fn tracking_round_trips(entries in proptest::collection::vec(
            (any::<bool>(), "[a-z0-9-]{0,40}", any::<u64>()), 0..20)) {
            let entries: Vec<TrackingEntry> = entries.into_iter().map(|(w, r, v)| if w {
                TrackingEntry::Writer { reference: r, sequence: v }
            } else {
                TrackingEntry::Offset { reference: r, offset: v }
            }).collect();
            let b = encode_trailer(&entries);
            prop_assert_eq!(decode_trailer(&b).unwrap(), entries);
        }
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(42), "00000000000000000042.segment");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.segment"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.segment"), None);
    }
}
