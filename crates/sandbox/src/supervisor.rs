//! Runs one sandbox process from the outside: feeds stdin, captures bounded
//! output, enforces the wall clock (and the cgroup's total CPU time), kills,
//! reaps, and turns what happened into an [`ExecOutcome`]. Shared by every
//! backend; a backend only builds the command line.
//!
//! Invariants: the sandbox is killed — its direct child and every process of
//! its cgroup — as soon as a limit is crossed, and `supervise` does not return
//! before the direct child is reaped; if the future is dropped mid-run, the
//! child is killed on drop (`kill_on_drop`) and so is the cgroup (its `Drop`).

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::wait::{Id, WaitPidFlag};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::capture::{Captured, capture};
use crate::cgroup::ExecCgroup;
use crate::error::SandboxError;
use crate::policy::Limits;
use crate::request::{ExecOutcome, LimitKind};

/// How often the cgroup's CPU time is compared with the limit.
const CPU_POLL: Duration = Duration::from_millis(50);
/// How long a SIGKILLed sandbox may take to be reaped before we call it a failure.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// How long the direct child may take to exit after its sandbox's root was killed.
const ROOT_GRACE: Duration = Duration::from_millis(500);
/// How long output pipes may stay open after the main process is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What the supervisor saw; turned into an outcome by [`Supervised::into_outcome`].
#[derive(Debug)]
pub(crate) struct Supervised {
    pub status: ExitStatus,
    pub stdout: Captured,
    pub stderr: Captured,
    /// The limit on which the supervisor killed the sandbox.
    pub killed_for: Option<LimitKind>,
    pub wall_time: Duration,
    /// CPU time of the reaped process tree, from `/proc/<pid>/stat` of the zombie.
    pub reaped_cpu: Duration,
}

/// Runs `command` (which must start the sandbox as its direct child) under
/// `limits`. `sandbox_root` names, when asked at kill time, the host pid of the
/// sandbox's own root process (a child of the direct child): it is killed
/// first, so the direct child reaps it and nothing is left orphaned.
pub(crate) async fn supervise(
    mut command: Command,
    stdin: &[u8],
    limits: &Limits,
    cgroup: Option<&ExecCgroup>,
    sandbox_root: &(dyn Fn() -> Option<u32> + Sync),
) -> Result<Supervised, SandboxError> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let start = Instant::now();
    let mut child = command.spawn().map_err(SandboxError::io("starting the sandbox"))?;
    let pid =
        child.id().ok_or_else(|| SandboxError::Internal("the sandbox exited before it started".into()))?;

    let stop = CancellationToken::new();
    let overflow = Arc::new(Notify::new());
    let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    let (Some(out), Some(err), Some(mut input)) =
        (child.stdout.take(), child.stderr.take(), child.stdin.take())
    else {
        return Err(SandboxError::Internal("the sandbox's pipes are missing".into()));
    };
    let stdout = tokio::spawn(capture(out, cap, overflow.clone(), stop.clone()));
    let stderr = tokio::spawn(capture(err, cap, overflow.clone(), stop.clone()));
    let data = stdin.to_vec();
    // A program that never reads stdin leaves this writer blocked; it is
    // aborted once the program is gone. Dropping `input` sends end of file.
    let feeder = tokio::spawn(async move {
        let _ = input.write_all(&data).await;
    });

    // Waits for the exit without reaping, so `/proc/<pid>/stat` of the zombie
    // still holds the CPU time of the whole reaped tree when there is no cgroup.
    let mut exited = tokio::task::spawn_blocking(move || {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        loop {
            match nix::sys::wait::waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => return other.map(|_| ()),
            }
        }
    });

    let deadline = tokio::time::sleep(limits.wall_time);
    tokio::pin!(deadline);
    let mut cpu_poll = tokio::time::interval(CPU_POLL);
    cpu_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let polls_cpu = cgroup.is_some_and(|c| c.cpu_usage().is_some());

    let killed_for = loop {
        tokio::select! {
            joined = &mut exited => {
                wait_result(joined)?;
                break None;
            }
            () = &mut deadline => break Some(LimitKind::WallTime),
            () = overflow.notified() => break Some(LimitKind::Output),
            _ = cpu_poll.tick(), if polls_cpu => {
                // The rlimit is per process; this caps the sum over all of them.
                if cgroup.and_then(ExecCgroup::cpu_usage).is_some_and(|used| used >= limits.cpu_time) {
                    break Some(LimitKind::CpuTime);
                }
            }
        }
    };
    if killed_for.is_some() {
        // Killing the direct child first would orphan the sandbox's root (a
        // zombie for the host's init to reap); killing the root lets the
        // direct child reap it and exit on its own.
        let mut joined = None;
        if let Some(root) = sandbox_root().filter(|&root| parent_of(root) == Some(pid)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(root as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            joined = tokio::time::timeout(ROOT_GRACE, &mut exited).await.ok();
        }
        if joined.is_none() {
            kill(&mut child, cgroup);
            joined = tokio::time::timeout(KILL_GRACE, &mut exited).await.ok();
        }
        match joined {
            Some(joined) => wait_result(joined)?,
            None => return Err(SandboxError::Internal("the sandbox did not exit after SIGKILL".into())),
        }
    }
    let wall_time = start.elapsed();
    let reaped_cpu = zombie_cpu_time(pid).unwrap_or_default();
    let status = child.wait().await.map_err(SandboxError::io("reaping the sandbox"))?;
    // A run ends with its main process: stragglers go too.
    if let Some(cg) = cgroup {
        cg.kill_all();
    }
    feeder.abort();

    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DRAIN_GRACE).await;
            stop.cancel();
        })
    };
    let stdout = stdout.await.map_err(|e| SandboxError::Internal(format!("stdout reader: {e}")))?;
    let stderr = stderr.await.map_err(|e| SandboxError::Internal(format!("stderr reader: {e}")))?;
    stopper.abort();

    Ok(Supervised { status, stdout, stderr, killed_for, wall_time, reaped_cpu })
}

fn wait_result(joined: Result<nix::Result<()>, tokio::task::JoinError>) -> Result<(), SandboxError> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SandboxError::Internal(format!("waiting for the sandbox: {e}"))),
        Err(e) => Err(SandboxError::Internal(format!("waiting for the sandbox: {e}"))),
    }
}

/// SIGKILLs the direct child (the sandbox's root, whose death takes its pid
/// namespace with it) and every process in the run's cgroup.
fn kill(child: &mut Child, cgroup: Option<&ExecCgroup>) {
    let _ = child.start_kill();
    if let Some(cg) = cgroup {
        cg.kill_all();
    }
}

/// The parent pid of a live process.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4 (ppid) is the second after the command name.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime + cutime + cstime of an exited, unreaped process.
fn zombie_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Field 3 (state) is at index 0, so utime (14) … cstime (17) are 11..=14.
    let ticks: u64 = fields.get(11..=14)?.iter().filter_map(|f| f.parse::<u64>().ok()).sum();
    let hz =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Splits a status into (exit code, signal). Sandboxes report a child killed
/// by signal N as exit status 128+N, as shells do.
pub(crate) fn decode_status(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    if let Some(signal) = status.signal() {
        return (None, Some(signal));
    }
    match status.code() {
        Some(code) if (129..=128 + 64).contains(&code) => (None, Some(code - 128)),
        code => (code, None),
    }
}

impl Supervised {
    /// The outcome, with the cgroup's accounting when there is one.
    pub(crate) fn into_outcome(
        self,
        backend: &'static str,
        limits: &Limits,
        cgroup: Option<&ExecCgroup>,
    ) -> ExecOutcome {
        let (exit_code, signal) = decode_status(self.status);
        let cpu_time = cgroup.and_then(ExecCgroup::cpu_usage).unwrap_or(self.reaped_cpu);
        let oom_killed = cgroup.and_then(ExecCgroup::oom_kills).is_some_and(|n| n > 0);
        let limit_exceeded = self.killed_for.or_else(|| {
            const SIGKILL: i32 = nix::sys::signal::Signal::SIGKILL as i32;
            const SIGXCPU: i32 = nix::sys::signal::Signal::SIGXCPU as i32;
            const SIGXFSZ: i32 = nix::sys::signal::Signal::SIGXFSZ as i32;
            if oom_killed {
                return Some(LimitKind::Memory);
            }
            match signal {
                Some(SIGXCPU) => Some(LimitKind::CpuTime),
                // The hard CPU rlimit (soft + 1 s) ends a program that ignores SIGXCPU.
                Some(SIGKILL) if cpu_time >= limits.cpu_time => Some(LimitKind::CpuTime),
                Some(SIGXFSZ) => Some(LimitKind::FileSize),
                _ => None,
            }
        });
        ExecOutcome {
            stdout: self.stdout.bytes,
            stderr: self.stderr.bytes,
            exit_code,
            signal,
            timed_out: self.killed_for == Some(LimitKind::WallTime),
            limit_exceeded,
            cpu_time,
            wall_time: self.wall_time,
            peak_memory_bytes: cgroup.and_then(ExecCgroup::memory_peak),
            stdout_truncated: self.stdout.truncated,
            stderr_truncated: self.stderr.truncated,
            backend,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(wall_ms: u64, output: u64) -> Limits {
        Limits { wall_time: Duration::from_millis(wall_ms), max_output_bytes: output, ..Limits::default() }
    }

    #[tokio::test]
    async fn captures_output_stdin_and_exit_code() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "cat; echo err >&2; exit 3"]);
        let s = supervise(cmd, b"hello", &limits(5_000, 1024), None, &|| None).await.unwrap();
        assert_eq!(s.stdout.bytes, b"hello");
        assert_eq!(s.stderr.bytes, b"err\n");
        assert_eq!(decode_status(s.status), (Some(3), None));
        assert_eq!(s.killed_for, None);
    }

    #[tokio::test]
    async fn kills_on_the_wall_clock() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let s = supervise(cmd, b"", &limits(300, 1024), None, &|| None).await.unwrap();
        assert_eq!(s.killed_for, Some(LimitKind::WallTime));
        assert_eq!(decode_status(s.status), (None, Some(9)));
        assert_eq!(s.stdout.bytes, b"started\n");
        assert!(s.wall_time < Duration::from_secs(5), "{:?}", s.wall_time);
    }

    #[tokio::test]
    async fn kills_the_sandbox_root_first_so_nothing_is_orphaned() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("root.pid");
        let mut cmd = Command::new("/bin/sh");
        // The "sandbox root" is a child the shell waits for, as bwrap's monitor does.
        cmd.arg("-c").arg(format!("sleep 30 & echo $! > {}; wait $!; exit $?", pid_file.display()));
        let root = || std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok();
        let s = supervise(cmd, b"", &limits(500, 1024), None, &root).await.unwrap();
        assert_eq!(s.killed_for, Some(LimitKind::WallTime));
        // The shell saw its child die of SIGKILL and exited by itself with 128+9.
        assert_eq!(s.status.code(), Some(137));
        let root: u32 = root().unwrap();
        assert!(parent_of(root).is_none(), "the root was reaped, not orphaned");
    }

    #[tokio::test]
    async fn kills_on_output_overflow_with_bounded_capture() {
        let mut cmd = Command::new("/usr/bin/yes");
        cmd.arg("0123456789");
        let s = supervise(cmd, b"", &limits(10_000, 4096), None, &|| None).await.unwrap();
        assert_eq!(s.killed_for, Some(LimitKind::Output));
        assert!(s.stdout.truncated);
        assert_eq!(s.stdout.bytes.len(), 4096);
        assert!(s.wall_time < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn counts_cpu_time_of_reaped_children() {
        let mut cmd = Command::new("/bin/sh");
        // A child that does a fixed amount of work (~0.1 s), then is reaped by the shell.
        cmd.args(["-c", "sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done'; true"]);
        let s = supervise(cmd, b"", &limits(20_000, 1024), None, &|| None).await.unwrap();
        assert!(s.reaped_cpu >= Duration::from_millis(30), "{:?}", s.reaped_cpu);
    }

    #[test]
    fn statuses_decode_shell_style() {
        assert_eq!(decode_status(ExitStatus::from_raw(0)), (Some(0), None));
        assert_eq!(decode_status(ExitStatus::from_raw(2 << 8)), (Some(2), None));
        assert_eq!(decode_status(ExitStatus::from_raw(137 << 8)), (None, Some(9)));
        assert_eq!(decode_status(ExitStatus::from_raw(9)), (None, Some(9)));
        assert_eq!(decode_status(ExitStatus::from_raw(255 << 8)), (Some(255), None));
    }
}
