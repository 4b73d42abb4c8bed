//! Cells, placements and key records on SQLite. A placement changes the
//! tenant's tier and its route in one `BEGIN IMMEDIATE` transaction.

use async_trait::async_trait;
use bulkhead_core::tenancy::Scope;
use bulkhead_core::{OperatorCtx, TenantCtx, TenantId, Tier};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::{SqliteStore, TENANT_COLS, decode, now, opt_ts, parse_ts, tenant_from_row, ts};
use crate::cells::*;
use crate::error::classify;
use crate::model::Tenant;
use crate::{Result, StoreError};

const CELL_COLS: &str = "c.id, c.name, c.base_url, c.credential, c.credential_nonce, c.credential_prefix, \
     c.created_at, (SELECT count(*) FROM tenant_placements p WHERE p.cell_id = c.id) AS tenants";

fn cell_from_row(row: &SqliteRow) -> Result<Cell> {
    Ok(Cell {
        id: decode(row.try_get::<&str, _>("id")?)?,
        name: row.try_get("name")?,
        base_url: row.try_get("base_url")?,
        credential: SealedCredential {
            ciphertext: row.try_get("credential")?,
            nonce: row.try_get("credential_nonce")?,
        },
        credential_prefix: row.try_get("credential_prefix")?,
        created_at: parse_ts(row.try_get("created_at")?)?,
        tenants: row.try_get("tenants")?,
    })
}

#[async_trait]
impl CellStore for SqliteStore {
    async fn create_cell(&self, _op: &OperatorCtx, mut new: NewCell) -> Result<Cell> {
        new.validate()?;
        let id = Uuid::now_v7().hyphenated().to_string();
        sqlx::query(
            "INSERT INTO cells (id, name, base_url, credential, credential_nonce, credential_prefix, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&new.name)
        .bind(&new.base_url)
        .bind(&new.credential.ciphertext)
        .bind(&new.credential.nonce)
        .bind(&new.credential_prefix)
        .bind(ts(now()))
        .execute(&self.pool)
        .await
        .map_err(|e| classify(e, || format!("a cell named {:?} already exists", new.name), "cell"))?;
        self.cell_where("c.id = ?", &id).await?.ok_or(StoreError::NotFound("cell"))
    }

    async fn list_cells(&self, _op: &OperatorCtx) -> Result<Vec<Cell>> {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {CELL_COLS} FROM cells c ORDER BY c.name")))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(cell_from_row).collect()
    }

    async fn get_cell(&self, _op: &OperatorCtx, name: &str) -> Result<Cell> {
        self.cell_where("c.name = ?", name).await?.ok_or(StoreError::NotFound("cell"))
    }

    async fn delete_cell(&self, _op: &OperatorCtx, name: &str) -> Result<()> {
        // The foreign key refuses too; this says so before trying.
        let placed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenant_placements p JOIN cells c ON c.id = p.cell_id WHERE c.name = ?",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        if placed > 0 {
            return Err(StoreError::Conflict(format!(
                "cell {name:?} still serves {placed} tenant(s); move them out first (bulkhead tenant move NAME --tier shared)"
            )));
        }
        let done = sqlx::query("DELETE FROM cells WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| cell_in_use(e, name))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("cell"));
        }
        Ok(())
    }

    async fn tenant_cell(&self, ctx: &TenantCtx) -> Result<Option<Cell>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CELL_COLS} FROM tenant_placements t JOIN cells c ON c.id = t.cell_id WHERE t.tenant = ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(cell_from_row).transpose()
    }

    async fn place_tenant(
        &self,
        _op: &OperatorCtx,
        tenant: TenantId,
        placement: Placement,
    ) -> Result<Tenant> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let at = ts(now());
        let tier = match &placement {
            Placement::Local(Tier::Dedicated) => {
                return Err(StoreError::Invalid("a dedicated tenant is placed in a cell".into()));
            }
            Placement::Local(tier) => {
                sqlx::query("DELETE FROM tenant_placements WHERE tenant = ?")
                    .bind(tenant.to_string())
                    .execute(&mut *tx)
                    .await?;
                *tier
            }
            Placement::Cell(name) => {
                let cell: Option<String> = sqlx::query_scalar("SELECT id FROM cells WHERE name = ?")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let cell = cell.ok_or(StoreError::NotFound("cell"))?;
                sqlx::query(
                    "INSERT INTO tenant_placements (tenant, cell_id, placed_at) VALUES (?, ?, ?)
                     ON CONFLICT (tenant) DO UPDATE SET cell_id = excluded.cell_id, placed_at = excluded.placed_at",
                )
                .bind(tenant.to_string())
                .bind(cell)
                .bind(&at)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(e, String::new, "tenant"))?;
                Tier::Dedicated
            }
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tenants SET tier = ?, updated_at = ? WHERE id = ? RETURNING {TENANT_COLS}"
        )))
        .bind(tier.as_str())
        .bind(&at)
        .bind(tenant.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
        tx.commit().await?;
        tenant_from_row(&row)
    }

    async fn placements(&self, _op: &OperatorCtx) -> Result<Vec<(TenantId, String)>> {
        let rows = sqlx::query(
            "SELECT t.tenant, c.name FROM tenant_placements t JOIN cells c ON c.id = t.cell_id ORDER BY t.tenant",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((decode(r.try_get::<&str, _>("tenant")?)?, r.try_get("name")?))).collect()
    }

    async fn key_records(&self, ctx: &TenantCtx) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, prefix, hash, scope, created_at, expires_at, revoked_at
             FROM api_keys WHERE tenant_id = ? ORDER BY id",
        )
        .bind(ctx.tenant_id().to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    id: decode(r.try_get::<&str, _>("id")?)?,
                    name: r.try_get("name")?,
                    prefix: r.try_get("prefix")?,
                    hash: r.try_get("hash")?,
                    scope: decode::<Scope>(r.try_get::<&str, _>("scope")?)?,
                    created_at: parse_ts(r.try_get("created_at")?)?,
                    expires_at: opt_ts(r.try_get("expires_at")?)?,
                    revoked_at: opt_ts(r.try_get("revoked_at")?)?,
                })
            })
            .collect()
    }

    async fn put_key_records(&self, ctx: &TenantCtx, records: &[KeyRecord]) -> Result<()> {
        for r in records {
            r.validate()?;
        }
        let tenant = ctx.tenant_id().to_string();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for r in records {
            // An id that exists for another tenant (or as an operator key)
            // is not touched: the WHERE of the update filters it out, and
            // the missing row is reported below.
            let done = sqlx::query(
                "INSERT INTO api_keys
                    (id, tenant_id, kind, name, prefix, hash, scope, created_at, expires_at, revoked_at)
                 VALUES (?, ?, 'tenant', ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, expires_at = excluded.expires_at,
                    revoked_at = excluded.revoked_at, scope = excluded.scope
                 WHERE api_keys.tenant_id = excluded.tenant_id AND api_keys.prefix = excluded.prefix
                    AND api_keys.hash = excluded.hash",
            )
            .bind(r.id.to_string())
            .bind(&tenant)
            .bind(&r.name)
            .bind(&r.prefix)
            .bind(&r.hash)
            .bind(r.scope.as_str())
            .bind(ts(r.created_at))
            .bind(r.expires_at.map(ts))
            .bind(r.revoked_at.map(ts))
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

impl SqliteStore {
    async fn cell_where(&self, filter: &str, value: &str) -> Result<Option<Cell>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {CELL_COLS} FROM cells c WHERE {filter}")))
            .bind(value)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cell_from_row).transpose()
    }
}
