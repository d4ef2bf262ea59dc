//! Applies [`MetadataCommand`]s to the node's [`Broker`] through its public API, and installs
//! snapshots. No locks are held here and nothing is awaited: this is plain broker code, run on
//! a blocking thread by the Raft state machine, or directly by a single node's management API.
//!
//! The broker writes durable changes through to `definitions.redb` as it always does; the
//! state machine wraps each apply batch in one redb transaction (see `raft::state_machine`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use pier_broker::{
    ApplyTo, Broker, BrokerError, ExchangeDeclare, ObjectKind, Permission, Policy,
    PolicyDefinition, QueueDeclare, TopicPermission, VhostLimits,
};
use pier_store::{decode_arguments, Definitions, DestinationKind};
use pier_wire::{FieldTable, ShortString};

use super::catalog::{Catalog, QueueHome, VhostMeta};
use super::command::{CommandError, MetadataCommand, Outcome};
use super::snapshot::MetadataSnapshot;

/// What the rest of the node does when the definitions change under it: the server closes
/// the connections of a deleted vhost or user. Called after the change, on every node.
pub trait Hooks: Send + Sync + 'static {
    fn vhost_deleted(&self, _vhost: &str) {}
    fn user_deleted(&self, _user: &str) {}
}

/// The management API and the Raft state machine act as no client connection.
const NO_CONNECTION: u64 = 0;

fn args(bytes: &[u8]) -> Result<FieldTable, CommandError> {
    decode_arguments(bytes).map_err(|e| CommandError::Invalid(format!("arguments: {e}")))
}

fn short(s: &str) -> Result<ShortString, CommandError> {
    if s.len() > 255 {
        return Err(CommandError::Invalid(format!("name too long: '{s}'")));
    }
    Ok(ShortString::from(s))
}

/// Builds a policy from a command's fields (lenient: keys this Pier does not apply were
/// refused or reported where the command was made).
pub fn policy_from(
    name: &str,
    pattern: &str,
    apply_to: &str,
    priority: i32,
    definition: &serde_json::Value,
) -> Result<Policy, String> {
    let apply_to =
        ApplyTo::parse(apply_to).ok_or_else(|| format!("unknown apply-to '{apply_to}'"))?;
    let definition = match definition {
        serde_json::Value::Object(m) => PolicyDefinition::from_json(m, true)?,
        other => return Err(format!("definition is not an object: {other}")),
    };
    Policy::new(name, pattern, apply_to, priority, definition)
}

/// Applies commands to one node's broker and catalog.
#[derive(Clone)]
pub struct Applier {
    broker: Arc<Broker>,
    catalog: Arc<Catalog>,
    hooks: Option<Arc<dyn Hooks>>,
    /// The log index of the entry being applied (0 outside Raft): a replicated quorum
    /// queue's group id is the index of its declaration, the same on every node and never
    /// reused.
    index: Arc<std::sync::atomic::AtomicU64>,
    /// The position of the command being applied in a batch entry (a definitions import
    /// declares all its queues in one): part of the group id, so that the quorum queues of
    /// one batch get groups of their own.
    position: Arc<std::sync::atomic::AtomicU64>,
}

/// Where a batch position goes in a group id (`group_id`).
const POSITION_SHIFT: u32 = 40;

/// A quorum queue's group id: the log index of its declaration, and its position in the
/// entry when that is a batch (position 0, every single declaration, is the index alone).
fn group_id(index: u64, position: u64) -> u64 {
    index | (position << POSITION_SHIFT)
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").finish_non_exhaustive()
    }
}

impl Applier {
    pub fn new(broker: Arc<Broker>, catalog: Arc<Catalog>, hooks: Option<Arc<dyn Hooks>>) -> Self {
        Applier {
            broker,
            catalog,
            hooks,
            index: Arc::default(),
            position: Arc::default(),
        }
    }

    /// Applies the command of the log entry at `index`.
    pub fn apply_at(&self, index: u64, cmd: &MetadataCommand) -> Result<Outcome, CommandError> {
        self.index
            .store(index, std::sync::atomic::Ordering::Relaxed);
        let out = self.apply(cmd);
        self.index.store(0, std::sync::atomic::Ordering::Relaxed);
        out
    }

    /// The log index of the entry being applied now (0 outside one): what a quorum queue's
    /// policy change is ordered by (`QueueOp::Reconfigure`).
    pub fn applying(&self) -> u64 {
        self.index.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    fn vhost(&self, name: &str) -> Result<Arc<pier_broker::VHost>, CommandError> {
        self.broker
            .vhost(name)
            .ok_or_else(|| CommandError::NoVhost(name.to_owned()))
    }

    /// Applies one command. Refusals are the same on every node that holds the same
    /// definitions.
    pub fn apply(&self, cmd: &MetadataCommand) -> Result<Outcome, CommandError> {
        use MetadataCommand as C;
        let b = &self.broker;
        match cmd {
            C::PutVhost {
                name,
                description,
                tags,
                default_queue_type,
                creator,
            } => {
                let existed = b.vhost(name).is_some();
                b.add_vhost(name);
                self.catalog.update_vhost(name, |m| {
                    m.description.clone_from(description);
                    m.tags.clone_from(tags);
                    m.default_queue_type.clone_from(default_queue_type);
                });
                if let (false, Some(user)) = (existed, creator) {
                    b.set_permission(user, name, Permission::full());
                }
                Ok(Outcome::Created(!existed))
            }
            C::DeleteVhost { name } => {
                let removed = b.delete_vhost(name);
                self.catalog.forget_vhost(name);
                if removed {
                    if let Some(h) = &self.hooks {
                        h.vhost_deleted(name);
                    }
                }
                Ok(Outcome::Removed(removed))
            }
            C::PutUser {
                name,
                password_hash,
                tags,
            } => {
                let existed = b.user(name).is_some();
                b.add_user_with_hash(name, password_hash, tags.clone());
                Ok(Outcome::Created(!existed))
            }
            C::DeleteUser { name } => {
                let removed = b.delete_user(name);
                if removed {
                    if let Some(h) = &self.hooks {
                        h.user_deleted(name);
                    }
                }
                Ok(Outcome::Removed(removed))
            }
            C::SetPermission {
                user,
                vhost,
                configure,
                write,
                read,
            } => {
                if b.vhost(vhost).is_none() || b.user(user).is_none() {
                    return Err(CommandError::VhostOrUserNotFound);
                }
                let p = Permission {
                    configure: configure.clone(),
                    write: write.clone(),
                    read: read.clone(),
                };
                p.validate()
                    .map_err(|e| CommandError::Invalid(format!("invalid_regexp: {e}")))?;
                let existed = b.permission(user, vhost).is_some();
                b.set_permission(user, vhost, p);
                Ok(Outcome::Created(!existed))
            }
            C::ClearPermission { user, vhost } => {
                Ok(Outcome::Removed(b.clear_permission(user, vhost)))
            }
            C::SetTopicPermission {
                user,
                vhost,
                exchange,
                write,
                read,
            } => {
                if b.vhost(vhost).is_none() || b.user(user).is_none() {
                    return Err(CommandError::VhostOrUserNotFound);
                }
                let p = TopicPermission {
                    exchange: exchange.clone(),
                    write: write.clone(),
                    read: read.clone(),
                };
                // Not validated here: an import keeps patterns Pier cannot compile (they
                // grant nothing); the management API validates before proposing.
                let existed = b.compiled_topic_permissions(user, vhost).1.is_some();
                b.set_topic_permission(user, vhost, p);
                Ok(Outcome::Created(!existed))
            }
            C::ClearTopicPermission {
                user,
                vhost,
                exchange,
            } => Ok(Outcome::Removed(b.clear_topic_permission(
                user,
                vhost,
                exchange.as_deref(),
            ))),
            C::SetPolicy {
                vhost,
                name,
                pattern,
                apply_to,
                priority,
                definition,
            } => {
                let vh = self.vhost(vhost)?;
                let policy = policy_from(name, pattern, apply_to, *priority, definition)
                    .map_err(CommandError::Invalid)?;
                let existed = vh.policies().iter().any(|p| &p.name == name);
                vh.set_policy(policy);
                Ok(Outcome::Created(!existed))
            }
            C::ClearPolicy { vhost, name } => {
                let vh = self.vhost(vhost)?;
                Ok(Outcome::Removed(vh.clear_policy(name)))
            }
            C::SetVhostLimits {
                vhost,
                max_connections,
                max_queues,
            } => {
                let vh = self.vhost(vhost)?;
                vh.set_limits(VhostLimits {
                    max_connections: *max_connections,
                    max_queues: *max_queues,
                });
                self.catalog.update_vhost(vhost, |m| {
                    m.max_connections = *max_connections;
                    m.max_queues = *max_queues;
                });
                Ok(Outcome::Done)
            }
            C::DeclareExchange {
                vhost,
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
            } => {
                let vh = self.vhost(vhost)?;
                let existed = vh.exchange_exists(name);
                vh.declare_exchange(&ExchangeDeclare {
                    name: short(name)?,
                    kind: kind.clone(),
                    passive: false,
                    durable: *durable,
                    auto_delete: *auto_delete,
                    internal: *internal,
                    arguments: args(arguments)?,
                })?;
                Ok(Outcome::Created(!existed))
            }
            C::DeleteExchange { vhost, name } => {
                let vh = self.vhost(vhost)?;
                let existed = vh.exchange_exists(name);
                vh.delete_exchange(name, false)?;
                Ok(Outcome::Removed(existed))
            }
            C::DeclareQueue {
                vhost,
                name,
                durable,
                auto_delete,
                arguments,
                home,
                members,
                checked,
            } => {
                let vh = self.vhost(vhost)?;
                let d = QueueDeclare {
                    name: short(name)?,
                    passive: false,
                    durable: *durable,
                    exclusive: false,
                    auto_delete: *auto_delete,
                    arguments: args(arguments)?,
                    connection: NO_CONNECTION,
                };
                if *checked {
                    pier_broker::names::check_not_reserved(ObjectKind::Queue, name)?;
                }
                // A quorum queue with several members is a Raft group: its id is this
                // entry's index. The home is recorded first, so that the declaration finds
                // the group (every node's handle is then a link to its leader).
                let index = self.index.load(std::sync::atomic::Ordering::Relaxed);
                let fresh = *durable && vh.find_queue(name).is_none();
                // (A stream with several members is replicated by its leader instead:
                // `queues/stream.rs`.)
                let group = if fresh
                    && members.len() > 1
                    && index > 0
                    && crate::handle::declares_quorum(*durable, &d.arguments)
                {
                    group_id(
                        index,
                        self.position.load(std::sync::atomic::Ordering::Relaxed),
                    )
                } else {
                    0
                };
                if fresh {
                    self.catalog.set_queue_home(
                        vhost,
                        name,
                        QueueHome {
                            home: home.clone(),
                            members: members.clone(),
                            group,
                            epochs: Vec::new(),
                        },
                    );
                }
                // A durable queue lives on its home node; the others get a remote handle.
                let declared = if *durable {
                    vh.declare_queue_at(&d, home)
                } else {
                    vh.declare_queue(&d)
                };
                let declared = match declared {
                    Ok(d) => d,
                    Err(e) => {
                        if fresh {
                            self.catalog.forget_queue(vhost, name);
                        }
                        return Err(e.into());
                    }
                };
                if let (Some(c), true) = (self.broker.cluster(), *durable) {
                    c.queue_declared(vhost, name);
                }
                Ok(Outcome::Created(declared.created))
            }
            C::SetQueueMembers {
                vhost,
                name,
                members,
            } => {
                let Some(mut home) = self.catalog.queue_home(vhost, name) else {
                    return Ok(Outcome::Skipped(format!(
                        "queue '{name}' in vhost '{vhost}' is not replicated"
                    )));
                };
                // A stream's replicas are its members too (`add_replica`, `delete_replica`).
                let stream = self
                    .broker
                    .vhost(vhost)
                    .and_then(|vh| vh.find_queue(name))
                    .is_some_and(|q| q.kind() == pier_broker::queue::QueueType::Stream);
                if home.group == 0 && !stream {
                    return Ok(Outcome::Skipped(format!(
                        "queue '{name}' in vhost '{vhost}' is not replicated"
                    )));
                }
                home.members.clone_from(members);
                self.catalog.set_queue_home(vhost, name, home);
                if let Some(c) = self.broker.cluster() {
                    c.queue_members_changed(vhost, name);
                }
                Ok(Outcome::Created(false))
            }
            C::SetStreamLeader {
                vhost,
                name,
                epoch,
                leader,
                start,
            } => {
                let Some(mut home) = self.catalog.queue_home(vhost, name) else {
                    return Ok(Outcome::Skipped(format!(
                        "no stream '{name}' in vhost '{vhost}'"
                    )));
                };
                let next = u64::try_from(home.epochs.len()).unwrap_or(u64::MAX) + 1;
                if home.group != 0 || !home.members.contains(leader) || *epoch != next {
                    return Ok(Outcome::Skipped(format!(
                        "stream '{name}' in vhost '{vhost}': epoch {epoch} by {leader} is stale"
                    )));
                }
                home.home.clone_from(leader);
                home.epochs.push(*start);
                self.catalog.set_queue_home(vhost, name, home);
                if let Some(c) = self.broker.cluster() {
                    c.stream_leader_changed(vhost, name);
                }
                Ok(Outcome::Created(false))
            }
            C::DeleteQueue { vhost, name } => {
                let vh = self.vhost(vhost)?;
                let Some(q) = vh.find_queue(name) else {
                    return Ok(Outcome::Removed(false));
                };
                vh.remove_queue(&q);
                if let Some(c) = self.broker.cluster() {
                    c.queue_removed(vhost, name);
                }
                self.catalog.forget_queue(vhost, name);
                Ok(Outcome::Removed(true))
            }
            C::Bind {
                vhost,
                source,
                destination,
                destination_kind,
                routing_key,
                arguments,
                skip_missing,
            } => {
                let vh = self.vhost(vhost)?;
                if *skip_missing {
                    let dest_exists = match destination_kind {
                        DestinationKind::Queue => vh.find_queue(destination).is_some(),
                        DestinationKind::Exchange => vh.exchange_exists(destination),
                    };
                    if !vh.exchange_exists(source) || !dest_exists {
                        return Ok(Outcome::Skipped(format!(
                            "binding '{source}' -> {} '{destination}' in vhost '{vhost}': \
                             source or destination missing",
                            kind_name(*destination_kind)
                        )));
                    }
                }
                let (rk, a) = (short(routing_key)?, args(arguments)?);
                match destination_kind {
                    DestinationKind::Queue => {
                        vh.bind_queue(destination, source, rk, a, NO_CONNECTION)?
                    }
                    DestinationKind::Exchange => vh.bind_exchange(destination, source, rk, a)?,
                }
                Ok(Outcome::Done)
            }
            C::Unbind {
                vhost,
                source,
                destination,
                destination_kind,
                routing_key,
                arguments,
            } => {
                let vh = self.vhost(vhost)?;
                let (rk, a) = (short(routing_key)?, args(arguments)?);
                match destination_kind {
                    DestinationKind::Queue => {
                        vh.unbind_queue(destination, source, rk, a, NO_CONNECTION)?
                    }
                    DestinationKind::Exchange => vh.unbind_exchange(destination, source, rk, a)?,
                }
                Ok(Outcome::Done)
            }
            C::SetClusterName { name } => {
                self.catalog.set_cluster_name(name);
                Ok(Outcome::Done)
            }
            C::Batch { commands } => {
                let position = |i: usize| {
                    self.position
                        .store(i as u64, std::sync::atomic::Ordering::Relaxed);
                };
                let outcomes = commands
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        position(i);
                        self.apply(c)
                    })
                    .collect();
                position(0);
                Ok(Outcome::Batch(outcomes))
            }
        }
    }

    /// Makes this node's definitions those of `snapshot`: what it lacks is created, what it
    /// has and the snapshot does not is deleted (queues with their messages, as a reset
    /// node's are), what differs is replaced. `current` is what the node stores now
    /// (`DefinitionsStore::load`).
    pub fn install(&self, snapshot: &MetadataSnapshot, current: &Definitions) {
        let b = &self.broker;
        let want = &snapshot.definitions;
        let log = |what: &str, r: Result<(), BrokerError>| {
            if let Err(e) = r {
                tracing::warn!("snapshot install: {what}: {e}");
            }
        };
        // Vhosts: gone ones first (their contents go with them), then new ones.
        let want_vhosts: BTreeSet<&str> = want.vhosts.iter().map(|v| v.name.as_str()).collect();
        for vh in b.vhosts() {
            if !want_vhosts.contains(vh.name()) {
                b.delete_vhost(vh.name());
                if let Some(h) = &self.hooks {
                    h.vhost_deleted(vh.name());
                }
            }
        }
        for v in &want.vhosts {
            b.add_vhost(&v.name);
        }
        // Users and permissions.
        let want_users: BTreeSet<&str> = want.users.iter().map(|u| u.name.as_str()).collect();
        for u in b.users().users() {
            if !want_users.contains(u.name.as_str()) {
                b.delete_user(&u.name);
                if let Some(h) = &self.hooks {
                    h.user_deleted(&u.name);
                }
            }
        }
        for u in &want.users {
            let same = b
                .user(&u.name)
                .is_some_and(|have| have.password_hash == u.password_hash && have.tags == u.tags);
            if !same {
                b.add_user_with_hash(&u.name, &u.password_hash, u.tags.clone());
            }
        }
        let want_perms: BTreeSet<(&str, &str)> = want
            .permissions
            .iter()
            .map(|p| (p.user.as_str(), p.vhost.as_str()))
            .collect();
        let have: Vec<(String, String)> = b
            .users()
            .permissions()
            .map(|(u, v, _)| (u.to_owned(), v.to_owned()))
            .collect();
        for (u, v) in &have {
            if !want_perms.contains(&(u.as_str(), v.as_str())) {
                b.clear_permission(u, v);
            }
        }
        for p in &want.permissions {
            let perm = Permission {
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            };
            if b.permission(&p.user, &p.vhost).as_ref() != Some(&perm) {
                b.set_permission(&p.user, &p.vhost, perm);
            }
        }
        let want_topic: BTreeSet<(&str, &str, &str)> = want
            .topic_permissions
            .iter()
            .map(|p| (p.user.as_str(), p.vhost.as_str(), p.exchange.as_str()))
            .collect();
        let have: Vec<(String, String, TopicPermission)> = b
            .users()
            .topic_permissions()
            .map(|(u, v, p)| (u.to_owned(), v.to_owned(), p.clone()))
            .collect();
        for (u, v, p) in &have {
            if !want_topic.contains(&(u.as_str(), v.as_str(), p.exchange.as_str())) {
                b.clear_topic_permission(u, v, Some(&p.exchange));
            }
        }
        for p in &want.topic_permissions {
            let perm = TopicPermission {
                exchange: p.exchange.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            };
            let same = have
                .iter()
                .any(|(u, v, hp)| *u == p.user && *v == p.vhost && *hp == perm);
            if !same {
                b.set_topic_permission(&p.user, &p.vhost, perm);
            }
        }
        // Policies, per vhost (before queues: they shape queues at declaration).
        for vh in b.vhosts() {
            let wanted: Vec<_> = want
                .policies
                .iter()
                .filter(|p| p.vhost == vh.name())
                .collect();
            for p in vh.policies() {
                if !wanted.iter().any(|w| w.name == p.name) {
                    vh.clear_policy(&p.name);
                }
            }
            for p in wanted {
                match policy_from(&p.name, &p.pattern, &p.apply_to, p.priority, &p.definition) {
                    Ok(policy) => vh.set_policy(policy),
                    Err(e) => {
                        tracing::warn!(vhost = %vh.name(), policy = %p.name, "snapshot install: {e}")
                    }
                }
            }
        }
        // Durable exchanges, queues and bindings: drop what is gone or different, then
        // declare what is missing, then bind.
        let want_x: BTreeMap<(&str, &str), &pier_store::ExchangeDef> = want
            .exchanges
            .iter()
            .map(|x| ((x.vhost.as_str(), x.name.as_str()), x))
            .collect();
        let want_q: BTreeMap<(&str, &str), &pier_store::QueueDef> = want
            .queues
            .iter()
            .map(|q| ((q.vhost.as_str(), q.name.as_str()), q))
            .collect();
        let want_b: BTreeSet<BindingKey<'_>> = want.bindings.iter().map(binding_key).collect();
        for bd in current
            .bindings
            .iter()
            .filter(|bd| !want_b.contains(&binding_key(bd)))
        {
            let Some(vh) = b.vhost(&bd.vhost) else {
                continue;
            };
            let (Ok(rk), Ok(a)) = (short(&bd.routing_key), args(&bd.arguments)) else {
                continue;
            };
            let r = match bd.destination_kind {
                DestinationKind::Queue => {
                    vh.unbind_queue(&bd.destination, &bd.source, rk, a, NO_CONNECTION)
                }
                DestinationKind::Exchange => vh.unbind_exchange(&bd.destination, &bd.source, rk, a),
            };
            // A binding whose end is already gone is gone too.
            if let Err(e @ BrokerError::NotFound { .. }) = &r {
                tracing::debug!("snapshot install: unbind: {e}");
            } else {
                log("unbind", r);
            }
        }
        for q in &current.queues {
            if want_q.get(&(q.vhost.as_str(), q.name.as_str())) == Some(&q) {
                continue;
            }
            if let Some(vh) = b.vhost(&q.vhost) {
                if let Some(queue) = vh.find_queue(&q.name) {
                    vh.remove_queue(&queue);
                }
            }
        }
        for x in &current.exchanges {
            if want_x.get(&(x.vhost.as_str(), x.name.as_str())) == Some(&x) {
                continue;
            }
            if let Some(vh) = b.vhost(&x.vhost) {
                log("delete exchange", vh.delete_exchange(&x.name, false));
            }
        }
        for x in &want.exchanges {
            let Some(vh) = b.vhost(&x.vhost) else {
                continue;
            };
            let Ok(a) = args(&x.arguments) else { continue };
            let Ok(name) = short(&x.name) else { continue };
            log(
                "declare exchange",
                vh.declare_exchange(&ExchangeDeclare {
                    name,
                    kind: x.kind.clone(),
                    passive: false,
                    durable: true,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: a,
                }),
            );
        }
        for q in &want.queues {
            let Some(vh) = b.vhost(&q.vhost) else {
                continue;
            };
            let (Ok(a), Ok(name)) = (args(&q.arguments), short(&q.name)) else {
                continue;
            };
            let d = QueueDeclare {
                name,
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments: a,
                connection: NO_CONNECTION,
            };
            // Where it lives is in the snapshot's catalog (installed below).
            let home = snapshot
                .catalog
                .queue_homes
                .get(&(q.vhost.clone(), q.name.clone()))
                .map(|h| h.home.as_str());
            let r = match home {
                Some(h) => vh.declare_queue_at(&d, h),
                None => vh.declare_queue(&d),
            };
            log("declare queue", r.map(drop));
        }
        let have_b: BTreeSet<BindingKey<'_>> = current.bindings.iter().map(binding_key).collect();
        for bd in want
            .bindings
            .iter()
            .filter(|bd| !have_b.contains(&binding_key(bd)))
        {
            let Some(vh) = b.vhost(&bd.vhost) else {
                continue;
            };
            let (Ok(rk), Ok(a)) = (short(&bd.routing_key), args(&bd.arguments)) else {
                continue;
            };
            let r = match bd.destination_kind {
                DestinationKind::Queue => {
                    vh.bind_queue(&bd.destination, &bd.source, rk, a, NO_CONNECTION)
                }
                DestinationKind::Exchange => vh.bind_exchange(&bd.destination, &bd.source, rk, a),
            };
            log("bind", r);
        }
        // The catalog, and the limits it holds.
        self.catalog.replace(snapshot.catalog.clone());
        for vh in b.vhosts() {
            let m: VhostMeta = self.catalog.vhost(vh.name()).unwrap_or_default();
            vh.set_limits(VhostLimits {
                max_connections: m.max_connections,
                max_queues: m.max_queues,
            });
        }
    }

    /// Re-applies the catalog's vhost limits to the broker (after a restart).
    pub fn restore_limits(&self) {
        for vh in self.broker.vhosts() {
            if let Some(m) = self.catalog.vhost(vh.name()) {
                if m.max_connections.is_some() || m.max_queues.is_some() {
                    vh.set_limits(VhostLimits {
                        max_connections: m.max_connections,
                        max_queues: m.max_queues,
                    });
                }
            }
        }
    }
}

type BindingKey<'a> = (&'a str, &'a str, bool, &'a str, &'a str, &'a [u8]);

fn binding_key(b: &pier_store::BindingDef) -> BindingKey<'_> {
    (
        &b.vhost,
        &b.source,
        b.destination_kind == DestinationKind::Queue,
        &b.destination,
        &b.routing_key,
        &b.arguments,
    )
}

fn kind_name(k: DestinationKind) -> &'static str {
    match k {
        DestinationKind::Queue => "queue",
        DestinationKind::Exchange => "exchange",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::metadata::{Catalog, MetadataCommand as C, MetadataSnapshot};
    use pier_broker::storage::BrokerStorage;

    struct Node {
        applier: Applier,
        storage: Arc<BrokerStorage>,
        _dir: tempfile::TempDir,
    }

    fn node() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(Broker::empty(Vec::new()));
        broker.add_vhost("/");
        let storage =
            Arc::new(BrokerStorage::open(dir.path(), pier_store::SyncPolicy::Never).unwrap());
        storage.recover(&broker).unwrap();
        let catalog = Arc::new(Catalog::new(None));
        catalog.attach(Arc::clone(storage.definitions())).unwrap();
        Node {
            applier: Applier::new(broker, catalog, None),
            storage,
            _dir: dir,
        }
    }

    impl Node {
        fn snapshot(&self) -> MetadataSnapshot {
            MetadataSnapshot::capture(self.storage.definitions(), self.applier.catalog()).unwrap()
        }
    }

    fn queue(name: &str) -> C {
        C::DeclareQueue {
            vhost: "/".into(),
            name: name.into(),
            durable: true,
            auto_delete: false,
            arguments: Vec::new(),
            home: "pier@a".into(),
            members: vec!["pier@a".into()],
            checked: true,
        }
    }

    fn bind(queue: &str) -> C {
        C::Bind {
            vhost: "/".into(),
            source: "x".into(),
            destination: queue.into(),
            destination_kind: DestinationKind::Queue,
            routing_key: "k".into(),
            arguments: Vec::new(),
            skip_missing: false,
        }
    }

    fn script() -> Vec<C> {
        vec![
            C::PutVhost {
                name: "v".into(),
                description: "d".into(),
                tags: vec![],
                default_queue_type: None,
                creator: Some("u".into()),
            },
            C::PutUser {
                name: "u".into(),
                password_hash: pier_broker::auth::hash_password("p"),
                tags: vec!["management".into()],
            },
            C::SetPolicy {
                vhost: "/".into(),
                name: "cap".into(),
                pattern: "^q".into(),
                apply_to: "queues".into(),
                priority: 0,
                definition: serde_json::json!({"max-length": 2}),
            },
            C::DeclareExchange {
                vhost: "/".into(),
                name: "x".into(),
                kind: "direct".into(),
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: Vec::new(),
            },
            queue("q1"),
            queue("q2"),
            bind("q1"),
            bind("q2"),
            C::DeleteQueue {
                vhost: "/".into(),
                name: "q2".into(),
            },
            C::SetVhostLimits {
                vhost: "v".into(),
                max_connections: None,
                max_queues: Some(3),
            },
            C::SetClusterName { name: "c".into() },
        ]
    }

    #[test]
    fn the_same_commands_give_the_same_definitions_and_each_is_idempotent() {
        let (a, b) = (node(), node());
        for cmd in script() {
            a.applier.apply(&cmd).unwrap();
            // b applies every command twice in a row (a crash in the middle of a batch
            // replays it): the result must not differ.
            b.applier.apply(&cmd).unwrap();
            b.applier.apply(&cmd).unwrap();
        }
        let (sa, sb) = (a.snapshot(), b.snapshot());
        // Password hashes are the command's, so they match too.
        assert_eq!(sa, sb);
        assert_eq!(sa.definitions.queues.len(), 1);
        assert_eq!(sa.definitions.bindings.len(), 1);
        assert_eq!(sa.catalog.cluster_name.as_deref(), Some("c"));
        assert_eq!(sa.catalog.vhosts["v"].max_queues, Some(3));
        assert!(a.applier.catalog().queue_home("/", "q1").is_some());
        assert!(a.applier.catalog().queue_home("/", "q2").is_none());
        assert_eq!(
            a.applier.broker().vhost("v").unwrap().limits().max_queues,
            Some(3)
        );
    }

    #[test]
    fn refusals_are_the_brokers_and_leave_nothing_behind() {
        let n = node();
        for cmd in script() {
            n.applier.apply(&cmd).unwrap();
        }
        let before = n.snapshot();
        let mut args = pier_wire::FieldTable::new();
        args.insert("x-max-length", pier_wire::FieldValue::from(9i64));
        let mut inequivalent = queue("q1");
        if let C::DeclareQueue { arguments, .. } = &mut inequivalent {
            *arguments = crate::metadata::arguments(&args).unwrap();
        }
        let refused = [
            inequivalent,
            queue("amq.reserved"),
            C::SetPermission {
                user: "nobody".into(),
                vhost: "/".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            },
            C::SetPolicy {
                vhost: "missing".into(),
                name: "p".into(),
                pattern: ".*".into(),
                apply_to: "all".into(),
                priority: 0,
                definition: serde_json::json!({}),
            },
            bind("nope"),
        ];
        for cmd in &refused {
            assert!(n.applier.apply(cmd).is_err(), "{cmd:?}");
        }
        assert_eq!(n.snapshot(), before);
        // An import's binding of a missing object is skipped, not refused.
        let mut skip = bind("nope");
        if let C::Bind { skip_missing, .. } = &mut skip {
            *skip_missing = true;
        }
        assert!(matches!(n.applier.apply(&skip), Ok(Outcome::Skipped(_))));
    }

    #[test]
    fn installing_a_snapshot_replaces_the_local_definitions() {
        let (leader, lagging) = (node(), node());
        for cmd in script() {
            leader.applier.apply(&cmd).unwrap();
        }
        // The lagging node has things the cluster no longer has, and lacks others.
        for cmd in [
            queue("stale"),
            C::PutVhost {
                name: "old".into(),
                description: String::new(),
                tags: vec![],
                default_queue_type: None,
                creator: None,
            },
        ] {
            lagging.applier.apply(&cmd).unwrap();
        }
        let snap = leader.snapshot();
        let current = lagging.storage.definitions().load().unwrap();
        lagging.applier.install(&snap, &current);
        assert_eq!(lagging.snapshot(), snap);
        assert!(lagging
            .applier
            .broker()
            .vhost("/")
            .unwrap()
            .find_queue("stale")
            .is_none());
        // Installing the same snapshot again changes nothing.
        let current = lagging.storage.definitions().load().unwrap();
        lagging.applier.install(&snap, &current);
        assert_eq!(lagging.snapshot(), snap);
    }
}
