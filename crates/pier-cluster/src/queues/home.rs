//! The home side of the message path: what one connection's peer (a node with clients of
//! queues homed here) has on this node — its proxy consumers, the deliveries it has not
//! settled, the confirms it waits for.
//!
//! A proxy consumer is an ordinary consumer of the local classic queue whose sink
//! ([`ProxySink`]) sends deliveries over the lane. The queue's engine counts its prefetch as
//! for any consumer; the sink adds a window (deliveries and bytes on their way, given back by
//! the peer's credit) and stops while the lane is congested, so a slow consumer elsewhere holds
//! at most one window of messages out of the queue and never an unbounded buffer here.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pier_broker::persist::PublishDurability;
use pier_broker::queue::remote::{WINDOW_BYTES, WINDOW_MESSAGES};
use pier_broker::{
    Broker, BrokerError, ChannelCredit, ConsumerId, ConsumerSpec, Delivery, DeliverySink,
    ObjectKind, Published, Queue, Settlement, VHost,
};
use pier_wire::ShortString;
use tokio::sync::Notify;

use super::wire::{self, Figures, Got, LaneMsg, Reply};
use crate::transport::Link;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One proxy consumer.
struct Proxy {
    queue: Arc<Queue>,
    /// Its id on this node's queue.
    id: ConsumerId,
    sink: Arc<ProxySink>,
}

/// What a connection's peer has here.
pub(super) struct Served {
    link: Arc<Link>,
    broker: Arc<Broker>,
    runtime: tokio::runtime::Handle,
    /// By the peer's consumer id.
    proxies: Mutex<HashMap<u64, Proxy>>,
    /// Deliveries with acks sent to the peer and not settled yet, per queue: put back if the
    /// connection ends.
    outstanding: Mutex<HashMap<usize, Outstanding>>,
    /// Confirms waiting to go out in one frame.
    confirms: Mutex<Vec<(u64, bool)>>,
    confirms_wake: Arc<Notify>,
}

/// A queue and the offsets of its deliveries the peer has not settled.
type Outstanding = (Arc<Queue>, BTreeSet<u64>);

fn queue_key(q: &Arc<Queue>) -> usize {
    Arc::as_ptr(q) as usize
}

impl Served {
    pub(super) fn start(
        link: Arc<Link>,
        broker: Arc<Broker>,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Served> {
        let served = Arc::new(Served {
            link,
            broker,
            runtime: runtime.clone(),
            proxies: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(HashMap::new()),
            confirms: Mutex::new(Vec::new()),
            confirms_wake: Arc::new(Notify::new()),
        });
        // Confirms of stored messages come from the store thread after its fsync: this task
        // sends them (together) as they come. It ends with the connection (`end` wakes it).
        let weak = Arc::downgrade(&served);
        let wake = Arc::clone(&served.confirms_wake);
        runtime.spawn(async move {
            loop {
                let woken = wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                {
                    let Some(s) = weak.upgrade() else { return };
                    if s.link.is_closed() {
                        return;
                    }
                    s.flush_confirms();
                }
                woken.await;
            }
        });
        served
    }

    fn send(&self, msg: &LaneMsg) {
        match wire::encode(msg) {
            Ok(frame) => {
                self.link.lane_send(frame);
            }
            Err(e) => tracing::warn!(peer = %self.link.peer, "a lane frame does not encode: {e}"),
        }
    }

    fn reply(&self, req: u64, reply: Reply) {
        self.send(&LaneMsg::Reply { req, reply });
    }

    fn error(e: &BrokerError) -> Reply {
        Reply::Error {
            code: e.reply_code(),
            text: e.to_string(),
        }
    }

    /// The queue of that name homed here (a remote handle is not it: the peer's view is off).
    fn local_queue(
        &self,
        vhost: &str,
        name: &str,
    ) -> Result<(Arc<VHost>, Arc<Queue>), BrokerError> {
        let vh = self
            .broker
            .vhost(vhost)
            .ok_or_else(|| BrokerError::VhostNotFound(vhost.to_owned()))?;
        match vh.find_queue(name) {
            Some(q) if !q.is_remote() => Ok((vh, q)),
            _ => Err(BrokerError::NotFound {
                kind: ObjectKind::Queue,
                name: name.to_owned(),
                vhost: vhost.to_owned(),
            }),
        }
    }

    fn confirm(&self, seq: u64, ok: bool) {
        let first = {
            let mut c = lock(&self.confirms);
            c.push((seq, ok));
            c.len() == 1
        };
        if first {
            self.confirms_wake.notify_one();
        }
    }

    pub(super) fn flush_confirms(&self) {
        let confirms = std::mem::take(&mut *lock(&self.confirms));
        if !confirms.is_empty() {
            self.send(&LaneMsg::Confirms { confirms });
        }
    }

    fn outstanding_add(&self, q: &Arc<Queue>, offset: u64) {
        lock(&self.outstanding)
            .entry(queue_key(q))
            .or_insert_with(|| (Arc::clone(q), BTreeSet::new()))
            .1
            .insert(offset);
    }

    fn outstanding_remove(&self, q: &Arc<Queue>, offsets: &[u64]) {
        let mut out = lock(&self.outstanding);
        if let Some((_, set)) = out.get_mut(&queue_key(q)) {
            for o in offsets {
                set.remove(o);
            }
            if set.is_empty() {
                out.remove(&queue_key(q));
            }
        }
    }

    /// One message from the peer.
    pub(super) fn handle(self: &Arc<Self>, msg: LaneMsg) {
        match msg {
            LaneMsg::Publish {
                seq,
                vhost,
                queue,
                message,
            } => {
                let Ok((vh, q)) = self.local_queue(&vhost, &queue) else {
                    // Gone meanwhile: dropped as a deleted queue's messages are. A queue
                    // still there but not led here (a stream whose new leader is this node
                    // before it applied the change, or that moved on) was not written: nack.
                    if seq != 0 {
                        let exists = self
                            .broker
                            .vhost(&vhost)
                            .is_some_and(|vh| vh.find_queue(&queue).is_some());
                        self.confirm(seq, !exists);
                    }
                    return;
                };
                let durability = (seq != 0).then(|| {
                    let me = Arc::downgrade(self);
                    PublishDurability::new(move |ok| {
                        if let Some(s) = me.upgrade() {
                            s.confirm(seq, ok);
                        }
                    })
                });
                let published = vh.publish_to_queue(&q, message, durability.as_ref());
                if let Some(d) = durability {
                    if published == Published::Rejected {
                        // x-overflow reject-publish: the publisher gets a basic.nack.
                        d.hold().complete(false);
                    }
                    d.release();
                }
            }
            LaneMsg::Settle {
                vhost,
                queue,
                how,
                offsets,
            } => {
                let Ok((_, q)) = self.local_queue(&vhost, &queue) else {
                    return;
                };
                self.outstanding_remove(&q, &offsets);
                match how {
                    Settlement::Ack => q.settle(&offsets),
                    Settlement::Requeue => q.requeue(&offsets, false),
                    Settlement::Fail => q.requeue(&offsets, true),
                    Settlement::Reject => q.reject(&offsets),
                    Settlement::Release => q.release(&offsets),
                }
            }
            LaneMsg::Credit {
                consumer,
                count,
                bytes,
            } => {
                let proxy = lock(&self.proxies)
                    .get(&consumer)
                    .map(|p| (Arc::clone(&p.sink), Arc::clone(&p.queue)));
                if let Some((sink, q)) = proxy {
                    if sink.credited(count, bytes) {
                        q.dispatch();
                    }
                }
            }
            LaneMsg::Consume {
                req,
                consumer,
                vhost,
                queue,
                spec,
            } => {
                let r = self.consume(consumer, &vhost, &queue, spec);
                self.reply(
                    req,
                    match r {
                        Ok(()) => Reply::Done,
                        Err(e) => Self::error(&e),
                    },
                );
            }
            LaneMsg::Cancel { req, consumer } => {
                self.cancel(consumer);
                self.reply(req, Reply::Done);
            }
            LaneMsg::Get {
                req,
                vhost,
                queue,
                ack_required,
            } => {
                let reply = match self.local_queue(&vhost, &queue) {
                    Err(e) => Self::error(&e),
                    Ok((_, q)) => match q.get(ack_required) {
                        None => Reply::Got(None),
                        Some((d, remaining)) => {
                            if ack_required {
                                self.outstanding_add(&q, d.offset);
                            }
                            Reply::Got(Some(Got {
                                offset: d.offset,
                                redelivered: d.redelivered,
                                enqueued_at: d.enqueued_at,
                                remaining,
                                message: d.message,
                            }))
                        }
                    },
                };
                self.reply(req, reply);
            }
            LaneMsg::Purge { req, vhost, queue } => {
                let reply = match self.local_queue(&vhost, &queue) {
                    Err(e) => Self::error(&e),
                    Ok((_, q)) => Reply::Purged(q.purge()),
                };
                self.reply(req, reply);
            }
            LaneMsg::Stats {
                req,
                vhost,
                queue,
                touch,
            } => {
                let reply = match self.local_queue(&vhost, &queue) {
                    Err(e) => Self::error(&e),
                    Ok((_, q)) => {
                        if touch {
                            q.touch();
                        }
                        Reply::Figures(Figures {
                            stats: q.stats(),
                            counters: q.counters(),
                        })
                    }
                };
                self.reply(req, reply);
            }
            LaneMsg::StatsAll { req } => {
                let mut all = Vec::new();
                for vh in self.broker.vhosts() {
                    for q in vh.queues() {
                        if q.is_remote() || !q.options().durable || q.is_exclusive() {
                            continue;
                        }
                        all.push((
                            vh.name().to_owned(),
                            q.name().to_string(),
                            Figures {
                                stats: q.stats(),
                                counters: q.counters(),
                            },
                        ));
                    }
                }
                self.reply(req, Reply::AllFigures(all));
            }
            // Client-side messages never reach here (mod.rs routes them).
            LaneMsg::Deliver { .. }
            | LaneMsg::QuorumDeliver { .. }
            | LaneMsg::QuorumCancelled { .. }
            | LaneMsg::Cancelled { .. }
            | LaneMsg::Confirms { .. }
            | LaneMsg::Reply { .. } => {}
        }
    }

    fn consume(
        self: &Arc<Self>,
        consumer: u64,
        vhost: &str,
        queue: &str,
        spec: pier_broker::RemoteConsumer,
    ) -> Result<(), BrokerError> {
        let (_, q) = self.local_queue(vhost, queue)?;
        let sink = Arc::new(ProxySink {
            served: Arc::downgrade(self),
            link: Arc::clone(&self.link),
            runtime: self.runtime.clone(),
            consumer,
            in_flight: AtomicU32::new(0),
            in_flight_bytes: AtomicU64::new(0),
            waiting: Mutex::new(None),
            credit: Arc::new(ChannelCredit::new()),
        });
        let id = q.add_consumer(
            ConsumerSpec {
                tag: spec.tag,
                // Consumers of other nodes' connections (management shows them as such).
                connection: 0,
                ack_required: spec.ack_required,
                exclusive: spec.exclusive,
                prefetch: spec.prefetch,
                priority: spec.priority,
                arguments: spec.arguments,
                channel_credit: Arc::clone(&sink.credit),
                sink: Arc::clone(&sink) as Arc<dyn DeliverySink>,
            },
            || {},
        )?;
        lock(&self.proxies).insert(consumer, Proxy { queue: q, id, sink });
        Ok(())
    }

    /// Removes a proxy consumer (the last consumer of an auto-delete queue deletes it, as a
    /// local one would: the home node proposes it).
    fn cancel(&self, consumer: u64) {
        let proxy = lock(&self.proxies).remove(&consumer);
        if let Some(p) = proxy {
            let removed = p.queue.remove_consumer(p.id);
            if removed.auto_delete_now {
                if let Some(vh) = self.broker.vhost(p.queue.vhost()) {
                    vh.auto_delete_queue(&p.queue);
                }
            }
        }
    }

    /// The connection ended: the peer's consumers go, and what it had not settled comes back.
    pub(super) fn end(&self) {
        self.confirms_wake.notify_one();
        let proxies: Vec<u64> = lock(&self.proxies).keys().copied().collect();
        for c in proxies {
            self.cancel(c);
        }
        let outstanding: Vec<Outstanding> =
            lock(&self.outstanding).drain().map(|(_, v)| v).collect();
        let mut count = 0;
        for (q, offsets) in outstanding {
            let offsets: Vec<u64> = offsets.into_iter().collect();
            count += offsets.len();
            // Their consumers are gone: failed deliveries.
            q.requeue(&offsets, true);
        }
        if count > 0 {
            tracing::info!(peer = %self.link.peer, messages = count, "the connection to a node with consumers ended: their unacknowledged messages are back in their queues");
        }
    }
}

/// The sink of a proxy consumer: deliveries go over the lane to the peer.
pub(super) struct ProxySink {
    served: Weak<Served>,
    link: Arc<Link>,
    runtime: tokio::runtime::Handle,
    /// The peer's consumer id.
    consumer: u64,
    in_flight: AtomicU32,
    in_flight_bytes: AtomicU64,
    /// The queue to dispatch again once the window or the lane reopens.
    waiting: Mutex<Option<Weak<Queue>>>,
    /// The queue asks a consumer's channel for channel-wide prefetch; the peer's channel
    /// decides that, so this one is only counted and given straight back.
    credit: Arc<ChannelCredit>,
}

impl ProxySink {
    /// The peer gave credit back; true when the queue should dispatch again.
    fn credited(&self, count: u32, bytes: u64) -> bool {
        let _ = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(count))
            });
        let _ = self
            .in_flight_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(bytes))
            });
        lock(&self.waiting).take().is_some()
    }

    fn wake_later(&self, q: Weak<Queue>) {
        // Never from here: the queue's lock may be held by our caller.
        self.runtime.spawn(async move {
            if let Some(q) = q.upgrade() {
                q.dispatch();
            }
        });
    }
}

impl DeliverySink for ProxySink {
    fn deliver(&self, d: Delivery) {
        let size = d.message.body_size() as u64;
        if d.ack_required {
            if let Some(s) = self.served.upgrade() {
                s.outstanding_add(&d.queue, d.offset);
            }
            self.credit.release(1);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.in_flight_bytes.fetch_add(size, Ordering::SeqCst);
        let msg = LaneMsg::Deliver {
            consumer: self.consumer,
            offset: d.offset,
            redelivered: d.redelivered,
            ack_required: d.ack_required,
            enqueued_at: d.enqueued_at,
            message: d.message,
        };
        match wire::encode(&msg) {
            Ok(frame) => {
                // A closed link: the delivery is put back when the session ends (it is in
                // `outstanding`), or was without acks (lost with its consumer, as on a
                // closed channel).
                self.link.lane_send(frame);
            }
            Err(e) => tracing::error!(peer = %self.link.peer, "a delivery does not encode: {e}"),
        }
    }

    fn ready(&self) -> bool {
        !self.link.is_closed()
            && self.in_flight.load(Ordering::SeqCst) < WINDOW_MESSAGES
            && self.in_flight_bytes.load(Ordering::SeqCst) < WINDOW_BYTES
            && !self.link.lane_congested()
    }

    fn notify_when_ready(&self, queue: Weak<Queue>) {
        *lock(&self.waiting) = Some(queue.clone());
        if self.link.lane_congested() {
            let waiting = queue;
            let runtime = self.runtime.clone();
            self.link.when_lane_drains(Box::new(move || {
                runtime.spawn(async move {
                    if let Some(q) = waiting.upgrade() {
                        q.dispatch();
                    }
                });
            }));
        } else if self.ready() {
            // Credit came back between the check and the registration.
            if let Some(q) = lock(&self.waiting).take() {
                self.wake_later(q);
            }
        }
    }

    fn cancelled(&self, _consumer_tag: &ShortString) {
        if let Some(s) = self.served.upgrade() {
            lock(&s.proxies).remove(&self.consumer);
            s.send(&LaneMsg::Cancelled {
                consumer: self.consumer,
            });
        }
    }
}
