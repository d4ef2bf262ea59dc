//! The QoS 1 publish window: packet identifiers of unacknowledged PUBLISHes.
//!
//! A publisher may have at most `capacity` PUBLISHes awaiting their PUBACK (`--inflight`,
//! further capped by a 5.0 server's Receive Maximum). Identifiers are handed out in order
//! (1, 2, ..., 65535, 1, ...), skipping any still in flight, so that a PUBACK for an
//! identifier not in flight (a broker acknowledging twice, or something never sent) is
//! caught rather than silently widening the window.

use thiserror::Error;

/// Packet identifiers are 1..=65535.
const IDS: usize = 1 << 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("PUBACK for packet identifier {0}, which is not in flight")]
    NotInFlight(u16),
}

/// Packet identifiers in flight, with a capacity.
pub struct InFlight {
    capacity: usize,
    in_use: Vec<u64>,
    len: usize,
    /// The identifier tried first by the next `acquire`.
    next: u16,
}

impl InFlight {
    /// A window of `capacity` identifiers (clamped to 1..=65535).
    pub fn new(capacity: usize) -> InFlight {
        InFlight {
            capacity: capacity.clamp(1, IDS - 1),
            in_use: vec![0; IDS / 64],
            len: 0,
            next: 1,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Identifiers in flight.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many more PUBLISHes may be sent now.
    pub fn available(&self) -> usize {
        self.capacity - self.len
    }

    fn is_set(&self, id: u16) -> bool {
        let id = usize::from(id);
        self.in_use
            .get(id / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn flip(&mut self, id: u16) {
        let id = usize::from(id);
        if let Some(w) = self.in_use.get_mut(id / 64) {
            *w ^= 1 << (id % 64);
        }
    }

    /// A free identifier, now in flight; `None` when the window is full.
    pub fn acquire(&mut self) -> Option<u16> {
        if self.len >= self.capacity {
            return None;
        }
        // At most `len` identifiers are taken, so this finds a free one within len + 1 steps.
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            if !self.is_set(id) {
                self.flip(id);
                self.len += 1;
                return Some(id);
            }
        }
    }

    /// Frees `id` on its PUBACK.
    pub fn ack(&mut self, id: u16) -> Result<(), WindowError> {
        if id == 0 || !self.is_set(id) {
            return Err(WindowError::NotInFlight(id));
        }
        self.flip(id);
        self.len -= 1;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_frees() {
        let mut w = InFlight::new(3);
        assert_eq!((w.capacity(), w.available()), (3, 3));
        assert_eq!(w.acquire(), Some(1));
        assert_eq!(w.acquire(), Some(2));
        assert_eq!(w.acquire(), Some(3));
        assert_eq!(w.acquire(), None, "full");
        assert_eq!(w.available(), 0);
        // Acknowledged out of order.
        w.ack(2).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w.acquire(), Some(4));
        assert_eq!(w.ack(2), Err(WindowError::NotInFlight(2)), "twice");
        assert_eq!(w.ack(9), Err(WindowError::NotInFlight(9)), "never sent");
        assert_eq!(w.ack(0), Err(WindowError::NotInFlight(0)));
        for id in [1, 3, 4] {
            w.ack(id).unwrap();
        }
        assert!(w.is_empty());
    }

    #[test]
    fn identifiers_wrap_and_skip_those_in_flight() {
        let mut w = InFlight::new(100);
        // Identifier 1 stays unacknowledged while the rest go round.
        assert_eq!(w.acquire(), Some(1));
        let mut last = 1;
        for _ in 0..70_000u32 {
            let id = w.acquire().unwrap();
            assert_ne!(id, 0);
            assert_ne!(id, 1, "1 is still in flight");
            w.ack(id).unwrap();
            last = id;
        }
        assert!(last > 1);
        assert_eq!(w.len(), 1);
        w.ack(1).unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn the_largest_window() {
        let mut w = InFlight::new(usize::MAX);
        assert_eq!(w.capacity(), 65_535);
        let mut seen = std::collections::HashSet::new();
        while let Some(id) = w.acquire() {
            assert!(seen.insert(id));
        }
        assert_eq!(seen.len(), 65_535);
        assert!(!seen.contains(&0));
        w.ack(40_000).unwrap();
        assert_eq!(w.acquire(), Some(40_000));
        assert_eq!(InFlight::new(0).capacity(), 1);
    }
}
