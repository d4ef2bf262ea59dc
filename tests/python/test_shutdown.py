"""Graceful shutdown of Pier on SIGTERM: clients get connection.close 320
CONNECTION_FORCED and the process exits 0. Uses private Pier instances."""

import signal
import time

import pika
import pika.exceptions
import pytest

from amqp_raw import RawConnection

pytestmark = pytest.mark.pier_only


def _params(proc, **kwargs):
    return pika.ConnectionParameters(host="127.0.0.1", port=proc.amqp_port,
                                     connection_attempts=1, socket_timeout=10, **kwargs)


def test_sigterm_without_clients_exits_zero(pier_factory):
    proc = pier_factory()
    assert proc.terminate(timeout=15) == 0


def test_sigterm_closes_pika_connection_with_320(pier_factory):
    proc = pier_factory()
    conn = pika.BlockingConnection(_params(proc))
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_consume(q, lambda *a: None)
    proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as excinfo:
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
    assert excinfo.value.reply_code == 320
    assert excinfo.value.reply_text.startswith("CONNECTION_FORCED")
    proc.proc.wait(timeout=15)
    assert proc.proc.returncode == 0, proc.log_tail()


def test_sigterm_raw_client_gets_connection_close_320(pier_factory):
    proc = pier_factory()
    clients = []
    for _ in range(3):
        conn = RawConnection("127.0.0.1", proc.amqp_port, timeout=15)
        conn.handshake()
        conn.open_channel(1)
        clients.append(conn)
    proc.proc.send_signal(signal.SIGTERM)
    for conn in clients:
        close = conn.expect_connection_close(timeout=15)  # answers close-ok
        assert close["reply_code"] == 320
        assert close["reply_text"].startswith("CONNECTION_FORCED")
        conn.read_until_closed(timeout=15)
        conn.close()
    proc.proc.wait(timeout=15)
    assert proc.proc.returncode == 0, proc.log_tail()


def test_sigterm_with_unresponsive_client_still_exits(pier_factory):
    """A client that never answers close-ok must not keep the broker alive."""
    proc = pier_factory()
    conn = RawConnection("127.0.0.1", proc.amqp_port, timeout=15)
    conn.handshake()
    proc.proc.send_signal(signal.SIGTERM)
    proc.proc.wait(timeout=30)
    assert proc.proc.returncode == 0, proc.log_tail()
    conn.close()
