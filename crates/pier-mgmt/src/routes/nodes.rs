//! `/api/nodes`, `/api/nodes/{node}` and `/api/nodes/{node}/memory`: this node's figures
//! (from /proc and the registry) and, on a clustered node, the other members' reports.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use procfs::process::{LimitValue, Process};
use serde::Serialize;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::json;
use crate::routes::overview::{churn_rates, contexts, exchange_types};
use crate::routes::Q;
use crate::stats;
use crate::views::node::{Member, MemoryBreakdown, MemoryTotal, Node, NodeMemory};
use crate::views::overview::Described;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/nodes", get(nodes))
        .route("/nodes/{node}", get(node))
        .route("/nodes/{node}/memory", get(node_memory))
}

/// An entry of `/api/nodes`: this node, or another member.
#[derive(Serialize)]
#[serde(untagged)]
enum AnyNode {
    Local(Node),
    Member(Member),
}

/// Resident memory in bytes, open file descriptors and their (soft) limit, from /proc; 0 for
/// what can't be read, and for an unlimited limit.
pub(crate) fn process_figures() -> (u64, u64, u64) {
    let Ok(me) = Process::myself() else {
        return (0, 0, 0);
    };
    let rss = me
        .statm()
        .map_or(0, |m| m.resident.saturating_mul(procfs::page_size()));
    let fds = me.fd_count().map_or(0, |n| n as u64);
    let max_fds = match me.limits().map(|l| l.max_open_files.soft_limit) {
        Ok(LimitValue::Value(n)) => n,
        Ok(LimitValue::Unlimited) | Err(_) => 0,
    };
    (rss, fds, max_fds)
}

fn node_view(st: &AppState, memory: bool) -> Node {
    let (mem, fds, fd_total) = process_figures();
    let totals = st.registry.totals();
    let node_counters = crate::stats::node_message_counters(st);
    let rates = st.sampler.rates(stats::NODE_KEY, &node_counters);
    let mechanism = |name, description| Described {
        name,
        description,
        enabled: true,
    };
    Node {
        name: st.node.clone(),
        kind: "disc",
        running: true,
        being_drained: false,
        os_pid: std::process::id().to_string(),
        uptime: u64::try_from(st.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        processors: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_used: mem,
        mem_limit: alarms_limit(st.registry.alarms().memory_limit()),
        mem_alarm: st.registry.alarms().state().memory,
        disk_free: st.registry.alarms().disk_free(),
        disk_free_limit: st.registry.alarms().disk_free_limit(),
        disk_free_alarm: st.registry.alarms().state().disk,
        fd_used: fds,
        fd_total,
        sockets_used: st.registry.connection_count(),
        partitions: st.cluster().map_or_else(Vec::new, |c| {
            c.members()
                .into_iter()
                .filter(|(_, running)| !running)
                .map(|(name, _)| name)
                .collect()
        }),
        applications: [],
        contexts: contexts(st),
        exchange_types: exchange_types(),
        auth_mechanisms: vec![
            mechanism("PLAIN", "SASL PLAIN authentication mechanism"),
            mechanism("AMQPLAIN", "QPid AMQPLAIN mechanism"),
        ],
        rates_mode: "basic",
        run_queue: 0,
        mem_calculation_strategy: "rss",
        enabled_plugins: [],
        cluster_links: [],
        churn: churn_rates(&totals, &rates),
        memory: memory.then(|| memory_breakdown(st)),
    }
}

pub async fn nodes(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    user.require_monitor()?;
    let mut all = vec![AnyNode::Local(node_view(&st, false))];
    all.extend(
        crate::cluster::other_members(&st)
            .await
            .iter()
            .map(|m| AnyNode::Member(crate::cluster::member_view(m))),
    );
    Ok(json::ok(&all))
}

pub async fn node(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    user.require_monitor()?;
    if name != st.node {
        // Another member: what it reports (any node answers for every node).
        return crate::cluster::other_members(&st)
            .await
            .iter()
            .find(|m| m.name == name)
            .map(|m| json::ok(&crate::cluster::member_view(m)))
            .ok_or_else(ApiError::not_found);
    }
    // `?memory=true` adds the breakdown of /api/nodes/{node}/memory, as RabbitMQ's.
    let memory = q.get("memory").is_some_and(|v| v == "true");
    Ok(json::ok(&node_view(&st, memory)))
}

/// No limit is shown as 0 (as for an unmonitored resource).
pub(crate) fn alarms_limit(v: u64) -> u64 {
    if v == u64::MAX {
        0
    } else {
        v
    }
}

/// GET /api/nodes/{node}/memory: Pier measures its resident set size only (strategy "rss");
/// the Erlang-specific breakdown has no counterpart. In-memory message bodies are given as
/// `pier_message_bodies`.
pub async fn node_memory(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(node): Path<String>,
) -> ApiResult<Response> {
    user.require_monitor()?;
    if node != st.node {
        return Err(ApiError::not_found());
    }
    Ok(json::ok(&NodeMemory {
        memory: memory_breakdown(&st),
    }))
}

pub(crate) fn memory_breakdown(st: &AppState) -> MemoryBreakdown {
    let (rss, _, _) = process_figures();
    let bodies: u64 = st
        .broker
        .vhosts()
        .iter()
        .flat_map(|vh| vh.queues())
        .map(|q| q.stats().memory_bytes)
        .sum();
    MemoryBreakdown {
        strategy: "rss",
        total: MemoryTotal {
            rss,
            allocated: rss,
            erlang: rss,
        },
        pier_message_bodies: bodies,
    }
}
