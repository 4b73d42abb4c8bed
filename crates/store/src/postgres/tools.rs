//! Tools, MCP servers and tool settings on PostgreSQL, under row-level
//! security: everything runs in `tenant_tx`, and queries still bind the
//! tenant.

use async_trait::async_trait;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{McpServerId, TenantCtx, ToolId};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use super::PgStore;
use crate::agents::validate_document;
use crate::error::classify;
use crate::sqlite::now;
use crate::tools::*;
use crate::usage::{from_micros, to_micros};
use crate::{Result, StoreError};

const TOOL_COLS: &str = "id, name, kind, spec, created_at, updated_at";
const MCP_COLS: &str = "id, name, url, auth, created_at, updated_at";

fn tool_from_row(row: &PgRow) -> Result<ToolRecord> {
    Ok(ToolRecord {
        id: ToolId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        spec: row.try_get("spec")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

fn mcp_from_row(row: &PgRow) -> Result<McpServerRecord> {
    Ok(McpServerRecord {
        id: McpServerId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        url: row.try_get("url")?,
        auth: row.try_get("auth")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

fn tool_conflict(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a tool named {name:?} already exists")
}

#[async_trait]
impl ToolStore for PgStore {
    async fn create_tool(&self, ctx: &TenantCtx, name: &str, kind: &str, spec: &Value) -> Result<ToolRecord> {
        validate_tool_name(name)?;
        validate_tool_kind(kind)?;
        validate_document("spec", spec)?;
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO tools (id, tenant_id, name, kind, spec, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {TOOL_COLS}"
        )))
        .bind(ToolId::new().as_uuid())
        .bind(ctx.tenant_id().as_uuid())
        .bind(name)
        .bind(kind)
        .bind(spec)
        .bind(to_micros(now()))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| classify(e, tool_conflict(name), "tenant"))?;
        tx.commit().await?;
        tool_from_row(&row)
    }

    async fn list_tools(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<ToolRecord>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOOL_COLS} FROM tools WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let items = rows.iter().map(tool_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_tool(&self, ctx: &TenantCtx, id: ToolId) -> Result<ToolRecord> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOOL_COLS} FROM tools WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("tool"))?;
        tx.commit().await?;
        tool_from_row(&row)
    }

    async fn find_tool(&self, ctx: &TenantCtx, name: &str) -> Result<Option<ToolRecord>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOOL_COLS} FROM tools WHERE tenant_id = $1 AND name = $2"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(tool_from_row).transpose()
    }

    async fn update_tool(&self, ctx: &TenantCtx, id: ToolId, name: &str, spec: &Value) -> Result<ToolRecord> {
        validate_tool_name(name)?;
        validate_document("spec", spec)?;
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tools SET name = $1, spec = $2, updated_at = $3 WHERE tenant_id = $4 AND id = $5
             RETURNING {TOOL_COLS}"
        )))
        .bind(name)
        .bind(spec)
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| classify(e, tool_conflict(name), "tenant"))?
        .ok_or(StoreError::NotFound("tool"))?;
        tx.commit().await?;
        tool_from_row(&row)
    }

    async fn delete_tool(&self, ctx: &TenantCtx, id: ToolId) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        let done = sqlx::query("DELETE FROM tools WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id().as_uuid())
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("tool"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_mcp_server(
        &self,
        ctx: &TenantCtx,
        name: &str,
        url: &str,
        auth: Option<&Value>,
    ) -> Result<McpServerRecord> {
        validate_mcp_server(name, url, auth)?;
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO mcp_servers (id, tenant_id, name, url, auth, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {MCP_COLS}"
        )))
        .bind(McpServerId::new().as_uuid())
        .bind(ctx.tenant_id().as_uuid())
        .bind(name)
        .bind(url)
        .bind(auth)
        .bind(to_micros(now()))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| classify(e, || format!("an MCP server named {name:?} already exists"), "tenant"))?;
        tx.commit().await?;
        mcp_from_row(&row)
    }

    async fn list_mcp_servers(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<McpServerRecord>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MCP_COLS} FROM mcp_servers WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let items = rows.iter().map(mcp_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_mcp_server(&self, ctx: &TenantCtx, id: McpServerId) -> Result<McpServerRecord> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MCP_COLS} FROM mcp_servers WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("MCP server"))?;
        tx.commit().await?;
        mcp_from_row(&row)
    }

    async fn find_mcp_server(&self, ctx: &TenantCtx, name: &str) -> Result<Option<McpServerRecord>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MCP_COLS} FROM mcp_servers WHERE tenant_id = $1 AND name = $2"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(mcp_from_row).transpose()
    }

    async fn delete_mcp_server(&self, ctx: &TenantCtx, id: McpServerId) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        let done = sqlx::query("DELETE FROM mcp_servers WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id().as_uuid())
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("MCP server"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn tool_settings(&self, ctx: &TenantCtx) -> Result<ToolSettings> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row: Option<(Option<Value>, Value, i64)> = sqlx::query_as(
            "SELECT allowed_tools, egress, updated_at FROM tool_settings WHERE tenant_id = $1",
        )
        .bind(ctx.tenant_id().as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some((allowed, egress, at)) = row else {
            return Ok(ToolSettings { allowed_tools: None, egress: serde_json::json!({}), updated_at: None });
        };
        let allowed_tools = allowed
            .map(|a| serde_json::from_value(a).map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e)))))
            .transpose()?;
        Ok(ToolSettings { allowed_tools, egress, updated_at: Some(from_micros(at)) })
    }

    async fn set_tool_settings(
        &self,
        ctx: &TenantCtx,
        allowed_tools: Option<&[String]>,
        egress: &Value,
    ) -> Result<ToolSettings> {
        validate_tool_settings(allowed_tools, egress)?;
        let at = now();
        let allowed = allowed_tools.map(|a| serde_json::json!(a));
        let mut tx = self.tenant_tx(ctx).await?;
        sqlx::query(
            "INSERT INTO tool_settings (tenant_id, allowed_tools, egress, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id) DO UPDATE SET
                allowed_tools = excluded.allowed_tools, egress = excluded.egress, updated_at = excluded.updated_at",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(allowed)
        .bind(egress)
        .bind(to_micros(at))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, String::new, "tenant"))?;
        tx.commit().await?;
        Ok(ToolSettings {
            allowed_tools: allowed_tools.map(<[String]>::to_vec),
            egress: egress.clone(),
            updated_at: Some(at),
        })
    }
}
