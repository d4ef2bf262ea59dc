"""Topic permissions (RabbitMQ's topic authorisation): per user, vhost and topic exchange, a
``write`` pattern on the routing keys the user publishes with and a ``read`` pattern on the
keys it binds with. Checked on topic exchanges only; no topic permission means allowed;
``{username}`` and ``{vhost}`` are expanded (``{client_id}`` only for MQTT in RabbitMQ).

The user and its permissions are set up through the management API, so the module runs as
is against RabbitMQ 3.10.8 (``PIER_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5673/%2F``;
the API is looked for at ``PIER_TEST_MGMT_URL``, default port 1 followed by the AMQP port,
e.g. 15673) and against Pier.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pika
import pika.exceptions
import pytest

from conftest import EXTERNAL_URL, PIER_CONFIG, Broker

USER = "pier-topic"
PASSWORD = "secret"


def mgmt_base(broker: Broker) -> str:
    if broker.process is not None:
        return f"http://127.0.0.1:{broker.process.http_port}/api"
    return os.environ.get("PIER_TEST_MGMT_URL", f"http://{broker.host}:1{broker.port}") + "/api"


def api(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    req.add_header("authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


@pytest.fixture(scope="module")
def setup(broker):
    """USER with full permissions on the vhost; a topic exchange `tp.<id>` guarded by a topic
    permission (write `^{username}\\.`, read `^r\\.`), a direct exchange `tp.d.<id>` with a
    (never applied) topic permission that allows nothing, and an unguarded topic exchange."""
    base = mgmt_base(broker)
    vh = q(broker.vhost)
    try:
        status, _ = api(base, "GET", "/overview")
    except OSError as e:
        pytest.skip(f"no management API at {base}: {e}")
    assert status == 200
    assert api(base, "PUT", f"/users/{USER}", {"password": PASSWORD, "tags": ""})[0] in (201, 204)
    assert api(base, "PUT", f"/permissions/{vh}/{USER}",
               {"configure": ".*", "write": ".*", "read": ".*"})[0] in (201, 204)
    uid = uuid.uuid4().hex[:8]
    names = {"topic": f"tp.{uid}", "direct": f"tp.d.{uid}", "free": f"tp.free.{uid}",
             "client": f"tp.c.{uid}"}
    conn = broker.connect()
    ch = conn.channel()
    # Durable: in cluster mode (PIER_TEST_CLUSTER) the tests' connections are on every node.
    ch.exchange_declare(names["topic"], "topic", durable=True)
    ch.exchange_declare(names["direct"], "direct", durable=True)
    ch.exchange_declare(names["free"], "topic", durable=True)
    ch.exchange_declare(names["client"], "topic", durable=True)
    conn.close()
    for x, write, read in ((names["topic"], r"^{username}\.", r"^r\."),
                           (names["direct"], "", ""),
                           (names["client"], ".*", r"^c\.{client_id}$")):
        status, body = api(base, "PUT", f"/topic-permissions/{vh}/{USER}",
                           {"exchange": x, "write": write, "read": read})
        assert status in (201, 204), body
    names["base"] = base
    yield names
    api(base, "DELETE", f"/users/{USER}")
    conn = broker.connect()
    ch = conn.channel()
    for key in ("topic", "direct", "free", "client"):
        ch.exchange_delete(names[key])
    conn.close()


def user_channel(broker: Broker):
    conn = broker.connect(user=USER, password=PASSWORD)
    return conn, conn.channel()


def refused_text(key: str, exchange: str, broker: Broker) -> str:
    return (f"ACCESS_REFUSED - access to topic '{key}' in exchange '{exchange}' in vhost "
            f"'{broker.vhost}' refused for user '{USER}'")


def test_publish_checks_the_routing_key_against_write(broker, setup):
    x = setup["topic"]
    conn, ch = user_channel(broker)
    try:
        ch.confirm_delivery()
        ch.basic_publish(x, f"{USER}.orders", b"allowed")  # {username} expanded
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish(x, "someone.else", b"refused")
        assert e.value.reply_code == 403
        assert e.value.reply_text == refused_text("someone.else", x, broker)
        # The pattern is searched for, as RabbitMQ does, and anchored here by `^`.
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish(x, f"x.{USER}.orders", b"refused")
            ch.queue_declare("", exclusive=True)
        assert e.value.reply_code == 403
        # The connection survives: a channel error only.
        assert conn.channel().is_open
    finally:
        conn.close()


def test_bind_and_unbind_check_the_binding_key_against_read(broker, setup):
    x = setup["topic"]
    conn, ch = user_channel(broker)
    try:
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, x, "r.allowed.#")
        ch.queue_unbind(queue, x, "r.allowed.#")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_bind(queue, x, f"{USER}.x")
        assert e.value.reply_code == 403
        assert e.value.reply_text == refused_text(f"{USER}.x", x, broker)
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_unbind(queue, x, "w.x")
        assert e.value.reply_code == 403
        assert e.value.reply_text == refused_text("w.x", x, broker)
        # Exchange-to-exchange: the topic exchange as the source is checked ...
        ch = conn.channel()
        dest = setup["free"]
        ch.exchange_bind(dest, x, "r.e2e")
        ch.exchange_unbind(dest, x, "r.e2e")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.exchange_bind(dest, x, "w.e2e")
        assert e.value.reply_text == refused_text("w.e2e", x, broker)
        # ... as the destination it is not.
        ch = conn.channel()
        ch.exchange_bind(x, dest, "w.e2e")
        ch.exchange_unbind(x, dest, "w.e2e")
    finally:
        conn.close()


def test_non_topic_and_unguarded_exchanges_are_not_checked(broker, setup):
    conn, ch = user_channel(broker)
    try:
        ch.confirm_delivery()
        queue = ch.queue_declare("", exclusive=True).method.queue
        # The direct exchange's topic permission allows nothing, but it is not a topic exchange.
        ch.basic_publish(setup["direct"], "any.key", b"direct")
        ch.queue_bind(queue, setup["direct"], "any.key")
        # No topic permission for this topic exchange: everything is allowed.
        ch.basic_publish(setup["free"], "any.key", b"free")
        ch.queue_bind(queue, setup["free"], "any.#")
        ch.basic_publish("", queue, b"default exchange")
        ch.basic_publish("amq.topic", "any.key", b"amq.topic")
        assert ch.queue_declare(queue, passive=True).method.message_count == 1
    finally:
        conn.close()


def test_client_id_is_not_expanded_for_amqp_0_9_1(broker, setup):
    """RabbitMQ expands {client_id} for MQTT only: over AMQP 0-9-1 it stays literal text,
    even when the client sends a `client_id` client property."""
    x = setup["client"]
    conn = pika.BlockingConnection(broker.params(user=USER, password=PASSWORD,
                                                 client_properties={"client_id": "abc"}))
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, x, "c.{client_id}")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_bind(queue, x, "c.abc")
        assert e.value.reply_text == refused_text("c.abc", x, broker)
    finally:
        conn.close()


def test_topic_permission_changes_reach_open_connections(broker, setup):
    base, vh = setup["base"], q(broker.vhost)
    x = setup["free"]
    conn, ch = user_channel(broker)
    try:
        ch.confirm_delivery()
        ch.basic_publish(x, "k.1", b"allowed")
        status, body = api(base, "PUT", f"/topic-permissions/{vh}/{USER}",
                           {"exchange": x, "write": "^only$", "read": ".*"})
        assert status == 204, body
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(x, "only", b"allowed")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish(x, "k.1", b"refused")
        assert e.value.reply_text == refused_text("k.1", x, broker)
    finally:
        conn.close()
        # Put the module's setup back: the free exchange has no topic permission.
        status, perms = api(base, "GET", f"/topic-permissions/{vh}/{USER}")
        assert status == 200
        api(base, "DELETE", f"/topic-permissions/{vh}/{USER}")
        for p in perms:
            if p["exchange"] != x:
                api(base, "PUT", f"/topic-permissions/{vh}/{USER}",
                    {k: p[k] for k in ("exchange", "write", "read")})


def test_management_api_shapes(broker, setup):
    base, vh = setup["base"], q(broker.vhost)
    status, perms = api(base, "GET", f"/topic-permissions/{vh}/{USER}")
    assert status == 200
    assert {"user": USER, "vhost": broker.vhost, "exchange": setup["topic"],
            "write": r"^{username}\.", "read": r"^r\."} in perms
    status, mine = api(base, "GET", f"/users/{USER}/topic-permissions")
    assert status == 200 and sorted(json.dumps(p, sort_keys=True) for p in mine) == sorted(
        json.dumps(p, sort_keys=True) for p in perms)
    status, body = api(base, "GET", f"/topic-permissions/{vh}/guest")
    assert status == 404
    status, body = api(base, "PUT", f"/topic-permissions/{vh}/{USER}",
                       {"exchange": "x", "write": ".*"})
    assert status == 400 and "key_missing,read" in body
    status, body = api(base, "PUT", f"/topic-permissions/{vh}/no-such-user-{uuid.uuid4().hex}",
                       {"exchange": "x", "write": ".*", "read": ".*"})
    assert status == 400 and "vhost_or_user_not_found" in body


# ----------------------------------------------------------------------------- Pier only

RESTART_CONFIG = PIER_CONFIG + r"""
[[users]]
name = "pier-topic"
password = "secret"

[[permissions]]
user = "pier-topic"
vhost = "/"

[[topic_permissions]]
user = "pier-topic"
vhost = "/"
exchange = "tp.config"
write = '^cfg\.'
read = ".*"
"""


@pytest.mark.pier_only
def test_config_file_and_api_topic_permissions_survive_a_restart(pier_factory):
    proc = pier_factory(RESTART_CONFIG)
    b = Broker(host="127.0.0.1", port=proc.amqp_port, process=proc)
    base = mgmt_base(b)
    conn = b.connect()
    ch = conn.channel()
    ch.exchange_declare("tp.config", "topic", durable=True)
    ch.exchange_declare("tp.api", "topic", durable=True)
    conn.close()
    status, body = api(base, "PUT", f"/topic-permissions/%2F/{USER}",
                       {"exchange": "tp.api", "write": r"^api\.", "read": ".*"})
    assert status == 204, body  # the config file's permission was there already

    assert proc.terminate() == 0, proc.log_tail()
    proc.start()

    status, perms = api(base, "GET", f"/topic-permissions/%2F/{USER}")
    assert status == 200
    assert [p["exchange"] for p in perms] == ["tp.api", "tp.config"]
    conn, ch = user_channel(b)
    try:
        ch.confirm_delivery()
        ch.basic_publish("tp.config", "cfg.1", b"ok")
        ch.basic_publish("tp.api", "api.1", b"ok")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish("tp.api", "cfg.1", b"refused")
        assert e.value.reply_text == (
            "ACCESS_REFUSED - access to topic 'cfg.1' in exchange 'tp.api' in vhost '/' "
            "refused for user 'pier-topic'")
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.basic_publish("tp.config", "api.1", b"refused")
            ch.queue_declare("", exclusive=True)
    finally:
        conn.close()
    # Deleting the user takes its topic permissions along, also on disk.
    assert api(base, "DELETE", f"/users/{USER}")[0] == 204
    assert proc.terminate() == 0, proc.log_tail()
    proc.start()
    status, perms = api(base, "GET", "/topic-permissions")
    # The config file brings the config's topic permission back, as it does the user.
    assert status == 200
    assert [p["exchange"] for p in perms] == ["tp.config"]
    assert "panicked" not in proc.log_path.read_text(errors="replace")
