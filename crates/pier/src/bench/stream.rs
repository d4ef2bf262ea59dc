//! `pier bench --stream`: the same kind of load over RabbitMQ's stream protocol (port 5552),
//! for Pier and RabbitMQ's stream plugin alike.
//!
//! ```text
//!  producer i ─ connection ─ DeclarePublisher ─ Publish frames of --stream-batch messages ─►
//!     at most --confirm messages unconfirmed (default 10,000); PublishConfirm frees window
//!  consumer j ─ connection ─ Subscribe(--stream-offset, credit 10) ◄─ Deliver (one chunk)
//!     Credit 1 per chunk (as RabbitMQ's clients); messages counted from the chunk header;
//!     latency: the send time in the first message of each chunk
//! ```
//!
//! Every producer and consumer has its own connection and task. Publish frames are encoded
//! by hand into one buffer per batch (the send time patched into each body); everything
//! else goes through `pier-stream-wire`. Bodies are opaque bytes (no AMQP 1.0 encoding):
//! neither broker looks inside a message on the stream protocol path.
//!
//! Ends: `--time`; or `--pmessages` per producer (consumers then wait for everything that
//! was published, each consumer reading every message); or `--cmessages` per consumer (for
//! reading a stream filled earlier, e.g. 10 consumers from `first`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use pier_stream_wire::{
    ClientCommand, Create, Credit, DeclarePublisher, Delete, OffsetSpec, Open, PeerProperties,
    ResponseCode, SaslAuthenticate, SaslHandshake, ServerCommand, Subscribe, Tune,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use super::stats::{
    cpu_percent, cpu_ticks, micros, new_histogram, rate, thousands, Clock, LatencySummary,
};
use super::uri::AmqpUri;
use super::BenchArgs;

/// Frames larger than this from the server are refused (a chunk of 1 KiB messages is far
/// smaller).
const MAX_FRAME: u32 = 64 * 1024 * 1024;

/// Settings of a stream run.
struct StreamConfig {
    uri: AmqpUri,
    /// Every node clients connect to (--uri first, then --uris): producer i to node i,
    /// consumer i to node producers + i (a replicated stream's consumers read a replica,
    /// as RabbitMQ's clients choose one).
    nodes: Vec<AmqpUri>,
    stream: String,
    producers: usize,
    consumers: usize,
    size: usize,
    time: Option<Duration>,
    pmessages: Option<u64>,
    cmessages: Option<u64>,
    window: u32,
    batch: u32,
    offset: OffsetSpec,
    json: bool,
    quiet: bool,
    delete: bool,
    broker_pid: Option<u32>,
    drain_timeout: Duration,
}

fn parse_uri(s: &str) -> anyhow::Result<AmqpUri> {
    let (amqp, default_port) = match s.strip_prefix("rabbitmq-stream://") {
        Some(rest) => (format!("amqp://{rest}"), true),
        None => (s.to_owned(), false),
    };
    let mut uri: AmqpUri = amqp.parse().context("--uri")?;
    // `rabbitmq-stream://host/` means port 5552.
    let authority = amqp
        .trim_start_matches("amqp://")
        .split('/')
        .next()
        .unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if default_port && !host_port.trim_start_matches('[').contains(':') {
        uri.port = 5552;
    }
    Ok(uri)
}

fn config(args: &BenchArgs) -> anyhow::Result<StreamConfig> {
    let uri = parse_uri(&args.uri)?;
    if args.producers == 0 && args.consumers == 0 {
        bail!("nothing to do: --producers and --consumers are both 0");
    }
    let offset = match args.stream_offset.as_str() {
        "first" => OffsetSpec::First,
        "last" => OffsetSpec::Last,
        "next" => OffsetSpec::Next,
        other => match other.parse::<u64>() {
            Ok(n) => OffsetSpec::Offset(n),
            Err(_) => bail!("--stream-offset: first, last, next or a number (got {other:?})"),
        },
    };
    if args.time.is_none() && args.pmessages.is_none() && args.cmessages.is_none() {
        bail!("--stream needs --time, --pmessages or --cmessages");
    }
    if args.pmessages.is_some() && args.producers == 0 {
        bail!("--pmessages needs at least one producer");
    }
    if args.cmessages.is_some() && args.consumers == 0 {
        bail!("--cmessages needs at least one consumer");
    }
    let window = if args.confirm == 0 {
        10_000
    } else {
        args.confirm
    };
    let batch = args.stream_batch.clamp(1, window);
    let mut nodes = vec![uri.clone()];
    for u in &args.uris {
        nodes.push(parse_uri(u).with_context(|| format!("--uris: {u}"))?);
    }
    Ok(StreamConfig {
        uri,
        nodes,
        stream: format!("{}1", args.queue_prefix),
        producers: args.producers,
        consumers: args.consumers,
        size: args.size.max(8),
        time: args.time.map(Duration::from_secs_f64),
        pmessages: args.pmessages,
        cmessages: args.cmessages,
        window,
        batch,
        offset,
        json: args.json,
        quiet: args.quiet,
        delete: args.delete_queues,
        broker_pid: args.broker_pid,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout.max(0.1)),
    })
}

/// One stream-protocol connection of the bench.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    next_correlation: u32,
}

impl Conn {
    async fn connect(uri: &AmqpUri, name: &str) -> anyhow::Result<Conn> {
        let socket = TcpStream::connect(uri.socket_addr())
            .await
            .with_context(|| format!("connecting to {}", uri.socket_addr()))?;
        socket.set_nodelay(true)?;
        let (rd, wr) = socket.into_split();
        let mut c = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(1 << 20),
            next_correlation: 1,
        };
        let id = c.correlation();
        c.send(&ClientCommand::PeerProperties(PeerProperties {
            correlation_id: id,
            properties: vec![
                ("connection_name".into(), name.into()),
                ("product".into(), "pier bench".into()),
            ],
        }))
        .await?;
        c.expect(|r| matches!(r, ServerCommand::PeerPropertiesResponse(_)))
            .await?;
        let id = c.correlation();
        c.send(&ClientCommand::SaslHandshake(SaslHandshake {
            correlation_id: id,
        }))
        .await?;
        c.expect(|r| matches!(r, ServerCommand::SaslHandshakeResponse(_)))
            .await?;
        let id = c.correlation();
        let mut plain = vec![0u8];
        plain.extend_from_slice(uri.user.as_bytes());
        plain.push(0);
        plain.extend_from_slice(uri.password.as_bytes());
        c.send(&ClientCommand::SaslAuthenticate(SaslAuthenticate {
            correlation_id: id,
            mechanism: "PLAIN".into(),
            data: Bytes::from(plain),
        }))
        .await?;
        match c.recv().await? {
            ServerCommand::SaslAuthenticateResponse(r) if r.code == ResponseCode::Ok => {}
            other => bail!("authentication refused: {other:?}"),
        }
        let tune = loop {
            if let ServerCommand::Tune(t) = c.recv().await? {
                break t;
            }
        };
        c.send(&ClientCommand::Tune(Tune {
            frame_max: tune.frame_max,
            heartbeat: tune.heartbeat,
        }))
        .await?;
        let id = c.correlation();
        c.send(&ClientCommand::Open(Open {
            correlation_id: id,
            virtual_host: uri.vhost.clone(),
        }))
        .await?;
        match c.recv().await? {
            ServerCommand::OpenResponse(r) if r.code == ResponseCode::Ok => {}
            other => bail!("open refused: {other:?}"),
        }
        Ok(c)
    }

    fn correlation(&mut self) -> u32 {
        let id = self.next_correlation;
        self.next_correlation += 1;
        id
    }

    async fn send(&mut self, cmd: &ClientCommand) -> anyhow::Result<()> {
        let mut b = BytesMut::new();
        cmd.encode(&mut b).map_err(|e| anyhow!("encoding: {e}"))?;
        self.wr.write_all(&b).await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<ServerCommand> {
        recv_from(&mut self.rd, &mut self.buf).await
    }

    /// Reads until a frame `want` matches (heartbeats and others are skipped).
    async fn expect(&mut self, want: impl Fn(&ServerCommand) -> bool) -> anyhow::Result<()> {
        loop {
            let f = self.recv().await?;
            if want(&f) {
                return Ok(());
            }
            if let ServerCommand::Close(c) = f {
                bail!("closed by the server: {}", c.reason);
            }
        }
    }

    /// Sends a request and returns its response code.
    async fn request(
        &mut self,
        cmd: ClientCommand,
        code_of: impl Fn(&ServerCommand) -> Option<ResponseCode>,
    ) -> anyhow::Result<ResponseCode> {
        self.send(&cmd).await?;
        loop {
            let f = self.recv().await?;
            if let Some(code) = code_of(&f) {
                return Ok(code);
            }
        }
    }
}

async fn recv_from(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> anyhow::Result<ServerCommand> {
    loop {
        if let Some(cmd) =
            ServerCommand::decode_from(buf, MAX_FRAME).map_err(|e| anyhow!("decoding: {e}"))?
        {
            return Ok(cmd);
        }
        // Room for the whole frame begun (its size known and checked): a 4 MiB delivery read
        // into a buffer grown step by step was copied once or twice on the way, which took
        // 15% of the generator's CPU in S1K.
        if let Some(size) = buf.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            let total = 4 + u32::from_be_bytes(size) as usize;
            buf.reserve(total.saturating_sub(buf.len()));
        }
        if rd.read_buf(buf).await? == 0 {
            bail!("connection closed by the broker");
        }
    }
}

#[derive(Default)]
struct Totals {
    published: AtomicU64,
    confirmed: AtomicU64,
    errored: AtomicU64,
    consumed: AtomicU64,
    chunks: AtomicU64,
}

/// Runs `pier bench --stream`.
pub fn main(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = Arc::new(config(args)?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(cfg))
}

async fn run(cfg: Arc<StreamConfig>) -> anyhow::Result<()> {
    let mut setup = Conn::connect(&cfg.uri, "pier-bench setup").await?;
    let id = setup.correlation();
    let code = setup
        .request(
            ClientCommand::Create(Create {
                correlation_id: id,
                stream: cfg.stream.clone(),
                arguments: Vec::new(),
            }),
            |f| match f {
                ServerCommand::CreateResponse(r) => Some(r.code),
                _ => None,
            },
        )
        .await?;
    if code != ResponseCode::Ok && code != ResponseCode::StreamAlreadyExists {
        bail!("creating stream {}: {code:?}", cfg.stream);
    }
    let clock = Clock::new();
    let totals = Arc::new(Totals::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let broker_ticks = |pid: Option<u32>| pid.and_then(|p| cpu_ticks(Some(p)));
    let cpu_before = (cpu_ticks(None), broker_ticks(cfg.broker_pid));
    let mut hist = new_histogram()?;

    // Consumers first, subscribed before anything is published.
    let mut consumers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(cfg.consumers.max(1));
    for i in 0..cfg.consumers {
        let (cfg, totals, stop) = (Arc::clone(&cfg), Arc::clone(&totals), stop_rx.clone());
        let ready = ready_tx.clone();
        consumers.push(tokio::spawn(async move {
            consume(i, cfg, totals, clock, stop, ready).await
        }));
    }
    drop(ready_tx);
    for _ in 0..cfg.consumers {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    let started = Instant::now();
    let mut producers = Vec::new();
    for i in 0..cfg.producers {
        let (cfg, totals, stop) = (Arc::clone(&cfg), Arc::clone(&totals), stop_rx.clone());
        producers.push(tokio::spawn(async move {
            produce(i, cfg, totals, clock, stop).await
        }));
    }

    // Report each second; stop on time, or once everything expected has arrived.
    let expected_per_consumer = cfg
        .cmessages
        .or(cfg.pmessages.map(|n| n * cfg.producers as u64));
    let mut last = (0u64, 0u64, 0u64);
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let p = totals.published.load(Ordering::Relaxed);
        let c = totals.confirmed.load(Ordering::Relaxed);
        let r = totals.consumed.load(Ordering::Relaxed);
        if (p, c, r) != last {
            last_progress = Instant::now();
        }
        if !cfg.quiet && !cfg.json {
            eprintln!(
                "time {:>5.1}s, published {}/s, confirmed {}/s, consumed {}/s",
                started.elapsed().as_secs_f64(),
                thousands(p - last.0),
                thousands(c - last.1),
                thousands(r - last.2)
            );
        }
        last = (p, c, r);
        if cfg.time.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        let producers_done = producers.iter().all(|h| h.is_finished());
        let consumers_done = match expected_per_consumer {
            Some(n) => r >= n * cfg.consumers as u64,
            None => cfg.consumers == 0,
        };
        if cfg.time.is_none() && producers_done && consumers_done {
            break;
        }
        if cfg.time.is_none() && last_progress.elapsed() > cfg.drain_timeout {
            eprintln!("no progress for {:?}: stopping", cfg.drain_timeout);
            break;
        }
    }
    let _ = stop_tx.send(true);
    let mut errors = Vec::new();
    let mut producer_end_ns = 0u64;
    for h in producers {
        match h.await {
            Ok(Ok(end)) => producer_end_ns = producer_end_ns.max(end),
            Ok(Err(e)) => errors.push(format!("producer: {e:#}")),
            Err(e) => errors.push(format!("producer task: {e}")),
        }
    }
    let mut consumer_end_ns = 0u64;
    for h in consumers {
        match h.await {
            Ok(Ok((end, h))) => {
                consumer_end_ns = consumer_end_ns.max(end);
                let _ = hist.add(&h);
            }
            Ok(Err(e)) => errors.push(format!("consumer: {e:#}")),
            Err(e) => errors.push(format!("consumer task: {e}")),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = (cpu_ticks(None), broker_ticks(cfg.broker_pid));
    let start_ns = clock.now_ns() - u64::try_from(started.elapsed().as_nanos()).unwrap_or(0);
    let secs = |end_ns: u64| super::secs_between(start_ns, end_ns).unwrap_or(wall);
    let published = totals.published.load(Ordering::Relaxed);
    let confirmed = totals.confirmed.load(Ordering::Relaxed);
    let consumed = totals.consumed.load(Ordering::Relaxed);
    let publish_secs = secs(producer_end_ns);
    let consume_secs = secs(consumer_end_ns);
    let lat = LatencySummary::of(&hist);
    let summary = serde_json::json!({
        "protocol": "stream",
        "stream": cfg.stream,
        "producers": cfg.producers,
        "consumers": cfg.consumers,
        "size": cfg.size,
        "confirm_window": cfg.window,
        "batch": cfg.batch,
        "wall_seconds": (wall * 1000.0).round() / 1000.0,
        "published": published,
        "confirmed": confirmed,
        "errored": totals.errored.load(Ordering::Relaxed),
        "consumed": consumed,
        "chunks": totals.chunks.load(Ordering::Relaxed),
        "confirmed_rate": if publish_secs > 0.0 { (confirmed as f64 / publish_secs).round() } else { 0.0 },
        "consumed_rate": if consume_secs > 0.0 { (consumed as f64 / consume_secs).round() } else { 0.0 },
        "latency_us": lat.to_json(),
        "bench_cpu_percent": cpu_percent(cpu_before.0, cpu_after.0, wall),
        "broker_cpu_percent": cpu_percent(cpu_before.1, cpu_after.1, wall),
        "errors": errors,
    });
    let line = format!(
        "stream {}: {} producer(s), {} consumer(s), {} B: confirmed {} ({} msg/s), consumed {} \
         ({} msg/s in all), latency p50 {} p99 {} (first message of each chunk)",
        cfg.stream,
        cfg.producers,
        cfg.consumers,
        cfg.size,
        thousands(confirmed),
        rate(if publish_secs > 0.0 {
            confirmed as f64 / publish_secs
        } else {
            0.0
        }),
        thousands(consumed),
        rate(if consume_secs > 0.0 {
            consumed as f64 / consume_secs
        } else {
            0.0
        }),
        micros(lat.p50),
        micros(lat.p99),
    );
    super::report::emit(&format!("{line}\n"), cfg.json.then_some(&summary));
    if cfg.delete {
        let id = setup.correlation();
        let _ = setup
            .request(
                ClientCommand::Delete(Delete {
                    correlation_id: id,
                    stream: cfg.stream.clone(),
                }),
                |f| match f {
                    ServerCommand::DeleteResponse(r) => Some(r.code),
                    _ => None,
                },
            )
            .await;
    }
    if let Some(e) = summary["errors"].as_array().and_then(|a| a.first()) {
        bail!("{e}");
    }
    Ok(())
}

/// Publishes until stopped or --pmessages are confirmed; returns the clock time of the last
/// confirm.
async fn produce(
    i: usize,
    cfg: Arc<StreamConfig>,
    totals: Arc<Totals>,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let node = cfg.nodes.get(i % cfg.nodes.len()).unwrap_or(&cfg.uri);
    let mut c = Conn::connect(node, &format!("pier-bench producer {i}")).await?;
    let id = c.correlation();
    let code = c
        .request(
            ClientCommand::DeclarePublisher(DeclarePublisher {
                correlation_id: id,
                publisher_id: 0,
                reference: String::new(),
                stream: cfg.stream.clone(),
            }),
            |f| match f {
                ServerCommand::DeclarePublisherResponse(r) => Some(r.code),
                _ => None,
            },
        )
        .await?;
    if code != ResponseCode::Ok {
        bail!("declaring the publisher: {code:?}");
    }
    let Conn {
        mut rd,
        mut wr,
        mut buf,
        ..
    } = c;
    let window = Arc::new(Semaphore::new(cfg.window as usize));
    let target = cfg.pmessages;
    let last_confirm = Arc::new(AtomicU64::new(0));
    // Confirms (and heartbeats) on the read side.
    let (hb_tx, mut hb_rx) = tokio::sync::mpsc::channel::<()>(4);
    let reader = {
        let (window, totals, last_confirm) = (
            Arc::clone(&window),
            Arc::clone(&totals),
            Arc::clone(&last_confirm),
        );
        tokio::spawn(async move {
            let mut mine = 0u64;
            loop {
                let f = match recv_from(&mut rd, &mut buf).await {
                    Ok(f) => f,
                    Err(e) => return Err(e),
                };
                match f {
                    ServerCommand::PublishConfirm(p) => {
                        let n = p.publishing_ids.len() as u64;
                        mine += n;
                        totals.confirmed.fetch_add(n, Ordering::Relaxed);
                        last_confirm.store(clock.now_ns(), Ordering::Relaxed);
                        window.add_permits(n as usize);
                    }
                    ServerCommand::PublishError(e) => {
                        let n = e.errors.len() as u64;
                        mine += n;
                        totals.errored.fetch_add(n, Ordering::Relaxed);
                        window.add_permits(n as usize);
                    }
                    ServerCommand::Heartbeat => {
                        let _ = hb_tx.try_send(());
                    }
                    ServerCommand::Close(c) => bail!("closed by the broker: {}", c.reason),
                    _ => {}
                }
                if target.is_some_and(|t| mine >= t) {
                    return Ok(());
                }
            }
        })
    };
    let body_len = cfg.size;
    let per_message = 8 + 4 + body_len;
    let mut frame = BytesMut::with_capacity(4 + 9 + cfg.batch as usize * per_message);
    let mut next_id = 1u64;
    let mut sent = 0u64;
    let heartbeat_frame: [u8; 8] = [0, 0, 0, 4, 0, 0x17, 0, 1];
    loop {
        if *stop.borrow() {
            break;
        }
        let n = match target {
            Some(t) if sent >= t => break,
            Some(t) => (t - sent).min(u64::from(cfg.batch)) as u32,
            None => cfg.batch,
        };
        let permits = tokio::select! {
            p = window.acquire_many(n) => p?,
            _ = stop.changed() => break,
        };
        permits.forget();
        if hb_rx.try_recv().is_ok() {
            wr.write_all(&heartbeat_frame).await?;
        }
        frame.clear();
        let size = 2 + 2 + 1 + 4 + n as usize * per_message;
        frame.put_u32(size as u32);
        frame.put_u16(0x0002);
        frame.put_u16(1);
        frame.put_u8(0);
        frame.put_i32(n as i32);
        let now = clock.now_ns();
        for _ in 0..n {
            frame.put_u64(next_id);
            next_id += 1;
            frame.put_u32(body_len as u32);
            frame.put_u64(now);
            frame.put_bytes(0, body_len - 8);
        }
        wr.write_all(&frame).await?;
        sent += u64::from(n);
        totals.published.fetch_add(u64::from(n), Ordering::Relaxed);
    }
    if target.is_some() {
        tokio::select! {
            r = reader => { r??; }
            _ = stop.changed() => {}
        }
    } else {
        reader.abort();
    }
    Ok(last_confirm.load(Ordering::Relaxed))
}

/// Reads until stopped or --cmessages (or everything published) arrived; returns the clock
/// time of the last delivery and the latencies.
async fn consume(
    i: usize,
    cfg: Arc<StreamConfig>,
    totals: Arc<Totals>,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut hist = new_histogram()?;
    let node = cfg
        .nodes
        .get((cfg.producers + i) % cfg.nodes.len())
        .unwrap_or(&cfg.uri);
    let mut c = Conn::connect(node, &format!("pier-bench consumer {i}")).await?;
    // A replica may start a moment after the stream was created (RabbitMQ's do): the
    // clients retry a subscription the node cannot serve yet, and so does this one.
    let mut tries = 0;
    loop {
        let id = c.correlation();
        let code = c
            .request(
                ClientCommand::Subscribe(Subscribe {
                    correlation_id: id,
                    subscription_id: 0,
                    stream: cfg.stream.clone(),
                    offset: cfg.offset,
                    credit: 10,
                    properties: Vec::new(),
                }),
                |f| match f {
                    ServerCommand::SubscribeResponse(r) => Some(r.code),
                    _ => None,
                },
            )
            .await?;
        match code {
            ResponseCode::Ok => break,
            ResponseCode::StreamNotAvailable if tries < 300 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            code => bail!("subscribing: {code:?}"),
        }
    }
    let _ = ready.send(()).await;
    drop(ready);
    let target = cfg
        .cmessages
        .or(cfg.pmessages.map(|n| n * cfg.producers as u64));
    let mut credit = BytesMut::new();
    ClientCommand::Credit(Credit {
        subscription_id: 0,
        credit: 1,
    })
    .encode(&mut credit)
    .map_err(|e| anyhow!("encoding: {e}"))?;
    let credit = credit.freeze();
    let mut got = 0u64;
    let mut last_ns = 0u64;
    loop {
        let f = tokio::select! {
            f = recv_from(&mut c.rd, &mut c.buf) => f?,
            _ = stop.changed() => break,
        };
        match f {
            ServerCommand::Deliver(d) => {
                c.wr.write_all(&credit).await?;
                let chunk = &d.chunk;
                if chunk.len() < 48 || chunk[1] != 0 {
                    continue; // not user data
                }
                let records =
                    u64::from(u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
                // The first entry: size u32 (high bit 0 = simple), then the body's stamp.
                if chunk.len() >= 48 + 12 && chunk[48] & 0x80 == 0 {
                    let mut stamp = [0u8; 8];
                    stamp.copy_from_slice(&chunk[52..60]);
                    let sent = u64::from_be_bytes(stamp);
                    let now = clock.now_ns();
                    if sent > 0 && sent <= now {
                        let _ = hist.record(((now - sent) / 1000).max(1));
                    }
                }
                got += records;
                last_ns = clock.now_ns();
                totals.consumed.fetch_add(records, Ordering::Relaxed);
                totals.chunks.fetch_add(1, Ordering::Relaxed);
                if target.is_some_and(|t| got >= t) {
                    break;
                }
            }
            ServerCommand::Heartbeat => {
                c.wr.write_all(&[0, 0, 0, 4, 0, 0x17, 0, 1]).await?;
            }
            ServerCommand::Close(c) => bail!("closed by the broker: {}", c.reason),
            _ => {}
        }
    }
    Ok((last_ns, hist))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stream_uris() {
        let u = parse_uri("rabbitmq-stream://guest:guest@127.0.0.1/%2F").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.vhost.as_str()),
            ("127.0.0.1", 5552, "/")
        );
        let u = parse_uri("rabbitmq-stream://a:b@localhost:5553/%2F").unwrap();
        assert_eq!((u.port, u.user.as_str()), (5553, "a"));
        let u = parse_uri("amqp://guest:guest@127.0.0.1:5552/%2F").unwrap();
        assert_eq!(u.port, 5552);
    }
}
