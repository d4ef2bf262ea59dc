//! A process-wide millisecond clock that the broker tick task advances (every 50 ms), so that
//! stamping every delivery with its time costs one relaxed atomic load, not a clock read.
//! Good enough for timeouts measured in seconds or minutes (consumer_timeout).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();
static NOW_MS: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the first `update` (coarse: as of the last tick).
pub(crate) fn now_ms() -> u64 {
    NOW_MS.load(Ordering::Relaxed)
}

/// Reads the real clock into the coarse one; returns the new value.
pub(crate) fn update() -> u64 {
    let base = BASE.get_or_init(Instant::now);
    let ms = u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX);
    NOW_MS.fetch_max(ms, Ordering::Relaxed);
    now_ms()
}
