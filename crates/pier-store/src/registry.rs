//! `queues.log`: which queue names exist and their disk ids, plus each queue's delivered mark.
//!
//! ```text
//!  QUEUE_ADDED   (0x10): disk_id u32 | name_len u16 | name (UTF-8)
//!  QUEUE_REMOVED (0x11): disk_id u32
//!  DELIVERED     (0x12): disk_id u32 | offset u64      highest offset handed to a consumer
//!  NEXT_ID       (0x13): next_id u32                   disk ids are never reused
//!  RETURNED      (0x14): disk_id u32 | offset u64 | returns u32 [| failed u32]
//!                        how often a live message came back, and how many of those were
//!                        failed deliveries (absent in records written before it existed:
//!                        0); the latest record counts
//!  DEAD_LETTER   (0x15): disk_id u32 | offset u64 | reason u8
//!                        a live message is an at-least-once dead letter, kept until its
//!                        targets confirm it (the reason code is the broker's)
//! ```
//!
//! Message records name their queues by a 4-byte disk id rather than by name. Deleting or
//! purging a queue retires its id (one small durable record) instead of writing an ack per
//! message: recovery drops every reference to an id the registry no longer lists, wherever it
//! lies. A purged queue gets a fresh id. Because ids are never reused, an old reference in a
//! segment that outlived its queue can never be mistaken for a new queue's message.
//!
//! Added/removed records are fsynced before the call returns (rare, and an append must never
//! reference an id that is not durably registered). Delivered marks and return counts are
//! advisory and ride along with the lazy syncs. Message notes (return counts, kept dead
//! letters) are kept (in memory and in a compacted file) only while their message is live: an
//! ack forgets them, and since offsets are never reused a stale record can never apply to
//! another message. The file is rewritten (temp file + fsync + rename + dir fsync)
//! when it grows well past its live content.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::error::StoreError;
use crate::files::{self, FILE_HEADER_LEN, REGISTRY_MAGIC};
use crate::record::{self, kind, Reader};
use crate::store::Returns;

pub const MAX_QUEUE_NAME: usize = u16::MAX as usize;
const FILE_NAME: &str = "queues.log";
const COMPACT_MIN_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegQueue {
    pub name: String,
    pub delivered: Option<u64>,
    /// Notes on live messages: offset → note.
    pub notes: HashMap<u64, MessageNote>,
}

/// What the registry notes about a live message beyond its record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageNote {
    /// How often it came back to its queue.
    pub returns: Returns,
    /// It is a kept (at-least-once) dead letter, with this reason code.
    pub dead_letter: Option<u8>,
}

impl RegQueue {
    fn new(name: String) -> RegQueue {
        RegQueue {
            name,
            delivered: None,
            notes: HashMap::new(),
        }
    }
}

#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    len: u64,
    pub queues: BTreeMap<u32, RegQueue>,
    next_id: u32,
    marks: HashMap<u32, u64>,
    /// Notes changed and not written yet: (disk id, offset).
    noted: std::collections::HashSet<(u32, u64)>,
    unsynced: bool,
}

fn valid_type(t: u8) -> bool {
    matches!(
        t,
        kind::QUEUE_ADDED
            | kind::QUEUE_REMOVED
            | kind::DELIVERED
            | kind::NEXT_ID
            | kind::RETURNED
            | kind::DEAD_LETTER
    )
}

fn encode_added(out: &mut Vec<u8>, id: u32, name: &str) {
    record::encode(out, kind::QUEUE_ADDED, |o| {
        o.extend_from_slice(&id.to_le_bytes());
        o.extend_from_slice(&(name.len() as u16).to_le_bytes());
        o.extend_from_slice(name.as_bytes());
    });
}

fn encode_u32(out: &mut Vec<u8>, ty: u8, v: u32) {
    record::encode(out, ty, |o| o.extend_from_slice(&v.to_le_bytes()));
}

fn encode_delivered(out: &mut Vec<u8>, id: u32, offset: u64) {
    record::encode(out, kind::DELIVERED, |o| {
        o.extend_from_slice(&id.to_le_bytes());
        o.extend_from_slice(&offset.to_le_bytes());
    });
}

fn encode_note(out: &mut Vec<u8>, id: u32, offset: u64, note: &MessageNote) {
    if note.returns.count > 0 {
        record::encode(out, kind::RETURNED, |o| {
            o.extend_from_slice(&id.to_le_bytes());
            o.extend_from_slice(&offset.to_le_bytes());
            o.extend_from_slice(&note.returns.count.to_le_bytes());
            o.extend_from_slice(&note.returns.failed.to_le_bytes());
        });
    }
    if let Some(reason) = note.dead_letter {
        record::encode(out, kind::DEAD_LETTER, |o| {
            o.extend_from_slice(&id.to_le_bytes());
            o.extend_from_slice(&offset.to_le_bytes());
            o.push(reason);
        });
    }
}

impl Registry {
    /// Opens (creating if missing) and replays the registry; a torn tail is truncated.
    pub fn open(dir: &Path) -> Result<Registry, StoreError> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            write_fresh(dir, &path, &BTreeMap::new(), 1)?;
        }
        let buf = std::fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
        if !files::header_ok(&buf, REGISTRY_MAGIC, 0) {
            return Err(StoreError::BadHeader { path });
        }
        let mut queues = BTreeMap::new();
        let mut next_id = 1u32;
        let out = record::scan(&buf, FILE_HEADER_LEN, buf.len(), valid_type, |_, ty, p| {
            let mut r = Reader::new(p);
            match ty {
                kind::QUEUE_ADDED => {
                    let parsed = (|| {
                        let id = r.u32()?;
                        let n = r.u16()?;
                        let name = std::str::from_utf8(r.bytes(usize::from(n))?).ok()?;
                        Some((id, name.to_owned()))
                    })();
                    if let Some((id, name)) = parsed {
                        next_id = next_id.max(id.saturating_add(1));
                        queues.insert(id, RegQueue::new(name));
                    }
                }
                kind::QUEUE_REMOVED => {
                    if let Some(id) = r.u32() {
                        queues.remove(&id);
                    }
                }
                kind::DELIVERED => {
                    if let (Some(id), Some(off)) = (r.u32(), r.u64()) {
                        if let Some(q) = queues.get_mut(&id) {
                            q.delivered = Some(q.delivered.map_or(off, |d| d.max(off)));
                        }
                    }
                }
                kind::RETURNED => {
                    if let (Some(id), Some(off), Some(n)) = (r.u32(), r.u64(), r.u32()) {
                        let failed = r.u32().unwrap_or(0);
                        if let Some(q) = queues.get_mut(&id) {
                            q.notes.entry(off).or_default().returns = Returns { count: n, failed };
                        }
                    }
                }
                kind::DEAD_LETTER => {
                    if let (Some(id), Some(off), Some(reason)) = (r.u32(), r.u64(), r.u8()) {
                        if let Some(q) = queues.get_mut(&id) {
                            q.notes.entry(off).or_default().dead_letter = Some(reason);
                        }
                    }
                }
                _ => {
                    if let Some(n) = r.u32() {
                        next_id = next_id.max(n);
                    }
                }
            }
        });
        for (start, end) in &out.corrupt {
            warn!(path = %path.display(), start, end, "queue registry: skipped a corrupt region");
        }
        let file = files::open_rw(&path)?;
        if out.torn_bytes > 0 {
            warn!(path = %path.display(), at = out.valid_end, bytes = out.torn_bytes,
                "queue registry: truncating a torn tail");
            file.set_len(out.valid_end as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| StoreError::io("truncate", &path, e))?;
        }
        Ok(Registry {
            dir: dir.to_path_buf(),
            path,
            file,
            len: out.valid_end as u64,
            queues,
            next_id,
            marks: HashMap::new(),
            noted: Default::default(),
            unsynced: false,
        })
    }

    fn write_now(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        if let Err(e) = self.file.write_all_at(buf, self.len) {
            // Cut off whatever part made it, so the file stays a clean sequence of records.
            let _ = self.file.set_len(self.len);
            return Err(StoreError::io("write", &self.path, e));
        }
        self.len += buf.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    fn write_durably(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        self.write_now(buf)?;
        files::datasync(&self.file, &self.path)?;
        self.unsynced = false;
        Ok(())
    }

    /// Registers each name under a fresh id, all in one durable write.
    pub fn add_many(&mut self, names: &[&str]) -> Result<Vec<u32>, StoreError> {
        let mut buf = Vec::new();
        let ids: Vec<u32> = (0..names.len() as u32).map(|i| self.next_id + i).collect();
        for (id, name) in ids.iter().zip(names) {
            encode_added(&mut buf, *id, name);
        }
        self.write_durably(&buf)?;
        self.next_id += names.len() as u32;
        for (id, name) in ids.iter().zip(names) {
            self.queues.insert(*id, RegQueue::new((*name).to_owned()));
        }
        self.maybe_compact();
        Ok(ids)
    }

    /// Registers `name` under a fresh id, durably.
    pub fn add(&mut self, name: &str) -> Result<u32, StoreError> {
        let id = self.next_id;
        let mut buf = Vec::new();
        encode_added(&mut buf, id, name);
        self.write_durably(&buf)?;
        self.next_id += 1;
        self.queues.insert(id, RegQueue::new(name.to_owned()));
        self.maybe_compact();
        Ok(id)
    }

    /// Retires `id` and, if `rename_to` is given, registers that name under a fresh id in the
    /// same durable write (purge). Returns the new id.
    pub fn remove(&mut self, id: u32, readd: Option<&str>) -> Result<Option<u32>, StoreError> {
        let mut buf = Vec::new();
        encode_u32(&mut buf, kind::QUEUE_REMOVED, id);
        // A purged queue keeps its delivered mark under the new id, in the same write: its
        // offsets keep counting upwards across restarts.
        let delivered = self.queues.get(&id).and_then(|q| q.delivered);
        let new_id = readd.map(|name| {
            encode_added(&mut buf, self.next_id, name);
            if let Some(d) = delivered {
                encode_delivered(&mut buf, self.next_id, d);
            }
            self.next_id
        });
        self.write_durably(&buf)?;
        self.queues.remove(&id);
        self.marks.remove(&id);
        self.noted.retain(|&(q, _)| q != id);
        if let (Some(nid), Some(name)) = (new_id, readd) {
            self.next_id += 1;
            self.queues.insert(
                nid,
                RegQueue {
                    delivered,
                    ..RegQueue::new(name.to_owned())
                },
            );
        }
        self.maybe_compact();
        Ok(new_id)
    }

    pub fn mark_delivered(&mut self, id: u32, offset: u64) {
        if let Some(q) = self.queues.get_mut(&id) {
            if q.delivered.is_none_or(|d| offset > d) {
                q.delivered = Some(offset);
                self.marks.insert(id, offset);
            }
        }
    }

    /// Records how often the live message at `offset` came back to its queue (written with
    /// the next flush).
    pub fn mark_returned(&mut self, id: u32, offset: u64, returns: Returns) {
        self.note(id, offset, |n| n.returns = returns);
    }

    /// Records that the live message at `offset` is a kept dead letter (written with the next
    /// flush).
    pub fn mark_dead_letter(&mut self, id: u32, offset: u64, reason: u8) {
        self.note(id, offset, |n| n.dead_letter = Some(reason));
    }

    fn note(&mut self, id: u32, offset: u64, change: impl FnOnce(&mut MessageNote)) {
        if let Some(q) = self.queues.get_mut(&id) {
            change(q.notes.entry(offset).or_default());
            self.noted.insert((id, offset));
        }
    }

    /// Forgets the notes of messages that left the queue (nothing is written: a record for
    /// an offset that is no longer live is ignored).
    pub fn forget_notes(&mut self, id: u32, offsets: impl IntoIterator<Item = u64>) {
        if let Some(q) = self.queues.get_mut(&id) {
            if q.notes.is_empty() {
                return;
            }
            for off in offsets {
                if q.notes.remove(&off).is_some() {
                    self.noted.remove(&(id, off));
                }
            }
        }
    }

    /// Keeps only the notes for which `live(disk id, offset)` holds (after recovery).
    pub fn retain_notes(&mut self, mut live: impl FnMut(u32, u64) -> bool) {
        for (&id, q) in &mut self.queues {
            q.notes.retain(|&off, _| live(id, off));
        }
    }

    /// What is noted about the message at `offset`.
    pub fn note_of(&self, id: u32, offset: u64) -> MessageNote {
        self.queues
            .get(&id)
            .and_then(|q| q.notes.get(&offset).copied())
            .unwrap_or_default()
    }

    /// Writes pending delivered marks and return counts (not synced).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.marks.is_empty() && self.noted.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(self.marks.len() * 21 + self.noted.len() * 25);
        for (&id, &off) in &self.marks {
            encode_delivered(&mut buf, id, off);
        }
        for &(id, off) in &self.noted {
            if let Some(note) = self.queues.get(&id).and_then(|q| q.notes.get(&off)) {
                encode_note(&mut buf, id, off, note);
            }
        }
        self.write_now(&buf)?;
        self.marks.clear();
        self.noted.clear();
        // Requeue loops write return counts without adding or removing queues.
        self.maybe_compact();
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        if self.unsynced {
            files::datasync(&self.file, &self.path)?;
            self.unsynced = false;
        }
        Ok(())
    }

    pub fn has_unsynced(&self) -> bool {
        self.unsynced || !self.marks.is_empty() || !self.noted.is_empty()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.len
    }

    /// Rewrites the file from the live state when it is mostly history. Failure is harmless
    /// (the old file is intact): it is logged and retried on a later change.
    fn maybe_compact(&mut self) {
        let live: u64 = self
            .queues
            .values()
            .map(|q| 40 + q.name.len() as u64 + 50 * q.notes.len() as u64)
            .sum();
        if self.len < COMPACT_MIN_BYTES || self.len < live * 4 {
            return;
        }
        let result = write_fresh(&self.dir, &self.path, &self.queues, self.next_id)
            .and_then(|len| Ok((files::open_rw(&self.path)?, len)));
        match result {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                self.marks.clear();
                self.noted.clear();
                self.unsynced = false;
            }
            Err(e) => warn!(error = %e, "queue registry compaction failed; keeping the old file"),
        }
    }
}

/// Writes a complete registry to a temp file, syncs it and renames it into place.
fn write_fresh(
    dir: &Path,
    path: &Path,
    queues: &BTreeMap<u32, RegQueue>,
    next_id: u32,
) -> Result<u64, StoreError> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut buf = files::header(REGISTRY_MAGIC, 0).to_vec();
    encode_u32(&mut buf, kind::NEXT_ID, next_id);
    for (&id, q) in queues {
        encode_added(&mut buf, id, &q.name);
        if let Some(d) = q.delivered {
            encode_delivered(&mut buf, id, d);
        }
        for (&off, note) in &q.notes {
            encode_note(&mut buf, id, off, note);
        }
    }
    std::fs::write(&tmp, &buf).map_err(|e| StoreError::io("write", &tmp, e))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io("rename", path, e))?;
    files::sync_dir(dir)?;
    Ok(buf.len() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn returned(count: u32, failed: u32) -> Returns {
        Returns { count, failed }
    }

    #[test]
    fn ids_marks_and_removal_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let a = r.add("a").unwrap();
        let b = r.add("b").unwrap();
        r.mark_delivered(a, 10);
        r.mark_delivered(a, 5); // lower marks never go back
        let b2 = r.remove(b, Some("b")).unwrap().unwrap();
        assert!(b2 > b);
        r.sync().unwrap();
        drop(r);
        let r = Registry::open(dir.path()).unwrap();
        assert_eq!(r.queues.len(), 2);
        assert_eq!(r.queues[&a].delivered, Some(10));
        assert_eq!(r.queues[&b2].name, "b");
        assert!(!r.queues.contains_key(&b));
        assert!(r.next_id > b2);
    }

    #[test]
    fn compaction_keeps_state_and_never_reuses_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let keep = r.add("keep").unwrap();
        let long = "x".repeat(2000);
        let mut last = 0;
        for _ in 0..600 {
            let id = r.add(&long).unwrap();
            r.remove(id, None).unwrap();
            last = id;
        }
        assert!(r.len < COMPACT_MIN_BYTES * 2, "compaction ran");
        drop(r);
        let mut r = Registry::open(dir.path()).unwrap();
        assert_eq!(r.queues.len(), 1);
        assert_eq!(r.queues[&keep].name, "keep");
        assert!(r.add("new").unwrap() > last);
    }

    /// Notes written over and over (a requeue loop) compact down to the latest ones.
    #[test]
    fn notes_survive_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let q = r.add("q").unwrap();
        for n in 1..=50_000u32 {
            r.mark_returned(q, 7, returned(n, n / 2));
            r.mark_returned(q, 8, returned(n, 0));
            r.flush().unwrap();
        }
        r.mark_dead_letter(q, 9, 4);
        r.forget_notes(q, [8]);
        r.flush().unwrap();
        assert!(
            r.len < COMPACT_MIN_BYTES * 2,
            "compaction ran: {} bytes",
            r.len
        );
        r.sync().unwrap();
        drop(r);
        let r = Registry::open(dir.path()).unwrap();
        assert_eq!(r.note_of(q, 7).returns, returned(50_000, 25_000));
        assert_eq!(r.note_of(q, 9).dead_letter, Some(4));
    }

    /// A RETURNED record from before failed deliveries were counted (no `failed` field)
    /// still reads: its failed count is 0.
    #[test]
    fn a_returned_record_without_failed_count_reads_as_none_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let q = r.add("q").unwrap();
        r.mark_returned(q, 3, returned(2, 1));
        r.flush().unwrap();
        let mut old = Vec::new();
        record::encode(&mut old, kind::RETURNED, |o| {
            o.extend_from_slice(&q.to_le_bytes());
            o.extend_from_slice(&5u64.to_le_bytes());
            o.extend_from_slice(&4u32.to_le_bytes());
        });
        r.write_now(&old).unwrap();
        r.sync().unwrap();
        drop(r);
        let r = Registry::open(dir.path()).unwrap();
        assert_eq!(r.note_of(q, 3).returns, returned(2, 1));
        assert_eq!(r.note_of(q, 5).returns, returned(4, 0));
    }

    #[test]
    fn torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        r.add("a").unwrap();
        drop(r);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &bytes).unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, good);
        assert_eq!(r.queues.len(), 1);
        r.add("b").unwrap();
        drop(r);
        assert_eq!(Registry::open(dir.path()).unwrap().queues.len(), 2);
    }
}
