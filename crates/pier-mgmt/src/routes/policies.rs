//! Policies (`/api/policies[/vhost[/name]]`), in RabbitMQ's JSON shape:
//!
//! ```json
//! {"vhost": "/", "name": "short-lived", "pattern": "^tmp\\.", "apply-to": "queues",
//!  "definition": {"message-ttl": 60000}, "priority": 1}
//! ```
//!
//! backed by the broker's [`VHost::set_policy`]. The definition keys Pier applies are those of
//! [`PolicyDefinition`]; other keys (RabbitMQ's `ha-mode`, `queue-mode`, …) are refused with
//! RabbitMQ's "not recognised" wording, so nobody believes a setting is in force when it is
//! not. Listing needs a view of the vhost; changing needs the `policymaker` or
//! `administrator` tag and a permission on the vhost, as in RabbitMQ.
//!
//! [`VHost::set_policy`]: pier_broker::VHost::set_policy

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_broker::{ApplyTo, Policy, PolicyDefinition, VHost};
use pier_cluster::metadata::MetadataCommand;
use serde_json::{Map, Value};

use crate::auth::{view_vhost, visible_vhosts, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_str};
use crate::routes::Q;
use crate::views;
use crate::views::policy::Policy as PolicyView;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/policies", get(policies))
        .route("/policies/{vhost}", get(vhost_policies))
        .route(
            "/policies/{vhost}/{name}",
            get(policy).put(put_policy).delete(delete_policy),
        )
}

pub(crate) fn apply_to_str(a: ApplyTo) -> &'static str {
    match a {
        ApplyTo::All => "all",
        ApplyTo::Queues => "queues",
        ApplyTo::Exchanges => "exchanges",
    }
}

/// A definition as RabbitMQ's JSON object (only the keys that are set).
pub(crate) fn definition_json(d: &PolicyDefinition) -> Value {
    d.to_json()
}

/// A policy as RabbitMQ shows it; with `vhost`, the `vhost` field is there.
pub(crate) fn policy_view(vhost: Option<&str>, p: &Policy) -> PolicyView {
    PolicyView {
        vhost: vhost.map(str::to_owned),
        name: p.name.clone(),
        pattern: p.pattern().to_owned(),
        apply_to: apply_to_str(p.apply_to),
        definition: definition_json(&p.definition),
        priority: p.priority,
    }
}

/// The keys of a definition object Pier does not apply.
pub(crate) fn unknown_keys(def: &Map<String, Value>) -> Vec<String> {
    pier_broker::policy::unknown_keys(def)
}

/// Parses a definition object. With `lenient`, keys Pier does not apply are ignored (the
/// caller reports them); otherwise they are an error.
pub(crate) fn parse_definition(
    def: &Map<String, Value>,
    lenient: bool,
) -> Result<PolicyDefinition, String> {
    PolicyDefinition::from_json(def, lenient)
}

/// Builds a policy from a PUT body or a definitions entry: `pattern` and `definition` are
/// required, `apply-to` defaults to `all`, `priority` to 0.
pub(crate) fn parse_policy(
    name: &str,
    b: &Map<String, Value>,
    lenient: bool,
) -> Result<Policy, String> {
    let missing: Vec<String> = ["pattern", "definition"]
        .iter()
        .filter(|k| !b.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!("[{}]", missing.join(",")));
    }
    let pattern = get_str(b, "pattern").ok_or("pattern must be a string")?;
    let definition = match b.get("definition") {
        Some(Value::Object(d)) => parse_definition(d, lenient)?,
        // rabbitmqadmin and some scripts send the definition as a JSON string.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(d)) => parse_definition(&d, lenient)?,
            _ => return Err("definition must be a JSON object".to_owned()),
        },
        _ => return Err("definition must be a JSON object".to_owned()),
    };
    let apply_to_text = get_str(b, "apply-to")
        .or_else(|| get_str(b, "apply_to"))
        .unwrap_or("all");
    let apply_to = ApplyTo::parse(apply_to_text).ok_or_else(|| {
        format!("apply-to must be all, queues or exchanges, not '{apply_to_text}'")
    })?;
    let priority = match b.get("priority") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| format!("priority must be an integer, not {v}"))?,
    };
    Policy::new(name, pattern, apply_to, priority, definition)
}

/// A vhost's policies, sorted by name.
pub(crate) fn sorted_policies(vh: &VHost) -> Vec<Policy> {
    let mut ps = vh.policies();
    ps.sort_by(|a, b| a.name.cmp(&b.name));
    ps
}

/// The user may set and clear policies of `vhost`.
fn require_policymaker(st: &AppState, user: &AuthUser, vhost: &str) -> ApiResult<()> {
    if !user.is_policymaker() {
        return Err(ApiError::not_authorised("Not policymaker user"));
    }
    if !user.is_admin() && !user.holds_permission(&st.broker, vhost) {
        return Err(ApiError::access_refused());
    }
    Ok(())
}

pub async fn policies(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    let items = visible_vhosts(&st, &user)
        .iter()
        .flat_map(|vh| {
            sorted_policies(vh)
                .iter()
                .map(|p| policy_view(Some(vh.name()), p))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    json::list(views::values(items), &q)
}

pub async fn vhost_policies(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    let items = sorted_policies(&vh)
        .iter()
        .map(|p| policy_view(Some(&vhost), p))
        .collect::<Vec<_>>();
    json::list(views::values(items), &q)
}

pub async fn policy(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    vh.policies()
        .iter()
        .find(|p| p.name == name)
        .map(|p| json::ok(&policy_view(Some(&vhost), p)))
        .ok_or_else(ApiError::not_found)
}

pub async fn put_policy(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    require_policymaker(&st, &user, &vhost)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("policy name must not be empty"));
    }
    let b = body_object(&body)?;
    let policy = parse_policy(&name, &b, false).map_err(ApiError::bad_request)?;
    drop(vh);
    let out = st
        .execute(MetadataCommand::SetPolicy {
            vhost: vhost.clone(),
            name: name.clone(),
            pattern: policy.pattern().to_owned(),
            apply_to: policy.apply_to.as_str().to_owned(),
            priority: policy.priority,
            definition: policy.definition.to_json(),
        })
        .await?;
    tracing::info!(vhost, name, "policy set");
    Ok(json::created_or_updated(out.created()))
}

pub async fn delete_policy(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    require_policymaker(&st, &user, &vhost)?;
    let out = st
        .execute(MetadataCommand::ClearPolicy {
            vhost: vhost.clone(),
            name: name.clone(),
        })
        .await?;
    if !out.removed() {
        return Err(ApiError::not_found());
    }
    tracing::info!(vhost, name, "policy cleared");
    Ok(json::no_content())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn definitions_round_trip() {
        let def = json!({"message-ttl": 5000, "max-length": 10, "overflow": "reject-publish",
                         "dead-letter-exchange": "dlx", "max-priority": 4,
                         "alternate-exchange": "ae"});
        let d = parse_definition(&obj(def.clone()), false).unwrap();
        assert_eq!(definition_json(&d), def);
    }

    #[test]
    fn unknown_keys_are_refused_unless_lenient() {
        let def = obj(json!({"ha-mode": "all", "max-length": 3}));
        let e = parse_definition(&def, false).unwrap_err();
        assert!(e.contains("not recognised"), "{e}");
        assert_eq!(parse_definition(&def, true).unwrap().max_length, Some(3));
        assert_eq!(unknown_keys(&def), vec!["ha-mode".to_owned()]);
    }

    #[test]
    fn policies_parse_with_defaults_and_errors() {
        let p = parse_policy(
            "p",
            &obj(json!({"pattern": "^a", "definition": {"expires": 100}})),
            false,
        )
        .unwrap();
        assert_eq!(p.apply_to, ApplyTo::All);
        assert_eq!(p.priority, 0);
        let p = parse_policy(
            "p",
            &obj(json!({"pattern": "^a", "definition": "{\"max-length\": 1}",
                        "apply-to": "queues", "priority": "7"})),
            false,
        )
        .unwrap();
        assert_eq!((p.apply_to, p.priority), (ApplyTo::Queues, 7));
        assert!(parse_policy("p", &obj(json!({"pattern": "^a"})), false)
            .unwrap_err()
            .contains("key_missing,definition"));
        assert!(parse_policy("p", &obj(json!({"pattern": "(", "definition": {}})), false).is_err());
        assert!(parse_policy(
            "p",
            &obj(json!({"pattern": "a", "definition": {"expires": 0}})),
            false
        )
        .is_err());
        assert!(parse_policy(
            "p",
            &obj(json!({"pattern": "a", "definition": {}, "apply-to": "nothing"})),
            false
        )
        .is_err());
    }
}
