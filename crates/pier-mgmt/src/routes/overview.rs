//! `GET /api/overview`: the node's (and cluster's) totals, listeners and contexts.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value};

use crate::auth::{visible_vhosts, AuthUser};
use crate::error::ApiResult;
use crate::json::rate_details as details;
use crate::json::{self};
use crate::AppState;
use crate::{stats, RABBITMQ_COMPAT_VERSION};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/overview", get(overview))
}

pub(crate) fn exchange_types() -> Value {
    json!([
        {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
        {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
        {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
        {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
    ])
}

fn listeners(st: &AppState) -> Value {
    let mut out = Vec::new();
    if let Some(a) = st.amqp_addr {
        out.push(json!({"node": st.node, "protocol": "amqp", "ip_address": a.ip().to_string(), "port": a.port()}));
    }
    for (protocol, a) in st.listeners.list() {
        out.push(json!({"node": st.node, "protocol": protocol, "ip_address": a.ip().to_string(), "port": a.port()}));
    }
    if let Some(a) = st.http_addr {
        out.push(json!({"node": st.node, "protocol": "http", "ip_address": a.ip().to_string(), "port": a.port()}));
        out.push(json!({"node": st.node, "protocol": "http/prometheus", "ip_address": a.ip().to_string(), "port": a.port()}));
    }
    Value::Array(out)
}

/// The HTTP contexts (RabbitMQ's web dispatch), both on the one management listener.
pub(crate) fn contexts(st: &AppState) -> Value {
    let Some(a) = st.http_addr else {
        return json!([]);
    };
    // RabbitMQ gives the port as a string here.
    let port = a.port().to_string();
    json!([
        {"node": st.node, "description": "RabbitMQ Management", "path": "/", "port": port, "ssl_opts": []},
        {"node": st.node, "description": "RabbitMQ Prometheus", "path": "/", "port": port, "protocol": "'http/prometheus'", "ssl_opts": []},
    ])
}

pub async fn overview(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    let vhosts = visible_vhosts(&st, &user);
    st.refresh_remote_queues().await;
    let (mut ready, mut unacked, mut queues, mut exchanges, mut consumers) =
        (0u64, 0u64, 0, 0, 0u64);
    let (mut delivered, mut acked, mut no_ack) = (0u64, 0u64, 0u64);
    for vh in &vhosts {
        exchanges += vh.exchanges().len();
        for q in vh.queues() {
            let c = q.counters();
            delivered += c.delivered;
            acked += c.acked;
            no_ack += c.delivered_no_ack;
            let s = q.stats();
            ready += s.ready;
            unacked += s.unacked;
            consumers += u64::from(s.consumers);
            queues += 1;
        }
    }
    let conns: Vec<_> = st
        .registry
        .connections()
        .into_iter()
        .filter(|c| user.sees_all_connections() || c.meta.user == user.name)
        .collect();
    let mut channels = conns.iter().map(|c| c.channels.len()).sum::<usize>() as u64;
    let mut connections = conns.len() as u64;
    let mut totals = st.registry.totals();
    // Cluster-wide: the other nodes' connections, channels and publishes, as they report
    // them (queues are already all here, each once, with its home node's figures).
    if user.sees_all_connections() {
        for m in crate::cluster::other_members(&st).await {
            if let (true, Some(r)) = (m.running, &m.report) {
                connections += r.connections;
                channels += r.channels;
                totals.messages_published += r.messages_published;
            }
        }
    }
    let node_counters = crate::stats::node_message_counters(&st);
    let rates = st.sampler.rates(stats::NODE_KEY, &node_counters);
    let rate = |i: usize| details(rates.get(i).copied().unwrap_or(0.0));
    // Queue-total rates are node-wide: shown to those who see every vhost only.
    let sees_all = vhosts.len() == st.broker.vhosts().len();
    let lengths = st.sampler.gauge_rates(stats::NODE_KEY, &node_counters);
    let length_rate = |i: usize| {
        details(if sees_all {
            lengths.get(i).copied().unwrap_or(0.0)
        } else {
            0.0
        })
    };
    Ok(json::ok(json!({
        "management_version": RABBITMQ_COMPAT_VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600], "basic": [600], "detailed": [600]},
        "exchange_types": exchange_types(),
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Pier",
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "cluster_name": st.cluster_name(),
        "erlang_version": "n/a",
        "erlang_full_version": "n/a (Pier is written in Rust)",
        "disable_stats": false,
        "enable_queue_totals": true,
        "message_stats": {
            "publish": totals.messages_published,
            "publish_details": rate(0),
            "deliver_get": delivered,
            "deliver_no_ack": no_ack,
            "ack": acked,
        },
        "churn_rates": {
            "connection_created": totals.connections_opened,
            "connection_created_details": rate(3),
            "connection_closed": totals.connections_closed,
            "connection_closed_details": rate(4),
            "channel_created": totals.channels_opened,
            "channel_created_details": rate(5),
            "channel_closed": totals.channels_closed,
            "channel_closed_details": rate(6),
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": length_rate(7),
            "messages_ready": ready,
            "messages_ready_details": length_rate(8),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": length_rate(9),
        },
        "object_totals": {
            "channels": channels,
            "connections": connections,
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "node": st.node,
        "listeners": listeners(&st),
        "contexts": contexts(&st),
    })))
}
