"""Authentication, vhosts and permissions."""

import pika
import pika.exceptions
import pytest

from helpers import channel_closed


def test_guest_from_loopback(broker):
    conn = broker.connect(user="guest", password="guest", vhost="/")
    assert conn.is_open
    conn.close()


def test_wrong_password_is_refused(broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as excinfo:
        broker.connect(user="guest", password="wrong-password")
    text = str(excinfo.value)
    assert "(403)" in text
    assert ("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
            "For details see the broker logfile.") in text


def test_unknown_user_is_refused(broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as excinfo:
        broker.connect(user="pier-test-nobody", password="x")
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in \
        str(excinfo.value)


def test_wrong_password_raw_connection_close_403(raw):
    """With the authentication_failure_close capability, the broker sends
    connection.close 403 after start-ok (that is what pika keys on)."""
    from amqp_raw import PROTOCOL_HEADER, plain_response
    conn2 = raw()
    conn2.send(PROTOCOL_HEADER)
    conn2.expect("connection.start")
    conn2.send_method(0, "connection.start-ok",
                      client_properties={"capabilities": {"authentication_failure_close": True}},
                      mechanism="PLAIN", response=plain_response("guest", "nope"),
                      locale="en_US")
    close = conn2.expect("connection.close")
    assert close["reply_code"] == 403
    assert close["reply_text"] == ("ACCESS_REFUSED - Login was refused using authentication "
                                   "mechanism PLAIN. For details see the broker logfile.")
    assert (close["class_id"], close["method_id"]) == (0, 0)


def _start_ok_then_read_until_closed(conn, mechanism, response, capabilities):
    from amqp_raw import PROTOCOL_HEADER
    conn.send(PROTOCOL_HEADER)
    start = conn.expect("connection.start")
    conn.send_method(0, "connection.start-ok",
                     client_properties={"capabilities": capabilities},
                     mechanism=mechanism, response=response, locale="en_US")
    # RabbitMQ waits ~3 s before closing after a failed authentication
    return start, conn.methods_until_closed(timeout=10)


def test_unsupported_mechanism_closes_connection(raw):
    # RabbitMQ just closes the socket (no connection.close, no tune).
    start, methods = _start_ok_then_read_until_closed(
        raw(), "PIER-NOT-A-MECHANISM", b"x", {"authentication_failure_close": True})
    assert b"PLAIN" in start["mechanisms"].split()
    assert (start["version_major"], start["version_minor"]) == (0, 9)
    assert all(m.name == "connection.close" for m in methods), methods


def test_wrong_password_without_capability_just_closes(raw):
    # Without authentication_failure_close the broker closes the socket
    # (RabbitMQ sends nothing at all).
    from amqp_raw import plain_response
    _start, methods = _start_ok_then_read_until_closed(
        raw(), "PLAIN", plain_response("guest", "wrong"), {})
    assert all(m.name == "connection.close" for m in methods), methods


def test_amqplain_mechanism(raw):
    from amqp_raw import PROTOCOL_HEADER, enc_table
    conn = raw()
    conn.send(PROTOCOL_HEADER)
    start = conn.expect("connection.start")
    if b"AMQPLAIN" not in start["mechanisms"].split():
        pytest.skip("broker does not offer AMQPLAIN")
    conn.send_method(0, "connection.start-ok", client_properties={}, mechanism="AMQPLAIN",
                     response=enc_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:],
                     locale="en_US")
    conn.expect("connection.tune")


def test_unknown_vhost_is_530(broker):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as excinfo:
        broker.connect(vhost="pier-test-no-such-vhost")
    text = str(excinfo.value)
    assert "(530)" in text
    assert "NOT_ALLOWED - vhost pier-test-no-such-vhost not found" in text


def test_unknown_vhost_raw(raw):
    conn = raw()
    with pytest.raises(AssertionError, match="NOT_ALLOWED - vhost pier-test-nope not found"):
        conn.handshake(vhost="pier-test-nope")


@pytest.mark.needs_users
def test_alice_from_config(broker):
    conn = broker.connect(user="alice", password="secret", vhost="/")
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    ch.basic_publish("", q, b"from alice", pika.BasicProperties(user_id="alice"))
    _m, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"from alice" and props.user_id == "alice"
    conn.close()


@pytest.mark.needs_users
def test_alice_wrong_password(broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        broker.connect(user="alice", password="not-secret")


@pytest.mark.needs_users
def test_user_without_permission_on_vhost_is_530(broker):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as excinfo:
        broker.connect(user="alice", password="secret", vhost="other")
    assert "NOT_ALLOWED - access to vhost 'other' refused for user 'alice'" in \
        str(excinfo.value)


@pytest.mark.needs_users
def test_vhosts_are_isolated(broker, names):
    other = broker.connect(vhost="other")
    default = broker.connect(vhost="/")
    try:
        q = names.queue("vh", vhost="other")
        och = other.channel()
        och.queue_declare(q)
        och.confirm_delivery()
        och.basic_publish("", q, b"in other")
        dch = default.channel()
        with channel_closed(404, f"NOT_FOUND - no queue '{q}' in vhost '/'"):
            dch.queue_declare(q, passive=True)
        assert och.queue_declare(q, passive=True).method.message_count == 1
        # errors name the vhost
        och2 = other.channel()
        with channel_closed(404, "NOT_FOUND - no queue 'pier-test-nope' in vhost 'other'"):
            och2.queue_declare("pier-test-nope", passive=True)
        # the predeclared exchanges exist in every vhost
        other.channel().exchange_declare("amq.topic", passive=True)
    finally:
        other.close()
        default.close()
