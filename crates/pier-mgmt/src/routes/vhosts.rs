//! Virtual hosts: `/api/vhosts[/{vhost}]` (list, show, create with metadata, delete) and
//! `POST /api/vhosts/{vhost}/start/{node}`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use pier_cluster::metadata::MetadataCommand;
use serde_json::{Map, Value};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_str};
use crate::routes::Q;
use crate::views::vhost::{Vhost, VhostMetadata};
use crate::views::{self, Rate};
use crate::AppState;
use crate::{stats, VhostMeta};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/vhosts", get(vhosts))
        .route(
            "/vhosts/{vhost}",
            get(vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/vhosts/{vhost}/start/{node}", post(start_vhost))
}

fn vhost_view(st: &AppState, name: &str, vh: &pier_broker::VHost) -> Vhost {
    let meta = st.vhost_meta(name);
    let (mut ready, mut unacked) = (0u64, 0u64);
    let mut sum = crate::stats::Queueing::default();
    // Length rates (messages, ready, unacked), summed over the queues' sampled lengths.
    let mut length_rates = [0.0f64; 3];
    // Per-message waits of all the vhost's queues in one histogram: quantiles do not add up.
    let mut waits = pier_broker::WaitHistogram::default();
    for q in vh.queues() {
        let s = q.stats();
        ready += s.ready;
        unacked += s.unacked;
        let f = crate::stats::queueing(st, name, &q);
        sum.arrival_rate += f.arrival_rate;
        sum.service_rate += f.service_rate;
        sum.length += f.length;
        q.time_in_queue_into(&mut waits);
        let r = st.sampler.gauge_rates(
            &stats::queue_key(name, q.name()),
            &crate::stats::queue_counters(&q),
        );
        for (i, total) in length_rates.iter_mut().enumerate() {
            *total += r.get(4 + i).copied().unwrap_or(0.0);
        }
    }
    sum.measured = waits.summary();
    let mut cluster_state = BTreeMap::new();
    match st.cluster() {
        Some(c) => {
            for (name, running) in c.members() {
                cluster_state.insert(name, if running { "running" } else { "nodedown" });
            }
        }
        None => {
            cluster_state.insert(st.node.clone(), "running");
        }
    }
    Vhost {
        name: name.to_owned(),
        description: meta.description.clone(),
        tags: meta.tags.clone(),
        metadata: VhostMetadata {
            description: meta.description,
            tags: meta.tags,
        },
        default_queue_type: meta
            .default_queue_type
            .unwrap_or_else(|| "undefined".to_owned()),
        tracing: false,
        cluster_state,
        messages: ready + unacked,
        messages_details: Rate::new(length_rates[0]),
        messages_ready: ready,
        messages_ready_details: Rate::new(length_rates[1]),
        messages_unacknowledged: unacked,
        messages_unacknowledged_details: Rate::new(length_rates[2]),
        pier_queueing: sum.view(),
    }
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
        .map(|vh| vhost_view(&st, vh.name(), vh));
    json::list(views::values(items), &q)
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
    Ok(json::ok(&vhost_view(&st, &name, &vh)))
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
