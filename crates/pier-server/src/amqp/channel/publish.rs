//! basic.publish: the method, its content header and body frames, and the hand-over to the
//! broker's one publish path (`VHost::publish`).
//!
//! ```text
//!  basic.publish ─► PendingPublish ─► content header ─► body frame(s) ─► finish_publish
//!                    (checks)           (size limit)     (zero-copy first   (permissions,
//!                                                        frame, one copy    user-id, expiry,
//!                                                        for the rest)      direct reply-to)
//!                                                                            └► route_message
//! ```

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pier_broker::persist::PublishDurability;
use pier_broker::{parse_expiration, Access, Durability, Message, PublishOptions};
use pier_wire::{reply_code as rc, BasicPublish, ContentHeader};

use super::{precondition, Channel, ChannelCx};
use crate::amqp::direct_reply;
use crate::amqp::error::AmqpException;

/// A publish waiting for its content header and body frames.
pub(crate) struct PendingPublish {
    method: BasicPublish,
    header: Option<ContentHeader>,
    /// The first body frame is kept as is (zero-copy); later ones are appended to `rest`.
    first: Option<Bytes>,
    rest: Option<BytesMut>,
    received: u64,
}

impl Channel {
    pub(super) fn start_publish(&mut self, m: BasicPublish) -> Result<(), AmqpException> {
        if m.immediate {
            return Err(AmqpException::new(rc::NOT_IMPLEMENTED, "immediate=true"));
        }
        self.pending = Some(PendingPublish {
            method: m,
            header: None,
            first: None,
            rest: None,
            received: 0,
        });
        Ok(())
    }

    pub(crate) fn content_header(
        &mut self,
        cx: &mut ChannelCx<'_>,
        header: ContentHeader,
    ) -> Result<(), AmqpException> {
        let max = cx.config.max_message_size;
        let Some(p) = self.pending.as_mut() else {
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
            self.pending = None;
            return Err(precondition(format!(
                "message size {} is larger than configured max size {max}",
                header.body_size
            ))
            .on_ids(60, 40));
        }
        let complete = header.body_size == 0;
        p.header = Some(header);
        if complete {
            self.finish_publish(cx)?;
        }
        Ok(())
    }

    pub(crate) fn content_body(
        &mut self,
        cx: &mut ChannelCx<'_>,
        payload: Bytes,
    ) -> Result<(), AmqpException> {
        let Some(p) = self.pending.as_mut() else {
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
            self.finish_publish(cx)?;
        }
        Ok(())
    }

    fn finish_publish(&mut self, cx: &mut ChannelCx<'_>) -> Result<(), AmqpException> {
        let Some(p) = self.pending.take() else {
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
        cx.access
            .check_publish(&p.method.exchange)
            .map_err(|e| e.on_ids(60, 40))?;
        let vhost = cx.vhost;
        let exchange = &p.method.exchange;
        cx.access
            .check_topic(exchange, &p.method.routing_key, Access::Write, || {
                vhost.is_topic_exchange(exchange)
            })
            .map_err(|e| e.on_ids(60, 40))?;
        if let Some(uid) = &header.properties.user_id {
            if uid.as_str() != cx.user.name {
                return Err(precondition(format!(
                    "user_id property set to '{uid}' but authenticated user was '{}'",
                    cx.user.name
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
            Some(r) if r.as_str() == direct_reply::PSEUDO_QUEUE => match self.reply.as_ref() {
                Some(reply) => Some(reply.address.clone()),
                None => {
                    return Err(precondition("fast reply consumer does not exist").on_ids(60, 40))
                }
            },
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
        if let Some(tx) = self.tx.as_mut() {
            // Routing errors surface at publish time, as RabbitMQ does, then the message waits.
            if !message.exchange.is_empty() && !cx.vhost.exchange_exists(&message.exchange) {
                return Err(AmqpException::from(pier_broker::BrokerError::NotFound {
                    kind: pier_broker::ObjectKind::Exchange,
                    name: message.exchange.to_string(),
                    vhost: cx.vhost.name().to_owned(),
                })
                .on_ids(60, 40));
            }
            tx.publishes.push((message, p.method.mandatory));
            return Ok(());
        }
        self.route_message(cx, message, p.method.mandatory)
    }

    /// Hands a complete message to the broker's one publish path, with the channel's
    /// confirm, mandatory and credit handling around it.
    pub(super) fn route_message(
        &mut self,
        cx: &mut ChannelCx<'_>,
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
                cx.outbound
                    .send_return(self.number, rc::NO_ROUTE, "NO_ROUTE", message);
            }
            if self.confirm {
                self.publish_seq += 1;
            }
            return Ok(());
        }
        // In confirm mode a persistent message's ack waits until every stored copy is on disk.
        let confirm_seq = self.confirm.then(|| {
            self.publish_seq += 1;
            self.publish_seq
        });
        // A persistent message takes connection credit (credit.rs) until every stored copy is
        // on disk, through a durability token that also holds its confirm back until then.
        // In confirm mode the token exists before routing (a delayed exchange stores the
        // message instead of routing it); otherwise only once a storing queue is among the
        // routes, so that persistent messages to transient queues cost nothing extra.
        let persistent = message.is_persistent();
        let number = self.number;
        let token = match confirm_seq {
            Some(seq) if persistent => Some(durability_token(cx, number, Some(seq), &message)),
            _ => None,
        };
        // A stream stores every message, persistent or not: in confirm mode a transient
        // message's confirm waits for the stream's fsync too (made only if one is routed to).
        let on_store_seq = if persistent { None } else { confirm_seq };
        let mut on_store = || durability_token(cx, number, on_store_seq, &message);
        let durability = match (&token, persistent) {
            (Some(t), _) => Durability::Token(t),
            (None, _) => Durability::OnStore(&mut on_store),
        };
        let published = cx.vhost.publish(
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
            cx.outbound
                .send_return(number, rc::NO_ROUTE, "NO_ROUTE", returned);
        }
        if let Some(d) = token {
            d.release();
        }
        if let (Some(seq), true) = (confirm_seq, outcome.rejected) {
            // A queue refused it (x-overflow reject-publish): basic.nack.
            cx.outbound.confirm_nack(number, seq);
        }
        Ok(())
    }
}

/// The token a persistent publish hands to the queues that store it: it holds connection
/// credit until every stored copy is on disk (or routing released it), and in confirm mode
/// the publish's confirm.
fn durability_token(
    cx: &ChannelCx<'_>,
    channel: u16,
    confirm_seq: Option<u64>,
    message: &Message,
) -> Arc<PublishDurability> {
    let in_flight = cx.credit.take(message.body.len() as u64);
    let confirm = confirm_seq.map(|seq| {
        cx.outbound.confirm_wait(channel, seq);
        (Arc::clone(cx.outbound), seq)
    });
    PublishDurability::new(move |ok| {
        drop(in_flight);
        if let Some((outbound, seq)) = confirm {
            outbound.confirm_durable(channel, seq, ok);
        }
    })
}
