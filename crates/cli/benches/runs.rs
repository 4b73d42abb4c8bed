//! Run orchestration (BLUEPRINT §7), run by hand:
//!
//! ```sh
//! cargo bench -p bulkhead --bench runs                    # SQLite
//! BULKHEAD_BENCH_DATABASE_URL=postgres://…/fresh_db cargo bench -p bulkhead --bench runs   # and PostgreSQL (an empty database)
//! ```
//!
//! Runs per second through `bulkhead serve` (release build) with an instant
//! model (a local upstream in OpenAI's wire format that asks for two tool
//! calls, then answers: 3 model calls and 2 tool calls per run), with
//! persistence and metering on — for a `shared` tenant and an `isolated` one
//! (its own database) side by side in one server, which shows what routing
//! by tier costs; then the memory held while 10,000 runs wait on a slow
//! model.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

async fn upstream(delay: Duration) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: axum::Json<Value>| async move {
            tokio::time::sleep(delay).await;
            let tool_results = body["messages"].as_array().unwrap().iter().filter(|m| m["role"] == "tool").count();
            let message = if tool_results < 2 {
                json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("c{tool_results}"), "type": "function",
                       "function": {"name": "calculator", "arguments": "{\"expression\": \"6*7\"}"}}]})
            } else {
                json!({"role": "assistant", "content": "42, twice."})
            };
            let finish = if tool_results < 2 { "tool_calls" } else { "stop" };
            axum::Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

struct Served {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

fn serve(store: &[String], upstream: &str, op: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()])
        .args(store)
        .env("BULKHEAD_OPERATOR_KEY", op)
        .env("BULKHEAD_MASTER_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .env("BULKHEAD_MODELS__PROVIDERS__OPENAI__BASE_URL", upstream)
        .env("BULKHEAD_MODELS__PROVIDERS__OPENAI__MAX_RETRIES", "0")
        .env("BULKHEAD_AGENTS__MAX_QUEUED_RUNS", "20000")
        .env("BULKHEAD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(b) = line.strip_prefix("listening on ") {
            break b.to_owned();
        }
    };
    Served { child, base, _dir: dir }
}

async fn setup(http: &reqwest::Client, base: &str, op: &str, tier: &str) -> (String, String, Vec<String>) {
    let t: Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(op)
        .json(&json!({"name": format!("bench-{}-{}", tier.replace(':', "-"), &uuid::Uuid::new_v4().simple().to_string()[..8]),
                      "tier": if tier.starts_with("dedicated") { "shared" } else { tier }}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tid = t["id"].as_str().unwrap().to_owned();
    let limits = json!({"requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000, "tool_calls_per_minute": 10_000_000, "concurrent_runs": 1000});
    http.put(format!("{base}/v1/tenants/{tid}/limits")).bearer_auth(op).json(&limits).send().await.unwrap();
    let k: Value = http
        .post(format!("{base}/v1/tenants/{tid}/keys"))
        .bearer_auth(op)
        .json(&json!({"name": "b", "scope": "tenant_admin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = k["secret"].as_str().unwrap().to_owned();
    if let Some(cell) = tier.strip_prefix("dedicated:") {
        // Moved into the cell before it has anything: from here on the
        // control plane proxies every call of the tenant to the cell.
        let moved = http
            .post(format!("{base}/v1/tenants/{tid}/move"))
            .bearer_auth(op)
            .json(&json!({"tier": "dedicated", "cell": cell}))
            .send()
            .await
            .unwrap();
        assert!(moved.status().is_success(), "{}", moved.text().await.unwrap());
    }
    let spec = json!({"model": "gpt-4o-mini", "tools": ["calculator"], "memory": {"strategy": "last_n", "last_n": 10}});
    let a: Value = http
        .post(format!("{base}/v1/agents"))
        .bearer_auth(&key)
        .json(&json!({"name": "bench", "spec": spec}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut threads = Vec::new();
    for _ in 0..50 {
        let th: Value = http
            .post(format!("{base}/v1/threads"))
            .bearer_auth(&key)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        threads.push(th["id"].as_str().unwrap().to_owned());
    }
    (key, a["id"].as_str().unwrap().to_owned(), threads)
}

async fn submit(http: &reqwest::Client, base: &str, key: &str, agent: &str, threads: &[String], n: usize) {
    let mut tasks = Vec::new();
    for chunk in 0..16 {
        let (http, base, key, agent, threads) =
            (http.clone(), base.to_owned(), key.to_owned(), agent.to_owned(), threads.to_vec());
        tasks.push(tokio::spawn(async move {
            for i in (chunk..n).step_by(16) {
                let th = &threads[i % threads.len()];
                let res = http
                    .post(format!("{base}/v1/threads/{th}/runs"))
                    .bearer_auth(&key)
                    .json(&json!({"agent_id": agent, "message": "compute"}))
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success(), "{}", res.text().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn finished_runs(http: &reqwest::Client, base: &str) -> u64 {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("bulkhead_runs_finished_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn bench(label: &str, store: Vec<String>) {
    let op = format!("bh_op_00000000cafe_{}", "c".repeat(43));
    let http = reqwest::Client::new();

    // Throughput with an instant model, one tier after the other. The
    // dedicated tenant's cell is a second server (SQLite, its own data dir)
    // sharing the master key; its runs execute there, behind the proxy.
    let fast = upstream(Duration::ZERO).await;
    let served = serve(&store, &fast, &op);
    let cell_op = format!("bh_op_00000000ce11_{}", "d".repeat(43));
    let cell = serve(&[], &fast, &cell_op);
    let n = 1_000;
    // Moves restore into the same backend only, and the cell is SQLite.
    let tiers: &[&str] =
        if store.is_empty() { &["shared", "isolated", "dedicated:cell-1"] } else { &["shared", "isolated"] };
    if store.is_empty() {
        let registered = http
            .post(format!("{}/v1/cells", served.base))
            .bearer_auth(&op)
            .json(&json!({"name": "cell-1", "base_url": cell.base, "operator_key": cell_op}))
            .send()
            .await
            .unwrap();
        assert!(registered.status().is_success(), "{}", registered.text().await.unwrap());
    }
    for &tier in tiers {
        let (key, agent, threads) = setup(&http, &served.base, &op, tier).await;
        let counted = if tier.starts_with("dedicated") { &cell.base } else { &served.base };
        let done_before = finished_runs(&http, counted).await;
        let start = Instant::now();
        submit(&http, &served.base, &key, &agent, &threads, n).await;
        while finished_runs(&http, counted).await < done_before + n as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{label:<9} {tier:<16} {n} runs (3 model calls + 2 tool calls each): {:.0} runs/s, {:.1} s",
            n as f64 / secs,
            secs
        );
    }
    for mut s in [served, cell] {
        let _ = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status();
        let _ = s.child.wait();
    }

    // Memory while 10,000 runs wait on a slow model.
    let slow = upstream(Duration::from_secs(600)).await;
    let served = serve(&store, &slow, &op);
    let (key, agent, threads) = setup(&http, &served.base, &op, "shared").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_mb(served.child.id());
    submit(&http, &served.base, &key, &agent, &threads, 10_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mb(served.child.id());
    println!(
        "{label:<9} 10,000 runs waiting (16 executing on the slow model, the rest queued in the store): RSS {before:.1} → {after:.1} MB, {:.1} KB per run",
        (after - before) * 1024.0 / 10_000.0
    );
    let _ = Command::new("kill").args(["-9", &served.child.id().to_string()]).status();
    let mut served = served;
    let _ = served.child.wait();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    bench("sqlite", Vec::new()).await;
    if let Ok(url) = std::env::var("BULKHEAD_BENCH_DATABASE_URL") {
        bench("postgres", vec!["--database-url".into(), url]).await;
    }
}
