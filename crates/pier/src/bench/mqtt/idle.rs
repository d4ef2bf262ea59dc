//! `pier bench --mqtt-idle N`: N connections that each CONNECT (clean session, keep-alive
//! --keep-alive), SUBSCRIBE to a topic of their own (`<topic>/idle/<n>`) and then sit idle,
//! sending only PINGREQ every half keep-alive, for --time seconds after the last one is up
//! (or until Ctrl-C). Meant for measuring a broker's memory per connection: a script reads
//! the broker's RSS before the run and once `--ready-file` appears (plus a settle time).
//!
//! ```text
//!  pacer ── k/--connect-rate ──► permit (--connect-concurrency) ──► task k:
//!     TCP connect, CONNECT/CONNACK, SUBSCRIBE/SUBACK (retried 3 times), permit freed;
//!     then: PINGREQ every keep-alive/2 (start offset by k, so pings are spread), count
//!     PINGRESPs, until stopped: DISCONNECT and wait for the broker to close.
//! ```
//!
//! At most --connect-concurrency handshakes are under way at once (default 64), so no
//! listener's accept backlog (RabbitMQ's MQTT listener: 128) overflows. The open-files
//! limit is raised to its hard limit first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

use super::conn::{version_name, MqttConn};
use super::{encode_pubacks, ping_due, take_packets, MqttConfig, PINGREQ};
use crate::bench::stats::{micros, new_histogram, thousands, LatencySummary};

/// Attempts per connection before it counts as failed.
const ATTEMPTS: u32 = 3;
/// Longest a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Distinct error messages kept for the report.
const MAX_ERRORS: usize = 10;

#[derive(Default)]
struct Totals {
    established: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    /// Connections the broker closed (or broke) while they were idle.
    lost: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Totals {
    fn error(&self, e: String) {
        if let Ok(mut v) = self.errors.lock() {
            if v.len() < MAX_ERRORS && !v.contains(&e) {
                v.push(e);
            }
        }
    }
}

/// Raises the soft open-files limit to the hard one if `needed` descriptors would not fit;
/// returns the soft limit in force.
pub fn raise_nofile(needed: u64) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c < needed) {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.or(Some(u64::MAX))
}

/// How long after the start connection `k` of a run at `rate` per second may begin
/// (`rate` 0: at once).
pub fn connect_offset(k: usize, rate: u64) -> Duration {
    if rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(k as f64 / rate as f64)
    }
}

/// The first PINGREQ of connection `k`: spread over one interval so that N idle
/// connections do not all ping in the same instant.
pub fn first_ping(k: usize, n: usize, every: Duration) -> Duration {
    let n = n.max(1) as u128;
    let offset = every.as_nanos() * (k as u128 % n) / n;
    every + Duration::from_nanos(u64::try_from(offset).unwrap_or(0))
}

pub async fn run(cfg: Arc<MqttConfig>) -> anyhow::Result<()> {
    let n = cfg.idle.unwrap_or(0);
    // One descriptor per connection, plus some for the runtime and stdio.
    let needed = n as u64 + 64;
    match raise_nofile(needed) {
        Some(limit) if limit < needed => eprintln!(
            "warning: the open-files limit is {limit}, below the {needed} that {n} connections \
             need (raise it with `ulimit -n`)"
        ),
        _ => {}
    }
    let nonce = crate::bench::run_nonce();
    let totals = Arc::new(Totals::default());
    let handshakes = Arc::new(Mutex::new(new_histogram()?));
    let (stop_tx, stop) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(cfg.connect_concurrency));
    if !cfg.quiet {
        eprintln!(
            "pier bench --mqtt-idle: {} connections (MQTT {}, keep-alive {} s, subscriptions \
             QoS {}), at most {} handshakes at once, {} -> {}",
            thousands(n as u64),
            version_name(cfg.version),
            cfg.keep_alive,
            cfg.sub_qos as u8,
            cfg.connect_concurrency,
            if cfg.connect_rate == 0 {
                "no rate limit".to_owned()
            } else {
                format!("{}/s", thousands(cfg.connect_rate))
            },
            cfg.uri
        );
    }
    let start = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tasks = Vec::with_capacity(n);
    let mut interrupted = false;
    // The pacer: connection k starts at k / rate, when a handshake permit is free.
    let mut last_line = Instant::now();
    for k in 0..n {
        let at = start + connect_offset(k, cfg.connect_rate);
        let permit = tokio::select! {
            p = async {
                tokio::time::sleep_until(at.into()).await;
                Arc::clone(&permits).acquire_owned().await
            } => p.context("handshake permits")?,
            _ = &mut ctrl_c => { interrupted = true; break; }
        };
        let (task_cfg, task_totals, task_hist, task_stop) = (
            Arc::clone(&cfg),
            Arc::clone(&totals),
            Arc::clone(&handshakes),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            idle_connection(
                k,
                n,
                nonce,
                task_cfg,
                task_totals,
                task_hist,
                permit,
                task_stop,
            )
            .await;
        }));
        if !cfg.quiet && last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            progress(&totals, start);
        }
    }
    // Wait for every handshake to end.
    while !interrupted
        && totals.established.load(Ordering::Relaxed) + totals.failed.load(Ordering::Relaxed)
            < n as u64
    {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = &mut ctrl_c => interrupted = true,
        }
        if !cfg.quiet && last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            progress(&totals, start);
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let established = totals.established.load(Ordering::Relaxed);
    let failed = totals.failed.load(Ordering::Relaxed);
    eprintln!(
        "ready: {} of {} connections up ({} failed) in {:.2} s ({} connections/s)",
        thousands(established),
        thousands(n as u64),
        thousands(failed),
        connect_secs,
        thousands((established as f64 / connect_secs.max(1e-9)) as u64)
    );
    if let Some(path) = &cfg.ready_file {
        let ready = serde_json::json!({
            "connections": n, "established": established, "failed": failed,
            "connect_secs": connect_secs,
        });
        std::fs::write(path, format!("{ready}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }

    // Hold: idle until --time is up or Ctrl-C.
    let hold_start = Instant::now();
    // Nothing to hold when no connection is up.
    if !interrupted && established > 0 {
        let hold = async {
            match cfg.time {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(hold);
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut hold => break,
                _ = &mut ctrl_c => { interrupted = true; break; }
                _ = tick.tick() => if !cfg.quiet {
                    eprintln!(
                        "{:>6.1}s idle: {} open, {} lost, PINGREQ {} PINGRESP {}",
                        start.elapsed().as_secs_f64(),
                        thousands(established - totals.lost.load(Ordering::Relaxed)),
                        thousands(totals.lost.load(Ordering::Relaxed)),
                        thousands(totals.pings.load(Ordering::Relaxed)),
                        thousands(totals.pongs.load(Ordering::Relaxed)),
                    );
                },
            }
        }
    }
    let hold_secs = hold_start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let close_start = Instant::now();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let close_secs = close_start.elapsed().as_secs_f64();

    let lat = handshakes
        .lock()
        .map(|h| LatencySummary::of(&h))
        .unwrap_or_default();
    let lost = totals.lost.load(Ordering::Relaxed);
    let errors = totals.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let summary = serde_json::json!({
        "protocol": "mqtt",
        "mode": "idle",
        "mqtt_version": version_name(cfg.version),
        "uri": cfg.uri.to_string(),
        "connections": n,
        "established": established,
        "failed": failed,
        "retries": totals.retries.load(Ordering::Relaxed),
        "lost": lost,
        "keep_alive_secs": cfg.keep_alive,
        "sub_qos": cfg.sub_qos as u8,
        "connect_secs": (connect_secs * 1000.0).round() / 1000.0,
        "connect_rate": (established as f64 / connect_secs.max(1e-9)).round(),
        "handshake_us": lat.to_json(),
        "hold_secs": (hold_secs * 100.0).round() / 100.0,
        "close_secs": (close_secs * 100.0).round() / 100.0,
        "pings": totals.pings.load(Ordering::Relaxed),
        "pongs": totals.pongs.load(Ordering::Relaxed),
        "interrupted": interrupted,
        "errors": errors,
    });
    let human = format!(
        "---- pier bench --mqtt-idle summary ----\n\
         connections {} of {} up ({} failed, {} retries) in {:.2} s\n\
         handshake   p50 {}  p99 {}  max {}   (TCP connect + CONNECT + SUBSCRIBE)\n\
         idle        {:.1} s: PINGREQ {} PINGRESP {}, {} lost\n{}",
        thousands(established),
        thousands(n as u64),
        thousands(failed),
        thousands(totals.retries.load(Ordering::Relaxed)),
        connect_secs,
        micros(lat.p50),
        micros(lat.p99),
        micros(lat.max),
        hold_secs,
        thousands(totals.pings.load(Ordering::Relaxed)),
        thousands(totals.pongs.load(Ordering::Relaxed)),
        thousands(lost),
        errors
            .iter()
            .map(|e| format!("error: {e}\n"))
            .collect::<String>()
    );
    crate::bench::report::emit(&human, cfg.json.then_some(&summary));
    if failed > 0 || lost > 0 {
        bail!(
            "{} connection(s) failed, {} lost while idle",
            thousands(failed),
            thousands(lost)
        );
    }
    Ok(())
}

fn progress(totals: &Totals, start: Instant) {
    eprintln!(
        "{:>6.1}s connecting: {} up, {} failed",
        start.elapsed().as_secs_f64(),
        thousands(totals.established.load(Ordering::Relaxed)),
        thousands(totals.failed.load(Ordering::Relaxed))
    );
}

async fn handshake(k: usize, nonce: u64, cfg: &MqttConfig) -> anyhow::Result<(MqttConn, Duration)> {
    let began = Instant::now();
    let mut conn = cfg.connect(nonce, 'i', k).await?;
    conn.subscribe(&format!("{}/idle/{k}", cfg.topic_prefix), cfg.sub_qos)
        .await?;
    Ok((conn, began.elapsed()))
}

#[allow(clippy::too_many_arguments)]
async fn idle_connection(
    k: usize,
    n: usize,
    nonce: u64,
    cfg: Arc<MqttConfig>,
    totals: Arc<Totals>,
    handshakes: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt = 0;
    let mut conn = loop {
        attempt += 1;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(k, nonce, &cfg)).await {
            Ok(Ok((conn, took))) => {
                if let Ok(mut h) = handshakes.lock() {
                    h.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
                }
                break conn;
            }
            Ok(Err(e)) if attempt >= ATTEMPTS => {
                totals.error(format!("{e:#}"));
                totals.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) if attempt >= ATTEMPTS => {
                totals.error(format!("handshake took over {HANDSHAKE_TIMEOUT:?}"));
                totals.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ => {
                totals.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    };
    drop(permit);
    totals.established.fetch_add(1, Ordering::Relaxed);
    conn.buf.clear();
    conn.buf.reserve(64);
    let mut ping = cfg.ping_timer(|every| first_ping(k, n, every));
    let outcome: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                r = conn.stream.read_buf(&mut conn.buf) => {
                    if r? == 0 {
                        bail!("connection closed by the broker while idle");
                    }
                    let got = take_packets(&mut conn.buf, conn.version, conn.max_packet, nonce)?;
                    totals.pongs.fetch_add(got.pongs, Ordering::Relaxed);
                    // Someone published to an idle topic: acknowledge, as a client must.
                    let mut out = bytes::BytesMut::new();
                    encode_pubacks(&got.to_ack, conn.version, &mut out)?;
                    if !out.is_empty() {
                        conn.stream.write_all(&out).await?;
                    }
                }
                _ = ping_due(&mut ping) => {
                    conn.stream.write_all(&PINGREQ).await?;
                    totals.pings.fetch_add(1, Ordering::Relaxed);
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }
    .await;
    match outcome {
        Ok(()) => conn.disconnect().await,
        Err(e) => {
            totals.error(format!("{e:#}"));
            totals.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pacing_and_ping_spread() {
        assert_eq!(connect_offset(0, 500), Duration::ZERO);
        assert_eq!(connect_offset(250, 500), Duration::from_millis(500));
        assert_eq!(connect_offset(10_000, 0), Duration::ZERO);
        let every = Duration::from_secs(30);
        assert_eq!(first_ping(0, 4, every), every);
        assert_eq!(first_ping(2, 4, every), Duration::from_secs(45));
        assert!(first_ping(3, 4, every) < every * 2);
        assert_eq!(first_ping(0, 0, every), every);
    }

    #[test]
    fn open_files_limit() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let limit = raise_nofile(64).unwrap();
        assert!(limit >= 64 || before.maximum.is_some_and(|m| m < 64));
        // Asking for more than the hard limit leaves the soft limit at the hard limit.
        let limit = raise_nofile(u64::MAX).unwrap();
        assert_eq!(Some(limit), before.maximum.or(Some(u64::MAX)));
    }
}
