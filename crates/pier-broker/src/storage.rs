//! Durability for the broker: opens the data directory, recovers definitions and messages on
//! start, and keeps both up to date as clients declare, bind and delete.
//!
//! ```text
//!  <data>/definitions.redb        vhosts, users, permissions, durable exchanges/queues/bindings
//!  <data>/msgs/<vhost-dir>/       one ShardedStore per vhost: shard 0 in the directory itself,
//!                                 shard N in shard-NN/ (a SegmentStore + StoreThread each;
//!                                 see docs/storage.md)
//!  <data>/paging/                 scratch SegmentStore for bodies paged out of memory; never
//!                                 synced, wiped at every start (see docs/storage.md, "Paging")
//! ```
//!
//! What is stored follows RabbitMQ: durable exchanges, durable non-exclusive queues, bindings
//! between durable objects, and persistent messages (delivery_mode 2) in durable queues.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pier_store::{
    decode_arguments, encode_arguments, BindingDef, DefinitionsStore, DestinationKind, ExchangeDef,
    PermissionDef, PolicyDef, QueueDef, SegmentStore, ShardConfig, ShardedStore, Shards,
    StoreConfig, StoreHandle, StoreThread, SyncPolicy, ThreadConfig, TopicPermissionDef, UserDef,
    VhostDef,
};
use pier_wire::{FieldTable, ShortString};

use crate::error::BrokerError;
use crate::exchange::{Destination, Exchange};
use crate::message::Message;
use crate::persist::{
    from_stored, from_stored_expiring, to_stored, DelayedQueue, PublishDurability, QueueStore,
    VhostStorage,
};
use crate::policy::{ApplyTo, Policy, PolicyDefinition};
use crate::queue::Queue;
use crate::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use crate::{Broker, Permission, TopicPermission};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("definitions store: {0}")]
    Definitions(#[from] pier_store::DefinitionsError),
    #[error("message store for vhost '{vhost}': {source}")]
    Messages {
        vhost: String,
        #[source]
        source: pier_store::StoreError,
    },
    #[error("creating {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The store queue of delayed messages. Clients cannot name a queue `amq.*`, so it cannot
/// collide with theirs.
const DELAYED_QUEUE: &str = "amq.pier.delayed";
/// Header carrying a stored delayed message's due time (Unix milliseconds).
const DUE_HEADER: &str = "x-pier-due";

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a start-up recovery found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoverySummary {
    pub vhosts: usize,
    pub exchanges: usize,
    pub queues: usize,
    pub bindings: usize,
    /// Policies set over HTTP (or imported) and re-applied.
    pub policies: u64,
    pub messages: u64,
    pub delayed: u64,
}

/// How the node stores messages.
#[derive(Debug, Clone, Copy)]
pub struct StorageOptions {
    pub sync_policy: SyncPolicy,
    /// Shards per vhost message store that new queues are spread over (default: one per
    /// core, at most 16; see `pier_store::default_shards`).
    pub shards: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            sync_policy: SyncPolicy::Always,
            shards: pier_store::default_shards(),
        }
    }
}

/// The node's storage: the definitions store and one sharded message store per vhost.
pub struct BrokerStorage {
    dir: PathBuf,
    definitions: Arc<DefinitionsStore>,
    options: StorageOptions,
    stores: Mutex<HashMap<String, ShardedStore>>,
    /// The node's paging store thread (taken at shutdown) and a handle to it.
    paging: Mutex<Option<StoreThread>>,
    paging_handle: pier_store::StoreHandle,
    /// Whether streams fsync before confirming (default true).
    stream_sync: std::sync::atomic::AtomicBool,
}

/// Paging segments are smaller than durable ones: a drained backlog gives its disk back in
/// finer steps, and at most one (the active segment) stays behind.
const PAGING_SEGMENT_SIZE: u32 = 8 << 20;
/// Commands queued for the paging thread before publishers wait: each append holds a body,
/// so this bounds the memory a flood can park in the channel (256 × 64 KiB = 16 MiB).
const PAGING_CHANNEL: usize = 256;

/// Wipes `dir` (what a previous run paged out is garbage: those messages were in memory only)
/// and opens a scratch store there: no fsync of data, and ack files are not synced either
/// (a crash loses the whole directory anyway).
fn open_paging(dir: &Path) -> Result<StoreThread, StorageError> {
    let io = |source| StorageError::Io {
        path: dir.to_owned(),
        source,
    };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let err = |source| StorageError::Messages {
        vhost: "(paging)".to_owned(),
        source,
    };
    let config = StoreConfig {
        segment_size: PAGING_SEGMENT_SIZE,
        sync_policy: SyncPolicy::Never,
        lazy_sync_interval: std::time::Duration::from_secs(24 * 3600),
        ..StoreConfig::default()
    };
    let store = SegmentStore::open(dir, config).map_err(err)?;
    StoreThread::spawn(
        Box::new(store),
        ThreadConfig {
            channel_capacity: PAGING_CHANNEL,
            max_batch: PAGING_CHANNEL,
            ..ThreadConfig::default()
        },
    )
    .map_err(err)
}

impl std::fmt::Debug for BrokerStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerStorage")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A vhost name as a directory name: hex-encoded, so `/` and any other byte are safe.
fn vhost_dir(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

impl BrokerStorage {
    /// `open_with` the default options and this sync policy.
    pub fn open(dir: &Path, sync_policy: SyncPolicy) -> Result<Self, StorageError> {
        Self::open_with(
            dir,
            StorageOptions {
                sync_policy,
                ..StorageOptions::default()
            },
        )
    }

    pub fn open_with(dir: &Path, options: StorageOptions) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir.join("msgs")).map_err(|source| StorageError::Io {
            path: dir.join("msgs"),
            source,
        })?;
        let definitions = Arc::new(DefinitionsStore::open(dir.join("definitions.redb"))?);
        let paging = open_paging(&dir.join("paging"))?;
        Ok(BrokerStorage {
            dir: dir.to_owned(),
            definitions,
            options,
            stores: Mutex::new(HashMap::new()),
            paging_handle: paging.handle(),
            paging: Mutex::new(Some(paging)),
            stream_sync: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Whether the streams of every vhost fsync before they confirm (set before `recover`).
    pub fn set_stream_sync(&self, sync: bool) {
        self.stream_sync
            .store(sync, std::sync::atomic::Ordering::Release);
    }

    fn attach_streams(&self, vh: &VHost) {
        vh.set_streams_dir(self.dir.join("streams").join(vhost_dir(vh.name())));
        vh.set_stream_sync(self.stream_sync.load(std::sync::atomic::Ordering::Acquire));
    }

    /// Brings back what was stored (vhosts, users, permissions, topic permissions, durable
    /// topology, persistent
    /// messages), then makes the broker write every later change through. Call once, before
    /// serving clients, after the config file's users and vhosts were added to `broker`.
    pub fn recover(self: &Arc<Self>, broker: &Broker) -> Result<RecoverySummary, StorageError> {
        let started = Instant::now();
        let defs = self.definitions.load()?;
        let mut summary = RecoverySummary::default();
        for v in &defs.vhosts {
            broker.add_vhost(&v.name);
        }
        {
            let mut users = broker.users.write().unwrap_or_else(|p| p.into_inner());
            for u in &defs.users {
                if users.user(&u.name).is_none() {
                    users.add_user_with_hash(&u.name, &u.password_hash, u.tags.clone());
                }
            }
            for p in &defs.permissions {
                if users.permission(&p.user, &p.vhost).is_none() {
                    users.set_permission(
                        &p.user,
                        &p.vhost,
                        Permission {
                            configure: p.configure.clone(),
                            write: p.write.clone(),
                            read: p.read.clone(),
                        },
                    );
                }
            }
            for p in &defs.topic_permissions {
                // The config file's topic permissions win, as its permissions do.
                let configured = users
                    .compiled_topic_permissions(&p.user, &p.vhost)
                    .is_some_and(|s| s.get(&p.exchange).is_some());
                if !configured {
                    users.set_topic_permission(
                        &p.user,
                        &p.vhost,
                        TopicPermission {
                            exchange: p.exchange.clone(),
                            write: p.write.clone(),
                            read: p.read.clone(),
                        },
                    );
                }
            }
            broker
                .permissions_version
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        for vh in broker.vhosts() {
            summary.vhosts += 1;
            self.attach_streams(&vh);
            vh.attach_paging(self.paging_handle.clone());
            let shards = self.open_vhost_store(vh.name())?;
            let name = vh.name().to_owned();
            summary.policies += restore_policies(&vh, &defs.policies, &self.definitions);
            // Exchanges first (bindings need both ends), then queues with their messages.
            for x in defs.exchanges.iter().filter(|x| x.vhost == name) {
                let declared = vh.declare_exchange(&ExchangeDeclare {
                    name: ShortString::from(x.name.as_str()),
                    kind: x.kind.clone(),
                    passive: false,
                    durable: true,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: decode_arguments(&x.arguments).unwrap_or_default(),
                });
                match declared {
                    Ok(()) => summary.exchanges += 1,
                    Err(e) => {
                        tracing::error!(vhost = %name, exchange = %x.name, "not recovered: {e}")
                    }
                }
            }
            let stored = shards.queues().map_err(|source| StorageError::Messages {
                vhost: name.clone(),
                source,
            })?;
            let mut by_name: HashMap<String, (StoreHandle, pier_store::QueueInfo)> = stored
                .into_iter()
                .map(|(h, q)| (q.name.clone(), (h, q)))
                .collect();
            for qd in defs.queues.iter().filter(|q| q.vhost == name) {
                let declared = vh.declare_queue(&QueueDeclare {
                    name: ShortString::from(qd.name.as_str()),
                    passive: false,
                    durable: true,
                    exclusive: false,
                    auto_delete: qd.auto_delete,
                    arguments: decode_arguments(&qd.arguments).unwrap_or_default(),
                    connection: 0,
                });
                let queue = match declared {
                    Ok(d) => d.queue,
                    Err(e) => {
                        tracing::error!(vhost = %name, queue = %qd.name, "not recovered: {e}");
                        continue;
                    }
                };
                summary.queues += 1;
                if queue.is_remote() {
                    // Homed on another node (the cluster's record): nothing of it is stored
                    // here. Messages stored under its name (left from before it had a home
                    // elsewhere) are dropped with the orphans below.
                    if let Some((_, stale)) = by_name.get(&qd.name).filter(|(_, i)| i.messages > 0)
                    {
                        tracing::warn!(vhost = %name, queue = %qd.name, home = queue.home_node().unwrap_or("?"), messages = stale.messages, "messages stored on a node that is not the queue's home are dropped");
                    }
                    continue;
                }
                if queue.stream().is_some() {
                    // A stream keeps its messages in its own log.
                    continue;
                }
                let info = by_name.remove(&qd.name);
                summary.messages += restore_queue(&queue, &shards, info)?;
            }
            let delayed_info = by_name.remove(DELAYED_QUEUE);
            let delayed = restore_delayed(&vh, &shards, delayed_info)?;
            summary.delayed += vh.delayed_count() as u64;
            // Stored queues without a definition were deleted while a write was in flight.
            for (name, (h, orphan)) in by_name {
                if let Err(e) = shards.delete_queue(&h, orphan.id, &name) {
                    tracing::error!(queue = %name, "deleting a stored queue without definition: {e}");
                }
            }
            for b in defs.bindings.iter().filter(|b| b.vhost == name) {
                let args = decode_arguments(&b.arguments).unwrap_or_default();
                let key = ShortString::from(b.routing_key.as_str());
                let r = match b.destination_kind {
                    DestinationKind::Queue => {
                        vh.bind_queue(&b.destination, &b.source, key, args, 0)
                    }
                    DestinationKind::Exchange => {
                        vh.bind_exchange(&b.destination, &b.source, key, args)
                    }
                };
                match r {
                    Ok(()) => summary.bindings += 1,
                    Err(e) => {
                        tracing::error!(vhost = %name, source = %b.source, destination = %b.destination, "binding not recovered: {e}")
                    }
                }
            }
            vh.attach_storage(VhostStorage {
                messages: shards,
                definitions: Arc::clone(&self.definitions),
                delayed,
            });
        }
        // From here on, what the broker holds is what is stored.
        for vh in broker.vhosts() {
            self.definitions.put_vhost(&VhostDef {
                name: vh.name().to_owned(),
                description: String::new(),
                tags: Vec::new(),
            })?;
        }
        let users = broker.users();
        for u in users.users() {
            self.definitions.put_user(&UserDef {
                name: u.name.clone(),
                password_hash: u.password_hash.clone(),
                tags: u.tags.clone(),
            })?;
        }
        for (user, vhost, p) in users.permissions() {
            self.definitions.put_permission(&PermissionDef {
                user: user.to_owned(),
                vhost: vhost.to_owned(),
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            })?;
        }
        for (user, vhost, p) in users.topic_permissions() {
            self.definitions.put_topic_permission(&TopicPermissionDef {
                user: user.to_owned(),
                vhost: vhost.to_owned(),
                exchange: p.exchange.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            })?;
        }
        broker.set_storage(Arc::clone(self));
        tracing::info!(
            vhosts = summary.vhosts,
            exchanges = summary.exchanges,
            queues = summary.queues,
            bindings = summary.bindings,
            policies = summary.policies,
            messages = summary.messages,
            delayed = summary.delayed,
            "recovered from {} in {:.1?}",
            self.dir.display(),
            started.elapsed()
        );
        Ok(summary)
    }

    fn open_vhost_store(&self, vhost: &str) -> Result<Shards, StorageError> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(vhost) {
            return Ok(s.shards());
        }
        let err = |source| StorageError::Messages {
            vhost: vhost.to_owned(),
            source,
        };
        let dir = self.dir.join("msgs").join(vhost_dir(vhost));
        let config = ShardConfig {
            shards: self.options.shards,
            store: StoreConfig {
                sync_policy: self.options.sync_policy,
                ..StoreConfig::default()
            },
            ..ShardConfig::default()
        };
        let store = ShardedStore::open(&dir, config).map_err(err)?;
        let shards = store.shards();
        stores.insert(vhost.to_owned(), store);
        Ok(shards)
    }

    /// Storage for a vhost created after start-up (management API).
    pub fn attach_vhost(&self, vh: &VHost) -> Result<(), StorageError> {
        self.attach_streams(vh);
        vh.attach_paging(self.paging_handle.clone());
        let shards = self.open_vhost_store(vh.name())?;
        let delayed = restore_delayed(vh, &shards, None)?;
        self.definitions.put_vhost(&VhostDef {
            name: vh.name().to_owned(),
            description: String::new(),
            tags: Vec::new(),
        })?;
        vh.attach_storage(VhostStorage {
            messages: shards,
            definitions: Arc::clone(&self.definitions),
            delayed,
        });
        Ok(())
    }

    pub fn definitions(&self) -> &Arc<DefinitionsStore> {
        &self.definitions
    }

    /// Flushes and syncs every store (acks included) and stops their threads.
    pub fn shutdown(&self) {
        let stores: Vec<(String, ShardedStore)> = self
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (vhost, s) in stores {
            if let Err(e) = s.shutdown() {
                tracing::error!(%vhost, "closing the message store: {e}");
            }
        }
        let paging = self.paging.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = paging {
            if let Err(e) = t.shutdown() {
                tracing::warn!("closing the paging store: {e}");
            }
            // Nothing in it can be used again; the next start would wipe it anyway.
            let _ = std::fs::remove_dir_all(self.dir.join("paging"));
        }
    }

    /// The node's paging store (tests and figures).
    pub fn paging(&self) -> &pier_store::StoreHandle {
        &self.paging_handle
    }
}

/// Loads a durable queue's live messages back into it (from its shard, found in `info`, or
/// a new place if it had none); returns how many.
fn restore_queue(
    queue: &Arc<Queue>,
    shards: &Shards,
    info: Option<(StoreHandle, pier_store::QueueInfo)>,
) -> Result<u64, StorageError> {
    let name = queue.name().to_string();
    let vhost = queue.vhost().to_owned();
    let err = |source| StorageError::Messages {
        vhost: vhost.clone(),
        source,
    };
    let (handle, id, next_offset) = match info {
        Some((h, i)) => (h, i.id, i.next_offset),
        None => {
            let (h, id) = shards.open_queue(&name).map_err(err)?;
            (h, id, 0)
        }
    };
    let handle = &handle;
    queue.attach_store(QueueStore {
        handle: handle.clone(),
        id,
    });
    let live = handle
        .call(move |s| s.live_messages(id))
        .map_err(err)?
        .map_err(err)?;
    // Read back in chunks: the queue keeps the bodies of its head in memory and only the
    // places of the rest (see Queue::restore), so recovery memory stays bounded too.
    let mut count = 0u64;
    let total = live.len();
    let mut last_report = std::time::Instant::now();
    for chunk in live.chunks(4096) {
        // Reading back a 10-million-message queue takes tens of seconds: say how far it got.
        if last_report.elapsed() >= std::time::Duration::from_secs(5) {
            last_report = std::time::Instant::now();
            tracing::info!(queue = %name, vhost = %vhost, restored = count, of = total, "queue recovery in progress");
        }
        let loaded = read_live(handle, id, chunk.to_vec()).map_err(err)?;
        let mut messages = Vec::with_capacity(loaded.len());
        for (l, stored) in loaded {
            let offset = l.offset;
            match from_stored_expiring(stored) {
                Some((m, deadline)) => messages.push(crate::queue::Recovered {
                    offset,
                    message: Arc::new(m),
                    redelivered: l.redelivered,
                    deadline,
                    returns: l.returns,
                    dead_letter: l
                        .dead_letter
                        .and_then(crate::deadletter::DeathReason::from_code),
                }),
                None => {
                    tracing::error!(queue = %name, offset, "stored message properties do not decode, skipped")
                }
            }
        }
        count += messages.len() as u64;
        queue.restore(messages, next_offset);
    }
    Ok(count)
}

/// Opens the vhost's delayed-message store queue and puts what it holds back in the vhost's
/// delay heap, each due at its stored time (or at once if that has passed).
fn restore_delayed(
    vh: &VHost,
    shards: &Shards,
    info: Option<(StoreHandle, pier_store::QueueInfo)>,
) -> Result<Arc<DelayedQueue>, StorageError> {
    let err = |source| StorageError::Messages {
        vhost: vh.name().to_owned(),
        source,
    };
    let (handle, id, next_offset) = match info {
        Some((h, i)) => (h, i.id, i.next_offset),
        None => {
            let (h, id) = shards.open_queue(DELAYED_QUEUE).map_err(err)?;
            (h, id, 0)
        }
    };
    let handle = &handle;
    let live = handle
        .call(move |s| s.live_messages(id))
        .map_err(err)?
        .map_err(err)?;
    let loaded = read_live(handle, id, live).map_err(err)?;
    let now = unix_ms();
    for (l, stored) in loaded {
        let offset = l.offset;
        let Some(m) = from_stored(stored) else {
            continue;
        };
        let mut props = m.properties.clone();
        let due = props
            .headers
            .as_mut()
            .and_then(|h| h.remove(DUE_HEADER))
            .and_then(|v| v.as_i64())
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(now);
        let message = Message::new(m.exchange, m.routing_key, props, m.body);
        vh.restore_delayed(Arc::new(message), due.saturating_sub(now), offset);
    }
    Ok(Arc::new(DelayedQueue {
        handle: handle.clone(),
        id,
        next_offset: std::sync::Mutex::new(next_offset),
    }))
}

/// Reads live messages back on the store thread (one round trip); unreadable ones are logged
/// and skipped. Returns each with its message, in the order asked.
fn read_live(
    handle: &pier_store::StoreHandle,
    id: pier_store::QueueId,
    wanted: Vec<pier_store::LiveMessage>,
) -> pier_store::Result<Vec<(pier_store::LiveMessage, pier_store::StoredMessage)>> {
    handle.call(move |s| {
        wanted
            .into_iter()
            .filter_map(|l| match s.read(id, l.offset) {
                Ok(m) => Some((l, m)),
                Err(e) => {
                    tracing::error!(offset = l.offset, "stored message unreadable, skipped: {e}");
                    None
                }
            })
            .collect()
    })
}

/// Stores a message entering a durable delayed exchange; returns its offset there.
pub(crate) fn delayed_stored(
    s: &VhostStorage,
    message: &Message,
    delay_ms: u64,
    durability: Option<&Arc<PublishDurability>>,
) -> Option<u64> {
    let mut props = message.properties.clone();
    let due = i64::try_from(unix_ms().saturating_add(delay_ms)).unwrap_or(i64::MAX);
    props
        .headers
        .get_or_insert_with(FieldTable::new)
        .insert(DUE_HEADER, pier_wire::FieldValue::LongLongInt(due));
    let copy = Message::new(
        message.exchange.clone(),
        message.routing_key.clone(),
        props,
        message.body.clone(),
    );
    let stored = to_stored(&copy);
    let mut next = s
        .delayed
        .next_offset
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let offset = *next;
    *next += 1;
    let refs = vec![pier_store::QueueRef {
        queue: s.delayed.id,
        offset,
    }];
    let appended = crate::persist::append_durable(&s.delayed.handle, refs, stored, durability);
    drop(next);
    match appended {
        Ok(()) => Some(offset),
        Err(e) => {
            tracing::error!("storing a delayed message failed: {e}");
            None
        }
    }
}

/// Delayed messages that fired (or were dropped) leave the store.
pub(crate) fn delayed_fired(s: &VhostStorage, offsets: Vec<u64>) {
    if !offsets.is_empty() {
        log_err(
            "delayed message ack",
            s.delayed.handle.ack(s.delayed.id, offsets),
        );
    }
}

// ---- write-through hooks, called by the vhost with its topology lock held ----

fn log_err<E: std::fmt::Display>(what: &str, r: Result<impl Sized, E>) {
    if let Err(e) = r {
        tracing::error!("storing {what} failed: {e}");
    }
}

/// A storage failure refusing a declaration, logged with what and why.
fn refused(what: String, e: impl std::fmt::Display) -> BrokerError {
    tracing::error!("storing {what} failed, declaration refused: {e}");
    BrokerError::Storage {
        what,
        reason: e.to_string(),
    }
}

pub(crate) fn exchange_declared(
    s: &VhostStorage,
    vhost: &str,
    x: &Exchange,
) -> Result<(), BrokerError> {
    if !x.durable {
        return Ok(());
    }
    let arguments = encode_arguments(&x.arguments).unwrap_or_default();
    s.definitions
        .put_exchange(&ExchangeDef {
            vhost: vhost.to_owned(),
            name: x.name.to_string(),
            kind: x.type_name().to_owned(),
            durable: true,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments,
        })
        .map_err(|e| refused(format!("exchange '{}' in vhost '{vhost}'", x.name), e))
}

pub(crate) fn exchange_deleted(s: &VhostStorage, vhost: &str, name: &str) {
    log_err(
        "exchange deletion",
        s.definitions.delete_exchange(vhost, name),
    );
}

pub(crate) fn policy_set(s: &VhostStorage, vhost: &str, p: &Policy) {
    log_err(
        "policy",
        s.definitions.put_policy(&PolicyDef {
            vhost: vhost.to_owned(),
            name: p.name.clone(),
            pattern: p.pattern().to_owned(),
            apply_to: p.apply_to.as_str().to_owned(),
            priority: p.priority,
            definition: p.definition.to_json(),
        }),
    );
}

pub(crate) fn policy_cleared(s: &VhostStorage, vhost: &str, name: &str) {
    log_err("policy deletion", s.definitions.delete_policy(vhost, name));
}

/// Re-applies a vhost's stored policies (before its queues are recovered, so they shape them
/// as at declaration). A config-file policy of the same name is already set and wins: the
/// stored one is dropped from the store, so that removing the entry from the config file later
/// does not bring back an older value set over HTTP.
fn restore_policies(vh: &VHost, stored: &[PolicyDef], definitions: &DefinitionsStore) -> u64 {
    let configured: Vec<String> = vh.policies().into_iter().map(|p| p.name).collect();
    let mut restored = 0;
    for pd in stored.iter().filter(|p| p.vhost == vh.name()) {
        if configured.contains(&pd.name) {
            tracing::warn!(vhost = %vh.name(), policy = %pd.name, "the config file sets this policy: the stored one (set over HTTP) is dropped");
            log_err(
                "policy deletion",
                definitions.delete_policy(vh.name(), &pd.name),
            );
            continue;
        }
        match policy_from_def(pd) {
            Ok(p) => {
                vh.set_policy(p);
                restored += 1;
            }
            Err(e) => {
                tracing::error!(vhost = %vh.name(), policy = %pd.name, "stored policy not recovered: {e}")
            }
        }
    }
    restored
}

fn policy_from_def(pd: &PolicyDef) -> Result<Policy, String> {
    let apply_to = ApplyTo::parse(&pd.apply_to)
        .ok_or_else(|| format!("unknown apply-to '{}'", pd.apply_to))?;
    let definition = match &pd.definition {
        // Lenient: a stored key a later Pier version no longer applies should not lose the rest.
        serde_json::Value::Object(m) => PolicyDefinition::from_json(m, true)?,
        other => return Err(format!("definition is not an object: {other}")),
    };
    Policy::new(
        pd.name.clone(),
        &pd.pattern,
        apply_to,
        pd.priority,
        definition,
    )
}

/// A new durable, non-exclusive queue: its definition, and its place in the message store.
/// Either failing refuses the declaration: a queue without a store would confirm persistent
/// messages it never stored, one without a definition would lose them at the next restart.
/// Whether a queue has a durable record (durable and not exclusive).
pub(crate) fn keeps_record(q: &Queue) -> bool {
    let o = q.options();
    o.durable && o.exclusive_owner.is_none()
}

pub(crate) fn queue_declared(s: &VhostStorage, vhost: &str, q: &Queue) -> Result<(), BrokerError> {
    if !keeps_record(q) {
        return Ok(());
    }
    let o = q.options();
    let what = || format!("queue '{}' in vhost '{vhost}'", q.name());
    let arguments = encode_arguments(&o.arguments).unwrap_or_default();
    s.definitions
        .put_queue(&QueueDef {
            vhost: vhost.to_owned(),
            name: q.name().to_string(),
            durable: true,
            auto_delete: o.auto_delete,
            arguments,
        })
        .map_err(|e| refused(what(), e))?;
    if q.is_remote() || q.stream().is_some() {
        // A remote queue's messages are stored on its home node; a stream keeps its
        // messages in its own log.
        return Ok(());
    }
    match s.messages.open_queue(q.name()) {
        Ok((handle, id)) => {
            q.attach_store(QueueStore { handle, id });
            Ok(())
        }
        Err(e) => {
            // Best effort: a definition left behind comes back empty after a restart.
            let _ = s.definitions.delete_queue(vhost, q.name());
            Err(refused(what(), e))
        }
    }
}

pub(crate) fn queue_deleted(s: &VhostStorage, vhost: &str, q: &Queue) {
    if (q.is_remote() && q.options().durable) || q.stream().is_some() {
        log_err(
            "queue deletion",
            s.definitions.delete_queue(vhost, q.name()),
        );
        return;
    }
    let Some(qs) = q.store() else { return };
    log_err(
        "queue deletion",
        s.definitions.delete_queue(vhost, q.name()),
    );
    log_err(
        "queue deletion",
        s.messages.delete_queue(&qs.handle, qs.id, q.name()),
    );
}

pub(crate) fn binding_def(
    vhost: &str,
    source: &str,
    destination: &Destination,
    routing_key: &ShortString,
    arguments: &FieldTable,
) -> BindingDef {
    let (destination, destination_kind) = match destination {
        Destination::Queue(n) => (n.to_string(), DestinationKind::Queue),
        Destination::Exchange(n) => (n.to_string(), DestinationKind::Exchange),
    };
    BindingDef {
        vhost: vhost.to_owned(),
        source: source.to_owned(),
        destination,
        destination_kind,
        routing_key: routing_key.to_string(),
        arguments: encode_arguments(arguments).unwrap_or_default(),
    }
}

/// Stores (`added`) or forgets a binding's record.
pub(crate) fn binding_changed(s: &VhostStorage, def: &BindingDef, added: bool) {
    if added {
        log_err("binding", s.definitions.put_binding(def));
    } else {
        log_err("binding deletion", s.definitions.delete_binding(def));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use pier_wire::FieldValue;

    fn durable(name: &str, max_length: i64) -> QueueDeclare {
        let mut arguments = FieldTable::new();
        arguments.insert("x-max-length", FieldValue::LongLongInt(max_length));
        QueueDeclare {
            name: ShortString::from(name),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments,
            connection: 1,
        }
    }

    fn declare_durable_direct(vh: &VHost, name: &str) {
        vh.declare_exchange(&ExchangeDeclare {
            name: ShortString::from(name),
            kind: "direct".into(),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        })
        .unwrap();
    }

    fn open(dir: &Path) -> (Arc<Broker>, Arc<BrokerStorage>) {
        let broker = Arc::new(Broker::empty(Vec::new()));
        broker.add_vhost("/");
        let storage = Arc::new(BrokerStorage::open(dir, pier_store::SyncPolicy::Always).unwrap());
        storage.recover(&broker).unwrap();
        (broker, storage)
    }

    /// Durable declarations and bindings are stored outside the topology lock: declarations
    /// of one name by many threads at once still make one queue (an inequivalent one is
    /// refused), routing goes on meanwhile, and everything comes back after a restart.
    #[test]
    fn concurrent_durable_declarations_make_one_queue_and_are_all_stored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (broker, _storage) = open(dir.path());
            let vh = broker.vhost("/").unwrap();
            declare_durable_direct(&vh, "x");
            let routing = std::sync::atomic::AtomicBool::new(true);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while routing.load(std::sync::atomic::Ordering::Acquire) {
                        out.clear();
                        vh.route("x", "k0", None, &mut out).unwrap();
                    }
                });
                let workers: Vec<_> = (0..8)
                    .map(|w| {
                        let vh = &vh;
                        s.spawn(move || {
                            let mut created = 0;
                            for i in 0..20 {
                                let name = format!("q{i}");
                                let d = vh.declare_queue(&durable(&name, 10)).unwrap();
                                created += usize::from(d.created);
                                vh.bind_queue(
                                    &name,
                                    "x",
                                    ShortString::from(format!("k{}", (i + w) % 20)),
                                    FieldTable::new(),
                                    1,
                                )
                                .unwrap();
                            }
                            created
                        })
                    })
                    .collect();
                let created: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
                assert_eq!(
                    created, 20,
                    "each name is created by exactly one declaration"
                );
                routing.store(false, std::sync::atomic::Ordering::Release);
            });
            let refused = vh.declare_queue(&durable("q3", 11)).unwrap_err();
            assert!(
                matches!(refused, BrokerError::Inequivalent { .. }),
                "{refused:?}"
            );
            let mut out = Vec::new();
            vh.route("x", "k7", None, &mut out).unwrap();
            assert_eq!(out.len(), 8, "every worker bound one queue with k7");
        }
        let (broker, _storage) = open(dir.path());
        let vh = broker.vhost("/").unwrap();
        assert_eq!(vh.queues().len(), 20);
        let mut out = Vec::new();
        vh.route("x", "k7", None, &mut out).unwrap();
        assert_eq!(out.len(), 8, "the bindings came back");
    }

    /// Unbinding forgets a durable binding's record; bindings of an exclusive queue have
    /// none (nothing to write either way).
    #[test]
    fn unbinding_is_stored_and_exclusive_bindings_are_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (broker, _storage) = open(dir.path());
            let vh = broker.vhost("/").unwrap();
            declare_durable_direct(&vh, "x");
            vh.declare_queue(&durable("q", 10)).unwrap();
            let exclusive = QueueDeclare {
                exclusive: true,
                ..durable("e", 10)
            };
            vh.declare_queue(&exclusive).unwrap();
            for (queue, key) in [("q", "k1"), ("q", "k2"), ("e", "k1")] {
                vh.bind_queue(queue, "x", key.into(), FieldTable::new(), 1)
                    .unwrap();
            }
            vh.unbind_queue("q", "x", "k2".into(), FieldTable::new(), 1)
                .unwrap();
            vh.unbind_queue("e", "x", "k1".into(), FieldTable::new(), 1)
                .unwrap();
        }
        let (broker, _storage) = open(dir.path());
        let vh = broker.vhost("/").unwrap();
        let routed = |key: &str| {
            let mut out = Vec::new();
            vh.route("x", key, None, &mut out).unwrap();
            out.iter().map(|q| q.name().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(routed("k1"), ["q"]);
        assert!(routed("k2").is_empty(), "the unbinding was stored");
    }

    /// While a durable declaration waits for its record's write, the vhost's topology is
    /// not locked: routing, other declarations and bindings go on; the queue appears when
    /// stored.
    #[test]
    fn routing_does_not_wait_for_a_declaration_being_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, storage) = open(dir.path());
        let vh = broker.vhost("/").unwrap();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            // Another writer holds the definitions store: the declaration below waits for it.
            let defs = Arc::clone(storage.definitions());
            s.spawn(move || {
                defs.batch(|| {
                    held_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                })
                .unwrap()
            });
            held_rx.recv().unwrap();
            let declaring = s.spawn(|| vh.declare_queue(&durable("slow", 5)).unwrap().created);
            while vh.declarations_in_progress() == 0 {
                std::thread::yield_now();
            }
            let mut out = Vec::new();
            vh.route("", "slow", None, &mut out).unwrap();
            assert!(out.is_empty(), "not visible before it is stored");
            let transient = QueueDeclare {
                durable: false,
                ..durable("other", 5)
            };
            assert!(vh.declare_queue(&transient).unwrap().created);
            vh.route("", "other", None, &mut out).unwrap();
            assert_eq!(out.len(), 1);
            release_tx.send(()).unwrap();
            assert!(declaring.join().unwrap());
        });
        let mut out = Vec::new();
        vh.route("", "slow", None, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(vh.declarations_in_progress(), 0);
    }

    #[test]
    fn vhost_dirs_are_safe_names() {
        assert_eq!(vhost_dir("/"), "2f");
        assert_eq!(vhost_dir("a/b"), "612f62");
        assert_eq!(vhost_dir(""), "_");
    }
}
