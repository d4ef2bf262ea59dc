"""Headers exchange: x-match all / any / all-with-x / any-with-x."""

import pika
import pytest

from helpers import channel_closed, drain

BINDINGS = {
    "all": {"x-match": "all", "a": 1, "b": "two"},
    "any": {"x-match": "any", "a": 1, "b": "two"},
    "default_is_all": {"a": 1},
    # plain all/any ignore binding keys starting with "x-"
    "all_ignores_x": {"x-match": "all", "a": 1, "x-k": "v"},
    "any_ignores_x": {"x-match": "any", "x-k": "v", "zz": 5},
    # ... the -with-x variants include them
    "all_with_x": {"x-match": "all-with-x", "a": 1, "x-k": "v"},
    "any_with_x": {"x-match": "any-with-x", "x-k": "v", "zz": 5},
    # no keys besides x-match: "all" matches everything, "any" nothing
    "empty_all": {"x-match": "all"},
    "empty_any": {"x-match": "any"},
    # a void (None) binding value only requires the header to be present
    "presence": {"x-match": "all", "a": None},
}
MESSAGES = {
    "a1": {"a": 1},
    "a1_b2": {"a": 1, "b": "two"},
    "b2": {"b": "two"},
    "none": None,
    "a1_xk": {"a": 1, "x-k": "v"},
    "xk": {"x-k": "v"},
    "a_str": {"a": "1"},       # different type: no match for a=1
    "a_true": {"a": True},
    "b_other": {"b": "three"},
}
EXPECTED = {
    "all": ["a1_b2"],
    "any": ["a1", "a1_b2", "b2", "a1_xk"],
    "default_is_all": ["a1", "a1_b2", "a1_xk"],
    "all_ignores_x": ["a1", "a1_b2", "a1_xk"],
    "any_ignores_x": [],
    "all_with_x": ["a1_xk"],
    "any_with_x": ["a1_xk", "xk"],
    "empty_all": list(MESSAGES),
    "empty_any": [],
    "presence": ["a1", "a1_b2", "a1_xk", "a_str", "a_true"],
}


def test_headers_matching(channel, names):
    x = names.exchange("headers")
    channel.exchange_declare(x, "headers")
    queues = {}
    for label, args in BINDINGS.items():
        q = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(q, x, "", arguments=args)
        queues[label] = q
    channel.confirm_delivery()
    for label, headers in MESSAGES.items():
        channel.basic_publish(x, "ignored-routing-key", label.encode(),
                              pika.BasicProperties(headers=headers))
    failures = {}
    for label, q in queues.items():
        got = [body.decode() for _m, _p, body in drain(channel, q)]
        if got != EXPECTED[label]:
            failures[label] = {"got": got, "expected": EXPECTED[label]}
    assert not failures, failures


def test_headers_exchange_ignores_routing_key(channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, "amq.headers", "some-key", arguments={"x-match": "all", "k": q})
    channel.confirm_delivery()
    channel.basic_publish("amq.headers", "other-key", b"m", pika.BasicProperties(headers={"k": q}))
    assert [b for _m, _p, b in drain(channel, q)] == [b"m"]


def test_headers_binding_arguments_distinguish_bindings(channel, names):
    x = names.exchange("headers")
    channel.exchange_declare(x, "headers")
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, x, "", arguments={"x-match": "all", "a": 1})
    channel.queue_bind(q, x, "", arguments={"x-match": "all", "b": 2})
    # unbinding needs the same arguments
    channel.queue_unbind(q, x, "", arguments={"x-match": "all", "a": 1})
    channel.confirm_delivery()
    channel.basic_publish(x, "", b"a", pika.BasicProperties(headers={"a": 1}))
    channel.basic_publish(x, "", b"b", pika.BasicProperties(headers={"b": 2}))
    assert [b for _m, _p, b in drain(channel, q)] == [b"b"]


@pytest.mark.parametrize("value", ["bogus", "ALL"])
def test_invalid_x_match_is_406(channel, names, value):
    x = names.exchange("headers")
    channel.exchange_declare(x, "headers")
    q = channel.queue_declare("", exclusive=True).method.queue
    with channel_closed(406) as info:
        channel.queue_bind(q, x, "", arguments={"x-match": value})
    assert info["exc"].reply_text == (
        f'PRECONDITION_FAILED - Invalid x-match field value <<"{value}">>; expected all, any, '
        f'all-with-x, or any-with-x')
