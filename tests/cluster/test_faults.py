"""Faults: the leader killed during a stream of declares, the leader paused, and a minority
partition that refuses changes and heals. After every fault all nodes' definitions are
compared."""

from __future__ import annotations

import threading
import time

from harness import declare_queue

CLEAR_REFUSALS = ("no reachable majority", "may or may not have been applied")


def _wait_for(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


class Stream:
    """Declares durable queues on one node, one after another, in a thread; records
    which were acknowledged and what the refusals were."""

    def __init__(self, node, prefix: str):
        self.node, self.prefix = node, prefix
        self.acked: list[str] = []
        self.refused: list[tuple[int, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            name = f"{self.prefix}{i}"
            i += 1
            try:
                code, body = declare_queue(self.node, "/", name, timeout=30)
            except OSError as e:
                self.refused.append((0, str(e)))
                continue
            if code in (201, 204):
                self.acked.append(name)
            else:
                self.refused.append((code, body))

    def __enter__(self) -> "Stream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_leader_killed_during_a_stream_of_declares(cluster):
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    with Stream(follower, "s") as s:
        _wait_for("declares before the fault", lambda: len(s.acked) >= 20)
        leader.kill()
        before = len(s.acked)
        _wait_for("declares go on under a new leader", lambda: len(s.acked) >= before + 20)
        leader.start()
        leader.wait_http()
        after = len(s.acked)
        _wait_for("declares go on with the old leader back",
                  lambda: len(s.acked) >= after + 10)
    cluster.wait_formed()
    defs = cluster.assert_same_definitions()
    missing = set(s.acked) - {q["name"] for q in defs["queues"]}
    assert not missing, f"acknowledged but lost: {sorted(missing)}"
    # Whatever was refused during the election was refused clearly, never hung.
    for code, body in s.refused:
        assert code == 503 and any(r in str(body) for r in CLEAR_REFUSALS), (code, body)


def test_paused_leader_loses_leadership_and_catches_up(cluster):
    leader = cluster.leader()
    others = [n for n in cluster.nodes if n is not leader]
    leader.pause()
    try:
        new = cluster.wait_formed(nodes=others)
        assert new != leader.name
        for i in range(5):
            assert declare_queue(others[0], "/", f"during-pause-{i}")[0] == 201
    finally:
        leader.resume()
    cluster.wait_formed()
    defs = cluster.assert_same_definitions()
    assert {f"during-pause-{i}" for i in range(5)} <= {q["name"] for q in defs["queues"]}


def test_minority_partition_refuses_changes_and_heals(cluster):
    a, b, c = cluster.nodes
    assert declare_queue(a, "/", "before")[0] == 201
    cluster.assert_same_definitions()
    # c alone on one side, a and b on the other.
    cluster.netns.cut(c.ip, a.ip)
    cluster.netns.cut(c.ip, b.ip)
    code, body = declare_queue(c, "/", "on-the-minority", timeout=30)
    assert code == 503, (code, body)
    assert any(r in body["reason"] for r in CLEAR_REFUSALS), body
    code, body = c.api("PUT", "/api/users/carol", {"password": "x", "tags": ""}, timeout=30)
    assert code == 503, (code, body)
    # The majority carries on.
    cluster.wait_formed(nodes=[a, b])
    assert declare_queue(b, "/", "on-the-majority")[0] == 201
    status = c.status()
    assert set(status["partitions"].get(c.name, [])) == {a.name, b.name}, status
    # Healed: c catches up, and what it refused never happened anywhere.
    cluster.netns.heal()
    cluster.wait_formed()
    defs = cluster.assert_same_definitions()
    names = {q["name"] for q in defs["queues"]}
    assert "on-the-majority" in names and "before" in names
    assert "on-the-minority" not in names
    assert "carol" not in {u["name"] for u in defs["users"]}
    assert declare_queue(c, "/", "after-heal")[0] == 201
    cluster.assert_same_definitions()
