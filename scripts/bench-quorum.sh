#!/usr/bin/env bash
# Scenario C on a quorum queue (issue 14's performance item): 1 producer, 1 consumer, 1 KiB
# persistent messages, publisher confirms with 1,000 outstanding, ack every 100, prefetch
# 1,000, one `x-queue-type: quorum` queue — against Pier and RabbitMQ 3.10.8, each on one
# node and as a 3-node cluster on this machine, with the same generator (`pier bench`), in
# alternating runs.
#
#   pier-1     one Pier node (a quorum queue of one member: fsync before confirm)
#   pier-3     three Pier nodes (--quorum-replication: a Raft group of three members, confirm
#              once a majority has fsync'd); the producer on node 1 (the queue's leader), the
#              consumer on node 2
#   rabbit-1   one RabbitMQ node (Ra: one member)
#   rabbit-3   three RabbitMQ nodes joined with join_cluster (three members); clients as pier-3
#
# Also the idle cost: QUEUES idle quorum queues on the 3-node clusters, the RSS and CPU of
# the nodes before and after (per queue); and the memory of a backlog: twice BACKLOG
# persistent 1 KiB messages published (confirms) to a quorum queue without a consumer, each
# node's RSS growth per queued message once the allocators settled (30 s), over all of them
# and over the second half alone (what one more queued message costs).
#
# Usage: ./scripts/bench-quorum.sh [--runs N] [--time SECS] [--idle-queues N]
#                                  [--backlog N (0: skip)] [--bin PATH]
#   (--idle-queues 0 skips the idle cost)
# Needs root (RabbitMQ runs as the rabbitmq user) and rabbitmq-server installed. Pier nodes
# listen on 127.0.0.1-3 (5672/15672/26672); RabbitMQ nodes on 127.0.0.1:5781-5783.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=3
TIME=15
IDLE=1000
BACKLOG=1000000
BIN="${PIER_BIN:-$ROOT/target/release/pier}"
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift ;;
        --time) TIME="$2"; shift ;;
        --idle-queues) IDLE="$2"; shift ;;
        --backlog) BACKLOG="$2"; shift ;;
        --bin) BIN="$2"; shift ;;
        *) echo "usage: $0 [--runs N] [--time SECS] [--idle-queues N] [--backlog N] [--bin PATH]" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$BIN" ] || { echo "no pier binary at $BIN (cargo build --release -p pier)" >&2; exit 1; }

WORK="$(mktemp -d)"
# shellcheck source=scripts/lib/nodes.sh
. "$ROOT/scripts/lib/nodes.sh"
trap nodes_cleanup EXIT

C_ARGS=(-x 1 -y 1 -s 1024 -f -c 1000 -A 100 -q 1000 --quorum-queue --quiet --json)

RESULTS="$WORK/results.txt"
: >"$RESULTS"
record() { # record NAME RUN JSON
    local rate
    rate=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["consume_rate"]))' "$3")
    echo "$1 run $2: $rate msg/s" | tee -a "$RESULTS"
}

bench() { # bench NAME RUN URI [--uris URI2] -> consumer rate
    local name="$1" run="$2"; shift 2
    local out
    out=$("$BIN" bench "$@" "${C_ARGS[@]}" -z "$TIME" --queue-prefix "qq-$run-" 2>"$WORK/bench.err") \
        || { cat "$WORK/bench.err" >&2; exit 1; }
    record "$name" "$run" "$out"
}

idle_cost() { # idle_cost NAME URI PIDS...
    local name="$1" uri="$2"; shift 2
    [ "$IDLE" -gt 0 ] || return 0
    local rss0 cpu0 rss1 cpu1
    rss0=$(rss_kb "$@")
    "$ROOT/.venv/bin/python" - "$uri" "$IDLE" <<'PY'
import sys
import pika
conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
ch = conn.channel()
for i in range(int(sys.argv[2])):
    ch.queue_declare(f"idle-{i}", durable=True, arguments={"x-queue-type": "quorum"})
conn.close()
PY
    sleep 10
    cpu0=$(cpu_ticks "$@")
    sleep 30
    cpu1=$(cpu_ticks "$@")
    rss1=$(rss_kb "$@")
    python3 - "$name" "$IDLE" "$rss0" "$rss1" "$cpu0" "$cpu1" <<'EOF' | tee -a "$RESULTS"
import os, sys
name, n, rss0, rss1, cpu0, cpu1 = sys.argv[1], *map(int, sys.argv[2:])
hz = os.sysconf("SC_CLK_TCK")
print(f"{name} idle: {n} quorum queues, RSS {rss0 // 1024} -> {rss1 // 1024} MiB "
      f"({(rss1 - rss0) * 1024 / n:.0f} B per queue over 3 nodes), "
      f"CPU {(cpu1 - cpu0) / hz / 30 * 100:.1f}% of one core while idle "
      f"({(cpu1 - cpu0) / hz / 30 * 1e6 / n:.0f} us/s per queue)")
EOF
}

backlog_cost() { # backlog_cost NAME URI PIDS...
    local name="$1" uri="$2"; shift 2
    [ "$BACKLOG" -gt 0 ] || return 0
    local before middle after out p half
    before=$(for p in "$@"; do rss_kb "$p"; done | tr '\n' ' ')
    # Twice BACKLOG messages, RSS read after each half: the first half also pays what a node
    # grows by once anything is queued (buffers, caches), the second only the messages.
    for half in 1 2; do
        out=$("$BIN" bench --uri "$uri" -x 1 -y 0 -s 1024 -f -c 1000 --pmessages "$BACKLOG" \
            --quorum-queue --queue-prefix backlog- --quiet --json 2>"$WORK/bench.err") \
            || { cat "$WORK/bench.err" >&2; exit 1; }
        sleep 30
        if [ "$half" = 1 ]; then
            middle=$(for p in "$@"; do rss_kb "$p"; done | tr '\n' ' ')
        fi
    done
    after=$(for p in "$@"; do rss_kb "$p"; done | tr '\n' ' ')
    python3 - "$name" "$BACKLOG" "$before" "$middle" "$after" "$out" <<'EOF' | tee -a "$RESULTS"
import json, sys
name, n, before, middle, after, out = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
b, m, a = ([int(x) for x in s.split()] for s in (before, middle, after))
grown = [y - x for x, y in zip(b, a)]
second = [y - x for x, y in zip(m, a)]
rate = json.loads(out)["publish_rate"]
per = ", ".join(f"{g // 1024} MiB" for g in grown)
print(f"{name} backlog: {2 * n} x 1 KiB queued (the second {n} published at {rate:,.0f} msg/s), "
      f"RSS growth per node {per}: {max(grown) * 1024 / (2 * n):.1f} B per queued message "
      f"(largest node), {max(second) * 1024 / n:.1f} B per message of the second {n}")
EOF
}

rabbit_setup
for run in $(seq 1 "$RUNS"); do
    start_pier 1 "$run"
    bench pier-1 "$run" --uri amqp://guest:guest@127.0.0.1:5672/%2F
    stop_pier
    start_pier 3 "$run" --quorum-replication
    bench pier-3 "$run" --uri amqp://guest:guest@127.0.0.1:5672/%2F \
        --uris amqp://guest:guest@127.0.0.2:5672/%2F
    if [ "$run" = "$RUNS" ]; then
        idle_cost pier-3 amqp://guest:guest@127.0.0.1:5672/%2F "${PIER_PIDS[@]}"
        backlog_cost pier-3 amqp://guest:guest@127.0.0.1:5672/%2F "${PIER_PIDS[@]}"
    fi
    stop_pier
done
start_rabbit 1
for run in $(seq 1 "$RUNS"); do
    bench rabbit-1 "$run" --uri amqp://guest:guest@127.0.0.1:5781/%2F
done
for i in 2 3; do join_rabbit "$i"; done
for run in $(seq 1 "$RUNS"); do
    bench rabbit-3 "$run" --uri amqp://guest:guest@127.0.0.1:5781/%2F \
        --uris amqp://guest:guest@127.0.0.1:5782/%2F
done
# shellcheck disable=SC2046
idle_cost rabbit-3 amqp://guest:guest@127.0.0.1:5781/%2F $(rabbit_pids 1 2 3)
# shellcheck disable=SC2046
backlog_cost rabbit-3 amqp://guest:guest@127.0.0.1:5781/%2F $(rabbit_pids 1 2 3)
echo
echo "== summary (consumer msg/s; median of $RUNS runs) =="
python3 - "$RESULTS" <<'EOF'
import re, statistics, sys
rates = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) run \d+: (\d+) msg/s", line)
    if m:
        rates.setdefault(m[1], []).append(int(m[2]))
med = {k: statistics.median(v) for k, v in rates.items()}
for k, v in med.items():
    print(f"{k:10} {v:>10,.0f}  (runs: {rates[k]})")
for n in ("1", "3"):
    p, r = med.get(f"pier-{n}"), med.get(f"rabbit-{n}")
    if p and r:
        print(f"{n} node(s): Pier / RabbitMQ = {p / r:.2f}x")
for line in open(sys.argv[1]):
    if "idle" in line or "backlog" in line:
        print(line.rstrip())
EOF
