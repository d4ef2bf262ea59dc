"""Permissions: configure / write / read regular expressions per user per vhost, checked as
RabbitMQ checks them (every declare, delete, bind, publish, consume, get and purge), with
RabbitMQ's 403 texts and the class/method ids of the refused method.

Against Pier, a private broker is started with the users below. Against an external broker
the users must exist (the tests are skipped otherwise)::

    rabbitmqctl add_user pier-restricted secret
    rabbitmqctl set_permissions -p / pier-restricted \\
        '^perm\\.[^.]*c[^.]*\\.' '^perm\\.[^.]*w[^.]*\\.' '^perm\\.[^.]*r[^.]*\\.'
    rabbitmqctl add_user pier-nothing secret
    rabbitmqctl set_permissions -p / pier-nothing '' '' ''
    rabbitmqctl add_user pier-loose secret
    rabbitmqctl set_permissions -p / pier-loose 'loose' 'default' 'loose'

pier-restricted may configure names like ``perm.c.*``/``perm.cw.*``, write ``perm.w.*`` and
read ``perm.r.*`` (a letter in the second component grants that access).
"""

from __future__ import annotations

import json
import urllib.request
import uuid

import pika
import pika.exceptions
import pytest

from amqp_raw import RawConnection
from conftest import EXTERNAL_URL, PIER_CONFIG, Broker, PierProcess, _broker_from_url

RESTRICTED = "pier-restricted"
NOTHING = "pier-nothing"
LOOSE = "pier-loose"
PASSWORD = "secret"

PERMISSIONS_CONFIG = PIER_CONFIG + r"""
[[users]]
name = "pier-restricted"
password = "secret"

[[users]]
name = "pier-nothing"
password = "secret"

[[users]]
name = "pier-loose"
password = "secret"

[[permissions]]
user = "pier-restricted"
vhost = "/"
configure = '^perm\.[^.]*c[^.]*\.'
write = '^perm\.[^.]*w[^.]*\.'
read = '^perm\.[^.]*r[^.]*\.'

[[permissions]]
user = "pier-nothing"
vhost = "/"
configure = ""
write = ""
read = ""

[[permissions]]
user = "pier-loose"
vhost = "/"
configure = "loose"
write = "default"
read = "loose"
"""


@pytest.fixture(scope="module")
def pbroker(tmp_path_factory):
    if EXTERNAL_URL:
        b = _broker_from_url(EXTERNAL_URL)
        try:
            for user in (RESTRICTED, NOTHING, LOOSE):
                b.connect(user=user, password=PASSWORD).close()
        except Exception:  # noqa: BLE001 - any failure means "not set up"
            pytest.skip("external broker lacks the pier-restricted / pier-nothing / pier-loose "
                        "users (see this module's docstring)")
        yield b
        return
    proc = PierProcess(tmp_path_factory.mktemp("pier-perms"), PERMISSIONS_CONFIG).start()
    try:
        yield Broker(host="127.0.0.1", port=proc.amqp_port, process=proc)
    finally:
        proc.terminate()
        log = proc.log_path.read_text(errors="replace")
        assert "panicked" not in log


@pytest.fixture
def objects(pbroker):
    """Queues and exchanges made by guest: perm.<letters>.<id>, deleted afterwards."""
    uid = uuid.uuid4().hex[:8]
    conn = pbroker.connect()
    ch = conn.channel()
    made: dict[str, str] = {}
    for letters in ("r", "w", "c", "x", "rw"):
        name = f"perm.{letters}.{uid}"
        ch.queue_declare(name)
        ch.exchange_declare(name, "fanout")
        made[letters] = name
    made["id"] = uid
    yield made
    if conn.is_closed:
        conn = pbroker.connect()
    ch = conn.channel()
    for name in list(made.values()):
        if name == uid:
            continue
        ch.queue_delete(name)
        ch.exchange_delete(name)
    for extra in (f"perm.c.{uid}.new", f"perm.cr.{uid}.dlx", f"perm.crw.{uid}.x",
                  f"perm.c.{uid}.ae", f"perm.crw.{uid}.ae", f"perm.cw.{uid}.dlx"):
        ch.queue_delete(extra)
        ch.exchange_delete(extra)
    conn.close()


def raw_as(pbroker, user: str) -> RawConnection:
    conn = RawConnection(pbroker.host, pbroker.port, timeout=5)
    conn.handshake(user=user, password=PASSWORD)
    conn.open_channel(1)
    return conn


def refused(pbroker, user: str, method: str, text: str, ids: tuple[int, int], **args) -> None:
    """`method` on a fresh channel of `user` is refused with 403 `text` on `ids`."""
    with raw_as(pbroker, user) as conn:
        conn.send_method(1, method, **args)
        reply = conn.read_method()
        assert reply.name == "channel.close", (reply.name, reply.args)
        assert reply["reply_code"] == 403, reply.args
        assert reply["reply_text"] == f"ACCESS_REFUSED - {text}"
        assert (reply["class_id"], reply["method_id"]) == ids
        # Only the channel closes: the connection carries on.
        conn.send_method(1, "channel.close-ok")
        conn.open_channel(2)


def denied(kind: str, name: str, user: str = RESTRICTED) -> str:
    return f"access to {kind} '{name}' in vhost '/' refused for user '{user}'"


# --------------------------------------------------------------------------- configure


def test_exchange_declare_needs_configure(pbroker, objects):
    w = objects["w"]
    refused(pbroker, RESTRICTED, "exchange.declare", denied("exchange", w + "x"), (40, 10),
            exchange=w + "x", type="fanout")
    # passive declarations are not checked
    with raw_as(pbroker, RESTRICTED) as conn:
        conn.rpc(1, "exchange.declare", "exchange.declare-ok", exchange=w, type="fanout",
                 passive=True)
        conn.rpc(1, "exchange.declare", "exchange.declare-ok",
                 exchange=f"perm.c.{objects['id']}.new", type="fanout")
        conn.rpc(1, "exchange.delete", "exchange.delete-ok",
                 exchange=f"perm.c.{objects['id']}.new")


def test_exchange_declare_default_and_amq_names(pbroker, objects):
    # The default exchange is refused before permissions; amq.* after them.
    refused(pbroker, RESTRICTED, "exchange.declare",
            "operation not permitted on the default exchange", (40, 10),
            exchange="", type="direct")
    refused(pbroker, RESTRICTED, "exchange.declare", denied("exchange", "amq.pier-test"),
            (40, 10), exchange="amq.pier-test", type="direct")


def test_exchange_delete_needs_configure(pbroker, objects):
    refused(pbroker, RESTRICTED, "exchange.delete", denied("exchange", objects["w"]), (40, 20),
            exchange=objects["w"])
    missing = f"perm.nonexistent.{objects['id']}"
    refused(pbroker, RESTRICTED, "exchange.delete", denied("exchange", missing), (40, 20),
            exchange=missing)


def test_exchange_declare_with_alternate_exchange(pbroker, objects):
    uid = objects["id"]
    # the new exchange needs read access itself...
    refused(pbroker, RESTRICTED, "exchange.declare", denied("exchange", f"perm.c.{uid}.ae"),
            (40, 10), exchange=f"perm.c.{uid}.ae", type="fanout",
            arguments={"alternate-exchange": objects["w"]})
    # ...and write access to its alternate
    refused(pbroker, RESTRICTED, "exchange.declare", denied("exchange", objects["r"]),
            (40, 10), exchange=f"perm.crw.{uid}.ae", type="fanout",
            arguments={"alternate-exchange": objects["r"]})


def test_queue_declare_needs_configure(pbroker, objects):
    w = objects["w"]
    refused(pbroker, RESTRICTED, "queue.declare", denied("queue", w), (50, 10), queue=w)
    with raw_as(pbroker, RESTRICTED) as conn:
        ok = conn.rpc(1, "queue.declare", "queue.declare-ok", queue=w, passive=True)
        assert ok["queue"] == w
        name = f"perm.c.{objects['id']}.new"
        assert conn.rpc(1, "queue.declare", "queue.declare-ok", queue=name)["queue"] == name
        conn.rpc(1, "queue.delete", "queue.delete-ok", queue=name)


def test_server_named_queue_checks_the_generated_name(pbroker):
    with raw_as(pbroker, RESTRICTED) as conn:
        conn.send_method(1, "queue.declare", queue="", exclusive=True)
        reply = conn.read_method()
    assert reply.name == "channel.close" and reply["reply_code"] == 403
    text = reply["reply_text"]
    assert text.startswith("ACCESS_REFUSED - access to queue 'amq.gen-"), text
    assert text.endswith("' in vhost '/' refused for user 'pier-restricted'"), text


def test_queue_declare_with_dead_letter_exchange(pbroker, objects):
    uid = objects["id"]
    # read access to the new queue...
    refused(pbroker, RESTRICTED, "queue.declare", denied("queue", f"perm.cw.{uid}.dlx"),
            (50, 10), queue=f"perm.cw.{uid}.dlx",
            arguments={"x-dead-letter-exchange": objects["w"]})
    # ...and write access to the dead-letter exchange
    refused(pbroker, RESTRICTED, "queue.declare", denied("exchange", objects["r"]), (50, 10),
            queue=f"perm.cr.{uid}.dlx", arguments={"x-dead-letter-exchange": objects["r"]})


def test_queue_delete_needs_configure(pbroker, objects):
    refused(pbroker, RESTRICTED, "queue.delete", denied("queue", objects["w"]), (50, 40),
            queue=objects["w"])
    missing = f"perm.missing.{objects['id']}"
    refused(pbroker, RESTRICTED, "queue.delete", denied("queue", missing), (50, 40),
            queue=missing)


# --------------------------------------------------------------------------- bindings


def test_queue_bind_needs_write_on_queue_and_read_on_exchange(pbroker, objects):
    r, w = objects["r"], objects["w"]
    refused(pbroker, RESTRICTED, "queue.bind", denied("queue", r), (50, 20), queue=r,
            exchange=r)
    refused(pbroker, RESTRICTED, "queue.bind", denied("exchange", w), (50, 20), queue=w,
            exchange=w)
    # the exchange's permission is checked before it is looked up
    missing = f"perm.nope.{objects['id']}"
    refused(pbroker, RESTRICTED, "queue.bind", denied("exchange", missing), (50, 20), queue=w,
            exchange=missing)
    refused(pbroker, RESTRICTED, "queue.bind",
            "operation not permitted on the default exchange", (50, 20), queue=w, exchange="")
    refused(pbroker, RESTRICTED, "queue.unbind", denied("queue", r), (50, 50), queue=r,
            exchange=r)
    with raw_as(pbroker, RESTRICTED) as conn:
        rw = objects["rw"]
        conn.rpc(1, "queue.bind", "queue.bind-ok", queue=rw, exchange=rw, routing_key="k")
        conn.rpc(1, "queue.unbind", "queue.unbind-ok", queue=rw, exchange=rw, routing_key="k")


def test_exchange_bind_needs_write_on_destination_and_read_on_source(pbroker, objects):
    r, w = objects["r"], objects["w"]
    refused(pbroker, RESTRICTED, "exchange.bind", denied("exchange", r), (40, 30),
            destination=r, source=r)
    refused(pbroker, RESTRICTED, "exchange.bind", denied("exchange", w), (40, 30),
            destination=w, source=w)
    refused(pbroker, RESTRICTED, "exchange.unbind", denied("exchange", r), (40, 40),
            destination=r, source=r)
    with raw_as(pbroker, RESTRICTED) as conn:
        conn.rpc(1, "exchange.bind", "exchange.bind-ok", destination=w, source=r)
        conn.rpc(1, "exchange.unbind", "exchange.unbind-ok", destination=w, source=r)


# --------------------------------------------------------------------------- read


def test_consume_get_and_purge_need_read(pbroker, objects):
    w = objects["w"]
    refused(pbroker, RESTRICTED, "basic.consume", denied("queue", w), (60, 20), queue=w)
    refused(pbroker, RESTRICTED, "basic.get", denied("queue", w), (60, 70), queue=w)
    refused(pbroker, RESTRICTED, "queue.purge", denied("queue", w), (50, 30), queue=w)
    missing = f"perm.nope.{objects['id']}"
    refused(pbroker, RESTRICTED, "basic.get", denied("queue", missing), (60, 70), queue=missing)
    with raw_as(pbroker, RESTRICTED) as conn:
        r = objects["r"]
        conn.rpc(1, "queue.purge", "queue.purge-ok", queue=r)
        conn.rpc(1, "basic.get", "basic.get-empty", queue=r)
        conn.rpc(1, "basic.consume", "basic.consume-ok", queue=r, consumer_tag="t")


def test_direct_reply_to_needs_no_permission(pbroker):
    with raw_as(pbroker, NOTHING) as conn:
        conn.rpc(1, "basic.consume", "basic.consume-ok", queue="amq.rabbitmq.reply-to",
                 no_ack=True)


# --------------------------------------------------------------------------- write


def publish_refused(pbroker, user: str, exchange: str, text: str, tx: bool = False) -> None:
    with raw_as(pbroker, user) as conn:
        if tx:
            conn.rpc(1, "tx.select", "tx.select-ok")
        conn.publish(1, exchange, "k", b"body")
        reply = conn.read_method()
        assert reply.name == "channel.close", (reply.name, reply.args)
        assert reply["reply_code"] == 403
        assert reply["reply_text"] == f"ACCESS_REFUSED - {text}"
        assert (reply["class_id"], reply["method_id"]) == (60, 40)


def test_publish_needs_write_on_the_exchange(pbroker, objects):
    publish_refused(pbroker, RESTRICTED, objects["r"], denied("exchange", objects["r"]))
    # checked before the exchange is looked up
    missing = f"perm.nope.{objects['id']}"
    publish_refused(pbroker, RESTRICTED, missing, denied("exchange", missing))
    # in a transaction too, at publish time
    publish_refused(pbroker, RESTRICTED, objects["r"], denied("exchange", objects["r"]), tx=True)


def test_default_exchange_is_amq_default_for_permissions(pbroker):
    publish_refused(pbroker, RESTRICTED, "", denied("exchange", "amq.default"))
    publish_refused(pbroker, NOTHING, "", denied("exchange", "amq.default", NOTHING))
    # pier-loose's write pattern 'default' is searched for in 'amq.default': allowed
    conn = pbroker.connect(user=LOOSE, password=PASSWORD)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", "pier-test-nowhere", b"x")
        assert ch.is_open
    finally:
        conn.close()


def test_allowed_publish_reaches_the_queue(pbroker, objects):
    conn = pbroker.connect(user=RESTRICTED, password=PASSWORD)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        rw = objects["rw"]
        ch.queue_bind(rw, rw)
        ch.basic_publish(rw, "", b"through rw")
        method, _props, body = ch.basic_get(rw, auto_ack=True)
        assert body == b"through rw"
    finally:
        conn.close()


# --------------------------------------------------------------------------- pattern rules


def test_empty_pattern_matches_nothing(pbroker):
    with raw_as(pbroker, NOTHING) as conn:
        conn.send_method(1, "queue.declare", queue="pier-test-anything")
        reply = conn.read_method()
    assert reply["reply_code"] == 403
    assert reply["reply_text"] == "ACCESS_REFUSED - " + denied("queue", "pier-test-anything",
                                                               NOTHING)


def test_patterns_are_not_anchored(pbroker):
    name = f"a-loose-{uuid.uuid4().hex[:8]}"
    with raw_as(pbroker, LOOSE) as conn:
        conn.rpc(1, "queue.declare", "queue.declare-ok", queue=name, exclusive=True)
        conn.rpc(1, "basic.get", "basic.get-empty", queue=name)
        conn.send_method(1, "queue.declare", queue="tight", exclusive=True)
        reply = conn.read_method()
        assert reply["reply_code"] == 403


def test_refusal_keeps_the_connection_usable(pbroker, objects):
    conn = pbroker.connect(user=RESTRICTED, password=PASSWORD)
    try:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            ch.queue_purge(objects["w"])
        assert exc.value.reply_code == 403
        ch2 = conn.channel()
        assert ch2.queue_declare(objects["r"], passive=True).method.queue == objects["r"]
    finally:
        conn.close()


# --------------------------------------------------------------------------- Pier only


def mgmt(pbroker, method: str, path: str, body: dict | None = None) -> int:
    port = pbroker.process.http_port
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", data=data,
                                 method=method, headers={"content-type": "application/json"})
    import base64
    req.add_header("authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.pier_only
def test_permission_changes_apply_to_open_connections(pbroker, objects):
    """A changed permission applies to the next operation of a connection already open."""
    conn = pbroker.connect(user=LOOSE, password=PASSWORD)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", "pier-test-nowhere", b"allowed")
        assert mgmt(pbroker, "PUT", "/permissions/%2F/pier-loose",
                    {"configure": "loose", "write": "nothing-matches-this", "read": "loose"}) \
            in (201, 204)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            ch.basic_publish("", "pier-test-nowhere", b"refused now")
        assert exc.value.reply_code == 403
        # an invalid pattern is refused by the API and changes nothing
        assert mgmt(pbroker, "PUT", "/permissions/%2F/pier-loose",
                    {"configure": "(", "write": "", "read": ""}) == 400
    finally:
        mgmt(pbroker, "PUT", "/permissions/%2F/pier-loose",
             {"configure": "loose", "write": "default", "read": "loose"})
        if conn.is_open:
            conn.close()


@pytest.mark.pier_only
def test_denials_are_logged_with_the_peer(pbroker, objects):
    with raw_as(pbroker, RESTRICTED) as conn:
        conn.send_method(1, "queue.purge", queue=objects["w"])
        conn.expect("channel.close")
        port = conn.sock.getsockname()[1]
    log = pbroker.process.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines()
             if "access refused" in line and f"127.0.0.1:{port}" in line]
    assert lines, "no audit line for the denial"
    assert "WARN" in lines[0] and "pier-restricted" in lines[0] and objects["w"] in lines[0]
