//! Time: message TTL at the heads, TTL 0, `x-expires`, and consumer timeouts, driven by the
//! `Tick` command (and checked on every dispatch, so an expired head is never delivered).
//!
//! Expiry is checked at the head of each level, as RabbitMQ does: an expired message is never
//! delivered, and a tick removes expired heads even when nobody consumes. `next_expiry` is a
//! lower bound on every head's expiry time, so a tick on a queue where nothing can have
//! expired does nothing.

use std::sync::Arc;

use super::state::{Entry, Head};
use super::{CancelReason, Context, Effect, QueueEngine, Reply};
use crate::clock::NEVER;
use crate::consumer::ConsumerId;
use crate::deadletter::DeathReason;
use crate::message::Message;

impl QueueEngine {
    pub(super) fn tick(&mut self, cx: &mut Context<'_>, out: &mut Vec<Effect>) -> Reply {
        if self.deleted {
            return Reply::Done;
        }
        let now = cx.now;
        self.expire_heads(cx, out);
        // Expired heads may have uncovered deliverable messages for waiting consumers.
        self.dispatch(cx, out);
        if let Some(timeout) = self.config.consumer_timeout {
            if now >= self.next_timeout_check {
                self.cancel_timed_out(timeout, cx, out);
            }
        }
        if self.consumers.is_empty() && self.idle_deadline() <= now {
            out.push(Effect::Expired);
        }
        Reply::Done
    }

    /// Drops (or dead-letters) every expired head when one may be due, then recomputes the
    /// lower bound from the heads left.
    pub(super) fn expire_heads(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let now = cx.now;
        if self.next_expiry == NEVER || self.next_expiry >= now {
            return;
        }
        let mut next = NEVER;
        for i in 0..self.levels.len() {
            loop {
                let bound = match self.levels.get(i).and_then(|l| l.head()) {
                    None => break,
                    Some(Head::Memory(h)) => h.expires_at,
                    Some(Head::Paged(p)) => self.paged_bound(p, now),
                };
                if bound >= now {
                    next = next.min(bound);
                    break;
                }
                let Some(l) = self.levels.get_mut(i) else {
                    break;
                };
                let e = match l.pop_memory() {
                    Some((e, _)) => {
                        self.took(&e);
                        e
                    }
                    None => {
                        let Some(p) = l.pop_paged() else { break };
                        let (held, _) = self.untrack_paged(&p);
                        match held {
                            Some(m) => {
                                Entry::new(p.offset, m, p.redelivered(), bound, p.enqueued_at)
                            }
                            None => Entry::on_disk(&p, bound),
                        }
                    }
                };
                self.dead_letter(out, e, DeathReason::Expired);
            }
        }
        self.next_expiry = next;
    }

    /// A TTL-0 message that was not delivered at once is dropped (dead-lettered), wherever it
    /// waits: still the newest of its level, in memory or paged.
    pub(super) fn expire_newest(
        &mut self,
        level: usize,
        offset: u64,
        message: Arc<Message>,
        out: &mut Vec<Effect>,
    ) {
        let Some(l) = self.levels.get_mut(level) else {
            return;
        };
        let e = if l.ready.back().is_some_and(|e| e.offset == offset) && l.paged.is_empty() {
            let Some(e) = l.ready.pop_back() else { return };
            self.took(&e);
            e
        } else if l.paged.back().is_some_and(|p| p.offset == offset) {
            let Some(p) = l.paged.pop_back() else { return };
            let (held, _) = self.untrack_paged(&p);
            match held {
                Some(m) => Entry::new(offset, m, false, NEVER, p.enqueued_at),
                None => Entry::on_disk(&p, NEVER),
            }
        } else {
            return;
        };
        self.dead_letter_carrying(out, e, Some(message), DeathReason::Expired);
    }

    /// Consumers holding a delivery for longer than the timeout are cancelled and their
    /// deliveries returned (RabbitMQ 4's quorum-queue behaviour).
    fn cancel_timed_out(&mut self, timeout: u64, cx: &mut Context<'_>, out: &mut Vec<Effect>) {
        let now = cx.now;
        let mut late: Vec<ConsumerId> = Vec::new();
        let mut next = NEVER;
        for co in self.checked_out.values() {
            let Some(id) = co.consumer else { continue };
            let due = co.delivered_at.saturating_add(timeout);
            if due < now {
                if !late.contains(&id) {
                    late.push(id);
                }
            } else {
                next = next.min(due);
            }
        }
        self.next_timeout_check = next;
        for id in late {
            let Some(pos) = self.consumers.iter().position(|c| c.id == id) else {
                continue;
            };
            let c = self.consumers.remove(pos);
            if self.round_robin >= self.consumers.len() {
                self.round_robin = 0;
            }
            out.push(Effect::ConsumerCancelled {
                consumer: id,
                tag: c.settings.tag,
                reason: CancelReason::Timeout,
            });
            let offsets: Vec<u64> = self
                .checked_out
                .iter()
                .filter(|(_, co)| co.consumer == Some(id))
                .map(|(o, _)| *o)
                .collect();
            // Not a failed delivery (RabbitMQ 4.3 returns timed-out messages unfailed).
            self.return_messages(&offsets, Some(false), cx, out);
        }
    }
}
