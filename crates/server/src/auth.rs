//! Authentication and the contexts handlers receive.
//!
//! The middleware turns `Authorization: Bearer <key>` into a [`Principal`]
//! once per request. Handlers then ask for what they need:
//! [`TenantApp`] / [`TenantAdmin`] (a `TenantCtx` with at least that scope)
//! or [`Operator`]. `X-Tenant-ID` is honoured only for operator keys — the
//! operator then acts for that tenant as its admin, and the request's span
//! and log say so.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use bulkhead_core::keys::{self, Principal};
use bulkhead_core::tenancy::Scope;
use bulkhead_core::{Code, Error, OperatorCtx, TenantCtx, TenantId};
use bulkhead_limits::RateKind;
use time::OffsetDateTime;

use crate::{ApiError, AppState};

pub const TENANT_HEADER: &str = "x-tenant-id";

/// How stale `last_used_at` may get before a request refreshes it; keeps a
/// write off most requests.
const TOUCH_EVERY: time::Duration = time::Duration::seconds(60);

pub async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(Code::Unauthorized, "missing API key; send `Authorization: Bearer <key>`")
        })?;
    let parsed = keys::parse(presented)?;
    let stored = state.store.lookup_key(parsed.prefix).await?;
    let last_used = stored.as_ref().and_then(|k| k.last_used_at);
    let now = OffsetDateTime::now_utc();
    let principal = match keys::authenticate(&parsed, stored, now) {
        Ok(p) => p,
        Err(err) => {
            tracing::warn!(prefix = parsed.prefix, code = %err.code, "authentication refused");
            return Err(err.into());
        }
    };
    let span = tracing::Span::current();
    match &principal {
        Principal::Tenant(ctx) => {
            span.record("tenant", tracing::field::display(ctx.tenant_id()));
        }
        Principal::Operator(op) => {
            span.record("operator", tracing::field::debug(op.key_id()));
        }
    }
    if let Some(key_id) = principal.key_id()
        && last_used.is_none_or(|at| now - at > TOUCH_EVERY)
    {
        let store = state.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_key(key_id, now).await {
                tracing::warn!(error = %e, "could not record key use");
            }
        });
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

fn principal(parts: &Parts) -> Result<&Principal, ApiError> {
    parts
        .extensions
        .get::<Principal>()
        .ok_or_else(|| ApiError(Error::internal("route is missing the authentication layer")))
}

/// Resolves the tenant a request acts for: a tenant key's own tenant, or the
/// tenant an operator names in `X-Tenant-ID` (which must exist).
async fn tenant_ctx(parts: &Parts, state: &AppState) -> Result<TenantCtx, ApiError> {
    let named = parts.headers.get(TENANT_HEADER);
    match principal(parts)? {
        Principal::Tenant(ctx) => {
            if named.is_some() {
                return Err(ApiError::new(
                    Code::Forbidden,
                    "X-Tenant-ID is only accepted with an operator key",
                ));
            }
            // Every request of a tenant key counts against its requests-per-minute
            // limit; an operator acting for the tenant does not use up its quota.
            state.metering.check_rate(ctx, RateKind::Requests, 1).await?;
            Ok(ctx.clone())
        }
        Principal::Operator(op) => {
            let Some(named) = named else {
                return Err(ApiError::new(
                    Code::Forbidden,
                    "an operator key must name the tenant to act for in X-Tenant-ID",
                ));
            };
            let tenant: TenantId = named
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::new(Code::InvalidRequest, "X-Tenant-ID must be a tenant id"))?;
            act_for(state, op, tenant).await
        }
    }
}

/// An operator acting for a tenant it names: the tenant must exist, and
/// the request's span and log say who acts for whom.
pub async fn act_for(state: &AppState, op: &OperatorCtx, tenant: TenantId) -> Result<TenantCtx, ApiError> {
    state.store.get_tenant(op, tenant).await?;
    tracing::Span::current().record("tenant", tracing::field::display(tenant));
    tracing::info!(operator_key = ?op.key_id(), %tenant, "operator acting for tenant");
    Ok(op.act_for(tenant))
}

/// A tenant context with at least `tenant_app` scope.
pub struct TenantApp(pub TenantCtx);

/// A tenant context with `tenant_admin` scope.
pub struct TenantAdmin(pub TenantCtx);

/// The platform operator.
pub struct Operator(pub OperatorCtx);

/// Who may read usage and budgets: a tenant admin (its own), an operator
/// naming a tenant in `X-Tenant-ID` (that tenant), or an operator alone
/// (every tenant).
pub enum Caller {
    Tenant(TenantCtx),
    Operator(OperatorCtx),
}

/// An operator acting for the tenant named in `X-Tenant-ID` (required).
pub struct OperatorForTenant(pub TenantCtx);

impl FromRequestParts<AppState> for TenantApp {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ctx = tenant_ctx(parts, state).await?;
        ctx.require(Scope::TenantApp)?;
        Ok(Self(ctx))
    }
}

impl FromRequestParts<AppState> for TenantAdmin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ctx = tenant_ctx(parts, state).await?;
        ctx.require(Scope::TenantAdmin)?;
        Ok(Self(ctx))
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        match principal(parts)? {
            Principal::Operator(op) => Ok(Self(op.clone())),
            Principal::Tenant(_) => {
                Err(ApiError::new(Code::Forbidden, "this operation needs an operator key"))
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Principal::Operator(op) = principal(parts)?
            && !parts.headers.contains_key(TENANT_HEADER)
        {
            return Ok(Caller::Operator(op.clone()));
        }
        let ctx = tenant_ctx(parts, state).await?;
        ctx.require(Scope::TenantAdmin)?;
        Ok(Caller::Tenant(ctx))
    }
}

impl FromRequestParts<AppState> for OperatorForTenant {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !matches!(principal(parts)?, Principal::Operator(_)) {
            return Err(ApiError::new(Code::Forbidden, "this operation needs an operator key"));
        }
        Ok(Self(tenant_ctx(parts, state).await?))
    }
}
