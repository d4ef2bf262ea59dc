"""RabbitMQ's exchange extensions: alternate exchanges, sender-selected distribution (CC and
BCC headers), internal exchanges as alternates, and exchange-to-exchange bindings from every
exchange type."""

import pika
import pika.exceptions
import pytest

from helpers import channel_closed, drain


def bodies(ch, q):
    return [b for _, _, b in drain(ch, q)]


def queue(ch, names, prefix="q"):
    q = names.queue(prefix)
    ch.queue_declare(q)
    return q


def test_alternate_exchange_receives_unroutable(channel, names):
    ae, main = names.exchange("ae"), names.exchange("main")
    channel.exchange_declare(ae, "fanout")
    channel.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    routed, unroutable = queue(channel, names), queue(channel, names)
    channel.queue_bind(routed, main, "k")
    channel.queue_bind(unroutable, ae)
    channel.confirm_delivery()
    channel.basic_publish(main, "k", b"routed")
    # Mandatory is satisfied by the alternate exchange: no basic.return.
    channel.basic_publish(main, "nope", b"alternate", mandatory=True)
    assert bodies(channel, routed) == [b"routed"]
    got = drain(channel, unroutable)
    assert [b for _, _, b in got] == [b"alternate"]
    # The delivery still names the exchange and key it was published with.
    assert got[0][0].exchange == main and got[0][0].routing_key == "nope"


def test_alternate_exchange_that_routes_nowhere_returns_mandatory(channel, names):
    ae, main = names.exchange("ae"), names.exchange("main")
    channel.exchange_declare(ae, "direct")
    channel.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(main, "k", b"m", mandatory=True)


def test_missing_alternate_exchange_drops(channel, names):
    main = names.exchange("main")
    channel.exchange_declare(main, "direct",
                             arguments={"alternate-exchange": "pier-test.no-such-ae"})
    channel.confirm_delivery()
    channel.basic_publish(main, "k", b"m")
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(main, "k", b"m", mandatory=True)


def test_alternate_exchanges_chain_and_may_be_internal(channel, names):
    first, second, last = (names.exchange(n) for n in ("first", "second", "last"))
    channel.exchange_declare(last, "fanout", internal=True)
    channel.exchange_declare(second, "direct", arguments={"alternate-exchange": last})
    channel.exchange_declare(first, "direct", arguments={"alternate-exchange": second})
    q = queue(channel, names)
    channel.queue_bind(q, last)
    channel.basic_publish(first, "k", b"m")
    assert bodies(channel, q) == [b"m"]


def test_alternate_exchange_loop_terminates(channel, names):
    a, b = names.exchange("a"), names.exchange("b")
    channel.exchange_declare(a, "direct", arguments={"alternate-exchange": b})
    channel.exchange_declare(b, "direct", arguments={"alternate-exchange": a})
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(a, "k", b"m", mandatory=True)


def test_alternate_exchange_is_per_exchange_in_a_binding_graph(channel, names):
    # `top` routes to `inner` (so its own AE is not used); `inner` routes nowhere and uses its.
    top, inner = names.exchange("top"), names.exchange("inner")
    top_ae, inner_ae = names.exchange("top-ae"), names.exchange("inner-ae")
    for x in (top_ae, inner_ae):
        channel.exchange_declare(x, "fanout")
    channel.exchange_declare(inner, "direct", arguments={"alternate-exchange": inner_ae})
    channel.exchange_declare(top, "fanout", arguments={"alternate-exchange": top_ae})
    channel.exchange_bind(inner, top)
    q_top, q_inner = queue(channel, names), queue(channel, names)
    channel.queue_bind(q_top, top_ae)
    channel.queue_bind(q_inner, inner_ae)
    channel.basic_publish(top, "k", b"m")
    assert bodies(channel, q_inner) == [b"m"]
    assert bodies(channel, q_top) == []


def test_alternate_exchange_argument_must_be_a_string(channel, names):
    x = names.exchange()
    with channel_closed(406) as info:
        channel.exchange_declare(x, "direct", arguments={"alternate-exchange": 5})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in "
        f"exchange '{x}' in vhost '/'")


def test_cc_and_bcc_route_to_more_queues(channel, names):
    x = names.exchange()
    channel.exchange_declare(x, "direct")
    main, cc, bcc, other = (queue(channel, names) for _ in range(4))
    for q, key in ((main, "main"), (cc, "cc-key"), (bcc, "bcc-key"), (other, "other")):
        channel.queue_bind(q, x, key)
    channel.basic_publish(x, "main", b"m", pika.BasicProperties(
        headers={"CC": ["cc-key"], "BCC": ["bcc-key"], "app": 1}))
    for q in (main, cc, bcc):
        ((method, props, body),) = drain(channel, q)
        assert body == b"m"
        assert method.routing_key == "main"
        # CC is delivered as sent; BCC never reaches a consumer.
        assert props.headers == {"CC": ["cc-key"], "app": 1}
    assert bodies(channel, other) == []


def test_cc_on_the_default_exchange_and_topic(channel, names):
    a, b = queue(channel, names), queue(channel, names)
    channel.basic_publish("", a, b"direct", pika.BasicProperties(headers={"CC": [b]}))
    assert bodies(channel, a) == [b"direct"]
    assert bodies(channel, b) == [b"direct"]
    t = names.exchange("topic")
    channel.exchange_declare(t, "topic")
    channel.queue_bind(a, t, "logs.*")
    channel.basic_publish(t, "nothing", b"topic", pika.BasicProperties(
        headers={"BCC": ["logs.error", "logs.info"]}))
    assert bodies(channel, a) == [b"topic"], "delivered once though two keys match"


def test_cc_must_be_an_array(channel, names):
    q = queue(channel, names)
    with channel_closed(406) as info:
        channel.basic_publish("", q, b"m", pika.BasicProperties(headers={"CC": "not-a-list"}))
        channel.queue_declare(q, passive=True)
    assert info["exc"].reply_text == (
        'PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,"CC",longstr}')


def test_publish_to_internal_exchange_is_refused(channel, names):
    x = names.exchange()
    channel.exchange_declare(x, "fanout", internal=True)
    with channel_closed(403, f"ACCESS_REFUSED - cannot publish to internal exchange '{x}' "
                             f"in vhost '/'"):
        channel.basic_publish(x, "", b"m")
        channel.queue_declare("", exclusive=True)


@pytest.mark.parametrize("kind,bind_key,bind_args,publish_key,headers", [
    ("direct", "k", None, "k", None),
    ("fanout", "", None, "any", None),
    ("topic", "a.*", None, "a.b", None),
    ("headers", "", {"x-match": "all", "h": "v"}, "", {"h": "v"}),
])
def test_exchange_to_exchange_from_every_type(channel, names, kind, bind_key, bind_args,
                                               publish_key, headers):
    source, dest = names.exchange("src"), names.exchange("dst")
    channel.exchange_declare(source, kind)
    channel.exchange_declare(dest, "fanout")
    channel.exchange_bind(dest, source, bind_key, arguments=bind_args)
    q = queue(channel, names)
    channel.queue_bind(q, dest)
    channel.basic_publish(source, publish_key, b"yes", pika.BasicProperties(headers=headers))
    channel.basic_publish(source, "zzz.no", b"no", pika.BasicProperties(headers={"h": "x"}))
    expected = [b"yes", b"no"] if kind == "fanout" else [b"yes"]
    assert bodies(channel, q) == expected


@pytest.mark.parametrize("kind,key,args", [
    ("direct", "k", None),
    ("topic", "#", None),
    ("headers", "", {"x-match": "any", "h": "v"}),
])
def test_exchange_to_exchange_into_every_type(channel, names, kind, key, args):
    source, dest = names.exchange("src"), names.exchange("dst")
    channel.exchange_declare(source, "fanout")
    channel.exchange_declare(dest, kind)
    channel.exchange_bind(dest, source)
    q = queue(channel, names)
    channel.queue_bind(q, dest, key, arguments=args)
    channel.basic_publish(source, "k", b"m", pika.BasicProperties(headers={"h": "v"}))
    assert bodies(channel, q) == [b"m"]
