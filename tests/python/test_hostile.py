"""Hostile input: malformed and abusive traffic on raw sockets. Each case gets the right
close code or a dropped socket, the broker never panics, and a well-behaved client (a pika
connection publishing and getting messages in a background thread) keeps working throughout.

Cases already covered by test_raw_protocol.py (bad frame end, unknown frame type, a frame
over frame_max, truncated arguments, bad UTF-8, content without a method on an open channel,
unknown method of a known class, methods on unopened channels, missed heartbeats) are not
repeated here.

RabbitMQ 3.10.8, observed: content frames on an unopened channel are 505 ``UNEXPECTED_FRAME -
expected method frame, got non method frame instead``; an unknown class, an unknown field
type or an absurd long-string length make it drop the socket; tables nested 15,000 deep are
accepted; a body longer than its header announced gets no answer at all (Pier closes with
501). Pier refuses field tables nested deeper than 64 levels with 501.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import pika
import pytest

from amqp_raw import (FRAME_BODY, FRAME_HEADER, FRAME_METHOD, PROTOCOL_HEADER, PeerClosed,
                      RawConnection, content_header_payload, enc_shortstr, frame,
                      heartbeat_frame, method_frame, plain_response, encode_method_payload)


# --------------------------------------------------------------------------- the canary


class Canary(threading.Thread):
    """A well-behaved client: publish one message and get it back, over and over."""

    def __init__(self, broker):
        super().__init__(daemon=True)
        self.broker = broker
        self.stop = threading.Event()
        self.rounds = 0
        self.errors: list[str] = []
        self.slowest = 0.0

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.is_closed:
                    conn = self.broker.connect(heartbeat=10)
                    ch = conn.channel()
                    queue = ch.queue_declare("", exclusive=True).method.queue
                start = time.monotonic()
                ch.basic_publish("", queue, b"canary")
                for _ in range(100):
                    method, _props, body = ch.basic_get(queue, auto_ack=True)
                    if method is not None:
                        break
                    conn.sleep(0.01)
                assert method is not None and body == b"canary", "canary message lost"
                self.slowest = max(self.slowest, time.monotonic() - start)
                self.rounds += 1
                conn.sleep(0.02)
            except Exception as e:  # noqa: BLE001 - recorded, reported by the last test
                self.errors.append(repr(e))
                conn = None
                time.sleep(0.2)
        if conn is not None and conn.is_open:
            conn.close()


@pytest.fixture(scope="module", autouse=True)
def canary(broker):
    c = Canary(broker)
    c.start()
    yield c
    c.stop.set()
    c.join(10)


def healthy(canary: Canary, since: int, timeout: float = 10.0) -> None:
    """The canary completed new rounds since `since` and has seen no error."""
    deadline = time.monotonic() + timeout
    while canary.rounds <= since + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not canary.errors, canary.errors
    assert canary.rounds > since + 2, "the well-behaved client made no progress"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def opened(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    return conn


def ends(conn: RawConnection, codes: tuple[int, ...], timeout: float = 10.0):
    """The broker closes the connection with one of `codes`, or just drops the socket.
    Returns the connection.close (or None)."""
    try:
        while True:
            method = conn.read_method(timeout)
            if method.name == "connection.close":
                assert method["reply_code"] in codes, method.args
                return method
    except PeerClosed:
        return None


QUEUE_DECLARE_PREFIX = (struct.pack(">HH", 50, 10) + struct.pack(">H", 0)
                        + enc_shortstr("pier-hostile-q") + bytes([0]))


def queue_declare_with_table(table: bytes) -> bytes:
    """queue.declare of a non-durable queue whose arguments are the raw `table` (with its
    length prefix)."""
    return frame(FRAME_METHOD, 1, QUEUE_DECLARE_PREFIX + table)


@pytest.fixture
def cleanup_queue(broker):
    yield
    conn = broker.connect()
    try:
        conn.channel().queue_delete("pier-hostile-q")
    finally:
        conn.close()


# --------------------------------------------------------------------------- cases


def test_garbage_before_a_valid_header(raw, canary):
    since = canary.rounds
    conn = raw()
    conn.send(b"\x00\x01garbage\r\n" + PROTOCOL_HEADER)
    assert conn.read_until_closed(timeout=10) == PROTOCOL_HEADER
    healthy(canary, since)


@pytest.mark.parametrize("frame_type", [FRAME_HEADER, FRAME_BODY], ids=["header", "body"])
def test_content_frames_on_an_unopened_channel(opened, frame_type, canary):
    since = canary.rounds
    payload = content_header_payload(3) if frame_type == FRAME_HEADER else b"abc"
    opened.send(frame(frame_type, 5, payload))
    close = ends(opened, (505,))
    assert close is not None and close["reply_text"].startswith("UNEXPECTED_FRAME")
    healthy(canary, since)


@pytest.mark.pier_only
def test_body_longer_than_its_header_announced(opened, canary):
    since = canary.rounds
    opened.send(method_frame(1, "basic.publish", exchange="", routing_key="pier-hostile")
                + frame(FRAME_HEADER, 1, content_header_payload(3))
                + frame(FRAME_BODY, 1, b"abcdef"))
    close = ends(opened, (501,))
    assert close is not None
    assert close["reply_text"] == "FRAME_ERROR - content body exceeds the announced size of 3 bytes"
    healthy(canary, since)


@pytest.mark.parametrize("channel", [0, 1])
def test_unknown_class(opened, channel, canary):
    since = canary.rounds
    opened.send(frame(FRAME_METHOD, channel, struct.pack(">HH", 99, 10)))
    ends(opened, (503, 540))
    healthy(canary, since)


def test_invalid_field_table_type(opened, canary, cleanup_queue):
    since = canary.rounds
    body = enc_shortstr("x-bad") + b"X" + b"\x00\x00"
    opened.send(queue_declare_with_table(struct.pack(">I", len(body)) + body))
    ends(opened, (501,))
    healthy(canary, since)


@pytest.mark.parametrize("kind", ["tables", "arrays"])
def test_deeply_nested_field_values(opened, kind, canary, cleanup_queue):
    """~15,000 levels in one frame: Pier refuses more than 64 (501) without exhausting its
    stack; RabbitMQ accepts them."""
    since = canary.rounds
    if kind == "tables":
        table = struct.pack(">I", 0)
        while len(table) < 100_000:
            body = enc_shortstr("a") + b"F" + table
            table = struct.pack(">I", len(body)) + body
    else:
        value = b"A" + struct.pack(">I", 0)
        while len(value) < 100_000:
            value = b"A" + struct.pack(">I", len(value)) + value
        body = enc_shortstr("x") + value
        table = struct.pack(">I", len(body)) + body
    opened.send(queue_declare_with_table(table))
    reply = opened.read_method(timeout=10)
    if reply.name == "queue.declare-ok":
        assert broker_is_external(opened)
    else:
        assert reply.name == "connection.close", reply.args
        assert reply["reply_code"] == 501
        assert "nested too deeply" in reply["reply_text"]
    healthy(canary, since)


def broker_is_external(conn: RawConnection) -> bool:
    product = conn.start["server_properties"].get("product", b"")
    return product not in (b"Pier", "Pier")


def test_huge_short_string_length(opened, canary):
    since = canary.rounds
    opened.send(frame(FRAME_METHOD, 1, struct.pack(">HH", 50, 10) + struct.pack(">H", 0)
                      + bytes([255]) + b"abc"))
    ends(opened, (501,))
    healthy(canary, since)


def test_huge_long_string_length(opened, canary, cleanup_queue):
    """A long string claiming 4 GB inside a small frame: no allocation of that size."""
    since = canary.rounds
    body = enc_shortstr("k") + b"S" + struct.pack(">I", 0xFFFFFFF0) + b"abc"
    opened.send(queue_declare_with_table(struct.pack(">I", len(body)) + body))
    ends(opened, (501,))
    opened.close()
    conn2 = RawConnection(opened.host, opened.port)
    with conn2:
        conn2.handshake()
        conn2.open_channel(1)
        body = enc_shortstr("k") + b"x"
        conn2.send(queue_declare_with_table(struct.pack(">I", 0xFFFFFFFF) + body))
        ends(conn2, (501,))
    healthy(canary, since)


def test_frame_announcing_a_huge_size(opened, canary):
    """A frame header announcing ~4 GB is refused at once, not waited for or allocated."""
    since = canary.rounds
    opened.send(struct.pack(">BHI", FRAME_BODY, 1, 0xFFFFFFF0) + b"abc")
    start = time.monotonic()
    ends(opened, (501,))
    assert time.monotonic() - start < 5
    healthy(canary, since)


def test_heartbeat_flood(opened, canary):
    """200,000 heartbeats in a burst: nothing to answer, the connection keeps working."""
    since = canary.rounds
    burst = heartbeat_frame() * 10_000
    for _ in range(20):
        opened.send(burst)
    reply = opened.rpc(1, "queue.declare", "queue.declare-ok", queue="", exclusive=True)
    assert reply["queue"].startswith("amq.gen-")
    healthy(canary, since)


def test_slowloris_handshake(broker, canary):
    """A client dribbling its handshake one byte per 100 ms is dropped by the handshake
    timeout (10 s) however long it keeps dribbling."""
    since = canary.rounds
    start_ok = method_frame(0, "connection.start-ok", client_properties={"product": "slowloris " * 8},
                            mechanism="PLAIN", response=plain_response("guest", "guest"),
                            locale="en_US")
    data = PROTOCOL_HEADER + start_ok
    assert len(data) * 0.1 > 12, "the dribble must outlast the timeout"
    with socket.create_connection((broker.host, broker.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.monotonic()
        dropped_after = None
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.1)
                try:
                    if sock.recv(65536) == b"":
                        dropped_after = time.monotonic() - start
                        break
                except socket.timeout:
                    pass
            except (BrokenPipeError, ConnectionResetError):
                dropped_after = time.monotonic() - start
                break
        assert dropped_after is not None, "the slow client was never dropped"
    assert 8 <= dropped_after <= 13, dropped_after
    healthy(canary, since)


def pier_fd_count(broker) -> int:
    return len(os.listdir(f"/proc/{broker.process.proc.pid}/fd"))


def pier_rss(broker) -> int:
    status = Path(f"/proc/{broker.process.proc.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.pier_only
def test_two_thousand_half_open_connections(broker, canary):
    """2,000 sockets that connect and stall (half of them after a partial protocol header):
    Pier holds them cheaply, keeps serving, and gives everything back when they go."""
    since = canary.rounds
    fds_before = pier_fd_count(broker)
    rss_before = pier_rss(broker)
    socks: list[socket.socket] = []
    try:
        for i in range(2000):
            s = socket.create_connection((broker.host, broker.port), timeout=5)
            if i % 2:
                s.send(b"AMQP")
            socks.append(s)
        # Served while they stall: a fresh client, and the canary.
        conn = broker.connect()
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"still here")
        assert ch.basic_get(q, auto_ack=True)[2] == b"still here"
        conn.close()
        healthy(canary, since)
        deadline = time.monotonic() + 10
        while pier_fd_count(broker) < fds_before + 1900 and time.monotonic() < deadline:
            time.sleep(0.1)
        held_rss = pier_rss(broker)
        assert held_rss - rss_before < 64 * 1024 * 1024, (rss_before, held_rss)
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while pier_fd_count(broker) > fds_before + 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pier_fd_count(broker) <= fds_before + 20, "sockets were not released"


def test_well_behaved_client_kept_working_throughout(canary, broker):
    healthy(canary, canary.rounds)
    assert canary.slowest < 5.0, f"a canary round took {canary.slowest:.1f} s"
    if broker.process is not None:
        log = broker.process.log_path.read_text(errors="replace")
        assert "panicked" not in log
