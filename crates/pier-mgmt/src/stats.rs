//! Rates from counters: a background task samples monotonic counters (per connection, per
//! queue, node-wide) every few seconds into short sliding windows; a rate is the counter's
//! current value minus its oldest sample in the window, over the time between them. Reading a
//! rate costs a map lookup; the broker's hot path only ever bumps the counters.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pier_broker::Queue;

use crate::{views, AppState};

/// How much history a rate averages over.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<(Instant, Vec<u64>)>,
    /// Sampling round in which this series was last seen (stale series are dropped).
    seen: u64,
}

#[derive(Debug, Default)]
pub struct Sampler {
    state: Mutex<SamplerState>,
}

#[derive(Debug, Default)]
struct SamplerState {
    series: HashMap<String, Series>,
    round: u64,
}

impl Sampler {
    /// Starts a sampling round (series not recorded in it are dropped at the end).
    fn begin(&self) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.round += 1;
        st.round
    }

    fn record(&self, key: String, round: u64, now: Instant, values: Vec<u64>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = st.series.entry(key).or_default();
        s.seen = round;
        s.samples.push_back((now, values));
        while s
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            s.samples.pop_front();
        }
    }

    fn end(&self, round: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.series.retain(|_, s| s.seen == round);
    }

    /// Per-second rates of `current` against the oldest sample of `key` in the window (zeros
    /// when there is no history yet).
    pub fn rates(&self, key: &str, current: &[u64]) -> Vec<f64> {
        self.per_second(key, current, false)
    }

    /// [`Sampler::rates`] for gauges (queue lengths): a shrinking value gives a negative rate.
    pub fn gauge_rates(&self, key: &str, current: &[u64]) -> Vec<f64> {
        self.per_second(key, current, true)
    }

    fn per_second(&self, key: &str, current: &[u64], signed: bool) -> Vec<f64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let zero = vec![0.0; current.len()];
        if !st.series.contains_key(key) {
            // First look at this object: its history starts now.
            let round = st.round;
            let s = st.series.entry(key.to_owned()).or_default();
            s.seen = round;
            s.samples.push_back((Instant::now(), current.to_vec()));
            return zero;
        }
        let Some((t0, old)) = st.series.get(key).and_then(|s| s.samples.front()) else {
            return zero;
        };
        let dt = t0.elapsed().as_secs_f64();
        if dt < 0.5 || old.len() != current.len() {
            return zero;
        }
        current
            .iter()
            .zip(old)
            .map(|(c, o)| {
                if signed {
                    (*c as f64 - *o as f64) / dt
                } else {
                    c.saturating_sub(*o) as f64 / dt
                }
            })
            .collect()
    }
}

/// Counters sampled for each connection: received and sent bytes, publishes.
pub fn connection_key(name: &str) -> String {
    format!("conn\u{0}{name}")
}

pub fn connection_counters(c: &pier_server::ConnectionInfo) -> Vec<u64> {
    vec![c.recv_oct, c.send_oct, c.messages_published]
}

/// Counters sampled for each queue (see `topology::queue_counters`).
pub fn queue_key(vhost: &str, name: &str) -> String {
    format!("queue\u{0}{vhost}\u{0}{name}")
}

pub const NODE_KEY: &str = "node";

pub async fn run_sampler(state: AppState, period: Duration) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        sample(&state);
    }
}

pub fn sample(state: &AppState) {
    let s = &state.sampler;
    let round = s.begin();
    let now = Instant::now();
    for c in &state.registry.connections() {
        s.record(
            connection_key(&c.meta.name),
            round,
            now,
            connection_counters(c),
        );
    }
    for c in &state.registry.stream_connections() {
        s.record(
            connection_key(&c.meta.name),
            round,
            now,
            crate::routes::stream::connection_counters(c),
        );
    }
    for vh in state.broker.vhosts() {
        for q in vh.queues() {
            s.record(
                queue_key(vh.name(), q.name()),
                round,
                now,
                queue_counters(&q),
            );
        }
    }
    let totals = node_message_counters(state);
    s.record(NODE_KEY.to_owned(), round, now, totals);
    s.end(round);
}

// ---- the figures sampled, and what they give ----

/// Monotonic per-queue counters sampled for rates (see `stats`): arrivals, deliveries,
/// deliveries without ack, acks.
pub(crate) fn queue_counters(q: &Queue) -> Vec<u64> {
    let c = q.counters();
    let s = q.stats();
    // The last three are gauges (lengths), read with `Sampler::gauge_rates`.
    vec![
        c.published,
        c.delivered,
        c.delivered_no_ack,
        c.acked,
        s.ready + s.unacked,
        s.ready,
        s.unacked,
    ]
}

/// A queue's queueing figures, measured over the sampler's window.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Queueing {
    /// λ: messages entering the queue per second.
    pub arrival_rate: f64,
    /// μ: messages completed (acked, or delivered without ack) per second.
    pub service_rate: f64,
    pub deliver_rate: f64,
    pub ack_rate: f64,
    /// L: messages in the queue now (ready + unacknowledged).
    pub length: u64,
    /// W measured per message (enqueue to ack) over the broker's own window.
    pub measured: pier_broker::WaitSummary,
}

impl Queueing {
    /// ρ = λ/μ (None when nothing is served).
    pub fn utilisation(&self) -> Option<f64> {
        (self.service_rate > 0.0).then(|| self.arrival_rate / self.service_rate)
    }

    /// W by Little's law, L/λ, in seconds (None without arrivals).
    pub fn time_in_queue(&self) -> Option<f64> {
        (self.arrival_rate > 0.0).then(|| self.length as f64 / self.arrival_rate)
    }

    /// M/M/1 predictions (L = ρ/(1−ρ), W = L/λ), only for a stable queue (ρ < 1).
    pub fn mm1(&self) -> Option<(f64, f64)> {
        let rho = self.utilisation()?;
        if rho >= 1.0 || self.arrival_rate <= 0.0 {
            return None;
        }
        let l = rho / (1.0 - rho);
        Some((l, l / self.arrival_rate))
    }

    /// The figures as `pier_queueing` shows them (3 decimals).
    pub fn view(&self) -> views::queue::Queueing {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        let (mm1_l, mm1_w) = self
            .mm1()
            .map_or((None, None), |(l, w)| (Some(r(l)), Some(r(w))));
        let secs = |ms: Option<f64>| ms.map(|v| v.round() / 1000.0);
        let m = &self.measured;
        views::queue::Queueing {
            window_seconds: WINDOW.as_secs(),
            arrival_rate: r(self.arrival_rate),
            service_rate: r(self.service_rate),
            utilisation: self.utilisation().map(r),
            length: self.length,
            time_in_queue_seconds: self.time_in_queue().map(r),
            mm1_predicted_length: mm1_l,
            mm1_predicted_time_in_queue_seconds: mm1_w,
            measured_time_in_queue: views::queue::MeasuredTimeInQueue {
                window_seconds: pier_broker::waits::window().as_secs(),
                samples: m.samples,
                mean_seconds: secs(m.mean_ms),
                p50_seconds: secs(m.p50_ms),
                p99_seconds: secs(m.p99_ms),
            },
        }
    }
}

pub(crate) fn queueing(state: &AppState, vhost: &str, q: &Queue) -> Queueing {
    let counters = queue_counters(q);
    let rates = state
        .sampler
        .rates(&crate::stats::queue_key(vhost, q.name()), &counters);
    let rate = |i: usize| rates.get(i).copied().unwrap_or(0.0);
    let s = q.stats();
    Queueing {
        arrival_rate: rate(0),
        deliver_rate: rate(1),
        ack_rate: rate(3),
        service_rate: rate(3) + rate(2),
        length: s.ready + s.unacked,
        measured: q.time_in_queue(),
    }
}

/// Node-wide counters: publishes received, bytes in, bytes out, connection and channel churn;
/// and the queue totals.
pub(crate) fn node_message_counters(state: &AppState) -> Vec<u64> {
    let t = state.registry.totals();
    let (mut ready, mut unacked) = (0u64, 0u64);
    for vh in state.broker.vhosts() {
        for q in vh.queues() {
            let s = q.stats();
            ready += s.ready;
            unacked += s.unacked;
        }
    }
    // Counters, then churn counters, then gauges (queue totals, read with `gauge_rates`).
    vec![
        t.messages_published,
        t.recv_oct,
        t.send_oct,
        t.connections_opened,
        t.connections_closed,
        t.channels_opened,
        t.channels_closed,
        ready + unacked,
        ready,
        unacked,
    ]
}
