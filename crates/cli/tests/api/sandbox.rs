//! Code execution through the API and through an agent's `run_code`, on the
//! real bubblewrap sandbox (`scripts/sandbox.sh` installs it): off until the
//! operator enables it, refusals run nothing and are audited, executions
//! are audited (a digest of the code, never the code) and metered.
//! The hostile suite — escapes, bombs, network — is crates/sandbox/tests.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{TestServer, canary};

async fn audit_actions(server: &TestServer, key: &str) -> Vec<Value> {
    let res = server.get("/v1/audit?action=sandbox.&limit=100", key).await;
    res.expect(200)["data"].as_array().unwrap().clone()
}

async fn executions_follow_the_policy(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("coder", json!({})).await;
    let run = |body: Value| {
        let server = &server;
        let key = t.app_key.clone();
        async move { server.post("/v1/sandbox/executions", &key, body).await }
    };
    let secret_code = canary("code");

    // Off by default: refused, audited, nothing ran.
    let res = run(json!({"language": "python", "code": format!("print('{secret_code}')")})).await;
    res.expect_error(403, "forbidden");
    assert_eq!(res.body["error"]["details"]["refusal"], "sandbox_disabled");
    let own = server.get("/v1/sandbox/policy", &t.app_key).await;
    assert_eq!(own.expect(200)["policy"]["enabled"], false);

    // The operator enables it for this tenant, python only, small limits.
    let policy = json!({"enabled": true, "languages": ["python"], "max_code_bytes": 2000,
                        "cpu_seconds": 2, "max_timeout_ms": 5000, "default_timeout_ms": 5000});
    let path = format!("/v1/tenants/{}/sandbox", t.id);
    server.call(Method::PUT, &path, Some(&server.operator_key), Some(policy)).await.expect(200);
    let bad = json!({"enabled": true, "cpu_seconds": 0, "surprise": 1});
    server
        .call(Method::PUT, &path, Some(&server.operator_key), Some(bad))
        .await
        .expect_error(400, "invalid_request");
    server
        .call(Method::PUT, &path, Some(&t.admin_key), Some(json!({"enabled": true})))
        .await
        .expect_error(403, "forbidden");

    let res = run(json!({
        "language": "python",
        "code": format!("import sys\nprint('{secret_code}'[:6], sys.stdin.read().strip(), open('data.txt').read())"),
        "stdin": "from stdin",
        "files": [{"name": "data.txt", "content": "from a file"}]
    }))
    .await;
    let out = res.expect(200).clone();
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "canary from stdin from a file", "{out}");
    assert_eq!((out["exit_code"].as_i64(), out["backend"].as_str()), (Some(0), Some("bubblewrap")));

    // Refusals, each with its reason; nothing runs.
    for (body, status, code, refusal) in [
        (json!({"language": "bash", "code": "echo hi"}), 403, "forbidden", "language_not_allowed"),
        (
            json!({"language": "python", "code": "x = 1\n".repeat(400)}),
            413,
            "payload_too_large",
            "code_too_large",
        ),
        (
            json!({"language": "python", "code": "print(1)", "timeout_ms": 60000}),
            400,
            "invalid_request",
            "timeout_too_long",
        ),
        (json!({"language": "python", "code": ""}), 400, "invalid_request", "empty_code"),
    ] {
        let res = run(body).await;
        res.expect_error(status, code);
        assert_eq!(res.body["error"]["details"]["refusal"], refusal, "{}", res.text);
    }
    run(json!({"language": "cobol", "code": "x"})).await.expect_error(400, "invalid_request");
    run(json!({"language": "python", "code": "x", "files": [{"name": "a", "content": "x", "content_base64": "eA=="}]}))
        .await
        .expect_error(400, "invalid_request");

    // A runaway loop is stopped by a limit, and that is an outcome, not an error.
    let res = run(json!({"language": "python", "code": "while True: pass"})).await;
    let out = res.expect(200).clone();
    assert!(out["limit_exceeded"] == "cpu_time" || out["timed_out"] == true, "{out}");
    // No network in there.
    let res = run(json!({"language": "python", "code":
        "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('connected')\nexcept OSError as e:\n    print('no network')"})).await;
    assert_eq!(res.expect(200)["stdout"].as_str().unwrap().trim(), "no network");

    // Audited: refusals and executions, with a digest of the code, never the code.
    let entries = audit_actions(&server, &t.admin_key).await;
    let refused = entries.iter().filter(|e| e["action"] == "sandbox.refused").count();
    let executed = entries.iter().filter(|e| e["action"] == "sandbox.executed").count();
    assert!(refused >= 5 && executed >= 3, "{entries:?}");
    assert!(entries.iter().all(|e| e["details"]["code_sha256"].as_str().is_some_and(|d| d.len() == 64)));
    let rows = server.stored_rows().await;
    assert!(!rows.iter().any(|(_, row)| row.contains(&secret_code)), "the code was stored somewhere");
    // Metered as CPU time.
    let usage = server.get("/v1/usage?group_by=kind", &t.admin_key).await;
    let rows = usage.expect(200)["data"].as_array().unwrap().clone();
    assert!(rows.iter().any(|r| r["kind"] == "sandbox" && r["events"].as_i64().unwrap() >= 3), "{rows:?}");

    // Another tenant's policy is its own (still off), and not the operator's to read by a tenant key.
    let b = server.tenant("other-coder", json!({})).await;
    let res = server
        .post("/v1/sandbox/executions", &b.app_key, json!({"language": "python", "code": "print(1)"}))
        .await;
    assert_eq!(res.body["error"]["details"]["refusal"], "sandbox_disabled");
    server.get(&path, &b.admin_key).await.expect_error(403, "forbidden");
}
both_backends!(executions_follow_the_policy);

async fn agents_run_code(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("agent-coder", json!({})).await;
    let path = format!("/v1/tenants/{}/sandbox", t.id);
    let spec = json!({"model": "builtin/scripted", "tools": ["run_code"]});
    let agent = server.post("/v1/agents", &t.admin_key, json!({"name": "coder", "spec": spec})).await;
    let agent = agent.expect(201)["id"].as_str().unwrap().to_owned();
    let message = "call run_code {\"language\": \"python\", \"code\": \"print(6*7)\"}";

    let mut answers = Vec::new();
    for enabled in [false, true] {
        server
            .call(Method::PUT, &path, Some(&server.operator_key), Some(json!({"enabled": enabled})))
            .await
            .expect(200);
        let thread = server.post("/v1/threads", &t.app_key, json!({})).await;
        let thread = thread.expect(201)["id"].as_str().unwrap().to_owned();
        let run = server
            .post(
                &format!("/v1/threads/{thread}/runs"),
                &t.app_key,
                json!({"agent_id": agent, "mode": "sync", "message": message}),
            )
            .await;
        assert_eq!(run.expect(200)["status"], "completed", "{}", run.text);
        let messages = server.get(&format!("/v1/threads/{thread}/messages"), &t.app_key).await;
        let messages = messages.expect(200)["data"].as_array().unwrap().clone();
        let tool = messages.iter().find(|m| m["role"] == "tool").expect("a tool message").clone();
        answers.push(tool["content"].as_str().unwrap().to_owned());
    }
    // Off: the model is told it was refused; on: it gets the output.
    assert!(answers[0].contains("sandbox_disabled"), "{}", answers[0]);
    assert!(answers[1].contains("42") && answers[1].contains("exit code 0"), "{}", answers[1]);
    let entries = audit_actions(&server, &t.admin_key).await;
    assert!(
        entries.iter().any(|e| e["action"] == "sandbox.refused" && e["actor"] == "system"),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["action"] == "sandbox.executed" && e["actor"] == "system"),
        "{entries:?}"
    );
}
both_backends!(agents_run_code);
