//! The metadata the cluster replicates, and how a node applies it.
//!
//! ```text
//!  MetadataCommand ──► Applier::apply ──► Broker (vhosts, users, permissions, policies,
//!   (serde, in the                        │        exchanges, queues, bindings)
//!    Raft log)                            │        └─ write-through ─► definitions.redb
//!                                         └─► Catalog (cluster name, vhost metadata and
//!                                                      limits, queue homes) ─► redb `cluster`
//!  MetadataSnapshot = definitions.redb's Definitions + CatalogState (JSON)
//! ```

mod apply;
mod catalog;
mod command;
mod snapshot;

pub use apply::{policy_from, Applier, Hooks};
pub use catalog::{Catalog, CatalogState, QueueHome, VhostMeta};
pub use command::{Arguments, CommandError, MetadataCommand, Outcome};
pub use pier_store::DestinationKind;
pub use snapshot::{normalise, MetadataSnapshot, SnapshotError, SNAPSHOT_FORMAT};

/// Encodes an arguments table for a command (its exact AMQP encoding).
pub fn arguments(table: &pier_wire::FieldTable) -> Result<Arguments, CommandError> {
    pier_store::encode_arguments(table)
        .map_err(|e| CommandError::Invalid(format!("arguments do not encode: {e}")))
}
