"""Per-connection credit: a connection whose persistent publishes are not yet on disk stops being
read (RabbitMQ's ``credit_flow``; management shows its state as ``flow``).

Pier runs with ``fsync = "1000ms"``, so a persistent message waits up to a second for the disk.
A raw publisher floods 64 KiB persistent messages into a durable queue in confirm mode as fast
as the broker reads them. With credit, the broker reads about one credit window (8 MiB) per
fsync, management shows the connection in state ``flow``, memory stays flat, and another
connection still gets a publish and a get answered promptly. Afterwards every confirmed message
is in the queue. Without credit the flooder would push hundreds of MiB a second into the queue.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import pika
import pytest

from amqp_raw import Flooder, RawConnection
from conftest import PIER_CONFIG, Broker, PierProcess
from helpers import rss_bytes

BODY = 64 * 1024
CREDIT_BYTES = 8 * 1024 * 1024  # HIGH_WATER_BYTES in crates/pier-server/src/credit.rs


@pytest.fixture
def slow_disk_pier(tmp_path):
    from conftest import EXTERNAL_URL
    if EXTERNAL_URL:
        pytest.skip("needs a Pier process with a slow fsync policy")
    proc = PierProcess(tmp_path / "pier-credit", 'fsync = "1000ms"\n' + PIER_CONFIG).start()
    try:
        yield Broker(host="127.0.0.1", port=proc.amqp_port, process=proc)
    finally:
        proc.terminate()
        assert "panicked" not in proc.log_path.read_text(errors="replace")


def connection_states(pier) -> list[str]:
    req = urllib.request.Request(f"http://127.0.0.1:{pier.process.http_port}/api/connections")
    req.add_header("authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return [c["state"] for c in json.loads(resp.read())]


@pytest.mark.pier_only
def test_persistent_flood_is_throttled_by_credit(slow_disk_pier):
    pier = slow_disk_pier
    pid = pier.process.proc.pid
    queue = "credit-flood"
    publisher = RawConnection(pier.host, pier.port, timeout=30)
    publisher.handshake()
    publisher.open_channel(1)
    publisher.rpc(1, "queue.declare", "queue.declare-ok", queue=queue, durable=True)
    publisher.rpc(1, "confirm.select", "confirm.select-ok")
    rss_before = rss_bytes(pid)

    flooder = Flooder(publisher.sock, queue, b"p" * BODY, publisher.frame_max, delivery_mode=2)
    flooder.start()
    try:
        # Management shows the publisher in flow.
        deadline = time.monotonic() + 20
        seen_flow = False
        while time.monotonic() < deadline and not seen_flow:
            seen_flow = "flow" in connection_states(pier)
            time.sleep(0.05)
        assert seen_flow, "the flooding connection never showed state 'flow'"

        # Over 3 s (three fsync periods) the broker takes in about a credit window per
        # fsync, not whatever the client pushes.
        sent_before = flooder.sent
        peak = 0
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            time.sleep(0.1)
            peak = max(peak, rss_bytes(pid))
        taken = (flooder.sent - sent_before) * BODY
        assert flooder.is_alive(), flooder.error
        assert taken < 8 * CREDIT_BYTES, f"{taken} bytes read in 3 s despite credit"
        assert peak < rss_before + 160 * 1024 * 1024, f"RSS grew {rss_before} -> {peak}"

        # Another connection is served meanwhile: a publish and a get round trip.
        started = time.monotonic()
        other = pika.BlockingConnection(pika.ConnectionParameters(
            host=pier.host, port=pier.port, blocked_connection_timeout=10))
        try:
            ch = other.channel()
            ch.queue_declare("credit-bystander")
            ch.basic_publish("", "credit-bystander", b"hello")
            method, _props, body = ch.basic_get("credit-bystander", auto_ack=True)
            assert method is not None and body == b"hello"
        finally:
            other.close()
        assert time.monotonic() - started < 5.0, "a bystander waited behind the flood"
    finally:
        flooder.stop.set()
    flooder.join(30)
    assert not flooder.is_alive() and flooder.error is None, flooder.error

    # Every publish is confirmed once on disk; then every one of them is in the queue.
    confirmed = 0
    deadline = time.monotonic() + 30
    while confirmed < flooder.sent:
        m = publisher.read_method(timeout=max(0.1, deadline - time.monotonic()))
        assert m.name == "basic.ack", (m.name, m.args)
        confirmed = m["delivery_tag"] if m["multiple"] else max(confirmed, m["delivery_tag"])
    assert confirmed == flooder.sent
    ok = publisher.rpc(1, "queue.declare", "queue.declare-ok", queue=queue, durable=True,
                       passive=True)
    assert ok["message_count"] == confirmed
    # The connection is back to running once the disk caught up (flow lingers ~1 s).
    time.sleep(1.5)
    assert connection_states(pier) == ["running"]
    got = publisher.rpc(1, "basic.get", "basic.get-ok", queue=queue, no_ack=True)
    assert got.body == b"p" * BODY
    publisher.close()
