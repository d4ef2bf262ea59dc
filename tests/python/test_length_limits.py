"""Queue length limits: x-max-length, x-max-length-bytes and x-overflow (drop-head,
reject-publish, reject-publish-dlx)."""

import pika
import pika.exceptions
import pytest

from helpers import channel_closed, drain, message_count, wait_message_count


def bodies(ch, q):
    return [b for _, _, b in drain(ch, q)]


def test_max_length_drops_from_the_head(channel, names):
    q = names.queue("maxlen")
    channel.queue_declare(q, arguments={"x-max-length": 2})
    for i in range(5):
        channel.basic_publish("", q, b"m%d" % i)
    assert bodies(channel, q) == [b"m3", b"m4"]


def test_max_length_zero_keeps_nothing(channel, names):
    q = names.queue("maxlen")
    channel.queue_declare(q, arguments={"x-max-length": 0})
    channel.basic_publish("", q, b"m")
    assert message_count(channel.connection, q) == 0


def test_max_length_bytes_counts_body_bytes(channel, names):
    q = names.queue("maxlen")
    channel.queue_declare(q, arguments={"x-max-length-bytes": 10})
    for body in (b"12345", b"67890", b"abc"):
        channel.basic_publish("", q, body)
    assert bodies(channel, q) == [b"67890", b"abc"]


def test_unacknowledged_messages_do_not_count(channel, names):
    q = names.queue("maxlen")
    channel.queue_declare(q, arguments={"x-max-length": 1})
    channel.basic_publish("", q, b"a")
    method, _, _ = channel.basic_get(q)
    channel.basic_publish("", q, b"b")
    assert message_count(channel.connection, q) == 1
    channel.basic_ack(method.delivery_tag)
    assert bodies(channel, q) == [b"b"]


def test_drop_head_dead_letters_with_reason_maxlen(channel, names):
    q = names.queue("maxlen")
    dlq = names.queue("maxlen-dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(q, arguments={"x-max-length": 1, "x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    channel.basic_publish("", q, b"first")
    channel.basic_publish("", q, b"second")
    wait_message_count(channel.connection, dlq, 1)
    _, props, body = channel.basic_get(dlq, auto_ack=True)
    assert body == b"first"
    death = props.headers["x-death"][0]
    assert death["reason"] == "maxlen"
    assert death["queue"] == q
    assert bodies(channel, q) == [b"second"]


def test_reject_publish_nacks_in_confirm_mode(channel, names):
    q = names.queue("maxlen")
    channel.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    channel.basic_publish("", q, b"accepted")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", q, b"refused")
    # Confirms keep flowing after a nack.
    other = names.queue("plain")
    channel.queue_declare(other)
    channel.basic_publish("", other, b"fine")
    assert bodies(channel, q) == [b"accepted"]
    channel.basic_publish("", q, b"room again")
    assert bodies(channel, q) == [b"room again"]


def test_reject_publish_is_not_a_return(channel, names):
    q = names.queue("maxlen")
    channel.queue_declare(q, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    # Routed (so no basic.return for mandatory) but refused: NackError, not UnroutableError.
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", q, b"m", mandatory=True)


def test_reject_publish_in_one_of_several_queues_nacks(channel, names):
    x = names.exchange()
    full = names.queue("full")
    roomy = names.queue("roomy")
    channel.exchange_declare(x, "fanout")
    channel.queue_declare(full, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    channel.queue_declare(roomy)
    channel.queue_bind(full, x)
    channel.queue_bind(roomy, x)
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish(x, "", b"m")
    assert message_count(channel.connection, roomy) == 1


def test_reject_publish_without_confirms_drops_silently(channel, names):
    q = names.queue("maxlen")
    channel.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    for i in range(3):
        channel.basic_publish("", q, b"m%d" % i)
    assert bodies(channel, q) == [b"m0"]


def test_reject_publish_dlx_dead_letters_the_refused_message(channel, names):
    q = names.queue("maxlen")
    dlq = names.queue("maxlen-dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                        "x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    channel.confirm_delivery()
    channel.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", q, b"refused")
    wait_message_count(channel.connection, dlq, 1)
    _, props, body = channel.basic_get(dlq, auto_ack=True)
    assert body == b"refused"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert bodies(channel, q) == [b"kept"]


def test_reject_publish_does_not_dead_letter(channel, names):
    q = names.queue("maxlen")
    dlq = names.queue("maxlen-dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(q, arguments={"x-max-length": 0, "x-overflow": "reject-publish",
                                        "x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    channel.basic_publish("", q, b"refused")
    assert message_count(channel.connection, q) == 0
    assert message_count(channel.connection, dlq) == 0


@pytest.mark.parametrize("args,reason", [
    ({"x-max-length": -1}, "{value_negative,-1}"),
    ({"x-max-length-bytes": "a"}, '"expected integer, got longstr"'),
    ({"x-overflow": "bogus"}, "invalid_overflow"),
    ({"x-overflow": 1}, "{unacceptable_type,signedint}"),
])
def test_invalid_length_arguments_are_406(channel, names, args, reason):
    q = names.queue("maxlen")
    (arg,) = args
    with channel_closed(406) as info:
        channel.queue_declare(q, arguments=args)
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/': {reason}")
