//! Super streams: a direct exchange (argument `x-super-stream: true`) bound to its partition
//! streams, each binding with `x-stream-partition-order` (RabbitMQ's layout, so `rabbitmq-
//! streams add_super_stream`, the stream clients and AMQP publishers all see the same thing).

use pier_broker::vhost::{ExchangeDeclare, QueueDeclare};
use pier_broker::{BrokerError, VHost};
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

/// The stream protocol's declarations and deletions are not replicated yet: on a clustered
/// node they are refused rather than made on this node alone (a durable queue the other
/// nodes would not know). Streams are declared over AMQP there (`x-queue-type: stream`).
pub(crate) fn refuse_if_clustered(vh: &VHost) -> Result<(), BrokerError> {
    if vh.cluster().is_some() {
        return Err(BrokerError::NotImplemented(
            "stream declarations and deletions over the stream protocol are not replicated \
             in a cluster yet; declare the stream over AMQP (x-queue-type stream)"
                .into(),
        ));
    }
    Ok(())
}

/// Declares a stream; `Ok(false)` when it already existed.
pub(crate) fn create_stream(
    vh: &VHost,
    name: &str,
    args: &[(String, String)],
    connection: u64,
) -> Result<bool, BrokerError> {
    refuse_if_clustered(vh)?;
    let name = ShortString::try_from_string(name.to_owned())
        .map_err(|_| BrokerError::PreconditionFailed("stream name too long".into()))?;
    if let Some(q) = vh.find_queue(&name) {
        return if q.stream().is_some() {
            Ok(false)
        } else {
            Err(BrokerError::PreconditionFailed(format!(
                "queue '{name}' exists and is not a stream"
            )))
        };
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

/// Creates the exchange, the partition streams and the bindings.
pub(crate) fn create(
    vh: &VHost,
    name: &str,
    partitions: &[String],
    binding_keys: &[String],
    args: &[(String, String)],
    connection: u64,
) -> Result<bool, BrokerError> {
    refuse_if_clustered(vh)?;
    if vh.exchange_exists(name) {
        return Ok(false);
    }
    if partitions.is_empty() || partitions.len() != binding_keys.len() {
        return Err(BrokerError::PreconditionFailed(
            "a super stream needs partitions, each with a binding key".into(),
        ));
    }
    let mut xargs = FieldTable::new();
    xargs.insert("x-super-stream", FieldValue::Bool(true));
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
        let mut bargs = FieldTable::new();
        bargs.insert(PARTITION_ORDER, FieldValue::LongInt(i as i32));
        vh.bind_queue(p, name, ShortString::truncated(key), bargs, connection)?;
    }
    Ok(true)
}

/// Deletes the partition streams and the exchange; `false` when there is no such super
/// stream.
pub(crate) fn delete(vh: &VHost, name: &str, connection: u64) -> Result<bool, BrokerError> {
    refuse_if_clustered(vh)?;
    let Some(parts) = partitions(vh, name) else {
        return Ok(false);
    };
    for p in parts {
        vh.delete_queue(&p, false, false, connection)?;
    }
    vh.delete_exchange(name, false)?;
    Ok(true)
}
