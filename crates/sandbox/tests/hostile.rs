//! The hostile suite: code that tries to hurt the host, escape, starve others
//! or snoop, run against every backend present on the machine. Each case is
//! bounded in time (a few seconds) and checks from the host side that the
//! host is unharmed. Bubblewrap is never skipped: without `bwrap` and the
//! `bulkhead-sbx` user every test fails, naming `scripts/sandbox.sh`; gVisor
//! runs where `runsc` is installed and is reported as skipped elsewhere.
//!
//! The only network traffic is to loopback: "outside" connects go to a
//! reserved documentation address (192.0.2.1) and only after the code has
//! checked that the sandbox has no interface but `lo` and no route, so a broken
//! sandbox fails the test without a packet leaving the machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bulkhead_core::{OperatorCtx, TenantCtx, TenantId};
use bulkhead_sandbox::{
    Backend, BubblewrapBackend, BubblewrapConfig, CgroupMode, ExecOutcome, ExecRequest, GvisorBackend,
    GvisorConfig, Language, LimitKind, RefusalCode, Sandbox, SandboxConfig, SandboxPolicy,
};

const MIB: u64 = 1 << 20;

/// Small limits so that each hostile case ends within seconds.
fn policy() -> SandboxPolicy {
    SandboxPolicy {
        memory_bytes: 128 * MIB,
        cpu_seconds: 2,
        max_processes: 32,
        max_output_bytes: 64 * 1024,
        disk_bytes: 8 * MIB,
        max_file_bytes: MIB,
        default_timeout_ms: 8_000,
        max_timeout_ms: 15_000,
        ..SandboxPolicy::enabled()
    }
}

fn tenant() -> TenantCtx {
    OperatorCtx::local_cli().act_for(TenantId::new())
}

/// One backend under test, with its own staging root so the test can check
/// that every execution cleaned up after itself.
struct Rig {
    name: &'static str,
    sandbox: Sandbox,
    staging: tempfile::TempDir,
    /// Whether executions get cgroups (memory OOM kill, per-run task cap).
    cgroups: bool,
}

impl Rig {
    async fn run(&self, req: ExecRequest) -> ExecOutcome {
        self.run_as(&tenant(), &policy(), req).await
    }

    async fn run_as(&self, ctx: &TenantCtx, policy: &SandboxPolicy, req: ExecRequest) -> ExecOutcome {
        match self.sandbox.execute(ctx, policy, &req).await {
            Ok(outcome) => {
                assert_eq!(outcome.backend, self.name);
                outcome
            }
            Err(e) => panic!("[{}] execution failed: {e:?}", self.name),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let left: Vec<_> =
            std::fs::read_dir(self.staging.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "[{}] staging dirs left behind: {left:?}", self.name);
    }
}

fn sandbox_config() -> SandboxConfig {
    SandboxConfig { max_concurrent: 8, max_concurrent_per_tenant: 4, ..SandboxConfig::default() }
}

fn bubblewrap(config: BubblewrapConfig) -> Rig {
    let staging = tempfile::tempdir().unwrap();
    let config = BubblewrapConfig { staging_dir: Some(staging.path().to_path_buf()), ..config };
    let backend = BubblewrapBackend::new(config).unwrap_or_else(|e| {
        panic!("bubblewrap is not usable here: {e}. Run `bash scripts/sandbox.sh` first (as root).")
    });
    let cgroups = backend.cgroup_version() != "none";
    let backend: Arc<dyn Backend> = Arc::new(backend);
    Rig { name: "bubblewrap", sandbox: Sandbox::with_backend(backend, &sandbox_config()), staging, cgroups }
}

/// Every backend present: bubblewrap always, gVisor where `runsc` is installed.
fn rigs() -> Vec<Rig> {
    let mut rigs = vec![bubblewrap(BubblewrapConfig::default())];
    let gvisor = GvisorConfig::default();
    if GvisorBackend::available(&gvisor) {
        let staging = tempfile::tempdir().unwrap();
        let backend =
            GvisorBackend::new(GvisorConfig { staging_dir: Some(staging.path().to_path_buf()), ..gvisor })
                .expect("runsc is installed but the gVisor backend cannot start");
        let backend: Arc<dyn Backend> = Arc::new(backend);
        let sandbox = Sandbox::with_backend(backend, &sandbox_config());
        rigs.push(Rig { name: "gvisor", sandbox, staging, cgroups: cgroups_writable() });
    } else {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            eprintln!("gVisor (runsc) is not installed: its runs are skipped (apt-get install runsc)");
        }
    }
    rigs
}

fn cgroups_writable() -> bool {
    BubblewrapBackend::new(BubblewrapConfig::default()).map(|b| b.cgroup_version() != "none").unwrap_or(false)
}

/// Lines of `key=value` printed by a probe; a missing key fails with the whole output.
struct Report {
    fields: BTreeMap<String, String>,
    text: String,
}

impl Report {
    fn get(&self, key: &str) -> Option<&String> {
        self.fields.get(key)
    }
}

impl std::ops::Index<&str> for Report {
    type Output = String;
    fn index(&self, key: &str) -> &String {
        self.fields.get(key).unwrap_or_else(|| panic!("the probe printed no `{key}`:\n{}", self.text))
    }
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fields.fmt(f)
    }
}

fn report(out: &ExecOutcome) -> Report {
    let fields = out
        .stdout_lossy()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let text = format!(
        "stdout:\n{}\nstderr:\n{}\nexit {:?} signal {:?} limit {:?}",
        out.stdout_lossy(),
        out.stderr_lossy(),
        out.exit_code,
        out.signal,
        out.limit_exceeded
    );
    Report { fields, text }
}

fn host_pids_with_cmdline(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .count()
}

/// `pid state name` of every host process whose real uid is `uid`.
fn host_processes_of_uid(uid: u32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok().map(|s| (e.file_name(), s)))
        .filter(|(_, status)| {
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string()))
        })
        .map(|(pid, status)| {
            let field = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_string();
            format!("{} {} {}", pid.to_string_lossy(), field("State:"), field("Name:"))
        })
        .collect()
}

fn vm_hwm_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

// ---------------------------------------------------------------- normal use

#[tokio::test]
async fn python_reads_stdin_and_input_files_and_prints() {
    for rig in rigs() {
        let code = r#"
import os, sys
data = sys.stdin.read()
print("stdin=" + data.strip())
print("file=" + open("data/nested/in.txt").read().strip())
print("cwd=" + os.getcwd())
print("listing=" + ",".join(sorted(os.listdir("."))))
open("out.txt", "w").write("written")
print("roundtrip=" + open("/work/out.txt").read())
print("uid0=" + str(os.getuid() == 0))
"#;
        let req = ExecRequest::python(code)
            .with_stdin("hello from stdin\n")
            .with_file("data/nested/in.txt", "input file\n")
            .with_file("extra.bin", vec![0u8, 1, 2, 255]);
        let out = rig.run(req).await;
        assert!(out.success(), "[{}] {out:?}", rig.name);
        let r = report(&out);
        assert_eq!(r["stdin"], "hello from stdin", "[{}]", rig.name);
        assert_eq!(r["file"], "input file");
        assert_eq!(r["cwd"], "/work");
        assert_eq!(r["listing"], "data,extra.bin,main.py");
        assert_eq!(r["roundtrip"], "written");
        assert_eq!(r["uid0"], "False");
        assert!(out.stderr.is_empty(), "[{}] {}", rig.name, out.stderr_lossy());
        assert!(out.wall_time > Duration::ZERO && out.wall_time < Duration::from_secs(8));
        assert!(!out.stdout_truncated && !out.stderr_truncated && !out.timed_out);
        if rig.cgroups {
            let peak = out.peak_memory_bytes.expect("peak memory from the cgroup");
            assert!(peak > MIB, "[{}] peak {peak}", rig.name);
            assert!(out.cpu_time > Duration::ZERO, "[{}] cpu from the cgroup", rig.name);
        }
    }
}

#[tokio::test]
async fn exit_codes_signals_and_stderr_are_reported() {
    for rig in rigs() {
        let out = rig.run(ExecRequest::bash("echo to-out; echo to-err >&2; exit 7")).await;
        assert_eq!((out.exit_code, out.signal), (Some(7), None), "[{}] {out:?}", rig.name);
        assert_eq!(out.stdout, b"to-out\n");
        assert_eq!(out.stderr, b"to-err\n");
        assert!(!out.success());

        let out = rig.run(ExecRequest::python("raise ValueError('boom')")).await;
        assert_eq!(out.exit_code, Some(1), "[{}] {out:?}", rig.name);
        assert!(out.stderr_lossy().contains("ValueError: boom"), "[{}] {}", rig.name, out.stderr_lossy());

        let out = rig.run(ExecRequest::bash("kill -TERM $$")).await;
        assert_eq!((out.exit_code, out.signal), (None, Some(15)), "[{}] {out:?}", rig.name);

        let out = rig.run(ExecRequest::new(Language::Sh, "echo sh-ok")).await;
        assert_eq!(out.stdout, b"sh-ok\n", "[{}] {out:?}", rig.name);
        let out = rig.run(ExecRequest::new(Language::Perl, "print \"perl-ok\\n\";")).await;
        assert_eq!(out.stdout, b"perl-ok\n", "[{}] {out:?}", rig.name);
    }
}

#[tokio::test]
async fn refusals_run_nothing() {
    let rig = bubblewrap(BubblewrapConfig::default());
    let marker = format!("bulkhead-refused-{}", uuid::Uuid::new_v4().simple());
    // Would be visible on the host for seconds if it ran.
    let code = format!("exec -a {marker} sleep 5");
    let ctx = tenant();
    let cases = [
        (SandboxPolicy::default(), ExecRequest::bash(&code), RefusalCode::SandboxDisabled),
        (
            SandboxPolicy { languages: vec![Language::Python], ..policy() },
            ExecRequest::bash(&code),
            RefusalCode::LanguageNotAllowed,
        ),
        (policy(), ExecRequest::bash(format!("{code}\n#{}", "x".repeat(70_000))), RefusalCode::CodeTooLarge),
        (
            policy(),
            ExecRequest::bash(&code).with_timeout(Duration::from_secs(60)),
            RefusalCode::TimeoutTooLong,
        ),
        (policy(), ExecRequest::bash(&code).with_file("../escape", "x"), RefusalCode::BadFileName),
        (policy(), ExecRequest::bash(&code).with_stdin(vec![0u8; 2 << 20]), RefusalCode::StdinTooLarge),
    ];
    for (policy, req, code) in cases {
        let started = Instant::now();
        let err = rig.sandbox.execute(&ctx, &policy, &req).await.expect_err("refused");
        assert_eq!(err.refusal().map(|r| r.code), Some(code), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(500), "a refusal returns at once");
        assert_eq!(host_pids_with_cmdline(&marker), 0, "nothing ran");
    }
    // Nothing was staged either (the rig's drop checks its staging root too).
    assert_eq!(std::fs::read_dir(rig.staging.path()).unwrap().count(), 0);
}

// ---------------------------------------------------------------- CPU, memory, processes

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_the_cpu_limit() {
    for rig in rigs() {
        // The wall clock is generous so that, even on a loaded machine, the
        // 2 CPU seconds run out first.
        let req = ExecRequest::python("while True:\n    pass\n").with_timeout(Duration::from_secs(15));
        let out = rig.run(req).await;
        assert_eq!(out.limit_exceeded, Some(LimitKind::CpuTime), "[{}] {out:?}", rig.name);
        assert!(!out.timed_out, "[{}] stopped by CPU, not by the wall clock", rig.name);
        assert!(out.signal.is_some(), "[{}] {out:?}", rig.name);
        let cpu = Duration::from_secs(policy().cpu_seconds);
        assert!(out.cpu_time >= cpu * 3 / 4, "[{}] {:?}", rig.name, out.cpu_time);
        assert!(out.cpu_time < cpu + Duration::from_millis(1_500), "[{}] {:?}", rig.name, out.cpu_time);
    }
}

#[tokio::test]
async fn a_sleeper_is_killed_at_the_wall_clock_with_its_output_kept() {
    for rig in rigs() {
        let req = ExecRequest::python("import time\nprint('started')\ntime.sleep(60)\n")
            .with_timeout(Duration::from_millis(1_500));
        let out = rig.run(req).await;
        assert!(out.timed_out, "[{}] {out:?}", rig.name);
        assert_eq!(out.limit_exceeded, Some(LimitKind::WallTime));
        assert_eq!(out.signal, Some(9));
        assert_eq!(out.stdout, b"started\n", "[{}]", rig.name);
        assert!(out.wall_time < Duration::from_secs(4), "[{}] {:?}", rig.name, out.wall_time);
    }
}

#[tokio::test]
async fn a_memory_bomb_is_contained() {
    for rig in rigs() {
        // One huge allocation: refused by the address-space limit.
        let out = rig.run(ExecRequest::python("x = b'x' * (1 << 30)\nprint('allocated')")).await;
        assert!(!out.success(), "[{}] {out:?}", rig.name);
        assert!(!out.stdout_lossy().contains("allocated"));
        assert!(out.stderr_lossy().contains("MemoryError") || out.signal.is_some(), "[{}] {out:?}", rig.name);

        // Several processes, each under the address-space limit, together over
        // the memory limit: the cgroup's OOM killer steps in.
        let code = r#"
import os, time
kids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        block = b'x' * (90 << 20)
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print('survived')
"#;
        let out = rig.run(ExecRequest::python(code)).await;
        if rig.cgroups && rig.name == "bubblewrap" {
            assert_eq!(out.limit_exceeded, Some(LimitKind::Memory), "[{}] {out:?}", rig.name);
        }
        if rig.cgroups {
            // gVisor, unaware of the cgroup's limit, may reclaim and thrash at it
            // rather than be OOM-killed; then the CPU or wall limit ends it.
            assert!(
                matches!(
                    out.limit_exceeded,
                    Some(LimitKind::Memory | LimitKind::CpuTime | LimitKind::WallTime)
                ),
                "[{}] {out:?}",
                rig.name
            );
            let peak = out.peak_memory_bytes.unwrap();
            let cap = policy().memory_bytes + if rig.name == "gvisor" { 128 * MIB } else { 0 };
            assert!(peak <= cap + MIB, "[{}] peak {peak} over the limit {cap}", rig.name);
        }
        // Ended by a limit, at the latest the 8 s wall clock (plus the kill).
        assert!(out.wall_time < Duration::from_secs(10), "[{}] {out:?}", rig.name);
    }
}

/// Runs a fork bomb whose every process forks forever, sampling on the host
/// how many of its processes exist at once.
async fn fork_bomb(rig: &Rig) -> (ExecOutcome, usize) {
    let marker = format!("bulkhead-bomb-{}", uuid::Uuid::new_v4().simple());
    let code = format!("exec -a {marker} /usr/bin/bash -c 'b() {{ while :; do b & done; }}; b' 2>/dev/null");
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak, done, marker) = (peak.clone(), done.clone(), marker.clone());
        move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(host_pids_with_cmdline(&marker), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let out = rig.run(ExecRequest::bash(code).with_timeout(Duration::from_secs(3))).await;
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(host_pids_with_cmdline(&marker), 0, "[{}] bomb processes outlived the run", rig.name);
    eprintln!(
        "[{}] fork bomb: at most {} processes on the host at once; {:?}",
        rig.name,
        peak.load(Ordering::Relaxed),
        out.limit_exceeded
    );
    (out, peak.load(Ordering::Relaxed))
}

async fn host_is_fine_after(rig: &Rig) {
    let status = std::process::Command::new("/bin/true").status().expect("the host can still fork");
    assert!(status.success());
    let out = rig.run(ExecRequest::python("print('still here')")).await;
    assert_eq!(out.stdout, b"still here\n", "[{}] a run after the bomb works: {out:?}", rig.name);
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    for rig in rigs() {
        let (out, peak) = fork_bomb(&rig).await;
        assert!(out.timed_out || out.limit_exceeded.is_some(), "[{}] {out:?}", rig.name);
        assert!(out.wall_time < Duration::from_secs(6), "[{}] {:?}", rig.name, out.wall_time);
        let cap = policy().max_processes as usize;
        assert!(peak <= cap + 2, "[{}] {peak} bomb processes at once, cap {cap}", rig.name);
        if rig.name == "bubblewrap" {
            // Its processes are host processes: the bomb really ran into the cap.
            assert!(peak >= cap / 2, "[{}] the bomb only reached {peak} processes", rig.name);
        }
        host_is_fine_after(&rig).await;
    }
}

#[tokio::test]
async fn a_fork_bomb_is_contained_by_the_process_rlimit_alone() {
    // No cgroups, and a uid of its own: the per-user RLIMIT_NPROC is the only
    // cap, which holds only because the sandbox never runs as root.
    let rig = bubblewrap(BubblewrapConfig {
        cgroups: CgroupMode::Off,
        user: "64123:64123".into(),
        ..BubblewrapConfig::default()
    });
    let (out, peak) = fork_bomb(&rig).await;
    assert!(out.timed_out || out.limit_exceeded.is_some(), "{out:?}");
    let cap = policy().max_processes as usize + 2;
    assert!(peak <= cap, "{peak} bomb processes at once, rlimit {cap}");
    assert!(peak >= cap / 2, "the bomb only reached {peak} processes");
    host_is_fine_after(&rig).await;
    // Not even a zombie of the uid is left (each would count against its rlimit).
    let left = host_processes_of_uid(64123);
    assert!(left.is_empty(), "processes of the sandbox uid left on the host: {left:?}");
}

// ---------------------------------------------------------------- output and disk

#[tokio::test]
async fn a_gigabyte_of_output_is_truncated_with_bounded_memory() {
    for rig in rigs() {
        let code = r#"
import sys
chunk = b'y' * (1 << 20)
for _ in range(1024):
    sys.stdout.buffer.write(chunk)
"#;
        let out = rig.run(ExecRequest::python(code)).await;
        let cap = policy().max_output_bytes as usize;
        assert!(out.stdout_truncated, "[{}] {:?}", rig.name, out.limit_exceeded);
        assert_eq!(out.stdout.len(), cap);
        assert!(out.stdout.iter().all(|&b| b == b'y'));
        assert_eq!(out.limit_exceeded, Some(LimitKind::Output));
        assert!(
            out.wall_time < Duration::from_secs(5),
            "[{}] killed at the cap: {:?}",
            rig.name,
            out.wall_time
        );

        let out = rig.run(ExecRequest::bash("yes error-line >&2")).await;
        assert!(out.stderr_truncated && out.stderr.len() == cap, "[{}] {:?}", rig.name, out.limit_exceeded);
        assert!(out.stdout.is_empty());
    }
    // Had any stream been buffered whole, this process would have peaked near 1 GiB.
    assert!(vm_hwm_bytes() < 400 * MIB, "test process peaked at {} MiB", vm_hwm_bytes() / MIB);
}

#[tokio::test]
async fn a_disk_filler_hits_the_file_size_and_space_limits() {
    for rig in rigs() {
        let before = free_tmp_bytes();
        let code = r#"
import errno, os
def attempt(label, fn):
    try:
        fn()
        print(label + "=ok")
    except OSError as e:
        print(label + "=" + errno.errorcode.get(e.errno, str(e.errno)))
def sparse():
    with open("/work/sparse", "wb") as f:
        f.seek(100 << 20)
        f.write(b"x")
def fill(d):
    def go():
        chunk = b"z" * (1 << 20)
        for i in range(64):
            with open(f"{d}/fill{i}", "wb") as f:
                f.write(chunk)
    return go
attempt("big_file", sparse)
attempt("fill_work", fill("/work"))
attempt("fill_tmp", fill("/tmp"))
"#;
        let out = rig.run(ExecRequest::python(code)).await;
        let r = report(&out);
        assert_eq!(r.get("big_file").map(String::as_str), Some("EFBIG"), "[{}] {out:?}", rig.name);
        // bubblewrap's tmpfs runs out of space; gVisor's in-memory overlay runs into the memory limit.
        for dir in ["fill_work", "fill_tmp"] {
            let got = r.get(dir).map(String::as_str);
            assert!(
                matches!(got, Some("ENOSPC" | "ENOMEM" | "EFBIG"))
                    || out.limit_exceeded == Some(LimitKind::Memory),
                "[{}] {dir}: {got:?} {out:?}",
                rig.name
            );
        }
        let after = free_tmp_bytes();
        assert!(after + 32 * MIB > before, "[{}] host /tmp lost {} MiB", rig.name, (before - after) / MIB);
    }
}

fn free_tmp_bytes() -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail", "/tmp"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

// ---------------------------------------------------------------- network

#[tokio::test]
async fn the_network_is_unreachable() {
    for rig in rigs() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio::spawn({
            let accepted = accepted.clone();
            async move {
                while listener.accept().await.is_ok() {
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let code = format!(
            r#"
import socket
def attempt(label, fn):
    try:
        fn()
        print(label + "=connected")
    except OSError as e:
        print(label + "=" + type(e).__name__ + ":" + str(e.errno))
def connect(host, port):
    def go():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect((host, port))
    return go
names = sorted(n for _, n in socket.if_nameindex())
print("interfaces=" + ",".join(names))
try:
    routes = [l for l in open("/proc/net/route").read().splitlines()[1:] if l.strip()]
except OSError:
    routes = []
print("routes=" + str(len(routes)))
attempt("host_loopback", connect("127.0.0.1", {port}))
# Only with no way out: a broken sandbox must fail the test, not send a packet.
if names == ["lo"] and not routes:
    attempt("outside", connect("192.0.2.1", 80))
try:
    socket.getaddrinfo("example.com", 443)
    print("dns=resolved")
except OSError as e:
    print("dns=failed")
"#
        );
        let out = rig.run(ExecRequest::python(code)).await;
        acceptor.abort();
        let r = report(&out);
        assert_eq!(r["interfaces"], "lo", "[{}] {out:?}", rig.name);
        assert_eq!(r["routes"], "0");
        assert!(r["host_loopback"].starts_with("ConnectionRefusedError"), "[{}] {r:?}", rig.name);
        let outside = r.get("outside").expect("the outside connect was attempted");
        assert_ne!(outside, "connected", "[{}]", rig.name);
        assert_eq!(r["dns"], "failed");
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "[{}] the host listener saw a connection", rig.name);
    }
}

// ---------------------------------------------------------------- files

/// A host directory standing in for Bulkhead's data dir, with a canary file.
fn data_dir_with_canary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("bulkhead-data-").tempdir().unwrap();
    let canary = dir.path().join("canary-bulkhead.txt");
    std::fs::write(&canary, "secret tenant data").unwrap();
    (dir, canary)
}

#[tokio::test]
async fn host_files_are_invisible() {
    let (data, canary) = data_dir_with_canary();
    for rig in rigs() {
        let code = format!(
            r#"
import os
def probe(label, path):
    try:
        with open(path) as f:
            f.read()
        print(label + "=readable")
    except OSError as e:
        print(label + "=" + type(e).__name__)
probe("shadow", "/etc/shadow")
probe("passwd", "/etc/passwd")
probe("canary", "{canary}")
probe("data_dir", "{data}")
probe("repo", "{repo}/Cargo.toml")
probe("root_home", "/root/.bashrc")
probe("host_proc_environ", "/proc/1/root/etc/shadow")
found = []
# /usr (and /bin, /lib… into it) is the read-only runtime; everything else is walked.
for top in [p for p in os.listdir("/") if p not in ("usr", "bin", "lib", "lib64", "lib32", "sbin", "proc", "sys")]:
    top = "/" + top
    for root, dirs, files in os.walk(top):
        found += [os.path.join(root, f) for f in files if "canary" in f]
print("found=" + ",".join(found))
print("top=" + ",".join(sorted(os.listdir("/"))))
"#,
            canary = canary.display(),
            data = data.path().display(),
            repo = env!("CARGO_MANIFEST_DIR"),
        );
        let out = rig.run(ExecRequest::python(code)).await;
        let r = report(&out);
        for key in ["shadow", "passwd", "canary", "data_dir", "repo", "root_home", "host_proc_environ"] {
            assert_ne!(r[key], "readable", "[{}] {key} is readable: {out:?}", rig.name);
        }
        assert_eq!(r["found"], "", "[{}]", rig.name);
        for forbidden in ["etc", "root", "home", "var", "srv", "mnt", "opt", "boot"] {
            assert!(
                !r["top"].split(',').any(|e| e == forbidden),
                "[{}] /{forbidden} in {}",
                rig.name,
                r["top"]
            );
        }
    }
}

#[tokio::test]
async fn writes_outside_the_work_dir_fail() {
    let (data, _canary) = data_dir_with_canary();
    let token = uuid::Uuid::new_v4().simple().to_string();
    for rig in rigs() {
        let code = format!(
            r#"
def attempt(label, path):
    try:
        with open(path, "w") as f:
            f.write("pwned")
        print(label + "=written")
    except OSError as e:
        print(label + "=" + type(e).__name__)
attempt("usr", "/usr/bulkhead-{token}")
attempt("usr_bin", "/usr/bin/bulkhead-{token}")
attempt("root", "/bulkhead-{token}")
attempt("etc", "/etc/bulkhead-{token}")
attempt("data_dir", "{data}/bulkhead-{token}")
attempt("proc_sys", "/proc/sys/kernel/hostname")
attempt("work", "/work/ok")
attempt("tmp", "/tmp/ok")
"#,
            data = data.path().display()
        );
        let out = rig.run(ExecRequest::python(code)).await;
        let r = report(&out);
        for key in ["usr", "usr_bin", "root", "etc", "data_dir", "proc_sys"] {
            assert_ne!(r[key], "written", "[{}] wrote {key}: {out:?}", rig.name);
        }
        assert_eq!((r["work"].as_str(), r["tmp"].as_str()), ("written", "written"), "[{}]", rig.name);
        for host in [
            PathBuf::from(format!("/usr/bulkhead-{token}")),
            PathBuf::from(format!("/usr/bin/bulkhead-{token}")),
            PathBuf::from(format!("/bulkhead-{token}")),
            data.path().join(format!("bulkhead-{token}")),
        ] {
            assert!(!host.exists(), "[{}] {} appeared on the host", rig.name, host.display());
        }
        assert_ne!(std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(), "pwned");
    }
}

// ---------------------------------------------------------------- processes and privileges

#[tokio::test]
async fn host_processes_are_invisible_and_cannot_be_killed_or_traced() {
    for rig in rigs() {
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let victim = sleeper.id();
        let me = std::process::id();
        let code = format!(
            r#"
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("pids=" + ",".join(map(str, pids)))
print("sees_test=" + str(os.path.exists("/proc/{me}/cmdline") and b"hostile" in open("/proc/{me}/cmdline", "rb").read()))
print("sees_victim=" + str(os.path.exists("/proc/{victim}/cmdline") and b"sleep" in open("/proc/{victim}/cmdline", "rb").read()))
try:
    os.kill({victim}, signal.SIGKILL)
    print("kill=sent")
except OSError as e:
    print("kill=" + type(e).__name__)
PTRACE_ATTACH = 16
r = libc.ptrace(PTRACE_ATTACH, {victim}, None, None)
print("ptrace_victim=" + ("attached" if r == 0 else "errno" + str(ctypes.get_errno())))
r = libc.ptrace(PTRACE_ATTACH, {me}, None, None)
print("ptrace_test=" + ("attached" if r == 0 else "errno" + str(ctypes.get_errno())))
"#
        );
        let out = rig.run(ExecRequest::python(code)).await;
        let r = report(&out);
        assert_eq!(r["sees_test"], "False", "[{}] {out:?}", rig.name);
        assert_eq!(r["sees_victim"], "False", "[{}]", rig.name);
        assert_ne!(r["kill"], "sent", "[{}]", rig.name);
        assert_ne!(r["ptrace_victim"], "attached", "[{}]", rig.name);
        assert_ne!(r["ptrace_test"], "attached", "[{}]", rig.name);
        let pids: Vec<u32> =
            r["pids"].split(',').filter(|p| !p.is_empty()).map(|p| p.parse().unwrap()).collect();
        assert!(
            pids.len() <= 5 && pids.iter().all(|&p| p < 100),
            "[{}] a private pid namespace: {pids:?}",
            rig.name
        );
        assert!(sleeper.try_wait().unwrap().is_none(), "[{}] the host sleeper was killed", rig.name);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}

#[tokio::test]
async fn mount_ptrace_and_setuid_tricks_gain_nothing() {
    for rig in rigs() {
        let code = r#"
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def attempt(label, fn):
    try:
        r = fn()
        print(label + "=" + ("ok" if r is None else str(r)))
    except Exception as e:
        print(label + "=" + type(e).__name__)
os.mkdir("/work/m")
attempt("mount", lambda: "ok" if libc.mount(b"none", b"/work/m", b"tmpfs", 0, None) == 0 else "errno" + str(ctypes.get_errno()))
attempt("bind_usr", lambda: "ok" if libc.mount(b"/work", b"/usr", None, 4096, None) == 0 else "errno" + str(ctypes.get_errno()))
attempt("setuid0", lambda: os.setuid(0))
attempt("setgid0", lambda: os.setgid(0))
attempt("setgroups0", lambda: os.setgroups([0]))
attempt("chroot", lambda: os.chroot("/work"))
for tool, args in [("su", ["/usr/bin/su", "-c", "id -u", "root"]), ("mount_bin", ["/usr/bin/mount", "-t", "tmpfs", "none", "/work/m"])]:
    if os.path.exists(args[0]):
        p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=5)
        print(tool + "=exit" + str(p.returncode) + ":" + p.stdout.decode().strip())
    else:
        print(tool + "=absent")
# A setuid-root binary copied into the work dir loses its root owner; and
# the setuid bits of /usr are ignored under no_new_privs.
euid = subprocess.run(["/usr/bin/python3", "-c", "import os; print(os.geteuid())"], capture_output=True).stdout.decode().strip()
print("child_euid=" + euid)
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
print("cap_eff=" + status.get("CapEff", "?").strip())
print("no_new_privs=" + status.get("NoNewPrivs", "?").strip())
print("uid=" + str(os.getuid()) + "," + str(os.geteuid()))
"#;
        let out = rig.run(ExecRequest::python(code)).await;
        let r = report(&out);
        assert_ne!(r["mount"], "ok", "[{}] {out:?}", rig.name);
        assert_ne!(r["bind_usr"], "ok", "[{}]", rig.name);
        for key in ["setuid0", "setgid0", "setgroups0", "chroot"] {
            // EPERM, or EINVAL where uid 0 is not even mapped into the namespace.
            assert!(matches!(r[key].as_str(), "PermissionError" | "OSError"), "[{}] {key}: {r:?}", rig.name);
        }
        assert!(!r["su"].starts_with("exit0"), "[{}] su: {}", rig.name, r["su"]);
        assert!(!r["mount_bin"].starts_with("exit0"), "[{}] mount: {}", rig.name, r["mount_bin"]);
        assert_ne!(r["child_euid"], "0", "[{}]", rig.name);
        assert!(!r["uid"].split(',').any(|u| u == "0"), "[{}] {}", rig.name, r["uid"]);
        if rig.name == "bubblewrap" {
            assert_eq!(r["cap_eff"], "0000000000000000", "[{}]", rig.name);
            assert_eq!(r["no_new_privs"], "1", "[{}]", rig.name);
        }
    }
}

#[tokio::test]
async fn nested_user_namespaces_are_refused_in_bubblewrap() {
    let rig = bubblewrap(BubblewrapConfig::default());
    let code = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
r = libc.unshare(CLONE_NEWUSER)
print("unshare=" + ("ok" if r == 0 else "errno" + str(ctypes.get_errno())))
"#;
    let out = rig.run(ExecRequest::python(code)).await;
    assert_ne!(report(&out)["unshare"], "ok", "{out:?}");
}

// ---------------------------------------------------------------- executions side by side

#[tokio::test]
async fn concurrent_executions_of_two_tenants_cannot_see_each_other() {
    for rig in rigs() {
        let (a, b) = (tenant(), tenant());
        let probe = |me: &str, other: &str| {
            format!(
                r#"
import os, time
open("/work/secret-{me}", "w").write("mine")
open("/tmp/secret-{me}", "w").write("mine")
time.sleep(1.0)
found = []
for top in ["/work", "/tmp", "/dev", "/proc"]:
    for root, dirs, files in os.walk(top):
        if root.startswith("/proc/") and root.count("/") > 2:
            dirs[:] = []
        found += [os.path.join(root, f) for f in files if "secret-{other}" in f]
cmdlines = []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            cmdlines.append(open(f"/proc/{{p}}/cmdline", "rb").read().replace(b"\0", b" ").decode())
        except OSError:
            pass
print("found=" + ",".join(found))
print("sees_other=" + str(any("{other}" in c for c in cmdlines)))
time.sleep(1.0)
"#
            )
        };
        let policy = policy();
        let req_a = ExecRequest::python(probe("tenant-a", "tenant-b")).with_file("marker-tenant-a", "a");
        let req_b = ExecRequest::python(probe("tenant-b", "tenant-a")).with_file("marker-tenant-b", "b");
        let (out_a, out_b) = tokio::join!(rig.run_as(&a, &policy, req_a), rig.run_as(&b, &policy, req_b));
        for (who, out) in [("a", &out_a), ("b", &out_b)] {
            assert!(out.success(), "[{}] {who}: {out:?}", rig.name);
            let r = report(out);
            assert_eq!(r["found"], "", "[{}] {who} found the other's files", rig.name);
            assert_eq!(r["sees_other"], "False", "[{}] {who} sees the other's processes", rig.name);
        }
        // They ran side by side: together they took well under twice one run.
        assert!(out_a.wall_time >= Duration::from_secs(2));
    }
}

// ---------------------------------------------------------------- the set-up itself

#[test]
fn the_sandbox_user_is_not_root_and_exists() {
    let user = BubblewrapConfig::default().user;
    let out = std::process::Command::new("id").arg("-u").arg(&user).output().unwrap();
    assert!(out.status.success(), "the user {user} is missing: run `bash scripts/sandbox.sh`");
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    assert!(Path::new("/usr/bin/python3").exists(), "python3 is needed by the suite");
}
