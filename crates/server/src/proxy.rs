//! The proxy to cells: a request for a tenant that is placed in a cell (tier
//! `dedicated`) is forwarded there, once authentication has said who it is.
//!
//! What is forwarded: a tenant key's request to any tenant route except its
//! keys (`/v1/keys…`, authoritative here, served by
//! `cells::serve_control_plane` and mirrored) and `/v1/tenant`; an
//! operator's request with `X-Tenant-ID` naming the tenant, except the
//! operator's own routes; and the operator's per-tenant settings
//! (`/v1/tenants/{id}/{budget,limits,pricing,models,sandbox}`). Method, path,
//! query, body and end-to-end headers go through; hop-by-hop headers
//! (RFC 9110 §7.6.1, and those `Connection` names) are dropped; `Host` is
//! the cell's; `X-Forwarded-For/-Host/-Proto` are set. A tenant key's
//! `Authorization` is forwarded verbatim (the cell holds the mirrored key
//! record and enforces the scope); an operator's is replaced by the cell's
//! operator key. Bodies stream both ways — a server-sent event reaches the
//! client as the cell sends it — with a connect timeout and a read timeout
//! (a stream may last, it may not stall). A body of known length up to
//! [`REPLAY_CAP`] is buffered instead, so that it can be sent again: when
//! the cell answers `tenant_suspended` for a tenant active here (a resume
//! whose mirror failed), the status is mirrored again and the request sent
//! once more; a streamed request gets the cell's answer.
//!
//! Invariants: a request routed to a cell is never served from this
//! deployment's store — a cell that does not answer gives `cell_unavailable`
//! (502); the cell's credential is opened only into the outgoing header.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use bulkhead_core::keys::Principal;
use bulkhead_core::tenancy::TenantStatus;
use bulkhead_core::{Code, Error, OperatorCtx, TenantCtx, TenantId};
use bulkhead_store::Cell;
use futures::TryStreamExt as _;

use crate::auth::TENANT_HEADER;
use crate::cells::unavailable;
use crate::{ApiError, AppState};

/// Marks a request a control plane forwarded, so a cell that points back
/// at its control plane shows as a loop instead of forwarding forever.
const FORWARDED_MARK: &str = "x-bulkhead-forwarded";
/// On forwarded responses: the cell that answered.
pub const CELL_HEADER: &str = "x-bulkhead-cell";

/// The operator's per-tenant settings routes, served where the tenant's
/// data is.
const TENANT_SETTINGS: &[&str] = &["budget", "limits", "pricing", "models", "sandbox"];

/// Where a request goes, and as whom.
enum Decision {
    /// Served here.
    Local,
    /// The tenant's keys and control row: the control plane's own records.
    /// For a tenant in a cell, served by `cells::control_plane_routes`
    /// (whose key changes are mirrored to the cell); else as usual.
    Keys(TenantCtx),
    /// Forwarded if the tenant is placed in a cell (`operator`: with the
    /// cell's operator key instead of the caller's).
    Tenant { ctx: TenantCtx, operator: bool },
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

/// Routes that belong to the operator or to the control plane's own
/// records, whoever the request names.
fn control_plane_route(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["v1", "tenants" | "operator-keys" | "cells" | "master-key" | "overview" | "keys" | "tenant", ..]
    )
}

fn decide(principal: &Principal, req: &Request) -> Decision {
    let segs = segments(req.uri().path());
    match principal {
        // A tenant key naming a tenant is refused here, by the extractors.
        Principal::Tenant(_) if req.headers().contains_key(TENANT_HEADER) => Decision::Local,
        Principal::Tenant(ctx) => match segs.as_slice() {
            ["v1", "keys", ..] | ["v1", "tenant"] => Decision::Keys(ctx.clone()),
            // Operator routes: refused here.
            _ if control_plane_route(&segs) => Decision::Local,
            ["v1", ..] => Decision::Tenant { ctx: ctx.clone(), operator: false },
            _ => Decision::Local,
        },
        Principal::Operator(op) => {
            let named: Option<TenantId> =
                req.headers().get(TENANT_HEADER).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
            if let ["v1", "tenants", id, rest, ..] = segs.as_slice()
                && let Ok(id) = id.parse::<TenantId>()
            {
                if TENANT_SETTINGS.contains(rest) {
                    return Decision::Tenant { ctx: op.act_for(id), operator: true };
                }
                if *rest == "keys" {
                    return Decision::Keys(op.act_for(id));
                }
            }
            match named {
                Some(id) if matches!(segs.as_slice(), ["v1", "keys", ..] | ["v1", "tenant"]) => {
                    Decision::Keys(op.act_for(id))
                }
                Some(id) if !control_plane_route(&segs) => {
                    Decision::Tenant { ctx: op.act_for(id), operator: true }
                }
                _ => Decision::Local,
            }
        }
    }
}

/// Serves the request here, or forwards it to the tenant's cell. Runs
/// inside authentication, with the `Principal` in the request's extensions.
pub async fn dispatch(state: &AppState, principal: &Principal, req: Request, next: Next) -> Response {
    match decide(principal, &req) {
        Decision::Local => next.run(req).await,
        Decision::Keys(ctx) => match state.store.tenant_cell(&ctx).await {
            Ok(None) => next.run(req).await,
            Ok(Some(cell)) => crate::cells::serve_control_plane(state, ctx, cell, req).await,
            Err(err) => axum::response::IntoResponse::into_response(ApiError::from(err)),
        },
        Decision::Tenant { ctx, operator } => match placed(state, &ctx).await {
            Ok(None) => next.run(req).await,
            Ok(Some(cell)) => match forward(state, &cell, &ctx, operator, req).await {
                Ok(response) => response,
                Err(err) => axum::response::IntoResponse::into_response(ApiError(err)),
            },
            Err(err) => axum::response::IntoResponse::into_response(ApiError(err)),
        },
    }
}

/// Largest request body buffered so that it can be sent to a cell again
/// (see `forward`); a larger one, or one of unknown length, streams.
const REPLAY_CAP: usize = 1024 * 1024;

/// How long a request waits for a move of its tenant out of a cell.
const MOVE_WAIT: Duration = Duration::from_secs(30);

/// The tenant's cell, if it has one. While the tenant is being moved out
/// of its cell the request waits (up to [`MOVE_WAIT`], then
/// `tenant_moving`), and then goes where the tenant is.
async fn placed(state: &AppState, ctx: &TenantCtx) -> Result<Option<Cell>, Error> {
    let deadline = tokio::time::Instant::now() + MOVE_WAIT;
    loop {
        let Some(cell) = state.store.tenant_cell(ctx).await? else { return Ok(None) };
        // The system reads routing data, as the routing store itself does.
        let route = state.store.tenant_route(&OperatorCtx::local_cli(), ctx.tenant_id()).await?;
        if route.is_none_or(|r| r.moving_to.is_none()) {
            return Ok(Some(cell));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::new(
                Code::TenantMoving,
                "the tenant is moving out of its cell; retry shortly",
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// For a cell that answered `tenant_suspended`: if the tenant is active
/// here (a resume whose mirror failed), mirrors the status again; `true`
/// when the cell now has it active. The control plane's record decides:
/// it refuses a suspended tenant's keys itself, so the reverse drift never
/// reaches a cell.
async fn remirror_status(state: &AppState, ctx: &TenantCtx, cell: &Cell) -> bool {
    // The system reads the tenant's record, as routing does.
    let system = OperatorCtx::local_cli();
    match state.store.get_tenant(&system, ctx.tenant_id()).await {
        Ok(t) if t.status == TenantStatus::Active => {}
        Ok(_) => return false,
        Err(e) => {
            tracing::warn!(tenant = %ctx.tenant_id(), error = %e, "could not read the tenant to re-mirror its status");
            return false;
        }
    }
    match state.cells.mirror_status(&system, ctx.tenant_id(), TenantStatus::Active).await {
        Ok(()) => {
            tracing::info!(cell = %cell.name, tenant = %ctx.tenant_id(), "cell held an active tenant suspended; status re-mirrored");
            true
        }
        Err(e) => {
            tracing::warn!(cell = %cell.name, tenant = %ctx.tenant_id(), error = %e, "re-mirroring the tenant's status failed");
            false
        }
    }
}

/// RFC 9110 §7.6.1 and the old `Keep-Alive`/`Proxy-Connection`.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// End-to-end headers of `from`, without hop-by-hop ones and those its
/// `Connection` header lists.
fn end_to_end(from: &HeaderMap) -> HeaderMap {
    let listed: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if hop_by_hop(name) || listed.iter().any(|l| l == name.as_str()) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

async fn forward(
    state: &AppState,
    cell: &Cell,
    ctx: &TenantCtx,
    operator: bool,
    req: Request,
) -> Result<Response, Error> {
    if req.headers().contains_key(FORWARDED_MARK) {
        return Err(Error::new(
            Code::CellUnavailable,
            format!("cell {:?} forwards back to its control plane; check its base URL", cell.name),
        ));
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{path}", cell.base_url);

    let mut headers = end_to_end(&parts.headers);
    let host = headers.remove(header::HOST);
    if operator {
        let credential = state.cells.credential(cell)?;
        let bearer = HeaderValue::try_from(format!("Bearer {}", credential.expose()))
            .map_err(|_| Error::internal("a cell credential is not a header value"))?;
        headers.insert(header::AUTHORIZATION, bearer);
        // The cell acts for the tenant as its operator.
        headers.insert(
            HeaderName::from_static(TENANT_HEADER),
            HeaderValue::try_from(ctx.tenant_id().to_string()).expect("a uuid is a header value"),
        );
    }
    let client_ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    if let Some(ip) = client_ip {
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(before) => format!("{before}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::try_from(xff) {
            headers.insert("x-forwarded-for", v);
        }
    }
    if let Some(host) = host
        && !headers.contains_key("x-forwarded-host")
    {
        headers.insert("x-forwarded-host", host);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    headers.insert(FORWARDED_MARK, HeaderValue::from_static("1"));

    tracing::debug!(cell = %cell.name, tenant = %ctx.tenant_id(), operator, "forwarding to cell");
    // A small body of known length is buffered, so the request can be sent
    // again (see below); any other streams through and cannot be.
    let replayable =
        axum::body::HttpBody::size_hint(&body).exact().is_some_and(|len| len <= REPLAY_CAP as u64);
    let (mut body, buffered) = if replayable {
        let bytes = axum::body::to_bytes(body, REPLAY_CAP)
            .await
            .map_err(|_| Error::invalid("the request body is larger than its Content-Length said"))?;
        (None, Some(bytes))
    } else {
        (Some(body), None)
    };
    let send = |body: reqwest::Body| {
        state.cells.http().request(parts.method.clone(), &url).headers(headers.clone()).body(body).send()
    };
    let outgoing = |body: &mut Option<Body>| match (&buffered, body.take()) {
        (Some(bytes), _) => reqwest::Body::from(bytes.clone()),
        (None, Some(stream)) => reqwest::Body::wrap_stream(stream.into_data_stream()),
        (None, None) => reqwest::Body::from(Vec::new()),
    };
    let mut upstream = send(outgoing(&mut body)).await.map_err(|e| unavailable(&cell.name, e))?;

    let respond = |status: reqwest::StatusCode, from: &HeaderMap| {
        let mut response = Response::builder().status(status.as_u16());
        if let Some(out) = response.headers_mut() {
            *out = end_to_end(from);
            out.insert(
                CELL_HEADER,
                HeaderValue::try_from(cell.name.as_str()).expect("cell names are header-safe"),
            );
        }
        response
    };
    // The cell holds a tenant suspended that is active here: a resume
    // whose mirror failed. Mirror again; a replayable request is sent once
    // more, a streamed one gets the cell's answer (the next one works).
    // The body of a 403 is read to learn its code (error bodies are small).
    if upstream.status() == reqwest::StatusCode::FORBIDDEN {
        let (status, headers) = (upstream.status(), upstream.headers().clone());
        let bytes = upstream.bytes().await.map_err(|e| unavailable(&cell.name, e))?;
        let code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error")?.get("code")?.as_str().map(str::to_owned));
        let retry = code.as_deref() == Some(Code::TenantSuspended.as_str())
            && remirror_status(state, ctx, cell).await
            && buffered.is_some();
        if !retry {
            return respond(status, &headers).body(Body::from(bytes)).map_err(Error::internal);
        }
        tracing::info!(cell = %cell.name, tenant = %ctx.tenant_id(), "sending again after re-mirroring the status");
        upstream = send(outgoing(&mut body)).await.map_err(|e| unavailable(&cell.name, e))?;
    }
    let status = upstream.status();
    if status == reqwest::StatusCode::UNAUTHORIZED && !operator {
        // The cell does not know a key this control plane accepted: its
        // mirror is behind (a failed mirror). Mirror again for next time.
        let cells = state.cells.clone();
        let (ctx, cell) = (ctx.clone(), cell.clone());
        tokio::spawn(async move {
            if let Err(e) = cells.mirror_keys(&ctx, &cell).await {
                tracing::warn!(error = %e, "re-mirroring key records failed");
            }
        });
    }
    let response = respond(status, upstream.headers());
    let cell_name = cell.name.clone();
    let stream = upstream.bytes_stream().map_err(move |e| {
        tracing::warn!(cell = %cell_name, error = %e, "stream from cell broke off");
        std::io::Error::other(e)
    });
    response.body(Body::from_stream(stream)).map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        let out = end_to_end(&h);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "authorization"]);
    }

    #[test]
    fn control_plane_routes_stay_here() {
        for path in [
            "/v1/tenants",
            "/v1/tenants/x/keys",
            "/v1/cells/a",
            "/v1/master-key/check",
            "/v1/overview",
            "/v1/keys",
            "/v1/tenant",
        ] {
            assert!(control_plane_route(&segments(path)), "{path}");
        }
        for path in ["/v1/agents", "/v1/chat/completions", "/v1/runs/x/events", "/v1/usage", "/v1/audit"] {
            assert!(!control_plane_route(&segments(path)), "{path}");
        }
    }
}
