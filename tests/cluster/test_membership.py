"""Restart with data, join_cluster and forget_cluster_node, and a node with another
cluster's data being refused."""

from __future__ import annotations

import time

from harness import Node, declare_queue


def test_a_restarted_node_rejoins_with_its_data(cluster):
    a, b, c = cluster.nodes
    assert declare_queue(a, "/", "before")[0] == 201
    cluster.assert_same_definitions()
    b.kill()
    # Changes while it is down...
    for i in range(5):
        assert declare_queue(c, "/", f"while-down-{i}")[0] == 201
    b.start()
    b.wait_http()
    cluster.wait_formed()
    # ... reach it, on top of what it had.
    defs = cluster.assert_same_definitions()
    names = {q["name"] for q in defs["queues"]}
    assert {"before", *(f"while-down-{i}" for i in range(5))} <= names
    assert b.status()["cluster_id"] == a.status()["cluster_id"]


def _wait_for(what: str, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


def test_join_forget_and_a_node_with_another_clusters_data_is_refused(cluster):
    a, b, c = cluster.nodes
    # A fourth node on its own forms a cluster of one, with data of its own.
    d = Node(4, cluster.workdir / "n4", [f"127.0.0.14:{a.cluster_addr.split(':')[1]}"])
    cluster.nodes.append(d)
    d.start()
    d.wait_http()
    _wait_for("the lone node leads itself", lambda: d.status()["leader"] == d.name)
    assert declare_queue(d, "/", "only-on-d")[0] == 201
    own_id = d.status()["cluster_id"]
    assert own_id != a.status()["cluster_id"]

    # Restarted with the cluster's peer list, it is refused: its data is another cluster's.
    d.terminate()
    d.peers = a.peers + [d.cluster_addr]
    d.start()
    d.wait_http()
    _wait_for("a member logs the refusal",
              lambda: any("has the data of another cluster" in n.log_text()
                          for n in (a, b, c)))
    assert d.name not in a.status()["disk_nodes"]
    assert d.status()["cluster_id"] == own_id

    # A member of a cluster with other nodes cannot join another one.
    out = b.ctl("join_cluster", d.cluster_addr)
    assert out.returncode != 0
    assert "other nodes" in out.stderr, out.stderr

    # join_cluster resets the lone node and joins it (as rabbitmqctl's does).
    out = d.ctl("join_cluster", a.cluster_addr)
    assert out.returncode == 0, out.stderr
    leader = cluster.wait_formed(nodes=[a, b, c, d])
    assert leader in {n.name for n in (a, b, c, d)}
    assert sorted(a.status()["disk_nodes"]) == sorted(n.name for n in (a, b, c, d))
    defs = cluster.assert_same_definitions(nodes=[a, b, c, d])
    assert "only-on-d" not in {q["name"] for q in defs["queues"]}
    assert declare_queue(d, "/", "from-d")[0] == 201

    # forget_cluster_node removes it (stopped first, as RabbitMQ requires).
    d.kill()
    out = a.ctl("forget_cluster_node", d.name)
    assert out.returncode == 0, out.stderr
    for n in (a, b, c):
        _wait_for(f"{n.name} forgot {d.name}", lambda n=n: d.name not in n.status()["disk_nodes"])
    cluster.nodes.remove(d)
    cluster.wait_formed()
    defs = cluster.assert_same_definitions()
    assert "from-d" in {q["name"] for q in defs["queues"]}
