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

pub(super) const STREAM_CONSUMER_GROUPS: ListSpec = ListSpec {
    what: "stream consumer group",
    items: &[
        ("stream", "stream"),
        ("reference", "reference"),
        ("partition_index", "partition_index"),
        ("consumers", "consumers"),
    ],
    default: &["stream", "reference", "partition_index", "consumers"],
};

pub(super) const STREAM_GROUP_CONSUMERS: ListSpec = ListSpec {
    what: "stream group consumer",
    items: &[
        ("subscription_id", "subscription_id"),
        ("connection_name", "connection_details.name"),
        ("state", "state"),
    ],
    default: &["subscription_id", "connection_name", "state"],
};

pub(super) const STREAM_STATUS: ListSpec = ListSpec {
    what: "stream member",
    items: &[
        ("role", "role"),
        ("node", "node"),
        ("epoch", "epoch"),
        ("offset", "offset"),
        ("committed_offset", "committed_offset"),
        ("first_offset", "first_offset"),
        ("readers", "readers"),
        ("segments", "segments"),
    ],
    default: &[
        "role",
        "node",
        "epoch",
        "offset",
        "committed_offset",
        "first_offset",
        "readers",
        "segments",
    ],
};

pub(super) const STREAM_TRACKING: ListSpec = ListSpec {
    what: "stream tracking",
    items: &[
        ("type", "type"),
        ("name", "name"),
        ("tracking_value", "tracking_value"),
    ],
    default: &["type", "name", "tracking_value"],
};

/// Which tracking `list_stream_tracking` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tracking {
    All,
    Offsets,
    Writers,
}

/// A single-active-consumer group of a stream: its key in the consumer's properties (as
/// RabbitMQ's clients send them: `single-active-consumer`, `name`, `super-stream`).
fn group_of(consumer: &Value) -> Option<(String, String, Option<String>)> {
    let props = consumer.get("properties")?;
    if props.get("single-active-consumer").and_then(Value::as_str) != Some("true") {
        return None;
    }
    let stream = consumer.pointer("/queue/name")?.as_str()?.to_owned();
    let reference = props.get("name")?.as_str()?.to_owned();
    let super_stream = props
        .get("super-stream")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((stream, reference, super_stream))
}

/// The groups of single active consumers among `consumers`, in order of appearance:
/// (stream, reference, super stream, member count).
fn consumer_groups(consumers: &[Value]) -> Vec<(String, String, Option<String>, usize)> {
    let mut groups: Vec<(String, String, Option<String>, usize)> = Vec::new();
    for c in consumers {
        let Some((stream, reference, super_stream)) = group_of(c) else {
            continue;
        };
        match groups
            .iter_mut()
            .find(|g| g.0 == stream && g.1 == reference)
        {
            Some(g) => g.3 += 1,
            None => groups.push((stream, reference, super_stream, 1)),
        }
    }
    groups
}

/// The rows of `list_stream_tracking`: offsets of named consumers and sequences of named
/// publishers, from a stream queue's `stream.tracking`.
fn tracking_rows(queue: &Value, which: Tracking) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut add = |kind: &str, key: &str| {
        if let Some(m) = queue
            .pointer(&format!("/stream/tracking/{key}"))
            .and_then(Value::as_object)
        {
            for (name, value) in m {
                rows.push(json!({"type": kind, "name": name, "tracking_value": value}));
            }
        }
    };
    if which != Tracking::Writers {
        add("offset", "offsets");
    }
    if which != Tracking::Offsets {
        add("writer", "sequences");
    }
    rows
}

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

impl Ctl {
    /// `list_stream_consumer_groups`: the single-active-consumer groups of the vhost, from its
    /// stream consumers; `partition_index` from the super stream's bindings (-1 otherwise).
    pub(super) fn list_stream_consumer_groups(&self, columns: &[String]) -> CtlResult<()> {
        self.info(&format!(
            "Listing stream consumer groups for vhost {} ...",
            self.vhost
        ));
        let consumers = self
            .client
            .list(&format!("/stream/consumers/{}", self.vh()))
            .map_err(|e| Self::not_found(e, self.no_vhost()))?;
        let mut rows = Vec::new();
        for (stream, reference, super_stream, n) in consumer_groups(&consumers) {
            let index = match &super_stream {
                Some(ss) => self.partition_index(ss, &stream)?,
                None => -1,
            };
            rows.push(json!({
                "stream": stream, "reference": reference,
                "partition_index": index, "consumers": n,
            }));
        }
        self.show_list(&STREAM_CONSUMER_GROUPS, columns, &rows)
    }

    fn partition_index(&self, super_stream: &str, stream: &str) -> CtlResult<i64> {
        let bindings = self
            .client
            .list(&format!(
                "/exchanges/{}/{}/bindings/source",
                self.vh(),
                enc(super_stream)
            ))
            .unwrap_or_default();
        Ok(bindings
            .iter()
            .find(|b| b.get("destination").and_then(Value::as_str) == Some(stream))
            .and_then(|b| b.pointer("/arguments/x-stream-partition-order"))
            .and_then(Value::as_i64)
            .unwrap_or(-1))
    }

    /// `list_stream_group_consumers --stream S --reference R`: the members of one group,
    /// `active` or `inactive`.
    pub(super) fn list_stream_group_consumers(
        &self,
        stream: &str,
        reference: &str,
        columns: &[String],
    ) -> CtlResult<()> {
        self.info(&format!(
            "Listing group consumers of stream {stream}, reference {reference} for vhost {} ...",
            self.vhost
        ));
        let consumers = self
            .client
            .list(&format!("/stream/consumers/{}", self.vh()))
            .map_err(|e| Self::not_found(e, self.no_vhost()))?;
        let rows: Vec<Value> = consumers
            .into_iter()
            .filter(|c| group_of(c).is_some_and(|(s, r, _)| s == stream && r == reference))
            .map(|mut c| {
                let active = c.get("active").and_then(Value::as_bool) == Some(true);
                if let Some(o) = c.as_object_mut() {
                    o.insert(
                        "state".into(),
                        json!(if active { "active" } else { "inactive" }),
                    );
                }
                c
            })
            .collect();
        if rows.is_empty() {
            return Err(CtlError::new(
                EX_DATAERR,
                format!("The group does not exist: stream {stream}, reference {reference}"),
            ));
        }
        self.show_list(&STREAM_GROUP_CONSUMERS, columns, &rows)
    }

    /// `activate_stream_consumer --stream S --reference R` (RabbitMQ 4.2): forces a group on
    /// whose new active member waits for a former one that never answered its step-down.
    pub(super) fn activate_stream_consumer(&self, stream: &str, reference: &str) -> CtlResult<()> {
        self.info(&format!(
            "Activating consumer of stream {stream}, reference {reference} in vhost {} ...",
            self.vhost
        ));
        self.client
            .post(
                &format!(
                    "/stream/consumer-groups/{}/{}/{}/activate",
                    self.vh(),
                    enc(stream),
                    enc(reference)
                ),
                &json!({}),
            )
            .map_err(|e| {
                if e.is_not_found() {
                    CtlError::new(
                        EX_DATAERR,
                        format!("The group does not exist: stream {stream}, reference {reference}"),
                    )
                } else {
                    e
                }
            })?;
        Ok(())
    }

    /// `stream_status NAME`: the stream's members: its writer (the leader), then each
    /// replica with the offset it has synced (as the leader knows it).
    pub(super) fn stream_status(&self, name: &str, columns: &[String]) -> CtlResult<()> {
        self.info(&format!(
            "Status of stream {name} on vhost {} ...",
            self.vhost
        ));
        let q = self
            .client
            .get(&format!("/queues/{}/{}", self.vh(), enc(name)))
            .map_err(|e| Self::not_found(e, self.no_queue(name)))?;
        if q.get("type").and_then(Value::as_str) != Some("stream") {
            return Err(CtlError::new(
                EX_DATAERR,
                format!("queue '{name}' in vhost '{}' is not a stream", self.vhost),
            ));
        }
        let leader = q.get("node").and_then(Value::as_str).unwrap_or_default();
        let mut rows = vec![json!({
            "role": "writer",
            "node": leader,
            "epoch": 1,
            "offset": q.pointer("/stream/last_offset"),
            "committed_offset": q.pointer("/stream/committed_offset"),
            "first_offset": q.pointer("/stream/first_offset"),
            "readers": q.get("consumers"),
            "segments": q.pointer("/stream/segments"),
        })];
        let synced = q.pointer("/stream/replicas").and_then(Value::as_object);
        for m in q
            .get("members")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|m| *m != leader)
        {
            // The offset of the last message it has synced (null: nothing yet).
            let offset = synced
                .and_then(|s| s.get(m))
                .and_then(Value::as_u64)
                .and_then(|next| next.checked_sub(1));
            rows.push(json!({
                "role": "replica",
                "node": m,
                "epoch": 1,
                "offset": offset,
                "committed_offset": q.pointer("/stream/committed_offset"),
                "first_offset": q.pointer("/stream/first_offset"),
                "readers": null,
                "segments": null,
            }));
        }
        self.show_list(&STREAM_STATUS, columns, &rows)
    }

    /// `list_stream_tracking NAME [--all | --offset | --writer]`.
    pub(super) fn list_stream_tracking(&self, name: &str, which: Tracking) -> CtlResult<()> {
        self.info(&format!(
            "Listing tracking information for stream {name} on vhost {} ...",
            self.vhost
        ));
        let q = self
            .client
            .get(&format!("/queues/{}/{}", self.vh(), enc(name)))
            .map_err(|e| Self::not_found(e, self.no_queue(name)))?;
        self.show_list(&STREAM_TRACKING, &[], &tracking_rows(&q, which))
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

    fn consumer(stream: &str, props: &[(&str, &str)], active: bool) -> Value {
        let props: Map<String, Value> = props
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        json!({"queue": {"name": stream}, "properties": props, "active": active})
    }

    #[test]
    fn consumer_groups_are_keyed_by_stream_and_reference() {
        let sac = [("single-active-consumer", "true"), ("name", "app")];
        let consumers = vec![
            consumer("s1", &sac, true),
            consumer("s1", &sac, false),
            consumer("s2", &sac, true),
            consumer("s1", &[("name", "app")], true),
            consumer(
                "ss-0",
                &[
                    ("single-active-consumer", "true"),
                    ("name", "g"),
                    ("super-stream", "ss"),
                ],
                true,
            ),
        ];
        let groups = consumer_groups(&consumers);
        assert_eq!(
            groups,
            vec![
                ("s1".into(), "app".into(), None, 2),
                ("s2".into(), "app".into(), None, 1),
                ("ss-0".into(), "g".into(), Some("ss".into()), 1),
            ]
        );
    }

    #[test]
    fn tracking_rows_list_offsets_then_writers() {
        let q = json!({"stream": {"tracking": {
            "offsets": {"reader": 41}, "sequences": {"writer-a": 7}}}});
        let rows = tracking_rows(&q, Tracking::All);
        assert_eq!(
            rows,
            vec![
                json!({"type": "offset", "name": "reader", "tracking_value": 41}),
                json!({"type": "writer", "name": "writer-a", "tracking_value": 7}),
            ]
        );
        assert_eq!(tracking_rows(&q, Tracking::Writers).len(), 1);
        assert_eq!(tracking_rows(&q, Tracking::Offsets)[0]["name"], "reader");
    }
}
