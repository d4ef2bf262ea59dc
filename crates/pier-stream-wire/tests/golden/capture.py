#!/usr/bin/env python3
"""Captures real stream protocol frames from a RabbitMQ broker for the golden tests.

    python3 capture.py [host] [stream-port] [amqp-port] > rabbitmq-3.10.8.txt

A minimal hand-written client (raw sockets, no stream client library) runs a session that
touches most commands and records every frame in both directions, one per line:

    C|S  label  hex-of-the-whole-frame (size prefix included)

Then it publishes through AMQP 0-9-1 (pika) with every basic property set and records the
Deliver the stream protocol hands out for it, so the tests can check how the broker
converted the 0-9-1 message to AMQP 1.0. The stream it creates is deleted at the end.
"""
import socket
import struct
import sys
import time

HOST = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 5553
AMQP_PORT = int(sys.argv[3]) if len(sys.argv) > 3 else 5673
STREAM = "pier-golden-stream"
OUT = []


def s16(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def smap(d):
    out = struct.pack(">i", len(d))
    for k, v in d:
        out += s16(k) + s16(v)
    return out


class Conn:
    def __init__(self):
        self.sock = socket.create_connection((HOST, PORT), timeout=5)
        self.buf = b""
        self.corr = 0

    def send(self, label, body):
        frame = struct.pack(">I", len(body)) + body
        OUT.append(("C", label, frame.hex()))
        self.sock.sendall(frame)

    def req(self, label, key, body=b"", version=1):
        self.corr += 1
        self.send(label, struct.pack(">HHI", key, version, self.corr) + body)

    def recv(self, label):
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    frame, self.buf = self.buf[: 4 + n], self.buf[4 + n :]
                    OUT.append(("S", label, frame.hex()))
                    return frame
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(label)
            self.buf += data

    def recv_key(self, label, key):
        """Receives until a frame with `key` arrives (heartbeats etc. are recorded too)."""
        while True:
            f = self.recv(label)
            (k,) = struct.unpack(">H", f[4:6])
            if k == key:
                return f
            d, _, h = OUT[-1]
            OUT[-1] = (d, "unsolicited-%04x" % k, h)


def amqp_data_message(body, with_props=False):
    """AMQP 1.0 message: optional properties section, one data section."""
    out = b""
    if with_props:
        # properties: message-id "m-1", content-type "text/plain"
        fields = b"\xa1\x03m-1" + b"\x40" * 5 + b"\xa3\x0atext/plain"
        out += b"\x00\x53\x73\xc0" + bytes([len(fields) + 1, 7]) + fields
    out += b"\x00\x53\x75\xa0" + bytes([len(body)]) + body
    return out


def open_conn():
    c = Conn()
    c.req("peer-properties", 0x11, smap([("product", "pier-golden"), ("version", "0.1.0")]))
    c.recv("peer-properties-response")
    c.req("sasl-handshake", 0x12)
    c.recv("sasl-handshake-response")
    c.req("sasl-authenticate", 0x13, s16("PLAIN") + struct.pack(">i", 12) + b"\0guest\0guest")
    c.recv("sasl-authenticate-response")
    tune = c.recv("tune")
    c.send("tune", tune[4:])  # echo the server's values
    c.req("open", 0x15, s16("/"))
    c.recv("open-response")
    return c


def main():
    c = open_conn()
    c.req("delete-stream-if-left-over", 0x0E, s16(STREAM))
    c.recv("delete-response-leftover")
    c.req("create", 0x0D, s16(STREAM) + smap([("max-length-bytes", "10000000")]))
    c.recv("create-response")
    c.req("create-again", 0x0D, s16(STREAM) + smap([]))
    c.recv("create-response-already-exists")
    c.req("declare-publisher", 0x01, b"\x01" + s16("golden-pub") + s16(STREAM))
    c.recv("declare-publisher-response")
    msgs = [amqp_data_message(b"hello"), amqp_data_message(b"world", True), amqp_data_message(b"!")]
    body = struct.pack(">HHB", 0x02, 1, 1) + struct.pack(">i", len(msgs))
    for i, m in enumerate(msgs):
        body += struct.pack(">Q", i + 1) + struct.pack(">I", len(m)) + m
    c.send("publish-v1", body)
    c.recv_key("publish-confirm", 0x03)
    # a sub-entry batch (uncompressed) of two records
    recs = [amqp_data_message(b"sub-1"), amqp_data_message(b"sub-2")]
    batch = b"".join(struct.pack(">I", len(r)) + r for r in recs)
    body = struct.pack(">HHB", 0x02, 1, 1) + struct.pack(">i", 1)
    body += struct.pack(">Q", 4) + bytes([0x80]) + struct.pack(">HII", 2, len(batch), len(batch)) + batch
    c.send("publish-v1-sub-batch", body)
    c.recv_key("publish-confirm-sub-batch", 0x03)
    c.send("publish-unknown-publisher", struct.pack(">HHB", 0x02, 1, 9) + struct.pack(">i", 1)
           + struct.pack(">Q", 1) + struct.pack(">I", 3) + b"abc")
    c.recv_key("publish-error", 0x04)
    c.req("query-publisher-sequence", 0x05, s16("golden-pub") + s16(STREAM))
    c.recv("query-publisher-sequence-response")
    c.req("metadata", 0x0F, struct.pack(">i", 2) + s16(STREAM) + s16("no-such-stream"))
    c.recv("metadata-response")
    c.req("subscribe-first", 0x07, b"\x01" + s16(STREAM) + struct.pack(">HH", 1, 10))
    c.recv("subscribe-response")
    c.recv_key("deliver", 0x08)
    c.recv_key("deliver-sub-batch", 0x08)
    c.req("subscribe-offset-with-properties", 0x07, b"\x02" + s16(STREAM)
          + struct.pack(">HQH", 4, 1, 1) + smap([("name", "golden-consumer")]))
    c.recv("subscribe-response-2")
    c.recv_key("deliver-from-offset", 0x08)
    c.req("subscribe-timestamp", 0x07, b"\x03" + s16(STREAM) + struct.pack(">HqH", 5, 0, 1))
    c.recv("subscribe-response-3")
    c.recv_key("deliver-from-timestamp", 0x08)
    c.req("subscribe-duplicate-id", 0x07, b"\x03" + s16(STREAM) + struct.pack(">HH", 3, 1))
    c.recv("subscribe-response-duplicate")
    c.send("credit", struct.pack(">HHBH", 0x09, 1, 1, 5))
    c.send("credit-unknown-subscription", struct.pack(">HHBH", 0x09, 1, 42, 5))
    c.recv_key("credit-response", 0x8009)
    c.send("store-offset", struct.pack(">HH", 0x0A, 1) + s16("golden-consumer") + s16(STREAM)
           + struct.pack(">Q", 2))
    time.sleep(0.5)
    c.req("query-offset", 0x0B, s16("golden-consumer") + s16(STREAM))
    c.recv_key("query-offset-response", 0x800B)
    c.req("query-offset-none", 0x0B, s16("nobody") + s16(STREAM))
    c.recv_key("query-offset-response-none", 0x800B)
    # Route and Partitions get no answer from 3.10.8 for a super stream that does not exist
    # (its handler crashes), so they are sent for a plain stream name's exchange: none.
    try:
        c.sock.settimeout(2)
        c.req("route", 0x18, s16("rk") + s16("no-such-super-stream"))
        c.recv_key("route-response", 0x8018)
        c.req("partitions", 0x19, s16("no-such-super-stream"))
        c.recv_key("partitions-response", 0x8019)
    except (TimeoutError, socket.timeout):
        print("# no route/partitions response", file=sys.stderr)
    finally:
        c.sock.settimeout(5)
    c.send("heartbeat", struct.pack(">HH", 0x17, 1))

    # AMQP 0-9-1 publish into the stream, then read it through the stream protocol.
    try:
        import pika

        params = pika.ConnectionParameters(HOST, AMQP_PORT, credentials=pika.PlainCredentials("guest", "guest"))
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        props = pika.BasicProperties(
            content_type="application/json", content_encoding="utf-8",
            headers={"x-custom": "xv", "plain": "pv", "num": 42, "flag": True},
            delivery_mode=2, priority=3, correlation_id="corr-1", reply_to="replies",
            expiration="60000", message_id="msg-1", timestamp=1700000000, type="kind",
            user_id="guest", app_id="golden-app")
        ch.basic_publish("", STREAM, b'{"a":1}', props)
        conn.close()
        c.req("subscribe-next-after-091", 0x07, b"\x04" + s16(STREAM) + struct.pack(">HQH", 4, 6, 1))
        c.recv_key("subscribe-response-4", 0x8007)
        c.recv_key("deliver-amqp091-published", 0x08)
    except ImportError:
        print("# pika not installed: no 0-9-1 conversion sample", file=sys.stderr)

    c.req("unsubscribe", 0x0C, b"\x01")
    c.recv_key("unsubscribe-response", 0x800C)
    c.req("delete-publisher", 0x06, b"\x01")
    c.recv_key("delete-publisher-response", 0x8006)
    c.req("delete-publisher-unknown", 0x06, b"\x07")
    c.recv_key("delete-publisher-response-unknown", 0x8006)
    c.req("delete", 0x0E, s16(STREAM))
    c.recv_key("delete-response", 0x800E)
    c.req("close", 0x16, struct.pack(">H", 1) + s16("bye"))
    c.recv_key("close-response", 0x8016)

    # An unknown command after authentication: the server closes with 13.
    c = open_conn()
    c.send("unknown-command", struct.pack(">HHI", 0x0077, 1, 1))
    c.recv_key("close-unknown-frame", 0x16)
    # A malformed known command (a truncated declare-publisher).
    c = open_conn()
    c.send("truncated-declare-publisher", struct.pack(">HHIB", 0x01, 1, 5, 1) + b"\x00")
    c.recv_key("close-malformed", 0x16)
    # A frame over the negotiated frame_max.
    c = open_conn()
    c.send("too-large", struct.pack(">HHI", 0x0E, 1, 9) + b"\x7f\xff" + b"x" * 1_100_000)
    c.recv_key("close-frame-too-large", 0x16)

    for d, label, h in OUT:
        if len(h) > 2 * 4096:
            # Only the front of the oversize frame is kept: its size prefix is what matters.
            h = h[: 2 * 64]
            label += "(first-64-bytes)"
        print(d, label, h)


try:
    main()
finally:
    for d, label, h in OUT if sys.exc_info()[0] else []:
        print(d, label, h)
