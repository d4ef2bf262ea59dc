"""Durability across restarts and crashes: persistent messages in durable queues, durable
topology, publisher confirms only after fsync, recovery from torn and corrupt segment files.
Each test runs private Pier instances that it stops (SIGTERM) or kills (SIGKILL) and restarts
on the same data directory."""

import random
import threading
import time

import pika
import pika.exceptions
import pytest

from conftest import PIER_CONFIG
from helpers import MgmtApi, wait_message_count

pytestmark = pytest.mark.pier_only

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _connect(proc):
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=proc.amqp_port, connection_attempts=1, socket_timeout=10))


def _restart(proc):
    assert proc.terminate() == 0, proc.log_tail()
    return proc.start()


def _drain(ch, queue):
    got = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((body, method.redelivered, props))


def test_restart_keeps_persistent_messages_in_order(pier_factory):
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    ch.exchange_declare("dur.topic", "topic", durable=True)
    ch.queue_declare("dur.q", durable=True, arguments={"x-max-length": 100000})
    ch.queue_bind("dur.q", "dur.topic", "orders.#")
    ch.confirm_delivery()
    for i in range(500):
        ch.basic_publish("dur.topic", "orders.new", f"m{i}".encode(),
                         properties=pika.BasicProperties(delivery_mode=2, message_id=str(i),
                                                         headers={"n": i}))
    ch.basic_publish("dur.topic", "orders.new", b"transient")  # delivery_mode 1: not kept
    for _ in range(50):
        method, _, _ = ch.basic_get("dur.q")
        ch.basic_ack(method.delivery_tag)
    method, _, body = ch.basic_get("dur.q")  # delivered, never acked
    assert body == b"m50"
    conn.close()

    _restart(proc)
    conn = _connect(proc)
    ch = conn.channel()
    declared = ch.queue_declare("dur.q", durable=True, passive=True)
    assert declared.method.message_count == 450
    got = _drain(ch, "dur.q")
    assert [b for b, _, _ in got] == [f"m{i}".encode() for i in range(50, 500)]
    assert got[0][1] is True, "a delivered, unacked message comes back redelivered"
    assert all(not r for _, r, _ in got[1:])
    assert got[1][2].headers == {"n": 51} and got[1][2].message_id == "51"
    # The durable binding still routes; the queue's arguments came back.
    ch.basic_publish("dur.topic", "orders.x", b"after", properties=PERSISTENT)
    assert ch.basic_get("dur.q", auto_ack=True)[2] == b"after"
    ch.queue_declare("dur.q", durable=True, arguments={"x-max-length": 100000})
    conn.close()


def test_transient_things_do_not_survive(pier_factory):
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    ch.exchange_declare("t.x", "direct", durable=False)
    ch.exchange_declare("d.x", "direct", durable=True)
    ch.queue_declare("t.q", durable=False)
    ch.queue_declare("d.q", durable=True)
    ch.queue_declare("ex.q", durable=True, exclusive=True)
    ch.queue_bind("d.q", "d.x", "k")
    ch.basic_publish("", "d.q", b"persistent", properties=PERSISTENT)
    ch.basic_publish("", "t.q", b"in a transient queue", properties=PERSISTENT)
    conn.close()

    _restart(proc)
    conn = _connect(proc)
    for passive in (lambda c: c.exchange_declare("t.x", passive=True),
                    lambda c: c.queue_declare("t.q", passive=True),
                    lambda c: c.queue_declare("ex.q", passive=True)):
        c = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            passive(c)
        assert e.value.reply_code == 404
    ch = conn.channel()
    ch.exchange_declare("d.x", passive=True)
    assert [b for b, _, _ in _drain(ch, "d.q")] == [b"persistent"]
    conn.close()


def test_delete_and_purge_are_durable(pier_factory):
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    for q in ("gone.q", "purged.q"):
        ch.queue_declare(q, durable=True)
        for i in range(20):
            ch.basic_publish("", q, b"x%d" % i, properties=PERSISTENT)
    ch.queue_delete("gone.q")
    assert ch.queue_purge("purged.q").method.message_count == 20
    ch.basic_publish("", "purged.q", b"kept", properties=PERSISTENT)
    conn.close()

    _restart(proc)
    conn = _connect(proc)
    ch = conn.channel()
    assert [b for b, _, _ in _drain(ch, "purged.q")] == [b"kept"]
    c = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        c.queue_declare("gone.q", passive=True)
    conn.close()


def _publish_until_killed(proc, queue, confirmed, stop):
    """Publishes with confirms until the broker dies; records what was confirmed."""
    try:
        conn = _connect(proc)
        ch = conn.channel()
        ch.confirm_delivery()
        i = 0
        while not stop.is_set():
            body = f"c{i}".encode()
            ch.basic_publish("", queue, body, properties=PERSISTENT)  # returns once confirmed
            confirmed.append(body)
            i += 1
    except (pika.exceptions.AMQPError, OSError):
        pass  # the broker was killed mid-publish: that one was never confirmed


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_never_loses_a_confirmed_message(pier_factory, round_):
    proc = pier_factory()
    conn = _connect(proc)
    conn.channel().queue_declare("crash.q", durable=True)
    conn.close()
    confirmed: list[bytes] = []
    stop = threading.Event()
    publisher = threading.Thread(target=_publish_until_killed,
                                 args=(proc, "crash.q", confirmed, stop))
    publisher.start()
    time.sleep(random.uniform(0.3, 1.2))
    proc.kill()  # SIGKILL at a random moment
    stop.set()
    publisher.join(timeout=30)
    assert confirmed, "the publisher got no confirm before the kill"

    proc.start()
    conn = _connect(proc)
    got = [b for b, _, _ in _drain(conn.channel(), "crash.q")]
    conn.close()
    missing = set(confirmed) - set(got)
    duplicates = len(got) - len(set(got))
    print(f"confirmed {len(confirmed)}, recovered {len(got)}, duplicates {duplicates}")
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
    # FIFO survives the crash: recovered messages are in publish order.
    order = [int(b[1:]) for b in got]
    assert order == sorted(order)


def _publish_to_exchange_until_killed(proc, exchange, confirmed, stop):
    """`_publish_until_killed` through an exchange (bodies f0, f1, ...)."""
    try:
        conn = _connect(proc)
        ch = conn.channel()
        ch.confirm_delivery()
        i = 0
        while not stop.is_set():
            body = f"f{i}".encode()
            ch.basic_publish(exchange, "", body, properties=PERSISTENT)
            confirmed.append(body)
            i += 1
    except (pika.exceptions.AMQPError, OSError):
        pass


def test_sigkill_never_loses_a_confirmed_message_across_shards(pier_factory):
    """Four queues on four store shards, a publisher each and one more through a fanout
    exchange to all four (one record per shard), SIGKILL at a random moment: every confirmed
    message is back in its queue, each queue in publish order."""
    queues = [f"crash.s{n}" for n in range(4)]
    proc = pier_factory("store_shards = 4\n" + PIER_CONFIG)
    conn = _connect(proc)
    ch = conn.channel()
    ch.exchange_declare("crash.fan", "fanout", durable=True)
    for q in queues:
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "crash.fan")
    conn.close()
    shard_dirs = {p.parent for p in proc.data_dir.glob("msgs/2f/**/queues.log")}
    assert len(shard_dirs) == 4, shard_dirs
    stop = threading.Event()
    direct = {q: [] for q in queues}
    fanned: list[bytes] = []
    threads = [threading.Thread(target=_publish_until_killed, args=(proc, q, direct[q], stop))
               for q in queues]
    threads.append(threading.Thread(target=_publish_to_exchange_until_killed,
                                    args=(proc, "crash.fan", fanned, stop)))
    for t in threads:
        t.start()
    time.sleep(random.uniform(0.5, 1.5))
    proc.kill()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert fanned and all(direct.values()), "every publisher got a confirm before the kill"

    proc.start()
    conn = _connect(proc)
    total = 0
    for q in queues:
        got = [b for b, _, _ in _drain(conn.channel(), q)]
        missing = (set(direct[q]) | set(fanned)) - set(got)
        assert not missing, f"{q}: {len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
        for prefix in (b"c", b"f"):
            order = [int(b[1:]) for b in got if b.startswith(prefix)]
            assert order == sorted(order), f"{q}: order changed"
        total += len(direct[q]) + len(fanned)
    conn.close()
    print(f"confirmed {total} across 4 shards ({len(fanned)} through the fanout), none lost")


def test_torn_tail_and_flipped_bytes_are_skipped(pier_factory):
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    ch.queue_declare("corrupt.q", durable=True)
    ch.confirm_delivery()
    bodies = [f"body-{i:04d}-".encode() * 8 for i in range(200)]
    for b in bodies:
        ch.basic_publish("", "corrupt.q", b, properties=PERSISTENT)
    conn.close()
    assert proc.terminate() == 0

    # The vhost "/" lives in msgs/2f (hex of its name), its queues on the shards there (msgs/2f
    # itself and msgs/2f/shard-NN); the queue's records are in the largest segment.
    segments = sorted(proc.data_dir.glob("msgs/2f/**/*.seg"), key=lambda p: p.stat().st_size)
    assert segments, list(proc.data_dir.rglob("*"))
    seg = segments[-1]
    data = bytearray(seg.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF  # a flipped byte inside some record
    data = data[:-7]      # a torn last record
    seg.write_bytes(bytes(data))

    proc.start()
    conn = _connect(proc)
    got = [b for b, _, _ in _drain(conn.channel(), "corrupt.q")]
    conn.close()
    assert set(got) <= set(bodies), "a corrupt record was delivered"
    assert len(got) >= len(bodies) - 3, f"only {len(got)} of {len(bodies)} intact records served"
    assert bodies[-1] not in got, "the torn record was delivered"
    assert got == [b for b in bodies if b in set(got)], "order changed"
    assert "corrupt" in proc.log_tail(200).lower() or "torn" in proc.log_tail(200).lower()


def test_delayed_messages_on_a_durable_exchange_survive_a_restart(pier_factory):
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    ch.exchange_declare("delay.x", "x-delayed-message", durable=True,
                        arguments={"x-delayed-type": "direct"})
    ch.queue_declare("delay.q", durable=True)
    ch.queue_bind("delay.q", "delay.x", "k")
    ch.confirm_delivery()
    ch.basic_publish("delay.x", "k", b"late", properties=pika.BasicProperties(
        delivery_mode=2, headers={"x-delay": 2500, "app": "kept"}))
    ch.basic_publish("delay.x", "k", b"soon", properties=pika.BasicProperties(
        delivery_mode=2, headers={"x-delay": 300}))
    conn.close()

    started = time.monotonic()
    _restart(proc)
    conn = _connect(proc)
    ch = conn.channel()
    assert ch.queue_declare("delay.q", passive=True).method.message_count == 0 or \
        time.monotonic() - started > 0.3
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 2 and time.monotonic() < deadline:
        method, props, body = ch.basic_get("delay.q", auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        got.append((body, props.headers))
    assert [b for b, _ in got] == [b"soon", b"late"]
    late_headers = got[1][1]
    assert late_headers["app"] == "kept" and "x-pier-due" not in late_headers
    assert time.monotonic() - started >= 2.0, "the delay was not kept across the restart"
    conn.close()


def test_recovered_messages_keep_their_original_expiry_deadline(pier_factory):
    """RabbitMQ keeps a persistent message's expiry deadline across a restart; the TTL does not
    start again when the broker comes back. Stored deadline headers never reach consumers."""
    proc = pier_factory()
    conn = _connect(proc)
    ch = conn.channel()
    ch.queue_declare("ttl.q", durable=True, arguments={"x-message-ttl": 5000})
    ch.queue_declare("ttl.msg", durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", "ttl.q", b"queue-ttl", properties=PERSISTENT)
    ch.basic_publish("", "ttl.msg", b"message-ttl",
                     properties=pika.BasicProperties(delivery_mode=2, expiration="5000"))
    ch.basic_publish("", "ttl.msg", b"long", properties=pika.BasicProperties(
        delivery_mode=2, expiration="600000", headers={"a": 1}))
    published = time.monotonic()
    conn.close()
    time.sleep(3)

    _restart(proc)
    conn = _connect(proc)
    ch = conn.channel()
    # Past the original deadline (5 s after publishing) but well before 5 s after the restart.
    time.sleep(max(0.0, published + 6.0 - time.monotonic()))
    assert time.monotonic() - published < 8.5, "restart too slow for this test to mean anything"
    assert ch.basic_get("ttl.q", auto_ack=True)[0] is None, "queue TTL counted from the publish"
    method, props, body = ch.basic_get("ttl.msg", auto_ack=True)
    assert body == b"long", "per-message TTL counted from the publish"
    assert props.headers == {"a": 1}, "the stored deadline is not shown to consumers"
    assert props.expiration == "600000"
    conn.close()


def _assert_keeps(proc, queue, expected, published=5):
    """Declares `queue`, publishes `published` messages: it must keep `expected` of them."""
    conn = _connect(proc)
    ch = conn.channel()
    ch.queue_declare(queue)
    for i in range(published):
        ch.basic_publish("", queue, b"m%d" % i)
    wait_message_count(conn, queue, expected)
    time.sleep(0.2)
    assert ch.queue_declare(queue, passive=True).method.message_count == expected
    conn.close()


CONFIG_WITH_POLICY = PIER_CONFIG + """
[[policies]]
name = "from-config"
pattern = "^cfg\\\\."
apply-to = "queues"
definition = { max-length = 3 }
"""


def test_policies_set_over_http_survive_a_restart(pier_factory):
    proc = pier_factory(CONFIG_WITH_POLICY)
    http = MgmtApi(proc.http_port)
    cap = {"pattern": r"^capped\.", "apply-to": "queues", "priority": 1,
           "definition": {"max-length": 2}}
    assert http.call("PUT", "/policies/%2F/cap", cap)[0] in (201, 204)
    # The same name as a config-file policy: the config file wins at the next start.
    assert http.call("PUT", "/policies/%2F/from-config",
                     {"pattern": r"^cfg\.", "apply-to": "queues",
                      "definition": {"max-length": 1}})[0] in (201, 204)
    # A policy of a vhost that is then deleted goes with it.
    assert http.call("PUT", "/vhosts/gone-vh", {})[0] in (201, 204)
    assert http.call("PUT", "/policies/gone-vh/p",
                     {"pattern": ".*", "definition": {"max-length": 1}})[0] in (201, 204)
    assert http.call("DELETE", "/vhosts/gone-vh")[0] == 204

    _restart(proc)
    status, got = http.call("GET", "/policies/%2F/cap")
    assert status == 200, got
    assert got["definition"] == {"max-length": 2} and got["pattern"] == r"^capped\."
    assert got["apply-to"] == "queues" and got["priority"] == 1
    _assert_keeps(proc, "capped.q", 2)  # the recovered policy applies to new queues
    status, got = http.call("GET", "/policies/%2F/from-config")
    assert status == 200 and got["definition"] == {"max-length": 3}, got
    assert http.call("GET", "/vhosts/gone-vh")[0] == 404
    assert http.call("GET", "/policies/gone-vh")[0] == 404

    assert http.call("DELETE", "/policies/%2F/cap")[0] == 204
    _restart(proc)
    assert http.call("GET", "/policies/%2F/cap")[0] == 404
    _assert_keeps(proc, "capped.q2", 5)  # a deleted policy stays deleted
    # The stored copy of the config-file policy was dropped: still the config's value.
    status, got = http.call("GET", "/policies/%2F/from-config")
    assert status == 200 and got["definition"] == {"max-length": 3}, got
