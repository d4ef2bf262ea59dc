#!/usr/bin/env bash
# Long quorum queue chaos run with the history checker (tests/cluster/chaos.py): ROUNDS
# faults (SIGKILL of the leader, of a follower, of every node, SIGSTOP of the leader, a
# partition isolating the leader, a minority split, restarts) against a 3-node cluster with
# --quorum-replication, producers with confirms and consumers with acks throughout; prints
# the history check (lost and phantom must be 0) as JSON. Needs root, ip and nft.
#
#   scripts/quorum-chaos.sh [ROUNDS] [-- extra chaos.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-28}"
shift || true
[ "${1:-}" = "--" ] && shift
cargo build --release -p pier
VENV="${VENV:-.venv}"
export PIER_BIN="${PIER_BIN:-$PWD/target/release/pier}"
cd tests/cluster
exec "../../$VENV/bin/python" chaos.py --rounds "$ROUNDS" "$@"
