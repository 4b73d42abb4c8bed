//! The Anthropic Messages adapter.
//!
//! Wire format:
//! - `POST {base}/v1/messages` (base e.g. [`crate::ANTHROPIC_BASE_URL`]) with
//!   `x-api-key` and `anthropic-version: 2023-06-01`.
//! - System messages, wherever they stand in the conversation, are joined
//!   with blank lines into the top-level `system` field.
//! - Tools are `{name, description, input_schema}`; `tool_choice` maps to
//!   `auto` / `none` / `any` (our `Required`) / `{type: tool, name}`, and is
//!   sent only with tools.
//! - An assistant's tool calls are `tool_use` content blocks (their
//!   `arguments` must be a JSON object, or empty for `{}`); a tool result is a
//!   `user` message with a `tool_result` block naming `tool_use_id`.
//!   Consecutive messages of the same Anthropic role are merged into one, so
//!   the results of several parallel calls travel together, as Anthropic
//!   requires.
//! - **`max_tokens` is required by Anthropic**: a request without one is sent
//!   with [`DEFAULT_MAX_TOKENS`].
//! - `stop` becomes `stop_sequences`, `user` becomes `metadata.user_id`.
//! - Usage: `input_tokens` + `cache_read_input_tokens` +
//!   `cache_creation_input_tokens` are our input tokens (Anthropic counts
//!   cached ones separately; we count them in), `cache_read_input_tokens` our
//!   cached ones, `output_tokens` the output.
//! - `stop_reason`: `end_turn` / `stop_sequence` → Stop, `max_tokens` →
//!   Length, `tool_use` → ToolCalls, `refusal` → ContentFilter, others by name.
//! - Streams: `message_start` (input usage), `content_block_start` (text, or
//!   `tool_use` with id and name), `content_block_delta` (`text_delta`,
//!   `input_json_delta`), `content_block_stop`, `message_delta` (stop reason,
//!   output usage), `message_stop`, `ping`, `error`. Tool calls are numbered
//!   among themselves for [`StreamEvent::ToolCallDelta::index`], not by
//!   content block. Thinking blocks and unknown events are skipped.
//!
//! Anthropic has no embeddings API: [`Provider::embed`] is `Unsupported`.

use std::collections::{HashMap, VecDeque};

use async_trait::async_trait;
use futures::stream::BoxStream;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::openai::f32_json;
use crate::sse::SseEvent;
use crate::transport::{Decoder, Http, sensitive, upstream_error};
use crate::{
    ChatRequest, ChatResponse, Embeddings, FinishReason, Message, Provider, ProviderConfig, ProviderError,
    Role, StreamEvent, ToolCall, ToolChoice, Usage,
};

/// The `max_tokens` sent when a request has none (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;
/// The API version we speak.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Anthropic's Messages API over HTTP.
pub struct AnthropicProvider {
    http: Http,
}

impl AnthropicProvider {
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

    fn build(config: ProviderConfig, client: Option<reqwest::Client>) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            headers.insert("x-api-key", sensitive(key)?);
        }
        headers.insert("anthropic-version", HeaderValue::from_static(ANTHROPIC_VERSION));
        Ok(Self { http: Http::new("anthropic", config, headers, client)? })
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn kind(&self) -> &'static str {
        "anthropic"
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let body = request_body(req, false)?;
        let message: WireMessage = self.http.post_json("/v1/messages", &body).await?;
        Ok(message.into_response())
    }

    async fn chat_stream(
        &self,
        req: &ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError> {
        let body = request_body(req, true)?;
        let api_key = self.http.config().api_key.clone();
        self.http
            .post_stream("/v1/messages", &body, || AnthropicDecoder {
                api_key: api_key.clone(),
                ..AnthropicDecoder::default()
            })
            .await
    }

    async fn embed(&self, _model: &str, _inputs: &[String]) -> Result<Embeddings, ProviderError> {
        Err(ProviderError::Unsupported(
            "Anthropic has no embeddings API; configure an OpenAI-compatible provider for embeddings"
                .to_owned(),
        ))
    }
}

/// The JSON body of a Messages request.
pub(crate) fn request_body(req: &ChatRequest, stream: bool) -> Result<Value, ProviderError> {
    let system: Vec<&str> =
        req.messages.iter().filter(|m| m.role == Role::System).map(|m| m.content.as_str()).collect();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in req.messages.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = blocks(m)?;
        match messages.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("max_tokens".into(), json!(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let messages = messages.into_iter().map(|(role, content)| json!({"role": role, "content": content}));
    body.insert("messages".into(), messages.collect());
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}));
        body.insert("tools".into(), tools.collect());
        if let Some(choice) = &req.tool_choice {
            let choice = match choice {
                ToolChoice::Auto => json!({"type": "auto"}),
                ToolChoice::None => json!({"type": "none"}),
                ToolChoice::Required => json!({"type": "any"}),
                ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
            };
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), f32_json(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), f32_json(p));
    }
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop));
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

/// A message's Anthropic role and content blocks.
fn blocks(m: &Message) -> Result<(&'static str, Vec<Value>), ProviderError> {
    let text = |t: &str| json!({"type": "text", "text": t});
    Ok(match m.role {
        Role::Tool => {
            let id = m.tool_call_id.as_deref().ok_or_else(|| {
                ProviderError::InvalidRequest("a tool message needs the tool_call_id it answers".to_owned())
            })?;
            ("user", vec![json!({"type": "tool_result", "tool_use_id": id, "content": m.content})])
        }
        Role::Assistant => {
            let mut blocks = Vec::new();
            // Anthropic refuses empty text blocks; one is sent only if nothing else is.
            if !m.content.is_empty() || m.tool_calls.is_empty() {
                blocks.push(text(&m.content));
            }
            for call in &m.tool_calls {
                let input: Value = if call.arguments.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(&call.arguments).map_err(|_| {
                        ProviderError::InvalidRequest(format!(
                            "the arguments of tool call {:?} are not valid JSON",
                            call.id
                        ))
                    })?
                };
                if !input.is_object() {
                    return Err(ProviderError::InvalidRequest(format!(
                        "the arguments of tool call {:?} are not a JSON object",
                        call.id
                    )));
                }
                blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
            }
            ("assistant", blocks)
        }
        Role::User | Role::System => ("user", vec![text(&m.content)]),
    })
}

#[derive(Deserialize)]
struct WireMessage {
    id: Option<String>,
    model: Option<String>,
    content: Option<Vec<Block>>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Option<Value>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Overwrites the counts `newer` carries (a `message_delta`'s are cumulative).
    fn update(&mut self, newer: WireUsage) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_read_input_tokens = newer.cache_read_input_tokens.or(self.cache_read_input_tokens);
        self.cache_creation_input_tokens =
            newer.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
    }

    fn usage(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0)
                + cached
                + self.cache_creation_input_tokens.unwrap_or(0),
            output_tokens: self.output_tokens.unwrap_or(0),
            cached_input_tokens: cached,
        }
    }
}

fn stop_reason(reason: Option<String>) -> FinishReason {
    match reason.as_deref() {
        Some("end_turn" | "stop_sequence") => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        Some(other) => FinishReason::Other(other.to_owned()),
        None => FinishReason::Other("unknown".to_owned()),
    }
}

/// Tool input as JSON text; a missing input is `{}`.
fn input_text(input: Option<Value>) -> String {
    match input {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(v) => v.to_string(),
    }
}

impl WireMessage {
    fn into_response(self) -> ChatResponse {
        let mut content = String::new();
        let mut tool_calls = Vec::new();
        for block in self.content.unwrap_or_default() {
            match block {
                Block::Text { text } => content.push_str(&text),
                Block::ToolUse { id, name, input } => {
                    tool_calls.push(ToolCall { id, name, arguments: input_text(input) });
                }
                Block::Other => {}
            }
        }
        ChatResponse {
            id: self.id.unwrap_or_default(),
            model: self.model.unwrap_or_default(),
            message: Message::assistant_tool_calls(content, tool_calls),
            finish_reason: stop_reason(self.stop_reason),
            usage: self.usage.unwrap_or_default().usage(),
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDelta,
        usage: Option<WireUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: Value,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct StartMessage {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDelta {
    stop_reason: Option<String>,
}

/// What a content block of the stream is.
enum BlockState {
    Text,
    Tool { index: usize, has_input: bool },
}

/// The state of one streamed message.
#[derive(Default)]
struct AnthropicDecoder {
    api_key: Option<String>,
    usage: WireUsage,
    /// By content-block index; other kinds of block are absent.
    blocks: HashMap<usize, BlockState>,
    tool_calls: usize,
    finished: bool,
}

impl Decoder for AnthropicDecoder {
    fn event(&mut self, event: SseEvent, out: &mut VecDeque<StreamEvent>) -> Result<bool, ProviderError> {
        let wire: WireEvent = serde_json::from_str(&event.data)
            .map_err(|e| ProviderError::InvalidResponse(format!("a stream event that is not JSON: {e}")))?;
        match wire {
            WireEvent::MessageStart { message } => self.usage.update(message.usage.unwrap_or_default()),
            WireEvent::ContentBlockStart { index, content_block } => match content_block {
                Block::Text { text } => {
                    self.blocks.insert(index, BlockState::Text);
                    if !text.is_empty() {
                        out.push_back(StreamEvent::Delta { text });
                    }
                }
                Block::ToolUse { id, name, input } => {
                    let call = self.tool_calls;
                    self.tool_calls += 1;
                    // The start carries `input: {}`; the real input follows as JSON deltas.
                    let arguments = match input {
                        Some(Value::Object(o)) if !o.is_empty() => Value::Object(o).to_string(),
                        _ => String::new(),
                    };
                    let has_input = !arguments.is_empty();
                    self.blocks.insert(index, BlockState::Tool { index: call, has_input });
                    out.push_back(StreamEvent::ToolCallDelta {
                        index: call,
                        id: Some(id),
                        name: Some(name),
                        arguments,
                    });
                }
                Block::Other => {}
            },
            WireEvent::ContentBlockDelta { index, delta } => match (self.blocks.get_mut(&index), delta) {
                (Some(BlockState::Text), BlockDelta::TextDelta { text }) if !text.is_empty() => {
                    out.push_back(StreamEvent::Delta { text });
                }
                (
                    Some(BlockState::Tool { index, has_input }),
                    BlockDelta::InputJsonDelta { partial_json },
                ) if !partial_json.is_empty() => {
                    *has_input = true;
                    out.push_back(StreamEvent::ToolCallDelta {
                        index: *index,
                        id: None,
                        name: None,
                        arguments: partial_json,
                    });
                }
                _ => {}
            },
            WireEvent::ContentBlockStop { index } => {
                // A tool called without arguments sends no JSON at all.
                if let Some(BlockState::Tool { index, has_input: false }) = self.blocks.get(&index) {
                    out.push_back(StreamEvent::ToolCallDelta {
                        index: *index,
                        id: None,
                        name: None,
                        arguments: "{}".to_owned(),
                    });
                }
            }
            WireEvent::MessageDelta { delta, usage } => {
                self.usage.update(usage.unwrap_or_default());
                self.finished = true;
                out.push_back(StreamEvent::Finish { reason: stop_reason(delta.stop_reason) });
            }
            WireEvent::MessageStop => {
                out.push_back(StreamEvent::Usage(self.usage.usage()));
                return Ok(true);
            }
            WireEvent::Ping | WireEvent::Unknown => {}
            WireEvent::Error { error } => {
                let status = match error["type"].as_str().unwrap_or_default() {
                    "invalid_request_error" => StatusCode::BAD_REQUEST,
                    "authentication_error" => StatusCode::UNAUTHORIZED,
                    "permission_error" => StatusCode::FORBIDDEN,
                    "not_found_error" => StatusCode::NOT_FOUND,
                    "request_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                    "rate_limit_error" => StatusCode::TOO_MANY_REQUESTS,
                    "overloaded_error" => {
                        StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
                    }
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                return Err(upstream_error(status, None, event.data.as_bytes(), self.api_key.as_deref()));
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
        out.push_back(StreamEvent::Usage(self.usage.usage()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolDef;

    #[test]
    fn request_body_speaks_messages() {
        let mut req = ChatRequest::new(
            "claude-sonnet-4-20250514",
            vec![
                Message::system("be brief"),
                Message::user("weather in Oslo and Rome?"),
                Message::assistant_tool_calls(
                    "Checking.",
                    vec![
                        ToolCall {
                            id: "t1".into(),
                            name: "weather".into(),
                            arguments: "{\"city\":\"Oslo\"}".into(),
                        },
                        ToolCall { id: "t2".into(), name: "weather".into(), arguments: String::new() },
                    ],
                ),
                Message::tool_result("t1", "3C"),
                Message::tool_result("t2", "20C"),
                Message::system("cite sources"),
            ],
        );
        req.tools = vec![ToolDef {
            name: "weather".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        }];
        req.tool_choice = Some(ToolChoice::Required);
        req.stop = vec!["END".into()];
        req.user = Some("u-1".into());
        assert_eq!(
            request_body(&req, true).unwrap(),
            json!({
                "model": "claude-sonnet-4-20250514",
                "max_tokens": DEFAULT_MAX_TOKENS,
                "system": "be brief\n\ncite sources",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "weather in Oslo and Rome?"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}},
                        {"type": "tool_use", "id": "t2", "name": "weather", "input": {}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "3C"},
                        {"type": "tool_result", "tool_use_id": "t2", "content": "20C"},
                    ]},
                ],
                "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any"},
                "stop_sequences": ["END"],
                "metadata": {"user_id": "u-1"},
                "stream": true,
            })
        );
        req.messages[2].tool_calls[0].arguments = "[1]".into();
        assert!(matches!(request_body(&req, false), Err(ProviderError::InvalidRequest(_))));
    }

    #[test]
    fn usage_counts_cache_reads_and_writes_as_input() {
        let u = WireUsage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            cache_read_input_tokens: Some(100),
            cache_creation_input_tokens: Some(20),
        };
        assert_eq!(u.usage(), Usage { input_tokens: 130, output_tokens: 5, cached_input_tokens: 100 });
    }
}
