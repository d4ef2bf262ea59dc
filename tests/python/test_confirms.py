"""Publisher confirms (confirm.select, basic.ack from the broker)."""

import threading

import pika
import pika.exceptions
import pytest

from helpers import drain


def run_async_publisher(broker, publishes, timeout=15.0):
    """Publish with pika's asynchronous SelectConnection in confirm mode.

    ``publishes`` is a list of (exchange, routing_key, body, mandatory).
    Returns the ordered list of events seen by the client:
    ("ack", delivery_tag, multiple), ("nack", ...), ("return", routing_key, body).
    """
    events = []
    state = {"error": None}
    done = threading.Event()

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch):
        ch.add_on_return_callback(
            lambda _ch, method, _props, body: events.append(
                ("return", method.routing_key, body, method.reply_code)))
        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _f: publish(ch))

    def publish(ch):
        for exchange, key, body, mandatory in publishes:
            ch.basic_publish(exchange, key, body, mandatory=mandatory)

    def on_confirm(frame):
        method = frame.method
        kind = "ack" if isinstance(method, pika.spec.Basic.Ack) else "nack"
        events.append((kind, method.delivery_tag, method.multiple))
        if len(set(confirmed_tags(events, strict_order=False))) >= len(publishes):
            frame_conn.close()

    def on_close(_conn, reason):
        if not isinstance(reason, pika.exceptions.ConnectionClosedByClient):
            state["error"] = reason
        frame_conn.ioloop.stop()
        done.set()

    frame_conn = pika.SelectConnection(broker.params(), on_open_callback=on_open,
                                       on_open_error_callback=lambda c, e: on_close(c, e),
                                       on_close_callback=on_close)
    timer = frame_conn.ioloop.call_later(timeout, lambda: frame_conn.close())
    frame_conn.ioloop.start()
    frame_conn.ioloop.remove_timeout(timer)
    assert state["error"] is None, state["error"]
    return events


def confirmed_tags(events, strict_order=True):
    """Expand (possibly multiple) confirms into the list of confirmed tags.

    ``multiple=True`` confirms every not-yet-confirmed tag up to and including
    the given one. No tag may be confirmed twice. With ``strict_order`` the
    confirms must also arrive in increasing tag order -- RabbitMQ does NOT
    guarantee that when routed and unroutable messages are mixed (unroutable
    ones are confirmed at once, routed ones when the queue has them), e.g.
    ack 10 (single) then ack 9 (multiple)."""
    confirmed = []
    seen = set()
    last = 0
    for event in events:
        if event[0] not in ("ack", "nack"):
            continue
        _kind, tag, multiple = event
        if strict_order:
            assert tag > last, f"confirm for tag {tag} after {last}: {events}"
        new = [t for t in range(1, tag + 1) if t not in seen] if multiple else [tag]
        assert new, f"confirm {event} confirms nothing new: {events}"
        assert tag not in seen, f"tag {tag} confirmed twice: {events}"
        confirmed.extend(new)
        seen.update(new)
        last = max(last, tag)
    return confirmed


def test_confirms_cover_all_delivery_tags_in_order(broker, channel):
    q = channel.queue_declare("", exclusive=False, auto_delete=True).method.queue
    channel.basic_consume(q, lambda *a: None)  # keeps the auto-delete queue alive
    n = 200
    events = run_async_publisher(broker, [("", q, str(i).encode(), False) for i in range(n)])
    assert all(e[0] == "ack" for e in events), events
    assert confirmed_tags(events) == list(range(1, n + 1))


def test_unroutable_messages_are_still_confirmed(broker):
    events = run_async_publisher(broker, [
        ("amq.direct", "pier-test-nobody-1", b"a", False),
        ("amq.direct", "pier-test-nobody-2", b"b", False),
    ])
    assert confirmed_tags(events) == [1, 2]
    assert all(e[0] == "ack" for e in events)


def test_basic_return_precedes_ack_for_mandatory_unroutable(broker):
    events = run_async_publisher(broker, [
        ("amq.direct", "pier-test-nobody-1", b"returned", True),
    ])
    kinds = [e[0] for e in events]
    assert kinds == ["return", "ack"], events
    assert events[0][1:] == ("pier-test-nobody-1", b"returned", 312)
    assert events[1][1] == 1


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_mixed_returns_and_acks(broker, channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    publishes = []
    for i in range(10):
        if i % 3 == 0:
            publishes.append(("", "pier-test-no-such-queue", f"r{i}".encode(), True))
        else:
            publishes.append(("", q, f"d{i}".encode(), True))
    events = run_async_publisher(broker, publishes)
    assert sorted(confirmed_tags(events, strict_order=False)) == list(range(1, 11))
    returns = [e for e in events if e[0] == "return"]
    assert [e[2] for e in returns] == [b"r0", b"r3", b"r6", b"r9"]
    # each return arrives before the confirm that covers its delivery tag
    for i, event in enumerate(events):
        if event[0] == "return":
            tag = int(event[2][1:]) + 1
            covered = confirmed_tags(events[:i], strict_order=False)
            assert tag not in covered, f"return for tag {tag} after its ack: {events}"
    assert [b for _m, _p, b in drain(channel, q)] == [
        f"d{i}".encode() for i in range(10) if i % 3]


def test_blocking_confirms(channel):
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    for i in range(20):
        channel.basic_publish("", q, str(i).encode())  # raises on nack
    assert channel.queue_declare(q, passive=True).method.message_count == 20


def test_confirm_select_twice_is_ok(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.rpc(1, "confirm.select", "confirm.select-ok")
    conn.rpc(1, "confirm.select", "confirm.select-ok")


def test_delivery_tags_count_per_channel(raw):
    conn = raw()
    conn.handshake()
    for ch in (1, 2):
        conn.open_channel(ch)
        conn.rpc(ch, "confirm.select", "confirm.select-ok")
    conn.publish(1, "amq.direct", "nobody", b"1")
    conn.publish(2, "amq.direct", "nobody", b"2")
    conn.publish(1, "amq.direct", "nobody", b"3")
    events = {1: [], 2: []}
    while len(confirmed_tags(events[1], False)) + len(confirmed_tags(events[2], False)) < 3:
        m = conn.expect("basic.ack")
        # acks may be coalesced with multiple=true
        events[m.channel].append(("ack", m["delivery_tag"], m["multiple"]))
    assert sorted(confirmed_tags(events[1], False)) == [1, 2]
    assert confirmed_tags(events[2], False) == [1]


def test_confirm_select_in_tx_mode_is_406(raw):
    conn = raw()
    conn.handshake()
    conn.open_channel(1)
    conn.rpc(1, "tx.select", "tx.select-ok")
    conn.send_method(1, "confirm.select")
    close = conn.expect("channel.close")
    assert close["reply_code"] == 406
    assert close["reply_text"] == \
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
