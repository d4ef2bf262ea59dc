//! `/api/policies[/{vhost}[/{name}]]` (and the policies of a definitions export).

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Policy {
    /// Left out in a vhost's definitions export (as RabbitMQ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to")]
    pub apply_to: &'static str,
    /// The definition's keys as RabbitMQ names them (only those set): free-form JSON.
    pub definition: Value,
    pub priority: i32,
}
