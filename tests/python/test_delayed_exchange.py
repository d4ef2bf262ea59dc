"""The delayed message exchange (type x-delayed-message, RabbitMQ's plugin of that name): each
message waits for its x-delay header's milliseconds, then the x-delayed-type routes it.

The RabbitMQ used to validate this suite has no plugins enabled, so these tests run against
Pier only; the behaviour follows the plugin's documentation and source (x-delay negated on
delivery, x-delay <= 0 routes at once, mandatory is not supported: returned at publish time).
Held messages live in memory: they do not survive a restart yet."""

import time

import pika
import pika.exceptions
import pytest

from helpers import channel_closed, collect_deliveries, connection_closed, drain, settle

pytestmark = pytest.mark.pier_only


def delayed_exchange(ch, names, routing="direct"):
    x = names.exchange("delayed")
    ch.exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": routing})
    return x


def test_messages_wait_for_their_delay(connection, names):
    ch = connection.channel()
    x = delayed_exchange(ch, names)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, "k")
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((time.monotonic(), p, b)), auto_ack=True)
    start = time.monotonic()
    ch.basic_publish(x, "k", b"slow", pika.BasicProperties(headers={"x-delay": 600}))
    ch.basic_publish(x, "k", b"fast", pika.BasicProperties(headers={"x-delay": 300}))
    ch.basic_publish(x, "k", b"now")
    collect_deliveries(connection, got, 1)
    assert got[0][2] == b"now"
    collect_deliveries(connection, got, 3, timeout=5)
    assert [b for _, _, b in got] == [b"now", b"fast", b"slow"]
    assert got[1][0] - start >= 0.25 and got[2][0] - start >= 0.55
    # The plugin negates x-delay on the message it finally routes.
    assert got[1][1].headers == {"x-delay": -300}


def test_routing_follows_the_delayed_type(connection, names):
    ch = connection.channel()
    x = delayed_exchange(ch, names, routing="topic")
    logs = ch.queue_declare("", exclusive=True).method.queue
    other = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(logs, x, "logs.#")
    ch.queue_bind(other, x, "other")
    for key in ("logs.error", "nothing"):
        ch.basic_publish(x, key, key.encode(), pika.BasicProperties(headers={"x-delay": 100}))
    settle(connection, 0.5)
    assert [b for _, _, b in drain(ch, logs)] == [b"logs.error"]
    assert drain(ch, other) == []


def test_mandatory_is_returned_at_publish_time(connection, names):
    ch = connection.channel()
    x = delayed_exchange(ch, names)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, "k")
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(x, "k", b"m", pika.BasicProperties(headers={"x-delay": 100}),
                         mandatory=True)
    settle(connection, 0.4)
    assert [b for _, _, b in drain(ch, q)] == [b"m"], "still delivered later"


def test_x_delayed_type_is_required(channel, names):
    x = names.exchange("delayed")
    with channel_closed(406, "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be "
                             "an existing exchange type"):
        channel.exchange_declare(x, "x-delayed-message")


def test_x_delayed_type_must_be_known(connection, names):
    x = names.exchange("delayed")
    with connection_closed(503, "COMMAND_INVALID - unknown exchange type 'nope'"):
        connection.channel().exchange_declare(x, "x-delayed-message",
                                              arguments={"x-delayed-type": "nope"})


def test_redeclare_compares_the_declared_type(channel, names):
    x = delayed_exchange(channel, names)
    channel.exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    with channel_closed(406, f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange "
                             f"'{x}' in vhost '/': received 'direct' but current is "
                             f"'x-delayed-message'"):
        channel.exchange_declare(x, "direct")
