"""Memory a queued message costs, seen from outside (broker RSS)."""

import time

import pika
import pytest

from helpers import rss_bytes

pytestmark = pytest.mark.pier_only

MiB = 1024 * 1024


def test_a_trickle_publisher_pins_no_read_buffers(pier_factory):
    """Bodies are zero-copy slices of the connection's read buffer. A publisher whose messages
    arrive a few per read must not make every queued message keep a whole buffer alive: 20,000
    bodies of 1,000 B (19 MiB) grew RSS by 41 MiB that way (debug build; 67 MB in release),
    against 18-20 MiB now."""
    proc = pier_factory()
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=proc.amqp_port, connection_attempts=1))
    ch = conn.channel()
    ch.queue_declare("trickle")
    time.sleep(0.5)
    before = rss_bytes(proc.proc.pid)
    n, body = 20_000, b"x" * 1000
    for _ in range(n):
        ch.basic_publish("", "trickle", body)
    deadline = time.monotonic() + 30
    while ch.queue_declare("trickle", passive=True).method.message_count < n:
        assert time.monotonic() < deadline, "messages did not arrive"
        time.sleep(0.1)
    growth = rss_bytes(proc.proc.pid) - before
    assert growth < 30 * MiB, f"RSS grew {growth / MiB:.1f} MiB for {n * len(body) / MiB:.1f} MiB of bodies"
    conn.close()
