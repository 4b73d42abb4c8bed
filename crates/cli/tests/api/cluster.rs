//! Cluster mode: three `bulkhead` processes — two `serve`, one `worker` —
//! on one PostgreSQL and one Redis. Runs are each executed once, whichever
//! process takes them; a tenant's concurrency cap, rate limit and budget
//! hold across the processes; and killing one process (`kill -9`, mid-run)
//! loses no queued or running run. An API-only `serve` (`agents.workers =
//! 0`) leaves runs to the workers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::binary::{fixed_operator_key, redis_url, serve, served_tenant, terminate};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// An upstream in OpenAI's wire format that counts the requests per
/// conversation (by the last user message) and answers after `delay`.
async fn counting_upstream(delay: Duration) -> (String, Arc<Mutex<BTreeMap<String, u32>>>) {
    let seen: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let counts = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: axum::Json<Value>| {
            let counts = counts.clone();
            async move {
                let last_user = body["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["role"] == "user")
                    .filter_map(|m| m["content"].as_str())
                    .next_back()
                    .unwrap_or("")
                    .to_owned();
                *counts.lock().unwrap().entry(last_user).or_default() += 1;
                tokio::time::sleep(delay).await;
                axum::Json(json!({
                    "id": "up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

/// `bulkhead worker`, up once it says so.
fn worker(args: &[&str], envs: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("worker")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("BULKHEAD_MASTER_KEY", MASTER_KEY);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn worker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("worker running"), "worker did not start: {line:?}");
    child
}

struct Client {
    http: reqwest::Client,
    key: String,
}

impl Client {
    async fn call(&self, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, url).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
    async fn post(&self, url: String, body: Value) -> Value {
        let (s, v) = self.call(reqwest::Method::POST, url, Some(body)).await;
        assert!(s < 300, "{s}: {v}");
        v
    }
    async fn get(&self, url: String) -> Value {
        let (s, v) = self.call(reqwest::Method::GET, url, None).await;
        assert!(s < 300, "{s}: {v}");
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_postgres_and_one_redis() {
    if bulkhead_store::testing::pg_admin_url().is_none() {
        eprintln!("PostgreSQL deliberately skipped");
        return;
    }
    let Some(redis) = redis_url() else { return };
    let db = bulkhead_store::testing::fresh_pg_database().await.unwrap();
    let (upstream, seen) = counting_upstream(Duration::from_millis(600)).await;
    let op = fixed_operator_key();
    let envs = [
        ("BULKHEAD_OPERATOR_KEY", op.as_str()),
        ("BULKHEAD_REDIS_URL", redis.as_str()),
        ("BULKHEAD_AGENTS__LEASE_SECS", "2"),
        ("BULKHEAD_AGENTS__WORKERS", "2"),
        ("BULKHEAD_MODELS__PROVIDERS__OPENAI__BASE_URL", upstream.as_str()),
        ("BULKHEAD_MODELS__PROVIDERS__OPENAI__MAX_RETRIES", "0"),
    ];
    let args = ["--database-url", db.as_str()];
    let one = serve(&args, &envs);
    let mut two = serve(&args, &envs);
    let mut three = worker(&args, &envs);
    let bases = [one.base.clone(), two.base.clone()];

    // --- Limits across processes: a concurrency cap and a rate limit.
    let (tenant, key) = served_tenant(&one.base, &op, "clustered").await;
    let opc = Client { http: reqwest::Client::new(), key: op.clone() };
    let (s, v) = opc
        .call(
            reqwest::Method::PUT,
            format!("{}/v1/tenants/{tenant}/limits", one.base),
            Some(json!({"concurrent_runs": 3, "requests_per_minute": 100000})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let c = Client { http: reqwest::Client::new(), key };
    let agent = c
        .post(format!("{}/v1/agents", one.base), json!({"name": "a", "spec": {"model": "gpt-4o-mini"}}))
        .await;
    let agent = agent["id"].as_str().unwrap().to_owned();

    // Thirty runs, queued through both API processes, one thread each.
    const RUNS: usize = 30;
    let mut runs = Vec::new();
    for i in 0..RUNS {
        let base = &bases[i % 2];
        let th = c.post(format!("{base}/v1/threads"), json!({})).await;
        let th = th["id"].as_str().unwrap().to_owned();
        let body = json!({"agent_id": agent, "message": format!("job-{i}")});
        let run = c.post(format!("{base}/v1/threads/{th}/runs"), body).await;
        runs.push((run["id"].as_str().unwrap().to_owned(), th));
    }

    // Watch the cluster work; kill -9 the second server while it runs some.
    let started = Instant::now();
    let mut max_running = 0;
    let mut killed = false;
    let mut running_at_kill = 0;
    loop {
        // All at once, so that one sample is close to one instant.
        let statuses: Vec<String> =
            futures::future::join_all(runs.iter().map(|(id, _)| c.get(format!("{}/v1/runs/{id}", one.base))))
                .await
                .iter()
                .map(|r| r["status"].as_str().unwrap().to_owned())
                .collect();
        let running = statuses.iter().filter(|s| *s == "running").count();
        max_running = max_running.max(running);
        let done = statuses.iter().filter(|s| *s == "completed").count();
        if !killed && done >= 3 && running > 0 {
            two.child.kill().unwrap();
            two.child.wait().unwrap();
            killed = true;
            running_at_kill = running;
        }
        if statuses.iter().all(|s| s == "completed" || s == "failed" || s == "cancelled") {
            assert!(statuses.iter().all(|s| s == "completed"), "{statuses:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "runs did not finish: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(killed, "the kill happened mid-way");
    assert!(
        max_running <= 3,
        "the cap of 3 concurrent runs held across processes: {max_running} ran at once"
    );
    assert!(max_running >= 2, "several processes shared the work: at most {max_running} ran at once");

    // Each run executed once: one answer per thread; the upstream saw every
    // job, and twice at most for runs whose first worker was killed.
    let seen = seen.lock().unwrap().clone();
    let mut retried = 0;
    for (i, (id, th)) in runs.iter().enumerate() {
        let run = c.get(format!("{}/v1/runs/{id}", one.base)).await;
        let msgs = c.get(format!("{}/v1/threads/{th}/messages", one.base)).await;
        let answers = msgs["data"].as_array().unwrap().iter().filter(|m| m["role"] == "assistant").count();
        assert_eq!(answers, 1, "run {i} answered once: {msgs}");
        let calls = seen.get(&format!("job-{i}")).copied().unwrap_or(0);
        match run["attempts"].as_i64().unwrap() {
            1 => assert_eq!(calls, 1, "job-{i} reached the model once"),
            2 => {
                retried += 1;
                assert!((1..=2).contains(&calls), "job-{i}: {calls} calls");
            }
            n => panic!("job-{i} was claimed {n} times"),
        }
    }
    assert!(retried <= running_at_kill, "only runs in flight on the killed process were retried");
    // One model usage event per run: a killed attempt was never settled.
    let (s, export) =
        c.call(reqwest::Method::GET, format!("{}/v1/usage/export?format=cloudevents", one.base), None).await;
    assert_eq!(s, 200);
    let llm = export
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["data"]["kind"] == "llm")
        .count();
    assert_eq!(llm, RUNS, "one settled model call per run");
    eprintln!("cluster: {RUNS} runs, max {max_running} at once, {retried} retried after kill -9");

    // --- The budget across processes: concurrent calls through both
    // remaining entry points never spend past it. (The second server is
    // dead; the first and a restarted second share the budget.)
    let two = serve(&args, &envs);
    let bases = [one.base.clone(), two.base.clone()];
    // --- A rate limit across processes: one bucket in Redis, not one each.
    let (rtenant, rkey) = served_tenant(&one.base, &op, "rated").await;
    const RPM: u64 = 300;
    let (s, _) = opc
        .call(
            reqwest::Method::PUT,
            format!("{}/v1/tenants/{rtenant}/limits", one.base),
            Some(json!({"requests_per_minute": RPM})),
        )
        .await;
    assert_eq!(s, 200);
    let started = Instant::now();
    let run_for = Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = format!("{}/v1/tenant", bases[i % 2]);
        let rkey = rkey.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut limited) = (0u64, 0u64);
            while started.elapsed() < run_for {
                match http.get(&url).bearer_auth(&rkey).send().await.unwrap().status().as_u16() {
                    200 => ok += 1,
                    429 => limited += 1,
                    s => panic!("unexpected status {s}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0u64, 0u64);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        limited += l;
    }
    // GCRA with a one-minute burst: the burst plus the refill over the run.
    let expected = RPM as f64 + RPM as f64 / 60.0 * started.elapsed().as_secs_f64();
    eprintln!(
        "rate limit across processes: {ok} admitted, {limited} refused; one bucket allows {expected:.0}"
    );
    assert!(limited > 0, "the load must exceed the limit");
    assert!(
        (ok as f64) <= expected + 1.0 && (ok as f64) >= expected * 0.95,
        "admitted {ok}, expected {expected:.0}"
    );

    let (btenant, bkey) = served_tenant(&one.base, &op, "budgeted").await;
    let pricing =
        json!({"models": {"gpt-4o-mini": {"input_per_mtok": "1000.00", "output_per_mtok": "1000.00"}}});
    let (s, _) = opc
        .call(reqwest::Method::PUT, format!("{}/v1/tenants/{btenant}/pricing", one.base), Some(pricing))
        .await;
    assert_eq!(s, 200);
    let (s, _) = opc
        .call(
            reqwest::Method::PUT,
            format!("{}/v1/tenants/{btenant}/budget", one.base),
            Some(json!({"monthly_limit_usd": "0.25"})),
        )
        .await;
    assert_eq!(s, 200);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let url = format!("{}/v1/chat/completions", bases[i % 2]);
        let bkey = bkey.clone();
        tasks.push(tokio::spawn(async move {
            let res = reqwest::Client::new()
                .post(url)
                .bearer_auth(bkey)
                .json(&json!({"model": "gpt-4o-mini", "max_tokens": 10,
                              "messages": [{"role": "user", "content": format!("spend {i}")}]}))
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }));
    }
    let mut statuses = BTreeMap::<u16, u32>::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_default() += 1;
    }
    let bc = Client { http: reqwest::Client::new(), key: bkey };
    let budget = bc.get(format!("{}/v1/budget", two.base)).await;
    let spent: f64 = budget["spent_month_usd"].as_str().unwrap().parse().unwrap();
    eprintln!("budget across processes: {statuses:?}, spent {spent} of 0.25");
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(statuses.get(&402).copied().unwrap_or(0) > 0, "the budget must run out: {statuses:?}");
    assert!(spent <= 0.25, "spent {spent} past the budget of 0.25");

    three.kill().unwrap();
    three.wait().unwrap();
    assert!(terminate(one).success());
    assert!(terminate(two).success());
}

/// `agents.workers = 0` makes `serve` an API-only process: a run it queues
/// waits until a `bulkhead worker` on the same store takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_only_server_leaves_runs_to_workers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let op = fixed_operator_key();
    let envs = [("BULKHEAD_OPERATOR_KEY", op.as_str())];
    let api_only = [("BULKHEAD_OPERATOR_KEY", op.as_str()), ("BULKHEAD_AGENTS__WORKERS", "0")];
    let api = serve(&["--data-dir", data], &api_only);
    let (_, key) = served_tenant(&api.base, &op, "api-only").await;
    let c = Client { http: reqwest::Client::new(), key };
    let spec = json!({"name": "a", "spec": {"model": "builtin/scripted"}});
    let agent = c.post(format!("{}/v1/agents", api.base), spec).await["id"].as_str().unwrap().to_owned();
    let th = c.post(format!("{}/v1/threads", api.base), json!({})).await["id"].as_str().unwrap().to_owned();
    let run = c
        .post(format!("{}/v1/threads/{th}/runs", api.base), json!({"agent_id": agent, "message": "hi"}))
        .await;
    let url = format!("{}/v1/runs/{}", api.base, run["id"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.get(url.clone()).await["status"], "queued", "the API-only process executes nothing");

    // A worker with no slots is refused; one with slots takes the run.
    let refused = Command::new(BIN)
        .args(["worker", "--data-dir", data])
        .env("BULKHEAD_AGENTS__WORKERS", "0")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at least one run slot"));
    let mut w = worker(&["--data-dir", data], &envs);
    let started = Instant::now();
    loop {
        let r = c.get(url.clone()).await;
        if r["status"] == "completed" {
            assert_eq!(r["output"]["content"], "You said: hi");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the worker never ran it: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.kill().unwrap();
    w.wait().unwrap();
    assert!(terminate(api).success());
}
