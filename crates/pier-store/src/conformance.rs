//! The contract of [`MessageStore`], as a suite every backend runs (openraft's
//! `testing::log::Suite` idea). A backend supplies a [`Backend`]: a way to get a fresh, empty
//! environment and to (re)open the store in it; "reopen after drop" is how restarts and crashes
//! are expressed, so the same tests cover recovery for every backend.
//!
//! ```text
//!  for each test: backend.fresh(); test(backend)   // panics (assert!) on a violation
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use pier_wire::ShortString;

use crate::error::StoreError;
use crate::message::StoredMessage;
use crate::store::{MessageStore, QueueId, QueueRef, Returns, Seq};

/// What the suite needs from a backend.
pub trait Backend {
    /// Switches to a fresh, empty environment (a new directory, a new memory disk).
    fn fresh(&mut self);
    /// Opens the store of the current environment. Called again after the previous instance
    /// was closed or just dropped (a crash).
    fn open(&mut self) -> Box<dyn MessageStore>;
}

type Test = fn(&mut dyn Backend);

/// Every test of the suite, by name.
pub const TESTS: &[(&str, Test)] = &[
    ("queues_are_registered_once", queues_are_registered_once),
    ("append_is_readable_at_once", append_is_readable_at_once),
    ("commit_makes_appends_durable", commit_makes_appends_durable),
    ("invalid_appends_are_refused", invalid_appends_are_refused),
    ("acks_remove_messages", acks_remove_messages),
    (
        "fan_out_references_are_independent",
        fan_out_references_are_independent,
    ),
    ("restart_keeps_order_and_acks", restart_keeps_order_and_acks),
    ("crash_loses_only_unflushed", crash_loses_only_unflushed),
    (
        "delivered_marks_redeliver_after_restart",
        delivered_marks_redeliver_after_restart,
    ),
    (
        "purge_empties_and_keeps_counting",
        purge_empties_and_keeps_counting,
    ),
    ("delete_forgets_the_queue", delete_forgets_the_queue),
    (
        "message_notes_survive_a_restart_until_acked",
        message_notes_survive_a_restart_until_acked,
    ),
    ("stats_count_live_messages", stats_count_live_messages),
];

/// Runs the whole suite against `backend`.
pub fn run_suite(backend: &mut dyn Backend) {
    for (name, test) in TESTS {
        eprintln!("conformance: {name}");
        backend.fresh();
        test(backend);
    }
}

/// A message whose body names it, so misplaced reads are caught.
pub fn message(n: u64) -> StoredMessage {
    StoredMessage::new(
        ShortString::from("amq.topic"),
        ShortString::try_from_string(format!("key.{n}")).unwrap(),
        Bytes::from_static(&[0x10, 0x00, 0x02]),
        Bytes::from(format!("body {n} {}", "x".repeat((n % 50) as usize))),
    )
}

fn put(s: &mut dyn MessageStore, q: QueueId, offset: u64) -> Seq {
    s.append(&[QueueRef { queue: q, offset }], &message(offset))
        .unwrap()
}

fn offsets(s: &dyn MessageStore, q: QueueId) -> Vec<u64> {
    s.live_messages(q)
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect()
}

fn reopen_queue(s: &mut dyn MessageStore, name: &str) -> QueueId {
    s.queues()
        .into_iter()
        .find(|q| q.name == name)
        .map(|q| q.id)
        .unwrap_or_else(|| panic!("queue {name} not recovered"))
}

fn queues_are_registered_once(b: &mut dyn Backend) {
    let mut s = b.open();
    let a = s.open_queue("a").unwrap();
    let a2 = s.open_queue("a").unwrap();
    let c = s.open_queue("c").unwrap();
    assert_eq!(a, a2);
    assert_ne!(a, c);
    drop(s);
    let s = b.open();
    let mut names: Vec<String> = s.queues().into_iter().map(|q| q.name).collect();
    names.sort();
    assert_eq!(names, vec!["a", "c"], "registration is durable at once");
}

fn append_is_readable_at_once(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    let s1 = put(s.as_mut(), q, 0);
    let s2 = put(s.as_mut(), q, 1);
    assert!(s2 > s1);
    assert_eq!(s.read(q, 0).unwrap(), message(0));
    assert_eq!(s.read(q, 1).unwrap(), message(1));
    assert!(matches!(s.read(q, 2), Err(StoreError::NotFound { .. })));
}

fn commit_makes_appends_durable(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    let seq = put(s.as_mut(), q, 0);
    assert_eq!(s.last_seq(), seq);
    let durable = s.commit().unwrap();
    assert!(durable >= seq);
    assert_eq!(s.durable_seq(), durable);
    assert!(s.flushed_seq() >= seq);
    assert_eq!(
        s.sync().unwrap(),
        durable,
        "sync with nothing new keeps the watermark"
    );
}

fn invalid_appends_are_refused(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    put(s.as_mut(), q, 5);
    let r = s.append(
        &[QueueRef {
            queue: q,
            offset: 5,
        }],
        &message(5),
    );
    assert!(matches!(r, Err(StoreError::OffsetNotIncreasing { .. })));
    let r = s.append(
        &[QueueRef {
            queue: q,
            offset: 3,
        }],
        &message(3),
    );
    assert!(matches!(r, Err(StoreError::OffsetNotIncreasing { .. })));
    let r = s.append(&[], &message(6));
    assert!(matches!(r, Err(StoreError::BadReferences)));
    let r = s.append(
        &[
            QueueRef {
                queue: q,
                offset: 6,
            },
            QueueRef {
                queue: q,
                offset: 7,
            },
        ],
        &message(6),
    );
    assert!(matches!(r, Err(StoreError::BadReferences)));
    let r = s.append(
        &[QueueRef {
            queue: QueueId(999),
            offset: 0,
        }],
        &message(0),
    );
    assert!(matches!(r, Err(StoreError::UnknownQueue(_))));
    // A refused append changes nothing.
    assert_eq!(offsets(s.as_ref(), q), vec![5]);
    put(s.as_mut(), q, 6);
    assert_eq!(offsets(s.as_ref(), q), vec![5, 6]);
}

fn acks_remove_messages(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    for i in 0..10 {
        put(s.as_mut(), q, i);
    }
    assert_eq!(
        s.ack(q, &[0, 3, 3, 42]).unwrap(),
        2,
        "unknown and repeated acks count 0"
    );
    assert_eq!(s.ack(q, &[3]).unwrap(), 0);
    assert!(matches!(s.read(q, 3), Err(StoreError::NotFound { .. })));
    assert_eq!(offsets(s.as_ref(), q), vec![1, 2, 4, 5, 6, 7, 8, 9]);
}

fn fan_out_references_are_independent(b: &mut dyn Backend) {
    let mut s = b.open();
    let q1 = s.open_queue("q1").unwrap();
    let q2 = s.open_queue("q2").unwrap();
    let m = message(7);
    s.append(
        &[
            QueueRef {
                queue: q1,
                offset: 0,
            },
            QueueRef {
                queue: q2,
                offset: 100,
            },
        ],
        &m,
    )
    .unwrap();
    s.commit().unwrap();
    assert_eq!(s.ack(q1, &[0]).unwrap(), 1);
    assert!(s.read(q1, 0).is_err());
    assert_eq!(s.read(q2, 100).unwrap(), m);
    s.close().unwrap();
    drop(s);
    let mut s = b.open();
    let q1 = reopen_queue(s.as_mut(), "q1");
    let q2 = reopen_queue(s.as_mut(), "q2");
    assert!(offsets(s.as_ref(), q1).is_empty());
    assert_eq!(offsets(s.as_ref(), q2), vec![100]);
    assert_eq!(s.read(q2, 100).unwrap(), m);
}

fn restart_keeps_order_and_acks(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    for i in 0..200 {
        put(s.as_mut(), q, i * 2);
        if i % 17 == 0 {
            s.commit().unwrap();
        }
    }
    let acked: Vec<u64> = (0..200).map(|i| i * 2).filter(|o| o % 3 == 0).collect();
    s.ack(q, &acked).unwrap();
    s.close().unwrap();
    drop(s);
    let mut s = b.open();
    let q = reopen_queue(s.as_mut(), "q");
    let expect: Vec<u64> = (0..200).map(|i| i * 2).filter(|o| o % 3 != 0).collect();
    assert_eq!(
        offsets(s.as_ref(), q),
        expect,
        "FIFO order and acks survive a restart"
    );
    for &o in &expect {
        assert_eq!(s.read(q, o).unwrap(), message(o));
    }
    let info = s.queues().into_iter().find(|i| i.id == q).unwrap();
    assert!(info.next_offset >= 399, "offsets are never reused");
    assert_eq!(info.messages, expect.len() as u64);
    let r = s.append(
        &[QueueRef {
            queue: q,
            offset: 398,
        }],
        &message(1),
    );
    assert!(matches!(r, Err(StoreError::OffsetNotIncreasing { .. })));
}

fn crash_loses_only_unflushed(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    for i in 0..50 {
        put(s.as_mut(), q, i);
    }
    let durable = s.commit().unwrap();
    assert!(durable >= Seq(50));
    for i in 50..60 {
        put(s.as_mut(), q, i);
    }
    drop(s); // no flush, no close
    let mut s = b.open();
    let q = reopen_queue(s.as_mut(), "q");
    let got = offsets(s.as_ref(), q);
    assert!(got.len() >= 50, "every committed message survives");
    assert_eq!(&got[..50], &(0..50).collect::<Vec<_>>()[..]);
    for o in got {
        assert_eq!(
            s.read(q, o).unwrap(),
            message(o),
            "nothing recovered is corrupt"
        );
    }
}

fn delivered_marks_redeliver_after_restart(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    for i in 0..10 {
        put(s.as_mut(), q, i);
    }
    s.mark_delivered(q, 4).unwrap();
    s.ack(q, &[0, 1]).unwrap();
    s.close().unwrap();
    drop(s);
    let mut s = b.open();
    let q = reopen_queue(s.as_mut(), "q");
    let live = s.live_messages(q).unwrap();
    assert_eq!(live.len(), 8);
    for m in live {
        assert_eq!(m.redelivered, m.offset <= 4, "offset {}", m.offset);
    }
}

/// Return counts and kept dead letters (`mark_returned`, `mark_dead_letter`).
fn message_notes_survive_a_restart_until_acked(b: &mut dyn Backend) {
    let returns = |s: &dyn MessageStore, q| -> Vec<(u64, u32, u32)> {
        s.live_messages(q)
            .unwrap()
            .into_iter()
            .filter(|m| m.returns.count > 0)
            .map(|m| (m.offset, m.returns.count, m.returns.failed))
            .collect()
    };
    let dead = |s: &dyn MessageStore, q| -> Vec<(u64, u8)> {
        s.live_messages(q)
            .unwrap()
            .into_iter()
            .filter_map(|m| Some((m.offset, m.dead_letter?)))
            .collect()
    };
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    for i in 0..6 {
        put(s.as_mut(), q, i);
    }
    let r = |count, failed| Returns { count, failed };
    s.mark_returned(q, 1, r(1, 1)).unwrap();
    s.mark_returned(q, 1, r(2, 1)).unwrap(); // the latest counts are the ones kept
    s.mark_returned(q, 3, r(5, 3)).unwrap();
    s.mark_returned(q, 4, r(1, 0)).unwrap();
    s.mark_returned(q, 99, r(1, 1)).unwrap(); // not live: ignored
    s.mark_dead_letter(q, 3, 4).unwrap();
    s.mark_dead_letter(q, 5, 1).unwrap();
    s.mark_dead_letter(q, 98, 1).unwrap();
    assert_eq!(returns(s.as_ref(), q), [(1, 2, 1), (3, 5, 3), (4, 1, 0)]);
    assert_eq!(dead(s.as_ref(), q), [(3, 4), (5, 1)]);
    s.ack(q, &[4, 5]).unwrap();
    s.close().unwrap();
    drop(s);

    let mut s = b.open();
    let q = reopen_queue(s.as_mut(), "q");
    assert_eq!(returns(s.as_ref(), q), [(1, 2, 1), (3, 5, 3)]);
    assert_eq!(dead(s.as_ref(), q), [(3, 4)]);
    s.mark_returned(q, 3, r(6, 4)).unwrap();
    s.ack(q, &[1]).unwrap();
    // A purge forgets them all; a queue that gets messages again starts from nothing.
    let other = s.open_queue("other").unwrap();
    put(s.as_mut(), other, 0);
    s.mark_returned(other, 0, r(3, 3)).unwrap();
    s.purge_queue(other).unwrap();
    put(s.as_mut(), other, 1);
    s.close().unwrap();
    drop(s);

    let mut s = b.open();
    let q = reopen_queue(s.as_mut(), "q");
    assert_eq!(returns(s.as_ref(), q), [(3, 6, 4)]);
    assert_eq!(dead(s.as_ref(), q), [(3, 4)]);
    let other = reopen_queue(s.as_mut(), "other");
    assert_eq!(returns(s.as_ref(), other), []);
}

fn purge_empties_and_keeps_counting(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    for i in 0..20 {
        put(s.as_mut(), q, i);
    }
    s.commit().unwrap();
    assert_eq!(s.purge_queue(q).unwrap(), 20);
    assert!(offsets(s.as_ref(), q).is_empty());
    assert!(s
        .append(
            &[QueueRef {
                queue: q,
                offset: 3
            }],
            &message(3)
        )
        .is_err());
    put(s.as_mut(), q, 20);
    s.commit().unwrap();
    drop(s); // purge is durable without close
    let mut s = b.open();
    let q = reopen_queue(s.as_mut(), "q");
    assert_eq!(offsets(s.as_ref(), q), vec![20]);
}

fn delete_forgets_the_queue(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("gone").unwrap();
    let keep = s.open_queue("keep").unwrap();
    for i in 0..20 {
        put(s.as_mut(), q, i);
        put(s.as_mut(), keep, i);
    }
    s.commit().unwrap();
    assert_eq!(s.delete_queue(q).unwrap(), 20);
    assert!(matches!(s.read(q, 0), Err(StoreError::UnknownQueue(_))));
    assert!(matches!(s.ack(q, &[0]), Err(StoreError::UnknownQueue(_))));
    drop(s);
    let mut s = b.open();
    assert!(s.queues().iter().all(|i| i.name != "gone"));
    let keep = reopen_queue(s.as_mut(), "keep");
    assert_eq!(offsets(s.as_ref(), keep).len(), 20);
    let again = s.open_queue("gone").unwrap();
    assert!(
        offsets(s.as_ref(), again).is_empty(),
        "a re-declared queue starts empty"
    );
}

fn stats_count_live_messages(b: &mut dyn Backend) {
    let mut s = b.open();
    let q = s.open_queue("q").unwrap();
    for i in 0..30 {
        put(s.as_mut(), q, i);
    }
    s.ack(q, &[1, 2, 3]).unwrap();
    s.commit().unwrap();
    let st = s.stats();
    assert_eq!(st.live_messages, 27);
    assert_eq!(st.queues, 1);
    assert_eq!(st.durable_seq, st.last_seq);
}
