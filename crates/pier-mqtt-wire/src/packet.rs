//! The fixed header and the fifteen control packets, decoded and encoded for a protocol
//! version.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_binary, put_string, put_varint, varint_len, Reader, MAX_VARINT};
use crate::error::{ConnectError, DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ConnectReturnCode, ReasonCode, ReasonContext};

/// The protocol version a CONNECT negotiates (its protocol name and level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level octet.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The protocol name of the CONNECT.
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            _ => "MQTT",
        }
    }

    /// The version for a CONNECT's protocol name and level: `MQIsdp`/3, `MQTT`/4, `MQTT`/5.
    pub fn from_name_and_level(name: &[u8], level: u8) -> Result<ProtocolVersion, DecodeError> {
        match (name, level) {
            (b"MQIsdp", 3) => Ok(ProtocolVersion::V3_1),
            (b"MQTT", 4) => Ok(ProtocolVersion::V3_1_1),
            (b"MQTT", 5) => Ok(ProtocolVersion::V5),
            (b"MQIsdp" | b"MQTT", l) => Err(DecodeError::UnsupportedProtocolLevel(l)),
            (n, _) => Err(DecodeError::InvalidProtocolName(
                String::from_utf8_lossy(n).into_owned(),
            )),
        }
    }

    fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(b: u8) -> Option<QoS> {
        match b {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Packet type numbers (the high nibble of the first octet).
pub mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

fn type_name(t: u8) -> &'static str {
    match t {
        packet_type::CONNECT => "CONNECT",
        packet_type::CONNACK => "CONNACK",
        packet_type::PUBLISH => "PUBLISH",
        packet_type::PUBACK => "PUBACK",
        packet_type::PUBREC => "PUBREC",
        packet_type::PUBREL => "PUBREL",
        packet_type::PUBCOMP => "PUBCOMP",
        packet_type::SUBSCRIBE => "SUBSCRIBE",
        packet_type::SUBACK => "SUBACK",
        packet_type::UNSUBSCRIBE => "UNSUBSCRIBE",
        packet_type::UNSUBACK => "UNSUBACK",
        packet_type::PINGREQ => "PINGREQ",
        packet_type::PINGRESP => "PINGRESP",
        packet_type::DISCONNECT => "DISCONNECT",
        packet_type::AUTH => "AUTH",
        _ => "reserved",
    }
}

/// The fixed header: packet type, flags and remaining length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: u8,
    pub flags: u8,
    pub remaining_length: u32,
    /// Octets of the fixed header itself (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    /// The whole packet's size: fixed header plus remaining length.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_length as usize
    }
}

/// Parses the fixed header at the start of `buf`: `Ok(None)` until it is complete.
///
/// The type and flags are checked as soon as the first octet is there, and the packet's
/// size against `max_packet_size` (0: no limit but the protocol's) as soon as the
/// remaining length is, so a server never buffers an oversize or malformed packet.
/// AUTH (15) is accepted here; [`Packet::decode`] refuses it before 5.0.
pub fn parse_fixed_header(
    buf: &[u8],
    max_packet_size: u32,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0f;
    check_flags(packet_type, flags)?;
    let mut remaining: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let h = FixedHeader {
                packet_type,
                flags,
                remaining_length: remaining,
                header_len: 2 + i,
            };
            let size = h.packet_len() as u64;
            if max_packet_size != 0 && size > u64::from(max_packet_size) {
                return Err(DecodeError::PacketTooLarge {
                    size,
                    max: max_packet_size,
                });
            }
            return Ok(Some(h));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

/// §2.1.3 (5.0 table 2-2): the flags each packet type must carry.
fn check_flags(packet_type: u8, flags: u8) -> Result<(), DecodeError> {
    let ok = match packet_type {
        0 => return Err(DecodeError::ReservedPacketType(0)),
        packet_type::PUBLISH => (flags >> 1) & 0b11 != 0b11,
        packet_type::PUBREL | packet_type::SUBSCRIBE | packet_type::UNSUBSCRIBE => flags == 0b0010,
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::InvalidFlags {
            packet: type_name(packet_type),
            flags,
        })
    }
}

/// A CONNECT's will message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (5.0 only): will delay interval, payload format, message expiry,
    /// content type, response topic, correlation data, user properties.
    pub properties: Properties,
    pub topic: String,
    pub payload: Bytes,
}

/// CONNECT (client to server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// *Clean Session* before 5.0, *Clean Start* in 5.0.
    pub clean_start: bool,
    pub keep_alive: u16,
    /// 5.0 only.
    pub properties: Properties,
    /// May be empty (the server then assigns one, or refuses it).
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

/// CONNACK (server to client). `reason_code` is the 5.0 reason code; for 3.1/3.1.1 it is
/// written as the matching return code ([`ConnectReturnCode::from_reason_code`]) and read
/// back as [`ConnectReturnCode::to_reason_code`], so a server builds one CONNACK for every
/// version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason_code: ReasonCode,
    /// 5.0 only.
    pub properties: Properties,
}

/// PUBLISH (both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only with a topic alias (5.0).
    pub topic: String,
    /// Non-zero for QoS 1 and 2; 0 (absent on the wire) for QoS 0.
    pub packet_id: u16,
    /// 5.0 only.
    pub properties: Properties,
    /// Zero-copy slice of the received packet.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP. The reason code and properties are 5.0 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubReply {
    pub packet_id: u16,
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

impl PubReply {
    /// A plain acknowledgement: success, no properties (the 2-octet form).
    pub fn new(packet_id: u16) -> PubReply {
        PubReply {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: Properties::default(),
        }
    }
}

/// Retain handling of a 5.0 subscription (§3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages when subscribing.
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not exist.
    SendAtSubscribeIfNew = 1,
    /// Do not send them.
    DoNotSend = 2,
}

/// The options octet of a subscription. Before 5.0 only `qos` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn decode(b: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
        let qos = QoS::from_u8(b & 0b11).ok_or(DecodeError::Invalid {
            field: "subscription QoS",
            value: u32::from(b),
        })?;
        if !version.is_v5() {
            if b & 0b1111_1100 != 0 {
                return Err(DecodeError::Invalid {
                    field: "subscription options reserved bits",
                    value: u32::from(b),
                });
            }
            return Ok(SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            });
        }
        if b & 0b1100_0000 != 0 {
            return Err(DecodeError::Invalid {
                field: "subscription options reserved bits",
                value: u32::from(b),
            });
        }
        let retain_handling = match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::Protocol("retain handling 3")),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: b & 0b0100 != 0,
            retain_as_published: b & 0b1000 != 0,
            retain_handling,
        })
    }

    fn encode(self, version: ProtocolVersion) -> u8 {
        let mut b = self.qos as u8;
        if version.is_v5() {
            b |= u8::from(self.no_local) << 2;
            b |= u8::from(self.retain_as_published) << 3;
            b |= (self.retain_handling as u8) << 4;
        }
        b
    }
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE (client to server). The filters are not validated here (a bad one gets a
/// failure code in SUBACK, not a disconnect): see [`crate::topic::validate_topic_filter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// 5.0 only: at most one subscription identifier, user properties.
    pub properties: Properties,
    /// At least one.
    pub subscriptions: Vec<Subscription>,
}

/// SUBACK (server to client): one code per subscription. Before 5.0 the codes are
/// 0x00/0x01/0x02 (granted QoS) and 0x80 (failure); any 5.0 failure code is written as 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// 5.0 only.
    pub properties: Properties,
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE (client to server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    /// 5.0 only.
    pub properties: Properties,
    /// At least one.
    pub filters: Vec<String>,
}

/// UNSUBACK (server to client). Properties and reason codes are 5.0 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub reason_codes: Vec<ReasonCode>,
}

/// DISCONNECT (both directions in 5.0; client to server before). Reason code and properties
/// are 5.0 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

impl Default for Disconnect {
    fn default() -> Self {
        Disconnect {
            reason_code: ReasonCode::NORMAL_DISCONNECTION,
            properties: Properties::default(),
        }
    }
}

/// AUTH (5.0 only, both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

/// An MQTT control packet, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Boxed: with two property blocks it is several times larger than the other packets.
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubReply),
    PubRec(PubReply),
    PubRel(PubReply),
    PubComp(PubReply),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

fn nonzero_packet_id(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    let id = r.u16("packet identifier")?;
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    Ok(id)
}

fn finish(r: &Reader<'_>, packet: &'static str) -> Result<(), DecodeError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes {
            packet,
            count: r.remaining(),
        })
    }
}

fn reason(
    r: &mut Reader<'_>,
    ctx: ReasonContext,
    field: &'static str,
) -> Result<ReasonCode, DecodeError> {
    let b = r.u8(field)?;
    ReasonCode::from_u8(b)
        .filter(|c| c.allowed_in(ctx))
        .ok_or(DecodeError::Invalid {
            field,
            value: u32::from(b),
        })
}

/// Splits the packet at the start of `buf` off it, once it is whole.
fn split(buf: &Bytes, max: u32) -> Result<Option<(FixedHeader, Bytes, usize)>, DecodeError> {
    let Some(h) = parse_fixed_header(buf, max)? else {
        return Ok(None);
    };
    let n = h.packet_len();
    if buf.len() < n {
        return Ok(None);
    }
    Ok(Some((h, buf.slice(h.header_len..n), n)))
}

fn split_mut(buf: &mut BytesMut, max: u32) -> Result<Option<(FixedHeader, Bytes)>, DecodeError> {
    let Some(h) = parse_fixed_header(buf, max)? else {
        return Ok(None);
    };
    let n = h.packet_len();
    if buf.len() < n {
        return Ok(None);
    }
    let mut packet = buf.split_to(n).freeze();
    let body = packet.split_off(h.header_len);
    Ok(Some((h, body)))
}

impl Connect {
    /// Decodes a connection's first packet, which must be a CONNECT; `Ok(None)` until it is
    /// whole. Works without knowing the version: the CONNECT announces it.
    pub fn decode(
        buf: &Bytes,
        max_packet_size: u32,
    ) -> Result<Option<(Connect, usize)>, ConnectError> {
        let no_version = |error| ConnectError {
            version: None,
            error,
        };
        if let Some(&first) = buf.first() {
            if first >> 4 != packet_type::CONNECT {
                return Err(no_version(DecodeError::ExpectedConnect(first >> 4)));
            }
        }
        match split(buf, max_packet_size).map_err(no_version)? {
            None => Ok(None),
            Some((_, body, n)) => Ok(Some((Connect::decode_body(&body)?, n))),
        }
    }

    /// Like [`Connect::decode`], splitting the packet off a receive buffer.
    pub fn decode_from(
        buf: &mut BytesMut,
        max_packet_size: u32,
    ) -> Result<Option<Connect>, ConnectError> {
        let no_version = |error| ConnectError {
            version: None,
            error,
        };
        if let Some(&first) = buf.first() {
            if first >> 4 != packet_type::CONNECT {
                return Err(no_version(DecodeError::ExpectedConnect(first >> 4)));
            }
        }
        match split_mut(buf, max_packet_size).map_err(no_version)? {
            None => Ok(None),
            Some((_, body)) => Connect::decode_body(&body).map(Some),
        }
    }

    /// Decodes a CONNECT's variable header and payload (the packet after its fixed header).
    pub fn decode_body(body: &Bytes) -> Result<Connect, ConnectError> {
        let mut r = Reader::new(body);
        let name_len = r.u16("protocol name").map_err(|error| ConnectError {
            version: None,
            error,
        })?;
        let name = r
            .take(usize::from(name_len), "protocol name")
            .map_err(|error| ConnectError {
                version: None,
                error,
            })?;
        let level = r.u8("protocol level").map_err(|error| ConnectError {
            version: None,
            error,
        })?;
        let version =
            ProtocolVersion::from_name_and_level(&name, level).map_err(|error| ConnectError {
                version: None,
                error,
            })?;
        Connect::decode_rest(&mut r, version).map_err(|error| ConnectError {
            version: Some(version),
            error,
        })
    }

    fn decode_rest(r: &mut Reader<'_>, protocol: ProtocolVersion) -> Result<Connect, DecodeError> {
        let flags = r.u8("connect flags")?;
        // 3.1 did not reserve the bit; 3.1.1 and 5.0 require it to be 0 (§3.1.2.3).
        if flags & 0x01 != 0 && protocol != ProtocolVersion::V3_1 {
            return Err(DecodeError::Invalid {
                field: "connect flags reserved bit",
                value: u32::from(flags),
            });
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos_bits = (flags >> 3) & 0b11;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::Invalid {
            field: "will QoS",
            value: u32::from(will_qos_bits),
        })?;
        if !will_flag && (will_qos_bits != 0 || will_retain) {
            return Err(DecodeError::Invalid {
                field: "will QoS/retain without will flag",
                value: u32::from(flags),
            });
        }
        if password_flag && !username_flag && !protocol.is_v5() {
            return Err(DecodeError::Invalid {
                field: "password flag without user name flag",
                value: u32::from(flags),
            });
        }
        let keep_alive = r.u16("keep alive")?;
        let properties = if protocol.is_v5() {
            Properties::decode(r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let client_id = r.string("client identifier")?;
        let will = if will_flag {
            let properties = if protocol.is_v5() {
                Properties::decode(r, PropertyContext::Will)?
            } else {
                Properties::default()
            };
            let topic = r.string("will topic")?;
            let payload = r.binary("will payload")?;
            Some(Will {
                qos: will_qos,
                retain: will_retain,
                properties,
                topic,
                payload,
            })
        } else {
            None
        };
        let username = if username_flag {
            Some(r.string("user name")?)
        } else {
            None
        };
        let password = if password_flag {
            Some(r.binary("password")?)
        } else {
            None
        };
        finish(r, "CONNECT")?;
        Ok(Connect {
            protocol,
            clean_start,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }
}

impl Packet {
    /// Decodes the packet at the start of `buf` on a connection of `version`; `Ok(None)`
    /// until it is whole. Returns the packet and the octets it took. `max_packet_size`
    /// (0: no limit but the protocol's 268,435,460) is checked from the fixed header.
    pub fn decode(
        buf: &Bytes,
        version: ProtocolVersion,
        max_packet_size: u32,
    ) -> Result<Option<(Packet, usize)>, DecodeError> {
        if let Some(&first) = buf.first() {
            check_type(first >> 4, version)?;
        }
        match split(buf, max_packet_size)? {
            None => Ok(None),
            Some((h, body, n)) => Ok(Some((Packet::decode_body(&h, &body, version)?, n))),
        }
    }

    /// Like [`Packet::decode`], splitting the packet off a receive buffer (zero-copy).
    pub fn decode_from(
        buf: &mut BytesMut,
        version: ProtocolVersion,
        max_packet_size: u32,
    ) -> Result<Option<Packet>, DecodeError> {
        if let Some(&first) = buf.first() {
            check_type(first >> 4, version)?;
        }
        match split_mut(buf, max_packet_size)? {
            None => Ok(None),
            Some((h, body)) => Packet::decode_body(&h, &body, version).map(Some),
        }
    }

    /// Decodes a packet's variable header and payload, given its fixed header.
    pub fn decode_body(
        h: &FixedHeader,
        body: &Bytes,
        version: ProtocolVersion,
    ) -> Result<Packet, DecodeError> {
        check_type(h.packet_type, version)?;
        check_flags(h.packet_type, h.flags)?;
        let v5 = version.is_v5();
        let mut r = Reader::new(body);
        let r = &mut r;
        let packet = match h.packet_type {
            packet_type::CONNECT => {
                let c = Connect::decode_body(body).map_err(|e| e.error)?;
                return Ok(Packet::Connect(Box::new(c)));
            }
            packet_type::CONNACK => {
                let flags = r.u8("connect acknowledge flags")?;
                if flags & 0xfe != 0 {
                    return Err(DecodeError::Invalid {
                        field: "connect acknowledge flags",
                        value: u32::from(flags),
                    });
                }
                let reason_code = if v5 {
                    reason(r, ReasonContext::ConnAck, "CONNACK reason code")?
                } else {
                    let b = r.u8("CONNACK return code")?;
                    ConnectReturnCode::from_u8(b)
                        .ok_or(DecodeError::Invalid {
                            field: "CONNACK return code",
                            value: u32::from(b),
                        })?
                        .to_reason_code()
                };
                let properties = if v5 {
                    Properties::decode(r, PropertyContext::ConnAck)?
                } else {
                    Properties::default()
                };
                Packet::ConnAck(ConnAck {
                    session_present: flags & 1 != 0,
                    reason_code,
                    properties,
                })
            }
            packet_type::PUBLISH => {
                let qos = QoS::from_u8((h.flags >> 1) & 0b11).ok_or(DecodeError::InvalidFlags {
                    packet: "PUBLISH",
                    flags: h.flags,
                })?;
                let topic = r.string("topic name")?;
                let packet_id = if qos == QoS::AtMostOnce {
                    0
                } else {
                    nonzero_packet_id(r)?
                };
                let properties = if v5 {
                    Properties::decode(r, PropertyContext::Publish)?
                } else {
                    Properties::default()
                };
                Packet::Publish(Publish {
                    dup: h.flags & 0b1000 != 0,
                    qos,
                    retain: h.flags & 1 != 0,
                    topic,
                    packet_id,
                    properties,
                    payload: r.rest(),
                })
            }
            t @ (packet_type::PUBACK
            | packet_type::PUBREC
            | packet_type::PUBREL
            | packet_type::PUBCOMP) => {
                let packet_id = nonzero_packet_id(r)?;
                let ctx = if t == packet_type::PUBACK || t == packet_type::PUBREC {
                    ReasonContext::PubAckRec
                } else {
                    ReasonContext::PubRelComp
                };
                let mut reply = PubReply::new(packet_id);
                if v5 && !r.is_empty() {
                    reply.reason_code = reason(r, ctx, "reason code")?;
                    if !r.is_empty() {
                        reply.properties = Properties::decode(r, PropertyContext::PubReply)?;
                    }
                }
                finish(r, type_name(t))?;
                match t {
                    packet_type::PUBACK => Packet::PubAck(reply),
                    packet_type::PUBREC => Packet::PubRec(reply),
                    packet_type::PUBREL => Packet::PubRel(reply),
                    _ => Packet::PubComp(reply),
                }
            }
            packet_type::SUBSCRIBE => {
                let packet_id = nonzero_packet_id(r)?;
                let properties = if v5 {
                    Properties::decode(r, PropertyContext::Subscribe)?
                } else {
                    Properties::default()
                };
                let mut subscriptions = Vec::new();
                while !r.is_empty() {
                    let filter = r.string("topic filter")?;
                    let options =
                        SubscriptionOptions::decode(r.u8("subscription options")?, version)?;
                    subscriptions.push(Subscription { filter, options });
                }
                if subscriptions.is_empty() {
                    return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
                }
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties,
                    subscriptions,
                })
            }
            packet_type::SUBACK => {
                let packet_id = nonzero_packet_id(r)?;
                let properties = if v5 {
                    Properties::decode(r, PropertyContext::SubAck)?
                } else {
                    Properties::default()
                };
                let mut reason_codes = Vec::with_capacity(r.remaining());
                while !r.is_empty() {
                    let code = if v5 {
                        reason(r, ReasonContext::SubAck, "SUBACK reason code")?
                    } else {
                        match r.u8("SUBACK return code")? {
                            0 => ReasonCode::GRANTED_QOS_0,
                            1 => ReasonCode::GrantedQos1,
                            2 => ReasonCode::GrantedQos2,
                            0x80 => ReasonCode::UnspecifiedError,
                            b => {
                                return Err(DecodeError::Invalid {
                                    field: "SUBACK return code",
                                    value: u32::from(b),
                                })
                            }
                        }
                    };
                    reason_codes.push(code);
                }
                Packet::SubAck(SubAck {
                    packet_id,
                    properties,
                    reason_codes,
                })
            }
            packet_type::UNSUBSCRIBE => {
                let packet_id = nonzero_packet_id(r)?;
                let properties = if v5 {
                    Properties::decode(r, PropertyContext::Unsubscribe)?
                } else {
                    Properties::default()
                };
                let mut filters = Vec::new();
                while !r.is_empty() {
                    filters.push(r.string("topic filter")?);
                }
                if filters.is_empty() {
                    return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
                }
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties,
                    filters,
                })
            }
            packet_type::UNSUBACK => {
                let packet_id = nonzero_packet_id(r)?;
                let mut ack = UnsubAck {
                    packet_id,
                    properties: Properties::default(),
                    reason_codes: Vec::new(),
                };
                if v5 {
                    ack.properties = Properties::decode(r, PropertyContext::UnsubAck)?;
                    ack.reason_codes.reserve(r.remaining());
                    while !r.is_empty() {
                        ack.reason_codes.push(reason(
                            r,
                            ReasonContext::UnsubAck,
                            "UNSUBACK reason code",
                        )?);
                    }
                }
                finish(r, "UNSUBACK")?;
                Packet::UnsubAck(ack)
            }
            packet_type::PINGREQ => {
                finish(r, "PINGREQ")?;
                Packet::PingReq
            }
            packet_type::PINGRESP => {
                finish(r, "PINGRESP")?;
                Packet::PingResp
            }
            packet_type::DISCONNECT => {
                let mut d = Disconnect::default();
                if v5 && !r.is_empty() {
                    d.reason_code = reason(r, ReasonContext::Disconnect, "DISCONNECT reason code")?;
                    if !r.is_empty() {
                        d.properties = Properties::decode(r, PropertyContext::Disconnect)?;
                    }
                }
                finish(r, "DISCONNECT")?;
                Packet::Disconnect(d)
            }
            packet_type::AUTH => {
                let mut a = Auth {
                    reason_code: ReasonCode::Success,
                    properties: Properties::default(),
                };
                if !r.is_empty() {
                    a.reason_code = reason(r, ReasonContext::Auth, "AUTH reason code")?;
                    // Lenient like DISCONNECT: a lone reason code means no properties.
                    if !r.is_empty() {
                        a.properties = Properties::decode(r, PropertyContext::Auth)?;
                    }
                }
                finish(r, "AUTH")?;
                Packet::Auth(a)
            }
            t => return Err(DecodeError::ReservedPacketType(t)),
        };
        if let Packet::Publish(_)
        | Packet::Subscribe(_)
        | Packet::Unsubscribe(_)
        | Packet::SubAck(_) = &packet
        {
            // Their payloads run to the end of the packet.
        } else {
            finish(r, type_name(h.packet_type))?;
        }
        Ok(packet)
    }

    /// The packet type number.
    pub fn packet_type(&self) -> u8 {
        match self {
            Packet::Connect(_) => packet_type::CONNECT,
            Packet::ConnAck(_) => packet_type::CONNACK,
            Packet::Publish(_) => packet_type::PUBLISH,
            Packet::PubAck(_) => packet_type::PUBACK,
            Packet::PubRec(_) => packet_type::PUBREC,
            Packet::PubRel(_) => packet_type::PUBREL,
            Packet::PubComp(_) => packet_type::PUBCOMP,
            Packet::Subscribe(_) => packet_type::SUBSCRIBE,
            Packet::SubAck(_) => packet_type::SUBACK,
            Packet::Unsubscribe(_) => packet_type::UNSUBSCRIBE,
            Packet::UnsubAck(_) => packet_type::UNSUBACK,
            Packet::PingReq => packet_type::PINGREQ,
            Packet::PingResp => packet_type::PINGRESP,
            Packet::Disconnect(_) => packet_type::DISCONNECT,
            Packet::Auth(_) => packet_type::AUTH,
        }
    }

    /// The packet's name as the spec writes it (`"PUBLISH"`).
    pub fn name(&self) -> &'static str {
        type_name(self.packet_type())
    }

    /// Encodes the packet for a connection of `version`. Fields the version has no place
    /// for (properties and reason codes before 5.0, 5.0 subscription options) are not
    /// written; a value the version cannot express at all (AUTH, a CONNACK reason code with
    /// no 3.1.1 return code) is an error, and nothing is written then.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let (first, head, payload) = self.parts(version)?;
        let remaining = head.len() + payload.len();
        if remaining > MAX_VARINT as usize {
            return Err(EncodeError::TooLong {
                what: "packet",
                len: remaining,
            });
        }
        out.reserve(1 + varint_len(remaining as u32) + remaining);
        out.put_u8(first);
        put_varint(out, remaining as u32, "remaining length")?;
        out.put_slice(&head);
        out.put_slice(&payload);
        Ok(())
    }

    /// The octets [`Packet::encode`] writes (to check a peer's maximum packet size before
    /// sending).
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let (_, head, payload) = self.parts(version)?;
        let remaining = head.len() + payload.len();
        if remaining > MAX_VARINT as usize {
            return Err(EncodeError::TooLong {
                what: "packet",
                len: remaining,
            });
        }
        Ok(1 + varint_len(remaining as u32) + remaining)
    }

    /// The first octet, the variable header (and small payloads), and the large payload
    /// (PUBLISH), kept apart so it is not copied twice.
    fn parts(&self, version: ProtocolVersion) -> Result<(u8, BytesMut, Bytes), EncodeError> {
        let v5 = version.is_v5();
        let mut b = BytesMut::new();
        let mut payload = Bytes::new();
        let t = self.packet_type();
        let mut flags = match t {
            packet_type::PUBREL | packet_type::SUBSCRIBE | packet_type::UNSUBSCRIBE => 0b0010,
            _ => 0,
        };
        match self {
            Packet::Connect(c) => c.encode(&mut b)?,
            Packet::ConnAck(c) => {
                b.put_u8(u8::from(c.session_present));
                if v5 {
                    check_reason(c.reason_code, ReasonContext::ConnAck, "CONNACK")?;
                    b.put_u8(c.reason_code.code());
                    c.properties.encode(&mut b, PropertyContext::ConnAck)?;
                } else {
                    let rc = ConnectReturnCode::from_reason_code(c.reason_code).ok_or(
                        EncodeError::ReasonCodeNotAllowed {
                            code: c.reason_code,
                            packet: "3.1.1 CONNACK",
                        },
                    )?;
                    b.put_u8(rc.code());
                }
            }
            Packet::Publish(p) => {
                flags = (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain);
                put_string(&mut b, &p.topic, "topic name")?;
                match (p.qos, p.packet_id) {
                    (QoS::AtMostOnce, 0) => {}
                    (QoS::AtMostOnce, _) => {
                        return Err(EncodeError::Invalid("packet identifier on a QoS 0 PUBLISH"))
                    }
                    (_, 0) => return Err(EncodeError::Invalid("packet identifier 0")),
                    (_, id) => b.put_u16(id),
                }
                if v5 {
                    p.properties.encode(&mut b, PropertyContext::Publish)?;
                }
                payload = p.payload.clone();
            }
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                if a.packet_id == 0 {
                    return Err(EncodeError::Invalid("packet identifier 0"));
                }
                b.put_u16(a.packet_id);
                if v5 {
                    let ctx = if t == packet_type::PUBACK || t == packet_type::PUBREC {
                        ReasonContext::PubAckRec
                    } else {
                        ReasonContext::PubRelComp
                    };
                    check_reason(a.reason_code, ctx, type_name(t))?;
                    // The short forms of §3.4.2.1: omit what is the default.
                    if a.reason_code != ReasonCode::Success || !a.properties.is_empty() {
                        b.put_u8(a.reason_code.code());
                        if !a.properties.is_empty() {
                            a.properties.encode(&mut b, PropertyContext::PubReply)?;
                        }
                    }
                }
            }
            Packet::Subscribe(s) => {
                if s.packet_id == 0 {
                    return Err(EncodeError::Invalid("packet identifier 0"));
                }
                if s.subscriptions.is_empty() {
                    return Err(EncodeError::Invalid("SUBSCRIBE without a topic filter"));
                }
                b.put_u16(s.packet_id);
                if v5 {
                    s.properties.encode(&mut b, PropertyContext::Subscribe)?;
                }
                for sub in &s.subscriptions {
                    put_string(&mut b, &sub.filter, "topic filter")?;
                    b.put_u8(sub.options.encode(version));
                }
            }
            Packet::SubAck(s) => {
                if s.packet_id == 0 {
                    return Err(EncodeError::Invalid("packet identifier 0"));
                }
                b.put_u16(s.packet_id);
                if v5 {
                    s.properties.encode(&mut b, PropertyContext::SubAck)?;
                }
                for rc in &s.reason_codes {
                    check_reason(*rc, ReasonContext::SubAck, "SUBACK")?;
                    let code = if v5 || !rc.is_error() {
                        rc.code()
                    } else {
                        0x80
                    };
                    b.put_u8(code);
                }
            }
            Packet::Unsubscribe(u) => {
                if u.packet_id == 0 {
                    return Err(EncodeError::Invalid("packet identifier 0"));
                }
                if u.filters.is_empty() {
                    return Err(EncodeError::Invalid("UNSUBSCRIBE without a topic filter"));
                }
                b.put_u16(u.packet_id);
                if v5 {
                    u.properties.encode(&mut b, PropertyContext::Unsubscribe)?;
                }
                for f in &u.filters {
                    put_string(&mut b, f, "topic filter")?;
                }
            }
            Packet::UnsubAck(u) => {
                if u.packet_id == 0 {
                    return Err(EncodeError::Invalid("packet identifier 0"));
                }
                b.put_u16(u.packet_id);
                if v5 {
                    u.properties.encode(&mut b, PropertyContext::UnsubAck)?;
                    for rc in &u.reason_codes {
                        check_reason(*rc, ReasonContext::UnsubAck, "UNSUBACK")?;
                        b.put_u8(rc.code());
                    }
                }
            }
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(d) => {
                if v5 {
                    check_reason(d.reason_code, ReasonContext::Disconnect, "DISCONNECT")?;
                    if d.reason_code != ReasonCode::Success || !d.properties.is_empty() {
                        b.put_u8(d.reason_code.code());
                        if !d.properties.is_empty() {
                            d.properties.encode(&mut b, PropertyContext::Disconnect)?;
                        }
                    }
                }
            }
            Packet::Auth(a) => {
                if !v5 {
                    return Err(EncodeError::Invalid("AUTH before MQTT 5.0"));
                }
                check_reason(a.reason_code, ReasonContext::Auth, "AUTH")?;
                // §3.15.2.1: both may be omitted only together.
                if a.reason_code != ReasonCode::Success || !a.properties.is_empty() {
                    b.put_u8(a.reason_code.code());
                    a.properties.encode(&mut b, PropertyContext::Auth)?;
                }
            }
        }
        Ok(((t << 4) | flags, b, payload))
    }
}

impl Connect {
    fn encode(&self, b: &mut BytesMut) -> Result<(), EncodeError> {
        let v5 = self.protocol.is_v5();
        put_string(b, self.protocol.protocol_name(), "protocol name")?;
        b.put_u8(self.protocol.level());
        if self.password.is_some() && self.username.is_none() && !v5 {
            return Err(EncodeError::Invalid(
                "password without user name before 5.0",
            ));
        }
        let mut flags = u8::from(self.clean_start) << 1;
        if let Some(w) = &self.will {
            flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        b.put_u8(flags);
        b.put_u16(self.keep_alive);
        if v5 {
            self.properties.encode(b, PropertyContext::Connect)?;
        }
        put_string(b, &self.client_id, "client identifier")?;
        if let Some(w) = &self.will {
            if v5 {
                w.properties.encode(b, PropertyContext::Will)?;
            }
            put_string(b, &w.topic, "will topic")?;
            put_binary(b, &w.payload, "will payload")?;
        }
        if let Some(u) = &self.username {
            put_string(b, u, "user name")?;
        }
        if let Some(p) = &self.password {
            put_binary(b, p, "password")?;
        }
        Ok(())
    }
}

fn check_reason(
    rc: ReasonCode,
    ctx: ReasonContext,
    packet: &'static str,
) -> Result<(), EncodeError> {
    if rc.allowed_in(ctx) {
        Ok(())
    } else {
        Err(EncodeError::ReasonCodeNotAllowed { code: rc, packet })
    }
}

/// AUTH exists only in 5.0; type 0 never.
fn check_type(t: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    if t == 0 || (t == packet_type::AUTH && !version.is_v5()) {
        Err(DecodeError::ReservedPacketType(t))
    } else {
        Ok(())
    }
}
