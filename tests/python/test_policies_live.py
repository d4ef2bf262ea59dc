"""Policies reach queues that already exist, as in RabbitMQ: a policy set (or replaced, or
cleared) over the management API applies at once to every queue it matches. A lower
max-length drops the oldest messages at once (drop-head; dead-lettered with reason maxlen
when the queue has a dead-letter exchange; RabbitMQ enforces it with the overflow mode in
force before the change), a reject-publish queue keeps its backlog and refuses later
publishes, and a new message-ttl applies to messages that enter from then on (RabbitMQ 3.10 keeps the
expiry a queued message entered with). The queue's management object shows the policy in
force. Against an external broker the management API comes from PIER_TEST_MGMT_URL.

RabbitMQ updates a queue's management object from periodic statistics, so its `policy`
field is waited for; message counts come from passive declares."""

import time
import urllib.parse

import pika
import pika.exceptions
import pytest

from helpers import drain, message_count, wait_message_count, wait_until


@pytest.fixture
def policies(mgmt):
    """Sets policies on vhost / and clears them at teardown."""
    names: list[str] = []

    def put(name: str, pattern: str, definition: dict, priority: int = 0) -> None:
        status, body = mgmt.call("PUT", f"/policies/%2F/{name}", {
            "pattern": pattern, "apply-to": "queues", "priority": priority,
            "definition": definition})
        assert status in (201, 204), (status, body)
        if name not in names:
            names.append(name)

    def clear(name: str) -> None:
        status, body = mgmt.call("DELETE", f"/policies/%2F/{name}")
        assert status == 204, (status, body)
        names.remove(name)

    put.clear = clear
    yield put
    for name in names:
        mgmt.call("DELETE", f"/policies/%2F/{name}")


def anchored(queue: str) -> str:
    return "^" + queue.replace(".", r"\.") + "$"


def bodies(ch, queue: str) -> list[bytes]:
    return [b for _, _, b in drain(ch, queue)]


def test_max_length_policy_trims_an_existing_queue_and_dead_letters_the_oldest(
        connection, channel, names, policies):
    q, dlq = names.queue("live-maxlen"), names.queue("live-dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(q)
    for i in range(20):
        channel.basic_publish("", q, b"m%d" % i)
    wait_message_count(connection, q, 20)
    policies("pier-test-live-maxlen", anchored(q), {
        "max-length": 5, "dead-letter-exchange": "", "dead-letter-routing-key": dlq})
    wait_message_count(connection, q, 5)
    wait_message_count(connection, dlq, 15)
    dead = drain(channel, dlq)
    assert [b for _, _, b in dead] == [b"m%d" % i for i in range(15)]
    death = dead[0][1].headers["x-death"][0]
    assert (death["reason"], death["queue"]) == ("maxlen", q)
    # Cleared: the queue grows again, and keeps the five newest it had.
    policies.clear("pier-test-live-maxlen")
    time.sleep(0.3)
    for i in range(10):
        channel.basic_publish("", q, b"n%d" % i)
    wait_message_count(connection, q, 15)
    assert bodies(channel, q) == [b"m%d" % i for i in range(15, 20)] + \
        [b"n%d" % i for i in range(10)]


def test_a_tighter_policy_replacing_a_looser_one_trims_again(
        connection, channel, names, policies):
    q = names.queue("live-replace")
    channel.queue_declare(q)
    for i in range(10):
        channel.basic_publish("", q, b"m%d" % i)
    wait_message_count(connection, q, 10)
    policies("pier-test-live-replace", anchored(q), {"max-length": 8})
    wait_message_count(connection, q, 8)
    policies("pier-test-live-replace", anchored(q), {"max-length-bytes": 6})
    # Two-byte bodies: three fit in six bytes.
    wait_message_count(connection, q, 3)
    assert bodies(channel, q) == [b"m7", b"m8", b"m9"]


def test_a_lower_limit_on_a_reject_publish_queue_keeps_the_backlog_and_refuses_publishes(
        connection, channel, names, policies):
    q = names.queue("live-reject")
    channel.queue_declare(q, arguments={"x-overflow": "reject-publish"})
    for i in range(5):
        channel.basic_publish("", q, b"m%d" % i)
    wait_message_count(connection, q, 5)
    policies("pier-test-live-reject", anchored(q), {"max-length": 2})
    time.sleep(0.5)
    assert message_count(connection, q) == 5
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", q, b"refused")
    assert message_count(connection, q) == 5


def test_a_policy_bringing_a_limit_and_reject_publish_trims_with_the_mode_before_it(
        connection, channel, names, policies):
    """RabbitMQ enforces the new length limit before it takes the new overflow mode: a
    drop-head queue is trimmed at once, then refuses publishes beyond the limit."""
    q = names.queue("live-both")
    channel.queue_declare(q)
    for i in range(5):
        channel.basic_publish("", q, b"m%d" % i)
    wait_message_count(connection, q, 5)
    policies("pier-test-live-both", anchored(q), {"max-length": 2, "overflow": "reject-publish"})
    wait_message_count(connection, q, 2)
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", q, b"refused")
    assert bodies(channel, q) == [b"m3", b"m4"]


def test_a_message_ttl_policy_applies_to_messages_entering_from_then_on(
        connection, channel, names, policies):
    q = names.queue("live-ttl")
    channel.queue_declare(q)
    for i in range(3):
        channel.basic_publish("", q, b"old%d" % i)
    wait_message_count(connection, q, 3)
    policies("pier-test-live-ttl", anchored(q), {"message-ttl": 100})
    time.sleep(0.5)
    channel.basic_publish("", q, b"new")
    time.sleep(0.5)
    # The queued ones keep "no expiry"; the new one has expired (and goes once at the head).
    assert bodies(channel, q) == [b"old0", b"old1", b"old2"]
    wait_message_count(connection, q, 0)


def test_the_queue_object_shows_the_policy_in_force(channel, names, policies, mgmt):
    q = names.queue("live-shown")
    # Durable: in a cluster any node's management API knows it (a transient queue is its
    # node's only).
    channel.queue_declare(q, durable=True)
    path = f"/queues/%2F/{urllib.parse.quote(q, safe='')}"
    policies("pier-test-live-shown", anchored(q), {"max-length": 7})

    def shown(name, definition):
        def check():
            body = mgmt.get(path)
            return body.get("policy") == name and \
                body.get("effective_policy_definition") == definition
        return check

    # RabbitMQ refreshes these fields with its statistics (every 5 s by default).
    wait_until(shown("pier-test-live-shown", {"max-length": 7}), timeout=15,
               message="the policy shown")
    policies("pier-test-live-shown", anchored(q), {"max-length": 9})
    wait_until(shown("pier-test-live-shown", {"max-length": 9}), timeout=15,
               message="the replaced definition shown")
    policies.clear("pier-test-live-shown")
    wait_until(lambda: mgmt.get(path).get("policy") is None
               and mgmt.get(path).get("effective_policy_definition") in ({}, None),
               timeout=15, message="no policy shown")


def test_quorum_policy_keys_are_accepted_and_shown(channel, names, policies, mgmt):
    """`dead-letter-strategy` and `queue-leader-locator` are policy keys of quorum queues
    (RabbitMQ 3.10 accepts both); the queue shows the definition in force."""
    q = names.queue("live-qq-keys")
    channel.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    definition = {"dead-letter-strategy": "at-least-once", "queue-leader-locator": "balanced"}
    policies("pier-test-qq-keys", anchored(q), definition)
    path = f"/queues/%2F/{urllib.parse.quote(q, safe='')}"
    wait_until(lambda: mgmt.get(path).get("effective_policy_definition") == definition,
               timeout=15, message="the definition shown")
    status, _ = mgmt.call("PUT", "/policies/%2F/pier-test-qq-bad", {
        "pattern": "^nothing$", "apply-to": "queues",
        "definition": {"dead-letter-strategy": "twice"}})
    assert status == 400


@pytest.mark.pier_only
def test_a_dead_letter_strategy_policy_keeps_dead_letters_until_they_have_a_route(
        channel, names, policies):
    """at-least-once by policy on a running quorum queue: a dead letter with no queue to go
    to is kept, and goes once its target exists (Pier retries every 5 s; RabbitMQ after
    180 s, hence Pier only)."""
    q, dlq = names.queue("live-alo"), names.queue("live-alo-dlq")
    channel.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    policies("pier-test-alo", anchored(q), {
        "dead-letter-strategy": "at-least-once", "overflow": "reject-publish",
        "dead-letter-exchange": "", "dead-letter-routing-key": dlq})
    channel.basic_publish("", q, b"kept", pika.BasicProperties(delivery_mode=2))
    method = wait_until(lambda: channel.basic_get(q)[0], message="a delivery")
    channel.basic_reject(method.delivery_tag, requeue=False)
    time.sleep(0.5)
    channel.queue_declare(dlq, durable=True)
    got = wait_until(lambda: channel.basic_get(dlq, auto_ack=True)[2], timeout=20,
                     message="the dead letter, once its queue exists")
    assert got == b"kept"
