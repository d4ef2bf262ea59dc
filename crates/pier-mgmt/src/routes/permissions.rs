//! Permissions: `/api/permissions[/{vhost}/{user}]`, `/api/vhosts/{vhost}/permissions`,
//! `/api/users/{user}/permissions`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_broker::Permission;
use pier_cluster::metadata::MetadataCommand;
use serde_json::Value;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_str};
use crate::routes::Q;
use crate::views;
use crate::views::permission::Permission as PermissionView;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/permissions", get(permissions))
        .route(
            "/permissions/{vhost}/{user}",
            get(permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/users/{user}/permissions", get(user_permissions))
}

pub async fn vhost_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let found: Vec<PermissionView> = sorted_permissions(&st)
        .into_iter()
        .filter(|p| p.vhost == vhost)
        .collect();
    Ok(json::ok(&found))
}

pub async fn user_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if st.broker.users().user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let found: Vec<PermissionView> = sorted_permissions(&st)
        .into_iter()
        .filter(|p| p.user == name)
        .collect();
    Ok(json::ok(&found))
}

fn permission_view(user: &str, vhost: &str, p: &Permission) -> PermissionView {
    PermissionView {
        user: user.to_owned(),
        vhost: vhost.to_owned(),
        configure: p.configure.clone(),
        write: p.write.clone(),
        read: p.read.clone(),
    }
}

/// Every permission, sorted by vhost and user (also those of a definitions export).
pub(crate) fn sorted_permissions(st: &AppState) -> Vec<PermissionView> {
    let store = st.broker.users();
    let mut v: Vec<(&str, &str, &Permission)> = store.permissions().collect();
    v.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
    v.into_iter()
        .map(|(u, vh, p)| permission_view(u, vh, p))
        .collect()
}

pub async fn permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    json::list(views::values(sorted_permissions(&st)), &q)
}

pub async fn permission(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let store = st.broker.users();
    let p = store
        .permission(&name, &vhost)
        .ok_or_else(ApiError::not_found)?;
    Ok(json::ok(&permission_view(&name, &vhost, p)))
}

/// The body of a permission or topic-permission PUT after RabbitMQ's checks: every key is
/// there (else 400 `[{key_missing,K},...]`) and the vhost and user exist (else 400
/// `vhost_or_user_not_found`).
pub(crate) fn permission_put_body(
    st: &AppState,
    vhost: &str,
    user: &str,
    body: &Bytes,
    keys: [&str; 3],
) -> ApiResult<serde_json::Map<String, Value>> {
    let b = body_object(body)?;
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !b.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    if st.broker.vhost(vhost).is_none() || st.broker.users().user(user).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    Ok(b)
}

pub async fn put_permission(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = permission_put_body(&st, &vhost, &name, &body, ["configure", "write", "read"])?;
    let text = |k: &str| get_str(&b, k).unwrap_or("").to_owned();
    let permission = Permission {
        configure: text("configure"),
        write: text("write"),
        read: text("read"),
    };
    // RabbitMQ answers 400 invalid_regexp for a pattern that does not compile.
    permission
        .validate()
        .map_err(|e| ApiError::bad_request(format!("invalid_regexp: {e}")))?;
    let out = st
        .execute(MetadataCommand::SetPermission {
            user: name,
            vhost,
            configure: permission.configure,
            write: permission.write,
            read: permission.read,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

pub async fn delete_permission(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let out = st
        .execute(MetadataCommand::ClearPermission { user: name, vhost })
        .await?;
    if !out.removed() {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}
