//! A virtual host: its exchanges, queues and the bindings between them, with RabbitMQ's rules for
//! declaring, binding, deleting and routing.
//!
//! The topology sits behind one `RwLock`: publishers route under the read lock (many at once),
//! declarations and deletions take the write lock. Queues have their own locks, taken only after
//! the topology lock is released, so publishing into a queue never blocks topology changes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use pier_wire::{FieldTable, FieldValue, ShortString};

use crate::args::ArgContext;
use crate::auth::Access;
use crate::clock::{Clock, NEVER};
use crate::consumer::ConnectionId;
use crate::error::{BrokerError, ObjectKind, Result};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind, DELAYED_TYPE};
use crate::matching::{values_equal, HeadersMatch};
use crate::names;
use crate::policy::{self, Policy};
use crate::queue::{Queue, QueueOptions, QueueType, TickAction};

/// exchange.declare, as the channel received it.
#[derive(Debug, Clone)]
pub struct ExchangeDeclare {
    pub name: ShortString,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// queue.declare, as the channel received it.
#[derive(Debug, Clone)]
pub struct QueueDeclare {
    /// Empty: the server names it.
    pub name: ShortString,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub connection: ConnectionId,
}

#[derive(Debug, Clone)]
pub struct QueueDeclared {
    pub queue: Arc<Queue>,
    pub message_count: u32,
    pub consumer_count: u32,
    pub created: bool,
}

/// One binding as management and listings show it.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingInfo {
    pub source: ShortString,
    pub destination: Destination,
    pub routing_key: ShortString,
    pub arguments: FieldTable,
}

#[derive(Debug, Default)]
pub(crate) struct Topology {
    pub(crate) exchanges: HashMap<ShortString, Exchange>,
    queues: HashMap<ShortString, Arc<Queue>>,
    /// Durable queues being declared: their records are being written, outside the lock
    /// (routing must not wait for an fsync), and they become visible once stored. Another
    /// declaration of the same name waits for the first.
    declaring: HashMap<ShortString, Arc<Declaring>>,
}

/// A durable queue's declaration in progress (see [`Topology::declaring`]).
#[derive(Debug, Default)]
struct Declaring {
    done: Mutex<bool>,
    finished: std::sync::Condvar,
}

impl Declaring {
    fn wait(&self) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = self.finished.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.finished.notify_all();
    }
}

/// Queue arguments RabbitMQ compares on redeclaration; others are accepted and kept.
const EQUIVALENCE_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-single-active-consumer",
    "x-queue-type",
];

/// What streams compare on redeclaration besides [`EQUIVALENCE_ARGS`].
const STREAM_EQUIVALENCE_ARGS: &[&str] = &[
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-stream-filter-size-bytes",
];

#[derive(Debug)]
pub struct VHost {
    name: String,
    topology: RwLock<Topology>,
    clock: Arc<Clock>,
    /// This vhost, for the queues it creates (they route their dead letters through it).
    me: Weak<VHost>,
    /// Messages waiting in `x-delayed-message` exchanges (see `delayed.rs`).
    pub(crate) delayed: Mutex<BinaryHeap<Reverse<crate::delayed::DelayedMessage>>>,
    /// When the earliest delayed message is due (`NEVER`: none), read by `tick` lock-free.
    pub(crate) next_delayed: AtomicU64,
    policies: RwLock<Vec<Policy>>,
    /// Held while a policy change is pushed into the queues (`refresh_queue_policies`).
    policy_refresh: Mutex<()>,
    /// Held while a binding change is written to storage after the topology lock is let go
    /// (taken before letting it go): the writes keep the order of the changes, and routing,
    /// which only reads the topology, does not wait for their fsyncs.
    binding_writes: Mutex<()>,
    /// Where durable definitions and persistent messages go (none: in memory only).
    storage: OnceLock<crate::persist::VhostStorage>,
    /// The node's scratch paging store, given to every queue declared from then on.
    paging: OnceLock<pier_store::StoreHandle>,
    /// RabbitMQ's vhost limits (`max-connections`, `max-queues`); `u64::MAX`: no limit.
    max_connections: AtomicU64,
    max_queues: AtomicU64,
    /// Client connections open on this vhost (each holds a `ConnectionSlot`).
    connections: Arc<AtomicU64>,
    /// The cluster this node is part of (none: a single node).
    cluster: OnceLock<Arc<dyn crate::cluster::Cluster>>,
    /// Where this vhost's streams keep their logs (set by the node's storage; without it,
    /// declaring a stream is refused).
    streams_dir: OnceLock<std::path::PathBuf>,
    /// Whether streams fsync before confirming (default true).
    stream_sync: std::sync::atomic::AtomicBool,
    /// The node's quorum-queue delivery counting (RabbitMQ 4.2's unless set).
    delivery_counting: OnceLock<crate::args::DeliveryCounting>,
}

/// RabbitMQ's per-vhost limits (`rabbitmqctl set_vhost_limits`); `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhostLimits {
    pub max_connections: Option<u64>,
    pub max_queues: Option<u64>,
}

/// One client connection counted against its vhost's `max-connections`; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    count: Arc<AtomicU64>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A permission check a client declaration needs: the object, its name, and the access.
/// Returning an error refuses the declaration (RabbitMQ's 403).
pub type Authorize<'a> = &'a mut dyn FnMut(ObjectKind, &str, Access) -> Result<()>;

fn limit_from(v: u64) -> Option<u64> {
    (v != u64::MAX).then_some(v)
}

/// Every routing key a message carries: its own plus the `CC` and `BCC` headers' (sender-
/// selected distribution). A `CC`/`BCC` header that is not an array is RabbitMQ's 406.
pub(crate) fn sender_selected_keys(
    routing_key: &str,
    headers: Option<&FieldTable>,
) -> Result<Vec<ShortString>> {
    let mut keys = vec![ShortString::from(routing_key)];
    if let Some(h) = headers {
        for header in ["CC", "BCC"] {
            match h.get(header) {
                None => {}
                Some(FieldValue::Array(values)) => {
                    for v in values {
                        if let FieldValue::LongString(s) = v {
                            keys.push(ShortString::truncated(&s.to_str_lossy()));
                        }
                    }
                }
                Some(other) => {
                    return Err(BrokerError::PreconditionFailed(format!(
                        "invalid message: {{unacceptable_type_in_header,\"{header}\",{}}}",
                        other.type_name()
                    )))
                }
            }
        }
    }
    Ok(keys)
}

impl VHost {
    /// A vhost with RabbitMQ's predeclared exchanges.
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        let mut t = Topology::default();
        for (name, kind) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            let n = ShortString::from(name);
            t.exchanges.insert(
                n.clone(),
                Exchange::new(n, kind, true, false, false, FieldTable::new()),
            );
        }
        let name = name.into();
        Arc::new_cyclic(|me| VHost {
            name,
            topology: RwLock::new(t),
            clock: Arc::new(Clock::new()),
            me: me.clone(),
            delayed: Mutex::new(BinaryHeap::new()),
            next_delayed: AtomicU64::new(NEVER),
            policies: RwLock::new(Vec::new()),
            policy_refresh: Mutex::new(()),
            binding_writes: Mutex::new(()),
            storage: OnceLock::new(),
            paging: OnceLock::new(),
            max_connections: AtomicU64::new(u64::MAX),
            max_queues: AtomicU64::new(u64::MAX),
            connections: Arc::new(AtomicU64::new(0)),
            cluster: OnceLock::new(),
            streams_dir: OnceLock::new(),
            stream_sync: std::sync::atomic::AtomicBool::new(true),
            delivery_counting: OnceLock::new(),
        })
    }

    /// Sets how this vhost's quorum queues count deliveries (before any is declared; set
    /// once, from the node's setting).
    pub fn set_delivery_counting(&self, counting: crate::args::DeliveryCounting) {
        let _ = self.delivery_counting.set(counting);
    }

    fn delivery_counting(&self) -> crate::args::DeliveryCounting {
        self.delivery_counting.get().copied().unwrap_or_default()
    }

    /// Makes this vhost part of a cluster: durable queues homed on other nodes get a remote
    /// handle, and lifecycle events of replicated objects are proposed to the cluster.
    pub fn set_cluster(&self, cluster: Arc<dyn crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<dyn crate::cluster::Cluster>> {
        self.cluster.get()
    }

    pub fn set_limits(&self, limits: VhostLimits) {
        self.max_connections.store(
            limits.max_connections.unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.max_queues
            .store(limits.max_queues.unwrap_or(u64::MAX), Ordering::Release);
    }

    pub fn limits(&self) -> VhostLimits {
        VhostLimits {
            max_connections: limit_from(self.max_connections.load(Ordering::Acquire)),
            max_queues: limit_from(self.max_queues.load(Ordering::Acquire)),
        }
    }

    /// Client connections currently open on this vhost.
    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// Counts a new client connection against `max-connections` (RabbitMQ's 530 text when the
    /// limit is reached). The slot is given back when dropped.
    pub fn acquire_connection_slot(&self, user: &str) -> Result<ConnectionSlot> {
        let max = self.max_connections.load(Ordering::Acquire);
        let taken = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(ConnectionSlot {
                count: Arc::clone(&self.connections),
            }),
            Err(_) => Err(BrokerError::VhostConnectionLimit {
                vhost: self.name.clone(),
                user: user.to_owned(),
                limit: max,
            }),
        }
    }

    /// From now on durable definitions and persistent messages of this vhost are stored.
    pub fn attach_storage(&self, storage: crate::persist::VhostStorage) {
        let _ = self.storage.set(storage);
    }

    /// Queues declared from now on page bodies that are not in the durable store out to
    /// `paging` when they grow long. Attach before declaring (recovery does).
    pub fn attach_paging(&self, paging: pier_store::StoreHandle) {
        let _ = self.paging.set(paging);
    }

    /// Registers the message-store queues of durable queues about to be declared, in one
    /// durable write: declaring them afterwards finds them registered. A cluster node applies
    /// many declarations in one batch, and registering each on its own costs an fsync each.
    /// A name whose declaration then fails is dropped from the store at the next start.
    pub fn prepare_durable_queues(&self, names: Vec<String>) {
        let Some(s) = self.storage() else { return };
        if names.is_empty() {
            return;
        }
        if let Err(e) = s.messages.open_queues(&names) {
            tracing::warn!(vhost = %self.name, "registering queues ahead: {e}")
        }
    }

    /// Sets where this vhost's streams live (once, before queues are declared).
    pub fn set_streams_dir(&self, dir: std::path::PathBuf) {
        let _ = self.streams_dir.set(dir);
    }

    /// Whether streams fsync before they confirm (RabbitMQ's streams do not).
    pub fn set_stream_sync(&self, sync: bool) {
        self.stream_sync.store(sync, Ordering::Release);
    }

    /// Whether this node's streams fsync before they confirm.
    pub fn stream_sync(&self) -> bool {
        self.stream_sync.load(Ordering::Acquire)
    }

    /// The directory of a stream's log.
    pub fn stream_dir(&self, name: &str) -> Option<std::path::PathBuf> {
        let base = self.streams_dir.get()?;
        let safe = !name.is_empty()
            && name.len() <= 200
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        Some(if safe {
            base.join(name)
        } else {
            use sha2::Digest;
            let h = sha2::Sha256::digest(name.as_bytes());
            base.join(format!(
                "h-{}",
                h.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ))
        })
    }

    pub(crate) fn storage(&self) -> Option<&crate::persist::VhostStorage> {
        self.storage.get()
    }

    /// Auto-delete exchanges among `candidates` (and, in turn, their sources) that lost
    /// their last binding go. On a clustered node a durable one is not deleted here: whether
    /// it is unused depends on each node's transient bindings, so its deletion is proposed
    /// to the cluster (which deletes it everywhere).
    fn cascade(&self, t: &mut Topology, candidates: Vec<ShortString>) {
        let clustered = self.cluster.get();
        let (gone, propose) = delete_unused_auto_delete(t, candidates, clustered.is_some());
        self.auto_deleted(gone);
        if let Some(c) = clustered {
            for name in propose {
                c.delete_exchange(&self.name, &name);
            }
        }
    }

    /// Forgets exchanges removed because they were auto-delete and lost their last binding.
    fn auto_deleted(&self, names: Vec<ShortString>) {
        if let Some(s) = self.storage() {
            let _in_order = self.binding_writes();
            for n in names {
                crate::storage::exchange_deleted(s, &self.name, &n);
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The clock message and queue expiry use (tests advance it).
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    // Poisoning only follows a panic elsewhere; every mutation below leaves the maps consistent
    // between statements, so carry on rather than take the vhost down.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Topology> {
        self.topology.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Topology> {
        self.topology.write().unwrap_or_else(|p| p.into_inner())
    }

    fn not_found(&self, kind: ObjectKind, name: &str) -> BrokerError {
        BrokerError::not_found(kind, name, &self.name)
    }

    // ---- policies ----

    /// Adds or replaces (by name) a policy. As in RabbitMQ it applies at once: to queues
    /// declared from now on, to every existing queue it (or the policy it displaces) matches
    /// (`refresh_queue_policies`), and to every exchange's `alternate-exchange`. With storage
    /// attached (that is, after start-up: config-file policies are set before) it is written
    /// through.
    pub fn set_policy(&self, policy: Policy) {
        {
            let mut ps = self.policies.write().unwrap_or_else(|p| p.into_inner());
            // Stored under the lock so that concurrent sets of one name land in the same order.
            if let Some(s) = self.storage() {
                crate::storage::policy_set(s, &self.name, &policy);
            }
            ps.retain(|p| p.name != policy.name);
            ps.push(policy);
        }
        self.refresh_exchange_policies();
        self.refresh_queue_policies();
    }

    /// Removes a policy; false if there was none of that name.
    pub fn clear_policy(&self, name: &str) -> bool {
        let removed = {
            let mut ps = self.policies.write().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = self.storage() {
                crate::storage::policy_cleared(s, &self.name, name);
            }
            let before = ps.len();
            ps.retain(|p| p.name != name);
            ps.len() != before
        };
        if removed {
            self.refresh_exchange_policies();
            self.refresh_queue_policies();
        }
        removed
    }

    pub fn policies(&self) -> Vec<Policy> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `queue-leader-locator` of the policy in force for a queue of this name (where a
    /// quorum queue declared now leads from first).
    pub fn queue_leader_locator_policy(&self, name: &str) -> Option<String> {
        self.effective_policy(ObjectKind::Queue, name)
            .and_then(|p| p.definition.queue_leader_locator)
    }

    /// The policy in force now for an object of this kind and name (a queue's is also in
    /// `QueueConfig::policy`).
    pub fn effective_policy(&self, kind: ObjectKind, name: &str) -> Option<Policy> {
        let ps = self.policies.read().unwrap_or_else(|p| p.into_inner());
        policy::effective(&ps, kind, name).cloned()
    }

    fn policy_alternate(&self, exchange: &str) -> Option<ShortString> {
        let ps = self.policies.read().unwrap_or_else(|p| p.into_inner());
        policy::effective(&ps, ObjectKind::Exchange, exchange)
            .and_then(|p| p.definition.alternate_exchange.as_deref())
            .map(ShortString::from)
    }

    /// Re-resolves every queue's settings (its arguments and the policy now in force, with
    /// the precedence of a declaration) and pushes those that changed into the queues
    /// (`Queue::reconfigure`), as RabbitMQ does when a policy is set or cleared. Serialised,
    /// so that the last policy change is the one queues end with; no other lock is held
    /// while queues apply them (dead letters are routed through this vhost).
    fn refresh_queue_policies(&self) {
        let _one_at_a_time = self
            .policy_refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let queues: Vec<Arc<Queue>> = self.read().queues.values().cloned().collect();
        let policies = self.policies();
        for q in queues {
            let cx = ArgContext {
                queue: q.name(),
                vhost: &self.name,
            };
            let arguments = &q.options().arguments;
            // Accepted at declaration, so this does not fail; if it did, the queue keeps
            // what it has.
            let Ok(base) = q.kind().config(arguments, &cx) else {
                continue;
            };
            let p = policy::effective(&policies, ObjectKind::Queue, q.name());
            let mut config = with_policy(q.kind(), base, arguments, p);
            config.delivery_counting = self.delivery_counting();
            q.reconfigure(config);
        }
    }

    fn refresh_exchange_policies(&self) {
        let mut t = self.write();
        for x in t.exchanges.values_mut() {
            x.policy_alternate = self.policy_alternate(&x.name);
        }
    }

    // ---- exchanges ----

    pub fn declare_exchange(&self, d: &ExchangeDeclare) -> Result<()> {
        let kind =
            if d.passive {
                None
            } else if d.kind == DELAYED_TYPE {
                // RabbitMQ's delayed message exchange plugin: x-delayed-type routes.
                let delayed_type = d
                    .arguments
                    .get("x-delayed-type")
                    .and_then(FieldValue::as_str);
                match delayed_type {
                    Some(DELAYED_TYPE) => return Err(BrokerError::PreconditionFailed(
                        "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'"
                            .to_owned(),
                    )),
                    Some(t) => Some((
                        ExchangeKind::parse(t)
                            .ok_or_else(|| BrokerError::UnknownExchangeType(t.to_owned()))?,
                        true,
                    )),
                    None => {
                        return Err(BrokerError::PreconditionFailed(
                            "Invalid argument, 'x-delayed-type' must be an existing exchange type"
                                .to_owned(),
                        ))
                    }
                }
            } else {
                Some((
                    ExchangeKind::parse(&d.kind)
                        .ok_or_else(|| BrokerError::UnknownExchangeType(d.kind.clone()))?,
                    false,
                ))
            };
        if d.name.is_empty() {
            return Err(BrokerError::DefaultExchange);
        }
        let mut t = self.write();
        if let Some(x) = t.exchanges.get(&d.name) {
            if kind.is_none() {
                return Ok(());
            }
            return self.exchange_equivalent(x, d);
        }
        let Some((kind, delayed)) = kind else {
            return Err(self.not_found(ObjectKind::Exchange, &d.name));
        };
        names::check_not_reserved(ObjectKind::Exchange, &d.name)?;
        if let Some(v) = d.arguments.get("alternate-exchange") {
            if !matches!(v, FieldValue::LongString(_)) {
                return Err(BrokerError::PreconditionFailed(format!(
                    "invalid type '{}' for arg 'alternate-exchange' in exchange '{}' in vhost '{}'",
                    v.type_name(),
                    d.name,
                    self.name
                )));
            }
        }
        let mut x = Exchange::new(
            d.name.clone(),
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments.clone(),
        );
        x.delayed = delayed;
        x.policy_alternate = self.policy_alternate(&d.name);
        if let Some(s) = self.storage() {
            crate::storage::exchange_declared(s, &self.name, &x)?;
        }
        t.exchanges.insert(d.name.clone(), x);
        Ok(())
    }

    fn exchange_equivalent(&self, x: &Exchange, d: &ExchangeDeclare) -> Result<()> {
        let mismatch = |arg: &str, received: String, current: String| BrokerError::Inequivalent {
            kind: ObjectKind::Exchange,
            name: d.name.to_string(),
            vhost: self.name.clone(),
            arg: arg.to_owned(),
            received,
            current,
        };
        if x.type_name() != d.kind {
            return Err(mismatch(
                "type",
                format!("'{}'", d.kind),
                format!("'{}'", x.type_name()),
            ));
        }
        for (arg, received, current) in [
            ("durable", d.durable, x.durable),
            ("auto_delete", d.auto_delete, x.auto_delete),
            ("internal", d.internal, x.internal),
        ] {
            if received != current {
                return Err(mismatch(
                    arg,
                    format!("'{received}'"),
                    format!("'{current}'"),
                ));
            }
        }
        compare_args(
            &["alternate-exchange", "x-delayed-type"],
            &d.arguments,
            &x.arguments,
        )
        .map_err(|(arg, received, current)| mismatch(&arg, received, current))
    }

    pub fn exchange_exists(&self, name: &str) -> bool {
        self.read().exchanges.contains_key(name)
    }

    /// Whether the exchange has bindings from it (exchange.delete's `if-unused`).
    pub fn exchange_has_bindings(&self, name: &str) -> bool {
        self.read()
            .exchanges
            .get(name)
            .is_some_and(|x| x.has_bindings())
    }

    /// `max-queues` for a client declaring `name`: refused (RabbitMQ's 406) when the queue
    /// is new and the vhost is at its limit. A cluster checks this where the declaration is
    /// made, before proposing it: the count includes the node's own transient queues, so the
    /// nodes applying it could disagree.
    pub fn check_queue_limit(&self, name: &str) -> Result<()> {
        let t = self.read();
        let max_queues = self.max_queues.load(Ordering::Acquire);
        if !t.queues.contains_key(name) && t.queues.len() as u64 >= max_queues {
            return Err(BrokerError::PreconditionFailed(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max_queues}) is reached",
                self.name
            )));
        }
        Ok(())
    }

    /// Whether `name` is an existing durable exchange (the predeclared ones are).
    pub fn is_durable_exchange(&self, name: &str) -> bool {
        self.read().exchanges.get(name).is_some_and(|x| x.durable)
    }

    /// Whether `name` is an existing exchange of type `topic` (the only type topic
    /// authorisation applies to; an `x-delayed-message` exchange is not one, whatever its
    /// `x-delayed-type`, as in RabbitMQ).
    pub fn is_topic_exchange(&self, name: &str) -> bool {
        self.read()
            .exchanges
            .get(name)
            .is_some_and(|x| x.kind == crate::exchange::ExchangeKind::Topic && !x.delayed)
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        if name.is_empty() {
            return Err(BrokerError::DefaultExchange);
        }
        if name.starts_with("amq.") {
            return Err(BrokerError::SystemExchangeDeletion {
                name: name.to_owned(),
                vhost: self.name.clone(),
            });
        }
        let mut t = self.write();
        let Some(x) = t.exchanges.get(name) else {
            // RabbitMQ treats deleting a missing exchange as success.
            return Ok(());
        };
        if if_unused && x.has_bindings() {
            return Err(BrokerError::InUse {
                kind: ObjectKind::Exchange,
                name: name.to_owned(),
                vhost: self.name.clone(),
            });
        }
        let key = x.name.clone();
        let durable = x.durable;
        t.exchanges.remove(&key);
        if let (Some(s), true) = (self.storage(), durable) {
            let _in_order = self.binding_writes();
            crate::storage::exchange_deleted(s, &self.name, &key);
        }
        let dest = Destination::Exchange(key);
        let sources = remove_bindings_to(&mut t, &dest);
        self.cascade(&mut t, sources);
        Ok(())
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: ShortString,
        arguments: FieldTable,
    ) -> Result<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(BrokerError::DefaultExchange);
        }
        let t = self.write();
        let dest_name = t
            .exchanges
            .get_key_value(destination)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| self.not_found(ObjectKind::Exchange, destination))?;
        self.add_binding(
            t,
            source,
            Destination::Exchange(dest_name),
            routing_key,
            arguments,
        )
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: ShortString,
        arguments: FieldTable,
    ) -> Result<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(BrokerError::DefaultExchange);
        }
        let t = self.write();
        // Unbinding is idempotent in RabbitMQ: a missing destination (or source, in
        // remove_binding) means there is nothing to remove, not 404.
        if !t.exchanges.contains_key(destination) {
            return Ok(());
        }
        self.remove_binding(
            t,
            source,
            Destination::Exchange(ShortString::from(destination)),
            routing_key,
            arguments,
        )
    }

    /// Adds a binding and, when both its ends are durable, stores it — after letting go of
    /// the topology lock (routing does not wait for the fsync), in the order of the changes.
    fn add_binding(
        &self,
        mut t: RwLockWriteGuard<'_, Topology>,
        source: &str,
        destination: Destination,
        routing_key: ShortString,
        arguments: FieldTable,
    ) -> Result<()> {
        let vhost = self.name.clone();
        let x = t
            .exchanges
            .get_mut(source)
            .ok_or_else(|| BrokerError::not_found(ObjectKind::Exchange, source, &vhost))?;
        if x.kind == ExchangeKind::Headers && HeadersMatch::from_binding_args(&arguments).is_none()
        {
            let shown = arguments
                .get("x-match")
                .map_or_else(String::new, |v| match v {
                    FieldValue::LongString(s) => format!("<<\"{}\">>", s.to_str_lossy()),
                    other => show_value(other),
                });
            return Err(BrokerError::PreconditionFailed(format!(
                "Invalid x-match field value {shown}; expected all, any, all-with-x, or any-with-x"
            )));
        }
        let record = self.binding_record(&t, source, &destination, &routing_key, &arguments);
        let Some(x) = t.exchanges.get_mut(source) else {
            return Err(BrokerError::not_found(ObjectKind::Exchange, source, &vhost));
        };
        x.bind(Binding {
            destination,
            routing_key,
            arguments,
        });
        self.store_binding(t, record, true);
        Ok(())
    }

    fn remove_binding(
        &self,
        mut t: RwLockWriteGuard<'_, Topology>,
        source: &str,
        destination: Destination,
        routing_key: ShortString,
        arguments: FieldTable,
    ) -> Result<()> {
        // Unbinding what is not bound (or from a missing exchange) is a no-op, as in RabbitMQ.
        let Some(x) = t.exchanges.get_mut(source) else {
            return Ok(());
        };
        let binding = Binding {
            destination,
            routing_key,
            arguments,
        };
        if !x.unbind(&binding) {
            // Nothing removed, so an auto-delete exchange never bound stays (as in RabbitMQ).
            return Ok(());
        }
        let name = x.name.clone();
        let record = self.binding_record(
            &t,
            source,
            &binding.destination,
            &binding.routing_key,
            &binding.arguments,
        );
        self.cascade(&mut t, vec![name]);
        self.store_binding(t, record, false);
        Ok(())
    }

    /// The stored record of a binding, when it has one: both its ends are durable (an
    /// exclusive queue is not).
    fn binding_record(
        &self,
        t: &Topology,
        source: &str,
        destination: &Destination,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> Option<(&crate::persist::VhostStorage, pier_store::BindingDef)> {
        let s = self.storage()?;
        let durable = t.exchanges.get(source).is_some_and(|x| x.durable)
            && match destination {
                Destination::Queue(n) => t
                    .queues
                    .get(n)
                    .is_some_and(|q| crate::storage::keeps_record(q)),
                Destination::Exchange(n) => t.exchanges.get(n).is_some_and(|x| x.durable),
            };
        durable.then(|| {
            let def = crate::storage::binding_def(
                &self.name,
                source,
                destination,
                routing_key,
                arguments,
            );
            (s, def)
        })
    }

    /// Taken with the topology lock held, before a write that touches bindings' records.
    fn binding_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.binding_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a binding change once the topology lock `t` is let go (see `binding_writes`).
    fn store_binding(
        &self,
        t: RwLockWriteGuard<'_, Topology>,
        record: Option<(&crate::persist::VhostStorage, pier_store::BindingDef)>,
        added: bool,
    ) {
        let Some((s, def)) = record else { return };
        let _in_order = self.binding_writes();
        drop(t);
        crate::storage::binding_changed(s, &def, added);
    }

    // ---- queues ----

    pub fn declare_queue(&self, d: &QueueDeclare) -> Result<QueueDeclared> {
        self.declare_queue_inner(d, None, None)
    }

    /// `declare_queue` of a durable queue whose home node the cluster decided: homed on
    /// another node, it gets a remote handle here (its messages live there).
    pub fn declare_queue_at(&self, d: &QueueDeclare, home: &str) -> Result<QueueDeclared> {
        self.declare_queue_inner(d, None, Some(home))
    }

    /// queue.declare from a client, with RabbitMQ's checks in its order: a non-passive
    /// declaration may not name an `amq.*` queue; `authorize` is asked for configure access
    /// to the queue (a server-generated name included), then, when the queue is created with
    /// a dead-letter exchange, for read access to the queue and write access to that
    /// exchange; `max-queues` applies to new queues.
    pub fn declare_queue_checked(
        &self,
        d: &QueueDeclare,
        authorize: Authorize<'_>,
    ) -> Result<QueueDeclared> {
        if !d.passive && !d.name.is_empty() {
            names::check_not_reserved(ObjectKind::Queue, &d.name)?;
        }
        self.declare_queue_inner(d, Some(authorize), None)
    }

    /// The link to a durable queue's home node when that is another node (clustered only):
    /// the home given, or else the one the cluster recorded (recovery).
    fn remote_home(
        &self,
        d: &QueueDeclare,
        name: &str,
        home: Option<&str>,
        config: &crate::args::QueueConfig,
    ) -> Option<Arc<dyn crate::queue::QueueLink>> {
        let cluster = self.cluster.get()?;
        if !d.durable || d.exclusive {
            return None;
        }
        if let Some(link) = cluster.quorum_link(&self.name, name, config) {
            return Some(link);
        }
        let home = match home {
            Some(h) => h.to_owned(),
            None => cluster.home_of(&self.name, name)?,
        };
        (home != cluster.node()).then(|| cluster.link(&home))
    }

    /// A server-named quorum queue is refused before anything else, as RabbitMQ does
    /// (rabbit_channel, queue.declare). Also checked before a clustered node names the queue.
    pub fn refuse_server_named(
        &self,
        name: &str,
        passive: bool,
        arguments: &FieldTable,
    ) -> Result<()> {
        if name.is_empty() && !passive {
            let cx = ArgContext {
                queue: "",
                vhost: &self.name,
            };
            if let Ok(QueueType::Quorum) = QueueType::of(arguments, &cx) {
                return Err(BrokerError::PreconditionFailed(format!(
                    "Cannot declare a server-named queue for type {}",
                    QueueType::Quorum.module_name()
                )));
            }
        }
        Ok(())
    }

    fn declare_queue_inner(
        &self,
        d: &QueueDeclare,
        mut authorize: Option<Authorize<'_>>,
        home: Option<&str>,
    ) -> Result<QueueDeclared> {
        self.refuse_server_named(&d.name, d.passive, &d.arguments)?;
        let mut t = self.write();
        // A declaration of this name still being stored: its outcome decides ours.
        while let Some(other) = t.declaring.get(&d.name).cloned() {
            drop(t);
            other.wait();
            t = self.write();
        }
        let name = if d.name.is_empty() && !d.passive {
            loop {
                let candidate = names::generated_queue_name();
                if !t.queues.contains_key(&candidate) && !t.declaring.contains_key(&candidate) {
                    break candidate;
                }
            }
        } else {
            d.name.clone()
        };
        if let (Some(auth), false) = (authorize.as_mut(), d.passive) {
            auth(ObjectKind::Queue, &name, Access::Configure)?;
        }
        if let Some(q) = t.queues.get(&name) {
            q.check_access(d.connection)?;
            if !d.passive {
                self.queue_equivalent(q, d)?;
            }
            // A declaration (passive or not) counts as use for x-expires.
            q.touch();
            let stats = q.stats();
            return Ok(QueueDeclared {
                queue: Arc::clone(q),
                message_count: u32::try_from(stats.ready).unwrap_or(u32::MAX),
                consumer_count: stats.consumers,
                created: false,
            });
        }
        if d.passive {
            return Err(self.not_found(ObjectKind::Queue, &name));
        }
        if !d.name.is_empty() {
            names::check_not_reserved(ObjectKind::Queue, &name)?;
        }
        if let Some(auth) = authorize.as_mut() {
            // Limits apply to clients' declarations (not to recovery or definitions imports).
            let max_queues = self.max_queues.load(Ordering::Acquire);
            if (t.queues.len() + t.declaring.len()) as u64 >= max_queues {
                return Err(BrokerError::PreconditionFailed(format!(
                    "cannot declare queue '{name}': queue limit in vhost '{}' ({max_queues}) is reached",
                    self.name
                )));
            }
            if let Some(FieldValue::LongString(dlx)) = d.arguments.get("x-dead-letter-exchange") {
                auth(ObjectKind::Queue, &name, Access::Read)?;
                auth(ObjectKind::Exchange, &dlx.to_str_lossy(), Access::Write)?;
            }
        }
        let cx = ArgContext {
            queue: &name,
            vhost: &self.name,
        };
        let kind = QueueType::of(&d.arguments, &cx)?;
        let mut config = if kind == QueueType::Quorum {
            // RabbitMQ checks the arguments before the quorum queue's properties.
            let config = kind.config(&d.arguments, &cx)?;
            kind.check_properties(d.durable, d.exclusive, d.auto_delete, &cx)?;
            config
        } else {
            kind.check_properties(d.durable, d.exclusive, d.auto_delete, &cx)?;
            kind.config(&d.arguments, &cx)?
        };
        {
            let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
            let p = policy::effective(&policies, ObjectKind::Queue, &name);
            config = with_policy(kind, config, &d.arguments, p);
        }
        config.delivery_counting = self.delivery_counting();
        let options = QueueOptions {
            durable: d.durable,
            exclusive_owner: d.exclusive.then_some(d.connection),
            auto_delete: d.auto_delete,
            arguments: d.arguments.clone(),
        };
        let queue = match self.remote_home(d, &name, home, &config) {
            // A stream homed elsewhere too: its log is on its home node.
            Some(link) => {
                Queue::remote(name.clone(), self.name.clone(), kind, options, config, link)
            }
            None if kind == QueueType::Stream => {
                // A stream is never exclusive or auto-delete (refused above).
                let options = QueueOptions {
                    exclusive_owner: None,
                    auto_delete: false,
                    ..options
                };
                let queue = self.open_stream(&name, options, config)?;
                if let Some(s) = self.storage() {
                    crate::storage::queue_declared(s, &self.name, &queue)?;
                }
                t.queues.insert(name, Arc::clone(&queue));
                return Ok(QueueDeclared {
                    queue,
                    message_count: 0,
                    consumer_count: 0,
                    created: true,
                });
            }
            None => Queue::on_engine(
                kind,
                name.clone(),
                self.name.clone(),
                options,
                config,
                Arc::clone(&self.clock),
                self.me.clone(),
            ),
        };
        if let Some(p) = self.paging.get() {
            queue.attach_paging(p.clone());
        }
        if let Some(s) = self.storage() {
            if crate::storage::keeps_record(&queue) {
                // Stored outside the lock (an fsync or two); the queue becomes visible only
                // once it has its store, so no persistent message can reach it before.
                let declaring = Arc::new(Declaring::default());
                t.declaring.insert(name.clone(), Arc::clone(&declaring));
                drop(t);
                let stored = crate::storage::queue_declared(s, &self.name, &queue);
                t = self.write();
                t.declaring.remove(&name);
                declaring.finish();
                stored?;
            }
        }
        t.queues.insert(name, Arc::clone(&queue));
        Ok(QueueDeclared {
            queue,
            message_count: 0,
            consumer_count: 0,
            created: true,
        })
    }

    /// Opens (or recovers) a stream's log and makes its queue.
    fn open_stream(
        &self,
        name: &ShortString,
        options: QueueOptions,
        config: crate::args::QueueConfig,
    ) -> Result<Arc<Queue>> {
        let what = || format!("stream '{name}' in vhost '{}'", self.name);
        let dir = self.stream_dir(name).ok_or_else(|| BrokerError::Storage {
            what: what(),
            reason: "this node has no data directory for streams".to_owned(),
        })?;
        let sc =
            crate::queue::stream::stream_config(&config, self.stream_sync.load(Ordering::Acquire));
        if let Some(c) = self.cluster.get() {
            c.prepare_stream(&self.name, name, &dir)
                .map_err(|reason| BrokerError::Storage {
                    what: what(),
                    reason,
                })?;
        }
        let (stream, recovery) =
            pier_store::stream::Stream::open(&dir, sc).map_err(|e| BrokerError::Storage {
                what: what(),
                reason: e.to_string(),
            })?;
        // A replicated stream commits (shows readers, confirms) once a majority has synced.
        if let Some(c) = self.cluster.get() {
            stream
                .shared()
                .set_members(c.stream_members(&self.name, name));
        }
        if recovery.chunks > 0 {
            tracing::info!(stream = %name, vhost = %self.name, segments = recovery.segments,
                next_offset = recovery.next_offset, truncated = recovery.truncated_bytes, "stream recovered");
        }
        Ok(Queue::with_stream(
            name.clone(),
            self.name.clone(),
            options,
            config,
            stream,
        ))
    }

    fn queue_equivalent(&self, q: &Queue, d: &QueueDeclare) -> Result<()> {
        let mismatch = |arg: &str, received: String, current: String| BrokerError::Inequivalent {
            kind: ObjectKind::Queue,
            name: q.name().to_string(),
            vhost: self.name.clone(),
            arg: arg.to_owned(),
            received,
            current,
        };
        let o = q.options();
        for (arg, received, current) in [
            ("durable", d.durable, o.durable),
            ("auto_delete", d.auto_delete, o.auto_delete),
        ] {
            if received != current {
                return Err(mismatch(
                    arg,
                    format!("'{received}'"),
                    format!("'{current}'"),
                ));
            }
        }
        if d.exclusive != o.exclusive_owner.is_some() {
            return Err(BrokerError::ResourceLocked {
                name: q.name().to_string(),
                vhost: self.name.clone(),
            });
        }
        compare_args(EQUIVALENCE_ARGS, &d.arguments, &o.arguments)
            .map_err(|(arg, received, current)| mismatch(&arg, received, current))?;
        if q.kind() == QueueType::Stream {
            compare_args(STREAM_EQUIVALENCE_ARGS, &d.arguments, &o.arguments)
                .map_err(|(arg, received, current)| mismatch(&arg, received, current))?;
        }
        Ok(())
    }

    /// Looks a queue up for use by `connection` (404 if missing, 405 if another's exclusive).
    pub fn queue(&self, name: &str, connection: ConnectionId) -> Result<Arc<Queue>> {
        let q = self
            .read()
            .queues
            .get(name)
            .cloned()
            .ok_or_else(|| self.not_found(ObjectKind::Queue, name))?;
        q.check_access(connection)?;
        Ok(q)
    }

    /// The queue of that name, whoever owns it (management and the cluster's state machine
    /// act for no client connection; [`VHost::queue`] checks exclusive access).
    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.read().queues.get(name).cloned()
    }

    #[cfg(test)]
    pub(crate) fn declarations_in_progress(&self) -> usize {
        self.read().declaring.len()
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.read().queues.values().cloned().collect()
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.read().exchanges.values().cloned().collect()
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: ShortString,
        arguments: FieldTable,
        connection: ConnectionId,
    ) -> Result<()> {
        let t = self.write();
        let destination = self.queue_destination(&t, queue, exchange, connection)?;
        self.add_binding(t, exchange, destination, routing_key, arguments)
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: ShortString,
        arguments: FieldTable,
        connection: ConnectionId,
    ) -> Result<()> {
        if exchange.is_empty() {
            return Err(BrokerError::DefaultExchange);
        }
        let t = self.write();
        // A missing queue or exchange, or a binding that does not exist, is unbind-ok in
        // RabbitMQ; only an existing binding is checked for exclusive access.
        let Some(q) = t.queues.get(queue) else {
            return Ok(());
        };
        let destination = Destination::Queue(q.name().clone());
        let bound = t.exchanges.get(exchange).is_some_and(|x| {
            x.bindings().iter().any(|b| {
                b.destination == destination
                    && b.routing_key == routing_key
                    && b.arguments == arguments
            })
        });
        if !bound {
            return Ok(());
        }
        q.check_access(connection)?;
        self.remove_binding(t, exchange, destination, routing_key, arguments)
    }

    /// The checks queue.bind and queue.unbind share: the queue exists and is accessible, and
    /// the exchange is not the default one.
    fn queue_destination(
        &self,
        t: &Topology,
        queue: &str,
        exchange: &str,
        connection: ConnectionId,
    ) -> Result<Destination> {
        let q = t
            .queues
            .get(queue)
            .ok_or_else(|| self.not_found(ObjectKind::Queue, queue))?;
        q.check_access(connection)?;
        if exchange.is_empty() {
            return Err(BrokerError::DefaultExchange);
        }
        Ok(Destination::Queue(q.name().clone()))
    }

    pub fn purge_queue(&self, name: &str, connection: ConnectionId) -> Result<u32> {
        let q = self.queue(name, connection)?;
        if q.kind() == QueueType::Stream {
            return Err(BrokerError::NotImplemented(format!(
                "queue.purge not supported by stream queues queue '{name}' in vhost '{}'",
                self.name
            )));
        }
        Ok(q.purge())
    }

    /// RabbitMQ's quorum queues refuse `if-unused` and `if-empty` (a connection error, 540).
    /// Also checked before a clustered node proposes the deletion.
    pub fn refuse_conditional_delete(
        &self,
        q: &Queue,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<()> {
        if q.kind() == QueueType::Quorum && (if_unused || if_empty) {
            let flag = if if_unused { "if-unused" } else { "if-empty" };
            return Err(BrokerError::NotImplemented(format!(
                "cannot delete queue '{}' in vhost '{}'. queue.delete operations with {flag} flag set are not supported by quorum queues",
                q.name(),
                self.name
            )));
        }
        Ok(())
    }

    /// Deletes a queue; returns the ready messages it held. A missing queue is not an error.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: ConnectionId,
    ) -> Result<u32> {
        let q = match self.read().queues.get(name) {
            Some(q) => Arc::clone(q),
            None => return Ok(0),
        };
        q.check_access(connection)?;
        self.refuse_conditional_delete(&q, if_unused, if_empty)?;
        let stats = q.stats();
        if if_unused && stats.consumers > 0 {
            return Err(BrokerError::InUse {
                kind: ObjectKind::Queue,
                name: name.to_owned(),
                vhost: self.name.clone(),
            });
        }
        if if_empty && stats.ready > 0 {
            return Err(BrokerError::NotEmpty {
                name: name.to_owned(),
                vhost: self.name.clone(),
            });
        }
        Ok(self.remove_queue(&q))
    }

    /// A replicated stream's leader moved to `home` (the cluster's failover): this node's
    /// handle to it becomes the stream opened here (`home` is this node) or a link to
    /// `home`, and the old handle is retired (its consumers cancelled, pending confirms
    /// failed, a log led here stopped with its files kept). Bindings name the queue and
    /// stay. Nothing changes when the handle already points there.
    pub fn rehome_stream(&self, name: &str, home: &str) -> Result<()> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(());
        };
        let Some(old) = self.find_queue(name) else {
            return Ok(());
        };
        if old.kind() != QueueType::Stream {
            return Ok(());
        }
        let here = home == cluster.node();
        let settled = if here {
            old.stream().is_some()
        } else {
            old.remote_backend()
                .is_some_and(|r| r.link().node() == home)
        };
        if settled && !old.is_deleted() {
            return Ok(());
        }
        let o = old.options().clone();
        let config = (*old.config()).clone();
        // A log led here is closed before it is opened again (as replica or leader).
        old.retire();
        let new = if here {
            self.open_stream(old.name(), o, config)?
        } else {
            Queue::remote(
                old.name().clone(),
                self.name.clone(),
                QueueType::Stream,
                o,
                config,
                cluster.link(home),
            )
        };
        let mut t = self.write();
        match t.queues.get(old.name()) {
            Some(current) if Arc::ptr_eq(current, &old) => {
                t.queues.insert(old.name().clone(), new);
            }
            _ => {
                drop(t);
                // Deleted (or replaced) meanwhile: the new handle is not needed.
                new.retire();
            }
        }
        Ok(())
    }

    /// Removes a queue from the vhost (if it is still the one registered under its name),
    /// drops its bindings and tells its consumers. Returns the ready messages it held.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> u32 {
        {
            let mut t = self.write();
            match t.queues.get(q.name()) {
                Some(current) if Arc::ptr_eq(current, q) => {}
                _ => return 0,
            }
            t.queues.remove(q.name());
            if let Some(s) = self.storage() {
                // After any write of a binding to it still on its way.
                let _in_order = self.binding_writes();
                crate::storage::queue_deleted(s, &self.name, q);
            }
            let sources = remove_bindings_to(&mut t, &Destination::Queue(q.name().clone()));
            self.cascade(&mut t, sources);
        }
        // Its consumers' sinks are told (basic.cancel) by the queue.
        q.mark_deleted()
    }

    /// Whether `q` is replicated: a durable, non-exclusive queue of a clustered node.
    pub fn is_replicated_queue(&self, q: &Queue) -> bool {
        self.cluster.get().is_some() && q.options().durable && !q.is_exclusive()
    }

    /// An auto-delete queue lost its last consumer: it goes. A replicated queue's deletion is
    /// proposed to the cluster by its home node (this one: consumers of other nodes are
    /// consumers of the home node's queue), which deletes it everywhere.
    pub fn auto_delete_queue(&self, q: &Arc<Queue>) {
        self.lifecycle_delete(q, "auto-delete");
    }

    fn lifecycle_delete(&self, q: &Arc<Queue>, reason: &'static str) {
        match self.cluster.get() {
            Some(c) if self.is_replicated_queue(q) => {
                if !q.is_remote() && q.propose_deletion_once() {
                    c.delete_queue(&self.name, q.name(), reason);
                }
            }
            _ => {
                self.remove_queue(q);
            }
        }
    }

    /// The connection went away: its exclusive queues go with it.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let owned: Vec<Arc<Queue>> = self
            .read()
            .queues
            .values()
            .filter(|q| q.options().exclusive_owner == Some(connection))
            .cloned()
            .collect();
        for q in owned {
            self.remove_queue(&q);
        }
    }

    pub fn bindings(&self) -> Vec<BindingInfo> {
        let t = self.read();
        let mut out = Vec::new();
        for x in t.exchanges.values() {
            for b in x.bindings() {
                out.push(BindingInfo {
                    source: x.name.clone(),
                    destination: b.destination.clone(),
                    routing_key: b.routing_key.clone(),
                    arguments: b.arguments.clone(),
                });
            }
        }
        out
    }

    // ---- routing ----

    /// Resolves the queues a message published to `exchange` with `routing_key` goes to, each
    /// once however many paths lead there. The `CC` and `BCC` headers add routing keys
    /// (sender-selected distribution); an exchange that routes nowhere hands the message to its
    /// alternate exchange. 404 for a missing exchange, 403 for an internal one, 406 for a `CC`
    /// or `BCC` header that is not an array.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<()> {
        let sender_selected =
            headers.is_some_and(|h| h.contains_key("CC") || h.contains_key("BCC"));
        if !sender_selected {
            // The common case: one key, no allocation.
            let t = self.read();
            return self.route_locked(&t, exchange, &[routing_key], headers, true, out);
        }
        let keys = sender_selected_keys(routing_key, headers)?;
        let all: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        let t = self.read();
        self.route_locked(&t, exchange, &all, headers, true, out)
    }

    pub(crate) fn route_locked(
        &self,
        t: &Topology,
        exchange: &str,
        keys: &[&str],
        headers: Option<&FieldTable>,
        from_client: bool,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<()> {
        if exchange.is_empty() {
            for k in keys {
                if let Some(q) = t.queues.get(*k) {
                    if !out.iter().any(|o| Arc::ptr_eq(o, q)) {
                        out.push(Arc::clone(q));
                    }
                }
            }
            return Ok(());
        }
        let x = t
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.not_found(ObjectKind::Exchange, exchange))?;
        if from_client && x.internal {
            return Err(BrokerError::InternalExchange {
                name: exchange.to_owned(),
                vhost: self.name.clone(),
            });
        }
        let mut visited: Vec<&ShortString> = vec![&x.name];
        let mut pending: Vec<&Exchange> = vec![x];
        let mut queue_names: Vec<&ShortString> = Vec::new();
        while let Some(x) = pending.pop() {
            let mut routed_any = false;
            for key in keys {
                x.route(key, headers, |d| {
                    routed_any = true;
                    match d {
                        Destination::Queue(n) => {
                            if !queue_names.contains(&n) {
                                queue_names.push(n);
                            }
                        }
                        Destination::Exchange(n) => {
                            if !visited.contains(&n) {
                                if let Some((k, next)) = t.exchanges.get_key_value(n) {
                                    visited.push(k);
                                    pending.push(next);
                                }
                            }
                        }
                    }
                });
            }
            if !routed_any {
                if let Some(ae) = x.alternate_exchange() {
                    if !visited.iter().any(|v| v.as_str() == ae) {
                        if let Some((k, next)) = t.exchanges.get_key_value(ae) {
                            visited.push(k);
                            pending.push(next);
                        }
                    }
                }
            }
        }
        for n in queue_names {
            if let Some(q) = t.queues.get(n) {
                if !out.iter().any(|o| Arc::ptr_eq(o, q)) {
                    out.push(Arc::clone(q));
                }
            }
        }
        Ok(())
    }

    /// Periodic work: expires messages at queue heads, deletes queues whose `x-expires` ran
    /// out. Cheap when nothing is due (one atomic load per queue, no queue lock).
    pub fn tick(&self) {
        let now = self.clock.now_ms();
        self.fire_delayed(now);
        let due: Vec<Arc<Queue>> = self
            .read()
            .queues
            .values()
            .filter(|q| q.tick_due(now))
            .cloned()
            .collect();
        for q in due {
            if q.tick() == TickAction::Delete {
                tracing::debug!(queue = %q.name(), vhost = %self.name, "queue expired (x-expires)");
                self.lifecycle_delete(&q, "x-expires");
            }
        }
    }
}

/// Drops bindings to `dest` from every exchange; returns the exchanges that lost one.
fn remove_bindings_to(t: &mut Topology, dest: &Destination) -> Vec<ShortString> {
    let mut sources = Vec::new();
    for x in t.exchanges.values_mut() {
        if x.unbind_destination(dest) > 0 {
            sources.push(x.name.clone());
        }
    }
    sources
}

/// Auto-delete exchanges go when their last outgoing binding does (cascading through
/// exchange-to-exchange bindings). With `keep_durable` (a clustered node) durable ones stay
/// and are returned second, for the cluster to decide.
fn delete_unused_auto_delete(
    t: &mut Topology,
    mut candidates: Vec<ShortString>,
    keep_durable: bool,
) -> (Vec<ShortString>, Vec<ShortString>) {
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    while let Some(name) = candidates.pop() {
        let unused = t
            .exchanges
            .get(&name)
            .filter(|x| x.auto_delete && !x.has_bindings())
            .map(|x| x.durable);
        match unused {
            Some(true) if keep_durable => kept.push(name),
            Some(_) => {
                t.exchanges.remove(&name);
                candidates.extend(remove_bindings_to(t, &Destination::Exchange(name.clone())));
                deleted.push(name);
            }
            None => {}
        }
    }
    (deleted, kept)
}

/// Compares the listed arguments of a redeclaration with the existing ones. On a mismatch,
/// returns (argument, received, current) formatted as RabbitMQ formats them.
fn compare_args(
    keys: &[&str],
    received: &FieldTable,
    current: &FieldTable,
) -> std::result::Result<(), (String, String, String)> {
    for key in keys {
        let (r, c) = (received.get(key), current.get(key));
        let same = match (r, c) {
            (None, None) => true,
            (Some(a), Some(b)) => values_equal(a, b),
            // x-queue-type classic is what an absent type means.
            (Some(v), None) | (None, Some(v)) => {
                *key == "x-queue-type" && v.as_str() == Some("classic")
            }
        };
        if !same {
            // RabbitMQ shows bare values when both sides have one, typed values otherwise.
            let (received, current) = match (r, c) {
                (Some(a), Some(b)) => (
                    format!("'{}'", show_value(a)),
                    format!("'{}'", show_value(b)),
                ),
                _ => (describe_arg(r), describe_arg(c)),
            };
            return Err(((*key).to_owned(), received, current));
        }
    }
    Ok(())
}

fn show_value(v: &FieldValue) -> String {
    match v {
        FieldValue::LongString(s) => s.to_str_lossy().into_owned(),
        FieldValue::Bool(b) => b.to_string(),
        other => other
            .as_i64()
            .map_or_else(|| format!("{other:?}"), |n| n.to_string()),
    }
}

fn describe_arg(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".to_owned(),
        Some(v) => format!("the value '{}' of type '{}'", show_value(v), v.type_name()),
    }
}

/// A queue's settings from its arguments (`config`, as `QueueType::config` resolved them)
/// merged with the policy in force, by RabbitMQ's rules: for streams the policy wins,
/// otherwise `QueueConfig::apply_policy` decides. Declarations and policy changes both use it.
fn with_policy(
    kind: QueueType,
    mut config: crate::args::QueueConfig,
    arguments: &FieldTable,
    p: Option<&Policy>,
) -> crate::args::QueueConfig {
    let Some(p) = p else {
        config.policy = None;
        return config;
    };
    if kind == QueueType::Stream {
        if let Some(b) = p.definition.max_length_bytes {
            config.max_length_bytes = Some(b);
        }
        if let Some(ms) = p
            .definition
            .max_age
            .as_deref()
            .and_then(crate::args::parse_max_age)
        {
            config.max_age_ms = Some(ms);
        }
        if let Some(b) = p.definition.stream_max_segment_size_bytes {
            config.stream_max_segment_size_bytes = Some(b);
        }
    } else {
        config.apply_policy(&p.definition, arguments);
        if kind != QueueType::Quorum {
            // A quorum queue's setting only: classic queues dead-letter at most once.
            config.dead_letter_strategy = None;
        }
    }
    config.policy = Some(p.name.clone());
    config
}
