//! 100 channels on one connection, each with its own queue and consumer:
//! every consumer gets exactly its own messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_no_delivery, next_delivery, timed, unique, Broker};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;

const CHANNELS: usize = 100;
const PER_CHANNEL: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_channels_each_with_a_consumer() {
    let broker = Broker::start();
    let connection = broker.connect().await;
    let prefix = unique("many");

    let mut channels = Vec::with_capacity(CHANNELS);
    let mut consumers = Vec::with_capacity(CHANNELS);
    for i in 0..CHANNELS {
        let channel = timed(connection.create_channel()).await.unwrap();
        let queue = format!("{prefix}.{i}");
        timed(channel.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        let consumer = timed(channel.basic_consume(
            queue.as_str().into(),
            format!("consumer-{i}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        channels.push(channel);
        consumers.push(consumer);
    }
    let mut ids: Vec<u16> = channels.iter().map(|c| c.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CHANNELS, "channel ids are distinct");

    // Publish from a separate channel, interleaving the destinations.
    let publisher = timed(connection.create_channel()).await.unwrap();
    timed(publisher.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for n in 0..PER_CHANNEL {
        for i in 0..CHANNELS {
            timed(publisher.basic_publish(
                "".into(),
                format!("{prefix}.{i}").as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}:{n}").as_bytes(),
                BasicProperties::default(),
            ))
            .await
            .unwrap();
        }
    }
    assert!(timed(publisher.wait_for_confirms())
        .await
        .unwrap()
        .is_empty());

    // Drain all consumers concurrently.
    let mut tasks = Vec::with_capacity(CHANNELS);
    for (i, mut consumer) in consumers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_CHANNEL {
                let delivery = next_delivery(&mut consumer).await;
                assert_eq!(
                    String::from_utf8_lossy(&delivery.data),
                    format!("{i}:{n}"),
                    "channel {i}"
                );
                assert_eq!(
                    delivery.routing_key.as_str(),
                    format!("{}", consumer.queue())
                );
                timed(delivery.ack(BasicAckOptions::default()))
                    .await
                    .unwrap();
            }
            consumer
        }));
    }
    let mut consumers = Vec::with_capacity(CHANNELS);
    for task in tasks {
        consumers.push(timed(task).await.expect("consumer task panicked"));
    }
    // Nothing extra arrived anywhere (checked concurrently to keep it quick).
    let checks: Vec<_> = consumers
        .into_iter()
        .map(|mut consumer| tokio::spawn(async move { assert_no_delivery(&mut consumer).await }))
        .collect();
    for check in checks {
        timed(check).await.expect("unexpected extra delivery");
    }

    // Closing many channels works and the connection stays healthy.
    for channel in &channels[..CHANNELS / 2] {
        timed(channel.close(200, "bye".into())).await.unwrap();
    }
    let extra = timed(connection.create_channel()).await.unwrap();
    timed(extra.queue_declare(
        "".into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(connection.close(200, "bye".into())).await.unwrap();
}
