"""Formation from the static peer list, one broker seen from every node, definitions
import on one node, cluster_status and rename_cluster."""

from __future__ import annotations

import json
import time

import pika

from harness import AMQP_PORT, declare_queue


def test_three_nodes_form_from_the_static_peer_list_and_act_as_one(cluster):
    names = sorted(n.name for n in cluster.nodes)
    ids = {n.status()["cluster_id"] for n in cluster.nodes}
    assert len(ids) == 1 and None not in ids, ids
    for n in cluster.nodes:
        st = n.status()
        assert sorted(st["disk_nodes"]) == names
        assert sorted(st["running_nodes"]) == names
        # Any node answers for every node.
        code, nodes = n.api("GET", "/api/nodes")
        assert code == 200
        assert sorted(x["name"] for x in nodes) == names
        assert all(x["running"] for x in nodes), nodes

    # A change made on any node is applied there before the answer (read-your-writes)...
    for n in cluster.nodes:
        code, body = declare_queue(n, "/", f"q-{n.name}")
        assert code == 201, body
        code, q = n.api("GET", f"/api/queues/%2F/q-{n.name}")
        assert code == 200 and q["durable"] is True
    code, _ = cluster.nodes[1].api("PUT", "/api/vhosts/orders", {"description": "o"})
    assert code == 201
    code, _ = cluster.nodes[2].api("PUT", "/api/users/alice",
                                   {"password": "secret", "tags": "administrator"})
    assert code == 201
    code, _ = cluster.nodes[0].api("PUT", "/api/permissions/orders/alice",
                                   {"configure": ".*", "write": ".*", "read": ".*"})
    assert code == 201
    code, _ = cluster.nodes[1].api("PUT", "/api/policies/orders/cap",
                                   {"pattern": "^cap", "definition": {"max-length": 3},
                                    "apply-to": "queues"})
    assert code == 201
    code, _ = cluster.nodes[2].api("PUT", "/api/exchanges/orders/events",
                                   {"type": "topic", "durable": True})
    assert code == 201
    code, _ = cluster.nodes[0].api("PUT", "/api/queues/orders/cap.1", {"durable": True})
    assert code == 201
    code, _ = cluster.nodes[1].api("POST", "/api/bindings/orders/e/events/q/cap.1",
                                   {"routing_key": "order.#"})
    assert code == 201
    code, _ = cluster.nodes[2].api("PUT", "/api/vhost-limits/orders/max-queues",
                                   {"value": 100})
    assert code == 204
    # ... and on every node (checked, not assumed).
    defs = cluster.assert_same_definitions()
    assert {"alice", "guest"} <= {u["name"] for u in defs["users"]}
    assert any(b["destination"] == "cap.1" for b in defs["bindings"])
    # Every node shows each queue's home: the node it was declared on.
    for n in cluster.nodes:
        for home in cluster.nodes:
            code, q = n.api("GET", f"/api/queues/%2F/q-{home.name}")
            assert code == 200 and q["node"] == home.name, (n.name, q)
    # A refusal is the broker's, from whichever node: redeclaring with other arguments.
    code, body = cluster.nodes[2].api("PUT", "/api/queues/orders/cap.1",
                                      {"durable": True, "arguments": {"x-max-length": 1}})
    assert code == 400 and "inequivalent arg" in body["reason"], body
    # Transient objects stay on their node.
    code, _ = cluster.nodes[0].api("PUT", "/api/queues/%2F/transient", {"durable": False})
    assert code == 201
    code, _ = cluster.nodes[1].api("GET", "/api/queues/%2F/transient")
    assert code == 404


def test_definitions_imported_on_one_node_appear_on_all(cluster):
    export = {
        "rabbit_version": "3.10.8",
        "users": [{"name": "bob", "password_hash":
                   "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
                   "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": ["monitoring"], "limits": {}}],
        "vhosts": [{"name": "imported", "description": "from RabbitMQ", "tags": []}],
        "permissions": [{"user": "bob", "vhost": "imported", "configure": "",
                         "write": ".*", "read": ".*"}],
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [{"vhost": "imported", "name": "ttl", "pattern": "^t\\.",
                      "apply-to": "queues", "definition": {"message-ttl": 60000},
                      "priority": 0}],
        "queues": [{"name": f"t.{i}", "vhost": "imported", "durable": True,
                    "auto_delete": False, "arguments": {"x-queue-type": "classic"}}
                   for i in range(50)],
        "exchanges": [{"name": "fan", "vhost": "imported", "type": "fanout",
                       "durable": True, "auto_delete": False, "internal": False,
                       "arguments": {}}],
        "bindings": [{"source": "fan", "vhost": "imported", "destination": f"t.{i}",
                      "destination_type": "queue", "routing_key": "",
                      "arguments": {}} for i in range(50)],
    }
    code, body = cluster.nodes[2].api("POST", "/api/definitions", export, timeout=60)
    assert code == 204, body
    defs = cluster.assert_same_definitions()
    assert len([q for q in defs["queues"] if q["vhost"] == "imported"]) == 50
    assert len([b for b in defs["bindings"] if b["vhost"] == "imported"]) == 50
    assert "bob" in {u["name"] for u in defs["users"]}
    # Every node's API shows it, each from its own applied copy, the queues homed on the
    # node that imported them.
    for n in cluster.nodes:
        code, qs = n.api("GET", "/api/queues/imported")
        assert code == 200 and len(qs) == 50
        assert {q["node"] for q in qs} == {cluster.nodes[2].name}
    # And it works as imported: a publish on another node to the imported fanout exchange
    # reaches all 50 queues on their home node.
    code, _ = cluster.nodes[0].api("PUT", "/api/permissions/imported/guest",
                                   {"configure": ".*", "write": ".*", "read": ".*"})
    assert code in (201, 204)
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=cluster.nodes[0].ip, port=AMQP_PORT, virtual_host="imported",
        connection_attempts=5, retry_delay=0.5, socket_timeout=10))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("fan", "", b"hello", mandatory=True)
    conn.close()
    deadline = time.monotonic() + 15
    while True:
        code, qs = cluster.nodes[1].api("GET", "/api/queues/imported")
        if code == 200 and sum(q["messages"] for q in qs) == 50:
            break
        assert time.monotonic() < deadline, [(q["name"], q["messages"]) for q in qs]
        time.sleep(0.2)


def test_cluster_status_has_rabbitmqs_sections_and_the_cluster_can_be_renamed(cluster):
    out = cluster.nodes[1].ctl("cluster_status")
    assert out.returncode == 0, out.stderr
    for section in ("Basics", "Disk Nodes", "Running Nodes", "Versions", "Alarms",
                    "Network Partitions", "Listeners"):
        assert section in out.stdout, out.stdout
    for n in cluster.nodes:
        assert n.name in out.stdout
    js = json.loads(cluster.nodes[2].ctl("--json", "cluster_status").stdout)
    assert sorted(js["running_nodes"]) == sorted(n.name for n in cluster.nodes)
    out = cluster.nodes[0].ctl("rename_cluster", "renamed")
    assert out.returncode == 0, out.stderr
    # Read-your-writes on the node asked; the others apply it moments later.
    assert cluster.nodes[0].api("GET", "/api/cluster-name")[1]["name"] == "renamed"
    deadline = time.monotonic() + 20
    for n in cluster.nodes:
        while n.api("GET", "/api/cluster-name")[1]["name"] != "renamed":
            assert time.monotonic() < deadline, f"{n.name} did not apply the new name"
            time.sleep(0.1)
