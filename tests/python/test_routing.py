"""Routing through the default, direct, fanout and topic exchanges."""

import pytest

from helpers import drain


def _bound_queues(ch, exchange, keys):
    queues = {}
    for key in keys:
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, exchange, key)
        queues[key] = q
    return queues


def test_default_exchange_routes_by_queue_name(channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    channel.basic_publish("", q, b"direct to queue")
    method, _p, body = channel.basic_get(q, auto_ack=True)
    assert (method.exchange, method.routing_key, body) == ("", q, b"direct to queue")


def test_direct_exchange(channel, names):
    x = names.exchange()
    channel.exchange_declare(x, "direct")
    queues = _bound_queues(channel, x, ["info", "error", ""])
    both = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(both, x, "info")
    channel.queue_bind(both, x, "error")
    channel.confirm_delivery()
    for key in ["info", "error", "", "debug", "INFO"]:
        channel.basic_publish(x, key, key.encode())
    assert [b for _m, _p, b in drain(channel, queues["info"])] == [b"info"]
    assert [b for _m, _p, b in drain(channel, queues["error"])] == [b"error"]
    assert [b for _m, _p, b in drain(channel, queues[""])] == [b""]
    assert [b for _m, _p, b in drain(channel, both)] == [b"info", b"error"]


def test_fanout_ignores_routing_key(channel, names):
    x = names.exchange()
    channel.exchange_declare(x, "fanout")
    queues = _bound_queues(channel, x, ["a", "b", ""])
    channel.confirm_delivery()
    channel.basic_publish(x, "whatever", b"1")
    channel.basic_publish(x, "", b"2")
    for q in queues.values():
        got = drain(channel, q)
        assert [b for _m, _p, b in got] == [b"1", b"2"]
        assert [m.routing_key for m, _p, _b in got] == ["whatever", ""]
        assert all(m.exchange == x for m, _p, _b in got)


# binding key -> routing keys it must match (exactly those, from ROUTING_KEYS)
TOPIC_MATRIX = {
    "*": ["a", "b"],
    "#": ["a", "b", "a.b", "a.x.b", "a.x.y.b", "a..b", "", "a.", ".b", ".", "a.b.c", "x.a.b"],
    "#.#": ["a", "b", "a.b", "a.x.b", "a.x.y.b", "a..b", "", "a.", ".b", ".", "a.b.c",
            "x.a.b"],
    "a.#.b": ["a.b", "a.x.b", "a.x.y.b", "a..b"],
    "a.*": ["a.b", "a."],
    "*.b": ["a.b", ".b"],
    "a..b": ["a..b"],
    "": [""],
    "a.#": ["a", "a.b", "a.x.b", "a.x.y.b", "a..b", "a.", "a.b.c"],
    "#.b": ["b", "a.b", "a.x.b", "a.x.y.b", "a..b", ".b", "x.a.b"],
    "a.*.b": ["a.x.b", "a..b"],
    "*.*": ["a.b", "a.", ".b", "."],
    "a": ["a"],
    "*.#": ["a", "b", "a.b", "a.x.b", "a.x.y.b", "a..b", "a.", ".b", ".", "a.b.c", "x.a.b"],
    "#.*.b": ["a.b", "a.x.b", "a.x.y.b", "a..b", ".b", "x.a.b"],
    "a.b.c.d": [],
}
ROUTING_KEYS = ["a", "b", "a.b", "a.x.b", "a.x.y.b", "a..b", "", "a.", ".b", ".", "a.b.c",
                "x.a.b"]


def test_topic_matching_matrix(channel, names):
    x = names.exchange("topic")
    channel.exchange_declare(x, "topic")
    queues = _bound_queues(channel, x, list(TOPIC_MATRIX))
    channel.confirm_delivery()
    for key in ROUTING_KEYS:
        channel.basic_publish(x, key, key.encode())
    failures = {}
    for binding, expected in TOPIC_MATRIX.items():
        got = [m.routing_key for m, _p, _b in drain(channel, queues[binding])]
        if got != expected:
            failures[binding] = (got, expected)
    assert not failures, failures


@pytest.mark.parametrize("binding,key,matches", [
    ("stock.usd.nyse", "stock.usd.nyse", True),
    ("stock.*.nyse", "stock.eur.nyse", True),
    ("stock.#", "stock", True),
    ("stock.#", "stocks.usd", False),
    ("#.nyse", "nyse", True),
    ("*.*.*", "a.b", False),
    ("a.#.#.b", "a.b", True),
    ("a.#.c.#.e", "a.b.c.d.e", True),
    ("a.#.c.#.e", "a.b.d.e", False),
])
def test_topic_single_cases(channel, names, binding, key, matches):
    x = names.exchange("topic")
    channel.exchange_declare(x, "topic")
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, x, binding)
    channel.confirm_delivery()
    channel.basic_publish(x, key, b"m")
    assert channel.queue_declare(q, passive=True).method.message_count == (1 if matches else 0)


def test_message_routed_once_per_queue_with_overlapping_bindings(channel, names):
    x = names.exchange("topic")
    channel.exchange_declare(x, "topic")
    q = channel.queue_declare("", exclusive=True).method.queue
    for key in ["a.*", "*.b", "#", "a.b"]:
        channel.queue_bind(q, x, key)
    channel.confirm_delivery()
    channel.basic_publish(x, "a.b", b"once")
    assert [b for _m, _p, b in drain(channel, q)] == [b"once"]


def test_unbind_stops_routing(channel, names):
    x = names.exchange()
    channel.exchange_declare(x, "direct")
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, x, "k")
    channel.confirm_delivery()
    channel.basic_publish(x, "k", b"1")
    channel.queue_unbind(q, x, "k")
    channel.basic_publish(x, "k", b"2")
    assert [b for _m, _p, b in drain(channel, q)] == [b"1"]


def test_message_order_is_preserved(channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    for i in range(200):
        channel.basic_publish("", q, str(i).encode())
    assert [int(b) for _m, _p, b in drain(channel, q)] == list(range(200))


def test_properties_roundtrip(channel):
    import pika

    q = channel.queue_declare("", exclusive=True).method.queue
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8",
        headers={"str": "v", "int": 42, "neg": -7, "big": 2 ** 40, "bool": True,
                 "nested": {"k": "v"}, "list": [1, "two"], "none": None},
        delivery_mode=2, priority=5, correlation_id="corr-1", reply_to="reply-q",
        expiration="60000", message_id="msg-1", timestamp=1700000000, type="kind",
        user_id="guest", app_id="pier-tests", cluster_id="c1")
    channel.confirm_delivery()
    channel.basic_publish("", q, b"{}", props)
    _m, got, body = channel.basic_get(q, auto_ack=True)
    assert body == b"{}"
    for attr in ["content_type", "content_encoding", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                 "type", "user_id", "app_id", "cluster_id"]:
        assert getattr(got, attr) == getattr(props, attr), attr
    assert got.headers == props.headers
