//! The queue class: queue.declare, bind, unbind, purge, delete.

use pier_broker::{Access, ObjectKind, QueueDeclare};
use pier_wire::{
    Method, QueueBind, QueueBindOk, QueueDeclareOk, QueueDelete, QueueDeleteOk, QueuePurge,
    QueuePurgeOk, QueueUnbind, QueueUnbindOk,
};

use super::{Channel, ChannelCx};
use crate::amqp::direct_reply;
use crate::amqp::error::AmqpException;

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
