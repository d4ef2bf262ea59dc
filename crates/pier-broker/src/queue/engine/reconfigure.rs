//! A policy changed while the queue runs (RabbitMQ's `policy_changed`): the new settings
//! take effect at once, deterministically, at the place of the command in the sequence.

use super::publish::enqueued_ms;
use super::state::PagedExpiry;
use super::{Context, Effect, QueueEngine, Reply};
use crate::args::PolicySettings;

impl QueueEngine {
    pub(super) fn reconfigure(
        &mut self,
        settings: PolicySettings,
        delivery_limit: Option<u32>,
        cx: &mut Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        if self.deleted {
            return Reply::Done;
        }
        let old_ttl = self.config.queue.message_ttl;
        let before_overflow = self.config.queue.overflow;
        if settings.message_ttl != old_ttl {
            self.pin_paged_expiries(old_ttl, cx.now);
        }
        // RabbitMQ's order (rabbit_amqqueue_process:process_args_policy): the new length
        // limits are enforced at once with the overflow mode in force until now (drop-head
        // drops, dead-lettered `maxlen`; a reject-publish queue keeps its backlog), then the
        // new overflow mode applies to later publishes.
        let overflow = settings.overflow;
        settings.apply_to(&mut self.config.queue);
        self.config.queue.overflow = before_overflow;
        self.config.delivery_limit = delivery_limit;
        self.expire_heads(cx, out);
        self.drop_over_limit(cx, out);
        self.config.queue.overflow = overflow;
        Reply::Done
    }

    /// Paged entries whose expiry was "enqueued + the queue's TTL" get it listed, so that
    /// they keep it under another TTL (as in-memory entries keep their `expires_at`).
    fn pin_paged_expiries(&mut self, old_ttl: Option<u64>, now: u64) {
        let Some(ttl) = old_ttl else {
            return;
        };
        for l in &mut self.levels {
            for p in l.paged.iter_mut() {
                if p.expiry() == PagedExpiry::QueueTtl {
                    let deadline = enqueued_ms(now, p.enqueued_at).saturating_add(ttl);
                    self.paged_deadlines.insert(p.offset, deadline);
                    p.set_expiry(PagedExpiry::Listed);
                }
            }
        }
    }
}
