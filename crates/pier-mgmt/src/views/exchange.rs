//! Exchanges (`/api/exchanges[/{vhost}[/{name}]]`, `…/publish`) and bindings
//! (`/api/bindings…`, the bindings of a queue or an exchange).

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Exchange {
    pub name: String,
    pub vhost: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    /// The declare's arguments (an AMQP table as JSON).
    pub arguments: Value,
    pub user_who_performed_action: &'static str,
    /// As RabbitMQ: there only when a policy applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// One exchange's page only: RabbitMQ's per-channel rate lists, empty in Pier.
    #[serde(flatten)]
    pub details: Option<ExchangeDetails>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ExchangeDetails {
    pub incoming: Vec<Value>,
    pub outgoing: Vec<Value>,
}

/// `POST /api/exchanges/{vhost}/{name}/publish`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Routed {
    pub routed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Binding {
    pub source: String,
    pub vhost: String,
    pub destination: String,
    pub destination_type: &'static str,
    pub routing_key: String,
    /// The binding's arguments (an AMQP table as JSON).
    pub arguments: Value,
    /// The binding's name in URLs (`~`, the quoted key, or `key~hash` with arguments).
    pub properties_key: String,
}
