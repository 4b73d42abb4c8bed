//! The HTTP side shared by the network adapters: one `reqwest` client per
//! provider, JSON calls and event streams with timeouts and retries, and the
//! translation of HTTP failures into [`ProviderError`]s.
//!
//! Invariants:
//! - Credentials travel only in headers marked sensitive; no error or log
//!   line built here contains a header, a URL or the key. An upstream error
//!   message is taken from the error body, truncated, and scrubbed of the
//!   configured key (some providers quote a part of a rejected key back).
//! - Nothing is buffered without bound: an answer body is capped at
//!   [`MAX_BODY`], an error body at [`MAX_ERROR_BODY`], an event-stream line
//!   at [`crate::sse::MAX_LINE`].
//! - Dropping a future or a stream returned from here drops the `reqwest`
//!   response, which closes the connection: the provider stops generating
//!   (and billing) for an answer nobody reads.

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::retry::with_retries;
use crate::sse::{SseEvent, SseParser};
use crate::{ProviderConfig, ProviderError, StreamEvent};

/// The largest non-streamed answer we read.
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// The part of an error body we read.
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// The longest upstream error message we keep.
const MAX_MESSAGE_CHARS: usize = 1000;

/// A configured HTTP client for one provider.
pub(crate) struct Http {
    kind: &'static str,
    client: reqwest::Client,
    config: ProviderConfig,
    /// Authentication and version headers, sent with every request.
    headers: HeaderMap,
}

impl Http {
    /// A client for `config`. `headers` carries the provider's auth headers;
    /// mark them with [`sensitive`].
    pub fn new(
        kind: &'static str,
        config: ProviderConfig,
        headers: HeaderMap,
        client: Option<reqwest::Client>,
    ) -> Result<Self, ProviderError> {
        match reqwest::Url::parse(config.base()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            // The URL itself is not echoed: it may carry credentials.
            _ => return Err(ProviderError::Config("base_url is not an http(s) URL".to_owned())),
        }
        let client = match client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {}", chain(&e))))?,
        };
        Ok(Self { kind, client, config, headers })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// `{base_url}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base())
    }

    /// POSTs `body` and parses the JSON answer, with retries.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ProviderError> {
        let url = &self.url(path);
        with_retries(self.kind, &self.config, || async move {
            let response = self
                .client
                .post(url)
                .headers(self.headers.clone())
                .json(body)
                // From connecting until the body has been read.
                .timeout(self.config.timeout)
                .send()
                .await
                .map_err(from_reqwest)?;
            let response = self.check_status(response).await?;
            let bytes = read_limited(response, MAX_BODY).await?;
            serde_json::from_slice(&bytes).map_err(|e| ProviderError::InvalidResponse(e.to_string()))
        })
        .await
    }

    /// POSTs `body` and returns its event stream decoded by a fresh
    /// `decoder()` per attempt. Attempts are retried until one yields its
    /// first event (see [`crate::retry`]); the returned stream never retries.
    pub async fn post_stream<D: Decoder>(
        &self,
        path: &str,
        body: &serde_json::Value,
        decoder: impl Fn() -> D,
    ) -> Result<BoxStream<'static, Result<StreamEvent, ProviderError>>, ProviderError> {
        let url = &self.url(path);
        let decoder = &decoder;
        let timeout = self.config.timeout;
        let (first, rest) = with_retries(self.kind, &self.config, || async move {
            let send = self.client.post(url).headers(self.headers.clone()).json(body).send();
            let response = tokio::time::timeout(timeout, send)
                .await
                .map_err(|_| ProviderError::Timeout)?
                .map_err(from_reqwest)?;
            let response = self.check_status(response).await?;
            if let Some(ct) = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
                && ct.contains("json")
            {
                return Err(ProviderError::InvalidResponse(format!(
                    "expected an event stream, got {ct} (does the server support streaming?)"
                )));
            }
            let mut events = SseBody::new(response, decoder(), timeout);
            match events.next_event().await {
                Some(Ok(first)) => Ok((Some(first), events)),
                Some(Err(err)) => Err(err),
                None => Ok((None, events)),
            }
        })
        .await?;
        let rest = futures::stream::unfold(rest, |mut events| async move {
            events.next_event().await.map(|item| (item, events))
        });
        Ok(futures::stream::iter(first.map(Ok)).chain(rest).boxed())
    }

    /// Passes a success through; turns anything else into an error built
    /// from the status, the retry headers and the error body.
    async fn check_status(&self, response: Response) -> Result<Response, ProviderError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = tokio::time::timeout(self.config.timeout, read_truncated(response, MAX_ERROR_BODY))
            .await
            .unwrap_or_default();
        Err(upstream_error(status, retry_after, &body, self.config.api_key.as_deref()))
    }
}

/// A header value that HTTP libraries must not print (hyper and reqwest
/// honour the flag in their debug output).
pub(crate) fn sensitive(value: &str) -> Result<HeaderValue, ProviderError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        ProviderError::Config("the API key contains characters that are not allowed in a header".to_owned())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// The provider's retry hint: `retry-after-ms` (OpenAI) or `Retry-After`
/// in seconds. The HTTP-date form is ignored (the backoff applies instead).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms.min(86_400_000.0) / 1000.0));
    }
    number("retry-after").map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// The error for a non-success status. `body` is the (possibly truncated)
/// error body; its message is found in the shapes providers use.
pub(crate) fn upstream_error(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    api_key: Option<&str>,
) -> ProviderError {
    let (message, kind) = error_message(body);
    // OpenAI answers 429 also when the account's quota is used up; waiting
    // does not help then, so it is not a rate limit to retry.
    let quota = kind.as_deref().is_some_and(|k| k == "insufficient_quota");
    if status == StatusCode::TOO_MANY_REQUESTS && !quota {
        return ProviderError::RateLimited { retry_after };
    }
    let message = message
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    ProviderError::Upstream { status: status.as_u16(), message: scrub(&message, api_key) }
}

/// The message (and type or code) of an error body: `{"error":{"message",
/// "type"}}` (OpenAI, Anthropic, llama.cpp), `{"error":"…"}` (Ollama),
/// `{"message","type"}` (vLLM), `{"detail":"…"}` (FastAPI servers), or a
/// short plain-text body.
pub(crate) fn error_message(body: &[u8]) -> (Option<String>, Option<String>) {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let err = &v["error"];
        let kind = text(&err["code"]).or_else(|| text(&err["type"])).or_else(|| text(&v["type"]));
        let message = text(&err["message"])
            .or_else(|| text(err))
            .or_else(|| text(&v["message"]))
            .or_else(|| text(&v["detail"]));
        return (message, kind);
    }
    let body = String::from_utf8_lossy(body);
    let body = body.trim();
    // An HTML error page from a proxy says nothing useful.
    let plain = !body.is_empty() && !body.starts_with('<');
    (plain.then(|| body.to_owned()), None)
}

/// Truncates an upstream message and removes the key from it.
pub(crate) fn scrub(message: &str, api_key: Option<&str>) -> String {
    let mut m = match api_key {
        Some(key) if !key.is_empty() => message.replace(key, "[redacted]"),
        _ => message.to_owned(),
    };
    if let Some((cut, _)) = m.char_indices().nth(MAX_MESSAGE_CHARS) {
        m.truncate(cut);
        m.push('…');
    }
    m
}

/// A `reqwest` failure as a [`ProviderError`], without its URL.
pub(crate) fn from_reqwest(err: reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        return ProviderError::Timeout;
    }
    ProviderError::Transport(chain(&err.without_url()))
}

/// An error and its sources, `: `-separated (reqwest's own message alone is
/// often just "error sending request").
fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

async fn read_limited(mut response: Response, limit: usize) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(from_reqwest)? {
        if out.len() + chunk.len() > limit {
            return Err(ProviderError::InvalidResponse(format!("an answer larger than {limit} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Up to `limit` bytes of the body; a failure just ends it (it is only read
/// for an error message).
async fn read_truncated(mut response: Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        out.extend_from_slice(&chunk[..chunk.len().min(limit - out.len())]);
        if out.len() >= limit {
            break;
        }
    }
    out
}

/// Turns a provider's server-sent events into [`StreamEvent`]s.
pub(crate) trait Decoder: Send + 'static {
    /// Handles one event, pushing what it yields onto `out`. `Ok(true)` once
    /// the provider said the answer is complete (`[DONE]`, `message_stop`).
    fn event(&mut self, event: SseEvent, out: &mut VecDeque<StreamEvent>) -> Result<bool, ProviderError>;

    /// The body ended without the completion signal: flush what is pending
    /// if the answer is nonetheless whole, else fail.
    fn end(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError>;
}

/// A response body being read as events. Holding it holds the connection;
/// dropping it closes the connection.
struct SseBody<D> {
    body: Option<BoxStream<'static, reqwest::Result<Vec<u8>>>>,
    parser: SseParser,
    decoder: D,
    queue: VecDeque<StreamEvent>,
    done: bool,
    /// The longest wait for the next chunk.
    idle_timeout: Duration,
}

impl<D: Decoder> SseBody<D> {
    fn new(response: Response, decoder: D, idle_timeout: Duration) -> Self {
        Self {
            body: Some(response.bytes_stream().map(|chunk| chunk.map(|b| b.to_vec())).boxed()),
            parser: SseParser::new(),
            decoder,
            queue: VecDeque::new(),
            done: false,
            idle_timeout,
        }
    }

    /// Ends the stream and releases the connection.
    fn close(&mut self) {
        self.done = true;
        self.body = None;
    }

    async fn next_event(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if let Some(sse) = self.parser.next_event() {
                match self.decoder.event(sse, &mut self.queue) {
                    Ok(false) => {}
                    Ok(true) => self.close(),
                    Err(err) => {
                        self.close();
                        return Some(Err(err));
                    }
                }
                continue;
            }
            let Some(body) = self.body.as_mut() else {
                // The body has ended and every event in it is handled.
                self.close();
                if let Err(err) = self.decoder.end(&mut self.queue) {
                    return Some(Err(err));
                }
                continue;
            };
            match tokio::time::timeout(self.idle_timeout, body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if let Err(err) = self.parser.push(&chunk) {
                        self.close();
                        return Some(Err(err));
                    }
                }
                Ok(Some(Err(err))) => {
                    self.close();
                    return Some(Err(from_reqwest(err)));
                }
                Ok(None) => {
                    self.body = None;
                    self.parser.finish();
                }
                Err(_) => {
                    self.close();
                    return Some(Err(ProviderError::Timeout));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_found_in_every_known_shape() {
        let m = |b: &str| error_message(b.as_bytes());
        assert_eq!(
            m(r#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#),
            (Some("bad model".into()), Some("invalid_request_error".into()))
        );
        assert_eq!(
            m(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            (Some("Overloaded".into()), Some("overloaded_error".into()))
        );
        assert_eq!(m(r#"{"error":"model 'x' not found"}"#).0.unwrap(), "model 'x' not found");
        assert_eq!(m(r#"{"object":"error","message":"too long","code":400}"#).0.unwrap(), "too long");
        assert_eq!(m(r#"{"detail":"Not Found"}"#).0.unwrap(), "Not Found");
        assert_eq!(m("upstream connect error").0.unwrap(), "upstream connect error");
        assert_eq!(m("<html>502</html>").0, None);
    }

    #[test]
    fn upstream_errors_scrub_the_key_and_classify_429s() {
        let key = "sk-live-0123456789";
        let body = format!(r#"{{"error":{{"message":"Incorrect API key provided: {key}.","type":"x"}}}}"#);
        let e = upstream_error(StatusCode::UNAUTHORIZED, None, body.as_bytes(), Some(key));
        assert!(!e.to_string().contains(key), "{e}");
        assert!(e.to_string().contains("[redacted]"));

        let e = upstream_error(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(2)), b"{}", None);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let e = upstream_error(StatusCode::TOO_MANY_REQUESTS, None, quota, None);
        assert!(matches!(e, ProviderError::Upstream { status: 429, .. }) && !e.is_retryable());

        let e = upstream_error(StatusCode::BAD_GATEWAY, None, b"<html>bad gateway</html>", None);
        assert!(
            matches!(e, ProviderError::Upstream { status: 502, ref message } if message == "Bad Gateway")
        );
        let long = "x".repeat(5000);
        let ProviderError::Upstream { message, .. } =
            upstream_error(StatusCode::BAD_REQUEST, None, long.as_bytes(), None)
        else {
            panic!()
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn retry_after_headers_in_both_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        h.insert("retry-after-ms", HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&h), None);
    }
}
