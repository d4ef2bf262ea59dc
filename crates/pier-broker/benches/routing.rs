//! Routing costs with many bindings: topic patterns and headers matching, as `VHost::route`
//! runs them on every publish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pier_broker::{ExchangeDeclare, QueueDeclare, VHost};
use pier_wire::{FieldTable, FieldValue, ShortString};

fn setup(kind: &str, bindings: usize) -> std::sync::Arc<VHost> {
    let vh = VHost::new("/");
    vh.declare_exchange(&ExchangeDeclare {
        name: ShortString::from("x"),
        kind: kind.to_owned(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::new(),
    })
    .unwrap();
    for i in 0..bindings {
        let q = format!("q{i}");
        vh.declare_queue(&QueueDeclare {
            name: ShortString::from(q.as_str()),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::new(),
            connection: 1,
        })
        .unwrap();
        let (key, args) = if kind == "topic" {
            (
                format!("region{}.*.type{}.#", i % 50, i % 20),
                FieldTable::new(),
            )
        } else {
            let mut a = FieldTable::new();
            a.insert("x-match", FieldValue::LongString("all".into()));
            a.insert(
                "region",
                FieldValue::LongString(format!("r{}", i % 50).into()),
            );
            a.insert("kind", FieldValue::LongInt(i32::try_from(i % 20).unwrap()));
            (String::new(), a)
        };
        vh.bind_queue(&q, "x", ShortString::from(key.as_str()), args, 1)
            .unwrap();
    }
    vh
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for n in [100usize, 1000, 5000] {
        let vh = setup("topic", n);
        let mut out = Vec::new();
        g.bench_function(format!("topic_{n}_bindings"), |b| {
            b.iter(|| {
                out.clear();
                vh.route("x", "region7.eu.type7.created", None, &mut out)
                    .unwrap();
                black_box(out.len());
            });
        });
        let vh = setup("headers", n);
        let mut headers = FieldTable::new();
        headers.insert("region", FieldValue::LongString("r7".into()));
        headers.insert("kind", FieldValue::LongInt(7));
        g.bench_function(format!("headers_{n}_bindings"), |b| {
            b.iter(|| {
                out.clear();
                vh.route("x", "", Some(&headers), &mut out).unwrap();
                black_box(out.len());
            });
        });
    }
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
