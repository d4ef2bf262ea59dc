//! `rabbitmq-queues`' quorum queue verbs: `quorum_status` and
//! `check_if_node_is_quorum_critical`.

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
