//! Reading a stream: chunk by chunk from any position, committed chunks only.
//!
//! A reader holds one open segment file and its position, and reads the file in blocks of
//! up to [`BLOCK`] committed bytes: a chunk inside the block is a slice of it (the `Deliver`
//! payload with no copy, unless a bloom filter must be cut out), so catching up costs one
//! `pread` per block instead of two per chunk, and the kernel's readahead sees large
//! sequential reads (the writer's direct I/O leaves nothing in the page cache, so a
//! catching-up reader reads the device). Only committed bytes are read into a block. Nothing
//! but the current block is held, so a reader's memory does not grow with the stream, and
//! readers share no lock but the short read of the committed view.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use pier_stream_wire::chunk::CHUNK_HEADER_SIZE;
use pier_stream_wire::{ChunkHeader, ChunkType};

use super::format::FILE_HEADER_LEN;
use super::log::{stored_size, ChunkLocation, Shared};
use super::StreamError;

/// Where a reader starts (the stream protocol's offset specifications).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first chunk still stored.
    First,
    /// The last chunk holding messages.
    Last,
    /// After everything committed now.
    Next,
    /// The chunk holding this offset (the first one if it was deleted, `Next` if beyond).
    Offset(u64),
    /// The first chunk written at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// One chunk read.
#[derive(Debug, Clone)]
pub struct ReadChunk {
    pub header: ChunkHeader,
    /// The chunk's bloom filter (empty: no filter values in it).
    pub bloom: Bytes,
    /// The chunk as `Deliver` carries it: the 48-octet header, then the data entries.
    pub delivered: Bytes,
}

impl ReadChunk {
    /// The data entries (after the header).
    pub fn data(&self) -> Bytes {
        self.delivered
            .slice(CHUNK_HEADER_SIZE.min(self.delivered.len())..)
    }
}

/// The most a reader reads from a segment file at once.
pub const BLOCK: u64 = 1 << 20;

/// A cursor over a stream's committed chunks.
pub struct StreamReader {
    shared: Arc<Shared>,
    /// First chunk id of the open segment, and the file.
    segment: Option<(u64, File)>,
    position: u64,
    next_chunk_id: u64,
    /// Committed bytes of the open segment read ahead: where they start in the file.
    block_at: u64,
    block: Bytes,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("next_chunk_id", &self.next_chunk_id)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl StreamReader {
    pub(crate) fn new(shared: Arc<Shared>, at: StartAt) -> Result<StreamReader, StreamError> {
        let (first, next, last) =
            shared.with_view(|v| (v.first_offset(), v.committed_next, v.last_user_chunk));
        let location = match at {
            StartAt::First => None,
            StartAt::Next => return Ok(StreamReader::at(shared, next)),
            StartAt::Last => last,
            StartAt::Offset(o) if o >= next => return Ok(StreamReader::at(shared, next)),
            StartAt::Offset(o) if o < first => None,
            StartAt::Offset(o) => shared.locate_offset(o)?,
            StartAt::Timestamp(ts) => match shared.locate_timestamp(ts)? {
                Some(l) => Some(l),
                None => {
                    // Nothing that recent: attach at the end; or, when everything is newer
                    // (ts before the first chunk), the search found the first chunk.
                    return Ok(StreamReader::at(shared, next));
                }
            },
        };
        let mut r = StreamReader::at(shared, first);
        if let Some(ChunkLocation { segment, record }) = location {
            r.open(segment)?;
            r.position = u64::from(record.position);
            r.next_chunk_id = record.chunk_id;
        }
        Ok(r)
    }

    fn at(shared: Arc<Shared>, next_chunk_id: u64) -> StreamReader {
        StreamReader {
            shared,
            segment: None,
            position: 0,
            next_chunk_id,
            block_at: 0,
            block: Bytes::new(),
        }
    }

    /// The chunk id the next chunk will have.
    pub fn next_chunk_id(&self) -> u64 {
        self.next_chunk_id
    }

    fn open(&mut self, first_chunk_id: u64) -> Result<bool, StreamError> {
        let path = self.shared.segment_path(first_chunk_id);
        match File::open(&path) {
            Ok(f) => {
                self.segment = Some((first_chunk_id, f));
                self.position = FILE_HEADER_LEN;
                self.block = Bytes::new();
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StreamError::io("open segment", path, e)),
        }
    }

    /// The next committed chunk holding messages, `None` when the reader is at the end.
    pub fn next_chunk(&mut self) -> Result<Option<ReadChunk>, StreamError> {
        let mut misses = 0;
        loop {
            if self.shared.is_deleted() {
                return Err(StreamError::Deleted);
            }
            let (committed, seg, data_len) = self.shared.with_view(|v| {
                let i = v.segment_of(self.next_chunk_id);
                let seg = match i {
                    // Fell behind retention: continue at the first segment still there.
                    None => v.segments.first(),
                    Some(i) => v.segments.get(i),
                };
                (
                    v.committed_next,
                    seg.map(|s| s.first_chunk_id),
                    seg.map_or(0, |s| s.data_len),
                )
            });
            if self.next_chunk_id >= committed {
                return Ok(None);
            }
            let Some(seg) = seg else { return Ok(None) };
            let current = self.segment.as_ref().map(|s| s.0);
            if current != Some(seg) {
                if self.next_chunk_id <= seg {
                    // At a segment boundary, or fallen behind retention: the segment's start.
                    if !self.open(seg)? {
                        // Deleted since the view was read: read it again (a few times).
                        misses += 1;
                        if misses > 3 {
                            return Err(StreamError::Deleted);
                        }
                        continue;
                    }
                    self.next_chunk_id = seg;
                } else {
                    // Inside the segment (a reader that attached at `next`): find the chunk.
                    let Some(l) = self.shared.locate_offset(self.next_chunk_id)? else {
                        return Ok(None);
                    };
                    if !self.open(l.segment)? {
                        misses += 1;
                        if misses > 3 {
                            return Err(StreamError::Deleted);
                        }
                        continue;
                    }
                    self.position = u64::from(l.record.position);
                    self.next_chunk_id = l.record.chunk_id;
                }
            }
            // At the tail: the writer's copy, shared by every reader there.
            if let Some((header, chunk)) = self.shared.recent(self.next_chunk_id) {
                self.position += stored_size(&header);
                self.next_chunk_id += u64::from(header.num_records.max(1));
                match chunk {
                    Some(c) => return Ok(Some(c)),
                    None => continue,
                }
            }
            if self.segment.is_none() {
                return Ok(None);
            }
            let at = self.position;
            let h = self.read(seg, at, CHUNK_HEADER_SIZE as u64, data_len)?;
            let header = ChunkHeader::parse(&h)
                .map_err(|e| StreamError::Corrupt(format!("chunk header at {at}: {e}")))?;
            if header.first_offset != self.next_chunk_id {
                return Err(StreamError::Corrupt(format!(
                    "chunk at {at} has id {}, expected {}",
                    header.first_offset, self.next_chunk_id
                )));
            }
            let size = stored_size(&header);
            if header.chunk_type != ChunkType::User {
                self.position += size;
                self.next_chunk_id += u64::from(header.num_records.max(1));
                continue;
            }
            let bloom = usize::from(header.bloom_size);
            let len = CHUNK_HEADER_SIZE + bloom + header.data_length as usize;
            let chunk = self.read(seg, at, len as u64, data_len)?;
            let (bloom_bytes, delivered) = if bloom == 0 {
                (Bytes::new(), chunk)
            } else {
                // [hdr][bloom][data] → [hdr][data]: the one case that copies.
                let mut d = Vec::with_capacity(len - bloom);
                d.extend_from_slice(chunk.get(..CHUNK_HEADER_SIZE).unwrap_or_default());
                d.extend_from_slice(chunk.get(CHUNK_HEADER_SIZE + bloom..).unwrap_or_default());
                (
                    chunk.slice(CHUNK_HEADER_SIZE..CHUNK_HEADER_SIZE + bloom),
                    Bytes::from(d),
                )
            };
            self.position += size;
            self.next_chunk_id += u64::from(header.num_records);
            return Ok(Some(ReadChunk {
                header,
                bloom: bloom_bytes,
                delivered,
            }));
        }
    }

    /// `len` bytes of the open segment at `at`, from the block when it holds them, else
    /// from a new block of up to [`BLOCK`] committed bytes (`data_len`: the segment's
    /// committed length as the view said before this read) starting there.
    fn read(&mut self, seg: u64, at: u64, len: u64, data_len: u64) -> Result<Bytes, StreamError> {
        let end = self.block_at + self.block.len() as u64;
        if at >= self.block_at && at + len <= end {
            let from = (at - self.block_at) as usize;
            return Ok(self.block.slice(from..from + len as usize));
        }
        let Some((_, file)) = &self.segment else {
            return Err(StreamError::Corrupt("no segment open".into()));
        };
        let want = data_len.saturating_sub(at).min(BLOCK).max(len);
        let mut buf = vec![0u8; usize::try_from(want).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut buf, at)
            .map_err(|e| StreamError::io("read chunk", self.shared.segment_path(seg), e))?;
        self.block_at = at;
        self.block = Bytes::from(buf);
        Ok(self.block.slice(..len as usize))
    }
}
