#!/usr/bin/env bash
# A local cluster of the distributed mode on loopback: the services (scripts/services.sh), then
# 2 ingest nodes, 2 room workers and 2 gateways, each its own `roomcast` process.
#
#   scripts/cluster.sh up       build, start everything that is not running, print the URLs
#   scripts/cluster.sh down     stop the roles (the services stay: scripts/services.sh down)
#   scripts/cluster.sh status   exit non-zero when a role or service is down
#
# Ports: gateways http 18081/18082 (WebSocket ws://127.0.0.1:1808x/ws, demo page, API) and gRPC
# 19181/19182; ingest gRPC 19191/19192 (health on 18091/18092); workers health on
# 18101/18102. Configs, logs and pids live in $RC_CLUSTER_DIR (default .cluster/). The JWT
# secret is ROOMCAST_JWT_SECRET when set, otherwise one generated once into .cluster/secret;
# the API key is in .cluster/api_key.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=${RC_CLUSTER_DIR:-$root/.cluster}
bin=${RC_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/roomcast}

log() { printf 'cluster: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# name role http grpc node_number
nodes=(
  "ingest1 ingest 18091 19191 11"
  "ingest2 ingest 18092 19192 12"
  "worker1 worker 18101 0 21"
  "worker2 worker 18102 0 22"
  "gw1 gateway 18081 19181 31"
  "gw2 gateway 18082 19182 32"
)

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2> /dev/null; }
healthy() { curl -sf "http://127.0.0.1:$1/readyz" > /dev/null 2>&1; }

write_config() {
  local name=$1 role=$2 http=$3 grpc=$4 number=$5
  eval "$(scripts/services.sh env)"
  mkdir -p "$dir/$name"
  {
    echo "node_id = \"$name\""
    echo "listen = \"127.0.0.1:$http\""
    echo "data_dir = \"$dir/$name\""
    echo "shutdown_grace_ms = 2000"
    echo "[api]"
    echo "keys = [\"$(cat "$dir/api_key")\"]"
    echo "[redis]"
    echo "url = \"$RC_TEST_REDIS_URL\""
    echo "key_prefix = \"cluster:\""
    echo "[store]"
    echo "url = \"$RC_TEST_MYSQL_URL\""
    echo "[bus]"
    echo "url = \"$RC_TEST_KAFKA_URL\""
    echo "topic = \"room_chat\""
    echo "partitions = 4"
    echo "[cluster]"
    echo "etcd_url = \"$RC_TEST_ETCD_URL\""
    echo "etcd_prefix = \"/roomcast-cluster/\""
    [ "$grpc" != 0 ] && echo "grpc_listen = \"127.0.0.1:$grpc\""
    echo "[ingest]"
    echo "node_number = $number"
  } > "$dir/$name/roomcast.toml"
}

up() {
  scripts/services.sh up redis mysql etcd kafka
  [ -n "${RC_BIN:-}" ] || cargo build -p roomcast-server --bin roomcast
  mkdir -p "$dir"
  [ -f "$dir/api_key" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/api_key"
  if [ -z "${ROOMCAST_JWT_SECRET:-}" ]; then
    [ -f "$dir/secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/secret"
    export ROOMCAST_JWT_SECRET
    ROOMCAST_JWT_SECRET=$(cat "$dir/secret")
  fi
  for n in "${nodes[@]}"; do
    read -r name role http grpc number <<< "$n"
    if pid_alive "$dir/$name/pid"; then continue; fi
    write_config "$name" "$role" "$http" "$grpc" "$number"
    "$bin" "$role" --config "$dir/$name/roomcast.toml" > "$dir/$name/log" 2>&1 &
    echo $! > "$dir/$name/pid"
    for _ in $(seq 1 300); do
      healthy "$http" && break
      pid_alive "$dir/$name/pid" || {
        tail -20 "$dir/$name/log" >&2
        die "$name exited"
      }
      sleep 0.1
    done
    healthy "$http" || {
      tail -20 "$dir/$name/log" >&2
      die "$name is not ready after 30 s"
    }
    log "$name ($role) is up"
  done
  echo "gateways:"
  echo "  ws://127.0.0.1:18081/ws   demo page http://127.0.0.1:18081/"
  echo "  ws://127.0.0.1:18082/ws   demo page http://127.0.0.1:18082/"
  echo "API key: $(cat "$dir/api_key")"
}

down() {
  # Gateways first (they drain their clients), workers last (they flush and commit).
  for name in gw1 gw2 ingest1 ingest2 worker1 worker2; do
    local pidf=$dir/$name/pid
    if pid_alive "$pidf"; then
      local pid
      pid=$(cat "$pidf")
      kill "$pid"
      for _ in $(seq 1 300); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidf"
  done
}

status() {
  local down=0
  scripts/services.sh status || down=1
  for n in "${nodes[@]}"; do
    read -r name role http _ _ <<< "$n"
    if pid_alive "$dir/$name/pid" && healthy "$http"; then echo "$name ($role): up"; else
      echo "$name ($role): down"
      down=1
    fi
  done
  return $down
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: scripts/cluster.sh up|down|status" ;;
esac
