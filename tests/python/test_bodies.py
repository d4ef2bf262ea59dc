"""Message bodies of various sizes, split across frames, arrive intact."""

import hashlib
import os

import pytest

from helpers import collect_deliveries

SIZES = {
    "empty": 0,
    "one_byte": 1,
    "frame_boundary_minus_one": 131072 - 9,
    "frame_boundary": 131072 - 8,
    "frame_boundary_plus_one": 131072 - 7,
    "one_mib": 1024 * 1024,
    "twenty_mib": 20 * 1024 * 1024,
}


def body_of(size):
    # deterministic, non-repeating-ish content so misordered frames are caught
    seed = os.urandom(16)
    out = bytearray()
    counter = 0
    while len(out) < size:
        out.extend(hashlib.sha256(seed + counter.to_bytes(8, "big")).digest())
        counter += 1
    return bytes(out[:size])


@pytest.mark.parametrize("label", list(SIZES))
def test_body_roundtrip_via_get(channel, label):
    body = body_of(SIZES[label])
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    channel.basic_publish("", q, body)
    method, _props, got = channel.basic_get(q, auto_ack=True)
    assert method is not None
    assert len(got) == len(body)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("size", [0, 1024 * 1024, 20 * 1024 * 1024])
def test_body_roundtrip_via_consumer(connection, size):
    body = body_of(size)
    ch = connection.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got = []
    ch.basic_consume(q, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, body)
    collect_deliveries(connection, got, 1, timeout=30)
    assert len(got[0]) == size
    assert got[0] == body


def test_body_split_in_small_frames_raw(raw):
    """A client that negotiates the minimum frame size (4096) and sends a
    body in many small frames."""
    conn = raw()
    conn.handshake(frame_max=4096)
    conn.open_channel(1)
    q = conn.rpc(1, "queue.declare", "queue.declare-ok", exclusive=True)["queue"]
    body = body_of(100_000)
    conn.publish(1, "", q, body)
    conn.send_method(1, "basic.get", queue=q, no_ack=True)
    reply = conn.read_method()
    while reply.name == "basic.get-empty":
        conn.send_method(1, "basic.get", queue=q, no_ack=True)
        reply = conn.read_method()
    assert reply.name == "basic.get-ok"
    assert reply.body == body


def test_broker_respects_negotiated_frame_max(raw):
    conn = raw()
    conn.handshake(frame_max=4096)
    conn.open_channel(1)
    q = conn.rpc(1, "queue.declare", "queue.declare-ok", exclusive=True)["queue"]
    conn.publish(1, "", q, body_of(20_000))
    conn.rpc(1, "basic.consume", "basic.consume-ok", queue=q, no_ack=True)
    from amqp_raw import FRAME_BODY, FRAME_HEADER, FRAME_METHOD
    frames = []
    total = 0
    while total < 20_000:
        frame = conn.read_frame()
        frames.append(frame)
        if frame.type == FRAME_BODY:
            total += len(frame.payload)
    assert frames[0].type == FRAME_METHOD and frames[1].type == FRAME_HEADER
    body_frames = [f for f in frames if f.type == FRAME_BODY]
    assert all(len(f.payload) + 8 <= 4096 for f in body_frames)
    assert len(body_frames) >= 5
