"""Quorum queues (x-queue-type: quorum) on one node: RabbitMQ's declaration rules and texts,
delete/consume refusals, delivery counts and the delivery limit, single active consumer,
consumer priorities, RabbitMQ 4's two message priorities, basic.get, purge, the queue's consumer timeout, management fields and
recovery of every message (transient ones too) across a restart.

Validated against RabbitMQ 3.10.8 (PIER_TEST_AMQP_URL / PIER_TEST_MGMT_URL). Tests marked
pier_only target RabbitMQ 4.x behaviour where 3.10 differs (docs/quorum-queues.md), or restart
a private Pier."""

import time
import urllib.parse

import pika
import pika.exceptions
import pytest

from conftest import PIER_CONFIG
from helpers import channel_closed, collect_deliveries, connection_closed, wait_until

QQ = {"x-queue-type": "quorum"}


def declare_qq(ch, name, **args):
    return ch.queue_declare(name, durable=True, arguments={**QQ, **args})


# ---- declaration ----

@pytest.mark.parametrize("durable,exclusive,auto_delete,prop", [
    (True, False, True, "auto-delete"),
    (False, False, True, "auto-delete"),
    (True, True, False, "exclusive-owner"),
    (False, True, False, "exclusive-owner"),
    (False, False, False, "non-durable"),
])
def test_properties_are_refused(connection, names, durable, exclusive, auto_delete, prop):
    q = names.queue("qq")
    ch = connection.channel()
    with channel_closed(406) as info:
        ch.queue_declare(q, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
                         arguments=QQ)
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{q}' in vhost '/'")


@pytest.mark.parametrize("durable", [True, False])
def test_server_named_is_refused(connection, durable):
    ch = connection.channel()
    with channel_closed(406) as info:
        ch.queue_declare("", durable=durable, arguments=QQ)
    assert info["exc"].reply_text == (
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue")


@pytest.mark.parametrize("arg,value", [
    ("x-max-priority", 5),
    ("x-queue-mode", "lazy"),
    ("x-queue-version", 2),
    ("x-max-age", "1D"),
    ("x-stream-max-segment-size-bytes", 1000000),
    ("x-queue-master-locator", "min-masters"),
    ("x-initial-cluster-size", 3),
])
def test_other_queue_types_arguments_are_refused(connection, names, arg, value):
    q = names.queue("qq")
    ch = connection.channel()
    with channel_closed(406) as info:
        # Even on a non-durable declaration: arguments are checked before properties.
        ch.queue_declare(q, durable=False, arguments={**QQ, arg: value})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/' "
        f"of queue type rabbit_quorum_queue")


@pytest.mark.pier_only
def test_stream_filter_size_is_refused_as_in_4x(connection, names):
    """RabbitMQ 3.10 does not know x-stream-filter-size-bytes (it accepts it); 4.x refuses it
    for quorum queues, like every x-stream-* argument."""
    q = names.queue("qq")
    ch = connection.channel()
    with channel_closed(406) as info:
        declare_qq(ch, q, **{"x-stream-filter-size-bytes": 20})
    assert info["exc"].reply_text.endswith("of queue type rabbit_quorum_queue")


@pytest.mark.parametrize("args,reason", [
    ({"x-max-length": -5}, "'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-5}}"),
    # A value error wins over an argument of another queue type, whatever the order.
    ({"x-max-priority": 5, "x-max-length": -5},
     "'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-5}}"),
    ({"x-quorum-initial-group-size": 0},
     "'x-quorum-initial-group-size' for queue '{q}' in vhost '/': {{value_zero,0}}"),
    ({"x-quorum-initial-group-size": -1},
     "'x-quorum-initial-group-size' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
    ({"x-dead-letter-strategy": "bogus"},
     "'x-dead-letter-strategy' for queue '{q}' in vhost '/': invalid_dlx_strategy"),
    ({"x-dead-letter-strategy": 5},
     "'x-dead-letter-strategy' for queue '{q}' in vhost '/': {{unacceptable_type,signedint}}"),
    ({"x-queue-leader-locator": "bogus"},
     "'x-queue-leader-locator' for queue '{q}' in vhost '/': invalid_queue_locator_arg"),
    ({"x-max-in-memory-length": -1},
     "'x-max-in-memory-length' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
])
def test_bad_values_use_rabbitmq_texts(connection, names, args, reason):
    q = names.queue("qq")
    ch = connection.channel()
    with channel_closed(406) as info:
        declare_qq(ch, q, **args)
    assert info["exc"].reply_text == (
        "PRECONDITION_FAILED - invalid arg " + reason.format(q=q))


def test_accepted_arguments(channel, names):
    dlx = names.exchange("dlx")
    channel.exchange_declare(dlx, "fanout")
    q = names.queue("qq")
    args = {
        "x-dead-letter-exchange": dlx,
        "x-dead-letter-routing-key": "dead",
        "x-dead-letter-strategy": "at-least-once",
        "x-expires": 600000,
        "x-max-length": 1000,
        "x-max-length-bytes": 1000000,
        "x-overflow": "reject-publish",
        "x-single-active-consumer": True,
        "x-quorum-initial-group-size": 1,
        "x-delivery-limit": 5,
        "x-message-ttl": 60000,
        "x-queue-leader-locator": "client-local",
        "x-consumer-timeout": 600000,
        "x-max-in-memory-length": 10,
        "x-max-in-memory-bytes": 10000,
    }
    assert declare_qq(channel, q, **args).method.queue == q
    # Redeclaring with the same arguments is fine.
    declare_qq(channel, q, **args)
    for strategy in ("at-most-once",):
        q2 = names.queue("qq")
        declare_qq(channel, q2, **{"x-dead-letter-strategy": strategy,
                                   "x-overflow": "drop-head", "x-delivery-limit": -1})


def test_redeclare_as_another_type_is_inequivalent(connection, names):
    q = names.queue("qq")
    declare_qq(connection.channel(), q)
    ch = connection.channel()
    with channel_closed(406) as info:
        ch.queue_declare(q, durable=True)
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': "
        f"received none but current is the value 'quorum' of type 'longstr'")
    ch = connection.channel()
    with channel_closed(406) as info:
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "classic"})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': "
        f"received 'classic' but current is 'quorum'")
    # Passive declarations do not compare.
    connection.channel().queue_declare(q, passive=True)


@pytest.mark.parametrize("flag", ["if-unused", "if-empty"])
def test_conditional_delete_is_not_implemented(make_connection, names, flag):
    conn = make_connection()
    q = names.queue("qq")
    declare_qq(conn.channel(), q)
    ch = conn.channel()
    with connection_closed(540) as info:
        if flag == "if-unused":
            ch.queue_delete(q, if_unused=True)
        else:
            ch.queue_delete(q, if_empty=True)
    assert info["exc"].reply_text == (
        f"NOT_IMPLEMENTED - cannot delete queue '{q}' in vhost '/'. queue.delete operations "
        f"with {flag} flag set are not supported by quorum queues")
    # A plain delete works.
    make_connection().channel().queue_delete(q)


def test_global_qos_consume_is_not_implemented(make_connection, names):
    conn = make_connection()
    q = names.queue("qq")
    declare_qq(conn.channel(), q)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10, global_qos=True)
    with connection_closed(540) as info:
        ch.basic_consume(q, lambda *a: None)
    assert info["exc"].reply_text == (
        f"NOT_IMPLEMENTED - queue '{q}' in vhost '/' does not support global qos")
    # Per-consumer prefetch is what quorum queues take.
    ch = make_connection().channel()
    ch.basic_qos(prefetch_count=10)
    ch.basic_consume(q, lambda *a: None)


# ---- semantics ----

def _count(props):
    return (props.headers or {}).get("x-delivery-count")


def test_delivery_count_grows_with_each_requeue(channel, names):
    q = names.queue("qq")
    declare_qq(channel, q)
    channel.basic_publish("", q, b"m")
    counts = []
    for _ in range(3):
        method, props, body = wait_until(lambda: _get(channel, q), message="a message")
        assert body == b"m"
        counts.append((method.redelivered, _count(props)))
        channel.basic_nack(method.delivery_tag, requeue=True)
    # The first delivery: not redelivered (3.10 sends x-delivery-count 0, 4.x none).
    assert counts[0][0] is False and counts[0][1] in (None, 0)
    assert counts[1:] == [(True, 1), (True, 2)]


def _get(ch, q, ack=False):
    method, props, body = ch.basic_get(q, auto_ack=ack)
    return (method, props, body) if method else None


@pytest.mark.pier_only
def test_first_delivery_has_no_delivery_count_as_in_4x(channel, names):
    q = names.queue("qq")
    declare_qq(channel, q)
    channel.basic_publish("", q, b"m", properties=pika.BasicProperties(headers={"a": 1}))
    method, props, _ = wait_until(lambda: _get(channel, q), message="a message")
    assert props.headers == {"a": 1}
    channel.basic_nack(method.delivery_tag, requeue=True)
    _, props, _ = wait_until(lambda: _get(channel, q), message="a message")
    assert props.headers == {"a": 1, "x-delivery-count": 1}


def test_delivery_limit_dead_letters_with_reason(channel, names):
    dlx = names.exchange("dlx")
    dlq = names.queue("dlq")
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dlq)
    channel.queue_bind(dlq, dlx)
    q = names.queue("qq")
    declare_qq(channel, q, **{"x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    channel.basic_publish("", q, b"poison")
    for _ in range(3):
        method, _, _ = wait_until(lambda: _get(channel, q), message="a delivery")
        channel.basic_nack(method.delivery_tag, requeue=True)
    method, props, body = wait_until(lambda: _get(channel, dlq), message="a dead letter")
    assert body == b"poison"
    death = props.headers["x-death"][0]
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == q
    assert channel.queue_declare(q, passive=True).method.message_count == 0


def _at_least_once(channel, names, target):
    """A quorum queue dead-lettering at least once through the default exchange to
    `target` (RabbitMQ's rule: at-least-once needs x-overflow reject-publish)."""
    q = names.queue("qq-alo")
    declare_qq(channel, q, **{"x-dead-letter-strategy": "at-least-once",
                              "x-overflow": "reject-publish",
                              "x-dead-letter-exchange": "",
                              "x-dead-letter-routing-key": target})
    return q


def test_at_least_once_dead_letters_reach_their_target(channel, names):
    dlq = names.queue("dlq-alo")
    channel.queue_declare(dlq, durable=True)
    q = _at_least_once(channel, names, dlq)
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish("", q, f"m{i}".encode(),
                              pika.BasicProperties(delivery_mode=2))
    for _ in range(3):
        method, _, _ = wait_until(lambda: _get(channel, q), message="a delivery")
        channel.basic_reject(method.delivery_tag, requeue=False)
    got = []
    for _ in range(3):
        _, props, body = wait_until(lambda: _get(channel, dlq, ack=True),
                                    message="a dead letter")
        got.append(body)
        death = props.headers["x-death"][0]
        assert (death["reason"], death["queue"]) == ("rejected", q)
    assert sorted(got) == [b"m0", b"m1", b"m2"]
    # Confirmed by the target, they left the source.
    wait_until(lambda: channel.queue_declare(q, passive=True).method.message_count == 0,
               message="the source empty")


@pytest.mark.pier_only
def test_at_least_once_dead_letters_wait_for_a_route(channel, names):
    """A dead letter with no queue to go to stays in the source queue and goes once its
    target exists. (RabbitMQ retries after dead_letter_worker_publisher_confirm_timeout,
    180 s by default; Pier every 5 s: hence Pier only.) At most once it would be gone."""
    dlq = names.queue("dlq-later")
    q = _at_least_once(channel, names, dlq)
    channel.basic_publish("", q, b"kept", pika.BasicProperties(delivery_mode=2))
    method, _, _ = wait_until(lambda: _get(channel, q), message="a delivery")
    channel.basic_reject(method.delivery_tag, requeue=False)
    time.sleep(0.5)
    channel.queue_declare(dlq, durable=True)
    _, props, body = wait_until(lambda: _get(channel, dlq, ack=True), timeout=20,
                                message="the dead letter, once its queue exists")
    assert body == b"kept"
    assert props.headers["x-death"][0]["reason"] == "rejected"


def test_delivery_limit_without_dlx_drops(channel, names):
    q = names.queue("qq")
    declare_qq(channel, q, **{"x-delivery-limit": 0})
    channel.basic_publish("", q, b"poison")
    method, _, _ = wait_until(lambda: _get(channel, q), message="a delivery")
    channel.basic_nack(method.delivery_tag, requeue=True)
    time.sleep(0.2)
    assert channel.basic_get(q)[0] is None


@pytest.mark.pier_only
def test_default_delivery_limit_is_20_as_in_4x(channel, names):
    """RabbitMQ 3.10 has no default limit; 4.x drops a message after 20 requeues."""
    q = names.queue("qq")
    declare_qq(channel, q)
    channel.basic_publish("", q, b"poison")
    for _ in range(21):
        method, _, _ = wait_until(lambda: _get(channel, q), message="a delivery")
        channel.basic_nack(method.delivery_tag, requeue=True)
    assert channel.basic_get(q)[0] is None
    # -1 turns the limit off.
    q2 = names.queue("qq")
    declare_qq(channel, q2, **{"x-delivery-limit": -1})
    channel.basic_publish("", q2, b"m")
    for _ in range(25):
        method, _, _ = wait_until(lambda: _get(channel, q2), message="a delivery")
        channel.basic_nack(method.delivery_tag, requeue=True)
    assert channel.basic_get(q2)[0] is not None


@pytest.mark.pier_only
def test_delivery_limit_policy(channel, names, mgmt):
    q = names.queue("qqpol")
    status, _ = mgmt.call("PUT", "/policies/%2F/qq-limit", {
        "pattern": "^pier-test\\.qqpol\\.", "apply-to": "queues",
        "definition": {"delivery-limit": 1}})
    assert status in (201, 204)
    try:
        declare_qq(channel, q)
        channel.basic_publish("", q, b"poison")
        for _ in range(2):
            method, _, _ = wait_until(lambda: _get(channel, q), message="a delivery")
            channel.basic_nack(method.delivery_tag, requeue=True)
        assert channel.basic_get(q)[0] is None
    finally:
        mgmt.call("DELETE", "/policies/%2F/qq-limit")


def test_basic_get_purge_and_counts(channel, names):
    q = names.queue("qq")
    declare_qq(channel, q)
    for i in range(5):
        channel.basic_publish("", q, f"m{i}".encode())
    wait_until(lambda: channel.queue_declare(q, passive=True).method.message_count == 5)
    method, _, body = channel.basic_get(q, auto_ack=True)
    assert body == b"m0" and method.message_count == 4
    assert channel.queue_purge(q).method.message_count == 4
    assert channel.basic_get(q)[0] is None


def test_single_active_consumer(connection, names):
    ch = connection.channel()
    q = names.queue("qq")
    declare_qq(ch, q, **{"x-single-active-consumer": True})
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(("a", b)), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got.append(("b", b)), auto_ack=True)
    for i in range(4):
        ch.basic_publish("", q, f"m{i}".encode())
    collect_deliveries(connection, got, 4)
    assert {who for who, _ in got} == {"a"}


def test_consumer_priorities(connection, names):
    ch = connection.channel()
    q = names.queue("qq")
    declare_qq(ch, q)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(("low", b)), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got.append(("high", b)), auto_ack=True,
                     arguments={"x-priority": 10})
    for i in range(4):
        ch.basic_publish("", q, f"m{i}".encode())
    collect_deliveries(connection, got, 4)
    assert {who for who, _ in got} == {"high"}


@pytest.mark.pier_only
def test_message_priorities_two_levels_two_to_one_as_in_4x(channel, names):
    """RabbitMQ 4 (3.10 has none): priority 5 and above is high, the rest normal; high goes
    first, but every third message is the normal head while both levels wait."""
    q = names.queue("qq")
    declare_qq(channel, q)
    channel.confirm_delivery()
    for i, p in enumerate([None, 0, 4]):
        channel.basic_publish("", q, f"n{i}".encode(), properties=pika.BasicProperties(priority=p))
    for i, p in enumerate([5, 9, 255, 5, 6, 7]):
        channel.basic_publish("", q, f"h{i}".encode(), properties=pika.BasicProperties(priority=p))
    got = []
    for _ in range(9):
        _, props, body = wait_until(lambda: _get(channel, q, ack=True), message="a message")
        got.append(body.decode())
    assert got == ["h0", "h1", "n0", "h2", "h3", "n1", "h4", "h5", "n2"]
    assert channel.basic_get(q)[0] is None


def test_transient_and_persistent_messages_are_confirmed(channel, names):
    q = names.queue("qq")
    declare_qq(channel, q)
    channel.confirm_delivery()
    channel.basic_publish("", q, b"transient", properties=pika.BasicProperties(delivery_mode=1))
    channel.basic_publish("", q, b"persistent", properties=pika.BasicProperties(delivery_mode=2))
    assert channel.queue_declare(q, passive=True).method.message_count == 2


@pytest.mark.pier_only
def test_consumer_timeout_cancels_that_consumer_only(make_connection, names):
    """x-consumer-timeout (RabbitMQ 4.x; 3.10 ignores it): the late consumer gets basic.cancel
    and its messages go back to the queue; the channel and its other consumers stay."""
    conn = make_connection(client_properties={"capabilities": {
        "consumer_cancel_notify": True}})
    ch = conn.channel()
    q = names.queue("qq")
    declare_qq(ch, q, **{"x-consumer-timeout": 300})
    q2 = names.queue("qq")
    declare_qq(ch, q2)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    late = []
    tag = ch.basic_consume(q, lambda c, m, p, b: late.append((m, b)))
    other = []
    ch.basic_consume(q2, lambda c, m, p, b: (other.append(b), c.basic_ack(m.delivery_tag)))
    ch.basic_publish("", q, b"held")
    collect_deliveries(conn, late, 1)
    wait_until(lambda: (conn.process_data_events(time_limit=0.05), cancelled)[1],
               timeout=10, message="basic.cancel")
    assert cancelled == [tag]
    assert ch.is_open
    # The other consumer on the same channel still gets messages.
    ch.basic_publish("", q2, b"still here")
    collect_deliveries(conn, other, 1)
    # The held message is back in the queue, redelivered with a count.
    ch2 = make_connection().channel()
    method, props, body = wait_until(lambda: _get(ch2, q), message="the returned message")
    assert body == b"held" and method.redelivered
    assert _count(props) == 1


# ---- management ----

def test_management_shows_type_members_and_leader(channel, names, mgmt):
    q = names.queue("qq")
    declare_qq(channel, q, **{"x-delivery-limit": 7})
    # RabbitMQ fills in the stats part (node) with its next statistics emission.
    info = wait_until(lambda: _queue_info(mgmt, q), timeout=15, interval=0.5,
                      message="queue in management")
    assert info["type"] == "quorum"
    assert info["durable"] is True
    assert info["arguments"]["x-queue-type"] == "quorum"
    assert info["arguments"]["x-delivery-limit"] == 7
    assert info["leader"] == info["node"]
    # One member on a single node; on a cluster with replication, the group's members.
    assert info["node"] in info["members"]
    assert sorted(info["online"]) == sorted(info["members"])


def _queue_info(mgmt, q):
    status, body = mgmt.call("GET", f"/queues/%2F/{q}")
    return body if status == 200 and body.get("node") and body.get("leader") else None


# ---- recovery ----

def _connect(proc):
    """A connection to a private Pier (restart tests)."""
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=proc.amqp_port, connection_attempts=1, socket_timeout=10))


@pytest.mark.pier_only
def test_restart_keeps_quorum_queue_and_every_message(pier_factory):
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    declare_qq(ch, "qq.dur", **{"x-delivery-limit": 5})
    ch.confirm_delivery()
    for i in range(10):
        mode = 1 if i % 2 == 0 else 2
        ch.basic_publish("", "qq.dur", f"m{i}".encode(),
                         properties=pika.BasicProperties(delivery_mode=mode))
    method, _, body = ch.basic_get("qq.dur")
    assert body == b"m0"
    ch.basic_ack(method.delivery_tag)
    method, _, body = ch.basic_get("qq.dur")  # delivered, never acked
    assert body == b"m1"
    conn.close()

    assert proc.terminate() == 0, proc.log_tail()
    proc.start()
    conn = _connect(proc)
    ch = conn.channel()
    declared = declare_qq(ch, "qq.dur", **{"x-delivery-limit": 5})
    assert declared.method.message_count == 9
    got = []
    while True:
        method, props, body = ch.basic_get("qq.dur", auto_ack=True)
        if method is None:
            break
        got.append((body, method.redelivered, props.delivery_mode))
    assert [b for b, _, _ in got] == [f"m{i}".encode() for i in range(1, 10)]
    assert got[0][1] is True, "a delivered, unacked message comes back redelivered"
    # Transient messages survived and kept their delivery mode.
    assert [m for _, _, m in got] == [2, 1, 2, 1, 2, 1, 2, 1, 2]
    with channel_closed(406):
        ch.queue_declare("qq.dur", durable=True)
    conn.close()


@pytest.mark.pier_only
def test_delivery_counts_and_the_limit_survive_a_restart(pier_factory):
    """RabbitMQ keeps a quorum queue's delivery counts in its Raft log: a poison message
    cannot escape its delivery limit by a broker restart, and x-delivery-count carries on."""
    proc = pier_factory()
    args = {"x-delivery-limit": 3, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "qq.dl"}
    conn = _connect(proc)
    ch = conn.channel()
    ch.queue_declare("qq.dl", durable=True)
    declare_qq(ch, "qq.counted", **args)
    ch.confirm_delivery()
    ch.basic_publish("", "qq.counted", b"poison")
    ch.basic_publish("", "qq.counted", b"fine")
    counts = []
    for _ in range(2):
        method, props, body = wait_until(lambda: _get(ch, "qq.counted"), message="poison")
        assert body == b"poison"
        counts.append(_count(props))
        ch.basic_nack(method.delivery_tag, requeue=True)
    # Taken a third time and still unacked when the connection goes: counted too.
    method, props, body = wait_until(lambda: _get(ch, "qq.counted"), message="poison")
    counts.append(_count(props))
    assert counts == [None, 1, 2]
    conn.close()

    assert proc.terminate() == 0, proc.log_tail()
    proc.start()
    conn = _connect(proc)
    ch = conn.channel()
    declare_qq(ch, "qq.counted", **args)
    method, props, body = wait_until(lambda: _get(ch, "qq.counted"), message="poison")
    assert (body, method.redelivered, _count(props)) == (b"poison", True, 3)
    # A fourth return passes the limit of 3, as it would have without the restart.
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, props, body = wait_until(lambda: _get(ch, "qq.dl", ack=True), message="dead letter")
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    method, props, body = wait_until(lambda: _get(ch, "qq.counted", ack=True), message="fine")
    assert (body, _count(props)) == (b"fine", None)
    conn.close()


COUNTING_4_3 = '\n[quorum_queues]\ndelivery_counting = "4.3"\n'


def _counts(props):
    headers = props.headers or {}
    return headers.get("x-acquired-count"), headers.get("x-delivery-count")


@pytest.mark.pier_only
def test_rabbitmq_4_3_counts_failed_deliveries_apart(pier_factory):
    """RabbitMQ 4.3's counting (`delivery_counting = "4.3"`; 4.3.0 release notes, #13885):
    x-acquired-count has every return, x-delivery-count only the failed deliveries (a
    reject with requeue, a channel closed with the message unacked), and the delivery limit
    applies to those: nacks may return a message without limit. Both survive a restart."""
    proc = pier_factory(PIER_CONFIG + COUNTING_4_3)
    conn = _connect(proc)
    ch = conn.channel()
    ch.queue_declare("qq43.dl", durable=True)
    declare_qq(ch, "qq43", **{"x-delivery-limit": 1, "x-dead-letter-exchange": "",
                              "x-dead-letter-routing-key": "qq43.dl"})
    ch.confirm_delivery()
    ch.basic_publish("", "qq43", b"m")
    seen = []
    for _ in range(4):  # four nacks: past a limit of 1, still in the queue
        method, props, _ = wait_until(lambda: _get(ch, "qq43"), message="m")
        seen.append((method.redelivered, _counts(props)))
        ch.basic_nack(method.delivery_tag, requeue=True)
    method, props, _ = wait_until(lambda: _get(ch, "qq43"), message="m")
    seen.append((method.redelivered, _counts(props)))
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, props, _ = wait_until(lambda: _get(ch, "qq43"), message="m")
    seen.append((method.redelivered, _counts(props)))
    assert seen == [(False, (None, None)), (True, (1, None)), (True, (2, None)),
                    (True, (3, None)), (True, (4, None)), (True, (5, 1))]
    # A channel closed with it unacked: a second failed delivery, past the limit.
    ch.basic_nack(method.delivery_tag, requeue=True)
    other = conn.channel()
    _, props, _ = wait_until(lambda: _get(other, "qq43"), message="m")
    assert _counts(props) == (6, 1)
    other.close()
    method, props, body = wait_until(lambda: _get(ch, "qq43.dl", ack=True), message="dead")
    assert body == b"m"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"

    # Both counts are kept across a restart.
    ch.basic_publish("", "qq43", b"r")
    method, _, _ = wait_until(lambda: _get(ch, "qq43"), message="r")
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, _ = wait_until(lambda: _get(ch, "qq43"), message="r")
    ch.basic_nack(method.delivery_tag, requeue=True)
    conn.close()
    assert proc.terminate() == 0, proc.log_tail()
    proc.start()
    conn = _connect(proc)
    ch = conn.channel()
    method, props, body = wait_until(lambda: _get(ch, "qq43"), message="r")
    assert (body, method.redelivered, _counts(props)) == (b"r", True, (2, 1))
    ch.basic_reject(method.delivery_tag, requeue=True)  # the second failed one: dead
    method, props, body = wait_until(lambda: _get(ch, "qq43.dl", ack=True), message="dead")
    assert body == b"r"
    assert ch.queue_declare("qq43", passive=True).method.message_count == 0
    conn.close()


@pytest.mark.pier_only
def test_kept_dead_letters_stay_kept_across_a_restart(pier_factory):
    """An at-least-once dead letter waiting for its target is still one after a restart
    (RabbitMQ keeps it in the Raft state): it is not handed to the queue's consumers, and it
    goes to its target once that exists."""
    proc = pier_factory()
    args = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "alo.later"}
    conn = _connect(proc)
    ch = conn.channel()
    declare_qq(ch, "qq.alo", **args)
    ch.confirm_delivery()
    ch.basic_publish("", "qq.alo", b"kept")
    ch.basic_publish("", "qq.alo", b"ready")
    method, _, body = wait_until(lambda: _get(ch, "qq.alo"), message="a delivery")
    assert body == b"kept"
    ch.basic_reject(method.delivery_tag, requeue=False)  # no target queue yet: kept
    conn.close()

    assert proc.terminate() == 0, proc.log_tail()
    proc.start()
    conn = _connect(proc)
    ch = conn.channel()
    declare_qq(ch, "qq.alo", **args)
    _, _, body = wait_until(lambda: _get(ch, "qq.alo", ack=True), message="the ready one")
    assert body == b"ready"
    assert _get(ch, "qq.alo") is None, "the kept dead letter is not a ready message"
    ch.queue_declare("alo.later", durable=True)
    _, props, body = wait_until(lambda: _get(ch, "alo.later", ack=True), timeout=20,
                                message="the dead letter, once its queue exists")
    assert body == b"kept"
    assert props.headers["x-death"][0]["reason"] == "rejected"
    conn.close()


def test_kept_dead_letters_are_shown(channel, names, mgmt):
    """messages_dlx / message_bytes_dlx: the at-least-once dead letters a quorum queue keeps
    (here: no queue to go to yet)."""
    q = _at_least_once(channel, names, names.queue("dlq-missing"))
    channel.basic_publish("", q, b"12345", pika.BasicProperties(delivery_mode=2))
    method, _, _ = wait_until(lambda: _get(channel, q), message="a delivery")
    channel.basic_reject(method.delivery_tag, requeue=False)
    path = f"/queues/%2F/{urllib.parse.quote(q, safe='')}"
    # RabbitMQ refreshes queue figures with its statistics (every 5 s by default).
    wait_until(lambda: (lambda b: (b.get("messages_dlx"), b.get("message_bytes_dlx")))(
        mgmt.get(path)) == (1, 5), timeout=20, message="one kept dead letter shown")
