//! RabbitMQ's deprecated features that 4.3 no longer permits by default, and the switch that
//! gives Pier RabbitMQ 4.3's stricter defaults.
//!
//! RabbitMQ names each deprecated feature and lets an operator permit or deny it
//! (`deprecated_features.permit.<name> = true|false` in rabbitmq.conf). In 4.2 the three
//! below are `permitted_by_default`; 4.3 moved them to `denied_by_default` (4.3.0 release
//! notes). Pier's defaults are 4.2's; `DeprecatedFeatures::rabbitmq_4_3()` (the
//! `deprecated_features.defaults = "4.3"` setting) denies all three, and each can still be
//! set on its own. Denied, a use is refused the way RabbitMQ refuses it, with its text:
//!
//! | feature | use | denied |
//! |---|---|---|
//! | `transient_nonexcl_queues` | queue.declare of a non-durable, non-exclusive queue | 541 INTERNAL_ERROR |
//! | `queue_master_locator` | the `x-queue-master-locator` argument of a classic queue | 541 INTERNAL_ERROR |
//! | `global_qos` | basic.qos with global=true | applies per consumer (global=false), as RabbitMQ does |

use pier_wire::{FieldTable, FieldValue};

use crate::error::BrokerError;

/// A deprecated feature RabbitMQ 4.3 denies by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeprecatedFeature {
    TransientNonexclQueues,
    GlobalQos,
    QueueMasterLocator,
}

impl DeprecatedFeature {
    pub const ALL: [DeprecatedFeature; 3] = [
        DeprecatedFeature::TransientNonexclQueues,
        DeprecatedFeature::GlobalQos,
        DeprecatedFeature::QueueMasterLocator,
    ];

    /// RabbitMQ's name (`deprecated_features.permit.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            DeprecatedFeature::TransientNonexclQueues => "transient_nonexcl_queues",
            DeprecatedFeature::GlobalQos => "global_qos",
            DeprecatedFeature::QueueMasterLocator => "queue_master_locator",
        }
    }

    pub fn from_name(name: &str) -> Option<DeprecatedFeature> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// What RabbitMQ's management API says about it (`/api/deprecated-features`).
    pub fn description(self) -> &'static str {
        match self {
            DeprecatedFeature::TransientNonexclQueues => {
                "Non-durable (transient) queues that are not exclusive"
            }
            DeprecatedFeature::GlobalQos => "basic.qos with global=true (prefetch per channel)",
            DeprecatedFeature::QueueMasterLocator => {
                "The x-queue-master-locator queue argument (queue-leader-locator replaces it)"
            }
        }
    }

    /// Whether the broker uses it now, as RabbitMQ 4.2's `is_feature_used` callbacks tell
    /// (`/api/deprecated-features/used`): only `transient_nonexcl_queues` has one (a
    /// non-durable queue that is not exclusive exists, in any vhost); for the other two
    /// RabbitMQ cannot tell and never lists them.
    pub fn in_use(self, broker: &crate::Broker) -> bool {
        match self {
            DeprecatedFeature::TransientNonexclQueues => broker.vhosts().iter().any(|vh| {
                vh.queues()
                    .iter()
                    .any(|q| !q.options().durable && !q.is_exclusive())
            }),
            DeprecatedFeature::GlobalQos | DeprecatedFeature::QueueMasterLocator => false,
        }
    }

    pub fn doc_url(self) -> &'static str {
        match self {
            DeprecatedFeature::TransientNonexclQueues => "https://blog.rabbitmq.com/posts/2021/08/4.0-deprecation-announcements/#removal-of-transient-non-exclusive-queues",
            DeprecatedFeature::GlobalQos => "https://blog.rabbitmq.com/posts/2021/08/4.0-deprecation-announcements/#removal-of-global-qos",
            DeprecatedFeature::QueueMasterLocator => {
                "https://www.rabbitmq.com/docs/clustering#replica-placement"
            }
        }
    }
}

/// Which of the deprecated features are permitted, and which defaults (4.2's or 4.3's) the
/// rest follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeprecatedFeatures {
    /// The defaults are RabbitMQ 4.3's (every feature here denied) rather than 4.2's.
    defaults_4_3: bool,
    /// Bit i: `ALL[i]` is permitted.
    permitted: u8,
}

impl Default for DeprecatedFeatures {
    /// RabbitMQ 4.2's: every one permitted.
    fn default() -> Self {
        Self::rabbitmq_4_2()
    }
}

impl DeprecatedFeatures {
    pub fn rabbitmq_4_2() -> Self {
        DeprecatedFeatures {
            defaults_4_3: false,
            permitted: u8::MAX,
        }
    }

    /// RabbitMQ 4.3's defaults: none permitted.
    pub fn rabbitmq_4_3() -> Self {
        DeprecatedFeatures {
            defaults_4_3: true,
            permitted: 0,
        }
    }

    fn bit(f: DeprecatedFeature) -> u8 {
        1 << (f as u8)
    }

    /// `deprecated_features.permit.<name> = permitted`.
    pub fn set(&mut self, f: DeprecatedFeature, permitted: bool) {
        if permitted {
            self.permitted |= Self::bit(f);
        } else {
            self.permitted &= !Self::bit(f);
        }
    }

    pub fn permits(&self, f: DeprecatedFeature) -> bool {
        self.permitted & Self::bit(f) != 0
    }

    /// RabbitMQ's phase name for the feature under these defaults.
    pub fn phase(&self) -> &'static str {
        if self.defaults_4_3 {
            "denied_by_default"
        } else {
            "permitted_by_default"
        }
    }

    /// The error a use of a denied feature gets: RabbitMQ's warning text for it
    /// (rabbit_deprecated_features), which depends on whether the default denies it.
    pub fn denied(&self, f: DeprecatedFeature) -> BrokerError {
        let n = f.name();
        let text = if self.defaults_4_3 {
            format!(
                "Feature `{n}` is deprecated.\nBy default, this feature is not permitted \
                 anymore.\nThe feature will be removed from a future major RabbitMQ version, \
                 regardless of the configuration; actual version to be determined.\nTo \
                 continue using this feature when it is not permitted by default, set the \
                 following parameter in your configuration:\n    \
                 \"deprecated_features.permit.{n} = true\""
            )
        } else {
            format!(
                "Feature `{n}` is deprecated.\nIts use is not permitted per the configuration \
                 (overriding the default, which is permitted):\n    \
                 \"deprecated_features.permit.{n} = false\"\nIts use will not be permitted by \
                 default in a future minor RabbitMQ version and the feature will be removed \
                 from a future major RabbitMQ version; actual versions to be determined.\nTo \
                 continue using this feature when it is not permitted by default, set the \
                 following parameter in your configuration:\n    \
                 \"deprecated_features.permit.{n} = true\""
            )
        };
        BrokerError::Deprecated(text)
    }

    /// queue.declare (not passive) of queue `queue` in `vhost` with these properties, as
    /// RabbitMQ checks it: under 4.3's defaults a classic queue's `x-queue-version: 1`
    /// (4.3 removed that storage: its `check_queue_version` takes 2 only), then a classic
    /// queue's `x-queue-master-locator` argument, then a non-durable queue that is not
    /// exclusive.
    pub fn check_queue_declare(
        &self,
        queue: &str,
        vhost: &str,
        durable: bool,
        exclusive: bool,
        arguments: &FieldTable,
    ) -> Result<(), BrokerError> {
        // A bad x-queue-type is refused later, with the declaration's names in the text.
        let cx = crate::args::ArgContext { queue, vhost };
        let classic = matches!(
            crate::queue::QueueType::of(arguments, &cx),
            Ok(crate::queue::QueueType::Classic)
        );
        if self.defaults_4_3
            && classic
            && arguments
                .get("x-queue-version")
                .and_then(FieldValue::as_i64)
                .is_some_and(|v| v == 1)
        {
            return Err(cx.invalid("x-queue-version", "\"unsupported queue version '1'\""));
        }
        if classic
            && arguments.get("x-queue-master-locator").is_some()
            && !self.permits(DeprecatedFeature::QueueMasterLocator)
        {
            return Err(self.denied(DeprecatedFeature::QueueMasterLocator));
        }
        if !durable && !exclusive && !self.permits(DeprecatedFeature::TransientNonexclQueues) {
            return Err(self.denied(DeprecatedFeature::TransientNonexclQueues));
        }
        Ok(())
    }

    /// basic.qos: whether global=true is honoured (denied, the prefetch applies per
    /// consumer, as RabbitMQ's channel does).
    pub fn global_qos(&self, global: bool) -> bool {
        global && self.permits(DeprecatedFeature::GlobalQos)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pier_wire::FieldValue;

    #[test]
    fn defaults_are_4_2s_and_4_3_denies_each() {
        let d = DeprecatedFeatures::default();
        for f in DeprecatedFeature::ALL {
            assert!(d.permits(f));
            assert!(!DeprecatedFeatures::rabbitmq_4_3().permits(f));
            assert_eq!(DeprecatedFeature::from_name(f.name()), Some(f));
        }
        assert!(d
            .check_queue_declare("q", "/", false, false, &FieldTable::new())
            .is_ok());
        assert!(d.global_qos(true));
    }

    #[test]
    fn denied_uses_get_rabbitmq_texts() {
        let mut d = DeprecatedFeatures::rabbitmq_4_3();
        let e = d
            .check_queue_declare("q", "/", false, false, &FieldTable::new())
            .unwrap_err();
        assert_eq!(e.reply_code(), 541);
        assert!(e.reply_text().starts_with(
            "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.\nBy default, \
             this feature is not permitted anymore."
        ));
        assert!(d
            .check_queue_declare("q", "/", false, true, &FieldTable::new())
            .is_ok());
        assert!(d
            .check_queue_declare("q", "/", true, false, &FieldTable::new())
            .is_ok());
        let mut args = FieldTable::new();
        args.insert("x-queue-master-locator", FieldValue::from("min-masters"));
        let e = d
            .check_queue_declare("q", "/", true, false, &args)
            .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Feature `queue_master_locator` is deprecated."));
        // A quorum queue refuses the argument as one of another queue type, not here.
        args.insert("x-queue-type", FieldValue::from("quorum"));
        assert!(d.check_queue_declare("q", "/", true, false, &args).is_ok());
        assert!(!d.global_qos(true));
        d.set(DeprecatedFeature::GlobalQos, true);
        assert!(d.global_qos(true));

        // Denied against 4.2's defaults: RabbitMQ's other text.
        let mut d = DeprecatedFeatures::rabbitmq_4_2();
        d.set(DeprecatedFeature::TransientNonexclQueues, false);
        let e = d
            .check_queue_declare("q", "/", false, false, &FieldTable::new())
            .unwrap_err();
        assert!(e.to_string().contains(
            "Its use is not permitted per the configuration (overriding the default, which is \
             permitted):\n    \"deprecated_features.permit.transient_nonexcl_queues = false\""
        ));
    }

    /// RabbitMQ 4.3 removed classic queue version 1; 4.2 (and a quorum queue's own argument
    /// check) are not this check's business.
    #[test]
    fn classic_queue_version_1_is_refused_under_4_3() {
        let mut v1 = FieldTable::new();
        v1.insert("x-queue-version", FieldValue::LongInt(1));
        let e = DeprecatedFeatures::rabbitmq_4_3()
            .check_queue_declare("q", "/", true, false, &v1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid arg 'x-queue-version' for queue 'q' in vhost '/': \
             \"unsupported queue version '1'\""
        );
        assert!(DeprecatedFeatures::rabbitmq_4_2()
            .check_queue_declare("q", "/", true, false, &v1)
            .is_ok());
        let mut v2 = FieldTable::new();
        v2.insert("x-queue-version", FieldValue::LongInt(2));
        assert!(DeprecatedFeatures::rabbitmq_4_3()
            .check_queue_declare("q", "/", true, false, &v2)
            .is_ok());
    }
}
