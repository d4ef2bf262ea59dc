//! Messages leaving the queue or coming back: settle (ack), return (requeue), discard
//! (reject), lost bodies, purge and delete.

use super::state::Requeued;
use super::{CancelReason, Context, Effect, QueueEngine, Reply};
use crate::clock::NEVER;
use crate::consumer::ConsumerId;
use crate::deadletter::DeathReason;

impl QueueEngine {
    /// The consumer a checked-out message went to settles one: its prefetch slot frees up.
    /// `cache` remembers the last consumer found (acks come in runs of one consumer).
    fn release_slot(
        &mut self,
        consumer: Option<ConsumerId>,
        cache: &mut Option<(ConsumerId, usize)>,
    ) {
        let Some(id) = consumer else { return };
        let idx = match *cache {
            Some((cid, idx)) if cid == id => Some(idx),
            _ => self.consumers.iter().position(|c| c.id == id),
        };
        if let Some(idx) = idx {
            *cache = Some((id, idx));
            if let Some(c) = self.consumers.get_mut(idx) {
                c.unacked = c.unacked.saturating_sub(1);
            }
        }
    }

    pub(super) fn settle(
        &mut self,
        offsets: &[u64],
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        let now = cx.now;
        let mut cache = None;
        for o in offsets {
            let Some(co) = self.checked_out.remove(o) else {
                continue;
            };
            self.counters.acked += 1;
            self.completed(now, co.entry.enqueued_at);
            self.release_entry(&co.entry, out);
            self.release_slot(co.consumer, &mut cache);
        }
        self.dispatch(cx, out);
        Reply::Done
    }

    /// Puts deliveries back at their original positions (within their priority), marked
    /// redelivered, keeping their original expiry and enqueue time. A message returned more
    /// often than the delivery limit is dead-lettered (or dropped) instead. `counted`:
    /// `Some(failed)` counts a return (`failed`: a failed delivery, see `Command::Return`);
    /// `None` (`Release`: the delivery never reached a client) puts it back as it was.
    pub(super) fn return_messages(
        &mut self,
        offsets: &[u64],
        counted: Option<bool>,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        self.return_as(offsets, counted, counted.is_some(), cx, out)
    }

    /// Deliveries of a suspected consumer: they may have reached its client, so they come
    /// back flagged redelivered, but uncounted (a partition is not a failed delivery).
    pub(super) fn put_back(
        &mut self,
        offsets: &[u64],
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) {
        self.return_as(offsets, None, true, cx, out);
    }

    fn return_as(
        &mut self,
        offsets: &[u64],
        counted: Option<bool>,
        redelivered: bool,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        let mut cache = None;
        let counting = self.config.queue.delivery_counting;
        for o in offsets {
            let Some(co) = self.checked_out.remove(o) else {
                continue;
            };
            self.release_slot(co.consumer, &mut cache);
            if self.deleted {
                continue;
            }
            let returns = match counted {
                Some(failed) => co.returns.plus_one(failed),
                None => co.returns,
            };
            // Checked at every counted return, failed or not, as RabbitMQ's `return_one`
            // does (a limit lowered by a policy catches a message at its next return).
            if counted.is_some()
                && self
                    .config
                    .delivery_limit
                    .is_some_and(|limit| counting.limited(returns) > limit)
            {
                self.dead_letter(out, co.entry, DeathReason::DeliveryLimit);
                continue;
            }
            let mut entry = co.entry;
            if redelivered {
                entry.set_redelivered();
            }
            // Quorum queues in the durable store keep the count across restarts (a
            // replicated one's is in its log); a classic queue's count is never shown.
            if counted.is_some()
                && self.config.stores_transient
                && self.config.stores_persistent
                && self.entry_stored(&entry)
            {
                out.push(Effect::StoreReturned {
                    offset: entry.offset,
                    returns,
                });
            }
            self.added(&entry);
            self.lower_next_expiry(entry.expires_at);
            if let Some(l) = self.levels.get_mut(usize::from(co.level)) {
                l.requeued.insert(entry.offset, Requeued { entry, returns });
            }
        }
        self.dispatch(cx, out);
        self.drop_over_limit(cx, out);
        Reply::Done
    }

    /// Rejected without requeue: settled, and dead-lettered (reason `rejected`) when the queue
    /// has a dead-letter exchange.
    pub(super) fn discard(
        &mut self,
        offsets: &[u64],
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        let mut cache = None;
        for o in offsets {
            let Some(co) = self.checked_out.remove(o) else {
                continue;
            };
            self.release_slot(co.consumer, &mut cache);
            self.dead_letter(out, co.entry, DeathReason::Rejected);
        }
        self.dispatch(cx, out);
        Reply::Done
    }

    /// Deliveries whose bodies could not be read back never reached their consumer: they
    /// leave the queue and their credit comes back.
    pub(super) fn lost(
        &mut self,
        offsets: &[u64],
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        let mut cache = None;
        for o in offsets {
            let Some(co) = self.checked_out.remove(o) else {
                continue;
            };
            self.release_entry(&co.entry, out);
            self.release_slot(co.consumer, &mut cache);
            if let Some(c) = co
                .consumer
                .and_then(|id| self.consumers.iter_mut().find(|c| c.id == id))
            {
                if c.settings.credit.is_some() {
                    c.credit = c.credit.saturating_add(1);
                }
            }
        }
        self.dispatch(cx, out);
        Reply::Done
    }

    /// Drops every ready message (not the checked-out ones); the reply carries how many.
    pub(super) fn purge(&mut self, out: &mut Vec<Effect>) -> Reply {
        // Checked-out deliveries stay in the store (they may still be returned), so the ready
        // ones are acked one by one rather than dropping the store's queue.
        let mut acks = Vec::new();
        for l in &self.levels {
            for e in l.requeued.values().map(|r| &r.entry).chain(l.ready.iter()) {
                if self.entry_stored(e) {
                    acks.push(e.offset);
                }
            }
            for p in l.paged.iter() {
                if !p.paging() && !self.held.contains_key(&p.offset) {
                    acks.push(p.offset);
                }
            }
        }
        out.extend(acks.into_iter().map(|offset| Effect::StoreAck { offset }));
        self.drop_paging(out);
        let n = self.clear_ready();
        Reply::Dropped(n)
    }

    /// The queue is deleted: its messages go (the store forgets the whole queue), its
    /// consumers are told.
    pub(super) fn delete(&mut self, out: &mut Vec<Effect>) -> Reply {
        if self.deleted {
            return Reply::Dropped(0);
        }
        self.deleted = true;
        self.drop_paging(out);
        let n = self.clear_ready();
        self.checked_out.clear();
        self.dead_letters.clear();
        self.dead_letter_bytes = 0;
        self.next_timeout_check = NEVER;
        for c in self.consumers.drain(..) {
            out.push(Effect::ConsumerCancelled {
                consumer: c.id,
                tag: c.settings.tag,
                reason: CancelReason::QueueDeleted,
            });
        }
        Reply::Dropped(n)
    }

    /// Every paging record of ready messages goes. Checked-out messages keep theirs while
    /// their body is not in memory (only within one runtime step), so then they are released
    /// one by one instead of all at once.
    fn drop_paging(&self, out: &mut Vec<Effect>) {
        let spilled = |e: &super::state::Entry| e.message.is_none() && e.in_paging();
        // Kept dead letters keep theirs too, unless the queue goes (purge leaves them).
        let pinned = self.checked_out.values().any(|c| spilled(&c.entry))
            || (!self.deleted && self.dead_letters.values().any(|(e, _)| spilled(e)));
        if !pinned {
            out.push(Effect::PagingDropAll);
            return;
        }
        for l in &self.levels {
            let spilled = l
                .requeued
                .values()
                .map(|r| &r.entry)
                .chain(l.ready.iter())
                .filter(|e| e.message.is_none() && e.in_paging())
                .map(|e| e.offset)
                .chain(
                    l.paged
                        .iter()
                        .filter(|p| p.paging() && !self.held.contains_key(&p.offset))
                        .map(|p| p.offset),
                );
            out.extend(spilled.map(|offset| Effect::PagingRelease { offset }));
        }
    }

    fn clear_ready(&mut self) -> u64 {
        let n = self.ready_count as u64;
        for l in &mut self.levels {
            l.ready = Default::default();
            l.requeued.clear();
            l.paged = Default::default();
        }
        self.held.clear();
        self.paged_deadlines.clear();
        self.ready_count = 0;
        self.ready_bytes = 0;
        self.mem_bytes = 0;
        self.paged = 0;
        self.next_expiry = NEVER;
        n
    }
}
