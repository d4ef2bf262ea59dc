//! Store costs: appending 1 KiB messages with one commit per batch (the group-commit shape)
//! under `SyncPolicy::Never` (CPU cost of the format; fsync latency is the disk's) and reading
//! them back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pier_store::{MessageStore, QueueRef, SegmentStore, StoreConfig, StoredMessage, SyncPolicy};
use pier_wire::ShortString;

fn message() -> StoredMessage {
    StoredMessage {
        exchange: ShortString::from("amq.direct"),
        routing_key: ShortString::from("orders"),
        raw_properties: Bytes::from_static(&[0x10, 0x00, 0x02]),
        body: Bytes::from(vec![5u8; 1024]),
    }
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        sync_policy: SyncPolicy::Never,
        ..StoreConfig::default()
    };
    let mut store = SegmentStore::open(dir.path(), config).unwrap();
    let q = store.open_queue("bench").unwrap();
    let m = message();
    let mut offset = 0u64;
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(100));
    g.bench_function("append_1KiB_x100_commit", |b| {
        b.iter(|| {
            for _ in 0..100 {
                store.append(&[QueueRef { queue: q, offset }], &m).unwrap();
                offset += 1;
            }
            black_box(store.commit().unwrap());
        });
    });
    g.bench_function("ack_x100", |b| {
        let mut next = 0u64;
        b.iter(|| {
            let offsets: Vec<u64> = (next..next + 100).collect();
            next += 100;
            black_box(store.ack(q, &offsets).unwrap());
        });
    });
    g.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
