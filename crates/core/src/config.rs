//! The one typed configuration tree, layered: built-in defaults → TOML file →
//! `BULKHEAD_*` environment (and `DATABASE_URL`) → command-line flags.
//! Validated once at start, then passed down as sub-structs; nothing deeper
//! reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::{Error, Money};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub metering: MeteringConfig,
    pub limits: LimitsConfig,
    pub models: ModelsConfig,
    pub agents: AgentsConfig,
    pub knowledge: KnowledgeConfig,
    pub tools: ToolsConfig,
    /// Code execution: backend (`bubblewrap` | `gvisor`), concurrency caps
    /// and backend settings. Its shape belongs to `bulkhead-sandbox`
    /// (`SandboxConfig`), which validates it at start; empty = defaults.
    pub sandbox: serde_json::Value,
    pub telemetry: TelemetryConfig,
}

/// OpenTelemetry traces. Off unless `otlp_endpoint` is set: then spans of
/// HTTP requests, runs, model calls, tool calls and sandbox executions (with
/// `tenant.id`, never secrets, prompts or code) go to that OTLP/HTTP
/// receiver (protobuf). Prometheus metrics are on the API's `GET /metrics`;
/// a `bulkhead worker` serves its own on `metrics_listen`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://otel-collector:4318`;
    /// traces are posted to `{otlp_endpoint}/v1/traces` (a URL already ending
    /// in `/v1/traces` is used as is). Env: `BULKHEAD_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of traces kept, 0.0-1.0 (by trace id; a child follows its parent).
    pub sample_ratio: f64,
    /// `bulkhead worker` only (it has no API): where to serve `GET /metrics`
    /// of what it counted, e.g. `0.0.0.0:9090`. None: not served.
    /// Env: `BULKHEAD_METRICS_LISTEN`.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: "bulkhead".into(), sample_ratio: 1.0, metrics_listen: None }
    }
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), Error> {
        if let Some(url) = &self.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::invalid("telemetry.otlp_endpoint must be an http(s) URL"));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(Error::invalid("telemetry.sample_ratio must be between 0.0 and 1.0"));
        }
        if self.service_name.trim().is_empty() {
            return Err(Error::invalid("telemetry.service_name must not be empty"));
        }
        Ok(())
    }
}

/// Tools that reach the network (`http_request`, tenant HTTP tools, MCP
/// servers): the operator's part of the egress policy. Mirrors
/// `bulkhead_tools::EgressConfig`, which `core` cannot depend on; the
/// server converts it at start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ToolsConfig {
    /// Loopback, private, link-local, CGNAT or reserved destinations tools
    /// may reach anyway, each with its ports: `127.0.0.1:8080`,
    /// `10.1.0.0/16:443,8443`, `[::1]:9000`, `[fd00::/8]:*`. Empty by
    /// default. Metadata addresses cannot be excepted.
    pub egress_exceptions: Vec<String>,
    /// Largest response body a tool reads, in bytes; the rest is cut off.
    pub max_response_bytes: u64,
    /// Deadline of one tool exchange (every hop, redirects and body).
    pub timeout_ms: u64,
    /// Redirects followed at most; each hop is checked again.
    pub max_redirects: u32,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            egress_exceptions: Vec::new(),
            max_response_bytes: 1024 * 1024,
            timeout_ms: 30_000,
            max_redirects: 5,
        }
    }
}

impl ToolsConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.max_response_bytes == 0 || self.max_response_bytes > 64 * 1024 * 1024 {
            return Err(Error::invalid("tools.max_response_bytes must be between 1 and 64 MiB"));
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Err(Error::invalid("tools.timeout_ms must be between 100 and 600000"));
        }
        if self.max_redirects > 20 {
            return Err(Error::invalid("tools.max_redirects must be at most 20"));
        }
        for e in &self.egress_exceptions {
            if !valid_exception(e) {
                return Err(Error::invalid(format!(
                    "tools.egress_exceptions: `{e}` is not ADDRESS[/PREFIX]:PORTS, e.g. `127.0.0.1:8080`, \
                     `10.0.0.0/8:443`, `[::1]:9000`, `[fd00::/8]:*`"
                )));
            }
        }
        Ok(())
    }
}

/// The shape of an egress exception: `ip[/prefix]:ports` or
/// `[ipv6[/prefix]]:ports`, ports `*` or a comma-separated list. (The tools
/// crate parses it in full; this catches typos at start.)
fn valid_exception(text: &str) -> bool {
    let text = text.trim();
    let split = match text.strip_prefix('[') {
        Some(rest) => rest.split_once("]:"),
        None => text.rsplit_once(':').filter(|(net, _)| !net.contains(':')),
    };
    let Some((net, ports)) = split else { return false };
    let (addr, prefix) = match net.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (net, None),
    };
    let Ok(addr) = addr.parse::<std::net::IpAddr>() else { return false };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_ok = prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max));
    let ports_ok = ports == "*" || ports.split(',').all(|p| p.trim().parse::<u16>().is_ok_and(|p| p != 0));
    prefix_ok && ports_ok
}

/// Knowledge bases: document limits, chunking, the embedded model, and the
/// in-memory vector indexes of the embedded (SQLite) mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KnowledgeConfig {
    /// Largest document accepted, in bytes.
    pub max_document_bytes: usize,
    /// Chunk size and overlap, in tokens, for knowledge bases that set none.
    pub chunk_tokens: i32,
    pub chunk_overlap: i32,
    /// The all-MiniLM-L6-v2 directory (`model.safetensors`, `tokenizer.json`,
    /// `config.json`); `scripts/models.sh` installs one and prints its path.
    /// Its tokenizer also counts tokens for chunking. Without it, documents
    /// cannot be ingested.
    pub model_dir: Option<PathBuf>,
    /// SQLite mode: a knowledge base's in-memory index is searched exactly
    /// up to this many chunks, through an HNSW graph beyond.
    pub exact_limit: usize,
    /// SQLite mode: memory for in-memory indexes (least recently used are dropped).
    pub index_cache_mb: usize,
    /// Documents ingested at once by this process.
    pub ingest_workers: usize,
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: 10 * 1024 * 1024,
            chunk_tokens: 200,
            chunk_overlap: 32,
            model_dir: None,
            exact_limit: 20_000,
            index_cache_mb: 1_024,
            ingest_workers: 1,
        }
    }
}

/// Workers and the run queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// Runs this process executes at once (`serve` and `worker`). 0 makes
    /// `serve` an API-only process: it executes no runs and no ingestion
    /// jobs, which then wait for `bulkhead worker` processes.
    pub workers: usize,
    /// Runs a tenant may have waiting; more get 429 `queue_full`.
    pub max_queued_runs: i64,
    /// How long a worker's claim on a run lasts without renewal.
    pub lease_secs: u64,
    /// Claims before a run whose workers keep vanishing is failed.
    pub max_attempts: i32,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self { workers: 16, max_queued_runs: 1_000, lease_secs: 30, max_attempts: 3 }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Dedicated tenants: how long to wait for a TCP connection to their
    /// cell before answering `cell_unavailable`.
    pub cell_connect_timeout_ms: u64,
    /// Dedicated tenants: the longest silence between two reads from a
    /// cell (a stream may last longer; it may not stall longer).
    pub cell_read_timeout_secs: u64,
    /// When set, `GET /metrics` (the API's and a worker's) answers only
    /// `Authorization: Bearer <this token>`: a scrape credential that is not
    /// an operator key. Unset: public, like the probes.
    pub metrics_token: Option<String>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("cell_connect_timeout_ms", &self.cell_connect_timeout_ms)
            .field("cell_read_timeout_secs", &self.cell_read_timeout_secs)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Where the embedded store (SQLite) keeps its files.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL; when set, PostgreSQL is the store. Migrations run as
    /// this URL's role (the owner); queries run as `app_role`.
    pub database_url: Option<String>,
    /// The PostgreSQL role the server works as: not the owner, no BYPASSRLS.
    pub app_role: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Operator key to install on first start instead of generating one.
    pub operator_key: Option<String>,
}

/// Prices and the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MeteringConfig {
    /// A TOML model catalog that extends or overrides the shipped one.
    pub catalog_file: Option<PathBuf>,
    /// Price of one tool call, unless the tool has its own.
    pub tool_call_price: Money,
    /// Per-tool prices per call.
    pub tool_prices: std::collections::BTreeMap<String, Money>,
    /// Price of one second of sandbox CPU time.
    pub sandbox_cpu_second_price: Money,
    /// How long an unsettled budget reservation lives.
    pub reservation_ttl_secs: u64,
    /// Usage writes queued before callers wait.
    pub ledger_queue: usize,
    /// Largest batch written in one transaction.
    pub ledger_batch: usize,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self {
            catalog_file: None,
            tool_call_price: Money::ZERO,
            tool_prices: Default::default(),
            sandbox_cpu_second_price: Money::ZERO,
            reservation_ttl_secs: 15 * 60,
            ledger_queue: 16_384,
            ledger_batch: 2_000,
        }
    }
}

/// Model providers and the platform's default model per task type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Task type (`reasoning`, `classification`, `summarization`,
    /// `embedding`, … an open set) → model, for tenants that set none.
    pub defaults: std::collections::BTreeMap<String, String>,
    /// Providers by the name the model catalog uses (`openai`, `anthropic`,
    /// `builtin`, or your own, e.g. a vLLM server).
    pub providers: std::collections::BTreeMap<String, ProviderSettings>,
    /// Master key (32 bytes, base64) that wraps each tenant's data key in
    /// the vault. Without one, the embedded store keeps a generated key in
    /// `<data_dir>/master.key`; PostgreSQL deployments must set it.
    pub master_key: Option<String>,
}

/// How to reach one provider.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// `openai` (also any OpenAI-compatible server), `anthropic` or `builtin`.
    pub kind: String,
    pub base_url: String,
    /// The platform's key; tenants may bring their own instead.
    pub api_key: Option<String>,
    pub timeout_secs: u64,
    pub max_retries: u32,
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout_secs", &self.timeout_secs)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            kind: "openai".into(),
            base_url: String::new(),
            api_key: None,
            timeout_secs: 120,
            max_retries: 2,
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        let provider = |kind: &str, base_url: &str| ProviderSettings {
            kind: kind.into(),
            base_url: base_url.into(),
            ..ProviderSettings::default()
        };
        Self {
            defaults: [
                ("reasoning", "builtin/scripted"),
                ("classification", "builtin/scripted"),
                ("summarization", "builtin/scripted"),
                ("chat", "builtin/scripted"),
                ("embedding", "builtin/all-minilm-l6-v2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            providers: [
                ("builtin".to_owned(), provider("builtin", "")),
                ("openai".to_owned(), provider("openai", "https://api.openai.com/v1")),
                ("anthropic".to_owned(), provider("anthropic", "https://api.anthropic.com")),
            ]
            .into_iter()
            .collect(),
            master_key: None,
        }
    }
}

/// Where rate-limit and concurrency state lives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// A Redis URL: limits are shared by every replica using it. Without
    /// one, each process enforces limits on its own.
    pub redis_url: Option<String>,
    /// When Redis is unreachable: `deny` (fail closed) or `local` (each
    /// replica enforces alone until Redis is back).
    pub redis_fallback: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { redis_url: None, redis_fallback: "deny".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info,bulkhead=debug`.
    pub filter: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 2 * 1024 * 1024,
            shutdown_grace_secs: 20,
            cell_connect_timeout_ms: 3_000,
            cell_read_timeout_secs: 300,
            metrics_token: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./bulkhead-data"),
            database_url: None,
            app_role: "bulkhead_app".into(),
            max_connections: 16,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: "text".into(), filter: "info".into() }
    }
}

/// Flat environment names, for the settings people set most, mapped into
/// the tree; anything else is `BULKHEAD_SECTION__KEY`.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("LISTEN", "server.listen"),
    ("MAX_BODY_BYTES", "server.max_body_bytes"),
    ("DATA_DIR", "store.data_dir"),
    ("DATABASE_URL", "store.database_url"),
    ("APP_ROLE", "store.app_role"),
    ("OPERATOR_KEY", "auth.operator_key"),
    ("REDIS_URL", "limits.redis_url"),
    ("MASTER_KEY", "models.master_key"),
    ("LOG_FORMAT", "log.format"),
    ("LOG", "log.filter"),
    ("MINILM_DIR", "knowledge.model_dir"),
    ("OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    ("METRICS_LISTEN", "telemetry.metrics_listen"),
    ("METRICS_TOKEN", "server.metrics_token"),
];

impl Config {
    /// Loads the layers. `file` is read if given (it must exist) or, when
    /// `None`, `bulkhead.toml` in the working directory if present. `flags`
    /// holds only the settings given on the command line.
    pub fn load(file: Option<&Path>, flags: &Figment) -> Result<Self, Error> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                return Err(Error::invalid(format!("config file {} not found", path.display())));
            }
            Some(path) => fig = fig.merge(Toml::file_exact(path)),
            None => fig = fig.merge(Toml::file("bulkhead.toml")),
        }
        // Only aliases and nested `SECTION__KEY` names are configuration;
        // other BULKHEAD_* variables (test and script knobs) are not ours.
        let env = Env::prefixed("BULKHEAD_")
            .filter(|key| {
                let upper = key.as_str().to_ascii_uppercase();
                upper.contains("__") || ENV_ALIASES.iter().any(|(alias, _)| *alias == upper)
            })
            .map(|key| {
                let upper = key.as_str().to_ascii_uppercase();
                ENV_ALIASES
                    .iter()
                    .find(|(alias, _)| *alias == upper)
                    .map(|(_, path)| (*path).into())
                    .unwrap_or_else(|| key.as_str().replace("__", ".").into())
            });
        // Ignore keys we do not know only for the conventional DATABASE_URL.
        fig = fig
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "store.database_url".into()))
            .merge(env)
            .merge(flags.clone());
        let config: Config = fig.extract().map_err(|e| Error::invalid(format!("configuration: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.server.max_body_bytes < 1024 {
            return Err(Error::invalid("server.max_body_bytes must be at least 1024"));
        }
        if self
            .server
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.len() < 16 || t.chars().any(char::is_whitespace))
        {
            return Err(Error::invalid(
                "server.metrics_token must be at least 16 characters, without spaces",
            ));
        }
        if !(1..=60_000).contains(&self.server.cell_connect_timeout_ms)
            || self.server.cell_read_timeout_secs == 0
        {
            return Err(Error::invalid(
                "server.cell_connect_timeout_ms must be 1-60000 and server.cell_read_timeout_secs at least 1",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(Error::invalid("log.format must be `text` or `json`"));
        }
        if let Some(url) = &self.store.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(Error::invalid("store.database_url must be a postgres:// URL"));
        }
        let role_ok = !self.store.app_role.is_empty()
            && self.store.app_role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !role_ok {
            return Err(Error::invalid("store.app_role must be lowercase letters, digits and `_`"));
        }
        if let Some(key) = &self.auth.operator_key {
            crate::keys::import(key, crate::keys::KeyKind::Operator)?;
        }
        if let Some(url) = &self.limits.redis_url
            && !url.starts_with("redis://")
        {
            return Err(Error::invalid("limits.redis_url must be a redis:// URL"));
        }
        if !matches!(self.limits.redis_fallback.as_str(), "deny" | "local") {
            return Err(Error::invalid("limits.redis_fallback must be `deny` or `local`"));
        }
        let k = &self.knowledge;
        if k.max_document_bytes == 0 || k.ingest_workers == 0 {
            return Err(Error::invalid(
                "knowledge.max_document_bytes and knowledge.ingest_workers must be positive",
            ));
        }
        if !(16..=8_192).contains(&k.chunk_tokens) || k.chunk_overlap < 0 || k.chunk_overlap >= k.chunk_tokens
        {
            return Err(Error::invalid(
                "knowledge.chunk_tokens must be 16-8192 and knowledge.chunk_overlap below it",
            ));
        }
        let m = &self.metering;
        let prices = [m.tool_call_price, m.sandbox_cpu_second_price]
            .into_iter()
            .chain(m.tool_prices.values().copied());
        if prices.into_iter().any(Money::is_negative) {
            return Err(Error::invalid("metering prices cannot be negative"));
        }
        if m.reservation_ttl_secs == 0 || m.ledger_queue == 0 || m.ledger_batch == 0 {
            return Err(Error::invalid(
                "metering.reservation_ttl_secs, ledger_queue and ledger_batch must be above 0",
            ));
        }
        for (name, p) in &self.models.providers {
            if !matches!(p.kind.as_str(), "openai" | "anthropic" | "builtin") {
                return Err(Error::invalid(format!(
                    "models.providers.{name}.kind must be openai, anthropic or builtin"
                )));
            }
            if p.kind != "builtin"
                && !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://"))
            {
                return Err(Error::invalid(format!(
                    "models.providers.{name}.base_url must be an http(s) URL"
                )));
            }
        }
        let a = &self.agents;
        if a.workers > 10_000 || a.max_queued_runs < 1 || a.lease_secs < 2 || a.max_attempts < 1 {
            return Err(Error::invalid(
                "agents: workers 0-10000, max_queued_runs ≥ 1, lease_secs ≥ 2, max_attempts ≥ 1",
            ));
        }
        if self.store.max_connections == 0 {
            return Err(Error::invalid("store.max_connections must be at least 1"));
        }
        self.tools.validate()?;
        self.telemetry.validate()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail returns its own large error type
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_apply_in_order_flags_win() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "bulkhead.toml",
                "[server]\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = 4096\n[store]\ndata_dir = \"/from/file\"\n",
            )?;
            jail.set_env("BULKHEAD_DATA_DIR", "/from/env");
            jail.set_env("BULKHEAD_LOG__FORMAT", "json");
            jail.set_env("BULKHEAD_TEST_SOMETHING_ELSE", "not configuration");
            let flags = Figment::from(Serialized::default("server.listen", "127.0.0.1:9999"));
            let c = Config::load(None, &flags).expect("load");
            assert_eq!(c.server.listen.port(), 9999); // flag beats file
            assert_eq!(c.server.max_body_bytes, 4096); // file beats default
            assert_eq!(c.store.data_dir, PathBuf::from("/from/env")); // env beats file
            assert_eq!(c.log.format, "json");
            Ok(())
        });
    }

    #[test]
    fn tool_egress_settings_are_checked() {
        let mut c = Config::default();
        c.tools.egress_exceptions = vec![
            "127.0.0.1:8080".into(),
            "10.0.0.0/8:443,8443".into(),
            "[::1]:9000".into(),
            "[fd00::/8]:*".into(),
        ];
        assert!(c.validate().is_ok());
        for bad in ["127.0.0.1", "localhost:80", "10.0.0.0/33:1", "::1:80", "[::1]", "1.2.3.4:0", "1.2.3.4:x"]
        {
            c.tools.egress_exceptions = vec![bad.into()];
            assert!(c.validate().is_err(), "{bad}");
        }
        c.tools.egress_exceptions.clear();
        c.tools.timeout_ms = 0;
        assert!(c.validate().is_err());
        Jail::expect_with(|jail| {
            jail.set_env("BULKHEAD_TOOLS__EGRESS_EXCEPTIONS", r#"["127.0.0.1:8080", "[::1]:9000"]"#);
            jail.set_env("BULKHEAD_TOOLS__TIMEOUT_MS", "5000");
            let c = Config::load(None, &Figment::new()).expect("load");
            assert_eq!(c.tools.egress_exceptions, ["127.0.0.1:8080", "[::1]:9000"]);
            assert_eq!(c.tools.timeout_ms, 5000);
            jail.set_env("BULKHEAD_TOOLS__EGRESS_EXCEPTIONS", r#"["localhost:80"]"#);
            assert!(Config::load(None, &Figment::new()).is_err());
            Ok(())
        });
    }

    #[test]
    fn telemetry_is_off_by_default_and_set_from_the_environment() {
        assert_eq!(Config::default().telemetry.otlp_endpoint, None);
        Jail::expect_with(|jail| {
            jail.set_env("BULKHEAD_OTLP_ENDPOINT", "http://127.0.0.1:4318");
            jail.set_env("BULKHEAD_TELEMETRY__SAMPLE_RATIO", "0.25");
            let c = Config::load(None, &Figment::new()).expect("load");
            assert_eq!(c.telemetry.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
            assert_eq!(c.telemetry.sample_ratio, 0.25);
            jail.set_env("BULKHEAD_TELEMETRY__SAMPLE_RATIO", "2");
            assert!(Config::load(None, &Figment::new()).is_err());
            jail.set_env("BULKHEAD_TELEMETRY__SAMPLE_RATIO", "1");
            jail.set_env("BULKHEAD_OTLP_ENDPOINT", "collector:4318");
            assert!(Config::load(None, &Figment::new()).is_err());
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("BULKHEAD_LOG_FORMAT", "xml");
            assert!(Config::load(None, &Figment::new()).is_err());
            jail.set_env("BULKHEAD_LOG_FORMAT", "text");
            jail.set_env("DATABASE_URL", "mysql://x");
            assert!(Config::load(None, &Figment::new()).is_err());
            Ok(())
        });
    }
}
