//! The behavioural suite both backends must pass, and the row-level
//! security checks of PostgreSQL.

use bulkhead_core::keys::{self, KeyKind};
use bulkhead_core::page::PageReq;
use bulkhead_core::tenancy::{Scope, TenantStatus};
use bulkhead_core::{OperatorCtx, TenantCtx, Tier};
use serde_json::json;
use sqlx::Connection;

use crate::testing::{backends, fresh_config, tenant_owned_tables};
use crate::{Budget, DynStore, NewTenant, StoreError, TenantPatch, UsageEvent, UsageKind, UsageWrite};
use bulkhead_core::Money;

async fn each_backend<F, Fut>(test: F)
where
    F: Fn(DynStore, bulkhead_core::config::StoreConfig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let config = fresh_config(backend, dir.path()).await.unwrap();
        let store = crate::open(&config).await.unwrap();
        assert_eq!(store.backend(), backend);
        test(store, config).await;
    }
}

/// Gives a tenant a row in every tenant-owned table: keys, usage and its
/// aggregates, a budget, an alert, a reservation, settings. Tests that walk
/// every table (RLS, deletion) rely on it: extend it with each new table.
async fn plant_everything(store: &DynStore, ctx: &TenantCtx) {
    let now = time::OffsetDateTime::now_utc();
    store
        .create_tenant_key(ctx, "k", Scope::TenantApp, &keys::generate(KeyKind::Tenant), None)
        .await
        .unwrap();
    let budget = Budget {
        monthly_limit: Some(Money::from_nanos(1_000)),
        daily_limit: None,
        soft_alert_percent: Some(50),
    };
    store.set_budget(ctx, Some(&budget)).await.unwrap();
    let event = UsageEvent {
        id: format!("ev-{}", ctx.tenant_id()),
        ts: now,
        kind: UsageKind::Llm,
        name: "gpt-4o".into(),
        input_tokens: 1,
        output_tokens: 1,
        cached_input_tokens: 0,
        quantity: 0,
        unit: None,
        cost: Money::from_nanos(600),
        run_id: None,
        agent_id: Some(uuid::Uuid::now_v7()),
        request_id: None,
        attributes: json!({"canary": format!("canary-{}", ctx.tenant_id())}),
    };
    let new = store.write_usage(&[UsageWrite { ctx: ctx.clone(), event, settles: None }], now).await.unwrap();
    assert_eq!(new, vec![true]);
    assert!(matches!(
        store.reserve(ctx, Money::from_nanos(100), std::time::Duration::from_secs(600), now).await.unwrap(),
        crate::Reserve::Reserved { .. }
    ));
    store.set_tenant_limits(ctx, &json!({"requests_per_minute": 5})).await.unwrap();
    store.set_tenant_pricing(ctx, &json!({"markup_bps": 100})).await.unwrap();
    store.set_tenant_models(ctx, &json!({"aliases": {"fast": "gpt-4o-mini"}})).await.unwrap();
    store.insert_data_key(ctx, b"wrapped-key", b"nonce-123456").await.unwrap();
    store.put_secret(ctx, "credential", "api", b"sealed", b"nonce-abcdef").await.unwrap();
    let status = store.budget_status(ctx, now).await.unwrap();
    assert_eq!(status.alerts.len(), 1, "the soft alert at 50 % is recorded: {:?}", status.alerts);
}

fn new_tenant(name: &str) -> NewTenant {
    NewTenant { name: name.into(), tier: Tier::Shared, metadata: json!({"canary": format!("canary-{name}")}) }
}

#[tokio::test]
async fn tenants_crud_and_validation() {
    each_backend(|store, _| async move {
        let op = OperatorCtx::local_cli();
        let t = store.create_tenant(&op, new_tenant("acme")).await.unwrap();
        assert_eq!(t.status, TenantStatus::Active);
        assert!(matches!(store.create_tenant(&op, new_tenant("acme")).await, Err(StoreError::Conflict(_))));
        assert!(matches!(
            store.create_tenant(&op, new_tenant("Bad Name")).await,
            Err(StoreError::Invalid(_))
        ));
        let other = store.create_tenant(&op, new_tenant("other")).await.unwrap();
        let rename = TenantPatch { name: Some("acme".into()), ..Default::default() };
        assert!(matches!(store.update_tenant(&op, other.id, rename).await, Err(StoreError::Conflict(_))));
        let patch = TenantPatch {
            tier: Some(Tier::Isolated),
            status: Some(TenantStatus::Suspended),
            ..Default::default()
        };
        let t2 = store.update_tenant(&op, t.id, patch).await.unwrap();
        assert_eq!((t2.tier, t2.status, t2.name.as_str()), (Tier::Isolated, TenantStatus::Suspended, "acme"));
        assert_eq!(store.find_tenant_by_name(&op, "acme").await.unwrap().id, t.id);
        assert!(matches!(
            store.get_tenant(&op, bulkhead_core::TenantId::new()).await,
            Err(StoreError::NotFound("tenant"))
        ));
    })
    .await;
}

#[tokio::test]
async fn pagination_walks_everything_in_creation_order() {
    each_backend(|store, _| async move {
        let op = OperatorCtx::local_cli();
        let mut made = Vec::new();
        for i in 0..7 {
            made.push(store.create_tenant(&op, new_tenant(&format!("t{i}"))).await.unwrap().id);
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_tenants(&op, PageReq::new(Some(3), after).unwrap()).await.unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items.iter().map(|t| t.id));
            after = page.items.last().map(|t| t.id.as_uuid());
            if !page.has_more {
                break;
            }
        }
        assert_eq!(seen, made);
    })
    .await;
}

#[tokio::test]
async fn keys_are_scoped_to_their_tenant() {
    each_backend(|store, _| async move {
        let op = OperatorCtx::local_cli();
        let a = op.act_for(store.create_tenant(&op, new_tenant("ten-a")).await.unwrap().id);
        let b = op.act_for(store.create_tenant(&op, new_tenant("ten-b")).await.unwrap().id);
        let ka = store
            .create_tenant_key(&a, "a-key", Scope::TenantAdmin, &keys::generate(KeyKind::Tenant), None)
            .await
            .unwrap();
        store
            .create_tenant_key(&b, "b-key", Scope::TenantApp, &keys::generate(KeyKind::Tenant), None)
            .await
            .unwrap();
        let listed = store.list_tenant_keys(&b, PageReq::default()).await.unwrap();
        assert_eq!(listed.items.len(), 1);
        assert_eq!(listed.items[0].name, "b-key");
        assert!(matches!(store.get_tenant_key(&b, ka.id).await, Err(StoreError::NotFound("key"))));
        assert!(matches!(store.revoke_tenant_key(&b, ka.id).await, Err(StoreError::NotFound("key"))));
        assert!(store.get_tenant_key(&a, ka.id).await.unwrap().revoked_at.is_none());
        // Operator key listings never show tenant keys, and the reverse.
        store.create_operator_key(&op, "ops", &keys::generate(KeyKind::Operator), None).await.unwrap();
        let ops = store.list_operator_keys(&op, PageReq::default()).await.unwrap();
        assert!(ops.items.iter().all(|k| k.tenant_id.is_none()));
        assert!(store.has_operator_key(&op).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn deleting_a_tenant_removes_all_its_rows() {
    each_backend(|store, config| async move {
        let op = OperatorCtx::local_cli();
        let doomed = store.create_tenant(&op, new_tenant("doomed")).await.unwrap();
        let kept = store.create_tenant(&op, new_tenant("kept")).await.unwrap();
        for t in [&doomed, &kept] {
            let ctx = op.act_for(t.id);
            store
                .create_tenant_key(&ctx, "k", Scope::TenantApp, &keys::generate(KeyKind::Tenant), None)
                .await
                .unwrap();
        }
        store.delete_tenant(&op, doomed.id).await.unwrap();
        let rows = crate::testing::dump_all_rows(&config).await.unwrap();
        let doomed_id = doomed.id.to_string();
        let left: Vec<_> = rows.iter().filter(|(_, row)| row.contains(&doomed_id)).collect();
        assert!(left.is_empty(), "rows of the deleted tenant remain: {left:?}");
        assert!(
            rows.iter().any(|(_, row)| row.contains(&kept.id.to_string())),
            "other tenant's rows must stay"
        );
        assert!(matches!(store.delete_tenant(&op, doomed.id).await, Err(StoreError::NotFound(_))));
        // Every tenant-owned table is covered by the cascade: none has rows of the deleted tenant
        // (checked above by id) — and the list of such tables is not empty.
        assert!(!tenant_owned_tables(&config).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn key_lookup_reports_what_authentication_needs() {
    each_backend(|store, _| async move {
        let op = OperatorCtx::local_cli();
        let t = store.create_tenant(&op, new_tenant("looked-up")).await.unwrap();
        let new = keys::generate(KeyKind::Tenant);
        let key =
            store.create_tenant_key(&op.act_for(t.id), "k", Scope::TenantApp, &new, None).await.unwrap();
        let found = store.lookup_key(&new.prefix).await.unwrap().expect("found by prefix");
        assert_eq!(
            (found.id, found.tenant_id, found.hash.as_slice()),
            (key.id, Some(t.id), new.hash.as_slice())
        );
        assert_eq!(found.tenant_status, Some(TenantStatus::Active));
        assert!(store.lookup_key("bh_tk_000000000000").await.unwrap().is_none());
        let at = crate::sqlite::now();
        store.touch_key(key.id, at).await.unwrap();
        assert_eq!(store.lookup_key(&new.prefix).await.unwrap().unwrap().last_used_at, Some(at));
    })
    .await;
}

/// Row-level security, probed with raw SQL on the application role's own
/// pool — the queries deliberately carry no tenant filter.
#[tokio::test]
async fn postgres_row_level_security_holds_without_filters() {
    let Some(_) = crate::testing::pg_admin_url() else {
        eprintln!("PostgreSQL deliberately skipped ({})", crate::testing::SKIP_PG_ENV);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = fresh_config("postgres", dir.path()).await.unwrap();
    let url = config.database_url.clone().unwrap();
    let store = crate::postgres::PgStore::connect(&url, &config.app_role, 4).await.unwrap();
    let dyn_store: DynStore = std::sync::Arc::new(store.clone());
    let op = OperatorCtx::local_cli();
    let a = op.act_for(dyn_store.create_tenant(&op, new_tenant("rls-a")).await.unwrap().id);
    let b = op.act_for(dyn_store.create_tenant(&op, new_tenant("rls-b")).await.unwrap().id);
    for ctx in [&a, &b] {
        plant_everything(&dyn_store, ctx).await;
        dyn_store
            .create_tenant_key(ctx, "k", Scope::TenantApp, &keys::generate(KeyKind::Tenant), None)
            .await
            .unwrap();
    }

    let pool = store.pool();
    let (user, bypass, superuser): (String, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, rolbypassrls, rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(user, config.app_role);
    assert!(!bypass && !superuser);

    let tables = tenant_owned_tables(&config).await.unwrap();
    assert!(tables.contains(&"api_keys".to_string()));

    async fn as_tenant(pool: &sqlx::PgPool, ctx: &TenantCtx) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(ctx.tenant_id().to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    }

    // Every tenant-owned table: the owner sees both tenants' rows, while
    // the app role with A's setting sees only A's — with no WHERE clause.
    let mut owner = sqlx::PgConnection::connect(&url).await.unwrap();
    for table in &tables {
        let b_rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1"
        )))
        .bind(b.tenant_id().as_uuid())
        .fetch_one(&mut owner)
        .await
        .unwrap();
        assert!(
            b_rows > 0,
            "the RLS test needs rows of tenant B in {table}: add them to this test's fixture"
        );
        let mut tx = as_tenant(pool, &a).await;
        let seen: Vec<uuid::Uuid> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT tenant_id FROM {table}")))
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        assert!(!seen.is_empty(), "{table}: A sees its own rows");
        assert!(seen.iter().all(|t| *t == a.tenant_id().as_uuid()), "{table}: A saw another tenant's rows");
        tx.rollback().await.unwrap();

        // With no tenant set at all, nothing is visible.
        let mut tx = pool.begin().await.unwrap();
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table}: rows visible without a tenant setting");
        tx.rollback().await.unwrap();
    }

    // Tenants: A sees exactly itself.
    let mut tx = as_tenant(pool, &a).await;
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM tenants").fetch_all(&mut *tx).await.unwrap();
    assert_eq!(ids, vec![a.tenant_id().as_uuid()]);
    // ... and cannot rename itself or anyone (writes are platform-only).
    let n =
        sqlx::query("UPDATE tenants SET name = 'hijack'").execute(&mut *tx).await.unwrap().rows_affected();
    assert_eq!(n, 0);
    tx.rollback().await.unwrap();

    // Writes carrying B's id under A's setting are refused.
    let mut tx = as_tenant(pool, &a).await;
    let insert = sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, kind, name, prefix, hash, scope, created_at)
         VALUES ($1, $2, 'tenant', 'x', 'bh_tk_aaaaaaaaaaaa', '\\x00', 'tenant_app', now())",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(b.tenant_id().as_uuid())
    .execute(&mut *tx)
    .await;
    let err = insert.expect_err("insert with B's tenant_id must be refused");
    assert!(err.to_string().contains("row-level security"), "{err}");
    tx.rollback().await.unwrap();

    let mut tx = as_tenant(pool, &a).await;
    let n = sqlx::query("UPDATE api_keys SET name = 'hijacked' WHERE tenant_id = $1")
        .bind(b.tenant_id().as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 0, "B's rows are invisible to A's updates");
    let moved = sqlx::query("UPDATE api_keys SET tenant_id = $1")
        .bind(b.tenant_id().as_uuid())
        .execute(&mut *tx)
        .await;
    assert!(moved.is_err(), "moving A's rows to B must violate the policy");
    tx.rollback().await.unwrap();

    let mut tx = as_tenant(pool, &a).await;
    let n = sqlx::query("DELETE FROM api_keys").execute(&mut *tx).await.unwrap().rows_affected();
    assert_eq!(n, 2, "an unfiltered DELETE under A's setting touches only A's two keys");
    tx.rollback().await.unwrap();
    let b_keys = dyn_store.list_tenant_keys(&b, PageReq::default()).await.unwrap();
    assert_eq!(b_keys.items.len(), 2);
    assert!(b_keys.items.iter().all(|k| k.name == "k"));
}

#[tokio::test]
async fn postgres_refuses_an_app_role_that_could_bypass_rls() {
    let Some(_) = crate::testing::pg_admin_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = fresh_config("postgres", dir.path()).await.unwrap();
    let url = config.database_url.unwrap();
    let role = format!("bh_bypass_{}", uuid::Uuid::now_v7().simple());
    let mut owner = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} NOLOGIN BYPASSRLS")))
        .execute(&mut owner)
        .await
        .unwrap();
    let err = crate::postgres::PgStore::connect(&url, &role, 2).await.expect_err("must refuse");
    assert!(err.to_string().contains("BYPASSRLS"), "{err}");
}
