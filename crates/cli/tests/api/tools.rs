//! Tools end to end: tenant HTTP tools with vault credentials (the secret
//! canary), `http_request` and HTTP tools aimed at internal addresses (SSRF,
//! with listeners that record that nothing reached them), the agent's and
//! the tenant's allow lists, tenants' tools and credentials kept apart, MCP
//! servers per tenant (rmcp's server side on loopback), and metering and the
//! tool-call limit. Models: the scripted one, and a fake upstream that
//! speaks OpenAI's wire format and asks for any tool it is told to — even
//! one it was not offered, as a confused model might.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bulkhead_core::config::Config;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Resp, TestServer, TestTenant, canary, captured_logs};

// ---------------------------------------------------------------------------
// Servers the tools talk to.

/// What reached a test server: path with query, and headers.
#[derive(Clone, Default)]
struct Hits(Arc<Mutex<Vec<(String, HeaderMap)>>>);

impl Hits {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn all(&self) -> Vec<(String, HeaderMap)> {
        self.0.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.all().into_iter().map(|(p, _)| p).collect()
    }

    fn count_path(&self, path: &str) -> usize {
        self.paths().iter().filter(|p| p.split('?').next() == Some(path)).count()
    }
}

/// Serves `app` on `bind` (port 0), recording every request in `hits`.
async fn serve(bind: &str, app: Router, hits: &Hits) -> SocketAddr {
    let hits = hits.clone();
    let app = app.layer(from_fn(move |req: Request, next: Next| {
        let hits = hits.clone();
        async move {
            let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            hits.0.lock().unwrap().push((path, req.headers().clone()));
            next.run(req).await
        }
    }));
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn pct(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// As `application/x-www-form-urlencoded` query values are encoded.
const FORM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'*');

/// `%2F` → `%2f`, the rest as it is.
fn lower_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        let end = (i + 3).min(rest.len());
        out.push_str(&rest[..i]);
        out.push_str(&rest[i..end].to_ascii_lowercase());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    uri.query()?
        .split('&')
        .find_map(|p| p.strip_prefix(prefix.as_str()))
        .map(|v| percent_decode_str(v).decode_utf8_lossy().into_owned())
}

/// A careless API that echoes the credential it got — in a header
/// (`X-Api-Key`) or the query (`api_key`) — raw, percent-encoded and in
/// base64, on any path but `/redirect?to=URL`, which redirects.
fn echo_app() -> Router {
    async fn echo(uri: Uri, headers: HeaderMap) -> String {
        let header = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut out = String::new();
        for (what, value) in [("header", header), ("query", query_param(&uri, "api_key"))] {
            if let Some(v) = value {
                out.push_str(&format!(
                    "{what}: raw={v} pct={} b64={} b64url={}\n",
                    pct(&v),
                    STANDARD.encode(&v),
                    URL_SAFE_NO_PAD.encode(&v)
                ));
            }
        }
        out.push_str(&format!("query string: {}", uri.query().unwrap_or("")));
        out
    }
    async fn redirect(uri: Uri) -> Response {
        let to = query_param(&uri, "to").unwrap_or_default();
        (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
    }
    Router::new().route("/echo", any(echo)).route("/redirect", any(redirect)).fallback(any(echo))
}

/// What the fake model was sent: every request body.
#[derive(Clone, Default)]
struct Prompts(Arc<Mutex<Vec<Value>>>);

/// A fake OpenAI upstream. After tool results it answers `done: …`;
/// otherwise a last user message `call NAME {json}` becomes a call of NAME,
/// offered or not.
async fn fake_model() -> (String, Prompts) {
    async fn chat(State(p): State<Prompts>, body: axum::Json<Value>) -> axum::Json<Value> {
        p.0.lock().unwrap().push(body.0.clone());
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let last = messages.last().cloned().unwrap_or_default();
        let usage = json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12});
        let text = last["content"].as_str().unwrap_or("").to_owned();
        let call = (last["role"] == "user").then(|| text.strip_prefix("call ")).flatten().map(|rest| {
            let (name, args) = rest.split_once(' ').unwrap_or((rest, "{}"));
            json!({"id": format!("call_{}", messages.len()), "type": "function",
                   "function": {"name": name, "arguments": args}})
        });
        let (message, finish) = match call {
            Some(call) => (json!({"role": "assistant", "content": null, "tool_calls": [call]}), "tool_calls"),
            None => (json!({"role": "assistant", "content": format!("done: {text}")}), "stop"),
        };
        axum::Json(json!({
            "id": "fake", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage,
        }))
    }
    let prompts = Prompts::default();
    let app =
        Router::new().route("/v1/chat/completions", axum::routing::post(chat)).with_state(prompts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), prompts)
}

mod mcp_server {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine as _;
    use rmcp::handler::server::router::tool::ToolRouter;
    use rmcp::handler::server::wrapper::Parameters;
    use rmcp::model::{ServerCapabilities, ServerConfig};
    use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    pub struct AddArgs {
        a: i64,
        b: i64,
    }

    #[derive(Clone)]
    pub struct Server {
        tool_router: ToolRouter<Self>,
        calls: Arc<AtomicUsize>,
        token: String,
    }

    impl Server {
        pub fn new(calls: Arc<AtomicUsize>, token: String) -> Self {
            Self { tool_router: Self::tool_router(), calls, token }
        }
    }

    #[tool_router]
    impl Server {
        #[tool(description = "Adds two integers")]
        fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
            self.calls.fetch_add(1, Ordering::SeqCst);
            (a + b).to_string()
        }

        /// A careless tool that prints the caller's credential back.
        #[tool(description = "Shows the caller's token")]
        fn whoami(&self) -> String {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let b64 = base64::engine::general_purpose::STANDARD.encode(&self.token);
            format!("token={} base64={b64}", self.token)
        }
    }

    #[tool_handler(router = self.tool_router)]
    impl ServerHandler for Server {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        }
    }
}

/// An MCP server on loopback that demands `Authorization: Bearer {token}`:
/// its address, the HTTP requests that reached it, the tool calls it ran.
/// It runs on a thread of its own whose log goes nowhere — it stands for
/// another process; rmcp's server side logs its responses (the echoed
/// token too), and the captured log is Bulkhead's alone.
async fn mcp_server(token: &str) -> (SocketAddr, Hits, Arc<AtomicUsize>) {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (c, tok) = (calls.clone(), token.to_owned());
    let service: StreamableHttpService<mcp_server::Server, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(mcp_server::Server::new(c.clone(), tok.clone())),
        Default::default(),
        StreamableHttpServerConfig::default().with_sse_keep_alive(None),
    );
    let expected = format!("Bearer {token}");
    let app = Router::new().nest_service("/mcp", service).layer(from_fn(move |req: Request, next: Next| {
        let ok = req.headers().get(header::AUTHORIZATION).is_some_and(|v| v == expected.as_str());
        async move {
            if ok {
                next.run(req).await
            } else {
                (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")]).into_response()
            }
        }
    }));
    let hits = Hits::default();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let recorded = hits.clone();
    std::thread::spawn(move || {
        let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let addr = serve("127.0.0.1:0", app, &recorded).await;
            tx.send(addr).unwrap();
            std::future::pending::<()>().await
        })
    });
    (rx.await.unwrap(), hits, calls)
}

// ---------------------------------------------------------------------------
// The platform side.

/// A server whose operator excepts `exceptions` from the egress address
/// checks, and whose `openai` provider is `model_url` when given.
async fn server(backend: &str, exceptions: &[String], model_url: Option<&str>) -> TestServer {
    server_with(backend, exceptions, model_url, |_| {}).await
}

async fn server_with(
    backend: &str,
    exceptions: &[String],
    model_url: Option<&str>,
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    let mut config = Config::default();
    config.tools.egress_exceptions = exceptions.to_vec();
    config.tools.timeout_ms = 10_000;
    if let Some(url) = model_url {
        let openai = config.models.providers.get_mut("openai").unwrap();
        openai.base_url = url.to_owned();
        openai.max_retries = 0;
    }
    tweak(&mut config);
    TestServer::start_full(backend, config).await
}

/// Every response a test saw, to search for secrets afterwards.
struct Api<'a> {
    server: &'a TestServer,
    seen: Mutex<Vec<String>>,
}

impl<'a> Api<'a> {
    fn new(server: &'a TestServer) -> Self {
        Self { server, seen: Mutex::new(Vec::new()) }
    }

    async fn call(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> Resp {
        let res = self.server.call(method, path, Some(key), body).await;
        self.seen.lock().unwrap().push(res.text.clone());
        res
    }

    async fn get(&self, path: &str, key: &str) -> Resp {
        self.call(Method::GET, path, key, None).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::POST, path, key, Some(body)).await
    }

    async fn put(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, key, Some(body)).await
    }

    async fn delete(&self, path: &str, key: &str) -> Resp {
        self.call(Method::DELETE, path, key, None).await
    }

    /// Creates an agent; returns its id.
    async fn agent(&self, t: &TestTenant, name: &str, model: &str, tools: &[&str]) -> String {
        let spec = json!({"system_prompt": "You use tools.", "model": model, "tools": tools});
        let res = self.post("/v1/agents", &t.admin_key, json!({"name": name, "spec": spec})).await;
        res.expect(201)["id"].as_str().unwrap().to_owned()
    }

    /// Runs the agent on a fresh thread with `message`; returns the
    /// finished run and the tool messages stored in the thread (what the
    /// model saw of the tools).
    async fn run(&self, t: &TestTenant, agent: &str, message: &str) -> (Value, Vec<String>) {
        let thread = self.post("/v1/threads", &t.app_key, json!({})).await;
        let thread = thread.expect(201)["id"].as_str().unwrap().to_owned();
        let body = json!({"agent_id": agent, "mode": "sync", "message": message});
        let run = self.post(&format!("/v1/threads/{thread}/runs"), &t.app_key, body).await;
        let run = run.expect(200).clone();
        assert_eq!(run["status"], "completed", "{run}");
        let msgs = self.get(&format!("/v1/threads/{thread}/messages"), &t.app_key).await;
        let tool_msgs = msgs.expect(200)["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect();
        (run, tool_msgs)
    }

    /// The tenant's `tool.` audit entries, oldest first.
    async fn tool_audit(&self, key: &str) -> Vec<Value> {
        let res = self.get("/v1/audit?limit=500&action=tool.", key).await;
        res.expect(200)["data"].as_array().unwrap().clone()
    }

    /// The tenant's usage events (CloudEvents `data`).
    async fn usage_events(&self, key: &str) -> Vec<Value> {
        let res = self.get("/v1/usage/export?format=cloudevents", key).await;
        res.text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["data"].clone()).collect()
    }
}

/// An HTTP tool definition reaching `url` (no parameters).
fn http_tool(name: &str, url: &str, auth: Option<Value>) -> Value {
    let mut tool = json!({"name": name, "description": format!("{name} for tests"),
                          "parameters": {"type": "object", "properties": {"note": {"type": "string"}}},
                          "url_template": url});
    if let Some(auth) = auth {
        tool["auth"] = auth;
    }
    tool
}

fn header_auth(secret: &str, name: &str, prefix: &str) -> Value {
    json!({"secret_name": secret, "placement": {"in": "header", "name": name, "prefix": prefix}})
}

/// Asserts that none of `needles` occurs in `haystack`.
#[track_caller]
fn nowhere(what: &str, haystack: &str, needles: &[String]) {
    for n in needles {
        assert!(!haystack.contains(n.as_str()), "{what} holds the secret (as {n:?})");
    }
}

/// The secret and the encodings a careless server echoes it in.
fn encodings(secret: &str) -> Vec<String> {
    vec![
        secret.to_owned(),
        pct(secret),
        lower_escapes(&pct(secret)),
        utf8_percent_encode(secret, FORM).to_string(),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
    ]
}

// ---------------------------------------------------------------------------
// Invariant 6: a credential never leaves the vault in plaintext.

async fn a_credential_never_leaves_the_vault(backend: &'static str) {
    let hits = Hits::default();
    let echo = serve("127.0.0.1:0", echo_app(), &hits).await;
    let allow = format!("127.0.0.1:{}", echo.port());
    let server = server(backend, std::slice::from_ref(&allow), None).await;
    let api = Api::new(&server);
    let a = server.tenant("canary", json!({})).await;
    let admin = a.admin_key.as_str();
    let secret = format!("sk-{}/Zq+x=y", canary("credential"));
    let rotated = format!("sk-{}/Rt+x=y", canary("rotated"));

    // Write-only: the value is taken, and only the name and dates come back.
    let put = api.put("/v1/secrets/echo-key", admin, json!({"value": secret})).await;
    assert_eq!(put.expect(200)["name"], "echo-key");
    let list = api.get("/v1/secrets", admin).await;
    let listed = list.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    let keys: Vec<&String> = listed[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["created_at", "name", "updated_at"], "names and dates only");
    api.get("/v1/secrets", &a.app_key).await.expect_error(403, "forbidden");
    api.put("/v1/secrets/bad%20name", admin, json!({"value": "x"}))
        .await
        .expect_error(400, "invalid_request");
    api.put("/v1/secrets/empty", admin, json!({"value": ""})).await.expect_error(400, "invalid_request");

    // Two tools send it: in a header and in the query.
    let egress = json!({"egress": {"allow": [allow]}});
    api.put("/v1/tool-settings", admin, egress).await.expect(200);
    let url = format!("http://127.0.0.1:{}/echo", echo.port());
    let by_header = http_tool("echo_header", &url, Some(header_auth("echo-key", "X-Api-Key", "")));
    let created = api.post("/v1/tools", admin, by_header).await;
    let created = created.expect(201).clone();
    assert_eq!((created["kind"].as_str(), created["name"].as_str()), (Some("http"), Some("echo_header")));
    assert_eq!(created["definition"]["auth"]["secret_name"], "echo-key");
    let by_query = http_tool(
        "echo_query",
        &url,
        Some(json!({"secret_name": "echo-key", "placement": {"in": "query", "name": "api_key"}})),
    );
    api.post("/v1/tools", admin, by_query).await.expect(201);
    let tools = api.get("/v1/tools", &a.app_key).await;
    let tools = tools.expect(200).clone();
    let mine: Vec<&str> =
        tools["data"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(mine, ["echo_header", "echo_query"]);
    let builtin: Vec<&str> =
        tools["builtin"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(builtin.contains(&"http_request") && builtin.contains(&"calculator"), "{builtin:?}");

    // Bad definitions get a 4xx with a stable code, and nothing is stored.
    let missing = http_tool("uses_missing", &url, Some(header_auth("not-stored", "X-Api-Key", "")));
    api.post("/v1/tools", admin, missing).await.expect_error(400, "invalid_request");
    api.post("/v1/tools", admin, http_tool("calculator", &url, None)).await.expect_error(409, "conflict");
    api.post("/v1/tools", admin, http_tool("echo_header", &url, None)).await.expect_error(409, "conflict");
    let host_placeholder = http_tool("bad_host", "http://{note}.example.com/", None);
    api.post("/v1/tools", admin, host_placeholder).await.expect_error(400, "invalid_request");
    let mut unknown_field = http_tool("bad_field", &url, None);
    unknown_field["surprise"] = json!(1);
    api.post("/v1/tools", admin, unknown_field).await.expect_error(400, "invalid_request");
    let mut wrong_kind = http_tool("bad_kind", &url, None);
    wrong_kind["kind"] = json!("shell");
    api.post("/v1/tools", admin, wrong_kind).await.expect_error(400, "invalid_request");
    let cookie = http_tool("bad_header", &url, Some(header_auth("echo-key", "Cookie", "")));
    api.post("/v1/tools", admin, cookie).await.expect_error(400, "invalid_request");
    api.post("/v1/tools", &a.app_key, http_tool("app_key", &url, None)).await.expect_error(403, "forbidden");
    let count = api.get("/v1/tools", admin).await;
    assert_eq!(count.expect(200)["data"].as_array().unwrap().len(), 2);

    // An agent run uses both tools; the echoes come back to the model redacted.
    let agent = api.agent(&a, "echoer", "builtin/scripted", &["echo_header", "echo_query"]).await;
    let (run, tool_msgs) =
        api.run(&a, &agent, "call echo_header {\"note\": \"hi\"}; call echo_query {}").await;
    assert_eq!(tool_msgs.len(), 2, "{tool_msgs:?}");
    assert!(
        tool_msgs[0].starts_with("header: raw=[REDACTED] pct=[REDACTED] b64=[REDACTED]"),
        "{tool_msgs:?}"
    );
    assert!(tool_msgs[1].starts_with("query: raw=[REDACTED] pct=[REDACTED] b64=[REDACTED]"), "{tool_msgs:?}");
    let run_id = run["id"].as_str().unwrap();
    // It was really sent: the echo server got it in the header and in the query.
    let got = hits.all();
    assert!(got.iter().any(|(_, h)| h.get("x-api-key").is_some_and(|v| v == secret.as_str())), "{got:?}");
    let in_query = |p: &str| query_param(&p.parse::<Uri>().unwrap(), "api_key");
    assert!(got.iter().any(|(p, _)| in_query(p).as_deref() == Some(secret.as_str())), "{got:?}");

    // Rotation: the next call carries the new value.
    let before = listed[0]["updated_at"].clone();
    let put = api.put("/v1/secrets/echo-key", admin, json!({"value": rotated})).await;
    assert_ne!(put.expect(200)["updated_at"], before);
    let (_, rotated_msgs) = api.run(&a, &agent, "call echo_header {}").await;
    assert!(rotated_msgs[0].starts_with("header: raw=[REDACTED]"), "{rotated_msgs:?}");
    let last = hits.all().pop().unwrap();
    assert_eq!(last.1.get("x-api-key").unwrap(), rotated.as_str());

    // While it is stored, the vault's row holds ciphertext only.
    let needles: Vec<String> = [encodings(&secret), encodings(&rotated)].concat();
    let stored = server.stored_rows().await;
    assert!(stored.iter().any(|(t, r)| t == "secrets" && r.contains("echo-key")), "the vault row is read");
    for (table, row) in &stored {
        nowhere(&format!("a row of {table}"), row, &needles);
    }

    // Deleted: the tool fails without sending anything.
    api.delete("/v1/secrets/echo-key", admin).await.expect(204);
    api.delete("/v1/secrets/echo-key", admin).await.expect_error(404, "not_found");
    let sent = hits.count();
    let (_, gone) = api.run(&a, &agent, "call echo_header {}").await;
    assert!(gone[0].starts_with("error: credential_missing: "), "{gone:?}");
    assert_eq!(hits.count(), sent);

    // Audited by name, never by value; tool calls by digest.
    let audit = api.get("/v1/audit?limit=500&action=secret.", admin).await;
    let audit = audit.expect(200)["data"].as_array().unwrap().clone();
    let actions: Vec<(&str, &str)> =
        audit.iter().map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap())).collect();
    assert_eq!(
        actions,
        [
            ("secret.put", "secret:echo-key"),
            ("secret.put", "secret:echo-key"),
            ("secret.deleted", "secret:echo-key")
        ]
    );
    let calls = api.tool_audit(admin).await;
    let first = calls.iter().find(|e| e["details"]["run_id"] == run_id).expect("the run's calls are audited");
    assert_eq!((first["action"].as_str(), first["outcome"].as_str()), (Some("tool.called"), Some("success")));
    assert_eq!(first["actor"], "system");
    assert_eq!(first["target"], "tool:echo_header");
    assert_eq!(first["details"]["kind"], "http");
    assert_eq!(first["details"]["status"], 200);
    assert_eq!(first["details"]["args_digest"].as_str().unwrap().len(), 64);
    assert!(first["details"]["duration_ms"].is_u64());
    assert!(
        calls.iter().any(|e| e["details"]["outcome"] == "credential_missing" && e["outcome"] == "failure")
    );

    // Other responses that could carry it: the run, its steps, usage, settings.
    api.get(&format!("/v1/runs/{run_id}"), &a.app_key).await.expect(200);
    api.get(&format!("/v1/runs/{run_id}/steps"), &a.app_key).await.expect(200);
    api.get("/v1/audit?limit=500", admin).await.expect(200);
    api.get("/v1/usage/export", admin).await.expect(200);
    api.get("/v1/tool-settings", admin).await.expect(200);
    api.get(&format!("/v1/tools/{}", created["id"].as_str().unwrap()), &a.app_key).await.expect(200);

    // Found nowhere: not in a response, a log line, a stored row (audit
    // entries included), nor in what the model saw.
    for text in api.seen.lock().unwrap().iter() {
        nowhere("an API response", text, &needles);
    }
    let logs = captured_logs();
    assert!(logs.contains(&format!("run={run_id} tool=echo_header outcome=\"ok\"")), "the log is captured");
    nowhere("the log", &logs, &needles);
    let rows = server.stored_rows().await;
    let tables = |needle: &str| {
        rows.iter().filter(|(_, r)| r.contains(needle)).map(|(t, _)| t.as_str()).collect::<Vec<_>>()
    };
    for table in ["tools", "audit_entries", "messages"] {
        assert!(
            tables("echo-key").contains(&table) || tables("[REDACTED]").contains(&table),
            "{table} is read"
        );
    }
    for (table, row) in &rows {
        nowhere(&format!("a row of {table}"), row, &needles);
    }
    for msg in tool_msgs.iter().chain(&rotated_msgs) {
        nowhere("a tool message", msg, &needles);
    }
}
both_backends!(a_credential_never_leaves_the_vault);

// ---------------------------------------------------------------------------
// Invariant 5 (egress): SSRF through the API.

async fn internal_addresses_are_refused_through_the_api(backend: &'static str) {
    // A server that is really listening, and is not excepted.
    let target_hits = Hits::default();
    let target =
        serve("127.0.0.1:0", Router::new().fallback(any(|| async { "reached" })), &target_hits).await;
    let v6_hits = Hits::default();
    let v6_port = match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(probe) => {
            drop(probe);
            serve("[::1]:0", Router::new().fallback(any(|| async { "reached" })), &v6_hits).await.port()
        }
        Err(_) => target.port(),
    };
    // An excepted server that redirects to the one that is not.
    let echo_hits = Hits::default();
    let echo = serve("127.0.0.1:0", echo_app(), &echo_hits).await;
    let server = server(backend, &[format!("127.0.0.1:{}", echo.port())], None).await;
    let api = Api::new(&server);
    let a = server.tenant("ssrf", json!({})).await;
    let admin = a.admin_key.as_str();
    let internal = http_tool("internal", &format!("http://127.0.0.1:{}/internal", target.port()), None);
    api.post("/v1/tools", admin, internal).await.expect(201);
    let agent = api.agent(&a, "fetcher", "builtin/scripted", &["http_request", "internal"]).await;
    let fetch = |url: &str| format!("call http_request {}", json!({"url": url}));

    // The tenant's allow list is empty: even the excepted server is refused.
    let echo_url = format!("http://127.0.0.1:{}/echo", echo.port());
    let (_, msgs) = api.run(&a, &agent, &fetch(&echo_url)).await;
    assert!(msgs[0].starts_with("error: egress_denied: ") && msgs[0].contains("allow list"), "{msgs:?}");
    assert_eq!(echo_hits.count(), 0);

    // Any host and port allowed: only the address checks stand in the way.
    api.put("/v1/tool-settings", admin, json!({"egress": {"allow": ["*:*"]}})).await.expect(200);
    let (_, msgs) = api.run(&a, &agent, &fetch(&echo_url)).await;
    assert!(msgs[0].starts_with("HTTP 200"), "the excepted server is reachable: {msgs:?}");

    let p = target.port();
    let after_redirect = pct(&format!("http://127.0.0.1:{p}/after-redirect"));
    let cases = [
        (fetch(&format!("http://127.0.0.1:{p}/")), "loopback"),
        (fetch(&format!("http://[::1]:{v6_port}/")), "loopback"),
        (fetch("http://169.254.169.254/latest/meta-data/"), "cloud metadata"),
        (fetch("http://10.0.0.1/"), "private"),
        (fetch(&format!("http://localhost:{p}/")), "`localhost` → "),
        (fetch(&format!("http://2130706433:{p}/")), "127.0.0.1"),
        (fetch(&format!("http://0x7f000001:{p}/")), "127.0.0.1"),
        (fetch(&format!("http://127.0.0.1:{}/redirect?to={after_redirect}", echo.port())), "loopback"),
        ("call internal {}".to_owned(), "loopback"),
    ];
    for (message, why) in &cases {
        let (_, msgs) = api.run(&a, &agent, message).await;
        assert_eq!(msgs.len(), 1, "{message}: {msgs:?}");
        assert!(msgs[0].starts_with("error: egress_denied: egress denied: "), "{message}: {msgs:?}");
        assert!(msgs[0].contains(why), "{message}: {msgs:?}");
        assert!(!msgs[0].contains("meta-data"), "refusals name no path: {msgs:?}");
    }
    assert_eq!(
        target_hits.count(),
        0,
        "a refused request reached the IPv4 server: {:?}",
        target_hits.paths()
    );
    assert_eq!(v6_hits.count(), 0, "a refused request reached the IPv6 server");
    assert_eq!(echo_hits.count_path("/redirect"), 1, "the redirect's first hop was followed, then checked");

    // Every refusal is audited as a denied call.
    let denied: Vec<Value> = api
        .tool_audit(admin)
        .await
        .into_iter()
        .filter(|e| e["action"] == "tool.called" && e["details"]["outcome"] == "egress_denied")
        .collect();
    assert_eq!(denied.len(), cases.len() + 1, "{denied:#?}");
    assert!(denied.iter().all(|e| e["outcome"] == "denied"));

    // MCP servers go through the same checks.
    api.put("/v1/secrets/tok", admin, json!({"value": "t"})).await.expect(200);
    let mcp = json!({"name": "internal", "url": format!("http://127.0.0.1:{p}/mcp"),
                     "auth": header_auth("tok", "Authorization", "Bearer ")});
    let mcp = api.post("/v1/mcp-servers", admin, mcp).await;
    let mcp_id = mcp.expect(201)["id"].as_str().unwrap().to_owned();
    let res = api.get(&format!("/v1/mcp-servers/{mcp_id}/tools"), admin).await;
    res.expect_error(403, "egress_denied");
    assert_eq!(target_hits.count(), 0);
}
both_backends!(internal_addresses_are_refused_through_the_api);

// ---------------------------------------------------------------------------
// Permissions: the agent's list, the tenant's list, and tenants apart.

async fn calls_need_the_agent_and_the_tenant_and_stay_in_the_tenant(backend: &'static str) {
    let hits = Hits::default();
    let echo = serve("127.0.0.1:0", echo_app(), &hits).await;
    let allow = format!("127.0.0.1:{}", echo.port());
    let (model, prompts) = fake_model().await;
    let server = server(backend, std::slice::from_ref(&allow), Some(&model)).await;
    let api = Api::new(&server);
    let (a, b) = (server.tenant("perm-a", json!({})).await, server.tenant("perm-b", json!({})).await);
    let base = format!("http://127.0.0.1:{}", echo.port());
    let egress = json!({"allow": [allow]});

    api.put("/v1/tool-settings", &a.admin_key, json!({"egress": egress})).await.expect(200);
    api.put("/v1/secrets/a-cred", &a.admin_key, json!({"value": canary("a-cred")})).await.expect(200);
    let lookup =
        http_tool("lookup", &format!("{base}/a-lookup"), Some(header_auth("a-cred", "X-Api-Key", "")));
    let a_lookup = api.post("/v1/tools", &a.admin_key, lookup).await;
    let a_lookup = a_lookup.expect(201)["id"].as_str().unwrap().to_owned();
    api.post("/v1/tools", &a.admin_key, http_tool("other", &format!("{base}/a-other"), None))
        .await
        .expect(201);
    let agent = api.agent(&a, "narrow", "gpt-4o-mini", &["lookup"]).await;

    // Not in the agent's tools: refused, audited, not executed — although
    // the model asked for it.
    let (run1, msgs) = api.run(&a, &agent, "call other {}").await;
    assert!(msgs[0].starts_with("error: not_in_agent_tools: "), "{msgs:?}");
    assert_eq!(hits.count_path("/a-other"), 0);

    // Not on the tenant's allow list: refused, and not even offered.
    let settings = json!({"allowed_tools": ["other"], "egress": egress});
    api.put("/v1/tool-settings", &a.admin_key, settings).await.expect(200);
    let (run2, msgs) = api.run(&a, &agent, "call lookup {}").await;
    assert!(msgs[0].starts_with("error: not_in_tenant_allow_list: "), "{msgs:?}");
    assert_eq!(hits.count_path("/a-lookup"), 0);
    let offered = prompts.0.lock().unwrap().last().unwrap()["tools"].clone();
    assert!(offered.is_null() || offered.as_array().is_some_and(Vec::is_empty), "{offered}");

    // Admitted by a prefix: runs.
    let settings = json!({"allowed_tools": ["look*"], "egress": egress});
    api.put("/v1/tool-settings", &a.admin_key, settings).await.expect(200);
    let (_, msgs) = api.run(&a, &agent, "call lookup {}").await;
    assert!(msgs[0].starts_with("header: raw=[REDACTED]"), "{msgs:?}");
    assert_eq!(hits.count_path("/a-lookup"), 1);

    let refusals: Vec<(String, String)> = api
        .tool_audit(&a.admin_key)
        .await
        .iter()
        .filter(|e| e["action"] == "tool.refused")
        .map(|e| {
            assert_eq!(e["outcome"], "denied");
            (
                e["details"]["reason"].as_str().unwrap().to_owned(),
                e["details"]["run_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("not_in_agent_tools".to_owned(), run1["id"].as_str().unwrap().to_owned()),
        ("not_in_tenant_allow_list".to_owned(), run2["id"].as_str().unwrap().to_owned()),
    ];
    assert_eq!(refusals, expected);

    // B sees none of A's tools and cannot name them, nor A's credential.
    let b_tools = api.get("/v1/tools", &b.admin_key).await;
    assert!(b_tools.expect(200)["data"].as_array().unwrap().is_empty());
    api.get(&format!("/v1/tools/{a_lookup}"), &b.admin_key).await.expect_error(404, "not_found");
    let thief = json!({"name": "thief", "spec": {"model": "gpt-4o-mini", "tools": ["lookup"]}});
    api.post("/v1/agents", &b.admin_key, thief).await.expect_error(400, "invalid_request");
    let steal = http_tool("steal", &format!("{base}/b-steal"), Some(header_auth("a-cred", "X-Api-Key", "")));
    api.post("/v1/tools", &b.admin_key, steal).await.expect_error(400, "invalid_request");
    // B's model asks for A's tool by name: a tool error, in B's chain.
    let b_agent = api.agent(&b, "b-agent", "gpt-4o-mini", &["calculator"]).await;
    let (_, msgs) = api.run(&b, &b_agent, "call lookup {}").await;
    assert!(msgs[0].starts_with("error: not_in_agent_tools: "), "{msgs:?}");
    assert_eq!(hits.count_path("/a-lookup"), 1);
    // B's own `lookup` is B's: another endpoint, and no credential of A's.
    api.put("/v1/tool-settings", &b.admin_key, json!({"egress": egress})).await.expect(200);
    api.post("/v1/tools", &b.admin_key, http_tool("lookup", &format!("{base}/b-lookup"), None))
        .await
        .expect(201);
    let b_own = api.agent(&b, "b-own", "gpt-4o-mini", &["lookup"]).await;
    let (_, msgs) = api.run(&b, &b_own, "call lookup {}").await;
    assert!(msgs[0].starts_with("query string:"), "B's call carries no credential: {msgs:?}");
    assert_eq!((hits.count_path("/b-lookup"), hits.count_path("/a-lookup")), (1, 1));
    let b_hit = hits.all().into_iter().find(|(p, _)| p.starts_with("/b-lookup")).unwrap();
    assert!(b_hit.1.get("x-api-key").is_none());
    let b_refusals = api.tool_audit(&b.admin_key).await;
    assert_eq!(b_refusals.iter().filter(|e| e["action"] == "tool.refused").count(), 1);
    assert_eq!(
        api.tool_audit(&a.admin_key).await.iter().filter(|e| e["action"] == "tool.refused").count(),
        2
    );
}
both_backends!(calls_need_the_agent_and_the_tenant_and_stay_in_the_tenant);

// ---------------------------------------------------------------------------
// MCP servers per tenant.

async fn mcp_servers_serve_their_own_tenant(backend: &'static str) {
    let token = format!("mcp-{}/x+y=", canary("token"));
    let (mcp, mcp_hits, calls) = mcp_server(&token).await;
    let (blocked, blocked_hits, _) = mcp_server(&token).await;
    let (model, _) = fake_model().await;
    let server = server(backend, &[format!("127.0.0.1:{}", mcp.port())], Some(&model)).await;
    let api = Api::new(&server);
    let (a, b) = (server.tenant("mcp-a", json!({})).await, server.tenant("mcp-b", json!({})).await);
    let admin = a.admin_key.as_str();
    api.put("/v1/secrets/mcp-token", admin, json!({"value": token})).await.expect(200);
    api.put("/v1/tool-settings", admin, json!({"egress": {"allow": ["127.0.0.1:*"]}})).await.expect(200);
    let auth = header_auth("mcp-token", "Authorization", "Bearer ");
    let body = json!({"name": "local", "url": format!("http://127.0.0.1:{}/mcp", mcp.port()), "auth": auth});
    let created = api.post("/v1/mcp-servers", admin, body.clone()).await;
    let local = created.expect(201)["id"].as_str().unwrap().to_owned();

    // Bad registrations.
    api.post("/v1/mcp-servers", admin, body.clone()).await.expect_error(409, "conflict");
    let query_auth = json!({"secret_name": "mcp-token", "placement": {"in": "query", "name": "k"}});
    for bad in [
        json!({"name": "a__b", "url": "http://127.0.0.1/mcp"}),
        json!({"name": "ftp", "url": "ftp://127.0.0.1/mcp"}),
        json!({"name": "q", "url": "http://127.0.0.1/mcp", "auth": query_auth}),
        json!({"name": "nocred", "url": "http://127.0.0.1/mcp", "auth": header_auth("missing", "Authorization", "")}),
        json!({"name": "extra", "url": "http://127.0.0.1/mcp", "surprise": true}),
    ] {
        let res = api.post("/v1/mcp-servers", admin, bad.clone()).await;
        assert!(["invalid_request", "malformed_json"].contains(&res.code()), "{bad}: {}", res.text);
    }

    // Listed through a live session, with the tenant's credential.
    let listed = api.get(&format!("/v1/mcp-servers/{local}/tools"), &a.app_key).await;
    let listed = listed.expect(200)["data"].as_array().unwrap().clone();
    let mut names: Vec<&str> = listed.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["mcp__local__add", "mcp__local__whoami"]);
    // A server at an address the operator did not except is not contacted.
    let blocked_body = json!({"name": "blocked", "url": format!("http://127.0.0.1:{}/mcp", blocked.port()),
                              "auth": header_auth("mcp-token", "Authorization", "Bearer ")});
    let blocked_id = api.post("/v1/mcp-servers", admin, blocked_body).await;
    let blocked_id = blocked_id.expect(201)["id"].as_str().unwrap().to_owned();
    api.get(&format!("/v1/mcp-servers/{blocked_id}/tools"), admin).await.expect_error(403, "egress_denied");
    assert_eq!(blocked_hits.count(), 0);

    // A's agent calls them; the echoed credential reaches the model redacted.
    let tools = ["mcp__local__add", "mcp__local__whoami"];
    let agent = api.agent(&a, "mcp-user", "builtin/scripted", &tools).await;
    // One whose model asks for tools whether offered or not.
    let insistent = api.agent(&a, "mcp-insistent", "gpt-4o-mini", &tools).await;
    let (run, msgs) = api.run(&a, &agent, "call mcp__local__add {\"a\": 2, \"b\": 40}").await;
    assert_eq!(msgs, ["42"]);
    assert!(run["output"]["content"].as_str().unwrap().contains("42"), "{run}");
    let (_, msgs) = api.run(&a, &agent, "call mcp__local__whoami {}").await;
    assert!(msgs[0].starts_with("token=[REDACTED] base64=[REDACTED]"), "{msgs:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let audited = api.tool_audit(admin).await;
    let add = audited.iter().find(|e| e["target"] == "tool:mcp__local__add").unwrap();
    assert_eq!((add["outcome"].as_str(), add["details"]["kind"].as_str()), (Some("success"), Some("mcp")));

    // B has no such server, tool or credential.
    let b_servers = api.get("/v1/mcp-servers", &b.admin_key).await;
    assert!(b_servers.expect(200)["data"].as_array().unwrap().is_empty());
    for path in [format!("/v1/mcp-servers/{local}"), format!("/v1/mcp-servers/{local}/tools")] {
        api.get(&path, &b.admin_key).await.expect_error(404, "not_found");
    }
    api.delete(&format!("/v1/mcp-servers/{local}"), &b.admin_key).await.expect_error(404, "not_found");
    let thief = json!({"name": "thief", "spec": {"model": "builtin/scripted", "tools": ["mcp__local__add"]}});
    api.post("/v1/agents", &b.admin_key, thief).await.expect_error(400, "invalid_request");
    let b_list = api.get("/v1/tools", &b.admin_key).await;
    assert!(!b_list.text.contains("mcp__"), "{}", b_list.text);
    let b_agent = api.agent(&b, "b-agent", "gpt-4o-mini", &["calculator"]).await;
    let (_, msgs) = api.run(&b, &b_agent, "call mcp__local__add {\"a\": 1, \"b\": 1}").await;
    assert!(msgs[0].starts_with("error: not_in_agent_tools: "), "{msgs:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "B reached A's MCP server");

    // Removed: A's agent gets a tool error, and nothing is called.
    api.delete(&format!("/v1/mcp-servers/{local}"), admin).await.expect(204);
    let (_, msgs) = api.run(&a, &insistent, "call mcp__local__add {\"a\": 1, \"b\": 1}").await;
    assert!(msgs[0].starts_with("error: unavailable: "), "{msgs:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(mcp_hits.count() > 0);

    // The credential: nowhere but in the requests to the MCP server.
    let needles = encodings(&token);
    for text in api.seen.lock().unwrap().iter() {
        nowhere("an API response", text, &needles);
    }
    nowhere("the log", &captured_logs(), &needles);
    for (table, row) in server.stored_rows().await {
        nowhere(&format!("a row of {table}"), &row, &needles);
    }
}
both_backends!(mcp_servers_serve_their_own_tenant);

// ---------------------------------------------------------------------------
// Metering and limits.

async fn tool_calls_are_metered_and_limited(backend: &'static str) {
    let server = server_with(backend, &[], None, |c| {
        c.metering.tool_prices.insert("calculator".into(), "0.01".parse().unwrap());
    })
    .await;
    let api = Api::new(&server);
    let t = server.tenant("metered", json!({})).await;
    let limits = json!({"tool_calls_per_minute": 2});
    let path = format!("/v1/tenants/{}/limits", t.id);
    server.call(Method::PUT, &path, Some(&server.operator_key), Some(limits)).await.expect(200);
    let agent = api.agent(&t, "calc", "builtin/scripted", &["calculator"]).await;

    let message =
        (1..=3).map(|i| format!("call calculator {{\"expression\": \"{i}+{i}\"}}")).collect::<Vec<_>>();
    let (run, msgs) = api.run(&t, &agent, &message.join("; ")).await;
    assert_eq!(msgs[..2], ["2", "4"]);
    assert!(msgs[2].starts_with("error: rate_limited: "), "{msgs:?}");
    let run_id = run["id"].as_str().unwrap();

    // Two calls ran: two usage events at the tool's price, with the run's ids.
    let events: Vec<Value> =
        api.usage_events(&t.admin_key).await.into_iter().filter(|e| e["kind"] == "tool_call").collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    for e in &events {
        assert_eq!((e["name"].as_str(), e["quantity"].as_i64()), (Some("calculator"), Some(1)));
        assert_eq!((e["cost_usd"].as_str(), e["run_id"].as_str()), (Some("0.01"), Some(run_id)));
        assert_eq!(e["attributes"]["outcome"], "ok");
    }
    let by_kind = api.get("/v1/usage?group_by=kind", &t.admin_key).await;
    let rows = by_kind.expect(200)["data"].as_array().unwrap().clone();
    let tool_row = rows.iter().find(|r| r["kind"] == "tool_call").unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(tool_row["cost_usd"], "0.02", "{tool_row}");

    // Audited: two calls and the refusal.
    let audit = api.tool_audit(&t.admin_key).await;
    assert_eq!(audit.iter().filter(|e| e["action"] == "tool.called").count(), 2);
    let refused: Vec<&Value> = audit.iter().filter(|e| e["action"] == "tool.refused").collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["details"]["reason"], "rate_limited");
}
both_backends!(tool_calls_are_metered_and_limited);
