//! One MQTT connection: CONNECT, then a single task that reads packets, takes deliveries
//! from its queues and completions of its publishes, and writes packets. Decisions that need
//! no I/O are in `session.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pier_broker::consumer::{ChannelCredit, ConsumerId, Delivery, DeliverySink};
use pier_broker::persist::PublishDurability;
use pier_broker::queue::Queue;
use pier_broker::session::{dispose, requeue_all, Disposition, Unacked};
use pier_broker::{Access, Durability, Message, ObjectKind, PublishOptions, QueueDeclare, VHost};
use pier_cluster::metadata::{self, DestinationKind, MetadataCommand};
use pier_cluster::Metadata;
use pier_mqtt_wire::{
    topic, ConnAck, Connect, ConnectReturnCode, Disconnect, Packet, Properties, ProtocolVersion,
    PubReply, Publish, QoS, ReasonCode, RetainHandling, ServerAction, SubAck, Subscribe, UnsubAck,
    Unsubscribe, Will,
};
use pier_wire::{FieldTable, FieldValue, ShortString};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::session::{self, Session, SessionKind, Sub};
use super::{MqttContext, Owned};
use crate::amqp::access::AccessControl;
use crate::registry::{ConnectionEntry, ConnectionMeta};

/// Deliveries a connection's sink holds before its queues wait (bounded buffering).
const SINK_BOUND: usize = 256;
/// Messages this connection published recently, for 5.0's no-local.
const RECENT_PUBLISHES: usize = 256;
const SHORTSTR_MAX: usize = 255;

enum Event {
    Deliver(Delivery),
    /// A QoS 1 publish's stored copies are safe (`ok`) or lost.
    PublishDone {
        seq: u64,
        ok: bool,
    },
    /// The broker cancelled a consumer (its queue was deleted).
    Cancelled,
    /// A queue waits for the sink's room, which there is now.
    Wake,
}

/// The consumer side of a connection's subscription queues.
struct MqttSink {
    tx: mpsc::UnboundedSender<Event>,
    queued: AtomicUsize,
    waiting: Mutex<Vec<Weak<Queue>>>,
}

impl DeliverySink for MqttSink {
    fn deliver(&self, delivery: Delivery) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(Event::Deliver(delivery));
    }
    fn ready(&self) -> bool {
        self.queued.load(Ordering::Acquire) < SINK_BOUND
    }
    fn notify_when_ready(&self, queue: Weak<Queue>) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(queue);
        // The connection may have drained below the bound between `ready()` and the push:
        // then nobody would wake the queue. (It cannot be dispatched from here: the queue's
        // lock is held.)
        if self.ready() {
            let _ = self.tx.send(Event::Wake);
        }
    }
    fn cancelled(&self, _consumer_tag: &ShortString) {
        let _ = self.tx.send(Event::Cancelled);
    }
}

/// Why the connection ends.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT (0x04: with will).
    Disconnect { publish_will: bool },
    /// Socket closed, error or protocol violation: the will is published.
    Abnormal,
}

/// Serves one connection until it ends.
pub(super) async fn run<S>(
    io: S,
    peer: SocketAddr,
    local: SocketAddr,
    cert_user: Option<String>,
    tls: Option<crate::registry::TlsInfo>,
    ctx: Arc<MqttContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut inbuf = BytesMut::with_capacity(4096);
    let connect = tokio::select! {
        r = tokio::time::timeout(ctx.config.connect_timeout, read_connect(&mut rd, &mut inbuf, ctx.config.max_packet_size_unauthenticated)) => r,
        () = ctx.shutdown.cancelled() => return,
    };
    let connect = match connect {
        Err(_) => {
            tracing::info!(%peer, "MQTT: no CONNECT in time");
            return;
        }
        Ok(Err(ConnectFailure::Io)) => return,
        Ok(Err(ConnectFailure::Decode(e))) => {
            tracing::info!(%peer, "MQTT: bad CONNECT: {e}");
            if let Some((packet, version)) = e.action().packet() {
                let _ = send_now(&mut wr, &packet, version).await;
            }
            return;
        }
        Ok(Ok(c)) => c,
    };
    let version = connect.protocol;
    let (mut conn, session_present) =
        match Conn::open(&ctx, connect, peer, local, cert_user, tls).await {
            Ok(c) => c,
            Err(code) => {
                tracing::info!(%peer, "MQTT connection refused: {}", code.description());
                let _ = send_now(
                    &mut wr,
                    &connack(version, code, false, Properties::default()),
                    version,
                )
                .await;
                return;
            }
        };
    let props = conn.connack_properties();
    conn.write(&connack(
        version,
        ReasonCode::Success,
        session_present,
        props,
    ));
    tracing::info!(%peer, client_id = %conn.client_id, user = %conn.user, vhost = %conn.vhost.name(), "MQTT connection opened ({:?})", version);
    let end = conn.serve(&mut rd, &mut wr, inbuf).await;
    if let (Some(rc), true) = (conn.disconnect_with, is_v5(version)) {
        // With a reason string: clients (paho) read the reason code only from a DISCONNECT
        // longer than two octets.
        conn.write(&Packet::Disconnect(Disconnect {
            reason_code: rc,
            properties: Properties {
                reason_string: Some(rc.description().to_owned()),
                ..Properties::default()
            },
        }));
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.flush(&mut wr)).await;
    conn.teardown(end).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

enum ConnectFailure {
    Io,
    Decode(pier_mqtt_wire::ConnectError),
}

async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: u32,
) -> Result<Connect, ConnectFailure> {
    loop {
        match Connect::decode_from(buf, max) {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(e) => return Err(ConnectFailure::Decode(e)),
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ConnectFailure::Io),
            Ok(_) => {}
        }
    }
}

async fn send_now<W: AsyncWrite + Unpin>(
    wr: &mut W,
    packet: &Packet,
    version: ProtocolVersion,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    if packet.encode(version, &mut out).is_ok() {
        wr.write_all(&out).await?;
        wr.flush().await?;
    }
    Ok(())
}

fn connack(version: ProtocolVersion, code: ReasonCode, present: bool, props: Properties) -> Packet {
    let reason_code = match version {
        ProtocolVersion::V5 => code,
        // 3.1/3.1.1 return codes, from the closest 5.0 reason.
        _ => match code {
            ReasonCode::Success => ReasonCode::Success,
            _ => ConnectReturnCode::from_reason_code(code)
                .unwrap_or(ConnectReturnCode::ServerUnavailable)
                .to_reason_code(),
        },
    };
    Packet::ConnAck(ConnAck {
        session_present: present && code == ReasonCode::Success,
        reason_code,
        properties: if version == ProtocolVersion::V5 {
            props
        } else {
            Properties::default()
        },
    })
}

struct Conn {
    ctx: Arc<MqttContext>,
    version: ProtocolVersion,
    client_id: String,
    assigned_id: bool,
    user: String,
    vhost: Arc<VHost>,
    access: AccessControl,
    id: u64,
    peer: SocketAddr,
    kind: SessionKind,
    session: Session<Unacked>,
    /// Consumers of the qos0 and qos1 queues.
    consumers: [Option<(Arc<Queue>, ConsumerId)>; 2],
    sink: Arc<MqttSink>,
    credit: Arc<ChannelCredit>,
    events: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::UnboundedSender<Event>,
    out: BytesMut,
    will: Option<Will>,
    keep_alive: u16,
    /// The client's Maximum Packet Size (5.0): larger PUBLISHes are not sent to it.
    client_max_packet: Option<u32>,
    prefetch: u16,
    entry: Arc<ConnectionEntry>,
    owned: Owned,
    /// Reason codes of QoS 1 publishes waiting for the disk, decided when routed.
    publish_reasons: HashMap<u64, ReasonCode>,
    recent: VecDeque<Weak<Message>>,
    /// A 5.0 DISCONNECT to send before closing.
    disconnect_with: Option<ReasonCode>,
    /// Whether this connection has published (resource alarms block publishers).
    published_any: bool,
}

fn is_v5(v: ProtocolVersion) -> bool {
    v == ProtocolVersion::V5
}

impl Conn {
    async fn open(
        ctx: &Arc<MqttContext>,
        connect: Connect,
        peer: SocketAddr,
        local: SocketAddr,
        cert_user: Option<String>,
        tls: Option<crate::registry::TlsInfo>,
    ) -> Result<(Conn, bool), ReasonCode> {
        let version = connect.protocol;
        if connect.properties.authentication_method.is_some() {
            return Err(ReasonCode::BadAuthenticationMethod);
        }
        let (client_id, assigned_id) =
            session::client_id(version, &connect.client_id, connect.clean_start, || {
                format!("pier-{}", crate::amqp::connection::next_connection_id())
            })?;
        // The session's queue names must be AMQP short strings.
        if session::queue_name(&client_id, QoS::AtLeastOnce).len() > SHORTSTR_MAX {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        // Login: username/password, a client certificate, or the default user.
        let from_loopback = peer.ip().is_loopback();
        let cfg = &ctx.config;
        let (vhost_name, user) = match (&connect.username, &cert_user) {
            (Some(name), _) => {
                let (vhost, user) = session::split_vhost(name, &cfg.vhost);
                let password = connect
                    .password
                    .as_ref()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .ok_or(ReasonCode::BadUserNameOrPassword)?;
                let user = ctx
                    .broker
                    .authenticate(user, password, from_loopback)
                    .map_err(|e| {
                        tracing::warn!(%peer, "MQTT login failed: {e}");
                        ReasonCode::BadUserNameOrPassword
                    })?;
                (vhost.to_owned(), user)
            }
            (None, Some(cn)) => {
                let user = ctx
                    .broker
                    .authenticate_external(cn, from_loopback)
                    .map_err(|_| ReasonCode::BadUserNameOrPassword)?;
                (cfg.vhost.clone(), user)
            }
            (None, None) if cfg.allow_anonymous => {
                let user = ctx
                    .broker
                    .authenticate(&cfg.default_user, &cfg.default_pass, from_loopback)
                    .map_err(|e| {
                        tracing::warn!(%peer, "MQTT anonymous login failed: {e}");
                        ReasonCode::BadUserNameOrPassword
                    })?;
                (cfg.vhost.clone(), user)
            }
            (None, None) => return Err(ReasonCode::BadUserNameOrPassword),
        };
        let vhost = ctx
            .broker
            .open_vhost(&user.name, &vhost_name)
            .map_err(|e| {
                tracing::warn!(%peer, "MQTT vhost access refused: {e}");
                ReasonCode::NotAuthorized
            })?;
        let slot = vhost.acquire_connection_slot(&user.name).map_err(|e| {
            tracing::warn!(%peer, "MQTT connection refused: {e}");
            ReasonCode::QuotaExceeded
        })?;
        let access = AccessControl::new(
            Arc::clone(&ctx.broker),
            &user.name,
            vhost.name(),
            peer,
            Some(slot),
        );
        let id = crate::amqp::connection::next_connection_id();
        let owned = ctx.take_over(vhost.name(), &client_id, id).await;
        let kind = SessionKind::from_connect(
            version,
            connect.clean_start,
            connect.properties.session_expiry_interval,
            cfg.max_session_expiry_secs,
        );
        let prefetch = match connect.properties.receive_maximum {
            Some(r) if is_v5(version) => r.min(cfg.prefetch),
            _ => cfg.prefetch,
        };
        let protocol = match version {
            // RabbitMQ's words (3.10.8 shows 3.1 as "MQTT 3.1.0").
            ProtocolVersion::V3_1 => "MQTT 3.1.0",
            ProtocolVersion::V3_1_1 => "MQTT 3.1.1",
            ProtocolVersion::V5 => "MQTT 5-0",
        };
        let mut client_properties = FieldTable::new();
        client_properties.insert(
            "client_id",
            FieldValue::LongString(client_id.as_str().into()),
        );
        client_properties.insert("product", FieldValue::LongString("MQTT client".into()));
        let outbound = crate::amqp::outbound::Outbound::new(64 * 1024, 0);
        let entry = ctx.registry.register(
            ConnectionMeta {
                id,
                name: format!("{peer} -> {local}"),
                peer,
                local,
                user: user.name.clone(),
                vhost: vhost.name().to_owned(),
                client_properties,
                auth_mechanism: String::new(),
                connected_at_ms: crate::registry::unix_ms(),
                frame_max: 0,
                channel_max: 0,
                heartbeat: connect.keep_alive,
                protocol: protocol.into(),
                tls,
            },
            outbound,
            &ctx.shutdown,
        );
        let (tx, events) = mpsc::unbounded_channel();
        let sink = Arc::new(MqttSink {
            tx: tx.clone(),
            queued: AtomicUsize::new(0),
            waiting: Mutex::new(Vec::new()),
        });
        let mut will = connect.will;
        if let Some(w) = will.as_mut() {
            w.qos = session::granted_qos(w.qos);
        }
        let mut conn = Conn {
            ctx: Arc::clone(ctx),
            version,
            client_id,
            assigned_id,
            user: user.name,
            vhost,
            access,
            id,
            peer,
            kind,
            // The reader stops at receive_maximum; the session's bound is a backstop.
            session: Session::new(
                cfg.topic_alias_maximum,
                usize::from(cfg.receive_maximum) * 2,
            ),
            consumers: [None, None],
            sink,
            credit: Arc::new(ChannelCredit::new()),
            events,
            tx,
            out: BytesMut::new(),
            will,
            keep_alive: connect.keep_alive,
            client_max_packet: connect.properties.maximum_packet_size,
            prefetch,
            entry,
            owned,
            publish_reasons: HashMap::new(),
            recent: VecDeque::new(),
            disconnect_with: None,
            published_any: false,
        };
        let present = conn.resume_session().await;
        Ok((conn, present))
    }

    fn connack_properties(&self) -> Properties {
        let cfg = &self.ctx.config;
        Properties {
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(true),
            wildcard_subscription_available: Some(true),
            subscription_identifier_available: Some(true),
            shared_subscription_available: Some(false),
            topic_alias_maximum: Some(cfg.topic_alias_maximum),
            maximum_packet_size: Some(cfg.max_packet_size.min(268_435_455)),
            receive_maximum: Some(cfg.receive_maximum),
            assigned_client_identifier: self.assigned_id.then(|| self.client_id.clone()),
            ..Properties::default()
        }
    }

    /// Clean start: a previous session's queues go. Otherwise its queues are consumed
    /// again; whether there were any is CONNACK's session present.
    async fn resume_session(&mut self) -> bool {
        let mut present = false;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce].into_iter().enumerate() {
            let name = session::queue_name(&self.client_id, qos);
            let Some(q) = self.vhost.find_queue(&name) else {
                continue;
            };
            // 5.0 clean start 0 with session expiry 0 resumes the session, which then ends
            // with the connection (teardown deletes its queues).
            // The QoS 0 queue never outlives its connection (RabbitMQ 3.10: non-durable,
            // auto-delete, in persistent sessions too).
            if self.kind.clean_start || qos == QoS::AtMostOnce {
                self.delete_queue(&name).await;
                continue;
            }
            present = true;
            if let Err(e) = self.consume(i, q) {
                tracing::warn!(peer = %self.peer, "MQTT: cannot consume {name}: {e}");
            }
        }
        present
    }

    fn write(&mut self, packet: &Packet) {
        if let Err(e) = packet.encode(self.version, &mut self.out) {
            tracing::debug!(peer = %self.peer, "MQTT: cannot encode {}: {e}", packet.name());
        }
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let n = self.out.len();
        wr.write_all(&self.out).await?;
        wr.flush().await?;
        self.out.clear();
        let c = &self.entry.counters;
        c.send_oct.fetch_add(n as u64, Ordering::Relaxed);
        c.send_cnt.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn serve<R, W>(&mut self, rd: &mut R, wr: &mut W, mut inbuf: BytesMut) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let close = self.entry.close_token();
        let kick = self.owned.kick.clone();
        let timeout = session::keep_alive_timeout_ms(self.keep_alive).map(Duration::from_millis);
        let mut deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let max = self.ctx.config.max_packet_size;
        // Packets that arrived with the CONNECT.
        let mut have_input = !inbuf.is_empty();
        let window = usize::from(self.ctx.config.receive_maximum);
        let mut alarms = self.entry.alarms.subscribe();
        loop {
            // At most `receive_maximum` QoS 1 publishes wait for the disk: beyond that the
            // socket is not read (and buffered packets not decoded) until some are settled.
            let full = self.session.publishes_waiting() >= window;
            if have_input && !full {
                loop {
                    if self.session.publishes_waiting() >= window {
                        break;
                    }
                    match Packet::decode_from(&mut inbuf, self.version, max) {
                        Ok(Some(p)) => {
                            if let Some(end) = self.packet(p).await {
                                let _ = self.flush(wr).await;
                                return end;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(peer = %self.peer, "MQTT: bad packet: {e}");
                            if let ServerAction::Disconnect(rc) = e.action(self.version) {
                                self.disconnect_with = Some(rc);
                            }
                            return End::Abnormal;
                        }
                    }
                }
            }
            // A resource alarm blocks connections that publish (as AMQP's, and RabbitMQ's
            // MQTT): their socket is not read until it clears.
            let blocked = self.published_any && alarms.borrow_and_update().any();
            let full = self.session.publishes_waiting() >= window || blocked;
            if full {
                // The client is not idle: the server is not reading it.
                deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            }
            if self.flush(wr).await.is_err() {
                return End::Abnormal;
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rd.read_buf(&mut inbuf), if !full => match r {
                    Ok(0) | Err(_) => return End::Abnormal,
                    Ok(n) => {
                        self.entry.count_read(n);
                        have_input = true;
                        deadline = timeout.map(|t| tokio::time::Instant::now() + t);
                    }
                },
                Some(ev) = self.events.recv() => {
                    self.event(ev);
                    have_input = !inbuf.is_empty();
                    // Whatever else is ready, without going through select! again.
                    while let Ok(ev) = self.events.try_recv() {
                        self.event(ev);
                        if self.out.len() > 64 * 1024 {
                            break;
                        }
                    }
                }
                r = alarms.changed(), if blocked => {
                    if r.is_err() {
                        return End::Abnormal;
                    }
                }
                () = sleep => {
                    tracing::info!(peer = %self.peer, client_id = %self.client_id, "MQTT keep-alive timeout");
                    self.disconnect_with = Some(ReasonCode::KeepAliveTimeout);
                    return End::Abnormal;
                }
                () = kick.cancelled() => {
                    tracing::info!(peer = %self.peer, client_id = %self.client_id, "MQTT session taken over");
                    self.disconnect_with = Some(ReasonCode::SessionTakenOver);
                    return End::Abnormal;
                }
                () = close.cancelled() => {
                    self.disconnect_with = Some(match self.entry.forced_close_reason() {
                        Some(_) => ReasonCode::AdministrativeAction,
                        None => ReasonCode::ServerShuttingDown,
                    });
                    return End::Abnormal;
                }
            }
        }
    }

    /// Handles one packet; `Some` ends the connection.
    async fn packet(&mut self, p: Packet) -> Option<End> {
        match p {
            Packet::Publish(p) => self.publish(p).await.err(),
            Packet::PubAck(r) => {
                self.puback(r.packet_id);
                None
            }
            Packet::Subscribe(s) => {
                self.subscribe(s).await;
                None
            }
            Packet::Unsubscribe(u) => {
                self.unsubscribe(u).await;
                None
            }
            Packet::PingReq => {
                self.write(&Packet::PingResp);
                None
            }
            Packet::Disconnect(d) => {
                if let Some(exp) = d.properties.session_expiry_interval {
                    // 5.0: a session that was not kept may not be made kept at DISCONNECT.
                    if self.kind.persistent() {
                        self.kind.expiry_secs =
                            (exp > 0).then(|| exp.min(self.ctx.config.max_session_expiry_secs));
                    } else if exp > 0 {
                        self.disconnect_with = Some(ReasonCode::ProtocolError);
                        return Some(End::Abnormal);
                    }
                }
                Some(End::Disconnect {
                    publish_will: d.reason_code == ReasonCode::DisconnectWithWillMessage,
                })
            }
            // QoS 2 flows: not granted (maximum QoS 1); a client that uses them anyway
            // violates the protocol.
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                self.disconnect_with = Some(ReasonCode::ProtocolError);
                Some(End::Abnormal)
            }
            Packet::Connect(_) => {
                self.disconnect_with = Some(ReasonCode::ProtocolError);
                Some(End::Abnormal)
            }
            _ => {
                self.disconnect_with = Some(ReasonCode::ProtocolError);
                Some(End::Abnormal)
            }
        }
    }

    fn v5_fail(&mut self, rc: ReasonCode) -> End {
        self.disconnect_with = Some(rc);
        End::Abnormal
    }

    async fn publish(&mut self, p: Publish) -> Result<(), End> {
        self.entry.count_publish();
        self.published_any = true;
        let qos = match (p.qos, self.version) {
            (QoS::ExactlyOnce, ProtocolVersion::V5) => {
                return Err(self.v5_fail(ReasonCode::QosNotSupported))
            }
            // 3.1/3.1.1: QoS 2 is handled as QoS 1 (RabbitMQ 3.10).
            (QoS::ExactlyOnce, _) => QoS::AtLeastOnce,
            (q, _) => q,
        };
        let topic_name = self
            .session
            .resolve_topic(&p.topic, p.properties.topic_alias)
            .map_err(|e| self.v5_fail(e.reason_code()))?;
        if topic::validate_topic_name(&topic_name).is_err() {
            return Err(self.v5_fail(ReasonCode::TopicNameInvalid));
        }
        let routing_key = topic::mqtt_to_amqp(&topic_name);
        if routing_key.len() > SHORTSTR_MAX {
            return Err(self.v5_fail(ReasonCode::TopicNameInvalid));
        }
        let exchange = self.ctx.config.exchange.clone();
        let vhost = Arc::clone(&self.vhost);
        let allowed = self
            .access
            .check_publish(&ShortString::from(exchange.as_str()))
            .and_then(|()| {
                self.access
                    .check_topic(&exchange, &routing_key, Access::Write, || {
                        vhost.is_topic_exchange(&exchange)
                    })
            });
        if allowed.is_err() {
            // 5.0: a QoS 1 publish is refused with PUBACK 0x87; otherwise the connection
            // closes (3.1.1 has no way to refuse a publish; RabbitMQ closes).
            if is_v5(self.version) && qos == QoS::AtLeastOnce {
                let seq = self
                    .session
                    .publish_received(p.packet_id)
                    .map_err(|e| self.v5_fail(e.reason_code()))?;
                self.pubacks(seq, ReasonCode::NotAuthorized);
                return Ok(());
            }
            return Err(self.v5_fail(ReasonCode::NotAuthorized));
        }
        let message =
            Arc::new(self.message(&routing_key, qos, p.dup, &p.properties, p.payload.clone()));
        if p.retain {
            self.ctx
                .retained
                .set(self.vhost.name(), &topic_name, qos, p.payload)
                .await;
        }
        self.remember(&message);
        if p.retain {
            self.ctx.remember_retained(&message);
        }
        match qos {
            QoS::AtMostOnce => {
                if let Err(e) = self.vhost.publish(message, PublishOptions::client()) {
                    tracing::info!(peer = %self.peer, "MQTT publish failed: {e}");
                    return Err(self.v5_fail(ReasonCode::UnspecifiedError));
                }
            }
            _ => {
                let seq = self
                    .session
                    .publish_received(p.packet_id)
                    .map_err(|e| self.v5_fail(e.reason_code()))?;
                let tx = self.tx.clone();
                let token = PublishDurability::new(move |ok| {
                    let _ = tx.send(Event::PublishDone { seq, ok });
                });
                let outcome = self.vhost.publish(
                    message,
                    PublishOptions {
                        from_client: true,
                        durability: Durability::Token(&token),
                    },
                );
                let reason = match outcome {
                    Ok(o) if o.rejected => ReasonCode::QuotaExceeded,
                    Ok(o) if !o.routed => ReasonCode::NoMatchingSubscribers,
                    Ok(_) => ReasonCode::Success,
                    Err(e) => {
                        tracing::info!(peer = %self.peer, "MQTT publish failed: {e}");
                        if !is_v5(self.version) {
                            return Err(End::Abnormal);
                        }
                        ReasonCode::UnspecifiedError
                    }
                };
                self.publish_reasons.insert(seq, reason);
                token.release();
            }
        }
        Ok(())
    }

    fn remember(&mut self, message: &Arc<Message>) {
        if self.recent.len() >= RECENT_PUBLISHES {
            self.recent.pop_front();
        }
        self.recent.push_back(Arc::downgrade(message));
    }

    /// PUBACKs that may go now that publish `seq` is settled.
    fn pubacks(&mut self, seq: u64, reason: ReasonCode) {
        for (packet_id, rc) in self.session.publish_done(seq, reason) {
            let reason_code = if is_v5(self.version) {
                rc
            } else {
                ReasonCode::Success
            };
            self.write(&Packet::PubAck(PubReply {
                packet_id,
                reason_code,
                properties: Properties::default(),
            }));
        }
    }

    /// The AMQP message for an MQTT publish (RabbitMQ's mapping).
    fn message(
        &self,
        routing_key: &str,
        qos: QoS,
        dup: bool,
        props: &Properties,
        payload: Bytes,
    ) -> Message {
        let mut headers = FieldTable::new();
        headers.insert("x-mqtt-publish-qos", FieldValue::ShortShortUInt(qos as u8));
        headers.insert("x-mqtt-dup", FieldValue::Bool(dup));
        for (k, v) in &props.user_properties {
            if k.len() <= SHORTSTR_MAX {
                headers.insert(
                    ShortString::from(k.as_str()),
                    FieldValue::LongString(v.as_str().into()),
                );
            }
        }
        let short = |s: &str| (s.len() <= SHORTSTR_MAX).then(|| ShortString::from(s));
        let mut properties = pier_broker::Properties {
            delivery_mode: Some(if qos == QoS::AtMostOnce { 1 } else { 2 }),
            headers: Some(headers),
            ..pier_broker::Properties::default()
        };
        if is_v5(self.version) {
            properties.content_type = props.content_type.as_deref().and_then(short);
            properties.reply_to = props
                .response_topic
                .as_deref()
                .and_then(|t| short(&topic::mqtt_to_amqp(t)));
            properties.correlation_id = props
                .correlation_data
                .as_ref()
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(short);
            properties.expiration = props
                .message_expiry_interval
                .map(|s| ShortString::from((u64::from(s) * 1000).to_string()));
        }
        Message::new(
            ShortString::from(self.ctx.config.exchange.as_str()),
            ShortString::from(routing_key),
            properties,
            payload,
        )
    }

    fn puback(&mut self, packet_id: u16) {
        if let Some(Some(u)) = self.session.puback(packet_id) {
            self.settle(u);
        }
    }

    fn settle(&self, u: Unacked) {
        dispose(std::slice::from_ref(&u), Disposition::Ack);
        self.credit.release(1);
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Deliver(d) => {
                let before = self.sink.queued.fetch_sub(1, Ordering::AcqRel);
                if before >= SINK_BOUND {
                    self.wake_queues();
                }
                self.deliver(d);
            }
            Event::Wake => self.wake_queues(),
            Event::PublishDone { seq, ok } => {
                let decided = self
                    .publish_reasons
                    .remove(&seq)
                    .unwrap_or(ReasonCode::Success);
                let reason = if ok {
                    decided
                } else {
                    ReasonCode::UnspecifiedError
                };
                self.pubacks(seq, reason);
            }
            Event::Cancelled => {
                // The queue was deleted (e.g. through management): its consumer is gone.
                for slot in &mut self.consumers {
                    if slot.as_ref().is_some_and(|(q, _)| q.is_deleted()) {
                        *slot = None;
                    }
                }
            }
        }
    }

    /// Queues that waited for room in the sink deliver again.
    fn wake_queues(&self) {
        let waiting =
            std::mem::take(&mut *self.sink.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        for q in waiting.iter().filter_map(Weak::upgrade) {
            q.dispatch();
        }
    }

    /// A queue delivery → PUBLISH.
    fn deliver(&mut self, d: Delivery) {
        let m = &d.message;
        let sub_qos = if d.queue.name().ends_with("qos0") {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let headers = m.properties.headers.as_ref();
        let published_qos = headers
            .and_then(|h| h.get("x-mqtt-publish-qos"))
            .and_then(FieldValue::as_i64)
            .and_then(|q| u8::try_from(q).ok());
        let qos = session::delivery_qos(sub_qos, published_qos);
        let unacked = d.ack_required.then(|| Unacked {
            tag: 0,
            queue: Arc::clone(&d.queue),
            consumer: d.consumer,
            offset: d.offset,
            delivered_at: 0,
        });
        let topic_name = topic::amqp_to_mqtt(&m.routing_key);
        let own = self
            .recent
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(m)));
        if own && is_v5(self.version) && self.session.no_local(&topic_name) {
            if let Some(u) = unacked {
                self.settle(u);
            }
            return;
        }
        let mut props = Properties::default();
        if is_v5(self.version) {
            props.subscription_identifiers = self.session.subscription_ids(&topic_name, sub_qos);
            props.content_type = m
                .properties
                .content_type
                .as_ref()
                .map(|s| s.as_str().to_owned());
            props.response_topic = m
                .properties
                .reply_to
                .as_ref()
                .map(|r| topic::amqp_to_mqtt(r.as_str()));
            props.correlation_data = m
                .properties
                .correlation_id
                .as_ref()
                .map(|c| Bytes::copy_from_slice(c.as_str().as_bytes()));
            props.message_expiry_interval = m
                .properties
                .expiration
                .as_ref()
                .and_then(|e| e.as_str().parse::<u64>().ok())
                .map(|ms| u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX));
            if let Some(h) = headers {
                for (k, v) in h.iter() {
                    if k.as_str().starts_with("x-") {
                        continue;
                    }
                    if let Some(s) = v.as_str() {
                        props
                            .user_properties
                            .push((k.as_str().to_owned(), s.to_owned()));
                    }
                }
            }
        }
        // 5.0 Retain As Published: a message published with retain keeps the flag (known
        // while the message is in memory).
        let retain = is_v5(self.version)
            && self.session.retain_as_published(&topic_name)
            && self.ctx.was_retained(m);
        let mut publish = Publish {
            dup: false,
            qos,
            retain,
            topic: topic_name,
            packet_id: 0,
            properties: props,
            payload: m.body.clone(),
        };
        // A message the client cannot take (over its Maximum Packet Size, 5.0 §3.1.2.11.4)
        // or that cannot be encoded (an AMQP routing key that is no topic name, e.g. empty)
        // is discarded as if delivered.
        let max = self.client_max_packet.map_or(usize::MAX, |m| m as usize);
        let probe = Publish {
            // Any identifier: only the length matters (QoS 1 needs one, QoS 0 none).
            packet_id: u16::from(qos == QoS::AtLeastOnce),
            ..publish.clone()
        };
        let fits = Packet::Publish(probe)
            .encoded_len(self.version)
            .is_ok_and(|n| n <= max)
            && !publish.topic.is_empty();
        if !fits {
            if let Some(u) = unacked {
                self.settle(u);
            }
            return;
        }
        if qos == QoS::AtLeastOnce {
            publish.dup = d.redelivered;
            match self.session.send_qos1(unacked) {
                Some(id) => publish.packet_id = id,
                None => return,
            }
        } else if let Some(u) = unacked {
            // Delivered at QoS 0 from the QoS 1 queue: nothing will acknowledge it.
            self.settle(u);
        }
        self.write(&Packet::Publish(publish));
    }

    fn consume(&mut self, slot: usize, queue: Arc<Queue>) -> Result<(), pier_broker::BrokerError> {
        if self.consumers.get(slot).is_some_and(Option::is_some) {
            return Ok(());
        }
        let qos1 = slot == 1;
        let spec = pier_broker::ConsumerSpec {
            tag: ShortString::from(format!("mqtt-qos{slot}")),
            connection: self.id,
            ack_required: qos1,
            exclusive: false,
            prefetch: if qos1 { u32::from(self.prefetch) } else { 0 },
            priority: 0,
            arguments: FieldTable::new(),
            channel_credit: Arc::clone(&self.credit),
            sink: Arc::clone(&self.sink) as Arc<dyn DeliverySink>,
        };
        let id = queue.add_consumer(spec, || {})?;
        if let Some(s) = self.consumers.get_mut(slot) {
            *s = Some((queue, id));
        }
        Ok(())
    }

    /// The session's queue for `qos`, declared if missing. On a clustered node the durable
    /// QoS 1 queue is declared through the cluster's metadata (homed on this node), as an
    /// AMQP client's durable queue is.
    async fn ensure_queue(&mut self, qos: QoS) -> Result<Arc<Queue>, String> {
        let name = session::queue_name(&self.client_id, qos);
        if let Some(q) = self.vhost.find_queue(&name) {
            return Ok(q);
        }
        let mut arguments = FieldTable::new();
        let persistent = self.kind.persistent() && qos != QoS::AtMostOnce;
        if let (Some(secs), true) = (self.kind.expiry_secs, persistent) {
            arguments.insert("x-expires", FieldValue::LongLongInt(i64::from(secs) * 1000));
        }
        if let (Some(md), true) = (self.ctx.metadata.clone(), qos != QoS::AtMostOnce) {
            let me = md
                .cluster()
                .map(|c| c.node_name().to_owned())
                .unwrap_or_default();
            let cmd = MetadataCommand::DeclareQueue {
                vhost: self.vhost.name().to_owned(),
                name: name.clone(),
                durable: true,
                auto_delete: !persistent,
                arguments: metadata::arguments(&arguments).map_err(|e| e.to_string())?,
                home: me.clone(),
                members: vec![me],
                checked: true,
            };
            md.execute(cmd).await.map_err(|e| e.to_string())?;
            return self
                .vhost
                .find_queue(&name)
                .ok_or_else(|| format!("queue '{name}' is missing after its declaration"));
        }
        let declared = self
            .vhost
            .declare_queue(&QueueDeclare {
                name: ShortString::from(name),
                passive: false,
                // As RabbitMQ: the QoS 1 queue is durable, the QoS 0 one is not.
                durable: qos != QoS::AtMostOnce,
                exclusive: false,
                auto_delete: !persistent,
                arguments,
                connection: self.id,
            })
            .map_err(|e| e.to_string())?;
        Ok(declared.queue)
    }

    /// The cluster's metadata front when `queue`'s bindings to the exchange are the
    /// cluster's (a replicated queue and a durable exchange), as for AMQP.
    fn replicated(&self, queue: &str) -> Option<Metadata> {
        let md = self.ctx.metadata.as_ref()?;
        let exchange = &self.ctx.config.exchange;
        (self.vhost.is_durable_exchange(exchange)
            && self
                .vhost
                .find_queue(queue)
                .is_some_and(|q| self.vhost.is_replicated_queue(&q)))
        .then(|| md.clone())
    }

    /// Binds (or unbinds) `queue` to the exchange with `routing_key`.
    async fn binding(&self, queue: &str, routing_key: &str, bind: bool) -> Result<(), String> {
        let exchange = self.ctx.config.exchange.clone();
        if let Some(md) = self.replicated(queue) {
            let vhost = self.vhost.name().to_owned();
            let arguments = metadata::arguments(&FieldTable::new()).map_err(|e| e.to_string())?;
            let cmd = if bind {
                MetadataCommand::Bind {
                    vhost,
                    source: exchange,
                    destination: queue.to_owned(),
                    destination_kind: DestinationKind::Queue,
                    routing_key: routing_key.to_owned(),
                    arguments,
                    skip_missing: false,
                }
            } else {
                MetadataCommand::Unbind {
                    vhost,
                    source: exchange,
                    destination: queue.to_owned(),
                    destination_kind: DestinationKind::Queue,
                    routing_key: routing_key.to_owned(),
                    arguments,
                }
            };
            return md.execute(cmd).await.map(|_| ()).map_err(|e| e.to_string());
        }
        let key = ShortString::from(routing_key);
        let r = if bind {
            self.vhost
                .bind_queue(queue, &exchange, key, FieldTable::new(), self.id)
        } else {
            self.vhost
                .unbind_queue(queue, &exchange, key, FieldTable::new(), self.id)
        };
        r.map_err(|e| e.to_string())
    }

    /// Deletes one of the session's queues (through the cluster when it is the cluster's).
    async fn delete_queue(&self, name: &str) {
        if let Some(md) = self.replicated(name) {
            let cmd = MetadataCommand::DeleteQueue {
                vhost: self.vhost.name().to_owned(),
                name: name.to_owned(),
            };
            if let Err(e) = md.execute(cmd).await {
                tracing::warn!(peer = %self.peer, "MQTT: deleting {name} failed: {e}");
            }
            return;
        }
        let _ = self.vhost.delete_queue(name, false, false, self.id);
    }

    fn check_subscribe(&mut self, queue: &str, routing_key: &str) -> bool {
        let exchange = self.ctx.config.exchange.clone();
        let vhost = Arc::clone(&self.vhost);
        self.access
            .check(ObjectKind::Queue, queue, Access::Configure)
            .is_ok()
            && self
                .access
                .check(ObjectKind::Queue, queue, Access::Write)
                .is_ok()
            && self
                .access
                .check(ObjectKind::Exchange, &exchange, Access::Read)
                .is_ok()
            && self
                .access
                .check_topic(&exchange, routing_key, Access::Read, || {
                    vhost.is_topic_exchange(&exchange)
                })
                .is_ok()
            && self
                .access
                .check(ObjectKind::Queue, queue, Access::Read)
                .is_ok()
    }

    async fn subscribe(&mut self, s: Subscribe) {
        let v5 = is_v5(self.version);
        let failure = |rc: ReasonCode| if v5 { rc } else { ReasonCode::UnspecifiedError };
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        let mut retained = Vec::new();
        let identifier = s.properties.subscription_identifiers.first().copied();
        for sub in s.subscriptions {
            let filter = sub.filter;
            if topic::shared_subscription(&filter).is_some() {
                codes.push(failure(ReasonCode::SharedSubscriptionsNotSupported));
                continue;
            }
            if let Err(e) = topic::validate_topic_filter(&filter) {
                codes.push(failure(e.filter_reason_code()));
                continue;
            }
            let routing_key = topic::mqtt_to_amqp(&filter);
            if routing_key.len() > SHORTSTR_MAX {
                codes.push(failure(ReasonCode::TopicFilterInvalid));
                continue;
            }
            let qos = session::granted_qos(sub.options.qos);
            let slot = usize::from(qos == QoS::AtLeastOnce);
            let qname = session::queue_name(&self.client_id, qos);
            if !self.check_subscribe(&qname, &routing_key) {
                codes.push(failure(ReasonCode::NotAuthorized));
                continue;
            }
            let bound = match self.ensure_queue(qos).await {
                Ok(q) => match self.binding(&qname, &routing_key, true).await {
                    Ok(()) => self.consume(slot, q).map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = bound {
                tracing::warn!(peer = %self.peer, "MQTT subscribe to {filter} failed: {e}");
                codes.push(failure(ReasonCode::UnspecifiedError));
                continue;
            }
            // A filter moves between the QoS 0 and QoS 1 queues when resubscribed.
            let other = session::queue_name(
                &self.client_id,
                if slot == 1 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                },
            );
            if self.vhost.find_queue(&other).is_some() {
                let _ = self.binding(&other, &routing_key, false).await;
            }
            let existed = self
                .session
                .subscriptions
                .insert(
                    filter.clone(),
                    Sub {
                        options: sub.options,
                        identifier,
                    },
                )
                .is_some();
            let send_retained = match sub.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                for r in self.ctx.retained.matching(self.vhost.name(), &filter) {
                    retained.push((r, qos, identifier));
                }
            }
            codes.push(match qos {
                QoS::AtMostOnce => ReasonCode::Success,
                _ => ReasonCode::GrantedQos1,
            });
        }
        self.write(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
        for (r, sub_qos, identifier) in retained {
            let qos = session::delivery_qos(sub_qos, Some(r.qos as u8));
            let mut publish = Publish {
                dup: false,
                qos,
                retain: true,
                topic: r.topic,
                packet_id: 0,
                properties: Properties {
                    subscription_identifiers: if v5 {
                        identifier.into_iter().collect()
                    } else {
                        Vec::new()
                    },
                    ..Properties::default()
                },
                payload: r.payload,
            };
            if qos == QoS::AtLeastOnce {
                match self.session.send_qos1(None) {
                    Some(id) => publish.packet_id = id,
                    None => continue,
                }
            }
            self.write(&Packet::Publish(publish));
        }
    }

    async fn unsubscribe(&mut self, u: Unsubscribe) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in u.filters {
            let existed = self.session.subscriptions.remove(&filter).is_some();
            let routing_key = topic::mqtt_to_amqp(&filter);
            let mut unbound = false;
            if routing_key.len() <= SHORTSTR_MAX {
                for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                    let name = session::queue_name(&self.client_id, qos);
                    if self.vhost.find_queue(&name).is_some() {
                        unbound |= self.binding(&name, &routing_key, false).await.is_ok();
                    }
                }
            }
            codes.push(if existed || unbound {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.write(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            reason_codes: if is_v5(self.version) {
                codes
            } else {
                Vec::new()
            },
        }));
    }

    /// The connection is over: the will, consumers
    /// removed, in-flight deliveries requeued, a clean session's queues deleted.
    async fn teardown(&mut self, end: End) {
        let publish_will = match end {
            End::Disconnect { publish_will } => publish_will,
            End::Abnormal => true,
        };
        for slot in &mut self.consumers {
            if let Some((q, id)) = slot.take() {
                q.remove_consumer(id);
            }
        }
        // Deliveries still queued for this connection go back too.
        let mut back = self.session.take_in_flight();
        while let Ok(ev) = self.events.try_recv() {
            if let Event::Deliver(d) = ev {
                if d.ack_required {
                    back.push(Unacked {
                        tag: 0,
                        queue: Arc::clone(&d.queue),
                        consumer: d.consumer,
                        offset: d.offset,
                        delivered_at: 0,
                    });
                }
            }
        }
        // The session's connection went away: failed deliveries (RabbitMQ 4.3's count).
        requeue_all(back, true);
        let mut gone = vec![QoS::AtMostOnce];
        if !self.kind.persistent() {
            gone.push(QoS::AtLeastOnce);
        }
        for qos in gone {
            let name = session::queue_name(&self.client_id, qos);
            self.delete_queue(&name).await;
        }
        if let Some(will) = self.will.take().filter(|_| publish_will) {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            if delay > 0 && is_v5(self.version) {
                self.delayed_will(will, delay);
            } else {
                self.publish_will(&will).await;
            }
        }
        self.ctx.registry.deregister(self.id);
        self.ctx.release(&self.owned);
        tracing::info!(peer = %self.peer, client_id = %self.client_id, "MQTT connection closed");
    }

    fn will_message(&self, will: &Will) -> Option<Message> {
        topic::validate_topic_name(&will.topic).ok()?;
        let routing_key = topic::mqtt_to_amqp(&will.topic);
        (routing_key.len() <= SHORTSTR_MAX).then(|| {
            self.message(
                &routing_key,
                will.qos,
                false,
                &will.properties,
                will.payload.clone(),
            )
        })
    }

    async fn publish_will(&mut self, will: &Will) {
        let Some(message) = self.will_message(will) else {
            return;
        };
        let exchange = self.ctx.config.exchange.clone();
        let vhost = Arc::clone(&self.vhost);
        let allowed = self
            .access
            .check_publish(&ShortString::from(exchange.as_str()))
            .and_then(|()| {
                self.access
                    .check_topic(&exchange, &message.routing_key, Access::Write, || {
                        vhost.is_topic_exchange(&exchange)
                    })
            });
        if allowed.is_err() {
            return;
        }
        if will.retain {
            self.ctx
                .retained
                .set(
                    self.vhost.name(),
                    &will.topic,
                    will.qos,
                    will.payload.clone(),
                )
                .await;
        }
        if let Err(e) = self
            .vhost
            .publish(Arc::new(message), PublishOptions::client())
        {
            tracing::info!(peer = %self.peer, "MQTT will not published: {e}");
        }
    }

    /// 5.0 Will Delay Interval: published later unless the client id connects again.
    fn delayed_will(&mut self, will: Will, delay: u32) {
        let Some(message) = self.will_message(&will) else {
            return;
        };
        let key = (self.vhost.name().to_owned(), self.client_id.clone());
        let token = self.ctx.delay_will(key.clone());
        let ctx = Arc::clone(&self.ctx);
        let vhost = Arc::clone(&self.vhost);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                () = token.cancelled() => return,
                () = ctx.shutdown.cancelled() => return,
            }
            ctx.will_fired(&key, &token);
            if will.retain {
                ctx.retained
                    .set(vhost.name(), &will.topic, will.qos, will.payload.clone())
                    .await;
            }
            let _ = vhost.publish(Arc::new(message), PublishOptions::client());
        });
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Normally done by teardown; a cancelled task still lets its takeover go on.
        self.owned.done.cancel();
    }
}
