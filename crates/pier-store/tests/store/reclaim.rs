//! Disk use follows live data: fully acked segments go, queue delete and purge free space.

use pier_store::conformance::message;
use pier_store::{MessageStore, QueueRef};

use super::common::{dir_bytes, files_with, open};

fn fill(s: &mut dyn MessageStore, q: pier_store::QueueId, from: u64, n: u64) {
    for i in from..from + n {
        s.append(
            &[QueueRef {
                queue: q,
                offset: i,
            }],
            &message(i),
        )
        .unwrap();
    }
    s.commit().unwrap();
}

#[test]
fn acked_segments_are_deleted_and_stay_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let q = s.open_queue("q").unwrap();
    fill(&mut s, q, 0, 3000);
    let segs = files_with(dir.path(), "seg").len();
    assert!(segs >= 4, "{segs} segments");
    let full = dir_bytes(dir.path());
    s.ack(q, &(0..2990).collect::<Vec<_>>()).unwrap();
    s.commit().unwrap();
    assert!(files_with(dir.path(), "seg").len() <= 2);
    assert!(dir_bytes(dir.path()) < 2 * (64 << 10) + 8192, "was {full}");
    s.close().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.live_messages(q).unwrap().len(), 10);
    assert!(files_with(dir.path(), "seg").len() <= 3);
}

#[test]
fn a_slow_queue_pins_only_its_own_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let slow = s.open_queue("slow").unwrap();
    let fast = s.open_queue("fast").unwrap();
    s.append(
        &[QueueRef {
            queue: slow,
            offset: 0,
        }],
        &message(0),
    )
    .unwrap();
    fill(&mut s, fast, 0, 3000);
    s.ack(fast, &(0..3000).collect::<Vec<_>>()).unwrap();
    s.commit().unwrap();
    // The first segment (holding the slow message) and the active one are all that is left.
    assert_eq!(files_with(dir.path(), "seg").len(), 2);
    s.close().unwrap();
    drop(s);
    let mut s = open(dir.path());
    let slow = s
        .queues()
        .into_iter()
        .find(|q| q.name == "slow")
        .unwrap()
        .id;
    assert_eq!(s.read(slow, 0).unwrap(), message(0));
    let fast = s
        .queues()
        .into_iter()
        .find(|q| q.name == "fast")
        .unwrap()
        .id;
    assert!(
        s.live_messages(fast).unwrap().is_empty(),
        "acks in ack files survive"
    );
}

#[test]
fn delete_and_purge_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = s.open_queue("a").unwrap();
    let b = s.open_queue("b").unwrap();
    fill(&mut s, a, 0, 2000);
    let one = dir_bytes(dir.path());
    fill(&mut s, b, 0, 2000);
    assert_eq!(s.delete_queue(a).unwrap(), 2000);
    s.commit().unwrap();
    // a's segments held only a's messages: they are gone.
    let after_delete = dir_bytes(dir.path());
    assert!(after_delete < one * 3 / 2, "{after_delete} vs {one}");
    assert_eq!(s.purge_queue(b).unwrap(), 2000);
    s.commit().unwrap();
    // Only the active segment is left (it may still hold dead records until it rotates).
    assert_eq!(files_with(dir.path(), "seg").len(), 1);
    assert!(dir_bytes(dir.path()) < (64 << 10) + 8192);
    s.close().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.queues().len(), 1);
    assert_eq!(s.stats().live_messages, 0);
}

#[test]
fn fan_out_segment_lives_until_every_queue_acked() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = s.open_queue("a").unwrap();
    let b = s.open_queue("b").unwrap();
    for i in 0..3000 {
        s.append(
            &[
                QueueRef {
                    queue: a,
                    offset: i,
                },
                QueueRef {
                    queue: b,
                    offset: i,
                },
            ],
            &message(i),
        )
        .unwrap();
    }
    s.commit().unwrap();
    let segs = files_with(dir.path(), "seg").len();
    s.ack(a, &(0..3000).collect::<Vec<_>>()).unwrap();
    s.commit().unwrap();
    assert_eq!(
        files_with(dir.path(), "seg").len(),
        segs,
        "b still holds every record"
    );
    s.ack(b, &(0..3000).collect::<Vec<_>>()).unwrap();
    s.commit().unwrap();
    assert_eq!(files_with(dir.path(), "seg").len(), 1);
}

/// One record per message for three queues (each with its own offsets): partial acks, a purge
/// of one queue, a reopen; the segments go only when the last reference is acked.
#[test]
fn shared_records_partial_acks_purge_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = s.open_queue("a").unwrap();
    let b = s.open_queue("b").unwrap();
    let c = s.open_queue("c").unwrap();
    for i in 0..3000u64 {
        let refs = [
            QueueRef {
                queue: a,
                offset: i,
            },
            QueueRef {
                queue: b,
                offset: 10 + 2 * i,
            },
            QueueRef {
                queue: c,
                offset: 10_000 + i,
            },
        ];
        s.append(&refs, &message(i)).unwrap();
    }
    s.commit().unwrap();
    let segs = files_with(dir.path(), "seg").len();
    assert!(segs >= 4, "{segs} segments");
    assert_eq!(s.stats().live_messages, 9000);
    s.ack(a, &(0..1800).collect::<Vec<_>>()).unwrap();
    assert_eq!(s.purge_queue(b).unwrap(), 3000);
    s.commit().unwrap();
    assert_eq!(
        files_with(dir.path(), "seg").len(),
        segs,
        "c holds every record"
    );
    s.close().unwrap();
    drop(s);

    let mut s = open(dir.path());
    let a = s.open_queue("a").unwrap();
    let b = s.open_queue("b").unwrap();
    let c = s.open_queue("c").unwrap();
    let offsets = |s: &pier_store::SegmentStore, q| -> Vec<u64> {
        s.live_messages(q)
            .unwrap()
            .iter()
            .map(|m| m.offset)
            .collect()
    };
    assert_eq!(offsets(&s, a), (1800..3000).collect::<Vec<_>>());
    assert!(offsets(&s, b).is_empty());
    assert_eq!(offsets(&s, c), (10_000..13_000).collect::<Vec<_>>());
    assert_eq!(s.read(c, 12_100).unwrap(), message(2100));
    assert_eq!(s.read(a, 2100).unwrap(), message(2100));
    // c acks the first 1800: the segments holding only records a acked go.
    s.ack(c, &(10_000..11_800).collect::<Vec<_>>()).unwrap();
    s.commit().unwrap();
    let left = files_with(dir.path(), "seg").len();
    assert!(left < segs, "{left} of {segs}");
    s.ack(a, &(1800..3000).collect::<Vec<_>>()).unwrap();
    s.ack(c, &(11_800..13_000).collect::<Vec<_>>()).unwrap();
    s.commit().unwrap();
    assert_eq!(
        files_with(dir.path(), "seg").len(),
        1,
        "only the active segment"
    );
}
