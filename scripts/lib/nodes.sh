# Shared by the cluster benchmark scripts (bench-quorum.sh, bench-cluster-e.sh,
# bench-metadata.sh): start and stop Pier nodes and RabbitMQ nodes on this machine, and read
# their RSS and CPU. Source it after setting ROOT, BIN and WORK (a temporary directory).
#
# Pier nodes listen on 127.0.0.1-3 (AMQP 5672, HTTP 15672, cluster 26672) with their data
# under $WORK. RabbitMQ nodes rq1..rq3@localhost listen on 127.0.0.1:5781-5783 (management,
# when enabled, on 15781-15783), their data under $WORK; they run as the rabbitmq user.

PIDS=()
RABBITS=()
PIER_PIDS=()

nodes_cleanup() {
    local p n
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in "${RABBITS[@]}"; do rq "$n" stop >/dev/null 2>&1 || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

# ---- Pier ----
api() { # api HOST METHOD PATH [BODY]
    curl -fsS -u guest:guest -X "$2" -H 'content-type: application/json' \
        ${4:+--data "$4"} "http://$1:15672/api$3"
}

wait_http() { # wait_http HOST
    for _ in $(seq 1 300); do api "$1" GET /overview >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "node on $1 did not come up" >&2; exit 1
}

# start_pier NODES NAME [SERVER-ARGS...]: one node on 127.0.0.1, or a cluster of NODES
# nodes on 127.0.0.1..NODES, formed (every node running, a leader) before it returns.
start_pier() {
    local n="$1" name="$2" i peers=""
    shift 2
    PIER_PIDS=()
    if [ "$n" = 1 ]; then
        "$BIN" server --bind 127.0.0.1 --data-dir "$WORK/p1-$name" "$@" \
            >"$WORK/p1-$name.log" 2>&1 &
        PIER_PIDS+=($!); PIDS+=($!)
        wait_http 127.0.0.1
        return
    fi
    for i in $(seq 1 "$n"); do peers+="${peers:+,}127.0.0.$i:26672"; done
    for i in $(seq 1 "$n"); do
        "$BIN" server --bind "127.0.0.$i" --data-dir "$WORK/p$n-$name-n$i" \
            --node-name "pier@n$i" --cluster-port 26672 --peers "$peers" "$@" \
            >"$WORK/p$n-$name-n$i.log" 2>&1 &
        PIER_PIDS+=($!); PIDS+=($!)
    done
    for i in $(seq 1 "$n"); do wait_http "127.0.0.$i"; done
    for _ in $(seq 1 300); do
        if api 127.0.0.1 GET /pier/cluster 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if len(s.get("running_nodes", [])) == int(sys.argv[1]) and s.get("leader") else 1)' "$n"
        then
            return 0
        fi
        sleep 0.2
    done
    echo "the Pier cluster did not form" >&2; exit 1
}

stop_pier() {
    local p
    for p in "${PIER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PIER_PIDS=()
}

# ---- RabbitMQ ----
RQ_HOME=/var/lib/rabbitmq
RQ_MANAGEMENT=0
RQ_STREAM=0

rq_env() { # rq_env NODE-INDEX
    local i="$1" d="$WORK/rq$1"
    echo "HOME=$RQ_HOME RABBITMQ_NODENAME=rq$i@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
RABBITMQ_NODE_PORT=$((5780 + i)) RABBITMQ_DIST_PORT=$((25780 + i)) \
RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log RABBITMQ_PID_FILE=$d/pid \
RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$WORK/rq.plugins \
RABBITMQ_USE_LONGNAME=false"
}

# From the rabbitmq user's home: the Erlang VM must be able to read its working directory.
as_rabbit() { (cd "$RQ_HOME" && setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@"); }

rq() { # rq NODE-INDEX ctl-args...
    local i="$1"; shift
    as_rabbit env HOME=$RQ_HOME rabbitmqctl -n "rq$i@localhost" "$@"
}

# rabbit_setup [PLUGIN...]: the plugins every node starts with (none: AMQP only).
rabbit_setup() {
    command -v rabbitmq-server >/dev/null \
        || { echo "rabbitmq-server is not installed" >&2; exit 1; }
    chmod 755 "$WORK"
    local plugins
    plugins=$(IFS=,; echo "$*")
    echo "[$plugins]." >"$WORK/rq.plugins"
    chown rabbitmq:rabbitmq "$WORK/rq.plugins"
    case " $* " in *" rabbitmq_management "*) RQ_MANAGEMENT=1 ;; esac
    case " $* " in *" rabbitmq_stream "*) RQ_STREAM=1 ;; esac
}

start_rabbit() { # start_rabbit NODE-INDEX
    local i="$1"
    mkdir -p "$WORK/rq$i"
    printf 'loopback_users = none\nlog.console = false\n' >"$WORK/rq$i/rabbitmq.conf"
    if [ "$RQ_STREAM" = 1 ]; then
        # The stream plugin on 127.0.0.1:5790+i, advertised there (Metadata sends clients
        # to each node's own port).
        printf 'stream.listeners.tcp.1 = 127.0.0.1:%s\nstream.advertised_host = 127.0.0.1\nstream.advertised_port = %s\n' \
            $((5790 + i)) $((5790 + i)) >>"$WORK/rq$i/rabbitmq.conf"
    fi
    if [ "$RQ_MANAGEMENT" = 1 ]; then
        printf 'management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %s\n' \
            $((15780 + i)) >>"$WORK/rq$i/rabbitmq.conf"
    fi
    chown -R rabbitmq:rabbitmq "$WORK/rq$i"
    # shellcheck disable=SC2046
    as_rabbit env $(rq_env "$i") rabbitmq-server -detached
    RABBITS+=("$i")
    # await_startup needs the node registered first.
    for _ in $(seq 1 120); do rq "$i" status >/dev/null 2>&1 && break; sleep 0.5; done
    rq "$i" await_startup --timeout 120 >/dev/null
}

join_rabbit() { # join_rabbit NODE-INDEX: starts it and joins it to rq1
    start_rabbit "$1"
    rq "$1" stop_app >/dev/null
    rq "$1" join_cluster rq1@localhost >/dev/null
    rq "$1" start_app >/dev/null
}

rabbit_pids() { # one per line (a pid file has no newline of its own)
    local i; for i in "$@"; do echo "$(cat "$WORK/rq$i/pid")"; done
}

# ---- resources ----
rss_kb() { # total RSS of the given pids
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
    echo "$t"
}

cpu_ticks() { # total utime+stime of the given pids
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    echo "$t"
}
