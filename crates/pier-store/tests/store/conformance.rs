use pier_store::conformance::{run_suite, Backend};
use pier_store::{
    LiveMessage, MemoryDisk, MemoryStore, MessageStore, QueueId, QueueInfo, QueueRef, Returns,
    SegmentStore, Seq, ShardConfig, ShardedStore, Shards, StoreError, StoreHandle, StoreStats,
    StoredMessage,
};

use super::common::small_config;

struct Segments {
    dir: Option<tempfile::TempDir>,
}

impl Backend for Segments {
    fn fresh(&mut self) {
        self.dir = Some(tempfile::tempdir().unwrap());
    }
    fn open(&mut self) -> Box<dyn MessageStore> {
        let dir = self.dir.as_ref().unwrap().path();
        Box::new(SegmentStore::open(dir, small_config()).unwrap())
    }
}

struct Memory {
    disk: MemoryDisk,
}

impl Backend for Memory {
    fn fresh(&mut self) {
        self.disk = MemoryDisk::new();
    }
    fn open(&mut self) -> Box<dyn MessageStore> {
        Box::new(MemoryStore::open(self.disk.clone()))
    }
}

#[test]
fn segment_store_conforms() {
    run_suite(&mut Segments { dir: None });
}

#[test]
fn memory_store_conforms() {
    run_suite(&mut Memory {
        disk: MemoryDisk::new(),
    });
}

/// The engine the broker runs: a [`ShardedStore`] (three shards here, each a segment store on
/// its own pipelined store thread), driven through its command channels as the broker drives
/// it. Queues are spread over the shards; an append whose references span shards becomes one
/// append per shard, as the broker's fan-out does.
struct Sharded {
    dir: Option<tempfile::TempDir>,
}

impl Backend for Sharded {
    fn fresh(&mut self) {
        self.dir = Some(tempfile::tempdir().unwrap());
    }
    fn open(&mut self) -> Box<dyn MessageStore> {
        let dir = self.dir.as_ref().unwrap().path();
        let store = ShardedStore::open(
            dir,
            ShardConfig {
                shards: 3,
                store: small_config(),
                ..ShardConfig::default()
            },
        )
        .unwrap();
        Box::new(ShardedAdapter {
            shards: store.shards(),
            _store: store,
            ids: std::sync::Mutex::new(Vec::new()),
            seq: 0,
            durable: 0,
        })
    }
}

#[test]
fn sharded_threaded_store_conforms() {
    run_suite(&mut Sharded { dir: None });
}

/// [`MessageStore`] over a sharded store: global queue ids map to (shard, local id); seqs are
/// the adapter's own (one per append call), durable once every shard confirmed a barrier.
struct ShardedAdapter {
    _store: ShardedStore,
    shards: Shards,
    ids: std::sync::Mutex<Vec<(usize, QueueId, String)>>,
    seq: u64,
    durable: u64,
}

impl ShardedAdapter {
    fn global(&self, handle: &StoreHandle, local: QueueId, name: &str) -> QueueId {
        let shard = self
            .shards
            .handles()
            .iter()
            .position(|h| h.same_store(handle))
            .unwrap();
        let mut ids = self.ids.lock().unwrap();
        if let Some(i) = ids.iter().position(|(s, l, _)| (*s, *l) == (shard, local)) {
            return QueueId(i as u32);
        }
        ids.push((shard, local, name.to_owned()));
        QueueId(ids.len() as u32 - 1)
    }

    fn local(&self, q: QueueId) -> Result<(StoreHandle, QueueId, String), StoreError> {
        let ids = self.ids.lock().unwrap();
        let (shard, local, name) = ids.get(q.0 as usize).ok_or(StoreError::UnknownQueue(q))?;
        Ok((self.shards.handles()[*shard].clone(), *local, name.clone()))
    }

    fn barrier(&mut self) -> Result<Seq, StoreError> {
        self.shards.wait_durable()?;
        self.durable = self.seq;
        Ok(Seq(self.durable))
    }
}

impl MessageStore for ShardedAdapter {
    fn open_queue(&mut self, name: &str) -> Result<QueueId, StoreError> {
        let (handle, local) = self.shards.open_queue(name)?;
        Ok(self.global(&handle, local, name))
    }

    fn queues(&self) -> Vec<QueueInfo> {
        let listed = self.shards.queues().unwrap();
        listed
            .into_iter()
            .map(|(h, info)| QueueInfo {
                id: self.global(&h, info.id, &info.name),
                ..info
            })
            .collect()
    }

    fn live_messages(&self, queue: QueueId) -> Result<Vec<LiveMessage>, StoreError> {
        let (h, local, _) = self.local(queue)?;
        h.call(move |s| s.live_messages(local))?
    }

    fn append(&mut self, refs: &[QueueRef], message: &StoredMessage) -> Result<Seq, StoreError> {
        if refs.is_empty() {
            return Err(StoreError::BadReferences);
        }
        let mut groups: Vec<(StoreHandle, Vec<QueueRef>)> = Vec::new();
        for r in refs {
            let (h, local, _) = self.local(r.queue)?;
            let r = QueueRef {
                queue: local,
                offset: r.offset,
            };
            match groups.iter_mut().find(|(g, _)| g.same_store(&h)) {
                Some((_, v)) => v.push(r),
                None => groups.push((h, vec![r])),
            }
        }
        for (h, refs) in groups {
            let (tx, rx) = std::sync::mpsc::channel();
            h.append(refs, message.clone(), move |r| {
                let _ = tx.send(r);
            })?;
            // Commands run in order: once this round trip is back, a refused append has
            // been answered (an accepted one is answered when durable).
            h.call(|_| ())?;
            if let Ok(Err(e)) = rx.try_recv() {
                return Err(e);
            }
        }
        self.seq += 1;
        Ok(Seq(self.seq))
    }

    fn read(&mut self, queue: QueueId, offset: u64) -> Result<StoredMessage, StoreError> {
        let (h, local, _) = self.local(queue)?;
        let (tx, rx) = std::sync::mpsc::channel();
        h.read(local, offset, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| StoreError::Stopped)?
    }

    fn ack(&mut self, queue: QueueId, offsets: &[u64]) -> Result<usize, StoreError> {
        let (h, local, _) = self.local(queue)?;
        let offsets = offsets.to_vec();
        h.call(move |s| s.ack(local, &offsets))?
    }

    fn mark_delivered(&mut self, queue: QueueId, offset: u64) -> Result<(), StoreError> {
        let (h, local, _) = self.local(queue)?;
        h.mark_delivered(local, offset)
    }

    fn mark_returned(
        &mut self,
        queue: QueueId,
        offset: u64,
        returns: Returns,
    ) -> Result<(), StoreError> {
        let (h, local, _) = self.local(queue)?;
        h.mark_returned(local, offset, returns)
    }

    fn mark_dead_letter(
        &mut self,
        queue: QueueId,
        offset: u64,
        reason: u8,
    ) -> Result<(), StoreError> {
        let (h, local, _) = self.local(queue)?;
        h.mark_dead_letter(local, offset, reason)
    }

    fn purge_queue(&mut self, queue: QueueId) -> Result<u64, StoreError> {
        let (h, local, _) = self.local(queue)?;
        h.call(move |s| s.purge_queue(local))?
    }

    fn delete_queue(&mut self, queue: QueueId) -> Result<u64, StoreError> {
        let (h, local, name) = self.local(queue)?;
        let n = h.call(move |s| s.live_messages(local).map(|l| l.len() as u64))??;
        self.shards.delete_queue(&h, local, &name)?;
        h.wait_durable()?;
        Ok(n)
    }

    fn flush(&mut self) -> Result<Seq, StoreError> {
        self.barrier()
    }

    fn sync(&mut self) -> Result<Seq, StoreError> {
        self.barrier()
    }

    fn commit(&mut self) -> Result<Seq, StoreError> {
        self.barrier()
    }

    fn next_deadline(&self) -> Option<std::time::Instant> {
        None
    }

    fn last_seq(&self) -> Seq {
        Seq(self.seq)
    }

    fn flushed_seq(&self) -> Seq {
        Seq(self.durable)
    }

    fn durable_seq(&self) -> Seq {
        Seq(self.durable)
    }

    fn stats(&self) -> StoreStats {
        let mut st = StoreStats::default();
        for h in self.shards.handles() {
            let s = h.call(|s| s.stats()).unwrap();
            st.queues += s.queues;
            st.live_messages += s.live_messages;
            st.segments += s.segments;
            st.disk_bytes += s.disk_bytes;
            st.index_bytes += s.index_bytes;
            st.syncs += s.syncs;
        }
        st.last_seq = Seq(self.seq);
        st.flushed_seq = Seq(self.durable);
        st.durable_seq = Seq(self.durable);
        st
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.barrier().map(|_| ())
    }
}
