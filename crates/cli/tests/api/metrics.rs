//! Observability end to end: `GET /metrics` after scripted activity (runs
//! on the scripted model and on a fake OpenAI upstream, a queued and an
//! active run, tool calls with a rate-limit and a policy refusal, a budget
//! refusal, a refused and an allowed sandbox execution, HTTP requests),
//! read with a strict parser of Prometheus' text format; and OpenTelemetry
//! traces from the real binary to a local OTLP/HTTP receiver — exported
//! with the tenant's id when an endpoint is configured, nothing otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{TestServer, TestTenant};

// ---- A strict reader of the Prometheus text format (0.0.4) ----

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: Vec<Sample>,
}

fn valid_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("not a number: {s:?}")),
    }
}

/// `name{a="x",b="y"} value [timestamp]`, with the format's escapes.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name, true) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let consumed;
        loop {
            let Some(&(start, c)) = chars.peek() else { return Err("unclosed labels".into()) };
            if c == '}' {
                consumed = start + 1;
                break;
            }
            let mut label = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' {
                    break;
                }
                label.push(c);
                chars.next();
            }
            if !valid_name(&label, false) {
                return Err(format!("bad label name {label:?}"));
            }
            if chars.next().map(|x| x.1) != Some('=') || chars.next().map(|x| x.1) != Some('"') {
                return Err(format!("label {label} is not =\"…\""));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|x| x.1) {
                    Some('\\') => match chars.next().map(|x| x.1) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape \\{other:?}")),
                    },
                    Some('"') => break,
                    Some('\n') | None => return Err("unterminated label value".into()),
                    Some(c) => value.push(c),
                }
            }
            if labels.insert(label.clone(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            match chars.next().map(|x| x.1) {
                Some(',') => {}
                Some('}') => {
                    consumed = chars.peek().map_or(after.len(), |x| x.0);
                    break;
                }
                other => return Err(format!("expected , or }} after a label, got {other:?}")),
            }
        }
        rest = &after[consumed..];
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut parts = rest.split(' ');
    let value = parse_value(parts.next().ok_or("no value")?)?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// Reads a whole exposition, rejecting anything the format does not allow:
/// samples outside their `# TYPE`d family, a family declared twice or
/// interleaved, duplicate series, negative counters, histograms whose
/// buckets are not cumulative or do not end in `+Inf` = `_count`.
fn parse(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut helped = BTreeSet::new();
    let mut seen = BTreeSet::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(help) = line.strip_prefix("# HELP ") {
            let name = help.split(' ').next().unwrap();
            if !valid_name(name, true) || !helped.insert(name.to_owned()) {
                return Err(err("bad or repeated HELP".into()));
            }
        } else if let Some(ty) = line.strip_prefix("# TYPE ") {
            let (name, kind) = ty.split_once(' ').ok_or_else(|| err("TYPE without a type".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err(format!("unknown type {kind}")));
            }
            if families.contains_key(name) {
                return Err(err("family declared twice (or interleaved)".into()));
            }
            families.insert(name.to_owned(), Family { kind: kind.to_owned(), samples: Vec::new() });
            current = Some(name.to_owned());
        } else if line.starts_with('#') || line.is_empty() {
            return Err(err("unexpected comment or blank line".into()));
        } else {
            let sample = parse_sample(line).map_err(err)?;
            let family_name = current.clone().ok_or_else(|| err("sample before any TYPE".into()))?;
            let family = families.get_mut(&family_name).unwrap();
            let belongs = match family.kind.as_str() {
                "histogram" => {
                    ["_bucket", "_sum", "_count"].iter().any(|s| sample.name == format!("{family_name}{s}"))
                }
                _ => sample.name == family_name,
            };
            if !belongs {
                return Err(err(format!("sample outside its family {family_name}")));
            }
            if family.kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
                return Err(err("negative counter".into()));
            }
            if !seen.insert((sample.name.clone(), sample.labels.clone())) {
                return Err(err("duplicate series".into()));
            }
            family.samples.push(sample);
        }
    }
    for (name, family) in families.iter().filter(|(_, f)| f.kind == "histogram") {
        let mut series: HashMap<BTreeMap<String, String>, Vec<&Sample>> = HashMap::new();
        for s in &family.samples {
            let mut key = s.labels.clone();
            key.remove("le");
            series.entry(key).or_default().push(s);
        }
        for (labels, samples) in series {
            let buckets: Vec<(f64, f64)> = samples
                .iter()
                .filter(|s| s.name.ends_with("_bucket"))
                .map(|s| (parse_value(&s.labels["le"]).unwrap(), s.value))
                .collect();
            let count = samples.iter().find(|s| s.name.ends_with("_count")).map(|s| s.value);
            let sum = samples.iter().find(|s| s.name.ends_with("_sum"));
            let ok = buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
                && buckets.last().is_some_and(|b| b.0 == f64::INFINITY && Some(b.1) == count)
                && sum.is_some();
            if !ok {
                return Err(format!(
                    "histogram {name}{labels:?} is inconsistent: {buckets:?}, count {count:?}"
                ));
            }
        }
    }
    Ok(families)
}

/// The samples named `name` whose labels include all of `want`.
fn find<'a>(families: &'a BTreeMap<String, Family>, name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    families
        .values()
        .flat_map(|f| &f.samples)
        .filter(|s| {
            s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

#[track_caller]
fn value(families: &BTreeMap<String, Family>, name: &str, want: &[(&str, &str)]) -> f64 {
    let found = find(families, name, want);
    assert!(!found.is_empty(), "no {name} with {want:?}");
    found.iter().map(|s| s.value).sum()
}

#[test]
fn the_reader_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let parsed = parse(good).unwrap();
    assert_eq!(parsed["a_total"].samples[0].labels["x"], "q\"\\\n");
    for bad in [
        "a 1\n",                                                                                   // no TYPE
        "# TYPE a counter\na{x=\"1\"} 1\na{x=\"1\"} 2\n", // duplicate
        "# TYPE a counter\na{x=1} 1\n",                   // unquoted
        "# TYPE a counter\na -1\n",                       // negative counter
        "# TYPE a gauge\nb 1\n",                          // outside its family
        "# TYPE a gauge\na one\n",                        // not a number
        "# TYPE a gauge\n# TYPE b gauge\n# TYPE a gauge\n", // declared twice
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",                          // no +Inf
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}

// ---- The scripted activity ----

/// A fake OpenAI upstream: answers at once, or after two seconds when the
/// prompt says `slow` (to hold a run active while another waits).
async fn fake_openai() -> String {
    async fn chat(body: axum::Json<Value>) -> axum::Json<Value> {
        if body.0.to_string().contains("slow") {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        axum::Json(json!({
            "id": "up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "noted"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
        }))
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

async fn agent(server: &TestServer, t: &TestTenant, name: &str, spec: Value) -> String {
    let res = server.post("/v1/agents", &t.admin_key, json!({"name": name, "spec": spec})).await;
    res.expect(201)["id"].as_str().unwrap().to_owned()
}

async fn run_statuses(server: &TestServer, t: &TestTenant, thread: &str) -> Vec<String> {
    let runs = server.get(&format!("/v1/threads/{thread}/runs"), &t.app_key).await;
    runs.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn scrape(server: &TestServer) -> (String, BTreeMap<String, Family>) {
    let res = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = res.text().await.unwrap();
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, families)
}

async fn metrics_carry_every_series_after_real_activity(backend: &'static str) {
    let mut config = bulkhead_core::config::Config::default();
    let openai = config.models.providers.get_mut("openai").unwrap();
    openai.base_url = fake_openai().await;
    openai.max_retries = 0;
    config.agents.workers = 4;
    let server = TestServer::start_full(backend, config).await;
    let op = server.operator_key.clone();
    let t = server.tenant("observed", json!({})).await;
    let tenant = t.id.as_str();
    let limits = json!({"concurrent_runs": 1, "tool_calls_per_minute": 2});
    server
        .call(Method::PUT, &format!("/v1/tenants/{tenant}/limits"), Some(&op), Some(limits))
        .await
        .expect(200);

    // A run on the scripted model: a tool call runs, a request to a
    // loopback address is refused by the egress policy, and a third call is
    // over the tenant's two tool calls a minute.
    let tools = json!(["calculator", "http_request"]);
    let calc = agent(&server, &t, "calc", json!({"model": "builtin/scripted", "tools": tools})).await;
    let th = server.post("/v1/threads", &t.app_key, json!({})).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let message = "call calculator {\"expression\": \"6*7\"}; \
                   call http_request {\"url\": \"http://127.0.0.1:9/\"}; \
                   call calculator {\"expression\": \"1+1\"}";
    let done = server
        .post(
            &format!("/v1/threads/{th}/runs"),
            &t.app_key,
            json!({"agent_id": calc, "mode": "sync", "message": message}),
        )
        .await;
    assert_eq!(done.expect(200)["status"], "completed", "{}", done.text);

    // Two slow runs on a priced model under a cap of one: one active, one queued.
    let slow = agent(&server, &t, "slow", json!({"model": "gpt-4o-mini"})).await;
    let th2 = server.post("/v1/threads", &t.app_key, json!({})).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        let res = server
            .post(
                &format!("/v1/threads/{th2}/runs"),
                &t.app_key,
                json!({"agent_id": slow, "message": "slow"}),
            )
            .await;
        assert!(res.status.is_success(), "{}", res.text);
    }
    let started = Instant::now();
    loop {
        let statuses = run_statuses(&server, &t, &th2).await;
        if statuses.iter().any(|s| s == "running") && statuses.iter().any(|s| s == "queued") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never one running and one queued: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, during) = scrape(&server).await;
    assert_eq!(value(&during, "bulkhead_runs_active", &[("tenant", tenant)]), 1.0);
    assert_eq!(value(&during, "bulkhead_runs_queued", &[("tenant", tenant)]), 1.0);
    while !run_statuses(&server, &t, &th2).await.iter().all(|s| s == "completed") {
        assert!(started.elapsed() < Duration::from_secs(30), "the slow runs never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The sandbox: refused while off, then one execution allowed.
    let exec = json!({"language": "python", "code": "print(sum(range(10)))"});
    server.post("/v1/sandbox/executions", &t.app_key, exec.clone()).await.expect_error(403, "forbidden");
    let policy = json!({"enabled": true, "languages": ["python"]});
    server
        .call(Method::PUT, &format!("/v1/tenants/{tenant}/sandbox"), Some(&op), Some(policy))
        .await
        .expect(200);
    let out = server.post("/v1/sandbox/executions", &t.app_key, exec).await;
    assert_eq!(out.expect(200)["stdout"].as_str().unwrap().trim(), "45");

    // A budget smaller than one call's worst case: refused up front.
    let budget = json!({"monthly_limit_usd": "0.000001"});
    server
        .call(Method::PUT, &format!("/v1/tenants/{tenant}/budget"), Some(&op), Some(budget))
        .await
        .expect(200);
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    server.post("/v1/chat/completions", &t.app_key, chat).await.expect_error(402, "budget_exceeded");

    // HTTP: a route with an id in its path, and a path no route matches.
    server.get(&format!("/v1/agents/{calc}"), &t.app_key).await.expect(200);
    server.get("/v1/no-such-thing", &t.app_key).await.expect_error(404, "not_found");

    let (text, m) = scrape(&server).await;
    let tn = ("tenant", tenant);
    // Runs.
    assert_eq!(value(&m, "bulkhead_runs_finished_total", &[tn, ("status", "completed")]), 3.0);
    assert_eq!(value(&m, "bulkhead_run_duration_seconds_count", &[tn]), 3.0);
    assert!(value(&m, "bulkhead_run_duration_seconds_sum", &[tn]) >= 2.0, "two runs took 2 s each");
    for family in ["bulkhead_runs_queued", "bulkhead_runs_active"] {
        assert_eq!(m[family].kind, "gauge");
    }
    // Tokens and cost: the two upstream calls of 1000 + 200 tokens, priced.
    let model = find(&m, "bulkhead_model_cost_dollars_total", &[tn])
        .into_iter()
        .map(|s| s.labels["model"].clone())
        .find(|name| name.contains("gpt-4o-mini"))
        .unwrap_or_else(|| panic!("no cost for gpt-4o-mini:\n{text}"));
    let mm = ("model", model.as_str());
    assert_eq!(value(&m, "bulkhead_model_tokens_total", &[tn, mm, ("direction", "input")]), 2000.0);
    assert_eq!(value(&m, "bulkhead_model_tokens_total", &[tn, mm, ("direction", "output")]), 400.0);
    // 2 × (1000 × $0.15/M + 200 × $0.60/M) = $0.00054
    let cost = value(&m, "bulkhead_model_cost_dollars_total", &[tn, mm]);
    assert!((cost - 0.00054).abs() < 1e-12, "{cost}");
    assert!(value(&m, "bulkhead_model_tokens_total", &[tn, ("model", "builtin/scripted")]) > 0.0, "{text}");
    assert!(value(&m, "bulkhead_cost_dollars_total", &[tn, ("kind", "llm")]) >= cost);
    // Refusals.
    assert_eq!(
        value(&m, "bulkhead_rate_limit_refusals_total", &[tn, ("limit", "tool_calls_per_minute")]),
        1.0
    );
    assert_eq!(value(&m, "bulkhead_budget_refusals_total", &[tn, ("period", "month")]), 1.0);
    let policy = [tn, ("scope", "egress"), ("reason", "egress_denied")];
    assert_eq!(value(&m, "bulkhead_policy_refusals_total", &policy), 1.0);
    let policy = [tn, ("scope", "sandbox"), ("reason", "sandbox_disabled")];
    assert_eq!(value(&m, "bulkhead_policy_refusals_total", &policy), 1.0);
    // Sandbox and tools.
    assert_eq!(value(&m, "bulkhead_sandbox_executions_total", &[tn, ("outcome", "refused")]), 1.0);
    assert_eq!(value(&m, "bulkhead_sandbox_executions_total", &[tn, ("outcome", "success")]), 1.0);
    assert!(value(&m, "bulkhead_sandbox_cpu_seconds_total", &[tn]) > 0.0);
    let tools = [tn, ("kind", "builtin"), ("outcome", "ok")];
    assert_eq!(value(&m, "bulkhead_tool_calls_total", &tools), 1.0);
    let tools = [tn, ("kind", "builtin"), ("outcome", "egress_denied")];
    assert_eq!(value(&m, "bulkhead_tool_calls_total", &tools), 1.0);
    // HTTP latency: by route template, never the raw path, and no tenant.
    let http = "bulkhead_http_request_duration_seconds_count";
    let route = [("method", "GET"), ("route", "/v1/agents/{agent_id}"), ("status", "2xx")];
    assert!(value(&m, http, &route) >= 1.0);
    assert!(value(&m, http, &[("route", "unmatched"), ("status", "4xx")]) >= 1.0);
    assert!(value(&m, http, &[("method", "POST"), ("route", "/v1/threads/{thread_id}/runs")]) >= 3.0);
    for s in &m["bulkhead_http_request_duration_seconds"].samples {
        assert!(!s.labels.contains_key("tenant"), "{s:?}");
        assert!(!s.labels["route"].contains(&calc) && !s.labels["route"].contains(&th), "{s:?}");
    }
    assert_eq!(value(&m, "bulkhead_build_info", &[]), 1.0);
}
both_backends!(metrics_carry_every_series_after_real_activity);

// ---- OpenTelemetry traces from the binary ----

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// A local OTLP/HTTP receiver: every body posted to `/v1/traces`.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                seen.lock().unwrap().push(body.to_vec());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), bodies)
}

/// Starts `bulkhead serve` on a fresh data dir; returns the child, its base
/// URL and the operator key it printed.
#[allow(clippy::zombie_processes)] // reaped by `stop`
fn serve(data: &str, envs: &[(&str, &str)]) -> (Child, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_remove("RUST_LOG")
        .env_remove("BULKHEAD_OTLP_ENDPOINT");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn serve");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut key = None;
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "serve exited early");
        if let Some(k) = line.split_whitespace().find(|w| w.starts_with("bh_op_")) {
            key = Some(k.to_owned());
        }
        if let Some(base) = line.trim_end().strip_prefix("listening on ") {
            return (child, base.to_owned(), key.expect("a fresh store prints the operator key"));
        }
    }
}

/// `bulkhead worker` with its metrics listener on a free loopback port;
/// the child (reaped by `stop`) and the listener's `/metrics` URL.
#[allow(clippy::zombie_processes)]
fn worker_with_metrics(data_dir: &str, envs: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--data-dir", data_dir])
        .env("BULKHEAD_METRICS_LISTEN", "127.0.0.1:0")
        .env("BULKHEAD_MASTER_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn worker");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the worker exited early");
        if let Some(url) = line.trim_end().strip_prefix("metrics on ") {
            return (child, url.to_owned());
        }
    }
}

fn stop(mut child: Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for _ in 0..400 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    child.kill().ok();
    panic!("serve did not stop within 10 s of SIGTERM");
}

/// Creates a tenant with an app key, then makes a request with that key.
async fn tenant_request(base: &str, operator: &str) -> String {
    let http = reqwest::Client::new();
    let t: Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(operator)
        .json(&json!({"name": "traced"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = t["id"].as_str().unwrap().to_owned();
    let key: Value = http
        .post(format!("{base}/v1/tenants/{id}/keys"))
        .bearer_auth(operator)
        .json(&json!({"name": "app"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = http
        .get(format!("{base}/v1/agents"))
        .bearer_auth(key["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    id
}

/// Every span of the exported requests: (name, string attributes).
fn spans(bodies: &[Vec<u8>]) -> Vec<(String, HashMap<String, String>)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;
    let mut out = Vec::new();
    for body in bodies {
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf request");
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let attrs = span
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Any::StringValue(s) => Some((kv.key.clone(), s.clone())),
                            Any::IntValue(i) => Some((kv.key.clone(), i.to_string())),
                            _ => None,
                        })
                        .collect();
                    out.push((span.name, attrs));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn traces_go_to_the_configured_otlp_endpoint_with_the_tenant() {
    let (endpoint, bodies) = otlp_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let (child, base, operator) = serve(
        dir.path().to_str().unwrap(),
        &[("BULKHEAD_OTLP_ENDPOINT", &endpoint), ("BULKHEAD_TELEMETRY__SERVICE_NAME", "bulkhead-test")],
    );
    let tenant = tenant_request(&base, &operator).await;
    // SIGTERM: the process flushes its spans before it exits.
    tokio::task::spawn_blocking(move || stop(child)).await.unwrap();
    let bodies = bodies.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "no OTLP request arrived");
    let spans = spans(&bodies);
    let request = spans
        .iter()
        .find(|(name, attrs)| {
            name == "request"
                && attrs.get("http.route").map(String::as_str) == Some("/v1/agents")
                && attrs.get("tenant.id") == Some(&tenant)
        })
        .unwrap_or_else(|| panic!("no request span with tenant.id {tenant}: {spans:?}"));
    assert_eq!(request.1.get("http.response.status_code").map(String::as_str), Some("200"));
    // Secrets never become attributes: the operator key is in no export.
    let secret = operator.rsplit('_').next().unwrap();
    assert!(bodies.iter().all(|b| !b.windows(secret.len()).any(|w| w == secret.as_bytes())));
    let resource = &bodies.concat();
    assert!(resource.windows(13).any(|w| w == b"bulkhead-test"), "service.name is the configured one");
}

#[tokio::test]
async fn a_worker_serves_its_metrics_on_its_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (child, url) = worker_with_metrics(dir.path().to_str().unwrap(), &[]);
    let res = reqwest::get(&url).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(value(&families, "bulkhead_build_info", &[]), 1.0);
    assert!(families.contains_key("bulkhead_runs_finished_total"));
    tokio::task::spawn_blocking(move || stop(child)).await.unwrap();
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported() {
    let (endpoint, bodies) = otlp_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    // The SDK's own variable points at the receiver: still nothing, since
    // no exporter is built unless Bulkhead's configuration names one.
    let (child, base, operator) =
        serve(dir.path().to_str().unwrap(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    tenant_request(&base, &operator).await;
    tokio::task::spawn_blocking(move || stop(child)).await.unwrap();
    assert!(bodies.lock().unwrap().is_empty(), "spans were exported without an endpoint configured");
}

/// With `server.metrics_token`, `/metrics` of the API and of a worker answer
/// only that bearer token — not anonymous callers, not an operator key.
#[tokio::test]
async fn a_metrics_token_closes_metrics_to_everyone_else() {
    let token = "scrape-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let (child, base, operator) = serve(dir.path().to_str().unwrap(), &[("BULKHEAD_METRICS_TOKEN", token)]);
    let http = reqwest::Client::new();
    let get = |key: Option<&str>| {
        let mut req = http.get(format!("{base}/metrics"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send()
    };
    for key in [None, Some("scrape-token-wrong-0000"), Some(operator.as_str())] {
        let res = get(key).await.unwrap();
        assert_eq!(res.status(), 401, "{key:?}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let res = get(Some(token)).await.unwrap();
    assert_eq!(res.status(), 200);
    parse(&res.text().await.unwrap()).unwrap();
    // The probes stay public.
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    tokio::task::spawn_blocking(move || stop(child)).await.unwrap();

    let (worker, url) =
        worker_with_metrics(dir.path().to_str().unwrap(), &[("BULKHEAD_METRICS_TOKEN", token)]);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(http.get(&url).bearer_auth(token).send().await.unwrap().status(), 200);
    tokio::task::spawn_blocking(move || stop(worker)).await.unwrap();
}
