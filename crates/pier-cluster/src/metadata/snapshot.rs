//! The metadata snapshot: the node's whole durable definitions (`pier_store::Definitions`,
//! exactly what `definitions.redb` holds) plus the catalog, as one JSON document.
//!
//! JSON because a snapshot is read by people too (`pier ctl` can save one, an operator can
//! diff two nodes'), definitions are small (a 10,000-queue cluster is a few MB), and
//! `PolicyDef` carries a JSON value. `format` is bumped on an incompatible change; a node
//! refuses a snapshot of a format it does not know rather than guess.

use pier_store::{Definitions, DefinitionsStore};
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, CatalogState};

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataSnapshot {
    pub format: u32,
    pub definitions: Definitions,
    pub catalog: CatalogState,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the definitions: {0}")]
    Definitions(#[from] pier_store::DefinitionsError),
    #[error("snapshot does not decode: {0}")]
    Decode(#[source] serde_json::Error),
    #[error(
        "snapshot format {found} is not known to this Pier (it reads format {SNAPSHOT_FORMAT})"
    )]
    Format { found: u32 },
}

impl MetadataSnapshot {
    /// What this node holds now. Sorted, so that two nodes with the same definitions give
    /// byte-identical snapshots (the fault tests compare them).
    pub fn capture(store: &DefinitionsStore, catalog: &Catalog) -> Result<Self, SnapshotError> {
        let mut definitions = store.load()?;
        normalise(&mut definitions);
        Ok(MetadataSnapshot {
            format: SNAPSHOT_FORMAT,
            definitions,
            catalog: catalog.state(),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let h: Header = serde_json::from_slice(bytes).map_err(SnapshotError::Decode)?;
        if h.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format { found: h.format });
        }
        serde_json::from_slice(bytes).map_err(SnapshotError::Decode)
    }
}

/// Sorts every list (redb returns key order already; this makes it independent of that).
pub fn normalise(d: &mut Definitions) {
    d.vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    d.users.sort_by(|a, b| a.name.cmp(&b.name));
    d.permissions
        .sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
    d.topic_permissions
        .sort_by(|a, b| (&a.user, &a.vhost, &a.exchange).cmp(&(&b.user, &b.vhost, &b.exchange)));
    d.exchanges
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    d.queues
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    d.bindings.sort_by(|a, b| {
        (
            &a.vhost,
            &a.source,
            &a.destination,
            &a.routing_key,
            &a.arguments,
        )
            .cmp(&(
                &b.vhost,
                &b.source,
                &b.destination,
                &b.routing_key,
                &b.arguments,
            ))
    });
    d.policies
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
}
