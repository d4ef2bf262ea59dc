"""Flow control: resource alarms block publishers, as in RabbitMQ.

A Pier with a tiny memory high watermark is flooded with publishes until its memory alarm is
set: the publishing connection gets ``connection.blocked`` (reason ``low on memory``) and is no
longer read, so Pier's memory stays bounded however hard the client pushes; a consumer on
another connection keeps draining the queue, and once memory is back under the watermark the
publisher gets ``connection.unblocked`` and is read again.

RabbitMQ 3.10.8, observed with ``rabbitmqctl set_vm_memory_high_watermark absolute 1000000``:
a connection that publishes gets ``connection.blocked`` with reason ``'low on memory'``; a
connection that has not published gets nothing; ``connection.unblocked`` follows when the
alarm clears.
"""

from __future__ import annotations

import time

import pytest

from amqp_raw import Flooder, RawConnection
from conftest import PIER_CONFIG, Broker, PierProcess
from helpers import rss_bytes

WATERMARK = 64 * 1024 * 1024

FLOW_CONFIG = f"""
vm_memory_high_watermark.absolute = {WATERMARK}
""" + PIER_CONFIG


@pytest.fixture
def flow_pier(tmp_path):
    from conftest import EXTERNAL_URL
    if EXTERNAL_URL:
        pytest.skip("needs a Pier process with a tiny memory watermark")
    proc = PierProcess(tmp_path / "pier-flow", FLOW_CONFIG).start()
    try:
        yield Broker(host="127.0.0.1", port=proc.amqp_port, process=proc)
    finally:
        proc.terminate()
        assert "panicked" not in proc.log_path.read_text(errors="replace")


@pytest.mark.pier_only
def test_memory_alarm_blocks_publishers_and_unblocks_after_draining(flow_pier):
    pid = flow_pier.process.proc.pid
    queue = "flood"
    publisher = RawConnection(flow_pier.host, flow_pier.port, timeout=60)
    publisher.handshake()
    publisher.open_channel(1)
    publisher.rpc(1, "queue.declare", "queue.declare-ok", queue=queue)
    # A connection that never publishes is not blocked.
    bystander = RawConnection(flow_pier.host, flow_pier.port, timeout=5)
    bystander.handshake()
    bystander.open_channel(1)

    flooder = Flooder(publisher.sock, queue, b"m" * (256 * 1024), publisher.frame_max)
    flooder.start()
    try:
        blocked = publisher.read_method(timeout=60)
        assert blocked.name == "connection.blocked", (blocked.name, blocked.args)
        assert blocked["reason"] == "low on memory"
        # Pier no longer reads the publisher: memory stays bounded while it keeps pushing.
        # (It overshoots the watermark by what arrived before the alarm was noticed: memory is
        # sampled every 50 ms.) Memory can also fall back under the watermark on its own while
        # blocked (the allocator returns pages), and then the alarm rightly clears and the
        # publisher is read again until the next one: a window that sees `connection.unblocked`
        # proves nothing and is measured again after the next `connection.blocked`.
        for _attempt in range(5):
            time.sleep(0.2)
            sent_at_block = flooder.sent
            rss_at_block = rss_bytes(pid)
            peak = 0
            unblocked = None
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    unblocked = publisher.read_method(timeout=0.1)
                    break
                except TimeoutError:
                    peak = max(peak, rss_bytes(pid))
            if unblocked is None:
                break
            assert unblocked.name == "connection.unblocked", (unblocked.name, unblocked.args)
            blocked = publisher.read_method(timeout=60)
            assert blocked.name == "connection.blocked", (blocked.name, blocked.args)
        else:
            pytest.fail("the memory alarm never stayed set for 2 s")
        assert flooder.is_alive(), flooder.error
        assert flooder.sent - sent_at_block < 100, "publisher kept being read while blocked"
        assert peak < rss_at_block + 32 * 1024 * 1024, f"RSS grew to {peak} while blocked"
        assert peak < 8 * WATERMARK, f"RSS {peak} while blocked"
        # The bystander was never blocked and still works.
        bystander.rpc(1, "queue.declare", "queue.declare-ok", queue=queue, passive=True)
    finally:
        flooder.stop.set()

    # A consumer on another connection drains the queue; the alarm then clears.
    consumer = flow_pier.connect()
    try:
        ch = consumer.channel()
        drained = 0
        while True:
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            drained += 1
        assert drained > 0
        unblocked = publisher.read_method(timeout=30)
        assert unblocked.name == "connection.unblocked", (unblocked.name, unblocked.args)
        flooder.join(10)
        assert not flooder.is_alive() and flooder.error is None, flooder.error
        # The publish that was cut short has landed since; it may have set the alarm once
        # more (memory had only just fallen under the watermark): drain it too.
        while ch.basic_get(queue, auto_ack=True)[0] is not None:
            pass
    finally:
        consumer.close()
    # The publisher is read again: a round trip (past a blocked/unblocked pair that the
    # last publish may have caused).
    publisher.send_method(1, "queue.declare", queue=queue, passive=True)
    for _ in range(5):
        reply = publisher.read_method(timeout=30)
        if reply.name not in ("connection.blocked", "connection.unblocked"):
            break
    assert reply.name == "queue.declare-ok", (reply.name, reply.args)
    publisher.close()
    bystander.close()
    log = flow_pier.process.log_path.read_text(errors="replace")
    assert "memory resource limit alarm set" in log
    assert "memory resource limit alarm cleared" in log
    assert "connection blocked: low on memory" in log


@pytest.fixture
def disk_pier(tmp_path):
    from conftest import EXTERNAL_URL
    if EXTERNAL_URL:
        pytest.skip("needs a Pier process with an unreachable disk free limit")
    config = "disk_free_limit.absolute = 1000000000000000000\n" + PIER_CONFIG
    proc = PierProcess(tmp_path / "pier-disk", config).start()
    try:
        yield Broker(host="127.0.0.1", port=proc.amqp_port, process=proc)
    finally:
        proc.terminate()
        assert "panicked" not in proc.log_path.read_text(errors="replace")


@pytest.mark.pier_only
def test_disk_alarm_blocks_publishers_only(disk_pier):
    """With the disk free limit above the free space, the disk alarm is set from the start:
    a publisher is blocked after its first publish; other connections keep working."""
    consumer = RawConnection(disk_pier.host, disk_pier.port, timeout=5)
    consumer.handshake()
    consumer.open_channel(1)
    consumer.rpc(1, "queue.declare", "queue.declare-ok", queue="dq")
    consumer.rpc(1, "basic.consume", "basic.consume-ok", queue="dq", consumer_tag="c",
                 no_ack=True)
    publisher = RawConnection(disk_pier.host, disk_pier.port, timeout=5)
    publisher.handshake()
    publisher.open_channel(1)
    publisher.publish(1, "", "dq", b"first")
    blocked = publisher.read_method()
    assert blocked.name == "connection.blocked"
    assert blocked["reason"] == "low on disk"
    # The publish that blocked the connection was taken, as in RabbitMQ.
    deliver = consumer.expect("basic.deliver")
    assert deliver.body == b"first"
    # The blocked connection is not read: its next request gets no answer...
    publisher.send_method(1, "queue.declare", queue="dq", passive=True)
    with pytest.raises(TimeoutError):
        publisher.read_method(timeout=1.0)
    # ...while the consumer's connection is served.
    consumer.rpc(1, "queue.declare", "queue.declare-ok", queue="dq", passive=True)
    # A client without the connection.blocked capability is blocked without being told.
    quiet = RawConnection(disk_pier.host, disk_pier.port, timeout=5)
    quiet.handshake(capabilities={"connection.blocked": False})
    quiet.open_channel(1)
    quiet.publish(1, "", "dq", b"second")
    consumer.expect("basic.deliver")
    # (Pier handles what it has already read when it blocks: send the next request later.)
    quiet.send_method(1, "queue.declare", queue="dq", passive=True)
    with pytest.raises(TimeoutError):
        quiet.read_method(timeout=1.0)
    for c in (consumer, publisher, quiet):
        c.close()
    log = disk_pier.process.log_path.read_text(errors="replace")
    assert "disk resource limit alarm set" in log
    # Management reports the alarm (503 from the health check, as RabbitMQ).
    status, body = mgmt_get(disk_pier, "/api/health/checks/alarms")
    assert status == 503
    assert body["status"] == "failed"
    assert [a["resource"] for a in body["alarms"]] == ["disk"]
    status, nodes = mgmt_get(disk_pier, "/api/nodes")
    assert status == 200 and nodes[0]["disk_free_alarm"] is True
    assert nodes[0]["mem_alarm"] is False


def mgmt_get(pier, path: str):
    import base64
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{pier.process.http_port}{path}")
    req.add_header("authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
