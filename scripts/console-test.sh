#!/usr/bin/env bash
# The web console, end to end in a real headless Chromium:
#   bash scripts/console-test.sh
# Installs what it needs, idempotently: Debian's `chromium` when
# /usr/bin/chromium is missing, Debian's `nodejs` and `npm` when `node` /
# `npm` are missing, and the pinned `playwright-core` (the lock file in
# crates/server/console/tests/) into a cache folder (/var/cache/bulkhead as
# root, else ~/.cache/bulkhead; BULKHEAD_CACHE overrides). Then it starts
# `bulkhead serve` ($BULKHEAD_BIN, default target/debug/bulkhead — built if
# missing) on a loopback port with a scratch data directory and a known
# operator key, seeds two tenants through the API with curl (chat
# completions, an agent, runs with a tool call, a knowledge base, keys, a
# canary in each piece of the second tenant's data) and a third tenant that
# gets refused (policy, budget, rate limit), and runs
# crates/server/console/tests/console.test.mjs. Screenshots go to
# target/console-artifacts/.
set -euo pipefail
# Failures inside $(...) stop the script too.
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
apt_install() {
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# --- what the test needs ---------------------------------------------------
for tool in curl python3; do
    command -v "$tool" >/dev/null || { log "installing $tool"; apt_install "$tool"; }
done
if [ ! -x /usr/bin/chromium ]; then
    log "installing Debian's chromium"
    apt_install chromium
fi
if ! command -v node >/dev/null; then
    log "installing Debian's nodejs"
    apt_install nodejs
fi
if ! command -v npm >/dev/null; then
    log "installing Debian's npm"
    apt_install npm
fi

tests=crates/server/console/tests
if [ "$(id -u)" = 0 ]; then cache=${BULKHEAD_CACHE:-/var/cache/bulkhead}; else cache=${BULKHEAD_CACHE:-$HOME/.cache/bulkhead}; fi
# One folder per lock file: a new pin gets a fresh install, an old one stays valid.
lock_sum=$(sha256sum "$tests/package-lock.json" | cut -c1-16)
node_dir="$cache/console-node-$lock_sum"
if [ ! -f "$node_dir/.installed" ]; then
    log "installing playwright-core (pinned in $tests/package-lock.json) into $node_dir"
    mkdir -p "$node_dir"
    cp "$tests/package.json" "$tests/package-lock.json" "$node_dir/"
    # --ignore-scripts: the browser is Debian's; nothing is downloaded at install.
    (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    touch "$node_dir/.installed"
fi

# The offline embedding model, for the knowledge base (scripts/test.sh exports it already).
if [ -z "${BULKHEAD_MINILM_DIR:-}" ]; then
    log "the offline embedding model (scripts/models.sh)"
    BULKHEAD_MINILM_DIR=$(bash scripts/models.sh | tail -n 1)
    export BULKHEAD_MINILM_DIR
fi

bin=${BULKHEAD_BIN:-target/debug/bulkhead}
if [ ! -x "$bin" ]; then
    log "building $bin"
    cargo build --locked --bin bulkhead
fi

# --- the server ------------------------------------------------------------
work=$(mktemp -d /tmp/bulkhead-console.XXXXXX)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
OP=$(python3 -c 'import secrets; print(f"bh_op_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}")')
api="http://127.0.0.1:$port"
log "bulkhead serve on $api (data in $work/data)"
BULKHEAD_OPERATOR_KEY=$OP BULKHEAD_LOG=warn \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/stdout" 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 1 150); do
    grep -q '^listening on' "$work/stdout" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
grep -q '^listening on' "$work/stdout" || { cat "$work/serve.log" >&2; echo "server did not start" >&2; exit 1; }

# --- seeding, through the API ------------------------------------------------
curl -sS "$api/openapi.json" >"$work/openapi.json"
# call METHOD PATH KEY [JSON] — the response body; fails unless 2xx.
call() {
    local method=$1 path=$2 key=$3 body=${4:-}
    local args=(-sS -X "$method" "$api$path" -H "Authorization: Bearer $key" -w '\n%{http_code}')
    [ -n "$body" ] && args+=(-H 'Content-Type: application/json' -d "$body")
    local out code
    out=$(curl "${args[@]}")
    code=${out##*$'\n'}
    out=${out%$'\n'*}
    if [ "${code:0:1}" != 2 ]; then
        printf '%s %s -> %s\n%s\n' "$method" "$path" "$code" "$out" >&2
        exit 1
    fi
    printf '%s' "$out"
}
# refused METHOD PATH KEY STATUS [JSON] — expects exactly that error status.
refused() {
    local method=$1 path=$2 key=$3 want=$4 body=${5:-}
    local args=(-sS -o /dev/null -X "$method" "$api$path" -H "Authorization: Bearer $key" -w '%{http_code}')
    [ -n "$body" ] && args+=(-H 'Content-Type: application/json' -d "$body")
    local code
    code=$(curl "${args[@]}")
    [ "$code" = "$want" ] || { echo "$method $path: expected $want, got $code" >&2; exit 1; }
}
field() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[int(k)] if k.isdigit() else v[k]
print(v)' "$1"; }

rand=$(python3 -c 'import secrets; print(secrets.token_hex(5))')
chat() { printf '{"model":"builtin/scripted","messages":[{"role":"user","content":"%s"}]}' "$1"; }
tool_message='call calculator {\"expression\": \"6*7\"}'

# seed_tenant NAME TIER BUDGET AGENT_NAME THREAD_METADATA_JSON CANARY SANDBOX(on|off)
# — prints shell assignments.
seed_tenant() {
    local name=$1 tier=$2 budget=$3 agent_name=$4 metadata=$5 canary=$6 sandbox=$7
    local id key key_prefix app_key agent thread1 thread2 run_tool run_hello run_two kb doc run_code=
    id=$(call POST /v1/tenants "$OP" "{\"name\":\"$name\",\"tier\":\"$tier\"}" | field id)
    call PUT "/v1/tenants/$id/budget" "$OP" "{\"monthly_limit_usd\":\"$budget\",\"soft_alert_percent\":80}" >/dev/null
    local created
    created=$(call POST "/v1/tenants/$id/keys" "$OP" "{\"name\":\"console admin $canary\",\"scope\":\"tenant_admin\"}")
    key=$(field secret <<<"$created")
    key_prefix=$(field prefix <<<"$created")
    app_key=$(call POST "/v1/tenants/$id/keys" "$OP" '{"name":"console app","scope":"tenant_app"}' | field secret)
    for i in 1 2 3; do
        call POST /v1/chat/completions "$key" "$(chat "hello $i from $canary")" >/dev/null
    done
    agent=$(call POST /v1/agents "$key" "{\"name\":\"$agent_name\",\"description\":\"$canary\",\"spec\":{\"system_prompt\":\"You help.\",\"model\":\"builtin/scripted\",\"tools\":[\"calculator\",\"current_time\"]}}" | field id)
    thread1=$(call POST /v1/threads "$key" "{\"metadata\":$metadata}" | field id)
    thread2=$(call POST /v1/threads "$key" '{}' | field id)
    run_tool=$(call POST "/v1/threads/$thread1/runs" "$key" "{\"agent_id\":\"$agent\",\"mode\":\"sync\",\"message\":\"$tool_message\"}" | field id)
    run_hello=$(call POST "/v1/threads/$thread1/runs" "$key" "{\"agent_id\":\"$agent\",\"mode\":\"sync\",\"message\":\"hello, says $canary\"}" | field id)
    run_two=$(call POST "/v1/threads/$thread2/runs" "$key" "{\"agent_id\":\"$agent\",\"mode\":\"sync\",\"message\":\"call calculator {\\\"expression\\\": \\\"2+3\\\"}\"}" | field id)
    kb=$(call POST /v1/knowledge-bases "$key" "{\"name\":\"kb-$canary\",\"description\":\"handbook of $canary\"}" | field id)
    doc=$(call POST "/v1/knowledge-bases/$kb/documents" "$key" "{\"name\":\"doc-$canary.md\",\"content\":\"# Handbook\\n\\nThe secret word is $canary.\"}" | field id)
    # Code in the sandbox: it runs, or is refused (no backend, or the policy);
    # either way the audit log has it for the console's sandbox page.
    if grep -q '"/v1/sandbox/executions"' "$work/openapi.json"; then
        local sandbox_status coder
        if [ "$sandbox" = on ]; then
            call PUT "/v1/tenants/$id/sandbox" "$OP" '{"enabled":true}' >/dev/null
            coder=$(call POST /v1/agents "$key" '{"name":"coder","spec":{"model":"builtin/scripted","tools":["run_code"]}}' | field id)
            run_code=$(call POST "/v1/threads/$thread2/runs" "$key" "{\"agent_id\":\"$coder\",\"mode\":\"sync\",\"message\":\"call run_code {\\\"language\\\": \\\"python\\\", \\\"code\\\": \\\"print(6*7)\\\"}\"}" | field id)
        fi
        sandbox_status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$api/v1/sandbox/executions" \
            -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
            -d "{\"language\":\"python\",\"code\":\"print('$canary', 6*7)\"}")
        printf 'sandbox execution for %s: HTTP %s\n' "$name" "$sandbox_status" >&2
    fi
    printf 'id=%s key=%s key_prefix=%s app_key=%s agent=%s thread1=%s thread2=%s run_tool=%s run_hello=%s run_two=%s kb=%s doc=%s run_code=%s\n' \
        "$id" "$key" "$key_prefix" "$app_key" "$agent" "$thread1" "$thread2" "$run_tool" "$run_hello" "$run_two" "$kb" "$doc" "$run_code"
}

a_marker="acme-marker-$rand"
b_canary="globexcanary$rand"
log "seeding tenant A (acme) and tenant B (globex-$rand, with canaries)"
a_vars=$(seed_tenant acme shared 10.00 "acme-helper" \
    "{\"customer\":\"$a_marker\",\"note\":\"<img src=x onerror=window.__pwned=1>\"}" "$a_marker" on)
b_vars=$(seed_tenant "globex-$rand" isolated 5.00 "agent-$b_canary" \
    "{\"canary\":\"thread-$b_canary\"}" "$b_canary" off)
declare -A A B
for kv in $a_vars; do A[${kv%%=*}]=${kv#*=}; done
for kv in $b_vars; do B[${kv%%=*}]=${kv#*=}; done

log "tenant C (initech): refused for a policy, its budget, and its rate limit"
C=$(call POST /v1/tenants "$OP" '{"name":"initech","tier":"shared"}' | field id)
C_KEY=$(call POST "/v1/tenants/$C/keys" "$OP" '{"name":"initech app","scope":"tenant_app"}' | field secret)
call PUT "/v1/tenants/$C/models" "$OP" '{"allowed":["builtin/scripted"]}' >/dev/null
refused POST /v1/chat/completions "$C_KEY" 403 '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
call PUT "/v1/tenants/$C/budget" "$OP" '{"monthly_limit_usd":"0.000001"}' >/dev/null
refused POST /v1/chat/completions "$C_KEY" 402 "$(chat hi)"
call PUT "/v1/tenants/$C/limits" "$OP" '{"requests_per_minute":1}' >/dev/null
curl -s -o /dev/null "$api/v1/tenant" -H "Authorization: Bearer $C_KEY"
refused GET /v1/tenant "$C_KEY" 429
refused GET /v1/tenant "$C_KEY" 429

log "waiting for the documents' ingestion"
for t in A B; do
    declare -n T=$t
    for _ in $(seq 1 120); do
        status=$(call GET "/v1/knowledge-bases/${T[kb]}/documents/${T[doc]}" "${T[key]}" | field status)
        [ "$status" = queued ] || [ "$status" = processing ] || break
        sleep 0.5
    done
    log "tenant $t document: $status"
    unset -n T
done

seed="$work/seed.json"
python3 - "$seed" <<PY
import json, sys
a = dict(kv.split("=", 1) for kv in """$a_vars""".split())
b = dict(kv.split("=", 1) for kv in """$b_vars""".split())
b_name = "globex-$rand"
import hashlib
b_code_sha = hashlib.sha256("print('$b_canary', 6*7)".encode()).hexdigest()
json.dump({
    "base": "$api",
    "operator_key": "$OP",
    "a": {**a, "name": "acme", "markers": ["$a_marker", "acme-helper"]},
    "b": {**b, "name": b_name,
          # Everything of B's that A must never see: names, texts, ids.
          "canaries": ["$b_canary", b_name, b["id"], b["key_prefix"], b["agent"], b["thread1"], b["thread2"],
                       b["run_tool"], b["run_hello"], b["run_two"], b["kb"], b["doc"], b_code_sha, b_code_sha[:12]]},
    "c": {"id": "$C", "name": "initech"},
}, open(sys.argv[1], "w"), indent=2)
PY

artifacts=target/console-artifacts
rm -rf "$artifacts"
mkdir -p "$artifacts"
log "the console in headless Chromium ($(/usr/bin/chromium --version 2>/dev/null || echo chromium))"
NODE_DIR="$node_dir" SEED="$seed" ARTIFACTS="$PWD/$artifacts" \
    node "$tests/console.test.mjs" || {
    echo "--- server log (last 50 lines) ---" >&2
    tail -n 50 "$work/serve.log" >&2
    exit 1
}
log "console test passed; screenshots in $artifacts/"
