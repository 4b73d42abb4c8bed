//! The audit log end to end: entries for each hooked action with the right
//! actor and no secret anywhere; tampering (done with the owner's rights)
//! found by `GET /v1/audit/verify` and by `bulkhead audit verify`'s exit
//! code; concurrent appends; the bound on auth-failure entries; who may
//! read which chain.

use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{TestServer, TestTenant, canary};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// Every entry of the chain the caller sees (`headers` may name a tenant).
async fn entries(server: &TestServer, key: &str, headers: &[(&str, &str)]) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/v1/audit?limit=7&after={after}");
        let res = server.call_with(Method::GET, &path, Some(key), None, headers).await;
        let page = res.expect(200).clone();
        let data = page["data"].as_array().unwrap();
        all.extend(data.iter().cloned());
        if !page["has_more"].as_bool().unwrap() {
            assert!(page["next_after"].is_null());
            return all;
        }
        after = page["next_after"].as_i64().unwrap();
    }
}

fn find<'a>(entries: &'a [Value], action: &str, target: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["action"] == action && e["target"] == target)
        .unwrap_or_else(|| panic!("no {action} on {target:?} in {entries:#?}"))
}

/// The operator key's id (the one generated at start-up).
async fn operator_key_id(server: &TestServer) -> String {
    let keys = server.get("/v1/operator-keys", &server.operator_key).await;
    let prefix = server.operator_key.split('_').take(3).collect::<Vec<_>>().join("_");
    keys.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["prefix"] == prefix.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A key with its last character changed: right prefix, wrong secret.
fn wrong_secret(key: &str) -> String {
    let mut k = key.to_owned();
    let last = k.pop().unwrap();
    k.push(if last == 'A' { 'B' } else { 'A' });
    k
}

async fn hooked_actions_are_recorded_with_their_actor(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let op = server.operator_key.clone();
    let op_actor = format!("operator:{}", operator_key_id(&server).await);
    let a = server.tenant("acme", json!({})).await;
    let admin_actor = format!("key:{}", a.admin_key_id);
    let tenant_path = |what: &str| format!("/v1/tenants/{}/{what}", a.id);
    let mut secrets = vec![op.clone(), a.admin_key.clone(), a.app_key.clone()];

    // The tenant admin: a key made and revoked, model config, a provider key put and deleted.
    let made = server.post("/v1/keys", &a.admin_key, json!({"name": "ci", "scope": "tenant_app"})).await;
    let made = made.expect(201).clone();
    secrets.push(made["secret"].as_str().unwrap().to_owned());
    let made_id = made["id"].as_str().unwrap();
    server.call(Method::DELETE, &format!("/v1/keys/{made_id}"), Some(&a.admin_key), None).await.expect(200);
    let cfg = json!({"aliases": {"fast": "builtin/scripted"}});
    server.call(Method::PUT, "/v1/model-config", Some(&a.admin_key), Some(cfg)).await.expect(200);
    let provider_secret = canary("sk-provider");
    secrets.push(provider_secret.clone());
    let put = json!({"api_key": provider_secret});
    server.call(Method::PUT, "/v1/provider-keys/openai", Some(&a.admin_key), Some(put)).await.expect(200);
    server.call(Method::DELETE, "/v1/provider-keys/openai", Some(&a.admin_key), None).await.expect(204);

    // The operator on the tenant's paths: budget, limits, pricing, allowed models, tier, status.
    let budget = json!({"monthly_limit_usd": "10.00"});
    server.call(Method::PUT, &tenant_path("budget"), Some(&op), Some(budget)).await.expect(200);
    server.call(Method::DELETE, &tenant_path("budget"), Some(&op), None).await.expect(204);
    let limits = json!({"requests_per_minute": 321});
    server.call(Method::PUT, &tenant_path("limits"), Some(&op), Some(limits)).await.expect(200);
    server
        .call(Method::PUT, &tenant_path("pricing"), Some(&op), Some(json!({"markup_bps": 5})))
        .await
        .expect(200);
    let allowed = json!({"allowed": ["builtin/scripted"]});
    server.call(Method::PUT, &tenant_path("models"), Some(&op), Some(allowed)).await.expect(200);
    let tier = json!({"tier": "isolated"});
    server.call(Method::PATCH, &format!("/v1/tenants/{}", a.id), Some(&op), Some(tier)).await.expect(200);
    server.post(&tenant_path("suspend"), &op, json!({})).await.expect(200);
    server.post(&tenant_path("resume"), &op, json!({})).await.expect(200);

    // The operator acting for the tenant with X-Tenant-ID.
    let as_a = [("x-tenant-id", a.id.as_str())];
    let by_op = server
        .call_with(Method::POST, "/v1/keys", Some(&op), Some(json!({"name": "by-operator"})), &as_a)
        .await;
    let by_op = by_op.expect(201).clone();
    secrets.push(by_op["secret"].as_str().unwrap().to_owned());
    server.call_with(Method::GET, "/v1/keys", Some(&op), None, &as_a).await.expect(200);

    // Operator keys.
    let op_key = server.post("/v1/operator-keys", &op, json!({"name": "backup"})).await;
    let op_key = op_key.expect(201).clone();
    secrets.push(op_key["secret"].as_str().unwrap().to_owned());
    let op_key_id = op_key["id"].as_str().unwrap();
    server.call(Method::DELETE, &format!("/v1/operator-keys/{op_key_id}"), Some(&op), None).await.expect(200);

    // Refused keys: a wrong secret and a revoked key of A's, an unknown prefix, garbage.
    let wrong = wrong_secret(&a.app_key);
    let revoked = made["secret"].as_str().unwrap().to_owned();
    let unknown = format!("bh_tk_0123456789ab_{}", "x".repeat(43));
    for key in [&wrong, &revoked, &unknown, &"not-a-key".to_owned()] {
        server.get("/v1/tenant", key).await.expect_error(401, "unauthorized");
    }
    secrets.extend([wrong.clone(), unknown.clone()]);

    // A's chain, as its admin reads it.
    let chain = entries(&server, &a.admin_key, &[]).await;
    assert!(chain.iter().all(|e| e["chain"] == a.id.as_str()), "{chain:#?}");
    let seqs: Vec<i64> = chain.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=chain.len() as i64).collect::<Vec<_>>());
    let actor_of = |action: &str, target: &str| {
        let e = find(&chain, action, target);
        (e["actor"].as_str().unwrap().to_owned(), e["via_operator"].as_bool().unwrap())
    };
    let tenant_target = format!("tenant:{}", a.id);
    assert_eq!(actor_of("tenant.created", &tenant_target), (op_actor.clone(), true));
    assert_eq!(actor_of("key.created", &format!("key:{}", a.admin_key_id)), (op_actor.clone(), true));
    assert_eq!(actor_of("key.created", &format!("key:{made_id}")), (admin_actor.clone(), false));
    assert_eq!(actor_of("key.revoked", &format!("key:{made_id}")), (admin_actor.clone(), false));
    assert_eq!(actor_of("config.updated", "model_config"), (admin_actor.clone(), false));
    assert_eq!(actor_of("secret.put", "provider_key:openai"), (admin_actor.clone(), false));
    assert_eq!(actor_of("secret.deleted", "provider_key:openai"), (admin_actor.clone(), false));
    for target in ["budget", "limits", "pricing", "allowed_models"] {
        assert_eq!(actor_of("config.updated", target), (op_actor.clone(), true), "{target}");
    }
    for action in ["tenant.tier_changed", "tenant.suspended", "tenant.resumed"] {
        assert_eq!(actor_of(action, &tenant_target), (op_actor.clone(), true), "{action}");
    }
    let by_op_id = by_op["id"].as_str().unwrap();
    assert_eq!(actor_of("key.created", &format!("key:{by_op_id}")), (op_actor.clone(), true));
    let request = find(&chain, "operator.request", "POST /v1/keys");
    assert_eq!(
        (request["actor"].as_str(), request["outcome"].as_str()),
        (Some(op_actor.as_str()), Some("success"))
    );
    assert_eq!(request["details"]["status"], 201);
    assert!(
        !chain.iter().any(|e| e["action"] == "operator.request" && e["target"] == "GET /v1/keys"),
        "reads are not requests that change anything"
    );
    let tier = find(&chain, "tenant.tier_changed", &tenant_target);
    assert_eq!(
        (tier["details"]["from"].as_str(), tier["details"]["to"].as_str()),
        (Some("shared"), Some("isolated"))
    );
    let put = find(&chain, "secret.put", "provider_key:openai");
    assert_eq!(put["details"], json!({"kind": "provider_key", "name": "openai"}));
    let made_entry = find(&chain, "key.created", &format!("key:{made_id}"));
    assert_eq!(made_entry["details"]["prefix"], made["prefix"]);
    // Refusals of A's keys are in A's chain, by the system, never with the presented key.
    let app_prefix = a.app_key.split('_').take(3).collect::<Vec<_>>().join("_");
    let wrong_entry = find(&chain, "auth.failed", &format!("key:{app_prefix}"));
    assert_eq!(
        (wrong_entry["actor"].as_str(), wrong_entry["outcome"].as_str()),
        (Some("system"), Some("denied"))
    );
    assert_eq!(wrong_entry["details"]["reason"], "invalid_secret");
    assert_eq!(wrong_entry["details"]["key_id"], a.app_key_id.as_str());
    let revoked_entry = find(&chain, "auth.failed", &format!("key:{}", made["prefix"].as_str().unwrap()));
    assert_eq!(revoked_entry["details"]["reason"], "revoked");

    // The operator reads the same chain with X-Tenant-ID, and the platform chain without.
    assert_eq!(entries(&server, &op, &as_a).await, chain);
    let platform = entries(&server, &op, &[]).await;
    assert!(platform.iter().all(|e| e["chain"] == "platform"));
    let created = find(&platform, "tenant.created", &tenant_target);
    assert_eq!(
        (created["actor"].as_str(), created["via_operator"].as_bool()),
        (Some(op_actor.as_str()), Some(false))
    );
    assert_eq!(created["details"]["name"], "acme");
    for action in ["tenant.tier_changed", "tenant.suspended", "tenant.resumed"] {
        find(&platform, action, &tenant_target);
    }
    find(&platform, "operator_key.created", &format!("key:{op_key_id}"));
    find(&platform, "operator_key.revoked", &format!("key:{op_key_id}"));
    let unknown_entry = find(&platform, "auth.failed", "key:bh_tk_0123456789ab");
    assert_eq!(unknown_entry["details"]["reason"], "unknown_key");
    let garbage = find(&platform, "auth.failed", "");
    assert_eq!(garbage["details"]["reason"], "malformed_key");
    assert!(!platform.iter().any(|e| e["action"] == "key.created"), "tenant keys stay in tenant chains");

    // Filters.
    let keys_only = server.get("/v1/audit?action=key.&limit=500", &a.admin_key).await;
    let keys_only = keys_only.expect(200)["data"].as_array().unwrap().clone();
    assert!(
        !keys_only.is_empty() && keys_only.iter().all(|e| e["action"].as_str().unwrap().starts_with("key."))
    );
    let later = server.get("/v1/audit?since=2999-01-01T00:00:00Z", &a.admin_key).await;
    assert!(later.expect(200)["data"].as_array().unwrap().is_empty());
    for bad in ["limit=0", "limit=501", "after=-1", "since=yesterday", "bogus=1"] {
        server.get(&format!("/v1/audit?{bad}"), &a.admin_key).await.expect_error(400, "invalid_request");
    }
    // The app key is no admin.
    server.get("/v1/audit", &a.app_key).await.expect_error(403, "forbidden");

    // Both chains verify.
    for (key, headers) in [(&a.admin_key, &[][..]), (&op, &as_a[..]), (&op, &[][..])] {
        let report = server.call_with(Method::GET, "/v1/audit/verify", Some(key), None, headers).await;
        let report = report.expect(200);
        assert_eq!(report["ok"], true, "{report}");
        assert!(report["first_problem"].is_null());
        assert!(report["entries_checked"].as_u64().unwrap() > 0);
    }

    // No secret, key or key material in any stored row (audit rows included) or audit response.
    // A's rows moved to its own store with the tier change: read both.
    let mut rows = server.stored_rows().await;
    let a_id = a.id.parse().unwrap();
    rows.extend(bulkhead_store::testing::isolated_rows(&server.store_config, a_id).await.unwrap());
    assert!(
        rows.iter().any(|(t, _)| t == "audit_entries")
            && rows.iter().any(|(t, _)| t == "platform_audit_entries")
    );
    let responses = format!("{:?} {:?}", chain, platform);
    for secret in &secrets {
        // The part after the visible prefix is what makes it a secret.
        let secret_part = secret.splitn(4, '_').nth(3).unwrap_or(secret);
        for (table, row) in &rows {
            assert!(!row.contains(secret_part), "{table} holds a secret: {row}");
        }
        assert!(!responses.contains(secret_part), "an audit response holds a secret");
    }
}
both_backends!(hooked_actions_are_recorded_with_their_actor);

/// Runs the binary on the test server's store.
fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    match &server.store_config.database_url {
        Some(url) => cmd.args(["--database-url", url]),
        None => cmd.args(["--data-dir", server.store_config.data_dir.to_str().unwrap()]),
    };
    cmd.args(args).env_remove("RUST_LOG").env_remove("DATABASE_URL").output().expect("run bulkhead")
}

/// A tamper done with the owner's rights, and the problem it must cause.
struct Tamper {
    name: &'static str,
    /// SQL with `{t}` for the tenant id.
    sql: &'static str,
    seq: i64,
    kind: &'static str,
}

const TAMPERS: [Tamper; 4] = [
    Tamper {
        name: "alter a field",
        sql: "UPDATE audit_entries SET outcome = 'failure' WHERE tenant_id = '{t}' AND seq = 4",
        seq: 4,
        kind: "altered",
    },
    Tamper {
        name: "delete a middle entry",
        sql: "DELETE FROM audit_entries WHERE tenant_id = '{t}' AND seq = 3",
        seq: 3,
        kind: "removed",
    },
    Tamper {
        name: "delete the last entry",
        sql: "DELETE FROM audit_entries WHERE tenant_id = '{t}' AND seq = 8",
        seq: 8,
        kind: "removed",
    },
    Tamper {
        name: "swap two entries' contents",
        sql: "UPDATE audit_entries SET seq = 1000 WHERE tenant_id = '{t}' AND seq = 5;
              UPDATE audit_entries SET seq = 5 WHERE tenant_id = '{t}' AND seq = 6;
              UPDATE audit_entries SET seq = 6 WHERE tenant_id = '{t}' AND seq = 1000",
        seq: 5,
        kind: "reordered",
    },
];

async fn tampering_is_detected_by_the_api_and_the_binary(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let op = server.operator_key.clone();
    let intact = server.tenant("intact", json!({})).await;
    let mut victims: Vec<TestTenant> = Vec::new();
    for (i, _) in TAMPERS.iter().enumerate() {
        let t = server.tenant(&format!("victim-{i}"), json!({})).await;
        // tenant.created, two key.created, then five changes of limits: seqs 1–8.
        for n in 0..5 {
            let limits = json!({"requests_per_minute": 100 + n});
            let path = format!("/v1/tenants/{}/limits", t.id);
            server.call(Method::PUT, &path, Some(&op), Some(limits)).await.expect(200);
        }
        assert_eq!(entries(&server, &t.admin_key, &[]).await.len(), 8);
        victims.push(t);
    }
    let out = cli(&server, &["audit", "verify", "--all"]);
    assert!(out.status.success(), "an intact log verifies: {}", String::from_utf8_lossy(&out.stderr));

    for (tamper, victim) in TAMPERS.iter().zip(&victims) {
        let sql = tamper.sql.replace("{t}", &victim.id);
        bulkhead_store::testing::execute_as_owner(&server.store_config, &sql).await.unwrap();

        let report = server.get("/v1/audit/verify", &victim.admin_key).await;
        let report = report.expect(200).clone();
        assert_eq!(report["ok"], false, "{}: {report}", tamper.name);
        assert_eq!(
            report["first_problem"],
            json!({"seq": tamper.seq, "kind": tamper.kind}),
            "{}: {report}",
            tamper.name
        );
        assert_eq!(report["entries_checked"], tamper.seq - 1, "{}: {report}", tamper.name);
        let by_op = server
            .call_with(
                Method::GET,
                "/v1/audit/verify",
                Some(&op),
                None,
                &[("x-tenant-id", victim.id.as_str())],
            )
            .await;
        assert_eq!(by_op.expect(200)["first_problem"], report["first_problem"]);

        let out = cli(&server, &["audit", "verify", "--tenant", &victim.name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{}: the binary must fail: {stdout}", tamper.name);
        let says = format!("seq {} ({})", tamper.seq, tamper.kind);
        assert!(stderr.contains(&says), "{}: stderr names the first bad seq: {stderr}", tamper.name);
        assert!(stdout.contains(&victim.name), "{stdout}");
    }
    // The other chains are untouched.
    let out = cli(&server, &["audit", "verify", "--tenant", &intact.name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&server, &["audit", "verify", "--platform"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("platform: ok"));
    let out = cli(&server, &["audit", "verify", "--all"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for victim in &victims {
        assert!(stderr.contains(&victim.name), "--all names every broken chain: {stderr}");
    }
    assert!(!stderr.contains(&intact.name));
    let report = server.get("/v1/audit/verify", &intact.admin_key).await;
    assert_eq!(report.expect(200)["ok"], true);

    // The list command shows a chain.
    let out = cli(&server, &["audit", "list", "--tenant", &intact.name, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed.iter().map(|e| e["action"].as_str().unwrap()).collect::<Vec<_>>(),
        ["tenant.created", "key.created", "key.created"]
    );
    let out = cli(&server, &["audit", "list", "--limit", "2"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("SEQ") && text.contains("tenant.created") && text.lines().count() == 3,
        "{text}"
    );
}
both_backends!(tampering_is_detected_by_the_api_and_the_binary);

async fn concurrent_appends_make_one_unbroken_chain(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let op = server.operator_key.clone();
    // A tenant made on the store directly has an empty chain; then 50
    // changes at once, each one entry in it.
    let tenant =
        bulkhead_store::NewTenant { name: "busy".into(), tier: Default::default(), metadata: json!({}) };
    let tenant = server.store.create_tenant(&bulkhead_core::OperatorCtx::local_cli(), tenant).await.unwrap();
    let id = tenant.id.to_string();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (http, base, op, id) = (server.http.clone(), server.base.clone(), op.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let res = http
                .put(format!("{base}/v1/tenants/{id}/limits"))
                .bearer_auth(op)
                .json(&json!({"requests_per_minute": 1000 + i}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let as_tenant = [("x-tenant-id", id.as_str())];
    let chain = entries(&server, &op, &as_tenant).await;
    let seqs: Vec<i64> = chain.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    assert!(chain.iter().all(|e| e["action"] == "config.updated"));
    for pair in chain.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    let report = server.call_with(Method::GET, "/v1/audit/verify", Some(&op), None, &as_tenant).await;
    let report = report.expect(200);
    assert_eq!(
        (report["ok"].as_bool(), report["entries_checked"].as_u64()),
        (Some(true), Some(50)),
        "{report}"
    );
    // The platform chain, appended to at once by 20 new operator keys, holds
    // them after the operator key installed at start-up.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (http, base, op) = (server.http.clone(), server.base.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(format!("{base}/v1/operator-keys"))
                .bearer_auth(op)
                .json(&json!({"name": format!("k{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let platform = entries(&server, &op, &[]).await;
    assert_eq!(
        platform.iter().map(|e| e["seq"].as_i64().unwrap()).collect::<Vec<_>>(),
        (1..=21).collect::<Vec<_>>()
    );
    assert_eq!(
        (platform[0]["actor"].as_str(), platform[0]["details"]["name"].as_str()),
        (Some("system"), Some("initial operator key"))
    );
    let report = server.get("/v1/audit/verify", &op).await;
    assert_eq!(report.expect(200)["entries_checked"], 21);
}
both_backends!(concurrent_appends_make_one_unbroken_chain);

async fn a_flood_of_bad_keys_adds_a_bounded_number_of_entries(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let a = server.tenant("acme", json!({})).await;
    let wrong = wrong_secret(&a.app_key);
    let before = entries(&server, &a.admin_key, &[]).await.len();
    for i in 0..60 {
        let unknown = format!("bh_tk_{i:012x}_{}", "y".repeat(43));
        server.get("/v1/tenant", &unknown).await.expect_error(401, "unauthorized");
        server.get("/v1/tenant", &wrong).await.expect_error(401, "unauthorized");
    }
    // Within one window: the first failure of each kind is written, the rest only counted.
    let tenant_failures: Vec<Value> = entries(&server, &a.admin_key, &[])
        .await
        .into_iter()
        .filter(|e| e["action"] == "auth.failed")
        .collect();
    assert_eq!(tenant_failures.len(), 1, "{tenant_failures:#?}");
    assert_eq!(entries(&server, &a.admin_key, &[]).await.len(), before + 1);
    let platform: Vec<Value> = entries(&server, &server.operator_key, &[])
        .await
        .into_iter()
        .filter(|e| e["action"] == "auth.failed")
        .collect();
    assert_eq!(platform.len(), 1, "{platform:#?}");
    assert_eq!(platform[0]["details"]["count"], 1);
}
both_backends!(a_flood_of_bad_keys_adds_a_bounded_number_of_entries);

async fn chains_are_read_only_by_their_owners(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let op = server.operator_key.clone();
    let a = server.tenant("tenant-a", json!({})).await;
    let b = server.tenant("tenant-b", json!({})).await;
    let marker = canary("a-key-name");
    server.post("/v1/keys", &a.admin_key, json!({"name": marker})).await.expect(201);
    server.post("/v1/operator-keys", &op, json!({"name": "platform-only"})).await.expect(201);

    // B reads its own chain: nothing of A's, nothing of the platform's.
    let b_chain = entries(&server, &b.admin_key, &[]).await;
    assert!(!b_chain.is_empty());
    assert!(b_chain.iter().all(|e| e["chain"] == b.id.as_str()), "{b_chain:#?}");
    let text = format!("{b_chain:?}");
    for leak in [a.id.as_str(), marker.as_str(), "platform-only", "operator_key.created"] {
        assert!(!text.contains(leak), "B's audit view holds {leak:?}");
    }
    // B cannot name A's chain, with any key, nor reach the platform chain.
    for key in [&b.admin_key, &b.app_key] {
        for path in ["/v1/audit", "/v1/audit/verify"] {
            let res = server.call_with(Method::GET, path, Some(key), None, &[("x-tenant-id", &a.id)]).await;
            res.expect_error(403, "forbidden");
        }
    }
    let verify = server.get("/v1/audit/verify", &b.admin_key).await;
    assert_eq!(verify.expect(200)["chain"], b.id.as_str());
    // After A's deletion the platform keeps the record; A's chain is gone with A.
    server.call(Method::DELETE, &format!("/v1/tenants/{}", a.id), Some(&op), None).await.expect(204);
    let platform = entries(&server, &op, &[]).await;
    let deleted = find(&platform, "tenant.deleted", &format!("tenant:{}", a.id));
    assert_eq!(deleted["details"]["name"], "tenant-a");
    let rows = server.stored_rows().await;
    assert!(
        rows.iter()
            .filter(|(t, _)| t == "audit_entries" || t == "audit_heads")
            .all(|(_, r)| !r.contains(&a.id)),
        "A's chain is deleted with A"
    );
    assert!(!rows.iter().any(|(_, r)| r.contains(&marker)), "nothing of A's data outlives it");
}
both_backends!(chains_are_read_only_by_their_owners);

async fn console_actions_are_audited_as_cli(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let op = server.operator_key.clone();
    let run = |args: &[&str]| {
        let out = cli(&server, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let created: Vec<Value> = serde_json::from_str(&run(&["tenant", "create", "console", "--json"])).unwrap();
    let id = created[0]["id"].as_str().unwrap().to_owned();
    let key: Value = serde_json::from_str(&run(&[
        "key",
        "create",
        "--tenant",
        "console",
        "--scope",
        "tenant_admin",
        "--json",
    ]))
    .unwrap();
    // A real move of its data, made by this second process.
    run(&["tenant", "update", "console", "--tier", "isolated"]);
    run(&["tenant", "suspend", "console"]);
    run(&["tenant", "resume", "console"]);
    run(&["key", "revoke", key["id"].as_str().unwrap(), "--tenant", "console"]);
    run(&["key", "create", "--operator", "--name", "night-shift"]);

    let as_tenant = [("x-tenant-id", id.as_str())];
    let chain = entries(&server, &op, &as_tenant).await;
    let seen: Vec<(&str, &str, bool)> = chain
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["via_operator"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("tenant.created", "cli", true),
            ("key.created", "cli", true),
            ("tenant.tier_changed", "cli", true),
            ("tenant.suspended", "cli", true),
            ("tenant.resumed", "cli", true),
            ("key.revoked", "cli", true),
        ]
    );
    let platform = entries(&server, &op, &[]).await;
    let by_cli: Vec<&str> =
        platform.iter().filter(|e| e["actor"] == "cli").map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        by_cli,
        [
            "tenant.created",
            "tenant.tier_changed",
            "tenant.suspended",
            "tenant.resumed",
            "operator_key.created"
        ]
    );
    let secret = key["secret"].as_str().unwrap();
    assert!(!format!("{chain:?}").contains(&secret[secret.len() - 20..]));
    run(&["tenant", "delete", "console", "--yes"]);
    let platform = entries(&server, &op, &[]).await;
    let last = platform.last().unwrap();
    assert_eq!((last["action"].as_str(), last["actor"].as_str()), (Some("tenant.deleted"), Some("cli")));
}
both_backends!(console_actions_are_audited_as_cli);
