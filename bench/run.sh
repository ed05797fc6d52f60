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
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-38080}
URL="ws://127.0.0.1:$PORT/ws"
OUT=${OUT:-docs/bench}
SECRET=benchsecret
BENCH=target/release/roomcast-bench
DATA=$(mktemp -d)
SERVER_PID=

cargo build --release -q -p roomcast-server -p roomcast-bench
mkdir -p "$OUT"

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap 'stop_server; rm -rf "$DATA"' EXIT

start_server() { # $1: config file
    stop_server
    rm -rf "$DATA/data"
    ROOMCAST_JWT_SECRET=$SECRET target/release/roomcast standalone --config "$1" \
        --listen "127.0.0.1:$PORT" --data-dir "$DATA/data" >"$DATA/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
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
    echo "== $name: roomcast-bench $*"
    "$BENCH" "$@" --url "$URL" --secret "$SECRET" --server-pid "$SERVER_PID" \
        --json "$OUT/$name.json"
}

CONFIG=${CONFIG:-bench/server.toml}
FAN_1="--rooms 1 --subscribers 5000 --publishers 2"
FAN_100="--rooms 100 --subscribers 5000 --publishers 4${FAN_EXTRA:+ $FAN_EXTRA}"

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
        # The same fan-out runs with the shipped defaults (20 ms batch window); only the chat
        # limits are lifted for the publishers.
        local cfg="$DATA/default.toml"
        sed -n '/^\[ingest\]/,/^room_limit/p;/^\[gateway\]/,/^max_rooms/p' bench/server.toml >"$cfg"
        start_server "$cfg"
        bench fanout-1x5000-default fanout $FAN_1 --rate 200 --duration 20
        start_server "$cfg"
        bench fanout-100x50-default fanout $FAN_100 --rate 12000 --duration 20 ;;
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
