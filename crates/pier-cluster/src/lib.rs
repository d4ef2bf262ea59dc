//! Pier clustering: several Pier nodes that share one set of definitions (vhosts, users,
//! permissions, policies, limits, durable exchanges, queues and bindings), replicated by one
//! Raft group on [openraft]. A single node runs none of this unless configured: it applies
//! definition changes locally through the same [`metadata::Applier`].
//!
//! ```text
//!   management API ─┐                                  ┌─ other nodes ─┐
//!   (AMQP, next)    │ Metadata::execute                │               │
//!                   ▼                                  │  peer transport: one TCP connection
//!   ClusterHandle::propose ── Forward ─► leader ───────┤  per pair, Request/Response frames,
//!        │ waits for this node's apply                 │  bounded queues, handshake with the
//!        │                                             │  cluster id (transport/)
//!   ┌────┴──────────── raft/ (the only openraft code) ─┴───────────────────────────┐
//!   │ openraft::Raft ── RaftLog ─► LogStore seam ─► FileLogStore (segments, fsync,  │
//!   │   (TypeConfig,     (log_adapter.rs)            group commit; file_log.rs)    │
//!   │    timeouts)    ── MetadataStateMachine ─► metadata::Applier ─► Broker         │
//!   │                    (state_machine.rs)      one redb transaction per batch,     │
//!   │                                            snapshot = definitions + catalog    │
//!   │                 ── NetworkFactory ─► Transport (network.rs)                    │
//!   └───────────────────────────────────────────────────────────────────────────────┘
//!   node.rs: start-up, formation from the static peer list, join/reset, peer liveness
//! ```
//!
//! A change proposed on any node is forwarded to the leader, committed by a majority, and
//! applied on every node to its own [`pier_broker::Broker`] (which writes it through to its
//! `definitions.redb`, the node's durable copy); `propose` returns once the proposing node
//! has applied it, so the client reads its own write there. Routing reads the local copy.
//! On the minority side of a partition a change fails within the propose timeout (5 s)
//! with [`ClusterError::NoQuorum`]; it never hangs and never diverges.
//!
//! See `docs/clustering.md` for running a cluster and
//! `docs/decisions/0005-clustering-on-openraft.md` for the choices made here.

// The error types here carry the broker's `BrokerError` (128 bytes, the reply code and
// text an AMQP client gets) and openraft's `StorageError` (its API's type); they are
// returned once per metadata change, never per message, so boxing them buys nothing.
#![allow(clippy::result_large_err)]

pub mod blocking;
mod error;
mod front;
mod handle;
pub mod metadata;
mod node;
pub mod queues;
pub mod quorum;
pub mod raft;
pub mod rpc;
pub mod transport;

pub use error::{ClusterError, MetadataError};
pub use front::Metadata;
pub use handle::{declares_quorum, Applied, ClusterHandle, ClusterStatus, MemberStatus};
pub use node::{ClusterConfig, Prepared, Reporter};
pub use rpc::{GroupStatus, NodeReport};
pub use transport::ClusterTls;
