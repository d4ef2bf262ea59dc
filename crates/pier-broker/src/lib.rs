//! Pier's broker model: vhosts, exchanges, bindings, queues, consumers, routing, delivery and
//! acknowledgement bookkeeping. Plain Rust with `std::sync` locks: no sockets, no async runtime,
//! so every rule here is unit-testable and the server crate only wires it to the network.
//!
//! ```text
//!  Broker ─┬─ UserStore (users, password hashes, permissions)
//!          └─ VHost* ── topology (RwLock) ─┬─ Exchange* ── bindings ──► Destination (queue | exchange)
//!                                          └─ Queue* (own Mutex) ── consumers ──► DeliverySink (per channel)
//! ```

pub mod args;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod consumer;
pub mod counters;
pub mod deadletter;
mod delayed;
pub mod deprecated;
pub mod error;
pub mod exchange;
pub mod fanout;
pub mod matching;
pub mod message;
pub mod names;
pub mod persist;
pub mod policy;
pub mod publish;
pub mod queue;
pub mod session;
pub mod storage;
pub mod topic;
pub mod vhost;
pub mod waits;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

pub use args::{parse_expiration, DeliveryCounting, Overflow, QueueConfig};
pub use auth::{
    Access, CompiledPermission, CompiledTopicPermission, Permission, TopicPermission,
    TopicPermissions, User, UserStore,
};
pub use clock::Clock;
pub use consumer::{
    ChannelCredit, ConnectionId, ConsumerId, ConsumerInfo, ConsumerSpec, Delivery, DeliverySink,
};
pub use counters::{QueueCounters, QueueCountersSnapshot};
pub use deadletter::{DeadLetter, DeadLettersInFlight, DeathReason};
pub use deprecated::{DeprecatedFeature, DeprecatedFeatures};
pub use error::{BrokerError, ObjectKind};
pub use exchange::{Destination, ExchangeKind};
pub use message::{Message, Properties};
pub use policy::{ApplyTo, Policy, PolicyDefinition};
pub use publish::{Durability, PublishOptions, PublishOutcome};
pub use queue::{
    Published, Queue, QueueLink, QueueStats, QueueType, RemoteConsumer, RemoteGot, Settlement,
};
pub use vhost::{
    Authorize, ConnectionSlot, ExchangeDeclare, QueueDeclare, QueueDeclared, VHost, VhostLimits,
};
pub use waits::{WaitHistogram, WaitSummary};

/// Why a login was refused (the server answers both the same way, as RabbitMQ does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("user '{0}' - invalid credentials")]
    InvalidCredentials(String),
    #[error("user '{0}' can only connect via localhost")]
    LoopbackOnly(String),
}

/// The whole broker state of one node.
#[derive(Debug)]
pub struct Broker {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    users: RwLock<UserStore>,
    /// Users who may only log in from loopback addresses (RabbitMQ's `loopback_users`).
    loopback_users: Vec<String>,
    /// Set once storage has recovered: later changes to vhosts, users and permissions are
    /// written through.
    storage: OnceLock<Arc<storage::BrokerStorage>>,
    /// Bumped (under the users lock) whenever a permission may have changed, so connections
    /// can cache their compiled permission and notice changes with one atomic load.
    permissions_version: AtomicU64,
    /// The cluster this node is part of (none: a single node). Given to every vhost.
    cluster: OnceLock<Arc<dyn cluster::Cluster>>,
    /// How quorum queues count deliveries (RabbitMQ 4.2's unless set). Given to every vhost.
    delivery_counting: OnceLock<DeliveryCounting>,
}

impl Broker {
    /// An empty broker: no vhosts, no users.
    pub fn empty(loopback_users: Vec<String>) -> Self {
        Broker {
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(UserStore::default()),
            loopback_users,
            storage: OnceLock::new(),
            permissions_version: AtomicU64::new(0),
            cluster: OnceLock::new(),
            delivery_counting: OnceLock::new(),
        }
    }

    /// Sets how quorum queues count deliveries, RabbitMQ 4.2's or 4.3's way (before storage
    /// recovers any queue). Set once.
    pub fn set_delivery_counting(&self, counting: DeliveryCounting) {
        if self.delivery_counting.set(counting).is_ok() {
            for vh in self.vhosts() {
                vh.set_delivery_counting(counting);
            }
        }
    }

    /// Makes this broker a cluster node (before recovery: recovered durable queues homed on
    /// other nodes get remote handles). Set once.
    pub fn set_cluster(&self, cluster: Arc<dyn cluster::Cluster>) {
        if self.cluster.set(Arc::clone(&cluster)).is_ok() {
            for vh in self.vhosts() {
                vh.set_cluster(Arc::clone(&cluster));
            }
        }
    }

    pub fn cluster(&self) -> Option<&Arc<dyn cluster::Cluster>> {
        self.cluster.get()
    }

    /// RabbitMQ's out-of-the-box state: vhost `/`, user guest/guest (administrator, full
    /// permissions on `/`, loopback only).
    pub fn with_defaults() -> Self {
        let b = Broker::empty(vec!["guest".to_owned()]);
        b.add_vhost("/");
        b.add_user("guest", "guest", vec!["administrator".to_owned()]);
        b.set_permission("guest", "/", Permission::full());
        b
    }

    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        let (vh, created) = {
            let mut v = self.vhosts.write().unwrap_or_else(|p| p.into_inner());
            match v.get(name) {
                Some(vh) => (Arc::clone(vh), false),
                None => {
                    let vh = VHost::new(name);
                    if let Some(c) = self.cluster.get() {
                        vh.set_cluster(Arc::clone(c));
                    }
                    if let Some(c) = self.delivery_counting.get() {
                        vh.set_delivery_counting(*c);
                    }
                    v.insert(name.to_owned(), Arc::clone(&vh));
                    (vh, true)
                }
            }
        };
        if let (true, Some(s)) = (created, self.storage.get()) {
            if let Err(e) = s.attach_vhost(&vh) {
                tracing::error!(vhost = name, "vhost storage: {e}");
            }
        }
        vh
    }

    /// Writes later changes through to `storage` (called by its recovery).
    pub(crate) fn set_storage(&self, storage: Arc<storage::BrokerStorage>) {
        let _ = self.storage.set(storage);
    }

    fn persist_users<T>(
        &self,
        what: &str,
        f: impl FnOnce(&pier_store::DefinitionsStore) -> Result<T, pier_store::DefinitionsError>,
    ) {
        if let Some(s) = self.storage.get() {
            if let Err(e) = f(s.definitions()) {
                tracing::error!("storing {what} failed: {e}");
            }
        }
    }

    fn persist_user(&self, name: &str) {
        let user = self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .user(name)
            .cloned();
        if let Some(u) = user {
            self.persist_users("user", |d| {
                d.put_user(&pier_store::UserDef {
                    name: u.name.clone(),
                    password_hash: u.password_hash.clone(),
                    tags: u.tags.clone(),
                })
            });
        }
    }

    pub fn delete_vhost(&self, name: &str) -> bool {
        let removed = self
            .vhosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(vh) = &removed {
            for q in vh.queues() {
                vh.remove_queue(&q);
            }
            {
                let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
                users.remove_vhost(name);
                self.permissions_version.fetch_add(1, Ordering::Release);
            }
            self.persist_users("vhost deletion", |d| d.delete_vhost(name));
        }
        removed.is_some()
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Periodic work for every vhost (message and queue expiry, delayed messages). The server
    /// calls this from one timer, every 50–100 ms.
    pub fn tick(&self) {
        for vh in self.vhosts() {
            vh.tick();
        }
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn add_user(&self, name: &str, password: &str, tags: Vec<String>) {
        self.users
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .add_user(name, password, tags);
        self.persist_user(name);
    }

    /// Adds (or replaces) a user with a RabbitMQ-format password hash (definitions import).
    pub fn add_user_with_hash(&self, name: &str, password_hash: &str, tags: Vec<String>) {
        self.users
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .add_user_with_hash(name, password_hash, tags);
        self.persist_user(name);
    }

    /// Deletes a user and their permissions; false when there was no such user.
    pub fn delete_user(&self, name: &str) -> bool {
        let removed = {
            let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
            let removed = users.remove_user(name);
            self.permissions_version.fetch_add(1, Ordering::Release);
            removed
        };
        self.persist_users("user deletion", |d| d.delete_user(name));
        removed
    }

    /// Removes a user's permission on a vhost; false when there was none.
    pub fn clear_permission(&self, user: &str, vhost: &str) -> bool {
        let removed = {
            let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
            let removed = users.clear_permission(user, vhost);
            self.permissions_version.fetch_add(1, Ordering::Release);
            removed
        };
        self.persist_users("permission deletion", |d| d.delete_permission(user, vhost));
        removed
    }

    /// Whether `user` may only log in from loopback addresses.
    pub fn is_loopback_only(&self, user: &str) -> bool {
        self.loopback_users.iter().any(|u| u == user)
    }

    pub fn set_permission(&self, user: &str, vhost: &str, p: Permission) {
        let def = pier_store::PermissionDef {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            configure: p.configure.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
        };
        {
            let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
            users.set_permission(user, vhost, p);
            self.permissions_version.fetch_add(1, Ordering::Release);
        }
        self.persist_users("permission", |d| d.put_permission(&def));
    }

    /// Sets (or replaces) a user's topic permission on one exchange of a vhost.
    pub fn set_topic_permission(&self, user: &str, vhost: &str, p: TopicPermission) {
        let def = pier_store::TopicPermissionDef {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            exchange: p.exchange.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
        };
        {
            let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
            users.set_topic_permission(user, vhost, p);
            self.permissions_version.fetch_add(1, Ordering::Release);
        }
        self.persist_users("topic permission", |d| d.put_topic_permission(&def));
    }

    /// Removes a user's topic permission on `exchange` of a vhost, or all of the user's
    /// topic permissions on the vhost with `None`; false when there was none.
    pub fn clear_topic_permission(&self, user: &str, vhost: &str, exchange: Option<&str>) -> bool {
        let (removed, exchanges) = {
            let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
            let exchanges: Vec<String> = match exchange {
                Some(x) => vec![x.to_owned()],
                None => users
                    .topic_permissions()
                    .filter(|(u, v, _)| *u == user && *v == vhost)
                    .map(|(_, _, p)| p.exchange.clone())
                    .collect(),
            };
            let removed = users.clear_topic_permission(user, vhost, exchange);
            self.permissions_version.fetch_add(1, Ordering::Release);
            (removed, exchanges)
        };
        self.persist_users("topic permission deletion", |d| {
            exchanges
                .iter()
                .try_for_each(|x| d.delete_topic_permission(user, vhost, x).map(drop))
        });
        removed
    }

    /// The user's topic permissions on a vhost (none: no routing key is restricted), with
    /// the `permissions_version` they are current for.
    pub fn compiled_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
    ) -> (u64, Option<Arc<TopicPermissions>>) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let version = self.permissions_version.load(Ordering::Acquire);
        (version, users.compiled_topic_permissions(user, vhost))
    }

    /// A counter that changes whenever any permission may have changed.
    pub fn permissions_version(&self) -> u64 {
        self.permissions_version.load(Ordering::Acquire)
    }

    /// The user's compiled permission on a vhost (none: no access at all), with the
    /// `permissions_version` it is current for.
    pub fn compiled_permission(
        &self,
        user: &str,
        vhost: &str,
    ) -> (u64, Option<Arc<CompiledPermission>>) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let version = self.permissions_version.load(Ordering::Acquire);
        (version, users.compiled_permission(user, vhost))
    }

    /// One user (a copy), without cloning the whole store as [`Broker::users`] does.
    pub fn user(&self, name: &str) -> Option<User> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .user(name)
            .cloned()
    }

    /// A user's permission on a vhost (a copy).
    pub fn permission(&self, user: &str, vhost: &str) -> Option<Permission> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .permission(user, vhost)
            .cloned()
    }

    pub fn users(&self) -> UserStore {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks credentials; `from_loopback` says whether the peer address is a loopback one.
    pub fn authenticate(
        &self,
        user: &str,
        password: &str,
        from_loopback: bool,
    ) -> Result<User, AuthError> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let found = users
            .authenticate(user, password)
            .ok_or_else(|| AuthError::InvalidCredentials(user.to_owned()))?;
        if !from_loopback && self.loopback_users.iter().any(|u| u == user) {
            return Err(AuthError::LoopbackOnly(user.to_owned()));
        }
        Ok(found.clone())
    }

    /// SASL EXTERNAL: the user named by a verified TLS client certificate must exist (no
    /// password is checked, as in RabbitMQ's rabbitmq_auth_mechanism_ssl).
    pub fn authenticate_external(
        &self,
        user: &str,
        from_loopback: bool,
    ) -> Result<User, AuthError> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let found = users
            .user(user)
            .ok_or_else(|| AuthError::InvalidCredentials(user.to_owned()))?;
        if !from_loopback && self.loopback_users.iter().any(|u| u == user) {
            return Err(AuthError::LoopbackOnly(user.to_owned()));
        }
        Ok(found.clone())
    }

    /// connection.open: the vhost must exist and the user must hold a permission on it.
    pub fn open_vhost(&self, user: &str, vhost: &str) -> Result<Arc<VHost>, BrokerError> {
        let vh = self
            .vhost(vhost)
            .ok_or_else(|| BrokerError::VhostNotFound(vhost.to_owned()))?;
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        if users.permission(user, vhost).is_none() {
            return Err(BrokerError::VhostAccessRefused {
                vhost: vhost.to_owned(),
                user: user.to_owned(),
            });
        }
        Ok(vh)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_features;
#[cfg(test)]
mod tests_paging;
#[cfg(test)]
mod tests_remote;
