//! Limits and defaults the server negotiates and enforces; every default is RabbitMQ's.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest frame the server accepts and offers in connection.tune (bytes, incl. overhead).
    pub frame_max: u32,
    /// Highest channel number a client may open.
    pub channel_max: u16,
    /// Heartbeat interval the server suggests, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest message body accepted (RabbitMQ's `max_message_size`).
    pub max_message_size: u64,
    /// A client must complete the handshake (up to connection.open-ok) within this time.
    pub handshake_timeout: Duration,
    /// How long to wait for connection.close-ok after the server closed a connection.
    pub close_timeout: Duration,
    /// Bytes queued for a client's socket beyond which queues stop delivering to it and the
    /// server stops reading its socket, until the writer drains.
    pub outbound_high_watermark: usize,
    /// Name shown in server properties (`cluster_name`).
    pub cluster_name: String,
    /// `product` and `version` in the server properties of connection.start. Pier's own by
    /// default; an operator may advertise another (e.g. "RabbitMQ") for client code that
    /// switches behaviour on it.
    pub product: String,
    pub product_version: String,
    /// A channel holding an unacknowledged delivery longer than this is closed with 406
    /// (RabbitMQ's `consumer_timeout`, default 30 minutes); None disables the check.
    pub consumer_timeout: Option<Duration>,
    /// Most client sockets (handshakes included) the node holds at once; further ones are
    /// closed as soon as they are accepted (RabbitMQ's `connection_max`; default: no limit).
    pub max_connections: Option<usize>,
    /// Memory use (resident set) above which publishers are blocked (RabbitMQ's
    /// `vm_memory_high_watermark`, default 0.4 of RAM).
    pub memory_high_watermark: MemoryWatermark,
    /// Free disk space on `data_dir`'s file system below which publishers are blocked
    /// (RabbitMQ's `disk_free_limit`, default 50 MB).
    pub disk_free_limit: u64,
    /// The directory whose file system the disk alarm watches (None: no disk alarm).
    pub data_dir: Option<PathBuf>,
    /// RabbitMQ's deprecated features this node permits (4.2's defaults: all of them).
    pub deprecated_features: pier_broker::DeprecatedFeatures,
}

/// RabbitMQ's `vm_memory_high_watermark`: a fraction of the machine's RAM (or of the cgroup
/// memory limit, when lower), or an absolute number of bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryWatermark {
    Relative(f64),
    Absolute(u64),
}

impl Default for MemoryWatermark {
    fn default() -> Self {
        MemoryWatermark::Relative(0.4)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(3),
            outbound_high_watermark: 4 * 1024 * 1024,
            cluster_name: "pier".to_owned(),
            product: "Pier".to_owned(),
            product_version: env!("CARGO_PKG_VERSION").to_owned(),
            consumer_timeout: Some(Duration::from_secs(30 * 60)),
            max_connections: None,
            memory_high_watermark: MemoryWatermark::default(),
            disk_free_limit: 50_000_000,
            data_dir: None,
            deprecated_features: pier_broker::DeprecatedFeatures::default(),
        }
    }
}
