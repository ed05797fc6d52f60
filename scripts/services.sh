#!/usr/bin/env bash
# The services of the distributed mode, on loopback, for tests and local clusters:
#   Redis 7 (routes, presence, limits, bans, acks)      127.0.0.1:$RC_REDIS_PORT  (16379)
#   MariaDB 10.11 (the local stand-in for TiDB)          127.0.0.1:$RC_MYSQL_PORT  (13306)
#   etcd 3.4 (discovery)                                 127.0.0.1:$RC_ETCD_PORT   (12379)
#   a Kafka-compatible broker (tansu, memory storage)    127.0.0.1:$RC_KAFKA_PORT  (19092)
#
#   scripts/services.sh up [SERVICE…]     install what is missing, start what is not running
#   scripts/services.sh down [SERVICE…]   stop what this script started
#   scripts/services.sh status [SERVICE…] exit non-zero when one is down
#   scripts/services.sh env               the URLs tests read (eval-able; RC_TEST_*, not ROOMCAST_*,
#                                         which the server would take for settings)
#
# SERVICE is redis, mysql, etcd or kafka (default: all). Data and logs live under one directory,
# $RC_SERVICES_DIR (default .services/ in the checkout, git-ignored). The ports are not the
# standard ones, so a Redis or MariaDB the machine already runs is never touched. Debian's
# packages are installed with apt-get (as root or through sudo); tansu with
# `cargo install tansu --locked --features dynostore` (8-13 minutes, once per machine).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=${RC_SERVICES_DIR:-$root/.services}
redis_port=${RC_REDIS_PORT:-16379}
mysql_port=${RC_MYSQL_PORT:-13306}
etcd_port=${RC_ETCD_PORT:-12379}
etcd_peer_port=${RC_ETCD_PEER_PORT:-12380}
kafka_port=${RC_KAFKA_PORT:-19092}
all=(redis mysql etcd kafka)

log() { printf 'services: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

apt_install() {
  local missing=()
  # Installed means "install ok installed": a removed package keeps its config files and
  # `dpkg -s` still succeeds for it.
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  # Installing a server package must not start its own instance on the standard port.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d > /dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  if ! $sudo apt-get install -y -q "${missing[@]}" > /dev/null; then
    $sudo apt-get update -q > /dev/null
    $sudo apt-get install -y -q "${missing[@]}" > /dev/null
  fi
  $sudo rm -f /usr/sbin/policy-rc.d
}

tansu_bin() {
  command -v tansu 2> /dev/null || { [ -x "$HOME/.cargo/bin/tansu" ] && echo "$HOME/.cargo/bin/tansu"; } || true
}

install_tansu() {
  [ -n "$(tansu_bin)" ] && return 0
  log "installing tansu (cargo install, 8-13 minutes, once per machine)"
  cargo install tansu --locked --features dynostore > "$dir/tansu-install.log" 2>&1 ||
    die "cargo install tansu failed (see $dir/tansu-install.log)"
}

# Whether something answers on a TCP port of 127.0.0.1.
port_open() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2> /dev/null; }

# Whether process $1 still runs: an exited one may linger as a zombie where nothing reaps
# orphans (some container inits), and `kill -0` succeeds on those.
running() {
  kill -0 "$1" 2> /dev/null || return 1
  ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"
}

# Waits until `check` succeeds (up to $2 seconds); prints the log on failure.
wait_for() {
  local what=$1 secs=$2 logfile=$3 check=$4
  for _ in $(seq 1 $((secs * 10))); do
    if $check; then return 0; fi
    sleep 0.1
  done
  [ -f "$logfile" ] && tail -20 "$logfile" >&2
  die "$what did not come up within ${secs}s"
}

# Stops the process in pid file $2 (service $1) with SIGTERM and returns once it has exited, so
# an `up` right after finds its port free and its data written out (tests restart services
# mid-suite). A service that will not stop within $3 seconds is an error, not a SIGKILL: these
# hold data, and a graceful stop is what the caller asked for.
stop_pid() {
  local what=$1 pidf=$2 secs=$3 pid
  pid_alive "$pidf" || {
    rm -f "$pidf"
    return 0
  }
  pid=$(cat "$pidf")
  kill "$pid" 2> /dev/null || true
  for _ in $(seq 1 $((secs * 10))); do
    running "$pid" || {
      rm -f "$pidf"
      return 0
    }
    sleep 0.1
  done
  die "$what (pid $pid) did not exit within ${secs}s"
}

# ---- Redis ----------------------------------------------------------------------------------

redis_ok() { redis-cli -h 127.0.0.1 -p "$redis_port" ping 2> /dev/null | grep -q PONG; }

redis_up() {
  redis_ok && return 0
  apt_install redis-server redis-tools
  mkdir -p "$dir/redis"
  # Persistence on: the ack store holds critical messages still waiting for their user's ack,
  # and bans, mutes and route leases live here too; all must survive a restart. The append-only
  # file is fsynced every second (a crash of the machine may lose the last second; a graceful
  # stop or a crash of Redis alone loses nothing). No RDB snapshots: the AOF is the record.
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir/redis" \
    --daemonize yes --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log" \
    --save "" --appendonly yes --appendfsync everysec --protected-mode yes > /dev/null
  wait_for Redis 20 "$dir/redis/redis.log" redis_ok
}

# On SIGTERM Redis fsyncs its append-only file before it exits: a graceful stop loses nothing.
redis_down() { stop_pid Redis "$dir/redis/redis.pid" 60; }

# ---- MariaDB ----------------------------------------------------------------------------------

mysql_ok() {
  mariadb --protocol=tcp -h 127.0.0.1 -P "$mysql_port" -u roomcast -proomcast \
    -e 'select 1' roomcast > /dev/null 2>&1
}

mysql_up() {
  mysql_ok && return 0
  apt_install mariadb-server mariadb-client
  local d=$dir/mysql
  mkdir -p "$d"
  if [ ! -d "$d/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$d/data" --user="$(id -un)" \
      --auth-root-authentication-method=normal --skip-test-db > "$d/install.log" 2>&1 ||
      {
        cat "$d/install.log" >&2
        die "mariadb-install-db failed"
      }
  fi
  local user_opt=()
  [ "$(id -u)" -eq 0 ] && user_opt=(--user=root)
  mariadbd --no-defaults --datadir="$d/data" --bind-address=127.0.0.1 --port="$mysql_port" \
    --socket="$d/mysqld.sock" --pid-file="$d/mysqld.pid" --log-error="$d/error.log" \
    --skip-name-resolve --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=2 \
    "${user_opt[@]}" > /dev/null 2>&1 &
  mysql_socket_ok() { mariadb-admin --socket="$d/mysqld.sock" -u root ping > /dev/null 2>&1; }
  wait_for MariaDB 60 "$d/error.log" mysql_socket_ok
  mariadb --socket="$d/mysqld.sock" -u root <<'SQL'
CREATE DATABASE IF NOT EXISTS roomcast CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS 'roomcast'@'127.0.0.1' IDENTIFIED BY 'roomcast';
GRANT ALL PRIVILEGES ON *.* TO 'roomcast'@'127.0.0.1';
SQL
  wait_for MariaDB 20 "$d/error.log" mysql_ok
}

mysql_down() { stop_pid MariaDB "$dir/mysql/mysqld.pid" 60; }

# ---- etcd --------------------------------------------------------------------------------------

etcd_ok() {
  ETCDCTL_API=3 etcdctl --endpoints="http://127.0.0.1:$etcd_port" endpoint health > /dev/null 2>&1
}

etcd_up() {
  etcd_ok && return 0
  apt_install etcd-server etcd-client
  local d=$dir/etcd
  mkdir -p "$d"
  # Debian's etcd refuses to start on some architectures unless told it may.
  case "$(uname -m)" in x86_64 | amd64) ;; *) export ETCD_UNSUPPORTED_ARCH="$(dpkg --print-architecture)" ;; esac
  etcd --name roomcast-test --data-dir "$d/data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "roomcast-test=http://127.0.0.1:$etcd_peer_port" \
    > "$d/etcd.log" 2>&1 &
  echo $! > "$d/etcd.pid"
  wait_for etcd 30 "$d/etcd.log" etcd_ok
}

etcd_down() { stop_pid etcd "$dir/etcd/etcd.pid" 30; }

# ---- Kafka (tansu) -----------------------------------------------------------------------------

kafka_ok() { pid_alive "$dir/kafka/tansu.pid" && port_open "$kafka_port"; }

kafka_up() {
  kafka_ok && return 0
  port_open "$kafka_port" && die "port $kafka_port is taken by something this script did not start"
  mkdir -p "$dir/kafka"
  install_tansu
  "$(tansu_bin)" broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine memory://tansu/ > "$dir/kafka/tansu.log" 2>&1 &
  echo $! > "$dir/kafka/tansu.pid"
  wait_for "the Kafka broker (tansu)" 30 "$dir/kafka/tansu.log" kafka_ok
}

# Returns once the broker has exited, so an `up` right after finds its port free.
kafka_down() {
  local pidf=$dir/kafka/tansu.pid
  if pid_alive "$pidf"; then
    local pid
    pid=$(cat "$pidf")
    kill "$pid"
    for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then
      log "tansu did not stop within 10s; killing it"
      kill -9 "$pid"
      for _ in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
    fi
  fi
  rm -f "$pidf"
}

# ---- commands ----------------------------------------------------------------------------------

print_env() {
  cat << EOF
export RC_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/
export RC_TEST_MYSQL_URL=mysql://roomcast:roomcast@127.0.0.1:$mysql_port/roomcast
export RC_TEST_ETCD_URL=etcd://127.0.0.1:$etcd_port
export RC_TEST_KAFKA_URL=kafka://127.0.0.1:$kafka_port
EOF
}

cmd=${1:-status}
shift || true
services=("$@")
[ ${#services[@]} -eq 0 ] && services=("${all[@]}")
for s in "${services[@]}"; do
  case " ${all[*]} " in *" $s "*) ;; *) die "unknown service $s (one of: ${all[*]})" ;; esac
done
mkdir -p "$dir"

case "$cmd" in
  up)
    for s in "${services[@]}"; do
      "${s}_up"
      log "$s is up"
    done
    ;;
  down)
    for s in "${services[@]}"; do "${s}_down" || true; done
    ;;
  status)
    down=0
    for s in "${services[@]}"; do
      if "${s}_ok"; then echo "$s: up"; else
        echo "$s: down"
        down=1
      fi
    done
    exit $down
    ;;
  env) print_env ;;
  *) die "usage: scripts/services.sh up|down|status|env [redis|mysql|etcd|kafka…]" ;;
esac
