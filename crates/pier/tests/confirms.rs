//! Publisher confirms: routed and unroutable messages are both confirmed
//! (acked); a mandatory unroutable message is first returned with 312
//! NO_ROUTE and then confirmed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{timed, unique, Broker};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, ExchangeKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_and_unroutable_messages_are_confirmed() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let queue = unique("confirms-q");
    let exchange = unique("confirms-x");

    timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(channel.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(channel.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    assert!(channel.status().confirm());
    // confirm.select is idempotent.
    timed(channel.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();

    // Routed via the default exchange.
    let confirmation = timed(
        timed(channel.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"routed",
            BasicProperties::default(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(confirmation.is_ack());
    assert!(confirmation.take_message().is_none());

    // Unroutable (no binding), not mandatory: silently dropped but confirmed.
    let confirmation = timed(
        timed(channel.basic_publish(
            exchange.as_str().into(),
            "no-such-binding".into(),
            BasicPublishOptions::default(),
            b"dropped",
            BasicProperties::default(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(confirmation.is_ack());
    assert!(confirmation.take_message().is_none());

    // Unroutable via the default exchange to a queue that does not exist.
    let confirmation = timed(
        timed(channel.basic_publish(
            "".into(),
            unique("confirms-missing-queue").as_str().into(),
            BasicPublishOptions::default(),
            b"dropped too",
            BasicProperties::default(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(confirmation.is_ack());

    // Many confirms in flight at once, mixing routed and unroutable.
    let mut pending = Vec::new();
    for i in 0..200_u32 {
        let routing_key = if i % 3 == 0 {
            "nowhere".to_owned()
        } else {
            queue.clone()
        };
        pending.push(
            timed(channel.basic_publish(
                "".into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            ))
            .await
            .unwrap(),
        );
    }
    for confirm in pending {
        assert!(timed(confirm).await.unwrap().is_ack());
    }
    let returned = timed(channel.wait_for_confirms()).await.unwrap();
    assert!(returned.is_empty());

    // Only the routed messages reached the queue: 1 + 133 (i % 3 != 0 for 0..200).
    let declared = timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive().passive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(declared.message_count(), 134);
    let first = timed(channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(first.delivery.data, b"routed");

    timed(channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_message_is_returned_then_acked() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let exchange = unique("confirms-mandatory-x");
    timed(channel.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(channel.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();

    let properties = BasicProperties::default()
        .with_message_id("returned-1".into())
        .with_priority(3);
    let confirmation = timed(
        timed(channel.basic_publish(
            exchange.as_str().into(),
            "no.route.here".into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"come back",
            properties.clone(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    // The broker sends basic.return before basic.ack; the confirm is still an ack.
    assert!(confirmation.is_ack(), "{confirmation:?}");
    let returned = confirmation
        .take_message()
        .expect("the mandatory unroutable message must be returned");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(
        returned.error().map(|e| e.kind().clone()),
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOROUTE))
    );
    assert_eq!(returned.delivery.exchange.as_str(), exchange);
    assert_eq!(returned.delivery.routing_key.as_str(), "no.route.here");
    assert_eq!(returned.delivery.data, b"come back");
    assert_eq!(returned.delivery.properties, properties);

    // Mandatory via the default exchange to a missing queue: also returned.
    let missing = unique("confirms-missing");
    let confirmation = timed(
        timed(channel.basic_publish(
            "".into(),
            missing.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"",
            BasicProperties::default(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(confirmation.is_ack());
    let returned = confirmation.take_message().expect("returned message");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.delivery.exchange.as_str(), "");
    assert_eq!(returned.delivery.routing_key.as_str(), missing);
    assert!(returned.delivery.data.is_empty());

    // A mandatory message that IS routed is not returned.
    let queue = unique("confirms-mandatory-q");
    timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let confirmation = timed(
        timed(channel.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"stays",
            BasicProperties::default(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(confirmation.is_ack());
    assert!(confirmation.take_message().is_none());
    assert!(timed(channel.wait_for_confirms()).await.unwrap().is_empty());

    timed(channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_confirm_select_publishes_are_not_confirmed() {
    // Without confirm mode the broker sends no basic.ack, and publishes still land.
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let queue = unique("confirms-plain");
    timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(!channel.status().confirm());
    let confirm = timed(channel.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        b"plain",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    // Not in confirm mode: the "confirmation" resolves immediately as NotRequested.
    let confirmation = timed(confirm).await.unwrap();
    assert!(matches!(confirmation, Confirmation::NotRequested));
    let got = timed(channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("message published without confirms");
    assert_eq!(got.delivery.data, b"plain");
    timed(connection.close(200, "bye".into())).await.unwrap();
}
