//! One multiplexed connection to a peer: a writer task, a reader task, the requests in flight
//! in both directions, and the message lane.
//!
//! ```text
//!  call() ─ outstanding permit (≤ MAX_OUTSTANDING) ─► out queue (≤ OUT_QUEUE frames) ─┐
//!                        pending[id] ◄─ response ──────────────────────── reader      │ writer:
//!  reader ─ request ─► inbound permit (≤ MAX_INBOUND; none free: stop reading)        │ control
//!                      ─► handler task ─► response ─► out queue                       │ frames
//!                                                                                    │ first
//!  lane_send() ─► lane queue ─► lane pump (≤ the peer's lane credit) ─► lane out (≤ 64) ┘
//!  reader ─ lane frame ─► lane inbox ─► lane task: Handler::lane, in order ─► lane credit back
//! ```
//!
//! Every queue is bounded: a peer that stops reading fills our out queue and our callers
//! wait (then time out); a peer that sends faster than we handle finds its requests waiting
//! in its socket, because we stop reading. Neither can make this node buffer without limit.
//!
//! **The lane** carries the message path (publishes, deliveries, acks, confirms: see
//! `queues/`): one-way frames, handled strictly in arrival order by one task per connection,
//! never by the reader itself. It has its own flow control so that it can neither starve nor
//! block Raft and the other requests on the same connection: a side sends lane frames only
//! while it holds lane credit (bytes the peer granted, `LANE_WINDOW` at the start), and grants
//! credit back as its lane task finishes frames. The reader therefore never waits for the lane
//! (what arrives always fits the window), and the writer sends control frames before lane
//! frames. Lane senders never block: past `LANE_HIGH` bytes queued, [`Link::lane_congested`]
//! tells them to stop (a queue's proxy consumer stops delivering; publishers are held back by
//! their connection credit), and [`Link::when_lane_drains`] wakes them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::frame::{self, Frame, Kind};
use super::{Handler, TransportError};
use crate::raft::PeerNode;
use crate::rpc::{Request, Response};

/// Our requests waiting for an answer on one connection.
const MAX_OUTSTANDING: usize = 256;
/// The peer's requests we handle at once on one connection.
const MAX_INBOUND: usize = 64;
/// Frames waiting for the writer.
const OUT_QUEUE: usize = 256;
/// Lane frames handed to the writer at once.
const LANE_OUT: usize = 64;
/// Frames up to this size are gathered into one write...
const COALESCE_FRAME: usize = 16 << 10;
/// ...of up to this many bytes.
const COALESCE_BYTES: usize = 256 << 10;
/// Lane bytes a side may send before the other grants more.
pub const LANE_WINDOW: u64 = 16 << 20;
/// Lane bytes queued here (not yet sent) above which senders are told to stop.
pub const LANE_HIGH: u64 = 32 << 20;

static NEXT_LINK_ID: AtomicU64 = AtomicU64::new(1);

/// A connection's read half: TCP, or TLS over TCP.
pub(super) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// A connection's write half: TCP, or TLS over TCP.
pub(super) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A handshaken connection: its halves and what was read past the handshake.
pub(super) struct Conn {
    pub read: ReadHalf,
    pub leftover: BytesMut,
    pub write: WriteHalf,
}

type Waker = Box<dyn FnOnce() + Send>;

/// Lane frames waiting for credit.
#[derive(Default)]
struct LaneOut {
    queue: VecDeque<Bytes>,
    bytes: u64,
    /// Called once the queue is below half of `LANE_HIGH`.
    drained: Vec<Waker>,
}

pub struct Link {
    pub peer: PeerNode,
    pub peer_id: u64,
    /// This connection's number on this node (unique for the process): a new one for each
    /// connection, so what belongs to one connection is never mistaken for the next's.
    pub id: u64,
    /// The node id of the side that dialled (decides which of two racing connections stays).
    pub dialer: u64,
    out: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    outstanding: Semaphore,
    closed: AtomicBool,
    close_signal: Notify,
    lane: Mutex<LaneOut>,
    lane_wake: Notify,
    /// Lane bytes the peer lets us send now.
    lane_credit: AtomicU64,
    lane_credit_wake: Notify,
    /// Lane bytes received and not yet handled.
    lane_inbound: AtomicU64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer)
            .field("id", &self.id)
            .field("dialer", &self.dialer)
            .finish_non_exhaustive()
    }
}

/// Removes a pending request when the call ends early (timeout, or the caller gave up).
struct PendingGuard<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.link
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Link {
    /// Starts the reader, writer and lane tasks of an established (handshaken) connection.
    /// `on_close` runs once when the connection ends.
    pub(super) fn start(
        peer: PeerNode,
        dialer: u64,
        conn: Conn,
        handler: Arc<dyn Handler>,
        on_close: impl FnOnce(&Arc<Link>) + Send + 'static,
    ) -> Arc<Link> {
        let Conn {
            read,
            leftover,
            write,
        } = conn;
        let peer_id = crate::raft::node_id(&peer.name);
        let (out, rx) = mpsc::channel(OUT_QUEUE);
        let (lane_tx, lane_rx) = mpsc::channel(LANE_OUT);
        let link = Arc::new(Link {
            peer,
            peer_id,
            id: NEXT_LINK_ID.fetch_add(1, Ordering::Relaxed),
            dialer,
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            outstanding: Semaphore::new(MAX_OUTSTANDING),
            closed: AtomicBool::new(false),
            close_signal: Notify::new(),
            lane: Mutex::new(LaneOut::default()),
            lane_wake: Notify::new(),
            lane_credit: AtomicU64::new(LANE_WINDOW),
            lane_credit_wake: Notify::new(),
            lane_inbound: AtomicU64::new(0),
        });
        let writer = tokio::spawn(write_loop(Arc::clone(&link), write, rx, lane_rx));
        let pump = tokio::spawn(lane_pump(Arc::clone(&link), lane_tx));
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let lane_task = tokio::spawn(lane_loop(Arc::clone(&link), Arc::clone(&handler), inbox_rx));
        let l = Arc::clone(&link);
        tokio::spawn(async move {
            let r = read_loop(
                Arc::clone(&l),
                read,
                leftover,
                Arc::clone(&handler),
                inbox_tx,
            )
            .await;
            if let Err(e) = r {
                if !l.closed.load(Ordering::Acquire) {
                    tracing::info!(peer = %l.peer, "cluster link closed: {e}");
                }
            }
            l.close();
            writer.abort();
            pump.abort();
            // The lane task ends once it has handled what arrived (its inbox is closed).
            let _ = lane_task.await;
            l.lane_clear();
            handler.closed(&l);
            on_close(&l);
        });
        link
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends the connection: callers waiting for answers get `Closed`.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.close_signal.notify_waiters();
            self.close_signal.notify_one();
            self.lane_wake.notify_one();
            self.lane_credit_wake.notify_one();
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    /// Sends `request` and waits for its answer, at most `timeout` in all.
    ///
    /// Cancel safety: dropping the future forgets the request (an answer that still comes
    /// is discarded).
    pub async fn call(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        if self.is_closed() {
            return Err(TransportError::Closed);
        }
        let _permit = tokio::time::timeout_at(deadline, self.outstanding.acquire())
            .await
            .map_err(|_| TransportError::Timeout)?
            .map_err(|_| TransportError::Closed)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        frame::encode(Kind::Request, id, request, &mut buf)?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let _guard = PendingGuard { link: self, id };
        tokio::time::timeout_at(deadline, self.out.send(buf.freeze()))
            .await
            .map_err(|_| TransportError::Timeout)?
            .map_err(|_| TransportError::Closed)?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(TransportError::Closed),
            Err(_) => Err(TransportError::Timeout),
        }
    }

    async fn respond(&self, id: u64, response: &Response) {
        let mut buf = BytesMut::new();
        match frame::encode(Kind::Response, id, response, &mut buf) {
            Ok(()) => {
                let _ = self.out.send(buf.freeze()).await;
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, "dropping a response that does not encode: {e}")
            }
        }
    }

    // ---- the lane ----

    fn lane_state(&self) -> MutexGuard<'_, LaneOut> {
        self.lane.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a lane frame (made with `frame::begin(Kind::Lane, ..)` and `frame::finish`).
    /// Never blocks; frames go out in the order queued. False when the link is closed.
    pub fn lane_send(&self, frame: Bytes) -> bool {
        if self.is_closed() {
            return false;
        }
        {
            let mut lane = self.lane_state();
            lane.bytes += frame.len() as u64;
            lane.queue.push_back(frame);
        }
        self.lane_wake.notify_one();
        true
    }

    /// Too much is queued on the lane: senders that can wait should (see `when_lane_drains`).
    pub fn lane_congested(&self) -> bool {
        self.lane_state().bytes >= LANE_HIGH
    }

    /// Runs `wake` once the lane is below half its high mark (at once if it is), or when the
    /// link closes.
    pub fn when_lane_drains(&self, wake: Box<dyn FnOnce() + Send>) {
        let mut lane = self.lane_state();
        if lane.bytes < LANE_HIGH / 2 || self.is_closed() {
            drop(lane);
            wake();
        } else {
            lane.drained.push(wake);
        }
    }

    /// Lane bytes queued here and not yet sent.
    pub fn lane_queued(&self) -> u64 {
        self.lane_state().bytes
    }

    /// The link is gone: queued lane frames are dropped, waiting senders woken.
    fn lane_clear(&self) {
        let wakers = {
            let mut lane = self.lane_state();
            lane.queue.clear();
            lane.bytes = 0;
            std::mem::take(&mut lane.drained)
        };
        for w in wakers {
            w();
        }
    }

    /// The peer granted `bytes` more lane credit.
    fn lane_granted(&self, bytes: u64) {
        self.lane_credit.fetch_add(bytes, Ordering::AcqRel);
        self.lane_credit_wake.notify_one();
    }
}

/// Moves lane frames to the writer while the peer's credit allows.
async fn lane_pump(link: Arc<Link>, lane_tx: mpsc::Sender<Bytes>) {
    loop {
        let next = {
            let mut lane = link.lane_state();
            lane.queue.pop_front()
        };
        let Some(frame) = next else {
            if link.is_closed() {
                return;
            }
            let woken = link.lane_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if link.lane_state().queue.is_empty() {
                woken.await;
            }
            continue;
        };
        let len = frame.len() as u64;
        // A frame goes out while any credit is left (one large message may exceed it).
        while link.lane_credit.load(Ordering::Acquire) == 0 {
            if link.is_closed() {
                return;
            }
            let woken = link.lane_credit_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if link.lane_credit.load(Ordering::Acquire) == 0 {
                woken.await;
            }
        }
        let _ = link
            .lane_credit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(len))
            });
        if lane_tx.send(frame).await.is_err() {
            return;
        }
        let wakers = {
            let mut lane = link.lane_state();
            lane.bytes = lane.bytes.saturating_sub(len);
            if lane.bytes < LANE_HIGH / 2 && !lane.drained.is_empty() {
                std::mem::take(&mut lane.drained)
            } else {
                Vec::new()
            }
        };
        for w in wakers {
            w();
        }
    }
}

/// Handles lane frames in arrival order and grants their bytes back as credit.
async fn lane_loop(
    link: Arc<Link>,
    handler: Arc<dyn Handler>,
    mut inbox: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if inbox.recv_many(&mut batch, 64).await == 0 {
            return;
        }
        let mut bytes = 0u64;
        for payload in batch.drain(..) {
            bytes += (payload.len() + 13) as u64;
            handler.lane(&link, payload);
        }
        handler.lane_batch_done(&link);
        link.lane_inbound.fetch_sub(bytes, Ordering::AcqRel);
        if !link.is_closed() {
            if let Ok(f) = frame::finish(frame::begin(Kind::LaneCredit, bytes, 0)) {
                let _ = link.out.send(f).await;
            }
        }
    }
}

async fn write_loop(
    link: Arc<Link>,
    mut write: WriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    mut lane_rx: mpsc::Receiver<Bytes>,
) {
    let mut batch = Vec::with_capacity(128);
    let mut out: Vec<u8> = Vec::with_capacity(COALESCE_BYTES);
    loop {
        // Control frames (Raft, requests, answers, lane credit) before lane frames.
        let mut n = 0;
        while n < 64 {
            match rx.try_recv() {
                Ok(b) => {
                    batch.push(b);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        while n < 128 {
            match lane_rx.try_recv() {
                Ok(b) => {
                    batch.push(b);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            tokio::select! {
                biased;
                () = link.close_signal.notified() => break,
                r = rx.recv() => match r {
                    Some(b) => batch.push(b),
                    None => break,
                },
                r = lane_rx.recv() => match r {
                    Some(b) => batch.push(b),
                    None => break,
                },
            }
            continue;
        }
        // Small frames (heartbeats, answers, a delivery of a small message) are copied into
        // one buffer and go in one write: a frame per syscall cost more than the copy.
        for b in batch.drain(..) {
            if b.len() <= COALESCE_FRAME && out.len() + b.len() <= COALESCE_BYTES {
                out.extend_from_slice(&b);
                continue;
            }
            if !write_out(&link, &mut write, &mut out).await {
                return;
            }
            if b.len() <= COALESCE_FRAME {
                out.extend_from_slice(&b);
            } else if let Err(e) = write.write_all(&b).await {
                tracing::debug!(peer = %link.peer, "cluster link write failed: {e}");
                link.close();
                return;
            }
        }
        if !write_out(&link, &mut write, &mut out).await {
            return;
        }
        if write.flush().await.is_err() {
            link.close();
            return;
        }
    }
    let _ = write.shutdown().await;
}

/// Writes what `write_loop` gathered in `out`; false (and the link closed) when the write
/// failed.
async fn write_out(link: &Link, write: &mut WriteHalf, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let r = write.write_all(out).await;
    out.clear();
    if let Err(e) = r {
        tracing::debug!(peer = %link.peer, "cluster link write failed: {e}");
        link.close();
        return false;
    }
    true
}

async fn read_loop(
    link: Arc<Link>,
    mut read: ReadHalf,
    mut buf: BytesMut,
    handler: Arc<dyn Handler>,
    inbox: mpsc::UnboundedSender<Bytes>,
) -> Result<(), TransportError> {
    let inbound = Arc::new(Semaphore::new(MAX_INBOUND));
    loop {
        while let Some(f) = frame::decode(&mut buf)? {
            match f.kind {
                Kind::Response => {
                    let tx = link
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&f.id);
                    let response: Response = frame::payload(&f)?;
                    if let Some(tx) = tx {
                        let _ = tx.send(response);
                    }
                }
                Kind::Request => {
                    // Waits (and so stops reading) while MAX_INBOUND requests are handled.
                    let permit = Arc::clone(&inbound)
                        .acquire_owned()
                        .await
                        .map_err(|_| TransportError::Closed)?;
                    spawn_request(Arc::clone(&link), Arc::clone(&handler), f, permit);
                }
                // Within the window the peer was granted: the inbox never holds more than
                // that (plus one large message), so this does not wait.
                Kind::Lane => {
                    let size = (f.payload.len() + 13) as u64;
                    let held = link.lane_inbound.fetch_add(size, Ordering::AcqRel) + size;
                    if held > LANE_WINDOW + frame::MAX_LANE_FRAME as u64 {
                        return Err(TransportError::Protocol(
                            "the peer sent lane frames beyond its credit".into(),
                        ));
                    }
                    if inbox.send(f.payload).is_err() {
                        return Err(TransportError::Closed);
                    }
                }
                Kind::LaneCredit => link.lane_granted(f.id),
                Kind::Hello | Kind::Welcome | Kind::Refused => {
                    return Err(TransportError::Protocol(
                        "handshake frame on an established connection".into(),
                    ))
                }
            }
        }
        if link.is_closed() {
            return Ok(());
        }
        let n = tokio::select! {
            r = read.read_buf(&mut buf) => r.map_err(|e| TransportError::Io(e.to_string()))?,
            () = link.close_signal.notified() => return Ok(()),
        };
        if n == 0 {
            return Err(TransportError::Closed);
        }
    }
}

fn spawn_request(
    link: Arc<Link>,
    handler: Arc<dyn Handler>,
    f: Frame,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        let response = match frame::payload::<Request>(&f) {
            Ok(req) => handler.handle(link.peer.clone(), req).await,
            Err(e) => Response::Refused(format!("request does not decode: {e}")),
        };
        link.respond(f.id, &response).await;
        drop(permit);
    });
}
