//! The contract a Raft log will rely on, checked on generated command sequences:
//!
//! 1. **Replay**: the same commands from an empty state give the same replies, effects and
//!    state, every time.
//! 2. **Snapshot**: an engine rebuilt from a snapshot taken midway (counts recomputed)
//!    continues exactly like the one that applied every command.
//! 3. **Residency does not decide**: with a tiny memory budget (bodies paged out and read
//!    back) or an unlimited one, with or without a paging store, the same commands deliver
//!    the same messages to the same consumers, dead-letter and store the same ones.
//!
//! Plus invariants on every run: no body is asked for after its record was released, and
//! every message is accounted for (ready + checked out + gone = published).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use pier_wire::{BasicProperties, FieldTable, ShortString};
use proptest::prelude::*;

use super::harness::{Harness, Step};
use super::*;
use crate::args::{Overflow, QueueConfig};

/// A command as generated: turned into a real `Command` by the harness state at that point
/// (which offsets are outstanding, which consumers exist).
#[derive(Debug, Clone)]
enum Op {
    Publish {
        size: u16,
        persistent: bool,
        priority: u8,
        ttl: Option<u16>,
        publisher: Option<(u8, u8)>,
    },
    Subscribe {
        prefetch: u8,
        ack: bool,
        priority: i8,
        credit: Option<u8>,
    },
    Unsubscribe(u8),
    /// A consumer's node out of reach (or back).
    Suspect(u8, bool),
    Credit {
        consumer: u8,
        credit: u8,
        drain: bool,
    },
    Settle(u8, u8),
    Return(u8, u8, bool),
    Discard(u8, u8),
    Get(bool),
    Advance(u16),
    Gate(u32),
    Spill(bool),
    Tick,
    Dispatch,
    Touch,
    Purge,
    Delete,
    /// The runtime reports kept dead letters confirmed (from the nth kept, how many).
    DeadLettered(u8, u8),
    /// The runtime routes kept dead letters again.
    RetryDeadLetters,
    /// A policy change: new limits, TTL, expiry, dead-lettering, delivery limit.
    Reconfigure {
        ttl: Option<u16>,
        max_len: Option<u8>,
        overflow: u8,
        dlx: bool,
        expires: Option<u16>,
        limit: Option<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u16..600, any::<bool>(), 0u8..8, proptest::option::weighted(0.2, 0u16..300),
              proptest::option::weighted(0.2, (0u8..3, 0u8..8)))
            .prop_map(|(size, persistent, priority, ttl, publisher)| Op::Publish {
                size, persistent, priority, ttl, publisher
            }),
        2 => (0u8..4, proptest::bool::weighted(0.8), -1i8..2, proptest::option::weighted(0.2, 0u8..5))
            .prop_map(|(prefetch, ack, priority, credit)| Op::Subscribe { prefetch, ack, priority, credit }),
        1 => any::<u8>().prop_map(Op::Unsubscribe),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(c, s)| Op::Suspect(c, s)),
        1 => (any::<u8>(), 0u8..6, any::<bool>())
            .prop_map(|(consumer, credit, drain)| Op::Credit { consumer, credit, drain }),
        4 => (any::<u8>(), 1u8..4).prop_map(|(a, b)| Op::Settle(a, b)),
        2 => (any::<u8>(), 1u8..4, any::<bool>()).prop_map(|(a, b, f)| Op::Return(a, b, f)),
        1 => (any::<u8>(), 1u8..3).prop_map(|(a, b)| Op::Discard(a, b)),
        1 => any::<bool>().prop_map(Op::Get),
        2 => (0u16..400).prop_map(Op::Advance),
        1 => any::<u32>().prop_map(Op::Gate),
        1 => any::<bool>().prop_map(Op::Spill),
        1 => Just(Op::Tick),
        1 => Just(Op::Dispatch),
        1 => Just(Op::Touch),
        1 => Just(Op::Purge),
        1 => prop_oneof![99 => Just(Op::Tick), 1 => Just(Op::Delete)],
        1 => (any::<u8>(), 1u8..3).prop_map(|(a, b)| Op::DeadLettered(a, b)),
        1 => Just(Op::RetryDeadLetters),
        1 => (
            proptest::option::weighted(0.4, 1u16..500),
            proptest::option::weighted(0.5, 0u8..8),
            0u8..3,
            any::<bool>(),
            proptest::option::weighted(0.2, 200u16..2000),
            proptest::option::weighted(0.3, 0u8..3),
        )
            .prop_map(|(ttl, max_len, overflow, dlx, expires, limit)| Op::Reconfigure {
                ttl, max_len, overflow, dlx, expires, limit
            }),
    ]
}

fn queue_config() -> impl Strategy<Value = EngineConfig> {
    (
        proptest::option::weighted(0.3, 1u64..500),
        proptest::option::weighted(0.3, 1u64..12),
        0u8..3,
        any::<bool>(),
        proptest::option::weighted(0.3, 1u8..4),
        proptest::bool::weighted(0.2),
        any::<bool>(),
        proptest::option::weighted(0.2, 100u64..900),
        proptest::option::weighted(0.2, 1u32..3),
        proptest::option::weighted(0.2, 200u64..2000),
        proptest::bool::weighted(0.4),
        (proptest::bool::weighted(0.3), any::<bool>()),
    )
        .prop_map(
            |(
                ttl,
                max_len,
                overflow,
                dlx,
                priority,
                sac,
                stored,
                timeout,
                limit,
                expires,
                alo,
                (two, counting_4_3),
            )| {
                let queue = QueueConfig {
                    message_ttl: ttl,
                    max_length: max_len,
                    overflow: [
                        Overflow::DropHead,
                        Overflow::RejectPublish,
                        Overflow::RejectPublishDlx,
                    ][usize::from(overflow)],
                    dead_letter_exchange: dlx.then(|| ShortString::from("dlx")),
                    max_priority: priority,
                    single_active_consumer: sac,
                    expires,
                    dead_letter_strategy: alo.then(|| "at-least-once".to_owned()),
                    delivery_counting: if counting_4_3 {
                        crate::args::DeliveryCounting::V4_3
                    } else {
                        crate::args::DeliveryCounting::V4_2
                    },
                    ..QueueConfig::default()
                };
                EngineConfig {
                    queue,
                    auto_delete: false,
                    stores_persistent: stored,
                    stores_transient: false,
                    memory_budget: 1500,
                    consumer_timeout: timeout,
                    delivery_limit: limit,
                    // Quorum queues' two levels (their priorities go up to 255).
                    two_priorities: two && priority.is_none(),
                }
            },
        )
}

fn message(n: u64, size: u16, persistent: bool, priority: u8, ttl: Option<u16>) -> Arc<Message> {
    let mut body = format!("{n:08}").into_bytes();
    body.resize(usize::from(size).max(8), b'.');
    Arc::new(Message::new(
        ShortString::from("x"),
        ShortString::from("k"),
        BasicProperties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            priority: Some(priority),
            expiration: ttl.map(|t| ShortString::from(t.to_string().as_str())),
            ..BasicProperties::default()
        },
        Bytes::from(body),
    ))
}

/// Applies one generated op; returns what it did.
/// The generated consumer number `i` among those subscribed (0, none, when there is none).
fn pick(consumers: &[ConsumerId], i: u8) -> ConsumerId {
    consumers
        .get(usize::from(i) % consumers.len().max(1))
        .copied()
        .unwrap_or(0)
}

fn run_op(h: &mut Harness, op: &Op, seq: &mut u64, consumers: &mut Vec<ConsumerId>) -> Step {
    match op {
        Op::Publish {
            size,
            persistent,
            priority,
            ttl,
            publisher,
        } => {
            *seq += 1;
            h.step(Command::Enqueue {
                message: message(*seq, *size, *persistent, *priority, *ttl),
                publisher: publisher.map(|(p, s)| PublisherSeq {
                    publisher: u64::from(p),
                    seq: u64::from(s),
                }),
                store: StoreMode::Own,
            })
        }
        Op::Subscribe {
            prefetch,
            ack,
            priority,
            credit,
        } => {
            let id = 100 + consumers.len() as u64;
            consumers.push(id);
            h.step(Command::Checkout {
                consumer: id,
                settings: ConsumerSettings {
                    tag: ShortString::from(format!("c{id}").as_str()),
                    connection: 1,
                    ack_required: *ack,
                    exclusive: false,
                    prefetch: u32::from(*prefetch),
                    priority: i32::from(*priority),
                    arguments: FieldTable::new(),
                    credit: credit.map(u32::from),
                },
            })
        }
        Op::Unsubscribe(i) => {
            let id = pick(consumers, *i);
            h.step(Command::Cancel { consumer: id })
        }
        Op::Suspect(i, suspected) => {
            let id = pick(consumers, *i);
            h.step(Command::Suspect {
                consumer: id,
                suspected: *suspected,
            })
        }
        Op::Credit {
            consumer,
            credit,
            drain,
        } => {
            let id = pick(consumers, *consumer);
            h.step(Command::Credit {
                consumer: id,
                credit: u32::from(*credit),
                drain: *drain,
            })
        }
        Op::Settle(from, n) => {
            let o = h.take_outstanding(usize::from(*from), usize::from(*n));
            h.step(Command::Settle { offsets: &o })
        }
        Op::Return(from, n, failed) => {
            let o = h.take_outstanding(usize::from(*from), usize::from(*n));
            h.step(Command::Return {
                offsets: &o,
                failed: *failed,
            })
        }
        Op::Discard(from, n) => {
            let o = h.take_outstanding(usize::from(*from), usize::from(*n));
            h.step(Command::Discard { offsets: &o })
        }
        Op::Get(ack) => h.step(Command::Get { ack_required: *ack }),
        Op::Advance(ms) => {
            h.advance(u64::from(*ms));
            h.step(Command::Tick)
        }
        Op::Gate(mask) => {
            h.gate.mask = *mask;
            h.step(Command::Dispatch)
        }
        Op::Spill(on) => {
            h.can_spill = *on;
            h.step(Command::Touch)
        }
        Op::Tick => h.step(Command::Tick),
        Op::Dispatch => h.step(Command::Dispatch),
        Op::Touch => h.step(Command::Touch),
        Op::Purge => h.step(Command::Purge),
        Op::Delete => h.step(Command::Delete),
        Op::DeadLettered(from, n) => {
            let kept: Vec<u64> = h.engine.dead_letters_kept().map(|(o, ..)| o).collect();
            let o: Vec<u64> = kept
                .iter()
                .cycle()
                .skip(usize::from(*from) % kept.len().max(1))
                .take(usize::from(*n).min(kept.len()))
                .copied()
                .collect();
            h.step(Command::DeadLettered { offsets: &o })
        }
        Op::RetryDeadLetters => {
            let kept: Vec<u64> = h.engine.dead_letters_kept().map(|(o, ..)| o).collect();
            h.step(Command::RetryDeadLetters { offsets: &kept })
        }
        Op::Reconfigure {
            ttl,
            max_len,
            overflow,
            dlx,
            expires,
            limit,
        } => {
            let q = QueueConfig {
                message_ttl: ttl.map(u64::from),
                max_length: max_len.map(u64::from),
                overflow: [
                    Overflow::DropHead,
                    Overflow::RejectPublish,
                    Overflow::RejectPublishDlx,
                ][usize::from(*overflow)],
                dead_letter_exchange: dlx.then(|| ShortString::from("dlx")),
                expires: expires.map(u64::from),
                ..QueueConfig::default()
            };
            h.step(Command::Reconfigure {
                settings: Box::new(crate::args::PolicySettings::of(&q)),
                delivery_limit: limit.map(u32::from),
            })
        }
    }
}

struct Run {
    harness: Harness,
    steps: Vec<Step>,
    seq: u64,
    consumers: Vec<ConsumerId>,
}

impl Run {
    fn new(config: EngineConfig) -> Self {
        Run {
            harness: Harness::new(config),
            steps: Vec::new(),
            seq: 0,
            consumers: Vec::new(),
        }
    }

    fn play(&mut self, ops: &[Op]) {
        for op in ops {
            let step = run_op(&mut self.harness, op, &mut self.seq, &mut self.consumers);
            self.steps.push(step);
            check_invariants(&self.harness);
        }
    }
}

fn check_invariants(h: &Harness) {
    assert!(
        h.missing.is_empty(),
        "bodies asked for after release: {:?}",
        h.missing
    );
    let st = h.engine.stats();
    let s = h.engine.snapshot();
    let rebuilt = QueueEngine::from_snapshot(s);
    assert_eq!(
        rebuilt.stats(),
        st,
        "incremental counts drifted from the state"
    );
}

/// What must not depend on where bodies are: deliveries, dead letters, durable-store
/// traffic, cancellations, replies.
fn logical(steps: &[Step]) -> Vec<String> {
    let mut out = Vec::new();
    for s in steps {
        out.push(format!("{:?}", s.reply.as_ref().map(strip_reply)));
        for e in &s.effects {
            match e {
                Effect::Deliver(d) => out.push(format!(
                    "deliver {:?} {} {} {:?} {}",
                    d.consumer, d.offset, d.redelivered, d.returns, d.ack_required
                )),
                Effect::DeadLetter {
                    offset,
                    reason,
                    kept,
                    ..
                } => out.push(format!("dead {offset} {reason:?} {kept}")),
                Effect::StoreAppend { offset, .. } => out.push(format!("append {offset}")),
                Effect::StoreAck { offset } => out.push(format!("ack {offset}")),
                Effect::StoreDelivered { offset } => out.push(format!("delivered {offset}")),
                Effect::StoreReturned { offset, returns } => {
                    out.push(format!("returned {offset} {returns:?}"))
                }
                Effect::StoreDeadLetter { offset, reason } => {
                    out.push(format!("kept {offset} {reason:?}"))
                }
                Effect::ConsumerCancelled {
                    consumer, reason, ..
                } => out.push(format!("cancelled {consumer} {reason:?}")),
                Effect::Drained { consumer, credit } => {
                    out.push(format!("drained {consumer} {credit}"))
                }
                Effect::Expired => out.push("expired".to_owned()),
                Effect::PageOut { .. }
                | Effect::PageIn { .. }
                | Effect::PagingRelease { .. }
                | Effect::PagingDropAll => {}
            }
        }
    }
    out
}

/// A reply without bodies (a basic.get reply carries one only when it was in memory).
fn strip_reply(r: &Reply) -> String {
    match r {
        Reply::Got {
            delivery: Some(d),
            remaining,
        } => format!(
            "got {} {} {:?} {remaining}",
            d.offset, d.redelivered, d.returns
        ),
        Reply::Lost(_) => "lost".to_owned(),
        other => format!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn replay_and_snapshot_give_identical_state_and_effects(
        config in queue_config(),
        ops in proptest::collection::vec(op(), 1..160),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut a = Run::new(config.clone());
        a.play(&ops);
        let mut b = Run::new(config.clone());
        b.play(&ops);
        prop_assert_eq!(&a.steps, &b.steps);
        prop_assert_eq!(&a.harness, &b.harness);

        // Snapshot midway, rebuild, continue: the suffix must match the uninterrupted run.
        let k = cut.index(ops.len());
        let mut c = Run::new(config);
        c.play(&ops[..k]);
        let snapshot = c.harness.engine.snapshot();
        c.harness.engine = QueueEngine::from_snapshot(snapshot);
        c.play(&ops[k..]);
        prop_assert_eq!(&c.steps[k..], &a.steps[k..]);
        prop_assert_eq!(&c.harness, &a.harness);
    }

    #[test]
    fn where_bodies_live_never_changes_what_happens(
        config in queue_config(),
        ops in proptest::collection::vec(op(), 1..160),
    ) {
        let mut paged = Run::new(config.clone());
        paged.play(&ops);
        let mut in_memory = Run::new(EngineConfig { memory_budget: u64::MAX, ..config.clone() });
        in_memory.play(&ops);
        let mut no_paging_store = Run::new(config);
        no_paging_store.harness.can_spill = false;
        let ops_no_spill: Vec<Op> = ops
            .iter()
            .map(|o| if matches!(o, Op::Spill(_)) { Op::Touch } else { o.clone() })
            .collect();
        no_paging_store.play(&ops_no_spill);
        prop_assert_eq!(logical(&paged.steps), logical(&in_memory.steps));
        prop_assert_eq!(logical(&paged.steps), logical(&no_paging_store.steps));
        prop_assert_eq!(paged.harness.engine.stats().ready, in_memory.harness.engine.stats().ready);
        prop_assert_eq!(paged.harness.engine.counters(), in_memory.harness.engine.counters());
    }
}
