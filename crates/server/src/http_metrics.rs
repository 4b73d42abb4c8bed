//! HTTP telemetry: [`observe`] times every request into
//! `bulkhead_http_request_duration_seconds` (method, matched route
//! template, status class — no tenant, and never the raw path, whose ids
//! would multiply the series) and records the route (`http.route`) and
//! status on the request's span; [`tag_tenant`], inside authentication,
//! puts the caller's tenant on the span as `tenant.id` (the OpenTelemetry
//! attribute). The span keeps its name, `request`: an exported span is
//! named when it starts, before routing.
//!
//! Latency runs to the response head: a streamed body (SSE) is not waited
//! for, so a long stream does not read as a slow request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use bulkhead_core::TenantId;
use bulkhead_core::keys::Principal;

use crate::auth::TENANT_HEADER;

/// Times the request and records its route on the request span. Goes on
/// the whole router (it runs after routing, so the matched path is known).
pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    // `MatchedPath` is an `Arc<str>` inside: cloning it does not allocate.
    let route = req.extensions().get::<MatchedPath>().cloned();
    if let Some(route) = &route {
        tracing::Span::current().record("http.route", route.as_str());
    }
    let response = next.run(req).await;
    let status = response.status().as_u16();
    tracing::Span::current().record("http.response.status_code", status);
    bulkhead_telemetry::metrics::http_request(
        method.as_str(),
        route.as_ref().map(MatchedPath::as_str),
        status,
        started.elapsed(),
    );
    response
}

/// Records the tenant the request acts for as `tenant.id` on the request
/// span: a tenant key's own tenant, or the tenant an operator names in
/// `X-Tenant-ID`. Goes inside the authentication layer.
pub async fn tag_tenant(req: Request, next: Next) -> Response {
    let tenant: Option<TenantId> = match req.extensions().get::<Principal>() {
        Some(Principal::Tenant(ctx)) => Some(ctx.tenant_id()),
        Some(Principal::Operator(_)) => {
            req.headers().get(TENANT_HEADER).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
        }
        None => None,
    };
    if let Some(tenant) = tenant {
        tracing::Span::current().record("tenant.id", tracing::field::display(tenant));
    }
    next.run(req).await
}

/// `GET /metrics` (and `GET /healthz`) alone, for a process without the API
/// (`bulkhead worker`): what this process counted — runs, tokens, cost,
/// tool calls, sandbox executions. The queue gauges are left to the API
/// processes, which read them from the store. Serves until `shutdown`.
pub async fn serve_metrics_only(
    listener: tokio::net::TcpListener,
    token: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    use axum::response::IntoResponse;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| async move {
                if let Err(e) = check_metrics_token(token.as_deref(), &headers) {
                    return e.into_response();
                }
                let text = bulkhead_telemetry::metrics::render(&[]);
                ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// `GET /metrics` with `server.metrics_token` set: the scraper must present
/// that token as a bearer credential (compared in constant time).
pub fn check_metrics_token(
    token: Option<&str>,
    headers: &axum::http::HeaderMap,
) -> Result<(), crate::error::ApiError> {
    use subtle::ConstantTimeEq;
    let Some(token) = token else { return Ok(()) };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let sha = |s: &str| <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes());
    if bool::from(sha(presented).ct_eq(&sha(token))) {
        Ok(())
    } else {
        Err(crate::error::ApiError::new(
            bulkhead_core::Code::Unauthorized,
            "metrics need `Authorization: Bearer <server.metrics_token>`",
        ))
    }
}
