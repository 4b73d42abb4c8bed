//! Code execution: `POST /v1/sandbox/executions` (tenant app), the tenant's
//! own policy `GET /v1/sandbox/policy`, and the operator's per-tenant policy
//! `GET|PUT /v1/tenants/{tenant_id}/sandbox`. Policy, limits, audit and
//! metering live in `bulkhead_agents::CodeRunner`, shared with `run_code`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use bulkhead_agents::Caller;
use bulkhead_audit::{AuditEvent, action};
use bulkhead_core::{Code, TenantId};
use bulkhead_sandbox::{ExecRequest, Language, SandboxPolicy};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::parse_id;
use crate::AppState;
use crate::auth::{Operator, TenantApp};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(execute))
        .routes(routes!(own_policy))
        .routes(routes!(get_policy, put_policy))
}

/// An input file: text in `content`, or bytes in `content_base64`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileBody {
    /// A relative name inside the work dir.
    pub name: String,
    pub content: Option<String>,
    pub content_base64: Option<String>,
}

/// Code to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    /// `python` or `bash` (also `sh`, `perl` where the policy allows).
    pub language: String,
    pub code: String,
    pub stdin: Option<String>,
    #[serde(default)]
    pub files: Vec<FileBody>,
    /// Within the tenant's maximum; the policy's default when absent.
    pub timeout_ms: Option<u64>,
}

/// Run code in the tenant's sandbox: no network, a fresh work dir, limits
/// on CPU, memory, time, processes, disk and output. A refusal runs nothing
/// and carries its reason in `details.refusal` (`sandbox_disabled`,
/// `language_not_allowed`, `code_too_large`, `timeout_too_long`, …).
#[utoipa::path(post, path = "/v1/sandbox/executions", tag = "sandbox", security(("bearer" = [])),
    request_body = ExecuteBody,
    responses((status = 200, description = "the program ran (any exit code)", body = Object),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn execute(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiJson(body): ApiJson<ExecuteBody>,
) -> ApiResult<Json<Value>> {
    let language: Language = body
        .language
        .parse()
        .map_err(|_| ApiError::new(Code::InvalidRequest, "language must be python, bash, sh or perl"))?;
    let mut req = ExecRequest::new(language, body.code);
    if let Some(stdin) = body.stdin {
        req = req.with_stdin(stdin.into_bytes());
    }
    for f in body.files {
        let bytes = match (f.content, f.content_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => {
                base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| {
                    ApiError::new(Code::InvalidRequest, format!("{}: content_base64 is not base64", f.name))
                })?
            }
            _ => {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    format!("{}: give exactly one of content and content_base64", f.name),
                ));
            }
        };
        req = req.with_file(f.name, bytes);
    }
    if let Some(ms) = body.timeout_ms {
        req = req.with_timeout(Duration::from_millis(ms));
    }
    let o = state.code.execute(&ctx, Caller::Api, &req).await?;
    Ok(Json(json!({
        "stdout": o.stdout_lossy(), "stderr": o.stderr_lossy(),
        "exit_code": o.exit_code, "signal": o.signal, "timed_out": o.timed_out,
        "limit_exceeded": o.limit_exceeded.map(|l| l.as_str()),
        "cpu_ms": o.cpu_time.as_millis() as u64, "wall_ms": o.wall_time.as_millis() as u64,
        "peak_memory_bytes": o.peak_memory_bytes,
        "stdout_truncated": o.stdout_truncated, "stderr_truncated": o.stderr_truncated,
        "backend": o.backend,
    })))
}

fn policy_json(p: &SandboxPolicy) -> Value {
    serde_json::to_value(p).unwrap_or_else(|_| json!({}))
}

/// The tenant's sandbox policy (set by the operator).
#[utoipa::path(get, path = "/v1/sandbox/policy", tag = "sandbox", security(("bearer" = [])),
    responses((status = 200, body = Object)))]
async fn own_policy(State(state): State<AppState>, TenantApp(ctx): TenantApp) -> ApiResult<Json<Value>> {
    let policy = state.code.policy(&ctx).await?;
    Ok(Json(json!({"policy": policy_json(&policy), "backend": state.code.backend()})))
}

/// A tenant's sandbox policy (operator).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/sandbox", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_policy(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id: TenantId = parse_id(&id, "tenant")?;
    let tenant = state.store.get_tenant(&op, id).await?;
    let policy = state.code.policy(&op.act_for(tenant.id)).await?;
    Ok(Json(json!({"policy": policy_json(&policy), "backend": state.code.backend()})))
}

/// Set a tenant's sandbox policy (operator): `enabled`, `languages`, size,
/// time, memory, CPU, process, output and disk limits. Missing fields take
/// the defaults; execution stays off unless `enabled` is true.
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/sandbox", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn put_policy(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let id: TenantId = parse_id(&id, "tenant")?;
    let tenant = state.store.get_tenant(&op, id).await?;
    if !body.is_object() {
        return Err(ApiError::new(Code::InvalidRequest, "the policy must be a JSON object"));
    }
    let policy = SandboxPolicy::from_json(&body.to_string()).map_err(bulkhead_core::Error::from)?;
    let ctx = op.act_for(tenant.id);
    let stored = serde_json::to_value(&policy).map_err(|e| ApiError(bulkhead_core::Error::internal(e)))?;
    state.store.set_tenant_sandbox(&ctx, &stored).await?;
    state
        .audit
        .record(&ctx, AuditEvent::new(action::CONFIG_UPDATED, "sandbox").details(json!({"policy": stored})))
        .await;
    Ok(Json(json!({"policy": stored, "backend": state.code.backend()})))
}
