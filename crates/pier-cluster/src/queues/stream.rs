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
//! member, the declaring node first and leader) and kept in the catalog.
//!
//! **Failover.** When a stream's leader has not answered for [`LIVENESS`](crate::node::LIVENESS), the metadata
//! leader picks another (no consensus written here: the choice is a metadata command that
//! openraft commits). Leaders come in epochs: epoch `k` began with its leader's log
//! `epochs[k - 1]` offsets long (the catalog's `QueueHome::epochs`). Each member keeps, in
//! its copy's directory, the epoch it last took chunks under and the highest one it
//! promised (`epoch` file).
//!
//! 1. The metadata leader asks every reachable member to *fence* epoch `E + 1`: the member
//!    stops asking the old leader for chunks (so the old leader, if alive behind a
//!    partition, can no longer commit: every majority includes a fenced member) and answers
//!    with its epoch and synced end.
//! 2. With answers from a majority of the members, it computes each answer's *valid end*
//!    (the end, cut at the start of every epoch after the one the copy was taken under: a
//!    deposed leader's uncommitted tail is not part of the stream) and proposes the member
//!    with the longest valid end as the leader of epoch `E + 1`, from that end
//!    (`SetStreamLeader`, skipped if the epoch moved meanwhile).
//! 3. Every member, before it opens its copy for a new epoch (as leader or replica), cuts
//!    it at the same place (`prepare`), then follows the new leader; the old leader's
//!    pending confirms fail (the publisher resends), and clients are told the stream moved
//!    (`MetadataUpdate`, `basic.cancel`).
//!
//! Whatever a majority synced (committed, confirmed) is within the valid end of some member
//! of any fenced majority, so the new leader has it, and no member ever cuts it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pier_store::stream::Stream;

use super::QueueService;
use crate::handle::ClusterHandle;
use crate::metadata::{MetadataCommand, QueueHome};
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
/// How long the metadata leader waits for a member's fence answer.
const FENCE_TIMEOUT: Duration = Duration::from_secs(5);

type Key = (String, String);

/// This node's replica of one stream; its puller works with a clone.
#[derive(Clone)]
struct Replica {
    stream: Arc<Stream>,
    stop: Arc<AtomicBool>,
    /// The leader's epoch this copy follows.
    epoch: u64,
    /// The highest epoch this member promised to a failover: while above `epoch`, the
    /// puller asks nothing.
    promised: Arc<AtomicU64>,
    /// Held by the puller across each ask and the write of its answer, and by a fence:
    /// the fence's answer is the end after every acknowledgement sent.
    gate: Arc<tokio::sync::Mutex<()>>,
}

/// This node's stream replicas (of streams led by other nodes).
#[derive(Default)]
pub(crate) struct StreamReplicas {
    replicas: Mutex<HashMap<Key, Replica>>,
    /// Failovers this node (as metadata leader) is running.
    electing: Mutex<HashSet<Key>>,
}

/// What a copy of a stream in `dir` keeps about epochs (the `epoch` file): the epoch it
/// was last opened for, and the highest epoch it promised to a failover.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EpochState {
    accepted: u64,
    promised: u64,
}

const EPOCH_FILE: &str = "epoch";

impl EpochState {
    fn load(dir: &Path) -> EpochState {
        let Ok(text) = std::fs::read_to_string(dir.join(EPOCH_FILE)) else {
            return EpochState::default();
        };
        let mut it = text
            .split_whitespace()
            .map(|w| w.parse::<u64>().unwrap_or(0));
        let accepted = it.next().unwrap_or(0);
        let promised = it.next().unwrap_or(0).max(accepted);
        EpochState { accepted, promised }
    }

    /// Written and synced before anything depends on it (a promise, a copy's new epoch).
    fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{EPOCH_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{} {}", self.accepted, self.promised)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(EPOCH_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// The stream's current epoch.
fn epoch_of(h: &QueueHome) -> u64 {
    u64::try_from(h.epochs.len()).unwrap_or(u64::MAX)
}

/// How much of a copy taken under epoch `accepted`, `end` offsets long, is the stream's
/// (what its later epochs' leaders started from cuts it).
fn valid_end(h: &QueueHome, accepted: u64, end: u64) -> u64 {
    let from = usize::try_from(accepted).unwrap_or(usize::MAX);
    h.epochs
        .get(from..)
        .unwrap_or_default()
        .iter()
        .fold(end, |e, s| e.min(*s))
}

/// Before this node opens its copy of a replicated stream for the current epoch (as leader
/// or replica): cuts what it holds past its valid end, and records the epoch. Returns the
/// copy's epochs (`accepted` is the current epoch).
pub(crate) fn prepare(dir: &Path, home: &QueueHome) -> Result<EpochState, String> {
    let epoch = epoch_of(home);
    let mut st = EpochState::load(dir);
    if st.accepted == epoch {
        return Ok(st);
    }
    if st.accepted > epoch {
        return Err(format!(
            "this copy is of epoch {}, the cluster's is {epoch}",
            st.accepted
        ));
    }
    let cut = valid_end(home, st.accepted, u64::MAX);
    if cut < u64::MAX {
        match pier_store::stream::truncate_stream(dir, cut) {
            Ok(true) => {
                tracing::warn!(dir = %dir.display(), from = cut,
                    "stream copy cut: a deposed leader's chunks that were never committed")
            }
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    st.accepted = epoch;
    st.promised = st.promised.max(epoch);
    st.save(dir).map_err(|e| e.to_string())?;
    Ok(st)
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
pub(crate) fn replicated(h: &crate::metadata::QueueHome) -> bool {
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

    /// Stops this node's replica of a stream (its files stay): readers are told it moved.
    fn retire(&self, key: &Key) {
        let r = lock(&self.replicas).remove(key);
        if let Some(r) = r {
            r.stop.store(true, Ordering::Release);
            r.stream.retire();
        }
    }

    /// Makes this node's part of every replicated stream what the catalog says: a leader's
    /// stream knows its member count, each replica here runs (opened, recovered, pulling,
    /// for the current epoch), the broker's handle points at the current leader, and a
    /// replica of a stream that no longer lists this node stops (its files stay).
    pub(crate) fn reconcile(&self, svc: &Arc<QueueService>) {
        let mut wanted: Vec<(Key, QueueHome)> = Vec::new();
        svc.catalog.for_each_queue_home(|(vhost, name), h| {
            if replicated(h) {
                wanted.push(((vhost.clone(), name.clone()), h.clone()));
            }
        });
        let mut mine = Vec::new();
        for ((vhost, name), home) in wanted {
            // A leader change this node missed (a snapshot, a failed reopen): as applied.
            let led = led_here(svc, &vhost, &name).is_some();
            let stale = lock(&self.replicas)
                .get(&(vhost.clone(), name.clone()))
                .is_some_and(|r| r.epoch != epoch_of(&home));
            if led != (home.home == svc.me) || stale {
                self.leader_changed(svc, &vhost, &name);
            } else if let Some(vh) = svc.broker().and_then(|b| b.vhost(&vhost)) {
                // A node that holds no copy: its handle points at the current leader.
                if let Err(e) = vh.rehome_stream(&name, &home.home) {
                    tracing::warn!(vhost, stream = %name, "stream handle: {e}");
                }
            }
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
        drop(replicas);
        self.check_leaders(svc);
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
        home: &QueueHome,
    ) {
        if home.home == svc.me || home.members.contains(&svc.me) {
            self.ensure(svc, vhost, name, home);
        } else {
            self.remove(vhost, name);
        }
    }

    /// A stream's leader changed (applied here): the replica here stops, the broker's
    /// handle moves to the new leader (opening the log here when this node leads now, or
    /// retiring the log it led), and a replica opens for the new epoch.
    pub(crate) fn leader_changed(&self, svc: &Arc<QueueService>, vhost: &str, name: &str) {
        let Some(home) = svc.catalog.queue_home(vhost, name).filter(replicated) else {
            return;
        };
        self.retire(&(vhost.to_owned(), name.to_owned()));
        if let Some(vh) = svc.broker().and_then(|b| b.vhost(vhost)) {
            match vh.rehome_stream(name, &home.home) {
                Ok(()) => tracing::info!(vhost, stream = %name, leader = %home.home,
                    epoch = epoch_of(&home), "stream leader changed"),
                Err(e) => tracing::error!(vhost, stream = %name, "stream leader change: {e}"),
            }
        }
        self.ensure(svc, vhost, name, &home);
    }

    /// This node's part of one replicated stream: as its leader, the member count; as a
    /// member, a running replica. Returns whether this node holds a replica of it.
    fn ensure(&self, svc: &Arc<QueueService>, vhost: &str, name: &str, home: &QueueHome) -> bool {
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
        if !home.members.contains(&svc.me) || q.stream().is_some() {
            // Not a member, or the log led here is still being handed over.
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
        let epochs = match prepare(&dir, home) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(vhost, stream = %name, "stream replica not opened: {e}");
                return false;
            }
        };
        let epoch = epochs.accepted;
        let stream = match Stream::open_replica(&dir, config) {
            Ok((s, recovery)) => {
                tracing::info!(vhost, stream = %name, leader = %home.home, epoch,
                    next_offset = recovery.next_offset, "stream replica opened");
                s
            }
            Err(e) => {
                tracing::warn!(vhost, stream = %name, "stream replica not opened: {e}");
                return false;
            }
        };
        let replica = Replica {
            stream,
            stop: Arc::new(AtomicBool::new(false)),
            epoch,
            promised: Arc::new(AtomicU64::new(epochs.promised)),
            gate: Arc::new(tokio::sync::Mutex::new(())),
        };
        replicas.insert(key.clone(), replica.clone());
        drop(replicas);
        svc.runtime.spawn(pull(Arc::downgrade(svc), key, replica));
        true
    }

    /// A member's side of [`Request::StreamFence`]: promises (durably) to take no chunks of
    /// an epoch before `epoch`, once no ask of its puller is in flight, and answers with
    /// the epoch its copy was taken under and its synced end.
    pub(crate) async fn fence(
        &self,
        svc: &Arc<QueueService>,
        vhost: &str,
        name: &str,
        epoch: u64,
    ) -> Result<(u64, u64), String> {
        if led_here(svc, vhost, name).is_some_and(|s| !s.shared().is_deleted()) {
            return Err(format!("this node leads stream '{name}'"));
        }
        let key = (vhost.to_owned(), name.to_owned());
        let r = lock(&self.replicas)
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("no replica of stream '{name}' here"))?;
        let _gate = r.gate.lock().await;
        let dir = r.stream.dir().to_owned();
        let mut st = EpochState::load(&dir);
        if epoch <= st.accepted {
            return Err(format!(
                "stream '{name}': epoch {epoch} is not after this copy's {}",
                st.accepted
            ));
        }
        if epoch > st.promised {
            st.promised = epoch;
            st.save(&dir).map_err(|e| e.to_string())?;
        }
        r.promised.fetch_max(epoch, Ordering::AcqRel);
        Ok((st.accepted, r.stream.shared().view().written_next))
    }

    /// On the metadata leader: a failover for each replicated stream whose leader has not
    /// answered for [`LIVENESS`](crate::node::LIVENESS) (one at a time per stream).
    fn check_leaders(&self, svc: &Arc<QueueService>) {
        let Some(node) = svc.node() else { return };
        if node.metrics().current_leader != Some(node.me_id) {
            return;
        }
        let mut down = Vec::new();
        svc.catalog.for_each_queue_home(|(vhost, name), h| {
            if replicated(h) && h.home != svc.me {
                let up = node
                    .member(&h.home)
                    .is_some_and(|(id, _)| node.is_running(id));
                if !up {
                    down.push((vhost.clone(), name.clone()));
                }
            }
        });
        drop(node);
        for key in down {
            self.start_failover(svc, key);
        }
    }

    fn start_failover(&self, svc: &Arc<QueueService>, key: Key) {
        if !lock(&self.electing).insert(key.clone()) {
            return;
        }
        let weak = Arc::downgrade(svc);
        svc.runtime.spawn(async move {
            if let Some(svc) = weak.upgrade() {
                if let Err(e) = failover(&svc, &key.0, &key.1).await {
                    tracing::info!(vhost = %key.0, stream = %key.1, "stream failover: {e}");
                }
                lock(&svc.streams.electing).remove(&key);
            }
        });
    }
}

/// Picks a new leader for a stream (see the module's documentation): fences epoch `E + 1`
/// on the reachable members other than the leader, and proposes the one with the longest
/// valid end. Safe to run on several nodes at once: fences are idempotent, and the
/// proposal names the epoch it follows.
async fn failover(svc: &Arc<QueueService>, vhost: &str, name: &str) -> Result<(), String> {
    let home = svc
        .catalog
        .queue_home(vhost, name)
        .filter(replicated)
        .ok_or("not a replicated stream")?;
    let node = svc.node().ok_or("no cluster")?;
    let epoch = epoch_of(&home) + 1;
    let mut asks = tokio::task::JoinSet::new();
    for m in home.members.iter().filter(|m| **m != home.home) {
        let (m, v, n) = (m.clone(), vhost.to_owned(), name.to_owned());
        if m == svc.me {
            let svc = Arc::clone(svc);
            asks.spawn(async move {
                let r = svc.streams.fence(&svc, &v, &n, epoch).await;
                (m, r)
            });
        } else if let Some((id, peer)) = node.member(&m) {
            let node = Arc::clone(&node);
            asks.spawn(async move {
                let ask = Request::StreamFence {
                    vhost: v,
                    name: n,
                    epoch,
                };
                let r = match node
                    .transport
                    .call(id, &peer.addr, &ask, FENCE_TIMEOUT)
                    .await
                {
                    Ok(Response::StreamFence(r)) => r,
                    Ok(_) => Err("unexpected answer".to_owned()),
                    Err(e) => Err(e.to_string()),
                };
                (m, r)
            });
        }
    }
    let mut answers = Vec::new();
    while let Some(a) = asks.join_next().await {
        let Ok((m, r)) = a else { continue };
        match r {
            Ok((accepted, end)) if accepted <= epoch_of(&home) => {
                answers.push((m, valid_end(&home, accepted, end)));
            }
            Ok((accepted, _)) => {
                return Err(format!("{m} is at epoch {accepted}: the catalog moved on"))
            }
            Err(e) => tracing::info!(vhost, stream = %name, member = %m, "fence: {e}"),
        }
    }
    if answers.len() < home.members.len() / 2 + 1 {
        return Err(format!(
            "{} of {} members fenced: no majority",
            answers.len(),
            home.members.len()
        ));
    }
    // The longest valid end; among equals, the first in the members' order.
    let order = |m: &str| {
        home.members
            .iter()
            .position(|x| x == m)
            .unwrap_or(usize::MAX)
    };
    let (leader, start) = answers
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(order(&b.0).cmp(&order(&a.0))))
        .cloned()
        .ok_or("no answers")?;
    tracing::warn!(vhost, stream = %name, old = %home.home, new = %leader, epoch, start,
        "stream leader down: electing a new one");
    ClusterHandle::from_node(node)
        .propose(MetadataCommand::SetStreamLeader {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            epoch,
            leader,
            start,
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// How long a fenced copy waits for the new epoch before it runs the failover itself (the
/// node that fenced it may have lost the metadata leadership meanwhile).
const FENCED_FOR: Duration = Duration::from_secs(10);

/// A replica's loop: ask the leader for what follows the synced end, write it, repeat.
async fn pull(svc: Weak<QueueService>, key: Key, r: Replica) {
    let (vhost, name) = key.clone();
    let Replica {
        stream,
        stop,
        epoch,
        promised,
        gate,
    } = r;
    let mut pause = false;
    let mut fenced_since: Option<tokio::time::Instant> = None;
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
        if epoch_of(&home) != epoch {
            // A new epoch: the leader change reopens this copy.
            continue;
        }
        if promised.load(Ordering::Acquire) > epoch {
            // Fenced for a failover that has not finished: finish it after a while.
            let since = *fenced_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= FENCED_FOR {
                fenced_since = None;
                s.streams.start_failover(&s, key.clone());
            }
            continue;
        }
        let Some(node) = s.node() else { continue };
        drop(s);
        let Some((id, peer)) = node.member(&home.home) else {
            continue;
        };
        let _gate = gate.lock().await;
        if promised.load(Ordering::Acquire) > epoch || stop.load(Ordering::Acquire) {
            continue;
        }
        let view = stream.shared().view();
        let ask = Request::StreamRead {
            vhost: vhost.clone(),
            name: name.clone(),
            epoch,
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

/// A replica's [`Request::StreamRead`].
pub(crate) struct ReadAsk<'a> {
    pub vhost: &'a str,
    pub name: &'a str,
    pub epoch: u64,
    pub from: u64,
    pub committed: u64,
}

/// The leader's side of [`Request::StreamRead`]: records the replica's synced end, then
/// answers with the chunks after it (waiting up to [`READ_WAIT`] for some, or for a commit
/// past what the replica knows). A replica of another epoch is refused.
pub(crate) async fn serve_read(
    svc: &Arc<QueueService>,
    replica: &str,
    ask: ReadAsk<'_>,
) -> Result<StreamChunks, String> {
    let ReadAsk {
        vhost,
        name,
        epoch,
        from,
        committed: committed_known,
    } = ask;
    let home = svc
        .catalog
        .queue_home(vhost, name)
        .ok_or_else(|| format!("no stream '{name}' in vhost '{vhost}'"))?;
    if !home.members.iter().any(|m| m == replica) {
        return Err(format!("{replica} is not a member of stream '{name}'"));
    }
    if home.home != svc.me || epoch_of(&home) != epoch {
        return Err(format!(
            "stream '{name}': this node does not lead epoch {epoch}"
        ));
    }
    let stream =
        led_here(svc, vhost, name).ok_or_else(|| format!("stream '{name}' is not led here"))?;
    let shared = Arc::clone(stream.shared());
    drop(stream);
    if shared.is_deleted() {
        return Err(format!("stream '{name}' is not led here"));
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use pier_store::stream::{AppendMessage, StreamConfig};

    fn home(epochs: &[u64]) -> QueueHome {
        QueueHome {
            home: "b".into(),
            members: vec!["a".into(), "b".into(), "c".into()],
            group: 0,
            epochs: epochs.to_vec(),
        }
    }

    /// A copy is cut at the start of every epoch after the one it was taken under.
    #[test]
    fn a_copys_valid_end_is_cut_by_every_later_epochs_start() {
        let h = home(&[100, 80, 120]);
        assert_eq!(valid_end(&h, 0, 150), 80);
        assert_eq!(valid_end(&h, 1, 90), 80);
        assert_eq!(valid_end(&h, 2, 150), 120);
        assert_eq!(valid_end(&h, 3, 150), 150);
        assert_eq!(valid_end(&h, 3, 10), 10);
        assert_eq!(valid_end(&home(&[]), 0, 7), 7);
    }

    /// Opening a copy for a later epoch cuts a deposed leader's tail once and records the
    /// epoch; a copy of a later epoch than the catalog's is refused.
    #[test]
    fn prepare_cuts_a_copy_to_its_valid_end_and_records_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let config = StreamConfig {
            max_segment_size_bytes: 400,
            ..StreamConfig::default()
        };
        let (s, _) = Stream::open(dir.path(), config.clone()).unwrap();
        for i in 0..30u8 {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            s.append(
                None,
                vec![AppendMessage {
                    publishing_id: 0,
                    entry: pier_stream_wire::Entry::Simple(bytes::Bytes::from(vec![i; 40])),
                    filter: None,
                }],
                Box::new(move |r| {
                    let _ = tx.send(r.is_ok());
                }),
            )
            .unwrap();
            assert!(rx.recv().unwrap());
        }
        let end = s.shared().view().written_next;
        drop(s);
        assert_eq!(prepare(dir.path(), &home(&[])).unwrap().accepted, 0);
        // Epoch 1 began at a chunk boundary inside this copy: what follows goes.
        let cut = (0..end)
            .rev()
            .find(|o| {
                let (s, _) = Stream::open_replica(dir.path(), config.clone()).unwrap();
                let at = s.shared().locate_offset(*o).unwrap();
                at.is_some_and(|l| l.record.chunk_id == *o && *o > 0 && *o < end - 5)
            })
            .unwrap();
        assert_eq!(prepare(dir.path(), &home(&[cut])).unwrap().accepted, 1);
        assert_eq!(
            EpochState::load(dir.path()),
            EpochState {
                accepted: 1,
                promised: 1
            }
        );
        let (s, r) = Stream::open_replica(dir.path(), config.clone()).unwrap();
        assert_eq!(r.next_offset, cut);
        drop(s);
        // Again for the same epoch: nothing more goes.
        assert_eq!(prepare(dir.path(), &home(&[cut])).unwrap().accepted, 1);
        let (_s, r) = Stream::open_replica(dir.path(), config).unwrap();
        assert_eq!(r.next_offset, cut);
        assert!(prepare(dir.path(), &home(&[])).is_err());
    }
}
