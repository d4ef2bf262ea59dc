//! `/api/nodes`, `/api/nodes/{node}` (`?memory=true`) and `/api/nodes/{node}/memory`.

use serde::Serialize;

use super::overview::{ChurnRates, Context, Described};
use super::EmptyList;

/// This node, as `/api/nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Node {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub running: bool,
    pub being_drained: bool,
    pub os_pid: String,
    pub uptime: u64,
    pub processors: usize,
    pub mem_used: u64,
    pub mem_limit: u64,
    pub mem_alarm: bool,
    pub disk_free: u64,
    pub disk_free_limit: u64,
    pub disk_free_alarm: bool,
    pub fd_used: u64,
    pub fd_total: u64,
    pub sockets_used: usize,
    /// The members this node cannot reach (none on a single node).
    pub partitions: Vec<String>,
    pub applications: EmptyList,
    pub contexts: Vec<Context>,
    pub exchange_types: Vec<Described>,
    pub auth_mechanisms: Vec<Described>,
    pub rates_mode: &'static str,
    pub run_queue: u64,
    pub mem_calculation_strategy: &'static str,
    pub enabled_plugins: EmptyList,
    pub cluster_links: EmptyList,
    #[serde(flatten)]
    pub churn: ChurnRates,
    /// With `?memory=true`: the breakdown of `/api/nodes/{node}/memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryBreakdown>,
}

/// Another member of the cluster, from its own report; RabbitMQ shows `running: false` and
/// little else for a node that did not answer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Member {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub running: bool,
    pub being_drained: bool,
    pub partitions: Vec<String>,
    pub cluster_links: EmptyList,
    #[serde(flatten)]
    pub report: Option<MemberReport>,
}

/// The figures a member reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemberReport {
    pub os_pid: String,
    pub uptime: u64,
    pub processors: u64,
    pub mem_used: u64,
    pub mem_limit: u64,
    pub mem_alarm: bool,
    pub disk_free: u64,
    pub disk_free_limit: u64,
    pub disk_free_alarm: bool,
    pub fd_used: u64,
    pub fd_total: u64,
    pub sockets_used: u64,
    pub applications: EmptyList,
    pub rates_mode: &'static str,
    pub mem_calculation_strategy: &'static str,
    pub enabled_plugins: EmptyList,
    pub pier_raft: RaftPosition,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RaftPosition {
    pub term: u64,
    pub state: String,
    pub last_applied: Option<u64>,
}

/// `/api/nodes/{node}/memory`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeMemory {
    pub memory: MemoryBreakdown,
}

/// Pier measures its resident set size only (strategy "rss"); in-memory message bodies are
/// given as `pier_message_bodies`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemoryBreakdown {
    pub strategy: &'static str,
    pub total: MemoryTotal,
    pub pier_message_bodies: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemoryTotal {
    pub rss: u64,
    pub allocated: u64,
    pub erlang: u64,
}

/// `/api/whoami`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Whoami {
    pub name: String,
    pub tags: Vec<String>,
}

/// `/api/cluster-name`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterName {
    pub name: String,
}

/// `/api/pier/cluster`: RabbitMQ's `cluster_status` sections; the Raft position only on a
/// clustered node.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterStatus {
    pub node: String,
    pub cluster_name: String,
    pub cluster_id: Option<String>,
    pub clustered: bool,
    pub leader: Option<String>,
    #[serde(flatten)]
    pub raft: Option<ClusterRaft>,
    pub disk_nodes: Vec<String>,
    pub running_nodes: Vec<String>,
    pub versions: std::collections::BTreeMap<String, Versions>,
    pub alarms: Vec<super::health::Alarm>,
    pub partitions: std::collections::BTreeMap<String, Vec<String>>,
    pub listeners: Vec<super::overview::Listener>,
    pub members: Vec<ClusterMember>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterRaft {
    pub term: u64,
    pub raft_state: String,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Versions {
    pub pier_version: String,
    pub rabbitmq_version: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterMember {
    pub name: String,
    pub address: String,
    pub voter: bool,
    pub running: bool,
    pub raft_state: Option<String>,
    pub last_applied: Option<u64>,
}

/// `POST /api/pier/cluster/join`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Joined {
    pub cluster_id: String,
}
