#!/usr/bin/env python3
"""Opens N idle AMQP connections (handshake, one channel, heartbeats on) to a broker and
reports the broker's resident memory per connection. Stdlib only.

Usage: scripts/idle_connections.py --port 5672 --pid BROKER_PID [--count 10000] [--heartbeat 30]

Each connection answers the broker's heartbeats for --hold seconds, so the broker's heartbeat
machinery runs for all of them; then everything is closed and the figures are printed.
"""

import argparse
import asyncio
import struct
import time

FRAME_END = b"\xce"


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + FRAME_END


def shortstr(s: bytes) -> bytes:
    return bytes([len(s)]) + s


def longstr(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s


def method(channel: int, class_id: int, method_id: int, args: bytes) -> bytes:
    return frame(1, channel, struct.pack(">HH", class_id, method_id) + args)


async def read_frame(reader: asyncio.StreamReader):
    header = await reader.readexactly(7)
    ftype, channel, size = struct.unpack(">BHI", header)
    payload = await reader.readexactly(size + 1)
    return ftype, channel, payload[:-1]


async def one_connection(port: int, heartbeat: int, hold: float, opened: list, stop: asyncio.Event):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"AMQP\x00\x00\x09\x01")
    await read_frame(reader)  # connection.start
    props = struct.pack(">I", 0)  # empty client properties table
    writer.write(method(0, 10, 11, props + shortstr(b"PLAIN") + longstr(b"\x00guest\x00guest")
                        + shortstr(b"en_US")))
    _, _, tune = await read_frame(reader)
    channel_max, frame_max, _ = struct.unpack(">HIH", tune[4:12])
    writer.write(method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, heartbeat)))
    writer.write(method(0, 10, 40, shortstr(b"/") + shortstr(b"") + b"\x00"))
    await read_frame(reader)  # open-ok
    writer.write(method(1, 20, 10, shortstr(b"")))
    await read_frame(reader)  # channel.open-ok
    opened.append(1)

    async def heartbeats():
        while not stop.is_set():
            writer.write(frame(8, 0, b""))
            await asyncio.sleep(max(heartbeat / 2, 1))

    async def drain():
        while not stop.is_set():
            await read_frame(reader)

    hb = asyncio.create_task(heartbeats())
    rd = asyncio.create_task(drain())
    await stop.wait()
    hb.cancel()
    rd.cancel()
    writer.close()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=5672)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--heartbeat", type=int, default=30)
    ap.add_argument("--hold", type=float, default=10.0)
    args = ap.parse_args()
    before = rss_kb(args.pid)
    opened: list = []
    stop = asyncio.Event()
    started = time.monotonic()
    tasks = []
    for i in range(args.count):
        tasks.append(asyncio.create_task(
            one_connection(args.port, args.heartbeat, args.hold, opened, stop)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # do not trip the accept backlog
    while len(opened) < args.count and time.monotonic() - started < 120:
        await asyncio.sleep(0.2)
        failed = [t for t in tasks if t.done() and t.exception()]
        if failed:
            raise SystemExit(f"{len(failed)} connections failed: {failed[0].exception()!r}")
    setup = time.monotonic() - started
    await asyncio.sleep(args.hold)
    during = rss_kb(args.pid)
    print(f"connections open: {len(opened)} in {setup:.1f}s; broker RSS {before / 1024:.1f} MiB "
          f"-> {during / 1024:.1f} MiB; {(during - before) * 1024 / max(len(opened), 1):.0f} "
          f"bytes per idle connection (with one channel, heartbeat {args.heartbeat}s)")
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
