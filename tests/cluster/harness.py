"""Fault harness for Pier clusters: real ``pier`` processes on 127.0.0.x, each with its own
data directory, that tests kill (SIGKILL), pause (SIGSTOP/SIGCONT), restart, and cut off
from chosen peers with nftables.

Everything runs inside a network namespace the harness creates (``Netns``): the test
process enters it (``setns`` on its main thread; threads and processes started afterwards
inherit it), so the nodes, the nftables rules and the test's own HTTP calls share one
private loopback, and nothing touches the host's firewall or ports. Partitions drop packets
in nftables' output hook by source and destination address; each node binds its own
address and makes its cluster connections from it, so a rule names a pair of nodes.

Without root or without ``ip``/``nft`` the namespace cannot be made: the tests that need it
skip with the reason; ``Cluster`` itself also works on the host's loopback (``netns=None``).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

AMQP_PORT = 6672
HTTP_PORT = 6673
CLUSTER_PORT = 6674
STREAM_PORT = 6675
CLONE_NEWNET = 0x40000000


def pier_binary() -> Path:
    raw = os.environ.get("PIER_BIN", "target/debug/pier")
    path = Path(raw)
    return path if path.is_absolute() else REPO_ROOT / path


class NetnsUnavailable(RuntimeError):
    """Why this machine cannot run the partition harness (shown as the skip reason)."""


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")


class Netns:
    """A network namespace with loopback up and an nftables table for cutting links."""

    TABLE = "pierfault"

    def __init__(self, name: str):
        self.name = name
        self._home: int | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)

    @classmethod
    def create(cls) -> "Netns":
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise NetnsUnavailable(f"'{tool}' is not installed (.ci/run installs "
                                       f"iproute2 and nftables)")
        ns = cls(f"pier-ft-{os.getpid()}")
        try:
            _run("ip", "netns", "add", ns.name)
        except RuntimeError as e:
            raise NetnsUnavailable(f"cannot create a network namespace: {e}") from e
        try:
            _run("ip", "-n", ns.name, "link", "set", "lo", "up")
            ns.enter()
            _run("nft", "add", "table", "inet", cls.TABLE)
            _run("nft", "add", "chain", "inet", cls.TABLE, "out",
                 "{ type filter hook output priority 0; policy accept; }")
        except Exception as e:
            ns.destroy()
            raise NetnsUnavailable(f"cannot set up the namespace: {e}") from e
        return ns

    def _setns(self, fd: int) -> None:
        if self._libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def enter(self) -> None:
        """Moves this thread (the test process's main thread) into the namespace."""
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            self._setns(fd)
        finally:
            os.close(fd)

    def destroy(self) -> None:
        if self._home is not None:
            try:
                self._setns(self._home)
            finally:
                os.close(self._home)
                self._home = None
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def cut(self, a: str, b: str) -> None:
        """Drops every packet between addresses a and b, both ways."""
        for src, dst in ((a, b), (b, a)):
            _run("nft", "add", "rule", "inet", self.TABLE, "out",
                 "ip", "saddr", src, "ip", "daddr", dst, "drop")

    def heal(self) -> None:
        _run("nft", "flush", "chain", "inet", self.TABLE, "out")


@dataclass
class Node:
    """One pier process: node ``pier@n<i>`` on 127.0.0.<10+i>."""

    index: int
    workdir: Path
    peers: list[str]
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    _log: object = None

    @property
    def name(self) -> str:
        return f"pier@n{self.index}"

    @property
    def ip(self) -> str:
        return f"127.0.0.{10 + self.index}"

    @property
    def cluster_addr(self) -> str:
        return f"{self.ip}:{CLUSTER_PORT}"

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{HTTP_PORT}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "pier.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Node":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [str(pier_binary()), "server",
               "--bind", self.ip,
               "--amqp-port", str(AMQP_PORT),
               "--http-port", str(HTTP_PORT),
               "--stream-port", str(STREAM_PORT),
               "--data-dir", str(self.workdir / "data"),
               "--node-name", self.name,
               "--cluster-port", str(CLUSTER_PORT),
               "--peers", ",".join(self.peers),
               *self.extra_args]
        self._log = open(self.log_path, "ab")
        self._log.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log.flush()
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        return self

    def wait_http(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}; log:\n"
                                     f"{self.log_tail()}")
            try:
                status, _ = self.api("GET", "/api/overview", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} does not answer HTTP; log:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close()

    def terminate(self) -> int:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()
        return self.proc.returncode

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # ---- management API ----

    def api(self, method: str, path: str, body: object = None, timeout: float = 20.0,
            user: str = "guest", password: str = "guest") -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("content-type", "application/json")
        token = f"{user}:{password}".encode()
        import base64
        req.add_header("authorization", "Basic " + base64.b64encode(token).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw) if raw else None
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def status(self) -> dict:
        code, body = self.api("GET", "/api/pier/cluster", timeout=5)
        assert code == 200, (code, body)
        return body

    def definitions(self) -> dict:
        """This node's definitions, normalised for comparison with another node's."""
        code, d = self.api("GET", "/api/definitions", timeout=10)
        assert code == 200, (code, d)
        d.pop("product_version", None)
        for key, value in d.items():
            if isinstance(value, list):
                value.sort(key=lambda x: json.dumps(x, sort_keys=True))
        return d

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run([str(pier_binary()), "ctl", "--url", self.url, *args],
                              capture_output=True, text=True, timeout=timeout)


class Cluster:
    """N nodes with the same static peer list."""

    def __init__(self, workdir: Path, size: int, netns: Netns | None):
        self.workdir = workdir
        self.netns = netns
        peers = [f"127.0.0.{10 + i}:{CLUSTER_PORT}" for i in range(1, size + 1)]
        self.nodes = [Node(i, workdir / f"n{i}", peers) for i in range(1, size + 1)]

    def start(self) -> "Cluster":
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_http()
        self.wait_formed()
        return self

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    def wait_formed(self, timeout: float = 40.0, nodes: list[Node] | None = None) -> str:
        """Waits until the given nodes (default: all running) agree on a leader among
        themselves and every one of them is a running voter; returns the leader's name."""
        nodes = nodes or self.running()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                views = [n.status() for n in nodes]
                leaders = {v["leader"] for v in views}
                names = {n.name for n in nodes}
                if len(leaders) == 1 and leaders <= names and all(
                    names <= set(v["running_nodes"]) for v in views
                ):
                    return leaders.pop()
                last = views
            except (OSError, AssertionError) as e:
                last = e
            time.sleep(0.2)
        raise AssertionError(f"no agreed leader within {timeout}s: {last}")

    def leader(self) -> Node:
        return self.node(self.wait_formed())

    def assert_same_definitions(self, nodes: list[Node] | None = None,
                                timeout: float = 30.0) -> dict:
        """Every node holds the same definitions (waits, bounded, for them to converge;
        then checks). Returns them."""
        nodes = nodes or self.running()
        deadline = time.monotonic() + timeout
        while True:
            defs = [n.definitions() for n in nodes]
            if all(d == defs[0] for d in defs):
                return defs[0]
            if time.monotonic() > deadline:
                diffs = {
                    n.name: {k: d.get(k) for k in d if d.get(k) != defs[0].get(k)}
                    for n, d in zip(nodes, defs)
                }
                raise AssertionError(f"definitions differ after {timeout}s: {diffs}")
            time.sleep(0.3)

    def stop(self) -> None:
        for n in self.nodes:
            if n.alive:
                n.resume()
            n.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {n.name} ({n.log_path})\n{n.log_tail()}" for n in self.nodes)


def declare_queue(node: Node, vhost: str, name: str, timeout: float = 20) -> tuple[int, object]:
    return node.api("PUT", f"/api/queues/{urllib.parse.quote(vhost, safe='')}/"
                           f"{urllib.parse.quote(name, safe='')}",
                    {"durable": True}, timeout=timeout)
