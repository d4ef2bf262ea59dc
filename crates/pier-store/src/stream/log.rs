//! The writer's side of one stream: segments, index, recovery, retention, tracking.
//!
//! [`StreamLog`] is owned by one thread (the stream's writer, see [`super::Stream`]); what
//! readers need is published to the [`Shared`] view after each sync ("committed"), so a
//! reader never sees a chunk that a crash could take back.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{BufMut, Bytes, BytesMut};
use pier_stream_wire::chunk::CHUNK_HEADER_SIZE;
use pier_stream_wire::{Chunk, ChunkBuilder, ChunkHeader, ChunkType, Entry};

use super::direct::{DirectAppender, DirectError, ALIGN};
use super::flusher::{AfterSync, Flusher};
use super::format::{
    check_header, decode_trailer, encode_trailer, file_header, index_name, parse_segment_name,
    segment_name, IndexRecord, TrackingEntry, FILE_HEADER_LEN, INDEX_MAGIC, INDEX_RECORD_LEN,
    SEGMENT_MAGIC,
};
use super::reader::ReadChunk;
use super::{StreamConfig, StreamError};

/// One segment as readers and retention see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    pub first_chunk_id: u64,
    /// Chunk id after its last committed chunk.
    pub next_chunk_id: u64,
    pub first_timestamp: i64,
    pub last_timestamp: i64,
    /// Bytes of the segment file (committed part) plus its index.
    pub size: u64,
    /// Bytes of the segment file that are committed (readers read no further: past it
    /// a chunk may be half written).
    pub data_len: u64,
    pub chunks: u64,
}

/// Where a chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub segment: u64,
    pub record: IndexRecord,
}

/// What readers see: committed segments and chunks.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Segments as written and synced here (a replicated stream's last chunks in them may
    /// not be committed yet: readers stop at `committed_next`).
    pub segments: Vec<SegmentMeta>,
    /// Offset after the last committed chunk (where `next` attaches): synced here and,
    /// when the stream is replicated, on a majority of its members.
    pub committed_next: u64,
    /// Offset after the last chunk written and synced on this node (what replicas copy).
    pub written_next: u64,
    /// The last committed chunk holding messages (`last` attaches there).
    pub last_user_chunk: Option<ChunkLocation>,
    /// The last committed chunk of any kind (`Deliver` v2's committed chunk id).
    pub last_chunk_id: Option<u64>,
}

impl View {
    pub fn first_offset(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.committed_next, |s| s.first_chunk_id)
    }

    pub fn total_size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Index of the segment holding `chunk_id` (the last one starting at or before it).
    pub fn segment_of(&self, chunk_id: u64) -> Option<usize> {
        let i = self
            .segments
            .partition_point(|s| s.first_chunk_id <= chunk_id);
        i.checked_sub(1)
    }
}

/// Publisher sequences and consumer offsets, by reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracking {
    pub writers: HashMap<String, u64>,
    pub offsets: HashMap<String, u64>,
}

impl Tracking {
    fn apply(&mut self, entries: Vec<TrackingEntry>) {
        for e in entries {
            match e {
                TrackingEntry::Writer {
                    reference,
                    sequence,
                } => {
                    let s = self.writers.entry(reference).or_insert(0);
                    *s = (*s).max(sequence);
                }
                TrackingEntry::Offset { reference, offset } => {
                    self.offsets.insert(reference, offset);
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<TrackingEntry> {
        let mut v: Vec<TrackingEntry> = self
            .writers
            .iter()
            .map(|(r, s)| TrackingEntry::Writer {
                reference: r.clone(),
                sequence: *s,
            })
            .collect();
        v.extend(self.offsets.iter().map(|(r, o)| TrackingEntry::Offset {
            reference: r.clone(),
            offset: *o,
        }));
        v
    }
}

type Listener = Arc<dyn Fn() + Send + Sync>;

/// Runs once the chunks before an offset are committed (`Ok`: a replicated leader's
/// confirms), or with why they never will be here: the leader was deposed
/// ([`StreamError::Deposed`]) or the stream deleted ([`StreamError::Deleted`]).
pub type OnCommit = Box<dyn FnOnce(Result<(), Arc<StreamError>>) + Send>;

/// When written chunks count as committed (readers see them, publishers get confirms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitRule {
    /// Once synced here: a stream with no replicas.
    Local,
    /// A replicated stream's leader: once synced on a majority of `members` nodes (this
    /// one and the replicas whose synced offsets `acks` holds).
    Quorum {
        members: usize,
        acks: HashMap<String, u64>,
    },
    /// A replica: what the leader said is committed (and this node has synced).
    Follow { leader_committed: u64 },
}

impl CommitRule {
    /// The committed offset given what this node has synced (`written`).
    fn committed(&self, written: u64) -> u64 {
        match self {
            CommitRule::Local => written,
            CommitRule::Quorum { members, acks } => {
                let mut v: Vec<u64> = acks.values().map(|a| (*a).min(written)).collect();
                v.push(written);
                v.sort_unstable_by(|a, b| b.cmp(a));
                // The majority-th highest: synced on at least that many members.
                v.get(members / 2).copied().unwrap_or(0)
            }
            CommitRule::Follow { leader_committed } => (*leader_committed).min(written),
        }
    }
}

struct Commit {
    rule: CommitRule,
    /// Callbacks waiting for an offset to be committed, in offset order.
    waiting: std::collections::VecDeque<(u64, OnCommit)>,
}

/// The part of a stream that readers, the protocol servers and management share.
pub struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) view: RwLock<View>,
    pub(crate) tracking: RwLock<Tracking>,
    listeners: Mutex<(u64, Vec<(u64, Listener)>)>,
    pub(crate) deleted: AtomicBool,
    /// Messages and bytes appended since start (figures).
    pub(crate) appended_messages: AtomicU64,
    /// The newest chunks as readers take them, so that consumers at the tail share the
    /// writer's copy instead of each reading the file (see [`Recent`]).
    recent: Mutex<Recent>,
    /// When written chunks are committed. Locked before `view` where both are.
    commit: Mutex<Commit>,
}

/// The newest chunks, oldest first, up to [`RECENT_BYTES`] (at least the newest one):
/// user chunks ready to deliver, other chunks as their header (readers skip them). The
/// writer empties it when the stream goes idle, so idle streams hold nothing.
#[derive(Default)]
struct Recent {
    chunks: std::collections::VecDeque<RecentChunk>,
    bytes: usize,
}

struct RecentChunk {
    chunk_id: u64,
    header: ChunkHeader,
    /// A user chunk as delivered.
    chunk: Option<ReadChunk>,
    /// The chunk as stored, when the writer had it in one piece (what replicas copy: a
    /// replicated stream's leader serves them from here, not from the file).
    stored: Option<Bytes>,
}

impl RecentChunk {
    /// Memory it holds (the stored form shares a big chunk's buffer with the delivered one).
    fn bytes(&self) -> usize {
        let delivered = self
            .chunk
            .as_ref()
            .map_or(0, |c| c.delivered.len() + c.bloom.len());
        delivered.max(self.stored.as_ref().map_or(0, Bytes::len))
    }
}

/// What a stream keeps of its newest chunks for readers at the tail: two full chunks
/// past the committed end (one being written and synced, the next built while it is) and
/// two before it, which readers at the tail are still delivering.
const RECENT_BYTES: usize = 16 << 20;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn remember(&self, c: RecentChunk) {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.bytes += c.bytes();
        r.chunks.push_back(c);
        while r.bytes > RECENT_BYTES && r.chunks.len() > 1 {
            if let Some(c) = r.chunks.pop_front() {
                r.bytes -= c.bytes();
            }
        }
    }

    fn recent_index(r: &Recent, chunk_id: u64) -> Option<usize> {
        r.chunks
            .binary_search_by_key(&chunk_id, |c| c.chunk_id)
            .ok()
    }

    /// Chunk `chunk_id` if it is among the newest: its header, and the chunk when it is a
    /// user chunk.
    pub(crate) fn recent(&self, chunk_id: u64) -> Option<(ChunkHeader, Option<ReadChunk>)> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let i = Self::recent_index(&r, chunk_id)?;
        r.chunks.get(i).map(|c| (c.header, c.chunk.clone()))
    }

    /// The id of the last committed chunk (osiris' committed chunk id, which `Deliver` v2 and
    /// `StreamStats` report): the last chunk when everything written is committed, else the
    /// chunk holding the last committed offset (a replicated stream waiting for a majority).
    pub fn committed_chunk_id(&self) -> Option<u64> {
        let (committed, written, last) =
            self.with_view(|v| (v.committed_next, v.written_next, v.last_chunk_id));
        if committed == 0 || last.is_none() {
            return None;
        }
        if committed >= written {
            return last;
        }
        let at = committed - 1;
        {
            let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            // The newest chunks follow each other up to what is written: the last one
            // starting at or before `at` holds it.
            let i = r.chunks.partition_point(|c| c.chunk_id <= at);
            if let Some(c) = i.checked_sub(1).and_then(|i| r.chunks.get(i)) {
                return Some(c.chunk_id);
            }
        }
        self.locate_offset(at)
            .ok()
            .flatten()
            .map(|l| l.record.chunk_id)
    }

    /// The stored form of the newest chunks from `from` on, while they follow each other in
    /// memory, before `end`, up to about `max` octets (at least one chunk).
    fn recent_stored(&self, from: u64, end: u64, max: usize) -> Option<Bytes> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let i = Self::recent_index(&r, from)?;
        let mut parts: Vec<Bytes> = Vec::new();
        let mut len = 0;
        let mut next = from;
        for c in r.chunks.iter().skip(i) {
            if c.chunk_id != next || c.chunk_id >= end || (len > 0 && len >= max) {
                break;
            }
            let Some(s) = &c.stored else { break };
            len += s.len();
            parts.push(s.clone());
            next = c.chunk_id + u64::from(c.header.num_records.max(1));
        }
        drop(r);
        match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => {
                let mut b = BytesMut::with_capacity(len);
                for p in parts {
                    b.extend_from_slice(&p);
                }
                Some(b.freeze())
            }
        }
    }

    /// Forgets the newest chunks (the stream is idle, or its tail was truncated).
    pub(crate) fn forget_recent(&self) {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.chunks.clear();
        r.bytes = 0;
    }

    pub fn view(&self) -> View {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn with_view<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        f(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn tracking(&self) -> Tracking {
        self.tracking
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Calls `f` after every commit (from the writer thread: keep it short, e.g. a wake-up).
    pub fn listen(&self, f: Listener) -> u64 {
        let mut l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        l.0 += 1;
        let id = l.0;
        l.1.push((id, f));
        id
    }

    pub fn unlisten(&self, id: u64) {
        let mut l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        l.1.retain(|(i, _)| *i != id);
    }

    pub(crate) fn notify(&self) {
        let l: Vec<Listener> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .iter()
            .map(|(_, f)| Arc::clone(f))
            .collect();
        for f in l {
            f();
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// What is synced here and what is committed: (`written_next`, `committed_next`).
    pub fn positions(&self) -> (u64, u64) {
        self.with_view(|v| (v.written_next, v.committed_next))
    }

    fn commit_state(&self) -> std::sync::MutexGuard<'_, Commit> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this is a replicated stream's leader.
    pub fn is_replicated(&self) -> bool {
        matches!(self.commit_state().rule, CommitRule::Quorum { .. })
    }

    /// Makes this stream a replicated leader of `members` nodes (1: not replicated), keeping
    /// the replicas' acknowledgements it has; commits what that allows.
    pub fn set_members(&self, members: usize) {
        let mut c = self.commit_state();
        if members <= 1 {
            c.rule = CommitRule::Local;
        } else if let CommitRule::Quorum { members: m, .. } = &mut c.rule {
            *m = members;
        } else {
            c.rule = CommitRule::Quorum {
                members,
                acks: HashMap::new(),
            };
        }
        self.recommit_locked(c, true);
    }

    /// A replica `node` has synced everything before `next` (a leader's stream).
    pub fn replica_synced(&self, node: &str, next: u64) {
        let mut c = self.commit_state();
        if let CommitRule::Quorum { acks, .. } = &mut c.rule {
            let a = acks.entry(node.to_owned()).or_insert(0);
            if next <= *a {
                return;
            }
            *a = next;
        } else {
            return;
        }
        self.recommit_locked(c, true);
    }

    /// Forgets a replica's acknowledgements (it left the stream's members).
    pub fn forget_replica(&self, node: &str) {
        if let CommitRule::Quorum { acks, .. } = &mut self.commit_state().rule {
            acks.remove(node);
        }
    }

    /// Each replica's synced offset (a leader's stream).
    pub fn replica_offsets(&self) -> Vec<(String, u64)> {
        match &self.commit_state().rule {
            CommitRule::Quorum { acks, .. } => {
                let mut v: Vec<(String, u64)> = acks.iter().map(|(n, o)| (n.clone(), *o)).collect();
                v.sort();
                v
            }
            _ => Vec::new(),
        }
    }

    /// A replica learnt what its leader has committed.
    pub fn follow(&self, leader_committed: u64) {
        let mut c = self.commit_state();
        match &mut c.rule {
            CommitRule::Follow {
                leader_committed: l,
            } if *l >= leader_committed => return,
            rule => {
                *rule = CommitRule::Follow { leader_committed };
            }
        }
        self.recommit_locked(c, true);
    }

    /// Runs `f` once everything before `offset` is committed (at once if it is).
    pub fn on_commit(&self, offset: u64, f: OnCommit) {
        let mut c = self.commit_state();
        let committed = self.with_view(|v| v.committed_next);
        if offset <= committed {
            drop(c);
            f(Ok(()));
            return;
        }
        c.waiting.push_back((offset, f));
    }

    /// This node stopped leading the stream, or the stream is gone: what waits for a
    /// commit never gets one here and is told `why` (never silence for a publisher).
    pub fn abandon_commits(&self, why: StreamError) {
        let waiting = std::mem::take(&mut self.commit_state().waiting);
        let why = Arc::new(why);
        for (_, f) in waiting {
            f(Err(Arc::clone(&why)));
        }
    }

    /// Moves `committed_next` to what the rule allows now (after `update` changed the
    /// view, under its lock), runs the callbacks that reached it, and wakes readers when it
    /// moved and `wake`.
    fn recommit_with(
        &self,
        mut c: std::sync::MutexGuard<'_, Commit>,
        update: impl FnOnce(&mut View),
        wake: bool,
    ) {
        let moved = {
            let mut v = self.view.write().unwrap_or_else(|p| p.into_inner());
            update(&mut v);
            let committed = c.rule.committed(v.written_next).max(v.committed_next);
            let moved = committed > v.committed_next;
            v.committed_next = committed;
            moved.then_some(committed)
        };
        let Some(committed) = moved else { return };
        let mut ready = Vec::new();
        while c.waiting.front().is_some_and(|(o, _)| *o <= committed) {
            if let Some((_, f)) = c.waiting.pop_front() {
                ready.push(f);
            }
        }
        drop(c);
        for f in ready {
            f(Ok(()));
        }
        if wake {
            self.notify();
        }
    }

    fn recommit_locked(&self, c: std::sync::MutexGuard<'_, Commit>, wake: bool) {
        self.recommit_with(c, |_| {}, wake);
    }

    /// Stored chunks (header, bloom filter, data, trailer: the files' form) from chunk
    /// `from` (or the first chunk still stored, when retention removed it) on, whole chunks
    /// up to about `max` octets (at least one), not past what is synced here nor past the
    /// end of `from`'s segment: what a replica copies. `None` when nothing after `from` is
    /// synced yet. `from` must start a chunk.
    pub fn read_stored(&self, from: u64, max: usize) -> Result<Option<Bytes>, StreamError> {
        // Before the first chunk still stored (retention removed the rest): from there.
        let (from, written, seg) = self.with_view(|v| {
            let from = from.max(v.first_offset());
            (
                from,
                v.written_next,
                v.segment_of(from).and_then(|i| v.segments.get(i)).copied(),
            )
        });
        if from >= written {
            return Ok(None);
        }
        if let Some(b) = self.recent_stored(from, written, max) {
            return Ok(Some(b));
        }
        let Some(seg) = seg else {
            return Ok(None);
        };
        let Some(l) = self.locate_offset(from)? else {
            return Ok(None);
        };
        if l.record.chunk_id != from || l.segment != seg.first_chunk_id {
            return Err(StreamError::Corrupt(format!(
                "no chunk starts at offset {from} (the chunk there starts at {})",
                l.record.chunk_id
            )));
        }
        let at = u64::from(l.record.position);
        let want = seg
            .data_len
            .saturating_sub(at)
            .min(max as u64)
            .max(u64::from(l.record.size));
        let path = self.segment_path(seg.first_chunk_id);
        let f = File::open(&path).map_err(io("open segment", &path))?;
        let mut buf = vec![0u8; usize::try_from(want).unwrap_or(usize::MAX)];
        f.read_exact_at(&mut buf, at)
            .map_err(io("read segment", &path))?;
        // Whole chunks only.
        let mut end = 0;
        while let Some(h) = buf
            .get(end..end + CHUNK_HEADER_SIZE)
            .and_then(|b| ChunkHeader::parse(b).ok())
        {
            let size = usize::try_from(stored_size(&h)).unwrap_or(usize::MAX);
            if end + size > buf.len() {
                break;
            }
            end += size;
        }
        buf.truncate(end);
        Ok((!buf.is_empty()).then(|| Bytes::from(buf)))
    }

    pub(crate) fn segment_path(&self, first_chunk_id: u64) -> PathBuf {
        self.dir.join(segment_name(first_chunk_id))
    }

    pub(crate) fn index_path(&self, first_chunk_id: u64) -> PathBuf {
        self.dir.join(index_name(first_chunk_id))
    }

    /// Reads index record `n` of a segment's index.
    pub(crate) fn read_index_record(
        idx: &File,
        n: u64,
    ) -> Result<Option<IndexRecord>, StreamError> {
        let mut b = [0u8; INDEX_RECORD_LEN];
        let pos = FILE_HEADER_LEN + n * INDEX_RECORD_LEN as u64;
        match idx.read_exact_at(&mut b, pos) {
            Ok(()) => Ok(IndexRecord::decode(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(StreamError::io("read index", PathBuf::new(), e)),
        }
    }

    /// The chunk holding `offset` (or the first after it), by a binary search of the index.
    pub fn locate_offset(&self, offset: u64) -> Result<Option<ChunkLocation>, StreamError> {
        let Some(seg) = self.with_view(|v| {
            v.segment_of(offset)
                .and_then(|i| v.segments.get(i).copied())
        }) else {
            return Ok(None);
        };
        self.search_index(seg, |r| r.next_chunk_id() <= offset)
    }

    /// The first chunk with a timestamp at or after `ts`.
    pub fn locate_timestamp(&self, ts: i64) -> Result<Option<ChunkLocation>, StreamError> {
        let Some(seg) = self.with_view(|v| {
            v.segments
                .iter()
                .find(|s| s.last_timestamp >= ts && s.chunks > 0)
                .copied()
        }) else {
            return Ok(None);
        };
        self.search_index(seg, |r| r.timestamp < ts)
    }

    /// The first committed record of `seg` for which `before` is false.
    fn search_index(
        &self,
        seg: SegmentMeta,
        before: impl Fn(&IndexRecord) -> bool,
    ) -> Result<Option<ChunkLocation>, StreamError> {
        let path = self.index_path(seg.first_chunk_id);
        let idx = match File::open(&path) {
            Ok(f) => f,
            // Deleted by retention meanwhile: the caller starts from the first segment.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StreamError::io("open index", path, e)),
        };
        let (mut lo, mut hi) = (0u64, seg.chunks);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = Self::read_index_record(&idx, mid)?.ok_or_else(|| {
                StreamError::Corrupt(format!("index record {mid} of {}", path.display()))
            })?;
            if before(&r) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo >= seg.chunks {
            return Ok(None);
        }
        let record = Self::read_index_record(&idx, lo)?.ok_or_else(|| {
            StreamError::Corrupt(format!("index record {lo} of {}", path.display()))
        })?;
        Ok(Some(ChunkLocation {
            segment: seg.first_chunk_id,
            record,
        }))
    }
}

struct Active {
    first_chunk_id: u64,
    /// Shared with the flusher, which syncs them from its thread.
    seg: Arc<File>,
    idx: Arc<File>,
    seg_path: PathBuf,
    idx_path: PathBuf,
    seg_len: u64,
    idx_len: u64,
    chunks: u64,
    first_timestamp: i64,
    last_timestamp: i64,
    /// Direct writes to `seg` (when the stream fsyncs and the filesystem allows it).
    direct: Option<DirectAppender>,
}

impl Active {
    /// Starts direct writes at the segment's end (`sync`: the stream fsyncs; otherwise
    /// the page cache is the cheaper place for bytes nobody waits to be durable).
    fn go_direct(&mut self, sync: bool) {
        self.direct = if sync {
            DirectAppender::open(&self.seg_path, &self.seg, self.seg_len)
        } else {
            None
        };
    }

    /// Cuts the zeros direct writes leave after the last chunk.
    fn trim(&mut self) -> Result<(), StreamError> {
        if let Some(d) = &mut self.direct {
            d.trim(&self.seg).map_err(io("truncate", &self.seg_path))?;
        }
        Ok(())
    }
}

/// The writer's side of a stream.
pub struct StreamLog {
    shared: Arc<Shared>,
    config: StreamConfig,
    /// Segments before the active one (committed, immutable).
    sealed: Vec<SegmentMeta>,
    active: Active,
    next_offset: u64,
    last_timestamp: i64,
    /// Writers and offsets including what is written but not yet synced.
    tracking: Tracking,
    last_user_chunk: Option<ChunkLocation>,
    last_chunk_id: Option<u64>,
    /// The type of the last chunk written (a replica rolls segments where its leader did).
    last_chunk_type: Option<ChunkType>,
    unsynced: bool,
    retention_due: bool,
    buf: BytesMut,
    /// User chunks written from where they were built (tests check the path is taken).
    pub(crate) in_place_chunks: u64,
    /// Of those, the ones the flusher wrote (tests check the path is taken).
    pub(crate) pipelined_chunks: u64,
    /// Writes and syncs big chunks while the writer builds the next batch (started with
    /// the first such chunk, stopped when the stream idles).
    flusher: Option<Flusher>,
}

impl Drop for StreamLog {
    /// A log closed in order leaves no zeros after its last chunk (recovery would cut them,
    /// and say it found a torn tail).
    fn drop(&mut self) {
        if let Err(e) = self.drain() {
            tracing::warn!("stream: {e}");
        }
        if let Err(e) = self.active.trim() {
            tracing::warn!("stream: {e}");
        }
    }
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRecovery {
    pub segments: usize,
    pub chunks: u64,
    pub next_offset: u64,
    /// Bytes cut off the active segment's tail (a torn or unsynced write).
    pub truncated_bytes: u64,
    /// Index records rebuilt from the segment.
    pub reindexed_chunks: u64,
}

/// Octets of entries from which a chunk is built in place ([`StreamLog::append_user_in_place`]);
/// below, the tail copy and the aligned allocation would cost more than the copy saved.
const IN_PLACE_MIN: usize = 16 * 1024;

/// Chunks at least this big are written by the flusher while the writer builds the next
/// batch (at 1 KiB messages that overlap was worth 12–21% of throughput on a disk-bound
/// machine); smaller ones are written by the writer itself, as the CPU-bound small-message
/// case measured faster that way (S16 lost 4–13% through the flusher).
const PIPELINE_MIN: usize = 1 << 20;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StreamError + 'a {
    move |e| StreamError::io(op, path.to_owned(), e)
}

fn sync_dir(dir: &Path) -> Result<(), StreamError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads the chunk header at `position`; `None` past the end of the file.
fn read_header(f: &File, position: u64) -> Result<Option<ChunkHeader>, std::io::Error> {
    let mut b = [0u8; CHUNK_HEADER_SIZE];
    match f.read_exact_at(&mut b, position) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(ChunkHeader::parse(&b).ok())
}

/// Stored size of the chunk a header starts.
pub(crate) fn stored_size(h: &ChunkHeader) -> u64 {
    CHUNK_HEADER_SIZE as u64
        + u64::from(h.bloom_size)
        + u64::from(h.data_length)
        + u64::from(h.trailer_length)
}

/// Reads and verifies the whole chunk at `position` (recovery); `None` when it is incomplete
/// or does not verify.
fn read_verified(f: &File, position: u64, file_len: u64) -> Result<Option<Chunk>, std::io::Error> {
    let Some(h) = read_header(f, position)? else {
        return Ok(None);
    };
    let size = stored_size(&h);
    if position + size > file_len || size > u64::from(u32::MAX) {
        return Ok(None);
    }
    let mut b = vec![0u8; size as usize];
    f.read_exact_at(&mut b, position)?;
    let bytes = Bytes::from(b);
    match Chunk::parse_stored(&bytes) {
        Ok((c, used))
            if used as u64 == size
                && c.verify_crc().is_ok()
                && decode_trailer(&c.trailer).is_ok() =>
        {
            Ok(Some(c))
        }
        _ => Ok(None),
    }
}

/// The first chunk ids of the segments in `dir`, in order (from their file names).
fn segment_firsts(dir: &Path) -> Result<Vec<u64>, StreamError> {
    let mut firsts = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io("list stream directory", dir))? {
        let e = e.map_err(io("list stream directory", dir))?;
        if let Some(id) = e.file_name().to_str().and_then(parse_segment_name) {
            firsts.push(id);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Removes every chunk from offset `next` on from the stream in `dir`, which no writer has
/// open: whole segments that start there or later, the tail of the segment holding it (at
/// the first chunk that reaches `next`), and their index records. A replica whose leader
/// changed drops what the old leader wrote but never committed (see the cluster's stream
/// failover); the next open recovers the rest as usual. Returns whether anything went.
pub fn truncate_stream(dir: &Path, next: u64) -> Result<bool, StreamError> {
    if !dir.exists() {
        return Ok(false);
    }
    let firsts = segment_firsts(dir)?;
    let mut changed = false;
    for &first in firsts.iter().filter(|f| **f >= next) {
        for p in [dir.join(segment_name(first)), dir.join(index_name(first))] {
            match std::fs::remove_file(&p) {
                Ok(()) => changed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StreamError::io("remove segment", p, e)),
            }
        }
    }
    if let Some(&last) = firsts.iter().filter(|f| **f < next).max() {
        let seg_path = dir.join(segment_name(last));
        let seg = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg_path)
            .map_err(io("open segment", &seg_path))?;
        let len = seg.metadata().map_err(io("stat segment", &seg_path))?.len();
        let mut pos = FILE_HEADER_LEN;
        while pos < len {
            let Some(h) = read_header(&seg, pos).map_err(io("read segment", &seg_path))? else {
                break;
            };
            if h.first_offset + u64::from(h.num_records) > next || h.first_offset >= next {
                break;
            }
            pos += stored_size(&h);
        }
        if pos < len {
            seg.set_len(pos)
                .map_err(io("truncate segment", &seg_path))?;
            seg.sync_all().map_err(io("sync segment", &seg_path))?;
            changed = true;
            let idx_path = dir.join(index_name(last));
            if let Ok(idx) = OpenOptions::new().read(true).write(true).open(&idx_path) {
                let idx_len = idx.metadata().map_err(io("stat index", &idx_path))?.len();
                let n = idx_len.saturating_sub(FILE_HEADER_LEN) / INDEX_RECORD_LEN as u64;
                let mut keep = 0;
                while keep < n {
                    match Shared::read_index_record(&idx, keep)? {
                        Some(r) if u64::from(r.position) < pos && r.chunk_id < next => keep += 1,
                        _ => break,
                    }
                }
                if keep < n {
                    idx.set_len(FILE_HEADER_LEN + keep * INDEX_RECORD_LEN as u64)
                        .map_err(io("truncate index", &idx_path))?;
                    idx.sync_all().map_err(io("sync index", &idx_path))?;
                }
            }
        }
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(changed)
}

impl StreamLog {
    /// Opens (creating or recovering) the stream in `dir`.
    pub fn open(
        dir: &Path,
        config: StreamConfig,
    ) -> Result<(StreamLog, StreamRecovery), StreamError> {
        std::fs::create_dir_all(dir).map_err(io("create stream directory", dir))?;
        let firsts = segment_firsts(dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            view: RwLock::new(View::default()),
            tracking: RwLock::new(Tracking::default()),
            listeners: Mutex::new((0, Vec::new())),
            deleted: AtomicBool::new(false),
            appended_messages: AtomicU64::new(0),
            recent: Mutex::new(Recent::default()),
            commit: Mutex::new(Commit {
                rule: CommitRule::Local,
                waiting: std::collections::VecDeque::new(),
            }),
        });
        let mut report = StreamRecovery::default();
        let mut sealed = Vec::new();
        let mut last_user_chunk = None;
        let Some((&last_first, earlier)) = firsts.split_last() else {
            let mut active = Self::create_segment(&shared, 0)?;
            active.go_direct(config.sync);
            let log = StreamLog {
                shared,
                config,
                sealed,
                active,
                next_offset: 0,
                last_timestamp: 0,
                tracking: Tracking::default(),
                last_user_chunk: None,
                last_chunk_id: None,
                last_chunk_type: None,
                unsynced: false,
                retention_due: false,
                buf: BytesMut::new(),
                in_place_chunks: 0,
                pipelined_chunks: 0,
                flusher: None,
            };
            log.publish();
            return Ok((log, report));
        };
        // Sealed segments: trust their (synced at roll) index; read only its ends.
        for &first in earlier {
            let meta = Self::sealed_meta(&shared, first)?;
            if let Some(m) = meta.0 {
                report.chunks += m.chunks;
                if meta.1.is_some() {
                    last_user_chunk = meta.1;
                }
                sealed.push(m);
            }
        }
        let (mut active, tracking, lu, last_chunk, next) =
            Self::recover_active(&shared, last_first, &mut report)?;
        let last_chunk_type = last_chunk.and_then(|(_, t)| ChunkType::from_code(t));
        let last_chunk = last_chunk.map(|(id, _)| id);
        active.go_direct(config.sync);
        if lu.is_some() {
            last_user_chunk = lu;
        }
        let next_offset = next.max(sealed.last().map_or(0, |s| s.next_chunk_id));
        report.segments = sealed.len() + 1;
        report.chunks += active.chunks;
        report.next_offset = next_offset;
        let log = StreamLog {
            shared,
            config,
            sealed,
            last_timestamp: active.last_timestamp,
            active,
            next_offset,
            tracking,
            last_user_chunk,
            last_chunk_id: last_chunk,
            last_chunk_type,
            unsynced: false,
            retention_due: false,
            buf: BytesMut::new(),
            in_place_chunks: 0,
            pipelined_chunks: 0,
            flusher: None,
        };
        log.publish();
        Ok((log, report))
    }

    /// A sealed segment's figures from the first and last records of its index, and its last
    /// user chunk. A sealed segment whose index does not verify is re-indexed from its data.
    fn sealed_meta(
        shared: &Shared,
        first: u64,
    ) -> Result<(Option<SegmentMeta>, Option<ChunkLocation>), StreamError> {
        let seg_path = shared.segment_path(first);
        let idx_path = shared.index_path(first);
        let seg_len = std::fs::metadata(&seg_path)
            .map_err(io("stat segment", &seg_path))?
            .len();
        let idx = File::open(&idx_path).ok();
        let idx_len = idx
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        let n = idx_len.saturating_sub(FILE_HEADER_LEN) / INDEX_RECORD_LEN as u64;
        let ends = match (&idx, n) {
            (Some(f), n) if n > 0 => {
                let a = Shared::read_index_record(f, 0)?;
                let b = Shared::read_index_record(f, n - 1)?;
                match (a, b) {
                    (Some(a), Some(b)) if b.end() == seg_len && a.chunk_id == first => Some((a, b)),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((a, b)) = ends else {
            // Rebuild (an index of a sealed segment should never be short; be safe).
            tracing::warn!(segment = %seg_path.display(), "sealed stream segment re-indexed");
            let mut report = StreamRecovery::default();
            let (active, _, lu, _, _) = Self::recover_active(shared, first, &mut report)?;
            let meta = SegmentMeta {
                first_chunk_id: first,
                next_chunk_id: active.first_chunk_id.max(first),
                first_timestamp: active.first_timestamp,
                last_timestamp: active.last_timestamp,
                size: active.seg_len + active.idx_len,
                data_len: active.seg_len,
                chunks: active.chunks,
            };
            let next = Self::next_of(shared, first, active.chunks)?;
            return Ok((
                Some(SegmentMeta {
                    next_chunk_id: next.unwrap_or(first),
                    ..meta
                }),
                lu,
            ));
        };
        // Its last user chunk: walk back from the end (snapshot chunks are first only).
        let mut lu = None;
        if let Some(f) = &idx {
            for i in (0..n).rev() {
                if let Some(r) = Shared::read_index_record(f, i)? {
                    if r.chunk_type == ChunkType::User.code() {
                        lu = Some(ChunkLocation {
                            segment: first,
                            record: r,
                        });
                        break;
                    }
                }
            }
        }
        Ok((
            Some(SegmentMeta {
                first_chunk_id: first,
                next_chunk_id: b.next_chunk_id(),
                first_timestamp: a.timestamp,
                last_timestamp: b.timestamp,
                size: seg_len + idx_len,
                data_len: seg_len,
                chunks: n,
            }),
            lu,
        ))
    }

    fn next_of(shared: &Shared, first: u64, chunks: u64) -> Result<Option<u64>, StreamError> {
        if chunks == 0 {
            return Ok(None);
        }
        let idx_path = shared.index_path(first);
        let f = File::open(&idx_path).map_err(io("open index", &idx_path))?;
        Ok(Shared::read_index_record(&f, chunks - 1)?.map(|r| r.next_chunk_id()))
    }

    /// Recovers the last segment: keeps the index records whose chunks verify, re-indexes
    /// complete chunks after them, truncates the torn tail, and replays tracking.
    #[allow(clippy::type_complexity)]
    fn recover_active(
        shared: &Shared,
        first: u64,
        report: &mut StreamRecovery,
    ) -> Result<
        (
            Active,
            Tracking,
            Option<ChunkLocation>,
            Option<(u64, u8)>,
            u64,
        ),
        StreamError,
    > {
        let seg_path = shared.segment_path(first);
        let idx_path = shared.index_path(first);
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(io("open", p))
        };
        let seg = open(&seg_path)?;
        let idx = open(&idx_path)?;
        let mut seg_len = seg.metadata().map_err(io("stat", &seg_path))?.len();
        let idx_file_len = idx.metadata().map_err(io("stat", &idx_path))?.len();
        let mut head = [0u8; FILE_HEADER_LEN as usize];
        let seg_ok = seg.read_exact_at(&mut head, 0).is_ok() && check_header(&head, SEGMENT_MAGIC);
        if !seg_ok {
            if seg_len > FILE_HEADER_LEN {
                return Err(StreamError::Corrupt(format!(
                    "{} is not a stream segment of a known version",
                    seg_path.display()
                )));
            }
            // Created but its header never made it: start it again.
            seg.set_len(0).map_err(io("truncate", &seg_path))?;
            seg.write_all_at(&file_header(SEGMENT_MAGIC), 0)
                .map_err(io("write", &seg_path))?;
            seg_len = FILE_HEADER_LEN;
        }
        let idx_ok = idx.read_exact_at(&mut head, 0).is_ok() && check_header(&head, INDEX_MAGIC);
        if !idx_ok {
            idx.set_len(0).map_err(io("truncate", &idx_path))?;
            idx.write_all_at(&file_header(INDEX_MAGIC), 0)
                .map_err(io("write", &idx_path))?;
        }
        let n = if idx_ok {
            idx_file_len.saturating_sub(FILE_HEADER_LEN) / INDEX_RECORD_LEN as u64
        } else {
            0
        };
        // Records that decode and follow each other (chunk ids and positions contiguous).
        let mut records: Vec<IndexRecord> = Vec::new();
        let mut expect_pos = FILE_HEADER_LEN;
        for i in 0..n {
            let Some(r) = Shared::read_index_record(&idx, i)? else {
                break;
            };
            if u64::from(r.position) != expect_pos
                || records
                    .last()
                    .is_some_and(|p| p.next_chunk_id() != r.chunk_id)
                || (records.is_empty() && r.chunk_id != first)
                || r.end() > seg_len
            {
                break;
            }
            expect_pos = r.end();
            records.push(r);
        }
        // The last indexed chunks may not have reached the disk although their index records
        // did: walk back until one verifies.
        while let Some(r) = records.last() {
            match read_verified(&seg, u64::from(r.position), seg_len)
                .map_err(io("read", &seg_path))?
            {
                Some(c) if c.header.first_offset == r.chunk_id => break,
                _ => {
                    records.pop();
                }
            }
        }
        // Complete chunks after the last good record: index them.
        let mut pos = records.last().map_or(FILE_HEADER_LEN, IndexRecord::end);
        let mut next = records.last().map_or(first, IndexRecord::next_chunk_id);
        while let Some(c) = read_verified(&seg, pos, seg_len).map_err(io("read", &seg_path))? {
            if c.header.first_offset != next {
                break;
            }
            let size = stored_size(&c.header);
            let r = IndexRecord {
                chunk_id: next,
                timestamp: c.header.timestamp,
                position: u32::try_from(pos)
                    .map_err(|_| StreamError::Corrupt("segment over 4 GiB".into()))?,
                size: size as u32,
                num_records: c.header.num_records,
                chunk_type: c.header.chunk_type.code(),
            };
            report.reindexed_chunks += 1;
            records.push(r);
            pos += size;
            next = r.next_chunk_id();
        }
        if pos < seg_len {
            report.truncated_bytes += seg_len - pos;
            tracing::warn!(segment = %seg_path.display(), bytes = seg_len - pos, "stream segment: torn tail truncated");
            seg.set_len(pos).map_err(io("truncate", &seg_path))?;
        }
        // Rewrite the index from the first record that differs (usually just the tail).
        let idx_len = FILE_HEADER_LEN + records.len() as u64 * INDEX_RECORD_LEN as u64;
        if report.reindexed_chunks > 0 || idx_file_len != idx_len {
            let start = (records.len() as u64).saturating_sub(report.reindexed_chunks);
            let mut b = Vec::new();
            for r in records.iter().skip(start as usize) {
                b.extend_from_slice(&r.encode());
            }
            idx.set_len(FILE_HEADER_LEN + start * INDEX_RECORD_LEN as u64)
                .map_err(io("truncate", &idx_path))?;
            idx.write_all_at(&b, FILE_HEADER_LEN + start * INDEX_RECORD_LEN as u64)
                .map_err(io("write", &idx_path))?;
        }
        seg.sync_all().map_err(io("sync", &seg_path))?;
        idx.sync_all().map_err(io("sync", &idx_path))?;
        // Tracking: the snapshot at the segment's start and every trailer after it.
        let mut tracking = Tracking::default();
        let mut last_user = None;
        for r in &records {
            if r.chunk_type == ChunkType::User.code() {
                last_user = Some(ChunkLocation {
                    segment: first,
                    record: *r,
                });
            }
            let Some(h) =
                read_header(&seg, u64::from(r.position)).map_err(io("read", &seg_path))?
            else {
                continue;
            };
            if h.trailer_length == 0 {
                continue;
            }
            let at = u64::from(r.position)
                + CHUNK_HEADER_SIZE as u64
                + u64::from(h.bloom_size)
                + u64::from(h.data_length);
            let mut t = vec![0u8; h.trailer_length as usize];
            seg.read_exact_at(&mut t, at)
                .map_err(io("read", &seg_path))?;
            tracking.apply(decode_trailer(&t)?);
        }
        let first_ts = records.first().map_or(0, |r| r.timestamp);
        let last_ts = records.last().map_or(0, |r| r.timestamp);
        let last_chunk = records.last().map(|r| (r.chunk_id, r.chunk_type));
        let active = Active {
            first_chunk_id: first,
            seg: Arc::new(seg),
            idx: Arc::new(idx),
            seg_path,
            idx_path,
            seg_len: pos,
            idx_len,
            chunks: records.len() as u64,
            first_timestamp: first_ts,
            last_timestamp: last_ts,
            direct: None,
        };
        Ok((active, tracking, last_user, last_chunk, next))
    }

    fn create_segment(shared: &Shared, first: u64) -> Result<Active, StreamError> {
        let seg_path = shared.segment_path(first);
        let idx_path = shared.index_path(first);
        let create = |p: &Path, magic: &[u8; 8]| -> Result<File, StreamError> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map_err(io("create", p))?;
            f.write_all_at(&file_header(magic), 0)
                .map_err(io("write", p))?;
            f.sync_all().map_err(io("sync", p))?;
            Ok(f)
        };
        let seg = create(&seg_path, SEGMENT_MAGIC)?;
        let idx = create(&idx_path, INDEX_MAGIC)?;
        sync_dir(&shared.dir)?;
        Ok(Active {
            first_chunk_id: first,
            seg: Arc::new(seg),
            idx: Arc::new(idx),
            seg_path,
            idx_path,
            seg_len: FILE_HEADER_LEN,
            idx_len: FILE_HEADER_LEN,
            chunks: 0,
            first_timestamp: 0,
            last_timestamp: 0,
            direct: None,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: StreamConfig) {
        self.config = config;
    }

    /// The active segment takes direct writes (the stream syncs, the filesystem allows it).
    #[cfg(test)]
    pub(crate) fn writes_direct(&self) -> bool {
        self.active.direct.is_some()
    }

    /// The offset the next message gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Writer sequences and offsets, including what is written but not yet synced.
    pub fn tracking(&self) -> &Tracking {
        &self.tracking
    }

    fn timestamp(&mut self) -> i64 {
        // Chunk timestamps never go backwards, so a binary search by time is sound.
        self.last_timestamp = self.last_timestamp.max(now_ms());
        self.last_timestamp
    }

    /// Appends one chunk of user entries (with their filter values); `writers` are the
    /// publisher sequences it completes. Not visible to readers until [`StreamLog::sync`].
    pub fn append_user(
        &mut self,
        entries: &[(Entry, Option<Bytes>)],
        writers: &[(String, u64)],
    ) -> Result<IndexRecord, StreamError> {
        let bytes: usize = entries.iter().map(|(e, _)| e.encoded_len()).sum();
        let trailer = Bytes::from(encode_trailer(
            &writers
                .iter()
                .map(|(reference, sequence)| TrackingEntry::Writer {
                    reference: reference.clone(),
                    sequence: *sequence,
                })
                .collect::<Vec<_>>(),
        ));
        let r = match self.append_user_in_place(entries, &trailer, bytes)? {
            Some(r) => r,
            None => {
                let ts = self.timestamp();
                let mut b = ChunkBuilder::new(self.next_offset, 1, ts)
                    .filter_size(self.config.filter_size)
                    .reserve(CHUNK_HEADER_SIZE + bytes)
                    .headroom();
                for (e, f) in entries {
                    b.push_entry(e, f.as_deref())
                        .map_err(|e| StreamError::Chunk(e.to_string()))?;
                }
                let (chunk, delivered) = b.trailer(trailer).build_delivered();
                self.write_chunk(&chunk, delivered)?
            }
        };
        for (reference, sequence) in writers {
            let s = self.tracking.writers.entry(reference.clone()).or_insert(0);
            *s = (*s).max(*sequence);
        }
        let n = entries.len() as u64;
        self.shared
            .appended_messages
            .fetch_add(n, Ordering::Relaxed);
        Ok(r)
    }

    /// Builds a big user chunk without filter values where the direct write sends it from
    /// (an aligned buffer holding the segment's last partial block, then the chunk, then
    /// zeros to the block boundary): the entries are copied once, from the publishers'
    /// frames into the chunk, instead of a second time into the writer's aligned buffer
    /// (which at 1 KiB messages was about half of the writer's copying). `None`: this chunk
    /// goes the general way ([`StreamLog::write_chunk`]).
    fn append_user_in_place(
        &mut self,
        entries: &[(Entry, Option<Bytes>)],
        trailer: &Bytes,
        bytes: usize,
    ) -> Result<Option<IndexRecord>, StreamError> {
        if bytes < IN_PLACE_MIN
            || self.active.direct.is_none()
            || entries.iter().any(|(_, f)| f.is_some())
        {
            return Ok(None);
        }
        let size = CHUNK_HEADER_SIZE + bytes + trailer.len();
        if size as u64 > u64::from(u32::MAX) / 2 {
            return Ok(None); // refused there
        }
        // Rolled first: the new segment's tail is what the chunk is built after.
        if self.active.chunks > 0
            && self.active.seg_len + size as u64 > self.config.max_segment_size_bytes
        {
            self.roll()?;
        }
        let ts = self.timestamp();
        let Some(d) = self.active.direct.as_ref() else {
            return Ok(None);
        };
        let tail_len = d.tail().len();
        let logical = tail_len + size;
        let padded = logical.next_multiple_of(ALIGN);
        let mut buf = BytesMut::with_capacity(ALIGN + padded);
        let lead = buf.as_ptr().align_offset(ALIGN);
        if lead >= ALIGN {
            return Ok(None);
        }
        buf.put_bytes(0, lead);
        buf.extend_from_slice(d.tail());
        buf.put_bytes(0, CHUNK_HEADER_SIZE);
        let mut b = ChunkBuilder::new(self.next_offset, 1, ts)
            .filter_size(self.config.filter_size)
            .trailer(trailer.clone())
            .in_buffer(buf);
        for (e, f) in entries {
            b.push_entry(e, f.as_deref())
                .map_err(|e| StreamError::Chunk(e.to_string()))?;
        }
        let (header, bloom, mut buf) = b.build_in_place();
        buf.extend_from_slice(trailer);
        buf.put_bytes(0, padded - logical);
        let position = u32::try_from(self.active.seg_len)
            .map_err(|_| StreamError::Chunk("segment over 4 GiB".into()))?;
        let all = buf.freeze();
        let block = all.slice(lead..);
        let pipelined =
            bytes >= PIPELINE_MIN && self.active.direct.as_ref().is_some_and(|d| d.proven());
        if !pipelined {
            self.drain()?;
        }
        let a = &mut self.active;
        let Some(d) = a.direct.as_mut() else {
            return Ok(None);
        };
        if !pipelined {
            // Written here: a chunk too small to gain from the flusher (its handoffs cost
            // more CPU than the overlap saves), or the segment's first direct write (a
            // device that refuses it sends this chunk, and the ones after, the general
            // way: buffered).
            match d.append_built(&block, logical) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return Ok(None),
                Err(e) => return Err(io("write", &a.seg_path)(e)),
            }
        } else {
            let f = match &mut self.flusher {
                Some(f) => f,
                none => {
                    let name = format!("{}-io", std::thread::current().name().unwrap_or("stream"));
                    none.insert(Flusher::start(name)?)
                }
            };
            let path = a.seg_path.clone();
            match d.append_built_with(&block, logical, |file, at| {
                f.write(file, block.clone(), at, path)
            }) {
                Ok(()) => {}
                // Not laid out as a direct write needs: the general way writes it.
                Err(DirectError::Refused) => return Ok(None),
                Err(DirectError::Write(e)) => return Err(owned(&e)),
            }
            self.pipelined_chunks += 1;
        }
        let at = lead + tail_len;
        let data_at = at + CHUNK_HEADER_SIZE;
        let chunk = Chunk {
            header,
            bloom,
            data: all.slice(data_at..data_at + bytes),
            trailer: all.slice(data_at + bytes..data_at + bytes + trailer.len()),
        };
        let delivered = all.slice(at..data_at + bytes);
        self.in_place_chunks += 1;
        // Without a bloom filter the stored form is header, data, trailer: one slice.
        let stored = all.slice(at..data_at + bytes + trailer.len());
        self.record_written(&chunk, position, size as u64, Some(delivered), Some(stored))
            .map(Some)
    }

    /// Appends a tracking delta chunk (consumer offsets stored).
    pub fn append_tracking(
        &mut self,
        entries: Vec<TrackingEntry>,
    ) -> Result<IndexRecord, StreamError> {
        let r = self.append_tracking_chunk(ChunkType::TrackingDelta, &entries)?;
        self.tracking.apply(entries);
        Ok(r)
    }

    fn append_tracking_chunk(
        &mut self,
        t: ChunkType,
        entries: &[TrackingEntry],
    ) -> Result<IndexRecord, StreamError> {
        let ts = self.timestamp();
        let trailer = encode_trailer(entries);
        let mut chunk = ChunkBuilder::new(self.next_offset, 1, ts)
            .chunk_type(t)
            .trailer(Bytes::from(trailer))
            .build();
        // A tracking chunk takes one offset (no consumer sees it), so chunk ids stay unique.
        chunk.header.num_records = 1;
        self.write_chunk(&chunk, None)
    }

    /// Writes a chunk at the end of the active segment (rolling to a new segment first when
    /// this one is full), indexes it, and hands it to readers at the tail (`delivered`: a
    /// user chunk's delivered form, built with it).
    fn write_chunk(
        &mut self,
        chunk: &Chunk,
        mut delivered: Option<Bytes>,
    ) -> Result<IndexRecord, StreamError> {
        self.drain()?;
        let size = stored_size(&chunk.header);
        if size > u64::from(u32::MAX) / 2 {
            return Err(StreamError::Chunk(format!(
                "chunk of {size} bytes is too large"
            )));
        }
        let mut renumbered = None;
        if self.active.chunks > 0 && self.active.seg_len + size > self.config.max_segment_size_bytes
        {
            self.roll()?;
            // The chunk was built for the old next offset: a snapshot may have taken one.
            if chunk.header.first_offset != self.next_offset {
                let mut c = chunk.clone();
                c.header.first_offset = self.next_offset;
                // Its delivered form had the old header: made again (once per segment).
                delivered =
                    (delivered.is_some() && c.header.chunk_type == ChunkType::User).then(|| {
                        let mut d = BytesMut::with_capacity(c.delivered_len());
                        c.encode_delivered(&mut d);
                        d.freeze()
                    });
                renumbered = Some(c);
            }
        }
        let chunk = renumbered.as_ref().unwrap_or(chunk);
        // Header and bloom filter; the data and trailer go from where they are.
        self.buf.clear();
        chunk.encode_stored_prefix(&mut self.buf);
        let a = &mut self.active;
        let position = u32::try_from(a.seg_len)
            .map_err(|_| StreamError::Chunk("segment over 4 GiB".into()))?;
        let parts: [&[u8]; 3] = [&self.buf, &chunk.data, &chunk.trailer];
        let direct = match &mut a.direct {
            Some(d) => match d.append(&parts) {
                Ok(()) => true,
                // A device whose blocks are larger than ALIGN: write through the page
                // cache from here on (what the direct write left past the end is
                // overwritten or trimmed).
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    tracing::warn!(segment = %a.seg_path.display(), "stream: direct writes refused ({e}); writing through the page cache");
                    a.direct = None;
                    false
                }
                Err(e) => return Err(io("write", &a.seg_path)(e)),
            },
            None => false,
        };
        if !direct {
            let mut at = a.seg_len;
            for p in parts {
                a.seg
                    .write_all_at(p, at)
                    .map_err(io("write", &a.seg_path))?;
                at += p.len() as u64;
            }
        }
        // A replicated stream's leader keeps the stored form for its replicas (one copy of
        // a chunk that is small, or has a bloom filter; big ones are built in place).
        let stored = self.shared.is_replicated().then(|| {
            let mut b = BytesMut::with_capacity(size as usize);
            b.extend_from_slice(&self.buf);
            b.extend_from_slice(&chunk.data);
            b.extend_from_slice(&chunk.trailer);
            b.freeze()
        });
        self.record_written(chunk, position, size, delivered, stored)
    }

    /// Indexes a chunk just written at `position` and hands it to readers at the tail.
    fn record_written(
        &mut self,
        chunk: &Chunk,
        position: u32,
        size: u64,
        delivered: Option<Bytes>,
        stored: Option<Bytes>,
    ) -> Result<IndexRecord, StreamError> {
        let a = &mut self.active;
        let r = IndexRecord {
            chunk_id: self.next_offset,
            timestamp: chunk.header.timestamp,
            position,
            size: size as u32,
            num_records: chunk.header.num_records,
            chunk_type: chunk.header.chunk_type.code(),
        };
        a.idx
            .write_all_at(&r.encode(), a.idx_len)
            .map_err(io("write", &a.idx_path))?;
        a.seg_len += size;
        a.idx_len += INDEX_RECORD_LEN as u64;
        if a.chunks == 0 {
            a.first_timestamp = r.timestamp;
        }
        a.chunks += 1;
        a.last_timestamp = r.timestamp;
        self.next_offset = r.next_chunk_id();
        if r.chunk_type == ChunkType::User.code() {
            self.last_user_chunk = Some(ChunkLocation {
                segment: a.first_chunk_id,
                record: r,
            });
        }
        self.last_chunk_id = Some(r.chunk_id);
        self.last_chunk_type = Some(chunk.header.chunk_type);
        self.unsynced = true;
        // Readers at the tail: a user chunk as delivered, any other as a header to skip (a
        // user chunk without its delivered form is left to the file).
        let recent = match (chunk.header.chunk_type, delivered) {
            (ChunkType::User, Some(delivered)) => Some(Some(ReadChunk {
                header: chunk.header,
                bloom: chunk.bloom.clone(),
                delivered,
            })),
            (ChunkType::User, None) => None,
            _ => Some(None),
        };
        if let Some(c) = recent {
            self.shared.remember(RecentChunk {
                chunk_id: r.chunk_id,
                header: chunk.header,
                chunk: c,
                stored,
            });
        }
        Ok(r)
    }

    /// A replica's write: chunks as its leader stored them ([`Shared::read_stored`]), which
    /// must continue this log (the first one's id is [`StreamLog::next_offset`]). Each is
    /// checked (header, data CRC, trailer) and written as it is, so the replica's chunks and
    /// offsets are the leader's. Segments roll where the leader's did: before a tracking
    /// snapshot (the leader starts every segment with one when it has tracking) and, for a
    /// leader without tracking, where the same size rule puts the roll. Not visible to
    /// readers until [`StreamLog::sync`]; returns the chunks written.
    pub fn accept(&mut self, stored: &Bytes) -> Result<usize, StreamError> {
        self.drain()?;
        let mut at = 0;
        let mut n = 0;
        while at < stored.len() {
            let rest = stored.slice(at..);
            let (chunk, used) = Chunk::parse_stored(&rest)
                .map_err(|e| StreamError::Chunk(format!("replicated chunk: {e}")))?;
            if chunk.header.first_offset != self.next_offset
                && self.sealed.is_empty()
                && self.active.chunks == 0
            {
                // An empty replica of a stream whose first chunks retention removed: it
                // starts where its leader's log now starts.
                self.restart_empty_at(chunk.header.first_offset)?;
            }
            if chunk.header.first_offset != self.next_offset {
                return Err(StreamError::Chunk(format!(
                    "replicated chunk {} does not continue the log (next offset {})",
                    chunk.header.first_offset, self.next_offset
                )));
            }
            chunk
                .verify_crc()
                .map_err(|e| StreamError::Chunk(format!("replicated chunk: {e}")))?;
            let entries = decode_trailer(&chunk.trailer)?;
            let size = used as u64;
            // The leader checks its size rule before a chunk, and after a roll writes the
            // snapshot and the chunk into the new segment without checking it again.
            let opened_by_snapshot = self.active.chunks == 1
                && self.last_chunk_type == Some(ChunkType::TrackingSnapshot);
            if self.active.chunks > 0
                && (chunk.header.chunk_type == ChunkType::TrackingSnapshot
                    || (!opened_by_snapshot
                        && self.active.seg_len + size > self.config.max_segment_size_bytes))
            {
                self.roll_segment(false)?;
            }
            let position = u32::try_from(self.active.seg_len)
                .map_err(|_| StreamError::Chunk("segment over 4 GiB".into()))?;
            let bytes = rest.slice(..used);
            let a = &mut self.active;
            let direct = match &mut a.direct {
                Some(d) => match d.append(&[&bytes]) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                        a.direct = None;
                        false
                    }
                    Err(e) => return Err(io("write", &a.seg_path)(e)),
                },
                None => false,
            };
            if !direct {
                a.seg
                    .write_all_at(&bytes, a.seg_len)
                    .map_err(io("write", &a.seg_path))?;
            }
            // Without a bloom filter the stored form begins with the delivered one.
            let delivered = (chunk.header.chunk_type == ChunkType::User
                && chunk.header.bloom_size == 0)
                .then(|| bytes.slice(..CHUNK_HEADER_SIZE + chunk.header.data_length as usize));
            self.last_timestamp = self.last_timestamp.max(chunk.header.timestamp);
            if chunk.header.chunk_type == ChunkType::User {
                self.shared
                    .appended_messages
                    .fetch_add(u64::from(chunk.header.num_entries), Ordering::Relaxed);
            }
            self.record_written(&chunk, position, size, delivered, Some(bytes))?;
            self.tracking.apply(entries);
            at += used;
            n += 1;
        }
        Ok(n)
    }

    /// Moves an empty log's start to `offset` (its only, empty segment is made again
    /// there).
    fn restart_empty_at(&mut self, offset: u64) -> Result<(), StreamError> {
        self.drain()?;
        let old = (self.active.seg_path.clone(), self.active.idx_path.clone());
        self.active = Self::create_segment(&self.shared, offset)?;
        self.active.go_direct(self.config.sync);
        if old.0 != self.active.seg_path {
            for p in [old.0, old.1] {
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(StreamError::io("delete segment", p, e));
                    }
                }
            }
            sync_dir(&self.shared.dir)?;
        }
        self.next_offset = offset;
        self.unsynced = true;
        Ok(())
    }

    /// The stream is idle: its newest chunks need not stay in memory, nor its flusher
    /// thread run.
    pub fn idle(&mut self) {
        if let Err(e) = self.drain() {
            tracing::warn!("stream: {e}");
        }
        self.flusher = None;
        self.shared.forget_recent();
    }

    /// Waits at most `timeout` for the flusher to finish what it was given: whether it
    /// has (a log without a flusher has nothing in flight).
    pub(crate) fn wait_flushed(&self, timeout: std::time::Duration) -> bool {
        self.flusher.as_ref().is_none_or(|f| f.wait_idle(timeout))
    }

    /// Waits until the flusher has written and synced everything it was given.
    pub(crate) fn drain(&mut self) -> Result<(), StreamError> {
        match &self.flusher {
            Some(f) => f.drain().map_err(|e| owned(&e)),
            None => Ok(()),
        }
    }

    /// Seals the active segment and starts the next one with a tracking snapshot.
    fn roll(&mut self) -> Result<(), StreamError> {
        self.roll_segment(true)
    }

    /// Seals the active segment and starts the next one, with a tracking snapshot when
    /// `snapshot` (a replica takes its leader's snapshots as they come).
    fn roll_segment(&mut self, snapshot: bool) -> Result<(), StreamError> {
        self.drain()?;
        self.active.trim()?;
        let a = &self.active;
        a.seg.sync_data().map_err(io("sync", &a.seg_path))?;
        a.idx.sync_data().map_err(io("sync", &a.idx_path))?;
        self.sealed.push(SegmentMeta {
            first_chunk_id: a.first_chunk_id,
            next_chunk_id: self.next_offset,
            first_timestamp: a.first_timestamp,
            last_timestamp: a.last_timestamp,
            size: a.seg_len + a.idx_len,
            data_len: a.seg_len,
            chunks: a.chunks,
        });
        self.active = Self::create_segment(&self.shared, self.next_offset)?;
        self.active.go_direct(self.config.sync);
        let entries = self.tracking.snapshot();
        if snapshot && !entries.is_empty() {
            self.append_tracking_chunk(ChunkType::TrackingSnapshot, &entries)?;
        }
        // A segment was sealed: the oldest ones may now be over the limits (applied after
        // the next sync, so that readers never see unsynced chunks).
        self.retention_due = true;
        Ok(())
    }

    /// Makes everything written durable (unless the stream does not sync), then shows it to
    /// readers and wakes them.
    pub fn sync(&mut self) -> Result<(), StreamError> {
        self.drain()?;
        if !self.unsynced {
            return Ok(());
        }
        if self.config.sync {
            let a = &self.active;
            a.seg.sync_data().map_err(io("sync", &a.seg_path))?;
            a.idx.sync_data().map_err(io("sync", &a.idx_path))?;
        }
        self.unsynced = false;
        self.publish();
        self.shared.notify();
        if std::mem::take(&mut self.retention_due) {
            self.apply_retention()?;
        }
        Ok(())
    }

    /// As [`StreamLog::sync`], but with the flusher running `then` runs on its thread once
    /// everything written so far is synced and shown to readers, and the writer goes on at
    /// once (it builds the next batch meanwhile). Without one, `then` runs here, after
    /// [`StreamLog::sync`].
    pub fn sync_then(&mut self, then: AfterSync) {
        let Some(f) = self
            .flusher
            .as_ref()
            .filter(|f| !f.wait_idle(std::time::Duration::ZERO))
        else {
            // Nothing in flight: synced here, without a handoff.
            let r = self.sync().map_err(Arc::new);
            then(r);
            return;
        };
        // (A flusher exists only for a stream that syncs: its direct writes need it.)
        if !self.unsynced {
            // Nothing new to sync: `then` runs after what is queued.
            f.then(then);
            return;
        }
        let a = &self.active;
        let files = [
            (Arc::clone(&a.seg), a.seg_path.clone()),
            (Arc::clone(&a.idx), a.idx_path.clone()),
        ];
        self.unsynced = false;
        let show = self.view_update();
        let shared = Arc::clone(&self.shared);
        f.sync(
            files,
            Box::new(move |r| {
                if r.is_ok() {
                    show();
                    shared.notify();
                }
                then(r);
            }),
        );
        if self.retention_due {
            // Once per sealed segment: the pipeline drains for it.
            self.retention_due = false;
            if let Err(e) = self.apply_retention() {
                tracing::error!(dir = %self.shared.dir.display(), "stream retention: {e}");
            }
        }
    }

    /// Publishes the writer's state as the committed view.
    fn publish(&self) {
        (self.view_update())();
    }

    /// What [`StreamLog::publish`] shows, taken now and shown when called (after a sync
    /// the flusher ran): readers and replicas are woken.
    fn view_update(&self) -> impl FnOnce() + Send + 'static {
        let a = &self.active;
        let mut segments = self.sealed.clone();
        segments.push(SegmentMeta {
            first_chunk_id: a.first_chunk_id,
            next_chunk_id: self.next_offset,
            first_timestamp: a.first_timestamp,
            last_timestamp: a.last_timestamp,
            size: a.seg_len + a.idx_len,
            data_len: a.seg_len,
            chunks: a.chunks,
        });
        let next = self.next_offset;
        let (last_user_chunk, last_chunk_id) = (self.last_user_chunk, self.last_chunk_id);
        let tracking = {
            let t = self
                .shared
                .tracking
                .read()
                .unwrap_or_else(|p| p.into_inner());
            (*t != self.tracking).then(|| self.tracking.clone())
        };
        let shared = Arc::clone(&self.shared);
        move || {
            // Readers are woken by `notify` after the view and the tracking moved, which
            // also wakes replicas' reads.
            shared.recommit_with(
                shared.commit_state(),
                |v| {
                    v.segments = segments;
                    v.written_next = next;
                    v.last_user_chunk = last_user_chunk;
                    v.last_chunk_id = last_chunk_id;
                },
                false,
            );
            if let Some(tracking) = tracking {
                *shared.tracking.write().unwrap_or_else(|p| p.into_inner()) = tracking;
            }
        }
    }

    /// Deletes whole segments from the front while the stream is over `max_length_bytes` or
    /// a segment's newest chunk is older than `max_age`; the active segment always stays.
    /// Returns how many segments went.
    pub fn apply_retention(&mut self) -> Result<usize, StreamError> {
        self.drain()?;
        let now = now_ms();
        let active_size = self.active.seg_len + self.active.idx_len;
        let mut total: u64 = self.sealed.iter().map(|s| s.size).sum::<u64>() + active_size;
        let mut n = 0;
        while let Some(s) = self.sealed.get(n) {
            let over_size = self.config.max_length_bytes.is_some_and(|m| total > m);
            let too_old = self.config.max_age_ms.is_some_and(|age| {
                s.last_timestamp < now.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX))
            });
            if !over_size && !too_old {
                break;
            }
            total -= s.size;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let gone: Vec<SegmentMeta> = self.sealed.drain(..n).collect();
        // Readers find the new first segment before the files go (open files stay readable).
        self.publish();
        for s in &gone {
            for p in [
                self.shared.segment_path(s.first_chunk_id),
                self.shared.index_path(s.first_chunk_id),
            ] {
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(StreamError::io("delete segment", p, e));
                    }
                }
            }
        }
        sync_dir(&self.shared.dir)?;
        self.shared.notify();
        Ok(n)
    }
}

/// An error the flusher shares (it may answer many callbacks) as one the writer returns.
fn owned(e: &Arc<StreamError>) -> StreamError {
    match &**e {
        StreamError::Io { op, path, source } => StreamError::Io {
            op,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StreamError::Corrupt(s) => StreamError::Corrupt(s.clone()),
        StreamError::Chunk(s) => StreamError::Chunk(s.clone()),
        StreamError::Deleted => StreamError::Deleted,
        StreamError::Stopped => StreamError::Stopped,
        StreamError::Busy => StreamError::Busy,
        StreamError::Replica => StreamError::Replica,
        StreamError::Deposed => StreamError::Deposed,
    }
}
