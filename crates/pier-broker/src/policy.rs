//! Policies: queue and exchange settings applied by name pattern rather than by declaration
//! arguments (RabbitMQ's `rabbitmqctl set_policy`). They come from the config file (applied at
//! every start, never stored) and from the management API or a definitions import through the
//! same [`VHost::set_policy`]; once the vhost has storage those are written through to the
//! definitions store and re-applied at start before queues are recovered. A config-file
//! policy wins over a stored one of the same name (see `BrokerStorage::recover`).
//!
//! As in RabbitMQ, at most one policy applies to an object: the matching one with the highest
//! priority. Where a queue argument and the policy both set something, RabbitMQ's rules pick:
//! the lower value for `message-ttl`, `expires`, `max-length` and `max-length-bytes`; the
//! argument for `overflow`, `dead-letter-exchange`, `dead-letter-routing-key`, `max-priority`
//! and `alternate-exchange`.
//!
//! As in RabbitMQ, a policy applies at once: when a queue is declared, and whenever policies
//! change, to every existing queue (`VHost::set_policy`: a lower length limit drops the
//! oldest messages at once; messages already queued keep their expiry) and exchange.
//!
//! [`VHost::set_policy`]: crate::vhost::VHost::set_policy

use pier_wire::{FieldTable, ShortString};
use regex::Regex;
use serde_json::{Map, Value};

use crate::args::{Overflow, QueueConfig, MAX_EXPIRY_MS};
use crate::error::ObjectKind;

/// Which objects a policy applies to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplyTo {
    #[default]
    All,
    Queues,
    Exchanges,
}

impl ApplyTo {
    pub fn parse(s: &str) -> Option<ApplyTo> {
        Some(match s {
            "all" => ApplyTo::All,
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
        }
    }

    fn covers(self, kind: ObjectKind) -> bool {
        matches!(
            (self, kind),
            (ApplyTo::All, _)
                | (ApplyTo::Queues, ObjectKind::Queue)
                | (ApplyTo::Exchanges, ObjectKind::Exchange)
        )
    }
}

/// The keys of a policy definition Pier understands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyDefinition {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Option<Overflow>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub alternate_exchange: Option<String>,
    /// Streams: `max-age` (RabbitMQ's `<int>Y|M|D|h|m|s`).
    pub max_age: Option<String>,
    /// Streams: `stream-max-segment-size-bytes`.
    pub stream_max_segment_size_bytes: Option<u64>,
    /// Quorum queues: `delivery-limit` (negative: no limit).
    pub delivery_limit: Option<i64>,
    /// Quorum queues: `dead-letter-strategy` (`at-most-once` or `at-least-once`).
    pub dead_letter_strategy: Option<String>,
    /// Quorum queues: `queue-leader-locator` (`client-local` or `balanced`; RabbitMQ 3.x's
    /// `random` and `least-leaders` mean `balanced`), read when a queue is declared.
    pub queue_leader_locator: Option<String>,
}

impl PolicyDefinition {
    /// RabbitMQ's limits on the values (the reason is shown to whoever set the policy).
    pub fn validate(&self) -> Result<(), String> {
        if self.message_ttl.is_some_and(|v| v > MAX_EXPIRY_MS) {
            return Err(format!("message-ttl must be at most {MAX_EXPIRY_MS}"));
        }
        match self.expires {
            Some(0) => return Err("expires must be greater than 0".to_owned()),
            Some(v) if v > MAX_EXPIRY_MS => {
                return Err(format!("expires must be at most {MAX_EXPIRY_MS}"))
            }
            _ => {}
        }
        Ok(())
    }
}

/// RabbitMQ's JSON form of definitions (management API, definitions files, the definitions
/// store), so that a policy set over HTTP can be stored and read back at start.
impl PolicyDefinition {
    /// A definition as RabbitMQ's JSON object (only the keys that are set).
    pub fn to_json(&self) -> Value {
        let d = self;
        let mut m = Map::new();
        let mut num = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), Value::from(v));
            }
        };
        num("message-ttl", d.message_ttl);
        num("expires", d.expires);
        num("max-length", d.max_length);
        num("max-length-bytes", d.max_length_bytes);
        num("max-priority", d.max_priority.map(u64::from));
        num(
            "stream-max-segment-size-bytes",
            d.stream_max_segment_size_bytes,
        );
        if let Some(n) = d.delivery_limit {
            m.insert("delivery-limit".to_owned(), Value::from(n));
        }
        if let Some(o) = d.overflow {
            m.insert("overflow".into(), Value::from(overflow_str(o)));
        }
        let mut text = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), Value::from(v.as_str()));
            }
        };
        text("dead-letter-exchange", &d.dead_letter_exchange);
        text("dead-letter-routing-key", &d.dead_letter_routing_key);
        text("alternate-exchange", &d.alternate_exchange);
        text("max-age", &d.max_age);
        text("dead-letter-strategy", &d.dead_letter_strategy);
        text("queue-leader-locator", &d.queue_leader_locator);
        Value::Object(m)
    }

    /// Parses a definition object. With `lenient`, keys Pier does not apply are ignored (the
    /// caller reports them); otherwise they are an error.
    pub fn from_json(def: &Map<String, Value>, lenient: bool) -> Result<PolicyDefinition, String> {
        if !lenient {
            let unknown = unknown_keys(def);
            if !unknown.is_empty() {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|k| format!("{{<<\"{k}\">>,{}}}", def.get(k).unwrap_or(&Value::Null)))
                    .collect();
                return Err(format!(
                    "Validation failed\n\n[{}] are not recognised policy settings (Pier applies \
                 message-ttl, expires, max-length, max-length-bytes, overflow, \
                 dead-letter-exchange, dead-letter-routing-key, max-priority, \
                 alternate-exchange, max-age, stream-max-segment-size-bytes, delivery-limit, \
                 dead-letter-strategy, queue-leader-locator)",
                    list.join(",")
                ));
            }
        }
        let num = |k: &str| -> Result<Option<u64>, String> {
            match def.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .map(Some)
                    .ok_or_else(|| format!("{k} must be a non-negative integer, not {v}")),
            }
        };
        let text = |k: &str| -> Result<Option<String>, String> {
            match def.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(format!("{k} must be a string, not {v}")),
            }
        };
        let overflow = match text("overflow")? {
            None => None,
            Some(s) => Some(Overflow::parse(&s).ok_or_else(|| {
                format!(
                    "overflow must be drop-head, reject-publish or reject-publish-dlx, not '{s}'"
                )
            })?),
        };
        let max_priority = match num("max-priority")? {
            None => None,
            Some(n) => Some(
                u8::try_from(n)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("max-priority must be between 1 and 255, not {n}"))?,
            ),
        };
        let d = PolicyDefinition {
            message_ttl: num("message-ttl")?,
            expires: num("expires")?,
            max_length: num("max-length")?,
            max_length_bytes: num("max-length-bytes")?,
            overflow,
            dead_letter_exchange: text("dead-letter-exchange")?,
            dead_letter_routing_key: text("dead-letter-routing-key")?,
            max_priority,
            alternate_exchange: text("alternate-exchange")?,
            stream_max_segment_size_bytes: num("stream-max-segment-size-bytes")?,
            delivery_limit: match def.get("delivery-limit") {
                None => None,
                Some(v) => Some(
                    v.as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        .ok_or_else(|| format!("delivery-limit must be an integer, not {v}"))?,
                ),
            },
            max_age: match text("max-age")? {
                None => None,
                Some(a) if crate::args::parse_max_age(&a).is_some_and(|ms| ms > 0) => Some(a),
                Some(a) => return Err(format!("max-age must be <integer>Y|M|D|h|m|s, not '{a}'")),
            },
            dead_letter_strategy: match text("dead-letter-strategy")? {
                None => None,
                Some(s) if matches!(s.as_str(), "at-most-once" | "at-least-once") => Some(s),
                Some(s) => {
                    return Err(format!(
                        "dead-letter-strategy must be at-most-once or at-least-once, not '{s}'"
                    ))
                }
            },
            queue_leader_locator: match text("queue-leader-locator")? {
                None => None,
                Some(s)
                    if matches!(
                        s.as_str(),
                        "client-local" | "balanced" | "random" | "least-leaders"
                    ) =>
                {
                    Some(s)
                }
                Some(s) => {
                    return Err(format!(
                        "queue-leader-locator must be client-local or balanced, not '{s}'"
                    ))
                }
            },
        };
        d.validate()?;
        Ok(d)
    }
}

pub fn overflow_str(o: Overflow) -> &'static str {
    match o {
        Overflow::DropHead => "drop-head",
        Overflow::RejectPublish => "reject-publish",
        Overflow::RejectPublishDlx => "reject-publish-dlx",
    }
}

/// The keys of a definition object Pier does not apply.
pub fn unknown_keys(def: &Map<String, Value>) -> Vec<String> {
    const KNOWN: [&str; 14] = [
        "dead-letter-strategy",
        "queue-leader-locator",
        "max-age",
        "stream-max-segment-size-bytes",
        "delivery-limit",
        "message-ttl",
        "expires",
        "max-length",
        "max-length-bytes",
        "overflow",
        "dead-letter-exchange",
        "dead-letter-routing-key",
        "max-priority",
        "alternate-exchange",
    ];
    def.keys()
        .filter(|k| !KNOWN.contains(&k.as_str()))
        .cloned()
        .collect()
}

/// One policy of a vhost.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pattern: Regex,
    pub apply_to: ApplyTo,
    pub priority: i32,
    pub definition: PolicyDefinition,
}

impl Policy {
    /// Compiles the pattern (a regular expression matched anywhere in the name, as RabbitMQ's:
    /// anchor it with `^`/`$`) and validates the definition.
    pub fn new(
        name: impl Into<String>,
        pattern: &str,
        apply_to: ApplyTo,
        priority: i32,
        definition: PolicyDefinition,
    ) -> Result<Policy, String> {
        let pattern =
            Regex::new(pattern).map_err(|e| format!("invalid pattern '{pattern}': {e}"))?;
        definition.validate()?;
        Ok(Policy {
            name: name.into(),
            pattern,
            apply_to,
            priority,
            definition,
        })
    }

    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
    }

    pub fn matches(&self, kind: ObjectKind, name: &str) -> bool {
        self.apply_to.covers(kind) && self.pattern.is_match(name)
    }
}

/// The policy in force for an object: the highest priority match (ties: the first by name).
pub(crate) fn effective<'a>(
    policies: &'a [Policy],
    kind: ObjectKind,
    name: &str,
) -> Option<&'a Policy> {
    policies
        .iter()
        .filter(|p| p.matches(kind, name))
        .min_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        })
}

fn lower(arg: Option<u64>, policy: Option<u64>) -> Option<u64> {
    match (arg, policy) {
        (Some(a), Some(p)) => Some(a.min(p)),
        (a, p) => a.or(p),
    }
}

impl QueueConfig {
    /// Merges a policy into settings resolved from `arguments`, with RabbitMQ's precedence.
    pub(crate) fn apply_policy(&mut self, def: &PolicyDefinition, arguments: &FieldTable) {
        // RabbitMQ's quorum queues: the argument wins over the policy.
        if !arguments.contains_key("x-dead-letter-strategy") {
            if let Some(s) = &def.dead_letter_strategy {
                self.dead_letter_strategy = Some(s.clone());
            }
        }
        self.message_ttl = lower(self.message_ttl, def.message_ttl);
        self.expires = lower(self.expires, def.expires);
        self.max_length = lower(self.max_length, def.max_length);
        self.max_length_bytes = lower(self.max_length_bytes, def.max_length_bytes);
        if !arguments.contains_key("x-overflow") {
            if let Some(o) = def.overflow {
                self.overflow = o;
            }
        }
        if self.dead_letter_exchange.is_none() {
            self.dead_letter_exchange = def.dead_letter_exchange.as_deref().map(ShortString::from);
        }
        if self.dead_letter_routing_key.is_none() {
            self.dead_letter_routing_key = def
                .dead_letter_routing_key
                .as_deref()
                .map(ShortString::from);
        }
        if self.max_priority.is_none() {
            self.max_priority = def.max_priority;
        }
        // RabbitMQ's resolve_delivery_limit: the lower of the two, unless one turns the limit
        // off (negative), then the higher.
        self.delivery_limit = match (self.delivery_limit, def.delivery_limit) {
            (Some(a), Some(p)) if a < 0 || p < 0 => Some(a.max(p)),
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pier_wire::FieldValue;

    fn policy(name: &str, pattern: &str, apply_to: ApplyTo, priority: i32) -> Policy {
        Policy::new(
            name,
            pattern,
            apply_to,
            priority,
            PolicyDefinition::default(),
        )
        .unwrap()
    }

    #[test]
    fn highest_priority_match_wins() {
        let ps = vec![
            policy("low", "^orders", ApplyTo::All, 0),
            policy("high", "^orders\\.eu", ApplyTo::Queues, 5),
            policy("exchanges-only", ".*", ApplyTo::Exchanges, 9),
        ];
        let q = |n| effective(&ps, ObjectKind::Queue, n).map(|p| p.name.as_str());
        assert_eq!(q("orders.eu.1"), Some("high"));
        assert_eq!(q("orders.us"), Some("low"));
        assert_eq!(q("payments"), None);
        assert_eq!(
            effective(&ps, ObjectKind::Exchange, "orders.eu").map(|p| p.name.as_str()),
            Some("exchanges-only")
        );
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert!(Policy::new("p", "(", ApplyTo::All, 0, PolicyDefinition::default()).is_err());
        let zero_expires = PolicyDefinition {
            expires: Some(0),
            ..PolicyDefinition::default()
        };
        assert!(Policy::new("p", ".*", ApplyTo::All, 0, zero_expires).is_err());
    }

    #[test]
    fn arguments_and_policy_combine_as_in_rabbitmq() {
        let mut args = FieldTable::new();
        args.insert("x-message-ttl", FieldValue::LongInt(5000));
        args.insert("x-overflow", FieldValue::LongString("drop-head".into()));
        args.insert(
            "x-dead-letter-exchange",
            FieldValue::LongString("arg-dlx".into()),
        );
        let mut c = QueueConfig {
            message_ttl: Some(5000),
            max_length: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: Some("arg-dlx".into()),
            ..QueueConfig::default()
        };
        c.apply_policy(
            &PolicyDefinition {
                message_ttl: Some(100),
                max_length: Some(7),
                overflow: Some(Overflow::RejectPublish),
                dead_letter_exchange: Some("policy-dlx".into()),
                dead_letter_routing_key: Some("policy-key".into()),
                max_priority: Some(4),
                ..PolicyDefinition::default()
            },
            &args,
        );
        assert_eq!(c.message_ttl, Some(100), "the lower TTL");
        assert_eq!(c.max_length, Some(7));
        assert_eq!(c.overflow, Overflow::DropHead, "the argument");
        assert_eq!(c.dead_letter_exchange.as_deref(), Some("arg-dlx"));
        assert_eq!(c.dead_letter_routing_key.as_deref(), Some("policy-key"));
        assert_eq!(c.max_priority, Some(4));
    }

    /// Quorum queues' policy keys: `dead-letter-strategy` (the argument wins) and
    /// `queue-leader-locator`, with RabbitMQ's values; anything else is refused.
    #[test]
    fn quorum_policy_keys() {
        let obj = |v: Value| v.as_object().cloned().unwrap();
        let d = PolicyDefinition::from_json(
            &obj(serde_json::json!({
                "dead-letter-strategy": "at-least-once",
                "queue-leader-locator": "balanced"
            })),
            false,
        )
        .unwrap();
        assert_eq!(d.dead_letter_strategy.as_deref(), Some("at-least-once"));
        assert_eq!(d.queue_leader_locator.as_deref(), Some("balanced"));
        assert_eq!(
            PolicyDefinition::from_json(d.to_json().as_object().unwrap(), false).unwrap(),
            d
        );
        for bad in [
            serde_json::json!({"dead-letter-strategy": "twice"}),
            serde_json::json!({"queue-leader-locator": "nearest"}),
        ] {
            assert!(PolicyDefinition::from_json(&obj(bad), false).is_err());
        }
        let mut c = QueueConfig::default();
        c.apply_policy(&d, &FieldTable::new());
        assert_eq!(c.dead_letter_strategy.as_deref(), Some("at-least-once"));
        let mut args = FieldTable::new();
        args.insert(
            "x-dead-letter-strategy",
            FieldValue::LongString("at-most-once".into()),
        );
        let mut c = QueueConfig {
            dead_letter_strategy: Some("at-most-once".into()),
            ..QueueConfig::default()
        };
        c.apply_policy(&d, &args);
        assert_eq!(c.dead_letter_strategy.as_deref(), Some("at-most-once"));
    }
}
