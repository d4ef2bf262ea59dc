//! A producer: one connection, one channel, publishing pre-encoded messages in batches.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use pier_wire::{decode_frame, Frame, Method};
use tokio::sync::watch;

use super::client::{Client, READ_BUFFER};
use super::message::PublishTemplate;
use super::stats::{Clock, Counters};
use super::Config;

/// Bytes encoded per socket write (more when one message is larger).
const BATCH_BYTES: usize = 64 * 1024;

/// Publisher-confirm bookkeeping: delivery tags are 1, 2, 3... in publish order; the broker
/// settles them with `basic.ack` / `basic.nack`, singly or `multiple` (everything up to the
/// tag), possibly out of order for single settlements.
#[derive(Debug, Default)]
pub struct ConfirmTracker {
    /// Tag of `pending[0]`.
    base: u64,
    /// `true` while the tag awaits its confirm.
    pending: VecDeque<bool>,
    outstanding: u64,
}

impl ConfirmTracker {
    pub fn new() -> ConfirmTracker {
        ConfirmTracker {
            base: 1,
            pending: VecDeque::new(),
            outstanding: 0,
        }
    }

    /// Records `n` more publishes.
    pub fn published(&mut self, n: u64) {
        for _ in 0..n {
            self.pending.push_back(true);
        }
        self.outstanding += n;
    }

    /// Published but not yet settled.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// Settles `tag` (and every earlier tag if `multiple`); returns how many were newly
    /// settled. Tags that are unknown or already settled are ignored.
    pub fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        let Some(index) = tag.checked_sub(self.base) else {
            return 0;
        };
        let Ok(index) = usize::try_from(index) else {
            return 0;
        };
        let mut settled = 0;
        if multiple {
            let end = index.saturating_add(1).min(self.pending.len());
            for slot in self.pending.range_mut(..end) {
                if *slot {
                    *slot = false;
                    settled += 1;
                }
            }
        } else if let Some(slot) = self.pending.get_mut(index) {
            if *slot {
                *slot = false;
                settled = 1;
            }
        }
        while self.pending.front() == Some(&false) {
            self.pending.pop_front();
            self.base += 1;
        }
        self.outstanding -= settled;
        settled
    }
}

pub struct Producer {
    pub config: Arc<Config>,
    pub index: usize,
    pub counters: Arc<Counters>,
    pub clock: Clock,
    pub nonce: u64,
    /// Set by the coordinator on Ctrl-C (the time limit is checked here too).
    pub stop: watch::Receiver<bool>,
    pub deadline: Option<Instant>,
}

impl Producer {
    pub async fn run(mut self) -> anyhow::Result<()> {
        let cfg = Arc::clone(&self.config);
        let name = format!("pier-bench producer {}", self.index);
        let mut client = Client::connect(cfg.producer_node(self.index), &name).await?;
        let window = cfg.confirm.map(u64::from);
        if window.is_some() {
            client.confirm_select().await?;
        }
        let template = PublishTemplate::new(
            &cfg.exchange,
            cfg.producer_routing_key(self.index),
            cfg.size,
            cfg.persistent,
            client.frame_max,
            self.nonce,
        )?;
        let per_batch = (BATCH_BYTES / template.len().max(1)).max(1) as u64;
        client.wbuf.reserve(per_batch as usize * template.len());
        let limit = cfg.pmessages.unwrap_or(u64::MAX);
        let mut confirms = ConfirmTracker::new();
        let mut sent: u64 = 0;
        let started = Instant::now();

        loop {
            if *self.stop.borrow() || sent >= limit {
                break;
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                break;
            }
            let mut n = per_batch.min(limit - sent);
            if cfg.rate > 0 {
                // Messages due by now on a steady schedule starting at `started`.
                let due = (now.duration_since(started).as_secs_f64() * cfg.rate as f64) as u64 + 1;
                let allowed = due.saturating_sub(sent);
                if allowed == 0 {
                    let next = started + Duration::from_secs_f64(sent as f64 / cfg.rate as f64);
                    let wake = self.deadline.map_or(next, |d| d.min(next));
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake.into()) => {}
                        r = self.stop.changed() => if r.is_err() { break },
                    }
                    continue;
                }
                n = n.min(allowed);
            }
            if let Some(window) = window {
                let room = window.saturating_sub(confirms.outstanding());
                if room == 0 {
                    // Window full: block until confirms arrive (or we are told to stop).
                    let wait = self.deadline.map_or(Duration::from_secs(3600), |d| {
                        d.saturating_duration_since(Instant::now())
                    });
                    tokio::select! {
                        r = read_some(&mut client) => r?,
                        r = self.stop.changed() => if r.is_err() { break } else { continue },
                        _ = tokio::time::sleep(wait) => continue,
                    }
                    self.handle_incoming(&mut client, &mut confirms).await?;
                    continue;
                }
                n = n.min(room);
            }
            let send_ns = self.clock.now_ns();
            for _ in 0..n {
                template.append(&mut client.wbuf, send_ns);
            }
            client.flush().await?;
            sent += n;
            self.counters.add_published(self.index, n);
            if window.is_some() {
                confirms.published(n);
            }
            // Pick up confirms (and any close) without waiting.
            if try_read_some(&mut client)? {
                self.handle_incoming(&mut client, &mut confirms).await?;
            }
        }
        self.counters
            .last_publish_ns
            .fetch_max(self.clock.now_ns(), Ordering::Relaxed);

        // Let outstanding confirms arrive before closing (bounded by the drain timeout).
        if window.is_some() && confirms.outstanding() > 0 {
            let wait = async {
                while confirms.outstanding() > 0 {
                    read_some(&mut client).await?;
                    self.handle_incoming(&mut client, &mut confirms).await?;
                }
                anyhow::Ok(())
            };
            match tokio::time::timeout(cfg.drain_timeout, wait).await {
                Ok(r) => r?,
                Err(_) => bail!(
                    "producer {}: {} publishes still unconfirmed {:?} after the last publish",
                    self.index,
                    confirms.outstanding(),
                    cfg.drain_timeout
                ),
            }
        }
        client
            .close_after_run(&format!("producer {}", self.index))
            .await;
        Ok(())
    }

    /// Decodes every whole frame buffered: confirms, and errors for closes.
    async fn handle_incoming(
        &self,
        client: &mut Client,
        confirms: &mut ConfirmTracker,
    ) -> anyhow::Result<()> {
        let (mut acked, mut nacked) = (0, 0);
        while let Some(frame) = decode_frame(&mut client.rbuf, client.frame_max)? {
            let Frame::Method { channel, method } = frame else {
                continue;
            };
            match method {
                Method::BasicAck(a) => acked += confirms.settle(a.delivery_tag, a.multiple),
                Method::BasicNack(n) => nacked += confirms.settle(n.delivery_tag, n.multiple),
                Method::ConnectionBlocked(b) => {
                    eprintln!(
                        "producer {}: the broker blocked publishing ({})",
                        self.index,
                        b.reason.as_str()
                    );
                }
                Method::ConnectionUnblocked(_) => {
                    eprintln!("producer {}: the broker unblocked publishing", self.index);
                }
                other => {
                    if let Some(err) = client.handle_close(channel, &other).await {
                        return Err(err.context(format!("producer {}", self.index)));
                    }
                }
            }
        }
        if acked > 0 {
            self.counters.confirmed.fetch_add(acked, Ordering::Relaxed);
        }
        if nacked > 0 {
            self.counters.nacked.fetch_add(nacked, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Waits for and reads whatever the broker sent.
async fn read_some(client: &mut Client) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    client.rbuf.reserve(READ_BUFFER);
    if client.stream.read_buf(&mut client.rbuf).await? == 0 {
        return Err(anyhow!("the broker closed the connection"));
    }
    Ok(())
}

/// Reads what is available without waiting; `true` if anything was read.
fn try_read_some(client: &mut Client) -> anyhow::Result<bool> {
    let mut any = false;
    loop {
        client.rbuf.reserve(READ_BUFFER);
        match client.stream.try_read_buf(&mut client.rbuf) {
            Ok(0) => bail!("the broker closed the connection"),
            Ok(_) => any = true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(any),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_tracking() {
        let mut t = ConfirmTracker::new();
        t.published(5);
        assert_eq!(t.outstanding(), 5);
        assert_eq!(t.settle(2, false), 1);
        assert_eq!(t.settle(2, false), 0, "already settled");
        assert_eq!(t.outstanding(), 4);
        assert_eq!(t.settle(3, true), 2, "1 and 3; 2 was done");
        assert_eq!(t.outstanding(), 2);
        assert_eq!(t.base, 4);
        assert_eq!(t.settle(99, false), 0, "unknown tag");
        assert_eq!(t.settle(1, true), 0, "below the window");
        t.published(3); // tags 6..=8
        assert_eq!(t.settle(7, false), 1);
        assert_eq!(t.settle(100, true), 4, "multiple past the end settles all");
        assert_eq!(t.outstanding(), 0);
        assert!(t.pending.is_empty());
        t.published(1);
        assert_eq!(t.base, 9);
        assert_eq!(t.settle(9, false), 1);
    }
}
