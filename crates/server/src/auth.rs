//! Authentication and the contexts handlers receive.
//!
//! The middleware turns `Authorization: Bearer <key>` into a [`Principal`]
//! once per request. Handlers then ask for what they need:
//! [`TenantApp`] / [`TenantAdmin`] (a `TenantCtx` with at least that scope)
//! or [`Operator`]. `X-Tenant-ID` is honoured only for operator keys — the
//! operator then acts for that tenant as its admin, and the request's span
//! and log say so.
//!
//! The audit log hears of two things here: every refused key (through
//! `Audit::auth_failed`, which coalesces floods: at most two entries per
//! key, or per reason for unknown keys, per minute and process), and every
//! mutating request an operator makes for a tenant with `X-Tenant-ID`
//! (`operator.request` in that tenant's chain, with the response status).
//! A missing `Authorization` header is not recorded.

use std::sync::{Arc, OnceLock};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use bulkhead_audit::{AuditEvent, AuthFailReason, AuthFailure, Outcome, action};
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
    let parsed = match keys::parse(presented) {
        Ok(parsed) => parsed,
        Err(err) => {
            state.audit.auth_failed(AuthFailure::unknown(None)).await;
            return Err(err.into());
        }
    };
    let stored = state.store.lookup_key(parsed.prefix).await?;
    let last_used = stored.as_ref().and_then(|k| k.last_used_at);
    // What the audit entry of a refusal needs; never the presented secret.
    let known = stored.as_ref().map(|k| (k.id, k.tenant_id, k.revoked, k.expires_at));
    let now = OffsetDateTime::now_utc();
    let principal = match keys::authenticate(&parsed, stored, now) {
        Ok(p) => p,
        Err(err) => {
            tracing::warn!(prefix = parsed.prefix, code = %err.code, "authentication refused");
            let failure = match known {
                None => AuthFailure::unknown(Some(parsed.prefix)),
                Some((id, tenant, revoked, expires_at)) => {
                    let reason = if err.code == Code::TenantSuspended {
                        AuthFailReason::TenantSuspended
                    } else if revoked {
                        AuthFailReason::Revoked
                    } else if expires_at.is_some_and(|at| at <= now) {
                        AuthFailReason::Expired
                    } else {
                        AuthFailReason::InvalidSecret
                    };
                    AuthFailure::known(parsed.prefix, id, tenant, reason)
                }
            };
            state.audit.auth_failed(failure).await;
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
    // An operator changing something for a tenant named in X-Tenant-ID: the
    // tenant is known only once an extractor resolves it (it must exist),
    // so the extractor fills this slot and the entry is written after the
    // response, with its status.
    let acted_for = (matches!(principal, Principal::Operator(_))
        && !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && req.headers().contains_key(TENANT_HEADER))
    .then(ActedFor::default);
    let target = format!("{} {}", req.method(), req.uri().path());
    if let Some(slot) = &acted_for {
        req.extensions_mut().insert(slot.clone());
    }
    req.extensions_mut().insert(principal.clone());
    // A tenant served by a cell (tier `dedicated`) is forwarded there.
    let response = crate::proxy::dispatch(&state, &principal, req, next).await;
    if let Some(ctx) = acted_for.as_ref().and_then(|slot| slot.0.get()) {
        let status = response.status();
        let outcome = match status.as_u16() {
            s if s < 400 => Outcome::Success,
            401 | 403 => Outcome::Denied,
            _ => Outcome::Failure,
        };
        let event = AuditEvent::new(action::OPERATOR_REQUEST, target)
            .outcome(outcome)
            .details(serde_json::json!({ "status": status.as_u16() }));
        state.audit.record(ctx, event).await;
    }
    Ok(response)
}

/// Where `tenant_ctx` leaves the tenant an operator acts for with
/// `X-Tenant-ID`, for the audit entry of a mutating request.
#[derive(Clone, Default)]
struct ActedFor(Arc<OnceLock<TenantCtx>>);

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
            let ctx = act_for(state, op, tenant).await?;
            if let Some(slot) = parts.extensions.get::<ActedFor>() {
                let _ = slot.0.set(ctx.clone());
            }
            Ok(ctx)
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
