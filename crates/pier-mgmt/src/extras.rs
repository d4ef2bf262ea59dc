//! The smaller endpoints of RabbitMQ's management API: cluster name, extensions, feature
//! flags, auth settings, runtime and global parameters, operator policies, vhost and user
//! limits, the remaining health checks, node memory, and the cluster-only actions (queue
//! sync, rebalancing, vhost restart) that a single node answers as RabbitMQ's does.
//!
//! Where Pier has no such feature (runtime parameters other than vhost limits, operator
//! policies, user limits) reads answer empty lists and writes are refused with 400 and a
//! reason, so that nobody believes a setting is in force when it is not. See
//! docs/management-api.md.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use pier_broker::VhostLimits;
use serde_json::{json, Map, Value};

use crate::auth::{view_vhost, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_str};
use crate::topology::visible_vhosts;
use crate::AppState;
use pier_cluster::metadata::MetadataCommand;

type Q = Query<HashMap<String, String>>;

fn service_unavailable(body: Value) -> Response {
    let mut r = json::ok(body);
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r
}

// ---- cluster name, extensions, feature flags, auth ----

/// PUT /api/cluster-name `{"name": …}` (administrator). A single node keeps it in memory
/// (after a restart the configured `cluster_name` is back); a cluster replicates and stores it.
pub async fn put_cluster_name(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    let name = match b.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(ApiError::bad_request("name must be a non-empty string")),
        None => return Err(ApiError::bad_request("[{key_missing,name}]")),
    };
    st.execute(MetadataCommand::SetClusterName { name }).await?;
    Ok(json::no_content())
}

/// GET /api/extensions: the web UI's plugin extensions; Pier's UI has none.
pub async fn extensions() -> Response {
    json::ok(json!([]))
}

/// GET /api/feature-flags: RabbitMQ's flags, with the state that describes Pier's behaviour
/// (Pier has no flags to enable: what it supports is always on, the rest always off).
pub async fn feature_flags(Extension(user): Extension<AuthUser>) -> ApiResult<Response> {
    user.require_admin()?;
    let flag = |name: &str, desc: &str, enabled: bool| {
        json!({
            "name": name,
            "desc": desc,
            "doc_url": "",
            "state": if enabled { "enabled" } else { "disabled" },
            "stability": "stable",
            "provided_by": "pier",
        })
    };
    Ok(json::ok(json!([
        flag(
            "implicit_default_bindings",
            "Default bindings are now implicit, instead of being stored in the database",
            true
        ),
        flag("maintenance_mode_status", "Maintenance mode status", false),
        flag("quorum_queue", "Support queues of type `quorum`", true),
        flag("stream_queue", "Support queues of type `stream`", false),
        flag(
            "user_limits",
            "Configure connection and channel limits for a user",
            false
        ),
        flag(
            "virtual_host_metadata",
            "Virtual host metadata (description, tags, etc)",
            true
        ),
    ])))
}

/// GET /api/auth (no credentials needed, as RabbitMQ: the login page reads it). Pier only
/// has basic auth, no OAuth 2 / UAA.
pub async fn auth_settings() -> Response {
    json::ok(json!({"enable_uaa": false, "uaa_client_id": "", "uaa_location": ""}))
}

// ---- runtime parameters, global parameters, operator policies ----

/// RabbitMQ keeps vhost limits as runtime parameters of component `vhost-limits`, name
/// `limits`; that is the one component Pier has (federation, shovel… are not there).
const VHOST_LIMITS: &str = "vhost-limits";
const LIMITS: &str = "limits";

fn limits_parameters(st: &AppState, user: &AuthUser, vhost: Option<&str>) -> Vec<Value> {
    let mut vhosts = visible_vhosts(st, user);
    vhosts.sort_by(|a, b| a.name().cmp(b.name()));
    vhosts
        .iter()
        .filter(|vh| vhost.is_none_or(|v| v == vh.name()))
        .filter_map(|vh| {
            limits_value(vh.limits()).map(|v| {
                json!({"value": v, "vhost": vh.name(), "component": VHOST_LIMITS, "name": LIMITS})
            })
        })
        .collect()
}

/// GET /api/parameters[/component[/vhost]]: the vhost limits (see above).
pub async fn parameters(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    json::list(limits_parameters(&st, &user, None), &q)
}

pub async fn component_parameters(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(component): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    let items = if component == VHOST_LIMITS {
        limits_parameters(&st, &user, None)
    } else {
        Vec::new()
    };
    json::list(items, &q)
}

pub async fn vhost_parameters(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    view_vhost(&st.broker, &user, &vhost)?;
    let items = if component == VHOST_LIMITS {
        limits_parameters(&st, &user, Some(&vhost))
    } else {
        Vec::new()
    };
    json::list(items, &q)
}

pub async fn parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    view_vhost(&st.broker, &user, &vhost)?;
    if component != VHOST_LIMITS || name != LIMITS {
        return Err(ApiError::not_found());
    }
    limits_parameters(&st, &user, Some(&vhost))
        .into_iter()
        .next()
        .map(json::ok)
        .ok_or_else(ApiError::not_found)
}

/// PUT: `vhost-limits/{vhost}/limits` `{"value": {"max-queues": n, …}}` sets the vhost's
/// limits (administrator); any other component gets RabbitMQ's answer for a missing one.
pub async fn put_parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    if component != VHOST_LIMITS {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\ncomponent {component} not found\n"
        )));
    }
    user.require_admin()?;
    if name != LIMITS {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\nparameter name must be '{LIMITS}'\n"
        )));
    }
    let b = body_object(&body)?;
    let Some(value) = b.get("value") else {
        return Err(ApiError::bad_request("[{key_missing,value}]"));
    };
    let Value::Object(terms) = value else {
        return Err(ApiError::bad_request(
            "Validation failed\n\nvalue must be an object of limits\n",
        ));
    };
    let mut limits = VhostLimits::default();
    for (k, v) in terms {
        let limit = parse_limit(k, v)?;
        match k.as_str() {
            MAX_CONNECTIONS => limits.max_connections = limit,
            MAX_QUEUES => limits.max_queues = limit,
            _ => return Err(unrecognised_limit(k, v)),
        }
    }
    let vh = vhost_for_limits(&st, &vhost)?;
    let existed = limits_value(vh.limits()).is_some();
    set_limits(&st, vhost, limits).await?;
    Ok(json::created_or_updated(!existed))
}

pub async fn delete_parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    if component != VHOST_LIMITS || name != LIMITS {
        return Err(ApiError::not_found());
    }
    user.require_admin()?;
    let vh = st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    if limits_value(vh.limits()).is_none() {
        return Err(ApiError::not_found());
    }
    set_limits(&st, vhost, VhostLimits::default()).await?;
    Ok(json::no_content())
}

async fn set_limits(st: &AppState, vhost: String, limits: VhostLimits) -> ApiResult<()> {
    st.execute(MetadataCommand::SetVhostLimits {
        vhost,
        max_connections: limits.max_connections,
        max_queues: limits.max_queues,
    })
    .await?;
    Ok(())
}

fn require_policymaker(user: &AuthUser) -> ApiResult<()> {
    if user.is_policymaker() || user.is_admin() {
        Ok(())
    } else {
        Err(ApiError::not_authorised("Not policymaker user"))
    }
}

const CLUSTER_NAME: &str = "cluster_name";

/// GET /api/global-parameters: the one Pier has is `cluster_name` (as RabbitMQ lists it).
pub async fn global_parameters(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    json::list(
        vec![json!({"name": CLUSTER_NAME, "value": st.cluster_name()})],
        &q,
    )
}

pub async fn global_parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if name != CLUSTER_NAME {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(
        json!({"name": CLUSTER_NAME, "value": st.cluster_name()}),
    ))
}

/// PUT /api/global-parameters/cluster_name `{"value": …}` renames the cluster; other global
/// parameters have no meaning in Pier and are refused.
pub async fn put_global_parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    if name != CLUSTER_NAME {
        return Err(ApiError::bad_request(format!(
            "global parameter '{name}' is not supported by Pier (only {CLUSTER_NAME})"
        )));
    }
    match b.get("value") {
        Some(Value::String(s)) if !s.is_empty() => {
            st.execute(MetadataCommand::SetClusterName { name: s.clone() })
                .await?;
        }
        Some(_) => return Err(ApiError::bad_request("value must be a non-empty string")),
        None => return Err(ApiError::bad_request("[{key_missing,value}]")),
    }
    Ok(json::no_content())
}

pub async fn delete_global_parameter(
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if name == CLUSTER_NAME {
        return Err(ApiError::bad_request(
            "cluster_name cannot be cleared (set another with PUT /api/cluster-name)",
        ));
    }
    Err(ApiError::not_found())
}

/// GET /api/operator-policies[/vhost]: Pier has no operator policies.
pub async fn operator_policies(
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    json::list(Vec::new(), &q)
}

pub async fn vhost_operator_policies(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    view_vhost(&st.broker, &user, &vhost)?;
    json::list(Vec::new(), &q)
}

pub async fn operator_policy(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, _name)): Path<(String, String)>,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    view_vhost(&st.broker, &user, &vhost)?;
    Err(ApiError::not_found())
}

pub async fn put_operator_policy(
    Extension(user): Extension<AuthUser>,
    Path(_path): Path<(String, String)>,
    // Read so that the connection stays usable (an unread body makes hyper close it).
    _body: Bytes,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    Err(ApiError::bad_request(
        "operator policies are not supported by Pier (use policies)",
    ))
}

pub async fn delete_operator_policy(
    Extension(user): Extension<AuthUser>,
    Path(_path): Path<(String, String)>,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    Err(ApiError::not_found())
}

// ---- vhost limits ----

const MAX_CONNECTIONS: &str = "max-connections";
const MAX_QUEUES: &str = "max-queues";

fn limits_value(l: VhostLimits) -> Option<Value> {
    let mut m = Map::new();
    if let Some(v) = l.max_connections {
        m.insert(MAX_CONNECTIONS.into(), Value::from(v));
    }
    if let Some(v) = l.max_queues {
        m.insert(MAX_QUEUES.into(), Value::from(v));
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// GET /api/vhost-limits: `[{"vhost": …, "value": {"max-queues": …}}]` for the vhosts (that
/// the user can see) with a limit.
pub async fn vhost_limits(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    let mut vhosts = visible_vhosts(&st, &user);
    vhosts.sort_by(|a, b| a.name().cmp(b.name()));
    let items = vhosts
        .iter()
        .filter_map(|vh| limits_value(vh.limits()).map(|v| json!({"vhost": vh.name(), "value": v})))
        .collect();
    json::list(items, &q)
}

pub async fn one_vhost_limits(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    let items: Vec<Value> = limits_value(vh.limits())
        .map(|v| json!({"vhost": vhost, "value": v}))
        .into_iter()
        .collect();
    Ok(json::ok(Value::Array(items)))
}

fn vhost_for_limits(st: &AppState, vhost: &str) -> ApiResult<std::sync::Arc<pier_broker::VHost>> {
    st.broker
        .vhost(vhost)
        .ok_or_else(|| ApiError::not_found_reason("vhost_not_found"))
}

fn unrecognised_limit(name: &str, value: &Value) -> ApiError {
    ApiError::bad_request(format!(
        "Validation failed\n\nUnrecognised terms [{{<<\"{name}\">>,{value}}}] in limits\n"
    ))
}

/// A limit's value: a negative number means no limit, as in RabbitMQ.
fn parse_limit(name: &str, value: &Value) -> ApiResult<Option<u64>> {
    let not_a_number = || {
        ApiError::bad_request(format!(
            "Validation failed\n\n{name} should be a number, actually was {value}\n"
        ))
    };
    match value {
        Value::Number(n) if n.as_i64().is_some_and(|v| v < 0) => Ok(None),
        Value::Number(n) => n.as_u64().map(Some).ok_or_else(not_a_number),
        _ => Err(not_a_number()),
    }
}

/// PUT /api/vhost-limits/{vhost}/{max-connections|max-queues} `{"value": n}`; a negative
/// value means no limit, as in RabbitMQ. On a single node in memory (the config file's limits
/// come back at the next start); a cluster replicates and stores them.
pub async fn put_vhost_limit(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    let Some(value) = b.get("value") else {
        return Err(ApiError::bad_request("[{key_missing,value}]"));
    };
    if name != MAX_CONNECTIONS && name != MAX_QUEUES {
        return Err(unrecognised_limit(&name, value));
    }
    let limit = parse_limit(&name, value)?;
    let vh = vhost_for_limits(&st, &vhost)?;
    let mut limits = vh.limits();
    if name == MAX_CONNECTIONS {
        limits.max_connections = limit;
    } else {
        limits.max_queues = limit;
    }
    set_limits(&st, vhost, limits).await?;
    Ok(json::no_content())
}

/// DELETE /api/vhost-limits/{vhost}/{name}: 204 whether or not the limit was set.
pub async fn delete_vhost_limit(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let vh = vhost_for_limits(&st, &vhost)?;
    let mut limits = vh.limits();
    match name.as_str() {
        MAX_CONNECTIONS => limits.max_connections = None,
        MAX_QUEUES => limits.max_queues = None,
        _ => return Ok(json::no_content()),
    }
    set_limits(&st, vhost, limits).await?;
    Ok(json::no_content())
}

// ---- user limits (not enforced by Pier) ----

pub async fn user_limits(Extension(user): Extension<AuthUser>, Query(q): Q) -> ApiResult<Response> {
    user.require_admin()?;
    json::list(Vec::new(), &q)
}

pub async fn one_user_limits(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if st.broker.users().user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(json!([])))
}

pub async fn put_user_limit(
    Extension(user): Extension<AuthUser>,
    Path(_path): Path<(String, String)>,
    // Read so that the connection stays usable (an unread body makes hyper close it).
    _body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    Err(ApiError::bad_request(
        "user limits (max-connections, max-channels) are not supported by Pier",
    ))
}

/// DELETE: there is never a user limit to clear, so 204 as RabbitMQ answers for an unset one.
pub async fn delete_user_limit(
    Extension(user): Extension<AuthUser>,
    Path(_path): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    Ok(json::no_content())
}

// ---- health checks ----

/// The node's listeners as (protocol, port).
fn listener_ports(st: &AppState) -> Vec<(&'static str, u16)> {
    let mut out = Vec::new();
    if let Some(a) = st.amqp_addr {
        out.push(("amqp", a.port()));
    }
    if let Some(a) = st.http_addr {
        out.push(("http", a.port()));
        out.push(("http/prometheus", a.port()));
    }
    out
}

pub async fn health_port_listener(
    State(st): State<AppState>,
    Path(port): Path<String>,
) -> ApiResult<Response> {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request("Invalid port"))?;
    let listeners = listener_ports(&st);
    if listeners.iter().any(|(_, p)| *p == port) {
        return Ok(json::ok(json!({"status": "ok", "port": port})));
    }
    let mut ports: Vec<u16> = listeners.iter().map(|(_, p)| *p).collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(service_unavailable(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": port,
        "ports": ports,
    })))
}

pub async fn health_protocol_listener(
    State(st): State<AppState>,
    Path(protocol): Path<String>,
) -> Response {
    let listeners = listener_ports(&st);
    // RabbitMQ accepts its aliases for AMQP 0-9-1.
    let wanted = match protocol.as_str() {
        "amqp091" | "amqp0-9-1" | "amqp0.9.1" => "amqp",
        p => p,
    };
    if listeners.iter().any(|(p, _)| *p == wanted) {
        return json::ok(json!({"status": "ok", "protocol": protocol}));
    }
    let protocols: Vec<&str> = listeners.iter().map(|(p, _)| *p).collect();
    service_unavailable(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": protocol,
        "protocols": protocols,
    }))
}

/// node-is-mirror-sync-critical: Pier has no mirrored classic queues, so no node is.
pub async fn health_single_node(State(st): State<AppState>) -> Response {
    let reason = if st.cluster().is_some() {
        "no mirrored classic queues on this node"
    } else {
        "single node cluster"
    };
    json::ok(json!({"status": "ok", "reason": reason}))
}

/// node-is-quorum-critical: 503 with the replicated quorum queues that would lose their
/// majority if this node stopped, RabbitMQ's text and shape; a single node never is.
pub async fn health_quorum_critical(State(st): State<AppState>) -> Response {
    let Some(c) = st.cluster() else {
        return json::ok(json!({"status": "ok", "reason": "single node cluster"}));
    };
    let critical = c.quorum_critical();
    if critical.is_empty() {
        return json::ok(json!({"status": "ok"}));
    }
    let queues: Vec<Value> = critical
        .iter()
        .map(|(vhost, name)| {
            json!({
                "name": name,
                "readable_name": format!("queue '{name}' in vhost '{vhost}'"),
                "virtual_host": vhost,
                "type": "quorum",
            })
        })
        .collect();
    let mut r = json::ok(json!({
        "status": "failed",
        "reason": "There are quorum queues that would lose their quorum if the target node is shut down",
        "queues": queues,
    }));
    *r.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    r
}

/// GET /api/queues/{vhost}/{name}/quorum-status (Pier's; `pier ctl quorum_status`): one
/// row per member of a replicated quorum queue's Raft group.
pub async fn quorum_status(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = crate::auth::view_vhost(&st.broker, &user, &vhost)?;
    let q = crate::topology::find_queue(&vh, &name)?;
    if q.kind() != pier_broker::queue::QueueType::Quorum {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' is not a quorum queue"
        )));
    }
    let rows = match st.cluster() {
        Some(c) => c.quorum_status(&vhost, &name).await,
        None => None,
    };
    // Not replicated: a group of one, this node, which leads.
    let rows = rows.unwrap_or_else(|| {
        vec![(
            q.home_node().map_or_else(|| st.node.clone(), str::to_owned),
            Ok(pier_cluster::GroupStatus {
                state: "leader".into(),
                term: 1,
                last_log_index: 0,
                commit_index: 0,
                leader: None,
            }),
        )]
    });
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(node, r)| match r {
            Ok(s) => json!({
                "node": node,
                "raft_state": s.state,
                "term": s.term,
                "last_log_index": s.last_log_index,
                "commit_index": s.commit_index,
                "leader": s.leader,
            }),
            Err(e) => json!({"node": node, "raft_state": "noproc", "error": e}),
        })
        .collect();
    Ok(json::ok(Value::Array(items)))
}

// ---- nodes ----

/// GET /api/nodes/{node}/memory: Pier measures its resident set size only (strategy "rss");
/// the Erlang-specific breakdown has no counterpart. In-memory message bodies are given as
/// `pier_message_bodies`.
pub async fn node_memory(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(node): Path<String>,
) -> ApiResult<Response> {
    user.require_monitor()?;
    if node != st.node {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(json!({ "memory": memory_breakdown(&st) })))
}

pub(crate) fn memory_breakdown(st: &AppState) -> Value {
    let (rss, _, _) = crate::api::process_figures();
    let bodies: u64 = st
        .broker
        .vhosts()
        .iter()
        .flat_map(|vh| vh.queues())
        .map(|q| q.stats().memory_bytes)
        .sum();
    json!({
        "strategy": "rss",
        "total": {"rss": rss, "allocated": rss, "erlang": rss},
        "pier_message_bodies": bodies,
    })
}

/// POST /api/vhosts/{vhost}/start/{node}: a Pier vhost is always running on its one node.
pub async fn start_vhost(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, node)): Path<(String, String)>,
    // Read so that the connection stays usable (an unread body makes hyper close it).
    _body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    if node != st.node {
        return Err(ApiError::bad_request(format!(
            "Request to node {node} failed with nodedown"
        )));
    }
    Ok(json::no_content())
}

/// POST /api/rebalance/queues: nothing to move between nodes on a single node.
pub async fn rebalance_queues(
    Extension(user): Extension<AuthUser>,
    // Read so that the connection stays usable (an unread body makes hyper close it).
    _body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    Ok(json::no_content())
}

/// POST /api/queues/{vhost}/{name}/actions `{"action": "sync"|"cancel_sync"}`: mirror
/// synchronisation; a Pier queue has no mirrors, so (as for RabbitMQ's unmirrored classic
/// queues) there is nothing to do: 204.
pub async fn queue_actions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    if !vh.queues().iter().any(|q| q.name().as_str() == name) {
        return Err(ApiError::not_found());
    }
    let b = body_object(&body)?;
    match get_str(&b, "action") {
        Some("sync" | "cancel_sync") => Ok(json::no_content()),
        Some(other) => Err(ApiError::bad_request(json!(["unknown", other]))),
        None => Err(ApiError::bad_request("[{key_missing,action}]")),
    }
}

/// POST /api/queues/{vhost}/{name}/members `{"node": N}` (Pier's; `pier ctl add_member`):
/// the node joins the replicated quorum queue's Raft group.
pub async fn add_queue_member(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let c = quorum_admin(&st, &user, &vhost, &name)?;
    let node = target_node(&body)?;
    changed(c.add_queue_member(&vhost, &name, &node).await)
}

/// DELETE /api/queues/{vhost}/{name}/members/{node} (`pier ctl delete_member`).
pub async fn delete_queue_member(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name, node)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let c = quorum_admin(&st, &user, &vhost, &name)?;
    changed(c.delete_queue_member(&vhost, &name, &node).await)
}

/// POST /api/queues/{vhost}/{name}/transfer-leadership `{"node": N}`
/// (`pier ctl transfer_leadership`).
pub async fn transfer_queue_leadership(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let c = quorum_admin(&st, &user, &vhost, &name)?;
    let node = target_node(&body)?;
    changed(c.transfer_queue_leadership(&vhost, &name, &node).await)
}

/// Membership changes are an administrator's (as `rabbitmq-queues`), on a quorum queue of a
/// clustered node: the node's cluster handle.
fn quorum_admin<'a>(
    st: &'a AppState,
    user: &AuthUser,
    vhost: &str,
    name: &str,
) -> ApiResult<&'a pier_cluster::ClusterHandle> {
    if !user.is_admin() {
        return Err(ApiError::not_authorised("Not administrator user"));
    }
    let vh = crate::auth::view_vhost(&st.broker, user, vhost)?;
    let q = crate::topology::find_queue(&vh, name)?;
    if q.kind() != pier_broker::queue::QueueType::Quorum {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' is not a quorum queue"
        )));
    }
    st.cluster()
        .ok_or_else(|| ApiError::bad_request("not a cluster member"))
}

/// The `node` of a membership request's body.
fn target_node(body: &Bytes) -> ApiResult<String> {
    let m = json::body_object(body)?;
    json::get_str(&m, "node")
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("\"node\" is required"))
}

fn changed(r: Result<(), pier_cluster::ClusterError>) -> ApiResult<Response> {
    r.map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(json::no_content())
}
