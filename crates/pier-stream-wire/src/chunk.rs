//! The Osiris chunk: the unit a stream stores, replicates and delivers (`osiris_log.erl`).
//!
//! ```text
//!  0        1        2                 4                                  8
//!  +--------+--------+-----------------+----------------------------------+
//!  |0101|0000| type   | num entries u16 | num records u32                  |
//!  +--------+--------+-----------------+----------------------------------+
//!  | timestamp i64 (ms since epoch)    | epoch u64                        |
//!  +-----------------------------------+----------------------------------+
//!  | first offset (chunk id) u64       | data CRC32 u32 | data length u32 |
//!  +-----------------------------------+----------------+-----------------+
//!  | trailer length u32 | bloom size u8 | reserved (3)  |   = 48 octets
//!  +--------------------+---------------+---------------+
//!  | bloom filter (bloom size octets)    -- stored only, never delivered   |
//!  | data entries (data length octets)   -- see [`crate::entry`]           |
//!  | trailer (trailer length octets)     -- tracking entries               |
//!  +----------------------------------------------------------------------+
//! ```
//!
//! Magic 5, version 0 (first octet 0x50). The CRC (Erlang's `crc32`) covers the data
//! entries only. Chunk types: 0 user data, 1 tracking delta, 2 tracking snapshot.
//!
//! What a consumer receives in `Deliver` is not the stored chunk: the stream plugin sends
//! the header unchanged, **skips the bloom filter**, and sends the data entries, plus the
//! trailer for non-user chunks only (`osiris_log:send_file/3`, chunk selector `user_data`).
//! [`Chunk::parse_delivered`] / [`Chunk::encode_delivered`] handle that form,
//! [`Chunk::parse_stored`] / [`Chunk::encode_stored`] the on-disk one.

use bytes::{BufMut, Bytes, BytesMut};

use crate::bloom::{BloomFilter, DEFAULT_FILTER_SIZE};
use crate::buf::{crc32, Reader, Short};
use crate::entry::{Entry, EntryError, SubBatch, SubBatchRecords};

/// Size of the chunk header.
pub const CHUNK_HEADER_SIZE: usize = 48;
/// Magic (high nibble, 5) and version (low nibble, 0) of the first octet.
pub const CHUNK_MAGIC_VERSION: u8 = 0x50;

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkType {
    /// 0: user data (messages).
    User,
    /// 1: tracking delta (writer sequences / consumer offsets).
    TrackingDelta,
    /// 2: tracking snapshot.
    TrackingSnapshot,
}

impl ChunkType {
    pub fn code(self) -> u8 {
        match self {
            ChunkType::User => 0,
            ChunkType::TrackingDelta => 1,
            ChunkType::TrackingSnapshot => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<ChunkType> {
        match code {
            0 => Some(ChunkType::User),
            1 => Some(ChunkType::TrackingDelta),
            2 => Some(ChunkType::TrackingSnapshot),
            _ => None,
        }
    }
}

/// The 48-octet chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub chunk_type: ChunkType,
    pub num_entries: u16,
    /// Offsets the chunk takes (a sub-batch entry counts its records).
    pub num_records: u32,
    /// Erlang system time in milliseconds.
    pub timestamp: i64,
    pub epoch: u64,
    /// The chunk id: offset of its first record.
    pub first_offset: u64,
    pub crc: u32,
    pub data_length: u32,
    pub trailer_length: u32,
    /// Bloom filter size in octets (0: none).
    pub bloom_size: u8,
    /// The 24 reserved bits, kept so that a header re-encodes as it came.
    pub reserved: u32,
}

impl ChunkHeader {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<ChunkHeader, ChunkError> {
        let magic = r.u8("chunk magic")?;
        if magic != CHUNK_MAGIC_VERSION {
            return Err(ChunkError::BadMagic(magic));
        }
        let t = r.u8("chunk type")?;
        let chunk_type = ChunkType::from_code(t).ok_or(ChunkError::UnknownChunkType(t))?;
        let num_entries = r.u16("num entries")?;
        let num_records = r.u32("num records")?;
        let timestamp = r.i64("timestamp")?;
        let epoch = r.u64("epoch")?;
        let first_offset = r.u64("chunk first offset")?;
        let crc = r.u32("chunk crc")?;
        let data_length = r.u32("data length")?;
        let trailer_length = r.u32("trailer length")?;
        let tail = r.u32("bloom size")?;
        Ok(ChunkHeader {
            chunk_type,
            num_entries,
            num_records,
            timestamp,
            epoch,
            first_offset,
            crc,
            data_length,
            trailer_length,
            bloom_size: (tail >> 24) as u8,
            reserved: tail & 0x00FF_FFFF,
        })
    }

    /// Decodes the 48-octet header at the front of `bytes` (a store reading headers alone).
    pub fn parse(bytes: &[u8]) -> Result<ChunkHeader, ChunkError> {
        let head = bytes
            .get(..CHUNK_HEADER_SIZE)
            .ok_or(ChunkError::Truncated {
                context: "chunk header",
            })?;
        let b = Bytes::copy_from_slice(head);
        ChunkHeader::decode(&mut Reader::new(&b))
    }

    /// Writes the 48 octets.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(CHUNK_MAGIC_VERSION);
        out.put_u8(self.chunk_type.code());
        out.put_u16(self.num_entries);
        out.put_u32(self.num_records);
        out.put_i64(self.timestamp);
        out.put_u64(self.epoch);
        out.put_u64(self.first_offset);
        out.put_u32(self.crc);
        out.put_u32(self.data_length);
        out.put_u32(self.trailer_length);
        out.put_u32((u32::from(self.bloom_size) << 24) | (self.reserved & 0x00FF_FFFF));
    }
}

/// Errors of the chunk format.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ChunkError {
    #[error("truncated {context}")]
    Truncated { context: &'static str },
    #[error("bad chunk magic/version octet {0:#04x} (expected 0x50)")]
    BadMagic(u8),
    #[error("unknown chunk type {0}")]
    UnknownChunkType(u8),
    #[error("chunk CRC mismatch: header says {expected:#010x}, data has {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("{count} byte(s) after the chunk do not make a trailer of {trailer_length}")]
    TrailingBytes { count: usize, trailer_length: u32 },
    #[error("entries do not add up to the header: {0}")]
    EntryCountMismatch(&'static str),
    #[error("bad entry: {0}")]
    Entry(#[from] EntryError),
    #[error("chunk too large: {0}")]
    TooLarge(&'static str),
}

impl From<Short> for ChunkError {
    fn from(s: Short) -> Self {
        ChunkError::Truncated { context: s.context }
    }
}

/// A chunk, its sections zero-copy slices of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub header: ChunkHeader,
    /// Empty in the delivered form (the plugin never sends it).
    pub bloom: Bytes,
    pub data: Bytes,
    /// Empty in the delivered form of a user chunk.
    pub trailer: Bytes,
}

impl Chunk {
    /// Parses a chunk in the form `Deliver` carries (header, entries, and for non-user
    /// chunks the trailer), which must fill `bytes` exactly. The CRC is not checked here
    /// (see [`Chunk::verify_crc`]).
    pub fn parse_delivered(bytes: &Bytes) -> Result<Chunk, ChunkError> {
        let mut r = Reader::new(bytes);
        let header = ChunkHeader::decode(&mut r)?;
        let data = r.take(header.data_length as usize, "chunk data")?;
        let rest = r.remaining();
        let trailer = if rest == 0 {
            Bytes::new()
        } else if rest == header.trailer_length as usize {
            r.rest()
        } else {
            return Err(ChunkError::TrailingBytes {
                count: rest,
                trailer_length: header.trailer_length,
            });
        };
        Ok(Chunk {
            header,
            bloom: Bytes::new(),
            data,
            trailer,
        })
    }

    /// Parses a stored chunk (header, bloom, entries, trailer) at the front of `bytes`;
    /// returns it and the octets it took.
    pub fn parse_stored(bytes: &Bytes) -> Result<(Chunk, usize), ChunkError> {
        let mut r = Reader::new(bytes);
        let header = ChunkHeader::decode(&mut r)?;
        let bloom = r.take(usize::from(header.bloom_size), "bloom filter")?;
        let data = r.take(header.data_length as usize, "chunk data")?;
        let trailer = r.take(header.trailer_length as usize, "chunk trailer")?;
        Ok((
            Chunk {
                header,
                bloom,
                data,
                trailer,
            },
            r.position(),
        ))
    }

    /// Checks the data CRC.
    pub fn verify_crc(&self) -> Result<(), ChunkError> {
        let actual = crc32(&self.data);
        if actual == self.header.crc {
            Ok(())
        } else {
            Err(ChunkError::CrcMismatch {
                expected: self.header.crc,
                actual,
            })
        }
    }

    /// The data entries, in order.
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            reader: Reader::new(&self.data),
            left: self.header.num_entries,
            failed: false,
        }
    }

    /// Parses every entry and checks that the entry and record counts, the CRC, and the data
    /// length agree with the header. Returns the entries.
    pub fn validate(&self) -> Result<Vec<Entry>, ChunkError> {
        self.verify_crc()?;
        let mut entries = Vec::with_capacity(usize::from(self.header.num_entries));
        let mut records: u64 = 0;
        for e in self.entries() {
            let e = e?;
            records += u64::from(e.record_count());
            entries.push(e);
        }
        if records != u64::from(self.header.num_records) {
            return Err(ChunkError::EntryCountMismatch("num records"));
        }
        Ok(entries)
    }

    /// Every record with its offset: simple entries and the records of uncompressed
    /// sub-batches. A compressed sub-batch yields one item, `Err(the batch)`, and takes its
    /// record count of offsets (the client decompresses).
    pub fn records(&self) -> Records<'_> {
        Records {
            entries: self.entries(),
            offset: self.header.first_offset,
            batch: None,
        }
    }

    /// Writes the chunk as stored (header, bloom, data, trailer).
    pub fn encode_stored(&self, out: &mut BytesMut) {
        self.encode_stored_prefix(out);
        out.put_slice(&self.data);
        out.put_slice(&self.trailer);
    }

    /// What the stored form has before the data: the header and the bloom filter (the
    /// data and the trailer follow; a writer may send the parts without joining them).
    pub fn encode_stored_prefix(&self, out: &mut BytesMut) {
        let mut header = self.header;
        header.bloom_size = self.bloom.len().min(255) as u8;
        header.encode(out);
        out.put_slice(
            self.bloom
                .get(..usize::from(header.bloom_size))
                .unwrap_or(&[]),
        );
    }

    /// Writes the chunk as `Deliver` carries it: header (its bloom size kept), data, and the
    /// trailer unless this is a user chunk.
    pub fn encode_delivered(&self, out: &mut BytesMut) {
        self.header.encode(out);
        out.put_slice(&self.data);
        if self.header.chunk_type != ChunkType::User {
            out.put_slice(&self.trailer);
        }
    }

    /// Octets of [`Chunk::encode_delivered`].
    pub fn delivered_len(&self) -> usize {
        CHUNK_HEADER_SIZE
            + self.data.len()
            + if self.header.chunk_type == ChunkType::User {
                0
            } else {
                self.trailer.len()
            }
    }
}

/// Iterator over the entries of a chunk; stops after the first error.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    reader: Reader<'a>,
    left: u16,
    failed: bool,
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            if self.reader.is_empty() {
                return None;
            }
            self.failed = true;
            return Some(Err(ChunkError::EntryCountMismatch(
                "data left after num entries",
            )));
        }
        self.left -= 1;
        match Entry::decode(&mut self.reader) {
            Ok(e) => Some(Ok(e)),
            Err(s) => {
                self.failed = true;
                Some(Err(s.into()))
            }
        }
    }
}

/// Iterator over `(offset, record)` pairs; see [`Chunk::records`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    entries: Entries<'a>,
    offset: u64,
    batch: Option<SubBatchRecords>,
}

/// One item of [`Chunk::records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A message at `offset`.
    Message { offset: u64, body: Bytes },
    /// A compressed sub-batch whose records start at `offset`.
    Compressed { offset: u64, batch: SubBatch },
}

impl Iterator for Records<'_> {
    type Item = Result<Record, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = &mut self.batch {
                match batch.next() {
                    Some(Ok(body)) => {
                        let offset = self.offset;
                        self.offset += 1;
                        return Some(Ok(Record::Message { offset, body }));
                    }
                    Some(Err(e)) => {
                        self.batch = None;
                        return Some(Err(e.into()));
                    }
                    None => self.batch = None,
                }
            }
            match self.entries.next()? {
                Err(e) => return Some(Err(e)),
                Ok(Entry::Simple(body)) => {
                    let offset = self.offset;
                    self.offset += 1;
                    return Some(Ok(Record::Message { offset, body }));
                }
                Ok(Entry::SubBatch(batch)) => {
                    if let Some(records) = batch.records() {
                        self.batch = Some(records);
                    } else {
                        let offset = self.offset;
                        self.offset += u64::from(batch.record_count);
                        return Some(Ok(Record::Compressed { offset, batch }));
                    }
                }
            }
        }
    }
}

/// Assembles a chunk from messages.
#[derive(Debug, Clone)]
pub struct ChunkBuilder {
    chunk_type: ChunkType,
    timestamp: i64,
    epoch: u64,
    first_offset: u64,
    data: BytesMut,
    trailer: Bytes,
    num_entries: u16,
    num_records: u32,
    bloom: BloomFilter,
    /// Octets at the front of `data` before the entries: 0, the header's 48 (`headroom`),
    /// or the caller's room (`in_buffer`), whose last 48 octets take the header.
    room: usize,
}

impl ChunkBuilder {
    /// A user chunk whose first record gets `first_offset`.
    pub fn new(first_offset: u64, epoch: u64, timestamp: i64) -> ChunkBuilder {
        ChunkBuilder {
            chunk_type: ChunkType::User,
            timestamp,
            epoch,
            first_offset,
            data: BytesMut::new(),
            trailer: Bytes::new(),
            num_entries: 0,
            num_records: 0,
            bloom: BloomFilter::new(DEFAULT_FILTER_SIZE),
            room: 0,
        }
    }

    /// Room for `bytes` octets of entries (so that a big chunk is not grown step by step).
    pub fn reserve(mut self, bytes: usize) -> Self {
        self.data.reserve(bytes);
        self
    }

    pub fn chunk_type(mut self, t: ChunkType) -> Self {
        self.chunk_type = t;
        self
    }

    /// Bloom filter size in octets (clamped to 16..=255; default 16). Call before adding.
    pub fn filter_size(mut self, size: u8) -> Self {
        self.bloom = BloomFilter::new(size);
        self
    }

    /// Raw trailer bytes (tracking entries).
    pub fn trailer(mut self, trailer: Bytes) -> Self {
        self.trailer = trailer;
        self
    }

    /// Entries so far.
    pub fn num_entries(&self) -> u16 {
        self.num_entries
    }

    /// Octets of entry data so far.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Adds one message (a simple entry) with its filter value, if any.
    pub fn push_message(
        &mut self,
        body: &[u8],
        filter_value: Option<&[u8]>,
    ) -> Result<(), ChunkError> {
        self.push_entry(&Entry::Simple(Bytes::copy_from_slice(body)), filter_value)
    }

    /// Adds an entry (simple or sub-batch) with its filter value, if any.
    pub fn push_entry(
        &mut self,
        entry: &Entry,
        filter_value: Option<&[u8]>,
    ) -> Result<(), ChunkError> {
        let entries = self
            .num_entries
            .checked_add(1)
            .ok_or(ChunkError::TooLarge("more than 65535 entries"))?;
        let records = self
            .num_records
            .checked_add(entry.record_count())
            .ok_or(ChunkError::TooLarge("more than 2^32 records"))?;
        if self.data.len() + entry.encoded_len() > u32::MAX as usize {
            return Err(ChunkError::TooLarge("data over 4 GiB"));
        }
        entry.encode(&mut self.data)?;
        self.num_entries = entries;
        self.num_records = records;
        self.bloom.insert(filter_value);
        Ok(())
    }

    /// The finished chunk (CRC and bloom filter computed).
    pub fn build(self) -> Chunk {
        self.finish().0
    }

    /// The finished chunk and its delivered form (header, then data) in one buffer: the
    /// entries were written after room for the header, so neither is a copy. Call
    /// [`ChunkBuilder::headroom`] before adding entries.
    pub fn build_delivered(self) -> (Chunk, Option<Bytes>) {
        self.finish()
    }

    /// Room for the header before the entries (see [`ChunkBuilder::build_delivered`]).
    pub fn headroom(mut self) -> Self {
        if self.data.is_empty() && self.room == 0 {
            self.data.put_bytes(0, CHUNK_HEADER_SIZE);
            self.room = CHUNK_HEADER_SIZE;
        }
        self
    }

    /// Builds in `buf` after what it holds (at least the header's 48 octets of room, whose
    /// last 48 take the header; a smaller room gets no header): a writer that prepared the
    /// bytes before the chunk, and reserved room for all of it, writes the chunk from where
    /// it was built (see [`ChunkBuilder::build_in_place`]). Call before adding entries.
    pub fn in_buffer(mut self, buf: BytesMut) -> Self {
        if self.data.is_empty() {
            self.room = buf.len();
            self.data = buf;
        }
        self
    }

    /// The finished header (CRC and bloom size set), the bloom filter, and the buffer of
    /// [`ChunkBuilder::in_buffer`]: the caller's room with the header in its last 48 octets
    /// (when it has them), then the entries. The trailer is not in it (the caller puts it
    /// after the entries, where the stored form has it).
    pub fn build_in_place(self) -> (ChunkHeader, Bytes, BytesMut) {
        let (header, bloom, mut data) = self.seal();
        let room = data.len() - header.data_length as usize;
        if let Some(at) = room.checked_sub(CHUNK_HEADER_SIZE) {
            let mut h = BytesMut::with_capacity(CHUNK_HEADER_SIZE);
            header.encode(&mut h);
            if let Some(slot) = data.get_mut(at..room) {
                slot.copy_from_slice(&h);
            }
        }
        (header, bloom, data)
    }

    /// The header (CRC over the entries after the room), the bloom filter and the buffer.
    fn seal(self) -> (ChunkHeader, Bytes, BytesMut) {
        let head = self.room;
        let data_len = self.data.len() - head;
        let bloom = Bytes::from(self.bloom.to_bytes());
        let header = ChunkHeader {
            chunk_type: self.chunk_type,
            num_entries: self.num_entries,
            num_records: self.num_records,
            timestamp: self.timestamp,
            epoch: self.epoch,
            first_offset: self.first_offset,
            crc: crc32(self.data.get(head..).unwrap_or_default()),
            data_length: data_len as u32,
            trailer_length: u32::try_from(self.trailer.len()).unwrap_or(u32::MAX),
            bloom_size: bloom.len().min(255) as u8,
            reserved: 0,
        };
        (header, bloom, self.data)
    }

    fn finish(self) -> (Chunk, Option<Bytes>) {
        let trailer = self.trailer.clone();
        let (header, bloom, data) = self.build_in_place();
        let all = data.freeze();
        let room = all.len() - header.data_length as usize;
        let delivered = room
            .checked_sub(CHUNK_HEADER_SIZE)
            .map(|at| all.slice(at..));
        let chunk = Chunk {
            header,
            bloom,
            data: all.slice(room..),
            trailer,
        };
        (chunk, delivered)
    }
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
    fn built_with_headroom_the_delivered_form_shares_the_data() {
        let build = |headroom: bool| {
            let mut b = ChunkBuilder::new(7, 1, 1_700_000_000_000).filter_size(32);
            if headroom {
                b = b.headroom();
            }
            b.push_message(b"one", Some(b"k")).unwrap();
            b.push_message(b"two", None).unwrap();
            b.build_delivered()
        };
        let (plain, none) = build(false);
        assert!(none.is_none());
        let (chunk, delivered) = build(true);
        let delivered = delivered.unwrap();
        assert_eq!(chunk.header, plain.header);
        assert_eq!((&chunk.bloom, &chunk.data), (&plain.bloom, &plain.data));
        let mut want = BytesMut::new();
        chunk.encode_delivered(&mut want);
        assert_eq!(delivered, want.freeze());
        let mut stored = BytesMut::new();
        chunk.encode_stored_prefix(&mut stored);
        stored.put_slice(&chunk.data);
        let mut all = BytesMut::new();
        plain.encode_stored(&mut all);
        assert_eq!(stored, all);
        chunk.validate().unwrap();
    }

    /// Built after a caller's room, the chunk is the one built plainly (trailer length
    /// included), its header in the room's last 48 octets and the room's front untouched.
    #[test]
    fn built_in_a_buffer_the_header_ends_the_room() {
        let build = |b: ChunkBuilder| {
            let mut b = b.trailer(Bytes::from_static(b"trailer!"));
            b.push_message(b"one", None).unwrap();
            b.push_message(&[7u8; 300], None).unwrap();
            b
        };
        let plain = build(ChunkBuilder::new(9, 1, 5)).build();
        let mut room = BytesMut::new();
        room.put_slice(b"front");
        room.put_bytes(0, CHUNK_HEADER_SIZE);
        let (header, bloom, buf) =
            build(ChunkBuilder::new(9, 1, 5).in_buffer(room)).build_in_place();
        assert_eq!(header, plain.header);
        assert_eq!(header.trailer_length, 8);
        assert!(bloom.is_empty());
        assert_eq!(&buf[..5], b"front");
        let mut h = BytesMut::new();
        plain.header.encode(&mut h);
        assert_eq!(&buf[5..5 + CHUNK_HEADER_SIZE], &h[..]);
        assert_eq!(&buf[5 + CHUNK_HEADER_SIZE..], &plain.data[..]);
        // The delivered form too carries the trailer's length.
        let (chunk, delivered) = build(ChunkBuilder::new(9, 1, 5).headroom()).build_delivered();
        assert_eq!(chunk, plain);
        assert_eq!(&delivered.unwrap()[..CHUNK_HEADER_SIZE], &h[..]);
    }

    #[test]
    fn build_parse_roundtrip() {
        let mut b = ChunkBuilder::new(100, 3, 1_700_000_000_000);
        b.push_message(b"one", Some(b"apple")).unwrap();
        b.push_message(b"two", None).unwrap();
        b.push_entry(
            &Entry::SubBatch(SubBatch::uncompressed([&b"x"[..], b"y"]).unwrap()),
            None,
        )
        .unwrap();
        let chunk = b.build();
        assert_eq!(chunk.header.num_entries, 3);
        assert_eq!(chunk.header.num_records, 4);
        assert_eq!(chunk.header.bloom_size, 16);
        chunk.validate().unwrap();

        let mut stored = BytesMut::new();
        chunk.encode_stored(&mut stored);
        assert_eq!(stored[0], 0x50);
        assert_eq!(stored.len(), 48 + 16 + chunk.data.len());
        let stored = stored.freeze();
        let (back, n) = Chunk::parse_stored(&stored).unwrap();
        assert_eq!(n, stored.len());
        assert_eq!(back, chunk);

        let mut delivered = BytesMut::new();
        chunk.encode_delivered(&mut delivered);
        assert_eq!(delivered.len(), chunk.delivered_len());
        let delivered = delivered.freeze();
        let d = Chunk::parse_delivered(&delivered).unwrap();
        assert_eq!(d.header, chunk.header);
        assert!(d.bloom.is_empty());
        assert_eq!(d.data, chunk.data);

        let records: Vec<_> = d.records().map(|r| r.unwrap()).collect();
        let bodies: Vec<(u64, &[u8])> = records
            .iter()
            .map(|r| match r {
                Record::Message { offset, body } => (*offset, &body[..]),
                Record::Compressed { .. } => panic!("no compressed batch"),
            })
            .collect();
        assert_eq!(
            bodies,
            vec![(100, &b"one"[..]), (101, b"two"), (102, b"x"), (103, b"y")]
        );
    }

    #[test]
    fn crc_and_count_checks() {
        let mut b = ChunkBuilder::new(0, 1, 0);
        b.push_message(b"m", None).unwrap();
        let mut chunk = b.build();
        // unfiltered only: no bloom
        assert!(chunk.bloom.is_empty());
        chunk.header.crc ^= 1;
        assert!(matches!(
            chunk.verify_crc(),
            Err(ChunkError::CrcMismatch { .. })
        ));
        chunk.header.crc ^= 1;
        chunk.header.num_records = 2;
        assert!(matches!(
            chunk.validate(),
            Err(ChunkError::EntryCountMismatch(_))
        ));
        chunk.header.num_records = 1;
        chunk.header.num_entries = 0;
        assert!(chunk.validate().is_err());
    }

    #[test]
    fn delivered_trailer_rules() {
        let chunk = ChunkBuilder::new(0, 1, 0)
            .chunk_type(ChunkType::TrackingSnapshot)
            .trailer(Bytes::from_static(b"trk"))
            .build();
        let mut out = BytesMut::new();
        chunk.encode_delivered(&mut out);
        let out = out.freeze();
        assert_eq!(Chunk::parse_delivered(&out).unwrap().trailer, &b"trk"[..]);
        let mut bad = BytesMut::from(&out[..]);
        bad.put_u8(0);
        assert!(matches!(
            Chunk::parse_delivered(&bad.freeze()),
            Err(ChunkError::TrailingBytes { .. })
        ));
        let junk = Bytes::from_static(&[0x51; 48]);
        assert_eq!(
            Chunk::parse_delivered(&junk),
            Err(ChunkError::BadMagic(0x51))
        );
    }
}
