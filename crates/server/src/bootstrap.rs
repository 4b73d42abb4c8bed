//! Start-up: the operator key on first start, and the services built from
//! configuration — metering (pricing, limiter), the vault (master key) and
//! the model router.

use bulkhead_knowledge::Knowledge;
use bulkhead_knowledge::embedding::Embedding;
use std::sync::Arc;

use bulkhead_agents::{EventHub, Runner, Scheduler, SchedulerConfig, ToolRegistry};
use bulkhead_audit::Audit;
use bulkhead_core::config::Config;
use bulkhead_core::keys::{self, KeyKind};
use bulkhead_core::{Error, OperatorCtx};
use bulkhead_limits::{Limiter, LocalLimiter, RateFallback, RedisLimiter, RedisLimiterConfig};
use bulkhead_metering::{Catalog, LedgerConfig, Metering, MeteringConfig, OtherPrices, Pricing};
use bulkhead_models::routing::ModelRouter;
use bulkhead_store::DynStore;
use bulkhead_vault::{MasterKey, Vault};

/// If the store has no live operator key, installs `configured` (from
/// `BULKHEAD_OPERATOR_KEY`) or a fresh one. Returns the secret only when it
/// was generated here, so the caller can print it once.
pub async fn ensure_operator_key(
    store: &DynStore,
    configured: Option<&str>,
) -> bulkhead_core::Result<Option<String>> {
    let op = OperatorCtx::local_cli();
    if let Some(secret) = configured {
        let key = keys::import(secret, KeyKind::Operator)?;
        // Installing the configured key is idempotent across restarts.
        if store.lookup_key(&key.prefix).await?.is_none() {
            let created = store.create_operator_key(&op, "configured operator key", &key, None).await?;
            audit_installed(store, &op, &created).await;
        }
        return Ok(None);
    }
    if store.has_operator_key(&op).await? {
        return Ok(None);
    }
    let key = keys::generate(KeyKind::Operator);
    let created = store.create_operator_key(&op, "initial operator key", &key, None).await?;
    audit_installed(store, &op, &created).await;
    Ok(Some(key.secret))
}

/// The platform's audit entry for an operator key installed at start-up.
async fn audit_installed(store: &DynStore, op: &OperatorCtx, key: &bulkhead_store::ApiKey) {
    let event = bulkhead_audit::AuditEvent::new(
        bulkhead_audit::action::OPERATOR_KEY_CREATED,
        format!("key:{}", key.id),
    )
    .details(serde_json::json!({"name": key.name, "prefix": key.prefix}));
    Audit::new(store.clone()).record_platform_as(op, bulkhead_audit::AuditActor::System, event).await;
}

/// Prices from the shipped catalog, extended by `metering.catalog_file`.
pub fn pricing(config: &Config) -> Result<Pricing, Error> {
    let m = &config.metering;
    let mut catalog = Catalog::builtin();
    if let Some(path) = &m.catalog_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("cannot read the catalog {}: {e}", path.display())))?;
        catalog = catalog.merge(Catalog::from_toml(&text)?);
    }
    let other = OtherPrices {
        tool_call: m.tool_call_price,
        tools: m.tool_prices.clone(),
        sandbox_cpu_second: m.sandbox_cpu_second_price,
    };
    Ok(Pricing::new(catalog, other))
}

/// The limiter: Redis-backed when `limits.redis_url` is set (shared by all
/// replicas), in-process otherwise.
pub async fn limiter(config: &Config) -> Result<Arc<dyn Limiter>, Error> {
    let Some(url) = &config.limits.redis_url else {
        return Ok(Arc::new(LocalLimiter::new()));
    };
    let mut redis = RedisLimiterConfig::new(url.clone());
    redis.rate_fallback =
        if config.limits.redis_fallback == "local" { RateFallback::Local } else { RateFallback::Deny };
    let limiter = RedisLimiter::connect(redis).await.map_err(|e| {
        Error::new(bulkhead_core::Code::Unavailable, format!("Redis (limits.redis_url): {e}"))
    })?;
    Ok(Arc::new(limiter))
}

/// Metering over `store`, as configured; starts the ledger writer.
pub async fn metering(config: &Config, store: &DynStore) -> Result<Metering, Error> {
    let m = &config.metering;
    let metering_config = MeteringConfig {
        ledger: LedgerConfig { queue_capacity: m.ledger_queue, max_batch: m.ledger_batch },
        reservation_ttl: std::time::Duration::from_secs(m.reservation_ttl_secs),
        ..Default::default()
    };
    Ok(Metering::start(store.clone(), pricing(config)?, limiter(config).await?, metering_config))
}

/// The master key: configured, or (embedded store only) kept in
/// `<data_dir>/master.key`, generated on first start.
pub fn master_key(config: &Config) -> Result<MasterKey, Error> {
    if let Some(text) = &config.models.master_key {
        return MasterKey::from_base64(text);
    }
    if config.store.database_url.is_some() {
        return Err(Error::invalid(
            "set BULKHEAD_MASTER_KEY (32 bytes, base64) to use PostgreSQL: the vault's master key must be shared by every replica",
        ));
    }
    std::fs::create_dir_all(&config.store.data_dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", config.store.data_dir.display())))?;
    MasterKey::load_or_create(&config.store.data_dir.join("master.key"))
}

/// The operator's egress settings (`[tools]`) for the tools crate; the
/// exceptions were checked for shape with the configuration, here they are
/// parsed in full.
pub fn egress_config(config: &Config) -> Result<bulkhead_tools::EgressConfig, Error> {
    let t = &config.tools;
    let exceptions = t
        .egress_exceptions
        .iter()
        .map(|e| e.parse().map_err(|m: String| Error::invalid(format!("tools.egress_exceptions: {m}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(bulkhead_tools::EgressConfig {
        exceptions,
        max_response_bytes: t.max_response_bytes,
        timeout_ms: t.timeout_ms,
        max_redirects: t.max_redirects,
    })
}

/// The sandbox the configuration asks for. A backend that cannot run here
/// (no `bwrap`, no `bulkhead-sandbox` user, no `runsc`) is logged and
/// leaves code execution unavailable (503) rather than stopping the server;
/// a configuration that does not parse stops it.
fn sandbox(config: &Config) -> Result<Option<Arc<bulkhead_sandbox::Sandbox>>, Error> {
    let settings: bulkhead_sandbox::SandboxConfig = if config.sandbox.is_null() {
        Default::default()
    } else {
        serde_json::from_value(config.sandbox.clone()).map_err(|e| Error::invalid(format!("sandbox: {e}")))?
    };
    settings.validate().map_err(Error::from)?;
    match bulkhead_sandbox::Sandbox::from_config(&settings) {
        Ok(s) => Ok(Some(Arc::new(s))),
        Err(e) => {
            tracing::warn!(error = %e, "code execution is unavailable: run scripts/sandbox.sh to install bubblewrap and its user");
            Ok(None)
        }
    }
}

/// Everything the HTTP layer and the workers use.
#[derive(Clone)]
pub struct Services {
    pub store: DynStore,
    pub metering: Metering,
    pub models: Arc<ModelRouter>,
    pub vault: Vault,
    pub scheduler: Scheduler,
    pub knowledge: Knowledge,
    pub audit: Audit,
    pub code: bulkhead_agents::CodeRunner,
    pub max_queued_runs: i64,
}

pub async fn services(config: &Config, store: DynStore) -> Result<Services, Error> {
    let metering = metering(config, &store).await?;
    let vault = Vault::new(store.clone(), master_key(config)?);
    let models =
        Arc::new(ModelRouter::new(metering.pricing().catalog.clone(), config.models.clone(), vault.clone()));
    let knowledge = Knowledge::new(
        store.clone(),
        Embedding::new(models.clone(), metering.clone(), config.knowledge.model_dir.clone()),
        metering.clone(),
        config.knowledge.clone(),
    );
    let audit = Audit::new(store.clone());
    let tenant_tools = bulkhead_agents::TenantTools::new(
        store.clone(),
        vault.clone(),
        audit.clone(),
        metering.clone(),
        egress_config(config)?,
    );
    let code =
        bulkhead_agents::CodeRunner::new(sandbox(config)?, store.clone(), metering.clone(), audit.clone());
    let runner = Runner {
        store: store.clone(),
        metering: metering.clone(),
        models: models.clone(),
        tools: {
            let mut tools = ToolRegistry::builtin();
            tools.register(Arc::new(bulkhead_agents::KnowledgeSearch { knowledge: knowledge.clone() }));
            tools.register(Arc::new(bulkhead_agents::RunCode { runner: code.clone() }));
            tools
        },
        tenant_tools,
        events: Arc::new(EventHub::default()),
    };
    let a = &config.agents;
    let scheduler = Scheduler::new(
        runner,
        SchedulerConfig {
            slots: a.workers,
            lease: std::time::Duration::from_secs(a.lease_secs),
            max_attempts: a.max_attempts,
            ..SchedulerConfig::default()
        },
    );
    Ok(Services {
        store,
        metering,
        models,
        vault,
        scheduler,
        knowledge,
        audit,
        code,
        max_queued_runs: a.max_queued_runs,
    })
}
