#!/usr/bin/env bash
# Bulkhead's main job on the embedded default (SQLite), on a fresh machine:
#   bash scripts/quickstart.sh
# Builds the binary, starts `bulkhead serve` on a scratch data directory and
# walks through the API with curl: an operator creates two tenants and their
# keys, each tenant calls as itself, and one tenant's guess at the other's
# ids gets 404; a knowledge base is filled and searched with the offline
# embedding model; code runs in the sandbox once the operator allows it.
# Stops the server at the end. (Until `bulkhead demo` lands, this
# walk-through is the main job.) It installs what it needs: the embedding
# model (scripts/models.sh) and the sandbox (scripts/sandbox.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need curl curl
need python3 python3
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

# BULKHEAD_BIN lets the test command reuse the binary its build just made
# (a plain `cargo build` resolves features differently and would rebuild).
if [ -n "${BULKHEAD_BIN:-}" ]; then
    bin=$BULKHEAD_BIN
else
    step "build"
    cargo build --locked --bin bulkhead
    bin=target/debug/bulkhead
fi

step "the offline embedding model and the code sandbox"
BULKHEAD_MINILM_DIR=$(bash scripts/models.sh | tail -n 1)
export BULKHEAD_MINILM_DIR
bash scripts/sandbox.sh

data=$(mktemp -d /tmp/bulkhead-quickstart.XXXXXX)
log="$data/serve.log"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$data"
}
trap cleanup EXIT

step "bulkhead serve --listen 127.0.0.1:$port --data-dir $data"
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$data/stdout" 2>"$log" &
server_pid=$!
for _ in $(seq 1 100); do
    grep -q '^listening on' "$data/stdout" 2>/dev/null && break
    sleep 0.1
done
grep -q '^listening on' "$data/stdout" || { cat "$log" >&2; echo "server did not start" >&2; exit 1; }
cat "$data/stdout"
OP=$(grep -o 'bh_op_[A-Za-z0-9_-]*' "$data/stdout")
api="http://127.0.0.1:$port"

# call METHOD PATH KEY [JSON] — prints the response, fails on a 5xx.
call() {
    local method=$1 path=$2 key=$3 body=${4:-}
    local args=(-sS -X "$method" "$api$path" -H "Authorization: Bearer $key" -w '\n%{http_code}')
    [ -n "$body" ] && args+=(-H 'Content-Type: application/json' -d "$body")
    local out code
    out=$(curl "${args[@]}")
    code=${out##*$'\n'}
    out=${out%$'\n'*}
    printf '%s %s -> %s\n%s\n' "$method" "$path" "$code" "$out" >&2
    [ "$code" -lt 500 ] || exit 1
    printf '%s' "$out"
}
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

step "health"
curl -sS "$api/healthz"; echo; curl -sS "$api/readyz"; echo

step "operator creates two tenants"
ACME=$(call POST /v1/tenants "$OP" '{"name":"acme","tier":"shared","metadata":{"plan":"gold"}}' | field id)
GLOBEX=$(call POST /v1/tenants "$OP" '{"name":"globex","tier":"isolated"}' | field id)

step "operator creates a key for each"
ACME_KEY=$(call POST "/v1/tenants/$ACME/keys" "$OP" '{"name":"acme app","scope":"tenant_admin"}' | field secret)
GLOBEX_KEY=$(call POST "/v1/tenants/$GLOBEX/keys" "$OP" '{"name":"globex app","scope":"tenant_admin"}' | field secret)

step "each tenant calls as itself"
[ "$(call GET /v1/tenant "$ACME_KEY" | field name)" = acme ]
[ "$(call GET /v1/tenant "$GLOBEX_KEY" | field name)" = globex ]
ACME_KEY_ID=$(call GET /v1/keys "$ACME_KEY" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')

step "globex guesses acme's key id: 404, and no operator routes"
code=$(curl -s -o /dev/null -w '%{http_code}' "$api/v1/keys/$ACME_KEY_ID" -H "Authorization: Bearer $GLOBEX_KEY")
echo "GET /v1/keys/$ACME_KEY_ID as globex -> $code"; [ "$code" = 404 ]
code=$(curl -s -o /dev/null -w '%{http_code}' "$api/v1/tenants" -H "Authorization: Bearer $GLOBEX_KEY")
echo "GET /v1/tenants as globex -> $code"; [ "$code" = 403 ]
code=$(curl -s -o /dev/null -w '%{http_code}' "$api/v1/tenant")
echo "GET /v1/tenant without a key -> $code"; [ "$code" = 401 ]

step "the operator lists tenants"
call GET /v1/tenants "$OP" >/dev/null

step "acme fills a knowledge base and searches it"
KB=$(call POST /v1/knowledge-bases "$ACME_KEY" '{"name":"handbook"}' | field id)
DOC=$(call POST "/v1/knowledge-bases/$KB/documents" "$ACME_KEY" \
  '{"name":"wifi.md","content":"# Office\n\nThe guest wifi network is called acme-guest and its password is on the fridge."}' | field id)
for _ in $(seq 1 100); do
    status=$(call GET "/v1/knowledge-bases/$KB/documents/$DOC" "$ACME_KEY" 2>/dev/null | field status)
    [ "$status" = ready ] && break
    sleep 0.2
done
[ "$status" = ready ]
hits=$(call POST "/v1/knowledge-bases/$KB/search" "$ACME_KEY" '{"query":"what is the wifi called?","k":1}')
[[ "$hits" == *acme-guest* ]]
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$api/v1/knowledge-bases/$KB/search" \
  -H "Authorization: Bearer $GLOBEX_KEY" -H 'Content-Type: application/json' -d '{"query":"wifi"}')
echo "POST /v1/knowledge-bases/$KB/search as globex -> $code"; [ "$code" = 404 ]

step "code execution: refused until the operator enables it for acme"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$api/v1/sandbox/executions" \
  -H "Authorization: Bearer $ACME_KEY" -H 'Content-Type: application/json' -d '{"language":"python","code":"print(1)"}')
echo "POST /v1/sandbox/executions (disabled) -> $code"; [ "$code" = 403 ]
call PUT "/v1/tenants/$ACME/sandbox" "$OP" '{"enabled":true,"languages":["python"]}' >/dev/null
[ "$(call POST /v1/sandbox/executions "$ACME_KEY" '{"language":"python","code":"print(sum(range(10)))"}' | field stdout)" = 45 ]
call GET "/v1/audit?action=sandbox." "$ACME_KEY" >/dev/null

step "done: the walk-through passed"
