//! The seam between the broker model and `pier-store`: which queues are stored, how a publish
//! learns that every copy of a message is on disk, and the conversions between the two crates'
//! message types.
//!
//! ```text
//!  VHost::publish ── PublishDurability (token) ──► classic runtime ──► StoreHandle::append
//!     ▲                                         (StoreAppend effect,        │ (encoded here;
//!     │                                          the queue's shard)         │  shard thread,
//!     └────────── on_done(ok) once every append is durable ◄───────────────┘  group commit)
//! ```
//!
//! A vhost's store is sharded (`pier_store::ShardedStore`): each durable queue lives on one
//! shard and keeps that shard's `StoreHandle` in its `QueueStore`, so everything below works
//! per queue as with one store. A message for several durable queues goes through
//! `fanout::publish_to_queues` instead: one append per shard (one record, a reference per
//! queue of that shard), and the token waits for every one of them.
//!
//! Only persistent messages (delivery_mode 2) in durable queues are stored; everything else
//! stays in memory, as in RabbitMQ, unless a long queue pages it out to the node's scratch
//! paging store (never recovered; see `queue/engine/paging.rs`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pier_store::{DefinitionsStore, QueueId, QueueRef, Shards, StoreHandle, StoredMessage};

use crate::message::Message;

/// A durable queue's place in its vhost's message store.
#[derive(Clone)]
pub struct QueueStore {
    pub handle: StoreHandle,
    pub id: QueueId,
}

impl std::fmt::Debug for QueueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueStore").field("id", &self.id).finish()
    }
}

/// A vhost's storage: its message store (shards, each with its own thread) and the node's
/// definitions.
#[derive(Clone)]
pub struct VhostStorage {
    pub messages: Shards,
    pub definitions: Arc<DefinitionsStore>,
    /// The store queue holding messages waiting in durable delayed-message exchanges.
    pub delayed: Arc<DelayedQueue>,
}

/// Messages of durable `x-delayed-message` exchanges live in one store queue per vhost.
#[derive(Debug)]
pub struct DelayedQueue {
    /// The shard it lives on.
    pub handle: StoreHandle,
    pub id: QueueId,
    /// Held while an offset is taken *and* its append is sent: the store refuses a queue's
    /// offsets out of order, which two racing publishers could otherwise cause.
    pub next_offset: Mutex<u64>,
}

impl std::fmt::Debug for VhostStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VhostStorage")
    }
}

type DoneCallback = Box<dyn FnOnce(bool) + Send>;

/// Tracks one publish until every store append it caused is durable, then calls `on_done`
/// once (`true`: all durable; `false`: some copy was lost, so the publisher gets a nack).
///
/// It starts with one token held by the publisher; each append adds one. `release` gives the
/// publisher's token back once routing is done, so a publish that stored nothing completes
/// right there, and one that did completes on the store thread after the group commit.
pub struct PublishDurability {
    remaining: AtomicUsize,
    ok: AtomicBool,
    on_done: Mutex<Option<DoneCallback>>,
}

impl PublishDurability {
    pub fn new(on_done: impl FnOnce(bool) + Send + 'static) -> Arc<Self> {
        Arc::new(PublishDurability {
            remaining: AtomicUsize::new(1),
            ok: AtomicBool::new(true),
            on_done: Mutex::new(Some(Box::new(on_done))),
        })
    }

    /// One more append to wait for; the returned callback goes to the store.
    pub(crate) fn add(self: &Arc<Self>) -> impl FnOnce(pier_store::Result<pier_store::Seq>) + Send {
        self.remaining.fetch_add(1, Ordering::AcqRel);
        let me = Arc::clone(self);
        move |r| me.complete(r.is_ok())
    }

    /// One more share to wait for, held outside the store: a queue on another node holds it
    /// until its home node confirms the publish. See [`DurabilityHold`].
    pub fn hold(self: &Arc<Self>) -> DurabilityHold {
        self.remaining.fetch_add(1, Ordering::AcqRel);
        DurabilityHold {
            durability: Some(Arc::clone(self)),
        }
    }

    /// One more append to wait for, reported as success or failure (stream appends).
    pub(crate) fn add_flag(self: &Arc<Self>) -> impl FnOnce(bool) + Send {
        self.remaining.fetch_add(1, Ordering::AcqRel);
        let me = Arc::clone(self);
        move |ok| me.complete(ok)
    }

    /// The publisher is done routing.
    pub fn release(&self) {
        self.complete(true);
    }

    pub(crate) fn complete(&self, ok: bool) {
        if !ok {
            self.ok.store(false, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let done = self
                .on_done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(done) = done {
                done(self.ok.load(Ordering::Acquire));
            }
        }
    }
}

/// A share of a publish's durability held outside the store (see
/// [`PublishDurability::hold`]). `complete` reports the outcome; dropped without it, the
/// copy counts as lost, so a publish whose holder went away (the link to the queue's home
/// node broke) is nacked rather than confirmed or left waiting.
pub struct DurabilityHold {
    durability: Option<Arc<PublishDurability>>,
}

impl DurabilityHold {
    /// `ok`: the copy is where it had to be (enqueued, and on disk when it is stored).
    pub fn complete(mut self, ok: bool) {
        if let Some(d) = self.durability.take() {
            d.complete(ok);
        }
    }
}

impl Drop for DurabilityHold {
    fn drop(&mut self) {
        if let Some(d) = self.durability.take() {
            d.complete(false);
        }
    }
}

impl std::fmt::Debug for DurabilityHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DurabilityHold")
    }
}

/// Sends one append (one record, `refs.len()` queue references) and makes `durability` wait
/// for it; a store that refuses it outright fails the publish (the publisher gets a nack) and
/// the error is returned for the caller to log.
pub(crate) fn append_durable(
    handle: &StoreHandle,
    refs: Vec<QueueRef>,
    copy: StoredMessage,
    durability: Option<&Arc<PublishDurability>>,
) -> pier_store::Result<()> {
    let sent = match durability {
        Some(d) => handle.append(refs, copy, d.add()),
        None => handle.append(refs, copy, |_| {}),
    };
    if sent.is_err() {
        if let Some(d) = durability {
            // The refused command took its callback with it: give back the token it held.
            d.complete(false);
        }
    }
    sent
}

/// `append_durable` with the sending left to `send`, which gets the durable callback.
pub(crate) fn append_durable_with(
    durability: Option<&Arc<PublishDurability>>,
    send: impl FnOnce(pier_store::DurableCallback) -> pier_store::Result<()>,
) -> pier_store::Result<()> {
    let sent = match durability {
        Some(d) => send(Box::new(d.add())),
        None => send(Box::new(|_| {})),
    };
    if sent.is_err() {
        if let Some(d) = durability {
            // The refused command took its callback with it: give back the token it held.
            d.complete(false);
        }
    }
    sent
}

pub fn to_stored(m: &Message) -> StoredMessage {
    StoredMessage {
        exchange: m.exchange.clone(),
        routing_key: m.routing_key.clone(),
        raw_properties: m.amqp_properties().clone(),
        body: m.body.clone(),
    }
}

/// Header carrying a stored message's expiry deadline (Unix milliseconds), so that a recovered
/// message keeps its original deadline, as in RabbitMQ. Added to the stored copy only (of
/// messages that have a TTL) and removed whenever a message is read back, so consumers never
/// see it. The name is reserved: a publisher's header of that name is treated the same way.
pub(crate) const EXPIRES_HEADER: &str = "x-pier-expires-at";

/// Wall-clock milliseconds since the Unix epoch (deadlines must survive a restart; the broker
/// clock starts again at every start).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The stored copy of a message, with its expiry deadline when it has one. The properties are
/// re-encoded only then; the body is shared, never copied.
pub(crate) fn to_stored_expiring(m: &Message, deadline_unix_ms: Option<u64>) -> StoredMessage {
    let Some(deadline) = deadline_unix_ms else {
        return to_stored(m);
    };
    let mut props = m.properties.clone();
    props
        .headers
        .get_or_insert_with(pier_wire::FieldTable::new)
        .insert(
            EXPIRES_HEADER,
            pier_wire::FieldValue::LongLongInt(i64::try_from(deadline).unwrap_or(i64::MAX)),
        );
    StoredMessage {
        exchange: m.exchange.clone(),
        routing_key: m.routing_key.clone(),
        raw_properties: props.encode_amqp(),
        body: m.body.clone(),
    }
}

/// Rebuilds a message read back from the store; `None` if its properties no longer decode
/// (they were checksummed on disk, so this means a format bug: skip it, loudly).
pub fn from_stored(s: StoredMessage) -> Option<Message> {
    from_stored_expiring(s).map(|(m, _)| m)
}

/// `from_stored`, also returning the expiry deadline (Unix ms) stored with it, if any; the
/// deadline header is removed from the message.
pub(crate) fn from_stored_expiring(s: StoredMessage) -> Option<(Message, Option<u64>)> {
    let mut properties = pier_wire::BasicProperties::decode(&s.raw_properties).ok()?;
    // A value that is not a non-negative integer is dropped and ignored (no deadline).
    let found = match properties.headers.as_mut() {
        Some(h) if h.get(EXPIRES_HEADER).is_some() => {
            let v = h.remove(EXPIRES_HEADER);
            if h.is_empty() {
                properties.headers = None;
            }
            Some(
                v.and_then(|v| v.as_i64())
                    .and_then(|v| u64::try_from(v).ok()),
            )
        }
        _ => None,
    };
    let deadline = found.flatten();
    let message = match found {
        // The stored bytes carry our header: re-encode without it.
        Some(_) => Message::new(s.exchange, s.routing_key, properties, s.body),
        None => Message::from_amqp(
            s.exchange,
            s.routing_key,
            properties,
            s.raw_properties,
            s.body,
        ),
    };
    Some((message, deadline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn durability_completes_once_after_every_append() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&calls);
        let d = PublishDurability::new(move |ok| {
            assert!(ok);
            seen.fetch_add(1, Ordering::SeqCst);
        });
        let a = d.add();
        let b = d.add();
        d.release();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        a(Ok(pier_store::Seq(1)));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        b(Ok(pier_store::Seq(2)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn durability_reports_a_lost_copy() {
        let result = Arc::new(Mutex::new(None));
        let r = Arc::clone(&result);
        let d = PublishDurability::new(move |ok| {
            *r.lock().unwrap_or_else(|p| p.into_inner()) = Some(ok)
        });
        let a = d.add();
        d.release();
        a(Err(pier_store::StoreError::Stopped));
        assert_eq!(
            *result.lock().unwrap_or_else(|p| p.into_inner()),
            Some(false)
        );
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn stored_deadline_round_trips_and_is_never_seen() {
        use pier_wire::{BasicProperties, FieldTable, FieldValue, ShortString};
        let plain = Message::new(
            ShortString::from("x"),
            ShortString::from("k"),
            BasicProperties {
                expiration: Some(ShortString::from("5000")),
                ..BasicProperties::default()
            },
            bytes::Bytes::from_static(b"body"),
        );
        let stored = to_stored_expiring(&plain, Some(1_700_000_000_123));
        assert_ne!(&stored.raw_properties, plain.amqp_properties());
        let (back, deadline) = from_stored_expiring(stored).unwrap();
        assert_eq!(deadline, Some(1_700_000_000_123));
        assert_eq!(back.properties, plain.properties);
        assert_eq!(
            back.amqp_properties(),
            plain.amqp_properties(),
            "no headers table left behind"
        );
        assert_eq!(back.body, plain.body);

        let mut headers = FieldTable::new();
        headers.insert("a", FieldValue::LongInt(1));
        let with_headers = Message::new(
            ShortString::from("x"),
            ShortString::from("k"),
            BasicProperties {
                headers: Some(headers),
                ..BasicProperties::default()
            },
            bytes::Bytes::from_static(b"body"),
        );
        let (back, deadline) =
            from_stored_expiring(to_stored_expiring(&with_headers, Some(7))).unwrap();
        assert_eq!(deadline, Some(7));
        assert_eq!(back.properties, with_headers.properties);
        // Without a deadline the stored bytes are the publisher's, untouched.
        let stored = to_stored_expiring(&with_headers, None);
        assert_eq!(&stored.raw_properties, with_headers.amqp_properties());
        let (back, deadline) = from_stored_expiring(stored).unwrap();
        assert_eq!(deadline, None);
        assert_eq!(back.amqp_properties(), with_headers.amqp_properties());
    }

    #[test]
    fn nothing_stored_completes_on_release() {
        let done = Arc::new(AtomicBool::new(false));
        let d2 = Arc::clone(&done);
        PublishDurability::new(move |ok| d2.store(ok, Ordering::SeqCst)).release();
        assert!(done.load(Ordering::SeqCst));
    }
}
