//! [`ClusterHandle`]: what the rest of a node uses: propose a metadata change and get its
//! outcome once *this* node has applied it, change the membership, read the status.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use pier_broker::Broker;
use pier_store::DefinitionsStore;
use serde::Serialize;

use crate::error::ClusterError;
use crate::metadata::{Applier, Catalog, CommandError, Hooks, MetadataCommand, Outcome};
use crate::node::{self, ClusterConfig, Node, Prepared, Reporter, LIVENESS};
use crate::raft::{node_id, PeerNode, Proposal};
use crate::rpc::{ForwardError, NodeReport, Request, Response};
use crate::transport::TransportError;

/// How long a metadata change waits for other running members to apply it.
const SETTLE_WAIT: Duration = Duration::from_secs(1);

/// A proposal applied on this node: its log index and what applying it did here.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub outcome: Result<Outcome, CommandError>,
}

/// One member as `cluster_status` and `/api/nodes` show it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub addr: String,
    pub voter: bool,
    /// Answered a ping within the last few seconds (this node: always).
    pub running: bool,
    /// Its own report (`None` when it did not answer).
    pub report: Option<NodeReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node: String,
    pub cluster_id: Option<String>,
    pub cluster_name: Option<String>,
    pub leader: Option<String>,
    pub term: u64,
    /// This node's Raft role: leader, follower, candidate, learner.
    pub state: String,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Members this node cannot reach while they are in its membership (RabbitMQ's
    /// "network partitions" as seen from here).
    pub partitions: Vec<String>,
}

/// The cluster, as one node sees it (cheap to clone).
#[derive(Clone)]
pub struct ClusterHandle {
    node: Arc<Node>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("node", &self.node.me)
            .finish_non_exhaustive()
    }
}

/// Removes a proposal's waiter however the call ends.
struct WaiterGuard<'a> {
    node: &'a Node,
    request: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.node.waiters.forget(self.request);
    }
}

impl ClusterHandle {
    /// Starts this node's cluster membership (see [`ClusterConfig`]). Call after the broker
    /// has recovered from `definitions` (`BrokerStorage::recover`).
    pub async fn start(
        config: ClusterConfig,
        broker: Arc<Broker>,
        definitions: Arc<DefinitionsStore>,
        hooks: Option<Arc<dyn Hooks>>,
    ) -> Result<ClusterHandle, ClusterError> {
        let prepared = Self::prepare(&config, &definitions)?;
        broker.set_cluster(prepared.cluster());
        Self::start_prepared(config, prepared, broker, definitions, hooks).await
    }

    /// The first step of [`ClusterHandle::start_prepared`], before the broker recovers from
    /// `definitions`: reads the catalog (where each durable queue lives). Give
    /// [`Prepared::cluster`] to `Broker::set_cluster`, then recover, then start. Call on the
    /// tokio runtime.
    pub fn prepare(
        config: &ClusterConfig,
        definitions: &Arc<DefinitionsStore>,
    ) -> Result<Prepared, ClusterError> {
        node::prepare(config, definitions)
    }

    /// Starts this node's cluster membership with what [`ClusterHandle::prepare`] read. Call
    /// after the broker has recovered.
    pub async fn start_prepared(
        config: ClusterConfig,
        prepared: Prepared,
        broker: Arc<Broker>,
        definitions: Arc<DefinitionsStore>,
        hooks: Option<Arc<dyn Hooks>>,
    ) -> Result<ClusterHandle, ClusterError> {
        let node = node::start(config, prepared, broker, definitions, hooks).await?;
        Ok(ClusterHandle { node })
    }

    pub(crate) fn from_node(node: Arc<Node>) -> Self {
        ClusterHandle { node }
    }

    /// The management layer reports this node's figures to its peers through `reporter`.
    pub fn set_reporter(&self, reporter: Arc<dyn Reporter>) {
        let _ = self.node.reporter.set(reporter);
    }

    pub fn node_name(&self) -> &str {
        &self.node.me.name
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.node.cluster_id()
    }

    pub fn applier(&self) -> &Applier {
        &self.node.applier
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        self.node.applier.catalog()
    }

    /// Proposes `command` to the cluster and returns once this node has applied it
    /// (read-your-writes: a client that gets the answer and asks this node again sees the
    /// change), with the outcome of applying it here.
    ///
    /// Waits at most the configured `propose_timeout` (5 s by default), then fails with
    /// [`ClusterError::NoQuorum`] when no leader could be reached, or
    /// [`ClusterError::Unconfirmed`] when the leader took the change but did not confirm it.
    ///
    /// Cancel safety: dropping the future abandons the wait; the change may still be applied.
    pub async fn propose(&self, command: MetadataCommand) -> Result<Applied, ClusterError> {
        let n = &self.node;
        let timeout = n.config.propose_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let _permit = tokio::time::timeout_at(deadline, n.inflight.acquire())
            .await
            .map_err(|_| ClusterError::Busy)?
            .map_err(|_| ClusterError::Stopped("closed".into()))?;
        let request = n.next_request.fetch_add(1, Ordering::Relaxed);
        let mut rx = n.waiters.register(request);
        let _guard = WaiterGuard { node: n, request };
        let proposal = Proposal {
            origin: n.me_id,
            request,
            command,
        };
        let index = self.submit(proposal, deadline, timeout).await?;
        // Wait for this node's own apply of that entry.
        let mut applied = n.applied();
        let waited = || u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let outcome = loop {
            tokio::select! {
                r = &mut rx => {
                    match r {
                        Ok(outcome) => break outcome,
                        Err(_) => {
                            return Err(ClusterError::Stopped("the state machine went away".into()))
                        }
                    }
                }
                changed = applied.changed() => {
                    if changed.is_err() {
                        // The Raft node was replaced (a reset); the outcome cannot come.
                        return Err(ClusterError::Stopped("the node was reset".into()));
                    }
                    let at = applied.borrow_and_update().map_or(0, |l| l.index);
                    if at >= index {
                        // Applied through a snapshot (the waiter missed it) or just now.
                        break rx.try_recv().unwrap_or(Ok(Outcome::Done));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(ClusterError::NotApplied { index, waited_ms: waited() });
                }
            }
        };
        self.settle_peers(index).await;
        Ok(Applied { index, outcome })
    }

    /// Waits (briefly) until every other running member has applied entry `index`, so a
    /// client told "done" that asks another node next sees the change there too, as with
    /// RabbitMQ's Mnesia, whose transactions commit on every running node before the
    /// reply. A member that is slow or goes away is not waited for past [`SETTLE_WAIT`]:
    /// the change is committed either way.
    async fn settle_peers(&self, index: u64) {
        let n = &self.node;
        let peers: Vec<(u64, PeerNode)> = n
            .members()
            .into_iter()
            .filter(|(id, _, _)| *id != n.me_id && n.is_running(*id))
            .map(|(id, p, _)| (id, p))
            .collect();
        if peers.is_empty() {
            return;
        }
        let wait_ms = u64::try_from(SETTLE_WAIT.as_millis()).unwrap_or(u64::MAX);
        let mut calls = tokio::task::JoinSet::new();
        for (id, p) in peers {
            let node = Arc::clone(n);
            calls.spawn(async move {
                let request = Request::Applied { index, wait_ms };
                let limit = SETTLE_WAIT + Duration::from_millis(100);
                node.transport.call(id, &p.addr, &request, limit).await
            });
        }
        // Whatever each answers (or an old node's refusal of a request it does not know),
        // the wait is over.
        while calls.join_next().await.is_some() {}
    }

    /// Gets `proposal` into the log through the leader; returns its index.
    async fn submit(
        &self,
        proposal: Proposal,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<u64, ClusterError> {
        let n = &self.node;
        let waited = || u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut last_leader: Option<PeerNode> = None;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(self.no_quorum(last_leader.as_ref()));
            }
            let m = n.metrics();
            // A leader that has not heard from a majority for an election timeout is on the
            // minority side: it cannot commit, say so now.
            if m.current_leader == Some(n.me_id)
                && m.millis_since_quorum_ack
                    .is_some_and(|ms| ms > crate::raft::ELECTION_TIMEOUT_MAX_MS)
            {
                return Err(self.no_quorum(Some(&n.me)));
            }
            let leader = crate::raft::leader_of(&m).map(|(_, p)| p);
            match (m.current_leader, leader) {
                (Some(l), _) if l == n.me_id => {
                    let r =
                        tokio::time::timeout_at(deadline, n.raft().client_write(proposal.clone()))
                            .await;
                    match r {
                        Ok(Ok(resp)) => return Ok(resp.log_id.index),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                            // Lost leadership before appending: safe to try again.
                        }
                        Ok(Err(e)) => return Err(ClusterError::Stopped(e.to_string())),
                        Err(_) => return Err(ClusterError::Unconfirmed {
                            waited_ms: waited(),
                            reason:
                                "this node (the leader) could not commit it: no majority answered"
                                    .into(),
                        }),
                    }
                }
                (Some(l), Some(peer)) => {
                    last_leader = Some(peer.clone());
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    // A leader this node has not heard from lately is on the other side of
                    // a partition (or down): nothing is sent that could get through later.
                    if !n.is_running(l) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let request = Request::Forward {
                        proposal: proposal.clone(),
                        expires_unix_ms: crate::rpc::unix_ms()
                            + u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                    };
                    let r = n.transport.call(l, &peer.addr, &request, left).await;
                    match r {
                        Ok(Response::Forward(Ok(index))) => return Ok(index),
                        Ok(Response::Forward(Err(ForwardError::NotLeader { .. }))) => {}
                        Ok(Response::Forward(Err(ForwardError::Failed(e)))) => {
                            return Err(ClusterError::Stopped(e))
                        }
                        Ok(_) => {}
                        // Never delivered: safe to try again.
                        Err(
                            TransportError::Unreachable { .. } | TransportError::Refused { .. },
                        ) => {}
                        // Delivered, or maybe: the leader may have appended it.
                        Err(e) => {
                            if tokio::time::Instant::now() >= deadline {
                                return Err(self.no_quorum(last_leader.as_ref()));
                            }
                            return Err(ClusterError::Unconfirmed {
                                waited_ms: waited(),
                                reason: format!("the leader {peer} did not answer: {e}"),
                            });
                        }
                    }
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn no_quorum(&self, leader: Option<&PeerNode>) -> ClusterError {
        let n = &self.node;
        let members = n.members();
        let voters: Vec<u64> = members
            .iter()
            .filter(|(_, _, v)| *v)
            .map(|(id, _, _)| *id)
            .collect();
        let reachable = voters.iter().filter(|id| n.is_running(**id)).count();
        ClusterError::NoQuorum {
            reachable,
            voters: voters.len(),
            leader: match leader {
                Some(l) => format!("; last known leader {}", l.name),
                None => "; no leader".to_owned(),
            },
        }
    }

    /// RabbitMQ's `join_cluster`: resets this node (its definitions and messages are
    /// deleted, as `rabbitmqctl reset` does) and joins the cluster that the node at `addr`
    /// (a cluster address, `host:port`) belongs to. Refused when this node has other
    /// members in its own cluster.
    pub async fn join(&self, addr: &str) -> Result<String, ClusterError> {
        node::reset_and_join(&self.node, addr).await
    }

    /// RabbitMQ's `forget_cluster_node`: removes the member of that name (stop it first: a
    /// removed node that keeps running cannot take part any more).
    pub async fn forget(&self, name: &str) -> Result<(), ClusterError> {
        let n = &self.node;
        let _guard = n.membership_lock.lock().await;
        let deadline = tokio::time::Instant::now() + node::JOIN_TIMEOUT;
        loop {
            let m = n.metrics();
            let leader = crate::raft::leader_of(&m);
            let r = match leader {
                Some((l, _)) if l == n.me_id => {
                    let resp = n.transport_handler_forget(name).await;
                    Some(resp)
                }
                Some((l, peer)) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match n
                        .transport
                        .call(l, &peer.addr, &Request::Forget(name.to_owned()), left)
                        .await
                    {
                        Ok(Response::Forget(r)) => Some(r),
                        _ => None,
                    }
                }
                None => None,
            };
            match r {
                Some(Ok(())) => return Ok(()),
                Some(Err(ForwardError::Failed(e))) => return Err(ClusterError::Membership(e)),
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.no_quorum(None));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// This node's view of the cluster, with each member's own report (asked for in
    /// parallel, one second at most).
    pub async fn status(&self) -> ClusterStatus {
        let n = &self.node;
        let m = n.metrics();
        let members = n.members();
        let mut asks = Vec::new();
        for (id, peer, voter) in members {
            let n = Arc::clone(n);
            asks.push(tokio::spawn(async move {
                let report = if id == n.me_id {
                    Some(n.local_report())
                } else if n.is_running(id) {
                    match n
                        .transport
                        .call(id, &peer.addr, &Request::Status, Duration::from_secs(1))
                        .await
                    {
                        Ok(Response::Status(r)) => Some(*r),
                        _ => None,
                    }
                } else {
                    None
                };
                MemberStatus {
                    running: n.is_running(id),
                    name: peer.name,
                    addr: peer.addr,
                    voter,
                    report,
                }
            }));
        }
        let mut statuses = Vec::new();
        for a in asks {
            if let Ok(s) = a.await {
                statuses.push(s);
            }
        }
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        let partitions = statuses
            .iter()
            .filter(|s| !s.running)
            .map(|s| s.name.clone())
            .collect();
        let leader = crate::raft::leader_of(&m).map(|(_, p)| p.name);
        ClusterStatus {
            node: n.me.name.clone(),
            cluster_id: n.cluster_id(),
            cluster_name: self.catalog().cluster_name(),
            leader,
            term: m.current_term,
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_owned(),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            members: statuses,
            partitions,
        }
    }

    /// The members of a queue declared through this node, its first leader first (the
    /// node that forms the group: the queue's recorded home). Only a durable
    /// `x-queue-type: quorum` queue is replicated (unless `--quorum-replication false`): up
    /// to `x-quorum-initial-group-size` members (default 3, capped at the running nodes),
    /// always this node, then the running nodes with the fewest replicas (RabbitMQ's
    /// choice, for a balanced cluster). `x-queue-leader-locator`: `client-local` (the
    /// default) leads from this node, `balanced` (and the older `least-leaders` and
    /// `random`, which RabbitMQ 4 maps to it) from the member leading the fewest quorum
    /// queues. The policy's `queue-leader-locator` (`policy_locator`) wins over the
    /// argument, as in RabbitMQ 4's `rabbit_queue_location`. A client's declare and the
    /// management API's both come here.
    pub fn queue_members(
        &self,
        durable: bool,
        arguments: &pier_wire::FieldTable,
        policy_locator: Option<&str>,
    ) -> Vec<String> {
        self.queue_members_after(durable, arguments, policy_locator, &[])
    }

    /// As `queue_members`, counting also the quorum queues placed before this one that
    /// the catalog does not hold yet (`earlier`: their members, leader first): a
    /// definitions import places all its queues before any of them is declared.
    pub fn queue_members_after(
        &self,
        durable: bool,
        arguments: &pier_wire::FieldTable,
        policy_locator: Option<&str>,
        earlier: &[Vec<String>],
    ) -> Vec<String> {
        use pier_wire::FieldValue;
        let me = self.node.me.name.clone();
        if declares_stream(durable, arguments) {
            return self.stream_members(arguments);
        }
        if !declares_quorum(durable, arguments) || !self.node.config.quorum_replication {
            return vec![me];
        }
        let size = arguments
            .get("x-quorum-initial-group-size")
            .and_then(FieldValue::as_i64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(3);
        let locator: Option<&[u8]> = match (policy_locator, arguments.get("x-queue-leader-locator"))
        {
            (Some(p), _) => Some(p.as_bytes()),
            (None, Some(FieldValue::LongString(l))) => Some(l.as_bytes()),
            _ => None,
        };
        let balanced = matches!(locator, Some(b"balanced" | b"least-leaders" | b"random"));
        let others: Vec<String> = self
            .node
            .members()
            .into_iter()
            .filter(|(id, p, _)| p.name != me && self.node.is_running(*id))
            .map(|(_, p, _)| p.name)
            .collect();
        let mut load = Placement::default();
        let quorum_queues = &self.node.queues.quorum;
        self.catalog().for_each_queue_home(|(vhost, name), h| {
            if h.group == 0 {
                return;
            }
            // The leader as this node knows it (it does for the groups it is a member
            // of), else the member that formed the group.
            let leader = quorum_queues
                .leader_of(vhost, name)
                .unwrap_or_else(|| h.home.clone());
            load.add(&h.members, &leader);
        });
        for members in earlier {
            if let Some(leader) = members.first() {
                load.add(members, leader);
            }
        }
        load.place(&me, others, size, balanced)
    }

    /// The members of a stream declared through this node: this node (its leader) first,
    /// then other members, up to `x-initial-cluster-size` in all (by default every member
    /// of the cluster, as RabbitMQ), running ones first. RabbitMQ's leader locators are not
    /// applied: the declaring node leads.
    fn stream_members(&self, arguments: &pier_wire::FieldTable) -> Vec<String> {
        let me = self.node.me.name.clone();
        let mut others: Vec<(bool, String)> = self
            .node
            .members()
            .into_iter()
            .filter(|(_, p, _)| p.name != me)
            .map(|(id, p, _)| (!self.node.is_running(id), p.name))
            .collect();
        others.sort();
        let size = arguments
            .get("x-initial-cluster-size")
            .and_then(pier_wire::FieldValue::as_i64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(others.len() + 1)
            .max(1);
        std::iter::once(me)
            .chain(others.into_iter().map(|(_, n)| n))
            .take(size)
            .collect()
    }

    /// A replicated stream's members, its leader first (`None` for a stream without
    /// replicas and for any other queue).
    pub fn stream_members_of(&self, vhost: &str, name: &str) -> Option<Vec<String>> {
        let home = self.node.applier.catalog().queue_home(vhost, name)?;
        (home.group == 0 && home.members.len() > 1).then(|| {
            let mut m = vec![home.home.clone()];
            m.extend(home.members.into_iter().filter(|n| *n != home.home));
            m
        })
    }

    /// Stores a consumer's offset in a stream led by another node (its consumer reads a
    /// replica here): the leader writes it, and it reaches the replicas with the log.
    pub async fn store_stream_offset(
        &self,
        vhost: &str,
        name: &str,
        reference: String,
        offset: u64,
    ) -> Result<(), String> {
        let home = self
            .node
            .applier
            .catalog()
            .queue_home(vhost, name)
            .ok_or_else(|| format!("no stream '{name}' in vhost '{vhost}'"))?;
        let ask = crate::rpc::Request::StreamStoreOffset {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            reference,
            offset,
        };
        match self
            .ask_member(&home.home, &ask, Duration::from_secs(5))
            .await?
        {
            crate::rpc::Response::StreamStoreOffset(r) => r,
            _ => Err("unexpected answer".to_owned()),
        }
    }

    /// `add_replica` (rabbitmq-streams): `node` becomes a member of the stream; its replica
    /// copies the leader's log from its first chunk, and counts towards commits once the
    /// members change.
    pub async fn add_stream_replica(
        &self,
        vhost: &str,
        name: &str,
        node: &str,
    ) -> Result<(), ClusterError> {
        let home = self.stream_home(vhost, name)?;
        if self.node.member(node).is_none() {
            return Err(ClusterError::Membership(format!(
                "{node} is not a member of the cluster"
            )));
        }
        if home.members.iter().any(|m| m == node) {
            return Err(ClusterError::Membership(format!(
                "{node} is already a member of stream '{name}' in vhost '{vhost}'"
            )));
        }
        let mut members = home.members;
        members.push(node.to_owned());
        self.set_members(vhost, name, members).await
    }

    /// `delete_replica` (rabbitmq-streams): `node` leaves the stream's members and its copy
    /// is deleted. The leader stays (leaders do not move yet).
    pub async fn delete_stream_replica(
        &self,
        vhost: &str,
        name: &str,
        node: &str,
    ) -> Result<(), ClusterError> {
        let home = self.stream_home(vhost, name)?;
        member_of(&home, vhost, name, node)?;
        if home.home == node {
            return Err(ClusterError::Membership(format!(
                "{node} is the leader of stream '{name}' in vhost '{vhost}'"
            )));
        }
        let members = home
            .members
            .iter()
            .filter(|m| *m != node)
            .cloned()
            .collect();
        self.set_members(vhost, name, members).await
    }

    /// Records a replicated queue's or stream's new members in the catalog (every node
    /// applies it: `queue_members_changed`).
    async fn set_members(
        &self,
        vhost: &str,
        name: &str,
        members: Vec<String>,
    ) -> Result<(), ClusterError> {
        self.propose(crate::metadata::MetadataCommand::SetQueueMembers {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            members,
        })
        .await?;
        Ok(())
    }

    /// A stream's record, its members listing the leader at least.
    fn stream_home(
        &self,
        vhost: &str,
        name: &str,
    ) -> Result<crate::metadata::QueueHome, ClusterError> {
        let mut home = self
            .node
            .applier
            .catalog()
            .queue_home(vhost, name)
            .filter(|h| h.group == 0)
            .ok_or_else(|| {
                ClusterError::Membership(format!("no stream '{name}' in vhost '{vhost}'"))
            })?;
        if !home.members.contains(&home.home) {
            home.members.insert(0, home.home.clone());
        }
        Ok(home)
    }

    /// This node's replica of a stream led by another node, for its readers.
    pub fn stream_replica(
        &self,
        vhost: &str,
        name: &str,
    ) -> Option<std::sync::Arc<pier_store::stream::Stream>> {
        self.node.queues.streams.get(vhost, name)
    }

    /// A replicated quorum queue's members and its leader as this node knows it; `None`
    /// for any other queue.
    pub fn quorum_queue(&self, vhost: &str, name: &str) -> Option<(Vec<String>, Option<String>)> {
        let home = self.node.applier.catalog().queue_home(vhost, name)?;
        if home.group == 0 {
            return None;
        }
        let leader = self.node.queues.quorum.leader_of(vhost, name);
        Some((home.members, leader))
    }

    /// Every member's view of a replicated quorum queue's group (RabbitMQ's
    /// `rabbitmq-queues quorum_status`): one row per member, `Err` where it did not answer.
    pub async fn quorum_status(
        &self,
        vhost: &str,
        name: &str,
    ) -> Option<Vec<(String, Result<crate::rpc::GroupStatus, String>)>> {
        let home = self.node.applier.catalog().queue_home(vhost, name)?;
        if home.group == 0 {
            return None;
        }
        let mut rows = Vec::new();
        for member in &home.members {
            let row = if *member == self.node.me.name {
                self.node
                    .queues
                    .quorum
                    .group_status(home.group)
                    .ok_or_else(|| "not started".to_owned())
            } else {
                let ask = crate::rpc::Request::QueueStatus { group: home.group };
                match self.ask_member(member, &ask, Duration::from_secs(5)).await {
                    Ok(crate::rpc::Response::QueueStatus(Some(s))) => Ok(s),
                    Ok(crate::rpc::Response::QueueStatus(None)) => Err("not started".to_owned()),
                    Ok(_) => Err("unexpected answer".to_owned()),
                    Err(e) => Err(e),
                }
            };
            rows.push((member.clone(), row));
        }
        Some(rows)
    }

    /// The items of a management listing on every other running member (see
    /// [`Reporter::list`]), asked at once and waited for at most 3 s; a member that does not
    /// answer in time is left out.
    pub async fn list_elsewhere(
        &self,
        what: &str,
        user: &str,
        tags: &[String],
        vhost: Option<&str>,
    ) -> Vec<serde_json::Value> {
        let mut asks = tokio::task::JoinSet::new();
        for (id, peer, _) in self.node.members() {
            if id == self.node.me_id || !self.node.is_running(id) {
                continue;
            }
            let node = Arc::clone(&self.node);
            let ask = crate::rpc::Request::List {
                what: what.to_owned(),
                user: user.to_owned(),
                tags: tags.to_vec(),
                vhost: vhost.map(str::to_owned),
            };
            asks.spawn(async move {
                node.transport
                    .call(id, &peer.addr, &ask, Duration::from_secs(3))
                    .await
            });
        }
        let mut items = Vec::new();
        while let Some(answer) = asks.join_next().await {
            if let Ok(Ok(crate::rpc::Response::List(found))) = answer {
                items.extend(found.iter().filter_map(|s| serde_json::from_str(s).ok()));
            }
        }
        items
    }

    /// Closes client connection `name` on member `node`; whether it was there.
    pub async fn close_connection_on(&self, node: &str, name: &str, reason: &str) -> bool {
        let ask = crate::rpc::Request::CloseConnection {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        matches!(
            self.ask_member(node, &ask, Duration::from_secs(5)).await,
            Ok(crate::rpc::Response::Closed(true))
        )
    }

    /// Sends `request` to the cluster member of that name; `Err` says why it got no answer.
    async fn ask_member(
        &self,
        name: &str,
        request: &crate::rpc::Request,
        timeout: Duration,
    ) -> Result<crate::rpc::Response, String> {
        let (id, peer) = self
            .node
            .member(name)
            .ok_or_else(|| format!("{name} is not a cluster member"))?;
        self.node
            .transport
            .call(id, &peer.addr, request, timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// A replicated quorum queue's catalog entry, or why the queue has none.
    fn replicated_home(
        &self,
        vhost: &str,
        name: &str,
    ) -> Result<crate::metadata::QueueHome, ClusterError> {
        match self.node.applier.catalog().queue_home(vhost, name) {
            Some(h) if h.group != 0 => Ok(h),
            _ => Err(ClusterError::Membership(format!(
                "queue '{name}' in vhost '{vhost}' is not a replicated quorum queue"
            ))),
        }
    }

    /// Sends a membership change to the group's leader (found through the members),
    /// following "not the leader" answers for a few seconds.
    async fn group_change(
        &self,
        home: &crate::metadata::QueueHome,
        change: crate::rpc::MemberChange,
    ) -> Result<(), ClusterError> {
        use crate::rpc::{ForwardError, Request, Response};
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut target: Option<String> = None;
        let mut last = String::from("no leader known");
        loop {
            if target.is_none() {
                target = match self.node.queues.quorum.group_status(home.group) {
                    Some(s) => s.leader,
                    None => None,
                };
            }
            if target.is_none() {
                let ask = Request::QueueStatus { group: home.group };
                for m in &home.members {
                    if let Ok(Response::QueueStatus(Some(s))) =
                        self.ask_member(m, &ask, Duration::from_secs(3)).await
                    {
                        if s.leader.is_some() {
                            target = s.leader;
                            break;
                        }
                    }
                }
            }
            if let Some(leader) = target.clone() {
                let r = if leader == self.node.me.name {
                    self.node
                        .queues
                        .quorum
                        .serve_members(home.group, change.clone())
                        .await
                } else {
                    let ask = Request::QueueMembers {
                        group: home.group,
                        change: change.clone(),
                    };
                    self.ask_member(&leader, &ask, Duration::from_secs(30))
                        .await
                        .unwrap_or_else(Response::Refused)
                };
                match r {
                    Response::QueueMembers(Ok(())) => return Ok(()),
                    Response::QueueMembers(Err(ForwardError::NotLeader { leader })) => {
                        target = leader.map(|p| p.name);
                        last = "not the leader".into();
                    }
                    Response::QueueMembers(Err(ForwardError::Failed(e))) => {
                        target = None;
                        last = e;
                    }
                    other => {
                        target = None;
                        last = format!("{other:?}");
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Membership(format!(
                    "the quorum queue's membership did not change: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `add_member`: `node` becomes a member of the queue's group (replicated to once it has
    /// caught up, then voting).
    pub async fn add_queue_member(
        &self,
        vhost: &str,
        name: &str,
        node: &str,
    ) -> Result<(), ClusterError> {
        let home = self.replicated_home(vhost, name)?;
        let Some((_, peer)) = self.node.member(node) else {
            return Err(ClusterError::Membership(format!(
                "{node} is not a member of the cluster"
            )));
        };
        if home.members.iter().any(|m| m == node) {
            return Err(ClusterError::Membership(format!(
                "{node} is already a member of queue '{name}' in vhost '{vhost}'"
            )));
        }
        let mut members = home.members.clone();
        members.push(node.to_owned());
        self.set_members(vhost, name, members).await?;
        self.group_change(&home, crate::rpc::MemberChange::Add(peer))
            .await
    }

    /// `delete_member`: `node` leaves the queue's group (its copy is dropped).
    pub async fn delete_queue_member(
        &self,
        vhost: &str,
        name: &str,
        node: &str,
    ) -> Result<(), ClusterError> {
        let home = self.replicated_home(vhost, name)?;
        member_of(&home, vhost, name, node)?;
        if home.members.len() == 1 {
            return Err(ClusterError::Membership(format!(
                "{node} is the last member of queue '{name}' in vhost '{vhost}'"
            )));
        }
        self.group_change(&home, crate::rpc::MemberChange::Remove(node.to_owned()))
            .await?;
        let members = home
            .members
            .iter()
            .filter(|m| *m != node)
            .cloned()
            .collect();
        self.set_members(vhost, name, members).await
    }

    /// `transfer_leadership`: `node` (a member) takes the lead. Followers refuse votes while
    /// their leader's lease runs (openraft renews it with every heartbeat), so the current
    /// leader stops its heartbeats, `node` starts elections until it leads, and the old
    /// leader's heartbeats come back whatever happened. Answers once `node` leads, or says
    /// who still does after a few seconds (a queue under load keeps the lease alive through
    /// its appends).
    pub async fn transfer_queue_leadership(
        &self,
        vhost: &str,
        name: &str,
        node: &str,
    ) -> Result<(), ClusterError> {
        use crate::rpc::MemberChange;
        let home = self.replicated_home(vhost, name)?;
        member_of(&home, vhost, name, node)?;
        let Some(old) = self.quorum_leader(vhost, name).await else {
            return Err(ClusterError::Membership(format!(
                "queue '{name}' in vhost '{vhost}' has no leader now"
            )));
        };
        if old == node {
            return Ok(());
        }
        self.member_change(&old, home.group, MemberChange::Heartbeat(false))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let outcome = loop {
            self.member_change(node, home.group, MemberChange::Elect)
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.quorum_leader(vhost, name).await;
            if now.as_deref() == Some(node) {
                break Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(ClusterError::Membership(format!(
                    "{node} did not take the lead of queue '{name}' in vhost '{vhost}' (leader: {})",
                    now.unwrap_or_else(|| "none".into())
                )));
            }
        };
        self.member_change(&old, home.group, MemberChange::Heartbeat(true))
            .await;
        outcome
    }

    /// The leader of a replicated quorum queue as its members report it.
    async fn quorum_leader(&self, vhost: &str, name: &str) -> Option<String> {
        self.quorum_status(vhost, name)
            .await
            .unwrap_or_default()
            .into_iter()
            .find_map(|(_, r)| r.ok().and_then(|s| s.leader))
    }

    /// Asks member `node`'s group to carry out `change` (this node's own directly); the
    /// answer is not awaited beyond a few seconds, nor looked at.
    async fn member_change(&self, node: &str, group: u64, change: crate::rpc::MemberChange) {
        if node == self.node.me.name {
            let _ = self.node.queues.quorum.serve_members(group, change).await;
        } else {
            let ask = crate::rpc::Request::QueueMembers { group, change };
            let _ = self.ask_member(node, &ask, Duration::from_secs(5)).await;
        }
    }

    /// Every replicated quorum queue: (vhost, name, members).
    pub fn replicated_queues(&self) -> Vec<(String, String, Vec<String>)> {
        self.node
            .applier
            .catalog()
            .state()
            .queue_homes
            .into_iter()
            .filter(|(_, h)| h.group != 0)
            .map(|((v, n), h)| (v, n, h.members))
            .collect()
    }

    /// The replicated quorum queues that would lose their majority if this node stopped
    /// (RabbitMQ's `node-is-quorum-critical`): (vhost, name) of each, where this node is a
    /// member and fewer than a majority of the members are running besides it.
    pub fn quorum_critical(&self) -> Vec<(String, String)> {
        let me = &self.node.me.name;
        self.node
            .applier
            .catalog()
            .state()
            .queue_homes
            .into_iter()
            .filter(|(_, h)| h.group != 0 && h.members.contains(me))
            .filter(|(_, h)| {
                let others = h
                    .members
                    .iter()
                    .filter(|m| *m != me && self.is_running(m))
                    .count();
                others < h.members.len() / 2 + 1
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// Every member's name and whether it is running (answered lately; this node is).
    pub fn members(&self) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = self
            .node
            .members()
            .into_iter()
            .map(|(id, p, _)| (p.name, self.node.is_running(id)))
            .collect();
        v.sort();
        v
    }

    /// Says where stream-protocol clients reach this node (its TLS port with `tls`); its
    /// pongs tell the others, whose `Metadata` answers then name it as the leader of the
    /// streams it hosts.
    pub fn set_stream_endpoint(&self, tls: bool, host: String, port: u16) {
        let n = &self.node;
        let own = if tls {
            &n.stream_tls_endpoint
        } else {
            &n.stream_endpoint
        };
        *own.lock().unwrap_or_else(|p| p.into_inner()) = Some((host, port));
    }

    /// Where stream-protocol clients reach each other running member that serves the
    /// protocol (over TLS with `tls`, for a client connected over TLS), by node name.
    pub fn stream_endpoints(&self, tls: bool) -> Vec<(String, String, u16)> {
        let n = &self.node;
        let map = if tls {
            &n.stream_tls_endpoints
        } else {
            &n.stream_endpoints
        };
        let endpoints = map.lock().unwrap_or_else(|p| p.into_inner());
        n.members()
            .into_iter()
            .filter(|(id, _, _)| *id != n.me_id && n.is_running(*id))
            .filter_map(|(id, peer, _)| {
                let (h, p) = endpoints.get(&id)?;
                Some((peer.name, h.clone(), *p))
            })
            .collect()
    }

    /// Waits (at most `limit`) until every other member has answered a ping. A node opens its
    /// client listeners after this, so that a client arriving at once does not find the
    /// home node of a queue counted as down only because it was not pinged yet.
    pub async fn await_members(&self, limit: Duration) {
        if self.node.transport.cluster_id().is_none() {
            return; // a fresh node: no members yet
        }
        // Raft loads the stored membership in its own task: until then there is none.
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let members = self.members();
            let awaited = !members.is_empty() && members.iter().all(|(_, running)| *running);
            if awaited || tokio::time::Instant::now() >= deadline {
                tracing::debug!(?members, "client listeners open");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asks every node hosting queues this node has handles of for their current figures
    /// (management answers with fresh counts for queues homed elsewhere). At most a few
    /// seconds; nodes that do not answer keep their last known figures.
    pub async fn refresh_queue_figures(&self) {
        let _ =
            tokio::time::timeout(Duration::from_secs(3), self.node.queues.refresh_figures()).await;
    }

    /// Whether `name` is a member this node can reach now.
    pub fn is_running(&self, name: &str) -> bool {
        self.node.is_running(node_id(name))
    }

    /// How long a member may stay silent and still count as running.
    pub fn liveness() -> Duration {
        LIVENESS
    }

    /// Stops Raft, the transport and the log (the process is exiting).
    pub async fn shutdown(&self) {
        let n = &self.node;
        n.shutdown_tasks();
        if let Err(e) = n.raft().shutdown().await {
            tracing::warn!("stopping Raft: {e}");
        }
        n.transport.close_all();
        n.log_store().shutdown();
    }
}

impl Node {
    async fn transport_handler_forget(self: &Arc<Self>, name: &str) -> Result<(), ForwardError> {
        node::forget_on_leader(self, name).await
    }
}

/// `node` is a member of the queue `home` describes, or the error saying it is not.
fn member_of(
    home: &crate::metadata::QueueHome,
    vhost: &str,
    name: &str,
    node: &str,
) -> Result<(), ClusterError> {
    if home.members.iter().any(|m| m == node) {
        Ok(())
    } else {
        Err(ClusterError::Membership(format!(
            "{node} is not a member of queue '{name}' in vhost '{vhost}'"
        )))
    }
}

/// How many quorum queue members and leaders each node has: what placement balances.
#[derive(Debug, Default)]
struct Placement {
    replicas: HashMap<String, usize>,
    leaders: HashMap<String, usize>,
}

impl Placement {
    /// Counts a queue of these members led by `leader`.
    fn add(&mut self, members: &[String], leader: &str) {
        for m in members {
            *self.replicas.entry(m.clone()).or_default() += 1;
        }
        *self.leaders.entry(leader.to_owned()).or_default() += 1;
    }

    /// `me` and up to `size - 1` of `others` (the running nodes) with the fewest replicas,
    /// ties by name; the leader first: `me`, or with `balanced` the member with the fewest
    /// leaders (ties: `me`, then by name).
    fn place(&self, me: &str, mut others: Vec<String>, size: usize, balanced: bool) -> Vec<String> {
        let count = |m: &HashMap<String, usize>, n: &str| m.get(n).copied().unwrap_or(0);
        others.sort_by(|a, b| {
            count(&self.replicas, a)
                .cmp(&count(&self.replicas, b))
                .then_with(|| a.cmp(b))
        });
        others.truncate(size.saturating_sub(1));
        let mut members = vec![me.to_owned()];
        members.extend(others);
        if balanced {
            // Stable: among equals the earlier (me, then by replicas and name) stays.
            let leader = members
                .iter()
                .enumerate()
                .min_by_key(|(i, n)| (count(&self.leaders, n), *i))
                .map_or(0, |(i, _)| i);
            members.swap(0, leader);
        }
        members
    }
}

/// Whether a declaration with these properties is of a quorum queue (`x-queue-type:
/// quorum`, durable), the queues placed over several members.
/// Whether a declaration with these arguments makes a stream.
pub fn declares_stream(durable: bool, arguments: &pier_wire::FieldTable) -> bool {
    durable
        && matches!(
            arguments.get("x-queue-type"),
            Some(pier_wire::FieldValue::LongString(t)) if t.as_bytes() == b"stream"
        )
}

pub fn declares_quorum(durable: bool, arguments: &pier_wire::FieldTable) -> bool {
    durable
        && matches!(
            arguments.get("x-queue-type"),
            Some(pier_wire::FieldValue::LongString(t)) if t.as_bytes() == b"quorum"
        )
}

#[cfg(test)]
mod placement_tests {
    use super::Placement;

    fn load(replicas: &[(&str, usize)], leaders: &[(&str, usize)]) -> Placement {
        let m = |v: &[(&str, usize)]| v.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect();
        Placement {
            replicas: m(replicas),
            leaders: m(leaders),
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn client_local_leads_from_the_declaring_node_with_the_least_loaded_others() {
        let p = load(&[("a", 5), ("b", 3), ("c", 1), ("d", 2)], &[("a", 9)]);
        let got = p.place("a", names(&["b", "c", "d"]), 3, false);
        assert_eq!(got, names(&["a", "c", "d"]));
        // The group is capped at the running nodes; a group of one is this node alone.
        assert_eq!(p.place("a", names(&["b"]), 3, false), names(&["a", "b"]));
        assert_eq!(p.place("a", names(&["b", "c"]), 1, false), names(&["a"]));
        // Equal load: by name.
        let even = load(&[], &[]);
        assert_eq!(
            even.place("b", names(&["c", "a"]), 2, false),
            names(&["b", "a"])
        );
    }

    #[test]
    fn balanced_leads_from_the_member_with_the_fewest_leaders() {
        let p = load(&[], &[("a", 4), ("b", 1), ("c", 2)]);
        let got = p.place("a", names(&["b", "c"]), 3, true);
        assert_eq!(got[0], "b");
        assert_eq!(
            {
                let mut g = got.clone();
                g.sort();
                g
            },
            names(&["a", "b", "c"])
        );
        // Ties keep the declaring node.
        let tie = load(&[], &[("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(tie.place("a", names(&["b", "c"]), 3, true)[0], "a");
        // Placement is a pure function of the load: the same answer every time.
        assert_eq!(got, p.place("a", names(&["b", "c"]), 3, true));
    }

    /// Queues placed one after another, each counted before the next (a definitions
    /// import): balanced leaders and the replicas of smaller groups spread.
    #[test]
    fn queues_placed_in_turn_spread() {
        let mut p = load(&[], &[]);
        let mut leaders = Vec::new();
        for _ in 0..3 {
            let members = p.place("a", names(&["b", "c"]), 3, true);
            leaders.push(members[0].clone());
            p.add(&members, &members[0]);
        }
        leaders.sort();
        assert_eq!(leaders, names(&["a", "b", "c"]));
        let mut p = load(&[], &[]);
        let mut seconds = Vec::new();
        for _ in 0..2 {
            let members = p.place("a", names(&["b", "c"]), 2, false);
            seconds.push(members[1].clone());
            p.add(&members, &members[0]);
        }
        assert_eq!(seconds, names(&["b", "c"]));
    }
}
