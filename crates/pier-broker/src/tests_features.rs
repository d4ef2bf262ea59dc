//! RabbitMQ's queue and exchange extensions without sockets: TTL, queue expiry, length limits,
//! dead lettering, priorities, alternate exchanges, sender-selected distribution, single active
//! consumer. Time moves with `Clock::advance`, never with sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pier_wire::{BasicProperties, FieldTable, FieldValue, LongString, ShortString};

use crate::consumer::ChannelCredit;
use crate::message::Message;
use crate::queue::{Published, Queue};
use crate::tests::{declare, msg, spec, RecordingSink};
use crate::vhost::{ExchangeDeclare, QueueDeclare, VHost};

fn s(v: &str) -> FieldValue {
    FieldValue::LongString(LongString::from(v))
}

fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in pairs {
        t.insert(*k, v.clone());
    }
    t
}

fn declare_with(vh: &VHost, name: &str, arguments: FieldTable) -> Arc<Queue> {
    vh.declare_queue(&QueueDeclare {
        name: ShortString::from(name),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments,
        connection: 1,
    })
    .unwrap()
    .queue
}

fn msg_with(body: &str, props: BasicProperties) -> Arc<Message> {
    Arc::new(Message::new(
        ShortString::from(""),
        ShortString::from("k"),
        props,
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

fn expiring(body: &str, expiration: &str) -> Arc<Message> {
    msg_with(
        body,
        BasicProperties {
            expiration: Some(ShortString::from(expiration)),
            ..BasicProperties::default()
        },
    )
}

fn prio(body: &str, p: u8) -> Arc<Message> {
    msg_with(
        body,
        BasicProperties {
            priority: Some(p),
            ..BasicProperties::default()
        },
    )
}

fn body_of(q: &Arc<Queue>) -> Option<String> {
    q.get(false)
        .map(|(d, _)| String::from_utf8_lossy(&d.message.body).into_owned())
}

fn drain(q: &Arc<Queue>) -> Vec<String> {
    std::iter::from_fn(|| body_of(q)).collect()
}

fn advance(vh: &VHost, ms: u64) {
    vh.clock().advance(Duration::from_millis(ms));
}

fn x_death(m: &Message) -> Vec<FieldTable> {
    m.properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
        .and_then(FieldValue::as_array)
        .unwrap_or_default()
        .iter()
        .map(|v| v.as_table().unwrap().clone())
        .collect()
}

/// A dead-letter queue reached through the default exchange.
fn with_dlq(
    vh: &VHost,
    name: &str,
    mut extra: Vec<(&str, FieldValue)>,
) -> (Arc<Queue>, Arc<Queue>) {
    let dlq = declare(vh, &format!("{name}.dlq"));
    extra.push(("x-dead-letter-exchange", s("")));
    extra.push(("x-dead-letter-routing-key", s(&format!("{name}.dlq"))));
    let q = declare_with(vh, name, args(&extra));
    (q, dlq)
}

// ---- TTL ----

#[test]
fn queue_ttl_expires_without_consumers() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "q",
        args(&[("x-message-ttl", FieldValue::LongInt(100))]),
    );
    q.publish(msg("a"));
    q.publish(msg("b"));
    advance(&vh, 50);
    vh.tick();
    assert_eq!(q.stats().ready, 2);
    advance(&vh, 100);
    vh.tick();
    assert_eq!(q.stats().ready, 0, "removed by the tick");
}

#[test]
fn expired_head_is_never_delivered_even_before_a_tick() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "q",
        args(&[("x-message-ttl", FieldValue::LongInt(100))]),
    );
    q.publish(msg("old"));
    advance(&vh, 150);
    q.publish(msg("new"));
    assert_eq!(drain(&q), ["new"]);
}

#[test]
fn lower_of_queue_and_message_ttl_wins() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "q",
        args(&[("x-message-ttl", FieldValue::LongInt(1000))]),
    );
    q.publish(expiring("short", "50"));
    q.publish(expiring("long", "5000"));
    advance(&vh, 100);
    vh.tick();
    assert_eq!(q.stats().ready, 1);
    advance(&vh, 1000);
    vh.tick();
    assert_eq!(q.stats().ready, 0, "the queue TTL caps the message's");
}

#[test]
fn per_message_ttl_only_expires_at_the_head() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    q.publish(msg("forever"));
    q.publish(expiring("brief", "10"));
    advance(&vh, 50);
    vh.tick();
    assert_eq!(
        q.stats().ready,
        2,
        "RabbitMQ only expires messages at the head"
    );
    assert_eq!(drain(&q), ["forever"], "but never delivers an expired one");
}

#[test]
fn ttl_zero_is_delivered_only_if_a_consumer_takes_it_now() {
    let vh = VHost::new("/");
    let (q, dlq) = with_dlq(&vh, "q", vec![("x-message-ttl", FieldValue::LongInt(0))]);
    q.publish(msg("nobody"));
    assert_eq!(q.stats().ready, 0);
    assert_eq!(drain(&dlq), ["nobody"], "expired at once, dead-lettered");
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    q.add_consumer(spec("c", &sink, 0, &credit), || {}).unwrap();
    q.publish(msg("taken"));
    assert_eq!(sink.bodies(), ["taken"]);
    assert_eq!(dlq.stats().ready, 0);
}

#[test]
fn requeued_message_keeps_its_expiry() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "q",
        args(&[("x-message-ttl", FieldValue::LongInt(100))]),
    );
    q.publish(msg("m"));
    let (d, _) = q.get(true).unwrap();
    advance(&vh, 150);
    q.requeue(&[d.offset], false);
    assert_eq!(q.stats().unacked, 0);
    assert!(
        q.get(false).is_none(),
        "expired while unacked, dropped once back"
    );
}

#[test]
fn acked_messages_forget_their_expiry() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "q",
        args(&[("x-message-ttl", FieldValue::LongInt(100))]),
    );
    q.publish(msg("m"));
    let (d, _) = q.get(true).unwrap();
    q.settle(&[d.offset]);
    assert_eq!(q.stats().unacked, 0);
}

// ---- queue expiry ----

#[test]
fn unused_queue_expires() {
    let vh = VHost::new("/");
    let q = declare_with(&vh, "q", args(&[("x-expires", FieldValue::LongInt(100))]));
    q.publish(msg("kept until the queue goes"));
    advance(&vh, 60);
    // Redeclaring (and basic.get) count as use.
    declare_with(&vh, "q", args(&[("x-expires", FieldValue::LongInt(100))]));
    advance(&vh, 60);
    vh.tick();
    assert!(vh.queue("q", 1).is_ok());
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let id = q.add_consumer(spec("c", &sink, 0, &credit), || {}).unwrap();
    advance(&vh, 500);
    vh.tick();
    assert!(vh.queue("q", 1).is_ok(), "a consumed queue is in use");
    q.remove_consumer(id);
    advance(&vh, 101);
    vh.tick();
    assert!(vh.queue("q", 1).is_err(), "deleted after the unused period");
    assert!(q.is_deleted());
}

// ---- length limits ----

#[test]
fn max_length_drops_and_dead_letters_the_head() {
    let vh = VHost::new("/");
    let (q, dlq) = with_dlq(&vh, "q", vec![("x-max-length", FieldValue::LongInt(2))]);
    for b in ["1", "2", "3", "4"] {
        assert_eq!(q.publish(msg(b)), Published::Accepted);
    }
    assert_eq!(q.stats().ready, 2);
    let dead: Vec<_> = std::iter::from_fn(|| dlq.get(false))
        .map(|(d, _)| d)
        .collect();
    assert_eq!(dead.len(), 2);
    assert_eq!(&dead[0].message.body[..], b"1");
    let xd = x_death(&dead[0].message);
    assert_eq!(xd[0].get("reason").unwrap().as_str(), Some("maxlen"));
    assert_eq!(drain(&q), ["3", "4"]);
}

#[test]
fn max_length_bytes_counts_bodies() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "q",
        args(&[("x-max-length-bytes", FieldValue::LongInt(10))]),
    );
    q.publish(msg("12345"));
    q.publish(msg("67890"));
    q.publish(msg("abc"));
    assert_eq!(drain(&q), ["67890", "abc"]);
}

#[test]
fn unacked_messages_do_not_count_towards_the_limit() {
    let vh = VHost::new("/");
    let q = declare_with(&vh, "q", args(&[("x-max-length", FieldValue::LongInt(1))]));
    q.publish(msg("a"));
    let _held = q.get(true).unwrap();
    q.publish(msg("b"));
    assert_eq!(q.stats().ready, 1);
    assert_eq!(q.stats().unacked, 1);
}

#[test]
fn reject_publish_refuses_new_messages() {
    let vh = VHost::new("/");
    let (q, dlq) = with_dlq(
        &vh,
        "q",
        vec![
            ("x-max-length", FieldValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ],
    );
    assert_eq!(q.publish(msg("a")), Published::Accepted);
    assert_eq!(q.publish(msg("b")), Published::Rejected);
    assert_eq!(drain(&q), ["a"]);
    assert_eq!(dlq.stats().ready, 0, "reject-publish does not dead-letter");

    let (q2, dlq2) = with_dlq(
        &vh,
        "q2",
        vec![
            ("x-max-length", FieldValue::LongInt(1)),
            ("x-overflow", s("reject-publish-dlx")),
        ],
    );
    q2.publish(msg("a"));
    assert_eq!(q2.publish(msg("b")), Published::Rejected);
    let (d, _) = dlq2.get(false).unwrap();
    assert_eq!(&d.message.body[..], b"b");
    assert_eq!(
        x_death(&d.message)[0].get("reason").unwrap().as_str(),
        Some("maxlen")
    );
}

// ---- dead lettering ----

#[test]
fn rejected_messages_are_dead_lettered_with_history() {
    let vh = VHost::new("/");
    vh.declare_exchange(&ExchangeDeclare {
        name: "dlx".into(),
        kind: "fanout".into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::new(),
    })
    .unwrap();
    let dlq = declare(&vh, "dlq");
    vh.bind_queue("dlq", "dlx", "".into(), FieldTable::new(), 1)
        .unwrap();
    let q = declare_with(&vh, "work", args(&[("x-dead-letter-exchange", s("dlx"))]));
    q.publish(expiring("m", "60000"));
    let (d, _) = q.get(true).unwrap();
    q.reject(&[d.offset]);
    assert_eq!(q.stats().unacked, 0);
    let (dl, _) = dlq.get(false).unwrap();
    assert_eq!(dl.message.exchange, "dlx");
    assert_eq!(dl.message.routing_key, "k");
    assert_eq!(dl.message.properties.expiration, None);
    let xd = x_death(&dl.message);
    assert_eq!(xd.len(), 1);
    assert_eq!(xd[0].get("reason").unwrap().as_str(), Some("rejected"));
    assert_eq!(xd[0].get("queue").unwrap().as_str(), Some("work"));
    assert_eq!(xd[0].get("count").unwrap().as_i64(), Some(1));
    assert_eq!(
        xd[0].get("original-expiration").unwrap().as_str(),
        Some("60000")
    );
}

#[test]
fn expired_messages_are_dead_lettered_by_the_tick() {
    let vh = VHost::new("/");
    let (q, dlq) = with_dlq(&vh, "q", vec![("x-message-ttl", FieldValue::LongInt(100))]);
    q.publish(msg("m"));
    advance(&vh, 150);
    vh.tick();
    let (d, _) = dlq.get(false).unwrap();
    assert_eq!(d.message.routing_key, "q.dlq");
    let h = d.message.properties.headers.as_ref().unwrap();
    assert_eq!(
        h.get("x-first-death-reason").unwrap().as_str(),
        Some("expired")
    );
    assert_eq!(h.get("x-first-death-queue").unwrap().as_str(), Some("q"));
}

#[test]
fn expiry_cycle_back_to_the_same_queue_is_dropped() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "loop",
        args(&[
            ("x-message-ttl", FieldValue::LongInt(10)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("loop")),
        ]),
    );
    q.publish(msg("m"));
    advance(&vh, 20);
    vh.tick();
    assert_eq!(q.stats().ready, 0, "dropped, not looping");
}

#[test]
fn rejection_cycles_are_allowed() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "again",
        args(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("again")),
        ]),
    );
    q.publish(msg("m"));
    let (d, _) = q.get(true).unwrap();
    q.reject(&[d.offset]);
    let (d, _) = q.get(true).unwrap();
    assert_eq!(
        x_death(&d.message)[0].get("count").unwrap().as_i64(),
        Some(1)
    );
    q.reject(&[d.offset]);
    let (d, _) = q.get(false).unwrap();
    assert_eq!(
        x_death(&d.message)[0].get("count").unwrap().as_i64(),
        Some(2)
    );
}

#[test]
fn two_full_queues_dead_lettering_into_each_other_terminate() {
    let vh = VHost::new("/");
    let a = declare_with(
        &vh,
        "a",
        args(&[
            ("x-max-length", FieldValue::LongInt(1)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("b")),
        ]),
    );
    let b = declare_with(
        &vh,
        "b",
        args(&[
            ("x-max-length", FieldValue::LongInt(1)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("a")),
        ]),
    );
    for i in 0..5 {
        a.publish(msg(&i.to_string()));
        b.publish(msg(&format!("b{i}")));
    }
    assert_eq!(a.stats().ready, 1);
    assert_eq!(b.stats().ready, 1);
}

#[test]
fn missing_dead_letter_exchange_drops() {
    let vh = VHost::new("/");
    let q = declare_with(&vh, "q", args(&[("x-dead-letter-exchange", s("nowhere"))]));
    q.publish(msg("m"));
    let (d, _) = q.get(true).unwrap();
    q.reject(&[d.offset]);
    assert_eq!(q.stats().ready, 0);
}

// ---- priorities ----

#[test]
fn priority_queue_serves_highest_first_fifo_within() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "q",
        args(&[("x-max-priority", FieldValue::LongInt(5))]),
    );
    q.publish(prio("p1", 1));
    q.publish(prio("p9-clamped-a", 9));
    q.publish(msg("p0"));
    q.publish(prio("p5-b", 5));
    q.publish(prio("p3", 3));
    assert_eq!(drain(&q), ["p9-clamped-a", "p5-b", "p3", "p1", "p0"]);
}

#[test]
fn priority_requeue_keeps_position_within_priority() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "q",
        args(&[("x-max-priority", FieldValue::LongInt(3))]),
    );
    for b in ["h1", "h2"] {
        q.publish(prio(b, 3));
    }
    q.publish(prio("l1", 1));
    let (d1, _) = q.get(true).unwrap();
    let (d2, _) = q.get(true).unwrap();
    q.publish(prio("h3", 3));
    q.requeue(&[d2.offset, d1.offset], false);
    assert_eq!(drain(&q), ["h1", "h2", "h3", "l1"]);
}

#[test]
fn no_priority_queue_ignores_priorities() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    q.publish(prio("a", 1));
    q.publish(prio("b", 9));
    assert_eq!(drain(&q), ["a", "b"]);
}

// ---- exchanges ----

fn xdeclare_args(vh: &VHost, name: &str, kind: &str, arguments: FieldTable) {
    vh.declare_exchange(&ExchangeDeclare {
        name: ShortString::from(name),
        kind: kind.to_owned(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments,
    })
    .unwrap();
}

fn route_names(vh: &VHost, x: &str, key: &str, headers: Option<&FieldTable>) -> Vec<String> {
    let mut out = Vec::new();
    vh.route(x, key, headers, &mut out).unwrap();
    let mut names: Vec<String> = out.iter().map(|q| q.name().to_string()).collect();
    names.sort();
    names
}

#[test]
fn alternate_exchange_takes_unroutable_messages() {
    let vh = VHost::new("/");
    xdeclare_args(&vh, "ae", "fanout", FieldTable::new());
    xdeclare_args(
        &vh,
        "main",
        "direct",
        args(&[("alternate-exchange", s("ae"))]),
    );
    declare(&vh, "routed");
    declare(&vh, "unroutable");
    vh.bind_queue("routed", "main", "k".into(), FieldTable::new(), 1)
        .unwrap();
    vh.bind_queue("unroutable", "ae", "".into(), FieldTable::new(), 1)
        .unwrap();
    assert_eq!(route_names(&vh, "main", "k", None), ["routed"]);
    assert_eq!(route_names(&vh, "main", "other", None), ["unroutable"]);
    // An AE pointing back at itself does not loop.
    xdeclare_args(
        &vh,
        "self",
        "direct",
        args(&[("alternate-exchange", s("self"))]),
    );
    assert!(route_names(&vh, "self", "x", None).is_empty());
}

#[test]
fn cc_and_bcc_add_routing_keys() {
    let vh = VHost::new("/");
    for n in ["a", "b", "c"] {
        declare(&vh, n);
    }
    let mut h = FieldTable::new();
    h.insert("CC", FieldValue::Array(vec![s("b")]));
    h.insert(
        "BCC",
        FieldValue::Array(vec![s("c"), FieldValue::LongInt(1)]),
    );
    assert_eq!(route_names(&vh, "", "a", Some(&h)), ["a", "b", "c"]);
    let mut bad = FieldTable::new();
    bad.insert("CC", s("b"));
    let err = vh.route("", "a", Some(&bad), &mut Vec::new()).unwrap_err();
    assert_eq!(
        err.reply_text(),
        "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"CC\",longstr}"
    );
}

// ---- consumers ----

#[test]
fn single_active_consumer_fails_over_in_order() {
    let vh = VHost::new("/");
    let q = declare_with(
        &vh,
        "q",
        args(&[("x-single-active-consumer", FieldValue::Bool(true))]),
    );
    let a = Arc::new(RecordingSink::default());
    let b = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let ida = q.add_consumer(spec("a", &a, 0, &credit), || {}).unwrap();
    q.add_consumer(spec("b", &b, 0, &credit), || {}).unwrap();
    for i in 0..3 {
        q.publish(msg(&i.to_string()));
    }
    assert_eq!(a.bodies(), ["0", "1", "2"]);
    assert!(b.bodies().is_empty());
    assert_eq!(q.active_consumer_tag().as_deref(), Some("a"));
    q.remove_consumer(ida);
    q.publish(msg("3"));
    assert_eq!(b.bodies(), ["3"]);
}

// ---- delayed message exchange ----

fn delayed_headers(delay: i64) -> BasicProperties {
    let mut h = FieldTable::new();
    h.insert("x-delay", FieldValue::LongLongInt(delay));
    BasicProperties {
        headers: Some(h),
        ..BasicProperties::default()
    }
}

fn to_exchange(x: &str, key: &str, props: BasicProperties, body: &str) -> Arc<Message> {
    Arc::new(Message::new(
        ShortString::from(x),
        ShortString::from(key),
        props,
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

#[test]
fn delayed_exchange_holds_messages_until_due() {
    let vh = VHost::new("/");
    xdeclare_args(
        &vh,
        "later",
        "x-delayed-message",
        args(&[("x-delayed-type", s("direct"))]),
    );
    let q = declare(&vh, "q");
    vh.bind_queue("q", "later", "k".into(), FieldTable::new(), 1)
        .unwrap();
    let slow = to_exchange("later", "k", delayed_headers(200), "slow");
    let fast = to_exchange("later", "k", delayed_headers(100), "fast");
    let now = to_exchange("later", "k", delayed_headers(0), "now");
    assert!(vh.delay(&slow, None));
    assert!(vh.delay(&fast, None));
    assert!(!vh.delay(&now, None), "x-delay <= 0 routes at once");
    assert_eq!(vh.delayed_count(), 2);
    advance(&vh, 150);
    vh.tick();
    let (d, _) = q.get(false).unwrap();
    assert_eq!(&d.message.body[..], b"fast");
    let h = d.message.properties.headers.as_ref().unwrap();
    assert_eq!(h.get("x-delay"), Some(&FieldValue::LongInt(-100)));
    advance(&vh, 100);
    vh.tick();
    assert_eq!(drain(&q), ["slow"]);
    assert_eq!(vh.delayed_count(), 0);
}

#[test]
fn delayed_exchange_declaration_rules() {
    let vh = VHost::new("/");
    let declare = |kind: &str, a: FieldTable| {
        vh.declare_exchange(&ExchangeDeclare {
            name: "d".into(),
            kind: kind.into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: a,
        })
    };
    assert_eq!(
        declare("x-delayed-message", FieldTable::new())
            .unwrap_err()
            .reply_text(),
        "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type"
    );
    assert_eq!(
        declare(
            "x-delayed-message",
            args(&[("x-delayed-type", s("x-delayed-message"))])
        )
        .unwrap_err()
        .reply_code(),
        406
    );
    declare("x-delayed-message", args(&[("x-delayed-type", s("topic"))])).unwrap();
    let e = declare("topic", FieldTable::new()).unwrap_err();
    assert!(e
        .reply_text()
        .contains("received 'topic' but current is 'x-delayed-message'"));
}

// ---- policies ----

#[test]
fn policies_apply_to_matching_queues_and_exchanges() {
    use crate::policy::{ApplyTo, Policy, PolicyDefinition};
    let vh = VHost::new("/");
    vh.set_policy(
        Policy::new(
            "short-lived",
            "^tmp\\.",
            ApplyTo::Queues,
            1,
            PolicyDefinition {
                message_ttl: Some(100),
                max_length: Some(1),
                ..PolicyDefinition::default()
            },
        )
        .unwrap(),
    );
    let q = declare(&vh, "tmp.q");
    let other = declare(&vh, "kept");
    assert_eq!(q.config().message_ttl, Some(100));
    assert_eq!(other.config().message_ttl, None);
    q.publish(msg("a"));
    q.publish(msg("b"));
    assert_eq!(q.stats().ready, 1, "max-length from the policy");
    advance(&vh, 150);
    vh.tick();
    assert_eq!(q.stats().ready, 0, "message-ttl from the policy");
    // A queue argument lower than the policy's wins; a higher one loses.
    let low = declare_with(
        &vh,
        "tmp.low",
        args(&[("x-message-ttl", FieldValue::LongInt(10))]),
    );
    let high = declare_with(
        &vh,
        "tmp.high",
        args(&[("x-message-ttl", FieldValue::LongInt(1000))]),
    );
    assert_eq!(low.config().message_ttl, Some(10));
    assert_eq!(high.config().message_ttl, Some(100));

    xdeclare_args(&vh, "ae", "fanout", FieldTable::new());
    xdeclare_args(&vh, "main", "direct", FieldTable::new());
    declare(&vh, "caught");
    vh.bind_queue("caught", "ae", "".into(), FieldTable::new(), 1)
        .unwrap();
    assert!(route_names(&vh, "main", "k", None).is_empty());
    vh.set_policy(
        Policy::new(
            "ae",
            "^main$",
            ApplyTo::Exchanges,
            0,
            PolicyDefinition {
                alternate_exchange: Some("ae".into()),
                ..PolicyDefinition::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(route_names(&vh, "main", "k", None), ["caught"]);
    assert!(vh.clear_policy("ae"));
    assert!(route_names(&vh, "main", "k", None).is_empty());
}

/// As in RabbitMQ, a policy set, replaced or cleared after declaration reaches existing
/// queues at once: a lower max-length drops the oldest (dead-lettered through the policy's
/// dead-letter settings), and clearing it lets the queue grow again.
#[test]
fn policy_changes_reach_existing_queues() {
    use crate::policy::{ApplyTo, Policy, PolicyDefinition};
    let vh = VHost::new("/");
    let q = declare(&vh, "live.q");
    let dlq = declare(&vh, "dlq");
    for i in 0..20 {
        q.publish(msg(&format!("m{i}")));
    }
    let limit = |n| {
        Policy::new(
            "limit",
            "^live\\.",
            ApplyTo::Queues,
            0,
            PolicyDefinition {
                max_length: Some(n),
                dead_letter_exchange: Some(String::new()),
                dead_letter_routing_key: Some("dlq".into()),
                ..PolicyDefinition::default()
            },
        )
        .unwrap()
    };
    vh.set_policy(limit(5));
    assert_eq!(q.stats().ready, 5);
    assert_eq!(dlq.stats().ready, 15, "the 15 oldest, dead-lettered");
    assert_eq!(q.config().policy.as_deref(), Some("limit"));
    assert_eq!(dlq.config().policy, None);
    // Replaced by a looser one: nothing more is dropped; tighter: dropped again.
    vh.set_policy(limit(8));
    assert_eq!(q.stats().ready, 5);
    vh.set_policy(limit(2));
    assert_eq!((q.stats().ready, dlq.stats().ready), (2, 18));
    assert!(vh.clear_policy("limit"));
    assert_eq!(q.config().policy, None);
    assert_eq!(q.config().max_length, None);
    for i in 0..10 {
        q.publish(msg(&format!("n{i}")));
    }
    assert_eq!(q.stats().ready, 12);
}

// ---- measured time in queue ----

#[test]
fn time_in_queue_is_measured_from_enqueue_to_ack() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    assert_eq!(q.time_in_queue().samples, 0);
    assert_eq!(q.time_in_queue().p50_ms, None);
    q.publish(msg("a"));
    q.publish(msg("b"));
    advance(&vh, 200);
    let (a, _) = q.get(true).unwrap();
    // Unacked: not complete yet.
    assert_eq!(q.time_in_queue().samples, 0);
    advance(&vh, 100);
    q.settle(&[a.offset]);
    let (b, _) = q.get(true).unwrap();
    advance(&vh, 700);
    q.settle(&[b.offset]);
    let t = q.time_in_queue();
    assert_eq!(t.samples, 2);
    let mean = t.mean_ms.unwrap();
    assert!((650.0..=651.0).contains(&mean), "mean {mean}");
    let (p50, p99) = (t.p50_ms.unwrap(), t.p99_ms.unwrap());
    assert!((270.0..=330.0).contains(&p50), "p50 {p50}");
    assert!((900.0..=1100.0).contains(&p99), "p99 {p99}");
    // A minute later the samples have left the window.
    advance(&vh, 61_000);
    assert_eq!(q.time_in_queue().samples, 0);
}

#[test]
fn time_in_queue_counts_autoack_at_delivery_and_survives_requeue() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    q.publish(msg("auto"));
    advance(&vh, 50);
    let _ = q.get(false).unwrap();
    assert_eq!(q.time_in_queue().samples, 1, "no-ack delivery completes it");
    q.publish(msg("requeued"));
    advance(&vh, 400);
    let (d, _) = q.get(true).unwrap();
    q.requeue(&[d.offset], false);
    advance(&vh, 400);
    let (d, _) = q.get(true).unwrap();
    q.settle(&[d.offset]);
    let t = q.time_in_queue();
    assert_eq!(t.samples, 2);
    // 50 and 800 ms: the requeue kept the original enqueue time.
    let p99 = t.p99_ms.unwrap();
    assert!((720.0..=880.0).contains(&p99), "p99 {p99}");
}

/// Every entry point goes through `VHost::publish`: a client's publish, the broker's own,
/// a dead letter and a due delayed message all strip BCC and honour x-delay alike.
#[test]
fn every_entry_point_strips_bcc_and_honours_x_delay() {
    use crate::publish::PublishOptions;
    let vh = VHost::new("/");
    xdeclare_args(
        &vh,
        "later",
        "x-delayed-message",
        args(&[("x-delayed-type", s("direct"))]),
    );
    let target = declare(&vh, "target");
    let hidden = declare(&vh, "hidden");
    vh.bind_queue("target", "later", "k".into(), FieldTable::new(), 1)
        .unwrap();
    vh.bind_queue("hidden", "later", "h".into(), FieldTable::new(), 1)
        .unwrap();
    // Dead letters of this queue go to the delayed exchange.
    let src = declare_with(
        &vh,
        "src",
        args(&[
            ("x-message-ttl", FieldValue::LongInt(0)),
            ("x-dead-letter-exchange", s("later")),
            ("x-dead-letter-routing-key", s("k")),
        ]),
    );
    let mut headers = FieldTable::new();
    headers.insert("x-delay", FieldValue::LongInt(100));
    headers.insert(
        "BCC",
        FieldValue::Array(vec![FieldValue::LongString(LongString::from("h"))]),
    );
    let message = |exchange: &str, key: &str| {
        msg_with(
            "m",
            BasicProperties {
                headers: Some(headers.clone()),
                ..BasicProperties::default()
            },
        )
        .as_ref()
        .clone()
        .with_route(exchange, key)
    };
    let client = vh
        .publish(message("later", "k"), PublishOptions::client())
        .unwrap();
    let internal = vh
        .publish(message("later", "k"), PublishOptions::internal())
        .unwrap();
    assert!(client.delayed && internal.delayed && !client.routed);
    // Through the dead-letter path: expires at once in `src`, then waits in the exchange.
    vh.publish(message("", "src"), PublishOptions::internal())
        .unwrap();
    assert_eq!(src.stats().ready, 0);
    assert_eq!(vh.delayed_count(), 3);
    assert_eq!(target.stats().ready, 0, "nothing before the delay");
    advance(&vh, 150);
    vh.tick();
    assert_eq!(vh.delayed_count(), 0);
    assert_eq!(target.stats().ready, 3);
    assert_eq!(
        hidden.stats().ready,
        2,
        "BCC routed the two direct publishes"
    );
    for q in [&target, &hidden] {
        while let Some((d, _)) = q.get(false) {
            let h = d.message.properties.headers.as_ref().unwrap();
            assert!(!h.contains_key("BCC"), "BCC delivered from {}", q.name());
            assert_eq!(h.get("x-delay"), Some(&FieldValue::LongInt(-100)));
        }
    }
}
