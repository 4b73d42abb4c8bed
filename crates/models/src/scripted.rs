//! The built-in offline provider: a *scripted stand-in*, not a language
//! model. It answers by fixed rules from the request alone — no download, no
//! network, no randomness — so demos, tests and benchmarks can run agents,
//! tool calls, streaming, metering and budgets with no provider at hand.
//! Kind `builtin`, model [`SCRIPTED_MODEL`] (`builtin/scripted`); any other
//! model name is refused.
//!
//! # The rules
//!
//! Let *last* be the last message that is not a system message.
//!
//! 1. **Tool results.** If *last* is a `tool` message, the answer is text
//!    quoting every tool message after the last assistant message, in order:
//!    `Tool results: NAME returned CONTENT; NAME returned CONTENT`. `NAME` is
//!    the message's `name`, else the name of the assistant's call its
//!    `tool_call_id` answers, else `tool`. Finish reason `stop`.
//! 2. **Tool calls.** Otherwise the last `user` message is scanned for
//!    requests of the form
//!
//!    ```text
//!    call NAME {JSON object}
//!    call NAME()
//!    ```
//!
//!    — the word `call` (at the start or after a character that is not a
//!    letter, digit or `_`), one or more spaces, `NAME` made of ASCII
//!    letters, digits, `_` and `-`, then either a JSON object (after
//!    optional spaces) or `()`. Several requests may stand in one message,
//!    separated by anything, e.g. `call a {"x": 1}; call b()`. A request
//!    counts only if `NAME` is among `req.tools`. The answer then has empty
//!    text, one [`ToolCall`] per request in order, with the object re-written
//!    as compact JSON (`{}` for `()`) and ids `call_N`, where `N` counts the
//!    tool calls of the whole conversation from 1 (so ids never repeat within
//!    a conversation). Finish reason `tool_calls`.
//!
//!    `tool_choice` is honoured: `none` disables calls; `tool(NAME)` keeps
//!    only requests for `NAME`, and calls it with `{}` if there are none;
//!    `required` calls the first tool of `req.tools` with `{}` if there are
//!    no requests.
//! 3. **Plain answer.** Otherwise the text is `You said: TEXT` with `TEXT`
//!    the last user message (empty if there is none). If any system message
//!    has lines that start with `Context:` (after leading spaces), a second
//!    line follows: `Context used: C1 | C2 | …` with the rest of each such
//!    line, trimmed. Finish reason `stop`.
//!
//! Text answers then honour `stop` (the text is cut before the first stop
//! sequence it contains) and `max_tokens` (the text is cut to
//! `4 × max_tokens` characters, finish reason `length`).
//!
//! # Token counts
//!
//! A text of `c` characters (Unicode scalar values) is `⌈c / 4⌉` tokens.
//! Input tokens: the sum over all messages of `max(1, tokens(content +
//! each tool call's name and arguments))`; tool definitions are not
//! counted. Output tokens: the same rule applied to the answer. No tokens
//! are cached. So usage is never zero, and the same request always costs
//! the same.
//!
//! # Streaming
//!
//! The stream carries exactly the non-streaming answer: the text as one
//! delta per word (each word with its following space), each tool call as a
//! delta with id and name followed by its arguments in two halves, then
//! `Finish` and `Usage`.
//!
//! # Determinism
//!
//! The same request gives the same answer, usage and id (`scripted-` and a
//! hash of the request).

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{
    ChatRequest, ChatResponse, Embeddings, FinishReason, Message, Provider, ProviderError, Role, StreamEvent,
    ToolCall, ToolChoice, Usage,
};

/// The one model the scripted provider serves.
pub const SCRIPTED_MODEL: &str = "builtin/scripted";

/// The built-in scripted stand-in for a model (see the module doc for its rules).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptedProvider;

impl ScriptedProvider {
    pub fn new() -> Self {
        Self
    }

    /// The answer to `req` by the rules above.
    pub fn answer(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        if req.model != SCRIPTED_MODEL {
            return Err(ProviderError::InvalidRequest(format!(
                "the built-in provider serves only the model {SCRIPTED_MODEL:?}, not {:?}",
                req.model
            )));
        }
        let (message, finish_reason) = reply(req);
        let usage = Usage {
            input_tokens: req.messages.iter().map(message_tokens).sum(),
            output_tokens: message_tokens(&message),
            cached_input_tokens: 0,
        };
        Ok(ChatResponse {
            id: format!("scripted-{:016x}", fnv1a(&serde_json::to_vec(req).unwrap_or_default())),
            model: SCRIPTED_MODEL.to_owned(),
            message,
            finish_reason,
            usage,
        })
    }
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn kind(&self) -> &'static str {
        "builtin"
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.answer(req)
    }

    async fn chat_stream(
        &self,
        req: &ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError> {
        let response = self.answer(req)?;
        let mut events: Vec<StreamEvent> = response
            .message
            .content
            .split_inclusive(' ')
            .map(|word| StreamEvent::Delta { text: word.to_owned() })
            .collect();
        for (index, call) in response.message.tool_calls.into_iter().enumerate() {
            let half =
                call.arguments.char_indices().nth(call.arguments.chars().count() / 2).map_or(0, |(i, _)| i);
            let (first, second) = call.arguments.split_at(half);
            events.push(StreamEvent::ToolCallDelta {
                index,
                id: Some(call.id.clone()),
                name: Some(call.name.clone()),
                arguments: String::new(),
            });
            for part in [first, second] {
                events.push(StreamEvent::ToolCallDelta {
                    index,
                    id: None,
                    name: None,
                    arguments: part.to_owned(),
                });
            }
        }
        events.push(StreamEvent::Finish { reason: response.finish_reason });
        events.push(StreamEvent::Usage(response.usage));
        Ok(Box::pin(futures::stream::iter(events.into_iter().map(Ok))))
    }

    async fn embed(&self, _model: &str, _inputs: &[String]) -> Result<Embeddings, ProviderError> {
        Err(ProviderError::Unsupported("the built-in scripted provider has no embeddings".to_owned()))
    }
}

/// The answer message and finish reason by rules 1–3.
fn reply(req: &ChatRequest) -> (Message, FinishReason) {
    let last = req.messages.iter().rev().find(|m| m.role != Role::System);
    if last.is_some_and(|m| m.role == Role::Tool) {
        return (Message::assistant(tool_results(&req.messages)), FinishReason::Stop);
    }
    let user_text =
        req.messages.iter().rev().find(|m| m.role == Role::User).map_or("", |m| m.content.as_str());

    let calls = tool_calls(req, user_text);
    if !calls.is_empty() {
        let earlier = req.messages.iter().map(|m| m.tool_calls.len()).sum::<usize>();
        let calls = calls
            .into_iter()
            .enumerate()
            .map(|(i, (name, arguments))| ToolCall {
                id: format!("call_{}", earlier + i + 1),
                name,
                arguments,
            })
            .collect();
        return (Message::assistant_tool_calls("", calls), FinishReason::ToolCalls);
    }

    let mut text = format!("You said: {user_text}");
    let context: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .flat_map(|m| m.content.lines())
        .filter_map(|line| line.trim_start().strip_prefix("Context:"))
        .map(str::trim)
        .collect();
    if !context.is_empty() {
        text.push_str("\nContext used: ");
        text.push_str(&context.join(" | "));
    }
    let mut finish = FinishReason::Stop;
    if let Some(cut) = req.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(cut);
    }
    if let Some(max) = req.max_tokens {
        let max_chars = usize::try_from(max).unwrap_or(usize::MAX).saturating_mul(4);
        if let Some((cut, _)) = text.char_indices().nth(max_chars) {
            text.truncate(cut);
            finish = FinishReason::Length;
        }
    }
    (Message::assistant(text), finish)
}

/// Rule 1: the trailing tool results, quoted.
fn tool_results(messages: &[Message]) -> String {
    let start = messages.iter().rposition(|m| m.role == Role::Assistant).map_or(0, |i| i + 1);
    let calls: Vec<&ToolCall> = messages[..start].iter().flat_map(|m| &m.tool_calls).collect();
    let quoted: Vec<String> = messages[start..]
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| {
            let name = m.name.as_deref().or_else(|| {
                let id = m.tool_call_id.as_deref()?;
                calls.iter().rev().find(|c| c.id == id).map(|c| c.name.as_str())
            });
            format!("{} returned {}", name.unwrap_or("tool"), m.content)
        })
        .collect();
    format!("Tool results: {}", quoted.join("; "))
}

/// Rule 2: the requested calls as (name, compact JSON arguments).
fn tool_calls(req: &ChatRequest, text: &str) -> Vec<(String, String)> {
    if req.tools.is_empty() || req.tool_choice == Some(ToolChoice::None) {
        return Vec::new();
    }
    let known = |name: &str| req.tools.iter().any(|t| t.name == name);
    let mut calls: Vec<(String, String)> =
        parse_calls(text).into_iter().filter(|(name, _)| known(name)).collect();
    match &req.tool_choice {
        Some(ToolChoice::Tool(only)) if known(only) => {
            calls.retain(|(name, _)| name == only);
            if calls.is_empty() {
                calls.push((only.clone(), "{}".to_owned()));
            }
        }
        Some(ToolChoice::Required) if calls.is_empty() => {
            calls.push((req.tools[0].name.clone(), "{}".to_owned()));
        }
        _ => {}
    }
    calls
}

/// Every `call NAME {…}` / `call NAME()` in `text`, known tool or not.
pub(crate) fn parse_calls(text: &str) -> Vec<(String, String)> {
    let mut calls = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find("call").map(|p| from + p) {
        from = pos + "call".len();
        let word_start = text[..pos].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if !word_start {
            continue;
        }
        if let Some((name, arguments, end)) = parse_call(&text[from..]) {
            calls.push((name, arguments));
            from += end;
        }
    }
    calls
}

/// After the word `call`: spaces, a name, then `()` or a JSON object.
/// Returns the name, the compact arguments and the bytes consumed.
fn parse_call(rest: &str) -> Option<(String, String, usize)> {
    let after_spaces = rest.trim_start_matches(' ');
    if after_spaces.len() == rest.len() {
        return None;
    }
    let name_len = after_spaces
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(after_spaces.len());
    if name_len == 0 {
        return None;
    }
    let name = &after_spaces[..name_len];
    let after_name = &after_spaces[name_len..];
    let consumed_before = rest.len() - after_name.len();
    if after_name.starts_with("()") {
        return Some((name.to_owned(), "{}".to_owned(), consumed_before + 2));
    }
    let args = after_name.trim_start_matches(' ');
    if !args.starts_with('{') {
        return None;
    }
    let mut values = serde_json::Deserializer::from_str(args).into_iter::<serde_json::Value>();
    let value = values.next()?.ok()?;
    let used = values.byte_offset();
    value.is_object().then(|| (name.to_owned(), value.to_string(), rest.len() - args.len() + used))
}

/// `⌈chars / 4⌉`, at least 1, over a message's content and tool calls.
fn message_tokens(m: &Message) -> u64 {
    let chars = m.content.chars().count()
        + m.tool_calls.iter().map(|c| c.name.chars().count() + c.arguments.chars().count()).sum::<usize>();
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX).max(1)
}

/// FNV-1a, 64 bit: a stable hash for the response id (std's hasher is
/// randomly keyed per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::{StreamCollector, ToolDef};

    fn tool(name: &str) -> ToolDef {
        ToolDef { name: name.into(), description: String::new(), parameters: json!({"type": "object"}) }
    }

    fn req(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            tools: vec![tool("weather"), tool("search")],
            ..ChatRequest::new(SCRIPTED_MODEL, messages)
        }
    }

    async fn both(p: &ScriptedProvider, r: &ChatRequest) -> ChatResponse {
        let direct = p.chat(r).await.unwrap();
        let mut stream = p.chat_stream(r).await.unwrap();
        let mut collector = StreamCollector::new();
        let mut deltas = 0;
        while let Some(event) = stream.next().await {
            let event = event.unwrap();
            deltas += usize::from(matches!(event, StreamEvent::Delta { .. }));
            collector.push(&event);
        }
        let streamed = collector.into_response(direct.id.clone(), direct.model.clone());
        assert_eq!(streamed, direct, "streaming differs from non-streaming");
        assert!(deltas == 0 || deltas > 1 || !direct.message.content.contains(' '));
        direct
    }

    #[tokio::test]
    async fn plain_answer_mentions_context_and_counts_tokens() {
        let p = ScriptedProvider::new();
        let r = req(vec![
            Message::system("You are helpful.\n  Context: Oslo is in Norway.\nContext: Rome is in Italy."),
            Message::user("Where is Oslo?"),
        ]);
        let a = both(&p, &r).await;
        assert_eq!(
            a.message.content,
            "You said: Where is Oslo?\nContext used: Oslo is in Norway. | Rome is in Italy."
        );
        assert_eq!(a.finish_reason, FinishReason::Stop);
        assert_eq!(a.message.role, Role::Assistant);
        // 73 + 14 characters in, 79 out.
        assert_eq!(a.usage, Usage { input_tokens: 19 + 4, output_tokens: 20, cached_input_tokens: 0 });
        assert_eq!(p.chat(&r).await.unwrap(), a, "not deterministic");
    }

    #[tokio::test]
    async fn tool_calls_when_asked_then_an_answer_quoting_the_results() {
        let p = ScriptedProvider::new();
        let mut r = req(vec![Message::user(
            r#"Please call weather {"city": "Oslo", "units": "C"}; then call search(); call unknown {}"#,
        )]);
        let a = both(&p, &r).await;
        assert_eq!(a.finish_reason, FinishReason::ToolCalls);
        assert_eq!(a.message.content, "");
        assert_eq!(
            a.message.tool_calls,
            vec![
                ToolCall {
                    id: "call_1".into(),
                    name: "weather".into(),
                    arguments: r#"{"city":"Oslo","units":"C"}"#.into()
                },
                ToolCall { id: "call_2".into(), name: "search".into(), arguments: "{}".into() },
            ]
        );

        r.messages.push(a.message.clone());
        r.messages.push(Message::tool_result("call_1", "3C"));
        r.messages.push(Message { name: Some("finder".into()), ..Message::tool_result("call_2", "nothing") });
        let b = both(&p, &r).await;
        assert_eq!(b.message.content, "Tool results: weather returned 3C; finder returned nothing");
        assert_eq!(b.finish_reason, FinishReason::Stop);

        // A second round of calls continues the numbering.
        r.messages.push(b.message);
        r.messages.push(Message::user("call weather {\"city\": \"Rome\"}"));
        let c = both(&p, &r).await;
        assert_eq!(c.message.tool_calls[0].id, "call_3");
    }

    #[tokio::test]
    async fn tool_choice_stop_and_max_tokens_are_honoured() {
        let p = ScriptedProvider::new();
        let mut r = req(vec![Message::user("call weather {\"city\": \"Oslo\"}")]);
        r.tool_choice = Some(ToolChoice::None);
        assert_eq!(both(&p, &r).await.finish_reason, FinishReason::Stop);
        r.tool_choice = Some(ToolChoice::Tool("search".into()));
        assert_eq!(both(&p, &r).await.message.tool_calls[0].name, "search");
        r.messages = vec![Message::user("hello there")];
        r.tool_choice = Some(ToolChoice::Required);
        assert_eq!(both(&p, &r).await.message.tool_calls[0].name, "weather");
        r.tool_choice = None;
        r.max_tokens = Some(2);
        let a = both(&p, &r).await;
        assert_eq!((a.message.content.as_str(), a.finish_reason), ("You said", FinishReason::Length));
        r.max_tokens = None;
        r.stop = vec!["there".into()];
        assert_eq!(both(&p, &r).await.message.content, "You said: hello ");
    }

    #[tokio::test]
    async fn other_models_and_embeddings_are_refused() {
        let p = ScriptedProvider::new();
        let r = ChatRequest::new("gpt-4o", vec![Message::user("hi")]);
        assert!(matches!(p.chat(&r).await, Err(ProviderError::InvalidRequest(_))));
        assert!(matches!(p.embed(SCRIPTED_MODEL, &[]).await, Err(ProviderError::Unsupported(_))));
    }

    #[test]
    fn the_call_syntax() {
        let names = |t: &str| parse_calls(t).into_iter().map(|(n, a)| format!("{n}={a}")).collect::<Vec<_>>();
        assert_eq!(names("call a()"), ["a={}"]);
        assert_eq!(
            names("call  a-b_1 {\"k\": [1, {\"x\": \"}\"}]} and call c()"),
            ["a-b_1={\"k\":[1,{\"x\":\"}\"}]}", "c={}"]
        );
        assert!(names("recall a() callx() call a [1] call b {broken").is_empty());
        assert_eq!(names("(call a())"), ["a={}"]);
    }
}
