//! Round trips of the segment format under damage: random cuts of a tail, random byte flips in
//! a segment or an ack file. Never is a corrupt record returned; every record before the
//! damage (and, for flips, every record not touched by it) is recovered.

use std::collections::BTreeMap;
use std::path::Path;

use pier_store::conformance::message;
use pier_store::{IndexEntry, MessageStore, QueueRef, Returns, SegmentStore};
use proptest::prelude::*;

use super::common::{files_with, open, small_config};

#[derive(Debug, Clone)]
enum Damage {
    /// Cut the file at this fraction of its length.
    Cut(f64),
    /// Flip bits at these fractions of the file length.
    Flip(Vec<(f64, u8)>),
}

#[derive(Debug, Clone)]
struct Case {
    sizes: Vec<usize>,
    ack_mask: Vec<bool>,
    target_ack_file: bool,
    file_pick: usize,
    damage: Damage,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(0usize..2500, 20..160),
        prop::collection::vec(any::<bool>(), 160),
        any::<bool>(),
        any::<usize>(),
        prop_oneof![
            (0.0f64..1.0).prop_map(Damage::Cut),
            prop::collection::vec((0.0f64..1.0, 1u8..=255), 1..4).prop_map(Damage::Flip),
        ],
    )
        .prop_map(
            |(sizes, ack_mask, target_ack_file, file_pick, damage)| Case {
                sizes,
                ack_mask,
                target_ack_file,
                file_pick,
                damage,
            },
        )
}

fn body(i: usize, size: usize) -> pier_store::StoredMessage {
    let mut m = message(i as u64);
    m.body = bytes::Bytes::from(vec![(i % 251) as u8; size]);
    m
}

/// (segment id, is the ack file, damaged byte ranges).
type Hit = (u32, bool, Vec<(u64, u64)>);

/// Applies the damage to one file.
fn damage(dir: &Path, c: &Case) -> Option<Hit> {
    let ext = if c.target_ack_file { "ack" } else { "seg" };
    let files = files_with(dir, ext);
    if files.is_empty() {
        return None;
    }
    let path = &files[c.file_pick % files.len()];
    let id = u32::from_str_radix(path.file_stem()?.to_str()?, 16).ok()?;
    let mut bytes = std::fs::read(path).ok()?;
    if bytes.is_empty() {
        return None;
    }
    let len = bytes.len() as f64;
    let ranges = match &c.damage {
        Damage::Cut(f) => {
            let at = (len * f) as usize;
            bytes.truncate(at);
            vec![(at as u64, u64::MAX)]
        }
        Damage::Flip(flips) => flips
            .iter()
            .map(|(f, bits)| {
                let at = ((len * f) as usize).min(bytes.len() - 1);
                bytes[at] ^= bits;
                (at as u64, at as u64 + 1)
            })
            .collect(),
    };
    std::fs::write(path, &bytes).ok()?;
    Some((id, c.target_ack_file, ranges))
}

fn overlaps(e: &IndexEntry, ranges: &[(u64, u64)]) -> bool {
    let (s, t) = (
        u64::from(e.position),
        u64::from(e.position) + u64::from(e.record_len()),
    );
    ranges.iter().any(|&(a, b)| a < t && s < b)
}

fn run(c: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let q = s.open_queue("q").unwrap();
    let mut expected: BTreeMap<u64, IndexEntry> = BTreeMap::new();
    for (i, &size) in c.sizes.iter().enumerate() {
        s.append(
            &[QueueRef {
                queue: q,
                offset: i as u64,
            }],
            &body(i, size),
        )
        .unwrap();
        if i % 16 == 0 {
            s.commit().unwrap();
        }
    }
    s.commit().unwrap();
    for i in 0..c.sizes.len() {
        expected.insert(i as u64, s.location(q, i as u64).unwrap());
    }
    let acked: Vec<u64> = (0..c.sizes.len() as u64)
        .filter(|&i| c.ack_mask[i as usize])
        .collect();
    s.ack(q, &acked).unwrap();
    s.close().unwrap();
    drop(s);

    let hit = damage(dir.path(), c);
    let mut s: SegmentStore = open(dir.path());
    let q = s.queues().into_iter().find(|i| i.name == "q").unwrap().id;
    let live: Vec<u64> = s
        .live_messages(q)
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect();

    // Nothing recovered is corrupt or invented.
    for &o in &live {
        assert!(expected.contains_key(&o), "offset {o} was never written");
        assert_eq!(s.read(q, o).unwrap(), body(o as usize, c.sizes[o as usize]));
    }
    assert!(live.windows(2).all(|w| w[0] < w[1]), "FIFO order");

    for (&o, e) in &expected {
        let should_live = !c.ack_mask[o as usize];
        let damaged = match &hit {
            Some((id, false, ranges)) => e.segment == *id && overlaps(e, ranges),
            _ => false,
        };
        let ack_damaged = matches!(&hit, Some((id, true, _)) if e.segment == *id);
        if should_live && !damaged {
            assert!(live.contains(&o), "intact live message {o} lost ({c:?})");
        }
        if !should_live && !ack_damaged && live.contains(&o) {
            panic!("acked message {o} came back without its ack file being damaged");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn recovery_survives_cuts_and_flips(c in case()) {
        run(&c);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The scanner never panics on arbitrary bytes and only yields checksummed records.
    #[test]
    fn scan_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let out = pier_store::format::scan(&bytes, 0, bytes.len(), |_| true, |pos, _, payload| {
            assert!(pos + pier_store::format::HEADER_LEN + payload.len() <= bytes.len());
        });
        prop_assert!(out.valid_end <= bytes.len());
    }
}

/// Notes on messages (return counts, kept dead letters) in the queue registry, under a cut of
/// its tail: never invented, never another message's; undamaged, the latest of each.
fn notes_case(
    marks: &[(u8, u8, bool)],
    cut: Option<f64>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let q = s.open_queue("q").unwrap();
    for i in 0..16u64 {
        s.append(
            &[QueueRef {
                queue: q,
                offset: i,
            }],
            &body(i as usize, 10),
        )
        .unwrap();
    }
    // offset → every (count, failed) and reason ever written for it
    let mut returns: BTreeMap<u64, Vec<(u32, u32)>> = BTreeMap::new();
    let mut reasons: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (n, &(offset, value, dead)) in marks.iter().enumerate() {
        let offset = u64::from(offset % 16);
        if dead {
            let reason = value % 4 + 1;
            s.mark_dead_letter(q, offset, reason).unwrap();
            reasons.entry(offset).or_default().push(reason);
        } else {
            let count = u32::from(value) + 1;
            let failed = count / 3;
            s.mark_returned(q, offset, Returns { count, failed })
                .unwrap();
            returns.entry(offset).or_default().push((count, failed));
        }
        if n % 5 == 0 {
            s.commit().unwrap();
        }
    }
    s.close().unwrap();
    drop(s);
    if let Some(at) = cut {
        let path = dir.path().join("queues.log");
        let len = std::fs::metadata(&path).unwrap().len();
        let keep = ((len as f64) * at) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(keep)
            .unwrap();
    }
    let Ok(mut s) = SegmentStore::open(dir.path(), small_config()) else {
        return Ok(()); // a header cut away: refused, never misread
    };
    let Some(q) = s.queues().into_iter().find(|i| i.name == "q").map(|i| i.id) else {
        return Ok(()); // its registration cut away
    };
    for m in s.live_messages(q).unwrap() {
        let written_r = returns.get(&m.offset).cloned().unwrap_or_default();
        let written_d = reasons.get(&m.offset).cloned().unwrap_or_default();
        if cut.is_none() {
            prop_assert_eq!(
                (m.returns.count, m.returns.failed),
                written_r.last().copied().unwrap_or((0, 0))
            );
            prop_assert_eq!(m.dead_letter, written_d.last().copied());
        } else {
            prop_assert!(
                m.returns.count == 0 || written_r.contains(&(m.returns.count, m.returns.failed))
            );
            prop_assert!(m.dead_letter.is_none_or(|r| written_d.contains(&r)));
        }
    }
    let _ = s.close();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn message_notes_are_never_invented(
        marks in prop::collection::vec((any::<u8>(), any::<u8>(), any::<bool>()), 0..60),
        cut in prop::option::of(0.0f64..1.0),
    ) {
        notes_case(&marks, cut)?;
    }
}
