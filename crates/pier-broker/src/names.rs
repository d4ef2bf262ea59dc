//! Name rules and server-generated names (`amq.gen-…` queues, `amq.ctag-…` consumer tags),
//! shaped like RabbitMQ's: a prefix plus 22 characters of URL-safe base64 of 16 random bytes.

use base64::Engine;
use pier_wire::ShortString;

use crate::error::{BrokerError, ObjectKind, Result};

/// Names starting with `amq.` are reserved for the broker.
pub fn check_not_reserved(kind: ObjectKind, name: &str) -> Result<()> {
    if name.starts_with("amq.") {
        return Err(BrokerError::ReservedName {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn random_suffix() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn generated_queue_name() -> ShortString {
    ShortString::from(format!("amq.gen-{}", random_suffix()))
}

/// The reply address of one channel's direct reply-to consumer.
pub fn generated_reply_to() -> ShortString {
    ShortString::from(format!("amq.rabbitmq.reply-to.{}", random_suffix()))
}

pub fn generated_consumer_tag() -> ShortString {
    ShortString::from(format!("amq.ctag-{}", random_suffix()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_look_like_rabbitmq() {
        let q = generated_queue_name();
        assert!(q.starts_with("amq.gen-"));
        assert_eq!(q.len(), "amq.gen-".len() + 22);
        assert_ne!(q, generated_queue_name());
        assert!(generated_consumer_tag().starts_with("amq.ctag-"));
        assert!(check_not_reserved(ObjectKind::Queue, "amq.x").is_err());
        assert!(check_not_reserved(ObjectKind::Queue, "amqx").is_ok());
    }
}
