//! The test server: a real `bulkhead_server::app` on a loopback port over a
//! fresh store, with a freshly generated operator key.

use std::sync::Arc;

use bulkhead_core::config::{ServerConfig, StoreConfig};
use bulkhead_server::AppState;
use bulkhead_store::DynStore;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Runs `$body` (an async fn taking `&'static str` backend) once per backend,
/// as separate tests named `sqlite` and `postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name("sqlite").await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if bulkhead_store::testing::pg_admin_url().is_none() {
                    eprintln!("PostgreSQL deliberately skipped");
                    return;
                }
                super::$name("postgres").await
            }
        }
    };
}

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub operator_key: String,
    /// The vault's master key, base64 (a cell must share its control
    /// plane's).
    pub master_key: String,
    pub store: DynStore,
    pub store_config: StoreConfig,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response: status and JSON body (or the raw text as a JSON string).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected response: {}", self.text);
        &self.body
    }

    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!((self.status.as_u16(), self.code()), (status, code), "unexpected response: {}", self.text);
        assert!(!self.body["error"]["message"].as_str().unwrap_or("").is_empty(), "errors carry a message");
    }
}

/// A tenant created for a test, with an admin and an app key.
pub struct TestTenant {
    pub id: String,
    pub name: String,
    pub admin_key: String,
    pub admin_key_id: String,
    pub app_key: String,
    pub app_key_id: String,
}

impl TestServer {
    pub async fn start(backend: &str) -> Self {
        Self::start_with(backend, ServerConfig::default()).await
    }

    pub async fn start_with(backend: &str, config: ServerConfig) -> Self {
        let full = bulkhead_core::config::Config { server: config, ..Default::default() };
        Self::start_full(backend, full).await
    }

    /// A server with a whole configuration (providers, catalog, prices…);
    /// a fresh master key unless the configuration names one.
    pub async fn start_full(backend: &str, mut full: bulkhead_core::config::Config) -> Self {
        init_log_capture();
        let mut config = full.server.clone();
        let dir = tempfile::tempdir().unwrap();
        let store_config = bulkhead_store::testing::fresh_config(backend, dir.path()).await.unwrap();
        let store = bulkhead_store::open(&store_config).await.unwrap();
        let operator_key = bulkhead_server::bootstrap::ensure_operator_key(&store, None)
            .await
            .unwrap()
            .expect("a fresh store gets a generated operator key");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        config.listen = addr;
        let shutdown = CancellationToken::new();
        let master_key = full
            .models
            .master_key
            .get_or_insert_with(|| bulkhead_vault::MasterKey::generate().to_base64())
            .clone();
        if full.knowledge.model_dir.is_none() {
            full.knowledge.model_dir = minilm_dir();
        }
        let services = bulkhead_server::bootstrap::services(&full, Arc::clone(&store)).await.unwrap();
        let state = AppState::new(services, config);
        tokio::spawn(bulkhead_server::serve(listener, state, shutdown.clone()));
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            operator_key,
            master_key,
            store,
            store_config,
            shutdown,
            _dir: dir,
        }
    }

    /// Sends a request; `key` becomes the bearer token when given.
    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Resp {
        self.call_with(method, path, key, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
        Resp { status, body, text }
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.call(Method::GET, path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }

    /// Creates a tenant (with `metadata`) and an admin and an app key for it.
    pub async fn tenant(&self, name: &str, metadata: Value) -> TestTenant {
        let op = &self.operator_key;
        let t = self.post("/v1/tenants", op, json!({"name": name, "metadata": metadata})).await;
        let id = t.expect(201)["id"].as_str().unwrap().to_owned();
        let admin = self
            .post(
                &format!("/v1/tenants/{id}/keys"),
                op,
                json!({"name": format!("{name} admin"), "scope": "tenant_admin"}),
            )
            .await;
        let admin = admin.expect(201).clone();
        let app =
            self.post(&format!("/v1/tenants/{id}/keys"), op, json!({"name": format!("{name} app")})).await;
        let app = app.expect(201).clone();
        TestTenant {
            id,
            name: name.to_owned(),
            admin_key: admin["secret"].as_str().unwrap().to_owned(),
            admin_key_id: admin["id"].as_str().unwrap().to_owned(),
            app_key: app["secret"].as_str().unwrap().to_owned(),
            app_key_id: app["id"].as_str().unwrap().to_owned(),
        }
    }

    /// Waits (up to 60 s) until a document's ingestion has finished; returns
    /// the document, which must be `ready`.
    pub async fn wait_document(&self, key: &str, kb: &str, doc: &str) -> Value {
        assert!(
            minilm_dir().is_some(),
            "ingestion needs the embedding model: BULKHEAD_MINILM_DIR=$(bash scripts/models.sh | tail -n 1)"
        );
        let path = format!("/v1/knowledge-bases/{kb}/documents/{doc}");
        for _ in 0..600 {
            let d = self.get(&path, key).await;
            let d = d.expect(200).clone();
            match d["status"].as_str() {
                Some("ready") => return d,
                Some("failed") => panic!("ingestion failed: {d}"),
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        panic!("ingestion of {doc} did not finish within 60 s");
    }

    /// Every stored row, as text, read with the owner's rights.
    pub async fn stored_rows(&self) -> Vec<(String, String)> {
        bulkhead_store::testing::dump_all_rows(&self.store_config).await.unwrap()
    }
}

/// The embedding model's directory (`BULKHEAD_MINILM_DIR`, set by
/// `scripts/test.sh`). Tests that ingest documents need it.
pub fn minilm_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("BULKHEAD_MINILM_DIR").map(Into::into)
}

/// A unique marker to plant in a tenant's data and look for elsewhere.
pub fn canary(label: &str) -> String {
    format!("canary-{label}-{}", uuid::Uuid::now_v7().simple())
}

/// Every log line of the in-process servers of this test binary, so tests
/// can check that no secret was ever logged.
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_log_capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,hyper=info,h2=info,reqwest=info,sqlx=warn")
            .with_ansi(false)
            .with_writer(|| LogSink)
            .try_init();
    });
}

/// Everything logged so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}
