//! The sans-I/O part of an MQTT connection: packet identifiers and in-flight deliveries,
//! the order of PUBACKs to the client's QoS 1 publishes, topic aliases, keep-alive, the
//! session's subscriptions and the CONNECT-time decisions (client id, session kind, queue
//! names). No sockets, no clocks (times are passed in), no broker: the connection task
//! (`connection.rs`) feeds it events and performs what it returns.

use std::collections::{BTreeMap, HashMap, VecDeque};

use pier_mqtt_wire::{topic, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};

/// The queue a subscription of QoS `qos` lives in (RabbitMQ's names).
pub fn queue_name(client_id: &str, qos: QoS) -> String {
    match qos {
        QoS::AtMostOnce => format!("mqtt-subscription-{client_id}qos0"),
        _ => format!("mqtt-subscription-{client_id}qos1"),
    }
}

/// QoS 2 is not supported (as RabbitMQ 3.10 and 3.13): it is granted and delivered as QoS 1.
pub fn granted_qos(requested: QoS) -> QoS {
    match requested {
        QoS::AtMostOnce => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// The QoS a message is delivered with: the subscription's, lowered to the publisher's
/// when the message says it (`x-mqtt-publish-qos`); AMQP messages without it get the
/// subscription's (RabbitMQ 3.10).
pub fn delivery_qos(subscription: QoS, published: Option<u8>) -> QoS {
    match (subscription, published) {
        (QoS::AtMostOnce, _) | (_, Some(0)) => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// What kind of session a CONNECT asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKind {
    /// Start from nothing (discard a previous session's queues).
    pub clean_start: bool,
    /// Keep the session (its queues) after the connection ends, for this many seconds
    /// (`None`: not kept).
    pub expiry_secs: Option<u32>,
}

impl SessionKind {
    /// 3.1.1's clean session flag, or 5.0's clean start and session expiry interval; the
    /// expiry is capped at `max_expiry_secs` (RabbitMQ's subscription TTL).
    pub fn from_connect(
        version: ProtocolVersion,
        clean: bool,
        expiry: Option<u32>,
        max_expiry_secs: u32,
    ) -> SessionKind {
        let expiry_secs = match version {
            ProtocolVersion::V5 => match expiry.unwrap_or(0) {
                0 => None,
                s => Some(s.min(max_expiry_secs)),
            },
            _ => (!clean).then_some(max_expiry_secs),
        };
        SessionKind {
            clean_start: clean,
            expiry_secs,
        }
    }

    pub fn persistent(self) -> bool {
        self.expiry_secs.is_some()
    }
}

/// The client identifier a connection uses: its own, or one assigned for an empty one.
/// `Err` is the refusal (3.1.1: an empty id needs clean session; 3.1: an id of 1..=23
/// characters is all the spec promises, RabbitMQ accepts longer ones).
pub fn client_id(
    version: ProtocolVersion,
    given: &str,
    clean: bool,
    assign: impl FnOnce() -> String,
) -> Result<(String, bool), ReasonCode> {
    if !given.is_empty() {
        return Ok((given.to_owned(), false));
    }
    match version {
        ProtocolVersion::V5 => Ok((assign(), true)),
        _ if clean => Ok((assign(), true)),
        _ => Err(ReasonCode::ClientIdentifierNotValid),
    }
}

/// `vhost:user` (RabbitMQ's form) → (vhost, user); a plain user keeps the default vhost.
pub fn split_vhost<'a>(username: &'a str, default_vhost: &'a str) -> (&'a str, &'a str) {
    match username.split_once(':') {
        Some((vhost, user)) if !vhost.is_empty() => (vhost, user),
        _ => (default_vhost, username),
    }
}

/// The keep-alive rule: a client that sends nothing for 1.5 × keep-alive is disconnected
/// (0: no limit). Returns milliseconds.
pub fn keep_alive_timeout_ms(keep_alive_secs: u16) -> Option<u64> {
    (keep_alive_secs > 0).then(|| u64::from(keep_alive_secs) * 1500)
}

/// One subscription of the session (for subscription identifiers, no-local and retain
/// handling; the broker's bindings are the durable record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// Errors the session reports; the connection closes (5.0: DISCONNECT with the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("topic alias {0} out of range")]
    TopicAliasInvalid(u16),
    #[error("topic alias {0} not set")]
    TopicAliasUnknown(u16),
    #[error("too many unacknowledged QoS 1 publishes")]
    ReceiveMaximumExceeded,
}

impl SessionError {
    pub fn reason_code(self) -> ReasonCode {
        match self {
            SessionError::TopicAliasInvalid(_) => ReasonCode::TopicAliasInvalid,
            SessionError::TopicAliasUnknown(_) => ReasonCode::ProtocolError,
            SessionError::ReceiveMaximumExceeded => ReasonCode::ReceiveMaximumExceeded,
        }
    }
}

/// An inbound QoS 1 publish waiting for its PUBACK.
#[derive(Debug)]
struct PendingAck {
    seq: u64,
    packet_id: u16,
    reason: Option<ReasonCode>,
}

/// The connection's session state. `T` is what an in-flight outbound QoS 1 delivery
/// settles (the queue delivery; `()` in tests).
#[derive(Debug)]
pub struct Session<T> {
    next_packet_id: u16,
    /// Outbound QoS 1 publishes not yet acknowledged by PUBACK.
    in_flight: HashMap<u16, Option<T>>,
    /// Inbound QoS 1 publishes in arrival order; PUBACKs leave in this order (3.1.1 §4.6).
    pending: VecDeque<PendingAck>,
    next_seq: u64,
    max_pending: usize,
    /// Client → server topic aliases.
    aliases: HashMap<u16, String>,
    alias_max: u16,
    pub subscriptions: BTreeMap<String, Sub>,
}

impl<T> Session<T> {
    /// `alias_max`: the Topic Alias Maximum the server announced; `max_pending`: inbound
    /// QoS 1 publishes that may wait for the disk at once (5.0: the server's Receive
    /// Maximum).
    pub fn new(alias_max: u16, max_pending: usize) -> Self {
        Session {
            next_packet_id: 0,
            in_flight: HashMap::new(),
            pending: VecDeque::new(),
            next_seq: 0,
            max_pending,
            aliases: HashMap::new(),
            alias_max,
            subscriptions: BTreeMap::new(),
        }
    }

    // ---- outbound (server → client) QoS 1 ----

    /// A packet identifier for a QoS 1 delivery, recorded as in flight with what its PUBACK
    /// settles. `None` when all 65,535 are in use (cannot happen below that many unacked).
    pub fn send_qos1(&mut self, settle: Option<T>) -> Option<u16> {
        if self.in_flight.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                continue;
            }
            if !self.in_flight.contains_key(&self.next_packet_id) {
                break;
            }
        }
        self.in_flight.insert(self.next_packet_id, settle);
        Some(self.next_packet_id)
    }

    /// The client's PUBACK: what to settle (`None` for an unknown id, which is ignored as
    /// RabbitMQ does; `Some(None)` for a retained message that settles nothing).
    pub fn puback(&mut self, packet_id: u16) -> Option<Option<T>> {
        self.in_flight.remove(&packet_id)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Everything in flight (the connection ends: requeued).
    pub fn take_in_flight(&mut self) -> Vec<T> {
        self.in_flight.drain().filter_map(|(_, t)| t).collect()
    }

    // ---- inbound (client → server) QoS 1 ----

    /// A QoS 1 publish arrived: its sequence number, for [`Session::publish_done`].
    pub fn publish_received(&mut self, packet_id: u16) -> Result<u64, SessionError> {
        if self.pending.len() >= self.max_pending {
            return Err(SessionError::ReceiveMaximumExceeded);
        }
        self.next_seq += 1;
        self.pending.push_back(PendingAck {
            seq: self.next_seq,
            packet_id,
            reason: None,
        });
        Ok(self.next_seq)
    }

    /// Publish `seq` is safely enqueued (or failed, `reason`): the PUBACKs that may go now,
    /// in arrival order.
    pub fn publish_done(&mut self, seq: u64, reason: ReasonCode) -> Vec<(u16, ReasonCode)> {
        if let Some(p) = self.pending.iter_mut().find(|p| p.seq == seq) {
            p.reason = Some(reason);
        }
        let mut out = Vec::new();
        while let Some(reason) = self.pending.front().and_then(|p| p.reason) {
            if let Some(p) = self.pending.pop_front() {
                out.push((p.packet_id, reason));
            }
        }
        out
    }

    pub fn publishes_waiting(&self) -> usize {
        self.pending.len()
    }

    // ---- topic aliases ----

    /// The topic of an inbound PUBLISH: its own (setting the alias when it has one), or the
    /// one its alias stands for.
    pub fn resolve_topic(
        &mut self,
        topic: &str,
        alias: Option<u16>,
    ) -> Result<String, SessionError> {
        let Some(alias) = alias else {
            return Ok(topic.to_owned());
        };
        if alias == 0 || alias > self.alias_max {
            return Err(SessionError::TopicAliasInvalid(alias));
        }
        if topic.is_empty() {
            return self
                .aliases
                .get(&alias)
                .cloned()
                .ok_or(SessionError::TopicAliasUnknown(alias));
        }
        self.aliases.insert(alias, topic.to_owned());
        Ok(topic.to_owned())
    }

    // ---- subscriptions ----

    /// The subscription identifiers of this session's subscriptions of QoS class `qos`
    /// (0, or 1 for 1 and 2) that match `topic_name`, for a delivery from that queue.
    pub fn subscription_ids(&self, topic_name: &str, qos: QoS) -> Vec<u32> {
        let class = granted_qos(qos);
        let mut ids: Vec<u32> = self
            .subscriptions
            .iter()
            .filter(|(f, s)| {
                granted_qos(s.options.qos) == class && topic::topic_matches(f, topic_name)
            })
            .filter_map(|(_, s)| s.identifier)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether every subscription matching `topic_name` is no-local (a message this
    /// connection published is then not delivered back to it).
    pub fn no_local(&self, topic_name: &str) -> bool {
        let mut matching = self
            .subscriptions
            .iter()
            .filter(|(f, _)| topic::topic_matches(f, topic_name))
            .peekable();
        matching.peek().is_some() && matching.all(|(_, s)| s.options.no_local)
    }

    /// Whether a subscription matching `topic_name` asks for Retain As Published.
    pub fn retain_as_published(&self, topic_name: &str) -> bool {
        self.subscriptions
            .iter()
            .any(|(f, s)| s.options.retain_as_published && topic::topic_matches(f, topic_name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pier_mqtt_wire::RetainHandling;

    fn opts(qos: QoS, no_local: bool) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut s: Session<u32> = Session::new(0, 10);
        assert_eq!(s.send_qos1(Some(1)), Some(1));
        assert_eq!(s.send_qos1(Some(2)), Some(2));
        s.next_packet_id = u16::MAX;
        assert_eq!(
            s.send_qos1(None),
            Some(3),
            "wraps past 0 and the ids in use"
        );
        assert_eq!(s.puback(2), Some(Some(2)));
        assert_eq!(s.puback(2), None, "a second PUBACK is ignored");
        assert_eq!(s.puback(3), Some(None));
        assert_eq!(s.in_flight(), 1);
        assert_eq!(s.take_in_flight(), vec![1]);
    }

    #[test]
    fn pubacks_leave_in_arrival_order() {
        let mut s: Session<()> = Session::new(0, 3);
        let a = s.publish_received(10).unwrap();
        let b = s.publish_received(11).unwrap();
        let c = s.publish_received(12).unwrap();
        assert_eq!(
            s.publish_received(13),
            Err(SessionError::ReceiveMaximumExceeded)
        );
        assert!(s.publish_done(b, ReasonCode::Success).is_empty());
        assert_eq!(
            s.publish_done(a, ReasonCode::NoMatchingSubscribers),
            vec![
                (10, ReasonCode::NoMatchingSubscribers),
                (11, ReasonCode::Success)
            ]
        );
        assert_eq!(
            s.publish_done(c, ReasonCode::Success),
            vec![(12, ReasonCode::Success)]
        );
        assert_eq!(s.publishes_waiting(), 0);
    }

    #[test]
    fn topic_aliases() {
        let mut s: Session<()> = Session::new(2, 1);
        assert_eq!(s.resolve_topic("a/b", None).unwrap(), "a/b");
        assert_eq!(s.resolve_topic("a/b", Some(1)).unwrap(), "a/b");
        assert_eq!(s.resolve_topic("", Some(1)).unwrap(), "a/b");
        assert_eq!(s.resolve_topic("c", Some(1)).unwrap(), "c");
        assert_eq!(s.resolve_topic("", Some(1)).unwrap(), "c");
        assert_eq!(
            s.resolve_topic("", Some(2)),
            Err(SessionError::TopicAliasUnknown(2))
        );
        assert_eq!(
            s.resolve_topic("x", Some(3)),
            Err(SessionError::TopicAliasInvalid(3))
        );
        assert_eq!(
            SessionError::TopicAliasInvalid(3).reason_code(),
            ReasonCode::TopicAliasInvalid
        );
    }

    #[test]
    fn subscription_ids_and_no_local() {
        let mut s: Session<()> = Session::new(0, 1);
        s.subscriptions.insert(
            "a/+".into(),
            Sub {
                options: opts(QoS::AtLeastOnce, false),
                identifier: Some(7),
            },
        );
        s.subscriptions.insert(
            "a/#".into(),
            Sub {
                options: opts(QoS::ExactlyOnce, true),
                identifier: Some(3),
            },
        );
        s.subscriptions.insert(
            "b".into(),
            Sub {
                options: opts(QoS::AtMostOnce, true),
                identifier: Some(9),
            },
        );
        assert_eq!(s.subscription_ids("a/x", QoS::AtLeastOnce), vec![3, 7]);
        assert_eq!(s.subscription_ids("a/x/y", QoS::AtLeastOnce), vec![3]);
        assert!(s.subscription_ids("a/x", QoS::AtMostOnce).is_empty());
        assert!(
            !s.no_local("a/x"),
            "one matching subscription is not no-local"
        );
        assert!(s.no_local("a/x/y"));
        assert!(s.no_local("b"));
        assert!(!s.no_local("c"), "nothing matches");
        assert!(!s.retain_as_published("a/x"));
        s.subscriptions.insert(
            "a/x".into(),
            Sub {
                options: SubscriptionOptions {
                    retain_as_published: true,
                    ..opts(QoS::AtMostOnce, false)
                },
                identifier: None,
            },
        );
        assert!(s.retain_as_published("a/x"));
        assert!(!s.retain_as_published("a/y"));
    }

    #[test]
    fn connect_decisions() {
        use ProtocolVersion::*;
        let assign = || "gen".to_owned();
        assert_eq!(
            client_id(V3_1_1, "c", false, assign),
            Ok(("c".into(), false))
        );
        assert_eq!(
            client_id(V3_1_1, "", true, assign),
            Ok(("gen".into(), true))
        );
        assert_eq!(
            client_id(V3_1_1, "", false, assign),
            Err(ReasonCode::ClientIdentifierNotValid)
        );
        assert_eq!(client_id(V5, "", false, assign), Ok(("gen".into(), true)));
        let day = 86_400;
        assert!(!SessionKind::from_connect(V3_1_1, true, None, day).persistent());
        assert_eq!(
            SessionKind::from_connect(V3_1_1, false, None, day).expiry_secs,
            Some(day)
        );
        assert_eq!(
            SessionKind::from_connect(V5, true, Some(10), day).expiry_secs,
            Some(10)
        );
        assert_eq!(
            SessionKind::from_connect(V5, false, Some(u32::MAX), day).expiry_secs,
            Some(day)
        );
        assert!(!SessionKind::from_connect(V5, false, None, day).persistent());
        assert_eq!(split_vhost("other:alice", "/"), ("other", "alice"));
        assert_eq!(split_vhost("alice", "/"), ("/", "alice"));
        assert_eq!(keep_alive_timeout_ms(10), Some(15_000));
        assert_eq!(keep_alive_timeout_ms(0), None);
        assert_eq!(queue_name("c", QoS::ExactlyOnce), "mqtt-subscription-cqos1");
        assert_eq!(granted_qos(QoS::ExactlyOnce), QoS::AtLeastOnce);
        assert_eq!(delivery_qos(QoS::AtLeastOnce, Some(0)), QoS::AtMostOnce);
        assert_eq!(delivery_qos(QoS::AtLeastOnce, None), QoS::AtLeastOnce);
        assert_eq!(delivery_qos(QoS::AtMostOnce, Some(1)), QoS::AtMostOnce);
    }
}
