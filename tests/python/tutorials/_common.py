"""Shared plumbing for the tutorial programs (not part of the official tutorials).

* The broker URL comes from the first command-line argument if it starts with
  ``amqp://`` (it is then removed from ``sys.argv``), else from the ``AMQP_URL``
  environment variable, else ``amqp://guest:guest@localhost:5672/%2F``.
* ``TUTORIAL_SUFFIX`` (environment) is appended to every queue/exchange name
  so that the test-suite can run the programs repeatedly against a long-lived
  broker without interference.
"""

import os
import sys

import pika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"


def connection_parameters():
    url = os.environ.get("AMQP_URL") or DEFAULT_URL
    if len(sys.argv) > 1 and sys.argv[1].startswith(("amqp://", "amqps://")):
        url = sys.argv.pop(1)
    return pika.URLParameters(url)


def name(base):
    return base + os.environ.get("TUTORIAL_SUFFIX", "")
