#!/usr/bin/env bash
# Scenario E (4 producers, 4 consumers, 4 queues, 256 B, autoack) through a 3-node Pier
# cluster with the clients on other nodes than the queues (issue 13's acceptance item), beside
# the same load on a single node, with the same binary, in alternating runs.
#
# Usage: ./scripts/bench-cluster-e.sh [--runs N] [--time SECS] [--bin PATH]
#
#   cluster  the queues are declared (durable, over the management API) on node 3, so node 3
#            is their home; 4 producers publish through node 1 and 4 consumers consume
#            through node 2, in two `pier bench` processes started together: every message
#            crosses node 1 -> node 3 -> node 2 on the cluster's message lanes
#   single   one node, the same durable queues declared first, producers and consumers on it
#   single-t one node, scenario E exactly as bench-compare.sh runs it (transient queues)
#
# Messages are transient (delivery_mode 1) everywhere, as in E; in the cluster the queues must
# be durable (transient queues stay on the node that declared them). Throughput is what the
# consumers received per second. Nodes listen on 127.0.0.1-3 with their own data directories
# under a temporary directory; nothing else may use ports 5672, 15672 and 26672 there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=3
TIME=10
BIN="${PIER_BIN:-$ROOT/target/release/pier}"
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift ;;
        --time) TIME="$2"; shift ;;
        --bin) BIN="$2"; shift ;;
        *) echo "usage: $0 [--runs N] [--time SECS] [--bin PATH]" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$BIN" ] || { echo "no pier binary at $BIN (cargo build --release -p pier)" >&2; exit 1; }

WORK="$(mktemp -d)"
# shellcheck source=scripts/lib/nodes.sh
. "$ROOT/scripts/lib/nodes.sh"
trap nodes_cleanup EXIT

declare_queues() { # declare_queues HOST PREFIX
    local i
    for i in 1 2 3 4; do api "$1" PUT "/queues/%2F/$2$i" '{"durable": true}' >/dev/null; done
}

consumed_rate() { # messages/s the consumers received (this run's and, in the cluster, the
    # other bench process's: "stale" to the consumer), from a bench JSON summary
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["receive_rate"]))' <"$1"
}

uri() { echo "amqp://guest:guest@$1:5672/%2F"; }

declare -A RESULTS
for run in $(seq 1 "$RUNS"); do
    # Cluster: queues on node 3, producers on node 1, consumers on node 2.
    start_pier 3 "c$run"
    declare_queues 127.0.0.3 "e$run-"
    "$BIN" bench --uri "$(uri 127.0.0.2)" -x 0 -y 4 --queues 4 --queue-prefix "e$run-" \
        --autoack --time "$TIME" --no-declare --json --quiet >"$WORK/cons.json" 2>/dev/null &
    cons=$!
    "$BIN" bench --uri "$(uri 127.0.0.1)" -x 4 -y 0 --queues 4 --queue-prefix "e$run-" \
        --size 256 --time "$TIME" --no-declare --json --quiet >"$WORK/prod.json" 2>/dev/null
    wait "$cons"
    RESULTS[cluster]+="$(consumed_rate "$WORK/cons.json") "
    RESULTS[cluster-published]+="$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["publish_rate"]))' <"$WORK/prod.json") "
    stop_pier

    # One node, durable queues declared first, everything on it.
    start_pier 1 "s$run"
    declare_queues 127.0.0.1 "e$run-"
    "$BIN" bench --uri "$(uri 127.0.0.1)" -x 4 -y 4 --queues 4 --queue-prefix "e$run-" \
        --size 256 --autoack --time "$TIME" --no-declare --json --quiet \
        >"$WORK/single.json" 2>/dev/null
    RESULTS[single]+="$(consumed_rate "$WORK/single.json") "
    stop_pier

    # One node, scenario E as bench-compare.sh runs it.
    start_pier 1 "t$run"
    "$BIN" bench --uri "$(uri 127.0.0.1)" -x 4 -y 4 --queues 4 --queue-prefix "t$run-" \
        --size 256 --autoack --time "$TIME" --delete-queues --json --quiet \
        >"$WORK/single-t.json" 2>/dev/null
    RESULTS[single-t]+="$(consumed_rate "$WORK/single-t.json") "
    stop_pier
    echo "run $run: cluster ${RESULTS[cluster]}| single ${RESULTS[single]}| single-t ${RESULTS[single-t]}" >&2
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '| setup | msg/s received by the consumers (runs) | median |\n|---|---|--:|\n'
for k in cluster cluster-published single single-t; do
    printf '| %s | %s | %s |\n' "$k" "${RESULTS[$k]}" "$(echo "${RESULTS[$k]}" | median)"
done
