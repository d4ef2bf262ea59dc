//! Store engine throughput: W writer threads append 1 KiB persistent messages, each to its own
//! queue, with a window of unconfirmed appends per writer (a publisher with confirms); the
//! figure is confirmed appends per second. Not criterion: the figure is a rate under
//! contention, not the time of one call.
//!
//! ```text
//! cargo bench -p pier-store --bench throughput -- [--writers 16] [--shards 1] [--secs 5]
//!     [--size 1024] [--window 1000] [--fsync never|always] [--dir /dev/shm]
//! ```
//!
//! `--fsync never` (default) takes the disk out (every batch is still written with pwrite);
//! `--dir /dev/shm` puts the files on tmpfs. `--shards N` opens a `ShardedStore` of N shards
//! (the writers' queues are spread over them as the broker's are: fewest queues first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pier_store::{QueueRef, ShardConfig, ShardedStore, StoreConfig, StoredMessage, SyncPolicy};

struct Args {
    writers: usize,
    shards: usize,
    secs: f64,
    size: usize,
    window: u64,
    fsync: SyncPolicy,
    dir: Option<String>,
    /// Append exactly this many per writer and stop (for instruction counts under callgrind).
    count: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        writers: 16,
        shards: 1,
        secs: 5.0,
        size: 1024,
        window: 1000,
        fsync: SyncPolicy::Never,
        dir: None,
        count: None,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--writers" => a.writers = val.parse().unwrap(),
            "--shards" => a.shards = val.parse().unwrap(),
            "--secs" => a.secs = val.parse().unwrap(),
            "--size" => a.size = val.parse().unwrap(),
            "--window" => a.window = val.parse().unwrap(),
            "--fsync" => {
                a.fsync = match val.as_str() {
                    "always" => SyncPolicy::Always,
                    _ => SyncPolicy::Never,
                }
            }
            "--dir" => a.dir = Some(val),
            "--count" => a.count = Some(val.parse().unwrap()),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn main() {
    let a = args();
    let base = match &a.dir {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let store = ShardedStore::open(
        base.path(),
        ShardConfig {
            shards: a.shards,
            store: StoreConfig {
                sync_policy: a.fsync,
                ..StoreConfig::default()
            },
            ..ShardConfig::default()
        },
    )
    .unwrap();
    let shards = store.shards();
    let confirmed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let message = StoredMessage::new(
        "amq.direct".into(),
        "bench".into(),
        Bytes::from_static(&[0x10, 0x00, 0x02]),
        Bytes::from(vec![b'x'; a.size]),
    );
    let workers: Vec<_> = (0..a.writers)
        .map(|w| {
            let (h, q) = shards.open_queue(&format!("q{w}")).unwrap();
            let (confirmed, stop, m, window, count) = (
                Arc::clone(&confirmed),
                Arc::clone(&stop),
                message.clone(),
                a.window,
                a.count,
            );
            std::thread::spawn(move || {
                // Unconfirmed appends of this writer; it parks when the window is full and is
                // unparked once half of it has been confirmed (as a publisher waits for
                // confirms), so waiting writers do not burn the cores the store needs.
                let me = std::thread::current();
                let in_flight = Arc::new(AtomicU64::new(0));
                let parked = Arc::new(AtomicBool::new(false));
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| sent < c) {
                    if in_flight.load(Ordering::Acquire) >= window {
                        parked.store(true, Ordering::Release);
                        if in_flight.load(Ordering::Acquire) >= window {
                            std::thread::park_timeout(Duration::from_millis(50));
                        }
                        parked.store(false, Ordering::Release);
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::AcqRel);
                    let (f, p, t, c) = (
                        Arc::clone(&in_flight),
                        Arc::clone(&parked),
                        me.clone(),
                        Arc::clone(&confirmed),
                    );
                    h.append(
                        vec![QueueRef {
                            queue: q,
                            offset: sent,
                        }],
                        m.clone(),
                        move |r| {
                            assert!(r.is_ok());
                            c.fetch_add(1, Ordering::Relaxed);
                            let left = f.fetch_sub(1, Ordering::AcqRel) - 1;
                            if left == window / 2 && p.load(Ordering::Acquire) {
                                t.unpark();
                            }
                        },
                    )
                    .unwrap();
                    sent += 1;
                }
            })
        })
        .collect();
    if let Some(c) = a.count {
        for w in workers {
            w.join().unwrap();
        }
        shards.wait_durable().unwrap();
        let n = confirmed.load(Ordering::Relaxed);
        assert_eq!(n, c * a.writers as u64);
        store.shutdown().unwrap();
        println!("store: {n} appends confirmed");
        return;
    }
    // Warm-up, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let c0 = confirmed.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.secs));
    let n = confirmed.load(Ordering::Relaxed) - c0;
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let syncs: u64 = shards
        .handles()
        .iter()
        .map(|h| h.call(|s| s.stats().syncs).unwrap())
        .sum();
    store.shutdown().unwrap();
    let rate = n as f64 / took.as_secs_f64();
    println!(
        "store throughput: writers {} shards {} size {} fsync {:?}: {:.0} confirmed appends/s ({:.0} MiB/s), {} fdatasyncs",
        a.writers,
        a.shards,
        a.size,
        a.fsync,
        rate,
        rate * a.size as f64 / (1 << 20) as f64,
        syncs
    );
}
