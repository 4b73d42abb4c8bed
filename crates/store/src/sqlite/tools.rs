//! Tools, MCP servers and tool settings on SQLite. No row-level security
//! here: every query binds `ctx.tenant_id()`. Each write is one statement,
//! so SQLite's write lock is all the serialization it needs.

use async_trait::async_trait;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{McpServerId, TenantCtx, ToolId};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};

use super::{SqliteStore, after_cursor, decode, now};
use crate::agents::validate_document;
use crate::error::classify;
use crate::tools::*;
use crate::usage::{from_micros, to_micros};
use crate::{Result, StoreError};

const TOOL_COLS: &str = "id, name, kind, spec, created_at, updated_at";
const MCP_COLS: &str = "id, name, url, auth, created_at, updated_at";

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))
}

fn tool_from_row(row: &SqliteRow) -> Result<ToolRecord> {
    Ok(ToolRecord {
        id: decode(row.try_get::<&str, _>("id")?)?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        spec: json(row.try_get("spec")?)?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

fn mcp_from_row(row: &SqliteRow) -> Result<McpServerRecord> {
    Ok(McpServerRecord {
        id: decode(row.try_get::<&str, _>("id")?)?,
        name: row.try_get("name")?,
        url: row.try_get("url")?,
        auth: row.try_get::<Option<&str>, _>("auth")?.map(json).transpose()?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

fn tool_conflict(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a tool named {name:?} already exists")
}

#[async_trait]
impl ToolStore for SqliteStore {
    async fn create_tool(&self, ctx: &TenantCtx, name: &str, kind: &str, spec: &Value) -> Result<ToolRecord> {
        validate_tool_name(name)?;
        validate_tool_kind(kind)?;
        validate_document("spec", spec)?;
        let at = to_micros(now());
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO tools (id, tenant_id, name, kind, spec, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING {TOOL_COLS}"
        )))
        .bind(ToolId::new().to_string())
        .bind(ctx.tenant_id().to_string())
        .bind(name)
        .bind(kind)
        .bind(spec.to_string())
        .bind(at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify(e, tool_conflict(name), "tenant"))?;
        tool_from_row(&row)
    }

    async fn list_tools(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<ToolRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOOL_COLS} FROM tools WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.read)
        .await?;
        let items = rows.iter().map(tool_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_tool(&self, ctx: &TenantCtx, id: ToolId) -> Result<ToolRecord> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOOL_COLS} FROM tools WHERE tenant_id = ? AND id = ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?
        .ok_or(StoreError::NotFound("tool"))?;
        tool_from_row(&row)
    }

    async fn find_tool(&self, ctx: &TenantCtx, name: &str) -> Result<Option<ToolRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOOL_COLS} FROM tools WHERE tenant_id = ? AND name = ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(tool_from_row).transpose()
    }

    async fn update_tool(&self, ctx: &TenantCtx, id: ToolId, name: &str, spec: &Value) -> Result<ToolRecord> {
        validate_tool_name(name)?;
        validate_document("spec", spec)?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tools SET name = ?, spec = ?, updated_at = ? WHERE tenant_id = ? AND id = ?
             RETURNING {TOOL_COLS}"
        )))
        .bind(name)
        .bind(spec.to_string())
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify(e, tool_conflict(name), "tenant"))?
        .ok_or(StoreError::NotFound("tool"))?;
        tool_from_row(&row)
    }

    async fn delete_tool(&self, ctx: &TenantCtx, id: ToolId) -> Result<()> {
        let done = sqlx::query("DELETE FROM tools WHERE tenant_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("tool"));
        }
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
        let at = to_micros(now());
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO mcp_servers (id, tenant_id, name, url, auth, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING {MCP_COLS}"
        )))
        .bind(McpServerId::new().to_string())
        .bind(ctx.tenant_id().to_string())
        .bind(name)
        .bind(url)
        .bind(auth.map(Value::to_string))
        .bind(at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify(e, || format!("an MCP server named {name:?} already exists"), "tenant"))?;
        mcp_from_row(&row)
    }

    async fn list_mcp_servers(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<McpServerRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MCP_COLS} FROM mcp_servers WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.read)
        .await?;
        let items = rows.iter().map(mcp_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_mcp_server(&self, ctx: &TenantCtx, id: McpServerId) -> Result<McpServerRecord> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MCP_COLS} FROM mcp_servers WHERE tenant_id = ? AND id = ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?
        .ok_or(StoreError::NotFound("MCP server"))?;
        mcp_from_row(&row)
    }

    async fn find_mcp_server(&self, ctx: &TenantCtx, name: &str) -> Result<Option<McpServerRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MCP_COLS} FROM mcp_servers WHERE tenant_id = ? AND name = ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(mcp_from_row).transpose()
    }

    async fn delete_mcp_server(&self, ctx: &TenantCtx, id: McpServerId) -> Result<()> {
        let done = sqlx::query("DELETE FROM mcp_servers WHERE tenant_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("MCP server"));
        }
        Ok(())
    }

    async fn tool_settings(&self, ctx: &TenantCtx) -> Result<ToolSettings> {
        let row: Option<(Option<String>, String, i64)> =
            sqlx::query_as("SELECT allowed_tools, egress, updated_at FROM tool_settings WHERE tenant_id = ?")
                .bind(ctx.tenant_id().to_string())
                .fetch_optional(&self.read)
                .await?;
        let Some((allowed, egress, at)) = row else {
            return Ok(ToolSettings { allowed_tools: None, egress: serde_json::json!({}), updated_at: None });
        };
        let allowed_tools = allowed
            .map(|a| serde_json::from_str(&a).map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e)))))
            .transpose()?;
        Ok(ToolSettings { allowed_tools, egress: json(&egress)?, updated_at: Some(from_micros(at)) })
    }

    async fn set_tool_settings(
        &self,
        ctx: &TenantCtx,
        allowed_tools: Option<&[String]>,
        egress: &Value,
    ) -> Result<ToolSettings> {
        validate_tool_settings(allowed_tools, egress)?;
        let at = now();
        let allowed = allowed_tools.map(|a| serde_json::to_string(a).expect("strings serialize"));
        sqlx::query(
            "INSERT INTO tool_settings (tenant_id, allowed_tools, egress, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (tenant_id) DO UPDATE SET
                allowed_tools = excluded.allowed_tools, egress = excluded.egress, updated_at = excluded.updated_at",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(allowed)
        .bind(egress.to_string())
        .bind(to_micros(at))
        .execute(&self.pool)
        .await
        .map_err(|e| classify(e, String::new, "tenant"))?;
        Ok(ToolSettings {
            allowed_tools: allowed_tools.map(<[String]>::to_vec),
            egress: egress.clone(),
            updated_at: Some(at),
        })
    }
}
