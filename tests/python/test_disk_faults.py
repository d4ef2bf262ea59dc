"""Real write failures under a confirming publisher (issue "Durable storage", must-have 8).

* ``test_file_size_limit_*``: a running broker gets a low RLIMIT_FSIZE (``prlimit`` on its
  pid), so appending to its active segment fails with EFBIG, like a disk that filled up.
  Pier catches SIGXFSZ (whose default action would kill it). Raising the limit again is
  "space returns". No root needed; always runs.
* ``test_full_tmpfs_*``: the data directory is a real 8 MB tmpfs in a user+mount namespace
  (``unshare -rm``), filled up with a filler file: a true ENOSPC. Skipped where unshare or
  the mount is not allowed.

Both check: persistent publishes are nacked (never acked, never silent) while writes fail;
the broker stays up and transient traffic and consumers keep working; publishes are acked
again once writes succeed; after a restart on the same data every acked message is back,
exactly as published, and nothing corrupt or unknown is; the log has one clear error line
with the path and errno per incident, and a line when writes succeed again.
"""

import hashlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

from conftest import PIER_CONFIG, PierProcess, pier_binary

pytestmark = pytest.mark.pier_only

QUEUE = "faults.q"
PAD = 4096


def _body(tag: str) -> bytes:
    """A body that proves its own integrity: tag, digest of the padding, padding."""
    pad = hashlib.sha256(tag.encode()).digest() * (PAD // 32)
    return tag.encode() + b"|" + hashlib.sha256(pad).hexdigest().encode() + b"|" + pad


def _check(body: bytes) -> str:
    tag, digest, pad = body.split(b"|", 2)
    assert hashlib.sha256(pad).hexdigest().encode() == digest, f"corrupt body {tag!r}"
    assert body == _body(tag.decode()), f"body of {tag!r} differs from what was published"
    return tag.decode()


def _connect(port):
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=port, connection_attempts=1, socket_timeout=10,
        blocked_connection_timeout=20))


def _publish(ch, tag: str) -> bool:
    """One persistent publish; True when acked, False when nacked."""
    try:
        ch.basic_publish("", QUEUE, _body(tag), properties=pika.BasicProperties(
            delivery_mode=2, message_id=tag))
        return True
    except pika.exceptions.NackError:
        return False


def _active_segment(data_dir: Path) -> Path:
    """The segment the test's publishes went to (the other vhost's is empty)."""
    # Every vhost directory and its shards (msgs/<vhost>/shard-NN).
    segs = sorted(data_dir.glob("msgs/*/**/*.seg"), key=lambda p: (p.stat().st_size, p.name))
    assert segs, "no segment file"
    return segs[-1]


class Run:
    """What the publisher saw."""

    def __init__(self):
        self.acked: list[str] = []
        self.nacked: list[str] = []

    def publish(self, ch, tag):
        (self.acked if _publish(ch, tag) else self.nacked).append(tag)


def _publisher(port, run: Run, name: str, n: int):
    conn = _connect(port)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(n):
        run.publish(ch, f"{name}-{i}")
    conn.close()


def _during_fault(port, run: Run, n: int):
    """Publishes until writes fail, from 4 publishers at once so that one group commit holds
    several of them when it fails; checks the broker still serves everything else."""
    acked_before = len(run.acked)
    threads = [threading.Thread(target=_publisher, args=(port, run, f"fault{k}", n // 4))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    fault_acked = len(run.acked) - acked_before
    fault_nacked = len(run.nacked)
    assert fault_acked + fault_nacked == n // 4 * 4, "a publish got no answer"
    assert fault_nacked >= n // 2, (
        f"writes failing must nack: {fault_acked} acked, {fault_nacked} nacked")
    conn = _connect(port)
    ch = conn.channel()
    ch.confirm_delivery()
    # Transient traffic is untouched: a non-durable queue, non-persistent messages, confirms.
    ch.queue_declare("faults.transient", durable=False, auto_delete=True)
    for i in range(20):
        ch.basic_publish("", "faults.transient", f"t{i}".encode())
    got = [ch.basic_get("faults.transient", auto_ack=True)[2] for _ in range(20)]
    assert got == [f"t{i}".encode() for i in range(20)]
    # Consumers still get the stored messages (and their acks are taken).
    consumed = []
    for _ in range(5):
        method, _, body = ch.basic_get(QUEUE)
        consumed.append(_check(body))
        ch.basic_ack(method.delivery_tag)
    conn.close()
    return consumed


def _after_fault(port, run: Run, n: int):
    # The store calls the incident over after a second without a failed write.
    time.sleep(1.2)
    conn = _connect(port)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(n):
        tag = f"after-{i}"
        assert _publish(ch, tag), f"{tag} nacked after the limit was lifted"
        run.acked.append(tag)
    conn.close()


def _verify_restart(port, run: Run, consumed: list[str]) -> int:
    """Every acked, unconsumed message is back once, in publish order, intact; returns how
    many nacked ones came back too."""
    conn = _connect(port)
    ch = conn.channel()
    got = []
    while True:
        method, _, body = ch.basic_get(QUEUE, auto_ack=True)
        if method is None:
            break
        got.append(_check(body))
    conn.close()
    nacked = set(run.nacked)
    acked = [t for t in run.acked if t not in consumed]
    unknown = [t for t in got if t not in nacked and t not in set(acked)]
    assert not unknown, f"messages nobody published (or consumed ones back): {unknown[:5]}"
    assert len(got) == len(set(got)), "a message came back twice"
    lost = set(acked) - set(got)
    assert not lost, f"{len(lost)} acked messages lost, e.g. {sorted(lost)[:5]}"
    # Each publisher's messages in its publish order (publishers interleave freely).
    for name in {t.rsplit("-", 1)[0] for t in acked}:
        mine = [t for t in got if t.rsplit("-", 1)[0] == name and t not in nacked]
        assert mine == [t for t in acked if t.rsplit("-", 1)[0] == name], f"{name} reordered"
    return sum(1 for t in got if t in nacked)


def _declare_during_fault(proc) -> bool:
    """A durable declaration while writes fail (definitions.redb is past the limit too): it is
    refused with 506 RESOURCE_ERROR, never half-done, never a crash. True if it succeeded
    (then it must survive a restart)."""
    conn = _connect(proc.amqp_port)
    try:
        conn.channel().queue_declare("faults.declared", durable=True)
    except pika.exceptions.ConnectionClosed as e:
        assert e.reply_code == 506, e
        assert "declaration refused" in _log(proc)
        return False
    conn.close()
    return True


def _log(proc) -> str:
    return proc.log_path.read_text(errors="replace")


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_file_size_limit_nacks_then_recovers(pier_factory, stop):
    proc = pier_factory()
    run = Run()
    conn = _connect(proc.amqp_port)
    ch = conn.channel()
    ch.queue_declare(QUEUE, durable=True)
    ch.confirm_delivery()
    for i in range(100):
        run.publish(ch, f"before-{i}")
    assert run.nacked == []
    conn.close()

    # The fault: the active segment may grow by 64 KiB more, then writes fail with EFBIG.
    seg = _active_segment(proc.data_dir)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (seg.stat().st_size + 65536, hard))
    consumed = _during_fault(proc.amqp_port, run, 120)
    assert proc.alive, "a write past RLIMIT_FSIZE killed the broker (SIGXFSZ)"
    declared = _declare_during_fault(proc)

    # Space returns.
    resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
    _after_fault(proc.amqp_port, run, 50)
    if not declared:
        # redb refuses writes after an I/O error until it is reopened, and Pier reopens it
        # only at a restart (see docs/storage.md): durable declarations are refused until then.
        conn = _connect(proc.amqp_port)
        with pytest.raises(pika.exceptions.ConnectionClosed) as e:
            conn.channel().queue_declare("faults.later", durable=True)
        assert e.value.reply_code == 506
    # Non-durable declarations do not touch the disk.
    conn = _connect(proc.amqp_port)
    conn.channel().queue_declare("faults.later", durable=False)
    conn.close()

    log = _log(proc)
    errors = [line for line in log.splitlines() if "message store write failed:" in line]
    assert len(errors) == 1, f"one error line per incident, got {len(errors)}:\n{log[-3000:]}"
    assert str(seg) in errors[0] and "os error 27" in errors[0], errors[0]
    assert "message store writes succeed again" in log

    if stop == "sigterm":
        assert proc.terminate() == 0, proc.log_tail()
    else:
        proc.kill()  # a crash right after the incident: what was acked was fsynced
    proc.start()
    back = _verify_restart(proc.amqp_port, run, consumed)
    assert "recovered with damage" not in _log(proc), "a failed write left a torn record"
    # After the restart definitions are written again.
    conn = _connect(proc.amqp_port)
    ch = conn.channel()
    ch.queue_declare("faults.later", durable=True)
    if declared:
        ch.queue_declare("faults.declared", durable=True, passive=True)
    conn.close()
    print(f"\nEFBIG ({stop}): {len(run.acked)} acked, {len(run.nacked)} nacked, "
          f"{back} nacked came back after restart")


# ---- a real full file system: tmpfs in a user+mount namespace ----

TMPFS_MB = 8


def _unshare_works(tmp: Path) -> str | None:
    """None if `unshare -rm` can mount a tmpfs here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = tmp / "probe"
    probe.mkdir()
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {probe} && touch {probe}/x"],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if r.returncode != 0:
        return ("user+mount namespaces are not available here: "
                + r.stderr.decode(errors="replace").strip())
    return None


class TmpfsPier(PierProcess):
    """Pier whose data directory is a fresh tmpfs of TMPFS_MB in its own mount namespace.
    When Pier exits, the shell copies the data out to `saved` (the tmpfs dies with the
    namespace) so a restart can run on it."""

    def __init__(self, workdir: Path, saved: Path, config_text: str):
        super().__init__(workdir, config_text)
        self.saved = saved
        self.shell: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "TmpfsPier":
        cmd = [str(pier_binary()), "server", "--amqp-port", str(self.amqp_port),
               "--http-port", str(self.http_port), "--data-dir", str(self.data_dir),
               "--bind", "127.0.0.1", "--config", str(self.config_path)]
        script = (f'mount -t tmpfs -o size={TMPFS_MB}m tmpfs "{self.data_dir}" || exit 99\n'
                  f'"$@" & pid=$!\n'
                  f'echo $pid > "{self.workdir}/pier.pid"\n'
                  f'wait $pid; rc=$?\n'
                  f'while [ $rc -gt 128 ] && kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done\n'
                  f'cp -a "{self.data_dir}/." "{self.saved}/"\n'
                  f'exit $rc\n')
        self.saved.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self.shell = subprocess.Popen(["unshare", "-rm", "sh", "-c", script, "sh", *cmd],
                                      stdout=self._log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.shell.poll() is not None:
                pytest.fail(f"tmpfs Pier exited ({self.shell.returncode}):\n{self.log_tail()}")
            pid_file = self.workdir / "pier.pid"
            if pid_file.exists() and pid_file.read_text().strip():
                try:
                    with socket.create_connection(("127.0.0.1", self.amqp_port), timeout=0.5):
                        self.pid = int(pid_file.read_text())
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"tmpfs Pier did not start:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self.shell is not None and self.shell.poll() is None

    def in_ns(self, path: Path) -> Path:
        """`path` as Pier sees it (inside its mount namespace)."""
        return Path(f"/proc/{self.pid}/root") / path.relative_to("/")

    def terminate(self, timeout: float = 15.0) -> int:
        os.kill(self.pid, signal.SIGTERM)
        rc = self.shell.wait(timeout=timeout)
        self._close_log()
        return rc

    def kill(self) -> None:
        if self.shell is not None and self.shell.poll() is None:
            self.shell.kill()
            self.shell.wait()
        self._close_log()


def test_full_tmpfs_nacks_then_recovers(tmp_path):
    why = _unshare_works(tmp_path)
    if why:
        pytest.skip(f"no real ENOSPC test: {why}")
    config = "disk_free_limit.absolute = 0\n" + PIER_CONFIG  # the alarm would block first
    proc = TmpfsPier(tmp_path / "pier", tmp_path / "saved", config).start()
    try:
        run = Run()
        conn = _connect(proc.amqp_port)
        ch = conn.channel()
        ch.queue_declare(QUEUE, durable=True)
        ch.confirm_delivery()
        for i in range(100):
            run.publish(ch, f"before-{i}")
        assert run.nacked == []
        conn.close()

        # The fault: a filler file takes all the space but ~64 KiB.
        filler = proc.in_ns(proc.data_dir / "filler")
        st = os.statvfs(proc.in_ns(proc.data_dir))
        with open(filler, "wb") as f:
            left = st.f_bavail * st.f_frsize - 65536
            while left > 0:
                try:
                    left -= f.write(b"\0" * min(left, 1 << 20))
                except OSError:
                    break
        consumed = _during_fault(proc.amqp_port, run, 120)
        assert proc.alive, "the broker died on a full disk"

        filler.unlink()  # space returns
        _after_fault(proc.amqp_port, run, 50)
        log = _log(proc)
        errors = [line for line in log.splitlines() if "message store write failed:" in line]
        assert len(errors) == 1, f"one error line per incident:\n{log[-3000:]}"
        assert "os error 28" in errors[0], errors[0]
        assert "message store writes succeed again" in log
        assert proc.terminate() == 0, proc.log_tail()
    finally:
        proc.kill()

    # Restart on a copy of the tmpfs (it died with its namespace), on a normal directory.
    again = PierProcess(tmp_path / "again", config)
    shutil.rmtree(again.data_dir)
    shutil.copytree(tmp_path / "saved", again.data_dir)
    again.start()
    try:
        back = _verify_restart(again.amqp_port, run, consumed)
        assert "recovered with damage" not in _log(again)
        print(f"\nENOSPC: {len(run.acked)} acked, {len(run.nacked)} nacked, "
              f"{back} nacked came back after restart")
    finally:
        again.kill()
