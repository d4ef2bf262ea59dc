//! `/api/overview`, and the pieces it shares with `/api/nodes`: exchange types, listeners,
//! HTTP contexts, churn rates.

use serde::Serialize;

use super::{EmptyList, Rate};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Overview {
    pub management_version: &'static str,
    pub rates_mode: &'static str,
    pub sample_retention_policies: RetentionPolicies,
    pub exchange_types: Vec<Described>,
    pub product_version: &'static str,
    pub product_name: &'static str,
    pub rabbitmq_version: &'static str,
    pub cluster_name: String,
    pub erlang_version: &'static str,
    pub erlang_full_version: &'static str,
    pub disable_stats: bool,
    pub enable_queue_totals: bool,
    pub message_stats: OverviewMessageStats,
    pub churn_rates: ChurnRates,
    pub queue_totals: QueueTotals,
    pub object_totals: ObjectTotals,
    pub statistics_db_event_queue: u64,
    pub node: String,
    pub listeners: Vec<Listener>,
    pub contexts: Vec<Context>,
}

/// Seconds of history kept per rates mode (RabbitMQ's `sample_retention_policies`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RetentionPolicies {
    pub global: [u64; 1],
    pub basic: [u64; 1],
    pub detailed: [u64; 1],
}

/// An exchange type or an authentication mechanism: `{name, description, enabled}`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Described {
    pub name: &'static str,
    pub description: &'static str,
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OverviewMessageStats {
    pub publish: u64,
    pub publish_details: Rate,
    pub deliver_get: u64,
    pub deliver_no_ack: u64,
    pub ack: u64,
}

/// Connection and channel churn: nested as `churn_rates` in the overview, flattened into a
/// node.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChurnRates {
    pub connection_created: u64,
    pub connection_created_details: Rate,
    pub connection_closed: u64,
    pub connection_closed_details: Rate,
    pub channel_created: u64,
    pub channel_created_details: Rate,
    pub channel_closed: u64,
    pub channel_closed_details: Rate,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueueTotals {
    pub messages: u64,
    pub messages_details: Rate,
    pub messages_ready: u64,
    pub messages_ready_details: Rate,
    pub messages_unacknowledged: u64,
    pub messages_unacknowledged_details: Rate,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ObjectTotals {
    pub channels: u64,
    pub connections: u64,
    pub consumers: u64,
    pub exchanges: usize,
    pub queues: usize,
}

/// A listener of the node (`/api/overview` `listeners`, `/api/pier/cluster` `listeners`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Listener {
    pub node: String,
    pub protocol: String,
    pub ip_address: String,
    pub port: u16,
}

/// An HTTP context (RabbitMQ's web dispatch); RabbitMQ gives the port as a string.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Context {
    pub node: String,
    pub description: &'static str,
    pub path: &'static str,
    pub port: String,
    /// Only the Prometheus context names its protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    pub ssl_opts: EmptyList,
}
