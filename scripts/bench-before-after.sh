#!/usr/bin/env bash
# Two Pier builds side by side on this machine: the scenarios of bench-compare.sh against a
# baseline binary and the current release build, in alternation (after, before, after, ...),
# with the same load generator (this tree's `pier bench`), medians of --runs runs. For
# "no throughput regression" checks of refactors: quote the ratios, not the absolute figures.
#
# Usage: ./scripts/bench-before-after.sh BASELINE_PIER_BIN [--runs N] [--time SECS]
#                                        [--scenarios A,B,...] [--quick] [--no-build]
#
# Build the baseline from a commit with, e.g.:
#   git worktree add --detach ../pier-base <commit> && (cd ../pier-base && cargo build --release -p pier)
# The report goes to target/bench-compare/before-after.md (raw JSON beside it).
# Environment: AFTER_PORT (5700), BEFORE_PORT (5710), PYTHON (python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ $# -ge 1 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
BASE_BIN="$1"; shift
[ -x "$BASE_BIN" ] || { echo "bench-before-after: $BASE_BIN is not an executable" >&2; exit 2; }
AFTER_PORT="${AFTER_PORT:-5700}"
BEFORE_PORT="${BEFORE_PORT:-5710}"
PYTHON="${PYTHON:-python3}"
BUILD=1
ARGS=()
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        *) ARGS+=("$arg") ;;
    esac
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "$BUILD" -eq 1 ]; then
    cargo build --release -p pier
fi
TARGET_DIR="$ROOT/target"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pier-before-after.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp "$TARGET_DIR/release/pier" "$WORK/after"
cp "$BASE_BIN" "$WORK/before"
start() { # name port
    "$WORK/$1" server --amqp-port "$2" --http-port $(( $2 + 10000 )) --bind 127.0.0.1 \
        --data-dir "$WORK/data-$1" >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench-before-after: $1 did not start: $(tail -n 5 "$WORK/$1.log")" >&2
    exit 1
}
start after "$AFTER_PORT"
AFTER_PID="${PIDS[0]}"
start before "$BEFORE_PORT"
BEFORE_PID="${PIDS[1]}"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

"$PYTHON" "$ROOT/scripts/bench_compare.py" \
    --pier-bin "$WORK/after" \
    --pier "amqp://guest:guest@127.0.0.1:$AFTER_PORT/%2F" --pier-pid "$AFTER_PID" \
    --pier-version "after: git $COMMIT" --pier-name "after" \
    --rabbit "amqp://guest:guest@127.0.0.1:$BEFORE_PORT/%2F" --rabbit-pid "$BEFORE_PID" \
    --rabbit-version "before: $BASE_BIN" --rabbit-name "before" \
    --raw-dir "$TARGET_DIR/bench-compare" \
    --out "$TARGET_DIR/bench-compare/before-after.md" \
    --command "./scripts/bench-before-after.sh $BASE_BIN${*:+ $*}" \
    "${ARGS[@]}"
