"""Issue 14's "done means": Celery 5.5 with quorum task queues
(`task_default_queue_type = "quorum"`) against a 3-node Pier with replication, while the
queue's leader is killed: every task whose publish was confirmed runs (at least once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness import AMQP_PORT
from test_quorum_replication import queue_info, replicated_cluster
from test_queues import wait_for

celery = pytest.importorskip("celery")

TASKS = 300


def write_app(tmp_path, nodes) -> None:
    urls = ";".join(f"amqp://guest:guest@{n.ip}:{AMQP_PORT}//" for n in nodes)
    out = tmp_path / "done.txt"
    (tmp_path / "pierapp.py").write_text(textwrap.dedent(f"""
        from celery import Celery

        app = Celery("pierapp", broker="{urls}")
        app.conf.task_default_queue_type = "quorum"
        app.conf.worker_detect_quorum_queues = True
        app.conf.broker_transport_options = {{"confirm_publish": True}}
        app.conf.task_acks_late = True
        app.conf.worker_prefetch_multiplier = 4
        app.conf.broker_connection_retry_on_startup = True
        app.conf.broker_heartbeat = 5

        @app.task
        def record(i):
            with open({str(out)!r}, "a") as f:
                f.write(f"{{i}}\\n")
    """))


def test_celery_with_quorum_task_queues_loses_no_task_when_the_leader_dies(
        cluster_factory, tmp_path):
    c = replicated_cluster(cluster_factory)
    write_app(tmp_path, c.nodes)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "pierapp", "worker", "--pool", "solo",
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=tmp_path, env=env, stdout=open(tmp_path / "worker.log", "wb"),
        stderr=subprocess.STDOUT)
    try:
        sys.path.insert(0, str(tmp_path))
        import pierapp  # noqa: PLC0415 - written above
        pierapp.app.conf.broker_transport_options = {"confirm_publish": True}
        wait_for("the task queue exists and is replicated",
                 lambda: (_queue_or_none(c.nodes[0], "celery") or {}).get("leader"),
                 timeout=60)
        sent: list[int] = []
        killed = None
        for i in range(TASKS):
            if i == TASKS // 3:
                leader_name = queue_info(c.nodes[0], "celery")["leader"]
                killed = next(n for n in c.nodes if n.name == leader_name)
                killed.kill()
            try:
                pierapp.record.apply_async((i,), retry=True,
                                           retry_policy={"max_retries": 10,
                                                         "interval_start": 0.2,
                                                         "interval_step": 0.5})
                sent.append(i)
            except Exception:  # noqa: BLE001 - not confirmed: not counted
                pass
        assert len(sent) > TASKS * 0.9, f"only {len(sent)} of {TASKS} publishes confirmed"
        killed.start()
        killed.wait_http()
        out = tmp_path / "done.txt"

        def done() -> set[int]:
            try:
                return {int(x) for x in out.read_text().split()}
            except FileNotFoundError:
                return set()

        wait_for(f"all {len(sent)} confirmed tasks ran",
                 lambda: set(sent) <= done(), timeout=90)
        runs = (tmp_path / "done.txt").read_text().split()
        print(f"killed {killed.name}, the leader, after {TASKS // 3} tasks; {len(sent)} "
              f"confirmed, {len(set(runs))} ran ({len(runs) - len(set(runs))} twice)")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        sys.path.remove(str(tmp_path)) if str(tmp_path) in sys.path else None
        sys.modules.pop("pierapp", None)


def _queue_or_none(node, name):
    code, body = node.api("GET", f"/api/queues/%2F/{name}")
    return body if code == 200 else None
