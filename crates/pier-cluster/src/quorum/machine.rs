//! [`QueueMachine`]: the state machine every member of a quorum queue's Raft group runs. It
//! applies committed [`QueueEntry`]s to its own [`QueueEngine`] at the leader's time, with
//! the engine's [`OpenGate`] (a member's channels are not in the log: flow control travels as
//! `Credit` ops), so every member holds the same messages, consumers, checked-out deliveries
//! and delivery counts. Every member computes the same effects; only the leader carries out
//! deliveries, so a follower that becomes leader knows each unsettled delivery and its count.
//!
//! The log is the store: a message's offset is its place in the log ([`offset_at`]: the
//! entry's index and the op's position in a batch), and past the engine's memory budget a
//! member keeps only that place (a 16-byte paged entry), as RabbitMQ's quorum queues keep
//! only an index. The leader reads such bodies back from its log ([`BodySource`]) when it
//! delivers, dead-letters or snapshots them; followers never read. Residency is local: it
//! does not change which message goes where (see the engine's module docs), so members that
//! hold different bodies in memory stay identical in everything else. Snapshots carry every
//! body (read back for the purpose), so a member restoring one needs no log behind it.

use std::collections::BTreeMap;
use std::sync::Arc;

use pier_broker::args::PolicySettings;
use pier_broker::queue::engine::{
    quorum_delivery_limit, Command, Context, Effect, EngineConfig, OpenGate, PublisherSeq,
    QueueEngine, Refusal, Reply, Snapshot, StoreMode,
};

use pier_broker::message::Message;

use super::entry::{message_of, QueueEntry, QueueOp, MAX_BATCH_OPS};

/// Bits of a message's offset that hold its position in a batch entry.
const POSITION_BITS: u32 = 16;

/// The offset of the message enqueued by op `position` of the entry at log `index`.
pub fn offset_at(index: u64, position: usize) -> u64 {
    (index << POSITION_BITS) | (position as u64 & ((1 << POSITION_BITS) - 1))
}

/// Where the message at `offset` was enqueued: its entry's log index and its op's position.
pub fn place_of(offset: u64) -> (u64, usize) {
    (
        offset >> POSITION_BITS,
        (offset & ((1 << POSITION_BITS) - 1)) as usize,
    )
}

/// Where a member finds a body it keeps only in its log.
pub trait BodySource: Send + Sync {
    /// The message enqueued at `offset` ([`place_of`]), if the log still holds it.
    fn message(&self, offset: u64) -> Option<Arc<Message>>;
}

/// The replicated queue on one member.
pub struct QueueMachine {
    engine: QueueEngine,
    /// The last log index applied.
    applied: u64,
    /// The clock of the last entry applied (a snapshot works out paged expiries with it).
    at: u64,
    effects: Vec<Effect>,
    bodies: Option<Arc<dyn BodySource>>,
    /// The version of the last policy change applied (`QueueOp::Reconfigure`).
    policy_version: u64,
}

impl std::fmt::Debug for QueueMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueMachine")
            .field("engine", &self.engine)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
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
            at: 0,
            effects: Vec::new(),
            bodies: None,
            policy_version: 0,
        }
    }

    /// The version of the last policy change applied (snapshots carry it).
    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }

    /// Where bodies kept only in the log are read back (a member without one never reads:
    /// it delivers nothing whose body is not in memory).
    pub fn set_bodies(&mut self, bodies: Arc<dyn BodySource>) {
        self.bodies = Some(bodies);
    }

    pub fn bodies(&self) -> Option<Arc<dyn BodySource>> {
        self.bodies.clone()
    }

    /// The kept (at-least-once) dead letters `wanted` picks (by offset), with their bodies:
    /// read from the log where not in memory, `None` where the log cannot give one.
    pub fn kept_dead_letters(
        &self,
        wanted: impl Fn(u64) -> bool,
    ) -> Vec<(u64, Option<Arc<Message>>, pier_broker::DeathReason)> {
        self.engine
            .dead_letters_kept()
            .filter(|(o, ..)| wanted(*o))
            .map(|(o, m, _, reason)| {
                let m = match m {
                    Some(m) => Some(Arc::clone(m)),
                    None => self.bodies.as_ref().and_then(|b| b.message(o)),
                };
                (o, m, reason)
            })
            .collect()
    }

    /// The clock of the last entry applied.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// The log index from which this member still needs bodies from its log: the oldest
    /// message whose body is not in memory, or past everything applied.
    pub fn log_needed_from(&self) -> u64 {
        match self.engine.oldest_on_disk() {
            Some(offset) => place_of(offset).0,
            None => self.applied.saturating_add(1),
        }
    }

    /// A member restarting from a snapshot taken at log index `applied`, after the policy
    /// change of `policy_version`.
    pub fn restore(snapshot: Snapshot, applied: u64, policy_version: u64) -> Self {
        QueueMachine {
            engine: QueueEngine::from_snapshot(snapshot),
            applied,
            at: 0,
            effects: Vec::new(),
            bodies: None,
            policy_version,
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

    /// The state as snapshot bytes (`snapshot.rs`), with bodies kept only in the log read
    /// back; `None` if one cannot be.
    pub fn snapshot_bytes(&self) -> Option<Result<bytes::Bytes, super::entry::EntryError>> {
        encode_with_bodies(
            &self.engine.snapshot(),
            self.at,
            self.bodies.as_deref(),
            self.policy_version,
        )
    }

    /// A member continuing from snapshot bytes taken at log index `applied`, with the
    /// queue's configuration as this member built it and the policy settings the snapshot
    /// carries (a version 1 snapshot carries none: the built ones stay).
    pub fn restore_bytes(
        mut config: EngineConfig,
        bytes: &bytes::Bytes,
        applied: u64,
    ) -> Result<Self, super::entry::EntryError> {
        let (parts, policy) = super::snapshot::decode(bytes)?;
        let mut version = 0;
        if let Some(p) = policy {
            reconfigured(&mut config, &p.settings);
            version = p.version;
        }
        Ok(Self::restore(
            Snapshot::from_parts(member_config(config), parts),
            applied,
            version,
        ))
    }

    /// Applies the entry at log index `index` (entries arrive in index order, each once), as
    /// a follower: bodies kept only in the log stay there.
    pub fn apply(&mut self, index: u64, entry: &QueueEntry) -> Applied {
        self.apply_as(index, entry, false)
    }

    /// Applies the entry; `leading`: the member carries out what it does, so every
    /// delivery, dead letter and basic.get answer gets its body (read back from the log if
    /// it is not in memory), and the paged tail's front is read ahead.
    pub fn apply_as(&mut self, index: u64, entry: &QueueEntry, leading: bool) -> Applied {
        self.applied = index;
        self.at = entry.at;
        let mut gate = OpenGate;
        let mut cx = Context {
            now: entry.at,
            unix_now: entry.unix,
            can_spill: false,
            reads_back: leading,
            gate: &mut gate,
        };
        self.effects.clear();
        let mut batch = Vec::new();
        let mut reply = match entry.op() {
            QueueOp::Batch(ops) => {
                for (position, op) in ops.iter().enumerate().take(MAX_BATCH_OPS) {
                    batch.push(apply_op(
                        &mut self.engine,
                        &mut self.policy_version,
                        offset_at(index, position),
                        op,
                        &mut cx,
                        &mut self.effects,
                    ));
                }
                Ok(Reply::Done)
            }
            op => apply_op(
                &mut self.engine,
                &mut self.policy_version,
                offset_at(index, 0),
                op,
                &mut cx,
                &mut self.effects,
            ),
        };
        if leading {
            if let Some(bodies) = self.bodies.clone() {
                self.read_back(bodies.as_ref(), &mut reply, &mut batch, &mut cx);
            }
        }
        Applied {
            reply,
            batch,
            effects: std::mem::take(&mut self.effects),
        }
    }

    /// Gives every delivery, dead letter and basic.get answer of this step its body, read
    /// from the log where it is not in memory, and answers the engine's read-ahead
    /// (`PageIn`). A body the log cannot give is left out (never reported lost: dropping
    /// a message on one member only would make members differ); the delivery then goes
    /// back (`Shared::applied` releases deliveries without a body).
    fn read_back(
        &mut self,
        source: &dyn BodySource,
        reply: &mut Result<Reply, Refusal>,
        batch: &mut [Result<Reply, Refusal>],
        cx: &mut Context<'_>,
    ) {
        let mut wanted: Vec<u64> = Vec::new();
        for e in &self.effects {
            match e {
                Effect::Deliver(d) if d.message.is_none() => wanted.push(d.offset),
                Effect::DeadLetter {
                    offset,
                    message: None,
                    ..
                } => wanted.push(*offset),
                Effect::PageIn { stored, .. } => wanted.extend_from_slice(stored),
                _ => {}
            }
        }
        for r in std::iter::once(&*reply).chain(batch.iter()) {
            if let Ok(Reply::Got {
                delivery: Some(d), ..
            }) = r
            {
                if d.message.is_none() {
                    wanted.push(d.offset);
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        let mut bodies: BTreeMap<u64, Option<Arc<Message>>> = BTreeMap::new();
        for offset in wanted {
            if let std::collections::btree_map::Entry::Vacant(v) = bodies.entry(offset) {
                match source.message(offset) {
                    Some(m) => {
                        v.insert(Some(m));
                    }
                    None => tracing::error!(
                        offset,
                        "a quorum queue body could not be read back from the log"
                    ),
                }
            }
        }
        let body = |offset: &u64| bodies.get(offset).cloned().flatten();
        for e in &mut self.effects {
            match e {
                Effect::Deliver(d) if d.message.is_none() => d.message = body(&d.offset),
                Effect::DeadLetter {
                    offset, message, ..
                } if message.is_none() => *message = body(offset),
                _ => {}
            }
        }
        for r in std::iter::once(reply).chain(batch.iter_mut()) {
            if let Ok(Reply::Got {
                delivery: Some(d), ..
            }) = r
            {
                if d.message.is_none() {
                    d.message = body(&d.offset);
                }
            }
        }
        if !bodies.is_empty() {
            // Moves the read-ahead into memory and gives checked-out deliveries their body.
            let mut more = Vec::new();
            let _ = self
                .engine
                .apply(Command::PagedIn { bodies }, cx, &mut more);
        }
    }
}

/// Encodes a snapshot with every body, those not in memory read from `bodies` (clock `at`
/// for paged expiries); `None` if one cannot be.
pub fn encode_with_bodies(
    snapshot: &Snapshot,
    at: u64,
    bodies: Option<&dyn BodySource>,
    policy_version: u64,
) -> Option<Result<bytes::Bytes, super::entry::EntryError>> {
    let parts = snapshot
        .to_parts_with(at, &mut |offset| bodies?.message(offset))
        .ok()?;
    let policy = super::snapshot::PolicyState {
        version: policy_version,
        settings: PolicySettings::of(&snapshot.config().queue),
    };
    Some(super::snapshot::encode(&parts, &policy))
}

/// `config` with a policy's settings, the delivery limit as a quorum queue runs it.
fn reconfigured(config: &mut EngineConfig, settings: &PolicySettings) {
    settings.apply_to(&mut config.queue);
    config.delivery_limit = quorum_delivery_limit(settings.delivery_limit);
}

/// The queue's engine configuration as a member runs it: every message is stored (in the
/// log, so the engine asks for no appends: `StoreMode::Shared`), and past the memory budget
/// bodies are kept only there.
fn member_config(mut config: EngineConfig) -> EngineConfig {
    config.stores_persistent = true;
    config.stores_transient = true;
    config
}

/// Applies one op (not a batch) to the engine; an enqueue takes `offset`.
fn apply_op(
    engine: &mut QueueEngine,
    policy_version: &mut u64,
    offset: u64,
    op: &QueueOp,
    cx: &mut Context<'_>,
    effects: &mut Vec<Effect>,
) -> Result<Reply, Refusal> {
    match op {
        QueueOp::Enqueue { publisher, .. } => match message_of(op) {
            Some(m) => {
                engine.advance_offset(offset);
                engine.apply(
                    Command::Enqueue {
                        message: Arc::new(m),
                        publisher: publisher
                            .map(|(publisher, seq)| PublisherSeq { publisher, seq }),
                        store: StoreMode::Shared,
                    },
                    cx,
                    effects,
                )
            }
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
        QueueOp::Return(offsets) => engine.apply(
            Command::Return {
                offsets,
                failed: false,
            },
            cx,
            effects,
        ),
        QueueOp::Fail(offsets) => engine.apply(
            Command::Return {
                offsets,
                failed: true,
            },
            cx,
            effects,
        ),
        QueueOp::Release(offsets) => engine.apply(Command::Release { offsets }, cx, effects),
        QueueOp::Discard(offsets) => engine.apply(Command::Discard { offsets }, cx, effects),
        QueueOp::DeadLettered(offsets) => {
            engine.apply(Command::DeadLettered { offsets }, cx, effects)
        }
        QueueOp::PublisherDown(publisher) => engine.apply(
            Command::PublisherDown {
                publisher: *publisher,
            },
            cx,
            effects,
        ),
        QueueOp::Suspect {
            consumer,
            suspected,
        } => engine.apply(
            Command::Suspect {
                consumer: *consumer,
                suspected: *suspected,
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
        // Every node proposes each policy change: the first of a version counts, one that
        // is late (a newer change was applied) or repeated changes nothing.
        QueueOp::Reconfigure { version, settings } => {
            if *version <= *policy_version {
                return Ok(Reply::Done);
            }
            *policy_version = *version;
            if PolicySettings::of(&engine.config().queue) == **settings {
                return Ok(Reply::Done);
            }
            engine.apply(
                Command::Reconfigure {
                    settings: settings.clone(),
                    delivery_limit: quorum_delivery_limit(settings.delivery_limit),
                },
                cx,
                effects,
            )
        }
        // Never nested (the decoder refuses it): applied as nothing, the same on every member.
        QueueOp::Batch(_) => Ok(Reply::Done),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
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

    /// At-least-once dead lettering: rejected, expired and over-the-limit messages are kept
    /// (in snapshots too) until `DeadLettered`.
    fn at_least_once() -> EngineConfig {
        EngineConfig::quorum(QueueConfig {
            dead_letter_exchange: Some(ShortString::from("dlx")),
            dead_letter_strategy: Some("at-least-once".into()),
            overflow: pier_broker::Overflow::RejectPublish,
            max_length: Some(20),
            message_ttl: Some(40),
            delivery_limit: Some(1),
            ..QueueConfig::default()
        })
    }

    fn publish(at: u64, body: &'static str) -> QueueEntry {
        QueueEntry::new(
            at,
            1_700_000_000_000 + at,
            QueueOp::Enqueue {
                publisher: None,
                exchange: ShortString::from(""),
                routing_key: ShortString::from("q"),
                properties: BasicProperties::default().to_bytes().unwrap(),
                body: Bytes::from_static(body.as_bytes()),
            },
        )
    }

    fn checkout(at: u64, consumer: u64, prefetch: u32) -> QueueEntry {
        QueueEntry::new(
            at,
            0,
            QueueOp::Checkout {
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
        )
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
        replay_everywhere_with(config, ops)
    }

    fn replay_everywhere_with(
        config: fn() -> EngineConfig,
        ops: Vec<QueueOp>,
    ) -> Result<(), TestCaseError> {
        let log: Vec<Bytes> = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| {
                QueueEntry::new(i as u64 * 10, 1_700_000_000_000 + i as u64 * 10, op)
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

        #[test]
        fn members_keeping_dead_letters_agree(
            ops in proptest::collection::vec(op_strategy(), 1..60)
        ) {
            replay_everywhere_with(at_least_once, ops)?;
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
                let at = i as u64;
                m.apply(at + 1, &QueueEntry::new(at, 0, op));
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

    /// A kept dead letter survives a snapshot through its bytes (format version 2) and leaves
    /// with `DeadLettered`.
    #[test]
    fn suspected_consumers_travel_in_snapshots() {
        let mut m = QueueMachine::new(config());
        let log = [publish(1, "a"), checkout(2, 7, 10), checkout(3, 8, 10)];
        for (i, e) in log.iter().enumerate() {
            m.apply(i as u64 + 1, e);
        }
        let suspect = QueueOp::Suspect {
            consumer: 7,
            suspected: true,
        };
        m.apply(4, &QueueEntry::new(4, 0, suspect));
        assert_eq!(m.engine().suspected_consumers().collect::<Vec<_>>(), [7]);
        let bytes = m.snapshot_bytes().unwrap().unwrap();
        assert_eq!(bytes[0], 5);
        let r = QueueMachine::restore_bytes(config(), &bytes, 4).unwrap();
        assert_eq!(r.engine().suspected_consumers().collect::<Vec<_>>(), [7]);
        assert_eq!(r.snapshot().without_waits(), m.snapshot().without_waits());
        // Before version 4 a consumer's flags octet held only `drain`.
        let mut v3 = bytes.to_vec();
        v3[0] = 3;
        assert!(QueueMachine::restore_bytes(config(), &Bytes::from(v3), 4).is_err());
    }

    #[test]
    fn kept_dead_letters_travel_in_snapshots() {
        let mut m = QueueMachine::new(at_least_once());
        let log = [publish(1, "a"), checkout(2, 7, 10)];
        for (i, e) in log.iter().enumerate() {
            m.apply(i as u64 + 1, e);
        }
        let offset = m.engine().checked_out_offsets()[0];
        let a = m.apply(3, &QueueEntry::new(3, 0, QueueOp::Discard(vec![offset])));
        assert!(a.effects.iter().any(|e| matches!(
            e,
            Effect::DeadLetter {
                kept: true,
                message: Some(_),
                ..
            }
        )));
        let bytes = m.snapshot_bytes().unwrap().unwrap();
        assert_eq!(bytes[0], 5);
        let mut r = QueueMachine::restore_bytes(at_least_once(), &bytes, 3).unwrap();
        let kept = r.kept_dead_letters(|_| true);
        assert_eq!(kept.len(), 1);
        assert_eq!(&kept[0].1.as_ref().unwrap().body[..], b"a");
        r.apply(
            4,
            &QueueEntry::new(4, 0, QueueOp::DeadLettered(vec![offset])),
        );
        assert!(r.kept_dead_letters(|_| true).is_empty());
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
            QueueEntry::new(3, 0, QueueOp::Cancel { consumer: 7 }),
            QueueEntry::new(3, 0, QueueOp::Fail(vec![offset])),
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
        assert_eq!(again[0].returns.count, 1);
        assert_eq!(again[0].returns.failed, 1);
    }

    /// The log of a test: entries by index, read back as a member's log store would.
    struct TestLog(std::sync::Mutex<BTreeMap<u64, QueueEntry>>);

    impl BodySource for TestLog {
        fn message(&self, offset: u64) -> Option<Arc<Message>> {
            let (index, position) = place_of(offset);
            let log = self.0.lock().unwrap();
            message_of(log.get(&index)?.op_at(position)?).map(Arc::new)
        }
    }

    fn batch_of(at: u64, bodies: impl Iterator<Item = String>) -> QueueEntry {
        QueueEntry::new(
            at,
            1_700_000_000_000 + at,
            QueueOp::Batch(
                bodies
                    .map(|b| QueueOp::Enqueue {
                        publisher: None,
                        exchange: ShortString::from(""),
                        routing_key: ShortString::from("q"),
                        properties: BasicProperties::default().to_bytes().unwrap(),
                        body: Bytes::from(b),
                    })
                    .collect(),
            ),
        )
    }

    /// Past the memory budget members keep only the places of bodies (in their log). The
    /// leader reads them back for what it delivers, a follower never does, and both take
    /// the same decisions; the leader's snapshot carries every body, a follower without its
    /// log cannot take one.
    #[test]
    fn past_the_budget_bodies_stay_in_the_log_and_the_leader_reads_them_back() {
        let mut c = config();
        c.memory_budget = 16 * 1024;
        let log = Arc::new(TestLog(std::sync::Mutex::new(BTreeMap::new())));
        let mut leader = QueueMachine::new(c.clone());
        leader.set_bodies(Arc::clone(&log) as Arc<dyn BodySource>);
        let mut follower = QueueMachine::new(c.clone());
        let body = |i: usize| format!("{i:04}-{}", "x".repeat(1000));
        let mut index = 0;
        let mut apply = |leader: &mut QueueMachine, follower: &mut QueueMachine, e: QueueEntry| {
            index += 1;
            log.0.lock().unwrap().insert(index, e.clone());
            (leader.apply_as(index, &e, true), follower.apply(index, &e))
        };
        for b in 0..20 {
            apply(
                &mut leader,
                &mut follower,
                batch_of(b, (b as usize * 10..b as usize * 10 + 10).map(body)),
            );
        }
        for m in [&leader, &follower] {
            let s = m.engine().stats();
            assert_eq!(s.ready, 200);
            assert!(
                s.paged_out > 150,
                "bodies past the budget are only in the log: {s:?}"
            );
            assert!(s.memory_bytes <= 16 * 1024, "{s:?}");
        }
        assert!(
            follower.snapshot_bytes().is_none(),
            "no log to read bodies from"
        );
        let snap = leader.snapshot_bytes().unwrap().unwrap();

        let (l, f) = apply(&mut leader, &mut follower, checkout(30, 7, 150));
        let (dl, df) = (deliveries(&l), deliveries(&f));
        assert_eq!(dl.len(), 150);
        let key = |d: &Delivered| (d.consumer, d.offset, d.redelivered, d.returns);
        assert_eq!(
            dl.iter().map(key).collect::<Vec<_>>(),
            df.iter().map(key).collect::<Vec<_>>(),
            "the same decisions on both"
        );
        for (i, d) in dl.iter().enumerate() {
            let m = d.message.as_ref().expect("the leader delivers every body");
            assert_eq!(m.body, Bytes::from(body(i)));
        }
        assert!(
            df.iter().any(|d| d.message.is_none()),
            "the follower reads nothing back"
        );
        assert!(
            follower.log_needed_from() <= 3,
            "{}",
            follower.log_needed_from()
        );

        // basic.get of a message kept only in the log still answers with its body.
        let get = QueueEntry::new(
            31,
            0,
            QueueOp::Get {
                ack_required: false,
            },
        );
        for _ in 0..50 {
            let (l, _) = apply(&mut leader, &mut follower, get.clone());
            let Ok(Reply::Got {
                delivery: Some(d), ..
            }) = &l.reply
            else {
                panic!("a message to get: {:?}", l.reply);
            };
            assert!(d.message.is_some(), "got without its body at {}", d.offset);
        }

        // A member restored from the leader's snapshot holds every body of the time.
        let restored = QueueMachine::restore_bytes(c, &snap, 20).unwrap();
        assert_eq!(restored.engine().stats().ready, 200);
        assert_eq!(restored.engine().stats().paged_out, 0);
        assert_eq!(restored.log_needed_from(), 21);
    }

    fn reconfigure(at: u64, version: u64, max_length: Option<u64>) -> QueueEntry {
        QueueEntry::new(
            at,
            0,
            QueueOp::Reconfigure {
                version,
                settings: Box::new(PolicySettings {
                    max_length,
                    dead_letter_exchange: Some(ShortString::from("dlx")),
                    ..PolicySettings::default()
                }),
            },
        )
    }

    /// A policy change applies at its place in the log on every member (drop-head at
    /// once, dead-lettered); a late proposal of an older change, or the same one again
    /// from another node, changes nothing; snapshots carry the settings and version, and a
    /// snapshot of the first format (no policy part) still restores.
    #[test]
    fn policy_changes_apply_once_in_version_order_and_survive_snapshots() {
        let mut m = QueueMachine::new(config());
        for i in 0..10u64 {
            m.apply(i + 1, &publish(i, "m"));
        }
        let a = m.apply(11, &reconfigure(20, 7, Some(3)));
        let dead = a
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::DeadLetter { .. }))
            .count();
        assert_eq!(dead, 7);
        assert_eq!(m.engine().stats().ready, 3);
        assert_eq!(m.engine().config().queue.max_length, Some(3));
        // The same change from another node, then an older one arriving late: ignored.
        assert!(m.apply(12, &reconfigure(21, 7, Some(3))).effects.is_empty());
        assert!(m.apply(13, &reconfigure(22, 5, Some(1))).effects.is_empty());
        assert_eq!(m.engine().stats().ready, 3);
        assert_eq!(m.policy_version(), 7);

        let bytes = m.snapshot_bytes().unwrap().unwrap();
        let mut r = QueueMachine::restore_bytes(config(), &bytes, 13).unwrap();
        assert_eq!(r.policy_version(), 7);
        assert_eq!(r.engine().config().queue.max_length, Some(3));
        assert_eq!(r.engine().config().delivery_limit, Some(20));
        assert!(r.apply(14, &reconfigure(23, 6, Some(1))).effects.is_empty());
        assert_eq!(r.engine().stats().ready, 3);

        // Version 2: the same bytes without the priority turn (the last byte).
        let mut v2 = bytes[..bytes.len() - 1].to_vec();
        v2[0] = 2;
        let two = QueueMachine::restore_bytes(config(), &Bytes::from(v2), 13).unwrap();
        assert_eq!(two.policy_version(), 7);
        assert_eq!(two.engine().stats().ready, 3);

        // Version 1: also without the policy part and the (empty) count of kept dead letters.
        let mut trailer = bytes::BytesMut::new();
        crate::quorum::entry::put_policy(
            &mut trailer,
            &PolicySettings::of(&r.engine().config().queue),
        );
        let mut v1 = bytes[..bytes.len() - 1 - 8 - trailer.len() - 4].to_vec();
        v1[0] = 1;
        let old = QueueMachine::restore_bytes(config(), &Bytes::from(v1), 13).unwrap();
        assert_eq!(old.policy_version(), 0);
        assert_eq!(old.engine().config().queue.max_length, None);
        assert_eq!(old.engine().stats().ready, 3);
    }
}
