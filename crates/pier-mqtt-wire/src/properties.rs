//! MQTT 5.0 properties (§2.2.2): one struct for every packet, each property checked against
//! the packets the spec allows it in (table 2-4).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_binary, put_string, put_varint, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::packet::QoS;

/// Property identifiers (§2.2.2.2).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Where a property block sits: which properties it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    PubReply,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    fn name(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::Will => "will properties",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::PubReply => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        }
    }

    /// Whether the property with identifier `prop` may appear here (table 2-4 of the spec).
    pub fn allows(self, prop: u8) -> bool {
        use PropertyContext as C;
        match prop {
            id::PAYLOAD_FORMAT_INDICATOR
            | id::MESSAGE_EXPIRY_INTERVAL
            | id::CONTENT_TYPE
            | id::RESPONSE_TOPIC
            | id::CORRELATION_DATA => matches!(self, C::Publish | C::Will),
            id::SUBSCRIPTION_IDENTIFIER => matches!(self, C::Publish | C::Subscribe),
            id::SESSION_EXPIRY_INTERVAL => matches!(self, C::Connect | C::ConnAck | C::Disconnect),
            id::ASSIGNED_CLIENT_IDENTIFIER
            | id::SERVER_KEEP_ALIVE
            | id::RESPONSE_INFORMATION
            | id::MAXIMUM_QOS
            | id::RETAIN_AVAILABLE
            | id::WILDCARD_SUBSCRIPTION_AVAILABLE
            | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | id::SHARED_SUBSCRIPTION_AVAILABLE => self == C::ConnAck,
            id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => {
                matches!(self, C::Connect | C::ConnAck | C::Auth)
            }
            id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => {
                self == C::Connect
            }
            id::WILL_DELAY_INTERVAL => self == C::Will,
            id::SERVER_REFERENCE => matches!(self, C::ConnAck | C::Disconnect),
            id::REASON_STRING => matches!(
                self,
                C::ConnAck | C::PubReply | C::SubAck | C::UnsubAck | C::Disconnect | C::Auth
            ),
            id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
                matches!(self, C::Connect | C::ConnAck)
            }
            id::TOPIC_ALIAS => self == C::Publish,
            id::USER_PROPERTY => true,
            _ => false,
        }
    }
}

/// The properties of one packet (or of a CONNECT's will). Every field is optional; which
/// ones a packet may carry is checked when decoding and encoding (table 2-4). Properties are
/// written in identifier order; user properties keep their order (the spec requires it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01, PUBLISH/will: `false` unspecified bytes, `true` UTF-8.
    pub payload_format_indicator: Option<bool>,
    /// 0x02, PUBLISH/will, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH/will.
    pub content_type: Option<String>,
    /// 0x08, PUBLISH/will.
    pub response_topic: Option<String>,
    /// 0x09, PUBLISH/will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: one in SUBSCRIBE, any number in PUBLISH (server to client); 1..=268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT/CONNACK/DISCONNECT, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<String>,
    /// 0x13, CONNACK, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT/CONNACK/AUTH.
    pub authentication_method: Option<String>,
    /// 0x16, CONNECT/CONNACK/AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT.
    pub request_problem_information: Option<bool>,
    /// 0x18, will, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT.
    pub request_response_information: Option<bool>,
    /// 0x1A, CONNACK.
    pub response_information: Option<String>,
    /// 0x1C, CONNACK/DISCONNECT.
    pub server_reference: Option<String>,
    /// 0x1F, every acknowledgement, DISCONNECT and AUTH.
    pub reason_string: Option<String>,
    /// 0x21, CONNECT/CONNACK, not 0.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT/CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH, not 0.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK: QoS 0 or 1 (absent means 2).
    pub maximum_qos: Option<QoS>,
    /// 0x25, CONNACK.
    pub retain_available: Option<bool>,
    /// 0x26, every packet that has properties; order kept, names may repeat.
    pub user_properties: Vec<(String, String)>,
    /// 0x27, CONNECT/CONNACK, not 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29, CONNACK.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A, CONNACK.
    pub shared_subscription_available: Option<bool>,
}

fn set_once<T>(slot: &mut Option<T>, v: T, what: &'static str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol(what));
    }
    *slot = Some(v);
    Ok(())
}

/// A byte property that must be 0 or 1 (a protocol error otherwise, e.g. §3.1.2.11.6).
fn flag(r: &mut Reader<'_>, what: &'static str) -> Result<bool, DecodeError> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Protocol(what)),
    }
}

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property length and the block it covers.
    pub(crate) fn decode(
        r: &mut Reader<'_>,
        ctx: PropertyContext,
    ) -> Result<Properties, DecodeError> {
        let len = r.varint("property length")?;
        let mut p = r.sub(len as usize, "properties")?;
        let mut out = Properties::default();
        while !p.is_empty() {
            let prop = p.varint("property identifier")?;
            let known = u8::try_from(prop).ok().filter(|b| ctx.allows(*b));
            let Some(prop) = known else {
                return Err(DecodeError::PropertyNotAllowed {
                    id: prop,
                    packet: ctx.name(),
                });
            };
            let p = &mut p;
            match prop {
                id::PAYLOAD_FORMAT_INDICATOR => {
                    let v = flag(p, "payload format indicator")?;
                    set_once(
                        &mut out.payload_format_indicator,
                        v,
                        "payload format indicator twice",
                    )?
                }
                id::MESSAGE_EXPIRY_INTERVAL => {
                    let v = p.u32("message expiry interval")?;
                    set_once(
                        &mut out.message_expiry_interval,
                        v,
                        "message expiry interval twice",
                    )?
                }
                id::CONTENT_TYPE => {
                    let v = p.string("content type")?;
                    set_once(&mut out.content_type, v, "content type twice")?
                }
                id::RESPONSE_TOPIC => {
                    let v = p.string("response topic")?;
                    set_once(&mut out.response_topic, v, "response topic twice")?
                }
                id::CORRELATION_DATA => {
                    let v = p.binary("correlation data")?;
                    set_once(&mut out.correlation_data, v, "correlation data twice")?
                }
                id::SUBSCRIPTION_IDENTIFIER => {
                    let v = p.varint("subscription identifier")?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if ctx == PropertyContext::Subscribe && !out.subscription_identifiers.is_empty()
                    {
                        return Err(DecodeError::Protocol("subscription identifier twice"));
                    }
                    out.subscription_identifiers.push(v);
                }
                id::SESSION_EXPIRY_INTERVAL => {
                    let v = p.u32("session expiry interval")?;
                    set_once(
                        &mut out.session_expiry_interval,
                        v,
                        "session expiry interval twice",
                    )?
                }
                id::ASSIGNED_CLIENT_IDENTIFIER => {
                    let v = p.string("assigned client identifier")?;
                    set_once(
                        &mut out.assigned_client_identifier,
                        v,
                        "assigned client identifier twice",
                    )?
                }
                id::SERVER_KEEP_ALIVE => {
                    let v = p.u16("server keep alive")?;
                    set_once(&mut out.server_keep_alive, v, "server keep alive twice")?
                }
                id::AUTHENTICATION_METHOD => {
                    let v = p.string("authentication method")?;
                    set_once(
                        &mut out.authentication_method,
                        v,
                        "authentication method twice",
                    )?
                }
                id::AUTHENTICATION_DATA => {
                    let v = p.binary("authentication data")?;
                    set_once(&mut out.authentication_data, v, "authentication data twice")?
                }
                id::REQUEST_PROBLEM_INFORMATION => {
                    let v = flag(p, "request problem information")?;
                    set_once(
                        &mut out.request_problem_information,
                        v,
                        "request problem information twice",
                    )?
                }
                id::WILL_DELAY_INTERVAL => {
                    let v = p.u32("will delay interval")?;
                    set_once(&mut out.will_delay_interval, v, "will delay interval twice")?
                }
                id::REQUEST_RESPONSE_INFORMATION => {
                    let v = flag(p, "request response information")?;
                    set_once(
                        &mut out.request_response_information,
                        v,
                        "request response information twice",
                    )?
                }
                id::RESPONSE_INFORMATION => {
                    let v = p.string("response information")?;
                    set_once(
                        &mut out.response_information,
                        v,
                        "response information twice",
                    )?
                }
                id::SERVER_REFERENCE => {
                    let v = p.string("server reference")?;
                    set_once(&mut out.server_reference, v, "server reference twice")?
                }
                id::REASON_STRING => {
                    let v = p.string("reason string")?;
                    set_once(&mut out.reason_string, v, "reason string twice")?
                }
                id::RECEIVE_MAXIMUM => {
                    let v = p.u16("receive maximum")?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set_once(&mut out.receive_maximum, v, "receive maximum twice")?
                }
                id::TOPIC_ALIAS_MAXIMUM => {
                    let v = p.u16("topic alias maximum")?;
                    set_once(&mut out.topic_alias_maximum, v, "topic alias maximum twice")?
                }
                id::TOPIC_ALIAS => {
                    let v = p.u16("topic alias")?;
                    if v == 0 {
                        return Err(DecodeError::TopicAliasZero);
                    }
                    set_once(&mut out.topic_alias, v, "topic alias twice")?
                }
                id::MAXIMUM_QOS => {
                    let v = match p.u8("maximum QoS")? {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => return Err(DecodeError::Protocol("maximum QoS not 0 or 1")),
                    };
                    set_once(&mut out.maximum_qos, v, "maximum QoS twice")?
                }
                id::RETAIN_AVAILABLE => {
                    let v = flag(p, "retain available")?;
                    set_once(&mut out.retain_available, v, "retain available twice")?
                }
                id::USER_PROPERTY => {
                    let k = p.string("user property name")?;
                    let v = p.string("user property value")?;
                    out.user_properties.push((k, v));
                }
                id::MAXIMUM_PACKET_SIZE => {
                    let v = p.u32("maximum packet size")?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set_once(&mut out.maximum_packet_size, v, "maximum packet size twice")?
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    let v = flag(p, "wildcard subscription available")?;
                    set_once(
                        &mut out.wildcard_subscription_available,
                        v,
                        "wildcard subscription available twice",
                    )?
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    let v = flag(p, "subscription identifier available")?;
                    set_once(
                        &mut out.subscription_identifier_available,
                        v,
                        "subscription identifier available twice",
                    )?
                }
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    let v = flag(p, "shared subscription available")?;
                    set_once(
                        &mut out.shared_subscription_available,
                        v,
                        "shared subscription available twice",
                    )?
                }
                other => {
                    return Err(DecodeError::PropertyNotAllowed {
                        id: u32::from(other),
                        packet: ctx.name(),
                    })
                }
            }
        }
        // §3.1.2.11.10, §3.2.2.3.18, §3.15.2.2.3: data without a method.
        if out.authentication_data.is_some() && out.authentication_method.is_none() {
            return Err(DecodeError::Protocol(
                "authentication data without a method",
            ));
        }
        Ok(out)
    }

    /// Writes the property length and the properties.
    pub(crate) fn encode(
        &self,
        out: &mut BytesMut,
        ctx: PropertyContext,
    ) -> Result<(), EncodeError> {
        let mut b = BytesMut::new();
        self.encode_body(&mut b, ctx)?;
        put_varint(out, b.len() as u32, "property length")?;
        out.put_slice(&b);
        Ok(())
    }

    fn encode_body(&self, b: &mut BytesMut, ctx: PropertyContext) -> Result<(), EncodeError> {
        let check = |prop: u8| -> Result<(), EncodeError> {
            if ctx.allows(prop) {
                Ok(())
            } else {
                Err(EncodeError::PropertyNotAllowed {
                    id: prop,
                    packet: ctx.name(),
                })
            }
        };
        if let Some(v) = self.payload_format_indicator {
            check(id::PAYLOAD_FORMAT_INDICATOR)?;
            b.put_u8(id::PAYLOAD_FORMAT_INDICATOR);
            b.put_u8(u8::from(v));
        }
        if let Some(v) = self.message_expiry_interval {
            check(id::MESSAGE_EXPIRY_INTERVAL)?;
            b.put_u8(id::MESSAGE_EXPIRY_INTERVAL);
            b.put_u32(v);
        }
        if let Some(v) = &self.content_type {
            check(id::CONTENT_TYPE)?;
            b.put_u8(id::CONTENT_TYPE);
            put_string(b, v, "content type")?;
        }
        if let Some(v) = &self.response_topic {
            check(id::RESPONSE_TOPIC)?;
            b.put_u8(id::RESPONSE_TOPIC);
            put_string(b, v, "response topic")?;
        }
        if let Some(v) = &self.correlation_data {
            check(id::CORRELATION_DATA)?;
            b.put_u8(id::CORRELATION_DATA);
            put_binary(b, v, "correlation data")?;
        }
        if ctx == PropertyContext::Subscribe && self.subscription_identifiers.len() > 1 {
            return Err(EncodeError::Invalid(
                "more than one subscription identifier in SUBSCRIBE",
            ));
        }
        for v in &self.subscription_identifiers {
            check(id::SUBSCRIPTION_IDENTIFIER)?;
            if *v == 0 {
                return Err(EncodeError::Invalid("subscription identifier 0"));
            }
            b.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_varint(b, *v, "subscription identifier")?;
        }
        if let Some(v) = self.session_expiry_interval {
            check(id::SESSION_EXPIRY_INTERVAL)?;
            b.put_u8(id::SESSION_EXPIRY_INTERVAL);
            b.put_u32(v);
        }
        if let Some(v) = &self.assigned_client_identifier {
            check(id::ASSIGNED_CLIENT_IDENTIFIER)?;
            b.put_u8(id::ASSIGNED_CLIENT_IDENTIFIER);
            put_string(b, v, "assigned client identifier")?;
        }
        if let Some(v) = self.server_keep_alive {
            check(id::SERVER_KEEP_ALIVE)?;
            b.put_u8(id::SERVER_KEEP_ALIVE);
            b.put_u16(v);
        }
        if let Some(v) = &self.authentication_method {
            check(id::AUTHENTICATION_METHOD)?;
            b.put_u8(id::AUTHENTICATION_METHOD);
            put_string(b, v, "authentication method")?;
        }
        if let Some(v) = &self.authentication_data {
            check(id::AUTHENTICATION_DATA)?;
            if self.authentication_method.is_none() {
                return Err(EncodeError::Invalid("authentication data without a method"));
            }
            b.put_u8(id::AUTHENTICATION_DATA);
            put_binary(b, v, "authentication data")?;
        }
        if let Some(v) = self.request_problem_information {
            check(id::REQUEST_PROBLEM_INFORMATION)?;
            b.put_u8(id::REQUEST_PROBLEM_INFORMATION);
            b.put_u8(u8::from(v));
        }
        if let Some(v) = self.will_delay_interval {
            check(id::WILL_DELAY_INTERVAL)?;
            b.put_u8(id::WILL_DELAY_INTERVAL);
            b.put_u32(v);
        }
        if let Some(v) = self.request_response_information {
            check(id::REQUEST_RESPONSE_INFORMATION)?;
            b.put_u8(id::REQUEST_RESPONSE_INFORMATION);
            b.put_u8(u8::from(v));
        }
        if let Some(v) = &self.response_information {
            check(id::RESPONSE_INFORMATION)?;
            b.put_u8(id::RESPONSE_INFORMATION);
            put_string(b, v, "response information")?;
        }
        if let Some(v) = &self.server_reference {
            check(id::SERVER_REFERENCE)?;
            b.put_u8(id::SERVER_REFERENCE);
            put_string(b, v, "server reference")?;
        }
        if let Some(v) = &self.reason_string {
            check(id::REASON_STRING)?;
            b.put_u8(id::REASON_STRING);
            put_string(b, v, "reason string")?;
        }
        if let Some(v) = self.receive_maximum {
            check(id::RECEIVE_MAXIMUM)?;
            if v == 0 {
                return Err(EncodeError::Invalid("receive maximum 0"));
            }
            b.put_u8(id::RECEIVE_MAXIMUM);
            b.put_u16(v);
        }
        if let Some(v) = self.topic_alias_maximum {
            check(id::TOPIC_ALIAS_MAXIMUM)?;
            b.put_u8(id::TOPIC_ALIAS_MAXIMUM);
            b.put_u16(v);
        }
        if let Some(v) = self.topic_alias {
            check(id::TOPIC_ALIAS)?;
            if v == 0 {
                return Err(EncodeError::Invalid("topic alias 0"));
            }
            b.put_u8(id::TOPIC_ALIAS);
            b.put_u16(v);
        }
        if let Some(v) = self.maximum_qos {
            check(id::MAXIMUM_QOS)?;
            if v == QoS::ExactlyOnce {
                return Err(EncodeError::Invalid(
                    "maximum QoS 2 (omit the property instead)",
                ));
            }
            b.put_u8(id::MAXIMUM_QOS);
            b.put_u8(v as u8);
        }
        if let Some(v) = self.retain_available {
            check(id::RETAIN_AVAILABLE)?;
            b.put_u8(id::RETAIN_AVAILABLE);
            b.put_u8(u8::from(v));
        }
        for (k, v) in &self.user_properties {
            check(id::USER_PROPERTY)?;
            b.put_u8(id::USER_PROPERTY);
            put_string(b, k, "user property name")?;
            put_string(b, v, "user property value")?;
        }
        if let Some(v) = self.maximum_packet_size {
            check(id::MAXIMUM_PACKET_SIZE)?;
            if v == 0 {
                return Err(EncodeError::Invalid("maximum packet size 0"));
            }
            b.put_u8(id::MAXIMUM_PACKET_SIZE);
            b.put_u32(v);
        }
        if let Some(v) = self.wildcard_subscription_available {
            check(id::WILDCARD_SUBSCRIPTION_AVAILABLE)?;
            b.put_u8(id::WILDCARD_SUBSCRIPTION_AVAILABLE);
            b.put_u8(u8::from(v));
        }
        if let Some(v) = self.subscription_identifier_available {
            check(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE)?;
            b.put_u8(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE);
            b.put_u8(u8::from(v));
        }
        if let Some(v) = self.shared_subscription_available {
            check(id::SHARED_SUBSCRIPTION_AVAILABLE)?;
            b.put_u8(id::SHARED_SUBSCRIPTION_AVAILABLE);
            b.put_u8(u8::from(v));
        }
        if b.len() > crate::codec::MAX_VARINT as usize {
            return Err(EncodeError::TooLong {
                what: "properties",
                len: b.len(),
            });
        }
        Ok(())
    }
}
