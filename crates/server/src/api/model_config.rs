//! Model configuration: the tenant admin's task mapping, aliases and
//! fallbacks (`/v1/model-config`), the operator's allow list
//! (`/v1/tenants/{id}/models`), and the tenant's own provider keys
//! (`/v1/provider-keys`, write-only: names and dates come back, never values).
//! Changes are audited in the tenant's chain: `config.updated` (target
//! `model_config` or `allowed_models`) and `secret.put` / `secret.deleted`
//! for provider keys — by provider name only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_audit::{AuditEvent, action};
use bulkhead_core::{Code, TenantCtx};
use bulkhead_models::routing::ModelSettings;
use bulkhead_vault::{SecretInfo, SecretKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::keys::act_for;
use crate::AppState;
use crate::auth::{Operator, TenantAdmin};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_model_config, set_model_config))
        .routes(routes!(get_allowed_models, set_allowed_models))
        .routes(routes!(list_provider_keys))
        .routes(routes!(put_provider_key, delete_provider_key))
}

/// A tenant's model configuration as its admin sees and sets it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Task type → model (e.g. `{"reasoning": "gpt-4o", "classification": "gpt-4o-mini"}`);
    /// request a task's model as `task:<type>`.
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
    /// Names the tenant's apps may use for models.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Model → models to try, in order, when its provider fails.
    #[serde(default)]
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Set by the operator; read-only here (`null`: every catalog model).
    #[serde(default, skip_deserializing)]
    pub allowed: Option<Vec<String>>,
}

async fn load(state: &AppState, ctx: &TenantCtx) -> ApiResult<ModelSettings> {
    Ok(ModelSettings::from_json(&state.store.tenant_settings(ctx).await?.models)?)
}

async fn save(state: &AppState, ctx: &TenantCtx, settings: &ModelSettings) -> ApiResult<()> {
    state.models.validate(settings)?;
    let value = serde_json::to_value(settings).map_err(|e| ApiError(bulkhead_core::Error::internal(e)))?;
    state.store.set_tenant_models(ctx, &value).await?;
    state.metering.forget_terms(ctx);
    Ok(())
}

fn view(s: ModelSettings) -> ModelConfig {
    ModelConfig { tasks: s.tasks, aliases: s.aliases, fallbacks: s.fallbacks, allowed: s.allowed }
}

/// The caller's model configuration (tenant admin).
#[utoipa::path(get, path = "/v1/model-config", tag = "tenant", security(("bearer" = [])),
    responses((status = 200, body = ModelConfig), (status = 403, body = ErrorBody)))]
async fn get_model_config(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
) -> ApiResult<Json<ModelConfig>> {
    Ok(Json(view(load(&state, &ctx).await?)))
}

/// Replace the caller's task mapping, aliases and fallbacks (tenant admin).
/// Every model named must exist and be on the tenant's allow list.
#[utoipa::path(put, path = "/v1/model-config", tag = "tenant", security(("bearer" = [])), request_body = ModelConfig,
    responses((status = 200, body = ModelConfig), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn set_model_config(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiJson(body): ApiJson<ModelConfig>,
) -> ApiResult<Json<ModelConfig>> {
    let mut settings = load(&state, &ctx).await?;
    settings.tasks = body.tasks;
    settings.aliases = body.aliases;
    settings.fallbacks = body.fallbacks;
    save(&state, &ctx, &settings).await?;
    let details = serde_json::json!({
        "tasks": settings.tasks, "aliases": settings.aliases, "fallbacks": settings.fallbacks,
    });
    state.audit.record(&ctx, AuditEvent::new(action::CONFIG_UPDATED, "model_config").details(details)).await;
    Ok(Json(view(settings)))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowedModels {
    /// Models the tenant may use; `null` for every model in the catalog.
    pub allowed: Option<Vec<String>>,
}

/// A tenant's model allow list (operator).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/models", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), responses((status = 200, body = AllowedModels), (status = 404, body = ErrorBody)))]
async fn get_allowed_models(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<AllowedModels>> {
    let ctx = act_for(&state, &op, &id).await?;
    Ok(Json(AllowedModels { allowed: load(&state, &ctx).await?.allowed }))
}

/// Set a tenant's model allow list (operator). A model the tenant's own
/// configuration still uses must be removed there first.
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/models", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), request_body = AllowedModels,
    responses((status = 200, body = AllowedModels), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_allowed_models(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<AllowedModels>,
) -> ApiResult<Json<AllowedModels>> {
    let ctx = act_for(&state, &op, &id).await?;
    let mut settings = load(&state, &ctx).await?;
    settings.allowed = body.allowed;
    save(&state, &ctx, &settings).await?;
    let details = serde_json::json!({"allowed": settings.allowed});
    state
        .audit
        .record(&ctx, AuditEvent::new(action::CONFIG_UPDATED, "allowed_models").details(details))
        .await;
    Ok(Json(AllowedModels { allowed: settings.allowed }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderKeyView {
    /// The provider this key is used for.
    pub provider: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<SecretInfo> for ProviderKeyView {
    fn from(s: SecretInfo) -> Self {
        Self { provider: s.name, created_at: s.created_at, updated_at: s.updated_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderKeyList {
    pub data: Vec<ProviderKeyView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutProviderKey {
    /// The key; stored encrypted and never returned.
    pub api_key: String,
}

/// The providers the tenant has its own key for (names only).
#[utoipa::path(get, path = "/v1/provider-keys", tag = "tenant", security(("bearer" = [])),
    responses((status = 200, body = ProviderKeyList), (status = 403, body = ErrorBody)))]
async fn list_provider_keys(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
) -> ApiResult<Json<ProviderKeyList>> {
    let data = state
        .vault
        .list(&ctx, SecretKind::ProviderKey)
        .await?
        .into_iter()
        .map(ProviderKeyView::from)
        .collect();
    Ok(Json(ProviderKeyList { data }))
}

/// Store (or rotate) the tenant's own key for a provider. Calls to that
/// provider's models then carry this key instead of the platform's.
#[utoipa::path(put, path = "/v1/provider-keys/{provider}", tag = "tenant", security(("bearer" = [])),
    params(("provider" = String, Path)), request_body = PutProviderKey,
    responses((status = 200, body = ProviderKeyView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn put_provider_key(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(provider): ApiPath<String>,
    ApiJson(body): ApiJson<PutProviderKey>,
) -> ApiResult<Json<ProviderKeyView>> {
    match state.models.provider_kind(&provider) {
        None => {
            return Err(ApiError::new(
                Code::InvalidRequest,
                format!("no provider named `{provider}` is configured"),
            ));
        }
        Some("builtin") => {
            return Err(ApiError::new(Code::InvalidRequest, "the built-in provider takes no key"));
        }
        Some(_) => {}
    }
    let info = state.vault.put(&ctx, SecretKind::ProviderKey, &provider, body.api_key.trim()).await?;
    tracing::info!(tenant = %ctx.tenant_id(), %provider, "provider key stored");
    state.audit.record(&ctx, provider_key_event(action::SECRET_PUT, &provider)).await;
    Ok(Json(info.into()))
}

/// Delete the tenant's own key for a provider.
#[utoipa::path(delete, path = "/v1/provider-keys/{provider}", tag = "tenant", security(("bearer" = [])),
    params(("provider" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_provider_key(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(provider): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if state.vault.delete(&ctx, SecretKind::ProviderKey, &provider).await? {
        state.audit.record(&ctx, provider_key_event(action::SECRET_DELETED, &provider)).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(Code::NotFound, "no key stored for that provider"))
    }
}

/// An audit event about a provider key: which provider, never the key.
fn provider_key_event(name: &str, provider: &str) -> AuditEvent {
    AuditEvent::new(name, format!("provider_key:{provider}"))
        .details(serde_json::json!({"kind": "provider_key", "name": provider}))
}
