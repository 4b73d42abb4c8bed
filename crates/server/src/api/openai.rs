//! The OpenAI-compatible surface for tenant apps: `POST /v1/chat/completions`
//! (plain and streamed as server-sent events) and `GET /v1/models` — what
//! the official `openai` clients expect, unchanged. Each call is resolved
//! through the tenant's model settings, admitted (rate limits and a budget
//! reservation of its worst case), sent to the provider (falling back to the
//! next model on provider failure), metered and settled — also when a
//! streaming client goes away mid-answer.

use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bulkhead_agents::calls::{self, CallTags};
use bulkhead_core::{Code, Error, TenantCtx};
use bulkhead_metering::{Admitted, TenantTerms};
use bulkhead_models::routing::{ModelSettings, Route};
use bulkhead_models::{
    ChatRequest, ChatResponse, FinishReason, Message, Role, StreamCollector, StreamEvent, ToolCall,
    ToolChoice, ToolDef, Usage,
};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::TenantApp;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(chat_completions)).routes(routes!(list_models))
}

// ---- the wire format (OpenAI Chat Completions) ----

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WireStop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The request body; fields this gateway does not act on are accepted and
/// ignored, as OpenAI-compatible servers do.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    tools: Vec<WireTool>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop: Option<WireStop>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    n: Option<u32>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidRequest, message.into())
}

fn text_of(content: Option<Content>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(invalid(format!("content parts of type `{}` are not supported", p.kind)));
                }
                out.push_str(&p.text.unwrap_or_default());
            }
            Ok(out)
        }
    }
}

/// Converts and checks the request: into the internal representation.
fn to_internal(body: ChatCompletionRequest) -> Result<(ChatRequest, bool, bool), ApiError> {
    if body.n.is_some_and(|n| n != 1) {
        return Err(invalid("only n = 1 is supported"));
    }
    if body.messages.is_empty() {
        return Err(invalid("messages must not be empty"));
    }
    if body.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(invalid("temperature must be between 0 and 2"));
    }
    if body.top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(invalid("top_p must be between 0 and 1"));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(invalid(format!(
                    "messages[{i}].role `{other}` is not one of system, user, assistant, tool"
                )));
            }
        };
        if role == Role::Tool && m.tool_call_id.is_none() {
            return Err(invalid(format!("messages[{i}]: a tool message needs tool_call_id")));
        }
        messages.push(Message {
            role,
            content: text_of(m.content)?,
            tool_calls: m
                .tool_calls
                .into_iter()
                .map(|c| ToolCall { id: c.id, name: c.function.name, arguments: c.function.arguments })
                .collect(),
            tool_call_id: m.tool_call_id,
            name: m.name,
        });
    }
    let mut tools = Vec::with_capacity(body.tools.len());
    for t in body.tools {
        if t.kind != "function" {
            return Err(invalid(format!("tools of type `{}` are not supported", t.kind)));
        }
        tools.push(ToolDef {
            name: t.function.name,
            description: t.function.description.unwrap_or_default(),
            parameters: t.function.parameters.unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
    }
    let tool_choice = match body.tool_choice {
        None => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => return Err(invalid(format!("tool_choice `{other}` is not auto, none or required"))),
        }),
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(ToolChoice::Tool(name.to_owned())),
            None => {
                return Err(invalid(
                    "tool_choice must be a string or {\"type\":\"function\",\"function\":{\"name\":…}}",
                ));
            }
        },
    };
    let stop = match body.stop {
        None => Vec::new(),
        Some(WireStop::One(s)) => vec![s],
        Some(WireStop::Many(v)) => v,
    };
    let include_usage = body.stream_options.unwrap_or_default().include_usage;
    let request = ChatRequest {
        model: body.model,
        messages,
        tools,
        tool_choice,
        max_tokens: body.max_completion_tokens.or(body.max_tokens),
        temperature: body.temperature,
        top_p: body.top_p,
        stop,
        user: body.user,
    };
    Ok((request, body.stream, include_usage))
}

fn finish_str(reason: &FinishReason) -> &str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Other(s) => s.as_str(),
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
    })
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect(),
    )
}

fn completion_json(id: &str, created: i64, model: &str, r: &ChatResponse) -> Value {
    let mut message = json!({"role": "assistant", "content": r.message.content});
    if !r.message.tool_calls.is_empty() {
        message["tool_calls"] = tool_calls_json(&r.message.tool_calls);
        if r.message.content.is_empty() {
            message["content"] = Value::Null;
        }
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_str(&r.finish_reason), "logprobs": null}],
        "usage": usage_json(&r.usage),
    })
}

// ---- metering of one streamed call ----

/// Everything needed to settle a streamed call, whatever way it ends.
struct Meter {
    state: AppState,
    ctx: TenantCtx,
    terms: TenantTerms,
    tags: CallTags,
    attempt: usize,
    prompt_estimate: u64,
    started: std::time::Instant,
}

impl Meter {
    async fn settle(mut self, admitted: Admitted, route: &Route, usage: Usage, outcome: &str) {
        self.tags.attributes["outcome"] = json!(outcome);
        self.tags.attributes["latency_ms"] = json!(self.started.elapsed().as_millis() as u64);
        let settled = calls::settle(
            &self.state.metering,
            &self.terms,
            &self.ctx,
            admitted,
            route,
            &usage,
            &self.tags,
            self.attempt,
        )
        .await;
        if let Err(e) = settled {
            tracing::error!(error = %e.message, "settling a model call failed; its reservation will expire");
        }
    }
}

/// Create a chat completion — OpenAI's wire format, streamed as SSE with
/// `"stream": true`. The model is resolved through the tenant's aliases and
/// allow list (`model_not_allowed`, 403), the call is admitted against its
/// rate limits and budget (`rate_limited` 429, `budget_exceeded` 402), and
/// its usage is metered and settled.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", security(("bearer" = [])),
    request_body(content = Object, description = "an OpenAI chat completion request"),
    responses((status = 200, description = "a chat.completion, or an SSE stream of chat.completion.chunk", body = Object),
              (status = 400, body = ErrorBody), (status = 402, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn chat_completions(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> ApiResult<Response> {
    let requested = body.model.clone();
    let (mut request, stream, include_usage) = to_internal(body)?;
    let terms = state.metering.terms(&ctx).await?;
    let settings = ModelSettings::from_json(&terms.models)?;
    let routes = state.models.routes(&ctx, &settings, &requested).await?;
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let created = OffsetDateTime::now_utc().unix_timestamp();
    let tags = CallTags {
        event_id: id.clone(),
        run_id: None,
        agent_id: None,
        request_id: headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned),
        attributes: json!({"requested_model": requested}),
    };
    if !stream {
        let (response, _, _) =
            calls::complete(&state.metering, &state.models, &ctx, &routes, request, &tags).await?;
        return Ok(Json(completion_json(&id, created, &requested, &response)).into_response());
    }

    let prompt = calls::estimate_prompt_tokens(&request);
    let mut last_error = None;
    for (attempt, route) in routes.iter().enumerate() {
        let admitted =
            calls::admit(&state.metering, &state.models, &terms, &ctx, route, &request, prompt).await?;
        request.model = route.provider_model.clone();
        match route.provider.chat_stream(&request).await {
            Ok(events) => {
                let meter = Meter {
                    state: state.clone(),
                    ctx: ctx.clone(),
                    terms: terms.clone(),
                    tags: tags.clone(),
                    attempt,
                    prompt_estimate: prompt,
                    started: std::time::Instant::now(),
                };
                return Ok(stream_response(
                    meter,
                    admitted,
                    route.clone(),
                    events,
                    id,
                    created,
                    requested,
                    include_usage,
                ));
            }
            Err(e) => {
                state.metering.cancel(&ctx, admitted).await?;
                let failover = e.is_retryable();
                if failover {
                    tracing::warn!(model = %route.model, "provider failed; trying the next model");
                }
                last_error = Some(e);
                if !failover {
                    break;
                }
            }
        }
    }
    let err = last_error
        .map(Error::from)
        .unwrap_or_else(|| Error::new(Code::Unavailable, "no provider could serve the request"));
    Err(ApiError(err))
}

#[allow(clippy::too_many_arguments)]
fn stream_response(
    meter: Meter,
    admitted: Admitted,
    route: Route,
    mut events: futures::stream::BoxStream<'static, Result<StreamEvent, bulkhead_models::ProviderError>>,
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
) -> Response {
    // Bounded: a slow client slows the pull from the provider, never buffers it all.
    let (tx, rx) = mpsc::channel::<String>(32);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Option<&str>| {
            let c = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
            });
            format!("data: {c}\n\n")
        };
        let mut collected = StreamCollector::new();
        let mut client_gone =
            tx.send(chunk(json!({"role": "assistant", "content": ""}), None)).await.is_err();
        let mut outcome = "ok";
        let mut provider_usage = false;
        while !client_gone {
            let Some(event) = events.next().await else { break };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "provider stream failed");
                    let err =
                        json!({"error": {"code": "unavailable", "message": "the provider stream failed"}});
                    let _ = tx.send(format!("data: {err}\n\n")).await;
                    outcome = "provider_error";
                    break;
                }
            };
            collected.push(&event);
            let line = match &event {
                StreamEvent::Delta { text } => Some(chunk(json!({"content": text}), None)),
                StreamEvent::ToolCallDelta { index, id, name, arguments } => {
                    let mut call = json!({"index": index, "function": {"arguments": arguments}});
                    if let Some(id) = id {
                        call["id"] = json!(id);
                        call["type"] = json!("function");
                    }
                    if let Some(name) = name {
                        call["function"]["name"] = json!(name);
                    }
                    Some(chunk(json!({"tool_calls": [call]}), None))
                }
                StreamEvent::Finish { reason } => Some(chunk(json!({}), Some(finish_str(reason)))),
                StreamEvent::Usage(_) => {
                    provider_usage = true;
                    None
                }
            };
            if let Some(line) = line {
                client_gone = tx.send(line).await.is_err();
            }
        }
        // Drop the provider stream now: if the client left, this cancels upstream.
        drop(events);
        let mut usage = collected.usage();
        if !provider_usage {
            // Cut short: count what we know — the prompt estimate and the text sent.
            let text = collected.message();
            let out_chars = text.content.len()
                + text.tool_calls.iter().map(|c| c.arguments.len() + c.name.len()).sum::<usize>();
            usage = Usage {
                input_tokens: meter.prompt_estimate,
                output_tokens: (out_chars as u64).div_ceil(4),
                cached_input_tokens: 0,
            };
            if outcome == "ok" {
                outcome = if client_gone { "client_disconnected" } else { "no_usage_reported" };
            }
        }
        if !client_gone {
            if include_usage {
                let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                               "choices": [], "usage": usage_json(&usage)});
                let _ = tx.send(format!("data: {c}\n\n")).await;
            }
            let _ = tx.send("data: [DONE]\n\n".to_owned()).await;
        }
        meter.settle(admitted, &route, usage, outcome).await;
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

/// The models this tenant may call (its allow list, and its aliases).
#[utoipa::path(get, path = "/v1/models", tag = "openai", security(("bearer" = [])),
    responses((status = 200, description = "an OpenAI model list", body = Object), (status = 401, body = ErrorBody)))]
async fn list_models(State(state): State<AppState>, TenantApp(ctx): TenantApp) -> ApiResult<Json<Value>> {
    let terms = state.metering.terms(&ctx).await?;
    let settings = ModelSettings::from_json(&terms.models)?;
    let data: Vec<Value> = state
        .models
        .visible_models(&settings)
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
