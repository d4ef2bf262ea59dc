//! `GET /api/feature-flags`: RabbitMQ's feature flags, as they describe Pier's behaviour;
//! `GET /api/deprecated-features`: RabbitMQ's deprecated features this node knows;
//! `GET /api/deprecated-features/used`: those in use now.

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
    Router::new()
        .route("/feature-flags", get(feature_flags))
        .route("/deprecated-features", get(deprecated_features))
        .route("/deprecated-features/used", get(deprecated_features_used))
}

/// A RabbitMQ deprecated feature, as its API lists one.
#[derive(Serialize)]
struct DeprecatedFeatureView {
    name: &'static str,
    deprecation_phase: &'static str,
    provided_by: &'static str,
    desc: &'static str,
    doc_url: &'static str,
    /// `permitted` or `denied` (RabbitMQ lists it for all of them; not for the used ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
}

fn deprecated_view(
    st: &AppState,
    features: impl Iterator<Item = pier_broker::DeprecatedFeature>,
    with_state: bool,
) -> Vec<DeprecatedFeatureView> {
    features
        .map(|f| DeprecatedFeatureView {
            name: f.name(),
            deprecation_phase: st.deprecated_features.phase(),
            provided_by: "rabbit",
            desc: f.description(),
            doc_url: f.doc_url(),
            state: with_state.then(|| {
                if st.deprecated_features.permits(f) {
                    "permitted"
                } else {
                    "denied"
                }
            }),
        })
        .collect()
}

/// GET /api/deprecated-features: the ones RabbitMQ 4.3 denies by default, with the phase
/// this node's defaults give them (4.2's `permitted_by_default`, or 4.3's
/// `denied_by_default`).
pub async fn deprecated_features(
    axum::extract::State(st): axum::extract::State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    user.require_admin()?;
    Ok(json::ok(&deprecated_view(
        &st,
        pier_broker::DeprecatedFeature::ALL.into_iter(),
        true,
    )))
}

/// GET /api/deprecated-features/used: the ones in use now (RabbitMQ's `list(used)`: those
/// whose `is_feature_used` callback says so, without their state).
pub async fn deprecated_features_used(
    axum::extract::State(st): axum::extract::State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let used = pier_broker::DeprecatedFeature::ALL
        .into_iter()
        .filter(|f| f.in_use(&st.broker));
    Ok(json::ok(&deprecated_view(&st, used, false)))
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
