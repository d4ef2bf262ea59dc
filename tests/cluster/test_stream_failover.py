"""Stream leader failover on a 3-node cluster (issue 15), driven by rstream and pika: when a
stream's leader dies, the metadata leader fences the surviving members and makes the one
with the longest valid log the leader of a new epoch; publishing and consuming go on there,
every confirmed message is kept, and the old leader comes back as a replica. A leader that
wrote chunks no replica got (both replicas paused) and then died loses exactly those
unconfirmed chunks: when it comes back it cuts them and copies the new leader's log.

Faults: SIGKILL of the leader (twice), SIGSTOP of both replicas."""

from __future__ import annotations

import asyncio
import time

import pytest

rstream = pytest.importorskip("rstream")
from rstream import AMQPMessage  # noqa: E402

from chaos import connect  # noqa: E402
from stream_chaos import read_on  # noqa: E402
from test_queues import wait_for  # noqa: E402
from test_stream_replication import figures, producer, publish, queue_on  # noqa: E402


def leader_seen_by(node, s: str) -> str | None:
    q = queue_on(node, s)
    return q and q.get("leader")


def test_a_dead_stream_leader_is_replaced_and_nothing_confirmed_is_lost(cluster):
    n1, n2, n3 = cluster.nodes
    by_name = {n.name: n for n in cluster.nodes}
    s = "failover"

    async def create():
        async with producer(n1) as p:
            await p.create_stream(s)
    asyncio.run(create())
    wait_for("the stream on n1", lambda: leader_seen_by(n1, s) == n1.name)
    first = [f"a{i}" for i in range(300)]
    asyncio.run(publish(n1, s, first))

    # The leader dies: a survivor leads within seconds and takes publishes (rstream) and
    # AMQP publishes through the other survivor.
    n1.kill()
    killed = time.monotonic()
    new = wait_for("a new leader", lambda: (lambda l: l if l in (n2.name, n3.name) else None)(
        leader_seen_by(n2, s)), timeout=30)
    took = time.monotonic() - killed
    leader = by_name[new]
    other = n3 if leader is n2 else n2
    assert "stream leader down: electing a new one" in (n2.log_text() + n3.log_text())
    second = [f"b{i}" for i in range(200)]
    asyncio.run(publish(leader, s, second))
    conn = connect(other)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("", s, f"c{i}".encode())
    conn.close()
    third = [f"c{i}" for i in range(50)]
    everything = first + second + third
    for n in (leader, other):
        assert read_on(n, s, len(everything), timeout=20) == everything, n.name

    # The old leader comes back as a replica of the new epoch and catches up.
    n1.start()
    n1.wait_http()
    cluster.wait_formed()
    wait_for("n1 synced as a replica", lambda: figures(leader, s).get("replicas", {}).get(n1.name)
             == len(everything), timeout=40)
    assert read_on(n1, s, len(everything), timeout=20) == everything
    assert leader_seen_by(n1, s) == leader.name

    # The leader writes a chunk no replica gets (both paused), then dies: the new leader
    # does not have it, and the old one cuts it when it comes back.
    n1.pause()
    other.pause()
    # A read the leader answered before the pause would still bring the chunk: let the
    # leader's long polls (1 s) end first.
    time.sleep(1.5)
    confirmed: list[object] = []

    async def unconfirmed():
        async with producer(leader) as p:
            await p.send(s, AMQPMessage(body=b"lost"),
                         on_publish_confirm=lambda c: confirmed.append(c))
            await asyncio.sleep(1.5)
            leader.kill()
    try:
        asyncio.run(unconfirmed())
    except Exception:  # noqa: BLE001 (the connection dies with the leader)
        pass
    finally:
        n1.resume()
        other.resume()
    assert not [c for c in confirmed if c.is_confirmed], confirmed
    third_leader = wait_for("another leader", lambda: (lambda l: l if l in (n1.name, other.name)
                                                       else None)(leader_seen_by(other, s)),
                            timeout=30)
    asyncio.run(publish(by_name[third_leader], s, ["d0"]))
    everything = everything + ["d0"]
    leader.start()
    leader.wait_http()
    cluster.wait_formed()
    for n in cluster.nodes:
        got = wait_for(f"{n.name}'s copy", lambda n=n: (lambda g: g if len(g) >= len(everything)
                                                        else None)(
            read_on(n, s, len(everything), timeout=10)), timeout=60)
        assert got == everything, n.name
    assert "stream copy cut" in leader.log_text()
    print(f"first failover took {took:.1f} s")
