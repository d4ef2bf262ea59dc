//! A store on a thread of its own: the way async code uses a [`MessageStore`] without ever
//! blocking a runtime worker on the disk.
//!
//! ```text
//!  publishers ─┐  bounded sync_channel   ┌──────────── store thread ────────────┐
//!  consumers  ─┼─► [cmd][cmd][cmd]... ─► │ drain up to max_batch commands       │
//!  acks       ─┘                          │ apply them (appends go to the buffer)│
//!                                         │ commit: 1 write + 1 fdatasync        │──► on_durable(seq)
//!                                         └──────────────────────────────────────┘     callbacks
//! ```
//!
//! **Group commit** falls out of the loop: while one fdatasync runs, new commands queue up in
//! the channel, and the next iteration takes all of them and covers them with a single sync.
//! The busier the store, the bigger the batches; an idle store syncs a lone publish at once.
//!
//! **Backpressure**: the channel is bounded. [`StoreHandle::send`] blocks when it is full (call
//! it from a blocking context); [`StoreHandle::try_send`] hands the command back instead, so an
//! async caller can stop reading the publisher's socket (connection.blocked) and retry later.
//!
//! **Cancellation**: a command, once sent, runs to completion even if the caller stops caring.
//! Callbacks run on the store thread and must not block: send on a channel or a oneshot and
//! return. A callback whose receiver is gone simply does nothing. Every `on_durable` callback is
//! called exactly once: `Ok(seq)` when the append is durable, `Err` if it was lost (nack it).
//!
//! **Shutdown**: [`StoreThread::shutdown`] (or dropping every handle and the `StoreThread`)
//! processes what is queued, closes the store (flush + sync), answers the remaining callbacks
//! and joins the thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

use crate::error::StoreError;
use crate::message::StoredMessage;
use crate::store::{MessageStore, QueueId, QueueRef, Result, Seq};

/// Called once with the outcome of an append: durable (`Ok`) or lost (`Err`).
pub type DurableCallback = Box<dyn FnOnce(Result<Seq>) + Send>;
/// Called with the result of a read.
pub type ReadCallback = Box<dyn FnOnce(Result<StoredMessage>) + Send>;
/// Runs arbitrary work on the store thread (queue declaration, deletion, listing, stats...).
pub type StoreTask = Box<dyn FnOnce(&mut dyn MessageStore) + Send>;

/// A request to the store thread.
pub enum Command {
    Append {
        refs: Vec<QueueRef>,
        message: StoredMessage,
        on_durable: DurableCallback,
    },
    Ack {
        queue: QueueId,
        offsets: Vec<u64>,
    },
    MarkDelivered {
        queue: QueueId,
        offset: u64,
    },
    Read {
        queue: QueueId,
        offset: u64,
        reply: ReadCallback,
    },
    /// Fires once everything sent before it is durable (or failed).
    Barrier(DurableCallback),
    Run(StoreTask),
    Shutdown,
}

/// Tunables of the store thread.
#[derive(Debug, Clone, Copy)]
pub struct ThreadConfig {
    /// Commands that can wait in the channel before senders block.
    pub channel_capacity: usize,
    /// Commands applied per commit at most (bounds confirm latency under a flood).
    pub max_batch: usize,
}

impl Default for ThreadConfig {
    fn default() -> Self {
        ThreadConfig {
            channel_capacity: 4096,
            max_batch: 4096,
        }
    }
}

/// A cloneable sender of commands to a [`StoreThread`].
#[derive(Clone)]
pub struct StoreHandle {
    tx: SyncSender<Command>,
    durable: Arc<AtomicU64>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("durable_seq", &self.durable_seq())
            .finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Sends a command, blocking while the channel is full.
    pub fn send(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).map_err(|_| StoreError::Stopped)
    }

    /// Sends without blocking. A full channel gives the command back (`Ok(Some(cmd))`).
    pub fn try_send(&self, cmd: Command) -> Result<Option<Command>> {
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(cmd)) => Ok(Some(cmd)),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Stopped),
        }
    }

    /// Appends a message; `on_durable` fires when it is on disk (or lost). Blocks while full.
    pub fn append(
        &self,
        refs: Vec<QueueRef>,
        message: StoredMessage,
        on_durable: impl FnOnce(Result<Seq>) + Send + 'static,
    ) -> Result<()> {
        self.send(Command::Append {
            refs,
            message,
            on_durable: Box::new(on_durable),
        })
    }

    pub fn ack(&self, queue: QueueId, offsets: Vec<u64>) -> Result<()> {
        self.send(Command::Ack { queue, offsets })
    }

    pub fn mark_delivered(&self, queue: QueueId, offset: u64) -> Result<()> {
        self.send(Command::MarkDelivered { queue, offset })
    }

    pub fn read(
        &self,
        queue: QueueId,
        offset: u64,
        reply: impl FnOnce(Result<StoredMessage>) + Send + 'static,
    ) -> Result<()> {
        self.send(Command::Read {
            queue,
            offset,
            reply: Box::new(reply),
        })
    }

    /// Runs `f` on the store thread and waits for its result (blocking: for startup, queue
    /// declaration and tests; async code sends `Command::Run` with a oneshot instead).
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn MessageStore) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Command::Run(Box::new(move |s| {
            let _ = tx.send(f(s));
        })))?;
        rx.recv().map_err(|_| StoreError::Stopped)
    }

    /// Blocks until everything sent before is durable; returns the durable watermark.
    pub fn wait_durable(&self) -> Result<Seq> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Command::Barrier(Box::new(move |r| {
            let _ = tx.send(r);
        })))?;
        rx.recv().map_err(|_| StoreError::Stopped)?
    }

    /// Whether both handles send to the same store thread.
    pub fn same_store(&self, other: &StoreHandle) -> bool {
        Arc::ptr_eq(&self.durable, &other.durable)
    }

    /// The durable watermark as last published by the store thread (lock-free).
    pub fn durable_seq(&self) -> Seq {
        Seq(self.durable.load(Ordering::Acquire))
    }
}

/// Owns the thread; see the module docs.
pub struct StoreThread {
    handle: StoreHandle,
    join: Option<JoinHandle<Result<()>>>,
}

impl StoreThread {
    /// Starts a thread that owns `store`.
    pub fn spawn(store: Box<dyn MessageStore>, config: ThreadConfig) -> Result<StoreThread> {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.channel_capacity.max(1));
        let durable = Arc::new(AtomicU64::new(store.durable_seq().0));
        let shared = Arc::clone(&durable);
        let max_batch = config.max_batch.max(1);
        let join = std::thread::Builder::new()
            .name("pier-store".into())
            .spawn(move || run(store, rx, shared, max_batch))
            .map_err(|e| StoreError::io("spawn thread", "pier-store", e))?;
        Ok(StoreThread {
            handle: StoreHandle { tx, durable },
            join: Some(join),
        })
    }

    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Drains the queue, closes the store and joins the thread.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let Some(join) = self.join.take() else {
            return Ok(());
        };
        let _ = self.handle.tx.send(Command::Shutdown);
        join.join().map_err(|_| StoreError::Stopped)?
    }
}

impl Drop for StoreThread {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            error!(error = %e, "message store did not close cleanly");
        }
    }
}

/// Appends applied but not yet durable, oldest first. Barriers ride along with the seq they
/// must wait for.
struct Waiters {
    pending: std::collections::VecDeque<(Seq, DurableCallback)>,
}

impl Waiters {
    /// Confirms every waiter up to `durable`; returns how many.
    fn complete_upto(&mut self, durable: Seq) -> u64 {
        let mut n = 0;
        while self.pending.front().is_some_and(|(s, _)| *s <= durable) {
            if let Some((_, cb)) = self.pending.pop_front() {
                cb(Ok(durable));
                n += 1;
            }
        }
        n
    }

    /// After an error that lost unflushed appends: fail every waiter above `flushed`.
    /// Returns how many were failed.
    fn fail_above(&mut self, flushed: Seq, err: &StoreError) -> u64 {
        let keep = self
            .pending
            .iter()
            .take_while(|(s, _)| *s <= flushed)
            .count();
        let mut n = 0;
        for (_, cb) in self.pending.drain(keep..) {
            cb(Err(clone_err(err)));
            n += 1;
        }
        n
    }

    fn fail_all(&mut self, err: &StoreError) {
        for (_, cb) in self.pending.drain(..) {
            cb(Err(clone_err(err)));
        }
    }
}

/// A run of failed writes (disk full, file too large, I/O error). Logged once when it starts,
/// with the path and errno, once a minute while it lasts, and once when it ends, with how many
/// publishes were nacked: a full disk must not turn into one error line per batch. Near the
/// limit small batches still fit while bigger ones fail, so it ends only once a commit confirms
/// appends after [`Incident::QUIET`] without a failure.
#[derive(Default)]
struct Incident {
    since: Option<Instant>,
    last_failure: Option<Instant>,
    last_report: Option<Instant>,
    nacked: u64,
    failures: u64,
}

impl Incident {
    const QUIET: Duration = Duration::from_secs(1);
    const REMIND: Duration = Duration::from_secs(60);

    fn failed(&mut self, e: &StoreError, nacked: u64) {
        let now = Instant::now();
        self.nacked += nacked;
        self.failures += 1;
        self.last_failure = Some(now);
        if self.since.is_none() {
            self.since = Some(now);
            self.last_report = Some(now);
            error!(error = %e, errno = e.raw_os_error(), nacked,
                "message store write failed: persistent publishes are nacked until writes \
                 succeed again (logged once per incident)");
        } else if self
            .last_report
            .is_some_and(|t| t.elapsed() >= Self::REMIND)
        {
            self.last_report = Some(now);
            warn!(error = %e, nacked = self.nacked, failed_commits = self.failures,
                "message store writes still failing");
        } else {
            debug!(error = %e, nacked, "message store write failed again");
        }
    }

    /// A commit succeeded and confirmed `n` appends (a commit that wrote nothing, e.g. right
    /// after the failed appends were discarded, proves nothing).
    fn confirmed(&mut self, n: u64) {
        let Some(since) = self.since else { return };
        let quiet = self.last_failure.is_none_or(|t| t.elapsed() >= Self::QUIET);
        if n > 0 && quiet {
            warn!(
                nacked = self.nacked,
                failed_commits = self.failures,
                secs = since.elapsed().as_secs(),
                "message store writes succeed again; publishes are confirmed again"
            );
            *self = Incident::default();
        }
    }
}

/// Callbacks each get their own error value; I/O errors are not Clone, so they are rebuilt
/// with the same kind and message.
fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io { op, path, source } => StoreError::Io {
            op,
            path: path.clone(),
            // Keep the errno when there is one (ENOSPC, EFBIG, EIO...).
            source: source.raw_os_error().map_or_else(
                || std::io::Error::new(source.kind(), source.to_string()),
                std::io::Error::from_raw_os_error,
            ),
        },
        StoreError::Poisoned => StoreError::Poisoned,
        _ => StoreError::Stopped,
    }
}

fn run(
    mut store: Box<dyn MessageStore>,
    rx: Receiver<Command>,
    durable: Arc<AtomicU64>,
    max_batch: usize,
) -> Result<()> {
    let mut waiters = Waiters {
        pending: std::collections::VecDeque::new(),
    };
    let mut incident = Incident::default();
    let mut shutting_down = false;
    while !shutting_down {
        let first = match store.next_deadline() {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(cmd) => Some(cmd),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            None => match rx.recv() {
                Ok(cmd) => Some(cmd),
                Err(_) => break,
            },
        };
        let mut applied = 0;
        let mut next = first;
        while let Some(cmd) = next {
            if matches!(cmd, Command::Shutdown) {
                shutting_down = true;
                break;
            }
            apply(store.as_mut(), cmd, &mut waiters, &mut incident);
            applied += 1;
            if applied >= max_batch {
                break;
            }
            next = rx.try_recv().ok();
        }
        match store.commit() {
            Ok(seq) => {
                durable.store(seq.0, Ordering::Release);
                let confirmed = waiters.complete_upto(seq);
                incident.confirmed(confirmed);
            }
            Err(e) => {
                let nacked = waiters.fail_above(store.flushed_seq(), &e);
                let d = store.durable_seq();
                waiters.complete_upto(d);
                incident.failed(&e, nacked);
            }
        }
    }
    // Whatever is still queued (sent before Shutdown or before the last handle went away).
    while let Ok(cmd) = rx.try_recv() {
        if !matches!(cmd, Command::Shutdown) {
            apply(store.as_mut(), cmd, &mut waiters, &mut incident);
        }
    }
    let closed = store.close();
    match &closed {
        Ok(()) => {
            let d = store.durable_seq();
            durable.store(d.0, Ordering::Release);
            waiters.complete_upto(d);
            waiters.fail_all(&StoreError::Stopped);
        }
        Err(e) => waiters.fail_all(e),
    }
    closed
}

fn apply(
    store: &mut dyn MessageStore,
    cmd: Command,
    waiters: &mut Waiters,
    incident: &mut Incident,
) {
    match cmd {
        Command::Append {
            refs,
            message,
            on_durable,
        } => match store.append(&refs, &message) {
            Ok(seq) => waiters.pending.push_back((seq, on_durable)),
            Err(e) => {
                if e.loses_unflushed() {
                    let nacked = waiters.fail_above(store.flushed_seq(), &e);
                    incident.failed(&e, nacked + 1);
                }
                on_durable(Err(e));
            }
        },
        Command::Ack { queue, offsets } => match store.ack(queue, &offsets) {
            Ok(_) => {}
            // Already logged once when the store failed; not once per consumer ack.
            Err(StoreError::Poisoned) => debug!(?queue, "ack not recorded: store failed"),
            Err(e) => error!(error = %e, ?queue, "ack not recorded"),
        },
        Command::MarkDelivered { queue, offset } => {
            let _ = store.mark_delivered(queue, offset);
        }
        Command::Read {
            queue,
            offset,
            reply,
        } => reply(store.read(queue, offset)),
        Command::Barrier(cb) => {
            let seq = store.last_seq();
            if seq <= store.durable_seq() {
                cb(Ok(store.durable_seq()));
            } else {
                waiters.pending.push_back((seq, cb));
            }
        }
        Command::Run(task) => task(store),
        Command::Shutdown => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use bytes::Bytes;
    use std::sync::mpsc;

    fn msg(body: &'static [u8]) -> StoredMessage {
        StoredMessage {
            body: Bytes::from_static(body),
            ..StoredMessage::default()
        }
    }

    #[test]
    fn appends_confirm_in_order_and_reads_work() {
        let t = StoreThread::spawn(Box::new(MemoryStore::new()), ThreadConfig::default()).unwrap();
        let h = t.handle();
        let q = h.call(|s| s.open_queue("q")).unwrap().unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..100u64 {
            let tx = tx.clone();
            h.append(
                vec![QueueRef {
                    queue: q,
                    offset: i,
                }],
                msg(b"m"),
                move |r| {
                    tx.send((i, r.is_ok())).unwrap();
                },
            )
            .unwrap();
        }
        let got: Vec<_> = (0..100).map(|_| rx.recv().unwrap()).collect();
        assert!(got.iter().all(|(_, ok)| *ok));
        assert_eq!(
            got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        let (rtx, rrx) = mpsc::channel();
        h.read(q, 5, move |r| rtx.send(r.map(|m| m.body)).unwrap())
            .unwrap();
        assert_eq!(rrx.recv().unwrap().unwrap(), Bytes::from_static(b"m"));
        assert!(h.wait_durable().unwrap() >= Seq(100));
        t.shutdown().unwrap();
        assert!(matches!(h.ack(q, vec![1]), Err(StoreError::Stopped)));
    }

    #[test]
    fn interval_policy_confirms_on_the_timer() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SegmentStore::open(
            dir.path(),
            crate::StoreConfig {
                sync_policy: crate::SyncPolicy::Interval(std::time::Duration::from_millis(20)),
                ..crate::StoreConfig::default()
            },
        )
        .unwrap();
        let t = StoreThread::spawn(Box::new(store), ThreadConfig::default()).unwrap();
        let h = t.handle();
        let q = h.call(|s| s.open_queue("q")).unwrap().unwrap();
        let (tx, rx) = mpsc::channel();
        h.append(
            vec![QueueRef {
                queue: q,
                offset: 0,
            }],
            msg(b"m"),
            move |r| {
                tx.send(r.map(|s| s.0)).unwrap();
            },
        )
        .unwrap();
        // Nothing else is sent: the thread must wake up on its own to sync.
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(got.unwrap(), 1);
        assert_eq!(h.durable_seq(), Seq(1));
        t.shutdown().unwrap();
    }

    #[test]
    fn failed_appends_are_answered_not_dropped() {
        let t = StoreThread::spawn(Box::new(MemoryStore::new()), ThreadConfig::default()).unwrap();
        let h = t.handle();
        let (tx, rx) = mpsc::channel();
        h.append(
            vec![QueueRef {
                queue: QueueId(9),
                offset: 0,
            }],
            msg(b"m"),
            move |r| tx.send(r.is_err()).unwrap(),
        )
        .unwrap();
        assert!(rx.recv().unwrap());
    }

    #[test]
    fn try_send_hands_the_command_back_when_full() {
        let t = StoreThread::spawn(
            Box::new(MemoryStore::new()),
            ThreadConfig {
                channel_capacity: 1,
                max_batch: 1,
            },
        )
        .unwrap();
        let h = t.handle();
        // Park the thread inside a task so the channel fills up.
        let (block_tx, block_rx) = mpsc::channel::<()>();
        let (in_tx, in_rx) = mpsc::channel::<()>();
        h.send(Command::Run(Box::new(move |_| {
            in_tx.send(()).unwrap();
            let _ = block_rx.recv();
        })))
        .unwrap();
        in_rx.recv().unwrap();
        assert!(h
            .try_send(Command::Barrier(Box::new(|_| {})))
            .unwrap()
            .is_none());
        let back = h.try_send(Command::Barrier(Box::new(|_| {}))).unwrap();
        assert!(back.is_some(), "a full channel returns the command");
        block_tx.send(()).unwrap();
        t.shutdown().unwrap();
    }
}
