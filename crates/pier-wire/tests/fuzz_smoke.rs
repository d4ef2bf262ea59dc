//! Stable-Rust "fuzz smoke" test: ~200k deterministic pseudo-random and mutated-valid inputs
//! through the same entry points as the cargo-fuzz targets in `fuzz/` (decode_frame in a
//! loop, Method::decode, BasicProperties::decode, ContentHeader::decode,
//! decode_field_table). Nothing may panic, and whatever decodes must re-encode stably.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_fuzz_smoke::{run, Mutator, Rng};
use pier_wire::*;

const ITERATIONS: usize = 200_000;

/// Valid frames built through the public API (covering every frame type, tables with every
/// value type, bit groups, content with properties).
fn seeds() -> Vec<Vec<u8>> {
    let mut inner = FieldTable::new();
    inner.insert(
        "deep",
        FieldValue::Array(vec![FieldValue::Void, FieldValue::Bool(true)]),
    );
    let mut table = FieldTable::new();
    table.insert("t", FieldValue::Bool(true));
    table.insert("b", FieldValue::ShortShortInt(-1));
    table.insert("B", FieldValue::ShortShortUInt(1));
    table.insert("s", FieldValue::ShortInt(-2));
    table.insert("u", FieldValue::ShortUInt(2));
    table.insert("I", FieldValue::LongInt(-3));
    table.insert("i", FieldValue::LongUInt(3));
    table.insert("l", FieldValue::LongLongInt(-4));
    table.insert("L", FieldValue::LongLongUInt(4));
    table.insert("f", FieldValue::Float(0.5));
    table.insert("d", FieldValue::Double(0.25));
    table.insert("D", FieldValue::Decimal { scale: 1, value: 5 });
    table.insert("S", FieldValue::from("str"));
    table.insert("x", FieldValue::ByteArray(Bytes::from_static(b"\x00\x01")));
    table.insert(
        "A",
        FieldValue::Array(vec![
            FieldValue::LongInt(1),
            FieldValue::Table(inner.clone()),
        ]),
    );
    table.insert("T", FieldValue::Timestamp(1));
    table.insert("F", FieldValue::Table(inner));
    table.insert("V", FieldValue::Void);

    let methods: Vec<Method> = vec![
        ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: table.clone(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        }
        .into(),
        ConnectionStartOk {
            client_properties: table.clone(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        }
        .into(),
        ConnectionTune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        }
        .into(),
        ConnectionOpen {
            virtual_host: "/".into(),
            ..Default::default()
        }
        .into(),
        ConnectionClose {
            reply_code: 320,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
        ChannelOpen::default().into(),
        ExchangeDeclare {
            exchange: "ex".into(),
            kind: "topic".into(),
            durable: true,
            internal: true,
            arguments: table.clone(),
            ..Default::default()
        }
        .into(),
        QueueDeclare {
            queue: "q".into(),
            exclusive: true,
            nowait: true,
            arguments: table.clone(),
            ..Default::default()
        }
        .into(),
        QueueBind {
            queue: "q".into(),
            exchange: "ex".into(),
            routing_key: "a.*".into(),
            ..Default::default()
        }
        .into(),
        QueueDelete {
            queue: "q".into(),
            if_empty: true,
            ..Default::default()
        }
        .into(),
        BasicQos {
            prefetch_count: 10,
            ..Default::default()
        }
        .into(),
        BasicConsume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            no_ack: true,
            arguments: table.clone(),
            ..Default::default()
        }
        .into(),
        BasicPublish {
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            mandatory: true,
            ..Default::default()
        }
        .into(),
        BasicGetOk {
            delivery_tag: 1,
            redelivered: true,
            exchange: "".into(),
            routing_key: "q".into(),
            message_count: 3,
        }
        .into(),
        BasicNack {
            delivery_tag: 9,
            multiple: true,
            requeue: true,
        }
        .into(),
        ConfirmSelect { nowait: false }.into(),
        TxCommit.into(),
    ];
    let mut seeds = Vec::new();
    for (i, m) in methods.iter().enumerate() {
        let mut out = BytesMut::new();
        encode_method_frame(&mut out, i as u16, m);
        seeds.push(out.to_vec());
    }
    let props = BasicProperties {
        content_type: Some("application/json".into()),
        headers: Some(table),
        delivery_mode: Some(2),
        timestamp: Some(7),
        kind: Some("t".into()),
        ..Default::default()
    };
    let raw = props.to_bytes().unwrap();
    let mut out = BytesMut::new();
    encode_basic_deliver(
        &mut out,
        1,
        4096,
        "ctag",
        5,
        false,
        "ex",
        "rk",
        &raw,
        &[42u8; 5000],
    );
    seeds.push(out.to_vec());
    let mut out = BytesMut::new();
    encode_content_header(&mut out, 1, 60, 3, &raw);
    encode_body_frames(&mut out, 1, b"abc", 4096);
    seeds.push(out.to_vec());
    let mut out = BytesMut::new();
    encode_heartbeat(&mut out);
    seeds.push(out.to_vec());
    seeds
}

/// Frame ends, frame types, field-table type tags.
const MUTATOR: Mutator = Mutator {
    interesting: &[0, 1, 0x7f, 0x80, 0xff, 0xce, b'F', b'A', b'S', b'x'],
};

fn random_input(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(2) {
        // raw noise
        let n = rng.below(200);
        return (0..n).map(|_| rng.byte()).collect();
    }
    // a frame-shaped envelope around noise, so payload decoders are reached
    let other = rng.byte();
    let frame_type = *rng.pick(&[1u8, 2, 3, 8, other]);
    let mut payload: Vec<u8> = Vec::new();
    if frame_type == 1 && rng.chance(2) {
        let (c, m, _) = *rng.pick(ALL_METHODS);
        payload.extend_from_slice(&c.to_be_bytes());
        payload.extend_from_slice(&m.to_be_bytes());
    }
    let n = rng.below(120);
    payload.extend((0..n).map(|_| rng.byte()));
    let mut out = vec![frame_type, 0, rng.byte()];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out.push(if rng.chance(20) {
        rng.byte()
    } else {
        FRAME_END
    });
    out
}

/// Everything the fuzz targets do with one input. Returns how many frames decoded.
fn exercise(data: &[u8], max: u32) -> usize {
    let mut decoded = 0;
    let mut buf = BytesMut::from(data);
    loop {
        match decode_frame(&mut buf, max) {
            Ok(Some(frame)) => {
                decoded += 1;
                // Re-encoding is stable (compared as bytes: a garbage float may be NaN).
                let mut out1 = BytesMut::new();
                frame.encode(&mut out1);
                assert_eq!(out1.len(), frame.encoded_size());
                let again = decode_frame(&mut out1.clone(), 0)
                    .unwrap_or_else(|e| panic!("re-decode of {frame:?} failed: {e}"))
                    .expect("whole frame");
                let mut out2 = BytesMut::new();
                again.encode(&mut out2);
                assert_eq!(out1, out2);
                if let Frame::Header { header, .. } = &frame {
                    let _ = BasicProperties::decode(&header.raw_properties);
                }
            }
            Ok(None) => break,
            Err(e) => {
                let code = e.reply_code();
                assert!(code == 501 || code == 540, "{e:?} -> {code}");
                break;
            }
        }
    }
    let bytes = Bytes::copy_from_slice(data);
    let _ = Method::decode(&bytes);
    let _ = BasicProperties::decode(&bytes);
    let _ = ContentHeader::decode(&bytes);
    let _ = decode_field_table(&bytes);
    if data.len() > 8 {
        let payload = bytes.slice(7..data.len() - 1);
        let _ = Method::decode(&payload);
        let _ = ContentHeader::decode(&payload);
    }
    decoded
}

#[test]
fn fuzz_smoke() {
    let seeds = seeds();
    // The seeds themselves decode completely.
    for s in &seeds {
        let mut buf = BytesMut::from(&s[..]);
        while let Some(_f) = decode_frame(&mut buf, 4096).unwrap() {}
        assert!(buf.is_empty());
    }

    let out = run(
        0x5EED_0FC0_DE00_1234,
        ITERATIONS,
        |rng, i| {
            if i % 2 == 0 {
                random_input(rng)
            } else {
                MUTATOR.mutated(rng, &seeds)
            }
        },
        |rng, input| exercise(input, *rng.pick(&[0u32, 4096, 131_072, 9])),
    );
    assert!(out.units > ITERATIONS / 10, "{out:?}");
    out.assert_both("amqp", 10);
}

/// Regenerates the small seed corpus of the cargo-fuzz targets:
/// `cargo test -p pier-wire --test fuzz_smoke -- --ignored write_fuzz_corpus`.
#[test]
#[ignore = "writes files into fuzz/corpus; run by hand"]
fn write_fuzz_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let frames_dir = root.join("decode_frame");
    let tables_dir = root.join("field_table");
    std::fs::create_dir_all(&frames_dir).unwrap();
    std::fs::create_dir_all(&tables_dir).unwrap();
    let seeds = seeds();
    // A handful of representative frames keeps the corpus small.
    let picks = [
        0usize,
        2,
        6,
        7,
        11,
        12,
        14,
        seeds.len() - 3,
        seeds.len() - 2,
        seeds.len() - 1,
    ];
    for (n, &i) in picks.iter().enumerate() {
        std::fs::write(frames_dir.join(format!("seed-{n:02}.bin")), &seeds[i]).unwrap();
    }
    // Tables: the server-properties table of connection.start (inside seed 0) and small ones.
    let mut small = FieldTable::new();
    small.insert("x-message-ttl", FieldValue::LongInt(60_000));
    small.insert("x-dead-letter-exchange", FieldValue::from("dlx"));
    let mut nested = FieldTable::new();
    nested.insert("caps", FieldValue::Table(small.clone()));
    nested.insert(
        "list",
        FieldValue::Array(vec![FieldValue::Bool(true), FieldValue::Double(1.5)]),
    );
    for (n, t) in [FieldTable::new(), small, nested].iter().enumerate() {
        let mut out = BytesMut::new();
        encode_field_table(&mut out, t).unwrap();
        std::fs::write(tables_dir.join(format!("seed-{n:02}.bin")), &out).unwrap();
    }
    let Method::ConnectionStart(start) =
        Method::decode(&Bytes::copy_from_slice(&seeds[0][7..seeds[0].len() - 1])).unwrap()
    else {
        panic!("seed 0 is connection.start")
    };
    let mut out = BytesMut::new();
    encode_field_table(&mut out, &start.server_properties).unwrap();
    std::fs::write(tables_dir.join("seed-03.bin"), &out).unwrap();
}
