"""queue.delete (if-unused, if-empty, message counts) and queue.purge."""

from helpers import channel_closed, queue_exists, wait_message_count


def test_delete_returns_message_count(connection, names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", q, str(i).encode())
    ok = ch.queue_delete(q)
    assert ok.method.message_count == 4
    assert not queue_exists(connection, q)


def test_delete_of_missing_queue_is_ok(channel):
    # RabbitMQ: deleting a queue that does not exist succeeds (count 0).
    ok = channel.queue_delete("pier-test-never-declared-queue")
    assert ok.method.message_count == 0
    assert channel.is_open


def test_delete_if_empty_on_non_empty_queue_is_406(connection, names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    with channel_closed(406) as info:
        ch.queue_delete(q, if_empty=True)
    assert info["exc"].reply_text == f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"
    assert queue_exists(connection, q)


def test_delete_if_empty_on_empty_queue(connection, names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    assert ch.queue_delete(q, if_empty=True).method.message_count == 0
    assert not queue_exists(connection, q)


def test_delete_if_unused_with_consumer_is_406(connection, names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    ch2 = connection.channel()
    with channel_closed(406) as info:
        ch2.queue_delete(q, if_unused=True)
    assert info["exc"].reply_text == f"PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"
    assert queue_exists(connection, q)


def test_delete_if_unused_without_consumer(connection, names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    assert ch.queue_delete(q, if_unused=True).method.message_count == 1
    assert not queue_exists(connection, q)


def test_purge_returns_count(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    for i in range(5):
        channel.basic_publish("", q, str(i).encode())
    assert channel.queue_purge(q).method.message_count == 5
    assert channel.queue_purge(q).method.message_count == 0
    assert channel.queue_declare(q, passive=True).method.message_count == 0


def test_purge_does_not_touch_unacked_messages(connection, names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    method, _p, body = ch.basic_get(q)
    assert body == b"0"
    assert connection.channel().queue_purge(q).method.message_count == 2
    # the unacked message comes back when rejected
    ch.basic_reject(method.delivery_tag, requeue=True)
    wait_message_count(connection, q, 1)


def test_purge_missing_queue_is_404(channel):
    with channel_closed(404, "NOT_FOUND - no queue 'pier-test-no-such-queue' in vhost '/'"):
        channel.queue_purge("pier-test-no-such-queue")


def test_delete_queue_removes_bindings(connection, names):
    q = names.queue()
    x = names.exchange()
    ch = connection.channel()
    ch.exchange_declare(x, "fanout")
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    ch.queue_delete(q)
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish(x, "", b"x")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
