//! # pier-store: Pier's storage engine
//!
//! Durable messages and definitions for a RabbitMQ-compatible broker, with no async runtime
//! and no broker types. Design, formats and figures: `docs/storage.md`.
//!
//! ```text
//!  data/msgs/<vhost>/                     one ShardedStore per vhost; shard 0 here, shard N
//!  ├── shard-01/ ...                      in shard-NN/ (one SegmentStore + StoreThread each)
//!  ├── queues.log       queue registry: name ↔ disk id, delivered marks   (record log)
//!  ├── 00000001.seg     ┐ message log, split in segments (32 MiB default):
//!  ├── 00000001.ack     │   [hdr 16B][rec][rec][rec]...      rec = [len][crc32c][type][payload]
//!  ├── 00000002.seg     │ .ack: acks of the records of that segment (disk id, position)
//!  ├── 00000002.ack     │ a segment with no live reference left is deleted with its .ack
//!  └── 00000003.seg     ┘ ← active segment (appends; one pwrite + one fdatasync per batch)
//!  data/definitions.redb                  vhosts, users, permissions, exchanges, queues,
//!                                         bindings, policies (redb, one txn per change)
//!
//!  memory: per message one 20-byte IndexEntry { offset, segment, position, len+flags }
//! ```
//!
//! * [`MessageStore`]: the trait (append → readable seq; commit → durable seq; ack; read;
//!   purge; delete; recovered queues). Backends: [`SegmentStore`] (disk) and [`MemoryStore`].
//!   [`conformance::run_suite`] is the contract both pass.
//! * [`StoreThread`]: runs a backend on its own thread behind a bounded channel, with group
//!   commit (pipelined: under load the fdatasync runs on a sync thread while the next batch is
//!   applied) and durable callbacks, so async code never waits on the disk. The publisher
//!   checksums the record ([`EncodedMessage`]); the store thread only copies it.
//! * [`ShardedStore`]: a vhost's store as independent shards (a store thread each); a queue
//!   lives on one shard, so publishes to queues of different shards run in parallel.
//! * [`DefinitionsStore`]: durable definitions in redb.
//!
//! Nothing in here panics on file content: every length read from disk is bounds-checked,
//! every record is checksummed (crc32c) before it is believed.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![forbid(unsafe_code)]

mod channel;
pub mod chunked;
mod commit;
pub mod conformance;
mod definitions;
mod error;
mod files;
mod index;
mod memory;
mod message;
mod record;
mod registry;
mod segment_store;
mod shards;
mod store;
pub mod stream;
mod thread;
pub mod wal;

pub use chunked::ChunkedDeque;
pub use commit::{SyncFile, SyncJob, SyncPlan};
pub use definitions::{
    decode_arguments, encode_arguments, BindingDef, DefResult, Definitions, DefinitionsStore,
    DestinationKind, ExchangeDef, PermissionDef, PolicyDef, QueueDef, TopicPermissionDef, UserDef,
    VhostDef,
};
pub use error::{DefinitionsError, StoreError};
pub use index::{IndexEntry, QueueIndex};
pub use memory::{MemoryDisk, MemoryStore};
pub use message::{EncodedMessage, StoredMessage};
pub use segment_store::{RecoveryReport, SegmentStore, StoreConfig};
pub use shards::{default_shards, shard_dir, ShardConfig, ShardedStore, Shards, MAX_SHARDS};
pub use store::{
    LiveMessage, MessageStore, QueueId, QueueInfo, QueueRef, Result, Returns, Seq, StoreStats,
    SyncPolicy,
};
pub use thread::{
    Command, DurableCallback, ReadCallback, StoreHandle, StoreTask, StoreThread, ThreadConfig,
};

/// Record framing, exposed for tools and fuzzing (`scan` never panics on any input).
pub mod format {
    pub use crate::files::{
        ACK_MAGIC, FILE_HEADER_LEN, REGISTRY_MAGIC, SEGMENT_MAGIC, SEGMENT_VERSION, VERSION,
    };
    pub use crate::record::{
        encode, encoded_len, kind, parse, scan, Parsed, ScanOutcome, HEADER_LEN,
    };
}
