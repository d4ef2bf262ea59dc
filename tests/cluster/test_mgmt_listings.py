"""Management lists the client connections of every node, as RabbitMQ's does: an AMQP
connection on one node and a stream-protocol publisher and consumer on another show in
`/api/connections`, `/api/channels`, `/api/stream/connections`, `/api/stream/publishers` and
`/api/stream/consumers` of a third, each with its node; the third shows and closes them
(`DELETE /api/connections/{name}`, `DELETE /api/stream/connections/{vhost}/{name}`)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse

import pika
import pytest

rstream = pytest.importorskip("rstream")
from rstream import (  # noqa: E402
    AMQPMessage, Consumer, ConsumerOffsetSpecification, OffsetType, Producer, amqp_decoder,
)

from chaos import connect  # noqa: E402
from harness import STREAM_PORT  # noqa: E402
from test_queues import wait_for  # noqa: E402


def q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def test_every_nodes_connections_are_listed_and_closed_from_any_node(cluster):
    n1, n2, n3 = cluster.nodes
    s = "listed"
    # The stream is led by n3 (declared there, one member); its clients connect there.
    declaring = connect(n3)
    declaring.channel().queue_declare(s, durable=True, arguments={
        "x-queue-type": "stream", "x-initial-cluster-size": 1})
    declaring.close()
    amqp = connect(n2)
    amqp.channel()

    stop = threading.Event()
    state: dict[str, object] = {}

    async def stream_clients():
        p = Producer(n3.ip, port=STREAM_PORT, username="guest", password="guest")
        c = Consumer(n3.ip, port=STREAM_PORT, username="guest", password="guest")
        await c.start()
        await c.subscribe(s, lambda m, ctx: None, decoder=amqp_decoder,
                          offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST))
        async with p:
            await p.send_wait(s, AMQPMessage(body=b"x"))
            state["ready"] = True
            while not stop.is_set():
                await asyncio.sleep(0.1)
        try:
            await c.close()
        except Exception:  # noqa: BLE001 (closed by management)
            pass
    def run():
        try:
            asyncio.run(stream_clients())
        except Exception as e:  # noqa: BLE001
            state["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        wait_for("stream clients up", lambda: state.get("ready") or state.get("error"),
                 timeout=30)
        assert "error" not in state, state
        status, conns = n1.api("GET", "/api/connections")
        assert status == 200, conns
        nodes = sorted({c["node"] for c in conns})
        assert n2.name in nodes and n3.name in nodes, conns
        assert any(c["node"] == n2.name and c["protocol"].startswith("AMQP") for c in conns)
        assert any(c["node"] == n3.name and c["protocol"] == "stream" for c in conns)
        status, sconns = n1.api("GET", "/api/stream/connections")
        assert status == 200 and sconns and all(c["node"] == n3.name for c in sconns), sconns
        status, pubs = n1.api("GET", "/api/stream/publishers/%2F")
        assert status == 200 and [p["queue"]["name"] for p in pubs] == [s], pubs
        assert pubs[0]["connection_details"]["node"] == n3.name, pubs
        status, pubs = n1.api("GET", f"/api/stream/publishers/%2F/{s}")
        assert status == 200 and len(pubs) == 1, pubs
        status, subs = n1.api("GET", "/api/stream/consumers")
        assert status == 200 and [c["queue"]["name"] for c in subs] == [s], subs
        sname = sconns[0]["name"]
        status, one = n1.api("GET", f"/api/stream/connections/%2F/{q(sname)}")
        assert status == 200 and one["name"] == sname, one
        found = {"publishers": 0, "consumers": 0}
        for c in sconns:
            for what in found:
                status, items = n1.api("GET",
                                       f"/api/stream/connections/%2F/{q(c['name'])}/{what}")
                assert status == 200, items
                found[what] += len(items)
        assert found == {"publishers": 1, "consumers": 1}, found

        # Closed from n1: the AMQP connection on n2 and the stream connections on n3.
        aname = next(c["name"] for c in conns if c["node"] == n2.name)
        status, one = n1.api("GET", f"/api/connections/{q(aname)}")
        assert status == 200 and one["node"] == n2.name, one
        # Its channel, listed on n1 too.
        status, chans = n1.api("GET", "/api/channels")
        assert status == 200, chans
        mine = [c for c in chans if c["connection_details"]["name"] == aname]
        assert [c["node"] for c in mine] == [n2.name], chans
        status, chans = n1.api("GET", f"/api/connections/{q(aname)}/channels")
        assert status == 200 and [c["name"] for c in chans] == [mine[0]["name"]], chans
        status, one = n1.api("GET", f"/api/channels/{q(mine[0]['name'])}")
        assert status == 200 and one["node"] == n2.name, one
        status, _ = n1.api("DELETE", f"/api/connections/{q(aname)}")
        assert status == 204
        closed: list[str] = []

        def pump():
            try:
                amqp.process_data_events(0.1)
            except pika.exceptions.ConnectionClosedByBroker as e:
                closed.append(e.reply_text)
        wait_for("the AMQP connection closed", lambda: closed, timeout=10, step=pump)
        assert closed == ["CONNECTION_FORCED - Closed via management plugin"], closed
        for c in sconns:
            status, _ = n1.api("DELETE", f"/api/stream/connections/%2F/{q(c['name'])}")
            assert status == 204
        wait_for("no stream connections left",
                 lambda: n3.api("GET", "/api/stream/connections")[1] == [], timeout=10)
        status, _ = n1.api("DELETE", f"/api/connections/{q(aname)}")
        assert status == 404
    finally:
        stop.set()
        t.join(timeout=10)
        time.sleep(0.1)
        if amqp.is_open:
            amqp.close()
