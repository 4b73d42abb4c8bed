//! Behaviour of both limiters. The local ones run on paused Tokio time; the
//! Redis ones need a real server at `BULKHEAD_TEST_REDIS_URL` (which
//! `scripts/redis.sh start DIR` prints) and never skip silently: without it
//! they fail, unless `BULKHEAD_TEST_SKIP_REDIS=1` says the run deliberately
//! leaves Redis out.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_core::{OperatorCtx, TenantCtx, TenantId};
use proptest::prelude::*;
use tokio::time::advance;

use crate::rate::NANOS_PER_MINUTE;
use crate::*;

fn tenant() -> TenantCtx {
    OperatorCtx::local_cli().act_for(TenantId::new())
}

fn remaining(d: Decision) -> u64 {
    match d {
        Decision::Allowed { remaining } => remaining,
        Decision::Limited { retry_after } => panic!("limited, retry after {retry_after:?}"),
    }
}

fn retry_after(d: Decision) -> Duration {
    match d {
        Decision::Allowed { remaining } => panic!("allowed, {remaining} remaining"),
        Decision::Limited { retry_after } => retry_after,
    }
}

const SEC: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Local limiter, paused time
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn local_burst_then_refusal_then_proportional_refill() {
    let limiter = LocalLimiter::new();
    let ctx = tenant();
    // 600 per minute: a burst of exactly 600, one more every 100 ms after.
    for i in 0..600 {
        let d = limiter.check(&ctx, RateKind::Requests, 600, 1).await.unwrap();
        assert_eq!(remaining(d), 599 - i);
    }
    let d = limiter.check(&ctx, RateKind::Requests, 600, 1).await.unwrap();
    assert_eq!(retry_after(d), Duration::from_millis(100));

    advance(Duration::from_millis(99)).await;
    let d = limiter.check(&ctx, RateKind::Requests, 600, 1).await.unwrap();
    assert_eq!(retry_after(d), Duration::from_millis(1));

    // 15 s after the burst a quarter of the bucket has refilled: exactly
    // 150 more, then refused.
    advance(Duration::from_millis(14_901)).await;
    let d = limiter.check(&ctx, RateKind::Requests, 600, 0).await.unwrap();
    assert_eq!(remaining(d), 150, "a zero-cost check only reports");
    let d = limiter.check(&ctx, RateKind::Requests, 600, 150).await.unwrap();
    assert_eq!(remaining(d), 0);
    let d = limiter.check(&ctx, RateKind::Requests, 600, 1).await.unwrap();
    assert_eq!(retry_after(d), Duration::from_millis(100));

    // A full minute refills everything, never more than the burst.
    advance(Duration::from_secs(3600)).await;
    let d = limiter.check(&ctx, RateKind::Requests, 600, 0).await.unwrap();
    assert_eq!(remaining(d), 600);
}

#[tokio::test(start_paused = true)]
async fn local_costs_above_the_limit_are_an_error_not_a_wait() {
    let limiter = LocalLimiter::new();
    let ctx = tenant();
    let err = limiter.check(&ctx, RateKind::Tokens, 1000, 1001).await.unwrap_err();
    assert!(matches!(
        err,
        LimitError::CostExceedsLimit { kind: RateKind::Tokens, cost: 1001, per_minute: 1000 }
    ));
    // A whole minute's worth at once is fine.
    let d = limiter.check(&ctx, RateKind::Tokens, 1000, 1000).await.unwrap();
    assert_eq!(remaining(d), 0);
    assert!(matches!(limiter.check(&ctx, RateKind::Tokens, 0, 0).await, Err(LimitError::InvalidArgument(_))));
}

#[tokio::test(start_paused = true)]
async fn local_adjust_refunds_and_charges() {
    let limiter = LocalLimiter::new();
    let ctx = tenant();
    // Admission charges an estimate of 8000 of 10000 tokens per minute...
    let d = limiter.check(&ctx, RateKind::Tokens, 10_000, 8000).await.unwrap();
    assert_eq!(remaining(d), 2000);
    // ...settlement finds 5000 were used: refund 3000.
    limiter.adjust(&ctx, RateKind::Tokens, 10_000, -3000).await.unwrap();
    let d = limiter.check(&ctx, RateKind::Tokens, 10_000, 0).await.unwrap();
    assert_eq!(remaining(d), 5000);
    // A refund never makes the bucket more than full.
    limiter.adjust(&ctx, RateKind::Tokens, 10_000, -1_000_000).await.unwrap();
    let d = limiter.check(&ctx, RateKind::Tokens, 10_000, 0).await.unwrap();
    assert_eq!(remaining(d), 10_000);
    // Another call estimated 1000 but used 13000: the extra is charged
    // without refusal, and the tenant waits it off: 3000 over = 18 s.
    let d = limiter.check(&ctx, RateKind::Tokens, 10_000, 1000).await.unwrap();
    assert_eq!(remaining(d), 9000);
    limiter.adjust(&ctx, RateKind::Tokens, 10_000, 12_000).await.unwrap();
    let d = limiter.check(&ctx, RateKind::Tokens, 10_000, 1).await.unwrap();
    assert_eq!(retry_after(d), Duration::from_millis(18_006));
    advance(Duration::from_millis(18_006)).await;
    let d = limiter.check(&ctx, RateKind::Tokens, 10_000, 1).await.unwrap();
    assert_eq!(remaining(d), 0);
}

#[tokio::test(start_paused = true)]
async fn local_idle_state_is_swept() {
    let limiter = LocalLimiter::new();
    for _ in 0..3000 {
        let _ = limiter.check(&tenant(), RateKind::Requests, 60, 1).await.unwrap();
    }
    assert_eq!(limiter.entries(), 3000);
    // After a second, each bucket (1 of 60 per minute) has refilled.
    advance(SEC).await;
    let ctx = tenant();
    for _ in 0..2000 {
        let _ = limiter.check(&ctx, RateKind::Requests, 1_000_000, 1).await.unwrap();
    }
    assert_eq!(limiter.entries(), 1, "only the active tenant is left");
}

// ---------------------------------------------------------------------------
// The bound, as a property
// ---------------------------------------------------------------------------

/// One step: advance the clock, then check `cost`; on refusal optionally
/// wait exactly the advertised `retry_after` and try again.
#[derive(Debug, Clone)]
struct Step {
    advance_ns: u64,
    cost_sel: u64,
    retry_on_refusal: bool,
}

fn step() -> impl Strategy<Value = Step> {
    let advance = prop_oneof![
        3 => Just(0u64),
        4 => 0u64..1_000_000_000,       // under a second
        2 => 0u64..90_000_000_000,      // up to a minute and a half
    ];
    (advance, any::<u64>(), any::<bool>()).prop_map(|(advance_ns, cost_sel, retry_on_refusal)| Step {
        advance_ns,
        cost_sel,
        retry_on_refusal,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// With limit `L` per minute and burst `L`, for any two admissions at
    /// `s_i <= s_j` the costs admitted from the i-th to the j-th sum to at
    /// most `L + L·(s_j − s_i)/60 s` (exactly, in integers); so any 60 s
    /// window admits at most `2·L`. Also, `retry_after` is exact: the same
    /// cost is refused 1 ns before it and admitted at it.
    #[test]
    fn local_gcra_admits_at_most_burst_plus_refill(
        per_minute in prop_oneof![1u64..=10, 1u64..=5_000, Just(600u64), Just(7u64)],
        steps in prop::collection::vec(step(), 1..250),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let admitted: Vec<(u128, u64)> = rt.block_on(async {
            let limiter = LocalLimiter::new();
            let ctx = tenant();
            let start = tokio::time::Instant::now();
            let mut admitted = Vec::new();
            for s in &steps {
                advance(Duration::from_nanos(s.advance_ns)).await;
                // Mostly small costs, sometimes anything up to the limit.
                let cost = if s.cost_sel % 4 == 0 {
                    s.cost_sel % (per_minute + 1)
                } else {
                    (1 + s.cost_sel % 3).min(per_minute)
                };
                let now = || start.elapsed().as_nanos();
                match limiter.check(&ctx, RateKind::Requests, per_minute, cost).await.unwrap() {
                    Decision::Allowed { .. } => admitted.push((now(), cost)),
                    Decision::Limited { retry_after } => {
                        assert!(!retry_after.is_zero());
                        if s.retry_on_refusal {
                            advance(retry_after - Duration::from_nanos(1)).await;
                            let d = limiter.check(&ctx, RateKind::Requests, per_minute, cost).await.unwrap();
                            assert!(!d.is_allowed(), "admitted 1 ns before retry_after");
                            advance(Duration::from_nanos(1)).await;
                            let d = limiter.check(&ctx, RateKind::Requests, per_minute, cost).await.unwrap();
                            assert!(d.is_allowed(), "refused at retry_after");
                            admitted.push((now(), cost));
                        }
                    }
                }
            }
            admitted
        });

        let l = u128::from(per_minute);
        // prefix[k] = total cost of the first k admissions.
        let mut prefix = vec![0u128];
        for &(_, cost) in &admitted {
            prefix.push(prefix.last().unwrap() + u128::from(cost));
        }
        for i in 0..admitted.len() {
            for j in i..admitted.len() {
                let total = prefix[j + 1] - prefix[i];
                let span = admitted[j].0 - admitted[i].0;
                prop_assert!(
                    total * NANOS_PER_MINUTE <= l * NANOS_PER_MINUTE + l * span,
                    "admitted {total} in {span} ns with a limit of {per_minute}/min"
                );
                if span <= NANOS_PER_MINUTE {
                    prop_assert!(total <= 2 * l, "{total} > 2 x {per_minute} within 60 s");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Concurrency, local
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn local_concurrency_cap_release_and_expiry() {
    let limiter = LocalLimiter::new();
    let ctx = tenant();
    let lease = 10 * SEC;
    let kind = ConcurrencyKind::Runs;
    let a = limiter.acquire(&ctx, kind, 2, lease).await.unwrap().unwrap();
    let b = limiter.acquire(&ctx, kind, 2, lease).await.unwrap().unwrap();
    assert_ne!(a.id(), b.id());
    assert_eq!(a.tenant_id(), ctx.tenant_id());
    assert!(limiter.acquire(&ctx, kind, 2, lease).await.unwrap().is_none());
    // The other kind is a separate cap.
    let s = limiter.acquire(&ctx, ConcurrencyKind::SandboxExecs, 1, lease).await.unwrap().unwrap();

    limiter.release(a).await.unwrap();
    let c = limiter.acquire(&ctx, kind, 2, lease).await.unwrap().unwrap();
    assert!(limiter.acquire(&ctx, kind, 2, lease).await.unwrap().is_none());

    // b is renewed half-way, c is not: at 10 s c has expired, b has not.
    advance(5 * SEC).await;
    assert!(limiter.renew(&b, lease).await.unwrap());
    advance(5 * SEC).await;
    assert!(!limiter.renew(&c, lease).await.unwrap(), "c's lease is over");
    let d = limiter.acquire(&ctx, kind, 2, lease).await.unwrap().unwrap();
    assert!(limiter.acquire(&ctx, kind, 2, lease).await.unwrap().is_none());

    // Never released, b and d expire too; releasing an expired permit is fine.
    advance(10 * SEC).await;
    limiter.release(c).await.unwrap();
    for _ in 0..2 {
        let _ = limiter.acquire(&ctx, kind, 2, lease).await.unwrap().unwrap();
    }
    let _ = (b, d, s);
}

// ---------------------------------------------------------------------------
// Tenant separation, both limiters
// ---------------------------------------------------------------------------

async fn tenants_are_separate(limiter: &dyn Limiter) {
    let (a, b) = (tenant(), tenant());
    for _ in 0..5 {
        let _ = remaining(limiter.check(&a, RateKind::Requests, 5, 1).await.unwrap());
    }
    assert!(!limiter.check(&a, RateKind::Requests, 5, 1).await.unwrap().is_allowed());
    limiter.adjust(&a, RateKind::Requests, 5, 100).await.unwrap();
    // B's bucket and A's other kinds are untouched.
    let d = limiter.check(&b, RateKind::Requests, 5, 1).await.unwrap();
    assert_eq!(remaining(d), 4);
    let d = limiter.check(&a, RateKind::ToolCalls, 5, 1).await.unwrap();
    assert_eq!(remaining(d), 4);

    let lease = 30 * SEC;
    let held = limiter.acquire(&a, ConcurrencyKind::Runs, 1, lease).await.unwrap().unwrap();
    assert!(limiter.acquire(&a, ConcurrencyKind::Runs, 1, lease).await.unwrap().is_none());
    let other =
        limiter.acquire(&b, ConcurrencyKind::Runs, 1, lease).await.unwrap().expect("B has its own slot");
    assert_eq!(other.tenant_id(), b.tenant_id());
    limiter.release(held).await.unwrap();
    limiter.release(other).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn local_tenants_are_separate() {
    tenants_are_separate(&LocalLimiter::new()).await;
}

#[tokio::test]
async fn redis_tenants_are_separate() {
    let Some(url) = redis_url() else { return };
    tenants_are_separate(&connect(&url).await).await;
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

const REDIS_URL_ENV: &str = "BULKHEAD_TEST_REDIS_URL";
const SKIP_REDIS_ENV: &str = "BULKHEAD_TEST_SKIP_REDIS";

/// The test server's URL, `None` only when deliberately skipped.
fn redis_url() -> Option<String> {
    match std::env::var(REDIS_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(SKIP_REDIS_ENV).as_deref() == Ok("1") => {
            eprintln!("skipped: {SKIP_REDIS_ENV}=1, Redis tests deliberately left out");
            None
        }
        _ => panic!(
            "Redis tests need {REDIS_URL_ENV}: run the suite with `bash scripts/test.sh`, or start \
             a throwaway server with `scripts/redis.sh start DIR` and export the URL it prints, or \
             set {SKIP_REDIS_ENV}=1 to leave Redis out deliberately"
        ),
    }
}

/// A limiter with its own connection: one "replica". The timeout is
/// generous because test machines are shared and busy.
async fn connect(url: &str) -> RedisLimiter {
    let mut config = RedisLimiterConfig::new(url);
    config.op_timeout = 5 * SEC;
    RedisLimiter::connect(config).await.expect("connect to the test Redis")
}

#[tokio::test]
async fn redis_burst_refusal_refill_and_adjust() {
    let Some(url) = redis_url() else { return };
    let limiter = connect(&url).await;
    let ctx = tenant();
    let kind = RateKind::Requests;

    // 60 per minute: a burst of 60 (one unit refills per second, longer than
    // the burst takes), then refused until the first unit is back.
    let d = limiter.check(&ctx, kind, 60, 1).await.unwrap();
    assert_eq!(remaining(d), 59);
    for _ in 1..60 {
        let _ = remaining(limiter.check(&ctx, kind, 60, 1).await.unwrap());
    }
    let wait = retry_after(limiter.check(&ctx, kind, 60, 1).await.unwrap());
    assert!(wait > Duration::ZERO && wait <= SEC, "{wait:?}");
    // The documented key (hash tag = tenant), gone once the bucket is full
    // again: 60 s of debt, plus one second.
    let key = format!("bh:{{{}}}:rate:requests_per_minute", ctx.tenant_id());
    let ttl = limiter.pttl(&key).await;
    assert!(ttl > 59_000 && ttl <= 61_000, "{key}: TTL {ttl} ms");
    assert!(matches!(limiter.check(&ctx, kind, 60, 61).await, Err(LimitError::CostExceedsLimit { .. })));

    // adjust: refund 10, spend exactly them; overcharge 30: 30 s to wait.
    limiter.adjust(&ctx, kind, 60, -10).await.unwrap();
    let _ = remaining(limiter.check(&ctx, kind, 60, 10).await.unwrap());
    limiter.adjust(&ctx, kind, 60, 30).await.unwrap();
    let wait = retry_after(limiter.check(&ctx, kind, 60, 0).await.unwrap());
    assert!(wait > 29 * SEC && wait <= 30 * SEC, "{wait:?}");

    // Proportional refill, measured on Redis' clock: 6000 per minute is
    // one per 10 ms.
    let ctx = tenant();
    let t_a = limiter.redis_time_us().await;
    let d = limiter.check(&ctx, kind, 6000, 6000).await.unwrap();
    let t_a2 = limiter.redis_time_us().await;
    assert_eq!(remaining(d), 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t_b = limiter.redis_time_us().await;
    let left = remaining(limiter.check(&ctx, kind, 6000, 0).await.unwrap());
    let t_c = limiter.redis_time_us().await;
    let (low, high) = ((t_b - t_a2) / 10_000, (t_c - t_a) / 10_000);
    assert!((low..=high).contains(&left), "{left} refilled, expected {low}..={high}");
    assert!(low >= 20);
}

/// Two replicas, each with its own connection and several tasks, hammer one
/// tenant's bucket for two seconds. Together they must admit what a single
/// limiter would: the burst plus the refill over the elapsed time (on
/// Redis' clock) — never more, and at most 2 % less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_replicas_share_one_bucket() {
    let Some(url) = redis_url() else { return };
    let replicas = [Arc::new(connect(&url).await), Arc::new(connect(&url).await)];
    let ctx = tenant();
    const PER_MINUTE: u64 = 600;
    const TASKS_PER_REPLICA: usize = 4;

    let t0 = replicas[0].redis_time_us().await;
    let deadline = tokio::time::Instant::now() + 2 * SEC;
    let mut tasks = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for _ in 0..TASKS_PER_REPLICA {
            let (replica, ctx) = (replica.clone(), ctx.clone());
            tasks.push(tokio::spawn(async move {
                let (mut admitted, mut calls) = (0u64, 0u64);
                while tokio::time::Instant::now() < deadline {
                    calls += 1;
                    let d = replica.check(&ctx, RateKind::Requests, PER_MINUTE, 1).await.unwrap();
                    admitted += u64::from(d.is_allowed());
                }
                (r, admitted, calls)
            }));
        }
    }
    let mut per_replica = [0u64; 2];
    let mut calls = 0;
    for task in tasks {
        let (r, admitted, c) = task.await.unwrap();
        per_replica[r] += admitted;
        calls += c;
    }
    let t1 = replicas[0].redis_time_us().await;

    let total = per_replica[0] + per_replica[1];
    // Refill: one per 100 ms = 100_000 us.
    let allowed = PER_MINUTE + (t1 - t0) / 100_000;
    eprintln!(
        "admitted {total} ({per_replica:?} per replica) of {calls} calls in {} ms; one limiter allows {allowed}",
        (t1 - t0) / 1000
    );
    assert!(per_replica[0] > 0 && per_replica[1] > 0, "both replicas took part");
    assert!(calls > 2 * allowed, "the bucket was under pressure");
    assert!(total <= allowed, "admitted {total} > {allowed}");
    assert!(total * 100 >= allowed * 98, "admitted {total}, more than 2 % below {allowed}");
}

#[tokio::test]
async fn redis_concurrency_cap_is_shared_and_leases_expire() {
    let Some(url) = redis_url() else { return };
    let (a, b) = (connect(&url).await, connect(&url).await);
    let ctx = tenant();
    let kind = ConcurrencyKind::Runs;
    let lease = 30 * SEC;

    let a1 = a.acquire(&ctx, kind, 3, lease).await.unwrap().unwrap();
    let key = format!("bh:{{{}}}:conc:concurrent_runs", ctx.tenant_id());
    let ttl = a.pttl(&key).await;
    assert!(ttl > 30_000 && ttl <= 31_000, "{key}: TTL {ttl} ms");
    let _a2 = a.acquire(&ctx, kind, 3, lease).await.unwrap().unwrap();
    let b1 = b.acquire(&ctx, kind, 3, lease).await.unwrap().unwrap();
    assert!(b.acquire(&ctx, kind, 3, lease).await.unwrap().is_none());
    assert!(a.acquire(&ctx, kind, 3, lease).await.unwrap().is_none());
    // A permit can be released through any replica.
    b.release(a1).await.unwrap();
    let b2 = b.acquire(&ctx, kind, 3, lease).await.unwrap().unwrap();
    assert!(a.acquire(&ctx, kind, 3, lease).await.unwrap().is_none());
    assert!(a.renew(&b1, lease).await.unwrap());
    let _ = b2;

    // A holder that never releases (a crashed replica) loses its slot when
    // the lease ends; renewing then fails.
    let ctx = tenant();
    let short = Duration::from_millis(300);
    let held = a.acquire(&ctx, kind, 1, short).await.unwrap().unwrap();
    assert!(b.acquire(&ctx, kind, 1, short).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let next = b.acquire(&ctx, kind, 1, short).await.unwrap().unwrap();
    assert!(!a.renew(&held, short).await.unwrap());
    assert!(b.renew(&next, short).await.unwrap());
    b.release(next).await.unwrap();
    assert!(a.acquire(&ctx, kind, 1, short).await.unwrap().is_some());
}

/// No server needed: a closed port stands for Redis being down.
#[tokio::test]
async fn redis_down_fails_closed_or_falls_back_locally() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = RedisLimiterConfig::new(format!("redis://127.0.0.1:{port}"));
    config.op_timeout = Duration::from_millis(300);
    let ctx = tenant();

    let deny = RedisLimiter::new_lazy(config.clone()).unwrap();
    let err = deny.check(&ctx, RateKind::Requests, 5, 1).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let core: bulkhead_core::Error = err.into();
    assert_eq!(core.status(), 503);
    assert!(deny.ping().await.is_err());

    config.rate_fallback = RateFallback::Local;
    let local = RedisLimiter::new_lazy(config).unwrap();
    // Rates hold per replica...
    for _ in 0..5 {
        let _ = remaining(local.check(&ctx, RateKind::Requests, 5, 1).await.unwrap());
    }
    assert!(local.is_degraded());
    assert!(!local.check(&ctx, RateKind::Requests, 5, 1).await.unwrap().is_allowed());
    local.adjust(&ctx, RateKind::Requests, 5, -1).await.unwrap();
    let _ = remaining(local.check(&ctx, RateKind::Requests, 5, 1).await.unwrap());
    // ...concurrency never falls back.
    let err = local.acquire(&ctx, ConcurrencyKind::Runs, 5, SEC).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn connect_refuses_a_bad_url_and_an_unreachable_server() {
    assert!(RedisLimiter::new_lazy(RedisLimiterConfig::new("http://nope")).is_err());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = RedisLimiterConfig::new(format!("redis://127.0.0.1:{port}"));
    config.op_timeout = Duration::from_millis(300);
    assert!(RedisLimiter::connect(config).await.is_err());
}
