//! A virtual host: its exchanges, queues and the bindings between them, with RabbitMQ's rules for
//! declaring, binding, deleting and routing.
//!
//! The topology sits behind one `RwLock`: publishers route under the read lock (many at once),
//! declarations and deletions take the write lock. Queues have their own locks, taken only after
//! the topology lock is released, so publishing into a queue never blocks topology changes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use pier_wire::{FieldTable, FieldValue, ShortString};

use crate::consumer::ConnectionId;
use crate::error::{BrokerError, ObjectKind, Result};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::matching::{values_equal, HeadersMatch};
use crate::names;
use crate::queue::{Queue, QueueOptions};

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
struct Topology {
    exchanges: HashMap<ShortString, Exchange>,
    queues: HashMap<ShortString, Arc<Queue>>,
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

#[derive(Debug)]
pub struct VHost {
    name: String,
    topology: RwLock<Topology>,
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
        Arc::new(VHost {
            name: name.into(),
            topology: RwLock::new(t),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    // Poisoning only follows a panic elsewhere; every mutation below leaves the maps consistent
    // between statements, so carry on rather than take the vhost down.
    fn read(&self) -> RwLockReadGuard<'_, Topology> {
        self.topology.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Topology> {
        self.topology.write().unwrap_or_else(|p| p.into_inner())
    }

    fn not_found(&self, kind: ObjectKind, name: &str) -> BrokerError {
        BrokerError::not_found(kind, name, &self.name)
    }

    // ---- exchanges ----

    pub fn declare_exchange(&self, d: &ExchangeDeclare) -> Result<()> {
        let kind = if d.passive {
            None
        } else {
            Some(
                ExchangeKind::parse(&d.kind)
                    .ok_or_else(|| BrokerError::UnknownExchangeType(d.kind.clone()))?,
            )
        };
        if d.name.is_empty() {
            return Err(BrokerError::DefaultExchange);
        }
        let mut t = self.write();
        if let Some(x) = t.exchanges.get(&d.name) {
            let Some(kind) = kind else { return Ok(()) };
            return self.exchange_equivalent(x, kind, d);
        }
        let Some(kind) = kind else {
            return Err(self.not_found(ObjectKind::Exchange, &d.name));
        };
        names::check_not_reserved(ObjectKind::Exchange, &d.name)?;
        t.exchanges.insert(
            d.name.clone(),
            Exchange::new(
                d.name.clone(),
                kind,
                d.durable,
                d.auto_delete,
                d.internal,
                d.arguments.clone(),
            ),
        );
        Ok(())
    }

    fn exchange_equivalent(
        &self,
        x: &Exchange,
        kind: ExchangeKind,
        d: &ExchangeDeclare,
    ) -> Result<()> {
        let mismatch = |arg: &str, received: String, current: String| BrokerError::Inequivalent {
            kind: ObjectKind::Exchange,
            name: d.name.to_string(),
            vhost: self.name.clone(),
            arg: arg.to_owned(),
            received,
            current,
        };
        if x.kind != kind {
            return Err(mismatch(
                "type",
                format!("'{}'", kind.as_str()),
                format!("'{}'", x.kind.as_str()),
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
        compare_args(&["alternate-exchange"], &d.arguments, &x.arguments)
            .map_err(|(arg, received, current)| mismatch(&arg, received, current))
    }

    pub fn exchange_exists(&self, name: &str) -> bool {
        self.read().exchanges.contains_key(name)
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
        t.exchanges.remove(&key);
        let dest = Destination::Exchange(key);
        let sources = remove_bindings_to(&mut t, &dest);
        delete_unused_auto_delete(&mut t, sources);
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
        let mut t = self.write();
        let dest_name = t
            .exchanges
            .get_key_value(destination)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| self.not_found(ObjectKind::Exchange, destination))?;
        self.add_binding(
            &mut t,
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
        let mut t = self.write();
        if !t.exchanges.contains_key(destination) {
            return Err(self.not_found(ObjectKind::Exchange, destination));
        }
        self.remove_binding(
            &mut t,
            source,
            Destination::Exchange(ShortString::from(destination)),
            routing_key,
            arguments,
        )
    }

    fn add_binding(
        &self,
        t: &mut Topology,
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
        x.bind(Binding {
            destination,
            routing_key,
            arguments,
        });
        Ok(())
    }

    fn remove_binding(
        &self,
        t: &mut Topology,
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
        // Unbinding what is not bound is a no-op, as in RabbitMQ.
        x.unbind(&Binding {
            destination,
            routing_key,
            arguments,
        });
        let name = x.name.clone();
        delete_unused_auto_delete(t, vec![name]);
        Ok(())
    }

    // ---- queues ----

    pub fn declare_queue(&self, d: &QueueDeclare) -> Result<QueueDeclared> {
        let mut t = self.write();
        let name = if d.name.is_empty() && !d.passive {
            loop {
                let candidate = names::generated_queue_name();
                if !t.queues.contains_key(&candidate) {
                    break candidate;
                }
            }
        } else {
            d.name.clone()
        };
        if let Some(q) = t.queues.get(&name) {
            q.check_access(d.connection)?;
            if !d.passive {
                self.queue_equivalent(q, d)?;
            }
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
        self.validate_queue_args(&name, &d.arguments)?;
        let queue = Queue::new(
            name.clone(),
            self.name.clone(),
            QueueOptions {
                durable: d.durable,
                exclusive_owner: d.exclusive.then_some(d.connection),
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
            },
        );
        t.queues.insert(name, Arc::clone(&queue));
        Ok(QueueDeclared {
            queue,
            message_count: 0,
            consumer_count: 0,
            created: true,
        })
    }

    fn validate_queue_args(&self, name: &str, args: &FieldTable) -> Result<()> {
        let invalid = |arg: &str, reason: String| BrokerError::InvalidArgument {
            kind: ObjectKind::Queue,
            name: name.to_owned(),
            vhost: self.name.clone(),
            arg: arg.to_owned(),
            reason,
        };
        if let Some(v) = args.get("x-queue-type") {
            match v.as_str() {
                Some("classic") => {}
                Some(t @ ("quorum" | "stream")) => {
                    return Err(BrokerError::NotImplemented(format!(
                        "queue type '{t}' is not supported by Pier yet (queue '{name}' in vhost '{}')",
                        self.name
                    )))
                }
                _ => return Err(invalid("x-queue-type", format!("unsupported queue type {v:?}"))),
            }
        }
        for key in [
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-priority",
        ] {
            if let Some(v) = args.get(key) {
                match v.as_i64() {
                    Some(n) if n >= 0 => {}
                    _ => {
                        return Err(invalid(
                            key,
                            format!("expected a non-negative integer, got {v:?}"),
                        ))
                    }
                }
            }
        }
        Ok(())
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
            .map_err(|(arg, received, current)| mismatch(&arg, received, current))
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
        let mut t = self.write();
        let q = t
            .queues
            .get(queue)
            .ok_or_else(|| self.not_found(ObjectKind::Queue, queue))?;
        q.check_access(connection)?;
        let qname = q.name().clone();
        if exchange.is_empty() {
            return Err(BrokerError::DefaultExchange);
        }
        self.add_binding(
            &mut t,
            exchange,
            Destination::Queue(qname),
            routing_key,
            arguments,
        )
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: ShortString,
        arguments: FieldTable,
        connection: ConnectionId,
    ) -> Result<()> {
        let mut t = self.write();
        let q = t
            .queues
            .get(queue)
            .ok_or_else(|| self.not_found(ObjectKind::Queue, queue))?;
        q.check_access(connection)?;
        let qname = q.name().clone();
        if exchange.is_empty() {
            return Err(BrokerError::DefaultExchange);
        }
        self.remove_binding(
            &mut t,
            exchange,
            Destination::Queue(qname),
            routing_key,
            arguments,
        )
    }

    pub fn purge_queue(&self, name: &str, connection: ConnectionId) -> Result<u32> {
        Ok(self.queue(name, connection)?.purge())
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
            let sources = remove_bindings_to(&mut t, &Destination::Queue(q.name().clone()));
            delete_unused_auto_delete(&mut t, sources);
        }
        let (count, consumers) = q.mark_deleted();
        for c in consumers {
            c.sink.cancelled(&c.tag);
        }
        count
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
    /// once however many paths lead there. 404 for a missing exchange, 403 for an internal one.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<()> {
        let t = self.read();
        if exchange.is_empty() {
            if let Some(q) = t.queues.get(routing_key) {
                out.push(Arc::clone(q));
            }
            return Ok(());
        }
        let x = t
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.not_found(ObjectKind::Exchange, exchange))?;
        if x.internal {
            return Err(BrokerError::InternalExchange {
                name: exchange.to_owned(),
                vhost: self.name.clone(),
            });
        }
        let mut visited: Vec<&ShortString> = vec![&x.name];
        let mut pending: Vec<&Exchange> = vec![x];
        let mut queue_names: Vec<&ShortString> = Vec::new();
        while let Some(x) = pending.pop() {
            x.route(routing_key, headers, |d| match d {
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
            });
        }
        out.extend(
            queue_names
                .into_iter()
                .filter_map(|n| t.queues.get(n).cloned()),
        );
        Ok(())
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
/// exchange-to-exchange bindings).
fn delete_unused_auto_delete(t: &mut Topology, mut candidates: Vec<ShortString>) {
    while let Some(name) = candidates.pop() {
        let unused = t
            .exchanges
            .get(&name)
            .is_some_and(|x| x.auto_delete && !x.has_bindings());
        if unused {
            t.exchanges.remove(&name);
            candidates.extend(remove_bindings_to(t, &Destination::Exchange(name)));
        }
    }
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
