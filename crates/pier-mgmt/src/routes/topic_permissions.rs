//! Topic permissions: `/api/topic-permissions[/{vhost}/{user}]`,
//! `/api/vhosts/{vhost}/topic-permissions`, `/api/users/{user}/topic-permissions`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_broker::TopicPermission;
use pier_cluster::metadata::MetadataCommand;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::json::{self, get_str};
use crate::routes::permissions::permission_put_body;
use crate::routes::Q;
use crate::views;
use crate::views::permission::TopicPermission as TopicPermissionView;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/topic-permissions", get(topic_permissions))
        .route(
            "/topic-permissions/{vhost}/{user}",
            get(user_vhost_topic_permissions)
                .put(put_topic_permission)
                .delete(delete_topic_permissions),
        )
        .route(
            "/vhosts/{vhost}/topic-permissions",
            get(vhost_topic_permissions),
        )
        .route(
            "/users/{user}/topic-permissions",
            get(user_topic_permissions),
        )
}

/// Every topic permission, sorted by vhost, user and exchange (also those of a definitions
/// export).
pub(crate) fn sorted_topic_permissions(st: &AppState) -> Vec<TopicPermissionView> {
    let store = st.broker.users();
    let mut v: Vec<(&str, &str, &TopicPermission)> = store.topic_permissions().collect();
    v.sort_by(|a, b| (a.1, a.0, &a.2.exchange).cmp(&(b.1, b.0, &b.2.exchange)));
    v.into_iter()
        .map(|(u, vh, p)| TopicPermissionView {
            user: u.to_owned(),
            vhost: vh.to_owned(),
            exchange: p.exchange.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
        })
        .collect()
}

fn topic_permissions_where(
    st: &AppState,
    keep: impl Fn(&TopicPermissionView) -> bool,
) -> Vec<TopicPermissionView> {
    sorted_topic_permissions(st)
        .into_iter()
        .filter(keep)
        .collect()
}

pub async fn topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    json::list(views::values(sorted_topic_permissions(&st)), &q)
}

/// GET /api/topic-permissions/{vhost}/{user}: the user's topic permissions on the vhost, a
/// list (one per exchange); 404 when there are none, as RabbitMQ answers.
pub async fn user_vhost_topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let found = topic_permissions_where(&st, |p| p.user == name && p.vhost == vhost);
    if found.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(&found))
}

/// PUT /api/topic-permissions/{vhost}/{user} with `exchange`, `write` and `read`: sets the
/// permission for that one exchange (201 when the user had none on the vhost, else 204).
pub async fn put_topic_permission(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = permission_put_body(&st, &vhost, &name, &body, ["exchange", "write", "read"])?;
    let text = |k: &str| get_str(&b, k).unwrap_or("").to_owned();
    let permission = TopicPermission {
        exchange: text("exchange"),
        write: text("write"),
        read: text("read"),
    };
    permission
        .validate()
        .map_err(|e| ApiError::bad_request(format!("invalid_regexp: {e}")))?;
    let out = st
        .execute(MetadataCommand::SetTopicPermission {
            user: name,
            vhost,
            exchange: permission.exchange,
            write: permission.write,
            read: permission.read,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

/// DELETE /api/topic-permissions/{vhost}/{user}: clears all of the user's topic permissions
/// on the vhost (RabbitMQ ignores a body naming an exchange). Pier extension: `?exchange=X`
/// clears only that exchange's (`pier ctl clear_topic_permissions user X` uses it; clearing
/// all and putting the others back would leave them unrestricted in between).
pub async fn delete_topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    let exchange = q.get("exchange").cloned();
    let out = st
        .execute(MetadataCommand::ClearTopicPermission {
            user: name,
            vhost,
            exchange,
        })
        .await?;
    if !out.removed() {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}

pub async fn user_topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if st.broker.users().user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(&topic_permissions_where(&st, |p| p.user == name)))
}

pub async fn vhost_topic_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    Ok(json::ok(&topic_permissions_where(&st, |p| {
        p.vhost == vhost
    })))
}
