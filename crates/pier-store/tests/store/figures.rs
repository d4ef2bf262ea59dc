//! Measured figures quoted in docs/storage.md. They assert loose bounds and print the numbers:
//! `cargo test -p pier-store --release --test store figures -- --nocapture --test-threads=1`.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pier_store::{
    IndexEntry, MessageStore, QueueIndex, QueueRef, SegmentStore, StoreConfig, StoreThread,
    StoredMessage, SyncPolicy, ThreadConfig,
};

fn msg(size: usize) -> StoredMessage {
    StoredMessage::new(
        "amq.direct".into(),
        "bench".into(),
        Bytes::from_static(&[0x10, 0x00, 0x02]),
        Bytes::from(vec![b'x'; size]),
    )
}

#[test]
fn index_entry_is_20_bytes_and_1m_entries_cost_under_40_bytes_each() {
    assert_eq!(std::mem::size_of::<IndexEntry>(), 20);
    let mut q = QueueIndex::new();
    for i in 0..1_000_000u64 {
        q.push(IndexEntry::new(
            i,
            (i >> 15) as u32,
            (i as u32 & 0x7fff) * 1024,
            1050,
        ));
    }
    let per = q.heap_bytes() as f64 / 1e6;
    println!(
        "index: 1M entries, {} heap bytes, {per:.1} bytes/message",
        q.heap_bytes()
    );
    assert!(per < 40.0, "{per} bytes per message");
}

#[test]
fn recovery_of_100k_messages() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000u64;
    {
        let mut s = SegmentStore::open(dir.path(), StoreConfig::default()).unwrap();
        let q = s.open_queue("q").unwrap();
        let m = msg(100);
        for i in 0..n {
            s.append(
                &[QueueRef {
                    queue: q,
                    offset: i,
                }],
                &m,
            )
            .unwrap();
        }
        s.close().unwrap();
    }
    let t = Instant::now();
    let s = SegmentStore::open(dir.path(), StoreConfig::default()).unwrap();
    let took = t.elapsed();
    let r = s.recovery_report();
    let st = s.stats();
    assert_eq!(st.live_messages, n);
    println!(
        "recovery: {n} messages, {} MiB in {:?}: {:.0} msgs/s, {:.0} MiB/s; index {} bytes = {:.1} bytes/message",
        r.bytes_scanned >> 20,
        took,
        n as f64 / took.as_secs_f64(),
        r.bytes_scanned as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        st.index_bytes,
        st.index_bytes as f64 / n as f64,
    );
    assert!((st.index_bytes as f64 / n as f64) < 40.0);
}

#[test]
fn group_commit_throughput_and_fsync_latency() {
    // Raw fsync latency on this filesystem: 1 KiB pwrite + fdatasync.
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let mut lat = Vec::new();
    for i in 0..50u64 {
        f.write_all_at(&[7u8; 1024], i * 1024).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "fdatasync: p50 {:?}, p90 {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        lat[lat.len() - 1]
    );

    // 4 publisher threads, 1 KiB persistent messages, SyncPolicy::Always, confirm on durable.
    let store = SegmentStore::open(
        dir.path().join("msgs"),
        StoreConfig {
            sync_policy: SyncPolicy::Always,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let t = StoreThread::spawn(Box::new(store), ThreadConfig::default()).unwrap();
    let h = t.handle();
    let queues: Vec<_> = (0..4)
        .map(|i| {
            h.call(move |s| s.open_queue(&format!("q{i}")))
                .unwrap()
                .unwrap()
        })
        .collect();
    let per_thread = 5_000u64;
    let confirmed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = queues
        .into_iter()
        .map(|q| {
            let h = h.clone();
            let confirmed = Arc::clone(&confirmed);
            std::thread::spawn(move || {
                let m = msg(1024);
                for i in 0..per_thread {
                    let c = Arc::clone(&confirmed);
                    h.append(
                        vec![QueueRef {
                            queue: q,
                            offset: i,
                        }],
                        m.clone(),
                        move |r| {
                            if r.is_ok() {
                                c.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    h.wait_durable().unwrap();
    let took = start.elapsed();
    let total = per_thread * 4;
    let stats = h.call(|s| s.stats()).unwrap();
    assert_eq!(confirmed.load(Ordering::Relaxed), total);
    println!(
        "group commit: {total} x 1 KiB confirmed in {took:?} = {:.0} msgs/s, {:.1} MiB/s, {} fdatasyncs ({:.0} messages per sync)",
        total as f64 / took.as_secs_f64(),
        (total * 1024) as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        stats.syncs,
        total as f64 / stats.syncs.max(1) as f64,
    );
    assert!(stats.syncs < total / 2, "syncs are shared by many appends");

    // One publisher with at most 128 unconfirmed messages (a client using confirms with a
    // window), then one that waits for every confirm (the latency floor: one fsync).
    let q = h.call(|s| s.open_queue("window")).unwrap().unwrap();
    let inflight = Arc::new((std::sync::Mutex::new(0u32), std::sync::Condvar::new()));
    let syncs_before = stats.syncs;
    let n = 20_000u64;
    let m = msg(1024);
    let start = Instant::now();
    for i in 0..n {
        {
            let (lock, cv) = &*inflight;
            let mut g = lock.lock().unwrap();
            while *g >= 128 {
                g = cv.wait(g).unwrap();
            }
            *g += 1;
        }
        let inf = Arc::clone(&inflight);
        h.append(
            vec![QueueRef {
                queue: q,
                offset: i,
            }],
            m.clone(),
            move |r| {
                assert!(r.is_ok());
                let (lock, cv) = &*inf;
                *lock.lock().unwrap() -= 1;
                cv.notify_one();
            },
        )
        .unwrap();
    }
    h.wait_durable().unwrap();
    let took = start.elapsed();
    let syncs = h.call(|s| s.stats().syncs).unwrap() - syncs_before;
    println!(
        "windowed publisher (128 in flight): {n} x 1 KiB in {took:?} = {:.0} msgs/s, {syncs} fdatasyncs ({:.0} per sync)",
        n as f64 / took.as_secs_f64(),
        n as f64 / syncs.max(1) as f64
    );

    let mut lat: Vec<Duration> = Vec::new();
    for i in n..n + 200 {
        let t0 = Instant::now();
        h.append(
            vec![QueueRef {
                queue: q,
                offset: i,
            }],
            m.clone(),
            |_| {},
        )
        .unwrap();
        h.wait_durable().unwrap();
        lat.push(t0.elapsed());
    }
    lat.sort();
    println!(
        "confirm latency, one message at a time: p50 {:?}, p99 {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    t.shutdown().unwrap();
}
