#!/usr/bin/env bash
# Crash stress: runs the SIGKILL durability tests many times (default 50 rounds). Each round
# publishes persistent messages with confirms, kills Pier with SIGKILL at a random moment,
# restarts it on the same data directory and checks that every confirmed message comes back
# (duplicates are counted and printed; loss fails the round): once to one queue, once to four
# queues on four store shards plus a fanout exchange to all of them.
#
# Usage: scripts/crash-stress.sh [ROUNDS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROUNDS="${1:-50}"
cargo build -p pier
if [ ! -x .venv/bin/python ]; then
    echo "crash-stress: run ./scripts/test.sh once first (it creates .venv)" >&2
    exit 1
fi
failed=0
for _ in $(seq 1 "$ROUNDS"); do
    if out=$(PIER_BIN="$ROOT/target/debug/pier" .venv/bin/python -m pytest -q -s -p no:cacheprovider \
        "tests/python/test_durability.py::test_sigkill_never_loses_a_confirmed_message[0]" \
        "tests/python/test_durability.py::test_sigkill_never_loses_a_confirmed_message_across_shards" \
        2>&1); then
        grep -E "confirmed [0-9]+" <<<"$out" || true
    else
        failed=$((failed + 1))
        printf '%s\n' "$out" | tail -30
    fi
done
echo "$ROUNDS rounds, $failed failed"
[ "$failed" -eq 0 ]
