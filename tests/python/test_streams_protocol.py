"""The RabbitMQ stream protocol with the Python client rstream: publish with confirms, every
offset specification, server-side offset tracking, a consumer restarting from its stored
offset, publisher sequences across a restart, retention, super streams, single active
consumer, filtering.

Against an external broker set PIER_TEST_STREAM_PORT too (RabbitMQ 3.10.8: 5553); tests
marked pier_only need Pier's own process or features RabbitMQ 3.10 lacks (super streams and
single active consumer came in 3.11, filtering in 3.13)."""

from __future__ import annotations

import asyncio
import os
import time
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

from conftest import EXTERNAL_URL, PierProcess  # noqa: E402

STEP = 15



def wait_for_port(port, timeout=15.0):
    import socket
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def stream_port(broker):
    if EXTERNAL_URL:
        port = os.environ.get("PIER_TEST_STREAM_PORT")
        if not port:
            pytest.skip("set PIER_TEST_STREAM_PORT for the external broker's stream port")
        return int(port)
    wait_for_port(broker.process.stream_port)
    return broker.process.stream_port


def name(prefix="stream"):
    return f"pier-test.{prefix}.{uuid.uuid4().hex[:12]}"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def producer(port):
    return Producer("127.0.0.1", port=port, username="guest", password="guest")


def consumer(port):
    return Consumer("127.0.0.1", port=port, username="guest", password="guest")


async def publish(port, stream, bodies, publisher_name=None):
    async with producer(port) as p:
        for b in bodies:
            await p.send_wait(stream, AMQPMessage(body=b.encode()), publisher_name=publisher_name)


async def read(port, stream, n, offset=ConsumerOffsetSpecification(OffsetType.FIRST, None),
               **kwargs):
    got = []
    done = asyncio.Event()
    async with consumer(port) as c:
        async def cb(msg, ctx: MessageContext):
            got.append((ctx.offset, bytes(msg.body).decode()))
            if len(got) >= n:
                done.set()
        await c.start()
        await c.subscribe(stream, cb, decoder=amqp_decoder, offset_specification=offset, **kwargs)
        if n:
            await asyncio.wait_for(done.wait(), STEP)
        else:
            await asyncio.sleep(0.5)
    return got


async def create(port, stream, **arguments):
    async with producer(port) as p:
        await p.create_stream(stream, arguments=arguments or None)


async def delete(port, stream):
    async with producer(port) as p:
        await p.delete_stream(stream, missing_ok=True)


def test_publish_confirm_and_consume(stream_port):
    s = name()

    async def go():
        await create(stream_port, s)
        await publish(stream_port, s, [f"m{i}" for i in range(20)])
        got = await read(stream_port, s, 20)
        assert got == [(i, f"m{i}") for i in range(20)]
        await delete(stream_port, s)
    run(go())


def test_named_producer_deduplicates_from_publishing_id_zero(stream_port):
    """A reference never seen has no sequence: its first message may carry publishing id 0
    (rabbitmq-stream-client and the Java client start a new named producer there); resent
    ids are confirmed but written once."""
    s = name()

    def msg(i, body):
        m = AMQPMessage(body=body.encode())
        m.publishing_id = i
        return m

    async def go():
        await create(stream_port, s)
        async with producer(stream_port) as p:
            for i, body in [(0, "a"), (1, "b"), (0, "a"), (1, "b"), (2, "c")]:
                await p.send_wait(s, msg(i, body), publisher_name="fresh")
            client = await p.default_client
            assert await client.query_publisher_sequence(s, "fresh") == 2
        got = await read(stream_port, s, 3)
        assert got == [(0, "a"), (1, "b"), (2, "c")]
        await delete(stream_port, s)
    run(go())


def test_every_offset_specification(stream_port):
    s = name()

    async def go():
        await create(stream_port, s)
        before = int(time.time() * 1000) - 2000
        await publish(stream_port, s, [f"m{i}" for i in range(5)])
        first = await read(stream_port, s, 1)
        assert first[0] == (0, "m0")
        at = await read(stream_port, s, 1, ConsumerOffsetSpecification(OffsetType.OFFSET, 3))
        assert at[0] == (3, "m3")
        last = await read(stream_port, s, 1, ConsumerOffsetSpecification(OffsetType.LAST, None))
        assert last[0] == (4, "m4")
        ts = await read(stream_port, s, 1,
                        ConsumerOffsetSpecification(OffsetType.TIMESTAMP, before))
        assert ts[0] == (0, "m0")
        nxt = await read(stream_port, s, 0, ConsumerOffsetSpecification(OffsetType.NEXT, None))
        assert nxt == []
        await delete(stream_port, s)
    run(go())


def test_last_after_a_burst_starts_at_its_newest_chunk(stream_port):
    """A burst published in one frame to an idle stream is cut into chunks as RabbitMQ's
    writer cuts it (32 messages, then doubling), so a consumer at `last` starts at the
    burst's newest chunk and gets fewer than all of it (rstream's own test_offset_type_last;
    Pier wrote such a burst as one chunk and delivered all of it)."""
    s = name()

    async def go():
        await create(stream_port, s)
        async with producer(stream_port) as p:
            await p.send_batch(s, [AMQPMessage(body=str(i).encode()) for i in range(1, 5000)])
        got = []
        done = asyncio.Event()
        async with consumer(stream_port) as c:
            async def cb(msg, ctx: MessageContext):
                got.append((ctx.offset, bytes(msg.body).decode()))
                if got[-1][1] == "4999":
                    done.set()
            await c.start()
            await c.subscribe(s, cb, decoder=amqp_decoder,
                              offset_specification=ConsumerOffsetSpecification(
                                  OffsetType.LAST, None))
            await asyncio.wait_for(done.wait(), STEP)
        assert 0 < len(got) < 4999, len(got)
        assert got[0][0] > 0
        assert [o for o, _ in got] == list(range(got[0][0], 4999))
        await delete(stream_port, s)
    run(go())


def test_server_side_offset_tracking(stream_port):
    s = name()

    async def go():
        await create(stream_port, s)
        await publish(stream_port, s, [f"m{i}" for i in range(10)])
        async with consumer(stream_port) as c:
            await c.start()
            with pytest.raises(Exception):
                await c.query_offset(s, "reader")
            await c.store_offset(s, "reader", 6)
            for _ in range(100):
                try:
                    if await c.query_offset(s, "reader") == 6:
                        break
                except Exception:  # noqa: BLE001
                    pass
                await asyncio.sleep(0.02)
            assert await c.query_offset(s, "reader") == 6
        # A consumer restarting from the stored offset.
        got = await read(stream_port, s, 1, ConsumerOffsetSpecification(OffsetType.OFFSET, 7))
        assert got[0] == (7, "m7")
        await delete(stream_port, s)
    run(go())


def test_retention_by_size(stream_port):
    s = name()

    async def go():
        await create(stream_port, s, **{"max-length-bytes": 20_000,
                                        "stream-max-segment-size-bytes": 5_000})
        async with producer(stream_port) as p:
            for i in range(30):
                batch = [AMQPMessage(body=(f"{i}-{j}-" + "x" * 100).encode())
                         for j in range(10)]
                await p.send_batch(s, batch[:-1])
                # Each batch confirmed before the next goes: in chunks of their own, as
                # RabbitMQ's writer writes them. Unconfirmed, a burst can reach Pier's writer
                # at once and become one chunk (it takes all that waits, up to 4 MiB), which
                # then fills the active segment, and retention never deletes that one.
                await p.send_wait(s, batch[-1])
        # Retention runs on the stream's writer after a segment rolls, asynchronously to the
        # confirms (as with osiris): give it a moment on a loaded machine.
        deadline = time.monotonic() + 10
        while True:
            first = await read(stream_port, s, 1)
            if first[0][0] > 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert first[0][0] > 0, "the oldest segments were deleted"
        await delete(stream_port, s)
    run(go())


@pytest.mark.pier_only
def test_publisher_sequence_and_offsets_survive_a_crash(tmp_path):
    pier = PierProcess(tmp_path).start()
    port = pier.stream_port
    wait_for_port(port)
    s = name()
    try:
        async def before():
            await create(port, s)
            await publish(port, s, [f"m{i}" for i in range(5)], publisher_name="app")
            async with consumer(port) as c:
                await c.start()
                await c.store_offset(s, "reader", 3)
                await asyncio.sleep(0.3)
        run(before())
        pier.kill()
        pier.start()
        wait_for_port(port)

        async def after():
            async with producer(port) as p:
                await p.start()
                client = await p.default_client
                assert await client.query_publisher_sequence(s, "app") == 5
            async with consumer(port) as c:
                await c.start()
                assert await c.query_offset(s, "reader") == 3
            got = await read(port, s, 5)
            assert [b for _, b in got] == [f"m{i}" for i in range(5)]
        run(after())
    finally:
        pier.kill()


@pytest.mark.pier_only
def test_super_stream_partitions(stream_port):
    ss = name("super")

    async def go():
        async with producer(stream_port) as p:
            await p.start()
            client = await p.default_client
            await client.create_super_stream(
                ss, partitions=[f"{ss}-0", f"{ss}-1", f"{ss}-2"],
                binding_keys=["0", "1", "2"], arguments=None)
            assert await client.partitions(ss) == [f"{ss}-0", f"{ss}-1", f"{ss}-2"]
            assert await client.route("1", ss) == [f"{ss}-1"]
            await client.delete_super_stream(ss)
    run(go())


@pytest.mark.pier_only
def test_single_active_consumer(stream_port):
    s = name()

    async def go():
        await create(stream_port, s)
        await publish(stream_port, s, [f"m{i}" for i in range(3)])
        got = {1: [], 2: []}

        async def update(is_active, ctx):
            return rstream.OffsetSpecification(OffsetType.FIRST, None)

        c1, c2 = consumer(stream_port), consumer(stream_port)
        await c1.start()
        await c2.start()
        for c, k in ((c1, 1), (c2, 2)):
            async def cb(msg, ctx, k=k):
                got[k].append(bytes(msg.body).decode())
            await c.subscribe(s, cb, decoder=amqp_decoder, subscriber_name="group",
                              properties={"single-active-consumer": "true", "name": "group"},
                              consumer_update_listener=update)
        for _ in range(100):
            if len(got[1]) >= 3:
                break
            await asyncio.sleep(0.05)
        assert got[1] == ["m0", "m1", "m2"] and got[2] == []
        await c1.close()
        for _ in range(100):
            if len(got[2]) >= 3:
                break
            await asyncio.sleep(0.05)
        assert got[2] == ["m0", "m1", "m2"]
        await c2.close()
        await delete(stream_port, s)
    run(go())


@pytest.mark.pier_only
def test_filtering(stream_port):
    """Publishers tag messages with a filter value; a consumer filtering on one value gets
    only the chunks whose bloom filter may hold it (each batch below is its own chunk, so
    exactly that value's messages), plus the unfiltered ones with match-unfiltered.
    (Filtering came in RabbitMQ 3.13.)"""
    s = name("filter")

    async def go():
        await create(stream_port, s)
        async def region_of(m):
            return m.application_properties["region"]

        async with Producer("127.0.0.1", port=stream_port, username="guest",
                            password="guest", filter_value_extractor=region_of) as p:
            for region in ("emea", "amer", "emea", "amer"):
                for i in range(5):
                    await p.send_wait(s, AMQPMessage(body=f"{region}-{i}".encode(),
                                                     application_properties={
                                                         "region": region}))
        await publish(stream_port, s, ["plain-0", "plain-1"])

        async def filtered(values, match_unfiltered, n):
            got = []
            done = asyncio.Event()
            async with consumer(stream_port) as c:
                async def cb(msg, ctx):
                    got.append(bytes(msg.body).decode())
                    if len(got) >= n:
                        done.set()
                await c.start()
                await c.subscribe(s, cb, decoder=amqp_decoder,
                                  offset_specification=ConsumerOffsetSpecification(
                                      OffsetType.FIRST, None),
                                  filter_input=rstream.FilterConfiguration(
                                      values_to_filter=values,
                                      match_unfiltered=match_unfiltered))
                await asyncio.wait_for(done.wait(), STEP)
                await asyncio.sleep(0.5)  # nothing more comes
            return got

        amer = await filtered(["amer"], False, 10)
        assert sorted(amer) == sorted(f"amer-{i}" for i in range(5) for _ in range(2))
        with_plain = await filtered(["emea"], True, 12)
        assert [b for b in with_plain if b.startswith("amer")] == []
        assert with_plain.count("plain-0") == 1 and with_plain.count("plain-1") == 1
        assert len([b for b in with_plain if b.startswith("emea")]) == 10
        await delete(stream_port, s)
    run(go())
