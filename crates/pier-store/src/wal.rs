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
//!        [u32 body len][u32 crc32c(body)] body = [u8 kind][u64 group][u64 index][payload]
//!        kind: 1 append (index, entry) · 2 truncate (from index) · 3 purge (up to index)
//!              4 save (index = key, payload = value) · 5 forget the group
//! ```
//!
//! Replay applies the records in order, so a group's state after a restart is what it was
//! after its last durable write. A torn or corrupt record ends the log: the file is cut there
//! and later files are deleted (they can only hold writes never acknowledged, since every
//! acknowledgement follows an fsync of everything before it). Files roll at
//! `segment_size`; the oldest file is deleted once nothing in it is live any more (every
//! entry it holds is purged, truncated or of a forgotten group, and no group's current value
//! of a key was saved there — such values are re-saved into the active file first).
//!
//! Every live entry is held in memory, as in Ra's mem tables. Not yet: moving a slow group's
//! live entries out of old files into per-group segments (Ra's segment writer), so one idle
//! group cannot hold old files, and keeping large entries on disk only.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

const MAGIC: &[u8; 8] = b"PIERWAL\0";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 12;
/// len + crc, then kind + group + index.
const RECORD_HEAD: usize = 8;
const BODY_HEAD: usize = 17;
/// The largest record believed when reading back (a corrupt length ends the log).
const MAX_RECORD: usize = 256 << 20;
/// Operations one batch takes at most (the rest wait for the next fsync).
const BATCH_OPS: usize = 4096;

const KIND_APPEND: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_SAVE: u8 = 4;
const KIND_FORGET: u8 = 5;

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
}

/// Settings of a [`SharedLog`].
#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// Files roll past this size.
    pub segment_size: u64,
    /// Operations queued for the I/O thread before writers wait (backpressure).
    pub channel: usize,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_size: 64 << 20,
            channel: 8192,
        }
    }
}

/// One group's state, in memory.
#[derive(Debug, Default)]
struct Group {
    entries: BTreeMap<u64, Bytes>,
    meta: BTreeMap<u8, Bytes>,
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

impl SharedLog {
    /// Opens (or creates) the log in `config.dir`, replaying what it holds.
    pub fn open(config: WalConfig) -> Result<SharedLog, WalError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| WalError::io("create", &dir, &e))?;
        let recovered = recover(&dir)?;
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
        });
        let writer = Writer {
            inner: Arc::downgrade(&inner),
            dir: dir.clone(),
            segment_size: inner.config.segment_size,
            files: recovered.files,
            active: None,
            buf: Vec::new(),
            latest_meta: recovered.latest_meta,
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

    /// How many fsyncs the log has done (group commit makes this far lower than writes).
    pub fn fsyncs(&self) -> u64 {
        self.inner.fsyncs.load(Ordering::Relaxed)
    }

    /// The log's files, oldest first (for tests and status).
    pub fn files(&self) -> Vec<PathBuf> {
        list_files(&self.inner.config.dir)
            .map(|v| {
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
        self.with(|g| {
            let g = g?;
            Some((*g.entries.keys().next()?, *g.entries.keys().next_back()?))
        })
    }

    /// The entries present in `range`, in order.
    pub fn read(&self, range: Range<u64>) -> Vec<WalRecord> {
        self.with(|g| {
            g.map(|g| {
                g.entries
                    .range(range)
                    .map(|(i, b)| (*i, b.clone()))
                    .collect()
            })
            .unwrap_or_default()
        })
    }

    /// Appends entries that continue the log; readable at once, `durable` once on disk.
    pub fn append(&self, entries: Vec<WalRecord>, durable: WalDurable) -> Result<(), WalError> {
        let group = self.group;
        let copy = entries.clone();
        self.log.submit(
            move |s| {
                let g = s.groups.entry(group).or_default();
                check_continues(g.entries.keys().next_back().copied(), &copy)?;
                g.entries.extend(copy);
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
                    g.entries.split_off(&from);
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
                    g.entries = g.entries.split_off(&upto.saturating_add(1));
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
    let crc = crc32c::crc32c(buf.get(start + RECORD_HEAD..).unwrap_or_default());
    if let Some(c) = buf.get_mut(start + 4..start + 8) {
        c.copy_from_slice(&crc.to_le_bytes());
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
            if failed {
                // Everything queued after a failure is refused too.
                while let Ok(op) = rx.recv() {
                    if let Some(d) = op.take_durable() {
                        d(Err(WalError::Stopped));
                    }
                }
                return;
            }
            if let Err(e) = self.reclaim() {
                tracing::warn!("write-ahead log reclamation: {e}");
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
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| WalError::io("create", &path, &e))?;
        let mut head = Vec::with_capacity(HEADER_LEN as usize);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        f.write_all(&head)
            .map_err(|e| WalError::io("write", &path, &e))?;
        if let Some((_, old, _)) = &self.active {
            old.sync_data()
                .map_err(|e| WalError::io("fsync", &path, &e))?;
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::io("fsync", &self.dir, &e))?;
        self.files.insert(seq, FileUse::default());
        self.active = Some((seq, f, HEADER_LEN));
        Ok(())
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
        let Some(seq) = self.active.as_ref().map(|(s, _, _)| *s) else {
            return Err(WalError::Stopped);
        };
        self.buf.clear();
        let mut buf = std::mem::take(&mut self.buf);
        for op in batch {
            match op {
                Op::Append(g, entries, _) => {
                    for (i, e) in entries {
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
        let result = self.write_and_sync(&buf);
        self.buf = buf;
        result
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        let Some((seq, f, len)) = self.active.as_mut() else {
            return Err(WalError::Stopped);
        };
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
    /// saved in such a file are re-saved into the active one first.
    fn reclaim(&mut self) -> Result<(), WalError> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        let active = self.active.as_ref().map(|(s, _, _)| *s);
        loop {
            let Some((&oldest, file)) = self.files.iter().next() else {
                return Ok(());
            };
            if Some(oldest) == active {
                return Ok(());
            }
            // Live entries: a group still holding an index it appended in this file.
            let live_entries = {
                let s = lock(&inner.shared);
                file.appended.iter().any(|(g, last)| {
                    s.groups
                        .get(g)
                        .and_then(|g| g.entries.keys().next().copied())
                        .is_some_and(|first| first <= *last)
                })
            };
            if live_entries {
                return Ok(());
            }
            let resave: Vec<(u64, u8)> = self
                .latest_meta
                .iter()
                .filter(|(_, s)| **s == oldest)
                .map(|(k, _)| *k)
                .collect();
            if !resave.is_empty() {
                let mut buf = Vec::new();
                {
                    let s = lock(&inner.shared);
                    for (g, key) in &resave {
                        if let Some(v) = s.groups.get(g).and_then(|g| g.meta.get(key)) {
                            encode(&mut buf, KIND_SAVE, *g, u64::from(*key), v);
                        }
                    }
                }
                self.write_and_sync(&buf)?;
                if let Some(seq) = active {
                    for k in resave {
                        self.latest_meta.insert(k, seq);
                    }
                }
            }
            let path = self.dir.join(file_name(oldest));
            std::fs::remove_file(&path).map_err(|e| WalError::io("delete", &path, &e))?;
            self.files.remove(&oldest);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Recovery

struct Recovered {
    groups: HashMap<u64, Group>,
    files: BTreeMap<u64, FileUse>,
    latest_meta: HashMap<(u64, u8), u64>,
}

fn list_files(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WalError::io("list", dir, &e))? {
        let entry = entry.map_err(|e| WalError::io("list", dir, &e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn le_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn recover(dir: &Path) -> Result<Recovered, WalError> {
    let mut out = Recovered {
        groups: HashMap::new(),
        files: BTreeMap::new(),
        latest_meta: HashMap::new(),
    };
    let seqs = list_files(dir)?;
    let mut ended = false;
    for seq in seqs {
        let path = dir.join(file_name(seq));
        if ended {
            // After a torn record: never acknowledged.
            std::fs::remove_file(&path).map_err(|e| WalError::io("delete", &path, &e))?;
            continue;
        }
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| WalError::io("read", &path, &e))?;
        let header_ok =
            data.get(..8) == Some(&MAGIC[..]) && data.get(8..12).and_then(le_u32) == Some(VERSION);
        if !header_ok {
            // A file cut before its header was written: nothing in it was acknowledged.
            tracing::warn!(file = %path.display(), "write-ahead log file without a valid header ends the log");
            std::fs::remove_file(&path).map_err(|e| WalError::io("delete", &path, &e))?;
            ended = true;
            continue;
        }
        let mut usage = FileUse::default();
        let mut pos = HEADER_LEN as usize;
        while pos < data.len() {
            let Some(body) = record_at(&data, pos) else {
                tracing::warn!(file = %path.display(), position = pos, "torn or corrupt write-ahead log record: the log ends here");
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
            pos += RECORD_HEAD + body.len();
            replay(&mut out, &mut usage, seq, body);
        }
        out.files.insert(seq, usage);
    }
    Ok(out)
}

/// The body of the record at `pos`, if whole and intact.
fn record_at(data: &[u8], pos: usize) -> Option<&[u8]> {
    let len = le_u32(data.get(pos..)?)? as usize;
    if !(BODY_HEAD..=MAX_RECORD).contains(&len) {
        return None;
    }
    let crc = le_u32(data.get(pos + 4..)?)?;
    let body = data.get(pos + RECORD_HEAD..pos + RECORD_HEAD + len)?;
    (crc32c::crc32c(body) == crc).then_some(body)
}

fn replay(out: &mut Recovered, usage: &mut FileUse, seq: u64, body: &[u8]) {
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
            let g = out.groups.entry(group).or_default();
            // A replayed append continues the log, or restarts it after a purge of all.
            g.entries.insert(index, Bytes::copy_from_slice(payload));
            let a = usage.appended.entry(group).or_insert(index);
            *a = (*a).max(index);
        }
        KIND_TRUNCATE => {
            if let Some(g) = out.groups.get_mut(&group) {
                g.entries.split_off(&index);
            }
        }
        KIND_PURGE => {
            if let Some(g) = out.groups.get_mut(&group) {
                g.entries = g.entries.split_off(&index.saturating_add(1));
            }
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
        }
        _ => {}
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
        assert_eq!(a.read(8..9), vec![(8, Bytes::from_static(b"other"))]);
        assert_eq!(a.load(0).as_deref(), Some(&b"vote-2"[..]));
        assert_eq!(b.read(0..100), (5..=7).map(rec).collect::<Vec<_>>());
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
        let file = list_files(dir.path()).unwrap()[0];
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
            let n = log.group(1).read(0..100).len();
            assert!(n < 50, "corruption at {at} went unnoticed");
            // What is left is a prefix of what was written.
            assert_eq!(
                log.group(1).read(0..100),
                (1..=n as u64).map(rec).collect::<Vec<_>>()
            );
            log.shutdown();
            std::fs::write(&path, &good).unwrap();
        }
    }

    #[derive(Debug, Clone)]
    enum ModelOp {
        Append(u64, u8, u16),
        Truncate(u64, u8),
        Purge(u64, u8),
        Save(u64, u8, u8),
        Forget(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = ModelOp> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..4u64, 1..6u8, 0..700u16).prop_map(|(g, n, size)| ModelOp::Append(g, n, size)),
            1 => (0..4u64, 0..255u8).prop_map(|(g, at)| ModelOp::Truncate(g, at)),
            2 => (0..4u64, 0..255u8).prop_map(|(g, at)| ModelOp::Purge(g, at)),
            2 => (0..4u64, 0..3u8, any::<u8>()).prop_map(|(g, k, v)| ModelOp::Save(g, k, v)),
            1 => (0..4u64).prop_map(ModelOp::Forget),
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
            let mut model: BTreeMap<u64, Group> = BTreeMap::new();
            {
                let log = SharedLog::open(small(dir.path())).unwrap();
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
                    }
                }
                log.shutdown();
            }
            let log = SharedLog::open(small(dir.path())).unwrap();
            for g in 0..4u64 {
                let m = model.get(&g);
                let want: Vec<WalRecord> = m
                    .map(|m| m.entries.iter().map(|(i, b)| (*i, b.clone())).collect())
                    .unwrap_or_default();
                proptest::prop_assert_eq!(log.group(g).read(0..u64::MAX), want, "group {}", g);
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
