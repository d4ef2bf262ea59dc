"""A backlog of small messages costs little memory, however fast it arrives (issue 12).

One raw publisher pushes two million 16-byte transient messages into one queue that nobody
consumes, as fast as the broker reads them (no confirms; RabbitMQ's `credit_flow` and Pier's
credit both hold such a publisher back only through TCP). Pier pages the backlog out to its
scratch paging store; what stays in memory per queued message is the queue's 16-byte place,
the paging store's 20-byte index entry and a little slack. The test asserts that each message
of the second million adds at most 40 bytes of broker RSS, and the whole backlog at most 48 per
message (RSS also holds the queue's in-memory head, 8 MB at most, and the paging store's
buffers).

Before the engine counted each in-memory message's own overhead (the shared `Message`, its
entry, its properties; `MESSAGE_OVERHEAD`) against the queue's memory budget, the budget
counted 16-byte bodies only, so half a million of these messages stayed in memory at about
600 bytes each (427 B per message over a 1M backlog, measured). The per-message records were
then kept in doubling deques and, once chunked, in 16 KiB chunks that jemalloc pads by a page
(44 B per message); see `pier_store::chunked`.
"""

from __future__ import annotations

import os
import time

import pytest

from amqp_raw import FRAME_BODY, FRAME_HEADER, RawConnection, content_header_payload, frame, method_frame
from helpers import rss_bytes

MESSAGES = int(os.environ.get("PIER_TEST_BACKLOG_MESSAGES", "2000000"))
BODY = b"m" * 16
BATCH = 10_000
# What each further queued message adds (the target), and the whole backlog's cost
# including the queue's in-memory head (8 MB) and what the broker allocates once for paging.
MAX_MARGINAL_BYTES = 40
MAX_BYTES_PER_MESSAGE = 48


def queue_depth(conn: RawConnection, queue: str) -> int:
    ok = conn.rpc(1, "queue.declare", "queue.declare-ok", queue=queue, passive=True)
    return ok["message_count"]


@pytest.mark.pier_only
@pytest.mark.timeout(600)
def test_millions_of_small_transient_messages_cost_little_memory(pier_factory):
    proc = pier_factory()
    pid = proc.proc.pid
    queue = "backlog-16b"
    conn = RawConnection("127.0.0.1", proc.amqp_port, timeout=60)
    conn.handshake()
    conn.open_channel(1)
    conn.rpc(1, "queue.declare", "queue.declare-ok", queue=queue)
    time.sleep(0.5)
    before = rss_bytes(pid)

    one = (method_frame(1, "basic.publish", exchange="", routing_key=queue,
                        mandatory=False, immediate=False)
           + frame(FRAME_HEADER, 1, content_header_payload(len(BODY)))
           + frame(FRAME_BODY, 1, BODY))
    batch = one * BATCH

    def publish_and_settle(total: int) -> int:
        """Publishes up to `total` messages in all, waits until they are queued; RSS then."""
        nonlocal sent
        while sent < total:
            conn.sock.sendall(batch)
            sent += BATCH
        deadline = time.monotonic() + 300
        while (depth := queue_depth(conn, queue)) < sent:
            assert time.monotonic() < deadline, f"only {depth} of {sent} messages queued"
            time.sleep(0.5)
        # jemalloc hands the pages of freed messages (those written out) back over a few
        # seconds: the settled figure is what the backlog itself holds.
        rss = rss_bytes(pid)
        for _ in range(4):
            time.sleep(1.0)
            rss = min(rss, rss_bytes(pid))
        return rss

    sent = 0
    half = publish_and_settle(MESSAGES // 2)
    after = publish_and_settle(MESSAGES)
    per_message = (after - before) / sent
    marginal = (after - half) / (sent - MESSAGES // 2)
    print(f"\n{sent} x {len(BODY)} B transient: RSS {before / 2**20:.1f} -> {half / 2**20:.1f} "
          f"-> {after / 2**20:.1f} MiB: {per_message:.1f} B per queued message, "
          f"{marginal:.1f} B for each of the second half")
    assert marginal <= MAX_MARGINAL_BYTES, f"{marginal:.1f} B per message of the second half"
    assert per_message <= MAX_BYTES_PER_MESSAGE, f"{per_message:.1f} B per queued message"
    # The backlog was paged out, not just counted: the whole queue is still there to consume.
    conn.rpc(1, "queue.purge", "queue.purge-ok", queue=queue)
    conn.close_connection()
