//! A vhost's durable message store as several independent shards, so that persistent
//! publishes to different queues do not serialise on one thread.
//!
//! ```text
//!  msgs/<vhost>/                 shard 0 (the directory itself: a store of a Pier before
//!  ├── queues.log, *.seg, *.ack  shards is shard 0 of its vhost, unchanged)
//!  ├── shard-01/                 shard 1: queues.log, *.seg, *.ack
//!  └── shard-02/ ...
//! ```
//!
//! Each shard is a whole [`SegmentStore`] on its own [`StoreThread`] (own log, own group
//! commit, own sync thread): a queue lives on exactly one shard, chosen when it is first
//! opened (the shard with the fewest queues) and found again after a restart in whichever
//! shard's registry has it. Everything about a queue (its appends, acks, reads, purge,
//! deletion) goes to its shard's [`StoreHandle`], which is what the broker keeps per queue, so
//! a queue's commands stay in order. A message routed to queues of several shards is one record
//! per shard (the broker groups the references; see `pier-broker/src/fanout.rs`).
//!
//! The number of shards may change between runs: every shard directory found is opened (its
//! queues stay where they are) and new queues go to the first `shards` of them.
//!
//! **Re-declaring a deleted queue.** Deletion is sent to the queue's shard without waiting. If
//! the same name is opened again before that deletion ran, it must go to the same shard, or a
//! crash could leave both the old registration (on one shard) and the new one (on another):
//! so a name keeps its shard until its deletion has run on the store thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, error};

use crate::error::StoreError;
use crate::segment_store::{SegmentStore, StoreConfig};
use crate::store::{MessageStore, QueueId, QueueInfo, Result};
use crate::thread::{Command, StoreHandle, StoreThread, ThreadConfig};

/// At most this many shards per store.
pub const MAX_SHARDS: usize = 256;

/// How to open a [`ShardedStore`].
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Shards new queues are spread over (clamped to 1..=[`MAX_SHARDS`]).
    pub shards: usize,
    pub store: StoreConfig,
    pub thread: ThreadConfig,
    /// Thread names are `<name>-<shard>` (`<name>-<shard>-sync` for the sync threads).
    pub thread_name: String,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            shards: default_shards(),
            store: StoreConfig::default(),
            thread: ThreadConfig::default(),
            thread_name: "pier-store".to_owned(),
        }
    }
}

/// One shard per core, at most 16: a shard's thread is the serial section of its queues, and
/// more shards than cores add threads, not throughput. (2-core VM, scenario C4: 4 queues on 2
/// shards gave 229k-255k msgs/s against 224k-229k on one, at the same broker CPU per message.)
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 16))
}

/// The directory of shard `i` of the store in `dir`.
pub fn shard_dir(dir: &Path, i: usize) -> PathBuf {
    if i == 0 {
        dir.to_path_buf()
    } else {
        dir.join(format!("shard-{i:02}"))
    }
}

fn parse_shard_dir(name: &str) -> Option<usize> {
    let n: usize = name.strip_prefix("shard-")?.parse().ok()?;
    (1..MAX_SHARDS).contains(&n).then_some(n)
}

#[derive(Debug, Clone, Copy)]
struct Home {
    shard: usize,
    /// Bumped by every open: a deletion sent before only forgets the home it saw.
    generation: u64,
}

#[derive(Debug, Default)]
struct Placement {
    homes: HashMap<String, Home>,
    counts: Vec<usize>,
    next_generation: u64,
}

struct Inner {
    handles: Vec<StoreHandle>,
    placement: Mutex<Placement>,
    /// New queues go to shards `0..placed`.
    placed: usize,
}

impl Inner {
    fn placement(&self) -> MutexGuard<'_, Placement> {
        self.placement.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The shards' threads; see the module docs. Dropping it (or [`ShardedStore::shutdown`])
/// closes every shard.
pub struct ShardedStore {
    threads: Vec<StoreThread>,
    shards: Shards,
}

/// A cloneable handle to every shard of a [`ShardedStore`].
#[derive(Clone)]
pub struct Shards {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.inner.handles.len())
            .finish_non_exhaustive()
    }
}

impl ShardedStore {
    /// Opens (recovers) every shard of the store in `dir` in parallel, creating the missing
    /// ones up to `config.shards`, and starts their threads.
    pub fn open(dir: impl AsRef<Path>, config: ShardConfig) -> Result<ShardedStore> {
        let dir = dir.as_ref();
        let placed = config.shards.clamp(1, MAX_SHARDS);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
        let mut count = placed;
        let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
            if let Some(i) = entry.file_name().to_str().and_then(parse_shard_dir) {
                count = count.max(i + 1);
            }
        }
        // Recovery reads every segment: one thread per shard.
        let opened: Vec<Result<SegmentStore>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = (0..count)
                .map(|i| {
                    let config = config.store.clone();
                    scope.spawn(move || SegmentStore::open(shard_dir(dir, i), config))
                })
                .collect();
            jobs.into_iter()
                .map(|j| j.join().unwrap_or(Err(StoreError::Stopped)))
                .collect()
        });
        let mut placement = Placement {
            counts: vec![0; count],
            ..Placement::default()
        };
        let mut stores = Vec::with_capacity(count);
        for (i, store) in opened.into_iter().enumerate() {
            let store = store?;
            for q in store.queues() {
                match placement.homes.get(&q.name) {
                    Some(h) => error!(queue = %q.name, shard = i, home = h.shard,
                        "queue registered in two shards; the second is left alone"),
                    None => {
                        placement.homes.insert(
                            q.name,
                            Home {
                                shard: i,
                                generation: 0,
                            },
                        );
                        if let Some(c) = placement.counts.get_mut(i) {
                            *c += 1;
                        }
                    }
                }
            }
            stores.push(store);
        }
        let mut threads = Vec::with_capacity(count);
        for (i, store) in stores.into_iter().enumerate() {
            let name = format!("{}-{i}", config.thread_name);
            threads.push(StoreThread::spawn_named(
                Box::new(store),
                config.thread,
                name,
            )?);
        }
        let handles = threads.iter().map(StoreThread::handle).collect();
        Ok(ShardedStore {
            threads,
            shards: Shards {
                inner: Arc::new(Inner {
                    handles,
                    placement: Mutex::new(placement),
                    placed,
                }),
            },
        })
    }

    pub fn shards(&self) -> Shards {
        self.shards.clone()
    }

    /// Drains, closes and joins every shard; the first error is returned (all are closed).
    pub fn shutdown(self) -> Result<()> {
        let mut first = Ok(());
        for t in self.threads {
            if let Err(e) = t.shutdown() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Shards {
    /// How many shards there are (including ones only holding queues of earlier runs).
    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.handles.is_empty()
    }

    pub fn handles(&self) -> &[StoreHandle] {
        &self.inner.handles
    }

    /// The shard `queue` lives on, if it is known.
    pub fn home(&self, queue: &str) -> Option<usize> {
        self.inner.placement().homes.get(queue).map(|h| h.shard)
    }

    /// Every queue of every shard, each with the handle of its shard (blocking: one round
    /// trip per shard). A name registered in two shards (never written so, see the module
    /// docs) is listed once, from its home shard.
    pub fn queues(&self) -> Result<Vec<(StoreHandle, QueueInfo)>> {
        let mut all = Vec::new();
        for (i, h) in self.inner.handles.iter().enumerate() {
            for q in h.call(|s| s.queues())? {
                if self.home(&q.name) == Some(i) {
                    all.push((h.clone(), q));
                }
            }
        }
        Ok(all)
    }

    /// The queue named `name` on its shard, registered durably there if new (blocking: one
    /// round trip). A new queue goes to the shard with the fewest queues.
    pub fn open_queue(&self, name: &str) -> Result<(StoreHandle, QueueId)> {
        let (shard, generation, new) = self.place(name);
        let handle = self
            .inner
            .handles
            .get(shard)
            .cloned()
            .ok_or(StoreError::Stopped)?;
        let owned = name.to_owned();
        match handle.call(move |s| s.open_queue(&owned)) {
            Ok(Ok(id)) => Ok((handle, id)),
            Ok(Err(e)) | Err(e) => {
                if new {
                    forget(&self.inner, name, generation);
                }
                Err(e)
            }
        }
    }

    /// [`Shards::open_queue`] for several names: each new one placed as `open_queue` places
    /// it, and each shard registers its new names in one durable write (one round trip per
    /// shard involved). Declaring the queues afterwards finds them registered. The first
    /// error is returned; the names of a shard that failed are not kept.
    pub fn open_queues(&self, names: &[String]) -> Result<()> {
        let mut by_shard: Vec<Vec<(String, u64, bool)>> = vec![Vec::new(); self.len()];
        for name in names {
            let (shard, generation, new) = self.place(name);
            match by_shard.get_mut(shard) {
                Some(v) => v.push((name.clone(), generation, new)),
                None => {
                    if new {
                        forget(&self.inner, name, generation);
                    }
                }
            }
        }
        let mut first = Ok(());
        for (placed, handle) in by_shard.into_iter().zip(&self.inner.handles) {
            if placed.is_empty() {
                continue;
            }
            let names: Vec<String> = placed.iter().map(|(n, _, _)| n.clone()).collect();
            match handle.call(move |s| s.open_queues(&names)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) | Err(e) => {
                    for (name, generation, new) in &placed {
                        if *new {
                            forget(&self.inner, name, *generation);
                        }
                    }
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }

    /// The shard of `name` (a new name goes to the placed shard with the fewest queues), the
    /// generation of this open, and whether the name is new.
    fn place(&self, name: &str) -> (usize, u64, bool) {
        let mut p = self.inner.placement();
        p.next_generation += 1;
        let generation = p.next_generation;
        match p.homes.get_mut(name) {
            Some(h) => {
                h.generation = generation;
                (h.shard, generation, false)
            }
            None => {
                let shard = p
                    .counts
                    .iter()
                    .take(self.inner.placed)
                    .enumerate()
                    .min_by_key(|&(i, &c)| (c, i))
                    .map_or(0, |(i, _)| i);
                if let Some(c) = p.counts.get_mut(shard) {
                    *c += 1;
                }
                p.homes.insert(name.to_owned(), Home { shard, generation });
                (shard, generation, true)
            }
        }
    }

    /// Deletes a queue (its registration and messages) on its shard without waiting; the
    /// name keeps its shard until the deletion has run. `handle` and `queue` are what
    /// [`Shards::open_queue`] returned.
    pub fn delete_queue(&self, handle: &StoreHandle, queue: QueueId, name: &str) -> Result<()> {
        let generation = self.inner.placement().homes.get(name).map(|h| h.generation);
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        handle.send(Command::Run(Box::new(move |s: &mut dyn MessageStore| {
            if let Err(e) = s.delete_queue(queue) {
                error!(queue = %name, "deleting a queue's messages: {e}");
            }
            if let Some(generation) = generation {
                forget(&inner, &name, generation);
            }
        })))
    }

    /// Blocks until everything sent to every shard before is durable.
    pub fn wait_durable(&self) -> Result<()> {
        for h in &self.inner.handles {
            h.wait_durable()?;
        }
        Ok(())
    }
}

/// Forgets a name's home if nobody opened it again since `generation`.
fn forget(inner: &Inner, name: &str, generation: u64) {
    let mut p = inner.placement();
    if let Some(h) = p.homes.get(name).copied() {
        if h.generation == generation {
            p.homes.remove(name);
            if let Some(c) = p.counts.get_mut(h.shard) {
                *c = c.saturating_sub(1);
            }
        } else {
            debug!(queue = %name, "queue opened again while its deletion was pending: kept on its shard");
        }
    }
}
