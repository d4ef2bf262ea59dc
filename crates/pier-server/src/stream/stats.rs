//! What management sees of stream-protocol connections: each opened connection registers in
//! the server's [`Registry`](crate::Registry) with its publishers and subscriptions, whose
//! figures are relaxed atomics bumped on existing paths (one add per read, write, publish
//! batch, confirm batch and delivered chunk).
//!
//! ```text
//!  connection.rs ─register (after Open)─► Registry.streams { id → StreamConnectionEntry }
//!     publishers: id → PublisherStats (published, confirmed, errored)
//!     consumers:  id → ConsumerStats  (credit, active, consumed, offset)
//!  management ─stream_connections()─► Vec<StreamConnectionInfo>   ─close(name)─► Close frame
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::registry::ConnectionMeta;

/// Bytes and reads/writes of one connection.
#[derive(Debug, Default)]
pub struct StreamCounters {
    pub recv_oct: AtomicU64,
    pub recv_cnt: AtomicU64,
    pub send_oct: AtomicU64,
    pub send_cnt: AtomicU64,
}

impl StreamCounters {
    #[inline]
    pub(crate) fn count_read(&self, n: usize) {
        self.recv_oct.fetch_add(n as u64, Ordering::Relaxed);
        self.recv_cnt.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn count_write(&self, n: usize) {
        self.send_oct.fetch_add(n as u64, Ordering::Relaxed);
        self.send_cnt.fetch_add(1, Ordering::Relaxed);
    }
}

/// A publisher's figures (messages).
#[derive(Debug)]
pub struct PublisherStats {
    pub stream: String,
    pub reference: String,
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub errored: AtomicU64,
}

impl PublisherStats {
    pub(crate) fn new(stream: String, reference: String) -> Self {
        PublisherStats {
            stream,
            reference,
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            errored: AtomicU64::new(0),
        }
    }
}

/// A subscription's state and figures.
#[derive(Debug)]
pub struct ConsumerStats {
    pub stream: String,
    /// The subscription's properties (name, single-active-consumer, filters, …).
    pub properties: Vec<(String, String)>,
    /// Chunks the client may still be sent.
    pub credit: AtomicU32,
    /// False while a single-active-consumer group has another consumer active.
    pub active: AtomicBool,
    /// Messages delivered.
    pub consumed: AtomicU64,
    /// Offset of the last message delivered (0 before any).
    pub offset: AtomicU64,
}

impl ConsumerStats {
    pub(crate) fn new(
        stream: String,
        properties: Vec<(String, String)>,
        credit: u32,
        active: bool,
    ) -> Self {
        ConsumerStats {
            stream,
            properties,
            credit: AtomicU32::new(credit),
            active: AtomicBool::new(active),
            consumed: AtomicU64::new(0),
            offset: AtomicU64::new(0),
        }
    }
}

/// One registered stream connection.
pub struct StreamConnectionEntry {
    pub meta: Arc<ConnectionMeta>,
    pub(crate) counters: Arc<StreamCounters>,
    /// Cancelled to close the connection from management.
    pub(crate) close: CancellationToken,
    close_reason: Mutex<Option<String>>,
    publishers: Mutex<BTreeMap<u8, Arc<PublisherStats>>>,
    consumers: Mutex<BTreeMap<u8, Arc<ConsumerStats>>>,
}

impl StreamConnectionEntry {
    pub(crate) fn new(meta: ConnectionMeta, counters: Arc<StreamCounters>) -> Self {
        StreamConnectionEntry {
            meta: Arc::new(meta),
            counters,
            close: CancellationToken::new(),
            close_reason: Mutex::new(None),
            publishers: Mutex::new(BTreeMap::new()),
            consumers: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn request_close(&self, reason: &str) {
        *self.close_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
        self.close.cancel();
    }

    pub(crate) fn close_reason(&self) -> Option<String> {
        self.close_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn add_publisher(&self, id: u8, stats: Arc<PublisherStats>) {
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, stats);
    }

    pub(crate) fn remove_publisher(&self, id: u8) {
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub(crate) fn add_consumer(&self, id: u8, stats: Arc<ConsumerStats>) {
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, stats);
    }

    pub(crate) fn remove_consumer(&self, id: u8) {
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub(crate) fn snapshot(&self) -> StreamConnectionInfo {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        StreamConnectionInfo {
            meta: Arc::clone(&self.meta),
            recv_oct: load(&c.recv_oct),
            recv_cnt: load(&c.recv_cnt),
            send_oct: load(&c.send_oct),
            send_cnt: load(&c.send_cnt),
            publishers: self
                .publishers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(id, p)| StreamPublisherInfo {
                    id: *id,
                    stream: p.stream.clone(),
                    reference: p.reference.clone(),
                    published: load(&p.published),
                    confirmed: load(&p.confirmed),
                    errored: load(&p.errored),
                })
                .collect(),
            consumers: self
                .consumers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(id, s)| StreamConsumerInfo {
                    id: *id,
                    stream: s.stream.clone(),
                    properties: s.properties.clone(),
                    credit: s.credit.load(Ordering::Relaxed),
                    active: s.active.load(Ordering::Relaxed),
                    consumed: load(&s.consumed),
                    offset: load(&s.offset),
                })
                .collect(),
        }
    }
}

/// A publisher as management shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPublisherInfo {
    pub id: u8,
    pub stream: String,
    pub reference: String,
    pub published: u64,
    pub confirmed: u64,
    pub errored: u64,
}

/// A subscription as management shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConsumerInfo {
    pub id: u8,
    pub stream: String,
    pub properties: Vec<(String, String)>,
    pub credit: u32,
    pub active: bool,
    pub consumed: u64,
    pub offset: u64,
}

/// A stream connection as management shows it.
#[derive(Debug, Clone)]
pub struct StreamConnectionInfo {
    pub meta: Arc<ConnectionMeta>,
    pub recv_oct: u64,
    pub recv_cnt: u64,
    pub send_oct: u64,
    pub send_cnt: u64,
    pub publishers: Vec<StreamPublisherInfo>,
    pub consumers: Vec<StreamConsumerInfo>,
}
