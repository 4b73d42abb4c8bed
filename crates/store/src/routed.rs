//! The store callers get from [`crate::open`]: it routes every tenant's data
//! by the tier on the tenant's control row.
//!
//! - `shared` tenants live in the control store (the one database: rows
//!   filtered by tenant, row-level security on PostgreSQL).
//! - `isolated` tenants have a store of their own, of the same backend and
//!   migrations: SQLite `DATA_DIR/tenants/<tenant-id>.db`, or the PostgreSQL
//!   database `bulkhead_t_<uuid-simple>` on the same server (created by the
//!   owner role; RLS on inside it too, and the tenant's own `kb_chunks` with
//!   its own HNSW index). Opened lazily, cached, removed with the tenant.
//! - `dedicated` tenants live in their cell: tenant-scoped calls for them
//!   fail with [`StoreError::WrongCell`] (the cells layer proxies them before
//!   they get here).
//!
//! What stays in the control store whatever the tier: tenants and their
//! move markers, cells and placements, operator keys, **tenant keys**
//! (authentication looks a key up before it knows the tenant, so keys are
//! control-plane data and never move), and the platform audit chain.
//! Everything else that takes `&TenantCtx` goes to the tenant's store;
//! platform-wide views (queue overview, lease recovery, pending ingestions,
//! platform usage) fan out over the control store and every isolated store
//! and merge; a usage batch is split by destination.
//!
//! Live moves ([`TenantDataStore::move_tenant`]): mark the control row
//! `moving_to`, wait two route TTLs (every process re-reads a tenant's route
//! at least once per TTL, so after that none routes to the source without
//! seeing the marker — they hold the tenant's calls until it clears), take
//! the tenant's gate for writing (every routed call of this process holds it
//! for reading: in-flight calls drain, new ones wait), export, import into
//! the cleared target, compare counts and checksums per table, checksum the
//! source again (a late write from another process aborts the move), switch
//! the tier on the control row, release the gate, purge the source. Any
//! failure before the switch leaves the source as it was and clears the
//! target and the marker.
//!
//! Invariants: a tenant's tenant-scoped call reaches exactly one store, the
//! one its control row names, or waits; no tenant's rows are written to
//! another tenant's isolated store (each isolated store holds one tenant).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bulkhead_core::config::StoreConfig;
use bulkhead_core::keys::{NewKey, StoredKey};
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::tenancy::Scope;
use bulkhead_core::{
    AgentId, DocId, KbId, KeyId, McpServerId, MessageId, Money, OperatorCtx, RunId, TenantCtx, TenantId,
    ThreadId, Tier, ToolId,
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::dump::{
    CONTROL_TABLES, MoveReport, TableSum, TenantDataStore, TenantDump, TenantRoute, dump_sums,
};
use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;
use crate::*;

/// How long a process trusts the tier it read from a tenant's control row.
pub const ROUTE_TTL: Duration = Duration::from_millis(500);
/// How long a call waits for another process's move before `Moving`.
const MOVE_WAIT: Duration = Duration::from_secs(30);
/// How often the list of isolated tenants (for fan-outs) is re-read.
const SCAN_INTERVAL: Duration = Duration::from_secs(5);
/// Connections of each isolated tenant's PostgreSQL pool.
const ISOLATED_PG_CONNECTIONS: u32 = 4;

/// Where isolated tenants' stores are made.
#[derive(Debug, Clone)]
enum Isolation {
    Sqlite { dir: PathBuf, max_connections: u32 },
    Postgres { admin_url: String, app_role: String },
}

/// An open isolated store, with what closing it needs.
#[derive(Clone)]
enum Isolated {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl Isolated {
    fn store(&self) -> DynStore {
        match self {
            Isolated::Sqlite(s) => s.clone(),
            Isolated::Postgres(s) => s.clone(),
        }
    }

    async fn close(&self) {
        match self {
            Isolated::Sqlite(s) => s.close().await,
            Isolated::Postgres(s) => s.pool().close().await,
        }
    }
}

#[derive(Clone, Copy)]
struct Cached {
    route: Option<TenantRoute>,
    at: Instant,
}

/// The routing store (see the module doc).
pub struct RoutedStore {
    control: DynStore,
    isolation: Isolation,
    routes: Mutex<HashMap<TenantId, Cached>>,
    stores: tokio::sync::Mutex<HashMap<TenantId, Isolated>>,
    gates: Mutex<HashMap<TenantId, Arc<RwLock<()>>>>,
    /// Tenants this process is moving: it routes them to their source
    /// until the switch, whatever the marker says.
    moving_here: Mutex<HashSet<TenantId>>,
    /// Isolated tenants, for fan-outs, and when they were last listed.
    isolated: Mutex<(HashSet<TenantId>, Option<Instant>)>,
    /// Cross-tenant writers (lease recovery) hold it for reading; a move's
    /// copy holds it for writing, so recovery never edits a copy mid-move.
    bulk: RwLock<()>,
    /// One move at a time per process.
    moves: tokio::sync::Mutex<()>,
}

/// A tenant's store for one call, with the gate held while it runs.
struct Routed {
    _gate: OwnedRwLockReadGuard<()>,
    store: DynStore,
}

fn op() -> OperatorCtx {
    OperatorCtx::local_cli()
}

/// The URL of database `db` on the server of `url` (path replaced).
pub(crate) fn database_url(url: &str, db: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let start = base.find("://").ok_or_else(|| StoreError::Setup("database URL without scheme".into()))? + 3;
    let host = match base[start..].find('/') {
        Some(i) => &base[..start + i],
        None => base,
    };
    Ok(format!("{host}/{db}{}", query.map(|q| format!("?{q}")).unwrap_or_default()))
}

/// The PostgreSQL database of an isolated tenant.
pub fn isolated_database(id: TenantId) -> String {
    format!("bulkhead_t_{}", id.as_uuid().simple())
}

impl RoutedStore {
    /// Routes over `control`, making isolated stores as `config` says.
    pub fn new(control: DynStore, config: &StoreConfig) -> Self {
        let isolation = match &config.database_url {
            Some(url) => Isolation::Postgres { admin_url: url.clone(), app_role: config.app_role.clone() },
            None => Isolation::Sqlite {
                dir: config.data_dir.join("tenants"),
                max_connections: config.max_connections.clamp(1, 4),
            },
        };
        Self {
            control,
            isolation,
            routes: Mutex::default(),
            stores: tokio::sync::Mutex::default(),
            gates: Mutex::default(),
            moving_here: Mutex::default(),
            isolated: Mutex::new((HashSet::new(), None)),
            bulk: RwLock::new(()),
            moves: tokio::sync::Mutex::new(()),
        }
    }

    /// The control store (tenants, keys, cells, shared tenants' data).
    pub fn control(&self) -> &DynStore {
        &self.control
    }

    /// Where an isolated tenant's SQLite file is (SQLite only).
    pub fn isolated_file(&self, id: TenantId) -> Option<PathBuf> {
        match &self.isolation {
            Isolation::Sqlite { dir, .. } => Some(dir.join(format!("{id}.db"))),
            Isolation::Postgres { .. } => None,
        }
    }

    fn gate(&self, id: TenantId) -> Arc<RwLock<()>> {
        self.gates.lock().expect("gates").entry(id).or_default().clone()
    }

    fn forget(&self, id: TenantId) {
        self.routes.lock().expect("routes").remove(&id);
    }

    fn remember(&self, id: TenantId, route: Option<TenantRoute>) {
        self.routes.lock().expect("routes").insert(id, Cached { route, at: Instant::now() });
        let mut isolated = self.isolated.lock().expect("isolated");
        if route.is_some_and(|r| r.tier == Tier::Isolated) {
            isolated.0.insert(id);
        } else {
            isolated.0.remove(&id);
        }
    }

    /// The tenant's route: cached for up to [`ROUTE_TTL`], else re-read.
    async fn route_of(&self, id: TenantId) -> Result<Option<TenantRoute>> {
        if let Some(c) = self.routes.lock().expect("routes").get(&id)
            && c.at.elapsed() < ROUTE_TTL
        {
            return Ok(c.route);
        }
        let route = self.control.tenant_route(&op(), id).await?;
        self.remember(id, route);
        Ok(route)
    }

    /// The store holding the tenant's data now, with its gate held for
    /// reading. Waits while another process moves the tenant.
    async fn route(&self, ctx: &TenantCtx) -> Result<Routed> {
        let id = ctx.tenant_id();
        let deadline = Instant::now() + MOVE_WAIT;
        loop {
            let gate = self.gate(id).read_owned().await;
            let route = self.route_of(id).await?;
            let here = self.moving_here.lock().expect("moving").contains(&id);
            match route {
                Some(r) if r.moving_to.is_some() && !here => {
                    drop(gate);
                    if Instant::now() > deadline {
                        return Err(StoreError::Moving);
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    self.forget(id);
                }
                Some(r) => return Ok(Routed { _gate: gate, store: self.data_store(id, r.tier).await? }),
                // No such tenant: the control store answers (not found).
                None => return Ok(Routed { _gate: gate, store: self.control.clone() }),
            }
        }
    }

    async fn data_store(&self, id: TenantId, tier: Tier) -> Result<DynStore> {
        match tier {
            Tier::Shared => Ok(self.control.clone()),
            Tier::Isolated => Ok(self.isolated_store(id).await?.store()),
            Tier::Dedicated => Err(StoreError::WrongCell),
        }
    }

    /// The tenant's isolated store, opened (and made, if new) on first use.
    async fn isolated_store(&self, id: TenantId) -> Result<Isolated> {
        let mut stores = self.stores.lock().await;
        if let Some(s) = stores.get(&id) {
            return Ok(s.clone());
        }
        // Driven on a blocking thread: PgStore::connect's future is not
        // Send for every lifetime, which a trait method's future must be.
        let isolation = self.isolation.clone();
        let runtime = tokio::runtime::Handle::current();
        let opened = tokio::task::spawn_blocking(move || runtime.block_on(open_isolated(isolation, id)))
            .await
            .map_err(|e| StoreError::Setup(format!("opening an isolated store: {e}")))??;
        stores.insert(id, opened.clone());
        Ok(opened)
    }

    /// Closes and deletes the tenant's isolated store, if it has one.
    async fn remove_isolated(&self, id: TenantId) -> Result<()> {
        if let Some(s) = self.stores.lock().await.remove(&id) {
            s.close().await;
        }
        match &self.isolation {
            Isolation::Sqlite { dir, .. } => {
                for suffix in ["", "-wal", "-shm"] {
                    let path = dir.join(format!("{id}.db{suffix}"));
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(StoreError::Setup(format!("cannot remove {}: {e}", path.display())));
                        }
                    }
                }
            }
            Isolation::Postgres { admin_url, .. } => {
                use sqlx::Connection;
                let mut owner = sqlx::PgConnection::connect(admin_url).await?;
                let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", isolated_database(id));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut owner).await?;
                owner.close().await?;
            }
        }
        Ok(())
    }

    /// Isolated tenants: as this process knows them, re-listed from the
    /// control store every [`SCAN_INTERVAL`] (other processes make some).
    async fn isolated_tenants(&self) -> Result<Vec<TenantId>> {
        let fresh = self.isolated.lock().expect("isolated").1.is_some_and(|at| at.elapsed() < SCAN_INTERVAL);
        if !fresh {
            let mut found = HashSet::new();
            let mut after = None;
            loop {
                let page = self
                    .control
                    .list_tenants(
                        &op(),
                        PageReq::new(Some(500), after).map_err(|e| StoreError::Setup(e.to_string()))?,
                    )
                    .await?;
                after = page.items.last().map(|t| t.id.as_uuid());
                found.extend(page.items.iter().filter(|t| t.tier == Tier::Isolated).map(|t| t.id));
                if !page.has_more {
                    break;
                }
            }
            *self.isolated.lock().expect("isolated") = (found, Some(Instant::now()));
        }
        let mut ids: Vec<TenantId> = self.isolated.lock().expect("isolated").0.iter().copied().collect();
        ids.sort();
        Ok(ids)
    }

    /// Runs `f` on every isolated tenant's store (gate held; tenants moving
    /// or no longer isolated are skipped).
    async fn each_isolated<T, F, Fut>(&self, mut f: F) -> Result<Vec<T>>
    where
        F: FnMut(TenantId, DynStore) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let mut out = Vec::new();
        for id in self.isolated_tenants().await? {
            let _gate = self.gate(id).read_owned().await;
            match self.route_of(id).await? {
                Some(r) if r.tier == Tier::Isolated && r.moving_to.is_none() => {
                    let store = self.isolated_store(id).await?.store();
                    out.extend(f(id, store).await?);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Whether the control store's rows of `id` are its live data (not
    /// leftovers of a tenant that is isolated now).
    fn served_by_control(&self, id: TenantId) -> bool {
        !self.isolated.lock().expect("isolated").0.contains(&id)
    }

    async fn do_move(&self, op: &OperatorCtx, id: TenantId, to: Tier) -> Result<MoveReport> {
        if to == Tier::Dedicated {
            return Err(StoreError::Invalid(
                "a tenant becomes dedicated by being placed in a cell, not by a tier move".into(),
            ));
        }
        let started = Instant::now();
        let _one = self.moves.lock().await;
        let tenant = self.control.get_tenant(op, id).await?;
        let route = self.control.tenant_route(op, id).await?.ok_or(StoreError::NotFound("tenant"))?;
        let from = tenant.tier;
        if from == Tier::Dedicated {
            return Err(StoreError::Invalid(
                "the tenant is dedicated: bring it back from its cell before changing its tier".into(),
            ));
        }
        if from == to {
            // Nothing to copy; a marker left by a move that died is cleared.
            if route.moving_to.is_some() {
                self.control.mark_moving(op, id, None).await?;
            }
            self.forget(id);
            return Ok(MoveReport {
                tenant_id: id,
                from,
                to,
                tables: Vec::new(),
                pause_ms: 0,
                total_ms: started.elapsed().as_millis() as u64,
                source_purged: true,
            });
        }
        self.control.mark_moving(op, id, Some(to)).await?;
        self.moving_here.lock().expect("moving").insert(id);
        // Every other process re-reads the route within a TTL; a call that
        // read it just before the marker has had another TTL to finish.
        tokio::time::sleep(ROUTE_TTL * 2).await;
        let result = self.copy_and_switch(op, id, from, to).await;
        self.moving_here.lock().expect("moving").remove(&id);
        self.forget(id);
        match result {
            Ok(mut report) => {
                report.total_ms = started.elapsed().as_millis() as u64;
                tracing::info!(tenant = %id, from = %from, to = %to, pause_ms = report.pause_ms,
                    total_ms = report.total_ms, "tenant moved");
                Ok(report)
            }
            Err(e) => {
                if let Err(clear) = self.control.mark_moving(op, id, None).await {
                    tracing::error!(tenant = %id, error = %clear, "could not clear the move marker");
                }
                tracing::warn!(tenant = %id, error = %e, "tenant move aborted; the source is unchanged");
                Err(e)
            }
        }
    }

    /// Empties the target of a move (routing does not point there).
    async fn clear_target(&self, op: &OperatorCtx, id: TenantId, to: Tier) -> Result<()> {
        match to {
            Tier::Isolated => self.remove_isolated(id).await,
            _ => self.control.purge_tenant_data(op, id).await,
        }
    }

    async fn copy_and_switch(
        &self,
        op: &OperatorCtx,
        id: TenantId,
        from: Tier,
        to: Tier,
    ) -> Result<MoveReport> {
        let moved = |sums: Vec<TableSum>| -> Vec<TableSum> {
            sums.into_iter().filter(|s| !CONTROL_TABLES.contains(&s.table.as_str())).collect()
        };
        let gate = self.gate(id);
        let asked = Instant::now();
        // `bulk` before the gate, the order lease recovery takes them in
        // (it holds `bulk` while it reads each isolated tenant's gate):
        // the other order deadlocks a move against a recovery sweep.
        let bulk = self.bulk.write().await;
        let held = gate.write_owned().await;
        let copied = async {
            self.clear_target(op, id, to).await?;
            let source = self.data_store(id, from).await?;
            let target = self.data_store(id, to).await?;
            let mut dump = source.export_tenant(op, id).await?;
            dump.tables.retain(|t| !CONTROL_TABLES.contains(&t.table.as_str()));
            let expected = dump_sums(&dump);
            target.import_tenant(op, &dump).await?;
            let got = moved(target.tenant_checksums(op, id).await?);
            if got != expected {
                let bad = expected
                    .iter()
                    .find(|s| !got.contains(s))
                    .map(|s| s.table.clone())
                    .unwrap_or_else(|| "the table list".into());
                return Err(StoreError::Conflict(format!(
                    "move verification failed ({bad} differs in the target); the tenant stays where it was"
                )));
            }
            let again = moved(source.tenant_checksums(op, id).await?);
            if again != expected {
                return Err(StoreError::Conflict(
                    "the source changed during the copy (a write from another process); the tenant stays where it was"
                        .into(),
                ));
            }
            self.control.finish_move(op, id, to).await?;
            Ok(expected)
        }
        .await;
        let tables = match copied {
            Ok(tables) => tables,
            Err(e) => {
                if let Err(clear) = self.clear_target(op, id, to).await {
                    tracing::error!(tenant = %id, error = %clear, "could not clear the target of an aborted move");
                }
                return Err(e);
            }
        };
        self.remember(id, Some(TenantRoute { tier: to, moving_to: None }));
        self.moving_here.lock().expect("moving").remove(&id);
        let pause_ms = asked.elapsed().as_millis() as u64;
        drop(held);
        // The tenant is served from the target now; the source's copy goes.
        let purged = match from {
            Tier::Isolated => self.remove_isolated(id).await,
            _ => self.control.purge_tenant_data(op, id).await,
        };
        drop(bulk);
        if let Err(e) = &purged {
            tracing::error!(tenant = %id, error = %e, "moved, but the source's copy could not be removed");
        }
        Ok(MoveReport {
            tenant_id: id,
            from,
            to,
            tables,
            pause_ms,
            total_ms: 0,
            source_purged: purged.is_ok(),
        })
    }
}

async fn open_isolated(isolation: Isolation, id: TenantId) -> Result<Isolated> {
    Ok(match isolation {
        Isolation::Sqlite { dir, max_connections } => {
            let path = dir.join(format!("{id}.db"));
            Isolated::Sqlite(Arc::new(SqliteStore::open_file(&path, max_connections).await?))
        }
        Isolation::Postgres { admin_url, app_role } => {
            let name = isolated_database(id);
            create_database(&admin_url, &name).await?;
            let url = database_url(&admin_url, &name)?;
            Isolated::Postgres(Arc::new(PgStore::connect(&url, &app_role, ISOLATED_PG_CONNECTIONS).await?))
        }
    })
}

/// Creates database `name` (owner rights) unless it exists.
async fn create_database(admin_url: &str, name: &str) -> Result<()> {
    use sqlx::Connection;
    let mut owner = sqlx::PgConnection::connect(admin_url).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut owner)
        .await?;
    if !exists {
        let created =
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut owner).await;
        match created {
            Ok(_) => {}
            // Another process made it first.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    owner.close().await?;
    Ok(())
}

/// Sums usage rows that share their grouped-by fields, sorted by them.
fn merge_usage(rows: Vec<UsageRow>, group_by: &[GroupBy]) -> Vec<UsageRow> {
    type Key = (Option<TenantId>, Option<time::Date>, Option<UsageKind>, Option<String>, Option<uuid::Uuid>);
    let mut merged: BTreeMap<Vec<String>, (Key, UsageRow)> = BTreeMap::new();
    for r in rows {
        let sort: Vec<String> = group_by
            .iter()
            .map(|g| match g {
                GroupBy::Tenant => r.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
                GroupBy::Day => r.day.map(|d| d.to_string()).unwrap_or_default(),
                GroupBy::Kind => r.kind.map(|k| k.as_str().to_owned()).unwrap_or_default(),
                GroupBy::Name => r.name.clone().unwrap_or_default(),
                GroupBy::Agent => r.agent_id.map(|a| a.to_string()).unwrap_or_default(),
            })
            .collect();
        let key = (r.tenant_id, r.day, r.kind, r.name.clone(), r.agent_id);
        match merged.get_mut(&sort) {
            Some((_, m)) => {
                m.events += r.events;
                m.input_tokens += r.input_tokens;
                m.output_tokens += r.output_tokens;
                m.cached_input_tokens += r.cached_input_tokens;
                m.quantity += r.quantity;
                m.cost = m.cost.saturating_add(r.cost);
            }
            None => {
                merged.insert(sort, (key, r));
            }
        }
    }
    merged.into_values().map(|(_, r)| r).collect()
}

/// Implements a repository trait for [`RoutedStore`]: every listed method
/// (all take `ctx: &TenantCtx` first) goes to the tenant's store with its
/// gate held; the rest is written out after the list.
macro_rules! routed {
    (
        impl $trait:ident {
            $( fn $name:ident(&self, ctx: &TenantCtx $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*
        }
        $($rest:tt)*
    ) => {
        #[async_trait]
        impl $trait for RoutedStore {
            $(
                async fn $name(&self, ctx: &TenantCtx $(, $arg: $ty)*) -> $ret {
                    let routed = self.route(ctx).await?;
                    routed.store.$name(ctx $(, $arg)*).await
                }
            )*
            $($rest)*
        }
    };
}

routed! {
    impl TenantStore {}

    async fn create_tenant(&self, op: &OperatorCtx, new: NewTenant) -> Result<Tenant> {
        let tier = new.tier;
        let tenant = self.control.create_tenant(op, new).await?;
        if tier == Tier::Isolated {
            // Its store, with its control row (the target of its foreign keys).
            let made = async {
                let store = self.isolated_store(tenant.id).await?.store();
                store.import_tenant(op, &TenantDump { tenant: tenant.clone(), tables: Vec::new() }).await
            }
            .await;
            if let Err(e) = made {
                let _ = self.control.delete_tenant(op, tenant.id).await;
                let _ = self.remove_isolated(tenant.id).await;
                return Err(e);
            }
        }
        self.remember(tenant.id, Some(TenantRoute { tier: tenant.tier, moving_to: None }));
        Ok(tenant)
    }

    async fn list_tenants(&self, op: &OperatorCtx, page: PageReq) -> Result<Page<Tenant>> {
        self.control.list_tenants(op, page).await
    }

    async fn get_tenant(&self, op: &OperatorCtx, id: TenantId) -> Result<Tenant> {
        self.control.get_tenant(op, id).await
    }

    async fn find_tenant_by_name(&self, op: &OperatorCtx, name: &str) -> Result<Tenant> {
        self.control.find_tenant_by_name(op, name).await
    }

    /// A tier change between `shared` and `isolated` moves the data (see
    /// [`TenantDataStore::move_tenant`]); to or from `dedicated` it only
    /// changes the route (the cells layer moves the data).
    async fn update_tenant(&self, op: &OperatorCtx, id: TenantId, mut patch: TenantPatch) -> Result<Tenant> {
        patch.validate()?;
        if let Some(tier) = patch.tier {
            let current = self.control.get_tenant(op, id).await?;
            if tier != current.tier && tier != Tier::Dedicated && current.tier != Tier::Dedicated {
                self.do_move(op, id, tier).await?;
                patch.tier = None;
            }
        }
        let tenant = self.control.update_tenant(op, id, patch).await;
        self.forget(id);
        tenant
    }

    async fn delete_tenant(&self, op: &OperatorCtx, id: TenantId) -> Result<()> {
        let gate = self.gate(id);
        let _held = gate.write_owned().await;
        self.control.delete_tenant(op, id).await?;
        if let Err(e) = self.remove_isolated(id).await {
            tracing::error!(tenant = %id, error = %e, "tenant deleted, but its isolated store was not removed");
        }
        self.remember(id, None);
        Ok(())
    }

    async fn own_tenant(&self, ctx: &TenantCtx) -> Result<Tenant> {
        self.control.own_tenant(ctx).await
    }
}

#[async_trait]
impl KeyStore for RoutedStore {
    async fn create_operator_key(
        &self,
        op: &OperatorCtx,
        name: &str,
        key: &NewKey,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiKey> {
        self.control.create_operator_key(op, name, key, expires_at).await
    }

    async fn list_operator_keys(&self, op: &OperatorCtx, page: PageReq) -> Result<Page<ApiKey>> {
        self.control.list_operator_keys(op, page).await
    }

    async fn revoke_operator_key(&self, op: &OperatorCtx, id: KeyId) -> Result<ApiKey> {
        self.control.revoke_operator_key(op, id).await
    }

    async fn has_operator_key(&self, op: &OperatorCtx) -> Result<bool> {
        self.control.has_operator_key(op).await
    }

    // Tenant keys are control-plane data: authentication finds them before
    // it knows the tenant, so they stay in the control store in every tier.
    async fn create_tenant_key(
        &self,
        ctx: &TenantCtx,
        name: &str,
        scope: Scope,
        key: &NewKey,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiKey> {
        self.control.create_tenant_key(ctx, name, scope, key, expires_at).await
    }

    async fn list_tenant_keys(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<ApiKey>> {
        self.control.list_tenant_keys(ctx, page).await
    }

    async fn get_tenant_key(&self, ctx: &TenantCtx, id: KeyId) -> Result<ApiKey> {
        self.control.get_tenant_key(ctx, id).await
    }

    async fn revoke_tenant_key(&self, ctx: &TenantCtx, id: KeyId) -> Result<ApiKey> {
        self.control.revoke_tenant_key(ctx, id).await
    }

    async fn lookup_key(&self, prefix: &str) -> Result<Option<StoredKey>> {
        self.control.lookup_key(prefix).await
    }

    async fn touch_key(&self, id: KeyId, at: OffsetDateTime) -> Result<()> {
        self.control.touch_key(id, at).await
    }
}

routed! {
    impl UsageStore {
        fn usage_events(&self, ctx: &TenantCtx, query: &UsageQuery, after_seq: i64, limit: i64) -> Result<Vec<StoredUsage>>;
    }

    /// Split by destination: the control store's tenants in one batch, each
    /// isolated tenant in its own (one transaction per store, not per batch).
    async fn write_usage(&self, batch: &[UsageWrite], now: OffsetDateTime) -> Result<Vec<bool>> {
        let mut by_tenant: BTreeMap<TenantId, Vec<usize>> = BTreeMap::new();
        for (i, w) in batch.iter().enumerate() {
            by_tenant.entry(w.ctx.tenant_id()).or_default().push(i);
        }
        let mut out = vec![false; batch.len()];
        let mut control_gates = Vec::new();
        let mut control_idx = Vec::new();
        let mut others = Vec::new();
        for (_, idx) in by_tenant {
            let routed = self.route(&batch[idx[0]].ctx).await?;
            if Arc::ptr_eq(&routed.store, &self.control) {
                control_gates.push(routed._gate);
                control_idx.extend(idx);
            } else {
                others.push((routed, idx));
            }
        }
        if !control_idx.is_empty() {
            control_idx.sort_unstable();
            let sub: Vec<UsageWrite> = control_idx.iter().map(|i| batch[*i].clone()).collect();
            let new = self.control.write_usage(&sub, now).await?;
            for (i, n) in control_idx.iter().zip(new) {
                out[*i] = n;
            }
        }
        drop(control_gates);
        for (routed, idx) in others {
            let sub: Vec<UsageWrite> = idx.iter().map(|i| batch[*i].clone()).collect();
            let new = routed.store.write_usage(&sub, now).await?;
            for (i, n) in idx.iter().zip(new) {
                out[*i] = n;
            }
        }
        Ok(out)
    }

    async fn usage_summary(&self, scope: UsageScope<'_>, query: &UsageQuery) -> Result<Vec<UsageRow>> {
        match scope {
            UsageScope::Tenant(ctx) => {
                let routed = self.route(ctx).await?;
                routed.store.usage_summary(scope, query).await
            }
            UsageScope::Platform(op) => {
                let mut rows = self.control.usage_summary(scope, query).await?;
                let isolated = self
                    .each_isolated(|id, store| async move {
                        store.usage_summary(UsageScope::Tenant(&op.act_for(id)), query).await
                    })
                    .await?;
                if isolated.is_empty() {
                    return Ok(rows);
                }
                rows.extend(isolated);
                Ok(merge_usage(rows, &query.group_by))
            }
        }
    }
}

routed! {
    impl BudgetStore {
        fn get_budget(&self, ctx: &TenantCtx) -> Result<Option<Budget>>;
        fn set_budget(&self, ctx: &TenantCtx, budget: Option<&Budget>) -> Result<()>;
        fn reserve(&self, ctx: &TenantCtx, amount: Money, ttl: std::time::Duration, now: OffsetDateTime) -> Result<Reserve>;
        fn release(&self, ctx: &TenantCtx, id: ReservationId) -> Result<()>;
        fn budget_status(&self, ctx: &TenantCtx, now: OffsetDateTime) -> Result<BudgetStatus>;
    }
}

routed! {
    impl SettingsStore {
        fn tenant_settings(&self, ctx: &TenantCtx) -> Result<TenantSettings>;
        fn set_tenant_limits(&self, ctx: &TenantCtx, limits: &Value) -> Result<()>;
        fn set_tenant_pricing(&self, ctx: &TenantCtx, pricing: &Value) -> Result<()>;
        fn set_tenant_models(&self, ctx: &TenantCtx, models: &Value) -> Result<()>;
        fn set_tenant_sandbox(&self, ctx: &TenantCtx, policy: &Value) -> Result<()>;
    }
}

routed! {
    impl SecretStore {
        fn data_key(&self, ctx: &TenantCtx) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
        fn insert_data_key(&self, ctx: &TenantCtx, wrapped: &[u8], nonce: &[u8]) -> Result<(Vec<u8>, Vec<u8>)>;
        fn put_secret(&self, ctx: &TenantCtx, kind: &str, name: &str, ciphertext: &[u8], nonce: &[u8]) -> Result<SealedSecret>;
        fn get_secret(&self, ctx: &TenantCtx, kind: &str, name: &str) -> Result<Option<SealedSecret>>;
        fn delete_secret(&self, ctx: &TenantCtx, kind: &str, name: &str) -> Result<bool>;
        fn list_secrets(&self, ctx: &TenantCtx, kind: &str) -> Result<Vec<SealedSecret>>;
    }
}

routed! {
    impl AgentStore {
        fn create_agent(&self, ctx: &TenantCtx, name: &str, description: &str, spec: &Value) -> Result<Agent>;
        fn list_agents(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<Agent>>;
        fn get_agent(&self, ctx: &TenantCtx, id: AgentId) -> Result<Agent>;
        fn update_agent(&self, ctx: &TenantCtx, id: AgentId, patch: AgentPatch) -> Result<Agent>;
        fn delete_agent(&self, ctx: &TenantCtx, id: AgentId) -> Result<()>;
        fn list_agent_versions(&self, ctx: &TenantCtx, id: AgentId) -> Result<Vec<AgentVersion>>;
        fn get_agent_version(&self, ctx: &TenantCtx, id: AgentId, version: i32) -> Result<AgentVersion>;
        fn create_thread(&self, ctx: &TenantCtx, metadata: &Value) -> Result<Thread>;
        fn get_thread(&self, ctx: &TenantCtx, id: ThreadId) -> Result<Thread>;
        fn list_threads(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<Thread>>;
        fn delete_thread(&self, ctx: &TenantCtx, id: ThreadId) -> Result<()>;
        fn add_message(&self, ctx: &TenantCtx, thread: ThreadId, role: &str, content: &str, data: &Value, run: Option<RunId>) -> Result<StoredMessage>;
        fn list_messages(&self, ctx: &TenantCtx, thread: ThreadId, page: PageReq) -> Result<Page<StoredMessage>>;
        fn recent_messages(&self, ctx: &TenantCtx, thread: ThreadId, n: i64) -> Result<Vec<StoredMessage>>;
        fn set_thread_summary(&self, ctx: &TenantCtx, thread: ThreadId, summary: &str, upto: MessageId) -> Result<()>;
        fn create_run(&self, ctx: &TenantCtx, thread: ThreadId, agent: AgentId, agent_version: i32, input: &Value, max_queued: i64) -> Result<Run>;
        fn get_run(&self, ctx: &TenantCtx, id: RunId) -> Result<Run>;
        fn list_runs(&self, ctx: &TenantCtx, thread: ThreadId, page: PageReq) -> Result<Page<Run>>;
        fn claim_run(&self, ctx: &TenantCtx, worker: &str, lease_until: OffsetDateTime) -> Result<Option<Run>>;
        fn renew_run(&self, ctx: &TenantCtx, id: RunId, worker: &str, lease_until: OffsetDateTime) -> Result<Option<bool>>;
        fn finish_run(&self, ctx: &TenantCtx, id: RunId, worker: &str, status: RunStatus, output: &Value, error: Option<&str>) -> Result<bool>;
        fn cancel_run(&self, ctx: &TenantCtx, id: RunId) -> Result<Run>;
        fn add_step(&self, ctx: &TenantCtx, run: RunId, kind: &str, data: &Value) -> Result<RunStep>;
        fn list_steps(&self, ctx: &TenantCtx, run: RunId) -> Result<Vec<RunStep>>;
    }

    async fn queue_overview(&self, op: &OperatorCtx) -> Result<Vec<TenantQueue>> {
        let mut all: Vec<TenantQueue> = self.control.queue_overview(op).await?;
        let isolated = self.each_isolated(|_, store| async move { store.queue_overview(op).await }).await?;
        all.retain(|q| self.served_by_control(q.tenant_id));
        all.extend(isolated);
        Ok(all)
    }

    async fn recover_expired_runs(&self, op: &OperatorCtx, now: OffsetDateTime, max_attempts: i32) -> Result<Vec<Recovered>> {
        let _bulk = self.bulk.read().await;
        let mut all = self.control.recover_expired_runs(op, now, max_attempts).await?;
        let isolated = self
            .each_isolated(|_, store| async move { store.recover_expired_runs(op, now, max_attempts).await })
            .await?;
        all.extend(isolated);
        Ok(all)
    }
}

routed! {
    impl KnowledgeStore {
        fn create_kb(&self, ctx: &TenantCtx, new: &NewKnowledgeBase) -> Result<KnowledgeBase>;
        fn list_kbs(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<KnowledgeBase>>;
        fn get_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<KnowledgeBase>;
        fn find_kb(&self, ctx: &TenantCtx, name: &str) -> Result<KnowledgeBase>;
        fn delete_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<()>;
        fn upsert_document(&self, ctx: &TenantCtx, kb: KbId, new: &NewDocument) -> Result<Upserted>;
        fn list_documents(&self, ctx: &TenantCtx, kb: KbId, page: PageReq) -> Result<Page<Document>>;
        fn get_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Document>;
        fn document_content(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Vec<u8>>;
        fn delete_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Replaced>;
        fn start_ingestion(&self, ctx: &TenantCtx, doc: DocId, sha256: &str, total: i64) -> Result<bool>;
        fn ingestion_progress(&self, ctx: &TenantCtx, doc: DocId, done: i64) -> Result<()>;
        fn finish_ingestion(&self, ctx: &TenantCtx, doc: DocId, sha256: &str, chunks: &[NewChunk]) -> Result<Option<Replaced>>;
        fn fail_ingestion(&self, ctx: &TenantCtx, doc: DocId, sha256: &str, error: &str) -> Result<()>;
        fn kb_vectors(&self, ctx: &TenantCtx, kb: KbId) -> Result<(i64, Vec<(i64, DocId, Vec<f32>)>)>;
        fn vector_search(&self, ctx: &TenantCtx, kbs: &[KbId], query: &[f32], k: i64, filter: &MetadataFilter) -> Result<Vec<(i64, f32)>>;
        fn text_search(&self, ctx: &TenantCtx, kbs: &[KbId], terms: &[String], k: i64, filter: &MetadataFilter) -> Result<Vec<(i64, f32)>>;
        fn matching_documents(&self, ctx: &TenantCtx, kb: KbId, filter: &MetadataFilter) -> Result<Vec<DocId>>;
        fn chunks_by_id(&self, ctx: &TenantCtx, ids: &[i64]) -> Result<Vec<ChunkText>>;
        fn knowledge_usage(&self, ctx: &TenantCtx) -> Result<KnowledgeUsage>;
    }

    async fn pending_ingestions(&self, op: &OperatorCtx) -> Result<Vec<(TenantId, KbId, DocId)>> {
        let mut all = self.control.pending_ingestions(op).await?;
        let isolated = self.each_isolated(|_, store| async move { store.pending_ingestions(op).await }).await?;
        all.retain(|(t, _, _)| self.served_by_control(*t));
        all.extend(isolated);
        Ok(all)
    }

    fn native_vector_search(&self) -> bool {
        self.control.native_vector_search()
    }
}

routed! {
    impl AuditStore {}

    async fn append_audit(&self, chain: AuditChain<'_>, entry: &NewAuditEntry) -> Result<AuditEntry> {
        match chain {
            AuditChain::Tenant(ctx) => self.route(ctx).await?.store.append_audit(chain, entry).await,
            AuditChain::Platform(_) => self.control.append_audit(chain, entry).await,
        }
    }

    async fn list_audit(&self, chain: AuditChain<'_>, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        match chain {
            AuditChain::Tenant(ctx) => self.route(ctx).await?.store.list_audit(chain, query).await,
            AuditChain::Platform(_) => self.control.list_audit(chain, query).await,
        }
    }

    async fn audit_head(&self, chain: AuditChain<'_>) -> Result<Option<AuditHead>> {
        match chain {
            AuditChain::Tenant(ctx) => self.route(ctx).await?.store.audit_head(chain).await,
            AuditChain::Platform(_) => self.control.audit_head(chain).await,
        }
    }
}

routed! {
    impl ToolStore {
        fn create_tool(&self, ctx: &TenantCtx, name: &str, kind: &str, spec: &Value) -> Result<ToolRecord>;
        fn list_tools(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<ToolRecord>>;
        fn get_tool(&self, ctx: &TenantCtx, id: ToolId) -> Result<ToolRecord>;
        fn find_tool(&self, ctx: &TenantCtx, name: &str) -> Result<Option<ToolRecord>>;
        fn update_tool(&self, ctx: &TenantCtx, id: ToolId, name: &str, spec: &Value) -> Result<ToolRecord>;
        fn delete_tool(&self, ctx: &TenantCtx, id: ToolId) -> Result<()>;
        fn create_mcp_server(&self, ctx: &TenantCtx, name: &str, url: &str, auth: Option<&Value>) -> Result<McpServerRecord>;
        fn list_mcp_servers(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<McpServerRecord>>;
        fn get_mcp_server(&self, ctx: &TenantCtx, id: McpServerId) -> Result<McpServerRecord>;
        fn find_mcp_server(&self, ctx: &TenantCtx, name: &str) -> Result<Option<McpServerRecord>>;
        fn delete_mcp_server(&self, ctx: &TenantCtx, id: McpServerId) -> Result<()>;
        fn tool_settings(&self, ctx: &TenantCtx) -> Result<ToolSettings>;
        fn set_tool_settings(&self, ctx: &TenantCtx, allowed_tools: Option<&[String]>, egress: &Value) -> Result<ToolSettings>;
    }
}

// Cells, placements and key records are control-plane data.
#[async_trait]
impl CellStore for RoutedStore {
    async fn create_cell(&self, op: &OperatorCtx, new: NewCell) -> Result<Cell> {
        self.control.create_cell(op, new).await
    }

    async fn list_cells(&self, op: &OperatorCtx) -> Result<Vec<Cell>> {
        self.control.list_cells(op).await
    }

    async fn get_cell(&self, op: &OperatorCtx, name: &str) -> Result<Cell> {
        self.control.get_cell(op, name).await
    }

    async fn delete_cell(&self, op: &OperatorCtx, name: &str) -> Result<()> {
        self.control.delete_cell(op, name).await
    }

    async fn tenant_cell(&self, ctx: &TenantCtx) -> Result<Option<Cell>> {
        self.control.tenant_cell(ctx).await
    }

    async fn place_tenant(&self, op: &OperatorCtx, tenant: TenantId, placement: Placement) -> Result<Tenant> {
        let placed = self.control.place_tenant(op, tenant, placement).await;
        self.forget(tenant);
        placed
    }

    async fn placements(&self, op: &OperatorCtx) -> Result<Vec<(TenantId, String)>> {
        self.control.placements(op).await
    }

    async fn key_records(&self, ctx: &TenantCtx) -> Result<Vec<KeyRecord>> {
        self.control.key_records(ctx).await
    }

    async fn put_key_records(&self, ctx: &TenantCtx, records: &[KeyRecord]) -> Result<()> {
        self.control.put_key_records(ctx, records).await
    }
}

#[async_trait]
impl TenantDataStore for RoutedStore {
    /// The control row and keys from the control store, the rest from the
    /// tenant's data store.
    async fn export_tenant(&self, op: &OperatorCtx, id: TenantId) -> Result<TenantDump> {
        let tenant = self.control.get_tenant(op, id).await?;
        match tenant.tier {
            Tier::Shared => self.control.export_tenant(op, id).await,
            Tier::Isolated => {
                let routed = self.route(&op.act_for(id)).await?;
                let mut control = self.control.export_tenant(op, id).await?;
                let data = routed.store.export_tenant(op, id).await?;
                control.tables.retain(|t| CONTROL_TABLES.contains(&t.table.as_str()));
                control
                    .tables
                    .extend(data.tables.into_iter().filter(|t| !CONTROL_TABLES.contains(&t.table.as_str())));
                let names = crate::dump::ordered(control.tables.iter().map(|t| t.table.clone()).collect());
                control.tables.sort_by_key(|t| names.iter().position(|n| *n == t.table));
                Ok(control)
            }
            Tier::Dedicated => Err(StoreError::WrongCell),
        }
    }

    /// Places the data by `dump.tenant.tier`: keys and the control row in
    /// the control store, the rest in the tenant's store.
    async fn import_tenant(&self, op: &OperatorCtx, dump: &TenantDump) -> Result<()> {
        let id = dump.tenant.id;
        match dump.tenant.tier {
            Tier::Shared => self.control.import_tenant(op, dump).await?,
            Tier::Isolated => {
                let (control, data): (Vec<_>, Vec<_>) =
                    dump.tables.iter().cloned().partition(|t| CONTROL_TABLES.contains(&t.table.as_str()));
                self.control
                    .import_tenant(op, &TenantDump { tenant: dump.tenant.clone(), tables: control })
                    .await?;
                let store = self.isolated_store(id).await?.store();
                store.import_tenant(op, &TenantDump { tenant: dump.tenant.clone(), tables: data }).await?;
            }
            Tier::Dedicated => {
                return Err(StoreError::Invalid(
                    "a dump restores as shared or isolated: set the tier this deployment should give it"
                        .into(),
                ));
            }
        }
        self.forget(id);
        Ok(())
    }

    async fn purge_tenant_data(&self, op: &OperatorCtx, id: TenantId) -> Result<()> {
        // A dedicated tenant's data is in its cell: what the control store
        // holds of it are leftovers (a move's source, entries made here while
        // it was away), removed without waiting for its move marker.
        if self.control.get_tenant(op, id).await?.tier == Tier::Dedicated {
            return self.control.purge_tenant_data(op, id).await;
        }
        let routed = self.route(&op.act_for(id)).await?;
        routed.store.purge_tenant_data(op, id).await
    }

    async fn tenant_route(&self, op: &OperatorCtx, id: TenantId) -> Result<Option<TenantRoute>> {
        self.control.tenant_route(op, id).await
    }

    async fn mark_moving(&self, op: &OperatorCtx, id: TenantId, to: Option<Tier>) -> Result<()> {
        let done = self.control.mark_moving(op, id, to).await;
        self.forget(id);
        done
    }

    async fn finish_move(&self, op: &OperatorCtx, id: TenantId, tier: Tier) -> Result<()> {
        let done = self.control.finish_move(op, id, tier).await;
        self.forget(id);
        done
    }

    async fn move_tenant(&self, op: &OperatorCtx, id: TenantId, to: Tier) -> Result<MoveReport> {
        self.do_move(op, id, to).await
    }
}

#[async_trait]
impl Store for RoutedStore {
    fn backend(&self) -> &'static str {
        self.control.backend()
    }

    async fn ping(&self) -> Result<()> {
        self.control.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_host_and_options() {
        assert_eq!(
            database_url("postgres://u:p@h:5432/main?sslmode=disable", "t1").unwrap(),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(database_url("postgres://h", "t1").unwrap(), "postgres://h/t1");
        assert!(database_url("nonsense", "t1").is_err());
    }
}
