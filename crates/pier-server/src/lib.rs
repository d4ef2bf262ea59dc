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
pub mod config;
mod connection;
pub mod error;
mod handshake;
mod outbound;

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

use connection::{close_frame, next_connection_id, Connection};
use handshake::FrameReader;
use outbound::Outbound;

/// Serves AMQP on `listener` until `shutdown` resolves, then closes every client connection
/// with 320 CONNECTION_FORCED and waits (bounded) for them to finish.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
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
                let config = Arc::clone(&config);
                let token = token.clone();
                tracker.spawn(async move {
                    handle_connection(stream, peer, broker, config, token).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: closing {} connection(s)", tracker.len());
    token.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within 10 s");
    }
    Ok(())
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
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
    let writer = tokio::spawn(Arc::clone(&outbound).run_writer(wr, heartbeat));
    let id = next_connection_id();
    let mut conn = Connection::new(
        id,
        peer,
        Arc::clone(&config),
        negotiated,
        Arc::clone(&outbound),
    );
    let result = conn.serve(&mut reader, shutdown).await;
    conn.teardown();
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
