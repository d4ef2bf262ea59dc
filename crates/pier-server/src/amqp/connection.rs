//! One client connection after the handshake: the reader loop, frame dispatch, connection-level
//! methods, error scoping (soft errors close a channel, hard errors the connection), heartbeat
//! enforcement, and teardown (requeue unacked, drop exclusive queues).
//!
//! ```text
//!  socket ─read─► BytesMut ─decode_frame─► handle_frame ─► Channel::handle (channel/) ─► broker
//!                                                 │                                          │
//!                                                 └──────────► Outbound ◄── deliveries ──────┘
//!                                                                 └─► writer task ─► socket
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pier_broker::{ConnectionId, User, VHost};
use pier_wire::{
    decode_frame, next_frame_len, reply_code as rc, ChannelClose, ChannelCloseOk, ChannelOpenOk,
    ConnectionClose, ConnectionCloseOk, ConnectionUpdateSecretOk, Frame, LongString, Method,
    ShortString,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::access::AccessControl;
use super::channel::{Channel, ChannelCx, Pending};
use super::error::{AmqpException, ConnectionError};
use super::flow::FlowState;
use super::handshake::{ClientCapabilities, FrameReader, Negotiated};
use super::outbound::Outbound;
use crate::config::ServerConfig;
use crate::credit::Credit;
use crate::registry::ConnectionEntry;
use pier_broker::session::requeue_all;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_connection_id() -> ConnectionId {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// What the reader loop does after a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// The connection is closed (close/close-ok exchanged): stop reading.
    Stop,
}

pub(crate) struct Connection {
    pub id: ConnectionId,
    pub peer: SocketAddr,
    pub config: Arc<ServerConfig>,
    pub vhost: Arc<VHost>,
    pub user: User,
    pub outbound: Arc<Outbound>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub capabilities: ClientCapabilities,
    /// Permission checks (access.rs).
    pub(crate) access: AccessControl,
    /// Publisher blocking under resource alarms (flow.rs).
    pub(crate) flow: FlowState,
    /// Persistent publishes not yet on disk (credit.rs); shared with the store's callbacks.
    pub(crate) credit: Arc<Credit>,
    pub channels: HashMap<u16, Channel>,
    /// The server sent connection.close and waits for close-ok.
    closing: bool,
    /// The client sent connection.close and got close-ok: it closes the socket (lib.rs).
    pub(crate) client_closed: bool,
    /// This connection in the registry: counters, and the reason for a forced close.
    pub(crate) registered: Arc<ConnectionEntry>,
    /// The cluster's metadata front, on a clustered node only.
    pub(crate) metadata: Option<pier_cluster::Metadata>,
    /// A channel's method that waits for the cluster (a proposal, a queue's home node):
    /// the reader awaits it before the next frame (RabbitMQ's per-channel order).
    awaiting: Option<(u16, (u16, u16), Pending)>,
}

impl Connection {
    pub fn new(
        id: ConnectionId,
        peer: SocketAddr,
        config: Arc<ServerConfig>,
        n: Negotiated,
        outbound: Arc<Outbound>,
        registered: Arc<ConnectionEntry>,
    ) -> Self {
        Connection {
            id,
            peer,
            config,
            vhost: n.vhost,
            user: n.user,
            outbound,
            frame_max: n.frame_max,
            channel_max: n.channel_max,
            heartbeat: n.heartbeat,
            capabilities: n.capabilities,
            access: n.access,
            flow: FlowState::default(),
            credit: Arc::default(),
            channels: HashMap::new(),
            closing: false,
            client_closed: false,
            registered,
            metadata: None,
            awaiting: None,
        }
    }

    /// Reads and handles frames until the connection ends.
    pub async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        shutdown: CancellationToken,
    ) -> Result<(), ConnectionError> {
        let read_timeout = if self.heartbeat == 0 {
            None
        } else {
            Some(Duration::from_secs(u64::from(self.heartbeat) * 2))
        };
        let mut close_deadline: Option<tokio::time::Instant> = None;
        // The heartbeat deadline timer is pushed back lazily (only when it fires) instead of
        // being re-armed on every read: under load that is one timer operation per timeout
        // period rather than one per read.
        let mut last_read = tokio::time::Instant::now();
        let mut read_size = crate::read_size::ReadSize::new(4 * 1024, 256 * 1024);
        // The last read filled less than half the buffer (see the decode loop).
        let mut sparse = false;
        let far = Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep(read_timeout.unwrap_or(far));
        tokio::pin!(timer);
        // consumer_timeout: checked periodically (channel.rs, check_consumer_timeouts).
        let mut ack_check = self.config.consumer_timeout.map(|t| {
            let period = (t / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
            tokio::time::interval_at(tokio::time::Instant::now() + period, period)
        });
        loop {
            // Handle everything already buffered before reading again.
            loop {
                let decoded = match next_frame_len(&reader.buf) {
                    // A mostly empty read buffer (a trickle publisher): give each frame its own
                    // allocation, or the zero-copy slices of every queued message would each
                    // keep a whole read buffer alive (3-4× the bodies' size in RSS).
                    Some(total) if sparse && total <= reader.buf.len() => {
                        let mut own = BytesMut::from(&reader.buf[..total]);
                        reader.buf.advance(total);
                        decode_frame(&mut own, self.frame_max)
                    }
                    _ => decode_frame(&mut reader.buf, self.frame_max),
                };
                let frame = match decoded {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        // The stream can't be re-synchronised after a framing error: send the
                        // close, then discard input until the client hangs up (closing with
                        // unread input would reset the socket before the close arrives).
                        let ex = AmqpException::from(e);
                        tracing::warn!(peer = %self.peer, "closing connection: {}", ex.text);
                        self.send_connection_close(&ex);
                        self.flush_confirms();
                        let drain = async {
                            let mut scratch = vec![0u8; 16 * 1024];
                            while matches!(reader.io.read(&mut scratch).await, Ok(n) if n > 0) {}
                        };
                        let _ = tokio::time::timeout(self.config.close_timeout, drain).await;
                        return Err(ex.into());
                    }
                };
                let mut flow = match self.handle_frame(frame) {
                    Ok(flow) => flow,
                    Err(ex) => self.on_exception(ex),
                };
                if let Some((channel, ids, pending)) = self.awaiting.take() {
                    // The method waits for the cluster; nothing else of this connection is
                    // read meanwhile (the writer keeps sending, heartbeats included).
                    self.flush_confirms();
                    let done = tokio::select! {
                        done = pending => Some(done),
                        () = shutdown.cancelled(), if !self.closing => None,
                    };
                    last_read = tokio::time::Instant::now();
                    match done {
                        Some(complete) => {
                            if let Err(ex) = self.complete(channel, ids, complete) {
                                flow = self.on_exception(ex);
                            }
                        }
                        None => {
                            self.begin_forced_close();
                            close_deadline =
                                Some(tokio::time::Instant::now() + self.config.close_timeout);
                        }
                    }
                }
                if flow == Flow::Stop {
                    self.flush_confirms();
                    return Ok(());
                }
                if self.closing && close_deadline.is_none() {
                    close_deadline = Some(tokio::time::Instant::now() + self.config.close_timeout);
                }
            }
            self.flush_confirms();
            self.requeue_orphans();

            // Resource alarm: a connection that just published stops being read (flow.rs).
            if !self.closing && self.must_block_publisher() {
                if self.wait_while_blocked(&shutdown).await {
                    self.begin_forced_close();
                    close_deadline = Some(tokio::time::Instant::now() + self.config.close_timeout);
                }
                last_read = tokio::time::Instant::now();
                continue;
            }

            // Per-connection credit: too much of this connection's work still on its way to
            // the disk, so stop reading it until the store catches up (credit.rs).
            if !self.closing && self.credit.exhausted() {
                if self.wait_for_credit(&shutdown).await {
                    self.begin_forced_close();
                    close_deadline = Some(tokio::time::Instant::now() + self.config.close_timeout);
                }
                last_read = tokio::time::Instant::now();
                continue;
            }

            if self.outbound.is_congested() {
                tokio::select! {
                    () = self.outbound.wait_uncongested() => {}
                    () = shutdown.cancelled(), if !self.closing => {
                        self.begin_forced_close();
                        close_deadline = Some(tokio::time::Instant::now() + self.config.close_timeout);
                    }
                }
                continue;
            }

            if let Some(d) = close_deadline {
                if timer.deadline() != d {
                    timer.as_mut().reset(d);
                }
            }
            // Idle connections keep small buffers (memory per connection); busy ones grow
            // theirs up to 256 KiB so that a read takes in many frames (scenario B, 1 KiB
            // messages: +5% over 64 KiB, fewer wake-ups per message).
            let room = read_size.reserve(&mut reader.buf);
            let read = reader.io.read_buf(&mut reader.buf);
            tokio::select! {
                r = read => {
                    let n = r?;
                    if n == 0 {
                        return Err(ConnectionError::Eof);
                    }
                    self.registered.count_read(n);
                    sparse = n * 2 < reader.buf.capacity();
                    last_read = tokio::time::Instant::now();
                    read_size.read(n, room);
                    if n >= 32 * 1024 {
                        // A busy publisher: let the other connections on this worker run
                        // before handling the next batch, so that no connection is starved.
                        tokio::task::yield_now().await;
                    }
                }
                () = &mut timer => {
                    if self.closing {
                        return Ok(());
                    }
                    match read_timeout {
                        Some(t) if last_read.elapsed() < t => {
                            timer.as_mut().reset(last_read + t);
                        }
                        Some(_) => {
                            tracing::warn!(peer = %self.peer, "missed heartbeats from client, timeout: {}s", self.heartbeat);
                            return Err(ConnectionError::HeartbeatTimeout(self.heartbeat));
                        }
                        None => timer.as_mut().reset(tokio::time::Instant::now() + far),
                    }
                }
                () = shutdown.cancelled(), if !self.closing => {
                    self.begin_forced_close();
                    close_deadline = Some(tokio::time::Instant::now() + self.config.close_timeout);
                }
                _ = tick_opt(&mut ack_check), if !self.closing => self.check_consumer_timeouts(),
            }
        }
    }

    fn begin_forced_close(&mut self) {
        // A management close carries its reason; otherwise the server is shutting down.
        let ex = match self.registered.forced_close_reason() {
            Some(reason) => AmqpException::new(rc::CONNECTION_FORCED, reason),
            None => AmqpException::new(
                rc::CONNECTION_FORCED,
                "broker forced connection closure with reason 'shutdown'",
            ),
        };
        self.send_connection_close(&ex);
    }

    /// Soft errors close the channel, hard ones the connection.
    fn on_exception(&mut self, ex: AmqpException) -> Flow {
        if ex.is_hard() {
            tracing::warn!(peer = %self.peer, user = %self.user.name, "connection error: {}", ex.text);
            self.send_connection_close(&ex);
        } else {
            tracing::debug!(peer = %self.peer, "channel error: {}", ex.text);
        }
        Flow::Continue
    }

    pub(crate) fn send_connection_close(&mut self, ex: &AmqpException) {
        if self.closing {
            return;
        }
        self.closing = true;
        // Stop deliveries and give messages back now rather than after the close handshake.
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.teardown_channel(id);
        }
        self.outbound.send_method(
            0,
            &Method::ConnectionClose(ConnectionClose {
                reply_code: ex.code,
                reply_text: ShortString::truncated(&ex.text),
                class_id: ex.class_id,
                method_id: ex.method_id,
            }),
        );
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<Flow, AmqpException> {
        if self.closing {
            // Only the close handshake matters now.
            return Ok(match frame {
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk(_),
                } => Flow::Stop,
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(_),
                } => {
                    self.outbound
                        .send_method(0, &Method::ConnectionCloseOk(ConnectionCloseOk {}));
                    self.client_closed = true;
                    Flow::Stop
                }
                _ => Flow::Continue,
            });
        }
        match frame {
            Frame::Heartbeat { channel: 0 } => Ok(Flow::Continue),
            // AMQP says 501; RabbitMQ (and so its clients' expectations) says 505.
            Frame::Heartbeat { channel } => Err(AmqpException::new(
                rc::UNEXPECTED_FRAME,
                format!("heartbeat frame on channel {channel}"),
            )),
            Frame::Method { channel: 0, method } => self.handle_connection_method(method),
            Frame::Method { channel, method } => {
                if matches!(method, Method::BasicPublish(_)) {
                    self.registered.count_publish();
                }
                self.handle_channel_method(channel, method)?;
                Ok(Flow::Continue)
            }
            Frame::Header { channel, header } => {
                self.on_channel(channel, |ch, cx| ch.content_header(cx, header))?;
                Ok(Flow::Continue)
            }
            Frame::Body { channel, payload } => {
                self.on_channel(channel, |ch, cx| ch.content_body(cx, payload))?;
                Ok(Flow::Continue)
            }
        }
    }

    /// The channel `number` with what its handlers use of this connection.
    fn channel_cx(&mut self, number: u16) -> Option<(&mut Channel, ChannelCx<'_>)> {
        let ch = self.channels.get_mut(&number)?;
        let cx = ChannelCx {
            connection: self.id,
            config: &self.config,
            vhost: &self.vhost,
            user: &self.user,
            outbound: &self.outbound,
            access: &mut self.access,
            credit: &self.credit,
            cluster: self.metadata.as_ref(),
        };
        Some((ch, cx))
    }

    /// Finishes a channel method that waited for the cluster, with its errors scoped as a
    /// synchronous handler's are.
    fn complete(
        &mut self,
        channel: u16,
        ids: (u16, u16),
        complete: super::channel::Completion,
    ) -> Result<(), AmqpException> {
        let handled = match self.channel_cx(channel) {
            Some((ch, _)) if ch.closing => return Ok(()),
            Some((ch, mut cx)) => complete(ch, &mut cx),
            None => return Ok(()),
        };
        match handled {
            Err(ex) if !ex.is_hard() => {
                let ex = if ex.class_id == 0 {
                    ex.on_ids(ids.0, ids.1)
                } else {
                    ex
                };
                self.close_channel_with(channel, &ex);
                Ok(())
            }
            Err(ex) if ex.class_id == 0 => Err(ex.on_ids(ids.0, ids.1)),
            other => other,
        }
    }

    /// Runs a content handler on an open channel; turns its soft errors into a channel close.
    fn on_channel(
        &mut self,
        channel: u16,
        f: impl FnOnce(&mut Channel, &mut ChannelCx<'_>) -> Result<(), AmqpException>,
    ) -> Result<(), AmqpException> {
        let result = match self.channel_cx(channel) {
            None => {
                return Err(AmqpException::new(
                    rc::UNEXPECTED_FRAME,
                    format!("content frame on unopened channel {channel}"),
                ))
            }
            Some((ch, _)) if ch.closing => return Ok(()),
            Some((ch, mut cx)) => f(ch, &mut cx),
        };
        match result {
            Err(ex) if !ex.is_hard() => {
                self.close_channel_with(channel, &ex);
                Ok(())
            }
            other => other,
        }
    }

    fn handle_connection_method(&mut self, method: Method) -> Result<Flow, AmqpException> {
        match method {
            Method::ConnectionClose(c) => {
                tracing::debug!(peer = %self.peer, code = c.reply_code, "client closed the connection: {}", c.reply_text);
                let ids: Vec<u16> = self.channels.keys().copied().collect();
                for id in ids {
                    self.teardown_channel(id);
                }
                self.outbound
                    .send_method(0, &Method::ConnectionCloseOk(ConnectionCloseOk {}));
                self.client_closed = true;
                Ok(Flow::Stop)
            }
            Method::ConnectionCloseOk(_) => Ok(Flow::Stop),
            Method::ConnectionUpdateSecret(_) => {
                // Pier has no expiring credentials (no OAuth 2 backend): accept and carry on.
                self.outbound.send_method(
                    0,
                    &Method::ConnectionUpdateSecretOk(ConnectionUpdateSecretOk {}),
                );
                Ok(Flow::Continue)
            }
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(Flow::Continue),
            other => Err(AmqpException::new(
                rc::CHANNEL_ERROR,
                "unexpected method in connection state running",
            )
            .on(&other)),
        }
    }

    fn handle_channel_method(&mut self, id: u16, method: Method) -> Result<(), AmqpException> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return match method {
                // RabbitMQ limits how many channels are open, not their numbers.
                Method::ChannelOpen(_) if self.channels.len() >= usize::from(self.channel_max) => {
                    Err(AmqpException::new(
                        rc::NOT_ALLOWED,
                        format!(
                            "number of channels opened ({}) has reached the negotiated channel_max ({})",
                            self.channels.len(),
                            self.channel_max
                        ),
                    )
                    .on(&method))
                }
                Method::ChannelOpen(_) => {
                    self.open_channel(id);
                    Ok(())
                }
                other => Err(AmqpException::new(
                    rc::CHANNEL_ERROR,
                    format!("expected 'channel.open' on channel {id}"),
                )
                .on(&other)),
            };
        };
        if ch.closing {
            match method {
                Method::ChannelCloseOk(_) => {
                    self.channels.remove(&id);
                }
                Method::ChannelClose(_) => {
                    self.outbound
                        .send_method(id, &Method::ChannelCloseOk(ChannelCloseOk {}));
                }
                _ => {}
            }
            return Ok(());
        }
        if ch.pending.is_some() && !matches!(method, Method::ChannelClose(_)) {
            // Reported against the publish whose content was cut short, as RabbitMQ does.
            return Err(AmqpException::new(
                rc::UNEXPECTED_FRAME,
                format!(
                    "expected content header for class 60, got non content header frame instead ('{}')",
                    method.name()
                ),
            )
            .on_ids(60, 40));
        }
        match method {
            Method::ChannelOpen(m) => Err(AmqpException::new(
                rc::CHANNEL_ERROR,
                "second 'channel.open' seen",
            )
            .on(&Method::ChannelOpen(m))),
            Method::ChannelClose(_) => {
                self.teardown_channel(id);
                self.channels.remove(&id);
                self.outbound
                    .send_method(id, &Method::ChannelCloseOk(ChannelCloseOk {}));
                Ok(())
            }
            Method::ChannelCloseOk(_) => Ok(()),
            other => {
                let ids = (other.class_id(), other.method_id());
                let handled = match self.channel_cx(id) {
                    Some((ch, mut cx)) => {
                        let r = ch.handle(&mut cx, other);
                        if let Some(p) = ch.awaiting.take() {
                            self.awaiting = Some((id, ids, p));
                        }
                        r
                    }
                    None => Ok(()),
                };
                match handled {
                    Err(ex) if !ex.is_hard() => {
                        let ex = if ex.class_id == 0 {
                            ex.on_ids(ids.0, ids.1)
                        } else {
                            ex
                        };
                        self.close_channel_with(id, &ex);
                        Ok(())
                    }
                    Err(ex) if ex.class_id == 0 => Err(ex.on_ids(ids.0, ids.1)),
                    other => other,
                }
            }
        }
    }

    fn open_channel(&mut self, id: u16) {
        let ch = Channel::new(id, &self.outbound, self.capabilities.consumer_cancel_notify);
        self.outbound.open_channel(id);
        self.registered.count_channel_opened();
        self.channels.insert(id, ch);
        self.outbound.send_method(
            id,
            &Method::ChannelOpenOk(ChannelOpenOk {
                channel_id: LongString::default(),
            }),
        );
    }

    /// Closes a channel because of a soft error: stop it, give its messages back, tell the
    /// client, and ignore it until channel.close-ok.
    pub(crate) fn close_channel_with(&mut self, id: u16, ex: &AmqpException) {
        self.teardown_channel(id);
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.closing = true;
        }
        self.outbound.send_method(
            id,
            &Method::ChannelClose(ChannelClose {
                reply_code: ex.code,
                reply_text: ShortString::truncated(&ex.text),
                class_id: ex.class_id,
                method_id: ex.method_id,
            }),
        );
    }

    /// Cancels a channel's consumers and requeues its unacked messages.
    pub(crate) fn teardown_channel(&mut self, id: u16) {
        if let Some((ch, cx)) = self.channel_cx(id) {
            ch.teardown(&cx);
        }
    }

    /// Reports what each confirm-mode channel has routed since the last flush (one
    /// basic.ack per channel for all of it that does not wait for the disk). Called after
    /// each read batch.
    pub(crate) fn flush_confirms(&mut self) {
        for ch in self.channels.values_mut() {
            ch.flush_confirms(&self.outbound);
        }
    }

    /// consumer_timeout: a channel whose oldest unacknowledged delivery is older than the
    /// timeout is closed with 406, in RabbitMQ's words (its deliveries are requeued), as
    /// RabbitMQ 3.10 does for classic queues.
    pub(crate) fn check_consumer_timeouts(&mut self) {
        let Some(timeout) = self.config.consumer_timeout else {
            return;
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let now = crate::coarse_clock::now_ms();
        let expired: Vec<u16> = self
            .channels
            .values()
            .filter(|ch| !ch.closing)
            .filter(|ch| {
                self.outbound
                    .with_channel(ch.number, |s| s.oldest_unacked())
                    .flatten()
                    .is_some_and(|at| now.saturating_sub(at) > timeout_ms)
            })
            .map(|ch| ch.number)
            .collect();
        for id in expired {
            tracing::warn!(peer = %self.peer, channel = id, "consumer acknowledgement timed out after {timeout_ms} ms; closing the channel");
            let ex = AmqpException::new(
                rc::PRECONDITION_FAILED,
                format!(
                    "delivery acknowledgement on channel {id} timed out. Timeout value used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
                ),
            );
            self.close_channel_with(id, &ex);
        }
    }

    fn requeue_orphans(&mut self) {
        let orphans = self.outbound.take_orphans();
        if !orphans.is_empty() {
            // Their channel was gone: failed deliveries, as the channel's own unacked ones.
            requeue_all(orphans, true);
        }
    }

    /// Ends the connection: every channel torn down, exclusive queues deleted.
    pub(crate) fn teardown(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.teardown_channel(id);
        }
        self.channels.clear();
        self.requeue_orphans();
        self.vhost.connection_closed(self.id);
    }
}

async fn tick_opt(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Handshake-time failures are answered on channel 0 before the socket closes.
pub(crate) fn close_frame(ex: &AmqpException) -> BytesMut {
    let mut buf = BytesMut::new();
    pier_wire::encode_method_frame(
        &mut buf,
        0,
        &Method::ConnectionClose(ConnectionClose {
            reply_code: ex.code,
            reply_text: ShortString::truncated(&ex.text),
            class_id: ex.class_id,
            method_id: ex.method_id,
        }),
    );
    buf
}
