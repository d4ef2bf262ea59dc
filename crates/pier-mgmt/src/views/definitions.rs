//! Definitions export (`GET /api/definitions[/{vhost}]`), in RabbitMQ's file format.

use serde::Serialize;
use serde_json::Value;

use super::permission::{Permission, TopicPermission};
use super::policy::Policy;
use super::user::User;
use super::vhost::VhostMetadata;

/// The whole broker's definitions.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Definitions {
    pub rabbit_version: &'static str,
    pub rabbitmq_version: &'static str,
    pub product_name: &'static str,
    pub product_version: &'static str,
    pub users: Vec<User>,
    pub vhosts: Vec<VhostDefinition>,
    pub permissions: Vec<Permission>,
    pub topic_permissions: Vec<TopicPermission>,
    /// Runtime parameters: none exported.
    pub parameters: Vec<Value>,
    /// Global parameters: none exported.
    pub global_parameters: Vec<Value>,
    pub policies: Vec<Policy>,
    pub queues: Vec<QueueDefinition>,
    pub exchanges: Vec<ExchangeDefinition>,
    pub bindings: Vec<BindingDefinition>,
}

/// One vhost's definitions (its objects carry no `vhost` field).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VhostDefinitions {
    pub rabbit_version: &'static str,
    pub rabbitmq_version: &'static str,
    pub product_name: &'static str,
    pub product_version: &'static str,
    pub parameters: Vec<Value>,
    pub policies: Vec<Policy>,
    pub queues: Vec<QueueDefinition>,
    pub exchanges: Vec<ExchangeDefinition>,
    pub bindings: Vec<BindingDefinition>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct VhostDefinition {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub metadata: VhostMetadata,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueueDefinition {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    pub durable: bool,
    pub auto_delete: bool,
    /// The queue's arguments (an AMQP table as JSON).
    pub arguments: Value,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ExchangeDefinition {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Value,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct BindingDefinition {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    pub destination: String,
    pub destination_type: &'static str,
    pub routing_key: String,
    pub arguments: Value,
}
