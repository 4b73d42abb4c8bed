//! Agents, threads and runs end to end: the loop with tools, limits, cancel,
//! timeout, budget stops, restart recovery, per-tenant concurrency caps,
//! fair scheduling, and context isolation — with the scripted model, and
//! with a recording fake upstream that speaks OpenAI's wire format.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{TestServer, TestTenant};

/// A recording upstream: every request's key and body; answers after `delay`.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    delay: Duration,
}

async fn record(State(r): State<Recorder>, headers: HeaderMap, body: axum::Json<Value>) -> impl IntoResponse {
    let key = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    r.seen.lock().unwrap().push((key, body.0.clone()));
    tokio::time::sleep(r.delay).await;
    axum::Json(json!({
        "id": "up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "noted"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }))
}

async fn recorder(delay: Duration) -> (String, Recorder) {
    let r = Recorder { seen: Arc::default(), delay };
    let app =
        axum::Router::new().route("/v1/chat/completions", axum::routing::post(record)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), r)
}

async fn server_with_upstream(backend: &str, delay: Duration, workers: usize) -> (TestServer, Recorder) {
    let (url, rec) = recorder(delay).await;
    let mut config = bulkhead_core::config::Config::default();
    let openai = config.models.providers.get_mut("openai").unwrap();
    openai.base_url = url;
    openai.max_retries = 0;
    config.agents.workers = workers;
    (TestServer::start_full(backend, config).await, rec)
}

async fn agent(server: &TestServer, t: &TestTenant, name: &str, spec: Value) -> String {
    let res = server.post("/v1/agents", &t.admin_key, json!({"name": name, "spec": spec})).await;
    res.expect(201)["id"].as_str().unwrap().to_owned()
}

async fn thread(server: &TestServer, t: &TestTenant) -> String {
    server.post("/v1/threads", &t.app_key, json!({})).await.expect(201)["id"].as_str().unwrap().to_owned()
}

async fn run(server: &TestServer, t: &TestTenant, thread: &str, body: Value) -> Value {
    let res = server.post(&format!("/v1/threads/{thread}/runs"), &t.app_key, body).await;
    assert!(res.status.is_success(), "{}", res.text);
    res.body
}

async fn wait_status(server: &TestServer, t: &TestTenant, run: &str, done: impl Fn(&str) -> bool) -> Value {
    for _ in 0..400 {
        let r = server.get(&format!("/v1/runs/{run}"), &t.app_key).await;
        if done(r.body["status"].as_str().unwrap_or("")) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {run} never got there");
}

async fn the_loop_calls_tools_and_records_everything(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("looper", json!({})).await;
    let spec = json!({"system_prompt": "You help {{customer}}.", "variables": {"customer": "someone"},
                      "model": "builtin/scripted", "tools": ["calculator", "current_time"]});
    let agent_id = agent(&server, &t, "math", spec).await;
    let th = thread(&server, &t).await;
    let done = run(
        &server,
        &t,
        &th,
        json!({"agent_id": agent_id, "mode": "sync", "variables": {"customer": "Ada"},
        "message": "call calculator {\"expression\": \"6*7\"}"}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["output"]["content"].as_str().unwrap().contains("42"), "{done}");
    assert_eq!(done["agent_version"], 1);
    let run_id = done["id"].as_str().unwrap();

    let steps = server.get(&format!("/v1/runs/{run_id}/steps"), &t.app_key).await;
    let kinds: Vec<String> = steps.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["model_call", "tool_call", "model_call"]);
    let msgs = server.get(&format!("/v1/threads/{th}/messages"), &t.app_key).await;
    let roles: Vec<String> = msgs.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);

    // Usage: two model calls and the run's wall time, all carrying the run id.
    let events: Vec<Value> = server
        .get("/v1/usage/export?format=cloudevents", &t.admin_key)
        .await
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let for_run: Vec<&Value> = events.iter().filter(|e| e["data"]["run_id"] == run_id).collect();
    assert_eq!(for_run.iter().filter(|e| e["data"]["kind"] == "llm").count(), 2);
    assert_eq!(for_run.iter().filter(|e| e["data"]["kind"] == "run_time").count(), 1);
    assert!(for_run.iter().all(|e| e["data"]["agent_id"] == agent_id.as_str()));

    // A new spec is a new version; the old one stays; runs record theirs.
    let patch = json!({"spec": {"system_prompt": "Be brief.", "model": "builtin/scripted"}});
    let updated =
        server.call(Method::PATCH, &format!("/v1/agents/{agent_id}"), Some(&t.admin_key), Some(patch)).await;
    assert_eq!(updated.expect(200)["version"], 2);
    let versions = server.get(&format!("/v1/agents/{agent_id}/versions"), &t.app_key).await;
    assert_eq!(versions.expect(200)["data"].as_array().unwrap().len(), 2);
    let again =
        run(&server, &t, &th, json!({"agent_id": agent_id, "mode": "sync", "message": "hello"})).await;
    assert_eq!((again["status"].as_str(), again["agent_version"].as_i64()), (Some("completed"), Some(2)));

    // Streaming: events up to run.completed.
    let res = server
        .post(
            &format!("/v1/threads/{th}/runs"),
            &t.app_key,
            json!({"agent_id": agent_id, "mode": "stream", "message": "stream"}),
        )
        .await;
    let names: Vec<&str> = res.text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names.first(), Some(&"run.created"));
    assert_eq!(names.last(), Some(&"run.completed"), "{names:?}");
    assert!(names.contains(&"message.delta"));

    // Bad input.
    let bad_specs = [
        json!({"tools": ["no-such-tool"]}),
        json!({"model": "no-such-model"}),
        json!({"system_prompt": "{{ bad-var }}"}),
        json!({"limits": {"max_steps": 0}}),
    ];
    for (i, spec) in bad_specs.into_iter().enumerate() {
        let res =
            server.post("/v1/agents", &t.admin_key, json!({"name": format!("bad-{i}"), "spec": spec})).await;
        assert_eq!(res.status.as_u16(), 400, "{}", res.text);
    }
    server.post("/v1/agents", &t.admin_key, json!({"name": "math"})).await.expect_error(409, "conflict");
    let missing_var = run(&server, &t, &th, json!({"agent_id": agent_id, "mode": "sync"})).await;
    assert_eq!(missing_var["status"], "completed", "v2 needs no variables");
    server
        .post(&format!("/v1/threads/{th}/runs"), &t.app_key, json!({"agent_id": agent_id, "mode": "later"}))
        .await
        .expect_error(400, "invalid_request");
    server
        .post(&format!("/v1/threads/{th}/runs"), &t.app_key, json!({"agent_id": uuid::Uuid::now_v7()}))
        .await
        .expect_error(404, "not_found");
}
both_backends!(the_loop_calls_tools_and_records_everything);

#[tokio::test]
async fn limits_stop_runs_max_steps_timeout_budget_and_cancel() {
    let (server, _rec) = server_with_upstream("sqlite", Duration::from_millis(1500), 4).await;
    let t = server.tenant("limited", json!({})).await;
    let th = thread(&server, &t).await;
    // Max steps: a tool call uses up the one step.
    let one = agent(
        &server,
        &t,
        "one-step",
        json!({"model": "builtin/scripted", "tools": ["calculator"], "limits": {"max_steps": 1}}),
    )
    .await;
    let r = run(
        &server,
        &t,
        &th,
        json!({"agent_id": one, "mode": "sync", "message": "call calculator {\"expression\": \"1+1\"}"}),
    )
    .await;
    assert_eq!((r["status"].as_str(), r["error"].as_str()), (Some("failed"), Some("max_steps")), "{r}");
    // Timeout: a slow model and a one-second limit.
    let slow =
        agent(&server, &t, "slow", json!({"model": "gpt-4o-mini", "limits": {"timeout_secs": 1}})).await;
    let r = run(&server, &t, &th, json!({"agent_id": slow, "mode": "sync", "message": "hi"})).await;
    assert_eq!(r["status"], "expired", "{r}");
    // Cancel while running.
    let patient = agent(&server, &t, "patient", json!({"model": "gpt-4o-mini"})).await;
    let queued = run(&server, &t, &th, json!({"agent_id": patient, "message": "hi"})).await;
    let id = queued["id"].as_str().unwrap().to_owned();
    wait_status(&server, &t, &id, |s| s == "running").await;
    let cancelled = server.post(&format!("/v1/runs/{id}/cancel"), &t.app_key, json!({})).await;
    assert_eq!(cancelled.expect(200)["cancel_requested"], true);
    let end = wait_status(&server, &t, &id, |s| s != "running" && s != "queued").await;
    assert_eq!(end["status"], "cancelled", "{end}");
    // Budget: the worst case of a call does not fit.
    let op = server.operator_key.clone();
    server
        .call(
            Method::PUT,
            &format!("/v1/tenants/{}/budget", t.id),
            Some(&op),
            Some(json!({"monthly_limit_usd": "0.0000001"})),
        )
        .await
        .expect(200);
    let r = run(&server, &t, &th, json!({"agent_id": patient, "mode": "sync", "message": "hi"})).await;
    assert_eq!((r["status"].as_str(), r["error"].as_str()), (Some("failed"), Some("budget_exceeded")), "{r}");
}

#[tokio::test]
async fn a_tenants_concurrency_cap_holds_under_load() {
    let (server, _rec) = server_with_upstream("sqlite", Duration::from_millis(200), 8).await;
    let t = server.tenant("capped", json!({})).await;
    server
        .call(
            Method::PUT,
            &format!("/v1/tenants/{}/limits", t.id),
            Some(&server.operator_key),
            Some(json!({"concurrent_runs": 2})),
        )
        .await
        .expect(200);
    let a = agent(&server, &t, "a", json!({"model": "gpt-4o-mini"})).await;
    let th = thread(&server, &t).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(run(&server, &t, &th, json!({"agent_id": a})).await["id"].as_str().unwrap().to_owned());
    }
    let mut max_running = 0;
    let started = Instant::now();
    loop {
        let runs = server.get(&format!("/v1/threads/{th}/runs"), &t.app_key).await;
        let statuses: Vec<String> = runs.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .collect();
        max_running = max_running.max(statuses.iter().filter(|s| *s == "running").count());
        if statuses.iter().all(|s| s == "completed") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(max_running <= 2, "the cap of 2 was passed: {max_running} running at once");
    assert_eq!(max_running, 2, "the cap should also be used");
}

#[tokio::test]
async fn one_flooding_tenant_does_not_starve_the_others() {
    // Two worker slots; the flooder queues 50× the runs of each of four others.
    let (server, _rec) = server_with_upstream("sqlite", Duration::from_millis(20), 2).await;
    let op = server.operator_key.clone();
    let flood = server.tenant("flood", json!({})).await;
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(server.tenant(&format!("calm-{i}"), json!({})).await);
    }
    let mut queued = Vec::new();
    for t in std::iter::once(&flood).chain(others.iter()) {
        server
            .call(
                Method::PUT,
                &format!("/v1/tenants/{}/limits", t.id),
                Some(&op),
                Some(json!({"requests_per_minute": 100000})),
            )
            .await
            .expect(200);
        let a = agent(&server, t, "a", json!({"model": "gpt-4o-mini"})).await;
        let th = thread(&server, t).await;
        queued.push((t, a, th));
    }
    let wait_of = |r: &Value| {
        let parse = |k: &str| {
            time::OffsetDateTime::parse(
                r[k].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        (parse("started_at") - parse("created_at")).as_seconds_f64()
    };
    // Baseline: the others alone.
    let mut alone = Vec::new();
    for (t, a, th) in &queued[1..] {
        for _ in 0..2 {
            alone.push((
                *t,
                run(&server, t, th, json!({"agent_id": a})).await["id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let mut alone_waits = Vec::new();
    for (t, id) in &alone {
        alone_waits.push(wait_of(&wait_status(&server, t, id, |s| s == "completed").await));
    }
    alone_waits.sort_by(f64::total_cmp);
    // The flood arrives first, then the others.
    let (f, fa, fth) = &queued[0];
    let mut flood_ids = Vec::new();
    for _ in 0..100 {
        flood_ids
            .push(run(&server, f, fth, json!({"agent_id": fa})).await["id"].as_str().unwrap().to_owned());
    }
    let mut calm_ids = Vec::new();
    for (t, a, th) in &queued[1..] {
        for _ in 0..2 {
            calm_ids.push((
                *t,
                run(&server, t, th, json!({"agent_id": a})).await["id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let mut calm_waits = Vec::new();
    for (t, id) in &calm_ids {
        calm_waits.push(wait_of(&wait_status(&server, t, id, |s| s == "completed").await));
    }
    let mut flood_waits = Vec::new();
    for id in &flood_ids {
        flood_waits.push(wait_of(&wait_status(&server, f, id, |s| s == "completed").await));
    }
    calm_waits.sort_by(f64::total_cmp);
    flood_waits.sort_by(f64::total_cmp);
    let p = |v: &[f64], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    eprintln!(
        "fairness: others' queue wait alone p50 {:.3} s, max {:.3} s; beside a 50x flood p50 {:.3} s, max {:.3} s; \
         flooder's p50 {:.3} s, max {:.3} s",
        p(&alone_waits, 0.5),
        p(&alone_waits, 1.0),
        p(&calm_waits, 0.5),
        p(&calm_waits, 1.0),
        p(&flood_waits, 0.5),
        p(&flood_waits, 1.0)
    );
    // Round robin: the others are served within a few rounds, long before the flood drains.
    assert!(p(&calm_waits, 1.0) < p(&flood_waits, 0.5), "others waited longer than half the flood");
    assert!(p(&calm_waits, 1.0) < p(&flood_waits, 1.0) / 4.0, "others waited too long");
}

#[tokio::test]
async fn no_canary_of_a_ever_reaches_a_prompt_for_b() {
    let (server, rec) = server_with_upstream("sqlite", Duration::ZERO, 8).await;
    let a = server.tenant("alpha", json!({})).await;
    let b = server.tenant("beta", json!({})).await;
    let canary = crate::common::canary("context");
    let mut work = Vec::new();
    for (t, key) in [(&a, "sk-alpha"), (&b, "sk-beta")] {
        server
            .call(Method::PUT, "/v1/provider-keys/openai", Some(&t.admin_key), Some(json!({"api_key": key})))
            .await
            .expect(200);
        let secret = if t.id == a.id { canary.as_str() } else { "nothing special" };
        let ag = agent(
            &server,
            t,
            "helper",
            json!({"model": "gpt-4o-mini", "system_prompt": format!("Context: {secret}")}),
        )
        .await;
        let th = thread(&server, t).await;
        server
            .post(
                &format!("/v1/threads/{th}/messages"),
                &t.app_key,
                json!({"content": format!("remember {secret}")}),
            )
            .await
            .expect(201);
        work.push((t, ag, th));
    }
    let mut ids = Vec::new();
    for i in 0..10 {
        for (t, ag, th) in &work {
            ids.push((
                *t,
                run(&server, t, th, json!({"agent_id": ag, "message": format!("turn {i}")})).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ));
        }
    }
    for (t, id) in &ids {
        assert_eq!(
            wait_status(&server, t, id, |s| s != "queued" && s != "running").await["status"],
            "completed"
        );
    }
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    let (for_a, for_b): (Vec<_>, Vec<_>) = seen.iter().partition(|(key, _)| key == "Bearer sk-alpha");
    assert_eq!((for_a.len(), for_b.len()), (10, 10));
    assert!(
        for_a.iter().all(|(_, body)| body.to_string().contains(&canary)),
        "A's prompts carry A's context"
    );
    assert!(
        for_b.iter().all(|(key, body)| key == "Bearer sk-beta" && !body.to_string().contains(&canary)),
        "A's canary reached a prompt for B"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_run_series() {
    let server = TestServer::start("sqlite").await;
    let t = server.tenant("measured", json!({})).await;
    let a = agent(&server, &t, "a", json!({"model": "builtin/scripted"})).await;
    let th = thread(&server, &t).await;
    run(&server, &t, &th, json!({"agent_id": a, "mode": "sync", "message": "hi"})).await;
    let res = server.call(Method::GET, "/metrics", None, None).await;
    assert!(res.status.is_success());
    for series in [
        "bulkhead_runs_queued",
        "bulkhead_runs_active",
        "bulkhead_run_duration_seconds_bucket",
        "bulkhead_model_tokens_total",
    ] {
        assert!(
            res.text.contains(&format!("# TYPE {series}"))
                || res.text.contains(&format!("# TYPE {}", series.trim_end_matches("_bucket"))),
            "{series} missing:\n{}",
            res.text
        );
    }
    // Every sample line is `name{labels} value` with a number.
    for line in res.text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample: {line}");
        assert!(line.starts_with("bulkhead_"), "{line}");
    }
    assert!(res.text.contains(&format!("tenant=\"{}\"", t.id)));
}

#[tokio::test]
async fn memory_strategies_window_and_summarize_the_thread() {
    let (server, rec) = server_with_upstream("sqlite", Duration::ZERO, 4).await;
    let t = server.tenant("remembering", json!({})).await;
    let window = agent(&server, &t, "window", json!({"model": "gpt-4o-mini", "memory": {"strategy": "token_window", "last_n": 50, "max_tokens": 150}})).await;
    let summary = agent(
        &server,
        &t,
        "summary",
        json!({"model": "gpt-4o-mini", "memory": {"strategy": "summarize", "last_n": 50, "max_tokens": 150}}),
    )
    .await;
    let last_n = agent(
        &server,
        &t,
        "last-n",
        json!({"model": "gpt-4o-mini", "memory": {"strategy": "last_n", "last_n": 3}}),
    )
    .await;
    for (ag, expect_summary) in [(&window, false), (&summary, true), (&last_n, false)] {
        let th = thread(&server, &t).await;
        for i in 0..10 {
            let text = format!("message {i} {}", "x".repeat(200));
            server
                .post(&format!("/v1/threads/{th}/messages"), &t.app_key, json!({"content": text}))
                .await
                .expect(201);
        }
        let before = rec.seen.lock().unwrap().len();
        let done = run(&server, &t, &th, json!({"agent_id": ag, "mode": "sync"})).await;
        assert_eq!(done["status"], "completed", "{done}");
        let seen = rec.seen.lock().unwrap()[before..].to_vec();
        let body = &seen.last().unwrap().1;
        let msgs = body["messages"].as_array().unwrap();
        let users = msgs.iter().filter(|m| m["role"] == "user").count();
        assert!(users < 10, "{ag}: the whole thread went into the call ({users} user messages)");
        assert!(
            msgs.last().unwrap()["content"].as_str().unwrap().starts_with("message 9"),
            "the newest message is kept"
        );
        let has_summary = msgs
            .iter()
            .any(|m| m["content"].as_str().unwrap_or("").starts_with("Summary of the earlier conversation"));
        assert_eq!(has_summary, expect_summary, "{ag}: {body}");
        let stored = server.get(&format!("/v1/threads/{th}"), &t.app_key).await;
        assert_eq!(!stored.body["summary"].is_null(), expect_summary);
    }
}

#[tokio::test]
async fn a_full_queue_answers_429_queue_full() {
    let (url, _rec) = recorder(Duration::from_millis(800)).await;
    let mut config = bulkhead_core::config::Config::default();
    let openai = config.models.providers.get_mut("openai").unwrap();
    openai.base_url = url;
    config.agents.workers = 1;
    config.agents.max_queued_runs = 2;
    let server = TestServer::start_full("sqlite", config).await;
    let t = server.tenant("queued", json!({})).await;
    let a = agent(&server, &t, "a", json!({"model": "gpt-4o-mini"})).await;
    let th = thread(&server, &t).await;
    let first = run(&server, &t, &th, json!({"agent_id": a})).await["id"].as_str().unwrap().to_owned();
    wait_status(&server, &t, &first, |s| s == "running").await;
    run(&server, &t, &th, json!({"agent_id": a})).await;
    run(&server, &t, &th, json!({"agent_id": a})).await;
    let res = server.post(&format!("/v1/threads/{th}/runs"), &t.app_key, json!({"agent_id": a})).await;
    res.expect_error(429, "queue_full");
    // Another tenant's queue is its own.
    let other = server.tenant("not-queued", json!({})).await;
    let oa = agent(&server, &other, "a", json!({"model": "builtin/scripted"})).await;
    let oth = thread(&server, &other).await;
    run(&server, &other, &oth, json!({"agent_id": oa})).await;
}
