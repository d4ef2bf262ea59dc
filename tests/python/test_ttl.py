"""Message TTL (x-message-ttl, per-message expiration), TTL 0, and queue expiry (x-expires).

Timings are small (100-300 ms TTLs) and every wait is bounded; assertions are about what is
delivered, never about how fast."""

import time

import pika
import pytest

from helpers import (channel_closed, collect_deliveries, message_count, queue_exists, settle,
                     wait_message_count, wait_until)


def publish(ch, q, body, **props):
    ch.basic_publish("", q, body, pika.BasicProperties(**props))


def test_queue_ttl_expires_messages_without_consumers(connection, names):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    for i in range(3):
        publish(ch, q, b"m%d" % i)
    # Removed promptly even though nobody consumes or polls the queue.
    wait_message_count(connection, q, 0, timeout=5)


def test_per_message_expiration(connection, names):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q)
    publish(ch, q, b"short", expiration="100")
    wait_message_count(connection, q, 0, timeout=5)
    publish(ch, q, b"long", expiration="60000")
    time.sleep(0.3)
    assert message_count(connection, q) == 1


@pytest.mark.parametrize("queue_ttl,expiration", [(60000, "100"), (100, "60000")])
def test_lower_of_queue_and_message_ttl_wins(connection, names, queue_ttl, expiration):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": queue_ttl})
    publish(ch, q, b"m", expiration=expiration)
    wait_message_count(connection, q, 0, timeout=5)


def test_expired_messages_are_never_delivered(connection, names):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    publish(ch, q, b"stale")
    time.sleep(0.3)
    publish(ch, q, b"fresh", expiration="60000")
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    collect_deliveries(connection, got, 1)
    settle(connection, 0.3)
    assert got == [b"fresh"]


def test_per_message_ttl_expires_at_the_head(connection, names):
    # RabbitMQ only discards a message with a per-message TTL when it reaches the head; it is
    # still never delivered.
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q)
    publish(ch, q, b"forever")
    publish(ch, q, b"brief", expiration="10")
    time.sleep(0.3)
    assert message_count(connection, q) == 2
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"forever"
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert method is None


def test_ttl_zero_without_consumer_is_dropped(connection, names):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 0})
    publish(ch, q, b"gone")
    publish(ch, q, b"gone too", expiration="0")
    time.sleep(0.1)
    assert ch.basic_get(q, auto_ack=True)[0] is None
    assert message_count(connection, q) == 0


def test_ttl_zero_is_delivered_to_a_waiting_consumer(connection, names):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 0})
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    publish(ch, q, b"now")
    collect_deliveries(connection, got, 1)
    assert got == [b"now"]


def test_requeued_message_keeps_its_original_expiry(connection, names):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 200})
    publish(ch, q, b"m")
    method, _, _ = ch.basic_get(q)
    assert method is not None
    time.sleep(0.4)
    ch.basic_nack(method.delivery_tag, requeue=True)
    wait_message_count(connection, q, 0, timeout=5)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_unacked_messages_do_not_expire(connection, names):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    publish(ch, q, b"m")
    method, _, _ = ch.basic_get(q)
    time.sleep(0.3)
    ch.basic_ack(method.delivery_tag)  # still known to the broker: no 406


def test_expiration_keeps_the_property_on_delivery(connection, names):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q)
    publish(ch, q, b"m", expiration="60000")
    _, props, _ = ch.basic_get(q, auto_ack=True)
    assert props.expiration == "60000"


@pytest.mark.parametrize("expiration,reason", [
    ("abc", "no_integer"),
    ("", "no_integer"),
    ("-1", "{value_negative,-1}"),
    ("1.5", '{leftover_string,".5"}'),
])
def test_invalid_expiration_is_406(connection, names, expiration, reason):
    ch = connection.channel()
    q = names.queue("ttl")
    ch.queue_declare(q)
    with channel_closed(406) as info:
        ch.basic_publish("", q, b"m", pika.BasicProperties(expiration=expiration))
        ch.queue_declare(q, passive=True)  # the close arrives asynchronously
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}")
    assert message_count(connection, q) == 0


@pytest.mark.parametrize("args,reason", [
    ({"x-message-ttl": -1}, "{value_negative,-1}"),
    ({"x-message-ttl": "abc"}, '"expected integer, got longstr"'),
    ({"x-expires": 0}, "{value_zero,0}"),
    ({"x-expires": 315360000001}, "{value_too_large,315360000001}"),
])
def test_invalid_ttl_arguments_are_406(channel, names, args, reason):
    q = names.queue("ttl")
    (arg,) = args
    with channel_closed(406) as info:
        channel.queue_declare(q, arguments=args)
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/': {reason}")


def test_unused_queue_expires(connection, names):
    ch = connection.channel()
    q = names.queue("expires")
    ch.queue_declare(q, arguments={"x-expires": 200})
    publish(ch, q, b"does not keep it alive")
    # A passive declare is a use too (it renews the lease): poll slower than the expiry.
    wait_until(lambda: not queue_exists(connection, q), timeout=5, interval=0.5,
               message="queue deleted by x-expires")


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_queue_with_consumer_does_not_expire(connection, make_connection, names):
    ch = connection.channel()
    q = names.queue("expires")
    ch.queue_declare(q, arguments={"x-expires": 200})
    tag = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    settle(connection, 0.6)
    observer = make_connection()
    assert queue_exists(observer, q)
    ch.basic_cancel(tag)
    wait_until(lambda: not queue_exists(observer, q), timeout=5, interval=0.5,
               message="queue deleted once unused")


def test_redeclare_renews_the_queue_lease(connection, names):
    ch = connection.channel()
    q = names.queue("expires")
    ch.queue_declare(q, arguments={"x-expires": 600})
    for _ in range(4):
        time.sleep(0.3)
        ch.queue_declare(q, arguments={"x-expires": 600})
    assert queue_exists(connection, q)
