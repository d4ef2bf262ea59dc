//! Quorum queue replication (issue 14). A quorum queue is its own Raft
//! group whose log holds [`QueueEntry`]s; every member applies them to a [`QueueMachine`]
//! (the broker's deterministic queue engine), and the group's log lives on the node's shared
//! write-ahead log (`pier_store::wal`, through `raft::wal_log::WalLogStore`).
//!
//! ```text
//!  leader: AMQP publish/consume/ack ─► QueueEntry (op + leader's clocks) ─► Raft propose
//!          committed ─► QueueMachine::apply on every member ─► effects (deliveries: leader only)
//!  entry.rs      the log entry and its binary format
//!  machine.rs    the state machine over QueueEngine (OpenGate; the log is the store)
//!  service.rs    a node's groups (openraft over `WalLogStore` and the peer transport), the
//!                queue handle's Raft-driven backend (confirms after commit, leader-only
//!                delivery, failover), membership tools
//!  elections.rs  when a member starts an election (groups send no heartbeats)
//!  snapshot.rs   the state machine's snapshot format
//! ```

pub(crate) mod elections;
pub mod entry;
pub mod machine;
pub(crate) mod propose;
pub(crate) mod service;
pub mod snapshot;

pub use entry::{message_of, QueueEntry, QueueOp};
pub use machine::{offset_at, place_of, Applied, BodySource, QueueMachine};
