//! Data entries: the unit both `Publish` frames and Osiris chunks are made of.
//!
//! ```text
//!  simple entry      0|size:31  body (size bytes)                  -> one record
//!  sub-batch entry   1|compression:3|reserved:4  records:16
//!                    uncompressed_length:32  length:32  body (length bytes)
//!                                                                  -> `records` records
//! ```
//!
//! An uncompressed sub-batch body is a run of `size:32 record` pairs (what the RabbitMQ
//! clients write); compressed bodies are opaque to the broker, which stores and delivers them
//! as they came.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{Reader, Short};

/// Largest simple entry body: the size is a 31-bit field.
pub const MAX_SIMPLE_ENTRY_SIZE: usize = 0x7FFF_FFFF;

/// The compression of a sub-batch entry (a 3-bit field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    /// 5..=7: no codec is assigned.
    Reserved(u8),
}

impl Compression {
    pub fn from_bits(bits: u8) -> Compression {
        match bits & 0x7 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => Compression::Reserved(other),
        }
    }

    /// The 3-bit value. `Reserved` values above 7 are masked.
    pub fn bits(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
            Compression::Reserved(b) => b & 0x7,
        }
    }
}

/// A sub-batch entry: several records in one entry, possibly compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubBatch {
    pub compression: Compression,
    /// How many records the body holds.
    pub record_count: u16,
    /// Length of the body once decompressed (equal to `data.len()` when uncompressed).
    pub uncompressed_length: u32,
    /// The body, a zero-copy slice of the input.
    pub data: Bytes,
}

impl SubBatch {
    /// Builds an uncompressed sub-batch from records.
    pub fn uncompressed<I, B>(records: I) -> Result<SubBatch, EntryError>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let mut data = BytesMut::new();
        let mut count: u16 = 0;
        for record in records {
            let record = record.as_ref();
            let len = u32::try_from(record.len()).map_err(|_| EntryError::TooLong(record.len()))?;
            count = count.checked_add(1).ok_or(EntryError::TooManyRecords)?;
            data.put_u32(len);
            data.put_slice(record);
        }
        let uncompressed_length =
            u32::try_from(data.len()).map_err(|_| EntryError::TooLong(data.len()))?;
        Ok(SubBatch {
            compression: Compression::None,
            record_count: count,
            uncompressed_length,
            data: data.freeze(),
        })
    }

    /// The records of an uncompressed sub-batch (`size:32 record` pairs), zero-copy. `None`
    /// for a compressed one: the broker never decompresses.
    pub fn records(&self) -> Option<SubBatchRecords> {
        (self.compression == Compression::None).then(|| SubBatchRecords {
            data: self.data.clone(),
            pos: 0,
            left: self.record_count,
        })
    }
}

/// Iterator over the records of an uncompressed [`SubBatch`]; stops after an error.
#[derive(Debug, Clone)]
pub struct SubBatchRecords {
    data: Bytes,
    pos: usize,
    left: u16,
}

impl Iterator for SubBatchRecords {
    type Item = Result<Bytes, EntryError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut reader = Reader::at(&self.data, self.pos);
        if self.left == 0 {
            if reader.is_empty() {
                return None;
            }
            let count = reader.remaining();
            // report once
            self.pos = self.data.len();
            return Some(Err(EntryError::TrailingBytes { count }));
        }
        self.left -= 1;
        let item = reader.u32("sub-batch record size").and_then(|n| {
            reader.take(usize::try_from(n).unwrap_or(usize::MAX), "sub-batch record")
        });
        if item.is_err() {
            self.left = 0;
            self.pos = self.data.len();
        } else {
            self.pos = reader.position();
        }
        Some(item.map_err(EntryError::from))
    }
}

/// One data entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// One record (for a stream: one AMQP 1.0 encoded message), a zero-copy slice.
    Simple(Bytes),
    SubBatch(SubBatch),
}

impl Entry {
    /// How many records (offsets) the entry takes.
    pub fn record_count(&self) -> u32 {
        match self {
            Entry::Simple(_) => 1,
            Entry::SubBatch(b) => u32::from(b.record_count),
        }
    }

    /// Bytes the entry takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            Entry::Simple(b) => 4 + b.len(),
            Entry::SubBatch(b) => 11 + b.data.len(),
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Entry, Short> {
        let first = r.peek_u8().ok_or(Short { context: "entry" })?;
        if first & 0x80 == 0 {
            let size = r.u32("entry size")? & 0x7FFF_FFFF;
            Ok(Entry::Simple(r.take(size as usize, "entry body")?))
        } else {
            let flags = r.u8("sub-batch flags")?;
            let record_count = r.u16("sub-batch record count")?;
            let uncompressed_length = r.u32("sub-batch uncompressed length")?;
            let len = r.u32("sub-batch length")?;
            let data = r.take(len as usize, "sub-batch body")?;
            Ok(Entry::SubBatch(SubBatch {
                compression: Compression::from_bits(flags >> 4),
                record_count,
                uncompressed_length,
                data,
            }))
        }
    }

    /// Writes the entry; nothing is written on error.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EntryError> {
        match self {
            Entry::Simple(body) => {
                if body.len() > MAX_SIMPLE_ENTRY_SIZE {
                    return Err(EntryError::TooLong(body.len()));
                }
                out.put_u32(body.len() as u32);
                out.put_slice(body);
            }
            Entry::SubBatch(b) => {
                let len =
                    u32::try_from(b.data.len()).map_err(|_| EntryError::TooLong(b.data.len()))?;
                out.put_u8(0x80 | (b.compression.bits() << 4));
                out.put_u16(b.record_count);
                out.put_u32(b.uncompressed_length);
                out.put_u32(len);
                out.put_slice(&b.data);
            }
        }
        Ok(())
    }
}

/// Errors of entries and sub-batch records.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EntryError {
    #[error("truncated {context}")]
    Truncated { context: &'static str },
    #[error("{count} trailing byte(s) after the last sub-batch record")]
    TrailingBytes { count: usize },
    #[error("entry too long: {0} bytes")]
    TooLong(usize),
    #[error("more than 65535 records in a sub-batch")]
    TooManyRecords,
}

impl From<Short> for EntryError {
    fn from(s: Short) -> Self {
        EntryError::Truncated { context: s.context }
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
    fn simple_entry_layout() {
        let mut out = BytesMut::new();
        Entry::Simple(Bytes::from_static(b"abc"))
            .encode(&mut out)
            .unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 3, b'a', b'b', b'c']);
        let b = out.freeze();
        assert_eq!(
            Entry::decode(&mut Reader::new(&b)).unwrap(),
            Entry::Simple(Bytes::from_static(b"abc"))
        );
    }

    #[test]
    fn sub_batch_layout_and_records() {
        let batch = SubBatch::uncompressed([&b"ab"[..], b"", b"xyz"]).unwrap();
        assert_eq!(batch.record_count, 3);
        assert_eq!(batch.uncompressed_length, 4 + 2 + 4 + 4 + 3);
        let entry = Entry::SubBatch(batch.clone());
        let mut out = BytesMut::new();
        entry.encode(&mut out).unwrap();
        assert_eq!(out[0], 0x80);
        assert_eq!(&out[1..3], &[0, 3]);
        assert_eq!(out.len(), entry.encoded_len());
        let b = out.freeze();
        let back = Entry::decode(&mut Reader::new(&b)).unwrap();
        assert_eq!(back, entry);
        let records: Vec<_> = batch.records().unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(records, vec![&b"ab"[..], b"", b"xyz"]);

        let gz = SubBatch {
            compression: Compression::Gzip,
            ..batch
        };
        assert!(gz.records().is_none());
        let mut out = BytesMut::new();
        Entry::SubBatch(gz).encode(&mut out).unwrap();
        assert_eq!(out[0], 0x90);
    }

    #[test]
    fn bad_sub_batch_records_end_the_iteration() {
        let batch = SubBatch {
            compression: Compression::None,
            record_count: 2,
            uncompressed_length: 9,
            data: Bytes::from_static(&[0, 0, 0, 1, b'a', 0, 0, 0, 9]),
        };
        let items: Vec<_> = batch.records().unwrap().collect();
        assert_eq!(items.len(), 2);
        assert!(items[1].is_err());
        let extra = SubBatch {
            record_count: 1,
            data: Bytes::from_static(&[0, 0, 0, 1, b'a', 7]),
            ..batch
        };
        let items: Vec<_> = extra.records().unwrap().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], Err(EntryError::TrailingBytes { count: 1 }));
    }
}
