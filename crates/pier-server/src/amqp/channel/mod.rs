//! An AMQP 0-9-1 channel: its state, and the handlers of every channel-level method, one file
//! per AMQP class.
//!
//! ```text
//!  connection.rs ── Method on channel N ──► Channel::handle(cx, method)
//!                                            ├─ exchange.rs  exchange.declare/delete/bind/unbind
//!                                            ├─ queue.rs     queue.declare/bind/unbind/purge/delete
//!                                            ├─ basic.rs     basic.qos/consume/cancel/get/ack/nack/
//!                                            │               reject/recover
//!                                            ├─ publish.rs   basic.publish + its content frames
//!                                            ├─ confirm.rs   confirm.select, batched confirms
//!                                            ├─ tx.rs        tx.select/commit/rollback
//!                                            └─ here         channel.flow, access.request
//! ```
//!
//! A channel owns its state; what it uses of its connection (the vhost, the user's permissions,
//! the outbound frame queue, publish credit) arrives as a [`ChannelCx`] borrowed for the call.
//! Handlers call into the broker and answer through the connection's `Outbound`; a returned
//! `AmqpException` is scoped by its code (soft: the channel closes, hard: the connection does).
//!
//! **Waiting for the cluster** (`cluster.rs`). On a clustered node some methods cannot finish
//! at once: a durable declaration, deletion or binding is committed through the cluster, and
//! an operation on a queue homed on another node waits for that node. Such a handler leaves a
//! [`Pending`] in `awaiting`: a future that resolves to a [`Completion`], which the reader
//! loop awaits before it reads the next frame (so every channel's methods stay in order, as
//! in RabbitMQ) and then runs on the channel like a handler. A single node never takes this
//! path.

mod basic;
mod confirm;
mod exchange;
mod publish;
mod queue;
mod tx;

mod cluster;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pier_broker::{
    Access, ChannelCredit, ConnectionId, ConsumerId, ObjectKind, Queue, User, VHost,
};
use pier_wire::{reply_code as rc, ChannelFlowOk, Method, ShortString};

use super::access::AccessControl;
use super::direct_reply::ReplyConsumer;
use super::error::AmqpException;
use super::outbound::{ChannelSink, Outbound};
use crate::config::ServerConfig;
use crate::credit::Credit;
use pier_cluster::blocking::storage_bound;

pub(crate) use publish::PendingPublish;
pub(crate) use tx::Tx;

/// What a channel's handlers use of their connection, borrowed for one call.
pub(crate) struct ChannelCx<'a> {
    pub connection: ConnectionId,
    pub config: &'a ServerConfig,
    pub vhost: &'a Arc<VHost>,
    pub user: &'a User,
    pub outbound: &'a Arc<Outbound>,
    pub access: &'a mut AccessControl,
    /// Publishes not yet on disk (credit.rs).
    pub credit: &'a Arc<Credit>,
    /// The cluster's metadata front: set on a clustered node only.
    pub cluster: Option<&'a pier_cluster::Metadata>,
}

/// What finishes a method that waited for the cluster, run on its channel like a handler.
pub(crate) type Completion =
    Box<dyn FnOnce(&mut Channel, &mut ChannelCx<'_>) -> Result<(), AmqpException> + Send>;

/// A method waiting for the cluster (see the module docs).
pub(crate) type Pending = Pin<Box<dyn Future<Output = Completion> + Send>>;

pub(crate) struct ConsumerHandle {
    pub queue: Arc<Queue>,
    pub id: ConsumerId,
}

pub(crate) struct Channel {
    /// The channel number.
    pub number: u16,
    /// channel.close sent (soft error): everything but close/close-ok is ignored.
    pub closing: bool,
    pub sink: Arc<ChannelSink>,
    /// basic.qos global=true, shared by the channel's consumers.
    pub credit: Arc<ChannelCredit>,
    pub consumers: HashMap<ShortString, ConsumerHandle>,
    /// basic.qos global=false: the prefetch given to consumers created from now on.
    pub prefetch_count: u32,
    pub confirm: bool,
    /// Sequence number of the last publish in confirm mode.
    pub publish_seq: u64,
    /// `publish_seq` as last reported to the Outbound's confirm bookkeeping.
    pub reported_seq: u64,
    pub tx: Option<Tx>,
    pub pending: Option<PendingPublish>,
    /// The last queue this channel declared, for the empty queue name shorthand.
    pub last_queue: Option<ShortString>,
    /// Direct reply-to: this channel consumes from `amq.rabbitmq.reply-to`.
    pub reply: Option<ReplyConsumer>,
    /// A method of this channel waiting for the cluster; the connection takes it.
    pub awaiting: Option<Pending>,
}

pub(super) fn precondition(detail: impl std::fmt::Display) -> AmqpException {
    AmqpException::new(rc::PRECONDITION_FAILED, detail)
}

impl Channel {
    pub fn new(number: u16, outbound: &Arc<Outbound>, cancel_notify: bool) -> Self {
        Channel {
            number,
            closing: false,
            sink: Arc::new(ChannelSink {
                outbound: Arc::clone(outbound),
                channel: number,
                flow_active: true.into(),
                cancel_notify,
            }),
            credit: Arc::new(ChannelCredit::new()),
            consumers: HashMap::new(),
            prefetch_count: 0,
            confirm: false,
            publish_seq: 0,
            reported_seq: 0,
            tx: None,
            pending: None,
            last_queue: None,
            reply: None,
            awaiting: None,
        }
    }

    /// Leaves `fut` for the reader loop to await; its completion runs on this channel.
    fn wait_for<F>(&mut self, fut: F)
    where
        F: Future<Output = Completion> + Send + 'static,
    {
        self.awaiting = Some(Box::pin(fut));
    }

    /// Sends a method frame on this channel.
    fn reply(&self, cx: &ChannelCx<'_>, method: Method) {
        cx.outbound.send_method(self.number, &method);
    }

    /// An empty queue name means the channel's last declared queue.
    fn queue_name(&self, name: ShortString) -> Result<ShortString, AmqpException> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpException::new(rc::NOT_FOUND, "no previously declared queue"))
    }

    /// The queues this channel's consumers consume from (to re-dispatch them).
    fn consumed_queues(&self) -> Vec<Arc<Queue>> {
        self.consumers
            .values()
            .map(|c| Arc::clone(&c.queue))
            .collect()
    }

    /// Handles one method of an open channel.
    pub(crate) fn handle(
        &mut self,
        cx: &mut ChannelCx<'_>,
        method: Method,
    ) -> Result<(), AmqpException> {
        match method {
            Method::BasicPublish(m) => self.start_publish(m),
            Method::BasicAck(m) => self.ack(cx, m.delivery_tag, m.multiple, false),
            Method::BasicNack(m) => {
                let requeue = basic::Requeue::nack(m.requeue);
                self.nack(cx, m.delivery_tag, m.multiple, requeue, false)
            }
            Method::BasicReject(m) => {
                let requeue = basic::Requeue::reject(m.requeue);
                self.nack(cx, m.delivery_tag, false, requeue, false)
            }
            Method::BasicConsume(m) => self.consume(cx, m),
            Method::BasicCancel(m) => self.basic_cancel(cx, m),
            Method::BasicGet(m) => self.get(cx, m.queue, m.no_ack),
            Method::BasicQos(m) => self.qos(cx, m),
            Method::BasicRecover(m) => self.recover(cx, m.requeue, true),
            Method::BasicRecoverAsync(m) => self.recover(cx, m.requeue, false),
            Method::ChannelFlow(m) => {
                // RabbitMQ refuses to be told to stop delivering (a connection error).
                if !m.active {
                    return Err(AmqpException::new(rc::NOT_IMPLEMENTED, "active=false"));
                }
                self.sink.flow_active.store(m.active, Ordering::Release);
                self.consumed_queues().iter().for_each(|q| q.dispatch());
                self.reply(
                    cx,
                    Method::ChannelFlowOk(ChannelFlowOk { active: m.active }),
                );
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            // What may store or forget a definition waits for its fsync off the worker.
            Method::ExchangeDeclare(m) if m.durable && !m.passive => {
                storage_bound(|| self.exchange_declare(cx, m))
            }
            Method::ExchangeDeclare(m) => self.exchange_declare(cx, m),
            Method::ExchangeDelete(m) => storage_bound(|| self.exchange_delete(cx, m)),
            Method::ExchangeBind(m) => storage_bound(|| self.exchange_bind(cx, m)),
            Method::ExchangeUnbind(m) => storage_bound(|| self.exchange_unbind(cx, m)),
            Method::QueueDeclare(m) if m.durable && !m.exclusive && !m.passive => {
                storage_bound(|| self.queue_declare(cx, m))
            }
            Method::QueueDeclare(m) => self.queue_declare(cx, m),
            Method::QueueBind(m) => storage_bound(|| self.queue_bind(cx, m)),
            Method::QueueUnbind(m) => storage_bound(|| self.queue_unbind(cx, m)),
            Method::QueuePurge(m) => self.queue_purge(cx, m),
            Method::QueueDelete(m) => storage_bound(|| self.queue_delete(cx, m)),
            Method::ConfirmSelect(m) => self.confirm_select(cx, m),
            Method::TxSelect(_) => self.tx_select(cx),
            Method::TxCommit(_) => self.tx_commit(cx),
            Method::TxRollback(_) => self.tx_rollback(cx),
            Method::AccessRequest(_) => {
                // Access tickets were removed from AMQP 0-9-1 practice; RabbitMQ answers ok.
                self.reply(
                    cx,
                    Method::AccessRequestOk(pier_wire::AccessRequestOk { ticket: 1 }),
                );
                Ok(())
            }
            other => Err(AmqpException::new(
                rc::COMMAND_INVALID,
                format!(
                    "method '{}' is not valid from a client on a channel",
                    other.name()
                ),
            )),
        }
    }

    /// queue.bind / exchange.bind and their unbinds: write access to the destination, then
    /// (unless either end is the default exchange, which the broker refuses) read access to
    /// the source exchange, then topic authorisation: read access to the binding key when
    /// the source is a topic exchange.
    fn authorize_binding(
        cx: &mut ChannelCx<'_>,
        kind: ObjectKind,
        destination: &str,
        source: &str,
        routing_key: &str,
    ) -> Result<(), AmqpException> {
        cx.access.check(kind, destination, Access::Write)?;
        let default_involved =
            source.is_empty() || (kind == ObjectKind::Exchange && destination.is_empty());
        if !default_involved {
            cx.access
                .check(ObjectKind::Exchange, source, Access::Read)?;
            let vhost = cx.vhost;
            cx.access
                .check_topic(source, routing_key, Access::Read, || {
                    vhost.is_topic_exchange(source)
                })?;
        }
        Ok(())
    }

    /// The channel is going away (closed by either side, or its connection is): its
    /// consumers are cancelled (an auto-delete queue may go with its last one) and its
    /// unacknowledged deliveries are requeued.
    pub(crate) fn teardown(&mut self, cx: &ChannelCx<'_>) {
        self.pending = None;
        self.tx = None;
        self.reply = None;
        for (_, c) in self.consumers.drain() {
            let removed = c.queue.remove_consumer(c.id);
            if removed.auto_delete_now {
                cx.vhost.auto_delete_queue(&c.queue);
            }
        }
        let unacked = cx.outbound.close_channel(self.number);
        // The consumer's channel went away: failed deliveries (RabbitMQ 4.3's count).
        pier_broker::session::requeue_all(unacked, true);
    }
}
