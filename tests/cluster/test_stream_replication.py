"""Stream replication on a 3-node cluster, driven by the Python stream client rstream: a
stream created on one node is led there and replicated on the two others (RabbitMQ's default
initial cluster size: every node); each replica holds the leader's messages at the same
offsets and serves consumers; a publish is confirmed only once a majority of the members
(the leader and one replica) has synced it; a replica that was away catches up; a consumer
on a replica stores its offset at the leader; after all three nodes are killed at once every
confirmed message is on every node; a deleted stream's replicas go with it.

Faults: SIGSTOP of both replicas (no majority: no confirm until one resumes), SIGSTOP of one
replica (the other makes the majority), SIGKILL of all nodes."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse

import pytest

rstream = pytest.importorskip("rstream")
from rstream import AMQPMessage, Producer  # noqa: E402

from harness import STREAM_PORT  # noqa: E402
from stream_chaos import read_on  # noqa: E402
from test_queues import wait_for  # noqa: E402


def queue_on(node, name: str):
    status, body = node.api("GET", f"/api/queues/%2F/{urllib.parse.quote(name, safe='')}")
    return body if status == 200 else None


def producer(node) -> Producer:
    return Producer(node.ip, port=STREAM_PORT, username="guest", password="guest")


async def publish(node, stream: str, bodies: list[str]) -> None:
    async with producer(node) as p:
        for b in bodies:
            await p.send_wait(stream, AMQPMessage(body=b.encode()))


def consume_on(node, stream: str, count: int, reference: str | None = None) -> list[str]:
    return read_on(node, stream, count, reference=reference, timeout=20)


async def publish_unconfirmed(node, stream: str, body: str) -> None:
    """Publishes `body` while the stream's other member is paused: no confirm comes."""
    confirmed: list[object] = []
    async with producer(node) as p:
        await p.send(stream, AMQPMessage(body=body.encode()),
                     on_publish_confirm=lambda c: confirmed.append(c))
        await asyncio.sleep(2)
        assert not confirmed, confirmed


def figures(node, stream: str) -> dict:
    q = queue_on(node, stream)
    return (q or {}).get("stream") or {}


def test_a_stream_is_replicated_and_confirms_need_a_majority(cluster):
    n1, n2, n3 = cluster.nodes
    s = "ledger"

    async def create():
        async with producer(n1) as p:
            await p.create_stream(s)
    asyncio.run(create())
    q = wait_for("the stream on n1", lambda: queue_on(n1, s))
    assert q["leader"] == n1.name, q
    assert sorted(q["members"]) == sorted(n.name for n in cluster.nodes), q
    for n in (n2, n3):
        wait_for(f"the replica on {n.name}", lambda n=n: "stream replica opened" in n.log_text())

    first = [f"a{i}" for i in range(300)]
    asyncio.run(publish(n1, s, first))
    wait_for("both replicas synced", lambda: figures(n1, s).get("replicas")
             == {n2.name: 300, n3.name: 300})
    for n in (n2, n3):
        assert consume_on(n, s, 300) == first, n.name

    # Both replicas stopped: the leader writes, but confirms nothing (no majority) and
    # shows its readers nothing new; one replica back makes the majority.
    n2.pause()
    n3.pause()
    confirmed: list[object] = []

    async def publish_one():
        async with producer(n1) as p:
            await p.send(s, AMQPMessage(body=b"b0"),
                         on_publish_confirm=lambda c: confirmed.append(c))
            await asyncio.sleep(2.5)
            f = figures(n1, s)
            unconfirmed = (list(confirmed), f["next_offset"], f["written_offset"])
            n3.resume()
            for _ in range(200):
                if confirmed:
                    break
                await asyncio.sleep(0.05)
            return unconfirmed
    try:
        before = asyncio.run(publish_one())
    finally:
        n2.resume()
        n3.resume()
    assert before == ([], 300, 301), before
    assert confirmed, "no confirm after a replica came back"
    assert consume_on(n1, s, 301) == first + ["b0"]

    # One replica away: the other makes the majority; back, it catches up.
    n3.pause()
    try:
        more = [f"c{i}" for i in range(200)]
        asyncio.run(publish(n1, s, more))
    finally:
        n3.resume()
    everything = first + ["b0"] + more
    wait_for("n3 caught up", lambda: figures(n1, s).get("replicas", {}).get(n3.name) == 501)
    assert consume_on(n3, s, 501) == everything

    # A consumer on a replica stores its offset: the leader writes it, every node has it.
    assert consume_on(n2, s, 501, reference="app") == everything
    wait_for("the offset at the leader",
             lambda: figures(n1, s).get("tracking", {}).get("offsets") == {"app": 500})

    # rabbitmq-streams' verbs: delete_replica drops n3's copy; with two members both must
    # have a publish; add_replica brings n3 back, copying the log from its first chunk.
    out = n2.ctl("delete_replica", s, n3.name)
    assert out.returncode == 0, out.stderr
    wait_for("n3 out of the members", lambda: sorted(queue_on(n1, s)["members"])
             == sorted([n1.name, n2.name]))
    wait_for("n3's copy deleted", lambda: not any((n3.workdir / "data").rglob(s)))
    out = n1.ctl("--json", "stream_status", s)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["role"], r["node"]) for r in rows] == [("writer", n1.name), ("replica", n2.name)]
    assert rows[1]["offset"] == 501, rows  # the offset chunk "app" stored
    n2.pause()
    try:
        asyncio.run(publish_unconfirmed(n1, s, "e0"))
    finally:
        n2.resume()
    out = n1.ctl("delete_replica", s, n1.name)
    assert out.returncode != 0 and "leader" in (out.stderr + out.stdout), out
    out = n1.ctl("add_replica", s, n3.name)
    assert out.returncode == 0, out.stderr
    everything = everything + ["e0"]
    wait_for("n3 caught up from scratch",
             lambda: figures(n1, s).get("replicas", {}).get(n3.name) == 503)
    assert consume_on(n3, s, 502) == everything

    # All three killed at once: every confirmed message is on every node after restart.
    for n in cluster.nodes:
        n.kill()
    for n in cluster.nodes:
        n.start()
    for n in cluster.nodes:
        n.wait_http()
    cluster.wait_formed()
    wait_for("the stream back", lambda: figures(n1, s).get("next_offset", 0) >= 503, timeout=40)
    for n in cluster.nodes:
        got = wait_for(f"{n.name} serving the stream",
                       lambda n=n: (lambda g: g if len(g) >= 502 else None)(consume_on(n, s, 502)),
                       timeout=40)
        assert got == everything, n.name
    # It takes publishes again, replicated.
    asyncio.run(publish(n1, s, ["d0"]))
    wait_for("replicas synced after the restart", lambda: figures(n1, s).get("replicas")
             == {n2.name: 504, n3.name: 504})

    # Deleted: the replicas' files go too.
    async def delete():
        async with producer(n2) as p:
            await p.delete_stream(s)
    asyncio.run(delete())
    for n in cluster.nodes:
        wait_for(f"{s} gone on {n.name}", lambda n=n: queue_on(n, s) is None)
        wait_for(f"{s}'s files gone on {n.name}",
                 lambda n=n: not any(p.name == s for p in (n.workdir / "data").rglob(s)))
    time.sleep(0.1)
