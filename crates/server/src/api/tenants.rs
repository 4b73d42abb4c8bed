//! Operator: tenants (`/v1/tenants`) and a tenant's own view (`/v1/tenant`).
//! Each change is audited in the platform chain and, while the tenant
//! exists, in its own (names and tiers only; metadata stays out).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_audit::{AuditEvent, action};
use bulkhead_core::tenancy::TenantStatus;
use bulkhead_core::{TenantId, Tier};
use bulkhead_store::{MoveReport, NewTenant, Tenant, TenantPatch};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Created, List, ListParams, parse_id};
use crate::AppState;
use crate::auth::{Operator, TenantApp};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    #[schema(value_type = String, format = Uuid)]
    pub id: TenantId,
    pub name: String,
    pub tier: Tier,
    /// The cell that serves a `dedicated` tenant; `null` otherwise.
    pub cell: Option<String>,
    pub status: TenantStatus,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id,
            name: t.name,
            tier: t.tier,
            cell: None,
            status: t.status,
            metadata: t.metadata,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 2–63 lowercase letters, digits or `-`; unique.
    pub name: String,
    /// Defaults to `shared`.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// Free-form JSON object, at most 16 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub name: Option<String>,
    pub tier: Option<Tier>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant, update_tenant, delete_tenant))
        .routes(routes!(suspend_tenant))
        .routes(routes!(resume_tenant))
        .routes(routes!(move_tenant))
        .routes(routes!(own_tenant))
}

fn view_list(page: bulkhead_core::page::Page<Tenant>) -> List<TenantView> {
    List::from_page(page, |t| t.id.as_uuid(), TenantView::from)
}

/// Create a tenant.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    request_body = CreateTenant,
    responses((status = 201, body = TenantView), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_tenant(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<Created<TenantView>> {
    let new = NewTenant {
        name: body.name,
        tier: body.tier.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_else(|| serde_json::json!({})),
    };
    let tenant = state.store.create_tenant(&op, new).await?;
    tracing::info!(tenant = %tenant.id, name = %tenant.name, "tenant created");
    let event = AuditEvent::new(action::TENANT_CREATED, target(tenant.id))
        .details(serde_json::json!({"name": tenant.name, "tier": tenant.tier.as_str()}));
    state.audit.record_tenant_lifecycle(&op, tenant.id, event).await;
    Ok((StatusCode::CREATED, Json(tenant.into())))
}

/// List tenants in creation order.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    params(ListParams), responses((status = 200, body = List<TenantView>), (status = 403, body = ErrorBody)))]
async fn list_tenants(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<List<TenantView>>> {
    let page = state.store.list_tenants(&op, params.page()?).await?;
    let mut list = view_list(page);
    let cells: std::collections::HashMap<_, _> = state.store.placements(&op).await?.into_iter().collect();
    for t in &mut list.data {
        t.cell = cells.get(&t.id).cloned();
    }
    Ok(Json(list))
}

/// Show a tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TenantView>> {
    let id = parse_id(&id, "tenant")?;
    let mut view = TenantView::from(state.store.get_tenant(&op, id).await?);
    view.cell = state.store.tenant_cell(&op.act_for(id)).await?.map(|c| c.name);
    Ok(Json(view))
}

/// Change a tenant's name, tier or metadata.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), request_body = UpdateTenant,
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_tenant(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> ApiResult<Json<TenantView>> {
    let id = parse_id(&id, "tenant")?;
    let before = state.store.get_tenant(&op, id).await?;
    let metadata_changed = body.metadata.is_some();
    let patch = TenantPatch { name: body.name, tier: body.tier, status: None, metadata: body.metadata };
    let after = state.store.update_tenant(&op, id, patch).await?;
    if after.tier != before.tier {
        let event = AuditEvent::new(action::TENANT_TIER_CHANGED, target(id))
            .details(serde_json::json!({"from": before.tier.as_str(), "to": after.tier.as_str()}));
        state.audit.record_tenant_lifecycle(&op, id, event).await;
    }
    if after.name != before.name || metadata_changed {
        let event = AuditEvent::new(action::TENANT_UPDATED, target(id)).details(serde_json::json!({
            "name": after.name, "previous_name": before.name, "metadata_changed": metadata_changed,
        }));
        state.audit.record_tenant_lifecycle(&op, id, event).await;
    }
    Ok(Json(after.into()))
}

fn target(id: TenantId) -> String {
    format!("tenant:{id}")
}

/// Delete a tenant and all of its data. A dedicated tenant is deleted in
/// its cell first; if the cell does not answer, nothing is deleted (502
/// `cell_unavailable`).
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn delete_tenant(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: TenantId = parse_id(&id, "tenant")?;
    let tenant = state.store.get_tenant(&op, id).await?;
    state.cells.delete_in_cell(&op, id).await?;
    state.store.delete_tenant(&op, id).await?;
    tracing::info!(tenant = %id, "tenant deleted");
    // The tenant's own chain went with it; the platform's keeps the record.
    let event = AuditEvent::new(action::TENANT_DELETED, target(id))
        .details(serde_json::json!({"name": tenant.name, "tier": tenant.tier.as_str()}));
    state.audit.record_platform(&op, event).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_status(
    state: &AppState,
    op: &bulkhead_core::OperatorCtx,
    id: &str,
    status: TenantStatus,
) -> ApiResult<Json<TenantView>> {
    let id: TenantId = parse_id(id, "tenant")?;
    let patch = TenantPatch { status: Some(status), ..Default::default() };
    let tenant = state.store.update_tenant(op, id, patch).await?;
    tracing::info!(tenant = %id, status = status.as_str(), "tenant status changed");
    // A dedicated tenant's cell learns it too; the change here stands if
    // the cell does not answer (this side refuses a suspended tenant's keys).
    if let Err(e) = state.cells.mirror_status(op, id, status).await {
        tracing::warn!(tenant = %id, error = %e, "status changed here but not in the tenant's cell; repeat the call once it answers");
    }
    let name = match status {
        TenantStatus::Suspended => action::TENANT_SUSPENDED,
        TenantStatus::Active => action::TENANT_RESUMED,
    };
    let event = AuditEvent::new(name, target(id)).details(serde_json::json!({"name": tenant.name}));
    state.audit.record_tenant_lifecycle(op, id, event).await;
    Ok(Json(tenant.into()))
}

/// Suspend a tenant: its keys are refused with `tenant_suspended` until
/// resumed. A dedicated tenant's cell is told as well (if it does not
/// answer, the suspension stands here and a warning is logged).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/suspend", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn suspend_tenant(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TenantView>> {
    set_status(&state, &op, &id, TenantStatus::Suspended).await
}

/// Resume a suspended tenant (in its cell too, as for suspend).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/resume", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn resume_tenant(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TenantView>> {
    set_status(&state, &op, &id, TenantStatus::Active).await
}

/// The caller's own tenant.
#[utoipa::path(get, path = "/v1/tenant", tag = "tenant", security(("bearer" = [])),
    responses((status = 200, body = TenantView), (status = 401, body = ErrorBody)))]
async fn own_tenant(State(state): State<AppState>, TenantApp(ctx): TenantApp) -> ApiResult<Json<TenantView>> {
    Ok(Json(state.store.own_tenant(&ctx).await?.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveTenant {
    /// `shared` or `isolated`; or `dedicated` with `cell`: the tenant's
    /// data moves into that registered cell, which then serves it. A
    /// dedicated tenant comes back with `shared`.
    pub tier: Tier,
    /// With `dedicated`: the cell's name.
    #[serde(default)]
    pub cell: Option<String>,
}

/// One table's rows and checksum, as verified in the move's target.
#[derive(Debug, Serialize, ToSchema)]
pub struct TableSumView {
    pub table: String,
    pub rows: u64,
    /// SHA-256 (hex) over the table's rows of the tenant, in key order.
    pub sha256: String,
}

/// What a live move did.
#[derive(Debug, Serialize, ToSchema)]
pub struct MoveView {
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    pub from: Tier,
    pub to: Tier,
    /// Per table: rows and checksum, equal in source and target.
    pub tables: Vec<TableSumView>,
    /// How long the tenant's calls were held, in milliseconds.
    pub pause_ms: u64,
    /// The whole move, including the wait for other processes to see it.
    pub total_ms: u64,
    /// Whether the source's copy was removed.
    pub source_purged: bool,
}

impl From<MoveReport> for MoveView {
    fn from(r: MoveReport) -> Self {
        Self {
            tenant_id: r.tenant_id,
            from: r.from,
            to: r.to,
            tables: r
                .tables
                .into_iter()
                .map(|t| TableSumView { table: t.table, rows: t.rows, sha256: t.sha256 })
                .collect(),
            pause_ms: r.pause_ms,
            total_ms: r.total_ms,
            source_purged: r.source_purged,
        }
    }
}

/// The audit event of a move: tiers, pause, and each table's rows and
/// checksum (what was verified).
pub fn moved_event(
    id: TenantId,
    to: Tier,
    result: &Result<MoveReport, bulkhead_store::StoreError>,
) -> AuditEvent {
    let event = AuditEvent::new(action::TENANT_MOVED, target(id));
    match result {
        Ok(r) => event.details(serde_json::json!({
            "from": r.from.as_str(), "to": r.to.as_str(), "pause_ms": r.pause_ms, "total_ms": r.total_ms,
            "tables": r.tables.iter().map(|t| serde_json::json!({"table": t.table, "rows": t.rows, "sha256": t.sha256}))
                .collect::<Vec<_>>(),
        })),
        Err(e) => {
            use bulkhead_store::StoreError;
            // What the operator can act on; never an internal cause.
            let (code, message) = match e {
                StoreError::Conflict(m) => ("conflict", m.as_str()),
                StoreError::Invalid(m) => ("invalid_request", m.as_str()),
                StoreError::NotFound(_) => ("not_found", ""),
                StoreError::Moving => ("tenant_moving", ""),
                StoreError::WrongCell => ("wrong_cell", ""),
                _ => ("internal", ""),
            };
            event
                .outcome(bulkhead_audit::Outcome::Failure)
                .details(serde_json::json!({"to": to.as_str(), "error": code, "message": message}))
        }
    }
}

/// Audits a move: a done move in the platform chain and the tenant's; a
/// refused or failed one in the platform chain only (the tenant's data did
/// not change, and its chain may be waiting on another process's move).
pub async fn record_move(
    audit: &bulkhead_audit::Audit,
    op: &bulkhead_core::OperatorCtx,
    id: TenantId,
    to: Tier,
    result: &Result<MoveReport, bulkhead_store::StoreError>,
) {
    let event = moved_event(id, to, result);
    if result.is_ok() {
        audit.record_tenant_lifecycle(op, id, event).await;
    } else {
        audit.record_platform(op, event).await;
    }
}

/// Move a tenant's data to another tier, live: its calls are held while
/// the data is copied, verified (row counts and checksums per table) and
/// switched; nothing written before or during the move is lost.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/move", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), request_body = MoveTenant,
    responses((status = 200, body = MoveView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn move_tenant(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<MoveTenant>,
) -> ApiResult<Json<MoveView>> {
    let id: TenantId = parse_id(&id, "tenant")?;
    state.store.get_tenant(&op, id).await?;
    // Into a cell, or out of one: the cells layer moves it (and audits).
    if let Some(report) =
        crate::cells::move_dispatch(&state.cells, &state.audit, &op, id, body.tier, body.cell.as_deref())
            .await?
    {
        return Ok(Json(report.into()));
    }
    let result = state.store.move_tenant(&op, id, body.tier).await;
    record_move(&state.audit, &op, id, body.tier, &result).await;
    Ok(Json(result?.into()))
}
