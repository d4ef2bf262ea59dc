//! Broker behaviour without sockets: a recording sink stands where a channel would be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use pier_wire::{BasicProperties, FieldTable, FieldValue, ShortString};

use crate::consumer::{ChannelCredit, ConsumerSpec, Delivery, DeliverySink};
use crate::error::BrokerError;
use crate::message::Message;
use crate::queue::Queue;
use crate::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use crate::Broker;

#[derive(Default)]
pub(crate) struct RecordingSink {
    pub(crate) deliveries: Mutex<Vec<Delivery>>,
    pub(crate) cancelled: Mutex<Vec<ShortString>>,
    pub(crate) blocked: AtomicBool,
    waiters: Mutex<Vec<Weak<Queue>>>,
}

impl DeliverySink for RecordingSink {
    fn deliver(&self, d: Delivery) {
        self.deliveries.lock().unwrap().push(d);
    }
    fn ready(&self) -> bool {
        !self.blocked.load(Ordering::SeqCst)
    }
    fn notify_when_ready(&self, q: Weak<Queue>) {
        self.waiters.lock().unwrap().push(q);
    }
    fn cancelled(&self, tag: &ShortString) {
        self.cancelled.lock().unwrap().push(tag.clone());
    }
}

impl RecordingSink {
    pub(crate) fn bodies(&self) -> Vec<String> {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
            .collect()
    }
    pub(crate) fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.deliveries.lock().unwrap())
    }
    pub(crate) fn unblock(&self) {
        self.blocked.store(false, Ordering::SeqCst);
        for q in self.waiters.lock().unwrap().drain(..) {
            if let Some(q) = q.upgrade() {
                q.dispatch();
            }
        }
    }
}

pub(crate) fn msg(body: &str) -> Arc<Message> {
    Arc::new(Message::new(
        ShortString::from(""),
        ShortString::from("k"),
        BasicProperties::default(),
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

pub(crate) fn spec(
    tag: &str,
    sink: &Arc<RecordingSink>,
    prefetch: u32,
    credit: &Arc<ChannelCredit>,
) -> ConsumerSpec {
    ConsumerSpec {
        tag: ShortString::from(tag),
        connection: 1,
        ack_required: true,
        exclusive: false,
        prefetch,
        priority: 0,
        arguments: FieldTable::new(),
        channel_credit: Arc::clone(credit),
        sink: Arc::clone(sink) as Arc<dyn DeliverySink>,
    }
}

pub(crate) fn declare(vh: &VHost, name: &str) -> Arc<Queue> {
    vh.declare_queue(&QueueDeclare {
        name: ShortString::from(name),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: FieldTable::new(),
        connection: 1,
    })
    .unwrap()
    .queue
}

pub(crate) fn xdeclare(vh: &VHost, name: &str, kind: &str) -> Result<(), BrokerError> {
    vh.declare_exchange(&ExchangeDeclare {
        name: ShortString::from(name),
        kind: kind.to_owned(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::new(),
    })
}

pub(crate) fn routed(vh: &VHost, x: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    vh.route(x, key, None, &mut out).unwrap();
    let mut names: Vec<String> = out.iter().map(|q| q.name().to_string()).collect();
    names.sort();
    names
}

#[test]
fn fifo_and_round_robin() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    let (a, b) = (
        Arc::new(RecordingSink::default()),
        Arc::new(RecordingSink::default()),
    );
    let credit = Arc::new(ChannelCredit::new());
    q.add_consumer(spec("a", &a, 0, &credit), || {}).unwrap();
    q.add_consumer(spec("b", &b, 0, &credit), || {}).unwrap();
    for i in 0..6 {
        q.publish(msg(&i.to_string()));
    }
    assert_eq!(a.bodies(), ["0", "2", "4"]);
    assert_eq!(b.bodies(), ["1", "3", "5"]);
}

#[test]
fn prefetch_holds_back_until_ack() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    let a = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let id = q.add_consumer(spec("a", &a, 2, &credit), || {}).unwrap();
    for i in 0..5 {
        q.publish(msg(&i.to_string()));
    }
    assert_eq!(a.bodies(), ["0", "1"]);
    assert_eq!(q.stats().ready, 3);
    assert_eq!(q.stats().unacked, 2);
    credit.release(1);
    let _ = id;
    q.settle(&[0]);
    assert_eq!(a.bodies(), ["0", "1", "2"]);
}

#[test]
fn channel_prefetch_is_shared_across_consumers() {
    let vh = VHost::new("/");
    let (q1, q2) = (declare(&vh, "q1"), declare(&vh, "q2"));
    let a = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    credit.set_limit(3);
    q1.add_consumer(spec("a1", &a, 0, &credit), || {}).unwrap();
    q2.add_consumer(spec("a2", &a, 0, &credit), || {}).unwrap();
    for i in 0..3 {
        q1.publish(msg(&format!("x{i}")));
        q2.publish(msg(&format!("y{i}")));
    }
    assert_eq!(a.bodies().len(), 3);
    assert_eq!(credit.in_flight(), 3);
}

#[test]
fn requeue_restores_original_position() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    let a = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let id = q.add_consumer(spec("a", &a, 2, &credit), || {}).unwrap();
    for i in 0..4 {
        q.publish(msg(&i.to_string()));
    }
    let got = a.take();
    assert_eq!(got.len(), 2);
    q.remove_consumer(id);
    // Give back "1" then "0": they must come back in offset order, ahead of "2" and "3".
    let back: Vec<_> = got.iter().rev().map(|d| d.offset).collect();
    q.requeue(&back, false);
    let b = Arc::new(RecordingSink::default());
    q.add_consumer(spec("b", &b, 0, &credit), || {}).unwrap();
    assert_eq!(b.bodies(), ["0", "1", "2", "3"]);
    let redelivered: Vec<bool> = b.take().iter().map(|d| d.redelivered).collect();
    assert_eq!(redelivered, [true, true, false, false]);
}

#[test]
fn blocked_sink_resumes_when_ready() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    let a = Arc::new(RecordingSink::default());
    a.blocked.store(true, Ordering::SeqCst);
    let credit = Arc::new(ChannelCredit::new());
    q.add_consumer(spec("a", &a, 0, &credit), || {}).unwrap();
    q.publish(msg("m"));
    assert!(a.bodies().is_empty());
    a.unblock();
    assert_eq!(a.bodies(), ["m"]);
}

#[test]
fn consumer_priorities_prefer_higher() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    let (lo, hi) = (
        Arc::new(RecordingSink::default()),
        Arc::new(RecordingSink::default()),
    );
    let credit = Arc::new(ChannelCredit::new());
    q.add_consumer(spec("lo", &lo, 0, &credit), || {}).unwrap();
    let mut s = spec("hi", &hi, 1, &credit);
    s.priority = 10;
    q.add_consumer(s, || {}).unwrap();
    for i in 0..3 {
        q.publish(msg(&i.to_string()));
    }
    // hi takes one (its prefetch), the rest overflow to lo.
    assert_eq!(hi.bodies(), ["0"]);
    assert_eq!(lo.bodies(), ["1", "2"]);
}

#[test]
fn exclusive_consumer_rules() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    let a = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let mut ex = spec("a", &a, 0, &credit);
    ex.exclusive = true;
    q.add_consumer(ex.clone(), || {}).unwrap();
    let err = q
        .add_consumer(spec("b", &a, 0, &credit), || {})
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
    let q2 = declare(&vh, "q2");
    q2.add_consumer(spec("b", &a, 0, &credit), || {}).unwrap();
    assert_eq!(q2.add_consumer(ex, || {}).unwrap_err().reply_code(), 403);
}

#[test]
fn queue_declare_rules() {
    let vh = VHost::new("/");
    let mut d = QueueDeclare {
        name: ShortString::from(""),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: false,
        arguments: FieldTable::new(),
        connection: 7,
    };
    let gen = vh.declare_queue(&d).unwrap();
    assert!(gen.queue.name().starts_with("amq.gen-"));
    d.name = gen.queue.name().clone();
    d.connection = 8;
    assert_eq!(vh.declare_queue(&d).unwrap_err().reply_code(), 405);
    d.connection = 7;
    d.durable = true;
    let e = vh.declare_queue(&d).unwrap_err();
    assert_eq!(e.reply_code(), 406);
    assert!(
        e.to_string().starts_with("inequivalent arg 'durable'"),
        "{e}"
    );
    d.name = ShortString::from("amq.mine");
    assert_eq!(vh.declare_queue(&d).unwrap_err().reply_code(), 403);
    d.name = ShortString::from("missing");
    d.passive = true;
    let e = vh.declare_queue(&d).unwrap_err();
    assert_eq!(
        e.reply_text(),
        "NOT_FOUND - no queue 'missing' in vhost '/'"
    );

    let mut args = FieldTable::new();
    args.insert("x-message-ttl", FieldValue::LongInt(1000));
    let mut a = QueueDeclare {
        name: ShortString::from("ttl"),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: args,
        connection: 1,
    };
    vh.declare_queue(&a).unwrap();
    a.arguments
        .insert("x-message-ttl", FieldValue::LongLongInt(1000));
    vh.declare_queue(&a)
        .expect("same value, other integer width");
    a.arguments
        .insert("x-message-ttl", FieldValue::LongLongInt(2000));
    assert_eq!(vh.declare_queue(&a).unwrap_err().reply_code(), 406);
}

#[test]
fn exchange_declare_rules() {
    let vh = VHost::new("/");
    xdeclare(&vh, "x", "direct").unwrap();
    xdeclare(&vh, "x", "direct").unwrap();
    let e = xdeclare(&vh, "x", "fanout").unwrap_err();
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'"
    );
    assert_eq!(xdeclare(&vh, "y", "nope").unwrap_err().reply_code(), 503);
    assert_eq!(
        xdeclare(&vh, "amq.new", "direct").unwrap_err().reply_code(),
        403
    );
    // Predeclared exchanges are durable: redeclaring them non-durable is inequivalent.
    assert_eq!(
        xdeclare(&vh, "amq.direct", "direct")
            .unwrap_err()
            .reply_code(),
        406
    );
    assert_eq!(xdeclare(&vh, "", "direct").unwrap_err().reply_code(), 403);
}

#[test]
fn routing_through_exchange_graph_delivers_once() {
    let vh = VHost::new("/");
    declare(&vh, "q");
    xdeclare(&vh, "a", "fanout").unwrap();
    xdeclare(&vh, "b", "fanout").unwrap();
    vh.bind_exchange("b", "a", "".into(), FieldTable::new())
        .unwrap();
    vh.bind_exchange("a", "b", "".into(), FieldTable::new())
        .unwrap();
    vh.bind_queue("q", "a", "".into(), FieldTable::new(), 1)
        .unwrap();
    vh.bind_queue("q", "b", "".into(), FieldTable::new(), 1)
        .unwrap();
    assert_eq!(routed(&vh, "a", "k"), ["q"]);
    assert_eq!(routed(&vh, "b", "k"), ["q"]);
    assert_eq!(routed(&vh, "", "q"), ["q"]);
    assert!(routed(&vh, "", "nope").is_empty());
    let mut out = Vec::new();
    assert_eq!(
        vh.route("missing", "k", None, &mut out)
            .unwrap_err()
            .reply_code(),
        404
    );
}

#[test]
fn delete_queue_cancels_consumers_and_bindings() {
    let vh = VHost::new("/");
    let q = declare(&vh, "q");
    vh.bind_queue("q", "amq.direct", "k".into(), FieldTable::new(), 1)
        .unwrap();
    let a = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    q.add_consumer(spec("tag", &a, 0, &credit), || {}).unwrap();
    assert_eq!(
        vh.delete_queue("q", true, false, 1)
            .unwrap_err()
            .reply_code(),
        406
    );
    q.publish(msg("x"));
    assert_eq!(vh.delete_queue("q", false, false, 1).unwrap(), 0);
    assert_eq!(
        a.cancelled.lock().unwrap().as_slice(),
        [ShortString::from("tag")]
    );
    assert!(routed(&vh, "amq.direct", "k").is_empty());
    assert_eq!(q.publish(msg("late")), crate::queue::Published::Gone);
    assert_eq!(
        vh.delete_queue("q", false, false, 1).unwrap(),
        0,
        "idempotent"
    );
}

#[test]
fn auto_delete_exchange_goes_with_last_binding() {
    let vh = VHost::new("/");
    declare(&vh, "q");
    vh.declare_exchange(&ExchangeDeclare {
        name: "ad".into(),
        kind: "topic".into(),
        passive: false,
        durable: false,
        auto_delete: true,
        internal: false,
        arguments: FieldTable::new(),
    })
    .unwrap();
    // A no-op unbind leaves an auto-delete exchange that was never bound alone.
    vh.unbind_queue("q", "ad", "never".into(), FieldTable::new(), 1)
        .unwrap();
    vh.unbind_exchange("amq.topic", "ad", "never".into(), FieldTable::new())
        .unwrap();
    assert!(vh.exchange_exists("ad"));
    vh.bind_queue("q", "ad", "#".into(), FieldTable::new(), 1)
        .unwrap();
    vh.unbind_queue("q", "ad", "#".into(), FieldTable::new(), 1)
        .unwrap();
    assert!(!vh.exchange_exists("ad"));
}

#[test]
fn unbinding_is_idempotent() {
    let vh = VHost::new("/");
    declare(&vh, "q");
    let none = FieldTable::new;
    // Missing queue, missing exchange, missing both: nothing to remove, not 404.
    vh.unbind_queue("nope", "amq.direct", "k".into(), none(), 1)
        .unwrap();
    vh.unbind_queue("q", "nope", "k".into(), none(), 1).unwrap();
    vh.unbind_exchange("nope", "amq.direct", "k".into(), none())
        .unwrap();
    vh.unbind_exchange("amq.direct", "nope", "k".into(), none())
        .unwrap();
    // The default exchange is still refused.
    let refused = vh.unbind_queue("nope", "", "k".into(), none(), 1);
    assert_eq!(refused.unwrap_err().reply_code(), 403);
    // Another connection's exclusive queue: locked only for a binding that exists.
    vh.declare_queue(&QueueDeclare {
        name: "mine".into(),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: false,
        arguments: none(),
        connection: 7,
    })
    .unwrap();
    vh.bind_queue("mine", "amq.direct", "k".into(), none(), 7)
        .unwrap();
    vh.unbind_queue("mine", "amq.direct", "other".into(), none(), 8)
        .unwrap();
    let locked = vh.unbind_queue("mine", "amq.direct", "k".into(), none(), 8);
    assert_eq!(locked.unwrap_err().reply_code(), 405);
    vh.unbind_queue("mine", "amq.direct", "k".into(), none(), 7)
        .unwrap();
    assert!(routed(&vh, "amq.direct", "k").is_empty());
}

#[test]
fn exclusive_queues_go_with_their_connection() {
    let vh = VHost::new("/");
    vh.declare_queue(&QueueDeclare {
        name: "mine".into(),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: false,
        arguments: FieldTable::new(),
        connection: 42,
    })
    .unwrap();
    assert_eq!(vh.queue("mine", 43).unwrap_err().reply_code(), 405);
    vh.connection_closed(42);
    assert_eq!(vh.queue("mine", 42).unwrap_err().reply_code(), 404);
}

#[test]
fn broker_auth_and_vhosts() {
    let b = Broker::with_defaults();
    assert!(b.authenticate("guest", "guest", true).is_ok());
    assert!(b.authenticate("guest", "guest", false).is_err());
    assert!(b.authenticate("guest", "wrong", true).is_err());
    assert!(b.open_vhost("guest", "/").is_ok());
    assert_eq!(b.open_vhost("guest", "nope").unwrap_err().reply_code(), 530);
    b.add_vhost("other");
    assert_eq!(
        b.open_vhost("guest", "other").unwrap_err().reply_code(),
        530
    );
}

#[test]
fn vhost_limits_and_checked_declarations() {
    use crate::auth::Access;
    use crate::error::ObjectKind;
    use crate::vhost::VhostLimits;

    let vh = VHost::new("/");
    vh.set_limits(VhostLimits {
        max_connections: Some(1),
        max_queues: Some(1),
    });
    let slot = vh.acquire_connection_slot("u").unwrap();
    let e = vh.acquire_connection_slot("u").unwrap_err();
    assert_eq!(
        e.reply_text(),
        "NOT_ALLOWED - access to vhost '/' refused for user 'u': connection limit (1) is reached"
    );
    drop(slot);
    assert_eq!(vh.connection_count(), 0);
    assert!(vh.acquire_connection_slot("u").is_ok());

    let d = |name: &str| QueueDeclare {
        name: ShortString::from(name),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: FieldTable::new(),
        connection: 1,
    };
    let seen: Mutex<Vec<(ObjectKind, String, Access)>> = Mutex::new(Vec::new());
    let mut allow = |k: ObjectKind, n: &str, a: Access| {
        seen.lock().unwrap().push((k, n.to_owned(), a));
        Ok(())
    };
    vh.declare_queue_checked(&d("q1"), &mut allow).unwrap();
    // Redeclaring an existing queue is not limited; a new one is.
    vh.declare_queue_checked(&d("q1"), &mut allow).unwrap();
    let e = vh.declare_queue_checked(&d("q2"), &mut allow).unwrap_err();
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost '/' (1) is reached"
    );
    // Limits do not apply to recovery / definitions (the unchecked path).
    vh.declare_queue(&d("q3")).unwrap();
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|(k, _, a)| *k == ObjectKind::Queue && *a == Access::Configure));

    // A non-passive client declaration may not name an amq.* queue, even an existing one.
    vh.set_limits(VhostLimits::default());
    let generated = vh.declare_queue_checked(&d(""), &mut allow).unwrap();
    let name = generated.queue.name().to_string();
    assert!(name.starts_with("amq.gen-"));
    assert_eq!(
        vh.declare_queue_checked(&d(&name), &mut allow)
            .unwrap_err()
            .reply_code(),
        403
    );

    // A dead-letter exchange asks for read on the queue and write on the exchange.
    let mut dlx = d("with-dlx");
    dlx.arguments
        .insert("x-dead-letter-exchange", FieldValue::LongString("".into()));
    let mut asked: Vec<(ObjectKind, String, Access)> = Vec::new();
    vh.declare_queue_checked(&dlx, &mut |k, n, a| {
        asked.push((k, n.to_owned(), a));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        asked,
        vec![
            (ObjectKind::Queue, "with-dlx".to_owned(), Access::Configure),
            (ObjectKind::Queue, "with-dlx".to_owned(), Access::Read),
            (ObjectKind::Exchange, String::new(), Access::Write),
        ]
    );
    // A refusal stops the declaration.
    let refused =
        vh.declare_queue_checked(&d("nope"), &mut |_, _, _| Err(BrokerError::DefaultExchange));
    assert!(refused.is_err());
    assert!(vh.queue("nope", 1).is_err());
}

/// A durable queue keeps the bodies of its head in memory and only the places of the rest;
/// draining reads them back from the store in order, intact.
#[test]
fn stored_backlog_is_paged_out_and_read_back_in_order() {
    use crate::persist::QueueStore;
    use crate::queue::PAGE_OUT_BYTES;
    use pier_store::{MemoryStore, StoreThread, ThreadConfig};

    let thread = StoreThread::spawn(Box::new(MemoryStore::new()), ThreadConfig::default()).unwrap();
    let handle = thread.handle();
    let id = handle.call(|s| s.open_queue("paged")).unwrap().unwrap();
    let q = Queue::new(
        ShortString::from("paged"),
        "/".to_owned(),
        crate::queue::QueueOptions {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::new(),
        },
    );
    q.attach_store(QueueStore {
        handle: handle.clone(),
        id,
    });
    let n = 20_000u32;
    for i in 0..n {
        let mut body = format!("{i:08}").into_bytes();
        body.resize(1024, b'.');
        let m = Message::new(
            ShortString::from(""),
            ShortString::from("paged"),
            BasicProperties {
                delivery_mode: Some(2),
                ..BasicProperties::default()
            },
            Bytes::from(body),
        );
        q.publish(Arc::new(m));
    }
    let stats = q.stats();
    assert_eq!(stats.ready, u64::from(n));
    assert_eq!(stats.ready_bytes, u64::from(n) * 1024);
    assert!(stats.memory_bytes <= PAGE_OUT_BYTES + 1024, "{stats:?}");
    assert!(stats.paged_out > 10_000, "{stats:?}");

    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let mut s = spec("c", &sink, 0, &credit);
    s.ack_required = false;
    q.add_consumer(s, || {}).unwrap();
    let got = sink.take();
    assert_eq!(got.len(), n as usize);
    for (i, d) in got.iter().enumerate() {
        assert_eq!(&d.message.body[..8], format!("{i:08}").as_bytes());
        assert_eq!(d.message.body.len(), 1024);
        assert_eq!(d.message.properties.delivery_mode, Some(2));
    }
    assert_eq!(q.stats().ready, 0);
    assert_eq!(q.stats().memory_bytes, 0);
    // No-ack deliveries were acked in the store: nothing is left there.
    let live = handle.call(move |s| s.live_messages(id)).unwrap().unwrap();
    assert!(live.is_empty(), "{} messages left in the store", live.len());
    thread.shutdown().unwrap();
}

#[test]
fn drained_queue_gives_its_index_memory_back() {
    let q = Queue::new(
        ShortString::from("big"),
        "/".to_owned(),
        crate::queue::QueueOptions {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::new(),
        },
    );
    let m = msg("x");
    for _ in 0..100_000 {
        q.publish(m.clone());
    }
    let full = q.ready_capacity();
    assert!(full >= 100_000);
    for _ in 0..99_990 {
        assert!(q.get(false).is_some());
    }
    assert!(
        q.ready_capacity() < full / 16,
        "{} of {full}",
        q.ready_capacity()
    );
    q.purge();
    assert_eq!(q.ready_capacity(), 0);
}
