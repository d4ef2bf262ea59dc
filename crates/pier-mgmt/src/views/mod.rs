//! The management API's response bodies, one typed view per shape (`#[derive(Serialize)]`),
//! grouped by resource. The field names, types and nulls are RabbitMQ's (3.10.8), plus
//! Pier's `pier_*` fields: a field RabbitMQ shows as `null` is an `Option` serialized as
//! `null`; a field RabbitMQ leaves out in some cases is skipped when `None`.
//!
//! `serde_json::Value` remains only where the content is free-form: AMQP argument tables and
//! client properties, message properties, policy definitions, error reasons that are JSON
//! terms, and the items of the list helper (which sorts and projects serialized views).
//!
//! Views are serialized through `serde_json::Value` ([`to_value`]), whose maps keep their keys
//! sorted: the bytes on the wire do not depend on the order of the fields here.

use serde::{Serialize, Serializer};
use serde_json::Value;

pub(crate) mod connection;
pub(crate) mod definitions;
pub(crate) mod exchange;
pub(crate) mod health;
pub(crate) mod node;
pub(crate) mod overview;
pub(crate) mod parameter;
pub(crate) mod permission;
pub(crate) mod policy;
pub(crate) mod queue;
pub(crate) mod stream;
pub(crate) mod user;
pub(crate) mod vhost;

/// A view as a JSON value (`null` if it cannot be serialized, which the views here never
/// fail to be: their map keys are strings).
pub(crate) fn to_value<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Views as JSON values, for the list helper.
pub(crate) fn values<T: Serialize>(items: impl IntoIterator<Item = T>) -> Vec<Value> {
    items.into_iter().map(|v| to_value(&v)).collect()
}

/// `{}`: an object RabbitMQ always shows empty (a user's `limits`, for instance).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct EmptyObject {}

/// `[]`: a list RabbitMQ shows and Pier has nothing for (`applications`, `ssl_opts`, …).
pub(crate) type EmptyList = [EmptyObject; 0];

/// Serializes `None` as `{}` (RabbitMQ's empty object for missing details).
pub(crate) fn some_or_empty_object<T: Serialize, S: Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => v.serialize(s),
        None => EmptyObject {}.serialize(s),
    }
}

/// A rate as RabbitMQ's `*_details` objects carry it: `{"rate": r}`, one decimal.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Rate {
    pub rate: f64,
}

impl Rate {
    pub fn new(r: f64) -> Rate {
        Rate {
            rate: (r * 10.0).round() / 10.0,
        }
    }
}

/// `{"name": …, "vhost": …}`: the queue a consumer, publisher or subscription is on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueueRef {
    pub name: String,
    pub vhost: String,
}

/// The body of an error answer: `{"error": …, "reason": …}` (the reason is usually a string,
/// sometimes a JSON term, as RabbitMQ's `["not_boolean", …]`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub error: &'a str,
    pub reason: &'a Value,
}

/// RabbitMQ's paged list answer (`?page=`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Page {
    pub filtered_count: u64,
    pub item_count: usize,
    pub items: Vec<Value>,
    pub page: u64,
    pub page_count: u64,
    pub page_size: u64,
    pub total_count: usize,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn empty_shapes_and_rates() {
        assert_eq!(to_value(&EmptyObject {}), serde_json::json!({}));
        let empty: EmptyList = [];
        assert_eq!(to_value(&empty), serde_json::json!([]));
        assert_eq!(to_value(&Rate::new(1.26)), serde_json::json!({"rate": 1.3}));
        #[derive(Serialize)]
        struct Details {
            #[serde(serialize_with = "some_or_empty_object")]
            d: Option<QueueRef>,
        }
        assert_eq!(to_value(&Details { d: None }), serde_json::json!({"d": {}}));
    }
}
