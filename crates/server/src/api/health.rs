//! Liveness and readiness probes: no authentication, no tenant.

use axum::Json;
use axum::extract::State;
use bulkhead_core::Code;
use bulkhead_telemetry::metrics::QueueDepth;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    /// `sqlite` or `postgres` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

/// Prometheus metrics (text format 0.0.4): queued and active runs per
/// tenant (from the store, so every process reports the whole queue); and,
/// counted by this process, finished runs and their durations, model tokens
/// and cost, rate-limit, budget and policy refusals, sandbox executions and
/// CPU time, tool calls, and HTTP latency by route. Tenant labels are capped
/// at 1,000 (further tenants are `tenant="other"`); see
/// `bulkhead_telemetry::metrics` for every family.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> ApiResult<([(axum::http::HeaderName, &'static str); 1], String)> {
    crate::http_metrics::check_metrics_token(state.config.metrics_token.as_deref(), &headers)?;
    let queue = state.store.queue_overview(&bulkhead_core::OperatorCtx::local_cli()).await?;
    let queue: Vec<QueueDepth> = queue
        .iter()
        .map(|q| QueueDepth { tenant: q.tenant_id, queued: q.queued, running: q.running })
        .collect();
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        bulkhead_telemetry::metrics::render(&queue),
    ))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", store: None })
}

/// The process can serve: its store answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = crate::error::ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "store not ready");
        ApiError::new(Code::Unavailable, "the store is not reachable")
    })?;
    Ok(Json(Health { status: "ready", store: Some(state.store.backend()) }))
}
