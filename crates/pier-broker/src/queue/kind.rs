//! Queue kinds (`x-queue-type`): which implementation a declaration gets, and the argument
//! rules of each. Classic and quorum queues run on the queue engine (a quorum queue stores
//! every message and has RabbitMQ's quorum semantics; it is a group of one member until Raft
//! replication comes, see `docs/quorum-queues.md`); streams are a log.

use pier_wire::{FieldTable, FieldValue};

use crate::args::{ArgContext, QueueConfig};
use crate::error::Result;

/// The kinds RabbitMQ knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
    Stream,
}

impl QueueType {
    /// The name RabbitMQ uses (`x-queue-type`, the management API's `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }

    /// The kind a declaration asks for: `x-queue-type`, classic when absent. RabbitMQ's
    /// texts for a value that is not a string or not a known type.
    pub(crate) fn of(args: &FieldTable, cx: &ArgContext<'_>) -> Result<QueueType> {
        let Some(v) = args.get("x-queue-type") else {
            return Ok(QueueType::Classic);
        };
        match v.as_str() {
            Some("classic") => Ok(QueueType::Classic),
            Some("quorum") => Ok(QueueType::Quorum),
            Some("stream") => Ok(QueueType::Stream),
            Some(other) => Err(cx.invalid(
                "x-queue-type",
                format!("\"unsupported queue type '{other}'\""),
            )),
            None => Err(cx.invalid(
                "x-queue-type",
                format!("{{unacceptable_type,{}}}", type_name(v)),
            )),
        }
    }

    /// Validates the arguments for this kind and resolves the settings a queue of it runs
    /// with (before policies).
    pub(crate) fn config(self, args: &FieldTable, cx: &ArgContext<'_>) -> Result<QueueConfig> {
        match self {
            QueueType::Classic => QueueConfig::from_arguments(args, cx),
            QueueType::Stream => QueueConfig::from_stream_arguments(args, cx),
            QueueType::Quorum => QueueConfig::from_quorum_arguments(args, cx),
        }
    }

    /// RabbitMQ's internal module name, used in its error texts.
    pub fn module_name(self) -> &'static str {
        match self {
            QueueType::Classic => "rabbit_classic_queue",
            QueueType::Quorum => "rabbit_quorum_queue",
            QueueType::Stream => "rabbit_stream_queue",
        }
    }

    /// Whether messages of this kind are stored whatever their delivery mode.
    pub fn stores_every_message(self) -> bool {
        matches!(self, QueueType::Quorum | QueueType::Stream)
    }
}

impl QueueType {
    /// RabbitMQ's rules for the declaration's properties: streams and quorum queues are
    /// durable, not auto-delete, not exclusive. Quorum queues are checked in RabbitMQ's order
    /// (auto-delete, exclusive, non-durable: `rabbit_quorum_queue:declare`).
    pub(crate) fn check_properties(
        self,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        cx: &ArgContext<'_>,
    ) -> Result<()> {
        // RabbitMQ 3.10.8 checks in this order for both kinds (measured: a non-durable,
        // auto-delete, exclusive declaration is refused for 'auto-delete').
        if !matches!(self, QueueType::Quorum | QueueType::Stream) {
            return Ok(());
        }
        let property = if auto_delete {
            "auto-delete"
        } else if exclusive {
            "exclusive-owner"
        } else if !durable {
            "non-durable"
        } else {
            return Ok(());
        };
        Err(crate::error::BrokerError::PreconditionFailed(format!(
            "invalid property '{property}' for queue '{}' in vhost '{}'",
            cx.queue, cx.vhost
        )))
    }
}

fn type_name(v: &FieldValue) -> &'static str {
    v.type_name()
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

    fn kind_and_config(v: Option<FieldValue>) -> Result<(QueueType, QueueConfig)> {
        let mut t = FieldTable::new();
        if let Some(v) = v {
            t.insert("x-queue-type", v);
        }
        let k = QueueType::of(&t, &cx())?;
        Ok((k, k.config(&t, &cx())?))
    }

    #[test]
    fn classic_is_the_default_and_the_only_kind_today() {
        assert_eq!(kind_and_config(None).unwrap().0, QueueType::Classic);
        let classic = kind_and_config(Some(FieldValue::LongString("classic".into())));
        assert_eq!(classic.unwrap().0, QueueType::Classic);
    }

    #[test]
    fn quorum_and_streams_are_accepted() {
        let (k, c) = kind_and_config(Some(FieldValue::LongString("quorum".into()))).unwrap();
        assert_eq!(k, QueueType::Quorum);
        assert_eq!(c.delivery_limit, None);
        let (k, _) = kind_and_config(Some(FieldValue::LongString("stream".into()))).unwrap();
        assert_eq!(k, QueueType::Stream);
    }

    fn quorum(pairs: &[(&str, FieldValue)]) -> Result<QueueConfig> {
        let mut t = FieldTable::new();
        t.insert("x-queue-type", FieldValue::LongString("quorum".into()));
        for (k, v) in pairs {
            t.insert(*k, v.clone());
        }
        QueueType::Quorum.config(&t, &cx())
    }

    #[test]
    fn quorum_arguments_follow_rabbitmq() {
        let text = |r: Result<QueueConfig>| r.unwrap_err().reply_text();
        for arg in [
            "x-max-priority",
            "x-queue-mode",
            "x-queue-version",
            "x-max-age",
            "x-stream-max-segment-size-bytes",
            "x-stream-filter-size-bytes",
        ] {
            let v = if arg == "x-queue-mode" || arg == "x-max-age" {
                FieldValue::LongString(if arg == "x-max-age" { "1D" } else { "lazy" }.into())
            } else {
                FieldValue::LongInt(2)
            };
            assert_eq!(
                text(quorum(&[(arg, v)])),
                format!("PRECONDITION_FAILED - invalid arg '{arg}' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue")
            );
        }
        // Values are checked before the queue type's argument list (as RabbitMQ does).
        assert_eq!(
            text(quorum(&[
                ("x-max-priority", FieldValue::LongInt(5)),
                ("x-max-length", FieldValue::LongInt(-5))
            ])),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-5}"
        );
        assert_eq!(
            text(quorum(&[(
                "x-quorum-initial-group-size",
                FieldValue::LongInt(0)
            )])),
            "PRECONDITION_FAILED - invalid arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/': {value_zero,0}"
        );
        assert_eq!(
            text(quorum(&[(
                "x-dead-letter-strategy",
                FieldValue::LongString("bogus".into())
            )])),
            "PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for queue 'q' in vhost '/': invalid_dlx_strategy"
        );
        assert_eq!(
            text(quorum(&[(
                "x-queue-leader-locator",
                FieldValue::LongString("bogus".into())
            )])),
            "PRECONDITION_FAILED - invalid arg 'x-queue-leader-locator' for queue 'q' in vhost '/': invalid_queue_locator_arg"
        );
        let c = quorum(&[
            ("x-delivery-limit", FieldValue::LongInt(-1)),
            ("x-consumer-timeout", FieldValue::LongInt(5000)),
            ("x-quorum-initial-group-size", FieldValue::LongInt(3)),
            (
                "x-dead-letter-strategy",
                FieldValue::LongString("at-least-once".into()),
            ),
            (
                "x-overflow",
                FieldValue::LongString("reject-publish-dlx".into()),
            ),
            ("x-max-in-memory-length", FieldValue::LongInt(10)),
            (
                "x-queue-leader-locator",
                FieldValue::LongString("balanced".into()),
            ),
        ])
        .unwrap();
        assert_eq!(c.delivery_limit, Some(-1));
        assert_eq!(c.consumer_timeout, Some(5000));
        assert_eq!(c.quorum_initial_group_size, Some(3));
        assert_eq!(c.dead_letter_strategy.as_deref(), Some("at-least-once"));
        // reject-publish-dlx is not a quorum queue strategy: RabbitMQ keeps drop-head.
        assert_eq!(c.overflow, crate::args::Overflow::DropHead);
    }

    #[test]
    fn quorum_properties_are_checked_in_rabbitmq_order() {
        let e = |d, x, a| {
            QueueType::Quorum
                .check_properties(d, x, a, &cx())
                .unwrap_err()
                .reply_text()
        };
        let t = |p: &str| {
            format!("PRECONDITION_FAILED - invalid property '{p}' for queue 'q' in vhost '/'")
        };
        assert_eq!(e(false, true, true), t("auto-delete"));
        assert_eq!(e(false, true, false), t("exclusive-owner"));
        assert_eq!(e(false, false, false), t("non-durable"));
        assert!(QueueType::Quorum
            .check_properties(true, false, false, &cx())
            .is_ok());
    }

    #[test]
    fn stream_arguments_follow_rabbitmq() {
        let stream = |k: &str, v: FieldValue| {
            let mut t = FieldTable::new();
            t.insert("x-queue-type", FieldValue::LongString("stream".into()));
            t.insert(k, v);
            QueueType::Stream.config(&t, &cx())
        };
        let c = stream("x-max-age", FieldValue::LongString("10D".into())).unwrap();
        assert_eq!(c.max_age_ms, Some(10 * 24 * 3600 * 1000));
        let e = stream("x-max-age", FieldValue::LongString("10x".into())).unwrap_err();
        assert_eq!(
            e.reply_text(),
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 'q' in vhost '/': invalid_max_age"
        );
        let e = stream(
            "x-stream-max-segment-size-bytes",
            FieldValue::LongLongInt(4_000_000_000),
        )
        .unwrap_err();
        assert_eq!(
            e.reply_text(),
            "PRECONDITION_FAILED - Exceeded max value for x-stream-max-segment-size-bytes"
        );
        let e = stream("x-max-length", FieldValue::LongInt(10)).unwrap_err();
        assert_eq!(
            e.reply_text(),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/' of queue type rabbit_stream_queue"
        );
        let e = QueueType::Stream
            .check_properties(false, false, false, &cx())
            .unwrap_err();
        assert_eq!(
            e.reply_text(),
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q' in vhost '/'"
        );
        assert!(QueueType::Stream
            .check_properties(true, false, false, &cx())
            .is_ok());
    }

    #[test]
    fn unknown_and_mistyped_kinds_use_rabbitmq_texts() {
        let e = kind_and_config(Some(FieldValue::LongString("lazy".into()))).unwrap_err();
        assert_eq!(
            e.reply_text(),
            "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue type 'lazy'\""
        );
        let e = kind_and_config(Some(FieldValue::LongInt(1))).unwrap_err();
        assert_eq!(
            e.reply_text(),
            "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q' in vhost '/': {unacceptable_type,signedint}"
        );
    }
}
