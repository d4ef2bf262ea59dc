"""Direct reply-to: the amq.rabbitmq.reply-to pseudo-queue, reply_to rewriting, replies routed
straight to the requesting channel, and the errors RabbitMQ gives when it is misused."""

import pika
import pika.exceptions
import pytest

from helpers import channel_closed, collect_deliveries, settle

PSEUDO = "amq.rabbitmq.reply-to"


def rpc_server(connection, q):
    """Answers every request on ``q`` with b"re:" + body, to its reply_to."""
    ch = connection.channel()

    def on_request(c, m, p, body):
        c.basic_publish("", p.reply_to, b"re:" + body,
                        pika.BasicProperties(correlation_id=p.correlation_id))
        c.basic_ack(m.delivery_tag)

    ch.basic_consume(q, on_request)
    return ch


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13); direct reply-to addresses are node-local too")
def test_rpc_round_trip(connection, make_connection, names):
    q = names.queue("rpc")
    client = connection.channel()
    client.queue_declare(q)
    server_conn = make_connection()
    rpc_server(server_conn, q)
    replies = []
    tag = client.basic_consume(PSEUDO, lambda c, m, p, b: replies.append((m, p, b)),
                               auto_ack=True)
    for i in range(3):
        client.basic_publish("", q, b"q%d" % i,
                             pika.BasicProperties(reply_to=PSEUDO, correlation_id=str(i)))
    deadline_rounds = 200
    while len(replies) < 3 and deadline_rounds:
        server_conn.process_data_events(time_limit=0.02)
        connection.process_data_events(time_limit=0.02)
        deadline_rounds -= 1
    assert [(p.correlation_id, b) for _, p, b in replies] == [
        ("0", b"re:q0"), ("1", b"re:q1"), ("2", b"re:q2")]
    method = replies[0][0]
    assert method.consumer_tag == tag
    assert method.exchange == ""
    assert method.routing_key.startswith(PSEUDO + ".")


def test_reply_to_is_rewritten_to_the_channel_address(channel, names):
    q = names.queue("rpc")
    channel.queue_declare(q)
    channel.basic_consume(PSEUDO, lambda *a: None, auto_ack=True)
    channel.basic_publish("", q, b"a", pika.BasicProperties(reply_to=PSEUDO))
    channel.basic_publish("", q, b"b", pika.BasicProperties(reply_to=PSEUDO))
    _, p1, _ = channel.basic_get(q, auto_ack=True)
    _, p2, _ = channel.basic_get(q, auto_ack=True)
    assert p1.reply_to.startswith(PSEUDO + ".") and len(p1.reply_to) > len(PSEUDO) + 1
    assert p1.reply_to == p2.reply_to, "one address per channel"


def test_other_reply_to_values_are_left_alone(channel, names):
    q = names.queue("rpc")
    channel.queue_declare(q)
    for value in ("my-own-queue", PSEUDO + ".custom"):
        channel.basic_publish("", q, b"m", pika.BasicProperties(reply_to=value))
        _, props, _ = channel.basic_get(q, auto_ack=True)
        assert props.reply_to == value


def test_consuming_with_acks_is_406(channel):
    with channel_closed(406, "PRECONDITION_FAILED - reply consumer cannot acknowledge"):
        channel.basic_consume(PSEUDO, lambda *a: None, auto_ack=False)


def test_publishing_with_reply_to_without_consumer_is_406(channel, names):
    q = names.queue("rpc")
    channel.queue_declare(q)
    with channel_closed(406, "PRECONDITION_FAILED - fast reply consumer does not exist"):
        channel.basic_publish("", q, b"m", pika.BasicProperties(reply_to=PSEUDO))
        channel.queue_declare(q, passive=True)


def test_reply_consumer_is_per_channel(connection, names):
    q = names.queue("rpc")
    first, second = connection.channel(), connection.channel()
    first.queue_declare(q)
    first.basic_consume(PSEUDO, lambda *a: None, auto_ack=True)
    with channel_closed(406, "PRECONDITION_FAILED - fast reply consumer does not exist"):
        second.basic_publish("", q, b"m", pika.BasicProperties(reply_to=PSEUDO))
        second.queue_declare(q, passive=True)


def test_second_reply_consumer_on_a_channel_is_406(channel):
    channel.basic_consume(PSEUDO, lambda *a: None, auto_ack=True)
    with channel_closed(406, "PRECONDITION_FAILED - reply consumer already set"):
        channel.basic_consume(PSEUDO, lambda *a: None, auto_ack=True)


def test_cancelled_reply_consumer_no_longer_exists(channel, names):
    q = names.queue("rpc")
    channel.queue_declare(q)
    tag = channel.basic_consume(PSEUDO, lambda *a: None, auto_ack=True)
    channel.basic_cancel(tag)
    with channel_closed(406, "PRECONDITION_FAILED - fast reply consumer does not exist"):
        channel.basic_publish("", q, b"m", pika.BasicProperties(reply_to=PSEUDO))
        channel.queue_declare(q, passive=True)


def test_replies_to_unknown_addresses_are_dropped(connection, make_connection):
    ch = connection.channel()
    ch.confirm_delivery()
    ch.basic_publish("", PSEUDO + ".no-such-channel", b"lost")
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("", PSEUDO + ".no-such-channel", b"lost", mandatory=True)
    assert ch.is_open


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13); direct reply-to addresses are node-local too")
def test_reply_after_the_requester_closed_is_dropped(connection, make_connection, names):
    q = names.queue("rpc")
    requester = make_connection()
    rch = requester.channel()
    rch.queue_declare(q)
    rch.basic_consume(PSEUDO, lambda *a: None, auto_ack=True)
    rch.basic_publish("", q, b"m", pika.BasicProperties(reply_to=PSEUDO))
    ch = connection.channel()
    _, props, _ = ch.basic_get(q, auto_ack=True)
    requester.close()
    ch.confirm_delivery()
    ch.basic_publish("", props.reply_to, b"too late")
    assert ch.is_open


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13); direct reply-to addresses are node-local too")
def test_mandatory_reply_is_delivered_and_also_returned(connection, make_connection, names):
    # RabbitMQ 3.10 does not count a direct reply as routed: with mandatory it is delivered
    # and also comes back as a basic.return.
    q = names.queue("rpc")
    client = connection.channel()
    client.queue_declare(q)
    replies = []
    client.basic_consume(PSEUDO, lambda c, m, p, b: replies.append(b), auto_ack=True)
    client.basic_publish("", q, b"m", pika.BasicProperties(reply_to=PSEUDO))
    _, props, _ = client.basic_get(q, auto_ack=True)
    server = make_connection().channel()
    server.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        server.basic_publish("", props.reply_to, b"reply", mandatory=True)
    collect_deliveries(connection, replies, 1)
    assert replies == [b"reply"]


def test_pseudo_queue_declares_but_is_not_a_queue(channel):
    ok = channel.queue_declare(PSEUDO, passive=True)
    assert ok.method.queue == PSEUDO
    assert ok.method.message_count == 0
    with channel_closed(404, f"NOT_FOUND - no queue '{PSEUDO}' in vhost '/'"):
        channel.basic_get(PSEUDO)
