//! The message path between nodes: clients on any node reach a durable queue on its home
//! node. Per-message traffic never goes through Raft; it rides each connection's lane
//! (ordered one-way frames with their own credit, `transport/link.rs`).
//!
//! ```text
//!  node A (client)                                               node B (home of q)
//!  Queue q: Backend::Remote ─► NodeLink "B" (client.rs) ═ lane ═► Served (home.rs) ─► Queue q:
//!    RemoteQueue slots ◄─ Deliver/Cancelled/Confirms/Reply ◄═══   proxy consumers   Classic
//!                                                                (ProxySink: window,
//!                                                                 outstanding offsets)
//! ```
//!
//! A link session is one connection: when it ends (the peer died, or stopped answering
//! pings: a partition), the home node cancels the proxies of that session and puts back
//! everything it had delivered through it that was not settled; the client node nacks the
//! publishes not confirmed yet and cancels its consumers (`basic.cancel` to clients that
//! take it). A later session starts afresh; settlements of the old one are dropped (the
//! messages were put back). Nothing is lost and nothing moves: the queue stays on its home.
//!
//! [`QueueService`] is also the broker's [`pier_broker::cluster::Cluster`]: it says where a
//! durable queue lives (the catalog), hands out the links, and proposes lifecycle deletions
//! (auto-delete, `x-expires`, auto-delete exchanges) to the cluster.

mod client;
mod home;
pub(crate) mod stream;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use pier_broker::cluster::Cluster;
use pier_broker::{Broker, QueueLink};

use crate::handle::ClusterHandle;
use crate::metadata::{Catalog, MetadataCommand};
use crate::node::Node;
use crate::transport::Link;

pub(crate) use client::NodeLink;
use home::Served;
use wire::LaneMsg;

/// How often each node asks the others for the figures of the queues they host (management
/// shows every queue, with its messages, on every node).
const FIGURES_EVERY: Duration = Duration::from_secs(2);
/// How long a request to a home node may wait for its answer.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// This node's side of the message path (cheap to share).
pub struct QueueService {
    /// This service itself (links refer back to it).
    this: Weak<QueueService>,
    me: String,
    catalog: Arc<Catalog>,
    node: OnceLock<Weak<Node>>,
    runtime: tokio::runtime::Handle,
    /// Client side: one link per home node.
    clients: Mutex<HashMap<String, Arc<NodeLink>>>,
    /// Home side: what each connection's peer has here (by connection id).
    served: Mutex<HashMap<u64, Arc<Served>>>,
    /// Replicated quorum queues (Raft groups) of this node.
    pub(crate) quorum: Arc<crate::quorum::service::QuorumService>,
    /// Replicas of streams led by other nodes.
    pub(crate) streams: stream::StreamReplicas,
}

impl std::fmt::Debug for QueueService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueService")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl QueueService {
    /// Must be called on the tokio runtime (it keeps a handle to it).
    pub(crate) fn new(me: String, catalog: Arc<Catalog>, dir: std::path::PathBuf) -> Arc<Self> {
        Arc::new_cyclic(|this| QueueService {
            this: this.clone(),
            quorum: crate::quorum::service::QuorumService::new(me.clone(), dir, this.clone()),
            me,
            catalog,
            node: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
            clients: Mutex::new(HashMap::new()),
            served: Mutex::new(HashMap::new()),
            streams: stream::StreamReplicas::default(),
        })
    }

    /// The node started: from now on links can be made, and figures are polled.
    pub(crate) fn attach(self: &Arc<Self>, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
        let me = Arc::downgrade(self);
        self.runtime.spawn(poll_figures(me));
        let me = Arc::downgrade(self);
        self.runtime.spawn(async move {
            let mut every = tokio::time::interval(stream::RECONCILE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(s) = me.upgrade() else { break };
                s.streams.reconcile(&s);
            }
        });
    }

    pub(crate) fn node(&self) -> Option<Arc<Node>> {
        self.node.get().and_then(Weak::upgrade)
    }

    pub(crate) fn broker(&self) -> Option<Arc<Broker>> {
        self.node().map(|n| Arc::clone(n.applier.broker()))
    }

    fn client(&self, node: &str) -> Arc<NodeLink> {
        let mut clients = lock(&self.clients);
        Arc::clone(
            clients
                .entry(node.to_owned())
                .or_insert_with(|| NodeLink::new(node, self.this.clone())),
        )
    }

    fn served(&self, link: &Arc<Link>) -> Option<Arc<Served>> {
        let broker = self.broker()?;
        let mut served = lock(&self.served);
        Some(Arc::clone(served.entry(link.id).or_insert_with(|| {
            Served::start(Arc::clone(link), broker, &self.runtime)
        })))
    }

    /// A lane frame from `link`'s peer.
    pub(crate) fn lane(self: &Arc<Self>, link: &Arc<Link>, payload: Bytes) {
        let msg = match wire::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = %link.peer, "dropping a lane frame: {e}");
                return;
            }
        };
        match msg {
            LaneMsg::QuorumDeliver { .. } | LaneMsg::QuorumCancelled { .. } => {
                self.quorum.lane(msg);
            }
            LaneMsg::Deliver { .. }
            | LaneMsg::Cancelled { .. }
            | LaneMsg::Confirms { .. }
            | LaneMsg::Reply { .. } => {
                let client = lock(&self.clients).get(&link.peer.name).cloned();
                if let Some(c) = client {
                    c.incoming(link, msg);
                }
            }
            other => {
                if let Some(s) = self.served(link) {
                    s.handle(other);
                }
            }
        }
    }

    /// The lane frames at hand were handled: confirms go out in one frame.
    pub(crate) fn lane_batch_done(&self, link: &Arc<Link>) {
        let served = lock(&self.served).get(&link.id).cloned();
        if let Some(s) = served {
            s.flush_confirms();
        }
    }

    /// A connection ended: both sides of what it carried end with it.
    pub(crate) fn closed(&self, link: &Arc<Link>) {
        let served = lock(&self.served).remove(&link.id);
        if let Some(s) = served {
            s.end();
        }
        let client = lock(&self.clients).get(&link.peer.name).cloned();
        if let Some(c) = client {
            c.link_closed(link);
        }
        self.quorum.peer_lost(&link.peer.name);
    }

    /// Asks every home node with a session for its queues' figures and keeps them on the
    /// remote handles here.
    pub(crate) async fn refresh_figures(&self) {
        let clients: Vec<Arc<NodeLink>> = lock(&self.clients).values().cloned().collect();
        let Some(broker) = self.broker() else { return };
        // Every home node at once: one slow node does not hold up the others' figures (the
        // asks are aborted if the caller gives up, as the set is dropped).
        let mut asks = tokio::task::JoinSet::new();
        for c in clients.into_iter().filter(|c| c.session().is_some()) {
            asks.spawn(async move { c.all_figures().await });
        }
        while let Some(answer) = asks.join_next().await {
            let Ok(Ok(all)) = answer else { continue };
            for (vhost, queue, f) in all {
                if let Some(q) = broker.vhost(&vhost).and_then(|vh| vh.find_queue(&queue)) {
                    q.set_remote_figures(f.stats, f.counters);
                }
            }
        }
    }

    fn propose(&self, command: MetadataCommand, on_failure: impl FnOnce() + Send + 'static) {
        let Some(node) = self.node() else { return };
        let handle = ClusterHandle::from_node(node);
        self.runtime.spawn(async move {
            let what = command.describe();
            match handle.propose(command).await {
                Ok(_) => tracing::debug!("{what}: done"),
                Err(e) => {
                    tracing::warn!("{what}: {e}");
                    on_failure();
                }
            }
        });
    }
}

async fn poll_figures(service: Weak<QueueService>) {
    loop {
        tokio::time::sleep(FIGURES_EVERY).await;
        let Some(s) = service.upgrade() else { return };
        s.refresh_figures().await;
    }
}

impl Cluster for QueueService {
    fn node(&self) -> &str {
        &self.me
    }

    fn home_of(&self, vhost: &str, queue: &str) -> Option<String> {
        self.catalog.queue_home(vhost, queue).map(|h| h.home)
    }

    fn link(&self, node: &str) -> Arc<dyn QueueLink> {
        self.client(node)
    }

    fn quorum_link(
        &self,
        vhost: &str,
        queue: &str,
        config: &pier_broker::QueueConfig,
    ) -> Option<Arc<dyn QueueLink>> {
        let home = self.catalog.queue_home(vhost, queue)?;
        let config = pier_broker::queue::EngineConfig::quorum(config.clone());
        self.quorum
            .link(vhost, queue, &home, config)
            .map(|l| l as Arc<dyn QueueLink>)
    }

    fn queue_removed(&self, vhost: &str, queue: &str) {
        self.quorum.remove(vhost, queue);
        self.streams.remove(vhost, queue);
    }

    fn queue_members_changed(&self, vhost: &str, queue: &str) {
        if let Some(home) = self.catalog.queue_home(vhost, queue) {
            if home.group == 0 {
                if let Some(me) = self.this.upgrade() {
                    self.streams.members_changed(&me, vhost, queue, &home);
                }
            } else {
                self.quorum.members_changed(vhost, queue, &home);
            }
        }
    }

    fn queue_declared(&self, vhost: &str, queue: &str) {
        if let Some(me) = self.this.upgrade() {
            self.streams.declared(&me, vhost, queue);
        }
    }

    fn prepare_stream(
        &self,
        vhost: &str,
        queue: &str,
        dir: &std::path::Path,
    ) -> Result<(), String> {
        match self
            .catalog
            .queue_home(vhost, queue)
            .filter(stream::replicated)
        {
            Some(home) => stream::prepare(dir, &home).map(|_| ()),
            None => Ok(()),
        }
    }

    fn stream_leader_changed(&self, vhost: &str, queue: &str) {
        if let Some(me) = self.this.upgrade() {
            self.streams.leader_changed(&me, vhost, queue);
        }
    }

    fn stream_members(&self, vhost: &str, queue: &str) -> usize {
        self.catalog
            .queue_home(vhost, queue)
            .filter(|h| h.group == 0)
            .map_or(1, |h| h.members.len().max(1))
    }

    fn delete_queue(&self, vhost: &str, queue: &str, reason: &'static str) {
        tracing::info!(
            vhost,
            queue,
            reason,
            "proposing the deletion of a queue homed here"
        );
        let broker = self.broker();
        let (v, q) = (vhost.to_owned(), queue.to_owned());
        self.propose(
            MetadataCommand::DeleteQueue {
                vhost: vhost.to_owned(),
                name: queue.to_owned(),
            },
            move || {
                // It may be proposed again (the next x-expires tick, or never: logged).
                if let Some(q) = broker
                    .and_then(|b| b.vhost(&v))
                    .and_then(|vh| vh.find_queue(&q))
                {
                    q.deletion_not_proposed();
                }
            },
        );
    }

    fn delete_exchange(&self, vhost: &str, exchange: &str) {
        tracing::debug!(
            vhost,
            exchange,
            "proposing the deletion of an unused auto-delete exchange"
        );
        self.propose(
            MetadataCommand::DeleteExchange {
                vhost: vhost.to_owned(),
                name: exchange.to_owned(),
            },
            || {},
        );
    }
}
