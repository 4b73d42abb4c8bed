//! `AnthropicProvider` against a fake Messages server.

use serde_json::json;

use super::*;

const PATH: &str = "/v1/messages";

async fn provider_for(fake: &Fake) -> AnthropicProvider {
    AnthropicProvider::new(config(&fake.base)).unwrap()
}

fn message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 6, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4}
    })
}

#[tokio::test]
async fn chat_sends_key_version_and_system_and_reads_text() {
    let fake = Fake::start(
        PATH,
        vec![Reply::json(200, message(json!([{"type": "text", "text": "Hi!"}]), "end_turn"))],
    )
    .await;
    let answer = provider_for(&fake).await.chat(&hello("claude-sonnet-4-20250514")).await.unwrap();
    assert_eq!(answer.id, "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_eq!(answer.message, Message::assistant("Hi!"));
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert_eq!(answer.usage, Usage { input_tokens: 16, output_tokens: 6, cached_input_tokens: 4 });

    let seen = fake.seen(0);
    assert_eq!(seen.headers["x-api-key"], KEY);
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(
        seen.body,
        json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 1024,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        })
    );
}

#[tokio::test]
async fn chat_reads_tool_use_blocks() {
    let content = json!([
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Oslo"}}
    ]);
    let fake = Fake::start(PATH, vec![Reply::json(200, message(content, "tool_use"))]).await;
    let mut req = hello("claude-sonnet-4-20250514");
    req.tools = vec![ToolDef {
        name: "get_weather".into(),
        description: "Weather".into(),
        parameters: json!({"type": "object"}),
    }];
    req.max_tokens = Some(300);
    let answer = provider_for(&fake).await.chat(&req).await.unwrap();
    assert_eq!(answer.message.content, "Let me check.");
    assert_eq!(
        answer.message.tool_calls,
        vec![ToolCall {
            id: "toolu_01A".into(),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Oslo\"}".into()
        }]
    );
    assert_eq!(answer.finish_reason, FinishReason::ToolCalls);
    let seen = fake.seen(0).body;
    assert_eq!(
        seen["tools"],
        json!([{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}])
    );
    assert_eq!(seen["max_tokens"], 300);
}

#[tokio::test]
async fn a_full_stream_with_text_and_tool_use() {
    let events = [
        json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-20250514",
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 5, "output_tokens": 1}
        }}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking "}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "the weather."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Oslo\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 40}}),
        json!({"type": "message_stop"}),
    ];
    let fake = Fake::start(PATH, vec![Reply::sse(anthropic_sse(&events))]).await;
    let (events, err) =
        drain(provider_for(&fake).await.chat_stream(&hello("claude-sonnet-4-20250514")).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events[0], StreamEvent::Delta { text: "Checking ".into() });
    assert_eq!(
        events[2],
        StreamEvent::ToolCallDelta {
            index: 0,
            id: Some("toolu_1".into()),
            name: Some("get_weather".into()),
            arguments: String::new()
        }
    );
    let n = events.len();
    assert_eq!(events[n - 2], StreamEvent::Finish { reason: FinishReason::ToolCalls });
    assert_eq!(
        events[n - 1],
        StreamEvent::Usage(Usage { input_tokens: 30, output_tokens: 40, cached_input_tokens: 5 })
    );

    let collected = collect(&events);
    let m = collected.message();
    assert_eq!(m.content, "Checking the weather.");
    assert_eq!(
        m.tool_calls,
        vec![
            ToolCall {
                id: "toolu_1".into(),
                name: "get_weather".into(),
                arguments: "{\"city\": \"Oslo\"}".into()
            },
            // No input deltas at all: arguments `{}`.
            ToolCall { id: "toolu_2".into(), name: "get_time".into(), arguments: "{}".into() },
        ]
    );
    assert_eq!(fake.seen(0).body["stream"], true);
}

#[tokio::test]
async fn an_error_body_is_an_upstream_error_with_its_message() {
    let body = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}});
    let fake = Fake::start(PATH, vec![Reply::json(400, body)]).await;
    let err = provider_for(&fake).await.chat(&hello("claude-sonnet-4-20250514")).await.unwrap_err();
    assert_eq!(err, ProviderError::Upstream { status: 400, message: "max_tokens: Field required".into() });
    assert_eq!(fake.hits(), 1);
    assert_no_key(&err);
}

#[tokio::test]
async fn a_429_and_a_529_are_retried() {
    let limited = json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit"}});
    let overloaded = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    let ok = message(json!([{"type": "text", "text": "fine"}]), "end_turn");
    let fake = Fake::start(
        PATH,
        vec![
            Reply::json(429, limited).header("retry-after", "0"),
            Reply::json(529, overloaded),
            Reply::json(200, ok),
        ],
    )
    .await;
    let answer = provider_for(&fake).await.chat(&hello("claude-sonnet-4-20250514")).await.unwrap();
    assert_eq!(answer.message.content, "fine");
    assert_eq!(fake.hits(), 3);
}

#[tokio::test]
async fn a_streamed_error_before_the_first_event_is_retried() {
    let overloaded = anthropic_sse(&[
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]);
    let good = anthropic_sse(&[
        json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3, "output_tokens": 0}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 1}}),
        json!({"type": "message_stop"}),
    ]);
    let fake = Fake::start(PATH, vec![Reply::sse(overloaded), Reply::sse(good)]).await;
    let (events, err) = drain(provider_for(&fake).await.chat_stream(&hello("m")).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        events,
        vec![
            StreamEvent::Delta { text: "ok".into() },
            StreamEvent::Finish { reason: FinishReason::Length },
            StreamEvent::Usage(Usage { input_tokens: 3, output_tokens: 1, cached_input_tokens: 0 }),
        ]
    );
    assert_eq!(fake.hits(), 2);

    // A streamed rate limit that persists surfaces as RateLimited.
    let limited = anthropic_sse(&[
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
    ]);
    let fake = Fake::start(PATH, vec![Reply::sse(limited)]).await;
    let err = provider_for(&fake).await.chat_stream(&hello("m")).await.err().unwrap();
    assert_eq!(err, ProviderError::RateLimited { retry_after: None });
    assert_eq!(fake.hits(), 3);
}

#[tokio::test]
async fn embeddings_are_unsupported() {
    let provider = AnthropicProvider::new(config("http://127.0.0.1:1")).unwrap();
    let err = provider.embed("m", &["x".to_owned()]).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unsupported(_)));
    let core: bulkhead_core::Error = err.into();
    assert_eq!(core.code, bulkhead_core::Code::InvalidRequest);
}
