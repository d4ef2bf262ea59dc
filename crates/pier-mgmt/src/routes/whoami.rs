//! `GET /api/whoami`: the authenticated user and its tags.

use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};

use crate::auth::AuthUser;
use crate::json;
use crate::views::node::Whoami;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/whoami", get(whoami))
}

pub async fn whoami(Extension(user): Extension<AuthUser>) -> Response {
    json::ok(&Whoami {
        name: user.name,
        tags: user.tags,
    })
}
