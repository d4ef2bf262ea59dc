//! Broker errors, each carrying the AMQP reply code RabbitMQ would answer with and a reply text in
//! RabbitMQ's wording (clients and their test suites match on both).

use pier_wire::reply_code as rc;

/// What kind of object an error talks about, spelled as RabbitMQ spells it in reply texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Queue,
    Exchange,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Queue => "queue",
            ObjectKind::Exchange => "exchange",
        })
    }
}

/// An operation the broker refused. `reply_code()` says whether it closes the channel (soft,
/// 3xx/4xx) or the connection (hard, 5xx); `Display` is the reply text without the code name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BrokerError {
    #[error("no {kind} '{name}' in vhost '{vhost}'")]
    NotFound {
        kind: ObjectKind,
        name: String,
        vhost: String,
    },
    #[error("cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.")]
    ResourceLocked { name: String, vhost: String },
    #[error("inequivalent arg '{arg}' for {kind} '{name}' in vhost '{vhost}': received {received} but current is {current}")]
    Inequivalent {
        kind: ObjectKind,
        name: String,
        vhost: String,
        arg: String,
        received: String,
        current: String,
    },
    #[error("{kind} '{name}' in vhost '{vhost}' in use")]
    InUse {
        kind: ObjectKind,
        name: String,
        vhost: String,
    },
    #[error("queue '{name}' in vhost '{vhost}' not empty")]
    NotEmpty { name: String, vhost: String },
    #[error("{kind} name '{name}' contains reserved prefix 'amq.*'")]
    ReservedName { kind: ObjectKind, name: String },
    #[error("deletion of system exchange '{name}' in vhost '{vhost}' not allowed")]
    SystemExchangeDeletion { name: String, vhost: String },
    #[error("operation not permitted on the default exchange")]
    DefaultExchange,
    #[error("cannot publish to internal exchange '{name}' in vhost '{vhost}'")]
    InternalExchange { name: String, vhost: String },
    #[error("queue '{name}' in vhost '{vhost}' in exclusive use")]
    ExclusiveConsumer { name: String, vhost: String },
    #[error("unknown exchange type '{0}'")]
    UnknownExchangeType(String),
    #[error("invalid arg '{arg}' for {kind} '{name}' in vhost '{vhost}': {reason}")]
    InvalidArgument {
        kind: ObjectKind,
        name: String,
        vhost: String,
        arg: String,
        reason: String,
    },
    #[error("{0}")]
    NotImplemented(String),
    #[error("vhost {0} not found")]
    VhostNotFound(String),
    #[error("access to vhost '{vhost}' refused for user '{user}'")]
    VhostAccessRefused { vhost: String, user: String },
    #[error("access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached")]
    VhostConnectionLimit {
        vhost: String,
        user: String,
        limit: u64,
    },
    /// A permission check failed (the default exchange is named `amq.default` here).
    #[error("access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'")]
    AccessRefused {
        kind: ObjectKind,
        name: String,
        vhost: String,
        user: String,
    },
    /// A topic permission check failed: the routing key is not covered by the user's
    /// write (publish) or read (bind) pattern for the topic exchange. RabbitMQ 3.10's text
    /// does not say which of the two was refused.
    #[error("access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'")]
    TopicAccessRefused {
        access: crate::Access,
        routing_key: String,
        exchange: String,
        vhost: String,
        user: String,
    },
    #[error("{0}")]
    PreconditionFailed(String),
    /// A durable declaration could not be stored (disk full, I/O error). Refused rather than
    /// kept in memory only, where it would vanish at the next restart together with the
    /// messages confirmed into it.
    #[error("cannot store {what}: {reason}")]
    Storage { what: String, reason: String },
    /// A durable queue whose home node is down or cut off (RabbitMQ 3.10's `absent` queue,
    /// reason `nodedown`): its operations fail until that node is back.
    #[error(
        "home node '{node}' of durable queue '{name}' in vhost '{vhost}' is down or inaccessible"
    )]
    HomeNodeDown {
        node: String,
        name: String,
        vhost: String,
    },
    /// A queue on another node answered with an error the cluster carried back (reply code
    /// and text as the home node gave them).
    #[error("{text}")]
    Remote { code: u16, text: String },
    /// A deprecated feature the configuration does not permit (RabbitMQ's warning text;
    /// see `deprecated.rs`).
    #[error("{0}")]
    Deprecated(String),
}

impl BrokerError {
    pub fn reply_code(&self) -> u16 {
        match self {
            BrokerError::NotFound { .. } | BrokerError::HomeNodeDown { .. } => rc::NOT_FOUND,
            BrokerError::Remote { code, .. } => *code,
            BrokerError::ResourceLocked { .. } => rc::RESOURCE_LOCKED,
            BrokerError::Inequivalent { .. }
            | BrokerError::InUse { .. }
            | BrokerError::NotEmpty { .. }
            | BrokerError::InvalidArgument { .. }
            | BrokerError::PreconditionFailed(_) => rc::PRECONDITION_FAILED,
            BrokerError::ReservedName { .. }
            | BrokerError::DefaultExchange
            | BrokerError::SystemExchangeDeletion { .. }
            | BrokerError::InternalExchange { .. }
            | BrokerError::ExclusiveConsumer { .. }
            | BrokerError::AccessRefused { .. }
            | BrokerError::TopicAccessRefused { .. } => rc::ACCESS_REFUSED,
            BrokerError::UnknownExchangeType(_) => rc::COMMAND_INVALID,
            // 506 resource-error (a connection error in the spec): out of disk, or the disk fails.
            BrokerError::Storage { .. } => rc::RESOURCE_ERROR,
            BrokerError::NotImplemented(_) => rc::NOT_IMPLEMENTED,
            BrokerError::Deprecated(_) => rc::INTERNAL_ERROR,
            BrokerError::VhostNotFound(_)
            | BrokerError::VhostAccessRefused { .. }
            | BrokerError::VhostConnectionLimit { .. } => rc::NOT_ALLOWED,
        }
    }

    /// The full reply text as RabbitMQ writes it: `"NOT_FOUND - no queue 'q' in vhost '/'"`.
    pub fn reply_text(&self) -> String {
        format!("{} - {}", rc::name(self.reply_code()), self)
    }

    pub(crate) fn not_found(kind: ObjectKind, name: &str, vhost: &str) -> Self {
        BrokerError::NotFound {
            kind,
            name: name.to_owned(),
            vhost: vhost.to_owned(),
        }
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
