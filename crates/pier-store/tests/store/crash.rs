//! Crash-style tests: the store is dropped without close (the process "dies"), and files are
//! left the way a crash mid-write leaves them.

use std::io::Write;

use pier_store::conformance::message;
use pier_store::{MessageStore, QueueRef, SegmentStore, StoreConfig};

use super::common::{files_with, open, small_config};

#[test]
fn unflushed_appends_vanish_flushed_ones_survive_a_process_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SegmentStore::open(
        dir.path(),
        StoreConfig {
            write_buffer: 4096, // written out to the OS every few messages, never synced
            ..small_config()
        },
    )
    .unwrap();
    let q = s.open_queue("q").unwrap();
    for i in 0..100 {
        s.append(
            &[QueueRef {
                queue: q,
                offset: i,
            }],
            &message(i),
        )
        .unwrap();
    }
    if s.flushed_seq() == s.last_seq() {
        // The 100th append happened to trigger a write: buffer one more.
        s.append(
            &[QueueRef {
                queue: q,
                offset: 100,
            }],
            &message(100),
        )
        .unwrap();
    }
    let flushed = s.flushed_seq().0;
    assert!(
        flushed > 0 && flushed < s.last_seq().0,
        "some written out, some still buffered: {flushed}"
    );
    drop(s);
    let mut s = open(dir.path());
    let q = s.queues()[0].id;
    let got: Vec<u64> = s
        .live_messages(q)
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect();
    // Written to the OS = survives a process crash (not a power cut: that needs the sync).
    assert_eq!(got, (0..flushed).collect::<Vec<_>>());
    for o in got {
        assert_eq!(s.read(q, o).unwrap(), message(o));
    }
}

#[test]
fn a_half_written_record_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let q = s.open_queue("q").unwrap();
    for i in 0..10 {
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
    drop(s);
    // The crash cut the next record after its first 20 bytes.
    let seg = files_with(dir.path(), "seg").pop().unwrap();
    let good_len = std::fs::metadata(&seg).unwrap().len();
    let mut rec = Vec::new();
    pier_store::format::encode(&mut rec, pier_store::format::kind::MESSAGE, |o| {
        o.extend_from_slice(&[1u8; 100])
    });
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&rec[..20])
        .unwrap();
    let mut s = open(dir.path());
    assert_eq!(s.recovery_report().torn_bytes, 20);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    let q = s.queues()[0].id;
    assert_eq!(s.live_messages(q).unwrap().len(), 10);
    s.append(
        &[QueueRef {
            queue: q,
            offset: 10,
        }],
        &message(10),
    )
    .unwrap();
    s.close().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.live_messages(q).unwrap().len(), 11);
}

#[test]
fn repeated_crashes_never_lose_committed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut committed = Vec::new();
    let mut next = 0u64;
    for round in 0..8u64 {
        let mut s = open(dir.path());
        let q = s.open_queue("q").unwrap();
        let live: Vec<u64> = s
            .live_messages(q)
            .unwrap()
            .iter()
            .map(|m| m.offset)
            .collect();
        assert_eq!(
            live, committed,
            "round {round}: exactly the committed messages, in order"
        );
        for &o in &live {
            assert_eq!(s.read(q, o).unwrap(), message(o));
        }
        next = next.max(s.queues()[0].next_offset);
        for _ in 0..50 {
            s.append(
                &[QueueRef {
                    queue: q,
                    offset: next,
                }],
                &message(next),
            )
            .unwrap();
            committed.push(next);
            next += 1;
        }
        s.commit().unwrap();
        for _ in 0..(round * 7) {
            s.append(
                &[QueueRef {
                    queue: q,
                    offset: next,
                }],
                &message(next),
            )
            .unwrap();
            next += 1;
        }
        // Dropped with appends in the buffer: a crash.
    }
}
