//! Runtime parameters (`/api/parameters`), global parameters (`/api/global-parameters`) and
//! limits (`/api/vhost-limits`).

use serde::Serialize;

/// The limits set on a vhost (only those set).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct VhostLimitsValue {
    #[serde(rename = "max-connections", skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    #[serde(rename = "max-queues", skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u64>,
}

/// A runtime parameter: Pier's one component is `vhost-limits` (name `limits`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Parameter {
    pub value: VhostLimitsValue,
    pub vhost: String,
    pub component: &'static str,
    pub name: &'static str,
}

/// An entry of `/api/vhost-limits`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VhostLimits {
    pub vhost: String,
    pub value: VhostLimitsValue,
}

/// A global parameter: Pier's one is `cluster_name`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GlobalParameter {
    pub name: &'static str,
    pub value: String,
}
