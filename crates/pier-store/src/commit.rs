//! Pipelined group commit: what a backend hands over to be fdatasynced, so that the thread that
//! writes can go on writing the next batch while the previous one is being synced.
//!
//! ```text
//!  store thread:  apply k ─ write k ─┬─ apply k+1 ─ write k+1 ─┬─ apply k+2 ...
//!                                    │ SyncJob k               │ SyncJob k+1
//!  sync thread:                      └─ fdatasync k ─► confirm └─ fdatasync k+1 ─► confirm
//! ```
//!
//! A backend's [`crate::MessageStore::prepare_commit`] writes its buffer out (one `pwrite`)
//! and returns a [`SyncPlan`]: the watermark that will be durable once the plan's [`SyncJob`]
//! (if any) and every job handed out before it have run. The job is plain data: the files to
//! `fdatasync` (shared handles, so the backend may rotate, keep writing, even delete them
//! meanwhile), and a directory to fsync. Whoever runs it (the sync thread, or the store thread
//! itself when nothing else is waiting) reports back with
//! [`crate::MessageStore::synced`]; only then does the backend's own durable watermark move.
//!
//! Nothing here knows about messages: a future write-ahead log for Raft groups hands the same
//! jobs (its log file) to the same sync thread (see docs/decisions/0004).

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::StoreError;
use crate::files;
use crate::store::Seq;

/// A file to fdatasync, with its path for error messages.
#[derive(Debug, Clone)]
pub struct SyncFile {
    pub path: PathBuf,
    pub file: Arc<File>,
}

/// What must be fdatasynced to make everything up to [`SyncJob::upto`] durable.
#[derive(Debug, Default)]
pub struct SyncJob {
    pub(crate) upto: Seq,
    pub(crate) files: Vec<SyncFile>,
    /// A directory whose entries changed (created or deleted files).
    pub(crate) dir: Option<PathBuf>,
    /// Backend bookkeeping: which directory generation and which closed segments this job
    /// covers (the segment store forgets a closed segment once a job that synced it is done).
    pub(crate) dir_gen: u64,
    pub(crate) segments: Vec<u32>,
    /// False when the sync thread coalesced this job into an earlier one of the same round
    /// (the fdatasyncs were shared): only counted jobs count as syncs in the stats.
    pub(crate) counted: bool,
}

impl SyncJob {
    /// A job making everything up to `upto` durable once `files` (and `dir`) are synced.
    pub fn new(upto: Seq, files: Vec<SyncFile>, dir: Option<PathBuf>) -> SyncJob {
        SyncJob {
            upto,
            files,
            dir,
            counted: true,
            ..SyncJob::default()
        }
    }

    pub fn upto(&self) -> Seq {
        self.upto
    }

    /// Runs the job: fdatasync of every file, then the directory.
    pub fn run(&self) -> Result<(), StoreError> {
        run_all(std::slice::from_ref(self))
    }
}

/// Runs several jobs as one: each distinct file (and directory) is synced once, files first.
/// The first failure stops it (the caller treats every job as failed: fsyncgate).
pub(crate) fn run_all(jobs: &[SyncJob]) -> Result<(), StoreError> {
    let mut done: Vec<&Arc<File>> = Vec::new();
    for f in jobs.iter().flat_map(|j| &j.files) {
        if done.iter().any(|d| Arc::ptr_eq(d, &f.file)) {
            continue;
        }
        files::datasync(&f.file, &f.path)?;
        done.push(&f.file);
    }
    let mut dirs: Vec<&PathBuf> = Vec::new();
    for d in jobs.iter().filter_map(|j| j.dir.as_ref()) {
        if !dirs.contains(&d) {
            files::sync_dir(d)?;
            dirs.push(d);
        }
    }
    Ok(())
}

/// The outcome of [`crate::MessageStore::prepare_commit`].
#[derive(Debug)]
pub struct SyncPlan {
    /// Every append up to this seq is durable once `job` (if any) and every job handed out
    /// before it have run successfully.
    pub durable: Seq,
    /// The fdatasyncs still needed (None: nothing new to sync).
    pub job: Option<SyncJob>,
}
