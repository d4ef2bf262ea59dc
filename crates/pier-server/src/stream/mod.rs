//! The RabbitMQ stream protocol server (port 5552): one task pair per connection over the
//! broker's stream queues (`pier_broker::queue::stream`) and their logs.
//!
//! ```text
//!  TcpListener ─accept─► connection.rs: reader task ─ decode (pier-stream-wire) ─► command
//!                        │   handlers: handshake (peer properties, SASL, tune, open), streams,
//!                        │   publishers (append ─► writer thread ─► confirm), subscriptions,
//!                        │   offsets, metadata, super streams, single active consumer
//!                        ├─ writer task: bounded frame channel + confirms ─► socket, heartbeats
//!                        └─ one task per subscription: StreamReader ─ credit ─► Deliver frames
//!  sac.rs: single-active-consumer groups across connections (ConsumerUpdate)
//! ```
//!
//! Backpressure: frames go through a bounded channel (a subscription waits when the client
//! reads slowly, and never holds more than one chunk); unconfirmed publishes per connection
//! are bounded (the reader stops reading the socket above the bound); the stream's writer
//! channel is bounded.

// The broker's errors pass through as they are: rare, and off the publish/deliver paths.
#[allow(clippy::result_large_err)]
mod connection;
mod sac;
pub mod stats;
#[allow(clippy::result_large_err)]
mod superstream;

use std::sync::Arc;

use pier_broker::Broker;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use sac::Coordinator;

/// The version of RabbitMQ the stream server reports by default: clients switch features on
/// by it (the JavaScript client enables filtering and super streams from 3.13; RabbitMQ's
/// own clients skip `ExchangeCommandVersions` below 3.11), so it names a release whose
/// stream features Pier has.
pub const DEFAULT_ADVERTISED_VERSION: &str = "3.13.7";

/// Settings of the stream protocol server.
#[derive(Debug, Clone)]
pub struct StreamServerConfig {
    /// Host and port put in `Metadata` and the `Open` response (what clients connect to for
    /// a stream's leader): clients behind NAT or in containers need the outside address.
    pub advertised_host: String,
    pub advertised_port: u16,
    /// `version` in the server's peer properties.
    pub advertised_version: String,
    /// `product` in the server's peer properties.
    pub product: String,
    pub cluster_name: String,
    pub frame_max: u32,
    /// Seconds.
    pub heartbeat: u32,
    /// Publishes a connection may have waiting for their confirm before its socket is no
    /// longer read.
    pub max_unconfirmed: usize,
    /// Offer SASL EXTERNAL (TLS listener with client certificates).
    pub tls: bool,
}

impl Default for StreamServerConfig {
    fn default() -> Self {
        StreamServerConfig {
            advertised_host: "localhost".to_owned(),
            advertised_port: 5552,
            advertised_version: DEFAULT_ADVERTISED_VERSION.to_owned(),
            product: "RabbitMQ".to_owned(),
            cluster_name: "pier".to_owned(),
            frame_max: pier_stream_wire::frame::DEFAULT_FRAME_MAX,
            heartbeat: pier_stream_wire::frame::DEFAULT_HEARTBEAT,
            max_unconfirmed: 100_000,
            tls: false,
        }
    }
}

/// What every connection of a stream server shares.
pub(crate) struct Server {
    pub broker: Arc<Broker>,
    /// Where connections register for management (beside AMQP's).
    pub registry: Arc<crate::Registry>,
    pub config: StreamServerConfig,
    pub sac: Arc<Coordinator>,
    /// A clustered node's metadata front: streams and super streams are declared and
    /// deleted through the cluster, as AMQP declarations are (`None` on a single node).
    pub metadata: Option<pier_cluster::Metadata>,
}

/// Serves the stream protocol on `listener` (TLS with `tls`) until `shutdown` is cancelled;
/// then closes every connection and waits (bounded) for them. `metadata` is used only when
/// the node is clustered.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    broker: Arc<Broker>,
    registry: Arc<crate::Registry>,
    config: StreamServerConfig,
    metadata: Option<pier_cluster::Metadata>,
    shutdown: CancellationToken,
) {
    let server = Arc::new(Server {
        broker,
        registry: Arc::clone(&registry),
        config: StreamServerConfig {
            tls: tls.is_some(),
            ..config
        },
        // One coordinator for the node: a group's members may come through either port.
        sac: Arc::clone(registry.stream_sac()),
        metadata: metadata.filter(|m| m.cluster().is_some()),
    });
    let tracker = TaskTracker::new();
    let conns = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("stream listener: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let local = socket.local_addr().unwrap_or(peer);
        let server = Arc::clone(&server);
        let token = conns.child_token();
        let tls = tls.clone();
        tracker.spawn(async move {
            match tls {
                None => connection::run(server, socket, peer, local, None, None, token).await,
                Some(acceptor) => {
                    let accepted = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(socket),
                    )
                    .await;
                    match accepted {
                        Ok(Ok(stream)) => {
                            let cn = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| crate::tls::subject_common_name(cert));
                            let session = Some(crate::tls::session_info(stream.get_ref().1));
                            connection::run(server, stream, peer, local, cn, session, token).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "stream TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "stream TLS handshake timed out"),
                    }
                }
            }
        });
    }
    conns.cancel();
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
}
