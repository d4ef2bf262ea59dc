//! Channel state and the handlers of every channel-level method: exchange.*, queue.*, basic.*,
//! confirm.*, tx.*, channel.flow. Handlers call into the broker model and answer through the
//! connection's `Outbound`; a returned `AmqpException` is scoped by its code (soft: the channel
//! closes, hard: the connection does).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pier_broker::{
    names, parse_expiration, persist::PublishDurability, Access, ChannelCredit, ConsumerId,
    ConsumerSpec, Durability, ExchangeDeclare, Message, ObjectKind, PublishOptions, Queue,
    QueueDeclare,
};
use pier_wire::{
    reply_code as rc, BasicCancelOk, BasicGetEmpty, BasicPublish, BasicQosOk, BasicRecoverOk,
    ChannelFlowOk, ConfirmSelectOk, ContentHeader, ExchangeBindOk, ExchangeDeclareOk,
    ExchangeDeleteOk, ExchangeUnbindOk, FieldValue, Method, QueueBindOk, QueueDeclareOk,
    QueueDeleteOk, QueuePurgeOk, QueueUnbindOk, ShortString, TxCommitOk, TxRollbackOk, TxSelectOk,
};

use crate::connection::Connection;
use crate::direct_reply::{self, ReplyConsumer};
use crate::error::AmqpException;
use crate::outbound::{ChannelSink, Outbound};
use pier_broker::session::{self, Disposition, Unacked};

pub(crate) struct ConsumerHandle {
    pub queue: Arc<Queue>,
    pub id: ConsumerId,
}

/// A publish waiting for its content header and body frames.
pub(crate) struct PendingPublish {
    method: BasicPublish,
    header: Option<ContentHeader>,
    /// The first body frame is kept as is (zero-copy); later ones are appended to `rest`.
    first: Option<Bytes>,
    rest: Option<BytesMut>,
    received: u64,
}

/// What a transaction holds until tx.commit.
#[derive(Default)]
pub(crate) struct Tx {
    publishes: Vec<(Arc<Message>, bool)>,
    acks: Vec<TxAck>,
}

enum TxAck {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

pub(crate) struct Channel {
    pub closing: bool,
    pub sink: Arc<ChannelSink>,
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
}

impl Channel {
    pub fn new(id: u16, outbound: &Arc<Outbound>, cancel_notify: bool) -> Self {
        Channel {
            closing: false,
            sink: Arc::new(ChannelSink {
                outbound: Arc::clone(outbound),
                channel: id,
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
        }
    }
}

fn precondition(detail: impl std::fmt::Display) -> AmqpException {
    AmqpException::new(rc::PRECONDITION_FAILED, detail)
}

impl Connection {
    fn channel(&mut self, id: u16) -> Result<&mut Channel, AmqpException> {
        self.channels.get_mut(&id).ok_or_else(|| {
            AmqpException::new(rc::CHANNEL_ERROR, format!("channel {id} is not open"))
        })
    }

    fn reply(&self, channel: u16, method: Method) {
        self.outbound.send_method(channel, &method);
    }

    /// An empty queue name means the channel's last declared queue.
    fn queue_name(
        &mut self,
        channel: u16,
        name: ShortString,
    ) -> Result<ShortString, AmqpException> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.channel(channel)?
            .last_queue
            .clone()
            .ok_or_else(|| AmqpException::new(rc::NOT_FOUND, "no previously declared queue"))
    }

    pub(crate) fn handle_method(&mut self, ch: u16, method: Method) -> Result<(), AmqpException> {
        match method {
            Method::BasicPublish(m) => self.start_publish(ch, m),
            Method::BasicAck(m) => self.ack(ch, m.delivery_tag, m.multiple, false),
            Method::BasicNack(m) => self.nack(ch, m.delivery_tag, m.multiple, m.requeue, false),
            Method::BasicReject(m) => self.nack(ch, m.delivery_tag, false, m.requeue, false),
            Method::BasicConsume(m) => self.consume(ch, m),
            Method::BasicCancel(m) => {
                self.cancel_consumer(ch, &m.consumer_tag);
                if !m.nowait {
                    self.reply(
                        ch,
                        Method::BasicCancelOk(BasicCancelOk {
                            consumer_tag: m.consumer_tag,
                        }),
                    );
                }
                Ok(())
            }
            Method::BasicGet(m) => self.get(ch, m.queue, m.no_ack),
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(AmqpException::new(
                        rc::NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({})", m.prefetch_size),
                    ));
                }
                let channel = self.channel(ch)?;
                if m.global {
                    channel.credit.set_limit(u32::from(m.prefetch_count));
                    // A raised limit may release consumers waiting on it.
                    let queues: Vec<Arc<Queue>> = channel
                        .consumers
                        .values()
                        .map(|c| Arc::clone(&c.queue))
                        .collect();
                    queues.iter().for_each(|q| q.dispatch());
                } else {
                    channel.prefetch_count = u32::from(m.prefetch_count);
                }
                self.reply(ch, Method::BasicQosOk(BasicQosOk {}));
                Ok(())
            }
            Method::BasicRecover(m) => self.recover(ch, m.requeue, true),
            Method::BasicRecoverAsync(m) => self.recover(ch, m.requeue, false),
            Method::ChannelFlow(m) => {
                // RabbitMQ refuses to be told to stop delivering (a connection error).
                if !m.active {
                    return Err(AmqpException::new(rc::NOT_IMPLEMENTED, "active=false"));
                }
                let channel = self.channel(ch)?;
                channel.sink.flow_active.store(m.active, Ordering::Release);
                if m.active {
                    let queues: Vec<Arc<Queue>> = channel
                        .consumers
                        .values()
                        .map(|c| Arc::clone(&c.queue))
                        .collect();
                    queues.iter().for_each(|q| q.dispatch());
                }
                self.reply(
                    ch,
                    Method::ChannelFlowOk(ChannelFlowOk { active: m.active }),
                );
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            Method::ExchangeDeclare(m) => {
                if !m.passive && !m.exchange.is_empty() {
                    self.authorize_exchange_declare(&m.exchange, &m.arguments)?;
                }
                self.vhost.declare_exchange(&ExchangeDeclare {
                    name: m.exchange,
                    kind: m.kind.to_string(),
                    passive: m.passive,
                    durable: m.durable,
                    auto_delete: m.auto_delete,
                    internal: m.internal,
                    arguments: m.arguments,
                })?;
                if !m.nowait {
                    self.reply(ch, Method::ExchangeDeclareOk(ExchangeDeclareOk {}));
                }
                Ok(())
            }
            Method::ExchangeDelete(m) => {
                // The default and amq.* exchanges are refused before permissions are checked.
                if !m.exchange.is_empty() && !m.exchange.starts_with("amq.") {
                    self.access
                        .check(ObjectKind::Exchange, &m.exchange, Access::Configure)?;
                }
                self.vhost.delete_exchange(&m.exchange, m.if_unused)?;
                if !m.nowait {
                    self.reply(ch, Method::ExchangeDeleteOk(ExchangeDeleteOk {}));
                }
                Ok(())
            }
            Method::ExchangeBind(m) => {
                self.authorize_binding(
                    ObjectKind::Exchange,
                    &m.destination,
                    &m.source,
                    &m.routing_key,
                )?;
                self.vhost
                    .bind_exchange(&m.destination, &m.source, m.routing_key, m.arguments)?;
                if !m.nowait {
                    self.reply(ch, Method::ExchangeBindOk(ExchangeBindOk {}));
                }
                Ok(())
            }
            Method::ExchangeUnbind(m) => {
                self.authorize_binding(
                    ObjectKind::Exchange,
                    &m.destination,
                    &m.source,
                    &m.routing_key,
                )?;
                self.vhost.unbind_exchange(
                    &m.destination,
                    &m.source,
                    m.routing_key,
                    m.arguments,
                )?;
                if !m.nowait {
                    self.reply(ch, Method::ExchangeUnbindOk(ExchangeUnbindOk {}));
                }
                Ok(())
            }
            Method::QueueDeclare(m) if m.queue.as_str() == direct_reply::PSEUDO_QUEUE => {
                // The direct reply-to pseudo-queue always "exists", as in RabbitMQ.
                if !m.nowait {
                    self.reply(
                        ch,
                        Method::QueueDeclareOk(QueueDeclareOk {
                            queue: m.queue,
                            message_count: 0,
                            consumer_count: 1,
                        }),
                    );
                }
                Ok(())
            }
            Method::QueueDeclare(m) => {
                // Permissions are checked inside the declaration (a server-named queue's
                // name is only known there), against the permission as of now.
                self.access.refresh();
                let access = &self.access;
                #[allow(clippy::result_large_err)]
                let mut authorize = |kind, name: &str, a| access.check_current(kind, name, a);
                let declared = self.vhost.declare_queue_checked(
                    &QueueDeclare {
                        name: m.queue,
                        passive: m.passive,
                        durable: m.durable,
                        exclusive: m.exclusive,
                        auto_delete: m.auto_delete,
                        arguments: m.arguments,
                        connection: self.id,
                    },
                    &mut authorize,
                )?;
                let name = declared.queue.name().clone();
                self.channel(ch)?.last_queue = Some(name.clone());
                if !m.nowait {
                    self.reply(
                        ch,
                        Method::QueueDeclareOk(QueueDeclareOk {
                            queue: name,
                            message_count: declared.message_count,
                            consumer_count: declared.consumer_count,
                        }),
                    );
                }
                Ok(())
            }
            Method::QueueBind(m) => {
                let queue = self.queue_name(ch, m.queue)?;
                self.authorize_binding(ObjectKind::Queue, &queue, &m.exchange, &m.routing_key)?;
                self.vhost
                    .bind_queue(&queue, &m.exchange, m.routing_key, m.arguments, self.id)?;
                if !m.nowait {
                    self.reply(ch, Method::QueueBindOk(QueueBindOk {}));
                }
                Ok(())
            }
            Method::QueueUnbind(m) => {
                let queue = self.queue_name(ch, m.queue)?;
                self.authorize_binding(ObjectKind::Queue, &queue, &m.exchange, &m.routing_key)?;
                self.vhost.unbind_queue(
                    &queue,
                    &m.exchange,
                    m.routing_key,
                    m.arguments,
                    self.id,
                )?;
                self.reply(ch, Method::QueueUnbindOk(QueueUnbindOk {}));
                Ok(())
            }
            Method::QueuePurge(m) => {
                let queue = self.queue_name(ch, m.queue)?;
                self.access.check(ObjectKind::Queue, &queue, Access::Read)?;
                let message_count = self.vhost.purge_queue(&queue, self.id)?;
                if !m.nowait {
                    self.reply(ch, Method::QueuePurgeOk(QueuePurgeOk { message_count }));
                }
                Ok(())
            }
            Method::QueueDelete(m) => {
                let queue = self.queue_name(ch, m.queue)?;
                self.access
                    .check(ObjectKind::Queue, &queue, Access::Configure)?;
                // This channel's own consumers of the queue hear of it after delete-ok.
                self.outbound.defer_cancels(ch);
                let deleted = self
                    .vhost
                    .delete_queue(&queue, m.if_unused, m.if_empty, self.id);
                if let Ok(&message_count) = deleted.as_ref() {
                    if !m.nowait {
                        self.reply(ch, Method::QueueDeleteOk(QueueDeleteOk { message_count }));
                    }
                }
                self.outbound.send_deferred_cancels(ch);
                deleted?;
                Ok(())
            }
            Method::ConfirmSelect(m) => {
                let channel = self.channel(ch)?;
                if channel.tx.is_some() {
                    return Err(precondition("cannot switch from tx to confirm mode"));
                }
                channel.confirm = true;
                if !m.nowait {
                    self.reply(ch, Method::ConfirmSelectOk(ConfirmSelectOk {}));
                }
                Ok(())
            }
            Method::TxSelect(_) => {
                let channel = self.channel(ch)?;
                if channel.confirm {
                    return Err(precondition("cannot switch from confirm to tx mode"));
                }
                if channel.tx.is_none() {
                    channel.tx = Some(Tx::default());
                }
                self.reply(ch, Method::TxSelectOk(TxSelectOk {}));
                Ok(())
            }
            Method::TxCommit(_) => self.tx_commit(ch),
            Method::TxRollback(_) => {
                let channel = self.channel(ch)?;
                let Some(tx) = channel.tx.as_mut() else {
                    return Err(precondition("channel is not transactional"));
                };
                *tx = Tx::default();
                self.reply(ch, Method::TxRollbackOk(TxRollbackOk {}));
                Ok(())
            }
            Method::AccessRequest(_) => {
                // Access tickets were removed from AMQP 0-9-1 practice; RabbitMQ answers ok.
                self.reply(
                    ch,
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

    // ---- permissions ----

    /// exchange.declare (not passive): configure access to the exchange; when it is created
    /// with an alternate exchange, read access to it and write access to the alternate, as
    /// RabbitMQ checks them.
    fn authorize_exchange_declare(
        &mut self,
        name: &str,
        arguments: &pier_wire::FieldTable,
    ) -> Result<(), AmqpException> {
        self.access
            .check(ObjectKind::Exchange, name, Access::Configure)?;
        if let Some(FieldValue::LongString(ae)) = arguments.get("alternate-exchange") {
            if !self.vhost.exchange_exists(name) {
                self.access
                    .check(ObjectKind::Exchange, name, Access::Read)?;
                self.access
                    .check(ObjectKind::Exchange, &ae.to_str_lossy(), Access::Write)?;
            }
        }
        Ok(())
    }

    /// queue.bind / exchange.bind and their unbinds: write access to the destination, then
    /// (unless either end is the default exchange, which the broker refuses) read access to
    /// the source exchange, then topic authorisation: read access to the binding key when
    /// the source is a topic exchange.
    fn authorize_binding(
        &mut self,
        kind: ObjectKind,
        destination: &str,
        source: &str,
        routing_key: &str,
    ) -> Result<(), AmqpException> {
        self.access.check(kind, destination, Access::Write)?;
        let default_involved =
            source.is_empty() || (kind == ObjectKind::Exchange && destination.is_empty());
        if !default_involved {
            self.access
                .check(ObjectKind::Exchange, source, Access::Read)?;
            let vhost = &self.vhost;
            self.access
                .check_topic(source, routing_key, Access::Read, || {
                    vhost.is_topic_exchange(source)
                })?;
        }
        Ok(())
    }

    // ---- publishing ----

    fn start_publish(&mut self, ch: u16, m: BasicPublish) -> Result<(), AmqpException> {
        if m.immediate {
            return Err(AmqpException::new(rc::NOT_IMPLEMENTED, "immediate=true"));
        }
        self.channel(ch)?.pending = Some(PendingPublish {
            method: m,
            header: None,
            first: None,
            rest: None,
            received: 0,
        });
        Ok(())
    }

    pub(crate) fn handle_content_header(
        &mut self,
        ch: u16,
        header: ContentHeader,
    ) -> Result<(), AmqpException> {
        let max = self.config.max_message_size;
        let channel = self.channel(ch)?;
        let Some(p) = channel.pending.as_mut() else {
            return Err(AmqpException::new(
                rc::UNEXPECTED_FRAME,
                "content header without a method",
            ));
        };
        if p.header.is_some() {
            return Err(AmqpException::new(
                rc::UNEXPECTED_FRAME,
                "second content header",
            ));
        }
        if header.class_id != 60 {
            return Err(AmqpException::new(
                rc::UNEXPECTED_FRAME,
                format!(
                    "expected content header for class 60, got one for class {}",
                    header.class_id
                ),
            )
            .on_ids(60, 40));
        }
        if header.body_size > max {
            channel.pending = None;
            return Err(precondition(format!(
                "message size {} is larger than configured max size {max}",
                header.body_size
            ))
            .on_ids(60, 40));
        }
        let complete = header.body_size == 0;
        p.header = Some(header);
        if complete {
            self.finish_publish(ch)?;
        }
        Ok(())
    }

    pub(crate) fn handle_content_body(
        &mut self,
        ch: u16,
        payload: Bytes,
    ) -> Result<(), AmqpException> {
        let channel = self.channel(ch)?;
        let Some(p) = channel.pending.as_mut() else {
            return Err(AmqpException::new(
                rc::UNEXPECTED_FRAME,
                "content body without a method",
            ));
        };
        let Some(header) = p.header.as_ref() else {
            return Err(AmqpException::new(
                rc::UNEXPECTED_FRAME,
                "content body before its header",
            ));
        };
        let expected = header.body_size;
        p.received += payload.len() as u64;
        if p.received > expected {
            return Err(AmqpException::new(
                rc::FRAME_ERROR,
                format!("content body exceeds the announced size of {expected} bytes"),
            ));
        }
        match (&p.first, &mut p.rest) {
            (None, _) => p.first = Some(payload),
            (Some(first), None) => {
                let cap = usize::try_from(expected).unwrap_or(usize::MAX);
                let mut buf = BytesMut::with_capacity(cap);
                buf.extend_from_slice(first);
                buf.extend_from_slice(&payload);
                p.rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&payload),
        }
        if p.received == expected {
            self.finish_publish(ch)?;
        }
        Ok(())
    }

    fn finish_publish(&mut self, ch: u16) -> Result<(), AmqpException> {
        let channel = self.channel(ch)?;
        let Some(p) = channel.pending.take() else {
            return Ok(());
        };
        let Some(header) = p.header else {
            return Ok(());
        };
        let body = match (p.rest, p.first) {
            (Some(buf), _) => buf.freeze(),
            (None, Some(first)) => first,
            (None, None) => Bytes::new(),
        };
        self.access
            .check_publish(&p.method.exchange)
            .map_err(|e| e.on_ids(60, 40))?;
        let vhost = &self.vhost;
        let exchange = &p.method.exchange;
        self.access
            .check_topic(exchange, &p.method.routing_key, Access::Write, || {
                vhost.is_topic_exchange(exchange)
            })
            .map_err(|e| e.on_ids(60, 40))?;
        if let Some(uid) = &header.properties.user_id {
            if uid.as_str() != self.user.name {
                return Err(precondition(format!(
                    "user_id property set to '{uid}' but authenticated user was '{}'",
                    self.user.name
                ))
                .on_ids(60, 40));
            }
        }
        if let Some(exp) = &header.properties.expiration {
            if let Err(reason) = parse_expiration(exp) {
                return Err(
                    precondition(format!("invalid expiration '{exp}': {reason}")).on_ids(60, 40),
                );
            }
        }
        let reply_address = match &header.properties.reply_to {
            Some(r) if r.as_str() == direct_reply::PSEUDO_QUEUE => {
                match self.channel(ch)?.reply.as_ref() {
                    Some(reply) => Some(reply.address.clone()),
                    None => {
                        return Err(
                            precondition("fast reply consumer does not exist").on_ids(60, 40)
                        )
                    }
                }
            }
            _ => None,
        };
        let message = match reply_address {
            // Direct reply-to: the requester's address replaces the pseudo-queue's name.
            Some(address) => {
                let mut props = header.properties;
                props.reply_to = Some(address);
                Arc::new(Message::new(
                    p.method.exchange,
                    p.method.routing_key,
                    props,
                    body,
                ))
            }
            None => Arc::new(Message::from_amqp(
                p.method.exchange,
                p.method.routing_key,
                header.properties,
                header.raw_properties,
                body,
            )),
        };
        let exchange_missing =
            !message.exchange.is_empty() && !self.vhost.exchange_exists(&message.exchange);
        let channel = self.channel(ch)?;
        if let Some(tx) = channel.tx.as_mut() {
            // Routing errors surface at publish time, as RabbitMQ does, then the message waits.
            if exchange_missing {
                return Err(AmqpException::from(pier_broker::BrokerError::NotFound {
                    kind: pier_broker::ObjectKind::Exchange,
                    name: message.exchange.to_string(),
                    vhost: self.vhost.name().to_owned(),
                })
                .on_ids(60, 40));
            }
            tx.publishes.push((message, p.method.mandatory));
            return Ok(());
        }
        self.route_message(ch, message, p.method.mandatory)
    }

    fn route_message(
        &mut self,
        ch: u16,
        message: Arc<Message>,
        mandatory: bool,
    ) -> Result<(), AmqpException> {
        if message.exchange.is_empty()
            && message
                .routing_key
                .starts_with(direct_reply::ADDRESS_PREFIX)
        {
            // A direct reply: straight to the requesting channel (or dropped). RabbitMQ 3.10
            // does not count it as routed, so a mandatory reply is also returned.
            direct_reply::deliver_reply(&message.routing_key, Arc::clone(&message));
            if mandatory {
                self.outbound
                    .send_return(ch, rc::NO_ROUTE, "NO_ROUTE", message);
            }
            let channel = self.channel(ch)?;
            if channel.confirm {
                channel.publish_seq += 1;
            }
            return Ok(());
        }
        // In confirm mode a persistent message's ack waits until every stored copy is on disk.
        let confirm_seq = match self.channels.get_mut(&ch) {
            Some(c) if c.confirm => {
                c.publish_seq += 1;
                Some(c.publish_seq)
            }
            _ => None,
        };
        // A persistent message takes connection credit (credit.rs) until every stored copy is
        // on disk, through a durability token that also holds its confirm back until then.
        // In confirm mode the token exists before routing (a delayed exchange stores the
        // message instead of routing it); otherwise only once a storing queue is among the
        // routes, so that persistent messages to transient queues cost nothing extra.
        let persistent = message.is_persistent();
        let token = match confirm_seq {
            Some(seq) if persistent => Some(self.durability_token(ch, Some(seq), &message)),
            _ => None,
        };
        let mut on_store = || self.durability_token(ch, None, &message);
        let durability = match (&token, persistent) {
            (Some(t), _) => Durability::Token(t),
            (None, true) => Durability::OnStore(&mut on_store),
            (None, false) => Durability::None,
        };
        let published = self.vhost.publish(
            Arc::clone(&message),
            PublishOptions {
                from_client: true,
                durability,
            },
        );
        let outcome = match published {
            Ok(o) => o,
            // The channel closes: its pending confirm is never answered, as in RabbitMQ.
            Err(e) => return Err(AmqpException::from(e).on_ids(60, 40)),
        };
        if !outcome.routed && mandatory {
            // Held by an x-delayed-message exchange it routes to nothing now, so a mandatory
            // publish is returned at once, as the plugin does. BCC is not returned.
            let returned = if outcome.delayed {
                message
            } else {
                Message::without_bcc(message)
            };
            self.outbound
                .send_return(ch, rc::NO_ROUTE, "NO_ROUTE", returned);
        }
        if let Some(d) = token {
            d.release();
        }
        if let (Some(seq), true) = (confirm_seq, outcome.rejected) {
            // A queue refused it (x-overflow reject-publish): basic.nack.
            self.outbound.confirm_nack(ch, seq);
        }
        Ok(())
    }

    /// The token a persistent publish hands to the queues that store it: it holds connection
    /// credit until every stored copy is on disk (or routing released it), and in confirm
    /// mode the publish's confirm.
    fn durability_token(
        &self,
        ch: u16,
        confirm_seq: Option<u64>,
        message: &Message,
    ) -> Arc<PublishDurability> {
        let in_flight = self.credit.take(message.body.len() as u64);
        let confirm = confirm_seq.map(|seq| {
            self.outbound.confirm_wait(ch, seq);
            (Arc::clone(&self.outbound), seq)
        });
        PublishDurability::new(move |ok| {
            drop(in_flight);
            if let Some((outbound, seq)) = confirm {
                outbound.confirm_durable(ch, seq, ok);
            }
        })
    }

    /// Reports what each confirm-mode channel has routed since the last flush; the Outbound
    /// sends one basic.ack per channel for all of it that does not wait for the disk.
    /// Called after each read batch.
    pub(crate) fn flush_confirms(&mut self) {
        for (&id, ch) in &mut self.channels {
            if ch.confirm && ch.publish_seq > ch.reported_seq && !ch.closing {
                self.outbound.confirm_published(id, ch.publish_seq);
                ch.reported_seq = ch.publish_seq;
            }
        }
    }

    // ---- acknowledgements ----

    fn take(&mut self, ch: u16, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpException> {
        self.outbound
            .with_channel(ch, |d| d.take(tag, multiple))
            .flatten()
            .ok_or_else(|| precondition(format!("unknown delivery tag {tag}")))
    }

    fn ack(
        &mut self,
        ch: u16,
        tag: u64,
        multiple: bool,
        committing: bool,
    ) -> Result<(), AmqpException> {
        if !committing {
            if let Some(tx) = self.channel(ch)?.tx.as_mut() {
                tx.acks.push(TxAck::Ack { tag, multiple });
                return Ok(());
            }
        }
        let taken = self.take(ch, tag, multiple)?;
        self.settle(ch, taken);
        Ok(())
    }

    fn nack(
        &mut self,
        ch: u16,
        tag: u64,
        multiple: bool,
        requeue: bool,
        committing: bool,
    ) -> Result<(), AmqpException> {
        if !committing {
            if let Some(tx) = self.channel(ch)?.tx.as_mut() {
                tx.acks.push(TxAck::Nack {
                    tag,
                    multiple,
                    requeue,
                });
                return Ok(());
            }
        }
        let taken = self.take(ch, tag, multiple)?;
        if requeue {
            self.release_channel_credit(ch, &taken);
            session::requeue_all(taken);
        } else {
            self.reject_dropped(ch, taken);
        }
        Ok(())
    }

    /// Returns the channel-level prefetch credit these deliveries held; if the channel was at
    /// its limit, its consumers' queues get a chance to deliver again.
    fn release_channel_credit(&mut self, ch: u16, taken: &[Unacked]) {
        let n = session::consumer_deliveries(taken);
        let Some(channel) = self.channels.get(&ch) else {
            return;
        };
        if n > 0 && channel.credit.release(n) {
            let queues: Vec<Arc<Queue>> = channel
                .consumers
                .values()
                .map(|c| Arc::clone(&c.queue))
                .collect();
            for q in queues {
                q.dispatch();
            }
        }
    }

    /// Acked deliveries: the queue forgets them and frees their consumer's credit.
    fn settle(&mut self, ch: u16, taken: Vec<Unacked>) {
        self.release_channel_credit(ch, &taken);
        session::dispose(&taken, Disposition::Ack);
    }

    /// Deliveries rejected without requeue: settled, and dead-lettered by queues that have a
    /// dead-letter exchange.
    fn reject_dropped(&mut self, ch: u16, taken: Vec<Unacked>) {
        self.release_channel_credit(ch, &taken);
        session::dispose(&taken, Disposition::Reject);
    }

    fn recover(&mut self, ch: u16, requeue: bool, reply: bool) -> Result<(), AmqpException> {
        if !requeue {
            return Err(AmqpException::new(rc::NOT_IMPLEMENTED, "requeue=false"));
        }
        let taken = self.take(ch, 0, true)?;
        // recover-ok goes first: clients (lapin among them) expect it before the redeliveries.
        if reply {
            self.reply(ch, Method::BasicRecoverOk(BasicRecoverOk {}));
        }
        self.release_channel_credit(ch, &taken);
        session::requeue_all(taken);
        Ok(())
    }

    fn tx_commit(&mut self, ch: u16) -> Result<(), AmqpException> {
        let channel = self.channel(ch)?;
        let Some(tx) = channel.tx.as_mut() else {
            return Err(precondition("channel is not transactional"));
        };
        let tx = std::mem::take(tx);
        for op in tx.acks {
            match op {
                TxAck::Ack { tag, multiple } => self.ack(ch, tag, multiple, true)?,
                TxAck::Nack {
                    tag,
                    multiple,
                    requeue,
                } => self.nack(ch, tag, multiple, requeue, true)?,
            }
        }
        for (message, mandatory) in tx.publishes {
            self.route_message(ch, message, mandatory)?;
        }
        self.reply(ch, Method::TxCommitOk(TxCommitOk {}));
        Ok(())
    }

    /// consumer_timeout: a channel whose oldest unacknowledged delivery is older than the
    /// timeout is closed with 406, in RabbitMQ's words (its deliveries are requeued).
    pub(crate) fn check_consumer_timeouts(&mut self) {
        let Some(timeout) = self.config.consumer_timeout else {
            return;
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let now = crate::coarse_clock::now_ms();
        let mut expired: Vec<u16> = Vec::new();
        for (&id, ch) in &self.channels {
            if ch.closing {
                continue;
            }
            let oldest = self
                .outbound
                .with_channel(id, |d| d.oldest_unacked())
                .flatten();
            if oldest.is_some_and(|at| now.saturating_sub(at) > timeout_ms) {
                expired.push(id);
            }
        }
        for id in expired {
            tracing::warn!(peer = %self.peer, channel = id, "consumer acknowledgement timed out after {timeout_ms} ms; closing the channel");
            let ex = precondition(format!(
                "delivery acknowledgement on channel {id} timed out. Timeout value used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
            ));
            self.close_channel_with(id, &ex);
        }
    }

    // ---- consumers ----

    /// Drops consumers the broker cancelled (their queue went away).
    fn forget_cancelled(&mut self, ch: u16) {
        let cancelled = self
            .outbound
            .with_channel(ch, |d| d.take_cancelled())
            .unwrap_or_default();
        if let Some(channel) = self.channels.get_mut(&ch) {
            for tag in cancelled {
                channel.consumers.remove(&tag);
            }
        }
    }

    fn consume(&mut self, ch: u16, m: pier_wire::BasicConsume) -> Result<(), AmqpException> {
        self.forget_cancelled(ch);
        let queue_name = self.queue_name(ch, m.queue)?;
        let tag = if m.consumer_tag.is_empty() {
            names::generated_consumer_tag()
        } else {
            m.consumer_tag
        };
        let connection = self.id;
        let vhost_name = self.vhost.name().to_owned();
        let channel = self.channel(ch)?;
        if channel.consumers.contains_key(&tag)
            || channel.reply.as_ref().is_some_and(|r| r.tag == tag)
        {
            return Err(AmqpException::new(
                rc::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        if queue_name.as_str() != direct_reply::PSEUDO_QUEUE {
            self.access
                .check(ObjectKind::Queue, &queue_name, Access::Read)?;
        }
        let channel = self.channel(ch)?;
        if queue_name.as_str() == direct_reply::PSEUDO_QUEUE {
            if !m.no_ack {
                return Err(precondition("reply consumer cannot acknowledge"));
            }
            if channel.reply.is_some() {
                return Err(precondition("reply consumer already set"));
            }
            channel.reply = Some(ReplyConsumer::register(
                Arc::clone(&channel.sink),
                tag.clone(),
                &vhost_name,
            ));
            if !m.nowait {
                self.reply(
                    ch,
                    Method::BasicConsumeOk(pier_wire::BasicConsumeOk { consumer_tag: tag }),
                );
            }
            return Ok(());
        }
        let priority = match m.arguments.get("x-priority") {
            None => 0,
            // RabbitMQ accepts any integer; only the order matters.
            Some(v) => match v.as_i64() {
                Some(p) => i32::try_from(p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)))
                    .unwrap_or_default(),
                None => {
                    return Err(precondition(format!(
                        "invalid arg 'x-priority' for queue '{queue_name}' in vhost '{}': \"expected integer, got {}\"",
                        self.vhost.name(),
                        v.type_name()
                    )))
                }
            },
        };
        let spec = ConsumerSpec {
            tag: tag.clone(),
            connection,
            ack_required: !m.no_ack,
            exclusive: m.exclusive,
            prefetch: channel.prefetch_count,
            priority,
            arguments: m.arguments,
            channel_credit: Arc::clone(&channel.credit),
            sink: Arc::clone(&channel.sink) as Arc<dyn pier_broker::DeliverySink>,
        };
        let queue = self.vhost.queue(&queue_name, connection)?;
        let outbound = Arc::clone(&self.outbound);
        let nowait = m.nowait;
        let reply_tag = tag.clone();
        let id = queue.add_consumer(spec, move || {
            if !nowait {
                outbound.send_method(
                    ch,
                    &Method::BasicConsumeOk(pier_wire::BasicConsumeOk {
                        consumer_tag: reply_tag,
                    }),
                );
            }
        })?;
        self.channel(ch)?
            .consumers
            .insert(tag, ConsumerHandle { queue, id });
        Ok(())
    }

    fn cancel_consumer(&mut self, ch: u16, tag: &ShortString) {
        self.forget_cancelled(ch);
        if let Some(channel) = self.channels.get_mut(&ch) {
            if channel.reply.as_ref().is_some_and(|r| &r.tag == tag) {
                // Unregisters the reply address.
                channel.reply = None;
                return;
            }
        }
        let Some(handle) = self
            .channels
            .get_mut(&ch)
            .and_then(|c| c.consumers.remove(tag))
        else {
            return;
        };
        let removed = handle.queue.remove_consumer(handle.id);
        if removed.auto_delete_now {
            self.vhost.remove_queue(&handle.queue);
        }
    }

    fn get(&mut self, ch: u16, queue: ShortString, no_ack: bool) -> Result<(), AmqpException> {
        let name = self.queue_name(ch, queue)?;
        self.access.check(ObjectKind::Queue, &name, Access::Read)?;
        let q = self.vhost.queue(&name, self.id)?;
        match q.get(!no_ack) {
            Some((delivery, remaining)) => self.outbound.send_get_ok(ch, delivery, remaining),
            None => self.reply(
                ch,
                Method::BasicGetEmpty(BasicGetEmpty {
                    cluster_id: ShortString::default(),
                }),
            ),
        }
        Ok(())
    }
}
