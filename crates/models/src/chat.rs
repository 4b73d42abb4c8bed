//! The provider-neutral shape of a chat: requests, messages, tool calls,
//! responses, stream events and usage. Every adapter translates from and to
//! these types; nothing here knows a provider's wire format.
//!
//! Invariants:
//! - [`Usage::input_tokens`] counts *all* prompt tokens, cached ones included;
//!   [`Usage::cached_input_tokens`] is the part of them served from the
//!   provider's cache (the convention of `bulkhead_metering::TokenUsage`).
//! - A stream of [`StreamEvent`]s carries tool calls as
//!   [`StreamEvent::ToolCallDelta`]s keyed by `index`, the 0-based position
//!   of the call among this turn's tool calls (not a provider's content-block
//!   index); [`StreamCollector`] folds such a stream back into the message a
//!   non-streaming call would have returned.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering an assistant's [`ToolCall`].
    Tool,
}

impl Role {
    /// The role's name as OpenAI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    /// The text. May be empty, e.g. for an assistant message that only calls tools.
    #[serde(default)]
    pub content: String,
    /// Tool calls made by an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For [`Role::Tool`]: the id of the [`ToolCall`] this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An optional participant name (OpenAI's `name`; other providers ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A message with just a role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None, name: None }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// An assistant message that calls tools (with optional text alongside).
    pub fn assistant_tool_calls(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self { tool_calls, ..Self::new(Role::Assistant, content) }
    }

    /// The result of the tool call `tool_call_id`.
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { tool_call_id: Some(tool_call_id.into()), ..Self::new(Role::Tool, content) }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A JSON schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// A call of a tool, as the model asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call; the tool's result refers to it.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (an object), exactly as the model wrote them:
    /// parse them before use, they may be invalid.
    pub arguments: String,
}

/// Whether and which tools the model should call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// A call of this tool.
    Tool(String),
}

/// One chat completion request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The provider's model id (e.g. `gpt-4o-mini`, `claude-sonnet-4-20250514`).
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// An end-user id passed on for the provider's abuse monitoring. Pass an
    /// opaque id, never a tenant's name or a person's e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ChatRequest {
    /// A request for `model` with these messages and defaults for the rest.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        Self { model: model.into(), messages, ..Self::default() }
    }
}

/// Token counts of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The part of `input_tokens` read from the provider's prompt cache.
    pub cached_input_tokens: u64,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FinishReason {
    /// A natural end or a stop sequence.
    Stop,
    /// The `max_tokens` limit (or the context window) was reached.
    Length,
    /// The model called tools and waits for their results.
    ToolCalls,
    /// The provider withheld or cut the answer (content filter, refusal).
    ContentFilter,
    /// Anything else, by the provider's name.
    Other(String),
}

impl FinishReason {
    /// The reason as OpenAI's `finish_reason` spells it.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(other) => other,
        }
    }
}

impl From<String> for FinishReason {
    fn from(s: String) -> Self {
        match s.as_str() {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Other(s),
        }
    }
}

impl From<FinishReason> for String {
    fn from(r: FinishReason) -> Self {
        r.as_str().to_owned()
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to a non-streaming [`crate::Provider::chat`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The provider's id of the completion.
    pub id: String,
    /// The model that answered, as the provider names it.
    pub model: String,
    /// The assistant's message (role [`Role::Assistant`]).
    pub message: Message,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// One event of a streamed answer. A stream yields text and tool-call deltas
/// in order, then one [`StreamEvent::Finish`], then one [`StreamEvent::Usage`]
/// if the provider reported usage (OpenAI-compatible servers that ignore
/// `stream_options` may not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// More text of the answer.
    Delta { text: String },
    /// A piece of tool call `index` (0-based among this turn's calls). The
    /// first piece of a call carries its `id` and `name`; `arguments` pieces
    /// concatenate to the JSON text of the arguments.
    ToolCallDelta { index: usize, id: Option<String>, name: Option<String>, arguments: String },
    /// The model stopped.
    Finish { reason: FinishReason },
    /// Token counts of the whole call.
    Usage(Usage),
}

/// Folds a stream's events into the message, finish reason and usage that the
/// non-streaming call would have returned.
#[derive(Debug, Clone, Default)]
pub struct StreamCollector {
    content: String,
    tool_calls: Vec<ToolCall>,
    finish_reason: Option<FinishReason>,
    usage: Usage,
}

impl StreamCollector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Delta { text } => self.content.push_str(text),
            StreamEvent::ToolCallDelta { index, id, name, arguments } => {
                if self.tool_calls.len() <= *index {
                    self.tool_calls.resize_with(index + 1, || ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                }
                let call = &mut self.tool_calls[*index];
                if let Some(id) = id.as_ref().filter(|s| !s.is_empty()) {
                    call.id.clone_from(id);
                }
                if let Some(name) = name.as_ref().filter(|s| !s.is_empty()) {
                    call.name.clone_from(name);
                }
                call.arguments.push_str(arguments);
            }
            StreamEvent::Finish { reason } => self.finish_reason = Some(reason.clone()),
            StreamEvent::Usage(usage) => self.usage = *usage,
        }
    }

    /// The assistant message so far.
    pub fn message(&self) -> Message {
        Message::assistant_tool_calls(self.content.clone(), self.tool_calls.clone())
    }

    /// The finish reason, if the stream got that far.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish_reason.as_ref()
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The whole answer as a [`ChatResponse`] with the given id and model. A
    /// stream that ended without a finish reason reports `Other("unknown")`.
    pub fn into_response(self, id: impl Into<String>, model: impl Into<String>) -> ChatResponse {
        ChatResponse {
            id: id.into(),
            model: model.into(),
            message: Message::assistant_tool_calls(self.content, self.tool_calls),
            finish_reason: self.finish_reason.unwrap_or_else(|| FinishReason::Other("unknown".to_owned())),
            usage: self.usage,
        }
    }
}

/// The answer to [`crate::Provider::embed`]: one vector per input, in order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Input tokens only; embeddings have no output tokens.
    pub usage: Usage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_round_trip_through_their_openai_names() {
        for r in [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::ToolCalls,
            FinishReason::ContentFilter,
            FinishReason::Other("pause_turn".into()),
        ] {
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(json, r.as_str());
            assert_eq!(serde_json::from_value::<FinishReason>(json).unwrap(), r);
        }
    }

    #[test]
    fn collector_assembles_tool_calls_by_index() {
        let mut c = StreamCollector::new();
        let events = [
            StreamEvent::Delta { text: "Let me ".into() },
            StreamEvent::Delta { text: "check.".into() },
            StreamEvent::ToolCallDelta {
                index: 1,
                id: Some("b".into()),
                name: Some("two".into()),
                arguments: "{}".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("a".into()),
                name: Some("one".into()),
                arguments: "{\"x\"".into(),
            },
            StreamEvent::ToolCallDelta { index: 0, id: None, name: None, arguments: ":1}".into() },
            StreamEvent::Finish { reason: FinishReason::ToolCalls },
            StreamEvent::Usage(Usage { input_tokens: 3, output_tokens: 4, cached_input_tokens: 0 }),
        ];
        for e in &events {
            c.push(e);
        }
        let r = c.into_response("id", "m");
        assert_eq!(r.message.content, "Let me check.");
        assert_eq!(r.message.role, Role::Assistant);
        assert_eq!(
            r.message.tool_calls,
            vec![
                ToolCall { id: "a".into(), name: "one".into(), arguments: "{\"x\":1}".into() },
                ToolCall { id: "b".into(), name: "two".into(), arguments: "{}".into() },
            ]
        );
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.usage.output_tokens, 4);
    }

    #[test]
    fn messages_serialize_without_empty_fields() {
        let json = serde_json::to_value(Message::user("hi")).unwrap();
        assert_eq!(json, serde_json::json!({"role": "user", "content": "hi"}));
        let ev = serde_json::to_value(StreamEvent::Usage(Usage::default())).unwrap();
        assert_eq!(ev["type"], "usage");
    }
}
