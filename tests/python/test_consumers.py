"""basic.consume / basic.cancel: tags, exclusivity, server-initiated cancel,
round-robin dispatch."""

import pika
import pytest

from helpers import channel_closed, collect_deliveries, settle


def test_deliver_fields(connection, names):
    x = names.exchange()
    ch = connection.channel()
    ch.exchange_declare(x, "direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, "rk")
    got = []
    tag = ch.basic_consume(q, lambda _c, m, p, b: got.append((m, p, b)),
                           consumer_tag="pier-test-ctag")
    assert tag == "pier-test-ctag"
    ch.basic_publish(x, "rk", b"payload", pika.BasicProperties(correlation_id="c1"))
    collect_deliveries(connection, got, 1)
    method, props, body = got[0]
    assert method.consumer_tag == "pier-test-ctag"
    assert method.delivery_tag == 1
    assert method.redelivered is False
    assert method.exchange == x
    assert method.routing_key == "rk"
    assert props.correlation_id == "c1"
    assert body == b"payload"


def test_server_generated_consumer_tag(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    q = conn.rpc(1, "queue.declare", "queue.declare-ok", exclusive=True)["queue"]
    tags = {conn.rpc(1, "basic.consume", "basic.consume-ok", queue=q)["consumer_tag"]
            for _ in range(3)}
    assert len(tags) == 3
    assert all(tag.startswith("amq.ctag-") and len(tag) > len("amq.ctag-") for tag in tags)
    conn.publish(1, "", q, b"hello")
    deliver = conn.expect("basic.deliver")
    assert deliver["consumer_tag"] in tags
    assert deliver.body == b"hello"


def test_duplicate_consumer_tag_on_same_channel_is_530(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    q = conn.rpc(1, "queue.declare", "queue.declare-ok", exclusive=True)["queue"]
    conn.rpc(1, "basic.consume", "basic.consume-ok", queue=q, consumer_tag="dup")
    conn.send_method(1, "basic.consume", queue=q, consumer_tag="dup")
    close = conn.expect_connection_close()
    assert close["reply_code"] == 530
    assert close["reply_text"] == "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"
    assert (close["class_id"], close["method_id"]) == (60, 20)


def test_same_consumer_tag_on_different_channels_is_ok(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.open_channel(2)
    q = conn.rpc(1, "queue.declare", "queue.declare-ok", exclusive=True)["queue"]
    for ch in (1, 2):
        ok = conn.rpc(ch, "basic.consume", "basic.consume-ok", queue=q, consumer_tag="same")
        assert ok["consumer_tag"] == "same"


def test_cancel_unknown_consumer_tag_is_ok(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    ok = conn.rpc(1, "basic.cancel", "basic.cancel-ok", consumer_tag="pier-test-unknown")
    assert ok["consumer_tag"] == "pier-test-unknown"


def test_cancel_stops_deliveries_and_keeps_unacked(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got = []
    tag = ch.basic_consume(q, lambda _c, m, _p, b: got.append((m.delivery_tag, b)))
    ch.basic_publish("", q, b"first")
    collect_deliveries(connection, got, 1)
    ch.basic_cancel(tag)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"second")
    settle(connection, 0.3)
    assert [b for _t, b in got] == [b"first"]
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    # the delivery from the cancelled consumer can still be acked
    ch.basic_ack(got[0][0])
    assert ch.basic_get(q, auto_ack=True)[2] == b"second"


def test_server_cancels_consumer_when_queue_deleted(connection, names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(cancelled.append)
    tag = ch.basic_consume(q, lambda *a: None)
    connection.channel().queue_delete(q)
    collect_deliveries(connection, cancelled, 1)
    frame = cancelled[0]
    assert isinstance(frame.method, pika.spec.Basic.Cancel)
    assert frame.method.consumer_tag == tag
    assert tag not in ch.consumer_tags
    # the channel stays open
    assert ch.is_open
    ch.queue_declare("", exclusive=True)


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_server_cancel_frame_raw(raw, connection, names):
    q = names.queue()
    connection.channel().queue_declare(q)
    conn = raw()
    conn.handshake()  # advertises consumer_cancel_notify
    conn.open_channel(1)
    conn.rpc(1, "basic.consume", "basic.consume-ok", queue=q, consumer_tag="watch")
    connection.channel().queue_delete(q)
    cancel = conn.expect("basic.cancel")
    assert cancel.channel == 1
    assert cancel["consumer_tag"] == "watch"
    assert cancel["no_wait"] is True


def test_queue_deleted_on_the_consumers_own_channel_cancels_after_delete_ok(raw, names):
    # RabbitMQ answers queue.delete first and only then tells the deleting channel's own
    # consumers (aio-pika's robust queue forgets its consumers when it deletes the queue; a
    # basic.cancel before delete-ok reaches it as a cancel of a live consumer).
    q = names.queue()
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.rpc(1, "queue.declare", "queue.declare-ok", queue=q)
    conn.rpc(1, "basic.consume", "basic.consume-ok", queue=q, consumer_tag="mine")
    conn.send_method(1, "queue.delete", queue=q)
    assert conn.read_method().name == "queue.delete-ok"
    cancel = conn.expect("basic.cancel")
    assert (cancel.channel, cancel["consumer_tag"]) == (1, "mine")


def test_consumer_cancelled_before_its_queue_is_deleted_gets_no_server_cancel(raw, names):
    q = names.queue()
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.rpc(1, "queue.declare", "queue.declare-ok", queue=q)
    conn.rpc(1, "basic.consume", "basic.consume-ok", queue=q, consumer_tag="gone")
    conn.send_method(1, "basic.cancel", consumer_tag="gone", no_wait=True)
    conn.send_method(1, "queue.delete", queue=q)
    conn.expect("queue.delete-ok")
    # Nothing else follows: a channel method answered with its -ok proves it.
    conn.send_method(1, "basic.qos", **{"prefetch_size": 0, "prefetch_count": 1, "global": False})
    conn.expect("basic.qos-ok")


def test_exclusive_consumer_refused_when_queue_has_consumers(connection, names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    other = connection.channel()
    with channel_closed(403) as info:
        other.basic_consume(q, lambda *a: None, exclusive=True)
    assert info["exc"].reply_text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_consumer_refused_when_queue_has_exclusive_consumer(make_connection, connection,
                                                            names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    other = make_connection().channel()
    with channel_closed(403) as info:
        other.basic_consume(q, lambda *a: None)
    assert info["exc"].reply_text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"


def test_exclusive_consumer_released_after_cancel(connection, names):
    q = names.queue()
    ch = connection.channel()
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None, exclusive=True)
    ch.basic_cancel(tag)
    other = connection.channel()
    other.basic_consume(q, lambda *a: None)
    assert other.queue_declare(q, passive=True).method.consumer_count == 1


def test_consume_missing_queue_is_404(channel):
    with channel_closed(404, "NOT_FOUND - no queue 'pier-test-no-such-queue' in vhost '/'"):
        channel.basic_consume("pier-test-no-such-queue", lambda *a: None)


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_round_robin_between_consumers(connection, make_connection, names):
    q = names.queue()
    setup = connection.channel()
    setup.queue_declare(q)
    conns = [make_connection(), make_connection()]
    got = {0: [], 1: []}
    for i, conn in enumerate(conns):
        conn.channel().basic_consume(q, lambda _c, _m, _p, b, i=i: got[i].append(b),
                                     auto_ack=True)
    assert setup.queue_declare(q, passive=True).method.consumer_count == 2
    setup.confirm_delivery()
    for i in range(10):
        setup.basic_publish("", q, str(i).encode())
    deadline_rounds = 100
    while len(got[0]) + len(got[1]) < 10 and deadline_rounds:
        for conn in conns:
            conn.process_data_events(time_limit=0.02)
        deadline_rounds -= 1
    assert sorted(got[0] + got[1]) == sorted(str(i).encode() for i in range(10))
    assert len(got[0]) == 5 and len(got[1]) == 5, got


def test_messages_published_before_consume_are_delivered(connection):
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("", q, str(i).encode())
    got = []
    ch.basic_consume(q, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
    collect_deliveries(connection, got, 50)
    assert got == [str(i).encode() for i in range(50)]
