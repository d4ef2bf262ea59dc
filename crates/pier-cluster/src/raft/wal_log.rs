//! [`WalLogStore`]: a Raft group's [`LogStore`] on the node's shared write-ahead log
//! (`pier_store::wal`), where every replicated group of the node — one per quorum queue —
//! keeps its log, so their appends share one group commit (one fsync per batch for all).
//! The metadata group keeps its own [`FileLogStore`](super::file_log::FileLogStore).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pier_store::wal::GroupLog;

use super::log_store::{Durable, LogStore, LogStoreError, MetaKey, Record};

/// One group's log store on the shared log.
#[derive(Debug, Clone)]
pub struct WalLogStore {
    group: GroupLog,
    /// With retention, what Raft purges behind a snapshot stays on disk while the queue
    /// still reads bodies from it (see [`WalLogStore::retaining`]).
    retention: Option<Arc<Mutex<Retention>>>,
}

#[derive(Debug, Default)]
struct Retention {
    /// The queue needs entries from this index on (0: all of them, until it says).
    keep_from: u64,
    /// What Raft asked to purge (everything up to it, inclusive).
    asked: Option<u64>,
    /// What was purged on disk.
    purged: Option<u64>,
}

impl WalLogStore {
    pub fn new(group: GroupLog) -> Self {
        WalLogStore {
            group,
            retention: None,
        }
    }

    /// A store whose purges wait for the queue: a quorum queue's member keeps the bodies of
    /// a deep backlog only in its log, so entries behind a snapshot are dropped on disk only
    /// once [`WalLogStore::retain_from`] says no message needs them (Ra's release cursor).
    /// Raft sees the purge at once; only reads by the queue reach below it.
    pub fn retaining(group: GroupLog) -> Self {
        WalLogStore {
            group,
            retention: Some(Arc::default()),
        }
    }

    /// The queue needs entries from `index` on: what Raft purged below it goes.
    pub fn retain_from(&self, index: u64) -> Result<(), LogStoreError> {
        let Some(r) = &self.retention else {
            return Ok(());
        };
        let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
        r.keep_from = index;
        self.purge_retained(&mut r)
    }

    fn purge_retained(&self, r: &mut Retention) -> Result<(), LogStoreError> {
        let (Some(asked), Some(below)) = (r.asked, r.keep_from.checked_sub(1)) else {
            return Ok(());
        };
        let to = asked.min(below);
        if r.purged.is_some_and(|p| p >= to) {
            return Ok(());
        }
        self.group.purge(to).map_err(LogStoreError::from)?;
        r.purged = Some(to);
        Ok(())
    }
}

fn key(k: MetaKey) -> u8 {
    match k {
        MetaKey::Vote => 0,
        MetaKey::Purged => 1,
        MetaKey::Committed => 2,
    }
}

fn durable(d: Durable) -> pier_store::wal::WalDurable {
    Box::new(move |r| d(r.map_err(LogStoreError::from)))
}

impl LogStore for WalLogStore {
    fn bounds(&self) -> Option<(u64, u64)> {
        self.group.bounds()
    }

    fn read(&self, range: Range<u64>) -> Result<Vec<Record>, LogStoreError> {
        self.group.read(range).map_err(LogStoreError::from)
    }

    fn append(&self, entries: Vec<Record>, d: Durable) -> Result<(), LogStoreError> {
        self.group
            .append(entries, durable(d))
            .map_err(LogStoreError::from)
    }

    fn truncate(&self, from: u64) -> Result<(), LogStoreError> {
        self.group.truncate(from).map_err(LogStoreError::from)
    }

    fn purge(&self, upto: u64) -> Result<(), LogStoreError> {
        match &self.retention {
            None => self.group.purge(upto).map_err(LogStoreError::from),
            Some(r) => {
                let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
                r.asked = Some(r.asked.map_or(upto, |a| a.max(upto)));
                if self.group.bounds().is_some_and(|(_, last)| upto >= last) {
                    // The whole log goes: a snapshot was installed over it (this member
                    // was behind). The queue restarts from that snapshot with every body
                    // in memory, and the next append continues after `upto`, which a
                    // retained tail below it would not let it do.
                    self.group.purge(upto).map_err(LogStoreError::from)?;
                    r.purged = Some(upto);
                    return Ok(());
                }
                self.purge_retained(&mut r)
            }
        }
    }

    fn save(&self, k: MetaKey, value: Bytes, d: Durable) -> Result<(), LogStoreError> {
        self.group
            .save(key(k), value, durable(d))
            .map_err(LogStoreError::from)
    }

    fn load(&self, k: MetaKey) -> Option<Bytes> {
        self.group.load(key(k))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::log_store::conformance;
    use super::*;
    use pier_store::wal::{SharedLog, WalConfig};

    #[test]
    fn shared_log_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        conformance::run(
            || WalLogStore::new(SharedLog::open(WalConfig::new(&path)).unwrap().group(7)),
            true,
        );
    }

    /// Two groups on one shared log each see only their own log.
    #[test]
    fn groups_on_one_shared_log_conform_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let log = SharedLog::open(WalConfig::new(&path)).unwrap();
        let other = WalLogStore::new(log.group(1));
        let (tx, rx) = std::sync::mpsc::channel();
        other
            .append(
                (1..=3).map(|i| (i, Bytes::from_static(b"x"))).collect(),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .unwrap();
        rx.recv().unwrap().unwrap();
        conformance::run(|| WalLogStore::new(log.group(2)), false);
        assert_eq!(other.bounds(), Some((1, 3)));
    }

    /// Appends entries `from..=to` and waits until they are durable.
    fn append_sync(s: &WalLogStore, from: u64, to: u64) {
        let (tx, rx) = std::sync::mpsc::channel();
        s.append(
            (from..=to).map(|i| (i, Bytes::from_static(b"x"))).collect(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .unwrap();
        rx.recv().unwrap().unwrap();
    }

    /// A retaining store drops purged entries on disk only below what the queue needs.
    #[test]
    fn a_retaining_store_keeps_what_the_queue_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let log = SharedLog::open(WalConfig::new(dir.path().join("wal"))).unwrap();
        let s = WalLogStore::retaining(log.group(3));
        append_sync(&s, 1, 10);
        s.purge(8).unwrap();
        assert_eq!(
            s.bounds(),
            Some((1, 10)),
            "nothing dropped until the queue says"
        );
        s.retain_from(4).unwrap();
        assert_eq!(s.bounds(), Some((4, 10)));
        assert_eq!(s.read(4..5).unwrap().len(), 1);
        s.retain_from(20).unwrap();
        assert_eq!(s.bounds(), Some((9, 10)), "never past what Raft purged");
        s.purge(9).unwrap();
        assert_eq!(s.bounds(), Some((10, 10)));
    }

    /// A snapshot installed over a retaining store's whole log (the member was behind)
    /// drops the retained entries too: the log continues after the snapshot.
    #[test]
    fn a_snapshot_installed_over_the_whole_log_lets_it_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = SharedLog::open(WalConfig::new(dir.path().join("wal"))).unwrap();
        let s = WalLogStore::retaining(log.group(4));
        append_sync(&s, 1, 10);
        s.retain_from(3).unwrap();
        s.purge(20).unwrap();
        assert_eq!(s.bounds(), None);
        append_sync(&s, 21, 22);
        assert_eq!(s.bounds(), Some((21, 22)));
    }
}
