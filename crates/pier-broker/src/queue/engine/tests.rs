//! Engine unit tests: commands in, effects out, no sockets, no sleeps, no threads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use pier_wire::{BasicProperties, FieldTable, ShortString};

use super::harness::Harness;
use super::*;
use crate::args::{DeliveryCounting, Overflow, QueueConfig};

fn message(body: &str, persistent: bool) -> Arc<Message> {
    Arc::new(Message::new(
        ShortString::from("x"),
        ShortString::from("k"),
        BasicProperties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            ..BasicProperties::default()
        },
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

fn with_expiration(body: &str, ms: &str) -> Arc<Message> {
    Arc::new(Message::new(
        ShortString::from("x"),
        ShortString::from("k"),
        BasicProperties {
            expiration: Some(ShortString::from(ms)),
            ..BasicProperties::default()
        },
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

fn config(q: QueueConfig) -> EngineConfig {
    EngineConfig::classic(q, false)
}

fn settings(tag: &str, prefetch: u32) -> ConsumerSettings {
    ConsumerSettings {
        tag: ShortString::from(tag),
        connection: 1,
        ack_required: true,
        exclusive: false,
        prefetch,
        priority: 0,
        arguments: FieldTable::new(),
        credit: None,
    }
}

fn enqueue(h: &mut Harness, m: Arc<Message>) -> harness::Step {
    h.step(Command::Enqueue {
        message: m,
        publisher: None,
        store: StoreMode::Own,
    })
}

/// (consumer, offset, redelivered) of every delivery in a step.
fn deliveries(step: &harness::Step) -> Vec<(Option<ConsumerId>, u64, bool)> {
    step.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver(d) => Some((d.consumer, d.offset, d.redelivered)),
            _ => None,
        })
        .collect()
}

fn dead_letters(step: &harness::Step) -> Vec<(u64, DeathReason)> {
    step.effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeadLetter { offset, reason, .. } => Some((*offset, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn persistent_messages_of_a_stored_queue_are_appended_in_offset_order() {
    let mut c = config(QueueConfig::default());
    c.stores_persistent = true;
    let mut h = Harness::new(c);
    let a = enqueue(&mut h, message("a", true));
    let b = enqueue(&mut h, message("b", false));
    let c = enqueue(&mut h, message("c", true));
    assert_eq!(
        a.reply,
        Ok(Reply::Enqueued {
            result: Published::Accepted,
            offset: Some(0)
        })
    );
    assert!(matches!(
        a.effects[..],
        [Effect::StoreAppend { offset: 0, .. }]
    ));
    assert!(b.effects.is_empty(), "transient: nothing stored");
    assert!(matches!(
        c.effects[..],
        [Effect::StoreAppend { offset: 2, .. }]
    ));
    assert_eq!(h.engine.stats().ready, 3);
}

#[test]
fn prefetch_limits_deliveries_and_settling_frees_credit() {
    let mut h = Harness::new(config(QueueConfig::default()));
    for i in 0..5 {
        enqueue(&mut h, message(&i.to_string(), false));
    }
    let s = h.step(Command::Checkout {
        consumer: 7,
        settings: settings("c", 2),
    });
    assert_eq!(deliveries(&s), [(Some(7), 0, false), (Some(7), 1, false)]);
    assert_eq!(h.engine.stats().unacked, 2);
    let s = h.step(Command::Settle { offsets: &[0] });
    assert_eq!(deliveries(&s), [(Some(7), 2, false)]);
    assert_eq!(h.engine.counters().acked, 1);
    // Unknown and repeated offsets are ignored.
    let s = h.step(Command::Settle { offsets: &[0, 99] });
    assert!(deliveries(&s).is_empty());
    assert_eq!(h.engine.counters().acked, 1);
}

#[test]
fn returned_messages_go_back_to_their_place_redelivered_and_counted() {
    let mut h = Harness::new(config(QueueConfig::default()));
    for i in 0..3 {
        enqueue(&mut h, message(&i.to_string(), false));
    }
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 2),
    });
    h.step(Command::Cancel { consumer: 1 });
    // Returned in reverse: they come back in offset order, before offset 2.
    h.step(Command::Return {
        offsets: &[1, 0],
        failed: true,
    });
    let s = h.step(Command::Checkout {
        consumer: 2,
        settings: settings("b", 0),
    });
    assert_eq!(
        deliveries(&s),
        [(Some(2), 0, true), (Some(2), 1, true), (Some(2), 2, false)]
    );
    let returns: Vec<u32> = s
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver(d) => Some(d.returns.count),
            _ => None,
        })
        .collect();
    assert_eq!(returns, [1, 1, 0]);
}

#[test]
fn discard_dead_letters_and_acks_the_store() {
    let mut c = config(QueueConfig {
        dead_letter_exchange: Some(ShortString::from("dlx")),
        ..QueueConfig::default()
    });
    c.stores_persistent = true;
    let mut h = Harness::new(c);
    enqueue(&mut h, message("a", true));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 0),
    });
    let s = h.step(Command::Discard { offsets: &[0] });
    assert_eq!(dead_letters(&s), [(0, DeathReason::Rejected)]);
    assert!(s.effects.contains(&Effect::StoreAck { offset: 0 }));
    assert!(h.durable.is_empty());
}

#[test]
fn delivery_limit_dead_letters_after_too_many_returns() {
    let mut c = config(QueueConfig {
        dead_letter_exchange: Some(ShortString::from("dlx")),
        ..QueueConfig::default()
    });
    c.delivery_limit = Some(2);
    let mut h = Harness::new(c);
    enqueue(&mut h, message("a", false));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    for _ in 0..2 {
        let s = h.step(Command::Return {
            offsets: &[0],
            failed: true,
        });
        assert_eq!(deliveries(&s), [(Some(1), 0, true)]);
    }
    let s = h.step(Command::Return {
        offsets: &[0],
        failed: true,
    });
    assert!(deliveries(&s).is_empty());
    assert_eq!(dead_letters(&s), [(0, DeathReason::DeliveryLimit)]);
    assert_eq!(h.engine.stats().ready + h.engine.stats().unacked, 0);
}

/// A message as the store gives it back at recovery (body `body`, nothing noted).
fn recovered(offset: u64, body: &str) -> Recovered {
    Recovered {
        offset,
        message: message(body, false),
        redelivered: false,
        deadline: None,
        returns: Returns::default(),
        dead_letter: None,
    }
}

/// A "restart": the store holds `messages` (their bodies too) and the engine recovers them.
fn recover(h: &mut Harness, messages: Vec<Recovered>, next_offset: u64) -> harness::Step {
    for r in &messages {
        h.durable.insert(r.offset, Arc::clone(&r.message));
    }
    h.step(Command::Recover {
        messages,
        next_offset,
    })
}

/// (offset, returns) of every return count a step asks the store to record.
fn store_returns(step: &harness::Step) -> Vec<(u64, u32)> {
    step.effects
        .iter()
        .filter_map(|e| match e {
            Effect::StoreReturned { offset, returns } => Some((*offset, returns.count)),
            _ => None,
        })
        .collect()
}

/// A quorum queue's delivery count goes to the store with every counted return, and a
/// recovered message carries on from it: the delivery limit holds across restarts.
#[test]
fn quorum_return_counts_are_stored_and_recovered() {
    let dlx = QueueConfig {
        dead_letter_exchange: Some(ShortString::from("dlx")),
        ..QueueConfig::default()
    };
    let mut c = EngineConfig::quorum(dlx.clone());
    c.stores_persistent = true; // a single node's quorum queue: the vhost's store
    c.delivery_limit = Some(3);
    let mut h = Harness::new(c.clone());
    enqueue(&mut h, message("a", false));
    enqueue(&mut h, message("b", false));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    assert_eq!(
        store_returns(&h.step(Command::Return {
            offsets: &[0],
            failed: true
        })),
        [(0, 1)]
    );
    assert_eq!(
        store_returns(&h.step(Command::Return {
            offsets: &[0],
            failed: true
        })),
        [(0, 2)]
    );
    // A suspected consumer's messages come back uncounted: nothing to record.
    let s = h.step(Command::Suspect {
        consumer: 1,
        suspected: true,
    });
    assert!(store_returns(&s).is_empty());

    // "Restart": message 0 came back twice, message 1 never.
    let mut h = Harness::new(c);
    let a = Recovered {
        redelivered: true,
        returns: Returns {
            count: 2,
            failed: 2,
        },
        ..recovered(0, "a")
    };
    let b = Recovered {
        redelivered: true,
        ..recovered(1, "b")
    };
    recover(&mut h, vec![a, b], 2);
    let s = h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    let counts: Vec<(u64, u32)> = s
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver(d) => Some((d.offset, d.returns.count)),
            _ => None,
        })
        .collect();
    assert_eq!(counts, [(0, 2)]);
    assert_eq!(
        store_returns(&h.step(Command::Return {
            offsets: &[0],
            failed: true
        })),
        [(0, 3)]
    );
    // The fourth return passes the limit of 3: dead-lettered, as it would have been
    // without the restart.
    let s = h.step(Command::Return {
        offsets: &[0],
        failed: true,
    });
    assert_eq!(dead_letters(&s), [(0, DeathReason::DeliveryLimit)]);

    // A classic queue's counts are never shown, so never written.
    let mut c = config(dlx);
    c.stores_persistent = true;
    let mut h = Harness::new(c);
    enqueue(&mut h, message("a", true));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    assert!(store_returns(&h.step(Command::Return {
        offsets: &[0],
        failed: true
    }))
    .is_empty());
}

#[test]
fn a_suspected_consumer_keeps_its_subscription_and_gets_nothing() {
    let mut c = EngineConfig::quorum(QueueConfig::default());
    c.delivery_limit = Some(1);
    let mut h = Harness::new(c);
    for b in ["a", "b", "c"] {
        enqueue(&mut h, message(b, false));
    }
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("one", 2),
    });
    // What it had out comes back flagged redelivered but uncounted: a partition is not a
    // failed delivery, so a delivery limit of 1 does not dead-letter it.
    h.step(Command::Return {
        offsets: &[0],
        failed: true,
    });
    let s = h.step(Command::Suspect {
        consumer: 1,
        suspected: true,
    });
    assert!(deliveries(&s).is_empty());
    assert!(dead_letters(&s).is_empty());
    assert_eq!(h.engine.stats().ready, 3);
    assert_eq!(h.engine.suspected_consumers().collect::<Vec<_>>(), [1]);
    assert!(h.engine.consumers().all(|(_, _, active)| !active));
    // Not counted, as RabbitMQ's consumer count leaves out suspected_down consumers.
    assert_eq!(h.engine.stats().consumers, 0);
    let s = h.step(Command::Checkout {
        consumer: 2,
        settings: settings("two", 10),
    });
    assert_eq!(
        deliveries(&s),
        [(Some(2), 0, true), (Some(2), 1, true), (Some(2), 2, false)]
    );
    h.step(Command::Cancel { consumer: 2 });
    let s = enqueue(&mut h, message("d", false));
    assert!(deliveries(&s).is_empty());
    // Back in reach: deliveries resume, the subscription never ended.
    let s = h.step(Command::Suspect {
        consumer: 1,
        suspected: false,
    });
    assert_eq!(deliveries(&s), [(Some(1), 3, false)]);
    assert_eq!(h.engine.suspected_consumers().count(), 0);
}

#[test]
fn a_suspected_single_active_consumer_hands_over_and_waits_behind() {
    let mut h = Harness::new(EngineConfig::quorum(QueueConfig {
        single_active_consumer: true,
        ..QueueConfig::default()
    }));
    for (id, tag) in [(1, "one"), (2, "two")] {
        h.step(Command::Checkout {
            consumer: id,
            settings: settings(tag, 10),
        });
    }
    let s = enqueue(&mut h, message("a", false));
    assert_eq!(deliveries(&s), [(Some(1), 0, false)]);
    let s = h.step(Command::Suspect {
        consumer: 1,
        suspected: true,
    });
    assert_eq!(deliveries(&s), [(Some(2), 0, true)]);
    h.step(Command::Suspect {
        consumer: 1,
        suspected: false,
    });
    // The one that took over stays active; the returning one waits behind it.
    let active: Vec<_> = h.engine.consumers().map(|(id, _, a)| (id, a)).collect();
    assert_eq!(active, [(2, true), (1, false)]);
    let s = enqueue(&mut h, message("b", false));
    assert_eq!(deliveries(&s), [(Some(2), 1, false)]);
}

#[test]
fn quorum_engine_stores_transient_messages_too() {
    let mut c = EngineConfig::quorum(QueueConfig::default());
    c.stores_persistent = true;
    let mut h = Harness::new(c);
    let a = enqueue(&mut h, message("a", false));
    assert!(matches!(
        a.effects[..],
        [Effect::StoreAppend { offset: 0, .. }]
    ));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    let s = h.step(Command::Settle { offsets: &[0] });
    assert!(s
        .effects
        .iter()
        .any(|e| matches!(e, Effect::StoreAck { offset: 0 })));
}

#[test]
fn quorum_delivery_limit_defaults_to_20_and_minus_one_turns_it_off() {
    assert_eq!(quorum_delivery_limit(None), Some(DEFAULT_DELIVERY_LIMIT));
    assert_eq!(quorum_delivery_limit(Some(-1)), None);
    assert_eq!(quorum_delivery_limit(Some(0)), Some(0));
    assert_eq!(quorum_delivery_limit(Some(5)), Some(5));
    let returns_until_dead = |limit: Option<i64>| {
        let mut h = Harness::new(EngineConfig::quorum(QueueConfig {
            dead_letter_exchange: Some(ShortString::from("dlx")),
            delivery_limit: limit,
            ..QueueConfig::default()
        }));
        enqueue(&mut h, message("a", false));
        h.step(Command::Checkout {
            consumer: 1,
            settings: settings("a", 1),
        });
        for n in 1..=100u32 {
            let s = h.step(Command::Return {
                offsets: &[0],
                failed: true,
            });
            if !dead_letters(&s).is_empty() {
                return Some(n);
            }
            // The redelivery carries how often the message came back.
            let returns = s.effects.iter().find_map(|e| match e {
                Effect::Deliver(d) => Some(d.returns.count),
                _ => None,
            });
            assert_eq!(returns, Some(n));
        }
        None
    };
    assert_eq!(returns_until_dead(None), Some(21));
    assert_eq!(returns_until_dead(Some(0)), Some(1));
    assert_eq!(returns_until_dead(Some(-1)), None);
}

/// The counts of a run of returns (`true`: a failed delivery) under one counting, until the
/// message is dead-lettered: the counts each redelivery carried, and whether it died.
fn count_returns(counting: DeliveryCounting, limit: i64, failed: &[bool]) -> (Vec<Returns>, bool) {
    let mut h = Harness::new(EngineConfig::quorum(QueueConfig {
        dead_letter_exchange: Some(ShortString::from("dlx")),
        delivery_limit: Some(limit),
        delivery_counting: counting,
        ..QueueConfig::default()
    }));
    enqueue(&mut h, message("a", false));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    let mut seen = Vec::new();
    for &f in failed {
        let s = h.step(Command::Return {
            offsets: &[0],
            failed: f,
        });
        if !dead_letters(&s).is_empty() {
            return (seen, true);
        }
        seen.extend(s.effects.iter().find_map(|e| match e {
            Effect::Deliver(d) => Some(d.returns),
            _ => None,
        }));
    }
    (seen, false)
}

/// RabbitMQ 4.3 (rabbitmq-server #13885): every return counts as an acquisition, only failed
/// deliveries count towards the delivery limit; 4.2 limits every return.
#[test]
fn rabbitmq_4_3_limits_failed_deliveries_only() {
    let r = |count, failed| Returns { count, failed };
    // Five nacks and a reject under a limit of 1: alive under 4.3 (one failed delivery).
    let run = [false, false, false, false, false, true];
    let (seen, dead) = count_returns(DeliveryCounting::V4_3, 1, &run);
    assert!(!dead);
    assert_eq!(seen, [r(1, 0), r(2, 0), r(3, 0), r(4, 0), r(5, 0), r(6, 1)]);
    // The second failed delivery passes the limit.
    let (_, dead) = count_returns(DeliveryCounting::V4_3, 1, &[false, true, false, true]);
    assert!(dead);
    // 4.2: the second return of any kind passes it.
    let (seen, dead) = count_returns(DeliveryCounting::V4_2, 1, &run);
    assert!(dead);
    assert_eq!(seen, [r(1, 0)]);
    // A limit of 0: the first failed delivery dead-letters; nacks never do.
    assert!(!count_returns(DeliveryCounting::V4_3, 0, &[false; 30]).1);
    assert!(count_returns(DeliveryCounting::V4_3, 0, &[false, true]).1);
}

/// Both counts go to the store (and come back at recovery) so that 4.3's limit holds across
/// a restart too.
#[test]
fn failed_deliveries_are_stored_with_the_return_count() {
    let mut c = EngineConfig::quorum(QueueConfig {
        delivery_counting: DeliveryCounting::V4_3,
        ..QueueConfig::default()
    });
    c.stores_persistent = true;
    let mut h = Harness::new(c);
    enqueue(&mut h, message("a", false));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    let stored = |s: &harness::Step| -> Vec<Returns> {
        s.effects
            .iter()
            .filter_map(|e| match e {
                Effect::StoreReturned { returns, .. } => Some(*returns),
                _ => None,
            })
            .collect()
    };
    let nack = h.step(Command::Return {
        offsets: &[0],
        failed: false,
    });
    assert_eq!(
        stored(&nack),
        [Returns {
            count: 1,
            failed: 0
        }]
    );
    let reject = h.step(Command::Return {
        offsets: &[0],
        failed: true,
    });
    assert_eq!(
        stored(&reject),
        [Returns {
            count: 2,
            failed: 1
        }]
    );
}

#[test]
fn released_deliveries_come_back_as_they_were() {
    // A consumer on another node went away while deliveries were on their way to it: they
    // never reached a client, so they are neither redelivered nor counted as returns.
    let mut c = config(QueueConfig::default());
    c.delivery_limit = Some(1);
    let mut h = Harness::new(c);
    enqueue(&mut h, message("a", false));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    for _ in 0..3 {
        let s = h.step(Command::Release { offsets: &[0] });
        assert_eq!(deliveries(&s), [(Some(1), 0, false)]);
    }
    // A real return still counts.
    let s = h.step(Command::Return {
        offsets: &[0],
        failed: true,
    });
    assert_eq!(deliveries(&s), [(Some(1), 0, true)]);
}

#[test]
fn ttl_expires_heads_on_tick_and_before_delivery() {
    let mut h = Harness::new(config(QueueConfig {
        message_ttl: Some(100),
        dead_letter_exchange: Some(ShortString::from("dlx")),
        ..QueueConfig::default()
    }));
    enqueue(&mut h, message("old", false));
    h.advance(60);
    enqueue(&mut h, message("new", false));
    assert_eq!(h.engine.next_tick(), 101);
    h.advance(50);
    let s = h.step(Command::Tick);
    assert_eq!(dead_letters(&s), [(0, DeathReason::Expired)]);
    assert_eq!(h.engine.stats().ready, 1);
    h.advance(100);
    // No tick in between: a consumer still never sees the expired message.
    let s = h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 0),
    });
    assert!(deliveries(&s).is_empty());
    assert_eq!(dead_letters(&s), [(1, DeathReason::Expired)]);
}

#[test]
fn per_message_ttl_only_expires_at_the_head() {
    let mut h = Harness::new(config(QueueConfig::default()));
    enqueue(&mut h, message("forever", false));
    enqueue(&mut h, with_expiration("short", "10"));
    h.advance(50);
    h.step(Command::Tick);
    assert_eq!(h.engine.stats().ready, 2, "behind a live head");
    h.step(Command::Get {
        ack_required: false,
    });
    h.step(Command::Tick);
    assert_eq!(h.engine.stats().ready, 0);
}

#[test]
fn x_expires_asks_for_deletion_when_unused() {
    let mut h = Harness::new(config(QueueConfig {
        expires: Some(1000),
        ..QueueConfig::default()
    }));
    h.advance(999);
    assert!(h.step(Command::Tick).effects.is_empty());
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 0),
    });
    h.advance(5000);
    assert!(h.step(Command::Tick).effects.is_empty(), "consumed: never");
    h.step(Command::Cancel { consumer: 1 });
    h.advance(1001);
    assert_eq!(h.step(Command::Tick).effects, [Effect::Expired]);
}

#[test]
fn consumer_timeout_cancels_and_returns_when_configured() {
    let mut c = config(QueueConfig::default());
    c.consumer_timeout = Some(1000);
    let mut h = Harness::new(c);
    enqueue(&mut h, message("a", false));
    enqueue(&mut h, message("b", false));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("slow", 1),
    });
    h.step(Command::Checkout {
        consumer: 2,
        settings: settings("other", 0),
    });
    h.step(Command::Settle { offsets: &[1] });
    h.advance(1001);
    let s = h.step(Command::Tick);
    assert!(s.effects.contains(&Effect::ConsumerCancelled {
        consumer: 1,
        tag: ShortString::from("slow"),
        reason: CancelReason::Timeout,
    }));
    // Its message went back and on to the remaining consumer, redelivered.
    assert_eq!(deliveries(&s), [(Some(2), 0, true)]);
}

#[test]
fn credit_mode_delivers_what_was_granted_and_drain_gives_back_the_rest() {
    let mut h = Harness::new(config(QueueConfig::default()));
    for i in 0..3 {
        enqueue(&mut h, message(&i.to_string(), false));
    }
    let mut s = settings("credit", 0);
    s.credit = Some(0);
    let st = h.step(Command::Checkout {
        consumer: 1,
        settings: s,
    });
    assert!(deliveries(&st).is_empty());
    let st = h.step(Command::Credit {
        consumer: 1,
        credit: 2,
        drain: false,
    });
    assert_eq!(deliveries(&st).len(), 2);
    // Acks do not return credit in credit mode.
    let st = h.step(Command::Settle { offsets: &[0, 1] });
    assert!(deliveries(&st).is_empty());
    let st = h.step(Command::Credit {
        consumer: 1,
        credit: 5,
        drain: true,
    });
    assert_eq!(deliveries(&st), [(Some(1), 2, false)]);
    assert!(st.effects.contains(&Effect::Drained {
        consumer: 1,
        credit: 4
    }));
}

#[test]
fn duplicate_publisher_sequences_are_accepted_once() {
    let mut h = Harness::new(config(QueueConfig::default()));
    let p = |seq| Some(PublisherSeq { publisher: 9, seq });
    for seq in [1, 2, 2, 1, 3] {
        h.step(Command::Enqueue {
            message: message("m", false),
            publisher: p(seq),
            store: StoreMode::Own,
        });
    }
    assert_eq!(h.engine.stats().ready, 3);
    h.step(Command::PublisherDown { publisher: 9 });
    h.step(Command::Enqueue {
        message: message("m", false),
        publisher: p(1),
        store: StoreMode::Own,
    });
    assert_eq!(h.engine.stats().ready, 4, "a new publisher of that id");
}

#[test]
fn reject_publish_refuses_and_drop_head_drops_the_oldest() {
    let mut h = Harness::new(config(QueueConfig {
        max_length: Some(1),
        overflow: Overflow::RejectPublish,
        ..QueueConfig::default()
    }));
    enqueue(&mut h, message("a", false));
    let s = enqueue(&mut h, message("b", false));
    assert_eq!(
        s.reply,
        Ok(Reply::Enqueued {
            result: Published::Rejected,
            offset: None
        })
    );
    let mut h = Harness::new(config(QueueConfig {
        max_length: Some(1),
        dead_letter_exchange: Some(ShortString::from("dlx")),
        ..QueueConfig::default()
    }));
    enqueue(&mut h, message("a", false));
    let s = enqueue(&mut h, message("b", false));
    assert_eq!(dead_letters(&s), [(0, DeathReason::MaxLen)]);
}

#[test]
fn a_closed_gate_holds_deliveries_until_dispatch() {
    let mut h = Harness::new(config(QueueConfig::default()));
    h.gate.mask = 0;
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 0),
    });
    let s = enqueue(&mut h, message("a", false));
    assert!(deliveries(&s).is_empty());
    h.gate.mask = u32::MAX;
    let s = h.step(Command::Dispatch);
    assert_eq!(deliveries(&s), [(Some(1), 0, false)]);
}

#[test]
fn exclusive_and_single_active_consumer_rules() {
    let mut h = Harness::new(config(QueueConfig::default()));
    let mut ex = settings("ex", 0);
    ex.exclusive = true;
    assert!(h
        .step(Command::Checkout {
            consumer: 1,
            settings: ex.clone()
        })
        .reply
        .is_ok());
    assert_eq!(
        h.step(Command::Checkout {
            consumer: 2,
            settings: settings("b", 0)
        })
        .reply,
        Err(Refusal::ExclusiveConsumer)
    );
    let mut h = Harness::new(config(QueueConfig {
        single_active_consumer: true,
        ..QueueConfig::default()
    }));
    assert_eq!(
        h.step(Command::Checkout {
            consumer: 1,
            settings: ex
        })
        .reply,
        Err(Refusal::ExclusiveConsumer)
    );
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("first", 0),
    });
    h.step(Command::Checkout {
        consumer: 2,
        settings: settings("second", 0),
    });
    let s = enqueue(&mut h, message("m", false));
    assert_eq!(deliveries(&s), [(Some(1), 0, false)]);
    h.step(Command::Cancel { consumer: 1 });
    let s = enqueue(&mut h, message("m", false));
    assert_eq!(deliveries(&s), [(Some(2), 1, false)]);
}

#[test]
fn a_long_queue_pages_out_and_reads_back_in_batches() {
    let mut c = config(QueueConfig::default());
    c.memory_budget = 1000;
    let mut h = Harness::new(c);
    for i in 0..50 {
        enqueue(&mut h, message(&format!("{i:0100}"), false));
    }
    let st = h.engine.stats();
    assert_eq!(st.ready, 50);
    assert!(st.paged_out >= 40, "{st:?}");
    assert_eq!(h.paging.len() as u64, st.paged_out);
    let s = h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 0),
    });
    let got = deliveries(&s);
    assert_eq!(got.len(), 50);
    assert!(got.iter().enumerate().all(|(i, d)| d.1 == i as u64));
    // One read-back request covered the tail; nothing was missing on "disk".
    let asks = s
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::PageIn { .. }))
        .count();
    assert_eq!(asks, 1);
    assert!(h.missing.is_empty(), "{:?}", h.missing);
    // Bodies came back with the deliveries: the paging records are released.
    assert!(h.paging.is_empty());
    let offsets: Vec<u64> = (0..50).collect();
    h.step(Command::Settle { offsets: &offsets });
    let st = h.engine.stats();
    assert_eq!(
        (
            st.ready,
            st.unacked,
            st.ready_bytes,
            st.memory_bytes,
            st.paged_out
        ),
        (0, 0, 0, 0, 0)
    );
}

#[test]
fn delete_cancels_consumers_and_purge_acks_ready_stored_messages() {
    let mut c = config(QueueConfig::default());
    c.stores_persistent = true;
    let mut h = Harness::new(c);
    enqueue(&mut h, message("a", true));
    enqueue(&mut h, message("b", true));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    let s = h.step(Command::Purge);
    assert_eq!(s.reply, Ok(Reply::Dropped(1)));
    assert!(s.effects.contains(&Effect::StoreAck { offset: 1 }));
    assert!(
        !s.effects.contains(&Effect::StoreAck { offset: 0 }),
        "unacked stays"
    );
    let s = h.step(Command::Delete);
    assert!(s.effects.contains(&Effect::ConsumerCancelled {
        consumer: 1,
        tag: ShortString::from("a"),
        reason: CancelReason::QueueDeleted
    }));
    assert_eq!(
        enqueue(&mut h, message("c", true)).reply,
        Ok(Reply::Enqueued {
            result: Published::Gone,
            offset: None
        })
    );
}

#[test]
fn recovered_messages_keep_order_flags_and_stored_deadlines() {
    let mut c = config(QueueConfig::default());
    c.stores_persistent = true;
    c.memory_budget = 150;
    let mut h = Harness::new(c);
    let recovered: Vec<Recovered> = (0..4)
        .map(|i| Recovered {
            offset: 10 + i,
            message: message(&format!("{i:0100}"), true),
            redelivered: i == 0,
            deadline: (i == 3).then_some(h.unix_now + 500),
            returns: Returns::default(),
            dead_letter: None,
        })
        .collect();
    recover(&mut h, recovered, 14);
    assert!(h.engine.stats().paged_out >= 2);
    let s = enqueue(&mut h, message("new", true));
    assert!(matches!(
        s.effects[0],
        Effect::StoreAppend { offset: 14, .. }
    ));
    h.advance(501);
    h.step(Command::Get {
        ack_required: false,
    });
    h.step(Command::Get {
        ack_required: false,
    });
    h.step(Command::Get {
        ack_required: false,
    });
    // Offset 13 had a stored deadline that has now passed: the next get skips it.
    let s = h.step(Command::Get {
        ack_required: false,
    });
    match s.reply {
        Ok(Reply::Got {
            delivery: Some(d), ..
        }) => assert_eq!(d.offset, 14),
        other => panic!("{other:?}"),
    }
    assert!(h.missing.is_empty());
}

/// Every message moves a command in and an effect out: keep them small.
#[test]
fn commands_and_effects_stay_small() {
    assert!(std::mem::size_of::<Command<'_>>() <= 96);
    assert!(std::mem::size_of::<Effect>() <= 64);
}

/// A replicated queue's member: its log holds every body, offsets are log places
/// (`advance_offset`), and past the memory budget bodies stay only in the log. A snapshot
/// taken then carries every body (read back through `fetch`) and restores to an engine that
/// delivers the same messages in the same order; `oldest_on_disk` says where the log must
/// keep bodies from.
#[test]
fn a_paging_member_snapshots_with_bodies_read_back_and_names_its_oldest_body_on_disk() {
    let mut c = EngineConfig::quorum(QueueConfig::default());
    c.stores_persistent = true;
    c.memory_budget = 4 * MESSAGE_OVERHEAD;
    let mut engine = QueueEngine::new(c.clone(), 0);
    let mut gate = OpenGate;
    let mut all = BTreeMap::new();
    for i in 0..20u64 {
        let m = message(&format!("m{i}"), true);
        all.insert(i * 10 + 100, Arc::clone(&m));
        engine.advance_offset(i * 10 + 100);
        let mut cx = Context {
            now: 5,
            unix_now: 5,
            can_spill: false,
            reads_back: true,
            gate: &mut gate,
        };
        let mut out = Vec::new();
        let r = engine.apply(
            Command::Enqueue {
                message: m,
                publisher: None,
                store: StoreMode::Shared,
            },
            &mut cx,
            &mut out,
        );
        assert_eq!(
            r,
            Ok(Reply::Enqueued {
                result: Published::Accepted,
                offset: Some(i * 10 + 100)
            })
        );
        assert!(
            !out.iter().any(|e| matches!(e, Effect::StoreAppend { .. })),
            "the log is the store: {out:?}"
        );
    }
    let stats = engine.stats();
    assert!(
        stats.paged_out > 10,
        "most bodies only in the log: {stats:?}"
    );
    let first_paged = 100 + 10 * (20 - stats.paged_out);
    assert_eq!(engine.oldest_on_disk(), Some(first_paged));

    let snap = engine.snapshot();
    assert_eq!(
        snap.to_parts_with(5, &mut |_| None),
        Err(first_paged),
        "a body the log cannot give fails the snapshot"
    );
    let parts = snap
        .to_parts_with(5, &mut |o| all.get(&o).cloned())
        .unwrap();
    let restored = QueueEngine::from_snapshot(Snapshot::from_parts(c, parts));
    assert_eq!(restored.stats().ready, 20);
    assert_eq!(restored.oldest_on_disk(), None, "restored with every body");
    let mut restored = restored;
    let mut cx = Context {
        now: 6,
        unix_now: 6,
        can_spill: false,
        reads_back: true,
        gate: &mut gate,
    };
    let mut out = Vec::new();
    restored
        .apply(
            Command::Checkout {
                consumer: 1,
                settings: settings("c", 100),
            },
            &mut cx,
            &mut out,
        )
        .unwrap();
    let got: Vec<(u64, Bytes)> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver(d) => Some((d.offset, d.message.as_ref()?.body.clone())),
            _ => None,
        })
        .collect();
    let want: Vec<(u64, Bytes)> = all.iter().map(|(o, m)| (*o, m.body.clone())).collect();
    assert_eq!(got, want);
}

fn at_least_once(overflow: Overflow) -> EngineConfig {
    let mut c = EngineConfig::quorum(QueueConfig {
        dead_letter_exchange: Some(ShortString::from("dlx")),
        dead_letter_strategy: Some("at-least-once".into()),
        overflow,
        max_length: Some(3),
        ..QueueConfig::default()
    });
    c.stores_persistent = true;
    c
}

fn kept(step: &harness::Step) -> Vec<(u64, bool)> {
    step.effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeadLetter { offset, kept, .. } => Some((*offset, *kept)),
            _ => None,
        })
        .collect()
}

/// At least once (RabbitMQ's rabbit_fifo_dlx): a rejected message is dead-lettered and
/// kept, store record included, until the runtime says its targets confirmed it; kept ones
/// count against the length limit; a retry emits them again; a snapshot carries them.
#[test]
fn at_least_once_dead_letters_are_kept_until_their_targets_confirm() {
    let mut h = Harness::new(at_least_once(Overflow::RejectPublish));
    for b in ["a", "b", "c"] {
        enqueue(&mut h, message(b, true));
    }
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("c", 1),
    });
    let s = h.step(Command::Discard { offsets: &[0] });
    assert_eq!(kept(&s), [(0, true)]);
    assert!(
        !s.effects.contains(&Effect::StoreAck { offset: 0 }),
        "kept: its store record stays"
    );
    let st = h.engine.stats();
    assert_eq!((st.dead_letters, st.dead_letter_bytes), (1, 1));
    // "b" went to the consumer, "c" and "d" are ready, "a" is kept: one more is over the
    // limit of 3 (ready and kept count, as rabbit_fifo's is_over_limit).
    enqueue(&mut h, message("d", true));
    let s = enqueue(&mut h, message("x", true));
    assert_eq!(
        s.reply,
        Ok(Reply::Enqueued {
            result: Published::Rejected,
            offset: None
        })
    );
    // The runtime routes it again on a retry.
    let s = h.step(Command::RetryDeadLetters { offsets: &[0, 1] });
    assert_eq!(kept(&s), [(0, true)], "only kept ones");
    let snap = h.engine.snapshot();
    let restored = QueueEngine::from_snapshot(snap.clone());
    assert_eq!(restored.stats(), h.engine.stats());
    let parts = snap.to_parts().unwrap();
    assert_eq!(parts.dead_letters.len(), 1);
    assert_eq!(parts.dead_letters[0].1, DeathReason::Rejected);
    // Confirmed: it leaves, with its store record.
    let s = h.step(Command::DeadLettered { offsets: &[0] });
    assert!(s.effects.contains(&Effect::StoreAck { offset: 0 }));
    assert_eq!(h.engine.stats().dead_letters, 0);
    assert_eq!(h.engine.dead_letters_kept().count(), 0);
    // Again: nothing.
    let s = h.step(Command::DeadLettered { offsets: &[0] });
    assert!(s.effects.is_empty());
    let s = enqueue(&mut h, message("e", true));
    assert!(matches!(
        s.reply,
        Ok(Reply::Enqueued {
            result: Published::Accepted,
            ..
        })
    ));
}

/// A kept dead letter of a queue in the durable store is noted there; recovered as one, it
/// is kept again (not ready), counts as before, and leaves once its targets confirm it.
#[test]
fn kept_dead_letters_are_stored_and_recovered_as_kept() {
    let mut h = Harness::new(at_least_once(Overflow::RejectPublish));
    enqueue(&mut h, message("a", false));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("c", 1),
    });
    let s = h.step(Command::Discard { offsets: &[0] });
    assert!(s.effects.contains(&Effect::StoreDeadLetter {
        offset: 0,
        reason: DeathReason::Rejected
    }));

    // "Restart": "a" was kept, "b" ready.
    let mut h = Harness::new(at_least_once(Overflow::RejectPublish));
    let a = Recovered {
        dead_letter: Some(DeathReason::Rejected),
        ..recovered(0, "a")
    };
    recover(&mut h, vec![a, recovered(1, "b")], 2);
    let st = h.engine.stats();
    assert_eq!((st.ready, st.dead_letters, st.dead_letter_bytes), (1, 1, 1));
    let s = h.step(Command::Checkout {
        consumer: 1,
        settings: settings("c", 10),
    });
    assert_eq!(deliveries(&s), [(Some(1), 1, false)], "only the ready one");
    let s = h.step(Command::RetryDeadLetters { offsets: &[0] });
    assert_eq!(kept(&s), [(0, true)]);
    let s = h.step(Command::DeadLettered { offsets: &[0] });
    assert!(s.effects.contains(&Effect::StoreAck { offset: 0 }));
    assert_eq!(h.engine.stats().dead_letters, 0);
}

/// RabbitMQ's rule: at-least-once needs `x-overflow: reject-publish`; with drop-head (the
/// default) dead letters go at most once.
#[test]
fn at_least_once_without_reject_publish_is_at_most_once() {
    let mut h = Harness::new(at_least_once(Overflow::DropHead));
    enqueue(&mut h, message("a", true));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("c", 10),
    });
    let s = h.step(Command::Discard { offsets: &[0] });
    assert_eq!(kept(&s), [(0, false)]);
    assert!(s.effects.contains(&Effect::StoreAck { offset: 0 }));
    assert_eq!(h.engine.stats().dead_letters, 0);
}

/// Expired messages and those over the delivery limit are kept too; deleting the queue
/// drops what it keeps.
#[test]
fn expired_and_over_the_limit_dead_letters_are_kept_and_go_with_the_queue() {
    let mut c = at_least_once(Overflow::RejectPublish);
    c.queue.message_ttl = Some(10);
    c.delivery_limit = Some(0);
    c.queue.max_length = None;
    let mut h = Harness::new(c);
    enqueue(&mut h, message("a", true));
    enqueue(&mut h, message("b", true));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("c", 1),
    });
    let s = h.step(Command::Return {
        offsets: &[0],
        failed: true,
    });
    assert_eq!(dead_letters(&s), [(0, DeathReason::DeliveryLimit)]);
    h.now = 100;
    h.step(Command::Cancel { consumer: 1 });
    let s = h.step(Command::Return {
        offsets: &[1],
        failed: true,
    });
    let s2 = h.step(Command::Tick);
    let reasons: Vec<DeathReason> = dead_letters(&s)
        .into_iter()
        .chain(dead_letters(&s2))
        .map(|(_, r)| r)
        .collect();
    assert!(reasons.contains(&DeathReason::DeliveryLimit), "{reasons:?}");
    assert_eq!(h.engine.stats().dead_letters, 2);
    let s = h.step(Command::Delete);
    assert!(!s
        .effects
        .iter()
        .any(|e| matches!(e, Effect::DeadLetter { .. })));
    assert_eq!(h.engine.stats().dead_letters, 0);
}

fn reconfigure(h: &mut Harness, q: QueueConfig, delivery_limit: Option<u32>) -> harness::Step {
    h.step(Command::Reconfigure {
        settings: Box::new(crate::args::PolicySettings::of(&q)),
        delivery_limit,
    })
}

/// RabbitMQ's policy change on a running queue: a lower max-length drops (dead-letters) the
/// oldest at once; reject-publish only refuses later publishes; lifting the limit lets the
/// queue grow again.
#[test]
fn reconfigure_enforces_a_new_length_limit_at_once() {
    let mut h = Harness::new(config(QueueConfig::default()));
    for i in 0..20 {
        enqueue(&mut h, message(&format!("m{i}"), false));
    }
    let limited = QueueConfig {
        max_length: Some(5),
        dead_letter_exchange: Some(ShortString::from("dlx")),
        ..QueueConfig::default()
    };
    let s = reconfigure(&mut h, limited.clone(), None);
    let dropped: Vec<u64> = dead_letters(&s).iter().map(|d| d.0).collect();
    assert_eq!(dropped, (0..15).collect::<Vec<u64>>());
    assert!(dead_letters(&s).iter().all(|d| d.1 == DeathReason::MaxLen));
    assert_eq!(h.engine.stats().ready, 5);
    assert_eq!(h.engine.config().queue.max_length, Some(5));
    // The same settings again: nothing more happens.
    assert!(reconfigure(&mut h, limited, None).effects.is_empty());

    // A policy bringing reject-publish and a lower limit together: the limit is enforced
    // with the overflow mode in force until then (drop-head), as RabbitMQ orders it.
    let rejecting = |n| QueueConfig {
        max_length: Some(n),
        overflow: Overflow::RejectPublish,
        ..QueueConfig::default()
    };
    reconfigure(&mut h, rejecting(2), None);
    assert_eq!(h.engine.stats().ready, 2);
    // Already reject-publish: a lower limit keeps the backlog and refuses later publishes.
    assert!(reconfigure(&mut h, rejecting(1), None).effects.is_empty());
    assert_eq!(h.engine.stats().ready, 2);
    let s = enqueue(&mut h, message("refused", false));
    assert!(matches!(
        s.reply,
        Ok(Reply::Enqueued {
            result: Published::Rejected,
            ..
        })
    ));
    reconfigure(&mut h, QueueConfig::default(), None);
    enqueue(&mut h, message("m20", false));
    let bytes = QueueConfig {
        max_length_bytes: Some(6),
        ..QueueConfig::default()
    };
    let s = reconfigure(&mut h, bytes, None);
    assert_eq!(dead_letters(&s), [], "no dead-letter exchange any more");
    assert_eq!(h.engine.stats().ready, 2, "m19 m20: 6 bytes");
    reconfigure(&mut h, QueueConfig::default(), None);
    enqueue(&mut h, message("more", false));
    assert_eq!(h.engine.stats().ready, 3);
}

/// A new message TTL applies to messages that enter from then on; those already queued keep
/// the expiry they entered with (RabbitMQ 3.10's classic queues behave so), in memory or
/// paged out alike.
#[test]
fn reconfigure_ttl_applies_to_new_messages_and_keeps_old_expiries() {
    let mut c = config(QueueConfig {
        message_ttl: Some(1000),
        ..QueueConfig::default()
    });
    c.memory_budget = 2 * MESSAGE_OVERHEAD + 8;
    let mut h = Harness::new(c);
    for i in 0..6 {
        enqueue(&mut h, message(&format!("a{i}"), false));
    }
    assert!(h.engine.stats().paged_out > 0, "some are paged out");
    h.advance(10);
    let s = reconfigure(
        &mut h,
        QueueConfig {
            message_ttl: Some(50),
            ..QueueConfig::default()
        },
        None,
    );
    assert!(dead_letters(&s).is_empty());
    enqueue(&mut h, message("b", false));
    h.advance(100);
    h.step(Command::Tick);
    assert_eq!(h.engine.stats().ready, 7, "the head keeps its 1000 ms");
    // Paged ones too, once they are at the head.
    for _ in 0..2 {
        h.step(Command::Get {
            ack_required: false,
        });
    }
    h.step(Command::Tick);
    assert_eq!(h.engine.stats().ready, 5);
    h.advance(900);
    h.step(Command::Tick);
    // The first six expired at 1000 ms, the newest (TTL 50) right behind them.
    assert_eq!(h.engine.stats().ready, 0);
    assert!(h.missing.is_empty(), "{:?}", h.missing);
}

/// `expires` set by a policy change starts counting from the last use; a delivery limit
/// set by one applies to the next return.
#[test]
fn reconfigure_changes_expiry_and_delivery_limit() {
    let mut h = Harness::new(EngineConfig::quorum(QueueConfig::default()));
    assert_eq!(h.engine.idle_deadline(), crate::clock::NEVER);
    h.advance(100);
    reconfigure(
        &mut h,
        QueueConfig {
            expires: Some(500),
            dead_letter_exchange: Some(ShortString::from("dlx")),
            ..QueueConfig::default()
        },
        Some(1),
    );
    assert_eq!(h.engine.idle_deadline(), 500);
    enqueue(&mut h, message("m", false));
    h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    let s = h.step(Command::Return {
        offsets: &[0],
        failed: true,
    });
    assert_eq!(deliveries(&s), [(Some(1), 0, true)]);
    let s = h.step(Command::Return {
        offsets: &[0],
        failed: true,
    });
    assert_eq!(dead_letters(&s), [(0, DeathReason::DeliveryLimit)]);
}

fn with_priority(body: &str, priority: Option<u8>) -> Arc<Message> {
    Arc::new(Message::new(
        ShortString::from("x"),
        ShortString::from("k"),
        BasicProperties {
            priority,
            ..BasicProperties::default()
        },
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

/// Offsets handed out one by one to a consumer with prefetch 1 that acks each.
fn drain_one_by_one(h: &mut Harness, consumer: ConsumerId, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    let s = h.step(Command::Checkout {
        consumer,
        settings: settings("c", 1),
    });
    got.extend(deliveries(&s).iter().map(|d| d.1));
    while got.len() < n {
        let Some(&last) = got.last() else { break };
        let s = h.step(Command::Settle { offsets: &[last] });
        let d = deliveries(&s);
        if d.is_empty() {
            break;
        }
        got.extend(d.iter().map(|d| d.1));
    }
    got
}

#[test]
fn quorum_queues_have_two_priorities_delivered_two_to_one() {
    let mut h = Harness::new(EngineConfig::quorum(QueueConfig::default()));
    // Offsets 0..3 normal (none, 0, 4), 3..9 high (5, 9, 255, ...).
    for p in [None, Some(0), Some(4)] {
        enqueue(&mut h, with_priority("n", p));
    }
    for p in [5, 9, 255, 5, 6, 7] {
        enqueue(&mut h, with_priority("h", Some(p)));
    }
    // RabbitMQ 4's rabbit_fifo_q: high, high, then the normal head (older), and so on.
    assert_eq!(drain_one_by_one(&mut h, 1, 9), [3, 4, 0, 5, 6, 1, 7, 8, 2]);
}

#[test]
fn quorum_priority_turns_survive_snapshots_and_returns_go_first() {
    let mut h = Harness::new(EngineConfig::quorum(QueueConfig::default()));
    for i in 0..4 {
        enqueue(&mut h, with_priority(&format!("n{i}"), None));
        enqueue(&mut h, with_priority(&format!("h{i}"), Some(9)));
    }
    // One turn taken (a high one) before the snapshot.
    let s = h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 1),
    });
    assert_eq!(deliveries(&s), [(Some(1), 1, false)]);
    h.step(Command::Cancel { consumer: 1 });
    h.step(Command::Settle { offsets: &[1] });
    let parts = h.engine.snapshot().to_parts().unwrap();
    let config = h.engine.config().clone();
    let mut restored = Harness::new(config.clone());
    restored.engine = QueueEngine::from_snapshot(Snapshot::from_parts(config, parts));
    // Next: one more high (3), then the normal head (0), then high (5).
    let a = drain_one_by_one(&mut h, 2, 3);
    let b = drain_one_by_one(&mut restored, 2, 3);
    assert_eq!(a, [3, 0, 5]);
    assert_eq!(
        a, b,
        "a member restored from a snapshot takes the same turns"
    );
    // A returned normal message goes before the waiting high ones.
    let mut h = Harness::new(EngineConfig::quorum(QueueConfig::default()));
    enqueue(&mut h, with_priority("n", None));
    for _ in 0..3 {
        enqueue(&mut h, with_priority("h", Some(9)));
    }
    let s = h.step(Command::Checkout {
        consumer: 1,
        settings: settings("a", 2),
    });
    assert_eq!(deliveries(&s), [(Some(1), 1, false), (Some(1), 2, false)]);
    h.step(Command::Cancel { consumer: 1 });
    h.step(Command::Settle { offsets: &[1, 2] });
    let s = h.step(Command::Checkout {
        consumer: 2,
        settings: settings("b", 1),
    });
    // Turn 3 of 3: the normal head (0, older than 3) goes.
    assert_eq!(deliveries(&s), [(Some(2), 0, false)]);
    let s = h.step(Command::Return {
        offsets: &[0],
        failed: true,
    });
    assert_eq!(deliveries(&s), [(Some(2), 0, true)]);
}
