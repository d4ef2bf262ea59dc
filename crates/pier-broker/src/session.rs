//! A consumer and publisher session: one channel's delivery tags, unacknowledged deliveries
//! and publisher-confirm bookkeeping, whatever the protocol (an AMQP 0-9-1 channel today; an
//! MQTT session's packet ids and a STOMP subscription's acks map onto the same records).
//!
//! ```text
//!  queue ─Delivery─► Session::delivered ─► tag ──► protocol encodes it
//!  client ack/nack ─► Session::take(tag, multiple) ─► [Unacked] ─► dispose(Ack|Requeue|Reject)
//!  publish seq ─► published / wait_durable / durable / refused ─► [Confirm] ─► protocol sends
//! ```
//!
//! The session is plain data with no lock: the server keeps each channel's session under the
//! same lock that orders its outgoing frames, so delivery tags reach the wire in increasing
//! order even when several queues deliver at once.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use pier_wire::ShortString;

use crate::consumer::ConsumerId;
use crate::queue::Queue;

/// A delivery the client has not settled yet.
#[derive(Debug, Clone)]
pub struct Unacked {
    pub tag: u64,
    pub queue: Arc<Queue>,
    /// None for basic.get.
    pub consumer: Option<ConsumerId>,
    /// Its place in its queue: settling names it by this.
    pub offset: u64,
    /// When it was delivered (milliseconds of the caller's clock), for consumer timeouts.
    pub delivered_at: u64,
}

/// A publisher confirm to send: ack or nack of `tag`, and of every earlier one with
/// `multiple`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirm {
    pub tag: u64,
    pub multiple: bool,
    pub ack: bool,
}

/// What the client decided about deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledged: the message leaves its queue.
    Ack,
    /// Put back at its place, redelivered; `failed`: a failed delivery (basic.reject with
    /// requeue, the consumer's channel gone), not a nack or recover (`Queue::requeue`).
    Requeue { failed: bool },
    /// Rejected without requeue: dead-lettered if the queue has a dead-letter exchange.
    Reject,
}

/// Publisher-confirm bookkeeping. Transient messages are confirmed once routed; persistent
/// ones in durable queues only once the store has them on disk, so acks advance up to (not
/// past) the oldest publish still waiting for the disk.
#[derive(Debug, Default)]
struct Confirms {
    /// Highest sequence number routed.
    published: u64,
    /// Publishes waiting for the store.
    waiting: BTreeSet<u64>,
    /// Everything up to here was acked or nacked to the client.
    confirmed: u64,
    /// Nacked above `confirmed` (already answered individually).
    nacked: BTreeSet<u64>,
}

#[derive(Debug, Default)]
pub struct Session {
    next_tag: u64,
    /// In increasing tag order.
    unacked: VecDeque<Unacked>,
    /// Consumers the broker cancelled (their queue went away); the channel forgets them on
    /// its next look.
    cancelled: Vec<ShortString>,
    confirms: Confirms,
}

impl Session {
    pub fn new() -> Self {
        Session::default()
    }

    /// A delivery goes out: the next delivery tag, recorded as unacknowledged when the
    /// client must settle it.
    pub fn delivered(
        &mut self,
        queue: &Arc<Queue>,
        consumer: Option<ConsumerId>,
        offset: u64,
        ack_required: bool,
        now_ms: u64,
    ) -> u64 {
        self.next_tag += 1;
        let tag = self.next_tag;
        if ack_required {
            self.unacked.push_back(Unacked {
                tag,
                queue: Arc::clone(queue),
                consumer,
                offset,
                delivered_at: now_ms,
            });
        }
        tag
    }

    /// The deliveries an ack/nack/reject names: exactly `tag`, or with `multiple` every tag up
    /// to it (`multiple` with tag 0: all). None for a tag that is not outstanding (RabbitMQ
    /// closes the channel: `unknown delivery tag`).
    pub fn take(&mut self, tag: u64, multiple: bool) -> Option<Vec<Unacked>> {
        if multiple && tag == 0 {
            return Some(self.unacked.drain(..).collect());
        }
        let idx = self.unacked.binary_search_by_key(&tag, |u| u.tag).ok()?;
        if multiple {
            Some(self.unacked.drain(..=idx).collect())
        } else {
            self.unacked.remove(idx).map(|u| vec![u])
        }
    }

    /// Every outstanding delivery (the channel closes, basic.recover).
    pub fn take_all(&mut self) -> Vec<Unacked> {
        self.unacked.drain(..).collect()
    }

    /// When the oldest outstanding delivery went out.
    pub fn oldest_unacked(&self) -> Option<u64> {
        self.unacked.front().map(|u| u.delivered_at)
    }

    /// Deliveries so far (the last tag) and how many are outstanding.
    pub fn counts(&self) -> (u64, u64) {
        (self.next_tag, self.unacked.len() as u64)
    }

    /// The broker cancelled a consumer of this session.
    pub fn consumer_cancelled(&mut self, tag: ShortString) {
        self.cancelled.push(tag);
    }

    pub fn take_cancelled(&mut self) -> Vec<ShortString> {
        std::mem::take(&mut self.cancelled)
    }

    // ---- publisher confirms ----

    /// Every publish up to `upto` has been routed: confirm what no longer waits.
    pub fn published(&mut self, upto: u64) -> Option<Confirm> {
        self.confirms.published = self.confirms.published.max(upto);
        self.flush()
    }

    /// Publish `seq` waits for the store (registered before it is routed).
    pub fn wait_durable(&mut self, seq: u64) {
        self.confirms.waiting.insert(seq);
    }

    /// The store answered for publish `seq`: a nack if a copy was lost, then whatever that
    /// released.
    pub fn durable(&mut self, seq: u64, ok: bool) -> (Option<Confirm>, Option<Confirm>) {
        self.confirms.waiting.remove(&seq);
        let nack = (!ok).then(|| self.refused(seq));
        (nack, self.flush())
    }

    /// Publish `seq` was refused (x-overflow reject-publish, a lost copy): nack it now.
    pub fn refused(&mut self, seq: u64) -> Confirm {
        self.confirms.nacked.insert(seq);
        Confirm {
            tag: seq,
            multiple: false,
            ack: false,
        }
    }

    /// One ack (`multiple` when it covers more than one publish) for everything settled below
    /// the oldest publish still waiting for the disk; nothing if all of it was nacked.
    fn flush(&mut self) -> Option<Confirm> {
        let c = &mut self.confirms;
        let upto = match c.waiting.first() {
            Some(&w) => (w - 1).min(c.published),
            None => c.published,
        };
        if upto <= c.confirmed {
            return None;
        }
        let total = upto - c.confirmed;
        let nacked = c.nacked.range(c.confirmed + 1..=upto).count() as u64;
        c.confirmed = upto;
        c.nacked.retain(|&t| t > upto);
        (nacked != total).then_some(Confirm {
            tag: upto,
            multiple: total > 1,
            ack: true,
        })
    }
}

/// Hands settled deliveries back to their queues, one call per run of the same queue.
pub fn dispose(items: &[Unacked], how: Disposition) {
    let mut offsets: Vec<u64> = Vec::new();
    let mut start = 0;
    while let Some(first) = items.get(start) {
        offsets.clear();
        let run = items
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|u| Arc::ptr_eq(&u.queue, &first.queue));
        offsets.extend(run.map(|u| u.offset));
        start += offsets.len();
        match how {
            Disposition::Ack => first.queue.settle(&offsets),
            Disposition::Requeue { failed } => first.queue.requeue(&offsets, failed),
            Disposition::Reject => first.queue.reject(&offsets),
        }
    }
}

/// Puts deliveries back into their queues (channel closed, recover, orphans): grouped by
/// queue so each queue takes them in one command. `failed` as in `Disposition::Requeue`.
pub fn requeue_all(mut items: Vec<Unacked>, failed: bool) {
    items.sort_by_key(|u| (Arc::as_ptr(&u.queue) as usize, u.offset));
    dispose(&items, Disposition::Requeue { failed });
}

/// How many of these deliveries went to consumers (they hold channel-wide prefetch credit;
/// basic.get deliveries do not).
pub fn consumer_deliveries(items: &[Unacked]) -> u32 {
    u32::try_from(items.iter().filter(|u| u.consumer.is_some()).count()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::queue::QueueOptions;

    fn queue() -> Arc<Queue> {
        Queue::new(
            ShortString::from("q"),
            "/".to_owned(),
            QueueOptions {
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: Default::default(),
            },
        )
    }

    const fn ack(tag: u64, multiple: bool) -> Option<Confirm> {
        Some(Confirm {
            tag,
            multiple,
            ack: true,
        })
    }

    #[test]
    fn tags_increase_and_only_acked_deliveries_are_recorded() {
        let q = queue();
        let mut s = Session::new();
        assert_eq!(s.delivered(&q, Some(1), 10, true, 5), 1);
        assert_eq!(s.delivered(&q, Some(1), 11, false, 6), 2);
        assert_eq!(s.delivered(&q, None, 12, true, 7), 3);
        assert_eq!(s.counts(), (3, 2));
        assert_eq!(s.oldest_unacked(), Some(5));
    }

    #[test]
    fn take_single_multiple_all_and_unknown() {
        let q = queue();
        let mut s = Session::new();
        for o in 0..5 {
            s.delivered(&q, Some(1), o, true, 0);
        }
        let tags = |v: Vec<Unacked>| v.into_iter().map(|u| u.tag).collect::<Vec<_>>();
        assert_eq!(tags(s.take(3, false).unwrap()), [3]);
        assert!(s.take(3, false).is_none(), "already settled");
        assert!(s.take(9, true).is_none(), "never delivered");
        assert_eq!(tags(s.take(4, true).unwrap()), [1, 2, 4]);
        assert_eq!(tags(s.take(0, true).unwrap()), [5]);
        assert_eq!(
            s.take(0, true).unwrap().len(),
            0,
            "multiple 0 with nothing left"
        );
    }

    #[test]
    fn transient_publishes_are_confirmed_together() {
        let mut s = Session::new();
        assert_eq!(s.published(1), ack(1, false));
        assert_eq!(s.published(4), ack(4, true));
        assert_eq!(s.published(4), None);
    }

    #[test]
    fn a_publish_waiting_for_the_disk_holds_back_later_acks() {
        let mut s = Session::new();
        s.wait_durable(2);
        assert_eq!(s.published(3), ack(1, false), "up to the waiting one");
        assert_eq!(s.durable(2, true), (None, ack(3, true)));
    }

    #[test]
    fn a_lost_copy_is_nacked_alone_and_the_rest_acked() {
        let mut s = Session::new();
        s.wait_durable(1);
        s.wait_durable(2);
        assert_eq!(s.published(3), None);
        assert_eq!(
            s.durable(1, false),
            (
                Some(Confirm {
                    tag: 1,
                    multiple: false,
                    ack: false
                }),
                None
            ),
            "2 still waits"
        );
        // 1 was nacked, 2 and 3 are acked with one multiple ack.
        assert_eq!(s.durable(2, true), (None, ack(3, true)));
    }

    #[test]
    fn a_refused_publish_is_not_acked_again() {
        let mut s = Session::new();
        assert!(!s.refused(1).ack);
        assert_eq!(s.published(1), None, "only publish 1, already nacked");
        s.refused(2);
        assert_eq!(s.published(3), ack(3, true));
    }

    #[test]
    fn dispose_settles_and_requeues_through_the_queues() {
        use crate::consumer::{ChannelCredit, ConsumerSpec, DeliverySink};
        use crate::tests::RecordingSink;
        let q = queue();
        let sink = Arc::new(RecordingSink::default());
        let consumer = q
            .add_consumer(
                ConsumerSpec {
                    tag: ShortString::from("c"),
                    connection: 1,
                    ack_required: true,
                    exclusive: false,
                    prefetch: 0,
                    priority: 0,
                    arguments: Default::default(),
                    channel_credit: Arc::new(ChannelCredit::new()),
                    sink: Arc::clone(&sink) as Arc<dyn DeliverySink>,
                },
                || {},
            )
            .unwrap();
        for i in 0..3 {
            q.publish(crate::tests::msg(&i.to_string()));
        }
        let mut s = Session::new();
        for d in sink.take() {
            s.delivered(&q, Some(consumer), d.offset, true, 0);
        }
        assert_eq!(q.stats().unacked, 3);
        let first = s.take(1, false).unwrap();
        assert_eq!(consumer_deliveries(&first), 1);
        dispose(&first, Disposition::Ack);
        assert_eq!((q.stats().unacked, q.stats().ready), (2, 0));
        q.remove_consumer(consumer);
        requeue_all(s.take_all(), true);
        assert_eq!((q.stats().unacked, q.stats().ready), (0, 2));
    }
}
