//! # pier-mqtt-wire: the MQTT codec of Pier
//!
//! Sans-I/O encoding and decoding of MQTT 3.1 (protocol name `MQIsdp`, level 3), 3.1.1
//! (`MQTT`, level 4) and 5.0 (`MQTT`, level 5): all fifteen control packets in both
//! directions ([`Packet`]), 5.0 [`Properties`] and [`ReasonCode`]s, the 3.1/3.1.1
//! [`ConnectReturnCode`]s, topic validation and RabbitMQ's MQTT ↔ AMQP topic mapping
//! ([`topic`]).
//!
//! ```text
//!   fixed header                 variable header                  payload
//!  +-----------+--------------+----------------------------------+------------------------+
//!  | type|flags| remaining len| packet id, 5.0: reason code,     | CONNECT: client id,    |
//!  |  4b | 4b  | varint 1..4  | property length (varint) + props | will, user, password;  |
//!  +-----------+--------------+----------------------------------+ PUBLISH: message;      |
//!    flags: PUBLISH dup|qos qos|retain; PUBREL, SUBSCRIBE,      | SUBSCRIBE: (filter,    |
//!    UNSUBSCRIBE 0010; all others 0000                           | options)+ ; SUBACK/    |
//!                                                                | UNSUBACK: codes        |
//!                                                                +------------------------+
//!  varint: 7 bits a byte, low first, high bit = more; at most 4 bytes (268,435,455)
//!  string: u16 length + UTF-8 (no U+0000, no surrogates)   binary: u16 length + octets
//!  property: id (varint) + value (byte | u16 | u32 | varint | string | binary | pair)
//! ```
//!
//! ## Decoding
//!
//! The protocol version is known only after CONNECT, so a connection decodes its first
//! packet with [`Connect::decode`] (which reads the version from it) and every later one with
//! [`Packet::decode`] and that version:
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use pier_mqtt_wire::{ConnAck, Connect, Packet, Properties, ReasonCode};
//!
//! // mosquitto_pub's CONNECT (3.1.1, client id "c", keep alive 60, clean session)
//! let mut rx = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c"[..]);
//! let connect = Connect::decode_from(&mut rx, 1 << 20)?.expect("whole packet");
//! let version = connect.protocol;
//! let mut tx = BytesMut::new();
//! Packet::ConnAck(ConnAck { session_present: false, reason_code: ReasonCode::Success,
//!                           properties: Properties::default() }).encode(version, &mut tx)?;
//! assert_eq!(&tx[..], b"\x20\x02\x00\x00");
//! rx.extend_from_slice(b"\xc0\x00"); // PINGREQ
//! while let Some(packet) = Packet::decode_from(&mut rx, version, 1 << 20)? {
//!     assert_eq!(packet, Packet::PingReq);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `decode` returns `Ok(None)` until a whole packet is there. The first octet's type and
//! flags are checked as soon as it arrives, and the packet size against the maximum packet
//! size as soon as the remaining length is complete, so nothing is buffered for a packet that
//! will be refused. Every length is checked against the bytes left before anything is
//! allocated; PUBLISH payloads are zero-copy [`bytes::Bytes`] slices of the input.
//!
//! ## Errors
//!
//! A [`DecodeError`] ends the connection. [`DecodeError::reason_code`] is its 5.0 reason
//! code and [`DecodeError::action`] what to send before closing: a 5.0 DISCONNECT with that
//! code (0x81 malformed, 0x82 protocol error, 0x94 topic alias 0, 0x95 packet too large), or
//! nothing for 3.1/3.1.1. A bad first packet is a [`ConnectError`], whose
//! [`ConnectError::action`] answers a 5.0 CONNECT with a CONNACK carrying the reason code and
//! an unknown protocol level with the 3.1.1 CONNACK 0x01. Session rules (a second CONNECT,
//! topic alias ranges, receive maximum, a zero-length client id with clean session 0 in
//! 3.1.1, topic validity) are the server's: the [`topic`] helpers and the reason codes are
//! here for it.
//!
//! Validated against real bytes: `tests/golden.rs` decodes and re-encodes packets captured
//! from RabbitMQ 3.10.8 (3.1 and 3.1.1, both directions), from paho-mqtt's 5.0 client and
//! from mosquitto 2.0 (5.0 server packets), and the 5.0 spec's examples.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![forbid(unsafe_code)]

mod codec;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod packet;
pub mod properties;
mod reason;
pub mod topic;

pub use codec::MAX_VARINT;
pub use error::{ConnectError, DecodeError, EncodeError, ServerAction};
pub use packet::{
    parse_fixed_header, Auth, ConnAck, Connect, Disconnect, FixedHeader, Packet, ProtocolVersion,
    PubReply, Publish, QoS, RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions,
    UnsubAck, Unsubscribe, Will,
};
pub use properties::{Properties, PropertyContext};
pub use reason::{ConnectReturnCode, ReasonCode};

/// The largest packet MQTT can express: 268,435,455 octets of remaining length plus a
/// five-octet fixed header.
pub const MAX_PACKET_SIZE: u32 = MAX_VARINT + 5;
