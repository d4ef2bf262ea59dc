//! HTTP basic authentication against the broker's users, and RabbitMQ's management tags:
//!
//! | tag            | may                                                                  |
//! |----------------|----------------------------------------------------------------------|
//! | management     | log in; see and manage vhosts they hold a permission on; own conns   |
//! | policymaker    | as management, plus setting and clearing policies                    |
//! | monitoring     | as management, plus every connection/channel, nodes, all vhosts      |
//! | administrator  | everything: users, vhosts, permissions, definitions                  |
//!
//! Refusals are 401 with RabbitMQ's reasons ("Not management user", "Not administrator
//! user", …): RabbitMQ 3.10 answers 401, not 403, for a known user lacking a tag.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use pier_broker::{AuthError, Broker, VHost};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub name: String,
    pub tags: Vec<String>,
}

impl AuthUser {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    pub fn is_admin(&self) -> bool {
        self.has("administrator")
    }

    pub fn is_monitor(&self) -> bool {
        self.is_admin() || self.has("monitoring")
    }

    /// May set and clear policies (on vhosts the user holds a permission on).
    pub fn is_policymaker(&self) -> bool {
        self.is_admin() || self.has("policymaker")
    }

    pub fn is_management(&self) -> bool {
        self.is_monitor() || self.has("management") || self.has("policymaker")
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    pub fn require_monitor(&self) -> ApiResult<()> {
        if self.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not monitor user"))
        }
    }

    /// Whether the user may see objects of `vhost` (administrators see every vhost; others
    /// need a permission on it).
    pub fn can_view(&self, broker: &Broker, vhost: &str) -> bool {
        self.is_admin() || self.holds_permission(broker, vhost)
    }

    /// Whether the user may change objects in `vhost`: like AMQP, this needs a permission on
    /// the vhost, whatever the tags.
    pub fn holds_permission(&self, broker: &Broker, vhost: &str) -> bool {
        broker.users().permission(&self.name, vhost).is_some()
    }

    /// The user may see connections and channels of other users.
    pub fn sees_all_connections(&self) -> bool {
        self.is_monitor()
    }
}

/// The vhost must exist (404) and the user must be allowed to see it (401).
pub fn view_vhost(
    broker: &Broker,
    user: &AuthUser,
    vhost: &str,
) -> ApiResult<Arc<pier_broker::VHost>> {
    let vh = broker.vhost(vhost).ok_or_else(ApiError::not_found)?;
    if !user.can_view(broker, vhost) {
        return Err(ApiError::not_authorised(
            "User not authorised to access virtual host",
        ));
    }
    Ok(vh)
}

/// The vhost must exist (404) and the user must hold a permission on it (401 "Access
/// refused.").
pub fn change_vhost(
    broker: &Broker,
    user: &AuthUser,
    vhost: &str,
) -> ApiResult<Arc<pier_broker::VHost>> {
    let vh = broker.vhost(vhost).ok_or_else(ApiError::not_found)?;
    if !user.holds_permission(broker, vhost) {
        return Err(ApiError::access_refused());
    }
    Ok(vh)
}

/// Decodes `Authorization: Basic …` into (user, password).
fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// Middleware for `/api`: authenticates the request and stores the [`AuthUser`].
pub async fn require_user(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some((name, password)) = basic_credentials(&req) else {
        return ApiError::no_credentials().into_response();
    };
    let user = match state
        .broker
        // to_canonical: on the dual-stack listener 127.0.0.1 arrives as ::ffff:127.0.0.1.
        .authenticate(&name, &password, peer.ip().to_canonical().is_loopback())
    {
        Ok(u) => u,
        Err(AuthError::LoopbackOnly(_)) => {
            return ApiError::new_login("User can only log in via localhost").into_response()
        }
        Err(AuthError::InvalidCredentials(_)) => {
            return ApiError::login_failed().into_response();
        }
    };
    let user = AuthUser {
        name: user.name,
        tags: user.tags,
    };
    if !user.is_management() {
        return ApiError::not_authorised("Not management user").into_response();
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

impl ApiError {
    fn new_login(reason: &str) -> Self {
        let mut e = ApiError::login_failed();
        e.reason = reason.into();
        e
    }
}

/// The vhosts `user` may see, sorted by name.
pub(crate) fn visible_vhosts(state: &AppState, user: &AuthUser) -> Vec<Arc<VHost>> {
    let mut v: Vec<Arc<VHost>> = state
        .broker
        .vhosts()
        .into_iter()
        .filter(|vh| user.can_view(&state.broker, vh.name()))
        .collect();
    v.sort_by(|a, b| a.name().cmp(b.name()));
    v
}
