"""Small shared helpers for the black-box tests."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterator

import pika
import pika.exceptions
import pytest


@contextlib.contextmanager
def channel_closed(code: int, text_prefix: str | None = None) -> Iterator[dict]:
    """Expect the block to raise ChannelClosedByBroker with ``code`` and a
    reply text starting with ``text_prefix``. Yields a dict that gets the
    exception under key ``exc``."""
    info: dict = {}
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        yield info
    exc = excinfo.value
    info["exc"] = exc
    assert exc.reply_code == code, f"expected channel close {code}, got {exc!r}"
    if text_prefix is not None:
        assert exc.reply_text.startswith(text_prefix), (
            f"reply text {exc.reply_text!r} does not start with {text_prefix!r}")


@contextlib.contextmanager
def connection_closed(code: int, text_prefix: str | None = None) -> Iterator[dict]:
    """Like channel_closed, for ConnectionClosedByBroker."""
    info: dict = {}
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as excinfo:
        yield info
    exc = excinfo.value
    info["exc"] = exc
    assert exc.reply_code == code, f"expected connection close {code}, got {exc!r}"
    if text_prefix is not None:
        assert exc.reply_text.startswith(text_prefix), (
            f"reply text {exc.reply_text!r} does not start with {text_prefix!r}")


def wait_until(predicate: Callable[[], object], timeout: float = 5.0,
               interval: float = 0.05, message: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def queue_exists(conn: pika.BlockingConnection, name: str) -> bool:
    """Passive declare: 404 means gone; 405 (exclusive to another connection)
    means it exists."""
    ch = conn.channel()
    try:
        ch.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code in (404, 405), exc
        return exc.reply_code == 405
    ch.close()
    return True


def exchange_exists(conn: pika.BlockingConnection, name: str) -> bool:
    ch = conn.channel()
    try:
        ch.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return False
    ch.close()
    return True


def message_count(conn: pika.BlockingConnection, name: str) -> int:
    ch = conn.channel()
    count = ch.queue_declare(name, passive=True).method.message_count
    ch.close()
    return count


def wait_message_count(conn: pika.BlockingConnection, name: str, expected: int,
                       timeout: float = 5.0) -> None:
    """Routing is asynchronous in some brokers; wait until ``expected`` messages are ready."""
    last = [None]

    def check():
        last[0] = message_count(conn, name)
        return last[0] == expected

    try:
        wait_until(check, timeout=timeout, message=f"{expected} messages in {name}")
    except AssertionError:
        raise AssertionError(f"queue {name} has {last[0]} messages, expected {expected}") \
            from None


def drain(channel, queue: str, limit: int = 10_000) -> list[tuple]:
    """basic.get with auto-ack until get-empty; returns (method, props, body) tuples."""
    out = []
    for _ in range(limit):
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append((method, props, body))
    return out


def collect_deliveries(connection: pika.BlockingConnection, deliveries: list,
                       expected: int, timeout: float = 5.0) -> None:
    """Pump the connection until ``deliveries`` has ``expected`` entries."""
    deadline = time.monotonic() + timeout
    while len(deliveries) < expected and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert len(deliveries) >= expected, (
        f"got {len(deliveries)} deliveries, expected {expected}")


def settle(connection: pika.BlockingConnection, seconds: float = 0.3) -> None:
    """Pump I/O for a while (to observe that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)


class MgmtApi:
    """A tiny management HTTP API client: `call` returns (status, decoded JSON or None)."""

    def __init__(self, port: int, user: str = "guest", password: str = "guest",
                 host: str = "127.0.0.1"):
        self.base = f"http://{host}:{port}/api"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    @classmethod
    def from_url(cls, url: str) -> "MgmtApi":
        """From a base URL with credentials, e.g. http://guest:guest@127.0.0.1:15673."""
        parsed = urllib.parse.urlparse(url)
        return cls(parsed.port or 15672, urllib.parse.unquote(parsed.username or "guest"),
                   urllib.parse.unquote(parsed.password or "guest"),
                   parsed.hostname or "127.0.0.1")

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                text = resp.read().decode()
                return resp.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            return e.code, (json.loads(text) if text else None)

    def get(self, path: str):
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
