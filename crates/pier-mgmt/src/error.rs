//! API errors, answered as RabbitMQ's management plugin answers them: a JSON body
//! `{"error": …, "reason": …}` and the status RabbitMQ uses (401 for every authorisation
//! failure, 404 "Object Not Found", 400 "bad_request").

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pier_broker::BrokerError;
use pier_cluster::metadata::CommandError;
use pier_cluster::{ClusterError, MetadataError};
use serde_json::Value;

use crate::views::ErrorBody;

pub const REALM: &str = "Basic realm=\"RabbitMQ Management\"";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: Value,
    /// 401s carry `WWW-Authenticate`.
    challenge: bool,
    /// A 401 without credentials has an empty body in RabbitMQ.
    empty: bool,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(status: StatusCode, error: &'static str, reason: impl Into<Value>) -> Self {
        ApiError {
            status,
            error,
            reason: reason.into(),
            challenge: status == StatusCode::UNAUTHORIZED,
            empty: false,
        }
    }

    /// An error with its own `error` word (RabbitMQ's pagination errors, for instance).
    pub fn with_error(status: StatusCode, error: &'static str, reason: impl Into<Value>) -> Self {
        Self::new(status, error, reason)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    /// 404 with RabbitMQ's `not_found` wording (binding creation on a missing object).
    pub fn not_found_reason(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", reason.into())
    }

    pub fn bad_request(reason: impl Into<Value>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// No credentials at all: 401 with an empty body.
    pub fn no_credentials() -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "not_authorized", "");
        e.empty = true;
        e
    }

    pub fn login_failed() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorized", "Login failed")
    }

    /// The user is known but may not do this (RabbitMQ answers 401, spelled "authorised").
    pub fn not_authorised(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorised", reason.into())
    }

    pub fn access_refused() -> Self {
        Self::not_authorised("Access refused.")
    }

    pub fn method_not_allowed() -> Self {
        let mut e = Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "");
        e.empty = true;
        e
    }

    /// 503: the cluster could not decide (no majority reachable, no answer in time).
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            reason.into(),
        )
    }

    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            reason.into(),
        )
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match &e {
            BrokerError::NotFound { .. } | BrokerError::VhostNotFound(_) => ApiError::not_found(),
            BrokerError::ReservedName { .. }
            | BrokerError::SystemExchangeDeletion { .. }
            | BrokerError::DefaultExchange
            | BrokerError::VhostAccessRefused { .. } => ApiError::access_refused(),
            _ => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Broker(b) => b.into(),
            CommandError::NoVhost(_) => ApiError::not_found(),
            CommandError::VhostOrUserNotFound | CommandError::Invalid(_) => {
                ApiError::bad_request(e.to_string())
            }
        }
    }
}

impl From<MetadataError> for ApiError {
    fn from(e: MetadataError) -> Self {
        match e {
            MetadataError::Refused(c) => c.into(),
            MetadataError::Cluster(ClusterError::Membership(reason)) => {
                ApiError::bad_request(reason)
            }
            MetadataError::Cluster(c) => ApiError::unavailable(c.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = if self.empty {
            self.status.into_response()
        } else {
            let body = crate::views::to_value(&ErrorBody {
                error: self.error,
                reason: &self.reason,
            })
            .to_string();
            (
                self.status,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        };
        if self.challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        }
        resp
    }
}
