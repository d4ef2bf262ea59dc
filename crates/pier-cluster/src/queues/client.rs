//! The client side of the message path: [`NodeLink`], this node's [`QueueLink`] to the queues
//! homed on one other node.
//!
//! A session is bound to one connection to that node. Publishes waiting for a confirm,
//! consumers registered there and requests waiting for an answer belong to the session;
//! when its connection ends they end with it: publishes are nacked (their durability holds
//! are dropped), consumers cancelled, requests answered with RabbitMQ's "home node ... is
//! down or inaccessible".

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pier_broker::cluster::BoxFuture;
use pier_broker::persist::DurabilityHold;
use pier_broker::{
    BrokerError, ConsumerId, Message, Queue, QueueLink, QueueStats, RemoteConsumer, RemoteGot,
    Settlement,
};
use tokio::sync::oneshot;

use super::wire::{self, Figures, LaneMsg, Reply};
use super::{QueueService, CALL_TIMEOUT};
use crate::raft::node_id;
use crate::transport::Link;

/// What one session (one connection) carries.
#[derive(Default)]
struct SessionState {
    next_seq: u64,
    next_req: u64,
    /// Publishes waiting for the home node's confirm, by sequence number.
    holds: HashMap<u64, DurabilityHold>,
    /// This node's consumers registered with the home node.
    consumers: HashMap<ConsumerId, Weak<Queue>>,
    /// Requests waiting for an answer.
    calls: HashMap<u64, oneshot::Sender<Reply>>,
}

struct Session {
    link: Arc<Link>,
    state: Mutex<SessionState>,
}

impl Session {
    fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session is over: everything waiting on it learns so.
    fn end(&self) {
        let st = std::mem::take(&mut *self.state());
        let pending = st.holds.len();
        // Dropped holds nack their publishes.
        drop(st.holds);
        drop(st.calls);
        let mut ended = 0;
        for (_, q) in st.consumers {
            if let Some(q) = q.upgrade() {
                q.remote_session_ended(self.link.id);
                ended += 1;
            }
        }
        if pending > 0 || ended > 0 {
            tracing::warn!(node = %self.link.peer, unconfirmed = pending, consumers = ended, "the connection to a queue's home node ended: unconfirmed publishes are nacked, consumers cancelled");
        }
    }
}

pub(crate) struct NodeLink {
    node: String,
    node_id: u64,
    service: Weak<QueueService>,
    session: Mutex<Option<Arc<Session>>>,
}

impl std::fmt::Debug for NodeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLink")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn down(node: &str, queue: &Queue) -> BrokerError {
    BrokerError::HomeNodeDown {
        node: node.to_owned(),
        name: queue.name().to_string(),
        vhost: queue.vhost().to_owned(),
    }
}

impl NodeLink {
    pub(crate) fn new(node: &str, service: Weak<QueueService>) -> Arc<Self> {
        Arc::new(NodeLink {
            node: node.to_owned(),
            node_id: node_id(node),
            service,
            session: Mutex::new(None),
        })
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<Session>>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session on the current connection to the home node, if it is connected and
    /// answers pings; a new connection starts a new session (the old one ends first).
    fn current(&self) -> Option<Arc<Session>> {
        let node = self.service.upgrade()?.node()?;
        if !node.is_running(self.node_id) {
            return None;
        }
        let link = node.transport.current_link(self.node_id)?;
        let old = {
            let mut slot = self.slot();
            match slot.as_ref() {
                Some(s) if Arc::ptr_eq(&s.link, &link) => return Some(Arc::clone(s)),
                _ => {}
            }
            let fresh = Arc::new(Session {
                link,
                state: Mutex::new(SessionState::default()),
            });
            slot.replace(Arc::clone(&fresh)).map(|old| (old, fresh))
        };
        match old {
            Some((old, fresh)) => {
                old.end();
                Some(fresh)
            }
            None => self.slot().clone(),
        }
    }

    /// The connection `link` ended: so does its session.
    pub(crate) fn link_closed(&self, link: &Arc<Link>) {
        let ended = {
            let mut slot = self.slot();
            match slot.as_ref() {
                Some(s) if s.link.id == link.id => slot.take(),
                _ => None,
            }
        };
        if let Some(s) = ended {
            s.end();
        }
    }

    /// A lane frame from the home node.
    pub(crate) fn incoming(&self, link: &Arc<Link>, msg: LaneMsg) {
        let session = self.slot().clone().filter(|s| s.link.id == link.id);
        let Some(session) = session else {
            // From a connection this side does not use (yet, or any more).
            if let LaneMsg::Deliver {
                ack_required: true, ..
            } = msg
            {
                tracing::debug!(node = %self.node, "a delivery outside the current session (the home node puts it back when that session ends)");
            }
            return;
        };
        match msg {
            LaneMsg::Deliver {
                consumer,
                offset,
                redelivered,
                ack_required,
                enqueued_at,
                message,
            } => {
                let q = session.state().consumers.get(&consumer).cloned();
                match q.and_then(|q| q.upgrade()) {
                    Some(q) => q.remote_deliver(
                        consumer,
                        link.id,
                        offset,
                        redelivered,
                        ack_required,
                        enqueued_at,
                        message,
                    ),
                    None if ack_required => {
                        // The consumer is gone here: back, uncounted (on the home node the
                        // queue is found by name).
                        tracing::debug!(node = %self.node, consumer, "delivery for a consumer that is gone");
                    }
                    None => {}
                }
            }
            LaneMsg::Cancelled { consumer } => {
                let q = session.state().consumers.remove(&consumer);
                if let Some(q) = q.and_then(|q| q.upgrade()) {
                    q.remote_consumer_cancelled(consumer);
                }
            }
            LaneMsg::Confirms { confirms } => {
                let holds: Vec<(DurabilityHold, bool)> = {
                    let mut st = session.state();
                    confirms
                        .into_iter()
                        .filter_map(|(seq, ok)| st.holds.remove(&seq).map(|h| (h, ok)))
                        .collect()
                };
                for (h, ok) in holds {
                    h.complete(ok);
                }
            }
            LaneMsg::Reply { req, reply } => {
                let tx = session.state().calls.remove(&req);
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
            _ => {}
        }
    }

    /// Sends a request made by `make` (given its number) and waits for the answer. The
    /// request is sent now; the future only waits.
    fn call(
        &self,
        queue: &Queue,
        make: impl FnOnce(u64) -> LaneMsg,
    ) -> BoxFuture<Result<Reply, BrokerError>> {
        let node = self.node.clone();
        let gone = down(&self.node, queue);
        let Some(session) = self.current() else {
            return Box::pin(async move { Err(gone) });
        };
        let (tx, rx) = oneshot::channel();
        let req = {
            let mut st = session.state();
            st.next_req += 1;
            let req = st.next_req;
            st.calls.insert(req, tx);
            req
        };
        let sent = match wire::encode(&make(req)) {
            Ok(frame) => session.link.lane_send(frame),
            Err(e) => {
                tracing::warn!(%node, "a request does not encode: {e}");
                false
            }
        };
        if !sent {
            session.state().calls.remove(&req);
            return Box::pin(async move { Err(gone) });
        }
        let timeout_text = format!(
            "failed to perform operation on queue '{}' in vhost '{}' due to timeout",
            queue.name(),
            queue.vhost()
        );
        Box::pin(async move {
            match tokio::time::timeout(CALL_TIMEOUT, rx).await {
                Ok(Ok(Reply::Error { code, text })) => Err(BrokerError::Remote { code, text }),
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(gone),
                Err(_) => {
                    session.state().calls.remove(&req);
                    Err(BrokerError::Remote {
                        code: pier_wire::reply_code::NOT_FOUND,
                        text: timeout_text,
                    })
                }
            }
        })
    }

    fn send(&self, session: &Session, msg: &LaneMsg) -> bool {
        match wire::encode(msg) {
            Ok(frame) => session.link.lane_send(frame),
            Err(e) => {
                tracing::warn!(node = %self.node, "a lane frame does not encode: {e}");
                false
            }
        }
    }

    /// Every queue's figures on the home node (management).
    pub(crate) async fn all_figures(&self) -> Result<Vec<(String, String, Figures)>, ()> {
        let Some(session) = self.current() else {
            return Err(());
        };
        let (tx, rx) = oneshot::channel();
        let req = {
            let mut st = session.state();
            st.next_req += 1;
            let req = st.next_req;
            st.calls.insert(req, tx);
            req
        };
        if !self.send(&session, &LaneMsg::StatsAll { req }) {
            session.state().calls.remove(&req);
            return Err(());
        }
        match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
            Ok(Ok(Reply::AllFigures(all))) => Ok(all),
            _ => {
                session.state().calls.remove(&req);
                Err(())
            }
        }
    }
}

fn names(queue: &Queue) -> (String, String) {
    (queue.vhost().to_owned(), queue.name().to_string())
}

impl QueueLink for NodeLink {
    fn node(&self) -> &str {
        &self.node
    }

    fn session(&self) -> Option<u64> {
        self.current().map(|s| s.link.id)
    }

    fn publish(
        &self,
        queue: &Queue,
        message: &Arc<Message>,
        hold: Option<DurabilityHold>,
    ) -> Result<(), Option<DurabilityHold>> {
        let Some(session) = self.current() else {
            return Err(hold);
        };
        let (vhost, name) = names(queue);
        let seq = match hold {
            Some(h) => {
                let mut st = session.state();
                st.next_seq += 1;
                let seq = st.next_seq;
                st.holds.insert(seq, h);
                seq
            }
            None => 0,
        };
        let msg = LaneMsg::Publish {
            seq,
            vhost,
            queue: name,
            message: Arc::clone(message),
        };
        if self.send(&session, &msg) {
            return Ok(());
        }
        let hold = (seq != 0)
            .then(|| session.state().holds.remove(&seq))
            .flatten();
        Err(hold)
    }

    fn settle(&self, queue: &Queue, session: u64, how: Settlement, offsets: Vec<u64>) {
        let Some(s) = self.current().filter(|s| s.link.id == session) else {
            return;
        };
        let (vhost, name) = names(queue);
        self.send(
            &s,
            &LaneMsg::Settle {
                vhost,
                queue: name,
                how,
                offsets,
            },
        );
    }

    fn credit(&self, _queue: &Queue, consumer: ConsumerId, count: u32, bytes: u64) {
        if let Some(s) = self.current() {
            self.send(
                &s,
                &LaneMsg::Credit {
                    consumer,
                    count,
                    bytes,
                },
            );
        }
    }

    fn consume(
        &self,
        queue: &Arc<Queue>,
        consumer: ConsumerId,
        spec: RemoteConsumer,
    ) -> BoxFuture<Result<u64, BrokerError>> {
        let gone = down(&self.node, queue);
        let Some(session) = self.current() else {
            return Box::pin(async move { Err(gone) });
        };
        session
            .state()
            .consumers
            .insert(consumer, Arc::downgrade(queue));
        let (vhost, name) = names(queue);
        let asked = self.call(queue, |req| LaneMsg::Consume {
            req,
            consumer,
            vhost,
            queue: name,
            spec,
        });
        let id = session.link.id;
        Box::pin(async move {
            match asked.await {
                Ok(_) => Ok(id),
                Err(e) => {
                    session.state().consumers.remove(&consumer);
                    Err(e)
                }
            }
        })
    }

    fn cancel(&self, queue: &Queue, consumer: ConsumerId) -> BoxFuture<()> {
        let session = self.current();
        let asked = self.call(queue, |req| LaneMsg::Cancel { req, consumer });
        Box::pin(async move {
            let _ = asked.await;
            if let Some(s) = session {
                s.state().consumers.remove(&consumer);
            }
        })
    }

    fn get(
        &self,
        queue: &Queue,
        ack_required: bool,
    ) -> BoxFuture<Result<Option<RemoteGot>, BrokerError>> {
        let (vhost, name) = names(queue);
        let session = self.current().map(|s| s.link.id).unwrap_or_default();
        let asked = self.call(queue, |req| LaneMsg::Get {
            req,
            vhost,
            queue: name,
            ack_required,
        });
        Box::pin(async move {
            match asked.await? {
                Reply::Got(Some(g)) => Ok(Some(RemoteGot {
                    session,
                    offset: g.offset,
                    redelivered: g.redelivered,
                    enqueued_at: g.enqueued_at,
                    message: g.message,
                    remaining: g.remaining,
                })),
                _ => Ok(None),
            }
        })
    }

    fn purge(&self, queue: &Queue) -> BoxFuture<Result<u32, BrokerError>> {
        let (vhost, name) = names(queue);
        let asked = self.call(queue, |req| LaneMsg::Purge {
            req,
            vhost,
            queue: name,
        });
        Box::pin(async move {
            match asked.await? {
                Reply::Purged(n) => Ok(n),
                _ => Ok(0),
            }
        })
    }

    fn stats(&self, queue: &Queue, touch: bool) -> BoxFuture<Result<QueueStats, BrokerError>> {
        let (vhost, name) = names(queue);
        let asked = self.call(queue, |req| LaneMsg::Stats {
            req,
            vhost,
            queue: name,
            touch,
        });
        Box::pin(async move {
            match asked.await? {
                Reply::Figures(f) => Ok(f.stats),
                _ => Ok(QueueStats::default()),
            }
        })
    }
}
