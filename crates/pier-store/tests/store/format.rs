//! Store format 1 (a Pier before publisher-side encoding) is read; new segments are format 2.
//! The fixture `tests/fixtures/v1-store` was written by the format-1 engine (git 2089d0d):
//! queue `a` with offsets 0..10 and acks of 0..=2, a delivered mark at 5; queue `b` with 0..5;
//! one fan-out record for `a` (offset 10) and `b` (offset 5), body "fan"; a queue `gone`
//! with two messages, deleted.

use std::path::Path;

use pier_store::format::{self, kind, FILE_HEADER_LEN, SEGMENT_MAGIC};
use pier_store::{MessageStore, QueueRef, SegmentStore, ShardConfig, ShardedStore, StoredMessage};

use super::common::{files_with, small_config};

fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-store");
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn body(s: &mut SegmentStore, q: pier_store::QueueId, offset: u64) -> String {
    String::from_utf8(s.read(q, offset).unwrap().body.to_vec()).unwrap()
}

fn check_fixture_contents(s: &mut SegmentStore) {
    let ids: std::collections::HashMap<String, _> =
        s.queues().into_iter().map(|q| (q.name, q.id)).collect();
    assert_eq!(ids.len(), 2, "the deleted queue stays deleted: {ids:?}");
    let (a, b) = (ids["a"], ids["b"]);
    let mut live_a = s.live_messages(a).unwrap();
    live_a.retain(|l| l.offset <= 10); // what was appended after the fixture aside
    assert_eq!(
        live_a.iter().map(|l| l.offset).collect::<Vec<_>>(),
        (3..=10).collect::<Vec<_>>()
    );
    for l in &live_a {
        assert_eq!(l.redelivered, l.offset <= 5, "offset {}", l.offset);
    }
    for o in 3..10 {
        assert_eq!(body(s, a, o), format!("a-{o}"));
    }
    assert_eq!(body(s, a, 10), "fan");
    assert_eq!(body(s, b, 5), "fan");
    assert_eq!(body(s, b, 4), "b-4");
    let m = s.read(a, 3).unwrap();
    assert_eq!(
        (m.exchange.as_str(), m.routing_key.as_str()),
        ("amq.direct", "key")
    );
    assert_eq!(&m.raw_properties[..], &[0x10, 0x00, 0x02]);
}

#[test]
fn a_format_1_store_is_recovered_and_continued_in_format_2() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let mut s = SegmentStore::open(dir.path(), small_config()).unwrap();
    assert_eq!(s.recovery_report().corrupt_regions, 0);
    assert_eq!(s.recovery_report().torn_bytes, 0);
    check_fixture_contents(&mut s);
    let a = s.queues().into_iter().find(|q| q.name == "a").unwrap();
    assert_eq!(a.next_offset, 11);
    let m = StoredMessage::new(
        "x".into(),
        "k".into(),
        bytes::Bytes::from_static(&[0, 0]),
        bytes::Bytes::from_static(b"new"),
    );
    s.append(
        &[QueueRef {
            queue: a.id,
            offset: 11,
        }],
        &m,
    )
    .unwrap();
    s.close().unwrap();
    drop(s);

    // The old segment is untouched; the new one is version 2 with a type-0x03 record.
    let segs = files_with(dir.path(), "seg");
    assert_eq!(segs.len(), 2, "{segs:?}");
    let old = std::fs::read(&segs[0]).unwrap();
    assert_eq!(&old[..8], SEGMENT_MAGIC);
    assert_eq!(old[8], 1);
    let new = std::fs::read(&segs[1]).unwrap();
    assert_eq!(new[8], format::SEGMENT_VERSION as u8);
    assert_eq!(new[FILE_HEADER_LEN + 8], kind::MESSAGE);

    let mut s = SegmentStore::open(dir.path(), small_config()).unwrap();
    check_fixture_contents(&mut s);
    let a = s.queues().into_iter().find(|q| q.name == "a").unwrap().id;
    let b = s.queues().into_iter().find(|q| q.name == "b").unwrap().id;
    assert_eq!(body(&mut s, a, 11), "new");
    // Acking every format-1 reference reclaims the old segment.
    s.ack(a, &(3..=10).collect::<Vec<_>>()).unwrap();
    s.ack(b, &(0..=5).collect::<Vec<_>>()).unwrap();
    s.commit().unwrap();
    let segs = files_with(dir.path(), "seg");
    assert!(
        segs.iter().all(|p| std::fs::read(p).unwrap()[8] == 2),
        "the format-1 segment is gone: {segs:?}"
    );
    assert_eq!(s.live_messages(a).unwrap().len(), 1);
}

#[test]
fn a_format_1_store_is_shard_0_of_a_sharded_store() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let store = ShardedStore::open(
        dir.path(),
        ShardConfig {
            shards: 3,
            store: small_config(),
            ..ShardConfig::default()
        },
    )
    .unwrap();
    let shards = store.shards();
    assert_eq!(shards.len(), 3);
    assert_eq!((shards.home("a"), shards.home("b")), (Some(0), Some(0)));
    let listed = shards.queues().unwrap();
    assert_eq!(listed.len(), 2);
    // New queues go to the emptier shards first.
    let (h1, _) = shards.open_queue("c").unwrap();
    let (h2, _) = shards.open_queue("d").unwrap();
    assert!(!h1.same_store(&h2));
    assert_ne!(shards.home("c"), Some(0));
    assert_ne!(shards.home("d"), Some(0));
    store.shutdown().unwrap();
    let mut s = SegmentStore::open(dir.path(), small_config()).unwrap();
    check_fixture_contents(&mut s);
}
