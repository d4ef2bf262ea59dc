//! A stream's big chunks written and fsync'd on a thread of their own.
//!
//! Why: at 1 KiB messages a fsync'ing stream spent about two thirds of each cycle waiting
//! for the direct write of its 4 MiB chunk and a quarter building the next chunk (copy and
//! CRC) while the device sat idle. With the write and the fsync here, the writer builds
//! batch k+1 while batch k is on its way to the disk; batch k's confirms still wait for its
//! fdatasync (they run after it, on this thread). Only chunks of at least 1 MiB come here
//! (`PIPELINE_MIN` in `log.rs`): for small messages the handoffs cost more CPU than the
//! overlap saves.
//!
//! Jobs run one after the other, so a write that rewrites the segment's last partial block
//! never races the write before it, and a batch's callbacks never wait for a later batch's
//! write. The first failure sticks: every later write is skipped and every later callback
//! is told. The writer waits for this thread to finish what it was given
//! ([`Flusher::drain`]) before anything else touches the files (a general or buffered
//! write, a roll, retention, a trim, closing).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::StreamError;

/// Runs after a sync (or after the jobs before it, for [`Flusher::then`]).
pub(crate) type AfterSync = Box<dyn FnOnce(Result<(), Arc<StreamError>>) + Send>;

enum Job {
    Write {
        file: Arc<File>,
        bytes: Bytes,
        at: u64,
        path: PathBuf,
    },
    Sync {
        files: [(Arc<File>, PathBuf); 2],
        then: AfterSync,
    },
    Then(AfterSync),
}

impl Job {
    /// Answers a job that will not run.
    fn refuse(self, e: Arc<StreamError>) {
        match self {
            Job::Write { .. } => {}
            Job::Sync { then, .. } | Job::Then(then) => then(Err(e)),
        }
    }
}

#[derive(Default)]
struct State {
    /// Jobs given and not finished.
    queued: u64,
    failed: Option<Arc<StreamError>>,
}

/// How many jobs may wait: a batch is one or two writes and a sync, so the writer can be
/// one batch ahead of the device and no more (bounded memory, backpressure to publishers).
const DEPTH: usize = 4;

pub(crate) struct Flusher {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Flusher {
    pub(crate) fn start(name: String) -> Result<Flusher, StreamError> {
        let (tx, rx) = sync_channel::<Job>(DEPTH);
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                // One job at a time: a batch's confirms never wait for a later batch's
                // write (merging queued syncs was measured slower).
                for job in rx {
                    // Its own statement: the lock is not held while the job runs.
                    let before = lock(&st).failed.clone();
                    let failed = run(job, before);
                    let (m, cv) = &*st;
                    let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(e) = failed {
                        s.failed.get_or_insert(e);
                    }
                    s.queued -= 1;
                    if s.queued == 0 {
                        cv.notify_all();
                    }
                }
            })
            .map_err(|e| StreamError::io("start stream flusher", PathBuf::new(), e))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            state,
        })
    }

    /// Queues `job`; when it cannot run (an earlier failure, the thread is gone) the job
    /// comes back with why, so that its callback is still answered.
    fn give(&self, job: Job) -> Result<(), (Job, Arc<StreamError>)> {
        {
            let mut s = lock(&self.state);
            if let Some(e) = &s.failed {
                return Err((job, Arc::clone(e)));
            }
            s.queued += 1;
        }
        let Some(tx) = &self.tx else {
            lock(&self.state).queued -= 1;
            return Err((job, Arc::new(StreamError::Stopped)));
        };
        tx.send(job).map_err(|back| {
            lock(&self.state).queued -= 1;
            (back.0, Arc::new(StreamError::Stopped))
        })
    }

    /// Writes `bytes` at `at` of `file` after what was given before.
    pub(crate) fn write(
        &self,
        file: Arc<File>,
        bytes: Bytes,
        at: u64,
        path: PathBuf,
    ) -> Result<(), Arc<StreamError>> {
        self.give(Job::Write {
            file,
            bytes,
            at,
            path,
        })
        .map_err(|(_, e)| e)
    }

    /// fdatasyncs `files` once what was given before is written, then runs `then`.
    pub(crate) fn sync(&self, files: [(Arc<File>, PathBuf); 2], then: AfterSync) {
        if let Err((job, e)) = self.give(Job::Sync { files, then }) {
            job.refuse(e);
        }
    }

    /// Runs `then` once everything given before is done.
    pub(crate) fn then(&self, then: AfterSync) {
        if let Err((job, e)) = self.give(Job::Then(then)) {
            job.refuse(e);
        }
    }

    /// Waits at most `timeout` for everything given to be done: whether it is.
    pub(crate) fn wait_idle(&self, timeout: std::time::Duration) -> bool {
        let (m, cv) = &*self.state;
        let s = m.lock().unwrap_or_else(|p| p.into_inner());
        let (s, _) = cv
            .wait_timeout_while(s, timeout, |s| s.queued > 0)
            .unwrap_or_else(|p| p.into_inner());
        s.queued == 0
    }

    /// Waits until everything given is done; the first failure, if any.
    pub(crate) fn drain(&self) -> Result<(), Arc<StreamError>> {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
        while s.queued > 0 {
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        match &s.failed {
            Some(e) => Err(Arc::clone(e)),
            None => Ok(()),
        }
    }
}

impl Drop for Flusher {
    /// Finishes what was given, then stops the thread.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `job` (after the failure `failed`, if any): the first failure, if any.
fn run(job: Job, mut failed: Option<Arc<StreamError>>) -> Option<Arc<StreamError>> {
    match job {
        Job::Write {
            file,
            bytes,
            at,
            path,
        } => {
            if failed.is_none() {
                if let Err(e) = file.write_all_at(&bytes, at) {
                    failed = Some(Arc::new(StreamError::io("write", path, e)));
                }
            }
        }
        Job::Sync { files, then } => {
            for (f, path) in files {
                if failed.is_some() {
                    break;
                }
                if let Err(e) = f.sync_data() {
                    failed = Some(Arc::new(StreamError::io("sync", path, e)));
                }
            }
            then(failed.clone().map_or(Ok(()), Err));
        }
        Job::Then(then) => then(failed.clone().map_or(Ok(()), Err)),
    }
    failed
}

fn lock(s: &Arc<(Mutex<State>, Condvar)>) -> std::sync::MutexGuard<'_, State> {
    s.0.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::mpsc;

    /// Writes land in the order given and callbacks run in order, each after what came
    /// before it; a failed write sticks: the sync after it, every later job and `drain`
    /// report it, and no callback is left unanswered.
    #[test]
    fn jobs_run_in_order_and_the_first_failure_answers_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(File::create(&path).unwrap());
        let f = Flusher::start("flusher-test".into()).unwrap();
        let (tx, rx) = mpsc::channel();
        for (i, b) in [b"ab", b"cd", b"ef"].iter().enumerate() {
            f.write(
                Arc::clone(&file),
                Bytes::from_static(*b),
                2 * i as u64,
                path.clone(),
            )
            .unwrap();
            let tx = tx.clone();
            let contents = path.clone();
            f.sync(
                [
                    (Arc::clone(&file), path.clone()),
                    (Arc::clone(&file), path.clone()),
                ],
                Box::new(move |r| {
                    let on_disk = std::fs::read(&contents).unwrap();
                    tx.send((i, r.is_ok(), on_disk.len())).unwrap();
                }),
            );
        }
        f.drain().unwrap();
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got, vec![(0, true, 2), (1, true, 4), (2, true, 6)]);
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");

        // A write the file refuses (opened read-only).
        let read_only = Arc::new(File::open(&path).unwrap());
        f.write(
            Arc::clone(&read_only),
            Bytes::from_static(b"x"),
            0,
            path.clone(),
        )
        .unwrap();
        let tx2 = tx.clone();
        f.sync(
            [
                (Arc::clone(&file), path.clone()),
                (Arc::clone(&file), path.clone()),
            ],
            Box::new(move |r| tx2.send((3, r.is_ok(), 0)).unwrap()),
        );
        assert!(f.drain().is_err());
        let tx3 = tx.clone();
        f.then(Box::new(move |r| tx3.send((4, r.is_ok(), 0)).unwrap()));
        assert!(f
            .write(Arc::clone(&file), Bytes::from_static(b"y"), 6, path.clone())
            .is_err());
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got, vec![(3, false, 0), (4, false, 0)]);
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
    }
}
