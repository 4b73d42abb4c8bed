//! Cells, placements and key records on PostgreSQL. The registry and the
//! routing table are platform data (platform-scope policies only), so
//! everything but the key records runs in `platform_tx`; key records are
//! the tenant's own rows and run in `tenant_tx`.

use async_trait::async_trait;
use bulkhead_core::tenancy::Scope;
use bulkhead_core::{KeyId, OperatorCtx, TenantCtx, TenantId, Tier};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::{PgStore, TENANT_COLS, decode, tenant_from_row};
use crate::cells::*;
use crate::error::classify;
use crate::model::Tenant;
use crate::sqlite::now;
use crate::{Result, StoreError};

const CELL_COLS: &str = "c.id, c.name, c.base_url, c.credential, c.credential_nonce, c.credential_prefix, \
     c.created_at, (SELECT count(*) FROM tenant_placements p WHERE p.cell_id = c.id) AS tenants";

fn cell_from_row(row: &PgRow) -> Result<Cell> {
    Ok(Cell {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        base_url: row.try_get("base_url")?,
        credential: SealedCredential {
            ciphertext: row.try_get("credential")?,
            nonce: row.try_get("credential_nonce")?,
        },
        credential_prefix: row.try_get("credential_prefix")?,
        created_at: row.try_get("created_at")?,
        tenants: row.try_get("tenants")?,
    })
}

#[async_trait]
impl CellStore for PgStore {
    async fn create_cell(&self, _op: &OperatorCtx, mut new: NewCell) -> Result<Cell> {
        new.validate()?;
        let mut tx = self.platform_tx().await?;
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO cells (id, name, base_url, credential, credential_nonce, credential_prefix, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(&new.name)
        .bind(&new.base_url)
        .bind(&new.credential.ciphertext)
        .bind(&new.credential.nonce)
        .bind(&new.credential_prefix)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, || format!("a cell named {:?} already exists", new.name), "cell"))?;
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {CELL_COLS} FROM cells c WHERE c.id = $1")))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        cell_from_row(&row)
    }

    async fn list_cells(&self, _op: &OperatorCtx) -> Result<Vec<Cell>> {
        let mut tx = self.platform_tx().await?;
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {CELL_COLS} FROM cells c ORDER BY c.name")))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(cell_from_row).collect()
    }

    async fn get_cell(&self, _op: &OperatorCtx, name: &str) -> Result<Cell> {
        let mut tx = self.platform_tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {CELL_COLS} FROM cells c WHERE c.name = $1")))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(cell_from_row).transpose()?.ok_or(StoreError::NotFound("cell"))
    }

    async fn delete_cell(&self, _op: &OperatorCtx, name: &str) -> Result<()> {
        let mut tx = self.platform_tx().await?;
        // The foreign key refuses too; this says so before trying.
        let placed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenant_placements p JOIN cells c ON c.id = p.cell_id WHERE c.name = $1",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if placed > 0 {
            return Err(StoreError::Conflict(format!(
                "cell {name:?} still serves {placed} tenant(s); move them out first (bulkhead tenant move NAME --tier shared)"
            )));
        }
        let done = sqlx::query("DELETE FROM cells WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| cell_in_use(e, name))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("cell"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_cell(&self, ctx: &TenantCtx) -> Result<Option<Cell>> {
        let mut tx = self.platform_tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CELL_COLS} FROM tenant_placements t JOIN cells c ON c.id = t.cell_id WHERE t.tenant = $1"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(cell_from_row).transpose()
    }

    async fn place_tenant(
        &self,
        _op: &OperatorCtx,
        tenant: TenantId,
        placement: Placement,
    ) -> Result<Tenant> {
        let mut tx = self.platform_tx().await?;
        let tier = match &placement {
            Placement::Local(Tier::Dedicated) => {
                return Err(StoreError::Invalid("a dedicated tenant is placed in a cell".into()));
            }
            Placement::Local(tier) => {
                sqlx::query("DELETE FROM tenant_placements WHERE tenant = $1")
                    .bind(tenant.as_uuid())
                    .execute(&mut *tx)
                    .await?;
                *tier
            }
            Placement::Cell(name) => {
                let cell: Option<Uuid> = sqlx::query_scalar("SELECT id FROM cells WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let cell = cell.ok_or(StoreError::NotFound("cell"))?;
                sqlx::query(
                    "INSERT INTO tenant_placements (tenant, cell_id, placed_at) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant) DO UPDATE SET cell_id = excluded.cell_id, placed_at = excluded.placed_at",
                )
                .bind(tenant.as_uuid())
                .bind(cell)
                .bind(now())
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(e, String::new, "tenant"))?;
                Tier::Dedicated
            }
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tenants SET tier = $1, updated_at = $2 WHERE id = $3 RETURNING {TENANT_COLS}"
        )))
        .bind(tier.as_str())
        .bind(now())
        .bind(tenant.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
        tx.commit().await?;
        tenant_from_row(&row)
    }

    async fn placements(&self, _op: &OperatorCtx) -> Result<Vec<(TenantId, String)>> {
        let mut tx = self.platform_tx().await?;
        let rows = sqlx::query(
            "SELECT t.tenant, c.name FROM tenant_placements t JOIN cells c ON c.id = t.cell_id ORDER BY t.tenant",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok((TenantId::from_uuid(r.try_get("tenant")?), r.try_get("name")?))).collect()
    }

    async fn key_records(&self, ctx: &TenantCtx) -> Result<Vec<KeyRecord>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(
            "SELECT id, name, prefix, hash, scope, created_at, expires_at, revoked_at
             FROM api_keys WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(ctx.tenant_id().as_uuid())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    id: KeyId::from_uuid(r.try_get("id")?),
                    name: r.try_get("name")?,
                    prefix: r.try_get("prefix")?,
                    hash: r.try_get("hash")?,
                    scope: decode::<Scope>(r.try_get::<&str, _>("scope")?)?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    async fn put_key_records(&self, ctx: &TenantCtx, records: &[KeyRecord]) -> Result<()> {
        for r in records {
            r.validate()?;
        }
        // Tenant scope: RLS refuses a row of another tenant on insert, and
        // hides one on conflict (the update then touches nothing).
        let mut tx = self.tenant_tx(ctx).await?;
        for r in records {
            let done = sqlx::query(
                "INSERT INTO api_keys
                    (id, tenant_id, kind, name, prefix, hash, scope, created_at, expires_at, revoked_at)
                 VALUES ($1, $2, 'tenant', $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, expires_at = excluded.expires_at,
                    revoked_at = excluded.revoked_at, scope = excluded.scope
                 WHERE api_keys.tenant_id = excluded.tenant_id AND api_keys.prefix = excluded.prefix
                    AND api_keys.hash = excluded.hash",
            )
            .bind(r.id.as_uuid())
            .bind(ctx.tenant_id().as_uuid())
            .bind(&r.name)
            .bind(&r.prefix)
            .bind(&r.hash)
            .bind(r.scope.as_str())
            .bind(r.created_at)
            .bind(r.expires_at)
            .bind(r.revoked_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, || format!("key prefix {} is taken", r.prefix), "tenant"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("key {} belongs to someone else", r.id)));
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
