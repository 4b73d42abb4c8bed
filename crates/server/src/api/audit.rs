//! The audit log over HTTP: `GET /v1/audit` (entries of one chain, in seq
//! order) and `GET /v1/audit/verify` (every hash recomputed).
//!
//! Which chain: a tenant admin reads its own tenant's; an operator reads a
//! tenant's by naming it in `X-Tenant-ID`, or the platform chain without
//! it. A tenant key never reaches the platform chain or another tenant's.

use axum::Json;
use axum::extract::State;
use bulkhead_audit::VerifyReport;
use bulkhead_core::Code;
use bulkhead_store::{AuditChain, AuditEntry, AuditQuery};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiQuery;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit)).routes(routes!(verify_audit))
}

/// Paging and filters of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Page size, 1–500 (default 50).
    pub limit: Option<u32>,
    /// The `next_after` of the previous page: entries after this seq.
    pub after: Option<i64>,
    /// Only actions starting with this, e.g. `key.` or `auth.failed`.
    pub action: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<String>,
}

/// One entry, exactly as hashed.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// The tenant id, or `platform`.
    pub chain: String,
    /// 1, 2, 3 … within the chain.
    pub seq: i64,
    #[schema(value_type = String, format = DateTime)]
    pub time: String,
    /// `key:<id>` (a tenant key), `operator:<id>` (an operator key), `cli` or `system`.
    pub actor: String,
    /// Whether an operator acted for the tenant (`X-Tenant-ID`, a tenant path, or the console).
    pub via_operator: bool,
    /// A stable dotted name, e.g. `key.created`, `auth.failed`, `config.updated`.
    pub action: String,
    pub target: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The previous entry's hash (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over the entry's canonical encoding, hex.
    pub hash: String,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> Self {
        // A row whose details are not JSON any more still shows what it holds.
        let details = serde_json::from_str(&e.details).unwrap_or(serde_json::Value::String(e.details));
        Self {
            chain: e.chain,
            seq: e.seq,
            time: e.at.format(&Rfc3339).unwrap_or_default(),
            actor: e.actor,
            via_operator: e.via_operator,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            details,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// A page of entries, in seq order.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub data: Vec<AuditEntryView>,
    pub has_more: bool,
    /// Pass as `after` to get the next page.
    pub next_after: Option<i64>,
}

/// The first problem of a broken chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemView {
    pub seq: i64,
    /// `altered`, `removed`, `reordered` or `head_mismatch`.
    pub kind: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyView {
    /// The tenant id, or `platform`.
    pub chain: String,
    pub ok: bool,
    /// Entries found intact before the first problem (all of them when ok).
    pub entries_checked: u64,
    /// The verified head: record `head_hash` elsewhere to detect a later
    /// rewrite of the whole chain.
    pub head_seq: Option<i64>,
    pub head_hash: Option<String>,
    pub first_problem: Option<ProblemView>,
}

impl From<VerifyReport> for VerifyView {
    fn from(r: VerifyReport) -> Self {
        Self {
            chain: r.chain,
            ok: r.ok,
            entries_checked: r.entries_checked,
            head_seq: r.head_seq,
            head_hash: r.head_hash,
            first_problem: r.first_problem.map(|p| ProblemView { seq: p.seq, kind: p.kind.as_str().into() }),
        }
    }
}

fn chain(caller: &Caller) -> AuditChain<'_> {
    match caller {
        Caller::Tenant(ctx) => AuditChain::Tenant(ctx),
        Caller::Operator(op) => AuditChain::Platform(op),
    }
}

impl AuditParams {
    fn query(&self) -> ApiResult<AuditQuery> {
        let limit = self.limit.unwrap_or(bulkhead_core::page::DEFAULT_LIMIT);
        if !(1..=bulkhead_core::page::MAX_LIMIT).contains(&limit) {
            return Err(ApiError::new(Code::InvalidRequest, "limit must be between 1 and 500"));
        }
        let after = self.after.unwrap_or(0);
        if after < 0 {
            return Err(ApiError::new(Code::InvalidRequest, "after must be a seq (0 or more)"));
        }
        let since = self
            .since
            .as_deref()
            .map(|s| {
                OffsetDateTime::parse(s, &Rfc3339)
                    .map_err(|_| ApiError::new(Code::InvalidRequest, "since must be an RFC 3339 time"))
            })
            .transpose()?;
        let action_prefix = self.action.clone().filter(|a| !a.is_empty());
        if action_prefix.as_ref().is_some_and(|a| a.len() > 100) {
            return Err(ApiError::new(Code::InvalidRequest, "action must be at most 100 characters"));
        }
        // One more than asked tells whether another page follows.
        Ok(AuditQuery { after, limit: i64::from(limit) + 1, action_prefix, since })
    }
}

/// Audit log entries: a tenant admin's own tenant; an operator's platform
/// chain, or a tenant's with `X-Tenant-ID`.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])), params(AuditParams),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> ApiResult<Json<AuditList>> {
    let query = params.query()?;
    let limit = (query.limit - 1) as usize;
    let mut entries = state.audit.list(chain(&caller), &query).await?;
    let has_more = entries.len() > limit;
    entries.truncate(limit);
    let next_after = if has_more { entries.last().map(|e| e.seq) } else { None };
    Ok(Json(AuditList { data: entries.into_iter().map(Into::into).collect(), has_more, next_after }))
}

/// Recompute every hash of the chain (same choice of chain as `GET /v1/audit`)
/// and report the first altered, removed or reordered entry, or a head that
/// disagrees with the last entry.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = VerifyView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn verify_audit(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<VerifyView>> {
    let report = state.audit.verify(chain(&caller)).await?;
    if !report.ok {
        tracing::error!(chain = %report.chain, problem = ?report.first_problem, "audit chain failed verification");
    }
    Ok(Json(report.into()))
}
