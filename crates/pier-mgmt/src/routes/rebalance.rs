//! `POST /api/rebalance/queues`: nothing to move on a single node.

use axum::body::Bytes;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};

use crate::auth::AuthUser;
use crate::error::ApiResult;
use crate::json;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/rebalance/queues", post(rebalance_queues))
}

/// POST /api/rebalance/queues: nothing to move between nodes on a single node.
pub async fn rebalance_queues(
    Extension(user): Extension<AuthUser>,
    // Read so that the connection stays usable (an unread body makes hyper close it).
    _body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    Ok(json::no_content())
}
