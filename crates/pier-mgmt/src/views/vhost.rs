//! `/api/vhosts[/{vhost}]`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::queue::Queueing;
use super::Rate;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Vhost {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub metadata: VhostMetadata,
    /// The vhost's default queue type, `"undefined"` when it has none (as RabbitMQ).
    pub default_queue_type: String,
    pub tracing: bool,
    /// Each node's state of the vhost ("running", or "nodedown" for a member that is down).
    pub cluster_state: BTreeMap<String, &'static str>,
    pub messages: u64,
    pub messages_details: Rate,
    pub messages_ready: u64,
    pub messages_ready_details: Rate,
    pub messages_unacknowledged: u64,
    pub messages_unacknowledged_details: Rate,
    /// Queueing figures summed over the vhost's queues (Pier's).
    pub pier_queueing: Queueing,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct VhostMetadata {
    pub description: String,
    pub tags: Vec<String>,
}
