//! Paging of messages that are not in the durable store (transient messages, non-durable
//! queues) to the scratch paging store, with a `MemoryStore` behind the paging thread.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pier_store::{
    LiveMessage, MemoryStore, MessageStore, QueueId, QueueInfo, QueueRef, Seq, StoreError,
    StoreHandle, StoreStats, StoreThread, StoredMessage, ThreadConfig,
};
use pier_wire::{BasicProperties, FieldTable, FieldValue, LongString, ShortString};

use crate::clock::Clock;
use crate::consumer::ChannelCredit;
use crate::message::Message;
use crate::persist::QueueStore;
use crate::queue::{Queue, QueueOptions, PAGE_OUT_BYTES};
use crate::tests::{spec, RecordingSink};

fn paging_thread() -> (StoreThread, StoreHandle) {
    let t = StoreThread::spawn(Box::new(MemoryStore::new()), ThreadConfig::default()).unwrap();
    let h = t.handle();
    (t, h)
}

fn queue(durable: bool, arguments: FieldTable, paging: &StoreHandle) -> Arc<Queue> {
    queue_with_clock(durable, arguments, paging).0
}

fn queue_with_clock(
    durable: bool,
    arguments: FieldTable,
    paging: &StoreHandle,
) -> (Arc<Queue>, Arc<Clock>) {
    let config = crate::args::QueueConfig::from_arguments(
        &arguments,
        &crate::args::ArgContext {
            queue: "q",
            vhost: "/",
        },
    )
    .unwrap();
    let clock = Arc::new(Clock::new());
    let q = Queue::with_config(
        ShortString::from("q"),
        "/".to_owned(),
        QueueOptions {
            durable,
            exclusive_owner: None,
            auto_delete: false,
            arguments,
        },
        config,
        Arc::clone(&clock),
        std::sync::Weak::new(),
    );
    q.attach_paging(paging.clone());
    (q, clock)
}

/// Body `i`: its number first, then a pattern that depends on it, `len` bytes in all.
fn body(i: u32, len: usize) -> Bytes {
    let mut b = format!("{i:08}").into_bytes();
    b.extend((8..len).map(|j| (i as usize * 31 + j) as u8));
    Bytes::from(b)
}

fn message(i: u32, len: usize, persistent: bool) -> Arc<Message> {
    Arc::new(Message::new(
        ShortString::from(""),
        ShortString::from("q"),
        BasicProperties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            ..BasicProperties::default()
        },
        body(i, len),
    ))
}

fn size_of(i: u32) -> usize {
    // 1 KiB .. 9 KiB, varying.
    1024 + (i as usize * 997) % 8192
}

fn paging_live(h: &StoreHandle) -> u64 {
    h.call(|s| s.stats().live_messages).unwrap()
}

/// Consumes everything (acks required, no prefetch limit); returns the deliveries' offsets.
fn drain(q: &Arc<Queue>, n: u32, persistent: impl Fn(u32) -> bool) -> Vec<u64> {
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let id = q.add_consumer(spec("c", &sink, 0, &credit), || {}).unwrap();
    let got = sink.take();
    assert_eq!(got.len(), n as usize);
    for (i, d) in got.iter().enumerate() {
        let i = i as u32;
        assert_eq!(d.message.body, body(i, size_of(i)), "message {i}");
        let mode = if persistent(i) { 2 } else { 1 };
        assert_eq!(d.message.properties.delivery_mode, Some(mode));
    }
    q.remove_consumer(id);
    got.iter().map(|d| d.offset).collect()
}

#[test]
fn transient_backlog_pages_out_and_comes_back_in_order() {
    let (thread, paging) = paging_thread();
    let q = queue(false, FieldTable::new(), &paging);
    let n = 6_000u32;
    let mut total = 0u64;
    for i in 0..n {
        total += size_of(i) as u64;
        q.publish(message(i, size_of(i), false));
    }
    let stats = q.stats();
    assert_eq!(stats.ready, u64::from(n));
    assert_eq!(stats.ready_bytes, total);
    assert!(stats.memory_bytes <= PAGE_OUT_BYTES + 9216, "{stats:?}");
    assert!(stats.paged_out > 3_000, "{stats:?}");
    paging.wait_durable().unwrap();
    assert_eq!(paging_live(&paging), stats.paged_out);

    let offsets = drain(&q, n, |_| false);
    // Read back means released: the paging store holds nothing any more.
    assert_eq!(paging_live(&paging), 0);
    assert_eq!(q.stats().paged_out, 0);
    q.settle(&offsets);
    assert_eq!(q.stats().unacked, 0);
    thread.shutdown().unwrap();
}

#[test]
fn durable_queue_pages_persistent_to_its_store_and_transient_to_paging() {
    let (pthread, paging) = paging_thread();
    let (sthread, store) = paging_thread();
    let id = store.call(|s| s.open_queue("q")).unwrap().unwrap();
    let q = queue(true, FieldTable::new(), &paging);
    q.attach_store(QueueStore {
        handle: store.clone(),
        id,
    });
    let n = 6_000u32;
    let persistent = |i: u32| i % 3 == 0;
    for i in 0..n {
        q.publish(message(i, size_of(i), persistent(i)));
    }
    let stats = q.stats();
    assert!(stats.paged_out > 3_000, "{stats:?}");
    paging.wait_durable().unwrap();
    let spilled = paging_live(&paging);
    let stored = store
        .call(move |s| s.live_messages(id).unwrap().len())
        .unwrap();
    assert_eq!(stored, (0..n).filter(|&i| persistent(i)).count());
    assert!(
        spilled > 0 && spilled < stats.paged_out,
        "{spilled} {stats:?}"
    );

    let offsets = drain(&q, n, persistent);
    assert_eq!(paging_live(&paging), 0);
    q.settle(&offsets);
    let stored = store
        .call(move |s| s.live_messages(id).unwrap().len())
        .unwrap();
    assert_eq!(stored, 0, "acks reached the durable store");
    pthread.shutdown().unwrap();
    sthread.shutdown().unwrap();
}

fn fill(q: &Arc<Queue>, n: u32) {
    for i in 0..n {
        q.publish(message(i, size_of(i), false));
    }
}

#[test]
fn purge_and_delete_release_paging_records() {
    let (thread, paging) = paging_thread();
    let q = queue(false, FieldTable::new(), &paging);
    fill(&q, 4_000);
    paging.wait_durable().unwrap();
    assert!(paging_live(&paging) > 1_000);
    assert_eq!(q.purge(), 4_000);
    assert_eq!(paging_live(&paging), 0);
    // The queue pages again after a purge (into a fresh paging queue), and delete frees it.
    fill(&q, 4_000);
    paging.wait_durable().unwrap();
    assert_eq!(paging_live(&paging), q.stats().paged_out);
    assert!(q.stats().paged_out > 1_000);
    let count = q.mark_deleted();
    assert_eq!(count, 4_000);
    assert_eq!(paging_live(&paging), 0);
    assert_eq!(paging.call(|s| s.queues().len()).unwrap(), 0);
    thread.shutdown().unwrap();
}

#[test]
fn expiry_and_drop_head_release_paging_records() {
    let (thread, paging) = paging_thread();
    let mut args = FieldTable::new();
    args.insert("x-message-ttl", FieldValue::LongInt(1_000));
    let (q, clock) = queue_with_clock(false, args, &paging);
    fill(&q, 4_000);
    paging.wait_durable().unwrap();
    assert!(paging_live(&paging) > 1_000);
    clock.advance(std::time::Duration::from_secs(2));
    q.tick();
    assert_eq!(q.stats().ready, 0);
    assert_eq!(paging_live(&paging), 0);

    let mut args = FieldTable::new();
    args.insert("x-max-length", FieldValue::LongInt(2_500));
    args.insert(
        "x-overflow",
        FieldValue::LongString(LongString::from("drop-head")),
    );
    let q = queue(false, args, &paging);
    fill(&q, 6_000);
    paging.wait_durable().unwrap();
    let stats = q.stats();
    assert_eq!(stats.ready, 2_500);
    // Dropped heads that were paged out were released; what is left paged is all there is.
    assert_eq!(paging_live(&paging), stats.paged_out);
    assert!(stats.paged_out > 0, "{stats:?}");
    thread.shutdown().unwrap();
}

#[test]
fn unavailable_paging_store_keeps_messages_in_memory() {
    let (thread, paging) = paging_thread();
    thread.shutdown().unwrap();
    let q = queue(false, FieldTable::new(), &paging);
    fill(&q, 3_000);
    let stats = q.stats();
    assert_eq!(stats.paged_out, 0);
    assert_eq!(stats.memory_bytes, stats.ready_bytes);
    drain(&q, 3_000, |_| false);
}

/// A `MemoryStore` whose appends fail while `fail` is set (a full disk, say).
struct FailingAppends {
    inner: MemoryStore,
    fail: Arc<AtomicBool>,
}

impl MessageStore for FailingAppends {
    fn open_queue(&mut self, name: &str) -> pier_store::Result<QueueId> {
        self.inner.open_queue(name)
    }
    fn queues(&self) -> Vec<QueueInfo> {
        self.inner.queues()
    }
    fn live_messages(&self, queue: QueueId) -> pier_store::Result<Vec<LiveMessage>> {
        self.inner.live_messages(queue)
    }
    fn append(&mut self, refs: &[QueueRef], message: &StoredMessage) -> pier_store::Result<Seq> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                op: "write",
                path: "test".into(),
                source: std::io::Error::other("disk full"),
            });
        }
        self.inner.append(refs, message)
    }
    fn read(&mut self, queue: QueueId, offset: u64) -> pier_store::Result<StoredMessage> {
        self.inner.read(queue, offset)
    }
    fn ack(&mut self, queue: QueueId, offsets: &[u64]) -> pier_store::Result<usize> {
        self.inner.ack(queue, offsets)
    }
    fn mark_delivered(&mut self, queue: QueueId, offset: u64) -> pier_store::Result<()> {
        self.inner.mark_delivered(queue, offset)
    }
    fn mark_returned(
        &mut self,
        queue: QueueId,
        offset: u64,
        returns: pier_store::Returns,
    ) -> pier_store::Result<()> {
        self.inner.mark_returned(queue, offset, returns)
    }
    fn mark_dead_letter(
        &mut self,
        queue: QueueId,
        offset: u64,
        reason: u8,
    ) -> pier_store::Result<()> {
        self.inner.mark_dead_letter(queue, offset, reason)
    }
    fn purge_queue(&mut self, queue: QueueId) -> pier_store::Result<u64> {
        self.inner.purge_queue(queue)
    }
    fn delete_queue(&mut self, queue: QueueId) -> pier_store::Result<u64> {
        self.inner.delete_queue(queue)
    }
    fn flush(&mut self) -> pier_store::Result<Seq> {
        self.inner.flush()
    }
    fn sync(&mut self) -> pier_store::Result<Seq> {
        self.inner.sync()
    }
    fn commit(&mut self) -> pier_store::Result<Seq> {
        self.inner.commit()
    }
    fn next_deadline(&self) -> Option<Instant> {
        self.inner.next_deadline()
    }
    fn last_seq(&self) -> Seq {
        self.inner.last_seq()
    }
    fn flushed_seq(&self) -> Seq {
        self.inner.flushed_seq()
    }
    fn durable_seq(&self) -> Seq {
        self.inner.durable_seq()
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
    fn close(&mut self) -> pier_store::Result<()> {
        self.inner.close()
    }
}

#[test]
fn failed_paging_writes_lose_nothing() {
    let fail = Arc::new(AtomicBool::new(false));
    let store = FailingAppends {
        inner: MemoryStore::new(),
        fail: Arc::clone(&fail),
    };
    let thread = StoreThread::spawn(Box::new(store), ThreadConfig::default()).unwrap();
    let paging = thread.handle();
    let q = queue(false, FieldTable::new(), &paging);
    // Some writes succeed, then the "disk" fills up, then it has room again.
    for i in 0..5_000u32 {
        if i == 2_000 {
            paging.wait_durable().unwrap();
            fail.store(true, Ordering::SeqCst);
        }
        if i == 3_500 {
            paging.wait_durable().unwrap();
            fail.store(false, Ordering::SeqCst);
        }
        q.publish(message(i, size_of(i), false));
    }
    paging.wait_durable().unwrap();
    assert!(q.stats().paged_out > 2_000);
    drain(&q, 5_000, |_| false);
    assert_eq!(paging_live(&paging), 0);
    thread.shutdown().unwrap();
}

/// Recovered messages keep their stored expiry deadline (not a fresh TTL from the restart).
#[test]
fn restored_messages_keep_their_stored_deadline() {
    let (thread, paging) = paging_thread();
    let mut args = FieldTable::new();
    args.insert("x-message-ttl", FieldValue::LongInt(60_000));
    let (q, clock) = queue_with_clock(true, args, &paging);
    let now = crate::persist::unix_ms();
    q.restore(
        [
            (0, message(0, 100, true), Some(now.saturating_sub(1_000))),
            (1, message(1, 100, true), Some(now + 5_000)),
            (2, message(2, 100, true), None),
        ]
        .into_iter()
        .map(|(offset, message, deadline)| crate::queue::Recovered {
            offset,
            message,
            redelivered: false,
            deadline,
            returns: Default::default(),
            dead_letter: None,
        })
        .collect(),
        3,
    );
    clock.advance(std::time::Duration::from_millis(10));
    q.tick();
    assert_eq!(
        q.stats().ready,
        2,
        "a deadline that passed while down expires at once"
    );
    clock.advance(std::time::Duration::from_secs(6));
    q.tick();
    assert_eq!(
        q.stats().ready,
        1,
        "the stored deadline, not the queue TTL from now"
    );
    clock.advance(std::time::Duration::from_secs(60));
    q.tick();
    assert_eq!(
        q.stats().ready,
        0,
        "no stored deadline: the queue TTL from the restart"
    );
    thread.shutdown().unwrap();
}

// ---- the compact paged tail (`PagedEntry`) ----

/// The number a test body starts with.
fn number(m: &Message) -> u32 {
    std::str::from_utf8(&m.body[..8]).unwrap().parse().unwrap()
}

/// Takes every ready message with basic.get (no ack); their numbers in delivery order.
fn get_all(q: &Arc<Queue>) -> Vec<u32> {
    let mut out = Vec::new();
    while let Some((d, _)) = q.get(false) {
        assert_eq!(
            d.message.body,
            body(number(&d.message), d.message.body.len())
        );
        out.push(number(&d.message));
    }
    out
}

fn with_props(i: u32, len: usize, properties: BasicProperties) -> Arc<Message> {
    Arc::new(Message::new(
        ShortString::from(""),
        ShortString::from("q"),
        properties,
        body(i, len),
    ))
}

fn stored_queue(
    args: FieldTable,
    paging: &StoreHandle,
    store: &StoreHandle,
) -> (Arc<Queue>, Arc<Clock>, QueueId) {
    let id = store.call(|s| s.open_queue("q")).unwrap().unwrap();
    let (q, clock) = queue_with_clock(true, args, paging);
    q.attach_store(QueueStore {
        handle: store.clone(),
        id,
    });
    (q, clock, id)
}

fn stored_live(store: &StoreHandle, id: QueueId) -> usize {
    store
        .call(move |s| s.live_messages(id).unwrap().len())
        .unwrap()
}

#[test]
fn fifo_holds_across_the_paged_tail_with_requeues_and_late_arrivals() {
    let (thread, paging) = paging_thread();
    let q = queue(false, FieldTable::new(), &paging);
    let n = 6_000u32;
    fill(&q, n);
    assert!(q.stats().paged_out > 3_000);
    // Take 100, requeue every other one: they go back before everything else.
    let taken: Vec<_> = (0..100).map(|_| q.get(true).unwrap().0).collect();
    let back: Vec<_> = taken
        .iter()
        .filter(|d| d.offset % 2 == 0)
        .map(|d| d.offset)
        .collect();
    q.requeue(&back, false);
    // Late arrivals queue up behind the paged tail even though memory has room now.
    for i in n..n + 100 {
        q.publish(message(i, size_of(i), false));
    }
    let got = get_all(&q);
    let expected: Vec<u32> = (0..100)
        .filter(|i| i % 2 == 0)
        .chain(100..n + 100)
        .collect();
    assert_eq!(got, expected);
    let stats = q.stats();
    assert_eq!((stats.ready, stats.paged_out, stats.ready_bytes), (0, 0, 0));
    assert_eq!(stats.memory_bytes, 0);
    assert_eq!(paging_live(&paging), 0);
    thread.shutdown().unwrap();
}

#[test]
fn priority_levels_each_keep_their_own_paged_tail() {
    let (thread, paging) = paging_thread();
    let mut args = FieldTable::new();
    args.insert("x-max-priority", FieldValue::ShortShortUInt(2));
    let q = queue(false, args, &paging);
    let prio = |i: u32| (i % 3) as u8;
    let n = 6_000u32;
    for i in 0..n {
        let props = BasicProperties {
            priority: Some(prio(i)),
            ..BasicProperties::default()
        };
        q.publish(with_props(i, size_of(i), props));
    }
    assert!(q.stats().paged_out > 3_000, "{:?}", q.stats());
    let got = get_all(&q);
    let expected: Vec<u32> = (0..3)
        .rev()
        .flat_map(|p| (0..n).filter(move |&i| prio(i) == p))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(paging_live(&paging), 0);
    thread.shutdown().unwrap();
}

#[test]
fn paged_heads_expire_with_per_message_and_zero_ttls() {
    let (thread, paging) = paging_thread();
    let (q, clock) = queue_with_clock(false, FieldTable::new(), &paging);
    let n = 6_000u32;
    // Every other message has its own TTL (only its body knows it once paged out).
    for i in 0..n {
        let props = BasicProperties {
            expiration: (i % 2 == 0).then(|| ShortString::from("60000")),
            ..BasicProperties::default()
        };
        q.publish(with_props(i, size_of(i), props));
    }
    assert!(q.stats().paged_out > 3_000);
    // TTL 0 behind a paged tail: it cannot be delivered at once, so it is dropped.
    let zero = BasicProperties {
        expiration: Some(ShortString::from("0")),
        ..BasicProperties::default()
    };
    q.publish(with_props(n, 1024, zero));
    assert_eq!(q.stats().ready, u64::from(n));
    paging.wait_durable().unwrap();
    assert_eq!(paging_live(&paging), q.stats().paged_out);
    clock.advance(std::time::Duration::from_secs(120));
    // A tick expires the heads up to the first message without a TTL: message 1.
    q.tick();
    assert_eq!(q.stats().ready, u64::from(n - 1));
    let got = get_all(&q);
    // Expiry happens at the head only (as in RabbitMQ), so an expired message behind a live
    // one is dropped when it reaches the head: only the odd ones are delivered.
    assert_eq!(got, (0..n).filter(|i| i % 2 == 1).collect::<Vec<_>>());
    assert_eq!(paging_live(&paging), 0);
    thread.shutdown().unwrap();
}

#[test]
fn queue_ttl_expires_a_durable_paged_tail_and_acks_the_store() {
    let (pthread, paging) = paging_thread();
    let (sthread, store) = paging_thread();
    let mut args = FieldTable::new();
    args.insert("x-message-ttl", FieldValue::LongInt(1_000));
    let (q, clock, id) = stored_queue(args, &paging, &store);
    let n = 6_000u32;
    for i in 0..n {
        q.publish(message(i, size_of(i), true));
    }
    assert!(q.stats().paged_out > 3_000);
    clock.advance(std::time::Duration::from_secs(2));
    q.tick();
    let stats = q.stats();
    assert_eq!(
        (stats.ready, stats.paged_out, stats.memory_bytes),
        (0, 0, 0)
    );
    assert_eq!(stored_live(&store, id), 0);
    pthread.shutdown().unwrap();
    sthread.shutdown().unwrap();
}

#[test]
fn drop_head_and_purge_with_a_durable_paged_tail() {
    let (pthread, paging) = paging_thread();
    let (sthread, store) = paging_thread();
    let mut args = FieldTable::new();
    args.insert("x-max-length", FieldValue::LongInt(2_500));
    args.insert(
        "x-overflow",
        FieldValue::LongString(LongString::from("drop-head")),
    );
    let (q, _clock, id) = stored_queue(args, &paging, &store);
    let n = 6_000u32;
    for i in 0..n {
        q.publish(message(i, size_of(i), true));
    }
    let stats = q.stats();
    assert_eq!(stats.ready, 2_500);
    assert!(stats.paged_out > 0, "{stats:?}");
    assert_eq!(stored_live(&store, id), 2_500);
    let first = q.get(false).unwrap().0;
    assert_eq!(number(&first.message), n - 2_500);
    assert_eq!(q.purge(), 2_499);
    let stats = q.stats();
    assert_eq!(
        (
            stats.ready,
            stats.paged_out,
            stats.memory_bytes,
            stats.ready_bytes
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(stored_live(&store, id), 0);
    pthread.shutdown().unwrap();
    sthread.shutdown().unwrap();
}

/// No paging store: transient messages that arrive behind a durable paged tail keep their
/// bodies in memory but their place in the tail, so FIFO holds.
#[test]
fn transient_messages_behind_a_paged_tail_without_paging_store_keep_their_place() {
    let (pthread, paging) = paging_thread();
    pthread.shutdown().unwrap();
    let (sthread, store) = paging_thread();
    let (q, _clock, id) = stored_queue(FieldTable::new(), &paging, &store);
    let n = 6_000u32;
    let persistent = |i: u32| i < n || i % 2 == 0;
    for i in 0..n + 20 {
        q.publish(message(i, size_of(i), persistent(i)));
    }
    let stats = q.stats();
    assert!(stats.paged_out > 3_000, "{stats:?}");
    assert_eq!(stats.ready, u64::from(n + 20));
    // The 10 held transient bodies count as memory.
    let held: u64 = (n..n + 20)
        .filter(|&i| !persistent(i))
        .map(|i| size_of(i) as u64)
        .sum();
    assert!(stats.memory_bytes >= held, "{stats:?}");
    let got = get_all(&q);
    assert_eq!(got, (0..n + 20).collect::<Vec<_>>());
    let stats = q.stats();
    assert_eq!(
        (stats.ready, stats.paged_out, stats.memory_bytes),
        (0, 0, 0)
    );
    assert_eq!(stored_live(&store, id), 0);
    // And the same with a purge instead of a drain.
    for i in 0..n + 20 {
        q.publish(message(i, size_of(i), persistent(i)));
    }
    assert_eq!(q.purge(), n + 20);
    assert_eq!(stored_live(&store, id), 0);
    assert_eq!(q.stats(), crate::queue::QueueStats::default());
    sthread.shutdown().unwrap();
}
