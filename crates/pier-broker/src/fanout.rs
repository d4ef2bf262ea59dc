//! Publishing one message to every queue it was routed to, storing a persistent message once
//! per store shard for all the durable queues of its vhost on that shard (one record, one
//! `QueueRef` per queue; queues on different shards get one record per shard).
//!
//! **Ordering.** The store needs each queue's offsets in increasing order (its index only
//! pushes at the back) and must see a message's append before any ack of it. A single-queue
//! publish gets both by taking the offset and sending the append under the queue's lock. A
//! shared record extends that: the publisher locks *every* sharing queue, takes each one's
//! offset (the engine enqueues it, holding back its effects), sends the appends (one per
//! shard), and only then carries out each queue's effects (deliveries among them) and lets its
//! lock go. Any other append carrying a reference to one of these queues is sent under that
//! queue's lock too, so for every queue the store receives references in the order its offsets
//! were taken; no consumer can see (and ack) the message before the append was sent.
//!
//! **No deadlock.** Locks are taken in one fixed order (store shard id, then store queue id:
//! unique per vhost) by every fan-out publisher, and everything else holds at most one queue
//! lock; what a queue does under its lock (deliveries to channel sinks, store commands) never
//! waits for a queue lock. Dead letters are routed (by `VHost::publish`) only after every lock
//! is released.
//!
//! **Encoding.** The records are encoded (and checksummed) before any lock is taken: the
//! record's bytes do not depend on the offsets, only on how many references it has.

use std::sync::{Arc, MutexGuard};

use pier_store::EncodedMessage;

use crate::message::Message;
use crate::persist::{to_stored, PublishDurability};
use crate::publish::DeadLetterWork;
use crate::queue::classic::Core;
use crate::queue::{Published, Queue};

/// What became of a message published to its routed queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Fanout {
    /// Some queue accepted (or refused) it: it was routed.
    pub routed: bool,
    /// Some queue refused it (`x-overflow` reject-publish): the publisher gets a basic.nack.
    pub rejected: bool,
}

impl Fanout {
    fn add(&mut self, p: Published) {
        match p {
            Published::Accepted => self.routed = true,
            Published::Rejected => {
                self.routed = true;
                self.rejected = true;
            }
            Published::Gone => {}
        }
    }
}

/// Publishes `message` to `queues` (routed, without duplicates; the slice is reordered). A
/// persistent message routed to two or more durable queues of a store shard is written once
/// for them. Dead letters the queues produce are handed back in `dead` (the caller routes them
/// once no queue lock is held). Only `VHost::publish` calls this.
pub(crate) fn publish_to_queues(
    queues: &mut [Arc<Queue>],
    message: &Arc<Message>,
    durability: Option<&Arc<PublishDurability>>,
    dead: &mut DeadLetterWork,
) -> Fanout {
    let mut out = Fanout::default();
    let sharing = queues.iter().filter(|q| q.shares_record(message)).count();
    // A record holds at most u16::MAX references; past that (never in practice) one per queue.
    if sharing < 2 || sharing > usize::from(u16::MAX) {
        // The common case (one queue, or nothing to share): no extra work, no allocation.
        for q in queues.iter() {
            out.add(publish_one(q, message, durability, dead));
        }
        return out;
    }
    // Sharing queues first, by shard then store queue id: the fixed lock order.
    queues.sort_unstable_by_key(|q| match q.store() {
        Some(s) if q.shares_record(message) => (0, s.handle.store_id(), s.id.0),
        _ => (1, 0, 0),
    });
    let (shared, rest) = queues.split_at(sharing);
    publish_shared(shared, message, durability, &mut out, dead);
    for q in rest {
        out.add(publish_one(q, message, durability, dead));
    }
    out
}

fn publish_one(
    q: &Arc<Queue>,
    message: &Arc<Message>,
    durability: Option<&Arc<PublishDurability>>,
    dead: &mut DeadLetterWork,
) -> Published {
    let mut d = Vec::new();
    let p = q.publish_collect(Arc::clone(message), &mut d, durability);
    if !d.is_empty() {
        dead.push((Arc::clone(q), d));
    }
    p
}

/// A queue locked for a shared append.
struct Held<'a> {
    queue: &'a Arc<Queue>,
    core: MutexGuard<'a, Core>,
}

/// The queues of `shared` (sorted as in `publish_to_queues`) grouped by shard: lengths.
fn shard_runs(shared: &[Arc<Queue>]) -> Vec<usize> {
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for q in shared {
        let shard = q.store().map_or(0, |s| s.handle.store_id());
        match runs.last_mut() {
            Some((s, n)) if *s == shard => *n += 1,
            _ => runs.push((shard, 1)),
        }
    }
    runs.into_iter().map(|(_, n)| n).collect()
}

/// One record per shard for `shared` (sorted by shard and store queue id, all storing
/// `message` without a TTL). See the module docs for the ordering argument.
fn publish_shared(
    shared: &[Arc<Queue>],
    message: &Arc<Message>,
    durability: Option<&Arc<PublishDurability>>,
    out: &mut Fanout,
    dead: &mut DeadLetterWork,
) {
    // Encoded before any lock, once per shard (a record's bytes depend only on its number
    // of references).
    let stored = to_stored(message);
    let runs = shard_runs(shared);
    let encoded: Vec<EncodedMessage> = runs
        .iter()
        .map(|&n| EncodedMessage::new(stored.clone(), n))
        .collect();

    let mut held: Vec<Held<'_>> = Vec::with_capacity(shared.len());
    // Per shard run: the references of the queues that took the message.
    let mut refs: Vec<Vec<pier_store::QueueRef>> =
        runs.iter().map(|&n| Vec::with_capacity(n)).collect();
    let mut queues = shared.iter();
    for (run, &n) in runs.iter().enumerate() {
        for q in queues.by_ref().take(n) {
            // Sharing queues have a store, which only classic queues have.
            let Some(rt) = q.classic_runtime() else {
                out.add(publish_one(q, message, durability, dead));
                continue;
            };
            let mut core = rt.lock();
            // The engine admits (or refuses) and enqueues; its effects (deliveries among them)
            // wait until the shared appends are sent.
            let (result, offset) = rt.enqueue_shared(q, &mut core, Arc::clone(message));
            out.add(result);
            if let (Some(offset), Some(s), Some(r)) = (offset, q.store(), refs.get_mut(run)) {
                r.push(pier_store::QueueRef {
                    queue: s.id,
                    offset,
                });
            }
            held.push(Held { queue: q, core });
        }
    }
    // One record per shard for the queues that took the message, sent while all their locks
    // are held.
    let mut start = 0;
    for ((&n, refs), enc) in runs.iter().zip(refs).zip(encoded) {
        let first = shared.get(start);
        start += n;
        let Some(store) = first.and_then(|q| q.store()) else {
            continue;
        };
        if refs.is_empty() {
            continue;
        }
        let enc = if enc.nrefs() == refs.len() {
            enc
        } else {
            // Some queue refused it (deleted, or full with reject-publish): rare.
            EncodedMessage::new(stored.clone(), refs.len())
        };
        let nrefs = refs.len();
        if let Err(e) = append_encoded(&store.handle, refs, enc, durability) {
            tracing::error!(vhost = %first.map_or("", |q| q.vhost()), queues = nrefs, "store append failed: {e}");
        }
    }
    for Held { queue, mut core } in held {
        let Some(rt) = queue.classic_runtime() else {
            continue;
        };
        let d = rt.finish_shared(queue, &mut core);
        drop(core);
        if !d.is_empty() {
            dead.push((Arc::clone(queue), d));
        }
    }
}

/// `persist::append_durable` of a record encoded beforehand.
fn append_encoded(
    handle: &pier_store::StoreHandle,
    refs: Vec<pier_store::QueueRef>,
    encoded: EncodedMessage,
    durability: Option<&Arc<PublishDurability>>,
) -> pier_store::Result<()> {
    crate::persist::append_durable_with(durability, |on_durable| {
        handle.send(pier_store::Command::Append {
            refs,
            message: encoded,
            on_durable,
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::Bytes;
    use pier_store::{
        MessageStore, QueueId, SegmentStore, ShardConfig, ShardedStore, Shards, StoreConfig,
        StoreHandle, StoreThread, ThreadConfig,
    };
    use pier_wire::{BasicProperties, ShortString};

    use super::*;
    use crate::persist::QueueStore;
    use crate::queue::QueueOptions;

    fn store(dir: &std::path::Path) -> StoreThread {
        let s = SegmentStore::open(dir, StoreConfig::default()).unwrap();
        StoreThread::spawn(Box::new(s), ThreadConfig::default()).unwrap()
    }

    fn durable_queue(name: &str, h: &StoreHandle) -> Arc<Queue> {
        let q = Queue::new(
            ShortString::from(name),
            "/".to_owned(),
            QueueOptions {
                durable: true,
                exclusive_owner: None,
                auto_delete: false,
                arguments: Default::default(),
            },
        );
        let owned = name.to_owned();
        let id = h.call(move |s| s.open_queue(&owned)).unwrap().unwrap();
        q.attach_store(QueueStore {
            handle: h.clone(),
            id,
        });
        q
    }

    fn message(i: u32, size: usize, persistent: bool) -> Arc<Message> {
        let mut body = format!("{i:08}").into_bytes();
        body.resize(size, b'.');
        Arc::new(Message::new(
            ShortString::from("fan"),
            ShortString::from(""),
            BasicProperties {
                delivery_mode: Some(if persistent { 2 } else { 1 }),
                ..BasicProperties::default()
            },
            Bytes::from(body),
        ))
    }

    fn live(h: &StoreHandle, id: QueueId) -> Vec<u64> {
        h.call(move |s| s.live_messages(id).unwrap())
            .unwrap()
            .iter()
            .map(|m| m.offset)
            .collect()
    }

    fn seg_bytes(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .map(|p| p.metadata().unwrap().len())
            .sum()
    }

    /// Segment bytes written for `n` 1 KiB persistent messages to 4 durable queues, either
    /// through `publish_to_queues` or one `publish_durable` per queue (the old way).
    fn fan_out_bytes(shared: bool, n: u32) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let t = store(dir.path());
        let h = t.handle();
        let mut queues: Vec<_> = (0..4)
            .map(|i| durable_queue(&format!("q{i}"), &h))
            .collect();
        let before = seg_bytes(dir.path());
        let confirmed = Arc::new(AtomicU32::new(0));
        for i in 0..n {
            let c = Arc::clone(&confirmed);
            let d = PublishDurability::new(move |ok| {
                assert!(ok);
                c.fetch_add(1, Ordering::SeqCst);
            });
            let m = message(i, 1024, true);
            if shared {
                let out = publish_to_queues(&mut queues, &m, Some(&d), &mut Vec::new());
                assert_eq!(
                    out,
                    Fanout {
                        routed: true,
                        rejected: false
                    }
                );
            } else {
                for q in &queues {
                    q.publish_durable(Arc::clone(&m), Some(&d));
                }
            }
            d.release();
        }
        h.wait_durable().unwrap();
        assert_eq!(
            confirmed.load(Ordering::SeqCst),
            n,
            "every publish confirmed once"
        );
        for q in &queues {
            assert_eq!(q.stats().ready, u64::from(n));
            let id = q.store().unwrap().id;
            assert_eq!(live(&h, id), (0..u64::from(n)).collect::<Vec<_>>());
        }
        let bytes = seg_bytes(dir.path()) - before;
        t.shutdown().unwrap();
        bytes
    }

    #[test]
    fn fan_out_to_four_durable_queues_is_written_once() {
        let n = 10_000;
        let once = fan_out_bytes(true, n);
        let per_queue = fan_out_bytes(false, n);
        let payload = u64::from(n) * 1024;
        println!(
            "{n} x 1 KiB to 4 durable queues: {once} segment bytes shared ({:.2}x payload), \
             {per_queue} one record per queue ({:.2}x)",
            once as f64 / payload as f64,
            per_queue as f64 / payload as f64
        );
        assert!(once < payload * 11 / 10, "{once}");
        assert!(per_queue > payload * 4, "{per_queue}");
    }

    #[test]
    fn acks_purge_and_recovery_are_per_queue() {
        let dir = tempfile::tempdir().unwrap();
        let t = store(dir.path());
        let h = t.handle();
        let (a, b, c) = (
            durable_queue("a", &h),
            durable_queue("b", &h),
            durable_queue("c", &h),
        );
        // A transient queue and a transient message ride along; neither is stored.
        let transient = Queue::new(
            ShortString::from("t"),
            "/".to_owned(),
            QueueOptions {
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: Default::default(),
            },
        );
        // `b` gets a message of its own first: its offsets differ from the others'.
        b.publish(message(999, 10, true));
        let mut all = vec![
            Arc::clone(&c),
            Arc::clone(&transient),
            Arc::clone(&a),
            Arc::clone(&b),
        ];
        for i in 0..10 {
            publish_to_queues(&mut all, &message(i, 100, true), None, &mut Vec::new());
        }
        publish_to_queues(&mut all, &message(10, 100, false), None, &mut Vec::new());
        assert_eq!(transient.stats().ready, 11);
        h.wait_durable().unwrap();
        let records = h.call(|s| s.stats()).unwrap();
        assert_eq!(records.live_messages, 31, "10 shared records x 3 + b's own");
        // a takes (and so acks) 4, b is purged, c takes nothing.
        for _ in 0..4 {
            a.get(false).unwrap();
        }
        assert_eq!(b.purge(), 12, "its own, 10 shared, 1 transient");
        let (ida, idb, idc) = (
            a.store().unwrap().id,
            b.store().unwrap().id,
            c.store().unwrap().id,
        );
        assert!(live(&h, idb).is_empty());
        assert_eq!(live(&h, ida), (4..10).collect::<Vec<_>>());
        assert_eq!(live(&h, idc), (0..10).collect::<Vec<_>>());
        t.shutdown().unwrap();

        // Recovery rebuilds each queue from the shared records.
        let mut s = SegmentStore::open(dir.path(), StoreConfig::default()).unwrap();
        let ids: std::collections::HashMap<String, QueueId> =
            s.queues().into_iter().map(|q| (q.name, q.id)).collect();
        let offsets = |s: &SegmentStore, n: &str| -> Vec<u64> {
            s.live_messages(ids[n])
                .unwrap()
                .iter()
                .map(|m| m.offset)
                .collect()
        };
        assert_eq!(offsets(&s, "a"), (4..10).collect::<Vec<_>>());
        assert!(offsets(&s, "b").is_empty());
        assert_eq!(offsets(&s, "c"), (0..10).collect::<Vec<_>>());
        let m = s.read(ids["c"], 7).unwrap();
        assert_eq!(&m.body[..8], b"00000007");
        s.ack(ids["a"], &(4..10).collect::<Vec<_>>()).unwrap();
        s.ack(ids["c"], &(0..10).collect::<Vec<_>>()).unwrap();
        s.commit().unwrap();
        assert_eq!(s.stats().live_messages, 0);
        s.close().unwrap();
    }

    /// Fan-out publishers (in different lock orders as routed) and single-queue publishers
    /// race on the same queues: no deadlock, and every append reaches the store (an offset
    /// out of order would be refused), in each queue's offset order.
    #[test]
    fn concurrent_publishers_keep_each_queues_offsets_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = store(dir.path());
        let h = t.handle();
        let qs: Vec<_> = (0..3)
            .map(|i| durable_queue(&format!("r{i}"), &h))
            .collect();
        let per_thread = 300u32;
        let failed = Arc::new(AtomicU32::new(0));
        std::thread::scope(|scope| {
            for k in 0..4usize {
                let qs = &qs;
                let failed = Arc::clone(&failed);
                scope.spawn(move || {
                    for i in 0..per_thread {
                        let f = Arc::clone(&failed);
                        let d = PublishDurability::new(move |ok| {
                            if !ok {
                                f.fetch_add(1, Ordering::SeqCst);
                            }
                        });
                        let m = message(i, 64, true);
                        match k {
                            // Fan-out, routed in two different orders.
                            0 => {
                                let mut v = vec![
                                    Arc::clone(&qs[0]),
                                    Arc::clone(&qs[1]),
                                    Arc::clone(&qs[2]),
                                ];
                                publish_to_queues(&mut v, &m, Some(&d), &mut Vec::new());
                            }
                            1 => {
                                let mut v = vec![Arc::clone(&qs[2]), Arc::clone(&qs[0])];
                                publish_to_queues(&mut v, &m, Some(&d), &mut Vec::new());
                            }
                            // Single-queue publishers.
                            _ => {
                                qs[k - 1].publish_durable(m, Some(&d));
                            }
                        }
                        d.release();
                    }
                });
            }
        });
        h.wait_durable().unwrap();
        assert_eq!(failed.load(Ordering::SeqCst), 0, "no publish was nacked");
        // r0: both fan-outs; r1: the first fan-out and one single; r2: all but one single.
        let expected = [2 * per_thread, 2 * per_thread, 3 * per_thread];
        for (q, n) in qs.iter().zip(expected) {
            assert_eq!(q.stats().ready, u64::from(n));
            let id = q.store().unwrap().id;
            assert_eq!(live(&h, id), (0..u64::from(n)).collect::<Vec<_>>());
        }
        t.shutdown().unwrap();
        // The same after recovery (file order = each queue's offset order).
        let s = SegmentStore::open(dir.path(), StoreConfig::default()).unwrap();
        for info in s.queues() {
            let offsets: Vec<u64> = s
                .live_messages(info.id)
                .unwrap()
                .iter()
                .map(|m| m.offset)
                .collect();
            assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
            assert!(offsets.len() >= 2 * per_thread as usize);
        }
    }

    fn sharded(dir: &std::path::Path, shards: usize) -> ShardedStore {
        ShardedStore::open(
            dir,
            ShardConfig {
                shards,
                ..ShardConfig::default()
            },
        )
        .unwrap()
    }

    fn queue_on(name: &str, shards: &Shards) -> Arc<Queue> {
        let q = Queue::new(
            ShortString::from(name),
            "/".to_owned(),
            QueueOptions {
                durable: true,
                exclusive_owner: None,
                auto_delete: false,
                arguments: Default::default(),
            },
        );
        let (handle, id) = shards.open_queue(name).unwrap();
        q.attach_store(QueueStore { handle, id });
        q
    }

    fn shard_seg_bytes(dir: &std::path::Path, shards: usize) -> u64 {
        (0..shards)
            .map(|i| seg_bytes(&pier_store::shard_dir(dir, i)))
            .sum()
    }

    /// Four durable queues on two shards: one record per shard (two in all), each queue's
    /// offsets in order, and every queue recovered from its own shard.
    #[test]
    fn fan_out_across_shards_is_one_record_per_shard() {
        let dir = tempfile::tempdir().unwrap();
        let store = sharded(dir.path(), 2);
        let shards = store.shards();
        let mut queues: Vec<_> = (0..4)
            .map(|i| queue_on(&format!("q{i}"), &shards))
            .collect();
        let before = shard_seg_bytes(dir.path(), 2);
        let n = 2_000u32;
        let confirmed = Arc::new(AtomicU32::new(0));
        for i in 0..n {
            let c = Arc::clone(&confirmed);
            let d = PublishDurability::new(move |ok| {
                assert!(ok);
                c.fetch_add(1, Ordering::SeqCst);
            });
            let out = publish_to_queues(
                &mut queues,
                &message(i, 1024, true),
                Some(&d),
                &mut Vec::new(),
            );
            assert!(out.routed && !out.rejected);
            d.release();
        }
        shards.wait_durable().unwrap();
        assert_eq!(
            confirmed.load(Ordering::SeqCst),
            n,
            "every publish confirmed once"
        );
        let bytes = shard_seg_bytes(dir.path(), 2) - before;
        let payload = u64::from(n) * 1024;
        assert!(bytes > payload * 2 && bytes < payload * 22 / 10, "{bytes}");
        for q in &queues {
            let s = q.store().unwrap();
            assert_eq!(live(&s.handle, s.id), (0..u64::from(n)).collect::<Vec<_>>());
        }
        // A consumer of q0 takes (acks) the first 10; the others keep theirs.
        for _ in 0..10 {
            queues
                .iter()
                .find(|q| q.name().as_str() == "q0")
                .unwrap()
                .get(false)
                .unwrap();
        }
        shards.wait_durable().unwrap();
        store.shutdown().unwrap();

        let store = sharded(dir.path(), 2);
        let shards = store.shards();
        let listed = shards.queues().unwrap();
        assert_eq!(listed.len(), 4);
        for (h, info) in listed {
            let expect = if info.name == "q0" { n - 10 } else { n };
            assert_eq!(info.messages, u64::from(expect), "{}", info.name);
            let id = info.id;
            let m = h
                .call(move |s| s.read(id, u64::from(n) - 1))
                .unwrap()
                .unwrap();
            assert_eq!(&m.body[..8], format!("{:08}", n - 1).as_bytes());
        }
        store.shutdown().unwrap();
    }

    /// Fan-out and single-queue publishers racing on queues of three shards: no deadlock
    /// (locks by shard, then queue), nothing refused, each queue's offsets in order.
    #[test]
    fn concurrent_publishers_across_shards_keep_offsets_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = sharded(dir.path(), 3);
        let shards = store.shards();
        let qs: Vec<_> = (0..5)
            .map(|i| queue_on(&format!("r{i}"), &shards))
            .collect();
        let per_thread = 200u32;
        let failed = Arc::new(AtomicU32::new(0));
        std::thread::scope(|scope| {
            for k in 0..4usize {
                let qs = &qs;
                let failed = Arc::clone(&failed);
                scope.spawn(move || {
                    for i in 0..per_thread {
                        let f = Arc::clone(&failed);
                        let d = PublishDurability::new(move |ok| {
                            if !ok {
                                f.fetch_add(1, Ordering::SeqCst);
                            }
                        });
                        let m = message(i, 64, true);
                        match k {
                            0 => {
                                let mut v: Vec<_> = qs.iter().rev().cloned().collect();
                                publish_to_queues(&mut v, &m, Some(&d), &mut Vec::new());
                            }
                            1 => {
                                let mut v = vec![Arc::clone(&qs[3]), Arc::clone(&qs[0])];
                                publish_to_queues(&mut v, &m, Some(&d), &mut Vec::new());
                            }
                            _ => {
                                qs[k].publish_durable(m, Some(&d));
                            }
                        }
                        d.release();
                    }
                });
            }
        });
        shards.wait_durable().unwrap();
        assert_eq!(failed.load(Ordering::SeqCst), 0, "no publish was nacked");
        for q in &qs {
            let s = q.store().unwrap();
            let offsets = live(&s.handle, s.id);
            assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
            assert_eq!(offsets.len() as u64, q.stats().ready);
        }
        store.shutdown().unwrap();
    }
}
