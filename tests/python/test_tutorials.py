"""The six official RabbitMQ tutorials (tests/python/tutorials/), run as real
programs against the broker and checked on what they print."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers import wait_until

TUTORIALS = Path(__file__).resolve().parent / "tutorials"


class Program:
    """A tutorial program running in a subprocess, with its output collected
    line by line."""

    def __init__(self, script: str, args: list[str], env: dict[str, str]):
        self.script = script
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(TUTORIALS / script), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=TUTORIALS, text=True,
            # As from a terminal: a suite started in the background (a shell's `&`) has
            # SIGINT ignored, and a program would inherit that and never see Ctrl+C.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _pump(self, timeout: float) -> bool:
        """Move one line from the reader into ``lines``; False once at EOF."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return True
        if line is None:
            self._queue.put(None)  # keep the EOF marker for later calls
            return False
        self.lines.append(line)
        return True

    def _pump_all(self) -> None:
        while not self._queue.empty() and self._pump(0):
            pass

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> list[str]:
        """Wait until ``count`` output lines match ``pattern`` (re.search)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            self._pump_all()
            matches = [line for line in self.lines if regex.search(line)]
            if len(matches) >= count:
                return matches
            remaining = deadline - time.monotonic()
            at_eof = not self._pump(min(max(remaining, 0), 0.1))
            if remaining <= 0 or at_eof:
                self._pump_all()
                matches = [line for line in self.lines if regex.search(line)]
                if len(matches) >= count:
                    return matches
                state = "exited %s" % self.proc.poll() if at_eof else "timed out"
                raise AssertionError(
                    f"{self.script} ({state}): expected {count}x {pattern!r}; output:\n"
                    + "\n".join(self.lines))

    def matching(self, pattern: str) -> list[str]:
        self._pump_all()
        regex = re.compile(pattern)
        return [line for line in self.lines if regex.search(line)]

    def interrupt(self, timeout: float = 10.0) -> int:
        """Ctrl+C, like a person would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.script} did not stop on SIGINT")
        self._reader.join(timeout=5)
        self._pump_all()
        return self.proc.returncode

    def finish(self, timeout: float = 30.0) -> str:
        """Wait for a program that ends by itself; assert exit code 0."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        self._pump_all()
        output = "\n".join(self.lines)
        assert self.proc.returncode == 0, f"{self.script} exited {self.proc.returncode}:\n{output}"
        return output

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def tutorial(broker, names):
    """Run tutorial programs with a unique name suffix; everything they
    started is stopped, and their named queues/exchanges deleted, at the end."""
    suffix = f".pier-test-{uuid.uuid4().hex[:10]}"
    env = dict(os.environ, AMQP_URL=broker.url(), TUTORIAL_SUFFIX=suffix,
               PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    started: list[Program] = []

    class Runner:
        def __init__(self):
            self.suffix = suffix

        def start(self, script: str, *args: str, **extra_env: str) -> Program:
            prog = Program(script, list(args), dict(env, **extra_env))
            started.append(prog)
            return prog

        def run(self, script: str, *args: str) -> str:
            return self.start(script, *args).finish()

    for base in ("hello", "task_queue", "rpc_queue"):
        names.queues.append((broker.vhost, base + suffix))
    for base in ("logs", "direct_logs", "topic_logs"):
        names.exchanges.append((broker.vhost, base + suffix))
    yield Runner()
    for prog in started:
        prog.kill()


def test_tutorial_one_hello_world(tutorial):
    receiver = tutorial.start("receive.py")
    receiver.wait_for(r"\[\*\] Waiting for messages")
    assert "Sent 'Hello World!'" in tutorial.run("send.py")
    receiver.wait_for(r"^ \[x\] Received b'Hello World!'$")
    assert tutorial.run("send.py")
    receiver.wait_for(r"Received b'Hello World!'", count=2)
    assert receiver.interrupt() == 0
    assert receiver.lines[-1] == "Interrupted"
    assert len(receiver.matching("Received")) == 2


def test_tutorial_one_message_waits_for_consumer(tutorial):
    # The producer runs first: the message is stored until a consumer comes.
    tutorial.run("send.py")
    receiver = tutorial.start("receive.py")
    receiver.wait_for(r"Received b'Hello World!'")
    assert receiver.interrupt() == 0


def test_tutorial_two_work_queues_fair_dispatch(tutorial, connection):
    # A slow and a fast worker (prefetch_count=1, manual acks): the fast one
    # must get most of the tasks. With plain round-robin each would get half.
    slow = tutorial.start("worker.py", WORKER_SECONDS_PER_DOT="3")
    fast = tutorial.start("worker.py", WORKER_SECONDS_PER_DOT="0.02")
    queue_name = "task_queue" + tutorial.suffix

    def consumers():
        ch = connection.channel()
        try:
            return ch.queue_declare(queue_name, durable=True).method.consumer_count == 2
        finally:
            ch.close()

    wait_until(consumers, timeout=15, message="two workers consuming")
    tasks = [f"task {i}." for i in range(10)]
    for task in tasks:
        assert f"Sent {task}" in tutorial.run("new_task.py", task)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = len(slow.matching(r"\[x\] Done")) + len(fast.matching(r"\[x\] Done"))
        if done == len(tasks):
            break
        time.sleep(0.05)
    slow_got = [line.split("Received ", 1)[1] for line in slow.matching("Received")]
    fast_got = [line.split("Received ", 1)[1] for line in fast.matching("Received")]
    assert sorted(slow_got + fast_got) == sorted(tasks), (slow.lines, fast.lines)
    assert len(slow_got) <= 2, f"slow worker got {slow_got}, fast got {fast_got}"
    assert len(fast_got) >= 8
    assert slow.interrupt() == 0 and fast.interrupt() == 0


def test_tutorial_two_durable_queue_and_persistent_messages(tutorial, connection):
    # new_task.py declares a durable queue and sends persistent messages.
    tutorial.run("new_task.py", "First message.")
    ch = connection.channel()
    queue_name = "task_queue" + tutorial.suffix
    # Redeclaring as non-durable must fail: the queue really is durable.
    ok = ch.queue_declare(queue_name, durable=True)
    assert ok.method.message_count == 1
    method, props, body = ch.basic_get(queue_name, auto_ack=False)
    assert body == b"First message."
    assert props.delivery_mode == 2
    ch.basic_nack(method.delivery_tag, requeue=True)
    worker = tutorial.start("worker.py", WORKER_SECONDS_PER_DOT="0.01")
    worker.wait_for(r"\[x\] Received First message\.")
    worker.wait_for(r"\[x\] Done")
    time.sleep(0.5)  # the worker acks right after printing "Done"
    assert worker.interrupt() == 0
    # acked, so not requeued when the worker went away
    assert ch.queue_declare(queue_name, passive=True).method.message_count == 0


def test_tutorial_three_publish_subscribe(tutorial):
    receivers = [tutorial.start("receive_logs.py") for _ in range(2)]
    queue_names = []
    for receiver in receivers:
        receiver.wait_for(r"Waiting for logs")
        queue_names.append(receiver.matching(r"\[\*\] Queue ")[0].split()[-1])
    # exclusive server-named queues
    assert all(name.startswith("amq.gen-") for name in queue_names), queue_names
    assert len(set(queue_names)) == 2
    tutorial.run("emit_log.py", "info: first")
    tutorial.run("emit_log.py")
    for receiver in receivers:
        receiver.wait_for(r"^ \[x\] b'info: first'$")
        receiver.wait_for(r"^ \[x\] b'info: Hello World!'$")
        assert receiver.interrupt() == 0
        assert len(receiver.matching(r"\[x\]")) == 2


def test_tutorial_three_receiver_queue_goes_away(tutorial, connection):
    receiver = tutorial.start("receive_logs.py")
    receiver.wait_for(r"Waiting for logs")
    queue_name = receiver.matching(r"\[\*\] Queue ")[0].split()[-1]
    assert receiver.interrupt() == 0

    def gone():
        ch = connection.channel()
        try:
            ch.queue_declare(queue_name, passive=True)
        except Exception as exc:  # noqa: BLE001
            return getattr(exc, "reply_code", None) == 404
        ch.close()
        return False

    wait_until(gone, timeout=5, message="exclusive queue deleted after its connection closed")


def test_tutorial_four_routing(tutorial):
    errors = tutorial.start("receive_logs_direct.py", "error")
    everything = tutorial.start("receive_logs_direct.py", "info", "warning", "error")
    for receiver in (errors, everything):
        receiver.wait_for(r"Waiting for logs")
    tutorial.run("emit_log_direct.py", "error", "Run. Run. Or it will explode.")
    tutorial.run("emit_log_direct.py", "info", "just saying")
    tutorial.run("emit_log_direct.py", "warning", "careful")
    tutorial.run("emit_log_direct.py", "debug", "nobody listens")
    everything.wait_for(r"^ \[x\] warning:b'careful'$")
    everything.wait_for(r"^ \[x\] info:b'just saying'$")
    everything.wait_for(r"^ \[x\] error:b'Run. Run. Or it will explode.'$")
    errors.wait_for(r"^ \[x\] error:b'Run. Run. Or it will explode.'$")
    time.sleep(0.3)
    assert errors.interrupt() == 0 and everything.interrupt() == 0
    assert len(errors.matching(r"\[x\]")) == 1
    assert len(everything.matching(r"\[x\]")) == 3


def test_tutorial_four_receiver_usage(tutorial):
    prog = tutorial.start("receive_logs_direct.py")
    prog.proc.wait(timeout=15)
    assert prog.proc.returncode == 1


TOPIC_CASES = {
    # binding keys -> routing keys that must (and only they) arrive
    ("#",): ["kern.critical", "a", "", "a..b", "a.b", "a.x.y.b", "quick.orange.rabbit",
             "lazy.orange.elephant", "lazy", "quick.brown.fox", "orange",
             "quick.orange.male.rabbit", "anonymous.info"],
    ("kern.*",): ["kern.critical"],
    ("*.critical",): ["kern.critical"],
    ("kern.*", "*.critical"): ["kern.critical"],
    ("*.orange.*",): ["quick.orange.rabbit", "lazy.orange.elephant"],
    ("*.*.rabbit", "lazy.#"): ["quick.orange.rabbit", "lazy.orange.elephant", "lazy"],
    ("a.#.b",): ["a..b", "a.b", "a.x.y.b"],
    ("a..b",): ["a..b"],
    ("*",): ["a", "lazy", "orange"],
    ("",): [""],
}
TOPIC_MESSAGES = ["kern.critical", "a", "", "a..b", "a.b", "a.x.y.b", "quick.orange.rabbit",
                  "lazy.orange.elephant", "lazy", "quick.brown.fox", "orange",
                  "quick.orange.male.rabbit"]


def test_tutorial_five_topics(tutorial):
    receivers = {}
    for keys in TOPIC_CASES:
        receivers[keys] = tutorial.start("receive_logs_topic.py", *keys)
    for receiver in receivers.values():
        receiver.wait_for(r"Waiting for logs")
    for key in TOPIC_MESSAGES:
        out = tutorial.run("emit_log_topic.py", key, f"msg for [{key}]")
        assert f"Sent {key}:msg for [{key}]" in out
    # the tutorial default: routing key 'anonymous.info', body 'Hello World!'
    tutorial.run("emit_log_topic.py")
    for keys, expected in TOPIC_CASES.items():
        receiver = receivers[keys]
        for key in expected:
            body = "Hello World!" if key == "anonymous.info" else f"msg for [{key}]"
            receiver.wait_for("^ " + re.escape(f"[x] {key}:b'{body}'") + "$")
    time.sleep(0.3)
    for keys, expected in TOPIC_CASES.items():
        receiver = receivers[keys]
        assert receiver.interrupt() == 0
        got = [line.split(" [x] ", 1)[1].split(":b'", 1)[0]
               for line in receiver.matching(r"^ \[x\] ")]
        assert sorted(got) == sorted(expected), f"binding keys {keys}: got {got}"


def test_tutorial_six_rpc(tutorial):
    server = tutorial.start("rpc_server.py")
    server.wait_for(r"Awaiting RPC requests")
    out = tutorial.run("rpc_client.py", "0", "1", "10", "20")
    assert re.findall(r"Got (\d+)", out) == ["0", "1", "55", "6765"]
    server.wait_for(r"\[\.\] fib\(20\)")
    # the tutorial's default request, fib(30)
    out = tutorial.run("rpc_client.py")
    assert " [.] Got 832040" in out.splitlines()
    assert server.interrupt() == 0


@pytest.mark.same_node("transient or exclusive objects shared by several connections: they stay on the node that declared them (issue 13)")
def test_tutorial_six_rpc_server_thread(tutorial, broker):
    """The RPC server in a thread of the test process, several clients."""
    sys.path.insert(0, str(TUTORIALS))
    old_suffix = os.environ.get("TUTORIAL_SUFFIX")
    os.environ["TUTORIAL_SUFFIX"] = tutorial.suffix
    try:
        import rpc_client
        import rpc_server

        ready, stop = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def run_server():
            try:
                rpc_server.serve(broker.params(), ready=ready, stop=stop)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                ready.set()

        thread = threading.Thread(target=run_server, daemon=True)
        thread.start()
        assert ready.wait(15) and not errors, errors
        try:
            clients = [rpc_client.FibonacciRpcClient(broker.params()) for _ in range(3)]
            for n in range(15):
                client = clients[n % 3]
                assert client.call(n) == rpc_server.fib(n)
            # replies only reach the queue named in reply_to
            for client in clients:
                assert client.channel.queue_declare(
                    client.callback_queue, passive=True).method.message_count == 0
                client.connection.close()
        finally:
            stop.set()
            thread.join(10)
        assert not errors, errors
    finally:
        sys.path.remove(str(TUTORIALS))
        if old_suffix is None:
            os.environ.pop("TUTORIAL_SUFFIX", None)
        else:
            os.environ["TUTORIAL_SUFFIX"] = old_suffix
