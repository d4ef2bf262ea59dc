"""basic.publish: missing exchanges, mandatory returns, immediate, user-id
validation, publishing on a closed channel."""

import pika
import pika.exceptions
import pytest

from helpers import channel_closed, collect_deliveries, settle


def test_publish_to_missing_exchange_closes_channel_404(connection):
    ch = connection.channel()
    ch.basic_publish("pier-test-no-such-exchange", "k", b"x")
    # basic.publish has no reply: the error surfaces on the next synchronous call
    with channel_closed(404, "NOT_FOUND - no exchange 'pier-test-no-such-exchange' in "
                             "vhost '/'"):
        ch.queue_declare("", exclusive=True)
    assert connection.is_open
    assert connection.channel().is_open


def test_publish_to_missing_exchange_with_confirms(connection):
    ch = connection.channel()
    ch.confirm_delivery()
    with channel_closed(404, "NOT_FOUND - no exchange 'pier-test-no-such-exchange' in "
                             "vhost '/'"):
        ch.basic_publish("pier-test-no-such-exchange", "k", b"x")


def test_unroutable_without_mandatory_is_dropped_silently(channel):
    channel.confirm_delivery()
    channel.basic_publish("amq.direct", "pier-test-nobody-listens", b"x")
    assert channel.is_open


def test_mandatory_unroutable_is_returned_312(connection):
    ch = connection.channel()
    returned = []
    ch.add_on_return_callback(lambda _ch, method, props, body: returned.append(
        (method, props, body)))
    ch.basic_publish("amq.direct", "pier-test-nobody-listens", b"come back",
                     pika.BasicProperties(message_id="m-1", headers={"h": 1}), mandatory=True)
    collect_deliveries(connection, returned, 1)
    method, props, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == "amq.direct"
    assert method.routing_key == "pier-test-nobody-listens"
    assert body == b"come back"
    assert props.message_id == "m-1"
    assert props.headers == {"h": 1}
    assert ch.is_open


def test_mandatory_to_default_exchange_without_queue_is_returned(connection):
    ch = connection.channel()
    returned = []
    ch.add_on_return_callback(lambda _c, m, _p, b: returned.append((m, b)))
    ch.basic_publish("", "pier-test-no-such-queue", b"x", mandatory=True)
    collect_deliveries(connection, returned, 1)
    assert returned[0][0].reply_code == 312
    assert returned[0][0].exchange == ""


def test_mandatory_routable_is_not_returned(connection):
    ch = connection.channel()
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x", mandatory=True)
    settle(connection, 0.3)
    assert returned == []


def test_mandatory_unroutable_with_confirms_raises_unroutable(connection):
    ch = connection.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as excinfo:
        ch.basic_publish("amq.direct", "pier-test-nobody-listens", b"x", mandatory=True)
    [msg] = excinfo.value.messages
    assert msg.method.reply_code == 312
    assert msg.method.reply_text == "NO_ROUTE"
    assert msg.body == b"x"
    # the channel stays usable
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"y", mandatory=True)


def test_immediate_publish_is_connection_error_540(raw):
    # pika cannot send immediate=True any more: use the raw client.
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.publish(1, "", "pier-test-any", b"x", immediate=True)
    close = conn.expect_connection_close()
    assert close["reply_code"] == 540
    assert close["reply_text"] == "NOT_IMPLEMENTED - immediate=true"
    assert (close["class_id"], close["method_id"]) == (60, 40)


def test_user_id_must_match_authenticated_user(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    ch.basic_publish("", q, b"ok", pika.BasicProperties(user_id="guest"))
    with channel_closed(406, "PRECONDITION_FAILED - user_id property set to 'mallory' but "
                             "authenticated user was 'guest'"):
        ch.basic_publish("", q, b"forged", pika.BasicProperties(user_id="mallory"))


def test_publish_on_closed_channel_raises_client_side(channel):
    channel.close()
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        channel.basic_publish("", "x", b"x")
