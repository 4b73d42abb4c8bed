//! The service on both stores: actors, scrubbing, verification of intact
//! and tampered chains (rows changed with the owner's rights, as someone
//! with database access would), concurrent appends, and the bound on
//! authentication-failure entries.

use std::time::Duration;

use bulkhead_core::config::StoreConfig;
use bulkhead_core::keys::{self, KeyKind, Principal};
use bulkhead_core::tenancy::Scope;
use bulkhead_core::{OperatorCtx, TenantCtx, Tier};
use bulkhead_store::testing::{backends, execute_as_owner, fresh_config};
use bulkhead_store::{AuditChain, AuditQuery, DynStore, NewTenant};
use serde_json::{Value, json};

use super::*;

async fn each_backend<F, Fut>(test: F)
where
    F: Fn(DynStore, StoreConfig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let config = fresh_config(backend, dir.path()).await.unwrap();
        let store = bulkhead_store::open(&config).await.unwrap();
        test(store, config).await;
    }
}

async fn tenant(store: &DynStore, name: &str) -> TenantCtx {
    let op = OperatorCtx::local_cli();
    let t = store
        .create_tenant(&op, NewTenant { name: name.into(), tier: Tier::Shared, metadata: json!({}) })
        .await
        .unwrap();
    op.act_for(t.id)
}

/// A context minted the way the auth layer mints it, from a tenant key.
async fn keyed_ctx(store: &DynStore, owner: &TenantCtx) -> (TenantCtx, KeyId) {
    let new = keys::generate(KeyKind::Tenant);
    let key = store.create_tenant_key(owner, "app", Scope::TenantAdmin, &new, None).await.unwrap();
    let parsed = keys::parse(&new.secret).unwrap();
    let stored = store.lookup_key(&new.prefix).await.unwrap();
    match keys::authenticate(&parsed, stored, OffsetDateTime::now_utc()).unwrap() {
        Principal::Tenant(ctx) => (ctx, key.id),
        other => panic!("{other:?}"),
    }
}

async fn all(audit: &Audit, chain: AuditChain<'_>) -> Vec<AuditEntry> {
    audit.list(chain, &AuditQuery { limit: 1000, ..Default::default() }).await.unwrap()
}

#[tokio::test]
async fn entries_name_their_actor_and_chain() {
    each_backend(|store, _| async move {
        let audit = Audit::new(store.clone());
        let by_cli = tenant(&store, "acme").await;
        let (by_key, key_id) = keyed_ctx(&store, &by_cli).await;
        let op = {
            // An operator key's context, as authentication mints it.
            let new = keys::generate(KeyKind::Operator);
            let k = store.create_operator_key(&OperatorCtx::local_cli(), "ops", &new, None).await.unwrap();
            let stored = store.lookup_key(&new.prefix).await.unwrap();
            match keys::authenticate(&keys::parse(&new.secret).unwrap(), stored, OffsetDateTime::now_utc())
                .unwrap()
            {
                Principal::Operator(op) => {
                    assert_eq!(op.key_id(), Some(k.id));
                    op
                }
                other => panic!("{other:?}"),
            }
        };
        audit.record(&by_key, AuditEvent::new(action::SECRET_PUT, "provider_key:openai")).await;
        audit
            .record(&op.act_for(by_key.tenant_id()), AuditEvent::new(action::CONFIG_UPDATED, "limits"))
            .await;
        audit.record(&by_cli, AuditEvent::new(action::KEY_CREATED, "key:x")).await;
        audit
            .record_as(&by_cli, AuditActor::System, AuditEvent::new(action::TOOL_CALLED, "tool:calculator"))
            .await;
        audit.record_platform(&op, AuditEvent::new(action::OPERATOR_KEY_CREATED, "key:y")).await;

        let entries = all(&audit, AuditChain::Tenant(&by_cli)).await;
        let seen: Vec<(i64, &str, bool, &str)> =
            entries.iter().map(|e| (e.seq, e.actor.as_str(), e.via_operator, e.action.as_str())).collect();
        let op_label = format!("operator:{}", op.key_id().unwrap());
        let key_label = format!("key:{key_id}");
        assert_eq!(
            seen,
            vec![
                (1, key_label.as_str(), false, "secret.put"),
                (2, op_label.as_str(), true, "config.updated"),
                (3, "cli", true, "key.created"),
                (4, "system", false, "tool.called"),
            ]
        );
        assert!(entries.iter().all(|e| e.chain == by_cli.tenant_id().to_string()));
        let platform = all(&audit, AuditChain::Platform(&op)).await;
        assert_eq!(platform.len(), 1);
        assert_eq!((platform[0].chain.as_str(), platform[0].actor.as_str()), ("platform", op_label.as_str()));
        for chain in [AuditChain::Tenant(&by_cli), AuditChain::Platform(&op)] {
            let report = audit.verify(chain).await.unwrap();
            assert!(report.ok, "{report:?}");
            assert_eq!(
                report.head_hash.as_deref(),
                Some(all(&audit, chain).await.last().unwrap().hash.as_str())
            );
        }
        // Filters: action prefix, time, cursor.
        let q = AuditQuery { action_prefix: Some("key.".into()), limit: 10, ..Default::default() };
        assert_eq!(audit.list(AuditChain::Tenant(&by_cli), &q).await.unwrap().len(), 1);
        let q = AuditQuery { after: 2, limit: 1, ..Default::default() };
        assert_eq!(audit.list(AuditChain::Tenant(&by_cli), &q).await.unwrap()[0].seq, 3);
        let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
        let q = AuditQuery { since: Some(later), limit: 10, ..Default::default() };
        assert!(audit.list(AuditChain::Tenant(&by_cli), &q).await.unwrap().is_empty());
        // Another tenant's chain is its own.
        let other = tenant(&store, "other").await;
        assert!(all(&audit, AuditChain::Tenant(&other)).await.is_empty());
        assert!(audit.verify(AuditChain::Tenant(&other)).await.unwrap().ok);
    })
    .await;
}

#[tokio::test]
async fn secrets_and_keys_are_scrubbed_from_entries() {
    each_backend(|store, config| async move {
        let audit = Audit::new(store.clone());
        let ctx = tenant(&store, "acme").await;
        let key = keys::generate(KeyKind::Tenant);
        let details = json!({
            "api_key": "sk-live-canary-1",
            "nested": {"client_secret": "canary-2", "ok": "visible"},
            "list": [format!("Bearer {}", key.secret)],
        });
        let target = format!("presented {}", key.secret);
        let entry = audit
            .try_record(&ctx, AuditEvent::new(action::SECRET_PUT, target).details(details))
            .await
            .unwrap();
        let stored: Value = serde_json::from_str(&entry.details).unwrap();
        assert_eq!(stored["api_key"], "[redacted]");
        assert_eq!(stored["nested"]["client_secret"], "[redacted]");
        assert_eq!(stored["nested"]["ok"], "visible");
        assert_eq!(stored["list"][0], format!("Bearer {}_[redacted]", key.prefix));
        assert_eq!(entry.target, format!("presented {}_[redacted]", key.prefix));
        let secret_part = &key.secret[key.prefix.len() + 1..];
        for (table, row) in bulkhead_store::testing::dump_all_rows(&config).await.unwrap() {
            for needle in ["sk-live-canary-1", "canary-2", secret_part] {
                assert!(!row.contains(needle), "{table}: {row}");
            }
        }
    })
    .await;
}

/// A tamper done with the owner's rights, and what `verify` must say.
struct Tamper {
    name: &'static str,
    /// SQL with `{t}` for the tenant id.
    sql: &'static str,
    expect: Problem,
    /// Entries found intact before the problem.
    checked: u64,
}

fn tampers() -> Vec<Tamper> {
    let at = |seq, kind| Problem { seq, kind };
    vec![
        Tamper {
            name: "alter a field",
            sql: "UPDATE audit_entries SET target = 'key:someone-else' WHERE tenant_id = '{t}' AND seq = 3",
            expect: at(3, ProblemKind::Altered),
            checked: 2,
        },
        Tamper {
            name: "alter the details",
            sql: "UPDATE audit_entries SET details = '{\"n\":99}' WHERE tenant_id = '{t}' AND seq = 1",
            expect: at(1, ProblemKind::Altered),
            checked: 0,
        },
        Tamper {
            name: "delete a middle entry",
            sql: "DELETE FROM audit_entries WHERE tenant_id = '{t}' AND seq = 2",
            expect: at(2, ProblemKind::Removed),
            checked: 1,
        },
        Tamper {
            name: "delete the last entry",
            sql: "DELETE FROM audit_entries WHERE tenant_id = '{t}' AND seq = 5",
            expect: at(5, ProblemKind::Removed),
            checked: 4,
        },
        Tamper {
            name: "delete the last two entries",
            sql: "DELETE FROM audit_entries WHERE tenant_id = '{t}' AND seq >= 4",
            expect: at(4, ProblemKind::Removed),
            checked: 3,
        },
        Tamper {
            name: "delete the last entry and roll the head back",
            sql: "DELETE FROM audit_entries WHERE tenant_id = '{t}' AND seq = 5;
                  UPDATE audit_heads SET last_seq = 4 WHERE tenant_id = '{t}'",
            expect: at(4, ProblemKind::HeadMismatch),
            checked: 4,
        },
        Tamper {
            name: "remove the head",
            sql: "DELETE FROM audit_heads WHERE tenant_id = '{t}'",
            expect: at(5, ProblemKind::HeadMismatch),
            checked: 5,
        },
        Tamper {
            name: "swap two entries' seqs",
            sql: "UPDATE audit_entries SET seq = 100 WHERE tenant_id = '{t}' AND seq = 2;
                  UPDATE audit_entries SET seq = 2 WHERE tenant_id = '{t}' AND seq = 3;
                  UPDATE audit_entries SET seq = 3 WHERE tenant_id = '{t}' AND seq = 100",
            expect: at(2, ProblemKind::Reordered),
            checked: 1,
        },
        Tamper {
            name: "swap the last two entries' seqs",
            sql: "UPDATE audit_entries SET seq = 100 WHERE tenant_id = '{t}' AND seq = 4;
                  UPDATE audit_entries SET seq = 4 WHERE tenant_id = '{t}' AND seq = 5;
                  UPDATE audit_entries SET seq = 5 WHERE tenant_id = '{t}' AND seq = 100",
            expect: at(4, ProblemKind::Reordered),
            checked: 3,
        },
    ]
}

#[tokio::test]
async fn verify_finds_each_kind_of_tampering() {
    each_backend(|store, config| async move {
        let audit = Audit::new(store.clone());
        for (i, tamper) in tampers().into_iter().enumerate() {
            let ctx = tenant(&store, &format!("t{i}")).await;
            let bystander = tenant(&store, &format!("b{i}")).await;
            for n in 1..=5 {
                let event = AuditEvent::new(action::CONFIG_UPDATED, "limits").details(json!({"n": n}));
                audit.try_record(&ctx, event.clone()).await.unwrap();
                audit.try_record(&bystander, event).await.unwrap();
            }
            let before = audit.verify(AuditChain::Tenant(&ctx)).await.unwrap();
            assert_eq!((before.ok, before.entries_checked, before.head_seq), (true, 5, Some(5)));
            let sql = tamper.sql.replace("{t}", &ctx.tenant_id().to_string());
            execute_as_owner(&config, &sql).await.unwrap();
            let report = audit.verify(AuditChain::Tenant(&ctx)).await.unwrap();
            assert!(!report.ok, "{}: {report:?}", tamper.name);
            assert_eq!(report.first_problem, Some(tamper.expect), "{}: {report:?}", tamper.name);
            assert_eq!(report.entries_checked, tamper.checked, "{}", tamper.name);
            // The other tenant's chain is untouched and still verifies.
            assert!(audit.verify(AuditChain::Tenant(&bystander)).await.unwrap().ok, "{}", tamper.name);
        }
        // The platform chain is checked the same way.
        let op = OperatorCtx::local_cli();
        for n in 1..=3 {
            audit
                .try_record_platform(&op, AuditEvent::new(action::TENANT_CREATED, format!("t{n}")))
                .await
                .unwrap();
        }
        assert!(audit.verify(AuditChain::Platform(&op)).await.unwrap().ok);
        execute_as_owner(&config, "UPDATE platform_audit_entries SET actor = 'system' WHERE seq = 2")
            .await
            .unwrap();
        let report = audit.verify(AuditChain::Platform(&op)).await.unwrap();
        assert_eq!(report.first_problem, Some(Problem { seq: 2, kind: ProblemKind::Altered }));
    })
    .await;
}

#[tokio::test]
async fn concurrent_appends_make_one_unbroken_chain() {
    each_backend(|store, _| async move {
        let audit = Audit::new(store.clone());
        let ctx = tenant(&store, "busy").await;
        let other = tenant(&store, "also-busy").await;
        let mut tasks = Vec::new();
        for i in 0..50 {
            for c in [ctx.clone(), other.clone()] {
                let audit = audit.clone();
                tasks.push(tokio::spawn(async move {
                    let event = AuditEvent::new(action::TOOL_CALLED, format!("tool:{i}"));
                    audit.try_record(&c, event).await.unwrap().seq
                }));
            }
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        let expected: Vec<i64> = (1..=50).flat_map(|s| [s, s]).collect();
        assert_eq!(seqs, expected, "each chain got seqs 1..50, each once");
        for c in [&ctx, &other] {
            let entries = all(&audit, AuditChain::Tenant(c)).await;
            assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
            let report = audit.verify(AuditChain::Tenant(c)).await.unwrap();
            assert_eq!((report.ok, report.entries_checked), (true, 50), "{report:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn auth_failures_are_coalesced_then_counted() {
    each_backend(|store, _| async move {
        let window = Duration::from_secs(3600);
        let audit = Audit::with_auth_window(store.clone(), window);
        let ctx = tenant(&store, "acme").await;
        let (_, key_id) = keyed_ctx(&store, &ctx).await;
        let op = OperatorCtx::local_cli();
        for i in 0..40 {
            audit
                .auth_failed(AuthFailure::known(
                    "bh_tk_aaaaaaaaaaaa",
                    key_id,
                    Some(ctx.tenant_id()),
                    AuthFailReason::Revoked,
                ))
                .await;
            audit.auth_failed(AuthFailure::unknown(Some(&format!("bh_tk_{i:012x}")))).await;
        }
        let tenant_entries = all(&audit, AuditChain::Tenant(&ctx)).await;
        assert_eq!(tenant_entries.len(), 1, "one entry for the first failure of the window");
        let first: Value = serde_json::from_str(&tenant_entries[0].details).unwrap();
        assert_eq!(first["reason"], "revoked");
        assert_eq!(first["key_id"], key_id.to_string());
        assert_eq!(
            (tenant_entries[0].actor.as_str(), tenant_entries[0].outcome.as_str()),
            ("system", "denied")
        );
        assert_eq!(all(&audit, AuditChain::Platform(&op)).await.len(), 1);

        // The window closes: each bucket writes its count once.
        audit.flush_auth_failures_at(tokio::time::Instant::now() + window).await;
        let tenant_entries = all(&audit, AuditChain::Tenant(&ctx)).await;
        assert_eq!(tenant_entries.len(), 2);
        let summary: Value = serde_json::from_str(&tenant_entries[1].details).unwrap();
        assert_eq!((summary["count"].as_u64(), summary["coalesced"].as_bool()), (Some(39), Some(true)));
        let platform = all(&audit, AuditChain::Platform(&op)).await;
        assert_eq!(platform.len(), 2);
        let summary: Value = serde_json::from_str(&platform[1].details).unwrap();
        assert_eq!(summary["count"], 39);
        assert_eq!(summary["prefixes"].as_array().unwrap().len(), failures::MAX_SAMPLES);
        // Nothing more to write.
        audit.flush_auth_failures_at(tokio::time::Instant::now() + window * 2).await;
        assert_eq!(all(&audit, AuditChain::Platform(&op)).await.len(), 2);
        assert!(audit.verify(AuditChain::Platform(&op)).await.unwrap().ok);
    })
    .await;
}

#[tokio::test]
async fn a_failed_write_does_not_fail_the_caller_but_try_record_reports_it() {
    each_backend(|store, _| async move {
        let audit = Audit::new(store.clone());
        let op = OperatorCtx::local_cli();
        let gone = op.act_for(bulkhead_core::TenantId::new());
        // No such tenant: the write fails.
        audit.record(&gone, AuditEvent::new(action::KEY_CREATED, "key:x")).await;
        let err = audit.try_record(&gone, AuditEvent::new(action::KEY_CREATED, "key:x")).await.unwrap_err();
        assert_eq!(err.code, bulkhead_core::Code::NotFound);
        let bad = AuditEvent::new("Not A Name", "x");
        let err = audit.try_record_platform(&op, bad).await.unwrap_err();
        assert_eq!(err.code, bulkhead_core::Code::InvalidRequest);
    })
    .await;
}

#[test]
fn digests_are_sha256_hex_and_ignore_key_order() {
    assert_eq!(digest(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(digest_json(&json!({"a": 1, "b": [2]})), digest_json(&json!({"b": [2], "a": 1})));
    assert_ne!(digest_json(&json!({"a": 1})), digest_json(&json!({"a": 2})));
}
