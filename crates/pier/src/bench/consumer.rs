//! A consumer: one connection, one channel, one `basic.consume`; parses deliveries straight
//! out of the receive buffer and acks in batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use bytes::Buf;
use pier_wire::{decode_frame, Frame, Method};
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, watch};

use super::client::{Client, READ_BUFFER};
use super::message::{peek_frame, put_ack, read_stamp, Peek, Stamp};
use super::stats::{Clock, Counters, SharedHistogram};
use super::Config;

pub struct Consumer {
    pub config: Arc<Config>,
    pub index: usize,
    pub counters: Arc<Counters>,
    pub clock: Clock,
    pub nonce: u64,
    /// Where this consumer records latencies (µs) for the reporter to collect.
    pub latencies: SharedHistogram,
    pub stop: watch::Receiver<bool>,
}

/// Where the parser is within the current message.
#[derive(Default)]
struct InFlight {
    tag: u64,
    body_size: u64,
    remaining: u64,
    first_chunk: bool,
}

/// Per-read-batch results.
#[derive(Default)]
struct Batch {
    consumed: u64,
    stale: u64,
}

impl Consumer {
    /// Connects and subscribes, reports readiness on `ready`, then consumes until stopped.
    pub async fn run(mut self, ready: oneshot::Sender<()>) -> anyhow::Result<()> {
        let cfg = Arc::clone(&self.config);
        let queue = cfg.queue_names[cfg.consumer_queue(self.index)].clone();
        let name = format!("pier-bench consumer {}", self.index);
        let mut client = Client::connect(cfg.consumer_node(self.index), &name).await?;
        if cfg.prefetch > 0 {
            client.qos(cfg.prefetch).await?;
        }
        let tag = format!("pier-bench-{}", self.index);
        client.consume(&queue, &tag, cfg.autoack).await?;
        let _ = ready.send(());

        let frame_max = client.frame_max;
        let multi_ack = u64::from(cfg.multi_ack.max(1));
        let mut msg = InFlight::default();
        let mut unacked: u64 = 0;
        let mut latencies: Vec<u64> = Vec::with_capacity(4096);

        loop {
            let now_ns = self.clock.now_ns();
            let mut batch = Batch::default();
            let mut at = 0;
            loop {
                let (peek, len) = peek_frame(client.rbuf.get(at..).unwrap_or_default(), frame_max);
                let complete = match peek {
                    Peek::Incomplete => break,
                    Peek::Deliver { tag } => {
                        msg.tag = tag;
                        false
                    }
                    Peek::Header { body_size } => {
                        msg.body_size = body_size;
                        msg.remaining = body_size;
                        msg.first_chunk = true;
                        if body_size == 0 {
                            batch.stale += 1; // no room for a stamp: not ours
                            true
                        } else {
                            false
                        }
                    }
                    Peek::Body { payload } => {
                        if msg.first_chunk {
                            msg.first_chunk = false;
                            match read_stamp(payload, msg.body_size, self.nonce) {
                                Stamp::Sent(sent) => {
                                    latencies.push(now_ns.saturating_sub(sent) / 1_000);
                                    batch.consumed += 1;
                                }
                                Stamp::Foreign | Stamp::Missing => batch.stale += 1,
                            }
                        }
                        msg.remaining = msg.remaining.saturating_sub(payload.len() as u64);
                        msg.remaining == 0
                    }
                    Peek::Heartbeat => false,
                    Peek::Other => {
                        client.rbuf.advance(at);
                        at = 0;
                        if self.handle_other(&mut client).await? {
                            continue;
                        }
                        break;
                    }
                };
                at += len;
                if complete && !cfg.autoack {
                    unacked += 1;
                    if unacked >= multi_ack {
                        put_ack(&mut client.wbuf, msg.tag, multi_ack > 1);
                        unacked = 0;
                    }
                }
            }
            client.rbuf.advance(at);

            if batch.consumed > 0 || batch.stale > 0 {
                if !latencies.is_empty() {
                    if let Ok(mut h) = self.latencies.lock() {
                        for &us in &latencies {
                            h.saturating_record(us);
                        }
                    }
                    latencies.clear();
                }
                let c = &self.counters;
                c.add_consumed(self.index, batch.consumed);
                if batch.stale > 0 {
                    c.stale.fetch_add(batch.stale, Ordering::Relaxed);
                }
                c.last_consume_ns.fetch_max(now_ns, Ordering::Relaxed);
            }
            client.flush().await?;

            client.rbuf.reserve(READ_BUFFER);
            tokio::select! {
                biased;
                r = self.stop.changed() => {
                    if r.is_err() || *self.stop.borrow() {
                        break;
                    }
                }
                r = client.stream.read_buf(&mut client.rbuf) => {
                    if r? == 0 {
                        bail!("consumer {}: the broker closed the connection", self.index);
                    }
                }
            }
        }
        // Settle what the multi-ack batching held back, so a kept queue is left clean.
        if unacked > 0 {
            put_ack(&mut client.wbuf, msg.tag, true);
            client.flush().await?;
        }
        client
            .close_after_run(&format!("consumer {}", self.index))
            .await;
        Ok(())
    }

    /// A frame the hot path does not handle: decode it properly. `false` if no whole frame
    /// was there after all.
    async fn handle_other(&self, client: &mut Client) -> anyhow::Result<bool> {
        let frame = decode_frame(&mut client.rbuf, client.frame_max)
            .map_err(|e| anyhow!("consumer {}: bad frame from the broker: {e}", self.index))?;
        let Some(frame) = frame else {
            return Ok(false);
        };
        let Frame::Method { channel, method } = frame else {
            return Ok(true);
        };
        if let Some(err) = client.handle_close(channel, &method).await {
            return Err(err.context(format!("consumer {}", self.index)));
        }
        if let Method::BasicCancel(_) = method {
            bail!(
                "consumer {}: the broker cancelled the subscription (queue deleted?)",
                self.index
            );
        }
        Ok(true)
    }
}
