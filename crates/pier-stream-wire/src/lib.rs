//! # pier-stream-wire (work in progress)
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![forbid(unsafe_code)]

pub mod amqp;
pub mod bloom;
mod buf;
pub mod chunk;
pub mod commands;
pub mod entry;
mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod response_code;

pub use bloom::{BloomFilter, BloomMatcher};
pub use chunk::{Chunk, ChunkBuilder, ChunkError, ChunkHeader, ChunkType, Record};
pub use commands::*;
pub use entry::{Compression, Entry, EntryError, SubBatch, SubBatchRecords};
pub use error::{DecodeError, EncodeError};
pub use frame::{frame_len, key};
pub use response_code::ResponseCode;
