//! The live connections and channels, for management and metrics.
//!
//! Each connection registers once its handshake is done and deregisters when it ends. What it
//! is (peer, user, vhost, client properties) is fixed at registration; what it does is a few
//! relaxed atomic counters bumped on existing paths (one add per socket read or write, one per
//! publish), so the hot path pays no lock. Channel figures come from the connection's
//! `Outbound` (delivery tags, unacked entries) when a snapshot is taken.
//!
//! ```text
//!  connection task ─register─► Registry { id → ConnectionEntry { meta, counters, close token } }
//!  management API ─snapshot──► Vec<ConnectionInfo>        ─close(name)─► per-connection token
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};

use pier_broker::ConnectionId;
use pier_wire::FieldTable;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use crate::alarms::Alarms;
use crate::amqp::outbound::Outbound;
use crate::stream::stats::{StreamConnectionEntry, StreamConnectionInfo};

/// The reason RabbitMQ gives a client whose connection was closed through the management API
/// (the reply text is `CONNECTION_FORCED - Closed via management plugin`).
pub const MANAGEMENT_CLOSE_REASON: &str = "Closed via management plugin";

/// What a connection is, fixed when it opened.
#[derive(Debug, Clone)]
pub struct ConnectionMeta {
    pub id: ConnectionId,
    /// RabbitMQ's connection name: `"peer_ip:peer_port -> local_ip:local_port"`.
    pub name: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub user: String,
    pub vhost: String,
    /// The client's properties from connection.start-ok.
    pub client_properties: FieldTable,
    /// SASL mechanism used to log in (`PLAIN`, `AMQPLAIN`).
    pub auth_mechanism: String,
    /// Milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    /// The protocol as `/api/connections` shows it (RabbitMQ's words): `AMQP 0-9-1`,
    /// `MQTT 3.1.1`, `STOMP 1.2`, `stream`.
    pub protocol: std::borrow::Cow<'static, str>,
    /// The TLS session the connection runs over (`None`: plain TCP).
    pub tls: Option<TlsInfo>,
}

/// A connection's TLS session, as management shows it (`ssl`, `ssl_protocol`, `ssl_cipher`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version in RabbitMQ's words: `tlsv1.3`, `tlsv1.2`.
    pub protocol: String,
    /// The negotiated cipher suite, as rustls names it (`TLS13_AES_256_GCM_SHA384`).
    pub cipher: String,
}

/// Counters a connection bumps as it works (relaxed atomics).
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounters {
    pub recv_oct: AtomicU64,
    pub recv_cnt: AtomicU64,
    pub send_oct: AtomicU64,
    pub send_cnt: AtomicU64,
    pub published: AtomicU64,
    pub channels_opened: AtomicU64,
}

/// One registered connection.
pub(crate) struct ConnectionEntry {
    pub meta: Arc<ConnectionMeta>,
    pub counters: ConnectionCounters,
    outbound: Arc<Outbound>,
    /// Cancelled to close this connection (a child of the server's shutdown token).
    close: CancellationToken,
    close_reason: Mutex<Option<String>>,
    /// The node's alarms (a publishing connection is blocked while one is set).
    pub alarms: Arc<Alarms>,
    /// What the reader is doing: a `ConnectionState` as u8.
    state: AtomicU8,
    /// Coarse-clock ms until which the connection still reads as "flow" after credit came
    /// back (RabbitMQ keeps showing `flow` for a moment too, so that polls can see it).
    flow_until_ms: AtomicU64,
}

/// What a connection's reader is doing, as `/api/connections` reports it (RabbitMQ's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Running,
    /// Throttled by per-connection credit (credit.rs): not read until the disk catches up.
    Flow,
    /// Blocked by a resource alarm (flow.rs).
    Blocked,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Running => "running",
            ConnectionState::Flow => "flow",
            ConnectionState::Blocked => "blocked",
        }
    }
}

/// How long a connection still reads as "flow" after it was last throttled.
const FLOW_STATE_LINGER_MS: u64 = 1_000;

impl ConnectionEntry {
    /// The token the connection's reader loop selects on.
    pub fn close_token(&self) -> CancellationToken {
        self.close.clone()
    }

    /// Why the connection is being force-closed: a management reason, or None for a server
    /// shutdown.
    pub fn forced_close_reason(&self) -> Option<String> {
        self.close_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    #[inline]
    pub fn count_read(&self, bytes: usize) {
        self.counters
            .recv_oct
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.counters.recv_cnt.fetch_add(1, Ordering::Relaxed);
    }

    /// Records what the reader is doing now (for management).
    pub fn set_state(&self, state: ConnectionState) {
        if self.state.load(Ordering::Relaxed) == ConnectionState::Flow as u8
            && state != ConnectionState::Flow
        {
            self.flow_until_ms.store(
                crate::coarse_clock::now_ms() + FLOW_STATE_LINGER_MS,
                Ordering::Relaxed,
            );
        }
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> ConnectionState {
        match self.state.load(Ordering::Relaxed) {
            s if s == ConnectionState::Flow as u8 => ConnectionState::Flow,
            s if s == ConnectionState::Blocked as u8 => ConnectionState::Blocked,
            _ if crate::coarse_clock::now_ms() < self.flow_until_ms.load(Ordering::Relaxed) => {
                ConnectionState::Flow
            }
            _ => ConnectionState::Running,
        }
    }

    #[inline]
    pub fn count_publish(&self) {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
    }

    /// basic.publish methods received on this connection so far.
    pub fn published(&self) -> u64 {
        self.counters.published.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn count_channel_opened(&self) {
        self.counters
            .channels_opened
            .fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ConnectionInfo {
        let c = &self.counters;
        ConnectionInfo {
            meta: Arc::clone(&self.meta),
            recv_oct: c.recv_oct.load(Ordering::Relaxed),
            recv_cnt: c.recv_cnt.load(Ordering::Relaxed),
            send_oct: c.send_oct.load(Ordering::Relaxed),
            send_cnt: c.send_cnt.load(Ordering::Relaxed),
            messages_published: c.published.load(Ordering::Relaxed),
            send_pending_bytes: self.outbound.pending_bytes() as u64,
            state: self.state(),
            channels: self.outbound.channel_snapshot(),
        }
    }
}

/// A connection as the management API shows it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub meta: Arc<ConnectionMeta>,
    pub recv_oct: u64,
    pub recv_cnt: u64,
    pub send_oct: u64,
    pub send_cnt: u64,
    /// basic.publish methods received.
    pub messages_published: u64,
    /// Bytes queued for the socket, not yet written.
    pub send_pending_bytes: u64,
    /// running, flow (credit) or blocked (alarm).
    pub state: ConnectionState,
    pub channels: Vec<ChannelInfo>,
}

/// An open channel of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    pub number: u16,
    /// Deliveries and get-oks sent on it (its last delivery tag).
    pub deliveries: u64,
    /// Deliveries not yet acknowledged.
    pub unacked: u64,
}

/// Node-wide connection and channel churn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryTotals {
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub channels_opened: u64,
    pub channels_closed: u64,
    /// basic.publish methods received, on open and closed connections.
    pub messages_published: u64,
    /// Bytes received and sent, on open and closed connections.
    pub recv_oct: u64,
    pub send_oct: u64,
}

/// The connections of one server. Shared (in an `Arc`) by the AMQP server and the management
/// API.
#[derive(Default)]
pub struct Registry {
    connections: RwLock<HashMap<ConnectionId, Arc<ConnectionEntry>>>,
    opened: AtomicU64,
    closed: AtomicU64,
    /// Channels opened on connections that have since closed.
    retired_channels_opened: AtomicU64,
    /// Publishes and bytes of connections that have since closed.
    retired_published: AtomicU64,
    retired_recv_oct: AtomicU64,
    retired_send_oct: AtomicU64,
    /// The node's memory and disk alarms (alarms.rs), which block publishing connections.
    alarms: Arc<Alarms>,
    /// Stream-protocol connections (stream/stats.rs), listed and closed beside AMQP's.
    streams: RwLock<HashMap<ConnectionId, Arc<StreamConnectionEntry>>>,
    /// The node's stream single-active-consumer groups, shared by its stream listeners.
    stream_sac: Arc<crate::stream::Coordinator>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The node's stream single-active-consumer groups.
    pub(crate) fn stream_sac(&self) -> &Arc<crate::stream::Coordinator> {
        &self.stream_sac
    }

    /// Forces the stream single-active-consumer group `reference` of `stream` on (RabbitMQ
    /// 4.2's `rabbitmq-streams activate_stream_consumer`): a member waiting for a former
    /// active one that never answered its step-down is activated. False: no such group.
    pub fn activate_stream_consumer(&self, vhost: &str, stream: &str, reference: &str) -> bool {
        self.stream_sac.activate(vhost, stream, reference)
    }

    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<ConnectionId, Arc<ConnectionEntry>>> {
        self.connections.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<ConnectionId, Arc<ConnectionEntry>>> {
        self.connections.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(
        &self,
        meta: ConnectionMeta,
        outbound: Arc<Outbound>,
        shutdown: &CancellationToken,
    ) -> Arc<ConnectionEntry> {
        let entry = Arc::new(ConnectionEntry {
            meta: Arc::new(meta),
            counters: ConnectionCounters::default(),
            outbound,
            close: shutdown.child_token(),
            close_reason: Mutex::new(None),
            alarms: Arc::clone(&self.alarms),
            state: AtomicU8::new(ConnectionState::Running as u8),
            flow_until_ms: AtomicU64::new(0),
        });
        self.write().insert(entry.meta.id, Arc::clone(&entry));
        self.opened.fetch_add(1, Ordering::Relaxed);
        entry
    }

    pub(crate) fn deregister(&self, id: ConnectionId) {
        if let Some(e) = self.write().remove(&id) {
            self.closed.fetch_add(1, Ordering::Relaxed);
            let c = &e.counters;
            for (total, counter) in [
                (&self.retired_channels_opened, &c.channels_opened),
                (&self.retired_published, &c.published),
                (&self.retired_recv_oct, &c.recv_oct),
                (&self.retired_send_oct, &c.send_oct),
            ] {
                total.fetch_add(counter.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    pub fn connection_count(&self) -> usize {
        self.read().len() + self.streams_read().len()
    }

    fn streams_read(
        &self,
    ) -> RwLockReadGuard<'_, HashMap<ConnectionId, Arc<StreamConnectionEntry>>> {
        self.streams.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register_stream(&self, entry: Arc<StreamConnectionEntry>) {
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.meta.id, entry);
    }

    pub(crate) fn deregister_stream(&self, id: ConnectionId) {
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// A snapshot of every stream-protocol connection.
    pub fn stream_connections(&self) -> Vec<StreamConnectionInfo> {
        let entries: Vec<Arc<StreamConnectionEntry>> =
            self.streams_read().values().cloned().collect();
        entries.iter().map(|e| e.snapshot()).collect()
    }

    /// One stream-protocol connection by its name.
    pub fn stream_connection(&self, name: &str) -> Option<StreamConnectionInfo> {
        let entry = self
            .streams_read()
            .values()
            .find(|e| e.meta.name == name)
            .cloned();
        entry.map(|e| e.snapshot())
    }

    /// The node's memory and disk alarms.
    pub fn alarms(&self) -> &Arc<Alarms> {
        &self.alarms
    }

    /// Open channels over all connections.
    pub fn channel_count(&self) -> usize {
        let entries: Vec<Arc<ConnectionEntry>> = self.read().values().cloned().collect();
        entries.iter().map(|e| e.outbound.channel_count()).sum()
    }

    /// A snapshot of every connection (the registry lock is not held while snapshotting).
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let entries: Vec<Arc<ConnectionEntry>> = self.read().values().cloned().collect();
        entries.iter().map(|e| e.snapshot()).collect()
    }

    /// One connection by its name.
    pub fn connection(&self, name: &str) -> Option<ConnectionInfo> {
        let entry = self.read().values().find(|e| e.meta.name == name).cloned();
        entry.map(|e| e.snapshot())
    }

    /// Closes a connection by name with 320 CONNECTION_FORCED and `reason` as the reply text
    /// (after the code name; a stream connection gets a Close with `reason`). False when
    /// there is no such connection.
    pub fn close(&self, name: &str, reason: &str) -> bool {
        self.close_where(|m| m.name == name, reason) > 0
    }

    /// Closes every connection `pred` selects (a deleted vhost's or user's); returns how many.
    pub fn close_where(&self, pred: impl Fn(&ConnectionMeta) -> bool, reason: &str) -> usize {
        let entries: Vec<Arc<ConnectionEntry>> = self
            .read()
            .values()
            .filter(|e| pred(&e.meta))
            .cloned()
            .collect();
        for e in &entries {
            *e.close_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
            e.close.cancel();
        }
        let streams: Vec<Arc<StreamConnectionEntry>> = self
            .streams_read()
            .values()
            .filter(|e| pred(&e.meta))
            .cloned()
            .collect();
        for e in &streams {
            e.request_close(reason);
        }
        entries.len() + streams.len()
    }

    pub fn totals(&self) -> RegistryTotals {
        let entries: Vec<Arc<ConnectionEntry>> = self.read().values().cloned().collect();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut t = RegistryTotals {
            connections_opened: load(&self.opened),
            connections_closed: load(&self.closed),
            channels_opened: load(&self.retired_channels_opened),
            channels_closed: 0,
            messages_published: load(&self.retired_published),
            recv_oct: load(&self.retired_recv_oct),
            send_oct: load(&self.retired_send_oct),
        };
        let mut open_channels = 0u64;
        for e in &entries {
            let c = &e.counters;
            t.channels_opened += load(&c.channels_opened);
            t.messages_published += load(&c.published);
            t.recv_oct += load(&c.recv_oct);
            t.send_oct += load(&c.send_oct);
            open_channels += e.outbound.channel_count() as u64;
        }
        t.channels_closed = t.channels_opened.saturating_sub(open_channels);
        t
    }
}

/// Wraps a connection's socket writer to count what is sent.
pub(crate) struct CountingWriter<W> {
    inner: W,
    entry: Arc<ConnectionEntry>,
}

impl<W> CountingWriter<W> {
    pub fn new(inner: W, entry: Arc<ConnectionEntry>) -> Self {
        CountingWriter { inner, entry }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            let c = &self.entry.counters;
            c.send_oct.fetch_add(*n as u64, Ordering::Relaxed);
            c.send_cnt.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
