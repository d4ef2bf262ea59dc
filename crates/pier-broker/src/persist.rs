//! The seam between the broker model and `pier-store`: which queues are stored, how a publish
//! learns that every copy of a message is on disk, and the conversions between the two crates'
//! message types.
//!
//! ```text
//!  channel ── PublishDurability (token) ──► Queue::publish_durable ──► StoreHandle::append
//!     ▲                                                                     │ (store thread,
//!     └──────────── on_done(ok) once every append is durable ◄──────────────┘  group commit)
//! ```
//!
//! Only persistent messages (delivery_mode 2) in durable queues are stored; everything else
//! stays in memory, as in RabbitMQ, unless a long queue pages it out to the node's scratch
//! paging store (never recovered; see `Queue::page_out_newest`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pier_store::{DefinitionsStore, QueueId, StoreHandle, StoredMessage};

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

/// A vhost's storage: its message store (one store thread) and the node's definitions.
#[derive(Clone)]
pub struct VhostStorage {
    pub messages: StoreHandle,
    pub definitions: Arc<DefinitionsStore>,
    /// The store queue holding messages waiting in durable delayed-message exchanges.
    pub delayed: Arc<DelayedQueue>,
}

/// Messages of durable `x-delayed-message` exchanges live in one store queue per vhost.
#[derive(Debug)]
pub struct DelayedQueue {
    pub id: QueueId,
    pub next_offset: std::sync::atomic::AtomicU64,
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

    /// The publisher is done routing.
    pub fn release(&self) {
        self.complete(true);
    }

    /// Marks the publish as failed (a store refused an append outright).
    pub(crate) fn fail(&self) {
        self.ok.store(false, Ordering::Release);
    }

    fn complete(&self, ok: bool) {
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

pub(crate) fn to_stored(m: &Message) -> StoredMessage {
    StoredMessage {
        exchange: m.exchange.clone(),
        routing_key: m.routing_key.clone(),
        raw_properties: m.raw_properties.clone(),
        body: m.body.clone(),
    }
}

/// Rebuilds a message read back from the store; `None` if its properties no longer decode
/// (they were checksummed on disk, so this means a format bug: skip it, loudly).
pub(crate) fn from_stored(s: StoredMessage) -> Option<Message> {
    let properties = pier_wire::BasicProperties::decode(&s.raw_properties).ok()?;
    Some(Message::new(
        s.exchange,
        s.routing_key,
        properties,
        s.raw_properties,
        s.body,
    ))
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
    fn nothing_stored_completes_on_release() {
        let done = Arc::new(AtomicBool::new(false));
        let d2 = Arc::clone(&done);
        PublishDurability::new(move |ok| d2.store(ok, Ordering::SeqCst)).release();
        assert!(done.load(Ordering::SeqCst));
    }
}
