#!/usr/bin/env bash
# scripts/redis.sh — throwaway Redis server for Bulkhead tests (crates/limits).
#
# The server is Debian's `redis-server` (which pulls in `redis-tools`, i.e.
# redis-cli). If redis-server is not on PATH it is installed with apt-get
# (apt-get update first, only when installing). Installing needs root.
#
# Usage:
#   scripts/redis.sh start DIR   start a server whose files live in DIR (created if needed);
#                                last stdout line = redis://127.0.0.1:PORT (also written to DIR/url).
#                                If a server of DIR is already running, just prints its URL.
#   scripts/redis.sh stop DIR    shut it down (no persistence); no-op if not running
#
# DIR layout:
#   DIR/redis.pid   pid of the server (written by redis-server itself)
#   DIR/log         server log (its tail goes to stderr on failure)
#   DIR/url         URL of the running server
#
# The server is a throwaway: bound to 127.0.0.1 only, no RDB snapshots, no AOF. Each start
# picks a free port (python3 binding port 0); if another process takes the port in the gap,
# the start is retried. Always read the URL from stdout or DIR/url.
set -Eeuo pipefail

LOGF=""   # set by start/stop; its tail is printed on failure

log() { printf 'redis.sh: %s\n' "$*" >&2; }

fail() {
  log "error: $*"
  if [[ -n $LOGF && -s $LOGF ]]; then
    printf -- '----- last 40 lines of %s -----\n' "$LOGF" >&2
    tail -n 40 "$LOGF" >&2 || true
    printf -- '----- end of log -----\n' >&2
  fi
  exit 1
}

usage() {
  echo "usage: $0 start DIR | stop DIR" >&2
  exit 2
}

# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------

ensure_installed() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return 0
  fi
  [[ $(id -u) -eq 0 ]] || fail "redis-server is not installed and we are not root; install Debian's redis-server package"
  command -v apt-get >/dev/null 2>&1 || fail "redis-server is not installed and apt-get is not available"

  # Debian's postinst would start the packaged service on port 6379. A policy-rc.d
  # that exits 101 forbids that; provide one for the duration of the install if the
  # machine has none (container images usually do).
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from bulkhead scripts/redis.sh\nexit 101\n' >"$policy"
    chmod 755 -- "$policy"
    own_policy=1
    # shellcheck disable=SC2064
    trap "rm -f -- '$policy'" EXIT
  fi

  log "installing redis-server with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || fail "apt-get update failed"
  apt-get install -y -qq --no-install-recommends redis-server >&2 \
    || fail "apt-get install redis-server failed"

  if [[ $own_policy -eq 1 ]]; then
    rm -f -- "$policy"
    trap - EXIT
  fi
  command -v redis-server >/dev/null 2>&1 || fail "redis-server still not on PATH after installing"
  command -v redis-cli >/dev/null 2>&1 || fail "redis-cli not on PATH after installing (package redis-tools)"
  log "$(redis-server --version)"
}

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

free_port() {
  python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Set the globals DIR PIDF LOGF URLF from $1.
set_paths() {
  [[ -n ${1:-} ]] || usage
  DIR=$(realpath -m -- "$1")
  PIDF=$DIR/redis.pid
  LOGF=$DIR/log
  URLF=$DIR/url
}

# Whether process $1 exists and is not a zombie (a killed daemon stays one until pid 1
# reaps it, which some container inits do late or never).
alive() {
  local stat state
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  state=${stat##*) }
  [[ ${state:0:1} != Z ]]
}

# The pid of DIR's server if it is alive (and is a redis-server), else returns 1.
running_pid() {
  [[ -s $PIDF ]] || return 1
  local pid
  pid=$(<"$PIDF")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  # Guard against a recycled pid belonging to something else.
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server* ]] || return 1
  printf '%s\n' "$pid"
}

port_of_url() {
  local url=$1
  [[ $url =~ ^redis://127\.0\.0\.1:([0-9]+)$ ]] || return 1
  printf '%s\n' "${BASH_REMATCH[1]}"
}

pong() { [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]; }

write_url() {
  printf '%s\n' "$1" >"$URLF.tmp"
  mv -f -- "$URLF.tmp" "$URLF"
}

# ---------------------------------------------------------------------------
# start / stop
# ---------------------------------------------------------------------------

cmd_start() {
  set_paths "${1:-}"
  ensure_installed
  mkdir -p -- "$DIR"
  touch -- "$LOGF"

  # Already running: print its URL (idempotent start).
  local pid url port
  if pid=$(running_pid); then
    if [[ -s $URLF ]] && url=$(<"$URLF") && port=$(port_of_url "$url") && pong "$port"; then
      log "redis in $DIR is already running (pid $pid)"
      printf '%s\n' "$url"
      return 0
    fi
    fail "a redis-server (pid $pid) runs for $DIR but does not answer at the URL in $URLF; stop it first"
  fi

  rm -f -- "$URLF" "$PIDF"
  printf '\n===== redis.sh start %s =====\n' "$(date -Is)" >>"$LOGF"

  local attempt started=0
  for attempt in 1 2 3 4 5; do
    port=$(free_port) || fail "could not find a free TCP port (python3)"
    log "starting redis-server on 127.0.0.1:$port (attempt $attempt)"
    local before
    before=$(stat -c %s -- "$LOGF")
    redis-server --bind 127.0.0.1 --port "$port" \
        --save '' --appendonly no \
        --daemonize yes --dir "$DIR" --pidfile "$PIDF" --logfile "$LOGF" \
        >>"$LOGF" 2>&1 \
      || fail "redis-server refused to start"

    # Wait up to ~10 s for PONG; give up early if the daemon died (e.g. port taken).
    local i
    for i in $(seq 1 100); do
      if pong "$port"; then
        started=1
        break
      fi
      if (( i > 5 )) && ! running_pid >/dev/null; then
        break
      fi
      sleep 0.1
    done
    [[ $started -eq 1 ]] && break
    if tail -c "+$((before + 1))" -- "$LOGF" | grep -qiE 'address already in use|could not create server tcp listening socket'; then
      log "port $port was taken, retrying"
      continue
    fi
    if pid=$(running_pid); then
      kill "$pid" 2>/dev/null || true
    fi
    fail "redis-server did not answer PING on port $port"
  done
  [[ $started -eq 1 ]] || fail "redis-server failed to start after $attempt attempts (port conflicts)"

  url="redis://127.0.0.1:$port"
  write_url "$url"
  printf '%s\n' "$url"
}

cmd_stop() {
  set_paths "${1:-}"
  local pid
  if ! pid=$(running_pid); then
    log "no redis running for $DIR; nothing to stop"
    rm -f -- "$URLF"
    return 0
  fi
  local url port
  if [[ -s $URLF ]] && url=$(<"$URLF") && port=$(port_of_url "$url") \
      && command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  fi
  # Wait for it to go; fall back to signals if SHUTDOWN did not work.
  local i
  for i in $(seq 1 50); do
    alive "$pid" || break
    (( i == 20 )) && kill "$pid" 2>/dev/null || true
    sleep 0.1
  done
  if alive "$pid"; then
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f -- "$URLF" "$PIDF"
  log "stopped redis in $DIR"
}

case ${1:-} in
  start) [[ $# -eq 2 ]] || usage; cmd_start "$2" ;;
  stop)  [[ $# -eq 2 ]] || usage; cmd_stop "$2" ;;
  *)     usage ;;
esac
