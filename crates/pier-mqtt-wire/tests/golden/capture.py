#!/usr/bin/env python3
"""Captures real MQTT packets for the golden tests.

    python3 capture.py rabbitmq [mqtt-port] [amqp-port] > rabbitmq-3.10.8.txt
    python3 capture.py mosquitto [mqtt-port]            > paho-mosquitto-v5.txt

A small recording proxy sits between a real client and the broker and writes every packet
it forwards, one per line:

    C|S  version  label  hex-of-the-whole-packet

`rabbitmq`: paho-mqtt's 3.1.1 and 3.1 clients against RabbitMQ's MQTT plugin (3.10.8 speaks
3.1 and 3.1.1 only), plus raw-socket CONNECTs the broker refuses, and the routing keys an
AMQP 0-9-1 consumer bound to amq.topic sees for MQTT publishes (lines starting `K`:
`K mqtt-topic amqp-routing-key`), and the MQTT topic an MQTT subscriber sees for AMQP
publishes (`M amqp-routing-key mqtt-topic`).

`mosquitto`: paho-mqtt's 5.0 client against mosquitto 2 (a 5.0 broker), configured to put
many properties into CONNACK (see mosquitto.conf beside this script).

Needs paho-mqtt (2.x) and pika; run it from a virtualenv outside the repository.
"""
import socket
import sys
import threading
import time

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

OUT = []
LOCK = threading.Lock()


def split_packets(buf):
    """Whole MQTT packets at the front of buf, and what is left."""
    out = []
    while len(buf) >= 2:
        mult, rem, i = 1, 0, 1
        while True:
            if i >= len(buf):
                return out, buf
            b = buf[i]
            rem += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if len(buf) < i + rem:
            return out, buf
        out.append(buf[: i + rem])
        buf = buf[i + rem :]
    return out, buf


class Proxy:
    """Forwards one connection at a time to (host, port), recording whole packets."""

    def __init__(self, host, port, version):
        self.host, self.port, self.version = host, port, version
        self.label = "?"
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.listen_port = self.lsock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            c, _ = self.lsock.accept()
            s = socket.create_connection((self.host, self.port))
            threading.Thread(target=self.pump, args=(c, s, "C"), daemon=True).start()
            threading.Thread(target=self.pump, args=(s, c, "S"), daemon=True).start()

    def pump(self, src, dst, d):
        buf = b""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            buf += data
            pkts, buf = split_packets(buf)
            with LOCK:
                for p in pkts:
                    OUT.append((d, self.version, self.label, p.hex()))
            dst.sendall(data)


def wait_for(pred, timeout=5):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def raw(host, port, version, label, data, wait=1.0):
    """Sends raw bytes, records what comes back until the server closes or `wait` passes."""
    with LOCK:
        OUT.append(("C", version, label, data.hex()))
    s = socket.create_connection((host, port))
    s.sendall(data)
    s.settimeout(wait)
    buf = b""
    closed = False
    try:
        while True:
            d = s.recv(65536)
            if not d:
                closed = True
                break
            buf += d
    except socket.timeout:
        pass
    s.close()
    pkts, rest = split_packets(buf)
    with LOCK:
        for p in pkts:
            OUT.append(("S", version, label + "-reply", p.hex()))
        OUT.append(("#", version, label, "server closed" if closed else "server kept the socket open"))


def session(proxy, protocol, client_id, step_label, body):
    proxy.label = step_label
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    got = []
    c.on_message = lambda cl, ud, m: got.append(m)
    body(c, proxy, got)


def rabbitmq(mqtt_port, amqp_port):
    import pika

    host = "127.0.0.1"
    for version, proto in (("3.1.1", mqtt.MQTTv311), ("3.1", mqtt.MQTTv31)):
        p = Proxy(host, mqtt_port, version)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pier-golden-" + version, protocol=proto)
        c.username_pw_set("guest", "guest")
        c.will_set("pier/golden/will", b"gone", qos=1, retain=False)
        got = []
        c.on_message = lambda cl, ud, m: got.append(m)
        p.label = "connect"
        c.connect("127.0.0.1", p.listen_port, keepalive=30)
        c.loop_start()
        wait_for(lambda: c.is_connected())
        p.label = "subscribe"
        c.subscribe([("pier/golden/#", 1), ("pier/+/q0", 0)])
        time.sleep(0.3)
        p.label = "publish-qos0"
        c.publish("pier/x/q0", b"qos0 payload", qos=0)
        time.sleep(0.3)
        p.label = "publish-qos1"
        c.publish("pier/golden/q1", b"qos1 payload", qos=1).wait_for_publish(3)
        time.sleep(0.3)
        p.label = "publish-qos2"
        c.publish("pier/golden/q2", b"qos2 payload", qos=2)
        time.sleep(0.5)
        p.label = "publish-retain"
        c.publish("pier/golden/retained", b"kept", qos=1, retain=True).wait_for_publish(3)
        time.sleep(0.3)
        p.label = "publish-empty-payload"
        c.publish("pier/golden/empty", b"", qos=1).wait_for_publish(3)
        time.sleep(0.3)
        p.label = "publish-binary-payload"
        c.publish("pier/golden/bin", bytes(range(256)) * 3, qos=1).wait_for_publish(3)
        time.sleep(0.5)
        p.label = "unsubscribe"
        c.unsubscribe(["pier/golden/#", "pier/+/q0"])
        time.sleep(0.3)
        p.label = "ping"
        c._send_pingreq()
        time.sleep(0.3)
        p.label = "disconnect"
        c.disconnect()
        time.sleep(0.3)
        c.loop_stop()
        # clear the retained message
        c2 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pier-golden-clear", protocol=proto)
        c2.username_pw_set("guest", "guest")
        c2.connect("127.0.0.1", mqtt_port)
        c2.loop_start()
        wait_for(lambda: c2.is_connected())
        c2.publish("pier/golden/retained", b"", qos=1, retain=True).wait_for_publish(3)
        c2.disconnect()
        c2.loop_stop()

    # CONNECTs the broker refuses, on raw sockets.
    def connect_bytes(name, level, flags=0x02, client=b"pier-raw", extra=b""):
        vh = len(name).to_bytes(2, "big") + name + bytes([level, flags]) + (30).to_bytes(2, "big")
        pl = len(client).to_bytes(2, "big") + client + extra
        body = vh + pl
        return bytes([0x10, len(body)]) + body

    raw(host, mqtt_port, "raw", "connect-level-5", connect_bytes(b"MQTT", 5, extra=b""))
    raw(host, mqtt_port, "raw", "connect-level-6", connect_bytes(b"MQTT", 6))
    raw(host, mqtt_port, "raw", "connect-bad-name", connect_bytes(b"MQTX", 4))
    raw(host, mqtt_port, "raw", "connect-no-credentials", connect_bytes(b"MQTT", 4))
    raw(
        host,
        mqtt_port,
        "raw",
        "connect-bad-password",
        connect_bytes(b"MQTT", 4, flags=0xC2, extra=b"\x00\x05guest\x00\x05wrong"),
    )
    raw(
        host,
        mqtt_port,
        "raw",
        "connect-empty-client-id-persistent",
        connect_bytes(b"MQTT", 4, flags=0xC0, client=b"", extra=b"\x00\x05guest\x00\x05guest"),
    )
    raw(
        host,
        mqtt_port,
        "raw",
        "connect-empty-client-id-clean",
        connect_bytes(b"MQTT", 4, flags=0xC2, client=b"", extra=b"\x00\x05guest\x00\x05guest") + b"\xe0\x00",
    )
    raw(host, mqtt_port, "raw", "first-packet-not-connect", b"\xc0\x00")

    # Topic mapping: what routing key does an AMQP consumer see for an MQTT topic?
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port))
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "#")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pier-golden-map", protocol=mqtt.MQTTv311)
    c.username_pw_set("guest", "guest")
    got = []
    c.on_message = lambda cl, ud, m: got.append(m.topic)
    c.connect("127.0.0.1", mqtt_port)
    c.loop_start()
    wait_for(lambda: c.is_connected())
    topics = ["a/b/c", "a.b/c", "a.b.c", "/a/", "a//b", "a*b", "caf\u00e9/x", "$x/y", "a b/c", "spBv1.0/g/NDATA/n"]
    for t in topics:
        c.publish(t, b"m", qos=1).wait_for_publish(3)
    time.sleep(0.5)
    for t in topics:
        m = ch.basic_get(q, auto_ack=True)
        key = m[0].routing_key if m[0] else "<none>"
        OUT.append(("K", t, key, ""))
    # The other way: AMQP routing key -> MQTT topic a subscriber sees.
    c.subscribe("amqp/#", qos=1)
    time.sleep(0.5)
    keys = ["amqp.x.y", "amqp.a*b", "amqp..z", "amqp.a/b"]
    for k in keys:
        ch.basic_publish("amq.topic", k, b"m")
    wait_for(lambda: len(got) >= len(keys))
    for k, t in zip(keys, got):
        OUT.append(("M", k, t, ""))
    # Wildcard subscription filters map too: `+` to `*`.
    sub_topics = []
    c.on_message = lambda cl, ud, m: sub_topics.append(m.topic)
    c.subscribe("wild/+/x", qos=0)
    time.sleep(0.5)
    for k in ["wild.a.x", "wild.a.b.x", "wild.a.y"]:
        ch.basic_publish("amq.topic", k, b"m")
    time.sleep(0.5)
    OUT.append(("W", "wild/+/x", ",".join(sub_topics), ""))
    c.disconnect()
    c.loop_stop()
    conn.close()


def mosquitto(port):
    host = "127.0.0.1"
    p = Proxy(host, port, "5")
    v5 = mqtt.MQTTv5

    # A full session: CONNECT with properties and a will with properties.
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pier-golden-v5", protocol=v5)
    c.username_pw_set("user", "pass")
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = 10
    wp.MessageExpiryInterval = 120
    wp.ContentType = "text/plain"
    wp.PayloadFormatIndicator = 1
    wp.ResponseTopic = "pier/reply"
    wp.CorrelationData = b"\x01\x02"
    wp.UserProperty = [("will", "yes")]
    c.will_set("pier/will", b"bye", qos=1, retain=False, properties=wp)
    cp = Properties(PacketTypes.CONNECT)
    cp.SessionExpiryInterval = 300
    cp.ReceiveMaximum = 20
    cp.MaximumPacketSize = 1 << 20
    cp.TopicAliasMaximum = 10
    cp.RequestResponseInformation = 1
    cp.RequestProblemInformation = 1
    cp.UserProperty = [("app", "pier"), ("app", "golden")]
    got = []
    c.on_message = lambda cl, ud, m: got.append(m)
    p.label = "connect-properties"
    c.connect(host, p.listen_port, keepalive=60, clean_start=True, properties=cp)
    c.loop_start()
    wait_for(lambda: c.is_connected())
    p.label = "subscribe-options"
    sp = Properties(PacketTypes.SUBSCRIBE)
    sp.SubscriptionIdentifier = 42
    c.subscribe(
        [
            ("pier/a/#", SubscribeOptions(qos=2, noLocal=False, retainAsPublished=True, retainHandling=1)),
            ("pier/b/+", SubscribeOptions(qos=1, noLocal=True, retainHandling=2)),
            ("$share/grp/pier/c", SubscribeOptions(qos=0)),
        ],
        properties=sp,
    )
    time.sleep(0.3)
    p.label = "publish-properties-qos1"
    pp = Properties(PacketTypes.PUBLISH)
    pp.PayloadFormatIndicator = 1
    pp.MessageExpiryInterval = 60
    pp.ContentType = "application/json"
    pp.ResponseTopic = "pier/reply"
    pp.CorrelationData = b"corr-1"
    pp.UserProperty = [("k", "v"), ("k", "v2")]
    c.publish("pier/a/x", b'{"a":1}', qos=1, properties=pp).wait_for_publish(3)
    time.sleep(0.3)
    p.label = "publish-qos2"
    c.publish("pier/a/y", b"exactly once", qos=2).wait_for_publish(3)
    time.sleep(0.5)
    p.label = "publish-topic-alias"
    ap = Properties(PacketTypes.PUBLISH)
    ap.TopicAlias = 1
    c.publish("pier/a/alias", b"first", qos=0, properties=ap)
    time.sleep(0.2)
    c.publish("", b"second", qos=0, properties=ap)
    time.sleep(0.3)
    p.label = "publish-no-subscribers"
    c.publish("pier/nobody", b"x", qos=1).wait_for_publish(3)
    time.sleep(0.3)
    p.label = "unsubscribe"
    c.unsubscribe(["pier/b/+", "pier/never"])
    time.sleep(0.3)
    p.label = "ping"
    c._send_pingreq()
    time.sleep(0.3)
    p.label = "disconnect-with-will"
    dp = Properties(PacketTypes.DISCONNECT)
    dp.SessionExpiryInterval = 0
    dp.ReasonString = "golden done"
    from paho.mqtt.reasoncodes import ReasonCode as RC

    c.disconnect(reasoncode=RC(PacketTypes.DISCONNECT, "Disconnect with will message"), properties=dp)
    time.sleep(0.3)
    c.loop_stop()

    # Empty client id: the server assigns one (CONNACK property 0x12).
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=v5)
    p.label = "connect-assigned-id"
    c.connect(host, p.listen_port, keepalive=120, clean_start=True)
    c.loop_start()
    wait_for(lambda: c.is_connected())
    p.label = "publish-retain-not-available"
    c.publish("pier/r", b"r", qos=0, retain=True)
    time.sleep(0.5)
    c.loop_stop()

    # Enhanced authentication with a method mosquitto does not know: CONNACK 0x8C.
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pier-golden-auth", protocol=v5)
    ap = Properties(PacketTypes.CONNECT)
    ap.AuthenticationMethod = "SCRAM-SHA-1"
    ap.AuthenticationData = b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    p.label = "connect-auth-method"
    c.connect(host, p.listen_port, keepalive=60, properties=ap)
    c.loop_start()
    time.sleep(0.5)
    c.loop_stop()

    # Raw packets mosquitto refuses.
    def v5_connect(extra_props=b"", flags=0x02):
        name = b"\x00\x04MQTT"
        props = bytes([len(extra_props)]) + extra_props
        body = name + bytes([5, flags]) + (60).to_bytes(2, "big") + props + b"\x00\x03raw"
        return bytes([0x10, len(body)]) + body

    raw(host, port, "5", "connect-duplicate-property", v5_connect(b"\x11\x00\x00\x00\x0a\x11\x00\x00\x00\x0a"))
    raw(host, port, "5", "connect-receive-maximum-0", v5_connect(b"\x21\x00\x00"))
    raw(host, port, "5", "connect-unknown-property", v5_connect(b"\x7f\x00"))
    raw(host, port, "5", "connect-reserved-flag", v5_connect(flags=0x03))
    ok = v5_connect()
    raw(host, port, "5", "publish-qos3-after-connect", ok + b"\x36\x05\x00\x01ax")
    raw(host, port, "5", "subscribe-bad-flags-after-connect", ok + b"\x80\x06\x00\x01\x00\x01a\x00")
    raw(host, port, "5", "publish-topic-alias-0-after-connect", ok + b"\x30\x07\x00\x01a\x03\x23\x00\x00")
    raw(host, port, "5", "connect-level-6", v5_connect().replace(b"MQTT\x05", b"MQTT\x06", 1))


if __name__ == "__main__":
    which = sys.argv[1]
    if which == "rabbitmq":
        rabbitmq(int(sys.argv[2]) if len(sys.argv) > 2 else 1884, int(sys.argv[3]) if len(sys.argv) > 3 else 5673)
        print("# RabbitMQ 3.10.8 MQTT plugin; clients: paho-mqtt %s (3.1.1 and 3.1) and raw sockets" % paho.mqtt.__version__)
    else:
        mosquitto(int(sys.argv[2]) if len(sys.argv) > 2 else 7001)
        print("# mosquitto 2 (MQTT 5.0 server); client: paho-mqtt %s MQTTv5, and raw sockets" % paho.mqtt.__version__)
    print("# direction version label hex  (K/M/W lines are tab-separated: K mqtt-topic amqp-key; M amqp-key mqtt-topic; W filter topics-received)")
    time.sleep(0.5)
    with LOCK:
        for d, v, label, h in OUT:
            if d in "KMW":
                # tab-separated: topics may contain spaces
                print("%s\t%s\t%s" % (d, v, label))
            else:
                print(d, v, label, h)
