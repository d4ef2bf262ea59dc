//! `GET`/`PUT /api/cluster-name`.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_cluster::metadata::MetadataCommand;
use serde_json::Value;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object};
use crate::views::node::ClusterName;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/cluster-name", get(cluster_name).put(put_cluster_name))
}

pub async fn cluster_name(State(st): State<AppState>) -> Response {
    json::ok(&ClusterName {
        name: st.cluster_name(),
    })
}

/// PUT /api/cluster-name `{"name": …}` (administrator). A single node keeps it in memory
/// (after a restart the configured `cluster_name` is back); a cluster replicates and stores it.
pub async fn put_cluster_name(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    let name = match b.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(ApiError::bad_request("name must be a non-empty string")),
        None => return Err(ApiError::bad_request("[{key_missing,name}]")),
    };
    st.execute(MetadataCommand::SetClusterName { name }).await?;
    Ok(json::no_content())
}
