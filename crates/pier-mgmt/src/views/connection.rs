//! Connections (`/api/connections`: AMQP 0-9-1, MQTT, STOMP and stream-protocol ones),
//! channels (`/api/channels`) and consumers (`/api/consumers`, a queue's
//! `consumer_details`).

use serde::Serialize;
use serde_json::Value;

use super::{some_or_empty_object, QueueRef, Rate};

/// A client connection of any protocol: the fields they all have, as RabbitMQ shows them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectionBase {
    pub name: String,
    pub node: String,
    pub state: String,
    /// RabbitMQ's words: `AMQP 0-9-1`, `MQTT 3.1.1`, `STOMP 1.2`, `stream`.
    pub protocol: String,
    pub user: String,
    pub user_who_performed_action: String,
    pub vhost: String,
    pub host: String,
    pub port: u16,
    pub peer_host: String,
    pub peer_port: u16,
    /// Whether the connection came over TLS.
    pub ssl: bool,
    pub auth_mechanism: String,
    pub channels: usize,
    pub channel_max: u16,
    pub frame_max: u32,
    pub timeout: u16,
    pub connected_at: u64,
    /// The client's properties (an AMQP table as JSON).
    pub client_properties: Value,
    pub user_provided_name: Option<String>,
    pub recv_oct: u64,
    pub recv_cnt: u64,
    pub send_oct: u64,
    pub send_cnt: u64,
    pub send_pend: u64,
    pub recv_oct_details: Rate,
    pub send_oct_details: Rate,
}

/// A connection as `/api/connections` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Connection {
    #[serde(flatten)]
    pub base: ConnectionBase,
    /// `"network"` for AMQP, MQTT and STOMP connections; RabbitMQ's stream plugin leaves it
    /// out.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The TLS session: always there for a stream connection (null fields without TLS, as
    /// RabbitMQ's stream plugin); for the other protocols only over TLS (Pier left the fields
    /// out of them before it reported TLS; plain connections keep that shape).
    #[serde(flatten)]
    pub tls: Option<TlsDetails>,
    /// Stream connections only.
    #[serde(flatten)]
    pub stream: Option<StreamCounts>,
}

/// RabbitMQ's TLS fields of a connection; Pier knows the protocol version (`tlsv1.3`,
/// `tlsv1.2`) and the cipher suite (rustls' name, e.g. `TLS13_AES_256_GCM_SHA384`), not the
/// key exchange, hash or certificate details (null).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TlsDetails {
    pub ssl_protocol: Option<String>,
    pub ssl_key_exchange: Option<String>,
    pub ssl_cipher: Option<String>,
    pub ssl_hash: Option<String>,
    pub peer_cert_issuer: Option<String>,
    pub peer_cert_subject: Option<String>,
    pub peer_cert_validity: Option<String>,
}

/// A stream connection's publishers and subscriptions.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamCounts {
    pub publishers: usize,
    pub subscriptions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Channel {
    pub name: String,
    pub number: u16,
    pub node: String,
    pub state: &'static str,
    pub user: String,
    pub user_who_performed_action: String,
    pub vhost: String,
    pub connection_details: ConnectionDetails,
    pub consumer_count: usize,
    pub messages_unacknowledged: u64,
    pub message_stats: ChannelMessageStats,
}

/// The connection a channel or an exclusive queue belongs to.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectionDetails {
    pub name: String,
    pub peer_host: String,
    pub peer_port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChannelMessageStats {
    pub deliver_get: u64,
}

/// An AMQP consumer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Consumer {
    /// The consume's arguments (an AMQP table as JSON).
    pub arguments: Value,
    pub ack_required: bool,
    pub active: bool,
    pub activity_status: &'static str,
    /// `{}` when the channel is not known (a consumer on another node).
    #[serde(serialize_with = "some_or_empty_object")]
    pub channel_details: Option<ChannelDetails>,
    pub consumer_tag: String,
    pub exclusive: bool,
    pub prefetch_count: u32,
    pub priority: i32,
    pub queue: QueueRef,
}

/// The channel a consumer is on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChannelDetails {
    pub connection_name: String,
    pub name: String,
    pub node: String,
    pub number: u16,
    pub peer_host: String,
    pub peer_port: u16,
    pub user: String,
}
