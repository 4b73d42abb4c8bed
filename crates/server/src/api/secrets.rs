//! `/v1/secrets`: the tenant's tool credentials (vault kind `credential`),
//! write-only. `PUT` creates or rotates one, `DELETE` removes it, `GET`
//! lists names and dates — never a value, not even masked. Tool definitions
//! and MCP servers refer to a credential by name; the server reveals it only
//! into the outgoing request. Changes are audited as `secret.put` /
//! `secret.deleted`, by name only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_audit::{AuditEvent, action};
use bulkhead_core::Code;
use bulkhead_vault::{SecretInfo, SecretKind};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::TenantAdmin;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_secrets)).routes(routes!(put_secret, delete_secret))
}

/// A stored credential: its name and dates, never its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the value was last set (rotated).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<SecretInfo> for SecretView {
    fn from(s: SecretInfo) -> Self {
        Self { name: s.name, created_at: s.created_at, updated_at: s.updated_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretList {
    /// By name.
    pub data: Vec<SecretView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The credential (1 byte to 16 KiB); stored encrypted, never returned.
    pub value: String,
}

impl std::fmt::Debug for PutSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PutSecret { value: <redacted> }")
    }
}

/// The tenant's tool credentials (names and dates only).
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", security(("bearer" = [])),
    responses((status = 200, body = SecretList), (status = 403, body = ErrorBody)))]
async fn list_secrets(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
) -> ApiResult<Json<SecretList>> {
    let data =
        state.vault.list(&ctx, SecretKind::Credential).await?.into_iter().map(SecretView::from).collect();
    Ok(Json(SecretList { data }))
}

/// Store (or rotate) a tool credential. Names are 1–100 letters, digits,
/// `-`, `_` or `.`; tools and MCP servers refer to them in `auth`.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = PutSecret,
    responses((status = 200, body = SecretView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn put_secret(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutSecret>,
) -> ApiResult<Json<SecretView>> {
    let info = state.vault.put(&ctx, SecretKind::Credential, &name, &body.value).await?;
    tracing::info!(tenant = %ctx.tenant_id(), secret = %name, "tool credential stored");
    state.audit.record(&ctx, secret_event(action::SECRET_PUT, &name)).await;
    Ok(Json(info.into()))
}

/// Delete a tool credential. Tools that refer to it fail until it is
/// stored again.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_secret(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if state.vault.delete(&ctx, SecretKind::Credential, &name).await? {
        tracing::info!(tenant = %ctx.tenant_id(), secret = %name, "tool credential deleted");
        state.audit.record(&ctx, secret_event(action::SECRET_DELETED, &name)).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(Code::NotFound, "no credential of that name"))
    }
}

/// An audit event about a credential: its name, never its value.
fn secret_event(name: &str, secret: &str) -> AuditEvent {
    AuditEvent::new(name, format!("secret:{secret}"))
        .details(serde_json::json!({"kind": "credential", "name": secret}))
}
