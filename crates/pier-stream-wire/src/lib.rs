//! # pier-stream-wire: the RabbitMQ stream protocol codec of Pier
//!
//! Sans-I/O encoding and decoding of what a RabbitMQ stream server (port 5552) speaks:
//!
//! * [`commands`]: the binary stream protocol (RabbitMQ's `PROTOCOL.adoc`, checked against
//!   `rabbit_stream_core.erl`): every command in both directions, as
//!   [`ClientCommand`] (what a server decodes) and [`ServerCommand`] (what it encodes);
//! * [`chunk`]: the Osiris chunk a `Deliver` carries (and a stream stores), its data
//!   [`entry`]s, and the stream-filtering [`bloom`] filter, bit-exact with Osiris;
//! * [`amqp`]: the AMQP 1.0 type system and message format that stream messages are
//!   encoded in, and (in its docs) how RabbitMQ maps AMQP 0-9-1 messages to and from it.
//!
//! ```text
//!  0        4        6          8               8+4 (requests and responses only)
//!  +--------+--------+----------+---------------+-----------------------------------+
//!  |  size  |  key   | version  | correlation id| command fields ...                |
//!  +--------+--------+----------+---------------+-----------------------------------+
//!    uint32   uint16   uint16     uint32
//!    size = octets after the size field; checked against the negotiated max frame size
//!    key  = command (0x0001..0x001f); bit 15 set (0x8000 | key) in a response
//!    responses: correlation id, then response code (uint16), then any payload
//!
//!  string = int16 length + UTF-8    bytes = int32 length + octets (-1: null)
//!  array  = int32 count + elements  map   = array of (string key, string value)
//!
//!  Publish v1:  publisher id u8, count, [publishing id u64, entry]
//!  Publish v2:  publisher id u8, count, [publishing id u64, filter value string, entry]
//!  Deliver v1:  subscription id u8, Osiris chunk (48-octet header, entries)
//!  Deliver v2:  subscription id u8, committed chunk id u64, Osiris chunk
//! ```
//!
//! Not every command is a request with a correlation id: `Publish`, `PublishConfirm`,
//! `PublishError`, `Deliver`, `Credit`, `StoreOffset`, `MetadataUpdate`, `Tune` and
//! `Heartbeat` have none; the `Credit` response has a code but no correlation id; `Tune` is
//! answered with `Tune`; `ConsumerUpdate` is a request from the server that the client
//! answers. Where PROTOCOL.adoc and RabbitMQ's codec disagree, this crate follows the codec
//! (each place is noted on the type).
//!
//! ## Decoding
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use pier_stream_wire::{ClientCommand, ServerCommand, Tune, frame::DEFAULT_INITIAL_FRAME_MAX};
//!
//! let mut rx = BytesMut::from(&b"\x00\x00\x00\x04\x00\x17\x00\x01"[..]); // a heartbeat
//! // Until Open succeeds, decode with the pre-authentication limit (8 KiB in RabbitMQ).
//! while let Some(cmd) = ClientCommand::decode_from(&mut rx, DEFAULT_INITIAL_FRAME_MAX)? {
//!     assert_eq!(cmd, ClientCommand::Heartbeat);
//! }
//! let mut tx = BytesMut::new();
//! ServerCommand::Tune(Tune { frame_max: 1_048_576, heartbeat: 60 }).encode(&mut tx)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `decode` returns `Ok(None)` until a whole frame is there. The size prefix is checked
//! against the limit as soon as it arrives, before anything is buffered for the frame, and
//! every count read off the wire is checked against the bytes left before anything is
//! allocated for it. Publish messages and deliver chunks are zero-copy [`bytes::Bytes`]
//! slices of the input.
//!
//! A [`DecodeError`] is fatal for the connection and says how RabbitMQ ends it:
//! [`DecodeError::close_code`] (13 *unknown frame* or 14 *frame too large*) and
//! [`DecodeError::close_reason`] for the `Close` a server sends after authentication
//! ([`DecodeError::close_command`] builds RabbitMQ's exact frame); before authentication
//! RabbitMQ drops the socket silently. Unknown keys, unsupported versions,
//! truncated or over-long bodies and invalid field values are all *unknown frame*, as in
//! RabbitMQ, where every such frame fails the same binary match.
//!
//! Validated against real bytes: `tests/golden.rs` decodes and re-encodes, byte for byte, a
//! session captured from RabbitMQ 3.10.8 and frames produced by `rabbit_stream_core` of
//! RabbitMQ main; the bloom filter and `phash2` match values printed by Erlang.
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
