//! `/api/permissions` and `/api/topic-permissions` (and those of a definitions export).

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Permission {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TopicPermission {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}
