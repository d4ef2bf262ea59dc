//! Pier's own cluster endpoints, which `pier ctl cluster_status`, `join_cluster` and
//! `forget_cluster_node` call (RabbitMQ does these with rabbitmqctl, not over HTTP):
//!
//! ```text
//!  GET    /api/pier/cluster               this node's view: id, name, leader, term, members
//!  POST   /api/pier/cluster/join          {"node": "host:port"}: reset this node and join
//!  DELETE /api/pier/cluster/nodes/{node}  remove a member
//! ```

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use pier_cluster::NodeReport;
use serde_json::{json, Value};

use crate::auth::AuthUser;
use crate::cluster::local_report;
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_str};
use crate::AppState;
use crate::RABBITMQ_COMPAT_VERSION;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/pier/cluster", get(status))
        .route("/pier/cluster/join", post(join))
        .route("/pier/cluster/nodes/{node}", delete(forget))
}

fn listeners_json(name: &str, listeners: &[(String, String)]) -> Vec<Value> {
    listeners
        .iter()
        .map(|(protocol, addr)| {
            let (ip, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), ""));
            json!({"node": name, "protocol": protocol, "ip_address": ip,
                   "port": port.parse::<u16>().unwrap_or(0)})
        })
        .collect()
}

/// GET /api/pier/cluster: RabbitMQ's `cluster_status` sections, as JSON (a single node
/// answers for itself, as RabbitMQ does).
pub async fn status(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    user.require_monitor()?;
    let Some(c) = st.cluster() else {
        let r = local_report(&st);
        return Ok(json::ok(json!({
            "node": st.node,
            "cluster_name": st.cluster_name(),
            "cluster_id": null,
            "clustered": false,
            "leader": null,
            "disk_nodes": [st.node],
            "running_nodes": [st.node],
            "versions": {st.node.clone(): {"pier_version": r.version, "rabbitmq_version": RABBITMQ_COMPAT_VERSION}},
            "alarms": alarms(&[(st.node.clone(), Some(r.clone()))]),
            "partitions": {},
            "listeners": listeners_json(&st.node, &r.listeners),
            "members": [],
        })));
    };
    let s = c.status().await;
    let running: Vec<&str> = s
        .members
        .iter()
        .filter(|m| m.running)
        .map(|m| m.name.as_str())
        .collect();
    let mut versions = serde_json::Map::new();
    let mut listeners = Vec::new();
    for m in &s.members {
        if let Some(r) = &m.report {
            versions.insert(
                m.name.clone(),
                json!({"pier_version": r.version, "rabbitmq_version": RABBITMQ_COMPAT_VERSION}),
            );
            listeners.extend(listeners_json(&m.name, &r.listeners));
        }
    }
    let reports: Vec<(String, Option<NodeReport>)> = s
        .members
        .iter()
        .map(|m| (m.name.clone(), m.report.clone()))
        .collect();
    let partitions = if s.partitions.is_empty() {
        json!({})
    } else {
        json!({ s.node.clone(): s.partitions })
    };
    Ok(json::ok(json!({
        "node": s.node,
        "cluster_name": st.cluster_name(),
        "cluster_id": s.cluster_id,
        "clustered": true,
        "leader": s.leader,
        "term": s.term,
        "raft_state": s.state,
        "last_log_index": s.last_log_index,
        "last_applied": s.last_applied,
        "snapshot_index": s.snapshot,
        "purged_index": s.purged,
        "disk_nodes": s.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        "running_nodes": running,
        "versions": versions,
        "alarms": alarms(&reports),
        "partitions": partitions,
        "listeners": listeners,
        "members": s.members.iter().map(|m| json!({
            "name": m.name,
            "address": m.addr,
            "voter": m.voter,
            "running": m.running,
            "raft_state": m.report.as_ref().map(|r| r.raft_state.clone()),
            "last_applied": m.report.as_ref().and_then(|r| r.raft_last_applied),
        })).collect::<Vec<_>>(),
    })))
}

/// RabbitMQ's alarm list: `[{"node": …, "resource": "memory"|"disk"}]`.
fn alarms(reports: &[(String, Option<NodeReport>)]) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, r) in reports {
        let Some(r) = r else { continue };
        if r.mem_alarm {
            out.push(json!({"node": name, "resource": "memory"}));
        }
        if r.disk_free_alarm {
            out.push(json!({"node": name, "resource": "disk"}));
        }
    }
    out
}

fn not_clustered() -> ApiError {
    ApiError::bad_request(
        "this node runs alone: start it with --node-name and --cluster-port (see \
         docs/clustering.md) to cluster it",
    )
}

/// POST /api/pier/cluster/join `{"node": "host:port"}` (administrator).
pub async fn join(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    let Some(target) = get_str(&b, "node") else {
        return Err(ApiError::bad_request("[{key_missing,node}]"));
    };
    let c = st.cluster().ok_or_else(not_clustered)?;
    let id = c
        .join(target)
        .await
        .map_err(|e| ApiError::from(pier_cluster::MetadataError::Cluster(e)))?;
    Ok(json::ok(json!({"cluster_id": id})))
}

/// DELETE /api/pier/cluster/nodes/{node} (administrator).
pub async fn forget(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(node): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let c = st.cluster().ok_or_else(not_clustered)?;
    if node == st.node {
        return Err(ApiError::bad_request(
            "a node cannot forget itself: run forget_cluster_node on another member",
        ));
    }
    c.forget(&node)
        .await
        .map_err(|e| ApiError::from(pier_cluster::MetadataError::Cluster(e)))?;
    Ok(json::no_content())
}
