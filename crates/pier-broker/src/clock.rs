//! The broker's notion of time: milliseconds on a monotonic clock, shared by a vhost and its
//! queues. Message and queue expiry compare against it; the server advances nothing, it only
//! calls `VHost::tick` periodically. Tests move time forward with [`Clock::advance`] instead of
//! sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// "Never" for expiry times.
pub const NEVER: u64 = u64::MAX;

#[derive(Debug)]
pub struct Clock {
    base: Instant,
    /// Wall-clock milliseconds since the Unix epoch at `base`: `unix_ms` is `now_ms` plus
    /// this, so a command needs one clock read, not two (wall-clock adjustments while the
    /// broker runs are ignored, which only shifts expiry deadlines stored for restarts).
    unix_base_ms: u64,
    /// Added to the real elapsed time; only tests move it.
    offset_ms: AtomicU64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            base: Instant::now(),
            unix_base_ms: crate::persist::unix_ms(),
            offset_ms: AtomicU64::new(0),
        }
    }
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Milliseconds since this clock was created (plus any test offset).
    pub fn now_ms(&self) -> u64 {
        let real = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
        real.saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Wall-clock milliseconds since the Unix epoch at clock time `now_ms`.
    pub fn unix_ms_at(&self, now_ms: u64) -> u64 {
        self.unix_base_ms.saturating_add(now_ms)
    }

    /// Moves this clock forward (tests).
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX / 4);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Wall-clock seconds since the Unix epoch, for AMQP timestamps (`x-death` `time`).
    pub fn unix_seconds(&self) -> u64 {
        let offset = self.offset_ms.load(Ordering::Relaxed) / 1000;
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_now() {
        let c = Clock::new();
        let before = c.now_ms();
        c.advance(Duration::from_millis(1500));
        assert!(c.now_ms() >= before + 1500);
    }
}
