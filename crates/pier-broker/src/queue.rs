//! A queue: an ordered log of message references plus the consumers that drain it.
//!
//! ```text
//!  publish ─► [ requeued (by offset) | ready (FIFO) ] ─► dispatch ─► consumer sinks
//!                      ▲                                              │
//!                      └──────── nack/reject/recover/close ◄──────────┘ (unacked: held by channels)
//! ```
//!
//! Every message gets a monotonically increasing offset when it enters the queue. Messages
//! handed out but not yet acknowledged are tracked by the channel that received them, not here;
//! when they come back they are re-inserted at their original offset, so FIFO order survives
//! requeueing. The offset is also what a persistent store keys its records by.
//!
//! All state sits behind one `std::sync::Mutex`, never held across an `.await` (the broker has
//! no async code), and dispatch runs inline on whichever thread published or acked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use pier_wire::{FieldTable, ShortString};

use crate::consumer::{next_consumer_id, ConnectionId, ConsumerId, ConsumerSpec, Delivery};
use crate::error::{BrokerError, Result};
use crate::message::Message;

#[derive(Debug, Clone)]
struct Entry {
    offset: u64,
    message: Arc<Message>,
    redelivered: bool,
}

#[derive(Debug)]
struct ConsumerSlot {
    id: ConsumerId,
    spec: ConsumerSpec,
    unacked: u32,
    /// The sink said it was full and will call `dispatch` when it drains.
    waiting_for_sink: bool,
}

impl ConsumerSlot {
    fn under_prefetch(&self) -> bool {
        !self.spec.ack_required || self.spec.prefetch == 0 || self.unacked < self.spec.prefetch
    }
}

#[derive(Debug, Default)]
struct QueueState {
    next_offset: u64,
    ready: VecDeque<Entry>,
    requeued: BTreeMap<u64, Entry>,
    ready_bytes: u64,
    unacked: u64,
    consumers: Vec<ConsumerSlot>,
    round_robin: usize,
    had_consumers: bool,
    deleted: bool,
}

impl QueueState {
    fn ready_len(&self) -> usize {
        self.ready.len() + self.requeued.len()
    }

    fn pop(&mut self) -> Option<Entry> {
        let entry = match self.requeued.pop_first() {
            Some((_, e)) => Some(e),
            None => self.ready.pop_front(),
        }?;
        self.ready_bytes = self
            .ready_bytes
            .saturating_sub(entry.message.body_size() as u64);
        Some(entry)
    }
}

/// Immutable properties fixed at declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug)]
pub struct Queue {
    name: ShortString,
    vhost: String,
    options: QueueOptions,
    state: Mutex<QueueState>,
}

/// Point-in-time figures for declare-ok, management and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u32,
    pub ready_bytes: u64,
}

/// What removing a consumer left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerRemoved {
    pub existed: bool,
    /// An auto-delete queue just lost its last consumer: the vhost should delete it.
    pub auto_delete_now: bool,
}

impl Queue {
    pub fn new(name: ShortString, vhost: String, options: QueueOptions) -> Arc<Self> {
        Arc::new(Queue {
            name,
            vhost,
            options,
            state: Mutex::new(QueueState::default()),
        })
    }

    pub fn name(&self) -> &ShortString {
        &self.name
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    pub fn is_exclusive(&self) -> bool {
        self.options.exclusive_owner.is_some()
    }

    /// A poisoned lock means a panic elsewhere mid-update; the state itself is still consistent
    /// enough to serve (every mutation is a few plain field writes), so keep going.
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// 405 if another connection owns this exclusive queue.
    pub fn check_access(&self, connection: ConnectionId) -> Result<()> {
        match self.options.exclusive_owner {
            Some(owner) if owner != connection => Err(BrokerError::ResourceLocked {
                name: self.name.to_string(),
                vhost: self.vhost.clone(),
            }),
            _ => Ok(()),
        }
    }

    pub fn stats(&self) -> QueueStats {
        let st = self.lock();
        QueueStats {
            ready: st.ready_len() as u64,
            unacked: st.unacked,
            consumers: u32::try_from(st.consumers.len()).unwrap_or(u32::MAX),
            ready_bytes: st.ready_bytes,
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// Appends a message and delivers what consumers can take. False if the queue is gone.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> bool {
        let mut st = self.lock();
        if st.deleted {
            return false;
        }
        let offset = st.next_offset;
        st.next_offset += 1;
        st.ready_bytes += message.body_size() as u64;
        st.ready.push_back(Entry {
            offset,
            message,
            redelivered: false,
        });
        self.dispatch_locked(&mut st);
        true
    }

    /// Delivers as much as consumers' credit allows. Sinks call this when they drain.
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.lock();
        for c in &mut st.consumers {
            c.waiting_for_sink = false;
        }
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        if st.deleted {
            return;
        }
        while st.ready_len() > 0 {
            let Some(idx) = self.pick_consumer(st) else {
                return;
            };
            let Some(entry) = st.pop() else { return };
            let Some(slot) = st.consumers.get_mut(idx) else {
                return;
            };
            if slot.spec.ack_required {
                slot.unacked += 1;
            }
            let delivery = Delivery {
                queue: Arc::clone(self),
                consumer: Some(slot.id),
                consumer_tag: slot.spec.tag.clone(),
                offset: entry.offset,
                message: entry.message,
                redelivered: entry.redelivered,
                ack_required: slot.spec.ack_required,
            };
            let sink = Arc::clone(&slot.spec.sink);
            if delivery.ack_required {
                st.unacked += 1;
            }
            st.round_robin = idx + 1;
            sink.deliver(delivery);
        }
    }

    /// Round-robin among the highest-priority consumers that can take a message now; takes
    /// the channel credit for the one it returns.
    fn pick_consumer(self: &Arc<Self>, st: &mut QueueState) -> Option<usize> {
        let n = st.consumers.len();
        let first_priority = st.consumers.first()?.spec.priority;
        let start = st.round_robin;
        if st
            .consumers
            .iter()
            .all(|c| c.spec.priority == first_priority)
        {
            return (0..n)
                .map(|i| (start + i) % n)
                .find(|&idx| self.can_take(st, idx));
        }
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Stable: round-robin order is kept within a priority.
        order.sort_by_key(|&i| {
            std::cmp::Reverse(st.consumers.get(i).map_or(i32::MIN, |c| c.spec.priority))
        });
        order.into_iter().find(|&idx| self.can_take(st, idx))
    }

    fn can_take(self: &Arc<Self>, st: &mut QueueState, idx: usize) -> bool {
        let Some(slot) = st.consumers.get_mut(idx) else {
            return false;
        };
        if slot.waiting_for_sink || !slot.under_prefetch() {
            return false;
        }
        if !slot.spec.sink.ready() {
            slot.waiting_for_sink = true;
            slot.spec.sink.notify_when_ready(Arc::downgrade(self));
            return false;
        }
        // Whoever releases channel credit re-dispatches the channel's queues.
        !slot.spec.ack_required || slot.spec.channel_credit.try_acquire()
    }

    /// basic.get: the next message, with the count of messages left ready.
    pub fn get(self: &Arc<Self>, ack_required: bool) -> Option<(Delivery, u32)> {
        let mut st = self.lock();
        if st.deleted {
            return None;
        }
        let entry = st.pop()?;
        if ack_required {
            st.unacked += 1;
        }
        let remaining = u32::try_from(st.ready_len()).unwrap_or(u32::MAX);
        Some((
            Delivery {
                queue: Arc::clone(self),
                consumer: None,
                consumer_tag: ShortString::default(),
                offset: entry.offset,
                message: entry.message,
                redelivered: entry.redelivered,
                ack_required,
            },
            remaining,
        ))
    }

    /// Adds a consumer. Exclusive consumers need an idle queue; nobody joins an exclusive one.
    /// `on_added` runs under the queue lock once the consumer is accepted and before anything is
    /// delivered to it: the place to send basic.consume-ok so that it precedes the deliveries.
    pub fn add_consumer(
        self: &Arc<Self>,
        spec: ConsumerSpec,
        on_added: impl FnOnce(),
    ) -> Result<ConsumerId> {
        let mut st = self.lock();
        if st.deleted {
            return Err(BrokerError::not_found(
                crate::error::ObjectKind::Queue,
                &self.name,
                &self.vhost,
            ));
        }
        let taken = st.consumers.iter().any(|c| c.spec.exclusive);
        if taken || (spec.exclusive && !st.consumers.is_empty()) {
            return Err(BrokerError::ExclusiveConsumer {
                name: self.name.to_string(),
                vhost: self.vhost.clone(),
            });
        }
        let id = next_consumer_id();
        st.consumers.push(ConsumerSlot {
            id,
            spec,
            unacked: 0,
            waiting_for_sink: false,
        });
        st.had_consumers = true;
        on_added();
        self.dispatch_locked(&mut st);
        Ok(id)
    }

    pub fn remove_consumer(self: &Arc<Self>, id: ConsumerId) -> ConsumerRemoved {
        let mut st = self.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| c.id != id);
        let existed = st.consumers.len() != before;
        if st.round_robin >= st.consumers.len() {
            st.round_robin = 0;
        }
        let auto_delete_now = existed
            && self.options.auto_delete
            && st.had_consumers
            && st.consumers.is_empty()
            && !st.deleted;
        // A departing consumer may have been what held messages back from others.
        self.dispatch_locked(&mut st);
        ConsumerRemoved {
            existed,
            auto_delete_now,
        }
    }

    /// Settles `count` deliveries made to `consumer` (acked, or rejected without requeue) and
    /// delivers what the freed credit allows.
    pub fn settle(self: &Arc<Self>, consumer: Option<ConsumerId>, count: u32) {
        let mut st = self.lock();
        st.unacked = st.unacked.saturating_sub(u64::from(count));
        if let Some(id) = consumer {
            if let Some(slot) = st.consumers.iter_mut().find(|c| c.id == id) {
                slot.unacked = slot.unacked.saturating_sub(count);
            }
        }
        self.dispatch_locked(&mut st);
    }

    /// Puts delivered messages back at their original positions, marked redelivered, and
    /// settles them for their consumer. `consumer` is None for basic.get or when the consumer
    /// is already gone.
    pub fn requeue(
        self: &Arc<Self>,
        consumer: Option<ConsumerId>,
        messages: impl IntoIterator<Item = (u64, Arc<Message>)>,
    ) {
        let mut st = self.lock();
        let mut count = 0u32;
        for (offset, message) in messages {
            count += 1;
            st.unacked = st.unacked.saturating_sub(1);
            if st.deleted {
                continue;
            }
            st.ready_bytes += message.body_size() as u64;
            st.requeued.insert(
                offset,
                Entry {
                    offset,
                    message,
                    redelivered: true,
                },
            );
        }
        if let Some(id) = consumer {
            if let Some(slot) = st.consumers.iter_mut().find(|c| c.id == id) {
                slot.unacked = slot.unacked.saturating_sub(count);
            }
        }
        self.dispatch_locked(&mut st);
    }

    /// Drops every ready message (not the unacked ones); returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.lock();
        let n = st.ready_len();
        st.ready.clear();
        st.requeued.clear();
        st.ready_bytes = 0;
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Marks the queue deleted and drops its messages. Returns the ready count it had and the
    /// consumers to notify (outside the lock).
    pub(crate) fn mark_deleted(&self) -> (u32, Vec<ConsumerSpec>) {
        let mut st = self.lock();
        if st.deleted {
            return (0, Vec::new());
        }
        st.deleted = true;
        let n = u32::try_from(st.ready_len()).unwrap_or(u32::MAX);
        st.ready.clear();
        st.requeued.clear();
        st.ready_bytes = 0;
        let consumers = st.consumers.drain(..).map(|c| c.spec).collect();
        (n, consumers)
    }

    pub fn consumer_tags(&self) -> Vec<ShortString> {
        self.lock()
            .consumers
            .iter()
            .map(|c| c.spec.tag.clone())
            .collect()
    }
}
