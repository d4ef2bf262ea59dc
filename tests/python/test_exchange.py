"""exchange.declare / exchange.delete: types, equivalence, reserved names,
the default exchange, if-unused, auto-delete, internal exchanges."""

import pytest

from helpers import channel_closed, connection_closed, exchange_exists

TYPES = ["direct", "fanout", "topic", "headers"]


@pytest.mark.parametrize("kind", TYPES)
def test_declare_each_type(connection, names, kind):
    x = names.exchange(kind)
    ch = connection.channel()
    ch.exchange_declare(x, kind)
    # idempotent redeclare and passive declare
    ch.exchange_declare(x, kind)
    ch.exchange_declare(x, passive=True)
    assert exchange_exists(connection, x)
    ch.exchange_delete(x)
    assert not exchange_exists(connection, x)


@pytest.mark.parametrize("kind", TYPES)
def test_declare_durable_each_type(connection, names, kind):
    x = names.exchange(kind)
    ch = connection.channel()
    ch.exchange_declare(x, kind, durable=True)
    ch.exchange_declare(x, kind, durable=True)


def test_redeclare_with_other_type_is_406(channel, names):
    x = names.exchange()
    channel.exchange_declare(x, "direct")
    with channel_closed(406) as info:
        channel.exchange_declare(x, "fanout")
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': "
        f"received 'fanout' but current is 'direct'")


@pytest.mark.parametrize("first,second,arg,received,current", [
    ({}, {"durable": True}, "durable", "true", "false"),
    ({"auto_delete": True}, {}, "auto_delete", "false", "true"),
    ({}, {"internal": True}, "internal", "true", "false"),
])
def test_redeclare_with_other_flags_is_406(connection, names, first, second, arg, received,
                                           current):
    x = names.exchange()
    connection.channel().exchange_declare(x, "fanout", **first)
    ch = connection.channel()
    with channel_closed(406) as info:
        ch.exchange_declare(x, "fanout", **second)
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange '{x}' in vhost '/': "
        f"received '{received}' but current is '{current}'")


def test_passive_declare_of_missing_exchange_is_404(channel):
    with channel_closed(404, "NOT_FOUND - no exchange 'pier-test-no-such-exchange' in "
                             "vhost '/'"):
        channel.exchange_declare("pier-test-no-such-exchange", passive=True)


def test_passive_declare_does_not_check_type(channel):
    # passive: only existence is checked, even with a bogus type
    channel.exchange_declare("amq.direct", "fanout", passive=True)
    channel.exchange_declare("amq.topic", "x-pier-bogus", passive=True)
    assert channel.is_open


@pytest.mark.parametrize("name", ["amq.foo", "amq.direct.pier-test"])
def test_declare_reserved_prefix_is_403(channel, name):
    with channel_closed(403) as info:
        channel.exchange_declare(name, "direct")
    assert info["exc"].reply_text == (
        f"ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'")


@pytest.mark.parametrize("name,kind", [
    ("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
    ("amq.headers", "headers"), ("amq.match", "headers"),
])
def test_predeclared_exchanges_exist_and_are_durable(channel, name, kind):
    channel.exchange_declare(name, passive=True)
    # redeclaring with identical properties is allowed
    channel.exchange_declare(name, kind, durable=True)


def test_redeclare_predeclared_with_other_properties_is_406(channel):
    with channel_closed(406, "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange "
                             "'amq.direct' in vhost '/': received 'false' but current is "
                             "'true'"):
        channel.exchange_declare("amq.direct", "direct", durable=False)


@pytest.mark.parametrize("operation", ["declare", "declare_passive", "delete", "bind"])
def test_default_exchange_is_off_limits(channel, operation):
    ops = {
        "declare": lambda: channel.exchange_declare("", "direct"),
        "declare_passive": lambda: channel.exchange_declare("", passive=True),
        "delete": lambda: channel.exchange_delete(""),
        "bind": lambda: channel.queue_bind(
            channel.queue_declare("", exclusive=True).method.queue, "", "key"),
    }
    with channel_closed(403) as info:
        ops[operation]()
    assert info["exc"].reply_text == "ACCESS_REFUSED - operation not permitted on the " \
                                     "default exchange"


def test_delete_predeclared_exchange_is_403(channel):
    with channel_closed(403, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in "
                             "vhost '/' not allowed"):
        channel.exchange_delete("amq.direct")


def test_unknown_exchange_type_is_connection_error_503(connection, names):
    # A hard (connection) error in RabbitMQ, not a channel error. (RabbitMQ
    # says "invalid exchange type" instead of "unknown" for names that happen
    # to be existing Erlang atoms such as 'foo'; clients should not rely on it.)
    ch = connection.channel()
    with connection_closed(503, "COMMAND_INVALID - unknown exchange type 'x-pier-bogus'"):
        ch.exchange_declare(names.exchange(), "x-pier-bogus")
    assert connection.is_closed


def test_delete_missing_exchange_is_ok(channel):
    channel.exchange_delete("pier-test-never-declared-exchange")
    assert channel.is_open


def test_delete_if_unused_with_queue_binding_is_406(connection, names):
    x = names.exchange()
    ch = connection.channel()
    ch.exchange_declare(x, "direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, "k")
    with channel_closed(406) as info:
        ch.exchange_delete(x, if_unused=True)
    assert info["exc"].reply_text == f"PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use"
    assert exchange_exists(connection, x)
    ch = connection.channel()
    ch.queue_unbind(q, x, "k")
    ch.exchange_delete(x, if_unused=True)
    assert not exchange_exists(connection, x)


def test_delete_if_unused_considers_only_outgoing_bindings(connection, names):
    # RabbitMQ: an exchange that is only the *destination* of an
    # exchange-to-exchange binding is "unused"; the source is "in use".
    src, dst = names.exchange("src"), names.exchange("dst")
    ch = connection.channel()
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src)
    with channel_closed(406, f"PRECONDITION_FAILED - exchange '{src}' in vhost '/' in use"):
        ch.exchange_delete(src, if_unused=True)
    ch = connection.channel()
    ch.exchange_delete(dst, if_unused=True)
    assert not exchange_exists(connection, dst)


def test_delete_exchange_removes_its_bindings(connection, names):
    x = names.exchange()
    ch = connection.channel()
    ch.exchange_declare(x, "fanout")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x)
    ch.exchange_delete(x)
    ch.exchange_declare(x, "fanout")
    ch.confirm_delivery()
    ch.basic_publish(x, "", b"x")
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_auto_delete_exchange_deleted_when_last_binding_goes(connection, names):
    x = names.exchange("ad")
    ch = connection.channel()
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, x)
    ch.queue_bind(q2, x)
    ch.queue_unbind(q1, x)
    assert exchange_exists(connection, x)
    ch.queue_unbind(q2, x)
    assert not exchange_exists(connection, x)


def test_auto_delete_exchange_never_bound_stays(connection, names):
    x = names.exchange("ad")
    connection.channel().exchange_declare(x, "fanout", auto_delete=True)
    assert exchange_exists(connection, x)


def test_auto_delete_exchange_deleted_when_bound_queue_deleted(connection, names):
    x = names.exchange("ad")
    q = names.queue()
    ch = connection.channel()
    ch.exchange_declare(x, "fanout", auto_delete=True)
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    ch.queue_delete(q)
    assert not exchange_exists(connection, x)


def test_publish_to_internal_exchange_is_403(connection, names):
    x = names.exchange("internal")
    ch = connection.channel()
    ch.exchange_declare(x, "fanout", internal=True)
    ch.confirm_delivery()
    with channel_closed(403) as info:
        ch.basic_publish(x, "", b"x")
    assert info["exc"].reply_text == (
        f"ACCESS_REFUSED - cannot publish to internal exchange '{x}' in vhost '/'")


def test_internal_exchange_reachable_through_exchange_binding(connection, names):
    public, internal = names.exchange("public"), names.exchange("internal")
    ch = connection.channel()
    ch.exchange_declare(public, "fanout")
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_bind(internal, public)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, internal)
    ch.confirm_delivery()
    ch.basic_publish(public, "", b"via internal")
    assert ch.basic_get(q, auto_ack=True)[2] == b"via internal"


def test_bind_to_missing_exchange_is_404(channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    with channel_closed(404, "NOT_FOUND - no exchange 'pier-test-no-such-exchange' in "
                             "vhost '/'"):
        channel.queue_bind(q, "pier-test-no-such-exchange", "k")


def test_bind_missing_queue_is_404(channel):
    with channel_closed(404, "NOT_FOUND - no queue 'pier-test-no-such-queue' in vhost '/'"):
        channel.queue_bind("pier-test-no-such-queue", "amq.direct", "k")


def test_unbind_of_nonexistent_binding_is_ok(channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_unbind(q, "amq.direct", "never-bound")
    assert channel.is_open


@pytest.mark.parametrize("missing", ["queue", "exchange", "both"])
def test_queue_unbind_naming_a_missing_queue_or_exchange_is_ok(connection, names, missing):
    # Unbinding is idempotent in RabbitMQ, like delete: clients clean up with an unbind
    # after a delete (aio-pika's tests do) and get unbind-ok, not 404.
    x = names.exchange()
    ch = connection.channel()
    ch.exchange_declare(x, "direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, "k")
    queue = "pier-test-no-such-queue" if missing in ("queue", "both") else q
    exchange = "pier-test-no-such-exchange" if missing in ("exchange", "both") else x
    ch.queue_unbind(queue, exchange, "k")
    assert ch.is_open
    # nothing else was unbound
    ch.confirm_delivery()
    ch.basic_publish(x, "k", b"still bound")
    assert ch.queue_declare(q, passive=True).method.message_count == 1


def test_queue_unbind_after_deleting_the_queue_is_ok(channel, names):
    x, q = names.exchange(), names.queue()
    channel.exchange_declare(x, "fanout")
    channel.queue_declare(q)
    channel.queue_bind(q, x)
    channel.queue_delete(q)
    channel.queue_unbind(q, x)
    channel.exchange_delete(x)
    channel.exchange_unbind(x, "amq.fanout")
    assert channel.is_open


@pytest.mark.parametrize("missing", ["destination", "source", "both"])
def test_exchange_unbind_naming_a_missing_exchange_is_ok(channel, names, missing):
    x = names.exchange()
    channel.exchange_declare(x, "fanout")
    destination = "pier-test-no-such-dst" if missing in ("destination", "both") else x
    source = "pier-test-no-such-src" if missing in ("source", "both") else x
    channel.exchange_unbind(destination, source, "k")
    assert channel.is_open


@pytest.mark.parametrize("operation", ["queue_unbind", "queue_unbind_missing_queue",
                                       "exchange_unbind_source", "exchange_unbind_destination"])
def test_unbind_involving_the_default_exchange_is_403_even_if_nothing_exists(channel,
                                                                              operation):
    ops = {
        "queue_unbind": lambda: channel.queue_unbind(
            channel.queue_declare("", exclusive=True).method.queue, "", "k"),
        "queue_unbind_missing_queue": lambda: channel.queue_unbind(
            "pier-test-no-such-queue", "", "k"),
        "exchange_unbind_source": lambda: channel.exchange_unbind("amq.fanout", "", "k"),
        "exchange_unbind_destination": lambda: channel.exchange_unbind("", "amq.fanout", "k"),
    }
    with channel_closed(403, "ACCESS_REFUSED - operation not permitted on the default "
                             "exchange"):
        ops[operation]()


def test_noop_unbind_keeps_a_never_bound_auto_delete_exchange(connection, names):
    x = names.exchange("ad")
    ch = connection.channel()
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_unbind(q, x, "never-bound")
    ch.exchange_unbind("amq.fanout", x, "never-bound")
    assert exchange_exists(connection, x)


def test_rebinding_is_idempotent(channel, names):
    x = names.exchange()
    channel.exchange_declare(x, "direct")
    q = channel.queue_declare("", exclusive=True).method.queue
    for _ in range(3):
        channel.queue_bind(q, x, "k")
    channel.confirm_delivery()
    channel.basic_publish(x, "k", b"once")
    assert channel.queue_declare(q, passive=True).method.message_count == 1
