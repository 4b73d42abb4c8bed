//! The default backend: bubblewrap (`bwrap`) with fresh namespaces, started
//! as the unprivileged sandbox user, under rlimits and a per-execution cgroup.
//!
//! The command line is a chain of small programs, each doing one thing and
//! then `exec`ing the next, so the server needs no `unsafe` `pre_exec`:
//!
//! ```text
//! bash launcher  — (root) joins the execution's cgroups, opens the staged files as fds 3…
//! prlimit        — (root) sets RLIMIT_CPU/AS/FSIZE/NPROC/NOFILE/CORE
//! setpriv        — drops to the sandbox user: uid, gid, no groups, no caps, no_new_privs
//! bwrap          — new user/mount/pid/net/ipc/uts/cgroup namespaces, builds the
//!                  filesystem below, copies the fds into the tmpfs work dir
//! sh (pid 1)     — inside: a minimal init that reaps orphans, runs the code as pid 2
//! ```
//!
//! Inside: `/usr` read-only (with `/bin`, `/lib`, … as on the host), a fresh
//! `/proc` of the sandbox's own pid namespace, a minimal `/dev`, size-limited
//! tmpfs at `/work` (the cwd, with the inputs) and `/tmp`, and nothing else:
//! no `/etc`, no host `/proc`, no data dir, no network but a private loopback.
//! The root is remounted read-only. The environment is cleared except for a
//! minimal `PATH`, `HOME`, `LANG` and `TMPDIR`.
//!
//! Limits: RLIMIT_CPU (per process; SIGXCPU, then SIGKILL a second later),
//! RLIMIT_AS = memory, RLIMIT_FSIZE and the tmpfs sizes = disk, RLIMIT_NPROC
//! (per user: the execution's cap without cgroups, a host-wide backstop with
//! them); the cgroup adds the memory limit with OOM kill, the per-execution
//! task cap, a CPU quota and the total CPU time; the supervisor adds the wall
//! clock and the output caps, killing from outside.

use std::path::{Path, PathBuf};

use bulkhead_core::{Error, TenantCtx};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::backend::Backend;
use crate::cgroup::{CgroupLimits, CgroupMode, Cgroups, ExecCgroup};
use crate::error::SandboxError;
use crate::host::{RuntimeLink, SandboxUser, require_program, runtime_links};
use crate::policy::Limits;
use crate::request::{ExecOutcome, ExecRequest};
use crate::staging::{StagedFile, Staging};
use crate::supervisor::supervise;

/// Joins the cgroups, opens the staged files and the status file as fds
/// 3, 4, … and execs the rest of the command line. Paths arrive as
/// arguments, never inside the script text.
const LAUNCHER: &str = r#"set -e
n=$1; shift
while [ "$n" -gt 0 ]; do echo "$$" > "$1"; shift; n=$((n - 1)); done
n=$1; shift; fd=3
while [ "$n" -gt 0 ]; do eval "exec $fd<\"\$1\""; shift; fd=$((fd + 1)); n=$((n - 1)); done
eval "exec $fd>\"\$1\""; shift
shift
exec "$@"
"#;

/// The sandbox's pid 1 (`--as-pid-1`): runs the code as its child, reaps
/// orphans, and exits with the code's status (128+N for a signal). bwrap's own
/// init would do the same, but its monitor exits without reaping it, leaving a
/// zombie owned by the sandbox user on the host (which counts against the
/// per-user process rlimit) until the host's init reaps it.
const INIT: &str = r#""$@"; exit $?"#;

/// Open files per sandboxed process.
const MAX_OPEN_FILES: u64 = 256;
/// Tasks of an execution that are bubblewrap's own (its monitor and the
/// namespace's init), added to the policy's process cap in the cgroup.
const BWRAP_TASKS: u64 = 2;

/// Configuration of the bubblewrap backend (`sandbox.bubblewrap`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BubblewrapConfig {
    /// The `bwrap` program: a path, or a name looked up in the system dirs.
    pub bwrap: PathBuf,
    /// The host user sandboxed code runs as: a name, or `UID:GID`. Never root.
    pub user: String,
    pub cgroups: CgroupMode,
    /// cgroup v2 only: a delegated group (holding no processes) to create
    /// execution groups under, when the server's own group cannot be used.
    pub cgroup_parent: Option<PathBuf>,
    /// CPU bandwidth of one execution, in cores (cgroup quota); `None` for none.
    pub cpu_cores: Option<f64>,
    /// RLIMIT_NPROC when cgroups cap each execution's tasks: the processes all
    /// executions of the sandbox user may have together.
    pub user_process_cap: u32,
    /// Where staging dirs are created; the system temp dir by default.
    pub staging_dir: Option<PathBuf>,
}

impl Default for BubblewrapConfig {
    fn default() -> Self {
        Self {
            bwrap: PathBuf::from("bwrap"),
            user: "bulkhead-sbx".into(),
            cgroups: CgroupMode::Auto,
            cgroup_parent: None,
            cpu_cores: Some(1.0),
            user_process_cap: 1024,
            staging_dir: None,
        }
    }
}

/// Runs code with bubblewrap. Cheap to share: holds only resolved paths.
#[derive(Debug)]
pub struct BubblewrapBackend {
    bwrap: PathBuf,
    setpriv: PathBuf,
    prlimit: PathBuf,
    bash: PathBuf,
    user: SandboxUser,
    links: Vec<RuntimeLink>,
    cgroups: Cgroups,
    config: BubblewrapConfig,
}

impl BubblewrapBackend {
    /// Resolves the programs and the user and detects cgroups; fails with a
    /// message naming `scripts/sandbox.sh` when something is missing.
    pub fn new(config: BubblewrapConfig) -> Result<Self, SandboxError> {
        if !cfg!(target_os = "linux") {
            return Err(SandboxError::Unavailable("the bubblewrap sandbox needs Linux".into()));
        }
        if let Some(cores) = config.cpu_cores
            && !(cores > 0.0 && cores <= 1024.0)
        {
            return Err(SandboxError::Config(format!(
                "bubblewrap.cpu_cores is {cores}; use a positive number"
            )));
        }
        let bwrap = require_program(&config.bwrap, "bubblewrap")?;
        let setpriv = require_program(Path::new("setpriv"), "util-linux's setpriv")?;
        let prlimit = require_program(Path::new("prlimit"), "util-linux's prlimit")?;
        let bash = require_program(Path::new("bash"), "bash")?;
        let user = SandboxUser::resolve(&config.user)?;
        let cgroups = Cgroups::detect(config.cgroups, config.cgroup_parent.as_deref());
        Ok(Self { bwrap, setpriv, prlimit, bash, user, links: runtime_links(), cgroups, config })
    }

    /// `v1`, `v2` or `none`: which cgroups this backend uses.
    pub fn cgroup_version(&self) -> &'static str {
        self.cgroups.version()
    }

    async fn run(&self, req: &ExecRequest, limits: &Limits) -> Result<ExecOutcome, SandboxError> {
        let interpreter = req.language.interpreter();
        if crate::host::find_program(Path::new(interpreter[0])).is_none() {
            return Err(SandboxError::Unavailable(format!(
                "{} is not installed on this host ({} is missing)",
                req.language, interpreter[0]
            )));
        }
        let staging = Staging::create(self.config.staging_dir.as_deref())?;
        let (files, dirs) = staging.stage_flat(req)?;
        let status_file = staging.path().join("status");
        let cgroup = self
            .cgroups
            .create_async(CgroupLimits {
                memory_bytes: limits.memory_bytes,
                max_tasks: u64::from(limits.max_processes) + BWRAP_TASKS,
                cpu_cores: self.config.cpu_cores,
            })
            .await?;
        let command = self.command(req, limits, &files, &dirs, &status_file, cgroup.as_ref());
        // bwrap records the host pid of the sandbox's pid 1 as soon as it exists.
        let sandbox_root = || {
            let status = std::fs::read_to_string(&status_file).ok()?;
            status.lines().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                u32::try_from(v.get("child-pid")?.as_u64()?).ok()
            })
        };
        let supervised = supervise(command, &req.stdin, limits, cgroup.as_ref(), &sandbox_root).await;
        let result = supervised.and_then(|s| {
            // bwrap records the exit of the sandboxed program; without that
            // record (and without a kill of ours) it never started.
            let status = std::fs::read_to_string(&status_file).unwrap_or_default();
            if s.killed_for.is_none() && !status.contains("\"exit-code\"") {
                let stderr = String::from_utf8_lossy(&s.stderr.bytes);
                return Err(SandboxError::Internal(format!(
                    "bubblewrap could not start the sandbox ({}): {}",
                    s.status,
                    stderr.chars().take(2000).collect::<String>()
                )));
            }
            Ok(s.into_outcome(self.name(), limits, cgroup.as_ref()))
        });
        if let Some(cg) = cgroup {
            cg.remove_in_background();
        }
        drop(staging);
        result
    }

    fn command(
        &self,
        req: &ExecRequest,
        limits: &Limits,
        files: &[StagedFile],
        dirs: &[String],
        status_file: &Path,
        cgroup: Option<&ExecCgroup>,
    ) -> Command {
        let mut cmd = Command::new(&self.bash);
        // The environment reaches nothing but the launcher, prlimit and setpriv;
        // bwrap clears it for the sandbox (--clearenv).
        cmd.env_clear().env("PATH", "/usr/bin:/bin").current_dir("/");
        cmd.arg("-c").arg(LAUNCHER).arg("bulkhead-sandbox-launcher");
        let procs = cgroup.map(ExecCgroup::procs_files).unwrap_or_default();
        cmd.arg(procs.len().to_string()).args(&procs);
        cmd.arg(files.len().to_string()).args(files.iter().map(|f| &f.host));
        cmd.arg(status_file).arg("--");

        let nproc = if self.cgroups.limits_tasks() {
            // The cgroup caps this execution; the rlimit only bounds all of them together.
            u64::from(self.config.user_process_cap)
        } else {
            u64::from(limits.max_processes) + BWRAP_TASKS
        };
        let cpu = limits.cpu_time.as_secs().max(1);
        cmd.arg(&self.prlimit)
            .arg(format!("--cpu={cpu}:{}", cpu + 1))
            .arg(format!("--as={0}:{0}", limits.memory_bytes))
            .arg(format!("--fsize={0}:{0}", limits.disk_bytes))
            .arg(format!("--nproc={nproc}:{nproc}"))
            .arg(format!("--nofile={MAX_OPEN_FILES}:{MAX_OPEN_FILES}"))
            .arg("--core=0:0")
            .arg("--");

        cmd.arg(&self.setpriv)
            .arg(format!("--reuid={}", self.user.uid))
            .arg(format!("--regid={}", self.user.gid))
            .args(["--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]);

        cmd.arg(&self.bwrap).args([
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/work",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "TMPDIR",
            "/tmp",
            // glibc reserves 64 MiB of address space per thread arena, which
            // RLIMIT_AS would otherwise spend on threads rather than data.
            "--setenv",
            "MALLOC_ARENA_MAX",
            "2",
            "--hostname",
            "sandbox",
            "--ro-bind",
            "/usr",
            "/usr",
        ]);
        for link in &self.links {
            match link {
                RuntimeLink::Symlink { path, target } => {
                    cmd.arg("--symlink").arg(target).arg(path);
                }
                RuntimeLink::Dir { path } => {
                    cmd.args(["--ro-bind", path, path]);
                }
            }
        }
        let disk = limits.disk_bytes.to_string();
        cmd.args(["--proc", "/proc", "--dev", "/dev"]);
        cmd.args(["--size", &disk, "--tmpfs", "/work", "--size", &disk, "--tmpfs", "/tmp"]);
        for dir in dirs {
            cmd.arg("--dir").arg(format!("/work/{dir}"));
        }
        for (i, file) in files.iter().enumerate() {
            cmd.args(["--perms", "0644", "--file"])
                .arg((3 + i).to_string())
                .arg(format!("/work/{}", file.name));
        }
        cmd.arg("--json-status-fd").arg((3 + files.len()).to_string());
        cmd.args(["--remount-ro", "/", "--chdir", "/work", "--"]);
        cmd.args(["/usr/bin/sh", "-c", INIT, "bulkhead-init"]);
        cmd.args(req.language.interpreter()).arg(format!("/work/{}", req.language.entry_file()));
        cmd
    }
}

#[async_trait::async_trait]
impl Backend for BubblewrapBackend {
    fn name(&self) -> &'static str {
        "bubblewrap"
    }

    async fn execute(
        &self,
        ctx: &TenantCtx,
        req: &ExecRequest,
        limits: &Limits,
    ) -> Result<ExecOutcome, Error> {
        let outcome = self.run(req, limits).await;
        match &outcome {
            Ok(o) => tracing::debug!(
                tenant = %ctx.tenant_id(), backend = self.name(), language = %req.language,
                exit_code = ?o.exit_code, signal = ?o.signal, limit = ?o.limit_exceeded,
                wall_ms = o.wall_time.as_millis() as u64, "sandbox execution finished"
            ),
            Err(e) => {
                tracing::warn!(tenant = %ctx.tenant_id(), backend = self.name(), error = %e, "sandbox execution failed")
            }
        }
        outcome.map_err(Error::from)
    }
}
