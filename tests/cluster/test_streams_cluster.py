"""Streams on a cluster, driven by the Python stream client rstream as an application would
use it: a stream created over the stream protocol on any node is declared through the
cluster (every node knows it, hosted by the node the client was on); `Metadata` on every
node names that node, with its advertised address, as the stream's leader, so a producer
and a consumer that connect to other nodes follow it there; a stream deleted on a third
node is gone everywhere. Super streams likewise: created on one node, their partitions and
routes are answered by every node, and deleted from another; `pier ctl add_super_stream`
and `delete_super_stream` on a node likewise. While the hosting node is
down, `Metadata` answers that the stream is not available.""" 

from __future__ import annotations

import asyncio
import urllib.parse

import pytest

rstream = pytest.importorskip("rstream")
from rstream import (  # noqa: E402
    AMQPMessage, Consumer, ConsumerOffsetSpecification, OffsetType, Producer, amqp_decoder,
)

from harness import STREAM_PORT  # noqa: E402
from test_queues import wait_for  # noqa: E402


def producer(node) -> Producer:
    return Producer(node.ip, port=STREAM_PORT, username="guest", password="guest")


def queue_on(node, name: str):
    status, body = node.api("GET", f"/api/queues/%2F/{urllib.parse.quote(name, safe='')}")
    return body if status == 200 else None


def test_a_stream_created_on_one_node_is_used_through_the_others(cluster):
    n1, n2, n3 = cluster.nodes
    s = "orders"

    async def create():
        async with producer(n2) as p:
            await p.create_stream(s, arguments={"max-length-bytes": 100_000_000})
            with pytest.raises(rstream.exceptions.StreamAlreadyExists):
                await p.create_stream(s)
    asyncio.run(create())
    for n in cluster.nodes:
        q = wait_for(f"{s} on {n.name}", lambda n=n: queue_on(n, s))
        assert q["type"] == "stream" and q["node"] == n2.name, q

    async def metadata(node):
        async with producer(node) as p:
            await p.start()
            client = await p.default_client
            leader, replicas = await client.query_leader_and_replicas(s)
            return leader.host, leader.port, sorted((r.host, r.port) for r in replicas)
    # Replicated on every node (RabbitMQ's default initial cluster size): the others are
    # its replicas.
    for n in cluster.nodes:
        assert asyncio.run(metadata(n)) == (
            n2.ip, STREAM_PORT, sorted([(n1.ip, STREAM_PORT), (n3.ip, STREAM_PORT)])), n.name

    async def publish_and_consume():
        async with producer(n1) as p:
            for i in range(10):
                await p.send_wait(s, AMQPMessage(body=f"m{i}".encode()))
        got: list[str] = []
        c = Consumer(n3.ip, port=STREAM_PORT, username="guest", password="guest")
        await c.start()

        async def on_message(msg, _ctx):
            got.append(bytes(msg.body).decode())
        await c.subscribe(s, on_message, decoder=amqp_decoder,
                          offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST))
        for _ in range(200):
            if len(got) >= 10:
                break
            await asyncio.sleep(0.05)
        await c.close()
        return got
    assert asyncio.run(publish_and_consume()) == [f"m{i}" for i in range(10)]
    # The producer wrote on the stream's node (it followed Metadata there).
    status, q = n2.api("GET", f"/api/queues/%2F/{s}")
    assert status == 200 and q["messages"] == 10, q

    # The vhost's max-queues holds on every node, as for AMQP declarations.
    code, _ = n1.api("PUT", "/api/vhost-limits/%2F/max-queues", {"value": 1})
    assert code in (200, 201, 204), code
    wait_for("the limit on n3", lambda: n3.api("GET", "/api/vhost-limits/%2F")[1])

    async def over_the_limit():
        async with producer(n3) as p:
            with pytest.raises(rstream.exceptions.PreconditionFailed):
                await p.create_stream("orders-2")
    asyncio.run(over_the_limit())
    code, _ = n1.api("DELETE", "/api/vhost-limits/%2F/max-queues")
    assert code in (200, 204), code
    assert queue_on(n1, "orders-2") is None

    # Its node down, the others answer STREAM_NOT_AVAILABLE for it (as RabbitMQ does for a
    # stream without a leader) rather than send clients to a dead address.
    n2.kill()

    async def leader_gone():
        async with producer(n1) as p:
            await p.start()
            client = await p.default_client
            try:
                await client.query_leader_and_replicas(s)
            except rstream.exceptions.StreamNotAvailable:
                return True
            return False
    wait_for("no leader for the stream while its node is down", lambda: asyncio.run(leader_gone()))
    n2.start()
    n2.wait_http()
    wait_for("the stream's leader back", lambda: not asyncio.run(leader_gone()), timeout=40)

    async def delete():
        async with producer(n3) as p:
            await p.delete_stream(s)
            with pytest.raises(rstream.exceptions.StreamDoesNotExist):
                await p.delete_stream(s)
    asyncio.run(delete())
    for n in cluster.nodes:
        wait_for(f"{s} gone on {n.name}", lambda n=n: queue_on(n, s) is None)


def test_a_super_stream_created_on_one_node_is_known_to_all(cluster):
    n1, n2, n3 = cluster.nodes
    ss = "invoices"
    parts = [f"{ss}-0", f"{ss}-1", f"{ss}-2"]

    async def client_of(node, p):
        await p.start()
        return await p.default_client

    async def create():
        async with producer(n1) as p:
            c = await client_of(n1, p)
            await c.create_super_stream(ss, partitions=parts, binding_keys=["0", "1", "2"])
    asyncio.run(create())
    for n in cluster.nodes:
        for part in parts:
            q = wait_for(f"{part} on {n.name}", lambda n=n, part=part: queue_on(n, part))
            assert q["type"] == "stream" and q["node"] == n1.name, q

    async def routes_of(node, name):
        async with producer(node) as p:
            c = await client_of(node, p)
            try:
                return await c.partitions(name), await c.route("2", name)
            except rstream.exceptions.StreamDoesNotExist:
                return None, None
    for n in cluster.nodes:
        assert asyncio.run(routes_of(n, ss)) == (parts, [f"{ss}-2"]), n.name

    # `pier ctl add_super_stream` (through the management API) on another node: the same.
    r = n2.ctl("add_super_stream", "logs", "--partitions", "2")
    assert r.returncode == 0, r.stderr
    for n in cluster.nodes:
        wait_for(f"logs on {n.name}",
                 lambda n=n: asyncio.run(routes_of(n, "logs"))[0] == ["logs-0", "logs-1"])
    r = n1.ctl("delete_super_stream", "logs")
    assert r.returncode == 0, r.stderr
    for n in cluster.nodes:
        # (rstream returns no partitions rather than raise for a missing super stream.)
        wait_for(f"logs gone on {n.name}",
                 lambda n=n: asyncio.run(routes_of(n, "logs"))[0] in (None, []))
        assert n.api("GET", "/api/exchanges/%2F/logs")[0] == 404, n.name

    async def delete():
        async with producer(n3) as p:
            c = await client_of(n3, p)
            await c.delete_super_stream(ss)
    asyncio.run(delete())
    for n in cluster.nodes:
        for part in parts:
            wait_for(f"{part} gone on {n.name}", lambda n=n, part=part: queue_on(n, part) is None)
        status, _ = n.api("GET", f"/api/exchanges/%2F/{ss}")
        assert status == 404, n.name
