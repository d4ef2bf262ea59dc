//! `GET /metrics`: Prometheus text exposition format with RabbitMQ's metric names where a
//! counterpart exists (per object, as RabbitMQ's `/metrics/per-object`: queues labelled
//! `vhost`/`queue`, connections labelled `connection`), plus Pier's own `pier_*` series.
//! No authentication, as RabbitMQ's Prometheus plugin.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::routes::nodes::process_figures;
use crate::stats::{queueing, Queueing};
use crate::{AppState, RABBITMQ_COMPAT_VERSION};

/// Escapes a label value (backslash, double quote, newline).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# TYPE {name} {kind}\n# HELP {name} {help}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// `/metrics` and `/metrics/per-object`, outside `/api` and without credentials (full paths).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/per-object", get(metrics))
}

pub async fn metrics(State(st): State<AppState>) -> Response {
    let mut o = Out(String::with_capacity(8192));
    o.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ-compatible version info",
    );
    o.sample(
        "rabbitmq_build_info",
        &[
            ("rabbitmq_version", RABBITMQ_COMPAT_VERSION),
            ("product", "pier"),
            ("product_version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
    o.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    let cluster_name = st.cluster_name();
    o.sample(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", &st.node),
            ("rabbitmq_cluster", &cluster_name),
        ],
        1,
    );

    let conns = st.registry.connections();
    let totals = st.registry.totals();
    let channels: usize = conns.iter().map(|c| c.channels.len()).sum();
    o.single(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        conns.len(),
    );
    o.single(
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        channels,
    );
    o.single(
        "rabbitmq_connections_opened_total",
        "counter",
        "Total number of connections opened",
        totals.connections_opened,
    );
    o.single(
        "rabbitmq_connections_closed_total",
        "counter",
        "Total number of connections closed or terminated",
        totals.connections_closed,
    );
    o.single(
        "rabbitmq_channels_opened_total",
        "counter",
        "Total number of channels opened",
        totals.channels_opened,
    );
    o.single(
        "rabbitmq_channels_closed_total",
        "counter",
        "Total number of channels closed",
        totals.channels_closed,
    );
    o.single(
        "rabbitmq_global_messages_received_total",
        "counter",
        "Total number of messages received from publishers",
        totals.messages_published,
    );

    // Queues: those of this node (in a cluster each node reports the queues it hosts, as
    // RabbitMQ's per-node endpoint does, so that scraping every node counts each once).
    let mut queues = Vec::new();
    for vh in st.broker.vhosts() {
        for q in vh.queues().into_iter().filter(|q| !q.is_remote()) {
            let figures = queueing(&st, vh.name(), &q);
            queues.push((
                vh.name().to_owned(),
                q.name().to_string(),
                q.stats(),
                q.counters(),
                figures,
            ));
        }
    }
    queues.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let consumers: u64 = queues.iter().map(|q| u64::from(q.2.consumers)).sum();
    o.single(
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        consumers,
    );
    o.single("rabbitmq_queues", "gauge", "Queues available", queues.len());
    type Pick = fn(&pier_broker::QueueStats) -> u64;
    let per_queue: [(&str, &str, Pick); 5] = [
        (
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            |s| s.ready,
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            |s| s.unacked,
        ),
        (
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            |s| s.ready + s.unacked,
        ),
        ("rabbitmq_queue_consumers", "Consumers on a queue", |s| {
            u64::from(s.consumers)
        }),
        (
            "rabbitmq_queue_messages_ready_bytes",
            "Size in bytes of ready messages",
            |s| s.ready_bytes,
        ),
    ];
    for (name, help, pick) in per_queue {
        o.family(name, "gauge", help);
        for (vhost, queue, s, _, _) in &queues {
            o.sample(name, &[("vhost", vhost), ("queue", queue)], pick(s));
        }
    }
    type PickN = fn(&pier_broker::QueueCountersSnapshot) -> u64;
    let per_queue_counters: [(&str, &str, PickN); 4] = [
        (
            "rabbitmq_queue_messages_published_total",
            "Total number of messages published to queues",
            |c| c.published,
        ),
        (
            "pier_queue_messages_delivered_total",
            "Total number of messages delivered from a queue (consumers and basic.get)",
            |c| c.delivered,
        ),
        (
            "pier_queue_messages_delivered_no_ack_total",
            "Total number of messages delivered from a queue without acknowledgement",
            |c| c.delivered_no_ack,
        ),
        (
            "pier_queue_messages_acked_total",
            "Total number of deliveries from a queue acknowledged",
            |c| c.acked,
        ),
    ];
    for (name, help, pick) in per_queue_counters {
        o.family(name, "counter", help);
        for (vhost, queue, _, c, _) in &queues {
            o.sample(name, &[("vhost", vhost), ("queue", queue)], pick(c));
        }
    }
    type PickF = fn(&Queueing) -> Option<f64>;
    let figures: [(&str, &str, PickF); 6] = [
        (
            "pier_queue_arrival_rate",
            "Messages entering the queue per second (lambda), over the last minute",
            |q| Some(q.arrival_rate),
        ),
        (
            "pier_queue_service_rate",
            "Messages completed (acked or delivered without ack) per second (mu)",
            |q| Some(q.service_rate),
        ),
        (
            "pier_queue_utilisation",
            "Utilisation rho = lambda / mu (absent when nothing is served)",
            Queueing::utilisation,
        ),
        (
            "pier_queue_time_in_queue_seconds",
            "Time in queue W = L / lambda by Little's law (absent without arrivals)",
            Queueing::time_in_queue,
        ),
        (
            "pier_queue_mm1_predicted_length",
            "M/M/1 predicted queue length rho / (1 - rho), for rho < 1",
            |q| q.mm1().map(|(l, _)| l),
        ),
        (
            "pier_queue_mm1_predicted_time_in_queue_seconds",
            "M/M/1 predicted time in queue L / lambda, for rho < 1",
            |q| q.mm1().map(|(_, w)| w),
        ),
    ];
    for (name, help, pick) in figures {
        o.family(name, "gauge", help);
        for (vhost, queue, _, _, f) in &queues {
            if let Some(v) = pick(f) {
                o.sample(name, &[("vhost", vhost), ("queue", queue)], v);
            }
        }
    }
    // Measured per message over a sliding window: gauges (a Prometheus summary's _sum and
    // _count would have to be cumulative), absent for queues with no completed message.
    let name = "pier_queue_measured_time_in_queue_seconds";
    o.family(
        name,
        "gauge",
        "Time in queue measured per message from enqueue to ack (or no-ack delivery), quantiles over the last minute",
    );
    for (vhost, queue, _, _, f) in &queues {
        for (quantile, v) in [("0.5", f.measured.p50_ms), ("0.99", f.measured.p99_ms)] {
            if let Some(ms) = v {
                let labels = [
                    ("vhost", vhost.as_str()),
                    ("queue", queue.as_str()),
                    ("quantile", quantile),
                ];
                o.sample(name, &labels, ms / 1000.0);
            }
        }
    }
    let name = "pier_queue_measured_time_in_queue_mean_seconds";
    o.family(
        name,
        "gauge",
        "Mean time in queue measured per message from enqueue to ack, over the last minute",
    );
    for (vhost, queue, _, _, f) in &queues {
        if let Some(ms) = f.measured.mean_ms {
            o.sample(name, &[("vhost", vhost), ("queue", queue)], ms / 1000.0);
        }
    }
    let name = "pier_queue_measured_time_in_queue_samples";
    o.family(
        name,
        "gauge",
        "Messages whose time in queue was measured over the last minute",
    );
    for (vhost, queue, _, _, f) in &queues {
        o.sample(
            name,
            &[("vhost", vhost), ("queue", queue)],
            f.measured.samples,
        );
    }

    // Connections.
    type PickC = fn(&pier_server::ConnectionInfo) -> u64;
    let per_conn: [(&str, &str, &str, PickC); 6] = [
        (
            "rabbitmq_connection_incoming_bytes_total",
            "counter",
            "Total number of bytes received on a connection",
            |c| c.recv_oct,
        ),
        (
            "rabbitmq_connection_outgoing_bytes_total",
            "counter",
            "Total number of bytes sent on a connection",
            |c| c.send_oct,
        ),
        (
            "rabbitmq_connection_incoming_packets_total",
            "counter",
            "Total number of packets received on a connection",
            |c| c.recv_cnt,
        ),
        (
            "rabbitmq_connection_outgoing_packets_total",
            "counter",
            "Total number of packets sent on a connection",
            |c| c.send_cnt,
        ),
        (
            "rabbitmq_connection_channels",
            "gauge",
            "Channels on a connection",
            |c| c.channels.len() as u64,
        ),
        (
            "pier_connection_messages_published_total",
            "counter",
            "Total number of messages published on a connection",
            |c| c.messages_published,
        ),
    ];
    for (name, kind, help, pick) in per_conn {
        o.family(name, kind, help);
        for c in &conns {
            o.sample(
                name,
                &[("vhost", &c.meta.vhost), ("connection", &c.meta.name)],
                pick(c),
            );
        }
    }

    // Process.
    let (rss, fds, max_fds) = process_figures();
    o.single(
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
        rss,
    );
    o.single(
        "rabbitmq_process_open_fds",
        "gauge",
        "Open file descriptors",
        fds,
    );
    o.single(
        "rabbitmq_process_max_fds",
        "gauge",
        "Open file descriptors limit",
        max_fds,
    );
    o.single(
        "pier_uptime_seconds",
        "gauge",
        "Seconds since the management listener started",
        st.started.elapsed().as_secs(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o.0,
    )
        .into_response()
}
