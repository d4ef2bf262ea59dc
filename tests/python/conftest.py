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

* otherwise a session-scoped Pier process is started from ``PIER_BIN``
  (default ``target/debug/pier`` under the repository root)::

      pier server --amqp-port P --http-port H --data-dir D --bind 127.0.0.1 --config C

  with the config in ``PIER_CONFIG`` below. Its stderr/stdout go to a log file
  whose tail is attached to every failing test's report.
"""

from __future__ import annotations

import os
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


def free_port() -> int:
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
                 bind: str | None = "127.0.0.1"):
        """``bind=None`` starts Pier on its default listener (every IPv6 and IPv4 address)."""
        self.bind = bind
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
               "--stream-advertised-host", "127.0.0.1",
               "--data-dir", str(self.data_dir)]
        if self.bind is not None:
            cmd += ["--bind", self.bind]
        cmd += ["--config", str(self.config_path)]
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
                with socket.create_connection(("127.0.0.1", self.amqp_port), timeout=0.5):
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


@dataclass
class Broker:
    """Where the broker under test listens, and how to connect to it."""

    host: str
    port: int
    vhost: str = "/"
    user: str = "guest"
    password: str = "guest"
    external: bool = False
    process: PierProcess | None = field(default=None, repr=False)

    def url(self, user: str | None = None, password: str | None = None,
            vhost: str | None = None, **query: object) -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        vhost = self.vhost if vhost is None else vhost
        url = (f"amqp://{urllib.parse.quote(user, safe='')}:"
               f"{urllib.parse.quote(password, safe='')}@{self.host}:{self.port}/"
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
            host=self.host, port=self.port,
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
                  password=urllib.parse.unquote(parsed.password or "guest"), external=True)


# --------------------------------------------------------------------------
# pytest hooks
# --------------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line("markers", "pier_only: needs a Pier process started by the harness")
    config.addinivalue_line("markers",
                            "needs_users: needs user alice/secret and vhost 'other' "
                            "(created by Pier's config; on an external broker, by hand)")


def pytest_report_header(config):
    if EXTERNAL_URL:
        return f"broker: external {EXTERNAL_URL}"
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
    proc = PierProcess(tmp_path_factory.mktemp("pier-shared")).start()
    try:
        yield Broker(host="127.0.0.1", port=proc.amqp_port, process=proc)
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
        conn = RawConnection(broker.host, broker.port, timeout=timeout)
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        conn.close()
