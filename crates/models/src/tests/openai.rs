//! `OpenAiProvider` against a fake Chat Completions server.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

const PATH: &str = "/v1/chat/completions";

async fn provider_for(fake: &Fake) -> OpenAiProvider {
    OpenAiProvider::new(config(&format!("{}/v1/", fake.base))).unwrap()
}

fn completion(message: Value, finish: &str) -> Value {
    json!({
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}
        },
        "system_fingerprint": "fp_1"
    })
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
    })
}

fn usage_chunk() -> Value {
    json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 0}}
    })
}

fn weather_tool() -> ToolDef {
    ToolDef {
        name: "get_weather".into(),
        description: "Current weather".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    }
}

#[tokio::test]
async fn chat_sends_the_key_and_reads_message_and_usage() {
    let fake = Fake::start(
        PATH,
        vec![Reply::json(
            200,
            completion(json!({"role": "assistant", "content": "Hi there!", "refusal": null}), "stop"),
        )],
    )
    .await;
    let provider = provider_for(&fake).await;
    let mut req = hello("gpt-4o-mini");
    req.temperature = Some(0.2);
    let answer = provider.chat(&req).await.unwrap();
    assert_eq!(answer.id, "chatcmpl-123");
    assert_eq!(answer.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(answer.message, Message::assistant("Hi there!"));
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert_eq!(answer.usage, Usage { input_tokens: 21, output_tokens: 9, cached_input_tokens: 16 });

    let seen = fake.seen(0);
    assert_eq!(seen.headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(
        seen.body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
            "temperature": 0.2,
        })
    );
}

#[tokio::test]
async fn a_local_server_needs_no_key() {
    let fake = Fake::start(
        PATH,
        vec![Reply::json(200, json!({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}))],
    )
    .await;
    let provider = OpenAiProvider::new(ProviderConfig::new(format!("{}/v1", fake.base))).unwrap();
    let answer = provider.chat(&hello("llama3")).await.unwrap();
    // No usage from the server: zeros, not an error.
    assert_eq!((answer.message.content.as_str(), answer.usage), ("ok", Usage::default()));
    assert!(fake.seen(0).headers.get("authorization").is_none());
}

#[tokio::test]
async fn stream_yields_deltas_then_finish_then_usage() {
    let body = openai_sse(&[
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": "Hel"}), None),
        chunk(json!({"content": "lo, wörld"}), None),
        chunk(json!({"content": "!"}), None),
        chunk(json!({}), Some("stop")),
        usage_chunk(),
    ]);
    let fake = Fake::start(PATH, vec![Reply::sse(body)]).await;
    let provider = provider_for(&fake).await;
    let (events, err) = drain(provider.chat_stream(&hello("gpt-4o-mini")).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        events,
        vec![
            StreamEvent::Delta { text: "Hel".into() },
            StreamEvent::Delta { text: "lo, wörld".into() },
            StreamEvent::Delta { text: "!".into() },
            StreamEvent::Finish { reason: FinishReason::Stop },
            StreamEvent::Usage(Usage { input_tokens: 12, output_tokens: 3, cached_input_tokens: 0 }),
        ]
    );
    let seen = fake.seen(0);
    assert_eq!(seen.body["stream"], true);
    assert_eq!(seen.body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn tool_calls_round_trip_without_and_with_streaming() {
    let calls = json!([
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
        {"id": "call_def", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
    ]);
    let streamed = openai_sse(&[
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]}),
            None,
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}), None),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Oslo\"}"}}]}), None),
        chunk(
            json!({"tool_calls": [
                {"index": 1, "id": "call_def", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":"}}
            ]}),
            None,
        ),
        chunk(json!({"tool_calls": [{"index": 1, "function": {"arguments": "\"Rome\"}"}}]}), None),
        chunk(json!({}), Some("tool_calls")),
        usage_chunk(),
    ]);
    let fake = Fake::start(
        PATH,
        vec![
            Reply::json(
                200,
                completion(json!({"role": "assistant", "content": null, "tool_calls": calls}), "tool_calls"),
            ),
            Reply::sse(streamed),
        ],
    )
    .await;
    let provider = provider_for(&fake).await;
    let mut req = hello("gpt-4o-mini");
    req.tools = vec![weather_tool()];
    req.tool_choice = Some(ToolChoice::Auto);

    let expected = vec![
        ToolCall {
            id: "call_abc".into(),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Oslo\"}".into(),
        },
        ToolCall {
            id: "call_def".into(),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Rome\"}".into(),
        },
    ];
    let answer = provider.chat(&req).await.unwrap();
    assert_eq!(answer.message.tool_calls, expected);
    assert_eq!(answer.message.content, "");
    assert_eq!(answer.finish_reason, FinishReason::ToolCalls);

    let (events, err) = drain(provider.chat_stream(&req).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    let collected = collect(&events);
    assert_eq!(collected.message().tool_calls, expected);
    assert_eq!(collected.finish_reason(), Some(&FinishReason::ToolCalls));
    assert!(matches!(events.last(), Some(StreamEvent::Usage(_))));

    let seen = fake.seen(0).body;
    assert_eq!(seen["tools"][0]["type"], "function");
    assert_eq!(seen["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(seen["tools"][0]["function"]["parameters"]["type"], "object");
    assert_eq!(seen["tool_choice"], "auto");

    // The follow-up carries the assistant's calls and the tool results.
    req.messages.push(answer.message.clone());
    req.messages.push(Message::tool_result("call_abc", "3C"));
    req.messages.push(Message::tool_result("call_def", "20C"));
    let _ = provider.chat_stream(&req).await.unwrap();
    let sent = &fake.seen(2).body["messages"];
    assert_eq!(sent[2]["tool_calls"][1]["function"]["arguments"], "{\"city\":\"Rome\"}");
    assert_eq!(sent[2]["content"], Value::Null);
    assert_eq!(sent[3], json!({"role": "tool", "tool_call_id": "call_abc", "content": "3C"}));
}

#[tokio::test]
async fn a_400_is_an_upstream_error_with_the_providers_message_and_no_retry() {
    let fake = Fake::start(
        PATH,
        vec![Reply::json(
            400,
            json!({"error": {"message": "Invalid value for 'temperature'.", "type": "invalid_request_error", "param": "temperature", "code": null}}),
        )],
    )
    .await;
    let err = provider_for(&fake).await.chat(&hello("gpt-4o-mini")).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Upstream { status: 400, message: "Invalid value for 'temperature'.".into() }
    );
    assert_eq!(fake.hits(), 1);
    let core: bulkhead_core::Error = err.into();
    assert_eq!(core.code, bulkhead_core::Code::InvalidRequest);
    assert!(core.message.contains("Invalid value for 'temperature'."));
}

#[tokio::test]
async fn a_429_waits_for_retry_after_then_succeeds() {
    let ok = completion(json!({"role": "assistant", "content": "late but fine"}), "stop");
    let limited = json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}});
    let fake =
        Fake::start(PATH, vec![Reply::json(429, limited).header("retry-after", "1"), Reply::json(200, ok)])
            .await;
    let started = Instant::now();
    let answer = provider_for(&fake).await.chat(&hello("gpt-4o-mini")).await.unwrap();
    assert_eq!(answer.message.content, "late but fine");
    assert_eq!(fake.hits(), 2);
    assert!(started.elapsed() >= Duration::from_secs(1), "retried after {:?}", started.elapsed());
}

#[tokio::test]
async fn two_500s_then_success_takes_three_attempts() {
    let boom = json!({"error": {"message": "The server had an error", "type": "server_error"}});
    let ok = completion(json!({"role": "assistant", "content": "third time"}), "stop");
    let fake =
        Fake::start(PATH, vec![Reply::json(500, boom.clone()), Reply::json(502, boom), Reply::json(200, ok)])
            .await;
    let answer = provider_for(&fake).await.chat(&hello("gpt-4o-mini")).await.unwrap();
    assert_eq!(answer.message.content, "third time");
    assert_eq!(fake.hits(), 3);
}

#[tokio::test]
async fn exhausted_retries_return_the_last_error() {
    let busy = json!({"error": {"message": "overloaded", "type": "server_error"}});
    let fake = Fake::start(PATH, vec![Reply::json(503, busy)]).await;
    let err = provider_for(&fake).await.chat(&hello("gpt-4o-mini")).await.unwrap_err();
    assert_eq!(err, ProviderError::Upstream { status: 503, message: "overloaded".into() });
    assert_eq!(fake.hits(), 3, "one attempt and max_retries = 2 retries");
    let core: bulkhead_core::Error = err.into();
    assert_eq!(core.status(), 503);
    assert!(!core.message.contains("overloaded"));

    // 429s too, ending as RateLimited with the hint for the caller.
    let fake = Fake::start(PATH, vec![Reply::json(429, json!({})).header("retry-after", "0")]).await;
    let cfg = ProviderConfig { max_retries: 0, ..config(&format!("{}/v1", fake.base)) };
    let err = OpenAiProvider::new(cfg).unwrap().chat(&hello("m")).await.unwrap_err();
    assert_eq!(err, ProviderError::RateLimited { retry_after: Some(Duration::ZERO) });
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn streams_retry_only_before_the_first_event() {
    // A 500, then a stream: retried, and the stream works.
    let good = openai_sse(&[chunk(json!({"content": "ok"}), None), chunk(json!({}), Some("stop"))]);
    let fake =
        Fake::start(PATH, vec![Reply::json(500, json!({"error": {"message": "x"}})), Reply::sse(good)]).await;
    let (events, err) = drain(provider_for(&fake).await.chat_stream(&hello("m")).await.unwrap()).await;
    assert!(err.is_none());
    assert_eq!(
        events,
        vec![StreamEvent::Delta { text: "ok".into() }, StreamEvent::Finish { reason: FinishReason::Stop }]
    );
    assert_eq!(fake.hits(), 2);

    // An error before any event (in the stream): retried too.
    let early_error = "data: {\"error\":{\"message\":\"engine overloaded\",\"code\":503}}\n\n";
    let good = openai_sse(&[chunk(json!({"content": "ok"}), None), chunk(json!({}), Some("stop"))]);
    let fake = Fake::start(PATH, vec![Reply::sse(early_error), Reply::sse(good)]).await;
    let (events, err) = drain(provider_for(&fake).await.chat_stream(&hello("m")).await.unwrap()).await;
    assert!(err.is_none() && events.len() == 2);
    assert_eq!(fake.hits(), 2);

    // An error after the first event ends the stream, unretried.
    let broken = format!(
        "data: {}\n\ndata: {{\"error\":{{\"message\":\"engine died\",\"code\":500}}}}\n\n",
        chunk(json!({"content": "partial"}), None)
    );
    let fake = Fake::start(PATH, vec![Reply::sse(broken)]).await;
    let (events, err) = drain(provider_for(&fake).await.chat_stream(&hello("m")).await.unwrap()).await;
    assert_eq!(events, vec![StreamEvent::Delta { text: "partial".into() }]);
    assert_eq!(err, Some(ProviderError::Upstream { status: 500, message: "engine died".into() }));
    assert_eq!(fake.hits(), 1);

    // A body cut off before the finish is an error, not a silent end.
    let cut = format!("data: {}\n\n", chunk(json!({"content": "half"}), None));
    let fake = Fake::start(PATH, vec![Reply::sse(cut)]).await;
    let (_, err) = drain(provider_for(&fake).await.chat_stream(&hello("m")).await.unwrap()).await;
    assert!(matches!(err, Some(ProviderError::Transport(_))), "{err:?}");
}

#[tokio::test]
async fn the_key_arrives_in_the_header_but_never_in_errors_or_debug() {
    let rejected = json!({"error": {
        "message": format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."),
        "type": "invalid_request_error", "param": null, "code": "invalid_api_key"
    }});
    let fake = Fake::start(PATH, vec![Reply::json(401, rejected)]).await;
    let cfg = config(&format!("{}/v1", fake.base));
    assert!(!format!("{cfg:?}").contains(KEY));
    let err = OpenAiProvider::new(cfg).unwrap().chat(&hello("gpt-4o")).await.unwrap_err();
    assert_eq!(fake.seen(0).headers["authorization"], format!("Bearer {KEY}"));
    assert!(matches!(err, ProviderError::Upstream { status: 401, .. }), "{err:?}");
    assert!(err.to_string().contains("Incorrect API key provided: [redacted]"), "{err}");
    assert_no_key(&err);
    // A bad platform key is not the caller's fault: a generic 503.
    let core: bulkhead_core::Error = err.into();
    assert_eq!(core.code, bulkhead_core::Code::Unavailable);
}

#[tokio::test]
async fn embeddings_come_back_in_input_order() {
    let body = json!({
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.5, -0.25]},
            {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8}
    });
    let fake = Fake::start("/v1/embeddings", vec![Reply::json(200, body)]).await;
    let provider = provider_for(&fake).await;
    let inputs = vec!["first".to_owned(), "second".to_owned()];
    let e = provider.embed("text-embedding-3-small", &inputs).await.unwrap();
    assert_eq!(e.vectors, vec![vec![1.0, 0.0], vec![0.5, -0.25]]);
    assert_eq!(e.usage, Usage { input_tokens: 8, output_tokens: 0, cached_input_tokens: 0 });
    assert_eq!(
        fake.seen(0).body,
        json!({"model": "text-embedding-3-small", "input": ["first", "second"], "encoding_format": "float"})
    );
    assert_eq!(fake.seen(0).headers["authorization"], format!("Bearer {KEY}"));

    // A count that does not match the inputs is refused.
    let err = provider.embed("text-embedding-3-small", &inputs[..1]).await.unwrap_err();
    assert!(matches!(err, ProviderError::InvalidResponse(_)));
    assert!(provider.embed("m", &[]).await.unwrap().vectors.is_empty());
}
