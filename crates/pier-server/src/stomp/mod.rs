//! The STOMP server (1.0, 1.1, 1.2 on port 61613, 61614 over TLS), as RabbitMQ's STOMP plugin
//! serves it: destinations map onto exchanges and queues of the routing core, subscriptions
//! are queue consumers, SENDs go through the one publish path (`VHost::publish`).
//!
//! ```text
//!  TcpListener / TLS / WebSocket (websocket.rs) ─► serve_connection(io: AsyncRead+AsyncWrite)
//!     connection.rs  reader: Decoder (pier-stomp-wire) ─► Session::on_frame ─► Action
//!                    │  Connect: Broker::authenticate, open_vhost ─► CONNECTED, registry
//!                    │  Send: destinations.rs ─► headers.rs (STOMP → Properties) ─► VHost::publish
//!                    │        (persistent + receipt: RECEIPT after fsync, Durability::Token)
//!                    │  Subscribe: declare (Metadata::execute on a cluster) / bind ─► add_consumer
//!                    │  Ack/Nack: broker session take(tag, multiple) ─► settle / requeue / reject
//!                    │  Commit: the transaction's SEND/ACK/NACK frames, in order
//!                    │  heart-beats: Session::tick (send "\n", close a silent client)
//!     outbox.rs      bounded buffer of encoded frames ◄─ Sink (DeliverySink: MESSAGE frames)
//!                    └─► writer task ─► socket      (full: queues wait, reader stops reading)
//!     session.rs     sans-I/O: subscriptions, ack modes, transactions, receipts, heart-beats
//! ```

mod connection;
pub mod destinations;
pub mod headers;
mod outbox;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pier_broker::Broker;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of the STOMP server.
#[derive(Debug, Clone)]
pub struct StompServerConfig {
    /// Largest frame accepted (RabbitMQ 3.11+'s `stomp.max_frame_size` default, 4 MiB).
    pub max_frame_size: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// The login used when CONNECT has none (RabbitMQ's `stomp.default_user`, guest/guest);
    /// None: such a CONNECT is refused.
    pub default_user: Option<(String, String)>,
    /// Bytes buffered for a slow client before deliveries and reading stop.
    pub outbound_high_watermark: usize,
    /// CONNECT must arrive within this time.
    pub handshake_timeout: Duration,
    /// `server` header of CONNECTED: `product/version`.
    pub product: String,
    pub product_version: String,
    /// Largest SEND body (the server's `max_message_size`).
    pub max_message_size: u64,
}

impl Default for StompServerConfig {
    fn default() -> Self {
        StompServerConfig {
            max_frame_size: 4 * 1024 * 1024,
            max_headers: 1000,
            default_user: Some(("guest".to_owned(), "guest".to_owned())),
            outbound_high_watermark: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            product: "Pier".to_owned(),
            product_version: env!("CARGO_PKG_VERSION").to_owned(),
            max_message_size: crate::ServerConfig::default().max_message_size,
        }
    }
}

/// What every STOMP connection shares (cheap to clone behind an `Arc`).
pub struct StompContext {
    pub broker: Arc<Broker>,
    pub registry: Arc<crate::Registry>,
    pub config: StompServerConfig,
    /// A clustered node's metadata front: durable declarations go through the cluster.
    pub metadata: Option<pier_cluster::Metadata>,
}

impl StompContext {
    pub fn new(
        broker: Arc<Broker>,
        registry: Arc<crate::Registry>,
        config: StompServerConfig,
        metadata: Option<pier_cluster::Metadata>,
    ) -> Arc<StompContext> {
        Arc::new(StompContext {
            broker,
            registry,
            config,
            // Only a clustered node's front changes anything.
            metadata: metadata.filter(|m| m.cluster().is_some()),
        })
    }
}

/// Serves one STOMP connection on any byte stream (TCP, TLS, a WebSocket adapter) until it
/// ends or `shutdown` is cancelled; `tls` is the TLS session it runs over.
pub async fn serve_connection<S>(
    io: S,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<crate::registry::TlsInfo>,
    ctx: Arc<StompContext>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    connection::run(io, peer, local, tls, ctx, shutdown).await;
}

/// Accepts STOMP clients on `listener` (TLS with `tls`) until `shutdown`; then closes every
/// connection and waits (bounded) for them.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<StompContext>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let conns = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok((s, p)) => (s, SocketAddr::new(p.ip().to_canonical(), p.port())),
            Err(e) => {
                tracing::warn!("STOMP listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let local = socket
            .local_addr()
            .map_or(peer, |a| SocketAddr::new(a.ip().to_canonical(), a.port()));
        let ctx = Arc::clone(&ctx);
        let token = conns.child_token();
        let tls = tls.clone();
        tracker.spawn(async move {
            match tls {
                None => serve_connection(socket, peer, local, None, ctx, token).await,
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(socket))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            let session = crate::tls::session_info(stream.get_ref().1);
                            serve_connection(stream, peer, local, Some(session), ctx, token).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "STOMP TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "STOMP TLS handshake timed out"),
                    }
                }
            }
        });
    }
    conns.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ctx() -> Arc<StompContext> {
        StompContext::new(
            Arc::new(Broker::with_defaults()),
            Arc::new(crate::Registry::new()),
            StompServerConfig::default(),
            None,
        )
    }

    /// Runs one connection over an in-memory pipe: writes `input`, returns what came back
    /// once the server closed (or after 200 ms).
    async fn session(ctx: &Arc<StompContext>, input: &[u8]) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let peer: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:61613".parse().unwrap();
        let task = tokio::spawn(serve_connection(
            server,
            peer,
            local,
            None,
            Arc::clone(ctx),
            CancellationToken::new(),
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let _ = wr.write_all(input).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(200), rd.read_to_end(&mut out)).await;
        drop((rd, wr));
        // The connection task ends (no panic) once the client is gone.
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("connection task ended")
            .expect("connection task did not panic");
        out
    }

    const CONNECT: &[u8] = b"CONNECT\naccept-version:1.2\nhost:/\n\n\0";

    #[tokio::test]
    async fn connect_send_subscribe_over_a_pipe() {
        let ctx = ctx();
        let mut input = CONNECT.to_vec();
        input.extend_from_slice(b"SUBSCRIBE\ndestination:/queue/t\nid:1\nreceipt:s\n\n\0");
        input.extend_from_slice(b"SEND\ndestination:/queue/t\n\nhello\0");
        input.extend_from_slice(b"DISCONNECT\nreceipt:bye\n\n\0");
        let out = String::from_utf8(session(&ctx, &input).await).unwrap();
        assert!(out.starts_with("CONNECTED\n"), "{out}");
        assert!(out.contains("RECEIPT\nreceipt-id:s\n"), "{out}");
        assert!(out.contains("\n\nhello\0"), "{out}");
        assert!(out.contains("RECEIPT\nreceipt-id:bye\n"), "{out}");
    }

    #[tokio::test]
    async fn garbage_gets_an_error_and_a_close_never_a_panic() {
        let ctx = ctx();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..60 {
            let mut input = if round % 2 == 0 {
                CONNECT.to_vec()
            } else {
                Vec::new()
            };
            let len = 1 + (seed % 300) as usize;
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Mostly frame-ish bytes, so that parsing gets past the command line.
                let alphabet = b"SENDCONNECTSUBSCRIBEACKNACK:\n\\\r\0/queue/topic-id9";
                let b = if seed % 4 == 0 {
                    (seed >> 8) as u8
                } else {
                    alphabet[(seed >> 8) as usize % alphabet.len()]
                };
                input.push(b);
            }
            let _ = session(&ctx, &input).await;
        }
        // The broker still serves.
        let out = session(&ctx, CONNECT).await;
        assert!(out.starts_with(b"CONNECTED\n"));
    }
}
