//! Isolation tiers through the API: live moves between `shared` and
//! `isolated` under concurrent writes lose nothing (count and checksum),
//! leave nothing behind, and are audited; the pause a move causes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bulkhead_core::{OperatorCtx, TenantId};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{TestServer, TestTenant};

/// Writers that keep adding messages to a thread until stopped; each
/// returns the ids of the messages the API acknowledged (201).
fn start_writers(
    server: &TestServer,
    tenant: &TestTenant,
    thread: &str,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..n)
        .map(|w| {
            let (http, base, key) = (server.http.clone(), server.base.clone(), tenant.app_key.clone());
            let path = format!("{base}/v1/threads/{thread}/messages");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let res = http
                        .post(&path)
                        .bearer_auth(&key)
                        .json(&json!({"content": format!("writer {w} message {i}")}))
                        .send()
                        .await
                        .expect("sent");
                    let status = res.status();
                    let body: Value = res.json().await.unwrap_or_default();
                    assert_eq!(status.as_u16(), 201, "a write failed during the move: {body}");
                    acked.push(body["id"].as_str().unwrap().to_owned());
                    i += 1;
                }
                acked
            })
        })
        .collect()
}

async fn stop_writers(stop: &AtomicBool, writers: Vec<tokio::task::JoinHandle<Vec<String>>>) -> Vec<String> {
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    all
}

/// Rows of `table` that belong to `tenant` in the shared (control) store
/// and in its isolated store, read with owner rights.
async fn rows_where(server: &TestServer, tenant: &str, table: &str) -> (usize, usize) {
    let id: TenantId = tenant.parse().unwrap();
    let count =
        |rows: &[(String, String)]| rows.iter().filter(|(t, r)| t == table && r.contains(tenant)).count();
    let shared = server.stored_rows().await;
    let isolated = bulkhead_store::testing::isolated_rows(&server.store_config, id).await.unwrap();
    (count(&shared), count(&isolated))
}

async fn move_to(server: &TestServer, tenant: &str, tier: &str) -> Value {
    let res =
        server.post(&format!("/v1/tenants/{tenant}/move"), &server.operator_key, json!({"tier": tier})).await;
    res.expect(200).clone()
}

async fn moves_under_concurrent_writes_lose_nothing(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("mover", json!({})).await;
    let other = server.tenant("bystander", json!({})).await;
    // The writers go faster than the default request rate.
    let limits = json!({"requests_per_minute": 1_000_000});
    let path = format!("/v1/tenants/{}/limits", t.id);
    server.call(Method::PUT, &path, Some(&server.operator_key), Some(limits)).await.expect(200);
    let thread = server.post("/v1/threads", &t.app_key, json!({})).await;
    let thread = thread.expect(201)["id"].as_str().unwrap().to_owned();
    let op = OperatorCtx::local_cli();
    let id: TenantId = t.id.parse().unwrap();
    let other_sums = server.store.tenant_checksums(&op, other.id.parse().unwrap()).await.unwrap();

    let mut acked = Vec::new();
    for (from, to) in [("shared", "isolated"), ("isolated", "shared")] {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = start_writers(&server, &t, &thread, 4, stop.clone());
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let report = move_to(&server, &t.id, to).await;
        assert_eq!((report["from"].as_str(), report["to"].as_str()), (Some(from), Some(to)));
        assert_eq!(report["source_purged"], true);
        // Writers keep going on the new store for a moment.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let done = stop_writers(&stop, writers).await;
        assert!(done.len() > 20, "the writers wrote throughout: {}", done.len());
        acked.extend(done);

        // Every acknowledged write is in the new store, none in the old.
        let (shared, isolated) = rows_where(&server, &t.id, "messages").await;
        let (new, old) = if to == "isolated" { (isolated, shared) } else { (shared, isolated) };
        assert_eq!((new, old), (acked.len(), 0), "{backend} {from}->{to}");
        let listed = server.get(&format!("/v1/threads/{thread}/messages?limit=500"), &t.app_key).await;
        assert!(listed.expect(200)["data"].as_array().unwrap().len() == acked.len().min(500));

        // The move verified every table; tables the writers did not touch
        // still have the checksums the move reported.
        let now = server.store.tenant_checksums(&op, id).await.unwrap();
        let tables = report["tables"].as_array().unwrap();
        assert!(tables.len() >= 22, "{report}");
        for t in tables {
            let name = t["table"].as_str().unwrap();
            let current = now.iter().find(|s| s.table == name).unwrap();
            if name == "messages" {
                assert!(current.rows >= t["rows"].as_u64().unwrap());
            } else if !name.starts_with("audit_") {
                assert_eq!(current.sha256, t["sha256"].as_str().unwrap(), "{name}");
            }
        }
        let tier = server.get(&format!("/v1/tenants/{}", t.id), &server.operator_key).await;
        assert_eq!(tier.expect(200)["tier"], to);
    }
    // The bystander was never touched; the tenant's keys still work.
    assert_eq!(server.store.tenant_checksums(&op, other.id.parse().unwrap()).await.unwrap(), other_sums);
    server.get("/v1/tenant", &t.app_key).await.expect(200);

    // Both chains record the moves with their table sums.
    let own = server.get("/v1/audit?action=tenant.moved", &t.admin_key).await;
    let entries = own.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries[0]["details"]["tables"].as_array().unwrap().iter().any(|s| s["table"] == "messages"));
    let verify = server.get("/v1/audit/verify", &t.admin_key).await;
    assert_eq!(verify.expect(200)["ok"], true, "the tenant's chain survived two moves intact");
    let platform = bulkhead_store::AuditChain::Platform(&op);
    let query = bulkhead_store::AuditQuery {
        after: 0,
        limit: 100,
        action_prefix: Some("tenant.moved".into()),
        since: None,
    };
    assert_eq!(server.store.list_audit(platform, &query).await.unwrap().len(), 2);
}
both_backends!(moves_under_concurrent_writes_lose_nothing);

async fn moves_are_refused_when_they_cannot_be_done(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("stays", json!({})).await;
    let op = server.operator_key.clone();
    let path = format!("/v1/tenants/{}/move", t.id);
    server.post(&path, &op, json!({"tier": "dedicated"})).await.expect_error(400, "invalid_request");
    server.post(&path, &op, json!({"tier": "nowhere"})).await.expect_error(400, "malformed_json");
    server.post(&path, &t.admin_key, json!({"tier": "isolated"})).await.expect_error(403, "forbidden");
    let ghost = format!("/v1/tenants/{}/move", uuid::Uuid::now_v7());
    server.post(&ghost, &op, json!({"tier": "isolated"})).await.expect_error(404, "not_found");
    // A move under way elsewhere (another process's marker) is not run
    // twice; moving to the tier the tenant has clears a marker left behind.
    let ops = OperatorCtx::local_cli();
    let tenant: TenantId = t.id.parse().unwrap();
    server.store.mark_moving(&ops, tenant, Some(bulkhead_core::Tier::Isolated)).await.unwrap();
    server.post(&path, &op, json!({"tier": "isolated"})).await.expect_error(409, "conflict");
    let same = server.post(&path, &op, json!({"tier": "shared"})).await;
    assert_eq!(same.expect(200)["tables"].as_array().unwrap().len(), 0);
    assert_eq!(server.store.tenant_route(&ops, tenant).await.unwrap().unwrap().moving_to, None);
    server.get("/v1/threads", &t.app_key).await.expect(200);
    // The refused attempt is audited in the platform chain.
    let platform = bulkhead_store::AuditChain::Platform(&ops);
    let query = bulkhead_store::AuditQuery {
        after: 0,
        limit: 100,
        action_prefix: Some("tenant.moved".into()),
        since: None,
    };
    let entries = server.store.list_audit(platform, &query).await.unwrap();
    assert!(
        entries.iter().any(|e| e.outcome == "failure" && e.details.contains("already under way")),
        "{entries:?}"
    );
}
both_backends!(moves_are_refused_when_they_cannot_be_done);

/// The pause a move causes, for a tenant with 10,000 usage events (plus
/// their daily aggregates): printed, and bounded loosely.
async fn a_move_of_ten_thousand_rows_pauses_briefly(backend: &'static str) {
    use bulkhead_core::Money;
    use bulkhead_store::{UsageEvent, UsageKind, UsageWrite};
    let server = TestServer::start(backend).await;
    let t = server.tenant("big", json!({})).await;
    let ctx = OperatorCtx::local_cli().act_for(t.id.parse().unwrap());
    let now = time::OffsetDateTime::now_utc();
    let batch: Vec<UsageWrite> = (0..10_000)
        .map(|i| UsageWrite {
            ctx: ctx.clone(),
            event: UsageEvent {
                id: format!("ev-{i}"),
                ts: now - time::Duration::minutes(i % 2000),
                kind: UsageKind::Llm,
                name: format!("model-{}", i % 7),
                input_tokens: i,
                output_tokens: 1,
                cached_input_tokens: 0,
                quantity: 0,
                unit: None,
                cost: Money::from_nanos(i),
                run_id: None,
                agent_id: None,
                request_id: Some(format!("req-{i}")),
                attributes: json!({"i": i}),
            },
            settles: None,
        })
        .collect();
    server.store.write_usage(&batch, now).await.unwrap();
    let mut pauses = Vec::new();
    for tier in ["isolated", "shared"] {
        let report = move_to(&server, &t.id, tier).await;
        let events =
            report["tables"].as_array().unwrap().iter().find(|s| s["table"] == "usage_events").cloned();
        assert_eq!(events.unwrap()["rows"], 10_000);
        pauses.push((tier, report["pause_ms"].as_u64().unwrap(), report["total_ms"].as_u64().unwrap()));
    }
    eprintln!("{backend}: moving a tenant with 10,000 usage events (pause ms, total ms): {pauses:?}");
    assert!(pauses.iter().all(|(_, pause, _)| *pause < 30_000), "{pauses:?}");
    let usage = server.get("/v1/usage?group_by=kind", &t.admin_key).await;
    assert_eq!(usage.expect(200)["data"][0]["events"], 10_000);
}
both_backends!(a_move_of_ten_thousand_rows_pauses_briefly);

/// A tenant created isolated has its own store from the start; its data
/// never touches the shared store, and deleting it removes that store.
async fn isolated_tenants_are_served_from_their_own_store(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let op = server.operator_key.clone();
    let created = server.post("/v1/tenants", &op, json!({"name": "own-store", "tier": "isolated"})).await;
    let id = created.expect(201)["id"].as_str().unwrap().to_owned();
    let key = server.post(&format!("/v1/tenants/{id}/keys"), &op, json!({"name": "app"})).await;
    let key = key.expect(201)["secret"].as_str().unwrap().to_owned();
    let thread = server.post("/v1/threads", &key, json!({"metadata": {"n": 1}})).await;
    let thread = thread.expect(201)["id"].as_str().unwrap().to_owned();
    server.post(&format!("/v1/threads/{thread}/messages"), &key, json!({"content": "hi"})).await.expect(201);
    assert_eq!(rows_where(&server, &id, "messages").await, (0, 1));
    assert_eq!(rows_where(&server, &id, "threads").await, (0, 1));
    // Keys stay with the control plane (authentication needs them first).
    assert_eq!(rows_where(&server, &id, "api_keys").await.0, 1);
    server.call(Method::DELETE, &format!("/v1/tenants/{id}"), Some(&op), None).await.expect(204);
    let tenant: TenantId = id.parse().unwrap();
    assert!(bulkhead_store::testing::isolated_rows(&server.store_config, tenant).await.unwrap().is_empty());
}
both_backends!(isolated_tenants_are_served_from_their_own_store);
