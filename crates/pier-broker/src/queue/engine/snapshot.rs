//! Snapshots: the engine's state without what can be recomputed (counts and byte totals of
//! ready messages), and the rebuild from one. A Raft log is truncated behind a snapshot, so a
//! replica restored from one must behave exactly like one that applied the whole log; the
//! determinism tests restore midway and compare.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::paging::paged_bound;
use super::state::{CheckedOut, Consumer, ConsumerSettings, Entry, Level, Requeued, Returns};
use super::{EngineConfig, EngineCounters, QueueEngine};
use crate::consumer::ConsumerId;
use crate::deadletter::DeathReason;
use crate::message::Message;
use crate::waits::WaitWindow;

/// Everything an engine needs to continue where another left off.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    config: EngineConfig,
    next_offset: u64,
    levels: Vec<Level>,
    dequeues: u8,
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
    dead_letters: BTreeMap<u64, (Entry, DeathReason)>,
    counters: EngineCounters,
    waits: Option<Box<WaitWindow>>,
}

impl QueueEngine {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.config.clone(),
            next_offset: self.next_offset,
            levels: self.levels.clone(),
            dequeues: self.dequeues,
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
            dead_letters: self.dead_letters.clone(),
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
            dequeues: s.dequeues,
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
            dead_letter_bytes: s.dead_letters.values().map(|(e, _)| e.size()).sum(),
            dead_letters: s.dead_letters,
            counters: s.counters,
            waits: s.waits,
            page_in_asked: Vec::new(),
        }
    }
}

/// A message in a snapshot's plain view (always in memory: see [`Snapshot::to_parts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EntryParts {
    pub offset: u64,
    pub message: Arc<Message>,
    pub expires_at: u64,
    pub redelivered: bool,
    pub enqueued_at: u32,
}

/// One priority level: ready messages in order, and those that came back (with how often).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LevelParts {
    pub ready: Vec<EntryParts>,
    pub requeued: Vec<(EntryParts, Returns)>,
}

/// A delivery not settled yet.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedOutParts {
    /// None: taken with basic.get.
    pub consumer: Option<ConsumerId>,
    pub entry: EntryParts,
    pub returns: Returns,
    pub level: u8,
    pub delivered_at: u64,
}

/// A consumer with its counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerParts {
    pub id: ConsumerId,
    pub settings: ConsumerSettings,
    pub unacked: u32,
    pub credit: u32,
    pub drain: bool,
    pub suspected: bool,
}

/// A snapshot as plain data, for a replicated queue to write in its own format. The
/// configuration is not part of it (every member builds the same one from the declaration),
/// nor the time-in-queue histograms (figures, not state).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotParts {
    pub next_offset: u64,
    pub levels: Vec<LevelParts>,
    /// Two-level (quorum) queues: where the 2:1 turn between high and normal stands.
    pub dequeues: u8,
    pub checked_out: Vec<CheckedOutParts>,
    pub consumers: Vec<ConsumerParts>,
    pub round_robin: u64,
    pub had_consumers: bool,
    pub deleted: bool,
    pub last_used: u64,
    pub next_expiry: u64,
    pub next_timeout_check: u64,
    pub publishers: Vec<(u64, u64)>,
    pub counters: EngineCounters,
    /// At-least-once dead letters not confirmed by their targets yet.
    pub dead_letters: Vec<(EntryParts, DeathReason)>,
}

/// An entry in the plain view, its body from memory or from `fetch`.
fn parts(e: &Entry, fetch: &mut dyn FnMut(u64) -> Option<Arc<Message>>) -> Result<EntryParts, u64> {
    let message = match &e.message {
        Some(m) => Arc::clone(m),
        None => fetch(e.offset).ok_or(e.offset)?,
    };
    Ok(EntryParts {
        offset: e.offset,
        message,
        expires_at: e.expires_at,
        redelivered: e.redelivered(),
        enqueued_at: e.enqueued_at,
    })
}

fn entry_of(p: EntryParts) -> Entry {
    Entry::new(
        p.offset,
        p.message,
        p.redelivered,
        p.expires_at,
        p.enqueued_at,
    )
}

impl Snapshot {
    /// The plain view; `None` when a body is not in memory (see [`Snapshot::to_parts_with`]
    /// for an engine that pages).
    pub fn to_parts(&self) -> Option<SnapshotParts> {
        self.to_parts_with(0, &mut |_| None).ok()
    }

    /// The plain view with every body in it: those not in memory come from `fetch` (a
    /// replicated queue reads them from its log), paged-out messages become ready ones at
    /// their place, with their expiry worked out at clock `now` (the last applied entry's).
    /// `Err(offset)` names a body `fetch` could not give.
    pub fn to_parts_with(
        &self,
        now: u64,
        fetch: &mut dyn FnMut(u64) -> Option<Arc<Message>>,
    ) -> Result<SnapshotParts, u64> {
        let mut levels = Vec::with_capacity(self.levels.len());
        for l in &self.levels {
            let mut ready = l
                .ready
                .iter()
                .map(|e| parts(e, fetch))
                .collect::<Result<Vec<_>, _>>()?;
            for p in l.paged.iter() {
                let message = match self.held.get(&p.offset) {
                    Some(m) => Arc::clone(m),
                    None => fetch(p.offset).ok_or(p.offset)?,
                };
                ready.push(EntryParts {
                    offset: p.offset,
                    message,
                    expires_at: paged_bound(
                        p,
                        self.config.queue.message_ttl,
                        &self.paged_deadlines,
                        now,
                    ),
                    redelivered: p.redelivered(),
                    enqueued_at: p.enqueued_at,
                });
            }
            levels.push(LevelParts {
                ready,
                requeued: l
                    .requeued
                    .values()
                    .map(|r| parts(&r.entry, fetch).map(|e| (e, r.returns)))
                    .collect::<Result<_, _>>()?,
            });
        }
        let checked_out = self
            .checked_out
            .values()
            .map(|c| {
                Ok(CheckedOutParts {
                    consumer: c.consumer,
                    entry: parts(&c.entry, fetch)?,
                    returns: c.returns,
                    level: c.level,
                    delivered_at: c.delivered_at,
                })
            })
            .collect::<Result<_, u64>>()?;
        Ok(SnapshotParts {
            next_offset: self.next_offset,
            levels,
            dequeues: self.dequeues,
            checked_out,
            consumers: self
                .consumers
                .iter()
                .map(|c| ConsumerParts {
                    id: c.id,
                    settings: c.settings.clone(),
                    unacked: c.unacked,
                    credit: c.credit,
                    drain: c.drain,
                    suspected: c.suspected,
                })
                .collect(),
            round_robin: self.round_robin as u64,
            had_consumers: self.had_consumers,
            deleted: self.deleted,
            last_used: self.last_used,
            next_expiry: self.next_expiry,
            next_timeout_check: self.next_timeout_check,
            publishers: self.publishers.iter().map(|(p, s)| (*p, *s)).collect(),
            counters: self.counters,
            dead_letters: self
                .dead_letters
                .values()
                .map(|(e, r)| parts(e, fetch).map(|e| (e, *r)))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The snapshot of the plain view, with `config` (levels beyond the configuration's
    /// priorities are merged into its highest).
    pub fn from_parts(config: EngineConfig, p: SnapshotParts) -> Snapshot {
        let count = config.level_count();
        let mut levels: Vec<Level> = (0..count).map(|_| Level::default()).collect();
        for (i, l) in p.levels.into_iter().enumerate() {
            let Some(level) = levels.get_mut(i.min(count - 1)) else {
                continue;
            };
            level.ready.extend(l.ready.into_iter().map(entry_of));
            for (e, returns) in l.requeued {
                let entry = entry_of(e);
                level
                    .requeued
                    .insert(entry.offset, Requeued { entry, returns });
            }
        }
        Snapshot {
            config,
            next_offset: p.next_offset,
            levels,
            dequeues: p.dequeues,
            held: BTreeMap::new(),
            paged_deadlines: BTreeMap::new(),
            checked_out: p
                .checked_out
                .into_iter()
                .map(|c| {
                    let entry = entry_of(c.entry);
                    (
                        entry.offset,
                        CheckedOut {
                            consumer: c.consumer,
                            entry,
                            returns: c.returns,
                            level: c.level,
                            delivered_at: c.delivered_at,
                        },
                    )
                })
                .collect(),
            consumers: p
                .consumers
                .into_iter()
                .map(|c| Consumer {
                    id: c.id,
                    settings: c.settings,
                    unacked: c.unacked,
                    credit: c.credit,
                    drain: c.drain,
                    suspected: c.suspected,
                })
                .collect(),
            round_robin: usize::try_from(p.round_robin).unwrap_or(0),
            had_consumers: p.had_consumers,
            deleted: p.deleted,
            last_used: p.last_used,
            next_expiry: p.next_expiry,
            next_timeout_check: p.next_timeout_check,
            publishers: p.publishers.into_iter().collect(),
            dead_letters: p
                .dead_letters
                .into_iter()
                .map(|(e, r)| (e.offset, (entry_of(e), r)))
                .collect(),
            counters: p.counters,
            waits: None,
        }
    }

    /// The same snapshot without its time-in-queue figures (what `from_parts` restores).
    /// The configuration the engine ran with (policy changes included).
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn without_waits(mut self) -> Snapshot {
        self.waits = None;
        self
    }
}
