//! RabbitMQ's delayed message exchange plugin (`x-delayed-message`): a message published
//! with a positive `x-delay` header is held by the exchange and routed when it is due, with
//! the bindings in place then. Held messages sit in one heap per vhost; those of durable
//! exchanges are also stored (in the vhost's delayed-message store queue) and survive
//! restarts. Every way into an exchange (a client's publish, the management API, dead
//! lettering) goes through `VHost::publish`, which asks `delay` first.

use std::cmp::Reverse;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pier_wire::FieldValue;

use crate::clock::NEVER;
use crate::message::Message;
use crate::publish::PublishOptions;
use crate::vhost::VHost;

/// A message held by a delayed exchange until `due`.
#[derive(Debug)]
pub(crate) struct DelayedMessage {
    due: u64,
    seq: u64,
    message: Arc<Message>,
    /// Its offset in the vhost's delayed-message store queue, when the exchange is durable.
    stored: Option<u64>,
}

impl PartialEq for DelayedMessage {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for DelayedMessage {}

impl PartialOrd for DelayedMessage {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DelayedMessage {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The positive `x-delay` of a message (milliseconds), if it has one: integers, numeric
/// strings and floats (truncated) count, as in the plugin; delays beyond 2^32-1 ms (Erlang's
/// timer limit) route at once, as there.
fn delay_of(message: &Message) -> Option<u64> {
    let v = message.properties.headers.as_ref()?.get("x-delay")?;
    let d: i64 = match v {
        FieldValue::LongString(s) => s.to_str()?.parse().ok()?,
        FieldValue::Float(f) => f.trunc() as i64,
        FieldValue::Double(f) => f.trunc() as i64,
        other => other.as_i64()?,
    };
    u64::try_from(d)
        .ok()
        .filter(|&d| d > 0 && d <= u64::from(u32::MAX))
}

impl VHost {
    /// A message published to an `x-delayed-message` exchange with a positive `x-delay`
    /// header is held until then (true); anything else routes now (false). Like the plugin,
    /// routing happens when the delay is over, with the bindings in place at that time.
    ///
    /// On a durable exchange of a vhost with storage the message is stored (with its due time)
    /// so that it survives a restart; `durability` then learns when it is on disk.
    pub(crate) fn delay(
        &self,
        message: &Arc<Message>,
        durability: Option<&Arc<crate::persist::PublishDurability>>,
    ) -> bool {
        if message.exchange.is_empty() {
            return false;
        }
        let Some(delay) = delay_of(message) else {
            return false;
        };
        let durable = {
            let t = self.read();
            match t.exchanges.get(&message.exchange) {
                Some(x) if x.delayed && !x.internal => x.durable,
                _ => return false,
            }
        };
        let due = self.clock().now_ms().saturating_add(delay);
        let mut heap = self.delayed.lock().unwrap_or_else(|p| p.into_inner());
        // Stored under the heap lock: the store needs this pseudo-queue's offsets in order.
        let stored = match (durable, self.storage()) {
            (true, Some(s)) => crate::storage::delayed_stored(s, message, delay, durability),
            _ => None,
        };
        heap.push(Reverse(DelayedMessage {
            due,
            seq: DELAYED_SEQ.fetch_add(1, Ordering::Relaxed),
            message: Arc::clone(message),
            stored,
        }));
        self.next_delayed.fetch_min(due, Ordering::Relaxed);
        true
    }

    /// Puts back a delayed message recovered from the store, due in `remaining_ms`.
    pub(crate) fn restore_delayed(&self, message: Arc<Message>, remaining_ms: u64, offset: u64) {
        let due = self.clock().now_ms().saturating_add(remaining_ms);
        let mut heap = self.delayed.lock().unwrap_or_else(|p| p.into_inner());
        heap.push(Reverse(DelayedMessage {
            due,
            seq: DELAYED_SEQ.fetch_add(1, Ordering::Relaxed),
            message,
            stored: Some(offset),
        }));
        self.next_delayed.fetch_min(due, Ordering::Relaxed);
    }

    /// How many messages delayed exchanges hold.
    pub fn delayed_count(&self) -> usize {
        self.delayed.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Routes the delayed messages that are due, through the single publish path (with the
    /// bindings in place now, as the plugin does). A deleted exchange drops what it held.
    pub(crate) fn fire_delayed(&self, now: u64) {
        if self.next_delayed.load(Ordering::Relaxed) > now {
            return;
        }
        let mut due = Vec::new();
        {
            let mut heap = self.delayed.lock().unwrap_or_else(|p| p.into_inner());
            while heap.peek().is_some_and(|Reverse(d)| d.due <= now) {
                if let Some(Reverse(d)) = heap.pop() {
                    due.push(d);
                }
            }
            let next = heap.peek().map_or(NEVER, |Reverse(d)| d.due);
            self.next_delayed.store(next, Ordering::Relaxed);
        }
        if let Some(s) = self.storage() {
            let fired: Vec<u64> = due.iter().filter_map(|d| d.stored).collect();
            crate::storage::delayed_fired(s, fired);
        }
        for d in due {
            // Its x-delay is negated: it goes through the exchange now, not into the heap again.
            let _ = self.publish(undelayed(d.message), PublishOptions::internal());
        }
    }
}

/// The plugin negates `x-delay` on the message it finally routes (so it is not delayed twice).
static DELAYED_SEQ: AtomicU64 = AtomicU64::new(0);

fn undelayed(message: Arc<Message>) -> Arc<Message> {
    let mut props = message.properties.clone();
    if let Some(h) = props.headers.as_mut() {
        if let Some(d) = h.get("x-delay").and_then(FieldValue::as_i64) {
            let negated = i32::try_from(-d).unwrap_or(i32::MIN);
            h.insert("x-delay", FieldValue::LongInt(negated));
        }
    }
    Arc::new(Message::new(
        message.exchange.clone(),
        message.routing_key.clone(),
        props,
        message.body.clone(),
    ))
}
