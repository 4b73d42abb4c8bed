//! PostgreSQL: migrations run as the connecting (owner) role; then every
//! pooled connection switches to the application role, which does not own
//! the tables and has no BYPASSRLS, so row-level security applies to all
//! the application's queries. Each transaction declares its scope with
//! `set_config(…, true)` (transaction-local): `app.tenant_id` for tenant
//! work, `app.platform` for the operator and for key lookup.

use async_trait::async_trait;
use bulkhead_core::keys::{NewKey, StoredKey};
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::tenancy::{Scope, TenantStatus};
use bulkhead_core::{KeyId, OperatorCtx, TenantCtx, TenantId, Tier};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use std::str::FromStr;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::classify;
use crate::model::{ApiKey, NewTenant, Tenant, TenantPatch, validate_key_name};
use crate::sqlite::now;
use crate::{KeyStore, Result, Store, StoreError, TenantStore};

mod agents;
mod audit;
mod cells;
mod dump;
mod knowledge;
mod secrets;
mod tools;
mod usage;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    app_role: String,
}

fn decode<T: FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| StoreError::Db(sqlx::Error::Decode(e.to_string().into())))
}

const TENANT_COLS: &str = "id, name, tier, status, metadata, created_at, updated_at";
const KEY_COLS: &str = "id, tenant_id, name, prefix, scope, created_at, expires_at, revoked_at, last_used_at";

fn tenant_from_row(row: &PgRow) -> Result<Tenant> {
    Ok(Tenant {
        id: TenantId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        tier: decode::<Tier>(row.try_get::<&str, _>("tier")?)?,
        status: decode::<TenantStatus>(row.try_get::<&str, _>("status")?)?,
        metadata: row.try_get("metadata")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn key_from_row(row: &PgRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: KeyId::from_uuid(row.try_get("id")?),
        tenant_id: row.try_get::<Option<Uuid>, _>("tenant_id")?.map(TenantId::from_uuid),
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scope: row.try_get::<Option<&str>, _>("scope")?.map(decode::<Scope>).transpose()?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

impl PgStore {
    /// Connects, migrates as the URL's role, makes sure the application role
    /// exists with the right grants and no way around RLS, and opens a pool
    /// whose connections work as that role.
    pub async fn connect(url: &str, app_role: &str, max_connections: u32) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let mut owner = PgConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut owner).await?;
        setup_app_role(&mut owner, app_role).await?;
        owner.close().await?;

        let set_role = format!("SET ROLE {app_role}");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .after_connect(move |conn, _meta| {
                let set_role = set_role.clone();
                Box::pin(async move {
                    sqlx::raw_sql(AssertSqlSafe(set_role)).execute(conn).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self { pool, app_role: app_role.to_owned() })
    }

    pub fn app_role(&self) -> &str {
        &self.app_role
    }

    /// The pool, for tests that probe row-level security directly.
    #[doc(hidden)]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn tenant_tx(&self, ctx: &TenantCtx) -> Result<Transaction<'_, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(ctx.tenant_id().to_string())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn platform_tx(&self) -> Result<Transaction<'_, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('app.platform', 'on', true)").execute(&mut *tx).await?;
        Ok(tx)
    }

    async fn insert_key(
        &self,
        mut tx: Transaction<'_, Postgres>,
        tenant: Option<TenantId>,
        name: &str,
        scope: Option<Scope>,
        key: &NewKey,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiKey> {
        validate_key_name(name)?;
        let kind = if tenant.is_some() { "tenant" } else { "operator" };
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO api_keys (id, tenant_id, kind, name, prefix, hash, scope, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {KEY_COLS}"
        )))
        .bind(KeyId::new().as_uuid())
        .bind(tenant.map(|t| t.as_uuid()))
        .bind(kind)
        .bind(name)
        .bind(&key.prefix)
        .bind(key.hash.as_slice())
        .bind(scope.map(Scope::as_str))
        .bind(now())
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| classify(e, || "a key with this prefix exists".into(), "tenant"))?;
        tx.commit().await?;
        key_from_row(&row)
    }

    async fn list_keys(
        &self,
        mut tx: Transaction<'_, Postgres>,
        tenant: Option<TenantId>,
        page: PageReq,
    ) -> Result<Page<ApiKey>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE tenant_id IS NOT DISTINCT FROM $1 AND id > $2
             ORDER BY id LIMIT $3"
        )))
        .bind(tenant.map(|t| t.as_uuid()))
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let items = rows.iter().map(key_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn revoke_key(
        &self,
        mut tx: Transaction<'_, Postgres>,
        tenant: Option<TenantId>,
        id: KeyId,
    ) -> Result<ApiKey> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $1)
             WHERE id = $2 AND tenant_id IS NOT DISTINCT FROM $3 RETURNING {KEY_COLS}"
        )))
        .bind(now())
        .bind(id.as_uuid())
        .bind(tenant.map(|t| t.as_uuid()))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("key"))?;
        tx.commit().await?;
        key_from_row(&row)
    }
}

/// Creates the application role if missing and grants it what the app
/// needs; refuses to go on if the role could bypass row-level security.
async fn setup_app_role(owner: &mut PgConnection, role: &str) -> Result<()> {
    // `role` is validated by the config ([a-z0-9_]+), so quoting is safe.
    // Concurrent first starts may race to create the role: both outcomes are fine.
    let statements = [
        format!(
            "DO $$ BEGIN CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ),
        format!(
            "DO $$ BEGIN EXECUTE format('GRANT {role} TO %I', current_user);
             EXCEPTION WHEN duplicate_object OR invalid_grant_operation THEN NULL; END $$"
        ),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"),
        format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}"),
        format!("REVOKE ALL ON _sqlx_migrations FROM {role}"),
        // The audit log is append-only for the application (tenant deletion
        // still cascades: referential actions run with the owner's rights).
        format!("REVOKE UPDATE, DELETE, TRUNCATE ON audit_entries, platform_audit_entries FROM {role}"),
    ];
    for sql in statements {
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *owner).await?;
    }
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut *owner)
            .await?;
    if superuser || bypass {
        return Err(StoreError::Setup(format!(
            "application role {role} is a superuser or has BYPASSRLS; row-level security would not apply"
        )));
    }
    let owns: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = $1")
            .bind(role)
            .fetch_one(&mut *owner)
            .await?;
    if owns > 0 {
        return Err(StoreError::Setup(format!(
            "application role {role} owns tables; owners bypass row-level security"
        )));
    }
    Ok(())
}

#[async_trait]
impl TenantStore for PgStore {
    async fn create_tenant(&self, _op: &OperatorCtx, new: NewTenant) -> Result<Tenant> {
        new.validate()?;
        let mut tx = self.platform_tx().await?;
        let at = now();
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO tenants (id, name, tier, status, metadata, created_at, updated_at)
             VALUES ($1, $2, $3, 'active', $4, $5, $5) RETURNING {TENANT_COLS}"
        )))
        .bind(TenantId::new().as_uuid())
        .bind(&new.name)
        .bind(new.tier.as_str())
        .bind(&new.metadata)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| classify(e, || format!("a tenant named {:?} already exists", new.name), "tenant"))?;
        tx.commit().await?;
        tenant_from_row(&row)
    }

    async fn list_tenants(&self, _op: &OperatorCtx, page: PageReq) -> Result<Page<Tenant>> {
        let mut tx = self.platform_tx().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TENANT_COLS} FROM tenants WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let items = rows.iter().map(tenant_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_tenant(&self, _op: &OperatorCtx, id: TenantId) -> Result<Tenant> {
        let mut tx = self.platform_tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1")))
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        tx.commit().await?;
        tenant_from_row(&row)
    }

    async fn find_tenant_by_name(&self, _op: &OperatorCtx, name: &str) -> Result<Tenant> {
        let mut tx = self.platform_tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLS} FROM tenants WHERE name = $1")))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        tx.commit().await?;
        tenant_from_row(&row)
    }

    async fn update_tenant(&self, _op: &OperatorCtx, id: TenantId, patch: TenantPatch) -> Result<Tenant> {
        patch.validate()?;
        let mut tx = self.platform_tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tenants SET
                name = coalesce($1, name), tier = coalesce($2, tier), status = coalesce($3, status),
                metadata = coalesce($4, metadata), updated_at = $5
             WHERE id = $6 RETURNING {TENANT_COLS}"
        )))
        .bind(patch.name.as_deref())
        .bind(patch.tier.map(Tier::as_str))
        .bind(patch.status.map(TenantStatus::as_str))
        .bind(patch.metadata.as_ref())
        .bind(now())
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| classify(e, || format!("a tenant named {:?} already exists", patch.name), "tenant"))?
        .ok_or(StoreError::NotFound("tenant"))?;
        tx.commit().await?;
        tenant_from_row(&row)
    }

    async fn delete_tenant(&self, _op: &OperatorCtx, id: TenantId) -> Result<()> {
        let mut tx = self.platform_tx().await?;
        // Tenant-owned tables reference tenants ON DELETE CASCADE.
        let done =
            sqlx::query("DELETE FROM tenants WHERE id = $1").bind(id.as_uuid()).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("tenant"));
        }
        // Its knowledge partition is empty now; drop the table too.
        sqlx::query("SELECT bulkhead_kb_drop_partition($1)").bind(id.as_uuid()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn own_tenant(&self, ctx: &TenantCtx) -> Result<Tenant> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1")))
            .bind(ctx.tenant_id().as_uuid())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        tx.commit().await?;
        tenant_from_row(&row)
    }
}

#[async_trait]
impl KeyStore for PgStore {
    async fn create_operator_key(
        &self,
        _op: &OperatorCtx,
        name: &str,
        key: &NewKey,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<ApiKey> {
        let tx = self.platform_tx().await?;
        self.insert_key(tx, None, name, None, key, expires_at).await
    }

    async fn list_operator_keys(&self, _op: &OperatorCtx, page: PageReq) -> Result<Page<ApiKey>> {
        let tx = self.platform_tx().await?;
        self.list_keys(tx, None, page).await
    }

    async fn revoke_operator_key(&self, _op: &OperatorCtx, id: KeyId) -> Result<ApiKey> {
        let tx = self.platform_tx().await?;
        self.revoke_key(tx, None, id).await
    }

    async fn has_operator_key(&self, _op: &OperatorCtx) -> Result<bool> {
        let mut tx = self.platform_tx().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM api_keys WHERE kind = 'operator' AND revoked_at IS NULL",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
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
        let tx = self.tenant_tx(ctx).await?;
        self.insert_key(tx, Some(ctx.tenant_id()), name, Some(scope), key, expires_at).await
    }

    async fn list_tenant_keys(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<ApiKey>> {
        let tx = self.tenant_tx(ctx).await?;
        self.list_keys(tx, Some(ctx.tenant_id()), page).await
    }

    async fn get_tenant_key(&self, ctx: &TenantCtx, id: KeyId) -> Result<ApiKey> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE id = $1 AND tenant_id = $2"
        )))
        .bind(id.as_uuid())
        .bind(ctx.tenant_id().as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("key"))?;
        tx.commit().await?;
        key_from_row(&row)
    }

    async fn revoke_tenant_key(&self, ctx: &TenantCtx, id: KeyId) -> Result<ApiKey> {
        let tx = self.tenant_tx(ctx).await?;
        self.revoke_key(tx, Some(ctx.tenant_id()), id).await
    }

    async fn lookup_key(&self, prefix: &str) -> Result<Option<StoredKey>> {
        let mut tx = self.platform_tx().await?;
        let row = sqlx::query(
            "SELECT k.id, k.tenant_id, k.scope, k.hash, k.revoked_at, k.expires_at, k.last_used_at, t.status
             FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.prefix = $1",
        )
        .bind(prefix)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredKey {
            id: KeyId::from_uuid(row.try_get("id")?),
            tenant_id: row.try_get::<Option<Uuid>, _>("tenant_id")?.map(TenantId::from_uuid),
            scope: row.try_get::<Option<&str>, _>("scope")?.map(decode::<Scope>).transpose()?,
            hash: row.try_get("hash")?,
            revoked: row.try_get::<Option<OffsetDateTime>, _>("revoked_at")?.is_some(),
            expires_at: row.try_get("expires_at")?,
            tenant_status: row
                .try_get::<Option<&str>, _>("status")?
                .map(decode::<TenantStatus>)
                .transpose()?,
            last_used_at: row.try_get("last_used_at")?,
        }))
    }

    async fn touch_key(&self, id: KeyId, at: OffsetDateTime) -> Result<()> {
        let mut tx = self.platform_tx().await?;
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
