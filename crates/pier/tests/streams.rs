//! The stream protocol, driven by RabbitMQ's Rust stream client (`rabbitmq-stream-client`)
//! as an application would: publish with confirms, deduplication across a crash and restart,
//! every offset specification, server-side offset tracking, a consumer restarting from its
//! stored offset, super streams, single active consumer fail-over, filtering, retention.
//!
//! By default each test starts its own `pier` (with a fresh data directory). With
//! `PIER_TEST_STREAM_ADDR=host:port` the tests that a RabbitMQ of that version can run go to
//! that broker instead (the others are skipped: restarts need a process of our own; super
//! streams and single active consumer need RabbitMQ ≥ 3.11, filtering ≥ 3.13). The client
//! (0.11) cannot open an environment on RabbitMQ 3.10.8 (`ConnectionClosed` in the
//! handshake), so against 3.10.8 the Python suite (`test_streams_protocol.py`, rstream) is
//! the validated one. The tests run on a multi-threaded runtime: the client's producers and
//! consumers block in `Drop` and its super stream producer spawns per-partition work, which
//! hangs a current-thread runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use rabbitmq_stream_client::types::{
    ByteCapacity, HashRoutingMurmurStrategy, Message, OffsetSpecification, RoutingStrategy,
};
use rabbitmq_stream_client::{Environment, FilterConfiguration};

const STEP: Duration = Duration::from_secs(15);

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A broker for one test: our own `pier` process (restartable), or an external one.
struct Target {
    host: String,
    port: u16,
    pier: Option<Pier>,
}

struct Pier {
    child: Option<Child>,
    dir: tempfile::TempDir,
    amqp_port: u16,
    http_port: u16,
    stream_port: u16,
}

impl Pier {
    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pier.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pier"))
            .args([
                "server",
                "--bind",
                "127.0.0.1",
                "--stream-advertised-host",
                "127.0.0.1",
            ])
            .args(["--amqp-port", &self.amqp_port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--stream-port", &self.stream_port.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.stream_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pier did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pier.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pier {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Target {
    fn start() -> Target {
        if let Ok(addr) = std::env::var("PIER_TEST_STREAM_ADDR") {
            let (host, port) = addr.rsplit_once(':').expect("host:port");
            return Target {
                host: host.to_owned(),
                port: port.parse().expect("port"),
                pier: None,
            };
        }
        let mut pier = Pier {
            child: None,
            dir: tempfile::Builder::new()
                .prefix("pier-streams-")
                .tempdir()
                .unwrap(),
            amqp_port: free_port(),
            http_port: free_port(),
            stream_port: free_port(),
        };
        pier.spawn();
        Target {
            host: "127.0.0.1".into(),
            port: pier.stream_port,
            pier: Some(pier),
        }
    }

    /// Tests that need our own process or features newer than RabbitMQ 3.10 skip otherwise.
    fn pier_only(&self) -> bool {
        if self.pier.is_none() {
            eprintln!("skipped: Pier-only test");
            return false;
        }
        true
    }

    /// SIGKILL and start again on the same data and ports.
    fn crash_and_restart(&mut self) {
        let p = self.pier.as_mut().expect("own process");
        p.kill();
        p.spawn();
    }

    async fn env(&self) -> Environment {
        Environment::builder()
            .host(&self.host)
            .port(self.port)
            .build()
            .await
            .unwrap()
    }
}

fn body(m: &Message) -> String {
    String::from_utf8(m.data().unwrap_or_default().to_vec()).unwrap()
}

async fn create(env: &Environment, stream: &str) {
    env.stream_creator().create(stream).await.unwrap();
}

async fn publish(env: &Environment, stream: &str, bodies: impl IntoIterator<Item = String>) {
    let producer = env.producer().build(stream).await.unwrap();
    let messages: Vec<Message> = bodies
        .into_iter()
        .map(|b| Message::builder().body(b).build())
        .collect();
    for status in producer.batch_send_with_confirm(messages).await.unwrap() {
        assert!(status.confirmed());
    }
    producer.close().await.unwrap();
}

/// Reads `n` deliveries from `offset`: (offset, body).
async fn read(
    env: &Environment,
    stream: &str,
    offset: OffsetSpecification,
    n: usize,
) -> Vec<(u64, String)> {
    let mut consumer = env.consumer().offset(offset).build(stream).await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(STEP, consumer.next())
            .await
            .expect("a delivery in time")
            .unwrap()
            .unwrap();
        out.push((d.offset(), body(d.message())));
    }
    consumer.handle().close().await.unwrap();
    out
}

/// Nothing arrives within a short quiet period.
async fn nothing_more(consumer: &mut rabbitmq_stream_client::Consumer) {
    let r = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(
        r.is_err(),
        "unexpected delivery: {:?}",
        r.map(|d| d.map(|d| d.map(|d| d.offset())))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_confirms_and_consume_from_first() {
    let t = Target::start();
    let env = t.env().await;
    let s = unique("s");
    create(&env, &s).await;
    publish(&env, &s, (0..100).map(|i| format!("m{i}"))).await;
    let got = read(&env, &s, OffsetSpecification::First, 100).await;
    for (i, (o, b)) in got.iter().enumerate() {
        assert_eq!((*o, b.as_str()), (i as u64, format!("m{i}").as_str()));
    }
    env.delete_stream(&s).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_offset_specification() {
    let t = Target::start();
    let env = t.env().await;
    let s = unique("s");
    create(&env, &s).await;
    let before = chrono_now_ms() - 1000;
    publish(&env, &s, (0..10).map(|i| format!("a{i}"))).await;
    publish(&env, &s, (0..10).map(|i| format!("b{i}"))).await;
    // first
    assert_eq!(
        read(&env, &s, OffsetSpecification::First, 1).await[0].1,
        "a0"
    );
    // offset: the client skips the records of the chunk before it
    let at = read(&env, &s, OffsetSpecification::Offset(13), 1).await;
    assert_eq!(at[0], (13, "b3".to_owned()));
    // last: the start of the last chunk, in the second batch (the batches were confirmed one
    // after the other, so they are separate chunks; how the writer cut the second batch into
    // chunks depends on timing, so any of its records may start the last one)
    let last = read(&env, &s, OffsetSpecification::Last, 1).await;
    assert!(
        last[0].1.starts_with('b'),
        "last chunk starts at {:?}",
        last[0]
    );
    assert!(last[0].0 >= 10, "last chunk starts at {:?}", last[0]);
    // timestamp before everything: from the start
    let ts = read(&env, &s, OffsetSpecification::Timestamp(before), 1).await;
    assert_eq!(ts[0].1, "a0");
    // next: only what comes later
    let mut next = env
        .consumer()
        .offset(OffsetSpecification::Next)
        .build(&s)
        .await
        .unwrap();
    nothing_more(&mut next).await;
    publish(&env, &s, ["c0".to_owned()]).await;
    let d = tokio::time::timeout(STEP, next.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(body(d.message()), "c0");
    next.handle().close().await.unwrap();
    env.delete_stream(&s).await.unwrap();
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_offset_tracking() {
    let t = Target::start();
    let env = t.env().await;
    let s = unique("s");
    create(&env, &s).await;
    publish(&env, &s, (0..10).map(|i| format!("m{i}"))).await;
    let consumer = env
        .consumer()
        .name("tracker")
        .offset(OffsetSpecification::First)
        .build(&s)
        .await
        .unwrap();
    assert!(
        consumer.query_offset().await.is_err(),
        "no offset stored yet"
    );
    consumer.store_offset(6).await.unwrap();
    let deadline = Instant::now() + STEP;
    loop {
        match consumer.query_offset().await {
            Ok(6) => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("stored offset not found: {other:?}"),
        }
    }
    consumer.handle().close().await.unwrap();
    env.delete_stream(&s).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplication_and_stored_offsets_survive_a_crash() {
    let mut t = Target::start();
    if !t.pier_only() {
        return;
    }
    let s = unique("s");
    {
        let env = t.env().await;
        create(&env, &s).await;
        let mut producer = env.producer().name("app-1").build(&s).await.unwrap();
        for i in 1..=10u64 {
            let m = Message::builder()
                .body(format!("m{i}"))
                .publishing_id(i)
                .build();
            producer.send_with_confirm(m).await.unwrap();
        }
        let consumer = env
            .consumer()
            .name("reader")
            .offset(OffsetSpecification::First)
            .build(&s)
            .await
            .unwrap();
        consumer.store_offset(4).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(consumer);
        drop(producer);
    }
    t.crash_and_restart();
    let env = t.env().await;
    // The producer asks where it was and goes on; re-sent ids are dropped (and confirmed).
    let mut producer = env.producer().name("app-1").build(&s).await.unwrap();
    for i in 5..=15u64 {
        let m = Message::builder()
            .body(format!("m{i}"))
            .publishing_id(i)
            .build();
        producer.send_with_confirm(m).await.unwrap();
    }
    producer.close().await.unwrap();
    let got = read(&env, &s, OffsetSpecification::First, 15).await;
    let bodies: Vec<String> = got.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(
        bodies,
        (1..=15).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    // A consumer restarting from its stored offset.
    let consumer = env
        .consumer()
        .name("reader")
        .offset(OffsetSpecification::First)
        .build(&s)
        .await
        .unwrap();
    let stored = consumer.query_offset().await.unwrap();
    assert_eq!(stored, 4);
    consumer.handle().close().await.unwrap();
    let from = read(&env, &s, OffsetSpecification::Offset(stored + 1), 1).await;
    assert_eq!(from[0].0, stored + 1);
    // Nothing duplicated after the restart either: nothing after m15 (offsets count the
    // tracking chunk of the stored offset too, so m15 is not at offset 14).
    let last = got.last().unwrap().0;
    let mut c = env
        .consumer()
        .offset(OffsetSpecification::Offset(last + 1))
        .build(&s)
        .await
        .unwrap();
    nothing_more(&mut c).await;
}

/// Batches big enough that the writer builds their chunks where its direct writes go from
/// (`docs/streams.md`): after a SIGKILL every confirmed message is there, in order and at its
/// offset, and the stream goes on where it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_batches_survive_a_crash() {
    let mut t = Target::start();
    if !t.pier_only() {
        return;
    }
    let s = unique("s");
    let body = |i: usize| format!("{i:06}-{}", "x".repeat(1000 + i % 97));
    let n = 3000;
    {
        let env = t.env().await;
        create(&env, &s).await;
        publish(&env, &s, (0..n).map(body)).await;
    }
    t.crash_and_restart();
    let env = t.env().await;
    publish(&env, &s, (n..n + 100).map(body)).await;
    let got = read(&env, &s, OffsetSpecification::First, n + 100).await;
    for (i, (o, b)) in got.iter().enumerate() {
        assert_eq!((*o, b.as_str()), (i as u64, body(i).as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_streams_route_by_hash_and_a_consumer_reads_every_partition() {
    let t = Target::start();
    if !t.pier_only() {
        return;
    }
    let env = t.env().await;
    let ss = unique("ss");
    env.stream_creator()
        .create_super_stream(&ss, 3, None)
        .await
        .unwrap();
    fn id(m: &Message) -> String {
        m.application_properties()
            .and_then(|p| p.get("id").cloned())
            .and_then(|v| String::try_from(v).ok())
            .unwrap_or_default()
    }
    let mut producer = env
        .super_stream_producer(RoutingStrategy::HashRoutingStrategy(
            HashRoutingMurmurStrategy {
                routing_extractor: &id,
            },
        ))
        .build(&ss)
        .await
        .unwrap();
    let confirmed = Arc::new(AtomicU64::new(0));
    for i in 0..30 {
        let m = Message::builder()
            .body(format!("m{i}"))
            .application_properties()
            .insert("id", i.to_string())
            .message_builder()
            .build();
        let c = Arc::clone(&confirmed);
        producer
            .send(m, move |_| {
                let c = Arc::clone(&c);
                async move {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await
            .unwrap();
    }
    let deadline = Instant::now() + STEP;
    while confirmed.load(Ordering::Relaxed) < 30 {
        assert!(Instant::now() < deadline, "confirms");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut consumer = env
        .super_stream_consumer()
        .offset(OffsetSpecification::First)
        .build(&ss)
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut streams = std::collections::BTreeSet::new();
    while seen.len() < 30 {
        let d = tokio::time::timeout(STEP, consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.insert(body(d.message()));
        streams.insert(d.stream().clone());
    }
    assert!(
        streams.len() > 1,
        "messages spread over partitions: {streams:?}"
    );
    let _ = consumer.handle().close().await;
    env.delete_super_stream(&ss).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_fails_over() {
    let t = Target::start();
    if !t.pier_only() {
        return;
    }
    let env = t.env().await;
    let s = unique("s");
    create(&env, &s).await;
    let build = |env: Environment, s: String| async move {
        env.consumer()
            .name("group")
            .enable_single_active_consumer(true)
            .offset(OffsetSpecification::First)
            .consumer_update(|_active, _ctx| async { OffsetSpecification::First })
            .build(&s)
            .await
            .unwrap()
    };
    let mut first = build(env.clone(), s.clone()).await;
    let mut second = build(env.clone(), s.clone()).await;
    publish(&env, &s, (0..5).map(|i| format!("m{i}"))).await;
    let d = tokio::time::timeout(STEP, first.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(body(d.message()), "m0");
    nothing_more(&mut second).await;
    first.handle().close().await.unwrap();
    // The second one takes over (from `first`, as its update listener answers).
    let d = tokio::time::timeout(STEP, second.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(body(d.message()), "m0");
    second.handle().close().await.unwrap();
    env.delete_stream(&s).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtering_skips_chunks_without_the_value() {
    let t = Target::start();
    if !t.pier_only() {
        return;
    }
    let env = t.env().await;
    let s = unique("s");
    create(&env, &s).await;
    let producer = env
        .producer()
        .filter_value_extractor(|m: &Message| {
            m.application_properties()
                .and_then(|p| p.get("region").cloned())
                .and_then(|v| String::try_from(v).ok())
                .unwrap_or_default()
        })
        .build(&s)
        .await
        .unwrap();
    for region in ["emea", "apac", "emea"] {
        let batch: Vec<Message> = (0..5)
            .map(|i| {
                Message::builder()
                    .body(format!("{region}-{i}"))
                    .application_properties()
                    .insert("region", region)
                    .message_builder()
                    .build()
            })
            .collect();
        producer.batch_send_with_confirm(batch).await.unwrap();
    }
    producer.close().await.unwrap();
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::First)
        .filter_input(Some(FilterConfiguration::new(vec!["emea".into()], false)))
        .build(&s)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        let d = tokio::time::timeout(STEP, consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(body(d.message()));
    }
    assert!(got.iter().all(|b| b.starts_with("emea")), "{got:?}");
    nothing_more(&mut consumer).await;
    consumer.handle().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_deletes_old_segments() {
    let t = Target::start();
    let env = t.env().await;
    let s = unique("s");
    env.stream_creator()
        .max_length(ByteCapacity::B(20_000))
        .max_segment_size(ByteCapacity::B(5_000))
        .create(&s)
        .await
        .unwrap();
    for round in 0..20 {
        publish(
            &env,
            &s,
            (0..10).map(|i| format!("{round}-{i}-{}", "x".repeat(100))),
        )
        .await;
    }
    // The first message still there is no longer offset 0.
    let first = read(&env, &s, OffsetSpecification::First, 1).await;
    assert!(
        first[0].0 > 0,
        "retention removed the oldest segments: {first:?}"
    );
    env.delete_stream(&s).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_lifecycle_errors() {
    let t = Target::start();
    let env = t.env().await;
    let s = unique("s");
    create(&env, &s).await;
    // Creating it again is "already exists".
    let again = env.stream_creator().create(&s).await;
    assert!(again.is_err());
    env.delete_stream(&s).await.unwrap();
    assert!(
        env.delete_stream(&s).await.is_err(),
        "deleting a missing stream fails"
    );
    assert!(
        env.producer().build(&s).await.is_err(),
        "no producer on a missing stream"
    );
    assert!(
        env.consumer().build(&s).await.is_err(),
        "no consumer on a missing stream"
    );
    let _ = PathBuf::new();
}
