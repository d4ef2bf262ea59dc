#!/usr/bin/env python3
"""Golden corpus of the management API's JSON: starts `pier server` (temp data dir, free
ports), creates a representative set of objects (vhosts, users, permissions, topic
permissions, policies, limits, exchanges, classic/quorum/stream queues, bindings, an AMQP
connection with a channel, a consumer and an exclusive queue, stream-protocol publisher and
consumer, MQTT and STOMP connections), GETs every GET endpoint of the API (with `columns=`,
`sort=`, `page=` on lists), and writes each answer, normalised, to one file per request.

Normalising masks what changes from run to run: timestamps, rates, uptime, memory, pids,
ports, password hashes, byte and frame counts. Numbers are masked as "<num>", so a field that
is null in one corpus and a number in the other still differs.

    scripts/mgmt-golden.py --bin target/debug/pier --out /tmp/golden-before
    scripts/mgmt-golden.py --bin target/debug/pier --out /tmp/golden-after
    diff -r /tmp/golden-before /tmp/golden-after

`--check DIR` writes to a temporary directory and compares with DIR (exit status 1 on a
difference). Needs pika, rstream, paho-mqtt and stomp.py (the Python test suite's venv).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CONFIG = """\
[[users]]
name = "alice"
password = "secret"
tags = ["administrator"]

[[vhosts]]
name = "other"

[[permissions]]
user = "alice"
vhost = "/"
configure = ".*"
write = ".*"
read = ".*"
"""

VH = "golden-vh"
# A valid RabbitMQ SHA-256 hash (4-byte salt, 32-byte digest), so that it is stable.
FIXED_HASH = base64.b64encode(bytes(range(36))).decode()

# Keys whose values change from run to run (masked wherever they appear).
VOLATILE_KEYS = {
    "connected_at", "uptime", "os_pid", "mem_used", "mem_limit", "disk_free",
    "disk_free_limit", "fd_used", "fd_total", "processors", "rate", "recv_oct", "send_oct",
    "recv_cnt", "send_cnt", "send_pend", "first_timestamp", "last_timestamp", "rss",
    "allocated", "erlang", "arrival_rate", "service_rate", "utilisation",
    "time_in_queue_seconds", "mm1_predicted_length", "mm1_predicted_time_in_queue_seconds",
    "mean_seconds", "p50_seconds", "p99_seconds", "samples", "port", "peer_port", "missing",
    "ports", "sockets_used", "timeout", "memory", "pier_message_bodies", "size_bytes",
    "message_bytes_ram", "messages_ram", "messages_ready_ram", "messages_paged_out",
    "message_bytes_paged_out", "product_version",
}
# Keys of secrets that differ per run (salted hashes of config-file users).
SECRET_KEYS = {"password_hash"}
ADDR = re.compile(r"(\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]|localhost):\d+")
# Names the client libraries give with random or versioned parts.
RANDOM = re.compile(r"amq\.gen-[A-Za-z0-9_-]+|ctag[0-9.]+-[0-9a-f]+")


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p not in taken:
            taken.add(p)
            return p


def mask(v, key=None, node=None):
    if key in SECRET_KEYS and isinstance(v, str):
        return "<hash>" if v else ""
    if key in VOLATILE_KEYS:
        if v is None:
            return None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return "<num>"
        if isinstance(v, str) and v.isdigit():
            return "<numstr>"
        if isinstance(v, list):
            return ["<num>" for _ in v]
    if isinstance(v, dict):
        return {mask_str(k, node): mask(x, k, node) for k, x in v.items()}
    if isinstance(v, list):
        return [mask(x, None, node) for x in v]
    if isinstance(v, str):
        return mask_str(v, node)
    return v


def mask_str(s: str, node) -> str:
    s = ADDR.sub(lambda m: m.group(1) + ":<port>", s)
    s = RANDOM.sub("<random>", s)
    if node:
        s = s.replace(node, "<node>")
    return s


class Api:
    def __init__(self, port: int, user="guest", password="guest"):
        self.base = f"http://127.0.0.1:{port}/api"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(self, method: str, path: str, body=None, auth=True, raw_base=False):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = self.auth
        url = (self.base.removesuffix("/api") if raw_base else self.base) + path
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = {"<non-json>": text[:200]}
        return status, parsed

    def ok(self, method, path, body=None):
        status, b = self.call(method, path, body)
        if status >= 300:
            raise SystemExit(f"{method} {path}: {status} {b}")
        return b


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def setup(api: Api):
    api.ok("PUT", f"/vhosts/{VH}", {"description": "golden", "tags": "a,b",
                                    "default_queue_type": "classic"})
    api.ok("PUT", "/users/bob", {"password_hash": FIXED_HASH, "tags": "monitoring"})
    api.ok("PUT", "/users/carol", {"password": "carol", "tags": "management"})
    api.ok("PUT", "/users/dave", {"password_hash": "", "tags": ""})
    api.ok("PUT", f"/permissions/{VH}/bob", {"configure": "^bob", "write": ".*", "read": ""})
    api.ok("PUT", f"/permissions/{VH}/carol", {"configure": ".*", "write": ".*", "read": ".*"})
    api.ok("PUT", f"/topic-permissions/{VH}/bob",
           {"exchange": "amq.topic", "write": "^a", "read": ".*"})
    api.ok("PUT", f"/topic-permissions/{VH}/bob",
           {"exchange": "g.topic", "write": "", "read": "^x"})
    api.ok("PUT", f"/policies/{VH}/ttl", {"pattern": "^ttl\\.", "apply-to": "queues",
                                          "definition": {"message-ttl": 60000,
                                                         "max-length": 100},
                                          "priority": 1})
    api.ok("PUT", f"/policies/{VH}/ae", {"pattern": "^ae\\.", "apply-to": "exchanges",
                                         "definition": {"alternate-exchange": "g.fanout"}})
    api.ok("PUT", f"/vhost-limits/{VH}/max-queues", {"value": 100})
    api.ok("PUT", f"/vhost-limits/{VH}/max-connections", {"value": 50})
    for name, kind, extra in [
        ("g.direct", "direct", {"durable": True}),
        ("g.topic", "topic", {"durable": True, "arguments": {"x": 1, "y": "z"}}),
        ("g.fanout", "fanout", {"auto_delete": True}),
        ("g.headers", "headers", {"internal": True}),
        ("ae.x", "direct", {}),
    ]:
        api.ok("PUT", f"/exchanges/{VH}/{name}", {"type": kind, **extra})
    for name, body in [
        ("g.classic", {"durable": True, "arguments": {"x-max-length": 10}}),
        ("ttl.q", {"durable": False}),
        ("g.quorum", {"durable": True, "arguments": {"x-queue-type": "quorum"}}),
        ("g.stream", {"durable": True, "arguments": {"x-queue-type": "stream"}}),
        ("g.sac", {"durable": True, "arguments": {"x-single-active-consumer": True}}),
        ("g.get", {"durable": False}),
    ]:
        api.ok("PUT", f"/queues/{VH}/{name}", body)
    api.ok("POST", f"/bindings/{VH}/e/g.direct/q/g.classic", {"routing_key": "k1"})
    api.ok("POST", f"/bindings/{VH}/e/g.direct/q/g.classic", {"routing_key": "k 2/é"})
    api.ok("POST", f"/bindings/{VH}/e/g.topic/q/g.quorum",
           {"routing_key": "a.#", "arguments": {"x-match": "all", "n": 2}})
    api.ok("POST", f"/bindings/{VH}/e/g.direct/e/g.topic", {"routing_key": "e2e"})
    api.ok("POST", f"/bindings/{VH}/e/g.fanout/q/ttl.q", {})
    publishes = []
    for i in range(3):
        publishes.append(api.ok("POST", f"/exchanges/{VH}/g.direct/publish", {
            "routing_key": "k1", "payload": f"classic-{i}", "payload_encoding": "string",
            "properties": {"delivery_mode": 2, "headers": {"i": i}}}))
    for i in range(2):
        api.ok("POST", f"/exchanges/{VH}/amq.default/publish", {
            "routing_key": "g.quorum", "payload": f"quorum-{i}", "payload_encoding": "string",
            "properties": {}})
    publishes.append(api.ok("POST", f"/exchanges/{VH}/g.direct/publish", {
        "routing_key": "nowhere", "payload": "x", "payload_encoding": "string",
        "properties": {}}))
    for i in range(2):
        api.ok("POST", f"/exchanges/{VH}/amq.default/publish", {
            "routing_key": "g.get", "payload": base64.b64encode(b"\xff\x00get").decode(),
            "payload_encoding": "base64",
            "properties": {"content_type": "application/octet-stream", "priority": 3,
                           "message_id": "m1", "timestamp": 1700000000}})
    return publishes


def amqp_client(port: int):
    import pika
    params = pika.ConnectionParameters(
        "127.0.0.1", port, VH, pika.PlainCredentials("guest", "guest"),
        client_properties={"connection_name": "golden-amqp"}, heartbeat=0)
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=5)
    ch.queue_declare("g.exclusive", exclusive=True)
    ch.basic_consume("g.quorum", lambda *a: None, consumer_tag="golden-consumer",
                     arguments={"x-priority": 4})
    ch.basic_consume("g.sac", lambda *a: None, consumer_tag="sac-1")
    ch.basic_consume("g.sac", lambda *a: None, consumer_tag="sac-2")
    ch2 = conn.channel()
    ch2.basic_consume("g.classic", lambda *a: None, auto_ack=True, consumer_tag="noack",
                      exclusive=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        conn.process_data_events(0.1)
    return conn


class StreamClients(threading.Thread):
    """A stream publisher and consumer on g.stream, kept open until `stop`."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            asyncio.run(self.scenario())
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e
            self.ready.set()

    async def scenario(self):
        from rstream import (AMQPMessage, Consumer, ConsumerOffsetSpecification,
                             OffsetType, Producer, amqp_decoder)
        async with Producer("127.0.0.1", port=self.port, username="guest", password="guest",
                            vhost=VH, connection_name="golden-stream-pub") as p:
            for i in range(5):
                await p.send_wait("g.stream", AMQPMessage(body=f"s{i}".encode()))
            c = Consumer("127.0.0.1", port=self.port, username="guest", password="guest",
                         vhost=VH, connection_name="golden-stream-sub")
            await c.start()
            got = []
            done = asyncio.Event()

            async def cb(msg, ctx):
                got.append(ctx.offset)
                if len(got) >= 5:
                    done.set()
            await c.subscribe("g.stream", cb, decoder=amqp_decoder,
                              offset_specification=ConsumerOffsetSpecification(
                                  OffsetType.FIRST, None))
            await asyncio.wait_for(done.wait(), 15)
            await asyncio.sleep(1)
            self.ready.set()
            while not self.stop.is_set():
                await asyncio.sleep(0.1)
            await c.close()


def mqtt_client(port: int):
    import paho.mqtt.client as mqtt
    try:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="golden-mqtt")
    except AttributeError:
        c = mqtt.Client(client_id="golden-mqtt")
    c.username_pw_set("guest", "guest")
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    return c


def stomp_client(port: int):
    import stomp
    c = stomp.Connection([("127.0.0.1", port)], heartbeats=(0, 0))
    c.connect("guest", "guest", wait=True, headers={"host": "/"})
    return c


def requests_to_make(api: Api, node: str, amqp_port: int):
    """(label, method, path, body, options) for every request of the corpus."""
    out = []

    def get(path, label=None, sort_items=False, **kw):
        out.append((label or path, "GET", path, None, {"sort_items": sort_items, **kw}))

    lists = {
        "/queues": ["columns=name,messages,type", "sort=messages&sort_reverse=true",
                    "page=1&page_size=2", "page=2&page_size=2&name=g.",
                    "name=^g\\.(q|s)&use_regex=true", "columns=name,message_stats.publish",
                    "page=9&page_size=2", "page=1&page_size=900"],
        f"/queues/{VH}": ["columns=name,arguments", "sort=name"],
        "/exchanges": ["columns=name,type", "sort=type", "page=1&page_size=3"],
        f"/exchanges/{VH}": ["columns=name,policy"],
        "/vhosts": ["columns=name,tags,metadata.description", "page=1"],
        "/users": ["sort=name&page=1&page_size=2", "columns=name,tags"],
        "/permissions": ["columns=user,vhost"],
        "/topic-permissions": ["page=1&page_size=1"],
        "/bindings": ["columns=source,destination,properties_key", "sort=routing_key"],
        f"/bindings/{VH}": ["page=1&page_size=3"],
        "/policies": ["columns=name,definition"],
        f"/policies/{VH}": ["sort=priority"],
        "/connections": ["columns=name,protocol,user_provided_name", "sort=protocol"],
        "/channels": ["columns=name,number,consumer_count"],
        "/consumers": ["columns=consumer_tag,queue.name", "sort=consumer_tag"],
        f"/consumers/{VH}": ["page=1&page_size=2"],
        "/stream/connections": ["columns=name,publishers,subscriptions"],
        "/stream/publishers": ["columns=reference,published"],
        "/stream/consumers": ["columns=subscription_id,offset"],
        "/parameters": ["page=1"],
        "/global-parameters": ["columns=name"],
        "/vhost-limits": ["columns=vhost"],
        "/user-limits": ["page=1"],
    }
    conn_like = ("/connections", "/channels", f"/vhosts/{VH}/connections",
                 f"/vhosts/{VH}/channels", "/stream/connections", "/connections/username")
    for path in [
        "/overview", "/cluster-name", "/nodes", f"/nodes/{q(node)}",
        f"/nodes/{q(node)}?memory=true", f"/nodes/{q(node)}/memory", "/nodes/nope",
        "/extensions", "/feature-flags", "/parameters", "/parameters/vhost-limits",
        f"/parameters/vhost-limits/{VH}", f"/parameters/vhost-limits/{VH}/limits",
        "/parameters/vhost-limits/other/limits", "/parameters/federation-upstream",
        f"/parameters/shovel/{VH}", "/global-parameters", "/global-parameters/cluster_name",
        "/global-parameters/other", "/operator-policies", f"/operator-policies/{VH}",
        f"/operator-policies/{VH}/x", "/vhost-limits", f"/vhost-limits/{VH}",
        "/vhost-limits/other", "/user-limits", "/user-limits/bob", "/user-limits/nobody",
        "/pier/cluster", "/whoami", "/vhosts", f"/vhosts/{VH}", "/vhosts/%2F",
        "/vhosts/nope", f"/vhosts/{VH}/permissions", "/vhosts/%2F/permissions",
        f"/vhosts/{VH}/topic-permissions", "/users", "/users/without-permissions",
        "/users/bob", "/users/guest", "/users/nobody", "/users/bob/permissions",
        "/users/bob/topic-permissions", "/topic-permissions",
        f"/topic-permissions/{VH}/bob", f"/topic-permissions/{VH}/carol", "/permissions",
        f"/permissions/{VH}/bob", f"/permissions/{VH}/dave", "/queues", f"/queues/{VH}",
        "/queues/other", "/queues/nope",
        *[f"/queues/{VH}/{n}" for n in ["g.classic", "ttl.q", "g.quorum", "g.stream",
                                         "g.sac", "g.get", "g.exclusive", "nope"]],
        *[f"/queues/{VH}/{n}/bindings" for n in ["g.classic", "g.quorum", "ttl.q"]],
        f"/queues/{VH}/g.quorum/quorum-status", f"/queues/{VH}/g.classic/quorum-status",
        "/exchanges", f"/exchanges/{VH}", "/exchanges/%2F",
        *[f"/exchanges/{VH}/{n}" for n in ["g.direct", "g.topic", "g.fanout", "g.headers",
                                            "ae.x", "amq.default", "amq.topic", "nope"]],
        *[f"/exchanges/{VH}/{n}/bindings/{d}" for n in ["g.direct", "g.topic", "amq.default"]
          for d in ["source", "destination"]],
        "/bindings", f"/bindings/{VH}", "/bindings/%2F",
        f"/bindings/{VH}/e/g.direct/q/g.classic", f"/bindings/{VH}/e/g.direct/q/g.classic/k1",
        f"/bindings/{VH}/e/g.direct/q/g.classic/{q('k+2%2F%C3%A9')}",
        f"/bindings/{VH}/e/g.direct/q/g.classic/nope", f"/bindings/{VH}/e/g.direct/e/g.topic",
        f"/bindings/{VH}/e/g.direct/e/g.topic/e2e", f"/bindings/{VH}/e/amq.default/q/g.get",
        f"/bindings/{VH}/e/g.direct/x/g.get", f"/bindings/{VH}/e/g.topic/q/g.quorum",
        "/stream/publishers", f"/stream/publishers/{VH}", f"/stream/publishers/{VH}/g.stream",
        f"/stream/publishers/{VH}/g.classic", "/stream/consumers", f"/stream/consumers/{VH}",
        "/consumers", f"/consumers/{VH}", "/consumers/other", "/policies",
        f"/policies/{VH}", f"/policies/{VH}/ttl", f"/policies/{VH}/nope",
        "/health/checks/alarms", "/health/checks/local-alarms",
        "/health/checks/virtual-hosts", f"/health/checks/port-listener/{amqp_port}",
        "/health/checks/port-listener/1", "/health/checks/port-listener/x",
        "/health/checks/protocol-listener/amqp", "/health/checks/protocol-listener/amqp091",
        "/health/checks/protocol-listener/mqtt", "/health/checks/node-is-quorum-critical",
        "/health/checks/node-is-mirror-sync-critical", "/definitions", "/all-configuration",
        f"/definitions/{VH}", "/definitions/nope", "/nonexistent",
    ]:
        get(path, sort_items=path.startswith(conn_like))
    for path in conn_like[:5]:
        get(path, sort_items=True)
    get(f"/stream/connections/{VH}", sort_items=True)
    get("/connections/username/guest", sort_items=True)
    for path, variants in lists.items():
        for v in variants:
            get(f"{path}?{v}", sort_items=path.startswith(conn_like) and "sort=" not in v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/debug/pier")
    ap.add_argument("--out")
    ap.add_argument("--check", help="compare with this corpus (exit 1 on a difference)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if not args.out and not args.check:
        ap.error("--out or --check")
    out = Path(args.out or tempfile.mkdtemp(prefix="mgmt-golden-out-"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    work = Path(tempfile.mkdtemp(prefix="mgmt-golden-"))
    (work / "data").mkdir()
    (work / "pier.toml").write_text(CONFIG)
    taken: set[int] = set()
    ports = {k: free_port(taken) for k in
             ["amqp", "http", "stream", "stomp", "web-stomp", "mqtt", "web-mqtt"]}
    cmd = [str(Path(args.bin).resolve()), "server",
           "--amqp-port", str(ports["amqp"]), "--http-port", str(ports["http"]),
           "--stream-port", str(ports["stream"]), "--stomp-port", str(ports["stomp"]),
           "--web-stomp-port", str(ports["web-stomp"]), "--mqtt-port", str(ports["mqtt"]),
           "--web-mqtt-port", str(ports["web-mqtt"]), "--stream-advertised-host", "127.0.0.1",
           "--data-dir", str(work / "data"), "--bind", "127.0.0.1",
           "--config", str(work / "pier.toml")]
    log = open(work / "pier.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=work)
    clients = []
    streams = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                for p in (ports["amqp"], ports["mqtt"], ports["http"]):
                    socket.create_connection(("127.0.0.1", p), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"pier did not start; see {work / 'pier.log'}")
                time.sleep(0.05)
        api = Api(ports["http"])
        node = api.ok("GET", "/overview")["node"]
        publishes = setup(api)
        streams = StreamClients(ports["stream"])
        streams.start()
        streams.ready.wait(30)
        if streams.error:
            raise streams.error
        clients.append(amqp_client(ports["amqp"]))
        clients.append(mqtt_client(ports["mqtt"]))
        clients.append(stomp_client(ports["stomp"]))
        time.sleep(1.0)

        results = []
        results.append(("POST publish answers", "POST", "-", None, {}, 200, publishes))
        # Connection and channel names are known only now.
        conns = api.ok("GET", "/connections")
        chans = api.ok("GET", "/channels")
        extra = []
        for c in sorted(conns, key=lambda c: (c["protocol"], c.get("user_provided_name") or "")):
            label = f"/connections/<{c['protocol']}:{c.get('user_provided_name')}>"
            extra.append((label, "GET", f"/connections/{q(c['name'])}", None, {}))
            extra.append((label + "/channels", "GET", f"/connections/{q(c['name'])}/channels",
                          None, {}))
            if c["protocol"].startswith("stream"):
                base = f"/stream/connections/{VH}/{q(c['name'])}"
                lb = f"/stream/connections/{VH}/<{c.get('user_provided_name')}>"
                extra.append((lb, "GET", base, None, {}))
                extra.append((lb + "/publishers", "GET", base + "/publishers", None, {}))
                extra.append((lb + "/consumers", "GET", base + "/consumers", None, {}))
        protocol_of = {c["name"]: f"{c['protocol']}:{c.get('user_provided_name')}" for c in conns}
        for ch in sorted(chans, key=lambda c: (protocol_of.get(c["connection_details"]["name"],
                                                               ""), c["number"])):
            label = f"/channels/<{protocol_of.get(ch['connection_details']['name'])} {ch['number']}>"
            extra.append((label, "GET", f"/channels/{q(ch['name'])}", None, {}))
        amqp_port = ports["amqp"]
        for label, method, path, body, opts in requests_to_make(api, node, amqp_port) + extra:
            status, b = api.call(method, path, body)
            results.append((label, method, path, body, opts, status, b))
        # Other users, no credentials, bad credentials, the auth page, errors of methods.
        carol, bad = Api(ports["http"], "carol", "carol"), Api(ports["http"], "guest", "nope")
        for label, a, method, path, body, kw in [
            ("carol GET /users", carol, "GET", "/users", None, {}),
            ("carol GET /vhosts", carol, "GET", "/vhosts", None, {}),
            ("carol GET /queues", carol, "GET", "/queues", None, {}),
            ("carol GET /nodes", carol, "GET", "/nodes", None, {}),
            ("carol GET /whoami", carol, "GET", "/whoami", None, {}),
            ("bad password GET /overview", bad, "GET", "/overview", None, {}),
            ("no credentials GET /overview", api, "GET", "/overview", None, {"auth": False}),
            ("GET /api/auth", api, "GET", "/api/auth", None, {"auth": False, "raw_base": True}),
            ("PATCH /overview", api, "PATCH", "/overview", None, {}),
            ("PUT operator policy", api, "PUT", f"/operator-policies/{VH}/op",
             {"pattern": ".*", "definition": {"max-length": 1}}, {}),
            ("PUT user limit", api, "PUT", "/user-limits/bob/max-connections", {"value": 1}, {}),
            ("PUT bad queue arg", api, "PUT", f"/queues/{VH}/bad", {"arguments": 5}, {}),
            ("POST queue actions bogus", api, "POST", f"/queues/{VH}/g.classic/actions",
             {"action": "bogus"}, {}),
            ("POST get g.get requeue", api, "POST", f"/queues/{VH}/g.get/get",
             {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 3}, {}),
            ("POST get g.classic", api, "POST", f"/queues/{VH}/g.classic/get",
             {"count": 1, "ackmode": "ack_requeue_true", "encoding": "base64"}, {}),
            ("GET /aliveness-test", api, "GET", f"/aliveness-test/{VH}", None, {}),
            ("GET /aliveness-test nope", api, "GET", "/aliveness-test/nope", None, {}),
        ]:
            status, b = a.call(method, path, body, **kw)
            results.append((label, method, path, body, {}, status, b))

        for i, (label, method, path, body, opts, status, b) in enumerate(results):
            b = mask(b, None, node)
            if opts.get("sort_items") and isinstance(b, list):
                b.sort(key=lambda x: json.dumps(x, sort_keys=True))
            label = label.replace(str(amqp_port), "<amqp-port>")
            fname = f"{i:03d}_" + re.sub(r"[^A-Za-z0-9._-]+", "_", mask_str(label, node))[:90]
            record = {"request": f"{method} {mask_str(label, node)}", "status": status, "body": b}
            (out / (fname + ".json")).write_text(
                json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        print(f"{len(results)} answers written to {out}")
    finally:
        if streams is not None:
            streams.stop.set()
            streams.join(5)
        for c in clients:
            try:
                if hasattr(c, "loop_stop"):
                    c.disconnect()
                    c.loop_stop()
                else:
                    c.close() if hasattr(c, "close") else c.disconnect()
            except Exception:  # noqa: BLE001 - the broker goes next anyway
                pass
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.check:
        r = subprocess.run(["diff", "-r", "-u", args.check, str(out)])
        if r.returncode == 0:
            print("no difference")
        sys.exit(r.returncode)


if __name__ == "__main__":
    main()
