//! `GET /api/extensions`: the web UI's plugin extensions (none).

use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::json;
use crate::views::EmptyList;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/extensions", get(extensions))
}

/// GET /api/extensions: the web UI's plugin extensions; Pier's UI has none.
pub async fn extensions() -> Response {
    json::ok(&EmptyList::default())
}
