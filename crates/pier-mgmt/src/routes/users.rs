//! Users: `/api/users[/{user}]`, `/api/users/without-permissions`, `/api/users/bulk-delete`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use pier_cluster::metadata::MetadataCommand;
use serde_json::Value;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_str};
use crate::routes::vhosts::parse_tags;
use crate::routes::Q;
use crate::views::user::User;
use crate::views::{self, EmptyObject};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(users))
        .route("/users/without-permissions", get(users_without_permissions))
        .route("/users/bulk-delete", post(users_bulk_delete))
        .route("/users/{user}", get(user).put(put_user).delete(delete_user))
}

pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

fn user_view(u: &pier_broker::User) -> User {
    User {
        name: u.name.clone(),
        password_hash: u.password_hash.clone(),
        hashing_algorithm: HASHING_ALGORITHM,
        tags: u.tags.clone(),
        limits: EmptyObject {},
    }
}

/// Every user, sorted by name (also the users of a definitions export).
pub(crate) fn sorted_users(st: &AppState) -> Vec<User> {
    let store = st.broker.users();
    let mut users: Vec<User> = store.users().map(user_view).collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    users
}

pub async fn users(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_admin()?;
    json::list(views::values(sorted_users(&st)), &q)
}

pub async fn users_without_permissions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let store = st.broker.users();
    let with: std::collections::HashSet<&str> = store.permissions().map(|(u, _, _)| u).collect();
    let users: Vec<User> = sorted_users(&st)
        .into_iter()
        .filter(|u| !with.contains(u.name.as_str()))
        .collect();
    Ok(json::ok(&users))
}

pub async fn user(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let store = st.broker.users();
    let u = store.user(&name).ok_or_else(ApiError::not_found)?;
    Ok(json::ok(&user_view(u)))
}

/// Checks a `hashing_algorithm`: Pier stores RabbitMQ's default, salted SHA-256.
pub(crate) fn check_algorithm(alg: Option<&str>) -> ApiResult<()> {
    match alg {
        None | Some(HASHING_ALGORITHM) => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported hashing algorithm '{other}' (Pier supports {HASHING_ALGORITHM})"
        ))),
    }
}

/// PUT /api/users/name with `password`, or `password_hash` (+ `hashing_algorithm`), and
/// `tags`. As in RabbitMQ, neither password nor hash leaves the user without a password.
pub async fn put_user(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    let tags = parse_tags(b.get("tags"));
    // Hashed here, once: the salt is random, and every node must store the same hash.
    let password_hash = match (b.get("password"), b.get("password_hash")) {
        (Some(Value::String(p)), _) => pier_broker::auth::hash_password(p),
        (Some(_), _) => return Err(ApiError::bad_request("password must be a string")),
        (None, Some(Value::String(h))) => {
            check_algorithm(get_str(&b, "hashing_algorithm"))?;
            if !h.is_empty() && !valid_hash(h) {
                return Err(ApiError::bad_request("invalid password_hash"));
            }
            h.clone()
        }
        (None, Some(_)) => return Err(ApiError::bad_request("password_hash must be a string")),
        (None, None) => String::new(),
    };
    let out = st
        .execute(MetadataCommand::PutUser {
            name,
            password_hash,
            tags,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

/// A RabbitMQ SHA-256 hash: base64 of a 4-byte salt and a 32-byte digest.
pub(crate) fn valid_hash(h: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(h)
        .is_ok_and(|raw| raw.len() == 36)
}

/// Deletes a user (its connections are closed by the metadata hooks, on every node).
async fn remove_user(st: &AppState, name: &str) -> ApiResult<bool> {
    Ok(st
        .execute(MetadataCommand::DeleteUser {
            name: name.to_owned(),
        })
        .await?
        .removed())
}

pub async fn delete_user(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if !remove_user(&st, &name).await? {
        return Err(ApiError::not_found());
    }
    Ok(json::no_content())
}

pub async fn users_bulk_delete(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = body_object(&body)?;
    let Some(Value::Array(names)) = b.get("users") else {
        return Err(ApiError::bad_request("[{key_missing,users}]"));
    };
    for n in names.iter().filter_map(Value::as_str) {
        remove_user(&st, n).await?;
    }
    Ok(json::no_content())
}
