//! [`FileLogStore`]: the metadata group's log on disk, one directory of segment files and a
//! small meta file, written by one I/O thread with group commit.
//!
//! ```text
//!  <dir>/00000000000000000001.seg   header "PIERRLOG" u32 version, then records:
//!        [u32 payload len][u32 crc32c(index ++ payload)][u64 index][payload]
//!  <dir>/meta                       "PIERMETA" u32 version, [u8 key][u32 len][value]*,
//!                                   u32 crc32c of all that; replaced atomically
//! ```
//!
//! Every live entry is also kept in memory (the metadata log is short: snapshots purge it),
//! so reads never touch the disk. Writes go to the I/O thread through a bounded channel
//! (1,024 operations: a caller waits when the disk is that far behind); the thread writes
//! everything that is waiting, fsyncs once, then calls back every append in that group. A
//! segment is rolled at 4 MiB, and when an append does not continue the last one (after a
//! snapshot install), so a gap in the files always falls between segments; at start-up
//! whatever lies before a gap was purged and is dropped. A torn or corrupt record ends the
//! log: the file is cut there and later segments are deleted (they can only hold writes that
//! were never acknowledged, since every acknowledgement follows an fsync of everything
//! before it).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::log_store::{check_continues, Durable, LogStore, LogStoreError, MetaKey, Record};

const SEGMENT_MAGIC: &[u8; 8] = b"PIERRLOG";
const META_MAGIC: &[u8; 8] = b"PIERMETA";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 12;
const RECORD_HEADER: usize = 16;
/// Segments are rolled past this size.
const SEGMENT_SIZE: u64 = 4 << 20;
/// Operations queued for the I/O thread before callers wait.
const CHANNEL: usize = 1024;
/// The largest record accepted when reading back (a corrupt length field ends the log).
const MAX_RECORD: usize = 64 << 20;

enum Op {
    Append(Vec<Record>, Durable),
    Truncate(u64),
    Purge(u64),
    Save(MetaKey, Bytes, Durable),
}

#[derive(Default)]
struct Shared {
    entries: BTreeMap<u64, Bytes>,
    meta: BTreeMap<MetaKey, Bytes>,
    /// Set when a write failed: nothing more is accepted.
    failed: bool,
}

/// The file-backed [`LogStore`].
pub struct FileLogStore {
    dir: PathBuf,
    shared: Arc<Mutex<Shared>>,
    /// Holds the order: an operation is applied in memory and queued under this lock, so the
    /// I/O thread sees operations in the order readers saw them take effect.
    tx: Mutex<Option<SyncSender<Op>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for FileLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLogStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Segment {
    path: PathBuf,
    last: Option<u64>,
}

struct Writer {
    dir: PathBuf,
    /// By first index.
    segments: BTreeMap<u64, Segment>,
    /// The segment appends go to, open, with its length.
    active: Option<(u64, File, u64)>,
    /// Where each live entry starts: (segment first index, offset).
    positions: BTreeMap<u64, (u64, u64)>,
    meta: BTreeMap<MetaKey, Bytes>,
    last: Option<u64>,
    dirty: bool,
    shared: Arc<Mutex<Shared>>,
}

impl FileLogStore {
    /// Opens (or creates) the log in `dir`, reading back what it holds.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LogStoreError> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(|e| LogStoreError::io("create", &dir, &e))?;
        let meta = read_meta(&dir.join("meta"))?;
        let (segments, entries, positions) = recover_segments(&dir)?;
        let last = entries.keys().next_back().copied();
        let shared = Arc::new(Mutex::new(Shared {
            entries,
            meta: meta.clone(),
            failed: false,
        }));
        let writer = Writer {
            dir: dir.clone(),
            segments,
            active: None,
            positions,
            meta,
            last,
            dirty: false,
            shared: Arc::clone(&shared),
        };
        let (tx, rx) = sync_channel(CHANNEL);
        let thread = std::thread::Builder::new()
            .name("pier-raft-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LogStoreError::io("spawn the log thread", &dir, &e))?;
        Ok(FileLogStore {
            dir,
            shared,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `op` in memory (`mem`) and queues it for the disk, in one step.
    fn submit(
        &self,
        mem: impl FnOnce(&mut Shared) -> Result<(), LogStoreError>,
        op: Op,
    ) -> Result<(), LogStoreError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Err(LogStoreError::Stopped);
        };
        {
            let mut s = self.shared();
            if s.failed {
                return Err(LogStoreError::Stopped);
            }
            mem(&mut s)?;
        }
        // Waits while the I/O thread is CHANNEL operations behind (backpressure).
        tx.send(op).map_err(|_| LogStoreError::Stopped)
    }

    /// Stops the I/O thread after it has written everything queued.
    pub fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for FileLogStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl LogStore for FileLogStore {
    fn bounds(&self) -> Option<(u64, u64)> {
        let s = self.shared();
        Some((*s.entries.keys().next()?, *s.entries.keys().next_back()?))
    }

    fn read(&self, range: Range<u64>) -> Result<Vec<Record>, LogStoreError> {
        Ok(self
            .shared()
            .entries
            .range(range)
            .map(|(i, b)| (*i, b.clone()))
            .collect())
    }

    fn append(&self, entries: Vec<Record>, durable: Durable) -> Result<(), LogStoreError> {
        let copy = entries.clone();
        self.submit(
            move |s| {
                check_continues(s.entries.keys().next_back().copied(), &copy)?;
                s.entries.extend(copy);
                Ok(())
            },
            Op::Append(entries, durable),
        )
    }

    fn truncate(&self, from: u64) -> Result<(), LogStoreError> {
        self.submit(
            |s| {
                s.entries.split_off(&from);
                Ok(())
            },
            Op::Truncate(from),
        )
    }

    fn purge(&self, upto: u64) -> Result<(), LogStoreError> {
        self.submit(
            |s| {
                let keep = s.entries.split_off(&upto.saturating_add(1));
                s.entries = keep;
                Ok(())
            },
            Op::Purge(upto),
        )
    }

    fn save(&self, key: MetaKey, value: Bytes, durable: Durable) -> Result<(), LogStoreError> {
        let v = value.clone();
        self.submit(
            move |s| {
                s.meta.insert(key, v);
                Ok(())
            },
            Op::Save(key, value, durable),
        )
    }

    fn load(&self, key: MetaKey) -> Option<Bytes> {
        self.shared().meta.get(&key).cloned()
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Op>) {
        let mut waiting: Vec<Durable> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut result = self.handle(first, &mut waiting);
            // Group commit: everything already queued goes into the same fsync.
            while result.is_ok() {
                match rx.try_recv() {
                    Ok(op) => result = self.handle(op, &mut waiting),
                    Err(_) => break,
                }
            }
            if result.is_ok() {
                result = self.sync();
            }
            let failed = result.is_err();
            for cb in waiting.drain(..) {
                cb(result.clone());
            }
            if failed {
                if let Err(e) = &result {
                    tracing::error!("raft log write failed, the log store stops: {e}");
                }
                self.shared.lock().unwrap_or_else(|p| p.into_inner()).failed = true;
                // Fail whatever is still queued.
                while let Ok(op) = rx.recv() {
                    match op {
                        Op::Append(_, cb) | Op::Save(_, _, cb) => cb(Err(LogStoreError::Stopped)),
                        Op::Truncate(_) | Op::Purge(_) => {}
                    }
                }
                return;
            }
        }
        // Channel closed: a clean shutdown; everything was synced above.
    }

    fn io(&self, op: &'static str, path: &Path) -> impl Fn(std::io::Error) -> LogStoreError + '_ {
        let path = path.to_owned();
        move |e| LogStoreError::io(op, &path, &e)
    }

    fn handle(&mut self, op: Op, waiting: &mut Vec<Durable>) -> Result<(), LogStoreError> {
        match op {
            Op::Append(entries, cb) => {
                waiting.push(cb);
                for (index, data) in entries {
                    self.write_record(index, &data)?;
                }
                Ok(())
            }
            Op::Truncate(from) => self.truncate(from),
            Op::Purge(upto) => self.purge(upto),
            Op::Save(key, value, cb) => {
                // Earlier appends reach the disk before the value does.
                let r = self.sync().and_then(|()| {
                    self.meta.insert(key, value);
                    write_meta(&self.dir, &self.meta)
                });
                match r {
                    Ok(()) => {
                        // Called after the group's fsync, with the rest.
                        waiting.push(cb);
                        Ok(())
                    }
                    Err(e) => {
                        cb(Err(e.clone()));
                        Err(e)
                    }
                }
            }
        }
    }

    fn write_record(&mut self, index: u64, data: &[u8]) -> Result<(), LogStoreError> {
        let continues = self.last.is_some_and(|l| l + 1 == index);
        let roll = match &self.active {
            None => true,
            Some((_, _, len)) => *len >= SEGMENT_SIZE || !continues,
        };
        if roll {
            self.roll(index)?;
        }
        let Some((first, file, len)) = self.active.as_mut() else {
            return Err(LogStoreError::Stopped);
        };
        let mut buf = Vec::with_capacity(RECORD_HEADER + data.len());
        let payload_len = u32::try_from(data.len()).map_err(|_| LogStoreError::Io {
            op: "append",
            path: self.dir.display().to_string(),
            reason: format!("entry of {} bytes is too large", data.len()),
        })?;
        let mut crc = crc32c::crc32c(&index.to_be_bytes());
        crc = crc32c::crc32c_append(crc, data);
        buf.extend_from_slice(&payload_len.to_be_bytes());
        buf.extend_from_slice(&crc.to_be_bytes());
        buf.extend_from_slice(&index.to_be_bytes());
        buf.extend_from_slice(data);
        let seg_path = self.dir.join(segment_name(*first));
        file.write_all(&buf)
            .map_err(|e| LogStoreError::io("append", &seg_path, &e))?;
        self.positions.insert(index, (*first, *len));
        *len += buf.len() as u64;
        let first = *first;
        if let Some(seg) = self.segments.get_mut(&first) {
            seg.last = Some(index);
        }
        self.last = Some(index);
        self.dirty = true;
        Ok(())
    }

    /// Starts a new segment whose first entry is `first`.
    fn roll(&mut self, first: u64) -> Result<(), LogStoreError> {
        self.sync()?;
        self.active = None;
        let path = self.dir.join(segment_name(first));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(self.io("create segment", &path))?;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(SEGMENT_MAGIC);
        header.extend_from_slice(&VERSION.to_be_bytes());
        file.write_all(&header)
            .map_err(self.io("write segment header", &path))?;
        file.sync_all().map_err(self.io("sync segment", &path))?;
        sync_dir(&self.dir).map_err(self.io("sync directory", &self.dir))?;
        self.segments.insert(first, Segment { path, last: None });
        self.active = Some((first, file, HEADER_LEN));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogStoreError> {
        if !self.dirty {
            return Ok(());
        }
        if let Some((first, file, _)) = &self.active {
            let path = self.dir.join(segment_name(*first));
            file.sync_data()
                .map_err(|e| LogStoreError::io("fsync segment", &path, &e))?;
        }
        self.dirty = false;
        Ok(())
    }

    fn truncate(&mut self, from: u64) -> Result<(), LogStoreError> {
        let Some(&(seg_first, offset)) = self.positions.get(&from) else {
            return Ok(());
        };
        self.sync()?;
        // Later segments go entirely.
        let later: Vec<u64> = self
            .segments
            .range(seg_first.saturating_add(1)..)
            .map(|(f, _)| *f)
            .collect();
        for f in later {
            if let Some(seg) = self.segments.remove(&f) {
                std::fs::remove_file(&seg.path).map_err(self.io("delete segment", &seg.path))?;
            }
        }
        let path = self.dir.join(segment_name(seg_first));
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(self.io("open segment", &path))?;
        file.set_len(offset)
            .map_err(self.io("truncate segment", &path))?;
        file.sync_all().map_err(self.io("sync segment", &path))?;
        sync_dir(&self.dir).map_err(self.io("sync directory", &self.dir))?;
        self.positions.split_off(&from);
        self.last = self.positions.keys().next_back().copied();
        if let Some(seg) = self.segments.get_mut(&seg_first) {
            seg.last = self.last.filter(|l| *l >= seg_first);
        }
        // The next append starts a new segment (its name is free: any segment starting at
        // or after `from` was deleted, and one starting before it keeps its name).
        self.active = None;
        Ok(())
    }

    fn purge(&mut self, upto: u64) -> Result<(), LogStoreError> {
        let gone: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, seg)| seg.last.map_or(**first <= upto, |l| l <= upto))
            .map(|(f, _)| *f)
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        self.sync()?;
        for f in gone {
            if self.active.as_ref().is_some_and(|(a, _, _)| *a == f) {
                self.active = None;
            }
            if let Some(seg) = self.segments.remove(&f) {
                std::fs::remove_file(&seg.path).map_err(self.io("delete segment", &seg.path))?;
            }
        }
        let keep = self.positions.split_off(&upto.saturating_add(1));
        self.positions = keep;
        if self.positions.is_empty() {
            // The next append may start anywhere (after a snapshot install).
            self.last = None;
        }
        sync_dir(&self.dir).map_err(self.io("sync directory", &self.dir))
    }
}

type Recovered = (
    BTreeMap<u64, Segment>,
    BTreeMap<u64, Bytes>,
    BTreeMap<u64, (u64, u64)>,
);

fn recover_segments(dir: &Path) -> Result<Recovered, LogStoreError> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LogStoreError::io("list", dir, &e))? {
        let entry = entry.map_err(|e| LogStoreError::io("list", dir, &e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    let mut segments = BTreeMap::new();
    let mut entries = BTreeMap::new();
    let mut positions = BTreeMap::new();
    let mut ended = false;
    for first in firsts {
        let path = dir.join(segment_name(first));
        if ended {
            tracing::warn!(path = %path.display(), "raft log: deleting a segment after the end of the log");
            std::fs::remove_file(&path)
                .map_err(|e| LogStoreError::io("delete segment", &path, &e))?;
            continue;
        }
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| LogStoreError::io("read segment", &path, &e))?;
        let header_ok = data.get(..8) == Some(&SEGMENT_MAGIC[..])
            && data.get(8..12) == Some(&VERSION.to_be_bytes()[..]);
        if !header_ok {
            tracing::warn!(path = %path.display(), "raft log: segment without a valid header (never written); deleted");
            std::fs::remove_file(&path)
                .map_err(|e| LogStoreError::io("delete segment", &path, &e))?;
            continue;
        }
        let mut pos = HEADER_LEN as usize;
        let mut last = None;
        while let Some((index, payload, next)) = parse_record(&data, pos) {
            let expected = entries.keys().next_back().map(|l: &u64| l + 1);
            if last.is_none() && expected.is_some_and(|e| e != index) {
                // A gap between segments: everything before it was purged.
                entries.clear();
                positions.clear();
                let stale: Vec<u64> = std::mem::take(&mut segments).into_keys().collect();
                for f in stale {
                    let p = dir.join(segment_name(f));
                    std::fs::remove_file(&p)
                        .map_err(|e| LogStoreError::io("delete segment", &p, &e))?;
                }
            } else if last.is_some() && expected != Some(index) {
                break;
            }
            entries.insert(index, Bytes::copy_from_slice(payload));
            positions.insert(index, (first, pos as u64));
            last = Some(index);
            pos = next;
        }
        if pos < data.len() {
            tracing::warn!(path = %path.display(), at = pos, "raft log: torn or corrupt record; the log ends here");
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| LogStoreError::io("open segment", &path, &e))?;
            f.set_len(pos as u64)
                .and_then(|()| f.sync_all())
                .map_err(|e| LogStoreError::io("truncate segment", &path, &e))?;
            ended = true;
        }
        segments.insert(first, Segment { path, last });
    }
    Ok((segments, entries, positions))
}

/// One record at `pos`: (index, payload, position after it); `None` if torn or corrupt.
fn parse_record(data: &[u8], pos: usize) -> Option<(u64, &[u8], usize)> {
    let header = data.get(pos..pos.checked_add(RECORD_HEADER)?)?;
    let len = u32::from_be_bytes(header.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(header.get(4..8)?.try_into().ok()?);
    let index_bytes = header.get(8..16)?;
    let index = u64::from_be_bytes(index_bytes.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let start = pos + RECORD_HEADER;
    let payload = data.get(start..start.checked_add(len)?)?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(index_bytes), payload);
    (actual == crc).then_some((index, payload, start + len))
}

fn read_meta(path: &Path) -> Result<BTreeMap<MetaKey, Bytes>, LogStoreError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(LogStoreError::io("read meta", path, &e)),
    };
    let corrupt = || LogStoreError::Io {
        op: "read meta",
        path: path.display().to_string(),
        reason: "corrupt meta file".to_owned(),
    };
    let body_len = data.len().checked_sub(4).ok_or_else(corrupt)?;
    let (body, crc) = data.split_at(body_len);
    if crc32c::crc32c(body).to_be_bytes() != crc
        || body.get(..8) != Some(&META_MAGIC[..])
        || body.get(8..12) != Some(&VERSION.to_be_bytes()[..])
    {
        return Err(corrupt());
    }
    let mut out = BTreeMap::new();
    let mut pos = 12;
    while pos < body.len() {
        let key = *body.get(pos).ok_or_else(corrupt)?;
        let len = body
            .get(pos + 1..pos + 5)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(corrupt)? as usize;
        let value = body.get(pos + 5..pos + 5 + len).ok_or_else(corrupt)?;
        let key = match key {
            0 => MetaKey::Vote,
            1 => MetaKey::Purged,
            2 => MetaKey::Committed,
            _ => return Err(corrupt()),
        };
        out.insert(key, Bytes::copy_from_slice(value));
        pos += 5 + len;
    }
    Ok(out)
}

fn write_meta(dir: &Path, meta: &BTreeMap<MetaKey, Bytes>) -> Result<(), LogStoreError> {
    let mut body = Vec::new();
    body.extend_from_slice(META_MAGIC);
    body.extend_from_slice(&VERSION.to_be_bytes());
    for (k, v) in meta {
        body.push(match k {
            MetaKey::Vote => 0,
            MetaKey::Purged => 1,
            MetaKey::Committed => 2,
        });
        body.extend_from_slice(&(v.len() as u32).to_be_bytes());
        body.extend_from_slice(v);
    }
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    let tmp = dir.join("meta.tmp");
    let path = dir.join("meta");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)
    };
    write().map_err(|e| LogStoreError::io("write meta", &path, &e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::raft::log_store::conformance;

    #[test]
    fn file_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        conformance::run(|| FileLogStore::open(&path).unwrap(), true);
    }

    fn append_sync(s: &FileLogStore, entries: Vec<Record>) {
        let (tx, rx) = std::sync::mpsc::channel();
        s.append(
            entries,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .unwrap();
        rx.recv().unwrap().unwrap();
    }

    #[test]
    fn a_torn_tail_ends_the_log_and_rolling_keeps_segments_small() {
        let dir = tempfile::tempdir().unwrap();
        let big = Bytes::from(vec![7u8; 1 << 20]);
        {
            let s = FileLogStore::open(dir.path()).unwrap();
            for i in 1..=10 {
                append_sync(&s, vec![(i, big.clone())]);
            }
        }
        let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 3, "rolled: {segs:?}");
        // Tear the last record of the last segment.
        let last = segs.last().unwrap();
        let len = std::fs::metadata(last).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(last)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let s = FileLogStore::open(dir.path()).unwrap();
        assert_eq!(s.bounds(), Some((1, 9)));
        // Writing goes on from there.
        append_sync(&s, vec![(10, Bytes::from_static(b"again"))]);
        drop(s);
        let s = FileLogStore::open(dir.path()).unwrap();
        assert_eq!(
            s.read(10..11).unwrap(),
            vec![(10, Bytes::from_static(b"again"))]
        );
        // Purging drops whole segments from disk.
        s.purge(8).unwrap();
        drop(s);
        let s = FileLogStore::open(dir.path()).unwrap();
        let (first, last) = s.bounds().unwrap();
        assert!(first > 1 && first <= 9 && last == 10);
    }

    #[test]
    fn a_corrupt_meta_file_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = FileLogStore::open(dir.path()).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            s.save(
                MetaKey::Vote,
                Bytes::from_static(b"v"),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .unwrap();
            rx.recv().unwrap().unwrap();
        }
        let meta = dir.path().join("meta");
        let mut data = std::fs::read(&meta).unwrap();
        data[13] ^= 0xff;
        std::fs::write(&meta, data).unwrap();
        assert!(FileLogStore::open(dir.path()).is_err());
    }
}
