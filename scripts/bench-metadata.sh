#!/usr/bin/env bash
# Metadata throughput of a 3-node Pier cluster and a 3-node RabbitMQ 3.10.8 cluster on this
# machine (issue 13's acceptance item): durable queue declares/s and binds/s with C
# concurrent clients spread over the three nodes, over the management HTTP API and over AMQP
# 0-9-1 (scripts/bench-metadata.py does the work), Pier and RabbitMQ alternating; plus a
# single Pier node as a reference.
#
# Usage: ./scripts/bench-metadata.sh [--runs N] [--count N] [--concurrency "32 64"] [--bin PATH]
# Needs root (RabbitMQ runs as the rabbitmq user), rabbitmq-server and the repository's
# .venv (pika). Ports: see scripts/lib/nodes.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=1
COUNT=3000
CONCURRENCY="32 64"
BIN="${PIER_BIN:-$ROOT/target/release/pier}"
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift ;;
        --count) COUNT="$2"; shift ;;
        --concurrency) CONCURRENCY="$2"; shift ;;
        --bin) BIN="$2"; shift ;;
        *) echo "usage: $0 [--runs N] [--count N] [--concurrency \"32 64\"] [--bin PATH]" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$BIN" ] || { echo "no pier binary at $BIN (cargo build --release -p pier)" >&2; exit 1; }
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "no .venv (run ./scripts/test.sh once, or python3 -m venv .venv && .venv/bin/pip install pika)" >&2; exit 1; }

WORK="$(mktemp -d)"
# shellcheck source=scripts/lib/nodes.sh
. "$ROOT/scripts/lib/nodes.sh"
trap nodes_cleanup EXIT

measure() { # measure LABEL HTTP-URLS AMQP-URLS
    local c
    for c in $CONCURRENCY; do
        "$PY" "$ROOT/scripts/bench-metadata.py" --nodes "$2" --count "$COUNT" \
            --concurrency "$c" --label "$1"
        "$PY" "$ROOT/scripts/bench-metadata.py" --nodes "$2" --amqp "$3" --count "$COUNT" \
            --concurrency "$c" --label "$1"
    done
}

pier_urls() { # pier_urls SCHEME PORT NODES
    local i out=""
    for i in $(seq 1 "$3"); do out+="${out:+,}$1://127.0.0.$i:$2"; done
    echo "$out"
}
rabbit_urls() { # rabbit_urls SCHEME PORT-BASE NODES
    local i out=""
    for i in $(seq 1 "$3"); do out+="${out:+,}$1://127.0.0.1:$(($2 + i))"; done
    echo "$out"
}

rabbit_setup rabbitmq_management
start_rabbit 1
for i in 2 3; do join_rabbit "$i"; done
for run in $(seq 1 "$RUNS"); do
    start_pier 3 "$run"
    measure "pier-3" "$(pier_urls http 15672 3)" "$(pier_urls amqp 5672 3)"
    stop_pier
    measure "rabbit-3" "$(rabbit_urls http 15780 3)" "$(rabbit_urls amqp 5780 3)"
done
start_pier 1 ref
measure "pier-1" "$(pier_urls http 15672 1)" "$(pier_urls amqp 5672 1)"
stop_pier
