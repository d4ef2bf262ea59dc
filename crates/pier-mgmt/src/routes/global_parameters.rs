//! Global parameters: `/api/global-parameters[/{name}]`; the one Pier has is `cluster_name`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_cluster::metadata::MetadataCommand;
use serde_json::Value;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object};
use crate::routes::Q;
use crate::views;
use crate::views::parameter::GlobalParameter;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/global-parameters", get(global_parameters))
        .route(
            "/global-parameters/{name}",
            get(global_parameter)
                .put(put_global_parameter)
                .delete(delete_global_parameter),
        )
}

const CLUSTER_NAME: &str = "cluster_name";

fn cluster_name(st: &AppState) -> GlobalParameter {
    GlobalParameter {
        name: CLUSTER_NAME,
        value: st.cluster_name(),
    }
}

/// GET /api/global-parameters: the one Pier has is `cluster_name` (as RabbitMQ lists it).
pub async fn global_parameters(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    json::list(views::values([cluster_name(&st)]), &q)
}

pub async fn global_parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if name != CLUSTER_NAME {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(&cluster_name(&st)))
}

/// PUT /api/global-parameters/cluster_name `{"value": …}` renames the cluster; other global
/// parameters have no meaning in Pier and are refused.
pub async fn put_global_parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    if name != CLUSTER_NAME {
        return Err(ApiError::bad_request(format!(
            "global parameter '{name}' is not supported by Pier (only {CLUSTER_NAME})"
        )));
    }
    match b.get("value") {
        Some(Value::String(s)) if !s.is_empty() => {
            st.execute(MetadataCommand::SetClusterName { name: s.clone() })
                .await?;
        }
        Some(_) => return Err(ApiError::bad_request("value must be a non-empty string")),
        None => return Err(ApiError::bad_request("[{key_missing,value}]")),
    }
    Ok(json::no_content())
}

pub async fn delete_global_parameter(
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if name == CLUSTER_NAME {
        return Err(ApiError::bad_request(
            "cluster_name cannot be cleared (set another with PUT /api/cluster-name)",
        ));
    }
    Err(ApiError::not_found())
}
