//! The `dedicated` tier: a control plane and a cell — two real servers on
//! loopback, each over its own store — with the cell registered on the
//! control plane, a tenant moved into it and back, requests proxied
//! (streams included), the cell's credential kept out of every response,
//! log line and row, and a cell that is down answered with
//! `cell_unavailable`; a dedicated tenant's delete, suspension and
//! resumption reaching its cell; a cell with another master key refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Resp, TestServer, captured_logs};

/// An OpenAI-compatible upstream that streams 20 words, one every `pace`.
async fn paced_upstream(pace: Duration) -> String {
    async fn chat(body: axum::Json<Value>, pace: Duration) -> Response {
        assert_eq!(body["stream"], true, "the test only streams");
        let stream = futures::stream::unfold(0usize, move |i| async move {
            if i > 21 {
                return None;
            }
            tokio::time::sleep(pace).await;
            let line = match i {
                0..20 => {
                    let c = json!({"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": {"content": format!("word{i} ")}, "finish_reason": null}]});
                    format!("data: {c}\n\n")
                }
                20 => {
                    let c = json!({"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}});
                    format!("data: {c}\n\n")
                }
                _ => "data: [DONE]\n\n".to_owned(),
            };
            Some((Ok::<_, std::convert::Infallible>(line), i + 1))
        });
        ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
    }
    let app =
        axum::Router::new().route("/v1/chat/completions", axum::routing::post(move |body| chat(body, pace)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

/// A cell whose `openai` provider is a paced fake upstream, with its
/// control plane's master key.
async fn start_cell(backend: &str, master_key: &str) -> TestServer {
    let mut config = bulkhead_core::config::Config::default();
    config.models.master_key = Some(master_key.to_owned());
    let openai = config.models.providers.get_mut("openai").unwrap();
    openai.base_url = paced_upstream(Duration::from_millis(100)).await;
    openai.max_retries = 0;
    TestServer::start_full(backend, config).await
}

/// Registers `cell` on `cp` as `name`.
async fn register(cp: &TestServer, cell: &TestServer, name: &str) -> Resp {
    cp.post(
        "/v1/cells",
        &cp.operator_key,
        json!({"name": name, "base_url": cell.base, "operator_key": cell.operator_key}),
    )
    .await
}

async fn move_tenant(cp: &TestServer, id: &str, body: Value) -> Value {
    let moved = cp.post(&format!("/v1/tenants/{id}/move"), &cp.operator_key, body).await;
    moved.expect(200).clone()
}

fn rows_with(rows: &[(String, String)], needle: &str) -> Vec<String> {
    rows.iter().filter(|(_, r)| r.contains(needle)).map(|(t, _)| t.clone()).collect()
}

async fn dedicated_tenant_is_served_by_its_cell(backend: &'static str) {
    let cp = TestServer::start(backend).await;
    let cell = start_cell(backend, &cp.master_key).await;
    let op = cp.operator_key.clone();
    let mut responses = Vec::new();

    // Registration: the key must be the cell's operator key, the cell must answer.
    let added = register(&cp, &cell, "eu-1").await;
    responses.push(added.text.clone());
    assert_eq!(added.expect(201)["name"], "eu-1");
    let cells = cp.get("/v1/cells", &op).await;
    responses.push(cells.text.clone());
    let listed = &cells.expect(200)["data"][0];
    assert_eq!((listed["name"].as_str(), listed["tenants"].as_i64()), (Some("eu-1"), Some(0)));
    assert!(cell.operator_key.starts_with(listed["credential_prefix"].as_str().unwrap()));
    register(&cp, &cell, "eu-1").await.expect_error(409, "conflict");
    let bad_key =
        cp.post("/v1/cells", &op, json!({"name": "eu-2", "base_url": cell.base, "operator_key": op})).await;
    bad_key.expect_error(400, "invalid_request");
    let tenant_key = cell.tenant("not-an-operator", json!({})).await.admin_key;
    let not_operator = cp
        .post("/v1/cells", &op, json!({"name": "eu-2", "base_url": cell.base, "operator_key": tenant_key}))
        .await;
    not_operator.expect_error(400, "invalid_request");
    let nowhere = cp
        .post(
            "/v1/cells",
            &op,
            json!({"name": "eu-2", "base_url": "http://127.0.0.1:9", "operator_key": cell.operator_key}),
        )
        .await;
    nowhere.expect_error(502, "cell_unavailable");

    // A dedicated tenant and a shared neighbour.
    let a = cp.tenant("dedi", json!({})).await;
    let b = cp.tenant("neighbour", json!({})).await;
    let report = move_tenant(&cp, &a.id, json!({"tier": "dedicated", "cell": "eu-1"})).await;
    assert_eq!((report["from"].as_str(), report["to"].as_str()), (Some("shared"), Some("dedicated")));
    let shown = cp.get(&format!("/v1/tenants/{}", a.id), &op).await;
    assert_eq!(
        (shown.expect(200)["tier"].as_str(), shown.body["cell"].as_str()),
        (Some("dedicated"), Some("eu-1"))
    );
    let all = cp.get("/v1/tenants", &op).await;
    responses.push(all.text.clone());
    let views = all.expect(200)["data"].as_array().unwrap().clone();
    let view = |id: &str| views.iter().find(|t| t["id"] == id).unwrap().clone();
    assert_eq!(view(&a.id)["cell"], "eu-1");
    assert!(view(&b.id)["cell"].is_null());
    cp.call(Method::DELETE, "/v1/cells/eu-1", Some(&op), None).await.expect_error(409, "conflict");

    // The tenant's own keys, through the control plane: served by the cell.
    let agent = cp
        .post(
            "/v1/agents",
            &a.admin_key,
            json!({"name": "cell-agent", "spec": {"system_prompt": "hi", "model": "builtin/scripted"}}),
        )
        .await;
    let agent_id = agent.expect(201)["id"].as_str().unwrap().to_owned();
    let thread = cp.post("/v1/threads", &a.app_key, json!({"metadata": {"k": "v"}})).await;
    let thread_id = thread.expect(201)["id"].as_str().unwrap().to_owned();
    let res = cp.http.get(format!("{}/v1/usage", cp.base)).bearer_auth(&a.admin_key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-bulkhead-cell"], "eu-1", "answered by the cell");
    // The cell enforces the key's scope itself.
    cp.post("/v1/agents", &a.app_key, json!({"name": "x", "spec": {"system_prompt": "x"}}))
        .await
        .expect_error(403, "forbidden");
    // Its rows are in the cell's store, not the control plane's.
    let (cp_rows, cell_rows) = (cp.stored_rows().await, cell.stored_rows().await);
    for id in [&agent_id, &thread_id] {
        assert!(!rows_with(&cell_rows, id).is_empty(), "{id} not in the cell");
        assert!(
            rows_with(&cp_rows, id).is_empty(),
            "{id} in the control plane: {:?}",
            rows_with(&cp_rows, id)
        );
    }

    // Cross-tenant, dedicated variant: neither side reaches the other.
    let b_thread = cp.post("/v1/threads", &b.app_key, json!({})).await;
    let b_thread = b_thread.expect(201)["id"].as_str().unwrap().to_owned();
    cp.get(&format!("/v1/threads/{b_thread}"), &a.app_key).await.expect_error(404, "not_found");
    cp.get(&format!("/v1/threads/{thread_id}"), &b.app_key).await.expect_error(404, "not_found");
    cp.get(&format!("/v1/agents/{agent_id}"), &b.admin_key).await.expect_error(404, "not_found");
    let b_list = cp.get("/v1/threads", &b.app_key).await;
    assert!(!b_list.text.contains(&thread_id));
    let a_list = cp.get("/v1/threads", &a.app_key).await;
    assert!(!a_list.text.contains(&b_thread) && a_list.text.contains(&thread_id));
    // X-Tenant-ID naming B does not reach A's cell, and the reverse.
    let as_b = cp.call_with(Method::GET, "/v1/agents", Some(&op), None, &[("x-tenant-id", &b.id)]).await;
    assert!(!as_b.expect(200).to_string().contains(&agent_id));
    let as_a = cp.call_with(Method::GET, "/v1/agents", Some(&op), None, &[("x-tenant-id", &a.id)]).await;
    assert!(as_a.expect(200).to_string().contains(&agent_id), "operator for A is forwarded: {}", as_a.text);
    // A's key at the cell sees A only; B's key is unknown there.
    cell.get(&format!("/v1/agents/{agent_id}"), &a.admin_key).await.expect(200);
    cell.get("/v1/threads", &b.app_key).await.expect_error(401, "unauthorized");

    // The operator's per-tenant settings land in the cell.
    let limits = json!({"requests_per_minute": 777});
    let put = cp.call(Method::PUT, &format!("/v1/tenants/{}/limits", a.id), Some(&op), Some(limits)).await;
    put.expect(200);
    let at_cell = cell.get(&format!("/v1/tenants/{}/limits", a.id), &cell.operator_key).await;
    assert!(at_cell.expect(200).to_string().contains("777"), "{}", at_cell.text);

    // Keys stay on the control plane and are mirrored: a new key works
    // through the proxy at once, a revoked one stops at the cell too.
    let new_key = cp.post("/v1/keys", &a.admin_key, json!({"name": "late"})).await;
    let (new_secret, new_id) = {
        let k = new_key.expect(201);
        (k["secret"].as_str().unwrap().to_owned(), k["id"].as_str().unwrap().to_owned())
    };
    cp.get("/v1/threads", &new_secret).await.expect(200);
    cp.call(Method::DELETE, &format!("/v1/keys/{new_id}"), Some(&a.admin_key), None).await.expect(200);
    cp.get("/v1/threads", &new_secret).await.expect_error(401, "unauthorized");
    cell.get("/v1/threads", &new_secret).await.expect_error(401, "unauthorized");

    // A streamed chat completion arrives through the proxy as it is made.
    let started = Instant::now();
    let res = cp
        .http
        .post(format!("{}/v1/chat/completions", cp.base))
        .bearer_auth(&a.app_key)
        .json(
            &json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-bulkhead-cell"], "eu-1");
    let mut chunks = res.bytes_stream();
    let mut first = None;
    let mut text = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        if first.is_none() && !chunk.is_empty() {
            first = Some(started.elapsed());
        }
        text.extend_from_slice(&chunk);
    }
    let (first, total) = (first.expect("some bytes"), started.elapsed());
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("word19") && text.contains("[DONE]"), "{text}");
    assert!(
        first < Duration::from_millis(1200) && total - first > Duration::from_millis(1000),
        "streamed, not buffered: first bytes after {first:?}, end after {total:?}"
    );

    // The cell's credential is in no response, row or log line.
    let secret = cell.operator_key.rsplit('_').next().unwrap().to_owned();
    for text in &responses {
        assert!(!text.contains(&secret), "a response carries the cell's key: {text}");
    }
    let rows = cp.stored_rows().await;
    assert!(rows.iter().all(|(_, r)| !r.contains(&secret)), "a row holds the cell's key in plaintext");
    assert!(rows.iter().any(|(t, _)| t == "cells"));
    assert!(!captured_logs().contains(&secret), "a log line carries the cell's key");

    // The cell goes down: a clear 502, never the control plane's own data.
    drop(cell);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = cp.get("/v1/threads", &a.app_key).await;
        if res.status == 502 {
            res.expect_error(502, "cell_unavailable");
            assert!(res.body["error"]["message"].as_str().unwrap().contains("eu-1"));
            break;
        }
        assert!(Instant::now() < deadline, "the cell is down but the control plane answered {}", res.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The neighbour is served as before.
    cp.get("/v1/threads", &b.app_key).await.expect(200);
}
both_backends!(dedicated_tenant_is_served_by_its_cell);

/// Shared → dedicated → shared while a client keeps writing through the
/// control plane: every acknowledged write is there at the end, once; both
/// moves verified per-table counts and checksums.
async fn move_into_a_cell_and_back_loses_no_write(backend: &'static str) {
    let cp = Arc::new(TestServer::start(backend).await);
    let cell = start_cell(backend, &cp.master_key).await;
    register(&cp, &cell, "c1").await.expect(201);
    let t = cp.tenant("mover", json!({})).await;
    for i in 0..5 {
        cp.post("/v1/threads", &t.app_key, json!({"metadata": {"before": i}})).await.expect(201);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (cp, key, stop) = (cp.clone(), t.app_key.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let res = cp.post("/v1/threads", &key, json!({"metadata": {"during": i}})).await;
                match res.status.as_u16() {
                    201 => acked.push(res.body["id"].as_str().unwrap().to_owned()),
                    // Refused, not acknowledged: the client knows to retry.
                    _ => refused.push(format!("{} {}", res.status.as_u16(), res.code())),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acked, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let into = move_tenant(&cp, &t.id, json!({"tier": "dedicated", "cell": "c1"})).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let back = move_tenant(&cp, &t.id, json!({"tier": "shared"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, refused) = writer.await.unwrap();

    for report in [&into, &back] {
        let threads = report["tables"].as_array().unwrap().iter().find(|s| s["table"] == "threads").unwrap();
        assert!(threads["rows"].as_u64().unwrap() >= 5, "{report}");
        assert_eq!(threads["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(report["source_purged"], true, "{report}");
    }
    assert_eq!(back["to"], "shared");
    for r in &refused {
        assert!(
            ["503 tenant_moving", "421 wrong_cell", "401 unauthorized", "404 not_found"]
                .contains(&r.as_str()),
            "unexpected refusal {r}"
        );
    }
    assert!(acked.len() > 20, "the writer kept writing: {} acked, {} refused", acked.len(), refused.len());

    // Every acknowledged thread is there, once, served here again.
    let mut seen = Vec::new();
    let mut path = "/v1/threads?limit=500".to_owned();
    loop {
        let page = cp.get(&path, &t.app_key).await.expect(200).clone();
        seen.extend(page["data"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_owned()));
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        path = format!("/v1/threads?limit=500&after={}", page["next_after"].as_str().unwrap());
    }
    assert_eq!(seen.len(), 5 + acked.len(), "{} refused: {refused:?}", refused.len());
    for id in &acked {
        assert!(seen.contains(id), "acknowledged thread {id} was lost");
    }
    let shown = cp.get(&format!("/v1/tenants/{}", t.id), &cp.operator_key).await;
    assert!(shown.expect(200)["cell"].is_null());
    // The cell kept nothing of it.
    assert!(rows_with(&cell.stored_rows().await, &t.id).iter().all(|t| t == "platform_audit_entries"));
    eprintln!(
        "moves: into pause {} ms / total {} ms, back pause {} ms / total {} ms; {} writes acked, {} refused",
        into["pause_ms"],
        into["total_ms"],
        back["pause_ms"],
        back["total_ms"],
        acked.len(),
        refused.len()
    );
}
both_backends!(move_into_a_cell_and_back_loses_no_write);

/// `bulkhead cell add|list|remove` on the store, the key read from stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_commands() {
    use std::io::Write as _;
    let cp = TestServer::start("sqlite").await;
    let cell = start_cell("sqlite", &cp.master_key).await;
    let data_dir = cp.store_config.data_dir.clone();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("BULKHEAD_MASTER_KEY", &cp.master_key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let added = run(&["cell", "add", "west", "--url", &cell.base, "--json"], Some(&cell.operator_key));
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let out = String::from_utf8_lossy(&added.stdout).into_owned();
    assert!(out.contains("\"west\"") && !out.contains(&cell.operator_key), "{out}");
    let listed = run(&["cell", "list"], None);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("west"));
    // The server sees what the command registered.
    cp.get("/v1/cells/west", &cp.operator_key).await.expect(200);
    let removed = run(&["cell", "remove", "west"], None);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    cp.get("/v1/cells/west", &cp.operator_key).await.expect_error(404, "not_found");
    let audit = cp.get("/v1/audit?action=cell.", &cp.operator_key).await;
    let actions: Vec<&str> =
        audit.expect(200)["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["cell.added", "cell.removed"], "{}", audit.text);
}

/// A tenant's status as `server`'s operator sees it.
async fn status_at(server: &TestServer, id: &str) -> String {
    let shown = server.get(&format!("/v1/tenants/{id}"), &server.operator_key).await;
    shown.expect(200)["status"].as_str().unwrap().to_owned()
}

/// Waits (up to 10 s) until the control plane finds the cell of the
/// tenant whose key is `key` down.
async fn wait_cell_down(cp: &TestServer, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cp.get("/v1/threads", key).await.status != 502 {
        assert!(Instant::now() < deadline, "the cell is down but its tenant is still served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Suspend, resume and delete of a dedicated tenant reach its cell; with
/// the cell down the status still changes here, and the delete is refused.
async fn dedicated_tenant_lifecycle_reaches_its_cell(backend: &'static str) {
    let cp = TestServer::start(backend).await;
    let cell = start_cell(backend, &cp.master_key).await;
    let op = cp.operator_key.clone();
    register(&cp, &cell, "life").await.expect(201);
    let (a, b) = (cp.tenant("gone", json!({})).await, cp.tenant("kept", json!({})).await);
    for t in [&a, &b] {
        move_tenant(&cp, &t.id, json!({"tier": "dedicated", "cell": "life"})).await;
    }
    let thread = cp.post("/v1/threads", &a.app_key, json!({})).await;
    let thread = thread.expect(201)["id"].as_str().unwrap().to_owned();

    // Suspend and resume: mirrored, so the cell's operator sees it and the
    // cell refuses the key too.
    let suspend = format!("/v1/tenants/{}/suspend", a.id);
    assert_eq!(cp.call(Method::POST, &suspend, Some(&op), None).await.expect(200)["status"], "suspended");
    assert_eq!(status_at(&cell, &a.id).await, "suspended");
    cell.get("/v1/threads", &a.app_key).await.expect_error(403, "tenant_suspended");
    let resume = format!("/v1/tenants/{}/resume", a.id);
    assert_eq!(cp.call(Method::POST, &resume, Some(&op), None).await.expect(200)["status"], "active");
    assert_eq!(status_at(&cell, &a.id).await, "active");
    cp.get(&format!("/v1/threads/{thread}"), &a.app_key).await.expect(200);

    // Delete: gone in the cell (only the platform chain's record stays),
    // and here.
    let in_cell = rows_with(&cell.stored_rows().await, &a.id);
    assert!(in_cell.iter().any(|t| t == "threads"), "{in_cell:?}");
    cp.call(Method::DELETE, &format!("/v1/tenants/{}", a.id), Some(&op), None).await.expect(204);
    for server in [&cp, &cell] {
        let shown = server.get(&format!("/v1/tenants/{}", a.id), &server.operator_key).await;
        shown.expect_error(404, "not_found");
        let rows = rows_with(&server.stored_rows().await, &a.id);
        assert!(rows.iter().all(|t| t == "platform_audit_entries"), "rows of the deleted tenant: {rows:?}");
        let rows = rows_with(&server.stored_rows().await, &thread);
        assert!(rows.is_empty(), "the deleted tenant's thread: {rows:?}");
    }
    cp.get("/v1/threads", &b.app_key).await.expect(200);

    // The cell goes down: the suspension stands here (and is logged as not
    // mirrored); the delete is refused, and the tenant kept.
    drop(cell);
    wait_cell_down(&cp, &b.app_key).await;
    let suspend = format!("/v1/tenants/{}/suspend", b.id);
    assert_eq!(cp.call(Method::POST, &suspend, Some(&op), None).await.expect(200)["status"], "suspended");
    cp.get("/v1/threads", &b.app_key).await.expect_error(403, "tenant_suspended");
    assert!(captured_logs().contains("status changed here but not in the tenant's cell"));
    let refused = cp.call(Method::DELETE, &format!("/v1/tenants/{}", b.id), Some(&op), None).await;
    refused.expect_error(502, "cell_unavailable");
    let kept = cp.get(&format!("/v1/tenants/{}", b.id), &op).await;
    assert_eq!(kept.expect(200)["cell"], "life");
    cp.get("/v1/keys", &b.admin_key).await.expect_error(403, "tenant_suspended");
}
both_backends!(dedicated_tenant_lifecycle_reaches_its_cell);

/// A cell must run with the control plane's master key: one with another
/// key is refused at registration, the key never sent either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_with_another_master_key_is_refused() {
    let cp = TestServer::start("sqlite").await;
    let other = TestServer::start("sqlite").await;
    assert_ne!(cp.master_key, other.master_key);
    let refused = register(&cp, &other, "other").await;
    refused.expect_error(400, "invalid_request");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("master key"), "{}", refused.text);
    cp.get("/v1/cells/other", &cp.operator_key).await.expect_error(404, "not_found");
    // What the cell offers: a challenge it cannot open is a 400.
    let garbage = json!({"ciphertext": "AAAA", "nonce": "AAAA"});
    other
        .post("/v1/master-key/check", &other.operator_key, garbage)
        .await
        .expect_error(400, "invalid_request");
    // The same cell, given the control plane's key, is accepted.
    let same = start_cell("sqlite", &cp.master_key).await;
    register(&cp, &same, "same").await.expect(201);
}

/// `bulkhead tenant move NAME --tier dedicated --cell NAME` asks the
/// running control plane; without `--url` it is refused. `bulkhead tenant
/// delete` then deletes it in the cell too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_move_into_a_cell_from_the_command_line() {
    let cp = TestServer::start("sqlite").await;
    let cell = start_cell("sqlite", &cp.master_key).await;
    register(&cp, &cell, "cli-cell").await.expect(201);
    let t = cp.tenant("by-cli", json!({})).await;
    cp.post("/v1/threads", &t.app_key, json!({})).await.expect(201);
    let data_dir = cp.store_config.data_dir.clone();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("BULKHEAD_MASTER_KEY", &cp.master_key)
            .env("BULKHEAD_OPERATOR_KEY", &cp.operator_key)
            .output()
            .unwrap()
    };

    let local = run(&["tenant", "move", "by-cli", "--tier", "dedicated", "--cell", "cli-cell"]);
    let stderr = String::from_utf8_lossy(&local.stderr);
    assert!(!local.status.success() && stderr.contains("--url"), "{stderr}");
    let moved = run(&[
        "tenant",
        "move",
        "by-cli",
        "--tier",
        "dedicated",
        "--cell",
        "cli-cell",
        "--url",
        &cp.base,
        "--json",
    ]);
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    let report: Value = serde_json::from_slice(&moved.stdout).unwrap();
    assert_eq!((report["from"].as_str(), report["to"].as_str()), (Some("shared"), Some("dedicated")));
    let shown = cp.get(&format!("/v1/tenants/{}", t.id), &cp.operator_key).await;
    assert_eq!(shown.expect(200)["cell"], "cli-cell");
    assert!(rows_with(&cell.stored_rows().await, &t.id).iter().any(|t| t == "threads"));

    let deleted = run(&["tenant", "delete", "by-cli", "--yes"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    cell.get(&format!("/v1/tenants/{}", t.id), &cell.operator_key).await.expect_error(404, "not_found");
    let rows = rows_with(&cell.stored_rows().await, &t.id);
    assert!(rows.iter().all(|t| t == "platform_audit_entries"), "{rows:?}");
    cp.get(&format!("/v1/tenants/{}", t.id), &cp.operator_key).await.expect_error(404, "not_found");
}

/// A resume whose mirror failed leaves the cell holding the tenant
/// suspended: the proxy notices the cell's `tenant_suspended` for a tenant
/// active here, mirrors the status again and sends the request once more,
/// so the tenant's next request works without an operator.
async fn status_drift_is_repaired_by_the_proxy(backend: &'static str) {
    let cp = TestServer::start(backend).await;
    let cell = start_cell(backend, &cp.master_key).await;
    register(&cp, &cell, "drift").await.expect(201);
    let t = cp.tenant("drifter", json!({})).await;
    move_tenant(&cp, &t.id, json!({"tier": "dedicated", "cell": "drift"})).await;

    // As after a resume that did not reach the cell: active here, suspended there.
    let suspend = format!("/v1/tenants/{}/suspend", t.id);
    cell.call(Method::POST, &suspend, Some(&cell.operator_key), None).await.expect(200);
    assert_eq!(
        (status_at(&cp, &t.id).await, status_at(&cell, &t.id).await),
        ("active".into(), "suspended".into())
    );
    cell.get("/v1/threads", &t.app_key).await.expect_error(403, "tenant_suspended");

    // A request with a body is sent again after the re-mirror, and succeeds.
    let created = cp.post("/v1/threads", &t.app_key, json!({"metadata": {"k": "drift"}})).await;
    let id = created.expect(201)["id"].as_str().unwrap().to_owned();
    assert!(rows_with(&cell.stored_rows().await, &id).iter().any(|t| t == "threads"));
    assert_eq!(status_at(&cell, &t.id).await, "active");
    cp.get(&format!("/v1/threads/{id}"), &t.app_key).await.expect(200);
    assert!(captured_logs().contains("status re-mirrored"));

    // Again, with a bodiless request.
    cell.call(Method::POST, &suspend, Some(&cell.operator_key), None).await.expect(200);
    cp.get("/v1/threads", &t.app_key).await.expect(200);
    assert_eq!(status_at(&cell, &t.id).await, "active");

    // Suspended here too: refused here, and nothing is re-mirrored.
    cp.call(Method::POST, &suspend, Some(&cp.operator_key), None).await.expect(200);
    cp.get("/v1/threads", &t.app_key).await.expect_error(403, "tenant_suspended");
    assert_eq!(status_at(&cell, &t.id).await, "suspended");
}
both_backends!(status_drift_is_repaired_by_the_proxy);

/// Records usage events for `tenant` as `server`'s operator.
async fn ingest(server: &TestServer, tenant: &str, body: Value) -> Resp {
    let key = server.operator_key.clone();
    server
        .call_with(Method::POST, "/v1/usage/events", Some(&key), Some(body), &[("x-tenant-id", tenant)])
        .await
}

/// The operator's platform views include the tenants placed in cells — and
/// only those of a cell's tenants — and name a cell that does not answer.
async fn platform_views_include_cells(backend: &'static str) {
    let cp = TestServer::start(backend).await;
    let cell = start_cell(backend, &cp.master_key).await;
    let op = cp.operator_key.clone();
    register(&cp, &cell, "views").await.expect(201);
    let (a, local) = (cp.tenant("in-cell", json!({})).await, cp.tenant("at-home", json!({})).await);
    move_tenant(&cp, &a.id, json!({"tier": "dedicated", "cell": "views"})).await;
    // A tenant of the cell's own, not the control plane's.
    let stranger = cell.tenant("strangers", json!({})).await;

    let event = |id: &str, tokens: i64| {
        json!({"events": [{"id": id, "kind": "llm", "name": "gpt-4o-mini", "input_tokens": tokens,
            "output_tokens": 1, "cost_usd": "0.5"}]})
    };
    // Through the proxy for the dedicated tenant; directly for the others.
    let through = ingest(&cp, &a.id, event("e-a", 100)).await;
    assert_eq!(through.expect(200)["recorded"], 1);
    ingest(&cp, &local.id, event("e-local", 10)).await.expect(200);
    ingest(&cell, &stranger.id, event("e-stranger", 1000)).await.expect(200);

    let usage = cp.get("/v1/usage?group_by=tenant", &op).await;
    let rows = usage.expect(200)["data"].as_array().unwrap().clone();
    let row = |id: &str| rows.iter().find(|r| r["tenant_id"] == id).cloned();
    assert_eq!(row(&a.id).expect("the dedicated tenant's usage")["input_tokens"], 100, "{}", usage.text);
    assert_eq!(row(&local.id).unwrap()["input_tokens"], 10);
    assert!(row(&stranger.id).is_none(), "a tenant of the cell's own: {}", usage.text);
    assert!(usage.body.get("missing_cells").is_none(), "{}", usage.text);
    // Without a tenant group, the cell's rows merge into the same groups.
    let total = cp.get("/v1/usage?group_by=model", &op).await;
    let total = total.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(total.len(), 1, "{total:?}");
    assert_eq!((total[0]["input_tokens"].as_i64(), total[0]["events"].as_i64()), (Some(110), Some(2)));
    assert_eq!(total[0]["cost_usd"], "1.00");
    cp.get("/v1/usage?group_by=nonsense", &op).await.expect_error(400, "invalid_request");

    // The overview: the cell's refusals of the dedicated tenant's requests.
    let limits = json!({"requests_per_minute": 1});
    cp.call(Method::PUT, &format!("/v1/tenants/{}/limits", a.id), Some(&op), Some(limits)).await.expect(200);
    let mut limited = false;
    for _ in 0..5 {
        limited |= cp.get("/v1/threads", &a.app_key).await.status == 429;
    }
    assert!(limited, "the cell enforces the limit");
    let overview = cp.get("/v1/overview", &op).await;
    let tenants = overview.expect(200)["tenants"].as_array().unwrap().clone();
    let seen = tenants.iter().find(|r| r["tenant_id"] == a.id.as_str()).expect("the dedicated tenant");
    assert!(seen["refusals"]["rate_limit"].as_u64().unwrap() >= 1, "{}", overview.text);
    assert!(overview.body.get("missing_cells").is_none());

    // The cell goes down: both views answer, naming it.
    drop(cell);
    wait_cell_down(&cp, &a.app_key).await;
    let usage = cp.get("/v1/usage?group_by=tenant", &op).await;
    assert_eq!(usage.expect(200)["missing_cells"], json!(["views"]), "{}", usage.text);
    assert!(usage.text.contains(&local.id) && !usage.text.contains(&a.id));
    let overview = cp.get("/v1/overview", &op).await;
    assert_eq!(overview.expect(200)["missing_cells"], json!(["views"]), "{}", overview.text);
}
both_backends!(platform_views_include_cells);
