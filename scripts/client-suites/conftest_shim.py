

# --- Pier client-suites shim (scripts/client-suites/conftest_shim.py) -------------------
# Appended to the suite's own tests/conftest.py by scripts/client-suites.sh. The suite's
# conftest starts RabbitMQ in Docker (aio-pika), or expects fixtures its repository defines
# elsewhere (aiormq); these definitions, later in the module, replace those with the broker
# named by PIER_CLIENT_SUITES_URL. No other test, fixture or assertion is changed.
import os as _pier_os
import urllib.parse as _pier_urlparse
from dataclasses import dataclass as _pier_dataclass

import pytest as _pier_pytest
from yarl import URL as _PierURL


@_pier_dataclass(frozen=True)
class _PierBroker:
    """What the suites read from their Docker container: host and published ports."""

    id: str
    host: str
    ports: dict


def _pier_url():
    return _pier_urlparse.urlsplit(_pier_os.environ["PIER_CLIENT_SUITES_URL"])


def pytest_configure(config):  # replaces the suite's Docker availability check
    pass


@_pier_pytest.fixture(scope="session")
def rabbitmq_container():
    u = _pier_url()
    # 5671/tcp: the TLS port; the amqps tests are excluded (see excluded.tsv).
    return _PierBroker(id="external", host=u.hostname,
                       ports={"5672/tcp": u.port or 5672, "5671/tcp": 5671})


@_pier_pytest.fixture(scope="session")
def amqp_direct_url(rabbitmq_container):
    u = _pier_url()
    vhost = _pier_urlparse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
    return _PierURL.build(scheme="amqp", user=_pier_urlparse.unquote(u.username or "guest"),
                          password=_pier_urlparse.unquote(u.password or "guest"),
                          host=rabbitmq_container.host,
                          port=rabbitmq_container.ports["5672/tcp"], path="/" + vhost)
