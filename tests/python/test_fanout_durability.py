"""A persistent message routed to several durable queues is stored once per store shard (one
record with a reference per queue of that shard): with one shard disk use is ~1x the payload,
not once per queue, with the queues spread over two shards ~2x; each queue keeps its own acks
across a restart (SIGTERM) or a crash (SIGKILL); segments are reclaimed once every queue
acked."""

import time

import pika
import pytest

from conftest import PIER_CONFIG

pytestmark = pytest.mark.pier_only

PERSISTENT = pika.BasicProperties(delivery_mode=2)
COUNT = 1000
SIZE = 1024
QUEUES = ("fan.a", "fan.b", "fan.c")


def _connect(proc):
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=proc.amqp_port, connection_attempts=1, socket_timeout=10))


def _body(i):
    head = f"m{i:05d}:".encode()
    return head + bytes([i % 251]) * (SIZE - len(head))


def _segment_bytes(proc):
    # The vhost "/" lives in msgs/2f (hex of its name): shard 0 there, shard N in shard-NN.
    return sum(p.stat().st_size for p in proc.data_dir.glob("msgs/2f/**/*.seg"))


def _get_n(ch, queue, n):
    """Takes n messages with manual ack; returns the last delivery tag."""
    tag = None
    for i in range(n):
        method, _, body = ch.basic_get(queue)
        assert method is not None, f"{queue}: only {i} of {n}"
        tag = method.delivery_tag
    return tag


def _drain(ch, queue):
    got = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((body, method.redelivered))


@pytest.mark.parametrize("stop,shards", [("sigterm", 1), ("sigkill", 1), ("sigterm", 2),
                                         ("sigkill", 2)])
def test_fanout_stores_once_and_keeps_per_queue_acks(pier_factory, stop, shards):
    # A top-level key: before the config's tables.
    proc = pier_factory(f"store_shards = {shards}\n" + PIER_CONFIG)
    conn = _connect(proc)
    ch = conn.channel()
    ch.exchange_declare("fan.x", "fanout", durable=True)
    for q in QUEUES:
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "fan.x")
    # A transient queue on the same exchange: its copy is never stored.
    ch.queue_declare("fan.t", durable=False)
    ch.queue_bind("fan.t", "fan.x")
    ch.confirm_delivery()
    before = _segment_bytes(proc)
    for i in range(COUNT):
        ch.basic_publish("fan.x", "", _body(i), properties=PERSISTENT)  # returns once confirmed
    written = _segment_bytes(proc) - before
    payload = COUNT * SIZE
    print(f"{COUNT} x {SIZE} B to {len(QUEUES)} durable queues on {shards} shard(s): {written} "
          f"segment bytes ({written / payload:.2f}x the payload)")
    # Queues are spread over the shards (fewest queues first): one record per shard used.
    records = min(shards, len(QUEUES))
    assert records * payload <= written < records * 1.2 * payload, \
        "one record per message and shard, not one per queue"

    # fan.a acks everything, fan.b 300 (and holds 100 more unacked), fan.c nothing.
    ch.basic_ack(_get_n(ch, "fan.a", COUNT), multiple=True)
    _get_n(ch, "fan.b", 300)
    ch.basic_ack(300 + COUNT, multiple=True)  # tags run on across the channel's gets
    _get_n(ch, "fan.b", 100)
    assert ch.queue_declare("fan.a", passive=True).method.message_count == 0
    assert ch.queue_declare("fan.t", passive=True).method.message_count == COUNT
    if stop == "sigkill":
        # Acks are written at once but synced lazily (1 s): let them reach the files.
        time.sleep(1.5)
        proc.kill()
    else:
        conn.close()
        assert proc.terminate() == 0, proc.log_tail()
    proc.start()

    conn = _connect(proc)
    ch = conn.channel()
    counts = {q: ch.queue_declare(q, durable=True, passive=True).method.message_count
              for q in QUEUES}
    assert counts == {"fan.a": 0, "fan.b": COUNT - 300, "fan.c": COUNT}
    b = _drain(ch, "fan.b")
    assert [m for m, _ in b] == [_body(i) for i in range(300, COUNT)]
    # Delivered marks are per queue: fan.b's 100 unacked come back redelivered, nothing else.
    assert [r for _, r in b] == [True] * 100 + [False] * (COUNT - 400)
    c = _drain(ch, "fan.c")
    assert [m for m, _ in c] == [_body(i) for i in range(COUNT)]
    assert not any(r for _, r in c)
    assert _drain(ch, "fan.a") == []

    # Every queue acked: the recovered segment holding the shared records is deleted.
    deadline = time.monotonic() + 10
    while _segment_bytes(proc) > payload / 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _segment_bytes(proc) <= payload / 10, sorted(
        (str(p), p.stat().st_size) for p in proc.data_dir.glob("msgs/2f/**/*"))
    conn.close()
    assert proc.terminate() == 0
    proc.start()
    conn = _connect(proc)
    ch = conn.channel()
    for q in QUEUES:
        assert ch.queue_declare(q, durable=True, passive=True).method.message_count == 0
    conn.close()


def test_purging_or_deleting_one_fanout_queue_keeps_the_others(pier_factory):
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    ch.exchange_declare("fan.p", "fanout", durable=True)
    for q in ("fp.a", "fp.b", "fp.c"):
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "fan.p")
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("fan.p", "", _body(i), properties=PERSISTENT)
    assert ch.queue_purge("fp.a").method.message_count == 50
    ch.queue_delete("fp.c")
    conn.close()
    assert proc.terminate() == 0
    proc.start()
    conn = _connect(proc)
    ch = conn.channel()
    assert ch.queue_declare("fp.a", durable=True, passive=True).method.message_count == 0
    assert [m for m, _ in _drain(ch, "fp.b")] == [_body(i) for i in range(50)]
    conn.close()
