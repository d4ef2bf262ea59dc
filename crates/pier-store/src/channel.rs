//! The store thread's command channel: bounded, many senders, one receiver that takes
//! everything waiting in one step.
//!
//! `std::sync::mpsc::sync_channel` hands commands over one at a time: under a flood, every
//! `recv` from a full channel wakes one blocked sender, so the store thread (the serial
//! section) pays a thread wake-up per message and the woken senders keep preempting it. Here
//! the receiver takes the whole backlog with one lock (swapping deques, no copy) and wakes the
//! blocked senders once per batch; senders wake the receiver only when it is asleep.
//!
//! ```text
//!  senders ─ lock, push, (notify if the receiver sleeps) ─► [c][c][c][c] ─► receiver: lock, swap
//!        ◄──────────── notify_all once per batch, if any sender waits for room ◄──┘
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
    receiver_waiting: bool,
    senders_waiting: usize,
    /// Set by a [`Waker`]: the receiver returns [`Received::Woken`] from its wait.
    woken: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    readable: Condvar,
    writable: Condvar,
    capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing here panics while holding the lock; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side; cloneable.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving side.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A bounded channel of `capacity` (at least 1) items.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_alive: true,
            receiver_waiting: false,
            senders_waiting: 0,
            woken: false,
        }),
        readable: Condvar::new(),
        writable: Condvar::new(),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

/// Interrupts the receiver's wait without sending anything (and without counting as a
/// sender: the channel still disconnects when the last [`Sender`] goes).
#[derive(Clone)]
pub(crate) struct Waker<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Waker<T> {
    pub(crate) fn wake(&self) {
        let mut st = self.shared.lock();
        st.woken = true;
        // The first send (or wake) after the receiver went to sleep wakes it, the ones
        // before it runs again need not: one futex wake per sleep, not one per send.
        let wake = std::mem::replace(&mut st.receiver_waiting, false);
        drop(st);
        if wake {
            self.shared.readable.notify_one();
        }
    }
}

/// Why `try_send` did not send.
pub(crate) enum TrySendError<T> {
    Full(T),
    Disconnected(T),
}

/// What a receive found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Items were moved into the caller's deque.
    Items,
    /// Nothing arrived before the deadline (or, non-blocking, nothing was there).
    Empty,
    /// Nothing arrived, but a [`Waker`] interrupted the wait.
    Woken,
    /// Nothing is left and every sender is gone.
    Disconnected,
}

impl<T> Sender<T> {
    /// Sends, blocking while the channel is full. Gives the item back if the receiver is gone.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        let mut st = self.shared.lock();
        loop {
            if !st.receiver_alive {
                return Err(item);
            }
            if st.items.len() < self.shared.capacity {
                break;
            }
            st.senders_waiting += 1;
            st = self
                .shared
                .writable
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
            st.senders_waiting -= 1;
        }
        st.items.push_back(item);
        // The first send (or wake) after the receiver went to sleep wakes it, the ones
        // before it runs again need not: one futex wake per sleep, not one per send.
        let wake = std::mem::replace(&mut st.receiver_waiting, false);
        drop(st);
        if wake {
            self.shared.readable.notify_one();
        }
        Ok(())
    }

    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let mut st = self.shared.lock();
        if !st.receiver_alive {
            return Err(TrySendError::Disconnected(item));
        }
        if st.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        st.items.push_back(item);
        // The first send (or wake) after the receiver went to sleep wakes it, the ones
        // before it runs again need not: one futex wake per sleep, not one per send.
        let wake = std::mem::replace(&mut st.receiver_waiting, false);
        drop(st);
        if wake {
            self.shared.readable.notify_one();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.senders -= 1;
        let wake = st.senders == 0 && std::mem::replace(&mut st.receiver_waiting, false);
        drop(st);
        if wake {
            self.shared.readable.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    pub(crate) fn waker(&self) -> Waker<T> {
        Waker {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Moves up to `max` waiting items to the back of `out`, waiting for one until `deadline`
    /// (None: as long as it takes).
    pub(crate) fn recv_batch(
        &self,
        out: &mut VecDeque<T>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Received {
        let mut st = self.shared.lock();
        while st.items.is_empty() {
            if st.senders == 0 {
                return Received::Disconnected;
            }
            if st.woken {
                st.woken = false;
                return Received::Woken;
            }
            st.receiver_waiting = true;
            st = match deadline {
                None => self
                    .shared
                    .readable
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        st.receiver_waiting = false;
                        return Received::Empty;
                    }
                    self.shared
                        .readable
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            st.receiver_waiting = false;
        }
        self.take(st, out, max)
    }

    /// Moves up to `max` waiting items to the back of `out` without waiting.
    pub(crate) fn try_recv_batch(&self, out: &mut VecDeque<T>, max: usize) -> Received {
        let st = self.shared.lock();
        if st.items.is_empty() {
            return if st.senders == 0 {
                Received::Disconnected
            } else {
                Received::Empty
            };
        }
        self.take(st, out, max)
    }

    fn take(
        &self,
        mut st: MutexGuard<'_, State<T>>,
        out: &mut VecDeque<T>,
        max: usize,
    ) -> Received {
        let max = max.max(1);
        if out.is_empty() && st.items.len() <= max {
            // The common case: take the whole deque (and leave ours, empty, in its place).
            std::mem::swap(&mut st.items, out);
        } else {
            let n = st.items.len().min(max);
            out.extend(st.items.drain(..n));
        }
        let wake = st.senders_waiting > 0;
        drop(st);
        if wake {
            self.shared.writable.notify_all();
        }
        Received::Items
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receiver_alive = false;
        // Items nobody will receive are dropped now (not when the last sender goes), so that
        // whatever they hold (a reply channel's sender) tells its waiter the receiver is gone.
        let left = std::mem::take(&mut st.items);
        let wake = st.senders_waiting > 0;
        drop(st);
        drop(left);
        if wake {
            self.shared.writable.notify_all();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batches_keep_order_and_respect_max() {
        let (tx, rx) = channel(10);
        for i in 0..7 {
            tx.send(i).unwrap();
        }
        let mut out = VecDeque::new();
        assert_eq!(rx.recv_batch(&mut out, 3, None), Received::Items);
        assert_eq!(out, [0, 1, 2]);
        assert_eq!(rx.try_recv_batch(&mut out, 100), Received::Items);
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6]);
        out.clear();
        assert_eq!(rx.try_recv_batch(&mut out, 100), Received::Empty);
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(rx.recv_batch(&mut out, 100, Some(soon)), Received::Empty);
    }

    #[test]
    fn full_channel_blocks_then_everyone_is_let_in() {
        let (tx, rx) = channel(2);
        tx.send(0).unwrap();
        tx.send(1).unwrap();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        let senders: Vec<_> = (2..6)
            .map(|i| {
                let tx = tx.clone();
                std::thread::spawn(move || tx.send(i).unwrap())
            })
            .collect();
        drop(tx);
        let mut got = Vec::new();
        let mut out = VecDeque::new();
        while rx.recv_batch(&mut out, 100, None) == Received::Items {
            got.extend(out.drain(..));
        }
        for s in senders {
            s.join().unwrap();
        }
        got.sort_unstable();
        assert_eq!(
            got,
            [0, 1, 2, 3, 4, 5],
            "then Disconnected once all senders left"
        );
    }

    #[test]
    fn a_gone_receiver_gives_items_back() {
        let (tx, rx) = channel(1);
        tx.send(1).unwrap();
        let blocked = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(2))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert_eq!(blocked.join().unwrap(), Err(2));
        assert_eq!(tx.send(3), Err(3));
        assert!(matches!(tx.try_send(4), Err(TrySendError::Disconnected(4))));
    }

    #[test]
    fn a_waker_interrupts_the_wait_once() {
        let (tx, rx) = channel::<u32>(4);
        let waker = rx.waker();
        let t = std::thread::spawn(move || {
            let mut out = VecDeque::new();
            let first = rx.recv_batch(&mut out, 10, None);
            let soon = Instant::now() + Duration::from_millis(20);
            (first, rx.recv_batch(&mut out, 10, Some(soon)))
        });
        std::thread::sleep(Duration::from_millis(20));
        waker.wake();
        assert_eq!(t.join().unwrap(), (Received::Woken, Received::Empty));
        drop(tx);
    }

    #[test]
    fn items_left_behind_are_dropped_with_the_receiver() {
        let (tx, rx) = channel(4);
        let (reply_tx, reply_rx) = std::sync::mpsc::channel::<()>();
        tx.send(reply_tx).unwrap();
        drop(rx);
        assert!(
            reply_rx.recv().is_err(),
            "the waiter learns nobody will answer"
        );
    }

    #[test]
    fn a_sleeping_receiver_is_woken_by_a_send_and_by_the_last_sender_leaving() {
        let (tx, rx) = channel::<u32>(4);
        let t = std::thread::spawn(move || {
            let mut out = VecDeque::new();
            let first = rx.recv_batch(&mut out, 10, None);
            let second = rx.recv_batch(&mut VecDeque::new(), 10, None);
            (first, out, second)
        });
        std::thread::sleep(Duration::from_millis(20));
        tx.send(9).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        let (first, out, second) = t.join().unwrap();
        assert_eq!((first, second), (Received::Items, Received::Disconnected));
        assert_eq!(out, [9]);
    }
}
