//! Liveness and readiness probes: no authentication, no tenant.

use axum::Json;
use axum::extract::State;
use bulkhead_core::Code;
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

/// Prometheus metrics: queued and active runs per tenant (from the store,
/// so every process reports the whole queue), run durations and model
/// tokens per tenant (this process). Tenant labels are capped at 1,000.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(
    State(state): State<AppState>,
) -> ApiResult<([(axum::http::HeaderName, &'static str); 1], String)> {
    let queue = state.store.queue_overview(&bulkhead_core::OperatorCtx::local_cli()).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        bulkhead_agents::metrics::render(&queue),
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
