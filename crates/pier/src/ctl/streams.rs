//! `rabbitmq-streams`' verbs: super streams (a direct exchange marked `x-super-stream` bound
//! to its partition streams, each binding with `x-stream-partition-order`, as RabbitMQ lays
//! them out), and the streams, stream connections, publishers and consumers of a vhost. Built
//! on the management API's ordinary endpoints, so the commands also work against RabbitMQ.

use serde_json::{json, Map, Value};

use super::client::{enc, CtlError, CtlResult, EX_DATAERR};
use super::output::ListSpec;
use super::Ctl;

pub(super) const STREAMS: ListSpec = ListSpec {
    what: "stream",
    items: &[
        ("name", "name"),
        ("vhost", "vhost"),
        ("messages", "messages"),
        ("consumers", "consumers"),
        ("arguments", "arguments"),
        ("policy", "policy"),
        ("node", "node"),
        ("segments", "stream.segments"),
        ("size", "stream.size_bytes"),
        ("first_offset", "stream.first_offset"),
        ("last_offset", "stream.last_offset"),
        ("committed_offset", "stream.committed_offset"),
        ("first_timestamp", "stream.first_timestamp"),
        ("last_timestamp", "stream.last_timestamp"),
        ("offsets", "stream.tracking.offsets"),
        ("sequences", "stream.tracking.sequences"),
    ],
    default: &[
        "name",
        "messages",
        "segments",
        "first_offset",
        "last_offset",
    ],
};

pub(super) const STREAM_CONNECTIONS: ListSpec = ListSpec {
    what: "stream connection",
    items: &[
        ("conn_name", "name"),
        ("name", "name"),
        ("user", "user"),
        ("vhost", "vhost"),
        ("host", "host"),
        ("port", "port"),
        ("peer_host", "peer_host"),
        ("peer_port", "peer_port"),
        ("protocol", "protocol"),
        ("auth_mechanism", "auth_mechanism"),
        ("ssl", "ssl"),
        ("frame_max", "frame_max"),
        ("heartbeat", "timeout"),
        ("bytes_received", "recv_oct"),
        ("bytes_sent", "send_oct"),
        ("connected_at", "connected_at"),
        ("client_properties", "client_properties"),
        ("user_provided_name", "user_provided_name"),
    ],
    default: &["conn_name"],
};

pub(super) const STREAM_PUBLISHERS: ListSpec = ListSpec {
    what: "stream publisher",
    items: &[
        ("conn_name", "connection_details.name"),
        ("publisher_id", "publisher_id"),
        ("stream", "queue.name"),
        ("reference", "reference"),
        ("messages_published", "published"),
        ("messages_confirmed", "confirmed"),
        ("messages_errored", "errored"),
    ],
    default: &[
        "conn_name",
        "publisher_id",
        "stream",
        "reference",
        "messages_published",
        "messages_confirmed",
        "messages_errored",
    ],
};

pub(super) const STREAM_CONSUMERS: ListSpec = ListSpec {
    what: "stream consumer",
    items: &[
        ("conn_name", "connection_details.name"),
        ("subscription_id", "subscription_id"),
        ("stream", "queue.name"),
        ("messages_consumed", "consumed"),
        ("offset", "offset"),
        ("offset_lag", "offset_lag"),
        ("credits", "credits"),
        ("active", "active"),
        ("activity_status", "activity_status"),
        ("properties", "properties"),
    ],
    default: &[
        "conn_name",
        "subscription_id",
        "stream",
        "messages_consumed",
        "offset",
        "offset_lag",
        "credits",
        "active",
    ],
};

/// What `add_super_stream` was asked for.
pub(super) struct SuperStreamSpec {
    pub name: String,
    pub partitions: Option<u32>,
    pub routing_keys: Option<String>,
    pub max_length_bytes: Option<String>,
    pub max_age: Option<String>,
    pub max_segment_size_bytes: Option<String>,
    pub leader_locator: Option<String>,
}

/// The partition streams and their binding keys: `NAME-0..NAME-(N-1)` with keys `0..N-1`,
/// or `NAME-key` with each routing key (as `rabbitmq-streams add_super_stream`).
pub(super) fn partitions_of(spec: &SuperStreamSpec) -> CtlResult<Vec<(String, String)>> {
    match (&spec.partitions, &spec.routing_keys) {
        (Some(_), Some(_)) => Err(CtlError::usage(
            "Specify --partitions or --routing-keys, not both.",
        )),
        (Some(0), None) => Err(CtlError::usage(
            "The partition number must be greater than 0",
        )),
        (Some(n), None) => Ok((0..*n)
            .map(|i| (format!("{}-{i}", spec.name), i.to_string()))
            .collect()),
        (None, Some(keys)) => {
            let keys: Vec<&str> = keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                return Err(CtlError::usage("The routing keys must not be empty"));
            }
            Ok(keys
                .into_iter()
                .map(|k| (format!("{}-{k}", spec.name), k.to_owned()))
                .collect())
        }
        // RabbitMQ's default: 3 partitions.
        (None, None) => Ok((0..3)
            .map(|i| (format!("{}-{i}", spec.name), i.to_string()))
            .collect()),
    }
}

impl Ctl {
    pub(super) fn add_super_stream(&self, spec: &SuperStreamSpec) -> CtlResult<()> {
        let c = &self.client;
        let parts = partitions_of(spec)?;
        self.info(&format!(
            "Adding a super stream {} in vhost {} ...",
            spec.name, self.vhost
        ));
        let exchange = format!("/exchanges/{}/{}", self.vh(), enc(&spec.name));
        match c.get(&exchange) {
            Ok(_) => {
                return Err(CtlError::new(
                    EX_DATAERR,
                    format!("super stream {} already exists", spec.name),
                ))
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        for (p, _) in &parts {
            if c.get(&format!("/queues/{}/{}", self.vh(), enc(p))).is_ok() {
                return Err(CtlError::new(
                    EX_DATAERR,
                    format!("a queue or stream named {p} already exists"),
                ));
            }
        }
        let mut args = Map::new();
        args.insert("x-queue-type".into(), json!("stream"));
        let numeric = |flag: &str, v: &str| -> CtlResult<Value> {
            v.parse::<u64>()
                .map(Value::from)
                .map_err(|_| CtlError::usage(format!("--{flag} must be a number of bytes")))
        };
        if let Some(v) = &spec.max_length_bytes {
            args.insert("x-max-length-bytes".into(), numeric("max-length-bytes", v)?);
        }
        if let Some(v) = &spec.max_age {
            args.insert("x-max-age".into(), json!(v));
        }
        if let Some(v) = &spec.max_segment_size_bytes {
            args.insert(
                "x-stream-max-segment-size-bytes".into(),
                numeric("stream-max-segment-size-bytes", v)?,
            );
        }
        // --leader-locator: one node leads every stream; accepted and not passed on.
        let _ = &spec.leader_locator;
        c.put(
            &exchange,
            &json!({
                "type": "direct",
                "durable": true,
                "auto_delete": false,
                "internal": false,
                "arguments": {"x-super-stream": true},
            }),
        )?;
        for (i, (p, key)) in parts.iter().enumerate() {
            c.put(
                &format!("/queues/{}/{}", self.vh(), enc(p)),
                &json!({"durable": true, "auto_delete": false, "arguments": Value::Object(args.clone())}),
            )?;
            c.post(
                &format!("/bindings/{}/e/{}/q/{}", self.vh(), enc(&spec.name), enc(p)),
                &json!({
                    "routing_key": key,
                    "arguments": {"x-stream-partition-order": i},
                }),
            )?;
        }
        if self.json {
            super::output::emit_json(&json!({
                "vhost": self.vhost,
                "super_stream": spec.name,
                "partitions": parts.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
                "binding_keys": parts.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>(),
            }));
        } else if !self.quiet {
            super::output::emit(&format!(
                "Super stream {} was created with {} partition{}\n",
                spec.name,
                parts.len(),
                if parts.len() == 1 { "" } else { "s" }
            ));
        }
        Ok(())
    }

    pub(super) fn delete_super_stream(&self, name: &str) -> CtlResult<()> {
        let c = &self.client;
        self.info(&format!(
            "Deleting super stream {name} in vhost {} ...",
            self.vhost
        ));
        let exchange = format!("/exchanges/{}/{}", self.vh(), enc(name));
        let not_found = || {
            CtlError::new(
                EX_DATAERR,
                format!("super stream {name} does not exist in vhost {}", self.vhost),
            )
        };
        let x = c
            .get(&exchange)
            .map_err(|e| if e.is_not_found() { not_found() } else { e })?;
        let is_super = x
            .get("arguments")
            .and_then(|a| a.get("x-super-stream"))
            .is_some_and(|v| v == &json!(true));
        if !is_super {
            return Err(CtlError::new(
                EX_DATAERR,
                format!("{name} is not a super stream (its exchange lacks x-super-stream)"),
            ));
        }
        let bindings = c.list(&format!("{exchange}/bindings/source"))?;
        let mut partitions: Vec<String> = bindings
            .iter()
            .filter(|b| b.get("destination_type").and_then(Value::as_str) == Some("queue"))
            .filter_map(|b| b.get("destination").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        partitions.sort();
        partitions.dedup();
        for p in &partitions {
            match c.delete(&format!("/queues/{}/{}", self.vh(), enc(p))) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        c.delete(&exchange)?;
        if self.json {
            super::output::emit_json(
                &json!({"vhost": self.vhost, "super_stream": name, "partitions": partitions}),
            );
        } else if !self.quiet {
            super::output::emit(&format!("Super stream {name} was deleted\n"));
        }
        Ok(())
    }

    /// The stream queues of the vhost.
    pub(super) fn list_streams(&self, columns: &[String]) -> CtlResult<()> {
        self.info(&format!("Listing streams for vhost {} ...", self.vhost));
        let rows: Vec<Value> = self
            .client
            .list(&format!("/queues/{}", self.vh()))
            .map_err(|e| Self::not_found(e, self.no_vhost()))?
            .into_iter()
            .filter(|q| q.get("type").and_then(Value::as_str) == Some("stream"))
            .collect();
        self.show_list(&STREAMS, columns, &rows)
    }

    /// `list_stream_connections`, `list_stream_publishers`, `list_stream_consumers`: the
    /// stream management plugin's per-vhost lists.
    pub(super) fn list_stream_objects(
        &self,
        spec: &ListSpec,
        what: &str,
        columns: &[String],
    ) -> CtlResult<()> {
        self.info(&format!(
            "Listing stream {what} for vhost {} ...",
            self.vhost
        ));
        let rows = self
            .client
            .list(&format!("/stream/{what}/{}", self.vh()))
            .map_err(|e| Self::not_found(e, self.no_vhost()))?;
        self.show_list(spec, columns, &rows)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(partitions: Option<u32>, keys: Option<&str>) -> SuperStreamSpec {
        SuperStreamSpec {
            name: "invoices".into(),
            partitions,
            routing_keys: keys.map(str::to_owned),
            max_length_bytes: None,
            max_age: None,
            max_segment_size_bytes: None,
            leader_locator: None,
        }
    }

    #[test]
    fn partitions_are_named_as_rabbitmq_names_them() {
        let p = partitions_of(&spec(Some(2), None)).unwrap();
        assert_eq!(
            p,
            vec![
                ("invoices-0".to_owned(), "0".to_owned()),
                ("invoices-1".to_owned(), "1".to_owned())
            ]
        );
        let p = partitions_of(&spec(None, Some("amer, emea,apac"))).unwrap();
        assert_eq!(p[1], ("invoices-emea".to_owned(), "emea".to_owned()));
        assert_eq!(partitions_of(&spec(None, None)).unwrap().len(), 3);
        assert!(partitions_of(&spec(Some(0), None)).is_err());
        assert!(partitions_of(&spec(Some(2), Some("a"))).is_err());
    }
}
