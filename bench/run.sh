#!/usr/bin/env bash
# Reproduces the numbers in docs/benchmarks.md. Builds the release binaries, then for each
# scenario starts a fresh standalone server (bench/server.toml, or the config in $CONFIG) on
# 127.0.0.1:38080, runs roomcast-bench against it and writes docs/bench/NAME.json (and .png for
# ramps). Nothing else should be running: server and load generator share the machine.
#
#   bench/run.sh                      every scenario below
#   bench/run.sh fanout-1x5000 idle   just those
#
# Scenarios: fanout-1x5000 fanout-100x50 idle churn ramp-1x5000 ramp-100x50 default-config
#            latency-default ramp-default deflate
# Each run prints the exact roomcast-bench command it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-38080}
URL="ws://127.0.0.1:$PORT/ws"
OUT=${OUT:-docs/bench}
SECRET=benchsecret-benchsecret-benchsecret
# RC_BIN / RC_BENCH: other builds to measure (a "before" for a comparison); nothing is built then.
BENCH=${RC_BENCH:-target/release/roomcast-bench}
SERVER_BIN=${RC_BIN:-target/release/roomcast}
SERVER_PID=
DATA=$(mktemp -d)

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap 'stop_server; rm -rf "$DATA"' EXIT

# The server and the load generator each hold up to ~15,000 connections (idle scenario).
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < 16000)); then
    echo "warning: only $(ulimit -n) open files allowed; the idle scenario needs 16,000" >&2
fi

if [[ -z "${RC_BIN:-}${RC_BENCH:-}" ]]; then
    cargo build --release -q -p roomcast-server -p roomcast-bench
fi
mkdir -p "$OUT"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_server() { # $1: config file
    stop_server
    # A server that is still shutting down (or anything else) may hold the port for a moment.
    for _ in $(seq 100); do
        port_busy || break
        sleep 0.1
    done
    if port_busy; then
        echo "port $PORT is in use; stop what listens there or set PORT" >&2
        exit 1
    fi
    rm -rf "$DATA/data"
    ROOMCAST_JWT_SECRET=$SECRET "$SERVER_BIN" standalone --config "$1" \
        --listen "127.0.0.1:$PORT" --data-dir "$DATA/data" >"$DATA/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0
        sleep 0.1
    done
    cat "$DATA/server.log" >&2
    echo "the server did not become ready" >&2
    exit 1
}

bench() { # $1: output name, then roomcast-bench arguments
    local name=$1
    shift
    local args=("$@" --url "$URL" --secret "$SECRET" --server-pid "$SERVER_PID"
        --json "$OUT/$name.json")
    echo "== $name: $BENCH ${args[*]}"
    if ! "$BENCH" "${args[@]}"; then
        echo "roomcast-bench failed; the server's log:" >&2
        cat "$DATA/server.log" >&2
        exit 1
    fi
}

CONFIG=${CONFIG:-bench/server.toml}

# The shipped defaults, except what the load generator trips by design: the chat limits (its
# publishers send far above what a real user may), the join budget and per-address cap
# (thousands of connections from a few loopback addresses, publishers joining 100 rooms).
defaults_config() {
    local cfg="$DATA/default.toml"
    cat >"$cfg" <<'EOF'
[ingest]
user_limit = { rate = 0, burst = 1 }
room_limit = { rate = 0, burst = 1 }

[gateway]
max_rooms_per_conn = 1000
join_limit = { rate = 0, burst = 1 }

[http]
max_connections_per_ip = 0
EOF
    echo "$cfg"
}
FAN_1="--rooms 1 --subscribers 5000 --publishers 2"
FAN_100="--rooms 100 --subscribers 5000 --publishers 4"

run() {
    case "$1" in
    fanout-1x5000)
        start_server "$CONFIG"
        bench fanout-1x5000 fanout $FAN_1 --rate 200 --duration 20 ;;
    fanout-100x50)
        start_server "$CONFIG"
        bench fanout-100x50 fanout $FAN_100 --rate 12000 --duration 20 ;;
    idle)
        start_server "$CONFIG"
        bench idle-15000 idle --connections 15000 --hold 20 ;;
    churn)
        start_server "$CONFIG"
        bench churn-500 churn --rate 500 --rooms 10 --duration 10 ;;
    ramp-1x5000)
        start_server "$CONFIG"
        bench ramp-1x5000 ramp $FAN_1 --start 25 --factor 2 --max-steps 7 --max-p99-ms 5000 \
            --duration 8 --plot "$OUT/ramp-1x5000.png" ;;
    ramp-100x50)
        start_server "$CONFIG"
        bench ramp-100x50 ramp $FAN_100 --start 750 --factor 2 --max-steps 6 --max-p99-ms 5000 \
            --duration 8 --plot "$OUT/ramp-100x50.png" ;;
    default-config)
        # The same fan-out runs with the shipped defaults; only the chat limits are lifted for
        # the publishers, and the anti-abuse limits the load generator trips by design are off
        # (see defaults_config).
        start_server "$(defaults_config)"
        bench fanout-1x5000-default fanout $FAN_1 --rate 200 --duration 20
        start_server "$(defaults_config)"
        bench fanout-100x50-default fanout $FAN_100 --rate 12000 --duration 20 ;;
    latency-default)
        # Issue 12's latency targets, three runs each (RUNS), shipped defaults: 1 x 5,000 at
        # 1 M and 4 M deliveries/s, 100 x 50 at 600,000 and 100,000 deliveries/s.
        for i in $(seq "${RUNS:-3}"); do
            start_server "$(defaults_config)"
            bench "latency-1x5000-1m-$i" fanout $FAN_1 --rate 200 --duration 20
            start_server "$(defaults_config)"
            bench "latency-1x5000-4m-$i" fanout $FAN_1 --rate 800 --duration 20
            start_server "$(defaults_config)"
            bench "latency-100x50-600k-$i" fanout $FAN_100 --rate 12000 --duration 20
            start_server "$(defaults_config)"
            bench "latency-100x50-100k-$i" fanout $FAN_100 --rate 2000 --duration 20
        done ;;
    ramp-default)
        # Latency against rate with the shipped defaults (plots in docs/bench/).
        start_server "$(defaults_config)"
        bench ramp-1x5000-default ramp $FAN_1 --start 25 --factor 2 --max-steps 7 \
            --max-p99-ms 5000 --duration 8 --plot "$OUT/ramp-1x5000-default.png"
        start_server "$(defaults_config)"
        bench ramp-100x50-default ramp $FAN_100 --start 750 --factor 2 --max-steps 6 \
            --max-p99-ms 5000 --duration 8 --plot "$OUT/ramp-100x50-default.png" ;;
    deflate)
        # Bytes on the wire per delivery and server CPU with realistic chat lines, subscribers
        # with and without permessage-deflate (shipped defaults: deflate on, level 6, 256 B).
        for z in plain deflate; do
            local flag=
            [[ $z == deflate ]] && flag=--deflate
            start_server "$(defaults_config)"
            bench "deflate-1x5000-$z" fanout $FAN_1 --rate 200 --duration 20 --chat-text $flag
            start_server "$(defaults_config)"
            bench "deflate-100x50-$z" fanout $FAN_100 --rate 12000 --duration 20 --chat-text $flag
        done ;;
    *)
        echo "unknown scenario $1" >&2
        exit 2 ;;
    esac
}

if [[ $# -eq 0 ]]; then
    set -- fanout-1x5000 fanout-100x50 idle churn ramp-1x5000 ramp-100x50 default-config
fi
for s in "$@"; do
    run "$s"
done
