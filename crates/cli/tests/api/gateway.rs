//! The OpenAI-compatible gateway: per-tenant resolution, allow lists,
//! budgets, fallbacks, bring-your-own-key secrecy, streaming and metering of
//! streams cut short — against a fake upstream that speaks OpenAI's wire
//! format on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{TestServer, captured_logs};

/// What the fake upstream saw.
#[derive(Default)]
struct Seen {
    models: Vec<String>,
    auth: Vec<String>,
}

#[derive(Clone)]
struct Upstream {
    seen: Arc<Mutex<Seen>>,
    /// Answer 500 to everything.
    failing: bool,
    /// Pause between streamed chunks.
    pace: Duration,
}

async fn fake_chat(State(up): State<Upstream>, headers: HeaderMap, body: axum::Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    {
        let mut seen = up.seen.lock().unwrap();
        seen.models.push(model.clone());
        seen.auth.push(headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned());
    }
    if up.failing {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "upstream exploded", "type": "server_error"}})),
        )
            .into_response();
    }
    if body["stream"].as_bool() == Some(true) {
        let pace = up.pace;
        let words: Vec<String> = (0..20).map(|i| format!("word{i} ")).collect();
        let stream = futures::stream::unfold(0usize, move |i| {
            let words = words.clone();
            async move {
                if i > words.len() + 1 {
                    return None;
                }
                tokio::time::sleep(pace).await;
                let line = if i < words.len() {
                    let c = json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": {"content": words[i]}, "finish_reason": null}]});
                    format!("data: {c}\n\n")
                } else if i == words.len() {
                    let c = json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}});
                    format!("data: {c}\n\n")
                } else {
                    "data: [DONE]\n\n".to_owned()
                };
                Some((Ok::<_, std::convert::Infallible>(line), i + 1))
            }
        });
        return ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response();
    }
    axum::Json(json!({
        "id": "up-1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("upstream {model} says hi")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
    }))
    .into_response()
}

async fn start_upstream(failing: bool, pace: Duration) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(fake_chat))
        .with_state(Upstream { seen: seen.clone(), failing, pace });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

/// A server whose `openai` provider is the fake upstream, with a `flaky`
/// provider that always fails and a catalog entry for a model it serves.
async fn gateway_server(
    backend: &str,
    pace: Duration,
) -> (TestServer, Arc<Mutex<Seen>>, Arc<Mutex<Seen>>, tempfile::TempDir) {
    let (url, seen) = start_upstream(false, pace).await;
    let (flaky_url, flaky_seen) = start_upstream(true, pace).await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("extra.toml");
    std::fs::write(
        &catalog,
        "[models.\"flaky-model\"]\nprovider = \"flaky\"\ninput_per_mtok = \"1\"\noutput_per_mtok = \"1\"\n\
         cached_input_per_mtok = \"0\"\ncontext_window = 1000\nmax_output = 100\n",
    )
    .unwrap();
    let mut config = bulkhead_core::config::Config::default();
    let openai = config.models.providers.get_mut("openai").unwrap();
    openai.base_url = url;
    openai.max_retries = 0;
    let flaky = bulkhead_core::config::ProviderSettings {
        kind: "openai".into(),
        base_url: flaky_url,
        api_key: None,
        timeout_secs: 10,
        max_retries: 0,
    };
    config.models.providers.insert("flaky".into(), flaky);
    config.metering.catalog_file = Some(catalog);
    (TestServer::start_full(backend, config).await, seen, flaky_seen, dir)
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

async fn usage_events(server: &TestServer, key: &str) -> Vec<Value> {
    let csv = server.get("/v1/usage/export?format=cloudevents", key).await;
    csv.text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn same_task_two_tenants_two_models(backend: &'static str) {
    let (server, seen, _, _dir) = gateway_server(backend, Duration::ZERO).await;
    let a = server.tenant("tenant-a", json!({})).await;
    let b = server.tenant("tenant-b", json!({})).await;
    for (t, model) in [(&a, "builtin/scripted"), (&b, "gpt-4o-mini")] {
        let cfg = json!({"tasks": {"support": model}, "aliases": {"house": model}});
        server.call(Method::PUT, "/v1/model-config", Some(&t.admin_key), Some(cfg)).await.expect(200);
    }
    let ra = server.post("/v1/chat/completions", &a.app_key, chat("task:support", "hello")).await;
    let ra = ra.expect(200).clone();
    assert_eq!(ra["object"], "chat.completion");
    assert_eq!(ra["choices"][0]["message"]["content"], "You said: hello");
    assert!(ra["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let rb = server.post("/v1/chat/completions", &b.app_key, chat("house", "hello")).await;
    assert_eq!(rb.expect(200)["choices"][0]["message"]["content"], "upstream gpt-4o-mini says hi");
    assert_eq!(seen.lock().unwrap().models, vec!["gpt-4o-mini"], "only B's call reached the upstream");

    // Each call is metered at its model's price: B's 1000 in + 500 out of gpt-4o-mini.
    let eb = usage_events(&server, &b.admin_key).await;
    assert_eq!(eb.len(), 1);
    assert_eq!(eb[0]["data"]["name"], "gpt-4o-mini");
    assert_eq!(eb[0]["data"]["cost_usd"], "0.00045");
    assert_eq!(eb[0]["data"]["attributes"]["requested_model"], "house");
    let ea = usage_events(&server, &a.admin_key).await;
    assert_eq!(ea.len(), 1);
    assert_eq!(ea[0]["data"]["name"], "builtin/scripted");

    // /v1/models lists the catalog and the tenant's aliases.
    let models = server.get("/v1/models", &b.app_key).await;
    let ids: Vec<String> = models.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&"house".to_owned()) && ids.contains(&"gpt-4o".to_owned()), "{ids:?}");
}
both_backends!(same_task_two_tenants_two_models);

async fn allow_lists_budgets_and_bad_requests(backend: &'static str) {
    let (server, _, _, _dir) = gateway_server(backend, Duration::ZERO).await;
    let t = server.tenant("strict", json!({})).await;
    let op = server.operator_key.clone();
    let allow = json!({"allowed": ["gpt-4o-mini"]});
    server
        .call(Method::PUT, &format!("/v1/tenants/{}/models", t.id), Some(&op), Some(allow))
        .await
        .expect(200);
    server
        .post("/v1/chat/completions", &t.app_key, chat("builtin/scripted", "hi"))
        .await
        .expect_error(403, "model_not_allowed");
    server
        .post("/v1/chat/completions", &t.app_key, chat("no-such-model", "hi"))
        .await
        .expect_error(400, "unknown_model");
    let ids: Vec<Value> = server.get("/v1/models", &t.app_key).await.body["data"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 1, "only the allowed model is listed: {ids:?}");
    // The tenant cannot route around the allow list with its own config.
    let sneaky = json!({"aliases": {"cheap": "builtin/scripted"}});
    server
        .call(Method::PUT, "/v1/model-config", Some(&t.admin_key), Some(sneaky))
        .await
        .expect_error(403, "model_not_allowed");

    // A budget smaller than the worst case of one call: refused up front, nothing spent.
    let budget = json!({"monthly_limit_usd": "0.000001"});
    server
        .call(Method::PUT, &format!("/v1/tenants/{}/budget", t.id), Some(&op), Some(budget))
        .await
        .expect(200);
    let res = server.post("/v1/chat/completions", &t.app_key, chat("gpt-4o-mini", "hi")).await;
    res.expect_error(402, "budget_exceeded");
    assert_eq!(res.body["error"]["details"]["period"], "month");
    assert!(usage_events(&server, &t.admin_key).await.is_empty());

    for bad in [
        json!({"model": "gpt-4o-mini", "messages": []}),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": 3}),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 9}),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "tool", "content": "x"}]}),
        json!({"messages": [{"role": "user", "content": "x"}]}),
    ] {
        let res = server.post("/v1/chat/completions", &t.app_key, bad.clone()).await;
        assert_eq!(res.status.as_u16(), 400, "{bad}: {}", res.text);
    }
}
both_backends!(allow_lists_budgets_and_bad_requests);

#[tokio::test]
async fn a_failing_provider_falls_back_to_the_next_model() {
    let (server, _, flaky_seen, _dir) = gateway_server("sqlite", Duration::ZERO).await;
    let t = server.tenant("resilient", json!({})).await;
    let cfg = json!({"fallbacks": {"flaky-model": ["builtin/scripted"]}});
    server.call(Method::PUT, "/v1/model-config", Some(&t.admin_key), Some(cfg)).await.expect(200);
    let res = server.post("/v1/chat/completions", &t.app_key, chat("flaky-model", "still there?")).await;
    assert_eq!(res.expect(200)["choices"][0]["message"]["content"], "You said: still there?");
    assert_eq!(flaky_seen.lock().unwrap().models.len(), 1, "the primary was tried once");
    let events = usage_events(&server, &t.admin_key).await;
    assert_eq!(events.len(), 1, "only the call that answered is billed: {events:?}");
    assert_eq!(events[0]["data"]["name"], "builtin/scripted");
    let budget = server.get("/v1/budget", &t.admin_key).await;
    assert_eq!(budget.expect(200)["reserved_usd"], "0.00", "the failed attempt's reservation was released");
    // Without a fallback the provider's failure is a clean 503.
    let res = server.post("/v1/chat/completions", &t.app_key, chat("flaky-model", "x")).await;
    assert_eq!(res.status.as_u16(), 200, "fallbacks apply every time");
    let other = server.tenant("unlucky", json!({})).await;
    server
        .post("/v1/chat/completions", &other.app_key, chat("flaky-model", "x"))
        .await
        .expect_error(503, "unavailable");
}

#[tokio::test]
async fn a_tenants_provider_key_reaches_only_its_provider() {
    let (server, seen, _, _dir) = gateway_server("sqlite", Duration::ZERO).await;
    let a = server.tenant("byok", json!({})).await;
    let b = server.tenant("platform-key", json!({})).await;
    let canary = format!("sk-canary-{}", uuid::Uuid::now_v7().simple());
    let put = server
        .call(Method::PUT, "/v1/provider-keys/openai", Some(&a.admin_key), Some(json!({"api_key": canary})))
        .await;
    put.expect(200);
    assert!(!put.text.contains(&canary));
    let listed = server.get("/v1/provider-keys", &a.admin_key).await;
    assert_eq!(listed.expect(200)["data"][0]["provider"], "openai");
    assert!(!listed.text.contains(&canary));
    server.get("/v1/provider-keys", &b.admin_key).await.expect(200);
    assert_eq!(server.get("/v1/provider-keys", &b.admin_key).await.body["data"].as_array().unwrap().len(), 0);

    let mut responses = Vec::new();
    for t in [&a, &b] {
        responses.push(server.post("/v1/chat/completions", &t.app_key, chat("gpt-4o-mini", "hi")).await);
        responses.push(server.post("/v1/chat/completions", &t.app_key, json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await);
    }
    let auth = seen.lock().unwrap().auth.clone();
    assert_eq!(auth.len(), 4);
    assert_eq!(auth[0], format!("Bearer {canary}"), "A's calls carry A's key");
    assert_eq!(auth[1], format!("Bearer {canary}"));
    assert!(auth[2..].iter().all(|h| !h.contains(&canary)), "B's calls never carry A's key: {auth:?}");

    // The key is in no response, no stored row and no log line.
    for r in &responses {
        assert!(!r.text.contains(&canary));
    }
    for (table, row) in server.stored_rows().await {
        assert!(!row.contains(&canary), "plaintext key in {table}");
    }
    assert!(!captured_logs().contains(&canary), "the key was logged");
    server
        .call(Method::PUT, "/v1/provider-keys/builtin", Some(&a.admin_key), Some(json!({"api_key": "x"})))
        .await
        .expect_error(400, "invalid_request");
    server
        .call(Method::PUT, "/v1/provider-keys/nope", Some(&a.admin_key), Some(json!({"api_key": "x"})))
        .await
        .expect_error(400, "invalid_request");
    server.call(Method::DELETE, "/v1/provider-keys/openai", Some(&a.admin_key), None).await.expect(204);
    server
        .call(Method::DELETE, "/v1/provider-keys/openai", Some(&a.admin_key), None)
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn streams_are_metered_also_when_the_client_leaves() {
    let (server, _, _, _dir) = gateway_server("sqlite", Duration::from_millis(50)).await;
    let t = server.tenant("streamer", json!({})).await;
    // A whole stream: chunks, the usage chunk asked for, [DONE]; metered with the provider's usage.
    let body = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "count"}]});
    let res = server.post("/v1/chat/completions", &t.app_key, body.clone()).await;
    let lines: Vec<&str> = res.text.lines().filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(*lines.last().unwrap(), "data: [DONE]");
    let usage_chunk: Value =
        serde_json::from_str(lines[lines.len() - 2].trim_start_matches("data: ")).unwrap();
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 40);
    let text: String = lines[..lines.len() - 2]
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim_start_matches("data: ")).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert!(text.starts_with("word0 word1"), "{text}");
    // A client that goes away after the first chunks: still settled, from what was sent.
    let mut res = server
        .http
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(&t.app_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let first = res.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    drop(res);
    let mut events = Vec::new();
    for _ in 0..100 {
        events = usage_events(&server, &t.admin_key).await;
        if events.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(events.len(), 2, "the cut stream was settled: {events:?}");
    assert_eq!(events[0]["data"]["output_tokens"], 40);
    assert_eq!(events[1]["data"]["attributes"]["outcome"], "client_disconnected");
    assert!(events[1]["data"]["output_tokens"].as_i64().unwrap() < 40);
    let budget = server.get("/v1/budget", &t.admin_key).await;
    assert_eq!(budget.expect(200)["reserved_usd"], "0.00");
}

/// The official `openai` Python SDK, unchanged, against the endpoint: chat,
/// streaming, tool calls, and the errors for a model not allowed and a
/// budget exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_works_unchanged() {
    let python = match std::env::var("BULKHEAD_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ if std::env::var("BULKHEAD_TEST_SKIP_PYTHON").as_deref() == Ok("1") => return,
        _ => panic!(
            "the SDK test needs BULKHEAD_TEST_PYTHON (a python with `openai` installed): run `bash scripts/test.sh`, \\
             or `scripts/pyenv.sh` and export its output, or set BULKHEAD_TEST_SKIP_PYTHON=1 to skip deliberately"
        ),
    };
    let server = TestServer::start("sqlite").await;
    let ok = server.tenant("sdk-user", json!({})).await;
    let strict = server.tenant("sdk-strict", json!({})).await;
    let broke = server.tenant("sdk-broke", json!({})).await;
    let op = server.operator_key.clone();
    server
        .call(
            Method::PUT,
            &format!("/v1/tenants/{}/models", strict.id),
            Some(&op),
            Some(json!({"allowed": ["gpt-4o"]})),
        )
        .await
        .expect(200);
    server
        .call(
            Method::PUT,
            &format!("/v1/tenants/{}/budget", broke.id),
            Some(&op),
            Some(json!({"monthly_limit_usd": "0.000001"})),
        )
        .await
        .expect(200);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/openai_sdk.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("BASE_URL", format!("{}/v1", server.base))
        .env("KEY", &ok.app_key)
        .env("STRICT_KEY", &strict.app_key)
        .env("BROKE_KEY", &broke.app_key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK script failed:\n{stdout}\n{stderr}");
    for check in ["chat ok", "stream ok", "tools ok", "models ok", "not allowed ok", "budget ok"] {
        assert!(stdout.contains(check), "missing `{check}`:\n{stdout}");
    }
}
