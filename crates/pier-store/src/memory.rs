//! The in-memory backend: the reference implementation of the [`MessageStore`] contract, for
//! tests and for brokers run without a data directory.
//!
//! A [`MemoryDisk`] plays the part of the disk: [`MemoryStore::open`] on the same disk after a
//! drop is a "restart". Appends, acks and marks go to a journal that `flush` applies to the
//! disk, so a store dropped without flushing loses them, exactly like a crash of the segment
//! store; registrations, purges and deletions reach the disk at once, as they do there.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::error::StoreError;
use crate::message::StoredMessage;
use crate::registry::MessageNote;
use crate::store::{
    LiveMessage, MessageStore, QueueId, QueueInfo, QueueRef, Result, Returns, Seq, StoreStats,
};

#[derive(Debug, Default, Clone)]
struct DiskQueue {
    messages: BTreeMap<u64, Arc<StoredMessage>>,
    delivered: Option<u64>,
    notes: BTreeMap<u64, MessageNote>,
    next_offset: u64,
}

#[derive(Debug, Default)]
struct DiskState {
    queues: BTreeMap<String, DiskQueue>,
}

/// What survives a [`MemoryStore`] being dropped. Clones share the same "disk".
#[derive(Debug, Default, Clone)]
pub struct MemoryDisk(Arc<Mutex<DiskState>>);

impl MemoryDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
enum Op {
    Append(String, u64, Arc<StoredMessage>),
    Ack(String, u64),
    Mark(String, u64),
    Note(String, u64, MessageNote),
}

#[derive(Debug)]
struct MemQueue {
    name: String,
    messages: BTreeMap<u64, (Arc<StoredMessage>, bool)>,
    notes: BTreeMap<u64, MessageNote>,
    next_offset: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct MemoryStore {
    disk: MemoryDisk,
    queues: Vec<Option<MemQueue>>,
    by_name: HashMap<String, QueueId>,
    journal: Vec<(u64, Op)>,
    last_seq: u64,
    durable_seq: u64,
}

impl MemoryStore {
    /// Opens the store on `disk`, "recovering" whatever was flushed to it.
    pub fn open(disk: MemoryDisk) -> MemoryStore {
        let mut queues = Vec::new();
        let mut by_name = HashMap::new();
        for (name, dq) in &disk.lock().queues {
            let id = QueueId(queues.len() as u32);
            let messages = dq
                .messages
                .iter()
                .map(|(&off, m)| (off, (Arc::clone(m), dq.delivered.is_some_and(|d| off <= d))))
                .collect();
            let next_offset = dq
                .next_offset
                .max(dq.delivered.map_or(0, |d| d.saturating_add(1)));
            let notes = dq
                .notes
                .iter()
                .filter(|(off, _)| dq.messages.contains_key(off))
                .map(|(&off, &n)| (off, n))
                .collect();
            queues.push(Some(MemQueue {
                name: name.clone(),
                messages,
                notes,
                next_offset,
            }));
            by_name.insert(name.clone(), id);
        }
        MemoryStore {
            disk,
            queues,
            by_name,
            journal: Vec::new(),
            last_seq: 0,
            durable_seq: 0,
        }
    }

    /// A store on a fresh disk of its own.
    pub fn new() -> MemoryStore {
        Self::open(MemoryDisk::new())
    }

    fn queue(&self, id: QueueId) -> Result<&MemQueue> {
        self.queues
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(StoreError::UnknownQueue(id))
    }

    fn queue_mut(&mut self, id: QueueId) -> Result<&mut MemQueue> {
        self.queues
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(StoreError::UnknownQueue(id))
    }
}

impl MemoryStore {
    /// Changes what is noted about a live message (journalled like a mark).
    fn note(
        &mut self,
        queue: QueueId,
        offset: u64,
        change: impl FnOnce(&mut MessageNote),
    ) -> Result<()> {
        let seq = self.last_seq;
        let q = self.queue_mut(queue)?;
        if !q.messages.contains_key(&offset) {
            return Ok(());
        }
        let note = q.notes.entry(offset).or_default();
        change(note);
        let (note, name) = (*note, q.name.clone());
        self.journal.push((seq, Op::Note(name, offset, note)));
        Ok(())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageStore for MemoryStore {
    fn open_queue(&mut self, name: &str) -> Result<QueueId> {
        if let Some(&id) = self.by_name.get(name) {
            return Ok(id);
        }
        self.disk.lock().queues.entry(name.to_owned()).or_default();
        let id = QueueId(self.queues.len() as u32);
        self.queues.push(Some(MemQueue {
            name: name.to_owned(),
            messages: BTreeMap::new(),
            notes: BTreeMap::new(),
            next_offset: 0,
        }));
        self.by_name.insert(name.to_owned(), id);
        Ok(id)
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
                    messages: q.messages.len() as u64,
                    next_offset: q.next_offset,
                })
            })
            .collect()
    }

    fn live_messages(&self, queue: QueueId) -> Result<Vec<LiveMessage>> {
        let q = self.queue(queue)?;
        Ok(q.messages
            .iter()
            .map(|(&offset, (_, redelivered))| {
                let note = q.notes.get(&offset).copied().unwrap_or_default();
                LiveMessage {
                    offset,
                    redelivered: *redelivered,
                    returns: note.returns,
                    dead_letter: note.dead_letter,
                }
            })
            .collect())
    }

    fn append(&mut self, refs: &[QueueRef], message: &StoredMessage) -> Result<Seq> {
        if refs.is_empty() || refs.len() > usize::from(u16::MAX) {
            return Err(StoreError::BadReferences);
        }
        let mut seen = Vec::with_capacity(refs.len());
        for r in refs {
            let q = self.queue(r.queue)?;
            if r.offset < q.next_offset {
                return Err(StoreError::OffsetNotIncreasing {
                    queue: r.queue,
                    offset: r.offset,
                    last: q.next_offset.saturating_sub(1),
                });
            }
            seen.push(r.queue);
        }
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != refs.len() {
            return Err(StoreError::BadReferences);
        }
        let m = Arc::new(message.clone());
        self.last_seq += 1;
        for r in refs {
            let q = self.queue_mut(r.queue)?;
            q.messages.insert(r.offset, (Arc::clone(&m), false));
            q.next_offset = r.offset.saturating_add(1);
            let name = q.name.clone();
            self.journal
                .push((self.last_seq, Op::Append(name, r.offset, Arc::clone(&m))));
        }
        Ok(Seq(self.last_seq))
    }

    fn read(&mut self, queue: QueueId, offset: u64) -> Result<StoredMessage> {
        self.queue(queue)?
            .messages
            .get(&offset)
            .map(|(m, _)| StoredMessage::clone(m))
            .ok_or(StoreError::NotFound { queue, offset })
    }

    fn ack(&mut self, queue: QueueId, offsets: &[u64]) -> Result<usize> {
        let seq = self.last_seq;
        let q = self.queue_mut(queue)?;
        let name = q.name.clone();
        let mut n = 0;
        let mut ops = Vec::new();
        for &off in offsets {
            if q.messages.remove(&off).is_some() {
                q.notes.remove(&off);
                n += 1;
                ops.push((seq, Op::Ack(name.clone(), off)));
            }
        }
        self.journal.extend(ops);
        Ok(n)
    }

    fn mark_delivered(&mut self, queue: QueueId, offset: u64) -> Result<()> {
        let name = self.queue(queue)?.name.clone();
        self.journal.push((self.last_seq, Op::Mark(name, offset)));
        Ok(())
    }

    fn mark_returned(&mut self, queue: QueueId, offset: u64, returns: Returns) -> Result<()> {
        self.note(queue, offset, |n| n.returns = returns)
    }

    fn mark_dead_letter(&mut self, queue: QueueId, offset: u64, reason: u8) -> Result<()> {
        self.note(queue, offset, |n| n.dead_letter = Some(reason))
    }

    fn purge_queue(&mut self, queue: QueueId) -> Result<u64> {
        let q = self.queue_mut(queue)?;
        let n = q.messages.len() as u64;
        q.messages.clear();
        q.notes.clear();
        let name = q.name.clone();
        self.journal
            .retain(|(_, op)| !matches!(op, Op::Append(q, ..) | Op::Ack(q, _) | Op::Note(q, ..) if *q == name));
        if let Some(dq) = self.disk.lock().queues.get_mut(&name) {
            dq.messages.clear();
            dq.notes.clear();
        }
        Ok(n)
    }

    fn delete_queue(&mut self, queue: QueueId) -> Result<u64> {
        let q = self
            .queues
            .get_mut(queue.0 as usize)
            .and_then(Option::take)
            .ok_or(StoreError::UnknownQueue(queue))?;
        self.by_name.remove(&q.name);
        self.journal.retain(|(_, op)| {
            !matches!(op, Op::Append(n, ..) | Op::Ack(n, _) | Op::Mark(n, _) | Op::Note(n, ..) if *n == q.name)
        });
        self.disk.lock().queues.remove(&q.name);
        Ok(q.messages.len() as u64)
    }

    fn flush(&mut self) -> Result<Seq> {
        let mut disk = self.disk.lock();
        for (_, op) in self.journal.drain(..) {
            match op {
                Op::Append(name, off, m) => {
                    if let Some(q) = disk.queues.get_mut(&name) {
                        q.messages.insert(off, m);
                        q.next_offset = q.next_offset.max(off.saturating_add(1));
                    }
                }
                Op::Ack(name, off) => {
                    if let Some(q) = disk.queues.get_mut(&name) {
                        q.messages.remove(&off);
                        q.notes.remove(&off);
                    }
                }
                Op::Note(name, off, n) => {
                    if let Some(q) = disk.queues.get_mut(&name) {
                        if q.messages.contains_key(&off) {
                            q.notes.insert(off, n);
                        }
                    }
                }
                Op::Mark(name, off) => {
                    if let Some(q) = disk.queues.get_mut(&name) {
                        q.delivered = Some(q.delivered.map_or(off, |d| d.max(off)));
                    }
                }
            }
        }
        self.durable_seq = self.last_seq;
        Ok(Seq(self.durable_seq))
    }

    fn sync(&mut self) -> Result<Seq> {
        self.flush()
    }

    fn commit(&mut self) -> Result<Seq> {
        self.flush()
    }

    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn last_seq(&self) -> Seq {
        Seq(self.last_seq)
    }

    fn flushed_seq(&self) -> Seq {
        Seq(self.durable_seq)
    }

    fn durable_seq(&self) -> Seq {
        Seq(self.durable_seq)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            queues: self.by_name.len() as u64,
            live_messages: self
                .queues
                .iter()
                .flatten()
                .map(|q| q.messages.len() as u64)
                .sum(),
            last_seq: Seq(self.last_seq),
            flushed_seq: Seq(self.durable_seq),
            durable_seq: Seq(self.durable_seq),
            ..StoreStats::default()
        }
    }

    fn close(&mut self) -> Result<()> {
        self.flush().map(|_| ())
    }
}
