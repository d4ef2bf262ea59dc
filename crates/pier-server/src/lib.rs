//! Pier's network layer: accepts TCP connections, runs the AMQP handshake, then one reader task
//! (this connection's frames → broker) and one writer task (Outbound → socket) per connection.
//! It knows no routing rules: those live in `pier-broker`.
//!
//! ```text
//!  TcpListener ─accept─► connection task ─┬─ handshake (handshake.rs)
//!                                         ├─ reader loop (connection.rs, channel.rs) ──► Broker
//!                                         └─ writer task (outbound.rs) ◄── queue deliveries
//! ```

mod channel;
mod coarse_clock;
pub mod config;
mod connection;
mod direct_reply;
pub mod error;
mod handshake;
mod outbound;
pub mod registry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pier_broker::Broker;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ServerConfig;
pub use error::{AmqpException, ConnectionError};
pub use registry::{ChannelInfo, ConnectionInfo, ConnectionMeta, Registry, RegistryTotals};

use connection::{close_frame, next_connection_id, Connection};
use handshake::FrameReader;
use outbound::Outbound;
use registry::CountingWriter;

/// Serves AMQP on `listener` until `shutdown` resolves, then closes every client connection
/// with 320 CONNECTION_FORCED and waits (bounded) for them to finish.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let ticker = tokio::spawn(tick_broker(Arc::clone(&broker), token.clone()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let broker = Arc::clone(&broker);
                let registry = Arc::clone(&registry);
                let config = Arc::clone(&config);
                let token = token.clone();
                tracker.spawn(async move {
                    handle_connection(stream, peer, broker, registry, config, token).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
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

/// How often the broker's timers (message TTL, queue expiry, delayed messages) are checked.
const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// One task drives every broker timer: `Broker::tick` is cheap when nothing is due.
async fn tick_broker(broker: Arc<Broker>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                coarse_clock::update();
                broker.tick();
            }
            () = stop.cancelled() => return,
        }
    }
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let (mut rd, mut wr) = stream.into_split();
    tracing::debug!(%peer, "accepted connection");

    let handshake = async {
        handshake::read_protocol_header(&mut rd, &mut wr).await?;
        let mut reader = FrameReader {
            io: rd,
            buf: BytesMut::with_capacity(16 * 1024),
            frame_max: config.frame_max,
        };
        let negotiated = handshake::negotiate(&mut reader, &mut wr, &broker, &config, peer).await;
        Ok::<_, ConnectionError>((reader, negotiated))
    };
    let (mut reader, negotiated) = tokio::select! {
        r = tokio::time::timeout(config.handshake_timeout, handshake) => match r {
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
    let result = conn.serve(&mut reader, close_token).await;
    conn.teardown();
    registry.deregister(id);
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
