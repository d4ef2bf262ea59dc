//! Time in queue measured per message, from enqueue to acknowledgement (or to delivery, for
//! deliveries that need no ack), over a sliding window.
//!
//! ```text
//!  ring of SLOTS slots, SLOT_MS each ─► slot: count, sum, log-scale histogram (u32 buckets)
//!  record(now, wait): slot = now / SLOT_MS; a slot from an older round is zeroed first
//!  summary(now):      merge the slots of the last WINDOW_MS ─► mean, p50, p99
//! ```
//!
//! Buckets are log-linear: 4 per power of two (each at most ~19% wide), so a reported
//! quantile (the bucket's midpoint) is within ~10% of the true one. Waits of
//! 2^`MAX_EXP` ms (~4.7 h) or longer share the top bucket; the mean stays exact. The queue
//! records under the lock it already holds on the ack and delivery paths: no atomics, no
//! allocation per message. The ring itself (~2.3 KB) is allocated the first time a queue
//! completes a message, so idle queues cost one pointer.

use std::time::Duration;

/// Width of one slot of the ring.
pub const SLOT_MS: u64 = 10_000;
/// Slots in the ring: the window covers the current slot and the `SLOTS - 1` before it.
pub const SLOTS: usize = 6;
/// How far back a summary looks (between `WINDOW_MS - SLOT_MS` and `WINDOW_MS`).
pub const WINDOW_MS: u64 = SLOT_MS * SLOTS as u64;
/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 2;
const SUB: usize = 1 << SUB_BITS;
/// Waits at or above 2^MAX_EXP ms go to the top bucket.
const MAX_EXP: u32 = 24;
/// Number of histogram buckets.
pub const BUCKETS: usize = (MAX_EXP as usize - SUB_BITS as usize + 1) * SUB;

/// The bucket a wait (ms) falls in.
fn bucket_of(ms: u64) -> usize {
    let v = ms.min((1u64 << MAX_EXP) - 1);
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    (exp - SUB_BITS + 1) as usize * SUB + sub
}

/// The range `[low, high)` in ms a bucket covers.
fn bucket_range(idx: usize) -> (u64, u64) {
    if idx < SUB {
        return (idx as u64, idx as u64 + 1);
    }
    let exp = (idx / SUB) as u32 + SUB_BITS - 1;
    let sub = (idx % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    let low = (SUB as u64 + sub) * width;
    (low, low + width)
}

/// A histogram of waits: one slot of the ring, or several merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitHistogram {
    count: u64,
    sum_ms: u64,
    buckets: [u32; BUCKETS],
}

impl Default for WaitHistogram {
    fn default() -> Self {
        WaitHistogram {
            count: 0,
            sum_ms: 0,
            buckets: [0; BUCKETS],
        }
    }
}

impl WaitHistogram {
    fn clear(&mut self) {
        self.count = 0;
        self.sum_ms = 0;
        self.buckets = [0; BUCKETS];
    }

    fn record(&mut self, wait_ms: u64) {
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(wait_ms);
        if let Some(b) = self.buckets.get_mut(bucket_of(wait_ms)) {
            *b = b.saturating_add(1);
        }
    }

    /// Adds another histogram's samples to this one (per-vhost aggregates).
    pub fn merge(&mut self, other: &WaitHistogram) {
        self.count += other.count;
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn samples(&self) -> u64 {
        self.count
    }

    /// The wait below which a fraction `q` of the samples fall: the midpoint of the bucket
    /// holding that rank (None without samples).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        // Rank of the sample wanted, 1-based: ceil(q * n), at least 1.
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (idx, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                let (low, high) = bucket_range(idx);
                return Some(if high - low == 1 {
                    low as f64
                } else {
                    (low + high) as f64 / 2.0
                });
            }
        }
        None
    }

    /// Mean, p50 and p99 of the samples.
    pub fn summary(&self) -> WaitSummary {
        WaitSummary {
            samples: self.count,
            mean_ms: (self.count > 0).then(|| self.sum_ms as f64 / self.count as f64),
            p50_ms: self.quantile_ms(0.50),
            p99_ms: self.quantile_ms(0.99),
        }
    }
}

/// Measured time in queue over the window (all `None` without samples).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WaitSummary {
    pub samples: u64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A queue's ring of per-slot histograms.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WaitWindow {
    /// Slot number (`now / SLOT_MS`) each ring position currently holds.
    rounds: [u64; SLOTS],
    slots: [WaitHistogram; SLOTS],
}

impl WaitWindow {
    /// Records one completed message that waited `wait_ms`, at clock time `now_ms`.
    pub fn record(&mut self, now_ms: u64, wait_ms: u64) {
        let round = now_ms / SLOT_MS;
        let pos = (round % SLOTS as u64) as usize;
        let (Some(r), Some(slot)) = (self.rounds.get_mut(pos), self.slots.get_mut(pos)) else {
            return;
        };
        if *r != round {
            // A slot from an earlier lap of the ring: its samples are out of the window.
            slot.clear();
            *r = round;
        }
        slot.record(wait_ms);
    }

    /// Adds the samples of the last `WINDOW_MS` (as of `now_ms`) to `into`.
    pub fn merge_into(&self, now_ms: u64, into: &mut WaitHistogram) {
        let current = now_ms / SLOT_MS;
        for (round, slot) in self.rounds.iter().zip(self.slots.iter()) {
            if *round <= current && current - *round < SLOTS as u64 && slot.count > 0 {
                into.merge(slot);
            }
        }
    }

    /// Whether every slot has fallen out of the window (the ring can be dropped).
    pub fn is_stale(&self, now_ms: u64) -> bool {
        let current = now_ms / SLOT_MS;
        self.rounds
            .iter()
            .zip(self.slots.iter())
            .all(|(r, s)| s.count == 0 || current.saturating_sub(*r) >= SLOTS as u64)
    }
}

/// Enqueue times are kept per message as the low 32 bits of the clock's milliseconds (the
/// queue entry has room for 4 bytes, not 8); a wait is the wrapping difference, exact for
/// waits under 2^32 ms (~49.7 days).
pub fn stamp(now_ms: u64) -> u32 {
    now_ms as u32
}

/// How long a message stamped `enqueued` has waited at `now_ms`.
pub fn waited_ms(now_ms: u64, enqueued: u32) -> u64 {
    u64::from(stamp(now_ms).wrapping_sub(enqueued))
}

/// The window a summary covers.
pub fn window() -> Duration {
    Duration::from_millis(WINDOW_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        let mut expected_low = 0;
        for idx in 0..BUCKETS {
            let (low, high) = bucket_range(idx);
            assert_eq!(low, expected_low, "bucket {idx}");
            assert!(high > low);
            assert_eq!(bucket_of(low), idx);
            assert_eq!(bucket_of(high - 1), idx);
            expected_low = high;
        }
        assert_eq!(expected_low, 1 << MAX_EXP);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = WaitHistogram::default();
        for ms in 1..=1000 {
            h.record(ms);
        }
        let s = h.summary();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.mean_ms, Some(500.5));
        let p50 = s.p50_ms.unwrap_or(0.0);
        let p99 = s.p99_ms.unwrap_or(0.0);
        assert!((450.0..=550.0).contains(&p50), "p50 {p50}");
        assert!((900.0..=1100.0).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn old_slots_leave_the_window() {
        let mut w = WaitWindow::default();
        w.record(1_000, 200);
        let mut h = WaitHistogram::default();
        w.merge_into(1_000, &mut h);
        assert_eq!(h.samples(), 1);
        let mut later = WaitHistogram::default();
        w.merge_into(1_000 + WINDOW_MS, &mut later);
        assert_eq!(later.samples(), 0);
        assert!(w.is_stale(1_000 + WINDOW_MS));
        // The same ring position a lap later starts from zero.
        w.record(1_000 + WINDOW_MS, 5);
        let mut again = WaitHistogram::default();
        w.merge_into(1_000 + WINDOW_MS, &mut again);
        assert_eq!(again.samples(), 1);
        assert_eq!(again.summary().mean_ms, Some(5.0));
    }

    #[test]
    fn waits_survive_stamp_wraparound() {
        let enqueued = stamp(u64::from(u32::MAX) - 10);
        assert_eq!(waited_ms(u64::from(u32::MAX) + 90, enqueued), 100);
    }
}
