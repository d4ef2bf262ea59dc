#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::mpsc;

use super::*;

fn msg(id: u64, body: &str) -> AppendMessage {
    AppendMessage {
        publishing_id: id,
        entry: Entry::Simple(Bytes::copy_from_slice(body.as_bytes())),
        filter: None,
    }
}

fn append_wait(s: &Stream, writer: Option<&str>, msgs: Vec<AppendMessage>) -> Appended {
    let (tx, rx) = mpsc::sync_channel(1);
    s.append(
        writer.map(str::to_owned),
        msgs,
        Box::new(move |r| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        }),
    )
    .unwrap();
    rx.recv().unwrap().unwrap()
}

/// Queues appends by publisher "w" at once (the writer takes those that wait together into
/// one batch) and waits for all: each one's index and first offset, in that order.
fn append_together(s: &Stream, appends: Vec<Vec<AppendMessage>>) -> Vec<(u64, Option<u64>)> {
    let (tx, rx) = mpsc::channel();
    let n = appends.len();
    for (p, msgs) in (0u64..).zip(appends) {
        let tx = tx.clone();
        s.append(
            Some("w".into()),
            msgs,
            Box::new(move |r| {
                let _ = tx.send((p, r.map_err(|e| e.to_string())));
            }),
        )
        .unwrap();
    }
    let mut firsts: Vec<(u64, Option<u64>)> = (0..n)
        .map(|_| {
            let (p, r) = rx.recv().unwrap();
            (p, r.unwrap().first_offset)
        })
        .collect();
    firsts.sort_unstable();
    firsts
}

/// Every message body from `at`, in order, with its offset.
fn read_all(s: &Stream, at: StartAt) -> Vec<(u64, String)> {
    let mut r = s.reader(at).unwrap();
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk().unwrap() {
        let chunk = pier_stream_wire::Chunk::parse_delivered(&c.delivered).unwrap();
        chunk.verify_crc().unwrap();
        for rec in chunk.records() {
            let pier_stream_wire::Record::Message { offset, body } = rec.unwrap() else {
                panic!("compressed")
            };
            out.push((offset, String::from_utf8(body.to_vec()).unwrap()));
        }
    }
    out
}

/// Every message's body from the first offset on.
fn read_bodies(s: &Stream) -> Vec<String> {
    read_all(s, StartAt::First)
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

/// Flips the file's last byte: the last chunk's data no longer matches its CRC.
fn corrupt_last_byte(path: &std::path::Path) {
    let mut b = std::fs::read(path).unwrap();
    let n = b.len();
    b[n - 1] ^= 0xff;
    std::fs::write(path, &b).unwrap();
}

fn small_segments() -> StreamConfig {
    StreamConfig {
        max_segment_size_bytes: 400,
        ..StreamConfig::default()
    }
}

#[test]
fn appends_are_read_back_in_order_from_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    let a = append_wait(&s, None, vec![msg(1, "a"), msg(2, "b")]);
    assert_eq!(a.first_offset, Some(0));
    let b = append_wait(&s, None, vec![msg(3, "c")]);
    assert_eq!(b.first_offset, Some(2));
    let all = read_all(&s, StartAt::First);
    assert_eq!(all, vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]);
    assert_eq!(read_all(&s, StartAt::Last), vec![(2, "c".into())]);
    assert!(read_all(&s, StartAt::Next).is_empty());
    // The chunk holding offset 1 starts at 0 (the client skips what it did not ask for).
    assert_eq!(read_all(&s, StartAt::Offset(1)).len(), 3);
    assert_eq!(read_all(&s, StartAt::Offset(2)), vec![(2, "c".into())]);
    assert!(read_all(&s, StartAt::Offset(99)).is_empty());
    assert_eq!(read_all(&s, StartAt::Timestamp(0)).len(), 3);
    assert!(read_all(&s, StartAt::Timestamp(i64::MAX)).is_empty());
}

#[test]
fn a_reader_at_next_sees_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), small_segments()).unwrap();
    append_wait(&s, None, vec![msg(1, "old")]);
    let mut r = s.reader(StartAt::Next).unwrap();
    assert!(r.next_chunk().unwrap().is_none());
    for i in 0..20 {
        append_wait(&s, None, vec![msg(i, &format!("new-{i}"))]);
    }
    let mut n = 0;
    while let Some(c) = r.next_chunk().unwrap() {
        assert_eq!(c.header.num_records, 1);
        n += 1;
    }
    assert_eq!(n, 20);
}

#[test]
fn segments_roll_and_seek_works_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), small_segments()).unwrap();
    for i in 0..50u64 {
        append_wait(
            &s,
            None,
            vec![msg(i, &format!("message-{i:03}-{}", "x".repeat(40)))],
        );
    }
    let v = s.shared().view();
    assert!(v.segments.len() > 5, "{} segments", v.segments.len());
    let all = read_all(&s, StartAt::First);
    assert_eq!(all.len(), 50);
    for (i, (o, _)) in all.iter().enumerate() {
        assert_eq!(*o, i as u64);
    }
    assert_eq!(read_all(&s, StartAt::Offset(37))[0].0, 37);
    // By time: every chunk has a timestamp at or after the first one.
    let ts = v.segments[3].first_timestamp;
    let from = read_all(&s, StartAt::Timestamp(ts));
    assert!(from.len() <= 50 && !from.is_empty());
}

#[test]
fn retention_deletes_whole_segments_and_keeps_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = StreamConfig {
        max_length_bytes: Some(1000),
        ..small_segments()
    };
    let (s, _) = Stream::open(dir.path(), config).unwrap();
    for i in 0..60u64 {
        append_wait(&s, None, vec![msg(i, &"y".repeat(60))]);
    }
    // The writer applies retention after each segment roll: the old segments are gone already.
    s.close();
    drop(s);
    let (mut log, _) = StreamLog::open(
        dir.path(),
        StreamConfig {
            max_length_bytes: Some(1000),
            ..small_segments()
        },
    )
    .unwrap();
    let before = log.shared().view().segments.len();
    let gone = log.apply_retention().unwrap();
    let v = log.shared().view();
    assert_eq!(v.segments.len(), before - gone);
    assert!(v.total_size() <= 1000 + 400 + 200, "{}", v.total_size());
    assert!(v.first_offset() > 0);
    // A reader from `first` starts at the new first segment, and a stale offset too.
    drop(log);
    let (s, _) = Stream::open(dir.path(), small_segments()).unwrap();
    let all = read_all(&s, StartAt::First);
    assert_eq!(all.last().unwrap().0, 59);
    assert_eq!(read_all(&s, StartAt::Offset(0)), all);
    // Age: everything sealed is older than 0 ms.
    drop(s);
    let (mut log, _) = StreamLog::open(
        dir.path(),
        StreamConfig {
            max_age_ms: Some(0),
            ..small_segments()
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    log.apply_retention().unwrap();
    assert_eq!(log.shared().view().segments.len(), 1);
}

#[test]
fn deduplication_by_publisher_reference_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = Stream::open(dir.path(), small_segments()).unwrap();
        let a = append_wait(&s, Some("p1"), vec![msg(1, "a"), msg(2, "b")]);
        assert_eq!((a.written, a.duplicates), (2, 0));
        let a = append_wait(&s, Some("p1"), vec![msg(2, "b"), msg(3, "c")]);
        assert_eq!((a.written, a.duplicates), (1, 1));
        assert_eq!(s.writer_sequence("p1"), 3);
        // Without a reference, nothing is deduplicated.
        let a = append_wait(&s, None, vec![msg(1, "z")]);
        assert_eq!(a.written, 1);
        s.store_offset("consumer-1".into(), 2).unwrap();
        // Roll a few segments so the sequence lives on in snapshots.
        for i in 0..20 {
            append_wait(&s, None, vec![msg(i, &"q".repeat(50))]);
        }
        s.flush().unwrap();
    }
    let (s, r) = Stream::open(dir.path(), small_segments()).unwrap();
    assert!(r.segments > 2);
    assert_eq!(s.writer_sequence("p1"), 3);
    assert_eq!(s.stored_offset("consumer-1"), Some(2));
    let a = append_wait(&s, Some("p1"), vec![msg(3, "c"), msg(4, "d")]);
    assert_eq!((a.written, a.duplicates), (1, 1));
}

/// A reference never seen has no sequence yet: its first message may carry publishing id 0
/// (rabbitmq-stream-client starts a new named producer there), and only then is 0 a duplicate.
#[test]
fn a_new_reference_keeps_publishing_id_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), small_segments()).unwrap();
    let a = append_wait(&s, Some("fresh"), vec![msg(0, "a")]);
    assert_eq!((a.written, a.duplicates), (1, 0));
    let a = append_wait(&s, Some("fresh"), vec![msg(0, "a"), msg(1, "b")]);
    assert_eq!((a.written, a.duplicates), (1, 1));
    let a = append_wait(&s, Some("other"), vec![msg(0, "x"), msg(0, "x")]);
    assert_eq!((a.written, a.duplicates), (1, 1));
    assert_eq!(read_all(&s, StartAt::First).len(), 3);
}

#[test]
fn a_torn_tail_is_truncated_on_recovery() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
        for i in 0..10 {
            append_wait(&s, Some("w"), vec![msg(i + 1, &format!("m{i}"))]);
        }
    }
    let seg = dir.path().join("00000000000000000000.segment");
    let idx = dir.path().join("00000000000000000000.index");
    let len = std::fs::metadata(&seg).unwrap().len();
    // Half a chunk of garbage after the last one, and a torn index record.
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&[0x50, 0, 0, 1, 0, 0, 0, 1, 9, 9, 9])
        .unwrap();
    OpenOptions::new()
        .append(true)
        .open(&idx)
        .unwrap()
        .write_all(&[1, 2, 3])
        .unwrap();
    let (s, r) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    assert_eq!(r.truncated_bytes, 11);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    assert_eq!(read_all(&s, StartAt::First).len(), 10);
    assert_eq!(s.writer_sequence("w"), 10);
    // The last chunk's data corrupted: it goes, with its sequence.
    drop(s);
    corrupt_last_byte(&seg);
    let (s, r) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    assert!(r.truncated_bytes > 0);
    assert_eq!(read_all(&s, StartAt::First).len(), 9);
    assert_eq!(s.writer_sequence("w"), 9);
    append_wait(&s, None, vec![msg(0, "after")]);
    assert_eq!(read_all(&s, StartAt::Last), vec![(9, "after".into())]);
}

#[test]
fn a_lost_index_is_rebuilt_from_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
        for i in 0..5 {
            append_wait(&s, None, vec![msg(i, "m")]);
        }
    }
    std::fs::write(dir.path().join("00000000000000000000.index"), b"").unwrap();
    let (s, r) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    assert_eq!(r.reindexed_chunks, 5);
    assert_eq!(read_all(&s, StartAt::Offset(3))[0].0, 3);
}

#[test]
fn filter_values_make_a_bloom_filter() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    let mut m = msg(1, "x");
    m.filter = Some(Bytes::from_static(b"apple"));
    append_wait(&s, None, vec![m]);
    append_wait(&s, None, vec![msg(2, "y")]);
    let mut r = s.reader(StartAt::First).unwrap();
    let c = r.next_chunk().unwrap().unwrap();
    assert_eq!(c.bloom.len(), 16);
    assert!(pier_stream_wire::BloomMatcher::new([b"apple".as_slice()], false).matches(&c.bloom));
    // The delivered form carries the bloom size but not the filter.
    assert_eq!(c.delivered.len(), 48 + c.header.data_length as usize);
    let c = r.next_chunk().unwrap().unwrap();
    assert!(c.bloom.is_empty());
}

#[test]
fn garbage_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("00000000000000000000.segment"),
        b"PSTRSEG\0\0\0\0\x01garbage",
    )
    .unwrap();
    std::fs::write(dir.path().join("00000000000000000000.index"), b"junk").unwrap();
    let (s, r) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    assert_eq!(r.truncated_bytes, 7);
    assert!(read_all(&s, StartAt::First).is_empty());
    drop(s);
    std::fs::write(
        dir.path().join("00000000000000000000.segment"),
        b"not a segment at all",
    )
    .unwrap();
    assert!(matches!(
        Stream::open(dir.path(), StreamConfig::default()),
        Err(StreamError::Corrupt(_))
    ));
}

mod crash {
    //! Crash test: a child process appends and is killed at a random moment; recovery must
    //! keep every append the child saw confirmed, in order, and lose nothing in the middle.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
        /// Any truncation of the segment file (a torn tail at any byte) recovers to a prefix
        /// of whole chunks, and the stream takes appends again.
        #[test]
        fn any_truncation_recovers_to_a_prefix(cut in 0u64..2000, extra in proptest::collection::vec(any::<u8>(), 0..64)) {
            let dir = tempfile::tempdir().unwrap();
            {
                let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
                for i in 0..20u64 {
                    append_wait(&s, Some("w"), vec![msg(i + 1, &format!("m{i:02}"))]);
                }
            }
            let seg = dir.path().join("00000000000000000000.segment");
            let len = std::fs::metadata(&seg).unwrap().len();
            let keep = len.saturating_sub(cut).max(FILE_HEADER);
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            f.set_len(keep).unwrap();
            drop(f);
            OpenOptions::new().append(true).open(&seg).unwrap().write_all(&extra).unwrap();
            let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
            let all = read_all(&s, StartAt::First);
            for (i, (o, body)) in all.iter().enumerate() {
                prop_assert_eq!(*o, i as u64);
                prop_assert_eq!(body, &format!("m{i:02}"));
            }
            prop_assert_eq!(s.writer_sequence("w"), all.len() as u64);
            let a = append_wait(&s, Some("w"), vec![msg(all.len() as u64 + 1, "next")]);
            prop_assert_eq!(a.first_offset, Some(all.len() as u64));
        }
    }

    const FILE_HEADER: u64 = 12;
}

/// With direct writes the file ends in zeros up to a block boundary until it is trimmed; a
/// crash (nothing trimmed) loses nothing synced: recovery cuts the zeros as a torn tail.
#[test]
fn a_crash_after_direct_writes_keeps_every_synced_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let bodies: Vec<String> = (0..40).map(|i| "x".repeat(97 * i + 1)).collect();
    {
        let (mut log, _) = StreamLog::open(dir.path(), StreamConfig::default()).unwrap();
        for b in &bodies {
            let e = Entry::Simple(Bytes::copy_from_slice(b.as_bytes()));
            log.append_user(&[(e, None)], &[]).unwrap();
            log.sync().unwrap();
        }
        std::mem::forget(log); // a crash: no trim
    }
    let seg = dir.path().join("00000000000000000000.segment");
    let padded = std::fs::metadata(&seg).unwrap().len() % 4096 == 0;
    let (s, r) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    let got = read_bodies(&s);
    assert_eq!(got, bodies);
    assert_eq!(r.truncated_bytes > 0, padded);
    // Appends go on after the recovered end.
    append_wait(&s, None, vec![msg(0, "after")]);
    assert_eq!(read_all(&s, StartAt::Last), vec![(40, "after".into())]);
}

/// Readers at the tail take the writer's copy of the newest chunks; what they get is byte
/// for byte what a reader of the files gets (bloom filters, tracking chunks skipped).
#[test]
fn the_newest_chunks_read_from_memory_as_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), small_segments()).unwrap();
    for i in 0..30u64 {
        let mut m = msg(i, &format!("body-{i}"));
        if i % 3 == 0 {
            m.filter = Some(Bytes::from(format!("f{}", i % 2)));
        }
        append_wait(&s, None, vec![m, msg(i, "second")]);
        if i % 7 == 0 {
            s.store_offset(format!("c{i}"), i).unwrap();
        }
    }
    s.flush().unwrap();
    let chunks = |s: &Stream| {
        let mut r = s.reader(StartAt::First).unwrap();
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk().unwrap() {
            out.push((c.header, c.bloom.to_vec(), c.delivered.to_vec()));
        }
        out
    };
    let from_memory = chunks(&s);
    // Served from memory (not necessarily the last one: a chunk written right after a
    // segment roll that renumbered it is left to the file, and where the rolls fall
    // depends on how the writer batched the appends and the offset stores).
    assert!(from_memory
        .iter()
        .any(|(h, _, _)| s.shared().recent(h.first_offset).is_some()));
    s.shared().forget_recent();
    let from_files = chunks(&s);
    assert_eq!(from_memory.len(), 30);
    assert_eq!(from_memory, from_files);
}

/// Both ways of writing (direct when the stream fsyncs, the page cache when it does not)
/// store the same bytes: a log written one way reads back and goes on the other way.
#[test]
fn direct_and_buffered_writes_store_the_same_bytes() {
    let write = |sync: bool| {
        let dir = tempfile::tempdir().unwrap();
        let config = StreamConfig {
            sync,
            ..small_segments()
        };
        let (s, _) = Stream::open(dir.path(), config.clone()).unwrap();
        for i in 0..25u64 {
            append_wait(
                &s,
                Some("w"),
                vec![msg(i + 1, &"y".repeat(i as usize * 13))],
            );
        }
        s.flush().unwrap();
        drop(s);
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        // Reopened the other way, it reads back and appends.
        let (s, r) = Stream::open(
            dir.path(),
            StreamConfig {
                sync: !sync,
                ..config
            },
        )
        .unwrap();
        assert_eq!(r.truncated_bytes, 0);
        append_wait(&s, Some("w"), vec![msg(26, "last")]);
        assert_eq!(read_all(&s, StartAt::First).len(), 26);
        files
    };
    let direct = write(true);
    let buffered = write(false);
    assert_eq!(direct.len(), buffered.len());
    for ((n1, a), (n2, b)) in direct.iter().zip(&buffered) {
        assert_eq!(n1, n2);
        // Chunks carry their timestamps, so the bytes differ; names and lengths match.
        assert_eq!(a.len(), b.len(), "{n1}");
    }
}

/// A reader of the files (the in-memory tail dropped before every read) while the writer
/// appends with direct writes: blocks hold only committed bytes, so it sees every chunk
/// whole and in order, including one larger than a block and ones straddling blocks.
#[test]
fn a_reader_of_the_files_sees_whole_chunks_while_the_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    let body = |i: u64| -> String {
        let len = if i == 150 {
            (reader::BLOCK + reader::BLOCK / 2) as usize
        } else {
            (i as usize * 977) % 20_000
        };
        let c = char::from(b'a' + (i % 26) as u8);
        std::iter::repeat_n(c, len).collect()
    };
    const N: u64 = 300;
    std::thread::scope(|t| {
        t.spawn(|| {
            for i in 0..N {
                append_wait(&s, None, vec![msg(i, &body(i))]);
            }
        });
        let mut r = s.reader(StartAt::First).unwrap();
        let mut next = 0u64;
        while next < N {
            s.shared().forget_recent();
            let Some(c) = r.next_chunk().unwrap() else {
                std::thread::yield_now();
                continue;
            };
            let chunk = pier_stream_wire::Chunk::parse_delivered(&c.delivered).unwrap();
            chunk.verify_crc().unwrap();
            for rec in chunk.records() {
                let pier_stream_wire::Record::Message { offset, body: b } = rec.unwrap() else {
                    panic!("compressed")
                };
                assert_eq!(offset, next);
                assert!(b.as_ref() == body(next).as_bytes(), "body of {next}");
                next += 1;
            }
        }
    });
}

/// Appends queued together that hold more messages than one chunk can (its header counts
/// entries in 16 bits) go into several chunks; one append larger than a chunk on its own is
/// refused and the writer goes on. Before, such a batch failed the writer for good: every
/// later append of the stream was refused.
#[test]
fn appends_past_a_chunks_entry_limit_split_into_chunks_and_never_stop_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    let part = 40_000u64;
    // Three appends of 40,000 queued at once: while the writer writes the first, the next
    // two wait together, past the 65,535 entries of one chunk.
    let firsts = append_together(
        &s,
        (0..3u64)
            .map(|p| (0..part).map(|i| msg(p * part + i + 1, "x")).collect())
            .collect(),
    );
    assert_eq!(
        firsts,
        vec![(0, Some(0)), (1, Some(part)), (2, Some(2 * part))]
    );
    let all = read_all(&s, StartAt::First);
    assert_eq!(all.len(), 120_000);
    assert!(all.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
    // One append past the limit on its own: refused, and the stream still takes appends.
    let (tx, rx) = mpsc::sync_channel(1);
    let too_many = (0..MAX_CHUNK_ENTRIES as u64 + 1)
        .map(|i| msg(i, "y"))
        .collect();
    s.append(
        None,
        too_many,
        Box::new(move |r| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        }),
    )
    .unwrap();
    assert!(rx.recv().unwrap().is_err());
    let after = append_wait(&s, None, vec![msg(1, "after")]);
    assert_eq!(after.first_offset, Some(120_000));
}

/// Every user chunk's entry count, oldest first.
fn chunk_sizes(s: &Stream) -> Vec<u16> {
    let mut r = s.reader(StartAt::First).unwrap();
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk().unwrap() {
        out.push(c.header.num_entries);
    }
    out
}

/// A burst reaching an idle writer is cut as osiris' writer cuts it (batches of 32 doubling
/// up to 8,192), so a consumer at `last` gets the burst's newest chunk, not all of it
/// (rstream's `test_offset_type_last` publishes 4,999 in one frame and expects fewer).
#[test]
fn a_burst_is_cut_into_chunks_as_osiris_cuts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    let burst = (1..5_000u64).map(|i| msg(i, &i.to_string())).collect();
    let a = append_wait(&s, Some("p"), burst);
    assert_eq!((a.written, a.first_offset), (4_999, Some(0)));
    assert_eq!(
        chunk_sizes(&s),
        vec![32, 64, 128, 256, 512, 1024, 2048, 935]
    );
    let last = read_all(&s, StartAt::Last);
    assert_eq!(last.len(), 935);
    assert_eq!(last.last(), Some(&(4_998, "4999".to_string())));
    let all = read_all(&s, StartAt::First);
    assert!(all.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
    // Once the writer has waited for work, the next burst is cut from 32 again.
    std::thread::sleep(CHUNK_CAP_IDLE * 3);
    append_wait(&s, None, (0..100).map(|i| msg(i, "again")).collect());
    assert_eq!(chunk_sizes(&s)[8..], [32, 64, 4]);
    assert_eq!(read_all(&s, StartAt::Last).len(), 4);
}

/// A batch of 1,000 messages with a filter value, then 1,000 without: the chunk that would
/// hold both is cut where they meet, so a consumer filtering on the value skips every
/// unfiltered message; finely interleaved ones stay in one chunk.
#[test]
fn long_runs_of_filtered_and_unfiltered_messages_get_chunks_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    let tagged = |i: u64, tag: bool| {
        let mut m = msg(i, "m");
        m.filter = tag.then(|| Bytes::from_static(b"b"));
        m
    };
    let runs = (0..2_000u64).map(|i| tagged(i, i < 1_000)).collect();
    append_wait(&s, None, runs);
    // 32..512 (992 tagged), then 8 tagged cut off at the run of untagged ones, then those.
    assert_eq!(chunk_sizes(&s), vec![32, 64, 128, 256, 512, 8, 1000]);
    std::thread::sleep(CHUNK_CAP_IDLE * 3);
    let mixed = (0..200u64).map(|i| tagged(i, i % 3 == 0)).collect();
    append_wait(&s, None, mixed);
    assert_eq!(chunk_sizes(&s)[7..], [32, 64, 104]);
}

/// Each chunk's trailer holds its own messages' highest publishing id: a crash that keeps a
/// batch's first chunks and loses its last still deduplicates what was kept.
#[test]
fn each_chunk_of_a_batch_carries_its_own_sequences() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
        let a = append_wait(&s, Some("w"), (1..=100).map(|i| msg(i, "m")).collect());
        assert_eq!(a.written, 100);
        assert_eq!(chunk_sizes(&s), vec![32, 64, 4]);
    }
    // The last chunk's data corrupted: recovery cuts it (4 messages) and its sequence.
    let seg = dir.path().join("00000000000000000000.segment");
    corrupt_last_byte(&seg);
    let (s, r) = Stream::open(dir.path(), StreamConfig::default()).unwrap();
    assert!(r.truncated_bytes > 0);
    assert_eq!(read_all(&s, StartAt::First).len(), 96);
    assert_eq!(s.writer_sequence("w"), 96);
    let a = append_wait(&s, Some("w"), (95..=100).map(|i| msg(i, "m")).collect());
    assert_eq!((a.written, a.duplicates), (4, 2));
}

/// Appends taken in one batch and cut into several chunks, with segments rolling between
/// them (each new segment starts with a tracking snapshot, which takes an offset): each
/// append is told the offset its first message was written at.
#[test]
fn appends_of_one_batch_learn_their_offsets_across_rolled_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Stream::open(dir.path(), small_segments()).unwrap();
    s.store_offset("c".into(), 0).unwrap();
    let firsts = append_together(
        &s,
        (0..4u64)
            .map(|p| {
                (0..50u64)
                    .map(|i| msg(p * 50 + i + 1, &format!("{p}-{i}")))
                    .collect()
            })
            .collect(),
    );
    let all = read_all(&s, StartAt::First);
    assert_eq!(all.len(), 200);
    for (p, first) in firsts {
        let at = all.iter().find(|(_, b)| *b == format!("{p}-0")).unwrap().0;
        assert_eq!(first, Some(at), "append {p}");
    }
    // Offsets skipped by the snapshots: the chunks were not one contiguous run.
    assert!(all.last().unwrap().0 > 199);
}

/// Big chunks without filter values are built where the direct write sends them from (after
/// the segment's last partial block): whatever their sizes and wherever the block
/// boundaries fall, around segment rolls, between chunks written the general way (small,
/// filtered), with and without a publisher trailer, they read back from memory and from
/// the files alike, and a crash loses none of them.
#[test]
fn big_chunks_built_in_place_read_back_and_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = StreamConfig {
        max_segment_size_bytes: 300_000,
        ..StreamConfig::default()
    };
    let mut want: Vec<String> = Vec::new();
    let mut last_w = 0;
    let direct;
    {
        let (mut log, _) = StreamLog::open(dir.path(), config.clone()).unwrap();
        direct = log.writes_direct();
        let mut id = 0u64;
        for round in 0..24usize {
            // 17 KiB to ~110 KiB of entries of odd sizes: chunk ends fall anywhere in a block.
            let n = 5 + round * 3;
            let mut entries = Vec::new();
            for i in 0..n {
                let body = format!("{round}-{i}-").repeat(700 + 37 * i + round);
                want.push(body.clone());
                let filter = (round % 5 == 4 && i == 0).then(|| Bytes::from_static(b"f"));
                entries.push((Entry::Simple(Bytes::from(body)), filter));
            }
            id += n as u64;
            let writers = if round % 2 == 0 {
                last_w = id;
                vec![("w".to_owned(), id)]
            } else {
                Vec::new()
            };
            log.append_user(&entries, &writers).unwrap();
            // A small chunk (the general way) now and then.
            if round % 3 == 0 {
                let body = format!("small-{round}");
                want.push(body.clone());
                log.append_user(&[(Entry::Simple(Bytes::from(body)), None)], &[])
                    .unwrap();
            }
            log.sync().unwrap();
        }
        if direct {
            assert!(log.in_place_chunks >= 15, "{}", log.in_place_chunks);
            assert!(log.shared().view().segments.len() >= 4, "segments rolled");
        }
        std::mem::forget(log); // a crash: nothing trimmed
    }
    let (s, _) = Stream::open(dir.path(), config).unwrap();
    assert_eq!(read_bodies(&s), want);
    assert_eq!(s.shared().tracking().writers.get("w"), Some(&last_w));
    // Appended after recovery, read back from memory and then from the files.
    let more: Vec<AppendMessage> = (0..30)
        .map(|i| msg(i, &"z".repeat(1000 + i as usize)))
        .collect();
    append_wait(&s, None, more);
    let from_memory = read_bodies(&s);
    s.shared().forget_recent();
    assert_eq!(read_bodies(&s), from_memory);
    assert_eq!(from_memory.len(), want.len() + 30);
}

/// A replica's write of `stored`, waited for: its next offset, or why it was refused.
fn accept_wait(replica: &Stream, stored: Bytes) -> Result<u64, String> {
    let (tx, rx) = mpsc::sync_channel(1);
    replica
        .accept(
            stored,
            Box::new(move |r| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            }),
        )
        .unwrap();
    rx.recv().unwrap()
}

/// Copies what `leader` has synced past `replica`'s end into `replica`, as the cluster's
/// puller does, and tells the leader (as `node`) how far the replica has synced.
fn replicate_once(leader: &Stream, replica: &Stream, node: &str, max: usize) -> bool {
    let from = replica.shared().view().written_next;
    let Some(stored) = leader.shared().read_stored(from, max).unwrap() else {
        return false;
    };
    let next = accept_wait(replica, stored).unwrap();
    leader.shared().replica_synced(node, next);
    replica
        .shared()
        .follow(leader.shared().view().committed_next);
    true
}

/// A leader of three members in `dir/leader_name` and a replica in `dir/replica_name`,
/// with small segments.
fn leader_and_replica(
    dir: &std::path::Path,
    leader: &str,
    replica: &str,
) -> (Arc<Stream>, Arc<Stream>) {
    let (l, _) = Stream::open(&dir.join(leader), small_segments()).unwrap();
    let (r, _) = Stream::open_replica(&dir.join(replica), small_segments()).unwrap();
    l.shared().set_members(3);
    (l, r)
}

/// A leader of three members confirms an append only once one replica has synced it, its
/// readers see nothing before that, and a replica fed the leader's stored chunks (small
/// segments: rolls with tracking snapshots, stored offsets, a named publisher, filtered
/// chunks) ends up with the same chunks, offsets, tracking and messages.
#[test]
fn a_replica_copies_its_leader_and_confirms_wait_for_a_majority() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, replica) = leader_and_replica(dir.path(), "leader", "replica");

    // Not confirmed, not visible, until a replica has it.
    let (tx, rx) = mpsc::sync_channel(1);
    leader
        .append(
            Some("w".into()),
            vec![msg(1, "first")],
            Box::new(move |r| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            }),
        )
        .unwrap();
    assert!(rx
        .recv_timeout(std::time::Duration::from_millis(300))
        .is_err());
    assert_eq!(leader.shared().view().committed_next, 0);
    assert_eq!(leader.shared().view().written_next, 1);
    assert!(read_all(&leader, StartAt::First).is_empty());
    // A replica's writes are refused to anyone but its puller.
    assert!(matches!(
        replica.append(None, vec![msg(0, "x")], Box::new(|_| {})),
        Err(StreamError::Replica)
    ));
    assert!(matches!(
        replica.store_offset("c".into(), 0),
        Err(StreamError::Replica)
    ));
    assert!(replicate_once(&leader, &replica, "b", 1 << 20));
    assert_eq!(rx.recv().unwrap().unwrap().first_offset, Some(0));
    assert_eq!(leader.shared().view().committed_next, 1);
    assert_eq!(
        read_all(&replica, StartAt::First),
        vec![(0, "first".into())]
    );

    // Many chunks over several segments, copied in small steps.
    let (tx, rx) = mpsc::channel();
    for i in 0..60u64 {
        let tx = tx.clone();
        let mut m = msg(i + 2, &format!("m{i:03}-{}", "x".repeat(300)));
        if i % 7 == 0 {
            m.filter = Some(Bytes::from_static(b"red"));
        }
        leader
            .append(
                Some("w".into()),
                vec![m],
                Box::new(move |r| {
                    let _ = tx.send(r.is_ok());
                }),
            )
            .unwrap();
        if i % 10 == 0 {
            leader.store_offset(format!("c{i}"), i).unwrap();
        }
        if i % 3 == 0 {
            replicate_once(&leader, &replica, "b", 2000);
        }
    }
    leader.flush().unwrap();
    while replicate_once(&leader, &replica, "b", 2000) {}
    for _ in 0..60 {
        assert!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap());
    }
    let lv = leader.shared().view();
    let rv = replica.shared().view();
    assert!(lv.segments.len() > 2, "{} segments", lv.segments.len());
    assert_eq!(lv.committed_next, lv.written_next);
    assert_eq!(rv.written_next, lv.written_next);
    assert_eq!(rv.committed_next, lv.committed_next);
    assert_eq!(
        lv.segments
            .iter()
            .map(|s| (s.first_chunk_id, s.next_chunk_id, s.chunks))
            .collect::<Vec<_>>(),
        rv.segments
            .iter()
            .map(|s| (s.first_chunk_id, s.next_chunk_id, s.chunks))
            .collect::<Vec<_>>()
    );
    assert_eq!(leader.shared().tracking(), replica.shared().tracking());
    assert_eq!(
        read_all(&leader, StartAt::First),
        read_all(&replica, StartAt::First)
    );
    assert_eq!(
        leader.shared().replica_offsets(),
        vec![("b".into(), lv.written_next)]
    );
    // The leader serves its newest chunks from memory and the rest from its files: the
    // same bytes either way.
    let stored_from_memory = leader.shared().read_stored(0, 64 << 20).unwrap().unwrap();
    leader.shared().forget_recent();
    let (from_files, end) = all_stored(&leader);
    assert_eq!(end, lv.written_next);
    assert!(!stored_from_memory.is_empty());
    assert_eq!(
        stored_from_memory.len(),
        from_files.len(),
        "{} chunks' worth in memory",
        stored_from_memory.len()
    );
    assert!(stored_from_memory[..] == from_files[..]);
    // The same bytes on the replica (read from its files too).
    replica.shared().forget_recent();
    assert!(all_stored(&replica) == (from_files, end));

    // The replica recovers as it was, and keeps following.
    let tracking = replica.shared().tracking();
    replica.close();
    drop(replica);
    let (replica, rec) =
        Stream::open_replica(&dir.path().join("replica"), small_segments()).unwrap();
    assert_eq!(rec.next_offset, lv.written_next);
    assert_eq!(replica.shared().tracking(), tracking);
    append_wait_replicated(&leader, &replica);
    assert_eq!(
        read_all(&leader, StartAt::First),
        read_all(&replica, StartAt::First)
    );
}

/// Everything a stream has synced, as stored (what replicas copy), and the offset after it.
fn all_stored(s: &Stream) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(b) = s.shared().read_stored(from, 1 << 20).unwrap() {
        let mut at = 0;
        while at < b.len() {
            let (c, used) = pier_stream_wire::Chunk::parse_stored(&b.slice(at..)).unwrap();
            from = c.header.first_offset + u64::from(c.header.num_records.max(1));
            at += used;
        }
        out.extend_from_slice(&b);
    }
    (out, from)
}

fn append_wait_replicated(leader: &Stream, replica: &Stream) {
    let (tx, rx) = mpsc::sync_channel(1);
    leader
        .append(
            None,
            vec![msg(0, "after restart")],
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }),
        )
        .unwrap();
    leader.flush().unwrap();
    assert!(replicate_once(leader, replica, "b", 1 << 20));
    assert!(rx.recv().unwrap());
}

/// A chunk that does not continue the replica's log, or does not verify, is refused and
/// leaves the log as it was (what verified before it stays).
#[test]
fn a_replica_refuses_chunks_that_do_not_continue_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, _) = Stream::open(&dir.path().join("leader"), StreamConfig::default()).unwrap();
    let (replica, _) =
        Stream::open_replica(&dir.path().join("replica"), StreamConfig::default()).unwrap();
    append_wait(&leader, None, vec![msg(0, "a"), msg(0, "b")]);
    append_wait(&leader, None, vec![msg(0, "c")]);
    append_wait(&leader, None, vec![msg(0, "d")]);
    let accept = |stored: Bytes| accept_wait(&replica, stored);
    let chunk0 = leader.shared().read_stored(0, 1).unwrap().unwrap();
    assert_eq!(accept(chunk0.clone()).unwrap(), 2);
    // The same chunk again does not continue the log.
    assert!(accept(chunk0).unwrap_err().contains("does not continue"));
    let mut rest = leader
        .shared()
        .read_stored(2, 1 << 20)
        .unwrap()
        .unwrap()
        .to_vec();
    let last = rest.len() - 1;
    rest[last] ^= 0xff;
    let e = accept(Bytes::from(rest)).unwrap_err();
    assert!(e.contains("CRC") || e.contains("crc"), "{e}");
    // Chunk 2 verified and stays; chunk 3 comes again.
    assert_eq!(replica.shared().view().written_next, 3);
    let rest = leader.shared().read_stored(3, 1 << 20).unwrap().unwrap();
    assert_eq!(accept(rest).unwrap(), 4);
    replica.shared().follow(4);
    assert_eq!(
        read_all(&replica, StartAt::First),
        read_all(&leader, StartAt::First)
    );
}

/// A replica added after retention removed the leader's first segments starts where the
/// leader's log now starts, and holds the same messages at the same offsets.
#[test]
fn a_new_replica_starts_at_its_leaders_first_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let config = StreamConfig {
        max_length_bytes: Some(1500),
        ..small_segments()
    };
    let (leader, _) = Stream::open(&dir.path().join("leader"), config.clone()).unwrap();
    for i in 0..40 {
        append_wait(
            &leader,
            None,
            vec![msg(0, &format!("m{i:02}-{}", "y".repeat(200)))],
        );
    }
    let first = leader.shared().view().first_offset();
    assert!(first > 0, "retention removed nothing");
    let (replica, _) = Stream::open_replica(&dir.path().join("replica"), config).unwrap();
    assert_eq!(replica.shared().view().written_next, 0);
    // Asked from 0, the leader answers from its first chunk still stored.
    let stored = leader.shared().read_stored(0, 1 << 20).unwrap().unwrap();
    accept_wait(&replica, stored).unwrap();
    while replicate_once(&leader, &replica, "b", 1 << 20) {}
    replica
        .shared()
        .follow(leader.shared().view().committed_next);
    assert_eq!(replica.shared().view().first_offset(), first);
    assert_eq!(
        read_all(&leader, StartAt::First),
        read_all(&replica, StartAt::First)
    );
    assert!(!dir
        .path()
        .join("replica")
        .join("00000000000000000000.segment")
        .exists());
}

/// Appends `body` as publisher "w" with id `id` to a leader of three members, copies it to
/// `replica` (as node `node`), and checks it is confirmed.
fn append_confirmed(leader: &Stream, replica: &Stream, node: &str, id: u64, body: &str) {
    let (tx, rx) = mpsc::sync_channel(1);
    leader
        .append(
            Some("w".into()),
            vec![msg(id, body)],
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }),
        )
        .unwrap();
    leader.flush().unwrap();
    while replicate_once(leader, replica, node, 1 << 20) {}
    assert!(rx.recv().unwrap());
}

/// A leader change as the cluster makes it: the old leader (A) wrote chunks a replica (B)
/// never got; A is retired (its waiting confirm fails with `Deposed`, its readers are told
/// the stream is gone), B becomes the leader from its own end, and A, truncated to where
/// B took over, copies B's new chunks and ends with B's log byte for byte.
#[test]
fn a_deposed_leader_fails_its_pending_confirms_and_truncates_to_the_new_leaders_log() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = leader_and_replica(dir.path(), "a", "b");
    for i in 0..20u64 {
        append_confirmed(&a, &b, "b", i + 1, &format!("a-{i}"));
    }
    let takeover = b.shared().view().written_next;
    // Eight more appends that only A writes (across a roll): never confirmed.
    let (tx, rx) = mpsc::channel();
    for i in 20..28u64 {
        let tx = tx.clone();
        a.append(
            Some("w".into()),
            vec![msg(i + 1, &format!("a-{i}-lost"))],
            Box::new(move |r| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            }),
        )
        .unwrap();
    }
    a.flush().unwrap();
    assert!(a.shared().view().written_next > takeover);
    // Deliver v2's committed chunk: the chunk of the last committed offset, not the last.
    let committed_chunk = a.shared().committed_chunk_id().unwrap();
    assert_eq!(
        Some(committed_chunk),
        a.shared()
            .locate_offset(takeover - 1)
            .unwrap()
            .map(|l| l.record.chunk_id)
    );
    assert!(a.shared().view().last_chunk_id.unwrap() >= takeover);
    let reader = a.reader(StartAt::First).unwrap();
    a.retire();
    for _ in 20..28 {
        let err = rx.recv().unwrap().unwrap_err();
        assert!(err.contains("leader changed"), "{err}");
    }
    let mut reader = reader;
    assert!(matches!(reader.next_chunk(), Err(StreamError::Deleted)));
    drop(a);

    // B leads from its end; A drops what B does not have and follows B.
    b.retire();
    drop(b);
    assert!(!truncate_stream(&b_dir, takeover).unwrap());
    let (b, rb) = Stream::open(&b_dir, small_segments()).unwrap();
    assert_eq!(rb.next_offset, takeover);
    b.shared().set_members(3);
    assert!(truncate_stream(&a_dir, takeover).unwrap());
    let (a, ra) = Stream::open_replica(&a_dir, small_segments()).unwrap();
    assert_eq!(ra.next_offset, takeover);
    assert_eq!(a.writer_sequence("w"), 20);
    for i in 20..30u64 {
        append_confirmed(&b, &a, "a", i + 1, &format!("b-{i}"));
    }
    assert_eq!(all_stored(&a), all_stored(&b));
    let bodies = read_bodies(&a);
    let want: Vec<String> = (0..20)
        .map(|i| format!("a-{i}"))
        .chain((20..30).map(|i| format!("b-{i}")))
        .collect();
    assert_eq!(bodies, want);
    // A cut inside the log at a chunk boundary survives a restart, and a cut past the end
    // changes nothing.
    a.close();
    drop(a);
    assert!(!truncate_stream(&a_dir, u64::MAX).unwrap());
    let (a, _) = Stream::open_replica(&a_dir, small_segments()).unwrap();
    assert_eq!(all_stored(&a), all_stored(&b));
}

/// Deleting a replicated leader whose appends wait for a majority: each waiting append is
/// told the stream is gone (`Deleted`), none is left without an answer, and one confirmed
/// before stays confirmed.
#[test]
fn deleting_a_replicated_leader_answers_the_appends_it_was_waiting_to_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = leader_and_replica(dir.path(), "a", "b");
    append_confirmed(&a, &b, "b", 1, "kept");
    let (tx, rx) = mpsc::channel();
    for i in 2..6u64 {
        let tx = tx.clone();
        a.append(
            Some("w".into()),
            vec![msg(i, "waiting")],
            Box::new(move |r| {
                let _ = tx.send(r.map(|_| ()));
            }),
        )
        .unwrap();
    }
    drop(tx);
    a.flush().unwrap();
    assert!(rx.try_recv().is_err(), "no majority yet: nothing answered");
    a.delete().unwrap();
    for _ in 2..6 {
        // A bound only so that a missing answer fails instead of hanging.
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("every waiting append is answered");
        assert!(
            matches!(&r, Err(e) if matches!(**e, StreamError::Deleted)),
            "{r:?}"
        );
    }
    assert!(!dir.path().join("a").exists());
}

/// Big appends queued at once through the writer thread (its batches of 1 MiB or more go
/// through the flusher; the log-level test below checks that path is taken): every append
/// is confirmed, in order, each offset range after the one before; everything reads back,
/// and after segments rolled a reopen finds every confirmed message.
#[test]
fn pipelined_big_appends_are_confirmed_in_order_and_all_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = StreamConfig {
        max_segment_size_bytes: 400_000,
        ..StreamConfig::default()
    };
    let (s, _) = Stream::open(dir.path(), config.clone()).unwrap();
    let (tx, rx) = mpsc::channel();
    let mut want = Vec::new();
    for a in 0..120u64 {
        // 24 messages of ~1 KiB: one append is a chunk big enough to be built in place.
        let msgs: Vec<AppendMessage> = (0..24u64)
            .map(|i| {
                let body = format!("{a}-{i}-{}", "x".repeat(1000 + (a as usize * 7) % 50));
                want.push(body.clone());
                msg(a * 24 + i + 1, &body)
            })
            .collect();
        let tx = tx.clone();
        s.append(
            Some("w".into()),
            msgs,
            Box::new(move |r| {
                let _ = tx.send((a, r.map(|x| x.first_offset).map_err(|e| e.to_string())));
            }),
        )
        .unwrap();
    }
    drop(tx);
    let answers: Vec<_> = rx.iter().collect();
    assert_eq!(answers.len(), 120);
    let mut last = None;
    for (i, (a, r)) in answers.iter().enumerate() {
        assert_eq!(*a, i as u64, "confirms keep the appends' order");
        let first = r.clone().unwrap().expect("written");
        assert!(last.is_none_or(|l| first > l), "{first} after {last:?}");
        last = Some(first);
    }
    let bodies = read_bodies(&s);
    assert_eq!(bodies, want);
    assert!(s.shared().view().segments.len() >= 5, "segments rolled");
    assert_eq!(s.writer_sequence("w"), 120 * 24);
    drop(s);
    let (s, _) = Stream::open(dir.path(), config).unwrap();
    let bodies = read_bodies(&s);
    assert_eq!(bodies, want);
    assert_eq!(s.writer_sequence("w"), 120 * 24);
}

/// The log's pipelined path itself: chunks of over 1 MiB are written by the flusher while
/// the next is built, `sync_then` answers each batch in order once it is durable (readers
/// see a batch only then), segments roll under the pipeline, and a crash right after the
/// last answer loses nothing answered.
#[test]
fn the_flusher_writes_big_chunks_and_answers_each_sync_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = StreamConfig {
        max_segment_size_bytes: 5 << 20,
        ..StreamConfig::default()
    };
    let (tx, rx) = mpsc::channel();
    let mut want = Vec::new();
    {
        let (mut log, _) = StreamLog::open(dir.path(), config.clone()).unwrap();
        if !log.writes_direct() {
            return; // no O_DIRECT here (tmpfs): nothing is pipelined
        }
        for round in 0..12usize {
            let entries: Vec<(Entry, Option<Bytes>)> = (0..1100)
                .map(|i| {
                    let body = format!("{round}-{i}-{}", "p".repeat(1000));
                    want.push(body.clone());
                    (Entry::Simple(Bytes::from(body)), None)
                })
                .collect();
            log.append_user(&entries, &[]).unwrap();
            let tx = tx.clone();
            let shared = Arc::clone(log.shared());
            log.sync_then(Box::new(move |r| {
                let shown = shared.view().written_next;
                tx.send((round, r.is_ok(), shown)).unwrap();
            }));
        }
        log.drain().unwrap();
        // All but each segment's first (written by the writer: see `proven`).
        let segments = log.shared().view().segments.len() as u64;
        assert_eq!(log.pipelined_chunks, 12 - segments);
        assert!(segments >= 3, "segments rolled");
        std::mem::forget(log); // a crash: nothing trimmed
    }
    drop(tx);
    let answers: Vec<_> = rx.iter().collect();
    assert_eq!(answers.len(), 12);
    for (i, (round, ok, shown)) in answers.iter().enumerate() {
        assert_eq!((*round, *ok), (i, true));
        // Shown to readers when answered: this batch and every one before it.
        assert!(*shown >= 1100 * (i as u64 + 1), "batch {i}: {shown}");
    }
    let (s, _) = Stream::open(dir.path(), config).unwrap();
    let bodies = read_bodies(&s);
    assert_eq!(bodies, want);
}
