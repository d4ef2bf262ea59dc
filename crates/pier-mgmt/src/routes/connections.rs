//! Connections: `/api/connections[/{name}]` (AMQP 0-9-1, MQTT, STOMP and stream-protocol
//! connections in one list; show, close), `/api/vhosts/{vhost}/connections`,
//! `/api/connections/username/{user}`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_server::registry::ConnectionMeta;
use pier_server::registry::MANAGEMENT_CLOSE_REASON;
use pier_server::ConnectionInfo;

use crate::auth::{view_vhost, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, table_to_json};
use crate::routes::stream as streams;
use crate::routes::Q;
use crate::stats;
use crate::views::connection::{Connection, ConnectionBase, TlsDetails};
use crate::views::{self, Rate};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/connections", get(connections))
        .route(
            "/connections/{name}",
            get(connection).delete(close_connection),
        )
        .route(
            "/connections/username/{user}",
            get(user_connections).delete(close_user_connections),
        )
        .route("/vhosts/{vhost}/connections", get(vhost_connections))
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

fn visible(user: &AuthUser, c: &ConnectionInfo) -> bool {
    user.sees_all_connections() || c.meta.user == user.name
}

pub(crate) fn sorted_connections(st: &AppState, user: &AuthUser) -> Vec<ConnectionInfo> {
    let mut v: Vec<ConnectionInfo> = st
        .registry
        .connections()
        .into_iter()
        .filter(|c| visible(user, c))
        .collect();
    v.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    v
}

/// A connection's traffic counters.
pub(crate) struct Traffic {
    pub recv_oct: u64,
    pub recv_cnt: u64,
    pub send_oct: u64,
    pub send_cnt: u64,
    pub send_pend: u64,
}

/// The fields every protocol's connection shows, from its registry entry, its traffic and
/// its sampled rates (bytes received, bytes sent).
pub(crate) fn connection_base(
    st: &AppState,
    m: &ConnectionMeta,
    state: &str,
    channels: usize,
    channel_max: u16,
    traffic: Traffic,
    rates: &[f64],
) -> ConnectionBase {
    let rate = |i: usize| Rate::new(rates.get(i).copied().unwrap_or(0.0));
    ConnectionBase {
        name: m.name.clone(),
        node: st.node.clone(),
        state: state.to_owned(),
        protocol: m.protocol.to_string(),
        user: m.user.clone(),
        user_who_performed_action: m.user.clone(),
        vhost: m.vhost.clone(),
        host: m.local.ip().to_string(),
        port: m.local.port(),
        peer_host: m.peer.ip().to_string(),
        peer_port: m.peer.port(),
        ssl: m.tls.is_some(),
        auth_mechanism: m.auth_mechanism.clone(),
        channels,
        channel_max,
        frame_max: m.frame_max,
        timeout: m.heartbeat,
        connected_at: m.connected_at_ms,
        client_properties: table_to_json(&m.client_properties),
        user_provided_name: m
            .client_properties
            .get("connection_name")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        recv_oct: traffic.recv_oct,
        recv_cnt: traffic.recv_cnt,
        send_oct: traffic.send_oct,
        send_cnt: traffic.send_cnt,
        send_pend: traffic.send_pend,
        recv_oct_details: rate(0),
        send_oct_details: rate(1),
    }
}

/// RabbitMQ's TLS fields of a connection: the protocol version and the cipher suite over
/// TLS, null without (and null for what Pier does not record: key exchange, hash, the peer's
/// certificate).
pub(crate) fn tls_details(m: &ConnectionMeta) -> TlsDetails {
    TlsDetails {
        ssl_protocol: m.tls.as_ref().map(|t| t.protocol.clone()),
        ssl_cipher: m.tls.as_ref().map(|t| t.cipher.clone()),
        ..TlsDetails::default()
    }
}

/// An AMQP 0-9-1, MQTT or STOMP connection (its TLS fields only over TLS: RabbitMQ's plain
/// connections show them null, Pier's leave them out, as before TLS was reported).
fn connection_view(st: &AppState, c: &ConnectionInfo) -> Connection {
    let rates = st.sampler.rates(
        &stats::connection_key(&c.meta.name),
        &stats::connection_counters(c),
    );
    let traffic = Traffic {
        recv_oct: c.recv_oct,
        recv_cnt: c.recv_cnt,
        send_oct: c.send_oct,
        send_cnt: c.send_cnt,
        send_pend: c.send_pending_bytes,
    };
    Connection {
        base: connection_base(
            st,
            &c.meta,
            c.state.as_str(),
            c.channels.len(),
            c.meta.channel_max,
            traffic,
            &rates,
        ),
        kind: Some("network"),
        tls: c.meta.tls.is_some().then(|| tls_details(&c.meta)),
        stream: None,
    }
}

/// AMQP connections (and stream-protocol ones, protocol `stream`) as one list sorted by name.
fn all_connections(st: &AppState, user: &AuthUser, vhost: Option<&str>) -> Vec<Connection> {
    let mut items: Vec<Connection> = sorted_connections(st, user)
        .iter()
        .filter(|c| vhost.is_none_or(|v| c.meta.vhost == v))
        .map(|c| connection_view(st, c))
        .collect();
    items.extend(
        streams::stream_connections(st, user, vhost)
            .iter()
            .map(|c| streams::connection_view(st, c)),
    );
    items.sort_by(|a, b| a.base.name.cmp(&b.base.name));
    items
}

/// This node's items of a management listing that `user` may see (of `vhost` when given):
/// what `/api/connections` and the stream plugin's lists show, and what other nodes of a
/// cluster ask this one for (`pier_cluster::Reporter::list`).
pub(crate) fn local_listing(
    st: &AppState,
    what: &str,
    user: &AuthUser,
    vhost: Option<&str>,
) -> Vec<serde_json::Value> {
    match what {
        "connections" => views::values(all_connections(st, user, vhost)),
        "channels" => views::values(crate::routes::channels::all_channels(st, user, vhost)),
        "stream/connections" => views::values(
            streams::stream_connections(st, user, vhost)
                .iter()
                .map(|c| streams::connection_view(st, c)),
        ),
        "stream/publishers" => views::values(streams::publishers_of(
            st,
            &streams::stream_connections(st, user, vhost),
        )),
        "stream/consumers" => views::values(streams::consumers_of(
            st,
            &streams::stream_connections(st, user, vhost),
        )),
        _ => Vec::new(),
    }
}

/// The string at JSON `pointer` (`/name`, `/connection_details/name`) of a listed item.
pub(crate) fn str_at<'a>(item: &'a serde_json::Value, pointer: &str) -> Option<&'a str> {
    item.pointer(pointer).and_then(serde_json::Value::as_str)
}

/// A listing of every node of the cluster (as RabbitMQ's management shows connections of
/// all nodes): this node's items, then the other running members' (each asked at most 3 s;
/// one that does not answer is left out); connections sorted by name.
pub(crate) async fn cluster_listing(
    st: &AppState,
    what: &str,
    user: &AuthUser,
    vhost: Option<&str>,
) -> Vec<serde_json::Value> {
    let mut items = local_listing(st, what, user, vhost);
    if let Some(c) = st.cluster() {
        items.extend(c.list_elsewhere(what, &user.name, &user.tags, vhost).await);
        if what.ends_with("connections") || what == "channels" {
            items.sort_by_key(|v| str_at(v, "/name").unwrap_or_default().to_owned());
        }
    }
    items
}

/// A connection of another node of the cluster, by name (as `what` lists it), with that
/// node's name.
pub(crate) async fn remote_connection(
    st: &AppState,
    what: &str,
    user: &AuthUser,
    vhost: Option<&str>,
    name: &str,
) -> Option<serde_json::Value> {
    let c = st.cluster()?;
    c.list_elsewhere(what, &user.name, &user.tags, vhost)
        .await
        .into_iter()
        .find(|v| str_at(v, "/name") == Some(name))
}

/// The items of listing `what` (channels, a stream connection's publishers or consumers)
/// of connection `name` on another node of the cluster; `None` when no other node has a
/// connection of that name (as `conn_what` lists them).
pub(crate) async fn remote_connection_items(
    st: &AppState,
    user: &AuthUser,
    vhost: Option<&str>,
    conn_what: &str,
    what: &str,
    name: &str,
) -> Option<Vec<serde_json::Value>> {
    remote_connection(st, conn_what, user, vhost, name).await?;
    Some(
        cluster_listing(st, what, user, vhost)
            .await
            .into_iter()
            .filter(|v| str_at(v, "/connection_details/name") == Some(name))
            .collect(),
    )
}

/// Closes `found` (a connection of another node, as listed) for `user`, with the same rule
/// as a local one.
pub(crate) async fn close_remote(
    st: &AppState,
    user: &AuthUser,
    found: &serde_json::Value,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let field = |k: &str| str_at(found, k).unwrap_or_default().to_owned();
    let (owner, node, name) = (field("/user"), field("/node"), field("/name"));
    if !user.is_admin() && owner != user.name {
        return Err(ApiError::not_authorised("Not administrator user"));
    }
    let closed = match st.cluster() {
        Some(c) => c.close_connection_on(&node, &name, reason(headers)).await,
        None => false,
    };
    if !closed {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}

fn reason(headers: &HeaderMap) -> &str {
    headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or(MANAGEMENT_CLOSE_REASON)
}

pub async fn connections(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    json::list(cluster_listing(&st, "connections", &user, None).await, &q)
}

pub async fn vhost_connections(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    view_vhost(&st.broker, &user, &vhost)?;
    json::list(
        cluster_listing(&st, "connections", &user, Some(&vhost)).await,
        &q,
    )
}

pub(crate) fn find_connection(
    st: &AppState,
    user: &AuthUser,
    name: &str,
) -> ApiResult<ConnectionInfo> {
    st.registry
        .connection(name)
        .filter(|c| visible(user, c))
        .ok_or_else(ApiError::not_found)
}

/// A stream-protocol connection by name (those the user may see).
pub(crate) fn find_stream_connection(
    st: &AppState,
    user: &AuthUser,
    name: &str,
) -> Option<pier_server::stream::stats::StreamConnectionInfo> {
    st.registry
        .stream_connection(name)
        .filter(|c| user.sees_all_connections() || c.meta.user == user.name)
}

pub async fn connection(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    if let Some(c) = find_stream_connection(&st, &user, &name) {
        return Ok(json::ok(&streams::connection_view(&st, &c)));
    }
    match find_connection(&st, &user, &name) {
        Ok(c) => Ok(json::ok(&connection_view(&st, &c))),
        Err(e) => match remote_connection(&st, "connections", &user, None, &name).await {
            Some(v) => Ok(json::ok(&v)),
            None => Err(e),
        },
    }
}

/// DELETE /api/connections/name: closes it with 320 CONNECTION_FORCED; the reason is the
/// `X-Reason` header or RabbitMQ's "Closed via management plugin".
pub async fn close_connection(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let owner = match find_stream_connection(&st, &user, &name) {
        Some(c) => c.meta.user.clone(),
        None => match find_connection(&st, &user, &name) {
            Ok(c) => c.meta.user.clone(),
            Err(e) => {
                return match remote_connection(&st, "connections", &user, None, &name).await {
                    Some(found) => close_remote(&st, &user, &found, &headers).await,
                    None => Err(e),
                }
            }
        },
    };
    close_owned_by(&st, &user, &owner, &name, &headers)
}

/// Closes connection `name` (of user `owner`) for `user`: only an administrator closes other
/// users' connections; the reason is the `X-Reason` header or RabbitMQ's text. Shared with
/// the stream plugin's endpoint.
pub(crate) fn close_owned_by(
    st: &AppState,
    user: &AuthUser,
    owner: &str,
    name: &str,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    if !user.is_admin() && owner != user.name {
        return Err(ApiError::not_authorised("Not administrator user"));
    }
    if !st.registry.close(name, reason(headers)) {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}

/// GET /api/connections/username/{user}: the user's connections (those the caller may see).
pub async fn user_connections(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let found: Vec<serde_json::Value> = cluster_listing(&st, "connections", &user, None)
        .await
        .into_iter()
        .filter(|c| str_at(c, "/user") == Some(name.as_str()))
        .collect();
    Ok(json::ok(&found))
}

/// DELETE /api/connections/username/{user}: closes all of the user's connections (204 even
/// when there are none, as RabbitMQ). Others' connections need the administrator tag.
pub async fn close_user_connections(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !user.is_admin() && name != user.name {
        return Err(ApiError::not_authorised("Not administrator user"));
    }
    let reason = reason(&headers);
    st.registry.close_where(|c| c.user == name, reason);
    if let Some(c) = st.cluster() {
        for found in c
            .list_elsewhere("connections", &user.name, &user.tags, None)
            .await
        {
            let field = |k: &str| str_at(&found, k);
            if let (Some(node), Some(conn), Some(owner)) =
                (field("/node"), field("/name"), field("/user"))
            {
                if owner == name {
                    c.close_connection_on(node, conn, reason).await;
                }
            }
        }
    }
    Ok(json::no_content())
}
