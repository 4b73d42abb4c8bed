//! Metering benchmark, run by hand:
//!
//! ```sh
//! cargo bench -p bulkhead-metering                      # SQLite only
//! BULKHEAD_TEST_PG_URL=postgres://… cargo bench -p bulkhead-metering   # and PostgreSQL
//! ```
//!
//! Prints usage events per second into the ledger (many concurrent
//! writers, group commit) and the cost of one admit + settle pair.

use std::sync::Arc;
use std::time::Instant;

use bulkhead_core::{Money, OperatorCtx, TenantCtx, Tier};
use bulkhead_limits::LocalLimiter;
use bulkhead_metering::{Admission, Catalog, Metering, MeteringConfig, OtherPrices, Pricing};
use bulkhead_store::{Budget, DynStore, NewTenant, UsageEvent, UsageKind};
use serde_json::json;
use time::OffsetDateTime;

fn event(id: String) -> UsageEvent {
    UsageEvent {
        id,
        ts: OffsetDateTime::now_utc(),
        kind: UsageKind::Llm,
        name: "gpt-4o-mini".into(),
        input_tokens: 812,
        output_tokens: 143,
        cached_input_tokens: 0,
        quantity: 0,
        unit: None,
        cost: Money::from_nanos(207_600),
        run_id: None,
        agent_id: None,
        request_id: None,
        attributes: json!({}),
    }
}

async fn tenants(store: &DynStore, n: usize) -> Vec<TenantCtx> {
    let op = OperatorCtx::local_cli();
    let mut out = Vec::new();
    for i in 0..n {
        let t = store
            .create_tenant(
                &op,
                NewTenant { name: format!("bench-{i}"), tier: Tier::Shared, metadata: json!({}) },
            )
            .await
            .unwrap();
        out.push(op.act_for(t.id));
    }
    out
}

async fn bench(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = bulkhead_store::testing::fresh_config(backend, dir.path()).await.unwrap();
    let store = bulkhead_store::open(&config).await.unwrap();
    let metering = Metering::start(
        store.clone(),
        Pricing::new(Catalog::builtin(), OtherPrices::default()),
        Arc::new(LocalLimiter::new()),
        MeteringConfig::default(),
    );
    let ctxs = tenants(&store, 10).await;

    // Ingestion: 512 concurrent writers, each waiting for its event to be durable.
    let writers = 512;
    let per_writer = 400;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (m, ctx) = (metering.clone(), ctxs[w % ctxs.len()].clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                m.record(&ctx, event(format!("w{w}-e{i}"))).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let total = writers * per_writer;
    println!(
        "{backend:<9} ledger ingest   {total} events, {writers} writers: {:>9.0} events/s ({secs:.2} s)",
        total as f64 / secs
    );

    // Admission + settlement, one at a time, with a budget to check.
    let ctx = &ctxs[0];
    store
        .set_budget(
            ctx,
            Some(&Budget { monthly_limit: Some(Money::from_usd_units(1_000_000)), ..Default::default() }),
        )
        .await
        .unwrap();
    let n = 2_000;
    let start = Instant::now();
    for i in 0..n {
        let a = metering
            .admit(ctx, Admission { worst_case: Money::from_nanos(1_000_000), ..Default::default() })
            .await
            .unwrap();
        metering.settle(ctx, a, event(format!("as-{i}"))).await.unwrap();
    }
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{backend:<9} admit + settle  sequential, budget set:  {:>9.0} ns per pair ({:.0} pairs/s)",
        per,
        1e9 / per
    );

    // Admission alone without a budget (limits only): the common cheap path.
    let free = &ctxs[1];
    let start = Instant::now();
    for _ in 0..n {
        let a = metering.admit(free, Admission::default()).await.unwrap();
        metering.cancel(free, a).await.unwrap();
    }
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{backend:<9} admit + cancel  no budget, limits cached: {:>9.0} ns per pair", per);

    // Budget check alone (a reservation round trip) while 64 tasks contend.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (m, c) = (metering.clone(), ctx.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let a = m
                    .admit(&c, Admission { worst_case: Money::from_nanos(1), ..Default::default() })
                    .await
                    .unwrap();
                m.cancel(&c, a).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{backend:<9} reserve+release 64 tasks on one tenant:  {:>9.0} per s", 64.0 * 50.0 / secs);
}

#[tokio::main]
async fn main() {
    let pg = std::env::var(bulkhead_store::testing::PG_URL_ENV).is_ok();
    if !pg {
        eprintln!("(no {} set: SQLite only)", bulkhead_store::testing::PG_URL_ENV);
    }
    bench("sqlite").await;
    if pg {
        bench("postgres").await;
    }
}
