//! Runtime parameters: `/api/parameters[/{component}[/{vhost}[/{name}]]]`. The one component
//! Pier has is `vhost-limits` (RabbitMQ keeps vhost limits as such parameters); other
//! components list empty and cannot be set.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_broker::VhostLimits;
use serde_json::Value;

use crate::auth::{view_vhost, visible_vhosts, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object};
use crate::routes::limits::{
    limits_value, parse_limit, set_limits, unrecognised_limit, vhost_for_limits, MAX_CONNECTIONS,
    MAX_QUEUES,
};
use crate::routes::Q;
use crate::views;
use crate::views::parameter::Parameter;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/parameters", get(parameters))
        .route("/parameters/{component}", get(component_parameters))
        .route("/parameters/{component}/{vhost}", get(vhost_parameters))
        .route(
            "/parameters/{component}/{vhost}/{name}",
            get(parameter).put(put_parameter).delete(delete_parameter),
        )
}

/// RabbitMQ keeps vhost limits as runtime parameters of component `vhost-limits`, name
/// `limits`; that is the one component Pier has (federation, shovel… are not there).
const VHOST_LIMITS: &str = "vhost-limits";

const LIMITS: &str = "limits";

fn limits_parameters(st: &AppState, user: &AuthUser, vhost: Option<&str>) -> Vec<Parameter> {
    let mut vhosts = visible_vhosts(st, user);
    vhosts.sort_by(|a, b| a.name().cmp(b.name()));
    vhosts
        .iter()
        .filter(|vh| vhost.is_none_or(|v| v == vh.name()))
        .filter_map(|vh| {
            limits_value(vh.limits()).map(|value| Parameter {
                value,
                vhost: vh.name().to_owned(),
                component: VHOST_LIMITS,
                name: LIMITS,
            })
        })
        .collect()
}

/// GET /api/parameters[/component[/vhost]]: the vhost limits (see above).
pub async fn parameters(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    json::list(views::values(limits_parameters(&st, &user, None)), &q)
}

pub async fn component_parameters(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(component): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    let items = if component == VHOST_LIMITS {
        limits_parameters(&st, &user, None)
    } else {
        Vec::new()
    };
    json::list(views::values(items), &q)
}

pub async fn vhost_parameters(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    view_vhost(&st.broker, &user, &vhost)?;
    let items = if component == VHOST_LIMITS {
        limits_parameters(&st, &user, Some(&vhost))
    } else {
        Vec::new()
    };
    json::list(views::values(items), &q)
}

pub async fn parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    view_vhost(&st.broker, &user, &vhost)?;
    if component != VHOST_LIMITS || name != LIMITS {
        return Err(ApiError::not_found());
    }
    limits_parameters(&st, &user, Some(&vhost))
        .into_iter()
        .next()
        .map(|v| json::ok(&v))
        .ok_or_else(ApiError::not_found)
}

/// PUT: `vhost-limits/{vhost}/limits` `{"value": {"max-queues": n, …}}` sets the vhost's
/// limits (administrator); any other component gets RabbitMQ's answer for a missing one.
pub async fn put_parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    if component != VHOST_LIMITS {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\ncomponent {component} not found\n"
        )));
    }
    user.require_admin()?;
    if name != LIMITS {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\nparameter name must be '{LIMITS}'\n"
        )));
    }
    let b = body_object(&body)?;
    let Some(value) = b.get("value") else {
        return Err(ApiError::bad_request("[{key_missing,value}]"));
    };
    let Value::Object(terms) = value else {
        return Err(ApiError::bad_request(
            "Validation failed\n\nvalue must be an object of limits\n",
        ));
    };
    let mut limits = VhostLimits::default();
    for (k, v) in terms {
        let limit = parse_limit(k, v)?;
        match k.as_str() {
            MAX_CONNECTIONS => limits.max_connections = limit,
            MAX_QUEUES => limits.max_queues = limit,
            _ => return Err(unrecognised_limit(k, v)),
        }
    }
    let vh = vhost_for_limits(&st, &vhost)?;
    let existed = limits_value(vh.limits()).is_some();
    set_limits(&st, vhost, limits).await?;
    Ok(json::created_or_updated(!existed))
}

pub async fn delete_parameter(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    require_policymaker(&user)?;
    if component != VHOST_LIMITS || name != LIMITS {
        return Err(ApiError::not_found());
    }
    user.require_admin()?;
    let vh = st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    if limits_value(vh.limits()).is_none() {
        return Err(ApiError::not_found());
    }
    set_limits(&st, vhost, VhostLimits::default()).await?;
    Ok(json::no_content())
}

pub(crate) fn require_policymaker(user: &AuthUser) -> ApiResult<()> {
    if user.is_policymaker() || user.is_admin() {
        Ok(())
    } else {
        Err(ApiError::not_authorised("Not policymaker user"))
    }
}
