//! Stable-Rust "fuzz smoke" test: deterministic pseudo-random and mutated-valid inputs
//! through the entry points of the cargo-fuzz targets in `fuzz/` (`stream_client_frame`,
//! `stream_server_frame`, `stream_chunk`, `stream_amqp_message`; they call
//! `pier_stream_wire::fuzzing`). Nothing may panic, every error must map to a close code, and
//! whatever decodes must re-encode stably. Seeds are the golden frames captured from
//! RabbitMQ plus chunks and messages built through the API; the harness is
//! `pier-fuzz-smoke`'s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_fuzz_smoke::{run, Mutator, Rng};
use pier_stream_wire::amqp::{Body, Header, Message, Properties as AmqpProperties, Value};
use pier_stream_wire::chunk::{ChunkBuilder, ChunkType};
use pier_stream_wire::fuzzing;
use pier_stream_wire::*;

const ITERATIONS: usize = 100_000;

/// Golden frames: (direction, bytes). Lines: `DIR LABEL HEX`.
fn golden() -> Vec<(char, Vec<u8>)> {
    [
        include_str!("golden/rabbitmq-3.10.8.txt"),
        include_str!("golden/rabbit_stream_core-main.txt"),
    ]
    .iter()
    .flat_map(|t| pier_fuzz_smoke::golden(t))
    .map(|g| (g.dir, g.bytes))
    .collect()
}

fn sample_message() -> Message {
    Message {
        header: Some(Header {
            durable: Some(true),
            priority: Some(5),
            ..Header::default()
        }),
        delivery_annotations: Some(vec![(Value::Ulong(9), Value::Null)]),
        message_annotations: Some(vec![(
            Value::Symbol("x-opt".into()),
            Value::Array(vec![Value::Int(1), Value::Int(2)]),
        )]),
        properties: Some(AmqpProperties {
            message_id: Some(Value::Uuid([7; 16])),
            content_type: Some("application/json".into()),
            creation_time: Some(1),
            ..AmqpProperties::default()
        }),
        application_properties: Some(vec![
            ("s".into(), Value::String("v".into())),
            ("d".into(), Value::Double(0.5)),
            (
                "l".into(),
                Value::List(vec![Value::Null, Value::Bool(false)]),
            ),
            (
                "m".into(),
                Value::Map(vec![(Value::Symbol("k".into()), Value::Ulong(1 << 40))]),
            ),
        ]),
        body: Body::Data(vec![Bytes::from_static(b"{\"a\":1}")]),
        footer: Some(vec![(
            Value::Symbol("f".into()),
            Value::Binary(Bytes::new()),
        )]),
    }
}

fn messages() -> Vec<Vec<u8>> {
    let mut v = vec![
        sample_message().to_bytes().unwrap().to_vec(),
        Message::with_data(Bytes::from_static(b"hello"))
            .to_bytes()
            .unwrap()
            .to_vec(),
    ];
    let seq = Message {
        body: Body::Sequence(vec![vec![Value::Char(0x41), Value::Timestamp(-1)]]),
        ..Message::default()
    };
    v.push(seq.to_bytes().unwrap().to_vec());
    let val = Message {
        body: Body::Value(Value::Described(
            Box::new(Value::Symbol("x".into())),
            Box::new(Value::Decimal64([1; 8])),
        )),
        ..Message::default()
    };
    v.push(val.to_bytes().unwrap().to_vec());
    v
}

fn chunks() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = ChunkBuilder::new(10, 2, 1_700_000_000_000);
    for (i, m) in messages().iter().enumerate() {
        let filter = if i % 2 == 0 { Some(&b"f"[..]) } else { None };
        b.push_message(m, filter).unwrap();
    }
    b.push_entry(
        &Entry::SubBatch(SubBatch::uncompressed([&messages()[1][..], b"x"]).unwrap()),
        None,
    )
    .unwrap();
    let c = b.build();
    let mut stored = BytesMut::new();
    c.encode_stored(&mut stored);
    out.push(stored.to_vec());
    let mut delivered = BytesMut::new();
    c.encode_delivered(&mut delivered);
    out.push(delivered.to_vec());
    let t = ChunkBuilder::new(0, 1, 0)
        .chunk_type(ChunkType::TrackingSnapshot)
        .trailer(Bytes::from_static(&[
            0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0, 0, 0, 9,
        ]))
        .build();
    let mut s = BytesMut::new();
    t.encode_stored(&mut s);
    out.push(s.to_vec());
    out
}

/// Type codes of AMQP 1.0 values, lengths' edges.
const MUTATOR: Mutator = Mutator {
    interesting: &[0, 1, 2, 0x7f, 0x80, 0xff, 0x40, 0x50, 0xa1, 0xc0, 0xe0],
};

/// A frame-shaped envelope (valid size, a real key and version) around noise, so that the
/// command decoders are reached.
fn envelope(rng: &mut Rng) -> Vec<u8> {
    let key = (1 + rng.below(31)) as u16 | if rng.below(2) == 0 { 0x8000 } else { 0 };
    let version = if rng.below(8) == 0 {
        rng.byte() as u16
    } else {
        1 + rng.below(2) as u16
    };
    let mut body = Vec::new();
    body.extend_from_slice(&key.to_be_bytes());
    body.extend_from_slice(&version.to_be_bytes());
    body.extend((0..rng.below(60)).map(|_| rng.byte()));
    let mut out = ((body.len()) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn check(
    name: &str,
    seeds: &[Vec<u8>],
    all: &[Vec<u8>],
    framed: bool,
    target: impl Fn(&[u8]) -> bool,
) {
    for s in seeds {
        assert!(target(s), "{name}: seed does not decode: {s:02x?}");
    }
    let out = run(
        0x5EED_57EA_0000_0001 ^ name.len() as u64,
        ITERATIONS,
        |rng, i| match i % 3 {
            0 if framed => envelope(rng),
            0 => rng.noise(200),
            _ => {
                let mut s = rng.pick(seeds).clone();
                MUTATOR.mutate(rng, &mut s, all);
                s
            }
        },
        |_, input| usize::from(target(input)),
    );
    out.assert_both(name, 20);
}

#[test]
fn fuzz_smoke_client_frames() {
    let seeds: Vec<Vec<u8>> = golden()
        .into_iter()
        .filter(|(d, b)| {
            *d == 'C'
                && matches!(
                    ClientCommand::decode(&Bytes::from(b.clone()), 0),
                    Ok(Some(_))
                )
        })
        .map(|(_, b)| b)
        .collect();
    assert!(seeds.len() > 40);
    let all: Vec<Vec<u8>> = golden().into_iter().map(|(_, b)| b).collect();
    check("client", &seeds, &all, true, |d| {
        fuzzing::client_frames(d) > 0
    });
}

#[test]
fn fuzz_smoke_server_frames() {
    let seeds: Vec<Vec<u8>> = golden()
        .into_iter()
        .filter(|(d, _)| *d == 'S')
        .map(|(_, b)| b)
        .collect();
    assert!(seeds.len() > 40);
    let all: Vec<Vec<u8>> = golden().into_iter().map(|(_, b)| b).collect();
    check("server", &seeds, &all, true, |d| {
        fuzzing::server_frames(d) > 0
    });
}

#[test]
fn fuzz_smoke_chunks() {
    let mut seeds = chunks();
    // the chunks RabbitMQ delivered
    for (_, b) in golden() {
        if b.len() > 9 && b[4..6] == [0, 8] {
            let skip = if b[7] == 2 { 17 } else { 9 };
            seeds.push(b[skip..].to_vec());
        }
    }
    let stored_only: Vec<Vec<u8>> = seeds.clone();
    check("chunk", &stored_only, &seeds, false, |d| {
        fuzzing::chunk(d);
        // "decoded": a delivered or stored chunk parsed
        pier_stream_wire::chunk::Chunk::parse_delivered(&Bytes::copy_from_slice(d)).is_ok()
            || pier_stream_wire::chunk::Chunk::parse_stored(&Bytes::copy_from_slice(d)).is_ok()
    });
}

#[test]
fn fuzz_smoke_amqp() {
    let seeds = messages();
    check("amqp", &seeds, &seeds, false, fuzzing::amqp);
}

/// Regenerates the seed corpora of the cargo-fuzz targets:
/// `cargo test -p pier-stream-wire --test fuzz_smoke -- --ignored write_fuzz_corpus`.
#[test]
#[ignore = "writes files into fuzz/corpus; run by hand"]
fn write_fuzz_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let write = |dir: &str, items: &[Vec<u8>]| {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        for (i, item) in items.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i:02}.bin")), item).unwrap();
        }
    };
    let g = golden();
    // A handful of representative frames keeps the corpus small.
    let pick = |dir: char, n: usize| -> Vec<Vec<u8>> {
        let all: Vec<Vec<u8>> = g
            .iter()
            .filter(|(d, b)| *d == dir && b.len() < 4096)
            .map(|(_, b)| b.clone())
            .collect();
        let step = (all.len() / n).max(1);
        all.into_iter().step_by(step).take(n).collect()
    };
    write("stream_client_frame", &pick('C', 16));
    write("stream_server_frame", &pick('S', 16));
    write("stream_chunk", &chunks());
    write("stream_amqp_message", &messages());
}
