//! `GET /api/feature-flags`: RabbitMQ's feature flags, as they describe Pier's behaviour.

use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use serde::Serialize;

use crate::auth::AuthUser;
use crate::error::ApiResult;
use crate::json;
use crate::AppState;

/// A RabbitMQ feature flag.
#[derive(Serialize)]
struct FeatureFlag {
    name: &'static str,
    desc: &'static str,
    doc_url: &'static str,
    state: &'static str,
    stability: &'static str,
    provided_by: &'static str,
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/feature-flags", get(feature_flags))
}

/// GET /api/feature-flags: RabbitMQ's flags, with the state that describes Pier's behaviour
/// (Pier has no flags to enable: what it supports is always on, the rest always off).
pub async fn feature_flags(Extension(user): Extension<AuthUser>) -> ApiResult<Response> {
    user.require_admin()?;
    let flag = |name, desc, enabled| FeatureFlag {
        name,
        desc,
        doc_url: "",
        state: if enabled { "enabled" } else { "disabled" },
        stability: "stable",
        provided_by: "pier",
    };
    Ok(json::ok(&[
        flag(
            "implicit_default_bindings",
            "Default bindings are now implicit, instead of being stored in the database",
            true,
        ),
        flag("maintenance_mode_status", "Maintenance mode status", false),
        flag("quorum_queue", "Support queues of type `quorum`", true),
        flag("stream_queue", "Support queues of type `stream`", true),
        flag(
            "user_limits",
            "Configure connection and channel limits for a user",
            false,
        ),
        flag(
            "virtual_host_metadata",
            "Virtual host metadata (description, tags, etc)",
            true,
        ),
    ]))
}
