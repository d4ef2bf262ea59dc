//! Node-level endpoints (overview, nodes, health), vhosts, users, permissions and topic
//! permissions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use pier_broker::{Message, Permission, QueueDeclare, TopicPermission};
use pier_wire::ShortString;
use procfs::process::{LimitValue, Process};
use serde_json::{json, Map, Value};

use crate::auth::{change_vhost, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_str, rate_details as details};
use crate::stats;
use crate::topology::visible_vhosts;
use crate::{AppState, VhostMeta, RABBITMQ_COMPAT_VERSION};
use pier_cluster::metadata::MetadataCommand;

type Q = Query<HashMap<String, String>>;

pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

// The fallbacks read the request body: answering with it unread makes hyper close the
// keep-alive connection, which a client sees as a dropped connection on its next request.
pub async fn not_found(_body: Bytes) -> ApiError {
    ApiError::not_found()
}

pub async fn method_not_allowed(_body: Bytes) -> ApiError {
    ApiError::method_not_allowed()
}

fn exchange_types() -> Value {
    json!([
        {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
        {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
        {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
        {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
    ])
}

fn listeners(st: &AppState) -> Value {
    let mut out = Vec::new();
    if let Some(a) = st.amqp_addr {
        out.push(json!({"node": st.node, "protocol": "amqp", "ip_address": a.ip().to_string(), "port": a.port()}));
    }
    for (protocol, a) in st.listeners.list() {
        out.push(json!({"node": st.node, "protocol": protocol, "ip_address": a.ip().to_string(), "port": a.port()}));
    }
    if let Some(a) = st.http_addr {
        out.push(json!({"node": st.node, "protocol": "http", "ip_address": a.ip().to_string(), "port": a.port()}));
        out.push(json!({"node": st.node, "protocol": "http/prometheus", "ip_address": a.ip().to_string(), "port": a.port()}));
    }
    Value::Array(out)
}

/// The HTTP contexts (RabbitMQ's web dispatch), both on the one management listener.
fn contexts(st: &AppState) -> Value {
    let Some(a) = st.http_addr else {
        return json!([]);
    };
    // RabbitMQ gives the port as a string here.
    let port = a.port().to_string();
    json!([
        {"node": st.node, "description": "RabbitMQ Management", "path": "/", "port": port, "ssl_opts": []},
        {"node": st.node, "description": "RabbitMQ Prometheus", "path": "/", "port": port, "protocol": "'http/prometheus'", "ssl_opts": []},
    ])
}

pub async fn overview(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    let vhosts = visible_vhosts(&st, &user);
    st.refresh_remote_queues().await;
    let (mut ready, mut unacked, mut queues, mut exchanges, mut consumers) =
        (0u64, 0u64, 0, 0, 0u64);
    let (mut delivered, mut acked, mut no_ack) = (0u64, 0u64, 0u64);
    for vh in &vhosts {
        exchanges += vh.exchanges().len();
        for q in vh.queues() {
            let c = q.counters();
            delivered += c.delivered;
            acked += c.acked;
            no_ack += c.delivered_no_ack;
            let s = q.stats();
            ready += s.ready;
            unacked += s.unacked;
            consumers += u64::from(s.consumers);
            queues += 1;
        }
    }
    let conns: Vec<_> = st
        .registry
        .connections()
        .into_iter()
        .filter(|c| user.sees_all_connections() || c.meta.user == user.name)
        .collect();
    let mut channels = conns.iter().map(|c| c.channels.len()).sum::<usize>() as u64;
    let mut connections = conns.len() as u64;
    let mut totals = st.registry.totals();
    // Cluster-wide: the other nodes' connections, channels and publishes, as they report
    // them (queues are already all here, each once, with its home node's figures).
    if user.sees_all_connections() {
        for m in crate::cluster::other_members(&st).await {
            if let (true, Some(r)) = (m.running, &m.report) {
                connections += r.connections;
                channels += r.channels;
                totals.messages_published += r.messages_published;
            }
        }
    }
    let node_counters = crate::topology::node_message_counters(&st);
    let rates = st.sampler.rates(stats::NODE_KEY, &node_counters);
    let rate = |i: usize| details(rates.get(i).copied().unwrap_or(0.0));
    // Queue-total rates are node-wide: shown to those who see every vhost only.
    let sees_all = vhosts.len() == st.broker.vhosts().len();
    let lengths = st.sampler.gauge_rates(stats::NODE_KEY, &node_counters);
    let length_rate = |i: usize| {
        details(if sees_all {
            lengths.get(i).copied().unwrap_or(0.0)
        } else {
            0.0
        })
    };
    Ok(json::ok(json!({
        "management_version": RABBITMQ_COMPAT_VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600], "basic": [600], "detailed": [600]},
        "exchange_types": exchange_types(),
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Pier",
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "cluster_name": st.cluster_name(),
        "erlang_version": "n/a",
        "erlang_full_version": "n/a (Pier is written in Rust)",
        "disable_stats": false,
        "enable_queue_totals": true,
        "message_stats": {
            "publish": totals.messages_published,
            "publish_details": rate(0),
            "deliver_get": delivered,
            "deliver_no_ack": no_ack,
            "ack": acked,
        },
        "churn_rates": {
            "connection_created": totals.connections_opened,
            "connection_created_details": rate(3),
            "connection_closed": totals.connections_closed,
            "connection_closed_details": rate(4),
            "channel_created": totals.channels_opened,
            "channel_created_details": rate(5),
            "channel_closed": totals.channels_closed,
            "channel_closed_details": rate(6),
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": length_rate(7),
            "messages_ready": ready,
            "messages_ready_details": length_rate(8),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": length_rate(9),
        },
        "object_totals": {
            "channels": channels,
            "connections": connections,
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "node": st.node,
        "listeners": listeners(&st),
        "contexts": contexts(&st),
    })))
}

pub async fn cluster_name(State(st): State<AppState>) -> Response {
    json::ok(json!({ "name": st.cluster_name() }))
}

/// Resident memory in bytes, open file descriptors and their (soft) limit, from /proc; 0 for
/// what can't be read, and for an unlimited limit.
pub(crate) fn process_figures() -> (u64, u64, u64) {
    let Ok(me) = Process::myself() else {
        return (0, 0, 0);
    };
    let rss = me
        .statm()
        .map_or(0, |m| m.resident.saturating_mul(procfs::page_size()));
    let fds = me.fd_count().map_or(0, |n| n as u64);
    let max_fds = match me.limits().map(|l| l.max_open_files.soft_limit) {
        Ok(LimitValue::Value(n)) => n,
        Ok(LimitValue::Unlimited) | Err(_) => 0,
    };
    (rss, fds, max_fds)
}

fn node_json(st: &AppState) -> Value {
    let (mem, fds, fd_total) = process_figures();
    let totals = st.registry.totals();
    let node_counters = crate::topology::node_message_counters(st);
    let rates = st.sampler.rates(stats::NODE_KEY, &node_counters);
    let rate = |i: usize| details(rates.get(i).copied().unwrap_or(0.0));
    json!({
        "name": st.node,
        "type": "disc",
        "running": true,
        "being_drained": false,
        "os_pid": std::process::id().to_string(),
        "uptime": u64::try_from(st.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "processors": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "mem_used": mem,
        "mem_limit": alarms_limit(st.registry.alarms().memory_limit()),
        "mem_alarm": st.registry.alarms().state().memory,
        "disk_free": st.registry.alarms().disk_free(),
        "disk_free_limit": st.registry.alarms().disk_free_limit(),
        "disk_free_alarm": st.registry.alarms().state().disk,
        "fd_used": fds,
        "fd_total": fd_total,
        "sockets_used": st.registry.connection_count(),
        // The members this node cannot reach (none on a single node).
        "partitions": st.cluster().map_or_else(Vec::new, |c| c
            .members()
            .into_iter()
            .filter(|(_, running)| !running)
            .map(|(name, _)| name)
            .collect()),
        "applications": [],
        "contexts": contexts(st),
        "exchange_types": exchange_types(),
        "auth_mechanisms": [
            {"name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true},
            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true},
        ],
        "rates_mode": "basic",
        "run_queue": 0,
        "mem_calculation_strategy": "rss",
        "enabled_plugins": [],
        "cluster_links": [],
        "connection_created": totals.connections_opened,
        "connection_created_details": rate(3),
        "connection_closed": totals.connections_closed,
        "connection_closed_details": rate(4),
        "channel_created": totals.channels_opened,
        "channel_created_details": rate(5),
        "channel_closed": totals.channels_closed,
        "channel_closed_details": rate(6),
    })
}

pub async fn nodes(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    user.require_monitor()?;
    let mut all = vec![node_json(&st)];
    all.extend(
        crate::cluster::other_members(&st)
            .await
            .iter()
            .map(crate::cluster::member_json),
    );
    Ok(json::ok(Value::Array(all)))
}

pub async fn node(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_monitor()?;
    if name != st.node {
        // Another member: what it reports (any node answers for every node).
        return crate::cluster::other_members(&st)
            .await
            .iter()
            .find(|m| m.name == name)
            .map(|m| json::ok(crate::cluster::member_json(m)))
            .ok_or_else(ApiError::not_found);
    }
    let mut v = node_json(&st);
    // `?memory=true` adds the breakdown of /api/nodes/{node}/memory, as RabbitMQ's.
    if let (true, Some(m)) = (
        q.get("memory").is_some_and(|v| v == "true"),
        v.as_object_mut(),
    ) {
        m.insert("memory".into(), crate::extras::memory_breakdown(&st));
    }
    Ok(json::ok(v))
}

pub async fn whoami(Extension(user): Extension<AuthUser>) -> Response {
    json::ok(json!({ "name": user.name, "tags": user.tags }))
}

pub async fn health_ok() -> Response {
    json::ok(json!({ "status": "ok" }))
}

/// No limit is shown as 0 (as for an unmonitored resource).
pub(crate) fn alarms_limit(v: u64) -> u64 {
    if v == u64::MAX {
        0
    } else {
        v
    }
}

/// `/api/health/checks/alarms` and `local-alarms`: 503 with the alarms in effect, as RabbitMQ.
pub async fn health_alarms(State(st): State<AppState>) -> Response {
    let state = st.registry.alarms().state();
    if !state.any() {
        return json::ok(json!({ "status": "ok" }));
    }
    let mut alarms = Vec::new();
    if state.memory {
        alarms.push(json!({ "node": st.node, "resource": "memory" }));
    }
    if state.disk {
        alarms.push(json!({ "node": st.node, "resource": "disk" }));
    }
    let body = json!({
        "status": "failed",
        "reason": "resource alarm(s) in effect in the cluster",
        "alarms": alarms,
    });
    let mut response = json::ok(body);
    *response.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    response
}

/// Declares `aliveness-test` in the vhost, publishes a message to it and gets it back.
pub async fn aliveness_test(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let declared = vh.declare_queue(&QueueDeclare {
        name: ShortString::from("aliveness-test"),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: pier_wire::FieldTable::new(),
        connection: 0,
    })?;
    let q = declared.queue;
    q.purge();
    let msg = Arc::new(Message::new(
        ShortString::default(),
        ShortString::from("aliveness-test"),
        pier_broker::message::Properties::default(),
        bytes::Bytes::from_static(b"test_message"),
    ));
    // Through the default exchange, as RabbitMQ's check publishes.
    vh.publish(msg, pier_broker::PublishOptions::internal())?;
    match q.get(false) {
        Some((d, _)) if d.message.body.as_ref() == b"test_message" => {
            Ok(json::ok(json!({ "status": "ok" })))
        }
        _ => Ok(json::ok(
            json!({ "status": "failed", "reason": "message not received back" }),
        )),
    }
}

// ---- vhosts ----

fn vhost_json(st: &AppState, name: &str, vh: &pier_broker::VHost) -> Value {
    let meta = st.vhost_meta(name);
    let (mut ready, mut unacked) = (0u64, 0u64);
    let mut sum = crate::topology::Queueing::default();
    // Length rates (messages, ready, unacked), summed over the queues' sampled lengths.
    let mut length_rates = [0.0f64; 3];
    // Per-message waits of all the vhost's queues in one histogram: quantiles do not add up.
    let mut waits = pier_broker::WaitHistogram::default();
    for q in vh.queues() {
        let s = q.stats();
        ready += s.ready;
        unacked += s.unacked;
        let f = crate::topology::queueing(st, name, &q);
        sum.arrival_rate += f.arrival_rate;
        sum.service_rate += f.service_rate;
        sum.length += f.length;
        q.time_in_queue_into(&mut waits);
        let r = st.sampler.gauge_rates(
            &stats::queue_key(name, q.name()),
            &crate::topology::queue_counters(&q),
        );
        for (i, total) in length_rates.iter_mut().enumerate() {
            *total += r.get(4 + i).copied().unwrap_or(0.0);
        }
    }
    sum.measured = waits.summary();
    let mut cluster_state = Map::new();
    match st.cluster() {
        Some(c) => {
            for (name, running) in c.members() {
                let state = if running { "running" } else { "nodedown" };
                cluster_state.insert(name, Value::from(state));
            }
        }
        None => {
            cluster_state.insert(st.node.clone(), Value::from("running"));
        }
    }
    json!({
        "name": name,
        "description": meta.description,
        "tags": meta.tags,
        "metadata": {"description": meta.description, "tags": meta.tags},
        "default_queue_type": meta.default_queue_type.as_deref().unwrap_or("undefined"),
        "tracing": false,
        "cluster_state": cluster_state,
        "messages": ready + unacked,
        "messages_details": details(length_rates[0]),
        "messages_ready": ready,
        "messages_ready_details": details(length_rates[1]),
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": details(length_rates[2]),
        "pier_queueing": sum.json(),
    })
}

pub async fn vhosts(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    let mut all = st.broker.vhosts();
    all.sort_by(|a, b| a.name().cmp(b.name()));
    let items = all
        .iter()
        .filter(|vh| user.is_monitor() || user.can_view(&st.broker, vh.name()))
        .map(|vh| vhost_json(&st, vh.name(), vh))
        .collect();
    json::list(items, &q)
}

pub async fn vhost(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let vh = st.broker.vhost(&name).ok_or_else(ApiError::not_found)?;
    if !(user.is_monitor() || user.can_view(&st.broker, &name)) {
        return Err(ApiError::not_authorised(
            "User not authorised to access virtual host",
        ));
    }
    Ok(json::ok(vhost_json(&st, &name, &vh)))
}

/// Tags given as a JSON array or a comma-separated string.
pub(crate) fn parse_tags(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn vhost_meta_from(b: &Map<String, Value>) -> VhostMeta {
    let metadata = b.get("metadata").and_then(Value::as_object);
    let description = get_str(b, "description")
        .or_else(|| metadata.and_then(|m| get_str(m, "description")))
        .unwrap_or("")
        .to_owned();
    let tags = match b.get("tags") {
        Some(t) => parse_tags(Some(t)),
        None => parse_tags(metadata.and_then(|m| m.get("tags"))),
    };
    VhostMeta {
        description,
        tags,
        default_queue_type: get_str(b, "default_queue_type").map(str::to_owned),
    }
}

pub async fn put_vhost(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    let meta = vhost_meta_from(&b);
    let out = st
        .execute(MetadataCommand::PutVhost {
            name,
            description: meta.description,
            tags: meta.tags,
            default_queue_type: meta.default_queue_type,
            // As RabbitMQ: whoever creates a vhost gets full permissions on it.
            creator: Some(user.name.clone()),
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

pub async fn delete_vhost(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if st.broker.vhost(&name).is_none() {
        return Err(ApiError::not_found());
    }
    // Its connections are closed by the metadata hooks, on every node.
    if !st
        .execute(MetadataCommand::DeleteVhost { name })
        .await?
        .removed()
    {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}

pub async fn vhost_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    Ok(json::ok(Value::Array(
        sorted_permissions(&st)
            .into_iter()
            .filter(|p| p.get("vhost").and_then(Value::as_str) == Some(vhost.as_str()))
            .collect(),
    )))
}

// ---- users ----

fn user_json(u: &pier_broker::User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": u.tags,
        "limits": {},
    })
}

fn sorted_users(st: &AppState) -> Vec<pier_broker::User> {
    let store = st.broker.users();
    let mut users: Vec<pier_broker::User> = store.users().cloned().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    users
}

pub async fn users(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    json::list(sorted_users(&st).iter().map(user_json).collect(), &q)
}

pub async fn users_without_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let store = st.broker.users();
    let with: std::collections::HashSet<&str> = store.permissions().map(|(u, _, _)| u).collect();
    Ok(json::ok(Value::Array(
        sorted_users(&st)
            .iter()
            .filter(|u| !with.contains(u.name.as_str()))
            .map(user_json)
            .collect(),
    )))
}

pub async fn user(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let store = st.broker.users();
    let u = store.user(&name).ok_or_else(ApiError::not_found)?;
    Ok(json::ok(user_json(u)))
}

/// Checks a `hashing_algorithm`: Pier stores RabbitMQ's default, salted SHA-256.
pub(crate) fn check_algorithm(alg: Option<&str>) -> ApiResult<()> {
    match alg {
        None | Some(HASHING_ALGORITHM) => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported hashing algorithm '{other}' (Pier supports {HASHING_ALGORITHM})"
        ))),
    }
}

/// PUT /api/users/name with `password`, or `password_hash` (+ `hashing_algorithm`), and
/// `tags`. As in RabbitMQ, neither password nor hash leaves the user without a password.
pub async fn put_user(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    let tags = parse_tags(b.get("tags"));
    // Hashed here, once: the salt is random, and every node must store the same hash.
    let password_hash = match (b.get("password"), b.get("password_hash")) {
        (Some(Value::String(p)), _) => pier_broker::auth::hash_password(p),
        (Some(_), _) => return Err(ApiError::bad_request("password must be a string")),
        (None, Some(Value::String(h))) => {
            check_algorithm(get_str(&b, "hashing_algorithm"))?;
            if !h.is_empty() && !valid_hash(h) {
                return Err(ApiError::bad_request("invalid password_hash"));
            }
            h.clone()
        }
        (None, Some(_)) => return Err(ApiError::bad_request("password_hash must be a string")),
        (None, None) => String::new(),
    };
    let out = st
        .execute(MetadataCommand::PutUser {
            name,
            password_hash,
            tags,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

/// A RabbitMQ SHA-256 hash: base64 of a 4-byte salt and a 32-byte digest.
pub(crate) fn valid_hash(h: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(h)
        .is_ok_and(|raw| raw.len() == 36)
}

/// Deletes a user (its connections are closed by the metadata hooks, on every node).
async fn remove_user(st: &AppState, name: &str) -> ApiResult<bool> {
    Ok(st
        .execute(MetadataCommand::DeleteUser {
            name: name.to_owned(),
        })
        .await?
        .removed())
}

pub async fn delete_user(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if !remove_user(&st, &name).await? {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}

pub async fn users_bulk_delete(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    let Some(Value::Array(names)) = b.get("users") else {
        return Err(ApiError::bad_request("[{key_missing,users}]"));
    };
    for n in names.iter().filter_map(Value::as_str) {
        remove_user(&st, n).await?;
    }
    Ok(json::no_content())
}

pub async fn user_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if st.broker.users().user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(Value::Array(
        sorted_permissions(&st)
            .into_iter()
            .filter(|p| p.get("user").and_then(Value::as_str) == Some(name.as_str()))
            .collect(),
    )))
}

// ---- permissions ----

fn permission_json(user: &str, vhost: &str, p: &Permission) -> Value {
    json!({
        "user": user,
        "vhost": vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    })
}

fn sorted_permissions(st: &AppState) -> Vec<Value> {
    let store = st.broker.users();
    let mut v: Vec<(&str, &str, &Permission)> = store.permissions().collect();
    v.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
    v.into_iter()
        .map(|(u, vh, p)| permission_json(u, vh, p))
        .collect()
}

pub async fn permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    json::list(sorted_permissions(&st), &q)
}

pub async fn permission(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let store = st.broker.users();
    let p = store
        .permission(&name, &vhost)
        .ok_or_else(ApiError::not_found)?;
    Ok(json::ok(permission_json(&name, &vhost, p)))
}

/// The body of a permission or topic-permission PUT after RabbitMQ's checks: every key is
/// there (else 400 `[{key_missing,K},...]`) and the vhost and user exist (else 400
/// `vhost_or_user_not_found`).
fn permission_put_body(
    st: &AppState,
    vhost: &str,
    user: &str,
    body: &Bytes,
    keys: [&str; 3],
) -> ApiResult<serde_json::Map<String, Value>> {
    let b = body_object(body)?;
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !b.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    if st.broker.vhost(vhost).is_none() || st.broker.users().user(user).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    Ok(b)
}

pub async fn put_permission(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = permission_put_body(&st, &vhost, &name, &body, ["configure", "write", "read"])?;
    let text = |k: &str| get_str(&b, k).unwrap_or("").to_owned();
    let permission = Permission {
        configure: text("configure"),
        write: text("write"),
        read: text("read"),
    };
    // RabbitMQ answers 400 invalid_regexp for a pattern that does not compile.
    permission
        .validate()
        .map_err(|e| ApiError::bad_request(format!("invalid_regexp: {e}")))?;
    let out = st
        .execute(MetadataCommand::SetPermission {
            user: name,
            vhost,
            configure: permission.configure,
            write: permission.write,
            read: permission.read,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

pub async fn delete_permission(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let out = st
        .execute(MetadataCommand::ClearPermission { user: name, vhost })
        .await?;
    if !out.removed() {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}

// ---- topic permissions ----

fn sorted_topic_permissions(st: &AppState) -> Vec<Value> {
    let store = st.broker.users();
    let mut v: Vec<(&str, &str, &TopicPermission)> = store.topic_permissions().collect();
    v.sort_by(|a, b| (a.1, a.0, &a.2.exchange).cmp(&(b.1, b.0, &b.2.exchange)));
    v.into_iter()
        .map(|(u, vh, p)| {
            json!({
                "user": u,
                "vhost": vh,
                "exchange": p.exchange,
                "write": p.write,
                "read": p.read,
            })
        })
        .collect()
}

fn topic_permissions_where(st: &AppState, key: &str, value: &str) -> Vec<Value> {
    sorted_topic_permissions(st)
        .into_iter()
        .filter(|p| p.get(key).and_then(Value::as_str) == Some(value))
        .collect()
}

pub async fn topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    json::list(sorted_topic_permissions(&st), &q)
}

/// GET /api/topic-permissions/{vhost}/{user}: the user's topic permissions on the vhost, a
/// list (one per exchange); 404 when there are none, as RabbitMQ answers.
pub async fn user_vhost_topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let found: Vec<Value> = topic_permissions_where(&st, "user", &name)
        .into_iter()
        .filter(|p| p.get("vhost").and_then(Value::as_str) == Some(vhost.as_str()))
        .collect();
    if found.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(Value::Array(found)))
}

/// PUT /api/topic-permissions/{vhost}/{user} with `exchange`, `write` and `read`: sets the
/// permission for that one exchange (201 when the user had none on the vhost, else 204).
pub async fn put_topic_permission(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = permission_put_body(&st, &vhost, &name, &body, ["exchange", "write", "read"])?;
    let text = |k: &str| get_str(&b, k).unwrap_or("").to_owned();
    let permission = TopicPermission {
        exchange: text("exchange"),
        write: text("write"),
        read: text("read"),
    };
    permission
        .validate()
        .map_err(|e| ApiError::bad_request(format!("invalid_regexp: {e}")))?;
    let out = st
        .execute(MetadataCommand::SetTopicPermission {
            user: name,
            vhost,
            exchange: permission.exchange,
            write: permission.write,
            read: permission.read,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

/// DELETE /api/topic-permissions/{vhost}/{user}: clears all of the user's topic permissions
/// on the vhost (RabbitMQ ignores a body naming an exchange). Pier extension: `?exchange=X`
/// clears only that exchange's (`pier ctl clear_topic_permissions user X` uses it; clearing
/// all and putting the others back would leave them unrestricted in between).
pub async fn delete_topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    let exchange = q.get("exchange").cloned();
    let out = st
        .execute(MetadataCommand::ClearTopicPermission {
            user: name,
            vhost,
            exchange,
        })
        .await?;
    if !out.removed() {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}

pub async fn user_topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if st.broker.users().user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(Value::Array(topic_permissions_where(
        &st, "user", &name,
    ))))
}

pub async fn vhost_topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    Ok(json::ok(Value::Array(topic_permissions_where(
        &st, "vhost", &vhost,
    ))))
}
