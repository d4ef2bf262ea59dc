//! Rates from counters: a background task samples monotonic counters (per connection, per
//! queue, node-wide) every few seconds into short sliding windows; a rate is the counter's
//! current value minus its oldest sample in the window, over the time between them. Reading a
//! rate costs a map lookup; the broker's hot path only ever bumps the counters.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::AppState;

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
            crate::streams::connection_counters(c),
        );
    }
    for vh in state.broker.vhosts() {
        for q in vh.queues() {
            s.record(
                queue_key(vh.name(), q.name()),
                round,
                now,
                crate::topology::queue_counters(&q),
            );
        }
    }
    let totals = crate::topology::node_message_counters(state);
    s.record(NODE_KEY.to_owned(), round, now, totals);
    s.end(round);
}
