//! A published message. One `Arc<Message>` is shared by every queue it is routed to, so fan-out
//! never copies a body; the properties are kept both decoded (for routing and broker logic) and as
//! the exact bytes the publisher sent (re-sent verbatim on delivery, no re-encoding).

use std::sync::Arc;

use bytes::Bytes;
use pier_wire::{BasicProperties, ShortString};

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub properties: BasicProperties,
    pub raw_properties: Bytes,
    pub body: Bytes,
}

impl Message {
    pub fn new(
        exchange: ShortString,
        routing_key: ShortString,
        properties: BasicProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        Message {
            exchange,
            routing_key,
            properties,
            raw_properties,
            body,
        }
    }

    /// Builds a message from decoded properties only (re-encoding them once), for messages the
    /// broker itself creates.
    pub fn from_properties(
        exchange: ShortString,
        routing_key: ShortString,
        properties: BasicProperties,
        body: Bytes,
    ) -> Self {
        let mut raw = bytes::BytesMut::with_capacity(properties.encoded_size());
        properties.encode(&mut raw);
        Message::new(exchange, routing_key, properties, raw.freeze(), body)
    }

    /// The message as delivered: without its `BCC` header (which only routes). Returns the
    /// same `Arc` when there is none.
    pub fn without_bcc(message: std::sync::Arc<Message>) -> std::sync::Arc<Message> {
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
        std::sync::Arc::new(Message::from_properties(
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
