//! openraft's `RaftLogStorage` over any [`LogStore`]: entries and the vote are encoded with
//! MessagePack (the same encoding the peer transport uses), and the purge point is saved
//! before entries are dropped, so a restart never sees a log that starts later than it says.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, LogState, OptionalSend, RaftLogReader, RaftTypeConfig, StorageIOError, Vote,
};

use super::log_store::{LogStore, LogStoreError, MetaKey};
use super::{LogId, StorageError, TypeConfig};

/// The group types a [`RaftLog`] can hold: any of Pier's (the metadata group's
/// [`TypeConfig`], a quorum queue's `QueueTypeConfig`), which share node ids and entries.
pub trait GroupTypes:
    RaftTypeConfig<NodeId = u64, Entry = openraft::Entry<Self>, Node = super::PeerNode>
{
}

impl<C> GroupTypes for C where
    C: RaftTypeConfig<NodeId = u64, Entry = openraft::Entry<C>, Node = super::PeerNode>
{
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Bytes, rmp_serde::encode::Error> {
    // Sized first (an entry keeps its encoding: measuring copies nothing), so a batch of
    // bodies is copied once, not regrown.
    let mut out = Vec::with_capacity(crate::transport::frame::encoded_len(v)?);
    rmp_serde::encode::write_named(&mut out, v)?;
    Ok(Bytes::from(out))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    b: &[u8],
) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(b)
}

thread_local! {
    /// The record being decoded by [`decode_shared`], for [`shared_bytes`].
    static SOURCE: std::cell::RefCell<Option<Bytes>> = const { std::cell::RefCell::new(None) };
}

/// Decodes a record the store handed out as `Bytes`: byte strings in it (a quorum queue's
/// entry, with the message bodies it carries) come out as slices of the record instead of
/// copies (see [`shared_bytes`]). Each read of a log entry — replication to every follower,
/// applying it — copied a batch of bodies before.
pub(crate) fn decode_shared<T: serde::de::DeserializeOwned>(
    b: &Bytes,
) -> Result<T, rmp_serde::decode::Error> {
    let previous = SOURCE.with(|s| s.replace(Some(b.clone())));
    let r = rmp_serde::from_slice(b);
    SOURCE.with(|s| *s.borrow_mut() = previous);
    r
}

/// `v`, a byte string borrowed from the input being deserialized: a slice of the record
/// when [`decode_shared`] decodes one that holds it, else a copy.
pub(crate) fn shared_bytes(v: &[u8]) -> Bytes {
    SOURCE.with(|s| {
        let s = s.borrow();
        match s.as_ref() {
            Some(src) => {
                let (start, end) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
                let at = v.as_ptr() as usize;
                if at >= start && at + v.len() <= end {
                    src.slice_ref(v)
                } else {
                    Bytes::copy_from_slice(v)
                }
            }
            None => Bytes::copy_from_slice(v),
        }
    })
}

/// A group's log: a [`LogStore`] seen through openraft's storage traits.
pub struct RaftLog<S: LogStore, C = TypeConfig> {
    store: Arc<S>,
    types: PhantomData<fn() -> C>,
}

impl<S: LogStore, C> Clone for RaftLog<S, C> {
    fn clone(&self) -> Self {
        RaftLog {
            store: Arc::clone(&self.store),
            types: PhantomData,
        }
    }
}

impl<S: LogStore, C> RaftLog<S, C> {
    /// Wraps `store`, dropping entries a saved purge point says are gone (a store may keep
    /// them on disk a little past the purge).
    pub fn new(store: Arc<S>) -> Result<Self, StorageError> {
        let log = RaftLog {
            store,
            types: PhantomData,
        };
        if let Some(purged) = log.purged()? {
            log.store.purge(purged.index).map_err(write_err)?;
        }
        Ok(log)
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    fn purged(&self) -> Result<Option<LogId>, StorageError> {
        match self.store.load(MetaKey::Purged) {
            None => Ok(None),
            Some(b) => decode(&b).map(Some).map_err(read_err),
        }
    }

    /// Saves a meta value and waits until it is durable.
    async fn save(&self, key: MetaKey, value: Bytes) -> Result<(), LogStoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.save(
            key,
            value,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.await.map_err(|_| LogStoreError::Stopped)?
    }
}

fn range_of(range: &impl RangeBounds<u64>) -> std::ops::Range<u64> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    start..end
}

impl<S: LogStore, C: GroupTypes> RaftLogReader<C> for RaftLog<S, C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<openraft::Entry<C>>, StorageError> {
        let records = self.store.read(range_of(&range)).map_err(read_err)?;
        records
            .iter()
            .map(|(_, b)| decode_shared::<openraft::Entry<C>>(b).map_err(read_err))
            .collect()
    }
}

impl<S: LogStore, C: GroupTypes> RaftLogStorage<C> for RaftLog<S, C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError> {
        let last_purged_log_id = self.purged()?;
        let last = match self.store.bounds() {
            None => None,
            Some((_, last)) => {
                let r = self.store.read(last..last + 1).map_err(read_err)?;
                match r.first() {
                    Some((_, b)) => Some(decode::<openraft::Entry<C>>(b).map_err(read_err)?.log_id),
                    None => None,
                }
            }
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let b = encode(vote).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.save(MetaKey::Vote, b)
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        match self.store.load(MetaKey::Vote) {
            None => Ok(None),
            Some(b) => decode(&b)
                .map(Some)
                .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into()),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        for e in entries {
            records.push((e.log_id.index, encode(&e).map_err(write_err)?));
        }
        self.store
            .append(
                records,
                Box::new(move |r| {
                    callback.log_io_completed(r.map_err(std::io::Error::other));
                }),
            )
            .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.store.truncate(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point is durable before any entry is dropped.
        let b = encode(&log_id).map_err(write_err)?;
        self.save(MetaKey::Purged, b).await.map_err(write_err)?;
        self.store.purge(log_id.index).map_err(write_err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::raft::log_store::MemLogStore;
    use crate::raft::{Entry, Proposal, TypeConfig};
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, 1, index),
            payload: EntryPayload::Normal(Proposal {
                origin: 1,
                request: index,
                command: crate::metadata::MetadataCommand::SetClusterName {
                    name: format!("n{index}"),
                },
            }),
        }
    }

    #[tokio::test]
    async fn entries_round_trip_and_the_purge_point_survives() {
        let store = Arc::new(MemLogStore::default());
        let mut log = RaftLog::new(Arc::clone(&store)).unwrap();
        for i in 1..=5 {
            let e = entry(1, i);
            store
                .append(vec![(i, encode(&e).unwrap())], Box::new(|_| {}))
                .unwrap();
        }
        let got = log.try_get_log_entries(2..4).await.unwrap();
        assert_eq!(got, vec![entry(1, 2), entry(1, 3)]);
        log.purge(log_id(1, 1, 3)).await.unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 5)));
        log.save_vote(&Vote::new(2, 7)).await.unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 7)));
        // Everything purged: the last log id is the purge point.
        log.purge(log_id(1, 1, 5)).await.unwrap();
        let st = RaftLog::<MemLogStore>::new(store)
            .unwrap()
            .get_log_state()
            .await
            .unwrap();
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 5)));
        let _: Option<TypeConfig> = None;
    }
}
