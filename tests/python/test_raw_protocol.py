"""Raw-socket protocol tests: protocol header negotiation, framing errors,
channel errors and heartbeat enforcement, without any client library."""

import os
import struct
import time

import pytest

from amqp_raw import (FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, PROTOCOL_HEADER,
                      PeerClosed, content_header_payload, decode_method_payload,
                      encode_method_payload, frame, heartbeat_frame, method_frame)


@pytest.fixture
def opened(raw):
    """A raw connection past connection.open-ok with channel 1 open."""
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    return conn


def assert_connection_error(conn, code, text_prefix, class_method=None, wait_close=True):
    """The broker must send connection.close(code, text...) and, after our
    close-ok, close the socket. (After a framing error RabbitMQ cannot parse
    our close-ok and closes the socket after a ~3 s timeout; ``wait_close``
    False skips waiting for that.)"""
    close = conn.expect("connection.close", timeout=10)
    assert close["reply_code"] == code, close.args
    assert close["reply_text"].startswith(text_prefix), close.args
    if class_method is not None:
        assert (close["class_id"], close["method_id"]) == class_method, close.args
    conn.send_method(0, "connection.close-ok")
    if wait_close:
        rest = conn.read_until_closed(timeout=10)
        assert rest == b"" or rest[:1] == bytes([FRAME_HEARTBEAT]), rest
    return close


# --------------------------------------------------------------------------
# protocol header
# --------------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    b"AMQP\x00\x00\x09\x02",
    b"AMQP\x00\x00\x08\x00",
    b"AMQP\x00\x01\x00\x00",  # AMQP 1.0
    b"AMQP\x03\x01\x00\x00",  # AMQP 1.0 SASL
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"HTTP/1.1",
    b"\x16\x03\x01\x02\x00\x01\x00\x01",  # TLS ClientHello start
], ids=["0-9-2", "0-8", "amqp1.0", "amqp1.0-sasl", "http-get", "http", "tls"])
def test_wrong_protocol_header_gets_supported_version_and_close(raw, header):
    conn = raw()
    conn.send(header)
    assert conn.read_until_closed(timeout=10) == PROTOCOL_HEADER


def test_garbage_gets_protocol_header_and_close(raw):
    conn = raw()
    conn.send(bytes(range(200, 256)) + os.urandom(64))
    assert conn.read_until_closed(timeout=10) == PROTOCOL_HEADER


def test_correct_header_gets_connection_start(raw):
    conn = raw()
    conn.send(PROTOCOL_HEADER)
    start = conn.expect("connection.start")
    assert start.channel == 0
    assert (start["version_major"], start["version_minor"]) == (0, 9)
    assert b"PLAIN" in start["mechanisms"].split()


# --------------------------------------------------------------------------
# framing errors (hard errors: connection.close)
# --------------------------------------------------------------------------

def test_bad_frame_end_is_501(opened):
    opened.send(frame(FRAME_METHOD, 1, encode_method_payload("basic.qos", prefetch_count=1),
                      end=0x00))
    assert_connection_error(opened, 501, "FRAME_ERROR", (0, 0))


def test_bad_frame_end_on_channel_zero_is_501(raw):
    conn = raw()
    conn.handshake()
    conn.send(frame(FRAME_METHOD, 0, encode_method_payload("channel.open"), end=0xCF))
    assert_connection_error(conn, 501, "FRAME_ERROR", wait_close=False)


@pytest.mark.parametrize("channel", [0, 1])
def test_unknown_frame_type_is_501(opened, channel):
    opened.send(frame(9, channel, b"abc"))
    assert_connection_error(opened, 501, "FRAME_ERROR")


def test_frame_larger_than_frame_max_is_501(opened):
    frame_max = opened.tune["frame_max"]
    opened.send(frame(FRAME_BODY, 1, b"x" * (frame_max + 100)))
    assert_connection_error(opened, 501, "FRAME_ERROR", wait_close=False)


def test_method_frame_with_truncated_arguments_is_501(opened):
    opened.send(frame(FRAME_METHOD, 1, struct.pack(">HH", 50, 10) + b"\x00"))
    assert_connection_error(opened, 501, "FRAME_ERROR")


def test_malformed_utf8_shortstr_is_501(opened):
    opened.send_method(1, "queue.declare", queue=b"\xff\xfe")
    assert_connection_error(opened, 501, "FRAME_ERROR")


def test_heartbeat_with_payload_is_501(opened):
    opened.send(frame(FRAME_HEARTBEAT, 0, b"xx"))
    assert_connection_error(opened, 501, "FRAME_ERROR")


@pytest.mark.parametrize("channel", [1, 2], ids=["open-channel", "unopened-channel"])
def test_heartbeat_on_nonzero_channel_is_505(opened, channel):
    # AMQP 0-9-1 says 501 FRAME_ERROR; RabbitMQ answers 505 UNEXPECTED_FRAME.
    opened.send(heartbeat_frame(channel))
    assert_connection_error(opened, 505, "UNEXPECTED_FRAME", (0, 0))


@pytest.mark.parametrize("frame_type", [FRAME_BODY, FRAME_HEADER], ids=["body", "header"])
def test_content_frame_without_method_is_505(opened, frame_type):
    payload = b"abc" if frame_type == FRAME_BODY else content_header_payload(3)
    opened.send(frame(frame_type, 1, payload))
    assert_connection_error(opened, 505, "UNEXPECTED_FRAME")


def test_method_frame_while_content_expected_is_505(opened):
    opened.send(method_frame(1, "basic.publish", exchange="", routing_key="x")
                + frame(FRAME_HEADER, 1, content_header_payload(3))
                + method_frame(1, "basic.qos", prefetch_count=1))
    assert_connection_error(opened, 505, "UNEXPECTED_FRAME", (60, 40))


def test_content_header_for_wrong_class_is_505(opened):
    opened.send(method_frame(1, "basic.publish", exchange="", routing_key="x")
                + frame(FRAME_HEADER, 1, content_header_payload(3, class_id=50)))
    assert_connection_error(opened, 505, "UNEXPECTED_FRAME", (60, 40))


def test_unknown_method_closes_connection(opened):
    # RabbitMQ drops the TCP connection without connection.close here; a
    # connection.close (503/540) would be fine too. Either way it must end.
    opened.send(frame(FRAME_METHOD, 1, struct.pack(">HH", 50, 99)))
    try:
        methods = opened.methods_until_closed(timeout=10)
    except TimeoutError:
        pytest.fail("connection still open after an unknown method")
    for method in methods:
        assert method.name == "connection.close", methods
        assert method["reply_code"] in (503, 540), methods


# --------------------------------------------------------------------------
# channel-state errors
# --------------------------------------------------------------------------

def test_method_on_unopened_channel_is_504(raw):
    conn = raw()
    conn.handshake()
    conn.send_method(1, "queue.declare", queue="pier-test-x")
    assert_connection_error(conn, 504, "CHANNEL_ERROR - expected 'channel.open'", (50, 10))


def test_method_on_other_unopened_channel_is_504(opened):
    opened.send_method(5, "basic.qos", prefetch_count=1)
    assert_connection_error(opened, 504, "CHANNEL_ERROR - expected 'channel.open'", (60, 10))


def test_second_channel_open_is_504(opened):
    opened.send_method(1, "channel.open")
    assert_connection_error(opened, 504, "CHANNEL_ERROR - second 'channel.open' seen", (20, 10))


def test_non_connection_method_on_channel_zero_is_504(raw):
    conn = raw()
    conn.handshake()
    conn.send_method(0, "queue.declare", queue="pier-test-x")
    assert_connection_error(conn, 504, "CHANNEL_ERROR - unexpected method in connection "
                                       "state running", (50, 10))


def test_unexpected_connection_method_after_open_is_504(raw):
    conn = raw()
    conn.handshake()
    conn.send_method(0, "connection.tune-ok", channel_max=10, frame_max=131072, heartbeat=0)
    assert_connection_error(conn, 504, "CHANNEL_ERROR - unexpected method in connection "
                                       "state running", (10, 31))


def test_tx_commit_without_select_is_406_channel_error(opened):
    opened.send_method(1, "tx.commit")
    close = opened.expect("channel.close")
    assert close["reply_code"] == 406
    assert close["reply_text"] == "PRECONDITION_FAILED - channel is not transactional"
    opened.send_method(1, "channel.close-ok")


# --------------------------------------------------------------------------
# heartbeats
# --------------------------------------------------------------------------

def test_silent_client_is_dropped_after_missed_heartbeats(raw):
    """heartbeat=1 negotiated, client never sends anything: the broker gives
    up after about two missed intervals (RabbitMQ: ~3 s) and closes."""
    conn = raw()
    conn.handshake(heartbeat=1)
    start = time.monotonic()
    frames = []
    try:
        while True:
            frames.append(conn.read_frame(timeout=10))
    except PeerClosed:
        pass
    except TimeoutError:
        pytest.fail("broker did not drop a client that sent no heartbeats for 10 s")
    elapsed = time.monotonic() - start
    assert 1.5 <= elapsed <= 6.0, f"dropped after {elapsed:.1f}s"
    for fr in frames:
        if fr.type == FRAME_HEARTBEAT:
            continue
        assert fr.type == FRAME_METHOD
        assert decode_method_payload(fr.payload).name == "connection.close"


def test_no_heartbeat_means_no_timeout(raw):
    conn = raw()
    conn.handshake(heartbeat=0)
    time.sleep(2.0)
    conn.open_channel(1)  # still alive
