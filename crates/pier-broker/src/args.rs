//! Queue arguments (`x-…`) with RabbitMQ's validation rules and reply texts, resolved into the
//! settings a queue runs with (optionally merged with a policy, see `policy.rs`).

use pier_wire::{FieldTable, FieldValue, ShortString};

use crate::error::{BrokerError, ObjectKind, Result};

/// The largest TTL / expiry RabbitMQ accepts (ten years, in milliseconds).
pub const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// What a full queue does with a new message (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest messages.
    #[default]
    DropHead,
    /// Refuse the new message (basic.nack in confirm mode).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

impl Overflow {
    pub fn parse(s: &str) -> Option<Overflow> {
        Some(match s {
            "drop-head" => Overflow::DropHead,
            "reject-publish" => Overflow::RejectPublish,
            "reject-publish-dlx" => Overflow::RejectPublishDlx,
            _ => return None,
        })
    }
}

/// The settings a queue runs with, from its arguments and any policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueConfig {
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`: delete the queue after this many unused milliseconds.
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<ShortString>,
    pub dead_letter_routing_key: Option<ShortString>,
    /// `x-max-priority`: the queue has priorities 0..=max.
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    /// Name of the policy in force (shown by the management API; policy changes update it).
    pub policy: Option<String>,
    /// Streams: `x-max-age` in milliseconds (retention by age) and as given.
    pub max_age_ms: Option<u64>,
    pub max_age: Option<String>,
    /// Streams: `x-stream-max-segment-size-bytes`.
    pub stream_max_segment_size_bytes: Option<u64>,
    /// Streams: `x-stream-filter-size-bytes` (16..=255).
    pub stream_filter_size_bytes: Option<u8>,
    /// Quorum queues: `x-delivery-limit` (or the policy's `delivery-limit`); negative turns
    /// the limit off, none means RabbitMQ 4's default (20).
    pub delivery_limit: Option<i64>,
    /// Quorum queues: `x-dead-letter-strategy` (`at-most-once` or `at-least-once`).
    pub dead_letter_strategy: Option<String>,
    /// Quorum queues: `x-quorum-initial-group-size` (members wanted; one on a single node).
    pub quorum_initial_group_size: Option<u64>,
    /// Quorum queues: `x-consumer-timeout` in milliseconds (the queue cancels a consumer whose
    /// delivery stays unsettled longer, RabbitMQ 4's behaviour).
    pub consumer_timeout: Option<u64>,
    /// Quorum queues: which RabbitMQ version's delivery counts they keep to (the node's
    /// setting, not an argument).
    pub delivery_counting: DeliveryCounting,
}

/// How a quorum queue counts deliveries, as RabbitMQ 4.2 or 4.3 does (4.3.0 release notes,
/// rabbitmq-server #13885). A node-wide setting (`--quorum-delivery-counting`): every member
/// of a replicated queue must run with the same one, as every node of a RabbitMQ cluster runs
/// the same version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeliveryCounting {
    /// RabbitMQ 4.2: every return counts (`acquired_count`): it is `x-delivery-count` and the
    /// delivery limit applies to it.
    #[default]
    V4_2,
    /// RabbitMQ 4.3: every return counts in `x-acquired-count`; only failed deliveries
    /// (basic.reject with requeue, a consumer's channel gone) count in `x-delivery-count`,
    /// and the delivery limit applies to those: nacked or recovered messages may come back
    /// without limit.
    V4_3,
}

impl DeliveryCounting {
    /// `"4.2"` or `"4.3"`.
    pub fn parse(s: &str) -> Option<DeliveryCounting> {
        match s {
            "4.2" => Some(DeliveryCounting::V4_2),
            "4.3" => Some(DeliveryCounting::V4_3),
            _ => None,
        }
    }

    /// The count the delivery limit applies to.
    pub fn limited(self, returns: crate::queue::engine::Returns) -> u32 {
        match self {
            DeliveryCounting::V4_2 => returns.count,
            DeliveryCounting::V4_3 => returns.failed,
        }
    }
}

/// The settings of a queue that a policy can change while it runs (RabbitMQ re-applies
/// policies to existing queues): what `VHost::set_policy` pushes into a running queue, and
/// what a quorum queue's log carries so that every member changes at the same place.
/// `max-priority`, single active consumer and the stream settings are fixed at declaration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySettings {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<ShortString>,
    pub dead_letter_routing_key: Option<ShortString>,
    /// As configured (see `QueueConfig::delivery_limit`).
    pub delivery_limit: Option<i64>,
    /// Quorum queues: `at-most-once` or `at-least-once` (`None`: the default, at most once).
    pub dead_letter_strategy: Option<String>,
}

impl PolicySettings {
    pub fn of(c: &QueueConfig) -> Self {
        PolicySettings {
            message_ttl: c.message_ttl,
            expires: c.expires,
            max_length: c.max_length,
            max_length_bytes: c.max_length_bytes,
            overflow: c.overflow,
            dead_letter_exchange: c.dead_letter_exchange.clone(),
            dead_letter_routing_key: c.dead_letter_routing_key.clone(),
            delivery_limit: c.delivery_limit,
            dead_letter_strategy: c.dead_letter_strategy.clone(),
        }
    }

    /// Writes these settings into `c`, leaving what a policy cannot change.
    pub fn apply_to(&self, c: &mut QueueConfig) {
        c.message_ttl = self.message_ttl;
        c.expires = self.expires;
        c.max_length = self.max_length;
        c.max_length_bytes = self.max_length_bytes;
        c.overflow = self.overflow;
        c.dead_letter_exchange = self.dead_letter_exchange.clone();
        c.dead_letter_routing_key = self.dead_letter_routing_key.clone();
        c.delivery_limit = self.delivery_limit;
        c.dead_letter_strategy = self.dead_letter_strategy.clone();
    }
}

/// RabbitMQ's `x-max-age` syntax: a positive integer and a unit, `Y M D h m s`.
pub fn parse_max_age(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let n: u64 = s.get(..s.len() - unit.len_utf8())?.parse().ok()?;
    let secs: u64 = match unit {
        'Y' => 365 * 24 * 3600,
        'M' => 30 * 24 * 3600,
        'D' => 24 * 3600,
        'h' => 3600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1000)
}

/// Queue arguments a stream refuses (RabbitMQ 3.10's list for `rabbit_stream_queue`).
const NOT_FOR_STREAMS: &[&str] = &[
    "x-max-length",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-message-ttl",
    "x-expires",
    "x-max-priority",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-queue-mode",
    "x-queue-master-locator",
    "x-quorum-initial-group-size",
];

/// Queue arguments a quorum queue refuses: RabbitMQ 4.2's declaration arguments that are not
/// in `rabbit_quorum_queue`'s list (3.10 accepts `x-stream-filter-size-bytes`, which it does
/// not know).
const NOT_FOR_QUORUM: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-stream-filter-size-bytes",
    "x-initial-cluster-size",
];

/// Builds RabbitMQ's "invalid arg" errors for one queue.
pub(crate) struct ArgContext<'a> {
    pub queue: &'a str,
    pub vhost: &'a str,
}

impl ArgContext<'_> {
    pub fn invalid(&self, arg: &str, reason: impl Into<String>) -> BrokerError {
        BrokerError::InvalidArgument {
            kind: ObjectKind::Queue,
            name: self.queue.to_owned(),
            vhost: self.vhost.to_owned(),
            arg: arg.to_owned(),
            reason: reason.into(),
        }
    }

    fn invalid_type(&self, arg: &str, v: &FieldValue) -> BrokerError {
        BrokerError::PreconditionFailed(format!(
            "invalid type '{}' for arg '{arg}' in queue '{}' in vhost '{}'",
            v.type_name(),
            self.queue,
            self.vhost
        ))
    }

    /// An integer argument: `min` is 0 (non-negative) or 1 (positive).
    fn int(&self, arg: &str, v: &FieldValue, positive: bool, max: u64) -> Result<u64> {
        let Some(n) = v.as_i64() else {
            return Err(self.invalid(arg, format!("\"expected integer, got {}\"", v.type_name())));
        };
        if n < 0 {
            return Err(self.invalid(arg, format!("{{value_negative,{n}}}")));
        }
        if n == 0 && positive {
            return Err(self.invalid(arg, "{value_zero,0}"));
        }
        let n = n.unsigned_abs();
        if n > max {
            return Err(self.invalid(arg, format!("{{value_too_large,{n}}}")));
        }
        Ok(n)
    }

    fn string(&self, arg: &str, v: &FieldValue) -> Result<ShortString> {
        match v {
            FieldValue::LongString(s) => Ok(ShortString::truncated(&s.to_str_lossy())),
            other => Err(self.invalid(arg, format!("{{unacceptable_type,{}}}", other.type_name()))),
        }
    }
}

impl QueueConfig {
    /// Validates a stream's queue.declare arguments as RabbitMQ does (same texts).
    pub(crate) fn from_stream_arguments(
        args: &FieldTable,
        cx: &ArgContext<'_>,
    ) -> Result<QueueConfig> {
        for arg in NOT_FOR_STREAMS {
            if args.contains_key(arg) {
                return Err(BrokerError::PreconditionFailed(format!(
                    "invalid arg '{arg}' for queue '{}' in vhost '{}' of queue type rabbit_stream_queue",
                    cx.queue, cx.vhost
                )));
            }
        }
        let mut c = QueueConfig::default();
        if let Some(v) = args.get("x-max-length-bytes") {
            c.max_length_bytes = Some(cx.int("x-max-length-bytes", v, false, u64::MAX)?);
        }
        if let Some(v) = args.get("x-max-age") {
            let s = v.as_str().unwrap_or_default();
            match parse_max_age(s) {
                Some(ms) if ms > 0 => {
                    c.max_age_ms = Some(ms);
                    c.max_age = Some(s.to_owned());
                }
                _ => return Err(cx.invalid("x-max-age", "invalid_max_age")),
            }
        }
        if let Some(v) = args.get("x-stream-max-segment-size-bytes") {
            let n = cx.int("x-stream-max-segment-size-bytes", v, false, u64::MAX)?;
            if n > pier_store::stream::MAX_SEGMENT_SIZE {
                return Err(BrokerError::PreconditionFailed(
                    "Exceeded max value for x-stream-max-segment-size-bytes".to_owned(),
                ));
            }
            c.stream_max_segment_size_bytes = Some(n);
        }
        if let Some(v) = args.get("x-stream-filter-size-bytes") {
            let n = cx.int("x-stream-filter-size-bytes", v, false, u64::MAX)?;
            if !(16..=255).contains(&n) {
                return Err(cx.invalid(
                    "x-stream-filter-size-bytes",
                    format!("{{value_out_of_range,{n}}}"),
                ));
            }
            c.stream_filter_size_bytes = Some(n as u8);
        }
        Ok(c)
    }

    /// Validates a quorum queue's queue.declare arguments in RabbitMQ's order: first every
    /// value (the checks all queue types share, then the quorum-only arguments), then the
    /// arguments of other queue types are refused. Unknown arguments are ignored;
    /// `x-delivery-limit` and `x-consumer-timeout` are not checked by RabbitMQ either (a value
    /// that is not an integer is ignored here). `x-max-in-memory-length`/`-bytes` are
    /// validated and have no effect (as in RabbitMQ since 3.10).
    pub(crate) fn from_quorum_arguments(
        args: &FieldTable,
        cx: &ArgContext<'_>,
    ) -> Result<QueueConfig> {
        let mut c = QueueConfig::from_arguments(args, cx)?;
        for arg in ["x-max-in-memory-length", "x-max-in-memory-bytes"] {
            if let Some(v) = args.get(arg) {
                cx.int(arg, v, false, u64::MAX)?;
            }
        }
        if let Some(v) = args.get("x-dead-letter-strategy") {
            let s = cx.string("x-dead-letter-strategy", v)?;
            match s.as_str() {
                "at-most-once" | "at-least-once" => {
                    c.dead_letter_strategy = Some(s.as_str().to_owned())
                }
                _ => return Err(cx.invalid("x-dead-letter-strategy", "invalid_dlx_strategy")),
            }
        }
        if let Some(v) = args.get("x-quorum-initial-group-size") {
            c.quorum_initial_group_size =
                Some(cx.int("x-quorum-initial-group-size", v, true, u64::MAX)?);
        }
        if let Some(v) = args.get("x-queue-leader-locator") {
            let s = cx.string("x-queue-leader-locator", v)?;
            if !matches!(
                s.as_str(),
                "client-local" | "balanced" | "random" | "least-leaders"
            ) {
                return Err(cx.invalid("x-queue-leader-locator", "invalid_queue_locator_arg"));
            }
        }
        for arg in NOT_FOR_QUORUM {
            if args.contains_key(arg) {
                return Err(BrokerError::PreconditionFailed(format!(
                    "invalid arg '{arg}' for queue '{}' in vhost '{}' of queue type rabbit_quorum_queue",
                    cx.queue, cx.vhost
                )));
            }
        }
        c.delivery_limit = args.get("x-delivery-limit").and_then(FieldValue::as_i64);
        c.consumer_timeout = args
            .get("x-consumer-timeout")
            .and_then(FieldValue::as_i64)
            .and_then(|n| u64::try_from(n).ok());
        // RabbitMQ: "Invalid overflow strategy" for a quorum queue, which keeps drop-head.
        if c.overflow == Overflow::RejectPublishDlx {
            c.overflow = Overflow::DropHead;
        }
        Ok(c)
    }

    /// Validates a classic queue's queue.declare arguments the way RabbitMQ 3.10 does (same
    /// checks, same texts) and returns the settings they ask for. Unknown arguments are
    /// ignored, as in RabbitMQ. `x-queue-type` is the kind's business (`queue::kind`).
    pub(crate) fn from_arguments(args: &FieldTable, cx: &ArgContext<'_>) -> Result<QueueConfig> {
        let mut c = QueueConfig::default();
        if let Some(v) = args.get("x-queue-mode") {
            match v.as_str() {
                Some("default" | "lazy") => {}
                Some(other) => {
                    return Err(cx.invalid(
                        "x-queue-mode",
                        format!("\"unsupported queue mode '{other}'\""),
                    ))
                }
                None => {
                    return Err(cx.invalid(
                        "x-queue-mode",
                        format!("{{unacceptable_type,{}}}", v.type_name()),
                    ))
                }
            }
        }
        if let Some(v) = args.get("x-message-ttl") {
            c.message_ttl = Some(cx.int("x-message-ttl", v, false, MAX_EXPIRY_MS)?);
        }
        if let Some(v) = args.get("x-expires") {
            c.expires = Some(cx.int("x-expires", v, true, MAX_EXPIRY_MS)?);
        }
        if let Some(v) = args.get("x-max-length") {
            c.max_length = Some(cx.int("x-max-length", v, false, u64::MAX)?);
        }
        if let Some(v) = args.get("x-max-length-bytes") {
            c.max_length_bytes = Some(cx.int("x-max-length-bytes", v, false, u64::MAX)?);
        }
        if let Some(v) = args.get("x-max-priority") {
            let Some(n) = v.as_i64() else {
                return Err(cx.invalid(
                    "x-max-priority",
                    format!("\"expected integer, got {}\"", v.type_name()),
                ));
            };
            if n < 0 {
                return Err(cx.invalid("x-max-priority", format!("{{value_negative,{n}}}")));
            }
            let p = u8::try_from(n)
                .map_err(|_| cx.invalid("x-max-priority", format!("{{max_value_exceeded,{n}}}")))?;
            c.max_priority = Some(p);
        }
        if let Some(v) = args.get("x-overflow") {
            let s = cx.string("x-overflow", v)?;
            c.overflow =
                Overflow::parse(&s).ok_or_else(|| cx.invalid("x-overflow", "invalid_overflow"))?;
        }
        if let Some(v) = args.get("x-dead-letter-exchange") {
            match v {
                FieldValue::LongString(s) => {
                    c.dead_letter_exchange = Some(ShortString::truncated(&s.to_str_lossy()));
                }
                other => return Err(cx.invalid_type("x-dead-letter-exchange", other)),
            }
        }
        if let Some(v) = args.get("x-dead-letter-routing-key") {
            let key = cx.string("x-dead-letter-routing-key", v)?;
            if c.dead_letter_exchange.is_none() {
                return Err(cx.invalid(
                    "x-dead-letter-routing-key",
                    "routing_key_but_no_dlx_defined",
                ));
            }
            c.dead_letter_routing_key = Some(key);
        }
        if let Some(v) = args.get("x-queue-version") {
            // Classic queue storage versions 1 and 2 (RabbitMQ's check_queue_version; 4.3,
            // which removed version 1, is `DeprecatedFeatures::check_queue_declare`'s).
            let n = cx.int("x-queue-version", v, false, u64::MAX)?;
            if !matches!(n, 1 | 2) {
                return Err(cx.invalid(
                    "x-queue-version",
                    format!("\"unsupported queue version '{n}'\""),
                ));
            }
        }
        if let Some(v) = args.get("x-single-active-consumer") {
            match v {
                FieldValue::Bool(b) => c.single_active_consumer = *b,
                other => {
                    return Err(cx.invalid(
                        "x-single-active-consumer",
                        format!("{{unacceptable_type,{}}}", other.type_name()),
                    ))
                }
            }
        }
        Ok(c)
    }
}

/// Parses a message's `expiration` property as RabbitMQ does: decimal digits (an optional `+`
/// sign is accepted), non-negative, at most ten years. The error is RabbitMQ's reason text.
pub fn parse_expiration(s: &str) -> std::result::Result<u64, String> {
    let bytes = s.as_bytes();
    let (negative, digits_start) = match bytes.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let digits_end = bytes
        .iter()
        .skip(digits_start)
        .position(|b| !b.is_ascii_digit())
        .map_or(bytes.len(), |p| p + digits_start);
    if digits_end == digits_start {
        return Err("no_integer".to_owned());
    }
    if digits_end < bytes.len() {
        let rest = s.get(digits_end..).unwrap_or_default();
        return Err(format!("{{leftover_string,\"{rest}\"}}"));
    }
    let digits = s.get(digits_start..digits_end).unwrap_or_default();
    let value: u128 = digits.parse().unwrap_or(u128::MAX);
    if negative && value != 0 {
        return Err(format!("{{value_negative,-{digits}}}"));
    }
    if value > u128::from(MAX_EXPIRY_MS) {
        return Err(format!("{{value_too_large,{digits}}}"));
    }
    u64::try_from(value).map_err(|_| format!("{{value_too_large,{digits}}}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cx() -> ArgContext<'static> {
        ArgContext {
            queue: "q",
            vhost: "/",
        }
    }

    fn parse(pairs: &[(&str, FieldValue)]) -> Result<QueueConfig> {
        let mut t = FieldTable::new();
        for (k, v) in pairs {
            t.insert(*k, v.clone());
        }
        QueueConfig::from_arguments(&t, &cx())
    }

    fn text(r: Result<QueueConfig>) -> String {
        r.unwrap_err().reply_text()
    }

    #[test]
    fn expiration_parsing_matches_rabbitmq() {
        assert_eq!(parse_expiration("100"), Ok(100));
        assert_eq!(parse_expiration("+5"), Ok(5));
        assert_eq!(parse_expiration("0"), Ok(0));
        assert_eq!(parse_expiration("abc").unwrap_err(), "no_integer");
        assert_eq!(parse_expiration("").unwrap_err(), "no_integer");
        assert_eq!(parse_expiration(" 100").unwrap_err(), "no_integer");
        assert_eq!(parse_expiration("-1").unwrap_err(), "{value_negative,-1}");
        assert_eq!(
            parse_expiration("1.5").unwrap_err(),
            "{leftover_string,\".5\"}"
        );
        assert_eq!(
            parse_expiration("100 ").unwrap_err(),
            "{leftover_string,\" \"}"
        );
        assert_eq!(parse_expiration("315360000000"), Ok(MAX_EXPIRY_MS));
        assert_eq!(
            parse_expiration("315360000001").unwrap_err(),
            "{value_too_large,315360000001}"
        );
    }

    #[test]
    fn argument_errors_use_rabbitmq_texts() {
        assert_eq!(
            text(parse(&[("x-message-ttl", FieldValue::LongLongInt(-1))])),
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        assert_eq!(
            text(parse(&[("x-message-ttl", FieldValue::LongString("a".into()))])),
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        assert_eq!(
            text(parse(&[("x-expires", FieldValue::LongInt(0))])),
            "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
        );
        assert_eq!(
            text(parse(&[("x-max-priority", FieldValue::LongInt(256))])),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}"
        );
        assert_eq!(
            text(parse(&[("x-overflow", FieldValue::LongString("x".into()))])),
            "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"
        );
        assert_eq!(
            text(parse(&[("x-dead-letter-routing-key", FieldValue::LongString("k".into()))])),
            "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"
        );
        assert_eq!(
            text(parse(&[("x-dead-letter-exchange", FieldValue::LongInt(5))])),
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"
        );
        assert_eq!(
            text(parse(&[("x-single-active-consumer", FieldValue::LongString("y".into()))])),
            "PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue 'q' in vhost '/': {unacceptable_type,longstr}"
        );
    }

    #[test]
    fn valid_arguments_resolve() {
        let c = parse(&[
            ("x-message-ttl", FieldValue::LongInt(100)),
            ("x-max-length", FieldValue::LongInt(0)),
            (
                "x-overflow",
                FieldValue::LongString("reject-publish-dlx".into()),
            ),
            ("x-dead-letter-exchange", FieldValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                FieldValue::LongString("dl".into()),
            ),
            ("x-max-priority", FieldValue::ShortShortUInt(10)),
            ("x-single-active-consumer", FieldValue::Bool(true)),
        ])
        .unwrap();
        assert_eq!(c.message_ttl, Some(100));
        assert_eq!(c.max_length, Some(0));
        assert_eq!(c.overflow, Overflow::RejectPublishDlx);
        assert_eq!(c.dead_letter_exchange.as_deref(), Some(""));
        assert_eq!(c.dead_letter_routing_key.as_deref(), Some("dl"));
        assert_eq!(c.max_priority, Some(10));
        assert!(c.single_active_consumer);
    }
}
