//! Message bodies of 0 bytes, around the frame size boundary, 200 KiB
//! (several body frames with the default frame_max of 131072) and 16 MiB
//! round-trip byte for byte, through basic.consume and basic.get.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{next_delivery, timed, unique, within, Broker};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const BIG_TIMEOUT: Duration = Duration::from_secs(30);

/// A body whose every byte depends on its offset, so that lost, duplicated
/// or reordered frames are detected.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ ((i >> 8) as u8) ^ ((i >> 16) as u8) ^ seed)
        .collect()
}

#[track_caller]
fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: body length");
    if let Some(offset) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{what}: bodies differ first at byte {offset}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_all_sizes_round_trip() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let negotiated_frame_max = connection.configuration().frame_max();
    assert_eq!(negotiated_frame_max, 131_072, "default frame_max");
    let queue = unique("large");
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

    // frame_max minus the 8 bytes of frame overhead is the largest body frame payload.
    let sizes = [
        0,
        1,
        131_063,
        131_064,
        131_065,
        131_072,
        200 * KIB,
        3 * 131_064,
        16 * MIB,
    ];
    for (seed, &size) in sizes.iter().enumerate() {
        let payload = body(size, seed as u8);
        let confirm = within(
            BIG_TIMEOUT,
            channel.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default().with_message_id(format!("size-{size}").into()),
            ),
        )
        .await
        .unwrap();
        assert!(
            within(BIG_TIMEOUT, confirm).await.unwrap().is_ack(),
            "size {size}"
        );
    }

    let mut consumer = timed(channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for (seed, &size) in sizes.iter().enumerate() {
        let delivery = within(BIG_TIMEOUT, next_delivery(&mut consumer)).await;
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned()),
            Some(format!("size-{size}")),
            "messages out of order"
        );
        assert_same(
            &delivery.data,
            &body(size, seed as u8),
            &format!("consume, size {size}"),
        );
        timed(delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    common::assert_no_delivery(&mut consumer).await;
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_empty_bodies_via_basic_get() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let queue = unique("large-get");
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
    let sizes = [0, 200 * KIB, 0];
    for (seed, &size) in sizes.iter().enumerate() {
        timed(channel.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &body(size, seed as u8 + 100),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    assert!(timed(channel.wait_for_confirms()).await.unwrap().is_empty());
    for (seed, &size) in sizes.iter().enumerate() {
        let message =
            timed(channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }))
                .await
                .unwrap()
                .expect("message");
        assert_same(
            &message.delivery.data,
            &body(size, seed as u8 + 100),
            &format!("get, size {size}"),
        );
    }
    timed(connection.close(200, "bye".into())).await.unwrap();
}
