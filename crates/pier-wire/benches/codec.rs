//! Hot-path codec costs: decoding a publish (method + header + body) and encoding a delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pier_wire::{
    decode_frame, encode_basic_deliver, encode_body_frames, encode_content_header,
    encode_method_frame, BasicProperties, BasicPublish, FieldTable, FieldValue, Method,
    ShortString,
};

fn publish_bytes(body: usize, batch: usize) -> Bytes {
    let mut props = BasicProperties {
        content_type: Some(ShortString::from("application/json")),
        delivery_mode: Some(2),
        ..BasicProperties::default()
    };
    let mut headers = FieldTable::new();
    headers.insert("trace-id", FieldValue::LongString("abc123".into()));
    props.headers = Some(headers);
    let mut raw = BytesMut::new();
    props.encode(&mut raw);
    let body = vec![7u8; body];
    let mut out = BytesMut::new();
    for _ in 0..batch {
        let m = Method::BasicPublish(BasicPublish {
            ticket: 0,
            exchange: ShortString::from("amq.topic"),
            routing_key: ShortString::from("orders.eu.created"),
            mandatory: false,
            immediate: false,
        });
        encode_method_frame(&mut out, 1, &m);
        encode_content_header(&mut out, 1, 60, body.len() as u64, &raw);
        encode_body_frames(&mut out, 1, &body, 131_072);
    }
    out.freeze()
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_publish");
    for size in [16usize, 1024] {
        let input = publish_bytes(size, 100);
        g.throughput(Throughput::Elements(100));
        g.bench_function(format!("{size}B_x100"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&input[..]);
                let mut frames = 0;
                while let Some(f) = decode_frame(&mut buf, 131_072).unwrap() {
                    black_box(&f);
                    frames += 1;
                }
                assert_eq!(frames, 300);
            });
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_deliver");
    let props = {
        let mut raw = BytesMut::new();
        BasicProperties {
            delivery_mode: Some(2),
            ..BasicProperties::default()
        }
        .encode(&mut raw);
        raw.freeze()
    };
    for size in [16usize, 1024] {
        let body = vec![1u8; size];
        g.throughput(Throughput::Elements(100));
        g.bench_function(format!("{size}B_x100"), |b| {
            let mut out = BytesMut::with_capacity(256 * 1024);
            b.iter(|| {
                out.clear();
                for tag in 0..100u64 {
                    encode_basic_deliver(
                        &mut out,
                        1,
                        131_072,
                        "amq.ctag-abcdefghijklmnopqrstuv",
                        tag,
                        false,
                        "amq.topic",
                        "orders.eu.created",
                        &props,
                        &body,
                    );
                }
                black_box(out.len());
            });
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
