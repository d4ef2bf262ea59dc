//! Stream replication: a stream declared on a cluster has a leader (its home node, where
//! publishers append) and replicas on other nodes (its members), as RabbitMQ's streams do
//! (osiris). Each replica copies the leader's chunks as they are stored, byte for byte and
//! at the same offsets, syncs them, and asks for more; the leader counts a replica's ask
//! as its acknowledgement, and commits (shows readers, confirms publishers) what a majority
//! of the members has synced.
//!
//! ```text
//!  replica node                                         leader node (home)
//!  puller ── StreamRead{from: synced end, committed} ──► serve_read: from counts as the
//!    │                                                   replica's ack (Shared::replica_synced)
//!    │     ◄── StreamChunks{stored chunks, committed} ── chunks after `from` (waits ≤ 1 s
//!    ▼                                                   for some, or for a new commit)
//!  Stream::accept (checked, written, fsync'd)
//!  Shared::follow(committed): replica readers see what the leader committed
//! ```
//!
//! The members are chosen at declaration (`x-initial-cluster-size`, by default every cluster
//! member, the declaring node first and leader) and kept in the catalog; the leader does not
//! move yet: while it is down, its stream takes no publishes, and its replicas keep serving
//! what was committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pier_store::stream::Stream;

use super::QueueService;
use crate::rpc::{Request, Response, StreamChunks};

/// The most one answer carries (whole chunks; a bigger chunk goes alone).
const READ_MAX: usize = 4 << 20;
/// How long a leader holds a replica's read when there is nothing new.
const READ_WAIT: Duration = Duration::from_secs(1);
/// How long a replica waits for an answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replica waits before it asks again after a failure.
const RETRY: Duration = Duration::from_millis(300);
/// How often each node checks that its streams' replicas run.
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(1);

type Key = (String, String);

struct Replica {
    stream: Arc<Stream>,
    stop: Arc<AtomicBool>,
}

/// This node's stream replicas (of streams led by other nodes).
#[derive(Default)]
pub(crate) struct StreamReplicas {
    replicas: Mutex<HashMap<Key, Replica>>,
}

impl std::fmt::Debug for StreamReplicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReplicas").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a catalog entry is a stream with replicas (quorum queues have a group).
fn replicated(h: &crate::metadata::QueueHome) -> bool {
    h.group == 0 && h.members.len() > 1
}

/// The log of stream `name` when this node leads it.
fn led_here(svc: &QueueService, vhost: &str, name: &str) -> Option<Arc<Stream>> {
    svc.broker()?
        .vhost(vhost)?
        .find_queue(name)?
        .stream()
        .cloned()
}

impl StreamReplicas {
    /// The replica of a stream this node holds, for its readers.
    pub(crate) fn get(&self, vhost: &str, name: &str) -> Option<Arc<Stream>> {
        lock(&self.replicas)
            .get(&(vhost.to_owned(), name.to_owned()))
            .map(|r| Arc::clone(&r.stream))
    }

    /// The stream was deleted: its replica here goes, files and all.
    pub(crate) fn remove(&self, vhost: &str, name: &str) {
        let r = lock(&self.replicas).remove(&(vhost.to_owned(), name.to_owned()));
        if let Some(r) = r {
            r.stop.store(true, Ordering::Release);
            if let Err(e) = r.stream.delete() {
                tracing::warn!(vhost, stream = name, "stream replica not deleted: {e}");
            }
        }
    }

    /// Makes this node's part of every replicated stream what the catalog says: a leader's
    /// stream knows its member count, each replica here runs (opened, recovered, pulling),
    /// and a replica of a stream that no longer lists this node stops (its files stay).
    pub(crate) fn reconcile(&self, svc: &Arc<QueueService>) {
        let mut wanted: Vec<(Key, crate::metadata::QueueHome)> = Vec::new();
        svc.catalog.for_each_queue_home(|(vhost, name), h| {
            if replicated(h) {
                wanted.push(((vhost.clone(), name.clone()), h.clone()));
            }
        });
        let mut mine = Vec::new();
        for ((vhost, name), home) in wanted {
            if self.ensure(svc, &vhost, &name, &home) {
                mine.push((vhost, name));
            }
        }
        // Replicas of streams that left this node's part (members changed): stop.
        let mut replicas = lock(&self.replicas);
        let gone: Vec<Key> = replicas
            .keys()
            .filter(|k| !mine.contains(k) && svc.catalog.queue_home(&k.0, &k.1).is_some())
            .cloned()
            .collect();
        for k in gone {
            if let Some(r) = replicas.remove(&k) {
                r.stop.store(true, Ordering::Release);
                r.stream.close();
            }
        }
    }

    /// A stream was declared (applied here): its replica starts now, so that a client
    /// sent here by `Metadata` right after the declaration finds it.
    pub(crate) fn declared(&self, svc: &Arc<QueueService>, vhost: &str, name: &str) {
        if let Some(home) = svc.catalog.queue_home(vhost, name).filter(replicated) {
            self.ensure(svc, vhost, name, &home);
        }
    }

    /// A stream's members changed (`add_replica`, `delete_replica`): its leader counts the
    /// new members (and forgets a removed replica's acknowledgements); a new member here
    /// starts its replica, from the leader's first chunk; a member removed here stops, and
    /// its copy is deleted.
    pub(crate) fn members_changed(
        &self,
        svc: &Arc<QueueService>,
        vhost: &str,
        name: &str,
        home: &crate::metadata::QueueHome,
    ) {
        if home.home == svc.me || home.members.contains(&svc.me) {
            self.ensure(svc, vhost, name, home);
        } else {
            self.remove(vhost, name);
        }
    }

    /// This node's part of one replicated stream: as its leader, the member count; as a
    /// member, a running replica. Returns whether this node holds a replica of it.
    fn ensure(
        &self,
        svc: &Arc<QueueService>,
        vhost: &str,
        name: &str,
        home: &crate::metadata::QueueHome,
    ) -> bool {
        let Some(broker) = svc.broker() else {
            return false;
        };
        let Some(vh) = broker.vhost(vhost) else {
            return false;
        };
        let Some(q) = vh.find_queue(name) else {
            return false;
        };
        if q.kind() != pier_broker::queue::QueueType::Stream {
            return false;
        }
        if home.home == svc.me {
            if let Some(s) = q.stream() {
                // Acknowledgements of a removed replica no longer count.
                for (node, _) in s.shared().replica_offsets() {
                    if !home.members.contains(&node) {
                        s.shared().forget_replica(&node);
                    }
                }
                s.shared().set_members(home.members.len());
            }
            return false;
        }
        if !home.members.contains(&svc.me) {
            return false;
        }
        let key = (vhost.to_owned(), name.to_owned());
        let mut replicas = lock(&self.replicas);
        let config = pier_broker::queue::stream::stream_config(&q.config(), vh.stream_sync());
        if let Some(r) = replicas.get(&key) {
            // A policy changed retention or segment size: the replica follows (its leader
            // took it at once).
            if r.stream.config() != config {
                if let Err(e) = r.stream.set_config(config) {
                    tracing::warn!(vhost, stream = %name, "stream replica settings: {e}");
                }
            }
            return true;
        }
        let Some(dir) = vh.stream_dir(name) else {
            return false;
        };
        let stream = match Stream::open_replica(&dir, config) {
            Ok((s, recovery)) => {
                tracing::info!(vhost, stream = %name, leader = %home.home,
                    next_offset = recovery.next_offset, "stream replica opened");
                s
            }
            Err(e) => {
                tracing::warn!(vhost, stream = %name, "stream replica not opened: {e}");
                return false;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        replicas.insert(
            key.clone(),
            Replica {
                stream: Arc::clone(&stream),
                stop: Arc::clone(&stop),
            },
        );
        drop(replicas);
        svc.runtime
            .spawn(pull(Arc::downgrade(svc), key, stream, stop));
        true
    }
}

/// A replica's loop: ask the leader for what follows the synced end, write it, repeat.
async fn pull(svc: Weak<QueueService>, key: Key, stream: Arc<Stream>, stop: Arc<AtomicBool>) {
    let (vhost, name) = key;
    let mut pause = false;
    loop {
        if pause {
            tokio::time::sleep(RETRY).await;
        }
        pause = true;
        if stop.load(Ordering::Acquire) || stream.shared().is_deleted() {
            break;
        }
        let Some(s) = svc.upgrade() else { break };
        let Some(home) = s.catalog.queue_home(&vhost, &name) else {
            continue;
        };
        let Some(node) = s.node() else { continue };
        drop(s);
        let Some((id, peer)) = node.member(&home.home) else {
            continue;
        };
        let view = stream.shared().view();
        let ask = Request::StreamRead {
            vhost: vhost.clone(),
            name: name.clone(),
            from: view.written_next,
            committed: view.committed_next,
        };
        drop(view);
        let answer = node.transport.call(id, &peer.addr, &ask, ASK_TIMEOUT).await;
        drop(node);
        let StreamChunks { stored, committed } = match answer {
            Ok(Response::StreamRead(Ok(c))) => c,
            Ok(Response::StreamRead(Err(e))) => {
                tracing::debug!(vhost, stream = %name, "stream leader refused a read: {e}");
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(vhost, stream = %name, "stream leader unreachable: {e}");
                continue;
            }
        };
        if !stored.is_empty() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if let Err(e) = stream.accept(
                stored,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            ) {
                tracing::warn!(vhost, stream = %name, "stream replica: {e}");
                continue;
            }
            match rx.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(vhost, stream = %name, "stream replica refused chunks: {e}");
                    continue;
                }
                Err(_) => break,
            }
        }
        stream.shared().follow(committed);
        pause = false;
    }
}

/// The leader's side of [`Request::StreamRead`]: records the replica's synced end, then
/// answers with the chunks after it (waiting up to [`READ_WAIT`] for some, or for a commit
/// past what the replica knows).
pub(crate) async fn serve_read(
    svc: &Arc<QueueService>,
    replica: &str,
    vhost: &str,
    name: &str,
    from: u64,
    committed_known: u64,
) -> Result<StreamChunks, String> {
    let home = svc
        .catalog
        .queue_home(vhost, name)
        .ok_or_else(|| format!("no stream '{name}' in vhost '{vhost}'"))?;
    if !home.members.iter().any(|m| m == replica) {
        return Err(format!("{replica} is not a member of stream '{name}'"));
    }
    let stream =
        led_here(svc, vhost, name).ok_or_else(|| format!("stream '{name}' is not led here"))?;
    let shared = Arc::clone(stream.shared());
    drop(stream);
    shared.replica_synced(replica, from);
    let wake = Arc::new(tokio::sync::Notify::new());
    let w = Arc::clone(&wake);
    let listener = shared.listen(Arc::new(move || w.notify_one()));
    let deadline = tokio::time::Instant::now() + READ_WAIT;
    let answer = loop {
        let (written, committed) = shared.positions();
        if written > from {
            match shared.read_stored(from, READ_MAX) {
                Ok(Some(stored)) => {
                    break Ok(StreamChunks {
                        stored,
                        committed: shared.positions().1,
                    })
                }
                Ok(None) => {}
                Err(e) => break Err(e.to_string()),
            }
        }
        if committed > committed_known
            || shared.is_deleted()
            || tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
        {
            break Ok(StreamChunks {
                stored: bytes::Bytes::new(),
                committed: shared.positions().1,
            });
        }
    };
    shared.unlisten(listener);
    answer
}

/// The leader's side of [`Request::StreamStoreOffset`].
pub(crate) fn serve_store_offset(
    svc: &Arc<QueueService>,
    vhost: &str,
    name: &str,
    reference: String,
    offset: u64,
) -> Result<(), String> {
    led_here(svc, vhost, name)
        .ok_or_else(|| format!("stream '{name}' is not led here"))?
        .store_offset(reference, offset)
        .map_err(|e| e.to_string())
}
