//! Usage: summaries (`GET /v1/usage`), export as CSV or CloudEvents JSON
//! lines (`GET /v1/usage/export`), and ingestion of usage measured outside
//! this process (`POST /v1/usage/events`, operator only).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bulkhead_core::{Code, Error, Money, TenantCtx};
use bulkhead_metering::TokenUsage;
use bulkhead_metering::export::{CSV_HEADER, cloudevent_line, csv_line};
use bulkhead_store::{GroupBy, UsageEvent, UsageKind, UsageQuery, UsageRow, UsageScope};
use futures::stream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, OperatorForTenant};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(usage_summary))
        .routes(routes!(usage_export))
        .routes(routes!(ingest_events))
}

/// Filters shared by the summary and the export.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start (inclusive): RFC 3339 time or `YYYY-MM-DD` (UTC midnight).
    pub from: Option<String>,
    /// End (exclusive): RFC 3339 time or `YYYY-MM-DD`.
    pub to: Option<String>,
    /// `llm`, `embedding`, `tool_call`, `sandbox`, `storage` or `run_time`.
    pub kind: Option<String>,
    /// Model (or tool, or resource) name.
    pub model: Option<String>,
    pub agent_id: Option<Uuid>,
    pub run_id: Option<Uuid>,
    /// Comma-separated: `tenant` (operator), `day`, `kind`, `model`, `agent`.
    pub group_by: Option<String>,
    /// Export only: `csv` (default) or `cloudevents`.
    pub format: Option<String>,
}

fn parse_time(field: &str, raw: &str) -> ApiResult<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(t);
    }
    bulkhead_store::usage::parse_day(raw).map(|d| d.midnight().assume_utc()).ok_or_else(|| {
        ApiError::new(
            Code::InvalidRequest,
            format!("`{field}` must be an RFC 3339 time or a YYYY-MM-DD date"),
        )
    })
}

impl UsageParams {
    fn query(&self, operator_wide: bool) -> ApiResult<UsageQuery> {
        let from = self.from.as_deref().map(|s| parse_time("from", s)).transpose()?;
        let to = self.to.as_deref().map(|s| parse_time("to", s)).transpose()?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(ApiError::new(Code::InvalidRequest, "`from` must be before `to`"));
        }
        let mut group_by = Vec::new();
        for part in self.group_by.as_deref().unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty())
        {
            let g: GroupBy = part.parse()?;
            if g == GroupBy::Tenant && !operator_wide {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    "group_by=tenant is for operators across tenants",
                ));
            }
            if !group_by.contains(&g) {
                group_by.push(g);
            }
        }
        Ok(UsageQuery {
            from,
            to,
            kind: self.kind.as_deref().map(str::parse::<UsageKind>).transpose()?,
            name: self.model.clone(),
            agent_id: self.agent_id,
            run_id: self.run_id,
            group_by,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageRowView {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub tenant_id: Option<bulkhead_core::TenantId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Uuid>,
    pub events: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub quantity: i64,
    /// Exact decimal string, e.g. `"0.0075"`.
    #[schema(value_type = String)]
    pub cost_usd: Money,
}

impl UsageRowView {
    /// Adds `other`'s sums to this row's (same group).
    fn absorb(&mut self, other: &UsageRowView) {
        self.events += other.events;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.quantity += other.quantity;
        self.cost_usd = self.cost_usd.saturating_add(other.cost_usd);
    }

    /// Compares two rows by the groups, in the order asked (as the store
    /// orders them).
    fn cmp_by(&self, other: &Self, group_by: &[GroupBy]) -> std::cmp::Ordering {
        group_by
            .iter()
            .map(|g| match g {
                GroupBy::Tenant => self.tenant_id.cmp(&other.tenant_id),
                GroupBy::Day => self.day.cmp(&other.day),
                GroupBy::Kind => self.kind.cmp(&other.kind),
                GroupBy::Name => self.model.cmp(&other.model),
                GroupBy::Agent => self.agent_id.cmp(&other.agent_id),
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

impl From<UsageRow> for UsageRowView {
    fn from(r: UsageRow) -> Self {
        Self {
            tenant_id: r.tenant_id,
            day: r.day.map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())),
            kind: r.kind.map(|k| k.as_str().to_owned()),
            model: r.name,
            agent_id: r.agent_id,
            events: r.events,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            quantity: r.quantity,
            cost_usd: r.cost,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageSummary {
    pub data: Vec<UsageRowView>,
    /// Operator, all tenants: cells holding dedicated tenants that did not
    /// answer, so their tenants' usage is not in `data`. Absent when every
    /// cell answered (and for one tenant's usage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_cells: Vec<String>,
}

/// Usage and cost, grouped as asked: a tenant admin sees its own; an
/// operator sees the tenant in `X-Tenant-ID`, or every tenant without it.
/// Every tenant includes those placed in cells; a cell that does not answer
/// is named in `missing_cells`.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", security(("bearer" = [])), params(UsageParams),
    responses((status = 200, body = UsageSummary), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn usage_summary(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> ApiResult<Json<UsageSummary>> {
    if params.format.is_some() {
        return Err(ApiError::new(Code::InvalidRequest, "`format` belongs to /v1/usage/export"));
    }
    let rows = match &caller {
        Caller::Tenant(ctx) => {
            state.store.usage_summary(UsageScope::Tenant(ctx), &params.query(false)?).await?
        }
        Caller::Operator(op) => return platform_usage(&state, op, &params).await.map(Json),
    };
    Ok(Json(UsageSummary {
        data: rows.into_iter().map(UsageRowView::from).collect(),
        missing_cells: Vec::new(),
    }))
}

/// Every tenant's usage: this store's, and that of the tenants placed in
/// cells, asked of each cell grouped by tenant (a cell may serve other
/// tenants, whose rows are dropped), merged into the groups asked for.
async fn platform_usage(
    state: &AppState,
    op: &bulkhead_core::OperatorCtx,
    params: &UsageParams,
) -> ApiResult<UsageSummary> {
    let query = params.query(true)?;
    let by_tenant = query.group_by.contains(&GroupBy::Tenant);
    // The cells are asked with `tenant` among the groups, to keep only
    // their placed tenants' rows.
    let mut url = reqwest::Url::parse("http://cell/v1/usage").expect("a valid URL");
    {
        let mut pairs = url.query_pairs_mut();
        let raw = [
            ("from", params.from.as_deref()),
            ("to", params.to.as_deref()),
            ("kind", params.kind.as_deref()),
            ("model", params.model.as_deref()),
        ];
        for (name, value) in raw {
            if let Some(v) = value {
                pairs.append_pair(name, v);
            }
        }
        for (name, value) in [("agent_id", params.agent_id), ("run_id", params.run_id)] {
            if let Some(v) = value {
                pairs.append_pair(name, &v.to_string());
            }
        }
        let name = |g: &GroupBy| match g {
            GroupBy::Tenant => "tenant",
            GroupBy::Day => "day",
            GroupBy::Kind => "kind",
            GroupBy::Name => "model",
            GroupBy::Agent => "agent",
        };
        let mut groups: Vec<&str> = query.group_by.iter().map(name).collect();
        if !by_tenant {
            groups.push("tenant");
        }
        pairs.append_pair("group_by", &groups.join(","));
    }
    let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    let cells = state.cells.ask_placed_cells(op, &path).await?;
    let local = state.store.usage_summary(UsageScope::Platform(op), &query).await?;
    let mut data: Vec<UsageRowView> = local.into_iter().map(UsageRowView::from).collect();
    if cells.answers.is_empty() {
        return Ok(UsageSummary { data, missing_cells: cells.missing });
    }
    for (tenants, answer) in cells.answers {
        let rows: Vec<UsageRowView> = serde_json::from_value(answer["data"].clone())
            .map_err(|e| ApiError(Error::internal(format!("a cell's usage did not parse: {e}"))))?;
        for mut row in rows.into_iter().filter(|r| r.tenant_id.is_some_and(|t| tenants.contains(&t))) {
            if !by_tenant {
                row.tenant_id = None;
            }
            data.push(row);
        }
    }
    // Same groups, one row; in the store's order.
    data.sort_by(|a, b| a.cmp_by(b, &query.group_by));
    let mut merged: Vec<UsageRowView> = Vec::with_capacity(data.len());
    for row in data {
        match merged.last_mut() {
            Some(last) if last.cmp_by(&row, &query.group_by).is_eq() => last.absorb(&row),
            _ => merged.push(row),
        }
    }
    Ok(UsageSummary { data: merged, missing_cells: cells.missing })
}

const EXPORT_PAGE: i64 = 1_000;

/// Every usage event of one tenant in ledger order, streamed as CSV or as
/// CloudEvents JSON lines (`format=cloudevents`). Operators name the tenant
/// with `X-Tenant-ID`.
#[utoipa::path(get, path = "/v1/usage/export", tag = "usage", security(("bearer" = [])), params(UsageParams),
    responses((status = 200, content_type = "text/csv", body = String),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn usage_export(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> ApiResult<Response> {
    let Caller::Tenant(ctx) = caller else {
        return Err(ApiError::new(Code::InvalidRequest, "name the tenant to export in X-Tenant-ID"));
    };
    let query = params.query(false)?;
    if !query.group_by.is_empty() {
        return Err(ApiError::new(Code::InvalidRequest, "an export lists events; it takes no group_by"));
    }
    let csv = match params.format.as_deref().unwrap_or("csv") {
        "csv" => true,
        "cloudevents" => false,
        other => {
            return Err(ApiError::new(
                Code::InvalidRequest,
                format!("unknown format `{other}`; use csv or cloudevents"),
            ));
        }
    };
    struct Cursor {
        state: AppState,
        ctx: TenantCtx,
        query: UsageQuery,
        after: i64,
        done: bool,
        header: bool,
    }
    let start = Cursor { state, ctx, query, after: 0, done: false, header: csv };
    let body = stream::unfold(start, move |mut c| async move {
        if c.header {
            c.header = false;
            return Some((Ok::<_, std::io::Error>(CSV_HEADER.to_owned()), c));
        }
        if c.done {
            return None;
        }
        match c.state.store.usage_events(&c.ctx, &c.query, c.after, EXPORT_PAGE).await {
            Ok(page) => {
                c.done = (page.len() as i64) < EXPORT_PAGE;
                let last = page.last()?;
                c.after = last.seq;
                let chunk: String =
                    page.iter().map(|u| if csv { csv_line(u) } else { cloudevent_line(u) }).collect();
                Some((Ok(chunk), c))
            }
            Err(e) => {
                tracing::error!(error = %e, "usage export failed mid-stream");
                Some((Err(std::io::Error::other("export failed")), Cursor { done: true, ..c }))
            }
        }
    });
    let content_type = if csv { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
}

/// One usage event measured elsewhere. Cost comes from the catalog and the
/// tenant's pricing unless given (`storage`, `run_time` and overrides).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestEvent {
    /// Idempotency key: the same id for the same tenant is recorded once.
    pub id: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub time: Option<OffsetDateTime>,
    /// `llm`, `embedding`, `tool_call`, `sandbox`, `storage` or `run_time`.
    #[schema(value_type = String)]
    pub kind: UsageKind,
    /// Model for `llm`/`embedding`, tool for `tool_call`, resource otherwise.
    pub name: String,
    #[serde(default)]
    pub input_tokens: i64,
    #[serde(default)]
    pub output_tokens: i64,
    #[serde(default)]
    pub cached_input_tokens: i64,
    #[serde(default)]
    pub quantity: i64,
    pub unit: Option<String>,
    #[schema(value_type = Option<String>)]
    pub cost_usd: Option<Money>,
    pub run_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    /// At most 1,000 events.
    pub events: Vec<IngestEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResult {
    /// Events recorded now.
    pub recorded: usize,
    /// Events whose id was already recorded.
    pub duplicates: usize,
}

const MAX_INGEST: usize = 1_000;

/// Record usage measured outside this process (operator, for the tenant in
/// `X-Tenant-ID`). Answers once every event is durable; every event is
/// checked before any is written.
#[utoipa::path(post, path = "/v1/usage/events", tag = "usage", security(("bearer" = [])), request_body = IngestRequest,
    responses((status = 200, body = IngestResult), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn ingest_events(
    State(state): State<AppState>,
    OperatorForTenant(ctx): OperatorForTenant,
    ApiJson(body): ApiJson<IngestRequest>,
) -> ApiResult<Json<IngestResult>> {
    if body.events.is_empty() || body.events.len() > MAX_INGEST {
        return Err(ApiError::new(Code::InvalidRequest, format!("send 1 to {MAX_INGEST} events")));
    }
    let terms = state.metering.terms(&ctx).await?;
    let pricing = state.metering.pricing();
    let now = OffsetDateTime::now_utc();
    let mut events = Vec::with_capacity(body.events.len());
    for (i, e) in body.events.into_iter().enumerate() {
        let at =
            |err: Error| ApiError(Error { message: format!("events[{i}]: {}", err.message).into(), ..err });
        let cost = match (e.cost_usd, e.kind) {
            (Some(cost), _) => cost,
            (None, UsageKind::Llm | UsageKind::Embedding) => {
                let usage = TokenUsage {
                    input: e.input_tokens,
                    output: e.output_tokens,
                    cached_input: e.cached_input_tokens,
                };
                if [usage.input, usage.output, usage.cached_input].iter().any(|v| *v < 0) {
                    return Err(at(Error::invalid("token counts cannot be negative")));
                }
                pricing.llm_cost(&terms.pricing, &e.name, usage).map_err(at)?
            }
            (None, UsageKind::ToolCall) => pricing.tool_cost(&terms.pricing, &e.name, e.quantity.max(1)),
            (None, UsageKind::Sandbox) => pricing.sandbox_cost(&terms.pricing, e.quantity),
            (None, UsageKind::Storage | UsageKind::RunTime) => Money::ZERO,
        };
        let event = UsageEvent {
            id: e.id,
            ts: e.time.unwrap_or(now),
            kind: e.kind,
            name: e.name,
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
            cached_input_tokens: e.cached_input_tokens,
            quantity: e.quantity,
            unit: e.unit,
            cost,
            run_id: e.run_id,
            agent_id: e.agent_id,
            request_id: e.request_id,
            attributes: e.attributes.unwrap_or_else(|| serde_json::json!({})),
        };
        bulkhead_store::usage::validate_event(&event).map_err(at)?;
        events.push(event);
    }
    let writes = events.into_iter().map(|e| state.metering.record(&ctx, e));
    let outcomes = futures::future::join_all(writes).await;
    let mut result = IngestResult { recorded: 0, duplicates: 0 };
    for outcome in outcomes {
        if outcome? {
            result.recorded += 1;
        } else {
            result.duplicates += 1;
        }
    }
    Ok(Json(result))
}
