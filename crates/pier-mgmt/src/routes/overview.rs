//! `GET /api/overview`: the node's (and cluster's) totals, listeners and contexts.

use std::net::SocketAddr;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};

use crate::auth::{visible_vhosts, AuthUser};
use crate::error::ApiResult;
use crate::json;
use crate::views::overview::{
    ChurnRates, Context, Described, Listener, ObjectTotals, Overview, OverviewMessageStats,
    QueueTotals, RetentionPolicies,
};
use crate::views::Rate;
use crate::AppState;
use crate::{stats, RABBITMQ_COMPAT_VERSION};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/overview", get(overview))
}

pub(crate) fn exchange_types() -> Vec<Described> {
    let amqp = |name| Described {
        name,
        description: match name {
            "direct" => "AMQP direct exchange, as per the AMQP specification",
            "fanout" => "AMQP fanout exchange, as per the AMQP specification",
            "headers" => "AMQP headers exchange, as per the AMQP specification",
            _ => "AMQP topic exchange, as per the AMQP specification",
        },
        enabled: true,
    };
    vec![
        amqp("direct"),
        amqp("fanout"),
        amqp("headers"),
        amqp("topic"),
    ]
}

fn listeners(st: &AppState) -> Vec<Listener> {
    let listener = |protocol: &str, a: SocketAddr| Listener {
        node: st.node.clone(),
        protocol: protocol.to_owned(),
        ip_address: a.ip().to_string(),
        port: a.port(),
    };
    let mut out = Vec::new();
    if let Some(a) = st.amqp_addr {
        out.push(listener("amqp", a));
    }
    for (protocol, a) in st.listeners.list() {
        out.push(listener(protocol, a));
    }
    if let Some(a) = st.http_addr {
        out.push(listener("http", a));
        out.push(listener("http/prometheus", a));
    }
    out
}

/// The HTTP contexts (RabbitMQ's web dispatch), both on the one management listener.
pub(crate) fn contexts(st: &AppState) -> Vec<Context> {
    let Some(a) = st.http_addr else {
        return Vec::new();
    };
    let context = |description, protocol| Context {
        node: st.node.clone(),
        description,
        path: "/",
        port: a.port().to_string(),
        protocol,
        ssl_opts: [],
    };
    vec![
        context("RabbitMQ Management", None),
        context("RabbitMQ Prometheus", Some("'http/prometheus'")),
    ]
}

/// Connection and channel churn from the registry's totals and the node's sampled rates.
pub(crate) fn churn_rates(
    totals: &pier_server::registry::RegistryTotals,
    rates: &[f64],
) -> ChurnRates {
    let rate = |i: usize| Rate::new(rates.get(i).copied().unwrap_or(0.0));
    ChurnRates {
        connection_created: totals.connections_opened,
        connection_created_details: rate(3),
        connection_closed: totals.connections_closed,
        connection_closed_details: rate(4),
        channel_created: totals.channels_opened,
        channel_created_details: rate(5),
        channel_closed: totals.channels_closed,
        channel_closed_details: rate(6),
    }
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
    // Queue-total rates are node-wide: shown to those who see every vhost only.
    let sees_all = vhosts.len() == st.broker.vhosts().len();
    let lengths = st.sampler.gauge_rates(stats::NODE_KEY, &node_counters);
    let length_rate = |i: usize| {
        Rate::new(if sees_all {
            lengths.get(i).copied().unwrap_or(0.0)
        } else {
            0.0
        })
    };
    Ok(json::ok(&Overview {
        management_version: RABBITMQ_COMPAT_VERSION,
        rates_mode: "basic",
        sample_retention_policies: RetentionPolicies {
            global: [600],
            basic: [600],
            detailed: [600],
        },
        exchange_types: exchange_types(),
        product_version: env!("CARGO_PKG_VERSION"),
        product_name: "Pier",
        rabbitmq_version: RABBITMQ_COMPAT_VERSION,
        cluster_name: st.cluster_name(),
        erlang_version: "n/a",
        erlang_full_version: "n/a (Pier is written in Rust)",
        disable_stats: false,
        enable_queue_totals: true,
        message_stats: OverviewMessageStats {
            publish: totals.messages_published,
            publish_details: Rate::new(rates.first().copied().unwrap_or(0.0)),
            deliver_get: delivered,
            deliver_no_ack: no_ack,
            ack: acked,
        },
        churn_rates: churn_rates(&totals, &rates),
        queue_totals: QueueTotals {
            messages: ready + unacked,
            messages_details: length_rate(7),
            messages_ready: ready,
            messages_ready_details: length_rate(8),
            messages_unacknowledged: unacked,
            messages_unacknowledged_details: length_rate(9),
        },
        object_totals: ObjectTotals {
            channels,
            connections,
            consumers,
            exchanges,
            queues,
        },
        statistics_db_event_queue: 0,
        node: st.node.clone(),
        listeners: listeners(&st),
        contexts: contexts(&st),
    }))
}
