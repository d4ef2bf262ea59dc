//! Requeueing: nack/reject with requeue put a message back at its original
//! position with redelivered=true; unacked messages of a closed channel are
//! requeued; basic.recover redelivers unacked messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_no_delivery, next_delivery, timed, unique, Broker};
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRecoverOptions, BasicRejectOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

async fn declare_and_fill(channel: &Channel, queue: &str, exclusive: bool, count: usize) {
    timed(channel.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            exclusive,
            auto_delete: !exclusive,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(channel.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for i in 0..count {
        timed(channel.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default().with_message_id(format!("id{i}").into()),
        ))
        .await
        .unwrap();
    }
    assert!(timed(channel.wait_for_confirms()).await.unwrap().is_empty());
}

async fn get(channel: &Channel, queue: &str) -> BasicGetMessage {
    timed(channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("queue unexpectedly empty")
}

fn body(message: &BasicGetMessage) -> String {
    String::from_utf8_lossy(&message.delivery.data).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_reject_requeue_to_original_position() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let queue = unique("requeue-position");
    declare_and_fill(&channel, &queue, true, 6).await;

    let m0 = get(&channel, &queue).await;
    let m1 = get(&channel, &queue).await;
    let m2 = get(&channel, &queue).await;
    assert_eq!(
        (body(&m0), body(&m1), body(&m2)),
        ("m0".into(), "m1".into(), "m2".into())
    );
    assert!(!m0.delivery.redelivered && !m1.delivery.redelivered && !m2.delivery.redelivered);
    assert_eq!(m2.message_count, 3);

    // Requeue m1 first, then m0: each goes back to where it was, not to the tail
    // and not simply to the head in requeue order.
    timed(m1.delivery.nack(BasicNackOptions {
        multiple: false,
        requeue: true,
    }))
    .await
    .unwrap();
    timed(m0.delivery.reject(BasicRejectOptions { requeue: true }))
        .await
        .unwrap();

    let again0 = get(&channel, &queue).await;
    assert_eq!(body(&again0), "m0");
    assert!(
        again0.delivery.redelivered,
        "requeued message must be flagged redelivered"
    );
    assert_eq!(
        again0
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("id0"),
        "properties survive a requeue"
    );
    assert_eq!(again0.message_count, 4, "m1, m3, m4, m5 remain ready");
    let again1 = get(&channel, &queue).await;
    assert_eq!(body(&again1), "m1");
    assert!(again1.delivery.redelivered);
    for expected in ["m3", "m4", "m5"] {
        let message = get(&channel, &queue).await;
        assert_eq!(body(&message), expected);
        assert!(
            !message.delivery.redelivered,
            "{expected} was never delivered before"
        );
    }
    assert!(
        timed(channel.basic_get(queue.as_str().into(), BasicGetOptions::default()))
            .await
            .unwrap()
            .is_none()
    );

    // nack multiple=true requeues everything up to the tag (m2, m0', m1', m3, m4, m5).
    let last = get_requeued_all(&channel, &queue).await;
    assert_eq!(last, ["m0", "m1", "m2", "m3", "m4", "m5"]);

    timed(connection.close(200, "bye".into())).await.unwrap();
}

/// Nack everything outstanding on `channel` with multiple=true, requeue=true
/// (via a fresh get whose tag is the highest), then drain the queue.
async fn get_requeued_all(channel: &Channel, queue: &str) -> Vec<String> {
    // Everything is unacked now; publish a marker so that we hold the highest tag.
    timed(channel.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"marker",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert!(timed(channel.wait_for_confirms()).await.unwrap().is_empty());
    let marker = get(channel, queue).await;
    assert_eq!(body(&marker), "marker");
    timed(marker.delivery.nack(BasicNackOptions {
        multiple: true,
        requeue: true,
    }))
    .await
    .unwrap();
    let mut bodies = Vec::new();
    loop {
        let message = timed(channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap();
        match message {
            Some(message) => {
                assert!(
                    message.delivery.redelivered,
                    "{} not redelivered",
                    body(&message)
                );
                bodies.push(body(&message));
            }
            None => break,
        }
    }
    assert_eq!(bodies.pop().as_deref(), Some("marker"));
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_nack_requeue_is_redelivered() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let queue = unique("requeue-consumer");
    declare_and_fill(&channel, &queue, true, 3).await;

    timed(channel.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = timed(channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let first = next_delivery(&mut consumer).await;
    assert_eq!(first.data, b"m0");
    assert!(!first.redelivered);
    timed(first.nack(BasicNackOptions {
        multiple: false,
        requeue: true,
    }))
    .await
    .unwrap();
    // With prefetch 1, the requeued head is delivered again before m1.
    let again = next_delivery(&mut consumer).await;
    assert_eq!(again.data, b"m0");
    assert!(again.redelivered);
    assert!(
        again.delivery_tag > first.delivery_tag,
        "a redelivery gets a new tag"
    );
    timed(again.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    // Rejected without requeue: m0 is gone (no DLX), m1 follows.
    for expected in [&b"m1"[..], b"m2"] {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(delivery.data, expected);
        assert!(!delivery.redelivered);
        timed(delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    assert_no_delivery(&mut consumer).await;
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_channel_requeues_unacked_messages() {
    let broker = Broker::start();
    let connection = broker.connect().await;
    let setup = timed(connection.create_channel()).await.unwrap();
    let queue = unique("requeue-close");
    declare_and_fill(&setup, &queue, true, 5).await;

    let first_channel = timed(connection.create_channel()).await.unwrap();
    timed(first_channel.basic_qos(3, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = timed(first_channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut held = Vec::new();
    for expected in [&b"m0"[..], b"m1", b"m2"] {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(delivery.data, expected);
        held.push(delivery);
    }
    // Ack the middle one; m0 and m2 stay unacked. The freed prefetch slot is
    // filled with m3, which also stays unacked.
    timed(held[1].ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let m3 = next_delivery(&mut consumer).await;
    assert_eq!(m3.data, b"m3");
    assert_no_delivery(&mut consumer).await;
    timed(first_channel.close(200, "done".into()))
        .await
        .unwrap();
    drop(consumer);

    let second_channel = timed(connection.create_channel()).await.unwrap();
    let mut consumer = timed(second_channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for (expected, redelivered) in [
        (&b"m0"[..], true),
        (b"m2", true),
        (b"m3", true),
        (b"m4", false),
    ] {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(
            String::from_utf8_lossy(&delivery.data),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(
            delivery.redelivered, redelivered,
            "redelivered flag of {expected:?}"
        );
        timed(delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    assert_no_delivery(&mut consumer).await;
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_connection_requeues_unacked_messages() {
    let broker = Broker::start();
    let (owner, setup) = broker.connect_channel().await;
    let queue = unique("requeue-conn-close");
    // Not exclusive: it must outlive the consuming connection (auto-delete only
    // triggers once a consumer existed and all consumers are gone, so keep a
    // consumer-free owner and delete explicitly at the end).
    timed(setup.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for i in 0..3 {
        timed(setup.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }

    let (other, channel) = broker.connect_channel().await;
    for expected in ["m0", "m1"] {
        let message = get(&channel, &queue).await;
        assert_eq!(body(&message), expected);
    }
    timed(other.close(200, "going away".into())).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        let message =
            timed(setup.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }))
                .await
                .unwrap()
                .expect("message requeued after connection close");
        seen.push((body(&message), message.delivery.redelivered));
    }
    assert_eq!(
        seen,
        [
            ("m0".into(), true),
            ("m1".into(), true),
            ("m2".into(), false)
        ]
    );
    timed(setup.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    timed(owner.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_recover_redelivers_unacked_messages() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let queue = unique("requeue-recover");
    declare_and_fill(&channel, &queue, true, 3).await;

    let consumer_channel = timed(connection.create_channel()).await.unwrap();
    let mut consumer = timed(consumer_channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut first_round = Vec::new();
    for expected in [&b"m0"[..], b"m1", b"m2"] {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(delivery.data, expected);
        assert!(!delivery.redelivered);
        first_round.push(delivery);
    }
    // Ack m1; m0 and m2 remain unacked and come back after basic.recover.
    timed(first_round[1].ack(BasicAckOptions::default()))
        .await
        .unwrap();
    timed(consumer_channel.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();

    let mut redelivered = Vec::new();
    for _ in 0..2 {
        let delivery = next_delivery(&mut consumer).await;
        assert!(
            delivery.redelivered,
            "recovered messages are flagged redelivered"
        );
        redelivered.push(String::from_utf8_lossy(&delivery.data).into_owned());
        timed(delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    assert_eq!(redelivered, ["m0", "m2"]);
    assert_no_delivery(&mut consumer).await;
    timed(connection.close(200, "bye".into())).await.unwrap();
}
