//! The monitor loop's plumbing that the AMQP and MQTT modes share: the tasks of producers
//! and consumers, the tick and Ctrl-C, the drain watchdog, latencies and CPU use.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use hdrhistogram::Histogram;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Interval;

use super::stats::{
    cpu_percent, cpu_ticks, drain_into, new_histogram, LatencySummary, SharedHistogram,
};
use super::{join_error, join_within};

pub type Task = JoinHandle<anyhow::Result<()>>;

/// Spawns `n` consumer tasks with `spawn(index, latencies, ready)` and waits until every one
/// has subscribed (signalled `ready`), so that nothing is published before.
pub async fn start_consumers(
    n: usize,
    role: &str,
    stop: &watch::Sender<bool>,
    latencies: &mut Latencies,
    mut spawn: impl FnMut(usize, SharedHistogram, oneshot::Sender<()>) -> Task,
) -> anyhow::Result<Vec<Option<Task>>> {
    let mut tasks = Vec::with_capacity(n);
    let mut ready = Vec::with_capacity(n);
    for index in 0..n {
        let (tx, rx) = oneshot::channel();
        ready.push(rx);
        tasks.push(spawn(index, latencies.add_consumer()?, tx));
    }
    await_subscribed(ready, &mut tasks, stop, role).await?;
    Ok(tasks.into_iter().map(Some).collect())
}

/// Waits until every consumer task has subscribed. If one could not, stops and aborts them
/// all and returns its error.
async fn await_subscribed(
    ready: Vec<oneshot::Receiver<()>>,
    tasks: &mut [Task],
    stop: &watch::Sender<bool>,
    role: &str,
) -> anyhow::Result<()> {
    for (index, rx) in ready.into_iter().enumerate() {
        if rx.await.is_err() {
            // The task ended before subscribing: report its error.
            let _ = stop.send(true);
            let err = match tasks.get_mut(index) {
                Some(handle) => match handle.await {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow!("ended early"),
                    Err(e) => anyhow!("{e}"),
                },
                None => anyhow!("missing"),
            };
            for h in tasks.iter() {
                h.abort();
            }
            return Err(err.context(format!("{role} {index} could not subscribe")));
        }
    }
    Ok(())
}

/// Collects the tasks that have finished, their errors into `errors` (with `must_run`, a
/// task that ended at all is one); returns whether there was one.
pub async fn reap(
    slots: &mut [Option<Task>],
    role: &str,
    must_run: bool,
    errors: &mut Vec<String>,
) -> bool {
    let mut failed = false;
    for (index, slot) in slots.iter_mut().enumerate() {
        if slot.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(handle) = slot.take() {
                let e =
                    join_error(handle.await).or_else(|| must_run.then(|| "ended early".to_owned()));
                if let Some(e) = e {
                    errors.push(format!("{role} {index}: {e}"));
                    failed = true;
                }
            }
        }
    }
    failed
}

/// Awaits every task still running for at most `limit` each, their errors into `errors`.
async fn join_all_within(
    slots: &mut [Option<Task>],
    role: &str,
    limit: Duration,
    errors: &mut Vec<String>,
) {
    for (index, slot) in slots.iter_mut().enumerate() {
        if let Some(handle) = slot.take() {
            if let Some(e) = join_within(handle, limit).await {
                errors.push(format!("{role} {index}: {e}"));
            }
        }
    }
}

/// A drain's progress: the count of received messages and when it last moved.
#[derive(Default)]
pub struct Progress(Option<(u64, Instant)>);

impl Progress {
    /// Whether the drain is over: `Some(true)` once `received` reaches `target`,
    /// `Some(false)` when it has not moved for `limit`, `None` while it goes on.
    pub fn drained(
        &mut self,
        received: u64,
        target: u64,
        now: Instant,
        limit: Duration,
    ) -> Option<bool> {
        if received >= target {
            return Some(true);
        }
        match self.0 {
            Some((seen, at)) if seen == received => {
                (now.duration_since(at) >= limit).then_some(false)
            }
            _ => {
                self.0 = Some((received, now));
                None
            }
        }
    }
}

/// One side of a run (producers or consumers) as it is stopped.
pub struct Side<'a> {
    pub stop: &'a watch::Sender<bool>,
    pub tasks: &'a mut [Option<Task>],
    pub role: &'a str,
    /// How long each task may take to stop.
    pub limit: Duration,
}

/// Ends a run: stops the producers, and the consumers too unless they `drain` what was
/// published (a timed run measures a window, not how long a backlog takes to go); then
/// awaits the producers, and after them the consumers. Returns when the run ended, before
/// the waiting.
pub async fn stop_all(
    producers: Side<'_>,
    consumers: Side<'_>,
    drain: bool,
    errors: &mut Vec<String>,
) -> Instant {
    let _ = producers.stop.send(true);
    if !drain {
        let _ = consumers.stop.send(true);
    }
    let end = Instant::now();
    join_all_within(producers.tasks, producers.role, producers.limit, errors).await;
    let _ = consumers.stop.send(true);
    join_all_within(consumers.tasks, consumers.role, consumers.limit, errors).await;
    end
}

/// The monitor's 50 ms tick, and Ctrl-C.
pub struct Ticker {
    tick: Interval,
    ctrl_c: Pin<Box<dyn Future<Output = std::io::Result<()>>>>,
    pub interrupted: bool,
}

impl Ticker {
    pub fn new() -> Ticker {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Ticker {
            tick,
            ctrl_c: Box::pin(tokio::signal::ctrl_c()),
            interrupted: false,
        }
    }

    /// Waits for the next tick; true when Ctrl-C came instead (the first time only).
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => false,
            _ = &mut self.ctrl_c, if !self.interrupted => {
                eprintln!("interrupted: stopping");
                self.interrupted = true;
                true
            }
        }
    }
}

/// The consumers' latencies: since the last per-second line, and over the run.
pub struct Latencies {
    consumers: Vec<SharedHistogram>,
    interval: Histogram<u64>,
    total: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> anyhow::Result<Latencies> {
        Ok(Latencies {
            consumers: Vec::new(),
            interval: new_histogram()?,
            total: new_histogram()?,
        })
    }

    /// The histogram of one more consumer.
    fn add_consumer(&mut self) -> anyhow::Result<SharedHistogram> {
        let h: SharedHistogram = std::sync::Arc::new(std::sync::Mutex::new(new_histogram()?));
        self.consumers.push(std::sync::Arc::clone(&h));
        Ok(h)
    }

    /// What the consumers recorded since the last `end_interval`.
    pub fn interval(&mut self) -> &Histogram<u64> {
        for h in &self.consumers {
            drain_into(&mut self.interval, h);
        }
        &self.interval
    }

    pub fn end_interval(&mut self) {
        let _ = self.total.add(&self.interval);
        self.interval.reset();
    }

    /// The whole run's percentiles.
    pub fn summary(mut self) -> LatencySummary {
        self.interval();
        self.end_interval();
        LatencySummary::of(&self.total)
    }
}

/// CPU use of the bench, and of the broker with --broker-pid, since `start`.
pub struct Cpu {
    bench: Option<u64>,
    broker: Option<u64>,
    broker_pid: Option<u32>,
    start: Instant,
}

impl Cpu {
    pub fn start(broker_pid: Option<u32>) -> Cpu {
        Cpu {
            bench: cpu_ticks(None),
            broker: broker_pid.and_then(|p| cpu_ticks(Some(p))),
            broker_pid,
            start: Instant::now(),
        }
    }

    /// (bench, broker) as percentages of one core.
    pub fn percent(&self) -> (Option<f64>, Option<f64>) {
        let bench = cpu_ticks(None);
        let broker = self.broker_pid.and_then(|p| cpu_ticks(Some(p)));
        let wall = self.start.elapsed().as_secs_f64();
        (
            cpu_percent(self.bench, bench, wall),
            cpu_percent(self.broker, broker, wall),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_progress() {
        let (t0, limit) = (Instant::now(), Duration::from_secs(10));
        let mut p = Progress::default();
        assert_eq!(p.drained(5, 10, t0, limit), None);
        assert_eq!(p.drained(5, 10, t0 + Duration::from_secs(9), limit), None);
        assert_eq!(p.drained(6, 10, t0 + Duration::from_secs(15), limit), None);
        assert_eq!(
            p.drained(6, 10, t0 + Duration::from_secs(25), limit),
            Some(false)
        );
        assert_eq!(
            p.drained(10, 10, t0 + Duration::from_secs(30), limit),
            Some(true)
        );
    }
}
