//! [`QueueMachine`]: the state machine every member of a quorum queue's Raft group runs. It
//! applies committed [`QueueEntry`]s to its own [`QueueEngine`] at the leader's time, with
//! the engine's [`OpenGate`] (a member's channels are not in the log: flow control travels as
//! `Credit` ops), so every member holds the same messages, consumers, checked-out deliveries
//! and delivery counts. Every member computes the same effects; only the leader carries out
//! deliveries, so a follower that becomes leader knows each unsettled delivery and its count.
//!
//! Bodies stay in memory and the log is the durable copy (the engine stores nothing itself);
//! snapshots of the engine bound the log.

use std::sync::Arc;

use pier_broker::queue::engine::{
    Command, Context, Effect, EngineConfig, OpenGate, PublisherSeq, QueueEngine, Refusal, Reply,
    Snapshot, StoreMode,
};

use super::entry::{message_of, QueueEntry, QueueOp};

/// The replicated queue on one member.
#[derive(Debug)]
pub struct QueueMachine {
    engine: QueueEngine,
    /// The last log index applied.
    applied: u64,
    effects: Vec<Effect>,
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub reply: Result<Reply, Refusal>,
    /// A batch's replies, one per op in order (empty for any other entry).
    pub batch: Vec<Result<Reply, Refusal>>,
    /// In order; the leader carries them out, followers only count them.
    pub effects: Vec<Effect>,
}

impl QueueMachine {
    /// A new, empty queue (see `member_config`).
    pub fn new(config: EngineConfig) -> Self {
        QueueMachine {
            engine: QueueEngine::new(member_config(config), 0),
            applied: 0,
            effects: Vec::new(),
        }
    }

    /// A member restarting from a snapshot taken at log index `applied`.
    pub fn restore(snapshot: Snapshot, applied: u64) -> Self {
        QueueMachine {
            engine: QueueEngine::from_snapshot(snapshot),
            applied,
            effects: Vec::new(),
        }
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn engine(&self) -> &QueueEngine {
        &self.engine
    }

    pub fn snapshot(&self) -> Snapshot {
        self.engine.snapshot()
    }

    /// The state as snapshot bytes (`snapshot.rs`); `None` if a body is not in memory
    /// (never: a member's engine does not page).
    pub fn snapshot_bytes(&self) -> Option<Result<bytes::Bytes, super::entry::EntryError>> {
        super::snapshot::encode_snapshot(&self.engine.snapshot())
    }

    /// A member continuing from snapshot bytes taken at log index `applied`, with the
    /// queue's configuration as this member built it.
    pub fn restore_bytes(
        config: EngineConfig,
        bytes: &bytes::Bytes,
        applied: u64,
    ) -> Result<Self, super::entry::EntryError> {
        let parts = super::snapshot::decode(bytes)?;
        Ok(Self::restore(
            Snapshot::from_parts(member_config(config), parts),
            applied,
        ))
    }

    /// Applies the entry at log index `index` (entries arrive in index order, each once).
    pub fn apply(&mut self, index: u64, entry: &QueueEntry) -> Applied {
        self.applied = index;
        let mut gate = OpenGate;
        let mut cx = Context {
            now: entry.at,
            unix_now: entry.unix,
            can_spill: false,
            gate: &mut gate,
        };
        self.effects.clear();
        let mut batch = Vec::new();
        let reply = match &entry.op {
            QueueOp::Batch(ops) => {
                for op in ops {
                    batch.push(apply_op(&mut self.engine, op, &mut cx, &mut self.effects));
                }
                Ok(Reply::Done)
            }
            op => apply_op(&mut self.engine, op, &mut cx, &mut self.effects),
        };
        Applied {
            reply,
            batch,
            effects: std::mem::take(&mut self.effects),
        }
    }
}

/// The queue's engine configuration as a member runs it: it stores nothing (the log is the
/// store) and never pages (members keep bodies in memory for now).
fn member_config(mut config: EngineConfig) -> EngineConfig {
    config.stores_persistent = false;
    config.stores_transient = false;
    config.memory_budget = u64::MAX;
    config
}

/// Applies one op (not a batch) to the engine.
fn apply_op(
    engine: &mut QueueEngine,
    op: &QueueOp,
    cx: &mut Context<'_>,
    effects: &mut Vec<Effect>,
) -> Result<Reply, Refusal> {
    match op {
        QueueOp::Enqueue { publisher, .. } => match message_of(op) {
            Some(m) => engine.apply(
                Command::Enqueue {
                    message: Arc::new(m),
                    publisher: publisher.map(|(publisher, seq)| PublisherSeq { publisher, seq }),
                    store: StoreMode::Own,
                },
                cx,
                effects,
            ),
            // Checked when proposed; a member that cannot read it still applies the
            // same (nothing), so members do not diverge.
            None => Ok(Reply::Done),
        },
        QueueOp::Checkout { consumer, settings } => engine.apply(
            Command::Checkout {
                consumer: *consumer,
                settings: settings.clone(),
            },
            cx,
            effects,
        ),
        QueueOp::Cancel { consumer } => engine.apply(
            Command::Cancel {
                consumer: *consumer,
            },
            cx,
            effects,
        ),
        QueueOp::Credit {
            consumer,
            credit,
            drain,
        } => engine.apply(
            Command::Credit {
                consumer: *consumer,
                credit: *credit,
                drain: *drain,
            },
            cx,
            effects,
        ),
        QueueOp::Settle(offsets) => engine.apply(Command::Settle { offsets }, cx, effects),
        QueueOp::Return(offsets) => engine.apply(Command::Return { offsets }, cx, effects),
        QueueOp::Release(offsets) => engine.apply(Command::Release { offsets }, cx, effects),
        QueueOp::Discard(offsets) => engine.apply(Command::Discard { offsets }, cx, effects),
        QueueOp::PublisherDown(publisher) => engine.apply(
            Command::PublisherDown {
                publisher: *publisher,
            },
            cx,
            effects,
        ),
        QueueOp::Tick => engine.apply(Command::Tick, cx, effects),
        QueueOp::Purge => engine.apply(Command::Purge, cx, effects),
        QueueOp::Delete => engine.apply(Command::Delete, cx, effects),
        QueueOp::Get { ack_required } => engine.apply(
            Command::Get {
                ack_required: *ack_required,
            },
            cx,
            effects,
        ),
        // Never nested (the decoder refuses it): applied as nothing, the same on every member.
        QueueOp::Batch(_) => Ok(Reply::Done),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::quorum::entry::tests::op_strategy;
    use bytes::Bytes;
    use pier_broker::args::QueueConfig;
    use pier_broker::queue::engine::{ConsumerSettings, Delivered};
    use pier_wire::{BasicProperties, FieldTable, ShortString};
    use proptest::prelude::*;

    fn config() -> EngineConfig {
        EngineConfig::quorum(QueueConfig::default())
    }

    fn publish(at: u64, body: &'static str) -> QueueEntry {
        QueueEntry {
            at,
            unix: 1_700_000_000_000 + at,
            op: QueueOp::Enqueue {
                publisher: None,
                exchange: ShortString::from(""),
                routing_key: ShortString::from("q"),
                properties: BasicProperties::default().to_bytes().unwrap(),
                body: Bytes::from_static(body.as_bytes()),
            },
        }
    }

    fn checkout(at: u64, consumer: u64, prefetch: u32) -> QueueEntry {
        QueueEntry {
            at,
            unix: 0,
            op: QueueOp::Checkout {
                consumer,
                settings: ConsumerSettings {
                    tag: ShortString::from("ctag"),
                    connection: 1,
                    ack_required: true,
                    exclusive: false,
                    prefetch,
                    priority: 0,
                    arguments: FieldTable::new(),
                    credit: None,
                },
            },
        }
    }

    fn deliveries(a: &Applied) -> Vec<Delivered> {
        a.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Deliver(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    /// Members that apply the same log (through the encoding, as it travels) hold the same
    /// queue and compute the same effects; one restored from a snapshot taken midway ends
    /// the same too.
    fn replay_everywhere(ops: Vec<QueueOp>) -> Result<(), TestCaseError> {
        let log: Vec<Bytes> = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| {
                QueueEntry {
                    at: i as u64 * 10,
                    unix: 1_700_000_000_000 + i as u64 * 10,
                    op,
                }
                .to_bytes()
                .unwrap()
            })
            .collect();
        let mut members: Vec<QueueMachine> = (0..3).map(|_| QueueMachine::new(config())).collect();
        let half = log.len() / 2;
        let mut restored = None;
        for (i, bytes) in log.iter().enumerate() {
            let entry = QueueEntry::decode(bytes).unwrap();
            let outcomes: Vec<Applied> = members
                .iter_mut()
                .map(|m| m.apply(i as u64 + 1, &entry))
                .collect();
            prop_assert_eq!(&outcomes[0], &outcomes[1]);
            prop_assert_eq!(&outcomes[0], &outcomes[2]);
            if i + 1 == half {
                // Through the bytes, as a snapshot is stored and sent.
                let bytes = members[0].snapshot_bytes().unwrap().unwrap();
                restored =
                    Some(QueueMachine::restore_bytes(config(), &bytes, i as u64 + 1).unwrap());
            }
            if let Some(r) = restored.as_mut().filter(|_| i + 1 > half) {
                let a = r.apply(i as u64 + 1, &entry);
                prop_assert_eq!(&a, &outcomes[0]);
            }
        }
        prop_assert_eq!(members[0].snapshot(), members[1].snapshot());
        prop_assert_eq!(members[0].snapshot(), members[2].snapshot());
        if let Some(r) = restored {
            // Everything but the time-in-queue figures, which a snapshot leaves out.
            prop_assert_eq!(
                r.snapshot().without_waits(),
                members[0].snapshot().without_waits()
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn members_applying_one_log_agree(ops in proptest::collection::vec(op_strategy(), 1..60)) {
            replay_everywhere(ops)?;
        }

        /// Snapshot bytes cut short or with a byte changed never panic the decoder.
        #[test]
        fn damaged_snapshots_never_panic(
            ops in proptest::collection::vec(op_strategy(), 1..40),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut m = QueueMachine::new(config());
            for (i, op) in ops.into_iter().enumerate() {
                m.apply(i as u64 + 1, &QueueEntry { at: i as u64, unix: 0, op });
            }
            let bytes = m.snapshot_bytes().unwrap().unwrap();
            let short = bytes.slice(..cut.index(bytes.len()));
            let _ = QueueMachine::restore_bytes(config(), &short, 1);
            let mut changed = bytes.to_vec();
            let at = flip.index(changed.len());
            changed[at] ^= 1 << bit;
            let _ = QueueMachine::restore_bytes(config(), &Bytes::from(changed), 1);
        }
    }

    /// The leader fails with a delivery unsettled: the new leader's member knows it, and when
    /// the consumer's channel is gone (its cancel and return are in the log) the message is
    /// delivered again, redelivered, with its count.
    #[test]
    fn a_new_leader_redelivers_what_the_old_one_left_unsettled() {
        let mut old = QueueMachine::new(config());
        let mut new = QueueMachine::new(config());
        let log = [publish(1, "a"), checkout(2, 7, 10)];
        let mut delivered = Vec::new();
        for (i, e) in log.iter().enumerate() {
            let a = old.apply(i as u64 + 1, e);
            assert_eq!(new.apply(i as u64 + 1, e), a);
            delivered.extend(deliveries(&a));
        }
        assert_eq!(delivered.len(), 1);
        assert!(!delivered[0].redelivered);
        let offset = delivered[0].offset;
        assert_eq!(new.engine().stats().unacked, 1);
        // The old leader is gone: the new one's log gets its consumer's cancel and return,
        // and a new consumer.
        for (i, e) in [
            QueueEntry {
                at: 3,
                unix: 0,
                op: QueueOp::Cancel { consumer: 7 },
            },
            QueueEntry {
                at: 3,
                unix: 0,
                op: QueueOp::Return(vec![offset]),
            },
        ]
        .iter()
        .enumerate()
        {
            new.apply(3 + i as u64, e);
        }
        let a = new.apply(5, &checkout(4, 8, 10));
        let again = deliveries(&a);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].offset, offset);
        assert!(again[0].redelivered);
        assert_eq!(again[0].returns, 1);
    }
}
