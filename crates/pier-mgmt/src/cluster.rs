//! The cluster as management shows it: `/api/nodes` lists every member (each reports its own
//! figures over the peer transport: [`StateReporter`] gives this node's). Pier's own cluster
//! endpoints are in `routes::pier_cluster`.

use std::sync::Weak;

use pier_cluster::{MemberStatus, NodeReport, Reporter};

use crate::views::node::{Member, MemberReport, RaftPosition};
use crate::{AppState, Inner};

/// This node's figures for its peers.
pub(crate) struct StateReporter(pub Weak<Inner>);

impl Reporter for StateReporter {
    fn report(&self) -> NodeReport {
        match self.0.upgrade() {
            Some(inner) => local_report(&AppState(inner)),
            None => NodeReport::default(),
        }
    }

    fn list(&self, what: &str, user: &str, tags: &[String], vhost: Option<&str>) -> Vec<String> {
        let Some(inner) = self.0.upgrade() else {
            return Vec::new();
        };
        let user = crate::auth::AuthUser {
            name: user.to_owned(),
            tags: tags.to_vec(),
        };
        crate::routes::connections::local_listing(&AppState(inner), what, &user, vhost)
            .iter()
            .map(|v| v.to_string())
            .collect()
    }

    fn close_connection(&self, name: &str, reason: &str) -> bool {
        self.0
            .upgrade()
            .is_some_and(|inner| inner.registry.close(name, reason))
    }
}

pub(crate) fn local_report(st: &AppState) -> NodeReport {
    let (mem, fds, fd_total) = crate::routes::nodes::process_figures();
    let alarms = st.registry.alarms();
    let state = alarms.state();
    let mut listeners = Vec::new();
    if let Some(a) = st.amqp_addr {
        listeners.push(("amqp".to_owned(), a.to_string()));
    }
    if let Some(a) = st.http_addr {
        listeners.push(("http".to_owned(), a.to_string()));
    }
    NodeReport {
        name: st.node.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_ms: u64::try_from(st.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        os_pid: std::process::id(),
        mem_used: mem,
        mem_limit: crate::routes::nodes::alarms_limit(alarms.memory_limit()),
        mem_alarm: state.memory,
        disk_free: alarms.disk_free(),
        disk_free_limit: alarms.disk_free_limit(),
        disk_free_alarm: state.disk,
        fd_used: fds,
        fd_total,
        sockets_used: st.registry.connection_count() as u64,
        processors: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        listeners,
        connections: st.registry.connection_count() as u64,
        channels: st
            .registry
            .connections()
            .iter()
            .map(|c| c.channels.len() as u64)
            .sum(),
        messages_published: st.registry.totals().messages_published,
        ..NodeReport::default()
    }
}

/// A member of the cluster other than this node, in `/api/nodes`' shape (the fields a
/// remote node reports; RabbitMQ shows `running: false` and little else for a node down).
pub(crate) fn member_view(m: &MemberStatus) -> Member {
    let Some(r) = &m.report else {
        return Member {
            name: m.name.clone(),
            kind: "disc",
            running: false,
            being_drained: false,
            partitions: Vec::new(),
            cluster_links: [],
            report: None,
        };
    };
    Member {
        name: m.name.clone(),
        kind: "disc",
        running: m.running,
        being_drained: false,
        partitions: r.partitions.clone(),
        cluster_links: [],
        report: Some(MemberReport {
            os_pid: r.os_pid.to_string(),
            uptime: r.uptime_ms,
            processors: r.processors,
            mem_used: r.mem_used,
            mem_limit: r.mem_limit,
            mem_alarm: r.mem_alarm,
            disk_free: r.disk_free,
            disk_free_limit: r.disk_free_limit,
            disk_free_alarm: r.disk_free_alarm,
            fd_used: r.fd_used,
            fd_total: r.fd_total,
            sockets_used: r.sockets_used,
            applications: [],
            rates_mode: "basic",
            mem_calculation_strategy: "rss",
            enabled_plugins: [],
            pier_raft: RaftPosition {
                term: r.raft_term,
                state: r.raft_state.clone(),
                last_applied: r.raft_last_applied,
            },
        }),
    }
}

/// Every member for `/api/nodes` (this node's own entry is built by the caller).
pub(crate) async fn other_members(st: &AppState) -> Vec<MemberStatus> {
    match st.cluster() {
        Some(c) => c
            .status()
            .await
            .members
            .into_iter()
            .filter(|m| m.name != st.node)
            .collect(),
        None => Vec::new(),
    }
}
