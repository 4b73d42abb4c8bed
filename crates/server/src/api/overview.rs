//! The operator's live overview (`GET /v1/overview`): per tenant, the runs
//! waiting and running (from the store, so every process sees the whole
//! queue) and the requests this process refused for a limit, the budget or
//! a policy.
//!
//! Refusals are counted by [`count_refusals`], a layer inside the
//! authentication layer: it sees the caller (a tenant key, or an operator
//! naming a tenant in `X-Tenant-ID`) and the response's status — 429 is a
//! rate or concurrency limit (`rate_limited`, `queue_full`), 402 the budget,
//! and a 403 whose code is not plain `forbidden` (a scope problem, not a
//! refusal of work) a policy (`model_not_allowed`, `egress_denied`, …).
//! Counts live in this process, like the run metrics of `/metrics`, and
//! start at zero when it starts; refusals that happen inside a run (a
//! budget stop, a tool the agent may not use) are not HTTP answers, and show
//! in the run's status and the tenant's audit log instead. At most
//! [`MAX_TENANTS`] tenants are counted one by one; refusals of further
//! tenants go to `other`.
//!
//! Tenants placed in cells are served there: their queue and refusals come
//! from each cell's own overview (its placed tenants' rows only); a cell
//! that does not answer is named in `missing_cells`.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use bulkhead_core::TenantId;
use bulkhead_core::keys::Principal;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{Operator, TENANT_HEADER};
use crate::error::{ApiResult, ErrorBody};

/// Tenants counted one by one; past this, refusals count as `other`.
pub const MAX_TENANTS: usize = 100_000;

/// Largest error body read to learn a 403's code (error bodies are small).
const ERROR_BODY_CAP: usize = 64 * 1024;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(overview))
}

/// Requests refused, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Refusals {
    /// 429: a rate or concurrency limit, or a full run queue.
    pub rate_limit: u64,
    /// 402: the budget does not cover the request.
    pub budget: u64,
    /// 403 for a policy: a model not allowed, a refused egress, …
    pub policy: u64,
}

impl Refusals {
    fn add(&mut self, kind: Refusal) {
        match kind {
            Refusal::RateLimit => self.rate_limit += 1,
            Refusal::Budget => self.budget += 1,
            Refusal::Policy => self.policy += 1,
        }
    }

    fn absorb(&mut self, other: Refusals) {
        self.rate_limit += other.rate_limit;
        self.budget += other.budget;
        self.policy += other.policy;
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    RateLimit,
    Budget,
    Policy,
}

/// What a response says about the work it refused, if anything. `code` is
/// the error code of a 403 (other statuses do not need it).
fn classify(status: StatusCode, code: Option<&str>) -> Option<Refusal> {
    match status {
        StatusCode::TOO_MANY_REQUESTS => Some(Refusal::RateLimit),
        StatusCode::PAYMENT_REQUIRED => Some(Refusal::Budget),
        // `forbidden` is the key's scope, `tenant_suspended` the tenant's
        // state: neither refuses work the tenant may otherwise do.
        StatusCode::FORBIDDEN => match code {
            Some("forbidden" | "tenant_suspended") | None => None,
            Some(_) => Some(Refusal::Policy),
        },
        _ => None,
    }
}

#[derive(Default)]
struct Tally {
    tenants: BTreeMap<TenantId, Refusals>,
    other: Refusals,
}

static TALLY: Mutex<Option<Tally>> = Mutex::new(None);

/// When this process started counting (the first request through the layer
/// or the first overview, whichever came first).
static SINCE: LazyLock<OffsetDateTime> = LazyLock::new(OffsetDateTime::now_utc);

fn record(tenant: TenantId, kind: Refusal) {
    let mut guard = TALLY.lock().expect("refusal tally");
    let tally = guard.get_or_insert_with(Tally::default);
    let full = tally.tenants.len() >= MAX_TENANTS;
    match tally.tenants.get_mut(&tenant) {
        Some(counts) => counts.add(kind),
        None if full => tally.other.add(kind),
        None => tally.tenants.entry(tenant).or_default().add(kind),
    }
}

fn snapshot() -> (BTreeMap<TenantId, Refusals>, Refusals) {
    let guard = TALLY.lock().expect("refusal tally");
    guard.as_ref().map(|t| (t.tenants.clone(), t.other)).unwrap_or_default()
}

/// Counts the refusals of requests made for a tenant. Goes inside the
/// authentication layer, which leaves the caller in the request.
pub async fn count_refusals(req: Request, next: Next) -> Response {
    LazyLock::force(&SINCE);
    let tenant = match req.extensions().get::<Principal>() {
        Some(Principal::Tenant(ctx)) => Some(ctx.tenant_id()),
        // An operator acting for a tenant: a refusal that reached a handler
        // means the tenant exists (`auth::act_for` checks it first).
        Some(Principal::Operator(_)) => {
            req.headers().get(TENANT_HEADER).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
        }
        None => None,
    };
    let response = next.run(req).await;
    let Some(tenant) = tenant else { return response };
    let status = response.status();
    if status != StatusCode::FORBIDDEN {
        if let Some(kind) = classify(status, None) {
            record(tenant, kind);
        }
        return response;
    }
    // A 403 names its reason only in the body's code: read it, then put
    // the same bytes back.
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ERROR_BODY_CAP).await else {
        tracing::warn!("a 403 body was too large to read its code");
        return Response::from_parts(parts, Body::empty());
    };
    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error")?.get("code")?.as_str().map(str::to_owned));
    if let Some(kind) = classify(status, code.as_deref()) {
        record(tenant, kind);
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// One tenant's live numbers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantActivity {
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    /// Runs waiting in the queue.
    pub queued: i64,
    /// Runs being executed.
    pub running: i64,
    /// Requests refused by this process since `counting_since`.
    pub refusals: Refusals,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// Tenants with queued or running runs or with refusals, by id; a
    /// tenant not listed has none.
    pub tenants: Vec<TenantActivity>,
    /// Refusals of tenants past the per-process counting cap.
    pub other_refusals: Refusals,
    /// Since when this process counts refusals (RFC 3339).
    pub counting_since: String,
    /// Cells holding dedicated tenants that did not answer, so their
    /// tenants are not in `tenants`. Absent when every cell answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_cells: Vec<String>,
}

/// Queue depth and active runs per tenant, and the requests refused for a
/// limit, the budget or a policy (counted by the serving process since it
/// started). Operator only.
#[utoipa::path(get, path = "/v1/overview", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = Overview), (status = 403, body = ErrorBody)))]
async fn overview(State(state): State<AppState>, Operator(op): Operator) -> ApiResult<Json<Overview>> {
    let queue = state.store.queue_overview(&op).await?;
    let (mut refusals, other_refusals) = snapshot();
    let mut tenants: BTreeMap<TenantId, TenantActivity> = BTreeMap::new();
    for q in queue {
        let counted = refusals.remove(&q.tenant_id).unwrap_or_default();
        tenants.insert(
            q.tenant_id,
            TenantActivity {
                tenant_id: q.tenant_id,
                queued: q.queued,
                running: q.running,
                refusals: counted,
            },
        );
    }
    for (tenant_id, counted) in refusals.into_iter().filter(|(_, r)| !r.is_zero()) {
        tenants.insert(tenant_id, TenantActivity { tenant_id, queued: 0, running: 0, refusals: counted });
    }
    // Tenants placed in cells: their runs and the refusals of their
    // (forwarded) requests are the cells'. Only the placed tenants' rows of
    // each cell count; its other tenants and its `other_refusals` are not
    // this control plane's.
    let cells = state.cells.ask_placed_cells(&op, "/v1/overview").await?;
    for (placed, answer) in cells.answers {
        let rows: Vec<TenantActivity> = serde_json::from_value(answer["tenants"].clone()).map_err(|e| {
            crate::ApiError(bulkhead_core::Error::internal(format!("a cell's overview did not parse: {e}")))
        })?;
        for row in rows.into_iter().filter(|r| placed.contains(&r.tenant_id)) {
            let entry = tenants.entry(row.tenant_id).or_insert(TenantActivity {
                tenant_id: row.tenant_id,
                queued: 0,
                running: 0,
                refusals: Refusals::default(),
            });
            entry.queued += row.queued;
            entry.running += row.running;
            entry.refusals.absorb(row.refusals);
        }
    }
    Ok(Json(Overview {
        tenants: tenants.into_values().collect(),
        other_refusals,
        counting_since: super::agents::rfc3339(*SINCE),
        missing_cells: cells.missing,
    }))
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::HeaderValue;
    use axum::routing::get;
    use bulkhead_core::{Code, OperatorCtx};
    use tower::ServiceExt as _;

    use super::*;
    use crate::ApiError;

    #[test]
    fn statuses_and_codes_map_to_reasons() {
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS, None), Some(Refusal::RateLimit));
        assert_eq!(classify(StatusCode::PAYMENT_REQUIRED, None), Some(Refusal::Budget));
        assert_eq!(classify(StatusCode::FORBIDDEN, Some("model_not_allowed")), Some(Refusal::Policy));
        assert_eq!(classify(StatusCode::FORBIDDEN, Some("egress_denied")), Some(Refusal::Policy));
        assert_eq!(classify(StatusCode::FORBIDDEN, Some("forbidden")), None);
        assert_eq!(classify(StatusCode::FORBIDDEN, Some("tenant_suspended")), None);
        assert_eq!(classify(StatusCode::FORBIDDEN, None), None);
        assert_eq!(classify(StatusCode::NOT_FOUND, Some("not_found")), None);
        assert_eq!(classify(StatusCode::OK, None), None);
    }

    /// A router that answers `/{code}` with that error, behind the counting
    /// layer, with `principal` put where the authentication layer puts it.
    fn app(principal: Principal) -> Router {
        async fn fail(
            axum::extract::Path(code): axum::extract::Path<String>,
        ) -> Result<&'static str, ApiError> {
            let code = match code.as_str() {
                "rate_limited" => Code::RateLimited,
                "queue_full" => Code::QueueFull,
                "budget_exceeded" => Code::BudgetExceeded,
                "model_not_allowed" => Code::ModelNotAllowed,
                "forbidden" => Code::Forbidden,
                "not_found" => Code::NotFound,
                _ => return Ok("fine"),
            };
            Err(ApiError::new(code, "refused in a test"))
        }
        Router::new().route("/{code}", get(fail)).layer(axum::middleware::from_fn(count_refusals)).layer(
            axum::middleware::from_fn(move |mut req: Request, next: Next| {
                let principal = principal.clone();
                async move {
                    req.extensions_mut().insert(principal);
                    next.run(req).await
                }
            }),
        )
    }

    async fn call(app: &Router, path: &str, tenant_header: Option<TenantId>) -> (StatusCode, String) {
        let mut req = Request::builder().uri(path).body(Body::empty()).unwrap();
        if let Some(t) = tenant_header {
            req.headers_mut().insert(TENANT_HEADER, HeaderValue::from_str(&t.to_string()).unwrap());
        }
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn counted(tenant: TenantId) -> Refusals {
        snapshot().0.get(&tenant).copied().unwrap_or_default()
    }

    #[tokio::test]
    async fn refusals_are_counted_per_tenant_and_bodies_pass_through() {
        let op = OperatorCtx::local_cli();
        let (a, b) = (TenantId::new(), TenantId::new());
        let as_a = app(Principal::Tenant(op.act_for(a)));
        for path in ["/rate_limited", "/queue_full", "/budget_exceeded", "/model_not_allowed", "/forbidden"] {
            call(&as_a, path, None).await;
        }
        call(&as_a, "/not_found", None).await;
        let (status, body) = call(&as_a, "/ok", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fine"));
        // The 403's body, read for its code, reaches the caller intact.
        let (status, body) = call(&as_a, "/model_not_allowed", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "model_not_allowed");
        assert_eq!(counted(a), Refusals { rate_limit: 2, budget: 1, policy: 2 });

        // An operator acting for B counts for B; an operator alone for no one.
        let as_op = app(Principal::Operator(op.clone()));
        call(&as_op, "/budget_exceeded", Some(b)).await;
        call(&as_op, "/budget_exceeded", None).await;
        assert_eq!(counted(b), Refusals { rate_limit: 0, budget: 1, policy: 0 });
        assert_eq!(counted(a), Refusals { rate_limit: 2, budget: 1, policy: 2 });
    }
}
