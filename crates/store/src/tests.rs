//! The behavioural suite both backends must pass, and the row-level
//! security checks of PostgreSQL.

use bulkhead_core::keys::{self, KeyKind};
use bulkhead_core::page::PageReq;
use bulkhead_core::tenancy::{Scope, TenantStatus};
use bulkhead_core::{OperatorCtx, TenantCtx, Tier};
use serde_json::json;
use sqlx::Connection;

use crate::testing::{backends, fresh_config, tenant_owned_tables};
use crate::{
    Agent, AgentPatch, Budget, DynStore, NewTenant, Recovered, RunStatus, StoreError, TenantPatch,
    TenantQueue, Thread, UsageEvent, UsageKind, UsageWrite,
};
use bulkhead_core::{AgentId, Money, RunId, ThreadId};

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
pub(crate) async fn plant_everything(store: &DynStore, ctx: &TenantCtx) {
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
    // The agent part: an agent with two versions, a thread with a message,
    // a run with a step.
    let (agent, thread) = agent_and_thread(store, ctx).await;
    let patch = AgentPatch { spec: Some(json!({"model": "gpt-4o-mini"})), ..Default::default() };
    store.update_agent(ctx, agent.id, patch).await.unwrap();
    let run = store.create_run(ctx, thread.id, agent.id, 2, &json!({}), 10).await.unwrap();
    store.add_message(ctx, thread.id, "assistant", "hello", &json!({}), Some(run.id)).await.unwrap();
    store.add_step(ctx, run.id, "model_call", &json!({"tokens": 3})).await.unwrap();
    crate::knowledge_tests::plant_knowledge(store, ctx).await;
    crate::tools_tests::plant_tools(store, ctx).await;
    // The tenant's audit chain (entries and head).
    store.append_audit(crate::AuditChain::Tenant(ctx), &audit_entry("config.updated")).await.unwrap();
}

/// A fresh agent (version 1) and a thread with one user message.
async fn agent_and_thread(store: &DynStore, ctx: &TenantCtx) -> (Agent, Thread) {
    let agent = store.create_agent(ctx, "helper", "helps", &json!({"model": "gpt-4o"})).await.unwrap();
    let thread =
        store.create_thread(ctx, &json!({"canary": format!("canary-{}", ctx.tenant_id())})).await.unwrap();
    store.add_message(ctx, thread.id, "user", "hi", &json!({}), None).await.unwrap();
    (agent, thread)
}

async fn two_tenants(store: &DynStore) -> (TenantCtx, TenantCtx) {
    let op = OperatorCtx::local_cli();
    let a = op.act_for(store.create_tenant(&op, new_tenant("ten-a")).await.unwrap().id);
    let b = op.act_for(store.create_tenant(&op, new_tenant("ten-b")).await.unwrap().id);
    (a, b)
}

fn secs(n: i64) -> time::Duration {
    time::Duration::seconds(n)
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
            plant_everything(&store, &op.act_for(t.id)).await;
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

    // Foreign-key checks bypass RLS: the (tenant, parent) keys are what keep
    // A from hanging a message under B's thread.
    let b_thread = dyn_store.list_threads(&b, PageReq::default()).await.unwrap().items[0].id;
    let mut tx = as_tenant(pool, &a).await;
    let insert = sqlx::query(
        "INSERT INTO messages (id, tenant_id, thread_id, role, content, created_at)
         VALUES ($1, $2, $3, 'user', 'x', 0)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(a.tenant_id().as_uuid())
    .bind(b_thread.as_uuid())
    .execute(&mut *tx)
    .await;
    let err = insert.expect_err("a message of A under B's thread must be refused");
    assert!(err.to_string().contains("foreign key"), "{err}");
    tx.rollback().await.unwrap();

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

#[tokio::test]
async fn agents_crud_versions_and_validation() {
    each_backend(|store, _| async move {
        let (ctx, _) = two_tenants(&store).await;
        let v1 = json!({"model": "gpt-4o", "instructions": "be brief"});
        let agent = store.create_agent(&ctx, "support-bot", "answers", &v1).await.unwrap();
        assert_eq!((agent.version, &agent.spec, agent.created_at), (1, &v1, agent.updated_at));
        assert_eq!(store.get_agent(&ctx, agent.id).await.unwrap(), agent);
        assert!(matches!(
            store.create_agent(&ctx, "support-bot", "", &v1).await,
            Err(StoreError::Conflict(_))
        ));
        for bad in ["", "-x", "has space", "ä"] {
            assert!(
                matches!(store.create_agent(&ctx, bad, "", &v1).await, Err(StoreError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            store.create_agent(&ctx, "arr", "", &json!(["not", "an", "object"])).await,
            Err(StoreError::Invalid(_))
        ));

        // Resending the same spec is no change; a different one is version 2.
        let same = AgentPatch { spec: Some(v1.clone()), ..Default::default() };
        assert_eq!(store.update_agent(&ctx, agent.id, same).await.unwrap().version, 1);
        let v2 = json!({"model": "gpt-4o-mini"});
        let patch =
            AgentPatch { spec: Some(v2.clone()), description: Some("cheaper".into()), ..Default::default() };
        let updated = store.update_agent(&ctx, agent.id, patch).await.unwrap();
        assert_eq!((updated.version, &updated.spec, updated.description.as_str()), (2, &v2, "cheaper"));
        assert_eq!(updated.name, "support-bot");
        assert_eq!(store.get_agent(&ctx, agent.id).await.unwrap(), updated);
        let versions = store.list_agent_versions(&ctx, agent.id).await.unwrap();
        assert_eq!(
            versions.iter().map(|v| (v.version, &v.spec)).collect::<Vec<_>>(),
            vec![(1, &v1), (2, &v2)]
        );
        assert_eq!(store.get_agent_version(&ctx, agent.id, 1).await.unwrap().spec, v1);
        assert!(matches!(
            store.get_agent_version(&ctx, agent.id, 3).await,
            Err(StoreError::NotFound("agent version"))
        ));
        // A rename leaves the version alone.
        let renamed = AgentPatch { name: Some("helpdesk".into()), ..Default::default() };
        let renamed = store.update_agent(&ctx, agent.id, renamed).await.unwrap();
        assert_eq!((renamed.name.as_str(), renamed.version), ("helpdesk", 2));

        let other = store.create_agent(&ctx, "other", "", &v1).await.unwrap();
        let clash = AgentPatch { name: Some("helpdesk".into()), ..Default::default() };
        assert!(matches!(store.update_agent(&ctx, other.id, clash).await, Err(StoreError::Conflict(_))));
        let bad = AgentPatch { spec: Some(json!(1)), ..Default::default() };
        assert!(matches!(store.update_agent(&ctx, other.id, bad).await, Err(StoreError::Invalid(_))));
        assert!(matches!(
            store.update_agent(&ctx, AgentId::new(), AgentPatch::default()).await,
            Err(StoreError::NotFound("agent"))
        ));

        let first = store.list_agents(&ctx, PageReq::new(Some(1), None).unwrap()).await.unwrap();
        assert_eq!(first.items.iter().map(|a| a.id).collect::<Vec<_>>(), vec![agent.id]);
        assert!(first.has_more);
        let next =
            store.list_agents(&ctx, PageReq::new(Some(1), Some(agent.id.as_uuid())).unwrap()).await.unwrap();
        assert_eq!(next.items.iter().map(|a| a.id).collect::<Vec<_>>(), vec![other.id]);
        assert!(!next.has_more);

        store.delete_agent(&ctx, agent.id).await.unwrap();
        assert!(matches!(store.get_agent(&ctx, agent.id).await, Err(StoreError::NotFound("agent"))));
        assert!(matches!(
            store.list_agent_versions(&ctx, agent.id).await,
            Err(StoreError::NotFound("agent"))
        ));
        assert!(matches!(store.delete_agent(&ctx, agent.id).await, Err(StoreError::NotFound("agent"))));
        // The name is free again.
        store.create_agent(&ctx, "helpdesk", "", &v1).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn threads_messages_and_summaries() {
    each_backend(|store, _| async move {
        let (ctx, _) = two_tenants(&store).await;
        assert!(matches!(store.create_thread(&ctx, &json!([1])).await, Err(StoreError::Invalid(_))));
        let thread = store.create_thread(&ctx, &json!({"topic": "billing"})).await.unwrap();
        assert_eq!(store.get_thread(&ctx, thread.id).await.unwrap(), thread);

        let mut made = Vec::new();
        for (i, role) in ["system", "user", "assistant", "tool", "user"].into_iter().enumerate() {
            let data = json!({"i": i});
            made.push(store.add_message(&ctx, thread.id, role, &format!("m{i}"), &data, None).await.unwrap());
        }
        assert!(matches!(
            store.add_message(&ctx, thread.id, "robot", "x", &json!({}), None).await,
            Err(StoreError::Invalid(_))
        ));
        let huge = "x".repeat(crate::agents::MAX_CONTENT_BYTES + 1);
        assert!(matches!(
            store.add_message(&ctx, thread.id, "user", &huge, &json!({}), None).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.add_message(&ctx, thread.id, "user", "x", &json!("str"), None).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.add_message(&ctx, ThreadId::new(), "user", "x", &json!({}), None).await,
            Err(StoreError::NotFound("thread"))
        ));

        // Pages in creation order, and the stored messages are what was returned.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page =
                store.list_messages(&ctx, thread.id, PageReq::new(Some(2), after).unwrap()).await.unwrap();
            seen.extend(page.items.iter().cloned());
            after = page.items.last().map(|m| m.id.as_uuid());
            if !page.has_more {
                break;
            }
        }
        assert_eq!(seen, made);
        let recent = store.recent_messages(&ctx, thread.id, 2).await.unwrap();
        assert_eq!(recent, made[3..].to_vec());
        assert_eq!(store.recent_messages(&ctx, thread.id, 100).await.unwrap(), made);
        assert!(store.recent_messages(&ctx, thread.id, 0).await.unwrap().is_empty());

        store.set_thread_summary(&ctx, thread.id, "they said hi", made[2].id).await.unwrap();
        let t = store.get_thread(&ctx, thread.id).await.unwrap();
        assert_eq!((t.summary.as_deref(), t.summary_upto), (Some("they said hi"), Some(made[2].id)));
        // The summarized message must be one of the thread's.
        let other = store.create_thread(&ctx, &json!({})).await.unwrap();
        assert!(store.list_messages(&ctx, other.id, PageReq::default()).await.unwrap().items.is_empty());
        assert!(matches!(
            store.set_thread_summary(&ctx, other.id, "s", made[0].id).await,
            Err(StoreError::NotFound("message"))
        ));
        assert!(matches!(
            store.set_thread_summary(&ctx, ThreadId::new(), "s", made[0].id).await,
            Err(StoreError::NotFound("thread"))
        ));

        let listed = store.list_threads(&ctx, PageReq::default()).await.unwrap();
        assert_eq!(listed.items.iter().map(|t| t.id).collect::<Vec<_>>(), vec![thread.id, other.id]);
    })
    .await;
}

#[tokio::test]
async fn deleting_a_thread_takes_its_messages_runs_and_steps() {
    each_backend(|store, config| async move {
        let (ctx, _) = two_tenants(&store).await;
        let (agent, thread) = agent_and_thread(&store, &ctx).await;
        let run = store.create_run(&ctx, thread.id, agent.id, 1, &json!({}), 10).await.unwrap();
        store.claim_run(&ctx, "w1", crate::sqlite::now() + secs(60)).await.unwrap().unwrap();
        store.add_step(&ctx, run.id, "tool_call", &json!({"tool": "search"})).await.unwrap();
        store.add_message(&ctx, thread.id, "assistant", "done", &json!({}), Some(run.id)).await.unwrap();
        let kept = store.create_thread(&ctx, &json!({})).await.unwrap();
        store.add_message(&ctx, kept.id, "user", "stay", &json!({}), None).await.unwrap();

        store.delete_thread(&ctx, thread.id).await.unwrap();
        assert!(matches!(store.get_thread(&ctx, thread.id).await, Err(StoreError::NotFound("thread"))));
        assert!(matches!(
            store.list_messages(&ctx, thread.id, PageReq::default()).await,
            Err(StoreError::NotFound("thread"))
        ));
        assert!(matches!(store.get_run(&ctx, run.id).await, Err(StoreError::NotFound("run"))));
        assert!(matches!(store.list_steps(&ctx, run.id).await, Err(StoreError::NotFound("run"))));
        // Its worker finds out at its next renewal.
        let lease = crate::sqlite::now() + secs(60);
        assert_eq!(store.renew_run(&ctx, run.id, "w1", lease).await.unwrap(), None);
        assert!(matches!(store.delete_thread(&ctx, thread.id).await, Err(StoreError::NotFound("thread"))));
        // No row mentions the thread or the run any more; the other thread stays.
        let rows = crate::testing::dump_all_rows(&config).await.unwrap();
        for gone in [thread.id.to_string(), run.id.to_string()] {
            let left: Vec<_> = rows.iter().filter(|(_, r)| r.contains(&gone)).collect();
            assert!(left.is_empty(), "rows remain: {left:?}");
        }
        assert_eq!(store.recent_messages(&ctx, kept.id, 10).await.unwrap().len(), 1);
        // The agent is free to go now that its run went with the thread.
        store.delete_agent(&ctx, agent.id).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn runs_claim_renew_step_and_finish() {
    each_backend(|store, _| async move {
        let (ctx, _) = two_tenants(&store).await;
        let (agent, thread) = agent_and_thread(&store, &ctx).await;
        let input = json!({"vars": {"name": "Ada"}});
        assert!(matches!(
            store.create_run(&ctx, ThreadId::new(), agent.id, 1, &input, 10).await,
            Err(StoreError::NotFound("thread"))
        ));
        assert!(matches!(
            store.create_run(&ctx, thread.id, AgentId::new(), 1, &input, 10).await,
            Err(StoreError::NotFound("agent"))
        ));
        assert!(matches!(
            store.create_run(&ctx, thread.id, agent.id, 2, &input, 10).await,
            Err(StoreError::NotFound("agent version"))
        ));
        assert!(matches!(
            store.create_run(&ctx, thread.id, agent.id, 1, &json!([]), 10).await,
            Err(StoreError::Invalid(_))
        ));

        let runs: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(store.create_run(&ctx, thread.id, agent.id, 1, &input, 10).await.unwrap());
            }
            v
        };
        let r = &runs[0];
        assert_eq!(
            (r.status, r.attempts, r.tenant_id, r.agent_version),
            (RunStatus::Queued, 0, ctx.tenant_id(), 1)
        );
        assert_eq!(
            (&r.input, &r.output, r.worker.as_deref(), r.lease_until),
            (&input, &json!({}), None, None)
        );
        assert_eq!(store.get_run(&ctx, r.id).await.unwrap(), *r);
        let listed = store.list_runs(&ctx, thread.id, PageReq::default()).await.unwrap();
        assert_eq!(listed.items, runs);

        // Claims go oldest first.
        let lease = crate::sqlite::now() + secs(30);
        assert!(matches!(store.claim_run(&ctx, "", lease).await, Err(StoreError::Invalid(_))));
        let claimed = store.claim_run(&ctx, "w1", lease).await.unwrap().expect("a queued run");
        assert_eq!(claimed.id, runs[0].id);
        assert_eq!(
            (claimed.status, claimed.attempts, claimed.worker.as_deref(), claimed.lease_until),
            (RunStatus::Running, 1, Some("w1"), Some(lease))
        );
        assert!(claimed.started_at.is_some() && claimed.finished_at.is_none());
        assert_eq!(store.claim_run(&ctx, "w2", lease).await.unwrap().unwrap().id, runs[1].id);
        assert_eq!(store.claim_run(&ctx, "w2", lease).await.unwrap().unwrap().id, runs[2].id);
        assert!(store.claim_run(&ctx, "w2", lease).await.unwrap().is_none());

        // Only the holder renews.
        let later = lease + secs(30);
        assert_eq!(store.renew_run(&ctx, claimed.id, "w2", later).await.unwrap(), None);
        assert_eq!(store.renew_run(&ctx, claimed.id, "w1", later).await.unwrap(), Some(false));
        assert_eq!(store.get_run(&ctx, claimed.id).await.unwrap().lease_until, Some(later));

        // Steps number themselves.
        for (i, kind) in ["model_call", "tool_call", "model_call"].into_iter().enumerate() {
            let step = store.add_step(&ctx, claimed.id, kind, &json!({"i": i})).await.unwrap();
            assert_eq!((step.seq, step.run_id, step.kind.as_str()), (i as i32 + 1, claimed.id, kind));
        }
        let steps = store.list_steps(&ctx, claimed.id).await.unwrap();
        assert_eq!(
            steps.iter().map(|s| (s.seq, s.data.clone())).collect::<Vec<_>>(),
            vec![(1, json!({"i": 0})), (2, json!({"i": 1})), (3, json!({"i": 2}))]
        );
        assert!(store.list_steps(&ctx, runs[1].id).await.unwrap().is_empty());
        assert!(matches!(
            store.add_step(&ctx, claimed.id, "nap", &json!({})).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.add_step(&ctx, RunId::new(), "tool_call", &json!({})).await,
            Err(StoreError::NotFound("run"))
        ));
        assert!(matches!(store.list_steps(&ctx, RunId::new()).await, Err(StoreError::NotFound("run"))));

        // Messages of a run must be of its thread.
        let elsewhere = store.create_thread(&ctx, &json!({})).await.unwrap();
        assert!(matches!(
            store.add_message(&ctx, elsewhere.id, "assistant", "x", &json!({}), Some(claimed.id)).await,
            Err(StoreError::NotFound("run"))
        ));
        let m =
            store.add_message(&ctx, thread.id, "assistant", "4", &json!({}), Some(claimed.id)).await.unwrap();
        assert_eq!(m.run_id, Some(claimed.id));

        // The agent cannot go while it has runs queued or running.
        assert!(matches!(store.delete_agent(&ctx, agent.id).await, Err(StoreError::Conflict(_))));

        // Finishing: only the holder, only to a terminal status, only once.
        let output = json!({"answer": "4"});
        assert!(matches!(
            store.finish_run(&ctx, claimed.id, "w1", RunStatus::Queued, &output, None).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(
            !store.finish_run(&ctx, claimed.id, "w2", RunStatus::Completed, &output, None).await.unwrap()
        );
        assert!(store.finish_run(&ctx, claimed.id, "w1", RunStatus::Completed, &output, None).await.unwrap());
        let done = store.get_run(&ctx, claimed.id).await.unwrap();
        assert_eq!((done.status, &done.output, done.lease_until), (RunStatus::Completed, &output, None));
        assert_eq!((done.worker.as_deref(), done.error.as_deref()), (Some("w1"), None));
        assert!(done.finished_at.is_some());
        assert!(
            !store
                .finish_run(&ctx, claimed.id, "w1", RunStatus::Failed, &json!({}), Some("x"))
                .await
                .unwrap()
        );
        assert_eq!(store.renew_run(&ctx, claimed.id, "w1", later).await.unwrap(), None);
        let empty = json!({});
        for run in &runs[1..] {
            let failed = store.finish_run(&ctx, run.id, "w2", RunStatus::Failed, &empty, Some("boom")).await;
            assert!(failed.unwrap());
        }
        assert_eq!(store.get_run(&ctx, runs[1].id).await.unwrap().error.as_deref(), Some("boom"));

        // Now it can; its runs remain as history.
        store.delete_agent(&ctx, agent.id).await.unwrap();
        assert_eq!(store.get_run(&ctx, claimed.id).await.unwrap().agent_id, agent.id);
        assert!(matches!(
            store.create_run(&ctx, thread.id, agent.id, 1, &input, 10).await,
            Err(StoreError::NotFound("agent"))
        ));
    })
    .await;
}

#[tokio::test]
async fn cancelling_queued_running_and_finished_runs() {
    each_backend(|store, _| async move {
        let (ctx, _) = two_tenants(&store).await;
        let (agent, thread) = agent_and_thread(&store, &ctx).await;
        let queued = store.create_run(&ctx, thread.id, agent.id, 1, &json!({}), 10).await.unwrap();
        let running = store.create_run(&ctx, thread.id, agent.id, 1, &json!({}), 10).await.unwrap();

        // A queued run is cancelled at once and never claimed.
        let c = store.cancel_run(&ctx, queued.id).await.unwrap();
        assert_eq!(
            (c.status, c.error.as_deref(), c.cancel_requested),
            (RunStatus::Cancelled, Some("cancelled before it started"), true)
        );
        assert!(c.finished_at.is_some() && c.started_at.is_none());
        let lease = crate::sqlite::now() + secs(30);
        assert_eq!(store.claim_run(&ctx, "w", lease).await.unwrap().unwrap().id, running.id);
        assert!(store.claim_run(&ctx, "w", lease).await.unwrap().is_none());

        // A running one is flagged; its worker learns at renewal and stops.
        let r = store.cancel_run(&ctx, running.id).await.unwrap();
        assert_eq!((r.status, r.cancel_requested, r.finished_at), (RunStatus::Running, true, None));
        assert_eq!(store.renew_run(&ctx, running.id, "w", lease).await.unwrap(), Some(true));
        let empty = json!({});
        let stopped =
            store.finish_run(&ctx, running.id, "w", RunStatus::Cancelled, &empty, Some("cancelled"));
        assert!(stopped.await.unwrap());

        // Finished runs stay as they are.
        for id in [queued.id, running.id] {
            let before = store.get_run(&ctx, id).await.unwrap();
            assert_eq!(store.cancel_run(&ctx, id).await.unwrap(), before);
        }
        assert!(matches!(store.cancel_run(&ctx, RunId::new()).await, Err(StoreError::NotFound("run"))));
    })
    .await;
}

#[tokio::test]
async fn lapsed_leases_requeue_then_fail() {
    each_backend(|store, _| async move {
        let op = OperatorCtx::local_cli();
        let (a, b) = two_tenants(&store).await;
        let (agent, thread) = agent_and_thread(&store, &a).await;
        let run = store.create_run(&a, thread.id, agent.id, 1, &json!({}), 10).await.unwrap();
        let t0 = crate::sqlite::now();
        let max_attempts = 2;

        let first = store.claim_run(&a, "w1", t0 + secs(10)).await.unwrap().unwrap();
        assert!(store.recover_expired_runs(&op, t0 + secs(5), max_attempts).await.unwrap().is_empty());
        // w1 vanished: after its lease, the run is queued again.
        let recovered = store.recover_expired_runs(&op, t0 + secs(11), max_attempts).await.unwrap();
        assert_eq!(
            recovered,
            vec![Recovered { tenant_id: a.tenant_id(), run_id: run.id, status: RunStatus::Queued }]
        );
        let requeued = store.get_run(&a, run.id).await.unwrap();
        assert_eq!(
            (requeued.status, requeued.worker.as_deref(), requeued.lease_until, requeued.attempts),
            (RunStatus::Queued, None, None, 1)
        );
        assert_eq!(requeued.started_at, first.started_at, "started_at records the first start");
        // The old worker has lost it.
        assert_eq!(store.renew_run(&a, run.id, "w1", t0 + secs(60)).await.unwrap(), None);
        assert!(!store.finish_run(&a, run.id, "w1", RunStatus::Completed, &json!({}), None).await.unwrap());

        // Second attempt lapses too: attempts are used up.
        let second = store.claim_run(&a, "w2", t0 + secs(20)).await.unwrap().unwrap();
        assert_eq!((second.id, second.attempts), (run.id, 2));
        let recovered = store.recover_expired_runs(&op, t0 + secs(21), max_attempts).await.unwrap();
        assert_eq!(
            recovered,
            vec![Recovered { tenant_id: a.tenant_id(), run_id: run.id, status: RunStatus::Failed }]
        );
        let failed = store.get_run(&a, run.id).await.unwrap();
        assert_eq!(
            (failed.status, failed.error.as_deref(), failed.lease_until),
            (RunStatus::Failed, Some("worker_lost"), None)
        );
        assert!(failed.finished_at.is_some());
        assert!(store.recover_expired_runs(&op, t0 + secs(100), max_attempts).await.unwrap().is_empty());

        // A run whose cancel was asked for is not started again; recovery
        // spans tenants.
        let (agent_b, thread_b) = agent_and_thread(&store, &b).await;
        let doomed = store.create_run(&b, thread_b.id, agent_b.id, 1, &json!({}), 10).await.unwrap();
        store.claim_run(&b, "w3", t0 + secs(10)).await.unwrap().unwrap();
        store.cancel_run(&b, doomed.id).await.unwrap();
        let live = store.create_run(&a, thread.id, agent.id, 1, &json!({}), 10).await.unwrap();
        store.claim_run(&a, "w4", t0 + secs(1000)).await.unwrap().unwrap();
        let recovered = store.recover_expired_runs(&op, t0 + secs(30), max_attempts).await.unwrap();
        assert_eq!(
            recovered,
            vec![Recovered { tenant_id: b.tenant_id(), run_id: doomed.id, status: RunStatus::Cancelled }]
        );
        assert_eq!(store.get_run(&b, doomed.id).await.unwrap().status, RunStatus::Cancelled);
        assert_eq!(store.get_run(&a, live.id).await.unwrap().status, RunStatus::Running, "its lease holds");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_cap_holds_under_concurrent_creates() {
    each_backend(|store, config| async move {
        let op = OperatorCtx::local_cli();
        let (a, b) = two_tenants(&store).await;
        let (agent, thread) = agent_and_thread(&store, &a).await;
        // A second store on the same database stands for a second process:
        // the cap must hold across pools, not only within one.
        let second = crate::open(&config).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let store = if i % 2 == 0 { store.clone() } else { second.clone() };
            let a = a.clone();
            tasks.spawn(
                async move { store.create_run(&a, thread.id, agent.id, 1, &json!({ "i": i }), 10).await },
            );
        }
        let (mut queued, mut full) = (0, 0);
        while let Some(res) = tasks.join_next().await {
            match res.unwrap() {
                Ok(run) => {
                    assert_eq!(run.status, RunStatus::Queued);
                    queued += 1;
                }
                Err(StoreError::Conflict(msg)) if msg == "queue_full" => full += 1,
                Err(other) => panic!("unexpected: {other:?}"),
            }
        }
        assert_eq!((queued, full), (10, 40));
        assert_eq!(store.list_runs(&a, thread.id, PageReq::default()).await.unwrap().items.len(), 10);

        // The cap counts queued runs only, and only the tenant's own.
        let (agent_b, thread_b) = agent_and_thread(&store, &b).await;
        store.create_run(&b, thread_b.id, agent_b.id, 1, &json!({}), 10).await.unwrap();
        let lease = crate::sqlite::now() + secs(60);
        store.claim_run(&a, "w", lease).await.unwrap().unwrap();
        store.create_run(&a, thread.id, agent.id, 1, &json!({}), 10).await.unwrap();
        assert!(matches!(
            store.create_run(&a, thread.id, agent.id, 1, &json!({}), 10).await,
            Err(StoreError::Conflict(msg)) if msg == "queue_full"
        ));
        let mut overview = store.queue_overview(&op).await.unwrap();
        overview.sort_by_key(|q| q.tenant_id);
        let mut expected = vec![
            TenantQueue { tenant_id: a.tenant_id(), queued: 10, running: 1 },
            TenantQueue { tenant_id: b.tenant_id(), queued: 1, running: 0 },
        ];
        expected.sort_by_key(|q| q.tenant_id);
        assert_eq!(overview, expected);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_take_each_run_once() {
    each_backend(|store, config| async move {
        let (ctx, _) = two_tenants(&store).await;
        let (agent, thread) = agent_and_thread(&store, &ctx).await;
        let mut made = std::collections::HashSet::new();
        for _ in 0..20 {
            made.insert(store.create_run(&ctx, thread.id, agent.id, 1, &json!({}), 100).await.unwrap().id);
        }
        // Workers on two stores over one database, as two processes would be.
        let second = crate::open(&config).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..8 {
            let store = if w % 2 == 0 { store.clone() } else { second.clone() };
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let worker = format!("w{w}");
                let mut got = Vec::new();
                let lease = crate::sqlite::now() + secs(60);
                while let Some(run) = store.claim_run(&ctx, &worker, lease).await.unwrap() {
                    assert_eq!((run.worker.as_deref(), run.attempts), (Some(worker.as_str()), 1));
                    got.push(run.id);
                }
                got
            });
        }
        let mut claimed = Vec::new();
        while let Some(res) = tasks.join_next().await {
            claimed.extend(res.unwrap());
        }
        assert_eq!(claimed.len(), 20, "each run claimed exactly once");
        assert_eq!(claimed.iter().copied().collect::<std::collections::HashSet<_>>(), made);

        // Concurrent steps of one run get distinct, consecutive numbers.
        let run = claimed[0];
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let store = if i % 2 == 0 { store.clone() } else { second.clone() };
            let ctx = ctx.clone();
            tasks.spawn(async move {
                store.add_step(&ctx, run, "tool_call", &json!({ "i": i })).await.unwrap().seq
            });
        }
        let mut seqs = Vec::new();
        while let Some(res) = tasks.join_next().await {
            seqs.push(res.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test]
async fn agents_threads_and_runs_are_invisible_across_tenants() {
    each_backend(|store, _| async move {
        let (a, b) = two_tenants(&store).await;
        let (agent, thread) = agent_and_thread(&store, &a).await;
        let run = store.create_run(&a, thread.id, agent.id, 1, &json!({}), 10).await.unwrap();
        let step_run = store.create_run(&a, thread.id, agent.id, 1, &json!({}), 10).await.unwrap();
        store.add_step(&a, step_run.id, "model_call", &json!({})).await.unwrap();
        let msg = store.recent_messages(&a, thread.id, 1).await.unwrap()[0].clone();
        let (agent_b, thread_b) = agent_and_thread(&store, &b).await;
        let lease = crate::sqlite::now() + secs(60);

        // Agents.
        assert!(matches!(store.get_agent(&b, agent.id).await, Err(StoreError::NotFound("agent"))));
        assert_eq!(store.list_agents(&b, PageReq::default()).await.unwrap().items, vec![agent_b.clone()]);
        let patch = AgentPatch { spec: Some(json!({"hijacked": true})), ..Default::default() };
        assert!(matches!(store.update_agent(&b, agent.id, patch).await, Err(StoreError::NotFound("agent"))));
        assert!(matches!(store.delete_agent(&b, agent.id).await, Err(StoreError::NotFound("agent"))));
        assert!(matches!(store.list_agent_versions(&b, agent.id).await, Err(StoreError::NotFound("agent"))));
        assert!(matches!(store.get_agent_version(&b, agent.id, 1).await, Err(StoreError::NotFound(_))));
        // B may use the same name: names are per tenant.
        assert_eq!(agent_b.name, agent.name);

        // Threads and messages.
        assert!(matches!(store.get_thread(&b, thread.id).await, Err(StoreError::NotFound("thread"))));
        assert_eq!(store.list_threads(&b, PageReq::default()).await.unwrap().items, vec![thread_b.clone()]);
        assert!(matches!(
            store.list_messages(&b, thread.id, PageReq::default()).await,
            Err(StoreError::NotFound("thread"))
        ));
        assert!(matches!(
            store.recent_messages(&b, thread.id, 10).await,
            Err(StoreError::NotFound("thread"))
        ));
        assert!(matches!(
            store.add_message(&b, thread.id, "user", "psst", &json!({}), None).await,
            Err(StoreError::NotFound("thread"))
        ));
        assert!(matches!(
            store.add_message(&b, thread_b.id, "assistant", "x", &json!({}), Some(run.id)).await,
            Err(StoreError::NotFound("run"))
        ));
        assert!(matches!(
            store.set_thread_summary(&b, thread.id, "s", msg.id).await,
            Err(StoreError::NotFound("thread"))
        ));
        assert!(matches!(
            store.set_thread_summary(&b, thread_b.id, "s", msg.id).await,
            Err(StoreError::NotFound("message"))
        ));
        assert!(matches!(store.delete_thread(&b, thread.id).await, Err(StoreError::NotFound("thread"))));

        // Runs and steps.
        assert!(matches!(
            store.create_run(&b, thread.id, agent_b.id, 1, &json!({}), 10).await,
            Err(StoreError::NotFound("thread"))
        ));
        assert!(matches!(
            store.create_run(&b, thread_b.id, agent.id, 1, &json!({}), 10).await,
            Err(StoreError::NotFound("agent"))
        ));
        assert!(matches!(store.get_run(&b, run.id).await, Err(StoreError::NotFound("run"))));
        assert!(matches!(
            store.list_runs(&b, thread.id, PageReq::default()).await,
            Err(StoreError::NotFound("thread"))
        ));
        assert!(store.claim_run(&b, "thief", lease).await.unwrap().is_none());
        assert!(matches!(store.cancel_run(&b, run.id).await, Err(StoreError::NotFound("run"))));
        assert!(matches!(
            store.add_step(&b, step_run.id, "tool_call", &json!({})).await,
            Err(StoreError::NotFound("run"))
        ));
        assert!(matches!(store.list_steps(&b, step_run.id).await, Err(StoreError::NotFound("run"))));

        // A's run is untouched; once A's worker holds it, B cannot renew or finish it.
        assert_eq!(store.get_run(&a, run.id).await.unwrap(), run);
        let claimed = store.claim_run(&a, "w", lease).await.unwrap().unwrap();
        assert_eq!(claimed.id, run.id);
        assert_eq!(store.renew_run(&b, run.id, "w", lease).await.unwrap(), None);
        assert!(!store.finish_run(&b, run.id, "w", RunStatus::Failed, &json!({}), None).await.unwrap());
        assert_eq!(store.get_run(&a, run.id).await.unwrap().status, RunStatus::Running);
        assert_eq!(store.list_steps(&a, step_run.id).await.unwrap().len(), 1);
        assert_eq!(store.recent_messages(&a, thread.id, 10).await.unwrap(), vec![msg]);
    })
    .await;
}

fn audit_entry(action: &str) -> crate::NewAuditEntry {
    crate::NewAuditEntry {
        actor: "cli".into(),
        via_operator: true,
        action: action.into(),
        target: "limits".into(),
        outcome: "success".into(),
        details: json!({"z": 1, "a": {"b": [true, null]}}),
    }
}

#[tokio::test]
async fn audit_chains_link_their_entries_and_stay_apart() {
    use crate::audit::{GENESIS_HASH, PLATFORM_CHAIN};
    use crate::{AuditChain, AuditQuery};
    each_backend(|store, _| async move {
        let (a, b) = two_tenants(&store).await;
        let op = OperatorCtx::local_cli();
        assert_eq!(store.audit_head(AuditChain::Tenant(&a)).await.unwrap(), None);
        let mut appended = Vec::new();
        for action in ["key.created", "key.revoked", "config.updated"] {
            appended.push(store.append_audit(AuditChain::Tenant(&a), &audit_entry(action)).await.unwrap());
        }
        store.append_audit(AuditChain::Tenant(&b), &audit_entry("secret.put")).await.unwrap();
        let p = store.append_audit(AuditChain::Platform(&op), &audit_entry("tenant.created")).await.unwrap();
        assert_eq!((p.chain.as_str(), p.seq, p.prev_hash.as_str()), (PLATFORM_CHAIN, 1, GENESIS_HASH));

        let listed = store
            .list_audit(AuditChain::Tenant(&a), &AuditQuery { limit: 100, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(listed, appended, "read back exactly as appended (and hashed)");
        assert_eq!(listed.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(listed[0].prev_hash, GENESIS_HASH);
        for pair in listed.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
        }
        for e in &listed {
            assert_eq!(e.computed_hash(), e.hash);
            assert_eq!(e.chain, a.tenant_id().to_string());
            assert_eq!(e.details, r#"{"a":{"b":[true,null]},"z":1}"#, "canonical JSON");
        }
        let head = store.audit_head(AuditChain::Tenant(&a)).await.unwrap().unwrap();
        assert_eq!((head.last_seq, head.last_hash.as_str()), (3, listed[2].hash.as_str()));
        // Filters.
        let q = AuditQuery { action_prefix: Some("key.".into()), limit: 100, ..Default::default() };
        assert_eq!(store.list_audit(AuditChain::Tenant(&a), &q).await.unwrap().len(), 2);
        // `_` is not a wildcard.
        let q = AuditQuery { action_prefix: Some("key_".into()), limit: 100, ..Default::default() };
        assert!(store.list_audit(AuditChain::Tenant(&a), &q).await.unwrap().is_empty());
        let q = AuditQuery { after: 1, limit: 1, ..Default::default() };
        assert_eq!(store.list_audit(AuditChain::Tenant(&a), &q).await.unwrap()[0].seq, 2);
        let q = AuditQuery { since: Some(listed[2].at), limit: 100, ..Default::default() };
        assert!(
            store.list_audit(AuditChain::Tenant(&a), &q).await.unwrap().iter().all(|e| e.at >= listed[2].at)
        );
        // B's chain is its own, and neither sees the platform's.
        let b_entries = store
            .list_audit(AuditChain::Tenant(&b), &AuditQuery { limit: 100, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(
            b_entries.iter().map(|e| (e.seq, e.action.as_str())).collect::<Vec<_>>(),
            vec![(1, "secret.put")]
        );
        let platform = store
            .list_audit(AuditChain::Platform(&op), &AuditQuery { limit: 100, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(platform.len(), 1);
        // Bad entries are refused before anything is written.
        let bad = crate::NewAuditEntry { action: "Bad Action".into(), ..audit_entry("x") };
        assert!(matches!(
            store.append_audit(AuditChain::Tenant(&a), &bad).await,
            Err(StoreError::Invalid(_))
        ));
        // An entry for a tenant that does not exist is refused.
        let ghost = op.act_for(bulkhead_core::TenantId::new());
        assert!(matches!(
            store.append_audit(AuditChain::Tenant(&ghost), &audit_entry("x.y")).await,
            Err(StoreError::NotFound("tenant"))
        ));
        assert_eq!(store.audit_head(AuditChain::Tenant(&a)).await.unwrap().unwrap().last_seq, 3);
    })
    .await;
}

#[tokio::test]
async fn concurrent_audit_appends_take_each_seq_once() {
    use crate::{AuditChain, AuditQuery};
    each_backend(|store, _| async move {
        let (a, _) = two_tenants(&store).await;
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (store, a) = (store.clone(), a.clone());
            tasks.push(tokio::spawn(async move {
                store.append_audit(AuditChain::Tenant(&a), &audit_entry("tool.called")).await.unwrap().seq
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=50).collect::<Vec<i64>>());
        let entries = store
            .list_audit(AuditChain::Tenant(&a), &AuditQuery { limit: 100, ..Default::default() })
            .await
            .unwrap();
        for pair in entries.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
        }
    })
    .await;
}

/// The application role may read and append audit entries, never change
/// or remove them — whatever scope its transaction declares.
#[tokio::test]
async fn postgres_app_role_cannot_update_or_delete_audit_entries() {
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
    let (a, _) = two_tenants(&dyn_store).await;
    dyn_store.append_audit(crate::AuditChain::Tenant(&a), &audit_entry("key.created")).await.unwrap();
    dyn_store.append_audit(crate::AuditChain::Platform(&op), &audit_entry("tenant.created")).await.unwrap();

    let pool = store.pool();
    for scope in [("app.tenant_id", a.tenant_id().to_string()), ("app.platform", "on".to_owned())] {
        for sql in [
            "UPDATE audit_entries SET target = 'forged'",
            "DELETE FROM audit_entries",
            "TRUNCATE audit_entries",
            "UPDATE platform_audit_entries SET target = 'forged'",
            "DELETE FROM platform_audit_entries",
            "TRUNCATE platform_audit_entries",
        ] {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SELECT set_config($1, $2, true)")
                .bind(scope.0)
                .bind(&scope.1)
                .execute(&mut *tx)
                .await
                .unwrap();
            let err = sqlx::query(sql).execute(&mut *tx).await.expect_err(sql);
            assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
            tx.rollback().await.unwrap();
        }
    }
    // The platform chain is invisible, and closed to appends, in a tenant's scope.
    for table in ["platform_audit_entries", "platform_audit_head"] {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(a.tenant_id().to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} visible to a tenant");
        tx.rollback().await.unwrap();
    }
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(a.tenant_id().to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let forged = sqlx::query(
        "INSERT INTO platform_audit_entries (seq, at, actor, via_operator, action, target, outcome, details,
                                             prev_hash, hash)
         VALUES (2, 0, 'cli', false, 'x.y', '', 'success', '{}', '', '')",
    )
    .execute(&mut *tx)
    .await;
    let err = forged.expect_err("a tenant scope cannot append to the platform chain");
    assert!(err.to_string().contains("row-level security"), "{err}");
    tx.rollback().await.unwrap();

    let mut owner = sqlx::PgConnection::connect(&url).await.unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_entries").fetch_one(&mut owner).await.unwrap();
    assert_eq!(n, 1, "nothing was changed");
    // Deleting the tenant still removes its chain (the cascade runs with the owner's rights).
    dyn_store.delete_tenant(&op, a.tenant_id()).await.unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_entries").fetch_one(&mut owner).await.unwrap();
    assert_eq!(n, 0);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM platform_audit_entries")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert_eq!(n, 1, "the platform chain outlives the tenant");
}
