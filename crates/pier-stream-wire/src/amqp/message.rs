//! The AMQP 1.0 message format (AMQP 1.0 part 3, "Messaging", 3.2): the sections of a
//! message as a stream stores it.

use bytes::{Bytes, BytesMut};

use super::value::{read_value, AmqpError, Value, MAX_EXPANSION};
use crate::buf::Reader;

/// Section descriptor codes (`0x0000_0000_0000_00xx`, domain 0 = AMQP) and their symbolic
/// names, both accepted on decoding.
pub mod descriptor {
    pub const HEADER: u64 = 0x70;
    pub const DELIVERY_ANNOTATIONS: u64 = 0x71;
    pub const MESSAGE_ANNOTATIONS: u64 = 0x72;
    pub const PROPERTIES: u64 = 0x73;
    pub const APPLICATION_PROPERTIES: u64 = 0x74;
    pub const DATA: u64 = 0x75;
    pub const AMQP_SEQUENCE: u64 = 0x76;
    pub const AMQP_VALUE: u64 = 0x77;
    pub const FOOTER: u64 = 0x78;

    pub(crate) const NAMES: [(&str, u64); 9] = [
        ("amqp:header:list", HEADER),
        ("amqp:delivery-annotations:map", DELIVERY_ANNOTATIONS),
        ("amqp:message-annotations:map", MESSAGE_ANNOTATIONS),
        ("amqp:properties:list", PROPERTIES),
        ("amqp:application-properties:map", APPLICATION_PROPERTIES),
        ("amqp:data:binary", DATA),
        ("amqp:amqp-sequence:list", AMQP_SEQUENCE),
        ("amqp:amqp-value:*", AMQP_VALUE),
        ("amqp:footer:map", FOOTER),
    ];
}

/// The `header` section: transport headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub durable: Option<bool>,
    pub priority: Option<u8>,
    /// Milliseconds.
    pub ttl: Option<u32>,
    pub first_acquirer: Option<bool>,
    pub delivery_count: Option<u32>,
}

/// The `properties` section: immutable properties of the bare message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// ulong, uuid, binary or string.
    pub message_id: Option<Value>,
    pub user_id: Option<Bytes>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub reply_to: Option<String>,
    /// ulong, uuid, binary or string.
    pub correlation_id: Option<Value>,
    /// A symbol on the wire.
    pub content_type: Option<String>,
    /// A symbol on the wire.
    pub content_encoding: Option<String>,
    /// Milliseconds since the epoch.
    pub absolute_expiry_time: Option<i64>,
    /// Milliseconds since the epoch.
    pub creation_time: Option<i64>,
    pub group_id: Option<String>,
    pub group_sequence: Option<u32>,
    pub reply_to_group_id: Option<String>,
}

/// An annotations map (delivery-annotations, message-annotations, footer): keys are symbols
/// (or ulongs), in wire order.
pub type Annotations = Vec<(Value, Value)>;

/// The body of a message.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Body {
    /// No body section (not a valid AMQP 1.0 message, but decodable).
    #[default]
    Empty,
    /// One or more `data` sections, zero-copy slices of the input.
    Data(Vec<Bytes>),
    /// One or more `amqp-sequence` sections.
    Sequence(Vec<Vec<Value>>),
    /// One `amqp-value` section.
    Value(Value),
}

/// An AMQP 1.0 message: the bare message (properties, application-properties, body) with
/// its annotations (header, delivery- and message-annotations, footer).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub header: Option<Header>,
    pub delivery_annotations: Option<Annotations>,
    pub message_annotations: Option<Annotations>,
    pub properties: Option<Properties>,
    /// String keys, simple values, in wire order.
    pub application_properties: Option<Vec<(String, Value)>>,
    pub body: Body,
    pub footer: Option<Annotations>,
}

fn section_code(d: &Value) -> Result<u64, AmqpError> {
    match d {
        Value::Ulong(c) => Ok(*c),
        Value::Symbol(s) => descriptor::NAMES
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, c)| *c)
            .ok_or_else(|| AmqpError::UnknownSection(s.clone())),
        other => Err(AmqpError::UnknownSection(format!("{other:?}"))),
    }
}

/// Fields of a composite (a described list), `None` for absent trailing fields.
struct Fields {
    items: std::vec::IntoIter<Value>,
    section: &'static str,
}

impl Fields {
    fn new(v: Value, section: &'static str) -> Result<Fields, AmqpError> {
        match v {
            Value::List(items) => Ok(Fields {
                items: items.into_iter(),
                section,
            }),
            _ => Err(AmqpError::InvalidField {
                section,
                field: "(the section is not a list)",
            }),
        }
    }

    fn next(&mut self) -> Option<Value> {
        match self.items.next() {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn bool(&mut self, field: &'static str) -> Result<Option<bool>, AmqpError> {
        match self.next() {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(self.bad(field)),
        }
    }

    fn ubyte(&mut self, field: &'static str) -> Result<Option<u8>, AmqpError> {
        match self.next() {
            None => Ok(None),
            Some(Value::Ubyte(b)) => Ok(Some(b)),
            Some(_) => Err(self.bad(field)),
        }
    }

    fn uint(&mut self, field: &'static str) -> Result<Option<u32>, AmqpError> {
        match self.next() {
            None => Ok(None),
            Some(Value::Uint(b)) => Ok(Some(b)),
            Some(_) => Err(self.bad(field)),
        }
    }

    fn timestamp(&mut self, field: &'static str) -> Result<Option<i64>, AmqpError> {
        match self.next() {
            None => Ok(None),
            Some(Value::Timestamp(t)) => Ok(Some(t)),
            Some(_) => Err(self.bad(field)),
        }
    }

    /// A string or symbol field (addresses may come as either).
    fn string(&mut self, field: &'static str) -> Result<Option<String>, AmqpError> {
        match self.next() {
            None => Ok(None),
            Some(Value::String(s) | Value::Symbol(s)) => Ok(Some(s)),
            Some(_) => Err(self.bad(field)),
        }
    }

    fn binary(&mut self, field: &'static str) -> Result<Option<Bytes>, AmqpError> {
        match self.next() {
            None => Ok(None),
            Some(Value::Binary(b)) => Ok(Some(b)),
            Some(_) => Err(self.bad(field)),
        }
    }

    fn any(&mut self) -> Option<Value> {
        self.next()
    }

    fn bad(&self, field: &'static str) -> AmqpError {
        AmqpError::InvalidField {
            section: self.section,
            field,
        }
    }
}

fn annotations(v: Value, section: &'static str) -> Result<Annotations, AmqpError> {
    match v {
        Value::Map(pairs) => Ok(pairs),
        _ => Err(AmqpError::InvalidField {
            section,
            field: "(the section is not a map)",
        }),
    }
}

/// Drops the trailing `None`s of a composite's fields (AMQP allows leaving them out).
fn composite(code: u64, mut fields: Vec<Value>) -> Value {
    while fields.last() == Some(&Value::Null) {
        fields.pop();
    }
    Value::Described(Box::new(Value::Ulong(code)), Box::new(Value::List(fields)))
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    v.map(f).unwrap_or(Value::Null)
}

fn section(code: u64, v: Value) -> Value {
    Value::Described(Box::new(Value::Ulong(code)), Box::new(v))
}

impl Message {
    /// A message with one `data` section.
    pub fn with_data(body: impl Into<Bytes>) -> Message {
        Message {
            body: Body::Data(vec![body.into()]),
            ..Message::default()
        }
    }

    /// Decodes a whole encoded message (as stored in a stream entry). Sections must come
    /// in the order of the spec, each at most once (data and amqp-sequence may repeat).
    pub fn decode(input: &Bytes) -> Result<Message, AmqpError> {
        let mut r = Reader::new(input);
        let mut m = Message::default();
        // order of the last section seen: header 0 .. footer 8
        let mut last: Option<u64> = None;
        let mut budget = MAX_EXPANSION;
        while !r.is_empty() {
            let v = read_value(&mut r, 0, &mut budget)?;
            let Value::Described(d, body) = v else {
                return Err(AmqpError::UnknownSection(
                    "a value that is not a described section".into(),
                ));
            };
            let code = section_code(&d)?;
            let repeatable = code == descriptor::DATA || code == descriptor::AMQP_SEQUENCE;
            if let Some(prev) = last {
                let in_order = code > prev || (repeatable && code == prev);
                // Body sections exclude each other.
                let mixed_body = (descriptor::DATA..=descriptor::AMQP_VALUE).contains(&prev)
                    && (descriptor::DATA..=descriptor::AMQP_VALUE).contains(&code)
                    && code != prev;
                if !in_order || mixed_body {
                    return Err(AmqpError::SectionOutOfOrder(section_name(code)));
                }
            }
            last = Some(code);
            let body = *body;
            match code {
                descriptor::HEADER => {
                    let mut f = Fields::new(body, "header")?;
                    m.header = Some(Header {
                        durable: f.bool("durable")?,
                        priority: f.ubyte("priority")?,
                        ttl: f.uint("ttl")?,
                        first_acquirer: f.bool("first-acquirer")?,
                        delivery_count: f.uint("delivery-count")?,
                    });
                }
                descriptor::DELIVERY_ANNOTATIONS => {
                    m.delivery_annotations = Some(annotations(body, "delivery-annotations")?)
                }
                descriptor::MESSAGE_ANNOTATIONS => {
                    m.message_annotations = Some(annotations(body, "message-annotations")?)
                }
                descriptor::PROPERTIES => {
                    let mut f = Fields::new(body, "properties")?;
                    m.properties = Some(Properties {
                        message_id: f.any(),
                        user_id: f.binary("user-id")?,
                        to: f.string("to")?,
                        subject: f.string("subject")?,
                        reply_to: f.string("reply-to")?,
                        correlation_id: f.any(),
                        content_type: f.string("content-type")?,
                        content_encoding: f.string("content-encoding")?,
                        absolute_expiry_time: f.timestamp("absolute-expiry-time")?,
                        creation_time: f.timestamp("creation-time")?,
                        group_id: f.string("group-id")?,
                        group_sequence: f.uint("group-sequence")?,
                        reply_to_group_id: f.string("reply-to-group-id")?,
                    });
                }
                descriptor::APPLICATION_PROPERTIES => {
                    let pairs = annotations(body, "application-properties")?;
                    let mut props = Vec::with_capacity(pairs.len());
                    for (k, v) in pairs {
                        match k {
                            Value::String(k) => props.push((k, v)),
                            _ => {
                                return Err(AmqpError::InvalidField {
                                    section: "application-properties",
                                    field: "(a key that is not a string)",
                                })
                            }
                        }
                    }
                    m.application_properties = Some(props);
                }
                descriptor::DATA => match (&mut m.body, body) {
                    (Body::Data(parts), Value::Binary(b)) => parts.push(b),
                    (Body::Empty, Value::Binary(b)) => m.body = Body::Data(vec![b]),
                    _ => {
                        return Err(AmqpError::InvalidField {
                            section: "data",
                            field: "(not a binary)",
                        })
                    }
                },
                descriptor::AMQP_SEQUENCE => match (&mut m.body, body) {
                    (Body::Sequence(parts), Value::List(l)) => parts.push(l),
                    (Body::Empty, Value::List(l)) => m.body = Body::Sequence(vec![l]),
                    _ => {
                        return Err(AmqpError::InvalidField {
                            section: "amqp-sequence",
                            field: "(not a list)",
                        })
                    }
                },
                descriptor::AMQP_VALUE => m.body = Body::Value(body),
                descriptor::FOOTER => m.footer = Some(annotations(body, "footer")?),
                other => return Err(AmqpError::UnknownSection(format!("{other:#x}"))),
            }
        }
        Ok(m)
    }

    /// The sections as values, in order.
    pub fn sections(&self) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(h) = &self.header {
            out.push(composite(
                descriptor::HEADER,
                vec![
                    opt(h.durable, Value::Bool),
                    opt(h.priority, Value::Ubyte),
                    opt(h.ttl, Value::Uint),
                    opt(h.first_acquirer, Value::Bool),
                    opt(h.delivery_count, Value::Uint),
                ],
            ));
        }
        if let Some(a) = &self.delivery_annotations {
            out.push(section(
                descriptor::DELIVERY_ANNOTATIONS,
                Value::Map(a.clone()),
            ));
        }
        if let Some(a) = &self.message_annotations {
            out.push(section(
                descriptor::MESSAGE_ANNOTATIONS,
                Value::Map(a.clone()),
            ));
        }
        if let Some(p) = &self.properties {
            out.push(composite(
                descriptor::PROPERTIES,
                vec![
                    p.message_id.clone().unwrap_or(Value::Null),
                    opt(p.user_id.clone(), Value::Binary),
                    opt(p.to.clone(), Value::String),
                    opt(p.subject.clone(), Value::String),
                    opt(p.reply_to.clone(), Value::String),
                    p.correlation_id.clone().unwrap_or(Value::Null),
                    opt(p.content_type.clone(), Value::Symbol),
                    opt(p.content_encoding.clone(), Value::Symbol),
                    opt(p.absolute_expiry_time, Value::Timestamp),
                    opt(p.creation_time, Value::Timestamp),
                    opt(p.group_id.clone(), Value::String),
                    opt(p.group_sequence, Value::Uint),
                    opt(p.reply_to_group_id.clone(), Value::String),
                ],
            ));
        }
        if let Some(a) = &self.application_properties {
            out.push(section(
                descriptor::APPLICATION_PROPERTIES,
                Value::Map(
                    a.iter()
                        .map(|(k, v)| (Value::String(k.clone()), v.clone()))
                        .collect(),
                ),
            ));
        }
        match &self.body {
            Body::Empty => {}
            Body::Data(parts) => {
                for p in parts {
                    out.push(section(descriptor::DATA, Value::Binary(p.clone())));
                }
            }
            Body::Sequence(parts) => {
                for p in parts {
                    out.push(section(descriptor::AMQP_SEQUENCE, Value::List(p.clone())));
                }
            }
            Body::Value(v) => out.push(section(descriptor::AMQP_VALUE, v.clone())),
        }
        if let Some(a) = &self.footer {
            out.push(section(descriptor::FOOTER, Value::Map(a.clone())));
        }
        out
    }

    /// Writes the encoded message. On error nothing is written.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), AmqpError> {
        let start = out.len();
        for s in self.sections() {
            if let Err(e) = s.encode(out) {
                out.truncate(start);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The encoded message as `Bytes` (what a stream entry holds).
    pub fn to_bytes(&self) -> Result<Bytes, AmqpError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }
}

fn section_name(code: u64) -> &'static str {
    descriptor::NAMES
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(n, _)| *n)
        .unwrap_or("unknown section")
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
    fn data_only_message() {
        let m = Message::with_data(Bytes::from_static(b"hello"));
        let b = m.to_bytes().unwrap();
        // 0x00 0x53 0x75 0xa0 0x05 "hello": what every stream client sends for a plain body
        assert_eq!(&b[..], b"\x00\x53\x75\xa0\x05hello");
        assert_eq!(Message::decode(&b).unwrap(), m);
    }

    #[test]
    fn full_message_roundtrip() {
        let m = Message {
            header: Some(Header {
                durable: Some(true),
                priority: Some(4),
                ..Header::default()
            }),
            delivery_annotations: Some(vec![(Value::Symbol("x-d".into()), Value::Int(1))]),
            message_annotations: Some(vec![(
                Value::Symbol("x-routing-key".into()),
                Value::String("rk".into()),
            )]),
            properties: Some(Properties {
                message_id: Some(Value::String("id-1".into())),
                content_type: Some("text/plain".into()),
                creation_time: Some(1_700_000_000_000),
                group_sequence: Some(9),
                ..Properties::default()
            }),
            application_properties: Some(vec![("k".into(), Value::Long(-5))]),
            body: Body::Data(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
            footer: Some(vec![(Value::Symbol("f".into()), Value::Null)]),
        };
        let b = m.to_bytes().unwrap();
        assert_eq!(Message::decode(&b).unwrap(), m);
    }

    #[test]
    fn symbolic_descriptors_and_order() {
        // amqp-value with a symbolic descriptor
        let v = Value::Described(
            Box::new(Value::Symbol("amqp:amqp-value:*".into())),
            Box::new(Value::Int(7)),
        );
        let b = v.to_bytes().unwrap();
        assert_eq!(
            Message::decode(&b).unwrap().body,
            Body::Value(Value::Int(7))
        );

        // properties after data: out of order
        let mut out = BytesMut::new();
        Message::with_data(Bytes::from_static(b"x"))
            .encode(&mut out)
            .unwrap();
        composite(descriptor::PROPERTIES, vec![])
            .encode(&mut out)
            .unwrap();
        assert!(matches!(
            Message::decode(&out.freeze()),
            Err(AmqpError::SectionOutOfOrder(_))
        ));
        // data then amqp-value: mixed body
        let mut out = BytesMut::new();
        section(descriptor::DATA, Value::Binary(Bytes::new()))
            .encode(&mut out)
            .unwrap();
        section(descriptor::AMQP_VALUE, Value::Null)
            .encode(&mut out)
            .unwrap();
        assert!(Message::decode(&out.freeze()).is_err());
        // a wrong field type
        let bad = composite(descriptor::HEADER, vec![Value::Int(1)])
            .to_bytes()
            .unwrap();
        assert!(matches!(
            Message::decode(&bad),
            Err(AmqpError::InvalidField { .. })
        ));
    }
}
