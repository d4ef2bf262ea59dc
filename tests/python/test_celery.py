"""Smoke tests with real-world client stacks: kombu, and a Celery worker
(subprocess, --pool=solo) running tasks with the rpc:// result backend."""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_kombu_simple_queue(broker, names):
    kombu = pytest.importorskip("kombu")
    q = names.queue("kombu")
    names.exchanges.append((broker.vhost, q))  # SimpleQueue's exchange has the queue's name
    with kombu.Connection(broker.url(), connect_timeout=10) as conn:
        queue = conn.SimpleQueue(q)
        queue.put({"hello": "world", "n": 1})
        queue.put("second")
        first = queue.get(timeout=10)
        assert first.payload == {"hello": "world", "n": 1}
        first.ack()
        second = queue.get(timeout=10)
        assert second.payload == "second"
        second.requeue()
        again = queue.get(timeout=10)
        assert again.payload == "second"
        assert again.delivery_info["redelivered"] is True
        again.ack()
        assert queue.qsize() == 0
        queue.close()


def test_celery_worker_runs_tasks(broker, names, tmp_path):
    pytest.importorskip("celery")
    queue = names.queue("celery")
    names.exchanges.append((broker.vhost, queue))  # celery's exchange has the queue's name
    names.exchanges.append((broker.vhost, "celeryev"))  # worker event exchange
    env = dict(os.environ, CELERY_BROKER_URL=broker.url(), CELERY_TEST_QUEUE=queue,
               PYTHONPATH=str(HERE), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "celery-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_smoke_app", "worker",
             "--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle",
             "--loglevel=INFO", "-n", f"pier-{uuid.uuid4().hex[:6]}@%h"],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        os.environ["CELERY_BROKER_URL"] = broker.url()
        os.environ["CELERY_TEST_QUEUE"] = queue
        sys.path.insert(0, str(HERE))
        try:
            import importlib

            import celery_smoke_app
            app_module = importlib.reload(celery_smoke_app)
        finally:
            sys.path.remove(str(HERE))
        try:
            result = app_module.add.delay(2, 3)
            assert result.get(timeout=40) == 5
            payload = {"list": [1, 2, 3], "text": "héllo", "nested": {"a": None}}
            assert app_module.echo.delay(payload).get(timeout=20) == payload
            results = [app_module.add.delay(i, i) for i in range(5)]
            assert [r.get(timeout=20) for r in results] == [0, 2, 4, 6, 8]
        finally:
            app_module.app.close()
        assert worker.poll() is None, log_path.read_text(errors="replace")
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        worker.wait(timeout=20)
        log_text = log_path.read_text(errors="replace")
        assert worker.returncode == 0, log_text
        assert "succeeded" in log_text
    except BaseException:
        print(log_path.read_text(errors="replace")[-5000:])
        raise
    finally:
        os.environ.pop("CELERY_BROKER_URL", None)
        os.environ.pop("CELERY_TEST_QUEUE", None)
        if worker.poll() is None:
            worker.kill()
            worker.wait()
