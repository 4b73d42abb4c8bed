//! How to reach one provider: base URL, key, timeouts and retry policy.
//!
//! Invariant: the API key is never printed. `Debug` shows `[redacted]` in its
//! place, and no error of this crate includes it (see [`crate::error`]).

use std::fmt;
use std::time::Duration;

/// OpenAI's API, including the `/v1` prefix (the adapter appends
/// `/chat/completions` and `/embeddings`).
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Anthropic's API, without the `/v1` prefix (the adapter appends `/v1/messages`).
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

/// The connection and retry settings of one provider.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// For OpenAI-compatible servers the URL that `/chat/completions` hangs
    /// off, e.g. `http://127.0.0.1:8000/v1`; for Anthropic the host, e.g.
    /// [`ANTHROPIC_BASE_URL`]. A trailing slash is ignored. Ignored by the
    /// built-in provider.
    pub base_url: String,
    /// The provider's API key; `None` for local servers that need none.
    pub api_key: Option<String>,
    /// A non-streaming request as a whole, reading the answer included. For a
    /// stream: the wait for the response headers and for each next chunk.
    pub timeout: Duration,
    /// Establishing the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// How many times a failed attempt is retried (0: one attempt only).
    pub max_retries: u32,
    /// The first backoff; it doubles with each retry (see [`crate::retry`]).
    pub retry_base: Duration,
}

impl ProviderConfig {
    /// Defaults: 120 s timeout, 10 s connect timeout, 2 retries from 500 ms, no key.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            max_retries: 2,
            retry_base: Duration::from_millis(500),
        }
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The base URL without a trailing slash.
    pub(crate) fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_base", &self.retry_base)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_key() {
        let c = ProviderConfig::new(OPENAI_BASE_URL).with_api_key("sk-very-secret-123");
        let dbg = format!("{c:?} {c:#?}");
        assert!(!dbg.contains("sk-very-secret-123"), "{dbg}");
        assert!(dbg.contains("[redacted]"));
        assert!(format!("{:?}", ProviderConfig::new("http://x")).contains("api_key: None"));
    }
}
