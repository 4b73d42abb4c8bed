//! The cross-tenant suite (invariant 1). Tenant A's data carries canaries;
//! tenant B calls every tenant-scoped endpoint — also aimed at A's ids — and
//! no response may carry anything of A's, and A's objects answer 404.
//!
//! To add an endpoint: plant A's data in `plant`, and add a line to `probes`.

use reqwest::Method;
use serde_json::{Value, json};

use bulkhead_core::Tier;

use crate::both_backends;
use crate::common::{TestServer, TestTenant, canary};

/// What B should get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// B's own data (2xx); must hold nothing of A's.
    Own,
    /// A's object, addressed by id: 404 as if it did not exist.
    NotFound,
    /// An operator route: a tenant key is refused.
    Forbidden,
    /// B's own request that names something of A's: refused (4xx), as unknown.
    Refused,
}

struct Probe {
    method: Method,
    /// `{a_tenant}`, `{a_admin_key}`, `{a_app_key}`, `{a_alias}` stand for A's
    /// ids and names, in the path and in the body.
    path: &'static str,
    body: Option<Value>,
    expect: Expect,
}

fn probe(method: Method, path: &'static str, expect: Expect) -> Probe {
    Probe { method, path, body: None, expect }
}

fn with_body(method: Method, path: &'static str, body: Value, expect: Expect) -> Probe {
    Probe { method, path, body: Some(body), expect }
}

fn probes() -> Vec<Probe> {
    use Expect::*;
    let say = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    vec![
        // Tenants and keys.
        probe(Method::GET, "/v1/tenant", Own),
        probe(Method::GET, "/v1/keys", Own),
        probe(Method::GET, "/v1/keys?limit=500", Own),
        with_body(Method::POST, "/v1/keys", json!({"name": "b's own"}), Own),
        probe(Method::GET, "/v1/keys/{a_admin_key}", NotFound),
        probe(Method::GET, "/v1/keys/{a_app_key}", NotFound),
        probe(Method::DELETE, "/v1/keys/{a_app_key}", NotFound),
        probe(Method::GET, "/v1/tenants", Forbidden),
        probe(Method::GET, "/v1/tenants/{a_tenant}", Forbidden),
        with_body(Method::PATCH, "/v1/tenants/{a_tenant}", json!({"name": "stolen"}), Forbidden),
        probe(Method::DELETE, "/v1/tenants/{a_tenant}", Forbidden),
        probe(Method::POST, "/v1/tenants/{a_tenant}/suspend", Forbidden),
        with_body(Method::POST, "/v1/tenants/{a_tenant}/move", json!({"tier": "isolated"}), Forbidden),
        probe(Method::GET, "/v1/tenants/{a_tenant}/keys", Forbidden),
        with_body(Method::POST, "/v1/tenants/{a_tenant}/keys", json!({"name": "x"}), Forbidden),
        probe(Method::DELETE, "/v1/tenants/{a_tenant}/keys/{a_app_key}", Forbidden),
        probe(Method::GET, "/v1/operator-keys", Forbidden),
        probe(Method::GET, "/v1/overview", Forbidden),
        // Cells (operator), and what a cell offers its control plane.
        probe(Method::GET, "/v1/cells", Forbidden),
        with_body(
            Method::POST,
            "/v1/cells",
            json!({"name": "x", "base_url": "http://x", "operator_key": "x"}),
            Forbidden,
        ),
        probe(Method::GET, "/v1/cells/x", Forbidden),
        probe(Method::DELETE, "/v1/cells/x", Forbidden),
        with_body(Method::PUT, "/v1/tenants/{a_tenant}/key-records", json!({"keys": []}), Forbidden),
        with_body(Method::POST, "/v1/tenants/import", json!({}), Forbidden),
        probe(Method::GET, "/v1/tenants/{a_tenant}/checksums", Forbidden),
        probe(Method::POST, "/v1/tenants/{a_tenant}/export", Forbidden),
        probe(Method::DELETE, "/v1/tenants/{a_tenant}/export", Forbidden),
        with_body(Method::POST, "/v1/master-key/check", json!({"ciphertext": "", "nonce": ""}), Forbidden),
        // Usage, budgets, limits, pricing.
        probe(Method::GET, "/v1/usage", Own),
        probe(Method::GET, "/v1/usage?group_by=day,model,agent,kind", Own),
        probe(Method::GET, "/v1/usage/export", Own),
        probe(Method::GET, "/v1/usage/export?format=cloudevents", Own),
        probe(Method::GET, "/v1/budget", Own),
        probe(Method::GET, "/v1/limits", Own),
        with_body(Method::POST, "/v1/usage/events", json!({"events": []}), Forbidden),
        probe(Method::GET, "/v1/tenants/{a_tenant}/budget", Forbidden),
        with_body(Method::PUT, "/v1/tenants/{a_tenant}/budget", json!({}), Forbidden),
        probe(Method::DELETE, "/v1/tenants/{a_tenant}/budget", Forbidden),
        probe(Method::GET, "/v1/tenants/{a_tenant}/limits", Forbidden),
        with_body(Method::PUT, "/v1/tenants/{a_tenant}/limits", json!({}), Forbidden),
        probe(Method::GET, "/v1/tenants/{a_tenant}/pricing", Forbidden),
        with_body(Method::PUT, "/v1/tenants/{a_tenant}/pricing", json!({}), Forbidden),
        // Models and the OpenAI-compatible endpoint.
        probe(Method::GET, "/v1/model-config", Own),
        probe(Method::GET, "/v1/models", Own),
        probe(Method::GET, "/v1/provider-keys", Own),
        probe(Method::DELETE, "/v1/provider-keys/openai", NotFound),
        probe(Method::GET, "/v1/tenants/{a_tenant}/models", Forbidden),
        with_body(Method::PUT, "/v1/tenants/{a_tenant}/models", json!({"allowed": null}), Forbidden),
        // Agents, threads, runs.
        probe(Method::GET, "/v1/agents", Own),
        probe(Method::GET, "/v1/agents/{a_agent}", NotFound),
        probe(Method::GET, "/v1/agents/{a_agent}/versions", NotFound),
        with_body(Method::PATCH, "/v1/agents/{a_agent}", json!({"description": "mine now"}), NotFound),
        probe(Method::DELETE, "/v1/agents/{a_agent}", NotFound),
        probe(Method::GET, "/v1/threads", Own),
        probe(Method::GET, "/v1/threads/{a_thread}", NotFound),
        probe(Method::GET, "/v1/threads/{a_thread}/messages", NotFound),
        with_body(Method::POST, "/v1/threads/{a_thread}/messages", json!({"content": "hi"}), NotFound),
        probe(Method::GET, "/v1/threads/{a_thread}/runs", NotFound),
        with_body(Method::POST, "/v1/threads/{a_thread}/runs", json!({"agent_id": "{a_agent}"}), NotFound),
        probe(Method::DELETE, "/v1/threads/{a_thread}", NotFound),
        probe(Method::GET, "/v1/runs/{a_run}", NotFound),
        probe(Method::GET, "/v1/runs/{a_run}/steps", NotFound),
        probe(Method::GET, "/v1/runs/{a_run}/events", NotFound),
        with_body(Method::POST, "/v1/runs/{a_run}/cancel", json!({}), NotFound),
        // The audit log: B's own chain only; A's is not reachable (X-Tenant-ID
        // with a tenant key is refused for every probe below), nor the platform's.
        probe(Method::GET, "/v1/audit", Own),
        probe(Method::GET, "/v1/audit?limit=500&action=key.", Own),
        probe(Method::GET, "/v1/audit/verify", Own),
        // Code execution: B's own policy (off), never A's.
        probe(Method::GET, "/v1/sandbox/policy", Own),
        with_body(
            Method::POST,
            "/v1/sandbox/executions",
            json!({"language": "python", "code": "print(1)"}),
            Refused,
        ),
        probe(Method::GET, "/v1/tenants/{a_tenant}/sandbox", Forbidden),
        with_body(Method::PUT, "/v1/tenants/{a_tenant}/sandbox", json!({"enabled": true}), Forbidden),
        // Knowledge bases, documents, search, embeddings.
        probe(Method::GET, "/v1/knowledge-bases", Own),
        probe(Method::GET, "/v1/knowledge-bases/{a_kb}", NotFound),
        probe(Method::DELETE, "/v1/knowledge-bases/{a_kb}", NotFound),
        probe(Method::GET, "/v1/knowledge-bases/{a_kb}/documents", NotFound),
        with_body(
            Method::POST,
            "/v1/knowledge-bases/{a_kb}/documents",
            json!({"name": "planted-by-b.txt", "content": "b was here"}),
            NotFound,
        ),
        probe(Method::GET, "/v1/knowledge-bases/{a_kb}/documents/{a_doc}", NotFound),
        probe(Method::DELETE, "/v1/knowledge-bases/{a_kb}/documents/{a_doc}", NotFound),
        with_body(
            Method::POST,
            "/v1/knowledge-bases/{a_kb}/search",
            json!({"query": "{a_kb_canary}"}),
            NotFound,
        ),
        with_body(
            Method::POST,
            "/v1/agents",
            json!({"name": "thief", "spec": {"tools": ["knowledge_search"], "knowledge_bases": ["{a_kb}"]}}),
            Refused,
        ),
        with_body(Method::POST, "/v1/embeddings", json!({"model": "{a_alias}", "input": "x"}), Refused),
        with_body(Method::POST, "/v1/embeddings", json!({"model": "task:embedding", "input": "hello"}), Own),
        // A's alias means nothing to B.
        with_body(Method::POST, "/v1/chat/completions", say("{a_alias}"), Refused),
        with_body(Method::POST, "/v1/chat/completions", say("builtin/scripted"), Own),
        // Tools, MCP servers, tool settings and credentials: B's own only.
        probe(Method::GET, "/v1/tools", Own),
        probe(Method::GET, "/v1/tools?limit=500", Own),
        probe(Method::GET, "/v1/tools/{a_tool}", NotFound),
        with_body(Method::PUT, "/v1/tools/{a_tool}", b_tool("b-mine", None), NotFound),
        probe(Method::DELETE, "/v1/tools/{a_tool}", NotFound),
        probe(Method::GET, "/v1/mcp-servers", Own),
        probe(Method::GET, "/v1/mcp-servers/{a_mcp}", NotFound),
        probe(Method::GET, "/v1/mcp-servers/{a_mcp}/tools", NotFound),
        probe(Method::DELETE, "/v1/mcp-servers/{a_mcp}", NotFound),
        probe(Method::GET, "/v1/tool-settings", Own),
        probe(Method::GET, "/v1/secrets", Own),
        probe(Method::DELETE, "/v1/secrets/{a_secret}", NotFound),
        // A's credential, tool and MCP server names mean nothing to B.
        with_body(Method::POST, "/v1/tools", b_tool("b-steals", Some("{a_secret}")), Refused),
        with_body(
            Method::POST,
            "/v1/mcp-servers",
            json!({"name": "b-steals", "url": "https://b.example.com/mcp",
                   "auth": {"secret_name": "{a_secret}", "placement": {"in": "header", "name": "X-Key"}}}),
            Refused,
        ),
        with_body(
            Method::POST,
            "/v1/agents",
            json!({"name": "t-thief", "spec": {"tools": ["{a_tool_name}"]}}),
            Refused,
        ),
        with_body(
            Method::POST,
            "/v1/agents",
            json!({"name": "m-thief", "spec": {"tools": ["mcp__{a_mcp_name}__lookup"]}}),
            Refused,
        ),
    ]
}

/// A's ids that probes aim at.
struct Victim {
    tenant: TestTenant,
    alias: String,
    agent: String,
    thread: String,
    run: String,
    kb: String,
    doc: String,
    kb_canary: String,
    tools: PlantedTools,
}

/// Puts a canary into every piece of A's data that exists. Returns A's ids
/// and the canaries.
async fn plant(server: &TestServer) -> (Victim, Vec<String>) {
    let op = server.operator_key.clone();
    let tenant_canary = canary("tenant-metadata");
    let name = format!("a-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let a = server.tenant(&name, json!({"note": tenant_canary})).await;
    let key_canary = canary("key-name");
    server.post("/v1/keys", &a.admin_key, json!({"name": key_canary})).await.expect(201);

    // Usage with canaries in every free-text field.
    let usage_canary = canary("usage");
    let model_canary = canary("model");
    let agent = uuid::Uuid::now_v7().to_string();
    let events = json!({"events": [
        {"id": usage_canary, "kind": "llm", "name": "gpt-4o", "input_tokens": 100000, "output_tokens": 1,
         "agent_id": agent, "request_id": usage_canary, "attributes": {"note": usage_canary}},
        {"id": "plain", "kind": "storage", "name": model_canary, "quantity": 1, "unit": usage_canary, "cost_usd": "0.5"},
    ]});
    let tenant_header = [("x-tenant-id", a.id.as_str())];
    server
        .call_with(Method::POST, "/v1/usage/events", Some(&op), Some(events), &tenant_header)
        .await
        .expect(200);
    // A budget with alerts, limits and pricing of its own.
    let path = |what: &str| format!("/v1/tenants/{}/{what}", a.id);
    let budget = json!({"monthly_limit_usd": "10", "soft_alert_percent": 5});
    server.call(Method::PUT, &path("budget"), Some(&op), Some(budget)).await.expect(200);
    server
        .call(Method::PUT, &path("limits"), Some(&op), Some(json!({"requests_per_minute": 4321})))
        .await
        .expect(200);
    server.call(Method::PUT, &path("pricing"), Some(&op), Some(json!({"markup_bps": 777}))).await.expect(200);

    // A model alias, a provider key, and a conversation with the model.
    let alias = canary("alias");
    let provider_key = canary("provider-key");
    let cfg = json!({"aliases": {alias.clone(): "builtin/scripted"}});
    server.call(Method::PUT, "/v1/model-config", Some(&a.admin_key), Some(cfg)).await.expect(200);
    let key = json!({"api_key": provider_key});
    server.call(Method::PUT, "/v1/provider-keys/openai", Some(&a.admin_key), Some(key)).await.expect(200);
    let prompt = canary("prompt");
    let chat = json!({"model": alias, "messages": [{"role": "user", "content": prompt}]});
    let answer = server.post("/v1/chat/completions", &a.app_key, chat).await;
    assert!(answer.expect(200)["choices"][0]["message"]["content"].as_str().unwrap().contains(&prompt));

    // An agent, a thread with messages, a finished run with steps.
    let agent_canary = canary("agent");
    let spec = json!({"system_prompt": format!("Secret: {agent_canary}"), "model": "builtin/scripted"});
    let created = server
        .post(
            "/v1/agents",
            &a.admin_key,
            json!({"name": "a-agent", "description": agent_canary, "spec": spec}),
        )
        .await;
    let agent_id = created.expect(201)["id"].as_str().unwrap().to_owned();
    let thread = server.post("/v1/threads", &a.app_key, json!({"metadata": {"note": agent_canary}})).await;
    let thread_id = thread.expect(201)["id"].as_str().unwrap().to_owned();
    let message_canary = canary("message");
    let run = server
        .post(
            &format!("/v1/threads/{thread_id}/runs"),
            &a.app_key,
            json!({"agent_id": agent_id, "mode": "sync", "message": message_canary}),
        )
        .await;
    let run = run.expect(200).clone();
    assert_eq!(run["status"], "completed", "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();

    // A knowledge base with a canary document, ingested.
    let kb_canary = canary("knowledge");
    let kb = server
        .post("/v1/knowledge-bases", &a.admin_key, json!({"name": "a-kb", "description": kb_canary}))
        .await;
    let kb_id = kb.expect(201)["id"].as_str().unwrap().to_owned();
    let doc = json!({"name": "a-secrets.md", "content": format!("# Vault\n\nThe code word is {kb_canary}.")});
    let doc = server.post(&format!("/v1/knowledge-bases/{kb_id}/documents"), &a.admin_key, doc).await;
    let doc_id = doc.expect(202)["id"].as_str().unwrap().to_owned();
    server.wait_document(&a.admin_key, &kb_id, &doc_id).await;

    // Everything that identifies A is as secret from B as its content.
    let canaries = vec![
        tenant_canary,
        key_canary,
        usage_canary,
        model_canary,
        agent,
        alias.clone(),
        provider_key,
        prompt,
        a.id.clone(),
        a.name.clone(),
        a.admin_key_id.clone(),
        a.app_key_id.clone(),
        agent_canary,
        message_canary,
        agent_id.clone(),
        thread_id.clone(),
        run_id.clone(),
        kb_canary.clone(),
        kb_id.clone(),
        doc_id.clone(),
    ];
    let (tools, tool_canaries) = plant_tools(server, &a).await;
    let canaries = [canaries, tool_canaries].concat();
    let victim = Victim {
        tenant: a,
        alias,
        agent: agent_id,
        thread: thread_id,
        run: run_id,
        kb: kb_id,
        doc: doc_id,
        kb_canary,
        tools,
    };
    (victim, canaries)
}

fn fill(text: &str, v: &Victim) -> String {
    text.replace("{a_tenant}", &v.tenant.id)
        .replace("{a_admin_key}", &v.tenant.admin_key_id)
        .replace("{a_app_key}", &v.tenant.app_key_id)
        .replace("{a_alias}", &v.alias)
        .replace("{a_agent}", &v.agent)
        .replace("{a_thread}", &v.thread)
        .replace("{a_run}", &v.run)
        .replace("{a_kb_canary}", &v.kb_canary)
        .replace("{a_kb}", &v.kb)
        .replace("{a_doc}", &v.doc)
        .replace("{a_tool_name}", &v.tools.tool_name)
        .replace("{a_tool}", &v.tools.tool)
        .replace("{a_mcp_name}", &v.tools.mcp_name)
        .replace("{a_mcp}", &v.tools.mcp)
        .replace("{a_secret}", &v.tools.secret_name)
}

/// Puts a tenant in a tier. Shared and isolated are live moves of its
/// data (what was planted goes along); dedicated moves it into a cell of
/// its own — a second server on its own store, returned to keep it up.
async fn set_tier(server: &TestServer, tenant: &TestTenant, tier: Tier) -> Option<TestServer> {
    let path = format!("/v1/tenants/{}/move", tenant.id);
    match tier {
        Tier::Shared | Tier::Isolated => {
            let moved = server.post(&path, &server.operator_key, json!({"tier": tier})).await;
            assert_eq!(moved.expect(200)["to"], tier.as_str());
            None
        }
        Tier::Dedicated => {
            let mut config = bulkhead_core::config::Config::default();
            config.models.master_key = Some(server.master_key.clone());
            let cell = TestServer::start_full(server.store.backend(), config).await;
            let name = format!("cell-{}", tenant.name);
            let body = json!({"name": name, "base_url": cell.base, "operator_key": cell.operator_key});
            server.post("/v1/cells", &server.operator_key, body).await.expect(201);
            let moved =
                server.post(&path, &server.operator_key, json!({"tier": "dedicated", "cell": name})).await;
            assert_eq!(moved.expect(200)["to"], "dedicated");
            Some(cell)
        }
    }
}

async fn tenant_b_sees_nothing_of_a(backend: &'static str) {
    b_sees_nothing_of_a(backend, Tier::Shared, Tier::Shared).await
}
both_backends!(tenant_b_sees_nothing_of_a);

/// Both tenants in stores of their own.
async fn isolated_b_sees_nothing_of_isolated_a(backend: &'static str) {
    b_sees_nothing_of_a(backend, Tier::Isolated, Tier::Isolated).await
}
both_backends!(isolated_b_sees_nothing_of_isolated_a);

/// A in a store of its own, B in the shared one.
async fn shared_b_sees_nothing_of_isolated_a(backend: &'static str) {
    b_sees_nothing_of_a(backend, Tier::Isolated, Tier::Shared).await
}
both_backends!(shared_b_sees_nothing_of_isolated_a);

/// A in a cell of its own (proxied), B in the shared store.
async fn shared_b_sees_nothing_of_dedicated_a(backend: &'static str) {
    b_sees_nothing_of_a(backend, Tier::Dedicated, Tier::Shared).await
}
both_backends!(shared_b_sees_nothing_of_dedicated_a);

/// B in a cell of its own, probing A in the shared store through the proxy.
async fn dedicated_b_sees_nothing_of_shared_a(backend: &'static str) {
    b_sees_nothing_of_a(backend, Tier::Shared, Tier::Dedicated).await
}
both_backends!(dedicated_b_sees_nothing_of_shared_a);

/// The probes, with A and B in the given tiers.
async fn b_sees_nothing_of_a(backend: &'static str, a_tier: Tier, b_tier: Tier) {
    let server = TestServer::start(backend).await;
    let (victim, canaries) = plant(&server).await;
    let a = &victim.tenant;
    let b = server.tenant("tenant-b", json!({"note": "b"})).await;
    let _a_cell = set_tier(&server, a, a_tier).await;
    let _b_cell = set_tier(&server, &b, b_tier).await;

    for p in probes() {
        let path = fill(p.path, &victim);
        let body: Option<Value> =
            p.body.as_ref().map(|v| serde_json::from_str(&fill(&v.to_string(), &victim)).unwrap());
        for (who, key) in [("b admin", &b.admin_key), ("b app", &b.app_key)] {
            let res = server.call(p.method.clone(), &path, Some(key), body.clone()).await;
            // What B itself sent (say, a guessed name echoed in an error) is not a leak.
            let sent = format!("{path} {}", body.as_ref().map(Value::to_string).unwrap_or_default());
            for c in canaries.iter().filter(|c| !sent.contains(c.as_str())) {
                assert!(
                    !res.text.contains(c.as_str()),
                    "{who} {} {path}: response leaks A's {c:?}: {}",
                    p.method,
                    res.text
                );
            }
            let status = res.status.as_u16();
            match (p.expect, who) {
                (Expect::Own, "b admin") => {
                    assert!(res.status.is_success(), "{who} {} {path}: {}", p.method, res.text)
                }
                (Expect::NotFound, "b admin") => res.expect_error(404, "not_found"),
                (Expect::Forbidden, _) => res.expect_error(403, "forbidden"),
                (Expect::Refused, _) => assert!(res.status.is_client_error(), "{who} {path}: {}", res.text),
                // An app key may be refused admin routes, but never sees A.
                (_, _) => assert!(
                    res.status.is_success() || [403, 404].contains(&status),
                    "{who} {path}: {}",
                    res.text
                ),
            }
            // Naming A in X-Tenant-ID with a tenant key is refused outright.
            let res = server
                .call_with(p.method.clone(), &path, Some(key), body.clone(), &[("x-tenant-id", &a.id)])
                .await;
            res.expect_error(403, "forbidden");
        }
    }

    // A's limits, budget and spend are not B's.
    let limits = server.get("/v1/limits", &b.app_key).await;
    assert_ne!(limits.expect(200)["requests_per_minute"], 4321);
    let budget = server.get("/v1/budget", &b.admin_key).await;
    let budget = budget.expect(200);
    assert!(
        budget["monthly_limit_usd"].is_null() && budget["alerts"].as_array().unwrap().is_empty(),
        "{budget}"
    );
    // B's usage is only its own probes' calls to the scripted and embedding models.
    let usage = server.get("/v1/usage?group_by=model", &b.admin_key).await;
    let rows = usage.expect(200)["data"].as_array().unwrap().clone();
    assert!(
        rows.iter().all(|r| r["model"] == "builtin/scripted" || r["model"] == "builtin/all-minilm-l6-v2"),
        "{rows:?}"
    );

    // A is untouched: its keys still work and are not revoked.
    let keys = server.get("/v1/keys", &a.admin_key).await;
    let keys = keys.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k["revoked_at"].is_null()), "{keys:?}");
    let own = server.get("/v1/tenant", &a.app_key).await;
    assert_eq!(own.expect(200)["name"], a.name.as_str());
    let still = server.get("/v1/provider-keys", &a.admin_key).await;
    assert_eq!(still.expect(200)["data"].as_array().unwrap().len(), 1, "B could not delete A's provider key");
    let t = &victim.tools;
    server.get(&format!("/v1/tools/{}", t.tool), &a.admin_key).await.expect(200);
    server.get(&format!("/v1/mcp-servers/{}", t.mcp), &a.admin_key).await.expect(200);
    let secrets = server.get("/v1/secrets", &a.admin_key).await;
    assert_eq!(
        secrets.expect(200)["data"][0]["name"],
        t.secret_name.as_str(),
        "B could not delete A's credential"
    );
}

async fn operator_acting_for_a_tenant_sees_only_that_tenant(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let (victim, canaries) = plant(&server).await;
    let a = &victim.tenant;
    let b = server.tenant("tenant-b", json!({})).await;
    let op = server.operator_key.as_str();
    let res = server.call_with(Method::GET, "/v1/keys", Some(op), None, &[("x-tenant-id", &b.id)]).await;
    let body = res.expect(200);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    for c in &canaries {
        assert!(!res.text.contains(c.as_str()));
    }
    // The operator must name a tenant, and it must exist.
    server.get("/v1/keys", op).await.expect_error(403, "forbidden");
    let ghost = uuid::Uuid::now_v7().to_string();
    let res = server.call_with(Method::GET, "/v1/keys", Some(op), None, &[("x-tenant-id", &ghost)]).await;
    res.expect_error(404, "not_found");
    let res = server.call_with(Method::GET, "/v1/keys", Some(op), None, &[("x-tenant-id", "nope")]).await;
    res.expect_error(400, "invalid_request");
    // Acting for A works and shows A's data.
    let res = server.call_with(Method::GET, "/v1/tenant", Some(op), None, &[("x-tenant-id", &a.id)]).await;
    assert_eq!(res.expect(200)["id"], a.id.as_str());
}
both_backends!(operator_acting_for_a_tenant_sees_only_that_tenant);

/// A's tools: ids and names the probes aim at.
struct PlantedTools {
    tool: String,
    tool_name: String,
    mcp: String,
    mcp_name: String,
    secret_name: String,
}

/// An HTTP tool definition of B's, optionally naming a credential.
fn b_tool(name: &str, secret: Option<&str>) -> Value {
    let mut tool = json!({"name": name, "description": "b's", "parameters": {"type": "object"},
                          "url_template": "https://b.example.com/lookup"});
    if let Some(secret) = secret {
        tool["auth"] = json!({"secret_name": secret, "placement": {"in": "header", "name": "X-Key"}});
    }
    tool
}

/// A credential, an HTTP tool that uses it, an MCP server, and tool
/// settings, all carrying canaries. Returns A's ids and the canaries.
async fn plant_tools(server: &TestServer, a: &TestTenant) -> (PlantedTools, Vec<String>) {
    let short = || uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let credential = canary("credential");
    let secret_name = format!("a-cred-{}", short());
    let res = server
        .call(
            Method::PUT,
            &format!("/v1/secrets/{secret_name}"),
            Some(&a.admin_key),
            Some(json!({"value": credential})),
        )
        .await;
    res.expect(200);
    let tool_canary = canary("tool");
    let host_canary = canary("host");
    let tool_name = format!("a-tool-{}", short());
    let auth = json!({"secret_name": secret_name, "placement": {"in": "header", "name": "X-Api-Key"}});
    let tool = json!({"name": tool_name, "description": tool_canary, "parameters": {"type": "object"},
                      "url_template": format!("https://{host_canary}.example.com/lookup"), "auth": auth});
    let tool = server.post("/v1/tools", &a.admin_key, tool).await;
    let tool_id = tool.expect(201)["id"].as_str().unwrap().to_owned();
    let mcp_name = format!("a-mcp-{}", short());
    let mcp =
        json!({"name": mcp_name, "url": format!("https://{host_canary}.example.com/mcp"), "auth": auth});
    let mcp = server.post("/v1/mcp-servers", &a.admin_key, mcp).await;
    let mcp_id = mcp.expect(201)["id"].as_str().unwrap().to_owned();
    let settings =
        json!({"allowed_tools": [tool_name], "egress": {"allow": [format!("{host_canary}.example.com")]}});
    server.call(Method::PUT, "/v1/tool-settings", Some(&a.admin_key), Some(settings)).await.expect(200);
    let canaries = vec![
        credential,
        secret_name.clone(),
        tool_canary,
        host_canary,
        tool_name.clone(),
        tool_id.clone(),
        mcp_name.clone(),
        mcp_id.clone(),
    ];
    (PlantedTools { tool: tool_id, tool_name, mcp: mcp_id, mcp_name, secret_name }, canaries)
}
