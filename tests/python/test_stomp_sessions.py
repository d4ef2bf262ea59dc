"""STOMP sessions: ack modes, NACK, prefetch, transactions, receipts, durable topic
subscriptions and their queues, heart-beats, backpressure and resource alarms. Validated
against RabbitMQ 3.10.8 (PIER_TEST_STOMP_PORT) except tests marked pier_only."""

from __future__ import annotations

import time
import urllib.parse
import uuid

import pika
import pytest

from helpers import wait_until
from stomp_helpers import (  # noqa: F401 - port, raw and qname are fixtures
    amqp_get, port, publish_n, qname, queue_depth, rabbit_subscription_queue, raw, subscribe)
from stomp_raw import RawStomp


# ------------------------------------------------------------------- ack modes


def test_client_individual_ack(raw, broker, qname):
    q = qname()
    c = raw()
    subscribe(c, f"/queue/{q}", ack="client-individual")
    publish_n(broker, q, 3)
    frames = [c.expect("MESSAGE") for _ in range(3)]
    assert [f.body for f in frames] == [b"m0", b"m1", b"m2"]
    assert all(f.get("ack") == f.get("message-id") for f in frames)
    c.send("ACK", {"id": frames[1].get("ack"), "receipt": "a"})
    c.expect("RECEIPT")
    c.send("DISCONNECT", {"receipt": "d"})
    c.expect("RECEIPT")
    wait_until(lambda: queue_depth(broker, q) == 2, message="two requeued")


def test_client_ack_is_cumulative(raw, broker, qname):
    q = qname()
    c = raw()
    subscribe(c, f"/queue/{q}", ack="client")
    publish_n(broker, q, 3)
    frames = [c.expect("MESSAGE") for _ in range(3)]
    c.send("ACK", {"id": frames[1].get("ack"), "receipt": "a"})
    c.expect("RECEIPT")
    c.send("DISCONNECT", {"receipt": "d"})
    c.expect("RECEIPT")
    wait_until(lambda: queue_depth(broker, q) == 1, message="one requeued")
    assert amqp_get(broker, q)[2] == b"m2"


def test_ack_1_1_uses_message_id(raw, broker, qname):
    q = qname()
    c = raw(version="1.1")
    subscribe(c, f"/queue/{q}", ack="client-individual")
    publish_n(broker, q, 1)
    f = c.expect("MESSAGE")
    assert f.get("ack") is None
    c.send("ACK", {"message-id": f.get("message-id"), "subscription": "1", "receipt": "a"})
    c.expect("RECEIPT")
    c.send("DISCONNECT", {"receipt": "d"})
    c.expect("RECEIPT")
    assert queue_depth(broker, q) == 0


def test_nack_requeues_by_default(raw, broker, qname):
    q = qname()
    c = raw()
    subscribe(c, f"/queue/{q}", ack="client-individual")
    publish_n(broker, q, 1)
    f = c.expect("MESSAGE")
    assert f.get("redelivered") == "false"
    c.send("NACK", {"id": f.get("ack")})
    f = c.expect("MESSAGE")
    assert f.body == b"m0" and f.get("redelivered") == "true"
    c.send("NACK", {"id": f.get("ack"), "requeue": "false", "receipt": "n"})
    c.expect("RECEIPT")
    assert c.recv(timeout=0.5) is None
    assert queue_depth(broker, q) == 0


def test_ack_without_id(raw):
    c = raw()
    c.send("ACK", {"id": "nonsense"})
    f = c.expect("ERROR")
    assert f.get("message") == "Invalid header"
    assert f.body == b'"ACK" must include a valid "id" header\n'


def test_prefetch_count(raw, broker, qname):
    q = qname()
    c = raw()
    subscribe(c, f"/queue/{q}", ack="client-individual", prefetch_count="1")
    publish_n(broker, q, 3)
    f = c.expect("MESSAGE")
    assert c.recv(timeout=0.5) is None
    c.send("ACK", {"id": f.get("ack")})
    assert c.expect("MESSAGE").body == b"m1"


# ---------------------------------------------------------------- transactions

def test_transaction_holds_sends_until_commit(raw, broker, qname):
    q = qname()
    c = raw()
    c.send("SEND", {"destination": f"/queue/{q}", "receipt": "decl"}, "first")
    c.expect("RECEIPT")
    assert amqp_get(broker, q)[2] == b"first"
    c.send("BEGIN", {"transaction": "tx1", "receipt": "b"})
    c.expect("RECEIPT")
    c.send("SEND", {"destination": f"/queue/{q}", "transaction": "tx1"}, "t1")
    c.send("SEND", {"destination": f"/queue/{q}", "transaction": "tx1", "receipt": "s"}, "t2")
    assert c.recv(timeout=0.5) is None  # its receipt comes with the COMMIT
    assert queue_depth(broker, q) == 0
    c.send("COMMIT", {"transaction": "tx1", "receipt": "c"})
    assert c.expect("RECEIPT").get("receipt-id") == "c"
    assert c.expect("RECEIPT").get("receipt-id") == "s"
    assert amqp_get(broker, q)[2] == b"t1"
    assert amqp_get(broker, q)[2] == b"t2"


def test_abort_discards(raw, broker, qname):
    q = qname()
    c = raw()
    c.send("SEND", {"destination": f"/queue/{q}", "receipt": "decl"}, "first")
    c.expect("RECEIPT")
    amqp_get(broker, q)
    c.send("BEGIN", {"transaction": "tx"})
    c.send("SEND", {"destination": f"/queue/{q}", "transaction": "tx"}, "never")
    c.send("ABORT", {"transaction": "tx", "receipt": "a"})
    c.expect("RECEIPT")
    c.send("COMMIT", {"transaction": "tx"})
    f = c.expect("ERROR")
    assert f.get("message") == "Bad transaction"
    assert f.body == b'Invalid transaction identifier: "tx"\n'
    assert queue_depth(broker, q) == 0


def test_ack_in_transaction_takes_effect_at_commit(raw, broker, qname):
    q = qname()
    c = raw()
    subscribe(c, f"/queue/{q}", ack="client-individual")
    publish_n(broker, q, 1)
    f = c.expect("MESSAGE")
    c.send("BEGIN", {"transaction": "t"})
    c.send("ACK", {"id": f.get("ack"), "transaction": "t"})
    c.send("COMMIT", {"transaction": "t", "receipt": "c"})
    c.expect("RECEIPT")
    c.send("DISCONNECT", {"receipt": "d"})
    c.expect("RECEIPT")
    assert queue_depth(broker, q) == 0


def test_aborted_ack_leaves_message_unacked(raw, broker, qname):
    q = qname()
    c = raw()
    subscribe(c, f"/queue/{q}", ack="client-individual")
    publish_n(broker, q, 1)
    f = c.expect("MESSAGE")
    c.send("BEGIN", {"transaction": "t"})
    c.send("ACK", {"id": f.get("ack"), "transaction": "t"})
    c.send("ABORT", {"transaction": "t"})
    c.send("DISCONNECT", {"receipt": "d"})
    c.expect("RECEIPT")
    wait_until(lambda: queue_depth(broker, q) == 1, message="requeued")


# -------------------------------------------------------------------- receipts

def test_receipts_for_every_frame(raw, qname):
    q = qname()
    c = raw()
    for cmd, h in [("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "1"}),
                   ("BEGIN", {"transaction": "t"}),
                   ("ABORT", {"transaction": "t"}),
                   ("UNSUBSCRIBE", {"id": "1"})]:
        c.send(cmd, dict(h, receipt=f"r-{cmd}"))
        assert c.expect("RECEIPT").get("receipt-id") == f"r-{cmd}"
    c.send("DISCONNECT", {"receipt": "bye"})
    assert c.expect("RECEIPT").get("receipt-id") == "bye"
    assert c.wait_closed()


def test_persistent_send_receipt(raw, broker, qname):
    q = qname()
    c = raw()
    for i in range(20):
        c.send("SEND", {"destination": f"/queue/{q}", "persistent": "true",
                        "receipt": f"p{i}"}, f"durable {i}")
    got = {c.expect("RECEIPT").get("receipt-id") for _ in range(20)}
    assert got == {f"p{i}" for i in range(20)}
    assert queue_depth(broker, q) == 20


def test_unsubscribe_unknown(raw):
    c = raw()
    c.send("UNSUBSCRIBE", {"id": "9"})
    f = c.expect("ERROR")
    assert f.get("message") == "No subscription found"
    assert f.body == (b"UNSUBSCRIBE must refer to an existing subscription.\n"
                      b"Subscription to \"id='9'\" not found.\n")


def test_duplicate_subscription_id(raw, qname):
    c = raw()
    subscribe(c, f"/queue/{qname()}", sid="dup")
    c.send("SUBSCRIBE", {"destination": f"/queue/{qname()}", "id": "dup"})
    f = c.expect("ERROR")
    assert f.get("message") == "Duplicated subscription identifier"
    assert f.body == b"A subscription identified by 'T_dup' already exists."
    assert c.wait_closed()


# ------------------------------------------------------- durable subscriptions


def test_durable_topic_subscription_survives_disconnect(raw, broker):
    key = f"durable.{uuid.uuid4().hex[:8]}"
    sid = f"sub-{uuid.uuid4().hex[:6]}"
    queue = rabbit_subscription_queue(key, sid)
    try:
        c = raw()
        subscribe(c, f"/topic/{key}", sid=sid, durable="true", auto_delete="false")
        c.send("DISCONNECT", {"receipt": "d"})
        c.expect("RECEIPT")
        with broker.connect() as conn:
            ch = conn.channel()
            ch.queue_declare(queue, passive=True)
            ch.basic_publish("amq.topic", key, b"while away",
                             pika.BasicProperties(delivery_mode=2))
        c2 = raw()
        subscribe(c2, f"/topic/{key}", sid=sid, durable="true", auto_delete="false")
        f = c2.expect("MESSAGE")
        assert f.body == b"while away"
        assert f.get("destination") == f"/topic/{key}"
    finally:
        with broker.connect() as conn:
            conn.channel().queue_delete(queue)


@pytest.mark.same_node("transient and exclusive queues (and their bindings) live on the node "
                       "that declared them: the AMQP side talks to the STOMP connection's node")
def test_non_durable_topic_queue_goes_with_the_connection(raw, broker):
    key = f"transient.{uuid.uuid4().hex[:8]}"
    c = raw()
    subscribe(c, f"/topic/{key}", sid="t")
    with broker.connect() as conn:
        ch = conn.channel()
        ch.basic_publish("amq.topic", key, b"1")
    assert c.expect("MESSAGE").body == b"1"
    c.send("DISCONNECT", {"receipt": "d"})
    c.expect("RECEIPT")
    time.sleep(0.3)
    # Nothing bound for the key any more: a mandatory publish comes back.
    with broker.connect() as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.UnroutableError):
            ch.basic_publish("amq.topic", key, b"2", mandatory=True)


# ------------------------------------------------------------------ heart-beats

def test_server_sends_heart_beats(raw):
    c = raw(connect=False)
    f = c.connect(heart_beat="0,300")
    assert f.get("heart-beat") == "1000,0"  # whole seconds, at least one
    time.sleep(2.6)
    assert c.recv(timeout=0.2) is None
    assert c.heartbeats >= 2
    assert not c.closed


def test_silent_client_is_closed(raw):
    c = raw(connect=False)
    f = c.connect(heart_beat="1000,0")
    assert f.get("heart-beat") == "0,1000"
    start = time.monotonic()
    assert c.wait_closed(timeout=10)
    assert time.monotonic() - start >= 1.0


def test_client_heart_beats_keep_it_open(raw):
    c = raw(connect=False)
    c.connect(heart_beat="1000,0")
    for _ in range(16):
        time.sleep(0.25)
        c.send_raw(b"\n")
    assert c.recv(timeout=0.1) is None and not c.closed




def test_slow_reader_holds_messages_in_the_queue(raw, broker, qname):
    """Backpressure: a subscriber that does not read its socket is not sent everything
    at once: deliveries stop while its buffers are full, and resume when it reads."""
    q = qname()
    c = raw()
    subscribe(c, f"/queue/{q}")  # auto ack: nothing but the socket limits deliveries
    body = b"x" * 100_000
    n = 400  # 40 MB: more than the socket buffers and the server's outbound buffer
    with broker.connect() as conn:
        ch = conn.channel()
        for _ in range(n):
            ch.basic_publish("", q, body)
    time.sleep(1.0)
    assert queue_depth(broker, q) > 0, "everything left the queue for a client that reads nothing"
    got = 0
    while got < n:
        f = c.recv(timeout=10)
        assert f is not None, f"only {got} of {n} arrived"
        assert f.command == "MESSAGE" and len(f.body) == len(body)
        got += 1
    assert queue_depth(broker, q) == 0


@pytest.mark.pier_only
def test_disk_alarm_blocks_stomp_publishers(tmp_path):
    """As AMQP publishers: a STOMP connection that publishes while a resource alarm is set is
    no longer read (its SEND was taken); a consuming STOMP connection keeps being served."""
    from conftest import EXTERNAL_URL, PIER_CONFIG, PierProcess
    if EXTERNAL_URL:
        pytest.skip("needs a Pier process with an unreachable disk free limit")
    config = "disk_free_limit.absolute = 1000000000000000000\n" + PIER_CONFIG
    proc = PierProcess(tmp_path / "pier-disk", config).start()
    try:
        consumer = RawStomp(proc.stomp_port)
        consumer.connect()
        subscribe(consumer, "/queue/alarmq")
        publisher = RawStomp(proc.stomp_port)
        publisher.connect()
        publisher.send("SEND", {"destination": "/queue/alarmq"}, "first")
        assert consumer.expect("MESSAGE").body == b"first"
        time.sleep(0.3)
        # Blocked: the next frame is not read, so its receipt does not come.
        publisher.send("SEND", {"destination": "/queue/alarmq", "receipt": "r"}, "second")
        assert publisher.recv(timeout=1.0) is None
        # The consumer's connection is served.
        consumer.send("BEGIN", {"transaction": "t", "receipt": "b"})
        consumer.expect("RECEIPT")
        publisher.close()
        consumer.close()
    finally:
        proc.terminate()
        assert "panicked" not in proc.log_path.read_text(errors="replace")


def test_durable_queue_declared_over_amqp(raw, broker, qname):
    """A durable queue declared by an AMQP client (on another node in cluster mode: the
    STOMP subscription then consumes through the queue's home node)."""
    q = qname()
    with broker.connect() as conn:
        conn.channel().queue_declare(q, durable=True)
    c = raw()
    subscribe(c, f"/amq/queue/{q}", ack="client-individual")
    publish_n(broker, q, 3)
    frames = [c.expect("MESSAGE") for _ in range(3)]
    assert [f.body for f in frames] == [b"m0", b"m1", b"m2"]
    c.send("NACK", {"id": frames[0].get("ack")})
    again = c.expect("MESSAGE")
    assert again.body == b"m0" and again.get("redelivered") == "true"
    for f in frames[1:] + [again]:
        c.send("ACK", {"id": f.get("ack")})
    c.send("DISCONNECT", {"receipt": "d"})
    c.expect("RECEIPT")
    wait_until(lambda: queue_depth(broker, q) == 0, message="all acked")


def test_subscription_queue_properties(raw, mgmt):
    """RabbitMQ 3.10's subscription queues: transient auto-delete for a plain topic
    subscription (named by x-queue-name when given), durable auto-delete for durable:true,
    durable and kept for durable:true with auto-delete:false."""
    key = uuid.uuid4().hex[:8]
    named = f"pier-test.stomp.xqn.{key}"
    kept = rabbit_subscription_queue(f"k.{key}", "kept")
    try:
        c = raw()
        subscribe(c, f"/topic/t.{key}", sid="1", x_queue_name=named)
        subscribe(c, f"/topic/d.{key}", sid="2", durable="true")
        subscribe(c, f"/topic/k.{key}", sid="kept", durable="true", auto_delete="false")

        def props(name):
            status, q = mgmt.call("GET", "/queues/%2F/" + urllib.parse.quote(name, safe=""))
            assert status == 200, name
            return q["durable"], q["auto_delete"], q.get("exclusive", False)

        assert props(named) == (False, True, False)
        assert props(rabbit_subscription_queue(f"d.{key}", "2")) == (True, True, False)
        assert props(kept) == (True, False, False)
        c.send("DISCONNECT", {"receipt": "d"})
        c.expect("RECEIPT")

        def gone():
            return mgmt.call("GET", "/queues/%2F/" + urllib.parse.quote(named, safe=""))[0] == 404
        wait_until(gone, message="the x-queue-name queue deleted with its subscription")
        assert props(kept) == (True, False, False)
    finally:
        mgmt.call("DELETE", "/queues/%2F/" + urllib.parse.quote(kept, safe=""))
