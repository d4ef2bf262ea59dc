"""Connection negotiation: server properties, capabilities, tuning, heartbeats."""

import time

import pytest

from amqp_raw import FRAME_HEARTBEAT, heartbeat_frame


def test_connection_start_advertises_capabilities(raw):
    conn = raw()
    conn.handshake()
    props = conn.start["server_properties"]
    caps = props["capabilities"]
    # what pika, kombu/celery and other clients look at
    for cap in ["publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                "consumer_cancel_notify", "authentication_failure_close",
                "per_consumer_qos"]:
        assert caps.get(cap) is True, cap
    assert isinstance(props.get("product"), str)
    assert isinstance(props.get("version"), str)
    assert b"en_US" in conn.start["locales"].split()


def test_tune_values(raw):
    conn = raw()
    tune = conn.handshake()
    assert tune["channel_max"] > 0
    assert tune["frame_max"] >= 4096
    assert tune["heartbeat"] >= 0


@pytest.mark.parametrize("heartbeat", [0, 1, 5, 30, 600])
def test_pika_heartbeat_accepted(broker, heartbeat):
    conn = broker.connect(heartbeat=heartbeat)
    try:
        assert conn._impl.params.heartbeat == heartbeat
        ch = conn.channel()
        assert ch.queue_declare("", exclusive=True).method.queue
    finally:
        conn.close()


def test_pika_heartbeat_keeps_idle_connection_alive(broker):
    conn = broker.connect(heartbeat=1)
    try:
        conn.sleep(3.0)  # pika pumps I/O and heartbeats while sleeping
        assert conn.is_open
        assert conn.channel().queue_declare("", exclusive=True).method.queue
    finally:
        conn.close()


def test_broker_sends_heartbeats(raw):
    conn = raw()
    conn.handshake(heartbeat=1)
    start = time.monotonic()
    seen = 0
    while time.monotonic() - start < 2.5:
        conn.send(heartbeat_frame())  # keep our side alive
        frame = conn.read_frame(timeout=2)
        if frame.type == FRAME_HEARTBEAT:
            assert frame.channel == 0 and frame.payload == b""
            seen += 1
    assert seen >= 2


def test_client_heartbeats_keep_connection_alive(raw):
    conn = raw()
    conn.handshake(heartbeat=1)
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        conn.send(heartbeat_frame())
        time.sleep(0.4)
        while True:
            try:
                conn.read_frame(timeout=0.01)
            except TimeoutError:
                break
    conn.open_channel(1)  # still alive after 3.5 intervals


def test_clean_close_handshake(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.send_method(0, "connection.close", reply_code=200, reply_text="Goodbye")
    conn.expect("connection.close-ok")
    # (RabbitMQ leaves closing the TCP socket to the client after close-ok)


def test_channel_close_handshake(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.send_method(1, "channel.close", reply_code=200, reply_text="done")
    ok = conn.expect("channel.close-ok")
    assert ok.channel == 1
    conn.open_channel(1)


def test_channel_close_from_broker_expects_close_ok(raw):
    """After the broker closes a channel (404), the client answers close-ok
    and can reopen the same channel number."""
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.send_method(1, "queue.declare", queue="pier-test-no-such-queue", passive=True)
    close = conn.expect("channel.close")
    assert close["reply_code"] == 404
    assert (close["class_id"], close["method_id"]) == (50, 10)
    conn.send_method(1, "channel.close-ok")
    conn.open_channel(1)
    ok = conn.rpc(1, "queue.declare", "queue.declare-ok", exclusive=True)
    assert ok["queue"].startswith("amq.gen-")


def test_methods_after_channel_close_are_ignored_until_close_ok(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.send_method(1, "queue.declare", queue="pier-test-no-such-queue", passive=True)
    # sent before seeing the close: must be discarded, not answered
    conn.send_method(1, "queue.declare", exclusive=True)
    conn.expect("channel.close")
    conn.send_method(1, "channel.close-ok")
    conn.open_channel(1)
    # the next reply is for this channel.open, not for the discarded declare
    conn.send_method(1, "basic.qos", prefetch_count=1)
    assert conn.read_method().name == "basic.qos-ok"
