//! The basic class, consuming side: basic.qos, consume, cancel, get, ack, nack, reject,
//! recover. (basic.publish and its content frames: `publish.rs`.)
//!
//! Delivery tags and unacknowledged deliveries live in the broker's `session::Session`, kept
//! by the connection's `Outbound` under the lock that orders frames; here they are taken by
//! tag and handed back to their queues.

use std::sync::Arc;

use pier_broker::session::{self, Disposition, Unacked};
use pier_broker::{names, Access, ConsumerSpec, ObjectKind};
use pier_wire::{
    reply_code as rc, BasicCancel, BasicCancelOk, BasicGetEmpty, BasicQos, BasicQosOk,
    BasicRecoverOk, Method, ShortString,
};

use super::tx::TxAck;

/// basic.nack's or basic.reject's `requeue`, and which of the two asked: RabbitMQ 4.3's
/// quorum queues count a reject with requeue as a failed delivery, a nack with requeue not
/// (`rabbit_channel`: `settle(true, false)` against `requeue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requeue {
    No,
    /// basic.nack with requeue.
    Returned,
    /// basic.reject with requeue.
    Failed,
}

impl Requeue {
    pub(crate) fn nack(requeue: bool) -> Requeue {
        if requeue {
            Requeue::Returned
        } else {
            Requeue::No
        }
    }

    pub(crate) fn reject(requeue: bool) -> Requeue {
        if requeue {
            Requeue::Failed
        } else {
            Requeue::No
        }
    }
}
use super::{precondition, Channel, ChannelCx, ConsumerHandle};
use crate::amqp::direct_reply::{self, ReplyConsumer};
use crate::amqp::error::AmqpException;

impl Channel {
    pub(super) fn qos(&mut self, cx: &mut ChannelCx<'_>, m: BasicQos) -> Result<(), AmqpException> {
        if m.prefetch_size != 0 {
            return Err(AmqpException::new(
                rc::NOT_IMPLEMENTED,
                format!("prefetch_size!=0 ({})", m.prefetch_size),
            ));
        }
        // global=true where RabbitMQ 4.3 denies it: per consumer, as its channel does.
        if cx.config.deprecated_features.global_qos(m.global) {
            self.credit.set_limit(u32::from(m.prefetch_count));
            // A raised limit may release consumers waiting on it.
            self.consumed_queues().iter().for_each(|q| q.dispatch());
        } else {
            self.prefetch_count = u32::from(m.prefetch_count);
        }
        self.reply(cx, Method::BasicQosOk(BasicQosOk {}));
        Ok(())
    }

    /// The deliveries an ack/nack/reject names (RabbitMQ's 406 for an unknown tag).
    fn take(
        &self,
        cx: &ChannelCx<'_>,
        tag: u64,
        multiple: bool,
    ) -> Result<Vec<Unacked>, AmqpException> {
        cx.outbound
            .with_channel(self.number, |s| s.take(tag, multiple))
            .flatten()
            .ok_or_else(|| precondition(format!("unknown delivery tag {tag}")))
    }

    pub(super) fn ack(
        &mut self,
        cx: &mut ChannelCx<'_>,
        tag: u64,
        multiple: bool,
        committing: bool,
    ) -> Result<(), AmqpException> {
        if !committing {
            if let Some(tx) = self.tx.as_mut() {
                tx.acks.push(TxAck::Ack { tag, multiple });
                return Ok(());
            }
        }
        let taken = self.take(cx, tag, multiple)?;
        self.release_channel_credit(&taken);
        session::dispose(&taken, Disposition::Ack);
        Ok(())
    }

    pub(super) fn nack(
        &mut self,
        cx: &mut ChannelCx<'_>,
        tag: u64,
        multiple: bool,
        requeue: Requeue,
        committing: bool,
    ) -> Result<(), AmqpException> {
        if !committing {
            if let Some(tx) = self.tx.as_mut() {
                tx.acks.push(TxAck::Nack {
                    tag,
                    multiple,
                    requeue,
                });
                return Ok(());
            }
        }
        let taken = self.take(cx, tag, multiple)?;
        self.release_channel_credit(&taken);
        if let Some(u) = taken
            .iter()
            .find(|u| u.queue.kind() == pier_broker::queue::QueueType::Stream)
        {
            // RabbitMQ 3.10 refuses nack and reject of stream deliveries (540).
            let detail = format!(
                "basic.nack and basic.reject not supported by stream queues queue '{}' in vhost '{}'",
                u.queue.name(),
                u.queue.vhost()
            );
            session::dispose(&taken, Disposition::Ack);
            return Err(AmqpException::new(rc::NOT_IMPLEMENTED, detail));
        }
        match requeue {
            Requeue::Returned => session::requeue_all(taken, false),
            Requeue::Failed => session::requeue_all(taken, true),
            // Dead-lettered by queues that have a dead-letter exchange.
            Requeue::No => session::dispose(&taken, Disposition::Reject),
        }
        Ok(())
    }

    /// Returns the channel-level prefetch credit these deliveries held; if the channel was at
    /// its limit, its consumers' queues get a chance to deliver again.
    fn release_channel_credit(&self, taken: &[Unacked]) {
        let n = session::consumer_deliveries(taken);
        if n > 0 && self.credit.release(n) {
            self.consumed_queues().iter().for_each(|q| q.dispatch());
        }
    }

    pub(super) fn recover(
        &mut self,
        cx: &mut ChannelCx<'_>,
        requeue: bool,
        reply: bool,
    ) -> Result<(), AmqpException> {
        if !requeue {
            return Err(AmqpException::new(rc::NOT_IMPLEMENTED, "requeue=false"));
        }
        let taken = self.take(cx, 0, true)?;
        // recover-ok goes first: clients (lapin among them) expect it before the redeliveries.
        if reply {
            self.reply(cx, Method::BasicRecoverOk(BasicRecoverOk {}));
        }
        self.release_channel_credit(&taken);
        // Not failed deliveries (RabbitMQ's recover requeues as a nack does).
        session::requeue_all(taken, false);
        Ok(())
    }

    /// Drops consumers the broker cancelled (their queue went away).
    fn forget_cancelled(&mut self, cx: &ChannelCx<'_>) {
        let cancelled = cx
            .outbound
            .with_channel(self.number, |s| s.take_cancelled())
            .unwrap_or_default();
        for tag in cancelled {
            self.consumers.remove(&tag);
        }
    }

    pub(super) fn consume(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: pier_wire::BasicConsume,
    ) -> Result<(), AmqpException> {
        self.forget_cancelled(cx);
        let queue_name = self.queue_name(m.queue)?;
        let tag = if m.consumer_tag.is_empty() {
            names::generated_consumer_tag()
        } else {
            m.consumer_tag
        };
        if self.consumers.contains_key(&tag) || self.reply.as_ref().is_some_and(|r| r.tag == tag) {
            return Err(AmqpException::new(
                rc::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        if queue_name.as_str() == direct_reply::PSEUDO_QUEUE {
            if !m.no_ack {
                return Err(precondition("reply consumer cannot acknowledge"));
            }
            if self.reply.is_some() {
                return Err(precondition("reply consumer already set"));
            }
            self.reply = Some(ReplyConsumer::register(
                Arc::clone(&self.sink),
                tag.clone(),
                cx.vhost.name(),
            ));
            if !m.nowait {
                self.reply(
                    cx,
                    Method::BasicConsumeOk(pier_wire::BasicConsumeOk { consumer_tag: tag }),
                );
            }
            return Ok(());
        }
        cx.access
            .check(ObjectKind::Queue, &queue_name, Access::Read)?;
        let priority = match m.arguments.get("x-priority") {
            None => 0,
            // RabbitMQ accepts any integer; only the order matters.
            Some(v) => match v.as_i64() {
                Some(p) => i32::try_from(p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)))
                    .unwrap_or_default(),
                None => {
                    return Err(precondition(format!(
                        "invalid arg 'x-priority' for queue '{queue_name}' in vhost '{}': \"expected integer, got {}\"",
                        cx.vhost.name(),
                        v.type_name()
                    )))
                }
            },
        };
        let spec = ConsumerSpec {
            tag: tag.clone(),
            connection: cx.connection,
            ack_required: !m.no_ack,
            exclusive: m.exclusive,
            prefetch: self.prefetch_count,
            priority,
            arguments: m.arguments,
            channel_credit: Arc::clone(&self.credit),
            sink: Arc::clone(&self.sink) as Arc<dyn pier_broker::DeliverySink>,
        };
        let queue = cx.vhost.queue(&queue_name, cx.connection)?;
        if queue.kind() == pier_broker::queue::QueueType::Quorum && self.credit.limit() > 0 {
            // RabbitMQ: quorum queues refuse a consumer on a channel with global prefetch.
            return Err(AmqpException::new(
                rc::NOT_IMPLEMENTED,
                format!(
                    "queue '{queue_name}' in vhost '{}' does not support global qos",
                    cx.vhost.name()
                ),
            ));
        }
        if queue.is_remote() {
            // Homed on another node: registered there first.
            self.consume_remote(queue, spec, m.nowait);
            return Ok(());
        }
        let outbound = Arc::clone(cx.outbound);
        let (nowait, number, reply_tag) = (m.nowait, self.number, tag.clone());
        let id = queue.add_consumer(spec, move || {
            // Under the queue lock, before any delivery: consume-ok comes first.
            if !nowait {
                outbound.send_method(
                    number,
                    &Method::BasicConsumeOk(pier_wire::BasicConsumeOk {
                        consumer_tag: reply_tag,
                    }),
                );
            }
        })?;
        self.consumers.insert(tag, ConsumerHandle { queue, id });
        Ok(())
    }

    pub(super) fn basic_cancel(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: BasicCancel,
    ) -> Result<(), AmqpException> {
        self.forget_cancelled(cx);
        if self
            .consumers
            .get(&m.consumer_tag)
            .is_some_and(|h| h.queue.is_remote())
        {
            if let Some(handle) = self.consumers.remove(&m.consumer_tag) {
                self.cancel_remote(handle, m.consumer_tag, m.nowait);
                return Ok(());
            }
        }
        self.cancel_consumer(cx, &m.consumer_tag);
        if !m.nowait {
            self.reply(
                cx,
                Method::BasicCancelOk(BasicCancelOk {
                    consumer_tag: m.consumer_tag,
                }),
            );
        }
        Ok(())
    }

    fn cancel_consumer(&mut self, cx: &ChannelCx<'_>, tag: &ShortString) {
        self.forget_cancelled(cx);
        if self.reply.as_ref().is_some_and(|r| &r.tag == tag) {
            // Unregisters the reply address.
            self.reply = None;
            return;
        }
        let Some(handle) = self.consumers.remove(tag) else {
            return;
        };
        let removed = handle.queue.remove_consumer(handle.id);
        if removed.auto_delete_now {
            cx.vhost.auto_delete_queue(&handle.queue);
        }
    }

    pub(super) fn get(
        &mut self,
        cx: &mut ChannelCx<'_>,
        queue: ShortString,
        no_ack: bool,
    ) -> Result<(), AmqpException> {
        let name = self.queue_name(queue)?;
        cx.access.check(ObjectKind::Queue, &name, Access::Read)?;
        let q = cx.vhost.queue(&name, cx.connection)?;
        if q.kind() == pier_broker::queue::QueueType::Stream {
            return Err(AmqpException::new(
                rc::NOT_IMPLEMENTED,
                format!(
                    "basic.get not supported by stream queues queue '{name}' in vhost '{}'",
                    cx.vhost.name()
                ),
            ));
        }
        if q.is_remote() {
            self.get_remote(&q, no_ack);
            return Ok(());
        }
        match q.get(!no_ack) {
            Some((delivery, remaining)) => {
                cx.outbound.send_get_ok(self.number, delivery, remaining)
            }
            None => self.reply(
                cx,
                Method::BasicGetEmpty(BasicGetEmpty {
                    cluster_id: ShortString::default(),
                }),
            ),
        }
        Ok(())
    }
}
