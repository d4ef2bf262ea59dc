//! Pier's network layer: accepts TCP connections, runs the AMQP handshake, then one reader task
//! (this connection's frames → broker) and one writer task (Outbound → socket) per connection.
//! It knows no routing rules: those live in `pier-broker`.
//!
//! ```text
//!  TcpListener ─accept─► connection task ─┬─ handshake (handshake.rs)
//!                                         ├─ reader loop (connection.rs, channel.rs) ──► Broker
//!                                         └─ writer task (outbound.rs) ◄── queue deliveries
//! ```

pub mod alarms;
pub mod amqp;
mod coarse_clock;
pub mod config;
mod credit;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod mqtt;
mod read_size;
pub mod registry;
pub mod stomp;
pub mod stream;
pub mod tls;
pub mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pier_broker::Broker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use amqp::error::{AmqpException, ConnectionError};
pub use config::ServerConfig;
pub use registry::{
    ChannelInfo, ConnectionInfo, ConnectionMeta, ConnectionState, Registry, RegistryTotals, TlsInfo,
};

use amqp::connection::{close_frame, next_connection_id, Connection};
use amqp::handshake::{self, FrameReader};
use amqp::outbound::Outbound;
use registry::CountingWriter;

/// A socket to accept AMQP clients on: plain TCP, or TLS (`amqps`).
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

impl Listener {
    pub fn plain(tcp: TcpListener) -> Self {
        Listener { tcp, tls: None }
    }

    pub fn tls(tcp: TcpListener, acceptor: TlsAcceptor) -> Self {
        Listener {
            tcp,
            tls: Some(acceptor),
        }
    }
}

/// Serves AMQP on `listener` until `shutdown` resolves, then closes every client connection
/// with 320 CONNECTION_FORCED and waits (bounded) for them to finish.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_listeners(
        vec![Listener::plain(listener)],
        broker,
        registry,
        config,
        None,
        shutdown,
    )
    .await
}

/// What every accept loop shares.
#[derive(Clone)]
struct Shared {
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    config: Arc<ServerConfig>,
    /// Cancelled at shutdown: connections close with 320.
    token: CancellationToken,
    tracker: TaskTracker,
    sockets: Arc<SocketCount>,
    /// Where durable declarations go on a clustered node (through the cluster); `None` or a
    /// single node's: they are applied locally, as always.
    metadata: Option<pier_cluster::Metadata>,
}

/// `run` with several listeners (AMQP and AMQPS), and the node's metadata front: on a
/// clustered node durable declarations, deletions and bindings are committed through the
/// cluster (the same `Metadata` the management API uses).
pub async fn run_listeners(
    listeners: Vec<Listener>,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    config: ServerConfig,
    metadata: Option<pier_cluster::Metadata>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let monitor = alarms::ResourceMonitor::new(Arc::clone(registry.alarms()), &config);
    let ticker = tokio::spawn(tick_broker(Arc::clone(&broker), monitor, token.clone()));
    let shared = Shared {
        broker,
        registry,
        config,
        token: token.clone(),
        tracker: tracker.clone(),
        sockets: Arc::new(SocketCount::default()),
        // Only a clustered node's front changes anything: a single node stays on its path.
        metadata: metadata.filter(|m| m.cluster().is_some()),
    };
    let stop_accepting = CancellationToken::new();
    let accept_loops: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, shared.clone(), stop_accepting.clone())))
        .collect();
    shutdown.await;
    stop_accepting.cancel();
    for l in accept_loops {
        let _ = l.await;
    }
    tracing::info!("shutting down: closing {} connection(s)", tracker.len());
    token.cancel();
    let _ = ticker.await;
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within 10 s");
    }
    Ok(())
}

/// Accepts clients on one listener until `stop` (the listener closes when this returns).
async fn accept_loop(listener: Listener, shared: Shared, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            // On the dual-stack listener IPv4 clients arrive as ::ffff:a.b.c.d; RabbitMQ shows
            // (and checks loopback-only users against) the IPv4 address.
            Ok((s, peer)) => (s, canonical(peer)),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = shared.sockets.acquire(shared.config.max_connections) else {
            // RabbitMQ's connection_max: over the limit, the socket is not served.
            shared.sockets.log_refusal(peer);
            drop(stream);
            continue;
        };
        let s = shared.clone();
        let tls = listener.tls.clone();
        shared.tracker.spawn(async move {
            handle_connection(
                stream, peer, tls, s.broker, s.registry, s.config, s.metadata, s.token,
            )
            .await;
            drop(slot);
        });
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// How often the broker's timers (message TTL, queue expiry, delayed messages) are checked.
const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// One task drives every broker timer: `Broker::tick` is cheap when nothing is due. It also
/// samples memory and disk for the resource alarms.
async fn tick_broker(
    broker: Arc<Broker>,
    mut monitor: alarms::ResourceMonitor,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                coarse_clock::update();
                broker.tick();
                monitor.tick();
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Client sockets being served (handshakes included), for `max_connections`.
#[derive(Default)]
struct SocketCount {
    open: std::sync::atomic::AtomicUsize,
    /// When a refusal was last logged (ms on the coarse clock), to log at most once a second.
    last_logged_ms: std::sync::atomic::AtomicU64,
}

/// One served socket; given back when dropped.
struct SocketSlot(Arc<SocketCount>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl SocketCount {
    fn acquire(self: &Arc<Self>, max: Option<usize>) -> Option<SocketSlot> {
        use std::sync::atomic::Ordering;
        let max = max.unwrap_or(usize::MAX);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| SocketSlot(Arc::clone(self)))
    }

    fn log_refusal(&self, peer: SocketAddr) {
        use std::sync::atomic::Ordering;
        let now = coarse_clock::now_ms();
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%peer, "connection refused: node connection limit ({}) is reached", self.open.load(Ordering::Relaxed));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    config: Arc<ServerConfig>,
    metadata: Option<pier_cluster::Metadata>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().map_or(peer, canonical);
    tracing::debug!(%peer, "accepted connection");
    // The handshake timeout covers the TLS handshake and the AMQP one together.
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let Some(acceptor) = tls else {
        let (rd, wr) = stream.into_split();
        let conn = ConnectionSetup {
            peer,
            local,
            deadline,
            cert_user: None,
            tls: None,
            metadata,
        };
        return serve_stream(rd, wr, conn, broker, registry, config, shutdown).await;
    };
    let accepted = tokio::select! {
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
        () = shutdown.cancelled() => return,
    };
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    // Only a certificate the verifier accepted gets here (rustls checked it against the CA).
    let cert_user = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| tls::subject_common_name(cert));
    let session = tls::session_info(stream.get_ref().1);
    let (rd, wr) = tokio::io::split(stream);
    let conn = ConnectionSetup {
        peer,
        local,
        deadline,
        cert_user,
        tls: Some(session),
        metadata,
    };
    serve_stream(rd, wr, conn, broker, registry, config, shutdown).await;
}

/// Testing and fuzzing seam: serves one AMQP connection on any byte stream (e.g.
/// `tokio::io::duplex`) with the real handshake, reader loop and writer task, as if it had
/// been accepted from 127.0.0.1 on the plain port. Returns when the connection has ended
/// (deregistered, writer drained). Not part of the supported API: `run` is how a server is
/// served; this exists so that `fuzzing.rs` and tests can drive a connection without sockets.
#[doc(hidden)]
pub async fn serve_connection<S>(
    stream: S,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    config: ServerConfig,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let setup = ConnectionSetup {
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        local: SocketAddr::from(([127, 0, 0, 1], 5672)),
        deadline: tokio::time::Instant::now() + config.handshake_timeout,
        cert_user: None,
        tls: None,
        metadata: None,
    };
    serve_stream(rd, wr, setup, broker, registry, Arc::new(config), shutdown).await;
}

/// After close-ok to a client's connection.close, RabbitMQ leaves closing the socket to the
/// client: it discards whatever still arrives until the client hangs up, or for the heartbeat
/// timeout (at most 30 s). Closing first would make a client that is still writing (or that
/// reads the EOF before the close-ok) report an error on a clean close.
async fn linger_after_close_ok<R: AsyncRead + Unpin>(
    rd: &mut R,
    heartbeat: u16,
    shutdown: &CancellationToken,
) {
    const MAX_LINGER: u64 = 30;
    let secs = match u64::from(heartbeat) {
        0 => MAX_LINGER,
        h => h.min(MAX_LINGER),
    };
    let drain = async {
        let mut scratch = [0u8; 4096];
        while matches!(rd.read(&mut scratch).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs(secs), drain) => {}
        () = shutdown.cancelled() => {}
    }
}

/// What the transport settled before AMQP starts.
struct ConnectionSetup {
    peer: SocketAddr,
    local: SocketAddr,
    /// The handshake must be complete by then.
    deadline: tokio::time::Instant,
    /// The subject CN of the client's verified TLS certificate (for SASL EXTERNAL).
    cert_user: Option<String>,
    /// The TLS session (`None`: plain TCP).
    tls: Option<TlsInfo>,
    /// The cluster's metadata front (clustered nodes only).
    metadata: Option<pier_cluster::Metadata>,
}

async fn serve_stream<R, W>(
    mut rd: R,
    mut wr: W,
    setup: ConnectionSetup,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let ConnectionSetup {
        peer,
        local,
        deadline,
        cert_user,
        tls,
        metadata,
    } = setup;

    let handshake = async {
        handshake::read_protocol_header(&mut rd, &mut wr).await?;
        let mut reader = FrameReader {
            io: rd,
            buf: BytesMut::with_capacity(4 * 1024),
            frame_max: config.frame_max,
        };
        let negotiated = handshake::negotiate(
            &mut reader,
            &mut wr,
            &broker,
            &config,
            peer,
            cert_user.as_deref(),
        )
        .await;
        Ok::<_, ConnectionError>((reader, negotiated))
    };
    let (mut reader, negotiated) = tokio::select! {
        r = tokio::time::timeout_at(deadline, handshake) => match r {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::info!(%peer, "connection refused during handshake: {e}");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "handshake timed out after {:?}", config.handshake_timeout);
                return;
            }
        },
        () = shutdown.cancelled() => return,
    };
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(ConnectionError::Protocol(ex)) => {
            tracing::warn!(%peer, "closing connection during handshake: {}", ex.text);
            let _ = wr.write_all(&close_frame(&ex)).await;
            let _ = tokio::time::timeout(config.close_timeout, reader.next_frame()).await;
            return;
        }
        Err(e) => {
            tracing::info!(%peer, "connection ended during handshake: {e}");
            return;
        }
    };
    tracing::info!(%peer, user = %negotiated.user.name, vhost = %negotiated.vhost.name(), "connection opened");

    let outbound = Outbound::new(config.outbound_high_watermark, negotiated.frame_max);
    let heartbeat = Duration::from_secs(u64::from(negotiated.heartbeat));
    let id = next_connection_id();
    let registered = registry.register(
        registry::ConnectionMeta {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user: negotiated.user.name.clone(),
            vhost: negotiated.vhost.name().to_owned(),
            client_properties: negotiated.client_properties.clone(),
            auth_mechanism: negotiated.mechanism.clone(),
            connected_at_ms: registry::unix_ms(),
            frame_max: negotiated.frame_max,
            channel_max: negotiated.channel_max,
            heartbeat: negotiated.heartbeat,
            protocol: "AMQP 0-9-1".into(),
            tls,
        },
        Arc::clone(&outbound),
        &shutdown,
    );
    let wr = CountingWriter::new(wr, Arc::clone(&registered));
    let writer = tokio::spawn(Arc::clone(&outbound).run_writer(wr, heartbeat));
    let close_token = registered.close_token();
    let mut conn = Connection::new(
        id,
        peer,
        Arc::clone(&config),
        negotiated,
        Arc::clone(&outbound),
        registered,
    );
    conn.metadata = metadata;
    let result = conn.serve(&mut reader, close_token).await;
    conn.teardown();
    registry.deregister(id);
    if conn.client_closed {
        linger_after_close_ok(&mut reader.io, conn.heartbeat, &shutdown).await;
    }
    outbound.finish();
    match tokio::time::timeout(config.close_timeout, writer).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::debug!(%peer, "writer ended: {e}"),
        Ok(Err(e)) => tracing::error!(%peer, "writer task failed: {e}"),
        Err(_) => tracing::debug!(%peer, "writer did not drain in time"),
    }
    match result {
        Ok(()) | Err(ConnectionError::Eof) => tracing::info!(%peer, "connection closed"),
        Err(e) => tracing::info!(%peer, "connection closed: {e}"),
    }
}
