"""queue.declare: server-named queues, passive declares, equivalence checks,
counts in declare-ok, reserved names."""

import pika
import pytest

from helpers import channel_closed


def test_server_named_queue(channel):
    ok = channel.queue_declare("", exclusive=True)
    assert ok.method.queue.startswith("amq.gen-")
    assert len(ok.method.queue) > len("amq.gen-")
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0
    other = channel.queue_declare("", exclusive=True)
    assert other.method.queue != ok.method.queue


def test_server_named_queue_is_usable(channel):
    name = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    channel.basic_publish("", name, b"hello")
    method, _props, body = channel.basic_get(name, auto_ack=True)
    assert body == b"hello"
    assert method.routing_key == name
    assert method.exchange == ""


def test_declare_returns_name_and_is_idempotent(channel, names):
    q = names.queue()
    ok = channel.queue_declare(q, durable=True)
    assert ok.method.queue == q
    again = channel.queue_declare(q, durable=True)
    assert again.method.queue == q


def test_passive_declare_of_missing_queue_closes_channel(connection, channel):
    with channel_closed(404, "NOT_FOUND - no queue 'pier-test-no-such-queue' in vhost '/'"):
        channel.queue_declare("pier-test-no-such-queue", passive=True)
    assert channel.is_closed
    # the connection survives a channel error
    assert connection.is_open
    assert connection.channel().queue_declare("", exclusive=True).method.queue


def test_passive_declare_of_existing_queue_reports_counts(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish("", q, str(i).encode())
    ok = channel.queue_declare(q, passive=True)
    assert (ok.method.queue, ok.method.message_count, ok.method.consumer_count) == (q, 3, 0)
    # passive ignores the other flags: no equivalence check
    ok = channel.queue_declare(q, passive=True, durable=True, auto_delete=True)
    assert ok.method.message_count == 3


def test_declare_ok_counts(connection, channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    for i in range(5):
        channel.basic_publish("", q, str(i).encode())
    ok = channel.queue_declare(q)
    assert ok.method.message_count == 5
    assert ok.method.consumer_count == 0
    consumer_ch = connection.channel()
    consumer_ch.basic_qos(prefetch_count=2)
    consumer_ch.basic_consume(q, lambda *a: None)
    consumer_ch.basic_consume(q, lambda *a: None)
    ok = channel.queue_declare(q)
    # message_count counts ready messages only: 2 consumers x prefetch 2 are out
    assert ok.method.consumer_count == 2
    assert ok.method.message_count == 1


def test_passive_declare_of_empty_name_is_404(channel):
    with channel_closed(404, "NOT_FOUND - no queue '' in vhost '/'"):
        channel.queue_declare("", passive=True)


@pytest.mark.parametrize("first,second,arg,received,current", [
    ({"durable": False}, {"durable": True}, "durable", "true", "false"),
    ({"durable": True}, {"durable": False}, "durable", "false", "true"),
    ({"auto_delete": True}, {"auto_delete": False}, "auto_delete", "false", "true"),
])
def test_redeclare_with_different_flags_is_406(connection, names, first, second, arg,
                                               received, current):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q, **first)
    with channel_closed(406) as info:
        ch.queue_declare(q, **second)
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{q}' in vhost '/': "
        f"received '{received}' but current is '{current}'")
    # the queue is unchanged
    assert connection.channel().queue_declare(q, **first).method.queue == q


def test_redeclare_with_different_argument_is_406(channel, names):
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-length": 10})
    with channel_closed(406) as info:
        channel.queue_declare(q, arguments={"x-max-length": 5})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{q}' in "
        f"vhost '/': received '5' but current is '10'")


def test_redeclare_adding_argument_is_406(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    with channel_closed(406, f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' "
                             f"for queue '{q}' in vhost '/'"):
        channel.queue_declare(q, arguments={"x-max-length": 5})


def test_redeclare_with_same_arguments_is_ok(channel, names):
    q = names.queue()
    args = {"x-max-length": 10, "x-message-ttl": 60000}
    channel.queue_declare(q, durable=True, arguments=args)
    assert channel.queue_declare(q, durable=True, arguments=dict(args)).method.queue == q


def test_unknown_arguments_are_not_compared(channel, names):
    # RabbitMQ only checks equivalence of the x-arguments it knows.
    q = names.queue()
    channel.queue_declare(q, arguments={"x-pier-test-unknown": 1})
    ok = channel.queue_declare(q, arguments={"x-pier-test-unknown": 2})
    assert ok.method.queue == q


def test_invalid_argument_type_is_406(channel, names):
    q = names.queue()
    with channel_closed(406, f"PRECONDITION_FAILED - invalid arg 'x-max-length' for "
                             f"queue '{q}' in vhost '/'"):
        channel.queue_declare(q, arguments={"x-max-length": "abc"})


@pytest.mark.parametrize("value,reason", [
    (3, "\"unsupported queue version '3'\""),
    (0, "\"unsupported queue version '0'\""),
    (-1, "{value_negative,-1}"),
    ("2", "\"expected integer, got longstr\""),
])
def test_bad_queue_version_is_406(connection, names, value, reason):
    """RabbitMQ's check_queue_version: classic queue storage versions 1 and 2 only."""
    q = names.queue()
    with channel_closed(406, f"PRECONDITION_FAILED - invalid arg 'x-queue-version' for "
                             f"queue '{q}' in vhost '/': {reason}") as info:
        connection.channel().queue_declare(q, arguments={"x-queue-version": value})
    assert info["exc"].reply_text.endswith(reason)


@pytest.mark.parametrize("version", [1, 2])
def test_queue_versions_1_and_2_are_accepted(channel, names, version):
    q = names.queue()
    channel.queue_declare(q, arguments={"x-queue-version": version})


@pytest.mark.parametrize("name", ["amq.foo", "amq.gen-foo"])
def test_reserved_queue_name_is_403(channel, name):
    with channel_closed(403, f"ACCESS_REFUSED - queue name '{name}' contains reserved "
                             f"prefix 'amq.*'"):
        channel.queue_declare(name)


def test_declare_on_closed_channel_raises_client_side(channel):
    channel.close()
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        channel.queue_declare("", exclusive=True)
