"""Every way a message enters queues behaves the same: a client's basic.publish, the
management API's "publish message", dead lettering and the delayed exchange all go through
one publish path in the broker (`VHost::publish`). Each test sends the same message through
each entry point and compares what consumers receive.

The BCC, CC and alternate-exchange checks run against RabbitMQ 3.10.8 too (with
PIER_TEST_MGMT_URL); the delayed-exchange ones are Pier-only (the plugin is not in RabbitMQ's
Debian package)."""

import time
import urllib.parse

import pika
import pytest

from helpers import drain, wait_until


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def mgmt_publish(mgmt, vhost: str, exchange: str, routing_key: str, payload: str,
                 headers: dict | None = None, properties: dict | None = None) -> dict:
    props = dict(properties or {})
    if headers is not None:
        props["headers"] = headers
    status, body = mgmt.call(
        "POST", f"/exchanges/{q(vhost)}/{q(exchange or 'amq.default')}/publish",
        {"routing_key": routing_key, "payload": payload, "payload_encoding": "string",
         "properties": props})
    assert status == 200, (status, body)
    return body


def amqp_publish(ch, exchange, routing_key, payload, headers=None):
    ch.basic_publish(exchange, routing_key, payload.encode(),
                     pika.BasicProperties(headers=headers))


def wait_ready(ch, queue: str, n: int):
    wait_until(lambda: ch.queue_declare(queue, passive=True).method.message_count >= n,
               message=f"{n} messages in {queue}")


ENTRY_POINTS = ["amqp", "management"]


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13) (the management API publishes on its own node)")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_bcc_routes_but_is_never_delivered(connection, mgmt, names, broker, entry):
    ch = connection.channel()
    x = names.exchange("bcc")
    ch.exchange_declare(x, "direct", auto_delete=True)
    to, hidden = names.queue("to"), names.queue("hidden")
    for queue, key in ((to, "to"), (hidden, "hidden")):
        ch.queue_declare(queue)
        ch.queue_bind(queue, x, key)
    headers = {"BCC": ["hidden"], "CC": ["to"], "kept": "yes"}
    if entry == "amqp":
        amqp_publish(ch, x, "to", "m", headers)
    else:
        assert mgmt_publish(mgmt, broker.vhost, x, "to", "m", headers) == {"routed": True}
    wait_ready(ch, to, 1)
    wait_ready(ch, hidden, 1)
    for queue in (to, hidden):
        got = drain(ch, queue)
        assert len(got) == 1, queue
        _, props, body = got[0]
        assert body == b"m"
        # CC stays with the message, BCC is gone, other headers untouched.
        assert props.headers == {"CC": ["to"], "kept": "yes"}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13) (the management API publishes on its own node)")
def test_alternate_exchange_takes_what_routes_nowhere(connection, mgmt, names, broker, entry):
    ch = connection.channel()
    ae, x = names.exchange("ae"), names.exchange("main")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.exchange_declare(x, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    caught = names.queue("caught")
    ch.queue_declare(caught)
    ch.queue_bind(caught, ae, "")
    if entry == "amqp":
        amqp_publish(ch, x, "nowhere", "lost?")
    else:
        assert mgmt_publish(mgmt, broker.vhost, x, "nowhere", "lost?") == {"routed": True}
    wait_ready(ch, caught, 1)
    assert [b for _, _, b in drain(ch, caught)] == [b"lost?"]


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13) (the management API publishes on its own node)")
def test_unroutable_management_publish_reports_not_routed(connection, mgmt, names, broker):
    ch = connection.channel()
    x = names.exchange("empty")
    ch.exchange_declare(x, "direct", auto_delete=True)
    assert mgmt_publish(mgmt, broker.vhost, x, "none", "m") == {"routed": False}


def _delayed_exchange(ch, names):
    x = names.exchange("delayed")
    ch.exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    target = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(target, x, "k")
    return x, target


@pytest.mark.pier_only
@pytest.mark.parametrize("entry", ENTRY_POINTS + ["dead-letter"])
@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13) (the management API publishes on its own node)")
def test_x_delay_is_honoured_on_every_path(connection, mgmt, names, broker, entry):
    ch = connection.channel()
    x, target = _delayed_exchange(ch, names)
    headers = {"x-delay": 600}
    start = time.monotonic()
    if entry == "amqp":
        amqp_publish(ch, x, "k", "late", headers)
    elif entry == "management":
        assert mgmt_publish(mgmt, broker.vhost, x, "k", "late", headers) == {"routed": False}
    else:
        # Expires at once in a queue whose dead-letter exchange is the delayed one.
        src = ch.queue_declare("", exclusive=True, arguments={
            "x-message-ttl": 0, "x-dead-letter-exchange": x,
            "x-dead-letter-routing-key": "k"}).method.queue
        amqp_publish(ch, "", src, "late", headers)
    time.sleep(0.3)
    assert drain(ch, target) == [], "delivered before its delay"
    wait_ready(ch, target, 1)
    assert time.monotonic() - start >= 0.55
    got = drain(ch, target)
    assert [b for _, _, b in got] == [b"late"]
    # The plugin negates x-delay on the message it finally routes.
    assert got[0][1].headers["x-delay"] == -600
