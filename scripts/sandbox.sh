#!/usr/bin/env bash
# scripts/sandbox.sh — makes this machine able to run untrusted code with Bulkhead's
# sandbox (crates/sandbox). Idempotent; needs root the first time.
#
#   1. bubblewrap (`bwrap`) from Debian, installed with apt-get if missing
#      (`apt-get update` only when the install needs it);
#   2. util-linux's `setpriv` and `prlimit`, which the sandbox uses to drop to the
#      sandbox user and set rlimits without unsafe code (part of Debian's base);
#   3. the system user `bulkhead-sbx` (no login shell, no home) that sandboxed
#      processes run as: as root the process-count rlimit does not stop a fork bomb;
#   4. a check that `bulkhead-sbx` can start `bwrap --unshare-all … true`.
#
# gVisor (`runsc`) is optional and not installed here; the sandbox uses it when
# configured and present (`apt-get install runsc`).
set -euo pipefail

SBX_USER=${BULKHEAD_SANDBOX_USER:-bulkhead-sbx}

log() { printf 'sandbox.sh: %s\n' "$*" >&2; }
fail() { printf 'sandbox.sh: error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    [[ $(id -u) -eq 0 ]] || fail "installing $* needs root (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # Try without refreshing the package lists first: they are usually fresh enough.
    if ! apt-get install -y -qq "$@" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq "$@" >/dev/null
    fi
}

if ! command -v bwrap >/dev/null; then
    log "installing bubblewrap"
    apt_install bubblewrap
fi
if ! command -v setpriv >/dev/null || ! command -v prlimit >/dev/null; then
    log "installing util-linux (setpriv, prlimit)"
    apt_install util-linux
fi

if ! id -u "$SBX_USER" >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || fail "creating the user $SBX_USER needs root"
    log "creating the system user $SBX_USER"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$SBX_USER"
fi

# The same shape of command line the bubblewrap backend uses, reduced to `true`.
check_err=$(mktemp)
trap 'rm -f "$check_err"' EXIT
if ! (cd / && setpriv --reuid="$SBX_USER" --regid="$SBX_USER" --clear-groups \
    bwrap --unshare-all --die-with-parent --new-session --cap-drop ALL --clearenv \
    --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib \
    --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin \
    --proc /proc --dev /dev --tmpfs /work --chdir /work \
    /usr/bin/true) 2>"$check_err"; then
    fail "user $SBX_USER cannot start a bubblewrap sandbox: $(cat "$check_err")
  bwrap needs unprivileged user namespaces: check that user.max_user_namespaces > 0
  (and kernel.unprivileged_userns_clone=1 where that sysctl exists), and, inside a
  container, that the container allows creating namespaces."
fi
log "ok: $(bwrap --version) runs as $SBX_USER (uid $(id -u "$SBX_USER"))"
