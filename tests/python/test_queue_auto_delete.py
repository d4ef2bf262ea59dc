"""Auto-delete queues go away when their last consumer is cancelled."""

import pytest

from helpers import channel_closed, queue_exists, wait_until


def test_auto_delete_queue_deleted_when_last_consumer_cancels(connection, names):
    q = names.queue("ad")
    ch = connection.channel()
    ch.queue_declare(q, auto_delete=True)
    tag1 = ch.basic_consume(q, lambda *a: None)
    tag2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(tag1)
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.consumer_count == 1
    ch.basic_cancel(tag2)
    wait_until(lambda: not queue_exists(connection, q), timeout=5,
               message="auto-delete queue to be deleted")


def test_auto_delete_queue_without_consumers_stays(connection, names):
    q = names.queue("ad")
    ch = connection.channel()
    ch.queue_declare(q, auto_delete=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    assert queue_exists(connection, q)


def test_auto_delete_queue_deleted_when_consumer_channel_closes(connection, names):
    q = names.queue("ad")
    connection.channel().queue_declare(q, auto_delete=True)
    consumer = connection.channel()
    consumer.basic_consume(q, lambda *a: None)
    consumer.close()
    wait_until(lambda: not queue_exists(connection, q), timeout=5,
               message="auto-delete queue to be deleted")


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_auto_delete_queue_deleted_when_consumer_connection_closes(
        make_connection, connection, names):
    q = names.queue("ad")
    connection.channel().queue_declare(q, auto_delete=True)
    other = make_connection()
    other.channel().basic_consume(q, lambda *a: None)
    assert connection.channel().queue_declare(q, passive=True).method.consumer_count == 1
    other.close()
    wait_until(lambda: not queue_exists(connection, q), timeout=5,
               message="auto-delete queue to be deleted")


def test_auto_delete_queue_not_deleted_by_basic_get(connection, names):
    q = names.queue("ad")
    ch = connection.channel()
    ch.queue_declare(q, auto_delete=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    assert ch.basic_get(q, auto_ack=True)[2] == b"x"
    assert ch.basic_get(q, auto_ack=True)[0] is None
    assert queue_exists(connection, q)


def test_consume_after_auto_delete_is_404(connection, names):
    q = names.queue("ad")
    ch = connection.channel()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_cancel(ch.basic_consume(q, lambda *a: None))
    wait_until(lambda: not queue_exists(connection, q), timeout=5,
               message="auto-delete queue to be deleted")
    ch = connection.channel()
    with channel_closed(404, f"NOT_FOUND - no queue '{q}' in vhost '/'"):
        ch.basic_consume(q, lambda *a: None)
