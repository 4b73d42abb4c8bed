//! Vault storage on PostgreSQL (under row-level security): wrapped data
//! keys and sealed secrets.

use async_trait::async_trait;
use bulkhead_core::TenantCtx;
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::PgStore;
use crate::usage::{from_micros, to_micros};
use crate::{Result, SealedSecret, SecretStore};

fn sealed(row: &PgRow) -> Result<SealedSecret> {
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
impl SecretStore for PgStore {
    async fn data_key(&self, ctx: &TenantCtx) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query_as("SELECT wrapped, nonce FROM tenant_data_keys WHERE tenant_id = $1")
            .bind(ctx.tenant_id().as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn insert_data_key(
        &self,
        ctx: &TenantCtx,
        wrapped: &[u8],
        nonce: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut tx = self.tenant_tx(ctx).await?;
        sqlx::query(
            "INSERT INTO tenant_data_keys (tenant_id, wrapped, nonce, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(wrapped)
        .bind(nonce)
        .bind(to_micros(OffsetDateTime::now_utc()))
        .execute(&mut *tx)
        .await
        .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
        let row: (Vec<u8>, Vec<u8>) =
            sqlx::query_as("SELECT wrapped, nonce FROM tenant_data_keys WHERE tenant_id = $1")
                .bind(ctx.tenant_id().as_uuid())
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(row)
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
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(
            "INSERT INTO secrets (tenant_id, kind, name, ciphertext, nonce, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (tenant_id, kind, name) DO UPDATE SET
                ciphertext = excluded.ciphertext, nonce = excluded.nonce, updated_at = excluded.updated_at
             RETURNING kind, name, ciphertext, nonce, created_at, updated_at",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(kind)
        .bind(name)
        .bind(ciphertext)
        .bind(nonce)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
        tx.commit().await?;
        sealed(&row)
    }

    async fn get_secret(&self, ctx: &TenantCtx, kind: &str, name: &str) -> Result<Option<SealedSecret>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(
            "SELECT kind, name, ciphertext, nonce, created_at, updated_at FROM secrets
             WHERE tenant_id = $1 AND kind = $2 AND name = $3",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(kind)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(sealed).transpose()
    }

    async fn delete_secret(&self, ctx: &TenantCtx, kind: &str, name: &str) -> Result<bool> {
        let mut tx = self.tenant_tx(ctx).await?;
        let done = sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND kind = $2 AND name = $3")
            .bind(ctx.tenant_id().as_uuid())
            .bind(kind)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_secrets(&self, ctx: &TenantCtx, kind: &str) -> Result<Vec<SealedSecret>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(
            "SELECT kind, name, ciphertext, nonce, created_at, updated_at FROM secrets
             WHERE tenant_id = $1 AND kind = $2 ORDER BY name",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(kind)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(sealed).collect()
    }
}
