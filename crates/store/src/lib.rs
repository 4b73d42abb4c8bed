//! The data layer: one set of repository traits and two real backends —
//! SQLite (the embedded default) and PostgreSQL (row-level security, the app
//! works as a role that is not the table owner).
//!
//! Invariants: every tenant-owned row is read and written through a method
//! that takes `&TenantCtx` and filters by its tenant; platform-wide methods
//! take `&OperatorCtx`. The only call that needs neither is the key lookup
//! by prefix that authentication itself depends on. In PostgreSQL each
//! transaction sets `app.tenant_id` (or `app.platform`) locally, so a query
//! that forgot its filter still sees only the current tenant.

use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_core::config::StoreConfig;
use bulkhead_core::keys::{NewKey, StoredKey};
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{KeyId, Money, OperatorCtx, TenantCtx, TenantId};
use time::OffsetDateTime;

pub mod agents;
pub mod audit;
pub mod cells;
pub mod dump;
mod error;
pub mod knowledge;
pub mod model;
pub mod postgres;
pub mod routed;
pub mod sqlite;
#[doc(hidden)]
pub mod testing;
pub mod tools;
pub mod usage;

pub use agents::{
    Agent, AgentPatch, AgentStore, AgentVersion, Recovered, Run, RunStatus, RunStep, StoredMessage,
    TenantQueue, Thread,
};
pub use audit::{AuditChain, AuditEntry, AuditHead, AuditQuery, AuditStore, NewAuditEntry};
pub use cells::{Cell, CellStore, KeyRecord, NewCell, Placement, SealedCredential};
pub use dump::{MoveReport, TableDump, TableSum, TenantDataStore, TenantDump, TenantRoute};
pub use error::StoreError;
pub use knowledge::{
    ChunkText, DocStatus, Document, KnowledgeBase, KnowledgeStore, KnowledgeUsage, MetadataFilter, NewChunk,
    NewDocument, NewKnowledgeBase, Replaced, Upserted,
};
pub use model::{ApiKey, NewTenant, Tenant, TenantPatch};
pub use tools::{McpServerRecord, ToolRecord, ToolSettings, ToolStore};
pub use usage::{
    Budget, BudgetAlert, BudgetPeriod, BudgetStatus, GroupBy, ReservationId, Reserve, StoredUsage,
    TenantSettings, UsageEvent, UsageKind, UsageQuery, UsageRow, UsageWrite,
};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Tenants: created and managed by the operator; a tenant reads only itself.
#[async_trait]
pub trait TenantStore: Send + Sync {
    async fn create_tenant(&self, op: &OperatorCtx, new: NewTenant) -> Result<Tenant>;
    async fn list_tenants(&self, op: &OperatorCtx, page: PageReq) -> Result<Page<Tenant>>;
    async fn get_tenant(&self, op: &OperatorCtx, id: TenantId) -> Result<Tenant>;
    async fn find_tenant_by_name(&self, op: &OperatorCtx, name: &str) -> Result<Tenant>;
    async fn update_tenant(&self, op: &OperatorCtx, id: TenantId, patch: TenantPatch) -> Result<Tenant>;
    /// Removes the tenant and every row it owns.
    async fn delete_tenant(&self, op: &OperatorCtx, id: TenantId) -> Result<()>;
    /// The caller's own tenant.
    async fn own_tenant(&self, ctx: &TenantCtx) -> Result<Tenant>;
}

/// API keys: operator keys (platform-wide) and tenant keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn create_operator_key(
        &self,
        op: &OperatorCtx,
        name: &str,
        key: &NewKey,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiKey>;
    async fn list_operator_keys(&self, op: &OperatorCtx, page: PageReq) -> Result<Page<ApiKey>>;
    async fn revoke_operator_key(&self, op: &OperatorCtx, id: KeyId) -> Result<ApiKey>;
    /// Whether any operator key that is not revoked exists (first-start bootstrap).
    async fn has_operator_key(&self, op: &OperatorCtx) -> Result<bool>;

    async fn create_tenant_key(
        &self,
        ctx: &TenantCtx,
        name: &str,
        scope: bulkhead_core::tenancy::Scope,
        key: &NewKey,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiKey>;
    async fn list_tenant_keys(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<ApiKey>>;
    async fn get_tenant_key(&self, ctx: &TenantCtx, id: KeyId) -> Result<ApiKey>;
    async fn revoke_tenant_key(&self, ctx: &TenantCtx, id: KeyId) -> Result<ApiKey>;

    /// What authentication needs about the key with this prefix. This runs
    /// before any tenant is known, so it is the one platform-wide read that
    /// takes no context.
    async fn lookup_key(&self, prefix: &str) -> Result<Option<StoredKey>>;
    /// Records that a key was used (callers throttle how often).
    async fn touch_key(&self, id: KeyId, at: OffsetDateTime) -> Result<()>;
}

/// Whose usage a query covers: one tenant, or (operator) all of them.
#[derive(Debug, Clone, Copy)]
pub enum UsageScope<'a> {
    Tenant(&'a TenantCtx),
    Platform(&'a OperatorCtx),
}

/// The usage ledger.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Writes a batch in one transaction: each event once per (tenant, id),
    /// the daily aggregates, released reservations and budget alerts.
    /// Returns, per write, whether its event was new. When this returns Ok,
    /// every write of the batch is durable.
    async fn write_usage(&self, batch: &[UsageWrite], now: OffsetDateTime) -> Result<Vec<bool>>;
    /// Aggregates over raw events.
    async fn usage_summary(&self, scope: UsageScope<'_>, query: &UsageQuery) -> Result<Vec<UsageRow>>;
    /// Raw events in ledger order, after `after_seq`.
    async fn usage_events(
        &self,
        ctx: &TenantCtx,
        query: &UsageQuery,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredUsage>>;
}

/// Budgets with reservations. Admission reserves the worst case; settlement
/// (through `UsageStore::write_usage`) replaces it by the actual cost.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    async fn get_budget(&self, ctx: &TenantCtx) -> Result<Option<Budget>>;
    /// Sets (or with `None` removes) the tenant's budget.
    async fn set_budget(&self, ctx: &TenantCtx, budget: Option<&Budget>) -> Result<()>;
    /// Atomically: refuses if spent + reserved + `amount` would pass a
    /// limit, else records a reservation that expires at `now + ttl`.
    /// Expired reservations are dropped first (and counted in the log).
    async fn reserve(
        &self,
        ctx: &TenantCtx,
        amount: Money,
        ttl: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<Reserve>;
    /// Drops a reservation without recording usage (the work never happened).
    async fn release(&self, ctx: &TenantCtx, id: ReservationId) -> Result<()>;
    async fn budget_status(&self, ctx: &TenantCtx, now: OffsetDateTime) -> Result<BudgetStatus>;
}

/// The operator's per-tenant settings documents.
#[async_trait]
pub trait SettingsStore: Send + Sync {
    async fn tenant_settings(&self, ctx: &TenantCtx) -> Result<TenantSettings>;
    async fn set_tenant_limits(&self, ctx: &TenantCtx, limits: &serde_json::Value) -> Result<()>;
    async fn set_tenant_pricing(&self, ctx: &TenantCtx, pricing: &serde_json::Value) -> Result<()>;
    async fn set_tenant_models(&self, ctx: &TenantCtx, models: &serde_json::Value) -> Result<()>;
    async fn set_tenant_sandbox(&self, ctx: &TenantCtx, policy: &serde_json::Value) -> Result<()>;
}

/// A tenant's encrypted secret, as stored: only ciphertext.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedSecret {
    pub kind: String,
    pub name: String,
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Storage for the vault: wrapped per-tenant data keys and sealed secrets.
/// Encryption happens above this layer (`bulkhead-vault`); nothing here
/// ever sees plaintext.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The tenant's wrapped data key and its nonce, if it has one.
    async fn data_key(&self, ctx: &TenantCtx) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Stores the tenant's wrapped data key unless one exists; returns the
    /// one that is stored now (so concurrent first writers agree).
    async fn insert_data_key(
        &self,
        ctx: &TenantCtx,
        wrapped: &[u8],
        nonce: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)>;
    /// Creates or replaces a secret.
    async fn put_secret(
        &self,
        ctx: &TenantCtx,
        kind: &str,
        name: &str,
        ciphertext: &[u8],
        nonce: &[u8],
    ) -> Result<SealedSecret>;
    async fn get_secret(&self, ctx: &TenantCtx, kind: &str, name: &str) -> Result<Option<SealedSecret>>;
    /// Whether a secret was deleted.
    async fn delete_secret(&self, ctx: &TenantCtx, kind: &str, name: &str) -> Result<bool>;
    /// The tenant's secrets of a kind, by name (ciphertext included; callers show names only).
    async fn list_secrets(&self, ctx: &TenantCtx, kind: &str) -> Result<Vec<SealedSecret>>;
}

/// Everything a server needs from its store.
#[async_trait]
pub trait Store:
    TenantStore
    + KeyStore
    + UsageStore
    + BudgetStore
    + SettingsStore
    + SecretStore
    + AgentStore
    + KnowledgeStore
    + AuditStore
    + ToolStore
    + CellStore
    + TenantDataStore
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<()>;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the configured store and brings its schema up to date: the
/// control store, routed by tenant tier ([`routed::RoutedStore`]).
pub async fn open(config: &StoreConfig) -> Result<DynStore> {
    let control: DynStore = match &config.database_url {
        Some(url) => {
            let store = postgres::PgStore::connect(url, &config.app_role, config.max_connections).await?;
            Arc::new(store)
        }
        None => {
            let store = sqlite::SqliteStore::open(&config.data_dir, config.max_connections).await?;
            Arc::new(store)
        }
    };
    Ok(Arc::new(routed::RoutedStore::new(control, config)))
}

#[cfg(test)]
mod dump_tests;
#[cfg(test)]
mod knowledge_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tools_tests;
