//! Queue kinds (`x-queue-type`): which implementation a declaration gets, and the argument
//! rules of each. Classic queues are the only kind today; quorum queues and streams are
//! refused with a channel error until they exist (the issues that build them plug in here).

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
            // A channel error (406, like RabbitMQ's other queue-type refusals), not 540: a 540
            // would close the connection and every other channel on it.
            QueueType::Quorum => Err(cx.invalid(
                "x-queue-type",
                format!(
                    "queue type '{}' is not supported by Pier yet; only 'classic' queues are \
                     available",
                    self.as_str()
                ),
            )),
        }
    }
}

impl QueueType {
    /// RabbitMQ's rules for the declaration's properties: streams (like quorum queues) are
    /// durable, not auto-delete, not exclusive.
    pub(crate) fn check_properties(
        self,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        cx: &ArgContext<'_>,
    ) -> Result<()> {
        if self != QueueType::Stream {
            return Ok(());
        }
        let property = if !durable {
            "non-durable"
        } else if auto_delete {
            "auto-delete"
        } else if exclusive {
            "exclusive-owner"
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
    fn quorum_is_refused_on_the_channel_and_streams_are_accepted() {
        let e = kind_and_config(Some(FieldValue::LongString("quorum".into()))).unwrap_err();
        assert_eq!(e.reply_code(), 406);
        assert_eq!(
            e.reply_text(),
            "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q' in vhost '/': queue type 'quorum' is not supported by Pier yet; only 'classic' queues are available"
        );
        let (k, _) = kind_and_config(Some(FieldValue::LongString("stream".into()))).unwrap();
        assert_eq!(k, QueueType::Stream);
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
