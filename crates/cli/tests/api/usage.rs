//! Usage, budgets and limits through the API.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::TestServer;

fn llm(id: &str, model: &str, input: i64, output: i64) -> Value {
    json!({"id": id, "kind": "llm", "name": model, "input_tokens": input, "output_tokens": output})
}

async fn ingest(server: &TestServer, tenant: &str, events: Value) -> crate::common::Resp {
    let op = server.operator_key.clone();
    server
        .call_with(
            Method::POST,
            "/v1/usage/events",
            Some(&op),
            Some(json!({"events": events})),
            &[("x-tenant-id", tenant)],
        )
        .await
}

async fn usage_is_priced_summarised_and_exported(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("metered", json!({})).await;
    let agent = uuid::Uuid::now_v7().to_string();
    let mut with_agent = llm("e1", "gpt-4o", 1000, 500);
    with_agent["agent_id"] = json!(agent);
    let events = json!([
        with_agent,
        llm("e2", "gpt-4o-mini", 10_000, 1_000),
        {"id": "e3", "kind": "tool_call", "name": "calculator", "quantity": 2},
        {"id": "e4", "kind": "storage", "name": "knowledge", "quantity": 4096, "unit": "bytes", "cost_usd": "0.0001"},
    ]);
    let res = ingest(&server, &t.id, events.clone()).await;
    assert_eq!(res.expect(200), &json!({"recorded": 4, "duplicates": 0}));
    // Sending the same batch again records nothing new.
    assert_eq!(ingest(&server, &t.id, events).await.expect(200), &json!({"recorded": 0, "duplicates": 4}));

    let res = server.get("/v1/usage?group_by=model", &t.admin_key).await;
    let rows = res.expect(200)["data"].as_array().unwrap().clone();
    let cost = |model: &str| {
        rows.iter().find(|r| r["model"] == model).unwrap()["cost_usd"].as_str().unwrap().to_owned()
    };
    assert_eq!(cost("gpt-4o"), "0.0075"); // 1000 × $2.50/M + 500 × $10/M
    assert_eq!(cost("gpt-4o-mini"), "0.0021"); // 10000 × $0.15/M + 1000 × $0.60/M
    assert_eq!(cost("calculator"), "0.00"); // tool calls are free unless priced
    assert_eq!(cost("knowledge"), "0.0001");

    let by_agent = server.get("/v1/usage?group_by=agent,day", &t.admin_key).await;
    let by_agent = by_agent.expect(200)["data"].as_array().unwrap().clone();
    assert!(by_agent.iter().any(|r| r["agent_id"] == agent.as_str() && r["events"] == 1), "{by_agent:?}");
    let filtered = server.get(&format!("/v1/usage?agent_id={agent}"), &t.admin_key).await;
    assert_eq!(filtered.expect(200)["data"][0]["events"], 1);
    let total = server.get("/v1/usage", &t.admin_key).await;
    assert_eq!(total.expect(200)["data"][0]["cost_usd"], "0.0097");

    // The operator sees every tenant, grouped by tenant.
    let all = server.get("/v1/usage?group_by=tenant", &server.operator_key).await;
    assert_eq!(all.expect(200)["data"][0]["tenant_id"], t.id.as_str());

    let csv = server.get("/v1/usage/export?format=csv", &t.admin_key).await;
    assert!(csv.status.is_success());
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(lines.len(), 5, "header + 4 events: {}", csv.text);
    assert!(lines[0].starts_with("seq,tenant_id,event_id"));
    assert!(lines[1].contains(",e1,") && lines[1].contains(",0.0075,"), "{}", lines[1]);

    let ce = server.get("/v1/usage/export?format=cloudevents&from=2000-01-01", &t.admin_key).await;
    let events: Vec<Value> = ce.text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e["specversion"] == "1.0" && e["subject"] == t.id.as_str()));
    let empty =
        server.get("/v1/usage/export?format=cloudevents&from=2000-01-01&to=2000-01-02", &t.admin_key).await;
    assert_eq!(empty.text, "");
}
both_backends!(usage_is_priced_summarised_and_exported);

async fn bad_usage_input_is_refused(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("careless", json!({})).await;
    for (events, code) in [
        (json!([llm("n", "gpt-4o", -1, 0)]), "invalid_request"),
        (json!([llm("h", "gpt-4o", 1, 1_000_000_000_000i64)]), "invalid_request"),
        (json!([llm("u", "no-such-model", 1, 1)]), "unknown_model"),
        (json!([{"id": "", "kind": "llm", "name": "gpt-4o"}]), "invalid_request"),
        (json!([{"id": "k", "kind": "teleport", "name": "x"}]), "malformed_json"),
        (json!([{"id": "c", "kind": "storage", "name": "x", "cost_usd": "-1"}]), "invalid_request"),
        (json!([{"id": "c", "kind": "storage", "name": "x", "cost_usd": 0.5}]), "malformed_json"),
        (json!([]), "invalid_request"),
    ] {
        let res = ingest(&server, &t.id, events.clone()).await;
        assert_eq!(res.status.as_u16(), 400, "{events}: {}", res.text);
        assert_eq!(res.code(), code, "{events}: {}", res.text);
    }
    // A good event beside a bad one: nothing of the batch is written.
    let res = ingest(&server, &t.id, json!([llm("good", "gpt-4o", 1, 1), llm("bad", "nope", 1, 1)])).await;
    res.expect_error(400, "unknown_model");
    let many: Vec<Value> = (0..1001).map(|i| llm(&format!("m{i}"), "gpt-4o", 1, 1)).collect();
    ingest(&server, &t.id, json!(many)).await.expect_error(400, "invalid_request");
    let usage = server.get("/v1/usage", &t.admin_key).await;
    assert_eq!(usage.expect(200)["data"][0]["events"], 0, "nothing was recorded");

    for path in [
        "/v1/usage?from=yesterday",
        "/v1/usage?from=2026-02-01&to=2026-01-01",
        "/v1/usage?from=2026-01-01&to=2026-01-01",
        "/v1/usage?group_by=color",
        "/v1/usage?group_by=tenant",
        "/v1/usage?kind=teleport",
        "/v1/usage?agent_id=not-a-uuid",
        "/v1/usage/export?format=xml",
        "/v1/usage/export?group_by=day",
        "/v1/usage/export?to=31-12-2026",
    ] {
        server.get(path, &t.admin_key).await.expect_error(400, "invalid_request");
    }
    // Tenants cannot ingest; app keys cannot read usage.
    let res =
        server.call(Method::POST, "/v1/usage/events", Some(&t.admin_key), Some(json!({"events": []}))).await;
    res.expect_error(403, "forbidden");
    server.get("/v1/usage", &t.app_key).await.expect_error(403, "forbidden");
    // The operator must name the tenant to export.
    server.get("/v1/usage/export", &server.operator_key).await.expect_error(400, "invalid_request");
}
both_backends!(bad_usage_input_is_refused);

async fn budgets_track_spend_and_alerts(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("budgeted", json!({})).await;
    let op = server.operator_key.clone();
    let path = format!("/v1/tenants/{}/budget", t.id);
    let body = json!({"monthly_limit_usd": "0.01", "daily_limit_usd": null, "soft_alert_percent": 50});
    let set = server.call(Method::PUT, &path, Some(&op), Some(body)).await;
    assert_eq!(set.expect(200)["monthly_limit_usd"], "0.01");
    // $0.0075 spent: past the 50 % soft alert.
    ingest(&server, &t.id, json!([llm("e1", "gpt-4o", 1000, 500)])).await.expect(200);
    let own = server.get("/v1/budget", &t.admin_key).await;
    let own = own.expect(200).clone();
    assert_eq!(own["spent_month_usd"], "0.0075");
    assert_eq!(own["remaining_month_usd"], "0.0025");
    assert_eq!(own["alerts"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["alerts"][0]["kind"], "soft");
    for bad in [
        json!({"monthly_limit_usd": "-1"}),
        json!({"monthly_limit_usd": "ten"}),
        json!({"soft_alert_percent": 0}),
        json!({"soft_alert_percent": 101}),
        json!({"weekly_limit_usd": "1"}),
    ] {
        let res = server.call(Method::PUT, &path, Some(&op), Some(bad.clone())).await;
        assert_eq!(res.status.as_u16(), 400, "{bad}: {}", res.text);
    }
    server.call(Method::DELETE, &path, Some(&op), None).await.expect(204);
    let own = server.get("/v1/budget", &t.admin_key).await;
    assert!(own.expect(200)["monthly_limit_usd"].is_null());
}
both_backends!(budgets_track_spend_and_alerts);

#[tokio::test]
async fn requests_over_the_limit_get_429_with_retry_after() {
    let server = TestServer::start("sqlite").await;
    let t = server.tenant("chatty", json!({})).await;
    let other = server.tenant("quiet", json!({})).await;
    let path = format!("/v1/tenants/{}/limits", t.id);
    let set = server
        .call(Method::PUT, &path, Some(&server.operator_key), Some(json!({"requests_per_minute": 5})))
        .await;
    let set = set.expect(200).clone();
    assert_eq!(set["effective"]["requests_per_minute"], 5);
    assert!(set["effective"]["tokens_per_minute"].as_u64().unwrap() > 0, "tier defaults fill the rest");
    let mut ok = 0;
    let mut limited = None;
    for _ in 0..8 {
        let res = server
            .http
            .get(format!("{}/v1/tenant", server.base))
            .bearer_auth(&t.app_key)
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => ok += 1,
            429 => limited = Some(res),
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 5);
    let limited = limited.expect("the sixth request is refused");
    let retry: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "one request refills in 12 s: {retry}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["details"]["limit"], "requests_per_minute");
    // Other tenants and the operator are not held back.
    server.get("/v1/tenant", &other.app_key).await.expect(200);
    server.get("/v1/tenants", &server.operator_key).await.expect(200);
    for bad in [json!({"requests_per_minute": 0}), json!({"rpm": 5}), json!({"requests_per_minute": -1})] {
        let res = server.call(Method::PUT, &path, Some(&server.operator_key), Some(bad.clone())).await;
        assert_eq!(res.status.as_u16(), 400, "{bad}: {}", res.text);
    }
}
