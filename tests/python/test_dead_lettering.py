"""Dead lettering: x-dead-letter-exchange / x-dead-letter-routing-key for rejected, expired and
over-length messages, the x-death history and x-first-death-* headers as RabbitMQ 3.10 writes
them, and its cycle rule."""

import datetime
import time

import pika

from helpers import collect_deliveries, drain, message_count, wait_message_count


def dl_setup(ch, names, **extra):
    """A fanout DLX with one queue behind it; returns (dlx, dlq)."""
    dlx = names.exchange("dlx")
    dlq = names.queue("dlq")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    return dlx, dlq


def get_dead(ch, dlq):
    wait_message_count(ch.connection, dlq, 1)
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    return method, props, body


def test_rejected_message_is_dead_lettered_with_x_death(channel, names):
    dlx, dlq = dl_setup(channel, names)
    q = names.queue("work")
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish("", q, b"payload", pika.BasicProperties(
        headers={"app": "kept"}, priority=3, correlation_id="c1"))
    method, _, _ = channel.basic_get(q)
    channel.basic_reject(method.delivery_tag, requeue=False)
    method, props, body = get_dead(channel, dlq)
    assert body == b"payload"
    assert method.exchange == dlx
    assert method.routing_key == q  # the original routing key
    assert props.priority == 3 and props.correlation_id == "c1"
    headers = props.headers
    assert headers["app"] == "kept"
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-queue"] == q
    assert headers["x-first-death-exchange"] == ""
    # RabbitMQ 3.10 does not write x-last-death-* (3.13 added them).
    assert not any(k.startswith("x-last-death") for k in headers)
    (death,) = headers["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == q
    assert death["exchange"] == ""
    assert death["routing-keys"] == [q]
    assert isinstance(death["time"], datetime.datetime)
    assert "original-expiration" not in death
    assert message_count(channel.connection, q) == 0


def test_nack_multiple_without_requeue_dead_letters_all(channel, names):
    dlx, dlq = dl_setup(channel, names)
    q = names.queue("work")
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    for i in range(3):
        channel.basic_publish("", q, b"m%d" % i)
    got = []
    channel.basic_consume(q, lambda c, m, p, b: got.append(m))
    collect_deliveries(channel.connection, got, 3)
    channel.basic_nack(got[-1].delivery_tag, multiple=True, requeue=False)
    wait_message_count(channel.connection, dlq, 3)
    assert [b for _, _, b in drain(channel, dlq)] == [b"m0", b"m1", b"m2"]


def test_requeue_does_not_dead_letter(channel, names):
    dlx, dlq = dl_setup(channel, names)
    q = names.queue("work")
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish("", q, b"m")
    method, _, _ = channel.basic_get(q)
    channel.basic_reject(method.delivery_tag, requeue=True)
    time.sleep(0.2)
    assert message_count(channel.connection, dlq) == 0
    assert message_count(channel.connection, q) == 1


def test_expired_message_dead_letters_with_routing_key_override(channel, names):
    dlq = names.queue("dlq")
    channel.queue_declare(dlq)
    q = names.queue("work")
    channel.queue_declare(q, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    channel.basic_publish("", q, b"m", pika.BasicProperties(
        expiration="60000", headers={"CC": ["elsewhere"]}))
    method, props, _ = get_dead(channel, dlq)
    assert method.exchange == ""
    assert method.routing_key == dlq
    assert props.expiration is None
    # With a dead-letter routing key the CC header goes (it no longer routes).
    assert "CC" not in props.headers
    (death,) = props.headers["x-death"]
    assert death["reason"] == "expired"
    assert death["original-expiration"] == "60000"
    assert death["routing-keys"] == [q, "elsewhere"]


def test_cc_is_kept_and_reused_without_routing_key_override(channel, names):
    dlx = names.exchange("dlx")
    channel.exchange_declare(dlx, "direct")
    by_key = names.queue("by-key")
    by_cc = names.queue("by-cc")
    for dest, key in ((by_key, "main"), (by_cc, "copy")):
        channel.queue_declare(dest)
        channel.queue_bind(dest, dlx, key)
    x = names.exchange()
    channel.exchange_declare(x, "direct")
    q = names.queue("work")
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    channel.queue_bind(q, x, "main")
    channel.queue_bind(q, x, "copy")
    channel.basic_publish(x, "main", b"m", pika.BasicProperties(headers={"CC": ["copy"]}))
    method, _, _ = channel.basic_get(q)
    channel.basic_reject(method.delivery_tag, requeue=False)
    for dest in (by_key, by_cc):
        _, props, _ = get_dead(channel, dest)
        assert props.headers["CC"] == ["copy"]
        assert props.headers["x-death"][0]["routing-keys"] == ["main", "copy"]
        assert props.headers["x-death"][0]["exchange"] == x


def test_same_queue_and_reason_increments_count(channel, names):
    dlx, dlq = dl_setup(channel, names)
    q = names.queue("work")
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish("", q, b"m")
    method, _, _ = channel.basic_get(q)
    channel.basic_reject(method.delivery_tag, requeue=False)
    _, props, body = get_dead(channel, dlq)
    # The application retries: publishes the dead letter back, and it is rejected again.
    channel.basic_publish("", q, body, props)
    method, _, _ = channel.basic_get(q)
    channel.basic_reject(method.delivery_tag, requeue=False)
    _, props, _ = get_dead(channel, dlq)
    (death,) = props.headers["x-death"]
    assert death["count"] == 2
    assert props.headers["x-first-death-reason"] == "rejected"


def test_new_death_goes_to_the_front(channel, names):
    dlq = names.queue("dlq")
    channel.queue_declare(dlq)
    first = names.queue("first")
    second = names.queue("second")
    channel.queue_declare(second, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "",
                                             "x-dead-letter-routing-key": dlq})
    channel.queue_declare(first, arguments={"x-dead-letter-exchange": "",
                                            "x-dead-letter-routing-key": second})
    channel.basic_publish("", first, b"m")
    method, _, _ = channel.basic_get(first)
    channel.basic_reject(method.delivery_tag, requeue=False)
    _, props, _ = get_dead(channel, dlq)
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"]) for d in deaths] == [(second, "expired"),
                                                           (first, "rejected")]
    assert deaths[0]["exchange"] == ""
    assert deaths[0]["routing-keys"] == [second]
    assert props.headers["x-first-death-queue"] == first


def test_expiry_cycle_back_to_the_same_queue_is_dropped(channel, names):
    q = names.queue("cycle")
    channel.queue_declare(q, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": q})
    channel.basic_publish("", q, b"m")
    time.sleep(0.4)
    assert message_count(channel.connection, q) == 0


def test_rejection_cycle_is_allowed(channel, names):
    q = names.queue("retry")
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": q})
    channel.basic_publish("", q, b"m")
    for expected in (1, 2):
        method, _, _ = channel.basic_get(q)
        channel.basic_reject(method.delivery_tag, requeue=False)
        wait_message_count(channel.connection, q, 1)
        method, props, _ = channel.basic_get(q)
        assert props.headers["x-death"][0]["count"] == expected
        channel.basic_nack(method.delivery_tag, requeue=True)


def test_missing_dead_letter_exchange_drops_the_message(channel, names):
    q = names.queue("work")
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": "pier-test.no-such-dlx"})
    channel.basic_publish("", q, b"m")
    method, _, _ = channel.basic_get(q)
    channel.basic_reject(method.delivery_tag, requeue=False)
    time.sleep(0.1)
    assert message_count(channel.connection, q) == 0
    assert channel.is_open


def test_closing_a_channel_requeues_rather_than_dead_letters(connection, names):
    ch = connection.channel()
    dlx, dlq = dl_setup(ch, names)
    q = names.queue("work")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"m")
    other = connection.channel()
    assert other.basic_get(q)[0] is not None
    other.close()
    wait_message_count(connection, q, 1)
    assert message_count(connection, dlq) == 0


def test_dead_letter_routing_key_without_exchange_is_406(channel, names):
    from helpers import channel_closed
    q = names.queue("work")
    with channel_closed(406) as info:
        channel.queue_declare(q, arguments={"x-dead-letter-routing-key": "k"})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue '{q}' in "
        f"vhost '/': routing_key_but_no_dlx_defined")


def test_dead_letter_exchange_of_wrong_type_is_406(channel, names):
    from helpers import channel_closed
    q = names.queue("work")
    with channel_closed(406) as info:
        channel.queue_declare(q, arguments={"x-dead-letter-exchange": 5})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in "
        f"queue '{q}' in vhost '/'")
