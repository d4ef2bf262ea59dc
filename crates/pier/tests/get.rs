//! basic.get: get-ok carries the remaining message_count, an empty queue
//! answers get-empty, and no_ack=false deliveries must be acked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{timed, unique, Broker};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_reports_message_count_and_get_empty() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let queue = unique("get");
    let declared = timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(declared.message_count(), 0);
    assert_eq!(declared.consumer_count(), 0);

    // Empty queue: get-empty.
    assert!(
        timed(channel.basic_get(queue.as_str().into(), BasicGetOptions::default()))
            .await
            .unwrap()
            .is_none()
    );

    timed(channel.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for i in 0..4 {
        timed(channel.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            format!("g{i}").as_bytes(),
            BasicProperties::default().with_correlation_id(format!("c{i}").into()),
        ))
        .await
        .unwrap();
    }
    assert!(timed(channel.wait_for_confirms()).await.unwrap().is_empty());

    let declared = timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(declared.message_count(), 4);

    // message_count is the number of messages left AFTER this one.
    let first = timed(channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("g0");
    assert_eq!(first.delivery.data, b"g0");
    assert_eq!(first.message_count, 3);
    assert!(!first.delivery.redelivered);
    assert_eq!(first.delivery.exchange.as_str(), "");
    assert_eq!(first.delivery.routing_key.as_str(), queue);
    assert_eq!(
        first
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c0")
    );

    // Manual ack mode: the delivery stays unacked until acked, and does not count.
    let second = timed(channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("g1");
    assert_eq!(second.delivery.data, b"g1");
    assert_eq!(second.message_count, 2);
    let third = timed(channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("g2");
    assert_eq!(third.message_count, 1);
    assert!(
        third.delivery.delivery_tag > second.delivery.delivery_tag,
        "delivery tags increase"
    );
    timed(second.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    // Rejected with requeue: g2 goes back to the head, so the count rises again.
    timed(third.delivery.reject(BasicRejectOptions { requeue: true }))
        .await
        .unwrap();

    let again = timed(channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("g2 again");
    assert_eq!(again.delivery.data, b"g2");
    assert!(again.delivery.redelivered);
    assert_eq!(again.message_count, 1);
    let last = timed(channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("g3");
    assert_eq!(last.delivery.data, b"g3");
    assert_eq!(last.message_count, 0);

    assert!(
        timed(channel.basic_get(queue.as_str().into(), BasicGetOptions::default()))
            .await
            .unwrap()
            .is_none()
    );
    let declared = timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(declared.message_count(), 0);
    timed(connection.close(200, "bye".into())).await.unwrap();
}
