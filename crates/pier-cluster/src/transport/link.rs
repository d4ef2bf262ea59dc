//! One multiplexed connection to a peer: a writer task, a reader task, and the requests in
//! flight in both directions.
//!
//! ```text
//!  call() ─ outstanding permit (≤ MAX_OUTSTANDING) ─► out queue (≤ OUT_QUEUE frames) ─► writer
//!                        pending[id] ◄─ response ───────────────────────────────────── reader
//!  reader ─ request ─► inbound permit (≤ MAX_INBOUND; none free: stop reading) ─► handler task
//!                                               response ─► out queue ─► writer
//! ```
//!
//! Every queue is bounded: a peer that stops reading fills our out queue and our callers
//! wait (then time out); a peer that sends faster than we handle finds its requests waiting
//! in its socket, because we stop reading. Neither can make this node buffer without limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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

/// A handshaken TCP connection: its halves and what was read past the handshake.
pub(super) struct Conn {
    pub read: OwnedReadHalf,
    pub leftover: BytesMut,
    pub write: OwnedWriteHalf,
}

pub struct Link {
    pub peer: PeerNode,
    pub peer_id: u64,
    /// The node id of the side that dialled (decides which of two racing connections stays).
    pub dialer: u64,
    out: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    outstanding: Semaphore,
    closed: AtomicBool,
    close_signal: Notify,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer)
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
    /// Starts the reader and writer tasks of an established (handshaken) connection.
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
        let link = Arc::new(Link {
            peer,
            peer_id,
            dialer,
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            outstanding: Semaphore::new(MAX_OUTSTANDING),
            closed: AtomicBool::new(false),
            close_signal: Notify::new(),
        });
        let writer = tokio::spawn(write_loop(Arc::clone(&link), write, rx));
        let l = Arc::clone(&link);
        tokio::spawn(async move {
            let r = read_loop(Arc::clone(&l), read, leftover, handler).await;
            if let Err(e) = r {
                if !l.closed.load(Ordering::Acquire) {
                    tracing::info!(peer = %l.peer, "cluster link closed: {e}");
                }
            }
            l.close();
            writer.abort();
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
}

async fn write_loop(link: Arc<Link>, mut write: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(64);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
            }
            () = link.close_signal.notified() => break,
        }
        for b in batch.drain(..) {
            if let Err(e) = write.write_all(&b).await {
                tracing::debug!(peer = %link.peer, "cluster link write failed: {e}");
                link.close();
                return;
            }
        }
        if write.flush().await.is_err() {
            link.close();
            return;
        }
    }
    let _ = write.shutdown().await;
}

async fn read_loop(
    link: Arc<Link>,
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    handler: Arc<dyn Handler>,
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
