//! Super streams: a direct exchange (argument `x-super-stream: true`) bound to its partition
//! streams, each binding with `x-stream-partition-order` (RabbitMQ's layout, so `rabbitmq-
//! streams add_super_stream`, the stream clients and AMQP publishers all see the same thing).

use pier_broker::queue::kind::QueueType;
use pier_broker::vhost::{ExchangeDeclare, QueueDeclare};
use pier_broker::{BrokerError, VHost};
use pier_cluster::metadata::{self, CommandError, DestinationKind, MetadataCommand, Outcome};
use pier_cluster::{Metadata, MetadataError};
use pier_wire::{FieldTable, FieldValue, ShortString};

use pier_broker::exchange::Destination;

pub(crate) const PARTITION_ORDER: &str = "x-stream-partition-order";

/// Stream-protocol creation arguments (`max-age`, …) as queue arguments (`x-max-age`, …).
pub(crate) fn queue_arguments(args: &[(String, String)]) -> FieldTable {
    let mut t = FieldTable::new();
    t.insert("x-queue-type", FieldValue::LongString("stream".into()));
    for (k, v) in args {
        let key = format!("x-{k}");
        let value = match k.as_str() {
            "max-age" | "queue-leader-locator" => FieldValue::LongString(v.as_str().into()),
            _ => match v.parse::<i64>() {
                Ok(n) => FieldValue::LongLongInt(n),
                Err(_) => FieldValue::LongString(v.as_str().into()),
            },
        };
        t.insert(ShortString::truncated(&key), value);
    }
    t
}

/// Why a declaration or deletion failed: refused by the broker's rules, here or (on a
/// clustered node) where the cluster applied it, or the cluster could not decide.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeclareError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Cluster(#[from] MetadataError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// Whether a stream `name` exists (on any node of a cluster); an error when a queue of
/// another type has the name.
fn stream_exists(vh: &VHost, name: &str) -> Result<bool, BrokerError> {
    match vh.find_queue(name) {
        None => Ok(false),
        Some(q) if q.kind() == QueueType::Stream => Ok(true),
        Some(_) => Err(BrokerError::PreconditionFailed(format!(
            "queue '{name}' exists and is not a stream"
        ))),
    }
}

fn this_node(md: &Metadata) -> String {
    md.cluster()
        .map(|c| c.node_name().to_owned())
        .unwrap_or_default()
}

/// The cluster's declaration of stream `name`, homed on this node (RabbitMQ puts a new
/// stream's leader on the node the client is connected to by default).
fn declare_command(
    md: &Metadata,
    vh: &VHost,
    name: &str,
    args: &[(String, String)],
) -> Result<MetadataCommand, DeclareError> {
    let me = this_node(md);
    let table = queue_arguments(args);
    // Its replicas: every member of the cluster unless `initial-cluster-size` says fewer.
    let members = md
        .cluster()
        .map_or_else(|| vec![me.clone()], |c| c.queue_members(true, &table, None));
    Ok(MetadataCommand::DeclareQueue {
        vhost: vh.name().to_owned(),
        name: name.to_owned(),
        durable: true,
        auto_delete: false,
        arguments: metadata::arguments(&table)?,
        home: me,
        members,
        checked: true,
    })
}

/// Declares a stream; `Ok(false)` when it already existed. On a clustered node (`md`) the
/// declaration goes through the cluster, as an AMQP client's would.
pub(crate) async fn create_stream_any(
    md: Option<&Metadata>,
    vh: &VHost,
    name: &str,
    args: &[(String, String)],
    connection: u64,
) -> Result<bool, DeclareError> {
    let Some(md) = md else {
        return Ok(create_stream(vh, name, args, connection)?);
    };
    if stream_exists(vh, name)? {
        return Ok(false);
    }
    pier_broker::names::check_not_reserved(pier_broker::ObjectKind::Queue, name)?;
    // As for AMQP: `max-queues` is checked where the declaration is made.
    vh.check_queue_limit(name)?;
    let outcome = md.execute(declare_command(md, vh, name, args)?).await?;
    Ok(outcome.created())
}

/// Deletes stream `name` (through the cluster on a clustered node); `Ok(false)` when there
/// is none.
pub(crate) async fn delete_stream_any(
    md: Option<&Metadata>,
    vh: &VHost,
    name: &str,
    connection: u64,
) -> Result<bool, DeclareError> {
    if !stream_exists(vh, name)? {
        return Ok(false);
    }
    match md {
        None => {
            vh.delete_queue(name, false, false, connection)?;
            Ok(true)
        }
        Some(md) => Ok(md
            .execute(MetadataCommand::DeleteQueue {
                vhost: vh.name().to_owned(),
                name: name.to_owned(),
            })
            .await?
            .removed()),
    }
}

/// The outcome of a batch, or the first refusal in it.
fn batch_result(outcome: Outcome) -> Result<(), DeclareError> {
    if let Outcome::Batch(results) = outcome {
        for r in results {
            r?;
        }
    }
    Ok(())
}

/// Declares a stream; `Ok(false)` when it already existed.
fn create_stream(
    vh: &VHost,
    name: &str,
    args: &[(String, String)],
    connection: u64,
) -> Result<bool, BrokerError> {
    let name = ShortString::try_from_string(name.to_owned())
        .map_err(|_| BrokerError::PreconditionFailed("stream name too long".into()))?;
    if stream_exists(vh, &name)? {
        return Ok(false);
    }
    pier_broker::names::check_not_reserved(pier_broker::ObjectKind::Queue, &name)?;
    let d = vh.declare_queue(&QueueDeclare {
        name,
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: queue_arguments(args),
        connection,
    })?;
    Ok(d.created)
}

/// The partitions of a super stream, in partition order (empty: no such super stream).
pub(crate) fn partitions(vh: &VHost, super_stream: &str) -> Option<Vec<String>> {
    if !vh.exchange_exists(super_stream) {
        return None;
    }
    let mut parts: Vec<(i64, String)> = vh
        .bindings()
        .into_iter()
        .filter(|b| b.source.as_str() == super_stream)
        .filter_map(|b| match b.destination {
            Destination::Queue(q) => Some((
                b.arguments
                    .get(PARTITION_ORDER)
                    .and_then(FieldValue::as_i64)
                    .unwrap_or(i64::MAX),
                q.to_string(),
            )),
            Destination::Exchange(_) => None,
        })
        .collect();
    parts.sort();
    parts.dedup_by(|a, b| a.1 == b.1);
    Some(parts.into_iter().map(|(_, q)| q).collect())
}

/// The partitions a routing key goes to (direct exchange semantics).
pub(crate) fn route(vh: &VHost, super_stream: &str, routing_key: &str) -> Option<Vec<String>> {
    if !vh.exchange_exists(super_stream) {
        return None;
    }
    let mut parts: Vec<(i64, String)> = vh
        .bindings()
        .into_iter()
        .filter(|b| b.source.as_str() == super_stream && b.routing_key.as_str() == routing_key)
        .filter_map(|b| match b.destination {
            Destination::Queue(q) => Some((
                b.arguments
                    .get(PARTITION_ORDER)
                    .and_then(FieldValue::as_i64)
                    .unwrap_or(i64::MAX),
                q.to_string(),
            )),
            Destination::Exchange(_) => None,
        })
        .collect();
    parts.sort();
    Some(parts.into_iter().map(|(_, q)| q).collect())
}

/// Creates the exchange, the partition streams and the bindings (on a clustered node as
/// one entry of the cluster's log, so every node has all of it or none); `Ok(false)` when
/// the exchange exists.
pub(crate) async fn create(
    md: Option<&Metadata>,
    vh: &VHost,
    name: &str,
    partitions: &[String],
    binding_keys: &[String],
    args: &[(String, String)],
    connection: u64,
) -> Result<bool, DeclareError> {
    if vh.exchange_exists(name) {
        return Ok(false);
    }
    if partitions.is_empty() || partitions.len() != binding_keys.len() {
        return Err(BrokerError::PreconditionFailed(
            "a super stream needs partitions, each with a binding key".into(),
        )
        .into());
    }
    let mut xargs = FieldTable::new();
    xargs.insert("x-super-stream", FieldValue::Bool(true));
    let Some(md) = md else {
        vh.declare_exchange(&ExchangeDeclare {
            name: ShortString::truncated(name),
            kind: "direct".into(),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: xargs,
        })?;
        for (i, (p, key)) in partitions.iter().zip(binding_keys).enumerate() {
            create_stream(vh, p, args, connection)?;
            vh.bind_queue(p, name, ShortString::truncated(key), order(i), connection)?;
        }
        return Ok(true);
    };
    pier_broker::names::check_not_reserved(pier_broker::ObjectKind::Exchange, name)?;
    let vhost = vh.name().to_owned();
    let mut commands = vec![MetadataCommand::DeclareExchange {
        vhost: vhost.clone(),
        name: name.to_owned(),
        kind: "direct".to_owned(),
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: metadata::arguments(&xargs)?,
    }];
    for p in partitions {
        // Refused before anything is proposed: a batch applies what it can.
        if !stream_exists(vh, p)? {
            pier_broker::names::check_not_reserved(pier_broker::ObjectKind::Queue, p)?;
            vh.check_queue_limit(p)?;
            commands.push(declare_command(md, vh, p, args)?);
        }
    }
    for (i, (p, key)) in partitions.iter().zip(binding_keys).enumerate() {
        commands.push(MetadataCommand::Bind {
            vhost: vhost.clone(),
            source: name.to_owned(),
            destination: p.clone(),
            destination_kind: DestinationKind::Queue,
            routing_key: key.clone(),
            arguments: metadata::arguments(&order(i))?,
            skip_missing: false,
        });
    }
    batch_result(md.execute(MetadataCommand::Batch { commands }).await?)?;
    Ok(true)
}

fn order(i: usize) -> FieldTable {
    let mut t = FieldTable::new();
    t.insert(
        PARTITION_ORDER,
        FieldValue::LongInt(i32::try_from(i).unwrap_or(i32::MAX)),
    );
    t
}

/// Deletes the partition streams and the exchange (through the cluster on a clustered
/// node, as one entry); `false` when there is no such super stream.
pub(crate) async fn delete(
    md: Option<&Metadata>,
    vh: &VHost,
    name: &str,
    connection: u64,
) -> Result<bool, DeclareError> {
    let Some(parts) = partitions(vh, name) else {
        return Ok(false);
    };
    let Some(md) = md else {
        for p in parts {
            vh.delete_queue(&p, false, false, connection)?;
        }
        vh.delete_exchange(name, false)?;
        return Ok(true);
    };
    let vhost = vh.name().to_owned();
    let mut commands: Vec<MetadataCommand> = parts
        .into_iter()
        .map(|p| MetadataCommand::DeleteQueue {
            vhost: vhost.clone(),
            name: p,
        })
        .collect();
    commands.push(MetadataCommand::DeleteExchange {
        vhost,
        name: name.to_owned(),
    });
    batch_result(md.execute(MetadataCommand::Batch { commands }).await?)?;
    Ok(true)
}
