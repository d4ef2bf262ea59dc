"""Policies: message-ttl, expires, max-length, overflow, dead-letter-exchange/routing-key,
max-priority and alternate-exchange applied by name pattern, highest priority first, with
RabbitMQ's precedence between queue arguments and policy values.

Against Pier the policies come from the config file of a private Pier process; against an
external RabbitMQ they are set through its management API, whose base URL must be given in
PIER_TEST_MGMT_URL (e.g. http://guest:guest@127.0.0.1:15673); without it these tests skip.

RabbitMQ 3.10 refuses a `max-priority` policy ("are not recognised policy settings"); Pier
accepts one (applied when the queue is declared, the argument winning), so that test is
Pier-only."""

import base64
import json
import os
import time
import urllib.parse
import urllib.request

import pika
import pika.exceptions
import pytest

from conftest import EXTERNAL_URL, PIER_CONFIG, Broker, Resources
from helpers import drain, message_count, queue_exists, wait_message_count, wait_until

DLQ = "pier-test.pol-dlq-target"
AE_TARGET = "pier-test.pol-ae-target"

POLICIES = [
    {"name": "pier-test-ttl", "pattern": r"^pier-test\.pol-ttl\.", "apply-to": "queues",
     "priority": 1, "definition": {"message-ttl": 100}},
    {"name": "pier-test-reject", "pattern": r"^pier-test\.pol-reject\.", "apply-to": "queues",
     "priority": 0, "definition": {"max-length": 1, "overflow": "reject-publish"}},
    {"name": "pier-test-dlx", "pattern": r"^pier-test\.pol-dlx\.", "apply-to": "queues",
     "priority": 0, "definition": {"dead-letter-exchange": "", "dead-letter-routing-key": DLQ,
                                   "max-length-bytes": 3}},
    {"name": "pier-test-ae", "pattern": r"^pier-test\.pol-ae\.", "apply-to": "exchanges",
     "priority": 0, "definition": {"alternate-exchange": AE_TARGET}},
    {"name": "pier-test-low", "pattern": r"^pier-test\.pol-prio\.", "apply-to": "all",
     "priority": 0, "definition": {"max-length": 1}},
    {"name": "pier-test-high", "pattern": r"^pier-test\.pol-prio\.", "apply-to": "queues",
     "priority": 5, "definition": {"max-length": 3}},
    {"name": "pier-test-expires", "pattern": r"^pier-test\.pol-expires\.",
     "apply-to": "queues", "priority": 0, "definition": {"expires": 300}},
]

# Settings RabbitMQ 3.10 does not accept in a policy, but Pier does.
PIER_ONLY_POLICIES = [
    {"name": "pier-test-maxprio", "pattern": r"^pier-test\.pol-maxprio\.", "apply-to": "queues",
     "priority": 0, "definition": {"max-priority": 5}},
]


def toml_value(v):
    return json.dumps(v)  # numbers and strings read the same in TOML


def pier_policy_config() -> str:
    out = [PIER_CONFIG]
    for p in POLICIES + PIER_ONLY_POLICIES:
        definition = ", ".join(f"{k} = {toml_value(v)}" for k, v in p["definition"].items())
        out.append(f"""
[[policies]]
name = "{p['name']}"
vhost = "/"
pattern = '{p['pattern']}'
apply-to = "{p['apply-to']}"
priority = {p['priority']}
definition = {{ {definition} }}
""")
    return "".join(out)


def mgmt_request(method: str, path: str, body=None):
    base = os.environ["PIER_TEST_MGMT_URL"]
    parsed = urllib.parse.urlparse(base)
    url = f"{parsed.scheme}://{parsed.hostname}:{parsed.port}{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    creds = f"{parsed.username or 'guest'}:{parsed.password or 'guest'}".encode()
    req.add_header("authorization", "Basic " + base64.b64encode(creds).decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


@pytest.fixture(scope="module")
def policy_broker(request, tmp_path_factory):
    if EXTERNAL_URL:
        if not os.environ.get("PIER_TEST_MGMT_URL"):
            pytest.skip("set PIER_TEST_MGMT_URL to set policies on the external broker")
        from conftest import _broker_from_url
        broker = _broker_from_url(EXTERNAL_URL)
        for p in POLICIES:
            body = {k: p[k] for k in ("pattern", "apply-to", "priority", "definition")}
            mgmt_request("PUT", f"/api/policies/%2F/{p['name']}", body)
        time.sleep(0.5)
        yield broker
        for p in POLICIES:
            mgmt_request("DELETE", f"/api/policies/%2F/{p['name']}")
        return
    from conftest import PierProcess
    proc = PierProcess(tmp_path_factory.mktemp("pier-policies"), pier_policy_config()).start()
    yield Broker(host="127.0.0.1", port=proc.amqp_port, process=proc)
    proc.kill()


@pytest.fixture
def pnames(policy_broker):
    res = Resources(policy_broker)
    yield res
    res.cleanup()


@pytest.fixture
def pconn(policy_broker):
    conn = policy_broker.connect()
    yield conn
    if conn.is_open:
        conn.close()


def test_message_ttl_from_a_policy(pconn, pnames):
    ch = pconn.channel()
    q, plain = pnames.queue("pol-ttl"), pnames.queue("pol-none")
    ch.queue_declare(q)
    ch.queue_declare(plain)
    ch.basic_publish("", q, b"m")
    ch.basic_publish("", plain, b"m")
    wait_message_count(pconn, q, 0)
    assert message_count(pconn, plain) == 1


def test_lower_of_argument_and_policy_ttl_wins(pconn, pnames):
    ch = pconn.channel()
    q = pnames.queue("pol-ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 60000})
    ch.basic_publish("", q, b"m")
    wait_message_count(pconn, q, 0)


def test_overflow_from_a_policy(pconn, pnames):
    ch = pconn.channel()
    q = pnames.queue("pol-reject")
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused")


def test_overflow_argument_wins_over_the_policy(pconn, pnames):
    ch = pconn.channel()
    q = pnames.queue("pol-reject")
    ch.queue_declare(q, arguments={"x-overflow": "drop-head"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"first")
    ch.basic_publish("", q, b"second")  # no nack: the head is dropped instead
    assert [b for _, _, b in drain(ch, q)] == [b"second"]


def test_dead_lettering_from_a_policy(pconn, pnames):
    ch = pconn.channel()
    ch.queue_declare(DLQ)
    pnames.queues.append(("/", DLQ))
    ch.queue_purge(DLQ)
    q = pnames.queue("pol-dlx")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"abc")
    ch.basic_publish("", q, b"def")  # max-length-bytes 3: drops "abc" to the DLQ
    wait_message_count(pconn, DLQ, 1)
    _, props, body = ch.basic_get(DLQ, auto_ack=True)
    assert body == b"abc"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert props.headers["x-death"][0]["queue"] == q


def test_alternate_exchange_from_a_policy(pconn, pnames):
    ch = pconn.channel()
    ch.exchange_declare(AE_TARGET, "fanout")
    pnames.exchanges.append(("/", AE_TARGET))
    caught = pnames.queue("pol-caught")
    ch.queue_declare(caught)
    ch.queue_bind(caught, AE_TARGET)
    x = pnames.exchange("pol-ae")
    ch.exchange_declare(x, "direct")
    ch.basic_publish(x, "unbound", b"m")
    wait_message_count(pconn, caught, 1)


def test_highest_priority_policy_applies(pconn, pnames):
    ch = pconn.channel()
    q = pnames.queue("pol-prio")
    ch.queue_declare(q)
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
    assert [b for _, _, b in drain(ch, q)] == [b"m2", b"m3", b"m4"]


def test_expires_from_a_policy(pconn, pnames):
    ch = pconn.channel()
    q = pnames.queue("pol-expires")
    ch.queue_declare(q)
    wait_until(lambda: not queue_exists(pconn, q), timeout=5, interval=0.6,
               message="queue deleted by the policy's expires")


@pytest.mark.pier_only
def test_max_priority_from_a_policy(pconn, pnames):
    ch = pconn.channel()
    q, plain = pnames.queue("pol-maxprio"), pnames.queue("pol-maxprio")
    ch.queue_declare(q)
    ch.queue_declare(plain, arguments={"x-max-priority": 0})  # the argument wins
    for dest in (q, plain):
        for body, prio in [(b"low", 1), (b"high", 5)]:
            ch.basic_publish("", dest, body, pika.BasicProperties(priority=prio))
    assert [b for _, _, b in drain(ch, q)] == [b"high", b"low"]
    assert [b for _, _, b in drain(ch, plain)] == [b"low", b"high"]
