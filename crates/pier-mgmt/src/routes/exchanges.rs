//! Exchanges: `/api/exchanges[/{vhost}[/{name}]]` (list, show, declare, delete) and
//! `POST /api/exchanges/{vhost}/{name}/publish`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine;
use pier_broker::{BrokerError, Message, VHost};
use pier_cluster::metadata::{self, MetadataCommand};
use pier_wire::ShortString;

use crate::auth::{change_vhost, view_vhost, visible_vhosts, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_bool, get_str, get_table, short, table_to_json};
use crate::routes::Q;
use crate::views;
use crate::views::exchange::{Exchange, ExchangeDetails, Routed};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/exchanges", get(exchanges))
        .route("/exchanges/{vhost}", get(vhost_exchanges))
        .route(
            "/exchanges/{vhost}/{name}",
            get(exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/exchanges/{vhost}/{name}/publish", post(publish))
}

/// The default exchange's name in URLs.
const DEFAULT_EXCHANGE_ALIAS: &str = "amq.default";

pub(crate) fn exchange_name(url_name: &str) -> &str {
    if url_name == DEFAULT_EXCHANGE_ALIAS {
        ""
    } else {
        url_name
    }
}

fn exchange_view(vh: &VHost, x: &pier_broker::exchange::Exchange, detailed: bool) -> Exchange {
    Exchange {
        name: x.name.as_str().to_owned(),
        vhost: vh.name().to_owned(),
        kind: x.kind.as_str().to_owned(),
        durable: x.durable,
        auto_delete: x.auto_delete,
        internal: x.internal,
        arguments: table_to_json(&x.arguments),
        user_who_performed_action: "",
        // As RabbitMQ: the key is there only when a policy applies (exchanges follow
        // policies as they change, so the one in force now is the applied one).
        policy: vh
            .effective_policy(pier_broker::ObjectKind::Exchange, x.name.as_str())
            .map(|p| p.name),
        details: detailed.then(|| ExchangeDetails {
            incoming: Vec::new(),
            outgoing: Vec::new(),
        }),
    }
}

fn sorted_exchanges(vh: &VHost) -> Vec<pier_broker::exchange::Exchange> {
    let mut xs = vh.exchanges();
    xs.sort_by(|a, b| a.name.cmp(&b.name));
    xs
}

pub async fn exchanges(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    let mut items = Vec::new();
    for vh in visible_vhosts(&st, &user) {
        for x in sorted_exchanges(&vh) {
            items.push(exchange_view(&vh, &x, false));
        }
    }
    json::list(views::values(items), &q)
}

pub async fn vhost_exchanges(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    let items = sorted_exchanges(&vh)
        .iter()
        .map(|x| exchange_view(&vh, x, false))
        .collect::<Vec<_>>();
    json::list(views::values(items), &q)
}

pub async fn exchange(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    let name = exchange_name(&name);
    let x = vh
        .exchanges()
        .into_iter()
        .find(|x| x.name.as_str() == name)
        .ok_or_else(ApiError::not_found)?;
    Ok(json::ok(&exchange_view(&vh, &x, true)))
}

pub async fn put_exchange(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let b = body_object(&body)?;
    let Some(kind) = get_str(&b, "type") else {
        return Err(ApiError::bad_request("[{key_missing,type}]"));
    };
    if name == DEFAULT_EXCHANGE_ALIAS {
        return Err(ApiError::access_refused());
    }
    short(&name)?;
    drop(vh);
    let out = st
        .execute(MetadataCommand::DeclareExchange {
            vhost,
            name,
            kind: kind.to_owned(),
            durable: get_bool(&b, "durable", false)?,
            auto_delete: get_bool(&b, "auto_delete", false)?,
            internal: get_bool(&b, "internal", false)?,
            arguments: metadata::arguments(&get_table(&b, "arguments")?)?,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

pub async fn delete_exchange(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let name = exchange_name(&name);
    if name.is_empty() || name.starts_with("amq.") {
        return Err(ApiError::access_refused());
    }
    if !vh.exchange_exists(name) {
        return Err(ApiError::not_found());
    }
    if q.get("if-unused").is_some_and(|v| v == "true") && vh.exchange_has_bindings(name) {
        return Err(BrokerError::InUse {
            kind: pier_broker::ObjectKind::Exchange,
            name: name.to_owned(),
            vhost,
        }
        .into());
    }
    st.execute(MetadataCommand::DeleteExchange {
        vhost: vhost.clone(),
        name: name.to_owned(),
    })
    .await?;
    Ok(json::no_content())
}

/// POST /api/exchanges/vhost/name/publish → `{"routed": bool}`.
pub async fn publish(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let b = body_object(&body)?;
    let exchange = exchange_name(&name);
    let routing_key = short(get_str(&b, "routing_key").unwrap_or(""))?;
    let properties = json::json_to_properties(b.get("properties"))?;
    let payload = get_str(&b, "payload").unwrap_or("");
    let body = match get_str(&b, "payload_encoding").unwrap_or("string") {
        "string" => bytes::Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => bytes::Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(payload.trim())
                .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown payload_encoding '{other}'"
            )))
        }
    };
    let message = Arc::new(Message::new(
        ShortString::from(exchange),
        routing_key,
        properties,
        body,
    ));
    // The one publish path: x-delay, CC/BCC, alternate exchanges and the shared fan-out record
    // as for any AMQP publish.
    let routed = vh
        .publish(message, pier_broker::PublishOptions::client())
        .map_err(|e| ApiError::bad_request(format!("{} {}", e.reply_code(), e.reply_text())))?
        .routed;
    Ok(json::ok(&Routed { routed }))
}
