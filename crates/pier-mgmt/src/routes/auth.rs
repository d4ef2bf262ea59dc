//! `GET /api/auth`: the login page's authentication settings, outside the auth layer
//! (RabbitMQ's login page reads it before logging in).

use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::json;
use crate::AppState;

/// The login page's settings: no OAuth 2 / UAA.
#[derive(Serialize)]
struct AuthSettings {
    enable_uaa: bool,
    uaa_client_id: &'static str,
    uaa_location: &'static str,
}

/// Routes served without credentials (full paths: they are not nested under `/api`).
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/auth", get(auth_settings))
}

/// GET /api/auth (no credentials needed, as RabbitMQ: the login page reads it). Pier only
/// has basic auth, no OAuth 2 / UAA.
pub async fn auth_settings() -> Response {
    json::ok(&AuthSettings {
        enable_uaa: false,
        uaa_client_id: "",
        uaa_location: "",
    })
}
