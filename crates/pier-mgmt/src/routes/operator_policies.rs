//! Operator policies: `/api/operator-policies[/{vhost}[/{name}]]`. Pier has none: reads
//! answer empty lists (404 for one), writes are refused with 400 and a reason.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};

use crate::auth::{view_vhost, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json;
use crate::routes::parameters::require_policymaker;
use crate::routes::Q;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/operator-policies", get(operator_policies))
        .route("/operator-policies/{vhost}", get(vhost_operator_policies))
        .route(
            "/operator-policies/{vhost}/{name}",
            get(operator_policy)
                .put(put_operator_policy)
                .delete(delete_operator_policy),
        )
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
