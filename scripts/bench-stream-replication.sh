#!/usr/bin/env bash
# Streams on one node and replicated on three (stream protocol, `pier bench --stream`): 1
# publisher and 1 consumer, confirms, 16 B and 1 KiB messages — against Pier and RabbitMQ
# 3.10.8, each on one node and as a 3-node cluster on this machine, in alternating runs.
# (The confirm window is the generator's default, 10,000 messages, as in bench-streams.sh.)
#
#   pier-1     one Pier node (fsync before confirm)
#   pier-3     three Pier nodes: the stream led by node 1 and replicated on 2 and 3 (confirm
#              once a majority has fsync'd); the publisher on node 1, the consumer on node 2
#              (a replica, as RabbitMQ's clients pick one)
#   rabbit-1   one RabbitMQ node with rabbitmq_stream (osiris; no fsync)
#   rabbit-3   three RabbitMQ nodes joined with join_cluster; clients as pier-3
#
# Usage: ./scripts/bench-stream-replication.sh [--runs N] [--time SECS] [--sizes 16,1024]
#                                              [--bin PATH]
# Needs root (RabbitMQ runs as the rabbitmq user) and rabbitmq-server installed. Pier nodes
# listen on 127.0.0.1-3 (stream 5552); RabbitMQ nodes' stream ports are 127.0.0.1:5791-5793.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=3
TIME=10
SIZES=16,1024
BIN="${PIER_BIN:-$ROOT/target/release/pier}"
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift ;;
        --time) TIME="$2"; shift ;;
        --sizes) SIZES="$2"; shift ;;
        --bin) BIN="$2"; shift ;;
        *) echo "usage: $0 [--runs N] [--time SECS] [--sizes 16,1024] [--bin PATH]" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$BIN" ] || { echo "no pier binary at $BIN (cargo build --release -p pier)" >&2; exit 1; }

WORK="$(mktemp -d)"
# shellcheck source=scripts/lib/nodes.sh
. "$ROOT/scripts/lib/nodes.sh"
trap nodes_cleanup EXIT

RESULTS="$WORK/results.txt"
: >"$RESULTS"
IFS=, read -r -a SIZE_LIST <<<"$SIZES"

bench() { # bench NAME RUN URI [URI2]
    local name="$1" run="$2" uri="$3" uri2="${4:-}" size out rate
    for size in "${SIZE_LIST[@]}"; do
        out=$("$BIN" bench --stream --uri "$uri" ${uri2:+--uris "$uri2"} -x 1 -y 1 -s "$size" \
            -z "$TIME" --queue-prefix "rs-$run-$size-" --delete-queues --quiet --json \
            2>"$WORK/bench.err") || { cat "$WORK/bench.err" >&2; exit 1; }
        rate=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["consumed_rate"]))' "$out")
        echo "$name S$size run $run: $rate msg/s" | tee -a "$RESULTS"
    done
}

stream_uri() { echo "rabbitmq-stream://guest:guest@$1/%2F"; }

rabbit_setup rabbitmq_stream
for run in $(seq 1 "$RUNS"); do
    start_pier 1 "$run"
    bench pier-1 "$run" "$(stream_uri 127.0.0.1:5552)"
    stop_pier
    start_pier 3 "$run"
    bench pier-3 "$run" "$(stream_uri 127.0.0.1:5552)" "$(stream_uri 127.0.0.2:5552)"
    stop_pier
done
start_rabbit 1
for run in $(seq 1 "$RUNS"); do
    bench rabbit-1 "$run" "$(stream_uri 127.0.0.1:5791)"
done
for i in 2 3; do join_rabbit "$i"; done
for run in $(seq 1 "$RUNS"); do
    bench rabbit-3 "$run" "$(stream_uri 127.0.0.1:5791)" "$(stream_uri 127.0.0.1:5792)"
done
echo
echo "== summary (consumer msg/s; median of $RUNS runs) =="
python3 - "$RESULTS" <<'PY'
import re, statistics, sys
rates = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (S\d+) run \d+: (\d+) msg/s", line)
    if m:
        rates.setdefault((m[1], m[2]), []).append(int(m[3]))
med = {k: statistics.median(v) for k, v in rates.items()}
for (b, s), v in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"{b:10} {s:6} {v:>12,.0f}  (runs: {rates[(b, s)]})")
for s in sorted({s for _, s in med}):
    for n in ("1", "3"):
        p, r = med.get((f"pier-{n}", s)), med.get((f"rabbit-{n}", s))
        if p and r:
            print(f"{s} on {n} node(s): Pier / RabbitMQ = {p / r:.2f}x")
PY
