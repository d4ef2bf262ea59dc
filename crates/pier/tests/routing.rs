//! Exchange routing: direct, fanout, topic (`*`, `#`, empty words), headers
//! (x-match all/any), exchange-to-exchange bindings, and de-duplication of a
//! message that reaches one queue through several paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{timed, unique, Broker};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

struct Fixture {
    channel: Channel,
    exchanges: Vec<String>,
}

impl Fixture {
    async fn new(broker: &Broker) -> (lapin::Connection, Fixture) {
        let (connection, channel) = broker.connect_channel().await;
        timed(channel.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        (
            connection,
            Fixture {
                channel,
                exchanges: Vec::new(),
            },
        )
    }

    async fn exchange(&mut self, prefix: &str, kind: ExchangeKind) -> String {
        let name = unique(prefix);
        timed(self.channel.exchange_declare(
            name.as_str().into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        self.exchanges.push(name.clone());
        name
    }

    async fn queue(&self, prefix: &str) -> String {
        let name = unique(prefix);
        timed(self.channel.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        name
    }

    async fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.bind_args(queue, exchange, key, FieldTable::default())
            .await;
    }

    async fn bind_args(&self, queue: &str, exchange: &str, key: &str, args: FieldTable) {
        timed(self.channel.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ))
        .await
        .unwrap();
    }

    async fn publish(&self, exchange: &str, key: &str, body: &str) {
        self.publish_props(exchange, key, body, BasicProperties::default())
            .await;
    }

    async fn publish_props(&self, exchange: &str, key: &str, body: &str, props: BasicProperties) {
        let confirm = timed(self.channel.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        ))
        .await
        .unwrap();
        // Once confirmed, the message has been routed to (and enqueued on)
        // every matching queue.
        assert!(timed(confirm).await.unwrap().is_ack());
    }

    /// All messages currently in `queue`, in order (consumed with no_ack).
    async fn drain(&self, queue: &str) -> Vec<String> {
        let mut bodies = Vec::new();
        while let Some(message) = timed(
            self.channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap()
        {
            bodies.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
        }
        bodies
    }

    async fn cleanup(self, connection: lapin::Connection) {
        for exchange in &self.exchanges {
            timed(
                self.channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
            )
            .await
            .unwrap();
        }
        timed(connection.close(200, "bye".into())).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_exchange_routes_on_exact_key() {
    let broker = Broker::start();
    let (connection, mut f) = Fixture::new(&broker).await;
    let x = f.exchange("routing-direct", ExchangeKind::Direct).await;
    let qa = f.queue("routing-direct-a").await;
    let qb = f.queue("routing-direct-b").await;
    let qab = f.queue("routing-direct-ab").await;
    f.bind(&qa, &x, "a").await;
    f.bind(&qb, &x, "b").await;
    f.bind(&qab, &x, "a").await;
    f.bind(&qab, &x, "b").await;
    // Binding the same key twice is idempotent.
    f.bind(&qab, &x, "b").await;

    for key in ["a", "b", "c", "A", "a.b", ""] {
        f.publish(&x, key, key).await;
    }
    assert_eq!(f.drain(&qa).await, ["a"]);
    assert_eq!(f.drain(&qb).await, ["b"]);
    assert_eq!(f.drain(&qab).await, ["a", "b"]);

    // Unbinding stops the routing.
    timed(f.channel.queue_unbind(
        qab.as_str().into(),
        x.as_str().into(),
        "a".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    f.publish(&x, "a", "after-unbind").await;
    assert_eq!(f.drain(&qa).await, ["after-unbind"]);
    assert!(f.drain(&qab).await.is_empty());

    // The default exchange routes by queue name.
    f.publish("", &qb, "by-name").await;
    assert_eq!(f.drain(&qb).await, ["by-name"]);

    f.cleanup(connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_exchange_ignores_routing_key() {
    let broker = Broker::start();
    let (connection, mut f) = Fixture::new(&broker).await;
    let x = f.exchange("routing-fanout", ExchangeKind::Fanout).await;
    let queues = [
        f.queue("routing-fanout-1").await,
        f.queue("routing-fanout-2").await,
        f.queue("routing-fanout-3").await,
    ];
    f.bind(&queues[0], &x, "").await;
    f.bind(&queues[1], &x, "ignored").await;
    f.bind(&queues[2], &x, "#").await;
    f.publish(&x, "", "one").await;
    f.publish(&x, "anything.at.all", "two").await;
    for queue in &queues {
        assert_eq!(f.drain(queue).await, ["one", "two"], "queue {queue}");
    }
    f.cleanup(connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_exchange_wildcards() {
    let broker = Broker::start();
    let (connection, mut f) = Fixture::new(&broker).await;
    let x = f.exchange("routing-topic", ExchangeKind::Topic).await;

    let keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy",
        "quick.orange.male.rabbit",
        "lazy.orange.male.rabbit",
        "",
        "a..c",
        "a.b.c",
        "end",
        "the.end",
        "x.y",
        "x.a.b.y",
        ".",
    ];
    // (binding pattern, routing keys it must match, in publish order)
    let table: &[(&str, &[&str])] = &[
        (
            "*.orange.*",
            &[
                "quick.orange.rabbit",
                "lazy.orange.elephant",
                "quick.orange.fox",
            ],
        ),
        ("*.*.rabbit", &["quick.orange.rabbit"]),
        (
            "lazy.#",
            &[
                "lazy.orange.elephant",
                "lazy.brown.fox",
                "lazy",
                "lazy.orange.male.rabbit",
            ],
        ),
        ("#", &keys),
        ("", &[""]),
        ("a..c", &["a..c"]),
        ("a.*.c", &["a..c", "a.b.c"]),
        ("#.end", &["end", "the.end"]),
        ("x.#.y", &["x.y", "x.a.b.y"]),
        ("*", &["lazy", "end"]),
        ("*.*", &["the.end", "x.y", "."]),
        ("quick.orange.fox", &["quick.orange.fox"]),
        ("#.#", &keys),
        (
            "*.#",
            &[
                "quick.orange.rabbit",
                "lazy.orange.elephant",
                "quick.orange.fox",
                "lazy.brown.fox",
                "lazy",
                "quick.orange.male.rabbit",
                "lazy.orange.male.rabbit",
                "a..c",
                "a.b.c",
                "end",
                "the.end",
                "x.y",
                "x.a.b.y",
                ".",
            ],
        ),
    ];
    let mut queues = Vec::new();
    for (pattern, _) in table {
        let queue = f.queue("routing-topic").await;
        f.bind(&queue, &x, pattern).await;
        queues.push(queue);
    }
    for key in keys {
        f.publish(&x, key, key).await;
    }
    let mut failures = Vec::new();
    for ((pattern, expected), queue) in table.iter().zip(&queues) {
        let got = f.drain(queue).await;
        if got != *expected {
            failures.push(format!(
                "pattern {pattern:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "topic mismatches:\n{}",
        failures.join("\n")
    );
    f.cleanup(connection).await;
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert((*key).into(), value.clone());
    }
    table
}

fn s(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_all_and_any() {
    let broker = Broker::start();
    let (connection, mut f) = Fixture::new(&broker).await;
    let x = f.exchange("routing-headers", ExchangeKind::Headers).await;
    let q_all = f.queue("routing-headers-all").await;
    let q_any = f.queue("routing-headers-any").await;
    let q_empty_all = f.queue("routing-headers-empty-all").await;
    let q_default = f.queue("routing-headers-default").await;
    f.bind_args(
        &q_all,
        &x,
        "ignored",
        table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
    )
    .await;
    f.bind_args(
        &q_any,
        &x,
        "",
        table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("log")),
        ]),
    )
    .await;
    f.bind_args(&q_empty_all, &x, "", table(&[("x-match", s("all"))]))
        .await;
    // Without x-match, "all" is the default.
    f.bind_args(
        &q_default,
        &x,
        "",
        table(&[("format", s("pdf")), ("type", s("report"))]),
    )
    .await;

    let messages: &[(&str, FieldTable)] = &[
        (
            "pdf-report",
            table(&[("format", s("pdf")), ("type", s("report"))]),
        ),
        (
            "pdf-log",
            table(&[("format", s("pdf")), ("type", s("log"))]),
        ),
        (
            "zip-log",
            table(&[("format", s("zip")), ("type", s("log"))]),
        ),
        (
            "zip-report",
            table(&[("format", s("zip")), ("type", s("report"))]),
        ),
        ("pdf-only", table(&[("format", s("pdf"))])),
        (
            "pdf-report-extra",
            table(&[
                ("format", s("pdf")),
                ("type", s("report")),
                ("extra", AMQPValue::LongInt(1)),
            ]),
        ),
        ("no-headers", FieldTable::default()),
    ];
    for (body, headers) in messages {
        let props = if headers.inner().is_empty() {
            BasicProperties::default()
        } else {
            BasicProperties::default().with_headers(headers.clone())
        };
        // The routing key is irrelevant for headers exchanges.
        f.publish_props(&x, "whatever", body, props).await;
    }
    assert_eq!(f.drain(&q_all).await, ["pdf-report", "pdf-report-extra"]);
    assert_eq!(
        f.drain(&q_any).await,
        [
            "pdf-report",
            "pdf-log",
            "zip-log",
            "pdf-only",
            "pdf-report-extra"
        ]
    );
    assert_eq!(
        f.drain(&q_empty_all).await,
        [
            "pdf-report",
            "pdf-log",
            "zip-log",
            "zip-report",
            "pdf-only",
            "pdf-report-extra",
            "no-headers"
        ]
    );
    assert_eq!(
        f.drain(&q_default).await,
        ["pdf-report", "pdf-report-extra"]
    );
    f.cleanup(connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bindings() {
    let broker = Broker::start();
    let (connection, mut f) = Fixture::new(&broker).await;
    let source = f.exchange("routing-e2e-source", ExchangeKind::Direct).await;
    let middle = f.exchange("routing-e2e-middle", ExchangeKind::Topic).await;
    let sink = f.exchange("routing-e2e-sink", ExchangeKind::Fanout).await;
    let q_middle = f.queue("routing-e2e-q-middle").await;
    let q_sink = f.queue("routing-e2e-q-sink").await;

    // source --(key "orders.eu")--> middle --("orders.*")--> q_middle
    //                                      --("#.eu")--> sink --> q_sink
    timed(f.channel.exchange_bind(
        middle.as_str().into(),
        source.as_str().into(),
        "orders.eu".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(f.channel.exchange_bind(
        sink.as_str().into(),
        middle.as_str().into(),
        "#.eu".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    f.bind(&q_middle, &middle, "orders.*").await;
    f.bind(&q_sink, &sink, "").await;

    f.publish(&source, "orders.eu", "via-source").await;
    f.publish(&source, "orders.us", "not-bound-on-source").await;
    f.publish(&middle, "orders.us", "middle-us").await;
    f.publish(&middle, "stock.eu", "middle-stock-eu").await;
    f.publish(&sink, "x", "sink-direct").await;

    assert_eq!(f.drain(&q_middle).await, ["via-source", "middle-us"]);
    assert_eq!(
        f.drain(&q_sink).await,
        ["via-source", "middle-stock-eu", "sink-direct"]
    );

    // exchange.unbind cuts the path.
    timed(f.channel.exchange_unbind(
        middle.as_str().into(),
        source.as_str().into(),
        "orders.eu".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    f.publish(&source, "orders.eu", "after-unbind").await;
    assert!(f.drain(&q_middle).await.is_empty());
    assert!(f.drain(&q_sink).await.is_empty());
    f.cleanup(connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_reaching_a_queue_through_several_paths_arrives_once() {
    let broker = Broker::start();
    let (connection, mut f) = Fixture::new(&broker).await;
    let topic = f.exchange("routing-dedup-topic", ExchangeKind::Topic).await;
    let fanout = f
        .exchange("routing-dedup-fanout", ExchangeKind::Fanout)
        .await;
    let queue = f.queue("routing-dedup").await;
    let other = f.queue("routing-dedup-other").await;

    // Three overlapping bindings on the topic exchange ...
    f.bind(&queue, &topic, "a.*").await;
    f.bind(&queue, &topic, "#").await;
    f.bind(&queue, &topic, "a.b").await;
    // ... plus a detour through a fanout exchange, itself reached twice.
    f.bind(&queue, &fanout, "").await;
    f.bind(&other, &fanout, "").await;
    for key in ["a.#", "*.b"] {
        timed(f.channel.exchange_bind(
            fanout.as_str().into(),
            topic.as_str().into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }

    f.publish(&topic, "a.b", "once").await;
    f.publish(&topic, "z", "only-hash").await;
    assert_eq!(f.drain(&queue).await, ["once", "only-hash"]);
    assert_eq!(f.drain(&other).await, ["once"]);
    f.cleanup(connection).await;
}
