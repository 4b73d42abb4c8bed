//! What a tenant may spend and use: budgets (`/v1/tenants/{id}/budget`,
//! `/v1/budget`), limits (`/v1/tenants/{id}/limits`, `/v1/limits`) and
//! pricing (`/v1/tenants/{id}/pricing`). The operator sets them; a tenant
//! reads its own. Every change is audited in the tenant's chain
//! (`config.updated`, target `budget`, `limits` or `pricing`, with the new
//! values).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_audit::{AuditEvent, action};
use bulkhead_core::{Code, Money, TenantCtx};
use bulkhead_limits::TenantLimits;
use bulkhead_metering::TenantPricing;
use bulkhead_store::{Budget, BudgetStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::keys::act_for;
use crate::AppState;
use crate::auth::{Operator, TenantAdmin, TenantApp};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_budget, set_budget, delete_budget))
        .routes(routes!(own_budget))
        .routes(routes!(get_limits, set_limits))
        .routes(routes!(own_limits))
        .routes(routes!(get_pricing, set_pricing))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    /// Per UTC calendar month, e.g. `"100.00"`; `null` for none.
    #[schema(value_type = Option<String>)]
    pub monthly_limit_usd: Option<Money>,
    /// Per UTC day; `null` for none.
    #[schema(value_type = Option<String>)]
    pub daily_limit_usd: Option<Money>,
    /// Percent of a limit at which a soft alert is recorded (1–100).
    pub soft_alert_percent: Option<u8>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    /// `2026-11` or `2026-11-27`.
    pub period: String,
    /// `soft` or `hard`.
    pub kind: String,
    #[schema(value_type = String)]
    pub threshold_usd: Money,
    #[schema(value_type = String)]
    pub spent_usd: Money,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub crossed_at: OffsetDateTime,
}

/// A budget and where the tenant stands against it. Amounts are exact
/// decimal strings in US dollars.
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetView {
    #[schema(value_type = Option<String>)]
    pub monthly_limit_usd: Option<Money>,
    #[schema(value_type = Option<String>)]
    pub daily_limit_usd: Option<Money>,
    pub soft_alert_percent: Option<u8>,
    #[schema(value_type = String)]
    pub spent_month_usd: Money,
    #[schema(value_type = String)]
    pub spent_day_usd: Money,
    /// Held by admitted work that has not settled yet.
    #[schema(value_type = String)]
    pub reserved_usd: Money,
    #[schema(value_type = Option<String>)]
    pub remaining_month_usd: Option<Money>,
    #[schema(value_type = Option<String>)]
    pub remaining_day_usd: Option<Money>,
    pub alerts: Vec<AlertView>,
}

impl From<BudgetStatus> for BudgetView {
    fn from(s: BudgetStatus) -> Self {
        let b = s.budget.unwrap_or_default();
        let remaining = |limit: Option<Money>, spent: Money| {
            limit.map(|l| l.saturating_sub(spent).saturating_sub(s.reserved).max(Money::ZERO))
        };
        Self {
            monthly_limit_usd: b.monthly_limit,
            daily_limit_usd: b.daily_limit,
            soft_alert_percent: b.soft_alert_percent,
            spent_month_usd: s.spent_month,
            spent_day_usd: s.spent_day,
            reserved_usd: s.reserved,
            remaining_month_usd: remaining(b.monthly_limit, s.spent_month),
            remaining_day_usd: remaining(b.daily_limit, s.spent_day),
            alerts: s
                .alerts
                .into_iter()
                .map(|a| AlertView {
                    period: a.period,
                    kind: a.kind,
                    threshold_usd: a.threshold,
                    spent_usd: a.spent,
                    crossed_at: a.crossed_at,
                })
                .collect(),
        }
    }
}

async fn budget_view(state: &AppState, ctx: &TenantCtx) -> ApiResult<Json<BudgetView>> {
    Ok(Json(state.store.budget_status(ctx, OffsetDateTime::now_utc()).await?.into()))
}

/// A tenant's budget and spend (operator).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/budget", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), responses((status = 200, body = BudgetView), (status = 404, body = ErrorBody)))]
async fn get_budget(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BudgetView>> {
    let ctx = act_for(&state, &op, &id).await?;
    budget_view(&state, &ctx).await
}

/// Set a tenant's budget (operator). Admission refuses work whose worst
/// case would pass a limit with `budget_exceeded` (402).
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/budget", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), request_body = SetBudget,
    responses((status = 200, body = BudgetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_budget(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SetBudget>,
) -> ApiResult<Json<BudgetView>> {
    let ctx = act_for(&state, &op, &id).await?;
    for limit in [body.monthly_limit_usd, body.daily_limit_usd].into_iter().flatten() {
        if limit.is_negative() || limit > Money::from_usd_units(1_000_000_000) {
            return Err(ApiError::new(
                Code::InvalidRequest,
                "budget limits must be between 0 and 1,000,000,000 dollars",
            ));
        }
    }
    if body.soft_alert_percent.is_some_and(|p| !(1..=100).contains(&p)) {
        return Err(ApiError::new(Code::InvalidRequest, "soft_alert_percent must be between 1 and 100"));
    }
    let budget = Budget {
        monthly_limit: body.monthly_limit_usd,
        daily_limit: body.daily_limit_usd,
        soft_alert_percent: body.soft_alert_percent,
    };
    state.store.set_budget(&ctx, Some(&budget)).await?;
    tracing::info!(tenant = %ctx.tenant_id(), "budget set");
    let details = serde_json::json!({
        "monthly_limit_usd": budget.monthly_limit,
        "daily_limit_usd": budget.daily_limit,
        "soft_alert_percent": budget.soft_alert_percent,
    });
    state.audit.record(&ctx, AuditEvent::new(action::CONFIG_UPDATED, "budget").details(details)).await;
    budget_view(&state, &ctx).await
}

/// Remove a tenant's budget (operator): its spend is no longer capped.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/budget", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_budget(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let ctx = act_for(&state, &op, &id).await?;
    state.store.set_budget(&ctx, None).await?;
    let event =
        AuditEvent::new(action::CONFIG_UPDATED, "budget").details(serde_json::json!({"budget": null}));
    state.audit.record(&ctx, event).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own budget and spend (tenant admin).
#[utoipa::path(get, path = "/v1/budget", tag = "tenant", security(("bearer" = [])),
    responses((status = 200, body = BudgetView), (status = 403, body = ErrorBody)))]
async fn own_budget(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
) -> ApiResult<Json<BudgetView>> {
    budget_view(&state, &ctx).await
}

/// A tenant's limits: the operator's overrides and the effective values
/// (overrides over the tier's defaults).
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsView {
    pub overrides: TenantLimits,
    pub effective: TenantLimits,
}

async fn limits_view(state: &AppState, ctx: &TenantCtx) -> ApiResult<Json<LimitsView>> {
    state.metering.forget_terms(ctx);
    let overrides: TenantLimits = serde_json::from_value(state.store.tenant_settings(ctx).await?.limits)
        .map_err(|e| ApiError(bulkhead_core::Error::internal(e)))?;
    let effective = state.metering.terms(ctx).await?.limits;
    Ok(Json(LimitsView { overrides, effective }))
}

/// A tenant's limits (operator).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/limits", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), responses((status = 200, body = LimitsView), (status = 404, body = ErrorBody)))]
async fn get_limits(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<LimitsView>> {
    let ctx = act_for(&state, &op, &id).await?;
    limits_view(&state, &ctx).await
}

/// Replace a tenant's limit overrides (operator). Fields left out follow the
/// tier's defaults. Other replicas apply the change within seconds.
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/limits", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), request_body = TenantLimits,
    responses((status = 200, body = LimitsView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_limits(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TenantLimits>,
) -> ApiResult<Json<LimitsView>> {
    let ctx = act_for(&state, &op, &id).await?;
    body.validate().map_err(|e| ApiError(e.into()))?;
    let value = serde_json::to_value(body).map_err(|e| ApiError(bulkhead_core::Error::internal(e)))?;
    state.store.set_tenant_limits(&ctx, &value).await?;
    tracing::info!(tenant = %ctx.tenant_id(), "limits set");
    let event =
        AuditEvent::new(action::CONFIG_UPDATED, "limits").details(serde_json::json!({"limits": value}));
    state.audit.record(&ctx, event).await;
    limits_view(&state, &ctx).await
}

/// The caller's effective limits.
#[utoipa::path(get, path = "/v1/limits", tag = "tenant", security(("bearer" = [])),
    responses((status = 200, body = TenantLimits), (status = 401, body = ErrorBody)))]
async fn own_limits(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
) -> ApiResult<Json<TenantLimits>> {
    Ok(Json(state.metering.terms(&ctx).await?.limits))
}

/// A tenant's pricing: markup in basis points, per-model and per-tool prices.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/pricing", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_pricing(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TenantPricing>> {
    let ctx = act_for(&state, &op, &id).await?;
    Ok(Json(TenantPricing::from_json(&state.store.tenant_settings(&ctx).await?.pricing)?))
}

/// Replace a tenant's pricing (operator), e.g.
/// `{"markup_bps": 1500, "models": {"gpt-4o": {"output_per_mtok": "8.00"}}, "tools": {"web_search": "0.01"}}`.
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/pricing", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_pricing(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<Json<TenantPricing>> {
    let ctx = act_for(&state, &op, &id).await?;
    let pricing = TenantPricing::from_json(&body)?;
    for model in pricing.models.keys() {
        state
            .metering
            .pricing()
            .catalog
            .get(model)
            .ok_or_else(|| ApiError(bulkhead_metering::pricing::unknown_model(model)))?;
    }
    let value = serde_json::to_value(&pricing).map_err(|e| ApiError(bulkhead_core::Error::internal(e)))?;
    state.store.set_tenant_pricing(&ctx, &value).await?;
    state.metering.forget_terms(&ctx);
    let event =
        AuditEvent::new(action::CONFIG_UPDATED, "pricing").details(serde_json::json!({"pricing": value}));
    state.audit.record(&ctx, event).await;
    Ok(Json(pricing))
}
