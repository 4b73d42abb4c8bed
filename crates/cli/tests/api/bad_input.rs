//! Bad input gets a 4xx with a stable code, and nothing is half-written.

use bulkhead_core::config::ServerConfig;
use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::common::TestServer;

async fn bad_input_is_refused_and_writes_nothing(backend: &'static str) {
    let config = ServerConfig { max_body_bytes: 4096, ..Default::default() };
    let server = TestServer::start_with(backend, config).await;
    let t = server.tenant("acme", json!({})).await;
    let op = server.operator_key.clone();
    let before = server.stored_rows().await;

    let raw = |body: &'static str, content_type: &'static str| {
        server
            .http
            .post(format!("{}/v1/tenants", server.base))
            .bearer_auth(&op)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let check = |res: reqwest::Response, status: u16, code: &'static str| async move {
        let got = res.status().as_u16();
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!((got, body["error"]["code"].as_str().unwrap()), (status, code), "{body}");
    };
    check(raw("{\"name\": ", "application/json").await.unwrap(), 400, "malformed_json").await;
    check(raw("[1, 2]", "application/json").await.unwrap(), 400, "malformed_json").await;
    check(raw("{\"name\": 7}", "application/json").await.unwrap(), 400, "malformed_json").await;
    check(raw("{\"name\": \"ok-name\"}", "text/plain").await.unwrap(), 415, "unsupported_media_type").await;

    let oversized = json!({"name": "big", "metadata": {"blob": "x".repeat(10_000)}});
    server.post("/v1/tenants", &op, oversized).await.expect_error(413, "payload_too_large");

    for body in [
        json!({"name": "x"}),
        json!({"name": "Has Spaces"}),
        json!({"name": "-leading"}),
        json!({"name": "ok-name", "tier": "platinum"}),
        json!({"name": "ok-name", "metadata": [1]}),
        json!({"name": "ok-name", "unknown_field": true}),
        json!({}),
    ] {
        let res = server.post("/v1/tenants", &op, body.clone()).await;
        assert_eq!(res.status.as_u16(), 400, "{body}: {}", res.text);
        assert!(["invalid_request", "malformed_json"].contains(&res.code()), "{body}: {}", res.text);
    }
    server.post("/v1/tenants", &op, json!({"name": "acme"})).await.expect_error(409, "conflict");

    let tenant_path = format!("/v1/tenants/{}", t.id);
    let patch = |body| server.call(Method::PATCH, &tenant_path, Some(&op), Some(body));
    patch(json!({"name": "Nope"})).await.expect_error(400, "invalid_request");
    patch(json!({"status": "suspended"})).await.expect_error(400, "malformed_json");

    for body in [
        json!({"name": ""}),
        json!({"name": "k", "scope": "root"}),
        json!({"name": "k", "expires_at": "tomorrow"}),
    ] {
        let res = server.post("/v1/keys", &t.admin_key, body.clone()).await;
        assert_eq!(res.status.as_u16(), 400, "{body}: {}", res.text);
    }
    server
        .post("/v1/operator-keys", &op, json!({"name": "k", "scope": "tenant_app"}))
        .await
        .expect_error(400, "invalid_request");

    for path in [
        "/v1/tenants?limit=0",
        "/v1/tenants?limit=501",
        "/v1/tenants?limit=abc",
        "/v1/tenants?after=xyz",
        "/v1/tenants?bogus=1",
    ] {
        server.get(path, &op).await.expect_error(400, "invalid_request");
    }
    server.get(&format!("/v1/tenants/{}", uuid::Uuid::now_v7()), &op).await.expect_error(404, "not_found");
    server.get("/v1/no-such-thing", &op).await.expect_error(404, "not_found");
    server.call(Method::PUT, "/v1/tenants", Some(&op), None).await.expect_error(405, "method_not_allowed");

    // Nothing of the above was written.
    let after = server.stored_rows().await;
    let strip = |rows: Vec<(String, String)>| -> Vec<(String, String)> {
        // Key use times move on their own; compare everything else.
        rows.into_iter().filter(|(table, _)| table != "api_keys").collect()
    };
    assert_eq!(strip(before.clone()), strip(after.clone()));
    assert_eq!(
        before.iter().filter(|(t, _)| t == "api_keys").count(),
        after.iter().filter(|(t, _)| t == "api_keys").count()
    );
}
both_backends!(bad_input_is_refused_and_writes_nothing);
