//! Consumers and deliveries: checkout, cancel, credit, dispatch and basic.get.
//!
//! A delivery goes to the next consumer in round-robin order among the highest priority
//! whose own credit (prefetch or credit mode) and the [`super::Gate`] both allow it. With
//! single active consumer only the first registered consumer is ever picked.

use super::state::{CheckedOut, Consumer, ConsumerSettings, Entry, Returns};
use super::{Context, Delivered, Effect, QueueEngine, Refusal, Reply};
use crate::consumer::ConsumerId;

impl QueueEngine {
    pub(super) fn checkout(
        &mut self,
        consumer: ConsumerId,
        settings: ConsumerSettings,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Result<Reply, Refusal> {
        if self.deleted {
            return Err(Refusal::Deleted);
        }
        let taken = self.consumers.iter().any(|c| c.settings.exclusive);
        // RabbitMQ refuses exclusive consumers on single-active-consumer queues outright.
        let sac = settings.exclusive && self.config.queue.single_active_consumer;
        if taken || sac || (settings.exclusive && !self.consumers.is_empty()) {
            return Err(Refusal::ExclusiveConsumer);
        }
        let credit = settings.credit.unwrap_or(0);
        self.consumers.push(Consumer {
            id: consumer,
            settings,
            unacked: 0,
            credit,
            drain: false,
            suspected: false,
        });
        self.had_consumers = true;
        self.last_used = cx.now;
        self.dispatch(cx, out);
        Ok(Reply::Done)
    }

    pub(super) fn cancel(
        &mut self,
        consumer: ConsumerId,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        let before = self.consumers.len();
        // Order is kept: with single active consumer the next one registered takes over.
        self.consumers.retain(|c| c.id != consumer);
        let existed = self.consumers.len() != before;
        if self.round_robin >= self.consumers.len() {
            self.round_robin = 0;
        }
        let auto_delete_now = existed
            && self.config.auto_delete
            && self.had_consumers
            && self.consumers.is_empty()
            && !self.deleted;
        if existed {
            self.last_used = cx.now;
        }
        // A departing consumer may have been what held messages back from others.
        self.dispatch(cx, out);
        Reply::Cancelled {
            existed,
            auto_delete_now,
        }
    }

    pub(super) fn credit(
        &mut self,
        consumer: ConsumerId,
        credit: u32,
        drain: bool,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        let Some(c) = self.consumers.iter_mut().find(|c| c.id == consumer) else {
            return Reply::Done;
        };
        c.credit = c.credit.saturating_add(credit);
        c.drain = drain;
        self.dispatch(cx, out);
        if let Some(c) = self.consumers.iter_mut().find(|c| c.id == consumer) {
            if c.drain && c.credit > 0 {
                out.push(Effect::Drained {
                    consumer,
                    credit: c.credit,
                });
                c.credit = 0;
            }
            c.drain = false;
        }
        Reply::Done
    }

    /// Delivers as much as consumers' credit and the gate allow.
    pub(super) fn dispatch(&mut self, cx: &mut Context<'_>, out: &mut Vec<Effect>) {
        if self.deleted {
            return;
        }
        loop {
            self.expire_heads(cx, out);
            if self.ready_count == 0 || self.consumers.is_empty() {
                break;
            }
            let Some(idx) = self.pick_consumer(cx) else {
                break;
            };
            let Some((entry, returns, level)) = self.take_head(cx.now, cx.reads_back, out) else {
                break;
            };
            self.deliver_to(idx, entry, returns, level, cx, out);
        }
    }

    fn deliver_to(
        &mut self,
        idx: usize,
        entry: Entry,
        returns: Returns,
        level: usize,
        cx: &Context<'_>,
        out: &mut Vec<Effect>,
    ) {
        let now = cx.now;
        let Some(c) = self.consumers.get_mut(idx) else {
            return;
        };
        let ack_required = c.settings.ack_required;
        if ack_required {
            c.unacked += 1;
        }
        if c.settings.credit.is_some() {
            c.credit = c.credit.saturating_sub(1);
        }
        let id = c.id;
        self.round_robin = idx + 1;
        self.hand_out(
            Some(id),
            entry,
            returns,
            level,
            ack_required,
            now,
            out,
            None,
        );
    }

    /// Records a delivery (checked out, or completed when no ack is required) and emits it;
    /// basic.get passes `got` to receive it instead of an effect.
    #[allow(clippy::too_many_arguments)]
    fn hand_out(
        &mut self,
        consumer: Option<ConsumerId>,
        entry: Entry,
        returns: Returns,
        level: usize,
        ack_required: bool,
        now: u64,
        out: &mut Vec<Effect>,
        mut got: Option<&mut Option<Delivered>>,
    ) {
        self.counters.delivered += 1;
        let stored = self.entry_stored(&entry);
        let (offset, in_paging) = (entry.offset, entry.in_paging());
        let delivered = |message| Delivered {
            consumer,
            offset,
            message,
            in_paging,
            redelivered: entry.redelivered() || returns.count > 0,
            returns,
            ack_required,
            enqueued_at: entry.enqueued_at,
        };
        let mut emit = |d: Delivered, out: &mut Vec<Effect>| match got.take() {
            Some(slot) => *slot = Some(d),
            None => out.push(Effect::Deliver(d)),
        };
        if ack_required {
            emit(delivered(entry.message.clone()), out);
            if stored {
                // So that after a restart it comes back flagged redelivered.
                out.push(Effect::StoreDelivered { offset });
            }
            if let Some(t) = self.config.consumer_timeout {
                if consumer.is_some() {
                    self.next_timeout_check = self.next_timeout_check.min(now.saturating_add(t));
                }
            }
            self.checked_out.insert(
                offset,
                CheckedOut {
                    consumer,
                    entry,
                    returns,
                    level: u8::try_from(level).unwrap_or(u8::MAX),
                    delivered_at: now,
                },
            );
        } else {
            // Without acks a delivery is the message's completion: the body moves on (the
            // runtime reads bodies back before it releases anything).
            self.counters.delivered_no_ack += 1;
            self.completed(now, entry.enqueued_at);
            let d = delivered(None);
            let body_on_disk = entry.message.is_none();
            emit(
                Delivered {
                    message: entry.message,
                    ..d
                },
                out,
            );
            if stored {
                out.push(Effect::StoreAck { offset });
            } else if body_on_disk && in_paging {
                out.push(Effect::PagingRelease { offset });
            }
        }
    }

    /// Round-robin among the highest-priority consumers that can take a message now.
    fn pick_consumer(&mut self, cx: &mut Context<'_>) -> Option<usize> {
        let n = self.consumers.len();
        if self.config.queue.single_active_consumer {
            let active = self.consumers.iter().position(|c| !c.suspected)?;
            return self.can_take(active, cx).then_some(active);
        }
        let first_priority = self.consumers.first()?.settings.priority;
        let start = self.round_robin;
        if self
            .consumers
            .iter()
            .all(|c| c.settings.priority == first_priority)
        {
            return (0..n)
                .map(|i| (start + i) % n)
                .find(|&idx| self.can_take(idx, cx));
        }
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Stable: round-robin order is kept within a priority.
        order.sort_by_key(|&i| {
            std::cmp::Reverse(
                self.consumers
                    .get(i)
                    .map_or(i32::MIN, |c| c.settings.priority),
            )
        });
        order.into_iter().find(|&idx| self.can_take(idx, cx))
    }

    fn can_take(&self, idx: usize, cx: &mut Context<'_>) -> bool {
        self.consumers
            .get(idx)
            .is_some_and(|c| !c.suspected && c.has_credit() && cx.gate.admit(c.id))
    }

    /// `Command::Suspect`.
    pub(super) fn suspect(
        &mut self,
        consumer: ConsumerId,
        suspected: bool,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        let Some(idx) = self.consumers.iter().position(|c| c.id == consumer) else {
            return Reply::Done;
        };
        let was = self.consumers.get(idx).is_some_and(|c| c.suspected);
        if was == suspected {
            return Reply::Done;
        }
        if !suspected {
            if let Some(c) = self.consumers.get_mut(idx) {
                c.suspected = false;
            }
            self.dispatch(cx, out);
            return Reply::Done;
        }
        let mut c = self.consumers.remove(idx);
        c.suspected = true;
        // To the back, as RabbitMQ puts a suspected single active consumer back among the
        // waiting ones: the next one takes over and keeps it once the node returns.
        self.consumers.push(c);
        if self.round_robin >= self.consumers.len() {
            self.round_robin = 0;
        }
        let offsets: Vec<u64> = self
            .checked_out
            .iter()
            .filter(|(_, co)| co.consumer == Some(consumer))
            .map(|(o, _)| *o)
            .collect();
        self.put_back(&offsets, cx, out);
        Reply::Done
    }

    /// basic.get: the next message, with the count of messages left ready.
    pub(super) fn get(
        &mut self,
        ack_required: bool,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        if self.deleted {
            return Reply::Got {
                delivery: None,
                remaining: 0,
            };
        }
        let now = cx.now;
        self.last_used = now;
        self.expire_heads(cx, out);
        let mut got = None;
        if let Some((entry, returns, level)) = self.take_head(now, cx.reads_back, out) {
            self.hand_out(
                None,
                entry,
                returns,
                level,
                ack_required,
                now,
                out,
                Some(&mut got),
            );
        }
        Reply::Got {
            delivery: got,
            remaining: self.ready_count as u64,
        }
    }

    /// Whether an entry's message has a record in the durable store.
    pub(super) fn entry_stored(&self, e: &Entry) -> bool {
        match &e.message {
            Some(m) => self.is_stored(m),
            None => !e.in_paging(),
        }
    }
}
