//! Cost of a rate check, by hand: `cargo bench -p bulkhead-limits`.
//!
//! - `LocalLimiter`: ns per check, one tenant and 10,000 tenants (round robin).
//! - `RedisLimiter` (when `BULKHEAD_BENCH_REDIS_URL` is set, e.g. to what
//!   `scripts/redis.sh start DIR` prints): µs per check one at a time, next
//!   to a bare PING round trip, and checks per second from 16 concurrent
//!   tasks sharing one connection.
//!
//! Plain `std::time::Instant` loops, no harness; the machines are shared, so
//! compare rows of one run rather than runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_core::{OperatorCtx, TenantCtx, TenantId};
use bulkhead_limits::{Limiter, LocalLimiter, RateKind, RedisLimiter, RedisLimiterConfig};

/// High enough that every check is admitted: we measure the path, not refusals.
const PER_MINUTE: u64 = 1_000_000_000;

fn tenants(n: usize) -> Vec<TenantCtx> {
    let op = OperatorCtx::local_cli();
    (0..n).map(|_| op.act_for(TenantId::new())).collect()
}

async fn run_sequential(limiter: &dyn Limiter, ctxs: &[TenantCtx], iters: usize) -> Duration {
    // Warm up: create every bucket, load scripts, fill caches.
    for ctx in ctxs {
        let _ = limiter.check(ctx, RateKind::Requests, PER_MINUTE, 1).await.unwrap();
    }
    let start = Instant::now();
    for i in 0..iters {
        let d = limiter.check(&ctxs[i % ctxs.len()], RateKind::Requests, PER_MINUTE, 1).await.unwrap();
        let _ = std::hint::black_box(d);
    }
    start.elapsed()
}

fn row(name: &str, value: String, note: &str) {
    println!("| {name:<44} | {value:>14} | {note:<28} |");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        println!("| {:<44} | {:>14} | {:<28} |", "benchmark", "result", "");
        println!("|{:-<46}|{:->16}|{:-<30}|", "", ":", "");

        let local = LocalLimiter::new();
        for (n, iters) in [(1usize, 2_000_000usize), (10_000, 2_000_000)] {
            let ctxs = tenants(n);
            let elapsed = run_sequential(&local, &ctxs, iters).await;
            row(
                &format!("LocalLimiter::check, {n} tenant(s)"),
                format!("{:.0} ns", elapsed.as_nanos() as f64 / iters as f64),
                &format!("{iters} checks"),
            );
        }

        let Ok(url) = std::env::var("BULKHEAD_BENCH_REDIS_URL") else {
            row("RedisLimiter::check", "skipped".to_owned(), "set BULKHEAD_BENCH_REDIS_URL");
            return;
        };
        let mut config = RedisLimiterConfig::new(url);
        config.op_timeout = Duration::from_secs(5);
        let redis = Arc::new(RedisLimiter::connect(config).await.expect("connect to Redis"));

        // The floor: one bare round trip through the same connection.
        let iters = 20_000;
        let start = Instant::now();
        for _ in 0..iters {
            redis.ping().await.unwrap();
        }
        row(
            "Redis PING round trip, sequential (floor)",
            format!("{:.1} µs", start.elapsed().as_secs_f64() * 1e6 / iters as f64),
            &format!("{iters} pings"),
        );

        let ctxs = tenants(1000);
        let elapsed = run_sequential(&*redis, &ctxs, iters).await;
        row(
            "RedisLimiter::check, sequential",
            format!("{:.1} µs", elapsed.as_secs_f64() * 1e6 / iters as f64),
            &format!("{iters} checks, 1000 tenants"),
        );

        const TASKS: usize = 16;
        let per_task = 10_000;
        let ctxs = Arc::new(ctxs);
        let start = Instant::now();
        let handles: Vec<_> = (0..TASKS)
            .map(|t| {
                let (redis, ctxs) = (redis.clone(), ctxs.clone());
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let ctx = &ctxs[(t * per_task + i) % ctxs.len()];
                        let d = redis.check(ctx, RateKind::Requests, PER_MINUTE, 1).await.unwrap();
                        let _ = std::hint::black_box(d);
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        let elapsed = start.elapsed();
        let total = TASKS * per_task;
        row(
            &format!("RedisLimiter::check, {TASKS} concurrent tasks"),
            format!("{:.0} checks/s", total as f64 / elapsed.as_secs_f64()),
            &format!("{:.1} µs/check, {total} checks", elapsed.as_secs_f64() * 1e6 / total as f64),
        );
    });
}
