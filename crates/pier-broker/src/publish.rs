//! The one publish path: every message enters queues through [`VHost::publish`], whoever
//! sends it — a client channel (any protocol), the management API's "publish message", dead
//! lettering, the delayed exchange when a message is due, the broker's own publishes (the
//! aliveness test). So `x-delay`, CC/BCC, alternate exchanges, mandatory returns, the shared
//! fan-out record and durability tokens behave the same for all of them.
//!
//! ```text
//!  VHost::publish(message, options)
//!    1. x-delayed-message exchange with a positive x-delay? held (delayed.rs) ─► Delayed
//!    2. routing keys: the routing key + CC + BCC (406 for a CC/BCC that is not an array)
//!    3. route through the exchange graph (alternate exchanges; 404, 403 for internal ones)
//!    4. dead letters only: drop queues that would make a cycle (RabbitMQ's rule)
//!    5. BCC removed from what is delivered
//!    6. fanout::publish_to_queues: one stored record for every durable queue, durability
//!       token for confirms and connection credit
//!    7. dead letters the queues produce: republished through this same path (a work list)
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::deadletter::{self, DeadLetter, DeathReason};
use crate::error::Result;
use crate::fanout;
use crate::message::Message;
use crate::persist::PublishDurability;
use crate::queue::Queue;
use crate::vhost::{sender_selected_keys, VHost};

/// How a publish learns that its stored copies are on disk.
pub enum Durability<'a> {
    /// Nobody waits (transient messages, the broker's own publishes).
    None,
    /// The publisher's token (confirm mode): every stored copy, and a stored delayed
    /// message, holds it until on disk. The caller releases it after `publish`.
    Token(&'a Arc<PublishDurability>),
    /// Made only when a routed queue makes the publish wait: it stores the message (a
    /// persistent message to a durable queue, any message to a stream), or it is homed on
    /// another node (which confirms it). For connection credit, and for confirms of messages
    /// that do not wait otherwise; released by `publish`.
    OnStore(&'a mut dyn FnMut() -> Arc<PublishDurability>),
}

/// Options of one publish.
pub struct PublishOptions<'a> {
    /// A client's publish: internal exchanges are refused (403).
    pub from_client: bool,
    pub durability: Durability<'a>,
}

impl PublishOptions<'_> {
    /// A client's publish with no durability tracking (the management API).
    pub fn client() -> Self {
        PublishOptions {
            from_client: true,
            durability: Durability::None,
        }
    }

    /// The broker's own publish (internal exchanges allowed).
    pub fn internal() -> Self {
        PublishOptions {
            from_client: false,
            durability: Durability::None,
        }
    }
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishOutcome {
    /// Some queue took it (or refused it): it was routed. A mandatory publish that was not
    /// routed is returned to its publisher.
    pub routed: bool,
    /// Some queue refused it (`x-overflow` reject-publish): the publisher gets a basic.nack.
    pub rejected: bool,
    /// A delayed-message exchange holds it (it routes to nothing now, as in the plugin).
    pub delayed: bool,
}

/// Dead letters waiting to be republished, with the queue they left.
pub(crate) type DeadLetterWork = Vec<(Arc<Queue>, Vec<DeadLetter>)>;

thread_local! {
    /// The routing result buffer, reused by every publish on this thread (no allocation per
    /// message on the hot path).
    static ROUTED: RefCell<Vec<Arc<Queue>>> = const { RefCell::new(Vec::new()) };
}

impl VHost {
    /// Publishes `message` to the exchange it names. Routing errors are RabbitMQ's: 404 for a
    /// missing exchange, 403 for an internal one from a client, 406 for a bad CC/BCC header.
    pub fn publish(
        &self,
        message: Arc<Message>,
        options: PublishOptions<'_>,
    ) -> Result<PublishOutcome> {
        let mut dead = Vec::new();
        let outcome = self.publish_collect(message, options, None, &mut dead);
        if !dead.is_empty() {
            self.republish_dead_letters(dead);
        }
        outcome
    }

    /// `publish`, with the dead letters the queues produce handed back instead of routed;
    /// `dead_letter` is the reason when this message is itself a dead letter (cycle rule).
    fn publish_collect(
        &self,
        message: Arc<Message>,
        options: PublishOptions<'_>,
        dead_letter: Option<DeathReason>,
        dead: &mut DeadLetterWork,
    ) -> Result<PublishOutcome> {
        let token = match &options.durability {
            Durability::Token(t) => Some(*t),
            _ => None,
        };
        if self.delay(&message, token) {
            return Ok(PublishOutcome {
                delayed: true,
                ..PublishOutcome::default()
            });
        }
        // Taken out of the thread-local for the call, so a nested publish would get its own.
        let mut queues = ROUTED.with(|r| std::mem::take(&mut *r.borrow_mut()));
        queues.clear();
        let routed = self.route_message(&message, options.from_client, &mut queues);
        let outcome = match routed {
            Err(e) => Err(e),
            Ok(()) => {
                if let Some(reason) = dead_letter {
                    queues.retain(|q| !deadletter::is_cycle(&message, reason, q.name()));
                }
                // BCC routed the message; it is not delivered with it.
                let message = Message::without_bcc(message);
                let mut made = None;
                let durability = match options.durability {
                    Durability::Token(t) => Some(t),
                    // Paging writes hold credit too, for transient messages as well (a
                    // publisher must not outrun the paging store; see ClassicQueue::page_out).
                    Durability::OnStore(make)
                        if queues.iter().any(|q| q.needs_durability(&message)) =>
                    {
                        Some(&*made.insert(make()))
                    }
                    _ => None,
                };
                let out = fanout::publish_to_queues(&mut queues, &message, durability, dead);
                if let Some(d) = made {
                    d.release();
                }
                Ok(PublishOutcome {
                    routed: out.routed,
                    rejected: out.rejected,
                    delayed: false,
                })
            }
        };
        queues.clear();
        ROUTED.with(|r| {
            let mut r = r.borrow_mut();
            if r.capacity() < queues.capacity() {
                *r = queues;
            }
        });
        outcome
    }

    /// The queues a message goes to: its routing key plus CC and BCC, through the exchange
    /// graph (each queue once).
    fn route_message(
        &self,
        message: &Message,
        from_client: bool,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<()> {
        let headers = message.properties.headers.as_ref();
        let sender_selected =
            headers.is_some_and(|h| h.contains_key("CC") || h.contains_key("BCC"));
        let t = self.read();
        if !sender_selected {
            // The common case: one key, no allocation.
            return self.route_locked(
                &t,
                &message.exchange,
                &[&message.routing_key],
                headers,
                from_client,
                out,
            );
        }
        let keys = sender_selected_keys(&message.routing_key, headers)?;
        let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        self.route_locked(&t, &message.exchange, &keys, headers, from_client, out)
    }

    /// Publishes `message` into `queue` of this vhost, already routed: the node a client is
    /// on routed it to a queue homed here. `durability` learns when it is on disk (stored
    /// queues) as for any publish; dead letters the queue produces are routed as usual.
    pub fn publish_to_queue(
        &self,
        queue: &Arc<Queue>,
        message: Arc<Message>,
        durability: Option<&Arc<PublishDurability>>,
    ) -> crate::queue::Published {
        let mut dead = Vec::new();
        let published = queue.publish_collect(message, &mut dead, durability);
        if !dead.is_empty() {
            self.republish_dead_letters(vec![(Arc::clone(queue), dead)]);
        }
        published
    }

    /// Republishes what `from` dead-lettered to its dead-letter exchange. Called by queues once
    /// their lock is released.
    pub fn route_dead_letters(&self, from: &Arc<Queue>, dead: Vec<DeadLetter>) {
        self.republish_dead_letters(vec![(Arc::clone(from), dead)]);
    }

    /// Dead letters go through the same publish path as everything else; those the targets
    /// produce in turn are handled here too (a work list, not recursion). A missing
    /// dead-letter exchange drops the messages.
    fn republish_dead_letters(&self, dead: DeadLetterWork) {
        if dead.is_empty() {
            return;
        }
        let mut work: VecDeque<(Arc<Queue>, Vec<DeadLetter>)> = dead.into();
        // A bound for pathological set-ups; RabbitMQ's cycle rule normally stops loops first.
        let mut budget: usize = 100_000;
        while let Some((source, items)) = work.pop_front() {
            let config = source.config();
            let Some(dlx) = config.dead_letter_exchange.as_ref() else {
                continue;
            };
            let dlrk = config.dead_letter_routing_key.as_deref();
            for item in items {
                if budget == 0 {
                    tracing::warn!(queue = %source.name(), "dead-letter loop bound reached; dropping");
                    return;
                }
                budget -= 1;
                let (message, _) = deadletter::dead_lettered(
                    &item.message,
                    item.reason,
                    source.name(),
                    dlx,
                    dlrk,
                    self.clock().unix_seconds(),
                );
                let mut more = Vec::new();
                match item.kept {
                    // A missing dead-letter exchange (404) drops the message, as in RabbitMQ.
                    None => {
                        let _ = self.publish_collect(
                            Arc::new(message),
                            PublishOptions::internal(),
                            Some(item.reason),
                            &mut more,
                        );
                    }
                    // At least once: published with confirms; the source keeps it until
                    // every target queue has it (stored copies on disk, replicated ones
                    // committed), and routes it again when it reached none, a queue
                    // refused it, a copy failed, or the exchange is missing.
                    Some(offset) => {
                        let from = Arc::downgrade(&source);
                        let token = PublishDurability::new(move |ok| {
                            if let Some(q) = from.upgrade() {
                                q.dead_letter_settled(offset, ok);
                            }
                        });
                        let outcome = self.publish_collect(
                            Arc::new(message),
                            PublishOptions {
                                from_client: false,
                                durability: Durability::Token(&token),
                            },
                            Some(item.reason),
                            &mut more,
                        );
                        let taken = outcome.is_ok_and(|o| o.routed && !o.rejected);
                        token.complete(taken);
                    }
                }
                work.extend(more);
            }
        }
    }
}
