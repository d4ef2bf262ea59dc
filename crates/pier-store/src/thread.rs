//! A store on a thread of its own: the way async code uses a [`MessageStore`] without ever
//! blocking a runtime worker on the disk.
//!
//! ```text
//!  publishers ─┐ encode + crc32c (EncodedMessage, on the caller's thread)
//!  consumers  ─┤   bounded sync_channel    ┌─────────── store thread ───────────┐
//!  acks       ─┴─► [cmd][cmd][cmd]... ───► │ drain up to max_batch commands     │
//!                                          │ apply them (appends: copy bytes)   │
//!                                          │ prepare_commit: one pwrite         │
//!                                          └───────┬──────────────────┬─────────┘
//!                     nothing else waiting: sync   │                  │ more commands waiting:
//!                     here, confirm at once        ▼                  ▼ hand the SyncJob over
//!                                               on_durable    ┌──── sync thread ────┐
//!                                                             │ fdatasync (coalesced)│──► on_durable
//!                                                             └──────────────────────┘
//! ```
//!
//! **Group commit** falls out of the loop: while one fdatasync runs, new commands queue up in
//! the channel, and the next iteration takes all of them and covers them with a single sync.
//! The busier the store, the bigger the batches; an idle store syncs a lone publish at once
//! (no timer anywhere).
//!
//! **Pipelining**: when commands are already waiting after a batch is written, its fdatasync
//! goes to a sync thread of its own (started on first use) and the store thread applies and
//! writes the next batch meanwhile; the sync thread takes every job queued when it is free and
//! syncs them together. When nothing is waiting, the store thread syncs itself (no thread
//! hand-off on the latency path of a lone publish). Jobs complete in order, and every callback
//! is answered by whoever completes its job.
//!
//! **Backpressure**: the channel is bounded. [`StoreHandle::send`] blocks when it is full (call
//! it from a blocking context); [`StoreHandle::try_send`] hands the command back instead, so an
//! async caller can stop reading the publisher's socket (connection.blocked) and retry later.
//! Jobs waiting for the sync thread are bounded too ([`ThreadConfig::sync_queue`]).
//!
//! **Cancellation**: a command, once sent, runs to completion even if the caller stops caring.
//! Callbacks run on the store or sync thread and must not block: send on a channel or a
//! oneshot and return. A callback whose receiver is gone simply does nothing. Every
//! `on_durable` callback is called exactly once: `Ok(seq)` when the append is durable, `Err`
//! if it was lost (nack it).
//!
//! **Shutdown**: [`StoreThread::shutdown`] (or dropping every handle and the `StoreThread`)
//! processes what is queued, waits for the sync thread, closes the store (flush + sync),
//! answers the remaining callbacks and joins the thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

use crate::channel::{self, Received};
use crate::commit::{self, SyncJob, SyncPlan};
use crate::error::StoreError;
use crate::message::{EncodedMessage, StoredMessage};
use crate::store::{MessageStore, QueueId, QueueRef, Result, Returns, Seq};

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
        /// Encoded by the sender ([`StoreHandle::append`] does it on the caller's thread).
        message: EncodedMessage,
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
    MarkReturned {
        queue: QueueId,
        offset: u64,
        returns: Returns,
    },
    MarkDeadLetter {
        queue: QueueId,
        offset: u64,
        reason: u8,
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
    /// Sync jobs that can wait for the sync thread before the store thread blocks.
    pub sync_queue: usize,
    /// A batch's fdatasync goes to the sync thread only when at least this many commands are
    /// waiting once it is written (0: never, the store thread always syncs itself). Below
    /// that the store thread syncs itself: handing over costs two thread wake-ups per batch,
    /// which a short backlog does not win back (its commands simply wait for the next batch,
    /// as they would wait for the sync thread), and on a machine with few cores those
    /// wake-ups take CPU from the publishers (2-core VM, scenario C: ~5.1 µs of broker CPU
    /// per message when every sync is handed over, ~4.5 µs when none is).
    pub hand_off_backlog: usize,
}

impl Default for ThreadConfig {
    fn default() -> Self {
        ThreadConfig {
            channel_capacity: 4096,
            max_batch: 4096,
            sync_queue: 16,
            hand_off_backlog: 256,
        }
    }
}

/// Process-unique store ids (an order for locking queues of several stores).
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// A cloneable sender of commands to a [`StoreThread`].
#[derive(Clone)]
pub struct StoreHandle {
    tx: channel::Sender<Command>,
    durable: Arc<AtomicU64>,
    id: u64,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("id", &self.id)
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
            Err(channel::TrySendError::Full(cmd)) => Ok(Some(cmd)),
            Err(channel::TrySendError::Disconnected(_)) => Err(StoreError::Stopped),
        }
    }

    /// Appends a message; `on_durable` fires when it is on disk (or lost). The record is
    /// encoded and checksummed here, on the caller's thread, so the store thread only copies
    /// it. Blocks while the channel is full.
    pub fn append(
        &self,
        refs: Vec<QueueRef>,
        message: StoredMessage,
        on_durable: impl FnOnce(Result<Seq>) + Send + 'static,
    ) -> Result<()> {
        let encoded = EncodedMessage::new(message, refs.len());
        self.append_encoded(refs, encoded, on_durable)
    }

    /// [`StoreHandle::append`] of a message encoded beforehand (for `refs.len()` references;
    /// for example before taking a lock).
    pub fn append_encoded(
        &self,
        refs: Vec<QueueRef>,
        message: EncodedMessage,
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

    /// See [`MessageStore::mark_returned`].
    pub fn mark_returned(&self, queue: QueueId, offset: u64, returns: Returns) -> Result<()> {
        self.send(Command::MarkReturned {
            queue,
            offset,
            returns,
        })
    }

    /// See [`MessageStore::mark_dead_letter`].
    pub fn mark_dead_letter(&self, queue: QueueId, offset: u64, reason: u8) -> Result<()> {
        self.send(Command::MarkDeadLetter {
            queue,
            offset,
            reason,
        })
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
        self.id == other.id
    }

    /// The store's process-unique id: a total order over stores (lock ordering when one
    /// publish locks queues of several stores).
    pub fn store_id(&self) -> u64 {
        self.id
    }

    /// The durable watermark as last published by the store or sync thread (lock-free).
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
    /// Starts a thread (`pier-store`) that owns `store`.
    pub fn spawn(store: Box<dyn MessageStore>, config: ThreadConfig) -> Result<StoreThread> {
        Self::spawn_named(store, config, "pier-store".to_owned())
    }

    /// Starts a thread named `name` (its sync thread, if it needs one, is `name` + `-sync`).
    pub fn spawn_named(
        store: Box<dyn MessageStore>,
        config: ThreadConfig,
        name: String,
    ) -> Result<StoreThread> {
        let (tx, rx) = channel::channel(config.channel_capacity.max(1));
        let durable = Arc::new(AtomicU64::new(store.durable_seq().0));
        let shared = Arc::clone(&durable);
        let thread_name = name.clone();
        let join = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                Loop {
                    store,
                    rx,
                    durable: shared,
                    config,
                    name,
                    local: Waiters::default(),
                    incident: Incident::default(),
                    syncer: None,
                    batch: VecDeque::new(),
                }
                .run()
            })
            .map_err(|e| StoreError::io("spawn thread", "pier-store", e))?;
        Ok(StoreThread {
            handle: StoreHandle {
                tx,
                durable,
                id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            },
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
#[derive(Default)]
struct Waiters {
    pending: VecDeque<(Seq, DurableCallback)>,
}

impl Waiters {
    fn push(&mut self, seq: Seq, cb: DurableCallback) {
        self.pending.push_back((seq, cb));
    }

    /// Takes the waiters up to `durable` (to be confirmed once their sync is done).
    fn take_upto(&mut self, durable: Seq) -> Vec<(Seq, DurableCallback)> {
        let n = self
            .pending
            .iter()
            .take_while(|(s, _)| *s <= durable)
            .count();
        self.pending.drain(..n).collect()
    }

    /// After an error that lost unflushed appends: fail every waiter above `flushed`.
    /// Returns how many were failed.
    fn fail_above(&mut self, flushed: Seq, err: &StoreError) -> u64 {
        let keep = self
            .pending
            .iter()
            .take_while(|(s, _)| *s <= flushed)
            .count();
        fail(self.pending.drain(keep..), err)
    }

    fn fail_all(&mut self, err: &StoreError) {
        fail(self.pending.drain(..), err);
    }
}

fn confirm(waiters: impl IntoIterator<Item = (Seq, DurableCallback)>, durable: Seq) -> u64 {
    let mut n = 0;
    for (_, cb) in waiters {
        call(cb, Ok(durable));
        n += 1;
    }
    n
}

fn fail(waiters: impl IntoIterator<Item = (Seq, DurableCallback)>, err: &StoreError) -> u64 {
    let mut n = 0;
    for (_, cb) in waiters {
        call(cb, Err(clone_err(err)));
        n += 1;
    }
    n
}

/// Calls a callback; one that panics (a bug) is logged and does not take the store or sync
/// thread down with it (every other waiter still gets its answer).
fn call(cb: DurableCallback, r: Result<Seq>) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || cb(r))).is_err() {
        error!("a durable callback panicked");
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
pub(crate) fn clone_err(e: &StoreError) -> StoreError {
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

// ---- the sync thread ----

/// A batch handed to the sync thread: its job (None: nothing to sync, the batch only waits
/// for the jobs before it) and the callbacks it completes.
struct SyncRequest {
    job: Option<SyncJob>,
    durable: Seq,
    waiters: Vec<(Seq, DurableCallback)>,
}

/// What the sync thread reports back, in order: the store learns its new watermark (or that
/// it must refuse writes from now on).
struct SyncDone {
    job: Option<SyncJob>,
    result: Result<()>,
    confirmed: u64,
    failed: u64,
}

/// The store thread's side of its sync thread.
struct Syncer {
    tx: Option<SyncSender<SyncRequest>>,
    done: Receiver<SyncDone>,
    join: Option<JoinHandle<()>>,
    /// Requests sent and not yet reported back.
    in_flight: usize,
}

impl Syncer {
    fn spawn(
        name: &str,
        durable: Arc<AtomicU64>,
        capacity: usize,
        waker: channel::Waker<Command>,
    ) -> Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        let (done_tx, done) = std::sync::mpsc::channel();
        let join = std::thread::Builder::new()
            .name(format!("{name}-sync"))
            .spawn(move || sync_loop(&rx, &done_tx, &durable, &waker))
            .map_err(|e| StoreError::io("spawn thread", "pier-store-sync", e))?;
        Ok(Syncer {
            tx: Some(tx),
            done,
            join: Some(join),
            in_flight: 0,
        })
    }
}

/// The sync thread: takes every request waiting, runs their jobs as one (each file synced
/// once), then answers their callbacks in order and wakes the store thread (which holds its
/// next batch back while a sync is in flight). After one failed fdatasync every later
/// request fails too (fsyncgate: nothing written after it can be trusted to be durable).
fn sync_loop(
    rx: &Receiver<SyncRequest>,
    done: &Sender<SyncDone>,
    durable: &AtomicU64,
    waker: &channel::Waker<Command>,
) {
    const MAX_COALESCED: usize = 64;
    let mut failed: Option<StoreError> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_COALESCED {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut jobs: Vec<SyncJob> = Vec::new();
        let mut slots = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for r in batch {
            slots.push(r.job.is_some());
            if let Some(mut j) = r.job {
                j.counted = jobs.is_empty();
                jobs.push(j);
            }
            requests.push((r.durable, r.waiters));
        }
        let result = match &failed {
            Some(e) => Err(clone_err(e)),
            None => commit::run_all(&jobs),
        };
        if let Err(e) = &result {
            failed.get_or_insert_with(|| clone_err(e));
        }
        let mut jobs = jobs.into_iter();
        for ((upto, waiters), has_job) in requests.into_iter().zip(slots) {
            let (confirmed, nacked) = match &result {
                Ok(()) => {
                    let d = durable.fetch_max(upto.0, Ordering::AcqRel).max(upto.0);
                    (confirm(waiters, Seq(d)), 0)
                }
                Err(e) => (0, fail(waiters, e)),
            };
            let report = SyncDone {
                job: if has_job { jobs.next() } else { None },
                result: result.as_ref().map(|_| ()).map_err(clone_err),
                confirmed,
                failed: nacked,
            };
            if done.send(report).is_err() {
                return;
            }
        }
        waker.wake();
    }
}

// ---- the store thread ----

struct Loop {
    store: Box<dyn MessageStore>,
    rx: channel::Receiver<Command>,
    durable: Arc<AtomicU64>,
    config: ThreadConfig,
    name: String,
    /// Applied, not yet handed to a sync (or confirmed).
    local: Waiters,
    incident: Incident,
    /// Started on the first hand-off.
    syncer: Option<Syncer>,
    /// Commands taken from the channel and not applied yet.
    batch: VecDeque<Command>,
}

impl Loop {
    fn run(mut self) -> Result<()> {
        let mut shutting_down = false;
        while !shutting_down {
            self.reap(false);
            if self.batch.is_empty() {
                let deadline = self.store.next_deadline();
                let max = self.config.max_batch;
                if self.rx.recv_batch(&mut self.batch, max, deadline) == Received::Disconnected {
                    break;
                }
                // Reports that came in while waiting (a failed sync must be known before
                // applying: the store refuses writes from then on).
                self.reap(false);
            }
            let mut applied = 0;
            while applied < self.config.max_batch {
                let Some(cmd) = self.batch.pop_front() else {
                    break;
                };
                if matches!(cmd, Command::Shutdown) {
                    shutting_down = true;
                    break;
                }
                self.apply(cmd);
                applied += 1;
            }
            self.commit(!shutting_down);
        }
        // Whatever is still queued (sent before Shutdown or before the last handle went away).
        loop {
            while let Some(cmd) = self.batch.pop_front() {
                if !matches!(cmd, Command::Shutdown) {
                    self.apply(cmd);
                }
            }
            if self.rx.try_recv_batch(&mut self.batch, usize::MAX) != Received::Items {
                break;
            }
        }
        self.reap(true);
        let closed = self.store.close();
        match &closed {
            Ok(()) => {
                let d = self.store.durable_seq();
                self.durable.fetch_max(d.0, Ordering::AcqRel);
                confirm(self.local.take_upto(d), d);
                self.local.fail_all(&StoreError::Stopped);
            }
            Err(e) => self.local.fail_all(e),
        }
        closed
    }

    /// Takes the sync thread's reports (all of them, waiting for the thread to finish, when
    /// `finish`): the store's watermark moves, a failed sync poisons it.
    fn reap(&mut self, finish: bool) {
        let Some(syncer) = self.syncer.as_mut() else {
            return;
        };
        if finish {
            // Closing the channel ends the thread once it has done what was queued.
            syncer.tx = None;
            if let Some(join) = syncer.join.take() {
                let _ = join.join();
            }
        }
        let mut sync_failed = false;
        loop {
            let report = match syncer.done.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            };
            syncer.in_flight = syncer.in_flight.saturating_sub(1);
            if let Some(job) = &report.job {
                self.store.synced(job, &report.result);
            }
            match &report.result {
                Ok(()) => self.incident.confirmed(report.confirmed),
                Err(e) => {
                    sync_failed = true;
                    self.incident.failed(e, report.failed);
                }
            }
        }
        if sync_failed {
            // The store lowered its flushed watermark to the durable one: whatever it holds
            // above that can never be confirmed.
            let flushed = self.store.flushed_seq();
            let e = StoreError::Poisoned;
            let n = self.local.fail_above(flushed, &e);
            if n > 0 {
                self.incident.failed(&e, n);
            }
        }
    }

    /// Applies the sync policy to what was applied: write it out, then sync here (nothing
    /// else waiting) or hand the sync over (`may_hand_off`: commands are waiting).
    ///
    /// While a sync is in flight nothing is written: commands are applied (readable at once,
    /// the write buffer goes out early when full) and wait, so that the batch the next sync
    /// covers is everything that arrived meanwhile, as when the store thread synced itself.
    /// The sync thread wakes this thread when it is done. (Writing and handing over a small
    /// batch per loop turn instead costs a write and a job per turn: CPU that a publisher
    /// needs on a small machine.)
    fn commit(&mut self, may_hand_off: bool) {
        if may_hand_off && self.syncer.as_ref().is_some_and(|s| s.in_flight > 0) {
            return;
        }
        let plan = match self.store.prepare_commit() {
            Ok(plan) => plan,
            Err(e) => {
                let nacked = self.local.fail_above(self.store.flushed_seq(), &e);
                self.incident.failed(&e, nacked);
                if self.local.pending.is_empty() {
                    return;
                }
                // Appends written out before the failure (a full write buffer is written
                // early) still need their sync.
                match self.store.prepare_commit() {
                    Ok(plan) => plan,
                    Err(e) => {
                        let nacked = self.local.fail_above(self.store.flushed_seq(), &e);
                        self.incident.failed(&e, nacked);
                        return;
                    }
                }
            }
        };
        let SyncPlan { durable, job } = plan;
        let waiters = self.local.take_upto(durable);
        let busy = self.syncer.as_ref().is_some_and(|s| s.in_flight > 0);
        if job.is_none() && waiters.is_empty() {
            return;
        }
        if !busy {
            let hand_off = may_hand_off && job.is_some() && self.work_waiting();
            if !hand_off {
                self.sync_here(job, durable, waiters);
                return;
            }
        }
        self.hand_off(SyncRequest {
            job,
            durable,
            waiters,
        });
    }

    /// Whether at least `hand_off_backlog` commands are waiting (taking them out of the
    /// channel to find out).
    fn work_waiting(&mut self) -> bool {
        let want = self.config.hand_off_backlog;
        if want == 0 {
            return false;
        }
        if self.batch.len() < want {
            let room = self.config.max_batch.saturating_sub(self.batch.len());
            let _ = self.rx.try_recv_batch(&mut self.batch, room);
        }
        self.batch.len() >= want
    }

    /// Runs a job on this thread (nothing in flight, so completing now keeps the order).
    fn sync_here(
        &mut self,
        job: Option<SyncJob>,
        durable: Seq,
        waiters: Vec<(Seq, DurableCallback)>,
    ) {
        let result = job.as_ref().map_or(Ok(()), SyncJob::run);
        if let Some(job) = &job {
            self.store.synced(job, &result);
        }
        match result {
            Ok(()) => {
                self.durable.fetch_max(durable.0, Ordering::AcqRel);
                let n = confirm(waiters, durable);
                self.incident.confirmed(n);
            }
            Err(e) => {
                let n = fail(waiters, &e) + self.local.fail_above(self.store.flushed_seq(), &e);
                self.incident.failed(&e, n);
            }
        }
    }

    fn hand_off(&mut self, request: SyncRequest) {
        if self.syncer.is_none() {
            match Syncer::spawn(
                &self.name,
                Arc::clone(&self.durable),
                self.config.sync_queue,
                self.rx.waker(),
            ) {
                Ok(s) => self.syncer = Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot start the store's sync thread; syncing inline");
                    // Nothing is in flight without a sync thread: syncing here keeps the order.
                    self.sync_here(request.job, request.durable, request.waiters);
                    return;
                }
            }
        }
        let Some(syncer) = self.syncer.as_mut() else {
            return;
        };
        let sent = match &syncer.tx {
            Some(tx) => tx.send(request).map_err(|e| e.0),
            None => Err(request),
        };
        match sent {
            Ok(()) => syncer.in_flight += 1,
            Err(request) => {
                // The sync thread is gone (it only stops when told to, or if a callback
                // panicked): what it was given is lost, so nothing here can be confirmed.
                error!("the store's sync thread is gone; failing the batch");
                let e = StoreError::Stopped;
                fail(request.waiters, &e);
                if let Some(job) = &request.job {
                    self.store.synced(job, &Err(StoreError::Stopped));
                }
                self.local.fail_all(&e);
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        let store = self.store.as_mut();
        match cmd {
            Command::Append {
                refs,
                message,
                on_durable,
            } => match store.append_encoded(&refs, &message) {
                Ok(seq) => self.local.push(seq, on_durable),
                Err(e) => {
                    if e.loses_unflushed() {
                        let nacked = self.local.fail_above(store.flushed_seq(), &e);
                        self.incident.failed(&e, nacked + 1);
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
            Command::MarkReturned {
                queue,
                offset,
                returns,
            } => {
                let _ = store.mark_returned(queue, offset, returns);
            }
            Command::MarkDeadLetter {
                queue,
                offset,
                reason,
            } => {
                let _ = store.mark_dead_letter(queue, offset, reason);
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
                    self.local.push(seq, cb);
                }
            }
            Command::Run(task) => task(store),
            Command::Shutdown => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
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

    /// Batches of one command with a backlog behind each: every fdatasync is handed to the
    /// sync thread while the store thread writes the next batch. Every append is confirmed,
    /// in order, only once durable, and syncs are shared.
    #[test]
    fn pipelined_syncs_confirm_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SegmentStore::open(dir.path(), crate::StoreConfig::default()).unwrap();
        let t = StoreThread::spawn(
            Box::new(store),
            ThreadConfig {
                max_batch: 1,
                hand_off_backlog: 1,
                ..ThreadConfig::default()
            },
        )
        .unwrap();
        let h = t.handle();
        let q = h.call(|s| s.open_queue("q")).unwrap().unwrap();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        h.send(Command::Run(Box::new(move |_| {
            let _ = go_rx.recv();
        })))
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let n = 300u64;
        for i in 0..n {
            let (tx, h2) = (tx.clone(), h.clone());
            h.append(
                vec![QueueRef {
                    queue: q,
                    offset: i,
                }],
                msg(b"m"),
                move |r| {
                    let seq = r.unwrap();
                    // Confirmed means the published watermark covers it.
                    assert!(h2.durable_seq() >= seq);
                    tx.send(i).unwrap();
                },
            )
            .unwrap();
        }
        go_tx.send(()).unwrap();
        let got: Vec<u64> = (0..n)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "confirmed in order");
        let stats = h.call(|s| s.stats()).unwrap();
        assert_eq!(stats.durable_seq, Seq(n));
        assert!(stats.syncs < n, "syncs shared: {}", stats.syncs);
        t.shutdown().unwrap();
        // And it is all there.
        let s = crate::SegmentStore::open(dir.path(), crate::StoreConfig::default()).unwrap();
        assert_eq!(s.stats().live_messages, n);
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_store() {
        let t = StoreThread::spawn(Box::new(MemoryStore::new()), ThreadConfig::default()).unwrap();
        let h = t.handle();
        let q = h.call(|s| s.open_queue("q")).unwrap().unwrap();
        let one = |offset| QueueRef { queue: q, offset };
        h.append(vec![one(0)], msg(b"m"), |_| panic!("a bug in a callback"))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        h.append(vec![one(1)], msg(b"m"), move |r| {
            tx.send(r.is_ok()).unwrap()
        })
        .unwrap();
        assert!(rx.recv().unwrap());
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
                hand_off_backlog: 1,
                ..ThreadConfig::default()
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
