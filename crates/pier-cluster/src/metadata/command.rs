//! The replicated metadata commands, their outcomes and errors.
//!
//! A command says *what* changes, with everything decided up front: a user's password arrives
//! already hashed (the salt is random, so hashing must happen once, before the log), a queue
//! names its home node, a policy carries its normalised definition. Applying the same command
//! to the same state therefore gives the same state on every node.
//!
//! Every command is idempotent on its own (applying it twice in a row leaves what applying it
//! once left), which is what lets a node that crashed in the middle of an apply batch simply
//! apply the batch again.

use pier_broker::BrokerError;
use pier_store::DestinationKind;
use serde::{Deserialize, Serialize};

/// An AMQP arguments table in its exact AMQP encoding (see `pier_store::encode_arguments`):
/// integer widths survive, as they do in `definitions.redb`.
pub type Arguments = Vec<u8>;

/// One change to the cluster's definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetadataCommand {
    /// Creates a vhost or updates its metadata. `creator`, when the vhost is new, gets full
    /// permissions on it (RabbitMQ's rule for the management API).
    PutVhost {
        name: String,
        description: String,
        tags: Vec<String>,
        default_queue_type: Option<String>,
        creator: Option<String>,
    },
    DeleteVhost {
        name: String,
    },
    /// Creates or replaces a user. The hash is RabbitMQ's salted SHA-256 (empty: no password).
    PutUser {
        name: String,
        password_hash: String,
        tags: Vec<String>,
    },
    DeleteUser {
        name: String,
    },
    SetPermission {
        user: String,
        vhost: String,
        configure: String,
        write: String,
        read: String,
    },
    ClearPermission {
        user: String,
        vhost: String,
    },
    SetTopicPermission {
        user: String,
        vhost: String,
        exchange: String,
        write: String,
        read: String,
    },
    /// Clears one exchange's topic permission, or all of the user's on the vhost (`None`).
    ClearTopicPermission {
        user: String,
        vhost: String,
        exchange: Option<String>,
    },
    /// Sets a policy; `definition` is the normalised JSON object
    /// (`PolicyDefinition::to_json`), `apply_to` is `all`, `queues` or `exchanges`.
    SetPolicy {
        vhost: String,
        name: String,
        pattern: String,
        apply_to: String,
        priority: i32,
        definition: serde_json::Value,
    },
    ClearPolicy {
        vhost: String,
        name: String,
    },
    /// RabbitMQ's vhost limits (the `vhost-limits` runtime parameter); `None`: no limit.
    SetVhostLimits {
        vhost: String,
        max_connections: Option<u64>,
        max_queues: Option<u64>,
    },
    DeclareExchange {
        vhost: String,
        name: String,
        kind: String,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Arguments,
    },
    /// Deletes an exchange. `if-unused` is checked where the deletion is made, before it is
    /// proposed: whether an exchange is in use depends on each node's transient bindings.
    DeleteExchange {
        vhost: String,
        name: String,
    },
    /// Declares a queue. `home` is the node that hosts its messages (RabbitMQ's queue leader:
    /// the node the declaring client is on); `members` the nodes holding replicas (a classic
    /// queue: its home alone). `checked` applies a client's naming rule (no `amq.*` names),
    /// as the management API and AMQP do; imports skip it. `max-queues` is checked where the
    /// declaration is made (`VHost::check_queue_limit`): the count includes each node's own
    /// transient queues.
    DeclareQueue {
        vhost: String,
        name: String,
        durable: bool,
        auto_delete: bool,
        arguments: Arguments,
        home: String,
        members: Vec<String>,
        checked: bool,
    },
    /// Replaces the members of a replicated quorum queue (`add_member`, `delete_member`,
    /// `grow`, `shrink`): a node added opens the queue's Raft group (empty, to be caught up by
    /// the leader), a node removed closes it and drops its log.
    SetQueueMembers {
        vhost: String,
        name: String,
        members: Vec<String>,
    },
    /// A replicated stream's leader changed (failover, decided by the metadata leader):
    /// `leader`, a member, leads epoch `epoch` (the stream's epochs so far plus one: a
    /// decision made on an older state is skipped), starting from its log's first `start`
    /// offsets; what a member holds past them from earlier epochs was never committed.
    SetStreamLeader {
        vhost: String,
        name: String,
        epoch: u64,
        leader: String,
        start: u64,
    },
    /// Deletes a queue with its messages. `if-unused` and `if-empty` are checked where the
    /// deletion is made (on the queue's home node), before it is proposed: consumers and
    /// message counts are not replicated state.
    DeleteQueue {
        vhost: String,
        name: String,
    },
    /// Binds `destination` to the exchange `source`. With `skip_missing`, a missing end is
    /// not an error but [`Outcome::Skipped`] (definitions files may keep bindings of objects
    /// they leave out).
    Bind {
        vhost: String,
        source: String,
        destination: String,
        destination_kind: DestinationKind,
        routing_key: String,
        arguments: Arguments,
        skip_missing: bool,
    },
    Unbind {
        vhost: String,
        source: String,
        destination: String,
        destination_kind: DestinationKind,
        routing_key: String,
        arguments: Arguments,
    },
    SetClusterName {
        name: String,
    },
    /// Several commands applied in order as one log entry (definitions imports); each has
    /// its own outcome.
    Batch {
        commands: Vec<MetadataCommand>,
    },
}

impl MetadataCommand {
    /// A short description for logs and errors.
    pub fn describe(&self) -> String {
        use MetadataCommand as C;
        match self {
            C::PutVhost { name, .. } => format!("put vhost '{name}'"),
            C::DeleteVhost { name } => format!("delete vhost '{name}'"),
            C::PutUser { name, .. } => format!("put user '{name}'"),
            C::DeleteUser { name } => format!("delete user '{name}'"),
            C::SetPermission { user, vhost, .. } => {
                format!("set permission of '{user}' on vhost '{vhost}'")
            }
            C::ClearPermission { user, vhost } => {
                format!("clear permission of '{user}' on vhost '{vhost}'")
            }
            C::SetTopicPermission { user, vhost, .. } => {
                format!("set topic permission of '{user}' on vhost '{vhost}'")
            }
            C::ClearTopicPermission { user, vhost, .. } => {
                format!("clear topic permissions of '{user}' on vhost '{vhost}'")
            }
            C::SetPolicy { vhost, name, .. } => format!("set policy '{name}' in vhost '{vhost}'"),
            C::ClearPolicy { vhost, name } => format!("clear policy '{name}' in vhost '{vhost}'"),
            C::SetVhostLimits { vhost, .. } => format!("set limits of vhost '{vhost}'"),
            C::DeclareExchange { vhost, name, .. } => {
                format!("declare exchange '{name}' in vhost '{vhost}'")
            }
            C::DeleteExchange { vhost, name, .. } => {
                format!("delete exchange '{name}' in vhost '{vhost}'")
            }
            C::DeclareQueue { vhost, name, .. } => {
                format!("declare queue '{name}' in vhost '{vhost}'")
            }
            C::DeleteQueue { vhost, name, .. } => {
                format!("delete queue '{name}' in vhost '{vhost}'")
            }
            C::SetQueueMembers { vhost, name, .. } => {
                format!("set the members of queue '{name}' in vhost '{vhost}'")
            }
            C::SetStreamLeader {
                vhost,
                name,
                leader,
                epoch,
                ..
            } => format!("make '{leader}' lead stream '{name}' in vhost '{vhost}' (epoch {epoch})"),
            C::Bind {
                vhost,
                source,
                destination,
                ..
            } => format!("bind '{destination}' to '{source}' in vhost '{vhost}'"),
            C::Unbind {
                vhost,
                source,
                destination,
                ..
            } => format!("unbind '{destination}' from '{source}' in vhost '{vhost}'"),
            C::SetClusterName { name } => format!("set cluster name '{name}'"),
            C::Batch { commands } => format!("batch of {} commands", commands.len()),
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done (or already so).
    Done,
    /// A create-or-update: whether the object is new.
    Created(bool),
    /// A removal: whether there was something to remove.
    Removed(bool),
    /// Nothing done, for the reason given (an import's binding of a missing object).
    Skipped(String),
    /// The outcomes of a [`MetadataCommand::Batch`], in order.
    Batch(Vec<Result<Outcome, CommandError>>),
}

impl Outcome {
    /// For a create-or-update: whether the object is new (false for anything else).
    pub fn created(&self) -> bool {
        matches!(self, Outcome::Created(true))
    }

    /// For a removal: whether something was removed (true for anything but `Removed(false)`).
    pub fn removed(&self) -> bool {
        !matches!(self, Outcome::Removed(false))
    }
}

/// Why a command was refused when it was applied. Every node refuses it the same way.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// The broker's own refusal, with its AMQP reply code (inequivalent arguments, …).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A permission names a vhost or a user that does not exist (RabbitMQ's wording).
    #[error("vhost_or_user_not_found")]
    VhostOrUserNotFound,
    /// The command's vhost does not exist.
    #[error("vhost '{0}' not found")]
    NoVhost(String),
    /// The command's input does not hold (a policy pattern that does not compile, …).
    #[error("{0}")]
    Invalid(String),
}
