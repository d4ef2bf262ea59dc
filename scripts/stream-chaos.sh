#!/usr/bin/env bash
# Long replicated stream chaos run with the history checker (tests/cluster/stream_chaos.py):
# ROUNDS faults (SIGKILL of the leader, of a replica, of every node, SIGSTOP of the leader and
# of a replica, a partition isolating the leader, a minority split, restarts; 5 s each by
# default, so a stopped or cut-off leader is replaced: failover) against a 3-node cluster,
# producers publishing with confirms through every node throughout; then every member's copy
# is read and checked (lost, phantom, duplicates, diverged must all be 0), printed as JSON.
# Needs root, ip and nft.
#
#   scripts/stream-chaos.sh [ROUNDS] [-- extra stream_chaos.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-32}"
shift || true
[ "${1:-}" = "--" ] && shift
cargo build --release -p pier
VENV="${VENV:-.venv}"
export PIER_BIN="${PIER_BIN:-$PWD/target/release/pier}"
cd tests/cluster
exec "../../$VENV/bin/python" stream_chaos.py --rounds "$ROUNDS" "$@"
