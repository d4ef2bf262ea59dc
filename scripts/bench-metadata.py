#!/usr/bin/env python3
"""Metadata throughput of a broker or cluster over the management HTTP API: durable queue
declares per second, then bindings per second, with C concurrent clients spread over the
nodes (client i talks to node i mod N). Works against Pier and RabbitMQ alike.

    scripts/bench-metadata.py --nodes http://127.0.0.11:6673,http://127.0.0.12:6673,... \
        [--count 3000] [--concurrency 32] [--user guest --password guest]

Each operation is one HTTP request on a kept-alive connection; a change counts when the
broker has answered it (for a Pier cluster: committed by a majority and applied on the node
asked). Everything happens in a fresh vhost `bench-metadata`, deleted at the end.
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


def run(nodes: list[str], user: str, password: str, count: int, concurrency: int,
        make_request) -> tuple[float, int]:
    """Runs `count` requests over `concurrency` threads; returns (ops/s, failures)."""
    failures = [0]
    lock = threading.Lock()
    next_index = [0]

    def worker(k: int) -> None:
        c = Client(nodes[k % len(nodes)], user, password)
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
    q_rate, q_fail = run(
        nodes, args.user, args.password, args.count, args.concurrency,
        lambda i: ("PUT", f"/api/queues/{v}/bench.q.{i}", {"durable": True}))
    b_rate, b_fail = run(
        nodes, args.user, args.password, args.count, args.concurrency,
        lambda i: ("POST", f"/api/bindings/{v}/e/bench.x/q/bench.q.{i}",
                   {"routing_key": f"k{i}"}))
    admin.call("DELETE", f"/api/vhosts/{v}")
    print(json.dumps({
        "label": args.label, "nodes": len(nodes), "count": args.count,
        "concurrency": args.concurrency,
        "queue_declares_per_s": round(q_rate), "queue_failures": q_fail,
        "binds_per_s": round(b_rate), "bind_failures": b_fail,
    }))


if __name__ == "__main__":
    main()
