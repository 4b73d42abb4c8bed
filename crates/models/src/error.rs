//! The crate's error type, and its explicit conversion into the caller-facing
//! [`bulkhead_core::Error`].
//!
//! Invariant: no variant ever holds a request header, an API key or a URL.
//! Upstream messages come from the provider's error *body*, with the
//! configured key scrubbed out (see `transport::upstream_error`), and
//! transport errors are rendered without their URL. The conversion shows the
//! caller a provider's message only for a 4xx that the caller can act on;
//! everything else becomes a generic 503 whose cause stays in `source` for
//! the server log.

use std::time::Duration;

use bulkhead_core::Code;
use serde_json::json;

/// What can go wrong when calling a model provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused for rate or capacity reasons (HTTP 429, or a
    /// streamed `rate_limit_error`). `retry_after` is the provider's hint.
    #[error("the model provider is rate limiting requests{}", retry_hint(*.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// The provider answered with an error status. `message` comes from its
    /// error body.
    #[error("the model provider answered {status}: {message}")]
    Upstream { status: u16, message: String },
    /// No answer (or, for a stream, no next chunk) within the configured timeout.
    #[error("the model provider did not answer in time")]
    Timeout,
    /// The connection failed or broke (connect, TLS, reset, a stream cut short).
    #[error("could not reach the model provider: {0}")]
    Transport(String),
    /// The provider answered something that is not its documented format.
    #[error("unexpected answer from the model provider: {0}")]
    InvalidResponse(String),
    /// The provider cannot do this (e.g. embeddings on Anthropic).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The request cannot be expressed for this provider (e.g. tool-call
    /// arguments that are not a JSON object, which Anthropic requires).
    #[error("{0}")]
    InvalidRequest(String),
    /// The provider is misconfigured (unknown kind, bad base URL).
    #[error("invalid model provider configuration: {0}")]
    Config(String),
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!("; retry after {} ms", d.as_millis()),
        None => String::new(),
    }
}

impl ProviderError {
    /// Whether trying the same request again may succeed: rate limits, 408,
    /// 5xx (and Anthropic's 529), timeouts and transport failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::RateLimited { .. } | ProviderError::Timeout | ProviderError::Transport(_) => true,
            ProviderError::Upstream { status, .. } => *status == 408 || *status >= 500,
            ProviderError::InvalidResponse(_)
            | ProviderError::Unsupported(_)
            | ProviderError::InvalidRequest(_)
            | ProviderError::Config(_) => false,
        }
    }

    /// The provider's `Retry-After` hint, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

impl From<ProviderError> for bulkhead_core::Error {
    fn from(err: ProviderError) -> Self {
        match err {
            ProviderError::RateLimited { retry_after } => {
                let mut details = json!({ "limit": "model_provider" });
                let message = match retry_after {
                    Some(d) => {
                        // Rounded up: retrying a little early would only be refused again.
                        let ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1);
                        details["retry_after_ms"] = json!(ms);
                        format!("the model provider is rate limiting requests; retry after {ms} ms")
                    }
                    None => "the model provider is rate limiting requests; retry in a few seconds".to_owned(),
                };
                bulkhead_core::Error::new(Code::RateLimited, message).with_details(details)
            }
            // The provider's credentials and account are the platform's (or
            // the tenant admin's provider key), not the caller's: a 401/403
            // or an exhausted quota (a 429 that is not a rate limit) is a
            // problem the caller cannot fix, and a 401's message may quote
            // part of the key. So those are a generic 503.
            ProviderError::Upstream { status, ref message }
                if (400..500).contains(&status) && !matches!(status, 401 | 403 | 407 | 408 | 429) =>
            {
                let mut e = bulkhead_core::Error::new(
                    Code::InvalidRequest,
                    format!("the model provider refused the request: {message}"),
                )
                .with_details(json!({ "provider_status": status }));
                e.source = Some(Box::new(err));
                e
            }
            ProviderError::InvalidRequest(ref message) => {
                let mut e = bulkhead_core::Error::invalid(message.clone());
                e.source = Some(Box::new(err));
                e
            }
            ProviderError::Unsupported(ref message) => {
                let mut e =
                    bulkhead_core::Error::invalid(format!("not supported by this model provider: {message}"));
                e.source = Some(Box::new(err));
                e
            }
            ProviderError::Upstream { .. }
            | ProviderError::Timeout
            | ProviderError::Transport(_)
            | ProviderError::InvalidResponse(_)
            | ProviderError::Config(_) => {
                let mut e = bulkhead_core::Error::new(
                    Code::Unavailable,
                    "the model provider is unavailable or failed; retry later",
                );
                e.source = Some(Box::new(err));
                e
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(e: ProviderError) -> bulkhead_core::Error {
        e.into()
    }

    #[test]
    fn errors_map_to_stable_codes_without_leaking_internals() {
        let e = core(ProviderError::RateLimited { retry_after: Some(Duration::from_micros(1500)) });
        assert_eq!(e.status(), 429);
        assert_eq!(e.details.as_ref().unwrap()["retry_after_ms"], 2);

        let e = core(ProviderError::RateLimited { retry_after: None });
        assert_eq!(e.code, Code::RateLimited);
        assert!(e.details.unwrap().get("retry_after_ms").is_none());

        let e = core(ProviderError::Upstream { status: 400, message: "max_tokens is too large".into() });
        assert_eq!(e.code, Code::InvalidRequest);
        assert!(e.message.contains("max_tokens is too large"), "{}", e.message);

        for err in [
            ProviderError::Upstream { status: 500, message: "stack trace at /srv/internal".into() },
            ProviderError::Upstream { status: 401, message: "Incorrect API key provided: sk-ab***yz".into() },
            ProviderError::Upstream { status: 429, message: "You exceeded your current quota".into() },
            ProviderError::Timeout,
            ProviderError::Transport("connection refused 10.0.0.7:443".into()),
            ProviderError::InvalidResponse("expected value at line 1".into()),
        ] {
            let e = core(err);
            assert_eq!(e.code, Code::Unavailable);
            assert_eq!(e.status(), 503);
            assert!(!e.message.contains("/srv") && !e.message.contains("sk-") && !e.message.contains("10.0"));
            assert!(e.source.is_some());
        }
    }

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        assert!(ProviderError::RateLimited { retry_after: None }.is_retryable());
        assert!(ProviderError::Upstream { status: 503, message: String::new() }.is_retryable());
        assert!(ProviderError::Upstream { status: 529, message: String::new() }.is_retryable());
        assert!(ProviderError::Timeout.is_retryable());
        assert!(ProviderError::Transport("reset".into()).is_retryable());
        assert!(!ProviderError::Upstream { status: 400, message: String::new() }.is_retryable());
        assert!(!ProviderError::InvalidResponse("x".into()).is_retryable());
        assert!(!ProviderError::Unsupported("x".into()).is_retryable());
    }
}
