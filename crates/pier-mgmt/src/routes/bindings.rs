//! Bindings: `/api/bindings[/{vhost}]`, `/api/bindings/{vhost}/e/{source}/{q|e}/{destination}[/{props}]`
//! (list, create, show, delete), and the bindings of one queue or exchange
//! (`/api/queues/{vhost}/{name}/bindings`, `/api/exchanges/{vhost}/{name}/bindings/{source|destination}`).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use pier_broker::{BrokerError, Destination, VHost};
use pier_cluster::metadata::CommandError;
use pier_cluster::metadata::{self, MetadataCommand};
use pier_cluster::MetadataError;
use pier_wire::FieldTable;
use serde_json::Value;

use crate::auth::{change_vhost, view_vhost, visible_vhosts, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_str, get_table, short, table_to_json};
use crate::routes::exchanges::exchange_name;
use crate::routes::queues::{find_queue, sorted_queues};
use crate::routes::Q;
use crate::views;
use crate::views::exchange::Binding;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/bindings", get(bindings))
        .route("/bindings/{vhost}", get(vhost_bindings))
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(binding_pair).post(create_binding),
        )
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(binding).delete(delete_binding),
        )
        .route("/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route(
            "/exchanges/{vhost}/{name}/bindings/source",
            get(exchange_bindings_source),
        )
        .route(
            "/exchanges/{vhost}/{name}/bindings/destination",
            get(exchange_bindings_destination),
        )
}

/// Every binding of a vhost as management shows them: the default exchange's implicit
/// binding to each queue first, then the declared ones.
fn all_bindings(vh: &VHost) -> Vec<Binding> {
    let mut out: Vec<Binding> = sorted_queues(vh)
        .iter()
        .map(|q| {
            binding_view(
                vh.name(),
                "",
                &Destination::Queue(q.name().clone()),
                q.name(),
                &FieldTable::new(),
            )
        })
        .collect();
    let mut declared = vh.bindings();
    declared.sort_by(|a, b| {
        (&a.source, &a.destination, &a.routing_key).cmp(&(
            &b.source,
            &b.destination,
            &b.routing_key,
        ))
    });
    out.extend(declared.iter().map(|b| {
        binding_view(
            vh.name(),
            &b.source,
            &b.destination,
            &b.routing_key,
            &b.arguments,
        )
    }));
    out
}

fn binding_view(
    vhost: &str,
    source: &str,
    destination: &Destination,
    routing_key: &str,
    arguments: &FieldTable,
) -> Binding {
    let (dest, kind) = match destination {
        Destination::Queue(n) => (n.as_str(), "queue"),
        Destination::Exchange(n) => (n.as_str(), "exchange"),
    };
    Binding {
        source: source.to_owned(),
        vhost: vhost.to_owned(),
        destination: dest.to_owned(),
        destination_type: kind,
        routing_key: routing_key.to_owned(),
        arguments: table_to_json(arguments),
        properties_key: json::properties_key(routing_key, arguments),
    }
}

pub async fn bindings(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    let items = visible_vhosts(&st, &user)
        .iter()
        .flat_map(|vh| all_bindings(vh))
        .collect::<Vec<_>>();
    json::list(views::values(items), &q)
}

pub async fn vhost_bindings(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    json::list(views::values(all_bindings(&vh)), &q)
}

pub async fn queue_bindings(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    find_queue(&vh, &name)?;
    let items: Vec<Binding> = all_bindings(&vh)
        .into_iter()
        .filter(|b| b.destination_type == "queue" && b.destination == name)
        .collect();
    Ok(json::ok(&items))
}

fn exchange_bindings(
    st: &AppState,
    user: &AuthUser,
    vhost: &str,
    name: &str,
    as_source: bool,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, user, vhost)?;
    let name = exchange_name(name);
    if !vh.exchange_exists(name) {
        return Err(ApiError::not_found());
    }
    let items: Vec<Binding> = all_bindings(&vh)
        .into_iter()
        .filter(|b| {
            if as_source {
                b.source == name
            } else {
                b.destination_type == "exchange" && b.destination == name
            }
        })
        .collect();
    Ok(json::ok(&items))
}

pub async fn exchange_bindings_source(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    exchange_bindings(&st, &user, &vhost, &name, true)
}

pub async fn exchange_bindings_destination(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    exchange_bindings(&st, &user, &vhost, &name, false)
}

fn destination_kind(kind: &str) -> ApiResult<&'static str> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

/// Bindings from `source` to the destination named in the URL.
fn pair_bindings(
    vh: &VHost,
    source: &str,
    kind: &str,
    destination: &str,
) -> ApiResult<Vec<Binding>> {
    let dtype = destination_kind(kind)?;
    let source = exchange_name(source);
    if !vh.exchange_exists(source) && !source.is_empty() {
        return Err(ApiError::not_found());
    }
    let exists = match dtype {
        "queue" => find_queue(vh, destination).is_ok(),
        _ => vh.exchange_exists(destination),
    };
    if !exists {
        return Err(ApiError::not_found());
    }
    Ok(all_bindings(vh)
        .into_iter()
        .filter(|b| {
            b.source == source && b.destination_type == dtype && b.destination == destination
        })
        .collect())
}

pub async fn binding_pair(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    Ok(json::ok(&pair_bindings(&vh, &source, &kind, &destination)?))
}

pub async fn binding(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    pair_bindings(&vh, &source, &kind, &destination)?
        .into_iter()
        .find(|b| b.properties_key == props)
        .map(|v| json::ok(&v))
        .ok_or_else(ApiError::not_found)
}

fn kind_of(dtype: &str) -> metadata::DestinationKind {
    if dtype == "queue" {
        metadata::DestinationKind::Queue
    } else {
        metadata::DestinationKind::Exchange
    }
}

fn binding_error(e: MetadataError) -> ApiError {
    match e {
        MetadataError::Refused(CommandError::Broker(e @ BrokerError::NotFound { .. })) => {
            ApiError::not_found_reason(e.to_string())
        }
        other => other.into(),
    }
}

pub async fn create_binding(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    change_vhost(&st.broker, &user, &vhost)?;
    let dtype = destination_kind(&kind)?;
    let b = body_object(&body)?;
    let routing_key = short(get_str(&b, "routing_key").unwrap_or(""))?;
    let arguments = get_table(&b, "arguments")?;
    let source = exchange_name(&source);
    let props = json::properties_key(&routing_key, &arguments);
    st.metadata
        .execute(MetadataCommand::Bind {
            vhost,
            source: source.to_owned(),
            destination: destination.clone(),
            destination_kind: kind_of(dtype),
            routing_key: routing_key.to_string(),
            arguments: metadata::arguments(&arguments)?,
            skip_missing: false,
        })
        .await
        .map_err(binding_error)?;
    let location = format!(
        "{}/{}",
        crate::encode_segment(&destination),
        crate::encode_segment(&props)
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

pub async fn delete_binding(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let found = pair_bindings(&vh, &source, &kind, &destination)?
        .into_iter()
        .find(|b| b.properties_key == props)
        .ok_or_else(ApiError::not_found)?;
    let source = exchange_name(&source);
    if source.is_empty() {
        return Err(ApiError::access_refused());
    }
    let routing_key = short(&found.routing_key)?;
    let arguments = match &found.arguments {
        Value::Object(o) => json::object_to_table(o)?,
        _ => FieldTable::new(),
    };
    // Recover the exact stored arguments (JSON loses integer widths).
    let arguments = vh
        .bindings()
        .into_iter()
        .find(|b| {
            b.source.as_str() == source
                && b.destination.name().as_str() == destination
                && b.routing_key == routing_key
                && table_to_json(&b.arguments) == table_to_json(&arguments)
        })
        .map_or(arguments, |b| b.arguments);
    let dtype = destination_kind(&kind)?;
    drop(vh);
    st.metadata
        .execute(MetadataCommand::Unbind {
            vhost,
            source: source.to_owned(),
            destination,
            destination_kind: kind_of(dtype),
            routing_key: routing_key.to_string(),
            arguments: metadata::arguments(&arguments)?,
        })
        .await
        .map_err(binding_error)?;
    Ok(json::no_content())
}
