#!/usr/bin/env bash
# Runs client libraries' own integration test suites, unchanged, against a broker: a Pier
# started from this tree (default) or any running broker (PIER_CLIENT_SUITES_URL), e.g. the
# reference RabbitMQ, and prints one line per suite:
#
#     NAME: N passed, M failed, K skipped (E excluded)
#
# (E: tests left out by scripts/client-suites/excluded.tsv; "quick subset" with --quick.)
#
# Usage: scripts/client-suites.sh [--quick] [--timeout SECS] [NAME...]
#
#   NAME            aio-pika, aiormq, amqplib (default: all three)
#   --quick         a fast subset of the Python suites (what CI runs; amqplib is always whole)
#   --timeout SECS  time bound per suite (default: 1800, with --quick 600); a suite that runs
#                   over it is killed and counts as failed
#
# Each pinned release is fetched from its registry (PyPI sdist, `npm pack`) and checked
# against its sha256 below; the Python suites get a virtualenv with what their tests import
# (scripts/client-suites/requirements.txt). Downloads and the venv are cached outside the
# source tree; each run extracts a fresh copy of the suites into a temporary directory.
# Shims (scripts/client-suites/): conftest_shim.py, appended to each Python suite's
# conftest.py, points its Docker-broker fixtures at the broker under test; amqplib_shim.js
# sends connections to amqplib's default address to it. Tests left out, with why:
# scripts/client-suites/excluded.tsv. Apart from the fixtures that provide the broker, no
# test, fixture or assertion is changed.
#
# Exit status: 0 when every suite ran to the end without a failure.
#
# Environment:
#   PIER_CLIENT_SUITES_URL    broker to test (amqp://user:pass@host:port/vhost, e.g.
#                             amqp://guest:guest@127.0.0.1:5673/%2F); unset: start Pier
#   PIER_BIN                  Pier binary to start (default: <target>/debug/pier)
#   PIER_CLIENT_SUITES_CACHE  cache (default: ${XDG_CACHE_HOME:-$HOME/.cache}/pier-client-suites)
#   PIER_CLIENT_SUITES_LOGS   where each suite's full output goes (default: <target>/client-suites)
#   PYTHON                    interpreter for the suites' venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/scripts/client-suites"

# --- the pinned releases --------------------------------------------------------------------
AIO_PIKA_VERSION=10.2.1
AIO_PIKA_SDIST=aio_pika-10.2.1.tar.gz
AIO_PIKA_SHA256=e4f77afd9179a3cca5a904c3b0a1190256a36d9f90650db908b1b2245eb27487
AIORMQ_VERSION=7.2.4
AIORMQ_SDIST=aiormq-7.2.4.tar.gz
AIORMQ_SHA256=5fd20bb9583d73de85572198496b65cf028f27527c1733c9840d458e0b40e8fa
AMQPLIB_VERSION=2.2.0
AMQPLIB_TGZ=amqplib-2.2.0.tgz
AMQPLIB_SHA256=2526aa08f2521ceb516cb5fe8f64775c0fb4bc32c75872c74a10e5c1a6cee440
# amqplib's tests that talk to a broker (the others use an in-process fake).
AMQPLIB_TESTS=(test/callback_api.test.js test/channel_api.test.js test/connect.test.js)

# --quick (CI): about two minutes each on 2 cores. aio-pika without its three slowest files
# (robust connections through a TCP proxy that cuts them, the robust re-run of test_amqp.py,
# pools: 300 of its 410 test-seconds); aiormq without the `amqp-named` parametrisation (every
# test again with a connection name).
AIO_PIKA_QUICK=(tests --ignore tests/test_amqp_robust_proxy.py --ignore tests/test_amqp_robust.py
                --ignore tests/test_pool.py)
AIORMQ_QUICK=(tests -k "not amqp-named")

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

QUICK=0
TIMEOUT=""
SUITES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift ;;
        -h | --help) usage; exit 0 ;;
        aio-pika | aiormq | amqplib) SUITES+=("$1") ;;
        *) echo "client-suites.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ ${#SUITES[@]} -gt 0 ] || SUITES=(aio-pika aiormq amqplib)
if [ -z "$TIMEOUT" ]; then
    if [ "$QUICK" -eq 1 ]; then TIMEOUT=600; else TIMEOUT=1800; fi
fi

PYTHON="${PYTHON:-python3}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
CACHE="${PIER_CLIENT_SUITES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pier-client-suites}"
LOGS="${PIER_CLIENT_SUITES_LOGS:-$TARGET_DIR/client-suites}"
mkdir -p "$CACHE/downloads" "$LOGS"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pier-client-suites.XXXXXX")"
PIER_PID=""

cleanup() {
    if [ -n "$PIER_PID" ] && kill -0 "$PIER_PID" 2>/dev/null; then
        kill -TERM "$PIER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$PIER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$PIER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '    %s\n' "$*" >&2; }

# One setup at a time per cache (CI jobs or engineers sharing a machine).
exec 9>"$CACHE/.lock"
flock 9

check_sha256() {  # FILE SHA256
    [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# An sdist from PyPI through its simple API (what pip uses); `pip download` cannot fetch an
# sdist without building it.
fetch_pypi_sdist() {  # PROJECT FILENAME SHA256
    local dest="$CACHE/downloads/$2"
    if [ -f "$dest" ] && check_sha256 "$dest" "$3"; then return; fi
    log "fetching $2 from PyPI"
    "$PYTHON" - "$1" "$2" "$dest.part" <<'PY'
import json, sys, urllib.request
project, filename, dest = sys.argv[1:]
req = urllib.request.Request(f"https://pypi.org/simple/{project}/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(req, timeout=60) as resp:
    files = json.load(resp)["files"]
url = next(f["url"] for f in files if f["filename"] == filename)
with urllib.request.urlopen(url, timeout=120) as resp, open(dest, "wb") as out:
    out.write(resp.read())
PY
    check_sha256 "$dest.part" "$3" || { echo "client-suites.sh: $2: sha256 mismatch" >&2; exit 1; }
    mv "$dest.part" "$dest"
}

fetch_npm_tarball() {  # SPEC FILENAME SHA256
    local dest="$CACHE/downloads/$2"
    if [ -f "$dest" ] && check_sha256 "$dest" "$3"; then return; fi
    log "fetching $1 from npm"
    (cd "$CACHE/downloads" && npm pack --silent "$1" >/dev/null)
    check_sha256 "$dest" "$3" || { echo "client-suites.sh: $2: sha256 mismatch" >&2; exit 1; }
}

python_venv() {
    fetch_pypi_sdist aiormq "$AIORMQ_SDIST" "$AIORMQ_SHA256"
    fetch_pypi_sdist aio-pika "$AIO_PIKA_SDIST" "$AIO_PIKA_SHA256"
    VENV="$CACHE/venv"
    local want have
    want="$({ cat "$HERE/requirements.txt"; echo "$AIORMQ_SHA256 $AIO_PIKA_SHA256";
              "$PYTHON" --version 2>&1; } | sha256sum | cut -d' ' -f1)"
    have="$(cat "$VENV/.pier-hash" 2>/dev/null || true)"
    if [ "$want" != "$have" ]; then
        log "creating the suites' virtualenv in $VENV"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
            -r "$HERE/requirements.txt"
        # The releases under test, built from the very sdists whose tests run.
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
            "$CACHE/downloads/$AIORMQ_SDIST" "$CACHE/downloads/$AIO_PIKA_SDIST"
        echo "$want" >"$VENV/.pier-hash"
    fi
}

# --- the broker -------------------------------------------------------------------------------
start_pier() {
    local bin="${PIER_BIN:-$TARGET_DIR/debug/pier}"
    if [ ! -x "$bin" ]; then
        echo "client-suites.sh: no Pier binary at $bin (cargo build -p pier, or set PIER_BIN)" >&2
        exit 1
    fi
    local ports amqp http
    ports="$("$PYTHON" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')"
    read -r amqp http <<<"$ports"
    mkdir -p "$WORK/pier"
    # No --bind: Pier's default listener (IPv6 and IPv4), which amqplib's ipv6 test needs.
    "$bin" server --amqp-port "$amqp" --http-port "$http" --data-dir "$WORK/pier/data" \
        >"$LOGS/pier.log" 2>&1 </dev/null &
    PIER_PID=$!
    for _ in $(seq 1 300); do
        if ! kill -0 "$PIER_PID" 2>/dev/null; then
            echo "client-suites.sh: Pier exited during startup:" >&2
            tail -20 "$LOGS/pier.log" >&2
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$amqp") 2>/dev/null; then break; fi
        sleep 0.1
    done
    export PIER_CLIENT_SUITES_URL="amqp://guest:guest@127.0.0.1:$amqp/%2F"
    log "started Pier ($bin) on port $amqp, log: $LOGS/pier.log"
}

# --- exclusions ---------------------------------------------------------------------------
excluded() {  # SUITE -> "kind<TAB>test" lines
    awk -F'\t' -v s="$1" '!/^#/ && $1 == s { print $2 "\t" $3 }' "$HERE/excluded.tsv"
}

# --- running ------------------------------------------------------------------------------
FAILED_ANY=0
RESULTS=()

report() {  # NAME PASSED FAILED SKIPPED EXCLUDED [NOTE]
    local what="$5 excluded"
    # --quick deselects more than excluded.tsv: the count would mean nothing.
    [ "$QUICK" -eq 1 ] && [ "$1" != amqplib ] && what="quick subset"
    local line="$1: $2 passed, $3 failed, $4 skipped ($what)${6:+ $6}"
    RESULTS+=("$line")
    echo "$line"
}

run_pytest_suite() {  # NAME DIR-IN-SDIST QUICK-ARGS...
    local name="$1" sdist="$2"; shift 2
    local dir="$WORK/$name"
    mkdir -p "$dir"
    tar -xzf "$CACHE/downloads/$sdist" -C "$dir" --strip-components=1
    cat "$HERE/conftest_shim.py" >>"$dir/tests/conftest.py"
    local args=() keywords=() ignored=() kind test
    while IFS=$'\t' read -r kind test; do
        case "$kind" in
            file) args+=(--ignore "$test"); ignored+=("$test") ;;
            test) args+=(--deselect "$test") ;;
            keyword) keywords+=("not $test") ;;
        esac
    done < <(excluded "$name")
    local selection=(tests) n_excluded=0
    if [ "$QUICK" -eq 0 ] && [ ${#ignored[@]} -gt 0 ]; then
        # Tests in the ignored files, to report how many are left out.
        n_excluded="$(cd "$dir" && "$VENV/bin/python" -m pytest --collect-only -q \
            -p no:cacheprovider "${ignored[@]}" 2>/dev/null | grep -c '::' || true)"
    fi
    if [ "$QUICK" -eq 1 ]; then
        selection=()
        while [ $# -gt 0 ]; do
            if [ "$1" = -k ]; then keywords+=("$2"); shift 2; else selection+=("$1"); shift; fi
        done
    fi
    if [ ${#keywords[@]} -gt 0 ]; then
        local expr="${keywords[0]}" k
        for k in "${keywords[@]:1}"; do expr="$expr and $k"; done
        args+=(-k "$expr")
    fi
    local xml="$LOGS/$name.xml" out="$LOGS/$name.log" rc=0
    rm -f "$xml"
    echo "==> $name (pytest ${selection[*]}, log: $out)"
    (cd "$dir" && timeout -k 15 "$TIMEOUT" "$VENV/bin/python" -m pytest "${selection[@]}" \
        -p no:cacheprovider -o log_cli=false -q -rfE --junitxml="$xml" "${args[@]}") \
        >"$out" 2>&1 || rc=$?
    grep -E '^(FAILED|ERROR) ' "$out" | sed 's/^/    /' || true
    if [ ! -s "$xml" ]; then
        tail -5 "$out" | sed 's/^/    /'
        report "$name" 0 1 0 "$n_excluded" "(no result: exit $rc$([ "$rc" -ge 124 ] && echo ", timed out after ${TIMEOUT}s"))"
        FAILED_ANY=1
        return
    fi
    local deselected
    deselected="$(tail -1 "$out" | grep -oE '[0-9]+ deselected' | cut -d' ' -f1 || true)"
    n_excluded=$((n_excluded + ${deselected:-0}))
    local counts
    counts="$("$PYTHON" - "$xml" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
tests = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(tests - failed - skipped, failed, skipped)
PY
)"
    local passed failed skipped
    read -r passed failed skipped <<<"$counts"
    if [ "$rc" -ge 124 ]; then
        report "$name" "$passed" "$((failed + 1))" "$skipped" "$n_excluded" "(timed out after ${TIMEOUT}s)"
        FAILED_ANY=1
        return
    fi
    report "$name" "$passed" "$failed" "$skipped" "$n_excluded"
    if [ "$failed" -gt 0 ] || [ "$passed" -eq 0 ]; then FAILED_ANY=1; fi
}

run_amqplib() {
    local dir="$WORK/amqplib"
    mkdir -p "$dir"
    tar -xzf "$CACHE/downloads/$AMQPLIB_TGZ" -C "$dir" --strip-components=1
    local names=() kind test
    while IFS=$'\t' read -r kind test; do
        [ "$kind" = name ] && names+=("$test")
    done < <(excluded amqplib)
    local tap="$LOGS/amqplib.tap" out="$LOGS/amqplib.log" rc=0
    rm -f "$tap"
    echo "==> amqplib (node --test ${AMQPLIB_TESTS[*]}, log: $out)"
    # --test-timeout: a hanging test fails on its own instead of eating the whole bound.
    (cd "$dir" && URL="$PIER_CLIENT_SUITES_URL" \
        PIER_AMQPLIB_EXCLUDE="$("$PYTHON" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${names[@]}")" \
        timeout -k 15 "$TIMEOUT" node --require "$HERE/amqplib_shim.js" --test \
            --test-timeout=60000 --test-reporter=tap --test-reporter-destination="$tap" \
            --test-reporter=spec --test-reporter-destination=stdout "${AMQPLIB_TESTS[@]}") \
        >"$out" 2>&1 || rc=$?
    grep -E '^\s*not ok ' "$tap" 2>/dev/null | sed 's/^ */    /' || true
    local counts
    counts="$("$PYTHON" - "$tap" <<'PY'
import re, sys
try:
    text = open(sys.argv[1]).read()
except OSError:
    text = ""
def total(key):
    found = re.findall(rf"^# {key} (\d+)$", text, re.M)
    return int(found[-1]) if found else None
n = {k: total(k) for k in ("pass", "fail", "cancelled", "skipped", "todo")}
if n["pass"] is None:
    print("none")
else:
    # amqplib_shim.js reports the excluded tests as skipped, with this mark.
    excluded = len(re.findall(r"^\s*ok \d+ - .*\(excluded, see [^)]*\) # SKIP", text, re.M))
    print(n["pass"], n["fail"] + n["cancelled"], n["skipped"] + n["todo"] - excluded, excluded)
PY
)"
    if [ "$counts" = none ]; then
        tail -5 "$out" | sed 's/^/    /'
        report amqplib 0 1 0 "${#names[@]}" "(no result: exit $rc$([ "$rc" -ge 124 ] && echo ", timed out after ${TIMEOUT}s"))"
        FAILED_ANY=1
        return
    fi
    local passed failed skipped n_excluded
    read -r passed failed skipped n_excluded <<<"$counts"
    report amqplib "$passed" "$failed" "$skipped" "$n_excluded"
    if [ "$failed" -gt 0 ] || [ "$passed" -eq 0 ] || [ "$rc" -ne 0 ]; then FAILED_ANY=1; fi
}

# --- main -----------------------------------------------------------------------------------
for s in "${SUITES[@]}"; do
    case "$s" in
        aio-pika | aiormq) python_venv ;;
        amqplib) fetch_npm_tarball "amqplib@$AMQPLIB_VERSION" "$AMQPLIB_TGZ" "$AMQPLIB_SHA256" ;;
    esac
done
flock -u 9

if [ -n "${PIER_CLIENT_SUITES_URL:-}" ]; then
    log "broker: $PIER_CLIENT_SUITES_URL"
else
    start_pier
fi

for s in "${SUITES[@]}"; do
    case "$s" in
        aio-pika) run_pytest_suite aio-pika "$AIO_PIKA_SDIST" "${AIO_PIKA_QUICK[@]}" ;;
        aiormq) run_pytest_suite aiormq "$AIORMQ_SDIST" "${AIORMQ_QUICK[@]}" ;;
        amqplib) run_amqplib ;;
    esac
done

if [ -n "$PIER_PID" ] && ! kill -0 "$PIER_PID" 2>/dev/null; then
    echo "client-suites.sh: Pier died during the run; log tail:" >&2
    tail -20 "$LOGS/pier.log" >&2
    FAILED_ANY=1
fi
printf '\n'
printf '%s\n' "${RESULTS[@]}"
exit "$FAILED_ANY"
