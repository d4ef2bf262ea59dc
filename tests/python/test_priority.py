"""Priority queues (x-max-priority): highest priority first, FIFO within a priority, priorities
above the maximum count as the maximum, requeue keeps a message's place."""

import pika
import pytest

from helpers import channel_closed, collect_deliveries, drain


def publish(ch, q, body, priority=None):
    ch.basic_publish("", q, body, pika.BasicProperties(priority=priority))


def bodies(ch, q):
    return [b for _, _, b in drain(ch, q)]


def test_highest_priority_first_fifo_within(channel, names):
    q = names.queue("prio")
    channel.queue_declare(q, arguments={"x-max-priority": 10})
    for body, p in [(b"low-1", 1), (b"high-1", 8), (b"none", None), (b"low-2", 1),
                    (b"high-2", 8), (b"mid", 5)]:
        publish(channel, q, body, p)
    assert bodies(channel, q) == [b"high-1", b"high-2", b"mid", b"low-1", b"low-2", b"none"]


def test_priority_above_maximum_counts_as_maximum(channel, names):
    q = names.queue("prio")
    channel.queue_declare(q, arguments={"x-max-priority": 3})
    publish(channel, q, b"a", 3)
    publish(channel, q, b"b", 200)
    publish(channel, q, b"c", 3)
    got = drain(channel, q)
    assert [b for _, _, b in got] == [b"a", b"b", b"c"]
    # The property itself is delivered as published.
    assert got[1][1].priority == 200


def test_consumer_receives_by_priority(connection, names):
    ch = connection.channel()
    q = names.queue("prio")
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    for body, p in [(b"p1", 1), (b"p5", 5), (b"p3", 3)]:
        publish(ch, q, body, p)
    got = []
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
    collect_deliveries(connection, got, 3)
    assert got == [b"p5", b"p3", b"p1"]


def test_requeue_keeps_position_within_priority(channel, names):
    q = names.queue("prio")
    channel.queue_declare(q, arguments={"x-max-priority": 5})
    publish(channel, q, b"h1", 5)
    publish(channel, q, b"h2", 5)
    publish(channel, q, b"l1", 1)
    m1, _, _ = channel.basic_get(q)
    m2, _, _ = channel.basic_get(q)
    publish(channel, q, b"h3", 5)
    channel.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
    got = drain(channel, q)
    assert [b for _, _, b in got] == [b"h1", b"h2", b"h3", b"l1"]
    assert [m.redelivered for m, _, _ in got] == [True, True, False, False]


def test_plain_queue_ignores_priorities(channel, names):
    q = names.queue("prio")
    channel.queue_declare(q)
    publish(channel, q, b"a", 1)
    publish(channel, q, b"b", 9)
    assert bodies(channel, q) == [b"a", b"b"]


def test_max_priority_zero_is_accepted(channel, names):
    q = names.queue("prio")
    channel.queue_declare(q, arguments={"x-max-priority": 0})
    publish(channel, q, b"a", 0)
    publish(channel, q, b"b", 7)
    assert bodies(channel, q) == [b"a", b"b"]


@pytest.mark.parametrize("value,reason", [
    (256, "{max_value_exceeded,256}"),
    (-1, "{value_negative,-1}"),
    ("a", '"expected integer, got longstr"'),
])
def test_invalid_max_priority_is_406(channel, names, value, reason):
    q = names.queue("prio")
    with channel_closed(406) as info:
        channel.queue_declare(q, arguments={"x-max-priority": value})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/': "
        f"{reason}")


def test_max_priority_is_compared_on_redeclare(channel, names):
    q = names.queue("prio")
    channel.queue_declare(q, arguments={"x-max-priority": 5})
    with channel_closed(406, f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for "
                             f"queue '{q}' in vhost '/': received '6' but current is '5'"):
        channel.queue_declare(q, arguments={"x-max-priority": 6})
