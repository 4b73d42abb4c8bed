#!/bin/sh
# The image's entrypoint: `bulkhead "$@"`, after one optional step.
#
# BULKHEAD_CGROUP_LEAF=1 (set by the Kubernetes sandbox tier): on cgroup v2,
# move this process into the leaf group `bulkhead-server` of the container's
# cgroup, so that group holds no process and the sandbox can enable the
# memory, pids and cpu controllers for its per-execution groups under it
# (`sandbox.bubblewrap.cgroup_parent`). Needs a writable cgroupfs (root, and
# a privileged container inside gVisor). Without it, executions still run,
# with rlimits only, and the server says so in its log.
set -eu
if [ "${BULKHEAD_CGROUP_LEAF:-0}" = 1 ]; then
    cg=/sys/fs/cgroup
    if [ -f "$cg/cgroup.controllers" ] && mkdir -p "$cg/bulkhead-server" 2>/dev/null \
        && echo $$ >"$cg/bulkhead-server/cgroup.procs" 2>/dev/null; then
        export BULKHEAD_SANDBOX__BUBBLEWRAP__CGROUP_PARENT="$cg"
    else
        echo "entrypoint: no writable cgroup v2 at $cg; sandbox cgroups fall back to detection" >&2
    fi
fi
exec bulkhead "$@"
