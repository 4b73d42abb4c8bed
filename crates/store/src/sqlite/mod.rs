//! The embedded default: one SQLite file in the data directory, WAL mode,
//! migrations at open. SQLite has no row-level security, so here the typed
//! API is the boundary: every tenant-owned query binds `ctx.tenant_id()`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_core::keys::{NewKey, StoredKey};
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::tenancy::{Scope, TenantStatus};
use bulkhead_core::{KeyId, OperatorCtx, TenantCtx, TenantId, Tier};
use sqlx::AssertSqlSafe;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::classify;
use crate::model::{ApiKey, NewTenant, Tenant, TenantPatch, validate_key_name};
use crate::{KeyStore, Result, Store, StoreError, TenantStore};

mod agents;
mod audit;
mod cells;
mod dump;
mod knowledge;
mod secrets;
mod tools;
mod usage;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one writer connection: SQLite admits one writer at a time, and
    /// queueing writers here (in order, without sleeping) beats letting them
    /// contend for the file lock, whose busy handler sleeps and retries.
    pool: SqlitePool,
    /// Readers: WAL lets them run beside the writer.
    read: SqlitePool,
}

fn ts(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).expect("RFC 3339 formats any UTC time")
}

fn parse_ts(s: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))
}

fn opt_ts(s: Option<String>) -> Result<Option<OffsetDateTime>> {
    s.as_deref().map(parse_ts).transpose()
}

fn decode<T: FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| StoreError::Db(sqlx::Error::Decode(e.to_string().into())))
}

/// UTC now, truncated to whole microseconds so both backends round-trip it.
pub(crate) fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000).expect("valid nanosecond")
}

const TENANT_COLS: &str = "id, name, tier, status, metadata, created_at, updated_at";
const KEY_COLS: &str = "id, tenant_id, name, prefix, scope, created_at, expires_at, revoked_at, last_used_at";

fn tenant_from_row(row: &SqliteRow) -> Result<Tenant> {
    Ok(Tenant {
        id: decode(row.try_get::<&str, _>("id")?)?,
        name: row.try_get("name")?,
        tier: decode::<Tier>(row.try_get::<&str, _>("tier")?)?,
        status: decode::<TenantStatus>(row.try_get::<&str, _>("status")?)?,
        metadata: serde_json::from_str(row.try_get::<&str, _>("metadata")?)
            .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))?,
        created_at: parse_ts(row.try_get("created_at")?)?,
        updated_at: parse_ts(row.try_get("updated_at")?)?,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: decode(row.try_get::<&str, _>("id")?)?,
        tenant_id: row.try_get::<Option<&str>, _>("tenant_id")?.map(decode).transpose()?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scope: row.try_get::<Option<&str>, _>("scope")?.map(decode::<Scope>).transpose()?,
        created_at: parse_ts(row.try_get("created_at")?)?,
        expires_at: opt_ts(row.try_get("expires_at")?)?,
        revoked_at: opt_ts(row.try_get("revoked_at")?)?,
        last_used_at: opt_ts(row.try_get("last_used_at")?)?,
    })
}

fn after_cursor(page: &PageReq) -> String {
    // The nil UUID sorts before every v7 id.
    page.after.unwrap_or_default().hyphenated().to_string()
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/bulkhead.db` and migrates it.
    pub async fn open(data_dir: &Path, max_connections: u32) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", data_dir.display())))?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("bulkhead.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses no committed transaction on a process
            // crash (only on power loss), at a fraction of FULL's fsyncs.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        MIGRATOR.run(&pool).await?;
        let read =
            SqlitePoolOptions::new().max_connections(max_connections.max(1)).connect_with(options).await?;
        Ok(Self { pool, read })
    }

    async fn fetch_tenant(&self, id: TenantId) -> Result<Tenant> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?")))
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        tenant_from_row(&row)
    }

    async fn insert_key(
        &self,
        tenant: Option<TenantId>,
        name: &str,
        scope: Option<Scope>,
        key: &NewKey,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiKey> {
        validate_key_name(name)?;
        let id = KeyId::new();
        let kind = if tenant.is_some() { "tenant" } else { "operator" };
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO api_keys (id, tenant_id, kind, name, prefix, hash, scope, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {KEY_COLS}"
        )))
        .bind(id.to_string())
        .bind(tenant.map(|t| t.to_string()))
        .bind(kind)
        .bind(name)
        .bind(&key.prefix)
        .bind(key.hash.as_slice())
        .bind(scope.map(Scope::as_str))
        .bind(ts(now()))
        .bind(expires_at.map(ts))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify(e, || "a key with this prefix exists".into(), "tenant"))?;
        key_from_row(&row)
    }

    async fn list_keys(&self, tenant: Option<TenantId>, page: PageReq) -> Result<Page<ApiKey>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE tenant_id IS ? AND id > ? ORDER BY id LIMIT ?"
        )))
        .bind(tenant.map(|t| t.to_string()))
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(key_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn revoke_key(&self, tenant: Option<TenantId>, id: KeyId) -> Result<ApiKey> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?)
             WHERE id = ? AND tenant_id IS ? RETURNING {KEY_COLS}"
        )))
        .bind(ts(now()))
        .bind(id.to_string())
        .bind(tenant.map(|t| t.to_string()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("key"))?;
        key_from_row(&row)
    }
}

#[async_trait]
impl TenantStore for SqliteStore {
    async fn create_tenant(&self, _op: &OperatorCtx, new: NewTenant) -> Result<Tenant> {
        new.validate()?;
        let at = ts(now());
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO tenants (id, name, tier, status, metadata, created_at, updated_at)
             VALUES (?, ?, ?, 'active', ?, ?, ?) RETURNING {TENANT_COLS}"
        )))
        .bind(TenantId::new().to_string())
        .bind(&new.name)
        .bind(new.tier.as_str())
        .bind(new.metadata.to_string())
        .bind(&at)
        .bind(&at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify(e, || format!("a tenant named {:?} already exists", new.name), "tenant"))?;
        tenant_from_row(&row)
    }

    async fn list_tenants(&self, _op: &OperatorCtx, page: PageReq) -> Result<Page<Tenant>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TENANT_COLS} FROM tenants WHERE id > ? ORDER BY id LIMIT ?"
        )))
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(tenant_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_tenant(&self, _op: &OperatorCtx, id: TenantId) -> Result<Tenant> {
        self.fetch_tenant(id).await
    }

    async fn find_tenant_by_name(&self, _op: &OperatorCtx, name: &str) -> Result<Tenant> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLS} FROM tenants WHERE name = ?")))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        tenant_from_row(&row)
    }

    async fn update_tenant(&self, _op: &OperatorCtx, id: TenantId, patch: TenantPatch) -> Result<Tenant> {
        patch.validate()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tenants SET
                name = coalesce(?, name), tier = coalesce(?, tier), status = coalesce(?, status),
                metadata = coalesce(?, metadata), updated_at = ?
             WHERE id = ? RETURNING {TENANT_COLS}"
        )))
        .bind(patch.name.as_deref())
        .bind(patch.tier.map(Tier::as_str))
        .bind(patch.status.map(TenantStatus::as_str))
        .bind(patch.metadata.as_ref().map(|m| m.to_string()))
        .bind(ts(now()))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify(e, || format!("a tenant named {:?} already exists", patch.name), "tenant"))?
        .ok_or(StoreError::NotFound("tenant"))?;
        tenant_from_row(&row)
    }

    async fn delete_tenant(&self, _op: &OperatorCtx, id: TenantId) -> Result<()> {
        // Every tenant-owned table references tenants ON DELETE CASCADE.
        let done =
            sqlx::query("DELETE FROM tenants WHERE id = ?").bind(id.to_string()).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("tenant"));
        }
        Ok(())
    }

    async fn own_tenant(&self, ctx: &TenantCtx) -> Result<Tenant> {
        self.fetch_tenant(ctx.tenant_id()).await
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn create_operator_key(
        &self,
        _op: &OperatorCtx,
        name: &str,
        key: &NewKey,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiKey> {
        self.insert_key(None, name, None, key, expires_at).await
    }

    async fn list_operator_keys(&self, _op: &OperatorCtx, page: PageReq) -> Result<Page<ApiKey>> {
        self.list_keys(None, page).await
    }

    async fn revoke_operator_key(&self, _op: &OperatorCtx, id: KeyId) -> Result<ApiKey> {
        self.revoke_key(None, id).await
    }

    async fn has_operator_key(&self, _op: &OperatorCtx) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM api_keys WHERE kind = 'operator' AND revoked_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    async fn create_tenant_key(
        &self,
        ctx: &TenantCtx,
        name: &str,
        scope: Scope,
        key: &NewKey,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiKey> {
        self.insert_key(Some(ctx.tenant_id()), name, Some(scope), key, expires_at).await
    }

    async fn list_tenant_keys(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<ApiKey>> {
        self.list_keys(Some(ctx.tenant_id()), page).await
    }

    async fn get_tenant_key(&self, ctx: &TenantCtx, id: KeyId) -> Result<ApiKey> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE id = ? AND tenant_id = ?"
        )))
        .bind(id.to_string())
        .bind(ctx.tenant_id().to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("key"))?;
        key_from_row(&row)
    }

    async fn revoke_tenant_key(&self, ctx: &TenantCtx, id: KeyId) -> Result<ApiKey> {
        self.revoke_key(Some(ctx.tenant_id()), id).await
    }

    async fn lookup_key(&self, prefix: &str) -> Result<Option<StoredKey>> {
        let row = sqlx::query(
            "SELECT k.id, k.tenant_id, k.scope, k.hash, k.revoked_at, k.expires_at, k.last_used_at, t.status
             FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.prefix = ?",
        )
        .bind(prefix)
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredKey {
            id: decode(row.try_get::<&str, _>("id")?)?,
            tenant_id: row.try_get::<Option<&str>, _>("tenant_id")?.map(decode).transpose()?,
            scope: row.try_get::<Option<&str>, _>("scope")?.map(decode::<Scope>).transpose()?,
            hash: row.try_get("hash")?,
            revoked: row.try_get::<Option<String>, _>("revoked_at")?.is_some(),
            expires_at: opt_ts(row.try_get("expires_at")?)?,
            tenant_status: row
                .try_get::<Option<&str>, _>("status")?
                .map(decode::<TenantStatus>)
                .transpose()?,
            last_used_at: opt_ts(row.try_get("last_used_at")?)?,
        }))
    }

    async fn touch_key(&self, id: KeyId, at: OffsetDateTime) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
            .bind(ts(at))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
