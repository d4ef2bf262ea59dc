#!/usr/bin/env python3
"""Captures real STOMP frames from RabbitMQ for the golden tests.

    python3 capture.py [host] [stomp-port] > rabbitmq-3.10.8.txt

A hand-written raw-socket client (no STOMP library, so every byte is chosen here) runs a
session in each of STOMP 1.0, 1.1 and 1.2 and records every frame in both directions, one
per line:

    C|S  version  label  hex-of-the-whole-frame

Server frames are split at their NUL (or after content-length octets when the frame has
that header); the end-of-line octets RabbitMQ writes after each frame and its heart-beats
are recorded as frames labelled `eol`. Lines starting `#` note what the server did when it
sent nothing (closed the socket, or kept it open).
"""
import socket
import sys
import time

HOST = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 61614
OUT = []


def frame(cmd, headers, body=b"", eol=b"\n"):
    out = cmd.encode() + eol
    for k, v in headers:
        out += (k if isinstance(k, bytes) else k.encode()) + b":" + (v if isinstance(v, bytes) else v.encode()) + eol
    return out + eol + body + b"\x00"


def split_server(buf):
    """Whole server frames (and EOLs between them) at the front of buf."""
    out = []
    while buf:
        if buf[:1] == b"\n":
            out.append(("eol", buf[:1]))
            buf = buf[1:]
            continue
        if buf[:2] == b"\r\n":
            out.append(("eol", buf[:2]))
            buf = buf[2:]
            continue
        end = buf.find(b"\n\n")
        if end < 0:
            break
        head = buf[:end].decode("utf-8", "replace")
        clen = None
        for line in head.split("\n")[1:]:
            if line.startswith("content-length:"):
                clen = int(line.split(":", 1)[1])
                break
        body_start = end + 2
        if clen is not None:
            if len(buf) < body_start + clen + 1:
                break
            stop = body_start + clen + 1
        else:
            nul = buf.find(b"\x00", body_start)
            if nul < 0:
                break
            stop = nul + 1
        cmd = head.split("\n", 1)[0]
        out.append((cmd, buf[:stop]))
        buf = buf[stop:]
    return out, buf


class Conn:
    def __init__(self, version):
        self.v = version
        self.sock = socket.create_connection((HOST, PORT), timeout=3)
        self.buf = b""
        self.closed = False

    def send(self, label, data):
        OUT.append(("C", self.v, label, data.hex()))
        self.sock.sendall(data)

    def recv(self, label, want=1, wait=2.0):
        """Receives until `want` frames other than EOLs arrived, or wait passes."""
        got = 0
        end = time.time() + wait
        while got < want and time.time() < end:
            frames, self.buf = split_server(self.buf)
            for cmd, raw in frames:
                OUT.append(("S", self.v, label if cmd != "eol" else "eol", raw.hex()))
                if cmd != "eol":
                    got += 1
            if got >= want:
                break
            self.sock.settimeout(max(0.05, end - time.time()))
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                break
            if not d:
                self.closed = True
                break
            self.buf += d
        frames, self.buf = split_server(self.buf)
        for cmd, raw in frames:
            OUT.append(("S", self.v, label if cmd != "eol" else "eol", raw.hex()))

    def drain(self, label, wait):
        self.recv(label, want=10**9, wait=wait)

    def note_close(self, label):
        self.drain(label, 1.0)
        OUT.append(("#", self.v, label, "server closed" if self.closed else "server kept the socket open"))
        self.sock.close()


def session(v):
    c = Conn(v)
    q = "/queue/pier-golden-stomp-" + v
    if v == "1.0":
        c.send("connect", frame("CONNECT", [("login", "guest"), ("passcode", "guest")]))
    elif v == "1.1":
        c.send(
            "connect",
            frame("CONNECT", [("accept-version", "1.1"), ("host", "/"), ("login", "guest"), ("passcode", "guest"), ("heart-beat", "0,500")]),
        )
    else:
        c.send(
            "connect",
            frame("STOMP", [("accept-version", "1.0,1.1,1.2"), ("host", "/"), ("login", "guest"), ("passcode", "guest"), ("heart-beat", "0,0")]),
        )
    c.recv("connected")
    ack = "client" if v == "1.0" else "client-individual"
    c.send("subscribe", frame("SUBSCRIBE", [("destination", q), ("id", "sub-1"), ("ack", ack), ("receipt", "r-sub")]))
    c.recv("subscribe-receipt")
    # A header value that needs escaping in 1.1 (\n \c \\) and 1.2 (also \r). In 1.0
    # nothing is escaped, so the same value is sent raw except for the newline.
    if v == "1.0":
        esc = b"a:b\\c"
    elif v == "1.1":
        esc = b"a\\cb\\nc\\\\d"
    else:
        esc = b"a\\cb\\nc\\\\d\\re"
    body = b"binary\x00body\x00"
    c.send(
        "send-content-length",
        frame("SEND", [("destination", q), ("content-type", "application/octet-stream"), ("content-length", str(len(body))), (b"x-esc", esc), ("receipt", "r-send-1")], body),
    )
    c.recv("send-receipt", want=2)
    c.send("send-nul-terminated", frame("SEND", [("destination", q), ("x-repeated", "first"), ("x-repeated", "second"), ("receipt", "r-send-2")], b"plain text body"))
    c.recv("send-receipt-2", want=2)
    # ACK both messages (ids are in the MESSAGE frames just received)
    msgs = [bytes.fromhex(h) for d, vv, l, h in OUT if d == "S" and vv == v and h.startswith(b"MESSAGE".hex())]
    for i, m in enumerate(msgs[-2:]):
        hdrs = dict(
            line.split(":", 1) for line in m.split(b"\n\n")[0].decode("utf-8", "replace").split("\n")[1:] if ":" in line
        )
        if v == "1.0":
            c.send("ack", frame("ACK", [("message-id", hdrs["message-id"]), ("receipt", "r-ack-%d" % i)]))
        elif v == "1.1":
            c.send("ack", frame("ACK", [("message-id", hdrs["message-id"]), ("subscription", "sub-1"), ("receipt", "r-ack-%d" % i)]))
        else:
            c.send("ack", frame("ACK", [("id", hdrs["ack"]), ("receipt", "r-ack-%d" % i)]))
        c.recv("ack-receipt")
    if v != "1.0":
        c.send("send-for-nack", frame("SEND", [("destination", q), ("receipt", "r-send-3")], b"to nack"))
        c.recv("send-receipt-3", want=2)
        m = bytes.fromhex([h for d, vv, l, h in OUT if d == "S" and vv == v and h.startswith(b"MESSAGE".hex())][-1])
        hdrs = dict(line.split(":", 1) for line in m.split(b"\n\n")[0].decode().split("\n")[1:] if ":" in line)
        if v == "1.1":
            c.send("nack", frame("NACK", [("message-id", hdrs["message-id"]), ("subscription", "sub-1"), ("requeue", "false"), ("receipt", "r-nack")]))
        else:
            c.send("nack", frame("NACK", [("id", hdrs["ack"]), ("requeue", "false"), ("receipt", "r-nack")]))
        c.recv("nack-receipt")
    c.send("begin", frame("BEGIN", [("transaction", "tx-1")]))
    c.send("send-in-tx", frame("SEND", [("destination", q), ("transaction", "tx-1")], b"in tx"))
    c.send("commit", frame("COMMIT", [("transaction", "tx-1"), ("receipt", "r-commit")]))
    c.recv("commit-receipt", want=2)
    c.send("begin-2", frame("BEGIN", [("transaction", "tx-2")]))
    c.send("abort", frame("ABORT", [("transaction", "tx-2"), ("receipt", "r-abort")]))
    c.recv("abort-receipt")
    if v == "1.1":
        # heart-beat:0,500 asked the server to send heart-beats every 500 ms
        c.drain("heartbeats", 1.3)
    if v == "1.2":
        # CRLF line endings (1.2)
        c.send("send-crlf", frame("SEND", [("destination", q), ("receipt", "r-crlf")], b"crlf", eol=b"\r\n"))
        c.recv("send-crlf-receipt", want=2)
        # EOLs between frames (a client heart-beat)
        c.send("client-heartbeat", b"\r\n\n")
    c.send("unsubscribe", frame("UNSUBSCRIBE", [("destination", q), ("id", "sub-1"), ("receipt", "r-unsub")]))
    c.recv("unsubscribe-receipt")
    c.send("disconnect", frame("DISCONNECT", [("receipt", "r-bye")]))
    c.recv("disconnect-receipt")
    c.note_close("after-disconnect")


def errors():
    def connected(v="1.2"):
        c = Conn(v)
        c.send("connect", frame("CONNECT", [("accept-version", "1.2"), ("host", "/"), ("login", "guest"), ("passcode", "guest")]))
        c.recv("connected")
        return c

    c = connected()
    c.send("unknown-command", frame("FOO", [("receipt", "r")]))
    c.recv("unknown-command-error")
    c.note_close("unknown-command")

    c = connected()
    c.send("subscribe-no-destination", frame("SUBSCRIBE", [("id", "s")]))
    c.recv("subscribe-no-destination-error")
    c.note_close("subscribe-no-destination")

    c = connected()
    c.send("bad-escape", b"SEND\ndestination:/queue/x\nx:a\\tb\n\nbody\x00")
    c.note_close("bad-escape")

    c = connected()
    c.send("header-without-colon", b"SEND\ndestination:/queue/x\nnocolon\n\nbody\x00")
    c.note_close("header-without-colon")

    c = connected()
    c.send("bare-cr", b"SEND\rdestination:/queue/x\n\nbody\x00")
    c.note_close("bare-cr")

    c = Conn("none")
    c.send("send-before-connect", frame("SEND", [("destination", "/queue/x")], b"x"))
    c.recv("send-before-connect-error")
    c.note_close("send-before-connect")

    c = Conn("none")
    c.send("version-mismatch", frame("CONNECT", [("accept-version", "2.0"), ("host", "/"), ("login", "guest"), ("passcode", "guest")]))
    c.recv("version-mismatch-error")
    c.note_close("version-mismatch")

    c = Conn("none")
    c.send("bad-login", frame("CONNECT", [("accept-version", "1.2"), ("host", "/"), ("login", "guest"), ("passcode", "nope")]))
    c.recv("bad-login-error")
    c.note_close("bad-login")


if __name__ == "__main__":
    for v in ("1.0", "1.1", "1.2"):
        session(v)
    errors()
    print("# RabbitMQ 3.10.8 STOMP plugin (rabbitmq_stomp-3.10.8), raw-socket client capture.py")
    print("# direction version label hex")
    for d, v, label, h in OUT:
        print(d, v, label, h)
