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
}

/// Workers and the run queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// Runs this process executes at once (`serve` and `worker`).
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace_secs: u64,
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
        if a.workers == 0
            || a.workers > 10_000
            || a.max_queued_runs < 1
            || a.lease_secs < 2
            || a.max_attempts < 1
        {
            return Err(Error::invalid(
                "agents: workers 1-10000, max_queued_runs ≥ 1, lease_secs ≥ 2, max_attempts ≥ 1",
            ));
        }
        if self.store.max_connections == 0 {
            return Err(Error::invalid("store.max_connections must be at least 1"));
        }
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
