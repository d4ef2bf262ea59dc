#!/usr/bin/env bash
# Pier against RabbitMQ, side by side, on this machine: issue 5's scenarios with
# `pier bench` as the load generator for both brokers, in alternation (Pier, RabbitMQ,
# Pier, RabbitMQ, ...), medians of --runs runs, written to docs/benchmarks.md.
#
# Usage: ./scripts/bench-compare.sh [--runs N] [--time SECS] [--scenarios A,B,...]
#                                   [--quick] [--out FILE] [--no-build]
#
#   --runs N         runs per scenario and broker (default 3; 1 with --quick)
#   --time SECS      length of each timed run (default 10; 2 with --quick)
#   --scenarios LIST comma-separated: A B C D E F (issue 5), C4 (issue 12), growth: Q1 Q100
#                    Q1000 N10 N1000,
#                    or "all" (default: all)
#   --quick          short smoke run (also F with 50,000 instead of 1,000,000 messages);
#                    writes target/bench-compare/benchmarks-quick.md unless --out is given
#   --out FILE       where the report goes (default docs/benchmarks.md)
#   --no-build       use the existing target/release/pier
#   --f-messages N   messages in scenario F (default 1,000,000)
#
# What it does: installs RabbitMQ from Debian if it is missing (apt-get install -y
# rabbitmq-server), starts it on port 5673 if it is not running (writing
# /etc/rabbitmq/rabbitmq.conf with `listeners.tcp.default = 5673` if there is no config;
# port 5672 is never used), builds Pier in release, starts it on 127.0.0.1:5700 (HTTP
# 15700) with a fresh temporary --data-dir, runs the scenarios, and stops the Pier it
# started. RabbitMQ is left running. Raw results: target/bench-compare/*.json.
#
# Environment: RABBIT_PORT (5673), PIER_PORT (5700), PIER_HTTP_PORT (15700), PYTHON (python3).
# Needs: Debian packages, cargo, python3 (stdlib only), ss (iproute2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RABBIT_PORT="${RABBIT_PORT:-5673}"
PIER_PORT="${PIER_PORT:-5700}"
PIER_HTTP_PORT="${PIER_HTTP_PORT:-15700}"
PYTHON="${PYTHON:-python3}"
RABBIT_CONF=/etc/rabbitmq/rabbitmq.conf
BUILD=1

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

ARGS=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        --no-build) BUILD=0 ;;
        *) ARGS+=("$arg") ;;
    esac
done

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'bench-compare: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
# 1,000 connections need more than the usual 1,024 open files (the bench and Pier inherit
# this; RabbitMQ gets 65536 when started here, as its systemd unit does).
NOFILE=65536
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$RABBIT_PORT" != 5672 ] || die "RABBIT_PORT must not be 5672 (that port is left alone)"
[ "$PIER_PORT" != 5672 ] || die "PIER_PORT must not be 5672 (that port is left alone)"
command -v ss >/dev/null || die "ss (iproute2) is needed to find the brokers' processes"
command -v "$PYTHON" >/dev/null || die "$PYTHON is needed"

# The pid of the process listening on TCP port $1 (empty if none).
listener_pid() {
    "${SUDO[@]}" ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2
}
listening() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }

wait_for_port() { # port seconds what
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        listening "$1" && return 0
        sleep 0.2
    done
    die "$3 is not listening on port $1 after $2 s"
}

write_rabbit_conf_if_missing() {
    if [ ! -e "$RABBIT_CONF" ]; then
        log "writing $RABBIT_CONF (listeners.tcp.default = $RABBIT_PORT)"
        "${SUDO[@]}" mkdir -p "$(dirname "$RABBIT_CONF")"
        echo "listeners.tcp.default = $RABBIT_PORT" | "${SUDO[@]}" tee "$RABBIT_CONF" >/dev/null
    fi
}

# --- RabbitMQ: install, configure, start --------------------------------------------------
if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
    # The config first, so that a service started by the package listens on our port.
    write_rabbit_conf_if_missing
    log "installing RabbitMQ from Debian (apt-get install -y rabbitmq-server)"
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server; then
        "${SUDO[@]}" apt-get update
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
    fi
fi
PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"

if ! listening "$RABBIT_PORT"; then
    write_rabbit_conf_if_missing
    grep -Eq "^[[:space:]]*listeners\.tcp\.[^=]*=[[:space:]]*([0-9.:]*:)?${RABBIT_PORT}[[:space:]]*$" "$RABBIT_CONF" ||
        die "$RABBIT_CONF does not set listeners.tcp.default = $RABBIT_PORT; add that line (this script never uses port 5672)"
    if pgrep -u rabbitmq beam.smp >/dev/null 2>&1; then
        die "a RabbitMQ is running but not on port $RABBIT_PORT: stop it or set its listener to $RABBIT_PORT"
    fi
    log "starting RabbitMQ (rabbitmq-server -detached, ulimit -n $NOFILE like its systemd unit)"
    # /usr/sbin/rabbitmq-server switches user with `su`, whose PAM session puts the open-files
    # limit back to 1,024; start the real script as the rabbitmq user with setpriv instead,
    # which keeps the limit raised here.
    if command -v setpriv >/dev/null && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
        "${SUDO[@]}" sh -c "cd /var/lib/rabbitmq && { ulimit -n $NOFILE 2>/dev/null || ulimit -n \$(ulimit -Hn); } &&
            exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq \
            /usr/lib/rabbitmq/bin/rabbitmq-server -detached"
    else
        "${SUDO[@]}" sh -c "ulimit -n $NOFILE 2>/dev/null || ulimit -n \$(ulimit -Hn); exec rabbitmq-server -detached"
    fi
    wait_for_port "$RABBIT_PORT" 120 "RabbitMQ"
    "${SUDO[@]}" rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
RABBIT_PID="$(listener_pid "$RABBIT_PORT")"
[ -n "$RABBIT_PID" ] || die "cannot find the pid listening on port $RABBIT_PORT"
grep -q beam "/proc/$RABBIT_PID/comm" 2>/dev/null ||
    die "port $RABBIT_PORT is served by $(cat "/proc/$RABBIT_PID/comm" 2>/dev/null), not RabbitMQ's beam.smp"
RABBIT_VERSION="$("${SUDO[@]}" rabbitmqctl version 2>/dev/null | tail -n1 || true)"
if [ -z "$RABBIT_VERSION" ]; then
    RABBIT_VERSION="$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown) (dpkg)"
fi
ERLANG_VERSION="$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo unknown)"
log "RabbitMQ $RABBIT_VERSION: beam.smp pid $RABBIT_PID on port $RABBIT_PORT"

# --- Pier: build, start on its own ports with a fresh data dir ---------------------------
if [ "$BUILD" -eq 1 ]; then
    log "cargo build --release -p pier"
    cargo build --release -p pier
fi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
    echo "$ROOT/target")"
PIER_BIN="$TARGET_DIR/release/pier"
[ -x "$PIER_BIN" ] || die "$PIER_BIN is missing (run without --no-build)"
listening "$PIER_PORT" && die "port $PIER_PORT is taken: set PIER_PORT"
listening "$PIER_HTTP_PORT" && die "port $PIER_HTTP_PORT is taken: set PIER_HTTP_PORT"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pier-bench-compare.XXXXXX")"
PIER_PID=""
cleanup() {
    if [ -n "$PIER_PID" ] && kill -0 "$PIER_PID" 2>/dev/null; then
        kill "$PIER_PID" 2>/dev/null || true
        wait "$PIER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy, so that a rebuild of target/ during the run changes neither the broker
# nor the load generator.
cp "$PIER_BIN" "$WORK/pier"
PIER_BIN="$WORK/pier"
log "starting Pier on 127.0.0.1:$PIER_PORT (data dir $WORK/data)"
"$PIER_BIN" server --amqp-port "$PIER_PORT" --http-port "$PIER_HTTP_PORT" --bind 127.0.0.1 \
    --data-dir "$WORK/data" >"$WORK/pier.log" 2>&1 &
PIER_PID=$!
wait_for_port "$PIER_PORT" 30 "Pier"
kill -0 "$PIER_PID" 2>/dev/null || die "Pier exited: $(tail -n 20 "$WORK/pier.log")"

COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    COMMIT="$COMMIT + uncommitted changes"
fi

"$PYTHON" "$ROOT/scripts/bench_compare.py" \
    --pier-bin "$PIER_BIN" \
    --pier "amqp://guest:guest@127.0.0.1:$PIER_PORT/%2F" --pier-pid "$PIER_PID" \
    --pier-version "$("$PIER_BIN" --version 2>/dev/null || echo pier), git $COMMIT" \
    --rabbit "amqp://guest:guest@127.0.0.1:$RABBIT_PORT/%2F" --rabbit-pid "$RABBIT_PID" \
    --rabbit-version "RabbitMQ $RABBIT_VERSION, Erlang/OTP package $ERLANG_VERSION" \
    --raw-dir "$TARGET_DIR/bench-compare" \
    --command "./scripts/bench-compare.sh${*:+ $*}" \
    "${ARGS[@]}"
