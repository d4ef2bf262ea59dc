//! Consumers: `/api/consumers[/{vhost}]` (AMQP consumers of every queue; stream-protocol
//! subscriptions are under `/api/stream/consumers`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_broker::ConsumerInfo;
use pier_server::ConnectionInfo;

use crate::auth::{view_vhost, visible_vhosts, AuthUser};
use crate::error::ApiResult;
use crate::json::{self, table_to_json};
use crate::routes::connections::connections_by_id;
use crate::routes::Q;
use crate::views::connection::{ChannelDetails, Consumer};
use crate::views::{self, QueueRef};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/consumers", get(consumers))
        .route("/consumers/{vhost}", get(vhost_consumers))
}

/// An AMQP consumer (`conns`: the node's connections by id, for its channel's details).
pub(crate) fn consumer_view(
    state: &AppState,
    conns: &HashMap<u64, ConnectionInfo>,
    vhost: &str,
    queue: &str,
    c: &ConsumerInfo,
) -> Consumer {
    let channel_details = match (conns.get(&c.connection), c.channel) {
        (Some(conn), Some(n)) => Some(ChannelDetails {
            connection_name: conn.meta.name.clone(),
            name: format!("{} ({n})", conn.meta.name),
            node: state.node.clone(),
            number: n,
            peer_host: conn.meta.peer.ip().to_string(),
            peer_port: conn.meta.peer.port(),
            user: conn.meta.user.clone(),
        }),
        _ => None,
    };
    Consumer {
        arguments: table_to_json(&c.arguments),
        ack_required: c.ack_required,
        active: c.active,
        activity_status: if c.active { "up" } else { "waiting" },
        channel_details,
        consumer_tag: c.tag.as_str().to_owned(),
        exclusive: c.exclusive,
        prefetch_count: c.prefetch,
        priority: c.priority,
        queue: QueueRef {
            name: queue.to_owned(),
            vhost: vhost.to_owned(),
        },
    }
}

fn consumers_of(st: &AppState, user: &AuthUser, vhost: Option<&str>) -> Vec<Consumer> {
    let conns = connections_by_id(st);
    let mut out = Vec::new();
    for vh in visible_vhosts(st, user) {
        if vhost.is_some_and(|v| v != vh.name()) {
            continue;
        }
        let mut queues = vh.queues();
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        for q in queues {
            for c in q.consumers() {
                out.push(consumer_view(st, &conns, vh.name(), q.name(), &c));
            }
        }
    }
    out
}

pub async fn consumers(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    json::list(views::values(consumers_of(&st, &user, None)), &q)
}

pub async fn vhost_consumers(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    view_vhost(&st.broker, &user, &vhost)?;
    json::list(views::values(consumers_of(&st, &user, Some(&vhost))), &q)
}
