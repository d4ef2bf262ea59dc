//! Messages entering the queue: enqueue (with reject-publish and deduplication) and recovery.

use std::sync::Arc;

use super::state::{Entry, PagedEntry, PagedExpiry, Requeued};
use super::{Context, Effect, Published, PublisherSeq, QueueEngine, Recovered, Reply, StoreMode};
use crate::args::{parse_expiration, Overflow};
use crate::clock::NEVER;
use crate::deadletter::DeathReason;
use crate::message::Message;
use crate::waits::stamp;

/// The clock time a message stamped `stamp` entered the queue (exact for waits under ~49 days,
/// the range of a `u32` of milliseconds).
pub(super) fn enqueued_ms(now: u64, stamp: u32) -> u64 {
    now.saturating_sub(crate::waits::waited_ms(now, stamp))
}

impl QueueEngine {
    /// The expiry time of a message entering this queue at `now` (the lower of the queue's
    /// and the message's TTL), with the TTL itself (0 has special meaning on publish).
    pub(super) fn expiry_for(&self, message: &Message, now: u64) -> (u64, Option<u64>) {
        let per_message = message
            .properties
            .expiration
            .as_ref()
            .and_then(|e| parse_expiration(e).ok());
        let ttl = match (self.config.queue.message_ttl, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (ttl.map_or(NEVER, |t| now.saturating_add(t)), ttl)
    }

    /// Whether a publish of `message` here can share one store record with other queues: it
    /// is stored, and without a TTL (the stored copy of an expiring message carries this
    /// queue's own deadline).
    pub fn shares_record(&self, message: &Message) -> bool {
        self.is_stored(message) && self.expiry_for(message, 0).1.is_none()
    }

    pub(super) fn enqueue(
        &mut self,
        message: Arc<Message>,
        publisher: Option<PublisherSeq>,
        store: StoreMode,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        let refused = |result| Reply::Enqueued {
            result,
            offset: None,
        };
        if self.deleted {
            return refused(Published::Gone);
        }
        if let Some(p) = publisher {
            if self
                .publishers
                .get(&p.publisher)
                .is_some_and(|&s| p.seq <= s)
            {
                // Already enqueued (a resend after a lost confirm): accepted, not again.
                return refused(Published::Accepted);
            }
        }
        if self.config.queue.overflow != Overflow::DropHead && self.over_limit_with(&message) {
            if self.config.queue.overflow == Overflow::RejectPublishDlx
                && self.config.queue.dead_letter_exchange.is_some()
            {
                out.push(Effect::DeadLetter {
                    offset: self.next_offset,
                    message: Some(message),
                    in_paging: false,
                    reason: DeathReason::MaxLen,
                    kept: false,
                });
            }
            return refused(Published::Rejected);
        }
        if let Some(p) = publisher {
            self.publishers.insert(p.publisher, p.seq);
        }
        let offset = self.next_offset;
        self.next_offset += 1;
        self.counters.published += 1;
        let now = cx.now;
        let (expires_at, ttl) = self.expiry_for(&message, now);
        let stored = self.is_stored(&message);
        if stored && store == StoreMode::Own {
            // With a TTL the deadline is stored too, so that recovery keeps it.
            let deadline = ttl.map(|t| cx.unix_now.saturating_add(t));
            out.push(Effect::StoreAppend {
                offset,
                message: Arc::clone(&message),
                deadline,
            });
        }
        self.enqueue_at(message, offset, expires_at, ttl, stored, cx, out);
        Reply::Enqueued {
            result: Published::Accepted,
            offset: Some(offset),
        }
    }

    /// Puts an admitted message at the back of its level, delivers what consumers can take,
    /// applies TTL 0 and drop-head, and pages it out past the memory budget.
    #[allow(clippy::too_many_arguments)]
    fn enqueue_at(
        &mut self,
        message: Arc<Message>,
        offset: u64,
        expires_at: u64,
        ttl: Option<u64>,
        stored: bool,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) {
        let now = cx.now;
        let level = self.level_of(&message);
        let Some(l) = self.levels.get(level) else {
            return;
        };
        let becomes_head = l.is_empty();
        let ttl0 = (ttl == Some(0)).then(|| Arc::clone(&message));
        if !l.paged.is_empty() {
            // Older messages of this level are paged out: FIFO puts this one behind them.
            let size = message.body_size() as u64;
            let (paging, held) = if stored {
                (false, None)
            } else if cx.can_spill {
                out.push(Effect::PageOut {
                    offset,
                    message: Arc::clone(&message),
                });
                (true, None)
            } else {
                (false, Some(message))
            };
            let kind = self.paged_kind(offset, expires_at, now);
            let p = PagedEntry::new(offset, size, false, paging, kind, stamp(now));
            self.push_paged(level, p, held);
        } else {
            let entry = Entry::new(offset, message, false, expires_at, stamp(now));
            self.added(&entry);
            if let Some(l) = self.levels.get_mut(level) {
                l.ready.push_back(entry);
            }
            if becomes_head {
                self.lower_next_expiry(expires_at);
            }
        }
        self.dispatch(cx, out);
        if let Some(message) = ttl0 {
            // TTL 0: delivered right now or never.
            self.expire_newest(level, offset, message, out);
        }
        self.drop_over_limit(cx, out);
        if self.over_budget() {
            self.page_out_newest(level, offset, stored, cx, out);
        }
    }

    /// reject-publish: would one more message break `x-max-length` or `x-max-length-bytes`?
    fn over_limit_with(&self, message: &Message) -> bool {
        let q = &self.config.queue;
        // Dead letters kept for their targets count, as in RabbitMQ: at-least-once dead
        // lettering pushes back on publishers rather than grow without bound.
        let too_many = q
            .max_length
            .is_some_and(|m| self.ready_count as u64 + self.dead_letters.len() as u64 + 1 > m);
        let too_big = q.max_length_bytes.is_some_and(|m| {
            self.ready_bytes + self.dead_letter_bytes + message.body_size() as u64 > m
        });
        too_many || too_big
    }

    /// How a message entering the paged tail (at `enqueued`, expiring at `expires_at`) will
    /// find its expiry again without its body; a per-message deadline is listed.
    pub(super) fn paged_kind(
        &mut self,
        offset: u64,
        expires_at: u64,
        enqueued: u64,
    ) -> PagedExpiry {
        if expires_at == NEVER {
            PagedExpiry::Never
        } else if self
            .config
            .queue
            .message_ttl
            .is_some_and(|t| enqueued.saturating_add(t) == expires_at)
        {
            PagedExpiry::QueueTtl
        } else {
            self.paged_deadlines.insert(offset, expires_at);
            PagedExpiry::Listed
        }
    }

    /// Refills a recovered durable queue: messages in offset order, with their redelivered
    /// flags and stored expiry deadlines, and the offset to continue from. Past the memory
    /// budget only their places are kept (their bodies are in the durable store).
    pub(super) fn recover(
        &mut self,
        messages: Vec<Recovered>,
        next_offset: u64,
        cx: &Context<'_>,
    ) -> Reply {
        let now = cx.now;
        self.next_offset = self.next_offset.max(next_offset);
        for r in messages {
            // A stored deadline is kept (whatever time passed while the broker was down, as
            // RabbitMQ does); messages stored without one get their TTL from now.
            let expires_at = match r.deadline {
                Some(d) => now.saturating_add(d.saturating_sub(cx.unix_now)),
                None => self.expiry_for(&r.message, now).0,
            };
            let level = self.level_of(&r.message);
            self.next_offset = self.next_offset.max(r.offset + 1);
            // Like the TTL, time in queue counts from the recovery.
            let tail = self.levels.get(level).is_some_and(|l| !l.paged.is_empty());
            if let Some(reason) = r.dead_letter {
                // Kept until its targets confirm it, as before the restart (the runtime
                // routes the kept ones again).
                let entry = Entry::new(r.offset, r.message, r.redelivered, expires_at, stamp(now));
                self.dead_letter_bytes += entry.size();
                self.dead_letters.insert(r.offset, (entry, reason));
                continue;
            }
            // A message that came back keeps its body in memory with its count (few do).
            if r.returns.count == 0 && (tail || self.over_budget()) {
                let kind = self.paged_kind(r.offset, expires_at, now);
                let p = PagedEntry::new(
                    r.offset,
                    r.message.body_size() as u64,
                    r.redelivered,
                    false,
                    kind,
                    stamp(now),
                );
                let head = self.levels.get(level).is_some_and(|l| l.is_empty());
                self.push_paged(level, p, None);
                if head {
                    self.lower_next_expiry(self.paged_bound(&p, now));
                }
                continue;
            }
            let entry = Entry::new(r.offset, r.message, r.redelivered, expires_at, stamp(now));
            self.added(&entry);
            if let Some(l) = self.levels.get_mut(level) {
                if r.returns.count > 0 {
                    // Back where it was before the restart: with the returned messages,
                    // which go first, and with its count.
                    l.requeued.insert(
                        entry.offset,
                        Requeued {
                            entry,
                            returns: r.returns,
                        },
                    );
                } else {
                    l.ready.push_back(entry);
                }
            }
            self.lower_next_expiry(expires_at);
        }
        Reply::Done
    }
}
