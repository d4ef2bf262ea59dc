"""basic.ack / basic.nack / basic.reject, including multiple and error cases."""

import pytest

from helpers import channel_closed, collect_deliveries, drain, wait_message_count


@pytest.fixture
def loaded(connection):
    """A channel with 5 messages delivered to it (unacked) via basic.get."""
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(5)]
    assert tags == [1, 2, 3, 4, 5]
    return ch, q


def ready(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def drain_after_settle(ch, q, expected):
    """ack/nack/reject have no reply; requeueing is asynchronous in RabbitMQ,
    so wait until ``expected`` messages are ready before draining."""
    wait_message_count(ch.connection, q, expected)
    return drain(ch, q)


def test_ack_single(loaded):
    ch, q = loaded
    ch.basic_ack(2)
    ch.basic_nack(0, multiple=True, requeue=True)  # give back the rest
    assert sorted(b for _m, _p, b in drain_after_settle(ch, q, 4)) == [b"0", b"2", b"3", b"4"]


def test_ack_multiple(loaded):
    ch, q = loaded
    ch.basic_ack(3, multiple=True)
    ch.basic_nack(0, multiple=True, requeue=True)
    assert [b for _m, _p, b in drain_after_settle(ch, q, 2)] == [b"3", b"4"]


def test_ack_zero_multiple_acks_everything(loaded):
    ch, q = loaded
    ch.basic_ack(0, multiple=True)
    ch.basic_nack(0, multiple=True, requeue=True)
    assert drain(ch, q) == []


def test_nack_requeue_false_drops(loaded):
    ch, q = loaded
    ch.basic_nack(1, requeue=False)
    ch.basic_nack(3, multiple=True, requeue=False)
    ch.basic_nack(5, requeue=True)
    got = drain_after_settle(ch, q, 1)
    assert [b for _m, _p, b in got] == [b"4"]
    assert got[0][0].redelivered is True
    assert ready(ch, q) == 0


def test_nack_multiple_requeue_keeps_order(loaded):
    ch, q = loaded
    ch.basic_nack(5, multiple=True, requeue=True)
    got = drain_after_settle(ch, q, 5)
    assert [b for _m, _p, b in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert all(m.redelivered for m, _p, _b in got)


def test_reject_requeue_and_drop(loaded):
    ch, q = loaded
    ch.basic_reject(1, requeue=True)
    ch.basic_reject(2, requeue=False)
    ch.basic_ack(5, multiple=True)
    got = drain_after_settle(ch, q, 1)
    assert [(b, m.redelivered) for m, _p, b in got] == [(b"0", True)]


def test_requeued_message_goes_back_to_the_head(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    first = ch.basic_get(q)[0]
    ch.basic_reject(first.delivery_tag, requeue=True)
    got = drain_after_settle(ch, q, 3)
    assert [b for _m, _p, b in got] == [b"0", b"1", b"2"]
    assert [m.redelivered for m, _p, _b in got] == [True, False, False]


@pytest.mark.parametrize("method", ["ack", "nack", "reject", "ack_multiple"])
def test_unknown_delivery_tag_is_406(connection, method):
    ch = connection.channel()
    {
        "ack": lambda: ch.basic_ack(42),
        "nack": lambda: ch.basic_nack(42),
        "reject": lambda: ch.basic_reject(42),
        "ack_multiple": lambda: ch.basic_ack(42, multiple=True),
    }[method]()
    # ack has no reply: the channel.close arrives before the next reply
    with channel_closed(406) as info:
        ch.queue_declare("", exclusive=True)
    assert info["exc"].reply_text == "PRECONDITION_FAILED - unknown delivery tag 42"
    assert connection.is_open


def test_ack_zero_single_is_406(connection):
    ch = connection.channel()
    ch.basic_ack(0)
    with channel_closed(406, "PRECONDITION_FAILED - unknown delivery tag 0"):
        ch.queue_declare("", exclusive=True)


def test_ack_zero_multiple_with_nothing_outstanding_is_ok(channel):
    channel.basic_ack(0, multiple=True)
    assert channel.queue_declare("", exclusive=True).method.queue


def test_double_ack_is_406(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    tag = ch.basic_get(q)[0].delivery_tag
    ch.basic_ack(tag)
    ch.basic_ack(tag)
    with channel_closed(406, f"PRECONDITION_FAILED - unknown delivery tag {tag}"):
        ch.queue_declare("", exclusive=True)


def test_ack_of_auto_acked_delivery_is_406(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    tag = ch.basic_get(q, auto_ack=True)[0].delivery_tag
    ch.basic_ack(tag)
    with channel_closed(406, f"PRECONDITION_FAILED - unknown delivery tag {tag}"):
        ch.queue_declare("", exclusive=True)


def test_ack_on_wrong_channel_is_406(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    tag = ch.basic_get(q)[0].delivery_tag
    other = connection.channel()
    other.basic_ack(tag)
    with channel_closed(406, f"PRECONDITION_FAILED - unknown delivery tag {tag}"):
        other.queue_declare("", exclusive=True)
    # the original channel still holds the message and can ack it
    ch.basic_ack(tag)
    assert ready(ch, q) == 0


def test_consumer_manual_ack(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    got = []
    ch.basic_consume(q, lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
    collect_deliveries(connection, got, 3)
    assert got == [b"0", b"1", b"2"]
    ch.close()  # unacked messages would be requeued now
    assert ready(connection.channel(), q) == 0
