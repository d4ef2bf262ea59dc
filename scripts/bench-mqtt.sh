#!/usr/bin/env bash
# MQTT: Pier against RabbitMQ's MQTT plugin, side by side in one run, with the same load
# generator (`pier bench --mqtt`, `pier bench --mqtt-idle`), then a table with the ratios
# Pier / RabbitMQ.
#
# Usage: ./scripts/bench-mqtt.sh [--quick] [--brokers pier,rabbitmq] [--out FILE.jsonl]
#                                [--no-build]
#
#   --quick          3 s per scenario, 1,000 idle connections held 6 s (CI smoke)
#   --brokers LIST   which brokers to load (default pier,rabbitmq; rabbitmq alone needs no
#                    Pier with MQTT)
#   --out FILE       JSON lines of the raw results (default
#                    target/bench-mqtt/results-<UTC time>.jsonl); the table goes to stdout
#   --no-build       use PIER_BIN or the existing target/release/pier without building
#
# Scenarios, for each broker in turn (Pier first):
#   Q0-16B, Q0-1KiB, Q1-16B, Q1-1KiB   1 publisher + 1 subscriber on one topic, MQTT 3.1.1,
#                                      QoS 0 or 1 (publish and subscription), --time TIME;
#                                      QoS 1 with at most INFLIGHT PUBLISHes unacknowledged;
#                                      as fast as the broker takes them (their latency is a
#                                      saturated broker's queueing delay)
#   Q1-1KiB-R1000                      Q1-1KiB at a fixed 1,000 msg/s: latency unsaturated
#   IDLE                               IDLE connections (keep-alive 60 s, one subscription
#                                      each), held SETTLE s after the last is up; broker
#                                      memory per connection = (VmRSS after - VmRSS before)
#                                      / connections, from /proc/<pid>/status, and the same
#                                      from the management API: mem_used (/api/nodes) and
#                                      total.erlang (/api/nodes/<node>/memory: RabbitMQ's
#                                      erlang:memory(total); Pier reports its RSS in both)
#   (IDLE runs first, on brokers not yet churned by the throughput runs.)
#
# Pier is started here (PIER_BIN, or built with `cargo build --release -p pier`) on a fresh
# data directory with `--mqtt-port PIER_MQTT_PORT`, and stopped at the end; a Pier without
# an MQTT server refuses that flag and the script stops, saying so. RabbitMQ must already
# be running with rabbitmq_mqtt on RABBIT_MQTT_PORT (its beam.smp is found from that port).
#
# Environment (defaults): PIER_BIN (built), BENCH_BIN (the generator: PIER_BIN),
#   PIER_MQTT_PORT (1893), PIER_AMQP_PORT (5793), PIER_HTTP_PORT (15793),
#   PIER_MQTT_FLAG (--mqtt-port), RABBIT_MQTT_PORT (1884), RABBIT_HTTP_PORT (15673),
#   MQTT_USER / MQTT_PASS (guest / guest, for both brokers; RabbitMQ accepts guest from
#   localhost only), TIME (10; --quick 3), IDLE (10000; --quick 1000), SETTLE (10; --quick 6),
#   INFLIGHT (100), PYTHON (python3).
# Needs: python3 (stdlib only), ss (iproute2), cargo unless PIER_BIN is given.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'bench-mqtt: %s\n' "$*" >&2; exit 1; }

QUICK=0
BUILD=1
BROKERS="pier,rabbitmq"
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --brokers) BROKERS="${2:?--brokers needs a list}"; shift ;;
        --brokers=*) BROKERS="${1#*=}" ;;
        --out) OUT="${2:?--out needs a file}"; shift ;;
        --out=*) OUT="${1#*=}" ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

if [ "$QUICK" -eq 1 ]; then
    TIME="${TIME:-3}" IDLE="${IDLE:-1000}" SETTLE="${SETTLE:-6}"
else
    TIME="${TIME:-10}" IDLE="${IDLE:-10000}" SETTLE="${SETTLE:-10}"
fi
INFLIGHT="${INFLIGHT:-100}"
PIER_MQTT_PORT="${PIER_MQTT_PORT:-1893}"
PIER_AMQP_PORT="${PIER_AMQP_PORT:-5793}"
PIER_HTTP_PORT="${PIER_HTTP_PORT:-15793}"
PIER_MQTT_FLAG="${PIER_MQTT_FLAG:---mqtt-port}"
RABBIT_MQTT_PORT="${RABBIT_MQTT_PORT:-1884}"
RABBIT_HTTP_PORT="${RABBIT_HTTP_PORT:-15673}"
MQTT_USER="${MQTT_USER:-guest}"
MQTT_PASS="${MQTT_PASS:-guest}"
PYTHON="${PYTHON:-python3}"
# The generator's errors in one line each, not with a backtrace.
export RUST_BACKTRACE=0

want() { case ",$BROKERS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
want pier || want rabbitmq || die "--brokers: pier, rabbitmq or both (got $BROKERS)"
command -v ss >/dev/null || die "ss (iproute2) is needed to find the brokers' processes"
command -v "$PYTHON" >/dev/null || die "$PYTHON is needed"

# One descriptor per idle connection, in the generator and in Pier (which inherits it).
NEEDED=$((IDLE + 256))
SOFT="$(ulimit -Sn)"
if [ "$SOFT" != unlimited ] && [ "$SOFT" -lt "$NEEDED" ]; then
    ulimit -Sn "$NEEDED" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
fi
[ "$(ulimit -Sn)" = unlimited ] || [ "$(ulimit -Sn)" -ge "$NEEDED" ] ||
    die "the open-files limit is $(ulimit -Sn) (hard $(ulimit -Hn)); $IDLE idle connections need $NEEDED"

listening() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }
listener_pid() { ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# The management API's memory figures of the first node at HTTP port $1, bytes, as
# "mem_used erlang" (empty if unreachable): mem_used from /api/nodes (what the memory alarm
# watches; with RabbitMQ's default strategy, its RSS, refreshed every 5 s) and total.erlang
# from /api/nodes/<node>/memory (RabbitMQ: erlang:memory(total), computed when asked, which
# counts allocated but untouched carriers too; Pier: its RSS).
mgmt_mem() {
    "$PYTHON" - "$1" "$MQTT_USER" "$MQTT_PASS" <<'EOF' 2>/dev/null || true
import base64, json, sys, urllib.parse, urllib.request
port, user, pw = sys.argv[1:4]
auth = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
def get(path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}")
    req.add_header("Authorization", auth)
    return json.load(urllib.request.urlopen(req, timeout=60))
node = get("nodes")[0]
memory = get(f"nodes/{urllib.parse.quote(node['name'], safe='')}/memory")["memory"]
print(node["mem_used"], memory["total"]["erlang"])
EOF
}

# --- The generator and Pier ---------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pier-bench-mqtt.XXXXXX")"
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

if [ -z "${PIER_BIN:-}" ]; then
    if [ "$BUILD" -eq 1 ]; then
        log "cargo build --release -p pier"
        cargo build --release -p pier
    fi
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    PIER_BIN="$TARGET_DIR/release/pier"
fi
[ -x "$PIER_BIN" ] || die "$PIER_BIN is missing (set PIER_BIN or run without --no-build)"
# Private copies: a rebuild during the run changes neither the broker nor the generator.
cp "$PIER_BIN" "$WORK/pier"
PIER="$WORK/pier"
if [ -n "${BENCH_BIN:-}" ]; then
    cp "$BENCH_BIN" "$WORK/bench"
    BENCH="$WORK/bench"
else
    BENCH="$PIER"
fi
"$BENCH" bench --help 2>/dev/null | grep -q -- --mqtt-idle ||
    die "$BENCH has no \`bench --mqtt\`: set BENCH_BIN to a pier built from this tree"

if want pier; then
    for p in "$PIER_MQTT_PORT" "$PIER_AMQP_PORT" "$PIER_HTTP_PORT"; do
        listening "$p" && die "port $p is taken (set PIER_MQTT_PORT, PIER_AMQP_PORT, PIER_HTTP_PORT)"
    done
    log "starting Pier: $PIER_MQTT_FLAG $PIER_MQTT_PORT (AMQP $PIER_AMQP_PORT, HTTP $PIER_HTTP_PORT)"
    "$PIER" server --bind 127.0.0.1 --amqp-port "$PIER_AMQP_PORT" --http-port "$PIER_HTTP_PORT" \
        "$PIER_MQTT_FLAG" "$PIER_MQTT_PORT" --data-dir "$WORK/data" >"$WORK/pier.log" 2>&1 &
    PIER_PID=$!
    for _ in $(seq 150); do
        listening "$PIER_MQTT_PORT" && break
        kill -0 "$PIER_PID" 2>/dev/null || break
        sleep 0.2
    done
    if ! kill -0 "$PIER_PID" 2>/dev/null; then
        wait "$PIER_PID" 2>/dev/null || true
        PIER_PID=""
        if grep -q "unexpected argument '$PIER_MQTT_FLAG'" "$WORK/pier.log"; then
            die "this Pier has no MQTT server: it refused $PIER_MQTT_FLAG ($PIER_BIN).
  Use a Pier with MQTT, or --brokers rabbitmq to load RabbitMQ alone. Pier said:
$(sed 's/^/    /' "$WORK/pier.log" | head -n 5)"
        fi
        die "Pier exited at start:
$(tail -n 20 "$WORK/pier.log")"
    fi
    listening "$PIER_MQTT_PORT" || die "Pier is not listening on $PIER_MQTT_PORT after 30 s"
    PIER_VERSION="$("$PIER" --version 2>/dev/null || echo pier), git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    log "Pier pid $PIER_PID ($PIER_VERSION)"
fi

if want rabbitmq; then
    listening "$RABBIT_MQTT_PORT" ||
        die "nothing listens on RabbitMQ's MQTT port $RABBIT_MQTT_PORT (rabbitmq-plugins enable rabbitmq_mqtt; set RABBIT_MQTT_PORT)"
    RABBIT_PID="$(listener_pid "$RABBIT_MQTT_PORT")"
    [ -n "$RABBIT_PID" ] || die "cannot find the pid listening on port $RABBIT_MQTT_PORT (run as root?)"
    grep -q beam "/proc/$RABBIT_PID/comm" 2>/dev/null ||
        die "port $RABBIT_MQTT_PORT is served by $(cat "/proc/$RABBIT_PID/comm" 2>/dev/null), not RabbitMQ's beam.smp"
    RABBIT_VERSION="$("$PYTHON" - "$RABBIT_HTTP_PORT" "$MQTT_USER" "$MQTT_PASS" <<'EOF' 2>/dev/null || echo "unknown (management API unreachable)"
import base64, json, sys, urllib.request
port, user, pw = sys.argv[1:4]
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/overview")
req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
o = json.load(urllib.request.urlopen(req, timeout=30))
print(f"RabbitMQ {o['rabbitmq_version']}, Erlang {o['erlang_version']}")
EOF
)"
    log "RabbitMQ: beam.smp pid $RABBIT_PID on MQTT port $RABBIT_MQTT_PORT ($RABBIT_VERSION)"
fi

if [ -z "$OUT" ]; then
    OUT="$ROOT/target/bench-mqtt/results-$(date -u +%Y%m%d-%H%M%S).jsonl"
fi
mkdir -p "$(dirname "$OUT")"
: >"$OUT"

broker_port() { if [ "$1" = pier ]; then echo "$PIER_MQTT_PORT"; else echo "$RABBIT_MQTT_PORT"; fi; }
broker_pid() { if [ "$1" = pier ]; then echo "$PIER_PID"; else echo "$RABBIT_PID"; fi; }
broker_http() { if [ "$1" = pier ]; then echo "$PIER_HTTP_PORT"; else echo "$RABBIT_HTTP_PORT"; fi; }
uri() { echo "mqtt://$MQTT_USER:$MQTT_PASS@127.0.0.1:$(broker_port "$1")"; }
BROKER_LIST=()
want pier && BROKER_LIST+=(pier)
want rabbitmq && BROKER_LIST+=(rabbitmq)

# record BROKER SCENARIO JSON [extra JSON fields]: one line of $OUT.
record() {
    printf '{"broker":"%s","scenario":"%s","load":"%s"%s,"bench":%s}\n' \
        "$1" "$2" "$(cut -d' ' -f1-3 /proc/loadavg)" "${4:-}" "$3" >>"$OUT"
}

# --- Throughput and latency ---------------------------------------------------------------
throughput() { # scenario qos size [more bench options]
    local scenario=$1 qos=$2 size=$3 b json extra=()
    shift 3
    [ "$qos" -eq 1 ] && extra=(--inflight "$INFLIGHT")
    extra+=("$@")
    for b in "${BROKER_LIST[@]}"; do
        log "$scenario on $b: 1 publisher, 1 subscriber, QoS $qos, $size B, $TIME s"
        json="$("$BENCH" bench --mqtt --uri "$(uri "$b")" -x 1 -y 1 --qos "$qos" --size "$size" \
            "${extra[@]}" --time "$TIME" --topic "pier-bench-mqtt/$$/$scenario/$b" \
            --broker-pid "$(broker_pid "$b")" --json --quiet 2>"$WORK/bench.err")" ||
            grep -v '^$' "$WORK/bench.err" | tail -n 4 | sed 's/^/    /' >&2
        [ -n "$json" ] || json=null
        record "$b" "$scenario" "$json"
        # Let the broker drop what the subscriber left (QoS 0 backlogs) before the next run.
        sleep 2
    done
}

# --- Idle connections: memory per connection ----------------------------------------------
idle() { # broker
    local b=$1 pid ready gen limit i json rss_before rss_after="" mem_before mem_after=""
    pid="$(broker_pid "$b")"
    ready="$WORK/ready-$b"
    log "IDLE on $b: $IDLE connections, settle $SETTLE s"
    rss_before="$(rss_kib "$pid")"
    mem_before="$(mgmt_mem "$(broker_http "$b")")"
    # The generator holds the connections SETTLE + 20 s after the last is up; the measurement
    # is taken at SETTLE.
    "$BENCH" bench --mqtt-idle "$IDLE" --uri "$(uri "$b")" --keep-alive 60 \
        --topic "pier-bench-mqtt/$$/idle-$b" --time "$((SETTLE + 20))" \
        --ready-file "$ready" --json --quiet >"$WORK/idle-$b.json" 2>"$WORK/idle-$b.err" &
    gen=$!
    limit=$((IDLE / 50 + 120))
    for ((i = 0; i < limit * 5; i++)); do
        [ -e "$ready" ] && break
        kill -0 "$gen" 2>/dev/null || break
        sleep 0.2
    done
    if [ -e "$ready" ]; then
        sleep "$SETTLE"
        rss_after="$(rss_kib "$pid")"
        mem_after="$(mgmt_mem "$(broker_http "$b")")"
        log "$b: VmRSS $rss_before -> $rss_after KiB; management API mem_used, erlang: $mem_before -> $mem_after B"
    else
        printf '    the generator did not get its connections up within %s s\n' "$limit" >&2
    fi
    wait "$gen" || grep -v '^$' "$WORK/idle-$b.err" | tail -n 6 | sed 's/^/    /' >&2
    json="$(tail -n 1 "$WORK/idle-$b.json")"
    [ -n "$json" ] || json=null
    local m0=(${mem_before:-null null}) m1=(${mem_after:-null null})
    record "$b" IDLE "$json" ",\"connections\":$IDLE,\"rss_before_kib\":${rss_before:-null},\"rss_after_kib\":${rss_after:-null},\"mgmt_mem_used_before\":${m0[0]},\"mgmt_mem_used_after\":${m1[0]},\"mgmt_erlang_before\":${m0[1]:-null},\"mgmt_erlang_after\":${m1[1]:-null}"
    # Let the broker clean up the closed connections (RabbitMQ: a queue each) before more.
    sleep 10
}

# --- The scenarios: idle first, on brokers not yet churned by the throughput runs ---------
for b in "${BROKER_LIST[@]}"; do
    idle "$b"
done
throughput Q0-16B 0 16
throughput Q0-1KiB 0 1024
throughput Q1-16B 1 16
throughput Q1-1KiB 1 1024
throughput Q1-1KiB-R1000 1 1024 --rate 1000

# --- The table ----------------------------------------------------------------------------
"$PYTHON" - "$OUT" "${PIER_VERSION:-}" "${RABBIT_VERSION:-}" "$TIME" "$IDLE" "$SETTLE" <<'EOF'
import json, sys
path, pier_v, rabbit_v, time_s, idle, settle = sys.argv[1:7]
rows = [json.loads(l) for l in open(path) if l.strip()]
res = {(r["broker"], r["scenario"]): r for r in rows}

def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:.1f}{unit}"
    return f"{v:,.0f}{unit}"

def ratio(p, r):
    if p is None or not r:
        return "-"
    x = p / r
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.2g}"

def get(b, s, f):
    r = res.get((b, s))
    if r is None or r.get("bench") is None:
        return None
    try:
        return f(r)
    except (KeyError, TypeError, ZeroDivisionError):
        return None

print(f"\nMQTT: Pier vs RabbitMQ (same machine, same generator; {time_s} s runs, {idle} idle "
      f"connections held {settle} s)")
if pier_v:
    print(f"Pier: {pier_v}")
if rabbit_v:
    print(f"RabbitMQ: {rabbit_v}")
print()
print("| scenario | metric | Pier | RabbitMQ | Pier/RabbitMQ |")
print("|---|---|---:|---:|---:|")
metrics = [
    ("publish msg/s", lambda r: r["bench"]["publish_rate"], ""),
    ("consume msg/s", lambda r: r["bench"]["consume_rate"], ""),
    ("latency p50 µs", lambda r: r["bench"]["latency_us"]["p50"], ""),
    ("latency p99 µs", lambda r: r["bench"]["latency_us"]["p99"], ""),
    ("broker CPU %", lambda r: r["bench"]["broker_cpu_percent"], ""),
]
for s in ["Q0-16B", "Q0-1KiB", "Q1-16B", "Q1-1KiB", "Q1-1KiB-R1000"]:
    for name, f, unit in metrics:
        p, r = get("pier", s, f), get("rabbitmq", s, f)
        if p is None and r is None:
            continue
        print(f"| {s} | {name} | {fmt(p, unit)} | {fmt(r, unit)} | {ratio(p, r)} |")

def per_conn_rss(r):
    return (r["rss_after_kib"] - r["rss_before_kib"]) * 1024 / r["bench"]["established"]

def per_conn_mgmt(key):
    return lambda r: ((r[f"mgmt_{key}_after"] - r[f"mgmt_{key}_before"])
                      / r["bench"]["established"])

for name, f in [
    ("bytes/connection (VmRSS delta)", per_conn_rss),
    ("bytes/connection (mgmt mem_used delta)", per_conn_mgmt("mem_used")),
    ("bytes/connection (mgmt memory total.erlang delta)", per_conn_mgmt("erlang")),
    ("connections up", lambda r: r["bench"]["established"]),
    ("connections/s", lambda r: r["bench"]["connect_rate"]),
    ("handshake p99 µs", lambda r: r["bench"]["handshake_us"]["p99"]),
]:
    p, r = get("pier", "IDLE", f), get("rabbitmq", "IDLE", f)
    print(f"| IDLE | {name} | {fmt(p)} | {fmt(r)} | {ratio(p, r)} |")
failed = [f"{r['broker']} {r['scenario']}" for r in rows
          if r.get("bench") is None or r["bench"].get("errors")]
print(f"\nraw results: {path}")
if failed:
    print("FAILED or with errors: " + ", ".join(failed))
    sys.exit(1)
EOF
