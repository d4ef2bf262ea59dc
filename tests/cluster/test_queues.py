"""Clients on any node, under faults: a durable queue lives on its home node, and clients of
the other nodes reach it over the cluster's message path. A consumer keeps receiving across a
leader change of the metadata group; a killed home node makes its queues absent (RabbitMQ's
404) and loses nothing confirmed; a partition between a client's node and the queue's home
cancels the consumer, nacks or returns what was in flight, and loses nothing confirmed. Also,
over AMQP: declarations on a minority node fail clearly and quickly (541)."""

from __future__ import annotations

import threading
import time

import pika
import pika.exceptions
import pytest

from harness import AMQP_PORT

HOME_DOWN = "is down or inaccessible"


def connect(node, **kw) -> pika.BlockingConnection:
    params = pika.ConnectionParameters(host=node.ip, port=AMQP_PORT, connection_attempts=5,
                                       retry_delay=0.5, socket_timeout=10, **kw)
    return pika.BlockingConnection(params)


def publish_confirmed(ch, queue: str, bodies: list[str]) -> list[str]:
    """Publishes persistent messages with confirms; returns the bodies confirmed."""
    confirmed = []
    for b in bodies:
        try:
            ch.basic_publish("", queue, b.encode(), pika.BasicProperties(delivery_mode=2),
                             mandatory=True)
            confirmed.append(b)
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
            pass
    return confirmed


def drain(conn, ch, queue: str, want: int, timeout: float = 30.0) -> list[str]:
    """Consumes (with acks) until `want` messages arrived or the time is up."""
    got: list[str] = []

    def on_message(c, m, _p, body):
        got.append(body.decode())
        c.basic_ack(m.delivery_tag)

    tag = ch.basic_consume(queue, on_message)
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    ch.basic_cancel(tag)
    return got


def wait_for(what: str, check, timeout: float = 30.0, step=None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        if step:
            step()
        else:
            time.sleep(0.1)


def absent_error(conn, action) -> pika.exceptions.ChannelClosedByBroker:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        action(ch)
    return e.value



def test_a_declaration_answered_on_one_node_is_seen_at_once_on_every_running_node(cluster):
    """RabbitMQ's Mnesia commits a declaration on every running node before declare-ok, so
    an application may declare through one node and use the queue through another at once.
    Pier's answer waits until the other running nodes have applied the change."""
    a, b, c = cluster.nodes
    conns = [connect(n) for n in (a, b, c)]
    # Node b runs in fits and starts (a loaded machine), so it applies changes late unless
    # a waits for it.
    stop = threading.Event()

    def stutter():
        while not stop.is_set():
            b.pause()
            time.sleep(0.02)
            b.resume()
            time.sleep(0.01)

    t = threading.Thread(target=stutter, daemon=True)
    t.start()
    try:
        decl, *others = [x.channel() for x in conns]
        for i in range(60):
            q = f"ryw-{i}"
            decl.queue_declare(q, durable=True)
            for ch in others:
                # Passive: 404 (and a closed channel) if that node has not applied it yet.
                ch.queue_declare(q, passive=True)
            decl.exchange_declare(f"ryw-x-{i}", "fanout", durable=True)
            for ch in others:
                ch.exchange_declare(f"ryw-x-{i}", passive=True)
            decl.queue_delete(q)
            for ch in others:
                with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                    ch.queue_declare(q, passive=True)
                assert e.value.reply_code == 404
            others = [x.channel() for x in conns[1:]]
    finally:
        stop.set()
        t.join()
        for x in conns:
            x.close()


def test_a_consumer_elsewhere_keeps_receiving_across_a_leader_change(cluster):
    leader = cluster.leader()
    home, client = [n for n in cluster.nodes if n is not leader]
    hc = connect(home)
    hch = hc.channel()
    hch.queue_declare("lc", durable=True)
    hch.confirm_delivery()
    cc = connect(client)
    cch = cc.channel()
    cch.basic_qos(prefetch_count=50)
    got: list[str] = []
    cancelled: list[object] = []
    cch.add_on_cancel_callback(lambda f: cancelled.append(f))

    def on_message(c, m, _p, body):
        got.append(body.decode())
        c.basic_ack(m.delivery_tag)

    cch.basic_consume("lc", on_message)
    sent: list[str] = []

    def publish(n: int):
        batch = [f"m{len(sent) + i}" for i in range(n)]
        sent.extend(publish_confirmed(hch, "lc", batch))
        cc.process_data_events(0)

    publish(50)
    wait_for("deliveries before the fault", lambda: len(got) >= 50,
             step=lambda: cc.process_data_events(0.1))
    leader.kill()
    new = cluster.wait_formed(nodes=[home, client])
    assert new != leader.name
    # Messages keep flowing from the home node to the consumer on the other node, and the
    # metadata group takes changes again under its new leader.
    publish(100)
    cch2 = cc.channel()
    cch2.queue_declare("lc-after-election", durable=True)
    leader.start()
    leader.wait_http()
    publish(50)
    wait_for("every confirmed message at the consumer", lambda: set(sent) <= set(got),
             step=lambda: cc.process_data_events(0.1))
    assert not cancelled
    assert len(sent) == 200
    cluster.wait_formed()
    cluster.assert_same_definitions()
    cc.close()
    hc.close()


def test_a_killed_home_node_makes_its_queues_absent_and_loses_nothing(cluster):
    a, b, home = cluster.nodes
    hc = connect(home)
    hc.channel().queue_declare("hk", durable=True)
    hc.close()
    ac = connect(a)
    pub = ac.channel()
    pub.confirm_delivery()
    bodies = [f"p{i}" for i in range(100)]
    # Published on a, confirmed once the home node has them on disk.
    assert publish_confirmed(pub, "hk", bodies) == bodies
    # Ten delivered to a consumer on b and not acknowledged when the home node dies.
    bc = connect(b)
    bch = bc.channel()
    bch.basic_qos(prefetch_count=10)
    held: list[str] = []
    bch.basic_consume("hk", lambda c, m, p, body: held.append(body.decode()))
    wait_for("ten deliveries on b", lambda: len(held) == 10,
             step=lambda: bc.process_data_events(0.1))
    # Operators see one broker: any node's overview counts every node's connections and
    # channels, and the queue's figures are its home node's, fresh.
    for n in cluster.nodes:
        code, ov = n.api("GET", "/api/overview")
        assert code == 200
        assert (ov["object_totals"]["connections"], ov["object_totals"]["channels"]) == (2, 2), \
            (n.name, ov["object_totals"])
        assert (ov["queue_totals"]["messages"],
                ov["queue_totals"]["messages_unacknowledged"]) == (100, 10), \
            (n.name, ov["queue_totals"])
        code, q = n.api("GET", "/api/queues/%2F/hk")
        assert code == 200
        assert (q["node"], q["messages_ready"], q["messages_unacknowledged"],
                q["consumers"]) == (home.name, 90, 10, 1), (n.name, q)
    cancelled: list[object] = []
    bch.add_on_cancel_callback(lambda f: cancelled.append(f))
    home.kill()
    # The consumer is cancelled (RabbitMQ cancels consumers of a queue whose node is down).
    wait_for("b's consumer cancelled", lambda: cancelled,
             step=lambda: bc.process_data_events(0.1))
    expected = (f"NOT_FOUND - home node '{home.name}' of durable queue 'hk' in vhost '/' "
                f"{HOME_DOWN}")
    for action in (lambda ch: ch.queue_declare("hk", durable=True, passive=True),
                   lambda ch: ch.queue_declare("hk", durable=True),
                   lambda ch: ch.basic_consume("hk", lambda *x: None),
                   lambda ch: ch.basic_get("hk"),
                   lambda ch: ch.queue_purge("hk"),
                   lambda ch: ch.queue_delete("hk")):
        e = absent_error(ac, action)
        assert (e.reply_code, e.reply_text) == (404, expected)
    # A publish is unroutable (RabbitMQ leaves a queue whose node is down out of routing).
    with pytest.raises(pika.exceptions.UnroutableError):
        pub.basic_publish("", "hk", b"x", mandatory=True)
    # Back: every confirmed message is there, the ten unacknowledged ones redelivered.
    home.start()
    home.wait_http()
    cluster.wait_formed()
    ch = [ac.channel()]

    def back_with_everything():
        try:
            declared = ch[0].queue_declare("hk", durable=True, passive=True)
            return declared.method.message_count == 100
        except pika.exceptions.ChannelClosedByBroker:
            ch[0] = ac.channel()
            time.sleep(0.2)
            return False

    wait_for("the queue back with its 100 messages", back_with_everything, timeout=40)
    got = drain(ac, ch[0], "hk", 100)
    assert sorted(got) == sorted(bodies)
    bc.close()
    ac.close()


def test_a_partition_between_a_client_node_and_the_home_node(cluster):
    a, b, home = cluster.nodes
    hc = connect(home)
    hc.channel().queue_declare("pt", durable=True)
    hc.close()
    ac = connect(a)
    pub = ac.channel()
    pub.confirm_delivery()
    before = [f"before{i}" for i in range(50)]
    assert publish_confirmed(pub, "pt", before) == before
    sub = ac.channel()
    sub.basic_qos(prefetch_count=5)
    held: list[str] = []
    cancelled: list[object] = []
    sub.add_on_cancel_callback(lambda f: cancelled.append(f))
    sub.basic_consume("pt", lambda c, m, p, body: held.append(body.decode()))
    wait_for("five deliveries", lambda: len(held) == 5,
             step=lambda: ac.process_data_events(0.1))
    # a and the home node cannot reach each other; both still have a majority with b.
    cluster.netns.cut(a.ip, home.ip)
    wait_for("a's consumer cancelled", lambda: cancelled,
             step=lambda: ac.process_data_events(0.1))
    # Publishing from a now: nacked or returned, never confirmed and lost.
    during = publish_confirmed(pub, "pt", [f"during{i}" for i in range(10)])
    assert during == []
    e = absent_error(ac, lambda ch: ch.basic_get("pt"))
    assert e.reply_code == 404 and HOME_DOWN in e.reply_text
    # /api/nodes (from any node) shows each node's partitions: the members it cannot reach.
    def partitions(n):
        code, nodes = n.api("GET", "/api/nodes")
        assert code == 200
        return {x["name"]: sorted(x["partitions"]) for x in nodes if x["running"]}

    wait_for("a partitioned from the home node, seen from b",
             lambda: partitions(b) == {a.name: [home.name], b.name: [],
                                       home.name: [a.name]})
    assert partitions(a)[a.name] == [home.name]
    # Clients of b and of the home node go on meanwhile.
    bc = connect(b)
    bpub = bc.channel()
    bpub.confirm_delivery()
    via_b = [f"b{i}" for i in range(20)]
    assert publish_confirmed(bpub, "pt", via_b) == via_b
    bc.close()
    cluster.netns.heal()
    # a reaches the queue again: everything confirmed is there, the five a held back too.
    ch = [ac.channel()]

    def reachable():
        try:
            ch[0].queue_declare("pt", durable=True, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker:
            ch[0] = ac.channel()
            time.sleep(0.2)
            return False

    wait_for("the queue reachable from a again", reachable, timeout=40)
    got = drain(ac, ch[0], "pt", len(before) + len(via_b))
    assert sorted(got) == sorted(before + via_b)
    ac.close()


def test_amqp_declarations_on_a_minority_node_fail_quickly_and_clearly(cluster):
    a, b, c = cluster.nodes
    cc = connect(c)
    cch = cc.channel()
    cch.queue_declare("before-cut", durable=True)
    cluster.netns.cut(c.ip, a.ip)
    cluster.netns.cut(c.ip, b.ip)
    started = time.monotonic()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        cch.queue_declare("on-the-minority", durable=True)
    assert time.monotonic() - started < 15
    assert e.value.reply_code == 541
    assert "metadata store operation timed out" in e.value.reply_text
    # "No reachable majority": nothing was applied. "May or may not have been applied": the
    # proposal may have reached the leader just before the cut took hold, and it may show
    # once the partition heals (the client was told so).
    uncertain = "may or may not have been applied" in e.value.reply_text
    assert "no reachable majority" in e.value.reply_text or uncertain, e.value.reply_text
    # Local objects need no cluster: an exclusive queue still works there.
    cc = connect(c)
    cc.channel().queue_declare("", exclusive=True)
    cc.close()
    cluster.netns.heal()
    cluster.wait_formed()
    defs = cluster.assert_same_definitions()
    names = {q["name"] for q in defs["queues"]}
    assert "before-cut" in names
    assert uncertain or "on-the-minority" not in names, e.value.reply_text


def test_a_policy_change_reaches_a_classic_queue_through_its_home_node(cluster):
    """Every node applies a policy change from the cluster's metadata; the queue's home
    node trims it (max-length: the oldest go at once), the other nodes only record the
    settings, and publishes through any node are held to the limit."""
    n1, n2, n3 = cluster.nodes
    conn1 = connect(n1)
    conn1.channel().queue_declare("cq-pol", durable=True)
    assert n2.api("GET", "/api/queues/%2F/cq-pol")[1]["type"] == "classic"
    conn2 = connect(n2)
    ch2 = conn2.channel()
    ch2.confirm_delivery()
    bodies = [f"m{i}" for i in range(20)]
    assert publish_confirmed(ch2, "cq-pol", bodies) == bodies

    def count(conn):
        return conn.channel().queue_declare("cq-pol", passive=True).method.message_count

    wait_for("20 on the home node", lambda: count(conn1) == 20)
    code, body = n3.api("PUT", "/api/policies/%2F/cq-limit", {
        "pattern": "^cq-pol$", "apply-to": "queues", "definition": {"max-length": 5}})
    assert code in (201, 204), body
    wait_for("5 on the home node", lambda: count(conn1) == 5)
    assert publish_confirmed(ch2, "cq-pol", ["n0", "n1"]) == ["n0", "n1"]
    wait_for("still 5", lambda: count(conn1) == 5)
    wait_for("the policy shown everywhere", lambda: all(
        n.api("GET", "/api/queues/%2F/cq-pol")[1].get("policy") == "cq-limit" for n in cluster.nodes))
    assert drain(conn2, ch2, "cq-pol", 5) == ["m17", "m18", "m19", "n0", "n1"]
    conn1.close()
    conn2.close()


def test_a_restarted_node_serves_queues_homed_elsewhere_from_its_first_client(cluster):
    """A node opens its client listeners once the other members answered its pings (for at
    most 2 s), so a client arriving the moment the port opens finds a queue homed elsewhere
    instead of RabbitMQ's "home node is down" 404. The home node is paused while the node
    restarts and resumed 1 s later, which makes the first answer late enough to see."""
    import socket
    import threading

    home, _, b = cluster.nodes
    hc = connect(home)
    hc.channel().queue_declare("early", durable=True)
    hc.close()
    b.kill()
    home.pause()
    resume = threading.Timer(1.0, home.resume)
    try:
        b.start()
        resume.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((b.ip, AMQP_PORT), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, b.log_tail()
                time.sleep(0.002)
        conn = pika.BlockingConnection(pika.ConnectionParameters(host=b.ip, port=AMQP_PORT))
        try:
            ok = conn.channel().queue_declare("early", passive=True)
        except Exception:
            print(b.log_tail(60))
            raise
        assert ok.method.queue == "early"
        conn.close()
    finally:
        resume.join()
        home.resume()
    b.wait_http()
    cluster.wait_formed()
