"""Exchange-to-exchange bindings: chains, loops, and de-duplication."""

from helpers import channel_closed, drain


def test_exchange_to_exchange_chain(channel, names):
    a, b = names.exchange("a"), names.exchange("b")
    channel.exchange_declare(a, "topic")
    channel.exchange_declare(b, "direct")
    channel.exchange_bind(b, a, "logs.#")
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, b, "logs.error")
    channel.confirm_delivery()
    channel.basic_publish(a, "logs.error", b"e")      # a -> b -> q
    channel.basic_publish(a, "logs.info", b"i")       # a -> b, no queue
    channel.basic_publish(a, "other.error", b"o")     # not forwarded by a
    got = drain(channel, q)
    assert [b for _m, _p, b in got] == [b"e"]
    # the delivery names the exchange the message was published to
    assert got[0][0].exchange == a
    assert got[0][0].routing_key == "logs.error"


def test_loop_does_not_duplicate_or_hang(channel, names):
    a, b = names.exchange("a"), names.exchange("b")
    channel.exchange_declare(a, "fanout")
    channel.exchange_declare(b, "fanout")
    channel.exchange_bind(b, a)
    channel.exchange_bind(a, b)
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, a)
    channel.queue_bind(q, b)
    channel.confirm_delivery()
    channel.basic_publish(a, "", b"loop-a")
    channel.basic_publish(b, "", b"loop-b")
    assert [b for _m, _p, b in drain(channel, q)] == [b"loop-a", b"loop-b"]


def test_self_binding(channel, names):
    a = names.exchange("self")
    channel.exchange_declare(a, "fanout")
    channel.exchange_bind(a, a)
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, a)
    channel.confirm_delivery()
    channel.basic_publish(a, "", b"self")
    assert [b for _m, _p, b in drain(channel, q)] == [b"self"]


def test_diamond_delivers_once_per_queue(channel, names):
    top, left, right = names.exchange("top"), names.exchange("left"), names.exchange("right")
    channel.exchange_declare(top, "fanout")
    channel.exchange_declare(left, "direct")
    channel.exchange_declare(right, "topic")
    channel.exchange_bind(left, top)
    channel.exchange_bind(right, top)
    q = channel.queue_declare("", exclusive=True).method.queue
    only_right = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, left, "k")
    channel.queue_bind(q, right, "#")
    channel.queue_bind(only_right, right, "#")
    channel.confirm_delivery()
    channel.basic_publish(top, "k", b"both-paths")
    channel.basic_publish(top, "other", b"right-only")
    assert [b for _m, _p, b in drain(channel, q)] == [b"both-paths", b"right-only"]
    assert [b for _m, _p, b in drain(channel, only_right)] == [b"both-paths", b"right-only"]


def test_exchange_unbind(channel, names):
    a, b = names.exchange("a"), names.exchange("b")
    channel.exchange_declare(a, "direct")
    channel.exchange_declare(b, "fanout")
    channel.exchange_bind(b, a, "k")
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, b)
    channel.confirm_delivery()
    channel.basic_publish(a, "k", b"1")
    channel.exchange_unbind(b, a, "k")
    channel.basic_publish(a, "k", b"2")
    assert [b for _m, _p, b in drain(channel, q)] == [b"1"]


def test_deleting_destination_exchange_removes_binding(channel, names):
    a, b = names.exchange("a"), names.exchange("b")
    channel.exchange_declare(a, "fanout")
    channel.exchange_declare(b, "fanout")
    channel.exchange_bind(b, a)
    channel.exchange_delete(b)
    # a has no bindings left, so if-unused deletion works
    channel.exchange_delete(a, if_unused=True)


def test_exchange_bind_missing_destination_is_404(channel, names):
    a = names.exchange("a")
    channel.exchange_declare(a, "fanout")
    with channel_closed(404, "NOT_FOUND - no exchange 'pier-test-missing-dst' in vhost '/'"):
        channel.exchange_bind("pier-test-missing-dst", a)


def test_exchange_bind_missing_source_is_404(channel, names):
    a = names.exchange("a")
    channel.exchange_declare(a, "fanout")
    with channel_closed(404, "NOT_FOUND - no exchange 'pier-test-missing-src' in vhost '/'"):
        channel.exchange_bind(a, "pier-test-missing-src")


def test_mandatory_routed_through_exchange_binding_is_not_returned(channel, names):
    a, b = names.exchange("a"), names.exchange("b")
    channel.exchange_declare(a, "fanout")
    channel.exchange_declare(b, "fanout")
    channel.exchange_bind(b, a)
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, b)
    channel.confirm_delivery()
    # raises UnroutableError if it were returned
    channel.basic_publish(a, "", b"routed", mandatory=True)
    assert [b for _m, _p, b in drain(channel, q)] == [b"routed"]
