#!/usr/bin/env bash
# The distributed mode under load (docs/benchmarks.md, "The local cluster"): builds the release
# binaries, starts the local cluster (scripts/cluster.sh: the services, 2 ingest nodes, 2
# workers, 2 gateways) from them in a directory of its own, runs roomcast-bench against both
# gateways and reports the CPU seconds each process used during the run (from /proc).
# Nothing else should be running: the cluster, the services and the load generator share the
# machine.
#
#   bench/cluster.sh                  every scenario below
#   bench/cluster.sh cluster-1x10000  just that one
#
# Scenarios: cluster-1x10000 (1 room x 10,000 subscribers, half on each gateway; 100 msg/s =
# 1,000,000 deliveries/s) and cluster-100x100 (100 rooms x 100; 400 msg/s). RATE (messages/s)
# and DURATION (s, default 20) override the defaults. The test broker keeps every record in
# memory and slows down as its log grows, so each scenario starts with it restarted.
# Results go to docs/bench/NAME.json (OUT=dir writes elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-docs/bench}
export ROOMCAST_JWT_SECRET=benchsecret-benchsecret-benchsecret
BENCH=target/release/roomcast-bench
URLS=(--url ws://127.0.0.1:18081/ws --url ws://127.0.0.1:18082/ws)
export RC_BIN=$PWD/target/release/roomcast
export RC_CLUSTER_DIR
RC_CLUSTER_DIR=$(mktemp -d)

# The shipped defaults, except what the load generator trips by design: publishers send far
# above a viewer's chat limits and join many rooms; thousands of connections come from a few
# loopback addresses.
export ROOMCAST_INGEST__USER_LIMIT__RATE=0 ROOMCAST_INGEST__USER_LIMIT__BURST=1
export ROOMCAST_INGEST__ROOM_LIMIT__RATE=0 ROOMCAST_INGEST__ROOM_LIMIT__BURST=1
export ROOMCAST_GATEWAY__MAX_ROOMS_PER_CONN=1000
export ROOMCAST_GATEWAY__JOIN_LIMIT__RATE=0 ROOMCAST_GATEWAY__JOIN_LIMIT__BURST=1
export ROOMCAST_HTTP__MAX_CONNECTIONS_PER_IP=0

cleanup() {
    scripts/cluster.sh down || true
    rm -rf "$RC_CLUSTER_DIR"
}
trap cleanup EXIT

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p roomcast-server -p roomcast-bench
mkdir -p "$OUT"

# name → pid of every process whose CPU is reported
procs() {
    for n in gw1 gw2 ingest1 ingest2 worker1 worker2; do
        echo "$n $(cat "$RC_CLUSTER_DIR/$n/pid")"
    done
    for s in tansu redis-server mariadbd etcd; do
        local pid
        pid=$(pgrep -o -f "^[^ ]*$s" || true)
        [[ -n "$pid" ]] && echo "$s $pid"
    done
}

# CPU ticks (user + system) of a pid
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

bench() { # $1: output name, then roomcast-bench arguments
    local name=$1
    shift
    # A fresh test broker (an empty log) and a fresh cluster on it.
    scripts/cluster.sh down
    scripts/services.sh down kafka
    scripts/cluster.sh up > /dev/null
    # A short warm-up: the worker group settles and every gateway holds its channels.
    "$BENCH" fanout "${URLS[@]}" --secret "$ROOMCAST_JWT_SECRET" --rooms 1 --subscribers 20 \
        --publishers 1 --rate 20 --duration 3 --quiet > /dev/null
    declare -A before
    while read -r n pid; do before[$n]=$(ticks "$pid"); done < <(procs)
    local start
    start=$(date +%s.%N)
    local args=("$@" "${URLS[@]}" --secret "$ROOMCAST_JWT_SECRET" --json "$OUT/$name.json")
    echo "== $name: $BENCH ${args[*]}"
    "$BENCH" "${args[@]}"
    local wall
    wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}')
    local hz
    hz=$(getconf CLK_TCK)
    echo "CPU seconds per process over $wall s (connect, run and drain):"
    while read -r n pid; do
        local t
        t=$(ticks "$pid")
        awk -v n="$n" -v t="$t" -v b="${before[$n]:-0}" -v hz="$hz" \
            'BEGIN {printf "  %-12s %6.1f\n", n, (t - b) / hz}'
    done < <(procs)
}

# A connection's chats are answered in order, each after the broker acknowledged it (10-30 ms
# with the test broker under this load), so one publisher connection carries a few dozen
# messages/s: the rate is spread over 10 and 40 publishers.
RATE_1=${RATE:-100}
RATE_100=${RATE:-400}
DURATION=${DURATION:-20}

run() {
    case "$1" in
    cluster-1x10000)
        bench cluster-1x10000 fanout --rooms 1 --subscribers 10000 --publishers 10 \
            --rate "$RATE_1" --duration "$DURATION" ;;
    cluster-100x100)
        bench cluster-100x100 fanout --rooms 100 --subscribers 10000 --publishers 40 \
            --rate "$RATE_100" --duration "$DURATION" ;;
    *)
        echo "unknown scenario $1" >&2
        exit 2 ;;
    esac
}

if [[ $# -eq 0 ]]; then
    set -- cluster-1x10000 cluster-100x100
fi
for s in "$@"; do
    run "$s"
done
