//! Queues, exchanges and bindings: listing, declaring, deleting, purging, publishing and
//! getting messages, in RabbitMQ's JSON shapes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use pier_broker::{BrokerError, ConsumerInfo, Destination, Message, Queue, VHost};
use pier_server::ConnectionInfo;
use pier_wire::{FieldTable, ShortString};
use serde_json::{json, Value};

use crate::auth::{change_vhost, view_vhost, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_bool, get_str, get_table, short, table_to_json};
use crate::AppState;
use pier_cluster::metadata::{self, CommandError, MetadataCommand};
use pier_cluster::MetadataError;

type Q = Query<HashMap<String, String>>;

/// The default exchange's name in URLs.
const DEFAULT_EXCHANGE_ALIAS: &str = "amq.default";

fn exchange_name(url_name: &str) -> &str {
    if url_name == DEFAULT_EXCHANGE_ALIAS {
        ""
    } else {
        url_name
    }
}

/// Connections by id, for showing exclusive owners and consumers' channels.
pub(crate) fn connections_by_id(state: &AppState) -> HashMap<u64, ConnectionInfo> {
    state
        .registry
        .connections()
        .into_iter()
        .map(|c| (c.meta.id, c))
        .collect()
}

/// The vhosts `user` may see, sorted by name.
pub(crate) fn visible_vhosts(state: &AppState, user: &AuthUser) -> Vec<Arc<VHost>> {
    let mut v: Vec<Arc<VHost>> = state
        .broker
        .vhosts()
        .into_iter()
        .filter(|vh| user.can_view(&state.broker, vh.name()))
        .collect();
    v.sort_by(|a, b| a.name().cmp(b.name()));
    v
}

// ---- queues ----

/// Monotonic per-queue counters sampled for rates (see `stats`): arrivals, deliveries,
/// deliveries without ack, acks.
pub(crate) fn queue_counters(q: &Queue) -> Vec<u64> {
    let c = q.counters();
    let s = q.stats();
    // The last three are gauges (lengths), read with `Sampler::gauge_rates`.
    vec![
        c.published,
        c.delivered,
        c.delivered_no_ack,
        c.acked,
        s.ready + s.unacked,
        s.ready,
        s.unacked,
    ]
}

/// A queue's queueing figures, measured over the sampler's window.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Queueing {
    /// λ: messages entering the queue per second.
    pub arrival_rate: f64,
    /// μ: messages completed (acked, or delivered without ack) per second.
    pub service_rate: f64,
    pub deliver_rate: f64,
    pub ack_rate: f64,
    /// L: messages in the queue now (ready + unacknowledged).
    pub length: u64,
    /// W measured per message (enqueue to ack) over the broker's own window.
    pub measured: pier_broker::WaitSummary,
}

impl Queueing {
    /// ρ = λ/μ (None when nothing is served).
    pub fn utilisation(&self) -> Option<f64> {
        (self.service_rate > 0.0).then(|| self.arrival_rate / self.service_rate)
    }

    /// W by Little's law, L/λ, in seconds (None without arrivals).
    pub fn time_in_queue(&self) -> Option<f64> {
        (self.arrival_rate > 0.0).then(|| self.length as f64 / self.arrival_rate)
    }

    /// M/M/1 predictions (L = ρ/(1−ρ), W = L/λ), only for a stable queue (ρ < 1).
    pub fn mm1(&self) -> Option<(f64, f64)> {
        let rho = self.utilisation()?;
        if rho >= 1.0 || self.arrival_rate <= 0.0 {
            return None;
        }
        let l = rho / (1.0 - rho);
        Some((l, l / self.arrival_rate))
    }

    pub fn json(&self) -> Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        let (mm1_l, mm1_w) = self.mm1().map_or((Value::Null, Value::Null), |(l, w)| {
            (Value::from(r(l)), Value::from(r(w)))
        });
        json!({
            "window_seconds": crate::stats::WINDOW.as_secs(),
            "arrival_rate": r(self.arrival_rate),
            "service_rate": r(self.service_rate),
            "utilisation": self.utilisation().map(r),
            "length": self.length,
            "time_in_queue_seconds": self.time_in_queue().map(r),
            "mm1_predicted_length": mm1_l,
            "mm1_predicted_time_in_queue_seconds": mm1_w,
            "measured_time_in_queue": measured_json(&self.measured),
        })
    }
}

/// Measured time in queue, in seconds like the other W figures (millisecond resolution).
fn measured_json(m: &pier_broker::WaitSummary) -> Value {
    let secs = |ms: Option<f64>| ms.map(|v| v.round() / 1000.0);
    json!({
        "window_seconds": pier_broker::waits::window().as_secs(),
        "samples": m.samples,
        "mean_seconds": secs(m.mean_ms),
        "p50_seconds": secs(m.p50_ms),
        "p99_seconds": secs(m.p99_ms),
    })
}

pub(crate) fn queueing(state: &AppState, vhost: &str, q: &Queue) -> Queueing {
    let counters = queue_counters(q);
    let rates = state
        .sampler
        .rates(&crate::stats::queue_key(vhost, q.name()), &counters);
    let rate = |i: usize| rates.get(i).copied().unwrap_or(0.0);
    let s = q.stats();
    Queueing {
        arrival_rate: rate(0),
        deliver_rate: rate(1),
        ack_rate: rate(3),
        service_rate: rate(3) + rate(2),
        length: s.ready + s.unacked,
        measured: q.time_in_queue(),
    }
}

/// Node-wide counters: publishes received, bytes in, bytes out, connection and channel churn;
/// and the queue totals.
pub(crate) fn node_message_counters(state: &AppState) -> Vec<u64> {
    let t = state.registry.totals();
    let (mut ready, mut unacked) = (0u64, 0u64);
    for vh in state.broker.vhosts() {
        for q in vh.queues() {
            let s = q.stats();
            ready += s.ready;
            unacked += s.unacked;
        }
    }
    // Counters, then churn counters, then gauges (queue totals, read with `gauge_rates`).
    vec![
        t.messages_published,
        t.recv_oct,
        t.send_oct,
        t.connections_opened,
        t.connections_closed,
        t.channels_opened,
        t.channels_closed,
        ready + unacked,
        ready,
        unacked,
    ]
}

fn queue_type(q: &Queue) -> String {
    q.options()
        .arguments
        .get("x-queue-type")
        .and_then(|v| v.as_str())
        .unwrap_or("classic")
        .to_owned()
}

pub(crate) fn consumer_json(
    state: &AppState,
    conns: &HashMap<u64, ConnectionInfo>,
    vhost: &str,
    queue: &str,
    c: &ConsumerInfo,
) -> Value {
    let channel_details = match (conns.get(&c.connection), c.channel) {
        (Some(conn), Some(n)) => json!({
            "connection_name": conn.meta.name,
            "name": format!("{} ({n})", conn.meta.name),
            "node": state.node,
            "number": n,
            "peer_host": conn.meta.peer.ip().to_string(),
            "peer_port": conn.meta.peer.port(),
            "user": conn.meta.user,
        }),
        _ => json!({}),
    };
    json!({
        "arguments": table_to_json(&c.arguments),
        "ack_required": c.ack_required,
        "active": c.active,
        "activity_status": if c.active { "up" } else { "waiting" },
        "channel_details": channel_details,
        "consumer_tag": c.tag.as_str(),
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch,
        "priority": c.priority,
        "queue": {"name": queue, "vhost": vhost},
    })
}

pub(crate) fn queue_json(
    state: &AppState,
    conns: &HashMap<u64, ConnectionInfo>,
    vhost: &str,
    q: &Queue,
    detailed: bool,
) -> Value {
    let s = q.stats();
    let o = q.options();
    let consumers = q.consumers();
    let details = json::rate_details;
    let length_rates = state.sampler.gauge_rates(
        &crate::stats::queue_key(vhost, q.name()),
        &queue_counters(q),
    );
    // The policy in force (policy changes reach existing queues: `VHost::set_policy`), with
    // its definition.
    let config = q.config();
    let policy_name = config.policy.as_deref();
    let definition = policy_name
        .and_then(|name| {
            let vh = state.broker.vhost(vhost)?;
            vh.policies().into_iter().find(|p| p.name == name)
        })
        .map_or_else(
            || json!({}),
            |p| crate::policies::definition_json(&p.definition),
        );
    let mut v = json!({
        "name": q.name().as_str(),
        "vhost": vhost,
        "durable": o.durable,
        "auto_delete": o.auto_delete,
        "exclusive": o.exclusive_owner.is_some(),
        "arguments": table_to_json(&o.arguments),
        // Its home node (the cluster's record of it; on a single node, this node).
        "node": state.metadata.catalog().queue_home(vhost, q.name()).map_or_else(|| state.node.clone(), |h| h.home),
        "type": queue_type(q),
        "state": "running",
        "policy": policy_name,
        "operator_policy": Value::Null,
        "effective_policy_definition": definition,
        "consumers": s.consumers,
        "messages": s.ready + s.unacked,
        "messages_details": details(length_rates.get(4).copied().unwrap_or(0.0)),
        "messages_ready": s.ready,
        "messages_ready_details": details(length_rates.get(5).copied().unwrap_or(0.0)),
        "messages_unacknowledged": s.unacked,
        "messages_unacknowledged_details": details(length_rates.get(6).copied().unwrap_or(0.0)),
        "message_bytes_ready": s.ready_bytes,
        // Bodies of ready messages held in memory; the rest are paged out to the store.
        "message_bytes_ram": s.memory_bytes,
        "message_bytes_paged_out": s.ready_bytes.saturating_sub(s.memory_bytes),
        "messages_paged_out": s.paged_out,
        "messages_ram": (s.ready + s.unacked).saturating_sub(s.paged_out),
        "messages_ready_ram": s.ready.saturating_sub(s.paged_out),
        "messages_unacknowledged_ram": s.unacked,
        "memory": s.memory_bytes,
        "exclusive_consumer_tag": consumers.iter().find(|c| c.exclusive).map(|c| c.tag.as_str()),
        "single_active_consumer_tag": q.active_consumer_tag().map(|t| t.to_string()),
    });
    if q.kind() == pier_broker::queue::QueueType::Quorum {
        if let Some(m) = v.as_object_mut() {
            // At-least-once dead letters kept until their targets confirm them.
            m.insert("messages_dlx".into(), json!(s.dead_letters));
            m.insert("message_bytes_dlx".into(), json!(s.dead_letter_bytes));
        }
        let replicated = state
            .cluster()
            .and_then(|c| c.quorum_queue(vhost, q.name()).map(|r| (c, r)));
        if let Some(m) = v.as_object_mut() {
            match replicated {
                // A Raft group: its leader is the queue's node, as in RabbitMQ.
                Some((c, (members, leader))) => {
                    let online: Vec<&String> = members.iter().filter(|n| c.is_running(n)).collect();
                    if let Some(l) = &leader {
                        m.insert("node".into(), json!(l));
                    }
                    m.insert("leader".into(), json!(leader));
                    m.insert("online".into(), json!(online));
                    m.insert("members".into(), json!(members));
                }
                // A group of one member: its home node, leader and online.
                None => {
                    let node = m.get("node").cloned().unwrap_or(Value::Null);
                    m.insert("leader".into(), node.clone());
                    m.insert("members".into(), json!([node.clone()]));
                    m.insert("online".into(), json!([node]));
                }
            }
        }
    }
    let c = q.counters();
    let qs = queueing(state, vhost, q);
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "message_stats".into(),
            json!({
                "publish": c.published,
                "publish_details": details(qs.arrival_rate),
                "deliver_get": c.delivered,
                "deliver_get_details": details(qs.deliver_rate),
                "deliver_no_ack": c.delivered_no_ack,
                "ack": c.acked,
                "ack_details": details(qs.ack_rate),
            }),
        );
        m.insert("pier_queueing".into(), qs.json());
        // A stream's figures, and its stream-protocol subscriptions among its consumers.
        if let Some(figures) = crate::streams::stream_figures(q) {
            let subscriptions = crate::streams::subscriptions_on(state, vhost, q.name());
            m.insert(
                "consumers".into(),
                json!(s.consumers as usize + subscriptions),
            );
            m.insert("stream".into(), figures);
        }
    }
    if let (Some(owner), Some(m)) = (o.exclusive_owner, v.as_object_mut()) {
        if let Some(conn) = conns.get(&owner) {
            m.insert(
                "owner_pid_details".into(),
                json!({
                    "name": conn.meta.name,
                    "peer_host": conn.meta.peer.ip().to_string(),
                    "peer_port": conn.meta.peer.port(),
                }),
            );
        }
    }
    if detailed {
        if let Some(m) = v.as_object_mut() {
            m.insert(
                "consumer_details".into(),
                Value::Array(
                    consumers
                        .iter()
                        .map(|c| consumer_json(state, conns, vhost, q.name(), c))
                        .collect(),
                ),
            );
            m.insert("incoming".into(), json!([]));
            m.insert("deliveries".into(), json!([]));
        }
    }
    v
}

fn sorted_queues(vh: &VHost) -> Vec<Arc<Queue>> {
    let mut qs = vh.queues();
    qs.sort_by(|a, b| a.name().cmp(b.name()));
    qs
}

pub async fn queues(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    st.refresh_remote_queues().await;
    let conns = connections_by_id(&st);
    let mut items = Vec::new();
    for vh in visible_vhosts(&st, &user) {
        for queue in sorted_queues(&vh) {
            items.push(queue_json(&st, &conns, vh.name(), &queue, false));
        }
    }
    json::list(items, &q)
}

pub async fn vhost_queues(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    st.refresh_remote_queues().await;
    let conns = connections_by_id(&st);
    let items = sorted_queues(&vh)
        .iter()
        .map(|queue| queue_json(&st, &conns, &vhost, queue, false))
        .collect();
    json::list(items, &q)
}

pub(crate) fn find_queue(vh: &VHost, name: &str) -> ApiResult<Arc<Queue>> {
    vh.queues()
        .into_iter()
        .find(|q| q.name().as_str() == name)
        .ok_or_else(ApiError::not_found)
}

pub async fn queue(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    let q = find_queue(&vh, &name)?;
    if q.is_remote() {
        st.refresh_remote_queues().await;
    }
    let conns = connections_by_id(&st);
    Ok(json::ok(queue_json(&st, &conns, &vhost, &q, true)))
}

pub async fn put_queue(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let b = body_object(&body)?;
    short(&name)?;
    vh.check_queue_limit(&name)?;
    drop(vh);
    // `checked`: the client path, so that `max-queues` and the `amq.*` rule apply as in
    // RabbitMQ's API; access to the vhost was checked above. Its home is this node (a
    // replicated queue's: its first leader).
    let durable = get_bool(&b, "durable", false)?;
    let table = get_table(&b, "arguments")?;
    let members = st.queue_members(&vhost, &name, durable, &table);
    let out = st
        .execute(MetadataCommand::DeclareQueue {
            vhost,
            name,
            durable,
            auto_delete: get_bool(&b, "auto_delete", false)?,
            arguments: metadata::arguments(&table)?,
            home: members.first().cloned().unwrap_or_else(|| st.node.clone()),
            members,
            checked: true,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

pub async fn delete_queue(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let queue = find_queue(&vh, &name)?;
    let s = queue.stats();
    if q.get("if-unused").is_some_and(|v| v == "true") && s.consumers > 0 {
        return Err(BrokerError::InUse {
            kind: pier_broker::ObjectKind::Queue,
            name,
            vhost,
        }
        .into());
    }
    let if_empty = q.get("if-empty").is_some_and(|v| v == "true");
    if if_empty && s.ready > 0 {
        return Err(BrokerError::NotEmpty { name, vhost }.into());
    }
    drop(queue);
    st.execute(MetadataCommand::DeleteQueue { vhost, name })
        .await?;
    Ok(json::no_content())
}

pub async fn purge_queue(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    find_queue(&vh, &name)?.purge();
    Ok(json::no_content())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AckMode {
    AckRequeue,
    Ack,
    RejectRequeue,
    Reject,
}

/// POST /api/queues/vhost/name/get: takes up to `count` messages (as basic.get), then acks,
/// rejects or requeues them according to `ackmode`.
pub async fn get_messages(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let queue = find_queue(&vh, &name)?;
    let b = body_object(&body)?;
    let count = match b.get("count") {
        None => 1,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| ApiError::bad_request("count must be a non-negative integer"))?,
    };
    let mode = match get_str(&b, "ackmode").unwrap_or("ack_requeue_true") {
        "ack_requeue_true" => AckMode::AckRequeue,
        "ack_requeue_false" => AckMode::Ack,
        "reject_requeue_true" => AckMode::RejectRequeue,
        "reject_requeue_false" => AckMode::Reject,
        other => {
            return Err(ApiError::bad_request(format!("unknown ackmode '{other}'")));
        }
    };
    let base64_always = match get_str(&b, "encoding").unwrap_or("auto") {
        "auto" => false,
        "base64" => true,
        other => {
            return Err(ApiError::bad_request(format!("unknown encoding '{other}'")));
        }
    };
    let truncate: Option<usize> = b
        .get("truncate")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|n| usize::try_from(n).ok());
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count.min(10_000) {
        let Some((d, remaining)) = queue.get(true) else {
            break;
        };
        let m = &d.message;
        let body = match truncate {
            Some(n) if n < m.body.len() => m.body.slice(..n),
            _ => m.body.clone(),
        };
        let (payload, encoding) = match std::str::from_utf8(&body) {
            Ok(text) if !base64_always => (text.to_owned(), "string"),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(&body),
                "base64",
            ),
        };
        out.push(json!({
            "payload_bytes": m.body.len(),
            "redelivered": d.redelivered,
            "exchange": m.exchange.as_str(),
            "routing_key": m.routing_key.as_str(),
            "message_count": remaining,
            "properties": json::properties_to_json(&m.properties),
            "payload": payload,
            "payload_encoding": encoding,
        }));
        taken.push(d.offset);
    }
    match mode {
        AckMode::AckRequeue | AckMode::RejectRequeue => queue.requeue(&taken),
        AckMode::Ack => queue.settle(&taken),
        AckMode::Reject => queue.reject(&taken),
    }
    Ok(json::ok(Value::Array(out)))
}

// ---- exchanges ----

fn exchange_json(vh: &VHost, x: &pier_broker::exchange::Exchange, detailed: bool) -> Value {
    let vhost = vh.name();
    let mut v = json!({
        "name": x.name.as_str(),
        "vhost": vhost,
        "type": x.kind.as_str(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "user_who_performed_action": "",
    });
    // As RabbitMQ: the key is there only when a policy applies (exchanges follow policies
    // as they change, so the one in force now is the applied one).
    if let (Some(p), Some(m)) = (
        vh.effective_policy(pier_broker::ObjectKind::Exchange, x.name.as_str()),
        v.as_object_mut(),
    ) {
        m.insert("policy".into(), Value::from(p.name));
    }
    if detailed {
        if let Some(m) = v.as_object_mut() {
            m.insert("incoming".into(), json!([]));
            m.insert("outgoing".into(), json!([]));
        }
    }
    v
}

fn sorted_exchanges(vh: &VHost) -> Vec<pier_broker::exchange::Exchange> {
    let mut xs = vh.exchanges();
    xs.sort_by(|a, b| a.name.cmp(&b.name));
    xs
}

pub async fn exchanges(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    let mut items = Vec::new();
    for vh in visible_vhosts(&st, &user) {
        for x in sorted_exchanges(&vh) {
            items.push(exchange_json(&vh, &x, false));
        }
    }
    json::list(items, &q)
}

pub async fn vhost_exchanges(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    let items = sorted_exchanges(&vh)
        .iter()
        .map(|x| exchange_json(&vh, x, false))
        .collect();
    json::list(items, &q)
}

pub async fn exchange(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    let name = exchange_name(&name);
    let x = vh
        .exchanges()
        .into_iter()
        .find(|x| x.name.as_str() == name)
        .ok_or_else(ApiError::not_found)?;
    Ok(json::ok(exchange_json(&vh, &x, true)))
}

pub async fn put_exchange(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let b = body_object(&body)?;
    let Some(kind) = get_str(&b, "type") else {
        return Err(ApiError::bad_request("[{key_missing,type}]"));
    };
    if name == DEFAULT_EXCHANGE_ALIAS {
        return Err(ApiError::access_refused());
    }
    short(&name)?;
    drop(vh);
    let out = st
        .execute(MetadataCommand::DeclareExchange {
            vhost,
            name,
            kind: kind.to_owned(),
            durable: get_bool(&b, "durable", false)?,
            auto_delete: get_bool(&b, "auto_delete", false)?,
            internal: get_bool(&b, "internal", false)?,
            arguments: metadata::arguments(&get_table(&b, "arguments")?)?,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

pub async fn delete_exchange(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let name = exchange_name(&name);
    if name.is_empty() || name.starts_with("amq.") {
        return Err(ApiError::access_refused());
    }
    if !vh.exchange_exists(name) {
        return Err(ApiError::not_found());
    }
    if q.get("if-unused").is_some_and(|v| v == "true") && vh.exchange_has_bindings(name) {
        return Err(BrokerError::InUse {
            kind: pier_broker::ObjectKind::Exchange,
            name: name.to_owned(),
            vhost,
        }
        .into());
    }
    st.execute(MetadataCommand::DeleteExchange {
        vhost: vhost.clone(),
        name: name.to_owned(),
    })
    .await?;
    Ok(json::no_content())
}

/// POST /api/exchanges/vhost/name/publish → `{"routed": bool}`.
pub async fn publish(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let b = body_object(&body)?;
    let exchange = exchange_name(&name);
    let routing_key = short(get_str(&b, "routing_key").unwrap_or(""))?;
    let properties = json::json_to_properties(b.get("properties"))?;
    let payload = get_str(&b, "payload").unwrap_or("");
    let body = match get_str(&b, "payload_encoding").unwrap_or("string") {
        "string" => bytes::Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => bytes::Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(payload.trim())
                .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown payload_encoding '{other}'"
            )))
        }
    };
    let message = Arc::new(Message::new(
        ShortString::from(exchange),
        routing_key,
        properties,
        body,
    ));
    // The one publish path: x-delay, CC/BCC, alternate exchanges and the shared fan-out record
    // as for any AMQP publish.
    let routed = vh
        .publish(message, pier_broker::PublishOptions::client())
        .map_err(|e| ApiError::bad_request(format!("{} {}", e.reply_code(), e.reply_text())))?
        .routed;
    Ok(json::ok(json!({ "routed": routed })))
}

// ---- bindings ----

/// Every binding of a vhost as management shows them: the default exchange's implicit
/// binding to each queue first, then the declared ones.
fn vhost_bindings_json(vh: &VHost) -> Vec<Value> {
    let mut out: Vec<Value> = sorted_queues(vh)
        .iter()
        .map(|q| {
            binding_json(
                vh.name(),
                "",
                &Destination::Queue(q.name().clone()),
                q.name(),
                &FieldTable::new(),
            )
        })
        .collect();
    let mut declared = vh.bindings();
    declared.sort_by(|a, b| {
        (&a.source, &a.destination, &a.routing_key).cmp(&(
            &b.source,
            &b.destination,
            &b.routing_key,
        ))
    });
    out.extend(declared.iter().map(|b| {
        binding_json(
            vh.name(),
            &b.source,
            &b.destination,
            &b.routing_key,
            &b.arguments,
        )
    }));
    out
}

fn binding_json(
    vhost: &str,
    source: &str,
    destination: &Destination,
    routing_key: &str,
    arguments: &FieldTable,
) -> Value {
    let (dest, kind) = match destination {
        Destination::Queue(n) => (n.as_str(), "queue"),
        Destination::Exchange(n) => (n.as_str(), "exchange"),
    };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": kind,
        "routing_key": routing_key,
        "arguments": table_to_json(arguments),
        "properties_key": json::properties_key(routing_key, arguments),
    })
}

fn field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

pub async fn bindings(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    let items = visible_vhosts(&st, &user)
        .iter()
        .flat_map(|vh| vhost_bindings_json(vh))
        .collect();
    json::list(items, &q)
}

pub async fn vhost_bindings(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    json::list(vhost_bindings_json(&vh), &q)
}

pub async fn queue_bindings(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    find_queue(&vh, &name)?;
    let items: Vec<Value> = vhost_bindings_json(&vh)
        .into_iter()
        .filter(|b| field(b, "destination_type") == "queue" && field(b, "destination") == name)
        .collect();
    Ok(json::ok(Value::Array(items)))
}

fn exchange_bindings(
    st: &AppState,
    user: &AuthUser,
    vhost: &str,
    name: &str,
    as_source: bool,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, user, vhost)?;
    let name = exchange_name(name);
    if !vh.exchange_exists(name) {
        return Err(ApiError::not_found());
    }
    let items: Vec<Value> = vhost_bindings_json(&vh)
        .into_iter()
        .filter(|b| {
            if as_source {
                field(b, "source") == name
            } else {
                field(b, "destination_type") == "exchange" && field(b, "destination") == name
            }
        })
        .collect();
    Ok(json::ok(Value::Array(items)))
}

pub async fn exchange_bindings_source(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    exchange_bindings(&st, &user, &vhost, &name, true)
}

pub async fn exchange_bindings_destination(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    exchange_bindings(&st, &user, &vhost, &name, false)
}

fn destination_kind(kind: &str) -> ApiResult<&'static str> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

/// Bindings from `source` to the destination named in the URL.
fn pair_bindings(vh: &VHost, source: &str, kind: &str, destination: &str) -> ApiResult<Vec<Value>> {
    let dtype = destination_kind(kind)?;
    let source = exchange_name(source);
    if !vh.exchange_exists(source) && !source.is_empty() {
        return Err(ApiError::not_found());
    }
    let exists = match dtype {
        "queue" => find_queue(vh, destination).is_ok(),
        _ => vh.exchange_exists(destination),
    };
    if !exists {
        return Err(ApiError::not_found());
    }
    Ok(vhost_bindings_json(vh)
        .into_iter()
        .filter(|b| {
            field(b, "source") == source
                && field(b, "destination_type") == dtype
                && field(b, "destination") == destination
        })
        .collect())
}

pub async fn binding_pair(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    Ok(json::ok(Value::Array(pair_bindings(
        &vh,
        &source,
        &kind,
        &destination,
    )?)))
}

pub async fn binding(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    pair_bindings(&vh, &source, &kind, &destination)?
        .into_iter()
        .find(|b| field(b, "properties_key") == props)
        .map(json::ok)
        .ok_or_else(ApiError::not_found)
}

fn kind_of(dtype: &str) -> metadata::DestinationKind {
    if dtype == "queue" {
        metadata::DestinationKind::Queue
    } else {
        metadata::DestinationKind::Exchange
    }
}

fn binding_error(e: MetadataError) -> ApiError {
    match e {
        MetadataError::Refused(CommandError::Broker(e @ BrokerError::NotFound { .. })) => {
            ApiError::not_found_reason(e.to_string())
        }
        other => other.into(),
    }
}

pub async fn create_binding(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    change_vhost(&st.broker, &user, &vhost)?;
    let dtype = destination_kind(&kind)?;
    let b = body_object(&body)?;
    let routing_key = short(get_str(&b, "routing_key").unwrap_or(""))?;
    let arguments = get_table(&b, "arguments")?;
    let source = exchange_name(&source);
    let props = json::properties_key(&routing_key, &arguments);
    st.metadata
        .execute(MetadataCommand::Bind {
            vhost,
            source: source.to_owned(),
            destination: destination.clone(),
            destination_kind: kind_of(dtype),
            routing_key: routing_key.to_string(),
            arguments: metadata::arguments(&arguments)?,
            skip_missing: false,
        })
        .await
        .map_err(binding_error)?;
    let location = format!(
        "{}/{}",
        crate::encode_segment(&destination),
        crate::encode_segment(&props)
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

pub async fn delete_binding(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let found = pair_bindings(&vh, &source, &kind, &destination)?
        .into_iter()
        .find(|b| field(b, "properties_key") == props)
        .ok_or_else(ApiError::not_found)?;
    let source = exchange_name(&source);
    if source.is_empty() {
        return Err(ApiError::access_refused());
    }
    let routing_key = short(field(&found, "routing_key"))?;
    let arguments = match found.get("arguments") {
        Some(Value::Object(o)) => json::object_to_table(o)?,
        _ => FieldTable::new(),
    };
    // Recover the exact stored arguments (JSON loses integer widths).
    let arguments = vh
        .bindings()
        .into_iter()
        .find(|b| {
            b.source.as_str() == source
                && b.destination.name().as_str() == destination
                && b.routing_key == routing_key
                && table_to_json(&b.arguments) == table_to_json(&arguments)
        })
        .map_or(arguments, |b| b.arguments);
    let dtype = destination_kind(&kind)?;
    drop(vh);
    st.metadata
        .execute(MetadataCommand::Unbind {
            vhost,
            source: source.to_owned(),
            destination,
            destination_kind: kind_of(dtype),
            routing_key: routing_key.to_string(),
            arguments: metadata::arguments(&arguments)?,
        })
        .await
        .map_err(binding_error)?;
    Ok(json::no_content())
}
