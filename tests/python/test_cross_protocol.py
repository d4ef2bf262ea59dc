"""One broker, four protocols on the same routing core: STOMP to MQTT and back through
amq.topic, AMQP to both, and the listeners /api/overview shows. Validated against RabbitMQ
3.10.8 (PIER_TEST_AMQP_URL with PIER_TEST_MQTT_PORT=1884, PIER_TEST_STOMP_PORT=61614,
PIER_TEST_MGMT_URL)."""

from __future__ import annotations

import queue
import uuid

import paho.mqtt.client as mqtt
import pytest
import stomp


STEP = 10


class StompInbox(stomp.ConnectionListener):
    def __init__(self):
        self.got: queue.Queue = queue.Queue()

    def on_message(self, frame):
        self.got.put((frame.headers.get("destination"), frame.body))


def stomp_conn(broker):
    c = stomp.Connection12([("127.0.0.1", broker.stomp_port)], vhost="/")
    inbox = StompInbox()
    c.set_listener("inbox", inbox)
    c.connect("guest", "guest", wait=True)
    return c, inbox


def mqtt_client(broker):
    got: queue.Queue = queue.Queue()
    ready: queue.Queue = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"x-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv311)
    c.username_pw_set("guest", "guest")
    c.on_connect = lambda _c, _u, _f, rc, _p: ready.put(rc)
    c.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    c.on_subscribe = lambda _c, _u, mid, _codes, _p: ready.put(mid)
    c.connect("127.0.0.1", broker.mqtt_port, keepalive=30)
    c.loop_start()
    assert not ready.get(timeout=STEP).is_failure
    return c, got, ready


def test_stomp_to_mqtt_and_mqtt_to_stomp(broker):
    key = f"x.{uuid.uuid4().hex[:8]}.t"
    topic = key.replace(".", "/")
    s, inbox = stomp_conn(broker)
    m, mqtt_got, ready = mqtt_client(broker)
    try:
        _, mid = m.subscribe(topic, 1)
        assert ready.get(timeout=STEP) == mid
        s.subscribe(f"/topic/{key}", id="1", ack="auto", headers={"receipt": "sub"})
        # A receipt proves the subscription is bound before anything is sent.
        s.send(f"/topic/{key}", "from stomp", headers={"receipt": "sent"})
        assert mqtt_got.get(timeout=STEP) == (topic, b"from stomp")
        assert inbox.got.get(timeout=STEP) == (f"/topic/{key}", "from stomp")
        m.publish(topic, b"from mqtt", qos=1).wait_for_publish(STEP)
        assert inbox.got.get(timeout=STEP) == (f"/topic/{key}", "from mqtt")
        assert mqtt_got.get(timeout=STEP) == (topic, b"from mqtt")
        # And AMQP reaches both.
        with broker.connect() as conn:
            conn.channel().basic_publish("amq.topic", key, b"from amqp")
        assert mqtt_got.get(timeout=STEP) == (topic, b"from amqp")
        assert inbox.got.get(timeout=STEP) == (f"/topic/{key}", "from amqp")
    finally:
        m.disconnect()
        m.loop_stop()
        s.disconnect()


def test_overview_lists_every_protocol_listener(broker, mgmt):
    listeners = mgmt.get("/overview")["listeners"]
    ports = {(entry["protocol"], entry["port"]) for entry in listeners}
    assert ("mqtt", broker.mqtt_port) in ports, listeners
    assert ("stomp", broker.stomp_port) in ports, listeners
    if not broker.external:
        assert ("stream", broker.process.stream_port) in ports, listeners
        assert ("http/web-stomp", broker.web_stomp_port) in ports, listeners
        assert ("http/web-mqtt", broker.web_mqtt_port) in ports, listeners
