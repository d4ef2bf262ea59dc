"""Redelivery: basic.recover, channel close and connection loss requeue
unacked messages with redelivered=True."""

import pytest

from helpers import collect_deliveries, connection_closed, drain, wait_message_count


def publish_n(ch, q, n):
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", q, str(i).encode())


def test_recover_requeue_redelivers_to_consumer(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_n(ch, q, 3)
    got = []
    ch.basic_consume(q, lambda _c, m, _p, b: got.append((m.delivery_tag, m.redelivered, b)))
    collect_deliveries(connection, got, 3)
    ch.basic_recover(requeue=True)
    collect_deliveries(connection, got, 6)
    assert got[:3] == [(1, False, b"0"), (2, False, b"1"), (3, False, b"2")]
    # redelivered with new delivery tags
    assert sorted(got[3:], key=lambda g: g[2]) == [(4, True, b"0"), (5, True, b"1"),
                                                   (6, True, b"2")]


def test_recover_without_requeue_is_not_implemented_540(connection):
    ch = connection.channel()
    with connection_closed(540, "NOT_IMPLEMENTED - requeue=false"):
        ch.basic_recover(requeue=False)


def test_channel_close_requeues_unacked(connection, names):
    q = names.queue()
    setup = connection.channel()
    setup.queue_declare(q)
    publish_n(setup, q, 3)
    consumer = connection.channel()
    got = []
    consumer.basic_consume(q, lambda _c, _m, _p, b: got.append(b))
    collect_deliveries(connection, got, 3)
    assert setup.queue_declare(q, passive=True).method.message_count == 0
    consumer.close()
    wait_message_count(connection, q, 3)
    again = drain(setup, q)
    assert [b for _m, _p, b in again] == [b"0", b"1", b"2"]
    assert all(m.redelivered for m, _p, _b in again)


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_connection_close_requeues_unacked(make_connection, connection, names):
    q = names.queue()
    setup = connection.channel()
    setup.queue_declare(q)
    publish_n(setup, q, 2)
    other = make_connection()
    ch = other.channel()
    assert ch.basic_get(q)[2] == b"0"
    assert ch.basic_get(q)[2] == b"1"
    other.close()
    wait_message_count(connection, q, 2)
    again = drain(setup, q)
    assert [(b, m.redelivered) for m, _p, b in again] == [(b"0", True), (b"1", True)]


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_connection_drop_requeues_unacked(raw, connection, names):
    q = names.queue()
    setup = connection.channel()
    setup.queue_declare(q)
    publish_n(setup, q, 1)
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    ok = conn.rpc(1, "basic.get", "basic.get-ok", queue=q)
    assert ok.body == b"0"
    conn.close()  # TCP close without connection.close
    wait_message_count(connection, q, 1)
    [(method, _p, body)] = drain(setup, q)
    assert body == b"0" and method.redelivered is True


def test_acked_messages_are_not_requeued_on_close(connection, names):
    q = names.queue()
    setup = connection.channel()
    setup.queue_declare(q)
    publish_n(setup, q, 3)
    ch = connection.channel()
    ch.basic_get(q)
    second = ch.basic_get(q)[0]
    ch.basic_get(q)
    ch.basic_ack(second.delivery_tag)
    ch.close()
    wait_message_count(connection, q, 2)
    assert [b for _m, _p, b in drain(setup, q)] == [b"0", b"2"]
