//! Queues (`/api/queues[/{vhost}[/{name}]]`): one view for every queue type, with the
//! quorum queue's and the stream's own fields where RabbitMQ has them; messages got with
//! `POST /api/queues/{vhost}/{name}/get`; a quorum queue's Raft members (Pier's
//! `quorum-status`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::connection::Consumer;
use super::Rate;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
    /// The declare's arguments (an AMQP table as JSON).
    pub arguments: Value,
    /// Its home node (a replicated quorum queue's: its leader, as in RabbitMQ).
    pub node: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub state: &'static str,
    pub policy: Option<String>,
    /// Pier has no operator policies: always null.
    pub operator_policy: Option<String>,
    /// The definition of the policy in force (free-form JSON; `{}` without one).
    pub effective_policy_definition: Value,
    /// AMQP consumers, plus a stream's stream-protocol subscriptions.
    pub consumers: u64,
    pub messages: u64,
    pub messages_details: Rate,
    pub messages_ready: u64,
    pub messages_ready_details: Rate,
    pub messages_unacknowledged: u64,
    pub messages_unacknowledged_details: Rate,
    pub message_bytes_ready: u64,
    /// Bodies of ready messages held in memory; the rest are paged out to the store.
    pub message_bytes_ram: u64,
    pub message_bytes_paged_out: u64,
    pub messages_paged_out: u64,
    pub messages_ram: u64,
    pub messages_ready_ram: u64,
    pub messages_unacknowledged_ram: u64,
    pub memory: u64,
    pub exclusive_consumer_tag: Option<String>,
    pub single_active_consumer_tag: Option<String>,
    /// Quorum queues only.
    #[serde(flatten)]
    pub quorum: Option<QuorumFields>,
    /// Streams only: their leader and replicas, as RabbitMQ shows them.
    #[serde(flatten)]
    pub stream_members: Option<StreamMembers>,
    pub message_stats: QueueMessageStats,
    pub pier_queueing: Queueing,
    /// Streams only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamFigures>,
    /// Exclusive queues only (while their connection is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_pid_details: Option<OwnerDetails>,
    /// One queue's page only (`/api/queues/{vhost}/{name}`).
    #[serde(flatten)]
    pub details: Option<QueueDetails>,
}

/// A quorum queue's Raft group and its at-least-once dead letters.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QuorumFields {
    /// At-least-once dead letters kept until their targets confirm them.
    pub messages_dlx: u64,
    pub message_bytes_dlx: u64,
    pub leader: Option<String>,
    pub online: Vec<String>,
    pub members: Vec<String>,
}

/// A stream's members: its leader (the node publishers write to) and its replicas.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamMembers {
    pub leader: String,
    pub online: Vec<String>,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueueMessageStats {
    pub publish: u64,
    pub publish_details: Rate,
    pub deliver_get: u64,
    pub deliver_get_details: Rate,
    pub deliver_no_ack: u64,
    pub ack: u64,
    pub ack_details: Rate,
}

/// The connection owning an exclusive queue.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OwnerDetails {
    pub name: String,
    pub peer_host: String,
    pub peer_port: u16,
}

/// What one queue's page adds: its consumers (and RabbitMQ's per-channel rate lists, which
/// Pier leaves empty).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueueDetails {
    pub consumer_details: Vec<Consumer>,
    pub incoming: Vec<Value>,
    pub deliveries: Vec<Value>,
}

/// Queueing figures (Pier's `pier_queueing`): λ, μ, ρ, L, W by Little's law, the M/M/1
/// predictions and the measured time in queue. Rates and times are rounded to 3 decimals.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Queueing {
    pub window_seconds: u64,
    pub arrival_rate: f64,
    pub service_rate: f64,
    pub utilisation: Option<f64>,
    pub length: u64,
    pub time_in_queue_seconds: Option<f64>,
    pub mm1_predicted_length: Option<f64>,
    pub mm1_predicted_time_in_queue_seconds: Option<f64>,
    pub measured_time_in_queue: MeasuredTimeInQueue,
}

/// Time in queue measured per message, in seconds (millisecond resolution).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MeasuredTimeInQueue {
    pub window_seconds: u64,
    pub samples: u64,
    pub mean_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// A stream's figures (`stream` in its queue object).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamFigures {
    pub segments: usize,
    pub size_bytes: u64,
    pub chunks: u64,
    pub first_offset: u64,
    /// Null while the stream is empty.
    pub last_offset: Option<u64>,
    pub committed_offset: Option<u64>,
    pub next_offset: u64,
    pub first_timestamp: Option<i64>,
    pub last_timestamp: Option<i64>,
    pub tracking: StreamTracking,
    /// The offset after the last chunk synced on this node (past `next_offset` while a
    /// replicated stream waits for its replicas).
    pub written_offset: u64,
    /// A replicated stream's leader: the offset each replica has synced up to.
    pub replicas: BTreeMap<String, u64>,
}

/// Stored consumer offsets and publisher sequences, by reference.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamTracking {
    pub offsets: BTreeMap<String, u64>,
    pub sequences: BTreeMap<String, u64>,
}

/// A message got with `POST /api/queues/{vhost}/{name}/get`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GotMessage {
    pub payload_bytes: usize,
    pub redelivered: bool,
    pub exchange: String,
    pub routing_key: String,
    pub message_count: u32,
    /// The message's properties (headers are an AMQP table as JSON).
    pub properties: Value,
    pub payload: String,
    pub payload_encoding: &'static str,
}

/// A row of `quorum-status`: a member of the queue's Raft group, or one that did not answer.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum QuorumMember {
    Answered {
        node: String,
        raft_state: String,
        term: u64,
        last_log_index: u64,
        commit_index: u64,
        leader: Option<String>,
    },
    Failed {
        node: String,
        raft_state: &'static str,
        error: String,
    },
}
