"""RabbitMQ's deprecated features and 4.3's stricter defaults (docs/quorum-queues.md).

Pier permits them by default, as RabbitMQ 4.2 does (the tests of the rest of the suite,
checked against 3.10.8, declare transient queues and use global QoS). With
`defaults = "4.3"` in the config file's `[deprecated_features]` (or `--deprecated-features
4.3`) it refuses them as
RabbitMQ 4.3 does, with its texts; `permit.<name>` there sets each one.
Pier only: RabbitMQ 3.10 has no deprecated features."""

from __future__ import annotations

import pika
import pytest

from conftest import PIER_CONFIG, PierProcess
from helpers import MgmtApi, channel_closed, connection_closed

DENIED_TRANSIENT = (
    "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.\n"
    "By default, this feature is not permitted anymore.\n"
)

pytestmark = pytest.mark.pier_only


def connect(proc):
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=proc.amqp_port, connection_attempts=1, socket_timeout=10))


def test_4_2_defaults_permit_them(pier_factory):
    proc = pier_factory()
    api = MgmtApi(proc.http_port)
    conn = connect(proc)
    ch = conn.channel()
    ch.queue_declare("dep.exclusive", exclusive=True)
    ch.queue_declare("dep.durable", durable=True)
    # RabbitMQ's list(used): only transient_nonexcl_queues has an is_feature_used callback.
    assert api.call("GET", "/deprecated-features/used") == (200, [])
    ch.queue_declare("dep.transient", durable=False)
    ch.queue_declare("dep.qml", durable=True, arguments={"x-queue-master-locator": "min-masters"})
    ch.basic_qos(prefetch_count=1, global_qos=True)
    conn.close()
    status, used = api.call("GET", "/deprecated-features/used")
    assert status == 200
    assert [(f["name"], f["deprecation_phase"], "state" in f) for f in used] == [
        ("transient_nonexcl_queues", "permitted_by_default", False)]
    status, features = api.call("GET", "/deprecated-features")
    assert status == 200
    phases = {f["name"]: (f["deprecation_phase"], f["state"]) for f in features}
    assert phases == {"transient_nonexcl_queues": ("permitted_by_default", "permitted"),
                      "global_qos": ("permitted_by_default", "permitted"),
                      "queue_master_locator": ("permitted_by_default", "permitted")}
    ch = connect(proc).channel()
    ch.queue_delete("dep.transient")
    assert api.call("GET", "/deprecated-features/used") == (200, [])


def test_4_3_defaults_refuse_classic_queue_version_1(pier_factory):
    """RabbitMQ 4.3 removed classic queue storage version 1: its check_queue_version takes
    2 only (4.3.0 release notes, rabbit_amqqueue.erl v4.3.5); 4.2 takes 1 and 2."""
    proc = pier_factory(PIER_CONFIG + '\n[deprecated_features]\ndefaults = "4.3"\n')
    ch = connect(proc).channel()
    ch.queue_declare("dep.v2", durable=True, arguments={"x-queue-version": 2})
    with channel_closed(406, "PRECONDITION_FAILED - invalid arg 'x-queue-version' for queue "
                             "'dep.v1' in vhost '/': \"unsupported queue version '1'\""):
        ch.queue_declare("dep.v1", durable=True, arguments={"x-queue-version": 1})
    api = MgmtApi(proc.http_port)
    status, body = api.call("PUT", "/queues/%2F/dep.http1",
                            {"durable": True, "arguments": {"x-queue-version": 1}})
    assert status == 400, body
    assert "unsupported queue version '1'" in body["reason"]
    # Under 4.2's defaults version 1 is still taken.
    proc42 = pier_factory()
    connect(proc42).channel().queue_declare("dep.v1", durable=True,
                                            arguments={"x-queue-version": 1})


def test_4_3_defaults_refuse_transient_non_exclusive_queues(pier_factory):
    proc = pier_factory(PIER_CONFIG + '\n[deprecated_features]\ndefaults = "4.3"\n')
    conn = connect(proc)
    ch = conn.channel()
    # Durable, or exclusive: still fine.
    ch.queue_declare("dep.durable", durable=True)
    ch.queue_declare("", exclusive=True)
    with connection_closed(541, DENIED_TRANSIENT) as info:
        ch.queue_declare("dep.transient", durable=False)
    text = info["exc"].reply_text
    assert len(text.encode()) <= 255 and text.endswith("..."), "cut as RabbitMQ cuts it"
    conn = connect(proc)
    ch = conn.channel()
    with connection_closed(541, "INTERNAL_ERROR - Feature `queue_master_locator` is "
                                "deprecated.\nBy default, this feature is not permitted"):
        ch.queue_declare("dep.qml", durable=True,
                         arguments={"x-queue-master-locator": "min-masters"})
    api = MgmtApi(proc.http_port)
    status, body = api.call("PUT", "/queues/%2F/dep.http", {"durable": False})
    assert status == 400, body
    assert body["reason"].startswith("Feature `transient_nonexcl_queues` is deprecated.")
    assert api.call("PUT", "/queues/%2F/dep.http", {"durable": True})[0] == 201
    status, features = api.call("GET", "/deprecated-features")
    assert {f["deprecation_phase"] for f in features} == {"denied_by_default"}


def test_4_3_defaults_make_global_qos_per_consumer(pier_factory):
    """RabbitMQ 4.3's channel treats basic.qos global=true as global=false."""
    proc = pier_factory(PIER_CONFIG + '\n[deprecated_features]\ndefaults = "4.3"\n')
    conn = connect(proc)
    ch = conn.channel()
    queues = [ch.queue_declare("", exclusive=True).method.queue for _ in range(2)]
    for q in queues:
        for i in range(3):
            ch.basic_publish("", q, f"{q}-{i}".encode())
    ch.basic_qos(prefetch_count=1, global_qos=True)
    got = {q: 0 for q in queues}

    def on_message(q):
        def cb(_ch, _method, _props, _body):
            got[q] += 1
        return cb

    for q in queues:
        ch.basic_consume(q, on_message(q))
    deadline = 50
    while sum(got.values()) < 2 and deadline:
        conn.process_data_events(time_limit=0.1)
        deadline -= 1
    conn.process_data_events(time_limit=0.3)
    # Per consumer: one unacked delivery each; a channel-wide limit would allow one in all.
    assert got == {queues[0]: 1, queues[1]: 1}
    conn.close()


def test_a_permit_overrides_the_defaults_and_the_command_line_sets_them(tmp_path):
    config = PIER_CONFIG + "\n[deprecated_features]\npermit.transient_nonexcl_queues = true\n"
    proc = PierProcess(tmp_path / "p", config, extra_args=["--deprecated-features", "4.3"])
    proc.start()
    try:
        conn = connect(proc)
        ch = conn.channel()
        ch.queue_declare("dep.transient", durable=False)  # permitted on its own
        with connection_closed(541, "INTERNAL_ERROR - Feature `queue_master_locator`"):
            ch.queue_declare("dep.qml", durable=True,
                             arguments={"x-queue-master-locator": "min-masters"})
        status, features = MgmtApi(proc.http_port).call("GET", "/deprecated-features")
        assert status == 200
        assert {f["name"]: (f["deprecation_phase"], f["state"]) for f in features} == {
            "transient_nonexcl_queues": ("denied_by_default", "permitted"),
            "global_qos": ("denied_by_default", "denied"),
            "queue_master_locator": ("denied_by_default", "denied")}
    finally:
        proc.kill()


def test_unknown_features_and_versions_stop_the_start(tmp_path):
    for i, (extra, said) in enumerate([
            ("[deprecated_features]\npermit.no_such_feature = true",
             "unknown deprecated feature (known: transient_nonexcl_queues, global_qos, "
             "queue_master_locator)"),
            ('[deprecated_features]\ndefaults = "4.1"', '"4.1" is not a version Pier knows')]):
        proc = PierProcess(tmp_path / f"p{i}", PIER_CONFIG + "\n" + extra + "\n")
        with pytest.raises(pytest.fail.Exception):
            proc.start()
        assert said in proc.log_path.read_text()
        proc.kill()
