"""The STOMP server (1.0, 1.1, 1.2): connecting, destinations, cross-protocol routing and
header mapping, permissions, hostile input, stomp.py clients and management. Exact frames
with a raw socket client (stomp_raw.py), the rest with stomp.py 9.0.0. Every test runs
against RabbitMQ 3.10.8's STOMP plugin too (PIER_TEST_STOMP_PORT, default 61614) except
those marked pier_only. Sessions (acks, transactions, receipts, durable subscriptions,
heart-beats, flow control): test_stomp_sessions.py."""

from __future__ import annotations

import urllib.parse
import uuid

import pika
import pytest
import stomp

from helpers import wait_until
from stomp_helpers import (  # noqa: F401 - port, raw and qname are fixtures
    amqp_get, assert_still_serving, port, qname, queue_depth, raw, subscribe)


# ---------------------------------------------------------------- connecting

@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_connect_negotiates_version(raw, version):
    c = raw(connect=False)
    f = c.connect(version=version)
    assert f.get("version") == version
    assert f.get("session", "").startswith("session-")
    assert f.get("heart-beat") == "0,0"
    assert f.get("server")


def test_connect_without_accept_version_is_1_0(raw):
    c = raw(connect=False)
    c.send("CONNECT", {"login": "guest", "passcode": "guest"})
    assert c.expect("CONNECTED").get("version") == "1.0"


def test_stomp_frame_connects(raw):
    c = raw(connect=False)
    c.send("STOMP", {"accept-version": "1.2", "host": "/", "login": "guest", "passcode": "guest"})
    assert c.expect("CONNECTED").get("version") == "1.2"


def test_version_mismatch(raw):
    c = raw(connect=False)
    c.send("CONNECT", {"accept-version": "2.0"})
    f = c.expect("ERROR")
    assert f.get("message") == "Version mismatch"
    assert f.body == b"Supported versions are 1.0,1.1,1.2\n"
    assert f.get("version") == "1.0,1.1,1.2"


def test_default_user_when_no_login(raw):
    c = raw(connect=False)
    f = c.connect(login=None)
    assert f.get("version") == "1.2"


def test_bad_password_is_refused(raw, broker):
    c = raw(connect=False)
    c.send("CONNECT", {"accept-version": "1.2", "host": "/", "login": "guest",
                       "passcode": "wrong"})
    f = c.expect("ERROR")
    assert f.get("message") == "Bad CONNECT"
    assert f.body == b"Access refused for user 'guest'\n"
    if not broker.external:  # RabbitMQ 3.10 leaves the socket open after a refused login
        assert c.wait_closed()


def test_unknown_vhost_is_refused(raw, broker):
    c = raw(connect=False)
    c.send("CONNECT", {"accept-version": "1.2", "host": "no-such-vhost", "login": "guest",
                       "passcode": "guest"})
    f = c.expect("ERROR")
    assert f.get("message") == "Bad CONNECT"
    assert f.body == b"Virtual host 'no-such-vhost' access denied"
    if not broker.external:
        assert c.wait_closed()


def test_host_header_selects_the_vhost(raw, broker, qname):
    q = qname()
    c = raw(host="other")
    c.send("SEND", {"destination": f"/queue/{q}", "receipt": "r"}, "in other")
    c.expect("RECEIPT")
    with broker.connect(vhost="other") as conn:
        ch = conn.channel()
        m, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"in other"
        ch.queue_delete(q)


def test_frame_before_connect_is_refused(raw):
    c = raw(connect=False)
    c.send("SEND", {"destination": "/queue/x"}, "hi")
    f = c.expect("ERROR")
    assert f.get("message") == "Illegal command"
    assert f.body == b"You must log in using CONNECT first"


# ------------------------------------------------------- destinations, cross-protocol

def test_send_to_queue_reaches_amqp_with_mapped_properties(raw, broker, qname):
    q = qname()
    c = raw()
    c.send("SEND", {"destination": f"/queue/{q}", "content-type": "text/plain",
                    "content-encoding": "gzip", "persistent": "true", "priority": "3",
                    "correlation-id": "c1", "reply-to": "somewhere", "expiration": "60000",
                    "amqp-message-id": "m1", "timestamp": "12345", "type": "t1",
                    "app-id": "a1", "user-id": "guest", "foo": "bar", "receipt": "r1"},
           "hello")
    assert c.expect("RECEIPT").get("receipt-id") == "r1"
    m, props, body = amqp_get(broker, q)
    assert body == b"hello"
    assert m.routing_key == q and m.exchange == ""
    assert props.content_type == "text/plain"
    assert props.content_encoding == "gzip"
    assert props.delivery_mode == 2
    assert props.priority == 3
    assert props.correlation_id == "c1"
    assert props.reply_to == "somewhere"
    assert props.expiration == "60000"
    assert props.message_id == "m1"
    assert props.timestamp == 12345
    assert props.type == "t1"
    assert props.app_id == "a1"
    assert props.user_id == "guest"
    assert props.headers["foo"] == "bar"
    # The queue /queue/ declared is durable.
    with broker.connect() as conn:
        conn.channel().queue_declare(q, passive=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            conn.channel().queue_declare(q, durable=False)


def test_message_id_is_not_allowed_on_send(raw, qname):
    c = raw()
    c.send("SEND", {"destination": f"/queue/{qname()}", "message-id": "x"}, "hi")
    f = c.expect("ERROR")
    assert f.get("message") == "Invalid header"
    assert f.body == b"'message-id' is not allowed on 'SEND'.\n"


def test_amqp_publish_reaches_stomp_subscriber_with_headers(raw, broker, qname):
    q = qname()
    c = raw()
    c.send("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "s1", "receipt": "r"})
    c.expect("RECEIPT")
    with broker.connect() as conn:
        conn.channel().basic_publish(
            "", q, b"hi\x00there",
            pika.BasicProperties(content_type="a/b", content_encoding="gzip",
                                 headers={"h1": "v1", "n": 5, "b": True},
                                 delivery_mode=2, reply_to="amqreply", message_id="mm",
                                 correlation_id="cc", timestamp=99, type="ty", app_id="ap",
                                 priority=2, expiration="100000"))
    f = c.expect("MESSAGE")
    assert f.body == b"hi\x00there"
    names = [k for k, _ in f.headers]
    assert names[:4] == ["subscription", "destination", "message-id", "redelivered"]
    assert f.get("subscription") == "s1"
    assert f.get("destination") == f"/queue/{q}"
    assert f.get("message-id").startswith("T_s1@@session-")
    assert f.get("redelivered") == "false"
    assert f.get("ack") is None  # auto ack
    assert f.get("h1") == "v1" and f.get("n") == "5" and f.get("b") is None
    assert f.get("reply-to") == "/reply-queue/amqreply"
    assert f.get("amqp-message-id") == "mm"
    assert f.get("persistent") == "true"
    assert f.get("priority") == "2"
    assert f.get("timestamp") == "99"
    assert f.get("type") == "ty"
    assert f.get("app-id") == "ap"
    assert f.get("expiration") == "100000"
    assert f.get("correlation-id") == "cc"
    assert f.get("content-type") == "a/b"
    assert f.get("content-encoding") == "gzip"
    assert f.get("content-length") == "8"


@pytest.mark.same_node("transient and exclusive queues (and their bindings) live on the node "
                       "that declared them: the AMQP side talks to the STOMP connection's node")
def test_amq_queue_needs_an_existing_queue(raw, broker, qname):
    c = raw()
    missing = qname()
    c.send("SUBSCRIBE", {"destination": f"/amq/queue/{missing}", "id": "1"})
    f = c.expect("ERROR")
    assert f.get("message") == "not_found"
    assert f.body.decode() == f"NOT_FOUND - no queue '{missing}' in vhost '/'"
    assert c.wait_closed()
    q = qname()
    with broker.connect() as conn:
        conn.channel().queue_declare(q, auto_delete=False)
    c2 = raw()
    c2.send("SUBSCRIBE", {"destination": f"/amq/queue/{q}", "id": "1", "receipt": "r"})
    c2.expect("RECEIPT")
    c2.send("SEND", {"destination": f"/amq/queue/{q}"}, "via amq/queue")
    f = c2.expect("MESSAGE")
    assert f.body == b"via amq/queue"
    assert f.get("destination") == f"/queue/{q}"


@pytest.mark.same_node("transient and exclusive queues (and their bindings) live on the node "
                       "that declared them: the AMQP side talks to the STOMP connection's node")
def test_topic_uses_amq_topic(raw, broker, qname):
    key = f"stomp.{uuid.uuid4().hex[:8]}"
    c = raw()
    c.send("SUBSCRIBE", {"destination": f"/topic/{key}.*", "id": "t", "receipt": "r"})
    c.expect("RECEIPT")
    q = qname()
    with broker.connect() as conn:
        ch = conn.channel()
        ch.queue_declare(q, auto_delete=False)
        ch.queue_bind(q, "amq.topic", f"{key}.#")
        ch.basic_publish("amq.topic", f"{key}.a", b"from amqp")
        f = c.expect("MESSAGE")
        assert f.body == b"from amqp"
        assert f.get("destination") == f"/topic/{key}.a"
        assert f.get("subscription") == "t"
        c.send("SEND", {"destination": f"/topic/{key}.b", "receipt": "r2"}, "from stomp")
        c.expect("MESSAGE")  # its own subscription sees it too
        c.expect("RECEIPT")
    m, _, body = amqp_get(broker, q)
    # the AMQP-published one first, then the STOMP one
    assert body == b"from amqp"
    m, _, body = amqp_get(broker, q)
    assert body == b"from stomp" and m.routing_key == f"{key}.b" and m.exchange == "amq.topic"


def test_exchange_destinations(raw):
    c = raw()
    c.send("SUBSCRIBE", {"destination": "/exchange/amq.fanout", "id": "f", "receipt": "r"})
    c.expect("RECEIPT")
    c.send("SUBSCRIBE", {"destination": "/exchange/amq.direct/k1", "id": "d", "receipt": "r"})
    c.expect("RECEIPT")
    c.send("SEND", {"destination": "/exchange/amq.fanout"}, "fan")
    f = c.expect("MESSAGE")
    assert (f.body, f.get("destination"), f.get("subscription")) == \
        (b"fan", "/exchange/amq.fanout", "f")
    c.send("SEND", {"destination": "/exchange/amq.direct/k1"}, "direct")
    f = c.expect("MESSAGE")
    assert (f.body, f.get("destination"), f.get("subscription")) == \
        (b"direct", "/exchange/amq.direct/k1", "d")


def test_send_to_missing_exchange(raw):
    c = raw()
    c.send("SEND", {"destination": "/exchange/pier-no-such-x/k"}, "x")
    f = c.expect("ERROR")
    assert f.get("message") == "not_found"
    assert f.body == b"NOT_FOUND - no exchange 'pier-no-such-x' in vhost '/'"
    assert c.wait_closed()


def test_unknown_destination(raw):
    c = raw()
    c.send("SEND", {"destination": "/foo/bar"}, "x")
    f = c.expect("ERROR")
    assert f.get("message") == "Unknown destination"
    assert f.body.decode() == (
        "'/foo/bar' is not a valid destination.\nValid destination types are: /temp-queue, "
        "/exchange, /topic, /queue, /amq/queue, /reply-queue/.\n")


@pytest.mark.parametrize("dest,body", [
    ("/queue/", "'/' is not a valid queue destination\n"),
    ("/queue/a/b", "'/a/b' is not a valid queue destination\n"),
    ("/amq/queue/", "'/' is not a valid amqqueue destination\n"),
    ("/topic/", "'/' is not a valid topic destination\n"),
    ("/exchange/x/a/b", "'/x/a/b' is not a valid exchange destination\n"),
    ("/temp-queue/", "'/' is not a valid temp_queue destination\n"),
])
def test_invalid_destination(raw, dest, body):
    c = raw()
    c.send("SEND", {"destination": dest}, "x")
    f = c.expect("ERROR")
    assert f.get("message") == "Invalid destination"
    assert f.body.decode() == body


@pytest.mark.same_node("transient and exclusive queues (and their bindings) live on the node "
                       "that declared them: the AMQP side talks to the STOMP connection's node")
def test_temp_queue_reply_to(raw, broker, qname):
    svc = qname("svc")
    c = raw()
    c.send("SEND", {"destination": f"/queue/{svc}", "reply-to": "/temp-queue/replies",
                    "receipt": "r"}, "request")
    c.expect("RECEIPT")
    m, props, body = amqp_get(broker, svc)
    assert body == b"request"
    assert props.reply_to.startswith("amq.gen-")
    with broker.connect() as conn:
        conn.channel().basic_publish("", props.reply_to, b"response")
    f = c.expect("MESSAGE")
    assert f.body == b"response"
    assert f.get("subscription") == "/temp-queue/replies"
    assert f.get("destination") == f"/queue/{props.reply_to}"
    # Only a reply address: a SEND to it is refused.
    c.send("SEND", {"destination": "/temp-queue/replies"}, "to myself")
    f = c.expect("ERROR")
    assert f.get("message") == "Invalid destination"
    assert f.body == b"'/temp-queue/replies' is not a valid destination for 'SEND'\n"


def test_temp_queue_cannot_be_subscribed(raw):
    c = raw()
    c.send("SUBSCRIBE", {"destination": "/temp-queue/x", "id": "1"})
    f = c.expect("ERROR")
    assert f.get("message") == "Invalid destination"
    assert f.body == b"'/temp-queue/x' is not a valid destination for 'SUBSCRIBE'\n"


@pytest.mark.same_node("transient and exclusive queues (and their bindings) live on the node "
                       "that declared them: the AMQP side talks to the STOMP connection's node")
def test_reply_queue_send(raw, broker, qname):
    q = qname()
    with broker.connect() as conn:
        conn.channel().queue_declare(q, auto_delete=False)
    c = raw()
    c.send("SEND", {"destination": f"/reply-queue/{q}", "receipt": "r"}, "reply")
    c.expect("RECEIPT")
    assert amqp_get(broker, q)[2] == b"reply"


def test_x_headers_declare_queue_arguments(raw, broker, qname):
    q = qname()
    c = raw()
    c.send("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "1", "x-max-length": "2",
                         "receipt": "r"})
    c.expect("RECEIPT")
    c.send("UNSUBSCRIBE", {"id": "1", "receipt": "u"})
    c.expect("RECEIPT")
    with broker.connect() as conn:
        ch = conn.channel()
        # The declared argument is in force (inequivalent without it) ...
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare(q, durable=True)
        assert e.value.reply_code == 406
        ch = conn.channel()
        ch.queue_declare(q, durable=True, arguments={"x-max-length": 2})
        for i in range(3):
            ch.basic_publish("", q, str(i).encode())
    wait_until(lambda: queue_depth(broker, q) == 2, message="x-max-length 2")



# ---------------------------------------------------------------- permissions

@pytest.fixture
def limited_user(mgmt):
    name = f"pier-stomp-{uuid.uuid4().hex[:6]}"
    assert mgmt.call("PUT", f"/users/{name}", {"password": "pw", "tags": ""})[0] in (201, 204)
    assert mgmt.call("PUT", f"/permissions/%2F/{name}",
                     {"configure": "^pier-stomp-ok", "write": "^(pier-stomp-ok|amq\\.default|amq\\.topic)",
                      "read": "^pier-stomp-ok"})[0] in (201, 204)
    assert mgmt.call("PUT", f"/topic-permissions/%2F/{name}",
                     {"exchange": "amq.topic", "write": "^allowed\\.", "read": "^allowed\\."}
                     )[0] in (201, 204)
    yield name
    mgmt.call("DELETE", f"/users/{name}")


def test_send_to_queue_needs_configure(raw, limited_user):
    c = raw(login=limited_user, passcode="pw")
    c.send("SEND", {"destination": "/queue/pier-stomp-denied"}, "x")
    f = c.expect("ERROR")
    assert f.get("message") == "access_refused"
    assert f.body.decode() == (f"ACCESS_REFUSED - access to queue 'pier-stomp-denied' in vhost "
                               f"'/' refused for user '{limited_user}'")
    assert c.wait_closed()


def test_subscribe_needs_read(raw, broker, limited_user):
    q = "pier-stomp-noread"
    with broker.connect() as conn:
        conn.channel().queue_declare(q, auto_delete=False)
    try:
        c = raw(login=limited_user, passcode="pw")
        c.send("SUBSCRIBE", {"destination": f"/amq/queue/{q}", "id": "1"})
        f = c.expect("ERROR")
        assert f.get("message") == "access_refused"
        assert f.body.decode() == (f"ACCESS_REFUSED - access to queue '{q}' in vhost '/' "
                                   f"refused for user '{limited_user}'")
    finally:
        with broker.connect() as conn:
            conn.channel().queue_delete(q)


def test_topic_permission_on_send(raw, limited_user):
    c = raw(login=limited_user, passcode="pw")
    c.send("SEND", {"destination": "/topic/forbidden.key"}, "x")
    f = c.expect("ERROR")
    assert f.get("message") == "access_refused"
    assert f.body.decode() == (f"ACCESS_REFUSED - access to topic 'forbidden.key' in "
                               f"exchange 'amq.topic' in vhost '/' refused for user "
                               f"'{limited_user}'")


def test_allowed_operations_work_for_limited_user(raw, broker, limited_user):
    q = f"pier-stomp-ok-{uuid.uuid4().hex[:6]}"
    try:
        c = raw(login=limited_user, passcode="pw")
        subscribe(c, f"/queue/{q}")
        c.send("SEND", {"destination": f"/queue/{q}"}, "allowed")
        assert c.expect("MESSAGE").body == b"allowed"
    finally:
        with broker.connect() as conn:
            conn.channel().queue_delete(q)


# ------------------------------------------------------------------ hostile input


def test_unknown_command(raw):
    c = raw()
    c.send_raw(b"FOO\n\n\x00")
    f = c.expect("ERROR")
    assert f.get("message") == "Bad command"
    assert f.body == b'Could not interpret command "FOO"\n'
    assert_still_serving(raw)


@pytest.mark.parametrize("garbage", [
    b"SEND\ndestination:/queue/x\nbad:\\t\n\nx\x00",   # undefined escape
    b"SEND\nno colon here\n\nx\x00",                    # header without a colon
    b"SEND\ndestination:/queue/x\ncontent-length:abc\n\nx\x00",
])
def test_malformed_frames_close_the_connection(raw, garbage):
    c = raw()
    c.send_raw(garbage)
    assert c.wait_closed()
    assert_still_serving(raw)


@pytest.mark.pier_only  # RabbitMQ 3.10.8 has no frame size limit
def test_oversized_frame(raw):
    c = raw()
    try:
        c.send_raw(b"SEND\ndestination:/queue/x\ncontent-length:%d\n\n" % (5 * 1024 * 1024))
        c.send_raw(b"x" * (5 * 1024 * 1024) + b"\x00")
    except OSError:
        pass
    f = c.recv()
    assert f is not None and f.command == "ERROR" and f.get("message") == "Frame too large"
    assert c.wait_closed()
    assert_still_serving(raw)


@pytest.mark.pier_only
def test_pure_garbage(raw):
    c = raw(connect=False)
    c.send_raw(bytes(range(1, 256)) * 4)
    f = c.recv()
    assert f is None or f.command == "ERROR"
    assert c.wait_closed()
    assert_still_serving(raw)


# -------------------------------------------------------------------- stomp.py

class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = []

    def on_message(self, frame):
        self.messages.append(frame)


@pytest.mark.parametrize("cls", [stomp.Connection12, stomp.Connection11, stomp.Connection10])
def test_stomp_py_round_trip(port, cls, qname):
    q = qname()
    conn = cls([("127.0.0.1", port)], vhost="/") if cls is not stomp.Connection10 \
        else cls([("127.0.0.1", port)])
    listener = Listener()
    conn.set_listener("l", listener)
    conn.connect("guest", "guest", wait=True)
    try:
        if cls is stomp.Connection10:
            conn.subscribe(f"/queue/{q}", ack="client")
        else:
            conn.subscribe(f"/queue/{q}", id="s", ack="client")
        conn.send(f"/queue/{q}", "hello stomp.py", headers={"x-custom": "1"})
        wait_until(lambda: listener.messages, message="a message")
        frame = listener.messages[0]
        assert frame.body == "hello stomp.py"
        assert frame.headers["x-custom"] == "1"
        if cls is stomp.Connection12:
            conn.ack(frame.headers["ack"])
        elif cls is stomp.Connection11:
            conn.ack(frame.headers["message-id"], "s")
        else:
            conn.ack(frame.headers["message-id"])
    finally:
        conn.disconnect()


# ------------------------------------------------------------------ management

def test_connection_listed_with_protocol(raw, mgmt):
    raw(version="1.1")
    raw(version="1.2")

    def stomp_protocols():
        status, conns = mgmt.call("GET", "/connections")
        return sorted(c["protocol"] for c in conns or [] if c["protocol"].startswith("STOMP"))

    wait_until(lambda: {"STOMP 1.1", "STOMP 1.2"} <= set(stomp_protocols()),
               timeout=10, message="STOMP connections in /api/connections")
    status, conns = mgmt.call("GET", "/connections")
    c = next(c for c in conns if c["protocol"] == "STOMP 1.2")
    assert c["channels"] == 1
    assert c["client_properties"].get("product") == "STOMP client"
    assert c["user"] == "guest" and c["vhost"] == "/"



def test_management_can_close_a_stomp_connection(raw, mgmt):
    c = raw()
    local = c.sock.getsockname()

    def name():
        status, conns = mgmt.call("GET", "/connections")
        return next((x["name"] for x in conns or []
                     if x.get("peer_port") == local[1] and x["protocol"].startswith("STOMP")),
                    None)

    conn_name = wait_until(name, timeout=10, message="the connection listed")
    status, _ = mgmt.call("DELETE", "/connections/" + urllib.parse.quote(conn_name, safe=""))
    assert status in (200, 204)
    assert c.wait_closed(timeout=10)


def test_queue_type_from_subscribe_header(raw, mgmt, qname):
    q = qname()
    c = raw()
    subscribe(c, f"/queue/{q}", x_queue_type="quorum")
    status, info = mgmt.call("GET", "/queues/%2F/" + urllib.parse.quote(q, safe=""))
    assert status == 200
    assert info["type"] == "quorum"
    assert info["durable"] is True


@pytest.mark.pier_only
def test_ctl_list_stomp_connections(raw, broker):
    import json
    import subprocess

    from conftest import pier_binary
    raw(version="1.1")
    out = subprocess.run(
        [str(pier_binary()), "ctl", "--url", f"http://127.0.0.1:{broker.process.http_port}",
         "--json", "list_stomp_connections", "name", "protocol", "user"],
        capture_output=True, text=True, timeout=30, check=True).stdout
    rows = json.loads(out)
    assert rows and all(r["protocol"].startswith("STOMP") for r in rows)
    assert any(r["protocol"] == "STOMP 1.1" and r["user"] == "guest" for r in rows)


@pytest.mark.pier_only  # RabbitMQ 3.10.8 has no header count limit
def test_too_many_headers(raw):
    c = raw()
    headers = [("destination", "/exchange/amq.fanout")] + [(f"h{i}", "v") for i in range(1500)]
    c.send("SEND", headers, "x")
    f = c.expect("ERROR")
    assert f.get("message") == "Malformed frame"
    assert f.body == b"more than 1000 headers\n"
    assert c.wait_closed()
    assert_still_serving(raw)
