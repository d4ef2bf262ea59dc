//! basic.qos: prefetch_count limits the number of unacked deliveries per
//! consumer (global=false, RabbitMQ semantics) or per channel (global=true).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_no_delivery, next_delivery, timed, unique, Broker};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};

async fn queue_with_messages(channel: &Channel, prefix: &str, count: usize) -> String {
    let queue = unique(prefix);
    timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive(),
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
            queue.as_str().into(),
            BasicPublishOptions::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    assert!(timed(channel.wait_for_confirms()).await.unwrap().is_empty());
    queue
}

async fn consume(channel: &Channel, queue: &str, no_ack: bool) -> Consumer {
    timed(channel.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack,
            ..BasicConsumeOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap()
}

async fn take(consumer: &mut Consumer, count: usize) -> Vec<Delivery> {
    let mut deliveries = Vec::with_capacity(count);
    for _ in 0..count {
        deliveries.push(next_delivery(consumer).await);
    }
    deliveries
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_limits_unacked_deliveries_per_consumer() {
    let broker = Broker::start();
    let (connection, setup) = broker.connect_channel().await;
    let queue = queue_with_messages(&setup, "qos-prefetch", 15).await;

    let channel = timed(connection.create_channel()).await.unwrap();
    timed(channel.basic_qos(3, BasicQosOptions { global: false }))
        .await
        .unwrap();
    let mut consumer = consume(&channel, &queue, false).await;

    let first = take(&mut consumer, 3).await;
    assert_eq!(bodies(&first), ["0", "1", "2"]);
    assert_no_delivery(&mut consumer).await;

    // Acking one frees exactly one slot.
    timed(first[0].ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let next = take(&mut consumer, 1).await;
    assert_eq!(bodies(&next), ["3"]);
    assert_no_delivery(&mut consumer).await;

    // ack multiple=true on the newest tag frees all three remaining slots.
    timed(next[0].ack(BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    let more = take(&mut consumer, 3).await;
    assert_eq!(bodies(&more), ["4", "5", "6"]);
    assert_no_delivery(&mut consumer).await;

    // A new basic.qos (global=false) only applies to consumers created after
    // it: the existing consumer keeps its limit of 3 ...
    timed(channel.basic_qos(5, BasicQosOptions { global: false }))
        .await
        .unwrap();
    assert_no_delivery(&mut consumer).await;
    // ... while a new consumer on the same channel gets 5.
    let mut second = consume(&channel, &queue, false).await;
    let second_batch = take(&mut second, 5).await;
    assert_eq!(bodies(&second_batch), ["7", "8", "9", "10", "11"]);
    assert_no_delivery(&mut second).await;
    assert_no_delivery(&mut consumer).await;

    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_consumer_prefetch_applies_to_each_consumer_separately() {
    let broker = Broker::start();
    let (connection, setup) = broker.connect_channel().await;
    let queue_a = queue_with_messages(&setup, "qos-per-consumer-a", 5).await;
    let queue_b = queue_with_messages(&setup, "qos-per-consumer-b", 5).await;

    let channel = timed(connection.create_channel()).await.unwrap();
    timed(channel.basic_qos(2, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer_a = consume(&channel, &queue_a, false).await;
    let mut consumer_b = consume(&channel, &queue_b, false).await;
    let a = take(&mut consumer_a, 2).await;
    let b = take(&mut consumer_b, 2).await;
    assert_eq!(bodies(&a), ["0", "1"]);
    assert_eq!(bodies(&b), ["0", "1"]);
    assert_no_delivery(&mut consumer_a).await;
    assert_no_delivery(&mut consumer_b).await;

    // Acking on A frees a slot for A only.
    timed(a[1].ack(BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    assert_eq!(bodies(&take(&mut consumer_a, 2).await), ["2", "3"]);
    assert_no_delivery(&mut consumer_a).await;
    assert_no_delivery(&mut consumer_b).await;

    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_prefetch_is_shared_by_all_consumers_of_the_channel() {
    let broker = Broker::start();
    let (connection, setup) = broker.connect_channel().await;
    let queue_a = queue_with_messages(&setup, "qos-global-a", 5).await;
    let queue_b = queue_with_messages(&setup, "qos-global-b", 5).await;

    let channel = timed(connection.create_channel()).await.unwrap();
    timed(channel.basic_qos(3, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut consumer_a = consume(&channel, &queue_a, false).await;
    // Let A fill the whole channel window before B starts.
    let a = take(&mut consumer_a, 3).await;
    assert_eq!(bodies(&a), ["0", "1", "2"]);
    let mut consumer_b = consume(&channel, &queue_b, false).await;
    assert_no_delivery(&mut consumer_a).await;
    assert_no_delivery(&mut consumer_b).await;

    // Acking two of A's messages frees two channel-wide slots; with A also
    // eligible the two deliveries may go to either consumer, but there are
    // exactly two of them in total.
    timed(a[0].ack(BasicAckOptions::default())).await.unwrap();
    timed(a[1].ack(BasicAckOptions::default())).await.unwrap();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + common::STEP_TIMEOUT;
    while received < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "freed slots were not used"
        );
        tokio::select! {
            Some(Ok(_unacked)) = futures_lite::StreamExt::next(&mut consumer_a) => received += 1,
            Some(Ok(_unacked)) = futures_lite::StreamExt::next(&mut consumer_b) => received += 1,
            _ = tokio::time::sleep(common::STEP_TIMEOUT) => panic!("no delivery after freeing slots"),
        }
    }
    assert_no_delivery(&mut consumer_a).await;
    assert_no_delivery(&mut consumer_b).await;

    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_and_channel_limits_combine() {
    let broker = Broker::start();
    let (connection, setup) = broker.connect_channel().await;
    let queue_a = queue_with_messages(&setup, "qos-combined-a", 5).await;
    let queue_b = queue_with_messages(&setup, "qos-combined-b", 5).await;

    // Each consumer may hold 2, the channel as a whole 3.
    let channel = timed(connection.create_channel()).await.unwrap();
    timed(channel.basic_qos(2, BasicQosOptions { global: false }))
        .await
        .unwrap();
    timed(channel.basic_qos(3, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut consumer_a = consume(&channel, &queue_a, false).await;
    let a = take(&mut consumer_a, 2).await;
    assert_no_delivery(&mut consumer_a).await;
    let mut consumer_b = consume(&channel, &queue_b, false).await;
    let b = take(&mut consumer_b, 1).await;
    assert_no_delivery(&mut consumer_b).await;
    assert_no_delivery(&mut consumer_a).await;
    assert_eq!(bodies(&a), ["0", "1"]);
    assert_eq!(bodies(&b), ["0"]);
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_does_not_limit_no_ack_consumers() {
    let broker = Broker::start();
    let (connection, setup) = broker.connect_channel().await;
    let queue = queue_with_messages(&setup, "qos-no-ack", 20).await;
    let channel = timed(connection.create_channel()).await.unwrap();
    timed(channel.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&channel, &queue, true).await;
    let all = take(&mut consumer, 20).await;
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(bodies(&all), expected);
    timed(connection.close(200, "bye".into())).await.unwrap();
}
