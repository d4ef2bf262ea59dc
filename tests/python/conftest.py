"""Black-box test harness for Pier (and, for validation, a real RabbitMQ).

Two modes:

* ``PIER_TEST_AMQP_URL`` set (e.g. ``amqp://guest:guest@127.0.0.1:5673/%2F``):
  every test runs against that external broker. This is how the suite is
  validated against RabbitMQ. Tests marked ``pier_only`` are skipped. Tests
  marked ``needs_users`` need the user ``alice``/``secret`` (full permissions
  on ``/``) and the vhost ``other`` (guest has full permissions on it); on an
  external broker they are skipped unless that setup exists::

      rabbitmqctl add_user alice secret
      rabbitmqctl set_user_tags alice administrator
      rabbitmqctl set_permissions -p / alice '.*' '.*' '.*'
      rabbitmqctl add_vhost other
      rabbitmqctl set_permissions -p other guest '.*' '.*' '.*'

* ``PIER_TEST_CLUSTER=3``: a session-scoped cluster of three Pier nodes (one process
  each, on 127.0.0.1 with their own ports, formed from one peer list) stands in for the
  broker; every connection a test makes (``broker.connect``, ``broker.params``,
  ``broker.url``, raw connections) goes to the next node in turn, so a test's connections
  are spread over the nodes, and durable queues live on whichever node declared them. The
  management API is the first node's. Tests that start their own Pier (``pier_factory``)
  or that are single-node by nature (marked ``single_node``) are skipped with the reason.

* otherwise a session-scoped Pier process is started from ``PIER_BIN``
  (default ``target/debug/pier`` under the repository root)::

      pier server --amqp-port P --http-port H --data-dir D --bind 127.0.0.1 --config C

  with the config in ``PIER_CONFIG`` below. Its stderr/stdout go to a log file
  whose tail is attached to every failing test's report.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTERNAL_URL = os.environ.get("PIER_TEST_AMQP_URL") or None
CLUSTER_SIZE = int(os.environ.get("PIER_TEST_CLUSTER") or 0)

PIER_CONFIG = """\
[[users]]
name = "alice"
password = "secret"
tags = ["administrator"]

[[vhosts]]
name = "other"

[[permissions]]
user = "alice"
vhost = "/"
configure = ".*"
write = ".*"
read = ".*"

[[permissions]]
user = "guest"
vhost = "other"
configure = ".*"
write = ".*"
read = ".*"
"""

# Every Pier process started by this harness, for log attachment on failure.
_PIER_PROCESSES: list["PierProcess"] = []


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port free now, outside the kernel's ephemeral range: a port bound to 0 comes from
    that range, and an outgoing connection (a node dialling its peers) may take it before
    the Pier it was meant for binds it ("Address already in use" at start-up, seen in CI)."""
    low, high = _ephemeral_range()
    candidates = [p for p in range(10000, 65000)
                  if not low <= p <= high and p not in _HANDED_OUT]
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pier_binary() -> Path:
    raw = os.environ.get("PIER_BIN", "target/debug/pier")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


class PierProcess:
    """One Pier broker process with its own ports, data dir and log file."""

    def __init__(self, workdir: Path, config_text: str = PIER_CONFIG,
                 bind: str | None = "127.0.0.1", extra_args: list[str] | None = None):
        """``bind=None`` starts Pier on its default listener (every IPv6 and IPv4 address)."""
        self.bind = bind
        self.extra_args = list(extra_args or [])
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = self.workdir / "pier.toml"
        self.config_path.write_text(config_text)
        self.log_path = self.workdir / "pier.log"
        self.amqp_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.amqp_port:
            self.http_port = free_port()
        self.stream_port = free_port()
        while self.stream_port in (self.amqp_port, self.http_port):
            self.stream_port = free_port()
        taken = {self.amqp_port, self.http_port, self.stream_port}
        self.stomp_port = free_port()
        while self.stomp_port in taken:
            self.stomp_port = free_port()
        taken.add(self.stomp_port)
        self.web_stomp_port = free_port()
        while self.web_stomp_port in taken:
            self.web_stomp_port = free_port()
        taken.add(self.web_stomp_port)
        self.mqtt_port = free_port()
        while self.mqtt_port in taken:
            self.mqtt_port = free_port()
        taken.add(self.mqtt_port)
        self.web_mqtt_port = free_port()
        while self.web_mqtt_port in taken:
            self.web_mqtt_port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.returncode: int | None = None

    def start(self, timeout: float = 30.0) -> "PierProcess":
        binary = pier_binary()
        if not binary.exists():
            pytest.fail(f"Pier binary not found at {binary} (set PIER_BIN or build it with "
                        f"`cargo build`), or set PIER_TEST_AMQP_URL to test an external broker",
                        pytrace=False)
        cmd = [str(binary), "server",
               "--amqp-port", str(self.amqp_port),
               "--http-port", str(self.http_port),
               "--stream-port", str(self.stream_port),
               "--stomp-port", str(self.stomp_port),
               "--web-stomp-port", str(self.web_stomp_port),
               "--mqtt-port", str(self.mqtt_port),
               "--web-mqtt-port", str(self.web_mqtt_port),
               "--stream-advertised-host", "127.0.0.1",
               "--data-dir", str(self.data_dir)]
        if self.bind is not None:
            cmd += ["--bind", self.bind]
        cmd += ["--config", str(self.config_path)]
        cmd += self.extra_args
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_file.flush()
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        _PIER_PROCESSES.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"Pier exited with code {self.proc.returncode} during startup; "
                            f"log tail:\n{self.log_tail()}", pytrace=False)
            try:
                # The MQTT listener is bound after the AMQP one: wait for both.
                for port in (self.amqp_port, self.mqtt_port):
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        pytest.fail(f"Pier did not accept AMQP connections on port {self.amqp_port} within "
                    f"{timeout}s; log tail:\n{self.log_tail()}", pytrace=False)
        raise AssertionError("unreachable")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code (kills it after ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = self.proc.returncode
                raise AssertionError(f"Pier did not exit within {timeout}s after SIGTERM")
        self.returncode = self.proc.returncode
        self._close_log()
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])


class PierCluster:
    """``size`` Pier nodes forming one cluster on 127.0.0.1 (cluster mode of the suite)."""

    def __init__(self, workdir: Path, size: int):
        cluster_ports = [free_port() for _ in range(size)]
        peers = ",".join(f"127.0.0.1:{p}" for p in cluster_ports)
        self.nodes = [
            PierProcess(workdir / f"n{i + 1}", extra_args=[
                "--node-name", f"pier@t{i + 1}", "--cluster-port", str(cluster_ports[i]),
                "--peers", peers])
            for i in range(size)
        ]

    def start(self, timeout: float = 60.0) -> "PierCluster":
        for n in self.nodes:
            n.start()
        from helpers import MgmtApi
        apis = [MgmtApi(n.http_port) for n in self.nodes]
        deadline = time.monotonic() + timeout
        names = {f"pier@t{i + 1}" for i in range(len(self.nodes))}

        def formed(api) -> bool:
            status, body = api.call("GET", "/pier/cluster")
            return status == 200 and set(body.get("running_nodes", [])) >= names \
                and bool(body.get("leader"))

        while time.monotonic() < deadline:
            try:
                # Every node sees every other running (not only the first one).
                if all(formed(api) for api in apis):
                    # Every node has caught up with the config file's definitions.
                    for n in self.nodes:
                        MgmtApi(n.http_port).get("/vhosts/other")
                    return self
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        pytest.fail("the test cluster did not form; logs:\n" +
                    "\n".join(n.log_tail() for n in self.nodes), pytrace=False)
        raise AssertionError("unreachable")


@dataclass
class Broker:
    """Where the broker under test listens, and how to connect to it. In cluster mode
    (``ports`` has several), every connection goes to the next node in turn."""

    host: str
    port: int
    vhost: str = "/"
    user: str = "guest"
    password: str = "guest"
    external: bool = False
    process: PierProcess | None = field(default=None, repr=False)
    ports: list[int] = field(default_factory=list, repr=False)
    _next: int = field(default=0, repr=False)
    # STOMP (and STOMP over WebSocket) on the node tests talk to (node 1 in cluster mode).
    stomp_port: int = 0
    web_stomp_port: int = 0
    #: The MQTT port (of the first node in cluster mode; PIER_TEST_MQTT_PORT, default 1884,
    #: for an external broker).
    mqtt_port: int = 0
    #: MQTT over WebSocket (0: none; PIER_TEST_WEB_MQTT_PORT for an external broker).
    web_mqtt_port: int = 0

    def next_port(self) -> int:
        """The port of the node the next connection goes to."""
        if not self.ports:
            return self.port
        port = self.ports[self._next % len(self.ports)]
        self._next += 1
        return port

    def url(self, user: str | None = None, password: str | None = None,
            vhost: str | None = None, **query: object) -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        vhost = self.vhost if vhost is None else vhost
        url = (f"amqp://{urllib.parse.quote(user, safe='')}:"
               f"{urllib.parse.quote(password, safe='')}@{self.host}:{self.next_port()}/"
               f"{urllib.parse.quote(vhost, safe='')}")
        if query:
            url += "?" + urllib.parse.urlencode(query)
        return url

    def params(self, user: str | None = None, password: str | None = None,
               vhost: str | None = None, **kwargs) -> pika.ConnectionParameters:
        kwargs.setdefault("connection_attempts", 1)
        kwargs.setdefault("socket_timeout", 10)
        kwargs.setdefault("blocked_connection_timeout", 30)
        return pika.ConnectionParameters(
            host=self.host, port=self.next_port(),
            virtual_host=self.vhost if vhost is None else vhost,
            credentials=pika.PlainCredentials(self.user if user is None else user,
                                              self.password if password is None else password),
            **kwargs)

    def connect(self, **kwargs) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(**kwargs))


def _broker_from_url(url: str) -> Broker:
    parsed = urllib.parse.urlparse(url)
    vhost = urllib.parse.unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"
    return Broker(host=parsed.hostname or "127.0.0.1", port=parsed.port or 5672, vhost=vhost,
                  user=urllib.parse.unquote(parsed.username or "guest"),
                  password=urllib.parse.unquote(parsed.password or "guest"), external=True,
                  stomp_port=int(os.environ.get("PIER_TEST_STOMP_PORT") or 61614),
                  web_stomp_port=int(os.environ.get("PIER_TEST_WEB_STOMP_PORT") or 0),
                  mqtt_port=int(os.environ.get("PIER_TEST_MQTT_PORT") or 1884),
                  web_mqtt_port=int(os.environ.get("PIER_TEST_WEB_MQTT_PORT") or 0))


# --------------------------------------------------------------------------
# pytest hooks
# --------------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line("markers", "pier_only: needs a Pier process started by the harness")
    config.addinivalue_line("markers",
                            "needs_users: needs user alice/secret and vhost 'other' "
                            "(created by Pier's config; on an external broker, by hand)")
    config.addinivalue_line("markers",
                            "single_node(reason): single-node by nature; skipped in cluster "
                            "mode (PIER_TEST_CLUSTER) with the reason")
    config.addinivalue_line("markers",
                            "same_node(reason): in cluster mode every connection of the test "
                            "goes to the first node (the management API's), for the reason")


def pytest_report_header(config):
    if EXTERNAL_URL:
        return f"broker: external {EXTERNAL_URL}"
    if CLUSTER_SIZE:
        return f"broker: a {CLUSTER_SIZE}-node Pier cluster of {pier_binary()}"
    return f"broker: Pier binary {pier_binary()}"


_users_probe: bool | None = None


def _external_has_users() -> bool:
    global _users_probe
    if _users_probe is None:
        broker = _broker_from_url(EXTERNAL_URL)
        try:
            for user, password, vhost in (("alice", "secret", "/"),
                                          (broker.user, broker.password, "other")):
                broker.connect(user=user, password=password, vhost=vhost).close()
            _users_probe = True
        except Exception:  # noqa: BLE001 - any failure means "not set up"
            _users_probe = False
    return _users_probe


def pytest_runtest_setup(item):
    if CLUSTER_SIZE:
        marker = item.get_closest_marker("single_node")
        if marker:
            pytest.skip("single-node by nature: " + (marker.args[0] if marker.args else ""))
        if "pier_factory" in getattr(item, "fixturenames", ()):
            pytest.skip("single-node by nature: starts its own single Pier (restarts, "
                        "signals, its own configuration)")
    if EXTERNAL_URL:
        if item.get_closest_marker("pier_only"):
            pytest.skip("needs a Pier process (PIER_TEST_AMQP_URL is set)")
        if item.get_closest_marker("needs_users") and not _external_has_users():
            pytest.skip("external broker lacks user alice/secret or vhost 'other' "
                        "(see tests/python/conftest.py for the rabbitmqctl commands)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _PIER_PROCESSES:
        for proc in _PIER_PROCESSES:
            status = "running" if proc.alive else f"exited with {proc.proc.returncode}"
            report.sections.append(
                (f"Pier log tail ({proc.log_path}, {status})", proc.log_tail()))


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    if EXTERNAL_URL:
        yield _broker_from_url(EXTERNAL_URL)
        return
    if CLUSTER_SIZE:
        cluster = PierCluster(tmp_path_factory.mktemp("pier-cluster"), CLUSTER_SIZE).start()
        first = cluster.nodes[0]
        try:
            # PIER_TEST_CLUSTER_OFFSET shifts which node each connection lands on.
            yield Broker(host="127.0.0.1", port=first.amqp_port, process=first,
                         ports=[n.amqp_port for n in cluster.nodes],
                         stomp_port=first.stomp_port, web_stomp_port=first.web_stomp_port,
                         mqtt_port=first.mqtt_port, web_mqtt_port=first.web_mqtt_port,
                         _next=int(os.environ.get("PIER_TEST_CLUSTER_OFFSET") or 0))
        finally:
            dead = [n for n in cluster.nodes if not n.alive]
            for n in cluster.nodes:
                if n.alive:
                    n.terminate()
            if dead:
                pytest.fail("cluster nodes died during the session: " + ", ".join(
                    f"{n.workdir.name} ({n.proc.returncode}):\n{n.log_tail()}"
                    for n in dead), pytrace=False)
        return
    proc = PierProcess(tmp_path_factory.mktemp("pier-shared")).start()
    try:
        yield Broker(host="127.0.0.1", port=proc.amqp_port, process=proc,
                     stomp_port=proc.stomp_port, web_stomp_port=proc.web_stomp_port,
                     mqtt_port=proc.mqtt_port, web_mqtt_port=proc.web_mqtt_port)
    finally:
        if proc.alive:
            code = proc.terminate()
            assert code == 0, (f"shared Pier exited with code {code} after SIGTERM; "
                               f"log tail:\n{proc.log_tail()}")
        else:
            code = proc.proc.returncode
            proc.kill()
            pytest.fail(f"shared Pier died during the session (exit code {code}); "
                        f"log tail:\n{proc.log_tail()}", pytrace=False)


@pytest.fixture(autouse=True)
def _same_node(request):
    """Cluster mode: a test marked ``same_node`` has all its connections on the first node."""
    marker = request.node.get_closest_marker("same_node") if CLUSTER_SIZE else None
    if marker is None:
        yield
        return
    broker = request.getfixturevalue("broker")
    saved, broker.ports = broker.ports, []
    try:
        yield
    finally:
        broker.ports = saved


@pytest.fixture(autouse=True)
def _broker_still_alive(request):
    """Fail fast (with the log) if the shared Pier process died earlier."""
    yield
    if "broker" in request.fixturenames and not EXTERNAL_URL:
        broker = request.getfixturevalue("broker")
        if broker.process is not None and not broker.process.alive:
            pytest.fail(f"Pier process died (exit code {broker.process.proc.returncode}); "
                        f"log tail:\n{broker.process.log_tail()}", pytrace=False)


@pytest.fixture
def pier_factory(tmp_path):
    """Start private Pier instances (for tests that stop or signal the broker)."""
    if EXTERNAL_URL:
        pytest.skip("needs a Pier process (PIER_TEST_AMQP_URL is set)")
    started: list[PierProcess] = []

    def start(config_text: str = PIER_CONFIG) -> PierProcess:
        proc = PierProcess(tmp_path / f"pier-{len(started)}", config_text).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


class Resources:
    """Unique names for queues/exchanges, deleted again at teardown so the
    suite can be run repeatedly against a long-lived broker."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self.queues: list[tuple[str, str]] = []
        self.exchanges: list[tuple[str, str]] = []

    def queue(self, prefix: str = "q", vhost: str | None = None) -> str:
        name = f"pier-test.{prefix}.{uuid.uuid4().hex[:12]}"
        self.queues.append((vhost or self.broker.vhost, name))
        return name

    def exchange(self, prefix: str = "x", vhost: str | None = None) -> str:
        name = f"pier-test.{prefix}.{uuid.uuid4().hex[:12]}"
        self.exchanges.append((vhost or self.broker.vhost, name))
        return name

    def cleanup(self) -> None:
        by_vhost: dict[str, tuple[list[str], list[str]]] = {}
        for vhost, name in self.queues:
            by_vhost.setdefault(vhost, ([], []))[0].append(name)
        for vhost, name in self.exchanges:
            by_vhost.setdefault(vhost, ([], []))[1].append(name)
        for vhost, (queues, exchanges) in by_vhost.items():
            try:
                conn = self.broker.connect(vhost=vhost)
            except Exception:  # noqa: BLE001 - broker may be gone; nothing to clean
                continue
            try:
                for kind, names in (("queue", queues), ("exchange", exchanges)):
                    for name in names:
                        try:
                            ch = conn.channel()
                            if kind == "queue":
                                ch.queue_delete(name)
                            else:
                                ch.exchange_delete(name)
                            ch.close()
                        except Exception:  # noqa: BLE001
                            if conn.is_closed:
                                conn = self.broker.connect(vhost=vhost)
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass


@pytest.fixture
def names(broker):
    res = Resources(broker)
    yield res
    res.cleanup()


@pytest.fixture
def mgmt(broker):
    """The management API of the broker under test: the session's Pier, or the external
    broker's at PIER_TEST_MGMT_URL (skipped without it)."""
    from helpers import MgmtApi
    if EXTERNAL_URL:
        url = os.environ.get("PIER_TEST_MGMT_URL")
        if not url:
            pytest.skip("PIER_TEST_MGMT_URL is not set")
        return MgmtApi.from_url(url)
    return MgmtApi(broker.process.http_port)


@pytest.fixture
def connection(broker):
    conn = broker.connect()
    yield conn
    if conn.is_open:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def channel(connection):
    return connection.channel()


@pytest.fixture
def make_connection(broker):
    """Factory for extra connections, all closed at teardown."""
    conns: list[pika.BlockingConnection] = []

    def make(**kwargs) -> pika.BlockingConnection:
        conn = broker.connect(**kwargs)
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        if conn.is_open:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def raw(broker):
    """Factory for raw-socket AMQP connections (tests/python/amqp_raw.py)."""
    from amqp_raw import RawConnection

    conns: list[RawConnection] = []

    def make(timeout: float = 10.0) -> RawConnection:
        conn = RawConnection(broker.host, broker.next_port(), timeout=timeout)
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        conn.close()
