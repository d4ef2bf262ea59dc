//! The log storage seam: what a Raft group needs from a log engine, in bytes.
//!
//! openraft's `RaftLogStorage` is implemented once, over this trait (`log_adapter.rs`), so a
//! different engine can take the place of [`FileLogStore`](super::file_log::FileLogStore)
//! without touching openraft code. The intended replacement is the shared, group-committed
//! log that issue 12 builds in `pier-store` (one write-ahead log per node under every
//! replicated queue, as RabbitMQ's Ra WAL): it would hand each Raft group a handle that
//! implements `LogStore`, keyed by the group.
//!
//! The contract, which [`conformance`] checks for every implementation:
//!
//! * Entries are opaque bytes at consecutive indexes. `append` continues the log (its first
//!   index is one past the last present, or anything on an empty log); what it appends is
//!   readable as soon as it returns, and its `durable` callback runs once it is on disk.
//! * Writes are ordered: an append, truncate, purge or save reaches the disk after every
//!   write issued before it, and a `durable` callback means everything issued before it is
//!   durable too (openraft requires vote and log writes to be serialised).
//! * `truncate(i)` drops entries `i..`; `purge(i)` drops `..=i` (they are in a snapshot).
//! * `save` keeps a small value (the vote, the purge point) and calls back once it is
//!   durable; `load` reads it back, also after a restart.
//!
//! Nothing here is async: an implementation hands work to its own I/O thread and calls back.
//! The callbacks run on that thread and must not block.

use std::ops::Range;

use bytes::Bytes;

/// One entry: its index and its bytes.
pub type Record = (u64, Bytes);

/// Called once a write is durable (or failed).
pub type Durable = Box<dyn FnOnce(Result<(), LogStoreError>) + Send>;

/// The small values a Raft group keeps beside its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetaKey {
    /// The current vote (term, voted-for), in openraft's serialised form.
    Vote,
    /// The last purged log id.
    Purged,
    /// The last committed log id (optional in openraft: lets a restarted node re-apply its
    /// own committed entries before it hears from a leader).
    Committed,
}

impl MetaKey {
    pub fn name(self) -> &'static str {
        match self {
            MetaKey::Vote => "vote",
            MetaKey::Purged => "purged",
            MetaKey::Committed => "committed",
        }
    }

    pub fn parse(s: &str) -> Option<MetaKey> {
        Some(match s {
            "vote" => MetaKey::Vote,
            "purged" => MetaKey::Purged,
            "committed" => MetaKey::Committed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogStoreError {
    #[error("log store I/O failed ({op}) on {path}: {reason}")]
    Io {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("log append at index {got} does not continue the log (next index {expected})")]
    Gap { expected: u64, got: u64 },
    /// The store stopped (shut down, or an earlier write failed: after a failed fsync
    /// nothing written since can be trusted, so the store refuses everything).
    #[error("the log store is stopped")]
    Stopped,
}

impl LogStoreError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, e: &std::io::Error) -> Self {
        LogStoreError::Io {
            op,
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

impl From<pier_store::wal::WalError> for LogStoreError {
    fn from(e: pier_store::wal::WalError) -> Self {
        use pier_store::wal::WalError;
        match e {
            WalError::Io { op, path, reason } => LogStoreError::Io { op, path, reason },
            WalError::Gap { expected, got } => LogStoreError::Gap { expected, got },
            WalError::Stopped => LogStoreError::Stopped,
        }
    }
}

/// A Raft group's log storage (see the module docs for the contract).
pub trait LogStore: Send + Sync + 'static {
    /// First and last index present; `None` when the log is empty.
    fn bounds(&self) -> Option<(u64, u64)>;
    /// The entries present in `range`, in order.
    fn read(&self, range: Range<u64>) -> Result<Vec<Record>, LogStoreError>;
    fn append(&self, entries: Vec<Record>, durable: Durable) -> Result<(), LogStoreError>;
    fn truncate(&self, from: u64) -> Result<(), LogStoreError>;
    fn purge(&self, upto: u64) -> Result<(), LogStoreError>;
    fn save(&self, key: MetaKey, value: Bytes, durable: Durable) -> Result<(), LogStoreError>;
    fn load(&self, key: MetaKey) -> Option<Bytes>;
}

/// An in-memory [`LogStore`] (tests): every write is durable at once.
#[derive(Debug, Default)]
pub struct MemLogStore {
    inner: std::sync::Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    entries: std::collections::BTreeMap<u64, Bytes>,
    meta: std::collections::BTreeMap<MetaKey, Bytes>,
}

impl MemLogStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Checks that `entries` continue a log whose last index is `last` (the shared WAL's rule).
pub(crate) fn check_continues(last: Option<u64>, entries: &[Record]) -> Result<(), LogStoreError> {
    Ok(pier_store::wal::check_continues(last, entries)?)
}

impl LogStore for MemLogStore {
    fn bounds(&self) -> Option<(u64, u64)> {
        let g = self.lock();
        Some((*g.entries.keys().next()?, *g.entries.keys().next_back()?))
    }

    fn read(&self, range: Range<u64>) -> Result<Vec<Record>, LogStoreError> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(i, b)| (*i, b.clone()))
            .collect())
    }

    fn append(&self, entries: Vec<Record>, durable: Durable) -> Result<(), LogStoreError> {
        {
            let mut g = self.lock();
            check_continues(g.entries.keys().next_back().copied(), &entries)?;
            g.entries.extend(entries);
        }
        durable(Ok(()));
        Ok(())
    }

    fn truncate(&self, from: u64) -> Result<(), LogStoreError> {
        self.lock().entries.split_off(&from);
        Ok(())
    }

    fn purge(&self, upto: u64) -> Result<(), LogStoreError> {
        let mut g = self.lock();
        let keep = g.entries.split_off(&upto.saturating_add(1));
        g.entries = keep;
        Ok(())
    }

    fn save(&self, key: MetaKey, value: Bytes, durable: Durable) -> Result<(), LogStoreError> {
        self.lock().meta.insert(key, value);
        durable(Ok(()));
        Ok(())
    }

    fn load(&self, key: MetaKey) -> Option<Bytes> {
        self.lock().meta.get(&key).cloned()
    }
}

/// The conformance suite every [`LogStore`] runs. `open` opens the store at the same place
/// each time it is called (a persistent store sees what the previous one wrote; pass
/// `persistent = false` for one that forgets).
#[cfg(test)]
pub(crate) mod conformance {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn rec(i: u64) -> Record {
        (i, Bytes::from(format!("entry-{i}")))
    }

    fn append_sync<S: LogStore>(s: &S, entries: Vec<Record>) {
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

    fn save_sync<S: LogStore>(s: &S, key: MetaKey, v: &'static [u8]) {
        let (tx, rx) = std::sync::mpsc::channel();
        s.save(
            key,
            Bytes::from_static(v),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .unwrap();
        rx.recv().unwrap().unwrap();
    }

    pub(crate) fn run<S: LogStore>(open: impl Fn() -> S, persistent: bool) {
        {
            let s = open();
            assert_eq!(s.bounds(), None);
            assert!(s.load(MetaKey::Vote).is_none());
            // An empty log may start anywhere (after a snapshot install).
            append_sync(&s, (5..10).map(rec).collect());
            assert_eq!(s.bounds(), Some((5, 9)));
            // Appends must continue the log.
            let gap = s.append(vec![rec(11)], Box::new(|_| {}));
            assert!(matches!(
                gap,
                Err(LogStoreError::Gap {
                    expected: 10,
                    got: 11
                })
            ));
            // Readable at once, even before the durable callback has run.
            let (tx, rx) = std::sync::mpsc::channel();
            s.append(
                (10..20).map(rec).collect(),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .unwrap();
            assert_eq!(s.read(10..12).unwrap(), vec![rec(10), rec(11)]);
            rx.recv().unwrap().unwrap();
            assert_eq!(s.read(0..100).unwrap().len(), 15);
            assert_eq!(s.read(18..100).unwrap(), vec![rec(18), rec(19)]);
            // A conflicting suffix is replaced.
            s.truncate(15).unwrap();
            assert_eq!(s.bounds(), Some((5, 14)));
            append_sync(&s, vec![(15, Bytes::from_static(b"other"))]);
            assert_eq!(
                s.read(15..16).unwrap(),
                vec![(15, Bytes::from_static(b"other"))]
            );
            // A snapshot covers ..=8.
            s.purge(8).unwrap();
            assert_eq!(s.bounds(), Some((9, 15)));
            assert_eq!(s.read(0..10).unwrap(), vec![rec(9)]);
            save_sync(&s, MetaKey::Vote, b"vote-1");
            save_sync(&s, MetaKey::Vote, b"vote-2");
            save_sync(&s, MetaKey::Purged, b"8");
            assert_eq!(s.load(MetaKey::Vote).as_deref(), Some(&b"vote-2"[..]));
        }
        if !persistent {
            return;
        }
        {
            let s = open();
            // After a restart: what was durable is back (the store may keep purged entries
            // on disk a little longer: the adapter drops them by the saved purge point).
            let (first, last) = s.bounds().unwrap();
            assert!(first <= 9 && last == 15, "bounds {first}..={last}");
            assert_eq!(s.read(9..16).unwrap().len(), 7);
            assert_eq!(
                s.read(15..16).unwrap(),
                vec![(15, Bytes::from_static(b"other"))]
            );
            assert_eq!(s.load(MetaKey::Vote).as_deref(), Some(&b"vote-2"[..]));
            assert_eq!(s.load(MetaKey::Purged).as_deref(), Some(&b"8"[..]));
            // Purging everything, then starting again past the end (snapshot install).
            s.purge(15).unwrap();
            assert_eq!(s.bounds(), None);
            append_sync(&s, vec![rec(40), rec(41)]);
        }
        let s = open();
        assert_eq!(s.read(0..100).unwrap(), vec![rec(40), rec(41)]);
    }

    #[test]
    fn memory_store_conforms() {
        run(MemLogStore::default, false);
    }
}
