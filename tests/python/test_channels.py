"""Many channels on one connection; channel lifecycle."""

import pika.exceptions
import pytest

from helpers import channel_closed


def test_many_channels_on_one_connection(connection):
    channels = [connection.channel() for _ in range(200)]
    numbers = {ch.channel_number for ch in channels}
    assert len(numbers) == 200
    queues = []
    for ch in channels:
        q = ch.queue_declare("", exclusive=True).method.queue
        queues.append(q)
        ch.confirm_delivery()
        ch.basic_publish("", q, str(ch.channel_number).encode())
    for ch, q in zip(channels, queues):
        _m, _p, body = ch.basic_get(q, auto_ack=True)
        assert body == str(ch.channel_number).encode()
    for ch in channels:
        ch.close()


def test_error_on_one_channel_does_not_affect_others(connection):
    good = connection.channel()
    bad = connection.channel()
    with channel_closed(404):
        bad.queue_declare("pier-test-no-such-queue", passive=True)
    q = good.queue_declare("", exclusive=True).method.queue
    good.confirm_delivery()
    good.basic_publish("", q, b"still fine")
    assert good.basic_get(q, auto_ack=True)[2] == b"still fine"


def test_channel_number_reuse_after_close(raw):
    conn = raw()
    conn.handshake()
    for _ in range(3):
        conn.open_channel(7)
        conn.rpc(7, "channel.close", "channel.close-ok", reply_code=200, reply_text="bye")


def test_channel_max_negotiated(raw):
    conn = raw()
    tune = conn.handshake()
    # RabbitMQ 3.x proposes 2047; any positive limit is acceptable
    assert tune["channel_max"] > 0
    assert tune["frame_max"] >= 4096


def test_more_channels_than_negotiated_max_is_530(raw):
    # RabbitMQ limits the number of open channels (not the channel number).
    conn = raw()
    conn.handshake(channel_max=10)
    for number in range(1, 11):
        conn.open_channel(number)
    conn.send_method(11, "channel.open")
    close = conn.expect_connection_close()
    assert close["reply_code"] == 530
    assert close["reply_text"] == ("NOT_ALLOWED - number of channels opened (10) has reached "
                                   "the negotiated channel_max (10)")


def test_pika_channel_close_then_use_raises(connection):
    ch = connection.channel()
    ch.close()
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        ch.basic_get("x")


def test_channel_flow_active_true_is_acknowledged(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    ok = conn.rpc(1, "channel.flow", "channel.flow-ok", active=True)
    assert ok["active"] is True


def test_channel_flow_active_false_is_540_not_implemented(raw):
    # RabbitMQ does not let a client pause deliveries with channel.flow: it closes the
    # connection (use basic.qos or basic.cancel instead).
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.send_method(1, "channel.flow", active=False)
    close = conn.expect_connection_close()
    assert (close["reply_code"], close["reply_text"]) == (540, "NOT_IMPLEMENTED - active=false")
    assert (close["class_id"], close["method_id"]) == (20, 20)
