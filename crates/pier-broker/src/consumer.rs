//! Consumers and the seam between a queue and the channel that delivers for it.
//!
//! A queue never writes to sockets: it hands each delivery to the consumer's [`DeliverySink`]
//! (the server implements one per channel), and asks the sink whether it can take more first.
//! Credit comes from three places, all checked before a message leaves the queue:
//!
//! ```text
//!   queue ──► consumer prefetch (basic.qos global=false, counted by the queue)
//!         ──► channel prefetch  (basic.qos global=true, shared by the channel's consumers)
//!         ──► sink readiness    (outbound buffer below its bound, channel.flow active)
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use pier_wire::{FieldTable, ShortString};

use crate::message::Message;
use crate::queue::Queue;

/// Identifies a client connection across the broker (exclusive queues, exclusive consumers).
pub type ConnectionId = u64;

/// Broker-wide unique consumer identity (tags are only unique per channel).
pub type ConsumerId = u64;

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_consumer_id() -> ConsumerId {
    NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed)
}

/// A message leaving a queue for a consumer or a basic.get.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: Arc<Queue>,
    /// `None` for basic.get.
    pub consumer: Option<ConsumerId>,
    pub consumer_tag: ShortString,
    /// The message's position in its queue: requeueing puts it back there.
    pub offset: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    pub ack_required: bool,
    /// When the message entered the queue (`waits::stamp`).
    pub enqueued_at: u32,
}

/// The channel side of a consumer. Implemented by the server; the broker calls these with a
/// queue's lock held, so implementations must not block and must not call back into a queue.
pub trait DeliverySink: Send + Sync {
    /// Takes a delivery (assigns the delivery tag, records it as unacked, queues the frames).
    fn deliver(&self, delivery: Delivery);
    /// Whether another delivery may be handed over now.
    fn ready(&self) -> bool;
    /// `ready()` returned false: once it would return true again, call `Queue::dispatch`.
    fn notify_when_ready(&self, queue: Weak<Queue>);
    /// The broker cancelled this consumer (its queue was deleted).
    fn cancelled(&self, consumer_tag: &ShortString);
    /// Credit mode with drain: `credit` was given back unused.
    fn drained(&self, _consumer_tag: &ShortString, _credit: u32) {}
    /// The channel number this sink delivers on, when it is a client channel (management
    /// listings show it).
    fn channel_number(&self) -> Option<u16> {
        None
    }
}

/// A consumer as management and listings show it.
#[derive(Debug, Clone)]
pub struct ConsumerInfo {
    pub tag: ShortString,
    pub connection: ConnectionId,
    pub channel: Option<u16>,
    pub ack_required: bool,
    pub exclusive: bool,
    pub prefetch: u32,
    pub priority: i32,
    pub arguments: FieldTable,
    /// With single active consumer, only one consumer is active; otherwise all are.
    pub active: bool,
}

/// The per-channel prefetch limit (basic.qos with global=true), shared by all consumers of a
/// channel, whichever queues they consume from.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    limit: AtomicU32,
    in_flight: AtomicU32,
}

impl ChannelCredit {
    pub fn new() -> Self {
        Self::default()
    }

    /// 0 means unlimited.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes one unit of credit if the limit allows it. Always counts, even when unlimited, so
    /// that a limit set later applies to what is already outstanding.
    pub fn try_acquire(&self) -> bool {
        let limit = self.limit();
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if limit != 0 && current >= limit {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Returns credit; true when the channel was at its limit (blocked consumers may now go).
    pub fn release(&self, n: u32) -> bool {
        let limit = self.limit();
        let before = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or(0);
        limit != 0 && before >= limit
    }
}

/// What a channel asks for in basic.consume.
#[derive(Clone)]
pub struct ConsumerSpec {
    pub tag: ShortString,
    pub connection: ConnectionId,
    pub ack_required: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false in force when it was created); 0 = none.
    pub prefetch: u32,
    pub priority: i32,
    pub arguments: FieldTable,
    pub channel_credit: Arc<ChannelCredit>,
    pub sink: Arc<dyn DeliverySink>,
}

impl std::fmt::Debug for ConsumerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSpec")
            .field("tag", &self.tag)
            .field("connection", &self.connection)
            .field("ack_required", &self.ack_required)
            .field("exclusive", &self.exclusive)
            .field("prefetch", &self.prefetch)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_credit_limits_and_releases() {
        let c = ChannelCredit::new();
        assert!(c.try_acquire());
        c.set_limit(2);
        assert!(c.try_acquire());
        assert!(!c.try_acquire());
        assert!(c.release(1), "was at the limit");
        assert!(c.try_acquire());
        c.set_limit(0);
        assert!(c.try_acquire());
        assert!(!c.release(10));
        assert_eq!(c.in_flight(), 0);
    }
}
