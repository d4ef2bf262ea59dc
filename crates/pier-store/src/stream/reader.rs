//! Reading a stream: chunk by chunk from any position, committed chunks only.
//!
//! A reader holds one open segment file and its position; each chunk costs two `pread`s
//! (its header, then header + data in one buffer that becomes the `Deliver` payload with no
//! further copy), served from the page cache. Nothing but the current chunk is held, so a
//! reader's memory does not grow with the stream, and readers share no lock but the short
//! read of the committed view.

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

/// A cursor over a stream's committed chunks.
pub struct StreamReader {
    shared: Arc<Shared>,
    /// First chunk id of the open segment, and the file.
    segment: Option<(u64, File)>,
    position: u64,
    next_chunk_id: u64,
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
            StartAt::Next => {
                return Ok(StreamReader {
                    shared,
                    segment: None,
                    position: 0,
                    next_chunk_id: next,
                })
            }
            StartAt::Last => last,
            StartAt::Offset(o) if o >= next => {
                return Ok(StreamReader {
                    shared,
                    segment: None,
                    position: 0,
                    next_chunk_id: next,
                })
            }
            StartAt::Offset(o) if o < first => None,
            StartAt::Offset(o) => shared.locate_offset(o)?,
            StartAt::Timestamp(ts) => match shared.locate_timestamp(ts)? {
                Some(l) => Some(l),
                None => {
                    // Nothing that recent: attach at the end; or, when everything is newer
                    // (ts before the first chunk), the search found the first chunk.
                    return Ok(StreamReader {
                        shared,
                        segment: None,
                        position: 0,
                        next_chunk_id: next,
                    });
                }
            },
        };
        let mut r = StreamReader {
            shared,
            segment: None,
            position: 0,
            next_chunk_id: first,
        };
        if let Some(ChunkLocation { segment, record }) = location {
            r.open(segment)?;
            r.position = u64::from(record.position);
            r.next_chunk_id = record.chunk_id;
        }
        Ok(r)
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
            let (committed, seg) = self.shared.with_view(|v| {
                let i = v.segment_of(self.next_chunk_id);
                let seg = match i {
                    // Fell behind retention: continue at the first segment still there.
                    None => v.segments.first().map(|s| s.first_chunk_id),
                    Some(i) => v.segments.get(i).map(|s| s.first_chunk_id),
                };
                (v.committed_next, seg)
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
            let Some((_, file)) = &self.segment else {
                return Ok(None);
            };
            let mut h = [0u8; CHUNK_HEADER_SIZE];
            file.read_exact_at(&mut h, self.position)
                .map_err(|e| StreamError::io("read chunk", self.shared.segment_path(seg), e))?;
            let header = ChunkHeader::parse(&h).map_err(|e| {
                StreamError::Corrupt(format!("chunk header at {}: {e}", self.position))
            })?;
            if header.first_offset != self.next_chunk_id {
                return Err(StreamError::Corrupt(format!(
                    "chunk at {} has id {}, expected {}",
                    self.position, header.first_offset, self.next_chunk_id
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
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, self.position)
                .map_err(|e| StreamError::io("read chunk", self.shared.segment_path(seg), e))?;
            let bloom_bytes = Bytes::copy_from_slice(
                buf.get(CHUNK_HEADER_SIZE..CHUNK_HEADER_SIZE + bloom)
                    .unwrap_or_default(),
            );
            // Move the header over the bloom filter: [hdr][bloom][data] → [..][hdr][data].
            buf.copy_within(0..CHUNK_HEADER_SIZE, bloom);
            let delivered = Bytes::from(buf).slice(bloom..);
            self.position += size;
            self.next_chunk_id += u64::from(header.num_records);
            return Ok(Some(ReadChunk {
                header,
                bloom: bloom_bytes,
                delivered,
            }));
        }
    }
}
