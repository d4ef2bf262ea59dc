"""Replicated quorum queues (issue 14; on by default in a cluster): a quorum queue
declared on a 3-node cluster is a Raft group of three members. Publishes are confirmed once
a majority has the message; consumers on any node get deliveries from the group's leader;
killing the leader loses nothing confirmed, and a consumer elsewhere keeps its subscription
and gets what was unacknowledged again, redelivered, with x-delivery-count."""

from __future__ import annotations

import threading
import time

import pika
import pika.exceptions

from test_queues import connect, publish_confirmed, wait_for

QQ = {"x-queue-type": "quorum"}


def replicated_cluster(cluster_factory):
    """Three nodes with the defaults: quorum queues are replicated without a switch."""
    return cluster_factory(3)


def declare_qq(node, name: str) -> None:
    """Declares quorum queue `name` through `node` (the group's first member)."""
    conn = connect(node)
    conn.channel().queue_declare(name, durable=True, arguments=QQ)
    conn.close()


def queue_info(node, name: str, missing_ok: bool = False) -> dict:
    """The queue's management object; with `missing_ok`, {} while the node does not know
    the queue yet (a node that restarts catches up on the metadata log first)."""
    code, body = node.api("GET", f"/api/queues/%2F/{name}")
    if missing_ok and code == 404:
        return {}
    assert code == 200, body
    return body


def publish_via(node, queue: str, bodies: list[str]) -> None:
    """Publishes `bodies` through `node` with confirms; every one must be confirmed."""
    conn = connect(node)
    ch = conn.channel()
    ch.confirm_delivery()
    assert publish_confirmed(ch, queue, bodies) == bodies
    conn.close()


def consume_all(conn, ch, queue: str, want: int, timeout: float = 30.0,
                ack: bool = True) -> list[tuple[str, bool, object]]:
    """(body, redelivered, x-delivery-count) of each delivery until `want` arrived."""
    got: list[tuple[str, bool, object]] = []

    def on_message(c, m, p, body):
        got.append((body.decode(), m.redelivered, (p.headers or {}).get("x-delivery-count")))
        if ack:
            c.basic_ack(m.delivery_tag)

    ch.basic_qos(prefetch_count=100)
    tag = ch.basic_consume(queue, on_message)
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    ch.basic_cancel(tag)
    return got


def test_replication_is_the_default_and_a_node_can_turn_it_off(cluster_factory):
    c = cluster_factory(3, start=False)
    c.nodes[0].extra_args += ["--quorum-replication", "false"]
    c.start()
    n1, n2, _ = c.nodes
    declare_qq(n2, "qq-default")
    info = queue_info(n2, "qq-default")
    assert info["type"] == "quorum"
    assert sorted(info["members"]) == sorted(n.name for n in c.nodes), info
    # Through the node that turned it off: one member, on that node.
    declare_qq(n1, "qq-local")
    wait_for("n2 knows qq-local", lambda: queue_info(n2, "qq-local", missing_ok=True))
    assert queue_info(n2, "qq-local")["members"] == [n1.name]


def test_leader_locator_places_leaders(cluster_factory):
    """x-queue-leader-locator as RabbitMQ 4: client-local (the default) leads from the
    declaring node; balanced from the member leading the fewest quorum queues."""
    c = replicated_cluster(cluster_factory)
    n1, n2, _ = c.nodes

    def leader(q):
        return wait_for(f"{q} has a leader", lambda: queue_info(n1, q, missing_ok=True).get("leader"))

    declare_qq(n2, "local")
    assert leader("local") == n2.name
    conn = connect(n1)
    ch = conn.channel()
    for i in range(3):
        ch.queue_declare(f"bal{i}", durable=True,
                         arguments={**QQ, "x-queue-leader-locator": "balanced"})
    conn.close()
    leaders = [leader(f"bal{i}") for i in range(3)]
    # n2 leads "local" already: the three balanced ones go to n1, n3 and then n2 or n1 …
    # every node leads at least one quorum queue, and none leads three of the four.
    counts = {n.name: (leaders + [n2.name]).count(n.name) for n in c.nodes}
    assert min(counts.values()) >= 1 and max(counts.values()) <= 2, counts
    # Whatever node leads, clients anywhere publish and consume through it.
    conn = connect(n1)
    ch = conn.channel()
    ch.confirm_delivery()
    assert publish_confirmed(ch, "bal1", ["x"]) == ["x"]
    conn.close()


def test_confirmed_messages_survive_the_leader_and_reach_consumers_on_any_node(cluster_factory):
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    conn1 = connect(n1)
    ch1 = conn1.channel()
    ch1.queue_declare("qq", durable=True, arguments=QQ)
    # Publish through another node: the group forwards to its leader.
    conn2 = connect(n2)
    ch2 = conn2.channel()
    ch2.confirm_delivery()
    bodies = [f"m{i}" for i in range(300)]
    confirmed = publish_confirmed(ch2, "qq", bodies)
    assert confirmed == bodies
    conn2.close()
    conn1.close()
    # Every member holds them: the figures come from each node's own copy.
    for n in c.nodes:
        wait_for(f"{n.name} holds 300", lambda n=n: queue_info(n, "qq").get("messages") == 300)
        # The queue's counts too (each member's engine applied the same publishes).
        wait_for(f"{n.name} counts 300 published",
                 lambda n=n: queue_info(n, "qq")["message_stats"].get("publish") == 300)
    # The declaring node led the group; it dies, and nothing confirmed is lost.
    n1.kill()
    conn3 = connect(n3)
    got = consume_all(conn3, conn3.channel(), "qq", 300)
    assert sorted(b for b, _, _ in got) == sorted(bodies)
    conn3.close()
    wait_for("the queue is empty", lambda: queue_info(n2, "qq").get("messages") == 0)
    for n in (n2, n3):
        wait_for(f"{n.name} counts 300 delivered and acked", lambda n=n: (
            lambda st: st.get("deliver_get", 0) >= 300 and st.get("ack") == 300)(
                queue_info(n, "qq")["message_stats"]))


def test_a_consumer_keeps_its_subscription_across_a_leader_kill(cluster_factory):
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    conn1 = connect(n1)
    ch1 = conn1.channel()
    ch1.queue_declare("qq2", durable=True, arguments=QQ)
    ch1.confirm_delivery()
    assert publish_confirmed(ch1, "qq2", ["a", "b", "c"]) == ["a", "b", "c"]
    conn1.close()
    # A consumer on n3 takes the three and acknowledges none.
    conn3 = connect(n3)
    ch3 = conn3.channel()
    got: list[tuple[str, bool, object]] = []

    def on_message(_c, m, p, body):
        got.append((body.decode(), m.redelivered, (p.headers or {}).get("x-delivery-count")))

    ch3.basic_qos(prefetch_count=10)
    ch3.basic_consume("qq2", on_message)
    wait_for("3 deliveries", lambda: len(got) >= 3, step=lambda: conn3.process_data_events(0.1))
    assert [b for b, _, _ in got] == ["a", "b", "c"]
    assert all(not r for _, r, _ in got)
    n1.kill()
    # The new leader returns what was out: the same consumer gets it again, redelivered,
    # counted.
    wait_for("3 redeliveries", lambda: len(got) >= 6, timeout=30,
             step=lambda: conn3.process_data_events(0.1))
    again = got[3:]
    assert sorted(b for b, _, _ in again) == ["a", "b", "c"]
    assert all(r and n == 1 for _, r, n in again), again
    # Acknowledging them (in the new session) empties the queue.
    ch3.basic_ack(0, multiple=True)
    conn3.process_data_events(0.5)
    wait_for("the queue is empty", lambda: queue_info(n2, "qq2").get("messages") == 0,
             step=lambda: conn3.process_data_events(0.1))
    conn3.close()


def test_basic_get_purge_and_delete_through_any_node(cluster_factory):
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    conn2 = connect(n2)
    ch2 = conn2.channel()
    ch2.queue_declare("qq3", durable=True, arguments=QQ)
    ch2.confirm_delivery()
    assert publish_confirmed(ch2, "qq3", ["x", "y", "z"]) == ["x", "y", "z"]
    conn3 = connect(n3)
    ch3 = conn3.channel()
    m, _p, body = ch3.basic_get("qq3", auto_ack=False)
    assert body == b"x" and m.message_count == 2
    ch3.basic_ack(m.delivery_tag)
    assert ch3.queue_purge("qq3").method.message_count == 2
    # Big messages: several MiB replicate (through a node that is not the leader too, and
    # in AppendEntries cut to size); one above 16 MiB (RabbitMQ 4's default
    # max_message_size) is nacked, and the queue goes on working.
    big = [bytes([65 + i]) * (6 << 20) for i in range(3)]
    for body in big:
        ch2.basic_publish("", "qq3", body, pika.BasicProperties(delivery_mode=2))
    try:
        ch2.basic_publish("", "qq3", b"h" * ((16 << 20) + 1), pika.BasicProperties(delivery_mode=2))
        raise AssertionError("a message above 16 MiB should be nacked")
    except pika.exceptions.NackError:
        pass
    assert publish_confirmed(ch2, "qq3", ["after"]) == ["after"]
    for want in big + [b"after"]:
        m, _p, body = ch3.basic_get("qq3", auto_ack=True)
        assert body == want
    ch3.queue_delete("qq3")
    conn3.close()
    ch = conn2.channel()
    try:
        ch.queue_declare("qq3", passive=True)
        raise AssertionError("the queue should be gone")
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404
    conn2.close()


def test_operators_see_members_leader_and_quorum_criticality(cluster_factory):
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    declare_qq(n1, "qq4")
    names = sorted(n.name for n in c.nodes)
    q = wait_for("a leader is known", lambda: (lambda q: q if q.get("leader") else None)(
        queue_info(n2, "qq4")))
    assert q["type"] == "quorum"
    assert sorted(q["members"]) == names and sorted(q["online"]) == names
    assert q["node"] == q["leader"] and q["leader"] in names
    code, rows = n3.api("GET", "/api/queues/%2F/qq4/quorum-status")
    assert code == 200, rows
    assert sorted(r["node"] for r in rows) == names
    assert sorted(r["raft_state"] for r in rows) == ["follower", "follower", "leader"]
    assert len({r["term"] for r in rows}) == 1
    out = n3.ctl("quorum_status", "qq4")
    assert out.returncode == 0, out.stderr
    assert "leader" in out.stdout and "follower" in out.stdout
    # Declared through the HTTP API (and definitions import) it gets the same members as
    # through a client, x-quorum-initial-group-size honoured.
    code, body = n2.api("PUT", "/api/queues/%2F/qq-api",
                        {"durable": True, "arguments": QQ})
    assert code in (201, 204), body
    code, body = n2.api("PUT", "/api/queues/%2F/qq-api2", {
        "durable": True, "arguments": {**QQ, "x-quorum-initial-group-size": 2}})
    assert code in (201, 204), body
    # (Read on n2, where the declarations were applied before they were answered.)
    assert sorted(queue_info(n2, "qq-api")["members"]) == names
    two = queue_info(n2, "qq-api2")["members"]
    assert len(two) == 2 and n2.name in two
    # (Two members: losing either loses the majority, which the check below would report.)
    assert n2.api("DELETE", "/api/queues/%2F/qq-api2")[0] == 204
    wait_for("n1 applied the declaration and the delete", lambda: queue_info(
        n1, "qq-api", missing_ok=True) and n1.api("GET", "/api/queues/%2F/qq-api2")[0] == 404)
    # All three up: no node is critical. With one down, each of the other two is.
    assert n1.ctl("check_if_node_is_quorum_critical").returncode == 0
    n3.kill()
    wait_for("n2 sees n3 down", lambda: n2.api(
        "GET", "/api/health/checks/node-is-quorum-critical")[0] == 503, timeout=30)
    code, body = n2.api("GET", "/api/health/checks/node-is-quorum-critical")
    assert body["status"] == "failed"
    assert sorted(q["name"] for q in body["queues"]) == ["qq-api", "qq4"]
    # n1 notices n3's death on its own (its own link to n3), possibly a moment later.
    wait_for("n1 sees n3 down", lambda: n1.ctl(
        "check_if_node_is_quorum_critical").returncode == 69, timeout=30)


def snapshot_files(node) -> list:
    return list((node.workdir / "data" / "cluster" / "quorum-snapshots").glob("*/snapshot.bin"))


def test_snapshots_bound_the_log_and_bring_a_member_back(cluster_factory):
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    declare_qq(n1, "qq5")
    # n3 misses everything that follows.
    n3.kill()
    conn = connect(n2)
    ch = conn.channel()
    for i in range(5000):
        ch.basic_publish("", "qq5", f"old{i}".encode())
    wait_for("5000 published", lambda: queue_info(n2, "qq5").get("messages") == 5000)
    ch.queue_purge("qq5")
    ch.confirm_delivery()
    assert publish_confirmed(ch, "qq5", ["k1", "k2", "k3"]) == ["k1", "k2", "k3"]
    conn.close()
    # The members that took part snapshot (over 4096 entries, a small queue) and drop the
    # log behind the snapshot.
    for n in (n1, n2):
        wait_for(f"{n.name} has a snapshot", lambda n=n: snapshot_files(n), timeout=30)
    # n3 comes back behind the purged log: it gets the snapshot, and holds the queue when
    # the others stop leading (n1, the leader, dies).
    n3.start()
    n3.wait_http()
    wait_for("n3 caught up",
             lambda: queue_info(n3, "qq5", missing_ok=True).get("messages") == 3, timeout=30)
    wait_for("n3 has the snapshot", lambda: snapshot_files(n3), timeout=30)
    n1.kill()
    conn = connect(n3)
    got = consume_all(conn, conn.channel(), "qq5", 3)
    assert sorted(b for b, _, _ in got) == ["k1", "k2", "k3"]
    conn.close()
    # A restart continues from the snapshot and the log after it.
    n2.kill()
    n2.start()
    n2.wait_http()
    wait_for("n2 back, queue empty",
             lambda: queue_info(n2, "qq5", missing_ok=True).get("messages") == 0,
             timeout=30)


def members_of(node, name: str) -> list[str]:
    return sorted(queue_info(node, name)["members"])


def test_members_added_removed_grown_shrunk_and_leadership_moved(cluster_factory):
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    conn = connect(n1)
    ch = conn.channel()
    ch.queue_declare("qq6", durable=True,
                     arguments={**QQ, "x-quorum-initial-group-size": 2})
    ch.confirm_delivery()
    bodies = [f"m{i}" for i in range(10)]
    assert publish_confirmed(ch, "qq6", bodies) == bodies
    conn.close()
    # Two members: the declaring node and the next one by name.
    assert members_of(n3, "qq6") == ["pier@n1", "pier@n2"]
    out = n1.ctl("add_member", "qq6", "pier@n3")
    assert out.returncode == 0, out.stderr
    assert members_of(n2, "qq6") == ["pier@n1", "pier@n2", "pier@n3"]
    # The new member caught up from the leader: its own copy holds the ten.
    wait_for("n3 holds the messages", lambda: queue_info(n3, "qq6").get("messages") == 10)
    out = n2.ctl("transfer_leadership", "qq6", "pier@n3")
    assert out.returncode == 0, out.stderr
    wait_for("n3 leads", lambda: queue_info(n1, "qq6").get("leader") == "pier@n3")
    out = n3.ctl("delete_member", "qq6", "pier@n1")
    assert out.returncode == 0, out.stderr
    assert members_of(n1, "qq6") == ["pier@n2", "pier@n3"]
    out = n3.ctl("shrink", "pier@n2")
    assert out.returncode == 0, out.stderr
    assert "qq6" in out.stdout and "ok" in out.stdout
    assert members_of(n1, "qq6") == ["pier@n3"]
    out = n3.ctl("grow", "pier@n1", "all")
    assert out.returncode == 0, out.stderr
    assert members_of(n2, "qq6") == ["pier@n1", "pier@n3"]
    # n2 is no member now: its clients still publish and consume (through the members).
    conn = connect(n2)
    got = consume_all(conn, conn.channel(), "qq6", 10)
    assert sorted(b for b, _, _ in got) == sorted(bodies)
    conn.close()
    bad = n1.ctl("add_member", "qq6", "pier@n9")
    assert bad.returncode != 0


def rss_kib(node) -> int:
    for line in open(f"/proc/{node.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_backlog_past_memory_stays_on_disk_and_survives_the_leader(cluster_factory):
    """Past the queue's memory budget (8 MB) every member keeps only the places of bodies
    (16 bytes each) and its log keeps the bodies on disk: a 48 MB backlog grows no node by
    more than a fraction of it. The leader reads them back to deliver; a new leader does
    too, in order, every body intact."""
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    declare_qq(n1, "qqdeep")
    before = {n.name: rss_kib(n) for n in c.nodes}
    count, size = 24_000, 2048
    conn = connect(n2)
    ch = conn.channel()
    for i in range(count):
        ch.basic_publish("", "qqdeep", f"{i:08d}".encode().ljust(size, b"."),
                         pika.BasicProperties(delivery_mode=2))
    conn.close()
    for n in c.nodes:
        wait_for(f"{n.name} holds the backlog",
                 lambda n=n: queue_info(n, "qqdeep").get("messages") == count, timeout=120)
    backlog_kib = count * size // 1024

    def grown() -> dict:
        return {n.name: rss_kib(n) - before[n.name] for n in c.nodes}

    # Without paging each node held every body at least once (~1.5 x the backlog, measured
    # 63-71 MB here); with it, the members' in-memory budget and what jemalloc has not given
    # back yet (it purges freed pages over ~10-20 s).
    wait_for(f"no node grows by half the {backlog_kib} KiB backlog",
             lambda: all(kib < backlog_kib // 2 for kib in grown().values()), timeout=60)
    # A member restarts: its log comes back from disk (locations only) and it replays it.
    n3.kill()
    n3.start()
    n3.wait_http()
    wait_for("n3 holds the backlog again",
             lambda: queue_info(n3, "qqdeep", missing_ok=True).get("messages") == count,
             timeout=60)
    # The leader (n1, the declaring node) dies: n2 or n3 leads, bodies come back from the
    # new leader's log, in order.
    n1.kill()
    conn = connect(n3)
    got = consume_all(conn, conn.channel(), "qqdeep", count, timeout=120)
    conn.close()
    assert len(got) == count, f"{len(got)} of {count}"
    for i, (body, _, _) in enumerate(got):
        assert body == f"{i:08d}".ljust(size, "."), f"delivery {i}: {body[:12]!r}"
    wait_for("the queue is empty", lambda: queue_info(n2, "qqdeep").get("messages") == 0)


def test_groups_without_heartbeats_elect_from_the_nodes_pings(cluster_factory):
    """`--quorum-heartbeats false` (the default, decision 0009): groups send no heartbeats
    and never elect on their own; a member elects itself when the leader's node stops
    answering pings. A dead leader is replaced, confirmed messages survive, a paused and
    resumed old leader steps down, and a restarted member catches up with the log."""
    c = cluster_factory(3, start=False)
    for n in c.nodes:
        n.extra_args += ["--quorum-heartbeats", "false"]
    c.start()
    n1, n2, n3 = c.nodes
    declare_qq(n1, "qquiet")
    bodies = [f"m{i}" for i in range(200)]
    publish_via(n2, "qquiet", bodies)
    assert queue_info(n1, "qquiet")["leader"] == n1.name
    n1.kill()
    started = time.monotonic()
    wait_for("a new leader", lambda: queue_info(n2, "qquiet").get("leader") in (n2.name, n3.name),
             timeout=15)
    took = time.monotonic() - started
    print(f"new leader after {took:.2f}s")
    leader = next(n for n in (n2, n3) if n.name == queue_info(n2, "qquiet")["leader"])
    # The old leader comes back and follows; it replays the log up to the commit index the
    # leader tells it (an idle group's heartbeat).
    n1.start()
    n1.wait_http()
    wait_for("n1 holds the 200 again",
             lambda: queue_info(n1, "qquiet", missing_ok=True).get("messages") == 200, timeout=60)
    assert queue_info(n1, "qquiet")["leader"] == leader.name
    # The leader is paused: another takes over; resumed, it learns it no longer leads.
    leader.pause()
    other = n2 if leader is n3 else n3
    try:
        wait_for("a leader while paused", lambda: queue_info(other, "qquiet").get("leader")
                 not in (None, leader.name), timeout=15)
    finally:
        leader.resume()
    wait_for("the resumed leader follows",
             lambda: queue_info(leader, "qquiet").get("leader") == queue_info(other, "qquiet")
             .get("leader"), timeout=20)
    conn = connect(other)
    got = consume_all(conn, conn.channel(), "qquiet", 200)
    assert sorted(b for b, _, _ in got) == sorted(bodies)
    conn.close()


def _undecided_publishes_are_kept(c, netns, queue: str) -> None:
    n1, n2, n3 = c.nodes
    declare_qq(n1, queue)
    wait_for("n1 leads", lambda: queue_info(n1, queue).get("leader") == n1.name)
    conn = connect(n1)
    ch = conn.channel()
    ch.confirm_delivery()
    assert publish_confirmed(ch, queue, ["a"]) == ["a"]
    # The leader is cut off from the other members; a publish through it cannot commit
    # (its entry waits on a leader that no longer has a majority).
    for o in (n2, n3):
        netns.cut(n1.ip, o.ip)
    results: dict[str, object] = {}

    def publish(body: str) -> threading.Thread:
        def run():
            try:
                c2 = connect(n1)
                ch2 = c2.channel()
                ch2.confirm_delivery()
                results[body] = publish_confirmed(ch2, queue, [body])
                c2.close()
            except Exception as e:  # noqa: BLE001 - reported below
                results[body] = e
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    tb = publish("b")
    leader = wait_for("a new leader among n2 and n3",
                      lambda: queue_info(n2, queue).get("leader") in (n2.name, n3.name),
                      timeout=20) and queue_info(n2, queue)["leader"]
    new = n2 if leader == n2.name else n3
    # Healed, but the new leader is paused: the old one learns of the new term from the
    # other member, and nobody truncates its entry of "b" yet, so "b" stays undecided.
    new.pause()
    netns.heal()
    try:
        wait_for("n1 follows", lambda: queue_info(n1, queue).get("leader") != n1.name,
                 timeout=5)
        # A publish through n1 now goes to the new leader. It must not overtake "b": the
        # new leader would take "b", sent again after it, for a resend (the engine keeps
        # each publisher's highest sequence) and drop it.
        tc = publish("c")
        time.sleep(0.3)
    finally:
        new.resume()
    tc.join(30)
    tb.join(30)
    conn.close()
    confirmed = ["a"] + [b for b in ("b", "c") if results.get(b) == [b]]
    print(f"results {results!r}")
    conn = connect(n2)
    got = consume_all(conn, conn.channel(), queue, len(confirmed), timeout=30)
    conn.close()
    bodies = {b for b, _, _ in got}
    missing = [b for b in confirmed if b not in bodies]
    assert not missing, f"confirmed, not delivered: {missing} ({results!r})"


def test_publishes_a_deposed_leader_left_undecided_are_not_dropped(cluster_factory, netns):
    """A publish proposed by a leader that is then cut off and replaced, followed by another
    through the same node once it follows: every confirmed one is in the queue. (Before the
    writer waited for undecided batches first, "b" was confirmed and lost, every run.)"""
    _undecided_publishes_are_kept(replicated_cluster(cluster_factory), netns, "qq-undecided")


def test_publishes_a_deposed_leader_left_undecided_with_group_heartbeats(cluster_factory,
                                                                         netns):
    """The same with openraft's per-group heartbeats and timers (`--quorum-heartbeats`)."""
    c = cluster_factory(3, start=False)
    for n in c.nodes:
        n.extra_args += ["--quorum-heartbeats", "true"]
    c.start()
    _undecided_publishes_are_kept(c, netns, "qq-undecided-timers")


def test_at_least_once_dead_letters_survive_the_leader(cluster_factory):
    """x-dead-letter-strategy at-least-once: rejected messages with nowhere to go stay in the
    source queue's log; the leader dies; the new leader routes them once the target queue
    exists, and they leave the source once the target confirmed them."""
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    conn = connect(n1)
    conn.channel().queue_declare("alo-src", durable=True, arguments={
        **QQ, "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "alo-dlq"})
    conn.close()
    wait_for("n1 leads", lambda: queue_info(n1, "alo-src").get("leader") == n1.name)
    conn2 = connect(n2)
    ch2 = conn2.channel()
    ch2.confirm_delivery()
    bodies = [f"d{i}" for i in range(5)]
    assert publish_confirmed(ch2, "alo-src", bodies) == bodies
    # Rejected through n3: no queue "alo-dlq" yet, so the leader keeps them.
    conn3 = connect(n3)
    ch3 = conn3.channel()
    for _ in bodies:
        method = wait_for("a delivery", lambda: ch3.basic_get("alo-src")[0])
        ch3.basic_reject(method.delivery_tag, requeue=False)
    conn3.close()
    time.sleep(1)
    n1.kill()
    wait_for("a new leader", lambda: queue_info(n2, "alo-src").get("leader") in (n2.name, n3.name),
             timeout=20)
    ch2.queue_declare("alo-dlq", durable=True, arguments=QQ)
    got = []

    def dead_letters_arrived():
        method, props, body = ch2.basic_get("alo-dlq", auto_ack=True)
        if method:
            got.append((body.decode(), props.headers["x-death"][0]["reason"]))
        return len(got) >= len(bodies)

    wait_for("the kept dead letters in alo-dlq", dead_letters_arrived, timeout=30)
    assert sorted(b for b, _ in got) == bodies
    assert {r for _, r in got} == {"rejected"}
    conn2.close()


def test_rabbitmq_4_3_counting_through_another_node_and_a_new_leader(cluster_factory):
    """`--quorum-delivery-counting 4.3` on every node: a consumer on another node than the
    leader nacks (counted as returns only) and rejects (a failed delivery), and a new
    leader taking the queue over counts what was checked out as failed too (the
    unsettled delivery comes back with its delivery count up by one): past a limit of 1,
    the message is dead-lettered with reason delivery_limit."""
    c = cluster_factory(3, start=False)
    for n in c.nodes:
        n.extra_args += ["--quorum-delivery-counting", "4.3"]
    c.start()
    n1, n2, n3 = c.nodes
    conn2 = connect(n2)
    ch2 = conn2.channel()
    ch2.queue_declare("q43-dl", durable=True, arguments=QQ)
    conn2.close()
    conn = connect(n1)
    conn.channel().queue_declare("q43", durable=True, arguments={
        **QQ, "x-delivery-limit": 1, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q43-dl"})
    conn.close()
    wait_for("n1 leads", lambda: queue_info(n1, "q43").get("leader") == n1.name)
    publish_via(n2, "q43", ["m"])
    conn3 = connect(n3)
    ch3 = conn3.channel()

    def get():
        method, props, body = ch3.basic_get("q43")
        if not method:
            return None
        headers = props.headers or {}
        return method, (body.decode(), method.redelivered,
                        headers.get("x-acquired-count"), headers.get("x-delivery-count"))

    seen = []
    for _ in range(3):
        method, got = wait_for("a delivery", get)
        seen.append(got)
        ch3.basic_nack(method.delivery_tag, requeue=True)
    method, got = wait_for("a delivery", get)
    seen.append(got)
    ch3.basic_reject(method.delivery_tag, requeue=True)
    method, got = wait_for("a delivery", get)
    seen.append(got)
    assert seen == [("m", False, None, None), ("m", True, 1, None), ("m", True, 2, None),
                    ("m", True, 3, None), ("m", True, 4, 1)]
    # Still unsettled on n3 when the leader dies: the new leader counts a second failed
    # delivery, past the limit.
    n1.kill()
    wait_for("a new leader",
             lambda: queue_info(n2, "q43").get("leader") in (n2.name, n3.name), timeout=20)
    conn2 = connect(n2)
    ch2 = conn2.channel()

    def dead_letter():
        method, props, body = ch2.basic_get("q43-dl", auto_ack=True)
        return (body.decode(), props.headers["x-death"][0]["reason"]) if method else None

    assert wait_for("the dead letter", dead_letter, timeout=30) == ("m", "delivery_limit")
    wait_for("q43 empty", lambda: queue_info(n2, "q43").get("messages") == 0)
    conn2.close()
    conn3.close()


def test_a_policy_set_after_declaration_reaches_every_member(cluster_factory):
    """As in RabbitMQ, a policy set on an existing quorum queue applies at once: a lower
    max-length drops the oldest on every member (the change goes through the queue's log,
    proposed by every node and applied once), the queue object shows the policy, the new
    leader enforces it after the old one dies, and clearing it lets the queue grow."""
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    declare_qq(n1, "qq-pol")
    bodies = [f"m{i}" for i in range(20)]
    publish_via(n2, "qq-pol", bodies)
    for n in c.nodes:
        wait_for(f"{n.name} holds 20", lambda n=n: queue_info(n, "qq-pol").get("messages") == 20)
    code, body = n3.api("PUT", "/api/policies/%2F/qq-limit", {
        "pattern": "^qq-pol$", "apply-to": "queues", "definition": {"max-length": 5}})
    assert code in (201, 204), body
    for n in c.nodes:
        wait_for(f"{n.name} holds 5", lambda n=n: queue_info(n, "qq-pol").get("messages") == 5)
        info = queue_info(n, "qq-pol")
        assert info["policy"] == "qq-limit", info
        assert info["effective_policy_definition"] == {"max-length": 5}, info
    # The declaring node leads; it dies and the new leader keeps the limit.
    assert queue_info(n2, "qq-pol")["leader"] == n1.name
    n1.kill()
    wait_for("a new leader", lambda: queue_info(n2, "qq-pol").get("leader") in (n2.name, n3.name),
             timeout=30)
    conn = connect(n3)
    ch = conn.channel()
    ch.confirm_delivery()
    more = [f"n{i}" for i in range(10)]
    assert publish_confirmed(ch, "qq-pol", more) == more
    for n in (n2, n3):
        wait_for(f"{n.name} holds 5 again",
                 lambda n=n: queue_info(n, "qq-pol").get("messages") == 5)
    got = consume_all(conn, conn.channel(), "qq-pol", 5)
    assert [b for b, _, _ in got] == more[5:]
    # Cleared (through a node that is not the leader): the queue grows again.
    code, body = n2.api("DELETE", "/api/policies/%2F/qq-limit")
    assert code == 204, body
    wait_for("no policy shown", lambda: queue_info(n3, "qq-pol").get("policy") is None)
    assert publish_confirmed(ch, "qq-pol", more) == more
    for n in (n2, n3):
        wait_for(f"{n.name} holds 10", lambda n=n: queue_info(n, "qq-pol").get("messages") == 10)
    conn.close()


def test_a_policy_change_made_while_the_queue_had_no_leader_still_arrives(cluster_factory):
    """A policy change reaches a quorum queue through its log, proposed by every node that
    applies it. Made while the group can elect no leader (its leader dead, its other two
    members cut off from each other; the five-node cluster's metadata still has a
    majority), every proposal gives up after the write deadline (10 s). Once the two can
    elect again, a member proposes it again (before, it waited for the next change)."""
    c = cluster_factory(5)
    # A group without the metadata leader (which must keep reaching both members left).
    meta = c.leader()
    for i, n1 in enumerate(n for n in c.nodes if n is not meta):
        q = f"qq-later-{i}"
        conn = connect(n1)
        conn.channel().queue_declare(q, durable=True,
                                     arguments={**QQ, "x-quorum-initial-group-size": 3})
        conn.close()
        members = queue_info(n1, q)["members"]
        if meta.name not in members:
            break
    assert len(members) == 3 and n1.name in members and meta.name not in members, \
        (meta.name, members)
    wait_for("the declaring node leads", lambda: queue_info(n1, q).get("leader") == n1.name)
    publish_via(n1, q, [f"m{i}" for i in range(20)])
    b, m = [c.node(x) for x in members if x != n1.name]
    others = [n for n in c.nodes if n.name not in members]
    n1.kill()
    c.netns.cut(b.ip, m.ip)
    code, body = others[0].api("PUT", "/api/policies/%2F/qq-later-limit", {
        "pattern": "^qq-later-", "apply-to": "queues", "definition": {"max-length": 5}},
        timeout=60)
    assert code in (201, 204), body
    for n in (b, m):
        wait_for(f"{n.name} has the policy",
                 lambda n=n: queue_info(n, q).get("policy") == "qq-later-limit")
    # Every proposal gives up (no leader for longer than a write waits).
    time.sleep(13)
    assert queue_info(b, q)["messages"] == 20
    c.netns.heal()
    for n in (b, m):
        wait_for(f"{n.name} holds 5", lambda n=n: queue_info(n, q).get("messages") == 5,
                 timeout=40)


def test_a_leader_locator_policy_places_leaders(cluster_factory):
    """The `queue-leader-locator` policy key: quorum queues declared through one node with
    no argument lead from the members leading the fewest (balanced), not all from it."""
    c = replicated_cluster(cluster_factory)
    n1 = c.nodes[0]
    code, body = n1.api("PUT", "/api/policies/%2F/bal", {
        "pattern": "^polbal", "apply-to": "queues",
        "definition": {"queue-leader-locator": "balanced"}})
    assert code in (201, 204), body
    for n in c.nodes:
        wait_for(f"{n.name} has the policy",
                 lambda n=n: n.api("GET", "/api/policies/%2F/bal")[0] == 200)
    conn = connect(n1)
    ch = conn.channel()
    for i in range(3):
        ch.queue_declare(f"polbal{i}", durable=True, arguments=QQ)
    conn.close()
    leaders = [wait_for(f"polbal{i} has a leader",
                        lambda i=i: queue_info(n1, f"polbal{i}", missing_ok=True).get("leader"))
               for i in range(3)]
    assert len(set(leaders)) == 3, leaders


def test_a_definitions_import_spreads_balanced_leaders(cluster_factory):
    """Quorum queues in one definitions import are placed one after the other, each
    counting those before it: balanced ones lead from three nodes, not all from one. Each
    is a group of its own (an import is one metadata entry: its queues once shared one
    group id, and their groups failed) and takes publishes through any node."""
    c = replicated_cluster(cluster_factory)
    n1 = c.nodes[0]
    queues = [{"name": f"imp{i}", "vhost": "/", "durable": True, "auto_delete": False,
               "arguments": {**QQ, "x-queue-leader-locator": "balanced"}} for i in range(3)]
    code, body = n1.api("POST", "/api/definitions", {"queues": queues}, timeout=60)
    assert code == 204, body
    leaders = [wait_for(f"imp{i} has a leader",
                        lambda i=i: queue_info(n1, f"imp{i}", missing_ok=True).get("leader"))
               for i in range(3)]
    assert len(set(leaders)) == 3, leaders
    conn = connect(c.nodes[1])
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(3):
        assert publish_confirmed(ch, f"imp{i}", [f"m{i}"]) == [f"m{i}"]
    for i in range(3):
        body = wait_for(f"imp{i} gives its message",
                        lambda i=i: ch.basic_get(f"imp{i}", auto_ack=True)[2])
        assert body == f"m{i}".encode()
    conn.close()


def test_a_consumer_cut_off_from_the_leader_is_suspected_and_keeps_its_subscription(
        cluster_factory, netns):
    """The leader cannot reach a consumer's node: as RabbitMQ's suspected_down, the
    consumer is not cancelled — it leaves the queue's consumer count, what it had
    unacknowledged goes to other consumers (redelivered), and it gets nothing while cut
    off. Once the partition heals it counts again and gets messages, never having been
    told basic.cancel."""
    c = replicated_cluster(cluster_factory)
    n1, n2, n3 = c.nodes
    declare_qq(n1, "qq-cut")
    wait_for("n1 leads", lambda: queue_info(n1, "qq-cut").get("leader") == n1.name)
    conn = connect(n3)
    ch = conn.channel()
    cancelled: list[object] = []
    got: list[bytes] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    ch.basic_qos(prefetch_count=10)
    ch.basic_consume("qq-cut", lambda _c, _m, _p, body: got.append(body))
    wait_for("the consumer is in the group",
             lambda: queue_info(n1, "qq-cut").get("consumers") == 1)
    pconn = connect(n1)
    pch = pconn.channel()
    pch.confirm_delivery()
    assert publish_confirmed(pch, "qq-cut", ["m0"]) == ["m0"]
    wait_for("n3's consumer has m0", lambda: got == [b"m0"],
             step=lambda: conn.process_data_events(0.1))
    for o in (n1, n2):
        netns.cut(n3.ip, o.ip)
    try:
        wait_for("the leader suspects n3's consumer",
                 lambda: queue_info(n1, "qq-cut").get("consumers") == 0, timeout=30)
        # m0, unacknowledged by the consumer out of reach, is back for others, flagged
        # redelivered (it may have been seen).
        def get_m0():
            method, _props, body = pch.basic_get("qq-cut", auto_ack=True)
            return method and (body, method.redelivered)
        assert wait_for("m0 is back", get_m0, timeout=30) == (b"m0", True)
    finally:
        netns.heal()
    wait_for("n3's consumer counts again",
             lambda: queue_info(n1, "qq-cut").get("consumers") == 1, timeout=30)
    assert publish_confirmed(pch, "qq-cut", ["m1"]) == ["m1"]
    wait_for("n3's consumer gets m1", lambda: b"m1" in got, timeout=30,
             step=lambda: conn.process_data_events(0.1))
    assert not cancelled
    conn.close()
    pconn.close()
