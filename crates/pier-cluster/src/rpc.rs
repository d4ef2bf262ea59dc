//! What nodes say to each other over the peer transport: Raft's own RPCs, and the
//! application RPCs that let a client talk to any node (forward a proposal to the leader,
//! join, forget a member, report a node's figures).

use serde::{Deserialize, Serialize};

use crate::quorum::QueueEntry;
use crate::raft::network::{RaftRequest, RaftResponse};
use crate::raft::queue_group::{QueueReply, QueueTypeConfig};
use crate::raft::{PeerNode, Proposal};

/// Bumped on an incompatible change of anything in this file; peers speaking another
/// version are refused at the handshake.
pub const PROTOCOL_VERSION: u32 = 4;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first frame in each direction of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub node: PeerNode,
    /// The cluster this node's data belongs to (`None`: a node that has not formed or
    /// joined a cluster yet).
    pub cluster_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Raft(RaftRequest),
    /// To the leader: append this proposal; answers with its log index once the leader has
    /// applied it. A leader that receives it after `expires_unix_ms` (the proposer has given
    /// up and told its client so) refuses it, so a change reported as failed does not take
    /// effect later when a partition heals and a queued request gets through. This compares
    /// the two nodes' wall clocks, which need to agree to well within the propose timeout.
    Forward {
        proposal: Proposal,
        expires_unix_ms: u64,
    },
    /// To the leader: add this node as a voter (learner first, then voter).
    Join(PeerNode),
    /// To the leader: remove the member of that name.
    Forget(String),
    /// The node's figures (management's `/api/nodes`).
    Status,
    /// Liveness: answered at once (a partition that drops packets leaves TCP connections
    /// open; pings tell which peers really answer).
    Ping,
    /// Answered once this node has applied metadata entry `index`, or after `wait_ms`,
    /// with the index it has applied (a proposer makes its change visible cluster-wide
    /// before it answers its client).
    Applied {
        index: u64,
        wait_ms: u64,
    },
    /// A Raft RPC of a quorum queue's group.
    QueueRaft {
        group: u64,
        request: Box<RaftRequest<QueueTypeConfig>>,
    },
    /// To a quorum queue's leader (or a member, which passes it on): append this entry and
    /// answer once it is committed and applied there.
    QueueWrite {
        group: u64,
        entries: Vec<QueueEntry>,
    },
    /// A member's view of a quorum queue's group (`quorum_status`).
    QueueStatus {
        group: u64,
    },
    /// A membership change of a quorum queue's group, to its leader (`Elect`: to the member
    /// that is to lead).
    QueueMembers {
        group: u64,
        change: MemberChange,
    },
    /// A stream replica to its leader: the chunks after `from` (everything before it is
    /// synced on the replica: the leader counts it towards its commits). Answered when there
    /// are chunks, when the leader's committed offset passes `committed`, or after a second.
    StreamRead {
        vhost: String,
        name: String,
        /// The leader's epoch the replica follows (a leader of another epoch refuses).
        epoch: u64,
        from: u64,
        committed: u64,
    },
    /// A management listing of the answering node's own items (`Reporter::list`).
    List {
        what: String,
        user: String,
        tags: Vec<String>,
        vhost: Option<String>,
    },
    /// Closes a client connection of the answering node (management's `DELETE`).
    CloseConnection {
        name: String,
        reason: String,
    },
    /// The metadata leader, about to pick a new leader for a stream whose leader is down,
    /// to a member: stop taking chunks of epochs before `epoch` and say how far your copy
    /// goes (its epoch and synced end).
    StreamFence {
        vhost: String,
        name: String,
        epoch: u64,
    },
    /// A consumer connected to a replica stored its offset: to the stream's leader, which
    /// writes it (RabbitMQ's readers send it to the stream's writer too).
    StreamStoreOffset {
        vhost: String,
        name: String,
        reference: String,
        offset: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add this node: as a learner until it has caught up, then as a voter.
    Add(PeerNode),
    /// Remove the node of that name.
    Remove(String),
    /// Start an election here (`transfer_leadership`).
    Elect,
    /// Stop (false) or resume (true) this member's heartbeats while it leads
    /// (`transfer_leadership`: followers refuse votes while their leader's lease runs).
    Heartbeat(bool),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Raft(RaftResponse),
    Forward(Result<u64, ForwardError>),
    /// The cluster id the joining node takes.
    Join(Result<String, ForwardError>),
    Forget(Result<(), ForwardError>),
    Status(Box<NodeReport>),
    /// The answering node's cluster id (a fresh node learns that the seed has formed).
    Pong {
        cluster_id: Option<String>,
        /// The answering process's incarnation (`node::incarnation`): a new one means the
        /// node restarted, and the consumers its earlier run had are gone.
        incarnation: u64,
        /// Where stream-protocol clients reach the answering node (host, port), when it
        /// serves the stream protocol: `Metadata` names it as the leader of its streams.
        #[serde(default)]
        stream: Option<(String, u16)>,
        /// The same for its stream-protocol TLS port, when it has one: a client connected
        /// over TLS is named that one, as RabbitMQ does.
        #[serde(default)]
        stream_tls: Option<(String, u16)>,
    },
    /// The request was not accepted (for instance a vote request from a non-member).
    Refused(String),
    /// One answer per entry, in order.
    QueueWrite(Result<Vec<QueueReply>, ForwardError>),
    QueueStatus(Option<GroupStatus>),
    QueueMembers(Result<(), ForwardError>),
    /// The metadata index this node has applied.
    Applied(u64),
    StreamRead(Result<StreamChunks, String>),
    StreamStoreOffset(Result<(), String>),
    /// JSON objects.
    List(Vec<String>),
    Closed(bool),
    /// (the epoch the member's copy was last taken under, its synced end).
    StreamFence(Result<(u64, u64), String>),
}

/// What a stream's leader sends a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamChunks {
    /// Whole chunks as the leader stored them, from the offset asked for (may be empty).
    pub stored: bytes::Bytes,
    /// The leader's committed offset (chunks before it are on a majority).
    pub committed: u64,
}

/// One member's view of a quorum queue's Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// `leader`, `follower`, `candidate`, `learner`.
    pub state: String,
    pub term: u64,
    pub last_log_index: u64,
    /// The last entry this member applied (every member applies only committed entries).
    pub commit_index: u64,
    pub leader: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("not the leader")]
    NotLeader { leader: Option<PeerNode> },
    #[error("{0}")]
    Failed(String),
}

/// One node's figures for `/api/nodes` and `pier ctl cluster_status`: what the node itself
/// reports (see [`Reporter`](crate::Reporter)), plus its Raft position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub name: String,
    pub version: String,
    pub uptime_ms: u64,
    pub os_pid: u32,
    pub mem_used: u64,
    pub mem_limit: u64,
    pub mem_alarm: bool,
    pub disk_free: u64,
    pub disk_free_limit: u64,
    pub disk_free_alarm: bool,
    pub fd_used: u64,
    pub fd_total: u64,
    pub sockets_used: u64,
    pub processors: u64,
    /// (protocol, address) of each listener, e.g. ("amqp", "127.0.0.2:5672").
    pub listeners: Vec<(String, String)>,
    pub raft_term: u64,
    pub raft_last_applied: Option<u64>,
    pub raft_state: String,
    /// Members this node cannot reach (RabbitMQ's `partitions` of a node).
    #[serde(default)]
    pub partitions: Vec<String>,
    /// Client connections and channels open on this node, and messages published through
    /// it (the cluster-wide `/api/overview` sums them).
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub channels: u64,
    #[serde(default)]
    pub messages_published: u64,
}
