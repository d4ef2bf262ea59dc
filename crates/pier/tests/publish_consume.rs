//! Publishing with publisher confirms and consuming with manual acks: every
//! message arrives exactly once, in FIFO order, with its body and all of its
//! basic properties intact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{next_delivery, timed, unique, Broker};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::BasicProperties;

const MESSAGES: u32 = 1000;

fn headers(i: u32) -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("deep".into()));
    nested.insert("n".into(), AMQPValue::LongInt(-7));

    let mut table = FieldTable::default();
    table.insert("bool".into(), AMQPValue::Boolean(true));
    table.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    table.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    table.insert("i16".into(), AMQPValue::ShortInt(-1600));
    table.insert("u16".into(), AMQPValue::ShortUInt(60_000));
    table.insert("i32".into(), AMQPValue::LongInt(-320_000));
    table.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
    table.insert("i64".into(), AMQPValue::LongLongInt(-(1_i64 << 40)));
    table.insert("index".into(), AMQPValue::LongLongInt(i64::from(i)));
    table.insert("f32".into(), AMQPValue::Float(1.5));
    table.insert("f64".into(), AMQPValue::Double(-2.25));
    table.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    table.insert(
        "string".into(),
        AMQPValue::LongString(LongString::from(format!("héllo-{i}"))),
    );
    table.insert(
        "array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::LongString("two".into()),
            AMQPValue::Boolean(false),
        ])),
    );
    table.insert("timestamp".into(), AMQPValue::Timestamp(1_700_000_000));
    table.insert("table".into(), AMQPValue::FieldTable(nested));
    table.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0_u8, 1, 2, 255])),
    );
    table.insert("void".into(), AMQPValue::Void);
    table
}

fn properties(i: u32) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/x-pier-test".into())
        .with_content_encoding("identity".into())
        .with_headers(headers(i))
        .with_correlation_id(format!("corr-{i}").into())
        .with_message_id(format!("msg-{i}").into())
        .with_priority((i % 10) as u8)
        .with_delivery_mode(if i % 2 == 0 { 1 } else { 2 })
        .with_timestamp(1_600_000_000 + u64::from(i))
        .with_app_id("pier-tests".into())
        .with_type("test.message".into())
        .with_reply_to("nowhere".into())
}

fn body(i: u32) -> Vec<u8> {
    format!("message number {i:04} {}", "x".repeat((i % 37) as usize)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_confirmed_messages_arrive_in_order_with_properties() {
    let broker = Broker::start();
    let connection = broker.connect().await;
    let publisher = timed(connection.create_channel()).await.unwrap();
    let consumer_channel = timed(connection.create_channel()).await.unwrap();
    let queue = unique("publish-consume");

    timed(publisher.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(publisher.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();

    let mut confirms = Vec::with_capacity(MESSAGES as usize);
    for i in 0..MESSAGES {
        let confirm = timed(publisher.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &body(i),
            properties(i),
        ))
        .await
        .unwrap();
        confirms.push(confirm);
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        let confirmation = timed(confirm).await.unwrap();
        assert!(
            confirmation.is_ack(),
            "message {i} was not acked: {confirmation:?}"
        );
        assert!(
            confirmation.take_message().is_none(),
            "message {i} was returned"
        );
    }
    let returned = timed(publisher.wait_for_confirms()).await.unwrap();
    assert!(returned.is_empty(), "unexpected returned messages");

    timed(consumer_channel.basic_qos(100, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = timed(consumer_channel.basic_consume(
        queue.as_str().into(),
        "publish-consume-consumer".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();

    let mut last_tag = 0;
    for i in 0..MESSAGES {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(
            String::from_utf8_lossy(&delivery.data),
            String::from_utf8_lossy(&body(i)),
            "message {i} out of order or corrupted"
        );
        assert_eq!(
            delivery.properties,
            properties(i),
            "properties of message {i}"
        );
        assert_eq!(*delivery.properties.expiration(), None);
        assert_eq!(*delivery.properties.user_id(), None);
        assert_eq!(*delivery.properties.cluster_id(), None);
        assert!(!delivery.redelivered, "message {i} flagged as redelivered");
        assert_eq!(delivery.exchange.as_str(), "");
        assert_eq!(delivery.routing_key.as_str(), queue);
        assert!(
            delivery.delivery_tag > last_tag,
            "delivery tags must increase: {} after {last_tag}",
            delivery.delivery_tag
        );
        last_tag = delivery.delivery_tag;
        timed(delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    assert_eq!(
        last_tag,
        u64::from(MESSAGES),
        "delivery tags start at 1 per channel"
    );

    // Everything was acked: the queue is now empty.
    let declared = timed(publisher.queue_declare(
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
    common::assert_no_delivery(&mut consumer).await;

    timed(connection.close(200, "bye".into())).await.unwrap();
}
