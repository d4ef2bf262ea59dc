//! Where bodies are: in memory, or only on disk (the durable store for stored messages, the
//! node's scratch paging store for the rest).
//!
//! Past `memory_budget` (ready bodies plus `MESSAGE_OVERHEAD` each), a new message keeps only
//! its place, as a 16-byte [`PagedEntry`] in its level's `paged` tail. Every paged entry of a
//! level is newer than every in-memory one, so once a tail exists new arrivals join it. When a
//! paged head is taken (delivered, dead-lettered) the engine asks for the next batch to be read
//! back (`Effect::PageIn`); the runtime answers with `Command::PagedIn`, which moves that batch
//! into `ready` and gives bodies to deliveries that went out without one. None of this changes
//! which message goes where: residency is the runtime's business (see the module docs of
//! `engine`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::publish::enqueued_ms;
use super::state::{Entry, Head, PagedEntry, PagedExpiry, Returns};
use super::{Context, Effect, QueueEngine, Reply, PAGE_IN_BATCH, PAGE_IN_BYTES};
use crate::clock::NEVER;
use crate::message::Message;

/// A paged entry's expiry time at clock `now`: from when it entered the queue (queue TTL),
/// or its listed deadline (per-message TTL, stored deadline).
pub(super) fn paged_bound(
    p: &PagedEntry,
    message_ttl: Option<u64>,
    deadlines: &BTreeMap<u64, u64>,
    now: u64,
) -> u64 {
    let enqueued = enqueued_ms(now, p.enqueued_at);
    match (p.expiry(), message_ttl) {
        (PagedExpiry::Never, _) => NEVER,
        (PagedExpiry::QueueTtl, Some(t)) => enqueued.saturating_add(t),
        _ => deadlines.get(&p.offset).copied().unwrap_or(enqueued),
    }
}

impl QueueEngine {
    /// Appends a paged entry to its level's tail; `held` is its body if it stays in memory.
    pub(super) fn push_paged(&mut self, level: usize, p: PagedEntry, held: Option<Arc<Message>>) {
        let Some(l) = self.levels.get_mut(level) else {
            return;
        };
        l.paged.push_back(p);
        self.ready_count += 1;
        self.ready_bytes += p.size();
        match held {
            Some(m) => {
                self.mem_bytes += p.size();
                self.held.insert(p.offset, m);
            }
            None => self.paged += 1,
        }
    }

    /// Accounts for a paged entry taken off its tail; returns its body if it was held, and
    /// its listed deadline if it had one.
    pub(super) fn untrack_paged(&mut self, p: &PagedEntry) -> (Option<Arc<Message>>, Option<u64>) {
        self.ready_count = self.ready_count.saturating_sub(1);
        self.ready_bytes = self.ready_bytes.saturating_sub(p.size());
        let deadline = if p.expiry() == PagedExpiry::Listed {
            self.paged_deadlines.remove(&p.offset)
        } else {
            None
        };
        if let Some(m) = self.held.remove(&p.offset) {
            self.mem_bytes = self.mem_bytes.saturating_sub(p.size());
            return (Some(m), deadline);
        }
        self.paged = self.paged.saturating_sub(1);
        (None, deadline)
    }

    /// A paged entry's expiry time (exact).
    pub(super) fn paged_bound(&self, p: &PagedEntry, now: u64) -> u64 {
        paged_bound(p, self.config.queue.message_ttl, &self.paged_deadlines, now)
    }

    /// The expiry of a paged entry just taken off its tail (its listed deadline, if any, was
    /// returned by `untrack_paged`).
    pub(super) fn paged_expiry(&self, p: &PagedEntry, listed: Option<u64>, now: u64) -> u64 {
        match listed {
            Some(d) => d,
            None if p.expiry() == PagedExpiry::Listed => enqueued_ms(now, p.enqueued_at),
            None => self.paged_bound(p, now),
        }
    }

    /// The expiry of a level's head, in memory or paged.
    pub(super) fn head_bound(&self, level: usize, now: u64) -> u64 {
        match self.levels.get(level).and_then(|l| l.head()) {
            Some(Head::Memory(e)) => e.expires_at,
            Some(Head::Paged(p)) => self.paged_bound(p, now),
            None => NEVER,
        }
    }

    /// Takes the head of the next level (`next_level`: the highest non-empty one but for
    /// quorum queues' two levels), in memory or paged, with its return count and level. A
    /// paged head goes out without its body; with `read_ahead` the next batch of the tail
    /// is asked for too, so the runtime reads them in one go.
    pub(super) fn take_head(
        &mut self,
        now: u64,
        read_ahead: bool,
        out: &mut Vec<Effect>,
    ) -> Option<(Entry, Returns, usize)> {
        let level = self.next_level()?;
        let l = self.levels.get_mut(level)?;
        if let Some((e, returns)) = l.pop_memory() {
            self.took(&e);
            self.after_pop(level, now);
            return Some((e, returns, level));
        }
        let p = l.pop_paged()?;
        let (held, listed) = self.untrack_paged(&p);
        let expires_at = self.paged_expiry(&p, listed, now);
        let e = match held {
            Some(m) => Entry::new(p.offset, m, p.redelivered(), expires_at, p.enqueued_at),
            None => {
                if read_ahead {
                    self.ask_page_in(level, out);
                }
                Entry::on_disk(&p, expires_at)
            }
        };
        self.after_pop(level, now);
        Some((e, Returns::default(), level))
    }

    /// A head was taken from `level`: the new head may expire earlier than the bound says.
    pub(super) fn after_pop(&mut self, level: usize, now: u64) {
        let b = self.head_bound(level, now);
        self.lower_next_expiry(b);
    }

    /// Asks for the front of a level's paged tail to be read back (once per runtime step).
    fn ask_page_in(&mut self, level: usize, out: &mut Vec<Effect>) {
        if self.page_in_asked.contains(&level) {
            return;
        }
        let Some(l) = self.levels.get(level) else {
            return;
        };
        let mut stored = Vec::new();
        let mut spilled = Vec::new();
        let mut bytes = 0u64;
        for (n, p) in l.paged.iter().enumerate() {
            if n >= PAGE_IN_BATCH || (bytes >= PAGE_IN_BYTES && n > 0) {
                break;
            }
            bytes += p.size();
            if self.held.contains_key(&p.offset) {
                continue;
            }
            if p.paging() {
                spilled.push(p.offset);
            } else {
                stored.push(p.offset);
            }
        }
        self.page_in_asked.push(level);
        if !stored.is_empty() || !spilled.is_empty() {
            out.push(Effect::PageIn { stored, spilled });
        }
    }

    /// Bodies read back: deliveries that went out without one keep it (and release their
    /// paging record), and the front of each paged tail moves into memory as far as bodies
    /// (or held ones) reach. A body that could not be read (`None`) at the front of a tail
    /// drops that message: dropping beats serving a broken message.
    pub(super) fn paged_in(
        &mut self,
        mut by_offset: BTreeMap<u64, Option<Arc<Message>>>,
        cx: &Context<'_>,
        out: &mut Vec<Effect>,
    ) -> Reply {
        self.page_in_asked.clear();
        let now = cx.now;
        for (offset, body) in &by_offset {
            let Some(co) = self.checked_out.get_mut(offset) else {
                continue;
            };
            if let (None, Some(m)) = (&co.entry.message, body) {
                co.entry.message = Some(Arc::clone(m));
                if co.entry.in_paging() {
                    out.push(Effect::PagingRelease { offset: *offset });
                }
            }
        }
        let mut lost = 0u64;
        for level in 0..self.levels.len() {
            let mut moved = false;
            while let Some(p) = self
                .levels
                .get(level)
                .and_then(|l| l.paged.front().copied())
            {
                let was_held = self.held.contains_key(&p.offset);
                if !was_held && !by_offset.contains_key(&p.offset) {
                    break;
                }
                let read = by_offset.remove(&p.offset).flatten();
                if let Some(l) = self.levels.get_mut(level) {
                    l.pop_paged();
                }
                let (held, listed) = self.untrack_paged(&p);
                let expires_at = self.paged_expiry(&p, listed, now);
                match held.or(read) {
                    Some(m) => {
                        if p.paging() && !was_held {
                            out.push(Effect::PagingRelease { offset: p.offset });
                        }
                        let e = Entry::new(p.offset, m, p.redelivered(), expires_at, p.enqueued_at);
                        self.added(&e);
                        if let Some(l) = self.levels.get_mut(level) {
                            l.ready.push_back(e);
                        }
                        moved = true;
                    }
                    None => {
                        lost += 1;
                        let e = Entry::on_disk(&p, expires_at);
                        self.release_entry(&e, out);
                    }
                }
            }
            if moved || lost > 0 {
                let b = self.head_bound(level, now);
                self.lower_next_expiry(b);
            }
        }
        Reply::Lost(lost)
    }

    /// A `PageOut` failed: the message keeps its place in the tail with its body in memory.
    pub(super) fn spill_failed(&mut self, offset: u64, message: Arc<Message>) -> Reply {
        for l in &self.levels {
            if let Some(p) = l.paged.iter().rev().find(|p| p.offset == offset) {
                if let std::collections::btree_map::Entry::Vacant(v) = self.held.entry(offset) {
                    v.insert(message);
                    self.mem_bytes += p.size();
                    self.paged = self.paged.saturating_sub(1);
                }
                break;
            }
        }
        Reply::Done
    }

    /// Past the memory budget the newest message (just published, still at the back of its
    /// level) keeps only its place, in its level's paged tail. Without a paging store a message
    /// that is not stored stays in memory (the tail is empty here, so FIFO holds either way).
    pub(super) fn page_out_newest(
        &mut self,
        level: usize,
        offset: u64,
        stored: bool,
        cx: &Context<'_>,
        out: &mut Vec<Effect>,
    ) {
        let now = cx.now;
        let Some(message) = self
            .levels
            .get(level)
            .filter(|l| l.paged.is_empty())
            .and_then(|l| l.ready.back())
            .filter(|e| e.offset == offset)
            .and_then(|e| e.message.clone())
        else {
            return;
        };
        let paging = if stored {
            false
        } else if cx.can_spill {
            out.push(Effect::PageOut { offset, message });
            true
        } else {
            return;
        };
        let Some(e) = self.levels.get_mut(level).and_then(|l| l.ready.pop_back()) else {
            return;
        };
        self.took(&e);
        let kind = self.paged_kind(offset, e.expires_at, enqueued_ms(now, e.enqueued_at));
        let p = PagedEntry::new(
            offset,
            e.size(),
            e.redelivered(),
            paging,
            kind,
            e.enqueued_at,
        );
        self.push_paged(level, p, None);
    }
}
