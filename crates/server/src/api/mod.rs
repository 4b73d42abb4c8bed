//! The HTTP resources, their JSON shapes and their OpenAPI description.

use axum::http::StatusCode;
use bulkhead_core::Code;
use bulkhead_core::page::{Page, PageReq};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

pub mod agents;
pub mod audit;
pub mod billing;
pub mod health;
pub mod keys;
pub mod knowledge;
pub mod model_config;
pub mod openai;
pub mod overview;
pub mod sandbox;
pub mod secrets;
pub mod tenants;
pub mod tools;
pub mod usage;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulkhead",
        description = "Multi-tenant AI agent platform. Every call except the health probes and this \
                       document needs `Authorization: Bearer <key>`. Errors are \
                       `{\"error\": {\"code\", \"message\", \"details\"}}` with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "tenants", description = "Operator: tenants and their keys"),
        (name = "operator", description = "Operator keys"),
        (name = "tenant", description = "A tenant's view of itself, its keys, budget and limits"),
        (name = "usage", description = "Usage, cost, export and ingestion"),
        (name = "openai", description = "OpenAI-compatible endpoints for tenant apps"),
        (name = "agents", description = "Agent definitions (versioned)"),
        (name = "threads", description = "Conversation threads and messages"),
        (name = "runs", description = "Agent runs: queued, executed, streamed"),
        (name = "audit", description = "The tamper-evident audit log: entries and verification"),
        (name = "knowledge", description = "Knowledge bases: documents, ingestion, hybrid search"),
        (name = "tools", description = "Tenant HTTP tools, MCP servers, tool and egress allow lists"),
        (name = "secrets", description = "Tool credentials in the vault: write-only"),
        (name = "sandbox", description = "Code execution in an isolated sandbox"),
        (name = "cells", description = "Operator: cells (deployments) serving dedicated tenants"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every authenticated route; `lib.rs` puts the auth layer on top.
pub fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(tenants::routes())
        .merge(keys::routes())
        .merge(usage::routes())
        .merge(billing::routes())
        .merge(model_config::routes())
        .merge(openai::routes())
        .merge(agents::routes())
        .merge(audit::routes())
        .merge(knowledge::routes())
        .merge(tools::routes())
        .merge(secrets::routes())
        .merge(sandbox::routes())
        .merge(overview::routes())
        .merge(crate::cells::routes())
}

pub async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such route; see /openapi.json")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(Code::MethodNotAllowed, "method not allowed on this route; see /openapi.json")
}

/// `limit` and `after` on every list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1–500 (default 50).
    pub limit: Option<u32>,
    /// The `next_after` of the previous page.
    pub after: Option<Uuid>,
}

impl ListParams {
    pub fn page(&self) -> ApiResult<PageReq> {
        Ok(PageReq::new(self.limit, self.after)?)
    }
}

/// A page of a list, in creation order.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    pub data: Vec<T>,
    pub has_more: bool,
    /// Pass as `after` to get the next page.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub next_after: Option<Uuid>,
}

impl<T: ToSchema> List<T> {
    pub fn from_page<S>(page: Page<S>, id: impl Fn(&S) -> Uuid, view: impl Fn(S) -> T) -> Self {
        let next_after = if page.has_more { page.items.last().map(&id) } else { None };
        Self { data: page.items.into_iter().map(view).collect(), has_more: page.has_more, next_after }
    }
}

/// Parses an id from a path; a malformed id is simply not found.
pub fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> ApiResult<T> {
    raw.parse().map_err(|_| ApiError::new(Code::NotFound, format!("{what} not found")))
}

pub type Created<T> = (StatusCode, axum::Json<T>);
