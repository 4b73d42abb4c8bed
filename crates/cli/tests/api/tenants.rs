//! Tenant lifecycle through the API.

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::common::{TestServer, canary};

async fn tenant_lifecycle(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let op = server.operator_key.clone();
    let created = server
        .post("/v1/tenants", &op, json!({"name": "acme", "tier": "isolated", "metadata": {"plan": "gold"}}))
        .await;
    let t = created.expect(201).clone();
    assert_eq!(
        (t["name"].as_str(), t["tier"].as_str(), t["status"].as_str()),
        (Some("acme"), Some("isolated"), Some("active"))
    );
    assert_eq!(t["metadata"]["plan"], "gold");
    let id = t["id"].as_str().unwrap();

    let shown = server.get(&format!("/v1/tenants/{id}"), &op).await;
    assert_eq!(shown.expect(200)["name"], "acme");

    let patched = server
        .call(
            Method::PATCH,
            &format!("/v1/tenants/{id}"),
            Some(&op),
            Some(json!({"name": "acme-two", "tier": "dedicated"})),
        )
        .await;
    let patched = patched.expect(200);
    assert_eq!((patched["name"].as_str(), patched["tier"].as_str()), (Some("acme-two"), Some("dedicated")));
    assert_eq!(patched["metadata"]["plan"], "gold", "fields not in the patch stay");

    server.post("/v1/tenants", &op, json!({"name": "acme-two"})).await.expect_error(409, "conflict");
    server.post("/v1/tenants", &op, json!({"name": "other"})).await.expect(201);
    let rename = server
        .call(Method::PATCH, &format!("/v1/tenants/{id}"), Some(&op), Some(json!({"name": "other"})))
        .await;
    rename.expect_error(409, "conflict");

    let suspended = server.post(&format!("/v1/tenants/{id}/suspend"), &op, json!({})).await;
    assert_eq!(suspended.expect(200)["status"], "suspended");

    server.call(Method::DELETE, &format!("/v1/tenants/{id}"), Some(&op), None).await.expect(204);
    server.get(&format!("/v1/tenants/{id}"), &op).await.expect_error(404, "not_found");
    server
        .call(Method::DELETE, &format!("/v1/tenants/{id}"), Some(&op), None)
        .await
        .expect_error(404, "not_found");
    server.get("/v1/tenants/not-a-uuid", &op).await.expect_error(404, "not_found");
}
both_backends!(tenant_lifecycle);

async fn deleting_a_tenant_removes_all_of_its_data(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let marker = canary("doomed");
    let doomed = server.tenant("doomed", json!({"marker": marker})).await;
    let kept = server.tenant("kept", json!({})).await;
    server.post("/v1/keys", &doomed.admin_key, json!({"name": marker})).await.expect(201);
    server
        .call(Method::DELETE, &format!("/v1/tenants/{}", doomed.id), Some(&server.operator_key), None)
        .await
        .expect(204);

    let rows = server.stored_rows().await;
    // The platform's audit chain keeps the record that the tenant existed
    // and was deleted (its id and name) — and nothing of its data.
    let left: Vec<_> = rows
        .iter()
        .filter(|(t, r)| (r.contains(&doomed.id) && t != "platform_audit_entries") || r.contains(&marker))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Its keys no longer authenticate; the other tenant is untouched.
    server.get("/v1/tenant", &doomed.app_key).await.expect_error(401, "unauthorized");
    server.get("/v1/tenant", &kept.app_key).await.expect(200);
    assert!(rows.iter().any(|(_, r)| r.contains(&kept.id)));
}
both_backends!(deleting_a_tenant_removes_all_of_its_data);

async fn lists_paginate_in_creation_order(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let op = server.operator_key.clone();
    let mut made = Vec::new();
    for i in 0..5 {
        let t = server.post("/v1/tenants", &op, json!({"name": format!("t-{i}")})).await;
        made.push(t.expect(201)["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut path = "/v1/tenants?limit=2".to_owned();
    loop {
        let page = server.get(&path, &op).await;
        let page = page.expect(200).clone();
        seen.extend(page["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        if !page["has_more"].as_bool().unwrap() {
            assert!(page["next_after"].is_null());
            break;
        }
        path = format!("/v1/tenants?limit=2&after={}", page["next_after"].as_str().unwrap());
    }
    assert_eq!(seen, made);
}
both_backends!(lists_paginate_in_creation_order);

#[tokio::test]
async fn health_readiness_and_openapi() {
    let server = TestServer::start("sqlite").await;
    let health = server.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.expect(200)["status"], "ok");
    let ready = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.expect(200)["store"], "sqlite");

    let doc = server.call(Method::GET, "/openapi.json", None, None).await;
    let doc = doc.expect(200);
    assert_eq!(doc, &serde_json::to_value(bulkhead_server::openapi()).unwrap());
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"]),
        ("/v1/tenants", &["get", "post"]),
        ("/v1/tenants/{tenant_id}", &["get", "patch", "delete"]),
        ("/v1/tenants/{tenant_id}/suspend", &["post"]),
        ("/v1/tenants/{tenant_id}/resume", &["post"]),
        ("/v1/tenants/{tenant_id}/move", &["post"]),
        ("/v1/tenants/{tenant_id}/keys", &["get", "post"]),
        ("/v1/tenants/{tenant_id}/keys/{key_id}", &["delete"]),
        ("/v1/tenant", &["get"]),
        ("/v1/keys", &["get", "post"]),
        ("/v1/keys/{key_id}", &["get", "delete"]),
        ("/v1/operator-keys", &["get", "post"]),
        ("/v1/operator-keys/{key_id}", &["delete"]),
        ("/v1/usage", &["get"]),
        ("/v1/usage/export", &["get"]),
        ("/v1/usage/events", &["post"]),
        ("/v1/tenants/{tenant_id}/budget", &["get", "put", "delete"]),
        ("/v1/budget", &["get"]),
        ("/v1/tenants/{tenant_id}/limits", &["get", "put"]),
        ("/v1/limits", &["get"]),
        ("/v1/tenants/{tenant_id}/pricing", &["get", "put"]),
        ("/v1/model-config", &["get", "put"]),
        ("/v1/tenants/{tenant_id}/models", &["get", "put"]),
        ("/v1/provider-keys", &["get"]),
        ("/v1/provider-keys/{provider}", &["put", "delete"]),
        ("/v1/chat/completions", &["post"]),
        ("/v1/models", &["get"]),
        ("/metrics", &["get"]),
        ("/v1/agents", &["get", "post"]),
        ("/v1/agents/{agent_id}", &["get", "patch", "delete"]),
        ("/v1/agents/{agent_id}/versions", &["get"]),
        ("/v1/threads", &["get", "post"]),
        ("/v1/threads/{thread_id}", &["get", "delete"]),
        ("/v1/threads/{thread_id}/messages", &["get", "post"]),
        ("/v1/threads/{thread_id}/runs", &["get", "post"]),
        ("/v1/runs/{run_id}", &["get"]),
        ("/v1/runs/{run_id}/steps", &["get"]),
        ("/v1/runs/{run_id}/cancel", &["post"]),
        ("/v1/runs/{run_id}/events", &["get"]),
        ("/v1/audit", &["get"]),
        ("/v1/audit/verify", &["get"]),
        ("/v1/knowledge-bases", &["get", "post"]),
        ("/v1/knowledge-bases/{kb_id}", &["get", "delete"]),
        ("/v1/knowledge-bases/{kb_id}/documents", &["get", "post"]),
        ("/v1/knowledge-bases/{kb_id}/documents/{doc_id}", &["get", "delete"]),
        ("/v1/knowledge-bases/{kb_id}/search", &["post"]),
        ("/v1/embeddings", &["post"]),
        ("/v1/tools", &["get", "post"]),
        ("/v1/tools/{tool_id}", &["get", "put", "delete"]),
        ("/v1/mcp-servers", &["get", "post"]),
        ("/v1/mcp-servers/{server_id}", &["get", "delete"]),
        ("/v1/mcp-servers/{server_id}/tools", &["get"]),
        ("/v1/tool-settings", &["get", "put"]),
        ("/v1/secrets", &["get"]),
        ("/v1/secrets/{name}", &["put", "delete"]),
        ("/v1/sandbox/executions", &["post"]),
        ("/v1/sandbox/policy", &["get"]),
        ("/v1/tenants/{tenant_id}/sandbox", &["get", "put"]),
        ("/v1/overview", &["get"]),
        ("/v1/cells", &["get", "post"]),
        ("/v1/cells/{name}", &["get", "delete"]),
        ("/v1/tenants/{tenant_id}/key-records", &["put"]),
        ("/v1/tenants/import", &["post"]),
        ("/v1/tenants/{tenant_id}/checksums", &["get"]),
        ("/v1/tenants/{tenant_id}/export", &["post", "delete"]),
        ("/v1/master-key/check", &["post"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} missing from /openapi.json"
            );
        }
    }
    assert_eq!(paths.len(), 67, "a route was added: list it above");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // Every response carries a request id.
    let res = server.http.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert!(res.headers().get("x-request-id").is_some());
}
