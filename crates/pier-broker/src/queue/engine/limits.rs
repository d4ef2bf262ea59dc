//! Length limits: `x-max-length` and `x-max-length-bytes` with `x-overflow` drop-head (the
//! reject-publish modes refuse at enqueue, see `publish.rs`).

use super::{Context, Effect, QueueEngine};
use crate::args::Overflow;
use crate::deadletter::DeathReason;

impl QueueEngine {
    /// drop-head: removes (dead-letters) messages from the head while over a length limit.
    pub(super) fn drop_over_limit(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        if self.config.queue.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let q = &self.config.queue;
            let too_many = q.max_length.is_some_and(|m| self.ready_count as u64 > m);
            let too_big = q.max_length_bytes.is_some_and(|m| self.ready_bytes > m);
            if !(too_many || too_big) {
                break;
            }
            let Some((e, _, _)) = self.take_head(cx.now, false, out) else {
                break;
            };
            self.dead_letter(out, e, DeathReason::MaxLen);
        }
    }
}
