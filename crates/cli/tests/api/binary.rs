//! The `bulkhead` binary itself: first start, graceful stop, configuration
//! from the environment, the admin commands and their `--help`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

fn bulkhead(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env_remove("RUST_LOG").output().expect("run bulkhead")
}

pub(crate) struct Served {
    pub(crate) child: Child,
    pub(crate) base: String,
    stdout_lines: Vec<String>,
}

/// Starts `bulkhead serve` and reads stdout up to its `listening on` line.
/// The child is reaped by `terminate`.
#[allow(clippy::zombie_processes)]
pub(crate) fn serve(args: &[&str], envs: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // PostgreSQL deployments need a master key; a fixed one serves the tests.
        .env("BULKHEAD_MASTER_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn serve");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "serve exited early; stdout: {lines:?}");
        let line = line.trim_end().to_owned();
        if let Some(base) = line.strip_prefix("listening on ") {
            let base = base.to_owned();
            lines.push(line);
            return Served { child, base, stdout_lines: lines };
        }
        lines.push(line);
    }
}

pub(crate) fn terminate(mut served: Served) -> std::process::ExitStatus {
    let pid = served.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for _ in 0..200 {
        if let Some(status) = served.child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    served.child.kill().ok();
    panic!("serve did not stop within 5 s of SIGTERM");
}

fn operator_key(served: &Served) -> Option<String> {
    served
        .stdout_lines
        .iter()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("bh_op_")).map(str::to_owned))
}

#[tokio::test]
async fn first_start_prints_an_operator_key_once_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let served = serve(&["--data-dir", data], &[]);
    let key = operator_key(&served).expect("first start prints the operator key");
    let http = reqwest::Client::new();
    let res = http.get(format!("{}/v1/tenants", served.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(terminate(served).success(), "SIGTERM is a clean exit");

    // A second start on the same store prints no new key, and the old one works.
    let served = serve(&["--data-dir", data], &[]);
    assert_eq!(operator_key(&served), None, "{:?}", served.stdout_lines);
    let res = http.get(format!("{}/v1/tenants", served.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(terminate(served).success());
}

#[tokio::test]
async fn operator_key_and_data_dir_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("bh_op_0123456789ab_{}", "k".repeat(43));
    let served =
        serve(&[], &[("BULKHEAD_OPERATOR_KEY", &key), ("BULKHEAD_DATA_DIR", dir.path().to_str().unwrap())]);
    assert_eq!(operator_key(&served), None, "a configured key is not printed");
    let res = reqwest::Client::new()
        .get(format!("{}/v1/tenants", served.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(terminate(served).success());
    assert!(dir.path().join("bulkhead.db").exists(), "the store went where BULKHEAD_DATA_DIR said");

    let bad = serve_fails(&[
        ("BULKHEAD_OPERATOR_KEY", "not-a-key"),
        ("BULKHEAD_DATA_DIR", dir.path().to_str().unwrap()),
    ]);
    assert!(bad.contains("bh_op_"), "{bad}");
}

fn serve_fails(envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn admin_commands_manage_tenants_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let ok = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", data]);
        let out = bulkhead(&all);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let created =
        ok(&["tenant", "create", "acme", "--tier", "isolated", "--metadata", r#"{"plan":"gold"}"#, "--json"]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created[0]["tier"], "isolated");
    assert!(ok(&["tenant", "list"]).contains("acme"));
    let key = ok(&["key", "create", "--tenant", "acme", "--scope", "tenant_admin", "--json"]);
    let key: serde_json::Value = serde_json::from_str(&key).unwrap();
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("bh_tk_"));
    assert!(!ok(&["key", "list", "--tenant", "acme"]).contains(&secret), "listing never shows secrets");

    let failed = bulkhead(&["tenant", "create", "Bad Name", "--data-dir", data]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("invalid_request"));

    // The key made at the console works against the server on the same store.
    let served = serve(&["--data-dir", data], &[]);
    let res = reqwest::Client::new()
        .get(format!("{}/v1/keys", served.base))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    ok(&["tenant", "suspend", "acme"]);
    let res = reqwest::Client::new()
        .get(format!("{}/v1/keys", served.base))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(terminate(served).success());

    let refused = bulkhead(&["tenant", "delete", "acme", "--data-dir", data]);
    assert!(!refused.status.success(), "delete needs --yes");
    ok(&["tenant", "delete", "acme", "--yes"]);
    assert!(!ok(&["tenant", "list"]).contains("acme"));
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["tenant", "--help"],
        &["tenant", "create", "--help"],
        &["tenant", "list", "--help"],
        &["tenant", "show", "--help"],
        &["tenant", "update", "--help"],
        &["tenant", "suspend", "--help"],
        &["tenant", "resume", "--help"],
        &["tenant", "delete", "--help"],
        &["key", "--help"],
        &["key", "create", "--help"],
        &["key", "list", "--help"],
        &["key", "revoke", "--help"],
    ] {
        let out = bulkhead(args);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"), "{args:?}");
    }
}

#[tokio::test]
async fn migrate_works_on_postgres() {
    if bulkhead_store::testing::pg_admin_url().is_none() {
        return;
    }
    let url = bulkhead_store::testing::fresh_pg_database().await.unwrap();
    for _ in 0..2 {
        let out = bulkhead(&["migrate", "--database-url", &url]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("postgres"));
    }
}

/// A tenant on a served store, through the API; returns (tenant id, app key).
pub(crate) async fn served_tenant(base: &str, op: &str, name: &str) -> (String, String) {
    let http = reqwest::Client::new();
    let t: serde_json::Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(op)
        .json(&serde_json::json!({"name": name}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = t["id"].as_str().unwrap().to_owned();
    let k: serde_json::Value = http
        .post(format!("{base}/v1/tenants/{id}/keys"))
        .bearer_auth(op)
        .json(&serde_json::json!({"name": "app", "scope": "tenant_admin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (id, k["secret"].as_str().unwrap().to_owned())
}

pub(crate) fn fixed_operator_key() -> String {
    format!("bh_op_00000000abcd_{}", "s".repeat(43))
}

/// Acknowledged usage events survive `kill -9` of the server: clients
/// ingest concurrently, the process is killed mid-stream, and after a
/// restart every event that was answered 200 is in the ledger.
async fn acknowledged_events_survive_kill_9(store_args: Vec<String>) {
    let op = fixed_operator_key();
    let args: Vec<&str> = store_args.iter().map(String::as_str).collect();
    let served = serve(&args, &[("BULKHEAD_OPERATOR_KEY", &op)]);
    let base = served.base.clone();
    let (tenant, key) = served_tenant(&base, &op, "durable").await;

    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (base, op, tenant, acked) = (base.clone(), op.clone(), tenant.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0.. {
                let ids: Vec<String> = (0..5).map(|j| format!("c{c}-r{i}-e{j}")).collect();
                let events: Vec<_> = ids
                    .iter()
                    .map(|id| serde_json::json!({"id": id, "kind": "llm", "name": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 1}))
                    .collect();
                let sent = http
                    .post(format!("{base}/v1/usage/events"))
                    .bearer_auth(&op)
                    .header("x-tenant-id", &tenant)
                    .json(&serde_json::json!({"events": events}))
                    .send()
                    .await;
                match sent {
                    Ok(res) if res.status() == 200 => acked.lock().unwrap().extend(ids),
                    // The server died under us: whatever was not answered is not acknowledged.
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut served = served;
    served.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    served.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the test should ingest a fair amount before the kill: {}", acked.len());

    let served = serve(&args, &[("BULKHEAD_OPERATOR_KEY", &op)]);
    let csv = reqwest::Client::new()
        .get(format!("{}/v1/usage/export", served.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stored: std::collections::HashSet<&str> =
        csv.lines().skip(1).map(|l| l.split(',').nth(2).unwrap()).collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(id.as_str())).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!("kill -9: {} acknowledged, {} stored, none lost", acked.len(), stored.len());
    assert!(terminate(served).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    acknowledged_events_survive_kill_9(vec!["--data-dir".into(), dir.path().to_str().unwrap().into()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_on_postgres() {
    if bulkhead_store::testing::pg_admin_url().is_none() {
        return;
    }
    let url = bulkhead_store::testing::fresh_pg_database().await.unwrap();
    acknowledged_events_survive_kill_9(vec!["--database-url".into(), url]).await;
}

pub(crate) fn redis_url() -> Option<String> {
    match std::env::var("BULKHEAD_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("BULKHEAD_TEST_SKIP_REDIS").as_deref() == Ok("1") => None,
        _ => panic!(
            "Redis tests need BULKHEAD_TEST_REDIS_URL: run `bash scripts/test.sh`, which starts one, \
             or set BULKHEAD_TEST_SKIP_REDIS=1 to leave Redis out deliberately"
        ),
    }
}

/// Two server processes sharing one store and one Redis hold a tenant to
/// one requests-per-minute limit, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_redis_enforce_one_limit() {
    let Some(redis) = redis_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let op = fixed_operator_key();
    // Buckets are keyed by tenant id, and the tenant is new: no state is shared with other runs.
    let envs = [("BULKHEAD_OPERATOR_KEY", op.as_str()), ("BULKHEAD_REDIS_URL", redis.as_str())];
    let one = serve(&["--data-dir", data], &envs);
    let two = serve(&["--data-dir", data], &envs);
    let (tenant, key) = served_tenant(&one.base, &op, "shared-limit").await;
    const RPM: u64 = 600;
    let res = reqwest::Client::new()
        .put(format!("{}/v1/tenants/{tenant}/limits", one.base))
        .bearer_auth(&op)
        .json(&serde_json::json!({"requests_per_minute": RPM}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let started = std::time::Instant::now();
    let run_for = Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let base = if i % 2 == 0 { one.base.clone() } else { two.base.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut limited) = (0u64, 0u64);
            while started.elapsed() < run_for {
                let res = http.get(format!("{base}/v1/tenant")).bearer_auth(&key).send().await.unwrap();
                match res.status().as_u16() {
                    200 => ok += 1,
                    429 => limited += 1,
                    s => panic!("unexpected status {s}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        limited += l;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // GCRA with a one-minute burst: the burst plus the refill over the run.
    let expected = RPM as f64 + RPM as f64 / 60.0 * elapsed;
    eprintln!(
        "two replicas: {ok} admitted, {limited} refused in {elapsed:.2} s; one limiter allows {expected:.0}"
    );
    assert!(limited > 0, "the load must exceed the limit for the test to mean anything");
    let off = (ok as f64 - expected).abs() / expected;
    assert!(off <= 0.02, "admitted {ok}, expected {expected:.0} (off by {:.1} %)", off * 100.0);
    assert!(terminate(one).success());
    assert!(terminate(two).success());
}

/// A slow upstream in OpenAI's wire format, for runs that take a while.
async fn slow_upstream(delay: Duration) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || async move {
            tokio::time::sleep(delay).await;
            axum::Json(serde_json::json!({
                "id": "up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "finally"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

/// A run whose worker process is killed mid-run is recovered when its lease
/// lapses and finished by another process — not left running forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_the_death_of_its_worker() {
    let upstream = slow_upstream(Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let op = fixed_operator_key();
    let envs = [
        ("BULKHEAD_OPERATOR_KEY", op.as_str()),
        ("BULKHEAD_AGENTS__LEASE_SECS", "2"),
        ("BULKHEAD_MODELS__PROVIDERS__OPENAI__BASE_URL", upstream.as_str()),
        ("BULKHEAD_MODELS__PROVIDERS__OPENAI__MAX_RETRIES", "0"),
    ];
    let mut first = serve(&["--data-dir", data], &envs);
    let (_, key) = served_tenant(&first.base, &op, "resilient").await;
    let http = reqwest::Client::new();
    let post = |url: String, body: serde_json::Value| http.post(url).bearer_auth(&key).json(&body).send();
    let agent: serde_json::Value = post(
        format!("{}/v1/agents", first.base),
        serde_json::json!({"name": "a", "spec": {"model": "gpt-4o-mini"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let thread: serde_json::Value = post(format!("{}/v1/threads", first.base), serde_json::json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run: serde_json::Value = post(
        format!("{}/v1/threads/{}/runs", first.base, thread["id"].as_str().unwrap()),
        serde_json::json!({"agent_id": agent["id"], "message": "hello"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let run_url = |base: &str| format!("{base}/v1/runs/{}", run["id"].as_str().unwrap());
    let status = |v: &serde_json::Value| v["status"].as_str().unwrap_or("").to_owned();
    let mut seen = String::new();
    for _ in 0..100 {
        let r: serde_json::Value =
            http.get(run_url(&first.base)).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
        seen = status(&r);
        if seen == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "running");
    first.child.kill().unwrap(); // kill -9 mid-run
    first.child.wait().unwrap();

    let second = serve(&["--data-dir", data], &envs);
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        last = http.get(run_url(&second.base)).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
        if status(&last) == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&last), "completed", "{last}");
    assert_eq!(last["attempts"], 2, "claimed once by the dead worker, once by the new one");
    assert_eq!(last["output"]["content"], "finally");
    assert!(terminate(second).success());
}
