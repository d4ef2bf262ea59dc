//! # pier-stomp-wire: the STOMP codec of Pier
//!
//! Sans-I/O encoding and decoding of STOMP 1.0, 1.1 and 1.2 frames in both directions:
//! CONNECT/STOMP, CONNECTED, SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT,
//! DISCONNECT, MESSAGE, RECEIPT and ERROR ([`Command`]), heart-beats between frames, header
//! escaping per version, `content-length` bodies (which may hold NULs) and NUL-terminated
//! ones, and limits on frame size, header count and header length.
//!
//! ```text
//!  COMMAND EOL                          EOL   = LF, or CR LF (1.2; accepted in all)
//!  name:value EOL      (0..n headers)   first ':' splits; repeated names: first wins
//!  ...
//!  EOL                                  blank line ends the headers
//!  body                                 content-length octets, or up to the first NUL
//!  NUL
//!  (EOL)*                               heart-beats / padding between frames
//!
//!  escapes in names and values:  1.2  \r \n \c \\     1.1  \n \c \\     1.0  none
//!  CONNECT, STOMP and CONNECTED are never escaped; any other escape is an error
//! ```
//!
//! ## Decoding
//!
//! ```
//! use bytes::BytesMut;
//! use pier_stomp_wire::{Command, Decoder, Frame, Item, Limits, Version};
//!
//! let mut dec = Decoder::new(Limits::default());
//! let mut rx = BytesMut::from(&b"CONNECT\naccept-version:1.1,1.2\nhost:/\n\n\0\n"[..]);
//! let Some(Item::Frame(connect)) = dec.decode(&mut rx)? else { unreachable!() };
//! dec.version = Version::negotiate(connect.headers.get("accept-version")).unwrap();
//! assert_eq!(dec.version, Version::V1_2);
//! assert_eq!(dec.decode(&mut rx)?, Some(Item::HeartBeat));
//! let mut tx = BytesMut::new();
//! Frame::new(Command::Connected).header("version", "1.2").encode(dec.version, &mut tx)?;
//! assert_eq!(&tx[..], b"CONNECTED\nversion:1.2\n\n\0");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`decode`] (one shot over [`bytes::Bytes`]) and [`Decoder::decode`] (over a connection's
//! receive buffer, resuming where the last call stopped, so every line is parsed once however
//! the bytes are cut) return `Ok(None)` until an item is whole. Limits are checked as the bytes arrive: a `content-length` over the
//! frame limit fails before the body is buffered, an over-long line before its end arrives.
//! Bodies are zero-copy slices of the input.
//!
//! [`Frame::encode`] writes exactly the frame; RabbitMQ also writes an LF after every frame
//! it sends (its `trailing_lf` setting, on by default), which a server can do with
//! [`encode_heartbeat`].
//!
//! ## Errors
//!
//! Every [`DecodeError`] is fatal; [`DecodeError::error_frame`] is the ERROR frame to send
//! before closing, in RabbitMQ's format (`message`, `content-type:text/plain`,
//! `version:1.0,1.1,1.2`, a one-line body). Where the spec leaves room, decoding follows
//! RabbitMQ 3.10.8 (`rabbit_stomp_frame`): CR LF ends lines in every version, NULs between
//! frames are skipped, a header value may contain unescaped colons, the first of repeated
//! headers wins. Where RabbitMQ departs from the spec, this crate follows the spec and says
//! so: escapes are per version (RabbitMQ unescapes `\r \n \c \\` in every version and
//! frame, CONNECT included), and `content-length` is honoured on every frame (RabbitMQ only
//! reads it on SEND).
//!
//! Validated against real bytes: `tests/golden.rs` decodes and re-encodes every frame of
//! sessions with RabbitMQ 3.10.8 in STOMP 1.0, 1.1 and 1.2, and checks its error frames.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![forbid(unsafe_code)]

mod decode;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;

pub use decode::{decode, Decoder, Item, Limits};
pub use error::{DecodeError, EncodeError};
pub use frame::{
    encode_heartbeat, negotiate_heart_beat, parse_heart_beat, Command, Frame, Headers, Version,
    SUPPORTED_VERSIONS,
};
