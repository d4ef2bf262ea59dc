//! Errors of the cluster layer. Each says what happened to the change, because a caller
//! must tell "refused, nothing changed" from "the cluster could not decide".

use crate::metadata::CommandError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterError {
    /// No leader could commit the change in time: this node is on the minority side of a
    /// partition, or a majority of the nodes is down. Nothing was applied.
    #[error("metadata change refused: the cluster has no reachable majority (this node sees {reachable} of {voters} nodes{leader}); nothing was changed")]
    NoQuorum {
        reachable: usize,
        voters: usize,
        leader: String,
    },
    /// The change was sent to the leader but no answer came in time: it may or may not be
    /// committed (it will show, or not, once the cluster has a majority again).
    #[error("metadata change not confirmed within {waited_ms} ms ({reason}); it may or may not have been applied")]
    Unconfirmed { waited_ms: u64, reason: String },
    /// Committed by the cluster, but this node has not applied it yet (it is far behind).
    #[error("metadata change committed at index {index} but not yet applied on this node after {waited_ms} ms")]
    NotApplied { index: u64, waited_ms: u64 },
    /// Too many changes in flight on this node.
    #[error("too many metadata changes in flight on this node; try again")]
    Busy,
    /// The node's Raft engine stopped (a storage failure; see the log).
    #[error("the cluster engine of this node stopped: {0}")]
    Stopped(String),
    /// A membership operation (join, forget) failed.
    #[error("{0}")]
    Membership(String),
    /// Start-up problems: data of another node, a port in use, a bad configuration.
    #[error("{0}")]
    Setup(String),
}

impl ClusterError {
    /// The reason in a few words, for an AMQP reply text (255 bytes at most, most of them
    /// RabbitMQ's own wording).
    pub fn short_reason(&self) -> String {
        match self {
            ClusterError::NoQuorum {
                reachable, voters, ..
            } => format!("no reachable majority ({reachable} of {voters} nodes)"),
            ClusterError::Unconfirmed { waited_ms, .. } => {
                format!("not confirmed within {waited_ms} ms, it may or may not have been applied")
            }
            ClusterError::NotApplied { .. } => "committed, not yet applied on this node".into(),
            ClusterError::Busy => "too many changes in flight".into(),
            ClusterError::Stopped(_) => "the cluster engine stopped".into(),
            ClusterError::Membership(_) | ClusterError::Setup(_) => self.to_string(),
        }
    }

    /// RabbitMQ reports a metadata store that cannot be reached as an internal error; for a
    /// management API caller it is "service unavailable".
    pub fn http_status(&self) -> u16 {
        match self {
            ClusterError::Membership(_) => 400,
            _ => 503,
        }
    }
}

/// The outcome of running a metadata command on a node that may be clustered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetadataError {
    /// Applied, and refused by the broker's rules (the same on every node).
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// The cluster could not decide (see [`ClusterError`]).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}
