//! Limits: `/api/vhost-limits[/{vhost}[/{name}]]` (max-connections, max-queues) and
//! `/api/user-limits[/{user}[/{name}]]` (not supported by Pier: empty, writes refused).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Extension, Router};
use pier_broker::VhostLimits;
use pier_cluster::metadata::MetadataCommand;
use serde_json::Value;

use crate::auth::{view_vhost, visible_vhosts, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object};
use crate::routes::Q;
use crate::views::parameter::{VhostLimits as VhostLimitsView, VhostLimitsValue};
use crate::views::{self, EmptyList};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/vhost-limits", get(vhost_limits))
        .route("/vhost-limits/{vhost}", get(one_vhost_limits))
        .route(
            "/vhost-limits/{vhost}/{name}",
            put(put_vhost_limit).delete(delete_vhost_limit),
        )
        .route("/user-limits", get(user_limits))
        .route("/user-limits/{user}", get(one_user_limits))
        .route(
            "/user-limits/{user}/{name}",
            put(put_user_limit).delete(delete_user_limit),
        )
}

pub(crate) const MAX_CONNECTIONS: &str = "max-connections";

pub(crate) const MAX_QUEUES: &str = "max-queues";

/// The limits set on a vhost; `None` when it has none.
pub(crate) fn limits_value(l: VhostLimits) -> Option<VhostLimitsValue> {
    (l.max_connections.is_some() || l.max_queues.is_some()).then_some(VhostLimitsValue {
        max_connections: l.max_connections,
        max_queues: l.max_queues,
    })
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
    let items = vhosts.iter().filter_map(|vh| {
        limits_value(vh.limits()).map(|value| VhostLimitsView {
            vhost: vh.name().to_owned(),
            value,
        })
    });
    json::list(views::values(items), &q)
}

pub async fn one_vhost_limits(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    let items: Vec<VhostLimitsView> = limits_value(vh.limits())
        .map(|value| VhostLimitsView { vhost, value })
        .into_iter()
        .collect();
    Ok(json::ok(&items))
}

pub(crate) fn vhost_for_limits(
    st: &AppState,
    vhost: &str,
) -> ApiResult<std::sync::Arc<pier_broker::VHost>> {
    st.broker
        .vhost(vhost)
        .ok_or_else(|| ApiError::not_found_reason("vhost_not_found"))
}

pub(crate) fn unrecognised_limit(name: &str, value: &Value) -> ApiError {
    ApiError::bad_request(format!(
        "Validation failed\n\nUnrecognised terms [{{<<\"{name}\">>,{value}}}] in limits\n"
    ))
}

/// A limit's value: a negative number means no limit, as in RabbitMQ.
pub(crate) fn parse_limit(name: &str, value: &Value) -> ApiResult<Option<u64>> {
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

pub(crate) async fn set_limits(st: &AppState, vhost: String, limits: VhostLimits) -> ApiResult<()> {
    st.execute(MetadataCommand::SetVhostLimits {
        vhost,
        max_connections: limits.max_connections,
        max_queues: limits.max_queues,
    })
    .await?;
    Ok(())
}

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
    Ok(json::ok(&EmptyList::default()))
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
