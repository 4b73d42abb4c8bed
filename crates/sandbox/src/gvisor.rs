//! The gVisor backend: `runsc run` on a throwaway OCI bundle, so the code
//! talks to gVisor's user-space kernel rather than the host's.
//!
//! The bundle: an empty read-only root with mount points and the `/bin`,
//! `/lib`… links, `/usr` bound read-only, the staged inputs bound read-only
//! at `/input` and copied (inside the sandbox, by `sh`/`cp` before the code
//! starts) into a size-limited tmpfs `/work`, and a size-limited tmpfs `/tmp`;
//! `--overlay2=all:memory` keeps any other write in the sandbox's memory, so
//! nothing reaches the host's disk. `--network=none` leaves only a loopback.
//! The process runs as the sandbox user with no capabilities and no_new_privs.
//!
//! Limits: RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC and RLIMIT_NOFILE through
//! the OCI spec (gVisor enforces them); gVisor does not enforce RLIMIT_CPU,
//! so CPU is the cgroup's total (polled) and the wall clock, both killing
//! from outside. `runsc` runs with `--ignore-cgroups` inside the execution's
//! own cgroup (joined by the launcher, as for bubblewrap), so the limits cover
//! the user-space kernel too: its memory limit adds `memory_overhead_bytes`,
//! and its task limit is `host_tasks` (gVisor needs ~256 host threads to start;
//! the sandboxed processes are not host tasks and are capped by RLIMIT_NPROC).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_core::{Error, TenantCtx};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::process::Command;

use crate::backend::Backend;
use crate::cgroup::{CgroupLimits, CgroupMode, Cgroups, ExecCgroup};
use crate::error::SandboxError;
use crate::host::{RuntimeLink, SandboxUser, require_program, runtime_links};
use crate::policy::Limits;
use crate::request::{ExecOutcome, ExecRequest};
use crate::staging::Staging;
use crate::supervisor::supervise;

/// Joins the cgroups given as arguments, then execs the rest.
const LAUNCHER: &str = r#"set -e
n=$1; shift
while [ "$n" -gt 0 ]; do echo "$$" > "$1"; shift; n=$((n - 1)); done
shift
exec "$@"
"#;

const MAX_OPEN_FILES: u64 = 256;

/// Where the staged inputs are mounted read-only inside the sandbox.
const INPUT_DIR: &str = "/input";
/// Run inside the sandbox before the code: copies the inputs into `/work`.
const COPY_INPUTS: &str = r#"cp -R /input/. /work/ && exec "$@""#;

/// Configuration of the gVisor backend (`sandbox.gvisor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GvisorConfig {
    /// The `runsc` program: a path, or a name looked up in the system dirs.
    pub runsc: PathBuf,
    /// gVisor platform (`ptrace` works everywhere; `kvm` hangs on nodes without
    /// hardware virtualisation); `None` for runsc's default.
    pub platform: Option<String>,
    /// The host user the sandboxed process runs as: a name or `UID:GID`.
    pub user: String,
    pub cgroups: CgroupMode,
    /// cgroup v2 only: a delegated group to create execution groups under.
    pub cgroup_parent: Option<PathBuf>,
    /// CPU bandwidth of one execution, in cores; `None` for no quota.
    pub cpu_cores: Option<f64>,
    /// Memory of gVisor's own kernel and gofer, added to the policy's limit.
    pub memory_overhead_bytes: u64,
    /// Host tasks (threads) of one sandbox; gVisor needs ~256 to start.
    pub host_tasks: u64,
    pub staging_dir: Option<PathBuf>,
}

impl Default for GvisorConfig {
    fn default() -> Self {
        Self {
            runsc: PathBuf::from("runsc"),
            platform: None,
            user: "bulkhead-sbx".into(),
            cgroups: CgroupMode::Auto,
            cgroup_parent: None,
            cpu_cores: Some(1.0),
            memory_overhead_bytes: 128 << 20,
            host_tasks: 512,
            staging_dir: None,
        }
    }
}

/// Runs code in gVisor.
#[derive(Debug)]
pub struct GvisorBackend {
    runsc: PathBuf,
    bash: PathBuf,
    user: SandboxUser,
    links: Vec<RuntimeLink>,
    cgroups: Cgroups,
    config: GvisorConfig,
}

impl GvisorBackend {
    /// Whether `runsc` is installed (tests and the benchmark skip gVisor without it).
    pub fn available(config: &GvisorConfig) -> bool {
        crate::host::find_program(&config.runsc).is_some()
    }

    pub fn new(config: GvisorConfig) -> Result<Self, SandboxError> {
        let runsc = require_program(&config.runsc, "gVisor (install Debian's `runsc`)")?;
        let bash = require_program(Path::new("bash"), "bash")?;
        let user = SandboxUser::resolve(&config.user)?;
        if config.host_tasks < 256 {
            return Err(SandboxError::Config(
                "gvisor.host_tasks must be at least 256 for runsc to start".into(),
            ));
        }
        let cgroups = Cgroups::detect(config.cgroups, config.cgroup_parent.as_deref());
        Ok(Self { runsc, bash, user, links: runtime_links(), cgroups, config })
    }

    async fn run(&self, req: &ExecRequest, limits: &Limits) -> Result<ExecOutcome, SandboxError> {
        let staging = Staging::create(self.config.staging_dir.as_deref())?;
        let work = staging.stage_tree(req, self.user)?;
        let bundle = self.write_bundle(staging.path(), &work, req, limits)?;
        let state = staging.path().join("state");
        std::fs::create_dir(&state).map_err(SandboxError::io("creating the runsc state dir"))?;
        let log = staging.path().join("runsc.log");
        let id = format!("bulkhead-{}", uuid::Uuid::new_v4().simple());

        let cgroup = self
            .cgroups
            .create_async(CgroupLimits {
                memory_bytes: limits.memory_bytes + self.config.memory_overhead_bytes,
                max_tasks: self.config.host_tasks,
                cpu_cores: self.config.cpu_cores,
            })
            .await?;
        let mut cmd = Command::new(&self.bash);
        cmd.env_clear().env("PATH", "/usr/bin:/bin").current_dir("/");
        cmd.arg("-c").arg(LAUNCHER).arg("bulkhead-sandbox-launcher");
        let procs = cgroup.as_ref().map(ExecCgroup::procs_files).unwrap_or_default();
        cmd.arg(procs.len().to_string()).args(&procs).arg("--");
        cmd.arg(&self.runsc).arg("--root").arg(&state);
        cmd.args(["--ignore-cgroups", "--network=none", "--overlay2=all:memory", "--log-format=json"]);
        cmd.arg(format!("--log={}", log.display()));
        if let Some(platform) = &self.config.platform {
            cmd.arg(format!("--platform={platform}"));
        }
        cmd.arg("run").arg("--bundle").arg(&bundle).arg(&id);

        // runsc's own processes are killed through the cgroup (and die with runsc).
        let supervised = supervise(cmd, &req.stdin, limits, cgroup.as_ref(), &|| None).await;
        // `runsc run` removes the state of a container that exited; one that
        // was killed leaves it (and maybe processes) behind.
        if std::fs::read_dir(&state).is_ok_and(|mut d| d.next().is_some()) {
            self.delete(&state, &id).await;
        }
        let result = supervised.and_then(|s| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            if s.killed_for.is_none()
                && let Some(error) = log.lines().find(|l| l.contains(r#""level":"error""#))
            {
                return Err(SandboxError::Internal(format!("runsc could not run the sandbox: {error}")));
            }
            Ok(s.into_outcome(self.name(), limits, cgroup.as_ref()))
        });
        if let Some(cg) = cgroup {
            cg.remove_in_background();
        }
        drop(staging);
        result
    }

    async fn delete(&self, state: &Path, id: &str) {
        let mut cmd = Command::new(&self.runsc);
        cmd.arg("--root").arg(state).args(["delete", "--force", id]);
        cmd.env_clear().stdin(std::process::Stdio::null());
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).kill_on_drop(true);
        // A container that already exited is gone and the command just fails.
        let _ = tokio::time::timeout(Duration::from_secs(5), cmd.status()).await;
    }

    /// Writes `bundle/config.json` and the empty root; returns the bundle dir.
    fn write_bundle(
        &self,
        staging: &Path,
        work: &Path,
        req: &ExecRequest,
        limits: &Limits,
    ) -> Result<PathBuf, SandboxError> {
        let bundle = staging.join("bundle");
        let rootfs = bundle.join("rootfs");
        let io = SandboxError::io("writing the OCI bundle");
        let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(SandboxError::io("writing the OCI bundle"));
        for dir in ["usr", "work", "tmp", "proc", "dev", INPUT_DIR.trim_start_matches('/')] {
            mkdir(&rootfs.join(dir))?;
        }
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            json!({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro", "nosuid", "nodev"]}),
            json!({"destination": INPUT_DIR, "type": "bind", "source": work, "options": ["rbind", "ro", "nosuid", "nodev"]}),
            json!({"destination": "/work", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777", format!("size={}", limits.disk_bytes)]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777", format!("size={}", limits.disk_bytes)]}),
        ];
        for link in &self.links {
            let rel = |p: &str| rootfs.join(p.trim_start_matches('/'));
            match link {
                RuntimeLink::Symlink { path, target } => {
                    std::os::unix::fs::symlink(target, rel(path))
                        .map_err(SandboxError::io("writing the OCI bundle"))?;
                }
                RuntimeLink::Dir { path } => {
                    mkdir(&rel(path))?;
                    mounts.push(json!({"destination": path, "type": "bind", "source": path,
                                       "options": ["rbind", "ro", "nosuid", "nodev"]}));
                }
            }
        }
        // The inputs are copied into the size-limited tmpfs first, so the work
        // dir is writable, private and bounded like bubblewrap's.
        let mut args: Vec<String> =
            ["/usr/bin/sh", "-c", COPY_INPUTS, "bulkhead-sandbox"].iter().map(|s| s.to_string()).collect();
        args.extend(req.language.interpreter().iter().map(|s| s.to_string()));
        args.push(format!("/work/{}", req.language.entry_file()));
        let rlimit = |kind: &str, v: u64| json!({"type": kind, "soft": v, "hard": v});
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": self.user.uid, "gid": self.user.gid},
                "args": args,
                "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/work", "LANG=C.UTF-8", "TMPDIR=/tmp"],
                "cwd": "/work",
                "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
                "rlimits": [
                    rlimit("RLIMIT_AS", limits.memory_bytes),
                    rlimit("RLIMIT_FSIZE", limits.disk_bytes),
                    rlimit("RLIMIT_NPROC", u64::from(limits.max_processes)),
                    rlimit("RLIMIT_NOFILE", MAX_OPEN_FILES),
                    rlimit("RLIMIT_CORE", 0),
                ],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "sandbox",
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
            }
        });
        let text = serde_json::to_vec_pretty(&config).map_err(|e| SandboxError::Internal(e.to_string()))?;
        std::fs::write(bundle.join("config.json"), text).map_err(io)?;
        Ok(bundle)
    }
}

#[async_trait::async_trait]
impl Backend for GvisorBackend {
    fn name(&self) -> &'static str {
        "gvisor"
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
