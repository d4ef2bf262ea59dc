//! The shared write-ahead log of a node's replicated groups (as RabbitMQ's Ra WAL): every
//! Raft group on the node — one per quorum queue — keeps its log and its small values
//! (vote, purge point) in this one log, written by one I/O thread that group-commits
//! whatever all groups queued with a single `fdatasync`. A node with 1,000 quorum queues
//! under load does one fsync per batch, not 1,000.
//!
//! ```text
//!  GroupLog(g1) ─┐  apply in memory + queue (one lock: the order readers saw)
//!  GroupLog(g2) ─┼──► bounded channel ──► I/O thread: write all waiting records,
//!  GroupLog(gN) ─┘                         one fdatasync, then every durable callback
//!
//!  <dir>/00000000000000000001.wal   header "PIERWAL\0" u32 version, then records:
//!        [u32 body len][u32 crc32c(body), seeded with the file's sequence number (v2)]
//!        body = [u8 kind][u64 group][u64 index][payload]
//!        kind: 1 append (index, entry) · 2 truncate (from index) · 3 purge (up to index)
//!              4 save (index = key, payload = value) · 5 forget the group
//!              6 relocate (index, entry): entry `index` of the group, copied here from an
//!                older file so that file can go (never truncates or restarts the log)
//!  <dir>/LOCK   flock'd by the I/O thread while it runs: one open log per directory
//! ```
//!
//! Replay applies the records in order, so a group's state after a restart is what it was
//! after its last durable write. A torn or corrupt record ends the log: the file is cut there
//! and later files are deleted (they can only hold writes never acknowledged, since every
//! acknowledgement follows an fsync of everything before it). Files roll at
//! `segment_size`; the oldest file is deleted once nothing in it is live any more (every
//! entry it holds is purged, truncated or of a forgotten group, and no group's current value
//! of a key was saved there — such values are re-saved into the active file first). Up to
//! [`WalConfig::spares`] reclaimed files are renamed `<seq>.spare` instead and written over
//! as later files: an fdatasync then flushes data only, not the filesystem's journal. What
//! a reused file held before fails the seeded CRCs, so replay ends where writing stopped,
//! and a file is cut to what was written into it when the next one starts.
//!
//! A file kept only by a few live entries (an idle group's last entries, which it never
//! purges) is not waited for: when its live entries take at most 1/`FORWARD_SHARE` of a
//! file, they are copied into the active file as relocate records (what Ra's segment
//! writer achieves), fsynced, their locations switched, and the old file deleted. Otherwise
//! (a busy group's deep backlog) the file waits until it is purged — unless the log has
//! grown past `FORCE_FORWARD_FILES` files and less than a quarter of it is live: then its
//! live entries are forwarded all the same, 1/`FORCE_PART` of a file per batch, so that one
//! deep backlog cannot hold every newer file. Replay moves an entry
//! it holds to its copy; the copies of entries whose append was in a deleted file wait until
//! the end of replay (dropped by the truncates, purges and forgets that follow them), then
//! join the front of their group's log (see `join_relocated`).
//!
//! Entries live on disk. In memory a group holds, per entry, only where its record is (file,
//! offset, length: 16 bytes), plus the bytes of its newest entries: every entry not yet
//! durable (the channel bound limits those) and a cache of up to
//! [`WalConfig::cache_per_group`] bytes of recent ones, which followers that keep up read
//! without touching the disk. The I/O thread learns an entry's location once its batch is
//! fsynced; older entries are read back with positioned reads (length, CRC, kind, group and
//! index checked). Recovery verifies every record but keeps only locations; saved values
//! (vote, purge point) stay in memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

const MAGIC: &[u8; 8] = b"PIERWAL\0";
/// Version 2 seeds each record's CRC with its file's sequence number (version 1 files are
/// still read): a file is reused for a later sequence number (see [`WalConfig::spares`]), and
/// the records of its earlier life, past the new end, must never read as valid.
const VERSION: u32 = 2;
const VERSION_UNSEEDED: u32 = 1;
const HEADER_LEN: u64 = 12;
/// len + crc, then kind + group + index.
const RECORD_HEAD: usize = 8;
const BODY_HEAD: usize = 17;
/// The largest record believed when reading back (a corrupt length ends the log).
const MAX_RECORD: usize = 256 << 20;
/// Operations one batch takes at most (the rest wait for the next fsync).
const BATCH_OPS: usize = 4096;
/// Adjacent records a read fetches with one positioned read, up to this many bytes (the
/// entries returned share the buffer, so it stays small).
const READ_RUN: u64 = 256 << 10;
/// Reads retried when a file was reclaimed between looking up and reading (the entries
/// were purged meanwhile: the next look no longer finds them there).
const READ_TRIES: usize = 3;

const KIND_APPEND: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_SAVE: u8 = 4;
const KIND_FORGET: u8 = 5;
const KIND_RELOCATE: u8 = 6;

/// The oldest file's live entries are forwarded into the active file (and the old file
/// deleted) when their records take at most `segment_size / FORWARD_SHARE` bytes: an idle
/// group's few entries are copied, a busy group's deep backlog is waited for (copying it
/// would write it twice for nothing: it is about to be purged).
const FORWARD_SHARE: u64 = 4;

/// Past this many files, when the live entries take less than a quarter of them
/// (`FORCE_LIVE_SHARE`), the oldest file's live entries are forwarded however many they are
/// (`FORCE_PART` per batch): a deep backlog in an old file otherwise holds every newer
/// file, however dead, and a busy queue next to it grows the log without bound. The log
/// stays within about four times its live bytes (plus these files), and a long-lived
/// backlog is written once more per three times its size of other traffic.
const FORCE_FORWARD_FILES: usize = 8;
const FORCE_LIVE_SHARE: u64 = 4;
/// A forced forwarding copies this share of a file per batch (1 MiB of 64): the batch
/// behind it waits for one such write and fsync.
const FORCE_PART: u64 = 64;

/// One entry of a group's log: its index and its bytes.
pub type WalRecord = (u64, Bytes);

/// Called once a write is durable (or failed). Runs on the I/O thread: must not block.
pub type WalDurable = Box<dyn FnOnce(Result<(), WalError>) + Send>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log I/O failed ({op}) on {path}: {reason}")]
    Io {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("log append at index {got} does not continue the log (next index {expected})")]
    Gap { expected: u64, got: u64 },
    /// Shut down, or an earlier write failed: after a failed fsync nothing written since can
    /// be trusted, so the log refuses everything.
    #[error("the write-ahead log is stopped")]
    Stopped,
}

impl WalError {
    fn io(op: &'static str, path: &Path, e: &std::io::Error) -> Self {
        WalError::Io {
            op,
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// A record read back does not hold what was written there. Reported as `Io` (op
    /// "read back"): `pier-cluster` maps every variant of this enum exhaustively.
    fn corrupt(path: &Path, offset: u64, what: &str) -> Self {
        WalError::Io {
            op: "read back",
            path: path.display().to_string(),
            reason: format!("corrupt record at offset {offset}: {what}"),
        }
    }
}

/// Settings of a [`SharedLog`].
#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// Files roll past this size.
    pub segment_size: u64,
    /// Operations queued for the I/O thread before writers wait (backpressure).
    pub channel: usize,
    /// Bytes of durable entries each group keeps in memory (its newest ones); older ones
    /// are read from disk. Entries not yet durable are always in memory besides.
    pub cache_per_group: u64,
    /// Reclaimed files kept to be written over as later files instead of deleted (at most
    /// this many, each `segment_size`): an `fdatasync` after writing into blocks a file
    /// already has only flushes data, where one after appending to a new file also commits
    /// the filesystem's journal (the file's size and new blocks): ext4 on this project's
    /// machine syncs 330 KiB in 0.5 ms instead of 0.9 (RocksDB's `recycle_log_file_num`).
    pub spares: usize,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_size: 64 << 20,
            channel: 8192,
            cache_per_group: 1 << 20,
            spares: 2,
        }
    }
}

/// Where an entry's record is: file `seq`, the record's `offset` in it, payload `len`.
/// `seq` 0 (no file has it) means not known yet: the entry is not durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Loc {
    offset: u64,
    seq: u32,
    len: u32,
}

impl Loc {
    const UNKNOWN: Loc = Loc {
        offset: 0,
        seq: 0,
        len: 0,
    };

    fn known(&self) -> bool {
        self.seq != 0
    }

    /// The whole record's length on disk.
    fn record_len(&self) -> u64 {
        (RECORD_HEAD + BODY_HEAD) as u64 + u64::from(self.len)
    }
}

/// One group's state, in memory: its entries are `first..first + locs.len()`.
#[derive(Debug, Default)]
struct Group {
    /// The first entry's index (meaningless while the log is empty).
    first: u64,
    /// Per entry: its location on disk.
    locs: VecDeque<Loc>,
    /// The bytes of the newest `mem.len()` entries: every one whose location is unknown,
    /// plus recent ones as a cache (evicted oldest first once located).
    mem: VecDeque<Bytes>,
    /// Total length of `mem`.
    cached: u64,
    meta: BTreeMap<u8, Bytes>,
}

/// One entry to return from [`GroupLog::read`]: in memory, or to read from disk.
enum Piece {
    Mem(u64, Bytes),
    Disk(u64, Loc),
}

impl Group {
    fn bounds(&self) -> Option<(u64, u64)> {
        let n = self.locs.len() as u64;
        (n > 0).then(|| (self.first, self.first + (n - 1)))
    }

    fn last(&self) -> Option<u64> {
        self.bounds().map(|(_, l)| l)
    }

    /// Position in `locs` of the first entry held in `mem`.
    fn mem_start(&self) -> usize {
        self.locs.len().saturating_sub(self.mem.len())
    }

    /// Appends an entry not yet durable (the caller checked that `index` continues the log).
    fn push_mem(&mut self, index: u64, bytes: Bytes) {
        if self.locs.is_empty() {
            self.first = index;
        }
        self.cached += bytes.len() as u64;
        self.locs.push_back(Loc::UNKNOWN);
        self.mem.push_back(bytes);
    }

    /// Recovery: an entry appended at `index` whose record is at `loc`.
    fn push_disk(&mut self, index: u64, loc: Loc) {
        // A replayed append continues the log, or starts it (empty, or after a purge of
        // all). Anything else cannot come from a checked append: keep the newer entries.
        if self.last().is_some_and(|l| l.checked_add(1) != Some(index)) {
            tracing::warn!(index, "write-ahead log replay: an append that does not continue its group's log restarts it");
            self.truncate(self.first);
        }
        if self.locs.is_empty() {
            self.first = index;
        }
        // Only recovery pushes located entries, and it holds no bytes: `mem` is empty, so
        // it stays the newest entries.
        debug_assert!(self.mem.is_empty());
        self.locs.push_back(loc);
    }

    /// Drops entries `from..`.
    fn truncate(&mut self, from: u64) {
        let keep = from.saturating_sub(self.first).min(self.locs.len() as u64) as usize;
        let dropped = self.locs.len() - keep;
        self.locs.truncate(keep);
        for _ in 0..dropped.min(self.mem.len()) {
            if let Some(b) = self.mem.pop_back() {
                self.cached -= b.len() as u64;
            }
        }
        self.shrink();
    }

    /// Drops entries `..=upto`.
    fn purge(&mut self, upto: u64) {
        if self.locs.is_empty() || upto < self.first {
            return;
        }
        let n = (upto - self.first)
            .saturating_add(1)
            .min(self.locs.len() as u64) as usize;
        self.locs.drain(..n);
        self.first = upto.saturating_add(1);
        while self.mem.len() > self.locs.len() {
            if let Some(b) = self.mem.pop_front() {
                self.cached -= b.len() as u64;
            }
        }
        self.shrink();
    }

    /// Gives back the memory of a log that was much longer.
    fn shrink(&mut self) {
        if self.locs.capacity() > 1024 && self.locs.len() < self.locs.capacity() / 4 {
            self.locs.shrink_to(self.locs.len() * 2);
        }
        if self.mem.capacity() > 1024 && self.mem.len() < self.mem.capacity() / 4 {
            self.mem.shrink_to(self.mem.len() * 2);
        }
    }

    /// Records that entry `index` is at `loc`, if it still holds the very bytes that were
    /// written there (`ptr`, `len`: the writer still holds them, so the allocation cannot
    /// have been reused). It may have been truncated and appended again since, or purged.
    fn locate(&mut self, index: u64, ptr: usize, len: usize, loc: Loc) -> bool {
        let Some(k) = index
            .checked_sub(self.first)
            .and_then(|k| usize::try_from(k).ok())
            .filter(|k| *k < self.locs.len())
        else {
            return false;
        };
        let Some(bytes) = k
            .checked_sub(self.mem_start())
            .and_then(|m| self.mem.get(m))
        else {
            // Not in memory: located already.
            return false;
        };
        if bytes.as_ptr() as usize != ptr || bytes.len() != len {
            return false;
        }
        match self.locs.get_mut(k) {
            Some(l) => {
                *l = loc;
                true
            }
            None => false,
        }
    }

    /// Where entry `index` is, if the group holds it.
    fn loc_mut(&mut self, index: u64) -> Option<&mut Loc> {
        let k = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.locs.get_mut(k)
    }

    /// Entry `index` was copied from `old` to `new` (forwarded out of an old file): switches
    /// to the copy if the group still holds that very record (not purged, truncated or
    /// forgotten since it was read: a record's location is unique).
    fn relocate(&mut self, index: u64, old: Loc, new: Loc) -> bool {
        match self.loc_mut(index) {
            Some(l) if *l == old => {
                *l = new;
                true
            }
            _ => false,
        }
    }

    /// Drops the bytes of the oldest located entries beyond `cap` bytes.
    fn evict(&mut self, cap: u64) {
        while self.cached > cap {
            let located = self.locs.get(self.mem_start()).is_some_and(|l| l.known());
            if !located {
                return;
            }
            match self.mem.pop_front() {
                Some(b) => self.cached -= b.len() as u64,
                None => return,
            }
        }
    }

    /// What reading `range` takes: the bytes held in memory, the locations of the rest.
    fn plan(&self, range: Range<u64>) -> Vec<Piece> {
        let Some((first, last)) = self.bounds() else {
            return Vec::new();
        };
        let start = range.start.max(first);
        let end = range.end.min(last.saturating_add(1));
        let mem_start = self.mem_start();
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(1 << 16) as usize);
        for index in start..end {
            let k = (index - first) as usize;
            let piece = match k.checked_sub(mem_start).and_then(|m| self.mem.get(m)) {
                Some(b) => Piece::Mem(index, b.clone()),
                None => match self.locs.get(k) {
                    Some(l) => Piece::Disk(index, *l),
                    None => break,
                },
            };
            out.push(piece);
        }
        out
    }
}

#[derive(Default)]
struct Shared {
    groups: HashMap<u64, Group>,
    failed: bool,
}

enum Op {
    Append(u64, Vec<WalRecord>, WalDurable),
    Truncate(u64, u64),
    Purge(u64, u64),
    Save(u64, u8, Bytes, WalDurable),
    Forget(u64, WalDurable),
    /// Writes nothing: called back once everything queued before it is durable and the
    /// housekeeping that followed (reclamation) is done.
    Sync(WalDurable),
}

impl Op {
    fn take_durable(self) -> Option<WalDurable> {
        match self {
            Op::Append(_, _, d) | Op::Save(_, _, _, d) | Op::Forget(_, d) | Op::Sync(d) => Some(d),
            Op::Truncate(..) | Op::Purge(..) => None,
        }
    }
}

struct Inner {
    config: WalConfig,
    shared: Mutex<Shared>,
    /// Holds the order: an operation is applied in memory and queued under this lock.
    tx: Mutex<Option<SyncSender<Op>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    fsyncs: AtomicU64,
    /// Entries copied out of old files (relocate records written).
    forwarded: AtomicU64,
    readers: Mutex<Readers>,
    /// Files written before version 2 (their records' CRCs are not seeded); fixed at open.
    unseeded: std::collections::HashSet<u64>,
}

impl Inner {
    fn seed(&self, seq: u64) -> u32 {
        let version = if self.unseeded.contains(&seq) {
            VERSION_UNSEEDED
        } else {
            VERSION
        };
        crc_seed(seq, version)
    }
}

/// Read-only handles of the log's files, opened on demand by readers.
#[derive(Default)]
struct Readers {
    open: HashMap<u64, Arc<File>>,
    /// Files below this sequence number were deleted (always oldest first): a handle a
    /// reader opened just before is used once, not kept.
    deleted_below: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The node's shared log. Cheap to clone; the I/O thread stops with [`SharedLog::shutdown`]
/// or once the last clone and every [`GroupLog`] are dropped (after writing what is queued).
#[derive(Clone)]
pub struct SharedLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLog")
            .field("dir", &self.inner.config.dir)
            .finish_non_exhaustive()
    }
}

/// One group's view of the shared log (implements what a Raft log store needs).
#[derive(Clone)]
pub struct GroupLog {
    group: u64,
    log: SharedLog,
}

impl std::fmt::Debug for GroupLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupLog")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// A reclaimed file kept for reuse (`WalConfig::spares`); recovery ignores its contents.
fn spare_name(seq: u64) -> String {
    format!("{seq:020}.spare")
}

/// What a record's CRC starts from in file `seq`: its sequence number (version 2), so
/// that a record left from a reused file's earlier life fails the check.
fn crc_seed(seq: u64, version: u32) -> u32 {
    if version == VERSION_UNSEEDED {
        0
    } else {
        crc32c::crc32c(&seq.to_le_bytes())
    }
}

impl SharedLog {
    /// Opens (or creates) the log in `config.dir`, replaying what it holds.
    pub fn open(config: WalConfig) -> Result<SharedLog, WalError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| WalError::io("create", &dir, &e))?;
        let dir_lock = lock_dir(&dir)?;
        let recovered = recover(&dir, config.spares)?;
        let shared = Shared {
            groups: recovered.groups,
            failed: false,
        };
        let (tx, rx) = sync_channel(config.channel.max(1));
        let inner = Arc::new(Inner {
            config,
            shared: Mutex::new(shared),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(None),
            fsyncs: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            readers: Mutex::new(Readers::default()),
            unseeded: recovered.unseeded,
        });
        let writer = Writer {
            inner: Arc::downgrade(&inner),
            dir: dir.clone(),
            segment_size: inner.config.segment_size,
            files: recovered.files,
            active: None,
            buf: Vec::new(),
            latest_meta: recovered.latest_meta,
            placed: Vec::new(),
            forward_refused: None,
            forcing: None,
            spares: recovered.spares,
            max_spares: inner.config.spares,
            _lock: dir_lock,
        };
        let thread = std::thread::Builder::new()
            .name("pier-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| WalError::io("spawn the log thread", &dir, &e))?;
        *lock(&inner.thread) = Some(thread);
        Ok(SharedLog { inner })
    }

    /// The view of group `group` (empty when the log has nothing of it).
    pub fn group(&self, group: u64) -> GroupLog {
        GroupLog {
            group,
            log: self.clone(),
        }
    }

    /// The groups the log holds something of (after a restart: the ones to start again).
    pub fn groups(&self) -> Vec<u64> {
        let mut v: Vec<u64> = lock(&self.inner.shared).groups.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Forgets everything of `group` (its queue was deleted); `durable` once on disk.
    pub fn forget(&self, group: u64, durable: WalDurable) -> Result<(), WalError> {
        self.submit(
            |s| {
                s.groups.remove(&group);
                Ok(())
            },
            Op::Forget(group, durable),
        )
    }

    /// Calls `done` once everything queued before is durable and the log has reclaimed what
    /// that made dead (the durable callbacks of a batch run before its reclamation).
    pub fn sync(&self, done: WalDurable) -> Result<(), WalError> {
        self.submit(|_| Ok(()), Op::Sync(done))
    }

    /// Bytes of entries held in memory, all groups together (not yet durable, or cached).
    pub fn cached_bytes(&self) -> u64 {
        lock(&self.inner.shared)
            .groups
            .values()
            .map(|g| g.cached)
            .sum()
    }

    /// How many fsyncs the log has done (group commit makes this far lower than writes).
    pub fn fsyncs(&self) -> u64 {
        self.inner.fsyncs.load(Ordering::Relaxed)
    }

    /// How many entries the log copied out of old files so they could be deleted (see the
    /// module docs).
    pub fn forwarded(&self) -> u64 {
        self.inner.forwarded.load(Ordering::Relaxed)
    }

    /// The log's files, oldest first (for tests and status).
    pub fn files(&self) -> Vec<PathBuf> {
        list_files(&self.inner.config.dir)
            .map(|(v, _)| {
                v.into_iter()
                    .map(|s| self.inner.config.dir.join(file_name(s)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops the I/O thread after it has written everything queued.
    pub fn shutdown(&self) {
        drop(lock(&self.inner.tx).take());
        let thread = lock(&self.inner.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Applies an operation in memory (`mem`) and queues it for the disk, in one step.
    fn submit(
        &self,
        mem: impl FnOnce(&mut Shared) -> Result<(), WalError>,
        op: Op,
    ) -> Result<(), WalError> {
        let tx = lock(&self.inner.tx);
        let Some(tx) = tx.as_ref() else {
            return Err(WalError::Stopped);
        };
        {
            let mut s = lock(&self.inner.shared);
            if s.failed {
                return Err(WalError::Stopped);
            }
            mem(&mut s)?;
        }
        // Waits while the I/O thread is `channel` operations behind (backpressure).
        tx.send(op).map_err(|_| WalError::Stopped)
    }
}

impl SharedLog {
    /// A read-only handle of file `seq`; `None` when it is gone (reclaimed).
    fn reader(&self, seq: u64) -> Result<Option<Arc<File>>, WalError> {
        if let Some(f) = lock(&self.inner.readers).open.get(&seq) {
            return Ok(Some(Arc::clone(f)));
        }
        // Opened without the lock held: other readers go on meanwhile.
        let path = self.inner.config.dir.join(file_name(seq));
        let f = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io("open", &path, &e)),
        };
        let mut r = lock(&self.inner.readers);
        if seq < r.deleted_below {
            return Ok(Some(f));
        }
        Ok(Some(Arc::clone(r.open.entry(seq).or_insert(f))))
    }

    /// Reads the entries of `plan` that are on disk; `None` when a file was gone.
    fn fill(&self, group: u64, plan: Vec<Piece>) -> Result<Option<Vec<WalRecord>>, WalError> {
        let mut out = Vec::with_capacity(plan.len());
        let mut pieces = plan.into_iter().peekable();
        let mut run: Vec<(u64, Loc)> = Vec::new();
        while let Some(piece) = pieces.next() {
            let (index, loc) = match piece {
                Piece::Mem(index, bytes) => {
                    out.push((index, bytes));
                    continue;
                }
                Piece::Disk(index, loc) => (index, loc),
            };
            // Adjacent records of one file (one append's entries) come in one read.
            run.clear();
            run.push((index, loc));
            let mut end = loc.offset + loc.record_len();
            while let Some(Piece::Disk(next, l)) = pieces.peek() {
                if l.seq != loc.seq
                    || l.offset != end
                    || end + l.record_len() - loc.offset > READ_RUN
                {
                    break;
                }
                run.push((*next, *l));
                end += l.record_len();
                pieces.next();
            }
            if !self.read_run(group, loc.seq, loc.offset, end, &run, &mut out)? {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }

    /// Reads the records `run` (adjacent, `start..end` in file `seq`) and checks each one.
    fn read_run(
        &self,
        group: u64,
        seq: u32,
        start: u64,
        end: u64,
        run: &[(u64, Loc)],
        out: &mut Vec<WalRecord>,
    ) -> Result<bool, WalError> {
        let Some(file) = self.reader(u64::from(seq))? else {
            return Ok(false);
        };
        let path = self.inner.config.dir.join(file_name(u64::from(seq)));
        let len = usize::try_from(end - start)
            .map_err(|_| WalError::corrupt(&path, start, "read too large"))?;
        // A file reclaimed since it was looked up may be written over already (reused as a
        // later file, and cut to its new length once that one is done): what this handle
        // reads is then not the entry, and the caller looks it up again, as when the file
        // is gone.
        let reclaimed = || lock(&self.inner.readers).deleted_below > u64::from(seq);
        let mut buf = vec![0u8; len];
        if let Err(e) = file.read_exact_at(&mut buf, start) {
            if reclaimed() {
                return Ok(false);
            }
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                WalError::corrupt(&path, start, "the file ends before the record")
            } else {
                WalError::io("read", &path, &e)
            });
        }
        let buf = Bytes::from(buf);
        let seed = self.inner.seed(u64::from(seq));
        let mut pos = 0usize;
        for (index, loc) in run {
            let offset = start + pos as u64;
            let Some(body) = record_at(&buf, pos, seed) else {
                if reclaimed() {
                    return Ok(false);
                }
                return Err(WalError::corrupt(&path, offset, "bad length or checksum"));
            };
            let whole = body.len() == BODY_HEAD + loc.len as usize
                && matches!(body.first(), Some(&KIND_APPEND | &KIND_RELOCATE))
                && body.get(1..).and_then(le_u64) == Some(group)
                && body.get(9..).and_then(le_u64) == Some(*index);
            if !whole {
                if reclaimed() {
                    return Ok(false);
                }
                return Err(WalError::corrupt(
                    &path,
                    offset,
                    &format!("not the append of group {group} index {index}"),
                ));
            }
            let payload = pos + RECORD_HEAD + BODY_HEAD;
            pos += RECORD_HEAD + body.len();
            // In bounds: `record_at` found the whole body there.
            out.push((*index, buf.slice(payload..pos)));
        }
        Ok(true)
    }
}

impl Inner {
    /// The writer deleted file `seq`: drop its handle, and never cache one again.
    fn file_deleted(&self, seq: u64) {
        let mut r = lock(&self.readers);
        r.open.remove(&seq);
        r.deleted_below = r.deleted_below.max(seq + 1);
    }
}

impl Drop for Inner {
    /// The last handle is gone: the I/O thread writes what is queued and stops (unless this
    /// runs on that thread, which holds the log only for a moment).
    fn drop(&mut self) {
        drop(lock(&self.tx).take());
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Checks that `entries` continue a log whose last index is `last` (an empty log may start
/// anywhere: after a snapshot install). Raft log stores share it.
pub fn check_continues(last: Option<u64>, entries: &[WalRecord]) -> Result<(), WalError> {
    let first = match (last, entries.first()) {
        (Some(l), _) => l + 1,
        (None, Some((first, _))) => *first,
        (None, None) => return Ok(()),
    };
    for ((i, _), expected) in entries.iter().zip(first..) {
        if *i != expected {
            return Err(WalError::Gap { expected, got: *i });
        }
    }
    Ok(())
}

impl GroupLog {
    pub fn id(&self) -> u64 {
        self.group
    }

    fn with<T>(&self, f: impl FnOnce(Option<&Group>) -> T) -> T {
        let s = lock(&self.log.inner.shared);
        f(s.groups.get(&self.group))
    }

    /// First and last index present; `None` when the log is empty.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        self.with(|g| g?.bounds())
    }

    /// The entries present in `range`, in order: from memory, or read from disk (checked:
    /// a record that does not hold what was written there is an error).
    pub fn read(&self, range: Range<u64>) -> Result<Vec<WalRecord>, WalError> {
        let mut tries = 0;
        loop {
            // Locations are taken under the lock, the files read without it.
            let plan = self.with(|g| g.map(|g| g.plan(range.clone())).unwrap_or_default());
            if let Some(out) = self.log.fill(self.group, plan)? {
                return Ok(out);
            }
            // A file was reclaimed after the look-up: its entries were purged meanwhile.
            tries += 1;
            if tries >= READ_TRIES {
                return Err(WalError::Io {
                    op: "read",
                    path: self.log.inner.config.dir.display().to_string(),
                    reason: "a file holding live entries is gone".into(),
                });
            }
        }
    }

    /// How many entries the group holds in memory (not yet durable, or cached).
    pub fn entries_in_memory(&self) -> usize {
        self.with(|g| g.map_or(0, |g| g.mem.len()))
    }

    /// Appends entries that continue the log; readable at once, `durable` once on disk.
    pub fn append(&self, entries: Vec<WalRecord>, durable: WalDurable) -> Result<(), WalError> {
        let group = self.group;
        let copy = entries.clone();
        self.log.submit(
            move |s| {
                let g = s.groups.entry(group).or_default();
                check_continues(g.last(), &copy)?;
                for (index, bytes) in copy {
                    g.push_mem(index, bytes);
                }
                Ok(())
            },
            Op::Append(group, entries, durable),
        )
    }

    /// Drops entries `from..` (a conflicting suffix).
    pub fn truncate(&self, from: u64) -> Result<(), WalError> {
        let group = self.group;
        self.log.submit(
            move |s| {
                if let Some(g) = s.groups.get_mut(&group) {
                    g.truncate(from);
                }
                Ok(())
            },
            Op::Truncate(group, from),
        )
    }

    /// Drops entries `..=upto` (a snapshot holds them).
    pub fn purge(&self, upto: u64) -> Result<(), WalError> {
        let group = self.group;
        self.log.submit(
            move |s| {
                if let Some(g) = s.groups.get_mut(&group) {
                    g.purge(upto);
                }
                Ok(())
            },
            Op::Purge(group, upto),
        )
    }

    /// Keeps a small value under `key`; `durable` once on disk.
    pub fn save(&self, key: u8, value: Bytes, durable: WalDurable) -> Result<(), WalError> {
        let group = self.group;
        let copy = value.clone();
        self.log.submit(
            move |s| {
                s.groups.entry(group).or_default().meta.insert(key, copy);
                Ok(())
            },
            Op::Save(group, key, value, durable),
        )
    }

    pub fn load(&self, key: u8) -> Option<Bytes> {
        self.with(|g| g?.meta.get(&key).cloned())
    }
}

// ---------------------------------------------------------------------------------------
// The I/O thread

/// What one file holds, for reclamation.
#[derive(Debug, Default)]
struct FileUse {
    /// Per group: the highest index appended in this file.
    appended: HashMap<u64, u64>,
}

struct Writer {
    inner: std::sync::Weak<Inner>,
    dir: PathBuf,
    segment_size: u64,
    /// By sequence number, oldest first (the last is the active one once open).
    files: BTreeMap<u64, FileUse>,
    active: Option<(u64, File, u64)>,
    buf: Vec<u8>,
    /// Per (group, key): the file holding the value in force.
    latest_meta: HashMap<(u64, u8), u64>,
    /// The appends of the batch being written, to locate once it is durable.
    placed: Vec<Placed>,
    /// (oldest file, active file, active length / (segment_size / 16)) when the oldest file
    /// was last found to hold too many live bytes to forward: finding out scans locations
    /// under the groups' lock, so it is redone only once the log has grown a little.
    forward_refused: Option<(u64, u64, u64)>,
    /// The oldest file once it was found to hold the log (`Live::Part`): it is forwarded
    /// part by part until it goes, without summing every group's live bytes again (under
    /// the groups' lock) at each batch.
    forcing: Option<u64>,
    /// Reclaimed files kept for reuse, by their old sequence number.
    spares: Vec<u64>,
    max_spares: usize,
    /// The directory's lock (see [`lock_dir`]), released when this thread ends.
    _lock: File,
}

/// What keeps the oldest file.
enum Live {
    /// Nothing: it can go.
    Nothing,
    /// These entries (per group: index and location, ascending), few enough to forward.
    Few(Vec<(u64, Vec<(u64, Loc)>)>),
    /// Too many to forward at once, but the log is mostly dead records that this file's
    /// live ones hold (a deep backlog in the oldest file, a busy group's purged entries in
    /// every file after it): the first of them, one forwarding's worth, go now, the rest
    /// with the next batches (`FORCE_FORWARD_FILES`).
    Part(Vec<(u64, Vec<(u64, Loc)>)>),
    /// Too many bytes to forward: it waits for purges.
    Many,
}

/// Where one entry of a batch was written: `offset` in the active file, and its bytes
/// (`ptr`, `len`) to recognise the very entry in its group.
struct Placed {
    group: u64,
    index: u64,
    ptr: usize,
    len: usize,
    offset: u64,
}

fn encode(buf: &mut Vec<u8>, kind: u8, group: u64, index: u64, payload: &[u8]) {
    let len = BODY_HEAD + payload.len();
    let start = buf.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind);
    buf.extend_from_slice(&group.to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    debug_assert_eq!(buf.len() - start, RECORD_HEAD + len);
}

/// Fills in the CRCs of the records `encode` put in `buf`, for the file they go to (the
/// seed is known only then: a batch of forwarded entries may roll the file first).
fn seal(buf: &mut [u8], seed: u32) {
    let mut pos = 0usize;
    while let Some(len) = buf.get(pos..).and_then(le_u32) {
        let body = pos + RECORD_HEAD..pos + RECORD_HEAD + len as usize;
        let Some(crc) = buf.get(body).map(|b| crc32c::crc32c_append(seed, b)) else {
            return;
        };
        if let Some(c) = buf.get_mut(pos + 4..pos + 8) {
            c.copy_from_slice(&crc.to_le_bytes());
        }
        pos += RECORD_HEAD + len as usize;
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Op>) {
        let mut batch: Vec<Op> = Vec::new();
        while let Ok(op) = rx.recv() {
            batch.push(op);
            while batch.len() < BATCH_OPS {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let result = self.write_batch(&batch);
            let failed = result.is_err();
            if let Err(e) = &result {
                tracing::error!("write-ahead log write failed, refusing all writes: {e}");
                if let Some(inner) = self.inner.upgrade() {
                    lock(&inner.shared).failed = true;
                }
            }
            for op in batch.drain(..) {
                if let Some(d) = op.take_durable() {
                    d(result.clone());
                }
            }
            let failed = failed || {
                let reclaimed = self.reclaim();
                if let Err(e) = &reclaimed {
                    tracing::warn!("write-ahead log reclamation: {e}");
                }
                // A failed write of forwarded entries stops the log like a failed batch.
                reclaimed.is_err()
                    && self
                        .inner
                        .upgrade()
                        .is_some_and(|inner| lock(&inner.shared).failed)
            };
            if failed {
                // Everything queued after a failure is refused too.
                while let Ok(op) = rx.recv() {
                    if let Some(d) = op.take_durable() {
                        d(Err(WalError::Stopped));
                    }
                }
                return;
            }
        }
        if let Some((_, f, _)) = &self.active {
            let _ = f.sync_data();
        }
    }

    /// Opens a new active file (the first, or past `segment_size`).
    fn roll(&mut self) -> Result<(), WalError> {
        let seq = self.files.keys().next_back().map_or(1, |s| s + 1);
        let path = self.dir.join(file_name(seq));
        if u32::try_from(seq).is_err() {
            // Locations keep 32 bits of it (4 billion files).
            return Err(WalError::Io {
                op: "create",
                path: path.display().to_string(),
                reason: "file sequence number out of range".into(),
            });
        }
        if let Some((old_seq, old, len)) = &self.active {
            // A reused file may be longer than what was written into it: the rest is its
            // earlier life, which replay must not take for a torn end (that would end the
            // log there, before the later files).
            let old_path = self.dir.join(file_name(*old_seq));
            old.set_len(*len)
                .and_then(|()| old.sync_data())
                .map_err(|e| WalError::io("fsync", &old_path, &e))?;
        }
        let mut f = match self.reuse(&path) {
            Some(f) => f,
            None => OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(|e| WalError::io("create", &path, &e))?,
        };
        let mut head = Vec::with_capacity(HEADER_LEN as usize);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        f.write_all(&head)
            .map_err(|e| WalError::io("write", &path, &e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::io("fsync", &self.dir, &e))?;
        self.files.insert(seq, FileUse::default());
        self.active = Some((seq, f, HEADER_LEN));
        Ok(())
    }

    /// A spare renamed to `path`, written from its start (its old records, past what is
    /// written now, fail their seeded CRCs: replay ends there). The directory's fsync in
    /// `roll` makes the rename durable.
    fn reuse(&mut self, path: &Path) -> Option<File> {
        while let Some(old) = self.spares.pop() {
            let spare = self.dir.join(spare_name(old));
            let reused = std::fs::rename(&spare, path)
                .and_then(|()| OpenOptions::new().write(true).open(path));
            match reused {
                Ok(f) => return Some(f),
                Err(e) => {
                    tracing::warn!(file = %spare.display(), "write-ahead log spare not reused: {e}");
                    let _ = std::fs::remove_file(&spare);
                }
            }
        }
        None
    }

    fn write_batch(&mut self, batch: &[Op]) -> Result<(), WalError> {
        if batch.iter().all(|op| matches!(op, Op::Sync(_))) {
            // Everything before was written and synced by the previous batches.
            return Ok(());
        }
        let needs_roll = match &self.active {
            None => true,
            Some((_, _, len)) => *len >= self.segment_size,
        };
        if needs_roll {
            self.roll()?;
        }
        let Some((seq, base)) = self.active.as_ref().map(|(s, _, len)| (*s, *len)) else {
            return Err(WalError::Stopped);
        };
        self.buf.clear();
        self.placed.clear();
        let mut buf = std::mem::take(&mut self.buf);
        for op in batch {
            match op {
                Op::Append(g, entries, _) => {
                    for (i, e) in entries {
                        self.placed.push(Placed {
                            group: *g,
                            index: *i,
                            ptr: e.as_ptr() as usize,
                            len: e.len(),
                            offset: base + buf.len() as u64,
                        });
                        encode(&mut buf, KIND_APPEND, *g, *i, e);
                    }
                    if let (Some(file), Some((last, _))) =
                        (self.files.get_mut(&seq), entries.last())
                    {
                        let a = file.appended.entry(*g).or_insert(*last);
                        *a = (*a).max(*last);
                    }
                }
                Op::Truncate(g, from) => encode(&mut buf, KIND_TRUNCATE, *g, *from, &[]),
                Op::Purge(g, upto) => encode(&mut buf, KIND_PURGE, *g, *upto, &[]),
                Op::Save(g, key, value, _) => {
                    encode(&mut buf, KIND_SAVE, *g, u64::from(*key), value);
                    self.latest_meta.insert((*g, *key), seq);
                }
                Op::Forget(g, _) => {
                    encode(&mut buf, KIND_FORGET, *g, 0, &[]);
                    self.latest_meta.retain(|(group, _), _| group != g);
                }
                Op::Sync(_) => {}
            }
        }
        let result = self.write_and_sync(&mut buf);
        self.buf = buf;
        result?;
        self.locate(seq);
        Ok(())
    }

    /// The batch is durable: its entries can be read back from where they were written,
    /// so each group keeps only its newest `cache_per_group` bytes in memory.
    fn locate(&mut self, seq: u64) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let Ok(seq) = u32::try_from(seq) else {
            return;
        };
        let mut touched: Vec<u64> = Vec::new();
        {
            let mut s = lock(&inner.shared);
            for p in self.placed.drain(..) {
                let (Some(g), Ok(len)) = (s.groups.get_mut(&p.group), u32::try_from(p.len)) else {
                    continue;
                };
                let loc = Loc {
                    offset: p.offset,
                    seq,
                    len,
                };
                if g.locate(p.index, p.ptr, p.len, loc) && touched.last() != Some(&p.group) {
                    touched.push(p.group);
                }
            }
            touched.sort_unstable();
            touched.dedup();
            let cap = inner.config.cache_per_group;
            for id in touched {
                if let Some(g) = s.groups.get_mut(&id) {
                    g.evict(cap);
                }
            }
        }
    }

    fn write_and_sync(&mut self, bytes: &mut [u8]) -> Result<(), WalError> {
        let Some((seq, f, len)) = self.active.as_mut() else {
            return Err(WalError::Stopped);
        };
        seal(bytes, crc_seed(*seq, VERSION));
        let path = self.dir.join(file_name(*seq));
        f.write_all(bytes)
            .map_err(|e| WalError::io("write", &path, &e))?;
        f.sync_data()
            .map_err(|e| WalError::io("fsync", &path, &e))?;
        *len += bytes.len() as u64;
        if let Some(inner) = self.inner.upgrade() {
            inner.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Deletes the oldest files while nothing in them is live; values in force that were
    /// saved in such a file are re-saved into the active one first, and a few live entries
    /// (an idle group's) are forwarded there as relocate records rather than waited for.
    fn reclaim(&mut self) -> Result<(), WalError> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        loop {
            let active = self.active.as_ref().map(|(s, _, _)| *s);
            let Some(&oldest) = self.files.keys().next() else {
                return Ok(());
            };
            if Some(oldest) == active {
                return Ok(());
            }
            let (live, part) = match self.live(&inner, oldest) {
                Live::Many => return Ok(()),
                Live::Nothing => (Vec::new(), false),
                Live::Few(live) => (live, false),
                Live::Part(live) => (live, true),
            };
            let resave: Vec<(u64, u8)> = self
                .latest_meta
                .iter()
                .filter(|(_, s)| **s == oldest)
                .map(|(k, _)| *k)
                .collect();
            let mut buf = Vec::new();
            {
                let s = lock(&inner.shared);
                for (g, key) in &resave {
                    if let Some(v) = s.groups.get(g).and_then(|g| g.meta.get(key)) {
                        encode(&mut buf, KIND_SAVE, *g, u64::from(*key), v);
                    }
                }
            }
            let path = self.dir.join(file_name(oldest));
            // The live entries' bytes, read back (and checked) from the old file; the
            // groups' lock is not held meanwhile, so they may drop them: see below.
            let mut moved: Vec<Moved> = Vec::new();
            let log = SharedLog {
                inner: Arc::clone(&inner),
            };
            for (group, entries) in live {
                let plan = entries.iter().map(|(i, l)| Piece::Disk(*i, *l)).collect();
                let Some(records) = log.fill(group, plan)? else {
                    return Err(WalError::Io {
                        op: "forward",
                        path: path.display().to_string(),
                        reason: "the file is gone".into(),
                    });
                };
                for ((index, bytes), (_, old)) in records.iter().zip(&entries) {
                    moved.push(Moved {
                        group,
                        index: *index,
                        old: *old,
                        at: buf.len() as u64,
                        len: bytes.len(),
                    });
                    encode(&mut buf, KIND_RELOCATE, group, *index, bytes);
                }
            }
            drop(log);
            if !buf.is_empty() {
                if let Err(e) = self.write_forward(&inner, &mut buf, &resave, &moved) {
                    // What is in the active file past its last fsync is unknown: like a
                    // failed batch, nothing more is written.
                    lock(&inner.shared).failed = true;
                    return Err(e);
                }
            }
            // One share of a file per batch (the writes queued behind it wait that long);
            // the file goes with its last share.
            if part {
                return Ok(());
            }
            // Only now (copies durable, locations switched) can the old file go. Readers
            // holding its handle go on reading it (the inode lives until they close, and a
            // reused one is written over only at a later roll: a reader then finds the file
            // reclaimed and looks the entries up again, as one that opens it too late).
            inner.file_deleted(oldest);
            self.files.remove(&oldest);
            self.retire(oldest, inner.unseeded.contains(&oldest), &path)?;
        }
    }

    /// Deletes reclaimed file `seq`, or keeps it as a spare to write over (a version 2 file
    /// of full size, while there are fewer than `max_spares`): an `unseeded` (version 1)
    /// file's old records would pass as new ones.
    fn retire(&mut self, seq: u64, unseeded: bool, path: &Path) -> Result<(), WalError> {
        let full = std::fs::metadata(path).is_ok_and(|m| m.len() >= self.segment_size);
        if !unseeded && full && self.spares.len() < self.max_spares {
            let spare = self.dir.join(spare_name(seq));
            if std::fs::rename(path, &spare).is_ok() {
                self.spares.push(seq);
                return Ok(());
            }
        }
        std::fs::remove_file(path).map_err(|e| WalError::io("delete", path, &e))
    }

    /// Writes the re-saved values and relocate records `buf` into the active file (rolled
    /// first if full), fsyncs them, then points each moved entry at its copy.
    fn write_forward(
        &mut self,
        inner: &Inner,
        buf: &mut [u8],
        resave: &[(u64, u8)],
        moved: &[Moved],
    ) -> Result<(), WalError> {
        if self
            .active
            .as_ref()
            .is_none_or(|(_, _, len)| *len >= self.segment_size)
        {
            self.roll()?;
        }
        let Some((seq, base)) = self.active.as_ref().map(|(s, _, len)| (*s, *len)) else {
            return Err(WalError::Stopped);
        };
        let seq32 = u32::try_from(seq).map_err(|_| WalError::Stopped)?;
        self.write_and_sync(buf)?;
        inner
            .forwarded
            .fetch_add(moved.len() as u64, Ordering::Relaxed);
        for k in resave {
            self.latest_meta.insert(*k, seq);
        }
        if let Some(file) = self.files.get_mut(&seq) {
            for m in moved {
                let a = file.appended.entry(m.group).or_insert(m.index);
                *a = (*a).max(m.index);
            }
        }
        let mut s = lock(&inner.shared);
        for m in moved {
            let (Some(g), Ok(len)) = (s.groups.get_mut(&m.group), u32::try_from(m.len)) else {
                continue;
            };
            let new = Loc {
                offset: base + m.at,
                seq: seq32,
                len,
            };
            // Not if it was purged, truncated or forgotten since it was read: then the
            // relocate record is stale, and replay drops it the same way (the purge,
            // truncate or forget record follows it).
            g.relocate(m.index, m.old, new);
        }
        Ok(())
    }

    /// What keeps the oldest file `oldest`: compares each group's first index with the
    /// highest it appended there, then (if some are) sums the records that the groups'
    /// locations still point at in that file.
    fn live(&mut self, inner: &Inner, oldest: u64) -> Live {
        let Some(file) = self.files.get(&oldest) else {
            return Live::Nothing;
        };
        let s = lock(&inner.shared);
        // Per group: the indices that may be located in this file.
        let held: Vec<(u64, u64, u64)> = file
            .appended
            .iter()
            .filter_map(|(g, last)| {
                let (first, glast) = s.groups.get(g)?.bounds()?;
                (first <= *last).then_some((*g, first, (*last).min(glast)))
            })
            .collect();
        if held.is_empty() {
            return Live::Nothing;
        }
        let step = (self.segment_size / 16).max(1);
        let key = self
            .active
            .as_ref()
            .map_or((oldest, 0, 0), |(a, _, len)| (oldest, *a, *len / step));
        if self.forward_refused == Some(key) {
            return Live::Many;
        }
        let Ok(seq) = u32::try_from(oldest) else {
            return Live::Many;
        };
        let limit = self.segment_size / FORWARD_SHARE;
        let mut bytes = 0u64;
        let mut out: Vec<(u64, Vec<(u64, Loc)>)> = Vec::new();
        let mut over = false;
        'groups: for (id, from, to) in held {
            let Some(g) = s.groups.get(&id) else {
                continue;
            };
            let mut entries = Vec::new();
            for index in from..=to {
                let Some(loc) = usize::try_from(index - g.first)
                    .ok()
                    .and_then(|k| g.locs.get(k))
                else {
                    break;
                };
                if loc.seq != seq {
                    continue;
                }
                bytes += loc.record_len();
                entries.push((index, *loc));
                if bytes > limit {
                    over = true;
                    out.push((id, entries));
                    break 'groups;
                }
            }
            if !entries.is_empty() {
                out.push((id, entries));
            }
        }
        if out.is_empty() {
            return Live::Nothing;
        }
        if !over {
            return Live::Few(out);
        }
        let forced = self.forcing == Some(oldest)
            || (self.files.len() > FORCE_FORWARD_FILES && {
                let live: u64 = s
                    .groups
                    .values()
                    .flat_map(|g| g.locs.iter())
                    .filter(|l| l.known())
                    .map(Loc::record_len)
                    .sum();
                (self.files.len() as u64).saturating_mul(self.segment_size)
                    > live.saturating_mul(FORCE_LIVE_SHARE)
            });
        drop(s);
        if !forced {
            self.forward_refused = Some(key);
            return Live::Many;
        }
        self.forcing = Some(oldest);
        // The first entries, one part's worth (at least one entry, however large).
        let part = (self.segment_size / FORCE_PART).max(1);
        let mut taken = 0u64;
        let mut first = Vec::new();
        for (id, entries) in out {
            let mut mine = Vec::new();
            for (index, loc) in entries {
                if taken > 0 && taken + loc.record_len() > part {
                    break;
                }
                taken += loc.record_len();
                mine.push((index, loc));
            }
            let full = taken >= part;
            if !mine.is_empty() {
                first.push((id, mine));
            }
            if full {
                break;
            }
        }
        Live::Part(first)
    }
}

/// An entry being forwarded: its group and index, where it was, and where its relocate
/// record starts in the buffer being written (`at`, payload `len`).
struct Moved {
    group: u64,
    index: u64,
    old: Loc,
    at: u64,
    len: usize,
}

// ---------------------------------------------------------------------------------------
// Recovery

struct Recovered {
    groups: HashMap<u64, Group>,
    files: BTreeMap<u64, FileUse>,
    latest_meta: HashMap<(u64, u8), u64>,
    /// Per group: relocated entries it did not hold when their record was replayed (their
    /// append was in a deleted file), by index; joined to the log once all is replayed.
    relocated: HashMap<u64, BTreeMap<u64, Loc>>,
    /// Files of version 1 (unseeded CRCs).
    unseeded: std::collections::HashSet<u64>,
    /// Spare files kept for reuse, by their old sequence number.
    spares: Vec<u64>,
}

/// The log's files and its spares, by sequence number, ascending.
/// How long `open` waits for the directory's lock (shorter in this crate's tests).
const LOCK_WAIT: std::time::Duration = if cfg!(test) {
    std::time::Duration::from_millis(300)
} else {
    std::time::Duration::from_secs(5)
};

/// Takes the lock file of the log's directory; the I/O thread holds it until it ends. One
/// log per directory, and a log opened again in the same process waits until the previous
/// one's I/O thread has finished: that thread may outlive the last handle (when the handle
/// is dropped on it, it cannot wait for itself) and still be deleting files.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io("open", &path, &e))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                if std::time::Instant::now() >= deadline {
                    return Err(WalError::Io {
                        op: "lock",
                        path: path.display().to_string(),
                        reason: "the log is open elsewhere (another Pier process on this data \
                                 directory?)"
                            .into(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(WalError::io("lock", &path, &e.into())),
        }
    }
}

fn list_files(dir: &Path) -> Result<(Vec<u64>, Vec<u64>), WalError> {
    let mut seqs = Vec::new();
    let mut spares = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WalError::io("list", dir, &e))? {
        let entry = entry.map_err(|e| WalError::io("list", dir, &e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        } else if let Some(seq) = name
            .strip_suffix(".spare")
            .and_then(|s| s.parse::<u64>().ok())
        {
            spares.push(seq);
        }
    }
    seqs.sort_unstable();
    spares.sort_unstable();
    Ok((seqs, spares))
}

fn le_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn recover(dir: &Path, max_spares: usize) -> Result<Recovered, WalError> {
    let mut out = Recovered {
        groups: HashMap::new(),
        files: BTreeMap::new(),
        latest_meta: HashMap::new(),
        relocated: HashMap::new(),
        unseeded: Default::default(),
        spares: Vec::new(),
    };
    let (seqs, spares) = list_files(dir)?;
    let last = seqs.last().copied();
    for seq in spares {
        // Only a version 2 file is reused (its old records cannot pass as new ones).
        let path = dir.join(spare_name(seq));
        let mut head = [0u8; HEADER_LEN as usize];
        let v2 = File::open(&path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
            && head.get(..8) == Some(&MAGIC[..])
            && le_u32(&head[8..]) == Some(VERSION);
        if v2 && out.spares.len() < max_spares {
            out.spares.push(seq);
        } else {
            std::fs::remove_file(&path).map_err(|e| WalError::io("delete", &path, &e))?;
        }
    }
    let mut ended = false;
    for seq in seqs {
        let path = dir.join(file_name(seq));
        if u32::try_from(seq).is_err() || seq == 0 {
            // Never written by this log: entry locations keep 32 bits of it, 0 is "none".
            return Err(WalError::Io {
                op: "open",
                path: path.display().to_string(),
                reason: "file sequence number out of range".into(),
            });
        }
        if ended {
            // After a torn record: never acknowledged.
            std::fs::remove_file(&path).map_err(|e| WalError::io("delete", &path, &e))?;
            continue;
        }
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| WalError::io("read", &path, &e))?;
        let version = data.get(8..12).and_then(le_u32);
        let header_ok = data.get(..8) == Some(&MAGIC[..])
            && (version == Some(VERSION) || version == Some(VERSION_UNSEEDED));
        if !header_ok {
            // A file cut before its header was written: nothing in it was acknowledged.
            tracing::warn!(file = %path.display(), "write-ahead log file without a valid header ends the log");
            std::fs::remove_file(&path).map_err(|e| WalError::io("delete", &path, &e))?;
            ended = true;
            continue;
        }
        if version == Some(VERSION_UNSEEDED) {
            out.unseeded.insert(seq);
        }
        let seed = crc_seed(seq, version.unwrap_or(VERSION));
        let mut usage = FileUse::default();
        let mut pos = HEADER_LEN as usize;
        while pos < data.len() {
            let Some(body) = record_at(&data, pos, seed) else {
                if Some(seq) == last {
                    // Where writing stopped: a torn write, or the rest of a reused file.
                    tracing::debug!(file = %path.display(), position = pos, "write-ahead log ends");
                } else {
                    tracing::warn!(file = %path.display(), position = pos, "torn or corrupt write-ahead log record: the log ends here");
                }
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| {
                        f.set_len(pos as u64)?;
                        f.sync_all()
                    })
                    .map_err(|e| WalError::io("truncate", &path, &e))?;
                ended = true;
                break;
            };
            replay(&mut out, &mut usage, seq, pos as u64, body);
            pos += RECORD_HEAD + body.len();
        }
        out.files.insert(seq, usage);
    }
    join_relocated(&mut out);
    Ok(out)
}

/// The body of the record at `pos`, if whole and intact (its CRC started from `seed`).
fn record_at(data: &[u8], pos: usize, seed: u32) -> Option<&[u8]> {
    let len = le_u32(data.get(pos..)?)? as usize;
    if !(BODY_HEAD..=MAX_RECORD).contains(&len) {
        return None;
    }
    let crc = le_u32(data.get(pos + 4..)?)?;
    let body = data.get(pos + RECORD_HEAD..pos + RECORD_HEAD + len)?;
    (crc32c::crc32c_append(seed, body) == crc).then_some(body)
}

/// Applies the record at `offset` of file `seq`; appended entries are kept as locations.
fn replay(out: &mut Recovered, usage: &mut FileUse, seq: u64, offset: u64, body: &[u8]) {
    let (Some(&kind), Some(group), Some(index)) = (
        body.first(),
        body.get(1..).and_then(le_u64),
        body.get(9..).and_then(le_u64),
    ) else {
        return;
    };
    let payload = body.get(BODY_HEAD..).unwrap_or_default();
    match kind {
        KIND_APPEND => {
            // `recover` checked that `seq` fits; a record is at most MAX_RECORD long.
            let (Ok(seq), Ok(len)) = (u32::try_from(seq), u32::try_from(payload.len())) else {
                return;
            };
            // An append at `index` continues the log: nothing at or past it is left.
            if let Some(p) = out.relocated.get_mut(&group) {
                p.split_off(&index);
            }
            let g = out.groups.entry(group).or_default();
            g.push_disk(index, Loc { offset, seq, len });
            let a = usage.appended.entry(group).or_insert(index);
            *a = (*a).max(index);
        }
        KIND_TRUNCATE => {
            if let Some(g) = out.groups.get_mut(&group) {
                g.truncate(index);
            }
            if let Some(p) = out.relocated.get_mut(&group) {
                p.split_off(&index);
            }
        }
        KIND_PURGE => {
            if let Some(g) = out.groups.get_mut(&group) {
                g.purge(index);
            }
            if let Some(p) = out.relocated.get_mut(&group) {
                *p = match index.checked_add(1) {
                    Some(keep) => p.split_off(&keep),
                    None => BTreeMap::new(),
                };
            }
        }
        KIND_RELOCATE => {
            let (Ok(seq), Ok(len)) = (u32::try_from(seq), u32::try_from(payload.len())) else {
                return;
            };
            let loc = Loc { offset, seq, len };
            // Held: its append is in a file still here (the node stopped between writing
            // the copy and deleting the old file): it just moves, same bytes. Otherwise
            // it waits to be joined at the end (see `join_relocated`); a later copy wins.
            match out.groups.get_mut(&group).and_then(|g| g.loc_mut(index)) {
                Some(l) => *l = loc,
                None => {
                    out.relocated.entry(group).or_default().insert(index, loc);
                }
            }
            let a = usage.appended.entry(group).or_insert(index);
            *a = (*a).max(index);
        }
        KIND_SAVE => {
            let key = index as u8;
            out.groups
                .entry(group)
                .or_default()
                .meta
                .insert(key, Bytes::copy_from_slice(payload));
            out.latest_meta.insert((group, key), seq);
        }
        KIND_FORGET => {
            out.groups.remove(&group);
            out.latest_meta.retain(|(g, _), _| *g != group);
            out.relocated.remove(&group);
        }
        _ => {}
    }
}

/// Joins to each group's log the relocated entries that replay met before the entries they
/// precede.
///
/// Why at the end rather than in place: the files left start after some deleted ones, so
/// replay sees a group's entries appended in the files left (always a suffix of its log:
/// a later append has a higher index than every entry still live before it) before the
/// relocate records of its older entries, which were copied out of the deleted files into
/// later ones. Those copies come in no useful order: an entry of the first file is copied
/// into file 5, an entry after it (from the second file) only later, into file 5 or 6; in
/// place, the first copy would find neither its index held nor its successor, and be lost.
/// So each such copy waits in `relocated`, and every record that drops entries of the group
/// after it (truncate, purge, forget, an append at or below it) drops it there too, exactly
/// as it would have dropped the entry from the log. What is left are entries live at the
/// end, all below the group's first held one: they join at the front.
///
/// A gap between them and the held entries can only come from a truncate that was applied
/// in memory before the copies were chosen but not yet written when the node stopped (the
/// copies are what memory still held): the entries past the gap are the ones it dropped,
/// so the copies win and the rest goes (as if that truncate had been written).
fn join_relocated(out: &mut Recovered) {
    for (id, pending) in out.relocated.drain() {
        let Some(&start) = pending.keys().next() else {
            continue;
        };
        let mut run: VecDeque<Loc> = VecDeque::new();
        let mut end = start;
        for (i, l) in &pending {
            if *i != end {
                break;
            }
            run.push_back(*l);
            end = end.saturating_add(1);
        }
        if run.len() < pending.len() {
            tracing::warn!(
                group = id,
                "write-ahead log replay: relocated entries with a gap; keeping the first run"
            );
        }
        let g = out.groups.entry(id).or_default();
        if g.locs.is_empty() {
            g.first = start;
            g.locs = run;
        } else if end == g.first {
            for l in run.into_iter().rev() {
                g.locs.push_front(l);
            }
            g.first = start;
        } else if end < g.first {
            tracing::warn!(
                group = id,
                "write-ahead log replay: entries after a gap dropped"
            );
            g.first = start;
            g.locs = run;
        } else {
            tracing::warn!(
                group = id,
                "write-ahead log replay: relocated entries overlap the log; ignored"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn rec(i: u64) -> WalRecord {
        (i, Bytes::from(format!("entry-{i}")))
    }

    fn wait() -> (WalDurable, std::sync::mpsc::Receiver<Result<(), WalError>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            rx,
        )
    }

    fn append_sync(g: &GroupLog, entries: Vec<WalRecord>) {
        let (d, rx) = wait();
        g.append(entries, d).unwrap();
        rx.recv().unwrap().unwrap();
    }

    /// Waits until the log has reclaimed what the writes so far made dead.
    fn sync(log: &SharedLog) {
        let (d, rx) = wait();
        log.sync(d).unwrap();
        rx.recv().unwrap().unwrap();
    }

    fn save_sync(g: &GroupLog, key: u8, v: &'static [u8]) {
        let (d, rx) = wait();
        g.save(key, Bytes::from_static(v), d).unwrap();
        rx.recv().unwrap().unwrap();
    }

    fn small(dir: &Path) -> WalConfig {
        WalConfig {
            segment_size: 4096,
            ..WalConfig::new(dir)
        }
    }

    /// One log per directory: a second open waits for the first one's I/O thread to end
    /// (it may outlive the last handle for a moment), and is refused while it runs.
    #[test]
    fn a_directory_holds_one_open_log() {
        let dir = tempfile::tempdir().unwrap();
        let first = SharedLog::open(WalConfig::new(dir.path())).unwrap();
        let e = SharedLog::open(WalConfig::new(dir.path())).err().unwrap();
        assert!(matches!(e, WalError::Io { op: "lock", .. }), "{e}");
        append_sync(&first.group(1), (1..=3).map(rec).collect());
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(first);
        });
        let again = SharedLog::open(WalConfig::new(dir.path())).unwrap();
        closer.join().unwrap();
        assert_eq!(again.group(1).bounds(), Some((1, 3)));
    }

    #[test]
    fn groups_are_independent_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(WalConfig::new(dir.path())).unwrap();
            let (a, b) = (log.group(1), log.group(2));
            append_sync(&a, (1..=10).map(rec).collect());
            append_sync(&b, (5..=7).map(rec).collect());
            assert!(matches!(
                a.append(vec![rec(12)], Box::new(|_| {})),
                Err(WalError::Gap {
                    expected: 11,
                    got: 12
                })
            ));
            a.truncate(8).unwrap();
            append_sync(&a, vec![(8, Bytes::from_static(b"other"))]);
            a.purge(3).unwrap();
            save_sync(&a, 0, b"vote-1");
            save_sync(&a, 0, b"vote-2");
            save_sync(&b, 1, b"purged");
            assert_eq!(a.bounds(), Some((4, 8)));
            assert_eq!(b.bounds(), Some((5, 7)));
            log.shutdown();
        }
        let log = SharedLog::open(WalConfig::new(dir.path())).unwrap();
        assert_eq!(log.groups(), vec![1, 2]);
        let (a, b) = (log.group(1), log.group(2));
        assert_eq!(a.bounds(), Some((4, 8)));
        assert_eq!(
            a.read(8..9).unwrap(),
            vec![(8, Bytes::from_static(b"other"))]
        );
        assert_eq!(a.load(0).as_deref(), Some(&b"vote-2"[..]));
        assert_eq!(
            b.read(0..100).unwrap(),
            (5..=7).map(rec).collect::<Vec<_>>()
        );
        assert_eq!(b.load(1).as_deref(), Some(&b"purged"[..]));
        assert_eq!(log.group(3).bounds(), None);
    }

    /// Many groups writing at once share fsyncs: far fewer fsyncs than appends.
    #[test]
    fn appends_of_many_groups_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let log = SharedLog::open(WalConfig::new(dir.path())).unwrap();
        let groups = 1000u64;
        let rounds = 5u64;
        let mut waits = Vec::new();
        for round in 1..=rounds {
            for g in 0..groups {
                let (d, rx) = wait();
                log.group(g).append(vec![rec(round)], d).unwrap();
                waits.push(rx);
            }
        }
        for rx in waits {
            rx.recv().unwrap().unwrap();
        }
        let appends = groups * rounds;
        let fsyncs = log.fsyncs();
        assert!(
            fsyncs * 10 < appends,
            "{fsyncs} fsyncs for {appends} appends"
        );
        for g in [0, 499, 999] {
            assert_eq!(log.group(g).bounds(), Some((1, rounds)));
        }
    }

    #[test]
    fn old_files_are_deleted_once_purged_and_values_in_force_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(small(dir.path())).unwrap();
            let (a, b) = (log.group(1), log.group(2));
            save_sync(&b, 0, b"b-vote");
            let big = Bytes::from(vec![7u8; 1000]);
            for i in 1..=40 {
                append_sync(&a, vec![(i, big.clone())]);
            }
            assert!(log.files().len() > 5, "{:?}", log.files());
            // Group 1 keeps everything: nothing can go.
            let before = log.files().len();
            a.purge(38).unwrap();
            // The next write runs reclamation, after its callbacks: wait for it.
            append_sync(&a, vec![(41, big.clone())]);
            sync(&log);
            let after = log.files().len();
            assert!(after < before && after <= 3, "{before} -> {after} files");
            log.shutdown();
        }
        let log = SharedLog::open(small(dir.path())).unwrap();
        assert_eq!(log.group(1).bounds(), Some((39, 41)));
        // The vote of group 2 lived in the first file: it was re-saved before that went.
        assert_eq!(log.group(2).load(0).as_deref(), Some(&b"b-vote"[..]));
    }

    fn spare_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".spare"))
            .collect();
        v.sort();
        v
    }

    fn kib(i: u64) -> Bytes {
        Bytes::from(vec![i as u8; 1000])
    }

    /// Reclaimed files are kept (two) and written over as later files; the records of
    /// their earlier lives never come back, neither in reads nor after a restart.
    #[test]
    fn reclaimed_files_are_reused_and_their_old_records_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(small(dir.path())).unwrap();
            let a = log.group(1);
            for i in 1..=40 {
                append_sync(&a, vec![(i, kib(i))]);
            }
            a.purge(40).unwrap();
            append_sync(&a, vec![(41, kib(41))]);
            sync(&log);
            assert_eq!(
                spare_files(dir.path()).len(),
                2,
                "two kept, the rest deleted"
            );
            let highest = *seqs(&log).last().unwrap();
            for i in 42..=49 {
                append_sync(&a, vec![(i, kib(i))]);
            }
            assert!(seqs(&log).last().unwrap() > &highest, "rolled");
            assert!(spare_files(dir.path()).len() < 2, "a spare was reused");
            check_reads(&a, &(41..=49).map(|i| (i, kib(i))).collect::<Vec<_>>());
            log.shutdown();
        }
        let log = SharedLog::open(small(dir.path())).unwrap();
        let a = log.group(1);
        assert_eq!(a.bounds(), Some((41, 49)));
        check_reads(&a, &(41..=49).map(|i| (i, kib(i))).collect::<Vec<_>>());
        // Appending goes on after the restart, into the spares again.
        for i in 50..=60 {
            append_sync(&a, vec![(i, kib(i))]);
        }
        check_reads(&a, &(41..=60).map(|i| (i, kib(i))).collect::<Vec<_>>());
    }

    /// A file of version 1 (CRCs not seeded, before files were reused) is read as before,
    /// and deleted rather than reused once reclaimed (its old records would pass).
    #[test]
    fn version_1_files_are_read_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(&VERSION_UNSEEDED.to_le_bytes());
        let mut recs = Vec::new();
        for i in 1..=5 {
            encode(&mut recs, KIND_APPEND, 3, i, &kib(i));
        }
        seal(&mut recs, 0);
        data.extend_from_slice(&recs);
        std::fs::write(dir.path().join(file_name(1)), &data).unwrap();
        let log = SharedLog::open(small(dir.path())).unwrap();
        let g = log.group(3);
        assert_eq!(g.bounds(), Some((1, 5)));
        check_reads(&g, &(1..=5).map(|i| (i, kib(i))).collect::<Vec<_>>());
        g.purge(5).unwrap();
        append_sync(&g, vec![(6, kib(6))]);
        sync(&log);
        assert_eq!(seqs(&log), vec![2], "{:?}", log.files());
        assert_eq!(spare_files(dir.path()), Vec::<String>::new());
        check_reads(&g, &[(6, kib(6))]);
    }

    #[test]
    fn a_forgotten_group_is_gone_and_frees_its_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(small(dir.path())).unwrap();
            let a = log.group(9);
            for i in 1..=20 {
                append_sync(&a, vec![(i, Bytes::from(vec![1u8; 1000]))]);
            }
            save_sync(&a, 0, b"v");
            let (d, rx) = wait();
            log.forget(9, d).unwrap();
            rx.recv().unwrap().unwrap();
            append_sync(&log.group(10), vec![rec(1)]);
            sync(&log);
            assert!(log.files().len() <= 2, "{:?}", log.files());
            log.shutdown();
        }
        let log = SharedLog::open(small(dir.path())).unwrap();
        assert_eq!(log.groups(), vec![10]);
    }

    #[test]
    fn a_torn_tail_ends_the_log_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(WalConfig::new(dir.path())).unwrap();
            append_sync(&log.group(1), (1..=5).map(rec).collect());
            log.shutdown();
        }
        let file = list_files(dir.path()).unwrap().0[0];
        let path = dir.path().join(file_name(file));
        let len = std::fs::metadata(&path).unwrap().len();
        // Cut the last record in half, and leave a later file that must go too.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        std::fs::write(
            dir.path().join(file_name(file + 1)),
            b"PIERWAL\0\x01\0\0\0garbage",
        )
        .unwrap();
        let log = SharedLog::open(WalConfig::new(dir.path())).unwrap();
        assert_eq!(log.group(1).bounds(), Some((1, 4)));
        assert_eq!(log.files().len(), 1);
        // And it goes on from there.
        append_sync(&log.group(1), vec![rec(5)]);
        log.shutdown();
        let log = SharedLog::open(WalConfig::new(dir.path())).unwrap();
        assert_eq!(log.group(1).bounds(), Some((1, 5)));
    }

    #[test]
    fn corrupt_bytes_never_panic_and_end_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SharedLog::open(WalConfig::new(dir.path())).unwrap();
            append_sync(&log.group(1), (1..=50).map(rec).collect());
            log.shutdown();
        }
        let path = dir.path().join(file_name(1));
        let good = std::fs::read(&path).unwrap();
        for at in (12..good.len()).step_by(97) {
            let mut bad = good.clone();
            bad[at] ^= 0x5a;
            std::fs::write(&path, &bad).unwrap();
            let log = SharedLog::open(WalConfig::new(dir.path())).unwrap();
            let n = log.group(1).read(0..100).unwrap().len();
            assert!(n < 50, "corruption at {at} went unnoticed");
            // What is left is a prefix of what was written.
            assert_eq!(
                log.group(1).read(0..100).unwrap(),
                (1..=n as u64).map(rec).collect::<Vec<_>>()
            );
            log.shutdown();
            std::fs::write(&path, &good).unwrap();
        }
    }

    /// Entry `i` of group `g`: its bytes tell where they belong, sizes vary.
    fn payload(g: u64, i: u64) -> Bytes {
        let mut v = format!("g{g}-i{i}-").into_bytes();
        v.resize(40 + (i * 37 % 120) as usize, (g * 31 + i) as u8);
        Bytes::from(v)
    }

    fn tiny_cache(dir: &Path) -> WalConfig {
        WalConfig {
            cache_per_group: 100,
            ..small(dir)
        }
    }

    /// Every sub-range of `want` (a whole log) reads back exactly.
    fn check_reads(g: &GroupLog, want: &[WalRecord]) {
        assert_eq!(g.read(0..u64::MAX).unwrap(), want, "group {}", g.id());
        let (Some(first), Some(last)) = (want.first(), want.last()) else {
            return;
        };
        for start in (first.0.saturating_sub(2)..=last.0 + 1).step_by(7) {
            for len in [0u64, 1, 2, 5, 13, 64] {
                let got = g.read(start..start + len).unwrap();
                let expect: Vec<WalRecord> = want
                    .iter()
                    .filter(|(i, _)| (start..start + len).contains(i))
                    .cloned()
                    .collect();
                assert_eq!(got, expect, "group {} range {start}..+{len}", g.id());
            }
        }
    }

    /// A callback that blocks the I/O thread: `started` once it runs, until `release` is
    /// dropped.
    struct Blocker {
        started: std::sync::mpsc::Receiver<()>,
        release: std::sync::mpsc::Sender<()>,
    }

    fn blocker() -> (WalDurable, Blocker) {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        let d: WalDurable = Box::new(move |_| {
            let _ = started_tx.send(());
            let _ = released.recv();
        });
        (d, Blocker { started, release })
    }

    #[test]
    fn an_entry_on_disk_costs_sixteen_bytes_of_memory() {
        assert_eq!(std::mem::size_of::<Loc>(), 16);
    }

    #[test]
    fn entries_are_read_back_from_disk_with_a_bounded_cache() {
        let dir = tempfile::tempdir().unwrap();
        let log = SharedLog::open(tiny_cache(dir.path())).unwrap();
        let mut want: BTreeMap<u64, Vec<WalRecord>> = BTreeMap::new();
        let mut waits = Vec::new();
        for round in 0..60u64 {
            for g in 1..=3u64 {
                // Appends of 1 to 4 entries, not waited for one by one (one fsync takes many).
                let w = want.entry(g).or_default();
                let next = w.last().map_or(1, |(i, _)| i + 1);
                let entries: Vec<WalRecord> = (next..next + 1 + (round + g) % 4)
                    .map(|i| (i, payload(g, i)))
                    .collect();
                w.extend(entries.iter().cloned());
                let (d, rx) = wait();
                log.group(g).append(entries, d).unwrap();
                waits.push(rx);
            }
            // Files roll between batches: a few batches per file.
            if round % 2 == 1 {
                for rx in waits.drain(..) {
                    rx.recv().unwrap().unwrap();
                }
            }
        }
        sync(&log);
        assert!(log.files().len() > 5, "{:?}", log.files());
        let cached = log.cached_bytes();
        assert!(cached <= 3 * 100, "{cached} bytes cached");
        let total: usize = want.values().flatten().map(|(_, b)| b.len()).sum();
        assert!(total > 20_000, "{total}");
        for (g, w) in &want {
            assert!(log.group(*g).entries_in_memory() <= 3);
            check_reads(&log.group(*g), w);
        }
    }

    #[test]
    fn reads_after_a_restart_return_the_same_bytes_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut want: BTreeMap<u64, Vec<WalRecord>> = BTreeMap::new();
        {
            let log = SharedLog::open(tiny_cache(dir.path())).unwrap();
            for g in 1..=2u64 {
                let w: Vec<WalRecord> = (1..=120).map(|i| (i, payload(g, i))).collect();
                for chunk in w.chunks(7) {
                    append_sync(&log.group(g), chunk.to_vec());
                }
                want.insert(g, w);
            }
            // Group 1: a conflicting suffix replaced; group 2: a prefix purged.
            let a = log.group(1);
            a.truncate(100).unwrap();
            let other: Vec<WalRecord> = (100..=110)
                .map(|i| (i, Bytes::from(format!("other-{i}"))))
                .collect();
            append_sync(&a, other.clone());
            let w = want.get_mut(&1).unwrap();
            w.truncate(99);
            w.extend(other);
            log.group(2).purge(30).unwrap();
            want.get_mut(&2).unwrap().drain(..30);
            sync(&log);
            for (g, w) in &want {
                check_reads(&log.group(*g), w);
            }
            log.shutdown();
        }
        let log = SharedLog::open(tiny_cache(dir.path())).unwrap();
        assert!(log.files().len() > 3, "{:?}", log.files());
        assert_eq!(log.cached_bytes(), 0);
        assert_eq!(log.group(1).bounds(), Some((1, 110)));
        assert_eq!(log.group(2).bounds(), Some((31, 120)));
        for (g, w) in &want {
            assert_eq!(log.group(*g).entries_in_memory(), 0);
            check_reads(&log.group(*g), w);
        }
        // And it goes on: new entries, read back once durable and evicted.
        let more: Vec<WalRecord> = (111..=130).map(|i| (i, payload(1, i))).collect();
        append_sync(&log.group(1), more.clone());
        sync(&log);
        let w = want.get_mut(&1).unwrap();
        w.extend(more);
        check_reads(&log.group(1), w);
        assert!(log.cached_bytes() <= 100, "{}", log.cached_bytes());
    }

    /// Between an append's queueing and its fsync the group replaced the entries (or was
    /// forgotten and written again): the fsync must not point them at the old records.
    #[test]
    fn a_replaced_entry_is_never_read_at_its_old_location() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            cache_per_group: 0,
            channel: 3 * BATCH_OPS,
            ..WalConfig::new(dir.path())
        };
        let log = SharedLog::open(config.clone()).unwrap();
        let (a, b) = (log.group(1), log.group(2));
        // The I/O thread waits while everything below is queued.
        let (d, first) = blocker();
        log.sync(d).unwrap();
        first.started.recv().unwrap();
        let old = |i: u64| (i, Bytes::from(format!("old-{i}")));
        let new = |i: u64| (i, Bytes::from(format!("new-{i}")));
        // Batch 1: the old entries (filled up to the batch limit).
        a.append((1..=20).map(old).collect(), Box::new(|_| {}))
            .unwrap();
        b.append((1..=5).map(old).collect(), Box::new(|_| {}))
            .unwrap();
        for _ in 0..BATCH_OPS - 2 {
            log.group(99).truncate(0).unwrap();
        }
        // Batch 2: syncs only, the first blocking: the thread waits after batch 1.
        let (d, second) = blocker();
        log.sync(d).unwrap();
        for _ in 0..BATCH_OPS - 1 {
            log.sync(Box::new(|_| {})).unwrap();
        }
        // Batch 3: the replacements, in memory before batch 1 is durable.
        a.truncate(10).unwrap();
        a.append((10..=20).map(new).collect(), Box::new(|_| {}))
            .unwrap();
        log.forget(2, Box::new(|_| {})).unwrap();
        b.append((1..=5).map(new).collect(), Box::new(|_| {}))
            .unwrap();
        let want_a: Vec<WalRecord> = (1..=9).map(old).chain((10..=20).map(new)).collect();
        let want_b: Vec<WalRecord> = (1..=5).map(new).collect();
        drop(first.release);
        // Batch 1 is durable and located, the replacements are not yet written.
        second.started.recv().unwrap();
        assert_eq!(a.read(0..100).unwrap(), want_a);
        assert_eq!(b.read(0..100).unwrap(), want_b);
        assert_eq!(a.entries_in_memory(), 11);
        drop(second.release);
        sync(&log);
        assert_eq!(log.cached_bytes(), 0);
        assert_eq!(a.read(0..100).unwrap(), want_a);
        assert_eq!(b.read(0..100).unwrap(), want_b);
        log.shutdown();
        let log = SharedLog::open(config).unwrap();
        assert_eq!(log.group(1).read(0..100).unwrap(), want_a);
        assert_eq!(log.group(2).read(0..100).unwrap(), want_b);
    }

    #[test]
    fn purged_files_are_reclaimed_and_the_rest_still_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let log = SharedLog::open(tiny_cache(dir.path())).unwrap();
        let a = log.group(1);
        let w: Vec<WalRecord> = (1..=60)
            .map(|i| (i, Bytes::from(vec![i as u8; 500])))
            .collect();
        for e in &w {
            append_sync(&a, vec![e.clone()]);
        }
        // Readers hold handles of the old files now.
        check_reads(&a, &w);
        let first_file = log.files()[0].clone();
        let before = log.files().len();
        a.purge(50).unwrap();
        append_sync(&a, vec![(61, Bytes::from_static(b"last"))]);
        sync(&log);
        let after = log.files().len();
        assert!(after < before && after <= 3, "{before} -> {after} files");
        assert!(!first_file.exists());
        let mut rest: Vec<WalRecord> = w[50..].to_vec();
        rest.push((61, Bytes::from_static(b"last")));
        assert_eq!(a.read(0..51).unwrap(), vec![]);
        check_reads(&a, &rest);
        log.shutdown();
        let log = SharedLog::open(tiny_cache(dir.path())).unwrap();
        check_reads(&log.group(1), &rest);
    }

    #[test]
    fn a_corrupt_record_on_disk_is_an_error_not_wrong_data() {
        let dir = tempfile::tempdir().unwrap();
        let log = SharedLog::open(WalConfig {
            cache_per_group: 0,
            ..WalConfig::new(dir.path())
        })
        .unwrap();
        let g = log.group(1);
        let entries: Vec<WalRecord> = (1..=9).map(rec).collect();
        append_sync(&g, entries.clone());
        assert_eq!(g.entries_in_memory(), 0);
        assert_eq!(g.read(0..100).unwrap(), entries);
        // Written through another handle while the log has the file open.
        let path = log.files()[0].clone();
        let data = std::fs::read(&path).unwrap();
        let at = |needle: &[u8]| {
            data.windows(needle.len())
                .position(|w| w == needle)
                .unwrap() as u64
        };
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        // A flipped payload byte of entry 3 (the checksum no longer matches).
        f.write_at(b"E", at(b"entry-3")).unwrap();
        // Entry 7's record replaced by entry 8's (intact, but not the entry asked for).
        let rec_len = RECORD_HEAD + BODY_HEAD + "entry-7".len();
        let start7 = at(b"entry-7") as usize - RECORD_HEAD - BODY_HEAD;
        let rec8 = &data[start7 + rec_len..start7 + 2 * rec_len];
        f.write_at(rec8, start7 as u64).unwrap();
        drop(f);
        for range in [3..4, 0..100, 2..5, 7..8, 6..9] {
            let err = g.read(range.clone()).unwrap_err();
            assert!(
                matches!(&err, WalError::Io { op: "read back", reason, .. } if reason.contains("corrupt record")),
                "{range:?}: {err}"
            );
        }
        assert_eq!(g.read(1..3).unwrap(), entries[..2].to_vec());
        assert_eq!(g.read(4..7).unwrap(), entries[3..6].to_vec());
        assert_eq!(g.read(8..10).unwrap(), entries[7..].to_vec());
    }

    /// Small files, nothing cached: every read of a durable entry goes to the disk.
    fn no_cache(dir: &Path) -> WalConfig {
        WalConfig {
            cache_per_group: 0,
            ..small(dir)
        }
    }

    /// Waits until the log has reclaimed what everything queued so far made dead: a sync's
    /// callback can run before the reclamation of its own batch (a purge in that batch).
    fn settle(log: &SharedLog) {
        sync(log);
        sync(log);
    }

    /// The sequence numbers of the log's files, oldest first.
    fn seqs(log: &SharedLog) -> Vec<u64> {
        list_files(&log.inner.config.dir).unwrap().0
    }

    /// Entries `from..=to` of group `g` (`payload` bytes).
    fn entries(g: u64, from: u64, to: u64) -> Vec<WalRecord> {
        (from..=to).map(|i| (i, payload(g, i))).collect()
    }

    /// `n` entries of 500 bytes from `from`, one append (one batch: a small file is full).
    fn filler(g: &GroupLog, from: u64, n: u64) {
        append_sync(
            g,
            (from..from + n)
                .map(|i| (i, Bytes::from(vec![i as u8; 500])))
                .collect(),
        );
    }

    #[test]
    fn an_idle_group_does_not_pin_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let wa = entries(1, 1, 3);
        let wb: Vec<WalRecord>;
        {
            let log = SharedLog::open(no_cache(dir.path())).unwrap();
            let (a, b) = (log.group(1), log.group(2));
            append_sync(&a, wa.clone());
            save_sync(&a, 0, b"a-vote");
            // A busy group that purges as it goes: ~70 KB written, ~17 files' worth.
            let mut most = 0;
            for i in 1..=300u64 {
                append_sync(&b, vec![(i, Bytes::from(vec![i as u8; 200]))]);
                if i > 5 {
                    b.purge(i - 5).unwrap();
                }
                most = most.max(log.files().len());
            }
            settle(&log);
            assert!(log.files().len() <= 3, "{:?}", log.files());
            assert!(most <= 4, "{most} files at most");
            assert!(log.forwarded() >= 3, "{} forwarded", log.forwarded());
            assert!(!seqs(&log).contains(&1));
            check_reads(&a, &wa);
            wb = (296..=300)
                .map(|i| (i, Bytes::from(vec![i as u8; 200])))
                .collect();
            check_reads(&b, &wb);
            assert_eq!(a.bounds(), Some((1, 3)));
            assert_eq!(b.bounds(), Some((296, 300)));
            log.shutdown();
        }
        let log = SharedLog::open(no_cache(dir.path())).unwrap();
        let (a, b) = (log.group(1), log.group(2));
        assert_eq!(a.bounds(), Some((1, 3)));
        assert_eq!(b.bounds(), Some((296, 300)));
        check_reads(&a, &wa);
        check_reads(&b, &wb);
        assert_eq!(a.load(0).as_deref(), Some(&b"a-vote"[..]));
    }

    /// A deep backlog (group 1: three files of live entries, never purged) next to a busy
    /// group that purges as it goes: once the log passes `FORCE_FORWARD_FILES` files, most of
    /// them dead, the backlog is forwarded a part per batch and the dead files behind it go.
    /// Before, the backlog's files held every newer one and the log grew with the busy
    /// group's traffic (here to 39 files; 16 at most with the forwarding).
    #[test]
    fn a_deep_backlog_does_not_hold_the_files_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let wb: Vec<WalRecord>;
        let wa: Vec<WalRecord> = (1..=24)
            .map(|i| (i, Bytes::from(vec![i as u8; 500])))
            .collect();
        {
            let log = SharedLog::open(no_cache(dir.path())).unwrap();
            let (a, b) = (log.group(1), log.group(2));
            for from in [1, 9, 17] {
                filler(&a, from, 8);
            }
            assert_eq!(seqs(&log).len(), 3);
            let mut most = 0;
            for i in 1..=600u64 {
                append_sync(&b, vec![(i, Bytes::from(vec![i as u8; 200]))]);
                if i > 5 {
                    b.purge(i - 5).unwrap();
                }
                most = most.max(log.files().len());
            }
            settle(&log);
            // Four times the live bytes (~14 KB) is ~13 files; the forwarding lags a few.
            assert!(most <= 18, "{most} files at most");
            assert!(log.forwarded() >= 24, "{} forwarded", log.forwarded());
            assert!(!seqs(&log).contains(&1));
            check_reads(&a, &wa);
            wb = (596..=600)
                .map(|i| (i, Bytes::from(vec![i as u8; 200])))
                .collect();
            check_reads(&b, &wb);
            log.shutdown();
        }
        let log = SharedLog::open(no_cache(dir.path())).unwrap();
        let (a, b) = (log.group(1), log.group(2));
        assert_eq!(a.bounds(), Some((1, 24)));
        assert_eq!(b.bounds(), Some((596, 600)));
        check_reads(&a, &wa);
        check_reads(&b, &wb);
    }

    /// Group 1's entries are spread over the first three files; the first two are forwarded
    /// while the third stays (group 3's backlog is too large to copy): after a restart,
    /// replay meets the group's newest entry (file 3) before the copies of the older ones
    /// (file 4), and those copies in no useful order. Then everything is forwarded again.
    #[test]
    fn relocated_entries_older_than_the_rest_of_their_log_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let wa = entries(1, 1, 6);
        let check = |log: &SharedLog, c: Option<(u64, u64)>| {
            assert_eq!(log.group(1).bounds(), Some((1, 6)));
            check_reads(&log.group(1), &wa);
            assert_eq!(log.group(3).bounds(), c);
        };
        {
            let log = SharedLog::open(no_cache(dir.path())).unwrap();
            let (a, c) = (log.group(1), log.group(3));
            append_sync(&a, wa[..3].to_vec());
            filler(&c, 1, 8);
            append_sync(&a, wa[3..5].to_vec());
            filler(&c, 9, 8);
            append_sync(&a, wa[5..].to_vec());
            filler(&c, 17, 8);
            assert_eq!(seqs(&log), vec![1, 2, 3]);
            // Files 1 and 2 now hold only a few entries of group 1; file 3 also 4 KB of 3.
            c.purge(16).unwrap();
            settle(&log);
            assert_eq!(seqs(&log), vec![3, 4]);
            assert_eq!(log.forwarded(), 5);
            check(&log, Some((17, 24)));
            log.shutdown();
        }
        {
            let log = SharedLog::open(no_cache(dir.path())).unwrap();
            check(&log, Some((17, 24)));
            // File 3 goes too, then file 4 (the copies are copied again), then the next.
            log.group(3).purge(24).unwrap();
            let b = log.group(2);
            for round in 0..8 {
                filler(&b, round * 8 + 1, 8);
                b.purge(round * 8 + 8).unwrap();
            }
            settle(&log);
            assert!(seqs(&log)[0] > 5, "{:?}", seqs(&log));
            assert!(log.forwarded() > 6, "{}", log.forwarded());
            check(&log, None);
            log.shutdown();
        }
        let log = SharedLog::open(no_cache(dir.path())).unwrap();
        check(&log, None);
    }

    /// Entries relocated, then purged, truncated (and replaced) or forgotten: none comes
    /// back after a restart, whether the relocate records are still there or were
    /// forwarded again since.
    #[test]
    fn entries_dropped_after_their_relocation_stay_dropped_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let new = |i: u64| (i, Bytes::from(format!("new-{i}")));
        // Small: 15 of them are few enough to forward.
        let entries = |g: u64, from: u64, to: u64| -> Vec<WalRecord> {
            (from..=to)
                .map(|i| (i, Bytes::from(format!("g{g}-{i}"))))
                .collect()
        };
        let want = |g: u64| -> Vec<WalRecord> {
            match g {
                1 => entries(1, 3, 3),
                2 => entries(2, 1, 1),
                3 => vec![],
                4 => entries(4, 1, 1)
                    .into_iter()
                    .chain([new(2), new(3)])
                    .collect(),
                _ => entries(g, 1, 3),
            }
        };
        let check = |log: &SharedLog| {
            // (Group 9, the filler, is there while it is in memory, empty.)
            let groups: Vec<u64> = log.groups().into_iter().filter(|g| *g != 9).collect();
            assert_eq!(groups, vec![1, 2, 4, 5]);
            for g in 1..=5 {
                check_reads(&log.group(g), &want(g));
            }
            assert_eq!(log.group(2).bounds(), Some((1, 1)));
            assert_eq!(log.group(1).bounds(), Some((3, 3)));
        };
        let filled = {
            let log = SharedLog::open(no_cache(dir.path())).unwrap();
            for g in 1..=5 {
                append_sync(&log.group(g), entries(g, 1, 3));
            }
            let f = log.group(9);
            filler(&f, 1, 8);
            f.purge(8).unwrap();
            filler(&f, 9, 8);
            f.purge(16).unwrap();
            settle(&log);
            assert!(!seqs(&log).contains(&1), "{:?}", seqs(&log));
            // (More when the copies were copied again, as batches fell.)
            assert!(log.forwarded() >= 15, "{}", log.forwarded());
            // Dropped right after the relocation.
            log.group(1).purge(2).unwrap();
            log.group(2).truncate(2).unwrap();
            let (d, rx) = wait();
            log.forget(3, d).unwrap();
            rx.recv().unwrap().unwrap();
            let g4 = log.group(4);
            g4.truncate(2).unwrap();
            append_sync(&g4, vec![new(2), new(3)]);
            settle(&log);
            check(&log);
            log.shutdown();
            17
        };
        {
            let log = SharedLog::open(no_cache(dir.path())).unwrap();
            check(&log);
            // The copies are forwarded again (only the live ones now).
            let f = log.group(9);
            for round in 0..6 {
                filler(&f, filled + round * 8, 8);
                f.purge(filled + round * 8 + 7).unwrap();
            }
            settle(&log);
            assert!(seqs(&log).len() <= 3, "{:?}", seqs(&log));
            check(&log);
            log.shutdown();
        }
        let log = SharedLog::open(no_cache(dir.path())).unwrap();
        check(&log);
    }

    /// The node stops after the copies are durable but before the old file is deleted: both
    /// copies are there, and replay gives the same log (then deletes the old file again).
    #[test]
    fn a_stop_between_forwarding_and_deleting_gives_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let wa = entries(1, 1, 3);
        let first = dir.path().join(file_name(1));
        let saved;
        {
            let log = SharedLog::open(no_cache(dir.path())).unwrap();
            append_sync(&log.group(1), wa.clone());
            let b = log.group(2);
            filler(&b, 1, 8);
            // File 1 is full: it is never written again.
            saved = std::fs::read(&first).unwrap();
            filler(&b, 9, 8);
            b.purge(16).unwrap();
            settle(&log);
            assert!(!first.exists());
            assert_eq!(log.forwarded(), 3);
            log.shutdown();
        }
        std::fs::write(&first, &saved).unwrap();
        let log = SharedLog::open(no_cache(dir.path())).unwrap();
        assert_eq!(log.group(1).bounds(), Some((1, 3)));
        assert_eq!(log.group(2).bounds(), None);
        check_reads(&log.group(1), &wa);
        // Its entries are read from the copies: file 1 holds nothing live and goes.
        append_sync(&log.group(2), vec![(17, Bytes::from_static(b"x"))]);
        settle(&log);
        assert!(!first.exists());
        check_reads(&log.group(1), &wa);
        log.shutdown();
        let log = SharedLog::open(no_cache(dir.path())).unwrap();
        check_reads(&log.group(1), &wa);
    }

    /// A group as a plain in-memory model.
    #[derive(Debug, Default)]
    struct Model {
        entries: BTreeMap<u64, Bytes>,
        meta: BTreeMap<u8, Bytes>,
    }

    #[derive(Debug, Clone)]
    enum ModelOp {
        Append(u64, u8, u16),
        Truncate(u64, u8),
        Purge(u64, u8),
        Save(u64, u8, u8),
        Forget(u64),
        /// Stop and open again (replay), in the middle of the operations.
        Restart,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = ModelOp> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..4u64, 1..6u8, 0..700u16).prop_map(|(g, n, size)| ModelOp::Append(g, n, size)),
            1 => (0..4u64, 0..255u8).prop_map(|(g, at)| ModelOp::Truncate(g, at)),
            2 => (0..4u64, 0..255u8).prop_map(|(g, at)| ModelOp::Purge(g, at)),
            2 => (0..4u64, 0..3u8, any::<u8>()).prop_map(|(g, k, v)| ModelOp::Save(g, k, v)),
            1 => (0..4u64).prop_map(ModelOp::Forget),
            1 => Just(ModelOp::Restart),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Any sequence of operations over a few groups (small files, so rolling and
        /// reclamation happen), then a restart: every group reads back exactly as a plain
        /// in-memory model of the same operations.
        #[test]
        fn a_restart_gives_back_what_the_operations_made(ops in proptest::collection::vec(op(), 1..80)) {
            let dir = tempfile::tempdir().unwrap();
            let mut model: BTreeMap<u64, Model> = BTreeMap::new();
            // A small cache: most reads go to the disk.
            let config = WalConfig {
                cache_per_group: 500,
                ..small(dir.path())
            };
            let want = |model: &BTreeMap<u64, Model>, g: u64| -> Vec<WalRecord> {
                model
                    .get(&g)
                    .map(|m| m.entries.iter().map(|(i, b)| (*i, b.clone())).collect())
                    .unwrap_or_default()
            };
            {
                let mut log = SharedLog::open(config.clone()).unwrap();
                for op in ops {
                    match op {
                        ModelOp::Append(g, n, size) => {
                            let m = model.entry(g).or_default();
                            let next = m.entries.keys().next_back().map_or(1, |l| l + 1);
                            let entries: Vec<WalRecord> = (next..next + u64::from(n))
                                .map(|i| (i, Bytes::from(vec![i as u8; usize::from(size)])))
                                .collect();
                            m.entries.extend(entries.clone());
                            append_sync(&log.group(g), entries);
                        }
                        ModelOp::Truncate(g, at) => {
                            if let Some(m) = model.get_mut(&g) {
                                m.entries.split_off(&u64::from(at));
                            }
                            log.group(g).truncate(u64::from(at)).unwrap();
                        }
                        ModelOp::Purge(g, at) => {
                            if let Some(m) = model.get_mut(&g) {
                                m.entries = m.entries.split_off(&(u64::from(at) + 1));
                            }
                            log.group(g).purge(u64::from(at)).unwrap();
                        }
                        ModelOp::Save(g, k, v) => {
                            model.entry(g).or_default().meta.insert(k, Bytes::from(vec![v]));
                            let (d, rx) = wait();
                            log.group(g).save(k, Bytes::from(vec![v]), d).unwrap();
                            rx.recv().unwrap().unwrap();
                        }
                        ModelOp::Forget(g) => {
                            model.remove(&g);
                            let (d, rx) = wait();
                            log.forget(g, d).unwrap();
                            rx.recv().unwrap().unwrap();
                        }
                        ModelOp::Restart => {
                            log.shutdown();
                            log = SharedLog::open(config.clone()).unwrap();
                            for g in 0..4u64 {
                                proptest::prop_assert_eq!(log.group(g).read(0..u64::MAX).unwrap(), want(&model, g), "group {} after a restart in the middle", g);
                            }
                        }
                    }
                }
                sync(&log);
                for g in 0..4u64 {
                    proptest::prop_assert_eq!(log.group(g).read(0..u64::MAX).unwrap(), want(&model, g), "group {} before the restart", g);
                }
                log.shutdown();
            }
            let log = SharedLog::open(config).unwrap();
            proptest::prop_assert_eq!(log.cached_bytes(), 0);
            for g in 0..4u64 {
                let m = model.get(&g);
                proptest::prop_assert_eq!(log.group(g).read(0..u64::MAX).unwrap(), want(&model, g), "group {}", g);
                for k in 0..3u8 {
                    proptest::prop_assert_eq!(
                        log.group(g).load(k),
                        m.and_then(|m| m.meta.get(&k).cloned()),
                        "group {} key {}", g, k
                    );
                }
            }
        }
    }
}
