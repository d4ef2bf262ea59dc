//! The stream plugin's publishers and consumers (`/api/stream/publishers`,
//! `/api/stream/consumers`); stream connections are [`super::connection::Connection`]s.

use std::collections::BTreeMap;

use serde::Serialize;

use super::QueueRef;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Publisher {
    pub publisher_id: u8,
    pub reference: String,
    pub published: u64,
    pub confirmed: u64,
    pub errored: u64,
    pub queue: QueueRef,
    pub connection_details: StreamConnectionDetails,
}

/// A stream-protocol subscription.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Subscription {
    pub subscription_id: u8,
    pub consumed: u64,
    pub offset: u64,
    pub offset_lag: u64,
    pub credits: u32,
    pub active: bool,
    pub activity_status: &'static str,
    pub properties: BTreeMap<String, String>,
    pub queue: QueueRef,
    pub connection_details: StreamConnectionDetails,
}

/// The stream connection a publisher or subscription belongs to.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamConnectionDetails {
    pub name: String,
    pub node: String,
    pub peer_host: String,
    pub peer_port: u16,
    pub user: String,
}
