//! The network adapters against fake providers: small axum apps on
//! `127.0.0.1:0` that answer in each provider's real wire format (JSON
//! bodies, SSE streams, error bodies, `Retry-After`), recording what they
//! were sent. Also: cancellation, timeouts, key hygiene and the registry.

mod anthropic;
mod openai;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::*;

pub(crate) const KEY: &str = "sk-test-5ecret-key-0123456789";

/// One canned answer of a fake provider.
#[derive(Clone)]
pub(crate) struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    content_type: &'static str,
    body: String,
    /// Wait this long before answering.
    delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// An event stream; the body goes out in small pieces, so events and
    /// lines are split across chunks.
    pub fn sse(body: impl Into<String>) -> Self {
        Self { content_type: "text/event-stream", ..Self::json(200, Value::Null) }.body(body)
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// `data: {json}` lines for OpenAI-style streams, ending with `[DONE]`.
pub(crate) fn openai_sse(chunks: &[Value]) -> String {
    let mut s: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    s.push_str("data: [DONE]\n\n");
    s
}

/// `event: TYPE` + `data: {json}` pairs for Anthropic-style streams.
pub(crate) fn anthropic_sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())).collect()
}

/// What a fake provider was sent.
pub(crate) struct Seen {
    pub headers: HeaderMap,
    pub body: Value,
}

struct FakeState {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

/// A fake provider answering POSTs to `path` with `replies` in turn (the
/// last one repeats). Stops when dropped.
pub(crate) struct Fake {
    pub base: String,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    pub async fn start(path: &str, replies: Vec<Reply>) -> Self {
        let state = Arc::new(FakeState { replies: Mutex::new(replies.into()), seen: Mutex::new(Vec::new()) });
        let app = Router::new().route(path, post(answer)).with_state(state.clone());
        let (base, task) = serve(app).await;
        Self { base, state, task }
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    pub fn seen(&self, i: usize) -> Seen {
        let seen = self.state.seen.lock().unwrap();
        Seen { headers: seen[i].headers.clone(), body: seen[i].body.clone() }
    }
}

async fn answer(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).expect("the adapter sent invalid JSON");
    state.seen.lock().unwrap().push(Seen { headers, body });
    let reply = {
        let mut replies = state.replies.lock().unwrap();
        if replies.len() > 1 { replies.pop_front().unwrap() } else { replies[0].clone() }
    };
    tokio::time::sleep(reply.delay).await;
    let mut headers = HeaderMap::new();
    headers.insert("content-type", reply.content_type.parse().unwrap());
    for (name, value) in &reply.headers {
        headers.insert(*name, value.parse().unwrap());
    }
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        reply.body.as_bytes().chunks(7).map(|c| Ok(c.to_vec())).collect();
    let body = Body::from_stream(futures::stream::iter(pieces));
    (StatusCode::from_u16(reply.status).unwrap(), headers, body).into_response()
}

/// Serves `app` on a fresh loopback port; returns `http://127.0.0.1:PORT`.
async fn serve(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

/// A test configuration: the key, short backoffs, 2 retries.
pub(crate) fn config(base: &str) -> ProviderConfig {
    ProviderConfig {
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_retries: 2,
        retry_base: Duration::from_millis(10),
        ..ProviderConfig::new(base).with_api_key(KEY)
    }
}

/// All events of a stream (stopping at the first error, which is returned too).
pub(crate) async fn drain(mut stream: EventStream) -> (Vec<StreamEvent>, Option<ProviderError>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

pub(crate) fn collect(events: &[StreamEvent]) -> StreamCollector {
    let mut c = StreamCollector::new();
    events.iter().for_each(|e| c.push(e));
    c
}

/// Asserts that no rendering of `err` — its message, its `Debug`, the
/// caller-facing error — contains the key.
pub(crate) fn assert_no_key(err: &ProviderError) {
    let core: bulkhead_core::Error = err.clone().into();
    for text in [err.to_string(), format!("{err:?}"), core.message.to_string(), format!("{core:?}")] {
        assert!(!text.contains(KEY) && !text.contains("5ecret"), "the key leaked: {text}");
    }
}

pub(crate) fn hello(model: &str) -> ChatRequest {
    ChatRequest::new(model, vec![Message::system("Be brief."), Message::user("Hello")])
}

// ---------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------

/// A stream that sends one OpenAI chunk every 50 ms, for 10 s, and reports
/// through `closed` when a send fails — which happens once the client has
/// closed the connection and hyper has dropped the body.
async fn slow_stream_server() -> (String, oneshot::Receiver<usize>, tokio::task::JoinHandle<()>) {
    let (closed_tx, closed_rx) = oneshot::channel::<usize>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let closed_tx = closed_tx.clone();
            async move {
                let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(1);
                tokio::spawn(async move {
                    for i in 0..200 {
                        let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": format!("w{i} ")}}]});
                        if tx.send(Ok(format!("data: {chunk}\n\n"))).await.is_err() {
                            if let Some(tx) = closed_tx.lock().unwrap().take() {
                                let _ = tx.send(i);
                            }
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
                let body = Body::from_stream(tokio_stream_from(rx));
                ([("content-type", "text/event-stream")], body).into_response()
            }
        }),
    );
    let (base, task) = serve(app).await;
    (format!("{base}/v1"), closed_rx, task)
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn dropping_a_stream_closes_the_connection() {
    let (base, closed, task) = slow_stream_server().await;
    let provider = OpenAiProvider::new(config(&base)).unwrap();
    let mut stream = provider.chat_stream(&hello("gpt-4o-mini")).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, StreamEvent::Delta { text: "w0 ".into() });
    drop(stream);
    // The fake would stream for 10 s; it must notice the close well before.
    let sent = tokio::time::timeout(Duration::from_secs(1), closed)
        .await
        .expect("the fake never noticed the closed connection")
        .unwrap();
    assert!(sent < 20, "the fake sent {sent} chunks before noticing");
    task.abort();
}

#[tokio::test]
async fn dropping_a_pending_call_closes_the_connection() {
    // A handler that never answers; a guard in it fires when hyper drops
    // the handler's future, which it does once the client has gone.
    struct Guard(Option<oneshot::Sender<()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.take().unwrap().send(());
        }
    }
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let guard = Guard(dropped_tx.lock().unwrap().take());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::OK
            }
        }),
    );
    let (base, task) = serve(app).await;
    let provider = OpenAiProvider::new(config(&format!("{base}/v1"))).unwrap();
    let call = tokio::time::timeout(Duration::from_millis(200), provider.chat(&hello("gpt-4o-mini"))).await;
    assert!(call.is_err(), "the call should still be pending");
    tokio::time::timeout(Duration::from_secs(1), dropped_rx)
        .await
        .expect("the fake's handler kept running after the client went away")
        .unwrap();
    task.abort();
}

// ---------------------------------------------------------------------------
// Timeouts, transport failures, key hygiene, registry
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_slow_provider_times_out() {
    let fake = Fake::start(
        "/v1/chat/completions",
        vec![Reply::json(200, serde_json::json!({})).delay(Duration::from_secs(3))],
    )
    .await;
    let cfg = ProviderConfig {
        timeout: Duration::from_millis(300),
        max_retries: 0,
        ..config(&format!("{}/v1", fake.base))
    };
    let provider = OpenAiProvider::new(cfg).unwrap();
    let started = std::time::Instant::now();
    let err = provider.chat(&hello("m")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The stream's wait for its headers is bounded by the same timeout.
    let err = provider.chat_stream(&hello("m")).await.err().unwrap();
    assert!(matches!(err, ProviderError::Timeout), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_retried_transport_error_without_the_key() {
    // A port that was free a moment ago: connecting is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://user:{KEY}@127.0.0.1:{port}/v1");
    for provider in [build("openai", config(&base)).unwrap(), build("anthropic", config(&base)).unwrap()] {
        let err = provider.chat(&hello("m")).await.unwrap_err();
        assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
        assert!(err.is_retryable());
        assert!(!err.to_string().contains("127.0.0.1"), "the URL leaked: {err}");
        assert_no_key(&err);
    }
}

#[test]
fn the_registry_builds_each_kind_and_refuses_others() {
    for kind in KINDS {
        assert_eq!(build(kind, config("http://127.0.0.1:1/v1")).unwrap().kind(), kind);
    }
    let err = build("gemini", config("http://x")).err().unwrap();
    assert!(matches!(err, ProviderError::Config(_)) && err.to_string().contains("openai"));
    let err = build("openai", config(&format!("ftp://u:{KEY}@host"))).err().unwrap();
    assert!(matches!(err, ProviderError::Config(_)));
    assert_no_key(&err);
    let err = build("openai", ProviderConfig::new("http://x").with_api_key("bad\nkey")).err().unwrap();
    assert!(matches!(err, ProviderError::Config(_)) && !err.to_string().contains("bad"));
}
