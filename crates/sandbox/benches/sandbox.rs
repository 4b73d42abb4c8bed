//! What a sandboxed `print(1)` costs: start-to-exit latency per backend
//! (p50, p99) beside a bare `python3 -c 'print(1)'` on the host, and
//! executions per second at concurrency 1–4 on this machine.
//!
//! Run by hand: `cargo bench -p bulkhead-sandbox` (needs `scripts/sandbox.sh`;
//! gVisor is measured where `runsc` is installed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_core::{OperatorCtx, TenantId};
use bulkhead_sandbox::{
    Backend, BubblewrapBackend, BubblewrapConfig, CgroupMode, ExecRequest, GvisorBackend, GvisorConfig,
    SandboxPolicy,
};

const LATENCY_RUNS: usize = 60;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn print_latency(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<28} p50 {:>9}   p99 {:>9}   min {:>9}   ({} runs)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(samples[0]),
        samples.len()
    );
}

fn bare_python() -> Vec<Duration> {
    (0..LATENCY_RUNS)
        .map(|_| {
            let start = Instant::now();
            let out =
                std::process::Command::new("/usr/bin/python3").args(["-c", "print(1)"]).output().unwrap();
            assert_eq!(out.stdout, b"1\n");
            start.elapsed()
        })
        .collect()
}

async fn latency(backend: &Arc<dyn Backend>, runs: usize) -> Vec<Duration> {
    let ctx = OperatorCtx::local_cli().act_for(TenantId::new());
    let req = ExecRequest::python("print(1)");
    let limits = SandboxPolicy::enabled().check(&req).unwrap();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let out = backend.execute(&ctx, &req, &limits).await.unwrap();
        samples.push(start.elapsed());
        assert_eq!(out.stdout, b"1\n", "{out:?}");
    }
    samples
}

/// Executions per second with `workers` running back to back, `total` in all.
async fn throughput(backend: &Arc<dyn Backend>, workers: usize, total: usize) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let backend = backend.clone();
            let n = total / workers + usize::from(w < total % workers);
            tokio::spawn(async move {
                let ctx = OperatorCtx::local_cli().act_for(TenantId::new());
                let req = ExecRequest::python("print(1)");
                let limits = SandboxPolicy::enabled().check(&req).unwrap();
                for _ in 0..n {
                    let out = backend.execute(&ctx, &req, &limits).await.unwrap();
                    assert_eq!(out.stdout, b"1\n");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut backends: Vec<(String, Arc<dyn Backend>, usize)> = Vec::new();
        let bwrap = BubblewrapBackend::new(BubblewrapConfig::default())
            .expect("bubblewrap is not usable: run `bash scripts/sandbox.sh` first");
        let cgroups = bwrap.cgroup_version();
        backends.push((format!("bubblewrap (cgroup {cgroups})"), Arc::new(bwrap), 60));
        let bare =
            BubblewrapBackend::new(BubblewrapConfig { cgroups: CgroupMode::Off, ..Default::default() })
                .expect("bubblewrap");
        backends.push(("bubblewrap (rlimits only)".into(), Arc::new(bare), 60));
        if GvisorBackend::available(&GvisorConfig::default()) {
            let gvisor = GvisorBackend::new(GvisorConfig::default()).expect("gVisor");
            backends.push(("gvisor (runsc, ptrace)".into(), Arc::new(gvisor), 20));
        } else {
            println!("gVisor (runsc) not installed: skipped");
        }

        println!("start-to-exit latency of python `print(1)`, sequential, {} cores", num_cpus());
        print_latency("bare python3 -c 'print(1)'", bare_python());
        for (name, backend, runs) in &backends {
            // One warm-up run so page cache and cgroup parents are in place.
            latency(backend, 1).await;
            print_latency(name, latency(backend, *runs).await);
        }

        println!();
        println!("executions per second (python `print(1)`), by concurrency");
        for (name, backend, runs) in &backends {
            let mut line = format!("{name:<28}");
            for workers in 1..=4 {
                let rate = throughput(backend, workers, *runs).await;
                line.push_str(&format!("   c={workers}: {rate:>6.1}/s"));
            }
            println!("{line}");
        }
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
