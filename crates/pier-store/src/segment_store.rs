//! The disk backend: one append-only log of checksummed message records split into segment
//! files, a sidecar ack file per segment, and the queue registry. See docs/storage.md.
//!
//! ```text
//!  append ─► active buffer ─(flush: one pwrite)─► NNNNNNNN.seg ─(sync: one fdatasync)─► durable
//!  ack    ─► index tombstone + segment live count ─(flush)─► NNNNNNNN.ack   (synced lazily)
//!  segment live count == 0 and not active ─► delete .seg + .ack
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::commit::{SyncFile, SyncJob, SyncPlan};
use crate::error::StoreError;
use crate::files::{self, ACK_MAGIC, FILE_HEADER_LEN, SEGMENT_MAGIC};
use crate::index::{IndexEntry, QueueIndex};
use crate::message::{self, is_message, DiskRef, EncodedMessage, StoredMessage};
use crate::record::{self, kind, Parsed, Reader};
use crate::registry::{Registry, MAX_QUEUE_NAME};
use crate::store::{
    LiveMessage, MessageStore, QueueId, QueueInfo, QueueRef, Result, Returns, Seq, StoreStats,
    SyncPolicy,
};

/// Tunables of a [`SegmentStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// A segment is closed once the next record would take it past this size (a record larger
    /// than a segment gets a segment of its own). Clamped to 64 KiB ..= 1 GiB.
    pub segment_size: u32,
    /// Largest accepted record (message + references + 9 bytes). Clamped to ..= 1 GiB.
    pub max_record_size: u32,
    pub sync_policy: SyncPolicy,
    /// Buffered appends are written out early once this many bytes are pending, so a burst
    /// never holds more than this in the write buffer.
    pub write_buffer: usize,
    /// How often ack files and delivered marks are fdatasynced (they never hold up confirms).
    pub lazy_sync_interval: Duration,
    /// Recovery logs progress at most this often.
    pub progress_interval: Duration,
    /// Read handles kept open for non-active segments.
    pub open_read_files: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_size: 32 << 20,
            max_record_size: 256 << 20,
            sync_policy: SyncPolicy::Always,
            write_buffer: 1 << 20,
            lazy_sync_interval: Duration::from_secs(1),
            progress_interval: Duration::from_secs(5),
            open_read_files: 64,
        }
    }
}

/// What recovery found. Also logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: u64,
    pub bytes_scanned: u64,
    pub records: u64,
    pub live_messages: u64,
    /// References dropped because an ack file recorded them.
    pub acked_refs: u64,
    /// References to deleted or purged queues.
    pub dead_refs: u64,
    /// Damaged regions skipped in the middle of files.
    pub corrupt_regions: u64,
    pub corrupt_bytes: u64,
    /// Records whose checksum verified but whose payload did not decode (skipped).
    pub undecodable_records: u64,
    /// Bytes cut off torn tails.
    pub torn_bytes: u64,
    /// Segments deleted because nothing in them was live.
    pub deleted_segments: u64,
    /// Segment files ignored because their header is unknown (left in place).
    pub unreadable_segments: u64,
    pub elapsed: Duration,
}

#[derive(Debug)]
struct AckFile {
    file: File,
    len: u64,
}

#[derive(Debug, Default)]
struct SegmentMeta {
    /// Live references into this segment (a fan-out record counts once per queue).
    live: u64,
    /// Bytes of the data file.
    size: u64,
    ack: Option<AckFile>,
    ack_len: u64,
    /// Acks not yet written to the ack file: (disk id, record position).
    pending_acks: Vec<(u32, u32)>,
}

#[derive(Debug)]
struct Active {
    id: u32,
    path: PathBuf,
    /// Shared with sync jobs in flight (see `commit.rs`).
    file: Arc<File>,
    /// Bytes already written to the file.
    written: u64,
    /// Records appended but not written yet.
    buf: Vec<u8>,
    /// A failed write could not be cut off (`ftruncate` failed too): bytes of unknown content
    /// may follow `written`. Nothing more is appended to this file; the next append rotates.
    torn: bool,
}

#[derive(Debug)]
struct QueueState {
    name: String,
    disk_id: u32,
    index: QueueIndex,
    next_offset: u64,
}

/// The segment-file message store. Owned by one thread; see [`crate::StoreThread`].
#[derive(Debug)]
pub struct SegmentStore {
    dir: PathBuf,
    config: StoreConfig,
    registry: Registry,
    queues: Vec<Option<QueueState>>,
    by_name: HashMap<String, QueueId>,
    by_disk: HashMap<u32, QueueId>,
    segments: BTreeMap<u32, SegmentMeta>,
    active: Active,
    /// Segments rotated out since the last sync: written, not yet fdatasynced.
    unsynced: Vec<Unsynced>,
    /// Directory changes (files created or deleted): `dir_gen` counts them; the directory is
    /// durable up to `dir_synced_gen`, and a job in flight covers up to `dir_requested_gen`.
    dir_gen: u64,
    dir_synced_gen: u64,
    dir_requested_gen: u64,
    /// The highest seq a sync job handed out covers (durable once that job is done).
    sync_requested: u64,
    acks_dirty: BTreeSet<u32>,
    ack_files_unsynced: BTreeSet<u32>,
    dead: Vec<u32>,
    readers: HashMap<u32, File>,
    last_seq: u64,
    flushed_seq: u64,
    durable_seq: u64,
    last_sync: Instant,
    last_lazy_sync: Instant,
    poisoned: bool,
    /// Ack / delivered-mark writes are failing (logged once per incident).
    side_writes_failing: bool,
    syncs: u64,
    report: RecoveryReport,
    scratch_refs: Vec<DiskRef>,
}

/// A closed segment not yet known to be fdatasynced.
#[derive(Debug)]
struct Unsynced {
    id: u32,
    path: PathBuf,
    file: Arc<File>,
    /// A sync job in flight covers it.
    requested: bool,
}

fn is_acks(t: u8) -> bool {
    t == kind::ACKS
}

impl SegmentStore {
    /// Opens the store in `dir` (created if missing), recovering everything on disk: every
    /// record's checksum is verified, torn tails are truncated, corrupt regions skipped and
    /// logged, and the live messages of every queue are indexed in offset order.
    pub fn open(dir: impl AsRef<Path>, mut config: StoreConfig) -> Result<SegmentStore> {
        let started = Instant::now();
        config.segment_size = config.segment_size.clamp(64 << 10, 1 << 30);
        config.max_record_size = config
            .max_record_size
            .clamp(1 << 10, crate::index::MAX_RECORD_LEN);
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("create directory", &dir, e))?;
        let registry = Registry::open(&dir)?;

        let mut seg_ids = BTreeSet::new();
        let mut ack_ids = BTreeSet::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
            if let Some((id, is_ack)) = entry.file_name().to_str().and_then(files::parse_name) {
                if is_ack {
                    ack_ids.insert(id);
                } else {
                    seg_ids.insert(id);
                }
            }
        }

        let mut queues = Vec::new();
        let mut by_name = HashMap::new();
        let mut by_disk = HashMap::new();
        for (&disk_id, q) in &registry.queues {
            let id = QueueId(queues.len() as u32);
            queues.push(Some(QueueState {
                name: q.name.clone(),
                disk_id,
                index: QueueIndex::new(),
                next_offset: q.delivered.map_or(0, |d| d.saturating_add(1)),
            }));
            by_name.insert(q.name.clone(), id);
            by_disk.insert(disk_id, id);
        }

        let next_segment = seg_ids
            .iter()
            .chain(ack_ids.iter())
            .max()
            .map_or(1, |m| m.saturating_add(1));
        let active = create_active(&dir, next_segment)?;
        let mut store = SegmentStore {
            dir,
            config,
            registry,
            queues,
            by_name,
            by_disk,
            segments: BTreeMap::new(),
            active,
            unsynced: Vec::new(),
            dir_gen: 1,
            dir_synced_gen: 0,
            dir_requested_gen: 0,
            sync_requested: 0,
            acks_dirty: BTreeSet::new(),
            ack_files_unsynced: BTreeSet::new(),
            dead: Vec::new(),
            readers: HashMap::new(),
            last_seq: 0,
            flushed_seq: 0,
            durable_seq: 0,
            last_sync: Instant::now(),
            last_lazy_sync: Instant::now(),
            poisoned: false,
            side_writes_failing: false,
            syncs: 0,
            report: RecoveryReport::default(),
            scratch_refs: Vec::new(),
        };
        store.segments.insert(next_segment, SegmentMeta::default());

        let total = seg_ids.len();
        let mut last_progress = Instant::now();
        for (n, &id) in seg_ids.iter().enumerate() {
            store.recover_segment(id, ack_ids.contains(&id))?;
            if last_progress.elapsed() >= store.config.progress_interval {
                last_progress = Instant::now();
                info!(
                    segment = n + 1,
                    of = total,
                    records = store.report.records,
                    live = store.report.live_messages,
                    mib = store.report.bytes_scanned >> 20,
                    "message store recovery in progress"
                );
            }
        }
        for id in ack_ids.difference(&seg_ids) {
            // An ack file whose segment is gone (deleted between the two unlinks).
            files::remove_if_exists(&files::ack_path(&store.dir, *id))?;
        }
        for q in store.queues.iter_mut().flatten() {
            if let Some(d) = store
                .registry
                .queues
                .get(&q.disk_id)
                .and_then(|r| r.delivered)
            {
                q.index.mark_redelivered_upto(d);
            }
        }
        // Return counts of messages acked before the crash are history.
        let (queues, by_disk) = (&store.queues, &store.by_disk);
        store.registry.retain_notes(|disk_id, off| {
            by_disk
                .get(&disk_id)
                .and_then(|q| queues.get(q.0 as usize))
                .and_then(Option::as_ref)
                .is_some_and(|q| q.index.get(off).is_some())
        });
        let empty: Vec<u32> = store
            .segments
            .iter()
            .filter(|(&id, m)| m.live == 0 && id != store.active.id)
            .map(|(&id, _)| id)
            .collect();
        store.report.deleted_segments = empty.len() as u64;
        store.dead = empty;
        store.delete_dead()?;
        files::sync_dir(&store.dir)?;
        store.dir_synced_gen = store.dir_gen;
        store.report.elapsed = started.elapsed();
        let r = &store.report;
        if r.corrupt_regions > 0 || r.torn_bytes > 0 || r.undecodable_records > 0 {
            warn!(report = ?r, "message store recovered with damage (skipped or truncated)");
        } else {
            info!(
                segments = r.segments,
                records = r.records,
                live = r.live_messages,
                ms = r.elapsed.as_millis() as u64,
                "message store recovered"
            );
        }
        Ok(store)
    }

    /// What the last open found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a live message sits (segment, position, length): for tools and tests.
    pub fn location(&self, queue: QueueId, offset: u64) -> Option<IndexEntry> {
        self.queue(queue).ok()?.index.get(offset).copied()
    }

    fn recover_segment(&mut self, id: u32, has_ack: bool) -> Result<()> {
        let acked = if has_ack {
            self.recover_acks(id)?
        } else {
            (HashSet::new(), None, 0)
        };
        let path = files::segment_path(&self.dir, id);
        let buf = std::fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
        self.report.bytes_scanned += buf.len() as u64;
        // A damaged header does not condemn the records after it (each carries its own
        // checksum), but such a file is never truncated or deleted unless records of ours
        // were found in it: it might not be ours at all.
        let trusted = files::header_ok(&buf, SEGMENT_MAGIC, id);
        if !trusted {
            if buf.len() < FILE_HEADER_LEN && buf.iter().all(|&b| b == 0) {
                // Created, header never written: a crash right after creat().
                files::remove_if_exists(&path)?;
                files::remove_if_exists(&files::ack_path(&self.dir, id))?;
                return Ok(());
            }
            warn!(path = %path.display(), "segment header is damaged or unknown; scanning its records anyway");
        }
        self.report.segments += 1;
        let mut meta = SegmentMeta {
            ack: acked.1,
            ack_len: acked.2,
            ..SegmentMeta::default()
        };
        let acked = acked.0;
        let mut refs = std::mem::take(&mut self.scratch_refs);
        let report = &mut self.report;
        let queues = &mut self.queues;
        let by_disk = &self.by_disk;
        let outcome = record::scan(
            &buf,
            FILE_HEADER_LEN,
            buf.len(),
            is_message,
            |pos, ty, p| {
                report.records += 1;
                if message::decode_refs(ty, p, &mut refs).is_none() {
                    report.undecodable_records += 1;
                    return;
                }
                let total = record::encoded_len(p.len()) as u32;
                for r in &refs {
                    let Some(q) = by_disk
                        .get(&r.disk_id)
                        .and_then(|qid| queues.get_mut(qid.0 as usize))
                        .and_then(Option::as_mut)
                    else {
                        report.dead_refs += 1;
                        continue;
                    };
                    q.next_offset = q.next_offset.max(r.offset.saturating_add(1));
                    if acked.contains(&(r.disk_id, pos as u32)) {
                        report.acked_refs += 1;
                        continue;
                    }
                    if q.index
                        .insert(IndexEntry::new(r.offset, id, pos as u32, total))
                    {
                        meta.live += 1;
                        report.live_messages += 1;
                    }
                }
            },
        );
        self.scratch_refs = refs;
        if !trusted && outcome.valid_end <= FILE_HEADER_LEN && outcome.corrupt.is_empty() {
            self.report.unreadable_segments += 1;
            warn!(path = %path.display(), "no valid record in a segment with an unknown header; left alone");
            return Ok(());
        }
        for &(start, end) in &outcome.corrupt {
            self.report.corrupt_regions += 1;
            self.report.corrupt_bytes += (end - start) as u64;
            warn!(path = %path.display(), start, end, "skipped a corrupt region of a segment");
        }
        if outcome.torn_bytes > 0 && trusted {
            self.report.torn_bytes += outcome.torn_bytes as u64;
            warn!(path = %path.display(), at = outcome.valid_end, bytes = outcome.torn_bytes,
                "truncating the torn tail of a segment");
            let f = files::open_rw(&path)?;
            f.set_len(outcome.valid_end as u64)
                .and_then(|()| f.sync_data())
                .map_err(|e| StoreError::io("truncate", &path, e))?;
        }
        meta.size = outcome.valid_end as u64;
        self.segments.insert(id, meta);
        Ok(())
    }

    /// Reads an ack file: the set of (disk id, position) it acknowledges, its handle and
    /// valid length. A torn tail is truncated; an unreadable header means no acks (those
    /// messages come back: at-least-once, never loss).
    #[allow(clippy::type_complexity)]
    fn recover_acks(&mut self, id: u32) -> Result<(HashSet<(u32, u32)>, Option<AckFile>, u64)> {
        let path = files::ack_path(&self.dir, id);
        let buf = std::fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
        let mut set = HashSet::new();
        let trusted = files::header_ok(&buf, ACK_MAGIC, id);
        if !trusted {
            warn!(path = %path.display(), "ack file header is damaged or unknown; scanning it anyway");
        }
        let out = record::scan(&buf, FILE_HEADER_LEN, buf.len(), is_acks, |_, _, p| {
            let mut r = Reader::new(p);
            while let (Some(q), Some(pos)) = (r.u32(), r.u32()) {
                set.insert((q, pos));
            }
        });
        for &(start, end) in &out.corrupt {
            warn!(path = %path.display(), start, end, "skipped a corrupt region of an ack file");
        }
        let file = files::open_rw(&path)?;
        if out.torn_bytes > 0 && trusted {
            warn!(path = %path.display(), bytes = out.torn_bytes, "truncating a torn ack file tail");
            file.set_len(out.valid_end as u64)
                .map_err(|e| StoreError::io("truncate", &path, e))?;
        }
        let len = out.valid_end as u64;
        Ok((set, Some(AckFile { file, len }), len))
    }

    fn check_writable(&self) -> Result<()> {
        if self.poisoned {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn queue(&self, id: QueueId) -> Result<&QueueState> {
        self.queues
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(StoreError::UnknownQueue(id))
    }

    fn queue_mut(&mut self, id: QueueId) -> Result<&mut QueueState> {
        self.queues
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(StoreError::UnknownQueue(id))
    }

    /// Resolves an append's references to disk references: every queue known, every offset
    /// above the queue's last one, no queue twice.
    fn check_refs(&self, refs: &[QueueRef], disk_refs: &mut Vec<DiskRef>) -> Result<()> {
        disk_refs.clear();
        for r in refs {
            let q = self.queue(r.queue)?;
            if r.offset < q.next_offset {
                return Err(StoreError::OffsetNotIncreasing {
                    queue: r.queue,
                    offset: r.offset,
                    last: q.next_offset.saturating_sub(1),
                });
            }
            disk_refs.push(DiskRef {
                disk_id: q.disk_id,
                offset: r.offset,
            });
        }
        let twice = if disk_refs.len() <= 16 {
            disk_refs
                .iter()
                .enumerate()
                .any(|(i, a)| disk_refs.iter().take(i).any(|b| b.disk_id == a.disk_id))
        } else {
            let mut ids: Vec<u32> = disk_refs.iter().map(|r| r.disk_id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len() != disk_refs.len()
        };
        if twice {
            return Err(StoreError::BadReferences);
        }
        Ok(())
    }

    /// Writes the active buffer out with one positional write. On failure the partial write
    /// is cut off and the buffered appends are undone (their seqs are lost: the caller nacks).
    fn write_active(&mut self) -> Result<()> {
        if self.active.buf.is_empty() {
            self.flushed_seq = self.last_seq;
            return Ok(());
        }
        if let Err(e) = self
            .active
            .file
            .write_all_at(&self.active.buf, self.active.written)
        {
            // A short write (ENOSPC, EFBIG) may have left part of a record behind. Cut it off so
            // the next write continues a clean file; if even that fails, never append after
            // it: recovery would stop at the torn record, or skip it and resurrect the
            // discarded records behind it.
            if let Err(te) = self.active.file.set_len(self.active.written) {
                warn!(path = %self.active.path.display(), error = %te,
                    "cannot cut off a failed write; the next append starts a new segment");
                self.active.torn = true;
            }
            self.revert_buffer();
            return Err(StoreError::io("write", &self.active.path, e));
        }
        self.active.written += self.active.buf.len() as u64;
        self.active.buf.clear();
        if self.active.buf.capacity() > self.config.write_buffer * 2 {
            self.active.buf.shrink_to(self.config.write_buffer);
        }
        if let Some(m) = self.segments.get_mut(&self.active.id) {
            m.size = self.active.written;
        }
        self.flushed_seq = self.last_seq;
        Ok(())
    }

    fn revert_buffer(&mut self) {
        let (seg, written) = (self.active.id, self.active.written);
        let in_buffer = |e: &IndexEntry| e.segment == seg && u64::from(e.position) >= written;
        let mut released = 0u64;
        for q in self.queues.iter_mut().flatten() {
            let undone = q.index.pop_back_while(in_buffer);
            released += undone.iter().filter(|e| !e.is_acked()).count() as u64;
        }
        if let Some(m) = self.segments.get_mut(&seg) {
            m.live = m.live.saturating_sub(released);
            m.pending_acks.retain(|&(_, pos)| u64::from(pos) < written);
        }
        // Debug only: the store thread logs the incident once, not once per batch.
        debug!(
            segment = seg,
            records_bytes = self.active.buf.len(),
            "write failed: discarded the buffered appends"
        );
        self.active.buf.clear();
    }

    /// Closes the active segment (written, not yet synced) and starts the next one.
    fn rotate(&mut self) -> Result<()> {
        self.write_active()?;
        let next = create_active(&self.dir, self.active.id.saturating_add(1))?;
        let old = std::mem::replace(&mut self.active, next);
        debug!(segment = old.id, bytes = old.written, "segment closed");
        self.segments.insert(self.active.id, SegmentMeta::default());
        self.dir_gen += 1;
        if self.segments.get(&old.id).is_some_and(|m| m.live == 0) {
            self.dead.push(old.id);
        }
        self.unsynced.push(Unsynced {
            id: old.id,
            path: old.path,
            file: old.file,
            requested: false,
        });
        Ok(())
    }

    fn write_acks(&mut self) -> Result<()> {
        while let Some(id) = self.acks_dirty.pop_first() {
            let Some(meta) = self.segments.get_mut(&id) else {
                continue;
            };
            if meta.pending_acks.is_empty() || (meta.live == 0 && id != self.active.id) {
                // The whole segment is about to go: its acks need not be written.
                meta.pending_acks.clear();
                continue;
            }
            let path = files::ack_path(&self.dir, id);
            if meta.ack.is_none() {
                let file = match files::create_with_header(&path, ACK_MAGIC, id) {
                    Ok(f) => f,
                    Err(e) => {
                        // Still pending: retried with the next flush (the acks stay queued).
                        self.acks_dirty.insert(id);
                        return Err(e);
                    }
                };
                meta.ack = Some(AckFile {
                    file,
                    len: FILE_HEADER_LEN as u64,
                });
                self.dir_gen += 1;
            }
            let mut buf = Vec::with_capacity(9 + meta.pending_acks.len() * 8);
            record::encode(&mut buf, kind::ACKS, |o| {
                for (q, pos) in &meta.pending_acks {
                    o.extend_from_slice(&q.to_le_bytes());
                    o.extend_from_slice(&pos.to_le_bytes());
                }
            });
            if let Some(ack) = meta.ack.as_mut() {
                if let Err(e) = ack.file.write_all_at(&buf, ack.len) {
                    let _ = ack.file.set_len(ack.len);
                    self.acks_dirty.insert(id);
                    return Err(StoreError::io("write", &path, e));
                }
                ack.len += buf.len() as u64;
                meta.ack_len = ack.len;
            }
            meta.pending_acks.clear();
            self.ack_files_unsynced.insert(id);
        }
        Ok(())
    }

    fn delete_dead(&mut self) -> Result<()> {
        while let Some(id) = self.dead.pop() {
            if id == self.active.id || self.segments.get(&id).is_none_or(|m| m.live > 0) {
                continue;
            }
            self.segments.remove(&id);
            self.readers.remove(&id);
            self.ack_files_unsynced.remove(&id);
            let seg = files::segment_path(&self.dir, id);
            self.unsynced.retain(|u| u.id != id);
            // The data file first: an ack file without its segment is harmless and removed
            // on the next open; the other way round would resurrect acked messages.
            files::remove_if_exists(&seg)?;
            files::remove_if_exists(&files::ack_path(&self.dir, id))?;
            debug!(segment = id, "segment reclaimed");
        }
        Ok(())
    }

    fn sync_data(&mut self) -> Result<()> {
        let r: Result<()> = (|| {
            files::datasync(&self.active.file, &self.active.path)?;
            for u in &self.unsynced {
                files::datasync(&u.file, &u.path)?;
            }
            if self.dir_gen > self.dir_synced_gen {
                files::sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            self.sync_failed(&e);
            return Err(e);
        }
        self.syncs += 1;
        self.unsynced.clear();
        self.dir_synced_gen = self.dir_gen;
        self.durable_seq = self.flushed_seq;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// fsyncgate: after a failed fsync the dirty pages may be gone while the file looks fine.
    /// Retrying and reporting success would be a lie, so stop writing. What was written but
    /// not synced can never become durable now: lowering the flushed watermark to the durable
    /// one makes the caller nack it (`loses_unflushed`).
    fn sync_failed(&mut self, e: &StoreError) {
        if !self.poisoned {
            tracing::error!(error = %e, errno = e.raw_os_error(),
                "fdatasync failed: the message store refuses writes until Pier is restarted");
        }
        self.poisoned = true;
        self.flushed_seq = self.durable_seq;
    }

    /// Whether something written is not covered by a sync (done or in flight).
    fn needs_sync(&self) -> bool {
        self.flushed_seq > self.durable_seq.max(self.sync_requested)
            || self.dir_gen > self.dir_synced_gen.max(self.dir_requested_gen)
            || self.unsynced.iter().any(|u| !u.requested)
    }

    /// A job syncing everything written so far; marks it requested.
    fn sync_job(&mut self) -> SyncJob {
        let mut files = vec![SyncFile {
            path: self.active.path.clone(),
            file: Arc::clone(&self.active.file),
        }];
        let mut segments = Vec::new();
        for u in &mut self.unsynced {
            u.requested = true;
            segments.push(u.id);
            files.push(SyncFile {
                path: u.path.clone(),
                file: Arc::clone(&u.file),
            });
        }
        let dir = (self.dir_gen > self.dir_synced_gen).then(|| self.dir.clone());
        let mut job = SyncJob::new(Seq(self.flushed_seq), files, dir);
        job.dir_gen = self.dir_gen;
        job.segments = segments;
        self.dir_requested_gen = self.dir_gen;
        self.sync_requested = self.sync_requested.max(self.flushed_seq);
        job
    }

    /// The plan when nothing needs a new job: what is durable once the jobs in flight are.
    fn no_job(&self) -> SyncPlan {
        SyncPlan {
            durable: Seq(self.durable_seq.max(self.sync_requested)),
            job: None,
        }
    }

    fn lazy_pending(&self) -> bool {
        !self.ack_files_unsynced.is_empty() || self.registry.has_unsynced()
    }

    /// Syncs ack files and delivered marks. Failures here cost at most redeliveries, so they
    /// are logged, not fatal.
    fn sync_lazy(&mut self) {
        self.last_lazy_sync = Instant::now();
        while let Some(id) = self.ack_files_unsynced.pop_first() {
            if let Some(ack) = self.segments.get(&id).and_then(|m| m.ack.as_ref()) {
                if let Err(e) = ack.file.sync_data() {
                    warn!(segment = id, error = %e, "ack file sync failed");
                }
            }
        }
        if let Err(e) = self.registry.sync() {
            warn!(error = %e, "queue registry sync failed");
        }
    }

    fn read_entry(&mut self, e: IndexEntry) -> Result<StoredMessage> {
        let len = e.record_len() as usize;
        let raw: Bytes = if e.segment == self.active.id
            && u64::from(e.position) >= self.active.written
        {
            let start = (u64::from(e.position) - self.active.written) as usize;
            let slice = self
                .active
                .buf
                .get(start..start + len)
                .ok_or(StoreError::Corrupt {
                    segment: e.segment,
                    position: e.position,
                    reason: "record beyond the write buffer",
                })?;
            Bytes::copy_from_slice(slice)
        } else {
            // Zeroed (calloc): costs less than the pread it precedes, and reading into an
            // uninitialised buffer would need unsafe code.
            let mut v = vec![0u8; len];
            // The path is only for error messages: formatted when one happens, not per read.
            let file = if e.segment == self.active.id {
                &*self.active.file
            } else {
                if !self.readers.contains_key(&e.segment) {
                    if self.readers.len() >= self.config.open_read_files.max(1) {
                        if let Some(&k) = self.readers.keys().next() {
                            self.readers.remove(&k);
                        }
                    }
                    let path = files::segment_path(&self.dir, e.segment);
                    let f = File::open(&path).map_err(|err| StoreError::io("open", &path, err))?;
                    self.readers.insert(e.segment, f);
                }
                self.readers.get(&e.segment).ok_or(StoreError::Corrupt {
                    segment: e.segment,
                    position: e.position,
                    reason: "segment not open",
                })?
            };
            file.read_exact_at(&mut v, u64::from(e.position))
                .map_err(|err| {
                    let path = if e.segment == self.active.id {
                        self.active.path.clone()
                    } else {
                        files::segment_path(&self.dir, e.segment)
                    };
                    StoreError::io("read", path, err)
                })?;
            Bytes::from(v)
        };
        let corrupt = |reason| StoreError::Corrupt {
            segment: e.segment,
            position: e.position,
            reason,
        };
        let ty = match record::parse(&raw, len, is_message) {
            Parsed::Record { ty, total, .. } if total == len => ty,
            _ => return Err(corrupt("checksum or framing does not verify")),
        };
        message::decode_message(ty, &raw.slice(record::HEADER_LEN..))
            .ok_or_else(|| corrupt("payload does not decode"))
    }

    fn release_all(&mut self, qid: QueueId) -> Result<u64> {
        let active = self.active.id;
        let q = self
            .queues
            .get_mut(qid.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(StoreError::UnknownQueue(qid))?;
        let index = std::mem::take(&mut q.index);
        let count = index.len();
        for e in index.iter() {
            if let Some(m) = self.segments.get_mut(&e.segment) {
                m.live = m.live.saturating_sub(1);
                if m.live == 0 && e.segment != active {
                    self.dead.push(e.segment);
                }
            }
        }
        self.dead.sort_unstable();
        self.dead.dedup();
        Ok(count)
    }
}

fn create_active(dir: &Path, id: u32) -> Result<Active> {
    let path = files::segment_path(dir, id);
    let file = files::create_with_header(&path, SEGMENT_MAGIC, id)?;
    Ok(Active {
        id,
        path,
        file: Arc::new(file),
        written: FILE_HEADER_LEN as u64,
        buf: Vec::new(),
        torn: false,
    })
}

impl MessageStore for SegmentStore {
    fn open_queue(&mut self, name: &str) -> Result<QueueId> {
        if let Some(&id) = self.by_name.get(name) {
            return Ok(id);
        }
        self.check_writable()?;
        if name.len() > MAX_QUEUE_NAME {
            return Err(StoreError::QueueNameTooLong {
                len: name.len(),
                max: MAX_QUEUE_NAME,
            });
        }
        let disk_id = self.registry.add(name)?;
        let id = QueueId(self.queues.len() as u32);
        self.queues.push(Some(QueueState {
            name: name.to_owned(),
            disk_id,
            index: QueueIndex::new(),
            next_offset: 0,
        }));
        self.by_name.insert(name.to_owned(), id);
        self.by_disk.insert(disk_id, id);
        Ok(id)
    }

    fn open_queues(&mut self, names: &[String]) -> Result<Vec<QueueId>> {
        let mut new: Vec<&str> = Vec::new();
        for n in names {
            if !self.by_name.contains_key(n.as_str()) && !new.contains(&n.as_str()) {
                if n.len() > MAX_QUEUE_NAME {
                    return Err(StoreError::QueueNameTooLong {
                        len: n.len(),
                        max: MAX_QUEUE_NAME,
                    });
                }
                new.push(n);
            }
        }
        if !new.is_empty() {
            self.check_writable()?;
            // One durable registry write for all of them.
            let disk_ids = self.registry.add_many(&new)?;
            for (name, disk_id) in new.iter().zip(disk_ids) {
                let id = QueueId(self.queues.len() as u32);
                self.queues.push(Some(QueueState {
                    name: (*name).to_owned(),
                    disk_id,
                    index: QueueIndex::new(),
                    next_offset: 0,
                }));
                self.by_name.insert((*name).to_owned(), id);
                self.by_disk.insert(disk_id, id);
            }
        }
        names.iter().map(|n| self.open_queue(n)).collect()
    }

    fn queues(&self) -> Vec<QueueInfo> {
        self.queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| {
                let q = q.as_ref()?;
                Some(QueueInfo {
                    id: QueueId(i as u32),
                    name: q.name.clone(),
                    messages: q.index.len(),
                    next_offset: q.next_offset,
                })
            })
            .collect()
    }

    fn live_messages(&self, queue: QueueId) -> Result<Vec<LiveMessage>> {
        let q = self.queue(queue)?;
        Ok(q.index
            .iter()
            .map(|e| {
                let note = self.registry.note_of(q.disk_id, e.offset);
                LiveMessage {
                    offset: e.offset,
                    redelivered: e.is_redelivered(),
                    returns: note.returns,
                    dead_letter: note.dead_letter,
                }
            })
            .collect())
    }

    fn append(&mut self, refs: &[QueueRef], message: &StoredMessage) -> Result<Seq> {
        self.append_encoded(refs, &EncodedMessage::new(message.clone(), refs.len()))
    }

    fn append_encoded(&mut self, refs: &[QueueRef], encoded: &EncodedMessage) -> Result<Seq> {
        self.check_writable()?;
        if refs.is_empty() || refs.len() > usize::from(u16::MAX) {
            return Err(StoreError::BadReferences);
        }
        if encoded.nrefs() != refs.len() {
            // Encoded for another reference count (a caller's mistake): encode it here.
            return self.append_encoded(
                refs,
                &EncodedMessage::new(encoded.message().clone(), refs.len()),
            );
        }
        // Validate everything before changing anything.
        let mut disk_refs = std::mem::take(&mut self.scratch_refs);
        let checked = self.check_refs(refs, &mut disk_refs);
        let total = encoded.record_len().unwrap_or(usize::MAX);
        let max = self.config.max_record_size as usize;
        let checked = match checked {
            Ok(()) if total > max => Err(StoreError::RecordTooLarge { size: total, max }),
            other => other,
        };
        if let Err(e) = checked {
            self.scratch_refs = disk_refs;
            return Err(e);
        }

        let pos = self.active.written + self.active.buf.len() as u64;
        let full = pos > FILE_HEADER_LEN as u64
            && pos + total as u64 > u64::from(self.config.segment_size);
        if full || self.active.torn {
            if let Err(e) = self.rotate() {
                self.scratch_refs = disk_refs;
                return Err(e);
            }
        }
        let pos = (self.active.written + self.active.buf.len() as u64) as u32;
        // The serial part of an append: copy the publisher's bytes, add the references and
        // finish the checksum over them.
        encoded.finish_into(&mut self.active.buf, &disk_refs);
        self.scratch_refs = disk_refs;
        let seg = self.active.id;
        for r in refs {
            if let Some(q) = self
                .queues
                .get_mut(r.queue.0 as usize)
                .and_then(Option::as_mut)
            {
                q.index
                    .push(IndexEntry::new(r.offset, seg, pos, total as u32));
                q.next_offset = r.offset.saturating_add(1);
            }
        }
        if let Some(m) = self.segments.get_mut(&seg) {
            m.live += refs.len() as u64;
        }
        self.last_seq += 1;
        let seq = Seq(self.last_seq);
        if self.active.buf.len() >= self.config.write_buffer {
            self.write_active()?;
        }
        Ok(seq)
    }

    fn read(&mut self, queue: QueueId, offset: u64) -> Result<StoredMessage> {
        let e = *self
            .queue(queue)?
            .index
            .get(offset)
            .ok_or(StoreError::NotFound { queue, offset })?;
        self.read_entry(e)
    }

    fn ack(&mut self, queue: QueueId, offsets: &[u64]) -> Result<usize> {
        self.check_writable()?;
        let active = self.active.id;
        let q = self
            .queues
            .get_mut(queue.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(StoreError::UnknownQueue(queue))?;
        let mut n = 0;
        self.registry
            .forget_notes(q.disk_id, offsets.iter().copied());
        for &off in offsets {
            let Some(e) = q.index.ack(off) else { continue };
            n += 1;
            if let Some(m) = self.segments.get_mut(&e.segment) {
                m.live = m.live.saturating_sub(1);
                m.pending_acks.push((q.disk_id, e.position));
                self.acks_dirty.insert(e.segment);
                if m.live == 0 && e.segment != active {
                    self.dead.push(e.segment);
                }
            }
        }
        Ok(n)
    }

    fn mark_delivered(&mut self, queue: QueueId, offset: u64) -> Result<()> {
        let disk_id = self.queue(queue)?.disk_id;
        self.registry.mark_delivered(disk_id, offset);
        Ok(())
    }

    fn mark_returned(&mut self, queue: QueueId, offset: u64, returns: Returns) -> Result<()> {
        let q = self.queue(queue)?;
        if q.index.get(offset).is_some() {
            self.registry.mark_returned(q.disk_id, offset, returns);
        }
        Ok(())
    }

    fn mark_dead_letter(&mut self, queue: QueueId, offset: u64, reason: u8) -> Result<()> {
        let q = self.queue(queue)?;
        if q.index.get(offset).is_some() {
            self.registry.mark_dead_letter(q.disk_id, offset, reason);
        }
        Ok(())
    }

    fn purge_queue(&mut self, queue: QueueId) -> Result<u64> {
        self.check_writable()?;
        let (disk_id, name) = {
            let q = self.queue(queue)?;
            (q.disk_id, q.name.clone())
        };
        // Durable first: a crash right after must not bring the messages back.
        let new_id = self.registry.remove(disk_id, Some(&name))?;
        let n = self.release_all(queue)?;
        self.by_disk.remove(&disk_id);
        if let Some(nid) = new_id {
            self.by_disk.insert(nid, queue);
            self.queue_mut(queue)?.disk_id = nid;
        }
        Ok(n)
    }

    fn delete_queue(&mut self, queue: QueueId) -> Result<u64> {
        self.check_writable()?;
        let disk_id = self.queue(queue)?.disk_id;
        self.registry.remove(disk_id, None)?;
        let n = self.release_all(queue)?;
        self.by_disk.remove(&disk_id);
        if let Some(slot) = self.queues.get_mut(queue.0 as usize) {
            if let Some(q) = slot.take() {
                self.by_name.remove(&q.name);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> Result<Seq> {
        self.check_writable()?;
        self.write_active()?;
        // Only the data write decides the fate of appends. Acks, marks and deletions that fail
        // here stay pending in memory and are retried on the next flush; until they succeed
        // the worst case after a crash is a redelivery, so they never hold up confirms.
        // Logged once per incident (and when it ends), not once per batch.
        let acks = self.write_acks();
        let side: Result<()> = self.registry.flush().and(acks);
        match (side, self.side_writes_failing) {
            (Err(e), false) => {
                warn!(error = %e, errno = e.raw_os_error(),
                    "writing acks or delivered marks failed; retrying with every flush");
                self.side_writes_failing = true;
            }
            (Err(e), true) => debug!(error = %e, "writing acks or delivered marks failed again"),
            (Ok(()), true) => {
                info!("writing acks and delivered marks works again");
                self.side_writes_failing = false;
            }
            (Ok(()), false) => {}
        }
        if let Err(e) = self.delete_dead() {
            warn!(error = %e, "deleting a reclaimed segment failed; the next open retries");
        }
        Ok(Seq(self.flushed_seq))
    }

    fn sync(&mut self) -> Result<Seq> {
        self.flush()?;
        if self.durable_seq < self.flushed_seq
            || self.dir_gen > self.dir_synced_gen
            || !self.unsynced.is_empty()
        {
            self.sync_data()?;
        }
        if self.lazy_pending() && self.last_lazy_sync.elapsed() >= self.config.lazy_sync_interval {
            self.sync_lazy();
        }
        Ok(Seq(self.durable_seq))
    }

    fn commit(&mut self) -> Result<Seq> {
        match self.config.sync_policy {
            SyncPolicy::Always => self.sync(),
            SyncPolicy::Interval(every) => {
                self.flush()?;
                if self.last_sync.elapsed() >= every {
                    self.sync()
                } else {
                    Ok(Seq(self.durable_seq))
                }
            }
            SyncPolicy::Never => {
                self.flush()?;
                self.durable_seq = self.flushed_seq;
                Ok(Seq(self.durable_seq))
            }
        }
    }

    fn prepare_commit(&mut self) -> Result<SyncPlan> {
        let due = match self.config.sync_policy {
            SyncPolicy::Never => {
                return self.commit().map(|durable| SyncPlan { durable, job: None })
            }
            SyncPolicy::Always => true,
            SyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
        };
        self.flush()?;
        if self.lazy_pending() && self.last_lazy_sync.elapsed() >= self.config.lazy_sync_interval {
            self.sync_lazy();
        }
        if !due || !self.needs_sync() {
            return Ok(self.no_job());
        }
        let job = self.sync_job();
        Ok(SyncPlan {
            durable: job.upto,
            job: Some(job),
        })
    }

    fn synced(&mut self, job: &SyncJob, result: &Result<()>) {
        match result {
            Ok(()) => {
                if job.counted {
                    self.syncs += 1;
                }
                self.durable_seq = self.durable_seq.max(job.upto.0).min(self.flushed_seq);
                self.dir_synced_gen = self.dir_synced_gen.max(job.dir_gen);
                self.unsynced.retain(|u| !job.segments.contains(&u.id));
                self.last_sync = Instant::now();
            }
            Err(e) => self.sync_failed(e),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.poisoned {
            // Every commit fails now: a deadline would make the store thread spin on it.
            return None;
        }
        let data = match self.config.sync_policy {
            // A job in flight counts as synced: its completion moves the watermark.
            SyncPolicy::Interval(every)
                if self.durable_seq.max(self.sync_requested) < self.last_seq =>
            {
                Some(self.last_sync + every)
            }
            _ => None,
        };
        let lazy = (self.config.sync_policy != SyncPolicy::Never && self.lazy_pending())
            .then(|| self.last_lazy_sync + self.config.lazy_sync_interval);
        match (data, lazy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn last_seq(&self) -> Seq {
        Seq(self.last_seq)
    }

    fn flushed_seq(&self) -> Seq {
        Seq(self.flushed_seq)
    }

    fn durable_seq(&self) -> Seq {
        Seq(self.durable_seq)
    }

    fn stats(&self) -> StoreStats {
        let live_messages = self.queues.iter().flatten().map(|q| q.index.len()).sum();
        let index_bytes: usize = self
            .queues
            .iter()
            .flatten()
            .map(|q| q.index.heap_bytes())
            .sum();
        let disk_bytes = self
            .segments
            .iter()
            .map(|(&id, m)| {
                let data = if id == self.active.id {
                    self.active.written + self.active.buf.len() as u64
                } else {
                    m.size
                };
                data + m.ack_len
            })
            .sum::<u64>()
            + self.registry.disk_bytes();
        StoreStats {
            queues: self.by_name.len() as u64,
            live_messages,
            segments: self.segments.len() as u64,
            disk_bytes,
            index_bytes: index_bytes as u64,
            last_seq: Seq(self.last_seq),
            flushed_seq: Seq(self.flushed_seq),
            durable_seq: Seq(self.durable_seq),
            syncs: self.syncs,
        }
    }

    fn close(&mut self) -> Result<()> {
        self.flush()?;
        self.sync_data()?;
        self.sync_lazy();
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use pier_wire::ShortString;

    fn msg(body: &[u8]) -> StoredMessage {
        StoredMessage::new(
            ShortString::from("x"),
            ShortString::from("k"),
            Bytes::from_static(&[0, 0]),
            Bytes::copy_from_slice(body),
        )
    }

    fn small() -> StoreConfig {
        StoreConfig {
            segment_size: 64 << 10,
            ..StoreConfig::default()
        }
    }

    #[test]
    fn open_queues_registers_new_names_in_one_write_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let ids = {
            let mut s = SegmentStore::open(dir.path(), small()).unwrap();
            let a = s.open_queue("a").unwrap();
            let ids = s.open_queues(&names).unwrap();
            assert_eq!(ids[0], a);
            assert_eq!(s.open_queue("c").unwrap(), ids[2]);
            s.append(
                &[QueueRef {
                    queue: ids[1],
                    offset: 0,
                }],
                &msg(b"x"),
            )
            .unwrap();
            s.close().unwrap();
            ids
        };
        let s = SegmentStore::open(dir.path(), small()).unwrap();
        let mut got: Vec<String> = s.queues().into_iter().map(|q| q.name).collect();
        got.sort();
        assert_eq!(got, names);
        assert_eq!(ids.len(), 3);
        let too_long = vec!["x".repeat(MAX_QUEUE_NAME + 1)];
        let mut s = s;
        assert!(s.open_queues(&too_long).is_err());
    }

    fn files_with(dir: &Path, ext: &str) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .ends_with(ext)
            })
            .count()
    }

    #[test]
    fn readable_before_flush_durable_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path(), small()).unwrap();
        let q = s.open_queue("q").unwrap();
        let seq = s
            .append(
                &[QueueRef {
                    queue: q,
                    offset: 0,
                }],
                &msg(b"a"),
            )
            .unwrap();
        assert_eq!(s.read(q, 0).unwrap().body, Bytes::from_static(b"a"));
        assert!(s.durable_seq() < seq);
        assert_eq!(s.commit().unwrap(), seq);
        assert_eq!(s.read(q, 0).unwrap().body, Bytes::from_static(b"a"));
    }

    #[test]
    fn rotation_and_reclamation_of_fully_acked_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path(), small()).unwrap();
        let q = s.open_queue("q").unwrap();
        let body = vec![7u8; 1000];
        for i in 0..300 {
            s.append(
                &[QueueRef {
                    queue: q,
                    offset: i,
                }],
                &msg(&body),
            )
            .unwrap();
        }
        s.commit().unwrap();
        assert!(files_with(dir.path(), ".seg") >= 4);
        let offsets: Vec<u64> = (0..300).collect();
        assert_eq!(s.ack(q, &offsets).unwrap(), 300);
        s.commit().unwrap();
        assert_eq!(
            files_with(dir.path(), ".seg"),
            1,
            "only the active segment is left"
        );
        // The active segment keeps its acks until it rotates away and is deleted.
        assert!(files_with(dir.path(), ".ack") <= 1);
    }

    #[test]
    fn sync_policies() {
        let dir = tempfile::tempdir().unwrap();
        let open = |policy, sub: &str| {
            SegmentStore::open(
                dir.path().join(sub),
                StoreConfig {
                    sync_policy: policy,
                    ..small()
                },
            )
            .unwrap()
        };
        let one = |s: &mut SegmentStore| {
            let q = s.open_queue("q").unwrap();
            let next = s.queues()[0].next_offset;
            s.append(
                &[QueueRef {
                    queue: q,
                    offset: next,
                }],
                &msg(b"m"),
            )
            .unwrap()
        };

        let mut never = open(SyncPolicy::Never, "never");
        let seq = one(&mut never);
        assert_eq!(never.commit().unwrap(), seq, "Never: durable once written");
        assert_eq!(never.stats().syncs, 0);
        assert_eq!(never.next_deadline(), None);

        let mut lazy = open(SyncPolicy::Interval(Duration::from_secs(3600)), "interval");
        let seq = one(&mut lazy);
        assert!(
            lazy.commit().unwrap() < seq,
            "Interval: not before the interval"
        );
        assert_eq!(lazy.flushed_seq(), seq);
        assert!(lazy.next_deadline().is_some());
        assert_eq!(lazy.sync().unwrap(), seq, "an explicit sync always syncs");

        let mut always = open(SyncPolicy::Always, "always");
        let seq = one(&mut always);
        assert_eq!(always.commit().unwrap(), seq);
        assert_eq!(always.stats().syncs, 1);
        always.commit().unwrap();
        assert_eq!(always.stats().syncs, 1, "nothing new, no fsync");
    }

    #[test]
    fn a_failed_write_undoes_buffered_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path(), small()).unwrap();
        let q = s.open_queue("q").unwrap();
        s.append(
            &[QueueRef {
                queue: q,
                offset: 0,
            }],
            &msg(b"kept"),
        )
        .unwrap();
        s.commit().unwrap();
        s.append(
            &[QueueRef {
                queue: q,
                offset: 1,
            }],
            &msg(b"lost"),
        )
        .unwrap();
        // Swap in a read-only handle so the next write fails like a full disk would.
        s.active.file = Arc::new(File::open(&s.active.path).unwrap());
        let err = s.commit().unwrap_err();
        assert!(err.loses_unflushed());
        assert_eq!(s.queue(q).unwrap().index.len(), 1);
        assert!(s.read(q, 1).is_err());
        assert_eq!(s.read(q, 0).unwrap().body, Bytes::from_static(b"kept"));
        // A read-only handle cannot be truncated either: the failed write may have left bytes
        // behind, so the next append must go to a new segment, never after them.
        let torn = s.active.id;
        assert!(s.active.torn);
        s.append(
            &[QueueRef {
                queue: q,
                offset: 2,
            }],
            &msg(b"after"),
        )
        .unwrap();
        s.commit().unwrap();
        assert_ne!(s.location(q, 2).unwrap().segment, torn);
        s.close().unwrap();
        drop(s);
        let mut s = SegmentStore::open(dir.path(), small()).unwrap();
        let q = s.open_queue("q").unwrap();
        let bodies: Vec<_> = s
            .live_messages(q)
            .unwrap()
            .iter()
            .map(|l| s.read(q, l.offset).unwrap().body)
            .collect();
        assert_eq!(bodies, [&b"kept"[..], &b"after"[..]]);
    }

    /// The same through the sync thread: batches of one command, so that every batch finds
    /// the next one waiting and hands its fdatasync over; the first sync fails (`/dev/null`),
    /// and no append is ever confirmed, later ones included.
    #[test]
    fn a_failed_fsync_on_the_sync_thread_nacks_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path(), small()).unwrap();
        let q = s.open_queue("q").unwrap();
        let one = |offset| QueueRef { queue: q, offset };
        s.append(&[one(0)], &msg(b"durable")).unwrap();
        let durable = s.commit().unwrap();
        s.active.file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .unwrap(),
        );
        let t = crate::StoreThread::spawn(
            Box::new(s),
            crate::ThreadConfig {
                max_batch: 1,
                hand_off_backlog: 1,
                ..crate::ThreadConfig::default()
            },
        )
        .unwrap();
        let h = t.handle();
        // Hold the thread so that everything below is waiting when it starts.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        h.send(crate::Command::Run(Box::new(move |_| {
            let _ = go_rx.recv();
        })))
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let n = 50u64;
        for offset in 1..=n {
            let tx = tx.clone();
            h.append(vec![one(offset)], msg(b"lost"), move |r| {
                tx.send(r.is_ok()).unwrap()
            })
            .unwrap();
        }
        go_tx.send(()).unwrap();
        let wait = std::time::Duration::from_secs(10);
        for _ in 1..=n {
            assert!(!rx.recv_timeout(wait).unwrap(), "nothing is confirmed");
        }
        assert_eq!(h.durable_seq(), durable);
        assert!(h.call(|s| s.open_queue("other")).unwrap().is_err());
        assert!(t.shutdown().is_err(), "closing a failed store reports it");
    }

    #[test]
    fn a_failed_fsync_nacks_what_it_covered_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path(), small()).unwrap();
        let q = s.open_queue("q").unwrap();
        let one = |offset| QueueRef { queue: q, offset };
        s.append(&[one(0)], &msg(b"durable")).unwrap();
        let durable = s.commit().unwrap();
        // fdatasync of /dev/null fails (EINVAL) while writes to it succeed: a sync failure.
        s.active.file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .unwrap(),
        );
        let t = crate::StoreThread::spawn(Box::new(s), crate::ThreadConfig::default()).unwrap();
        let h = t.handle();
        let (tx, rx) = std::sync::mpsc::channel();
        for offset in 1..=2 {
            let tx = tx.clone();
            h.append(vec![one(offset)], msg(b"lost"), move |r| {
                tx.send(r.is_ok()).unwrap()
            })
            .unwrap();
        }
        // Written, then the sync failed: both are nacked at once (they used to wait forever,
        // being "flushed"), and the store refuses writes from then on (fsyncgate).
        let wait = std::time::Duration::from_secs(5);
        assert!(!rx.recv_timeout(wait).unwrap());
        assert!(!rx.recv_timeout(wait).unwrap());
        let tx2 = tx.clone();
        h.append(vec![one(3)], msg(b"refused"), move |r| {
            tx2.send(r.is_ok()).unwrap()
        })
        .unwrap();
        assert!(!rx.recv_timeout(wait).unwrap());
        assert_eq!(h.durable_seq(), durable);
        assert!(h.call(|s| s.open_queue("other")).unwrap().is_err());
        h.ack(q, vec![0]).unwrap();
        assert_eq!(h.call(|s| s.next_deadline()).unwrap(), None, "no busy loop");
        assert!(t.shutdown().is_err(), "closing a failed store reports it");
    }

    #[test]
    fn acks_whose_file_cannot_be_created_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path(), small()).unwrap();
        let q = s.open_queue("q").unwrap();
        for offset in 0..2 {
            s.append(&[QueueRef { queue: q, offset }], &msg(b"m"))
                .unwrap();
        }
        s.commit().unwrap();
        // Something in the way of the ack file (like a full disk): creating it fails.
        let ack = files::ack_path(dir.path(), s.active.id);
        std::fs::create_dir(&ack).unwrap();
        assert_eq!(s.ack(q, &[0]).unwrap(), 1);
        s.commit().unwrap();
        assert!(s.side_writes_failing);
        std::fs::remove_dir(&ack).unwrap();
        s.commit().unwrap();
        assert!(!s.side_writes_failing);
        s.close().unwrap();
        drop(s);
        let mut s = SegmentStore::open(dir.path(), small()).unwrap();
        let q = s.open_queue("q").unwrap();
        let live: Vec<u64> = s
            .live_messages(q)
            .unwrap()
            .iter()
            .map(|l| l.offset)
            .collect();
        assert_eq!(
            live,
            [1],
            "the ack was written once the file could be created"
        );
    }
}
