"""The MQTT server (3.1.1 and 5.0 with paho-mqtt 2.1; cross-protocol with pika).

Everything not marked ``pier_only`` also runs against RabbitMQ 3.10.8 (PIER_TEST_AMQP_URL
plus PIER_TEST_MQTT_PORT, default 1884); RabbitMQ 3.10 has no MQTT 5, so 5.0 tests are
``pier_only``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers import wait_until


V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5


def uid(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Client:
    """A paho client with blocking helpers: messages land in ``self.messages``."""

    def __init__(self, broker, client_id: str | None = None, protocol=V311,
                 clean: bool = True, username: str | None = "guest",
                 password: str | None = "guest", keepalive: int = 60, will=None,
                 properties: Properties | None = None, port: int | None = None):
        self.client_id = uid() if client_id is None else client_id
        kwargs = {"protocol": protocol}
        if protocol != V5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             **kwargs)
        self.protocol = protocol
        self.clean = clean
        self.messages: list[mqtt.MQTTMessage] = []
        self.connack = None
        self.session_present = None
        self.connack_props = None
        self.disconnected = threading.Event()
        self.disconnect_rc = None
        self.subacks: dict[int, list] = {}
        self.pubacks: dict[int, object] = {}
        self._cond = threading.Condition()
        if username is not None:
            self.c.username_pw_set(username, password)
        if will is not None:
            self.c.will_set(*will)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.broker = broker
        self.port = broker.mqtt_port if port is None else port
        self.keepalive = keepalive
        self.properties = properties

    def _on_connect(self, c, userdata, flags, rc, props):
        with self._cond:
            self.connack = rc
            self.session_present = flags.session_present
            self.connack_props = props
            self._cond.notify_all()

    def _on_message(self, c, userdata, msg):
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def _on_disconnect(self, c, userdata, flags, rc, props):
        self.disconnect_rc = rc
        self.disconnected.set()

    def _on_subscribe(self, c, userdata, mid, rcs, props):
        with self._cond:
            self.subacks[mid] = rcs
            self._cond.notify_all()

    def _on_publish(self, c, userdata, mid, rc, props):
        with self._cond:
            self.pubacks[mid] = rc
            self._cond.notify_all()

    def connect(self, expect_ok: bool = True, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY):
        kwargs = {}
        if self.protocol == V5:
            kwargs["clean_start"] = clean_start
            if self.properties is not None:
                kwargs["properties"] = self.properties
        self.c.connect(self.broker.host, self.port, keepalive=self.keepalive, **kwargs)
        self.c.loop_start()
        with self._cond:
            assert self._cond.wait_for(lambda: self.connack is not None, 10), "no CONNACK"
        if expect_ok:
            assert not self.connack.is_failure, self.connack
        return self

    def subscribe(self, topic: str, qos: int = 0, **kwargs):
        if self.protocol == V5 and "options" not in kwargs:
            kwargs["options"] = mqtt.SubscribeOptions(qos=qos)
            rc, mid = self.c.subscribe(topic, **kwargs)
        else:
            rc, mid = self.c.subscribe(topic, qos, **kwargs)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.subacks, 10), "no SUBACK"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: Properties | None = None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(10)
        assert info.is_published()
        return self.pubacks.get(info.mid)

    def wait_messages(self, n: int, timeout: float = 10.0):
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= n, timeout), \
                f"got {len(self.messages)} of {n} messages: {[m.payload for m in self.messages]}"
        return self.messages[:n]

    def disconnect(self):
        self.c.disconnect()
        self.disconnected.wait(5)
        self.c.loop_stop()

    def kill(self):
        """Drop the TCP connection without DISCONNECT."""
        self.c.loop_stop()
        self.c.socket().close()


@pytest.fixture
def clients(broker):
    made: list[Client] = []

    def make(**kwargs) -> Client:
        c = Client(broker, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.c.disconnect()
            c.c.loop_stop()
        except Exception:  # noqa: BLE001 - already gone
            pass


def amqp_queue_on(broker, routing_key: str):
    """An exclusive AMQP queue bound to amq.topic with ``routing_key``."""
    conn = broker.connect()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", routing_key)
    return conn, ch, q


def get_all(ch, q, n, timeout=5.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m, props, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            time.sleep(0.05)
            continue
        got.append((m, props, body))
    return got


# ---------------------------------------------------------------- 3.1.1 basics

def test_connect_publish_subscribe_qos0_and_qos1(clients):
    t = uid("t")
    sub = clients().connect()
    assert sub.subscribe(f"{t}/+/x", qos=0)[0].value == 0
    assert sub.subscribe(f"{t}/q1/#", qos=1)[0].value == 1
    pub = clients().connect()
    pub.publish(f"{t}/a/x", b"zero", qos=0)
    pub.publish(f"{t}/q1/b/c", b"one", qos=1)
    msgs = sub.wait_messages(2)
    got = {m.payload: (m.topic, m.qos) for m in msgs}
    assert got[b"zero"] == (f"{t}/a/x", 0)
    assert got[b"one"] == (f"{t}/q1/b/c", 1)


def test_qos2_subscription_is_granted_qos1(clients):
    t = uid("t")
    sub = clients().connect()
    assert sub.subscribe(f"{t}/#", qos=2)[0].value == 1
    pub = clients().connect()
    pub.publish(f"{t}/x", b"m", qos=1)
    assert sub.wait_messages(1)[0].qos == 1


@pytest.mark.same_node  # the AMQP queue is exclusive: it lives on its node
def test_mqtt_publish_consumed_over_amqp(broker, clients):
    t = uid("t")
    conn, ch, q = amqp_queue_on(broker, f"{t}.#")
    try:
        pub = clients().connect()
        pub.publish(f"{t}/a", b"q0", qos=0)
        pub.publish(f"{t}/a", b"q1", qos=1)
        got = get_all(ch, q, 2)
        assert [b for _, _, b in got] == [b"q0", b"q1"]
        (m0, p0, _), (m1, p1, _) = got
        assert m0.exchange == "amq.topic" and m0.routing_key == f"{t}.a"
        assert p0.delivery_mode == 1 and p1.delivery_mode == 2
        assert p0.headers == {"x-mqtt-publish-qos": 0, "x-mqtt-dup": False}
        assert p1.headers == {"x-mqtt-publish-qos": 1, "x-mqtt-dup": False}
    finally:
        conn.close()


def test_amqp_publish_reaches_mqtt_subscriber(broker, clients):
    t = uid("t")
    sub = clients().connect()
    sub.subscribe(f"{t}/#", qos=1)
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.basic_publish("amq.topic", f"{t}.z", b"transient",
                         pika.BasicProperties(delivery_mode=1))
        ch.basic_publish("amq.topic", f"{t}.z.w", b"persistent",
                         pika.BasicProperties(delivery_mode=2))
        msgs = sub.wait_messages(2)
        # RabbitMQ 3.10: AMQP messages have no x-mqtt-publish-qos; the subscription's
        # QoS applies.
        assert [(m.topic, m.payload, m.qos) for m in msgs] == [
            (f"{t}/z", b"transient", 1), (f"{t}/z/w", b"persistent", 1)]
    finally:
        conn.close()


def test_subscription_queues_and_bindings(broker, clients, mgmt):
    cid = uid("qs")
    sub = clients(client_id=cid).connect()
    sub.subscribe(f"{cid}/a", qos=0)
    sub.subscribe(f"{cid}/+/b", qos=1)
    q0, q1 = f"mqtt-subscription-{cid}qos0", f"mqtt-subscription-{cid}qos1"
    vh = "%2F"
    wait_until(lambda: mgmt.call("GET", f"/queues/{vh}/{q1}")[0] == 200)
    a, b = mgmt.get(f"/queues/{vh}/{q0}"), mgmt.get(f"/queues/{vh}/{q1}")
    assert (a["durable"], a["auto_delete"], a["arguments"]) == (False, True, {})
    assert (b["durable"], b["auto_delete"], b["arguments"]) == (True, True, {})
    keys = {(x["source"], x["routing_key"]) for x in mgmt.get(f"/queues/{vh}/{q1}/bindings")}
    assert ("amq.topic", f"{cid}.*.b") in keys
    keys = {(x["source"], x["routing_key"]) for x in mgmt.get(f"/queues/{vh}/{q0}/bindings")}
    assert ("amq.topic", f"{cid}.a") in keys
    sub.disconnect()
    # A clean session's queues go with it.
    wait_until(lambda: mgmt.call("GET", f"/queues/{vh}/{q1}")[0] == 404
               and mgmt.call("GET", f"/queues/{vh}/{q0}")[0] == 404)


def test_persistent_session_queue_and_offline_messages(broker, clients, mgmt):
    cid = uid("ps")
    t = uid("t")
    sub = clients(client_id=cid, clean=False).connect()
    assert sub.session_present is False
    sub.subscribe(f"{t}/#", qos=1)
    sub.subscribe(f"{t}/zero", qos=0)
    sub.disconnect()
    q1 = f"mqtt-subscription-{cid}qos1"
    # The QoS 0 queue goes with the connection even in a persistent session.
    wait_until(lambda: mgmt.call("GET", f"/queues/%2F/mqtt-subscription-{cid}qos0")[0] == 404)
    info = mgmt.get(f"/queues/%2F/{q1}")
    assert (info["durable"], info["auto_delete"]) == (True, False)
    assert info["arguments"] == {"x-expires": 86400000}
    pub = clients().connect()
    pub.publish(f"{t}/offline", b"while away", qos=1)
    again = clients(client_id=cid, clean=False).connect()
    assert again.session_present is True
    msgs = again.wait_messages(1)
    assert (msgs[0].topic, msgs[0].payload, msgs[0].qos) == (f"{t}/offline", b"while away", 1)
    again.disconnect()
    # A clean session with the same id discards the persistent one.
    clean = clients(client_id=cid, clean=True).connect()
    assert clean.session_present is False
    clean.disconnect()
    wait_until(lambda: mgmt.call("GET", f"/queues/%2F/{q1}")[0] == 404)


def test_unacked_qos1_redelivered_to_next_connection(broker, clients):
    cid = uid("re")
    t = uid("t")
    sub = clients(client_id=cid, clean=False).connect()
    sub.subscribe(f"{t}/#", qos=1)
    sub.disconnect()
    # Publish while away; a raw client takes the message without PUBACK.
    pub = clients().connect()
    pub.publish(f"{t}/x", b"keep me", qos=1)
    s = raw_connect(broker, cid, clean=False, expect=b"\x01\x00")  # session present
    pkt = read_packet(s)
    assert pkt[0] >> 4 == 3 and b"keep me" in pkt[1]
    s.close()
    again = clients(client_id=cid, clean=False).connect()
    msg = again.wait_messages(1)[0]
    assert msg.payload == b"keep me"
    # RabbitMQ 3.10 does not set dup on redelivery; Pier does (both are allowed).
    again.disconnect()
    clients(client_id=cid, clean=True).connect().disconnect()


def test_retained_message_delivered_on_subscribe_and_deleted(clients):
    t = uid("t")
    pub = clients().connect()
    pub.publish(f"{t}/r", b"retained!", qos=1, retain=True)
    pub.publish(f"{t}/r0", b"retained at qos 0", qos=0, retain=True)
    time.sleep(0.2)
    # RabbitMQ 3.10 delivers retained messages to subscriptions of the exact topic only.
    sub = clients().connect()
    sub.subscribe(f"{t}/r", qos=1)
    msg = sub.wait_messages(1)[0]
    assert (msg.topic, msg.payload, msg.retain, msg.qos) == (f"{t}/r", b"retained!", True, 1)
    sub0 = clients().connect()
    sub0.subscribe(f"{t}/r0", qos=1)
    msg = sub0.wait_messages(1)[0]
    assert (msg.payload, msg.retain, msg.qos) == (b"retained at qos 0", True, 0)
    # A live subscriber gets later publishes without the retain flag.
    pub.publish(f"{t}/r", b"live", qos=1, retain=True)
    live = sub.wait_messages(2)[1]
    assert (live.payload, live.retain) == (b"live", False)
    # An empty retained payload deletes the retained message (and is delivered as it is).
    pub.publish(f"{t}/r", b"", qos=1, retain=True)
    assert sub.wait_messages(3)[2].payload == b""
    time.sleep(0.2)
    late = clients().connect()
    late.subscribe(f"{t}/r", qos=1)
    time.sleep(0.5)
    assert late.messages == []


@pytest.mark.pier_only
def test_retained_messages_for_wildcard_subscriptions(clients):
    # MQTT 3.1.1 §3.3.1.3: every matching retained message; RabbitMQ 3.10 sends none.
    t = uid("t")
    pub = clients().connect()
    pub.publish(f"{t}/a/x", b"1", qos=1, retain=True)
    pub.publish(f"{t}/b/x", b"2", qos=0, retain=True)
    pub.publish(f"{t}/b/y", b"3", qos=1, retain=True)
    sub = clients().connect()
    sub.subscribe(f"{t}/+/x", qos=1)
    msgs = sub.wait_messages(2)
    assert sorted((m.topic, m.payload, m.qos, m.retain) for m in msgs) == [
        (f"{t}/a/x", b"1", 1, True), (f"{t}/b/x", b"2", 0, True)]


def test_will_on_abnormal_close_not_on_disconnect(clients):
    t = uid("t")
    watcher = clients().connect()
    watcher.subscribe(f"{t}/will", qos=1)
    polite = clients(will=(f"{t}/will", b"polite", 1, False)).connect()
    polite.disconnect()
    rude = clients(will=(f"{t}/will", b"rude", 1, False)).connect()
    rude.kill()
    msg = watcher.wait_messages(1)[0]
    assert msg.payload == b"rude"
    time.sleep(0.3)
    assert [m.payload for m in watcher.messages] == [b"rude"]


def test_client_id_takeover(clients):
    cid = uid("to")
    first = clients(client_id=cid).connect()
    second = clients(client_id=cid).connect()
    assert first.disconnected.wait(5), "the first connection was not closed"
    t = uid("t")
    second.subscribe(f"{t}/x", qos=1)
    clients().connect().publish(f"{t}/x", b"to second", qos=1)
    assert second.wait_messages(1)[0].payload == b"to second"


def test_empty_client_id(broker):
    # Clean session: the server assigns one.
    s = raw_connect(broker, "", clean=True, expect=None)
    assert read_packet(s) == (0x20, b"\x00\x00")
    s.close()
    # Persistent session without a client id: identifier rejected (0x02).
    s = raw_connect(broker, "", clean=False, expect=None)
    assert read_packet(s) == (0x20, b"\x00\x02")
    s.close()


def test_bad_password_refused(clients):
    c = clients(username="guest", password="wrong")
    c.connect(expect_ok=False)
    assert c.connack.is_failure
    assert c.connack.value in (4, 134)  # 3.1.1 bad user name or password


def test_keep_alive_timeout_closes_connection(broker):
    s = raw_connect(broker, uid("ka"), keepalive=1)
    start = time.monotonic()
    s.settimeout(6)
    assert s.recv(16) == b""  # closed by the server (1.5 x keep alive)
    assert 1.0 <= time.monotonic() - start < 5


def test_ping(broker):
    s = raw_connect(broker, uid("ping"))
    s.sendall(b"\xc0\x00")
    assert read_packet(s) == (0xD0, b"")
    s.close()


@pytest.fixture
def limited_user(broker, mgmt):
    name = uid("mqttu")
    assert mgmt.call("PUT", f"/users/{name}", {"password": "pw", "tags": ""})[0] in (201, 204)
    yield name
    mgmt.call("DELETE", f"/users/{name}")


def test_subscribe_denied(broker, clients, mgmt, limited_user):
    # May configure and write anything, read nothing: the subscription fails. Pier answers
    # SUBACK 0x80 (3.1.1's failure code, as RabbitMQ 3.13); RabbitMQ 3.10 closes the
    # connection instead.
    assert mgmt.call("PUT", f"/permissions/%2F/{limited_user}",
                     {"configure": ".*", "write": ".*", "read": "^$"})[0] in (201, 204)
    c = clients(username=limited_user, password="pw").connect()
    rc, mid = c.c.subscribe(uid("t") + "/x", 1)
    with c._cond:
        c._cond.wait_for(lambda: mid in c.subacks or c.disconnected.is_set(), 10)
    if mid in c.subacks:
        assert c.subacks[mid][0].value == 0x80
    else:
        assert c.disconnected.is_set()


def test_publish_denied(broker, clients, mgmt, limited_user):
    # Without write permission a publish is not routed and not acknowledged. Pier closes
    # the connection (3.1.1 cannot refuse a publish; RabbitMQ 3.13 closes too); RabbitMQ
    # 3.10 drops the message silently and keeps the connection.
    assert mgmt.call("PUT", f"/permissions/%2F/{limited_user}",
                     {"configure": ".*", "write": "^$", "read": ".*"})[0] in (201, 204)
    t = uid("t")
    conn, ch, q = amqp_queue_on(broker, f"{t}.#")
    try:
        c = clients(username=limited_user, password="pw").connect()
        info = c.c.publish(f"{t}/x", b"no", qos=1)
        c.disconnected.wait(3)
        assert not info.is_published()
        assert get_all(ch, q, 1, timeout=0.5) == []
        if not broker.external:
            assert c.disconnected.is_set()
    finally:
        conn.close()


def test_vhost_in_username(broker, clients, mgmt):
    vhost = uid("vh")
    assert mgmt.call("PUT", f"/vhosts/{vhost}", {})[0] in (201, 204)
    try:
        assert mgmt.call("PUT", f"/permissions/{vhost}/guest",
                         {"configure": ".*", "write": ".*", "read": ".*"})[0] in (201, 204)
        c = clients(username=f"{vhost}:guest", password="guest").connect()
        cid = c.client_id
        c.subscribe("v/x", qos=1)
        wait_until(lambda: mgmt.call(
            "GET", f"/queues/{vhost}/mqtt-subscription-{cid}qos1")[0] == 200)
        c.disconnect()
    finally:
        mgmt.call("DELETE", f"/vhosts/{vhost}")


def test_connections_in_management(broker, clients, mgmt):
    cid = uid("mg")
    clients(client_id=cid).connect()

    def listed():
        return [c for c in mgmt.get("/connections")
                if (c.get("client_properties") or {}).get("client_id") == cid]
    wait_until(lambda: listed(), timeout=10)
    c = listed()[0]
    assert c["protocol"] == "MQTT 3.1.1"
    assert c["user"] == "guest" and c["vhost"] == "/"


# ---------------------------------------------------------------- hostile input

def raw_connect(broker, client_id: str, clean: bool = True, keepalive: int = 60,
                expect: bytes | None = b"\x00\x00", level: int = 4,
                user: str = "guest", password: str = "guest") -> socket.socket:
    s = socket.create_connection((broker.host, broker.mqtt_port), timeout=10)
    flags = 0xC0 | (0x02 if clean else 0)
    cid = client_id.encode()
    var = (b"\x00\x04MQTT" + bytes([level, flags]) + struct.pack(">H", keepalive))
    payload = (struct.pack(">H", len(cid)) + cid + struct.pack(">H", len(user)) + user.encode()
               + struct.pack(">H", len(password)) + password.encode())
    body = var + payload
    s.sendall(bytes([0x10]) + encode_len(len(body)) + body)
    if expect is not None:
        assert read_packet(s) == (0x20, expect)
    return s


def encode_len(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def read_packet(s: socket.socket):
    first = read_exact(s, 1)[0]
    mult, n = 1, 0
    while True:
        b = read_exact(s, 1)[0]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return first, read_exact(s, n)


def closed_by_server(s: socket.socket, timeout: float = 5.0) -> bool:
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_garbage_first_packet_closes(broker, clients):
    s = socket.create_connection((broker.host, broker.mqtt_port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # Pier closes at once; RabbitMQ 3.10 when its CONNECT timeout (10 s) is over.
    assert closed_by_server(s, 15)
    clients().connect().disconnect()


def test_non_connect_first_packet_closes(broker, clients):
    s = socket.create_connection((broker.host, broker.mqtt_port), timeout=5)
    s.sendall(b"\xc0\x00")  # PINGREQ before CONNECT
    assert closed_by_server(s)
    clients().connect().disconnect()


def test_malformed_packet_after_connect_closes(broker, clients):
    s = raw_connect(broker, uid("mal"))
    s.sendall(b"\x30\x02\x00\x09")  # topic length beyond the packet
    assert closed_by_server(s)
    clients().connect().disconnect()


@pytest.mark.pier_only
def test_malformed_remaining_length_closes(broker, clients):
    # RabbitMQ 3.10 keeps waiting for more bytes.
    s = raw_connect(broker, uid("mal"))
    s.sendall(b"\x82\xff\xff\xff\xff\x7f")  # remaining length of five bytes
    assert closed_by_server(s)
    clients().connect().disconnect()


@pytest.mark.pier_only
def test_second_connect_closes(broker):
    # A protocol violation (3.1.1 §3.1.0-2); RabbitMQ 3.10 answers it with another CONNACK.
    cid = uid("twice")
    s = raw_connect(broker, cid)
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(cid)) + cid.encode()
    s.sendall(bytes([0x10]) + encode_len(len(body)) + body)
    assert closed_by_server(s)


@pytest.mark.pier_only
def test_oversized_connect_closes(broker, clients):
    # mqtt.max_packet_size_unauthenticated (65536): refused before it is read.
    s = socket.create_connection((broker.host, broker.mqtt_port), timeout=5)
    s.sendall(b"\x10" + encode_len(1_000_000) + b"\x00\x04MQTT\x04\x02\x00\x3c")
    assert closed_by_server(s)
    clients().connect().disconnect()


@pytest.mark.pier_only
def test_unknown_protocol_level_gets_connack_1(broker):
    s = socket.create_connection((broker.host, broker.mqtt_port), timeout=5)
    body = b"\x00\x04MQTT\x07\x02\x00\x3c\x00\x01c"
    s.sendall(b"\x10" + encode_len(len(body)) + body)
    assert read_packet(s) == (0x20, b"\x00\x01")
    assert closed_by_server(s)


# ---------------------------------------------------------------- MQTT 5 (Pier only)

def props(kind, **values) -> Properties:
    p = Properties(kind)
    for k, v in values.items():
        setattr(p, k, v)
    return p


@pytest.mark.pier_only
def test_v5_connack_properties(clients):
    c = clients(protocol=V5, client_id="").connect()
    p = c.connack_props
    assert p.MaximumQoS == 1
    assert p.RetainAvailable == 1
    assert p.WildcardSubscriptionAvailable == 1
    assert p.SubscriptionIdentifierAvailable == 1
    assert p.SharedSubscriptionAvailable == 0
    assert p.TopicAliasMaximum > 0
    assert p.AssignedClientIdentifier


@pytest.mark.pier_only
def test_v5_puback_no_matching_subscribers(clients):
    c = clients(protocol=V5).connect()
    rc = c.publish(uid("nobody") + "/x", b"m", qos=1)
    assert rc is not None and rc.value == 0x10
    t = uid("t")
    c.subscribe(f"{t}/x", qos=1)
    assert c.publish(f"{t}/x", b"m", qos=1).value == 0


@pytest.mark.pier_only
@pytest.mark.same_node  # the AMQP queue is exclusive: it lives on its node
def test_v5_user_properties_and_request_response_over_amqp(broker, clients):
    t = uid("t")
    conn, ch, q = amqp_queue_on(broker, f"{t}.#")
    try:
        c = clients(protocol=V5).connect()
        c.subscribe(f"{t}/reply", qos=1)
        p = props(PacketTypes.PUBLISH, UserProperty=[("k", "v")], ResponseTopic=f"{t}/reply",
                  CorrelationData=b"corr-1", ContentType="text/plain",
                  MessageExpiryInterval=60)
        c.publish(f"{t}/req", b"request", qos=1, properties=p)
        (m, pp, body), = get_all(ch, q, 1)
        assert body == b"request"
        assert pp.headers["k"] == "v"
        assert pp.reply_to == f"{t}.reply"
        assert pp.correlation_id == "corr-1"
        assert pp.content_type == "text/plain"
        assert pp.expiration == "60000"
        # An AMQP RPC server answers to reply_to with the correlation id.
        ch.basic_publish("amq.topic", pp.reply_to, b"response",
                         pika.BasicProperties(correlation_id=pp.correlation_id,
                                              headers={"h": "x"}))
        reply = c.wait_messages(1)[0]
        assert reply.payload == b"response"
        assert reply.properties.CorrelationData == b"corr-1"
        assert ("h", "x") in reply.properties.UserProperty
    finally:
        conn.close()


@pytest.mark.pier_only
def test_v5_subscription_identifiers_and_no_local(clients):
    t = uid("t")
    c = clients(protocol=V5).connect()
    c.subscribe(f"{t}/#", qos=1,
                properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42))
    c.subscribe(f"{t}/local", options=mqtt.SubscribeOptions(qos=1, noLocal=True))
    other = clients(protocol=V5).connect()
    other.publish(f"{t}/a", b"from other", qos=1)
    msg = c.wait_messages(1)[0]
    assert msg.properties.SubscriptionIdentifier == [42]
    # Own publish to a topic whose only subscription is no-local: not delivered back.
    c.publish(f"{t}/nolocal-only/x", b"x", qos=1)  # matches t/# (not no-local): delivered
    c.wait_messages(2)


@pytest.mark.pier_only
def test_v5_topic_alias(clients):
    t = uid("t")
    sub = clients(protocol=V5).connect()
    sub.subscribe(f"{t}/#", qos=1)
    # Raw: paho does not send aliases by itself.
    pub = clients(protocol=V5).connect()
    pub.publish(f"{t}/aliased", b"1", qos=1,
                properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish("", b"2", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    msgs = sub.wait_messages(2)
    assert [(m.topic, m.payload) for m in msgs] == [(f"{t}/aliased", b"1"),
                                                     (f"{t}/aliased", b"2")]


@pytest.mark.pier_only
def test_v5_takeover_reason(clients):
    cid = uid("to5")
    first = clients(protocol=V5, client_id=cid).connect()
    clients(protocol=V5, client_id=cid).connect()
    assert first.disconnected.wait(5)
    assert first.disconnect_rc.value == 0x8E


@pytest.mark.pier_only
def test_v5_subscribe_not_authorized(broker, clients, mgmt, limited_user):
    assert mgmt.call("PUT", f"/permissions/%2F/{limited_user}",
                     {"configure": ".*", "write": "^$", "read": "^$"})[0] in (201, 204)
    c = clients(protocol=V5, username=limited_user, password="pw").connect()
    assert c.subscribe(uid("t") + "/x", qos=1)[0].value == 0x87
    assert c.publish(uid("t") + "/x", b"m", qos=1).value == 0x87


@pytest.mark.pier_only
def test_v5_session_expiry_keeps_queue(clients, mgmt):
    cid = uid("se")
    c = clients(protocol=V5, client_id=cid,
                properties=props(PacketTypes.CONNECT, SessionExpiryInterval=120))
    c.connect(clean_start=True)
    c.subscribe(uid("t") + "/x", qos=1)
    c.disconnect()
    q = mgmt.get(f"/queues/%2F/mqtt-subscription-{cid}qos1")
    assert q["arguments"] == {"x-expires": 120000}
    again = clients(protocol=V5, client_id=cid,
                    properties=props(PacketTypes.CONNECT, SessionExpiryInterval=0))
    again.connect(clean_start=True)
    assert again.session_present is False
    again.disconnect()


@pytest.mark.pier_only
def test_v5_will_delay(clients):
    t = uid("t")
    watcher = clients(protocol=V5).connect()
    watcher.subscribe(f"{t}/will", qos=1)
    cid = uid("wd")
    c = clients(protocol=V5, client_id=cid)
    c.c.will_set(f"{t}/will", b"late", 1, False,
                 properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=1))
    c.connect()
    c.kill()
    time.sleep(0.5)
    assert watcher.messages == []
    assert watcher.wait_messages(1, timeout=5)[0].payload == b"late"
    # Reconnecting within the delay cancels the will.
    d = clients(protocol=V5, client_id=cid + "b")
    d.c.will_set(f"{t}/will", b"cancelled", 1, False,
                 properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=2))
    d.connect()
    d.kill()
    clients(protocol=V5, client_id=cid + "b").connect()
    time.sleep(3)
    assert [m.payload for m in watcher.messages] == [b"late"]


@pytest.mark.pier_only
def test_v5_qos2_publish_disconnects(broker):
    s = socket.create_connection((broker.host, broker.mqtt_port), timeout=5)
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + b"\x00\x02c5"
    s.sendall(b"\x10" + encode_len(len(body)) + body)
    first, _ = read_packet(s)
    assert first == 0x20
    pub = b"\x00\x01t\x00\x01\x00" + b"x"
    s.sendall(b"\x34" + encode_len(len(pub)) + pub)
    first, rest = read_packet(s)
    assert first == 0xE0 and rest[0] == 0x9B


# ---------------------------------------------------------------- restarts (Pier only)

class _Endpoint:
    def __init__(self, proc):
        self.host = "127.0.0.1"
        self.mqtt_port = proc.mqtt_port
        self.port = proc.amqp_port


def _restart(proc):
    assert proc.terminate() == 0, proc.log_tail()
    return proc.start()


def test_persistent_session_and_retained_survive_restart(pier_factory):
    proc = pier_factory()
    ep = _Endpoint(proc)
    cid = uid("dur")
    sub = Client(ep, client_id=cid, clean=False).connect()
    sub.subscribe("dur/#", qos=1)
    sub.disconnect()
    pub = Client(ep).connect()
    pub.publish("dur/offline", b"kept across restart", qos=1)
    pub.publish("dur/retained", b"retained across restart", qos=1, retain=True)
    pub.disconnect()

    _restart(proc)
    ep = _Endpoint(proc)
    again = Client(ep, client_id=cid, clean=False).connect()
    try:
        assert again.session_present is True
        got = again.wait_messages(2)
        assert [m.payload for m in got] == [b"kept across restart",
                                            b"retained across restart"]
        # The subscription's binding survived too: new publishes arrive.
        pub = Client(ep).connect()
        pub.publish("dur/after", b"after restart", qos=1)
        assert again.wait_messages(3)[2].payload == b"after restart"
        pub.disconnect()
        late = Client(ep).connect()
        late.subscribe("dur/retained", qos=1)
        msg = late.wait_messages(1)[0]
        assert (msg.payload, msg.retain) == (b"retained across restart", True)
        late.disconnect()
    finally:
        again.disconnect()


@pytest.mark.pier_only
def test_ctl_list_mqtt_connections_and_metrics(broker, clients):
    import os
    import subprocess
    import urllib.request
    from conftest import pier_binary
    cid = uid("ctl")
    clients(client_id=cid).connect()
    env = dict(os.environ, PIER_CTL_URL=f"http://127.0.0.1:{broker.process.http_port}")

    def listed():
        out = subprocess.run([str(pier_binary()), "ctl", "list_mqtt_connections", "-q"],
                             env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout
    wait_until(lambda: cid in listed(), timeout=10)
    line = next(li for li in listed().splitlines() if cid in li)
    assert "127.0.0.1" in line  # conn_name
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.process.http_port}/metrics") as r:
        text = r.read().decode()
    count = [li for li in text.splitlines() if li.startswith("rabbitmq_connections ")]
    assert count and float(count[0].split()[1]) >= 1


def test_many_qos1_publishes_in_flight(clients):
    t = uid("t")
    sub = clients(client_id=uid("many"), clean=False).connect()
    sub.subscribe(f"{t}/#", qos=1)
    pub = clients()
    pub.c.max_inflight_messages_set(3000)
    pub.connect()
    infos = [pub.c.publish(f"{t}/n", str(i).encode(), qos=1) for i in range(3000)]
    for info in infos:
        info.wait_for_publish(30)
    assert all(i.is_published() for i in infos)
    msgs = sub.wait_messages(3000, timeout=60)
    assert [int(m.payload) for m in msgs] == list(range(3000))
    sub.disconnect()
    clients(client_id=sub.client_id, clean=True).connect().disconnect()


def test_mqtt_over_tls(tmp_path):
    import shutil
    import ssl
    import subprocess
    from conftest import EXTERNAL_URL, PIER_CONFIG, PierProcess, free_port
    if EXTERNAL_URL:
        pytest.skip("needs a Pier process")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing")
    work = tmp_path / "tls"
    work.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(work / "server.key"),
                    "-out", str(work / "server.pem")], check=True, capture_output=True)
    tls_port = free_port()
    proc = PierProcess(work, PIER_CONFIG + '\n[tls]\ncert = "server.pem"\nkey = "server.key"\n',
                       extra_args=["--mqtt-tls-port", str(tls_port),
                                   "--amqps-port", str(free_port()),
                                   "--stream-tls-port", "0"])
    proc.start()
    try:
        ep = _Endpoint(proc)
        c = Client(ep, port=tls_port)
        c.c.tls_set(cert_reqs=ssl.CERT_NONE)
        c.c.tls_insecure_set(True)
        c.connect()
        c.subscribe("tls/x", qos=1)
        c.publish("tls/x", b"secure", qos=1)
        assert c.wait_messages(1)[0].payload == b"secure"
        c.disconnect()
    finally:
        proc.kill()


@pytest.mark.pier_only
def test_amqp_message_with_no_topic_name_is_skipped(broker, clients):
    # An empty routing key is no MQTT topic name: such deliveries are settled and skipped,
    # and they do not use up the session's prefetch.
    t = uid("t")
    sub = clients().connect()
    sub.subscribe("#", qos=1)
    conn = broker.connect()
    try:
        ch = conn.channel()
        for _ in range(15):
            ch.basic_publish("amq.topic", "", b"no topic")
        ch.basic_publish("amq.topic", f"{t}.after", b"after")
        wait_until(lambda: any(m.payload == b"after" for m in sub.messages), timeout=10)
        assert all(m.topic for m in sub.messages)
    finally:
        conn.close()


def test_mqtt_3_1(clients, mgmt):
    t = uid("t")
    c = clients(protocol=mqtt.MQTTv31).connect()
    c.subscribe(f"{t}/x", qos=1)
    c.publish(f"{t}/x", b"v3.1", qos=1)
    assert c.wait_messages(1)[0].payload == b"v3.1"

    def listed():
        return [x for x in mgmt.get("/connections")
                if (x.get("client_properties") or {}).get("client_id") == c.client_id]
    wait_until(lambda: listed(), timeout=10)
    assert listed()[0]["protocol"] == "MQTT 3.1.0"


@pytest.mark.pier_only
def test_v5_closed_through_management(broker, clients, mgmt):
    cid = uid("mgc")
    c = clients(protocol=V5, client_id=cid).connect()

    def name():
        for x in mgmt.get("/connections"):
            if (x.get("client_properties") or {}).get("client_id") == cid:
                return x["name"]
        return None
    wait_until(lambda: name() is not None, timeout=10)
    import urllib.parse
    status, _ = mgmt.call("DELETE", "/connections/" + urllib.parse.quote(name(), safe=""))
    assert status in (200, 204)
    assert c.disconnected.wait(5)
    assert c.disconnect_rc.value == 0x98  # administrative action


@pytest.mark.pier_only
def test_v5_keep_alive_timeout_disconnect(broker):
    s = socket.create_connection((broker.host, broker.mqtt_port), timeout=10)
    body = b"\x00\x04MQTT\x05\x02\x00\x01\x00" + b"\x00\x03ka5"  # keep alive 1 s
    s.sendall(b"\x10" + encode_len(len(body)) + body)
    assert read_packet(s)[0] == 0x20
    first, rest = read_packet(s)
    assert first == 0xE0 and rest[0] == 0x8D


@pytest.mark.pier_only
def test_v5_no_local(clients):
    t = uid("t")
    c = clients(protocol=V5).connect()
    c.subscribe(f"{t}/local", options=mqtt.SubscribeOptions(qos=1, noLocal=True))
    c.publish(f"{t}/local", b"own", qos=1)
    other = clients(protocol=V5).connect()
    other.publish(f"{t}/local", b"other's", qos=1)
    assert c.wait_messages(1)[0].payload == b"other's"
    time.sleep(0.3)
    assert [m.payload for m in c.messages] == [b"other's"]


@pytest.mark.same_node  # a QoS 0 subscription queue is transient: its bindings stay on its node
def test_many_qos0_deliveries(broker, clients):
    # More than the server buffers per connection: the queue waits and resumes.
    t = uid("t")
    sub = clients().connect()
    sub.subscribe(f"{t}/#", qos=0)
    conn = broker.connect()
    try:
        ch = conn.channel()
        for i in range(5000):
            ch.basic_publish("amq.topic", f"{t}.n", str(i).encode())
        msgs = sub.wait_messages(5000, timeout=60)
        assert [int(m.payload) for m in msgs] == list(range(5000))
    finally:
        conn.close()


@pytest.mark.pier_only
def test_v5_retain_as_published(clients):
    t = uid("t")
    keep = clients(protocol=V5).connect()
    keep.subscribe(f"{t}/r", options=mqtt.SubscribeOptions(qos=1, retainAsPublished=True))
    plain = clients(protocol=V5).connect()
    plain.subscribe(f"{t}/r", qos=1)
    pub = clients(protocol=V5).connect()
    pub.publish(f"{t}/r", b"r", qos=1, retain=True)
    assert keep.wait_messages(1)[0].retain is True
    assert plain.wait_messages(1)[0].retain is False
    pub.publish(f"{t}/r", b"", qos=1, retain=True)  # clean up the retained message
