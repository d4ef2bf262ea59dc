//! The per-second line and the end-of-run report of the AMQP and MQTT modes: one layout and
//! one set of JSON keys, which scripts/bench-*.sh parse, whatever the protocol.

use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use super::stats::{micros, rate, thousands, LatencySummary, Snapshot};

/// Where the two protocols' reports differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Amqp,
    Mqtt,
}

impl Protocol {
    fn roles(self) -> (&'static str, &'static str) {
        match self {
            Protocol::Amqp => ("per producer", "per consumer"),
            Protocol::Mqtt => ("per publisher", "per subscriber"),
        }
    }
}

/// Prints one per-second line: `confirms` is (label, count now, count a line ago) when
/// confirms are on, `backlog` (label, messages) what is published but not consumed.
pub fn print_line(
    start: Instant,
    dt: Duration,
    now: &Snapshot,
    before: &Snapshot,
    interval: &Histogram<u64>,
    confirms: Option<(&str, u64, u64)>,
    backlog: (&str, u64),
) {
    let secs = dt.as_secs_f64().max(1e-9);
    let per_sec = |a: u64, b: u64| rate(a.saturating_sub(b) as f64 / secs);
    let mut line = format!(
        "{:>6.1}s  pub {:>9}/s",
        start.elapsed().as_secs_f64(),
        per_sec(now.published, before.published)
    );
    if let Some((label, now, before)) = confirms {
        line.push_str(&format!("  {label} {:>9}/s", per_sec(now, before)));
    }
    line.push_str(&format!(
        "  cons {:>9}/s",
        per_sec(now.consumed, before.consumed)
    ));
    if interval.is_empty() {
        line.push_str("  lat p50 -        p99 -       ");
    } else {
        line.push_str(&format!(
            "  lat p50 {:>8} p99 {:>8}",
            micros(interval.value_at_quantile(0.5)),
            micros(interval.value_at_quantile(0.99))
        ));
    }
    line.push_str(&format!("  {} {}", backlog.0, thousands(backlog.1)));
    if now.stale > 0 {
        line.push_str(&format!("  stale {}", thousands(now.stale)));
    }
    eprintln!("{line}");
}

/// The human summary on stdout, or with `json` on stderr and the JSON line on stdout.
pub fn emit(human: &str, json: Option<&serde_json::Value>) {
    match json {
        Some(j) => {
            eprint!("{human}");
            println!("{j}");
        }
        None => print!("{human}"),
    }
}

/// The results of a run.
pub struct Report<'a> {
    pub protocol: Protocol,
    pub snap: Snapshot,
    pub per_producer: Vec<u64>,
    pub per_consumer: Vec<u64>,
    pub wall: f64,
    pub publish_secs: f64,
    pub consume_secs: f64,
    pub latency: LatencySummary,
    pub bench_cpu: Option<f64>,
    pub broker_cpu: Option<f64>,
    /// Whether --broker-pid was given (its CPU shows as n/a when unreadable).
    pub broker_pid: bool,
    /// Whether confirms (AMQP) or PUBACKs (MQTT QoS 1) were on.
    pub confirms: bool,
    /// Messages that count towards `expected` (AMQP --cmessages: earlier runs' too).
    pub received: u64,
    pub expected: Option<u64>,
    pub all_consumed: Option<bool>,
    pub interrupted: bool,
    pub errors: &'a [String],
}

impl Report<'_> {
    /// Every message received per second, this run's and earlier runs' (a drain's rate).
    fn receive_rate(&self) -> f64 {
        (self.snap.consumed + self.snap.stale) as f64 / self.consume_secs.max(1e-9)
    }

    fn rates(&self) -> (f64, f64, f64) {
        let s = &self.snap;
        (
            s.published as f64 / self.publish_secs.max(1e-9),
            s.confirmed as f64 / self.publish_secs.max(1e-9),
            s.consumed as f64 / self.consume_secs.max(1e-9),
        )
    }

    pub fn human(&self) -> String {
        use std::fmt::Write;
        let amqp = self.protocol == Protocol::Amqp;
        let s = &self.snap;
        let (pub_rate, conf_rate, cons_rate) = self.rates();
        let mut out = String::new();
        let _ = writeln!(out, "---- pier bench summary ({:.2} s) ----", self.wall);
        let _ = writeln!(
            out,
            "published  {:>12}   avg {:>10} msg/s",
            thousands(s.published),
            rate(pub_rate)
        );
        if self.confirms {
            let note = if amqp {
                format!("nacked {}", thousands(s.nacked))
            } else {
                "(PUBACKs)".to_owned()
            };
            let _ = writeln!(
                out,
                "confirmed  {:>12}   avg {:>10} msg/s   {note}",
                thousands(s.confirmed),
                rate(conf_rate),
            );
        }
        let _ = writeln!(
            out,
            "consumed   {:>12}   avg {:>10} msg/s{}",
            thousands(s.consumed),
            rate(cons_rate),
            if s.stale > 0 {
                format!("   (+{} stale from earlier runs)", thousands(s.stale))
            } else {
                String::new()
            }
        );
        if amqp && s.stale > 0 {
            let _ = writeln!(
                out,
                "received   {:>12}   avg {:>10} msg/s   (this run's and earlier runs')",
                thousands(s.consumed + s.stale),
                rate(self.receive_rate())
            );
        }
        let (producers, consumers) = self.protocol.roles();
        for (what, counts) in [
            (producers, &self.per_producer),
            (consumers, &self.per_consumer),
        ] {
            if counts.len() > 1 {
                let min = counts.iter().copied().min().unwrap_or_default();
                let max = counts.iter().copied().max().unwrap_or_default();
                let _ = write!(out, "{what}  min {} max {}", thousands(min), thousands(max));
                if amqp {
                    let ratio = if min > 0 {
                        format!("{:.2}", max as f64 / min as f64)
                    } else {
                        "-".to_owned()
                    };
                    let _ = write!(out, " (max/min {ratio})");
                }
                out.push('\n');
            }
        }
        let l = &self.latency;
        if l.samples > 0 {
            let _ = writeln!(
                out,
                "latency    p50 {}  p75 {}  p95 {}  p99 {}  p99.9 {}  max {}",
                micros(l.p50),
                micros(l.p75),
                micros(l.p95),
                micros(l.p99),
                micros(l.p999),
                micros(l.max)
            );
        }
        let cpu = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}% of one core"));
        let _ = write!(out, "bench CPU  {}", cpu(self.bench_cpu));
        if self.broker_pid {
            let _ = write!(out, "   broker CPU {}", cpu(self.broker_cpu));
        }
        out.push('\n');
        match (self.all_consumed, self.expected) {
            (Some(true), Some(e)) => {
                let _ = writeln!(out, "all {} messages consumed", thousands(e));
            }
            (Some(false), Some(e)) => {
                let _ = writeln!(
                    out,
                    "NOT all messages consumed: {} of {}",
                    thousands(self.received),
                    thousands(e)
                );
            }
            _ => {}
        }
        if self.interrupted {
            out.push_str("(interrupted)\n");
        }
        for e in self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        out
    }

    /// The run's settings (a JSON object, the mode's own keys) with the results added.
    pub fn json(&self, settings: serde_json::Value) -> serde_json::Value {
        let s = &self.snap;
        let (pub_rate, conf_rate, cons_rate) = self.rates();
        let round = |v: f64| (v * 10.0).round() / 10.0;
        let mut out = settings;
        let results = serde_json::json!({
            "duration_secs": (self.wall * 100.0).round() / 100.0,
            "published": s.published,
            "confirmed": s.confirmed,
            "consumed": s.consumed,
            "stale": s.stale,
            "published_per_producer": self.per_producer,
            "consumed_per_consumer": self.per_consumer,
            "expected": self.expected,
            "all_consumed": self.all_consumed,
            "publish_rate": round(pub_rate),
            "confirm_rate": round(conf_rate),
            "consume_rate": round(cons_rate),
            "latency_us": self.latency.to_json(),
            "bench_cpu_percent": self.bench_cpu.map(round),
            "broker_cpu_percent": self.broker_cpu.map(round),
            "interrupted": self.interrupted,
            "errors": self.errors,
        });
        if let (Some(out), serde_json::Value::Object(results)) = (out.as_object_mut(), results) {
            out.extend(results);
            if self.protocol == Protocol::Amqp {
                out.insert("nacked".into(), s.nacked.into());
                out.insert("receive_rate".into(), round(self.receive_rate()).into());
            }
        }
        out
    }

    /// The run's exit status: its errors, or what was not consumed.
    pub fn outcome(&self, drain_timeout: Duration) -> anyhow::Result<()> {
        if !self.errors.is_empty() {
            bail!("{}", self.errors.join("; "));
        }
        if let (Some(false), Some(e)) = (self.all_consumed, self.expected) {
            bail!(
                "only {} of {} messages consumed (nothing more within {:?})",
                thousands(self.received),
                thousands(e),
                drain_timeout
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report(protocol: Protocol, errors: &[String]) -> Report<'_> {
        Report {
            protocol,
            snap: Snapshot {
                published: 2000,
                confirmed: 2000,
                nacked: 1,
                consumed: 1500,
                stale: 3,
            },
            per_producer: vec![1000, 1000],
            per_consumer: vec![500, 1000],
            wall: 2.0,
            publish_secs: 2.0,
            consume_secs: 1.0,
            latency: LatencySummary {
                samples: 1,
                p50: 850,
                ..LatencySummary::default()
            },
            bench_cpu: Some(12.0),
            broker_cpu: None,
            broker_pid: true,
            confirms: true,
            received: 1500,
            expected: Some(2000),
            all_consumed: Some(false),
            interrupted: true,
            errors,
        }
    }

    /// The lines scripts and readers rely on, per protocol.
    #[test]
    fn human_layout() {
        let errors = ["boom".to_owned()];
        let amqp = report(Protocol::Amqp, &errors).human();
        let mqtt = report(Protocol::Mqtt, &errors).human();
        for out in [&amqp, &mqtt] {
            assert!(
                out.starts_with("---- pier bench summary (2.00 s) ----\n"),
                "{out}"
            );
            assert!(out.contains("\nlatency    p50 850 µs  p75 0 µs"), "{out}");
            assert!(out.contains("\nbench CPU  12% of one core   broker CPU n/a\n"));
            assert!(out.contains("\nNOT all messages consumed: 1,500 of 2,000\n"));
            assert!(out.ends_with("(interrupted)\nerror: boom\n"), "{out}");
        }
        assert!(amqp.contains("\nconfirmed         2,000   avg      1,000 msg/s   nacked 1\n"));
        assert!(amqp.contains("\nreceived          1,503   avg      1,503 msg/s   (this run's"));
        assert!(amqp.contains("\nper consumer  min 500 max 1,000 (max/min 2.00)\n"));
        assert!(mqtt.contains("\nconfirmed         2,000   avg      1,000 msg/s   (PUBACKs)\n"));
        assert!(!mqtt.contains("received"), "{mqtt}");
        assert!(
            mqtt.contains("\nper subscriber  min 500 max 1,000\n"),
            "{mqtt}"
        );
    }

    #[test]
    fn json_keys() {
        let settings = || serde_json::json!({ "uri": "u" });
        let amqp = report(Protocol::Amqp, &[]).json(settings());
        let mqtt = report(Protocol::Mqtt, &[]).json(settings());
        for j in [&amqp, &mqtt] {
            assert_eq!(j["uri"], "u");
            assert_eq!(j["consume_rate"], 1500.0);
            assert_eq!(j["latency_us"]["p50"], 850);
            assert_eq!(j["all_consumed"], false);
        }
        assert_eq!(
            (&amqp["nacked"], &amqp["receive_rate"]),
            (&1.into(), &1503.0.into())
        );
        assert!(mqtt.get("nacked").is_none() && mqtt.get("receive_rate").is_none());
    }
}
