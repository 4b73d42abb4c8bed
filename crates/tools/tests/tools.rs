//! Integration tests of the tools crate against real servers on loopback:
//! SSRF refusals (with listeners that record that nothing reached them), the
//! allow list, HTTP tools with vault credentials and redaction, the size cap
//! and the deadline, and an MCP server started with rmcp's server side.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bulkhead_core::{OperatorCtx, TenantCtx, Tier};
use bulkhead_store::{DynStore, NewTenant};
use bulkhead_tools::mcp::McpConnection;
use bulkhead_tools::{
    AuthPlacement, AuthRef, BodySpec, Denied, EgressConfig, EgressPolicy, HttpMethod, HttpRequestTool,
    HttpTool, HttpToolSpec, McpServerSpec, Resolver, SystemResolver, TenantEgress, ToolError,
};
use bulkhead_vault::{MasterKey, SecretKind, Vault};
use futures::StreamExt as _;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Fixtures.

struct Tenant {
    ctx: TenantCtx,
    vault: Vault,
    _store: DynStore,
    _dir: tempfile::TempDir,
}

async fn tenant() -> Tenant {
    let dir = tempfile::tempdir().unwrap();
    let store = bulkhead_store::testing::fresh_store("sqlite", dir.path()).await.unwrap();
    let op = OperatorCtx::local_cli();
    let t = store
        .create_tenant(&op, NewTenant { name: "tools-test".into(), tier: Tier::Shared, metadata: json!({}) })
        .await
        .unwrap();
    let vault = Vault::new(store.clone(), MasterKey::generate());
    Tenant { ctx: op.act_for(t.id), vault, _store: store, _dir: dir }
}

/// Names the tests control, and the system's resolver for the rest
/// (`localhost` really resolves to loopback).
struct TestResolver(HashMap<&'static str, Vec<IpAddr>>);

impl TestResolver {
    fn new() -> Self {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        Self(HashMap::from([
            ("loopback.test", vec![ip("127.0.0.1")]),
            ("v6-loopback.test", vec![ip("::1")]),
            ("metadata.test", vec![ip("169.254.169.254")]),
            // One public and one loopback address: refused as a whole.
            ("mixed.test", vec![ip("93.184.216.34"), ip("127.0.0.1")]),
            ("api.allowed.test", vec![ip("127.0.0.1")]),
            ("sub.allowed.test", vec![ip("127.0.0.1")]),
            ("api.other.test", vec![ip("127.0.0.1")]),
        ]))
    }
}

#[async_trait]
impl Resolver for TestResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        match self.0.get(host) {
            Some(ips) => Ok(ips.clone()),
            None => SystemResolver.resolve(host).await,
        }
    }
}

fn policy(t: &Tenant, allow: &[String], exceptions: &[String]) -> EgressPolicy {
    policy_with(t, allow, exceptions, 256 * 1024, 5_000)
}

fn policy_with(
    t: &Tenant,
    allow: &[String],
    exceptions: &[String],
    cap: u64,
    timeout_ms: u64,
) -> EgressPolicy {
    let config = EgressConfig {
        exceptions: exceptions.iter().map(|e| e.parse().unwrap()).collect(),
        max_response_bytes: cap,
        timeout_ms,
        max_redirects: 3,
    };
    let tenant =
        TenantEgress { allow: allow.iter().map(|r| r.parse().unwrap()).collect(), ..Default::default() };
    EgressPolicy::new(&t.ctx, &config, &tenant).with_resolver(Arc::new(TestResolver::new()))
}

/// What reached a test server.
#[derive(Clone, Default)]
struct Hits(Arc<Mutex<Vec<(Uri, HeaderMap)>>>);

impl Hits {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn all(&self) -> Vec<(Uri, HeaderMap)> {
        self.0.lock().unwrap().clone()
    }
}

/// Serves `app` on `bind` (port 0), recording every request in `hits`.
async fn serve(bind: &str, app: Router, hits: &Hits) -> SocketAddr {
    let hits = hits.clone();
    let app = app.layer(from_fn(move |req: Request, next: Next| {
        let hits = hits.clone();
        async move {
            hits.0.lock().unwrap().push((req.uri().clone(), req.headers().clone()));
            next.run(req).await
        }
    }));
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn ok_app() -> Router {
    Router::new().fallback(any(|| async { "reached" }))
}

async fn refused(tool: &HttpRequestTool, ctx: &TenantCtx, url: &str) -> String {
    let inv = tool.invoke(ctx, &json!({"url": url})).await;
    assert_eq!(inv.outcome(), "egress_denied", "{url}: {:?}", inv.result);
    match inv.result {
        Err(e @ ToolError::Egress(_)) => e.to_string(),
        other => panic!("{url}: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// SSRF.

#[tokio::test]
async fn internal_destinations_are_refused_and_nothing_reaches_them() {
    let t = tenant().await;
    let hits = Hits::default();
    let v4 = serve("127.0.0.1:0", ok_app(), &hits).await;
    let v6_hits = Hits::default();
    let v6 = match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(probe) => {
            drop(probe);
            Some(serve("[::1]:0", ok_app(), &v6_hits).await)
        }
        Err(_) => None,
    };
    let v6_port = v6.map_or(8080, |a| a.port());
    // Every host and port allowed: only the address checks can refuse.
    let tool = HttpRequestTool::new(policy(&t, &["*:*".into()], &[]));
    let p = v4.port();
    let cases = [
        (format!("http://127.0.0.1:{p}/"), "a loopback address"),
        (format!("http://[::1]:{v6_port}/"), "a loopback address"),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "cloud metadata address, which is never reachable",
        ),
        ("http://[fd00:ec2::254]/".to_owned(), "cloud metadata"),
        ("http://10.0.0.1/".to_owned(), "a private address"),
        ("http://192.168.1.1:8080/".to_owned(), "a private address"),
        ("http://100.64.1.1/".to_owned(), "CGNAT"),
        (format!("http://0.0.0.0:{p}/"), "an unspecified address"),
        (format!("http://2130706433:{p}/"), "127.0.0.1"),
        (format!("http://0x7f000001:{p}/"), "127.0.0.1"),
        (format!("http://0177.0.0.1:{p}/"), "127.0.0.1"),
        (format!("http://127.1:{p}/"), "127.0.0.1"),
        (format!("http://[::ffff:127.0.0.1]:{p}/"), "a loopback address"),
        (format!("http://loopback.test:{p}/"), "`loopback.test` → 127.0.0.1"),
        (format!("http://v6-loopback.test:{v6_port}/"), "a loopback address"),
        (format!("http://localhost:{p}/"), "`localhost` → "),
        ("http://metadata.test/".to_owned(), "cloud metadata"),
        (format!("http://mixed.test:{p}/"), "`mixed.test` → 127.0.0.1"),
    ];
    for (url, want) in &cases {
        let message = refused(&tool, &t.ctx, url).await;
        assert!(message.contains(want), "{url}: {message}");
        assert!(!message.contains("meta-data"), "refusals name no path: {message}");
    }
    assert_eq!(hits.count(), 0, "a refused request reached the IPv4 server");
    assert_eq!(v6_hits.count(), 0, "a refused request reached the IPv6 server");
    // The same servers are reachable once the operator excepts them, so the
    // refusals above were the policy's, not a dead listener's.
    let mut exceptions = vec![format!("127.0.0.1:{p}")];
    if let Some(v6) = v6 {
        exceptions.push(format!("[::1]:{}", v6.port()));
    }
    let tool = HttpRequestTool::new(policy(&t, &["*:*".into()], &exceptions));
    let out = tool.invoke(&t.ctx, &json!({"url": format!("http://127.0.0.1:{p}/")})).await.result.unwrap();
    assert!(out.text.ends_with("reached"), "{}", out.text);
    assert_eq!(hits.count(), 1);
    if let Some(v6) = v6 {
        let url = format!("http://[::1]:{}/", v6.port());
        assert!(tool.invoke(&t.ctx, &json!({"url": url})).await.result.is_ok());
        assert_eq!(v6_hits.count(), 1);
    }
}

#[tokio::test]
async fn redirects_are_checked_on_every_hop() {
    let t = tenant().await;
    let inner_hits = Hits::default();
    let inner = serve("127.0.0.1:0", ok_app(), &inner_hits).await;
    let outer_hits = Hits::default();
    let target = format!("http://127.0.0.1:{}/private", inner.port());
    let app = Router::new()
        .route("/to-inner", get(move || async move { (StatusCode::FOUND, [(header::LOCATION, target)]) }))
        .route(
            "/to-metadata",
            get(|| async {
                (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, "http://169.254.169.254/")])
            }),
        )
        .route(
            "/to-name",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "http://loopback.test/")]) }),
        )
        .route("/hop", get(|| async { (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/final")]) }))
        .route("/final", get(|| async { "final" }))
        .route("/loop", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }));
    let outer = serve("127.0.0.1:0", app, &outer_hits).await;
    // Only the outer server is excepted; the allow list admits any port.
    let allow = ["127.0.0.1:*".into(), "loopback.test:*".into()];
    let tool = HttpRequestTool::new(policy(&t, &allow, &[format!("127.0.0.1:{}", outer.port())]));
    let url = |path: &str| json!({"url": format!("http://127.0.0.1:{}{path}", outer.port())});

    let inv = tool.invoke(&t.ctx, &url("/to-inner")).await;
    let message = inv.result.unwrap_err().to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{}", inner.port())) && message.contains("loopback"),
        "{message}"
    );
    assert_eq!(inner_hits.count(), 0, "the redirect reached a port the operator did not except");
    let message = tool.invoke(&t.ctx, &url("/to-metadata")).await.result.unwrap_err().to_string();
    assert!(message.contains("cloud metadata"), "{message}");
    let message = tool.invoke(&t.ctx, &url("/to-name")).await.result.unwrap_err().to_string();
    assert!(message.contains("`loopback.test` → 127.0.0.1:80 is a loopback address"), "{message}");

    // Redirects the policy admits are followed, and bounded.
    let out = tool.invoke(&t.ctx, &url("/hop")).await.result.unwrap();
    assert_eq!((out.status, out.redirects), (Some(200), 1));
    assert!(out.text.ends_with("final"));
    let err = tool.invoke(&t.ctx, &url("/loop")).await.result.unwrap_err();
    assert!(matches!(err, ToolError::Egress(Denied::TooManyRedirects { max: 3 })), "{err}");
}

#[tokio::test]
async fn the_allow_list_decides_which_hosts_are_reachable() {
    let t = tenant().await;
    let hits = Hits::default();
    let app = Router::new().fallback(any(|headers: HeaderMap| async move {
        headers.get(header::HOST).map(|h| h.to_str().unwrap().to_owned()).unwrap_or_default()
    }));
    let addr = serve("127.0.0.1:0", app, &hits).await;
    let p = addr.port();
    let allow = [format!("api.allowed.test:{p}"), format!("*.allowed.test:{p}")];
    let tool = HttpRequestTool::new(policy(&t, &allow, &[format!("127.0.0.1:{p}")]));

    let message = refused(&tool, &t.ctx, &format!("http://api.other.test:{p}/")).await;
    assert!(message.contains("`api.other.test` is not on this tenant's egress allow list"), "{message}");
    let message = refused(&tool, &t.ctx, "http://api.allowed.test/").await;
    assert!(message.contains("port 80 of `api.allowed.test`"), "{message}");
    let message = refused(&tool, &t.ctx, &format!("http://127.0.0.1:{p}/")).await;
    assert!(message.contains("not on this tenant's egress allow list"), "{message}");
    assert_eq!(hits.count(), 0);

    for host in ["api.allowed.test", "sub.allowed.test"] {
        let out = tool.invoke(&t.ctx, &json!({"url": format!("http://{host}:{p}/x")})).await.result.unwrap();
        // The server saw the name, though the connection went to the checked address.
        assert!(out.text.ends_with(&format!("{host}:{p}")), "{}", out.text);
    }
    assert_eq!(hits.count(), 2);

    // A policy is its tenant's alone.
    let other = tenant().await;
    let inv = tool.invoke(&other.ctx, &json!({"url": format!("http://api.allowed.test:{p}/")})).await;
    assert_eq!(inv.outcome(), "tenant_mismatch");
    assert_eq!(hits.count(), 2);
}

/// Answers with the checked address once, then with a private one — what a
/// DNS-rebinding attacker's name server does.
struct Rebinding(AtomicUsize);

#[async_trait]
impl Resolver for Rebinding {
    async fn resolve(&self, _host: &str) -> std::io::Result<Vec<IpAddr>> {
        let first = self.0.fetch_add(1, Ordering::SeqCst) == 0;
        Ok(vec![if first { "127.0.0.1" } else { "10.0.0.1" }.parse().unwrap()])
    }
}

#[tokio::test]
async fn a_name_is_resolved_once_per_hop_and_the_checked_address_is_used() {
    let t = tenant().await;
    let hits = Hits::default();
    let addr = serve("127.0.0.1:0", ok_app(), &hits).await;
    let p = addr.port();
    let resolver = Arc::new(Rebinding(AtomicUsize::new(0)));
    let policy = policy(&t, &[format!("rebind.test:{p}")], &[format!("127.0.0.1:{p}")])
        .with_resolver(resolver.clone());
    let tool = HttpRequestTool::new(policy);
    let out = tool.invoke(&t.ctx, &json!({"url": format!("http://rebind.test:{p}/")})).await.result.unwrap();
    assert!(out.text.ends_with("reached"));
    assert_eq!(resolver.0.load(Ordering::SeqCst), 1, "the name was looked up again after the check");
    assert_eq!(hits.count(), 1);
    // The next request looks the name up again and gets the private answer: refused.
    let message = refused(&tool, &t.ctx, &format!("http://rebind.test:{p}/")).await;
    assert!(message.contains("10.0.0.1") && message.contains("a private address"), "{message}");
    assert_eq!(hits.count(), 1);
}

// ---------------------------------------------------------------------------
// HTTP tools.

const SECRET: &str = "sk-live_4f9c/A+b=c d&e~9Zx";

/// Echoes what it received that could carry a credential, in the forms a
/// careless API might: raw, as received in the query, percent-encoded and
/// base64.
fn echo_app() -> Router {
    Router::new().fallback(any(|headers: HeaderMap, uri: Uri| async move {
        let auth = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let token = auth.strip_prefix("Bearer ").unwrap_or_default().to_owned();
        let query_key = uri
            .query()
            .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "api_key"))
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let seen = if token.is_empty() { query_key } else { token };
        json!({
            "path": uri.path(),
            "query": uri.query(),
            "authorization": auth,
            "raw": seen,
            "percent": percent_encoding::utf8_percent_encode(&seen, percent_encoding::NON_ALPHANUMERIC).to_string(),
            "b64": STANDARD.encode(&seen),
            "b64_header": STANDARD.encode(&auth),
        })
        .to_string()
    }))
}

fn item_spec(addr: SocketAddr, auth: Option<AuthRef>) -> HttpToolSpec {
    HttpToolSpec {
        name: "get_item".into(),
        description: "Fetches an item".into(),
        parameters: json!({
            "type": "object",
            "properties": {"id": {"type": "string"}, "q": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["id"]
        }),
        method: HttpMethod::Get,
        url_template: format!("http://127.0.0.1:{}/v1/items/{{id}}?q={{q}}&limit={{limit}}", addr.port()),
        headers: BTreeMap::from([("Accept".into(), "application/json".into())]),
        body: BodySpec::None,
        auth,
    }
}

fn leaked_forms(secret: &str) -> Vec<String> {
    vec![
        secret.to_owned(),
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string(),
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        STANDARD.encode(secret),
        STANDARD.encode(format!("Bearer {secret}")),
        // Long fragments that survive only if the redaction missed.
        secret[4..20].to_owned(),
    ]
}

#[tokio::test]
async fn http_tools_inject_the_credential_server_side_and_redact_every_echo() {
    let t = tenant().await;
    t.vault.put(&t.ctx, SecretKind::Credential, "items-key", SECRET).await.unwrap();
    let hits = Hits::default();
    let addr = serve("127.0.0.1:0", echo_app(), &hits).await;
    let p = policy(&t, &[format!("127.0.0.1:{}", addr.port())], &[format!("127.0.0.1:{}", addr.port())]);

    let in_header = AuthRef {
        secret_name: "items-key".into(),
        placement: AuthPlacement::Header { name: "Authorization".into(), prefix: "Bearer ".into() },
    };
    let in_query = AuthRef {
        secret_name: "items-key".into(),
        placement: AuthPlacement::Query { name: "api_key".into() },
    };
    for auth in [in_header, in_query] {
        let tool = HttpTool::new(item_spec(addr, Some(auth.clone())), p.clone(), t.vault.clone()).unwrap();
        // The model's view of the tool holds no credential either.
        assert!(!format!("{:?}", tool.schema()).contains(SECRET));
        let inv = tool.invoke(&t.ctx, &json!({"id": "42", "q": "a b"})).await;
        assert!(!format!("{inv:?}").contains(SECRET), "{auth:?}: the invocation holds the secret");
        assert_eq!(inv.tool, "get_item");
        assert!(inv.args_digest.starts_with("sha256:"));
        let out = inv.result.unwrap();
        assert_eq!(out.status, Some(200));
        assert!(!out.is_error && !out.truncated && out.bytes_received > 0);

        // The server got the real credential…
        let (uri, headers) = hits.all().pop().unwrap();
        match &auth.placement {
            AuthPlacement::Header { .. } => {
                assert_eq!(headers[header::AUTHORIZATION], format!("Bearer {SECRET}").as_str());
            }
            AuthPlacement::Query { .. } => {
                let pairs: Vec<(String, String)> =
                    url::form_urlencoded::parse(uri.query().unwrap().as_bytes()).into_owned().collect();
                assert!(pairs.contains(&("api_key".into(), SECRET.into())), "{pairs:?}");
                assert!(headers.get(header::AUTHORIZATION).is_none());
            }
        }
        assert_eq!(uri.path(), "/v1/items/42");
        // …and the model sees none of its echoes.
        for form in leaked_forms(SECRET) {
            assert!(!out.text.contains(&form), "{auth:?}: `{form}` leaked in {}", out.text);
        }
        let echoed: Value = serde_json::from_str(&out.text).unwrap();
        assert_eq!(echoed["raw"], "[REDACTED]");
        assert_eq!(echoed["percent"], "[REDACTED]");
        assert_eq!(echoed["b64"], "[REDACTED]");
        let query = match &auth.placement {
            AuthPlacement::Header { .. } => "q=a%20b",
            AuthPlacement::Query { .. } => "q=a%20b&api_key=[REDACTED]",
        };
        assert_eq!(echoed["query"], query);
        assert!(!inv_model_text(&tool, &t.ctx).await.contains(SECRET));
    }
}

async fn inv_model_text(tool: &HttpTool, ctx: &TenantCtx) -> String {
    match tool.invoke(ctx, &json!({"id": "7"})).await.into_model_result() {
        Ok(text) | Err(text) => text,
    }
}

#[tokio::test]
async fn arguments_cannot_move_the_host_and_bad_ones_send_nothing() {
    let t = tenant().await;
    let hits = Hits::default();
    let addr = serve("127.0.0.1:0", echo_app(), &hits).await;
    let p = policy(&t, &[format!("127.0.0.1:{}", addr.port())], &[format!("127.0.0.1:{}", addr.port())]);
    let tool = HttpTool::new(item_spec(addr, None), p.clone(), t.vault.clone()).unwrap();

    // Hostile values stay inside their component, percent-encoded.
    let out = tool
        .invoke(&t.ctx, &json!({"id": "@169.254.169.254/latest?x=1#", "q": "x&admin=true", "limit": 5}))
        .await
        .result
        .unwrap();
    let echoed: Value = serde_json::from_str(&out.text).unwrap();
    assert_eq!(echoed["path"], "/v1/items/%40169.254.169.254%2Flatest%3Fx%3D1%23");
    assert_eq!(echoed["query"], "q=x%26admin%3Dtrue&limit=5");
    assert_eq!(hits.count(), 1);

    for (args, code) in [
        (json!({"id": ".."}), "invalid_arguments"),
        (json!({"id": "."}), "invalid_arguments"),
        (json!({}), "invalid_arguments"),
        (json!({"id": 42}), "invalid_arguments"),
        (json!({"id": "1", "limit": "ten"}), "invalid_arguments"),
        (json!("id=1"), "invalid_arguments"),
    ] {
        let inv = tool.invoke(&t.ctx, &args).await;
        assert_eq!(inv.outcome(), code, "{args}");
    }
    assert_eq!(hits.count(), 1, "a refused call sent a request");

    // A template cannot take its host from the arguments at all.
    let spec = HttpToolSpec { url_template: "http://{host}/v1/items/{id}".into(), ..item_spec(addr, None) };
    assert!(matches!(HttpTool::new(spec, p.clone(), t.vault.clone()), Err(ToolError::InvalidSpec(_))));

    // A credential the vault does not hold: refused before sending.
    let auth = AuthRef {
        secret_name: "absent".into(),
        placement: AuthPlacement::Header { name: "X-Api-Key".into(), prefix: String::new() },
    };
    let tool = HttpTool::new(item_spec(addr, Some(auth)), p, t.vault.clone()).unwrap();
    let inv = tool.invoke(&t.ctx, &json!({"id": "1"})).await;
    assert_eq!(inv.outcome(), "credential_missing");
    assert_eq!(hits.count(), 1);
}

#[tokio::test]
async fn credentials_do_not_follow_redirects_to_another_origin_and_bodies_are_sent() {
    let t = tenant().await;
    t.vault.put(&t.ctx, SecretKind::Credential, "k", SECRET).await.unwrap();
    let other_hits = Hits::default();
    let other = serve("127.0.0.1:0", echo_app(), &other_hits).await;
    let hits = Hits::default();
    let elsewhere = format!("http://127.0.0.1:{}/landed", other.port());
    let app = Router::new()
        .route(
            "/v1/items/away",
            any(move || async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, elsewhere)]) }),
        )
        .route(
            "/v1/items/home",
            any(|| async { (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/v1/items/echo")]) }),
        )
        .route(
            "/v1/items/echo",
            any(|headers: HeaderMap, body: Bytes| async move {
                json!({
                    "auth": headers.get("x-api-key").is_some(),
                    "body": String::from_utf8_lossy(&body),
                })
                .to_string()
            }),
        );
    let addr = serve("127.0.0.1:0", app, &hits).await;
    let ports = [addr.port(), other.port()];
    let p = policy(&t, &ports.map(|p| format!("127.0.0.1:{p}")), &ports.map(|p| format!("127.0.0.1:{p}")));
    let auth = AuthRef {
        secret_name: "k".into(),
        placement: AuthPlacement::Header { name: "X-Api-Key".into(), prefix: String::new() },
    };
    let spec = HttpToolSpec {
        method: HttpMethod::Post,
        body: BodySpec::Json { template: json!({"item": "{id}", "note": "limit {limit}"}) },
        ..item_spec(addr, Some(auth))
    };
    let tool = HttpTool::new(spec, p, t.vault.clone()).unwrap();

    let out = tool.invoke(&t.ctx, &json!({"id": "home", "limit": 3})).await.result.unwrap();
    let echoed: Value = serde_json::from_str(&out.text).unwrap();
    assert_eq!(echoed["auth"], true, "a same-origin redirect keeps the credential");
    assert_eq!(
        serde_json::from_str::<Value>(echoed["body"].as_str().unwrap()).unwrap(),
        json!({"item": "home", "note": "limit 3"})
    );
    assert_eq!(out.redirects, 1);
    assert!(out.bytes_sent > 0);

    let out = tool.invoke(&t.ctx, &json!({"id": "away"})).await.result.unwrap();
    assert_eq!(out.redirects, 1);
    let (uri, headers) = other_hits.all().pop().unwrap();
    assert_eq!(uri.path(), "/landed");
    assert!(headers.get("x-api-key").is_none(), "the credential followed a cross-origin redirect");
}

// ---------------------------------------------------------------------------
// Caps.

#[tokio::test]
async fn a_huge_response_is_cut_at_the_cap_without_being_read() {
    const TOTAL: usize = 50 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    const CAP: u64 = 256 * 1024;
    let t = tenant().await;
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    let app = Router::new().route(
        "/big",
        get(move || {
            let counter = counter.clone();
            async move {
                let chunk = Bytes::from(vec![b'a'; CHUNK]);
                let stream = futures::stream::iter(0..TOTAL / CHUNK).map(move |_| {
                    counter.fetch_add(CHUNK, Ordering::SeqCst);
                    Ok::<_, Infallible>(chunk.clone())
                });
                Response::builder()
                    .header(header::CONTENT_LENGTH, TOTAL)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
        }),
    );
    let addr = serve("127.0.0.1:0", app, &Hits::default()).await;
    let allow = [format!("127.0.0.1:{}", addr.port())];
    let tool = HttpRequestTool::new(policy_with(&t, &allow, &allow, CAP, 10_000));
    let inv = tool.invoke(&t.ctx, &json!({"url": format!("http://127.0.0.1:{}/big", addr.port())})).await;
    let out = inv.result.unwrap();
    assert!(out.truncated);
    assert_eq!(out.bytes_received, CAP);
    assert!(
        out.text.ends_with(&format!("[response cut at {CAP} bytes]")),
        "{}",
        &out.text[out.text.len() - 60..]
    );
    // The server stops producing once the connection is gone; what it made
    // is what the socket buffers held, far from the 50 MB.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let made = produced.load(Ordering::SeqCst);
    assert!(made < TOTAL / 4, "the server produced {made} bytes");
}

#[tokio::test]
async fn the_deadline_covers_slow_headers_and_slow_bodies() {
    let t = tenant().await;
    let app = Router::new()
        .route(
            "/slow-headers",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/slow-body",
            get(|| async {
                let stream = futures::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((Ok::<_, Infallible>(Bytes::from_static(b"x")), ()))
                });
                Body::from_stream(stream).into_response()
            }),
        );
    let addr = serve("127.0.0.1:0", app, &Hits::default()).await;
    let allow = [format!("127.0.0.1:{}", addr.port())];
    let tool = HttpRequestTool::new(policy_with(&t, &allow, &allow, 1024 * 1024, 400));
    for path in ["/slow-headers", "/slow-body"] {
        let inv =
            tool.invoke(&t.ctx, &json!({"url": format!("http://127.0.0.1:{}{path}", addr.port())})).await;
        assert_eq!(inv.outcome(), "timeout", "{path}");
        assert!(inv.duration < Duration::from_secs(3), "{path}: {:?}", inv.duration);
        assert_eq!(inv.into_model_result().unwrap_err(), "no complete response within 400 ms");
    }
}

// ---------------------------------------------------------------------------
// MCP.

mod mcp_server {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
    pub struct TestServer {
        tool_router: ToolRouter<Self>,
        pub calls: Arc<AtomicUsize>,
        pub token: String,
    }

    impl TestServer {
        pub fn new(calls: Arc<AtomicUsize>, token: String) -> Self {
            Self { tool_router: Self::tool_router(), calls, token }
        }
    }

    #[tool_router]
    impl TestServer {
        #[tool(description = "Adds two integers")]
        fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
            self.calls.fetch_add(1, Ordering::SeqCst);
            (a + b).to_string()
        }

        /// A careless server that prints its credential back.
        #[tool(name = "debug.whoami", description = "Shows the caller's token")]
        fn whoami(&self) -> String {
            use base64::Engine as _;
            self.calls.fetch_add(1, Ordering::SeqCst);
            let b64 = base64::engine::general_purpose::STANDARD.encode(&self.token);
            format!("you are token={} (base64 {b64})", self.token)
        }
    }

    #[tool_handler(router = self.tool_router)]
    impl ServerHandler for TestServer {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        }
    }
}

/// An MCP server on loopback that demands `Authorization: Bearer {token}`;
/// returns its address, the number of HTTP requests that reached it, and the
/// number of tool calls it ran.
async fn mcp_server(token: &str) -> (SocketAddr, Hits, Arc<AtomicUsize>) {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (c, tok) = (calls.clone(), token.to_owned());
    let service: StreamableHttpService<mcp_server::TestServer, LocalSessionManager> =
        StreamableHttpService::new(
            move || Ok(mcp_server::TestServer::new(c.clone(), tok.clone())),
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
    let addr = serve("127.0.0.1:0", app, &hits).await;
    (addr, hits, calls)
}

fn mcp_spec(addr: SocketAddr, secret_name: &str) -> McpServerSpec {
    McpServerSpec {
        name: "local".into(),
        url: format!("http://127.0.0.1:{}/mcp", addr.port()),
        auth: Some(AuthRef {
            secret_name: secret_name.into(),
            placement: AuthPlacement::Header { name: "Authorization".into(), prefix: "Bearer ".into() },
        }),
    }
}

#[tokio::test]
async fn mcp_tools_are_listed_and_called_with_the_tenants_credential() {
    let t = tenant().await;
    let token = "mcp-token-Zq81/x+y==";
    t.vault.put(&t.ctx, SecretKind::Credential, "mcp", token).await.unwrap();
    t.vault.put(&t.ctx, SecretKind::Credential, "wrong", "not-the-token").await.unwrap();
    let (addr, hits, calls) = mcp_server(token).await;
    let allow = [format!("127.0.0.1:{}", addr.port())];
    let p = policy(&t, &allow, &allow);

    let conn = McpConnection::connect(&t.ctx, &mcp_spec(addr, "mcp"), &p, &t.vault).await.unwrap();
    let mut tools = conn.list_tools(&t.ctx).await.unwrap();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["add", "debug.whoami"]);
    assert_eq!(tools[0].schema.name, "mcp__local__add");
    assert_eq!(tools[0].schema.description, "Adds two integers");
    assert_eq!(tools[0].schema.parameters["type"], "object");
    let whoami = tools[1].schema.name.clone();
    assert!(whoami.starts_with("mcp__local__debug_whoami_") && whoami.len() <= 64, "{whoami}");
    assert_eq!(bulkhead_tools::mcp::server_of(&whoami), Some("local"));

    let inv = conn.call_tool(&t.ctx, "mcp__local__add", &json!({"a": 2, "b": 40})).await;
    assert_eq!(inv.outcome(), "ok");
    let out = inv.result.unwrap();
    assert_eq!(out.text, "42");
    assert!(out.bytes_sent > 0 && out.bytes_received > 0 && out.status.is_none());

    let out = conn.call_tool(&t.ctx, &whoami, &json!({})).await.result.unwrap();
    assert!(out.text.starts_with("you are token=[REDACTED]"), "{}", out.text);
    assert!(!out.text.contains(token) && !out.text.contains(&STANDARD.encode(token)), "{}", out.text);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Arguments that break the tool's schema, and unknown tools, are
    // refused here, without a call.
    let inv = conn.call_tool(&t.ctx, "mcp__local__add", &json!({"a": "two", "b": 1})).await;
    assert_eq!(inv.outcome(), "invalid_arguments");
    let inv = conn.call_tool(&t.ctx, "mcp__local__nope", &json!({})).await;
    assert_eq!(inv.outcome(), "invalid_arguments");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Another tenant cannot use this session.
    let other = tenant().await;
    assert_eq!(
        conn.call_tool(&other.ctx, "mcp__local__add", &json!({"a": 1, "b": 1})).await.outcome(),
        "tenant_mismatch"
    );
    conn.close().await;

    // The server checks the credential: a wrong one gets no session.
    let before = hits.count();
    let err = McpConnection::connect(&t.ctx, &mcp_spec(addr, "wrong"), &p, &t.vault).await.unwrap_err();
    assert!(matches!(err, ToolError::Mcp { .. }), "{err}");
    assert!(!err.to_string().contains("not-the-token"), "{err}");
    assert!(hits.count() > before, "the wrong credential was not even tried");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn mcp_servers_on_loopback_are_refused_without_the_operators_exception() {
    let t = tenant().await;
    t.vault.put(&t.ctx, SecretKind::Credential, "mcp", "tok").await.unwrap();
    let (addr, hits, _calls) = mcp_server("tok").await;
    // The tenant allows the address; the operator has not excepted it.
    let p = policy(&t, &[format!("127.0.0.1:{}", addr.port())], &[]);
    let err = McpConnection::connect(&t.ctx, &mcp_spec(addr, "mcp"), &p, &t.vault).await.unwrap_err();
    assert!(matches!(err, ToolError::Egress(Denied::Address { .. })), "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");
    // Nor through a name that resolves to loopback.
    let spec =
        McpServerSpec { url: format!("http://loopback.test:{}/mcp", addr.port()), ..mcp_spec(addr, "mcp") };
    let p = policy(&t, &[format!("loopback.test:{}", addr.port())], &[]);
    let err = McpConnection::connect(&t.ctx, &spec, &p, &t.vault).await.unwrap_err();
    assert!(err.is_egress_denied(), "{err}");
    assert_eq!(hits.count(), 0, "a refused MCP server was contacted");
}
