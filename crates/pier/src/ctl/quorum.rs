//! `rabbitmq-queues`' quorum queue verbs: `quorum_status` and
//! `check_if_node_is_quorum_critical`.

use serde_json::Value;

use super::client::{enc, CtlError, CtlResult, EX_UNAVAILABLE};
use super::output::ListSpec;
use super::Ctl;

pub(super) const QUORUM_STATUS: ListSpec = ListSpec {
    what: "quorum queue member",
    items: &[
        ("node", "node"),
        ("raft_state", "raft_state"),
        ("term", "term"),
        ("last_log_index", "last_log_index"),
        ("commit_index", "commit_index"),
        ("leader", "leader"),
    ],
    default: &[
        "node",
        "raft_state",
        "term",
        "last_log_index",
        "commit_index",
    ],
};

impl Ctl {
    /// `quorum_status NAME`: one row per member of the queue's Raft group.
    pub(super) fn quorum_status(&self, name: &str, columns: &[String]) -> CtlResult<()> {
        self.info(&format!(
            "Status of quorum queue {name} on vhost {} ...",
            self.vhost
        ));
        let rows = self
            .client
            .list(&format!(
                "/queues/{}/{}/quorum-status",
                self.vh(),
                enc(name)
            ))
            .map_err(|e| Self::not_found(e, self.no_queue(name)))?;
        self.show_list(&QUORUM_STATUS, columns, &rows)
    }

    /// `check_if_node_is_quorum_critical`: fails (69) when stopping the node would cost a
    /// quorum queue its majority, naming the queues.
    pub(super) fn check_quorum_critical(&self) -> CtlResult<()> {
        self.info("Checking if the node is quorum critical ...");
        match self.client.get("/health/checks/node-is-quorum-critical") {
            Ok(_) => {
                println!("Node is not quorum critical");
                Ok(())
            }
            Err(e) if e.status == Some(503) => Err(CtlError::new(EX_UNAVAILABLE, e.message)),
            Err(e) => Err(e),
        }
    }
}

/// `grow`'s selection (RabbitMQ's `all` or `even`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GrowStrategy {
    /// Every quorum queue the node is not a member of.
    All,
    /// Those with an even number of members.
    Even,
}

pub(super) const MEMBERSHIP: ListSpec = ListSpec {
    what: "membership change",
    items: &[
        ("vhost", "vhost"),
        ("name", "name"),
        ("size", "size"),
        ("result", "result"),
    ],
    default: &["vhost", "name", "size", "result"],
};

impl Ctl {
    pub(super) fn add_member(&self, queue: &str, node: &str) -> CtlResult<()> {
        self.info(&format!(
            "Adding a replica for queue {queue} on node {node}..."
        ));
        self.client
            .post(
                &format!("/queues/{}/{}/members", self.vh(), enc(queue)),
                &serde_json::json!({ "node": node }),
            )
            .map_err(|e| Self::not_found(e, self.no_queue(queue)))?;
        Ok(())
    }

    pub(super) fn delete_member(&self, queue: &str, node: &str) -> CtlResult<()> {
        self.info(&format!(
            "Removing a replica of queue {queue} on node {node}..."
        ));
        self.client
            .delete(&format!(
                "/queues/{}/{}/members/{}",
                self.vh(),
                enc(queue),
                enc(node)
            ))
            .map_err(|e| Self::not_found(e, self.no_queue(queue)))?;
        Ok(())
    }

    pub(super) fn transfer_leadership(&self, queue: &str, node: &str) -> CtlResult<()> {
        self.info(&format!(
            "Transferring the leadership of queue {queue} to node {node}..."
        ));
        self.client
            .post(
                &format!("/queues/{}/{}/transfer-leadership", self.vh(), enc(queue)),
                &serde_json::json!({ "node": node }),
            )
            .map_err(|e| Self::not_found(e, self.no_queue(queue)))?;
        Ok(())
    }

    /// The replicated quorum queues of every vhost: (vhost, name, members).
    fn replicated_queues(&self) -> CtlResult<Vec<(String, String, Vec<String>)>> {
        let queues = self.client.list("/queues")?;
        Ok(queues
            .iter()
            .filter(|q| q.get("type").and_then(Value::as_str) == Some("quorum"))
            .filter_map(|q| {
                let members: Vec<String> = q
                    .get("members")?
                    .as_array()?
                    .iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect();
                Some((
                    q.get("vhost")?.as_str()?.to_owned(),
                    q.get("name")?.as_str()?.to_owned(),
                    members,
                ))
            })
            .collect())
    }

    fn membership_row(vhost: &str, name: &str, size: usize, r: CtlResult<Value>) -> Value {
        serde_json::json!({
            "vhost": vhost,
            "name": name,
            "size": size,
            "result": match r {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("error: {}", e.message),
            },
        })
    }

    /// `grow NODE all|even`: the node joins every quorum queue it is not a member of (or
    /// those with an even number of members).
    pub(super) fn grow(
        &self,
        node: &str,
        strategy: GrowStrategy,
        columns: &[String],
    ) -> CtlResult<()> {
        self.info(&format!("Growing quorum queues onto {node}..."));
        let mut rows = Vec::new();
        for (vhost, name, members) in self.replicated_queues()? {
            if members.iter().any(|m| m == node)
                || (strategy == GrowStrategy::Even && members.len() % 2 != 0)
            {
                continue;
            }
            let r = self.client.post(
                &format!("/queues/{}/{}/members", enc(&vhost), enc(&name)),
                &serde_json::json!({ "node": node }),
            );
            let size = members.len() + usize::from(r.is_ok());
            rows.push(Self::membership_row(&vhost, &name, size, r));
        }
        self.show_list(&MEMBERSHIP, columns, &rows)
    }

    /// `shrink NODE`: the node leaves every quorum queue it is a member of (not the last
    /// member of any).
    pub(super) fn shrink(&self, node: &str, columns: &[String]) -> CtlResult<()> {
        self.info(&format!("Shrinking quorum queues on {node}..."));
        let mut rows = Vec::new();
        for (vhost, name, members) in self.replicated_queues()? {
            if !members.iter().any(|m| m == node) {
                continue;
            }
            let r = self.client.delete(&format!(
                "/queues/{}/{}/members/{}",
                enc(&vhost),
                enc(&name),
                enc(node)
            ));
            let size = members.len() - usize::from(r.is_ok());
            rows.push(Self::membership_row(&vhost, &name, size, r));
        }
        self.show_list(&MEMBERSHIP, columns, &rows)
    }
}
