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
# the nodes before and after (per queue); and the memory of a backlog: BACKLOG persistent
# 1 KiB messages published (confirms) to a quorum queue without a consumer, each node's RSS
# growth per queued message once the allocators settled (30 s).
#
# Usage: ./scripts/bench-quorum.sh [--runs N] [--time SECS] [--idle-queues N]
#                                  [--backlog N (0: skip)] [--bin PATH]
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
command -v rabbitmq-server >/dev/null || { echo "rabbitmq-server is not installed" >&2; exit 1; }

WORK="$(mktemp -d)"
chmod 755 "$WORK"
PIDS=()
RABBITS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in "${RABBITS[@]}"; do rq "$n" stop >/dev/null 2>&1 || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

C_ARGS=(-x 1 -y 1 -s 1024 -f -c 1000 -A 100 -q 1000 --quorum-queue --quiet --json)

# ---- Pier ----
api() { curl -fsS -u guest:guest -X "$2" -H 'content-type: application/json' \
    ${4:+--data "$4"} "http://$1:15672/api$3"; }
wait_http() {
    for _ in $(seq 1 300); do api "$1" GET /overview >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "node on $1 did not come up" >&2; exit 1
}
PIER_PIDS=()
start_pier() { # start_pier NODES RUN
    local peers=127.0.0.1:26672,127.0.0.2:26672,127.0.0.3:26672 i
    PIER_PIDS=()
    if [ "$1" = 1 ]; then
        "$BIN" server --bind 127.0.0.1 --data-dir "$WORK/p1-$2" >"$WORK/p1-$2.log" 2>&1 &
        PIER_PIDS+=($!); PIDS+=($!)
        wait_http 127.0.0.1
        return
    fi
    for i in 1 2 3; do
        "$BIN" server --bind "127.0.0.$i" --data-dir "$WORK/p3-$2-n$i" --node-name "pier@n$i" \
            --cluster-port 26672 --peers "$peers" --quorum-replication \
            >"$WORK/p3-$2-n$i.log" 2>&1 &
        PIER_PIDS+=($!); PIDS+=($!)
    done
    for i in 1 2 3; do wait_http "127.0.0.$i"; done
    for _ in $(seq 1 300); do
        if api 127.0.0.1 GET /pier/cluster 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if len(s.get("running_nodes", [])) == 3 and s.get("leader") else 1)'; then
            return 0
        fi
        sleep 0.2
    done
    echo "the Pier cluster did not form" >&2; exit 1
}
stop_pier() {
    for p in "${PIER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

# ---- RabbitMQ ----
RQ_HOME=/var/lib/rabbitmq
rq_env() { # rq_env NODE-INDEX
    local i="$1" d="$WORK/rq$1"
    echo "HOME=$RQ_HOME RABBITMQ_NODENAME=rq$i@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
RABBITMQ_NODE_PORT=$((5780 + i)) RABBITMQ_DIST_PORT=$((25780 + i)) \
RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log RABBITMQ_PID_FILE=$d/pid \
RABBITMQ_CONFIG_FILE=$WORK/rq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$WORK/rq.plugins \
RABBITMQ_USE_LONGNAME=false"
}
# From the rabbitmq user's home: the Erlang VM must be able to read its working directory.
as_rabbit() { (cd "$RQ_HOME" && setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@"); }
rq() { # rq NODE-INDEX ctl-args...
    local i="$1"; shift
    as_rabbit env HOME=$RQ_HOME rabbitmqctl -n "rq$i@localhost" "$@"
}
start_rabbit() { # start_rabbit NODE-INDEX
    local i="$1"
    mkdir -p "$WORK/rq$i"
    chown -R rabbitmq:rabbitmq "$WORK/rq$i"
    # shellcheck disable=SC2046
    as_rabbit env $(rq_env "$i") rabbitmq-server -detached
    RABBITS+=("$i")
    # await_startup needs the node registered first.
    for _ in $(seq 1 120); do rq "$i" status >/dev/null 2>&1 && break; sleep 0.5; done
    rq "$i" await_startup --timeout 120 >/dev/null
}
rabbit_setup() {
    printf 'loopback_users = none\nlog.console = false\n' >"$WORK/rq.conf"
    echo '[].' >"$WORK/rq.plugins"
    chown rabbitmq:rabbitmq "$WORK/rq.conf" "$WORK/rq.plugins"
}

rss_kb() { # total RSS of the given pids
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
    echo "$t"
}
cpu_ticks() { # total utime+stime of the given pids
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    echo "$t"
}
rabbit_pids() { local i; for i in "$@"; do echo "$(cat "$WORK/rq$i/pid")"; done; }

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
    local before after out p
    before=$(for p in "$@"; do rss_kb "$p"; done | tr '\n' ' ')
    out=$("$BIN" bench --uri "$uri" -x 1 -y 0 -s 1024 -f -c 1000 --pmessages "$BACKLOG" \
        --quorum-queue --queue-prefix backlog- --quiet --json 2>"$WORK/bench.err") \
        || { cat "$WORK/bench.err" >&2; exit 1; }
    sleep 30
    after=$(for p in "$@"; do rss_kb "$p"; done | tr '\n' ' ')
    python3 - "$name" "$BACKLOG" "$before" "$after" "$out" <<'EOF' | tee -a "$RESULTS"
import json, sys
name, n, before, after, out = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
grown = [int(a) - int(b) for a, b in zip(after.split(), before.split())]
rate = json.loads(out)["publish_rate"]
per = ", ".join(f"{g // 1024} MiB" for g in grown)
print(f"{name} backlog: {n} x 1 KiB queued (published at {rate:,.0f} msg/s), RSS growth per "
      f"node {per}: {max(grown) * 1024 / n:.1f} B per queued message (largest node)")
EOF
}

rabbit_setup
for run in $(seq 1 "$RUNS"); do
    start_pier 1 "$run"
    bench pier-1 "$run" --uri amqp://guest:guest@127.0.0.1:5672/%2F
    stop_pier
    start_pier 3 "$run"
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
for i in 2 3; do
    start_rabbit "$i"
    rq "$i" stop_app >/dev/null
    rq "$i" join_cluster rq1@localhost >/dev/null
    rq "$i" start_app >/dev/null
done
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
