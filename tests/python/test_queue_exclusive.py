"""Exclusive queues: owned by their declaring connection, locked for others,
deleted when the owner goes away."""

import pytest

from helpers import channel_closed, queue_exists, wait_until

# In cluster mode (PIER_TEST_CLUSTER) these connections share a node: exclusive queues stay on
# the node that declared them (issue 13).
pytestmark = pytest.mark.same_node(
    "transient or exclusive objects shared by several connections: they stay on the node "
    "that declared them (issue 13)")

LOCKED = ("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in "
          "vhost '/'. It could be originally declared on another connection or the "
          "exclusive property value does not match that of the original declaration.")


@pytest.fixture
def exclusive_queue(connection, names):
    q = names.queue("excl")
    connection.channel().queue_declare(q, exclusive=True)
    return q


@pytest.mark.parametrize("operation", [
    "declare_exclusive", "declare", "declare_passive", "consume", "get", "purge", "delete",
    "bind",
])
def test_exclusive_queue_is_locked_for_other_connections(make_connection, exclusive_queue,
                                                         operation):
    q = exclusive_queue
    ch = make_connection().channel()
    ops = {
        "declare_exclusive": lambda: ch.queue_declare(q, exclusive=True),
        "declare": lambda: ch.queue_declare(q),
        "declare_passive": lambda: ch.queue_declare(q, passive=True),
        "consume": lambda: ch.basic_consume(q, lambda *a: None),
        "get": lambda: ch.basic_get(q),
        "purge": lambda: ch.queue_purge(q),
        "delete": lambda: ch.queue_delete(q),
        "bind": lambda: ch.queue_bind(q, "amq.fanout"),
    }
    with channel_closed(405) as info:
        ops[operation]()
    assert info["exc"].reply_text == LOCKED.format(q=q)


def test_unbind_of_another_connections_exclusive_queue(connection, make_connection,
                                                      exclusive_queue, names):
    # RabbitMQ checks exclusivity only for a binding that exists: unbinding anything else
    # (nothing bound, or a missing exchange) is unbind-ok like any no-op unbind.
    x = names.exchange()
    connection.channel().exchange_declare(x, "direct")
    connection.channel().queue_bind(exclusive_queue, x, "bound")
    ch = make_connection().channel()
    ch.queue_unbind(exclusive_queue, x, "not-bound")
    ch.queue_unbind(exclusive_queue, "pier-test-no-such-exchange", "bound")
    with channel_closed(405) as info:
        ch.queue_unbind(exclusive_queue, x, "bound")
    assert info["exc"].reply_text == LOCKED.format(q=exclusive_queue)


def test_exclusive_queue_usable_from_other_channel_of_same_connection(connection,
                                                                      exclusive_queue):
    ch = connection.channel()
    ch.confirm_delivery()
    ch.basic_publish("", exclusive_queue, b"x")
    assert ch.queue_declare(exclusive_queue, exclusive=True).method.message_count == 1
    assert ch.queue_declare(exclusive_queue, passive=True).method.message_count == 1
    _m, _p, body = ch.basic_get(exclusive_queue, auto_ack=True)
    assert body == b"x"


def test_publishing_to_exclusive_queue_from_other_connection_is_allowed(
        connection, make_connection, exclusive_queue):
    other = make_connection().channel()
    other.confirm_delivery()
    other.basic_publish("", exclusive_queue, b"from elsewhere")
    _m, _p, body = connection.channel().basic_get(exclusive_queue, auto_ack=True)
    assert body == b"from elsewhere"


def test_redeclaring_exclusive_queue_as_non_exclusive_on_same_connection_is_405(
        connection, exclusive_queue):
    ch = connection.channel()
    with channel_closed(405) as info:
        ch.queue_declare(exclusive_queue)
    assert info["exc"].reply_text == LOCKED.format(q=exclusive_queue)


def test_redeclaring_shared_queue_as_exclusive_is_405(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    with channel_closed(405) as info:
        channel.queue_declare(q, exclusive=True)
    assert info["exc"].reply_text == LOCKED.format(q=q)


def test_exclusive_queue_deleted_when_connection_closes(broker, make_connection, connection):
    owner = make_connection()
    q = owner.channel().queue_declare("", exclusive=True).method.queue
    assert queue_exists(connection, q)
    owner.close()
    wait_until(lambda: not queue_exists(connection, q), timeout=5,
               message=f"exclusive queue {q} to be deleted")


def test_exclusive_queue_survives_channel_close(make_connection, connection):
    owner = make_connection()
    ch = owner.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.close()
    assert queue_exists(owner, q)


def test_exclusive_queue_deleted_when_connection_drops(raw, connection):
    # The owning connection goes away without connection.close.
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    q = conn.rpc(1, "queue.declare", "queue.declare-ok", exclusive=True)["queue"]
    assert q.startswith("amq.gen-")
    assert queue_exists(connection, q)
    conn.close()
    wait_until(lambda: not queue_exists(connection, q), timeout=5,
               message=f"exclusive queue {q} to be deleted")
