//! Monotonic per-queue counters for management and metrics: one relaxed atomic add on the
//! paths that already hold the queue lock (publish, deliver, settle), read without the lock.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Messages accepted into the queue (arrivals).
    pub published: AtomicU64,
    /// Messages handed to consumers or basic.get (including redeliveries).
    pub delivered: AtomicU64,
    /// Deliveries that needed no acknowledgement (completed when delivered).
    pub delivered_no_ack: AtomicU64,
    /// Deliveries acknowledged (basic.ack, or the management API's ack modes).
    pub acked: AtomicU64,
}

/// A point-in-time copy of [`QueueCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCountersSnapshot {
    pub published: u64,
    pub delivered: u64,
    pub delivered_no_ack: u64,
    pub acked: u64,
}

/// An engine's counters as they are shown (a replicated queue's members report theirs).
impl From<crate::queue::engine::EngineCounters> for QueueCountersSnapshot {
    fn from(c: crate::queue::engine::EngineCounters) -> Self {
        QueueCountersSnapshot {
            published: c.published,
            delivered: c.delivered,
            delivered_no_ack: c.delivered_no_ack,
            acked: c.acked,
        }
    }
}

impl QueueCounters {
    /// Copies the engine's counters (called under the queue lock after each command).
    pub(crate) fn set(&self, c: crate::queue::engine::EngineCounters) {
        self.published.store(c.published, Ordering::Relaxed);
        self.delivered.store(c.delivered, Ordering::Relaxed);
        self.delivered_no_ack
            .store(c.delivered_no_ack, Ordering::Relaxed);
        self.acked.store(c.acked, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> QueueCountersSnapshot {
        QueueCountersSnapshot {
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            delivered_no_ack: self.delivered_no_ack.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
        }
    }
}
