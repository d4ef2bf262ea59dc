//! A published message, as every protocol sees it. One `Arc<Message>` is shared by every queue
//! it is routed to, so fan-out never copies a body.
//!
//! The properties are the broker's own ([`Properties`]), not a protocol's: an AMQP 0-9-1
//! publisher's, an MQTT publisher's and a message the broker makes itself (dead letters,
//! management publishes) all have the same form. The field set is that of AMQP 0-9-1's basic
//! class, which is also RabbitMQ's internal model; headers use AMQP's typed field table as
//! the value model (other protocols' string headers and user properties map into it). The
//! AMQP 0-9-1 encoding is only a cache: the bytes an AMQP publisher sent are kept and re-sent
//! verbatim to AMQP consumers (no re-encoding), and a message from anywhere else is encoded
//! once, the first time an AMQP consumer or the store needs it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use pier_wire::{BasicProperties, FieldTable, ShortString};

/// A message's properties. See the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<ShortString>,
    pub content_encoding: Option<ShortString>,
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent (absent: transient).
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortString>,
    pub reply_to: Option<ShortString>,
    /// Per-message TTL in milliseconds, as a decimal string (AMQP's `expiration`).
    pub expiration: Option<ShortString>,
    pub message_id: Option<ShortString>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// The message's type name (AMQP's `type`).
    pub kind: Option<ShortString>,
    pub user_id: Option<ShortString>,
    pub app_id: Option<ShortString>,
    pub cluster_id: Option<ShortString>,
}

impl From<BasicProperties> for Properties {
    fn from(p: BasicProperties) -> Self {
        Properties {
            content_type: p.content_type,
            content_encoding: p.content_encoding,
            headers: p.headers,
            delivery_mode: p.delivery_mode,
            priority: p.priority,
            correlation_id: p.correlation_id,
            reply_to: p.reply_to,
            expiration: p.expiration,
            message_id: p.message_id,
            timestamp: p.timestamp,
            kind: p.kind,
            user_id: p.user_id,
            app_id: p.app_id,
            cluster_id: p.cluster_id,
        }
    }
}

impl Properties {
    /// The AMQP 0-9-1 form (for encoding on the wire or in the store).
    pub fn to_amqp(&self) -> BasicProperties {
        BasicProperties {
            content_type: self.content_type.clone(),
            content_encoding: self.content_encoding.clone(),
            headers: self.headers.clone(),
            delivery_mode: self.delivery_mode,
            priority: self.priority,
            correlation_id: self.correlation_id.clone(),
            reply_to: self.reply_to.clone(),
            expiration: self.expiration.clone(),
            message_id: self.message_id.clone(),
            timestamp: self.timestamp,
            kind: self.kind.clone(),
            user_id: self.user_id.clone(),
            app_id: self.app_id.clone(),
            cluster_id: self.cluster_id.clone(),
        }
    }

    /// The AMQP 0-9-1 content-header property bytes.
    pub fn encode_amqp(&self) -> Bytes {
        let p = self.to_amqp();
        let mut raw = bytes::BytesMut::with_capacity(p.encoded_size());
        p.encode(&mut raw);
        raw.freeze()
    }
}

/// The AMQP 0-9-1 encoding of a message's properties: the publisher's bytes, or encoded on
/// first use. Two variants so that the AMQP publish path pays no once-cell synchronisation.
#[derive(Debug, Clone)]
enum AmqpBytes {
    Given(Bytes),
    Lazy(OnceLock<Bytes>),
}

#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub properties: Properties,
    pub body: Bytes,
    /// The AMQP 0-9-1 encoding of `properties` (see the module docs).
    amqp: AmqpBytes,
}

impl PartialEq for Message {
    /// Equal content; whether the AMQP encoding is cached yet does not matter.
    fn eq(&self, other: &Self) -> bool {
        self.exchange == other.exchange
            && self.routing_key == other.routing_key
            && self.properties == other.properties
            && self.body == other.body
    }
}

impl Message {
    /// A message from any protocol, or made by the broker.
    pub fn new(
        exchange: ShortString,
        routing_key: ShortString,
        properties: impl Into<Properties>,
        body: Bytes,
    ) -> Self {
        Message {
            exchange,
            routing_key,
            properties: properties.into(),
            body,
            amqp: AmqpBytes::Lazy(OnceLock::new()),
        }
    }

    /// A message as an AMQP 0-9-1 publisher sent it: `raw` (the property bytes of its content
    /// header) is kept and re-sent as is.
    pub fn from_amqp(
        exchange: ShortString,
        routing_key: ShortString,
        properties: BasicProperties,
        raw: Bytes,
        body: Bytes,
    ) -> Self {
        Message {
            exchange,
            routing_key,
            properties: properties.into(),
            body,
            amqp: AmqpBytes::Given(raw),
        }
    }

    /// The AMQP 0-9-1 property bytes: the publisher's own, or encoded once.
    pub fn amqp_properties(&self) -> &Bytes {
        match &self.amqp {
            AmqpBytes::Given(b) => b,
            AmqpBytes::Lazy(cell) => cell.get_or_init(|| self.properties.encode_amqp()),
        }
    }

    /// The message as delivered: without its `BCC` header (which only routes). Returns the
    /// same `Arc` when there is none.
    pub fn without_bcc(message: Arc<Message>) -> Arc<Message> {
        let has_bcc = message
            .properties
            .headers
            .as_ref()
            .is_some_and(|h| h.contains_key("BCC"));
        if !has_bcc {
            return message;
        }
        let mut props = message.properties.clone();
        if let Some(h) = props.headers.as_mut() {
            h.remove("BCC");
        }
        Arc::new(Message::new(
            message.exchange.clone(),
            message.routing_key.clone(),
            props,
            message.body.clone(),
        ))
    }

    /// A copy with one header set (replaced if present); the AMQP property bytes are
    /// encoded afresh when it is sent.
    pub fn with_header(message: &Message, key: &str, value: pier_wire::FieldValue) -> Arc<Message> {
        Message::with_headers(message, [(key, value)])
    }

    /// The same message with these headers set (added or replaced).
    pub fn with_headers<'k>(
        message: &Message,
        headers: impl IntoIterator<Item = (&'k str, pier_wire::FieldValue)>,
    ) -> Arc<Message> {
        let mut props = message.properties.clone();
        let table = props.headers.get_or_insert_with(pier_wire::FieldTable::new);
        for (key, value) in headers {
            table.insert(key, value);
        }
        Arc::new(Message::new(
            message.exchange.clone(),
            message.routing_key.clone(),
            props,
            message.body.clone(),
        ))
    }

    /// The same message addressed to another exchange and routing key.
    pub fn with_route(mut self, exchange: &str, routing_key: &str) -> Arc<Message> {
        self.exchange = ShortString::from(exchange);
        self.routing_key = ShortString::from(routing_key);
        Arc::new(self)
    }

    pub fn body_size(&self) -> usize {
        self.body.len()
    }

    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pier_wire::FieldValue;

    #[test]
    fn amqp_bytes_are_the_publishers_or_encoded_once() {
        let props = BasicProperties {
            content_type: Some(ShortString::from("text/plain")),
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        // The publisher's bytes are kept verbatim, even where another encoding would do.
        let raw = Bytes::from_static(b"\x90\x00\x0atext/plain\x02");
        let m = Message::from_amqp(
            "x".into(),
            "k".into(),
            props.clone(),
            raw.clone(),
            Bytes::new(),
        );
        assert_eq!(m.amqp_properties(), &raw);
        // A message from elsewhere is encoded on first use, and decodes to its properties.
        let mut headers = FieldTable::new();
        headers.insert("h", FieldValue::LongInt(1));
        let neutral = Properties {
            headers: Some(headers),
            ..Properties::from(props)
        };
        let m = Message::new("x".into(), "k".into(), neutral.clone(), Bytes::new());
        let decoded = BasicProperties::decode(m.amqp_properties()).unwrap();
        assert_eq!(Properties::from(decoded), neutral);
        assert!(
            std::ptr::eq(m.amqp_properties(), m.amqp_properties()),
            "cached"
        );
    }
}
