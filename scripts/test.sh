#!/usr/bin/env bash
# Pier's test command: lint, build, Rust tests, then the Python black-box
# suite (tests/python) against the freshly built broker, then client libraries'
# own test suites (amqplib's, and a fast subset of aio-pika's and aiormq's:
# scripts/client-suites.sh --quick).
#
# Usage: ./scripts/test.sh [--quick] [--no-python] [--python-only]
#                          [--no-client-suites] [--no-cluster] [-- PYTEST_ARGS...]
#
#   --quick             skip `cargo fmt --check` and `cargo clippy`
#   --no-python         stop after `cargo test`
#   --python-only       skip every cargo stage (uses the existing binary at $PIER_BIN)
#   --no-client-suites  skip the client libraries' suites
#   --no-cluster        skip the Python suite's 3-node run (PIER_TEST_CLUSTER=3: the suite
#                       against a cluster of three Pier processes, connections spread over
#                       the nodes) and the cluster fault tests (tests/cluster: real nodes in
#                       a network namespace, killed, paused and partitioned; they need root,
#                       `ip` and `nft`, and are skipped with the reason where those are missing)
#   -- ARGS             extra arguments for pytest (e.g. -- -k queue -x); they also
#                       skip the client libraries' suites
#
# Environment:
#   PIER_BIN             broker binary for the Python suite (default: <target>/debug/pier)
#   PIER_TEST_AMQP_URL   run the Python suite against this external broker instead
#                        (e.g. a RabbitMQ: amqp://guest:guest@127.0.0.1:5673/%2F)
#   PYTHON               interpreter used to create .venv (default: python3)
#   CLIENT_SUITES_TIMEOUT  time bound per client suite, seconds (default: 300)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK=0
RUN_CARGO=1
RUN_PYTHON=1
RUN_CLIENT_SUITES=1
RUN_CLUSTER=1
PYTEST_ARGS=()

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-python) RUN_PYTHON=0 ;;
        --python-only) RUN_CARGO=0 ;;
        --no-client-suites) RUN_CLIENT_SUITES=0 ;;
        --no-cluster) RUN_CLUSTER=0 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; PYTEST_ARGS+=("$@"); RUN_CLIENT_SUITES=0; break ;;
        *) echo "test.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

BOLD=""
RESET=""
if [ -t 1 ]; then
    BOLD="$(printf '\033[1m')"
    RESET="$(printf '\033[0m')"
fi
STAGE_START=$SECONDS
stage() {
    printf '\n%s==> [%s] %s%s\n' "$BOLD" "$(date +%H:%M:%S)" "$*" "$RESET"
    STAGE_START=$SECONDS
}
stage_done() {
    printf '    (%ss)\n' "$((SECONDS - STAGE_START))"
}

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export PIER_BIN="${PIER_BIN:-$TARGET_DIR/debug/pier}"

if [ "$RUN_CARGO" -eq 1 ]; then
    if [ "$QUICK" -eq 0 ]; then
        stage "cargo fmt --all -- --check"
        cargo fmt --all -- --check
        stage_done

        stage "cargo clippy --workspace --all-targets -- -D warnings"
        cargo clippy --workspace --all-targets -- -D warnings
        stage_done
    fi

    stage "cargo build --workspace --all-targets"
    cargo build --workspace --all-targets
    stage_done

    stage "cargo test --workspace"
    cargo test --workspace
    stage_done
fi

if [ "$RUN_PYTHON" -eq 0 ]; then
    printf '\nAll requested stages passed (Python suite skipped).\n'
    exit 0
fi

# --- Python virtualenv -------------------------------------------------------
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/tests/python/requirements.txt"
PYTHON="${PYTHON:-python3}"

stage "python virtualenv (.venv)"
want_hash="$({ cat "$REQUIREMENTS"; "$PYTHON" --version 2>&1; } | sha256sum | cut -d' ' -f1)"
have_hash="$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)"
if [ "$want_hash" != "$have_hash" ] || ! "$VENV/bin/python" -c 'import pika, pytest' 2>/dev/null; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV"; then
        echo "test.sh: '$PYTHON -m venv' failed; on Debian install python3-venv (.ci/run does)" >&2
        exit 1
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$want_hash" >"$VENV/.requirements.sha256"
    echo "    installed $(wc -l <"$REQUIREMENTS") requirement lines into .venv"
else
    echo "    .venv is up to date"
fi
stage_done

# --- Python black-box suite ----------------------------------------------------
if [ -n "${PIER_TEST_AMQP_URL:-}" ]; then
    stage "pytest tests/python (external broker: $PIER_TEST_AMQP_URL)"
else
    if [ ! -x "$PIER_BIN" ]; then
        echo "test.sh: broker binary not found at $PIER_BIN" >&2
        exit 1
    fi
    stage "pytest tests/python (PIER_BIN=$PIER_BIN)"
fi
"$VENV/bin/python" -m pytest tests/python "${PYTEST_ARGS[@]}"
stage_done

# --- management API answers against the golden corpus --------------------------
if [ -z "${PIER_TEST_AMQP_URL:-}" ]; then
    # Every GET endpoint's JSON shape (volatile values masked) as committed; a change to
    # the API's answers must update crates/pier-mgmt/tests/golden in the same commit.
    stage "management API answers vs crates/pier-mgmt/tests/golden (scripts/mgmt-golden.py)"
    "$VENV/bin/python" scripts/mgmt-golden.py --bin "$PIER_BIN" \
        --check crates/pier-mgmt/tests/golden
    stage_done
fi

# --- Python black-box suite against a 3-node cluster ----------------------------
# Every connection of a test goes to the next node in turn; tests that are single-node by
# nature are skipped with the reason (docs/clustering.md lists them).
if [ "$RUN_CLUSTER" -eq 0 ]; then
    printf '\n(3-node run of the Python suite skipped: --no-cluster)\n'
elif [ -n "${PIER_TEST_AMQP_URL:-}" ]; then
    printf '\n(3-node run of the Python suite skipped: it starts its own Pier nodes)\n'
else
    # Quorum queues are replicated Raft groups there (the default in a cluster), so the
    # whole suite's quorum-queue tests run on three members.
    stage "pytest tests/python on a 3-node cluster (PIER_TEST_CLUSTER=3, quorum queues replicated)"
    PIER_TEST_CLUSTER=3 "$VENV/bin/python" -m pytest tests/python "${PYTEST_ARGS[@]}"
    stage_done
fi

# --- cluster fault tests -------------------------------------------------------
if [ "$RUN_CLUSTER" -eq 0 ]; then
    printf '\n(cluster fault tests skipped: --no-cluster)\n'
elif [ -n "${PIER_TEST_AMQP_URL:-}" ]; then
    printf '\n(cluster fault tests skipped: they start their own Pier nodes)\n'
elif [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1; then
    printf '\n(cluster fault tests skipped: they need root, ip (iproute2) and nft (nftables) to make a network namespace; .ci/run installs them)\n'
else
    stage "pytest tests/cluster (3-node clusters in a network namespace: kill, pause, partition)"
    (cd tests/cluster && "$VENV/bin/python" -m pytest .)
    stage_done
fi

# --- client libraries' own suites ---------------------------------------------
if [ "$RUN_CLIENT_SUITES" -eq 1 ]; then
    stage "client libraries' suites: amqplib, aiormq and aio-pika (--quick)"
    # A hang fails the suite at the time bound instead of holding CI.
    PIER_CLIENT_SUITES_URL="${PIER_TEST_AMQP_URL:-}" PYTHON="$PYTHON" \
        ./scripts/client-suites.sh --quick --timeout "${CLIENT_SUITES_TIMEOUT:-300}"
    stage_done
fi

printf '\nAll stages passed.\n'
