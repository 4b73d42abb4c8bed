//! Agents, threads, messages and runs: `/v1/agents` (tenant admin),
//! `/v1/threads`, `/v1/threads/{id}/messages`, `/v1/threads/{id}/runs`,
//! `/v1/runs/{id}` (+ `/steps`, `/cancel`, `/events`) (tenant app). Runs are
//! queued durably and executed by the workers; a run can be awaited
//! (`"mode": "sync"`), polled (`"async"`), or streamed as server-sent events
//! (`"stream"`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bulkhead_agents::AgentSpec;
use bulkhead_core::{AgentId, Code, RunId, TenantCtx, ThreadId};
use bulkhead_store::{Agent, AgentPatch, AgentVersion, Run, RunStep, StoredMessage, Thread};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Created, ListParams, parse_id};
use crate::AppState;
use crate::auth::{TenantAdmin, TenantApp};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_agent, list_agents))
        .routes(routes!(get_agent, update_agent, delete_agent))
        .routes(routes!(list_versions))
        .routes(routes!(create_thread, list_threads))
        .routes(routes!(get_thread, delete_thread))
        .routes(routes!(add_message, list_messages))
        .routes(routes!(create_run, list_runs))
        .routes(routes!(get_run))
        .routes(routes!(list_steps))
        .routes(routes!(cancel_run))
        .routes(routes!(run_events))
}

pub(super) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn agent_json(a: &Agent) -> Value {
    json!({"id": a.id, "name": a.name, "description": a.description, "version": a.version, "spec": a.spec,
           "created_at": rfc3339(a.created_at), "updated_at": rfc3339(a.updated_at)})
}

fn version_json(v: &AgentVersion) -> Value {
    json!({"agent_id": v.agent_id, "version": v.version, "spec": v.spec, "created_at": rfc3339(v.created_at)})
}

fn thread_json(t: &Thread) -> Value {
    json!({"id": t.id, "metadata": t.metadata, "summary": t.summary, "created_at": rfc3339(t.created_at)})
}

fn message_json(m: &StoredMessage) -> Value {
    let mut v = json!({"id": m.id, "thread_id": m.thread_id, "role": m.role, "content": m.content,
                       "run_id": m.run_id, "created_at": rfc3339(m.created_at)});
    if let Some(calls) = m.data.get("tool_calls") {
        v["tool_calls"] = calls.clone();
    }
    if let Some(id) = m.data.get("tool_call_id") {
        v["tool_call_id"] = id.clone();
    }
    v
}

fn run_json(r: &Run) -> Value {
    json!({"id": r.id, "thread_id": r.thread_id, "agent_id": r.agent_id, "agent_version": r.agent_version,
           "status": r.status.as_str(), "input": r.input, "output": r.output, "error": r.error,
           "cancel_requested": r.cancel_requested, "attempts": r.attempts,
           "created_at": rfc3339(r.created_at), "started_at": r.started_at.map(rfc3339),
           "finished_at": r.finished_at.map(rfc3339)})
}

fn step_json(s: &RunStep) -> Value {
    json!({"seq": s.seq, "run_id": s.run_id, "kind": s.kind, "data": s.data, "created_at": rfc3339(s.created_at)})
}

pub(super) fn list_json<T>(
    page: bulkhead_core::page::Page<T>,
    id: impl Fn(&T) -> uuid::Uuid,
    view: impl Fn(&T) -> Value,
) -> Value {
    let next = if page.has_more { page.items.last().map(&id) } else { None };
    json!({"data": page.items.iter().map(view).collect::<Vec<_>>(), "has_more": page.has_more, "next_after": next})
}

/// An agent to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    /// Unique within the tenant.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// System prompt template, variables, model, tools, memory, limits.
    #[schema(value_type = Object)]
    #[serde(default)]
    pub spec: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    pub name: Option<String>,
    pub description: Option<String>,
    /// A new spec makes a new version; old versions stay readable.
    #[schema(value_type = Option<Object>)]
    pub spec: Option<Value>,
}

/// Parses and checks a spec: its tools exist, its model is usable by the tenant.
async fn checked_spec(state: &AppState, ctx: &TenantCtx, raw: &Value) -> ApiResult<Value> {
    let raw = if raw.is_null() { json!({}) } else { raw.clone() };
    let spec = AgentSpec::from_json(&raw)?;
    // Built-ins, and the tenant's own tools and MCP servers: names are per tenant.
    let runner = state.scheduler.runner();
    for tool in &spec.tools {
        if !runner.tenant_tools.exists(ctx, &runner.tools, tool).await? {
            return Err(ApiError::new(Code::InvalidRequest, format!("no tool named `{tool}`")));
        }
    }
    for kb in &spec.knowledge_bases {
        // Only the tenant's own: another tenant's id reads as unknown.
        if state.knowledge.get_kb(ctx, bulkhead_core::KbId::from_uuid(*kb)).await.is_err() {
            return Err(ApiError::new(Code::InvalidRequest, format!("no knowledge base {kb}")));
        }
    }
    let terms = state.metering.terms(ctx).await?;
    let settings = bulkhead_models::routing::ModelSettings::from_json(&terms.models)?;
    state.models.resolve_name(&settings, &spec.model)?;
    for model in spec.models.values() {
        state.models.resolve_name(&settings, model)?;
    }
    serde_json::to_value(&spec).map_err(|e| ApiError(bulkhead_core::Error::internal(e)))
}

/// Create an agent (tenant admin).
#[utoipa::path(post, path = "/v1/agents", tag = "agents", security(("bearer" = [])), request_body = CreateAgent,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_agent(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiJson(body): ApiJson<CreateAgent>,
) -> ApiResult<Created<Value>> {
    let spec = checked_spec(&state, &ctx, &body.spec).await?;
    let agent = state.store.create_agent(&ctx, &body.name, &body.description, &spec).await?;
    Ok((StatusCode::CREATED, Json(agent_json(&agent))))
}

/// List the tenant's agents.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = Object)))]
async fn list_agents(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let page = state.store.list_agents(&ctx, p.page()?).await?;
    Ok(Json(list_json(page, |a| a.id.as_uuid(), agent_json)))
}

/// Show an agent (its current version).
#[utoipa::path(get, path = "/v1/agents/{agent_id}", tag = "agents", security(("bearer" = [])),
    params(("agent_id" = Uuid, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_agent(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id: AgentId = parse_id(&id, "agent")?;
    Ok(Json(agent_json(&state.store.get_agent(&ctx, id).await?)))
}

/// Change an agent (tenant admin); a new spec is a new version.
#[utoipa::path(patch, path = "/v1/agents/{agent_id}", tag = "agents", security(("bearer" = [])),
    params(("agent_id" = Uuid, Path)), request_body = UpdateAgent,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_agent(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateAgent>,
) -> ApiResult<Json<Value>> {
    let id: AgentId = parse_id(&id, "agent")?;
    let spec = match &body.spec {
        Some(s) => Some(checked_spec(&state, &ctx, s).await?),
        None => None,
    };
    let agent = state
        .store
        .update_agent(&ctx, id, AgentPatch { name: body.name, description: body.description, spec })
        .await?;
    Ok(Json(agent_json(&agent)))
}

/// Delete an agent (tenant admin). Its past runs stay readable.
#[utoipa::path(delete, path = "/v1/agents/{agent_id}", tag = "agents", security(("bearer" = [])),
    params(("agent_id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_agent(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: AgentId = parse_id(&id, "agent")?;
    state.store.delete_agent(&ctx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every version of an agent's spec.
#[utoipa::path(get, path = "/v1/agents/{agent_id}/versions", tag = "agents", security(("bearer" = [])),
    params(("agent_id" = Uuid, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn list_versions(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id: AgentId = parse_id(&id, "agent")?;
    let versions = state.store.list_agent_versions(&ctx, id).await?;
    Ok(Json(json!({"data": versions.iter().map(version_json).collect::<Vec<_>>()})))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateThread {
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Start a conversation thread.
#[utoipa::path(post, path = "/v1/threads", tag = "threads", security(("bearer" = [])), request_body = CreateThread,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody)))]
async fn create_thread(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiJson(body): ApiJson<CreateThread>,
) -> ApiResult<Created<Value>> {
    let thread = state.store.create_thread(&ctx, &body.metadata.unwrap_or_else(|| json!({}))).await?;
    Ok((StatusCode::CREATED, Json(thread_json(&thread))))
}

/// List the tenant's threads.
#[utoipa::path(get, path = "/v1/threads", tag = "threads", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = Object)))]
async fn list_threads(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let page = state.store.list_threads(&ctx, p.page()?).await?;
    Ok(Json(list_json(page, |t| t.id.as_uuid(), thread_json)))
}

/// Show a thread.
#[utoipa::path(get, path = "/v1/threads/{thread_id}", tag = "threads", security(("bearer" = [])),
    params(("thread_id" = Uuid, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_thread(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id: ThreadId = parse_id(&id, "thread")?;
    Ok(Json(thread_json(&state.store.get_thread(&ctx, id).await?)))
}

/// Delete a thread with its messages, runs and steps.
#[utoipa::path(delete, path = "/v1/threads/{thread_id}", tag = "threads", security(("bearer" = [])),
    params(("thread_id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_thread(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: ThreadId = parse_id(&id, "thread")?;
    state.store.delete_thread(&ctx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMessage {
    /// `user` (default) or `system`; assistant and tool messages come from runs.
    #[serde(default)]
    pub role: Option<String>,
    pub content: String,
}

/// Add a message to a thread.
#[utoipa::path(post, path = "/v1/threads/{thread_id}/messages", tag = "threads", security(("bearer" = [])),
    params(("thread_id" = Uuid, Path)), request_body = AddMessage,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_message(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<AddMessage>,
) -> ApiResult<Created<Value>> {
    let thread: ThreadId = parse_id(&id, "thread")?;
    let role = body.role.as_deref().unwrap_or("user");
    if !matches!(role, "user" | "system") {
        return Err(ApiError::new(Code::InvalidRequest, "role must be user or system"));
    }
    if body.content.is_empty() {
        return Err(ApiError::new(Code::InvalidRequest, "content must not be empty"));
    }
    let m = state.store.add_message(&ctx, thread, role, &body.content, &json!({}), None).await?;
    Ok((StatusCode::CREATED, Json(message_json(&m))))
}

/// A thread's messages in order.
#[utoipa::path(get, path = "/v1/threads/{thread_id}/messages", tag = "threads", security(("bearer" = [])),
    params(("thread_id" = Uuid, Path), ListParams), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn list_messages(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let thread: ThreadId = parse_id(&id, "thread")?;
    let page = state.store.list_messages(&ctx, thread, p.page()?).await?;
    Ok(Json(list_json(page, |m| m.id.as_uuid(), message_json)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    #[schema(value_type = String, format = Uuid)]
    pub agent_id: AgentId,
    /// A user message to add to the thread first.
    pub message: Option<String>,
    /// Values for the agent's prompt template.
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, String>,
    /// `async` (default: answer at once with the queued run), `sync` (wait
    /// for the end) or `stream` (server-sent events).
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    #[schema(value_type = Object)]
    pub run: Value,
}

/// Run an agent on a thread. Runs wait in a durable queue, scheduled fairly
/// across tenants; a tenant with too many queued runs gets 429 `queue_full`.
#[utoipa::path(post, path = "/v1/threads/{thread_id}/runs", tag = "runs", security(("bearer" = [])),
    params(("thread_id" = Uuid, Path)), request_body = CreateRun,
    responses((status = 202, body = Object, description = "async: the queued run"), (status = 200, body = Object, description = "sync: the finished run; stream: SSE"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn create_run(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CreateRun>,
) -> ApiResult<Response> {
    let thread: ThreadId = parse_id(&id, "thread")?;
    let mode = body.mode.as_deref().unwrap_or("async");
    if !matches!(mode, "async" | "sync" | "stream") {
        return Err(ApiError::new(Code::InvalidRequest, "mode must be async, sync or stream"));
    }
    let agent = state.store.get_agent(&ctx, body.agent_id).await?;
    state.store.get_thread(&ctx, thread).await?;
    if let Some(text) = &body.message {
        if text.is_empty() {
            return Err(ApiError::new(Code::InvalidRequest, "message must not be empty"));
        }
        state.store.add_message(&ctx, thread, "user", text, &json!({}), None).await?;
    }
    let input = json!({"variables": body.variables});
    let run = match state
        .store
        .create_run(&ctx, thread, agent.id, agent.version, &input, state.max_queued_runs)
        .await
    {
        Ok(run) => run,
        Err(bulkhead_store::StoreError::Conflict(c)) if c == "queue_full" => {
            bulkhead_telemetry::metrics::rate_limit_refused(&ctx, "queued_runs");
            return Err(ApiError(
                bulkhead_core::Error::new(
                    Code::QueueFull,
                    format!(
                        "the tenant has {} runs waiting, its limit; retry when some finish",
                        state.max_queued_runs
                    ),
                )
                .with_details(json!({"max_queued": state.max_queued_runs, "retry_after_ms": 1000})),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let events = (mode == "stream").then(|| state.scheduler.runner().events.subscribe(run.id));
    let done = (mode == "sync").then(|| state.scheduler.runner().events.subscribe(run.id));
    state.scheduler.notify();
    match mode {
        "stream" => Ok(sse(state, ctx, run, events.expect("subscribed"))),
        "sync" => {
            let finished = wait_for_end(&state, &ctx, run.id, done.expect("subscribed")).await?;
            Ok(Json(run_json(&finished)).into_response())
        }
        _ => Ok((StatusCode::ACCEPTED, Json(run_json(&run))).into_response()),
    }
}

/// Longest a `sync` run request waits; then it answers with the run as it
/// is (still queued or running) and the caller polls.
const SYNC_WAIT: Duration = Duration::from_secs(300);

/// Waits for a run to end: events from this process, and the store as the
/// truth (the run may execute in another process).
async fn wait_for_end(
    state: &AppState,
    ctx: &TenantCtx,
    id: RunId,
    mut events: tokio::sync::broadcast::Receiver<bulkhead_agents::RunEvent>,
) -> ApiResult<Run> {
    let started = std::time::Instant::now();
    loop {
        let run = state.store.get_run(ctx, id).await?;
        if run.status.is_terminal() || started.elapsed() >= SYNC_WAIT {
            return Ok(run);
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), async {
            loop {
                match events.recv().await {
                    Ok(e) if e.is_terminal() => return,
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

fn sse(
    state: AppState,
    ctx: TenantCtx,
    run: Run,
    mut events: tokio::sync::broadcast::Receiver<bulkhead_agents::RunEvent>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let line = |name: &str, data: &Value| format!("event: {name}\ndata: {data}\n\n");
        if tx.send(line("run.created", &run_json(&run))).await.is_err() {
            return;
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
                Ok(Ok(e)) => {
                    if tx.send(line(e.name, &e.data)).await.is_err() || e.is_terminal() {
                        return;
                    }
                }
                // Lagged, closed, or quiet: the store says whether the run ended.
                _ => match state.store.get_run(&ctx, run.id).await {
                    Ok(r) if r.status.is_terminal() => {
                        let name = match r.status.as_str() {
                            "completed" => "run.completed",
                            "cancelled" => "run.cancelled",
                            "expired" => "run.expired",
                            _ => "run.failed",
                        };
                        let _ = tx.send(line(name, &run_json(&r))).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
            }
        }
    });
    let body =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|s| (Ok::<_, Infallible>(s), rx)) },
        );
    (
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(body),
    )
        .into_response()
}

/// A thread's runs.
#[utoipa::path(get, path = "/v1/threads/{thread_id}/runs", tag = "runs", security(("bearer" = [])),
    params(("thread_id" = Uuid, Path), ListParams), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn list_runs(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let thread: ThreadId = parse_id(&id, "thread")?;
    state.store.get_thread(&ctx, thread).await?;
    let page = state.store.list_runs(&ctx, thread, p.page()?).await?;
    Ok(Json(list_json(page, |r| r.id.as_uuid(), run_json)))
}

/// A run's state.
#[utoipa::path(get, path = "/v1/runs/{run_id}", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_run(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id: RunId = parse_id(&id, "run")?;
    Ok(Json(run_json(&state.store.get_run(&ctx, id).await?)))
}

/// A run's steps: model calls with their usage, tool calls with their outcome.
#[utoipa::path(get, path = "/v1/runs/{run_id}/steps", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn list_steps(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id: RunId = parse_id(&id, "run")?;
    state.store.get_run(&ctx, id).await?;
    let steps = state.store.list_steps(&ctx, id).await?;
    Ok(Json(json!({"data": steps.iter().map(step_json).collect::<Vec<_>>()})))
}

/// Ask a run to stop: a queued run is cancelled at once, a running one at
/// its next step.
#[utoipa::path(post, path = "/v1/runs/{run_id}/cancel", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn cancel_run(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id: RunId = parse_id(&id, "run")?;
    let run = state.store.cancel_run(&ctx, id).await?;
    state.scheduler.cancel_local(id);
    Ok(Json(run_json(&run)))
}

/// A run's events as server-sent events, until it ends.
#[utoipa::path(get, path = "/v1/runs/{run_id}/events", tag = "runs", security(("bearer" = [])),
    params(("run_id" = Uuid, Path)), responses((status = 200, description = "text/event-stream"), (status = 404, body = ErrorBody)))]
async fn run_events(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let id: RunId = parse_id(&id, "run")?;
    // The run must be the caller's before anything is subscribed.
    state.store.get_run(&ctx, id).await?;
    let events = state.scheduler.runner().events.subscribe(id);
    let run = state.store.get_run(&ctx, id).await?;
    Ok(sse(state, ctx, run, events))
}
