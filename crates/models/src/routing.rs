//! Per-tenant model resolution: which model a request means (aliases, task
//! types, the platform's defaults), whether the tenant may use it (the
//! operator's allow list), what to try next when its provider fails
//! (fallbacks), and which provider client serves it — with the tenant's own
//! provider key from the vault when it has one, the platform's otherwise.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_core::config::ModelsConfig;
use bulkhead_core::{Code, Error, TenantCtx};
use bulkhead_metering::Catalog;
use bulkhead_vault::{SecretKind, Vault};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Provider, ProviderConfig};

/// A tenant's model settings: the operator's allow list, and the tenant
/// admin's task mapping, aliases and fallbacks. Stored as one document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Models the tenant may use; `None`: every model in the catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// Task type → model, over the platform's defaults.
    pub tasks: BTreeMap<String, String>,
    /// Names the tenant's apps may use for models.
    pub aliases: BTreeMap<String, String>,
    /// Model → models to try, in order, when its provider fails.
    pub fallbacks: BTreeMap<String, Vec<String>>,
}

impl ModelSettings {
    pub fn from_json(value: &serde_json::Value) -> Result<Self, Error> {
        serde_json::from_value(value.clone()).map_err(|e| Error::invalid(format!("model settings: {e}")))
    }
}

/// One way to serve a request: a catalog model and the client for it.
#[derive(Clone)]
pub struct Route {
    /// The catalog name (what is priced and metered).
    pub model: String,
    /// The provider's name in `models.providers`.
    pub provider_name: String,
    /// The model's id at the provider.
    pub provider_model: String,
    pub provider: Arc<dyn Provider>,
}

/// Resolves models for tenants and keeps provider clients.
pub struct ModelRouter {
    catalog: Catalog,
    config: ModelsConfig,
    vault: Vault,
    /// Clients by (provider, fingerprint of the key they carry).
    clients: Mutex<HashMap<ClientKey, Arc<dyn Provider>>>,
}

const MAX_CLIENTS: usize = 1_024;

type ClientKey = (String, Option<[u8; 32]>);

pub fn not_allowed(model: &str) -> Error {
    Error::new(
        Code::ModelNotAllowed,
        format!("model `{model}` is not allowed for this tenant; ask the operator to allow it"),
    )
}

impl ModelRouter {
    pub fn new(catalog: Catalog, config: ModelsConfig, vault: Vault) -> Self {
        Self { catalog, config, vault, clients: Mutex::new(HashMap::new()) }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The kind (`openai`, `anthropic`, `builtin`) of a configured provider.
    pub fn provider_kind(&self, name: &str) -> Option<&str> {
        self.config.providers.get(name).map(|p| p.kind.as_str())
    }

    pub fn is_allowed(&self, settings: &ModelSettings, model: &str) -> bool {
        settings.allowed.as_ref().is_none_or(|list| list.iter().any(|m| m == model))
    }

    /// The catalog model a requested name means for this tenant: an alias,
    /// `task:<type>` (the tenant's mapping, else the platform default), or a
    /// model name. Unknown → `unknown_model`; not allowed → `model_not_allowed`.
    pub fn resolve_name(&self, settings: &ModelSettings, requested: &str) -> Result<String, Error> {
        let name = if let Some(target) = settings.aliases.get(requested) {
            target.clone()
        } else if let Some(task) = requested.strip_prefix("task:") {
            settings
                .tasks
                .get(task)
                .or_else(|| self.config.defaults.get(task))
                .cloned()
                .ok_or_else(|| Error::invalid(format!("no model is configured for task type `{task}`")))?
        } else {
            requested.to_owned()
        };
        if self.catalog.get(&name).is_none() {
            return Err(bulkhead_metering::pricing::unknown_model(&name));
        }
        if !self.is_allowed(settings, &name) {
            return Err(not_allowed(&name));
        }
        Ok(name)
    }

    /// The model for a task type.
    pub fn for_task(&self, settings: &ModelSettings, task: &str) -> Result<String, Error> {
        self.resolve_name(settings, &format!("task:{task}"))
    }

    /// Checks settings before they are stored: every model named exists and
    /// (for the tenant's own entries) is allowed.
    pub fn validate(&self, settings: &ModelSettings) -> Result<(), Error> {
        let known = |m: &str| self.catalog.get(m).is_some();
        for m in settings.allowed.iter().flatten() {
            if !known(m) {
                return Err(bulkhead_metering::pricing::unknown_model(m));
            }
        }
        let targets = settings
            .tasks
            .values()
            .chain(settings.aliases.values())
            .chain(settings.fallbacks.keys())
            .chain(settings.fallbacks.values().flatten());
        for m in targets {
            if !known(m) {
                return Err(bulkhead_metering::pricing::unknown_model(m));
            }
            if !self.is_allowed(settings, m) {
                return Err(not_allowed(m));
            }
        }
        for alias in settings.aliases.keys() {
            if alias.is_empty() || alias.len() > 100 || alias.starts_with("task:") {
                return Err(Error::invalid(format!("invalid alias `{alias}`")));
            }
        }
        Ok(())
    }

    /// Models the tenant may call, with the provider that serves each.
    pub fn visible_models(&self, settings: &ModelSettings) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .catalog
            .models
            .iter()
            .filter(|(name, _)| self.is_allowed(settings, name))
            .map(|(name, p)| (name.clone(), p.provider.clone()))
            .collect();
        for (alias, target) in &settings.aliases {
            if let Some(p) = self.catalog.get(target)
                && self.is_allowed(settings, target)
            {
                out.push((alias.clone(), p.provider.clone()));
            }
        }
        out
    }

    /// The routes for a request: the resolved model, then its fallbacks
    /// that the tenant may use.
    pub async fn routes(
        &self,
        ctx: &TenantCtx,
        settings: &ModelSettings,
        requested: &str,
    ) -> Result<Vec<Route>, Error> {
        let primary = self.resolve_name(settings, requested)?;
        let mut names = vec![primary.clone()];
        for f in settings.fallbacks.get(&primary).into_iter().flatten() {
            if self.catalog.get(f).is_some() && self.is_allowed(settings, f) && !names.contains(f) {
                names.push(f.clone());
            }
        }
        let mut routes = Vec::with_capacity(names.len());
        for model in names {
            routes.push(self.route(ctx, &model).await?);
        }
        Ok(routes)
    }

    async fn route(&self, ctx: &TenantCtx, model: &str) -> Result<Route, Error> {
        let price =
            self.catalog.get(model).ok_or_else(|| bulkhead_metering::pricing::unknown_model(model))?;
        let provider_name = price.provider.clone();
        let provider = self.client(ctx, &provider_name).await?;
        Ok(Route {
            model: model.to_owned(),
            provider_model: price.provider_model.clone().unwrap_or_else(|| model.to_owned()),
            provider_name,
            provider,
        })
    }

    /// The client for a provider, carrying the tenant's own key if it stored
    /// one, else the platform's.
    async fn client(&self, ctx: &TenantCtx, provider_name: &str) -> Result<Arc<dyn Provider>, Error> {
        let settings = self.config.providers.get(provider_name).ok_or_else(|| {
            Error::new(
                Code::Unavailable,
                format!("provider `{provider_name}` is not configured on this platform"),
            )
        })?;
        let own = if settings.kind == "builtin" {
            None
        } else {
            self.vault.reveal(ctx, SecretKind::ProviderKey, provider_name).await?
        };
        let key = own.as_ref().map(|s| s.expose().to_owned()).or_else(|| settings.api_key.clone());
        let fingerprint = key.as_ref().map(|k| -> [u8; 32] { Sha256::digest(k.as_bytes()).into() });
        let cache_key = (provider_name.to_owned(), fingerprint);
        if let Some(client) = self.clients.lock().expect("client cache").get(&cache_key) {
            return Ok(client.clone());
        }
        let mut config = ProviderConfig::new(settings.base_url.clone());
        config.api_key = key;
        config.timeout = Duration::from_secs(settings.timeout_secs.max(1));
        config.max_retries = settings.max_retries;
        let client = crate::build(&settings.kind, config).map_err(Error::from)?;
        let mut cache = self.clients.lock().expect("client cache");
        if cache.len() >= MAX_CLIENTS {
            cache.clear();
        }
        cache.insert(cache_key, client.clone());
        Ok(client)
    }
}
