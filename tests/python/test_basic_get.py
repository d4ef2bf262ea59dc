"""basic.get / get-ok / get-empty."""

from helpers import channel_closed, wait_message_count


def test_get_ok_fields_and_message_count(channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish("", q, str(i).encode())
    seen = []
    for expected_remaining in (2, 1, 0):
        method, _props, body = channel.basic_get(q)
        seen.append(body)
        assert method.message_count == expected_remaining
        assert method.redelivered is False
        assert method.exchange == ""
        assert method.routing_key == q
    assert seen == [b"0", b"1", b"2"]
    # delivery tags are per channel, starting at 1
    method, _p, _b = channel.basic_get(q)
    assert method is None  # get-empty


def test_get_empty(channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    assert channel.basic_get(q) == (None, None, None)
    assert channel.basic_get(q, auto_ack=True) == (None, None, None)


def test_get_delivery_tags_increase_per_channel(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"x")
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]
    other = connection.channel()
    other.confirm_delivery()
    other.basic_publish("", q, b"y")
    assert other.basic_get(q)[0].delivery_tag == 1


def test_get_no_ack_removes_message(channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    channel.basic_publish("", q, b"once")
    assert channel.basic_get(q, auto_ack=True)[2] == b"once"
    assert channel.basic_get(q, auto_ack=True)[0] is None
    assert channel.queue_declare(q, passive=True).method.message_count == 0


def test_get_without_ack_keeps_message_unacked(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    ch.basic_publish("", q, b"pending")
    method, _p, _b = ch.basic_get(q)
    # not ready any more, but not gone either
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.basic_nack(method.delivery_tag, requeue=True)
    wait_message_count(connection, q, 1)  # requeue is asynchronous
    method, _p, body = ch.basic_get(q)
    assert body == b"pending"
    assert method.redelivered is True


def test_get_from_missing_queue_is_404(channel):
    with channel_closed(404, "NOT_FOUND - no queue 'pier-test-no-such-queue' in vhost '/'"):
        channel.basic_get("pier-test-no-such-queue")


def test_get_empty_raw_frame(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    q = conn.rpc(1, "queue.declare", "queue.declare-ok", exclusive=True)["queue"]
    empty = conn.rpc(1, "basic.get", "basic.get-empty", queue=q)
    assert empty["reserved_1"] == ""
    conn.publish(1, "", q, b"body")
    conn.send_method(1, "basic.get", queue=q, no_ack=True)
    ok = conn.read_method()
    while ok.name == "basic.get-empty":  # routing may still be in flight
        conn.send_method(1, "basic.get", queue=q, no_ack=True)
        ok = conn.read_method()
    assert ok.name == "basic.get-ok"
    assert ok["delivery_tag"] == 1
    assert ok["message_count"] == 0
    assert ok.body == b"body"
