#!/usr/bin/env python3
"""Metadata throughput of a broker or cluster: durable queue declares per second, then
bindings per second, with C concurrent clients spread over the nodes (client i talks to
node i mod N), over the management HTTP API or over AMQP 0-9-1. Works against Pier and
RabbitMQ alike.

    scripts/bench-metadata.py --nodes http://127.0.0.11:6673,http://127.0.0.12:6673,... \
        [--amqp amqp://127.0.0.11:5672,amqp://127.0.0.12:5672,...] \
        [--count 3000] [--concurrency 32] [--user guest --password guest]

Over HTTP each operation is one request on a kept-alive connection; over AMQP (--amqp) each
client has one connection and one channel and waits for queue.declare-ok / queue.bind-ok
before its next operation (the management URLs then only set up and clean up). A change
counts when the broker has answered it (for a Pier cluster: committed by a majority and
applied on the node asked). Everything happens in a fresh vhost `bench-metadata`, deleted
at the end.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import threading
import time
import urllib.parse

VHOST = "bench-metadata"


class Client:
    def __init__(self, base: str, user: str, password: str):
        u = urllib.parse.urlparse(base)
        self.host, self.port = u.hostname, u.port or 80
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def call(self, method: str, path: str, body: object = None) -> int:
        data = None if body is None else json.dumps(body)
        headers = {"authorization": self.auth, "content-type": "application/json"}
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                r.read()
                return r.status
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
        return 0


class AmqpClient:
    """One AMQP connection and channel; `call` takes the HTTP client's requests and does
    the same over AMQP (queue.declare durable, queue.bind)."""

    def __init__(self, url: str, user: str, password: str):
        import pika  # only the AMQP mode needs it

        u = urllib.parse.urlparse(url)
        params = pika.ConnectionParameters(
            host=u.hostname, port=u.port or 5672, virtual_host=VHOST,
            credentials=pika.PlainCredentials(user, password), heartbeat=0,
            blocked_connection_timeout=60)
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()

    def call(self, method: str, path: str, body: dict | None = None) -> int:
        name = path.rsplit("/", 1)[-1]
        try:
            if method == "PUT":
                self.ch.queue_declare(queue=name, durable=True)
            else:
                self.ch.queue_bind(queue=name, exchange="bench.x",
                                   routing_key=(body or {})["routing_key"])
            return 200
        except Exception:  # a closed channel: count it, carry on with a new one
            self.ch = self.conn.channel()
            return 0


def run(nodes: list[str], user: str, password: str, count: int, concurrency: int,
        make_request, client=None) -> tuple[float, int]:
    """Runs `count` requests over `concurrency` threads; returns (ops/s, failures)."""
    client = client or Client
    clients = [client(nodes[k % len(nodes)], user, password) for k in range(concurrency)]
    failures = [0]
    lock = threading.Lock()
    next_index = [0]

    def worker(k: int) -> None:
        c = clients[k]
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= count:
                return
            method, path, body = make_request(i)
            if c.call(method, path, body) not in (200, 201, 204):
                with lock:
                    failures[0] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.monotonic() - start), failures[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", required=True, help="comma-separated management base URLs")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--user", default="guest")
    ap.add_argument("--password", default="guest")
    ap.add_argument("--amqp", default="",
                    help="comma-separated amqp:// URLs: declare and bind over AMQP")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    nodes = args.nodes.split(",")
    admin = Client(nodes[0], args.user, args.password)
    v = urllib.parse.quote(VHOST, safe="")
    admin.call("DELETE", f"/api/vhosts/{v}")
    assert admin.call("PUT", f"/api/vhosts/{v}", {}) in (201, 204)
    admin.call("PUT", f"/api/permissions/{v}/{args.user}",
               {"configure": ".*", "write": ".*", "read": ".*"})
    assert admin.call("PUT", f"/api/exchanges/{v}/bench.x",
                      {"type": "direct", "durable": True}) in (201, 204)
    # Every node has the vhost before the clients start (RabbitMQ and Pier alike).
    time.sleep(1)
    targets, client = (args.amqp.split(","), AmqpClient) if args.amqp else (nodes, Client)
    q_rate, q_fail = run(
        targets, args.user, args.password, args.count, args.concurrency,
        lambda i: ("PUT", f"/api/queues/{v}/bench.q.{i}", {"durable": True}), client)
    b_rate, b_fail = run(
        targets, args.user, args.password, args.count, args.concurrency,
        lambda i: ("POST", f"/api/bindings/{v}/e/bench.x/q/bench.q.{i}",
                   {"routing_key": f"k{i}"}), client)
    admin.call("DELETE", f"/api/vhosts/{v}")
    print(json.dumps({
        "label": args.label, "protocol": "amqp" if args.amqp else "http",
        "nodes": len(targets), "count": args.count,
        "concurrency": args.concurrency,
        "queue_declares_per_s": round(q_rate), "queue_failures": q_fail,
        "binds_per_s": round(b_rate), "bind_failures": b_fail,
    }))


if __name__ == "__main__":
    main()
