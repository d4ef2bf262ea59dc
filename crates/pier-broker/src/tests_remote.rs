//! The remote queue backend against a scripted link: no sockets, no runtime. What a channel
//! sees of a queue homed on another node (consume-ok before deliveries, the window handed to
//! the channel only as it can take it, settlements of a finished session dropped, confirms
//! held until the home node answers, consumers cancelled when the session ends).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use pier_wire::{FieldTable, ShortString};

use crate::cluster::BoxFuture;
use crate::consumer::ChannelCredit;
use crate::persist::{DurabilityHold, PublishDurability};
use crate::queue::remote::{decode_offset, encode_offset};
use crate::queue::{QueueOptions, RemoteConsumer, RemoteGot, Settlement};
use crate::tests::{msg, spec, RecordingSink};
use crate::{BrokerError, ConsumerId, Message, Published, Queue, QueueLink, QueueStats};

/// What the queue sent its home node.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Publish(String),
    Settle(u64, Settlement, Vec<u64>),
    Credit(ConsumerId, u32),
    Consume(ConsumerId),
    Cancel(ConsumerId),
}

#[derive(Default)]
struct FakeLink {
    session: AtomicU64,
    up: AtomicBool,
    sent: Mutex<Vec<Sent>>,
    holds: Mutex<Vec<DurabilityHold>>,
}

impl FakeLink {
    fn new(session: u64) -> Arc<Self> {
        let l = FakeLink::default();
        l.session.store(session, Ordering::SeqCst);
        l.up.store(true, Ordering::SeqCst);
        Arc::new(l)
    }

    fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }

    fn record(&self, s: Sent) {
        self.sent.lock().unwrap().push(s);
    }
}

impl QueueLink for FakeLink {
    fn node(&self) -> &str {
        "pier@home"
    }

    fn session(&self) -> Option<u64> {
        self.up
            .load(Ordering::SeqCst)
            .then(|| self.session.load(Ordering::SeqCst))
    }

    fn publish(
        &self,
        _queue: &Queue,
        message: &Arc<Message>,
        hold: Option<DurabilityHold>,
    ) -> Result<(), Option<DurabilityHold>> {
        self.record(Sent::Publish(
            String::from_utf8_lossy(&message.body).into_owned(),
        ));
        if let Some(h) = hold {
            self.holds.lock().unwrap().push(h);
        }
        Ok(())
    }

    fn settle(&self, _queue: &Queue, session: u64, how: Settlement, offsets: Vec<u64>) {
        self.record(Sent::Settle(session, how, offsets));
    }

    fn credit(&self, _queue: &Queue, consumer: ConsumerId, count: u32, _bytes: u64) {
        self.record(Sent::Credit(consumer, count));
    }

    fn consume(
        &self,
        _queue: &Arc<Queue>,
        consumer: ConsumerId,
        _spec: RemoteConsumer,
    ) -> BoxFuture<Result<u64, BrokerError>> {
        self.record(Sent::Consume(consumer));
        let s = self.session.load(Ordering::SeqCst);
        Box::pin(async move { Ok(s) })
    }

    fn cancel(&self, _queue: &Queue, consumer: ConsumerId) -> BoxFuture<()> {
        self.record(Sent::Cancel(consumer));
        Box::pin(async {})
    }

    fn get(
        &self,
        _queue: &Queue,
        _ack_required: bool,
    ) -> BoxFuture<Result<Option<RemoteGot>, BrokerError>> {
        let s = self.session.load(Ordering::SeqCst);
        Box::pin(async move {
            Ok(Some(RemoteGot {
                session: s,
                offset: 7,
                redelivered: false,
                enqueued_at: 0,
                message: msg("got"),
                remaining: 3,
            }))
        })
    }

    fn purge(&self, _queue: &Queue) -> BoxFuture<Result<u32, BrokerError>> {
        Box::pin(async { Ok(4) })
    }

    fn stats(&self, _queue: &Queue, _touch: bool) -> BoxFuture<Result<QueueStats, BrokerError>> {
        Box::pin(async {
            Ok(QueueStats {
                ready: 2,
                consumers: 1,
                ..QueueStats::default()
            })
        })
    }
}

/// Polls a future the fake link answers at once.
fn ready<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the fake link answers at once"),
    }
}

fn remote(link: &Arc<FakeLink>) -> Arc<Queue> {
    remote_of(link, crate::queue::QueueType::Classic)
}

/// A publish's durability token and where its outcome lands.
fn durability() -> (Arc<PublishDurability>, Arc<Mutex<Option<bool>>>) {
    let outcome = Arc::new(Mutex::new(None));
    let o = Arc::clone(&outcome);
    let token = PublishDurability::new(move |ok| *o.lock().unwrap() = Some(ok));
    (token, outcome)
}

/// A publish to `q` is refused (a nack), not held for a confirm that cannot come.
fn assert_publish_refused(q: &Arc<Queue>) {
    let (token, outcome) = durability();
    let mut dead = Vec::new();
    assert_eq!(
        q.publish_collect(msg("m"), &mut dead, Some(&token)),
        Published::Rejected
    );
    token.release();
    assert_eq!(*outcome.lock().unwrap(), Some(true), "refused, not held");
}

fn remote_of(link: &Arc<FakeLink>, kind: crate::queue::QueueType) -> Arc<Queue> {
    Queue::remote(
        ShortString::from("q"),
        "/".to_owned(),
        kind,
        QueueOptions {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::new(),
        },
        crate::QueueConfig::default(),
        Arc::clone(link) as Arc<dyn QueueLink>,
    )
}

fn deliver(q: &Arc<Queue>, id: ConsumerId, session: u64, offset: u64, body: &str) {
    q.remote_deliver(id, session, offset, false, true, 0, msg(body));
}

#[test]
fn deliveries_wait_for_consume_ok_then_flow_in_order() {
    let link = FakeLink::new(1);
    let q = remote(&link);
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let (id, registered) = q.consume_remote(spec("c", &sink, 0, &credit)).unwrap();
    ready(registered).unwrap();
    assert_eq!(link.take(), vec![Sent::Consume(id)]);
    // The home node delivers before this node sent consume-ok: they wait.
    deliver(&q, id, 1, 0, "a");
    deliver(&q, id, 1, 1, "b");
    assert!(sink.bodies().is_empty());
    q.activate_remote(id);
    assert_eq!(sink.bodies(), ["a", "b"]);
    // The channel's offsets carry the session; credit went back for what was handed over.
    let offsets: Vec<u64> = sink.take().iter().map(|d| d.offset).collect();
    assert_eq!(offsets, [encode_offset(1, 0), encode_offset(1, 1)]);
    assert_eq!(decode_offset(offsets[1]), (1, 1));
    assert_eq!(link.take(), vec![Sent::Credit(id, 2)]);
}

#[test]
fn a_full_channel_holds_the_window_and_takes_it_when_it_drains() {
    let link = FakeLink::new(1);
    let q = remote(&link);
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let (id, registered) = q.consume_remote(spec("c", &sink, 0, &credit)).unwrap();
    ready(registered).unwrap();
    q.activate_remote(id);
    link.take();
    sink.blocked.store(true, Ordering::SeqCst);
    deliver(&q, id, 1, 0, "a");
    deliver(&q, id, 1, 1, "b");
    assert!(sink.bodies().is_empty(), "the channel cannot take them");
    assert!(link.take().is_empty(), "no credit back while they wait");
    sink.unblock();
    assert_eq!(sink.bodies(), ["a", "b"]);
    assert_eq!(link.take(), vec![Sent::Credit(id, 2)]);
}

#[test]
fn channel_wide_prefetch_is_honoured_here() {
    let link = FakeLink::new(1);
    let q = remote(&link);
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    credit.set_limit(1);
    let (id, registered) = q.consume_remote(spec("c", &sink, 0, &credit)).unwrap();
    ready(registered).unwrap();
    q.activate_remote(id);
    deliver(&q, id, 1, 0, "a");
    deliver(&q, id, 1, 1, "b");
    assert_eq!(sink.bodies(), ["a"], "basic.qos global=true allows one");
    // The ack frees channel credit and re-dispatches the channel's queues.
    credit.release(1);
    q.dispatch();
    assert_eq!(sink.bodies(), ["a", "b"]);
}

#[test]
fn settlements_of_an_ended_session_are_dropped() {
    let link = FakeLink::new(5);
    let q = remote(&link);
    q.settle(&[encode_offset(5, 1), encode_offset(5, 2)]);
    assert_eq!(
        link.take(),
        vec![Sent::Settle(5, Settlement::Ack, vec![1, 2])]
    );
    // A new connection to the home node: the old session's deliveries were put back there.
    link.session.store(6, Ordering::SeqCst);
    q.requeue(&[encode_offset(5, 3)], false);
    q.reject(&[encode_offset(6, 4)]);
    assert_eq!(
        link.take(),
        vec![Sent::Settle(6, Settlement::Reject, vec![4])]
    );
}

#[test]
fn a_publish_is_confirmed_when_the_home_node_confirms_it() {
    let link = FakeLink::new(1);
    let q = remote(&link);
    let (token, outcome) = durability();
    let mut dead = Vec::new();
    assert_eq!(
        q.publish_collect(msg("m"), &mut dead, Some(&token)),
        Published::Accepted
    );
    token.release();
    assert_eq!(*outcome.lock().unwrap(), None, "waits for the home node");
    let hold = link.holds.lock().unwrap().pop().unwrap();
    hold.complete(true);
    assert_eq!(*outcome.lock().unwrap(), Some(true));

    // A hold dropped unanswered (the session ended) nacks the publish.
    let (token, outcome) = durability();
    q.publish_collect(msg("n"), &mut dead, Some(&token));
    token.release();
    drop(link.holds.lock().unwrap().pop());
    assert_eq!(*outcome.lock().unwrap(), Some(false));
}

#[test]
fn with_the_home_node_down_a_queue_is_absent() {
    let link = FakeLink::new(1);
    let q = remote(&link);
    link.up.store(false, Ordering::SeqCst);
    // Routing skips it, as RabbitMQ 3.10 skips a queue whose node is down: an unroutable
    // publish, confirmed as such.
    let (token, outcome) = durability();
    let mut dead = Vec::new();
    assert_eq!(
        q.publish_collect(msg("m"), &mut dead, Some(&token)),
        Published::Gone
    );
    token.release();
    assert_eq!(*outcome.lock().unwrap(), Some(true));
    let expected =
        "home node 'pier@home' of durable queue 'q' in vhost '/' is down or inaccessible";
    assert_eq!(q.unavailable().unwrap().to_string(), expected);
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let (_, registered) = q.consume_remote(spec("c", &sink, 0, &credit)).unwrap();
    let e = ready(registered).unwrap_err();
    assert_eq!(e.reply_code(), 404);
    assert_eq!(e.to_string(), expected);
    assert!(ready(q.get_remote(true).unwrap()).is_err());
    assert!(ready(q.purge_remote().unwrap()).is_err());
}

/// A stream whose leader is out of reach is not skipped as a classic queue is: its publish
/// is refused (a nack), never confirmed unwritten (the stream chaos check lost confirmed
/// messages this way).
#[test]
fn with_its_leader_down_a_stream_nacks_publishes() {
    let link = FakeLink::new(1);
    let q = remote_of(&link, crate::queue::QueueType::Stream);
    link.up.store(false, Ordering::SeqCst);
    assert_publish_refused(&q);
}

#[test]
fn a_session_that_ends_cancels_its_consumers() {
    let link = FakeLink::new(1);
    let q = remote(&link);
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let (id, registered) = q.consume_remote(spec("c", &sink, 0, &credit)).unwrap();
    ready(registered).unwrap();
    q.activate_remote(id);
    assert_eq!(q.stats().consumers, 1);
    q.remote_session_ended(1);
    assert_eq!(*sink.cancelled.lock().unwrap(), [ShortString::from("c")]);
    assert_eq!(q.stats().consumers, 0);
    // A late delivery for it goes back, uncounted.
    link.take();
    deliver(&q, id, 1, 9, "late");
    assert_eq!(
        link.take(),
        vec![Sent::Settle(1, Settlement::Release, vec![9])]
    );
}

#[test]
fn a_consumer_that_goes_puts_back_what_it_had_not_taken() {
    let link = FakeLink::new(1);
    let q = remote(&link);
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let (id, registered) = q.consume_remote(spec("c", &sink, 0, &credit)).unwrap();
    ready(registered).unwrap();
    q.activate_remote(id);
    sink.blocked.store(true, Ordering::SeqCst);
    deliver(&q, id, 1, 3, "a");
    link.take();
    let removed = q.remove_consumer(id);
    assert!(removed.existed && !removed.auto_delete_now);
    assert_eq!(
        link.take(),
        vec![
            Sent::Settle(1, Settlement::Release, vec![3]),
            Sent::Cancel(id)
        ]
    );
}

#[test]
fn basic_get_purge_and_counts_come_from_the_home_node() {
    let link = FakeLink::new(2);
    let q = remote(&link);
    let (d, remaining) = ready(q.get_remote(true).unwrap()).unwrap().unwrap();
    assert_eq!((decode_offset(d.offset), remaining), ((2, 7), 3));
    assert!(d.consumer.is_none() && d.ack_required);
    assert_eq!(ready(q.purge_remote().unwrap()).unwrap(), 4);
    assert_eq!(ready(q.stats_remote(true).unwrap()).unwrap().ready, 2);
    assert_eq!(q.stats().ready, 2, "kept as the last known figures");
    // A local queue has none of these.
    let local = crate::tests::declare(&crate::VHost::new("v"), "l");
    assert!(local.get_remote(true).is_none() && local.stats_remote(false).is_none());
}

/// A stream's handle is retired when its leader moves (failover): its consumers are
/// cancelled, and a publish that still reaches it is refused (a nack), never confirmed.
#[test]
fn a_retired_stream_handle_cancels_its_consumers_and_nacks_publishes() {
    let link = FakeLink::new(1);
    let q = remote_of(&link, crate::queue::QueueType::Stream);
    let sink = Arc::new(RecordingSink::default());
    let credit = Arc::new(ChannelCredit::new());
    let (id, registered) = q.consume_remote(spec("c", &sink, 0, &credit)).unwrap();
    ready(registered).unwrap();
    q.activate_remote(id);
    q.retire();
    assert_eq!(*sink.cancelled.lock().unwrap(), [ShortString::from("c")]);
    assert_publish_refused(&q);
    assert!(q.is_deleted());
}
