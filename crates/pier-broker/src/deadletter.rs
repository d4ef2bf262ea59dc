//! Dead lettering: the message a queue republishes when it rejects, expires or overflows one,
//! with the `x-death` history RabbitMQ 3.10 writes, and its cycle rule.
//!
//! Queues never route while they hold their lock: they hand [`DeadLetter`]s back, and the vhost
//! builds the new message here and routes it once the lock is released.

use std::collections::HashSet;
use std::sync::Arc;

use pier_wire::{FieldTable, FieldValue, LongString, ShortString};

use crate::message::Message;

/// Why a message was dead-lettered (the `reason` in `x-death`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// basic.reject / basic.nack with requeue=false.
    Rejected,
    /// Its TTL (per-queue or per-message) ran out.
    Expired,
    /// Dropped from the head (or refused with reject-publish-dlx) because of a length limit.
    MaxLen,
    /// Returned more often than the queue's delivery limit (`x-delivery-limit`).
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }

    /// Its code in the durable store (a kept dead letter's note).
    pub fn code(self) -> u8 {
        match self {
            DeathReason::Rejected => 1,
            DeathReason::Expired => 2,
            DeathReason::MaxLen => 3,
            DeathReason::DeliveryLimit => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<DeathReason> {
        match code {
            1 => Some(DeathReason::Rejected),
            2 => Some(DeathReason::Expired),
            3 => Some(DeathReason::MaxLen),
            4 => Some(DeathReason::DeliveryLimit),
            _ => None,
        }
    }
}

/// A message a queue gave up, to be republished to the queue's dead-letter exchange.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: Arc<Message>,
    pub reason: DeathReason,
    /// At-least-once: the source queue keeps the message at this offset until its targets
    /// confirm it (`Queue::dead_letter_settled`); `None`: at most once, gone already.
    pub kept: Option<u64>,
}

/// The routing keys a message was published with: its routing key plus the `CC` header's
/// (`BCC` is stripped at publish time).
pub fn routing_keys(message: &Message) -> Vec<ShortString> {
    let mut keys = vec![message.routing_key.clone()];
    if let Some(cc) = message
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("CC"))
        .and_then(FieldValue::as_array)
    {
        for v in cc {
            if let FieldValue::LongString(s) = v {
                keys.push(ShortString::truncated(&s.to_str_lossy()));
            }
        }
    }
    keys
}

fn longstr(s: &str) -> FieldValue {
    FieldValue::LongString(LongString::from(s))
}

fn entry_str<'a>(entry: &'a FieldTable, key: &str) -> Option<&'a str> {
    entry.get(key).and_then(FieldValue::as_str)
}

/// Builds the dead-lettered copy of `message`: `x-death` updated (the entry for this queue and
/// reason gets its count incremented and moves to the front, otherwise a new entry goes in
/// front), `x-first-death-*` set on the first death, `expiration` removed (kept as
/// `original-expiration`), `CC`/`BCC` removed when a dead-letter routing key replaces the keys.
/// Returns the message (exchange = the DLX, routing key = the DLRK or the original key) and the
/// routing keys to route it with.
pub fn dead_lettered(
    message: &Message,
    reason: DeathReason,
    queue: &str,
    dlx: &str,
    dlrk: Option<&str>,
    unix_time: u64,
) -> (Message, Vec<ShortString>) {
    let original_keys = routing_keys(message);
    let mut props = message.properties.clone();
    let mut headers = props.headers.take().unwrap_or_default();

    let mut info = FieldTable::new();
    info.insert("reason", longstr(reason.as_str()));
    info.insert("queue", longstr(queue));
    info.insert("time", FieldValue::Timestamp(unix_time));
    info.insert("exchange", longstr(&message.exchange));
    info.insert(
        "routing-keys",
        FieldValue::Array(original_keys.iter().map(|k| longstr(k)).collect()),
    );
    if let Some(exp) = props.expiration.take() {
        info.insert("original-expiration", longstr(&exp));
    }

    match headers.remove("x-death") {
        Some(FieldValue::Array(existing)) => {
            let mut others = Vec::with_capacity(existing.len() + 1);
            let mut matched: Option<FieldTable> = None;
            for v in existing {
                match v {
                    FieldValue::Table(t)
                        if matched.is_none()
                            && entry_str(&t, "queue") == Some(queue)
                            && entry_str(&t, "reason") == Some(reason.as_str()) =>
                    {
                        matched = Some(t);
                    }
                    other => others.push(other),
                }
            }
            let entry = match matched {
                Some(mut t) => {
                    let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
                    t.insert("count", FieldValue::LongLongInt(count.saturating_add(1)));
                    t
                }
                None => {
                    info.insert("count", FieldValue::LongLongInt(1));
                    info
                }
            };
            others.insert(0, FieldValue::Table(entry));
            headers.insert("x-death", FieldValue::Array(others));
        }
        _ => {
            info.insert("count", FieldValue::LongLongInt(1));
            headers.insert("x-death", FieldValue::Array(vec![FieldValue::Table(info)]));
            headers.insert("x-first-death-reason", longstr(reason.as_str()));
            headers.insert("x-first-death-queue", longstr(queue));
            headers.insert("x-first-death-exchange", longstr(&message.exchange));
        }
    }

    let (routing_key, keys) = match dlrk {
        Some(k) => {
            headers.remove("CC");
            headers.remove("BCC");
            (ShortString::from(k), vec![ShortString::from(k)])
        }
        None => (message.routing_key.clone(), original_keys),
    };
    props.headers = Some(headers);
    let new = Message::new(
        ShortString::from(dlx),
        routing_key,
        props,
        message.body.clone(),
    );
    (new, keys)
}

/// RabbitMQ's cycle rule: a dead-lettered message is not delivered to `queue` if it already
/// died there and no death since (including that one) was a rejection. Rejections are never
/// cycles (a client decided).
pub fn is_cycle(message: &Message, reason: DeathReason, queue: &str) -> bool {
    if reason == DeathReason::Rejected {
        return false;
    }
    let Some(deaths) = message
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
        .and_then(FieldValue::as_array)
    else {
        return false;
    };
    for d in deaths {
        let Some(t) = d.as_table() else {
            return false;
        };
        if entry_str(t, "reason") == Some("rejected") {
            return false;
        }
        if entry_str(t, "queue") == Some(queue) {
            return true;
        }
    }
    false
}

/// How long an at-least-once dead letter its targets did not take waits before it is routed
/// again (no exchange, no queue bound, a queue refused it, a copy failed).
pub const DEAD_LETTER_RETRY_MS: u64 = 5_000;

/// The runtime's side of a queue's at-least-once dead letters (decision 0010; the engine
/// keeps the messages): those on their way to their targets, and when those the targets did
/// not take go again. Times are the caller's clock, in milliseconds.
#[derive(Debug, Default)]
pub struct DeadLettersInFlight {
    routed: HashSet<u64>,
    retry_at: Option<u64>,
}

impl DeadLettersInFlight {
    /// The dead letter kept at `offset` goes to its targets now; false when it is on its
    /// way already.
    pub fn route(&mut self, offset: u64) -> bool {
        self.routed.insert(offset)
    }

    /// Its targets answered (`ok`: every one took it); one not taken goes again
    /// `DEAD_LETTER_RETRY_MS` after `now`.
    pub fn answered(&mut self, offset: u64, ok: bool, now: u64) {
        self.routed.remove(&offset);
        if !ok {
            self.retry_later(now);
        }
    }

    /// What is not on its way goes again `DEAD_LETTER_RETRY_MS` after `now` (or sooner, if
    /// a retry was due before).
    pub fn retry_later(&mut self, now: u64) {
        let at = now.saturating_add(DEAD_LETTER_RETRY_MS);
        self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
    }

    /// Everything kept goes again at once, those on their way too (a new leader: it does
    /// not know what its predecessor had sent).
    pub fn restart(&mut self) {
        self.routed.clear();
        self.retry_at = Some(0);
    }

    /// Whether a retry is due by `now` (it is then taken).
    pub fn take_retry(&mut self, now: u64) -> bool {
        let due = self.retry_at.is_some_and(|r| r <= now);
        if due {
            self.retry_at = None;
        }
        due
    }

    pub fn on_its_way(&self, offset: u64) -> bool {
        self.routed.contains(&offset)
    }

    /// When the next retry is due, if one is.
    pub fn retry_at(&self) -> Option<u64> {
        self.retry_at
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use pier_wire::BasicProperties;

    fn message(headers: Option<FieldTable>, expiration: Option<&str>) -> Message {
        Message::new(
            "src".into(),
            "rk".into(),
            BasicProperties {
                headers,
                expiration: expiration.map(ShortString::from),
                priority: Some(3),
                ..BasicProperties::default()
            },
            Bytes::from_static(b"body"),
        )
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        m.properties
            .headers
            .as_ref()
            .unwrap()
            .get("x-death")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_table().unwrap().clone())
            .collect()
    }

    #[test]
    fn first_death_writes_x_death_and_first_death_headers() {
        let mut h = FieldTable::new();
        h.insert(
            "CC",
            FieldValue::Array(vec![longstr("cc1"), FieldValue::LongInt(5)]),
        );
        let m = message(Some(h), Some("60000"));
        let (dl, keys) = dead_lettered(&m, DeathReason::Rejected, "q1", "dlx", None, 1000);
        assert_eq!(dl.exchange, "dlx");
        assert_eq!(dl.routing_key, "rk");
        assert_eq!(
            keys,
            vec![ShortString::from("rk"), ShortString::from("cc1")]
        );
        assert_eq!(dl.properties.expiration, None);
        assert_eq!(dl.properties.priority, Some(3));
        let h = dl.properties.headers.as_ref().unwrap();
        assert!(
            h.contains_key("CC"),
            "CC kept without a dead-letter routing key"
        );
        assert_eq!(
            h.get("x-first-death-reason").unwrap().as_str(),
            Some("rejected")
        );
        assert_eq!(h.get("x-first-death-queue").unwrap().as_str(), Some("q1"));
        assert_eq!(
            h.get("x-first-death-exchange").unwrap().as_str(),
            Some("src")
        );
        let d = deaths(&dl);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].get("count").unwrap().as_i64(), Some(1));
        assert_eq!(d[0].get("reason").unwrap().as_str(), Some("rejected"));
        assert_eq!(d[0].get("queue").unwrap().as_str(), Some("q1"));
        assert_eq!(d[0].get("exchange").unwrap().as_str(), Some("src"));
        assert_eq!(d[0].get("time"), Some(&FieldValue::Timestamp(1000)));
        assert_eq!(
            d[0].get("original-expiration").unwrap().as_str(),
            Some("60000")
        );
        assert_eq!(
            d[0].get("routing-keys"),
            Some(&FieldValue::Array(vec![longstr("rk"), longstr("cc1")]))
        );
        // The raw properties were re-encoded from the new ones.
        let decoded = BasicProperties::decode(dl.amqp_properties()).unwrap();
        assert_eq!(crate::message::Properties::from(decoded), dl.properties);
    }

    #[test]
    fn same_queue_and_reason_increments_and_moves_to_front() {
        let m = message(None, None);
        let (a, _) = dead_lettered(&m, DeathReason::Rejected, "q1", "dlx", None, 1);
        let (b, _) = dead_lettered(&a, DeathReason::Expired, "q2", "dlx", Some("k2"), 2);
        assert_eq!(b.routing_key, "k2");
        let (c, _) = dead_lettered(&b, DeathReason::Rejected, "q1", "dlx", None, 3);
        let d = deaths(&c);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].get("queue").unwrap().as_str(), Some("q1"));
        assert_eq!(d[0].get("count").unwrap().as_i64(), Some(2));
        assert_eq!(
            d[0].get("time"),
            Some(&FieldValue::Timestamp(1)),
            "entry kept"
        );
        assert_eq!(d[1].get("queue").unwrap().as_str(), Some("q2"));
        let h = c.properties.headers.as_ref().unwrap();
        assert_eq!(h.get("x-first-death-queue").unwrap().as_str(), Some("q1"));
        assert_eq!(
            h.get("x-first-death-reason").unwrap().as_str(),
            Some("rejected")
        );
    }

    #[test]
    fn cycles_are_automatic_deaths_only() {
        let m = message(None, None);
        let (a, _) = dead_lettered(&m, DeathReason::Expired, "q1", "", None, 1);
        assert!(is_cycle(&a, DeathReason::Expired, "q1"));
        assert!(!is_cycle(&a, DeathReason::Expired, "q2"));
        assert!(!is_cycle(&a, DeathReason::Rejected, "q1"));
        let (b, _) = dead_lettered(&a, DeathReason::Rejected, "q2", "", None, 1);
        let (c, _) = dead_lettered(&b, DeathReason::Expired, "q3", "", None, 1);
        // q1's death is behind a rejection: not a cycle.
        assert!(!is_cycle(&c, DeathReason::Expired, "q1"));
        assert!(is_cycle(&c, DeathReason::Expired, "q3"));
    }

    /// Routed once until answered; one not taken goes again after the retry time (the
    /// earliest one wins); a restart sends everything at once.
    #[test]
    fn dead_letters_in_flight_retry_what_was_not_taken() {
        let mut f = DeadLettersInFlight::default();
        assert!(f.route(1));
        assert!(!f.route(1), "on its way already");
        assert!(f.route(2));
        f.answered(1, true, 100);
        assert!(!f.on_its_way(1));
        assert_eq!(f.retry_at(), None, "taken: nothing to retry");
        f.answered(2, false, 100);
        f.retry_later(200);
        assert_eq!(f.retry_at(), Some(100 + DEAD_LETTER_RETRY_MS));
        assert!(!f.take_retry(100 + DEAD_LETTER_RETRY_MS - 1));
        assert!(f.take_retry(100 + DEAD_LETTER_RETRY_MS));
        assert!(!f.take_retry(u64::MAX), "taken once");
        assert!(f.route(3));
        f.restart();
        assert!(!f.on_its_way(3));
        assert!(f.take_retry(0));
    }
}
