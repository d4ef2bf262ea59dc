//! The MQTT server (3.1, 3.1.1 and 5.0 on one listener, 1883; 8883 over TLS), on the
//! broker's routing core as RabbitMQ's MQTT plugin does it: an MQTT PUBLISH is a message to
//! the `amq.topic` exchange (`mqtt.exchange`) of the configured vhost with routing key
//! `a.b` for topic `a/b`; a session's subscriptions are bindings of that exchange to its
//! queues `mqtt-subscription-<client id>qos0` / `…qos1`, which it consumes. AMQP clients and
//! MQTT clients see each other's messages, and management shows the queues and bindings.
//!
//! ```text
//!  TcpListener/TLS ─accept─► serve_connection(io) (any AsyncRead+AsyncWrite: TCP, TLS, and
//!       │                      later WebSocket)
//!       ▼
//!  connection.rs: one task ── select! ─┬─ socket bytes ─ pier-mqtt-wire decode ─► handlers
//!       │                               │     CONNECT: login, vhost, takeover, session queues
//!       │                               │     PUBLISH: VHost::publish (PUBACK once durable)
//!       │                               │     SUBSCRIBE: declare/bind/consume, retained
//!       │                               ├─ events: MqttSink deliveries (queues), durability
//!       │                               │     tokens done (PUBACK), consumer cancelled
//!       │                               ├─ keep-alive deadline (1.5 × keep alive)
//!       │                               └─ close: takeover, management, shutdown
//!       ├─ session.rs: sans-I/O state (packet ids, in-flight, PUBACK order, aliases, rules)
//!       ├─ retained.rs: retained messages per vhost, written through to the data dir
//!       └─ Clients (here): client id → live connection (takeover), pending delayed wills
//! ```

// The broker's errors pass through as they are: rare, and off the publish/deliver paths.
#[allow(clippy::result_large_err)]
mod connection;
pub mod retained;
pub mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier_broker::Broker;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of the MQTT server (RabbitMQ's `mqtt.*` keys and defaults).
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `mqtt.vhost`: the vhost of users who do not name one (`vhost:user`).
    pub vhost: String,
    /// `mqtt.exchange`: where publishes go and subscriptions bind.
    pub exchange: String,
    /// `mqtt.allow_anonymous`: a CONNECT without username logs in as `default_user`.
    pub allow_anonymous: bool,
    pub default_user: String,
    pub default_pass: String,
    /// `mqtt.prefetch`: unacknowledged QoS 1 deliveries per session (5.0: the client's
    /// Receive Maximum when lower).
    pub prefetch: u16,
    /// `mqtt.subscription_ttl` in seconds: how long a persistent session's queues outlive
    /// the connection (`x-expires`), and the cap of a 5.0 Session Expiry Interval.
    pub max_session_expiry_secs: u32,
    /// `mqtt.max_packet_size_unauthenticated`: the largest CONNECT accepted.
    pub max_packet_size_unauthenticated: u32,
    /// `mqtt.max_packet_size_authenticated`: the largest packet after CONNECT.
    pub max_packet_size: u32,
    /// Topic Alias Maximum announced to 5.0 clients.
    pub topic_alias_maximum: u16,
    /// Inbound QoS 1 publishes that may wait for the disk at once (5.0: Receive Maximum).
    pub receive_maximum: u16,
    /// Seconds a client has to send CONNECT after connecting.
    pub connect_timeout: Duration,
    /// Where retained messages are kept (none: memory only).
    pub data_dir: Option<std::path::PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            vhost: "/".to_owned(),
            exchange: "amq.topic".to_owned(),
            allow_anonymous: true,
            default_user: "guest".to_owned(),
            default_pass: "guest".to_owned(),
            prefetch: 10,
            max_session_expiry_secs: 86_400,
            max_packet_size_unauthenticated: 65_536,
            max_packet_size: 268_435_455,
            topic_alias_maximum: 16,
            receive_maximum: 1024,
            connect_timeout: Duration::from_secs(10),
            data_dir: None,
        }
    }
}

/// A live connection of a client id (for takeover).
struct Owner {
    connection: u64,
    /// Cancelled when another connection takes the client id over.
    kick: CancellationToken,
    /// Cancelled once this connection has cleaned up.
    done: CancellationToken,
}

/// Which connection holds each client id, and the wills waiting for their delay.
#[derive(Default)]
struct Clients {
    owners: Mutex<HashMap<(String, String), Owner>>,
    delayed_wills: Mutex<HashMap<(String, String), CancellationToken>>,
}

/// What every MQTT connection shares.
pub struct MqttContext {
    pub broker: Arc<Broker>,
    pub registry: Arc<crate::Registry>,
    pub config: MqttConfig,
    pub retained: retained::RetainedStore,
    clients: Clients,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Messages recently published with retain (for 5.0 Retain As Published).
    recent_retained: Mutex<std::collections::VecDeque<std::sync::Weak<pier_broker::Message>>>,
    /// A clustered node's metadata front: durable session queues and their bindings are
    /// the cluster's. `None` on a single node.
    pub metadata: Option<pier_cluster::Metadata>,
}

impl MqttContext {
    pub fn new(
        broker: Arc<Broker>,
        registry: Arc<crate::Registry>,
        config: MqttConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Self::with_metadata(broker, registry, config, shutdown, None)
    }

    /// `new` on a node that may be clustered: `metadata` is used only when it is.
    pub fn with_metadata(
        broker: Arc<Broker>,
        registry: Arc<crate::Registry>,
        config: MqttConfig,
        shutdown: CancellationToken,
        metadata: Option<pier_cluster::Metadata>,
    ) -> Arc<Self> {
        let retained = retained::RetainedStore::open(config.data_dir.as_deref());
        Arc::new(MqttContext {
            broker,
            registry,
            config,
            retained,
            clients: Clients::default(),
            shutdown,
            recent_retained: Mutex::default(),
            metadata: metadata.filter(|m| m.cluster().is_some()),
        })
    }

    fn remember_retained(&self, message: &Arc<pier_broker::Message>) {
        const RECENT: usize = 1024;
        let mut recent = self
            .recent_retained
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back(Arc::downgrade(message));
    }

    fn was_retained(&self, message: &Arc<pier_broker::Message>) -> bool {
        self.recent_retained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(message)))
    }

    /// Makes `connection` the owner of `client_id` in `vhost`: a previous owner is told to
    /// go (and waited for, bounded), a delayed will of the id is cancelled.
    async fn take_over(&self, vhost: &str, client_id: &str, connection: u64) -> Owned {
        let key = (vhost.to_owned(), client_id.to_owned());
        let kick = CancellationToken::new();
        let done = CancellationToken::new();
        let previous = {
            let mut owners = self
                .clients
                .owners
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            owners.insert(
                key.clone(),
                Owner {
                    connection,
                    kick: kick.clone(),
                    done: done.clone(),
                },
            )
        };
        if let Some(prev) = previous {
            prev.kick.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), prev.done.cancelled()).await;
        }
        // After the previous owner is gone: its will, if delayed, is registered by then.
        if let Some(will) = self
            .clients
            .delayed_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
        {
            will.cancel();
        }
        Owned {
            key,
            connection,
            kick,
            done,
        }
    }

    fn release(&self, owned: &Owned) {
        let mut owners = self
            .clients
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if owners
            .get(&owned.key)
            .is_some_and(|o| o.connection == owned.connection)
        {
            owners.remove(&owned.key);
        }
        drop(owners);
        owned.done.cancel();
    }

    /// Registers a delayed will; the returned token is cancelled when the client id comes
    /// back before the delay is over.
    fn delay_will(&self, key: (String, String)) -> CancellationToken {
        let token = CancellationToken::new();
        let old = self
            .clients
            .delayed_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, token.clone());
        if let Some(old) = old {
            old.cancel();
        }
        token
    }

    fn will_fired(&self, key: &(String, String), token: &CancellationToken) {
        let mut wills = self
            .clients
            .delayed_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A newer delayed will of the id cancelled this one: the entry is then not ours.
        if !token.is_cancelled() {
            wills.remove(key);
        }
    }
}

/// A connection's hold on its client id.
struct Owned {
    key: (String, String),
    connection: u64,
    kick: CancellationToken,
    done: CancellationToken,
}

/// Serves one MQTT connection on any byte stream (TCP, TLS, a WebSocket adapter) until it
/// ends. `peer` and `local` are the addresses management shows; `cert_user` the subject CN
/// of a verified TLS client certificate; `tls` the TLS session it runs over.
pub async fn serve_connection<S>(
    io: S,
    peer: SocketAddr,
    local: SocketAddr,
    cert_user: Option<String>,
    tls: Option<crate::registry::TlsInfo>,
    ctx: Arc<MqttContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    connection::run(io, peer, local, cert_user, tls, ctx).await;
}

/// Serves MQTT on `listener` (TLS with `tls`) until `ctx.shutdown` is cancelled; then waits
/// (bounded) for the connections, which close themselves on the same token.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, ctx: Arc<MqttContext>) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = ctx.shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok((s, p)) => (s, SocketAddr::new(p.ip().to_canonical(), p.port())),
            Err(e) => {
                tracing::warn!("MQTT listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let local = socket
            .local_addr()
            .map(|l| SocketAddr::new(l.ip().to_canonical(), l.port()))
            .unwrap_or(peer);
        let ctx = Arc::clone(&ctx);
        let tls = tls.clone();
        tracker.spawn(async move {
            match tls {
                None => serve_connection(socket, peer, local, None, None, ctx).await,
                Some(acceptor) => {
                    let accepted =
                        tokio::time::timeout(ctx.config.connect_timeout, acceptor.accept(socket))
                            .await;
                    match accepted {
                        Ok(Ok(stream)) => {
                            let cn = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| crate::tls::subject_common_name(cert));
                            let session = crate::tls::session_info(stream.get_ref().1);
                            serve_connection(stream, peer, local, cn, Some(session), ctx).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "MQTT TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "MQTT TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use bytes::BytesMut;
    use pier_mqtt_wire::{Packet, ProtocolVersion, QoS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn context() -> Arc<MqttContext> {
        MqttContext::new(
            Arc::new(Broker::with_defaults()),
            Arc::new(crate::Registry::new()),
            MqttConfig::default(),
            CancellationToken::new(),
        )
    }

    const CONNECT: &[u8] = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01t";

    /// The entry point serves any byte stream (a WebSocket adapter later): a whole session
    /// over an in-memory duplex.
    #[tokio::test]
    async fn serves_any_byte_stream() {
        let ctx = context();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let task = tokio::spawn(serve_connection(
            server,
            peer,
            peer,
            None,
            None,
            Arc::clone(&ctx),
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(CONNECT).await.unwrap();
        // SUBSCRIBE 1 "a" QoS 1, then PUBLISH QoS 1 id 2 to "a".
        wr.write_all(b"\x82\x06\x00\x01\x00\x01a\x01")
            .await
            .unwrap();
        wr.write_all(b"\x32\x07\x00\x01a\x00\x02hi").await.unwrap();
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        while seen.len() < 4 {
            match Packet::decode_from(&mut buf, ProtocolVersion::V3_1_1, 1 << 20).unwrap() {
                Some(p) => seen.push(p),
                None => assert!(rd.read_buf(&mut buf).await.unwrap() > 0, "closed"),
            }
        }
        assert!(matches!(&seen[0], Packet::ConnAck(c) if !c.reason_code.is_error()));
        assert!(matches!(&seen[1], Packet::SubAck(s) if s.packet_id == 1));
        let delivered = seen.iter().find_map(|p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        });
        let delivered = delivered.expect("the message comes back");
        assert_eq!(
            (
                delivered.topic.as_str(),
                &delivered.payload[..],
                delivered.qos
            ),
            ("a", &b"hi"[..], QoS::AtLeastOnce)
        );
        assert!(seen
            .iter()
            .any(|p| matches!(p, Packet::PubAck(r) if r.packet_id == 2)));
        let id = delivered.packet_id.to_be_bytes();
        wr.write_all(&[0x40, 0x02, id[0], id[1]]).await.unwrap();
        wr.write_all(b"\xe0\x00").await.unwrap();
        task.await.unwrap();
        let vhost = ctx.broker.vhost("/").unwrap();
        assert!(
            vhost.find_queue("mqtt-subscription-tqos1").is_none(),
            "a clean session's queue goes with it"
        );
    }

    /// Garbage after CONNECT ends the connection; it never panics the task.
    #[tokio::test]
    async fn garbage_never_panics() {
        let ctx = context();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..200 {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
            let task = tokio::spawn(serve_connection(
                server,
                peer,
                peer,
                None,
                None,
                Arc::clone(&ctx),
            ));
            let (mut rd, mut wr) = tokio::io::split(client);
            let mut bytes = Vec::new();
            if round % 2 == 0 {
                bytes.extend_from_slice(CONNECT);
            }
            for _ in 0..(64 + round) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed.to_le_bytes()[0]);
            }
            let _ = wr.write_all(&bytes).await;
            // EOF for the server (dropping one half of a split duplex would not be).
            let _ = wr.shutdown().await;
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
            task.await.expect("no panic");
        }
    }
}
