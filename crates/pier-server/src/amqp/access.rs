//! Permission checks for one connection, with RabbitMQ's rules: configure / write / read
//! regular expressions per user per vhost, searched for (not anchored) in the resource name,
//! the default exchange named `amq.default`. The compiled permission is cached per connection
//! and refreshed when the broker's permissions change (one atomic load per check).
//!
//! ```text
//!  channel handler ─ check(kind, name, access) ─► CompiledPermission::allows ─► Ok | 403
//!                                                  ▲ refreshed when Broker::permissions_version moves
//!  publish / bind   ─ check_topic(exchange, key)  ─► TopicPermissions::get(exchange)
//!                      (none: allowed, no lookup)     └► topic exchange? ─► write/read regex ─► Ok | 403
//! ```
//!
//! Topic permissions (RabbitMQ's topic authorisation) are cached the same way. A user with
//! none on the vhost, the usual case, pays one `Option` test per publish.

use std::net::SocketAddr;
use std::sync::Arc;

use pier_broker::{
    Access, Broker, BrokerError, CompiledPermission, ConnectionSlot, ObjectKind, TopicPermissions,
};

use super::error::AmqpException;

/// RabbitMQ checks permissions on the default exchange under this name.
pub(crate) const DEFAULT_EXCHANGE_NAME: &str = "amq.default";

pub(crate) struct AccessControl {
    broker: Arc<Broker>,
    user: String,
    vhost: String,
    peer: SocketAddr,
    version: u64,
    /// None: the user has no permission on the vhost (any more): everything is refused.
    compiled: Option<Arc<CompiledPermission>>,
    /// The user's topic permissions on the vhost; None when there are none.
    topic: Option<Arc<TopicPermissions>>,
    /// The last exchange a publish was allowed to (publishes repeat the same few names).
    publish_ok: Option<pier_wire::ShortString>,
    /// This connection's place in its vhost's `max-connections`, held while it lives.
    _slot: Option<ConnectionSlot>,
}

impl AccessControl {
    pub fn new(
        broker: Arc<Broker>,
        user: &str,
        vhost: &str,
        peer: SocketAddr,
        slot: Option<ConnectionSlot>,
    ) -> Self {
        let (version, compiled) = broker.compiled_permission(user, vhost);
        // Read after the version: a change in between only causes one more refresh.
        let (_, topic) = broker.compiled_topic_permissions(user, vhost);
        AccessControl {
            broker,
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            peer,
            version,
            compiled,
            topic,
            publish_ok: None,
            _slot: slot,
        }
    }

    /// Picks up permission changes made since the last check.
    pub fn refresh(&mut self) {
        if self.broker.permissions_version() != self.version {
            let (version, compiled) = self.broker.compiled_permission(&self.user, &self.vhost);
            let (_, topic) = self
                .broker
                .compiled_topic_permissions(&self.user, &self.vhost);
            self.version = version;
            self.compiled = compiled;
            self.topic = topic;
            self.publish_ok = None;
        }
    }

    /// Checks `access` to the exchange or queue `name`.
    pub fn check(
        &mut self,
        kind: ObjectKind,
        name: &str,
        access: Access,
    ) -> Result<(), AmqpException> {
        self.refresh();
        Ok(self.check_current(kind, name, access)?)
    }

    /// Like `check`, without looking for permission changes first (for use under broker
    /// locks; call `refresh` before taking them). Returns the broker's error type, as the
    /// broker's `Authorize` callbacks do.
    #[allow(clippy::result_large_err)]
    pub fn check_current(
        &self,
        kind: ObjectKind,
        name: &str,
        access: Access,
    ) -> Result<(), BrokerError> {
        let name = match (kind, name) {
            (ObjectKind::Exchange, "") => DEFAULT_EXCHANGE_NAME,
            (_, n) => n,
        };
        if self
            .compiled
            .as_ref()
            .is_some_and(|p| p.allows(access, name))
        {
            return Ok(());
        }
        tracing::warn!(
            peer = %self.peer,
            user = %self.user,
            vhost = %self.vhost,
            "access refused: {access} access to {kind} '{name}'"
        );
        Err(BrokerError::AccessRefused {
            kind,
            name: name.to_owned(),
            vhost: self.vhost.clone(),
            user: self.user.clone(),
        })
    }

    /// Write access to the exchange a message is published to, remembering the last exchange
    /// that was allowed.
    pub fn check_publish(
        &mut self,
        exchange: &pier_wire::ShortString,
    ) -> Result<(), AmqpException> {
        self.refresh();
        if self.publish_ok.as_ref() == Some(exchange) {
            return Ok(());
        }
        self.check_current(ObjectKind::Exchange, exchange, Access::Write)?;
        self.publish_ok = Some(exchange.clone());
        Ok(())
    }
}

impl AccessControl {
    /// Topic authorisation: `access` (write to publish, read to bind) to `routing_key` on
    /// `exchange`. Allowed without any lookup when the user has no topic permission for that
    /// exchange name; otherwise `is_topic` says whether the exchange exists and is a topic
    /// exchange (other types are never checked, as in RabbitMQ). No allocation unless refused.
    pub fn check_topic(
        &mut self,
        exchange: &str,
        routing_key: &str,
        access: Access,
        is_topic: impl FnOnce() -> bool,
    ) -> Result<(), AmqpException> {
        self.refresh();
        let Some(p) = self.topic.as_ref().and_then(|t| t.get(exchange)) else {
            return Ok(());
        };
        if p.allows(access, routing_key) || !is_topic() {
            return Ok(());
        }
        tracing::warn!(
            peer = %self.peer,
            user = %self.user,
            vhost = %self.vhost,
            "access refused: {access} access to topic '{routing_key}' in exchange '{exchange}'"
        );
        Err(BrokerError::TopicAccessRefused {
            access,
            routing_key: routing_key.to_owned(),
            exchange: exchange.to_owned(),
            vhost: self.vhost.clone(),
            user: self.user.clone(),
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pier_broker::Permission;

    #[test]
    fn checks_follow_permission_changes() {
        let broker = Arc::new(Broker::with_defaults());
        broker.add_user("u", "pw", vec![]);
        broker.set_permission(
            "u",
            "/",
            Permission {
                configure: "^c\\.".into(),
                write: "".into(),
                read: ".*".into(),
            },
        );
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut ac = AccessControl::new(Arc::clone(&broker), "u", "/", peer, None);
        assert!(ac
            .check(ObjectKind::Queue, "c.q", Access::Configure)
            .is_ok());
        let e = ac
            .check(ObjectKind::Queue, "q", Access::Configure)
            .unwrap_err();
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'u'"
        );
        let e = ac.check_publish(&"".into()).unwrap_err();
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'u'"
        );
        broker.set_permission("u", "/", Permission::full());
        assert!(ac.check_publish(&"".into()).is_ok());
        assert!(ac.check_publish(&"".into()).is_ok());
        broker.clear_permission("u", "/");
        assert!(ac.check_publish(&"".into()).is_err());
        assert!(ac.check(ObjectKind::Queue, "c.q", Access::Read).is_err());
    }

    #[test]
    fn topic_checks_follow_topic_permission_changes() {
        let broker = Arc::new(Broker::with_defaults());
        broker.add_user("u", "pw", vec![]);
        broker.set_permission("u", "/", Permission::full());
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut ac = AccessControl::new(Arc::clone(&broker), "u", "/", peer, None);
        let topic = || true;
        // No topic permission: allowed, and the exchange is not even looked up.
        assert!(ac
            .check_topic("t", "any.key", Access::Write, || unreachable!())
            .is_ok());
        broker.set_topic_permission(
            "u",
            "/",
            pier_broker::TopicPermission {
                exchange: "t".into(),
                write: "^{username}\\.".into(),
                read: "^r$".into(),
            },
        );
        assert!(ac.check_topic("t", "u.a", Access::Write, topic).is_ok());
        let e = ac
            .check_topic("t", "x.a", Access::Write, topic)
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to topic 'x.a' in exchange 't' in vhost '/' refused for user 'u'"
        );
        let e = ac.check_topic("t", "u.a", Access::Read, topic).unwrap_err();
        assert!(e.text.starts_with("ACCESS_REFUSED - access to topic 'u.a'"));
        // Not a topic exchange (or none at all): not checked.
        assert!(ac.check_topic("t", "x.a", Access::Write, || false).is_ok());
        // Another exchange: not restricted.
        assert!(ac.check_topic("t2", "x.a", Access::Write, topic).is_ok());
        broker.clear_topic_permission("u", "/", None);
        assert!(ac.check_topic("t", "x.a", Access::Write, topic).is_ok());
    }
}
