//! API keys: a tenant admin's own keys (`/v1/keys`), the operator's view of
//! a tenant's keys (`/v1/tenants/{id}/keys`), and operator keys
//! (`/v1/operator-keys`). A key's secret appears in exactly one response:
//! the one that creates it. Creation and revocation are audited — tenant
//! keys in the tenant's chain, operator keys in the platform's — by id,
//! name and visible prefix, never the secret.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_audit::{AuditEvent, action};
use bulkhead_core::keys::{self, KeyKind};
use bulkhead_core::tenancy::Scope;
use bulkhead_core::{KeyId, OperatorCtx, TenantCtx, TenantId};
use bulkhead_store::ApiKey;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Created, List, ListParams, parse_id};
use crate::AppState;
use crate::auth::{Operator, TenantAdmin};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    #[schema(value_type = String, format = Uuid)]
    pub id: KeyId,
    /// `null` for operator keys.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub tenant_id: Option<TenantId>,
    pub name: String,
    /// The visible start of the key, e.g. `bh_tk_3f9a1c2b7d4e`.
    pub prefix: String,
    /// `null` for operator keys.
    pub scope: Option<Scope>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
    /// Refreshed at most once a minute.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            tenant_id: k.tenant_id,
            name: k.name,
            prefix: k.prefix,
            scope: k.scope,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// A key just created: the only response that carries its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The whole key. Store it now: it is not shown again.
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label for people, 1–100 characters.
    pub name: String,
    /// Tenant keys only; defaults to `tenant_app`.
    #[serde(default)]
    pub scope: Option<Scope>,
    /// Optional expiry (RFC 3339), in the future.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
}

impl CreateKey {
    fn checked_expiry(&self) -> ApiResult<Option<OffsetDateTime>> {
        match self.expires_at {
            Some(at) if at <= OffsetDateTime::now_utc() => {
                Err(ApiError::new(bulkhead_core::Code::InvalidRequest, "expires_at must be in the future"))
            }
            other => Ok(other),
        }
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_own_key, list_own_keys))
        .routes(routes!(get_own_key, revoke_own_key))
        .routes(routes!(create_tenant_key, list_tenant_keys))
        .routes(routes!(revoke_tenant_key))
        .routes(routes!(create_operator_key, list_operator_keys))
        .routes(routes!(revoke_operator_key))
}

fn key_list(page: bulkhead_core::page::Page<ApiKey>) -> List<KeyView> {
    List::from_page(page, |k| k.id.as_uuid(), KeyView::from)
}

/// An audit event about a key: what identifies it, nothing that opens it.
fn key_event(name: &str, key: &ApiKey) -> AuditEvent {
    let expires_at =
        key.expires_at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok());
    AuditEvent::new(name, format!("key:{}", key.id)).details(serde_json::json!({
        "name": key.name,
        "prefix": key.prefix,
        "scope": key.scope.map(|s| s.as_str()),
        "expires_at": expires_at,
    }))
}

async fn create_for(state: &AppState, ctx: &TenantCtx, body: CreateKey) -> ApiResult<Created<CreatedKey>> {
    let expires_at = body.checked_expiry()?;
    let scope = body.scope.unwrap_or(Scope::TenantApp);
    let new = keys::generate(KeyKind::Tenant);
    let key = state.store.create_tenant_key(ctx, &body.name, scope, &new, expires_at).await?;
    tracing::info!(key = %key.id, prefix = %key.prefix, scope = scope.as_str(), "tenant key created");
    state.audit.record(ctx, key_event(action::KEY_CREATED, &key)).await;
    Ok((StatusCode::CREATED, Json(CreatedKey { key: key.into(), secret: new.secret })))
}

/// Create a key for the caller's tenant (tenant admin).
#[utoipa::path(post, path = "/v1/keys", tag = "tenant", security(("bearer" = [])),
    request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_own_key(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<Created<CreatedKey>> {
    create_for(&state, &ctx, body).await
}

/// List the caller's tenant's keys.
#[utoipa::path(get, path = "/v1/keys", tag = "tenant", security(("bearer" = [])),
    params(ListParams), responses((status = 200, body = List<KeyView>), (status = 403, body = ErrorBody)))]
async fn list_own_keys(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<List<KeyView>>> {
    Ok(Json(key_list(state.store.list_tenant_keys(&ctx, params.page()?).await?)))
}

/// Show one of the caller's tenant's keys.
#[utoipa::path(get, path = "/v1/keys/{key_id}", tag = "tenant", security(("bearer" = [])),
    params(("key_id" = Uuid, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)))]
async fn get_own_key(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyView>> {
    let id = parse_id(&id, "key")?;
    Ok(Json(state.store.get_tenant_key(&ctx, id).await?.into()))
}

/// Revoke one of the caller's tenant's keys.
#[utoipa::path(delete, path = "/v1/keys/{key_id}", tag = "tenant", security(("bearer" = [])),
    params(("key_id" = Uuid, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)))]
async fn revoke_own_key(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyView>> {
    let id: KeyId = parse_id(&id, "key")?;
    let key = state.store.revoke_tenant_key(&ctx, id).await?;
    tracing::info!(key = %id, "tenant key revoked");
    state.audit.record(&ctx, key_event(action::KEY_REVOKED, &key)).await;
    Ok(Json(key.into()))
}

/// The operator acting for the tenant in the path, which must exist.
pub(crate) async fn act_for(state: &AppState, op: &OperatorCtx, raw: &str) -> ApiResult<TenantCtx> {
    crate::auth::act_for(state, op, parse_id(raw, "tenant")?).await
}

/// Create a key for a tenant (operator).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/keys", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_tenant_key(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<Created<CreatedKey>> {
    let ctx = act_for(&state, &op, &tenant).await?;
    create_for(&state, &ctx, body).await
}

/// List a tenant's keys (operator).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/keys", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path), ListParams),
    responses((status = 200, body = List<KeyView>), (status = 404, body = ErrorBody)))]
async fn list_tenant_keys(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<List<KeyView>>> {
    let ctx = act_for(&state, &op, &tenant).await?;
    Ok(Json(key_list(state.store.list_tenant_keys(&ctx, params.page()?).await?)))
}

/// Revoke a tenant's key (operator).
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/keys/{key_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path), ("key_id" = Uuid, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)))]
async fn revoke_tenant_key(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath((tenant, key)): ApiPath<(String, String)>,
) -> ApiResult<Json<KeyView>> {
    let ctx = act_for(&state, &op, &tenant).await?;
    let id = parse_id(&key, "key")?;
    let key = state.store.revoke_tenant_key(&ctx, id).await?;
    state.audit.record(&ctx, key_event(action::KEY_REVOKED, &key)).await;
    Ok(Json(key.into()))
}

/// Create an operator key.
#[utoipa::path(post, path = "/v1/operator-keys", tag = "operator", security(("bearer" = [])),
    request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_operator_key(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<Created<CreatedKey>> {
    if body.scope.is_some() {
        return Err(ApiError::new(bulkhead_core::Code::InvalidRequest, "operator keys have no scope"));
    }
    let expires_at = body.checked_expiry()?;
    let new = keys::generate(KeyKind::Operator);
    let key = state.store.create_operator_key(&op, &body.name, &new, expires_at).await?;
    tracing::info!(key = %key.id, prefix = %key.prefix, "operator key created");
    state.audit.record_platform(&op, key_event(action::OPERATOR_KEY_CREATED, &key)).await;
    Ok((StatusCode::CREATED, Json(CreatedKey { key: key.into(), secret: new.secret })))
}

/// List operator keys.
#[utoipa::path(get, path = "/v1/operator-keys", tag = "operator", security(("bearer" = [])),
    params(ListParams), responses((status = 200, body = List<KeyView>), (status = 403, body = ErrorBody)))]
async fn list_operator_keys(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<List<KeyView>>> {
    Ok(Json(key_list(state.store.list_operator_keys(&op, params.page()?).await?)))
}

/// Revoke an operator key.
#[utoipa::path(delete, path = "/v1/operator-keys/{key_id}", tag = "operator", security(("bearer" = [])),
    params(("key_id" = Uuid, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)))]
async fn revoke_operator_key(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyView>> {
    let id = parse_id(&id, "key")?;
    let key = state.store.revoke_operator_key(&op, id).await?;
    state.audit.record_platform(&op, key_event(action::OPERATOR_KEY_REVOKED, &key)).await;
    Ok(Json(key.into()))
}
