//! Vault storage on SQLite: wrapped data keys and sealed secrets.

use async_trait::async_trait;
use bulkhead_core::TenantCtx;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use super::SqliteStore;
use crate::usage::{from_micros, to_micros};
use crate::{Result, SealedSecret, SecretStore};

fn sealed(row: &SqliteRow) -> Result<SealedSecret> {
    Ok(SealedSecret {
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        ciphertext: row.try_get("ciphertext")?,
        nonce: row.try_get("nonce")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn data_key(&self, ctx: &TenantCtx) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(sqlx::query_as("SELECT wrapped, nonce FROM tenant_data_keys WHERE tenant_id = ?")
            .bind(ctx.tenant_id().to_string())
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn insert_data_key(
        &self,
        ctx: &TenantCtx,
        wrapped: &[u8],
        nonce: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let tenant = ctx.tenant_id().to_string();
        sqlx::query(
            "INSERT INTO tenant_data_keys (tenant_id, wrapped, nonce, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(&tenant)
        .bind(wrapped)
        .bind(nonce)
        .bind(to_micros(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await
        .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
        self.data_key(ctx).await?.ok_or(crate::StoreError::NotFound("tenant"))
    }

    async fn put_secret(
        &self,
        ctx: &TenantCtx,
        kind: &str,
        name: &str,
        ciphertext: &[u8],
        nonce: &[u8],
    ) -> Result<SealedSecret> {
        let now = to_micros(OffsetDateTime::now_utc());
        let row = sqlx::query(
            "INSERT INTO secrets (tenant_id, kind, name, ciphertext, nonce, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (tenant_id, kind, name) DO UPDATE SET
                ciphertext = excluded.ciphertext, nonce = excluded.nonce, updated_at = excluded.updated_at
             RETURNING kind, name, ciphertext, nonce, created_at, updated_at",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(kind)
        .bind(name)
        .bind(ciphertext)
        .bind(nonce)
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
        sealed(&row)
    }

    async fn get_secret(&self, ctx: &TenantCtx, kind: &str, name: &str) -> Result<Option<SealedSecret>> {
        let row = sqlx::query(
            "SELECT kind, name, ciphertext, nonce, created_at, updated_at FROM secrets
             WHERE tenant_id = ? AND kind = ? AND name = ?",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(kind)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(sealed).transpose()
    }

    async fn delete_secret(&self, ctx: &TenantCtx, kind: &str, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM secrets WHERE tenant_id = ? AND kind = ? AND name = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(kind)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_secrets(&self, ctx: &TenantCtx, kind: &str) -> Result<Vec<SealedSecret>> {
        let rows = sqlx::query(
            "SELECT kind, name, ciphertext, nonce, created_at, updated_at FROM secrets
             WHERE tenant_id = ? AND kind = ? ORDER BY name",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sealed).collect()
    }
}
