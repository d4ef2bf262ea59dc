"""A tiny, dependency-free AMQP 0-9-1 frame codec and blocking client for
raw-protocol tests.

It is deliberately minimal and explicit: tests use it to send things that a
well-behaved client library refuses to send (bad frame ends, heartbeats on a
non-zero channel, methods on unopened channels, ``immediate=True``,
duplicate consumer tags, ...) and to observe exactly what the broker answers.

Only the methods the tests need are described in ``METHODS``; unknown methods
received from the broker are still returned (as ``Method`` with raw args).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE

# (class_id, method_id) -> (name, [(field_name, type), ...])
# types: octet short long longlong shortstr longstr bit table timestamp
METHODS: dict[tuple[int, int], tuple[str, list[tuple[str, str]]]] = {
    (10, 10): ("connection.start", [("version_major", "octet"), ("version_minor", "octet"),
                                    ("server_properties", "table"), ("mechanisms", "longstr"),
                                    ("locales", "longstr")]),
    (10, 11): ("connection.start-ok", [("client_properties", "table"), ("mechanism", "shortstr"),
                                       ("response", "longstr"), ("locale", "shortstr")]),
    (10, 20): ("connection.secure", [("challenge", "longstr")]),
    (10, 21): ("connection.secure-ok", [("response", "longstr")]),
    (10, 30): ("connection.tune", [("channel_max", "short"), ("frame_max", "long"),
                                   ("heartbeat", "short")]),
    (10, 31): ("connection.tune-ok", [("channel_max", "short"), ("frame_max", "long"),
                                      ("heartbeat", "short")]),
    (10, 40): ("connection.open", [("virtual_host", "shortstr"), ("capabilities", "shortstr"),
                                   ("insist", "bit")]),
    (10, 41): ("connection.open-ok", [("known_hosts", "shortstr")]),
    (10, 50): ("connection.close", [("reply_code", "short"), ("reply_text", "shortstr"),
                                    ("class_id", "short"), ("method_id", "short")]),
    (10, 51): ("connection.close-ok", []),
    (10, 60): ("connection.blocked", [("reason", "shortstr")]),
    (10, 61): ("connection.unblocked", []),
    (20, 10): ("channel.open", [("out_of_band", "shortstr")]),
    (20, 11): ("channel.open-ok", [("channel_id", "longstr")]),
    (20, 20): ("channel.flow", [("active", "bit")]),
    (20, 21): ("channel.flow-ok", [("active", "bit")]),
    (20, 40): ("channel.close", [("reply_code", "short"), ("reply_text", "shortstr"),
                                 ("class_id", "short"), ("method_id", "short")]),
    (20, 41): ("channel.close-ok", []),
    (40, 10): ("exchange.declare", [("reserved_1", "short"), ("exchange", "shortstr"),
                                    ("type", "shortstr"), ("passive", "bit"), ("durable", "bit"),
                                    ("auto_delete", "bit"), ("internal", "bit"),
                                    ("no_wait", "bit"), ("arguments", "table")]),
    (40, 11): ("exchange.declare-ok", []),
    (40, 30): ("exchange.bind", [("reserved_1", "short"), ("destination", "shortstr"),
                                 ("source", "shortstr"), ("routing_key", "shortstr"),
                                 ("no_wait", "bit"), ("arguments", "table")]),
    (40, 31): ("exchange.bind-ok", []),
    (40, 40): ("exchange.unbind", [("reserved_1", "short"), ("destination", "shortstr"),
                                   ("source", "shortstr"), ("routing_key", "shortstr"),
                                   ("no_wait", "bit"), ("arguments", "table")]),
    (40, 51): ("exchange.unbind-ok", []),
    (40, 20): ("exchange.delete", [("reserved_1", "short"), ("exchange", "shortstr"),
                                   ("if_unused", "bit"), ("no_wait", "bit")]),
    (40, 21): ("exchange.delete-ok", []),
    (50, 10): ("queue.declare", [("reserved_1", "short"), ("queue", "shortstr"),
                                 ("passive", "bit"), ("durable", "bit"), ("exclusive", "bit"),
                                 ("auto_delete", "bit"), ("no_wait", "bit"),
                                 ("arguments", "table")]),
    (50, 11): ("queue.declare-ok", [("queue", "shortstr"), ("message_count", "long"),
                                    ("consumer_count", "long")]),
    (50, 20): ("queue.bind", [("reserved_1", "short"), ("queue", "shortstr"),
                              ("exchange", "shortstr"), ("routing_key", "shortstr"),
                              ("no_wait", "bit"), ("arguments", "table")]),
    (50, 21): ("queue.bind-ok", []),
    (50, 50): ("queue.unbind", [("reserved_1", "short"), ("queue", "shortstr"),
                                ("exchange", "shortstr"), ("routing_key", "shortstr"),
                                ("arguments", "table")]),
    (50, 51): ("queue.unbind-ok", []),
    (50, 30): ("queue.purge", [("reserved_1", "short"), ("queue", "shortstr"),
                               ("no_wait", "bit")]),
    (50, 31): ("queue.purge-ok", [("message_count", "long")]),
    (50, 40): ("queue.delete", [("reserved_1", "short"), ("queue", "shortstr"),
                                ("if_unused", "bit"), ("if_empty", "bit"), ("no_wait", "bit")]),
    (50, 41): ("queue.delete-ok", [("message_count", "long")]),
    (60, 10): ("basic.qos", [("prefetch_size", "long"), ("prefetch_count", "short"),
                             ("global", "bit")]),
    (60, 11): ("basic.qos-ok", []),
    (60, 20): ("basic.consume", [("reserved_1", "short"), ("queue", "shortstr"),
                                 ("consumer_tag", "shortstr"), ("no_local", "bit"),
                                 ("no_ack", "bit"), ("exclusive", "bit"), ("no_wait", "bit"),
                                 ("arguments", "table")]),
    (60, 21): ("basic.consume-ok", [("consumer_tag", "shortstr")]),
    (60, 30): ("basic.cancel", [("consumer_tag", "shortstr"), ("no_wait", "bit")]),
    (60, 31): ("basic.cancel-ok", [("consumer_tag", "shortstr")]),
    (60, 40): ("basic.publish", [("reserved_1", "short"), ("exchange", "shortstr"),
                                 ("routing_key", "shortstr"), ("mandatory", "bit"),
                                 ("immediate", "bit")]),
    (60, 50): ("basic.return", [("reply_code", "short"), ("reply_text", "shortstr"),
                                ("exchange", "shortstr"), ("routing_key", "shortstr")]),
    (60, 60): ("basic.deliver", [("consumer_tag", "shortstr"), ("delivery_tag", "longlong"),
                                 ("redelivered", "bit"), ("exchange", "shortstr"),
                                 ("routing_key", "shortstr")]),
    (60, 70): ("basic.get", [("reserved_1", "short"), ("queue", "shortstr"),
                             ("no_ack", "bit")]),
    (60, 71): ("basic.get-ok", [("delivery_tag", "longlong"), ("redelivered", "bit"),
                                ("exchange", "shortstr"), ("routing_key", "shortstr"),
                                ("message_count", "long")]),
    (60, 72): ("basic.get-empty", [("reserved_1", "shortstr")]),
    (60, 80): ("basic.ack", [("delivery_tag", "longlong"), ("multiple", "bit")]),
    (60, 90): ("basic.reject", [("delivery_tag", "longlong"), ("requeue", "bit")]),
    (60, 100): ("basic.recover-async", [("requeue", "bit")]),
    (60, 110): ("basic.recover", [("requeue", "bit")]),
    (60, 111): ("basic.recover-ok", []),
    (60, 120): ("basic.nack", [("delivery_tag", "longlong"), ("multiple", "bit"),
                               ("requeue", "bit")]),
    (90, 10): ("tx.select", []),
    (90, 11): ("tx.select-ok", []),
    (90, 20): ("tx.commit", []),
    (90, 21): ("tx.commit-ok", []),
    (90, 30): ("tx.rollback", []),
    (90, 31): ("tx.rollback-ok", []),
    (85, 10): ("confirm.select", [("no_wait", "bit")]),
    (85, 11): ("confirm.select-ok", []),
}
METHOD_IDS = {name: key for key, (name, _) in METHODS.items()}

# Methods that carry content (header + body frames follow the method frame).
CONTENT_METHODS = {"basic.publish", "basic.return", "basic.deliver", "basic.get-ok"}


class ProtocolError(Exception):
    """The peer sent something this helper does not understand."""


class PeerClosed(Exception):
    """The TCP connection was closed by the peer."""


# --------------------------------------------------------------------------
# Primitive encoders
# --------------------------------------------------------------------------

def enc_shortstr(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 255:
        raise ValueError("shortstr too long")
    return struct.pack(">B", len(raw)) + raw


def enc_longstr(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(raw)) + raw


def enc_field_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"t" + struct.pack(">B", 1 if value else 0)
    if isinstance(value, int):
        if -(2 ** 31) <= value < 2 ** 31:
            return b"I" + struct.pack(">i", value)
        return b"l" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        scale = -exponent if exponent < 0 else 0
        unscaled = int(value.scaleb(scale))
        return b"D" + struct.pack(">Bi", scale, unscaled)
    if isinstance(value, (str, bytes)):
        return b"S" + enc_longstr(value)
    if isinstance(value, dict):
        return b"F" + enc_table(value)
    if isinstance(value, (list, tuple)):
        body = b"".join(enc_field_value(v) for v in value)
        return b"A" + struct.pack(">I", len(body)) + body
    if value is None:
        return b"V"
    raise TypeError(f"cannot encode {value!r} as a field value")


def enc_table(table: dict[str, Any] | None) -> bytes:
    body = b"".join(enc_shortstr(k) + enc_field_value(v) for k, v in (table or {}).items())
    return struct.pack(">I", len(body)) + body


# --------------------------------------------------------------------------
# Primitive decoders (operate on a bytes buffer and an offset)
# --------------------------------------------------------------------------

class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("truncated payload")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def octet(self) -> int:
        return self.unpack(">B")[0]

    def short(self) -> int:
        return self.unpack(">H")[0]

    def long(self) -> int:
        return self.unpack(">I")[0]

    def longlong(self) -> int:
        return self.unpack(">Q")[0]

    def shortstr(self) -> str:
        return self.take(self.octet()).decode("utf-8", "replace")

    def longstr(self) -> bytes:
        return self.take(self.long())

    def table(self) -> dict[str, Any]:
        sub = Reader(self.longstr())
        result = {}
        while sub.pos < len(sub.data):
            key = sub.shortstr()
            result[key] = sub.field_value()
        return result

    def field_value(self) -> Any:
        kind = self.take(1)
        if kind == b"t":
            return bool(self.octet())
        if kind == b"b":
            return self.unpack(">b")[0]
        if kind == b"B":
            return self.octet()
        if kind == b"s":
            return self.unpack(">h")[0]
        if kind == b"u":
            return self.short()
        if kind == b"I":
            return self.unpack(">i")[0]
        if kind == b"i":
            return self.long()
        if kind == b"l":
            return self.unpack(">q")[0]
        if kind == b"f":
            return self.unpack(">f")[0]
        if kind == b"d":
            return self.unpack(">d")[0]
        if kind == b"D":
            scale = self.octet()
            unscaled = self.unpack(">i")[0]
            return Decimal(unscaled).scaleb(-scale)
        if kind == b"S":
            return self.longstr().decode("utf-8", "replace")
        if kind == b"x":
            return self.longstr()
        if kind == b"T":
            return self.longlong()
        if kind == b"F":
            return self.table()
        if kind == b"A":
            sub = Reader(self.longstr())
            items = []
            while sub.pos < len(sub.data):
                items.append(sub.field_value())
            return items
        if kind == b"V":
            return None
        raise ProtocolError(f"unknown field type {kind!r}")


# --------------------------------------------------------------------------
# Methods and frames
# --------------------------------------------------------------------------

@dataclass
class Method:
    name: str
    args: dict[str, Any]
    channel: int = 0
    class_id: int = 0
    method_id: int = 0
    # for content-bearing methods received from the broker
    body: bytes | None = None
    properties: bytes | None = None

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


def encode_method_payload(name: str, **args: Any) -> bytes:
    class_id, method_id = METHOD_IDS[name]
    _, fields = METHODS[(class_id, method_id)]
    out = bytearray(struct.pack(">HH", class_id, method_id))
    bits: list[bool] = []

    def flush_bits():
        if bits:
            value = 0
            for i, bit in enumerate(bits):
                if bit:
                    value |= 1 << i
            out.extend(struct.pack(">B", value))
            bits.clear()

    for fname, ftype in fields:
        value = args.pop(fname, None)
        if ftype == "bit":
            if len(bits) == 8:
                flush_bits()
            bits.append(bool(value))
            continue
        flush_bits()
        if ftype == "octet":
            out.extend(struct.pack(">B", value or 0))
        elif ftype == "short":
            out.extend(struct.pack(">H", value or 0))
        elif ftype == "long":
            out.extend(struct.pack(">I", value or 0))
        elif ftype in ("longlong", "timestamp"):
            out.extend(struct.pack(">Q", value or 0))
        elif ftype == "shortstr":
            out.extend(enc_shortstr(value or ""))
        elif ftype == "longstr":
            out.extend(enc_longstr(value or b""))
        elif ftype == "table":
            out.extend(enc_table(value))
        else:  # pragma: no cover - spec table typo
            raise ValueError(ftype)
    flush_bits()
    if args:
        raise TypeError(f"unknown arguments for {name}: {sorted(args)}")
    return bytes(out)


def decode_method_payload(payload: bytes, channel: int = 0) -> Method:
    reader = Reader(payload)
    class_id, method_id = reader.unpack(">HH")
    spec = METHODS.get((class_id, method_id))
    if spec is None:
        return Method(f"unknown.{class_id}.{method_id}", {"raw": payload[4:]}, channel,
                      class_id, method_id)
    name, fields = spec
    args: dict[str, Any] = {}
    bit_byte = 0
    bit_index = 8
    for fname, ftype in fields:
        if ftype == "bit":
            if bit_index == 8:
                bit_byte = reader.octet()
                bit_index = 0
            args[fname] = bool(bit_byte & (1 << bit_index))
            bit_index += 1
            continue
        bit_index = 8
        if ftype == "octet":
            args[fname] = reader.octet()
        elif ftype == "short":
            args[fname] = reader.short()
        elif ftype == "long":
            args[fname] = reader.long()
        elif ftype in ("longlong", "timestamp"):
            args[fname] = reader.longlong()
        elif ftype == "shortstr":
            args[fname] = reader.shortstr()
        elif ftype == "longstr":
            args[fname] = reader.longstr()
        elif ftype == "table":
            args[fname] = reader.table()
    return Method(name, args, channel, class_id, method_id)


def frame(frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def method_frame(channel: int, name: str, **args: Any) -> bytes:
    return frame(FRAME_METHOD, channel, encode_method_payload(name, **args))


def heartbeat_frame(channel: int = 0) -> bytes:
    return frame(FRAME_HEARTBEAT, channel, b"")


def content_header_payload(body_size: int, delivery_mode: int | None = None,
                           headers: dict[str, Any] | None = None,
                           content_type: str | None = None, class_id: int = 60) -> bytes:
    flags = 0
    props = bytearray()
    # property order for basic: content-type(15), content-encoding(14), headers(13),
    # delivery-mode(12), ...
    if content_type is not None:
        flags |= 1 << 15
        props.extend(enc_shortstr(content_type))
    if headers is not None:
        flags |= 1 << 13
        props.extend(enc_table(headers))
    if delivery_mode is not None:
        flags |= 1 << 12
        props.extend(struct.pack(">B", delivery_mode))
    return struct.pack(">HHQH", class_id, 0, body_size, flags) + bytes(props)


def plain_response(user: str, password: str) -> bytes:
    return b"\x00" + user.encode() + b"\x00" + password.encode()


# --------------------------------------------------------------------------
# Blocking raw client
# --------------------------------------------------------------------------

@dataclass
class Frame:
    type: int
    channel: int
    payload: bytes


@dataclass
class RawConnection:
    host: str
    port: int
    timeout: float = 10.0
    sock: socket.socket = field(init=False)
    buffer: bytearray = field(init=False, default_factory=bytearray)
    tune: Method | None = field(init=False, default=None)
    start: Method | None = field(init=False, default=None)
    frame_max: int = field(init=False, default=131072)

    def __post_init__(self):
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- low level ---------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for data from broker")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout as exc:
                raise TimeoutError("timed out waiting for data from broker") from exc
            except ConnectionResetError as exc:
                raise PeerClosed("connection reset by peer") from exc
            if not chunk:
                raise PeerClosed(f"peer closed the connection (buffered: {bytes(self.buffer)!r})")
            self.buffer.extend(chunk)

    def recv_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._fill(n, deadline)
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def read_until_closed(self, timeout: float) -> bytes:
        """Read everything until the peer closes; raise TimeoutError if it doesn't."""
        deadline = time.monotonic() + timeout
        data = bytearray(self.buffer)
        self.buffer.clear()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"peer did not close the connection; got {bytes(data)!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout as exc:
                raise TimeoutError(
                    f"peer did not close the connection; got {bytes(data)!r}") from exc
            except ConnectionResetError:
                return bytes(data)
            if not chunk:
                return bytes(data)
            data.extend(chunk)

    def read_frame(self, timeout: float | None = None) -> Frame:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._fill(7, deadline)
        ftype, channel, size = struct.unpack(">BHI", self.buffer[:7])
        self._fill(7 + size + 1, deadline)
        payload = bytes(self.buffer[7:7 + size])
        end = self.buffer[7 + size]
        del self.buffer[:7 + size + 1]
        if end != FRAME_END:
            raise ProtocolError(f"bad frame end byte {end:#x} from broker")
        return Frame(ftype, channel, payload)

    def read_method(self, timeout: float | None = None, skip_heartbeats: bool = True) -> Method:
        """Read the next method (with its content if it carries any)."""
        while True:
            fr = self.read_frame(timeout)
            if fr.type == FRAME_HEARTBEAT and skip_heartbeats:
                continue
            if fr.type != FRAME_METHOD:
                raise ProtocolError(f"expected a method frame, got type {fr.type}")
            method = decode_method_payload(fr.payload, fr.channel)
            if method.name in CONTENT_METHODS:
                header = self.read_frame(timeout)
                while header.type == FRAME_HEARTBEAT:
                    header = self.read_frame(timeout)
                if header.type != FRAME_HEADER:
                    raise ProtocolError(f"expected content header, got frame type {header.type}")
                _cls, _weight, size = struct.unpack(">HHQ", header.payload[:12])
                method.properties = header.payload[12:]
                body = bytearray()
                while len(body) < size:
                    part = self.read_frame(timeout)
                    if part.type == FRAME_HEARTBEAT:
                        continue
                    if part.type != FRAME_BODY:
                        raise ProtocolError(f"expected body frame, got type {part.type}")
                    body.extend(part.payload)
                method.body = bytes(body)
            return method

    def expect(self, name: str, timeout: float | None = None) -> Method:
        method = self.read_method(timeout)
        if method.name != name:
            raise AssertionError(f"expected {name}, got {method.name} {method.args}")
        return method

    def send_method(self, channel: int, name: str, **args: Any) -> None:
        self.send(method_frame(channel, name, **args))

    def rpc(self, channel: int, name: str, reply: str, **args: Any) -> Method:
        self.send_method(channel, name, **args)
        return self.expect(reply)

    # -- handshake ---------------------------------------------------------
    def handshake(self, user: str = "guest", password: str = "guest", vhost: str = "/",
                  heartbeat: int = 0, channel_max: int | None = None,
                  frame_max: int | None = None, capabilities: dict | None = None) -> Method:
        """Run the full handshake up to connection.open-ok; returns the Tune method."""
        self.send(PROTOCOL_HEADER)
        self.start = self.expect("connection.start")
        caps = {
            "publisher_confirms": True,
            "exchange_exchange_bindings": True,
            "basic.nack": True,
            "consumer_cancel_notify": True,
            "connection.blocked": True,
            "authentication_failure_close": True,
        }
        if capabilities:
            caps.update(capabilities)
        self.send_method(0, "connection.start-ok",
                         client_properties={"product": "pier-raw-test", "capabilities": caps},
                         mechanism="PLAIN", response=plain_response(user, password),
                         locale="en_US")
        self.tune = self.expect("connection.tune")
        cm = self.tune["channel_max"] if channel_max is None else channel_max
        fm = self.tune["frame_max"] if frame_max is None else frame_max
        self.frame_max = fm
        self.send_method(0, "connection.tune-ok", channel_max=cm, frame_max=fm,
                         heartbeat=heartbeat)
        self.send_method(0, "connection.open", virtual_host=vhost)
        self.expect("connection.open-ok")
        return self.tune

    def open_channel(self, channel: int = 1) -> None:
        self.rpc(channel, "channel.open", "channel.open-ok")

    def publish(self, channel: int, exchange: str, routing_key: str, body: bytes = b"",
                mandatory: bool = False, immediate: bool = False, **props: Any) -> None:
        data = bytearray(method_frame(channel, "basic.publish", exchange=exchange,
                                      routing_key=routing_key, mandatory=mandatory,
                                      immediate=immediate))
        data.extend(frame(FRAME_HEADER, channel, content_header_payload(len(body), **props)))
        chunk = max(self.frame_max - 8, 1) if self.frame_max else len(body) or 1
        for i in range(0, len(body), chunk):
            data.extend(frame(FRAME_BODY, channel, body[i:i + chunk]))
        self.send(bytes(data))

    def expect_connection_close(self, timeout: float | None = None) -> Method:
        """Read methods (ignoring others) until connection.close; answer close-ok."""
        while True:
            method = self.read_method(timeout)
            if method.name == "connection.close":
                try:
                    self.send_method(0, "connection.close-ok")
                except OSError:
                    pass
                return method

    def methods_until_closed(self, timeout: float) -> list[Method]:
        """Read methods until the peer closes the socket (answering a
        connection.close with close-ok); TimeoutError if it never does."""
        deadline = time.monotonic() + timeout
        methods: list[Method] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"peer did not close the connection; got {methods}")
            try:
                method = self.read_method(timeout=remaining)
            except PeerClosed:
                return methods
            except TimeoutError as exc:
                raise TimeoutError(f"peer did not close the connection; got {methods}") \
                    from exc
            methods.append(method)
            if method.name == "connection.close":
                try:
                    self.send_method(0, "connection.close-ok")
                except OSError:
                    return methods

    def close_connection(self) -> None:
        self.send_method(0, "connection.close", reply_code=200, reply_text="bye")
        self.expect("connection.close-ok")
        self.close()


class Flooder(threading.Thread):
    """Publishes `body` to `queue` on channel 1 over its own socket (a dup of `sock`) as fast
    as the broker reads it; `delivery_mode=2` makes the messages persistent."""

    def __init__(self, sock: socket.socket, queue: str, body: bytes, frame_max: int,
                 delivery_mode: int | None = None):
        super().__init__(daemon=True)
        self.sock = sock.dup()
        self.sock.settimeout(0.5)
        chunk = frame_max - 8
        data = bytearray(method_frame(1, "basic.publish", exchange="", routing_key=queue,
                                      mandatory=False, immediate=False))
        data += frame(FRAME_HEADER, 1, content_header_payload(len(body), delivery_mode=delivery_mode))
        for i in range(0, len(body), chunk):
            data += frame(FRAME_BODY, 1, body[i:i + chunk])
        self.message = bytes(data)
        self.stop = threading.Event()
        self.sent = 0
        self.error: Exception | None = None

    def run(self) -> None:
        # Stops only between messages, so the stream stays well-formed for later methods.
        try:
            while not self.stop.is_set():
                view = memoryview(self.message)
                while view:
                    try:
                        n = self.sock.send(view)
                    except socket.timeout:
                        continue
                    view = view[n:]
                self.sent += 1
        except OSError as e:  # noqa: PERF203
            self.error = e
        finally:
            self.sock.close()
