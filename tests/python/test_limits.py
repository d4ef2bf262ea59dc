"""Limits, each with RabbitMQ's default and configurable in Pier's TOML config: the handshake
timeout, node and vhost connection limits, the vhost queue limit, channel_max, frame_max and
the maximum message size.

RabbitMQ 3.10.8's texts, observed with ``rabbitmqctl set_vhost_limits -p v
'{"max-queues": 1, "max-connections": 1}'``:

* 406 ``PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost 'v' (1) is
  reached`` on queue.declare (50, 10), server-named queues included;
* 530 ``NOT_ALLOWED - access to vhost 'v' refused for user 'guest': connection limit (1) is
  reached`` on connection.open (10, 40).
"""

from __future__ import annotations

import socket
import time

import pika
import pika.exceptions
import pytest

from amqp_raw import PROTOCOL_HEADER, RawConnection, plain_response
from conftest import PIER_CONFIG, Broker, PierProcess

LIMITS_CONFIG = """
max_connections = 6
handshake_timeout = 1500
channel_max = 3
frame_max = 8192
max_message_size = 1000
""" + PIER_CONFIG + """
[[vhosts]]
name = "limited"
max_connections = 1
max_queues = 2

[[permissions]]
user = "guest"
vhost = "limited"
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    from conftest import EXTERNAL_URL
    if EXTERNAL_URL:
        pytest.skip("needs a Pier process with a limits config (PIER_TEST_AMQP_URL is set)")
    proc = PierProcess(tmp_path_factory.mktemp("pier-limits"), LIMITS_CONFIG).start()
    try:
        yield Broker(host="127.0.0.1", port=proc.amqp_port, process=proc)
    finally:
        proc.terminate()
        assert "panicked" not in proc.log_path.read_text(errors="replace")


def wait_closed(sock: socket.socket, timeout: float) -> float:
    """Seconds until the peer closes `sock` (reading and discarding whatever it sends)."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return time.monotonic() - start


def test_silent_client_is_dropped_after_the_handshake_timeout(broker):
    """RabbitMQ's handshake_timeout is 10 s: a client that connects and says nothing is
    disconnected after it."""
    with socket.create_connection((broker.host, broker.port), timeout=5) as sock:
        elapsed = wait_closed(sock, timeout=20)
    assert 8 <= elapsed <= 15, elapsed


@pytest.mark.pier_only
def test_configured_handshake_timeout(limited):
    with socket.create_connection((limited.host, limited.port)) as sock:
        elapsed = wait_closed(sock, timeout=10)
    assert 1.0 <= elapsed <= 4.0, elapsed
    # A client that stops after connection.start-ok is dropped just the same.
    conn = RawConnection(limited.host, limited.port, timeout=10)
    with conn:
        conn.send(PROTOCOL_HEADER)
        conn.expect("connection.start")
        conn.send_method(0, "connection.start-ok", client_properties={}, mechanism="PLAIN",
                         response=plain_response("guest", "guest"), locale="en_US")
        conn.expect("connection.tune")
        start = time.monotonic()
        conn.read_until_closed(timeout=10)
        assert time.monotonic() - start <= 4.0


@pytest.mark.pier_only
def test_node_connection_limit(limited):
    """max_connections: sockets beyond it are closed at once; a freed slot is reusable."""
    open_conns = [limited.connect() for _ in range(6)]
    try:
        with socket.create_connection((limited.host, limited.port), timeout=5) as extra:
            extra.sendall(PROTOCOL_HEADER)
            assert wait_closed(extra, timeout=5) < 2.0
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            limited.connect()
        open_conns.pop().close()
        time.sleep(0.2)
        open_conns.append(limited.connect())
    finally:
        for c in open_conns:
            c.close()
    log = limited.process.log_path.read_text(errors="replace")
    assert "node connection limit (6) is reached" in log


@pytest.mark.pier_only
def test_vhost_connection_limit(limited):
    first = limited.connect(vhost="limited")
    try:
        conn = RawConnection(limited.host, limited.port)
        with conn, pytest.raises(AssertionError) as exc:
            conn.handshake(vhost="limited")
        assert ("NOT_ALLOWED - access to vhost 'limited' refused for user 'guest': "
                "connection limit (1) is reached") in str(exc.value)
        assert "'reply_code': 530" in str(exc.value)
        assert "'class_id': 10, 'method_id': 40" in str(exc.value)
    finally:
        first.close()
    # the slot is given back when the connection closes
    time.sleep(0.2)
    limited.connect(vhost="limited").close()


@pytest.mark.pier_only
def test_vhost_queue_limit(limited):
    conn = RawConnection(limited.host, limited.port)
    with conn:
        conn.handshake(vhost="limited")
        conn.open_channel(1)
        conn.rpc(1, "queue.declare", "queue.declare-ok", queue="lq1", exclusive=True)
        conn.rpc(1, "queue.declare", "queue.declare-ok", queue="lq2", exclusive=True)
        # redeclaring an existing queue is fine
        conn.rpc(1, "queue.declare", "queue.declare-ok", queue="lq1", exclusive=True)
        conn.send_method(1, "queue.declare", queue="lq3")
        close = conn.expect("channel.close")
        assert close["reply_code"] == 406
        assert close["reply_text"] == ("PRECONDITION_FAILED - cannot declare queue 'lq3': queue "
                                       "limit in vhost 'limited' (2) is reached")
        assert (close["class_id"], close["method_id"]) == (50, 10)
        conn.send_method(1, "channel.close-ok")
        conn.open_channel(2)
        conn.send_method(2, "queue.declare", queue="", exclusive=True)
        close = conn.expect("channel.close")
        assert close["reply_text"].startswith("PRECONDITION_FAILED - cannot declare queue "
                                              "'amq.gen-")
        conn.send_method(2, "channel.close-ok")
        conn.open_channel(3)
        conn.rpc(3, "queue.delete", "queue.delete-ok", queue="lq2")
        conn.rpc(3, "queue.declare", "queue.declare-ok", queue="lq3", exclusive=True)


@pytest.mark.pier_only
def test_configured_channel_max_frame_max_and_message_size(limited):
    conn = RawConnection(limited.host, limited.port)
    with conn:
        tune = conn.handshake()
        assert (tune["channel_max"], tune["frame_max"]) == (3, 8192)
        for ch in (1, 2, 3):
            conn.open_channel(ch)
        conn.send_method(4, "channel.open")
        close = conn.expect_connection_close()
        assert close["reply_code"] == 530
    conn = RawConnection(limited.host, limited.port)
    with conn:
        conn.handshake()
        conn.open_channel(1)
        conn.publish(1, "", "nowhere", b"x" * 1000)
        conn.publish(1, "", "nowhere", b"x" * 1001)
        close = conn.expect("channel.close")
        assert close["reply_code"] == 406
        assert close["reply_text"] == ("PRECONDITION_FAILED - message size 1001 is larger than "
                                       "configured max size 1000")
