//! Streams in management, shaped as RabbitMQ's `rabbitmq_stream_management` plugin:
//! `/api/stream/connections`, `/api/stream/publishers`, `/api/stream/consumers` (and their
//! per-vhost variants), stream-protocol connections in `/api/connections` with protocol
//! `stream`, and the figures of a stream queue (`stream` in its queue object: segments,
//! size, first/last/committed offset, stored consumer offsets and publisher sequences).

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use pier_broker::Queue;
use pier_server::stream::stats::{StreamConnectionInfo, StreamConsumerInfo, StreamPublisherInfo};

use crate::auth::{view_vhost, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json;
use crate::routes::connections::{
    close_remote, cluster_listing, connection_base, remote_connection, remote_connection_items,
    str_at, tls_details, Traffic,
};
use crate::routes::Q;
use crate::stats;
use crate::views::connection::{Connection, StreamCounts};
use crate::views::queue::{StreamFigures, StreamTracking};
use crate::views::stream::{Publisher, StreamConnectionDetails, Subscription};
use crate::views::QueueRef;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/stream/connections", get(connections))
        .route("/stream/connections/{vhost}", get(vhost_connections))
        .route(
            "/stream/connections/{vhost}/{name}",
            get(connection).delete(close_connection),
        )
        .route(
            "/stream/connections/{vhost}/{name}/publishers",
            get(connection_publishers),
        )
        .route(
            "/stream/connections/{vhost}/{name}/consumers",
            get(connection_consumers),
        )
        .route("/stream/publishers", get(publishers))
        .route("/stream/publishers/{vhost}", get(vhost_publishers))
        .route(
            "/stream/publishers/{vhost}/{stream}",
            get(stream_publishers),
        )
        .route("/stream/consumers", get(consumers))
        .route("/stream/consumers/{vhost}", get(vhost_consumers))
        .route(
            "/stream/consumer-groups/{vhost}/{stream}/{reference}/activate",
            post(activate_consumer),
        )
}

/// POST /api/stream/consumer-groups/{vhost}/{stream}/{reference}/activate: forces a single
/// active consumer group on (RabbitMQ 4.2's `rabbitmq-streams activate_stream_consumer`,
/// which has no HTTP form there): a member left waiting for a former active one that never
/// answered its step-down is activated. Administrators only; 404 when this node has no such
/// group (a stream's groups live on the node hosting it).
pub async fn activate_consumer(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, stream, reference)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    if !user.is_admin() {
        return Err(ApiError::not_authorised("Not administrator user"));
    }
    view_vhost(&st.broker, &user, &vhost)?;
    if !st
        .registry
        .activate_stream_consumer(&vhost, &stream, &reference)
    {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}

fn visible(user: &AuthUser, c: &StreamConnectionInfo) -> bool {
    user.sees_all_connections() || c.meta.user == user.name
}

/// The stream connections `user` may see (of `vhost` when given), sorted by name.
pub(crate) fn stream_connections(
    st: &AppState,
    user: &AuthUser,
    vhost: Option<&str>,
) -> Vec<StreamConnectionInfo> {
    let mut v: Vec<StreamConnectionInfo> = st
        .registry
        .stream_connections()
        .into_iter()
        .filter(|c| visible(user, c))
        .filter(|c| vhost.is_none_or(|v| c.meta.vhost == v))
        .collect();
    v.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    v
}

/// Counters sampled for a stream connection's rates.
pub(crate) fn connection_counters(c: &StreamConnectionInfo) -> Vec<u64> {
    vec![c.recv_oct, c.send_oct, 0]
}

/// A stream connection as RabbitMQ shows it (`/api/stream/connections`, `/api/connections`).
pub(crate) fn connection_view(st: &AppState, c: &StreamConnectionInfo) -> Connection {
    let rates = st.sampler.rates(
        &stats::connection_key(&c.meta.name),
        &connection_counters(c),
    );
    let traffic = Traffic {
        recv_oct: c.recv_oct,
        recv_cnt: c.recv_cnt,
        send_oct: c.send_oct,
        send_cnt: c.send_cnt,
        send_pend: 0,
    };
    Connection {
        base: connection_base(st, &c.meta, "running", 0, 0, traffic, &rates),
        kind: None,
        tls: Some(tls_details(&c.meta)),
        stream: Some(StreamCounts {
            publishers: c.publishers.len(),
            subscriptions: c.consumers.len(),
        }),
    }
}

fn connection_details(st: &AppState, c: &StreamConnectionInfo) -> StreamConnectionDetails {
    StreamConnectionDetails {
        name: c.meta.name.clone(),
        node: st.node.clone(),
        peer_host: c.meta.peer.ip().to_string(),
        peer_port: c.meta.peer.port(),
        user: c.meta.user.clone(),
    }
}

fn publisher_view(st: &AppState, c: &StreamConnectionInfo, p: &StreamPublisherInfo) -> Publisher {
    Publisher {
        publisher_id: p.id,
        reference: p.reference.clone(),
        published: p.published,
        confirmed: p.confirmed,
        errored: p.errored,
        queue: QueueRef {
            name: p.stream.clone(),
            vhost: c.meta.vhost.clone(),
        },
        connection_details: connection_details(st, c),
    }
}

/// The last offset of a stream (for a consumer's lag).
fn last_offset(st: &AppState, vhost: &str, stream: &str) -> Option<u64> {
    let q = st.broker.vhost(vhost)?.find_queue(stream)?;
    // On a cluster, this node's copy (a replica) when another node leads the stream.
    let s = q
        .stream()
        .cloned()
        .or_else(|| st.cluster()?.stream_replica(vhost, stream))?;
    let view = s.shared().view();
    view.committed_next.checked_sub(1)
}

fn subscription_view(
    st: &AppState,
    c: &StreamConnectionInfo,
    s: &StreamConsumerInfo,
) -> Subscription {
    let lag =
        last_offset(st, &c.meta.vhost, &s.stream).map_or(0, |last| last.saturating_sub(s.offset));
    Subscription {
        subscription_id: s.id,
        consumed: s.consumed,
        offset: s.offset,
        offset_lag: lag,
        credits: s.credit,
        active: s.active,
        activity_status: activity_status(s),
        properties: s.properties.iter().cloned().collect(),
        queue: QueueRef {
            name: s.stream.clone(),
            vhost: c.meta.vhost.clone(),
        },
        connection_details: connection_details(st, c),
    }
}

fn activity_status(s: &StreamConsumerInfo) -> &'static str {
    let sac = s
        .properties
        .iter()
        .any(|(k, v)| k == "single-active-consumer" && v == "true");
    match (sac, s.active) {
        (false, _) => "up",
        (true, true) => "single_active",
        (true, false) => "waiting",
    }
}

pub(crate) fn publishers_of(st: &AppState, conns: &[StreamConnectionInfo]) -> Vec<Publisher> {
    conns
        .iter()
        .flat_map(|c| c.publishers.iter().map(move |p| publisher_view(st, c, p)))
        .collect()
}

pub(crate) fn consumers_of(st: &AppState, conns: &[StreamConnectionInfo]) -> Vec<Subscription> {
    conns
        .iter()
        .flat_map(|c| c.consumers.iter().map(move |s| subscription_view(st, c, s)))
        .collect()
}

/// Stream-protocol subscriptions on one stream (its `consumers` count).
pub(crate) fn subscriptions_on(st: &AppState, vhost: &str, stream: &str) -> usize {
    st.registry
        .stream_connections()
        .iter()
        .filter(|c| c.meta.vhost == vhost)
        .map(|c| c.consumers.iter().filter(|s| s.stream == stream).count())
        .sum()
}

/// The figures of a stream queue, `None` for other queues.
pub(crate) fn stream_figures(q: &Queue) -> Option<StreamFigures> {
    let stream = q.stream()?;
    let view = stream.shared().view();
    let tracking = stream.shared().tracking();
    let sorted = |m: &HashMap<String, u64>| -> BTreeMap<String, u64> {
        m.iter().map(|(k, n)| (k.clone(), *n)).collect()
    };
    let first = view.segments.first();
    let last = view.segments.last();
    let has_messages = view.committed_next > view.first_offset();
    Some(StreamFigures {
        segments: view.segments.len(),
        size_bytes: view.total_size(),
        chunks: view.segments.iter().map(|s| s.chunks).sum::<u64>(),
        first_offset: view.first_offset(),
        last_offset: has_messages.then(|| view.committed_next - 1),
        committed_offset: stream.shared().committed_chunk_id(),
        next_offset: view.committed_next,
        first_timestamp: first.map(|s| s.first_timestamp),
        last_timestamp: last.map(|s| s.last_timestamp),
        tracking: StreamTracking {
            offsets: sorted(&tracking.offsets),
            sequences: sorted(&tracking.writers),
        },
        written_offset: view.written_next,
        replicas: stream.shared().replica_offsets().into_iter().collect(),
    })
}

pub async fn connections(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    json::list(
        cluster_listing(&st, "stream/connections", &user, None).await,
        &q,
    )
}

pub async fn vhost_connections(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    view_vhost(&st.broker, &user, &vhost)?;
    json::list(
        cluster_listing(&st, "stream/connections", &user, Some(&vhost)).await,
        &q,
    )
}

fn find(
    st: &AppState,
    user: &AuthUser,
    vhost: &str,
    name: &str,
) -> ApiResult<StreamConnectionInfo> {
    view_vhost(&st.broker, user, vhost)?;
    st.registry
        .stream_connection(name)
        .filter(|c| c.meta.vhost == vhost && visible(user, c))
        .ok_or_else(ApiError::not_found)
}

pub async fn connection(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    match find(&st, &user, &vhost, &name) {
        Ok(c) => Ok(json::ok(&connection_view(&st, &c))),
        Err(e) => remote_connection(&st, "stream/connections", &user, Some(&vhost), &name)
            .await
            .map(|v| json::ok(&v))
            .ok_or(e),
    }
}

pub async fn close_connection(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    match find(&st, &user, &vhost, &name) {
        Ok(c) => {
            crate::routes::connections::close_owned_by(&st, &user, &c.meta.user, &name, &headers)
        }
        Err(e) => {
            match remote_connection(&st, "stream/connections", &user, Some(&vhost), &name).await {
                Some(found) => close_remote(&st, &user, &found, &headers).await,
                None => Err(e),
            }
        }
    }
}

pub async fn connection_publishers(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    of_connection(&st, &user, &vhost, &name, "stream/publishers").await
}

pub async fn connection_consumers(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    of_connection(&st, &user, &vhost, &name, "stream/consumers").await
}

/// The publishers or consumers (`what`) of one stream connection, on this node or another.
async fn of_connection(
    st: &AppState,
    user: &AuthUser,
    vhost: &str,
    name: &str,
    what: &str,
) -> ApiResult<Response> {
    if let Ok(c) = find(st, user, vhost, name) {
        return Ok(match what {
            "stream/publishers" => json::ok(&publishers_of(st, &[c])),
            _ => json::ok(&consumers_of(st, &[c])),
        });
    }
    remote_connection_items(st, user, Some(vhost), "stream/connections", what, name)
        .await
        .map(|items| json::ok(&items))
        .ok_or_else(ApiError::not_found)
}

pub async fn publishers(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    json::list(
        cluster_listing(&st, "stream/publishers", &user, None).await,
        &q,
    )
}

pub async fn vhost_publishers(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    view_vhost(&st.broker, &user, &vhost)?;
    json::list(
        cluster_listing(&st, "stream/publishers", &user, Some(&vhost)).await,
        &q,
    )
}

/// GET /api/stream/publishers/{vhost}/{stream}: the publishers of one stream.
pub async fn stream_publishers(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, stream)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    // A stream (led here or by another node of the cluster).
    if vh
        .find_queue(&stream)
        .is_none_or(|q| q.kind() != pier_broker::queue::QueueType::Stream)
    {
        return Err(ApiError::not_found());
    }
    let items = cluster_listing(&st, "stream/publishers", &user, Some(&vhost))
        .await
        .into_iter()
        .filter(|p| str_at(p, "/queue/name") == Some(stream.as_str()))
        .collect();
    json::list(items, &q)
}

pub async fn consumers(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    json::list(
        cluster_listing(&st, "stream/consumers", &user, None).await,
        &q,
    )
}

pub async fn vhost_consumers(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    view_vhost(&st.broker, &user, &vhost)?;
    json::list(
        cluster_listing(&st, "stream/consumers", &user, Some(&vhost)).await,
        &q,
    )
}
