//! `pier bench`: a load generator for AMQP 0-9-1 brokers, in the spirit of RabbitMQ's
//! PerfTest and LavinMQ's lavinmqperf.
//!
//! Every producer and consumer has its own TCP connection and tokio task and speaks AMQP
//! through the small client in `client.rs` (built on `pier-wire`, not a general-purpose
//! client library), so that the generator stays cheap: publishes are pre-encoded once and
//! copied into 64 KiB write batches with the send time patched in, and consumers parse
//! deliveries straight out of a 256 KiB read buffer. End-to-end latency comes from the
//! send time in the first 8 bytes of each body (see `message.rs` for the layout and the
//! minimum size). The bench reports its own CPU use so that readers can tell it was not
//! the bottleneck.
//!
//! The same bench runs against Pier and RabbitMQ; that is the point. `--stream` speaks
//! RabbitMQ's stream protocol instead (`stream.rs`), `--mqtt` and `--mqtt-idle` MQTT
//! (`mqtt/`).

mod client;
mod consumer;
mod floor;
mod message;
mod monitor;
mod mqtt;
mod producer;
mod report;
mod stats;
mod stream;
mod uri;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::client::Client;
use self::consumer::Consumer;
use self::monitor::{reap, start_consumers, stop_all, Cpu, Latencies, Progress, Side, Ticker};
use self::producer::Producer;
use self::report::{Protocol, Report};
use self::stats::{thousands, Clock, Counters, Snapshot};
use self::uri::AmqpUri;

/// Command-line options of `pier bench` (short flags follow RabbitMQ PerfTest).
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Broker to load: amqp://user:pass@host:port/vhost (vhost percent-encoded, %2F = /);
    /// with --mqtt, mqtt://user:pass@host:port (left at this default: 127.0.0.1:1883 as
    /// guest).
    #[arg(
        long,
        default_value = mqtt::AMQP_DEFAULT_URI,
        env = "PIER_BENCH_URI"
    )]
    pub uri: String,
    /// Number of producers (one connection each).
    #[arg(long, short = 'x', default_value_t = 1)]
    pub producers: usize,
    /// Number of consumers (one connection each).
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: usize,
    /// Number of queues; producers and consumers are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Queue names are <prefix><1..=queues>.
    #[arg(long, default_value = "pier-bench-")]
    pub queue_prefix: String,
    /// Message body size in bytes. The first 8 bytes carry the send time, so sizes below 8
    /// are raised to 16 (send time + run id); any size from 8 up is used as given.
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: usize,
    /// Run for this many seconds (fractions allowed); producers and consumers stop together,
    /// leaving any backlog in the queues. With neither --time nor --pmessages the bench runs
    /// until Ctrl-C.
    #[arg(long, short = 'z')]
    pub time: Option<f64>,
    /// Messages per producer; the run ends once consumers have received everything
    /// published (or fails after --drain-timeout without progress).
    #[arg(long, short = 'C')]
    pub pmessages: Option<u64>,
    /// Messages to consume in all, then stop: drains what an earlier run (or anyone) left in
    /// the queues, e.g. `--producers 0 --cmessages 1000000`. Messages of earlier runs count
    /// (as stale: no latency); fails after --drain-timeout without progress.
    #[arg(long, short = 'D')]
    pub cmessages: Option<u64>,
    /// Publish rate limit per producer, messages/s (0 = unlimited).
    #[arg(long, short = 'r', default_value_t = 0)]
    pub rate: u64,
    /// Declare the queues as quorum queues (x-queue-type: quorum; durable), as PerfTest's
    /// --quorum-queue.
    #[arg(long)]
    pub quorum_queue: bool,
    /// More brokers (cluster nodes), comma-separated AMQP URIs: producers and consumers
    /// connect round-robin over --uri and these (producer i to node i, consumer i to node
    /// producers + i, mod the number of nodes).
    #[arg(long, value_delimiter = ',')]
    pub uris: Vec<String>,
    /// Persistent messages (delivery_mode 2) and durable queues.
    #[arg(long, short = 'f')]
    pub persistent: bool,
    /// Publisher confirms with at most N unconfirmed messages per producer (0 = off).
    #[arg(long, short = 'c', default_value_t = 0)]
    pub confirm: u32,
    /// Consumer prefetch (basic.qos prefetch-count; 0 = unlimited).
    #[arg(long, short = 'q', default_value_t = 0)]
    pub prefetch: u16,
    /// Ack every N messages with multiple=true (1 = ack each message).
    #[arg(long, short = 'A', default_value_t = 1)]
    pub multi_ack: u32,
    /// Consume with no-ack (automatic acknowledgement).
    #[arg(long, short = 'a')]
    pub autoack: bool,
    /// Publish to this exchange (declared unless --no-declare) instead of the default one;
    /// each queue is bound to it with its routing key.
    #[arg(long, short = 'e')]
    pub exchange: Option<String>,
    /// Type of the exchange declared for --exchange.
    #[arg(long, default_value = "direct")]
    pub exchange_type: String,
    /// Routing key for publishes and bindings (default: the queue's name). Needs --exchange.
    #[arg(long, short = 'k')]
    pub routing_key: Option<String>,
    /// Print the final summary as one JSON object on stdout (the human summary goes to
    /// stderr).
    #[arg(long)]
    pub json: bool,
    /// Do not declare the exchange, queues and bindings (they must exist).
    #[arg(long)]
    pub no_declare: bool,
    /// Delete the queues at the end.
    #[arg(long)]
    pub delete_queues: bool,
    /// With --pmessages: give up when nothing is consumed for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Also report this process's CPU use (e.g. the broker's pid, on the same machine).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// No per-second lines.
    #[arg(long)]
    pub quiet: bool,
    /// Measure the machine's latency floor instead of a broker: one producer and one
    /// consumer send --size bytes at --rate (default 1,000/s) for --time (default 10 s)
    /// through a plain byte relay (scenario D's baseline; see `bench/floor.rs`).
    #[arg(long)]
    pub floor: bool,
    /// Use RabbitMQ's stream protocol (port 5552) instead of AMQP 0-9-1: producers publish
    /// to the stream <queue-prefix>1 (created if missing) with at most --confirm messages
    /// unconfirmed (0: 10,000), consumers subscribe at --stream-offset. --uri may be
    /// rabbitmq-stream://user:pass@host:port/vhost (port 5552 by default). See
    /// `bench/stream.rs`.
    #[arg(long)]
    pub stream: bool,
    /// Where stream consumers start: first, last, next or an offset.
    #[arg(long, default_value = "next")]
    pub stream_offset: String,
    /// Messages per stream Publish frame.
    #[arg(long, default_value_t = 100)]
    pub stream_batch: u32,
    /// Use MQTT instead of AMQP 0-9-1 (see `bench/mqtt/`): --producers publishers and
    /// --consumers subscribers, one connection each, on the topics <topic>/1..=<topics>.
    /// --uri is then mqtt://user:pass@host:port (port 1883 by default; no user: anonymous).
    #[arg(long)]
    pub mqtt: bool,
    /// MQTT protocol version: 3.1.1, 5 or 3.1.
    #[arg(long, default_value = "3.1.1")]
    pub mqtt_version: String,
    /// MQTT: QoS of the PUBLISHes (0 or 1).
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// MQTT: QoS of the subscriptions (default: --qos).
    #[arg(long)]
    pub sub_qos: Option<u8>,
    /// MQTT QoS 1: at most this many PUBLISHes per publisher awaiting their PUBACK (also
    /// capped by a 5.0 server's Receive Maximum).
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// MQTT: topic prefix; topics are <topic>/1..=<topics> (publishers and subscribers are
    /// spread over them round-robin; every subscriber of a topic gets every message).
    #[arg(long, default_value = "pier-bench")]
    pub topic: String,
    /// MQTT: number of topics.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// MQTT keep-alive in seconds (0 = off); idle connections send PINGREQ every half of it.
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// MQTT idle mode: open N connections that each subscribe to a topic of their own
    /// (<topic>/idle/<n>) and then stay idle (PINGREQ only) for --time seconds after the
    /// last is up, or until Ctrl-C: for measuring a broker's memory per connection.
    #[arg(long, value_name = "N")]
    pub mqtt_idle: Option<usize>,
    /// --mqtt-idle: at most this many connection handshakes under way at once (below the
    /// broker's accept backlog; RabbitMQ's is 128).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// --mqtt-idle: new connections per second (0 = no limit but --connect-concurrency).
    #[arg(long, default_value_t = 1000)]
    pub connect_rate: u64,
    /// --mqtt-idle: write this file (a JSON line of counts) once every connection is up.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<std::path::PathBuf>,
}

impl Config {
    /// The node producer `i` connects to: round-robin from the first.
    pub fn producer_node(&self, i: usize) -> &AmqpUri {
        self.nodes
            .get(i % self.nodes.len().max(1))
            .unwrap_or(&self.uri)
    }

    /// The node consumer `i` connects to: round-robin after the producers', so that with
    /// one producer and one consumer over two nodes each has its own.
    pub fn consumer_node(&self, i: usize) -> &AmqpUri {
        self.producer_node(i + self.producers)
    }
}

/// Validated settings of a run.

#[derive(Debug, Clone)]
pub struct Config {
    pub uri: AmqpUri,
    /// Every node clients connect to (--uri first, then --uris).
    pub nodes: Vec<AmqpUri>,
    pub quorum_queue: bool,
    pub producers: usize,
    pub consumers: usize,
    pub queue_names: Vec<String>,
    pub requested_size: usize,
    /// Body size actually sent.
    pub size: usize,
    pub time: Option<Duration>,
    pub pmessages: Option<u64>,
    pub cmessages: Option<u64>,
    pub rate: u64,
    pub persistent: bool,
    pub confirm: Option<u32>,
    pub prefetch: u16,
    pub multi_ack: u32,
    pub autoack: bool,
    /// "" = the default exchange.
    pub exchange: String,
    pub exchange_type: String,
    pub routing_key: Option<String>,
    pub json: bool,
    pub declare: bool,
    pub delete_queues: bool,
    pub drain_timeout: Duration,
    pub broker_pid: Option<u32>,
    pub quiet: bool,
    pub floor: bool,
}

impl Config {
    pub fn producer_queue(&self, producer: usize) -> usize {
        producer % self.queue_names.len().max(1)
    }

    pub fn consumer_queue(&self, consumer: usize) -> usize {
        consumer % self.queue_names.len().max(1)
    }

    /// The routing key producer `i` publishes with.
    pub fn producer_routing_key(&self, producer: usize) -> &str {
        match &self.routing_key {
            Some(k) => k,
            None => &self.queue_names[self.producer_queue(producer)],
        }
    }

    /// The key queue `q` is bound with (custom exchange only).
    pub fn binding_key(&self, queue: usize) -> &str {
        match &self.routing_key {
            Some(k) => k,
            None => &self.queue_names[queue],
        }
    }

    /// How many queues each published message lands in: every queue when they are all
    /// bound with one key (or to a fanout exchange), otherwise one.
    pub fn copies(&self) -> u64 {
        let all = !self.exchange.is_empty()
            && (self.routing_key.is_some() || self.exchange_type == "fanout");
        if all {
            self.queue_names.len() as u64
        } else {
            1
        }
    }

    /// Whether every queue that receives messages has a consumer (needed for the drain
    /// check).
    fn every_target_queue_consumed(&self) -> bool {
        let queues = self.queue_names.len();
        let consumed_queues = self.consumers.min(queues);
        if self.copies() > 1 {
            consumed_queues == queues
        } else {
            self.producers.min(queues) <= consumed_queues
        }
    }
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !v.is_finite() || v <= 0.0 {
        bail!("--{name} must be a positive number of seconds");
    }
    Duration::try_from_secs_f64(v).map_err(|e| anyhow!("--{name}: {e}"))
}

/// Checks the options and derives the run's settings.
pub fn validate(args: BenchArgs) -> anyhow::Result<Config> {
    let uri: AmqpUri = args.uri.parse().context("--uri")?;
    if args.producers == 0 && args.consumers == 0 {
        bail!("nothing to do: --producers and --consumers are both 0");
    }
    if args.queues == 0 {
        bail!("--queues must be at least 1");
    }
    if args.queue_prefix.is_empty() {
        bail!("--queue-prefix must not be empty (queue names would be bare numbers)");
    }
    let queue_names: Vec<String> = (1..=args.queues)
        .map(|i| format!("{}{i}", args.queue_prefix))
        .collect();
    if queue_names.iter().any(|q| q.len() > 255) {
        bail!("queue names must be at most 255 bytes");
    }
    let time = args.time.map(|t| seconds("time", t)).transpose()?;
    if args.pmessages == Some(0) {
        bail!("--pmessages must be at least 1");
    }
    if args.pmessages.is_some() && args.producers == 0 {
        bail!("--pmessages needs at least one producer");
    }
    if args.cmessages == Some(0) {
        bail!("--cmessages must be at least 1");
    }
    if args.cmessages.is_some() && args.consumers == 0 {
        bail!("--cmessages needs at least one consumer");
    }
    if args.cmessages.is_some() && args.pmessages.is_some() {
        bail!("use either --pmessages (drain what this run published) or --cmessages, not both");
    }
    if args.autoack && args.multi_ack > 1 {
        bail!("--multi-ack makes no sense with --autoack");
    }
    if args.multi_ack == 0 {
        bail!("--multi-ack must be at least 1");
    }
    if !args.autoack && args.prefetch > 0 && args.multi_ack > u32::from(args.prefetch) {
        bail!(
            "--multi-ack {} above --prefetch {} would stall: the broker stops delivering \
             before the consumer acks",
            args.multi_ack,
            args.prefetch
        );
    }
    let exchange = args.exchange.clone().unwrap_or_default();
    if args.routing_key.is_some() && exchange.is_empty() {
        bail!("--routing-key needs --exchange (the default exchange routes by queue name)");
    }
    if exchange.starts_with("amq.") && !args.no_declare {
        // Declaring amq.* is refused by brokers; they exist already.
        bail!("exchanges named amq.* are predefined: use --no-declare with them");
    }
    if let Some(k) = &args.routing_key {
        if k.len() > 255 {
            bail!("--routing-key must be at most 255 bytes");
        }
    }
    let drain_timeout = seconds("drain-timeout", args.drain_timeout)?;
    let mut nodes = vec![uri.clone()];
    for u in &args.uris {
        nodes.push(u.parse().with_context(|| format!("--uris: {u}"))?);
    }
    let config = Config {
        nodes,
        quorum_queue: args.quorum_queue,
        uri,
        producers: args.producers,
        consumers: args.consumers,
        queue_names,
        requested_size: args.size,
        size: message::effective_size(args.size),
        time,
        pmessages: args.pmessages,
        cmessages: args.cmessages,
        rate: args.rate,
        persistent: args.persistent,
        confirm: (args.confirm > 0).then_some(args.confirm),
        prefetch: args.prefetch,
        multi_ack: args.multi_ack,
        autoack: args.autoack,
        exchange,
        exchange_type: args.exchange_type,
        routing_key: args.routing_key,
        json: args.json,
        declare: !args.no_declare,
        delete_queues: args.delete_queues,
        drain_timeout,
        broker_pid: args.broker_pid,
        quiet: args.quiet,
        floor: args.floor,
    };
    if config.pmessages.is_some() && config.consumers > 0 && !config.every_target_queue_consumed() {
        bail!(
            "with --pmessages every queue that gets messages needs a consumer: use at least \
             as many consumers as queues in use"
        );
    }
    Ok(config)
}

/// Entry point: runs the bench on its own tokio runtime. An `Err` (exit code 1) when the
/// run failed or, with --pmessages, when not everything published was consumed.
pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    if args.mqtt || args.mqtt_idle.is_some() {
        return mqtt::main(&args);
    }
    if args.stream {
        return stream::main(&args);
    }
    let config = validate(args)?;
    if config.floor {
        return floor::main(Arc::new(config));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(Arc::new(config)))
}

/// Runs one bench and reports it.
async fn run(cfg: Arc<Config>) -> anyhow::Result<()> {
    if cfg.size != cfg.requested_size {
        eprintln!(
            "note: --size {} cannot hold the 8-byte latency stamp; sending {}-byte bodies",
            cfg.requested_size, cfg.size
        );
    }
    let mut setup = Client::connect(&cfg.uri, "pier-bench setup")
        .await
        .with_context(|| format!("connecting to {}", cfg.uri))?;
    if cfg.declare {
        declare(&mut setup, &cfg).await?;
    }

    let clock = Clock::new();
    let nonce = run_nonce();
    let counters = Arc::new(Counters::new(cfg.producers, cfg.consumers));
    let (stop_producers, stop_producers_rx) = watch::channel(false);
    let (stop_consumers, stop_consumers_rx) = watch::channel(false);

    // Consumers first, all subscribed before anything is published.
    let mut latencies = Latencies::new()?;
    let spawn = |index, latencies, ready| {
        let consumer = Consumer {
            config: Arc::clone(&cfg),
            index,
            counters: Arc::clone(&counters),
            clock,
            nonce,
            latencies,
            stop: stop_consumers_rx.clone(),
        };
        tokio::spawn(consumer.run(ready))
    };
    let mut consumers = start_consumers(
        cfg.consumers,
        "consumer",
        &stop_consumers,
        &mut latencies,
        spawn,
    )
    .await?;

    if !cfg.quiet {
        eprintln!(
            "pier bench: {} producer(s), {} consumer(s), {} queue(s), {} B messages{}{} -> {}",
            cfg.producers,
            cfg.consumers,
            cfg.queue_names.len(),
            cfg.size,
            if cfg.persistent { ", persistent" } else { "" },
            cfg.confirm
                .map(|c| format!(", confirm {c}"))
                .unwrap_or_default(),
            cfg.uri
        );
    }

    let cpu = Cpu::start(cfg.broker_pid);
    let start = Instant::now();
    let start_ns = clock.now_ns();
    let deadline = cfg.time.map(|t| start + t);
    let producers: Vec<JoinHandle<anyhow::Result<()>>> = (0..cfg.producers)
        .map(|index| {
            tokio::spawn(
                Producer {
                    config: Arc::clone(&cfg),
                    index,
                    counters: Arc::clone(&counters),
                    clock,
                    nonce,
                    stop: stop_producers_rx.clone(),
                    deadline,
                }
                .run(),
            )
        })
        .collect();
    // Monitor: per-second lines, end conditions, failures.
    let mut errors: Vec<String> = Vec::new();
    let mut producers: Vec<Option<JoinHandle<anyhow::Result<()>>>> =
        producers.into_iter().map(Some).collect();
    let mut last_line = Instant::now();
    let mut last_snap = Snapshot::default();
    let mut failed = false;
    let mut drain_failed = false;
    let mut progress = Progress::default();
    let mut ticker = Ticker::new();

    loop {
        if ticker.next().await {
            let _ = stop_producers.send(true);
        }
        // A producer that fails, or a consumer that ends at all, ends the run.
        failed |= reap(&mut producers, "producer", false, &mut errors).await;
        failed |= reap(&mut consumers, "consumer", true, &mut errors).await;
        let now = Instant::now();
        let snap = counters.snapshot();
        if now.duration_since(last_line) >= Duration::from_secs(1) {
            let interval = latencies.interval();
            if !cfg.quiet {
                let confirms = cfg.confirm.map(|_| {
                    let (n, b) = (&snap, &last_snap);
                    ("conf", n.confirmed + n.nacked, b.confirmed + b.nacked)
                });
                let depth = (snap.published * cfg.copies()).saturating_sub(snap.consumed);
                report::print_line(
                    start,
                    now.duration_since(last_line),
                    &snap,
                    &last_snap,
                    interval,
                    confirms,
                    ("depth", depth),
                );
            }
            latencies.end_interval();
            last_line = now;
            last_snap = snap;
        }
        if failed || ticker.interrupted {
            break;
        }
        if deadline.is_some_and(|d| now >= d) && cfg.pmessages.is_none() {
            // Time is up, even for a producer still blocked in a write by the broker's flow
            // control: it is collected below.
            break;
        }
        if let Some(target) = cfg.cmessages {
            // Consume-only drain: stop at the target or when nothing arrives for too long.
            let received = snap.consumed + snap.stale;
            if let Some(done) = progress.drained(received, target, now, cfg.drain_timeout) {
                drain_failed = !done;
                break;
            }
            continue;
        }
        if cfg.producers == 0 {
            continue;
        }
        if producers.iter().any(Option::is_some) {
            continue;
        }
        // Every producer is done: with --pmessages, wait for the consumers to drain.
        if cfg.pmessages.is_none() || cfg.consumers == 0 {
            break;
        }
        let expected = snap.published * cfg.copies();
        if let Some(done) = progress.drained(snap.consumed, expected, now, cfg.drain_timeout) {
            drain_failed = !done;
            break;
        }
    }
    // Producers close politely (waiting for outstanding confirms), then consumers; a timed
    // run's backlog stays in the queues (--delete-queues clears it).
    let end = stop_all(
        Side {
            stop: &stop_producers,
            tasks: &mut producers,
            role: "producer",
            limit: Duration::from_secs(10),
        },
        Side {
            stop: &stop_consumers,
            tasks: &mut consumers,
            role: "consumer",
            limit: Duration::from_secs(10),
        },
        cfg.pmessages.is_some(),
        &mut errors,
    )
    .await;
    let (bench_cpu, broker_cpu) = cpu.percent();

    let snap = counters.snapshot();
    let run_secs = end.duration_since(start).as_secs_f64();
    let publish_secs = secs_between(start_ns, counters.last_publish_ns.load(Ordering::Relaxed))
        .unwrap_or(run_secs);
    let consume_secs = secs_between(start_ns, counters.last_consume_ns.load(Ordering::Relaxed))
        .unwrap_or(run_secs);
    let expected = match cfg.cmessages {
        Some(target) => Some(target),
        None => cfg.pmessages.map(|_| snap.published * cfg.copies()),
    };
    // With --cmessages, messages of earlier runs count too.
    let received = if cfg.cmessages.is_some() {
        snap.consumed + snap.stale
    } else {
        snap.consumed
    };
    let all_consumed = match expected {
        Some(e) if cfg.consumers > 0 => Some(received >= e && !drain_failed),
        _ => None,
    };

    let summary = Report {
        protocol: Protocol::Amqp,
        snap,
        per_producer: counters.per_producer(),
        per_consumer: counters.per_consumer(),
        wall: run_secs,
        publish_secs,
        consume_secs,
        latency: latencies.summary(),
        bench_cpu,
        broker_cpu,
        broker_pid: cfg.broker_pid.is_some(),
        confirms: cfg.confirm.is_some(),
        received,
        expected,
        all_consumed,
        interrupted: ticker.interrupted,
        errors: &errors,
    };
    let json = cfg.json.then(|| summary.json(settings_json(&cfg)));
    report::emit(&summary.human(), json.as_ref());

    if cfg.delete_queues {
        for q in &cfg.queue_names {
            match setup.delete_queue(q).await {
                Ok(0) => {}
                Ok(n) => eprintln!("deleted queue {q} ({n} messages left in it)"),
                Err(e) => eprintln!("could not delete queue {q}: {e:#}"),
            }
        }
    }
    let _ = setup.close().await;
    summary.outcome(cfg.drain_timeout)
}

/// The run's settings, the head of its JSON summary.
fn settings_json(c: &Config) -> serde_json::Value {
    serde_json::json!({
        "uri": c.uri.to_string(),
        "producers": c.producers,
        "consumers": c.consumers,
        "queues": c.queue_names.len(),
        "size": c.size,
        "persistent": c.persistent,
        "confirm": c.confirm,
        "prefetch": c.prefetch,
        "multi_ack": c.multi_ack,
        "autoack": c.autoack,
        "rate_limit": c.rate,
        "time_secs": c.time.map(|t| t.as_secs_f64()),
        "pmessages": c.pmessages,
        "cmessages": c.cmessages,
    })
}

async fn declare(setup: &mut Client, cfg: &Config) -> anyhow::Result<()> {
    if !cfg.exchange.is_empty() {
        setup
            .declare_exchange(&cfg.exchange, &cfg.exchange_type, cfg.persistent)
            .await
            .with_context(|| format!("declaring exchange {}", cfg.exchange))?;
    }
    for (i, q) in cfg.queue_names.iter().enumerate() {
        let ready = setup
            .declare_queue(q, cfg.persistent || cfg.quorum_queue, cfg.quorum_queue)
            .await
            .with_context(|| format!("declaring queue {q}"))?;
        if ready > 0 {
            eprintln!(
                "note: queue {q} already holds {} messages (counted as stale when consumed)",
                thousands(u64::from(ready))
            );
        }
        if !cfg.exchange.is_empty() {
            setup
                .bind_queue(q, &cfg.exchange, cfg.binding_key(i))
                .await
                .with_context(|| format!("binding queue {q} to {}", cfg.exchange))?;
        }
    }
    Ok(())
}

/// The error of a finished task, if it failed or panicked.
fn join_error(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> Option<String> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(e) => Some(e.to_string()),
    }
}

/// Awaits a task for at most `limit`, aborting it after that.
async fn join_within(
    mut handle: JoinHandle<anyhow::Result<()>>,
    limit: Duration,
) -> Option<String> {
    match tokio::time::timeout(limit, &mut handle).await {
        Ok(joined) => join_error(joined),
        Err(_) => {
            handle.abort();
            Some(format!("did not stop within {limit:?}"))
        }
    }
}

fn secs_between(from_ns: u64, to_ns: u64) -> Option<f64> {
    (to_ns > from_ns).then(|| (to_ns - from_ns) as f64 / 1e9)
}

/// Identifies this run's messages (see `message.rs`).
fn run_nonce() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().bench
    }

    fn config(extra: &[&str]) -> anyhow::Result<Config> {
        validate(args(extra))
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.uri.port, 5672);
        assert_eq!(c.uri.vhost, "/");
        assert_eq!((c.producers, c.consumers), (1, 1));
        assert_eq!(c.queue_names, ["pier-bench-1"]);
        assert_eq!((c.requested_size, c.size), (16, 16));
        assert_eq!(c.time, None);
        assert_eq!(c.confirm, None);
        assert_eq!(c.multi_ack, 1);
        assert!(c.declare);
        assert_eq!(c.exchange, "");
        assert_eq!(c.producer_routing_key(0), "pier-bench-1");
        assert_eq!(c.copies(), 1);
    }

    #[test]
    fn spreading_over_queues() {
        let c = config(&["-x", "4", "-y", "4", "--queues", "3", "--queue-prefix", "q"]).unwrap();
        assert_eq!(c.queue_names, ["q1", "q2", "q3"]);
        assert_eq!(
            (0..4)
                .map(|p| c.producer_routing_key(p))
                .collect::<Vec<_>>(),
            ["q1", "q2", "q3", "q1"]
        );
        assert_eq!(
            (0..4).map(|i| c.consumer_queue(i)).collect::<Vec<_>>(),
            [0, 1, 2, 0]
        );
    }

    #[test]
    fn sizes_and_times() {
        let c = config(&["--size", "0", "--time", "2.5"]).unwrap();
        assert_eq!((c.requested_size, c.size), (0, 16));
        assert_eq!(c.time, Some(Duration::from_millis(2500)));
        assert_eq!(config(&["--size", "8"]).unwrap().size, 8);
        assert_eq!(config(&["-s", "1024"]).unwrap().size, 1024);
        assert!(config(&["--time", "0"]).is_err());
        assert!(config(&["--time=-1"]).is_err());
        assert!(config(&["--drain-timeout", "0"]).is_err());
    }

    #[test]
    fn invalid_combinations() {
        let bad: &[&[&str]] = &[
            &["--uri", "http://x"],
            &["-x", "0", "-y", "0"],
            &["--queues", "0"],
            &["--queue-prefix", ""],
            &["--pmessages", "0"],
            &["-x", "0", "--pmessages", "10"],
            &["--autoack", "--multi-ack", "10"],
            &["--multi-ack", "0"],
            &["--prefetch", "10", "--multi-ack", "100"],
            &["--routing-key", "k"],
            &["--exchange", "amq.direct"],
            &["--cmessages", "0"],
            &["-y", "0", "--cmessages", "5"],
            &["--pmessages", "5", "--cmessages", "5"],
            // 2 queues get messages but only queue 1 is consumed: the drain check could
            // never pass.
            &["-x", "2", "-y", "1", "--queues", "2", "--pmessages", "5"],
            // Fanout to 3 queues with 2 consumers.
            &[
                "-e",
                "fx",
                "--exchange-type",
                "fanout",
                "--queues",
                "3",
                "-y",
                "2",
                "-C",
                "1",
            ],
        ];
        for extra in bad {
            assert!(config(extra).is_err(), "{extra:?} should be rejected");
        }
        // ... and what is fine.
        let good: &[&[&str]] = &[
            &["--prefetch", "100", "--multi-ack", "100"],
            &["--autoack", "--prefetch", "10"],
            &["-x", "2", "-y", "2", "--queues", "2", "--pmessages", "5"],
            &["-x", "1", "-y", "1", "--queues", "4", "--pmessages", "5"],
            &["-x", "2", "-y", "0", "--pmessages", "5"],
            &["-x", "0", "-y", "2", "--time", "1"],
            &["--exchange", "amq.direct", "--no-declare"],
            &["-x", "0", "-y", "1", "--cmessages", "1000"],
            &["-x", "1", "-y", "2", "--time", "5", "-D", "10"],
        ];
        for extra in good {
            assert!(
                config(extra).is_ok(),
                "{extra:?} should be accepted: {:?}",
                config(extra)
            );
        }
    }

    #[test]
    fn exchanges_and_copies() {
        let c = config(&["-e", "bx", "--queues", "3", "-y", "3"]).unwrap();
        assert_eq!(c.copies(), 1);
        assert_eq!(c.binding_key(1), "pier-bench-2");
        let c = config(&["-e", "bx", "-k", "all", "--queues", "3", "-y", "3"]).unwrap();
        assert_eq!(c.copies(), 3);
        assert_eq!(c.producer_routing_key(0), "all");
        assert_eq!(c.binding_key(2), "all");
        let c = config(&[
            "-e",
            "fx",
            "--exchange-type",
            "fanout",
            "--queues",
            "2",
            "-y",
            "2",
        ])
        .unwrap();
        assert_eq!(c.copies(), 2);
    }

    #[test]
    fn confirm_and_flags() {
        let c = config(&[
            "--persistent",
            "--confirm",
            "1000",
            "--multi-ack",
            "100",
            "--prefetch",
            "1000",
            "--rate",
            "500",
            "--json",
            "--delete-queues",
            "--no-declare",
        ])
        .unwrap();
        assert!(c.persistent && c.json && c.delete_queues && !c.declare);
        assert_eq!(c.confirm, Some(1000));
        assert_eq!((c.multi_ack, c.prefetch, c.rate), (100, 1000, 500));
        assert_eq!(config(&["--confirm", "0"]).unwrap().confirm, None);
    }
}
