//! One stream-protocol connection: the reader task (handshake, then commands), its writer
//! task, and a task per subscription.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pier_broker::{Access, ConnectionSlot, ObjectKind, VHost};
use pier_store::stream::{AppendMessage, StartAt, Stream, StreamError};
use pier_stream_wire::chunk::CHUNK_HEADER_SIZE;
use pier_stream_wire::frame::DEFAULT_INITIAL_FRAME_MAX;
use pier_stream_wire::{
    BloomMatcher, ChunkHeader, ClientCommand, CommandVersion, ConsumerUpdate, Deliver,
    MetadataResponse, MetadataUpdate, OffsetSpec, OpenResponse, PeerPropertiesResponse,
    PublishConfirm, PublishError, PublishingError, QueryOffsetResponse,
    QueryPublisherSequenceResponse, ResolveOffsetSpecResponse, Response, ResponseCode,
    SaslAuthenticateResponse, SaslHandshakeResponse, ServerCommand, StreamMetadata,
    StreamStatsResponse, StreamsResponse, Tune,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::sac::{GroupKey, SacEvent};
use super::stats::{ConsumerStats, PublisherStats, StreamConnectionEntry, StreamCounters};
use super::{superstream, Server};

/// Frames queued for the writer before senders wait.
const OUT_CHANNEL: usize = 256;
/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn encode(cmd: &ServerCommand) -> Bytes {
    let mut b = BytesMut::new();
    match cmd.encode(&mut b) {
        Ok(()) => b.freeze(),
        Err(e) => {
            tracing::error!("stream: encoding {cmd:?}: {e}");
            Bytes::new()
        }
    }
}

/// A frame for the connection's writer: one buffer, or a head and a body written as they
/// are (a `Deliver` sends the chunk the stream holds instead of a copy of it).
struct Out {
    head: Bytes,
    body: Bytes,
}

impl From<Bytes> for Out {
    fn from(head: Bytes) -> Out {
        Out {
            head,
            body: Bytes::new(),
        }
    }
}

fn ok(correlation_id: u32) -> Response {
    Response {
        correlation_id,
        code: ResponseCode::Ok,
    }
}

fn response(correlation_id: u32, code: ResponseCode) -> Response {
    Response {
        correlation_id,
        code,
    }
}

/// What the writer sends besides queued frames: confirms and errors collected from stream
/// writer threads (bounded by `max_unconfirmed`).
#[derive(Default)]
struct Pending {
    confirms: Vec<(u8, Vec<u64>)>,
    errors: Vec<(u8, Vec<u64>, ResponseCode)>,
}

struct ConnShared {
    pending: Mutex<Pending>,
    writer_wake: Notify,
    unconfirmed: AtomicUsize,
    reader_wake: Notify,
}

impl ConnShared {
    fn settled(&self, n: usize) {
        self.unconfirmed.fetch_sub(n, Ordering::AcqRel);
        self.writer_wake.notify_one();
        self.reader_wake.notify_one();
    }
}

struct Publisher {
    stream_name: String,
    stream: Arc<Stream>,
    reference: Option<String>,
    stats: Arc<PublisherStats>,
}

/// The part of a subscription its task and the reader share.
struct SubShared {
    /// Credit, activity and figures (management reads them too).
    stats: Arc<ConsumerStats>,
    wake: Notify,
    /// Where to (re)start reading, set by a `ConsumerUpdate` answer.
    restart: Mutex<Option<StartAt>>,
}

struct Subscription {
    stream_name: String,
    shared: Arc<SubShared>,
    cancel: CancellationToken,
    sac: Option<GroupKey>,
    /// The offset spec it subscribed with (the default answer to ConsumerUpdate).
    offset: OffsetSpec,
}

struct Session {
    server: Arc<Server>,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    vhost: Option<Arc<VHost>>,
    user: Option<String>,
    _slot: Option<ConnectionSlot>,
    frame_max: u32,
    out: mpsc::Sender<Out>,
    shared: Arc<ConnShared>,
    publishers: HashMap<u8, Publisher>,
    subscriptions: HashMap<u8, Subscription>,
    deliver_v2: bool,
    sac_events: mpsc::Sender<SacEvent>,
    /// ConsumerUpdate requests sent: correlation id → (subscription, whether it activated).
    updates: HashMap<u32, (u8, bool)>,
    next_correlation: u32,
    cert_user: Option<String>,
    /// The TLS session the connection runs over (`None`: plain TCP).
    tls: Option<crate::registry::TlsInfo>,
    heartbeat: u32,
    closing: bool,
    /// The client's peer properties and SASL mechanism (for management).
    client_properties: Vec<(String, String)>,
    auth_mechanism: String,
    counters: Arc<StreamCounters>,
    /// This connection in the registry, once opened.
    entry: Option<Arc<StreamConnectionEntry>>,
    /// The streams this connection's publishers write to, each with the listener that
    /// reports its deletion on `deleted` (RabbitMQ's reader monitors them: a deleted stream
    /// gets a `MetadataUpdate` and its publishers are gone, without waiting for a publish).
    watched: HashMap<String, (Arc<Stream>, u64)>,
    deleted: mpsc::Sender<String>,
}

/// The name a stream or super stream is created under, as RabbitMQ's
/// `rabbit_stream_utils:enforce_correct_name`: CR and LF removed, then empty and `amq.*`
/// names refused (precondition failed).
fn enforce_correct_name(name: &mut String) -> Result<(), ResponseCode> {
    name.retain(|c| c != '\r' && c != '\n');
    if name.is_empty() || name.starts_with("amq.") {
        return Err(ResponseCode::PreconditionFailed);
    }
    Ok(())
}

/// Before a reader attaches at the end of the log (`next`, `last`, a timestamp), what the
/// writer has already accepted is written: RabbitMQ's writer appends a publish as soon as it
/// has it (without an fsync), so a subscription that follows a publish finds it in the log;
/// here it could still wait for its fsync and then reach a `next` reader that should have
/// skipped it (rstream's own `test_offset_type_next`). Costs the subscription at most one
/// write and fsync of the writer's queue.
async fn settle_before(stream: &Arc<Stream>, at: StartAt) {
    if matches!(at, StartAt::First | StartAt::Offset(_)) {
        return;
    }
    let stream = Arc::clone(stream);
    // A stopped writer fails the reader that follows; nothing to report here.
    let _ = tokio::task::spawn_blocking(move || stream.flush()).await;
}

/// See `Session::inbound_limit`.
const INBOUND_FRAME_CEILING: u32 = 64 << 20;
/// See `Session::publish`.
const APPEND_MAX_MESSAGES: usize = 16_384;

fn to_start(o: OffsetSpec) -> StartAt {
    match o {
        OffsetSpec::First => StartAt::First,
        OffsetSpec::Last => StartAt::Last,
        OffsetSpec::Next => StartAt::Next,
        OffsetSpec::Offset(n) => StartAt::Offset(n),
        OffsetSpec::Timestamp(t) => StartAt::Timestamp(t),
    }
}

/// Runs a connection to its end.
pub(crate) async fn run<S>(
    server: Arc<Server>,
    socket: S,
    peer: SocketAddr,
    local: SocketAddr,
    cert_user: Option<String>,
    tls: Option<crate::registry::TlsInfo>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(socket);
    let (out, out_rx) = mpsc::channel::<Out>(OUT_CHANNEL);
    let (sac_tx, mut sac_rx) = mpsc::channel::<SacEvent>(64);
    let (deleted_tx, mut deleted_rx) = mpsc::channel::<String>(64);
    let shared = Arc::new(ConnShared {
        pending: Mutex::new(Pending::default()),
        writer_wake: Notify::new(),
        unconfirmed: AtomicUsize::new(0),
        reader_wake: Notify::new(),
    });
    let stop = shutdown.child_token();
    let heartbeat = Arc::new(AtomicU32::new(0));
    let counters = Arc::new(StreamCounters::default());
    let writer = tokio::spawn(write_loop(
        wr,
        out_rx,
        Arc::clone(&shared),
        Arc::clone(&counters),
        Arc::clone(&heartbeat),
        stop.clone(),
    ));
    let mut s = Session {
        id: crate::amqp::connection::next_connection_id(),
        server,
        peer,
        local,
        vhost: None,
        user: None,
        _slot: None,
        frame_max: DEFAULT_INITIAL_FRAME_MAX,
        out,
        shared,
        publishers: HashMap::new(),
        subscriptions: HashMap::new(),
        deliver_v2: false,
        sac_events: sac_tx,
        updates: HashMap::new(),
        next_correlation: 1,
        cert_user,
        tls,
        heartbeat: 0,
        closing: false,
        client_properties: Vec::new(),
        auth_mechanism: String::new(),
        counters,
        entry: None,
        watched: HashMap::new(),
        deleted: deleted_tx,
    };
    // Cancelled by management (DELETE /api/connections/{name}) once registered.
    let mut mgmt_close = CancellationToken::new();
    let mut read_size = crate::read_size::ReadSize::new(64 * 1024, 1024 * 1024);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let started = tokio::time::Instant::now();
    loop {
        // Too many publishes waiting for their confirm: stop reading until half are confirmed.
        while s.shared.unconfirmed.load(Ordering::Acquire) > s.server.config.max_unconfirmed {
            tokio::select! {
                () = s.shared.reader_wake.notified() => {}
                () = stop.cancelled() => break,
            }
        }
        let hb = s.heartbeat;
        let idle = if s.vhost.is_none() {
            HANDSHAKE_TIMEOUT.saturating_sub(started.elapsed())
        } else if hb > 0 {
            Duration::from_secs(u64::from(hb) * 2)
        } else {
            Duration::from_secs(24 * 3600)
        };
        if let Some(e) = &s.entry {
            if !mgmt_close.is_cancelled() && mgmt_close != e.close {
                mgmt_close = e.close.clone();
            }
        }
        // Publishes are slices of this buffer until the stream's writer has copied them, so
        // a full buffer is not reused: the next one gets a copy of the frame begun at its
        // end. Busy publishers' buffers grow to 1 MiB, so that this copy is a small part of
        // what is read (at 64 KiB, with 100 KiB publish frames, most of each frame was
        // copied: 4% of the broker's CPU in S1K). Reads shrink back to 64 KiB when little
        // comes; a buffer grown to 1 MiB stays until it is next replaced.
        let room = read_size.reserve(&mut buf);
        let n = tokio::select! {
            r = tokio::time::timeout(idle, rd.read_buf(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    read_size.read(n, room);
                    n
                }
                Err(_) => {
                    tracing::info!(peer = %s.peer, "stream connection: missed heartbeats or handshake timed out");
                    break;
                }
            },
            ev = sac_rx.recv() => {
                if let Some(ev) = ev {
                    s.sac_event(ev).await;
                }
                continue;
            }
            name = deleted_rx.recv() => {
                if let Some(name) = name {
                    s.stream_deleted(name).await;
                }
                continue;
            }
            () = stop.cancelled() => break,
            () = mgmt_close.cancelled() => {
                let reason = s
                    .entry
                    .as_ref()
                    .and_then(|e| e.close_reason())
                    .unwrap_or_else(|| crate::registry::MANAGEMENT_CLOSE_REASON.to_owned());
                // RabbitMQ's stream reader stops and closes the socket, with no Close frame
                // (its own JavaScript client fails on a Close the server initiates).
                tracing::info!(peer = %s.peer, "stream connection closed by management: {reason}");
                break;
            }
        };
        s.counters.count_read(n);
        loop {
            match ClientCommand::decode_from(&mut buf, s.inbound_limit()) {
                Ok(Some(cmd)) => {
                    if !s.handle(cmd).await {
                        s.closing = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(peer = %s.peer, "stream connection: {e}");
                    if s.vhost.is_some() {
                        let _ = s.out.send(encode(&e.close_command()).into()).await;
                    }
                    s.closing = true;
                    break;
                }
            }
        }
        heartbeat.store(s.heartbeat, Ordering::Release);
        if s.closing {
            break;
        }
    }
    s.teardown();
    if let Some(e) = &s.entry {
        s.server.registry.deregister_stream(e.meta.id);
    }
    drop(s);
    // The writer drains what was queued (a Close or its response) and stops.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    stop.cancel();
}

async fn write_loop<W: AsyncWrite>(
    wr: W,
    mut rx: mpsc::Receiver<Out>,
    shared: Arc<ConnShared>,
    counters: Arc<StreamCounters>,
    heartbeat: Arc<AtomicU32>,
    stop: CancellationToken,
) {
    let mut wr = std::pin::pin!(wr);
    let mut buf = BytesMut::with_capacity(128 * 1024);
    let heartbeat_frame = encode(&ServerCommand::Heartbeat);
    let mut last_write = tokio::time::Instant::now();
    loop {
        let hb = heartbeat.load(Ordering::Acquire);
        let hb_at = last_write + Duration::from_secs(u64::from(hb.max(1)));
        let mut closed = false;
        tokio::select! {
            biased;
            f = rx.recv() => match f {
                Some(f) => {
                    let mut f = Some(f);
                    while let Some(Out { head, body }) = f.take() {
                        // Small buffers are gathered; a large one (a frame, or a Deliver's
                        // chunk after its head) goes from where it is, after them.
                        let last = if body.is_empty() {
                            head
                        } else {
                            buf.extend_from_slice(&head);
                            body
                        };
                        if last.len() > 64 * 1024 {
                            if !buf.is_empty() {
                                if wr.write_all(&buf).await.is_err() { return; }
                                counters.count_write(buf.len());
                            }
                            buf.clear();
                            if wr.write_all(&last).await.is_err() { return; }
                            counters.count_write(last.len());
                        } else {
                            buf.extend_from_slice(&last);
                        }
                        if buf.len() < 256 * 1024 {
                            f = rx.try_recv().ok();
                        }
                    }
                }
                None => closed = true,
            },
            () = shared.writer_wake.notified() => {}
            () = tokio::time::sleep_until(hb_at), if hb > 0 => buf.extend_from_slice(&heartbeat_frame),
            () = stop.cancelled() => return,
        }
        let pending =
            std::mem::take(&mut *shared.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (publisher_id, publishing_ids) in pending.confirms {
            let n = publishing_ids.len();
            buf.extend_from_slice(&encode(&ServerCommand::PublishConfirm(PublishConfirm {
                publisher_id,
                publishing_ids,
            })));
            shared.settled(n);
        }
        for (publisher_id, ids, code) in pending.errors {
            let n = ids.len();
            buf.extend_from_slice(&encode(&ServerCommand::PublishError(PublishError {
                publisher_id,
                errors: ids
                    .into_iter()
                    .map(|publishing_id| PublishingError {
                        publishing_id,
                        code,
                    })
                    .collect(),
            })));
            shared.settled(n);
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            counters.count_write(buf.len());
            buf.clear();
            last_write = tokio::time::Instant::now();
        }
        if closed {
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
            return;
        }
    }
}

impl Session {
    async fn send(&self, cmd: ServerCommand) {
        let _ = self.out.send(encode(&cmd).into()).await;
    }

    fn vhost(&self) -> Option<&Arc<VHost>> {
        self.vhost.as_ref()
    }

    /// RabbitMQ's permission check (the same regular expressions for queues and exchanges).
    fn allowed(&self, _kind: ObjectKind, name: &str, access: Access) -> bool {
        let (Some(user), Some(vh)) = (&self.user, &self.vhost) else {
            return false;
        };
        let (_, p) = self.server.broker.compiled_permission(user, vh.name());
        p.is_some_and(|p| p.allows(access, name))
    }

    /// The largest frame read from the client. Before the connection is open: the negotiated
    /// `frame_max` (8 KiB until `Tune`). After: at least `INBOUND_FRAME_CEILING`, for
    /// RabbitMQ up to 4.2 reads frames of any size from an authenticated client, and clients
    /// rely on it (rstream before 0.21 sends a producer's whole buffer as one `Publish`,
    /// megabytes past the 1 MiB it negotiated; Pier closed those connections with
    /// FRAME_TOO_LARGE and the client's own `test_publishing_several_messages` failed).
    /// Bounded all the same: one connection holds at most one such frame.
    fn inbound_limit(&self) -> u32 {
        if self.vhost.is_some() {
            self.frame_max.max(INBOUND_FRAME_CEILING)
        } else {
            self.frame_max
        }
    }

    fn stream(&self, name: &str) -> Option<Arc<Stream>> {
        self.vhost()?
            .find_queue(name)
            .and_then(|q| q.stream().cloned())
    }

    /// This node's cluster membership, when it is clustered.
    fn cluster(&self) -> Option<&pier_cluster::ClusterHandle> {
        self.server.metadata.as_ref()?.cluster()
    }

    /// Stream `name` to read: led here, or this node's replica of it (RabbitMQ's clients
    /// read from replicas when `Metadata` names some).
    fn readable(&self, name: &str) -> Option<Arc<Stream>> {
        self.stream(name)
            .or_else(|| self.cluster()?.stream_replica(self.vhost()?.name(), name))
    }

    /// Why stream `name` cannot be used on this connection: it is hosted by another node of
    /// the cluster (`Metadata` names it: clients connect there), or there is no such stream.
    fn missing(&self, name: &str) -> ResponseCode {
        match self.stream_home(name) {
            Some(_) => ResponseCode::StreamNotAvailable,
            None => ResponseCode::StreamDoesNotExist,
        }
    }

    /// Whether a stream `name` exists, here or on another node of the cluster.
    fn is_stream(&self, name: &str) -> bool {
        self.vhost()
            .and_then(|vh| vh.find_queue(name))
            .is_some_and(|q| q.kind() == pier_broker::queue::QueueType::Stream)
    }

    /// The node hosting stream `name` when it is another one (`Some("")` when the cluster
    /// has not told which).
    fn stream_home(&self, name: &str) -> Option<String> {
        let q = self.vhost()?.find_queue(name)?;
        (q.kind() == pier_broker::queue::QueueType::Stream && q.stream().is_none())
            .then(|| q.home_node().unwrap_or_default().to_owned())
    }

    /// Handles one command; false: close the connection.
    async fn handle(&mut self, cmd: ClientCommand) -> bool {
        let authenticated = self.vhost.is_some();
        match cmd {
            ClientCommand::PeerProperties(p) => {
                self.client_properties = p.properties.clone();
                let c = &self.server.config;
                let properties = vec![
                    ("product".to_owned(), c.product.clone()),
                    ("version".to_owned(), c.advertised_version.clone()),
                    ("cluster_name".to_owned(), c.cluster_name.clone()),
                    (
                        "platform".to_owned(),
                        format!("Pier {}", env!("CARGO_PKG_VERSION")),
                    ),
                    ("copyright".to_owned(), "Pier contributors".to_owned()),
                    (
                        "information".to_owned(),
                        "Licensed under the Apache 2.0 license".to_owned(),
                    ),
                ];
                self.send(ServerCommand::PeerPropertiesResponse(
                    PeerPropertiesResponse {
                        correlation_id: p.correlation_id,
                        code: ResponseCode::Ok,
                        properties,
                    },
                ))
                .await;
            }
            ClientCommand::SaslHandshake(h) => {
                let mut mechanisms = vec!["PLAIN".to_owned()];
                if self.cert_user.is_some() {
                    mechanisms.push("EXTERNAL".to_owned());
                }
                self.send(ServerCommand::SaslHandshakeResponse(
                    SaslHandshakeResponse {
                        correlation_id: h.correlation_id,
                        code: ResponseCode::Ok,
                        mechanisms,
                    },
                ))
                .await;
            }
            ClientCommand::SaslAuthenticate(a) => {
                let loopback = self.peer.ip().to_canonical().is_loopback();
                let result = match (a.mechanism.as_str(), &self.cert_user) {
                    ("PLAIN", _) => {
                        let mut parts = a.data.split(|b| *b == 0);
                        let _authzid = parts.next();
                        let user = parts.next().map(String::from_utf8_lossy);
                        let pass = parts.next().map(String::from_utf8_lossy);
                        match (user, pass) {
                            (Some(u), Some(p)) => self
                                .server
                                .broker
                                .authenticate(&u, &p, loopback)
                                .map_err(|e| match e {
                                    pier_broker::AuthError::LoopbackOnly(_) => {
                                        ResponseCode::SaslAuthenticationFailureLoopback
                                    }
                                    _ => ResponseCode::AuthenticationFailure,
                                }),
                            _ => Err(ResponseCode::SaslError),
                        }
                    }
                    ("EXTERNAL", Some(cn)) => self
                        .server
                        .broker
                        .authenticate_external(cn, loopback)
                        .map_err(|_| ResponseCode::AuthenticationFailure),
                    _ => Err(ResponseCode::SaslMechanismNotSupported),
                };
                match result {
                    Ok(user) => {
                        self.user = Some(user.name.clone());
                        self.auth_mechanism = a.mechanism.clone();
                        self.send(ServerCommand::SaslAuthenticateResponse(
                            SaslAuthenticateResponse {
                                correlation_id: a.correlation_id,
                                code: ResponseCode::Ok,
                                challenge: Bytes::new(),
                            },
                        ))
                        .await;
                        let c = &self.server.config;
                        self.send(ServerCommand::Tune(Tune {
                            frame_max: c.frame_max,
                            heartbeat: c.heartbeat,
                        }))
                        .await;
                    }
                    Err(code) => {
                        tracing::info!(peer = %self.peer, "stream connection: authentication failed ({code:?})");
                        self.send(ServerCommand::SaslAuthenticateResponse(
                            SaslAuthenticateResponse {
                                correlation_id: a.correlation_id,
                                code,
                                challenge: Bytes::new(),
                            },
                        ))
                        .await;
                        return false;
                    }
                }
            }
            ClientCommand::Tune(t) => {
                let c = &self.server.config;
                let pick = |ours: u32, theirs: u32| match (ours, theirs) {
                    (0, x) | (x, 0) => x,
                    (a, b) => a.min(b),
                };
                self.frame_max = pick(c.frame_max, t.frame_max).max(DEFAULT_INITIAL_FRAME_MAX);
                self.heartbeat = pick(c.heartbeat, t.heartbeat);
            }
            ClientCommand::Open(o) => {
                let Some(user) = self.user.clone() else {
                    return false;
                };
                let opened = match self.server.broker.open_vhost(&user, &o.virtual_host) {
                    Ok(vh) => vh.acquire_connection_slot(&user).map(|slot| (slot, vh)),
                    Err(e) => Err(e),
                };
                match opened {
                    Ok((slot, vh)) => {
                        self._slot = Some(slot);
                        self.register(&user, vh.name());
                        self.vhost = Some(vh);
                        let c = &self.server.config;
                        self.send(ServerCommand::OpenResponse(OpenResponse {
                            correlation_id: o.correlation_id,
                            code: ResponseCode::Ok,
                            properties: vec![
                                ("advertised_host".to_owned(), c.advertised_host.clone()),
                                ("advertised_port".to_owned(), c.advertised_port.to_string()),
                            ],
                        }))
                        .await;
                    }
                    Err(e) => {
                        tracing::info!(peer = %self.peer, "stream connection: {e}");
                        self.send(ServerCommand::OpenResponse(OpenResponse {
                            correlation_id: o.correlation_id,
                            code: ResponseCode::VirtualHostAccessFailure,
                            properties: Vec::new(),
                        }))
                        .await;
                        return false;
                    }
                }
            }
            ClientCommand::Heartbeat => {}
            ClientCommand::Close(c) => {
                self.send(ServerCommand::CloseResponse(ok(c.correlation_id)))
                    .await;
                return false;
            }
            ClientCommand::CloseResponse(_) => return false,
            // Everything else needs an opened connection.
            _ if !authenticated => return false,
            cmd => self.command(cmd).await,
        }
        true
    }

    async fn command(&mut self, cmd: ClientCommand) {
        let Some(vh) = self.vhost.clone() else { return };
        match cmd {
            ClientCommand::DeclarePublisher(d) => {
                let code = if self.publishers.contains_key(&d.publisher_id) {
                    ResponseCode::PreconditionFailed
                } else if !self.allowed(ObjectKind::Queue, &d.stream, Access::Write) {
                    ResponseCode::AccessRefused
                } else {
                    match self.stream(&d.stream) {
                        None => self.missing(&d.stream),
                        Some(stream) => {
                            let stats = Arc::new(PublisherStats::new(
                                d.stream.clone(),
                                d.reference.clone(),
                            ));
                            if let Some(e) = &self.entry {
                                e.add_publisher(d.publisher_id, Arc::clone(&stats));
                            }
                            self.watch(&d.stream, &stream);
                            self.publishers.insert(
                                d.publisher_id,
                                Publisher {
                                    stream_name: d.stream.clone(),
                                    stream,
                                    reference: Some(d.reference).filter(|r| !r.is_empty()),
                                    stats,
                                },
                            );
                            ResponseCode::Ok
                        }
                    }
                };
                self.send(ServerCommand::DeclarePublisherResponse(response(
                    d.correlation_id,
                    code,
                )))
                .await;
            }
            ClientCommand::Publish(p) => self.publish(p).await,
            ClientCommand::QueryPublisherSequence(q) => {
                let (code, sequence) = match self.readable(&q.stream) {
                    None => (self.missing(&q.stream), 0),
                    Some(s) => (ResponseCode::Ok, s.writer_sequence(&q.reference)),
                };
                self.send(ServerCommand::QueryPublisherSequenceResponse(
                    QueryPublisherSequenceResponse {
                        correlation_id: q.correlation_id,
                        code,
                        sequence,
                    },
                ))
                .await;
            }
            ClientCommand::DeletePublisher(d) => {
                let code = if self.remove_publisher(d.publisher_id) {
                    ResponseCode::Ok
                } else {
                    ResponseCode::PublisherDoesNotExist
                };
                self.send(ServerCommand::DeletePublisherResponse(response(
                    d.correlation_id,
                    code,
                )))
                .await;
            }
            ClientCommand::Subscribe(s) => self.subscribe(s).await,
            ClientCommand::Credit(c) => match self.subscriptions.get(&c.subscription_id) {
                Some(sub) => {
                    sub.shared
                        .stats
                        .credit
                        .fetch_add(u32::from(c.credit), Ordering::AcqRel);
                    sub.shared.wake.notify_one();
                }
                None => {
                    self.send(ServerCommand::CreditResponse(
                        pier_stream_wire::CreditResponse {
                            code: ResponseCode::SubscriptionIdDoesNotExist,
                            subscription_id: c.subscription_id,
                        },
                    ))
                    .await;
                }
            },
            ClientCommand::StoreOffset(o) => {
                if self.allowed(ObjectKind::Queue, &o.stream, Access::Read) {
                    if let Some(s) = self.stream(&o.stream) {
                        if let Err(e) = s.store_offset(o.reference, o.offset) {
                            tracing::warn!(stream = %o.stream, "store offset: {e}");
                        }
                    } else if self.readable(&o.stream).is_some() {
                        // A replica's consumer: its leader writes the offset (in order:
                        // this connection waits for each).
                        if let (Some(c), Some(vh)) = (self.cluster(), self.vhost()) {
                            if let Err(e) = c
                                .store_stream_offset(vh.name(), &o.stream, o.reference, o.offset)
                                .await
                            {
                                tracing::warn!(stream = %o.stream, "store offset at the leader: {e}");
                            }
                        }
                    }
                }
            }
            ClientCommand::QueryOffset(q) => {
                let (code, offset) = match self.readable(&q.stream) {
                    None => (ResponseCode::StreamDoesNotExist, 0),
                    Some(_) if !self.allowed(ObjectKind::Queue, &q.stream, Access::Read) => {
                        (ResponseCode::AccessRefused, 0)
                    }
                    Some(s) => match s.stored_offset(&q.reference) {
                        Some(o) => (ResponseCode::Ok, o),
                        None => (ResponseCode::NoOffset, 0),
                    },
                };
                self.send(ServerCommand::QueryOffsetResponse(QueryOffsetResponse {
                    correlation_id: q.correlation_id,
                    code,
                    offset,
                }))
                .await;
            }
            ClientCommand::Unsubscribe(u) => {
                let code = if self.unsubscribe(u.subscription_id) {
                    ResponseCode::Ok
                } else {
                    ResponseCode::SubscriptionIdDoesNotExist
                };
                self.send(ServerCommand::UnsubscribeResponse(response(
                    u.correlation_id,
                    code,
                )))
                .await;
            }
            ClientCommand::Create(mut c) => {
                let code = if let Err(code) = enforce_correct_name(&mut c.stream) {
                    code
                } else if !self.allowed(ObjectKind::Queue, &c.stream, Access::Configure) {
                    ResponseCode::AccessRefused
                } else {
                    let md = self.server.metadata.as_ref();
                    match superstream::create_stream_any(md, &vh, &c.stream, &c.arguments, self.id)
                        .await
                    {
                        Ok(true) => ResponseCode::Ok,
                        Ok(false) => ResponseCode::StreamAlreadyExists,
                        Err(e) => {
                            tracing::info!(stream = %c.stream, "create stream refused: {e}");
                            ResponseCode::PreconditionFailed
                        }
                    }
                };
                self.send(ServerCommand::CreateResponse(response(
                    c.correlation_id,
                    code,
                )))
                .await;
            }
            ClientCommand::Delete(d) => {
                let code = if !self.is_stream(&d.stream) {
                    ResponseCode::StreamDoesNotExist
                } else if !self.allowed(ObjectKind::Queue, &d.stream, Access::Configure) {
                    ResponseCode::AccessRefused
                } else {
                    let md = self.server.metadata.as_ref();
                    match superstream::delete_stream_any(md, &vh, &d.stream, self.id).await {
                        Ok(true) => ResponseCode::Ok,
                        Ok(false) => ResponseCode::StreamDoesNotExist,
                        Err(e) => {
                            tracing::info!(stream = %d.stream, "delete stream refused: {e}");
                            ResponseCode::InternalError
                        }
                    }
                };
                self.send(ServerCommand::DeleteResponse(response(
                    d.correlation_id,
                    code,
                )))
                .await;
            }
            ClientCommand::Metadata(m) => {
                let c = &self.server.config;
                // Reference 0 is this node; on a clustered node the other running nodes
                // that serve the stream protocol follow, and each stream's leader is the
                // node hosting it (clients connect there to publish and consume).
                let mut brokers = vec![pier_stream_wire::Broker {
                    reference: 0,
                    host: c.advertised_host.clone(),
                    port: u32::from(c.advertised_port),
                }];
                let mut nodes: Vec<String> = Vec::new();
                if let Some(cluster) = self.cluster() {
                    for (name, host, port) in cluster.stream_endpoints(c.tls) {
                        nodes.push(name);
                        brokers.push(pier_stream_wire::Broker {
                            reference: u16::try_from(nodes.len()).unwrap_or(u16::MAX),
                            host,
                            port: u32::from(port),
                        });
                    }
                }
                let members_of = |name: &str| {
                    self.cluster()?
                        .stream_members_of(self.vhost()?.name(), name)
                };
                let me = self.cluster().map(|c| c.node_name().to_owned());
                // A node's reference: 0 for this one, else its place in `brokers` (a node
                // that is down, or serves no stream port, has none).
                let reference = |node: &str| {
                    if me.as_deref() == Some(node) {
                        Some(0)
                    } else {
                        nodes
                            .iter()
                            .position(|n| n == node)
                            .and_then(|i| u16::try_from(i + 1).ok())
                    }
                };
                let streams = m
                    .streams
                    .into_iter()
                    .map(|name| {
                        // Its replicas' nodes (after the leader in its members).
                        let replicas: Vec<u16> = members_of(&name)
                            .map(|m| m.iter().skip(1).filter_map(|n| reference(n)).collect())
                            .unwrap_or_default();
                        let (code, leader) = if self.stream(&name).is_some() {
                            (ResponseCode::Ok, 0)
                        } else {
                            match self.stream_home(&name) {
                                None => (ResponseCode::StreamDoesNotExist, u16::MAX),
                                Some(home) => match nodes.iter().position(|n| *n == home) {
                                    Some(i) => {
                                        (ResponseCode::Ok, u16::try_from(i + 1).unwrap_or(u16::MAX))
                                    }
                                    // Its node is down (or does not serve streams).
                                    None => (ResponseCode::StreamNotAvailable, u16::MAX),
                                },
                            }
                        };
                        StreamMetadata {
                            stream: name,
                            code,
                            leader,
                            replicas,
                        }
                    })
                    .collect();
                self.send(ServerCommand::MetadataResponse(MetadataResponse {
                    correlation_id: m.correlation_id,
                    brokers,
                    streams,
                }))
                .await;
            }
            ClientCommand::ExchangeCommandVersions(e) => {
                use pier_stream_wire::key;
                let client_deliver = e
                    .versions
                    .iter()
                    .find(|v| v.key == key::DELIVER)
                    .map_or(1, |v| v.max_version);
                self.deliver_v2 = client_deliver >= 2;
                let versions = pier_stream_wire::frame::SERVER_COMMAND_VERSIONS
                    .iter()
                    .map(|&(key, min_version, max_version)| CommandVersion {
                        key,
                        min_version,
                        max_version,
                    })
                    .collect();
                self.send(ServerCommand::ExchangeCommandVersionsResponse(
                    pier_stream_wire::ExchangeCommandVersionsResponse {
                        correlation_id: e.correlation_id,
                        code: ResponseCode::Ok,
                        versions,
                    },
                ))
                .await;
            }
            ClientCommand::StreamStats(st) => {
                let (code, stats) = match self.readable(&st.stream) {
                    None => (ResponseCode::StreamDoesNotExist, Vec::new()),
                    Some(s) => {
                        let v = s.shared().view();
                        let as_i64 =
                            |c: Option<u64>| c.map_or(-1, |c| i64::try_from(c).unwrap_or(i64::MAX));
                        let committed = as_i64(s.shared().committed_chunk_id());
                        let last = as_i64(v.last_chunk_id);
                        (
                            ResponseCode::Ok,
                            vec![
                                (
                                    "first_chunk_id".to_owned(),
                                    if v.last_chunk_id.is_some() {
                                        i64::try_from(v.first_offset()).unwrap_or(i64::MAX)
                                    } else {
                                        -1
                                    },
                                ),
                                ("committed_chunk_id".to_owned(), committed),
                                // As osiris' get_stats: the last chunk written here (a
                                // replicated stream's may not be committed yet).
                                ("last_chunk_id".to_owned(), last),
                            ],
                        )
                    }
                };
                self.send(ServerCommand::StreamStatsResponse(StreamStatsResponse {
                    correlation_id: st.correlation_id,
                    code,
                    stats,
                }))
                .await;
            }
            ClientCommand::Route(r) => {
                let (code, streams) = match superstream::route(&vh, &r.super_stream, &r.routing_key)
                {
                    None => (ResponseCode::StreamDoesNotExist, Vec::new()),
                    Some(s) => (ResponseCode::Ok, s),
                };
                self.send(ServerCommand::RouteResponse(StreamsResponse {
                    correlation_id: r.correlation_id,
                    code,
                    streams,
                }))
                .await;
            }
            ClientCommand::Partitions(p) => {
                let (code, streams) = match superstream::partitions(&vh, &p.super_stream) {
                    None => (ResponseCode::StreamDoesNotExist, Vec::new()),
                    Some(s) => (ResponseCode::Ok, s),
                };
                self.send(ServerCommand::PartitionsResponse(StreamsResponse {
                    correlation_id: p.correlation_id,
                    code,
                    streams,
                }))
                .await;
            }
            ClientCommand::CreateSuperStream(mut c) => {
                let code = if let Err(code) = enforce_correct_name(&mut c.name) {
                    code
                } else if !self.allowed(ObjectKind::Exchange, &c.name, Access::Configure) {
                    ResponseCode::AccessRefused
                } else {
                    match superstream::create(
                        self.server.metadata.as_ref(),
                        &vh,
                        &c.name,
                        &c.partitions,
                        &c.binding_keys,
                        &c.arguments,
                        self.id,
                    )
                    .await
                    {
                        Ok(true) => ResponseCode::Ok,
                        Ok(false) => ResponseCode::StreamAlreadyExists,
                        Err(e) => {
                            tracing::info!(super_stream = %c.name, "create super stream refused: {e}");
                            ResponseCode::PreconditionFailed
                        }
                    }
                };
                self.send(ServerCommand::CreateSuperStreamResponse(response(
                    c.correlation_id,
                    code,
                )))
                .await;
            }
            ClientCommand::DeleteSuperStream(d) => {
                let code = if !self.allowed(ObjectKind::Exchange, &d.name, Access::Configure) {
                    ResponseCode::AccessRefused
                } else {
                    let md = self.server.metadata.as_ref();
                    match superstream::delete(md, &vh, &d.name, self.id).await {
                        Ok(true) => ResponseCode::Ok,
                        Ok(false) => ResponseCode::StreamDoesNotExist,
                        Err(e) => {
                            tracing::info!(super_stream = %d.name, "delete super stream refused: {e}");
                            ResponseCode::InternalError
                        }
                    }
                };
                self.send(ServerCommand::DeleteSuperStreamResponse(response(
                    d.correlation_id,
                    code,
                )))
                .await;
            }
            ClientCommand::ResolveOffsetSpec(r) => {
                let (code, offset) = match self.readable(&r.stream) {
                    None => (ResponseCode::StreamDoesNotExist, 0),
                    Some(s) => match s.reader(to_start(r.offset)) {
                        Ok(rd) => (ResponseCode::Ok, rd.next_chunk_id()),
                        Err(_) => (ResponseCode::InternalError, 0),
                    },
                };
                self.send(ServerCommand::ResolveOffsetSpecResponse(
                    ResolveOffsetSpecResponse {
                        correlation_id: r.correlation_id,
                        code,
                        offset_type: 4,
                        offset,
                    },
                ))
                .await;
            }
            ClientCommand::ConsumerUpdateResponse(u) => {
                if let Some((sub_id, activated)) = self.updates.remove(&u.correlation_id) {
                    if let Some(sub) = self.subscriptions.get(&sub_id) {
                        if !activated {
                            // It has stepped down: its group's next member may start.
                            if let Some(key) = &sub.sac {
                                self.server.sac.stepped_down(key, self.id, sub_id);
                            }
                        } else if sub.shared.stats.active.load(Ordering::Acquire) {
                            let start = to_start(u.offset.unwrap_or(sub.offset));
                            *sub.shared.restart.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(start);
                            sub.shared.wake.notify_one();
                        }
                    }
                }
            }
            // Handled before authentication checks.
            ClientCommand::PeerProperties(_)
            | ClientCommand::SaslHandshake(_)
            | ClientCommand::SaslAuthenticate(_)
            | ClientCommand::Tune(_)
            | ClientCommand::Open(_)
            | ClientCommand::Close(_)
            | ClientCommand::CloseResponse(_)
            | ClientCommand::Heartbeat => {}
        }
    }

    /// A `Publish` goes to the stream's writer in parts of at most `APPEND_MAX_MESSAGES`
    /// messages and about `frame_max` bytes: a frame past `frame_max` (read for RabbitMQ's
    /// sake, `inbound_limit`) then makes the chunks a frame within it would make, and no
    /// chunk nears its 65,535-entry limit.
    async fn publish(&mut self, p: pier_stream_wire::Publish) {
        let limit = self.frame_max as usize;
        let fits = p.messages.len() <= APPEND_MAX_MESSAGES
            && p.messages
                .iter()
                .map(|m| m.entry.encoded_len() + 8)
                .sum::<usize>()
                <= limit;
        if fits {
            return self.publish_part(p).await;
        }
        let (version, publisher_id) = (p.version, p.publisher_id);
        let mut part = Vec::new();
        let mut bytes = 0;
        for m in p.messages {
            let size = m.entry.encoded_len() + 8;
            if !part.is_empty() && (part.len() == APPEND_MAX_MESSAGES || bytes + size > limit) {
                let messages = std::mem::take(&mut part);
                self.publish_part(pier_stream_wire::Publish {
                    version,
                    publisher_id,
                    messages,
                })
                .await;
                bytes = 0;
            }
            bytes += size;
            part.push(m);
        }
        self.publish_part(pier_stream_wire::Publish {
            version,
            publisher_id,
            messages: part,
        })
        .await;
    }

    async fn publish_part(&mut self, p: pier_stream_wire::Publish) {
        let n = p.messages.len();
        if n == 0 {
            return;
        }
        let ids: Vec<u64> = p.messages.iter().map(|m| m.publishing_id).collect();
        let Some(publisher) = self.publishers.get(&p.publisher_id) else {
            self.shared.unconfirmed.fetch_add(n, Ordering::AcqRel);
            self.shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .errors
                .push((p.publisher_id, ids, ResponseCode::PublisherDoesNotExist));
            self.shared.writer_wake.notify_one();
            return;
        };
        let messages: Vec<AppendMessage> = p
            .messages
            .into_iter()
            .map(|m| AppendMessage {
                publishing_id: m.publishing_id,
                entry: m.entry,
                filter: m.filter_value,
            })
            .collect();
        self.shared.unconfirmed.fetch_add(n, Ordering::AcqRel);
        let shared = Arc::clone(&self.shared);
        let pid = p.publisher_id;
        let stats = Arc::clone(&publisher.stats);
        stats.published.fetch_add(n as u64, Ordering::Relaxed);
        let mut done: pier_store::stream::AppendDone = Box::new(move |r| {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                Ok(_) => {
                    stats.confirmed.fetch_add(n as u64, Ordering::Relaxed);
                    pending.confirms.push((pid, ids));
                }
                Err(e) => {
                    stats.errored.fetch_add(n as u64, Ordering::Relaxed);
                    let code = match *e {
                        StreamError::Deleted => ResponseCode::StreamDoesNotExist,
                        _ => ResponseCode::InternalError,
                    };
                    pending.errors.push((pid, ids, code));
                }
            }
            drop(pending);
            shared.writer_wake.notify_one();
        });
        let mut messages = messages;
        let stream = Arc::clone(&publisher.stream);
        let reference = publisher.reference.clone();
        loop {
            match stream.try_append(reference.clone(), messages, done) {
                Ok(()) => return,
                Err((StreamError::Busy, m, d)) => {
                    messages = m;
                    done = d;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _, d)) => {
                    tracing::warn!(stream = %publisher.stream_name, "publish: {e}");
                    d(Err(Arc::new(e)));
                    // Deleted, or its writer failed: the stream is gone for its publishers.
                    self.stream_deleted(publisher.stream_name.clone()).await;
                    return;
                }
            }
        }
    }

    async fn subscribe(&mut self, s: pier_stream_wire::Subscribe) {
        let Some(vh) = self.vhost.clone() else { return };
        let code = if self.subscriptions.contains_key(&s.subscription_id) {
            ResponseCode::SubscriptionIdAlreadyExists
        } else if self.readable(&s.stream).is_none() {
            self.missing(&s.stream)
        } else if !self.allowed(ObjectKind::Queue, &s.stream, Access::Read) {
            ResponseCode::AccessRefused
        } else {
            ResponseCode::Ok
        };
        let stream = match (code, self.readable(&s.stream)) {
            (ResponseCode::Ok, Some(stream)) => stream,
            _ => {
                self.send(ServerCommand::SubscribeResponse(response(
                    s.correlation_id,
                    code,
                )))
                .await;
                return;
            }
        };
        let prop = |k: &str| {
            s.properties
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        let filters: Vec<&str> = s
            .properties
            .iter()
            .filter(|(k, _)| k.starts_with("filter."))
            .map(|(_, v)| v.as_str())
            .collect();
        let matcher = (!filters.is_empty()).then(|| {
            BloomMatcher::new(
                filters.iter().map(|f| f.as_bytes()),
                prop("match-unfiltered") == Some("true"),
            )
        });
        let sac = prop("single-active-consumer") == Some("true");
        let name = prop("name").map(str::to_owned);
        let super_stream = prop("super-stream").map(str::to_owned);
        let sac_key = match (sac, name) {
            (true, Some(name)) => Some(GroupKey {
                vhost: vh.name().to_owned(),
                stream: s.stream.clone(),
                name,
            }),
            (true, None) => {
                self.send(ServerCommand::SubscribeResponse(response(
                    s.correlation_id,
                    ResponseCode::PreconditionFailed,
                )))
                .await;
                return;
            }
            _ => None,
        };
        let stats = Arc::new(ConsumerStats::new(
            s.stream.clone(),
            s.properties.clone(),
            u32::from(s.credit),
            sac_key.is_none(),
        ));
        if let Some(e) = &self.entry {
            e.add_consumer(s.subscription_id, Arc::clone(&stats));
        }
        let shared = Arc::new(SubShared {
            stats,
            wake: Notify::new(),
            restart: Mutex::new(None),
        });
        let reader = if sac_key.is_none() {
            let at = to_start(s.offset);
            settle_before(&stream, at).await;
            match stream.reader(at) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(stream = %s.stream, "subscribe: {e}");
                    self.send(ServerCommand::SubscribeResponse(response(
                        s.correlation_id,
                        ResponseCode::InternalError,
                    )))
                    .await;
                    return;
                }
            }
        } else {
            None
        };
        self.send(ServerCommand::SubscribeResponse(ok(s.correlation_id)))
            .await;
        let cancel = CancellationToken::new();
        tokio::spawn(deliver_loop(DeliverTask {
            id: s.subscription_id,
            stream_name: s.stream.clone(),
            stream,
            reader,
            matcher,
            shared: Arc::clone(&shared),
            out: self.out.clone(),
            v2: self.deliver_v2,
            cancel: cancel.clone(),
            subscribed: tokio::time::Instant::now(),
        }));
        if let Some(key) = &sac_key {
            let partition = super_stream.and_then(|ss| {
                superstream::partitions(&vh, &ss)
                    .and_then(|p| p.iter().position(|n| *n == s.stream))
            });
            self.server.sac.join(
                key.clone(),
                partition,
                self.id,
                s.subscription_id,
                self.sac_events.clone(),
            );
        }
        self.subscriptions.insert(
            s.subscription_id,
            Subscription {
                stream_name: s.stream,
                shared,
                cancel,
                sac: sac_key,
                offset: s.offset,
            },
        );
    }

    fn unsubscribe(&mut self, id: u8) -> bool {
        let Some(sub) = self.subscriptions.remove(&id) else {
            return false;
        };
        sub.cancel.cancel();
        if let Some(e) = &self.entry {
            e.remove_consumer(id);
        }
        if let Some(key) = &sub.sac {
            self.server.sac.leave(key, self.id, id);
        }
        let _ = &sub.stream_name;
        true
    }

    async fn sac_event(&mut self, ev: SacEvent) {
        let (id, active) = match ev {
            SacEvent::Activate(id) => (id, true),
            SacEvent::Deactivate(id) => (id, false),
        };
        let Some(sub) = self.subscriptions.get(&id) else {
            return;
        };
        sub.shared.stats.active.store(active, Ordering::Release);
        sub.shared.wake.notify_one();
        let correlation_id = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        self.updates.insert(correlation_id, (id, active));
        self.send(ServerCommand::ConsumerUpdate(ConsumerUpdate {
            correlation_id,
            subscription_id: id,
            active,
        }))
        .await;
    }

    /// Registers the opened connection for management.
    fn register(&mut self, user: &str, vhost: &str) {
        let mut client_properties = pier_wire::FieldTable::new();
        for (k, v) in &self.client_properties {
            client_properties.insert(
                pier_wire::ShortString::truncated(k),
                pier_wire::FieldValue::LongString(v.as_str().into()),
            );
        }
        let meta = crate::registry::ConnectionMeta {
            id: self.id,
            name: format!("{} -> {}", self.peer, self.local),
            peer: self.peer,
            local: self.local,
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            client_properties,
            auth_mechanism: self.auth_mechanism.clone(),
            connected_at_ms: crate::registry::unix_ms(),
            frame_max: self.frame_max,
            channel_max: 0,
            heartbeat: u16::try_from(self.heartbeat).unwrap_or(u16::MAX),
            protocol: "stream".into(),
            tls: self.tls.clone(),
        };
        let entry = Arc::new(StreamConnectionEntry::new(meta, Arc::clone(&self.counters)));
        self.server.registry.register_stream(Arc::clone(&entry));
        self.entry = Some(entry);
    }

    fn teardown(&mut self) {
        let ids: Vec<u8> = self.subscriptions.keys().copied().collect();
        for id in ids {
            self.unsubscribe(id);
        }
        self.publishers.clear();
        for (_, (stream, listener)) in self.watched.drain() {
            stream.shared().unlisten(listener);
        }
    }

    /// Forgets publisher `id` here and in the connection's listing; false if it had none.
    fn remove_publisher(&mut self, id: u8) -> bool {
        let known = self.publishers.remove(&id).is_some();
        if let (true, Some(e)) = (known, &self.entry) {
            e.remove_publisher(id);
        }
        known
    }

    /// Reports the deletion of `stream` (which a publisher of this connection writes to) on
    /// `deleted`, once.
    fn watch(&mut self, name: &str, stream: &Arc<Stream>) {
        if self.watched.contains_key(name) {
            return;
        }
        let shared = Arc::downgrade(stream.shared());
        let (tx, reported) = (self.deleted.clone(), AtomicBool::new(false));
        let stream_name = name.to_owned();
        // Called at every append too: only a deletion is reported.
        let listener = stream.shared().listen(Arc::new(move || {
            if shared.upgrade().is_some_and(|s| s.is_deleted())
                && !reported.swap(true, Ordering::AcqRel)
            {
                let _ = tx.try_send(stream_name.clone());
            }
        }));
        self.watched
            .insert(name.to_owned(), (Arc::clone(stream), listener));
    }

    /// `name` was deleted (or cannot be written any more): its publishers are gone, and the
    /// client is told with a `MetadataUpdate` (RabbitMQ's `stream_not_available`), once for
    /// the stream.
    async fn stream_deleted(&mut self, name: String) {
        if let Some((stream, listener)) = self.watched.remove(&name) {
            stream.shared().unlisten(listener);
        }
        let gone: Vec<u8> = self
            .publishers
            .iter()
            .filter(|(_, p)| p.stream_name == name)
            .map(|(id, _)| *id)
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in gone {
            self.remove_publisher(id);
        }
        self.send(ServerCommand::MetadataUpdate(MetadataUpdate {
            code: ResponseCode::StreamNotAvailable,
            stream: name,
        }))
        .await;
    }
}

struct DeliverTask {
    id: u8,
    stream_name: String,
    stream: Arc<Stream>,
    reader: Option<pier_store::stream::StreamReader>,
    matcher: Option<BloomMatcher>,
    shared: Arc<SubShared>,
    out: mpsc::Sender<Out>,
    v2: bool,
    cancel: CancellationToken,
    /// When its `SubscribeResponse` was queued (see [`FIRST_DELIVERY_GAP`]).
    subscribed: tokio::time::Instant,
}

/// The least time between a subscription's `SubscribeResponse` and its first chunk. A
/// client may handle the response before any delivery only if the two arrive in separate
/// reads: RabbitMQ's JavaScript client resolves `declareConsumer` on the response, and its
/// own offset-tracking example calls the consumer it returns from inside the message
/// handler, which fails when the first chunk came in the response's read (RabbitMQ's reader
/// answers, then sets up its log reader and reads the chunk: a gap of this order).
const FIRST_DELIVERY_GAP: Duration = Duration::from_millis(2);

/// Reads chunks while the subscription has credit and is active, and sends them.
async fn deliver_loop(mut t: DeliverTask) {
    let wake = {
        let shared = Arc::clone(&t.shared);
        t.stream
            .shared()
            .listen(Arc::new(move || shared.wake.notify_one()))
    };
    loop {
        if t.cancel.is_cancelled() {
            break;
        }
        let restart = t
            .shared
            .restart
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(at) = restart {
            settle_before(&t.stream, at).await;
            match t.stream.reader(at) {
                Ok(r) => t.reader = Some(r),
                Err(e) => {
                    tracing::warn!(stream = %t.stream_name, "subscription reader: {e}");
                    break;
                }
            }
        }
        let ready = t.shared.stats.active.load(Ordering::Acquire)
            && t.shared.stats.credit.load(Ordering::Acquire) > 0
            && t.reader.is_some();
        let chunk = if ready {
            t.reader.as_mut().map(|r| r.next_chunk())
        } else {
            None
        };
        match chunk {
            Some(Ok(Some(c))) => {
                if let Some(m) = &t.matcher {
                    if !m.matches(&c.bloom) {
                        continue;
                    }
                }
                let committed = t.stream.shared().committed_chunk_id();
                let deliver = Deliver {
                    subscription_id: t.id,
                    committed_chunk_id: if t.v2 {
                        Some(committed.unwrap_or(0))
                    } else {
                        None
                    },
                    chunk: c.delivered,
                };
                let mut head = BytesMut::with_capacity(16 + CHUNK_HEADER_SIZE);
                if let Err(e) = deliver.encode_head(&mut head) {
                    tracing::error!(stream = %t.stream_name, "stream: encoding a delivery: {e}");
                    break;
                }
                let mut body = deliver.chunk;
                if c.header.trailer_length > 0 && body.len() >= CHUNK_HEADER_SIZE {
                    // The header says the trailer length Osiris would (without the CRC
                    // Pier keeps after the publisher sequences): its 48 octets encoded
                    // again from the header they were read as, that length changed.
                    ChunkHeader {
                        trailer_length: pier_store::stream::osiris_trailer_length(
                            c.header.trailer_length,
                        ),
                        ..c.header
                    }
                    .encode(&mut head);
                    body = body.slice(CHUNK_HEADER_SIZE..);
                }
                let frame = Out {
                    head: head.freeze(),
                    body,
                };
                let gap_end = t.subscribed + FIRST_DELIVERY_GAP;
                if tokio::time::Instant::now() < gap_end {
                    tokio::time::sleep_until(gap_end).await;
                }
                t.shared.stats.credit.fetch_sub(1, Ordering::AcqRel);
                let records = u64::from(c.header.num_records);
                t.shared
                    .stats
                    .consumed
                    .fetch_add(records, Ordering::Relaxed);
                t.shared.stats.offset.store(
                    (c.header.first_offset + records).saturating_sub(1),
                    Ordering::Relaxed,
                );
                tokio::select! {
                    r = t.out.send(frame) => if r.is_err() { break },
                    () = t.cancel.cancelled() => break,
                }
            }
            Some(Err(StreamError::Deleted)) => {
                let frame = encode(&ServerCommand::MetadataUpdate(MetadataUpdate {
                    code: ResponseCode::StreamNotAvailable,
                    stream: t.stream_name.clone(),
                }));
                let _ = t.out.send(frame.into()).await;
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(stream = %t.stream_name, "subscription read: {e}");
                break;
            }
            Some(Ok(None)) | None => {
                if t.stream.shared().is_deleted() {
                    let frame = encode(&ServerCommand::MetadataUpdate(MetadataUpdate {
                        code: ResponseCode::StreamNotAvailable,
                        stream: t.stream_name.clone(),
                    }));
                    let _ = t.out.send(frame.into()).await;
                    break;
                }
                tokio::select! {
                    () = t.shared.wake.notified() => {}
                    () = t.cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    t.stream.shared().unlisten(wake);
}
