//! A runtime for tests: carries out the engine's effects against in-memory "disks" the way
//! `classic.rs` does against the stores (bodies read back before anything is released,
//! `PagedIn` after each batch), with a scripted gate. No threads, no clock, no sockets.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Command, Context, Effect, EngineConfig, Gate, QueueEngine, Refusal, Reply};
use crate::consumer::ConsumerId;
use crate::message::Message;

/// Answers the gate from a bit mask, one bit per question (repeating every 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScriptedGate {
    pub mask: u32,
    pub asked: u32,
}

impl Gate for ScriptedGate {
    fn admit(&mut self, _: ConsumerId) -> bool {
        let bit = self.asked % 32;
        self.asked = self.asked.wrapping_add(1);
        self.mask & (1 << bit) != 0
    }
}

/// One command's visible outcome: its reply and every effect it (and its follow-ups) caused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub reply: Result<Reply, Refusal>,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Harness {
    pub engine: QueueEngine,
    pub now: u64,
    pub unix_now: u64,
    pub can_spill: bool,
    pub gate: ScriptedGate,
    /// The durable store: stored bodies by offset.
    pub durable: BTreeMap<u64, Arc<Message>>,
    /// The paging store.
    pub paging: BTreeMap<u64, Arc<Message>>,
    /// Deliveries that need a settlement, in delivery order.
    pub outstanding: Vec<u64>,
    /// Bodies the engine asked for that were not on any disk (must stay empty).
    pub missing: Vec<u64>,
}

impl Harness {
    pub fn new(config: EngineConfig) -> Self {
        Harness {
            engine: QueueEngine::new(config, 0),
            now: 0,
            unix_now: 1_700_000_000_000,
            can_spill: true,
            gate: ScriptedGate {
                mask: u32::MAX,
                asked: 0,
            },
            durable: BTreeMap::new(),
            paging: BTreeMap::new(),
            outstanding: Vec::new(),
            missing: Vec::new(),
        }
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.unix_now += ms;
    }

    fn apply_raw(&mut self, command: Command<'_>, out: &mut Vec<Effect>) -> Result<Reply, Refusal> {
        let mut gate = self.gate;
        let mut cx = Context {
            now: self.now,
            unix_now: self.unix_now,
            can_spill: self.can_spill,
            reads_back: true,
            gate: &mut gate,
        };
        let r = self.engine.apply(command, &mut cx, out);
        self.gate = gate;
        r
    }

    /// Applies a command and carries out everything that follows from it.
    pub fn step(&mut self, command: Command<'_>) -> Step {
        let mut effects = Vec::new();
        let reply = self.apply_raw(command, &mut effects);
        let mut all = Vec::new();
        let mut got = match &reply {
            Ok(Reply::Got {
                delivery: Some(d), ..
            }) => Some(d.clone()),
            _ => None,
        };
        if let Some(d) = got.as_ref().filter(|d| d.ack_required) {
            self.outstanding.push(d.offset);
        }
        while !effects.is_empty() || got.as_ref().is_some_and(|d| d.message.is_none()) {
            let bodies = self.read_bodies(&effects, got.as_ref());
            got = None;
            for e in &effects {
                self.carry_out(e, &bodies);
            }
            all.append(&mut effects);
            if let Some(bodies) = bodies {
                let bodies = bodies.into_iter().map(|(o, m)| (o, Some(m))).collect();
                let _ = self.apply_raw(Command::PagedIn { bodies }, &mut effects);
            }
        }
        Step {
            reply,
            effects: all,
        }
    }

    fn read_bodies(
        &mut self,
        effects: &[Effect],
        got: Option<&super::Delivered>,
    ) -> Option<BTreeMap<u64, Arc<Message>>> {
        let mut wanted: Vec<(u64, bool)> = Vec::new();
        if let Some(d) = got.filter(|d| d.message.is_none()) {
            wanted.push((d.offset, d.in_paging));
        }
        let mut written: BTreeMap<u64, Arc<Message>> = BTreeMap::new();
        for e in effects {
            match e {
                Effect::Deliver(d) if d.message.is_none() => wanted.push((d.offset, d.in_paging)),
                Effect::DeadLetter {
                    offset,
                    message: None,
                    in_paging,
                    ..
                } => wanted.push((*offset, *in_paging)),
                Effect::PageIn { stored, spilled } => {
                    wanted.extend(stored.iter().map(|o| (*o, false)));
                    wanted.extend(spilled.iter().map(|o| (*o, true)));
                }
                Effect::PageOut { offset, message }
                | Effect::StoreAppend {
                    offset, message, ..
                } => {
                    written.insert(*offset, Arc::clone(message));
                }
                _ => {}
            }
        }
        if wanted.is_empty() {
            return None;
        }
        let mut bodies = BTreeMap::new();
        for (o, in_paging) in wanted {
            let disk = if in_paging {
                &self.paging
            } else {
                &self.durable
            };
            match written.get(&o).or_else(|| disk.get(&o)) {
                Some(m) => {
                    bodies.insert(o, Arc::clone(m));
                }
                None => self.missing.push(o),
            }
        }
        Some(bodies)
    }

    fn carry_out(&mut self, e: &Effect, bodies: &Option<BTreeMap<u64, Arc<Message>>>) {
        let known = |o: &u64| bodies.as_ref().is_some_and(|b| b.contains_key(o));
        match e {
            Effect::Deliver(d) => {
                if d.message.is_none() && !known(&d.offset) {
                    self.missing.push(d.offset);
                }
                if d.ack_required {
                    self.outstanding.push(d.offset);
                }
            }
            Effect::StoreAppend {
                offset, message, ..
            } => {
                self.durable.insert(*offset, Arc::clone(message));
            }
            Effect::StoreAck { offset } => {
                self.durable.remove(offset);
            }
            Effect::PageOut { offset, message } => {
                self.paging.insert(*offset, Arc::clone(message));
            }
            Effect::PagingRelease { offset } => {
                self.paging.remove(offset);
            }
            Effect::PagingDropAll => self.paging.clear(),
            Effect::DeadLetter {
                offset,
                message: None,
                ..
            } if !known(offset) => self.missing.push(*offset),
            _ => {}
        }
    }

    /// Takes up to `n` outstanding deliveries, starting at `from` (wrapping).
    pub fn take_outstanding(&mut self, from: usize, n: usize) -> Vec<u64> {
        if self.outstanding.is_empty() {
            return Vec::new();
        }
        let start = from % self.outstanding.len();
        let end = (start + n.max(1)).min(self.outstanding.len());
        self.outstanding.drain(start..end).collect()
    }
}
