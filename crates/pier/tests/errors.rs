//! Protocol errors: the broker closes the channel (soft errors) or refuses the
//! connection (hard errors) with the reply codes and texts RabbitMQ uses.
//!
//! lapin surfaces a broker's channel.close / connection.close as
//! `lapin::ErrorKind::ProtocolError(AMQPError)`; `AMQPError::get_id()` is the
//! reply code and `get_message()` the reply text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_amqp_error, consumer_error, is_hard_error, timed, unique, Broker};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

/// A consumer on a throw-away exclusive queue: its stream reports the error
/// that closes the channel, which is how errors of methods without a reply
/// (basic.ack, basic.publish, ...) become observable.
async fn error_watch(channel: &Channel) -> Consumer {
    let queue = unique("errors-watch");
    timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap()
}

/// The connection survives a channel error: a new channel works.
async fn assert_connection_usable(connection: &Connection) {
    let channel = timed(connection.create_channel()).await.unwrap();
    let queue = timed(channel.queue_declare(
        "".into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(
        queue.name().as_str().starts_with("amq.gen-"),
        "{}",
        queue.name()
    );
    timed(channel.close(200, "ok".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_queue_is_404() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let queue = unique("errors-missing");
    let error =
        timed(channel.queue_declare(queue.as_str().into(), passive(), FieldTable::default()))
            .await
            .unwrap_err();
    assert_amqp_error(&error, 404, "NOT_FOUND");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert_eq!(text, format!("NOT_FOUND - no queue '{queue}' in vhost '/'"));
    assert!(!is_hard_error(&error));
    assert!(!channel.status().connected(), "the channel must be closed");

    // Passive declare of a missing exchange: same code, exchange wording.
    let channel = timed(connection.create_channel()).await.unwrap();
    let exchange = unique("errors-missing-x");
    let error = timed(channel.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_amqp_error(&error, 404, "NOT_FOUND");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert_eq!(
        text,
        format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'")
    );

    assert_connection_usable(&connection).await;
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_consume_on_missing_queue_are_404() {
    let broker = Broker::start();
    let connection = broker.connect().await;
    let queue = unique("errors-missing-get");

    let channel = timed(connection.create_channel()).await.unwrap();
    let error = timed(channel.basic_get(queue.as_str().into(), BasicGetOptions::default()))
        .await
        .unwrap_err();
    assert_amqp_error(&error, 404, "NOT_FOUND");

    let channel = timed(connection.create_channel()).await.unwrap();
    let error = timed(channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_amqp_error(&error, 404, "NOT_FOUND");
    assert_connection_usable(&connection).await;
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_missing_exchange_is_404() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let mut watch = error_watch(&channel).await;
    let exchange = unique("errors-no-exchange");
    // basic.publish has no reply: the error arrives as a channel.close.
    let _ = timed(channel.basic_publish(
        exchange.as_str().into(),
        "key".into(),
        BasicPublishOptions::default(),
        b"lost",
        BasicProperties::default(),
    ))
    .await;
    let error = consumer_error(&mut watch).await;
    assert_amqp_error(&error, 404, "NOT_FOUND");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert_eq!(
        text,
        format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'")
    );

    // In confirm mode the pending confirm fails with the channel error.
    let channel = timed(connection.create_channel()).await.unwrap();
    timed(channel.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let confirm = timed(channel.basic_publish(
        exchange.as_str().into(),
        "key".into(),
        BasicPublishOptions::default(),
        b"lost",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let error = timed(confirm).await.unwrap_err();
    assert_amqp_error(&error, 404, "NOT_FOUND");

    assert_connection_usable(&connection).await;
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_properties_is_406() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let queue = unique("errors-redeclare");
    timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // An identical redeclare is fine.
    timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let error = timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_amqp_error(&error, 406, "PRECONDITION_FAILED");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert_eq!(
        text,
        format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{queue}' in vhost '/': received 'true' but current is 'false'"
        )
    );

    // Exchange type mismatch.
    let channel = timed(connection.create_channel()).await.unwrap();
    let exchange = unique("errors-redeclare-x");
    timed(channel.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let error = timed(channel.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_amqp_error(&error, 406, "PRECONDITION_FAILED");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert_eq!(
        text,
        format!(
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{exchange}' in vhost '/': received 'fanout' but current is 'direct'"
        )
    );

    let channel = timed(connection.create_channel()).await.unwrap();
    timed(channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    timed(channel.queue_delete(queue.as_str().into(), Default::default()))
        .await
        .unwrap();
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_unknown_delivery_tag_is_406() {
    let broker = Broker::start();
    let (connection, channel) = broker.connect_channel().await;
    let mut watch = error_watch(&channel).await;
    timed(channel.basic_ack(999, BasicAckOptions::default()))
        .await
        .unwrap();
    let error = consumer_error(&mut watch).await;
    assert_amqp_error(&error, 406, "PRECONDITION_FAILED");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert_eq!(text, "PRECONDITION_FAILED - unknown delivery tag 999");

    // Acking the same delivery twice is also an unknown tag.
    let channel = timed(connection.create_channel()).await.unwrap();
    let queue = unique("errors-double-ack");
    timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut watch = timed(channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timed(channel.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        b"once",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let delivery = common::next_delivery(&mut watch).await;
    timed(channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    timed(channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    let error = consumer_error(&mut watch).await;
    assert_amqp_error(&error, 406, "PRECONDITION_FAILED");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert_eq!(
        text,
        format!(
            "PRECONDITION_FAILED - unknown delivery tag {}",
            delivery.delivery_tag
        )
    );

    assert_connection_usable(&connection).await;
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_of_another_connection_is_405() {
    let broker = Broker::start();
    let (owner, owner_channel) = broker.connect_channel().await;
    let queue = unique("errors-exclusive");
    timed(owner_channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();

    let other = broker.connect().await;
    let expected_text = format!(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '/'"
    );

    let channel = timed(other.create_channel()).await.unwrap();
    let error = timed(channel.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_amqp_error(&error, 405, "RESOURCE_LOCKED");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert!(text.starts_with(&expected_text), "{text}");

    let channel = timed(other.create_channel()).await.unwrap();
    let error =
        timed(channel.queue_declare(queue.as_str().into(), passive(), FieldTable::default()))
            .await
            .unwrap_err();
    assert_amqp_error(&error, 405, "RESOURCE_LOCKED");

    let channel = timed(other.create_channel()).await.unwrap();
    let error = timed(channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_amqp_error(&error, 405, "RESOURCE_LOCKED");

    let channel = timed(other.create_channel()).await.unwrap();
    let error = timed(channel.basic_get(queue.as_str().into(), BasicGetOptions::default()))
        .await
        .unwrap_err();
    assert_amqp_error(&error, 405, "RESOURCE_LOCKED");

    // The owner is unaffected, and once it disconnects the queue is gone.
    timed(owner_channel.queue_declare(queue.as_str().into(), passive(), FieldTable::default()))
        .await
        .unwrap();
    timed(owner.close(200, "bye".into())).await.unwrap();
    let channel = timed(other.create_channel()).await.unwrap();
    let error =
        timed(channel.queue_declare(queue.as_str().into(), passive(), FieldTable::default()))
            .await
            .unwrap_err();
    assert_amqp_error(&error, 404, "NOT_FOUND");
    timed(other.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_403_access_refused() {
    let broker = Broker::start();
    let mut uri = broker.uri();
    uri.authority.userinfo.password = "definitely-not-the-password".into();
    let error = timed(Connection::connect_uri(
        uri,
        ConnectionProperties::default(),
    ))
    .await
    .unwrap_err();
    // Sent as connection.close, although lapin classifies 403 as a "soft"
    // code (the spec lists access-refused among channel errors).
    assert_amqp_error(&error, 403, "ACCESS_REFUSED");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );

    let mut uri = broker.uri();
    uri.authority.userinfo.username = unique("nobody");
    let error = timed(Connection::connect_uri(
        uri,
        ConnectionProperties::default(),
    ))
    .await
    .unwrap_err();
    assert_amqp_error(&error, 403, "ACCESS_REFUSED");

    // The broker still accepts good credentials afterwards.
    let connection = broker.connect().await;
    timed(connection.close(200, "bye".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_530_not_allowed() {
    let broker = Broker::start();
    let mut uri = broker.uri();
    let vhost = unique("no-such-vhost");
    uri.vhost = vhost.clone();
    let error = timed(Connection::connect_uri(
        uri,
        ConnectionProperties::default(),
    ))
    .await
    .unwrap_err();
    assert!(is_hard_error(&error), "{error:?}");
    assert_amqp_error(&error, 530, "NOT_ALLOWED");
    let (_, text) = common::amqp_error(&error).unwrap();
    assert_eq!(text, format!("NOT_ALLOWED - vhost {vhost} not found"));
}
