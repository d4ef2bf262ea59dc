//! The management API's routes, one module per RabbitMQ management resource. Each module owns
//! its handlers and a `routes()` with its paths (relative to `/api`, except [`auth`] and
//! [`metrics`], which are served outside it without credentials); [`api`] merges them.
//!
//! The response bodies are the typed views of [`crate::views`].

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::Query;
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

pub(crate) mod auth;
pub(crate) mod bindings;
pub(crate) mod channels;
pub(crate) mod cluster_name;
pub(crate) mod connections;
pub(crate) mod consumers;
pub(crate) mod definitions;
pub(crate) mod exchanges;
pub(crate) mod extensions;
pub(crate) mod feature_flags;
pub(crate) mod global_parameters;
pub(crate) mod health;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod nodes;
pub(crate) mod operator_policies;
pub(crate) mod overview;
pub(crate) mod parameters;
pub(crate) mod permissions;
pub(crate) mod pier_cluster;
pub(crate) mod policies;
pub(crate) mod queues;
pub(crate) mod rebalance;
pub(crate) mod stream;
pub(crate) mod topic_permissions;
pub(crate) mod users;
pub(crate) mod vhosts;
pub(crate) mod whoami;

/// The query parameters of a request (RabbitMQ's list parameters, `if-unused`, …).
pub(crate) type Q = Query<HashMap<String, String>>;

/// Every `/api` route (to be nested under `/api`, behind the auth layer).
pub(crate) fn api() -> Router<AppState> {
    Router::new()
        .merge(overview::routes())
        .merge(cluster_name::routes())
        .merge(nodes::routes())
        .merge(extensions::routes())
        .merge(feature_flags::routes())
        .merge(whoami::routes())
        .merge(vhosts::routes())
        .merge(users::routes())
        .merge(permissions::routes())
        .merge(topic_permissions::routes())
        .merge(exchanges::routes())
        .merge(queues::routes())
        .merge(bindings::routes())
        .merge(connections::routes())
        .merge(channels::routes())
        .merge(consumers::routes())
        .merge(stream::routes())
        .merge(policies::routes())
        .merge(operator_policies::routes())
        .merge(parameters::routes())
        .merge(global_parameters::routes())
        .merge(limits::routes())
        .merge(definitions::routes())
        .merge(health::routes())
        .merge(rebalance::routes())
        // Pier's cluster operations (RabbitMQ does these with rabbitmqctl, not over HTTP).
        .merge(pier_cluster::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

// The fallbacks read the request body: answering with it unread makes hyper close the
// keep-alive connection, which a client sees as a dropped connection on its next request.
pub async fn not_found(_body: Bytes) -> ApiError {
    ApiError::not_found()
}

pub async fn method_not_allowed(_body: Bytes) -> ApiError {
    ApiError::method_not_allowed()
}
