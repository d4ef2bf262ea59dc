"""Paging to disk under memory pressure: messages that are not stored durably (transient
messages, non-durable queues) are spilled to `<data dir>/paging/` once a queue holds more than
its in-memory budget of bodies, read back in order as the queue drains, and the spill files are
reclaimed. The paging directory is scratch space: it is wiped at start, so a transient message
paged out of a durable queue never comes back after a restart."""

import os
import random
import time

import pika
import pytest

pytestmark = pytest.mark.pier_only

MiB = 1024 * 1024
# One random block; message i is a slice of it (cheap to build and to check).
_BLOCK = random.Random(7).randbytes(256 * 1024)


def _body(i: int, size: int) -> bytes:
    start = (i * 7919) % (len(_BLOCK) - size)
    return i.to_bytes(4, "big") + _BLOCK[start:start + size - 4]


def _sizes(n: int, seed: int = 11) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.randint(1024, 64 * 1024) for _ in range(n)]


def _connect(proc):
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=proc.amqp_port, connection_attempts=1, socket_timeout=30,
        blocked_connection_timeout=60))


def _paging_bytes(proc) -> int:
    d = proc.data_dir / "paging"
    if not d.exists():
        return 0
    return sum(p.stat().st_size for p in d.iterdir() if p.suffix == ".seg")


def _rss_bytes(proc) -> int:
    with open(f"/proc/{proc.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _wait_for_count(ch, queue: str, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        count = ch.queue_declare(queue, passive=True).method.message_count
        if count >= n or time.monotonic() > deadline:
            assert count == n, f"{count} of {n} messages arrived"
            return
        time.sleep(0.1)


def test_transient_backlog_pages_to_disk_and_drains_in_order(pier_factory):
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    queue = "paging.transient"
    ch.queue_declare(queue, durable=False)
    sizes = []
    total = 0
    for size in _sizes(20000):
        if total + size > 250 * MiB:
            break
        sizes.append(size)
        total += size
    n = len(sizes)
    rss_before = _rss_bytes(proc)
    for i, size in enumerate(sizes):
        ch.basic_publish("", queue, _body(i, size))
    _wait_for_count(ch, queue, n)

    # The last paging writes may still be on their way (channel, write buffer): wait for them.
    deadline = time.monotonic() + 10
    while _paging_bytes(proc) < total - 9 * MiB and time.monotonic() < deadline:
        time.sleep(0.1)
    rss = _rss_bytes(proc)
    paged = _paging_bytes(proc)
    print(f"published {n} messages, {total / MiB:.0f} MiB; broker RSS {rss / MiB:.0f} MiB "
          f"(before: {rss_before / MiB:.0f} MiB); paging segments {paged / MiB:.0f} MiB")
    assert rss < 150 * MiB, f"RSS {rss / MiB:.0f} MiB for a {total / MiB:.0f} MiB backlog"
    # All but the in-memory head (8 MiB) is on disk.
    assert paged >= total - 9 * MiB, f"paging holds {paged / MiB:.0f} of {total / MiB:.0f} MiB"

    ch.basic_qos(prefetch_count=200)
    received = 0
    peak_rss = rss
    for method, props, body in ch.consume(queue, inactivity_timeout=30):
        assert method is not None, f"stalled after {received} of {n} messages"
        i = received
        assert body == _body(i, sizes[i]), f"message {i} differs"
        received += 1
        if received % 100 == 0 or received == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if received % 1000 == 0:
            peak_rss = max(peak_rss, _rss_bytes(proc))
        if received == n:
            break
    ch.cancel()
    assert received == n
    assert peak_rss < 150 * MiB, f"RSS while draining {peak_rss / MiB:.0f} MiB"

    # Read back and acked: the spill files go (one active segment may stay).
    deadline = time.monotonic() + 10
    while _paging_bytes(proc) > 8 * MiB + 4096 and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _paging_bytes(proc)
    print(f"after draining: paging segments {left / MiB:.1f} MiB, "
          f"peak RSS while draining {peak_rss / MiB:.0f} MiB")
    assert left <= 8 * MiB + 4096, f"{left / MiB:.1f} MiB of paging segments left"
    assert ch.queue_declare(queue, passive=True).method.message_count == 0
    conn.close()


def test_paged_out_transient_message_in_durable_queue_is_gone_after_restart(pier_factory):
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    queue = "paging.durable"
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    # 24 MiB of 64 KiB messages, every 8th persistent: past the first 8 MiB the transient
    # ones are paged out to the scratch store, the persistent ones live in the durable log.
    n = 384
    persistent = [i % 8 == 0 for i in range(n)]
    for i in range(n):
        props = pika.BasicProperties(delivery_mode=2 if persistent[i] else 1)
        ch.basic_publish("", queue, _body(i, 64 * 1024), properties=props)
    _wait_for_count(ch, queue, n)
    assert _paging_bytes(proc) > 8 * MiB, "transient messages were paged out"
    conn.close()

    # A crash: nothing gets to clean up the paging directory; the next start must.
    proc.kill()
    proc.start()
    # Only a fresh, empty active segment (its 16-byte header) is there.
    assert _paging_bytes(proc) <= 16, "the paging directory is wiped at start"
    conn = _connect(proc)
    ch = conn.channel()
    got = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.append((int.from_bytes(body[:4], "big"), body, props.delivery_mode))
    wanted = [i for i in range(n) if persistent[i]]
    assert [i for i, _, _ in got] == wanted, "only the persistent messages come back"
    assert all(body == _body(i, 64 * 1024) and mode == 2 for i, body, mode in got)
    ch.queue_delete(queue)
    conn.close()
