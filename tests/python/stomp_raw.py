"""A raw STOMP client for exact-frame tests: frames out as bytes, frames in parsed
(command, headers in order, body), heart-beat EOLs counted."""

from __future__ import annotations

import socket
import time


class Frame:
    def __init__(self, command: str, headers: list[tuple[str, str]], body: bytes):
        self.command = command
        self.headers = headers
        self.body = body

    def get(self, name: str, default=None):
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def __repr__(self) -> str:
        return f"Frame({self.command!r}, {self.headers!r}, {self.body!r})"


def encode(command: str, headers: dict | list | None = None, body: bytes | str = b"") -> bytes:
    if isinstance(body, str):
        body = body.encode()
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    head = command + "\n" + "".join(f"{k}:{v}\n" for k, v in items) + "\n"
    return head.encode() + body + b"\x00"


class RawStomp:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.heartbeats = 0
        self.closed = False

    def send(self, command: str, headers: dict | list | None = None,
             body: bytes | str = b"") -> None:
        self.sock.sendall(encode(command, headers, body))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    def _parse(self) -> Frame | None:
        while self.buf[:1] in (b"\n", b"\r") and self.buf:
            if self.buf.startswith(b"\r\n"):
                self.buf = self.buf[2:]
            elif self.buf.startswith(b"\n"):
                self.buf = self.buf[1:]
            else:
                break
            self.heartbeats += 1
        end = self.buf.find(b"\n\n")
        if end < 0:
            return None
        head = self.buf[:end].decode()
        lines = head.split("\n")
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k, v))
        start = end + 2
        length = next((int(v) for k, v in headers if k == "content-length"), None)
        if length is not None:
            if len(self.buf) < start + length + 1:
                return None
            body = self.buf[start:start + length]
            rest = start + length + 1
        else:
            nul = self.buf.find(b"\x00", start)
            if nul < 0:
                return None
            body = self.buf[start:nul]
            rest = nul + 1
        self.buf = self.buf[rest:]
        return Frame(lines[0], headers, body)

    def recv(self, timeout: float = 5.0) -> Frame | None:
        deadline = time.monotonic() + timeout
        while True:
            f = self._parse()
            if f is not None:
                return f
            if self.closed or not self._fill(deadline):
                return None

    def expect(self, command: str, timeout: float = 5.0) -> Frame:
        f = self.recv(timeout)
        assert f is not None, f"expected {command}, got nothing (closed={self.closed})"
        assert f.command == command, f"expected {command}, got {f!r}"
        return f

    def connect(self, version: str = "1.2", login: str = "guest", passcode: str = "guest",
                host: str = "/", **extra) -> Frame:
        headers = {"accept-version": version, "host": host}
        if login is not None:
            headers.update(login=login, passcode=passcode)
        headers.update({k.replace("_", "-"): v for k, v in extra.items()})
        self.send("CONNECT", headers)
        return self.expect("CONNECTED")

    def wait_closed(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.closed:
            if self._parse() is not None:
                continue
            if not self._fill(deadline) and not self.closed:
                return False
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
