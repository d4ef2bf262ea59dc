"""MQTT over WebSocket (RabbitMQ's Web-MQTT: path /ws, subprotocol mqtt, binary frames), with
paho-mqtt's websockets transport, beside MQTT over TCP and AMQP on the same queues. Against
an external broker they run when PIER_TEST_WEB_MQTT_PORT names its Web-MQTT port (validated
against RabbitMQ 3.10.8 with rabbitmq_web_mqtt enabled on port 15681; MQTT 5 is Pier's only)."""

from __future__ import annotations

import queue
import uuid

import paho.mqtt.client as mqtt
import pytest
import websocket

STEP = 10


@pytest.fixture
def ws_port(broker):
    if not broker.web_mqtt_port:
        pytest.skip("no Web-MQTT port (PIER_TEST_WEB_MQTT_PORT)")
    return broker.web_mqtt_port


def client(port: int, transport: str, protocol=mqtt.MQTTv311) -> tuple[mqtt.Client, queue.Queue]:
    got: queue.Queue = queue.Queue()
    connected: queue.Queue = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ws-{uuid.uuid4().hex[:8]}",
                    protocol=protocol, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path="/ws")
    c.username_pw_set("guest", "guest")
    c.on_connect = lambda _c, _u, _f, rc, _p: connected.put(rc)
    c.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    rc = connected.get(timeout=STEP)
    assert not rc.is_failure, rc
    return c, got


def subscribe(c: mqtt.Client, topic: str, qos: int = 1) -> None:
    done: queue.Queue = queue.Queue()
    c.on_subscribe = lambda _c, _u, mid, _codes, _p: done.put(mid)
    _, mid = c.subscribe(topic, qos)
    assert done.get(timeout=STEP) == mid


def test_websocket_subscriber_and_tcp_publisher_share_topics(broker, ws_port):
    topic = f"ws/{uuid.uuid4().hex[:8]}/t"
    ws, ws_got = client(ws_port, "websockets")
    tcp, tcp_got = client(broker.mqtt_port, "tcp")
    try:
        subscribe(ws, topic)
        subscribe(tcp, topic)
        tcp.publish(topic, b"from tcp", qos=1).wait_for_publish(STEP)
        assert ws_got.get(timeout=STEP) == (topic, b"from tcp")
        assert tcp_got.get(timeout=STEP) == (topic, b"from tcp")
        ws.publish(topic, b"from websocket", qos=1).wait_for_publish(STEP)
        assert tcp_got.get(timeout=STEP) == (topic, b"from websocket")
        assert ws_got.get(timeout=STEP) == (topic, b"from websocket")
        # An AMQP publish to amq.topic reaches the WebSocket subscriber too.
        with broker.connect() as conn:
            conn.channel().basic_publish("amq.topic", topic.replace("/", "."), b"from amqp")
        assert ws_got.get(timeout=STEP) == (topic, b"from amqp")
    finally:
        for c in (ws, tcp):
            c.disconnect()
            c.loop_stop()


@pytest.mark.pier_only  # RabbitMQ 3.10 has no MQTT 5
def test_mqtt5_over_websocket(ws_port):
    topic = f"ws5/{uuid.uuid4().hex[:8]}"
    c, got = client(ws_port, "websockets", protocol=mqtt.MQTTv5)
    try:
        subscribe(c, topic)
        c.publish(topic, b"v5", qos=1).wait_for_publish(STEP)
        assert got.get(timeout=STEP) == (topic, b"v5")
    finally:
        c.disconnect()
        c.loop_stop()


def test_the_upgrade_negotiates_mqtt_and_frames_are_binary(ws_port):
    ws = websocket.create_connection(f"ws://127.0.0.1:{ws_port}/ws", subprotocols=["mqtt"],
                                     timeout=5)
    try:
        assert ws.getsubprotocol() == "mqtt"
        # CONNECT (3.1.1, clean session, keep alive 30, client id "w", guest/guest)
        body = (b"\x00\x04MQTT\x04\xc2\x00\x1e" + b"\x00\x01w" + b"\x00\x05guest"
                + b"\x00\x05guest")
        ws.send_binary(bytes([0x10, len(body)]) + body)
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY
        assert data == b"\x20\x02\x00\x00"
    finally:
        ws.close()
    # Another path is not the MQTT endpoint.
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(f"ws://127.0.0.1:{ws_port}/other", subprotocols=["mqtt"],
                                    timeout=5)
