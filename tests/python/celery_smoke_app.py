"""A minimal Celery application used by test_celery.py.

Configured from the environment: CELERY_BROKER_URL (AMQP URL of the broker
under test) and CELERY_TEST_QUEUE (a unique queue name per test run).
"""

import os

from celery import Celery

app = Celery("pier_smoke",
             broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
             backend="rpc://")
queue = os.environ.get("CELERY_TEST_QUEUE", "pier-test-celery")
app.conf.update(
    task_default_queue=queue,
    task_default_exchange=queue,
    task_default_routing_key=queue,
    result_expires=60,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    worker_hijack_root_logger=False,
    worker_enable_remote_control=False,
)


@app.task
def add(x, y):
    return x + y


@app.task
def echo(payload):
    return payload
