//! Tools: the tenant's own HTTP tools (`/v1/tools`), its MCP servers
//! (`/v1/mcp-servers`, and their tools through a live, egress-checked
//! session), and its tool settings (`/v1/tool-settings`: the tenant-level
//! tool allow list and the egress allow list). Tenant admins write; tenant
//! apps read definitions. Definitions refer to credentials by name (see
//! `/v1/secrets`): no response carries a credential.
//!
//! Changes are audited in the tenant's chain as `config.updated`, the target
//! naming what changed: `tool:<name>`, `mcp_server:<name>` or
//! `tool_settings`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_agents::TenantTools;
use bulkhead_audit::{AuditEvent, action};
use bulkhead_core::{Code, Error, McpServerId, TenantCtx, ToolId};
use bulkhead_store::{McpServerRecord, ToolRecord};
use bulkhead_tools::{AuthRef, HttpToolSpec, McpServerSpec, TenantEgress};
use bulkhead_vault::SecretKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{Created, List, ListParams, parse_id};
use crate::AppState;
use crate::auth::{TenantAdmin, TenantApp};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_tool, list_tools))
        .routes(routes!(get_tool, replace_tool, delete_tool))
        .routes(routes!(create_mcp_server, list_mcp_servers))
        .routes(routes!(get_mcp_server, delete_mcp_server))
        .routes(routes!(list_mcp_server_tools))
        .routes(routes!(get_tool_settings, set_tool_settings))
}

fn tenant_tools(state: &AppState) -> &TenantTools {
    &state.scheduler.runner().tenant_tools
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidRequest, message.into())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(Error::internal(e.to_string()))
}

// ---------------------------------------------------------------------------
// HTTP tools.

/// A tenant-defined HTTP tool, as created or replaced (OpenAPI shape; the
/// server reads it as `bulkhead_tools::HttpToolSpec`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the body; handlers read it as `HttpToolSpec`
pub struct HttpToolBody {
    /// `http` (the default, and the only kind).
    pub kind: Option<String>,
    /// 1–64 of `A-Z a-z 0-9 _ -`, unique in the tenant, not a built-in's
    /// name, not starting with `mcp__`.
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments (`"type": "object"`).
    #[schema(value_type = Object)]
    pub parameters: Value,
    /// `GET` (default), `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: Option<String>,
    /// `https://api.example.com/v1/items/{id}?q={query}`: placeholders name
    /// properties of `parameters`; the scheme, host and port are fixed.
    pub url_template: String,
    /// Fixed headers (no credentials: those go in `auth`).
    #[schema(value_type = Option<Object>)]
    pub headers: Option<Value>,
    /// `{"kind": "none" | "args_json"}` or `{"kind": "json", "template": …}`.
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    /// A credential from `/v1/secrets`:
    /// `{"secret_name": "…", "placement": {"in": "header", "name": "Authorization", "prefix": "Bearer "}}`
    /// or `{"in": "query", "name": "api_key"}`.
    #[schema(value_type = Option<Object>)]
    pub auth: Option<Value>,
}

/// A tenant's HTTP tool.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// `http`.
    pub kind: String,
    pub name: String,
    pub description: String,
    /// The definition as stored (a credential appears by name only).
    #[schema(value_type = Object)]
    pub definition: Value,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<ToolRecord> for ToolView {
    fn from(t: ToolRecord) -> Self {
        let description = t.spec["description"].as_str().unwrap_or_default().to_owned();
        Self {
            id: t.id.as_uuid(),
            kind: t.kind,
            name: t.name,
            description,
            definition: t.spec,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A tool every tenant has.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuiltinTool {
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub parameters: Value,
}

/// The built-ins, and a page of the tenant's own tools.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolList {
    /// Tools every tenant has (`http_request` reaches only the tenant's
    /// egress allow list).
    pub builtin: Vec<BuiltinTool>,
    /// The tenant's own tools, in creation order.
    pub data: Vec<ToolView>,
    pub has_more: bool,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub next_after: Option<Uuid>,
}

/// Refuses a credential reference to a secret the tenant has not stored.
async fn check_credential(state: &AppState, ctx: &TenantCtx, auth: Option<&AuthRef>) -> ApiResult<()> {
    let Some(auth) = auth else { return Ok(()) };
    let stored = state.vault.list(ctx, SecretKind::Credential).await?;
    if stored.iter().any(|s| s.name == auth.secret_name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "no credential named `{0}`: store it first with PUT /v1/secrets/{0}",
            auth.secret_name
        )))
    }
}

/// Reads and checks a tool definition.
async fn checked_tool(state: &AppState, ctx: &TenantCtx, mut body: Value) -> ApiResult<HttpToolSpec> {
    let obj = body.as_object_mut().ok_or_else(|| invalid("the tool definition must be a JSON object"))?;
    match obj.remove("kind") {
        None => {}
        Some(Value::String(k)) if k == "http" => {}
        Some(other) => return Err(invalid(format!("unknown tool kind {other}; the only kind is \"http\""))),
    }
    let spec: HttpToolSpec = serde_json::from_value(body)
        .map_err(|e| invalid(format!("not a valid HTTP tool definition: {e}")))?;
    spec.validate().map_err(Error::from)?;
    let runner = state.scheduler.runner();
    if TenantTools::is_builtin(&runner.tools, &spec.name) {
        return Err(ApiError::new(Code::Conflict, format!("`{}` is the name of a built-in tool", spec.name)));
    }
    check_credential(state, ctx, spec.auth.as_ref()).await?;
    Ok(spec)
}

fn config_event(target: String, details: Value) -> AuditEvent {
    AuditEvent::new(action::CONFIG_UPDATED, target).details(details)
}

/// Create an HTTP tool (tenant admin). Its credential, if any, must be
/// stored under `/v1/secrets` first.
#[utoipa::path(post, path = "/v1/tools", tag = "tools", security(("bearer" = [])), request_body = HttpToolBody,
    responses((status = 201, body = ToolView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_tool(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Created<ToolView>> {
    let spec = checked_tool(&state, &ctx, body).await?;
    let doc = serde_json::to_value(&spec).map_err(internal)?;
    let tool = state.store.create_tool(&ctx, &spec.name, "http", &doc).await?;
    let details = json!({"change": "created", "id": tool.id, "name": tool.name});
    state.audit.record(&ctx, config_event(format!("tool:{}", tool.name), details)).await;
    Ok((StatusCode::CREATED, Json(tool.into())))
}

/// The built-in tools and a page of the tenant's own.
#[utoipa::path(get, path = "/v1/tools", tag = "tools", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = ToolList), (status = 403, body = ErrorBody)))]
async fn list_tools(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<ToolList>> {
    let page = state.store.list_tools(&ctx, p.page()?).await?;
    let List { data, has_more, next_after } = List::from_page(page, |t| t.id.as_uuid(), ToolView::from);
    let runner = state.scheduler.runner();
    let builtin = tenant_tools(&state)
        .builtin_defs(&runner.tools)
        .into_iter()
        .map(|d| BuiltinTool { name: d.name, description: d.description, parameters: d.parameters })
        .collect();
    Ok(Json(ToolList { builtin, data, has_more, next_after }))
}

/// Show one of the tenant's tools.
#[utoipa::path(get, path = "/v1/tools/{tool_id}", tag = "tools", security(("bearer" = [])),
    params(("tool_id" = Uuid, Path)), responses((status = 200, body = ToolView), (status = 404, body = ErrorBody)))]
async fn get_tool(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ToolView>> {
    let id: ToolId = parse_id(&id, "tool")?;
    Ok(Json(state.store.get_tool(&ctx, id).await?.into()))
}

/// Replace a tool's definition (tenant admin); agents that name it by its
/// old name no longer find it if the name changes.
#[utoipa::path(put, path = "/v1/tools/{tool_id}", tag = "tools", security(("bearer" = [])),
    params(("tool_id" = Uuid, Path)), request_body = HttpToolBody,
    responses((status = 200, body = ToolView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn replace_tool(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<ToolView>> {
    let id: ToolId = parse_id(&id, "tool")?;
    // Unknown ids are 404 before the body is judged.
    state.store.get_tool(&ctx, id).await?;
    let spec = checked_tool(&state, &ctx, body).await?;
    let doc = serde_json::to_value(&spec).map_err(internal)?;
    let tool = state.store.update_tool(&ctx, id, &spec.name, &doc).await?;
    let details = json!({"change": "replaced", "id": tool.id, "name": tool.name});
    state.audit.record(&ctx, config_event(format!("tool:{}", tool.name), details)).await;
    Ok(Json(tool.into()))
}

/// Delete one of the tenant's tools (tenant admin).
#[utoipa::path(delete, path = "/v1/tools/{tool_id}", tag = "tools", security(("bearer" = [])),
    params(("tool_id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_tool(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: ToolId = parse_id(&id, "tool")?;
    let tool = state.store.get_tool(&ctx, id).await?;
    state.store.delete_tool(&ctx, id).await?;
    let details = json!({"change": "deleted", "id": tool.id, "name": tool.name});
    state.audit.record(&ctx, config_event(format!("tool:{}", tool.name), details)).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// MCP servers.

/// An MCP server to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerBody {
    /// 1–32 of `A-Z a-z 0-9 _ -` without `__`: its tools reach agents as
    /// `mcp__{name}__{tool}`.
    pub name: String,
    /// The streamable HTTP endpoint, e.g. `https://mcp.example.com/mcp`.
    pub url: String,
    /// A credential from `/v1/secrets`, sent as a header:
    /// `{"secret_name": "…", "placement": {"in": "header", "name": "Authorization", "prefix": "Bearer "}}`.
    #[schema(value_type = Option<Object>)]
    pub auth: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct McpServerView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub name: String,
    pub url: String,
    /// The credential reference (by name), if any.
    #[schema(value_type = Option<Object>)]
    pub auth: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<McpServerRecord> for McpServerView {
    fn from(s: McpServerRecord) -> Self {
        Self { id: s.id.as_uuid(), name: s.name, url: s.url, auth: s.auth, created_at: s.created_at }
    }
}

/// A tool an MCP server offers.
#[derive(Debug, Serialize, ToSchema)]
pub struct McpToolView {
    /// The name agents list and models call: `mcp__{server}__{tool}`.
    pub name: String,
    /// The server's own name for it.
    pub server_tool: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub parameters: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct McpToolList {
    pub data: Vec<McpToolView>,
}

/// Register an MCP server (tenant admin). Its URL is checked against the
/// tenant's egress policy when it is used, not here.
#[utoipa::path(post, path = "/v1/mcp-servers", tag = "tools", security(("bearer" = [])), request_body = McpServerBody,
    responses((status = 201, body = McpServerView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_mcp_server(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiJson(body): ApiJson<McpServerBody>,
) -> ApiResult<Created<McpServerView>> {
    let auth: Option<AuthRef> = body
        .auth
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| invalid(format!("`auth` is not a credential reference: {e}")))?;
    let spec = McpServerSpec { name: body.name, url: body.url, auth };
    spec.validate().map_err(Error::from)?;
    check_credential(&state, &ctx, spec.auth.as_ref()).await?;
    let auth = spec.auth.as_ref().map(serde_json::to_value).transpose().map_err(internal)?;
    let server = state.store.create_mcp_server(&ctx, &spec.name, &spec.url, auth.as_ref()).await?;
    let details = json!({"change": "created", "id": server.id, "name": server.name});
    state.audit.record(&ctx, config_event(format!("mcp_server:{}", server.name), details)).await;
    Ok((StatusCode::CREATED, Json(server.into())))
}

/// The tenant's MCP servers.
#[utoipa::path(get, path = "/v1/mcp-servers", tag = "tools", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = List<McpServerView>), (status = 403, body = ErrorBody)))]
async fn list_mcp_servers(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<List<McpServerView>>> {
    let page = state.store.list_mcp_servers(&ctx, p.page()?).await?;
    Ok(Json(List::from_page(page, |s| s.id.as_uuid(), McpServerView::from)))
}

/// Show one of the tenant's MCP servers.
#[utoipa::path(get, path = "/v1/mcp-servers/{server_id}", tag = "tools", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)), responses((status = 200, body = McpServerView), (status = 404, body = ErrorBody)))]
async fn get_mcp_server(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<McpServerView>> {
    let id: McpServerId = parse_id(&id, "MCP server")?;
    Ok(Json(state.store.get_mcp_server(&ctx, id).await?.into()))
}

/// Remove an MCP server (tenant admin).
#[utoipa::path(delete, path = "/v1/mcp-servers/{server_id}", tag = "tools", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_mcp_server(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: McpServerId = parse_id(&id, "MCP server")?;
    let server = state.store.get_mcp_server(&ctx, id).await?;
    state.store.delete_mcp_server(&ctx, id).await?;
    let details = json!({"change": "deleted", "id": server.id, "name": server.name});
    state.audit.record(&ctx, config_event(format!("mcp_server:{}", server.name), details)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The tools an MCP server offers now, asked through a session under the
/// tenant's egress policy (403 `egress_denied` if the policy refuses its
/// address; 503 `unavailable` if it does not answer).
#[utoipa::path(get, path = "/v1/mcp-servers/{server_id}/tools", tag = "tools", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)),
    responses((status = 200, body = McpToolList), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_mcp_server_tools(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<McpToolList>> {
    let id: McpServerId = parse_id(&id, "MCP server")?;
    let server = state.store.get_mcp_server(&ctx, id).await?;
    let tools = tenant_tools(&state);
    let policy = tools.policy(&ctx).await?;
    let conn = tools.connect_mcp(&ctx, &server, &policy).await.map_err(Error::from)?;
    let listed = conn.list_tools(&ctx).await.map_err(Error::from);
    conn.close().await;
    let data = listed?
        .into_iter()
        .map(|t| McpToolView {
            name: t.schema.name,
            server_tool: t.name,
            description: t.schema.description,
            parameters: t.schema.parameters,
        })
        .collect();
    Ok(Json(McpToolList { data }))
}

// ---------------------------------------------------------------------------
// Tool settings.

/// The tenant's tool settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSettingsBody {
    /// Tools the tenant's agents may call at all — names, or prefixes
    /// ending in `*` (`mcp__github__*`); `null`: any of its tools. An agent
    /// still calls only the tools its spec lists.
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// Where the tenant's tools may connect: `{"allow": ["api.example.com",
    /// "*.example.com:443,8443", "*"], "max_response_bytes": …, "timeout_ms": …}`.
    /// Empty: nowhere. Loopback, private and link-local addresses stay
    /// closed unless the operator excepts them (`tools.egress_exceptions`);
    /// metadata addresses always do.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub egress: Value,
    /// When they were last set (read-only).
    #[serde(default, skip_deserializing, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<OffsetDateTime>,
}

/// The tenant's tool allow list and egress allow list (tenant admin).
#[utoipa::path(get, path = "/v1/tool-settings", tag = "tools", security(("bearer" = [])),
    responses((status = 200, body = ToolSettingsBody), (status = 403, body = ErrorBody)))]
async fn get_tool_settings(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
) -> ApiResult<Json<ToolSettingsBody>> {
    let s = state.store.tool_settings(&ctx).await?;
    Ok(Json(ToolSettingsBody { allowed_tools: s.allowed_tools, egress: s.egress, updated_at: s.updated_at }))
}

/// Replace the tenant's tool allow list and egress allow list (tenant admin).
#[utoipa::path(put, path = "/v1/tool-settings", tag = "tools", security(("bearer" = [])), request_body = ToolSettingsBody,
    responses((status = 200, body = ToolSettingsBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn set_tool_settings(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiJson(body): ApiJson<ToolSettingsBody>,
) -> ApiResult<Json<ToolSettingsBody>> {
    let raw = if body.egress.is_null() { json!({}) } else { body.egress };
    let egress: TenantEgress =
        serde_json::from_value(raw).map_err(|e| invalid(format!("`egress` is not valid: {e}")))?;
    if egress.max_response_bytes == Some(0) || egress.timeout_ms == Some(0) {
        return Err(invalid("`egress.max_response_bytes` and `egress.timeout_ms` must be above 0"));
    }
    let egress = serde_json::to_value(&egress).map_err(internal)?;
    let s = state.store.set_tool_settings(&ctx, body.allowed_tools.as_deref(), &egress).await?;
    let details = json!({"allowed_tools": s.allowed_tools, "egress": s.egress});
    state.audit.record(&ctx, config_event("tool_settings".into(), details)).await;
    Ok(Json(ToolSettingsBody { allowed_tools: s.allowed_tools, egress: s.egress, updated_at: s.updated_at }))
}
