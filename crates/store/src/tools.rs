//! Tools as stored: a tenant's own HTTP tools, its MCP servers, and its
//! tool settings (the tenant-level allow list and the egress allow list).
//! The shapes of a tool spec, an MCP credential reference and the egress
//! settings belong to `bulkhead-tools`; here they are JSON documents,
//! checked only for size and kind. What is written is validated here,
//! before either backend touches it.
//!
//! Invariants: names are unique per tenant (a tool and an MCP server may
//! share one: MCP tools reach models as `mcp__{server}__{tool}`); nothing
//! here holds a credential — an MCP server's `auth` and a tool spec's
//! `auth` name a vault secret, never its value.

use async_trait::async_trait;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{McpServerId, TenantCtx, ToolId};
use serde_json::Value;
use time::OffsetDateTime;

use crate::agents::validate_document;
use crate::{Result, StoreError};

/// Kinds of tenant-defined tools.
pub const TOOL_KINDS: [&str; 1] = ["http"];
/// Longest MCP server URL.
pub const MAX_URL_BYTES: usize = 2048;
/// Most entries in a tenant's tool allow list.
pub const MAX_ALLOWED_TOOLS: usize = 1000;

/// A tenant-defined tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRecord {
    pub id: ToolId,
    /// Unique per tenant; the name models call it by.
    pub name: String,
    /// `http`.
    pub kind: String,
    /// The tool's definition (for `http`: a `bulkhead_tools::HttpToolSpec`).
    pub spec: Value,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A tenant's MCP server.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerRecord {
    pub id: McpServerId,
    /// Unique per tenant; the `{server}` of `mcp__{server}__{tool}`.
    pub name: String,
    pub url: String,
    /// A credential reference (`bulkhead_tools::AuthRef`), or none.
    pub auth: Option<Value>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A tenant's tool settings; the defaults until its admin sets them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolSettings {
    /// Tools the tenant's agents may call at all (names, or `prefix*`);
    /// `None`: any tool the tenant has.
    pub allowed_tools: Option<Vec<String>>,
    /// The egress settings (`bulkhead_tools::TenantEgress`); `{}` allows
    /// no host.
    pub egress: Value,
    /// When they were last set; `None` if never.
    pub updated_at: Option<OffsetDateTime>,
}

/// Tool names: 1–64 ASCII letters, digits, `_` or `-` (what model APIs
/// accept).
pub fn validate_tool_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("invalid tool name {name:?}: use 1-64 letters, digits, '_' or '-'")))
    }
}

/// MCP server names: 1–32 ASCII letters, digits, `_` or `-`, without `__`
/// (the separator of exposed tool names).
pub fn validate_mcp_server_name(name: &str) -> Result<()> {
    let ok = (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        && !name.contains("__");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid MCP server name {name:?}: use 1-32 letters, digits, '_' or '-', without '__'"
        )))
    }
}

pub fn validate_tool_kind(kind: &str) -> Result<()> {
    if TOOL_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("unknown tool kind {kind:?}; use http")))
    }
}

pub fn validate_mcp_server(name: &str, url: &str, auth: Option<&Value>) -> Result<()> {
    validate_mcp_server_name(name)?;
    if url.is_empty() || url.len() > MAX_URL_BYTES || url.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!("url must be 1-{MAX_URL_BYTES} printable bytes")));
    }
    if let Some(auth) = auth {
        validate_document("auth", auth)?;
    }
    Ok(())
}

/// The allow list: at most [`MAX_ALLOWED_TOOLS`] entries of 1–100
/// printable characters; the egress settings: a JSON object.
pub fn validate_tool_settings(allowed_tools: Option<&[String]>, egress: &Value) -> Result<()> {
    if let Some(list) = allowed_tools {
        if list.len() > MAX_ALLOWED_TOOLS {
            return Err(StoreError::Invalid(format!(
                "allowed_tools may hold at most {MAX_ALLOWED_TOOLS} entries"
            )));
        }
        if let Some(bad) =
            list.iter().find(|t| t.is_empty() || t.len() > 100 || t.chars().any(|c| c.is_control()))
        {
            return Err(StoreError::Invalid(format!(
                "allowed_tools entry {bad:?} must be 1-100 printable characters"
            )));
        }
    }
    validate_document("egress", egress)
}

/// A tenant's tools, MCP servers and tool settings.
#[async_trait]
pub trait ToolStore: Send + Sync {
    /// `Conflict` if the tenant has a tool of that name.
    async fn create_tool(&self, ctx: &TenantCtx, name: &str, kind: &str, spec: &Value) -> Result<ToolRecord>;
    async fn list_tools(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<ToolRecord>>;
    async fn get_tool(&self, ctx: &TenantCtx, id: ToolId) -> Result<ToolRecord>;
    /// The tenant's tool of this name, if any.
    async fn find_tool(&self, ctx: &TenantCtx, name: &str) -> Result<Option<ToolRecord>>;
    /// Replaces a tool's name and spec (its kind stays).
    async fn update_tool(&self, ctx: &TenantCtx, id: ToolId, name: &str, spec: &Value) -> Result<ToolRecord>;
    async fn delete_tool(&self, ctx: &TenantCtx, id: ToolId) -> Result<()>;

    /// `Conflict` if the tenant has an MCP server of that name.
    async fn create_mcp_server(
        &self,
        ctx: &TenantCtx,
        name: &str,
        url: &str,
        auth: Option<&Value>,
    ) -> Result<McpServerRecord>;
    async fn list_mcp_servers(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<McpServerRecord>>;
    async fn get_mcp_server(&self, ctx: &TenantCtx, id: McpServerId) -> Result<McpServerRecord>;
    /// The tenant's MCP server of this name, if any.
    async fn find_mcp_server(&self, ctx: &TenantCtx, name: &str) -> Result<Option<McpServerRecord>>;
    async fn delete_mcp_server(&self, ctx: &TenantCtx, id: McpServerId) -> Result<()>;

    /// The tenant's tool settings (defaults if never set).
    async fn tool_settings(&self, ctx: &TenantCtx) -> Result<ToolSettings>;
    /// Replaces the tenant's tool settings.
    async fn set_tool_settings(
        &self,
        ctx: &TenantCtx,
        allowed_tools: Option<&[String]>,
        egress: &Value,
    ) -> Result<ToolSettings>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_kinds_and_settings_are_checked() {
        for ok in ["lookup", "get_item-2", &"x".repeat(64)] {
            assert!(validate_tool_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a.b", "ü", &"x".repeat(65)] {
            assert!(validate_tool_name(bad).is_err(), "{bad}");
        }
        assert!(validate_mcp_server_name("github").is_ok());
        for bad in ["", "a__b", "a/b", &"x".repeat(33)] {
            assert!(validate_mcp_server_name(bad).is_err(), "{bad}");
        }
        assert!(validate_tool_kind("http").is_ok());
        assert!(validate_tool_kind("shell").is_err());
        assert!(validate_mcp_server("m", "https://x.test/mcp", Some(&json!({"secret_name": "k"}))).is_ok());
        assert!(validate_mcp_server("m", "", None).is_err());
        assert!(validate_mcp_server("m", "https://x.test/\n", None).is_err());
        assert!(validate_mcp_server("m", "https://x.test/", Some(&json!("k"))).is_err());
        assert!(validate_tool_settings(None, &json!({})).is_ok());
        assert!(validate_tool_settings(Some(&["a".into(), "mcp__gh__*".into()]), &json!({})).is_ok());
        assert!(validate_tool_settings(Some(&["".into()]), &json!({})).is_err());
        assert!(validate_tool_settings(None, &json!([])).is_err());
        let many: Vec<String> = (0..=MAX_ALLOWED_TOOLS).map(|i| format!("t{i}")).collect();
        assert!(validate_tool_settings(Some(&many), &json!({})).is_err());
    }
}
