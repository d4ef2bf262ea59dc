//! A channel's methods on a clustered node that wait for the cluster: durable declarations,
//! deletions and bindings, committed through the metadata group (`Metadata::execute`, which
//! returns once this node has applied the change: read-your-writes), and operations on
//! queues homed on other nodes (consume, cancel, get, purge, declare-ok's counts). Each leaves
//! a [`Pending`](super::Pending) that the reader loop awaits before the next frame.
//!
//! What is checked before a proposal is what depends on this node or this client: the
//! permissions (the dead-letter exchange's and the binding key's topic permission included),
//! the `amq.*` naming rule, `max-queues` (it counts this node's own transient queues), and
//! `if-unused`/`if-empty`, on the queue's home node. What the broker refuses when the change
//! is applied (inequivalent arguments, a missing exchange) is refused the same way on every
//! node and answered with the error a single node gives.
//!
//! **When the cluster cannot decide** (no reachable majority, a change not confirmed in time)
//! the client gets RabbitMQ's answer for a metadata store operation that timed out:
//! `541 INTERNAL_ERROR` (a connection error), in RabbitMQ 4's wording with the reason
//! appended, e.g. `INTERNAL_ERROR - Could not declare queue 'q' in vhost '/' on node
//! 'pier@n1' because the metadata store operation timed out (no reachable majority (1 of 3
//! nodes))`; the node's log has the whole reason. RabbitMQ 3.10 has no such case (its metadata is
//! Mnesia, which keeps going on both sides of a partition); 4.x, whose metadata store is Raft
//! (Khepri) as Pier's is, answers 541. See docs/decisions/0006-amqp-on-a-cluster.md.

use std::sync::Arc;

use pier_broker::{names, Access, BrokerError, ObjectKind, Queue};
use pier_cluster::metadata::{self, CommandError, DestinationKind, MetadataCommand, Outcome};
use pier_cluster::{Metadata, MetadataError};
use pier_wire::{
    reply_code as rc, BasicCancelOk, BasicConsumeOk, BasicGetEmpty, ExchangeBindOk,
    ExchangeDeclareOk, ExchangeDeleteOk, ExchangeUnbindOk, FieldTable, FieldValue, Method,
    QueueBindOk, QueueDeclareOk, QueueDeleteOk, QueuePurgeOk, QueueUnbindOk, ShortString,
};

use super::{Channel, ChannelCx, Completion, ConsumerHandle};
use crate::amqp::error::AmqpException;

/// A cluster that could not decide: RabbitMQ's 541 for a metadata operation that timed out.
fn cluster_failure(what: &str, e: &pier_cluster::ClusterError) -> AmqpException {
    tracing::warn!("{what}: {e}");
    AmqpException::new(rc::INTERNAL_ERROR, format!("{what} ({})", e.short_reason()))
}

/// Maps a metadata command's failure to what the client gets.
fn metadata_error(e: MetadataError, what: &str) -> AmqpException {
    match e {
        MetadataError::Refused(CommandError::Broker(b)) => b.into(),
        MetadataError::Refused(CommandError::NoVhost(v)) => {
            AmqpException::from(BrokerError::VhostNotFound(v))
        }
        MetadataError::Refused(other) => {
            AmqpException::new(rc::PRECONDITION_FAILED, other.to_string())
        }
        MetadataError::Cluster(c) => cluster_failure(what, &c),
    }
}

fn arguments(table: &FieldTable) -> Result<metadata::Arguments, AmqpException> {
    metadata::arguments(table).map_err(|e| AmqpException::new(rc::PRECONDITION_FAILED, e))
}

fn completion(
    f: impl FnOnce(&mut Channel, &mut ChannelCx<'_>) -> Result<(), AmqpException> + Send + 'static,
) -> Completion {
    Box::new(f)
}

impl Channel {
    /// Proposes `cmd`; `then` finishes the method once this node has applied it (with the
    /// outcome here), or the client gets the failure (`what` names the operation as
    /// RabbitMQ does).
    fn propose(
        &mut self,
        md: &Metadata,
        cmd: MetadataCommand,
        what: String,
        then: impl FnOnce(&mut Channel, &mut ChannelCx<'_>, Outcome) -> Result<(), AmqpException>
            + Send
            + 'static,
    ) {
        let md = md.clone();
        self.wait_for(async move {
            let r = md.execute(cmd).await;
            completion(move |ch, cx| match r {
                Ok(outcome) => then(ch, cx, outcome),
                Err(e) => Err(metadata_error(e, &what)),
            })
        });
    }

    // ---- exchanges ----

    /// exchange.declare of a durable exchange this node does not have: proposed. The caller
    /// checked the permissions.
    pub(super) fn exchange_declare_clustered(
        &mut self,
        cx: &mut ChannelCx<'_>,
        md: &Metadata,
        m: pier_wire::ExchangeDeclare,
    ) -> Result<(), AmqpException> {
        let vhost = cx.vhost.name().to_owned();
        let what = format!(
            "failed to declare exchange '{}' in vhost '{vhost}' because the operation timed out",
            m.exchange
        );
        let cmd = MetadataCommand::DeclareExchange {
            vhost,
            name: m.exchange.to_string(),
            kind: m.kind.to_string(),
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: arguments(&m.arguments)?,
        };
        let nowait = m.nowait;
        self.propose(md, cmd, what, move |ch, cx, _| {
            if !nowait {
                ch.reply(cx, Method::ExchangeDeclareOk(ExchangeDeclareOk {}));
            }
            Ok(())
        });
        Ok(())
    }

    /// exchange.delete of a durable exchange: `if-unused` is checked here, then the deletion
    /// is proposed.
    pub(super) fn exchange_delete_clustered(
        &mut self,
        cx: &mut ChannelCx<'_>,
        md: &Metadata,
        m: pier_wire::ExchangeDelete,
    ) -> Result<(), AmqpException> {
        let vhost = cx.vhost.name().to_owned();
        if m.if_unused && cx.vhost.exchange_has_bindings(&m.exchange) {
            return Err(BrokerError::InUse {
                kind: ObjectKind::Exchange,
                name: m.exchange.to_string(),
                vhost,
            }
            .into());
        }
        let what = format!(
            "failed to delete exchange '{}' in vhost '{vhost}' due to a timeout",
            m.exchange
        );
        let nowait = m.nowait;
        self.propose(
            md,
            MetadataCommand::DeleteExchange {
                vhost,
                name: m.exchange.to_string(),
            },
            what,
            move |ch, cx, _| {
                if !nowait {
                    ch.reply(cx, Method::ExchangeDeleteOk(ExchangeDeleteOk {}));
                }
                Ok(())
            },
        );
        Ok(())
    }

    /// A binding between durable objects (exchange.bind/unbind, queue.bind/unbind): proposed.
    /// The caller checked the permissions.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn binding_clustered(
        &mut self,
        cx: &mut ChannelCx<'_>,
        md: &Metadata,
        bind: bool,
        destination_kind: DestinationKind,
        destination: &str,
        source: &str,
        routing_key: &str,
        args: &FieldTable,
        nowait: bool,
    ) -> Result<(), AmqpException> {
        let vhost = cx.vhost.name().to_owned();
        let arguments = arguments(args)?;
        let cmd = if bind {
            MetadataCommand::Bind {
                vhost,
                source: source.to_owned(),
                destination: destination.to_owned(),
                destination_kind,
                routing_key: routing_key.to_owned(),
                arguments,
                skip_missing: false,
            }
        } else {
            MetadataCommand::Unbind {
                vhost,
                source: source.to_owned(),
                destination: destination.to_owned(),
                destination_kind,
                routing_key: routing_key.to_owned(),
                arguments,
            }
        };
        let what = format!(
            "Could not {} binding due to timeout",
            if bind { "add" } else { "remove" }
        );
        self.propose(md, cmd, what, move |ch, cx, _| {
            let ok = match (bind, destination_kind) {
                (true, DestinationKind::Queue) => Method::QueueBindOk(QueueBindOk {}),
                (false, DestinationKind::Queue) => Method::QueueUnbindOk(QueueUnbindOk {}),
                (true, DestinationKind::Exchange) => Method::ExchangeBindOk(ExchangeBindOk {}),
                (false, DestinationKind::Exchange) => Method::ExchangeUnbindOk(ExchangeUnbindOk {}),
            };
            // queue.unbind has no nowait.
            if !nowait || matches!(ok, Method::QueueUnbindOk(_)) {
                ch.reply(cx, ok);
            }
            Ok(())
        });
        Ok(())
    }

    // ---- queues ----

    /// queue.declare of a new durable, non-exclusive queue: its home is this node. Checks as
    /// a single node makes them (in RabbitMQ's order), then the proposal; declare-ok once
    /// this node has the queue.
    pub(super) fn queue_declare_clustered(
        &mut self,
        cx: &mut ChannelCx<'_>,
        md: &Metadata,
        m: pier_wire::QueueDeclare,
    ) -> Result<(), AmqpException> {
        let generated = m.queue.is_empty();
        let name = if generated {
            names::generated_queue_name()
        } else {
            m.queue.clone()
        };
        if !generated {
            names::check_not_reserved(ObjectKind::Queue, &name)?;
        }
        cx.access
            .check(ObjectKind::Queue, &name, Access::Configure)?;
        cx.vhost.check_queue_limit(&name)?;
        if let Some(FieldValue::LongString(dlx)) = m.arguments.get("x-dead-letter-exchange") {
            cx.access.check(ObjectKind::Queue, &name, Access::Read)?;
            cx.access
                .check(ObjectKind::Exchange, &dlx.to_str_lossy(), Access::Write)?;
        }
        let me = md
            .cluster()
            .map(|c| c.node_name().to_owned())
            .unwrap_or_default();
        let members = md
            .cluster()
            .map(|c| {
                let locator = cx.vhost.queue_leader_locator_policy(&name);
                c.queue_members(m.durable, &m.arguments, locator.as_deref())
            })
            .unwrap_or_else(|| vec![me.clone()]);
        let vhost = cx.vhost.name().to_owned();
        let what = format!(
            "Could not declare queue '{name}' in vhost '{vhost}' on node '{me}' because the \
             metadata store operation timed out"
        );
        let cmd = MetadataCommand::DeclareQueue {
            vhost,
            name: name.to_string(),
            durable: m.durable,
            auto_delete: m.auto_delete,
            arguments: arguments(&m.arguments)?,
            // The group's first leader forms it (this node unless x-queue-leader-locator
            // chose another).
            home: members.first().cloned().unwrap_or_else(|| me.clone()),
            members,
            // A server-chosen name is `amq.gen-…`, which the client rule refuses.
            checked: !generated,
        };
        let nowait = m.nowait;
        self.propose(md, cmd, what, move |ch, cx, _| {
            let q = cx.vhost.queue(&name, cx.connection)?;
            let stats = q.stats();
            ch.last_queue = Some(name.clone());
            if !nowait {
                ch.reply(
                    cx,
                    Method::QueueDeclareOk(QueueDeclareOk {
                        queue: name,
                        message_count: u32::try_from(stats.ready).unwrap_or(u32::MAX),
                        consumer_count: stats.consumers,
                    }),
                );
            }
            Ok(())
        });
        Ok(())
    }

    /// declare-ok for a queue homed on another node: its counts come from there (and the
    /// declaration counts as use there, for `x-expires`).
    pub(super) fn declare_ok_remote(&mut self, q: Arc<Queue>, nowait: bool) {
        let Some(stats) = q.stats_remote(true) else {
            return;
        };
        let name = q.name().clone();
        self.wait_for(async move {
            let r = stats.await;
            completion(move |ch, cx| {
                let s = r?;
                ch.last_queue = Some(name.clone());
                if !nowait {
                    ch.reply(
                        cx,
                        Method::QueueDeclareOk(QueueDeclareOk {
                            queue: name,
                            message_count: u32::try_from(s.ready).unwrap_or(u32::MAX),
                            consumer_count: s.consumers,
                        }),
                    );
                }
                Ok(())
            })
        });
    }

    /// queue.delete of a replicated queue: `if-unused`/`if-empty` are checked against the
    /// queue on its home node, then the deletion is proposed. This channel's own consumers
    /// of it hear of it after delete-ok, as on a single node.
    pub(super) fn queue_delete_clustered(
        &mut self,
        cx: &mut ChannelCx<'_>,
        md: &Metadata,
        q: Arc<Queue>,
        if_unused: bool,
        if_empty: bool,
        nowait: bool,
    ) -> Result<(), AmqpException> {
        if let Some(e) = q.unavailable() {
            return Err(e.into());
        }
        let vhost = cx.vhost.name().to_owned();
        let name = q.name().to_string();
        let stats = match q.stats_remote(false) {
            Some(fut) => fut,
            None => {
                let s = q.stats();
                Box::pin(async move { Ok(s) })
            }
        };
        let md = md.clone();
        cx.outbound.defer_cancels(self.number);
        self.wait_for(async move {
            let checked = match stats.await {
                Err(e) => Err(AmqpException::from(e)),
                Ok(s) if if_unused && s.consumers > 0 => Err(BrokerError::InUse {
                    kind: ObjectKind::Queue,
                    name: name.clone(),
                    vhost: vhost.clone(),
                }
                .into()),
                Ok(s) if if_empty && s.ready > 0 => Err(BrokerError::NotEmpty {
                    name: name.clone(),
                    vhost: vhost.clone(),
                }
                .into()),
                Ok(s) => Ok(s.ready),
            };
            let result = match checked {
                Err(e) => Err(e),
                Ok(ready) => md
                    .execute(MetadataCommand::DeleteQueue { vhost, name })
                    .await
                    .map(|_| ready)
                    .map_err(|e| {
                        metadata_error(
                            e,
                            "The operation to delete the queue from the metadata store timed out",
                        )
                    }),
            };
            completion(move |ch, cx| {
                let r = result.map(|ready| {
                    if !nowait {
                        ch.reply(
                            cx,
                            Method::QueueDeleteOk(QueueDeleteOk {
                                message_count: u32::try_from(ready).unwrap_or(u32::MAX),
                            }),
                        );
                    }
                });
                cx.outbound.send_deferred_cancels(ch.number);
                r
            })
        });
        Ok(())
    }

    /// queue.purge of a queue homed on another node.
    pub(super) fn queue_purge_remote(&mut self, q: &Arc<Queue>, nowait: bool) {
        let Some(purge) = q.purge_remote() else {
            return;
        };
        self.wait_for(async move {
            let r = purge.await;
            completion(move |ch, cx| {
                let message_count = r?;
                if !nowait {
                    ch.reply(cx, Method::QueuePurgeOk(QueuePurgeOk { message_count }));
                }
                Ok(())
            })
        });
    }

    // ---- consumers and basic.get ----

    /// basic.consume on a queue homed on another node: registered there, consume-ok here,
    /// then deliveries.
    pub(super) fn consume_remote(
        &mut self,
        q: Arc<Queue>,
        spec: pier_broker::ConsumerSpec,
        nowait: bool,
    ) {
        let tag = spec.tag.clone();
        let Some((id, registered)) = q.consume_remote(spec) else {
            return;
        };
        self.wait_for(async move {
            let r = registered.await;
            completion(move |ch, cx| {
                r?;
                if !nowait {
                    ch.reply(
                        cx,
                        Method::BasicConsumeOk(BasicConsumeOk {
                            consumer_tag: tag.clone(),
                        }),
                    );
                }
                ch.consumers.insert(
                    tag,
                    ConsumerHandle {
                        queue: Arc::clone(&q),
                        id,
                    },
                );
                q.activate_remote(id);
                Ok(())
            })
        });
    }

    /// basic.cancel of a consumer of a queue homed on another node: cancel-ok once every
    /// delivery that node sent it has been handed over.
    pub(super) fn cancel_remote(&mut self, handle: ConsumerHandle, tag: ShortString, nowait: bool) {
        let Some(cancelled) = handle.queue.cancel_remote(handle.id) else {
            return;
        };
        self.wait_for(async move {
            cancelled.await;
            completion(move |ch, cx| {
                if !nowait {
                    ch.reply(
                        cx,
                        Method::BasicCancelOk(BasicCancelOk { consumer_tag: tag }),
                    );
                }
                Ok(())
            })
        });
    }

    /// basic.get from a queue homed on another node.
    pub(super) fn get_remote(&mut self, q: &Arc<Queue>, no_ack: bool) {
        let Some(got) = q.get_remote(!no_ack) else {
            return;
        };
        self.wait_for(async move {
            let r = got.await;
            completion(move |ch, cx| {
                match r? {
                    Some((delivery, remaining)) => {
                        cx.outbound.send_get_ok(ch.number, delivery, remaining)
                    }
                    None => ch.reply(
                        cx,
                        Method::BasicGetEmpty(BasicGetEmpty {
                            cluster_id: ShortString::default(),
                        }),
                    ),
                }
                Ok(())
            })
        });
    }
}
