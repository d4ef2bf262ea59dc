//! Per-connection credit, in the spirit of RabbitMQ's `credit_flow`: a connection whose
//! persistent publishes are still on their way to the disk (handed to the message store, not
//! yet fsync'd) stops being read once that backlog passes a high-water mark, and is read
//! again when it has fallen below a low-water mark. One fast publisher thus cannot queue
//! unbounded work in front of the store thread (and unbounded memory behind it) while other
//! connections wait; TCP back-pressure slows the publisher down to the disk's pace.
//!
//! ```text
//!  publish (persistent) ─► Credit::take(size) ─► queues append ─► store thread: group commit
//!                                                                      └─ fsync ─► settle(size)
//!  reader loop, after a batch: exhausted()? ─yes─► state "flow", no reads until below low water
//! ```
//!
//! Cost: two atomic adds per persistent publish and two subtractions when it is on disk; the reader parks on a `Notify` that only the store thread's callback wakes,
//! and only while the connection is throttled. No lock, no allocation of its own (the callback
//! rides on the publish's existing `PublishDurability` token).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Body bytes of persistent messages in flight to the disk above which the connection stops
/// being read. A few MiB: enough for the store's group commit to batch many messages per
/// fsync (throughput), small against the memory watermark (a hundred such connections stay
/// well under a GiB).
pub(crate) const HIGH_WATER_BYTES: u64 = 8 * 1024 * 1024;
/// Reading resumes below this: half the high mark, so that a throttled publisher gets a
/// sizeable batch of credit back at once instead of flapping at the boundary.
pub(crate) const LOW_WATER_BYTES: u64 = HIGH_WATER_BYTES / 2;
/// The same for the number of messages (small ones cost the store per message, not per byte).
pub(crate) const HIGH_WATER_MESSAGES: u64 = 20_000;
pub(crate) const LOW_WATER_MESSAGES: u64 = HIGH_WATER_MESSAGES / 2;

/// One persistent publish's credit, given back when dropped: by the store's durability
/// callback once the message is on disk, or with the callback if the store dropped it uncalled
/// (a stopped store), so that credit can never leak.
#[derive(Debug)]
pub(crate) struct InFlight {
    credit: Arc<Credit>,
    size: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.credit.settle(self.size);
    }
}

/// One connection's persistent publishes not yet on disk.
#[derive(Debug, Default)]
pub(crate) struct Credit {
    bytes: AtomicU64,
    messages: AtomicU64,
    /// Set while the reader waits for credit: only then does a settlement wake it.
    throttled: AtomicBool,
    wake: Notify,
}

impl Credit {
    /// A persistent publish of `size` body bytes is on its way to the store; the credit is
    /// given back when the returned guard is dropped.
    #[inline]
    pub(crate) fn take(self: &Arc<Self>, size: u64) -> InFlight {
        self.bytes.fetch_add(size, Ordering::AcqRel);
        self.messages.fetch_add(1, Ordering::AcqRel);
        InFlight {
            credit: Arc::clone(self),
            size,
        }
    }

    /// That publish is on disk (or was not stored at all); called from the store thread.
    #[inline]
    fn settle(&self, size: u64) {
        let bytes = self.bytes.fetch_sub(size, Ordering::AcqRel) - size;
        let messages = self.messages.fetch_sub(1, Ordering::AcqRel) - 1;
        if bytes < LOW_WATER_BYTES
            && messages < LOW_WATER_MESSAGES
            && self.throttled.load(Ordering::SeqCst)
        {
            // notify_one keeps a permit if the reader is not parked yet: no lost wake-up.
            self.wake.notify_one();
        }
    }

    /// Whether the connection must stop reading (checked after each read batch).
    #[inline]
    pub(crate) fn exhausted(&self) -> bool {
        self.bytes.load(Ordering::Acquire) >= HIGH_WATER_BYTES
            || self.messages.load(Ordering::Acquire) >= HIGH_WATER_MESSAGES
    }

    fn replenished_now(&self) -> bool {
        self.bytes.load(Ordering::SeqCst) < LOW_WATER_BYTES
            && self.messages.load(Ordering::SeqCst) < LOW_WATER_MESSAGES
    }

    /// Waits until the backlog is below the low-water marks.
    pub(crate) async fn replenished(&self) {
        self.throttled.store(true, Ordering::SeqCst);
        while !self.replenished_now() {
            self.wake.notified().await;
        }
        self.throttled.store(false, Ordering::SeqCst);
    }

    /// Body bytes and messages in flight to the disk (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Acquire),
            self.messages.load(Ordering::Acquire),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn hysteresis() {
        let c = Arc::new(Credit::default());
        let size = 1024 * 1024;
        let mut held: Vec<InFlight> = (0..7).map(|_| c.take(size)).collect();
        assert!(!c.exhausted());
        held.push(c.take(size));
        assert!(c.exhausted(), "8 MiB in flight");
        held.truncate(4);
        // 4 MiB: below the high mark but not below the low one.
        assert!(!c.exhausted());
        assert!(!c.replenished_now());
        held.pop();
        assert!(c.replenished_now());
        assert_eq!(c.in_flight(), (3 * size, 3));
        drop(held);
        assert_eq!(c.in_flight(), (0, 0));
    }

    #[test]
    fn message_count_counts_too() {
        let c = Arc::new(Credit::default());
        let held: Vec<InFlight> = (0..HIGH_WATER_MESSAGES).map(|_| c.take(1)).collect();
        assert!(c.exhausted());
        drop(held);
        assert!(!c.exhausted());
    }

    #[tokio::test]
    async fn settlement_from_another_thread_wakes_the_reader() {
        let c = Arc::new(Credit::default());
        let held: Vec<InFlight> = (0..100).map(|_| c.take(HIGH_WATER_BYTES / 50)).collect();
        assert!(c.exhausted());
        // The store thread's callbacks, one by one.
        let settler = std::thread::spawn(move || {
            for h in held {
                std::thread::sleep(Duration::from_micros(200));
                drop(h);
            }
        });
        tokio::time::timeout(Duration::from_secs(10), c.replenished())
            .await
            .unwrap();
        assert!(c.replenished_now());
        settler.join().unwrap();
    }
}
