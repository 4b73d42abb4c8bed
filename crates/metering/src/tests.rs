//! Metering on both stores: idempotency, zero overspend under concurrency,
//! reservation expiry, alerts, restarts, and rate limits at admission.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_core::tenancy::TenantStatus;
use bulkhead_core::{Code, Money, OperatorCtx, TenantCtx, Tier};
use bulkhead_limits::{LocalLimiter, RateKind};
use bulkhead_store::testing::{backends, fresh_config};
use bulkhead_store::{Budget, DynStore, NewTenant, UsageEvent, UsageKind, UsageQuery, UsageScope};
use serde_json::json;
use time::OffsetDateTime;

use crate::*;

struct Fixture {
    metering: Metering,
    store: DynStore,
    config: bulkhead_core::config::StoreConfig,
    _dir: tempfile::TempDir,
}

async fn fixture(backend: &str, config: MeteringConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store_config = fresh_config(backend, dir.path()).await.unwrap();
    let store = bulkhead_store::open(&store_config).await.unwrap();
    let metering = Metering::start(
        store.clone(),
        Pricing::new(Catalog::builtin(), OtherPrices::default()),
        Arc::new(LocalLimiter::new()),
        config,
    );
    Fixture { metering, store, config: store_config, _dir: dir }
}

async fn tenant(store: &DynStore, name: &str) -> TenantCtx {
    let op = OperatorCtx::local_cli();
    let t = store
        .create_tenant(&op, NewTenant { name: name.into(), tier: Tier::Shared, metadata: json!({}) })
        .await
        .unwrap();
    assert_eq!(t.status, TenantStatus::Active);
    op.act_for(t.id)
}

fn llm_event(id: &str, cost: Money) -> UsageEvent {
    UsageEvent {
        id: id.into(),
        ts: OffsetDateTime::now_utc(),
        kind: UsageKind::Llm,
        name: "gpt-4o".into(),
        input_tokens: 100,
        output_tokens: 10,
        cached_input_tokens: 0,
        quantity: 0,
        unit: None,
        cost,
        run_id: None,
        agent_id: None,
        request_id: None,
        attributes: json!({}),
    }
}

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_counts_once_even_concurrently() {
    for backend in backends() {
        let f = fixture(backend, MeteringConfig::default()).await;
        let ctx = tenant(&f.store, "idem").await;
        let event = llm_event("evt-1", usd("0.01"));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (m, c, e) = (f.metering.clone(), ctx.clone(), event.clone());
            tasks.push(tokio::spawn(async move { m.record(&c, e).await.unwrap() }));
        }
        let mut new = 0;
        for t in tasks {
            new += usize::from(t.await.unwrap());
        }
        for _ in 0..50 {
            new += usize::from(f.metering.record(&ctx, event.clone()).await.unwrap());
        }
        assert_eq!(new, 1, "{backend}: exactly one write was new");
        let q = UsageQuery::default();
        let rows = f.store.usage_summary(UsageScope::Tenant(&ctx), &q).await.unwrap();
        assert_eq!((rows[0].events, rows[0].cost), (1, usd("0.01")), "{backend}");
        let status = f.store.budget_status(&ctx, OffsetDateTime::now_utc()).await.unwrap();
        assert_eq!(status.spent_month, usd("0.01"), "{backend}: aggregates counted it once too");
        // The same id under another tenant is another event.
        let other = tenant(&f.store, "idem-other").await;
        assert!(f.metering.record(&other, event.clone()).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_overspend_under_500_concurrent_admissions() {
    for backend in backends() {
        let f = fixture(backend, MeteringConfig::default()).await;
        let ctx = tenant(&f.store, "spender").await;
        let worst = usd("0.10");
        const K: usize = 37;
        let limit = Money::from_nanos(worst.nanos() * K as i64);
        let budget = Budget { monthly_limit: Some(limit), daily_limit: None, soft_alert_percent: Some(80) };
        f.store.set_budget(&ctx, Some(&budget)).await.unwrap();

        let mut tasks = Vec::new();
        for i in 0..500u64 {
            let (m, c) = (f.metering.clone(), ctx.clone());
            tasks.push(tokio::spawn(async move {
                let admitted = m.admit(&c, Admission { worst_case: worst, ..Default::default() }).await;
                match admitted {
                    Ok(a) => {
                        // Actual cost: anything up to the worst case.
                        let actual = Money::from_nanos(worst.nanos() - (i as i64 * 7_919) % worst.nanos());
                        m.settle(&c, a, llm_event(&format!("call-{i}"), actual)).await.unwrap();
                        Ok(actual)
                    }
                    Err(e) => Err(e.code),
                }
            }));
        }
        let mut admitted = 0;
        let mut settled = Money::ZERO;
        for t in tasks {
            match t.await.unwrap() {
                Ok(actual) => {
                    admitted += 1;
                    settled = settled.saturating_add(actual);
                }
                Err(code) => assert_eq!(code, Code::BudgetExceeded),
            }
        }
        assert_eq!(admitted, K, "{backend}: exactly K admissions fit");
        let status = f.store.budget_status(&ctx, OffsetDateTime::now_utc()).await.unwrap();
        assert_eq!(status.spent_month, settled, "{backend}: the ledger holds exactly what was settled");
        assert!(status.spent_month <= limit, "{backend}: never beyond the budget");
        assert_eq!(status.reserved, Money::ZERO, "{backend}: settlement released every reservation");
        let rows = f.store.usage_summary(UsageScope::Tenant(&ctx), &UsageQuery::default()).await.unwrap();
        assert_eq!((rows[0].events, rows[0].cost), (K as i64, settled));
        assert!(
            status.alerts.iter().any(|a| a.kind == "soft"),
            "{backend}: 80 % alert recorded: {:?}",
            status.alerts
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_reservations_expire_and_cancel_releases() {
    for backend in backends() {
        let config = MeteringConfig { reservation_ttl: Duration::from_millis(300), ..Default::default() };
        let f = fixture(backend, config).await;
        let ctx = tenant(&f.store, "crashy").await;
        let budget = Budget { monthly_limit: Some(usd("1.00")), ..Default::default() };
        f.store.set_budget(&ctx, Some(&budget)).await.unwrap();
        let all = Admission { worst_case: usd("1.00"), ..Default::default() };
        let held = f.metering.admit(&ctx, all.clone()).await.unwrap();
        assert_eq!(f.metering.admit(&ctx, all.clone()).await.unwrap_err().code, Code::BudgetExceeded);
        // The holder "crashes": its reservation is never settled.
        let _lost = held; // never settled nor cancelled, as if the holder crashed
        tokio::time::sleep(Duration::from_millis(400)).await;
        let again =
            f.metering.admit(&ctx, all.clone()).await.expect("the expired reservation no longer counts");
        f.metering.cancel(&ctx, again).await.unwrap();
        let status = f.store.budget_status(&ctx, OffsetDateTime::now_utc()).await.unwrap();
        assert_eq!(status.reserved, Money::ZERO, "{backend}");
        let a = f.metering.admit(&ctx, all).await.expect("cancel gave the budget back");
        f.metering.settle(&ctx, a, llm_event("full", usd("1.00"))).await.unwrap();
        let status = f.store.budget_status(&ctx, OffsetDateTime::now_utc()).await.unwrap();
        assert_eq!(status.spent_month, usd("1.00"));
        assert!(status.alerts.iter().any(|a| a.kind == "hard"), "{backend}: {:?}", status.alerts);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_state_survives_a_restart() {
    for backend in backends() {
        let f = fixture(backend, MeteringConfig::default()).await;
        let ctx = tenant(&f.store, "restart").await;
        let budget = Budget { monthly_limit: Some(usd("1.00")), ..Default::default() };
        f.store.set_budget(&ctx, Some(&budget)).await.unwrap();
        f.metering.record(&ctx, llm_event("before", usd("0.40"))).await.unwrap();
        let open = f
            .metering
            .admit(&ctx, Admission { worst_case: usd("0.50"), ..Default::default() })
            .await
            .unwrap();
        let _open = open; // never settled: the reservation stays open in the store
        drop(f.metering);

        // A new process on the same store: spend and the open reservation count.
        let store = bulkhead_store::open(&f.config).await.unwrap();
        let metering = Metering::start(
            store.clone(),
            Pricing::new(Catalog::builtin(), OtherPrices::default()),
            Arc::new(LocalLimiter::new()),
            MeteringConfig::default(),
        );
        let status = store.budget_status(&ctx, OffsetDateTime::now_utc()).await.unwrap();
        assert_eq!((status.spent_month, status.reserved), (usd("0.40"), usd("0.50")), "{backend}");
        let err = metering
            .admit(&ctx, Admission { worst_case: usd("0.11"), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::BudgetExceeded);
        metering.admit(&ctx, Admission { worst_case: usd("0.10"), ..Default::default() }).await.unwrap();
    }
}

#[tokio::test]
async fn rate_limits_apply_at_admission_per_tenant() {
    let f = fixture("sqlite", MeteringConfig::default()).await;
    let a = tenant(&f.store, "limited").await;
    let b = tenant(&f.store, "unbothered").await;
    f.store.set_tenant_limits(&a, &json!({"requests_per_minute": 3, "concurrent_runs": 1})).await.unwrap();
    f.metering.forget_terms(&a);
    for _ in 0..3 {
        f.metering.check_rate(&a, RateKind::Requests, 1).await.unwrap();
    }
    let err = f.metering.check_rate(&a, RateKind::Requests, 1).await.unwrap_err();
    assert_eq!(err.code, Code::RateLimited);
    assert_eq!(err.details.as_ref().unwrap()["limit"], "requests_per_minute");
    assert!(err.details.as_ref().unwrap()["retry_after_ms"].as_u64().unwrap() > 0);
    // Another tenant is not affected.
    for _ in 0..10 {
        f.metering.check_rate(&b, RateKind::Requests, 1).await.unwrap();
    }
    // Concurrency: one run at a time for A; the slot comes back on settle.
    let run = Admission { concurrency: Some(bulkhead_limits::ConcurrencyKind::Runs), ..Default::default() };
    let first = f.metering.admit(&a, run.clone()).await.unwrap();
    assert_eq!(f.metering.admit(&a, run.clone()).await.unwrap_err().code, Code::RateLimited);
    f.metering.settle(&a, first, llm_event("run-1", Money::ZERO)).await.unwrap();
    f.metering.admit(&a, run).await.unwrap();
}

#[tokio::test]
async fn bad_events_are_refused_before_the_ledger() {
    let f = fixture("sqlite", MeteringConfig::default()).await;
    let ctx = tenant(&f.store, "careless").await;
    let mut e = llm_event("neg", Money::ZERO);
    e.input_tokens = -5;
    assert_eq!(f.metering.record(&ctx, e).await.unwrap_err().code, Code::InvalidRequest);
    let mut e = llm_event("huge", Money::ZERO);
    e.output_tokens = i64::MAX;
    assert_eq!(f.metering.record(&ctx, e).await.unwrap_err().code, Code::InvalidRequest);
    let mut e = llm_event("", Money::ZERO);
    e.id = String::new();
    assert_eq!(f.metering.record(&ctx, e).await.unwrap_err().code, Code::InvalidRequest);
    assert!(
        f.store.usage_summary(UsageScope::Tenant(&ctx), &UsageQuery::default()).await.unwrap()[0].events == 0
    );
}
