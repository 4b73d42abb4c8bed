//! Keys: who gets 401 and who gets 403, and that secrets are never stored.

use bulkhead_core::keys::{self, KeyKind};
use bulkhead_core::tenancy::Scope;
use bulkhead_core::{OperatorCtx, TenantId};
use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::common::TestServer;

async fn unauthenticated_requests_get_401(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("acme", json!({})).await;

    server.call(Method::GET, "/v1/tenant", None, None).await.expect_error(401, "unauthorized");
    for bad in ["", "nonsense", "bh_tk_", "bh_tk_000000000000_AAAA", &format!("{}x", t.app_key)] {
        server.get("/v1/tenant", bad).await.expect_error(401, "unauthorized");
    }
    // Basic instead of Bearer.
    let res = server
        .http
        .get(format!("{}/v1/tenant", server.base))
        .basic_auth("u", Some(&t.app_key))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // Revoked: refused from then on.
    server.get("/v1/tenant", &t.app_key).await.expect(200);
    server
        .call(Method::DELETE, &format!("/v1/keys/{}", t.app_key_id), Some(&t.admin_key), None)
        .await
        .expect(200);
    server.get("/v1/tenant", &t.app_key).await.expect_error(401, "unauthorized");

    // Expired: refused. (The API refuses to create one, so plant it directly.)
    let op = OperatorCtx::local_cli();
    let ctx = op.act_for(t.id.parse::<TenantId>().unwrap());
    let new = keys::generate(KeyKind::Tenant);
    let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    server.store.create_tenant_key(&ctx, "expired", Scope::TenantApp, &new, Some(past)).await.unwrap();
    server.get("/v1/tenant", &new.secret).await.expect_error(401, "unauthorized");
    server
        .post("/v1/keys", &t.admin_key, json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}))
        .await
        .expect_error(400, "invalid_request");

    // A key that will expire later works now.
    let later = server
        .post("/v1/keys", &t.admin_key, json!({"name": "later", "expires_at": "2999-01-01T00:00:00Z"}))
        .await;
    let later = later.expect(201)["secret"].as_str().unwrap().to_owned();
    server.get("/v1/tenant", &later).await.expect(200);

    // A revoked operator key is refused too.
    let created = server.post("/v1/operator-keys", &server.operator_key, json!({"name": "second"})).await;
    let second = created.expect(201).clone();
    server.get("/v1/tenants", second["secret"].as_str().unwrap()).await.expect(200);
    let path = format!("/v1/operator-keys/{}", second["id"].as_str().unwrap());
    server.call(Method::DELETE, &path, Some(&server.operator_key), None).await.expect(200);
    server.get("/v1/tenants", second["secret"].as_str().unwrap()).await.expect_error(401, "unauthorized");
}
both_backends!(unauthenticated_requests_get_401);

async fn wrong_scope_and_suspended_tenants_get_403(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("acme", json!({})).await;
    // App scope may read itself but not manage keys.
    server.get("/v1/tenant", &t.app_key).await.expect(200);
    server.get("/v1/keys", &t.app_key).await.expect_error(403, "forbidden");
    server.post("/v1/keys", &t.app_key, json!({"name": "x"})).await.expect_error(403, "forbidden");
    // Tenant keys cannot reach operator routes.
    server.get("/v1/tenants", &t.admin_key).await.expect_error(403, "forbidden");
    server.post("/v1/tenants", &t.admin_key, json!({"name": "evil"})).await.expect_error(403, "forbidden");
    // Suspension refuses the tenant's keys with a specific code; resume restores them.
    let op = server.operator_key.clone();
    server.post(&format!("/v1/tenants/{}/suspend", t.id), &op, json!({})).await.expect(200);
    server.get("/v1/tenant", &t.app_key).await.expect_error(403, "tenant_suspended");
    server.get("/v1/keys", &t.admin_key).await.expect_error(403, "tenant_suspended");
    let resumed = server.post(&format!("/v1/tenants/{}/resume", t.id), &op, json!({})).await;
    assert_eq!(resumed.expect(200)["status"], "active");
    server.get("/v1/tenant", &t.app_key).await.expect(200);
}
both_backends!(wrong_scope_and_suspended_tenants_get_403);

async fn secrets_are_shown_once_and_never_stored(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("acme", json!({})).await;
    let created = server.post("/v1/keys", &t.admin_key, json!({"name": "shown once"})).await;
    let created = created.expect(201).clone();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap();
    assert!(secret.starts_with(prefix));

    // Never again in a response.
    for path in ["/v1/keys", &format!("/v1/keys/{}", created["id"].as_str().unwrap())] {
        let res = server.get(path, &t.admin_key).await;
        res.expect(200);
        assert!(!res.text.contains(&secret), "{path} shows the secret");
        assert!(res.text.contains(prefix), "{path} shows the prefix");
    }
    let listed = server.get(&format!("/v1/tenants/{}/keys", t.id), &server.operator_key).await;
    assert!(!listed.text.contains(&secret));

    // Nowhere in the store: not the key, not its secret part.
    // The random part after the visible prefix (base64url may itself contain `_`).
    let secret_part = &secret[prefix.len() + 1..];
    let rows = server.stored_rows().await;
    assert!(rows.iter().any(|(table, _)| table == "api_keys"));
    for secret in
        [secret.as_str(), secret_part, t.admin_key.as_str(), t.app_key.as_str(), server.operator_key.as_str()]
    {
        let hits: Vec<_> = rows.iter().filter(|(_, row)| row.contains(secret)).collect();
        assert!(hits.is_empty(), "secret found in stored rows: {hits:?}");
    }
    if backend == "sqlite" {
        // And not in the raw database files either (WAL included).
        for entry in std::fs::read_dir(&server.store_config.data_dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let found = bytes.windows(secret_part.len()).any(|w| w == secret_part.as_bytes());
            assert!(!found, "secret found in a database file");
        }
    }
}
both_backends!(secrets_are_shown_once_and_never_stored);

async fn key_use_is_recorded(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("acme", json!({})).await;
    server.get("/v1/tenant", &t.app_key).await.expect(200);
    // Recorded off the request path; poll briefly.
    for _ in 0..50 {
        let key = server.get(&format!("/v1/keys/{}", t.app_key_id), &t.admin_key).await;
        if !key.expect(200)["last_used_at"].is_null() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("last_used_at was never set");
}
both_backends!(key_use_is_recorded);
