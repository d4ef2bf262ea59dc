//! The exchange class: exchange.declare, delete, bind, unbind.

use pier_broker::{Access, ExchangeDeclare, ObjectKind};
use pier_cluster::metadata::DestinationKind;
use pier_wire::{
    ExchangeBind, ExchangeBindOk, ExchangeDeclareOk, ExchangeDelete, ExchangeDeleteOk,
    ExchangeUnbind, ExchangeUnbindOk, FieldTable, FieldValue, Method,
};

use super::{Channel, ChannelCx};
use crate::amqp::error::AmqpException;

impl Channel {
    pub(super) fn exchange_declare(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: pier_wire::ExchangeDeclare,
    ) -> Result<(), AmqpException> {
        if !m.passive && !m.exchange.is_empty() {
            authorize_exchange_declare(cx, &m.exchange, &m.arguments)?;
        }
        if let Some(md) = cx.cluster {
            // A new durable exchange is the cluster's; an existing one is only compared.
            if !m.passive
                && m.durable
                && !m.exchange.is_empty()
                && !cx.vhost.exchange_exists(&m.exchange)
            {
                return self.exchange_declare_clustered(cx, md, m);
            }
        }
        cx.vhost.declare_exchange(&ExchangeDeclare {
            name: m.exchange,
            kind: m.kind.to_string(),
            passive: m.passive,
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: m.arguments,
        })?;
        if !m.nowait {
            self.reply(cx, Method::ExchangeDeclareOk(ExchangeDeclareOk {}));
        }
        Ok(())
    }

    pub(super) fn exchange_delete(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: ExchangeDelete,
    ) -> Result<(), AmqpException> {
        // The default and amq.* exchanges are refused before permissions are checked.
        if !m.exchange.is_empty() && !m.exchange.starts_with("amq.") {
            cx.access
                .check(ObjectKind::Exchange, &m.exchange, Access::Configure)?;
            if let Some(md) = cx.cluster {
                if cx.vhost.is_durable_exchange(&m.exchange) {
                    return self.exchange_delete_clustered(cx, md, m);
                }
            }
        }
        cx.vhost.delete_exchange(&m.exchange, m.if_unused)?;
        if !m.nowait {
            self.reply(cx, Method::ExchangeDeleteOk(ExchangeDeleteOk {}));
        }
        Ok(())
    }

    pub(super) fn exchange_bind(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: ExchangeBind,
    ) -> Result<(), AmqpException> {
        Channel::authorize_binding(
            cx,
            ObjectKind::Exchange,
            &m.destination,
            &m.source,
            &m.routing_key,
        )?;
        if let Some(md) = cx.cluster {
            if durable_pair(cx, &m.destination, &m.source) {
                return self.binding_clustered(
                    cx,
                    md,
                    true,
                    DestinationKind::Exchange,
                    &m.destination,
                    &m.source,
                    &m.routing_key,
                    &m.arguments,
                    m.nowait,
                );
            }
        }
        cx.vhost
            .bind_exchange(&m.destination, &m.source, m.routing_key, m.arguments)?;
        if !m.nowait {
            self.reply(cx, Method::ExchangeBindOk(ExchangeBindOk {}));
        }
        Ok(())
    }

    pub(super) fn exchange_unbind(
        &mut self,
        cx: &mut ChannelCx<'_>,
        m: ExchangeUnbind,
    ) -> Result<(), AmqpException> {
        Channel::authorize_binding(
            cx,
            ObjectKind::Exchange,
            &m.destination,
            &m.source,
            &m.routing_key,
        )?;
        if let Some(md) = cx.cluster {
            if durable_pair(cx, &m.destination, &m.source) {
                return self.binding_clustered(
                    cx,
                    md,
                    false,
                    DestinationKind::Exchange,
                    &m.destination,
                    &m.source,
                    &m.routing_key,
                    &m.arguments,
                    m.nowait,
                );
            }
        }
        cx.vhost
            .unbind_exchange(&m.destination, &m.source, m.routing_key, m.arguments)?;
        if !m.nowait {
            self.reply(cx, Method::ExchangeUnbindOk(ExchangeUnbindOk {}));
        }
        Ok(())
    }
}

/// Both ends are durable exchanges (a binding the cluster holds).
fn durable_pair(cx: &ChannelCx<'_>, destination: &str, source: &str) -> bool {
    !destination.is_empty()
        && !source.is_empty()
        && cx.vhost.is_durable_exchange(destination)
        && cx.vhost.is_durable_exchange(source)
}

/// exchange.declare (not passive): configure access to the exchange; when it is created with
/// an alternate exchange, read access to it and write access to the alternate, as RabbitMQ
/// checks them.
fn authorize_exchange_declare(
    cx: &mut ChannelCx<'_>,
    name: &str,
    arguments: &FieldTable,
) -> Result<(), AmqpException> {
    cx.access
        .check(ObjectKind::Exchange, name, Access::Configure)?;
    if let Some(FieldValue::LongString(ae)) = arguments.get("alternate-exchange") {
        if !cx.vhost.exchange_exists(name) {
            cx.access.check(ObjectKind::Exchange, name, Access::Read)?;
            cx.access
                .check(ObjectKind::Exchange, &ae.to_str_lossy(), Access::Write)?;
        }
    }
    Ok(())
}
