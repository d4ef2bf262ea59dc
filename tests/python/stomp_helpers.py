"""Fixtures and helpers shared by the STOMP tests (test_stomp.py, test_stomp_sessions.py)."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import uuid

import pika
import pytest

from stomp_raw import RawStomp


@pytest.fixture
def port(broker):
    if not broker.stomp_port:
        pytest.skip("no STOMP port")
    return broker.stomp_port


@pytest.fixture
def raw(port):
    conns = []

    def make(connect: bool = True, **kw) -> RawStomp:
        c = RawStomp(port)
        conns.append(c)
        if connect:
            c.connect(**kw)
        return c

    yield make
    for c in conns:
        c.close()


@pytest.fixture
def qname(broker):
    """A unique queue name, deleted (with pika) after the test."""
    names = []

    def make(prefix: str = "q") -> str:
        n = f"pier-test.stomp.{prefix}.{uuid.uuid4().hex[:10]}"
        names.append(n)
        return n

    yield make
    if names:
        # Deleted through the STOMP connection's node (their home in cluster mode).
        saved, broker.ports = broker.ports, []
        try:
            with broker.connect() as conn:
                ch = conn.channel()
                for n in names:
                    ch.queue_delete(n)
        finally:
            broker.ports = saved


def amqp_get(broker, queue: str, timeout: float = 5.0):
    with broker.connect() as conn:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m, props, body = ch.basic_get(queue, auto_ack=True)
            if m is not None:
                return m, props, body
            time.sleep(0.05)
    return None, None, None


def queue_depth(broker, queue: str) -> int:
    with broker.connect() as conn:
        return conn.channel().queue_declare(queue, passive=True).method.message_count



def subscribe(c, dest, sid="1", **headers):
    h = {"destination": dest, "id": sid, "receipt": "sub"}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    c.send("SUBSCRIBE", h)
    c.expect("RECEIPT")


def publish_n(broker, q, n):
    with broker.connect() as conn:
        # In cluster mode this connection may be on another node than the STOMP one, which
        # applies the subscription's queue declaration a moment later: publish once the
        # queue is known here (a message published before would be unroutable).
        deadline = time.monotonic() + 10
        while True:
            ch = conn.channel()
            try:
                ch.queue_declare(q, passive=True)
                break
            except pika.exceptions.ChannelClosedByBroker:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for i in range(n):
            ch.basic_publish("", q, f"m{i}".encode())


def rabbit_subscription_queue(name: str, sid: str) -> str:
    def s(x: str) -> bytes:
        b = x.encode()
        return bytes([107]) + struct.pack(">H", len(b)) + b
    term = bytes([131, 104, 2]) + s(name) + s(sid)
    digest = base64.urlsafe_b64encode(hashlib.md5(term).digest()).decode().rstrip("=")
    return "stomp-subscription-" + digest



def assert_still_serving(raw):
    c = raw()
    c.send("SEND", {"destination": "/exchange/amq.fanout", "receipt": "alive"}, "x")
    c.expect("RECEIPT")

