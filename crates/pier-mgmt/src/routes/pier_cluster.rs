//! Pier's own cluster endpoints, which `pier ctl cluster_status`, `join_cluster` and
//! `forget_cluster_node` call (RabbitMQ does these with rabbitmqctl, not over HTTP):
//!
//! ```text
//!  GET    /api/pier/cluster               this node's view: id, name, leader, term, members
//!  POST   /api/pier/cluster/join          {"node": "host:port"}: reset this node and join
//!  DELETE /api/pier/cluster/nodes/{node}  remove a member
//! ```

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use pier_cluster::NodeReport;

use crate::auth::AuthUser;
use crate::cluster::local_report;
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_str};
use crate::views::health::Alarm;
use crate::views::node::{ClusterMember, ClusterRaft, ClusterStatus, Joined, Versions};
use crate::views::overview::Listener;
use crate::AppState;
use crate::RABBITMQ_COMPAT_VERSION;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/pier/cluster", get(status))
        .route("/pier/cluster/join", post(join))
        .route("/pier/cluster/nodes/{node}", delete(forget))
}

fn listeners(name: &str, listeners: &[(String, String)]) -> Vec<Listener> {
    listeners
        .iter()
        .map(|(protocol, addr)| {
            let (ip, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), ""));
            Listener {
                node: name.to_owned(),
                protocol: protocol.clone(),
                ip_address: ip.to_owned(),
                port: port.parse::<u16>().unwrap_or(0),
            }
        })
        .collect()
}

fn versions(r: &NodeReport) -> Versions {
    Versions {
        pier_version: r.version.clone(),
        rabbitmq_version: RABBITMQ_COMPAT_VERSION,
    }
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
        return Ok(json::ok(&ClusterStatus {
            node: st.node.clone(),
            cluster_name: st.cluster_name(),
            cluster_id: None,
            clustered: false,
            leader: None,
            raft: None,
            disk_nodes: vec![st.node.clone()],
            running_nodes: vec![st.node.clone()],
            versions: BTreeMap::from([(st.node.clone(), versions(&r))]),
            alarms: alarms(&[(st.node.clone(), Some(r.clone()))]),
            partitions: BTreeMap::new(),
            listeners: listeners(&st.node, &r.listeners),
            members: Vec::new(),
        }));
    };
    let s = c.status().await;
    let mut all_versions = BTreeMap::new();
    let mut all_listeners = Vec::new();
    for m in &s.members {
        if let Some(r) = &m.report {
            all_versions.insert(m.name.clone(), versions(r));
            all_listeners.extend(listeners(&m.name, &r.listeners));
        }
    }
    let reports: Vec<(String, Option<NodeReport>)> = s
        .members
        .iter()
        .map(|m| (m.name.clone(), m.report.clone()))
        .collect();
    let mut partitions = BTreeMap::new();
    if !s.partitions.is_empty() {
        partitions.insert(s.node.clone(), s.partitions.clone());
    }
    Ok(json::ok(&ClusterStatus {
        node: s.node.clone(),
        cluster_name: st.cluster_name(),
        cluster_id: s.cluster_id.clone(),
        clustered: true,
        leader: s.leader.clone(),
        raft: Some(ClusterRaft {
            term: s.term,
            raft_state: s.state.clone(),
            last_log_index: s.last_log_index,
            last_applied: s.last_applied,
            snapshot_index: s.snapshot,
            purged_index: s.purged,
        }),
        disk_nodes: s.members.iter().map(|m| m.name.clone()).collect(),
        running_nodes: s
            .members
            .iter()
            .filter(|m| m.running)
            .map(|m| m.name.clone())
            .collect(),
        versions: all_versions,
        alarms: alarms(&reports),
        partitions,
        listeners: all_listeners,
        members: s
            .members
            .iter()
            .map(|m| ClusterMember {
                name: m.name.clone(),
                address: m.addr.clone(),
                voter: m.voter,
                running: m.running,
                raft_state: m.report.as_ref().map(|r| r.raft_state.clone()),
                last_applied: m.report.as_ref().and_then(|r| r.raft_last_applied),
            })
            .collect(),
    }))
}

/// RabbitMQ's alarm list: `[{"node": …, "resource": "memory"|"disk"}]`.
fn alarms(reports: &[(String, Option<NodeReport>)]) -> Vec<Alarm> {
    let mut out = Vec::new();
    for (name, r) in reports {
        let Some(r) = r else { continue };
        if r.mem_alarm {
            out.push(Alarm {
                node: name.clone(),
                resource: "memory",
            });
        }
        if r.disk_free_alarm {
            out.push(Alarm {
                node: name.clone(),
                resource: "disk",
            });
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
    Ok(json::ok(&Joined { cluster_id: id }))
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
