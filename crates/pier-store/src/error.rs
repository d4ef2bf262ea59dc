//! Typed errors of the message store and the definitions store.

use std::path::PathBuf;

use crate::store::QueueId;

/// Errors of a [`crate::MessageStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A read, write, sync, rename or delete failed. When it happened while writing buffered
    /// appends out, those appends were discarded (see [`StoreError::loses_unflushed`]).
    #[error("store I/O failed ({op}) on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An fsync failed earlier. After a failed fsync the kernel may have dropped the dirty
    /// pages, so nothing written since can be trusted to be durable: the store refuses every
    /// further write until it is reopened (which re-verifies the files).
    #[error("store is failed after an earlier sync error and must be reopened")]
    Poisoned,
    #[error("unknown queue {0:?}")]
    UnknownQueue(QueueId),
    #[error("queue name is {len} bytes, at most {max} are allowed")]
    QueueNameTooLong { len: usize, max: usize },
    #[error("offset {offset} for queue {queue:?} is not above its last offset {last}")]
    OffsetNotIncreasing {
        queue: QueueId,
        offset: u64,
        last: u64,
    },
    #[error("an append needs at least one queue reference and at most 65535")]
    BadReferences,
    #[error("record of {size} bytes exceeds the maximum of {max}")]
    RecordTooLarge { size: usize, max: usize },
    #[error("no live message at offset {offset} in queue {queue:?}")]
    NotFound { queue: QueueId, offset: u64 },
    /// A record read back did not verify (bit rot after recovery, or a bug).
    #[error("corrupt record in segment {segment} at {position}: {reason}")]
    Corrupt {
        segment: u32,
        position: u32,
        reason: &'static str,
    },
    #[error("{path} is not a store file of a known version")]
    BadHeader { path: PathBuf },
    /// The store thread has stopped (shut down, or it panicked).
    #[error("the store thread is gone")]
    Stopped,
    /// `try_*` on a full command channel: back off (block the publisher) and retry.
    #[error("the store's command channel is full")]
    Busy,
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The OS error number of an I/O failure (28 = ENOSPC, 27 = EFBIG, 5 = EIO), for logs.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            StoreError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when this error means appends not yet flushed were discarded (or can no longer be
    /// made durable): their publishers must be nacked. Validation errors (unknown queue, bad
    /// offset, too large) concern only the call that returned them.
    pub fn loses_unflushed(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. } | StoreError::Poisoned | StoreError::Stopped
        )
    }
}

/// Errors of the [`crate::DefinitionsStore`].
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    /// Boxed: redb's error is large and errors travel through every `Result` here.
    #[error("definitions database: {0}")]
    Db(#[source] Box<redb::Error>),
    #[error("definition record {key:?} in table {table} does not decode: {source}")]
    Decode {
        table: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("definition does not encode: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("field table does not encode/decode: {0}")]
    FieldTable(#[from] pier_wire::WireError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for DefinitionsError {
            fn from(e: $t) -> Self {
                DefinitionsError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
