"""Consumer extensions: single active consumer (x-single-active-consumer) with failover,
consumer priorities (x-priority), and the delivery acknowledgement timeout
(consumer_timeout)."""

import pika
import pika.exceptions
import pytest

from conftest import PIER_CONFIG
from helpers import channel_closed, collect_deliveries, settle, wait_message_count


def consume(ch, q, got, tag=None, auto_ack=True, **kwargs):
    return ch.basic_consume(q, lambda c, m, p, b: got.append((tag, m, b)), auto_ack=auto_ack,
                            consumer_tag=tag, **kwargs)


def test_single_active_consumer_gets_everything(connection, names):
    q = names.queue("sac")
    ch1, ch2 = connection.channel(), connection.channel()
    ch1.queue_declare(q, arguments={"x-single-active-consumer": True})
    got = []
    consume(ch1, q, got, "first")
    consume(ch2, q, got, "second")
    for i in range(6):
        ch1.basic_publish("", q, b"m%d" % i)
    collect_deliveries(connection, got, 6)
    settle(connection, 0.2)
    assert {tag for tag, _, _ in got} == {"first"}
    assert [b for _, _, b in got] == [b"m%d" % i for i in range(6)]


def test_single_active_consumer_fails_over_on_cancel(connection, names):
    q = names.queue("sac")
    ch1, ch2, ch3 = connection.channel(), connection.channel(), connection.channel()
    ch1.queue_declare(q, arguments={"x-single-active-consumer": True})
    got = []
    consume(ch1, q, got, "first")
    consume(ch2, q, got, "second")
    consume(ch3, q, got, "third")
    ch1.basic_publish("", q, b"a")
    collect_deliveries(connection, got, 1)
    ch1.basic_cancel("first")
    ch1.basic_publish("", q, b"b")
    collect_deliveries(connection, got, 2)
    assert [(t, b) for t, _, b in got] == [("first", b"a"), ("second", b"b")]


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_single_active_consumer_fails_over_when_its_connection_dies(connection,
                                                                      make_connection, names):
    q = names.queue("sac")
    ch = connection.channel()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    doomed = make_connection()
    dch = doomed.channel()
    dch.basic_qos(prefetch_count=10)
    held = []
    dch.basic_consume(q, lambda c, m, p, b: held.append(b))  # never acks
    got = []
    consume(ch, q, got, "survivor")
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    collect_deliveries(doomed, held, 3)
    doomed.close()
    # The survivor takes over and gets the unacknowledged messages back, in order.
    collect_deliveries(connection, got, 3)
    assert [b for _, _, b in got] == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for _, m, _ in got)


def test_exclusive_consumer_on_single_active_consumer_queue_is_403(channel, names):
    q = names.queue("sac")
    channel.queue_declare(q, arguments={"x-single-active-consumer": True})
    with channel_closed(403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"):
        channel.basic_consume(q, lambda *a: None, exclusive=True)


@pytest.mark.parametrize("value,type_name", [("yes", "longstr"), (1, "signedint")])
def test_single_active_consumer_must_be_a_boolean(channel, names, value, type_name):
    q = names.queue("sac")
    with channel_closed(406) as info:
        channel.queue_declare(q, arguments={"x-single-active-consumer": value})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue '{q}' in "
        f"vhost '/': {{unacceptable_type,{type_name}}}")


def test_consumer_priority_prefers_higher_then_falls_back(connection, names):
    q = names.queue("cprio")
    high_ch, low_ch = connection.channel(), connection.channel()
    high_ch.queue_declare(q)
    high_ch.basic_qos(prefetch_count=2)
    got = []
    consume(low_ch, q, got, "low", arguments={"x-priority": 1})
    consume(high_ch, q, got, "high", auto_ack=False, arguments={"x-priority": 10})
    for i in range(5):
        low_ch.basic_publish("", q, b"m%d" % i)
    collect_deliveries(connection, got, 5)
    tags = [t for t, _, _ in got]
    # The high-priority consumer takes what its prefetch allows; the rest go to the other.
    assert tags.count("high") == 2 and tags.count("low") == 3
    assert [b for t, _, b in got if t == "high"] == [b"m0", b"m1"]


def test_consumer_priority_must_be_an_integer(channel, names):
    q = names.queue("cprio")
    channel.queue_declare(q)
    with channel_closed(406) as info:
        channel.basic_consume(q, lambda *a: None, arguments={"x-priority": "high"})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': "
        f"\"expected integer, got longstr\"")


# ---- consumer_timeout (needs a broker configured with a short timeout: Pier only) ----

@pytest.fixture
def short_timeout_broker(pier_factory):
    # Top-level keys go before the first [[table]].
    proc = pier_factory("consumer_timeout = 400\n" + PIER_CONFIG)
    return pika.ConnectionParameters(host="127.0.0.1", port=proc.amqp_port,
                                     credentials=pika.PlainCredentials("guest", "guest"),
                                     connection_attempts=1, socket_timeout=10)


@pytest.mark.pier_only
def test_unacked_delivery_past_consumer_timeout_closes_the_channel(short_timeout_broker):
    conn = pika.BlockingConnection(short_timeout_broker)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"slow")
        ch.basic_consume(q, lambda *a: None)  # never acks
        conn.call_later(10, ch.stop_consuming)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
            ch.start_consuming()
        assert excinfo.value.reply_code == 406
        channel_no = ch.channel_number
        assert excinfo.value.reply_text == (
            f"PRECONDITION_FAILED - delivery acknowledgement on channel {channel_no} timed out. "
            f"Timeout value used: 400 ms. This timeout value can be configured, see consumers "
            f"doc guide to learn more")
        # The delivery went back to the queue.
        other = conn.channel()
        wait_message_count(conn, q, 1)
        method, _, body = other.basic_get(q, auto_ack=True)
        assert body == b"slow" and method.redelivered
    finally:
        conn.close()


@pytest.mark.pier_only
def test_acking_in_time_keeps_the_channel_open(short_timeout_broker):
    conn = pika.BlockingConnection(short_timeout_broker)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        got = []
        ch.basic_consume(q, lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
        for i in range(3):
            ch.basic_publish("", q, b"m%d" % i)
            settle(conn, 0.3)
        settle(conn, 0.6)
        assert len(got) == 3 and ch.is_open
    finally:
        conn.close()
