//! The HTTP API: routing, authentication (key → `TenantCtx`/`OperatorCtx`),
//! JSON shapes, the error envelope, request ids, the OpenAPI document and
//! graceful shutdown.
//!
//! Invariants: only this crate knows JSON shapes and HTTP statuses (it reads
//! them from `core`'s code table); nothing below it is handed a tenant id
//! taken from a request — handlers get a `TenantCtx` from the extractors in
//! `auth`, which honour `X-Tenant-ID` only for operator keys.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use bulkhead_agents::Scheduler;
use bulkhead_core::config::ServerConfig;
use bulkhead_metering::Metering;
use bulkhead_models::routing::ModelRouter;
use bulkhead_store::DynStore;
use bulkhead_vault::Vault;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod cells;
pub mod console;
pub mod error;
pub mod extract;
pub mod http_metrics;
pub mod proxy;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: DynStore,
    pub metering: Metering,
    pub models: Arc<ModelRouter>,
    pub vault: Vault,
    pub scheduler: Scheduler,
    pub knowledge: bulkhead_knowledge::Knowledge,
    pub audit: bulkhead_audit::Audit,
    pub code: bulkhead_agents::CodeRunner,
    pub max_queued_runs: i64,
    /// The cells that serve dedicated tenants, and the client to reach them.
    pub cells: cells::Cells,
    pub config: Arc<ServerConfig>,
}

impl AppState {
    pub fn new(services: bootstrap::Services, config: ServerConfig) -> Self {
        let bootstrap::Services {
            store,
            metering,
            models,
            vault,
            scheduler,
            knowledge,
            audit,
            code,
            max_queued_runs,
        } = services;
        let cells = cells::Cells::new(
            store.clone(),
            vault.clone(),
            Duration::from_millis(config.cell_connect_timeout_ms),
            Duration::from_secs(config.cell_read_timeout_secs),
        );
        Self {
            store,
            metering,
            models,
            vault,
            scheduler,
            knowledge,
            audit,
            code,
            max_queued_runs,
            cells,
            config: Arc::new(config),
        }
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The routes with their OpenAPI description, before layers.
fn routes(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let v1 = api::v1_routes()
        // Inside authentication, so it sees who was refused.
        .layer(axum::middleware::from_fn(api::overview::count_refusals))
        .layer(axum::middleware::from_fn(http_metrics::tag_tenant))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate));
    OpenApiRouter::with_openapi(api::ApiDoc::openapi())
        .merge(api::health::routes())
        .merge(v1)
        .split_for_parts()
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    // Built without a live store: the document depends only on the routes.
    let (_, doc) = OpenApiRouter::<AppState>::with_openapi(api::ApiDoc::openapi())
        .merge(api::health::routes())
        .merge(api::v1_routes())
        .split_for_parts();
    doc
}

/// The whole application, ready to serve.
pub fn app(state: AppState) -> Router {
    let (router, doc) = routes(&state);
    let doc = Arc::new(doc);
    let max_body = state.config.max_body_bytes;
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(console::routes())
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        // Runs after routing (it sees the matched route), inside the span.
        .layer(axum::middleware::from_fn(http_metrics::observe))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!(
                "request",
                request_id,
                method = %req.method(),
                path = %req.uri().path(),
                tenant = tracing::field::Empty,
                operator = tracing::field::Empty,
                // OpenTelemetry's names, filled by `http_metrics`.
                "tenant.id" = tracing::field::Empty,
                "http.route" = tracing::field::Empty,
                "http.response.status_code" = tracing::field::Empty,
            )
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then lets in-flight requests finish
/// for up to `shutdown_grace_secs`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // With `agents.workers = 0` this process only serves the API: runs and
    // ingestion jobs wait in the store for `bulkhead worker` processes.
    if state.scheduler.executes_runs() {
        tokio::spawn(state.scheduler.clone().run(shutdown.clone()));
        let knowledge = state.knowledge.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { knowledge.run_jobs(stop.cancelled_owned()).await });
    } else {
        tracing::info!("agents.workers = 0: serving the API only; runs go to `bulkhead worker` processes");
    }
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    let app = app(state);
    let signal = shutdown.clone();
    // With the peer's address, for `X-Forwarded-For` on requests proxied to cells.
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move { signal.cancelled().await });
    tokio::select! {
        res = server => res,
        // In-flight requests get `grace` after the signal, then we stop anyway.
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
            Ok(())
        }
    }
}
