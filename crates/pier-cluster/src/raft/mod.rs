//! The thin layer over openraft: everything that names an openraft type lives in this
//! module, so replacing the engine means rewriting these files and nothing else.
//!
//! ```text
//!  mod.rs            TypeConfig (what a log entry, a node, a snapshot are), timeouts
//!  log_store.rs      LogStore: the byte-level seam a log engine implements (+ MemLogStore)
//!  file_log.rs       FileLogStore: segment files, one I/O thread, group commit, fsync
//!  wal_log.rs        WalLogStore: a group's log on the node's shared WAL (pier_store::wal),
//!                    for the many groups of quorum queues (one fsync per batch for all)
//!  log_adapter.rs    openraft's RaftLogStorage over any LogStore
//!  state_machine.rs  openraft's RaftStateMachine over metadata::Applier (+ snapshots)
//!  network.rs        openraft's RaftNetwork over the peer transport (any group's RPCs)
//!  queue_group.rs    a quorum queue's group: its types, timing, and state machine over
//!                    quorum::QueueMachine
//! ```

pub mod file_log;
pub mod log_adapter;
pub mod log_store;
pub mod network;
pub mod queue_group;
mod snapshot_file;
pub mod state_machine;
pub mod wal_log;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::metadata::MetadataCommand;

/// A proposal as it sits in the log: the command, and who proposed it (node id and a
/// per-node request number), so that the proposing node can hand the outcome of *its own*
/// apply back to the waiting caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub origin: u64,
    pub request: u64,
    pub command: MetadataCommand,
}

/// What the state machine answers per entry to openraft (unused: outcomes go to the
/// proposer through its own apply, see `state_machine.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied;

/// A cluster member as the membership config records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerNode {
    /// The node name (`--node-name`, as RabbitMQ's `rabbit@host`).
    pub name: String,
    /// Its cluster address, `host:port`.
    pub addr: String,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// The metadata group's types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<u64, PeerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, PeerNode>;
pub type StorageError = openraft::StorageError<u64>;
pub type RaftMetrics = openraft::RaftMetrics<u64, PeerNode>;

/// The leader a group's metrics name (any group: the metadata group's or a queue's), with
/// its node as the membership records it.
pub fn leader_of(m: &RaftMetrics) -> Option<(u64, PeerNode)> {
    let id = m.current_leader?;
    m.membership_config
        .membership()
        .get_node(&id)
        .map(|p| (id, p.clone()))
}

/// A node's Raft id: the first 8 bytes of SHA-256 of its name. Names are what operators
/// see and type; ids are what openraft needs; deriving one from the other means they can
/// never disagree between nodes (a collision between two names of one cluster is 2^-64).
pub fn node_id(name: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(id)
}

/// Heartbeats every 150 ms; a follower that hears nothing for 1–2 s starts an election.
///
/// openraft's defaults (50 ms / 150–300 ms) suit a dedicated network and idle CPUs. Pier
/// nodes often share a machine with each other and with other work (this project's CI runs
/// three debug-build nodes on two cores while compiling), where a process can be descheduled
/// for a few hundred milliseconds; with a 300 ms timeout that triggers needless elections,
/// and every election fails metadata changes for a moment. Ten heartbeats per election
/// timeout keep a leader through such stalls; a real leader failure still moves leadership
/// within about two seconds, well inside the few seconds a metadata change may wait.
pub const HEARTBEAT_MS: u64 = 150;
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 1000;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 2000;

/// A snapshot every 1,000 entries keeps the log (and its in-memory copy) short: metadata
/// entries are small, and a snapshot of the whole definitions costs milliseconds for
/// thousands of objects. 200 entries are kept behind it, so a follower that is a little
/// behind catches up from the log rather than a snapshot.
pub const SNAPSHOT_EVERY: u64 = 1000;
pub const KEEP_BEHIND_SNAPSHOT: u64 = 200;

/// openraft's configuration for the metadata group.
pub fn config(cluster_name: &str) -> Result<openraft::Config, openraft::ConfigError> {
    openraft::Config {
        cluster_name: cluster_name.to_owned(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        // Sending and installing a snapshot chunk; a few MB over loopback or a LAN.
        install_snapshot_timeout: 10_000,
        max_payload_entries: 256,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: KEEP_BEHIND_SNAPSHOT,
        replication_lag_threshold: 2 * SNAPSHOT_EVERY,
        // Chunks well below the transport's frame limit.
        snapshot_max_chunk_size: 1 << 20,
        purge_batch_size: 64,
        ..openraft::Config::default()
    }
    .validate()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("pier@a"), node_id("pier@a"));
        assert_ne!(node_id("pier@a"), node_id("pier@b"));
        config("c").unwrap();
    }
}
