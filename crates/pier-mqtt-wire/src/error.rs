//! Errors of the codec, and what a server does about each.

use crate::packet::{ConnAck, Disconnect, Packet, ProtocolVersion};
use crate::properties::Properties;
use crate::reason::{ConnectReturnCode, ReasonCode};

/// A packet that could not be decoded. Every decode error is fatal for the connection: the
/// byte stream cannot be trusted after it.
///
/// [`DecodeError::reason_code`] is the MQTT 5.0 reason code the error stands for
/// (0x81 *Malformed Packet*, 0x82 *Protocol Error*, 0x95 *Packet too large*,
/// 0x94 *Topic Alias invalid*, 0x84 *Unsupported Protocol Version*), and
/// [`DecodeError::action`] says what a server does with it on a connection of a given
/// version (see [`ServerAction`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet (fixed header included) is larger than the maximum packet size; found
    /// from the fixed header, before the rest of the packet is buffered.
    #[error("packet of {size} bytes is over the maximum packet size of {max}")]
    PacketTooLarge { size: u64, max: u32 },
    /// The remaining length is not a variable byte integer of at most four octets.
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// Packet type 0, or 15 (AUTH) on a 3.1/3.1.1 connection.
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// The low four bits of the fixed header are not what the packet type requires
    /// (0b0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 for the rest; PUBLISH: QoS 3).
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    /// A field ran past the end of the packet.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Octets were left in the packet after its last field.
    #[error("{count} trailing byte(s) in {packet}")]
    TrailingBytes { packet: &'static str, count: usize },
    /// A string was not well-formed UTF-8 (surrogates included).
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    /// A string contained U+0000.
    #[error("U+0000 in {0}")]
    NullCharacter(&'static str),
    /// A variable byte integer inside the packet ran over four octets.
    #[error("malformed variable byte integer in {0}")]
    MalformedVarInt(&'static str),
    /// A field had a value its type does not allow (a reserved bit, QoS 3, a reason code
    /// not defined for the packet, a property value out of range).
    #[error("invalid {field}: {value}")]
    Invalid { field: &'static str, value: u32 },
    /// A property identifier the spec does not define, or not defined for this packet.
    #[error("property {id:#04x} not allowed in {packet}")]
    PropertyNotAllowed { id: u32, packet: &'static str },
    /// The packet breaks a rule of the protocol (not of its encoding): a property given
    /// twice, packet identifier 0, a SUBSCRIBE with no topic filter, a property value the
    /// spec calls a protocol error (Receive Maximum 0, …).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Topic Alias 0 (5.0 §3.3.2.3.4).
    #[error("topic alias 0")]
    TopicAliasZero,
    /// The first packet on a connection was not a CONNECT.
    #[error("expected CONNECT, got packet type {0}")]
    ExpectedConnect(u8),
    /// The CONNECT's protocol name is not `MQTT` (nor `MQIsdp` with level 3).
    #[error("invalid protocol name {0:?}")]
    InvalidProtocolName(String),
    /// The CONNECT's protocol level is not 3, 4 or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
}

/// What a server does after a [`DecodeError`]. In every case it then closes the network
/// connection; a 3.1/3.1.1 server never says why, except for an unknown protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAction {
    /// Send a 5.0 CONNACK with this reason code, then close (errors in a 5.0 CONNECT).
    ConnAck(ReasonCode),
    /// Send a 3.1/3.1.1 CONNACK with this return code, then close (3.1.1 §3.1.2.2: an
    /// unacceptable protocol level).
    ConnAckV3(ConnectReturnCode),
    /// Send a 5.0 DISCONNECT with this reason code, then close (after CONNECT).
    Disconnect(ReasonCode),
    /// Close without sending anything.
    Close,
}

impl ServerAction {
    /// The packet to send, with the version to encode it for; `None` for [`ServerAction::Close`].
    pub fn packet(self) -> Option<(Packet, ProtocolVersion)> {
        match self {
            ServerAction::ConnAck(rc) => Some((
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason_code: rc,
                    properties: Properties::default(),
                }),
                ProtocolVersion::V5,
            )),
            ServerAction::ConnAckV3(rc) => Some((
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason_code: rc.to_reason_code(),
                    properties: Properties::default(),
                }),
                ProtocolVersion::V3_1_1,
            )),
            ServerAction::Disconnect(rc) => Some((
                Packet::Disconnect(Disconnect {
                    reason_code: rc,
                    properties: Properties::default(),
                }),
                ProtocolVersion::V5,
            )),
            ServerAction::Close => None,
        }
    }
}

impl DecodeError {
    /// The 5.0 reason code for this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::Protocol(_) | DecodeError::ExpectedConnect(_) => ReasonCode::ProtocolError,
            DecodeError::TopicAliasZero => ReasonCode::TopicAliasInvalid,
            DecodeError::InvalidProtocolName(_) | DecodeError::UnsupportedProtocolLevel(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            DecodeError::MalformedRemainingLength
            | DecodeError::ReservedPacketType(_)
            | DecodeError::InvalidFlags { .. }
            | DecodeError::Truncated(_)
            | DecodeError::TrailingBytes { .. }
            | DecodeError::InvalidUtf8(_)
            | DecodeError::NullCharacter(_)
            | DecodeError::MalformedVarInt(_)
            | DecodeError::Invalid { .. }
            | DecodeError::PropertyNotAllowed { .. } => ReasonCode::MalformedPacket,
        }
    }

    /// What a server does about this error, on a connection whose CONNECT has been
    /// accepted with `version`.
    ///
    /// 5.0 (§4.13): DISCONNECT with [`DecodeError::reason_code`], then close.
    /// 3.1/3.1.1 (§4.8 of 3.1.1): close the connection.
    pub fn action(&self, version: ProtocolVersion) -> ServerAction {
        match version {
            ProtocolVersion::V5 => ServerAction::Disconnect(self.reason_code()),
            ProtocolVersion::V3_1 | ProtocolVersion::V3_1_1 => ServerAction::Close,
        }
    }
}

/// An error decoding a connection's first packet, with the protocol version the CONNECT
/// announced when it got that far.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{error}")]
pub struct ConnectError {
    /// The version from the CONNECT's protocol name and level, if they were read and valid.
    pub version: Option<ProtocolVersion>,
    pub error: DecodeError,
}

impl ConnectError {
    /// What a server does about a bad first packet:
    ///
    /// * an unknown protocol level (name `MQTT`, level not 4 or 5; or `MQIsdp` not 3):
    ///   CONNACK with return code 0x01 *unacceptable protocol version* in 3.1.1 format,
    ///   which is what RabbitMQ 3.10.8 sends, then close;
    /// * a protocol name that is neither: close (3.1.1 §3.1.2.1; 5.0 allows a CONNACK 0x84,
    ///   but a client that does not speak MQTT cannot read it);
    /// * a 5.0 CONNECT that is malformed or too large: CONNACK with the reason code
    ///   (0x81, 0x82, 0x95, …), then close (5.0 §3.1.4, §4.13);
    /// * anything else (3.1/3.1.1, or the version not read yet): close.
    pub fn action(&self) -> ServerAction {
        match (&self.error, self.version) {
            (DecodeError::UnsupportedProtocolLevel(_), _) => {
                ServerAction::ConnAckV3(ConnectReturnCode::UnacceptableProtocolVersion)
            }
            (DecodeError::InvalidProtocolName(_), _) => ServerAction::Close,
            (e, Some(ProtocolVersion::V5)) => ServerAction::ConnAck(e.reason_code()),
            _ => ServerAction::Close,
        }
    }
}

/// A packet that cannot be encoded; nothing is written when it happens.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or binary field longer than 65,535 octets, a variable byte integer or
    /// remaining length over 268,435,455.
    #[error("{what} too long: {len}")]
    TooLong { what: &'static str, len: usize },
    /// A string with U+0000 in it.
    #[error("U+0000 in {0}")]
    NullCharacter(&'static str),
    /// A property the packet cannot carry.
    #[error("property {id:#04x} not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    /// A reason code the packet cannot carry (in this version).
    #[error("reason code {code} not allowed in {packet}")]
    ReasonCodeNotAllowed {
        code: ReasonCode,
        packet: &'static str,
    },
    /// A packet or field the version does not have, or a value the peer would reject
    /// (packet identifier 0 where one is needed, a QoS 0 PUBLISH with one, a password
    /// without a user name before 5.0, an empty SUBSCRIBE).
    #[error("cannot encode: {0}")]
    Invalid(&'static str),
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes() {
        let too_large = DecodeError::PacketTooLarge { size: 10, max: 5 };
        assert_eq!(too_large.reason_code().code(), 0x95);
        assert_eq!(
            too_large.action(ProtocolVersion::V5),
            ServerAction::Disconnect(ReasonCode::PacketTooLarge)
        );
        assert_eq!(
            too_large.action(ProtocolVersion::V3_1_1),
            ServerAction::Close
        );
        assert_eq!(DecodeError::Protocol("x").reason_code().code(), 0x82);
        assert_eq!(DecodeError::Truncated("x").reason_code().code(), 0x81);
        assert_eq!(DecodeError::TopicAliasZero.reason_code().code(), 0x94);
        let level = ConnectError {
            version: None,
            error: DecodeError::UnsupportedProtocolLevel(6),
        };
        assert_eq!(
            level.action(),
            ServerAction::ConnAckV3(ConnectReturnCode::UnacceptableProtocolVersion)
        );
        let v5 = ConnectError {
            version: Some(ProtocolVersion::V5),
            error: DecodeError::Invalid {
                field: "x",
                value: 1,
            },
        };
        assert_eq!(
            v5.action(),
            ServerAction::ConnAck(ReasonCode::MalformedPacket)
        );
        let v4 = ConnectError {
            version: Some(ProtocolVersion::V3_1_1),
            ..v5
        };
        assert_eq!(v4.action(), ServerAction::Close);
        assert!(ServerAction::Close.packet().is_none());
    }
}
