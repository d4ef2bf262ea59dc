"""Streams over AMQP 0-9-1 (x-queue-type: stream): RabbitMQ's declaration rules and texts,
consuming with x-stream-offset, the x-stream-offset header, credit from acks, and the
refusals (basic.get, purge, no prefetch, no-ack). Validated against RabbitMQ 3.10.8
(PIER_TEST_AMQP_URL) except where marked pier_only."""

import datetime

import pika
import pytest

from helpers import channel_closed, connection_closed

S = {"x-queue-type": "stream"}


def declare(channel, names, **args):
    q = names.queue("stream")
    channel.queue_declare(q, durable=True, arguments={**S, **args})
    return q


def publish(channel, q, n, **props):
    channel.confirm_delivery()
    for i in range(n):
        channel.basic_publish("", q, f"m{i}".encode(),
                              pika.BasicProperties(headers={"h": i}, **props))


def consume(connection, q, offset, expect, prefetch=10):
    ch = connection.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got = []

    def on_message(c, m, p, b):
        got.append((p.headers["x-stream-offset"], b.decode(), p))
        c.basic_ack(m.delivery_tag)

    args = {} if offset is None else {"x-stream-offset": offset}
    ch.basic_consume(q, on_message, arguments=args)
    for _ in range(50):
        connection.process_data_events(time_limit=0.1)
        if len(got) >= expect:
            break
    connection.process_data_events(time_limit=0.2)
    ch.close()
    return got


def test_declare_and_redeclare(channel, names):
    q = declare(channel, names, **{"x-max-age": "10D", "x-max-length-bytes": 10_000_000})
    ok = channel.queue_declare(q, durable=True,
                               arguments={**S, "x-max-age": "10D", "x-max-length-bytes": 10_000_000})
    assert ok.method.message_count == 0
    with channel_closed(406) as info:
        channel.queue_declare(q, durable=True, arguments={**S, "x-max-age": "1h",
                                                          "x-max-length-bytes": 10_000_000})
    assert info["exc"].reply_text.startswith(
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue '{q}' in vhost '/'")


@pytest.mark.parametrize("prop,kwargs", [
    ("non-durable", {"durable": False}),
    ("exclusive-owner", {"durable": True, "exclusive": True}),
    ("auto-delete", {"durable": True, "auto_delete": True}),
])
def test_streams_are_durable_shared_and_kept(channel, names, prop, kwargs):
    q = names.queue("stream")
    with channel_closed(406) as info:
        channel.queue_declare(q, arguments=S, **kwargs)
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{q}' in vhost '/'")


@pytest.mark.parametrize("arg,value", [
    ("x-max-length", 10), ("x-overflow", "reject-publish"), ("x-message-ttl", 10),
    ("x-dead-letter-exchange", "x"), ("x-expires", 1000), ("x-max-priority", 5),
    ("x-single-active-consumer", True),
])
def test_arguments_streams_refuse(channel, names, arg, value):
    q = names.queue("stream")
    with channel_closed(406) as info:
        channel.queue_declare(q, durable=True, arguments={**S, arg: value})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/' "
        f"of queue type rabbit_stream_queue")


def test_bad_max_age_and_segment_size(channel, connection, names):
    q = names.queue("stream")
    with channel_closed(406) as info:
        channel.queue_declare(q, durable=True, arguments={**S, "x-max-age": "10x"})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-max-age' for queue '{q}' in vhost '/': "
        f"invalid_max_age")
    ch = connection.channel()
    with channel_closed(406) as info:
        ch.queue_declare(q, durable=True,
                         arguments={**S, "x-stream-max-segment-size-bytes": 4_000_000_000})
    assert info["exc"].reply_text == (
        "PRECONDITION_FAILED - Exceeded max value for x-stream-max-segment-size-bytes")


def test_publish_and_consume_from_every_offset_spec(connection, names):
    ch = connection.channel()
    q = declare(ch, names)
    publish(ch, q, 5, content_type="text/plain", message_id="mid", delivery_mode=2)
    first = consume(connection, q, "first", 5)
    assert [(o, b) for o, b, _ in first] == [(i, f"m{i}") for i in range(5)]
    p = first[0][2]
    assert p.content_type == "text/plain" and p.message_id == "mid" and p.delivery_mode == 2
    assert p.headers["h"] == 0
    assert [(o, b) for o, b, _ in consume(connection, q, 3, 2)] == [(3, "m3"), (4, "m4")]
    assert consume(connection, q, "last", 1)[-1][:2] == (4, "m4")
    assert len(consume(connection, q, datetime.datetime(2020, 1, 1), 5)) == 5
    assert len(consume(connection, q, "1h", 5)) == 5
    assert consume(connection, q, "next", 0) == []
    assert consume(connection, q, None, 0) == []


def test_a_consumer_at_next_gets_new_messages(connection, names):
    ch = connection.channel()
    q = declare(ch, names)
    publish(ch, q, 2)
    cch = connection.channel()
    cch.basic_qos(prefetch_count=5)
    got = []
    cch.basic_consume(q, lambda c, m, p, b: (got.append(p.headers["x-stream-offset"]),
                                             c.basic_ack(m.delivery_tag)))
    connection.process_data_events(time_limit=0.3)
    assert got == []
    publish(ch, q, 3)
    for _ in range(50):
        connection.process_data_events(time_limit=0.1)
        if len(got) == 3:
            break
    assert got == [2, 3, 4]


def test_prefetch_is_credit_returned_by_acks(connection, names):
    ch = connection.channel()
    q = declare(ch, names)
    publish(ch, q, 6)
    cch = connection.channel()
    cch.basic_qos(prefetch_count=2)
    tags = []
    cch.basic_consume(q, lambda c, m, p, b: tags.append(m.delivery_tag),
                      arguments={"x-stream-offset": "first"})
    connection.process_data_events(time_limit=0.5)
    assert len(tags) == 2
    cch.basic_ack(tags[-1], multiple=True)
    connection.process_data_events(time_limit=0.5)
    assert len(tags) == 4
    cch.basic_ack(tags[-1], multiple=True)
    connection.process_data_events(time_limit=0.5)
    assert len(tags) == 6


def test_nack_and_reject_are_refused(connection, names, make_connection):
    ch = connection.channel()
    q = declare(ch, names)
    publish(ch, q, 2)
    c = make_connection()
    cch = c.channel()
    cch.basic_qos(prefetch_count=2)
    tags = []
    cch.basic_consume(q, lambda c_, m, p, b: tags.append(m.delivery_tag),
                      arguments={"x-stream-offset": "first"})
    c.process_data_events(time_limit=0.5)
    assert len(tags) == 2
    with connection_closed(540) as info:
        cch.basic_nack(tags[-1], multiple=True, requeue=True)
        c.process_data_events(time_limit=1)
    assert info["exc"].reply_text == (
        f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues "
        f"queue '{q}' in vhost '/'")


def test_refusals(connection, names, make_connection):
    ch = connection.channel()
    q = declare(ch, names)
    rs = f"queue '{q}' in vhost '/'"
    c = make_connection()
    with connection_closed(540) as info:
        c.channel().basic_get(q)
    assert info["exc"].reply_text == f"NOT_IMPLEMENTED - basic.get not supported by stream queues {rs}"
    c = make_connection()
    with connection_closed(540) as info:
        c.channel().queue_purge(q)
    assert info["exc"].reply_text == f"NOT_IMPLEMENTED - queue.purge not supported by stream queues {rs}"
    c = make_connection()
    with channel_closed(406) as info:
        c.channel().basic_consume(q, lambda *a: None)
    assert info["exc"].reply_text == f"PRECONDITION_FAILED - consumer prefetch count is not set for '{rs}'"
    c = make_connection()
    cch = c.channel()
    cch.basic_qos(prefetch_count=10)
    with connection_closed(540) as info:
        cch.basic_consume(q, lambda *a: None, auto_ack=True)
    assert info["exc"].reply_text == (
        f"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues {rs}")
