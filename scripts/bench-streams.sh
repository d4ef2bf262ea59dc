#!/usr/bin/env bash
# Stream protocol benchmark, Pier and RabbitMQ side by side, with the same client
# (`pier bench --stream`). One run per scenario and broker; results as JSON lines.
#
#   scripts/bench-streams.sh [OUT.jsonl]
#
# Needs: a release build (target/release/pier), RabbitMQ with rabbitmq_stream listening on
# 127.0.0.1:$RABBIT_STREAM_PORT (default 5553). Pier is started here on fresh data with
# --stream-port $PIER_STREAM_PORT (default 5752) and stopped at the end. Peak RSS is sampled
# from /proc/<pid>/status every 200 ms during each scenario. DROP_CACHES=1 (root) empties the
# page cache before CATCHUP, so that it reads the device (Pier's writer uses direct I/O and
# leaves nothing in the page cache; RabbitMQ's writes stay there).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-streams/results-$(date -u +%Y%m%d-%H%M%S).jsonl}
mkdir -p "$(dirname "$OUT")"
PIER=${PIER_BIN:-target/release/pier}
PIER_STREAM_PORT=${PIER_STREAM_PORT:-5752}
RABBIT_STREAM_PORT=${RABBIT_STREAM_PORT:-5553}
FILL=${FILL:-10000000}
TIME=${TIME:-10}

data=$(mktemp -d /tmp/pier-bench-streams-XXXXXX)
"$PIER" server --bind 127.0.0.1 --amqp-port 5750 --http-port 15750 \
  --stream-port "$PIER_STREAM_PORT" --stream-advertised-host 127.0.0.1 \
  --data-dir "$data/data" >"$data/pier.log" 2>&1 &
pier_pid=$!
trap 'kill $pier_pid 2>/dev/null; wait $pier_pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PIER_STREAM_PORT") 2>/dev/null && break
  sleep 0.1
done
rabbit_pid=$(ps -eo pid,args | awk '/beam.smp/ && !/awk/ {print $1; exit}')
[ -n "$rabbit_pid" ] || { echo "RabbitMQ (beam.smp) is not running" >&2; exit 1; }

peak_rss() { # pid, stop-file: prints the highest VmRSS (KiB) seen until stop-file exists
  local max=0 v
  while [ ! -e "$2" ]; do
    v=$(awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
    [ "${v:-0}" -gt "$max" ] && max=$v
    sleep 0.2
  done
  echo "$max"
}

run() { # broker name, pid, port, scenario, args...
  local broker=$1 pid=$2 port=$3 scenario=$4
  shift 4
  local stop="$data/stop-$broker-$scenario"
  peak_rss "$pid" "$stop" >"$data/rss-$broker-$scenario" &
  local sampler=$!
  local rss_before
  rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  local load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  local json
  json=$("$PIER" bench --stream --uri "rabbitmq-stream://guest:guest@127.0.0.1:$port/%2F" \
    --broker-pid "$pid" --json --quiet "$@" 2>>"$data/bench.log" || echo '{"error":"failed"}')
  touch "$stop"
  wait "$sampler"
  local peak
  peak=$(cat "$data/rss-$broker-$scenario")
  echo "{\"broker\":\"$broker\",\"scenario\":\"$scenario\",\"rss_before_kib\":$rss_before,\"peak_rss_kib\":$peak,\"load\":\"$load\",\"bench\":$json}" | tee -a "$OUT"
}

for b in pier rabbitmq; do
  if [ $b = pier ]; then pid=$pier_pid port=$PIER_STREAM_PORT; else pid=$rabbit_pid port=$RABBIT_STREAM_PORT; fi
  tag="bench-streams-$$-$b"
  run $b "$pid" "$port" S16 -x 1 -y 1 --size 16 --time "$TIME" --queue-prefix "$tag-s16-" --delete-queues
  run $b "$pid" "$port" S1K -x 1 -y 1 --size 1024 --time "$TIME" --queue-prefix "$tag-s1k-" --delete-queues
  run $b "$pid" "$port" FILL -x 1 -y 0 --size 16 --pmessages "$FILL" --queue-prefix "$tag-big-"
  if [ "${DROP_CACHES:-0}" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
  run $b "$pid" "$port" CATCHUP -x 0 -y 1 --stream-offset first --cmessages "$FILL" --queue-prefix "$tag-big-"
  run $b "$pid" "$port" FIRST10 -x 0 -y 10 --stream-offset first --cmessages $((FILL / 5)) --queue-prefix "$tag-big-" --delete-queues
done
echo "results: $OUT" >&2
