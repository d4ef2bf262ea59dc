#!/usr/bin/env python3
"""Runs issue 5's scenarios against Pier and RabbitMQ in alternation and writes the report.

Called by scripts/bench-compare.sh, which installs/starts the brokers and passes their
URIs and pids; standard library only. Every run uses `pier bench --json` as the load
generator; this script adds what the bench cannot see from inside: the broker's peak RSS
(VmRSS of its pid every 200 ms), the machine's total CPU use (to show how much load other
processes added), medians and ratios.
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time

BROKERS = ("pier", "rabbitmq")
NAMES = {"pier": "Pier", "rabbitmq": "RabbitMQ"}
NOTES_BEGIN = "<!-- notes: kept when the script rewrites this file -->"
NOTES_END = "<!-- /notes -->"
RSS_INTERVAL = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def scenarios(time_s, f_messages):
    """name -> (title, phases, target); a phase is (label, kind, bench args)."""
    t = ["--time", f"{time_s:g}", "--delete-queues"]
    n = str(f_messages)
    growth_q = ["-x", "1", "-y", "1", "--size", "16", "--autoack"]
    # Memory per queue: the same queues at a trickle (no backlog), for 3 s.
    mem = ["--rate", "100", "--time", "3", "--delete-queues"]

    def conns(total):
        half = total // 2
        per = max(1, 10_000 // half)  # 10,000 msg/s in all, whatever the connection count
        return ["-x", str(half), "-y", str(half), "--queues", str(half), "--size", "256",
                "--autoack", "--rate", str(per)]

    return {
        "A": ("1 producer, 1 consumer, 16 B, transient, autoack",
              [("A", "timed", ["-x", "1", "-y", "1", "--size", "16", "--autoack"] + t)],
              "≥ 5× throughput"),
        "B": ("1 producer, 1 consumer, 1 KiB, transient, autoack",
              [("B", "timed", ["-x", "1", "-y", "1", "--size", "1024", "--autoack"] + t)],
              "≥ 5× throughput"),
        "C": ("1 KiB persistent, durable queue, confirms (1000 outstanding), ack every 100, "
              "prefetch 1000",
              [("C", "timed", ["-x", "1", "-y", "1", "--size", "1024", "--persistent",
                               "--confirm", "1000", "--multi-ack", "100",
                               "--prefetch", "1000"] + t)],
              "≥ 5× throughput"),
        "C4": ("C with 4 producers, 4 consumers, 4 queues (1 KiB persistent, durable queues, "
               "confirms (1000 outstanding), ack every 100, prefetch 1000)",
               [("C4", "timed", ["-x", "4", "-y", "4", "--queues", "4", "--size", "1024",
                                 "--persistent", "--confirm", "1000", "--multi-ack", "100",
                                 "--prefetch", "1000"] + t)],
               "≥ C and ≥ 12× throughput (issue 12)"),
        "D": ("1 KiB at a fixed 1,000 msg/s, autoack: latency",
              [("D", "timed", ["-x", "1", "-y", "1", "--size", "1024", "--rate", "1000",
                               "--autoack"] + t)],
              "p99 ≤ 200 µs and below RabbitMQ's"),
        "E": ("4 producers, 4 consumers, 4 queues, 256 B, autoack",
              [("E", "timed", ["-x", "4", "-y", "4", "--queues", "4", "--size", "256",
                               "--autoack"] + t)],
              "≥ 5× throughput"),
        "F": (f"publish {f_messages:,} persistent 1 KiB messages (confirms, 1000 outstanding) "
              "with no consumer, then drain them (prefetch 1000, ack every 100)",
              [("F publish", "publish", ["-x", "1", "-y", "0", "--pmessages", n, "--size",
                                         "1024", "--persistent", "--confirm", "1000"]),
               ("F drain", "drain", ["-x", "0", "-y", "1", "--cmessages", n, "--persistent",
                                     "--prefetch", "1000", "--multi-ack", "100",
                                     "--drain-timeout", "120", "--delete-queues"])],
              "publish and drain ≥ 5×, peak RSS ≤ 1/20"),
        "Q1": ("growth: 1 queue at 100 msg/s for 3 s (memory baseline for Q100, Q1000)",
               [("Q1 mem", "timed", growth_q + ["--queues", "1"] + mem)],
               "flat cost per queue"),
        "Q100": ("growth: 100 queues declared, 1 producer and 1 consumer on the first: at 100 "
                 "msg/s for 3 s (memory), then A's load (throughput)",
                 [("Q100 mem", "timed", growth_q + ["--queues", "100"] + mem),
                  ("Q100", "timed", growth_q + ["--queues", "100"] + t)],
                 "flat cost per queue"),
        "Q1000": ("growth: the same with 1,000 queues",
                  [("Q1000 mem", "timed", growth_q + ["--queues", "1000"] + mem),
                   ("Q1000", "timed", growth_q + ["--queues", "1000"] + t)],
                  "flat cost per queue"),
        "N10": ("growth: 10 connections (5 producers at 2,000 msg/s, 5 consumers, 5 queues, "
                "256 B)",
                [("N10", "timed", conns(10) + t)], "flat cost per connection"),
        "N1000": ("growth: 1,000 connections (500 producers at 20 msg/s, 500 consumers, "
                  "500 queues, 256 B)",
                  [("N1000", "timed", conns(1000) + t)], "flat cost per connection"),
    }


# F last: it leaves a broker's allocator holding the most memory, which would hide the
# growth scenarios' RSS increments.
ORDER = ["A", "B", "C", "C4", "D", "E", "Q1", "Q100", "Q1000", "N10", "N1000", "F"]

# Open files a broker needs for a scenario: one per connection plus files and headroom.
# RabbitMQ started by hand (not by its systemd unit, which sets LimitNOFILE=65536) has
# 1,024: 1,000 connections exhaust it, and then its queues and memory monitor crash.
NOFILE_NEEDED = {"N1000": 2048}


# --- /proc sampling ----------------------------------------------------------------------

def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_ticks():
    """Busy CPU ticks of the whole machine (all cores): everything but idle and iowait."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user
    return sum(fields[:8]) - idle


class RssSampler:
    """Peak VmRSS of a pid, sampled every 200 ms on a thread."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        v = rss_kb(self.pid)
        if v is not None:
            self.last = v
            self.peak = max(self.peak, v)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(RSS_INTERVAL)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def nofile_limit(pid):
    """The soft limit on open files of a process (None if unknown)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    v = line.split()[3]
                    return None if v == "unlimited" else int(v)
    except (OSError, IndexError, ValueError):
        pass
    return None


def settle(pid, max_wait=60.0):
    """Waits (at least 1 s, at most `max_wait`) until the broker uses under 5% of a core
    (e.g. after RabbitMQ deleted a queue with a million messages) and the whole machine
    under 30% of a core (someone else's build or benchmark on a shared machine). Returns
    the seconds waited."""
    start = time.monotonic()
    time.sleep(1.0)
    while time.monotonic() - start < max_wait:
        a, ma = proc_ticks(pid), machine_busy_ticks()
        time.sleep(0.5)
        b, mb = proc_ticks(pid), machine_busy_ticks()
        broker_quiet = a is None or b is None or (b - a) / CLK_TCK / 0.5 < 0.05
        machine_quiet = (mb - ma) / CLK_TCK / 0.5 < 0.30
        if broker_quiet and machine_quiet:
            break
    return time.monotonic() - start


# --- running the bench -------------------------------------------------------------------

def run_phase(opts, broker, pid, prefix, kind, args):
    uri = opts.pier if broker == "pier" else opts.rabbit
    cmd = [opts.pier_bin, "bench", "--uri", uri, "--queue-prefix", prefix, "--json",
           "--quiet", "--broker-pid", str(pid)] + args
    if kind == "timed":
        timeout = opts.time + 120
    else:
        timeout = 1800 + opts.f_messages / 1000
    busy0, t0 = machine_busy_ticks(), time.monotonic()
    error = None
    rss_before = rss_kb(pid)
    with RssSampler(pid) as rss:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            code, error = None, f"timed out after {timeout:.0f} s"
    wall = time.monotonic() - t0
    machine = (machine_busy_ticks() - busy0) / CLK_TCK / wall * 100
    result = None
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError as e:
            error = error or f"bad JSON: {e}"
    if code not in (0, None) or result is None:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        error = error or f"exit code {code}: {tail}"
    elif result.get("errors"):
        error = "; ".join(result["errors"])
    return {
        "command": cmd,
        "kind": kind,
        "result": result,
        "error": error,
        "stderr_tail": stderr.strip().splitlines()[-12:],
        "rss_before_kb": rss_before,
        "peak_rss_kb": rss.peak,
        "end_rss_kb": rss.last,
        "machine_cpu_percent": machine,
        "wall_secs": wall,
    }


def run_floor(opts):
    """Scenario D's floor: the same size and rate through a byte relay (`pier bench --floor`),
    measured by the same generator in the same run. Returns (p50, p99) in µs or Nones."""
    cmd = [opts.pier_bin, "bench", "--floor", "--json", "--size", "1024", "--rate", "1000",
           "--time", f"{opts.time:g}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=opts.time + 60)
    except subprocess.TimeoutExpired:
        return None, None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return None, None
    lat = json.loads(lines[-1]).get("latency_us") or {}
    return lat.get("p50"), lat.get("p99")


def metrics(phase):
    """The figures of one phase that go into the tables."""
    r = phase["result"] or {}
    lat = r.get("latency_us") or {}
    kind = phase["kind"]
    if kind == "publish":
        thr = r.get("publish_rate")
    elif kind == "drain":
        thr = r.get("receive_rate")
    else:
        thr = r.get("consume_rate")
    broker_cpu = r.get("broker_cpu_percent")
    bench_cpu = r.get("bench_cpu_percent")
    other = None
    if broker_cpu is not None and bench_cpu is not None:
        other = max(0.0, phase["machine_cpu_percent"] - broker_cpu - bench_cpu)
    cpu_per_msg = None
    if broker_cpu is not None and thr:
        cpu_per_msg = broker_cpu / 100 / thr * 1e6  # µs of broker CPU per message
    per = (r.get("published_per_producer") or [], r.get("consumed_per_consumer") or [])
    spreads = [max(x) / min(x) if min(x) > 0 else float("inf") for x in per
               if len(x) > 1 and max(x) > 0]
    spread = max(spreads) if spreads else None
    return {
        "throughput": thr,
        "publish_rate": r.get("publish_rate"),
        "confirm_rate": r.get("confirm_rate") if r.get("confirm") else None,
        "consume_rate": r.get("consume_rate") if kind != "drain" else r.get("receive_rate"),
        "p50": lat.get("p50") if lat.get("samples") else None,
        "p99": lat.get("p99") if lat.get("samples") else None,
        "broker_cpu": broker_cpu,
        "bench_cpu": bench_cpu,
        "other_cpu": other,
        "peak_rss_mb": phase["peak_rss_kb"] / 1024 if phase["peak_rss_kb"] else None,
        "end_rss_mb": phase["end_rss_kb"] / 1024 if phase["end_rss_kb"] else None,
        "rss_before_mb": phase["rss_before_kb"] / 1024 if phase["rss_before_kb"] else None,
        "cpu_per_msg_us": cpu_per_msg,
        "spread": spread,
        "published": r.get("published"),
        "consumed": (r.get("consumed") or 0) + (r.get("stale") or 0) if kind == "drain"
        else r.get("consumed"),
        "error": phase["error"],
    }


def finite(v):
    """`v` with infinite floats as strings, so that the raw file is strict JSON."""
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return str(v)
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite(x) for x in v]
    return v


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# --- formatting --------------------------------------------------------------------------

def fmt_rate(v):
    if v is None:
        return "–"
    return f"{v:,.0f}"


def fmt_us(v):
    if v is None:
        return "–"
    if v >= 10_000:
        return f"{v / 1000:,.0f} ms"
    if v >= 1000:
        return f"{v / 1000:.1f} ms"
    return f"{v:.0f} µs"


def fmt_num(v, digits=0, unit=""):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


def fmt_ratio(v):
    if v is None:
        return "–"
    if v >= 10:
        return f"{v:.0f}×"
    if v >= 0.1:
        return f"{v:.2f}×"
    return f"{v:.3f}×"


def fmt_spread(v):
    return "∞" if v == float("inf") else f"{v:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def machine_info():
    info = {"nproc": os.cpu_count(), "kernel": platform.release()}
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            info["cpu"] = m.group(1).strip() if m else "unknown"
    except OSError:
        info["cpu"] = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1))
            info["memory"] = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        info["memory"] = "unknown"
    try:
        with open("/etc/os-release") as f:
            m = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M)
            info["os"] = m.group(1) if m else "unknown"
    except OSError:
        info["os"] = "unknown"
    return info


def read_notes(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    i, j = text.find(NOTES_BEGIN), text.find(NOTES_END)
    if i < 0 or j < i:
        return None
    return text[i + len(NOTES_BEGIN):j].strip("\n")


def write_report(opts, info, defs, names, results, skipped, started, finished, raw_path,
                 floors=()):
    L = []
    w = L.append
    w("# Benchmarks: Pier and RabbitMQ side by side")
    w("")
    w("Generated by `scripts/bench-compare.sh` (issue 5); the tables are rewritten on every "
      "run, the notes at the end are kept. The load generator is `pier bench` for both "
      "brokers, on the same machine and the same cores as the broker. Each scenario runs "
      "against Pier, then RabbitMQ, then Pier again, …; the figures are **medians of "
      f"{opts.runs} run{'s' if opts.runs != 1 else ''}** per broker. These machines are "
      "shared and noisy: the ratios Pier/RabbitMQ count, not the absolute numbers.")
    w("")
    w("## Machine and versions")
    w("")
    w(f"- CPU: {info['cpu']}, {info['nproc']} cores (`nproc`), memory {info['memory']}")
    w(f"- Kernel {info['kernel']}, {info['os']}")
    w(f"- Pier: {opts.pier_version} (release build), `--data-dir` on a fresh temporary "
      "directory")
    w(f"- {opts.rabbit_version} (Debian package, default settings, classic queues)")
    w("- Open-files limits (soft): " + ", ".join(
        f"{NAMES[b]} {info['nofile'][b]:,}" if info["nofile"][b] else f"{NAMES[b]} unknown"
        for b in BROKERS))
    w(f"- Run: {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC, load average at the start "
      f"{info['loadavg']}; `--time {opts.time:g}`, F with {opts.f_messages:,} messages")
    w(f"- Raw results (every run's bench JSON): `{raw_path}`")
    w("")
    w("## How to reproduce")
    w("")
    w("```sh")
    w(opts.command)
    w("```")
    w("")
    w("It installs RabbitMQ from Debian if missing and starts it on port 5673, builds and "
      "starts Pier on 5700 with an empty data directory, and runs, for each scenario and "
      "run, these commands against each broker (`$URI` is the broker's, plus "
      "`--broker-pid <pid> --queue-prefix <unique> --json --quiet`):")
    w("")
    w("| | Scenario | `pier bench` command |")
    w("|---|---|---|")
    for name in names:
        title, phases, _ = defs[name]
        for label, _, args in phases:
            cmd = "pier bench --uri $URI " + " ".join(args)
            w(f"| {label} | {title if label == phases[0][0] else '(continued)'} | `{cmd}` |")
    w("")
    w("Broker CPU comes from the bench's `--broker-pid` (utime+stime of the broker's process "
      "over the run), peak RSS from sampling `/proc/<pid>/status` VmRSS every 200 ms during "
      "the run (RabbitMQ: the `beam.smp` listening on 5673; Pier: the `pier server` "
      "process). CPU figures are in % of one core (200% = both cores). *Other load* is the "
      "machine's total busy CPU during the run minus the bench and the broker: other "
      "people's work on the shared machine. Throughput is end-to-end (consumed messages/s) "
      "except for F's phases (publish: confirmed publishes/s; drain: deliveries/s).")
    w("")
    w("## Medians")
    w("")
    w("| Scenario | Broker | publish/s | consume/s | latency p50 | latency p99 | broker CPU "
      "| bench CPU | peak RSS | RSS before | broker CPU per msg | other load |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    med = {}
    for name in names:
        _, phases, _ = defs[name]
        for label, _, _ in phases:
            for broker in BROKERS:
                runs = [m for m in results[name][broker] if label in m]
                ms = [m[label] for m in runs]
                mm = {k: median([m[k] for m in ms]) for k in
                      ("throughput", "publish_rate", "consume_rate", "p50", "p99",
                       "broker_cpu", "bench_cpu", "peak_rss_mb", "end_rss_mb",
                       "rss_before_mb",
                       "cpu_per_msg_us", "other_cpu", "spread")}
                mm["runs"] = len(ms)
                mm["ok"] = sum(1 for m in ms if not m["error"])
                med[(label, broker)] = mm
                w(f"| {label} | {NAMES[broker]} | {fmt_rate(mm['publish_rate'])} | "
                  f"{fmt_rate(mm['consume_rate'])} | {fmt_us(mm['p50'])} | "
                  f"{fmt_us(mm['p99'])} | {fmt_num(mm['broker_cpu'], 0, '%')} | "
                  f"{fmt_num(mm['bench_cpu'], 0, '%')} | {fmt_num(mm['peak_rss_mb'], 0, ' MB')} | "
                  f"{fmt_num(mm['rss_before_mb'], 0, ' MB')} | "
                  f"{fmt_num(mm['cpu_per_msg_us'], 2, ' µs')} | "
                  f"{fmt_num(mm['other_cpu'], 0, '%')} |")
    w("")
    w("## Ratios Pier / RabbitMQ")
    w("")
    w("Throughput: higher is better for Pier; latency, CPU per message and RSS: lower is "
      "better for Pier.")
    w("")
    w("| Scenario | throughput | latency p50 | latency p99 | broker CPU per msg | peak RSS "
      "| target | met? |")
    w("|---|--:|--:|--:|--:|--:|---|---|")
    for name in names:
        _, phases, target = defs[name]
        for label, _, _ in phases:
            p, r = med[(label, "pier")], med[(label, "rabbitmq")]
            thr = ratio(p["throughput"], r["throughput"])
            p50 = ratio(p["p50"], r["p50"])
            p99 = ratio(p["p99"], r["p99"])
            cpm = ratio(p["cpu_per_msg_us"], r["cpu_per_msg_us"])
            rss = ratio(p["peak_rss_mb"], r["peak_rss_mb"])
            met = target_met(name, label, thr, p, r, rss, med)
            w(f"| {label} | {fmt_ratio(thr)} | {fmt_ratio(p50)} | {fmt_ratio(p99)} | "
              f"{fmt_ratio(cpm)} | {fmt_ratio(rss)} | "
              f"{target if label == phases[0][0] else ''} | {met} |")
    if "D" in names and floors:
        f50 = median([f[0] for f in floors])
        f99 = median([f[1] for f in floors])
        p = med[("D", "pier")]
        w("")
        w("### D's floor")
        w("")
        w("The same 1 KiB messages at 1,000/s through a plain byte relay (`pier bench --floor`: "
          "one TCP hop in, one out, a tokio runtime with as many workers as Pier's), measured "
          "by the same generator in this run, once per round: what waking the idle vCPUs "
          "costs with no broker on the path.")
        w("")
        w(f"| | p50 | p99 |")
        w("|---|--:|--:|")
        w(f"| relay floor (median of {len(floors)}) | {fmt_us(f50)} | {fmt_us(f99)} |")
        w(f"| {NAMES['pier']} | {fmt_us(p['p50'])} | {fmt_us(p['p99'])} |")
        w(f"| {NAMES['pier']} / floor | {fmt_ratio(ratio(p['p50'], f50))} | "
          f"{fmt_ratio(ratio(p['p99'], f99))} |")
    w("")
    w("## Every run")
    w("")
    w("Per run, in the order run: the headline figure (throughput in msg/s; D: p99 latency), "
      "the other load on the machine (see above), RSS before the run → peak (MB), and the "
      "fairness spread where there are several producers/consumers (max/min of the "
      "per-producer and per-consumer counts; 1.00 = even, ∞ = someone got nothing).")
    w("")
    w("| Scenario | Broker | headline per run | other load | RSS before → peak (MB) "
      "| spread (max/min) |")
    w("|---|---|---|---|---|---|")
    for name in names:
        _, phases, _ = defs[name]
        for label, _, _ in phases:
            for broker in BROKERS:
                ms = [m[label] for m in results[name][broker] if label in m]
                if name == "D":
                    runs = ", ".join(fmt_us(m["p99"]) + (" (error)" if m["error"] else "")
                                     for m in ms)
                else:
                    runs = ", ".join(fmt_rate(m["throughput"]) + (" (error)" if m["error"]
                                                                 else "") for m in ms)
                other = ", ".join(fmt_num(m["other_cpu"], 0, "%") for m in ms)
                if (name, broker) in skipped:
                    w(f"| {label} | {NAMES[broker]} | {skipped[(name, broker)]} | | | |")
                    continue
                rss = ", ".join(f"{fmt_num(m['rss_before_mb'])} → {fmt_num(m['peak_rss_mb'])}"
                                for m in ms)
                spreads = [m["spread"] for m in ms if m["spread"] is not None]
                sp = ", ".join(fmt_spread(s) for s in spreads) if spreads else "–"
                w(f"| {label} | {NAMES[broker]} | {runs} | {other} | {rss} | {sp} |")
    errors = [(name, broker, label, m["error"]) for name in names for broker in BROKERS
              for run in results[name][broker] for label, m in run.items() if m["error"]]
    if errors:
        w("")
        w("Errors:")
        w("")
        for name, broker, label, e in errors:
            w(f"- {label} on {NAMES[broker]}: {e}")
    growth(w, names, med, skipped)
    if "F" in names:
        p, r = med.get(("F publish", "pier")), med.get(("F publish", "rabbitmq"))
        if p and r:
            w("")
            w(f"RSS with the {opts.f_messages:,} messages of F queued (end of the publish "
              f"phase, medians): Pier {fmt_num(p['end_rss_mb'], 0, ' MB')}, RabbitMQ "
              f"{fmt_num(r['end_rss_mb'], 0, ' MB')}.")
    w("")
    w("## What we found")
    w("")
    w(NOTES_BEGIN)
    notes = read_notes(opts.out)
    w(notes if notes is not None else "(No notes yet: write them here; the script keeps this "
      "section.)")
    w(NOTES_END)
    w("")
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        f.write("\n".join(L))


def growth(w, names, med, skipped):
    """Cost per queue and per connection, from the growth scenarios (medians)."""
    # (unit, [(count, throughput row, memory row)])
    series = [("queues", [(1, "A", "Q1 mem"), (100, "Q100", "Q100 mem"),
                          (1000, "Q1000", "Q1000 mem")]),
              ("connections", [(10, "N10", "N10"), (1000, "N1000", "N1000")])]
    rows = []

    def get(label, broker):
        m = med.get((label, broker))
        return m if m and m["runs"] else None

    def grown(m):
        if m and m["peak_rss_mb"] is not None and m["rss_before_mb"] is not None:
            return max(0.0, m["peak_rss_mb"] - m["rss_before_mb"])
        return None

    for unit, points in series:
        points = [p for p in points if get(p[1], "pier") or get(p[2], "pier")]
        if len(points) < 2:
            continue
        for broker in BROKERS:
            base = None
            for k, thr_label, mem_label in points:
                t, m = get(thr_label, broker), get(mem_label, broker)
                if not t and not m:
                    rows.append(f"| {k:,} {unit if k > 1 else unit[:-1]} | {NAMES[broker]} | "
                                "not measured | | | | |")
                    continue
                delta = grown(m)
                per = None
                if base is None:
                    base = (k, delta)
                elif delta is not None and base[1] is not None:
                    per = (delta - base[1]) * 1024 / (k - base[0])
                rows.append(f"| {k:,} {unit if k > 1 else unit[:-1]} | {NAMES[broker]} | "
                            f"{fmt_rate(t['throughput']) if t else '–'} | "
                            f"{fmt_us(t['p99']) if t else '–'} | "
                            f"{fmt_num(t['cpu_per_msg_us'], 2, ' µs') if t else '–'} | "
                            f"{fmt_num(delta, 1, ' MB')} | {fmt_num(per, 1, ' KB')} |")
    if not rows:
        return
    w("")
    w("## Growth")
    w("")
    w("Cost per unit, medians. Queues: throughput and latency under A's load (Q100, Q1000; "
      "1 queue = A) with one producer and one consumer on the first queue and the other "
      "queues declared and idle; memory from the same queues at 100 msg/s for 3 s (no "
      "backlog). Connections: N10 and N1000, half producers and half consumers, one queue "
      "per pair, 10,000 msg/s in all. *RSS growth* is the peak during the run minus the RSS "
      "just before it (memory that the allocator kept from earlier runs is reused first, "
      "so it can read low); *per unit* is the increment over the smallest size divided by "
      "the added queues or connections.")
    w("")
    w("| Size | Broker | throughput (msg/s) | latency p99 | broker CPU per msg | RSS growth "
      "| per added unit |")
    w("|---|---|--:|--:|--:|--:|--:|")
    for r in rows:
        w(r)


def target_met(name, label, thr, p, r, rss, med):
    if name in ("A", "B", "C", "E"):
        return "yes" if thr is not None and thr >= 5 else "no"
    if name == "C4":
        c = med.get(("C", "pier"))
        vs_c = ("–" if not c or c["throughput"] is None or p["throughput"] is None
                else "yes" if p["throughput"] >= c["throughput"] else "no")
        return ("yes" if thr is not None and thr >= 12 else "no") + f" (≥ C: {vs_c})"
    if name == "D":
        if p["p99"] is None or r["p99"] is None:
            return "–"
        return "yes" if p["p99"] <= 200 and p["p99"] < r["p99"] else "no"
    if name == "F":
        ok = thr is not None and thr >= 5
        if label == "F publish":
            # the RSS target is about the whole scenario: checked on the publish row
            rp = max(filter(None, [med[("F publish", "pier")]["peak_rss_mb"],
                                   med[("F drain", "pier")]["peak_rss_mb"]]), default=None)
            rr = max(filter(None, [med[("F publish", "rabbitmq")]["peak_rss_mb"],
                                   med[("F drain", "rabbitmq")]["peak_rss_mb"]]), default=None)
            rss_ok = rp is not None and rr is not None and rp <= rr / 20
            return ("yes" if ok else "no") + " (RSS ≤ 1/20: " + ("yes" if rss_ok else "no") + ")"
        return "yes" if ok else "no"
    return "see table"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pier-bin", required=True)
    ap.add_argument("--pier", required=True, help="Pier's AMQP URI")
    ap.add_argument("--pier-pid", type=int, required=True)
    ap.add_argument("--pier-version", default="pier")
    ap.add_argument("--rabbit", required=True, help="RabbitMQ's AMQP URI")
    ap.add_argument("--rabbit-pid", type=int, required=True)
    ap.add_argument("--rabbit-version", default="RabbitMQ")
    ap.add_argument("--raw-dir", default="target/bench-compare")
    ap.add_argument("--command", default="./scripts/bench-compare.sh")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--time", type=float)
    ap.add_argument("--scenarios", default="all")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--f-messages", type=int)
    ap.add_argument("--pier-name", default="Pier",
                    help="name of the first broker in the report (before/after runs)")
    ap.add_argument("--rabbit-name", default="RabbitMQ",
                    help="name of the second broker in the report (before/after runs)")
    opts = ap.parse_args()
    NAMES["pier"], NAMES["rabbitmq"] = opts.pier_name, opts.rabbit_name
    opts.runs = opts.runs or (1 if opts.quick else 3)
    opts.time = opts.time or (2.0 if opts.quick else 10.0)
    opts.f_messages = opts.f_messages or (50_000 if opts.quick else 1_000_000)
    if opts.runs < 1 or opts.time <= 0 or opts.f_messages < 1:
        ap.error("--runs, --time and --f-messages must be positive")
    if not opts.out:
        opts.out = (os.path.join(opts.raw_dir, "benchmarks-quick.md") if opts.quick
                    else "docs/benchmarks.md")
    defs = scenarios(opts.time, opts.f_messages)
    if opts.scenarios.strip().lower() == "all":
        names = list(ORDER)
    else:
        names = [s.strip().upper() for s in opts.scenarios.split(",") if s.strip()]
        unknown = [s for s in names if s not in defs]
        if unknown:
            ap.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(ORDER)}")
    pids = {"pier": opts.pier_pid, "rabbitmq": opts.rabbit_pid}

    info = machine_info()
    with open("/proc/loadavg") as f:
        info["loadavg"] = " ".join(f.read().split()[:3])
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    os.makedirs(opts.raw_dir, exist_ok=True)
    raw_path = os.path.join(opts.raw_dir, f"results-{stamp}.json")
    raw = {"started": started.isoformat(), "machine": info, "options": vars(opts), "runs": []}
    results = {name: {b: [] for b in BROKERS} for name in names}
    skipped = {}
    for name in names:
        for broker in BROKERS:
            need, have = NOFILE_NEEDED.get(name), nofile_limit(pids[broker])
            if need and have is not None and have < need:
                skipped[(name, broker)] = (
                    f"not measured: {NAMES[broker]}'s open-files limit is {have:,} (pid "
                    f"{pids[broker]}), {need:,} needed; start it with a higher `ulimit -n` "
                    "(its systemd unit uses 65536)")
                print(f"bench-compare: {name} on {NAMES[broker]}: {skipped[(name, broker)]}",
                      file=sys.stderr)
    info["nofile"] = {b: nofile_limit(pids[b]) for b in BROKERS}

    floors = []
    for name in names:
        title, phases, _ = defs[name]
        print(f"== {name}: {title}", file=sys.stderr)
        for run in range(opts.runs):
            if name == "D":
                p50, p99 = run_floor(opts)
                floors.append((p50, p99))
                raw["runs"].append({"scenario": "D", "phase": "D floor", "run": run + 1,
                                    "broker": "relay", "p50": p50, "p99": p99})
                print(f"   D floor   run {run + 1}/{opts.runs} relay    p50 {fmt_us(p50):>8} "
                      f"p99 {fmt_us(p99):>8}", file=sys.stderr)
            for broker in BROKERS:
                pid = pids[broker]
                if (name, broker) in skipped:
                    continue
                if rss_kb(pid) is None:
                    sys.exit(f"bench-compare: {NAMES[broker]} (pid {pid}) is gone")
                waited = settle(pid)
                prefix = f"bc-{stamp}-{name}-{run + 1}-{broker}-"
                run_metrics = {}
                for label, kind, args in phases:
                    phase = run_phase(opts, broker, pid, prefix, kind, args)
                    m = metrics(phase)
                    run_metrics[label] = m
                    raw["runs"].append({"scenario": name, "phase": label, "run": run + 1,
                                        "broker": broker, "settle_secs": round(waited, 1),
                                        **{k: v for k, v in phase.items()}, "metrics": m})
                    line = (f"   {label:<9} run {run + 1}/{opts.runs} {NAMES[broker]:<8} "
                            f"{fmt_rate(m['throughput']):>10} msg/s  p50 {fmt_us(m['p50']):>8} "
                            f"p99 {fmt_us(m['p99']):>8}  broker {fmt_num(m['broker_cpu'], 0, '%'):>5}"
                            f"  bench {fmt_num(m['bench_cpu'], 0, '%'):>5}"
                            f"  rss {fmt_num(m['peak_rss_mb'], 0, ' MB'):>8}"
                            f"  other {fmt_num(m['other_cpu'], 0, '%'):>5}")
                    if m["spread"] is not None:
                        line += f"  spread {fmt_spread(m['spread'])}"
                    if m["error"]:
                        line += f"  ERROR: {m['error']}"
                    print(line, file=sys.stderr)
                results[name][broker].append(run_metrics)
                with open(raw_path, "w") as f:
                    json.dump(finite(raw), f, indent=1)

    finished = datetime.datetime.now(datetime.timezone.utc)
    write_report(opts, info, defs, names, results, skipped, started, finished, raw_path,
                 floors)
    print(f"report: {opts.out}\nraw results: {raw_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
