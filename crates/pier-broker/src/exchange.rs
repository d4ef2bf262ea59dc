//! Exchanges and the bindings that leave them.
//!
//! Each exchange owns its outgoing bindings plus an index chosen by its type: a hash map from
//! routing key for direct exchanges, pre-split patterns for topic exchanges, the argument tables
//! for headers exchanges. Routing returns destinations; following exchange-to-exchange bindings
//! and de-duplicating queues is the vhost's job.

use std::collections::HashMap;

use pier_wire::{FieldTable, ShortString};

use crate::matching::headers_match;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// The exchange type of the delayed message exchange (RabbitMQ's plugin of that name).
pub const DELAYED_TYPE: &str = "x-delayed-message";

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(ShortString),
    Exchange(ShortString),
}

impl Destination {
    pub fn name(&self) -> &ShortString {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: ShortString,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone)]
pub struct Exchange {
    pub name: ShortString,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// An `x-delayed-message` exchange: `kind` is its `x-delayed-type`, and messages with a
    /// positive `x-delay` header wait in the vhost before `kind` routes them.
    pub delayed: bool,
    /// The `alternate-exchange` of the policy in force (the argument wins over it).
    pub policy_alternate: Option<ShortString>,
    bindings: Vec<Binding>,
    direct_index: HashMap<ShortString, Vec<Destination>>,
    topic_index: crate::topic::TopicTrie,
}

impl Exchange {
    pub fn new(
        name: ShortString,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            delayed: false,
            policy_alternate: None,
            bindings: Vec::new(),
            direct_index: HashMap::new(),
            topic_index: crate::topic::TopicTrie::default(),
        }
    }

    /// The type as declared: `x-delayed-message` for delayed exchanges.
    pub fn type_name(&self) -> &'static str {
        if self.delayed {
            DELAYED_TYPE
        } else {
            self.kind.as_str()
        }
    }

    /// The `alternate-exchange` argument: where messages this exchange cannot route go.
    /// The argument wins over a policy's, as in RabbitMQ.
    pub fn alternate_exchange(&self) -> Option<&str> {
        match self.arguments.get("alternate-exchange") {
            Some(v) => v.as_str(),
            None => self.policy_alternate.as_deref(),
        }
    }

    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.is_empty()
    }

    /// Adds a binding; binding twice with the same key and arguments is a no-op, as in RabbitMQ.
    pub fn bind(&mut self, binding: Binding) -> bool {
        if self.bindings.contains(&binding) {
            return false;
        }
        if self.kind == ExchangeKind::Direct {
            self.direct_index
                .entry(binding.routing_key.clone())
                .or_default()
                .push(binding.destination.clone());
        }
        if self.kind == ExchangeKind::Topic {
            self.topic_index
                .insert(&binding.routing_key, binding.destination.clone());
        }
        self.bindings.push(binding);
        true
    }

    /// Removes a binding; false when there was none.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let Some(pos) = self.bindings.iter().position(|b| b == binding) else {
            return false;
        };
        self.bindings.remove(pos);
        if self.kind == ExchangeKind::Direct {
            self.remove_from_direct_index(&binding.routing_key, &binding.destination);
        }
        if self.kind == ExchangeKind::Topic {
            self.topic_index
                .remove(&binding.routing_key, &binding.destination);
        }
        true
    }

    /// Drops every binding to `destination`; returns how many went.
    pub fn unbind_destination(&mut self, destination: &Destination) -> usize {
        let before = self.bindings.len();
        let removed: Vec<Binding> = self
            .bindings
            .iter()
            .filter(|b| &b.destination == destination)
            .cloned()
            .collect();
        self.bindings.retain(|b| &b.destination != destination);
        if self.kind == ExchangeKind::Direct {
            for b in &removed {
                self.remove_from_direct_index(&b.routing_key, &b.destination);
            }
        }
        if self.kind == ExchangeKind::Topic {
            for b in &removed {
                self.topic_index.remove(&b.routing_key, &b.destination);
            }
        }
        before - self.bindings.len()
    }

    fn remove_from_direct_index(&mut self, key: &ShortString, destination: &Destination) {
        if let Some(list) = self.direct_index.get_mut(key) {
            // Only one entry per (key, destination, args); with differing args two bindings can
            // share key and destination, so remove a single occurrence.
            if let Some(i) = list.iter().position(|d| d == destination) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                self.direct_index.remove(key);
            }
        }
    }

    /// Calls `emit` for every destination a message with this key and headers is routed to.
    /// A destination may be emitted more than once; callers de-duplicate.
    pub fn route<'a>(
        &'a self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        mut emit: impl FnMut(&'a Destination),
    ) {
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(list) = self.direct_index.get(routing_key) {
                    list.iter().for_each(&mut emit);
                }
            }
            ExchangeKind::Fanout => self.bindings.iter().for_each(|b| emit(&b.destination)),
            ExchangeKind::Topic => self.topic_index.route(routing_key, &mut emit),
            ExchangeKind::Headers => {
                for b in &self.bindings {
                    if headers_match(&b.arguments, headers) {
                        emit(&b.destination);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> Destination {
        Destination::Queue(ShortString::from(name))
    }

    fn binding(dest: Destination, key: &str) -> Binding {
        Binding {
            destination: dest,
            routing_key: ShortString::from(key),
            arguments: FieldTable::new(),
        }
    }

    fn routed(x: &Exchange, key: &str) -> Vec<Destination> {
        let mut out = Vec::new();
        x.route(key, None, |d| out.push(d.clone()));
        out.sort();
        out
    }

    #[test]
    fn direct_routes_by_key_and_unbinds() {
        let mut x = Exchange::new(
            "d".into(),
            ExchangeKind::Direct,
            false,
            false,
            false,
            FieldTable::new(),
        );
        assert!(x.bind(binding(q("a"), "k")));
        assert!(!x.bind(binding(q("a"), "k")), "duplicate bind is a no-op");
        x.bind(binding(q("b"), "k"));
        x.bind(binding(q("c"), "other"));
        assert_eq!(routed(&x, "k"), vec![q("a"), q("b")]);
        assert!(x.unbind(&binding(q("a"), "k")));
        assert_eq!(routed(&x, "k"), vec![q("b")]);
        assert_eq!(x.unbind_destination(&q("b")), 1);
        assert!(routed(&x, "k").is_empty());
        assert_eq!(routed(&x, "other"), vec![q("c")]);
    }

    #[test]
    fn topic_and_fanout() {
        let mut t = Exchange::new(
            "t".into(),
            ExchangeKind::Topic,
            false,
            false,
            false,
            FieldTable::new(),
        );
        t.bind(binding(q("all"), "#"));
        t.bind(binding(q("orange"), "*.orange.*"));
        assert_eq!(
            routed(&t, "quick.orange.rabbit"),
            vec![q("all"), q("orange")]
        );
        assert_eq!(routed(&t, ""), vec![q("all")]);
        let mut f = Exchange::new(
            "f".into(),
            ExchangeKind::Fanout,
            false,
            false,
            false,
            FieldTable::new(),
        );
        f.bind(binding(q("x"), "ignored"));
        assert_eq!(routed(&f, "anything"), vec![q("x")]);
    }
}
