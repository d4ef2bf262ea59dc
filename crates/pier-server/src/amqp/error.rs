//! Protocol exceptions: a reply code, RabbitMQ-worded text and the method that caused them.
//! Soft codes close the channel, hard codes the connection (AMQP 0-9-1 §1.2 and RabbitMQ's
//! error scoping).

use pier_broker::BrokerError;
use pier_wire::{reply_code, Method, WireError};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{text}")]
pub struct AmqpException {
    pub code: u16,
    /// Full reply text, e.g. "NOT_FOUND - no queue 'q' in vhost '/'".
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpException {
    /// `detail` is the text after the code name.
    pub fn new(code: u16, detail: impl std::fmt::Display) -> Self {
        AmqpException {
            code,
            text: format!("{} - {}", reply_code::name(code), detail),
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn on(mut self, method: &Method) -> Self {
        self.class_id = method.class_id();
        self.method_id = method.method_id();
        self
    }

    pub fn on_ids(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    pub fn is_hard(&self) -> bool {
        reply_code::is_hard_error(self.code)
    }
}

impl From<BrokerError> for AmqpException {
    fn from(e: BrokerError) -> Self {
        AmqpException {
            code: e.reply_code(),
            text: e.reply_text(),
            class_id: 0,
            method_id: 0,
        }
    }
}

impl From<WireError> for AmqpException {
    fn from(e: WireError) -> Self {
        AmqpException::new(e.reply_code(), e)
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] AmqpException),
    #[error("client sent a wrong protocol header")]
    BadProtocolHeader,
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("missed heartbeats from client, timeout: {0}s")]
    HeartbeatTimeout(u16),
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    #[error("client closed the socket")]
    Eof,
}
