//! Health checks: `/api/aliveness-test/{vhost}` and `/api/health/checks/*` (alarms, local
//! alarms, virtual hosts, port and protocol listeners, quorum- and mirror-sync-critical).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_broker::{Message, QueueDeclare};
use pier_wire::ShortString;

use crate::auth::{change_vhost, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json;
use crate::views::health::{
    Alarm, AlarmsFailed, CriticalQueue, PortListening, PortNotListening, ProtocolListening,
    ProtocolNotListening, QuorumCritical, Status,
};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/aliveness-test/{vhost}", get(aliveness_test))
        .route("/health/checks/alarms", get(health_alarms))
        .route("/health/checks/local-alarms", get(health_alarms))
        .route("/health/checks/virtual-hosts", get(health_ok))
        .route(
            "/health/checks/port-listener/{port}",
            get(health_port_listener),
        )
        .route(
            "/health/checks/protocol-listener/{protocol}",
            get(health_protocol_listener),
        )
        .route(
            "/health/checks/node-is-quorum-critical",
            get(health_quorum_critical),
        )
        .route(
            "/health/checks/node-is-mirror-sync-critical",
            get(health_single_node),
        )
}

pub async fn health_ok() -> Response {
    json::ok(&Status::ok())
}

/// `/api/health/checks/alarms` and `local-alarms`: 503 with the alarms in effect, as RabbitMQ.
pub async fn health_alarms(State(st): State<AppState>) -> Response {
    let state = st.registry.alarms().state();
    if !state.any() {
        return json::ok(&Status::ok());
    }
    let mut alarms = Vec::new();
    if state.memory {
        alarms.push(Alarm {
            node: st.node.clone(),
            resource: "memory",
        });
    }
    if state.disk {
        alarms.push(Alarm {
            node: st.node.clone(),
            resource: "disk",
        });
    }
    json::with_status(
        StatusCode::SERVICE_UNAVAILABLE,
        &AlarmsFailed {
            status: "failed",
            reason: "resource alarm(s) in effect in the cluster",
            alarms,
        },
    )
}

/// Declares `aliveness-test` in the vhost, publishes a message to it and gets it back.
pub async fn aliveness_test(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let declared = vh.declare_queue(&QueueDeclare {
        name: ShortString::from("aliveness-test"),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: pier_wire::FieldTable::new(),
        connection: 0,
    })?;
    let q = declared.queue;
    q.purge();
    let msg = Arc::new(Message::new(
        ShortString::default(),
        ShortString::from("aliveness-test"),
        pier_broker::message::Properties::default(),
        bytes::Bytes::from_static(b"test_message"),
    ));
    // Through the default exchange, as RabbitMQ's check publishes.
    vh.publish(msg, pier_broker::PublishOptions::internal())?;
    match q.get(false) {
        Some((d, _)) if d.message.body.as_ref() == b"test_message" => Ok(json::ok(&Status::ok())),
        _ => Ok(json::ok(&Status::failed("message not received back"))),
    }
}

/// The node's listeners as (protocol, port).
fn listener_ports(st: &AppState) -> Vec<(&'static str, u16)> {
    let mut out = Vec::new();
    if let Some(a) = st.amqp_addr {
        out.push(("amqp", a.port()));
    }
    if let Some(a) = st.http_addr {
        out.push(("http", a.port()));
        out.push(("http/prometheus", a.port()));
    }
    out
}

pub async fn health_port_listener(
    State(st): State<AppState>,
    Path(port): Path<String>,
) -> ApiResult<Response> {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request("Invalid port"))?;
    let listeners = listener_ports(&st);
    if listeners.iter().any(|(_, p)| *p == port) {
        return Ok(json::ok(&PortListening { status: "ok", port }));
    }
    let mut ports: Vec<u16> = listeners.iter().map(|(_, p)| *p).collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(json::with_status(
        StatusCode::SERVICE_UNAVAILABLE,
        &PortNotListening {
            status: "failed",
            reason: "No active listener",
            missing: port,
            ports,
        },
    ))
}

pub async fn health_protocol_listener(
    State(st): State<AppState>,
    Path(protocol): Path<String>,
) -> Response {
    let listeners = listener_ports(&st);
    // RabbitMQ accepts its aliases for AMQP 0-9-1.
    let wanted = match protocol.as_str() {
        "amqp091" | "amqp0-9-1" | "amqp0.9.1" => "amqp",
        p => p,
    };
    if listeners.iter().any(|(p, _)| *p == wanted) {
        return json::ok(&ProtocolListening {
            status: "ok",
            protocol,
        });
    }
    let protocols: Vec<&str> = listeners.iter().map(|(p, _)| *p).collect();
    json::with_status(
        StatusCode::SERVICE_UNAVAILABLE,
        &ProtocolNotListening {
            status: "failed",
            reason: "No active listener",
            missing: protocol,
            protocols,
        },
    )
}

/// node-is-mirror-sync-critical: Pier has no mirrored classic queues, so no node is.
pub async fn health_single_node(State(st): State<AppState>) -> Response {
    let reason = if st.cluster().is_some() {
        "no mirrored classic queues on this node"
    } else {
        "single node cluster"
    };
    json::ok(&Status::ok_because(reason))
}

/// node-is-quorum-critical: 503 with the replicated quorum queues that would lose their
/// majority if this node stopped, RabbitMQ's text and shape; a single node never is.
pub async fn health_quorum_critical(State(st): State<AppState>) -> Response {
    let Some(c) = st.cluster() else {
        return json::ok(&Status::ok_because("single node cluster"));
    };
    let critical = c.quorum_critical();
    if critical.is_empty() {
        return json::ok(&Status::ok());
    }
    let queues = critical
        .iter()
        .map(|(vhost, name)| CriticalQueue {
            name: name.clone(),
            readable_name: format!("queue '{name}' in vhost '{vhost}'"),
            virtual_host: vhost.clone(),
            kind: "quorum",
        })
        .collect();
    json::with_status(
        StatusCode::SERVICE_UNAVAILABLE,
        &QuorumCritical {
            status: "failed",
            reason: "There are quorum queues that would lose their quorum if the target node \
                     is shut down",
            queues,
        },
    )
}
