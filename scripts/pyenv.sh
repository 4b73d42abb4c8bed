#!/usr/bin/env bash
# A Python with the official provider SDKs (the clients our users have), for
# the tests that drive the OpenAI-compatible endpoint with them:
#   scripts/pyenv.sh        # prints the path of its python as the last line
# Idempotent: the virtualenv lives in the cache and is reused.
set -euo pipefail

OPENAI_VERSION=3.51.0
if [ "$(id -u)" = 0 ]; then cache=${BULKHEAD_CACHE:-/var/cache/bulkhead}; else cache=${BULKHEAD_CACHE:-$HOME/.cache/bulkhead}; fi
venv="$cache/pyenv-openai-$OPENAI_VERSION"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
    mkdir -p "$cache"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        echo "pyenv.sh: installing python3-venv" >&2
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
    echo "pyenv.sh: installing openai==$OPENAI_VERSION" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "openai==$OPENAI_VERSION" >&2
fi
echo "$venv/bin/python"
