//! One cluster node: starts openraft over the file log and the metadata state machine,
//! serves the peer transport, forms or rejoins the cluster, and keeps an eye on its peers.
//!
//! Formation from a static peer list (the same list on every node, RabbitMQ's classic peer
//! discovery): a node with Raft state simply rejoins. A fresh node dials every listed peer;
//! if one of them belongs to a cluster, it asks to join it (the leader adds it as a learner,
//! lets it catch up, then makes it a voter). If none does, the node with the lowest address
//! in the list (the seed) initialises a one-node cluster with a new cluster id, once it has
//! tried every peer at least once, and the others join it as they come. Only one node ever
//! initialises, so two halves of a list can never form two clusters. The cluster id is
//! stored in `definitions.redb` with the data it describes; a node whose data carries another
//! cluster's id is refused at the handshake.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use pier_broker::Broker;
use pier_store::DefinitionsStore;
use tokio::sync::{watch, Semaphore};

use crate::error::ClusterError;
use crate::metadata::{Applier, Catalog, Hooks, MetadataSnapshot};
use crate::queues::QueueService;
use crate::raft::file_log::FileLogStore;
use crate::raft::log_adapter::RaftLog;
use crate::raft::network::{self, NetworkFactory, RaftRequest};
use crate::raft::state_machine::{MetadataStateMachine, Waiters};
use crate::raft::{node_id, LogId, PeerNode, Raft, RaftMetrics};
use crate::rpc::{ForwardError, NodeReport, Request, Response};
use crate::transport::{Handler, Link, Transport};

/// How a node takes part in a cluster (`--node-name`, `--cluster-port`, `--peers`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// RabbitMQ-style node name, e.g. `pier@host1`. Stored with the data: a data directory
    /// belongs to one node.
    pub node_name: String,
    /// Where the cluster port listens.
    pub listen: SocketAddr,
    /// The address other nodes reach this one at (`host:port`), as it appears in `peers`.
    pub advertise: String,
    /// The static peer list, the same on every node (it may include this node).
    pub peers: Vec<String>,
    /// `<data>/cluster`: the Raft log and snapshot.
    pub dir: PathBuf,
    /// The configured cluster name (the replicated one wins once set).
    pub cluster_name: Option<String>,
    /// How long a metadata change may wait for the cluster before it fails.
    pub propose_timeout: Duration,
    /// Mutual TLS between nodes (when the node has TLS configured); `None`: plain TCP.
    pub tls: Option<crate::transport::ClusterTls>,
    /// Quorum queues declared through this node are Raft groups over several members
    /// (`--quorum-replication`, on by default; off: a group of one on the declaring node).
    pub quorum_replication: bool,
    /// Quorum queue groups heartbeat and elect by openraft's timers (`--quorum-heartbeats
    /// true`). Off (the default): no per-group heartbeats, elections from the node's pings
    /// (`quorum/elections.rs`, decision 0009).
    pub quorum_heartbeats: bool,
}

/// The node's own figures, for its peers' `/api/nodes` (set by the management layer).
pub trait Reporter: Send + Sync + 'static {
    fn report(&self) -> NodeReport;

    /// This node's items of a management listing (`what`: `connections`, `channels`,
    /// `stream/connections`, `stream/publishers`, `stream/consumers`) that a user with
    /// `tags` may see, of `vhost` when given, each a JSON object (RabbitMQ's management
    /// lists connections of every node).
    fn list(
        &self,
        _what: &str,
        _user: &str,
        _tags: &[String],
        _vhost: Option<&str>,
    ) -> Vec<String> {
        Vec::new()
    }

    /// Closes this node's client connection `name` (any protocol) with `reason`; whether it
    /// was here.
    fn close_connection(&self, _name: &str, _reason: &str) -> bool {
        false
    }
}

const CLUSTER_ID_KEY: &[u8] = b"cluster/id";
const NODE_NAME_KEY: &[u8] = b"cluster/node_name";
const SM_KEY: &[u8] = b"sm/applied";
/// At most this many metadata changes wait at once on one node.
const MAX_IN_FLIGHT: usize = 1024;
/// This process's incarnation: 12 random bits, drawn once per run. Consumer ids carry it
/// (`quorum::service::global_consumer`), and pongs tell it, so that a peer can tell the
/// consumers of an earlier run of a node, gone with it, from those of the running one.
pub(crate) fn incarnation() -> u64 {
    static INCARNATION: OnceLock<u64> = OnceLock::new();
    *INCARNATION.get_or_init(|| rand::random::<u64>() & 0xFFF)
}

/// The incarnations members' pongs gave: the current one of each, and those a later pong
/// replaced. Only a replaced one is over: a consumer of an incarnation not heard of yet may
/// be the restarted node's first, subscribed before its first pong came back.
#[derive(Debug, Default)]
pub(crate) struct Incarnations {
    current: HashMap<u64, u64>,
    ended: std::collections::HashSet<(u64, u64)>,
}

impl Incarnations {
    pub(crate) fn heard(&mut self, id: u64, incarnation: u64) {
        if let Some(old) = self.current.insert(id, incarnation) {
            if old != incarnation {
                self.ended.insert((id, old));
                self.ended.remove(&(id, incarnation));
            }
        }
    }

    pub(crate) fn ended(&self, id: u64, incarnation: u64) -> bool {
        self.ended.contains(&(id, incarnation))
    }

    pub(crate) fn forget(&mut self, id: u64) {
        self.current.remove(&id);
        self.ended.retain(|(n, _)| *n != id);
    }
}

/// A member that answered a ping within this long counts as running.
pub(crate) const LIVENESS: Duration = Duration::from_secs(3);
/// Members are pinged this often: quorum queue groups learn from these pings that a
/// leader's node went away (`quorum/service.rs`, `watch_elections`), so they are frequent.
const PING_EVERY: Duration = Duration::from_millis(250);
const PING_TIMEOUT: Duration = Duration::from_millis(1500);
/// Listed peers that are not members yet are dialled this often.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a join may take (the learner catches up with the whole log first).
pub(crate) const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

fn setup(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Setup(format!("{what}: {e}"))
}

pub(crate) struct Node {
    pub(crate) me: PeerNode,
    pub(crate) me_id: u64,
    pub(crate) config: ClusterConfig,
    raft: RwLock<Raft>,
    log: RwLock<Arc<FileLogStore>>,
    pub(crate) transport: Transport,
    pub(crate) applier: Applier,
    pub(crate) defs: Arc<DefinitionsStore>,
    pub(crate) waiters: Arc<Waiters>,
    applied: RwLock<watch::Receiver<Option<LogId>>>,
    pub(crate) next_request: AtomicU64,
    pub(crate) inflight: Semaphore,
    pub(crate) reporter: OnceLock<Arc<dyn Reporter>>,
    pub(crate) started: Instant,
    /// When each member last answered a ping.
    pub(crate) answered: Mutex<HashMap<u64, Instant>>,
    /// The incarnations members' pongs gave.
    pub(crate) incarnations: Mutex<Incarnations>,
    /// Where stream-protocol clients reach this node, and each member that gave one.
    pub(crate) stream_endpoint: Mutex<Option<(String, u16)>>,
    pub(crate) stream_endpoints: Mutex<HashMap<u64, (String, u16)>>,
    /// The same for the stream protocol over TLS.
    pub(crate) stream_tls_endpoint: Mutex<Option<(String, u16)>>,
    pub(crate) stream_tls_endpoints: Mutex<HashMap<u64, (String, u16)>>,
    /// Serialises joins and resets.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The message path to and from queues on other nodes.
    pub(crate) queues: Arc<QueueService>,
}

impl Node {
    pub(crate) fn raft(&self) -> Raft {
        self.raft.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn metrics(&self) -> RaftMetrics {
        self.raft().metrics().borrow().clone()
    }

    pub(crate) fn applied(&self) -> watch::Receiver<Option<LogId>> {
        self.applied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn cluster_id(&self) -> Option<String> {
        self.transport.cluster_id()
    }

    fn store_cluster_id(&self, id: Option<&str>) -> Result<(), ClusterError> {
        match id {
            Some(id) => self
                .defs
                .put_cluster_entry(CLUSTER_ID_KEY, id.as_bytes())
                .map_err(|e| setup("storing the cluster id", e))?,
            None => self
                .defs
                .delete_cluster_entries(CLUSTER_ID_KEY, false)
                .map_err(|e| setup("removing the cluster id", e))?,
        }
        self.transport.set_cluster_id(id.map(str::to_owned));
        Ok(())
    }

    /// The members (voters and learners) of the current membership, with whether each votes.
    pub(crate) fn members(&self) -> Vec<(u64, PeerNode, bool)> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| (*id, n.clone(), voters.contains(id)))
            .collect()
    }

    /// The member of that name: its Raft id and node.
    pub(crate) fn member(&self, name: &str) -> Option<(u64, PeerNode)> {
        self.members()
            .into_iter()
            .find(|(_, p, _)| p.name == name)
            .map(|(id, p, _)| (id, p))
    }

    /// Whether member `id` answered recently (this node always counts).
    pub(crate) fn is_running(&self, id: u64) -> bool {
        self.heard_within(id, LIVENESS)
    }

    /// Whether incarnation `incarnation` of member `id` has ended: a later pong of the
    /// member gave another (it restarted).
    pub(crate) fn incarnation_ended(&self, id: u64, incarnation: u64) -> bool {
        self.incarnations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ended(id, incarnation)
    }

    /// Whether member `id` answered a ping within `within` (this node always does).
    pub(crate) fn heard_within(&self, id: u64, within: Duration) -> bool {
        id == self.me_id
            || self
                .answered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .is_some_and(|t| t.elapsed() < within)
    }

    pub(crate) fn local_report(&self) -> NodeReport {
        let mut r = match self.reporter.get() {
            Some(rep) => rep.report(),
            None => NodeReport::default(),
        };
        let m = self.metrics();
        r.name.clone_from(&self.me.name);
        r.raft_term = m.current_term;
        r.raft_last_applied = m.last_applied.map(|l| l.index);
        r.raft_state = format!("{:?}", m.state).to_lowercase();
        r.listeners
            .push(("clustering".to_owned(), self.config.advertise.clone()));
        r.partitions = self
            .members()
            .into_iter()
            .filter(|(id, _, _)| !self.is_running(*id))
            .map(|(_, p, _)| p.name)
            .collect();
        if r.uptime_ms == 0 {
            r.uptime_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        r
    }

    pub(crate) fn shutdown_tasks(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    pub(crate) fn log_store(&self) -> Arc<FileLogStore> {
        Arc::clone(&self.log.read().unwrap_or_else(|p| p.into_inner()))
    }
}

async fn open_raft(
    me_id: u64,
    config: &ClusterConfig,
    applier: &Applier,
    defs: &Arc<DefinitionsStore>,
    waiters: &Arc<Waiters>,
    transport: &Transport,
) -> Result<(Raft, Arc<FileLogStore>, watch::Receiver<Option<LogId>>), ClusterError> {
    let raft_config = crate::raft::config(
        &config
            .cluster_name
            .clone()
            .unwrap_or_else(|| "pier".to_owned()),
    )
    .map_err(|e| setup("Raft configuration", e))?;
    let store = Arc::new(
        FileLogStore::open(config.dir.join("raft"))
            .map_err(|e| setup("opening the Raft log", e))?,
    );
    let log = RaftLog::new(Arc::clone(&store)).map_err(|e| setup("opening the Raft log", e))?;
    let (applied_tx, applied_rx) = watch::channel(None);
    let sm = MetadataStateMachine::open(
        me_id,
        applier.clone(),
        Arc::clone(defs),
        config.dir.join("snapshot"),
        Arc::clone(waiters),
        applied_tx,
    )
    .map_err(|e| setup("opening the metadata state machine", e))?;
    let raft = Raft::new(
        me_id,
        Arc::new(raft_config),
        NetworkFactory {
            transport: transport.clone(),
            route: crate::raft::network::MetadataRoute,
        },
        log,
        sm,
    )
    .await
    .map_err(|e| setup("starting Raft", e))?;
    Ok((raft, store, applied_rx))
}

/// Starts this node's part of the cluster. The broker must have recovered from `defs`
/// already (its state is what the state machine's applied position describes).
/// What a node needs before the broker recovers (so that recovery knows where each durable
/// queue lives): the catalog read from `definitions.redb`, and the message path service.
pub struct Prepared {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) queues: Arc<QueueService>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

impl Prepared {
    /// The broker's view of the cluster (`Broker::set_cluster`).
    pub fn cluster(&self) -> Arc<dyn pier_broker::cluster::Cluster> {
        Arc::clone(&self.queues) as Arc<dyn pier_broker::cluster::Cluster>
    }
}

/// Reads the catalog (cluster name, vhost metadata, queue homes) from `defs`. Call on the
/// runtime, before the broker recovers.
pub(crate) fn prepare(
    config: &ClusterConfig,
    defs: &Arc<DefinitionsStore>,
) -> Result<Prepared, ClusterError> {
    let catalog = Arc::new(Catalog::new(config.cluster_name.clone()));
    catalog
        .attach(Arc::clone(defs))
        .map_err(|e| setup("reading the catalog", e))?;
    let queues = QueueService::new(
        config.node_name.clone(),
        Arc::clone(&catalog),
        config.dir.clone(),
    );
    Ok(Prepared { catalog, queues })
}

pub(crate) async fn start(
    config: ClusterConfig,
    prepared: Prepared,
    broker: Arc<Broker>,
    defs: Arc<DefinitionsStore>,
    hooks: Option<Arc<dyn Hooks>>,
) -> Result<Arc<Node>, ClusterError> {
    // A data directory belongs to one node.
    match defs
        .cluster_entry(NODE_NAME_KEY)
        .map_err(|e| setup("reading the node name", e))?
    {
        Some(stored) if stored != config.node_name.as_bytes() => {
            return Err(ClusterError::Setup(format!(
                "the data directory belongs to node '{}', not '{}': give the node its own \
                 name back, or another data directory",
                String::from_utf8_lossy(&stored),
                config.node_name
            )))
        }
        Some(_) => {}
        None => defs
            .put_cluster_entry(NODE_NAME_KEY, config.node_name.as_bytes())
            .map_err(|e| setup("storing the node name", e))?,
    }
    let cluster_id = defs
        .cluster_entry(CLUSTER_ID_KEY)
        .map_err(|e| setup("reading the cluster id", e))?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let Prepared { catalog, queues } = prepared;
    let applier = Applier::new(broker, catalog, hooks);
    applier.restore_limits();
    std::fs::create_dir_all(&config.dir).map_err(|e| setup("creating the cluster directory", e))?;

    let me = PeerNode {
        name: config.node_name.clone(),
        addr: config.advertise.clone(),
    };
    let me_id = node_id(&me.name);
    let transport = Transport::new(
        me.clone(),
        cluster_id,
        Some(config.listen.ip()),
        config.tls.clone(),
    );
    let waiters = Arc::new(Waiters::default());
    let (raft, log, applied) =
        open_raft(me_id, &config, &applier, &defs, &waiters, &transport).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| setup(&format!("binding the cluster port {}", config.listen), e))?;
    let node = Arc::new(Node {
        me,
        me_id,
        config,
        raft: RwLock::new(raft),
        log: RwLock::new(log),
        transport: transport.clone(),
        applier,
        defs,
        waiters,
        applied: RwLock::new(applied),
        next_request: AtomicU64::new(rand::random::<u64>() >> 2),
        inflight: Semaphore::new(MAX_IN_FLIGHT),
        reporter: OnceLock::new(),
        started: Instant::now(),
        answered: Mutex::new(HashMap::new()),
        incarnations: Mutex::new(Incarnations::default()),
        stream_endpoint: Mutex::new(None),
        stream_endpoints: Mutex::new(HashMap::new()),
        stream_tls_endpoint: Mutex::new(None),
        stream_tls_endpoints: Mutex::new(HashMap::new()),
        membership_lock: tokio::sync::Mutex::new(()),
        tasks: Mutex::new(Vec::new()),
        queues,
    });
    node.queues.attach(&node);
    transport.set_handler(Arc::new(NodeHandler(Arc::downgrade(&node))));
    let tasks = vec![
        tokio::spawn(transport.serve(listener)),
        tokio::spawn(watch_peers(Arc::downgrade(&node))),
        tokio::spawn(probe_listed(Arc::downgrade(&node))),
        tokio::spawn(form(Arc::downgrade(&node))),
    ];
    node.tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(tasks);
    tracing::info!(
        node = %node.me,
        cluster = node.cluster_id().as_deref().unwrap_or("(none yet)"),
        peers = ?node.config.peers,
        "cluster node started"
    );
    Ok(node)
}

/// Whether Raft on this node has any state (it formed or joined a cluster before).
fn initialised(m: &RaftMetrics) -> bool {
    m.last_log_index.is_some()
        || m.membership_config.membership().nodes().next().is_some()
        || m.current_term > 0
}

/// Forms the cluster or joins it (see the module docs); returns once done.
async fn form(node: Weak<Node>) {
    let mut tried_all = false;
    let mut announced = false;
    loop {
        let Some(n) = node.upgrade() else { return };
        if initialised(&n.metrics()) {
            if n.cluster_id().is_none() {
                // Joined, then crashed before storing the id: take it from a peer.
                if let Some(id) = n
                    .transport
                    .peers()
                    .into_iter()
                    .find_map(|p| p.cluster_id.filter(|_| !p.is_self))
                {
                    let _ = n.store_cluster_id(Some(&id));
                }
            }
            return;
        }
        let peers: Vec<String> = n
            .config
            .peers
            .iter()
            .filter(|a| **a != n.me.addr)
            .cloned()
            .collect();
        for addr in &peers {
            let _ = n.transport.probe(addr).await;
        }
        let known = n.transport.peers();
        let state = |a: &String| known.iter().find(|p| &p.addr == a);
        let formed = peers
            .iter()
            .filter_map(state)
            .find(|p| !p.is_self && p.cluster_id.is_some() && p.connected);
        if let Some(p) = formed {
            let addr = p.addr.clone();
            tracing::info!(via = %addr, "joining the cluster");
            match join_via(&n, &addr).await {
                Ok(id) => {
                    tracing::info!(cluster = %id, "joined the cluster");
                    return;
                }
                Err(e) => tracing::warn!("joining the cluster through {addr} failed: {e}"),
            }
        } else {
            // Every listed peer was tried at least once (it answered, is this node, or
            // failed), so a formed cluster among them would have been seen.
            tried_all = tried_all
                || peers.iter().all(|a| {
                    state(a).is_some_and(|p| p.connected || p.is_self || p.last_error.is_some())
                });
            // Addresses that turned out to be this node count as its own.
            let seed = n
                .config
                .peers
                .iter()
                .map(|a| {
                    if state(a).is_some_and(|p| p.is_self) {
                        n.me.addr.clone()
                    } else {
                        a.clone()
                    }
                })
                .chain(std::iter::once(n.me.addr.clone()))
                .min();
            if seed.as_deref() == Some(n.me.addr.as_str()) && tried_all {
                match initialise(&n).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!("initialising the cluster failed: {e}"),
                }
            } else if !announced && tried_all {
                announced = true;
                tracing::info!(
                    seed = seed.as_deref().unwrap_or("?"),
                    "waiting for the seed node to form the cluster"
                );
            }
        }
        drop(n);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn initialise(n: &Arc<Node>) -> Result<(), ClusterError> {
    let id = match n.cluster_id() {
        Some(id) => id,
        None => {
            let id = format!("{:032x}", rand::random::<u128>());
            n.store_cluster_id(Some(&id))?;
            id
        }
    };
    let members = BTreeMap::from([(n.me_id, n.me.clone())]);
    n.raft()
        .initialize(members)
        .await
        .map_err(|e| ClusterError::Membership(format!("initialising: {e}")))?;
    tracing::info!(cluster = %id, node = %n.me, "formed a new cluster");
    Ok(())
}

/// Asks the cluster that `addr` belongs to to add this node (following the leader);
/// stores the cluster id it answers with.
pub(crate) async fn join_via(n: &Arc<Node>, addr: &str) -> Result<String, ClusterError> {
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut target = addr.to_owned();
    // The cluster id is stored before the node becomes a member, so a member never lacks it.
    if n.cluster_id().is_none() {
        if let Some(id) = n.transport.peer(addr).and_then(|p| p.cluster_id) {
            n.store_cluster_id(Some(&id))?;
        }
    }
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Err(ClusterError::Membership(format!(
                "could not join through {addr} within {} s",
                JOIN_TIMEOUT.as_secs()
            )));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let r = match n.transport.connect(&target).await {
            Ok(link) => link
                .call(&Request::Join(n.me.clone()), left)
                .await
                .map_err(|e| e.to_string()),
            Err(crate::transport::TransportError::Refused { reason, .. }) => {
                return Err(ClusterError::Membership(reason))
            }
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(Response::Join(Ok(id))) => {
                n.store_cluster_id(Some(&id))?;
                return Ok(id);
            }
            Ok(Response::Join(Err(ForwardError::NotLeader { leader: Some(l) }))) => {
                target = l.addr;
                continue;
            }
            Ok(Response::Join(Err(ForwardError::Failed(e)))) => {
                return Err(ClusterError::Membership(e))
            }
            Ok(Response::Refused(reason)) => tracing::debug!("join refused for now: {reason}"),
            Ok(_) => {}
            Err(e) => tracing::debug!("join through {target}: {e}"),
        }
        target = addr.to_owned();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Resets this node's cluster state and definitions (RabbitMQ's `reset`) and joins the
/// cluster `addr` belongs to. Only a node that is alone in its cluster may do this.
pub(crate) async fn reset_and_join(n: &Arc<Node>, addr: &str) -> Result<String, ClusterError> {
    let _guard = n.membership_lock.lock().await;
    let others: Vec<String> = n
        .members()
        .into_iter()
        .filter(|(id, _, _)| *id != n.me_id)
        .map(|(_, p, _)| p.name)
        .collect();
    if !others.is_empty() {
        return Err(ClusterError::Membership(format!(
            "this node is a member of a cluster with other nodes ({}): a node with another \
             cluster's data cannot join. Remove it there first (pier ctl \
             forget_cluster_node {}), stop it and delete its data directory",
            others.join(", "),
            n.me.name
        )));
    }
    // Check that the target answers before resetting anything (a plain TCP connection: a
    // handshake would be refused while this node still carries its old cluster id).
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(ClusterError::Membership(format!(
                "cannot reach {addr}: {e}"
            )))
        }
        Err(_) => {
            return Err(ClusterError::Membership(format!(
                "cannot reach {addr}: no answer in 2 s"
            )))
        }
    }
    tracing::warn!(target = %addr, "join_cluster: resetting this node (its definitions and messages are deleted) and joining");
    n.raft()
        .shutdown()
        .await
        .map_err(|e| setup("stopping Raft", e))?;
    n.log_store().shutdown();
    for sub in ["raft", "snapshot"] {
        let p = n.config.dir.join(sub);
        match std::fs::remove_dir_all(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(setup(&format!("deleting {}", p.display()), e)),
        }
    }
    n.store_cluster_id(None)?;
    n.transport.close_all();
    // Empty definitions: what the cluster holds arrives by replication.
    let (applier, defs) = (n.applier.clone(), Arc::clone(&n.defs));
    tokio::task::spawn_blocking(move || {
        defs.batch(|| {
            let current = defs.load()?;
            applier.install(&MetadataSnapshot::default(), &current);
            defs.delete_cluster_entries(SM_KEY, false)
        })
    })
    .await
    .map_err(|e| setup("resetting", e))?
    .and_then(|r| r)
    .map_err(|e| setup("resetting the definitions", e))?;
    let (raft, log, applied) = open_raft(
        n.me_id,
        &n.config,
        &n.applier,
        &n.defs,
        &n.waiters,
        &n.transport,
    )
    .await?;
    *n.raft.write().unwrap_or_else(|p| p.into_inner()) = raft;
    *n.log.write().unwrap_or_else(|p| p.into_inner()) = log;
    *n.applied.write().unwrap_or_else(|p| p.into_inner()) = applied;
    join_via(n, addr).await
}

/// Pings every member (and dials listed peers that are not members yet), so that status
/// knows who is running, and closes connections to members that stopped answering (a
/// partition that drops packets leaves them open).
async fn watch_peers(node: Weak<Node>) {
    // Pings go out on time whatever earlier ones do (one that hangs must not delay the
    // others' answers, which elections rely on); one at a time per member.
    let pinging: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut every = tokio::time::interval(PING_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(n) = node.upgrade() else { return };
        let members = n.members();
        for (id, peer, _) in members.into_iter().filter(|(id, _, _)| *id != n.me_id) {
            if !pinging.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
                continue;
            }
            let n = Arc::clone(&n);
            let pinging = Arc::clone(&pinging);
            tokio::spawn(async move {
                match n
                    .transport
                    .call(id, &peer.addr, &Request::Ping, PING_TIMEOUT)
                    .await
                {
                    Ok(Response::Pong {
                        incarnation,
                        stream,
                        stream_tls,
                        ..
                    }) => {
                        for (map, endpoint) in [
                            (&n.stream_endpoints, stream),
                            (&n.stream_tls_endpoints, stream_tls),
                        ] {
                            let mut endpoints = map.lock().unwrap_or_else(|p| p.into_inner());
                            match endpoint {
                                Some(e) => endpoints.insert(id, e),
                                None => endpoints.remove(&id),
                            };
                        }
                        n.answered
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id, Instant::now());
                        n.incarnations
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .heard(id, incarnation);
                    }
                    Ok(_) => {}
                    Err(crate::transport::TransportError::Timeout) => {
                        tracing::debug!(peer = %peer, "no answer to a ping: reconnecting");
                        n.transport.drop_link(id);
                    }
                    Err(_) => {}
                }
                pinging
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
        }
    }
}

/// Listed peers that are not members (yet): keeps a connection, so that formation and status
/// see them.
async fn probe_listed(node: Weak<Node>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(n) = node.upgrade() else { return };
        let member_addrs: BTreeSet<String> =
            n.members().into_iter().map(|(_, p, _)| p.addr).collect();
        for addr in n
            .config
            .peers
            .iter()
            .filter(|a| !member_addrs.contains(*a) && **a != n.me.addr)
        {
            if n.transport.peer(addr).is_none_or(|p| !p.is_self) {
                let _ = n.transport.probe(addr).await;
            }
        }
    }
}

/// Answers peers' requests.
struct NodeHandler(Weak<Node>);

impl Handler for NodeHandler {
    fn handle(
        &self,
        from: PeerNode,
        request: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + 'static>> {
        let node = self.0.clone();
        Box::pin(async move {
            let Some(n) = node.upgrade() else {
                return Response::Refused("the node is stopping".into());
            };
            match request {
                Request::Ping => Response::Pong {
                    cluster_id: n.cluster_id(),
                    incarnation: incarnation(),
                    stream: n
                        .stream_endpoint
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                    stream_tls: n
                        .stream_tls_endpoint
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                },
                Request::Raft(RaftRequest::Vote(v)) => {
                    // A node removed from the cluster must not disrupt it with elections.
                    let from_id = node_id(&from.name);
                    let voters: Vec<u64> = n
                        .metrics()
                        .membership_config
                        .membership()
                        .voter_ids()
                        .collect();
                    if !voters.is_empty() && !voters.contains(&from_id) {
                        return Response::Refused(format!("{from} is not a voting member"));
                    }
                    Response::Raft(network::serve(&n.raft(), RaftRequest::Vote(v)).await)
                }
                Request::Raft(r) => Response::Raft(network::serve(&n.raft(), r).await),
                Request::Forward {
                    expires_unix_ms, ..
                } if crate::rpc::unix_ms() > expires_unix_ms => Response::Forward(Err(
                    ForwardError::Failed("the proposal expired on its way to the leader".into()),
                )),
                Request::Forward { proposal, .. } => {
                    Response::Forward(match n.raft().client_write(proposal).await {
                        Ok(r) => Ok(r.log_id.index),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                            Err(ForwardError::NotLeader {
                                leader: f.leader_node,
                            })
                        }
                        Err(e) => Err(ForwardError::Failed(e.to_string())),
                    })
                }
                Request::Join(peer) => Response::Join(handle_join(&n, peer).await),
                Request::Forget(name) => Response::Forget(forget_on_leader(&n, &name).await),
                Request::Status => Response::Status(Box::new(n.local_report())),
                Request::List {
                    what,
                    user,
                    tags,
                    vhost,
                } => Response::List(
                    n.reporter
                        .get()
                        .map(|r| r.list(&what, &user, &tags, vhost.as_deref()))
                        .unwrap_or_default(),
                ),
                Request::CloseConnection { name, reason } => Response::Closed(
                    n.reporter
                        .get()
                        .is_some_and(|r| r.close_connection(&name, &reason)),
                ),
                Request::Applied { index, wait_ms } => {
                    let mut applied = n.applied();
                    let at = |l: &Option<LogId>| l.as_ref().map_or(0, |l| l.index);
                    let wait = Duration::from_millis(wait_ms.min(5_000));
                    // Reached, timed out, or the node was reset: say where it is.
                    let _ = tokio::time::timeout(wait, applied.wait_for(|l| at(l) >= index)).await;
                    let reached = at(&applied.borrow());
                    Response::Applied(reached)
                }
                Request::QueueRaft { group, request } => {
                    n.queues.quorum.serve_raft(group, *request).await
                }
                Request::QueueWrite { group, entries } => {
                    n.queues.quorum.serve_write(group, entries).await
                }
                Request::QueueStatus { group } => {
                    Response::QueueStatus(n.queues.quorum.group_status(group))
                }
                Request::QueueMembers { group, change } => {
                    n.queues.quorum.serve_members(group, change).await
                }
                Request::StreamRead {
                    vhost,
                    name,
                    epoch,
                    from: offset,
                    committed,
                } => Response::StreamRead(
                    crate::queues::stream::serve_read(
                        &n.queues,
                        &from.name,
                        crate::queues::stream::ReadAsk {
                            vhost: &vhost,
                            name: &name,
                            epoch,
                            from: offset,
                            committed,
                        },
                    )
                    .await,
                ),
                Request::StreamFence { vhost, name, epoch } => Response::StreamFence(
                    n.queues
                        .streams
                        .fence(&n.queues, &vhost, &name, epoch)
                        .await,
                ),
                Request::StreamStoreOffset {
                    vhost,
                    name,
                    reference,
                    offset,
                } => Response::StreamStoreOffset(crate::queues::stream::serve_store_offset(
                    &n.queues, &vhost, &name, reference, offset,
                )),
            }
        })
    }

    fn lane(&self, link: &Arc<Link>, payload: bytes::Bytes) {
        if let Some(n) = self.0.upgrade() {
            n.queues.lane(link, payload);
        }
    }

    fn lane_batch_done(&self, link: &Arc<Link>) {
        if let Some(n) = self.0.upgrade() {
            n.queues.lane_batch_done(link);
        }
    }

    fn closed(&self, link: &Arc<Link>) {
        if let Some(n) = self.0.upgrade() {
            n.queues.closed(link);
        }
    }
}

fn not_leader(n: &Node) -> ForwardError {
    let m = n.metrics();
    ForwardError::NotLeader {
        leader: crate::raft::leader_of(&m).map(|(_, p)| p),
    }
}

/// Runs a membership change on the leader, waiting out one already in progress.
async fn change_membership(
    n: &Node,
    change: ChangeMembers<u64, PeerNode>,
) -> Result<(), ForwardError> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        match n.raft().change_membership(change.clone(), false).await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                return Err(not_leader(n))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(ForwardError::Failed(e.to_string())),
        }
    }
}

async fn handle_join(n: &Arc<Node>, peer: PeerNode) -> Result<String, ForwardError> {
    let Some(cluster_id) = n.cluster_id() else {
        return Err(not_leader(n));
    };
    if n.metrics().current_leader != Some(n.me_id) {
        return Err(not_leader(n));
    }
    let id = node_id(&peer.name);
    let members = n.members();
    if let Some((_, existing, voter)) = members.iter().find(|(m, _, _)| *m == id) {
        if existing.addr != peer.addr {
            return Err(ForwardError::Failed(format!(
                "a member named {} is already at {}; forget it first (pier ctl \
                 forget_cluster_node {}) to add it at {}",
                peer.name, existing.addr, peer.name, peer.addr
            )));
        }
        if *voter {
            return Ok(cluster_id);
        }
    } else {
        tracing::info!(node = %peer, "adding a node to the cluster");
        loop {
            match n.raft().add_learner(id, peer.clone(), true).await {
                Ok(_) => break,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    return Err(not_leader(n))
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => return Err(ForwardError::Failed(e.to_string())),
            }
        }
    }
    change_membership(n, ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
    tracing::info!(node = %peer, "the node is a voting member");
    Ok(cluster_id)
}

pub(crate) async fn forget_on_leader(n: &Arc<Node>, name: &str) -> Result<(), ForwardError> {
    if n.metrics().current_leader != Some(n.me_id) {
        return Err(not_leader(n));
    }
    let id = node_id(name);
    let members = n.members();
    let Some((_, _, voter)) = members.iter().find(|(m, _, _)| *m == id) else {
        return Err(ForwardError::Failed(format!(
            "{name} is not a member of this cluster"
        )));
    };
    if *voter {
        if members.iter().filter(|(_, _, v)| *v).count() <= 1 {
            return Err(ForwardError::Failed(format!(
                "{name} is the last voting member"
            )));
        }
        change_membership(n, ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
    } else {
        change_membership(n, ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
    }
    n.answered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    n.incarnations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .forget(id);
    tracing::info!(node = name, "removed from the cluster");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Incarnations;

    /// A consumer's incarnation is over only once a pong gave a newer one: not while none
    /// was heard (the leader restarted), nor when it is newer than any heard (the node
    /// restarted and a client subscribed before the first pong came back).
    #[test]
    fn an_incarnation_ends_when_a_pong_replaces_it() {
        let mut i = Incarnations::default();
        assert!(!i.ended(1, 7));
        i.heard(1, 7);
        i.heard(1, 7);
        assert!(!i.ended(1, 7));
        assert!(!i.ended(1, 9));
        i.heard(1, 9);
        assert!(i.ended(1, 7));
        assert!(!i.ended(1, 9));
        assert!(!i.ended(2, 7));
        // Back to an earlier value (12 random bits can repeat): that run is current again.
        i.heard(1, 7);
        assert!(!i.ended(1, 7));
        assert!(i.ended(1, 9));
        i.forget(1);
        assert!(!i.ended(1, 9));
    }
}
