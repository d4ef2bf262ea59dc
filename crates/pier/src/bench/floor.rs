//! The machine's latency floor (`pier bench --floor`): the same message size and rate as a
//! bench run, sent through a byte relay instead of a broker, measured the same way.
//!
//! ```text
//!  producer task ──TCP──► relay (own tokio runtime, as many workers as the broker has) ──TCP──► consumer task
//!     stamps send time                 reads, writes on                           reads `size` bytes,
//!     (same clock as bench)            (no parsing, no routing)                   records now − stamp
//! ```
//!
//! Scenario D (1 KiB at 1,000 msg/s) on a 2-vCPU VM is dominated by waking idle vCPUs: every
//! message wakes the relay's (or broker's) thread and then the consumer's. This run shows what
//! that costs with nothing else on the path, so Pier's own share of a p99 can be read off as
//! the difference (issue 12 asks for Pier within 1.5× of this floor).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::message::{make_body, write_stamp};
use super::stats::{new_histogram, Clock, LatencySummary};
use super::Config;

/// What a floor run measured.
pub struct FloorResult {
    pub sent: u64,
    pub received: u64,
    pub wall: f64,
    pub latency: LatencySummary,
}

/// Starts the relay on its own runtime (its own threads, like a separate broker process) and
/// returns its port. The runtime lives until the process exits.
fn start_relay() -> anyhow::Result<u16> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the relay runtime")?;
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            rt.block_on(async move {
                // The first connection sends, the second receives.
                let (Ok((mut from, _)), Ok((mut to, _))) =
                    (listener.accept().await, listener.accept().await)
                else {
                    return;
                };
                let _ = from.set_nodelay(true);
                let _ = to.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match from.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let Some(chunk) = buf.get(..n) else { return };
                            if to.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        })?;
    Ok(port)
}

/// Sends `--size`-byte stamped messages at `--rate` (1,000/s when unset) for `--time` (10 s
/// when unset) through the relay; one producer, one consumer.
pub async fn run(cfg: &Config, port: u16) -> anyhow::Result<FloorResult> {
    let mut send = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut recv = TcpStream::connect(("127.0.0.1", port)).await?;
    send.set_nodelay(true)?;
    recv.set_nodelay(true)?;
    let size = cfg.size;
    let rate = if cfg.rate > 0 { cfg.rate } else { 1_000 };
    let duration = cfg.time.unwrap_or(Duration::from_secs(10));
    let clock = Clock::new();

    let consumer = tokio::spawn(async move {
        let mut h: Histogram<u64> = new_histogram()?;
        let mut body = vec![0u8; size];
        let mut received = 0u64;
        while recv.read_exact(&mut body).await.is_ok() {
            let mut stamp = [0u8; 8];
            if let Some(s) = body.get(..8) {
                stamp.copy_from_slice(s);
            }
            let sent = u64::from_be_bytes(stamp);
            let us = clock.now_ns().saturating_sub(sent) / 1_000;
            h.saturating_record(us.max(1));
            received += 1;
        }
        anyhow::Ok((h, received))
    });

    let started = Instant::now();
    let mut body = make_body(size, 0);
    let mut sent = 0u64;
    while started.elapsed() < duration {
        // The same pacing as the bench's producers: the n-th message is due at n / rate.
        let next = started + Duration::from_secs_f64(sent as f64 / rate as f64);
        tokio::time::sleep_until(next.into()).await;
        write_stamp(&mut body, clock.now_ns());
        send.write_all(&body).await?;
        sent += 1;
    }
    send.shutdown().await?;
    drop(send);
    let (h, received) = tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .context("the relay did not deliver everything within 10 s")???;
    Ok(FloorResult {
        sent,
        received,
        wall: started.elapsed().as_secs_f64(),
        latency: LatencySummary::of(&h),
    })
}

/// The JSON a floor run prints with `--json`: the keys of a bench run that describe it.
pub fn json(cfg: &Config, r: &FloorResult) -> serde_json::Value {
    let rate = r.received as f64 / r.wall.max(1e-9);
    serde_json::json!({
        "floor": true,
        "size": cfg.size,
        "rate_limit": if cfg.rate > 0 { cfg.rate } else { 1_000 },
        "duration_secs": (r.wall * 100.0).round() / 100.0,
        "published": r.sent,
        "consumed": r.received,
        "publish_rate": (r.sent as f64 / r.wall.max(1e-9) * 10.0).round() / 10.0,
        "consume_rate": (rate * 10.0).round() / 10.0,
        "latency_us": r.latency.to_json(),
        "errors": Vec::<String>::new(),
    })
}

/// Runs the floor measurement and reports it like a bench run.
pub fn main(cfg: Arc<Config>) -> anyhow::Result<()> {
    let port = start_relay()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let r = rt.block_on(run(&cfg, port))?;
    let l = r.latency;
    eprintln!(
        "---- pier bench --floor ({:.2} s): {} B at {} msg/s through a byte relay ----\n\
         sent {} received {}   latency µs: min {} p50 {} p75 {} p95 {} p99 {} p99.9 {} max {}",
        r.wall,
        cfg.size,
        if cfg.rate > 0 { cfg.rate } else { 1_000 },
        r.sent,
        r.received,
        l.min,
        l.p50,
        l.p75,
        l.p95,
        l.p99,
        l.p999,
        l.max
    );
    if cfg.json {
        println!("{}", json(&cfg, &r));
    }
    if r.received < r.sent {
        anyhow::bail!("the relay lost {} messages", r.sent - r.received);
    }
    Ok(())
}
