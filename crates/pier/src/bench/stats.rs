//! Shared counters, latency histograms, CPU accounting and number formatting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;
use procfs::process::Process;

/// The process-local monotonic clock that stamps and reads message bodies.
#[derive(Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the epoch (saturating; u64 ns covers 584 years).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Totals updated by producers and consumers (once per batch, not per message).
#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    /// Messages of this run received by consumers.
    pub consumed: AtomicU64,
    /// Messages from an earlier run (another nonce) that were in the queues.
    pub stale: AtomicU64,
    /// Clock time of the last publish write / delivery, for the average rates.
    pub last_publish_ns: AtomicU64,
    pub last_consume_ns: AtomicU64,
    /// Per producer / per consumer totals, to show how evenly the broker served them.
    pub per_producer: Vec<AtomicU64>,
    pub per_consumer: Vec<AtomicU64>,
}

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
    pub stale: u64,
}

impl Counters {
    pub fn new(producers: usize, consumers: usize) -> Counters {
        Counters {
            per_producer: (0..producers).map(|_| AtomicU64::new(0)).collect(),
            per_consumer: (0..consumers).map(|_| AtomicU64::new(0)).collect(),
            ..Counters::default()
        }
    }

    /// Adds to the total and to the producer's own count.
    pub fn add_published(&self, producer: usize, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
        if let Some(c) = self.per_producer.get(producer) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds to the total and to the consumer's own count.
    pub fn add_consumed(&self, consumer: usize, n: u64) {
        self.consumed.fetch_add(n, Ordering::Relaxed);
        if let Some(c) = self.per_consumer.get(consumer) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn per_producer(&self) -> Vec<u64> {
        self.per_producer
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    pub fn per_consumer(&self) -> Vec<u64> {
        self.per_consumer
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            published: self.published.load(Ordering::Relaxed),
            confirmed: self.confirmed.load(Ordering::Relaxed),
            nacked: self.nacked.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
        }
    }
}

/// Latencies in microseconds, 1 µs to 1 hour, 3 significant digits (larger values are
/// recorded saturated).
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// A consumer's latencies since the reporter last collected them.
pub type SharedHistogram = Arc<Mutex<Histogram<u64>>>;

/// Moves everything recorded in `from` into `into` and resets `from`.
pub fn drain_into(into: &mut Histogram<u64>, from: &SharedHistogram) {
    if let Ok(mut h) = from.lock() {
        if !h.is_empty() {
            let _ = into.add(&*h);
            h.reset();
        }
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub samples: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p75: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            samples: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p75: h.value_at_quantile(0.75),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "samples": self.samples,
            "min": self.min,
            "mean": (self.mean * 10.0).round() / 10.0,
            "p50": self.p50,
            "p75": self.p75,
            "p95": self.p95,
            "p99": self.p99,
            "p99_9": self.p999,
            "max": self.max,
        })
    }
}

/// `/proc/<pid>/stat` reports CPU times in USER_HZ ticks, which Linux fixes at 100 for
/// user space whatever the kernel's HZ.
pub const USER_HZ: f64 = 100.0;

/// utime + stime, in ticks, of `pid` (this process when `None`). `None` off Linux or if
/// the process is gone.
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let process = match pid {
        Some(pid) => Process::new(i32::try_from(pid).ok()?),
        None => Process::myself(),
    };
    let stat = process.ok()?.stat().ok()?;
    stat.utime.checked_add(stat.stime)
}

/// CPU used between two tick readings over `wall_secs`, as a percentage of one core.
pub fn cpu_percent(before: Option<u64>, after: Option<u64>, wall_secs: f64) -> Option<f64> {
    let (before, after) = (before?, after?);
    if wall_secs <= 0.0 {
        return None;
    }
    Some(after.saturating_sub(before) as f64 / USER_HZ / wall_secs * 100.0)
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate, rounded, with thousands separators.
pub fn rate(n: f64) -> String {
    thousands(n.max(0.0).round() as u64)
}

/// Microseconds for humans: `850 µs`, `12.3 ms`, `1.20 s`.
pub fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 100_000 {
        format!("{:.2} ms", us as f64 / 1_000.0)
    } else if us < 1_000_000 {
        format!("{:.0} ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2} s", us as f64 / 1_000_000.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_figures() {
        assert!(
            cpu_ticks(None).is_some(),
            "/proc/self/stat is readable on Linux"
        );
        assert!(cpu_ticks(Some(std::process::id())).is_some());
        assert_eq!(cpu_ticks(Some(u32::MAX)), None);
        assert_eq!(cpu_percent(Some(100), Some(150), 1.0), Some(50.0));
        assert_eq!(cpu_percent(Some(100), Some(350), 2.0), Some(125.0));
        assert_eq!(cpu_percent(None, Some(1), 1.0), None);
        assert_eq!(cpu_percent(Some(1), Some(2), 0.0), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(rate(1234.6), "1,235");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(12_345), "12.35 ms");
        assert_eq!(micros(250_000), "250 ms");
        assert_eq!(micros(1_200_000), "1.20 s");
    }

    #[test]
    fn histogram_summary() {
        let mut h = new_histogram().unwrap();
        assert_eq!(LatencySummary::of(&h), LatencySummary::default());
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.samples, 1000);
        assert_eq!(s.min, 1);
        assert_eq!(s.max, 1000);
        assert!((499..=501).contains(&s.p50), "{s:?}");
        assert!((989..=991).contains(&s.p99), "{s:?}");
        let shared: SharedHistogram = Arc::new(Mutex::new(new_histogram().unwrap()));
        shared.lock().unwrap().record(7).unwrap();
        let mut total = new_histogram().unwrap();
        drain_into(&mut total, &shared);
        assert_eq!(total.len(), 1);
        assert!(shared.lock().unwrap().is_empty());
        // Values past the upper bound saturate rather than fail.
        total.saturating_record(u64::MAX);
        assert_eq!(total.len(), 2);
    }
}
