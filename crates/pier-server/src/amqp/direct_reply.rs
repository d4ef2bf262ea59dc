//! Direct reply-to (`amq.rabbitmq.reply-to`): RPC replies that bypass queues.
//!
//! A channel consumes from the pseudo-queue `amq.rabbitmq.reply-to` (no-ack only) and gets a
//! reply address `amq.rabbitmq.reply-to.<random>`; its publishes with that reply_to have it
//! rewritten to the address. A reply published to the default exchange with the address as
//! routing key is handed straight to the consuming channel. The registry is process-wide:
//! addresses are random, so it is shared safely by every connection (and vhost, as in
//! RabbitMQ, where the address names a channel process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use pier_broker::queue::QueueOptions;
use pier_broker::{names, Delivery, DeliverySink, Message, Queue};
use pier_wire::{FieldTable, ShortString};

use super::outbound::ChannelSink;

/// The pseudo-queue's name, and the prefix of every reply address.
pub(crate) const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
pub(crate) const ADDRESS_PREFIX: &str = "amq.rabbitmq.reply-to.";

struct Target {
    sink: Arc<ChannelSink>,
    consumer_tag: ShortString,
    /// Deliveries name a queue; replies come from this placeholder (never acked: no-ack).
    pseudo_queue: Arc<Queue>,
}

fn registry() -> &'static Mutex<HashMap<ShortString, Target>> {
    static REGISTRY: OnceLock<Mutex<HashMap<ShortString, Target>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A channel's reply consumer; unregisters its address when dropped (cancel, channel close).
pub(crate) struct ReplyConsumer {
    pub tag: ShortString,
    pub address: ShortString,
}

impl ReplyConsumer {
    pub fn register(sink: Arc<ChannelSink>, tag: ShortString, vhost: &str) -> ReplyConsumer {
        let address = names::generated_reply_to();
        let pseudo_queue = Queue::new(
            ShortString::from(PSEUDO_QUEUE),
            vhost.to_owned(),
            QueueOptions {
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: FieldTable::new(),
            },
        );
        registry().lock().unwrap_or_else(|p| p.into_inner()).insert(
            address.clone(),
            Target {
                sink,
                consumer_tag: tag.clone(),
                pseudo_queue,
            },
        );
        ReplyConsumer { tag, address }
    }
}

impl Drop for ReplyConsumer {
    fn drop(&mut self) {
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.address);
    }
}

/// Delivers a reply published to `address`; false if no channel consumes there (the reply is
/// dropped, as RabbitMQ drops it).
pub(crate) fn deliver_reply(address: &str, message: Arc<Message>) -> bool {
    let target = {
        let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        reg.get(address).map(|t| {
            (
                Arc::clone(&t.sink),
                t.consumer_tag.clone(),
                Arc::clone(&t.pseudo_queue),
            )
        })
    };
    let Some((sink, consumer_tag, queue)) = target else {
        return false;
    };
    sink.deliver(Delivery {
        queue,
        consumer: None,
        consumer_tag,
        offset: 0,
        message,
        redelivered: false,
        ack_required: false,
        enqueued_at: 0,
    });
    true
}
