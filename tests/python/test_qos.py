"""basic.qos: per-consumer (global=false) and per-channel (global=true) prefetch."""

import pytest

from helpers import collect_deliveries, settle


def fill(connection, n, name=""):
    ch = connection.channel()
    q = ch.queue_declare(name, exclusive=not name).method.queue
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", q, str(i).encode())
    return q


def consume(ch, q, sink, auto_ack=False):
    return ch.basic_consume(q, lambda c, m, _p, b: sink.append((m.delivery_tag, b, q)),
                            auto_ack=auto_ack)


def test_prefetch_limits_unacked_per_consumer(connection):
    q = fill(connection, 10)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=2)
    got = []
    consume(ch, q, got)
    collect_deliveries(connection, got, 2)
    settle(connection, 0.4)
    assert [b for _t, b, _q in got] == [b"0", b"1"]
    ch.basic_ack(got[0][0])
    collect_deliveries(connection, got, 3)
    settle(connection, 0.3)
    assert len(got) == 3
    # ack multiple frees two slots
    ch.basic_ack(got[2][0], multiple=True)
    collect_deliveries(connection, got, 5)
    settle(connection, 0.3)
    assert [b for _t, b, _q in got] == [b"0", b"1", b"2", b"3", b"4"]


def test_per_consumer_prefetch_applies_to_each_consumer(connection):
    q1, q2 = fill(connection, 10), fill(connection, 10)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=2, global_qos=False)
    got = []
    consume(ch, q1, got)
    consume(ch, q2, got)
    collect_deliveries(connection, got, 4)
    settle(connection, 0.4)
    assert sorted((q, b) for _t, b, q in got) == sorted(
        [(q1, b"0"), (q1, b"1"), (q2, b"0"), (q2, b"1")])


def test_global_prefetch_is_shared_by_the_channel(connection):
    q1, q2 = fill(connection, 10), fill(connection, 10)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=3, global_qos=True)
    got = []
    consume(ch, q1, got)
    consume(ch, q2, got)
    collect_deliveries(connection, got, 3)
    settle(connection, 0.4)
    assert len(got) == 3
    ch.basic_ack(got[0][0])
    collect_deliveries(connection, got, 4)
    settle(connection, 0.3)
    assert len(got) == 4


def test_global_and_per_consumer_limits_combine(connection):
    q1, q2 = fill(connection, 10), fill(connection, 10)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=3, global_qos=True)
    ch.basic_qos(prefetch_count=1, global_qos=False)
    got = []
    consume(ch, q1, got)
    consume(ch, q2, got)
    collect_deliveries(connection, got, 2)
    settle(connection, 0.4)
    # each consumer is limited to 1, which is below the channel limit of 3
    assert sorted(q for _t, _b, q in got) == sorted([q1, q2])


def test_prefetch_zero_is_unlimited(connection):
    q = fill(connection, 20)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=0)
    got = []
    consume(ch, q, got)
    collect_deliveries(connection, got, 20)


def test_raising_prefetch_releases_more_messages(connection):
    q = fill(connection, 10)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1, global_qos=True)
    got = []
    consume(ch, q, got)
    collect_deliveries(connection, got, 1)
    settle(connection, 0.3)
    assert len(got) == 1
    ch.basic_qos(prefetch_count=4, global_qos=True)
    collect_deliveries(connection, got, 4)
    settle(connection, 0.3)
    assert len(got) == 4


def test_no_ack_consumer_ignores_prefetch(connection):
    q = fill(connection, 10)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1)
    got = []
    consume(ch, q, got, auto_ack=True)
    collect_deliveries(connection, got, 10)


def test_basic_get_ignores_prefetch(connection):
    q = fill(connection, 3)
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1, global_qos=True)
    bodies = [ch.basic_get(q)[2] for _ in range(3)]
    assert bodies == [b"0", b"1", b"2"]


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_prefetch_spreads_messages_across_consumers(connection, make_connection, names):
    """Fair dispatch: with prefetch 1, a consumer that does not ack gets one
    message; everything else goes to the one that acks."""
    q = fill(connection, 10, names.queue())
    slow_conn = make_connection()
    slow = slow_conn.channel()
    slow.basic_qos(prefetch_count=1)
    slow_got = []
    consume(slow, q, slow_got)
    collect_deliveries(slow_conn, slow_got, 1)
    fast = connection.channel()
    fast.basic_qos(prefetch_count=1)
    fast_got = []
    fast.basic_consume(q, lambda c, m, _p, b: (fast_got.append(b),
                                               c.basic_ack(m.delivery_tag)))
    collect_deliveries(connection, fast_got, 9)
    settle(slow_conn, 0.2)
    assert len(slow_got) == 1


def test_qos_prefetch_size_is_not_implemented_540(connection):
    import pika.exceptions

    ch = connection.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as excinfo:
        ch.basic_qos(prefetch_size=10)
    assert excinfo.value.reply_code == 540
    assert excinfo.value.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (10)"
