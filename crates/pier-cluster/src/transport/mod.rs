//! The peer transport: one multiplexed TCP connection per pair of nodes, carrying Raft's
//! RPCs and the application's in both directions.
//!
//! ```text
//!  dial ──► Hello{protocol, node, cluster_id} ──►  accept: same cluster (or a fresh node)?
//!       ◄── Welcome{…} | Refused{reason}       ◄──          not itself? same protocol?
//!  then frames: Request{id} / Response{id}, both ways (link.rs)
//! ```
//!
//! Either node may dial; when both do at once, each side keeps the connection dialled by
//! the node with the smaller id and closes the other, so a pair ends up with one. A failed
//! dial backs off (100 ms doubling to 2 s, with jitter) before the address is tried again.
//! A node whose data belongs to another cluster is refused at the handshake, with a reason
//! both sides log.
//!
//! With [`ClusterTls`] (the node has a `[tls]` section with a CA) every connection is mutual
//! TLS before the hello: each node presents its certificate as server and as client and
//! verifies the other's against the CA (and, dialling, the peer address's host name), so
//! only nodes holding a certificate of that CA join, and nothing crosses the wire in clear.
//!
//! Besides requests and answers, a connection carries the message lane (link.rs): ordered
//! one-way frames with their own credit, for the message path between nodes (`queues/`).

pub mod frame;
mod link;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use self::frame::{Frame, FrameError, Kind};
use self::link::Conn;
pub use self::link::Link;
use self::link::{ReadHalf, WriteHalf};
pub use self::tls::ClusterTls;
use crate::raft::{node_id, PeerNode};
use crate::rpc::{Hello, Request, Response, PROTOCOL_VERSION};

/// Handles what peers send (implemented by the cluster node).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        from: PeerNode,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Response> + Send + 'static>>;

    /// One lane frame's payload, in arrival order (one task per connection calls this).
    fn lane(&self, _link: &Arc<Link>, _payload: bytes::Bytes) {}

    /// The lane frames at hand were handled (a batch ends).
    fn lane_batch_done(&self, _link: &Arc<Link>) {}

    /// The connection ended (after its last lane frame was handled).
    fn closed(&self, _link: &Arc<Link>) {}
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("{addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("refused by {addr}: {reason}")]
    Refused { addr: String, reason: String },
    #[error("the connection closed")]
    Closed,
    #[error("no answer in time")]
    Timeout,
    #[error("I/O: {0}")]
    Io(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// How long a dial and its handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What this node knows about an address it has dialled or been dialled from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    pub addr: String,
    pub node: Option<PeerNode>,
    pub cluster_id: Option<String>,
    /// The address is this node's own.
    pub is_self: bool,
    pub connected: bool,
    /// The last dial or handshake error, for status and logs.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Backoff {
    next: Option<Instant>,
    delay: Duration,
}

struct Inner {
    me: PeerNode,
    me_id: u64,
    /// Outgoing connections start from this address (the node's own, when it binds one),
    /// so that peers, and firewall rules, see which node a connection comes from.
    source: Option<std::net::IpAddr>,
    cluster_id: RwLock<Option<String>>,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    peers: Mutex<HashMap<String, PeerState>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    handler: OnceLock<Arc<dyn Handler>>,
    tls: Option<ClusterTls>,
}

/// The node's transport (cheap to clone).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("me", &self.inner.me)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Transport {
    pub fn new(
        me: PeerNode,
        cluster_id: Option<String>,
        source: Option<std::net::IpAddr>,
        tls: Option<ClusterTls>,
    ) -> Self {
        let me_id = node_id(&me.name);
        Transport {
            inner: Arc::new(Inner {
                me,
                me_id,
                source: source.filter(|ip| !ip.is_unspecified()),
                cluster_id: RwLock::new(cluster_id),
                links: Mutex::new(HashMap::new()),
                peers: Mutex::new(HashMap::new()),
                backoff: Mutex::new(HashMap::new()),
                handler: OnceLock::new(),
                tls,
            }),
        }
    }

    pub fn me(&self) -> &PeerNode {
        &self.inner.me
    }

    pub fn set_handler(&self, handler: Arc<dyn Handler>) {
        let _ = self.inner.handler.set(handler);
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.inner
            .cluster_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The node formed or joined a cluster: from now on peers of other clusters are refused.
    pub fn set_cluster_id(&self, id: Option<String>) {
        *self
            .inner
            .cluster_id
            .write()
            .unwrap_or_else(|p| p.into_inner()) = id;
    }

    /// Everything known about addresses dialled or seen, by address.
    pub fn peers(&self) -> Vec<PeerState> {
        let mut v: Vec<PeerState> = lock(&self.inner.peers).values().cloned().collect();
        let links = lock(&self.inner.links);
        for p in &mut v {
            p.connected = p
                .node
                .as_ref()
                .is_some_and(|n| links.get(&node_id(&n.name)).is_some_and(|l| !l.is_closed()));
        }
        v.sort_by(|a, b| a.addr.cmp(&b.addr));
        v
    }

    pub fn peer(&self, addr: &str) -> Option<PeerState> {
        self.peers().into_iter().find(|p| p.addr == addr)
    }

    /// Whether a live connection to node `id` exists.
    pub fn is_connected(&self, id: u64) -> bool {
        lock(&self.inner.links)
            .get(&id)
            .is_some_and(|l| !l.is_closed())
    }

    /// Closes every connection (shutdown; also used by tests to simulate a restart).
    pub fn close_all(&self) {
        let links: Vec<Arc<Link>> = lock(&self.inner.links).drain().map(|(_, l)| l).collect();
        for l in links {
            l.close();
        }
    }

    fn note(&self, addr: &str, f: impl FnOnce(&mut PeerState)) {
        let mut peers = lock(&self.inner.peers);
        let p = peers.entry(addr.to_owned()).or_insert_with(|| PeerState {
            addr: addr.to_owned(),
            ..PeerState::default()
        });
        f(p);
    }

    /// Serves inbound connections until the listener fails.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let t = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = t.accept(stream).await {
                            tracing::debug!("cluster connection refused: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("cluster listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Checks a peer's hello against ours; the reason to refuse, if any.
    fn refusal(&self, theirs: &Hello) -> Option<String> {
        if theirs.protocol != PROTOCOL_VERSION {
            return Some(format!(
                "node {} speaks cluster protocol {}, this node {PROTOCOL_VERSION}",
                theirs.node, theirs.protocol
            ));
        }
        if theirs.node.name == self.inner.me.name {
            return Some(format!("{} is this node itself", theirs.node.addr));
        }
        if let (Some(ours), Some(their_id)) = (self.cluster_id(), &theirs.cluster_id) {
            if &ours != their_id {
                return Some(format!(
                    "node {} has the data of another cluster ({their_id}; this is cluster \
                     {ours}): a node with another cluster's data cannot join. Stop it and \
                     delete its data directory to add it as a new member",
                    theirs.node
                ));
            }
        }
        None
    }

    fn hello(&self) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            node: self.inner.me.clone(),
            cluster_id: self.cluster_id(),
        }
    }

    async fn accept(&self, stream: TcpStream) -> Result<(), TransportError> {
        stream
            .set_nodelay(true)
            .map_err(|e| TransportError::Io(e.to_string()))?;
        let (mut read, mut write) = match &self.inner.tls {
            None => split_tcp(stream),
            Some(tls) => tokio::time::timeout(CONNECT_TIMEOUT, tls.accept(stream))
                .await
                .map_err(|_| TransportError::Timeout)??,
        };
        let mut buf = BytesMut::with_capacity(4096);
        let f = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut read, &mut buf))
            .await
            .map_err(|_| TransportError::Timeout)??;
        if f.kind != Kind::Hello {
            return Err(TransportError::Protocol("expected a hello".into()));
        }
        let theirs: Hello = frame::payload(&f)?;
        let mut out = BytesMut::new();
        if let Some(reason) = self.refusal(&theirs) {
            tracing::warn!(peer = %theirs.node, "refusing a cluster connection: {reason}");
            frame::encode(Kind::Refused, 0, &reason, &mut out)?;
            let _ = write.write_all(&out).await;
            return Err(TransportError::Refused {
                addr: theirs.node.addr,
                reason,
            });
        }
        frame::encode(Kind::Welcome, 0, &self.hello(), &mut out)?;
        write
            .write_all(&out)
            .await
            .map_err(|e| TransportError::Io(e.to_string()))?;
        let peer_id = node_id(&theirs.node.name);
        self.note(&theirs.node.addr, |p| {
            p.node = Some(theirs.node.clone());
            p.cluster_id.clone_from(&theirs.cluster_id);
            p.last_error = None;
        });
        self.register(
            theirs.node,
            peer_id,
            Conn {
                read,
                leftover: buf,
                write,
            },
        );
        Ok(())
    }

    /// Dials `addr` (unless it failed moments ago: see the backoff) and handshakes.
    pub async fn connect(&self, addr: &str) -> Result<Arc<Link>, TransportError> {
        {
            let backoff = lock(&self.inner.backoff);
            if let Some(next) = backoff.get(addr).and_then(|b| b.next) {
                if Instant::now() < next {
                    let reason = self
                        .peer(addr)
                        .and_then(|p| p.last_error)
                        .unwrap_or_else(|| "backing off after a failed connection".into());
                    return Err(TransportError::Unreachable {
                        addr: addr.to_owned(),
                        reason,
                    });
                }
            }
        }
        let r = tokio::time::timeout(CONNECT_TIMEOUT, self.dial(addr))
            .await
            .unwrap_or_else(|_| {
                Err(TransportError::Unreachable {
                    addr: addr.to_owned(),
                    reason: "connection timed out".into(),
                })
            });
        let mut backoff = lock(&self.inner.backoff);
        let b = backoff.entry(addr.to_owned()).or_default();
        match &r {
            Ok(_) => *b = Backoff::default(),
            Err(e) => {
                b.delay = (b.delay * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                let jitter = rand::random::<f64>() * 0.5 + 0.75;
                b.next = Some(Instant::now() + b.delay.mul_f64(jitter));
                let msg = e.to_string();
                drop(backoff);
                self.note(addr, |p| p.last_error = Some(msg));
            }
        }
        r
    }

    async fn dial(&self, addr: &str) -> Result<Arc<Link>, TransportError> {
        let unreachable = |e: std::io::Error| TransportError::Unreachable {
            addr: addr.to_owned(),
            reason: e.to_string(),
        };
        let stream = match self.inner.source {
            None => TcpStream::connect(addr).await.map_err(unreachable)?,
            Some(ip) => {
                let target = tokio::net::lookup_host(addr)
                    .await
                    .map_err(unreachable)?
                    .find(|a| a.is_ipv4() == ip.is_ipv4())
                    .ok_or_else(|| TransportError::Unreachable {
                        addr: addr.to_owned(),
                        reason: format!("no address of the family of {ip}"),
                    })?;
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
                .map_err(unreachable)?;
                socket
                    .bind(std::net::SocketAddr::new(ip, 0))
                    .map_err(unreachable)?;
                socket.connect(target).await.map_err(unreachable)?
            }
        };
        stream.set_nodelay(true).map_err(unreachable)?;
        let (mut read, mut write) = match &self.inner.tls {
            None => split_tcp(stream),
            Some(tls) => tls.connect(addr, stream).await?,
        };
        let mut out = BytesMut::new();
        frame::encode(Kind::Hello, 0, &self.hello(), &mut out)?;
        write
            .write_all(&out)
            .await
            .map_err(|e| TransportError::Io(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(4096);
        let f = read_frame(&mut read, &mut buf).await?;
        match f.kind {
            Kind::Refused => {
                let reason: String = frame::payload(&f)?;
                if reason.ends_with("is this node itself") {
                    self.note(addr, |p| p.is_self = true);
                }
                Err(TransportError::Refused {
                    addr: addr.to_owned(),
                    reason,
                })
            }
            Kind::Welcome => {
                let theirs: Hello = frame::payload(&f)?;
                if theirs.node.name == self.inner.me.name {
                    self.note(addr, |p| p.is_self = true);
                    return Err(TransportError::Refused {
                        addr: addr.to_owned(),
                        reason: "this node itself".into(),
                    });
                }
                self.note(addr, |p| {
                    p.node = Some(theirs.node.clone());
                    p.cluster_id.clone_from(&theirs.cluster_id);
                    p.last_error = None;
                });
                if let Some(reason) = self.refusal(&theirs) {
                    tracing::warn!(peer = %theirs.node, "not connecting: {reason}");
                    self.note(addr, |p| p.last_error = Some(reason.clone()));
                    return Err(TransportError::Refused {
                        addr: addr.to_owned(),
                        reason,
                    });
                }
                Ok(self.register(
                    theirs.node,
                    self.inner.me_id,
                    Conn {
                        read,
                        leftover: buf,
                        write,
                    },
                ))
            }
            _ => Err(TransportError::Protocol(
                "expected welcome or refused".into(),
            )),
        }
    }

    /// Starts a handshaken connection and keeps it, or the other one to the same peer.
    fn register(&self, peer: PeerNode, dialer: u64, conn: Conn) -> Arc<Link> {
        /// Until the node's handler is set (the node is still starting), a connection
        /// refuses requests and drops lane frames; from then on it hands everything to the
        /// handler. Looked up per call: a peer that connected early (all nodes restarting
        /// at once) must not be refused for the connection's whole life.
        struct Deferred(Weak<Inner>);
        impl Deferred {
            fn handler(&self) -> Option<Arc<dyn Handler>> {
                self.0.upgrade()?.handler.get().cloned()
            }
        }
        impl Handler for Deferred {
            fn handle(
                &self,
                from: PeerNode,
                request: Request,
            ) -> Pin<Box<dyn Future<Output = Response> + Send + 'static>> {
                match self.handler() {
                    Some(h) => h.handle(from, request),
                    None => Box::pin(async { Response::Refused("the node is starting".into()) }),
                }
            }

            fn lane(&self, link: &Arc<Link>, payload: bytes::Bytes) {
                if let Some(h) = self.handler() {
                    h.lane(link, payload);
                }
            }

            fn lane_batch_done(&self, link: &Arc<Link>) {
                if let Some(h) = self.handler() {
                    h.lane_batch_done(link);
                }
            }

            fn closed(&self, link: &Arc<Link>) {
                if let Some(h) = self.handler() {
                    h.closed(link);
                }
            }
        }
        let handler: Arc<dyn Handler> = match self.inner.handler.get() {
            Some(h) => Arc::clone(h),
            None => Arc::new(Deferred(Arc::downgrade(&self.inner))),
        };
        let peer_id = node_id(&peer.name);
        let weak = Arc::downgrade(&self.inner);
        let link = Link::start(peer, dialer, conn, handler, move |closed| {
            if let Some(inner) = weak.upgrade() {
                let mut links = lock(&inner.links);
                if links
                    .get(&closed.peer_id)
                    .is_some_and(|l| Arc::ptr_eq(l, closed))
                {
                    links.remove(&closed.peer_id);
                }
            }
        });
        let preferred_dialer = self.inner.me_id.min(peer_id);
        let mut links = lock(&self.inner.links);
        match links.get(&peer_id) {
            Some(existing) if !existing.is_closed() => {
                if link.dialer == preferred_dialer && existing.dialer != preferred_dialer {
                    let old = links.insert(peer_id, Arc::clone(&link));
                    drop(links);
                    if let Some(old) = old {
                        old.close();
                    }
                    link
                } else {
                    let keep = Arc::clone(existing);
                    drop(links);
                    // Closed a moment later, so an answer racing the close is not lost to
                    // a peer that picked this connection.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        link.close();
                    });
                    keep
                }
            }
            _ => {
                links.insert(peer_id, Arc::clone(&link));
                link
            }
        }
    }

    /// The live connection to node `id`, if there is one (never dials).
    pub fn current_link(&self, id: u64) -> Option<Arc<Link>> {
        lock(&self.inner.links)
            .get(&id)
            .filter(|l| !l.is_closed())
            .cloned()
    }

    /// Closes the connection to node `id` (it stopped answering); the next call dials again.
    pub fn drop_link(&self, id: u64) {
        let l = lock(&self.inner.links).remove(&id);
        if let Some(l) = l {
            l.close();
        }
    }

    /// Pings the node at `addr` (dialling if needed) and records the cluster it belongs to
    /// now (a handshake only tells what it was when the connection opened).
    pub async fn probe(&self, addr: &str) -> Result<PeerState, TransportError> {
        let known = self
            .peer(addr)
            .filter(|p| p.connected)
            .and_then(|p| p.node)
            .and_then(|n| lock(&self.inner.links).get(&node_id(&n.name)).cloned());
        let link = match known {
            Some(l) if !l.is_closed() => l,
            _ => self.connect(addr).await?,
        };
        if let Response::Pong { cluster_id, .. } = link
            .call(&Request::Ping, Duration::from_millis(1500))
            .await?
        {
            self.note(addr, |p| p.cluster_id = cluster_id);
        }
        self.peer(addr).ok_or(TransportError::Closed)
    }

    /// A live connection to node `id` at `addr`, dialling if there is none.
    pub async fn link(&self, id: u64, addr: &str) -> Result<Arc<Link>, TransportError> {
        let existing = lock(&self.inner.links).get(&id).cloned();
        match existing {
            Some(l) if !l.is_closed() => Ok(l),
            _ => {
                let l = self.connect(addr).await?;
                if l.peer_id != id {
                    return Err(TransportError::Refused {
                        addr: addr.to_owned(),
                        reason: format!("{addr} is node {}, not the one expected", l.peer.name),
                    });
                }
                Ok(l)
            }
        }
    }

    /// Calls node `id` at `addr`, at most `timeout` in all (dialling included).
    pub async fn call(
        &self,
        id: u64,
        addr: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let link = tokio::time::timeout_at(deadline, self.link(id, addr))
            .await
            .map_err(|_| TransportError::Timeout)??;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        link.call(request, left).await
    }
}

/// A plain TCP connection's halves (no lock between them, unlike a TLS stream's).
fn split_tcp(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = stream.into_split();
    (Box::new(read), Box::new(write))
}

async fn read_frame(read: &mut ReadHalf, buf: &mut BytesMut) -> Result<Frame, TransportError> {
    loop {
        if let Some(f) = frame::decode(buf)? {
            return Ok(f);
        }
        let n = read
            .read_buf(buf)
            .await
            .map_err(|e| TransportError::Io(e.to_string()))?;
        if n == 0 {
            return Err(TransportError::Closed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Answers pings with its own name as the cluster id (so a test sees who answered).
    struct Echo(String);

    impl Handler for Echo {
        fn handle(
            &self,
            _: PeerNode,
            request: Request,
        ) -> Pin<Box<dyn Future<Output = Response> + Send + 'static>> {
            let name = self.0.clone();
            Box::pin(async move {
                match request {
                    Request::Ping => Response::Pong {
                        cluster_id: Some(name),
                        incarnation: 1,
                        stream: None,
                        stream_tls: None,
                    },
                    _ => Response::Refused("only pings".into()),
                }
            })
        }
    }

    async fn node(name: &str, cluster: Option<&str>) -> Transport {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = PeerNode {
            name: name.into(),
            addr: listener.local_addr().unwrap().to_string(),
        };
        let t = Transport::new(me, cluster.map(str::to_owned), None, None);
        t.set_handler(Arc::new(Echo(name.into())));
        tokio::spawn(t.clone().serve(listener));
        t
    }

    #[tokio::test]
    async fn one_connection_carries_calls_both_ways_even_when_both_dial() {
        let (a, b) = (node("a", Some("c1")).await, node("b", Some("c1")).await);
        // Both dial at once: each side ends up using the same single connection.
        let (la, lb) = tokio::join!(a.connect(&b.me().addr), b.connect(&a.me().addr));
        la.unwrap();
        lb.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let timeout = Duration::from_secs(2);
        let from_a = a
            .call(node_id("b"), &b.me().addr, &Request::Ping, timeout)
            .await
            .unwrap();
        assert!(matches!(from_a, Response::Pong { cluster_id: Some(n), .. } if n == "b"));
        let from_b = b
            .call(node_id("a"), &a.me().addr, &Request::Ping, timeout)
            .await
            .unwrap();
        assert!(matches!(from_b, Response::Pong { cluster_id: Some(n), .. } if n == "a"));
        let la = lock(&a.inner.links).get(&node_id("b")).cloned().unwrap();
        let lb = lock(&b.inner.links).get(&node_id("a")).cloned().unwrap();
        // The kept connection is the one dialled by the smaller id, on both sides.
        assert_eq!(la.dialer, lb.dialer);
        assert_eq!(la.dialer, node_id("a").min(node_id("b")));
        // Many calls in flight at once on that one connection.
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let a = a.clone();
                let addr = b.me().addr.clone();
                tokio::spawn(async move {
                    a.call(node_id("b"), &addr, &Request::Ping, Duration::from_secs(5))
                        .await
                })
            })
            .collect();
        for c in calls {
            assert!(matches!(c.await.unwrap(), Ok(Response::Pong { .. })));
        }
    }

    #[tokio::test]
    async fn a_node_of_another_cluster_is_refused_with_the_reason() {
        let (a, b) = (node("a", Some("c1")).await, node("b", Some("c2")).await);
        let err = a.connect(&b.me().addr).await.unwrap_err();
        match err {
            TransportError::Refused { reason, .. } => {
                assert!(reason.contains("another cluster"), "{reason}")
            }
            other => panic!("{other}"),
        }
        // A fresh node (no cluster yet) may talk to either.
        let fresh = node("f", None).await;
        fresh.connect(&a.me().addr).await.unwrap();
        // And a node that dials itself finds out.
        assert!(a.connect(&a.me().addr).await.is_err());
        assert!(a.peer(&a.me().addr).unwrap().is_self);
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_backed_off_and_calls_time_out() {
        let a = node("a", None).await;
        // A port nobody listens on.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(matches!(
            a.connect(&dead).await,
            Err(TransportError::Unreachable { .. })
        ));
        // Straight away again: refused by the backoff without dialling.
        match a.connect(&dead).await {
            Err(TransportError::Unreachable { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(a.peer(&dead).unwrap().last_error.is_some());
    }

    /// Never answers, and counts how many requests it holds at once.
    struct Stuck(
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    );

    impl Handler for Stuck {
        fn handle(
            &self,
            _: PeerNode,
            _: Request,
        ) -> Pin<Box<dyn Future<Output = Response> + Send + 'static>> {
            use std::sync::atomic::Ordering;
            let (now, max) = (Arc::clone(&self.0), Arc::clone(&self.1));
            Box::pin(async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Response::Pong {
                    cluster_id: None,
                    incarnation: 1,
                    stream: None,
                    stream_tls: None,
                }
            })
        }
    }

    #[tokio::test]
    async fn a_peer_that_does_not_answer_cannot_make_either_side_buffer_without_bound() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let a = node("a", None).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = PeerNode {
            name: "slow".into(),
            addr: listener.local_addr().unwrap().to_string(),
        };
        let slow = Transport::new(me, None, None, None);
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        slow.set_handler(Arc::new(Stuck(Arc::clone(&now), Arc::clone(&max))));
        tokio::spawn(slow.clone().serve(listener));
        let addr = slow.me().addr.clone();
        let calls: Vec<_> = (0..400)
            .map(|_| {
                let (a, addr) = (a.clone(), addr.clone());
                tokio::spawn(async move {
                    a.call(
                        node_id("slow"),
                        &addr,
                        &Request::Ping,
                        Duration::from_millis(500),
                    )
                    .await
                })
            })
            .collect();
        for c in calls {
            assert!(matches!(c.await.unwrap(), Err(TransportError::Timeout)));
        }
        // The slow side took at most its inbound limit; the rest waited in the socket and
        // in the caller's bounded queues, and every caller got an answer (a timeout).
        assert!(
            max.load(Ordering::SeqCst) <= 64,
            "{}",
            max.load(Ordering::SeqCst)
        );
        assert!(max.load(Ordering::SeqCst) > 0);
    }
}
