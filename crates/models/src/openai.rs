//! The OpenAI Chat Completions adapter, which also serves OpenAI-compatible
//! servers (vLLM, Ollama, llama.cpp's server, …) at any base URL.
//!
//! Wire format:
//! - `POST {base}/chat/completions` with `Authorization: Bearer {key}` (no
//!   header without a key); `POST {base}/embeddings` for embeddings.
//! - Tools are `{"type":"function","function":{name,description,parameters}}`;
//!   an assistant's calls are `tool_calls: [{id, type:"function",
//!   function:{name, arguments}}]` (its `content` is `null` when empty); a
//!   tool result is a `tool` message with `tool_call_id`.
//! - `max_tokens` is sent as `max_tokens`, which compatible servers and
//!   older OpenAI models accept; OpenAI's reasoning models want
//!   `max_completion_tokens` instead — see
//!   [`OpenAiProvider::use_max_completion_tokens`].
//! - Streams are SSE `data: {chunk}` lines ending with `data: [DONE]`; we ask
//!   for `stream_options: {include_usage: true}`, so usage arrives in a last
//!   chunk with empty `choices`. Tool calls arrive as deltas by `index`.
//! - Usage: `prompt_tokens` (cached ones included), `completion_tokens`,
//!   `prompt_tokens_details.cached_tokens`.
//!
//! Leniencies, for compatible servers: missing `usage` counts as zero; a
//! tool call without an id gets `call_{n}`; arguments sent as a JSON object
//! rather than text are serialized; a tool-call delta without `index`
//! continues the last call unless it carries an id; a `finish_reason` of
//! `stop` on a message with tool calls is reported as
//! [`FinishReason::ToolCalls`]. Only the first choice is read (we never ask
//! for `n > 1`).

use std::collections::VecDeque;

use async_trait::async_trait;
use futures::stream::BoxStream;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sse::SseEvent;
use crate::transport::{Decoder, Http, sensitive, upstream_error};
use crate::{
    ChatRequest, ChatResponse, Embeddings, FinishReason, Message, Provider, ProviderConfig, ProviderError,
    Role, StreamEvent, ToolCall, ToolChoice, Usage,
};

/// Chat Completions over HTTP, for OpenAI and compatible servers.
pub struct OpenAiProvider {
    http: Http,
    max_completion_tokens: bool,
}

impl OpenAiProvider {
    /// A provider with its own connection pool. Fails on a base URL that is
    /// not http(s) or a key that cannot be a header.
    pub fn new(config: ProviderConfig) -> Result<Self, ProviderError> {
        Self::build(config, None)
    }

    /// A provider sharing `client`'s connection pool (its connect timeout
    /// then applies instead of `config.connect_timeout`).
    pub fn with_client(config: ProviderConfig, client: reqwest::Client) -> Result<Self, ProviderError> {
        Self::build(config, Some(client))
    }

    /// Sends `max_tokens` as `max_completion_tokens`, which OpenAI's
    /// reasoning models (o-series, gpt-5) require. Compatible servers may
    /// not know it, so it is off by default.
    pub fn use_max_completion_tokens(mut self, yes: bool) -> Self {
        self.max_completion_tokens = yes;
        self
    }

    fn build(config: ProviderConfig, client: Option<reqwest::Client>) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            headers.insert(AUTHORIZATION, sensitive(&format!("Bearer {key}"))?);
        }
        Ok(Self { http: Http::new("openai", config, headers, client)?, max_completion_tokens: false })
    }

    fn decoder(&self) -> OpenAiDecoder {
        OpenAiDecoder { api_key: self.http.config().api_key.clone(), ..OpenAiDecoder::default() }
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn kind(&self) -> &'static str {
        "openai"
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let body = request_body(req, false, self.max_completion_tokens)?;
        let completion: Completion = self.http.post_json("/chat/completions", &body).await?;
        completion.into_response()
    }

    async fn chat_stream(
        &self,
        req: &ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError> {
        let body = request_body(req, true, self.max_completion_tokens)?;
        self.http.post_stream("/chat/completions", &body, || self.decoder()).await
    }

    async fn embed(&self, model: &str, inputs: &[String]) -> Result<Embeddings, ProviderError> {
        if inputs.is_empty() {
            return Ok(Embeddings::default());
        }
        let body = json!({ "model": model, "input": inputs, "encoding_format": "float" });
        let answer: EmbeddingAnswer = self.http.post_json("/embeddings", &body).await?;
        answer.into_embeddings(inputs.len())
    }
}

/// The JSON body of a chat completion request.
pub(crate) fn request_body(
    req: &ChatRequest,
    stream: bool,
    max_completion_tokens: bool,
) -> Result<Value, ProviderError> {
    let messages = req.messages.iter().map(message).collect::<Result<Vec<_>, _>>()?;
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
    if !req.tools.is_empty() {
        let tools = req.tools.iter().map(|t| {
            json!({"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters,
            }})
        });
        body.insert("tools".into(), tools.collect());
    }
    // OpenAI refuses a `tool_choice` without `tools`.
    if let Some(choice) = req.tool_choice.as_ref().filter(|_| !req.tools.is_empty()) {
        let choice = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
        body.insert("tool_choice".into(), choice);
    }
    if let Some(max) = req.max_tokens {
        let field = if max_completion_tokens { "max_completion_tokens" } else { "max_tokens" };
        body.insert(field.into(), json!(max));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), f32_json(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), f32_json(p));
    }
    if !req.stop.is_empty() {
        body.insert("stop".into(), json!(req.stop));
    }
    if let Some(user) = &req.user {
        body.insert("user".into(), json!(user));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(body))
}

/// An `f32` as the decimal it was written as (`0.7`, not `0.699999988…`).
pub(crate) fn f32_json(x: f32) -> Value {
    x.to_string().parse::<f64>().map(Value::from).unwrap_or(Value::Null)
}

fn message(m: &Message) -> Result<Value, ProviderError> {
    let mut v = Map::new();
    v.insert("role".into(), json!(m.role.as_str()));
    match m.role {
        Role::Tool => {
            let id = m.tool_call_id.as_deref().ok_or_else(|| {
                ProviderError::InvalidRequest("a tool message needs the tool_call_id it answers".to_owned())
            })?;
            v.insert("tool_call_id".into(), json!(id));
            v.insert("content".into(), json!(m.content));
        }
        Role::Assistant if !m.tool_calls.is_empty() => {
            let content = if m.content.is_empty() { Value::Null } else { json!(m.content) };
            v.insert("content".into(), content);
            let calls = m.tool_calls.iter().map(|c| {
                json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
            });
            v.insert("tool_calls".into(), calls.collect());
        }
        Role::System | Role::User | Role::Assistant => {
            v.insert("content".into(), json!(m.content));
        }
    }
    if let Some(name) = &m.name
        && m.role != Role::Tool
    {
        v.insert("name".into(), json!(name));
    }
    Ok(Value::Object(v))
}

#[derive(Deserialize)]
struct Completion {
    id: Option<String>,
    model: Option<String>,
    choices: Option<Vec<Choice>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: WireMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    arguments: Option<Value>,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

impl WireUsage {
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens.unwrap_or(0),
            output_tokens: self.completion_tokens.unwrap_or(0),
            cached_input_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        }
    }
}

/// Arguments as JSON text: strings as they are, anything else serialized.
fn arguments_text(arguments: Option<Value>) -> String {
    match arguments {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

/// OpenAI's `finish_reason`, with legacy `function_call` as tool calls and
/// `stop` on a message with tool calls corrected (see the module doc).
fn finish_reason(reason: Option<String>, has_tool_calls: bool) -> FinishReason {
    let reason = match reason.as_deref() {
        None => FinishReason::Other("unknown".to_owned()),
        Some("function_call") => FinishReason::ToolCalls,
        Some(_) => FinishReason::from(reason.unwrap_or_default()),
    };
    if has_tool_calls && reason == FinishReason::Stop { FinishReason::ToolCalls } else { reason }
}

impl Completion {
    fn into_response(self) -> Result<ChatResponse, ProviderError> {
        let choice = self
            .choices
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| ProviderError::InvalidResponse("a completion without choices".to_owned()))?;
        let tool_calls: Vec<ToolCall> = choice
            .message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: c.id.filter(|id| !id.is_empty()).unwrap_or_else(|| format!("call_{}", i + 1)),
                name: c.function.name,
                arguments: arguments_text(c.function.arguments),
            })
            .collect();
        let content = match choice.message.content {
            Some(content) if !content.is_empty() => content,
            _ => choice.message.refusal.unwrap_or_default(),
        };
        Ok(ChatResponse {
            id: self.id.unwrap_or_default(),
            model: self.model.unwrap_or_default(),
            finish_reason: finish_reason(choice.finish_reason, !tool_calls.is_empty()),
            message: Message::assistant_tool_calls(content, tool_calls),
            usage: self.usage.unwrap_or_default().usage(),
        })
    }
}

#[derive(Deserialize)]
struct EmbeddingAnswer {
    data: Vec<EmbeddingItem>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: Option<usize>,
    embedding: Vec<f32>,
}

impl EmbeddingAnswer {
    fn into_embeddings(mut self, expected: usize) -> Result<Embeddings, ProviderError> {
        if self.data.len() != expected {
            return Err(ProviderError::InvalidResponse(format!(
                "{} embeddings for {expected} inputs",
                self.data.len()
            )));
        }
        // The order of `data` is by `index`, which servers may not keep.
        self.data.sort_by_key(|item| item.index.unwrap_or(usize::MAX));
        Ok(Embeddings {
            vectors: self.data.into_iter().map(|item| item.embedding).collect(),
            usage: Usage { output_tokens: 0, ..self.usage.unwrap_or_default().usage() },
        })
    }
}

#[derive(Deserialize)]
struct Chunk {
    choices: Option<Vec<ChunkChoice>>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    index: Option<u32>,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<DeltaToolCall>>,
}

#[derive(Deserialize)]
struct DeltaToolCall {
    index: Option<usize>,
    id: Option<String>,
    function: Option<DeltaFunction>,
}

#[derive(Deserialize)]
struct DeltaFunction {
    name: Option<String>,
    arguments: Option<Value>,
}

/// The state of one streamed completion.
#[derive(Default)]
struct OpenAiDecoder {
    api_key: Option<String>,
    /// The last usage seen; sent once, at the end (some servers repeat it).
    usage: Option<Usage>,
    finished: bool,
    /// How many tool calls have started.
    tool_calls: usize,
}

impl OpenAiDecoder {
    fn flush_usage(&mut self, out: &mut VecDeque<StreamEvent>) {
        if let Some(usage) = self.usage.take() {
            out.push_back(StreamEvent::Usage(usage));
        }
    }
}

impl Decoder for OpenAiDecoder {
    fn event(&mut self, event: SseEvent, out: &mut VecDeque<StreamEvent>) -> Result<bool, ProviderError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.flush_usage(out);
            return Ok(true);
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| ProviderError::InvalidResponse(format!("a stream chunk that is not JSON: {e}")))?;
        if let Some(error) = chunk.error {
            // An error after the 200 (vLLM, llama.cpp): its `code` is an HTTP status when numeric.
            let status = error["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(upstream_error(status, None, data.as_bytes(), self.api_key.as_deref()));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.usage());
        }
        for choice in chunk.choices.unwrap_or_default() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                for text in [delta.content, delta.refusal].into_iter().flatten() {
                    if !text.is_empty() {
                        out.push_back(StreamEvent::Delta { text });
                    }
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    let index = call.index.unwrap_or(if call.id.is_some() {
                        self.tool_calls
                    } else {
                        self.tool_calls.saturating_sub(1)
                    });
                    self.tool_calls = self.tool_calls.max(index + 1);
                    let (name, arguments) = match call.function {
                        Some(f) => (f.name, arguments_text(f.arguments)),
                        None => (None, String::new()),
                    };
                    out.push_back(StreamEvent::ToolCallDelta { index, id: call.id, name, arguments });
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                out.push_back(StreamEvent::Finish {
                    reason: finish_reason(Some(reason), self.tool_calls > 0),
                });
            }
        }
        Ok(false)
    }

    fn end(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if !self.finished {
            return Err(ProviderError::Transport(
                "the stream ended before the answer was complete".to_owned(),
            ));
        }
        self.flush_usage(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolDef;

    #[test]
    fn request_body_speaks_chat_completions() {
        let mut req = ChatRequest::new(
            "gpt-4o-mini",
            vec![
                Message::system("be brief"),
                Message { name: Some("ann".into()), ..Message::user("weather?") },
                Message::assistant_tool_calls(
                    "",
                    vec![ToolCall {
                        id: "call_1".into(),
                        name: "weather".into(),
                        arguments: "{\"city\":\"Oslo\"}".into(),
                    }],
                ),
                Message::tool_result("call_1", "{\"temp\":3}"),
            ],
        );
        req.tools = vec![ToolDef {
            name: "weather".into(),
            description: "current weather".into(),
            parameters: json!({"type": "object"}),
        }];
        req.tool_choice = Some(ToolChoice::Tool("weather".into()));
        req.temperature = Some(0.7);
        req.max_tokens = Some(100);
        req.stop = vec!["END".into()];
        let body = request_body(&req, true, false).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "weather?", "name": "ann"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":3}"},
                ],
                "tools": [{"type": "function", "function": {"name": "weather", "description": "current weather", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "weather"}},
                "max_tokens": 100,
                "temperature": 0.7,
                "stop": ["END"],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        let body = request_body(&req, false, true).unwrap();
        assert_eq!(body["max_completion_tokens"], 100);
        assert!(body.get("max_tokens").is_none() && body.get("stream").is_none());

        req.messages.push(Message::new(Role::Tool, "orphan"));
        assert!(matches!(request_body(&req, false, false), Err(ProviderError::InvalidRequest(_))));
    }

    #[test]
    fn deltas_without_index_continue_the_last_call() {
        let mut d = OpenAiDecoder::default();
        let mut out = VecDeque::new();
        for data in [
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":{"x":1}}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
        ] {
            assert!(!d.event(SseEvent { event: String::new(), data: data.into() }, &mut out).unwrap());
        }
        let mut c = crate::StreamCollector::new();
        out.iter().for_each(|e| c.push(e));
        let m = c.message();
        assert_eq!(m.tool_calls[0].arguments, "{}");
        assert_eq!(m.tool_calls[1].arguments, "{\"x\":1}");
        assert_eq!(c.finish_reason(), Some(&FinishReason::ToolCalls));
        // No [DONE], but the answer was finished: not an error.
        assert!(d.end(&mut out).is_ok());
        assert!(OpenAiDecoder::default().end(&mut out).is_err());
    }
}
