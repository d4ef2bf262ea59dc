//! [`WalLogStore`]: a Raft group's [`LogStore`] on the node's shared write-ahead log
//! (`pier_store::wal`), where every replicated group of the node — one per quorum queue —
//! keeps its log, so their appends share one group commit (one fsync per batch for all).
//! The metadata group keeps its own [`FileLogStore`](super::file_log::FileLogStore).

use std::ops::Range;

use bytes::Bytes;
use pier_store::wal::GroupLog;

use super::log_store::{Durable, LogStore, LogStoreError, MetaKey, Record};

/// One group's log store on the shared log.
#[derive(Debug, Clone)]
pub struct WalLogStore {
    group: GroupLog,
}

impl WalLogStore {
    pub fn new(group: GroupLog) -> Self {
        WalLogStore { group }
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
        self.group.purge(upto).map_err(LogStoreError::from)
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
}
