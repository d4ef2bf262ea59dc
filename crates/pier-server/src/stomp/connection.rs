//! One STOMP connection: reads and decodes frames, asks the [`Session`] what they mean, and
//! carries out its actions on the broker (declare, bind, consume, publish, settle); a writer
//! task drains the [`Outbox`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pier_broker::persist::PublishDurability;
use pier_broker::session::{self as unacked, Disposition};
use pier_broker::{
    Access, ChannelCredit, ConsumerId, ConsumerSpec, Durability, Message, ObjectKind,
    PublishOptions, Queue, QueueDeclare, User, VHost,
};
use pier_cluster::metadata::MetadataCommand;
use pier_stomp_wire::{parse_heart_beat, Decoder, Frame, Item, Limits};
use pier_wire::{FieldTable, FieldValue, LongString, ShortString};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::destinations::{subscription_queue_name, Destination};
use super::headers::properties_from_send;
use super::outbox::{Outbox, Sink, SubOut};
use super::session::{consumer_tag, AckMode, Action, Connect, Session, StompError, Subscription};
use super::StompContext;
use crate::amqp::access::AccessControl;
use crate::amqp::error::AmqpException;
use crate::registry::{self, ConnectionEntry};

/// A consumer a subscription holds.
struct Consumer {
    queue: Arc<Queue>,
    id: ConsumerId,
}

/// What a logged-in connection works with.
struct Open {
    vhost: Arc<VHost>,
    user: User,
    access: AccessControl,
    entry: Arc<ConnectionEntry>,
}

struct Conn {
    ctx: Arc<StompContext>,
    peer: SocketAddr,
    local: SocketAddr,
    /// The TLS session the connection runs over (`None`: plain TCP or WebSocket).
    tls: Option<crate::registry::TlsInfo>,
    id: pier_broker::ConnectionId,
    session: Session,
    outbox: Arc<Outbox>,
    open: Option<Open>,
    consumers: HashMap<String, Consumer>,
    /// `/temp-queue/<n>` → the exclusive queue made for it.
    temp_queues: HashMap<String, ShortString>,
    credit: Arc<ChannelCredit>,
    /// Persistent publishes in flight to the disk (credit.rs): reading stops above the mark.
    publish_credit: Arc<crate::credit::Credit>,
    /// The publish count when alarms were last looked at (a publishing connection is
    /// blocked while a resource alarm is set, as AMQP ones are).
    seen_publishes: u64,
    started: tokio::time::Instant,
}

/// Why the reader loop ended.
enum End {
    /// The client went away (EOF or a socket error).
    Gone,
    /// An ERROR was sent (or DISCONNECT answered): close after the writer drained.
    Close,
}

fn now_ms(start: tokio::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Serves one STOMP connection on `io` until it ends.
pub(crate) async fn run<S>(
    io: S,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<crate::registry::TlsInfo>,
    ctx: Arc<StompContext>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session_id = format!("session-{}", random_id());
    let outbox = Outbox::new(ctx.config.outbound_high_watermark, session_id.clone());
    let (mut rd, wr) = tokio::io::split(io);
    let mut conn = Conn {
        ctx: Arc::clone(&ctx),
        peer,
        local,
        tls,
        id: crate::amqp::connection::next_connection_id(),
        session: Session::new(session_id),
        outbox: Arc::clone(&outbox),
        open: None,
        consumers: HashMap::new(),
        temp_queues: HashMap::new(),
        credit: Arc::new(ChannelCredit::new()),
        publish_credit: Arc::new(crate::credit::Credit::default()),
        seen_publishes: 0,
        started: tokio::time::Instant::now(),
    };
    // The writer records when it last wrote (server heart-beats are due after silence), and
    // counts bytes into the registry entry once CONNECT has made one.
    let last_write = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let entry_cell = Arc::new(std::sync::OnceLock::<Arc<ConnectionEntry>>::new());
    let writer = {
        let (last_write, started) = (Arc::clone(&last_write), conn.started);
        let wr = LateCounting {
            inner: wr,
            entry: Arc::clone(&entry_cell),
        };
        let on_write = move || last_write.store(now_ms(started), Ordering::Relaxed);
        tokio::spawn(Arc::clone(&outbox).run_writer(wr, on_write))
    };
    let end = conn
        .serve(&mut rd, &shutdown, &last_write, &entry_cell)
        .await;
    conn.teardown();
    outbox.finish();
    match tokio::time::timeout(Duration::from_secs(3), writer).await {
        Ok(Ok(Err(e))) => tracing::debug!(%peer, "STOMP writer ended: {e}"),
        Ok(Err(e)) => tracing::error!(%peer, "STOMP writer task failed: {e}"),
        _ => {}
    }
    if matches!(end, End::Close) {
        // Give the client a moment to read the ERROR before the socket goes.
        let mut scratch = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_millis(100), rd.read(&mut scratch)).await;
    }
    tracing::info!(%peer, "STOMP connection closed");
}

/// Counts written bytes into the registry entry once the connection has one.
struct LateCounting<W> {
    inner: W,
    entry: Arc<std::sync::OnceLock<Arc<ConnectionEntry>>>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LateCounting<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (std::task::Poll::Ready(Ok(n)), Some(e)) = (&r, self.entry.get()) {
            e.counters.send_oct.fetch_add(*n as u64, Ordering::Relaxed);
            e.counters.send_cnt.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Conn {
    async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        shutdown: &CancellationToken,
        last_write: &std::sync::atomic::AtomicU64,
        entry_cell: &std::sync::OnceLock<Arc<ConnectionEntry>>,
    ) -> End {
        let limits = Limits {
            max_frame_size: self.ctx.config.max_frame_size,
            max_headers: self.ctx.config.max_headers,
            ..Limits::default()
        };
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let login_deadline = tokio::time::Instant::now() + self.ctx.config.handshake_timeout;
        let mut close_token: Option<CancellationToken> = None;
        loop {
            // Frames already buffered first.
            loop {
                match decoder.decode(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(Item::HeartBeat)) => {}
                    Ok(Some(Item::Frame(frame))) => {
                        if let Some(end) = self.on_frame(frame).await {
                            return end;
                        }
                        decoder.version = self.session.version;
                        if let (Some(open), None) = (&self.open, entry_cell.get()) {
                            let _ = entry_cell.set(Arc::clone(&open.entry));
                            close_token = Some(open.entry.close_token());
                        }
                    }
                    Err(e) => {
                        tracing::info!(peer = %self.peer, "STOMP frame refused: {e}");
                        self.outbox.send(&e.error_frame());
                        return End::Close;
                    }
                }
            }
            self.forget_cancelled();
            let now = now_ms(self.started);
            self.session.sent(last_write.load(Ordering::Relaxed));
            let tick = self.session.tick(now);
            if tick.client_silent {
                tracing::info!(peer = %self.peer, "STOMP client missed heart-beats; closing");
                return End::Gone;
            }
            if tick.send_heartbeat {
                self.outbox.send_heartbeat();
                self.session.sent(now);
                last_write.store(now, Ordering::Relaxed);
            }
            let wake = match self.session.next_deadline() {
                Some(d) => self.started + Duration::from_millis(d),
                None => tokio::time::Instant::now() + Duration::from_secs(3600),
            };
            let wake = if self.session.is_connected() {
                wake
            } else {
                wake.min(login_deadline)
            };
            if !self.session.is_connected() && tokio::time::Instant::now() >= login_deadline {
                return End::Gone;
            }
            let forced = async {
                match &close_token {
                    Some(t) => t.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            if let Some(end) = self.flow_control(shutdown).await {
                return end;
            }
            if self.outbox.is_full() {
                // The client reads slowly: stop reading until the writer caught up.
                tokio::select! {
                    () = self.outbox.drained.notified() => {}
                    () = tokio::time::sleep_until(wake) => {}
                    () = shutdown.cancelled() => return self.server_close("Server shutdown"),
                    () = forced => return self.server_close(crate::registry::MANAGEMENT_CLOSE_REASON),
                }
                continue;
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8 * 1024);
            }
            tokio::select! {
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return End::Gone,
                    Ok(n) => {
                        self.session.received(now_ms(self.started));
                        if let Some(open) = &self.open {
                            open.entry.count_read(n);
                        }
                    }
                },
                () = tokio::time::sleep_until(wake) => {}
                () = shutdown.cancelled() => return self.server_close("Server shutdown"),
                () = forced => return self.server_close(crate::registry::MANAGEMENT_CLOSE_REASON),
            }
        }
    }

    /// Stops reading a publisher while a resource alarm is set, or while its persistent
    /// publishes wait for the disk; `Some` when the server shut down meanwhile.
    async fn flow_control(&mut self, shutdown: &CancellationToken) -> Option<End> {
        let Some(open) = &self.open else { return None };
        let entry = Arc::clone(&open.entry);
        let published = entry.published();
        let new_publishes = published != self.seen_publishes;
        self.seen_publishes = published;
        if new_publishes && entry.alarms.state().any() {
            let mut alarms = entry.alarms.subscribe();
            tracing::warn!(peer = %self.peer, "STOMP connection blocked: {}", alarms.borrow().reason());
            entry.set_state(crate::registry::ConnectionState::Blocked);
            let stopped = tokio::select! {
                r = alarms.wait_for(|s| !s.any()) => r.is_err(),
                () = shutdown.cancelled() => true,
            };
            entry.set_state(crate::registry::ConnectionState::Running);
            if stopped {
                return Some(self.server_close("Server shutdown"));
            }
        }
        if self.publish_credit.exhausted() {
            entry.set_state(crate::registry::ConnectionState::Flow);
            let credit = Arc::clone(&self.publish_credit);
            let stopped = tokio::select! {
                () = credit.replenished() => false,
                () = shutdown.cancelled() => true,
            };
            entry.set_state(crate::registry::ConnectionState::Running);
            if stopped {
                return Some(self.server_close("Server shutdown"));
            }
        }
        None
    }

    fn server_close(&self, reason: &str) -> End {
        self.outbox
            .send(&StompError::fatal("Connection closed", format!("{reason}\n")).frame(None));
        End::Close
    }

    /// Handles one frame; `Some` ends the connection.
    async fn on_frame(&mut self, frame: Frame) -> Option<End> {
        let client_hb = frame
            .headers
            .get("heart-beat")
            .and_then(parse_heart_beat)
            .unwrap_or((0, 0));
        let step = match self.session.on_frame(frame) {
            Ok(s) => s,
            Err(e) => return self.error(e, None),
        };
        let mut receipt = step.receipt;
        let result = match step.action {
            Action::Connect(c) => self.connect(c, client_hb),
            Action::Disconnect => {
                self.wait_durable_receipts().await;
                if let Some(r) = receipt {
                    self.outbox.send(&Frame::receipt(r));
                }
                return Some(End::Close);
            }
            Action::Commit(frames) => {
                // RabbitMQ answers the COMMIT's receipt first, then those of its frames.
                let mut later = Vec::new();
                let mut r = Ok(false);
                for f in frames {
                    let frame_receipt = f.headers.get("receipt").map(str::to_owned);
                    match self.session.transactional(f) {
                        Ok(a) => {
                            r = self.act(a, None).await;
                            if r.is_err() {
                                break;
                            }
                            later.extend(frame_receipt);
                        }
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
                if r.is_ok() {
                    if let Some(rc) = receipt.take() {
                        self.outbox.send(&Frame::receipt(rc));
                    }
                    for rc in later {
                        self.outbox.send(&Frame::receipt(rc));
                    }
                }
                r.map(|_| false)
            }
            other => self.act(other, receipt.as_deref()).await,
        };
        match result {
            // The receipt was taken care of (a persistent SEND's waits for the disk).
            Ok(true) => None,
            Ok(false) => {
                if let Some(r) = receipt {
                    self.outbox.send(&Frame::receipt(r));
                }
                None
            }
            Err(e) => self.error(e, receipt.as_deref()),
        }
    }

    fn error(&mut self, e: StompError, receipt: Option<&str>) -> Option<End> {
        tracing::info!(peer = %self.peer, "STOMP error: {}: {}", e.message, e.detail.trim_end());
        self.outbox.send(&e.frame(receipt));
        e.fatal.then_some(End::Close)
    }

    /// Carries out an action; `Ok(true)` when the receipt was handled.
    async fn act(&mut self, action: Action, receipt: Option<&str>) -> Result<bool, StompError> {
        match action {
            Action::Send { destination, frame } => self.send(destination, frame, receipt).await,
            Action::Subscribe {
                subscription,
                destination,
                frame,
            } => {
                let id = subscription.id.clone();
                let r = self
                    .subscribe(subscription, destination, &frame, receipt)
                    .await;
                if r.is_err() {
                    self.session.subscribe_failed(&id);
                }
                // The receipt went out when the consumer was added, before any MESSAGE.
                r.map(|()| true)
            }
            Action::Unsubscribe {
                subscription,
                durable,
            } => {
                self.unsubscribe(&subscription, durable);
                Ok(false)
            }
            Action::Ack { tag, multiple } => self.settle(tag, multiple, Disposition::Ack),
            Action::Nack {
                tag,
                multiple,
                requeue,
            } => self.settle(
                tag,
                multiple,
                // RabbitMQ's STOMP NACK is a basic.nack: not a failed delivery.
                if requeue {
                    Disposition::Requeue { failed: false }
                } else {
                    Disposition::Reject
                },
            ),
            Action::Nothing | Action::Commit(_) | Action::Disconnect | Action::Connect(_) => {
                Ok(false)
            }
        }
    }

    fn open(&mut self) -> Result<&mut Open, StompError> {
        self.open.as_mut().ok_or_else(|| {
            StompError::fatal("Illegal command", "You must log in using CONNECT first")
        })
    }

    fn connect(&mut self, c: Connect, client_hb: (u32, u32)) -> Result<bool, StompError> {
        let config = &self.ctx.config;
        let (login, passcode) = match (&c.login, &config.default_user) {
            (Some(l), _) => (l.clone(), c.passcode.clone().unwrap_or_default()),
            (None, Some((u, p))) => (u.clone(), p.clone()),
            (None, None) => (String::new(), String::new()),
        };
        let broker = &self.ctx.broker;
        let user = broker
            .authenticate(&login, &passcode, self.peer.ip().is_loopback())
            .map_err(|e| {
                tracing::warn!(peer = %self.peer, "STOMP login refused: {e}");
                StompError::fatal(
                    "Bad CONNECT",
                    format!("Access refused for user '{login}'\n"),
                )
            })?;
        let vhost_name = c.host.clone().unwrap_or_else(|| "/".to_owned());
        let denied = || {
            StompError::fatal(
                "Bad CONNECT",
                format!("Virtual host '{vhost_name}' access denied"),
            )
        };
        let vhost = broker
            .open_vhost(&user.name, &vhost_name)
            .map_err(|_| denied())?;
        let slot = vhost
            .acquire_connection_slot(&user.name)
            .map_err(|_| denied())?;
        let access = AccessControl::new(
            Arc::clone(broker),
            &user.name,
            vhost.name(),
            self.peer,
            Some(slot),
        );
        self.session.connected(&c, client_hb, now_ms(self.started));
        self.outbox.lock().version = c.version;
        let mut client_properties = FieldTable::new();
        client_properties.insert(
            "product",
            FieldValue::LongString(LongString::from("STOMP client")),
        );
        let (hb_send, _) = self.session.heart_beats();
        let entry = self.ctx.registry.register(
            registry::ConnectionMeta {
                id: self.id,
                name: format!("{} -> {}", self.peer, self.local),
                peer: self.peer,
                local: self.local,
                user: user.name.clone(),
                vhost: vhost.name().to_owned(),
                client_properties,
                auth_mechanism: String::new(),
                connected_at_ms: registry::unix_ms(),
                frame_max: 0,
                channel_max: 0,
                heartbeat: u16::try_from(hb_send / 1000).unwrap_or(u16::MAX),
                protocol: format!("STOMP {}", c.version).into(),
                tls: self.tls.clone(),
            },
            registry_outbound(self.ctx.config.outbound_high_watermark),
            &CancellationToken::new(),
        );
        tracing::info!(peer = %self.peer, user = %user.name, vhost = %vhost.name(), version = %c.version, "STOMP connection opened");
        self.outbox.send(
            &Frame::new(pier_stomp_wire::Command::Connected)
                .header(
                    "server",
                    format!(
                        "{}/{}",
                        self.ctx.config.product, self.ctx.config.product_version
                    ),
                )
                .header("session", self.session.session_id.as_str())
                .header(
                    "heart-beat",
                    format!("{},{}", c.heart_beat.0, c.heart_beat.1),
                )
                .header("version", c.version.as_str()),
        );
        self.open = Some(Open {
            vhost,
            user,
            access,
            entry,
        });
        Ok(false)
    }

    async fn wait_durable_receipts(&self) {
        let wait = async {
            while self.outbox.durable_receipts.load(Ordering::Acquire) > 0 {
                let n = self.outbox.receipts_done.notified();
                if self.outbox.durable_receipts.load(Ordering::Acquire) == 0 {
                    break;
                }
                n.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }

    // ---- SEND ----

    async fn send(
        &mut self,
        destination: Destination,
        frame: Frame,
        receipt: Option<&str>,
    ) -> Result<bool, StompError> {
        if frame.body.len() as u64 > self.ctx.config.max_message_size {
            return Err(StompError::fatal(
                "precondition_failed",
                format!(
                    "PRECONDITION_FAILED - message size {} is larger than configured max size {}",
                    frame.body.len(),
                    self.ctx.config.max_message_size
                ),
            ));
        }
        if let Destination::Queue(q) = &destination {
            self.declare_queue(q, &frame.headers, true).await?;
        }
        // reply-to:/temp-queue/<n> names this session's reply queue (made on first use).
        let mut temp_reply = None;
        let mut props = properties_from_send(&frame.headers, |r| match Destination::parse(r) {
            Ok(Destination::TempQueue(n)) => {
                temp_reply = Some(n.clone());
                n
            }
            _ => r.to_owned(),
        })
        .map_err(|e| StompError::new("Invalid header", e.0))?;
        if let Some(n) = temp_reply {
            props.reply_to = Some(self.temp_queue(&n).await?);
        }
        // (SEND to /temp-queue/ itself is refused by the session, as RabbitMQ does.)
        let (exchange, key) = destination.publish_target();
        let key = key.to_owned();
        let exchange = exchange.to_owned();
        let open = self.open()?;
        if let Some(uid) = &props.user_id {
            if uid.as_str() != open.user.name {
                return Err(amqp_error(AmqpException::new(
                    pier_wire::reply_code::PRECONDITION_FAILED,
                    format!(
                        "user_id property set to '{uid}' but authenticated user was '{}'",
                        open.user.name
                    ),
                )));
            }
        }
        let exchange_ss = ShortString::truncated(&exchange);
        open.access
            .check_publish(&exchange_ss)
            .map_err(amqp_error)?;
        let vhost = Arc::clone(&open.vhost);
        open.access
            .check_topic(&exchange, &key, Access::Write, || {
                vhost.is_topic_exchange(&exchange)
            })
            .map_err(amqp_error)?;
        open.entry.count_publish();
        let message = Arc::new(Message::new(
            exchange_ss,
            ShortString::truncated(&key),
            props,
            frame.body.clone(),
        ));
        let durable_receipt = receipt.filter(|_| message.is_persistent());
        let size = message.body.len() as u64;
        let credit = Arc::clone(&self.publish_credit);
        let token = durable_receipt.map(|r| {
            let outbox = Arc::clone(&self.outbox);
            outbox.durable_receipts.fetch_add(1, Ordering::AcqRel);
            let r = r.to_owned();
            let held = credit.take(size);
            PublishDurability::new(move |_ok| {
                drop(held);
                outbox.send(&Frame::receipt(r));
                outbox.durable_receipts.fetch_sub(1, Ordering::AcqRel);
                outbox.receipts_done.notify_waiters();
            })
        });
        // Without a receipt to hold back, the connection's credit alone waits for the disk.
        let mut on_store = || {
            let held = credit.take(size);
            PublishDurability::new(move |_ok| drop(held))
        };
        let durability = match &token {
            Some(t) => Durability::Token(t),
            None => Durability::OnStore(&mut on_store),
        };
        let published = vhost.publish(
            message,
            PublishOptions {
                from_client: true,
                durability,
            },
        );
        if let Some(t) = &token {
            t.release();
        }
        published.map_err(|e| amqp_error(e.into()))?;
        Ok(token.is_some())
    }

    /// The session's exclusive queue for `/temp-queue/<n>`, made (and subscribed to) on
    /// first use.
    async fn temp_queue(&mut self, n: &str) -> Result<ShortString, StompError> {
        if let Some(q) = self.temp_queues.get(n) {
            return Ok(q.clone());
        }
        let connection = self.id;
        let open = self.open()?;
        let declared = open
            .vhost
            .declare_queue(&QueueDeclare {
                name: ShortString::default(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: true,
                arguments: FieldTable::new(),
                connection,
            })
            .map_err(|e| amqp_error(e.into()))?;
        let queue = declared.queue;
        let name = queue.name().clone();
        let destination = format!("/temp-queue/{n}");
        let sub = Subscription {
            id: destination.clone(),
            destination,
            ack: AckMode::Auto,
        };
        self.consume(&sub, queue, 0, None).await?;
        self.temp_queues.insert(n.to_owned(), name.clone());
        Ok(name)
    }

    // ---- SUBSCRIBE ----

    async fn subscribe(
        &mut self,
        sub: Subscription,
        destination: Destination,
        frame: &Frame,
        receipt: Option<&str>,
    ) -> Result<(), StompError> {
        let h = &frame.headers;
        let prefetch = h
            .get("prefetch-count")
            .and_then(|p| p.trim().parse::<u32>().ok())
            .unwrap_or(0);
        let durable_sub = ["durable", "persistent"]
            .iter()
            .any(|k| h.get(k) == Some("true"));
        let queue = match &destination {
            Destination::Queue(q) => self.declare_queue(q, h, true).await?,
            Destination::AmqQueue(q) => {
                let connection = self.id;
                let open = self.open()?;
                open.access
                    .check(ObjectKind::Queue, q, Access::Read)
                    .map_err(amqp_error)?;
                open.vhost
                    .queue(q, connection)
                    .map_err(|e| amqp_error(e.into()))?
            }
            Destination::Topic(_) | Destination::Exchange { .. } => {
                let (exchange, key) = destination.publish_target();
                let (exchange, key) = (exchange.to_owned(), key.to_owned());
                let name = match h.get("x-queue-name") {
                    Some(n) => n.to_owned(),
                    None if durable_sub => subscription_queue_name(&key, &sub.id),
                    None => subscription_queue_name(&key, &random_id()),
                };
                // As RabbitMQ 3.10 declares them: auto-delete unless `auto-delete:false`
                // (a durable subscription that outlives its connection needs that), and
                // not exclusive.
                let auto_delete = h.get("auto-delete") != Some("false");
                let queue = self
                    .declare_named(&name, h, durable_sub, false, auto_delete)
                    .await?;
                self.bind(&queue, &exchange, &key).await?;
                queue
            }
            Destination::TempQueue(_) | Destination::ReplyQueue(_) => {
                return Err(StompError::new(
                    "Invalid destination",
                    format!(
                        "'{}' is not a valid destination for 'SUBSCRIBE'\n",
                        sub.destination
                    ),
                ))
            }
        };
        {
            let open = self.open()?;
            open.access
                .check(ObjectKind::Queue, queue.name(), Access::Read)
                .map_err(amqp_error)?;
        }
        self.consume(&sub, queue, prefetch, receipt).await
    }

    async fn consume(
        &mut self,
        sub: &Subscription,
        queue: Arc<Queue>,
        prefetch: u32,
        receipt: Option<&str>,
    ) -> Result<(), StompError> {
        let tag = ShortString::truncated(&consumer_tag(&sub.id));
        self.outbox.lock().subs.insert(
            tag.clone(),
            SubOut {
                id: sub.id.clone(),
                ack_header: self.session.version == pier_stomp_wire::Version::V1_2
                    && sub.ack != AckMode::Auto,
            },
        );
        let spec = ConsumerSpec {
            tag: tag.clone(),
            connection: self.id,
            ack_required: sub.ack != AckMode::Auto,
            exclusive: false,
            prefetch,
            priority: 0,
            arguments: FieldTable::new(),
            channel_credit: Arc::clone(&self.credit),
            sink: Arc::new(Sink(Arc::clone(&self.outbox))) as Arc<dyn pier_broker::DeliverySink>,
        };
        if queue.is_remote() {
            // Homed on another node: registered there first, then deliveries may flow.
            let Some((id, registered)) = queue.consume_remote(spec) else {
                return Err(StompError::fatal(
                    "internal_error",
                    "INTERNAL_ERROR - not a remote queue",
                ));
            };
            if let Err(e) = registered.await {
                self.outbox.lock().subs.remove(&tag);
                let _ = queue.remove_consumer(id);
                return Err(amqp_error(e.into()));
            }
            if let Some(r) = receipt {
                self.outbox.send(&Frame::receipt(r));
            }
            queue.activate_remote(id);
            self.consumers
                .insert(sub.id.clone(), Consumer { queue, id });
            return Ok(());
        }
        let (outbox, receipt) = (Arc::clone(&self.outbox), receipt.map(str::to_owned));
        let on_added = move || {
            // Under the queue lock, before any delivery: the receipt comes first.
            if let Some(r) = receipt {
                outbox.send(&Frame::receipt(r));
            }
        };
        match queue.add_consumer(spec, on_added) {
            Ok(id) => {
                self.consumers
                    .insert(sub.id.clone(), Consumer { queue, id });
                Ok(())
            }
            Err(e) => {
                self.outbox.lock().subs.remove(&tag);
                Err(amqp_error(e.into()))
            }
        }
    }

    /// `/queue/<q>`: a durable, shared queue, declared (with the frame's `x-` arguments).
    async fn declare_queue(
        &mut self,
        q: &str,
        headers: &pier_stomp_wire::Headers,
        durable: bool,
    ) -> Result<Arc<Queue>, StompError> {
        let auto_delete = headers.get("auto-delete") == Some("true");
        self.declare_named(q, headers, durable, false, auto_delete)
            .await
    }

    async fn declare_named(
        &mut self,
        name: &str,
        headers: &pier_stomp_wire::Headers,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
    ) -> Result<Arc<Queue>, StompError> {
        let connection = self.id;
        let arguments = queue_arguments(headers);
        let metadata = self.ctx.metadata.clone();
        let open = self.open()?;
        if let Some(q) = open.vhost.find_queue(name) {
            // Existing: RabbitMQ re-declares (equivalence checks); a plain lookup keeps
            // the common case cheap and works for queues homed on other nodes.
            open.access
                .check(ObjectKind::Queue, name, Access::Configure)
                .map_err(amqp_error)?;
            return Ok(q);
        }
        if let Some(md) = metadata.filter(|_| durable && !exclusive) {
            pier_broker::names::check_not_reserved(ObjectKind::Queue, name)
                .map_err(|e| amqp_error(e.into()))?;
            open.access
                .check(ObjectKind::Queue, name, Access::Configure)
                .map_err(amqp_error)?;
            let me = md
                .cluster()
                .map(|c| c.node_name().to_owned())
                .unwrap_or_default();
            let cmd = MetadataCommand::DeclareQueue {
                vhost: open.vhost.name().to_owned(),
                name: name.to_owned(),
                durable,
                auto_delete,
                arguments: pier_cluster::metadata::arguments(&arguments).map_err(|e| {
                    StompError::fatal("precondition_failed", format!("PRECONDITION_FAILED - {e}"))
                })?,
                home: me.clone(),
                members: vec![me],
                checked: true,
            };
            let vhost = Arc::clone(&open.vhost);
            return match md.execute(cmd).await {
                Ok(_) => vhost
                    .queue(name, connection)
                    .map_err(|e| amqp_error(e.into())),
                Err(e) => Err(StompError::fatal(
                    "internal_error",
                    format!("INTERNAL_ERROR - {e}"),
                )),
            };
        }
        open.access.refresh();
        let access = &open.access;
        #[allow(clippy::result_large_err)]
        let mut authorize = |kind, n: &str, a| access.check_current(kind, n, a);
        let declared = open
            .vhost
            .declare_queue_checked(
                &QueueDeclare {
                    name: ShortString::truncated(name),
                    passive: false,
                    durable,
                    exclusive,
                    auto_delete,
                    arguments,
                    connection,
                },
                &mut authorize,
            )
            .map_err(|e| amqp_error(e.into()))?;
        Ok(declared.queue)
    }

    async fn bind(
        &mut self,
        queue: &Arc<Queue>,
        exchange: &str,
        key: &str,
    ) -> Result<(), StompError> {
        let connection = self.id;
        let metadata = self.ctx.metadata.clone();
        let open = self.open()?;
        open.access
            .check(ObjectKind::Queue, queue.name(), Access::Write)
            .map_err(amqp_error)?;
        open.access
            .check(ObjectKind::Exchange, exchange, Access::Read)
            .map_err(amqp_error)?;
        let vhost = Arc::clone(&open.vhost);
        open.access
            .check_topic(exchange, key, Access::Read, || {
                vhost.is_topic_exchange(exchange)
            })
            .map_err(amqp_error)?;
        let replicated = !exchange.is_empty()
            && vhost.is_durable_exchange(exchange)
            && vhost.is_replicated_queue(queue);
        if let Some(md) = metadata.filter(|_| replicated) {
            let cmd = MetadataCommand::Bind {
                vhost: vhost.name().to_owned(),
                source: exchange.to_owned(),
                destination_kind: pier_cluster::metadata::DestinationKind::Queue,
                destination: queue.name().to_string(),
                routing_key: key.to_owned(),
                arguments: pier_cluster::metadata::arguments(&FieldTable::new())
                    .unwrap_or_default(),
                skip_missing: false,
            };
            return md
                .execute(cmd)
                .await
                .map(|_| ())
                .map_err(|e| StompError::fatal("internal_error", format!("INTERNAL_ERROR - {e}")));
        }
        vhost
            .bind_queue(
                queue.name(),
                exchange,
                ShortString::truncated(key),
                FieldTable::new(),
                connection,
            )
            .map_err(|e| amqp_error(e.into()))
    }

    // ---- UNSUBSCRIBE, ACK, NACK ----

    fn unsubscribe(&mut self, sub: &Subscription, durable: bool) {
        let Some(c) = self.consumers.remove(&sub.id) else {
            return;
        };
        let removed = c.queue.remove_consumer(c.id);
        self.outbox
            .lock()
            .subs
            .remove(&ShortString::truncated(&consumer_tag(&sub.id)));
        let Some(open) = &self.open else { return };
        if durable {
            // UNSUBSCRIBE with durable:true ends a durable subscription: its queue goes.
            let _ = open
                .vhost
                .delete_queue(c.queue.name(), false, false, self.id);
        } else if removed.auto_delete_now {
            open.vhost.auto_delete_queue(&c.queue);
        }
    }

    fn settle(&mut self, tag: u64, multiple: bool, how: Disposition) -> Result<bool, StompError> {
        let taken = self.outbox.lock().unacked.take(tag, multiple);
        let Some(taken) = taken else {
            // RabbitMQ's channel would close with "unknown delivery tag": STOMP reports it.
            return Err(StompError::fatal(
                "precondition_failed",
                format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
            ));
        };
        let n = unacked::consumer_deliveries(&taken);
        if n > 0 && self.credit.release(n) {
            self.consumers.values().for_each(|c| c.queue.dispatch());
        }
        match how {
            Disposition::Requeue { failed } => unacked::requeue_all(taken, failed),
            other => unacked::dispose(&taken, other),
        }
        Ok(false)
    }

    fn forget_cancelled(&mut self) {
        let cancelled = std::mem::take(&mut self.outbox.lock().cancelled);
        for tag in cancelled {
            let id = tag.as_str().strip_prefix("T_").unwrap_or(tag.as_str());
            self.consumers.remove(id);
        }
    }

    /// The connection ends: consumers go, unsettled deliveries are requeued, exclusive
    /// queues deleted, the registry entry removed.
    fn teardown(&mut self) {
        for (_, c) in self.consumers.drain() {
            let removed = c.queue.remove_consumer(c.id);
            if removed.auto_delete_now {
                if let Some(open) = &self.open {
                    open.vhost.auto_delete_queue(&c.queue);
                }
            }
        }
        let taken = self.outbox.lock().unacked.take_all();
        unacked::requeue_all(taken, true);
        if let Some(open) = &self.open {
            open.vhost.connection_closed(self.id);
            self.ctx.registry.deregister(self.id);
        }
    }
}

/// What the registry reads a connection's channels from: RabbitMQ's STOMP connection has
/// one channel (`channels: 1` in `/api/connections`).
fn registry_outbound(high_watermark: usize) -> Arc<crate::amqp::outbound::Outbound> {
    let o = crate::amqp::outbound::Outbound::new(high_watermark, 0);
    o.open_channel(1);
    o
}

/// The queue arguments a SUBSCRIBE (or a SEND to `/queue/`) asks for: RabbitMQ's list of
/// `x-` headers, typed as it types them.
fn queue_arguments(h: &pier_stomp_wire::Headers) -> FieldTable {
    const INTEGERS: &[&str] = &[
        "x-max-length",
        "x-max-length-bytes",
        "x-message-ttl",
        "x-expires",
        "x-max-priority",
        "x-delivery-limit",
        "x-initial-cluster-size",
        "x-max-age-bytes",
        "x-stream-max-segment-size-bytes",
    ];
    const STRINGS: &[&str] = &[
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-queue-type",
        "x-overflow",
        "x-queue-mode",
        "x-queue-master-locator",
        "x-max-age",
        "x-dead-letter-strategy",
    ];
    let mut t = FieldTable::new();
    for (k, v) in h.iter() {
        if t.contains_key(k) {
            continue;
        }
        if INTEGERS.contains(&k) {
            if let Ok(n) = v.trim().parse::<i64>() {
                t.insert(k, FieldValue::LongLongInt(n));
            }
        } else if STRINGS.contains(&k) {
            t.insert(k, FieldValue::LongString(LongString::from(v)));
        } else if k == "x-single-active-consumer" {
            t.insert(k, FieldValue::Bool(v == "true"));
        }
    }
    t
}

/// An AMQP channel error as the STOMP ERROR RabbitMQ sends for it (the connection closes,
/// as its channel did): `message` is the code's name in lower case, the body the reply text.
fn amqp_error(e: AmqpException) -> StompError {
    let name = pier_wire::reply_code::name(e.code).to_ascii_lowercase();
    StompError::fatal(name, e.text)
}
