"""Quorum queue chaos run with a history checker (issue 14, must-have 6).

Jepsen's total-queue model: producers publish unique ids with publisher confirms and log
each one as invoked, then ok (basic.ack) or failed (basic.nack, or the connection died with
the outcome unknown); consumers log every delivery and acknowledge it after logging. Faults
are injected into a 3-node cluster of real ``pier`` processes (``--quorum-replication``) in a
network namespace: SIGKILL of the queue's leader, of a follower, of every node at once,
SIGSTOP of the leader, a partition that isolates the leader, a minority/majority split, and
restarts. When the faults are healed everything left is drained, and the history is checked:

* lost: confirmed (ok) and never delivered — must be 0;
* phantom: delivered and never published (invoked) — must be 0;
* duplicates: delivered more than once (at-least-once delivery allows them; reported).

Run it through ``scripts/quorum-chaos.sh ROUNDS`` (long run) or the short run in
``test_quorum_chaos.py`` (part of the test command). Needs root, ``ip`` and ``nft``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions

from harness import AMQP_PORT, Cluster, Netns

QUEUE = "chaos"
FAULTS = ["kill-leader", "kill-follower", "kill-all", "pause-leader", "isolate-leader",
          "minority-split", "restart-one"]


@dataclass
class History:
    invoked: set[str] = field(default_factory=set)
    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    delivered: Counter = field(default_factory=Counter)
    redelivered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> dict:
        with self.lock:
            delivered = set(self.delivered)
            lost = sorted(self.ok - delivered)
            phantom = sorted(delivered - self.invoked)
            dups = sum(n - 1 for n in self.delivered.values() if n > 1)
            return {
                "invoked": len(self.invoked),
                "confirmed": len(self.ok),
                "nacked_or_unknown": len(self.invoked - self.ok),
                "delivered_unique": len(delivered),
                "deliveries": sum(self.delivered.values()),
                "redelivered_flag": self.redelivered,
                "duplicates": dups,
                "lost": len(lost),
                "lost_ids": lost[:20],
                "phantom": len(phantom),
                "phantom_ids": phantom[:20],
                # Published, never confirmed, and delivered anyway (allowed).
                "unconfirmed_delivered": len((self.invoked - self.ok) & delivered),
            }


def connect(node) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        host=node.ip, port=AMQP_PORT, connection_attempts=1, socket_timeout=5,
        blocked_connection_timeout=10, heartbeat=5))


class Worker(threading.Thread):
    """A client that connects to a random running node and runs `session` on the
    connection until it is told to stop; any failure (a node killed, paused or cut off)
    means another node."""

    def __init__(self, name: str, seed: int, cluster: Cluster, history: History,
                 stop: threading.Event):
        super().__init__(daemon=True, name=name)
        self.rng = random.Random(seed)
        self.cluster, self.history, self.stop = cluster, history, stop

    def run(self) -> None:
        while not self.stop.is_set():
            nodes = self.cluster.running()
            if not nodes:
                time.sleep(0.2)
                continue
            try:
                self.session(connect(self.rng.choice(nodes)))
            except Exception:  # noqa: BLE001 - any failure: reconnect elsewhere
                time.sleep(0.2)

    def session(self, conn: pika.BlockingConnection) -> None:
        raise NotImplementedError


class Producer(Worker):
    """Publishes unique ids with confirms: invoked before, ok on basic.ack, failed on a
    nack or unroutable; a connection lost mid-publish leaves the outcome unknown."""

    queue = QUEUE

    def __init__(self, pid: int, cluster: Cluster, history: History, stop: threading.Event):
        super().__init__(f"producer-{pid}", pid, cluster, history, stop)
        self.pid = pid
        self.n = 0

    def session(self, conn: pika.BlockingConnection) -> None:
        ch = conn.channel()
        ch.confirm_delivery()
        while not self.stop.is_set():
            mid = f"p{self.pid}-{self.n}"
            self.n += 1
            with self.history.lock:
                self.history.invoked.add(mid)
            try:
                ch.basic_publish("", self.queue, mid.encode(),
                                 pika.BasicProperties(delivery_mode=2))
            except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
                with self.history.lock:
                    self.history.failed.add(mid)
                continue
            with self.history.lock:
                self.history.ok.add(mid)


class Consumer(Worker):
    """Logs every delivery, then acknowledges it."""

    def __init__(self, cid: int, cluster: Cluster, history: History, stop: threading.Event):
        super().__init__(f"consumer-{cid}", 1000 + cid, cluster, history, stop)
        self.last = time.monotonic()

    def session(self, conn: pika.BlockingConnection) -> None:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)

        def on_message(c, m, _p, body):
            with self.history.lock:
                self.history.delivered[body.decode()] += 1
                if m.redelivered:
                    self.history.redelivered += 1
            self.last = time.monotonic()
            c.basic_ack(m.delivery_tag)

        ch.basic_consume(QUEUE, on_message)
        while not self.stop.is_set():
            conn.process_data_events(0.2)


def queue_leader(cluster: Cluster):
    for n in cluster.running():
        try:
            code, q = n.api("GET", f"/api/queues/%2F/{QUEUE}", timeout=3)
        except OSError:
            continue
        if code == 200 and q.get("leader"):
            return next((x for x in cluster.nodes if x.name == q["leader"]), None)
    return None


def queue_states(cluster: Cluster) -> dict:
    """Each running node's view of the queue (for a failed check)."""
    states = {}
    for n in cluster.running():
        try:
            code, q = n.api("GET", f"/api/queues/%2F/{QUEUE}", timeout=3)
        except OSError as e:
            states[n.name] = repr(e)
            continue
        if code == 200:
            states[n.name] = {k: q.get(k) for k in ("messages", "messages_ready",
                                                   "messages_unacknowledged", "consumers",
                                                   "leader", "online")}
        else:
            states[n.name] = code
    return states


def wait_healthy(cluster: Cluster, timeout: float = 60.0) -> None:
    cluster.wait_formed(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if queue_leader(cluster) is not None:
            return
        time.sleep(0.2)
    raise AssertionError("the quorum queue has no leader after healing")


def apply_fault(cluster: Cluster, netns: Netns, fault: str, hold: float, leader,
                others: list) -> None:
    """Injects `fault` for `hold` seconds and lifts it (a killed node is started again);
    `leader`: the node the leader faults aim at (None: they are skipped)."""
    if fault == "kill-leader" and leader:
        leader.kill()
        time.sleep(hold)
        leader.start()
    elif fault == "kill-follower":
        victim = random.choice(others)
        victim.kill()
        time.sleep(hold)
        victim.start()
    elif fault == "kill-all":
        for n in cluster.nodes:
            n.kill()
        time.sleep(1)
        for n in cluster.nodes:
            n.start()
    elif fault == "pause-leader" and leader:
        leader.pause()
        time.sleep(hold)
        leader.resume()
    elif fault == "pause-follower":
        victim = random.choice(others)
        victim.pause()
        time.sleep(hold)
        victim.resume()
    elif fault == "isolate-leader" and leader:
        for o in others:
            netns.cut(leader.ip, o.ip)
        time.sleep(hold)
        netns.heal()
    elif fault == "minority-split":
        lone = random.choice(cluster.nodes)
        for o in cluster.nodes:
            if o is not lone:
                netns.cut(lone.ip, o.ip)
        time.sleep(hold)
        netns.heal()
    elif fault == "restart-one":
        victim = random.choice(cluster.nodes)
        victim.terminate()
        victim.start()
    for n in cluster.nodes:
        if not n.alive:
            n.start()
    for n in cluster.nodes:
        n.wait_http(timeout=60)


def inject(cluster: Cluster, netns: Netns, fault: str, hold: float, log) -> None:
    leader = queue_leader(cluster)
    others = [n for n in cluster.nodes if n is not leader]
    log(f"fault {fault} (queue leader {leader.name if leader else None})")
    apply_fault(cluster, netns, fault, hold, leader, others)
    wait_healthy(cluster)
    after = queue_leader(cluster)
    log(f"healed: queue leader {after.name if after else None}")


def progress(history: History) -> str:
    with history.lock:
        return (f"invoked {len(history.invoked)}, confirmed {len(history.ok)}, "
                f"nacked {len(history.failed)}, delivered {len(history.delivered)}")


def run_faults(rounds: int, order: list[str], inject_one, log, report) -> list[str]:
    """Injects `rounds` faults, taking `order` in turn (each lifted before the next, then a
    second of calm), logging `report()` after each; returns the faults injected."""
    injected: list[str] = []
    for r in range(rounds):
        fault = order[r % len(order)]
        inject_one(fault)
        log(report())
        injected.append(fault)
        time.sleep(1)
    return injected


def run(rounds: int, workdir: Path, hold: float = 3.0, seed: int = 1, producers: int = 2,
        consumers: int = 2, faults: list[str] | None = None, log=print,
        netns: Netns | None = None, pier_args: list[str] | None = None) -> dict:
    random.seed(seed)
    own_netns = netns is None
    netns = netns or Netns.create()
    cluster = Cluster(workdir, 3, netns)
    for n in cluster.nodes:
        n.extra_args.append("--quorum-replication")
        n.extra_args.extend(pier_args or [])
    history = History()
    stop = threading.Event()
    try:
        cluster.start()
        conn = connect(cluster.nodes[0])
        conn.channel().queue_declare(QUEUE, durable=True,
                                     arguments={"x-queue-type": "quorum"})
        conn.close()
        wait_healthy(cluster)
        workers = ([Producer(i, cluster, history, stop) for i in range(producers)]
                   + [Consumer(i, cluster, history, stop) for i in range(consumers)])
        for w in workers:
            w.start()
        time.sleep(2)
        injected = run_faults(rounds, faults or FAULTS,
                              lambda f: inject(cluster, netns, f, hold, log),
                              log, lambda: progress(history))
        # Stop publishing, keep consuming until nothing arrives for a while.
        prods = [w for w in workers if isinstance(w, Producer)]
        cons = [w for w in workers if isinstance(w, Consumer)]
        prod_stop = threading.Event()
        for p in prods:
            p.stop = prod_stop
        prod_stop.set()
        for p in prods:
            p.join(timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            quiet = time.monotonic() - max(c.last for c in cons)
            with history.lock:
                missing = len(history.ok - set(history.delivered))
            if missing == 0 and quiet > 3:
                break
            if quiet > 15:
                break
            time.sleep(0.5)
        stop.set()
        for c in cons:
            c.join(timeout=10)
        result = history.check()
        result["faults"] = injected
        if result["lost"]:
            # Lost for good, or stuck in the queue (undelivered, or checked out to nobody)?
            result["queue_at_end"] = queue_states(cluster)
        return result
    finally:
        stop.set()
        cluster.stop()
        netns.heal()
        if own_netns:
            netns.destroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=14)
    ap.add_argument("--hold", type=float, default=3.0, help="seconds each fault lasts")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--faults", default=None,
                    help=f"comma-separated, cycled (default: {','.join(FAULTS)})")
    ap.add_argument("--pier-arg", action="append", default=[],
                    help="an extra argument for every pier process (repeatable), "
                         "e.g. --pier-arg=--quorum-heartbeats --pier-arg=false")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pier-chaos-"))
    started = time.monotonic()
    result = run(args.rounds, workdir, hold=args.hold, seed=args.seed,
                 faults=args.faults.split(",") if args.faults else None, pier_args=args.pier_arg,
                 log=lambda s: print(f"[{time.monotonic() - started:7.1f}s] {s}", flush=True))
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and result["phantom"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
