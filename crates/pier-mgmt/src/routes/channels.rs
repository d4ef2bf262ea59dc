//! Channels: `/api/channels[/{name}]`, `/api/vhosts/{vhost}/channels`,
//! `/api/connections/{name}/channels`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_server::{ChannelInfo, ConnectionInfo};

use crate::auth::{view_vhost, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json;
use crate::routes::connections::{
    cluster_listing, find_connection, find_stream_connection, remote_connection_items,
    sorted_connections, str_at,
};
use crate::routes::Q;
use crate::views::connection::{Channel, ChannelMessageStats, ConnectionDetails};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/channels", get(channels))
        .route("/channels/{name}", get(channel))
        .route("/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/connections/{name}/channels", get(connection_channels))
}

fn channel_view(
    st: &AppState,
    c: &ConnectionInfo,
    ch: &ChannelInfo,
    consumer_counts: &HashMap<(u64, u16), usize>,
) -> Channel {
    let m = &c.meta;
    Channel {
        name: format!("{} ({})", m.name, ch.number),
        number: ch.number,
        node: st.node.clone(),
        state: "running",
        user: m.user.clone(),
        user_who_performed_action: m.user.clone(),
        vhost: m.vhost.clone(),
        connection_details: ConnectionDetails {
            name: m.name.clone(),
            peer_host: m.peer.ip().to_string(),
            peer_port: m.peer.port(),
        },
        consumer_count: consumer_counts
            .get(&(m.id, ch.number))
            .copied()
            .unwrap_or(0),
        messages_unacknowledged: ch.unacked,
        message_stats: ChannelMessageStats {
            deliver_get: ch.deliveries,
        },
    }
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
        return Ok(json::ok(&Vec::<Channel>::new()));
    }
    let c = match find_connection(&st, &user, &name) {
        Ok(c) => c,
        Err(e) => {
            // A connection of another node of the cluster: its channels, as that node lists them.
            return remote_connection_items(&st, &user, None, "connections", "channels", &name)
                .await
                .map(|items| json::ok(&items))
                .ok_or(e);
        }
    };
    let counts = consumer_counts(&st);
    let channels: Vec<Channel> = c
        .channels
        .iter()
        .map(|ch| channel_view(&st, &c, ch, &counts))
        .collect();
    Ok(json::ok(&channels))
}

pub(crate) fn all_channels(st: &AppState, user: &AuthUser, vhost: Option<&str>) -> Vec<Channel> {
    let counts = consumer_counts(st);
    sorted_connections(st, user)
        .iter()
        .filter(|c| vhost.is_none_or(|v| c.meta.vhost == v))
        .flat_map(|c| {
            c.channels
                .iter()
                .map(|ch| channel_view(st, c, ch, &counts))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub async fn channels(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    json::list(cluster_listing(&st, "channels", &user, None).await, &q)
}

pub async fn vhost_channels(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    view_vhost(&st.broker, &user, &vhost)?;
    json::list(
        cluster_listing(&st, "channels", &user, Some(&vhost)).await,
        &q,
    )
}

pub async fn channel(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    cluster_listing(&st, "channels", &user, None)
        .await
        .into_iter()
        .find(|c| str_at(c, "/name") == Some(name.as_str()))
        .map(|v| json::ok(&v))
        .ok_or_else(ApiError::not_found)
}
