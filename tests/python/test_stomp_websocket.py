"""STOMP over WebSocket (RabbitMQ's Web-STOMP: path /ws, subprotocols v12.stomp, v11.stomp,
v10.stomp, stomp; text frames). Against an external broker they run when
PIER_TEST_WEB_STOMP_PORT names its Web-STOMP port (validated against RabbitMQ 3.10.8 with
rabbitmq_web_stomp enabled on port 15680)."""

from __future__ import annotations

import time
import uuid

import pytest
import stomp
import websocket

from helpers import wait_until


@pytest.fixture
def ws_port(broker):
    if not broker.web_stomp_port:
        pytest.skip("no Web-STOMP port (PIER_TEST_WEB_STOMP_PORT)")
    return broker.web_stomp_port


def frame(command: str, headers: dict, body: str = "") -> str:
    return command + "\n" + "".join(f"{k}:{v}\n" for k, v in headers.items()) + "\n" + \
        body + "\x00"


def recv_frame(ws) -> tuple[int, str]:
    while True:
        opcode, data = ws.recv_data()
        text = data.decode()
        if text.strip("\n"):
            return opcode, text


def test_upgrade_negotiates_subprotocol_and_speaks_text(ws_port, broker):
    q = f"pier-test.ws.{uuid.uuid4().hex[:8]}"
    ws = websocket.create_connection(f"ws://127.0.0.1:{ws_port}/ws",
                                     subprotocols=["v10.stomp", "v12.stomp"], timeout=5)
    try:
        assert ws.getsubprotocol() == "v12.stomp"
        ws.send(frame("CONNECT", {"accept-version": "1.2", "host": "/", "login": "guest",
                                  "passcode": "guest"}))
        opcode, text = recv_frame(ws)
        assert opcode == websocket.ABNF.OPCODE_TEXT
        assert text.startswith("CONNECTED\n") and "version:1.2\n" in text
        ws.send(frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "1",
                                    "receipt": "r"}))
        assert recv_frame(ws)[1].startswith("RECEIPT\nreceipt-id:r\n")
        ws.send(frame("SEND", {"destination": f"/queue/{q}"}, "over websocket"))
        _, text = recv_frame(ws)
        assert text.startswith("MESSAGE\n") and text.rstrip("\n").endswith("over websocket\x00")
        # AMQP publish reaches the WebSocket subscriber too.
        with broker.connect() as conn:
            conn.channel().basic_publish("", q, b"from amqp")
        _, text = recv_frame(ws)
        assert "from amqp" in text
    finally:
        ws.close()
        with broker.connect() as conn:
            conn.channel().queue_delete(q)


@pytest.mark.parametrize("proto", [
    "v11.stomp", "v10.stomp",
    # RabbitMQ 3.10 answers only v1x.stomp; Pier also accepts plain "stomp".
    pytest.param("stomp", marks=pytest.mark.pier_only),
])
def test_each_stomp_subprotocol(ws_port, proto):
    ws = websocket.create_connection(f"ws://127.0.0.1:{ws_port}/ws", subprotocols=[proto],
                                     timeout=5)
    try:
        assert ws.getsubprotocol() == proto
    finally:
        ws.close()


@pytest.mark.pier_only
def test_other_paths_are_refused(ws_port):
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(f"ws://127.0.0.1:{ws_port}/nope", timeout=5)
    assert e.value.status_code == 404


def test_error_frame_then_close_over_websocket(ws_port):
    ws = websocket.create_connection(f"ws://127.0.0.1:{ws_port}/ws",
                                     subprotocols=["v12.stomp"], timeout=5)
    try:
        ws.send(frame("CONNECT", {"accept-version": "9.9"}))
        _, text = recv_frame(ws)
        assert text.startswith("ERROR\nmessage:Version mismatch\n")
    finally:
        ws.close()


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = []

    def on_message(self, f):
        self.messages.append(f)


def test_stomp_py_ws_connection(ws_port, broker):
    q = f"pier-test.ws.{uuid.uuid4().hex[:8]}"
    conn = stomp.WSStompConnection([("127.0.0.1", ws_port)], ws_path="/ws", vhost="/")
    listener = Listener()
    conn.set_listener("l", listener)
    conn.connect("guest", "guest", wait=True)
    try:
        conn.subscribe(f"/queue/{q}", id="s", ack="client-individual")
        for i in range(5):
            conn.send(f"/queue/{q}", f"ws {i}")
        wait_until(lambda: len(listener.messages) == 5, message="5 messages")
        assert [m.body for m in listener.messages] == [f"ws {i}" for i in range(5)]
        for m in listener.messages:
            conn.ack(m.headers["ack"])
        time.sleep(0.2)
    finally:
        conn.disconnect()
        with broker.connect() as c:
            c.channel().queue_delete(q)
