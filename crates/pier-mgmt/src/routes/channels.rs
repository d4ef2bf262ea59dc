//! Channels: `/api/channels[/{name}]`, `/api/vhosts/{vhost}/channels`,
//! `/api/connections/{name}/channels`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_server::{ChannelInfo, ConnectionInfo};
use serde_json::{json, Value};

use crate::auth::{view_vhost, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self};
use crate::routes::connections::{find_connection, find_stream_connection, sorted_connections};
use crate::routes::Q;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/channels", get(channels))
        .route("/channels/{name}", get(channel))
        .route("/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/connections/{name}/channels", get(connection_channels))
}

fn channel_json(
    st: &AppState,
    c: &ConnectionInfo,
    ch: &ChannelInfo,
    consumer_counts: &HashMap<(u64, u16), usize>,
) -> Value {
    let m = &c.meta;
    json!({
        "name": format!("{} ({})", m.name, ch.number),
        "number": ch.number,
        "node": st.node,
        "state": "running",
        "user": m.user,
        "user_who_performed_action": m.user,
        "vhost": m.vhost,
        "connection_details": {
            "name": m.name,
            "peer_host": m.peer.ip().to_string(),
            "peer_port": m.peer.port(),
        },
        "consumer_count": consumer_counts.get(&(m.id, ch.number)).copied().unwrap_or(0),
        "messages_unacknowledged": ch.unacked,
        "message_stats": {
            "deliver_get": ch.deliveries,
        },
    })
}

/// (connection id, channel) → number of consumers, over every queue.
fn consumer_counts(st: &AppState) -> HashMap<(u64, u16), usize> {
    let mut out = HashMap::new();
    for vh in st.broker.vhosts() {
        for q in vh.queues() {
            for c in q.consumers() {
                if let Some(ch) = c.channel {
                    *out.entry((c.connection, ch)).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

pub async fn connection_channels(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    if find_stream_connection(&st, &user, &name).is_some() {
        return Ok(json::ok(Value::Array(Vec::new())));
    }
    let c = find_connection(&st, &user, &name)?;
    let counts = consumer_counts(&st);
    Ok(json::ok(Value::Array(
        c.channels
            .iter()
            .map(|ch| channel_json(&st, &c, ch, &counts))
            .collect(),
    )))
}

fn all_channels(st: &AppState, user: &AuthUser, vhost: Option<&str>) -> Vec<Value> {
    let counts = consumer_counts(st);
    sorted_connections(st, user)
        .iter()
        .filter(|c| vhost.is_none_or(|v| c.meta.vhost == v))
        .flat_map(|c| {
            c.channels
                .iter()
                .map(|ch| channel_json(st, c, ch, &counts))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub async fn channels(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    json::list(all_channels(&st, &user, None), &q)
}

pub async fn vhost_channels(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    view_vhost(&st.broker, &user, &vhost)?;
    json::list(all_channels(&st, &user, Some(&vhost)), &q)
}

pub async fn channel(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    all_channels(&st, &user, None)
        .into_iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name.as_str()))
        .map(json::ok)
        .ok_or_else(ApiError::not_found)
}
