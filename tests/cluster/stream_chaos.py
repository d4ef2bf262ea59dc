"""Replicated stream chaos run with a history checker (issue 15: stream replication).

Producers publish unique ids with publisher confirms over AMQP 0-9-1 through random nodes
of a 3-node cluster of real ``pier`` processes, to a stream led at first by the first node
and replicated on the two others, and log each id as invoked, then ok (basic.ack) or failed
(a nack, or the connection died with the outcome unknown). Faults are injected meanwhile,
each aimed at the stream's leader of the moment: SIGKILL of the leader (a surviving member
takes over: failover), of a replica, of every node at once, SIGSTOP of the leader and of a
replica, a partition that isolates the leader (no majority: nothing is confirmed until it
heals), a
minority/majority split, and restarts. When the faults are healed, every member's copy of
the stream is read from its first offset (the leader's over AMQP, each replica's with the
stream client rstream on that node) and the history is checked:

* lost: confirmed (ok) and missing from any member's copy: must be 0;
* phantom: in a copy and never published (invoked): must be 0;
* duplicates: an id twice in a copy (nothing is republished here): must be 0;
* diverged: a replica's copy differs from the leader's: must be 0.

Run it through ``scripts/stream-chaos.sh ROUNDS`` (long run) or the short run in
``test_stream_chaos.py`` (part of the test command). Needs root, ``ip`` and ``nft``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from chaos import History, Producer, apply_fault, connect, run_faults
from harness import STREAM_PORT, Cluster, Netns

STREAM = "chaos-stream"
FAULTS = ["kill-follower", "pause-follower", "kill-leader", "isolate-leader", "kill-all",
          "pause-leader", "minority-split", "restart-one"]


class StreamProducer(Producer):
    """chaos.Producer, publishing to the stream."""

    queue = STREAM


def read_leader(node, timeout: float = 30.0) -> list[str]:
    """The whole stream, read over AMQP on its leader."""
    conn = connect(node)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1000)
        got: list[str] = []
        last = [time.monotonic()]

        def on_message(c, m, _p, body):
            got.append(body.decode())
            last[0] = time.monotonic()
            c.basic_ack(m.delivery_tag, multiple=False)
        ch.basic_consume(STREAM, on_message, arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and time.monotonic() - last[0] < 2:
            conn.process_data_events(0.2)
        return got
    finally:
        conn.close()


def read_on(node, stream: str, count: int, reference: str | None = None,
            timeout: float = 30.0) -> list[str]:
    """Every message of `stream` from `first`, read on `node` (its leader or a replica:
    rstream's choice of node is narrowed to that one) until `count` arrived or `timeout`;
    with `reference`, the consumer stores the offset of the count-th message under it."""
    import rstream
    from rstream import (Consumer, ConsumerOffsetSpecification, OffsetType,
                         amqp_decoder)
    original = rstream.client.Client.query_leader_and_replicas

    async def only(self, s):
        leader, replicas = await original(self, s)
        return leader, [b for b in [leader, *replicas] if b.host == node.ip]

    async def go():
        got: list[str] = []
        c = Consumer(node.ip, port=STREAM_PORT, username="guest", password="guest")
        await c.start()

        async def on_message(msg, ctx):
            got.append(bytes(msg.body).decode())
            if reference and len(got) == count:
                await ctx.consumer.store_offset(stream, reference, ctx.offset)
        await c.subscribe(stream, on_message, decoder=amqp_decoder,
                          offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(got) < count:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await c.close()
        return got
    rstream.client.Client.query_leader_and_replicas = only
    try:
        return asyncio.run(go())
    finally:
        rstream.client.Client.query_leader_and_replicas = original


def queue_on(node) -> dict:
    """The stream's queue object on `node` (empty when it does not answer)."""
    try:
        code, q = node.api("GET", f"/api/queues/%2F/{STREAM}", timeout=3)
    except OSError:
        return {}
    return q if code == 200 else {}


def figures(node) -> dict:
    return queue_on(node).get("stream") or {}


def current_leader(cluster: Cluster):
    """The stream's leader as the nodes that answer report it (most of them), or None."""
    seen: dict[str, int] = {}
    for n in cluster.nodes:
        leader = queue_on(n).get("leader")
        if leader:
            seen[leader] = seen.get(leader, 0) + 1
    if not seen:
        return None
    name = max(seen, key=lambda k: seen[k])
    return next((n for n in cluster.nodes if n.name == name), None)


def wait_synced(cluster: Cluster, timeout: float = 60.0) -> tuple[dict, object]:
    """Until the leader reports both replicas synced to its end: its figures, and it."""
    deadline = time.monotonic() + timeout
    f = {}
    while time.monotonic() < deadline:
        leader = current_leader(cluster)
        if leader is None:
            time.sleep(0.3)
            continue
        f = figures(leader)
        reps = f.get("replicas") or {}
        if (f and len(reps) == 2 and all(v == f.get("written_offset") for v in reps.values())
                and f.get("next_offset") == f.get("written_offset")):
            return f, leader
        time.sleep(0.3)
    raise AssertionError(f"replicas not synced after healing: {f}")


def inject(cluster: Cluster, netns: Netns, fault: str, hold: float, log) -> None:
    """Aimed at the stream's leader of the moment (it moves when it fails)."""
    leader = current_leader(cluster) or cluster.nodes[0]
    log(f"fault {fault} (leader {leader.name})")
    apply_fault(cluster, netns, fault, hold, leader, [n for n in cluster.nodes if n is not leader])
    cluster.wait_formed(timeout=60)
    log("healed")


def progress(history: History) -> str:
    with history.lock:
        return (f"invoked {len(history.invoked)}, confirmed {len(history.ok)}, "
                f"nacked {len(history.failed)}")


def check(history: History, copies: dict[str, list[str]], leader: str) -> dict:
    with history.lock:
        result = {
            "invoked": len(history.invoked),
            "confirmed": len(history.ok),
            "nacked_or_unknown": len(history.invoked - history.ok),
        }
        lost, phantom, dups = {}, {}, {}
        for node, ids in copies.items():
            present = set(ids)
            lost[node] = sorted(history.ok - present)
            phantom[node] = sorted(present - history.invoked)
            dups[node] = len(ids) - len(present)
        result["messages"] = {n: len(ids) for n, ids in copies.items()}
        result["lost"] = sum(len(v) for v in lost.values())
        result["lost_ids"] = {n: v[:10] for n, v in lost.items() if v}
        result["phantom"] = sum(len(v) for v in phantom.values())
        result["phantom_ids"] = {n: v[:10] for n, v in phantom.items() if v}
        result["duplicates"] = sum(dups.values())
        result["diverged"] = sorted(n for n, ids in copies.items() if ids != copies[leader])
        result["unconfirmed_stored"] = len((history.invoked - history.ok) & set(copies[leader]))
        return result


def run(rounds: int, workdir: Path, hold: float = 5.0, seed: int = 1, producers: int = 2,
        faults: list[str] | None = None, log=print, netns: Netns | None = None) -> dict:
    random.seed(seed)
    own_netns = netns is None
    netns = netns or Netns.create()
    cluster = Cluster(workdir, 3, netns)
    history = History()
    stop = threading.Event()
    try:
        cluster.start()
        conn = connect(cluster.nodes[0])
        conn.channel().queue_declare(STREAM, durable=True,
                                     arguments={"x-queue-type": "stream"})
        conn.close()
        workers = [StreamProducer(i, cluster, history, stop) for i in range(producers)]
        for w in workers:
            w.start()
        time.sleep(2)
        injected = run_faults(rounds, faults or FAULTS,
                              lambda f: inject(cluster, netns, f, hold, log),
                              log, lambda: progress(history))
        stop.set()
        for w in workers:
            w.join(timeout=30)
        synced, leader = wait_synced(cluster)
        copies = {leader.name: read_leader(leader)}
        for n in [n for n in cluster.nodes if n is not leader]:
            copies[n.name] = read_on(n, STREAM, len(copies[leader.name]))
        result = check(history, copies, leader.name)
        result["faults"] = injected
        result["leader_at_end"] = leader.name
        result["stream_at_end"] = {k: synced.get(k) for k in
                                   ("next_offset", "written_offset", "replicas", "segments")}
        return result
    finally:
        stop.set()
        cluster.stop()
        netns.heal()
        if own_netns:
            netns.destroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--hold", type=float, default=5.0,
                    help="seconds each fault lasts (over 3 s: a stopped leader is replaced)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--faults", default=None,
                    help=f"comma-separated, cycled (default: {','.join(FAULTS)})")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pier-stream-chaos-"))
    started = time.monotonic()
    result = run(args.rounds, workdir, hold=args.hold, seed=args.seed,
                 faults=args.faults.split(",") if args.faults else None,
                 log=lambda s: print(f"[{time.monotonic() - started:7.1f}s] {s}", flush=True))
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    ok = not (result["lost"] or result["phantom"] or result["duplicates"] or result["diverged"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
