//! # pier-wire: the AMQP 0-9-1 codec of Pier
//!
//! Sans-I/O encoding and decoding of AMQP 0-9-1 as spoken by RabbitMQ: frames, every method
//! of the spec (generated from RabbitMQ's machine-readable spec by `cargo run -p xtask --
//! codegen`), field tables, and `basic` content properties.
//!
//! ```text
//!  0      1         3             7                     7+size    8+size
//!  +------+---------+-------------+---------------------+---------+
//!  | type | channel |    size     |  payload (size B)   |  0xCE   |
//!  +------+---------+-------------+---------------------+---------+
//!   octet   short       long                            frame-end
//!
//!  type 1 method:    class-id(short) method-id(short) arguments...
//!  type 2 header:    class-id(short) weight(short)=0 body-size(longlong)
//!                    property-flags(short, bit 0 = another flags word follows) properties...
//!  type 3 body:      raw message bytes (a message is split over as many body frames
//!                    as frame_max requires)
//!  type 8 heartbeat: empty payload, channel 0
//! ```
//!
//! Decoding is zero-copy: [`decode_frame`] splits a frame off the front of the receive buffer
//! and strings, body payloads and raw properties are [`bytes::Bytes`] slices of it.
//!
//! Malformed input never panics: every length read off the wire is checked against the
//! remaining input before anything is sliced or allocated, table nesting is bounded
//! ([`MAX_NESTING_DEPTH`]), and every failure is a [`WireError`] that knows the reply code
//! RabbitMQ would close the connection with ([`WireError::reply_code`]).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![forbid(unsafe_code)]

mod codec;
mod deliver;
mod error;
mod frame;
mod generated;
mod properties;
mod strings;
mod table;

pub use deliver::{encode_basic_deliver, try_encode_basic_deliver};
pub use error::WireError;
pub use frame::{
    check_protocol_header, decode_frame, encode_body_frames, encode_content_frames,
    encode_content_header, encode_heartbeat, encode_method_frame, max_body_payload, next_frame_len,
    try_encode_method_frame, Frame, ProtocolHeaderCheck, FRAME_HEADER_SIZE, FRAME_OVERHEAD,
    FRAME_SIZE_FUDGE,
};
pub use generated::*;
pub use properties::{BasicProperties, ContentHeader};
pub use strings::{LongString, ShortString, SHORT_STRING_MAX};
pub use table::{
    decode_field_table, encode_field_table, encode_field_value, FieldTable, FieldValue,
    MAX_NESTING_DEPTH,
};

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod lib_tests {
    use super::*;

    #[test]
    fn root_constants() {
        assert_eq!(PROTOCOL_HEADER, *b"AMQP\x00\x00\x09\x01");
        assert_eq!(FRAME_END, 0xCE);
        assert_eq!(FRAME_MIN_SIZE, 4096u32);
        assert_eq!(FRAME_OVERHEAD, 8usize);
        assert_eq!(DEFAULT_PORT, 5672);
        assert_eq!(
            (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT),
            (1u8, 2u8, 3u8, 8u8)
        );
    }

    #[test]
    fn reply_codes() {
        use reply_code::*;
        assert_eq!(name(NOT_FOUND), "NOT_FOUND");
        assert_eq!(name(PRECONDITION_FAILED), "PRECONDITION_FAILED");
        assert_eq!(name(REPLY_SUCCESS), "REPLY_SUCCESS");
        assert_eq!(name(999), "UNKNOWN");
        assert_eq!(from_name("ACCESS_REFUSED"), Some(403));
        assert!(is_hard_error(FRAME_ERROR));
        assert!(is_hard_error(CONNECTION_FORCED));
        assert!(is_hard_error(NOT_ALLOWED));
        assert!(!is_hard_error(NOT_FOUND));
        assert!(!is_hard_error(NO_ROUTE));
        assert!(!is_hard_error(REPLY_SUCCESS));
        assert!(is_soft_error(RESOURCE_LOCKED));
        assert!(!is_soft_error(INTERNAL_ERROR));
        let expected = [
            (REPLY_SUCCESS, 200),
            (CONTENT_TOO_LARGE, 311),
            (NO_ROUTE, 312),
            (NO_CONSUMERS, 313),
            (ACCESS_REFUSED, 403),
            (NOT_FOUND, 404),
            (RESOURCE_LOCKED, 405),
            (PRECONDITION_FAILED, 406),
            (CONNECTION_FORCED, 320),
            (INVALID_PATH, 402),
            (FRAME_ERROR, 501),
            (SYNTAX_ERROR, 502),
            (COMMAND_INVALID, 503),
            (CHANNEL_ERROR, 504),
            (UNEXPECTED_FRAME, 505),
            (RESOURCE_ERROR, 506),
            (NOT_ALLOWED, 530),
            (NOT_IMPLEMENTED, 540),
            (INTERNAL_ERROR, 541),
        ];
        for (got, want) in expected {
            assert_eq!(got, want);
        }
        assert_eq!(HARD_ERRORS.len() + SOFT_ERRORS.len() + 1, expected.len());
    }

    #[test]
    fn class_ids() {
        assert_eq!(class_id::BASIC, 60);
        assert_eq!(class_id::CONFIRM, 85);
        assert_eq!(class_name(90), Some("tx"));
        assert_eq!(method_name(60, 40), Some("basic.publish"));
        assert_eq!(method_name(60, 41), None);
    }
}
