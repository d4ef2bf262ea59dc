//! AMQP 0-9-1 ↔ AMQP 1.0, as RabbitMQ maps them (`pier_stream_wire::amqp` documents the
//! tables): a stream stores every message in AMQP 1.0 form, so stream-protocol clients read
//! what AMQP 0-9-1 publishers wrote and AMQP 0-9-1 consumers read what stream clients wrote.

use bytes::Bytes;
use pier_stream_wire::amqp::{self, Body, Header, Value};
use pier_wire::{FieldTable, FieldValue, LongString, ShortString};

use crate::message::{Message, Properties};

fn uuid_urn(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn parse_uuid_urn(s: &str) -> Option<[u8; 16]> {
    let hex: String = s
        .strip_prefix("urn:uuid:")?
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn id_to_1_0(s: &ShortString) -> Value {
    match parse_uuid_urn(s.as_str()) {
        Some(u) => Value::Uuid(u),
        None => Value::String(s.as_str().to_owned()),
    }
}

/// A 0-9-1 header value in AMQP 1.0 form (`None`: dropped).
fn field_to_value(v: &FieldValue) -> Option<Value> {
    Some(match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::ShortShortInt(n) => Value::Byte(*n),
        FieldValue::ShortShortUInt(n) => Value::Ubyte(*n),
        FieldValue::ShortInt(n) => Value::Short(*n),
        FieldValue::ShortUInt(n) => Value::Ushort(*n),
        FieldValue::LongInt(n) => Value::Int(*n),
        FieldValue::LongUInt(n) => Value::Uint(*n),
        FieldValue::LongLongInt(n) => Value::Long(*n),
        FieldValue::LongLongUInt(n) => Value::Ulong(*n),
        FieldValue::Float(f) => Value::Float(*f),
        FieldValue::Double(f) => Value::Double(*f),
        FieldValue::Decimal { .. } => return None,
        FieldValue::LongString(s) => match s.to_str() {
            Some(t) if !t.contains('\0') => Value::String(t.to_owned()),
            _ => Value::Binary(s.0.clone()),
        },
        FieldValue::ByteArray(b) => Value::Binary(b.clone()),
        FieldValue::Array(a) => Value::List(a.iter().filter_map(field_to_value).collect()),
        FieldValue::Timestamp(s) => {
            Value::Timestamp(i64::try_from(*s).unwrap_or(i64::MAX).saturating_mul(1000))
        }
        FieldValue::Table(t) => Value::Map(
            t.iter()
                .filter_map(|(k, v)| {
                    Some((Value::Symbol(k.as_str().to_owned()), field_to_value(v)?))
                })
                .collect(),
        ),
        FieldValue::Void => Value::Null,
    })
}

/// An AMQP 1.0 value as a 0-9-1 header value.
fn value_to_field(v: &Value) -> Option<FieldValue> {
    Some(match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Ubyte(n) => FieldValue::ShortShortUInt(*n),
        Value::Ushort(n) => FieldValue::ShortUInt(*n),
        Value::Uint(n) => FieldValue::LongUInt(*n),
        Value::Ulong(n) => FieldValue::LongLongInt(i64::try_from(*n).unwrap_or(i64::MAX)),
        Value::Byte(n) => FieldValue::ShortShortInt(*n),
        Value::Short(n) => FieldValue::ShortInt(*n),
        Value::Int(n) => FieldValue::LongInt(*n),
        Value::Long(n) => FieldValue::LongLongInt(*n),
        Value::Float(f) => FieldValue::Float(*f),
        Value::Double(f) => FieldValue::Double(*f),
        Value::Timestamp(ms) => FieldValue::Timestamp(u64::try_from(*ms / 1000).unwrap_or(0)),
        Value::Uuid(u) => FieldValue::LongString(LongString(Bytes::from(uuid_urn(u)))),
        Value::Binary(b) => FieldValue::LongString(LongString(b.clone())),
        Value::String(s) | Value::Symbol(s) => {
            FieldValue::LongString(LongString(Bytes::copy_from_slice(s.as_bytes())))
        }
        Value::List(l) | Value::Array(l) => {
            FieldValue::Array(l.iter().filter_map(value_to_field).collect())
        }
        Value::Map(m) => {
            let mut t = FieldTable::new();
            for (k, v) in m {
                let key = match k {
                    Value::String(s) | Value::Symbol(s) if s.len() <= 255 => {
                        ShortString::truncated(s)
                    }
                    _ => continue,
                };
                if let Some(v) = value_to_field(v) {
                    t.insert(key, v);
                }
            }
            FieldValue::Table(t)
        }
        _ => return None,
    })
}

fn shortstr(s: &str) -> Option<ShortString> {
    (s.len() <= 255).then(|| ShortString::truncated(s))
}

/// The AMQP 1.0 encoding of a message published over AMQP 0-9-1 (RabbitMQ 4.x's mapping).
pub fn to_amqp_1_0(m: &Message) -> Bytes {
    let p = &m.properties;
    let mut out = amqp::Message::default();
    let header = Header {
        durable: p.delivery_mode.map(|d| d == 2),
        priority: p.priority,
        ttl: p.expiration.as_ref().and_then(|e| e.as_str().parse().ok()),
        ..Header::default()
    };
    if header != Header::default() {
        out.header = Some(header);
    }
    let mut props = amqp::Properties {
        message_id: p.message_id.as_ref().map(id_to_1_0),
        user_id: p.user_id.as_ref().map(|u| u.as_shared_bytes().clone()),
        reply_to: p.reply_to.as_ref().map(|r| r.as_str().to_owned()),
        correlation_id: p.correlation_id.as_ref().map(id_to_1_0),
        content_type: p.content_type.as_ref().map(|c| c.as_str().to_owned()),
        content_encoding: p.content_encoding.as_ref().map(|c| c.as_str().to_owned()),
        creation_time: p
            .timestamp
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX).saturating_mul(1000)),
        group_id: p.app_id.as_ref().map(|a| a.as_str().to_owned()),
        ..amqp::Properties::default()
    };
    if props.subject.is_none() && !m.routing_key.is_empty() {
        props.subject = None;
    }
    if props != amqp::Properties::default() {
        out.properties = Some(props);
    }
    let mut annotations: amqp::Annotations = vec![
        (
            Value::Symbol("x-exchange".into()),
            Value::String(m.exchange.as_str().to_owned()),
        ),
        (
            Value::Symbol("x-routing-key".into()),
            Value::String(m.routing_key.as_str().to_owned()),
        ),
    ];
    if let Some(k) = &p.kind {
        annotations.push((
            Value::Symbol("x-basic-type".into()),
            Value::String(k.as_str().to_owned()),
        ));
    }
    let mut app = Vec::new();
    if let Some(h) = &p.headers {
        for (k, v) in h.iter() {
            let key = k.as_str();
            if key == "x-stream-offset" {
                continue;
            }
            if key.starts_with("x-") {
                if let Some(v) = field_to_value(v) {
                    annotations.push((Value::Symbol(key.to_owned()), v));
                }
            } else if key == "CC" {
                if let Some(v) = field_to_value(v) {
                    annotations.push((Value::Symbol("x-cc".into()), v));
                }
            } else if !matches!(v, FieldValue::Table(_) | FieldValue::Array(_)) {
                if let Some(v) = field_to_value(v) {
                    app.push((key.to_owned(), v));
                }
            }
        }
    }
    out.message_annotations = Some(annotations);
    if !app.is_empty() {
        out.application_properties = Some(app);
    }
    out.body = Body::Data(vec![m.body.clone()]);
    out.to_bytes().unwrap_or_else(|_| {
        // Values that cannot be encoded (never from a 0-9-1 message): the body alone.
        amqp::Message::with_data(m.body.clone())
            .to_bytes()
            .unwrap_or_default()
    })
}

/// A stored stream message as an AMQP 0-9-1 message for a 0-9-1 consumer, with the
/// `x-stream-offset` header. Bytes that are not an AMQP 1.0 message are delivered as the body.
pub fn from_amqp_1_0(bytes: &Bytes, offset: u64, timestamp_ms: i64) -> Message {
    let mut headers = FieldTable::new();
    let mut props = Properties::default();
    let (exchange, routing_key, body) = match amqp::Message::decode(bytes) {
        Err(_) => (
            ShortString::default(),
            ShortString::default(),
            bytes.clone(),
        ),
        Ok(m) => {
            let mut exchange = ShortString::default();
            let mut routing_key = ShortString::default();
            if let Some(h) = &m.header {
                props.delivery_mode = h.durable.map(|d| if d { 2 } else { 1 });
                props.priority = h.priority;
                props.expiration = h.ttl.map(|t| ShortString::truncated(&t.to_string()));
            }
            if let Some(p) = &m.properties {
                let id =
                    |v: &Value, header: &str, headers: &mut FieldTable| -> Option<ShortString> {
                        match v {
                            Value::Uuid(u) => Some(ShortString::truncated(&uuid_urn(u))),
                            Value::Ulong(n) => Some(ShortString::truncated(&n.to_string())),
                            Value::String(s) if s.len() <= 255 => Some(ShortString::truncated(s)),
                            other => {
                                if let Some(f) = value_to_field(other) {
                                    headers.insert(header, f);
                                }
                                None
                            }
                        }
                    };
                props.message_id = p
                    .message_id
                    .as_ref()
                    .and_then(|v| id(v, "x-message-id", &mut headers));
                props.correlation_id = p
                    .correlation_id
                    .as_ref()
                    .and_then(|v| id(v, "x-correlation-id", &mut headers));
                props.user_id = p
                    .user_id
                    .as_ref()
                    .and_then(|u| std::str::from_utf8(u).ok().and_then(shortstr));
                props.reply_to = p
                    .reply_to
                    .as_deref()
                    .and_then(|r| shortstr(r.strip_prefix("/queues/").unwrap_or(r)));
                props.content_type = p.content_type.as_deref().and_then(shortstr);
                props.content_encoding = p.content_encoding.as_deref().and_then(shortstr);
                props.timestamp = p.creation_time.and_then(|t| u64::try_from(t / 1000).ok());
                props.app_id = p.group_id.as_deref().and_then(shortstr);
            }
            if let Some(app) = &m.application_properties {
                for (k, v) in app {
                    if let (Some(k), Some(v)) = (shortstr(k), value_to_field(v)) {
                        headers.insert(k, v);
                    }
                }
            }
            if let Some(ann) = &m.message_annotations {
                for (k, v) in ann {
                    let (Value::Symbol(k) | Value::String(k)) = k else {
                        continue;
                    };
                    match k.as_str() {
                        "x-exchange" => {
                            if let Value::String(s) = v {
                                exchange = ShortString::truncated(s);
                            }
                        }
                        "x-routing-key" => {
                            if let Value::String(s) = v {
                                routing_key = ShortString::truncated(s);
                            }
                        }
                        "x-basic-type" => {
                            if let Value::String(s) = v {
                                props.kind = shortstr(s);
                            }
                        }
                        "x-cc" => {
                            if let Some(f) = value_to_field(v) {
                                headers.insert("CC", f);
                            }
                        }
                        k if k.starts_with("x-basic-") => {}
                        k if k.starts_with("x-") => {
                            if let (Some(k), Some(f)) = (shortstr(k), value_to_field(v)) {
                                headers.insert(k, f);
                            }
                        }
                        _ => {}
                    }
                }
            }
            let body = match m.body {
                Body::Data(parts) if parts.len() == 1 => {
                    parts.into_iter().next().unwrap_or_default()
                }
                Body::Data(parts) => {
                    let mut b = bytes::BytesMut::new();
                    for p in parts {
                        b.extend_from_slice(&p);
                    }
                    b.freeze()
                }
                Body::Empty => Bytes::new(),
                Body::Sequence(_) | Body::Value(_) => {
                    props.kind = Some(ShortString::from_static("amqp-1.0"));
                    bytes.clone()
                }
            };
            (exchange, routing_key, body)
        }
    };
    let _ = timestamp_ms;
    headers.insert(
        "x-stream-offset",
        FieldValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
    );
    props.headers = Some(headers);
    Message::new(exchange, routing_key, props, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_0_9_1_message_round_trips_through_1_0() {
        let mut h = FieldTable::new();
        h.insert("n", FieldValue::LongInt(7));
        h.insert(
            "s",
            FieldValue::LongString(LongString(Bytes::from_static(b"v"))),
        );
        h.insert("x-custom", FieldValue::Bool(true));
        let props = Properties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            priority: Some(3),
            message_id: Some("urn:uuid:00112233-4455-6677-8899-aabbccddeeff".into()),
            correlation_id: Some("c1".into()),
            reply_to: Some("replies".into()),
            expiration: Some("60000".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            app_id: Some("app".into()),
            headers: Some(h),
            ..Properties::default()
        };
        let m = Message::new(
            "ex".into(),
            "rk".into(),
            props.clone(),
            Bytes::from_static(b"body"),
        );
        let encoded = to_amqp_1_0(&m);
        let back = from_amqp_1_0(&encoded, 42, 0);
        assert_eq!(back.body, Bytes::from_static(b"body"));
        assert_eq!(back.exchange.as_str(), "ex");
        assert_eq!(back.routing_key.as_str(), "rk");
        let p = back.properties;
        assert_eq!(p.content_type, props.content_type);
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.priority, Some(3));
        assert_eq!(p.message_id, props.message_id);
        assert_eq!(p.correlation_id, props.correlation_id);
        assert_eq!(p.reply_to, props.reply_to);
        assert_eq!(p.expiration, props.expiration);
        assert_eq!(p.timestamp, props.timestamp);
        assert_eq!(p.kind, props.kind);
        assert_eq!(p.app_id, props.app_id);
        let h = p.headers.unwrap();
        assert_eq!(h.get("n"), Some(&FieldValue::LongInt(7)));
        assert_eq!(h.get("x-custom"), Some(&FieldValue::Bool(true)));
        assert_eq!(h.get("x-stream-offset"), Some(&FieldValue::LongLongInt(42)));
    }

    #[test]
    fn stream_client_messages_and_garbage_become_bodies() {
        let m = amqp::Message::with_data(Bytes::from_static(b"hello"))
            .to_bytes()
            .unwrap();
        let back = from_amqp_1_0(&m, 0, 0);
        assert_eq!(back.body, Bytes::from_static(b"hello"));
        let raw = from_amqp_1_0(&Bytes::from_static(b"\xffnot amqp"), 1, 0);
        assert_eq!(raw.body, Bytes::from_static(b"\xffnot amqp"));
    }
}
