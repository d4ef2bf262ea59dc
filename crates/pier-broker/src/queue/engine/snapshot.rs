//! Snapshots: the engine's state without what can be recomputed (counts and byte totals of
//! ready messages), and the rebuild from one. A Raft log is truncated behind a snapshot, so a
//! replica restored from one must behave exactly like one that applied the whole log; the
//! determinism tests restore midway and compare.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::state::{CheckedOut, Consumer, Level};
use super::{EngineConfig, EngineCounters, QueueEngine};
use crate::message::Message;
use crate::waits::WaitWindow;

/// Everything an engine needs to continue where another left off.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    config: EngineConfig,
    next_offset: u64,
    levels: Vec<Level>,
    held: BTreeMap<u64, Arc<Message>>,
    paged_deadlines: BTreeMap<u64, u64>,
    checked_out: BTreeMap<u64, CheckedOut>,
    consumers: Vec<Consumer>,
    round_robin: usize,
    had_consumers: bool,
    deleted: bool,
    last_used: u64,
    next_expiry: u64,
    next_timeout_check: u64,
    publishers: BTreeMap<u64, u64>,
    counters: EngineCounters,
    waits: Option<Box<WaitWindow>>,
}

impl QueueEngine {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.config.clone(),
            next_offset: self.next_offset,
            levels: self.levels.clone(),
            held: self.held.clone(),
            paged_deadlines: self.paged_deadlines.clone(),
            checked_out: self.checked_out.clone(),
            consumers: self.consumers.clone(),
            round_robin: self.round_robin,
            had_consumers: self.had_consumers,
            deleted: self.deleted,
            last_used: self.last_used,
            next_expiry: self.next_expiry,
            next_timeout_check: self.next_timeout_check,
            publishers: self.publishers.clone(),
            counters: self.counters,
            waits: self.waits.clone(),
        }
    }

    /// An engine continuing from `s`, with the ready counts and byte totals recomputed.
    pub fn from_snapshot(s: Snapshot) -> Self {
        let mut ready_count = 0usize;
        let mut ready_bytes = 0u64;
        let mut mem_bytes = 0u64;
        let mut paged = 0usize;
        for l in &s.levels {
            for e in l.requeued.values().map(|r| &r.entry).chain(l.ready.iter()) {
                ready_count += 1;
                ready_bytes += e.size();
                if e.message.is_some() {
                    mem_bytes += e.size();
                } else {
                    paged += 1;
                }
            }
            for p in l.paged.iter() {
                ready_count += 1;
                ready_bytes += p.size();
                if s.held.contains_key(&p.offset) {
                    mem_bytes += p.size();
                } else {
                    paged += 1;
                }
            }
        }
        QueueEngine {
            config: s.config,
            next_offset: s.next_offset,
            levels: s.levels,
            ready_count,
            ready_bytes,
            mem_bytes,
            paged,
            held: s.held,
            paged_deadlines: s.paged_deadlines,
            checked_out: s.checked_out,
            consumers: s.consumers,
            round_robin: s.round_robin,
            had_consumers: s.had_consumers,
            deleted: s.deleted,
            last_used: s.last_used,
            next_expiry: s.next_expiry,
            next_timeout_check: s.next_timeout_check,
            publishers: s.publishers,
            counters: s.counters,
            waits: s.waits,
            page_in_asked: Vec::new(),
        }
    }
}
