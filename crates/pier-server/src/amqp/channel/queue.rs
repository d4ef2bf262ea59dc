//! The queue class: queue.declare, bind, unbind, purge, delete.

use pier_broker::{Access, ObjectKind, QueueDeclare};
use pier_wire::{
    Method, QueueBind, QueueBindOk, QueueDeclareOk, QueueDelete, QueueDeleteOk, QueuePurge,
    QueuePurgeOk, QueueUnbind, QueueUnbindOk,
};

use super::{Channel, ChannelCx};
use crate::amqp::direct_reply;
use crate::amqp::error::AmqpException;
use pier_cluster::metadata::DestinationKind;

impl Channel {
    pub(super) fn queue_declare(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: pier_wire::QueueDeclare,
    ) -> Result<(), AmqpException> {
        if m.queue.as_str() == direct_reply::PSEUDO_QUEUE {
            // The direct reply-to pseudo-queue always "exists", as in RabbitMQ.
            if !m.nowait {
                self.reply(
                    cx,
                    Method::QueueDeclareOk(QueueDeclareOk {
                        queue: m.queue,
                        message_count: 0,
                        consumer_count: 1,
                    }),
                );
            }
            return Ok(());
        }
        if !m.passive {
            cx.config.deprecated_features.check_queue_declare(
                &m.queue,
                cx.vhost.name(),
                m.durable,
                m.exclusive,
                &m.arguments,
            )?;
        }
        if let Some(md) = cx.cluster {
            // A new durable, non-exclusive queue is the cluster's, homed here.
            if !m.passive
                && m.durable
                && !m.exclusive
                && (m.queue.is_empty() || cx.vhost.find_queue(&m.queue).is_none())
            {
                cx.vhost
                    .refuse_server_named(&m.queue, m.passive, &m.arguments)?;
                return self.queue_declare_clustered(cx, md, m);
            }
        }
        // Permissions are checked inside the declaration (a server-named queue's name is
        // only known there), against the permission as of now.
        cx.access.refresh();
        let access = &*cx.access;
        #[allow(clippy::result_large_err)]
        let mut authorize = |kind, name: &str, a| access.check_current(kind, name, a);
        let declared = cx.vhost.declare_queue_checked(
            &QueueDeclare {
                name: m.queue,
                passive: m.passive,
                durable: m.durable,
                exclusive: m.exclusive,
                auto_delete: m.auto_delete,
                arguments: m.arguments,
                connection: cx.connection,
            },
            &mut authorize,
        )?;
        if declared.queue.is_remote() {
            // Its counts are on its home node.
            self.declare_ok_remote(declared.queue, m.nowait);
            return Ok(());
        }
        let name = declared.queue.name().clone();
        self.last_queue = Some(name.clone());
        if !m.nowait {
            self.reply(
                cx,
                Method::QueueDeclareOk(QueueDeclareOk {
                    queue: name,
                    message_count: declared.message_count,
                    consumer_count: declared.consumer_count,
                }),
            );
        }
        Ok(())
    }

    pub(super) fn queue_bind(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: QueueBind,
    ) -> Result<(), AmqpException> {
        let queue = self.queue_name(m.queue)?;
        Channel::authorize_binding(cx, ObjectKind::Queue, &queue, &m.exchange, &m.routing_key)?;
        if let Some(md) = cx.cluster {
            if replicated_binding(cx, &queue, &m.exchange) {
                return self.binding_clustered(
                    cx,
                    md,
                    true,
                    DestinationKind::Queue,
                    &queue,
                    &m.exchange,
                    &m.routing_key,
                    &m.arguments,
                    m.nowait,
                );
            }
        }
        cx.vhost.bind_queue(
            &queue,
            &m.exchange,
            m.routing_key,
            m.arguments,
            cx.connection,
        )?;
        if !m.nowait {
            self.reply(cx, Method::QueueBindOk(QueueBindOk {}));
        }
        Ok(())
    }

    pub(super) fn queue_unbind(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: QueueUnbind,
    ) -> Result<(), AmqpException> {
        let queue = self.queue_name(m.queue)?;
        Channel::authorize_binding(cx, ObjectKind::Queue, &queue, &m.exchange, &m.routing_key)?;
        if let Some(md) = cx.cluster {
            if replicated_binding(cx, &queue, &m.exchange) {
                return self.binding_clustered(
                    cx,
                    md,
                    false,
                    DestinationKind::Queue,
                    &queue,
                    &m.exchange,
                    &m.routing_key,
                    &m.arguments,
                    false,
                );
            }
        }
        cx.vhost.unbind_queue(
            &queue,
            &m.exchange,
            m.routing_key,
            m.arguments,
            cx.connection,
        )?;
        self.reply(cx, Method::QueueUnbindOk(QueueUnbindOk {}));
        Ok(())
    }

    pub(super) fn queue_purge(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: QueuePurge,
    ) -> Result<(), AmqpException> {
        let queue = self.queue_name(m.queue)?;
        cx.access.check(ObjectKind::Queue, &queue, Access::Read)?;
        let q = cx.vhost.queue(&queue, cx.connection)?;
        // A stream (here or homed elsewhere) is refused by the vhost, as RabbitMQ does.
        if q.is_remote() && q.kind() != pier_broker::queue::QueueType::Stream {
            self.queue_purge_remote(&q, m.nowait);
            return Ok(());
        }
        let message_count = cx.vhost.purge_queue(&queue, cx.connection)?;
        if !m.nowait {
            self.reply(cx, Method::QueuePurgeOk(QueuePurgeOk { message_count }));
        }
        Ok(())
    }

    pub(super) fn queue_delete(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: QueueDelete,
    ) -> Result<(), AmqpException> {
        let queue = self.queue_name(m.queue)?;
        cx.access
            .check(ObjectKind::Queue, &queue, Access::Configure)?;
        if let Some(md) = cx.cluster {
            if let Some(q) = cx.vhost.find_queue(&queue) {
                if cx.vhost.is_replicated_queue(&q) {
                    cx.vhost
                        .refuse_conditional_delete(&q, m.if_unused, m.if_empty)?;
                    return self.queue_delete_clustered(
                        cx,
                        md,
                        q,
                        m.if_unused,
                        m.if_empty,
                        m.nowait,
                    );
                }
            }
        }
        // This channel's own consumers of the queue hear of it after delete-ok.
        cx.outbound.defer_cancels(self.number);
        let deleted = cx
            .vhost
            .delete_queue(&queue, m.if_unused, m.if_empty, cx.connection);
        if let Ok(&message_count) = deleted.as_ref() {
            if !m.nowait {
                self.reply(cx, Method::QueueDeleteOk(QueueDeleteOk { message_count }));
            }
        }
        cx.outbound.send_deferred_cancels(self.number);
        deleted?;
        Ok(())
    }
}

/// A binding the cluster holds: a durable exchange (not the default one) and a replicated
/// queue. Anything else (a missing end included) takes the local path and its errors.
fn replicated_binding(cx: &ChannelCx<'_>, queue: &str, exchange: &str) -> bool {
    !exchange.is_empty()
        && cx.vhost.is_durable_exchange(exchange)
        && cx
            .vhost
            .find_queue(queue)
            .is_some_and(|q| cx.vhost.is_replicated_queue(&q))
}
