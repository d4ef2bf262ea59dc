"""Streams in the management API, as RabbitMQ's rabbitmq_stream_management plugin shows them:
/api/stream/connections, /api/stream/publishers, /api/stream/consumers (and per vhost),
stream-protocol connections in /api/connections (protocol "stream") closed with
DELETE /api/connections/{name}, and stream queues in /api/queues.

Against an external broker set PIER_TEST_STREAM_PORT (RabbitMQ 3.10.8: 5553) and
PIER_TEST_MGMT_URL (http://guest:guest@127.0.0.1:15673). Tests marked pier_only check the
figures Pier adds (segments, offsets, tracked consumer offsets)."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid

import pytest

rstream = pytest.importorskip("rstream")
from rstream import (  # noqa: E402
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    Producer,
    amqp_decoder,
)

from helpers import wait_until  # noqa: E402
from test_streams_protocol import stream_port  # noqa: E402,F401


STEP = 15

# The fields both brokers give each object (RabbitMQ 3.10.8's names).
CONNECTION_FIELDS = {
    "name", "node", "protocol", "user", "vhost", "host", "port", "peer_host", "peer_port",
    "ssl", "auth_mechanism", "frame_max", "timeout", "connected_at", "client_properties",
    "user_provided_name", "recv_oct", "send_oct", "recv_cnt", "send_cnt", "state",
}
PUBLISHER_FIELDS = {
    "publisher_id", "reference", "published", "confirmed", "errored", "queue",
    "connection_details",
}
CONSUMER_FIELDS = {
    "subscription_id", "consumed", "offset", "offset_lag", "credits", "properties", "queue",
    "connection_details",
}


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def name(prefix="mgmt"):
    return f"pier-test.stream-{prefix}.{uuid.uuid4().hex[:12]}"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def api(f, *args):
    """A blocking management call, off the event loop (the clients keep heartbeating)."""
    return await asyncio.to_thread(f, *args)


def by_name(items, conn_name):
    return [c for c in items if c.get("user_provided_name") == conn_name]


def test_stream_connections_publishers_and_consumers(mgmt, stream_port):
    stream = name()
    tag = uuid.uuid4().hex[:8]
    pname, cname = f"pier-test-pub-{tag}", f"pier-test-sub-{tag}"

    async def scenario():
        async with Producer("127.0.0.1", port=stream_port, username="guest", password="guest",
                            connection_name=pname) as p:
            # One member: the consumer stays on this node, whose API lists it (on a cluster
            # rstream reads from a replica, and Pier lists stream connections per node).
            await p.create_stream(stream, arguments={"initial-cluster-size": 1})
            try:
                for i in range(7):
                    await p.send_wait(stream, AMQPMessage(body=f"m{i}".encode()))
                got = []
                done = asyncio.Event()
                c = Consumer("127.0.0.1", port=stream_port, username="guest", password="guest",
                             connection_name=cname)
                await c.start()

                async def cb(msg, ctx: MessageContext):
                    got.append(ctx.offset)
                    if len(got) >= 7:
                        done.set()
                await c.subscribe(stream, cb, decoder=amqp_decoder,
                                  offset_specification=ConsumerOffsetSpecification(
                                      OffsetType.FIRST, None))
                await asyncio.wait_for(done.wait(), STEP)
                try:
                    return await api(check, stream, pname, cname)
                finally:
                    await c.close()
            finally:
                await p.delete_stream(stream, missing_ok=True)

    def check(stream, pname, cname):
        # Connections: in /api/stream/connections (all and per vhost) and /api/connections.
        # (RabbitMQ adds a connection's figures at its next statistics emission.)
        def both_listed():
            conns = mgmt.get("/stream/connections")
            listed = by_name(conns, pname) + by_name(conns, cname)
            return len(listed) == 2 and all(CONNECTION_FIELDS <= set(c) for c in listed) \
                and conns
        conns = wait_until(both_listed, timeout=20, message="stream connections listed")
        pub_conn = by_name(conns, pname)[0]
        assert CONNECTION_FIELDS <= set(pub_conn), CONNECTION_FIELDS - set(pub_conn)
        assert pub_conn["protocol"] == "stream"
        assert pub_conn["user"] == "guest" and pub_conn["vhost"] == "/"
        assert pub_conn["auth_mechanism"] == "PLAIN"
        assert pub_conn["port"] == stream_port
        assert pub_conn["client_properties"]["connection_name"] == pname
        assert by_name(mgmt.get("/stream/connections/%2F"), pname)
        amqp_list = by_name(mgmt.get("/connections"), pname)
        assert amqp_list and amqp_list[0]["protocol"] == "stream"
        one = mgmt.get(f"/stream/connections/%2F/{q(pub_conn['name'])}")
        assert one["name"] == pub_conn["name"]
        assert mgmt.get(f"/connections/{q(pub_conn['name'])}")["protocol"] == "stream"

        # Publishers.
        pubs = [p for p in mgmt.get("/stream/publishers") if p["queue"]["name"] == stream]
        assert len(pubs) == 1, pubs
        pub = pubs[0]
        assert PUBLISHER_FIELDS <= set(pub), PUBLISHER_FIELDS - set(pub)
        assert pub["published"] == 7 and pub["confirmed"] == 7 and pub["errored"] == 0
        assert pub["queue"] == {"name": stream, "vhost": "/"}
        assert pub["connection_details"]["name"] == pub_conn["name"]
        assert [p["queue"]["name"] for p in mgmt.get("/stream/publishers/%2F")].count(stream) == 1
        assert len(mgmt.get(f"/stream/publishers/%2F/{q(stream)}")) == 1
        per_conn = mgmt.get(f"/stream/connections/%2F/{q(pub_conn['name'])}/publishers")
        assert [p["publisher_id"] for p in per_conn] == [pub["publisher_id"]]

        # Consumers.
        subs = [c for c in mgmt.get("/stream/consumers") if c["queue"]["name"] == stream]
        assert len(subs) == 1, subs
        sub = subs[0]
        assert CONSUMER_FIELDS <= set(sub), CONSUMER_FIELDS - set(sub)
        assert sub["consumed"] == 7
        assert sub["offset"] == 6 and sub["offset_lag"] == 0
        assert sub["credits"] >= 0
        assert [c["queue"]["name"] for c in mgmt.get("/stream/consumers/%2F")].count(stream) == 1
        sub_conn = by_name(conns, cname)[0]
        per_conn = mgmt.get(f"/stream/connections/%2F/{q(sub_conn['name'])}/consumers")
        assert [c["subscription_id"] for c in per_conn] == [sub["subscription_id"]]

        # The stream in /api/queues: type stream, its messages and its subscription.
        queue = wait_until(lambda: (lambda v: "messages" in v and "consumers" in v and v)(
            mgmt.get(f"/queues/%2F/{q(stream)}")), timeout=20, message="queue figures")
        assert queue["type"] == "stream"
        assert queue["messages"] == 7
        assert queue["consumers"] == 1
        return True

    assert run(scenario())


def test_unknown_stream_connection_is_404(mgmt, stream_port):
    status, _ = mgmt.call("GET", "/stream/connections/%2F/no-such-connection")
    assert status == 404
    status, _ = mgmt.call("GET", "/stream/connections/no-such-vhost")
    assert status == 404


def test_close_a_stream_connection_through_the_api(mgmt, stream_port):
    stream = name("close")
    cname = f"pier-test-close-{uuid.uuid4().hex[:8]}"

    async def scenario():
        closed = asyncio.Event()

        async def on_close(*_args):
            closed.set()
        async with Producer("127.0.0.1", port=stream_port, username="guest",
                            password="guest") as admin:
            await admin.create_stream(stream, arguments={"initial-cluster-size": 1})  # as above
            try:
                c = Consumer("127.0.0.1", port=stream_port, username="guest",
                             password="guest", connection_name=cname)
                await c.start()
                await c.subscribe(stream, lambda m, ctx: None,
                                  offset_specification=ConsumerOffsetSpecification(
                                      OffsetType.FIRST, None))

                def listed():
                    return by_name(mgmt.get("/connections"), cname)
                conn = (await api(lambda: wait_until(listed, timeout=10,
                                                     message="connection listed")))[0]
                status, _ = await api(mgmt.call, "DELETE", f"/connections/{q(conn['name'])}")
                assert status == 204

                def gone():
                    return not by_name(mgmt.get("/connections"), cname) and \
                        not by_name(mgmt.get("/stream/connections"), cname)
                await api(lambda: wait_until(gone, timeout=10, message="connection closed"))
                await api(lambda: wait_until(
                    lambda: mgmt.get(f"/queues/%2F/{q(stream)}").get("consumers") == 0,
                    timeout=20, message="no consumers left"))
                try:
                    await asyncio.wait_for(c.close(), 5)
                except Exception:
                    pass
            finally:
                await admin.delete_stream(stream, missing_ok=True)

    run(scenario())


@pytest.mark.pier_only
def test_stream_queue_figures(mgmt, stream_port):
    """Pier's figures of a stream queue: segments, size, offsets, tracked consumer offsets and
    publisher sequences (RabbitMQ 3.10 shows these only through rabbitmq-streams)."""
    stream = name("figures")

    async def scenario():
        async with Producer("127.0.0.1", port=stream_port, username="guest",
                            password="guest") as p:
            await p.create_stream(stream)
            try:
                for i in range(5):
                    await p.send_wait(stream, AMQPMessage(body=f"m{i}".encode()),
                                      publisher_name="figures-pub")
                c = Consumer("127.0.0.1", port=stream_port, username="guest", password="guest")
                await c.start()
                await c.store_offset(stream, "figures-consumer", 3)
                await c.close()
                return await api(mgmt.get, f"/queues/%2F/{q(stream)}")
            finally:
                await p.delete_stream(stream, missing_ok=True)

    queue = run(scenario())
    s = queue["stream"]
    assert s["segments"] == 1
    assert s["size_bytes"] > 0
    assert s["first_offset"] == 0
    assert s["last_offset"] >= 4
    assert s["tracking"]["offsets"] == {"figures-consumer": 3}
    assert s["tracking"]["sequences"] == {"figures-pub": 5}
