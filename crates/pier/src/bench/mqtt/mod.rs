//! `pier bench --mqtt`: publishers and subscribers over MQTT 3.1.1 (or 5.0, or 3.1), for
//! Pier's MQTT server and RabbitMQ's MQTT plugin alike; and `pier bench --mqtt-idle N`:
//! N idle subscribed connections, to measure a broker's memory per connection (`idle.rs`).
//!
//! ```text
//!  publisher i ─ CONNECT ─ PUBLISH <topic>/<i % topics + 1> ...►   (pre-encoded, 64 KiB writes)
//!     QoS 1: at most --inflight unacknowledged (window.rs), freed by PUBACK(packet id)
//!  subscriber j ─ CONNECT ─ SUBSCRIBE <topic>/<j % topics + 1> (--sub-qos) ◄─ PUBLISH
//!     QoS 1 deliveries: PUBACK(packet id), one write per read
//!     latency: now - the send time in the first 8 payload bytes (as AMQP: message.rs)
//! ```
//!
//! MQTT fans out: every subscriber of a topic gets every message published to it, so with
//! --pmessages the run waits for published × subscribers-of-that-topic deliveries. Every
//! packet goes through `pier-mqtt-wire` (PUBLISHes are encoded once and patched), so the
//! bench also exercises Pier's codec. Connections use a clean session and send PINGREQ when
//! they have written nothing for half the keep-alive.

mod conn;
mod idle;
mod window;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use pier_mqtt_wire::{Packet, ProtocolVersion, PubReply, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Interval;

use self::conn::{encode, parse_version, version_name, MqttConn, MqttUri, PublishTemplate};
use self::window::InFlight;
use super::message::{self, read_stamp, Stamp};
use super::monitor::{reap, start_consumers, stop_all, Cpu, Latencies, Progress, Side, Ticker};
use super::report::{self, Protocol, Report};
use super::stats::{Clock, Counters, SharedHistogram, Snapshot};
use super::BenchArgs;

/// The AMQP default of `--uri`: with --mqtt it means the MQTT default below.
pub const AMQP_DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2F";
const MQTT_DEFAULT_URI: &str = "mqtt://guest:guest@127.0.0.1:1883";
/// Bytes of PUBLISHes per socket write (more when one message is larger).
const BATCH_BYTES: usize = 64 * 1024;
/// The PINGREQ packet (never changes).
const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// Settings of an MQTT run.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub uri: MqttUri,
    pub version: ProtocolVersion,
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: Vec<String>,
    /// The topic prefix (idle connections subscribe to `<prefix>/idle/<n>`).
    pub topic_prefix: String,
    pub qos: QoS,
    pub sub_qos: QoS,
    pub inflight: usize,
    pub requested_size: usize,
    pub size: usize,
    pub time: Option<Duration>,
    pub pmessages: Option<u64>,
    pub rate: u64,
    pub keep_alive: u16,
    pub json: bool,
    pub quiet: bool,
    pub broker_pid: Option<u32>,
    pub drain_timeout: Duration,
    /// Idle mode: this many connections.
    pub idle: Option<usize>,
    pub connect_concurrency: usize,
    pub connect_rate: u64,
    pub ready_file: Option<std::path::PathBuf>,
}

impl MqttConfig {
    pub fn publisher_topic(&self, i: usize) -> usize {
        i % self.topics.len().max(1)
    }

    pub fn subscriber_topic(&self, j: usize) -> usize {
        j % self.topics.len().max(1)
    }

    /// Subscribers that get a copy of publisher `i`'s messages.
    pub fn copies_of(&self, i: usize) -> u64 {
        let t = self.publisher_topic(i);
        (0..self.subscribers)
            .filter(|&j| self.subscriber_topic(j) == t)
            .count() as u64
    }

    /// Deliveries expected for what each publisher published.
    pub fn expected(&self, per_publisher: &[u64]) -> u64 {
        per_publisher
            .iter()
            .enumerate()
            .map(|(i, n)| n * self.copies_of(i))
            .sum()
    }

    /// The largest packet accepted from the broker.
    fn max_packet(&self) -> u32 {
        u32::try_from(self.size + 64 * 1024)
            .unwrap_or(u32::MAX)
            .max(1 << 20)
    }

    /// Interval between PINGREQs of a connection that writes nothing else (`None`: keep-alive
    /// off).
    fn ping_every(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 500))
    }

    /// Connects client `index` of `role` ('p', 's' or 'i') of the run `nonce`.
    async fn connect(&self, nonce: u64, role: char, index: usize) -> anyhow::Result<MqttConn> {
        MqttConn::connect(
            &self.uri,
            self.version,
            &client_id(nonce, role, index),
            self.keep_alive,
            self.max_packet(),
        )
        .await
    }

    /// The PINGREQ timer of a connection, first firing `first(interval)` from now (`None`:
    /// keep-alive off).
    fn ping_timer(&self, first: impl FnOnce(Duration) -> Duration) -> Option<Interval> {
        self.ping_every().map(|every| {
            let at = Instant::now() + first(every);
            let mut t = tokio::time::interval_at(at.into(), every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        })
    }
}

/// Resolves when a PINGREQ is due (never with keep-alive off).
async fn ping_due(ping: &mut Option<Interval>) {
    match ping {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Appends a PUBACK for each of `ids` to `out`.
fn encode_pubacks(ids: &[u16], version: ProtocolVersion, out: &mut BytesMut) -> anyhow::Result<()> {
    for &id in ids {
        encode(&Packet::PubAck(PubReply::new(id)), version, out)?;
    }
    Ok(())
}

fn qos_arg(flag: &str, q: u8) -> anyhow::Result<QoS> {
    match q {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => bail!("{flag} 2 (exactly once) is not supported by pier bench: use 0 or 1"),
        _ => bail!("{flag} must be 0 or 1"),
    }
}

/// Checks the MQTT options (and refuses AMQP-only ones that would be silently ignored).
pub fn config(args: &BenchArgs) -> anyhow::Result<MqttConfig> {
    let uri_text = if args.uri == AMQP_DEFAULT_URI {
        MQTT_DEFAULT_URI
    } else {
        args.uri.as_str()
    };
    let uri: MqttUri = uri_text.parse().context("--uri")?;
    let version = parse_version(&args.mqtt_version)?;
    let qos = qos_arg("--qos", args.qos)?;
    let sub_qos = qos_arg("--sub-qos", args.sub_qos.unwrap_or(args.qos))?;
    if args.stream || args.floor {
        bail!("--mqtt cannot be combined with --stream or --floor");
    }
    let amqp_only = [
        (args.cmessages.is_some(), "--cmessages"),
        (args.confirm > 0, "--confirm (use --qos 1 --inflight N)"),
        (args.persistent, "--persistent"),
        (args.exchange.is_some(), "--exchange"),
        (args.routing_key.is_some(), "--routing-key"),
        (args.autoack, "--autoack"),
        (args.prefetch > 0, "--prefetch"),
    ];
    if let Some((_, flag)) = amqp_only.iter().find(|(set, _)| *set) {
        bail!("{flag} is an AMQP option; it has no meaning with --mqtt");
    }
    if args.topics == 0 {
        bail!("--topics must be at least 1");
    }
    if args.topic.is_empty() || args.topic.contains(['+', '#']) {
        bail!("--topic must be a non-empty topic name without wildcards");
    }
    if args.inflight == 0 {
        bail!("--inflight must be at least 1");
    }
    let time = match args.time {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => bail!("--time must be positive (got {t})"),
    };
    if args.drain_timeout.is_nan() || args.drain_timeout <= 0.0 {
        bail!("--drain-timeout must be positive");
    }
    let idle = args.mqtt_idle;
    if let Some(n) = idle {
        if n == 0 {
            bail!("--mqtt-idle needs at least one connection");
        }
        if args.pmessages.is_some() {
            bail!("--mqtt-idle publishes nothing: --pmessages has no meaning");
        }
    } else {
        if args.producers == 0 && args.consumers == 0 {
            bail!("nothing to do: --producers and --consumers are both 0");
        }
        if args.pmessages == Some(0) {
            bail!("--pmessages must be at least 1");
        }
        if args.pmessages.is_some() && args.producers == 0 {
            bail!("--pmessages needs at least one producer");
        }
    }
    if args.connect_concurrency == 0 {
        bail!("--connect-concurrency must be at least 1");
    }
    Ok(MqttConfig {
        uri,
        version,
        publishers: args.producers,
        subscribers: args.consumers,
        topics: (1..=args.topics)
            .map(|n| format!("{}/{n}", args.topic))
            .collect(),
        topic_prefix: args.topic.clone(),
        qos,
        sub_qos,
        inflight: usize::from(args.inflight),
        requested_size: args.size,
        size: message::effective_size(args.size),
        time,
        pmessages: args.pmessages,
        rate: args.rate,
        keep_alive: args.keep_alive,
        json: args.json,
        quiet: args.quiet,
        broker_pid: args.broker_pid,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
        idle,
        connect_concurrency: args.connect_concurrency,
        connect_rate: args.connect_rate,
        ready_file: args.ready_file.clone(),
    })
}

/// Entry point of `--mqtt` and `--mqtt-idle`.
pub fn main(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = Arc::new(config(args)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    if cfg.idle.is_some() {
        runtime.block_on(idle::run(cfg))
    } else {
        runtime.block_on(run(cfg))
    }
}

/// Client identifiers: unique per run, at most 23 characters (what every 3.1.1 server must
/// accept).
fn client_id(nonce: u64, role: char, index: usize) -> String {
    format!("pb{:06x}{role}{index}", nonce & 0xFF_FFFF)
}

/// Messages a rate-limited publisher may have sent `elapsed` into the run (the first one at
/// once).
pub fn due(elapsed: Duration, rate: u64) -> u64 {
    (elapsed.as_secs_f64() * rate as f64) as u64 + 1
}

struct Shared {
    cfg: Arc<MqttConfig>,
    counters: Arc<Counters>,
    clock: Clock,
    nonce: u64,
}

async fn run(cfg: Arc<MqttConfig>) -> anyhow::Result<()> {
    if cfg.size != cfg.requested_size {
        eprintln!(
            "note: --size {} cannot hold the 8-byte latency stamp; sending {}-byte payloads",
            cfg.requested_size, cfg.size
        );
    }
    let shared = Arc::new(Shared {
        cfg: Arc::clone(&cfg),
        counters: Arc::new(Counters::new(cfg.publishers, cfg.subscribers)),
        clock: Clock::new(),
        nonce: super::run_nonce(),
    });
    let counters = Arc::clone(&shared.counters);
    let (stop_pub_tx, stop_pub) = watch::channel(false);
    let (stop_sub_tx, stop_sub) = watch::channel(false);

    // Subscribers first, every one subscribed before anything is published.
    let mut latencies = Latencies::new()?;
    let spawn = |j, hist, ready| {
        let (shared, stop) = (Arc::clone(&shared), stop_sub.clone());
        tokio::spawn(subscriber(j, shared, hist, stop, ready))
    };
    let n = cfg.subscribers;
    let mut subscribers =
        start_consumers(n, "subscriber", &stop_sub_tx, &mut latencies, spawn).await?;
    if !cfg.quiet {
        eprintln!(
            "pier bench --mqtt: {} publisher(s), {} subscriber(s), {} topic(s), {} B payloads, \
             MQTT {}, QoS {} (subscriptions QoS {}){} -> {}",
            cfg.publishers,
            cfg.subscribers,
            cfg.topics.len(),
            cfg.size,
            version_name(cfg.version),
            cfg.qos as u8,
            cfg.sub_qos as u8,
            if cfg.qos == QoS::AtLeastOnce {
                format!(", in flight {}", cfg.inflight)
            } else {
                String::new()
            },
            cfg.uri
        );
    }

    let cpu = Cpu::start(cfg.broker_pid);
    let start = Instant::now();
    let start_ns = shared.clock.now_ns();
    let deadline = cfg.time.map(|t| start + t);
    let mut publishers: Vec<Option<JoinHandle<anyhow::Result<()>>>> = (0..cfg.publishers)
        .map(|i| {
            let (shared, stop) = (Arc::clone(&shared), stop_pub.clone());
            Some(tokio::spawn(publisher(i, shared, stop, deadline)))
        })
        .collect();

    let mut errors: Vec<String> = Vec::new();
    let mut last_line = Instant::now();
    let mut last_snap = Snapshot::default();
    let (mut failed, mut drain_failed) = (false, false);
    let mut progress = Progress::default();
    let mut ticker = Ticker::new();
    loop {
        ticker.next().await;
        failed |= reap(&mut publishers, "publisher", false, &mut errors).await;
        failed |= reap(&mut subscribers, "subscriber", true, &mut errors).await;
        let now = Instant::now();
        let snap = counters.snapshot();
        if now.duration_since(last_line) >= Duration::from_secs(1) {
            let interval = latencies.interval();
            if !cfg.quiet {
                let confirms = (cfg.qos == QoS::AtLeastOnce).then_some((
                    "puback",
                    snap.confirmed,
                    last_snap.confirmed,
                ));
                let expected = cfg.expected(&counters.per_producer());
                report::print_line(
                    start,
                    now - last_line,
                    &snap,
                    &last_snap,
                    interval,
                    confirms,
                    ("in flight", expected.saturating_sub(snap.consumed)),
                );
            }
            latencies.end_interval();
            (last_line, last_snap) = (now, snap);
        }
        if failed || ticker.interrupted {
            break;
        }
        if deadline.is_some_and(|d| now >= d) && cfg.pmessages.is_none() {
            break;
        }
        if cfg.publishers == 0 || publishers.iter().any(Option::is_some) {
            continue;
        }
        if cfg.pmessages.is_none() || cfg.subscribers == 0 {
            break;
        }
        // Every publisher is done: wait for the subscribers to receive everything.
        let expected = cfg.expected(&counters.per_producer());
        if let Some(done) = progress.drained(snap.consumed, expected, now, cfg.drain_timeout) {
            drain_failed = !done;
            break;
        }
    }
    let end = stop_all(
        Side {
            stop: &stop_pub_tx,
            tasks: &mut publishers,
            role: "publisher",
            // Publishers may wait --drain-timeout for their last PUBACKs.
            limit: cfg.drain_timeout + Duration::from_secs(2),
        },
        Side {
            stop: &stop_sub_tx,
            tasks: &mut subscribers,
            role: "subscriber",
            limit: Duration::from_secs(10),
        },
        cfg.pmessages.is_some(),
        &mut errors,
    )
    .await;
    let (bench_cpu, broker_cpu) = cpu.percent();
    let snap = counters.snapshot();
    let run_secs = end.duration_since(start).as_secs_f64();
    // A timed run's rates are over the whole run: a publisher that the broker's flow control
    // held up for the last seconds was not done early. A counted run's end at the last
    // publish (and the last delivery).
    let (publish_secs, consume_secs) = if cfg.pmessages.is_none() {
        (run_secs, run_secs)
    } else {
        let since_start = |ns: &std::sync::atomic::AtomicU64| {
            super::secs_between(start_ns, ns.load(Ordering::Relaxed)).unwrap_or(run_secs)
        };
        (
            since_start(&counters.last_publish_ns),
            since_start(&counters.last_consume_ns),
        )
    };
    let per_producer = counters.per_producer();
    let expected =
        (cfg.pmessages.is_some() && cfg.subscribers > 0).then(|| cfg.expected(&per_producer));
    let all_consumed = expected.map(|e| snap.consumed >= e && !drain_failed);
    let summary = Report {
        protocol: Protocol::Mqtt,
        snap,
        per_consumer: counters.per_consumer(),
        per_producer,
        wall: run_secs,
        publish_secs,
        consume_secs,
        latency: latencies.summary(),
        bench_cpu,
        broker_cpu,
        broker_pid: cfg.broker_pid.is_some(),
        confirms: cfg.qos == QoS::AtLeastOnce,
        received: snap.consumed,
        expected,
        all_consumed,
        interrupted: ticker.interrupted,
        errors: &errors,
    };
    let json = cfg.json.then(|| summary.json(settings_json(&cfg)));
    report::emit(&summary.human(), json.as_ref());
    summary.outcome(cfg.drain_timeout)
}

/// The run's settings, the head of its JSON summary (the AMQP bench's keys where they apply).
fn settings_json(c: &MqttConfig) -> serde_json::Value {
    serde_json::json!({
        "protocol": "mqtt",
        "mqtt_version": version_name(c.version),
        "uri": c.uri.to_string(),
        "producers": c.publishers,
        "consumers": c.subscribers,
        "topics": c.topics.len(),
        "size": c.size,
        "qos": c.qos as u8,
        "sub_qos": c.sub_qos as u8,
        "inflight": (c.qos == QoS::AtLeastOnce).then_some(c.inflight),
        "rate_limit": c.rate,
        "time_secs": c.time.map(|t| t.as_secs_f64()),
        "pmessages": c.pmessages,
    })
}

/// One publisher: connects, then writes batches of PUBLISHes until stopped, --time is up or
/// --pmessages are published (and, at QoS 1, acknowledged).
async fn publisher(
    i: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    let cfg = &shared.cfg;
    let conn = cfg.connect(shared.nonce, 'p', i).await?;
    let qos1 = cfg.qos == QoS::AtLeastOnce;
    let mut window = InFlight::new(cfg.inflight.min(usize::from(conn.receive_maximum)));
    if qos1 && window.capacity() < cfg.inflight && i == 0 {
        eprintln!(
            "note: the broker's Receive Maximum is {}: at most that many PUBLISHes in flight",
            window.capacity()
        );
    }
    let template = PublishTemplate::new(
        cfg.version,
        &cfg.topics[cfg.publisher_topic(i)],
        cfg.qos,
        message::make_body(cfg.size, shared.nonce),
    )?;
    let (version, max_packet) = (conn.version, conn.max_packet);
    let (mut rd, mut wr) = conn.stream.into_split();
    let mut rbuf = conn.buf;
    // PUBACKs on the read side; identifiers come over in batches, at most one batch per
    // identifier in flight, so the reader never waits on a full channel for a writer that
    // waits on the broker.
    let (ack_tx, mut acks) = mpsc::channel::<Vec<u16>>(window.capacity() + 1);
    let reader: JoinHandle<anyhow::Result<()>> = tokio::spawn(async move {
        loop {
            let mut ids = Vec::new();
            while let Some(p) = Packet::decode_from(&mut rbuf, version, max_packet)
                .map_err(|e| anyhow!("decoding a packet from the broker: {e}"))?
            {
                match p {
                    Packet::PubAck(a) => {
                        if a.reason_code.is_error() {
                            bail!(
                                "PUBACK {}: {} (0x{:02x})",
                                a.packet_id,
                                a.reason_code.description(),
                                a.reason_code.code()
                            );
                        }
                        ids.push(a.packet_id);
                    }
                    Packet::Disconnect(d) => {
                        bail!(
                            "disconnected by the broker: {}",
                            d.reason_code.description()
                        )
                    }
                    _ => {}
                }
            }
            if !ids.is_empty() && ack_tx.send(ids).await.is_err() {
                return Ok(());
            }
            if rd.read_buf(&mut rbuf).await? == 0 {
                bail!("connection closed by the broker");
            }
        }
    });
    let counters = &shared.counters;
    let per_write = (BATCH_BYTES / template.len()).max(1);
    let mut batch = Vec::with_capacity(per_write * template.len());
    let target = cfg.pmessages;
    let started = Instant::now();
    let mut last_write = Instant::now();
    let ping_every = cfg.ping_every();
    let mut sent = 0u64;
    let mut reader = Some(reader);
    let take_acks = |ids: Vec<u16>, window: &mut InFlight| -> anyhow::Result<()> {
        for &id in &ids {
            window.ack(id)?;
        }
        counters
            .confirmed
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        Ok(())
    };
    loop {
        if *stop.borrow() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if target.is_some_and(|t| sent >= t) {
            break;
        }
        while let Ok(ids) = acks.try_recv() {
            take_acks(ids, &mut window)?;
        }
        let mut room = if qos1 { window.available() } else { per_write };
        room = room.min(per_write);
        if let Some(t) = target {
            room = room.min(usize::try_from(t - sent).unwrap_or(usize::MAX));
        }
        let mut wake_at = None;
        if cfg.rate > 0 {
            let allowed = due(started.elapsed(), cfg.rate).saturating_sub(sent);
            if allowed == 0 {
                wake_at = Some(started + Duration::from_secs_f64(sent as f64 / cfg.rate as f64));
                room = 0;
            }
            room = room.min(usize::try_from(allowed).unwrap_or(usize::MAX));
        }
        if room == 0 {
            // Window full or rate-limited: wait for PUBACKs, the next slot, or the end.
            let ping_at = ping_every.map(|p| last_write + p);
            let until = [wake_at, ping_at, deadline].into_iter().flatten().min();
            let sleep = async {
                match until {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ids = acks.recv() => match ids {
                    Some(ids) => take_acks(ids, &mut window)?,
                    None => return Err(reader_error(reader.take()).await),
                },
                _ = sleep => {
                    if ping_at.is_some_and(|p| Instant::now() >= p) {
                        wr.write_all(&PINGREQ).await?;
                        last_write = Instant::now();
                    }
                }
                _ = stop.changed() => break,
            }
            continue;
        }
        batch.clear();
        let now_ns = shared.clock.now_ns();
        for _ in 0..room {
            let id = if qos1 {
                window.acquire().context("window full")?
            } else {
                0
            };
            template.put(&mut batch, id, now_ns);
        }
        tokio::select! {
            r = wr.write_all(&batch) => r?,
            // A write the broker holds up (flow control) must not outlive the run.
            _ = stop.changed() => break,
        }
        last_write = Instant::now();
        sent += room as u64;
        counters.add_published(i, room as u64);
        counters
            .last_publish_ns
            .store(shared.clock.now_ns(), Ordering::Relaxed);
    }
    // QoS 1: collect the outstanding PUBACKs (with --pmessages, or after --time), briefly.
    if qos1 && !window.is_empty() {
        let limit = tokio::time::sleep(cfg.drain_timeout);
        tokio::pin!(limit);
        while !window.is_empty() {
            tokio::select! {
                ids = acks.recv() => match ids {
                    Some(ids) => take_acks(ids, &mut window)?,
                    None => return Err(reader_error(reader.take()).await),
                },
                _ = &mut limit => {
                    if target.is_some() {
                        bail!("{} PUBLISHes never acknowledged", window.len());
                    }
                    break;
                }
            }
        }
    }
    if let Some(r) = reader.take() {
        r.abort();
    }
    let mut out = BytesMut::new();
    encode(
        &Packet::Disconnect(pier_mqtt_wire::Disconnect::default()),
        version,
        &mut out,
    )?;
    // A broker whose flow control holds the socket gets no DISCONNECT: it sees a close.
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&out)).await;
    Ok(())
}

/// Why the reader of a publisher ended.
async fn reader_error(reader: Option<JoinHandle<anyhow::Result<()>>>) -> anyhow::Error {
    match reader {
        Some(r) => match r.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => anyhow!("the reader ended"),
            Err(e) => anyhow!("the reader failed: {e}"),
        },
        None => anyhow!("the reader ended"),
    }
}

/// What a subscriber does with the packets of one read (pure, for tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// This run's messages, with their send times.
    pub sent_at: Vec<u64>,
    /// Messages of another run (or without a stamp).
    pub stale: u64,
    /// Packet identifiers to acknowledge (QoS 1 deliveries).
    pub to_ack: Vec<u16>,
    pub pongs: u64,
}

/// Decodes every whole packet in `buf` (what remains is an incomplete packet).
pub fn take_packets(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet: u32,
    nonce: u64,
) -> anyhow::Result<Received> {
    let mut r = Received::default();
    while let Some(p) = Packet::decode_from(buf, version, max_packet)
        .map_err(|e| anyhow!("decoding a packet from the broker: {e}"))?
    {
        match p {
            Packet::Publish(p) => {
                match read_stamp(&p.payload, p.payload.len() as u64, nonce) {
                    Stamp::Sent(t) => r.sent_at.push(t),
                    Stamp::Foreign | Stamp::Missing => r.stale += 1,
                }
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => r.to_ack.push(p.packet_id),
                    QoS::ExactlyOnce => bail!("a QoS 2 delivery (the bench subscribes at 0 or 1)"),
                }
            }
            Packet::PingResp => r.pongs += 1,
            Packet::Disconnect(d) => bail!(
                "disconnected by the broker: {} (0x{:02x})",
                d.reason_code.description(),
                d.reason_code.code()
            ),
            _ => {}
        }
    }
    Ok(r)
}

/// One subscriber: subscribes, signals `ready`, then reads deliveries until stopped.
async fn subscriber(
    j: usize,
    shared: Arc<Shared>,
    latencies: SharedHistogram,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let cfg = &shared.cfg;
    let mut conn = cfg.connect(shared.nonce, 's', j).await?;
    conn.subscribe(&cfg.topics[cfg.subscriber_topic(j)], cfg.sub_qos)
        .await?;
    let _ = ready.send(());
    let counters = &shared.counters;
    let mut buf = std::mem::take(&mut conn.buf);
    buf.reserve(256 * 1024);
    let mut acks = BytesMut::new();
    let mut ping = cfg.ping_timer(|every| every);
    loop {
        tokio::select! {
            n = conn.stream.read_buf(&mut buf) => {
                if n? == 0 {
                    bail!("connection closed by the broker");
                }
            }
            _ = ping_due(&mut ping) => {
                conn.stream.write_all(&PINGREQ).await?;
                continue;
            }
            _ = stop.changed() => break,
        }
        let got = take_packets(&mut buf, conn.version, conn.max_packet, shared.nonce)?;
        if !got.sent_at.is_empty() {
            let now = shared.clock.now_ns();
            if let Ok(mut h) = latencies.lock() {
                for &t in &got.sent_at {
                    h.saturating_record((now.saturating_sub(t) / 1000).max(1));
                }
            }
            counters.add_consumed(j, got.sent_at.len() as u64);
            counters.last_consume_ns.store(now, Ordering::Relaxed);
        }
        if got.stale > 0 {
            counters.stale.fetch_add(got.stale, Ordering::Relaxed);
        }
        if !got.to_ack.is_empty() {
            acks.clear();
            encode_pubacks(&got.to_ack, conn.version, &mut acks)?;
            conn.stream.write_all(&acks).await?;
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(256 * 1024);
        }
    }
    conn.buf = buf;
    conn.disconnect().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::bench::message::make_body;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn config_of(extra: &[&str]) -> anyhow::Result<MqttConfig> {
        let mut argv = vec!["bench", "--mqtt"];
        argv.extend_from_slice(extra);
        config(&Cli::try_parse_from(argv).unwrap().bench)
    }

    #[test]
    fn defaults_and_flags() {
        let c = config_of(&[]).unwrap();
        assert_eq!(c.uri.to_string(), "mqtt://guest@127.0.0.1:1883");
        assert_eq!(c.version, ProtocolVersion::V3_1_1);
        assert_eq!(
            (c.qos, c.sub_qos, c.inflight),
            (QoS::AtMostOnce, QoS::AtMostOnce, 100)
        );
        assert_eq!(c.topics, ["pier-bench/1"]);
        assert_eq!((c.size, c.keep_alive), (16, 60));
        assert_eq!(c.ping_every(), Some(Duration::from_secs(30)));
        let c = config_of(&[
            "--uri",
            "mqtt://u:p@h:1884",
            "--qos",
            "1",
            "--sub-qos",
            "0",
            "--inflight",
            "7",
            "--mqtt-version",
            "5",
            "--topic",
            "a/b",
            "--topics",
            "2",
            "-x",
            "3",
            "-y",
            "2",
            "--keep-alive",
            "0",
        ])
        .unwrap();
        assert_eq!(c.uri.port, 1884);
        assert_eq!(
            (c.qos, c.sub_qos, c.inflight),
            (QoS::AtLeastOnce, QoS::AtMostOnce, 7)
        );
        assert_eq!(c.version, ProtocolVersion::V5);
        assert_eq!(c.topics, ["a/b/1", "a/b/2"]);
        assert_eq!(c.ping_every(), None);
        // Publishers 0 and 2 on a/b/1 (subscriber 0), publisher 1 on a/b/2 (subscriber 1).
        assert_eq!((c.copies_of(0), c.copies_of(1), c.copies_of(2)), (1, 1, 1));
        assert_eq!(c.expected(&[10, 20, 30]), 60);
    }

    #[test]
    fn fan_out_counts_every_subscriber() {
        let c = config_of(&["-x", "2", "-y", "3", "--pmessages", "5"]).unwrap();
        assert_eq!(c.copies_of(0), 3);
        assert_eq!(c.expected(&[5, 5]), 30);
        // Two topics, three subscribers: topic 1 has subscribers 0 and 2.
        let c = config_of(&["-x", "2", "-y", "3", "--topics", "2"]).unwrap();
        assert_eq!((c.copies_of(0), c.copies_of(1)), (2, 1));
        let c = config_of(&["-x", "1", "-y", "0", "--time", "1"]).unwrap();
        assert_eq!(c.expected(&[100]), 0);
    }

    #[test]
    fn rejected() {
        for bad in [
            &["--qos", "2"][..],
            &["--qos", "3"],
            &["--sub-qos", "2"],
            &["--inflight", "0"],
            &["--topics", "0"],
            &["--topic", "a/#"],
            &["--topic", ""],
            &["--uri", "amqp://h:5672/%2F"],
            &["--mqtt-version", "6"],
            &["--confirm", "10"],
            &["--cmessages", "10"],
            &["--persistent"],
            &["-x", "0", "-y", "0"],
            &["-x", "0", "--pmessages", "3"],
            &["--mqtt-idle", "0"],
            &["--mqtt-idle", "10", "--pmessages", "3"],
            &["--stream"],
            &["--connect-concurrency", "0"],
            &["--time", "0"],
        ] {
            assert!(config_of(bad).is_err(), "{bad:?} should be rejected");
        }
        let c = config_of(&["--mqtt-idle", "1000", "--time", "5"]).unwrap();
        assert_eq!(c.idle, Some(1000));
    }

    #[test]
    fn client_ids_fit_3_1_1() {
        let id = client_id(u64::MAX, 'i', 99_999);
        assert!(id.len() <= 23, "{id}");
        assert_ne!(client_id(1, 'p', 0), client_id(1, 's', 0));
        assert_ne!(client_id(1, 'p', 0), client_id(2, 'p', 0));
    }

    #[test]
    fn rate_pacing() {
        assert_eq!(due(Duration::ZERO, 1000), 1);
        assert_eq!(due(Duration::from_millis(10), 1000), 11);
        assert_eq!(due(Duration::from_secs(2), 3), 7);
    }

    /// Deliveries split anywhere across reads: latencies from this run's stamps, stale for
    /// others, PUBACKs for QoS 1 only.
    #[test]
    fn subscriber_reads() {
        let v = ProtocolVersion::V3_1_1;
        let nonce = 77;
        let mut wire = Vec::new();
        let q1 = PublishTemplate::new(v, "t/1", QoS::AtLeastOnce, make_body(100, nonce)).unwrap();
        let q0 = PublishTemplate::new(v, "t/1", QoS::AtMostOnce, make_body(16, nonce)).unwrap();
        let other = PublishTemplate::new(v, "t/1", QoS::AtMostOnce, make_body(16, 5)).unwrap();
        q1.put(&mut wire, 9, 1_000);
        q0.put(&mut wire, 0, 2_000);
        other.put(&mut wire, 0, 3_000);
        wire.extend_from_slice(&[0xD0, 0x00]); // PINGRESP
        q1.put(&mut wire, 10, 4_000);
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let first = take_packets(&mut buf, v, 1 << 20, nonce).unwrap();
            buf.extend_from_slice(&wire[cut..]);
            let rest = take_packets(&mut buf, v, 1 << 20, nonce).unwrap();
            assert!(buf.is_empty());
            let mut all = first;
            all.sent_at.extend(rest.sent_at);
            all.to_ack.extend(rest.to_ack);
            all.stale += rest.stale;
            all.pongs += rest.pongs;
            assert_eq!(
                all,
                Received {
                    sent_at: vec![1_000, 2_000, 4_000],
                    stale: 1,
                    to_ack: vec![9, 10],
                    pongs: 1
                },
                "cut at {cut}"
            );
        }
        // A 5.0 DISCONNECT from the broker is an error with its reason.
        let mut buf = BytesMut::new();
        let d = pier_mqtt_wire::Disconnect {
            reason_code: pier_mqtt_wire::ReasonCode::from_u8(0x89).unwrap(),
            properties: Default::default(),
        };
        encode(&Packet::Disconnect(d), ProtocolVersion::V5, &mut buf).unwrap();
        let e = take_packets(&mut buf, ProtocolVersion::V5, 1 << 20, nonce).unwrap_err();
        assert!(e.to_string().contains("0x89"), "{e}");
    }
}
