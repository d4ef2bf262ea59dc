//! Replicated quorum queues on a node: one Raft group per queue that has this node as a
//! member, all on the node's shared write-ahead log, and one [`QuorumLink`] per queue (member
//! or not) that the queue's handle uses.
//!
//! ```text
//!  any node: Queue (Backend::Remote) ── QuorumLink ── writer task ──┬─ leader here: client_write
//!                                         ▲                         └─ else: QueueWrite ═► leader
//!                                         │ QuorumDeliver / QuorumCancelled (lane)
//!  leader:  committed entry ─► QueueMachine::apply ─► Runner: deliveries to the consumers'
//!           nodes (this one directly), dead letters, expiry; followers apply and stay quiet
//! ```
//!
//! Consumers are named in the log by a cluster-wide id: the top 24 bits of their node's
//! Raft id, then the node's own consumer id. Every member holds every consumer, checkout
//! and delivery count; a member that becomes leader first returns everything checked out
//! (it cannot know what reached its consumer: redelivered, delivery count + 1), and the
//! session (the Raft term) that settlements must name moves on, so a settlement from before
//! the change is dropped rather than applied to a message delivered again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use pier_broker::cluster::BoxFuture;
use pier_broker::message::Message;
use pier_broker::persist::DurabilityHold;
use pier_broker::queue::engine::{ConsumerSettings, Effect, EngineConfig};
use pier_broker::queue::remote::{RemoteConsumer, RemoteGot, WINDOW_MESSAGES};
use pier_broker::{BrokerError, ConsumerId, DeadLetter, ObjectKind, Queue, QueueLink, Settlement};
use pier_store::wal::{SharedLog, WalConfig};
use tokio::sync::{mpsc, oneshot};

use super::elections::{
    Action, ElectionTimers, GroupView, Role, BACK_FOR, ELECTION_CHECK, PEER_DOWN_AFTER,
};
use super::propose::{Outcome, Proposer, Stamp};
use super::{message_of, Applied, QueueEntry, QueueMachine, QueueOp};
use crate::node::incarnation;
use crate::queues::wire::{self, LaneMsg};
use crate::queues::QueueService;
use crate::raft::log_adapter::RaftLog;
use crate::raft::network::NetworkFactory;
use crate::raft::queue_group::{
    queue_config, EffectRunner, LogBodies, QueueRaft, QueueReply, QueueRoute, QueueStateMachine,
};
use crate::raft::wal_log::WalLogStore;
use crate::raft::{node_id, PeerNode};
use crate::rpc::{unix_ms, ForwardError, GroupStatus, MemberChange, Request, Response};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A consumer's cluster-wide id: 20 bits of its node's Raft id, 12 bits of the node
/// process's incarnation (a consumer of a process that died is never taken for one of its
/// successor's), 32 bits of the node's own consumer id.
const TAG_SHIFT: u32 = 44;
const INCARNATION_SHIFT: u32 = 32;
const LOCAL_MASK: u64 = (1 << INCARNATION_SHIFT) - 1;

/// The top bits of a node's Raft id that name it in consumer ids.
fn tag_of(node: u64) -> u64 {
    node >> TAG_SHIFT
}

/// The cluster-wide id of consumer `local` of this process on node `node` (its Raft id).
pub fn global_consumer(node: u64, local: ConsumerId) -> u64 {
    (tag_of(node) << TAG_SHIFT) | (incarnation() << INCARNATION_SHIFT) | (local & LOCAL_MASK)
}

/// (node tag, incarnation, local id) of a cluster-wide consumer id.
fn split_consumer(global: u64) -> (u64, u64, ConsumerId) {
    (
        global >> TAG_SHIFT,
        (global >> INCARNATION_SHIFT) & 0xFFF,
        global & LOCAL_MASK,
    )
}

/// The most unacknowledged deliveries a consumer with acks may have out (its prefetch is
/// capped at it; acks come back through the log, so the window must cover their round trip).
const MAX_PREFETCH: u32 = 2048;
/// Writes per batch (one Raft entry)...
const WRITE_BATCH: usize = 384;
/// ...and message bytes (a batch stays well below the transport's frame limit, with
/// `queue_config`'s entries per AppendEntries).
const WRITE_BATCH_BYTES: usize = 1 << 20;
/// The largest message body a replicated quorum queue takes (RabbitMQ 4's default
/// `max_message_size`); a larger publish is nacked.
pub const MAX_REPLICATED_MESSAGE: usize = 16 << 20;
/// How long a write may look for a leader before it fails (a publish is then nacked).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Batches a link may have on their way at once: entries its node (the leader) proposed
/// and that are not committed yet, or settlements, credit and cancels forwarded to the
/// leader elsewhere. openraft 0.9's core appends one proposal at a time and waits for its
/// fsync before it takes the next, so proposing every write as it comes makes entries of a
/// write or two, each through a serial fsync (a leader then did ~4,000 entries/s, ~30k
/// publishes/s). With a few batches on their way, what a link writes meanwhile waits in its
/// queue and goes into the next batch: a busy queue's entries grow (up to `WRITE_BATCH`).
/// Two: one committing while the next fills. Measured here (scenario C on three nodes,
/// producer on the leader or not, 3 runs each): 2 batches of up to 384 writes gave
/// 83–91k msg/s, 3 gave 79–82k, 8 of up to 256 gave 68–76k; more batches make smaller
/// entries, each paying the core's serial append, and larger ones (512–1,024 writes) took
/// longer to write and replicate than they saved.
const BATCHES_IN_FLIGHT: usize = 2;
/// How often a write left undecided (its leader lost the lead before the commit) goes
/// again before it fails (a publish is then nacked, and the client resends it).
const WRITE_ATTEMPTS: u8 = 5;

type WriteResult = Result<QueueReply, String>;

struct Write {
    entry: QueueEntry,
    done: Option<Done>,
    attempts: u8,
}

/// Who waits for a write's outcome.
enum Done {
    /// A caller awaiting the reply.
    Reply(oneshot::Sender<WriteResult>),
    /// A publish's share of its durability (its confirm), completed where the answer is
    /// handed out: the answers of a committed batch release their confirms one after the
    /// other on one thread (the channel sends them as one ack), with no task per publish.
    Hold(DurabilityHold),
}

impl Done {
    fn send(self, r: WriteResult) {
        match self {
            Done::Reply(tx) => {
                let _ = tx.send(r);
            }
            Done::Hold(h) => h.complete(matches!(r, Ok(QueueReply::Enqueued(true)))),
        }
    }
}

impl Write {
    fn body_len(&self) -> usize {
        op_body_len(self.entry.op())
    }
}

fn op_body_len(op: &QueueOp) -> usize {
    match op {
        QueueOp::Enqueue { body, .. } => body.len(),
        _ => 0,
    }
}

/// A group this node is a member of.
struct Group {
    raft: QueueRaft,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the group's state machine, its tasks and the link share.
struct Shared {
    group: u64,
    vhost: String,
    name: String,
    service: Weak<QuorumService>,
    machine: Arc<Mutex<QueueMachine>>,
    /// The engine configuration the member built from the declaration.
    config: EngineConfig,
    /// This member leads (as of the last metrics it saw).
    leading: AtomicBool,
    /// The current term: the session settlements name.
    term: AtomicU64,
    /// The latest clock an entry carried (a new leader never stamps earlier).
    last_at: AtomicU64,
    /// Ops applied since this member last asked for a snapshot.
    ops_since_snapshot: AtomicU64,
    /// At-least-once dead letters this member, leading, routed and has no answer for yet,
    /// and when those not on their way go again (after one was not taken, and when it
    /// starts leading). On `unix_ms`, the queue's clock here.
    dead_letters: Mutex<pier_broker::DeadLettersInFlight>,
    /// This node's consumers (global ids) seen in the group's state: one that is gone from
    /// it while still subscribed here was cancelled by the leader (`reconcile_consumers`).
    seen_consumers: Mutex<HashSet<u64>>,
    /// The newest policy change this node asked the queue to take (metadata log index,
    /// settings, last try): the member proposes it again, once a write's deadline passed
    /// since the last try, until it is applied (a proposal fails when the group finds no
    /// leader for longer than a write waits; the change would otherwise wait for the next).
    policy_wanted: Mutex<Option<(u64, Box<pier_broker::args::PolicySettings>, Instant)>>,
    /// What this member proposes while it leads goes through here (`propose.rs`); set
    /// once the group started.
    proposer: std::sync::OnceLock<Proposer>,
}

impl Shared {
    fn queue(&self) -> Option<Arc<Queue>> {
        let s = self.service.upgrade()?;
        s.broker()?.vhost(&self.vhost)?.find_queue(&self.name)
    }
}

impl EffectRunner for Shared {
    fn leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    fn applied(&self, entry: &QueueEntry, applied: &Applied) {
        self.last_at.fetch_max(entry.at, Ordering::Relaxed);
        let ops = match entry.op() {
            QueueOp::Batch(ops) => ops.len() as u64,
            _ => 1,
        };
        self.ops_since_snapshot.fetch_add(ops, Ordering::Relaxed);
        if !self.leading.load(Ordering::Acquire) || applied.effects.is_empty() {
            return;
        }
        let (Some(service), Some(q)) = (self.service.upgrade(), self.queue()) else {
            return;
        };
        let term = self.term.load(Ordering::Acquire);
        // Deliveries that could not be sent (no connection to the consumer's node) go back,
        // uncounted, rather than stay checked out to a consumer that never saw them.
        let mut unsent = Vec::new();
        // Deliveries to other nodes' consumers, one lane frame per node for the entry (up to
        // LANE_BATCH_BYTES each), and each consumer's node looked up once per entry.
        let mut nodes = NodesOfTags::default();
        let mut out = LaneBatches::default();
        for effect in &applied.effects {
            match effect {
                Effect::Deliver(d) => {
                    let Some(consumer) = d.consumer else {
                        continue;
                    };
                    let Some(message) = d.message.as_ref() else {
                        // Its body was not read back (this member became leader while the
                        // entry was applied, or the log failed it): back it goes, uncounted.
                        if d.ack_required {
                            unsent.push(d.offset);
                        }
                        continue;
                    };
                    let (tag, _, local) = split_consumer(consumer);
                    let message = q.as_delivered(Arc::clone(message), d.returns);
                    match nodes.of(&service, tag) {
                        Some(node) if node.name == service.me => q.remote_deliver(
                            local,
                            term,
                            d.offset,
                            d.redelivered,
                            d.ack_required,
                            d.enqueued_at,
                            message,
                        ),
                        Some(node) => {
                            let delivery = wire::Delivery {
                                consumer: local,
                                offset: d.offset,
                                redelivered: d.redelivered,
                                ack_required: d.ack_required,
                                enqueued_at: d.enqueued_at,
                                message,
                            };
                            if let Some(full) = out.add(node, delivery) {
                                self.send_deliveries(&service, term, full, &mut unsent);
                            }
                        }
                        // Its node left the cluster: it stays checked out until the
                        // consumer is cancelled (the leader's sweep).
                        None => {}
                    }
                }
                Effect::ConsumerCancelled { consumer, .. } => {
                    let (tag, _, local) = split_consumer(*consumer);
                    // After the deliveries before it, on the same lane.
                    for batch in out.take_all() {
                        self.send_deliveries(&service, term, batch, &mut unsent);
                    }
                    match nodes.of(&service, tag) {
                        Some(node) if node.name == service.me => {
                            q.remote_consumer_cancelled(local);
                        }
                        Some(node) => {
                            service.lane_send(
                                node,
                                &LaneMsg::QuorumCancelled {
                                    vhost: self.vhost.clone(),
                                    queue: self.name.clone(),
                                    consumer: local,
                                },
                            );
                        }
                        None => {}
                    }
                }
                // The leader republishes it when it leaves the queue; at least once, the
                // queue keeps it until its targets confirm (`dead_letter_settled`), and the
                // leader routes again what is not confirmed (`leader_duties`).
                Effect::DeadLetter {
                    offset,
                    message: Some(message),
                    reason,
                    kept,
                    ..
                } => {
                    if *kept && !lock(&self.dead_letters).route(*offset) {
                        continue;
                    }
                    if let Some(vh) = service.broker().and_then(|b| b.vhost(&self.vhost)) {
                        vh.route_dead_letters(
                            &q,
                            vec![DeadLetter {
                                message: Arc::clone(message),
                                reason: *reason,
                                kept: kept.then_some(*offset),
                            }],
                        );
                    }
                }
                // A kept one whose body was not read back: routed again later.
                Effect::DeadLetter {
                    message: None,
                    kept: true,
                    ..
                } => lock(&self.dead_letters).retry_later(unix_ms()),
                Effect::Expired => service.propose_delete(&self.vhost, &self.name),
                _ => {}
            }
        }
        for batch in out.take_all() {
            self.send_deliveries(&service, term, batch, &mut unsent);
        }
        if !unsent.is_empty() {
            if let Some(link) = service.link_of(self) {
                link.write(QueueOp::Release(unsent), None);
            }
        }
    }
}

impl Shared {
    /// Sends one node's deliveries in one lane frame; what cannot go (no connection) and
    /// needs an ack goes to `unsent`.
    fn send_deliveries(
        &self,
        service: &QuorumService,
        term: u64,
        (node, deliveries): (PeerNode, Vec<wire::Delivery>),
        unsent: &mut Vec<u64>,
    ) {
        let msg = LaneMsg::QuorumDeliver {
            vhost: self.vhost.clone(),
            queue: self.name.clone(),
            term,
            deliveries,
        };
        if !service.lane_send(&node, &msg) {
            if let LaneMsg::QuorumDeliver { deliveries, .. } = msg {
                let offsets = deliveries.iter().filter(|d| d.ack_required);
                unsent.extend(offsets.map(|d| d.offset));
            }
        }
    }
}

/// Most message bytes one lane frame of deliveries carries (a larger message goes alone).
const LANE_BATCH_BYTES: usize = 1 << 20;

/// Deliveries gathered per consumer node while an entry's effects are run.
#[derive(Default)]
struct LaneBatches {
    batches: Vec<(PeerNode, Vec<wire::Delivery>, usize)>,
}

impl LaneBatches {
    /// Adds `d` for `node`; returns a batch that is full and must go now.
    fn add(
        &mut self,
        node: &PeerNode,
        d: wire::Delivery,
    ) -> Option<(PeerNode, Vec<wire::Delivery>)> {
        let len = d.encoded_len();
        let i = match self
            .batches
            .iter()
            .position(|(n, _, _)| n.name == node.name)
        {
            Some(i) => i,
            None => {
                self.batches.push((node.clone(), Vec::new(), 0));
                self.batches.len() - 1
            }
        };
        let (node, list, bytes) = &mut self.batches[i];
        let full = (*bytes > 0 && *bytes + len > LANE_BATCH_BYTES)
            .then(|| (node.clone(), std::mem::take(list)));
        if full.is_some() {
            *bytes = 0;
        }
        list.push(d);
        *bytes += len;
        full
    }

    fn take_all(&mut self) -> impl Iterator<Item = (PeerNode, Vec<wire::Delivery>)> + '_ {
        self.batches
            .drain(..)
            .filter(|(_, list, _)| !list.is_empty())
            .map(|(node, list, _)| (node, list))
    }
}

/// The node of each consumer tag, looked up once per entry (the member list is copied on
/// each lookup).
#[derive(Default)]
struct NodesOfTags(Vec<(u64, Option<PeerNode>)>);

impl NodesOfTags {
    fn of(&mut self, service: &QuorumService, tag: u64) -> Option<&PeerNode> {
        let i = match self.0.iter().position(|(t, _)| *t == tag) {
            Some(i) => i,
            None => {
                self.0.push((tag, service.node_of_tag(tag)));
                self.0.len() - 1
            }
        };
        self.0[i].1.as_ref()
    }
}

/// This node's replicated quorum queues.
pub(crate) struct QuorumService {
    this: Weak<QuorumService>,
    me: String,
    dir: PathBuf,
    queues: Weak<QueueService>,
    runtime: tokio::runtime::Handle,
    wal: Mutex<Option<SharedLog>>,
    groups: Mutex<HashMap<u64, Arc<OnceLock<Group>>>>,
    links: Mutex<HashMap<(String, String), Arc<QuorumLink>>>,
}

impl std::fmt::Debug for QuorumService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumService").finish_non_exhaustive()
    }
}

impl QuorumService {
    pub(crate) fn new(me: String, dir: PathBuf, queues: Weak<QueueService>) -> Arc<Self> {
        let service = Arc::new_cyclic(|this| QuorumService {
            this: this.clone(),
            me,
            dir,
            queues,
            runtime: tokio::runtime::Handle::current(),
            wal: Mutex::new(None),
            groups: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
        });
        service
            .runtime
            .spawn(watch_elections(Arc::downgrade(&service)));
        service
    }

    fn broker(&self) -> Option<Arc<pier_broker::Broker>> {
        self.queues.upgrade()?.broker()
    }

    fn node(&self) -> Option<Arc<crate::node::Node>> {
        self.queues.upgrade()?.node()
    }

    /// Whether this node's groups heartbeat and elect by openraft's timers (the default;
    /// `--quorum-heartbeats false`: decision 0009).
    fn heartbeats(&self) -> bool {
        self.node().is_some_and(|n| n.config.quorum_heartbeats)
    }

    /// The member whose Raft id has these top bits.
    fn node_of_tag(&self, tag: u64) -> Option<PeerNode> {
        let node = self.node()?;
        node.members()
            .into_iter()
            .find(|(id, _, _)| tag_of(*id) == tag)
            .map(|(_, p, _)| p)
    }

    fn peer(&self, name: &str) -> Option<PeerNode> {
        self.node()?.member(name).map(|(_, p)| p)
    }

    /// Sends a lane frame to `to`; `false` when it could not go (no connection).
    fn lane_send(&self, to: &PeerNode, msg: &LaneMsg) -> bool {
        let Some(node) = self.node() else {
            return false;
        };
        let Some(link) = node.transport.current_link(node_id(&to.name)) else {
            tracing::debug!(to = %to.name, "no connection for a quorum queue delivery");
            return false;
        };
        match wire::encode(msg) {
            Ok(frame) => link.lane_send(frame),
            Err(e) => {
                tracing::warn!("a quorum lane frame does not encode: {e}");
                false
            }
        }
    }

    /// The connection to `peer` ended: what the groups this node leads had handed to that
    /// node's consumers may or may not have arrived (frames still queued, or lost with the
    /// connection), and more would not get there. Its consumers are suspected (RabbitMQ's
    /// suspected_down): what they had goes back flagged redelivered, uncounted, and they get
    /// nothing until the leader's sweep sees the node in reach again. A consumer there that
    /// did get a delivery may still ack it: the ack (same term) settles it wherever it went
    /// since.
    pub(crate) fn peer_lost(&self, peer: &str) {
        let tag = tag_of(node_id(peer));
        let groups: Vec<Arc<OnceLock<Group>>> = lock(&self.groups).values().cloned().collect();
        for slot in groups {
            let Some(g) = slot.get() else { continue };
            if !g.shared.leading.load(Ordering::Acquire) {
                continue;
            }
            let theirs: Vec<u64> = {
                let m = lock(&g.shared.machine);
                let e = m.engine();
                let suspected: HashSet<u64> = e.suspected_consumers().collect();
                e.consumers()
                    .map(|(c, _, _)| c)
                    .filter(|c| split_consumer(*c).0 == tag && !suspected.contains(c))
                    .collect()
            };
            if theirs.is_empty() {
                continue;
            }
            if let Some(link) = self.link_of(&g.shared) {
                for consumer in theirs {
                    link.write(
                        QueueOp::Suspect {
                            consumer,
                            suspected: true,
                        },
                        None,
                    );
                }
            }
        }
    }

    fn link_of(&self, shared: &Shared) -> Option<Arc<QuorumLink>> {
        lock(&self.links)
            .get(&(shared.vhost.clone(), shared.name.clone()))
            .cloned()
    }

    fn propose_delete(&self, vhost: &str, name: &str) {
        if let Some(q) = self.queues.upgrade() {
            use pier_broker::cluster::Cluster;
            q.delete_queue(vhost, name, "x-expires");
        }
    }

    fn wal(&self) -> Result<SharedLog, pier_store::wal::WalError> {
        let mut wal = lock(&self.wal);
        if let Some(w) = wal.as_ref() {
            return Ok(w.clone());
        }
        let w = SharedLog::open(WalConfig::new(self.dir.join("quorum-wal")))?;
        *wal = Some(w.clone());
        Ok(w)
    }

    /// The link of a replicated quorum queue (opening its group here when this node is a
    /// member); `None` when the queue is not one.
    pub(crate) fn link(
        &self,
        vhost: &str,
        name: &str,
        home: &crate::metadata::QueueHome,
        config: EngineConfig,
    ) -> Option<Arc<QuorumLink>> {
        if home.group == 0 {
            return None;
        }
        let key = (vhost.to_owned(), name.to_owned());
        let mut links = lock(&self.links);
        if let Some(l) = links.get(&key) {
            if l.group == home.group {
                return Some(Arc::clone(l));
            }
        }
        let link = Arc::new(QuorumLink::new(self.this.clone(), vhost, name, home));
        links.insert(key, Arc::clone(&link));
        drop(links);
        if home.members.contains(&self.me) {
            self.open_group(&link, home, config, home.home == self.me);
        }
        link.start_writer(&self.runtime);
        Some(link)
    }

    /// Starts this node's member of the queue's group; `initialize`: it forms the group (the
    /// declaring node, once), else the leader adds it or it already belongs.
    fn open_group(
        &self,
        link: &Arc<QuorumLink>,
        home: &crate::metadata::QueueHome,
        config: EngineConfig,
        initialize: bool,
    ) {
        let slot = Arc::clone(lock(&self.groups).entry(home.group).or_default());
        if slot.get().is_some() {
            return;
        }
        let shared = Arc::new(Shared {
            group: home.group,
            vhost: link.vhost.clone(),
            name: link.name.clone(),
            service: self.this.clone(),
            machine: Arc::new(Mutex::new(QueueMachine::new(config.clone()))),
            config,
            leading: AtomicBool::new(false),
            term: AtomicU64::new(0),
            last_at: AtomicU64::new(0),
            ops_since_snapshot: AtomicU64::new(0),
            dead_letters: Mutex::new(Default::default()),
            seen_consumers: Mutex::new(HashSet::new()),
            policy_wanted: Mutex::new(None),
            proposer: std::sync::OnceLock::new(),
        });
        *lock(&link.shared) = Some(Arc::clone(&shared));
        let members = home.members.clone();
        let service = self.this.clone();
        self.runtime.spawn(async move {
            let Some(s) = service.upgrade() else { return };
            match s.start_group(&shared, &members, initialize).await {
                Ok(group) => {
                    let _ = slot.set(group);
                }
                Err(e) => tracing::error!(
                    vhost = %shared.vhost, queue = %shared.name,
                    "the quorum queue's Raft group did not start: {e}"
                ),
            }
        });
    }

    async fn start_group(
        &self,
        shared: &Arc<Shared>,
        members: &[String],
        initialize: bool,
    ) -> Result<Group, String> {
        // At start-up the broker recovers its queues (and asks for their links) before the
        // node's cluster part runs: the group starts once it does.
        let mut waited = 0;
        let node = loop {
            if let Some(n) = self.node() {
                break n;
            }
            if waited >= 600 || self.queues.strong_count() == 0 {
                return Err("the node did not start".into());
            }
            waited += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let wal = self.wal().map_err(|e| e.to_string())?;
        let store = Arc::new(WalLogStore::retaining(wal.group(shared.group)));
        lock(&shared.machine).set_bodies(Arc::new(LogBodies::new(Arc::clone(&store))));
        let log = RaftLog::new(Arc::clone(&store)).map_err(|e| e.to_string())?;
        let config =
            queue_config(shared.group, node.config.quorum_heartbeats).map_err(|e| e.to_string())?;
        let sm = QueueStateMachine::open(
            Arc::clone(&shared.machine),
            Arc::clone(shared) as Arc<dyn EffectRunner>,
            self.snapshot_dir(shared.group),
            shared.config.clone(),
        )
        .map_err(|e| e.to_string())?;
        let raft = QueueRaft::new(
            node_id(&self.me),
            Arc::new(config),
            NetworkFactory {
                transport: node.transport.clone(),
                route: QueueRoute(shared.group),
            },
            log,
            sm,
        )
        .await
        .map_err(|e| e.to_string())?;
        if initialize && !raft.is_initialized().await.map_err(|e| e.to_string())? {
            let mut voters = std::collections::BTreeMap::new();
            for m in members {
                if let Some(p) = self.peer(m) {
                    voters.insert(node_id(&p.name), p);
                }
            }
            if let Err(e) = raft.initialize(voters).await {
                tracing::debug!("initializing a quorum queue group: {e}");
            }
        }
        let weak = Arc::downgrade(shared);
        let stamper: Stamp = Arc::new(move |e: &mut QueueEntry| {
            if let Some(s) = weak.upgrade() {
                stamp(&s, e);
            }
        });
        let _ = shared
            .proposer
            .set(Proposer::start(raft.clone(), stamper, &self.runtime));
        let tasks = vec![
            self.runtime
                .spawn(watch_leadership(raft.clone(), Arc::clone(shared))),
            self.runtime
                .spawn(leader_duties(raft.clone(), Arc::clone(shared), store)),
        ];
        Ok(Group {
            raft,
            shared: Arc::clone(shared),
            tasks,
        })
    }

    fn snapshot_dir(&self, group: u64) -> PathBuf {
        self.dir
            .join("quorum-snapshots")
            .join(format!("{group:016x}"))
    }

    fn group(&self, group: u64) -> Option<(QueueRaft, Arc<Shared>)> {
        let slot = lock(&self.groups).get(&group).cloned()?;
        slot.get().map(|g| (g.raft.clone(), Arc::clone(&g.shared)))
    }

    /// The queue is gone: its group stops here and its log is dropped.
    pub(crate) fn remove(&self, vhost: &str, name: &str) {
        let link = lock(&self.links).remove(&(vhost.to_owned(), name.to_owned()));
        let Some(link) = link else { return };
        link.closed.store(true, Ordering::Release);
        self.close_group(&link);
    }

    /// This node stops being a member of the link's group: the group stops and its log and
    /// snapshot go.
    fn close_group(&self, link: &QuorumLink) {
        *lock(&link.shared) = None;
        let slot = lock(&self.groups).remove(&link.group);
        let wal = lock(&self.wal).clone();
        let group = link.group;
        let snapshots = self.snapshot_dir(group);
        self.runtime.spawn(async move {
            if let Some(g) = slot.as_ref().and_then(|s| s.get()) {
                for t in &g.tasks {
                    t.abort();
                }
                let _ = g.raft.shutdown().await;
            }
            if let Some(w) = wal {
                let _ = w.forget(group, Box::new(|_| {}));
            }
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(snapshots)).await;
        });
    }

    /// The queue's members changed: this node opens its group (a new member, caught up by
    /// the leader) or closes it (removed).
    pub(crate) fn members_changed(
        &self,
        vhost: &str,
        name: &str,
        home: &crate::metadata::QueueHome,
    ) {
        let link = lock(&self.links)
            .get(&(vhost.to_owned(), name.to_owned()))
            .cloned();
        let Some(link) = link else { return };
        *lock(&link.members) = home.members.clone();
        let member = home.members.contains(&self.me);
        let running = lock(&link.shared).is_some();
        if member && !running {
            let config = self
                .broker()
                .and_then(|b| b.vhost(vhost))
                .and_then(|v| v.find_queue(name))
                .map(|q| EngineConfig::quorum((*q.config()).clone()));
            if let Some(config) = config {
                // The leader adds it to the group's membership.
                self.open_group(&link, home, config, false);
            }
        } else if !member && running {
            self.close_group(&link);
        }
    }

    /// A membership change of a group this node leads (or, `Elect`, a member asked to
    /// take the lead).
    pub(crate) async fn serve_members(&self, group: u64, change: MemberChange) -> Response {
        let Some((raft, shared)) = self.group(group) else {
            return Response::QueueMembers(Err(ForwardError::Failed(format!(
                "no quorum queue group {group:x} here"
            ))));
        };
        match change {
            MemberChange::Elect => {
                return Response::QueueMembers(
                    raft.trigger()
                        .elect()
                        .await
                        .map_err(|e| ForwardError::Failed(e.to_string())),
                );
            }
            MemberChange::Heartbeat(on) => {
                // Groups without heartbeats (decision 0009) keep them off.
                if self.heartbeats() {
                    raft.runtime_config().heartbeat(on);
                }
                return Response::QueueMembers(Ok(()));
            }
            MemberChange::Add(_) | MemberChange::Remove(_) => {}
        }
        if !shared.leading.load(Ordering::Acquire) {
            return Response::QueueMembers(Err(not_leader(&raft)));
        }
        let r = match change {
            MemberChange::Add(peer) => {
                let id = node_id(&peer.name);
                match raft.add_learner(id, peer, true).await {
                    Ok(_) => raft
                        .change_membership(openraft::ChangeMembers::AddVoterIds([id].into()), false)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                }
            }
            MemberChange::Remove(name) => {
                let id = node_id(&name);
                raft.change_membership(openraft::ChangeMembers::RemoveVoters([id].into()), false)
                    .await
                    .map(|_| ())
            }
            MemberChange::Elect | MemberChange::Heartbeat(_) => Ok(()),
        };
        Response::QueueMembers(r.map_err(|e| ForwardError::Failed(e.to_string())))
    }

    /// A peer's Raft RPC for a group of this node.
    pub(crate) async fn serve_raft(
        &self,
        group: u64,
        request: crate::raft::network::RaftRequest<crate::raft::queue_group::QueueTypeConfig>,
    ) -> Response {
        match self.group(group) {
            Some((raft, _)) => Response::Raft(crate::raft::network::serve(&raft, request).await),
            None => Response::Refused(format!("no quorum queue group {group:x} here")),
        }
    }

    /// Entries forwarded by another node: appended here if this member leads.
    pub(crate) async fn serve_write(&self, group: u64, entries: Vec<QueueEntry>) -> Response {
        let Some((raft, shared)) = self.group(group) else {
            return Response::QueueWrite(Err(ForwardError::Failed(format!(
                "no quorum queue group {group:x} here"
            ))));
        };
        if !shared.leading.load(Ordering::Acquire) {
            return Response::QueueWrite(Err(not_leader(&raft)));
        }
        let Some(proposer) = shared.proposer.get() else {
            return Response::QueueWrite(Err(not_leader(&raft)));
        };
        let bytes = entries.iter().map(|e| op_body_len(e.op())).sum();
        let answer = proposer
            .propose(
                entries.into_iter().map(QueueEntry::into_op).collect(),
                bytes,
            )
            .await;
        Response::QueueWrite(match answer.await {
            Ok(Outcome::Applied(replies)) => Ok(replies),
            Ok(Outcome::NotLeader(leader)) => Err(ForwardError::NotLeader { leader }),
            Ok(Outcome::Failed(e)) => Err(ForwardError::Failed(e)),
            Err(_) => Err(ForwardError::Failed("the group stopped".into())),
        })
    }

    /// A lane frame from a quorum queue's leader.
    pub(crate) fn lane(&self, msg: LaneMsg) {
        let Some(broker) = self.broker() else { return };
        match msg {
            LaneMsg::QuorumDeliver {
                vhost,
                queue,
                term,
                deliveries,
            } => {
                let key = (vhost, queue);
                if let Some(l) = lock(&self.links).get(&key) {
                    l.seen_term.fetch_max(term, Ordering::AcqRel);
                }
                let (vhost, queue) = key;
                if let Some(q) = broker.vhost(&vhost).and_then(|v| v.find_queue(&queue)) {
                    for d in deliveries {
                        q.remote_deliver(
                            d.consumer,
                            term,
                            d.offset,
                            d.redelivered,
                            d.ack_required,
                            d.enqueued_at,
                            d.message,
                        );
                    }
                }
            }
            LaneMsg::QuorumCancelled {
                vhost,
                queue,
                consumer,
            } => {
                if let Some(q) = broker.vhost(&vhost).and_then(|v| v.find_queue(&queue)) {
                    q.remote_consumer_cancelled(consumer);
                }
            }
            _ => {}
        }
    }

    /// This member's view of the queue's group (`None`: not a member, or not started).
    pub(crate) fn group_status(&self, group: u64) -> Option<GroupStatus> {
        let (raft, _) = self.group(group)?;
        let m = raft.metrics().borrow().clone();
        Some(GroupStatus {
            state: match m.state {
                openraft::ServerState::Leader => "leader",
                openraft::ServerState::Follower => "follower",
                openraft::ServerState::Candidate => "candidate",
                openraft::ServerState::Learner => "learner",
                openraft::ServerState::Shutdown => "shutdown",
            }
            .to_owned(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: m.last_applied.map_or(0, |l| l.index),
            leader: crate::raft::leader_of(&m).map(|(_, p)| p.name),
        })
    }

    /// The leader of a queue's group as this node's member of it knows it (`None` on a node
    /// that is not a member).
    pub(crate) fn leader_of(&self, vhost: &str, name: &str) -> Option<String> {
        let link = lock(&self.links)
            .get(&(vhost.to_owned(), name.to_owned()))
            .cloned()?;
        self.group_status(link.group).and_then(|s| s.leader)
    }
}

/// The leader's clocks, never behind what the group applied before.
fn stamp(shared: &Shared, entry: &mut QueueEntry) {
    let now = unix_ms();
    let at = now.max(shared.last_at.load(Ordering::Relaxed));
    shared.last_at.store(at, Ordering::Relaxed);
    entry.set_clock(at, now);
}

/// With `--quorum-heartbeats false` (decision 0009): starts elections in this node's
/// groups and heartbeats the groups it leads now and then and when a member's node comes
/// back, as [`ElectionTimers`] decides from the node's pings (the groups themselves neither
/// heartbeat nor elect then: `raft/queue_group.rs`).
async fn watch_elections(service: Weak<QuorumService>) {
    let mut timers = ElectionTimers::default();
    let mut voters_of: HashMap<u64, (Arc<crate::raft::queue_group::QueueMembership>, Vec<u64>)> =
        HashMap::new();
    let mut up: HashSet<u64> = HashSet::new();
    let mut back: HashMap<u64, Instant> = HashMap::new();
    let mut every = tokio::time::interval(ELECTION_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(s) = service.upgrade() else { return };
        let Some(node) = s.node() else { continue };
        if node.config.quorum_heartbeats {
            // openraft's own timers elect and heartbeat (the setting does not change while
            // the node runs).
            return;
        }
        let me = node_id(&s.me);
        let now = Instant::now();
        let now_up: HashSet<u64> = node
            .members()
            .into_iter()
            .map(|(id, _, _)| id)
            .filter(|id| node.heard_within(*id, PEER_DOWN_AFTER))
            .collect();
        for id in now_up.difference(&up) {
            back.insert(*id, now);
        }
        back.retain(|_, at| now.saturating_duration_since(*at) < BACK_FOR);
        up = now_up;
        let groups: Vec<(u64, QueueRaft)> = lock(&s.groups)
            .iter()
            .filter_map(|(g, slot)| slot.get().map(|x| (*g, x.raft.clone())))
            .collect();
        drop(s);
        for (group, raft) in &groups {
            let (role, leader, membership) = {
                let m = raft.metrics();
                let m = m.borrow();
                let role = match m.state {
                    openraft::ServerState::Leader => Role::Leader,
                    openraft::ServerState::Follower | openraft::ServerState::Candidate => {
                        Role::Voter
                    }
                    openraft::ServerState::Learner | openraft::ServerState::Shutdown => Role::Other,
                };
                (role, m.current_leader, Arc::clone(&m.membership_config))
            };
            // A group's voters change rarely; listing them (openraft builds a set) for every
            // group five times a second was most of an idle node's CPU in this loop.
            let voters = match voters_of.get(group) {
                Some((seen, v)) if Arc::ptr_eq(seen, &membership) => v,
                _ => {
                    let v: Vec<u64> = membership.membership().voter_ids().collect();
                    &voters_of
                        .entry(*group)
                        .insert_entry((membership, v))
                        .into_mut()
                        .1
                }
            };
            let view = GroupView {
                group: *group,
                role,
                leader,
                voters,
            };
            let action = timers.decide(
                me,
                &view,
                |id| up.contains(&id),
                |id| back.contains_key(&id),
                now,
            );
            let raft = raft.clone();
            match action {
                Action::Wait => {}
                Action::Elect => {
                    tracing::debug!(group = %format!("{group:x}"), ?leader, "quorum queue: starting an election");
                    tokio::spawn(async move {
                        let _ = raft.trigger().elect().await;
                    });
                }
                Action::Heartbeat => {
                    tokio::spawn(async move {
                        let _ = raft.trigger().heartbeat().await;
                    });
                }
            }
        }
        let present: HashSet<u64> = groups.iter().map(|(g, _)| *g).collect();
        timers.retain(|g| present.contains(&g));
        voters_of.retain(|g, _| present.contains(g));
    }
}

/// Follows the group's leadership: who leads, in which term; a member that starts leading
/// returns what was checked out before (once everything committed before it is applied).
async fn watch_leadership(raft: QueueRaft, shared: Arc<Shared>) {
    let mut metrics = raft.metrics();
    let me = raft.metrics().borrow().id;
    let mut led_in: Option<u64> = None;
    loop {
        let (leading, term, last_log) = {
            let m = metrics.borrow_and_update();
            (
                m.current_leader == Some(me),
                m.current_term,
                m.last_log_index.unwrap_or(0),
            )
        };
        shared.term.store(term, Ordering::Release);
        if leading && led_in != Some(term) {
            led_in = Some(term);
            // A leader heartbeats (a transfer that stopped them, then failed to resume
            // them, must not leave this member leading silently next time), unless the
            // node runs its groups without heartbeats (decision 0009).
            if shared.service.upgrade().is_some_and(|s| s.heartbeats()) {
                raft.runtime_config().heartbeat(true);
            }
            // Everything up to this leader's first entry is applied before anything is
            // returned: then the checked-out set is the whole group's.
            let waited = raft
                .wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(Some(last_log), "leader catch-up")
                .await;
            if waited.is_ok() {
                shared.leading.store(true, Ordering::Release);
                // The dead letters the queue keeps go again from here (those the last
                // leader had on their way included: at least once).
                lock(&shared.dead_letters).restart();
                let offsets = lock(&shared.machine).engine().checked_out_offsets();
                if !offsets.is_empty() {
                    // Failed deliveries: their count goes up by one (RabbitMQ 4.3's too).
                    let mut entry = QueueEntry::new(0, 0, QueueOp::Fail(offsets));
                    stamp(&shared, &mut entry);
                    let _ = raft.client_write(entry).await;
                }
            }
        } else if !leading {
            led_in = None;
            shared.leading.store(false, Ordering::Release);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// A member snapshots its queue once this many ops were applied since the last one...
const SNAPSHOT_EVERY: u64 = 4096;
/// ...the queue holds no more than this many bytes of messages...
const SNAPSHOT_MAX_BYTES: u64 = 16 << 20;
/// ...and at most this share of those entries are still in the queue: a snapshot then frees
/// far more log than it copies. A growing backlog stays in the log (where it already is)
/// instead of being copied again at every snapshot.
const SNAPSHOT_MAX_LIVE_SHARE: u64 = 4;

/// While leading: ticks (TTL, consumer timeouts, `x-expires`) when the engine has one due,
/// consumers of nodes that left cancelled, of nodes that stopped answering suspected (and
/// no longer once they answer again); on every member: the
/// queue's figures for management, and snapshots that bound the log.
async fn leader_duties(raft: QueueRaft, shared: Arc<Shared>, store: Arc<WalLogStore>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (due, stats, counters, consumers, suspected, needed) = {
            let m = lock(&shared.machine);
            let e = m.engine();
            (
                e.next_tick() <= unix_ms(),
                e.stats(),
                e.counters(),
                e.consumers().map(|(id, _, _)| id).collect::<Vec<_>>(),
                e.suspected_consumers().collect::<HashSet<_>>(),
                m.log_needed_from(),
            )
        };
        // Bodies only in the log keep their entries on disk; behind them, purges go ahead.
        if let Err(e) = store.retain_from(needed) {
            tracing::warn!(queue = %shared.name, "quorum queue log purge: {e}");
        }
        if let Some(q) = shared.queue() {
            // Every member applies the same entries, so its counts are the leader's: any
            // node's management shows the queue's rates.
            q.set_remote_figures(stats, counters.into());
        }
        // Counted in ops, not entries: an entry is often a batch of many.
        let since = shared.ops_since_snapshot.load(Ordering::Relaxed);
        if since >= SNAPSHOT_EVERY
            && stats.ready_bytes <= SNAPSHOT_MAX_BYTES
            && (stats.ready + stats.unacked).saturating_mul(SNAPSHOT_MAX_LIVE_SHARE) <= since
            && raft.trigger().snapshot().await.is_ok()
        {
            shared.ops_since_snapshot.store(0, Ordering::Relaxed);
        }
        reconcile_consumers(&shared, &consumers);
        if let Some(op) = policy_to_retry(&shared) {
            // Through the queue's writer, to wherever the leader is.
            if let Some(link) = shared.service.upgrade().and_then(|s| s.link_of(&shared)) {
                link.write(op, None);
            }
        }
        if !shared.leading.load(Ordering::Acquire) {
            continue;
        }
        retry_dead_letters(&shared);
        let mut ops = Vec::new();
        if due {
            ops.push(QueueOp::Tick);
        }
        // (An idle queue has no consumers to check: no member list built for it.)
        if let Some(service) = shared.service.upgrade().filter(|_| !consumers.is_empty()) {
            if let Some(node) = service.node() {
                let members = node.members();
                for c in &consumers {
                    let (tag, inc, _) = split_consumer(*c);
                    let Some((id, _, _)) = members.iter().find(|(id, _, _)| tag_of(*id) == tag)
                    else {
                        // Its node left the cluster: the consumer is gone for good.
                        ops.push(QueueOp::Cancel { consumer: *c });
                        continue;
                    };
                    let ended = if *id == node.me_id {
                        inc != incarnation()
                    } else {
                        node.incarnation_ended(*id, inc)
                    };
                    if ended {
                        // Its node restarted since: the consumer went with the earlier run.
                        ops.push(QueueOp::Cancel { consumer: *c });
                        continue;
                    }
                    // A node out of reach (not answering, or not connected: a lost
                    // connection suspected it) may come back with its consumers still
                    // there (a partition, a pause): RabbitMQ's suspected_down, not a
                    // cancel. A consumer that went meanwhile is cancelled once its node is
                    // back (`reconcile_consumers`, `consumer_unknown`).
                    let running = *id == node.me_id
                        || (node.is_running(*id) && node.transport.current_link(*id).is_some());
                    if running == suspected.contains(c) {
                        ops.push(QueueOp::Suspect {
                            consumer: *c,
                            suspected: !running,
                        });
                    }
                }
            }
        }
        for op in ops {
            let mut entry = QueueEntry::new(0, 0, op);
            stamp(&shared, &mut entry);
            let _ = raft.client_write(entry).await;
        }
    }
}

/// A policy change this node asked for and the queue has not applied yet, proposed again
/// (a duplicate of one still on its way is harmless: members apply each version once).
fn policy_to_retry(shared: &Shared) -> Option<QueueOp> {
    let mut wanted = lock(&shared.policy_wanted);
    let (version, settings, tried) = wanted.as_mut()?;
    if lock(&shared.machine).policy_version() >= *version {
        *wanted = None;
        return None;
    }
    if tried.elapsed() < WRITE_DEADLINE {
        return None;
    }
    *tried = Instant::now();
    tracing::info!(vhost = %shared.vhost, queue = %shared.name, version = *version, "a policy change the quorum queue has not applied is proposed again");
    Some(QueueOp::Reconfigure {
        version: *version,
        settings: settings.clone(),
    })
}

/// The leader routes again the kept (at-least-once) dead letters that are not on their way,
/// once their retry time has come.
fn retry_dead_letters(shared: &Shared) {
    if !lock(&shared.dead_letters).take_retry(unix_ms()) {
        return;
    }
    let (Some(service), Some(q)) = (shared.service.upgrade(), shared.queue()) else {
        return;
    };
    let Some(vh) = service.broker().and_then(|b| b.vhost(&shared.vhost)) else {
        return;
    };
    // Both locks released before routing: a target's answer can come back at once.
    let dead: Vec<DeadLetter> = {
        let mut flight = lock(&shared.dead_letters);
        let kept = lock(&shared.machine).kept_dead_letters(|o| !flight.on_its_way(o));
        let mut unread = false;
        let dead = kept
            .into_iter()
            .filter_map(|(offset, message, reason)| match message {
                Some(message) => {
                    flight.route(offset);
                    Some(DeadLetter {
                        message,
                        reason,
                        kept: Some(offset),
                    })
                }
                None => {
                    unread = true;
                    None
                }
            })
            .collect();
        if unread {
            // A body the log could not give: tried again later.
            flight.retry_later(unix_ms());
        }
        dead
    };
    vh.route_dead_letters(&q, dead);
}

/// The group holds consumers of this node that are gone here (their cancel was lost with a
/// leader, or they belonged to an earlier run of this node): cancel them, so that their
/// checked-out messages return. Every member checks its own node's.
fn reconcile_consumers(shared: &Shared, consumers: &[u64]) {
    let (Some(service), Some(q)) = (shared.service.upgrade(), shared.queue()) else {
        return;
    };
    let Some(node) = service.node() else { return };
    let live: HashSet<ConsumerId> = q.remote_consumer_ids().into_iter().collect();
    let link = lock(&service.links)
        .get(&(shared.vhost.clone(), shared.name.clone()))
        .cloned();
    let Some(link) = link else { return };
    for c in consumers {
        let (tag, inc, local) = split_consumer(*c);
        if tag != tag_of(node.me_id) {
            continue;
        }
        if inc != incarnation() || !live.contains(&local) {
            link.write(QueueOp::Cancel { consumer: *c }, None);
        }
    }
    // The other way round: a consumer still subscribed here that the group had and no
    // longer has was cancelled by the leader (its node looked gone: a partition) and the
    // notice did not get here. Its client is told now (basic.cancel), rather than wait
    // for deliveries that will never come. (A consumer whose checkout is not applied yet
    // was never seen, so it is left alone.)
    let in_group: HashSet<u64> = consumers.iter().copied().collect();
    let mut seen = lock(&shared.seen_consumers);
    for local in &live {
        let global = global_consumer(node.me_id, *local);
        if in_group.contains(&global) {
            seen.insert(global);
        } else if seen.remove(&global) {
            tracing::info!(queue = %shared.name, consumer = local, "a consumer the quorum queue's leader cancelled is told");
            q.remote_consumer_cancelled(*local);
        }
    }
    seen.retain(|g| live.contains(&split_consumer(*g).2));
}

/// A replicated quorum queue as one node's handle reaches it.
pub(crate) struct QuorumLink {
    service: Weak<QuorumService>,
    group: u64,
    vhost: String,
    name: String,
    home: String,
    members: Mutex<Vec<String>>,
    /// This node's group, while it is a member.
    shared: Mutex<Option<Arc<Shared>>>,
    /// The highest term a delivery came in (a node that is not a member learns it so).
    seen_term: AtomicU64,
    /// The writer's queue. Not bounded here: what goes in is bounded where it comes from
    /// (a publish holds its connection's credit until confirmed, settlements and credit
    /// follow deliveries that prefetch and credit bound), and a bound here would have to
    /// drop or reorder (the broker calls in under its locks and cannot wait).
    writes: OnceLock<mpsc::UnboundedSender<Write>>,
    /// Consumers in credit mode (no-ack): their credit goes back through the log.
    credit_mode: Mutex<HashSet<ConsumerId>>,
    closed: AtomicBool,
}

impl QuorumLink {
    fn new(
        service: Weak<QuorumService>,
        vhost: &str,
        name: &str,
        home: &crate::metadata::QueueHome,
    ) -> Self {
        QuorumLink {
            service,
            group: home.group,
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            home: home.home.clone(),
            members: Mutex::new(home.members.clone()),
            shared: Mutex::new(None),
            seen_term: AtomicU64::new(0),
            writes: OnceLock::new(),
            credit_mode: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
        }
    }

    fn start_writer(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.writes.set(tx).is_ok() {
            runtime.spawn(writer(Arc::downgrade(self), rx));
        }
    }

    /// Queues a write; `done` gets its outcome.
    fn write(&self, op: QueueOp, done: Option<Done>) {
        let Some(tx) = self.writes.get() else { return };
        let w = Write {
            entry: QueueEntry::new(0, 0, op),
            done,
            attempts: 0,
        };
        self.send(tx, w);
    }

    fn send(&self, tx: &mpsc::UnboundedSender<Write>, w: Write) {
        if let Err(mpsc::error::SendError(w)) = tx.send(w) {
            if let Some(d) = w.done {
                d.send(Err("the queue is closed".into()));
            }
        }
    }

    fn ask(&self, op: QueueOp) -> oneshot::Receiver<WriteResult> {
        let (tx, rx) = oneshot::channel();
        self.write(op, Some(Done::Reply(tx)));
        rx
    }

    fn term(&self) -> u64 {
        let local = lock(&self.shared)
            .as_ref()
            .map_or(0, |s| s.term.load(Ordering::Acquire));
        local.max(self.seen_term.load(Ordering::Acquire))
    }

    /// Where writes go now: this node (it leads), or the leader it knows, or a member.
    fn target(&self, service: &QuorumService, tried: usize) -> Target {
        if let Some((raft, shared)) = service.group(self.group) {
            if shared.leading.load(Ordering::Acquire) {
                return Target::Local(raft, shared);
            }
            return match crate::raft::leader_of(&raft.metrics().borrow()) {
                Some((_, p)) if p.name != service.me => Target::Remote(p),
                _ => Target::Wait,
            };
        }
        let members = lock(&self.members).clone();
        if members.contains(&service.me) {
            // A member whose group has not started yet.
            return Target::Wait;
        }
        // Not a member: a member passes it on (round robin over attempts).
        let n = members.len().max(1);
        let name = members.get(tried % n).unwrap_or(&self.home);
        match service.peer(name) {
            Some(p) => Target::Remote(p),
            None => Target::Wait,
        }
    }
}

enum Target {
    Local(QueueRaft, Arc<Shared>),
    Remote(PeerNode),
    Wait,
}

/// One per link: sends its writes, in order, to wherever the group's leader is.
///
/// Publishes carry this writer's publisher id and a sequence number given here, in queue
/// order: a batch resent after a leader change (its answer lost, or it never arrived) is
/// enqueued once, as the queue's engine drops a sequence it has seen.
async fn writer(link: Weak<QuorumLink>, mut rx: mpsc::UnboundedReceiver<Write>) {
    let publisher: u64 = rand::random();
    let mut seq: u64 = 0;
    let mut sequenced = |mut w: Write| {
        if let QueueOp::Enqueue { publisher: p, .. } = w.entry.op_mut() {
            seq += 1;
            *p = Some((publisher, seq));
        }
        w
    };
    // Writes to send, oldest first: new ones, and before them those of proposals a lost
    // leadership left undecided.
    let mut queue: VecDeque<Write> = VecDeque::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    let (undecided_tx, mut undecided_rx) = mpsc::unbounded_channel::<Undecided>();
    let mut proposals: u64 = 0;
    // The term of this node's leadership in which its latest publish batch was proposed
    // (while those proposals may still be undecided), and whether the writer must wait for
    // every batch on its way before it sends anything else.
    let mut local_publishes: Option<u64> = None;
    let mut settle = false;
    loop {
        let mut undecided = Vec::new();
        if queue.is_empty() {
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => queue.push_back(sequenced(w)),
                    None => return,
                },
                Some(u) = undecided_rx.recv() => undecided.push(u),
            }
        }
        // A slot first, then the batch: what arrives meanwhile joins it.
        let Ok(slot) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        // A proposal of this node's came back undecided (its leadership was lost before it
        // committed; the new leader may still commit it). Its writes go again, before
        // anything newer and in their order, once every batch on its way is answered: a
        // publish the new leader has already is then recognised by its sequence number
        // (the engine keeps the highest per publisher) and accepted once, a publish it has
        // not is enqueued, and no newer publish can overtake an older one.
        while let Ok(u) = undecided_rx.try_recv() {
            undecided.push(u);
        }
        if !undecided.is_empty() || std::mem::take(&mut settle) {
            drop(slot);
            let all = match tokio::time::timeout(
                WRITE_DEADLINE,
                Arc::clone(&in_flight).acquire_many_owned(BATCHES_IN_FLIGHT as u32),
            )
            .await
            {
                Ok(Ok(all)) => all,
                Ok(Err(_)) => return,
                Err(_) => {
                    // Still unanswered (this node is cut off from the group's leader):
                    // what waits is nacked rather than left without an answer, the
                    // undecided writes too (they may or may not be in the log); the wait
                    // goes on for what comes next.
                    let mut waiting: Vec<Write> = undecided
                        .drain(..)
                        .flat_map(|u| u.writes)
                        .chain(queue.drain(..))
                        .collect();
                    fail(&mut waiting, "the quorum queue has no leader");
                    settle = true;
                    continue;
                }
            };
            while let Ok(u) = undecided_rx.try_recv() {
                undecided.push(u);
            }
            drop(all);
            local_publishes = None;
            if undecided.is_empty() {
                continue;
            }
            // Time for this node to see that it no longer leads (else a member that still
            // thinks it leads would spend the attempts at once).
            tokio::time::sleep(Duration::from_millis(100)).await;
            undecided.sort_by_key(|u| u.proposal);
            for w in undecided
                .into_iter()
                .rev()
                .flat_map(|u| u.writes.into_iter().rev())
            {
                queue.push_front(w);
            }
            continue;
        }
        let mut batch: Vec<Write> = Vec::new();
        let mut bytes: usize = 0;
        while batch.len() < WRITE_BATCH && bytes < WRITE_BATCH_BYTES {
            let w = match queue.pop_front() {
                Some(w) => w,
                None => match rx.try_recv() {
                    Ok(w) => sequenced(w),
                    Err(_) => break,
                },
            };
            bytes += w.body_len();
            batch.push(w);
        }
        let Some(l) = link.upgrade() else { return };
        let Some(service) = l.service.upgrade() else {
            return;
        };
        let target = l.target(&service, 0);
        let term = match &target {
            Target::Local(raft, _) => Some(raft.metrics().borrow().current_term),
            _ => None,
        };
        // Publish batches proposed here may still be undecided. Only a proposal to the same
        // leader in the same term is ordered after them by the log itself (it cannot commit
        // unless they do); one sent to another leader, or proposed here after a re-election,
        // could commit first, and the engine (which keeps each publisher's highest sequence)
        // would then take the older ones, sent again, for resends and drop them although
        // never enqueued. So the writer first waits for their answers (those undecided go
        // again first), and this batch goes after them.
        if local_publishes.is_some() && local_publishes != term {
            for w in batch.into_iter().rev() {
                queue.push_front(w);
            }
            drop(slot);
            settle = true;
            continue;
        }
        proposals += 1;
        let undecided = (proposals, undecided_tx.clone());
        // Settlements, credit and cancels commute: while the leader is elsewhere, several of
        // their batches may be on their way at once (acks otherwise wait a commit round
        // trip each, which bounds what a consumer gets). Publishes go one batch at a time,
        // in order (the engine's deduplication relies on it).
        let publishes = batch
            .iter()
            .any(|w| matches!(w.entry.op(), QueueOp::Enqueue { .. }));
        if !publishes && matches!(target, Target::Remote(_)) {
            let runtime = service.runtime.clone();
            runtime.spawn(async move {
                run_batch(&l, &service, batch, slot, undecided, target).await;
            });
        } else {
            let proposed_in = run_batch(&l, &service, batch, slot, undecided, target).await;
            if publishes {
                local_publishes = proposed_in;
            }
        }
    }
}

/// A proposal of this node's that its leadership ended before it was decided: its writes
/// (to go again) and its place in the order of the writer's proposals.
struct Undecided {
    proposal: u64,
    writes: Vec<Write>,
}

/// Sends one batch to the group's leader, answering its writes; tries again (another
/// leader, a member that passes it on) until `WRITE_DEADLINE`.
/// `slot` (one of `BATCHES_IN_FLIGHT`) is held until the batch is answered: for a local
/// proposal, once it is committed and applied; a local proposal left undecided goes back to
/// the writer through `undecided` (before its slot is freed). `first` is where it goes
/// first. Returns the term in which this node proposed it, if it did (its answer may then
/// still be on its way); `None` once it is answered.
async fn run_batch(
    l: &Arc<QuorumLink>,
    service: &Arc<QuorumService>,
    mut batch: Vec<Write>,
    slot: tokio::sync::OwnedSemaphorePermit,
    undecided: (u64, mpsc::UnboundedSender<Undecided>),
    first: Target,
) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + WRITE_DEADLINE;
    let mut tried = 0usize;
    let mut first = Some(first);
    loop {
        if l.closed.load(Ordering::Acquire) {
            fail(&mut batch, "the queue was deleted");
            break;
        }
        let target = match first.take() {
            Some(t) => t,
            None => l.target(service, tried),
        };
        match target {
            Target::Local(raft, shared) => {
                // The whole batch goes into one Raft entry (with what other nodes forward
                // meanwhile: `propose.rs`); its answers are awaited off this task, so that
                // the next batch is proposed while this one commits. Writes a lost
                // leadership left undecided go again, in order (`writer`).
                let Some(proposer) = shared.proposer.get() else {
                    first = Some(Target::Wait);
                    continue;
                };
                let writes: Vec<Write> = std::mem::take(&mut batch);
                let bytes = writes.iter().map(Write::body_len).sum();
                let ops = writes.iter().map(|w| w.entry.op().clone()).collect();
                let term = raft.metrics().borrow().current_term;
                let answer = proposer.propose(ops, bytes).await;
                service.runtime.spawn(async move {
                    let r = match answer.await {
                        Ok(Outcome::Applied(replies)) => Ok(replies),
                        Ok(Outcome::NotLeader(_)) => Err("not the leader any more".to_owned()),
                        Ok(Outcome::Failed(e)) => Err(e),
                        Err(_) => Err("the group stopped".to_owned()),
                    };
                    answer_writes(writes, r, undecided);
                    drop(slot);
                });
                return Some(term);
            }
            Target::Remote(peer) => {
                let Some(node) = service.node() else {
                    fail(&mut batch, "the node is stopping");
                    break;
                };
                let entries: Vec<QueueEntry> = batch.iter().map(|w| w.entry.clone()).collect();
                let r = node
                    .transport
                    .call(
                        node_id(&peer.name),
                        &peer.addr,
                        &Request::QueueWrite {
                            group: l.group,
                            entries,
                        },
                        WRITE_DEADLINE,
                    )
                    .await;
                if let Ok(Response::QueueWrite(Ok(replies))) = r {
                    for (w, reply) in batch.drain(..).zip(replies) {
                        if let Some(done) = w.done {
                            done.send(Ok(reply));
                        }
                    }
                    // Answers missing (never: one per entry) fail what is left.
                    fail(&mut batch, "no answer");
                    break;
                }
                tracing::debug!(group = l.group, ?r, "a quorum queue write is retried");
            }
            Target::Wait => {}
        }
        tried += 1;
        if tokio::time::Instant::now() >= deadline {
            fail(&mut batch, "the quorum queue has no leader");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// "Not the leader", naming the one this member knows.
fn not_leader(raft: &QueueRaft) -> ForwardError {
    ForwardError::NotLeader {
        leader: crate::raft::leader_of(&raft.metrics().borrow()).map(|(_, p)| p),
    }
}

/// Hands a local proposal's outcome to its writes: each its own answer; when it was not
/// decided (the leadership ended first), writes that have gone fewer than `WRITE_ATTEMPTS`
/// times go back to the writer, the rest fail (a publish is then nacked).
fn answer_writes(
    writes: Vec<Write>,
    r: Result<Vec<QueueReply>, String>,
    (proposal, undecided): (u64, mpsc::UnboundedSender<Undecided>),
) {
    let replies: Vec<QueueReply> = match r {
        Ok(replies) if replies.len() == writes.len() => replies,
        Ok(_) => {
            let mut writes = writes;
            fail(&mut writes, "mismatched answer");
            return;
        }
        Err(e) => {
            let (again, spent): (Vec<Write>, Vec<Write>) = writes
                .into_iter()
                .partition(|w| w.attempts < WRITE_ATTEMPTS);
            fail(&mut { spent }, &e);
            let again: Vec<Write> = again
                .into_iter()
                .map(|w| Write {
                    attempts: w.attempts + 1,
                    ..w
                })
                .collect();
            if let Err(mpsc::error::SendError(u)) = undecided.send(Undecided {
                proposal,
                writes: again,
            }) {
                // The writer is gone (the queue closed).
                fail(&mut { u.writes }, &e);
            }
            return;
        }
    };
    for (w, reply) in writes.into_iter().zip(replies) {
        if let Some(done) = w.done {
            done.send(Ok(reply));
        }
    }
}

fn fail(batch: &mut Vec<Write>, why: &str) {
    for w in batch.drain(..) {
        if let Some(done) = w.done {
            done.send(Err(why.to_owned()));
        }
    }
}

fn gone(link: &QuorumLink) -> BrokerError {
    BrokerError::NotFound {
        kind: ObjectKind::Queue,
        name: link.name.clone(),
        vhost: link.vhost.clone(),
    }
}

fn failed(link: &QuorumLink, why: &str) -> BrokerError {
    tracing::debug!(vhost = %link.vhost, queue = %link.name, "quorum queue: {why}");
    BrokerError::HomeNodeDown {
        node: link.home.clone(),
        name: link.name.clone(),
        vhost: link.vhost.clone(),
    }
}

impl QueueLink for QuorumLink {
    fn node(&self) -> &str {
        &self.home
    }

    fn session(&self) -> Option<u64> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        // A term is known once the group ran an election; before that writes wait for one.
        Some(self.term().max(1))
    }

    fn publish(
        &self,
        _queue: &Queue,
        message: &Arc<Message>,
        hold: Option<DurabilityHold>,
    ) -> Result<(), Option<DurabilityHold>> {
        if message.body.len() > MAX_REPLICATED_MESSAGE {
            // Refused (nacked), as RabbitMQ 4 refuses a message above its 16 MiB default
            // max_message_size: one Raft entry must reach a follower's disk within
            // openraft's RPC timeout (one heartbeat interval).
            tracing::warn!(
                vhost = %self.vhost,
                queue = %self.name,
                size = message.body.len(),
                "a message larger than {MAX_REPLICATED_MESSAGE} bytes cannot be replicated; refused"
            );
            if let Some(h) = hold {
                h.complete(false);
            }
            return Ok(());
        }
        let op = QueueOp::enqueue(message, None);
        match hold {
            None => self.write(op, None),
            Some(hold) => self.write(op, Some(Done::Hold(hold))),
        }
        Ok(())
    }

    fn settle(&self, _queue: &Queue, _session: u64, how: Settlement, offsets: Vec<u64>) {
        let op = match how {
            Settlement::Ack => QueueOp::Settle(offsets),
            Settlement::Requeue => QueueOp::Return(offsets),
            Settlement::Fail => QueueOp::Fail(offsets),
            Settlement::Reject => QueueOp::Discard(offsets),
            Settlement::Release => QueueOp::Release(offsets),
        };
        self.write(op, None);
    }

    fn credit(&self, _queue: &Queue, consumer: ConsumerId, count: u32, _bytes: u64) {
        if !lock(&self.credit_mode).contains(&consumer) {
            return;
        }
        let Some(service) = self.service.upgrade() else {
            return;
        };
        let Some(node) = service.node() else { return };
        self.write(
            QueueOp::Credit {
                consumer: global_consumer(node.me_id, consumer),
                credit: count,
                drain: false,
            },
            None,
        );
    }

    fn consume(
        &self,
        _queue: &Arc<Queue>,
        consumer: ConsumerId,
        spec: RemoteConsumer,
    ) -> BoxFuture<Result<u64, BrokerError>> {
        let Some(node) = self.service.upgrade().and_then(|s| s.node()) else {
            let e = failed(self, "the node is stopping");
            return Box::pin(async move { Err(e) });
        };
        // No-ack consumers take credit (the window of deliveries on their way); others
        // their prefetch, capped so that a consumer without one cannot pull the whole queue
        // over the network (a prefetch of 0 gets the cap).
        let credit = (!spec.ack_required).then_some(WINDOW_MESSAGES);
        if credit.is_some() {
            lock(&self.credit_mode).insert(consumer);
        }
        let prefetch = match spec.prefetch {
            0 => MAX_PREFETCH,
            p => p.min(MAX_PREFETCH),
        };
        let settings = ConsumerSettings {
            tag: spec.tag,
            connection: 0,
            ack_required: spec.ack_required,
            exclusive: spec.exclusive,
            prefetch,
            priority: spec.priority,
            arguments: spec.arguments,
            credit,
        };
        let rx = self.ask(QueueOp::Checkout {
            consumer: global_consumer(node.me_id, consumer),
            settings,
        });
        let (not_found, down) = (gone(self), failed(self, "consume"));
        let exclusive = BrokerError::ExclusiveConsumer {
            name: self.name.clone(),
            vhost: self.vhost.clone(),
        };
        let term = self.term().max(1);
        Box::pin(async move {
            match rx.await {
                Ok(Ok(QueueReply::Refused(404))) => Err(not_found),
                Ok(Ok(QueueReply::Refused(_))) => Err(exclusive),
                Ok(Ok(_)) => Ok(term),
                _ => Err(down),
            }
        })
    }

    fn consumer_unknown(&self, _queue: &Queue, consumer: ConsumerId) {
        if let Some(node) = self.service.upgrade().and_then(|s| s.node()) {
            self.write(
                QueueOp::Cancel {
                    consumer: global_consumer(node.me_id, consumer),
                },
                None,
            );
        }
    }

    fn cancel(&self, _queue: &Queue, consumer: ConsumerId) -> BoxFuture<()> {
        lock(&self.credit_mode).remove(&consumer);
        let Some(node) = self.service.upgrade().and_then(|s| s.node()) else {
            return Box::pin(async {});
        };
        let rx = self.ask(QueueOp::Cancel {
            consumer: global_consumer(node.me_id, consumer),
        });
        Box::pin(async move {
            let _ = rx.await;
        })
    }

    fn get(
        &self,
        _queue: &Queue,
        ack_required: bool,
    ) -> BoxFuture<Result<Option<RemoteGot>, BrokerError>> {
        let rx = self.ask(QueueOp::Get { ack_required });
        let down = failed(self, "get");
        let service = self.service.clone();
        let (vhost, name) = (self.vhost.clone(), self.name.clone());
        let term = self.term().max(1);
        Box::pin(async move {
            match rx.await {
                Ok(Ok(QueueReply::Got(Some(g), remaining))) => {
                    let Some(m) = message_of(g.message.op()) else {
                        return Ok(None);
                    };
                    let mut message = Arc::new(m);
                    if let Some(q) = service
                        .upgrade()
                        .and_then(|s| s.broker())
                        .and_then(|b| b.vhost(&vhost))
                        .and_then(|v| v.find_queue(&name))
                    {
                        let returns = pier_broker::queue::Returns {
                            count: g.returns,
                            failed: g.failed,
                        };
                        message = q.as_delivered(message, returns);
                    }
                    Ok(Some(RemoteGot {
                        session: term,
                        offset: g.offset,
                        redelivered: g.redelivered,
                        enqueued_at: g.enqueued_at,
                        message,
                        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                    }))
                }
                Ok(Ok(_)) => Ok(None),
                _ => Err(down),
            }
        })
    }

    fn purge(&self, _queue: &Queue) -> BoxFuture<Result<u32, BrokerError>> {
        let rx = self.ask(QueueOp::Purge);
        let down = failed(self, "purge");
        Box::pin(async move {
            match rx.await {
                Ok(Ok(QueueReply::Dropped(n))) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
                Ok(Ok(_)) => Ok(0),
                _ => Err(down),
            }
        })
    }

    /// Every node applies a policy change from the metadata and proposes it, versioned by
    /// the metadata log index (members apply the newest once, at the same log position).
    /// One that this node's member already applied (another node's proposal came first) is
    /// not proposed again.
    fn reconfigure(&self, _queue: &Arc<Queue>, settings: pier_broker::args::PolicySettings) {
        let Some(service) = self.service.upgrade() else {
            return;
        };
        let version = service.node().map_or(0, |n| n.applier.applying());
        if version == 0 {
            // Not a replicated policy change (a snapshot install, start-up): the nodes that
            // applied the change itself proposed it.
            return;
        }
        if let Some(s) = lock(&self.shared).as_ref() {
            if lock(&s.machine).policy_version() >= version {
                return;
            }
            let mut wanted = lock(&s.policy_wanted);
            if wanted.as_ref().is_none_or(|(v, _, _)| *v < version) {
                *wanted = Some((version, Box::new(settings.clone()), Instant::now()));
            }
        }
        let rx = self.ask(QueueOp::Reconfigure {
            version,
            settings: Box::new(settings),
        });
        let (vhost, name) = (self.vhost.clone(), self.name.clone());
        service.runtime.spawn(async move {
            if let Ok(Err(e)) = rx.await {
                tracing::warn!(%vhost, queue = %name, "a policy change did not reach the quorum queue: {e}");
            }
        });
    }

    fn stats(
        &self,
        queue: &Queue,
        _touch: bool,
    ) -> BoxFuture<Result<pier_broker::queue::QueueStats, BrokerError>> {
        let shared = lock(&self.shared).clone();
        let stats = match shared {
            Some(s) => lock(&s.machine).engine().stats(),
            None => queue.stats(),
        };
        Box::pin(async move { Ok(stats) })
    }

    /// A dead letter this node routed while leading: confirmed by its targets, it leaves
    /// the queue through the log; else the leader routes it again later.
    fn dead_letter_settled(&self, offset: u64, ok: bool) {
        if let Some(s) = lock(&self.shared).clone() {
            lock(&s.dead_letters).answered(offset, ok, unix_ms());
        }
        if ok {
            self.write(QueueOp::DeadLettered(vec![offset]), None);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod lane_batch_tests {
    use super::*;
    use bytes::Bytes;
    use pier_wire::BasicProperties;

    fn delivery(offset: u64, size: usize) -> wire::Delivery {
        let props = BasicProperties::default();
        wire::Delivery {
            consumer: 1,
            offset,
            redelivered: false,
            ack_required: true,
            enqueued_at: 0,
            message: Arc::new(Message::from_amqp(
                "".into(),
                "q".into(),
                props.clone(),
                props.to_bytes().unwrap(),
                Bytes::from(vec![0u8; size]),
            )),
        }
    }

    fn node(name: &str) -> PeerNode {
        PeerNode {
            name: name.into(),
            addr: String::new(),
        }
    }

    /// One batch per node, in arrival order; a batch that would pass the byte limit goes
    /// first, and a message larger than the limit goes alone.
    #[test]
    fn deliveries_gather_per_node_up_to_the_limit() {
        let mut b = LaneBatches::default();
        assert!(b.add(&node("a"), delivery(1, 10)).is_none());
        assert!(b.add(&node("b"), delivery(2, 10)).is_none());
        assert!(b.add(&node("a"), delivery(3, 10)).is_none());
        let all: Vec<_> = b.take_all().collect();
        let offsets = |v: &[wire::Delivery]| v.iter().map(|d| d.offset).collect::<Vec<_>>();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].0.name.as_str(), offsets(&all[0].1)),
            ("a", vec![1, 3])
        );
        assert_eq!((all[1].0.name.as_str(), offsets(&all[1].1)), ("b", vec![2]));
        assert_eq!(b.take_all().count(), 0);

        let half = LANE_BATCH_BYTES / 2;
        assert!(b.add(&node("a"), delivery(4, half)).is_none());
        let full = b.add(&node("a"), delivery(5, half)).unwrap();
        assert_eq!(offsets(&full.1), vec![4]);
        let full = b
            .add(&node("a"), delivery(6, 2 * LANE_BATCH_BYTES))
            .unwrap();
        assert_eq!(offsets(&full.1), vec![5]);
        let full = b.add(&node("a"), delivery(7, 1)).unwrap();
        assert_eq!(offsets(&full.1), vec![6]);
        let rest: Vec<_> = b.take_all().collect();
        assert_eq!(offsets(&rest[0].1), vec![7]);
    }
}
