//! Gateway overhead (BLUEPRINT §7), run by hand:
//!
//! ```sh
//! cargo bench -p bulkhead --bench gateway            # ~1 minute of load
//! ```
//!
//! A fast local upstream speaking OpenAI's wire format answers a fixed
//! completion. The same load — concurrency 1, 16 and 64 — goes once straight
//! to the upstream and once through `bulkhead serve` (release build, SQLite,
//! with metering, rate limits and a budget on: every call is admitted,
//! reserved, priced, written to the ledger and settled). Printed side by
//! side: requests/s, p50 and p99 latency, the gateway's CPU per request (from
//! /proc), its RSS idle and under load, and its start time. Load generator,
//! upstream and gateway share this machine's cores, so compare columns of one
//! run rather than runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const RUN_FOR: Duration = Duration::from_secs(5);

async fn upstream() -> String {
    let body = json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 7, "total_tokens": 32}
    })
    .to_string();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

/// (utime + stime) of a process, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz = 100.0; // USER_HZ on Linux
    ticks * 1000.0 / hz
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

struct Result {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: usize,
}

async fn load(url: &str, key: Option<&str>, concurrency: usize) -> Result {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 64,
                      "messages": [{"role": "user", "content": "What is the answer to everything?"}]});
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, body) = (client.clone(), url.to_owned(), key.map(str::to_owned), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < RUN_FOR {
                let t = Instant::now();
                let mut req = client.post(&url).json(&body);
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let res = req.send().await.unwrap();
                assert!(res.status().is_success(), "{}", res.text().await.unwrap());
                let _ = res.bytes().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Result { rps: all.len() as f64 / secs, p50_ms: pct(0.50), p99_ms: pct(0.99), requests: all.len() }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let op = format!("bh_op_00000000beef_{}", "b".repeat(43));
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()])
        .env("BULKHEAD_OPERATOR_KEY", &op)
        .env("BULKHEAD_MODELS__PROVIDERS__OPENAI__BASE_URL", &upstream)
        .env("BULKHEAD_MODELS__PROVIDERS__OPENAI__MAX_RETRIES", "0")
        .env("BULKHEAD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(b) = line.strip_prefix("listening on ") {
            break b.to_owned();
        }
    };
    let start_ms = started.elapsed().as_secs_f64() * 1000.0;
    let pid = child.id();
    let http = reqwest::Client::new();
    let t: Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(&op)
        .json(&json!({"name": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tid = t["id"].as_str().unwrap().to_owned();
    let k: Value = http
        .post(format!("{base}/v1/tenants/{tid}/keys"))
        .bearer_auth(&op)
        .json(&json!({"name": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = k["secret"].as_str().unwrap().to_owned();
    let limits = json!({"requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000});
    for (what, body) in [("limits", limits), ("budget", json!({"monthly_limit_usd": "1000000"}))] {
        let res = http
            .put(format!("{base}/v1/tenants/{tid}/{what}"))
            .bearer_auth(&op)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{what}: {}", res.text().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_mb(pid);

    println!("gateway start: {start_ms:.0} ms; RSS idle {idle_rss:.1} MB");
    println!(
        "{:>5} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>9} {:>9} | {:>12} {:>10}",
        "conc",
        "direct r/s",
        "p50 ms",
        "p99 ms",
        "bulk r/s",
        "p50 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms",
        "CPU ms/req",
        "RSS MB"
    );
    for concurrency in [1, 16, 64] {
        let direct = load(&format!("{upstream}/chat/completions"), None, concurrency).await;
        let cpu_before = cpu_ms(pid);
        let via = load(&format!("{base}/v1/chat/completions"), Some(&key), concurrency).await;
        let cpu = (cpu_ms(pid) - cpu_before) / via.requests as f64;
        let rss = rss_mb(pid);
        println!(
            "{concurrency:>5} | {:>10.0} {:>8.3} {:>8.3} | {:>10.0} {:>8.3} {:>8.3} | {:>9.3} {:>9.3} | {:>12.3} {:>10.1}",
            direct.rps,
            direct.p50_ms,
            direct.p99_ms,
            via.rps,
            via.p50_ms,
            via.p99_ms,
            via.p50_ms - direct.p50_ms,
            via.p99_ms - direct.p99_ms,
            cpu,
            rss
        );
    }
    // Every call was metered: the ledger holds one event per request.
    let usage: Value = http
        .get(format!("{base}/v1/usage"))
        .bearer_auth(&op)
        .header("x-tenant-id", &tid)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("ledger: {} events, cost ${}", usage["data"][0]["events"], usage["data"][0]["cost_usd"]);
    println!("gateway CPU per request → requests/s per core of gateway CPU = 1000 / (CPU ms/req)");
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
}
