"""Connection negotiation: server properties, capabilities, tuning, heartbeats."""

import socket
import time

import pika
import pytest

from amqp_raw import FRAME_HEARTBEAT, RawConnection, heartbeat_frame
from conftest import PIER_CONFIG, PierProcess
from helpers import MgmtApi


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


def test_broker_leaves_closing_the_socket_to_the_client_after_close_ok(raw):
    # RabbitMQ answers connection.close with close-ok and then waits for the client to close
    # the socket. A client may still be writing then (amqplib flushes publishes it queued
    # before close); had the broker closed first, those writes would meet a reset and the
    # client would report an error for a clean close.
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.send_method(0, "connection.close", reply_code=200, reply_text="bye")
    conn.expect("connection.close-ok")
    conn.publish(1, "", "pier-test-after-close", b"late")
    with pytest.raises(TimeoutError):
        conn.read_frame(timeout=1.0)  # no EOF, no reset: the socket is still open
    # Once the client has closed, so does the broker (RabbitMQ with a reset: it sets
    # SO_LINGER 0 on its sockets).
    conn.sock.shutdown(socket.SHUT_WR)
    conn.sock.settimeout(10)
    try:
        assert conn.sock.recv(4096) == b""
    except ConnectionResetError:
        pass


def _loopback_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def default_listener(broker, tmp_path):
    """(port, Pier process or None) of a broker on its default listener: the external broker
    (RabbitMQ listens on [::] by default), or a private Pier started without --bind."""
    if broker.external:
        if broker.host not in ("127.0.0.1", "localhost", "::1"):
            pytest.skip("the external broker is not on this machine")
        yield broker.port, None
        return
    proc = PierProcess(tmp_path / "pier-default-listener", bind=None).start()
    try:
        yield proc.amqp_port, proc
    finally:
        proc.kill()


@pytest.mark.parametrize("host", ["::1", "127.0.0.1", "localhost"])
def test_default_listener_accepts_ipv6_and_ipv4_clients(broker, default_listener, host):
    # amqplib's tests connect to amqp://[::1] and to localhost (which Node may resolve to ::1).
    if host == "::1" and not _loopback_ipv6():
        pytest.skip("this machine has no IPv6 loopback")
    port, _proc = default_listener
    # guest is a loopback-only user: an IPv4 client on the dual-stack socket must still count
    # as 127.0.0.1, not ::ffff:127.0.0.1.
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=host, port=port, virtual_host=broker.vhost,
        credentials=pika.PlainCredentials(broker.user, broker.password),
        connection_attempts=1, socket_timeout=10))
    try:
        assert conn.channel().queue_declare("", exclusive=True).method.queue
    finally:
        conn.close()


@pytest.mark.pier_only
def test_default_management_listener_lets_guest_in_from_ipv4_loopback(default_listener):
    _port, proc = default_listener
    assert MgmtApi(proc.http_port).get("/whoami")["name"] == "guest"


@pytest.mark.pier_only
def test_bind_narrows_the_listener_to_one_address(broker):
    if not _loopback_ipv6():
        pytest.skip("this machine has no IPv6 loopback")
    # The shared Pier runs with --bind 127.0.0.1.
    with pytest.raises(OSError):
        socket.create_connection(("::1", broker.port), timeout=5).close()


@pytest.mark.pier_only
def test_advertised_product_and_version_can_be_configured(pier_factory):
    # For client code that switches on product == "RabbitMQ" (docs: README, "Server
    # properties"); Pier's own name is the default.
    default = pier_factory()
    proc = pier_factory(PIER_CONFIG + '\n[server_properties]\nproduct = "RabbitMQ"\n'
                                      'version = "3.10.8"\n')
    for p, product, version in ((default, "Pier", None), (proc, "RabbitMQ", "3.10.8")):
        conn = RawConnection("127.0.0.1", p.amqp_port, timeout=10)
        try:
            conn.handshake()
            props = conn.start["server_properties"]
        finally:
            conn.close()
        assert props["product"] == product
        if version is not None:
            assert props["version"] == version
