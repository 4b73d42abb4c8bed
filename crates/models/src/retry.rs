//! Retries of failed provider calls: which failures, how often, how long
//! to wait.
//!
//! # Policy
//!
//! - **What**: errors for which [`ProviderError::is_retryable`] holds — 429,
//!   408, 5xx (and 529), timeouts and transport failures. A 4xx such as a bad
//!   request or a bad key is never retried, nor is an answer we cannot parse.
//! - **How often**: at most [`ProviderConfig::max_retries`] retries, so at
//!   most `max_retries + 1` attempts.
//! - **How long**: when the provider sent `Retry-After` (seconds) or
//!   `retry-after-ms`, exactly that, capped at [`MAX_RETRY_AFTER`]; otherwise
//!   exponential backoff with "equal jitter": retry `n` (0-based) waits a
//!   uniformly random time in `[b/2, b)` where `b = retry_base · 2ⁿ`, capped at
//!   [`MAX_BACKOFF`]. The jitter spreads out the retries of many runs that
//!   failed together; the lower half keeps a minimum spacing.
//! - **Streams**: the whole attempt — the request, the status, and reading up
//!   to the first event — is retried; once the first event has been handed to
//!   the caller, an error ends the stream and nothing is retried (the caller
//!   has already seen part of an answer).
//!
//! Waiting is `tokio::time::sleep`, so dropping the future stops the retries.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::{ProviderConfig, ProviderError};

/// The longest `Retry-After` we honour; a longer hint waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The longest exponential backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before retry `retry` (0-based) after `err`, with `jitter` in `[0, 1)`.
pub(crate) fn delay(err: &ProviderError, base: Duration, retry: u32, jitter: f64) -> Duration {
    match err.retry_after() {
        Some(hint) => hint.min(MAX_RETRY_AFTER),
        None => backoff(base, retry, jitter),
    }
}

/// `b/2 + jitter · b/2` with `b = base · 2^retry`, capped at [`MAX_BACKOFF`].
pub(crate) fn backoff(base: Duration, retry: u32, jitter: f64) -> Duration {
    let b = base.saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX)).min(MAX_BACKOFF);
    let half = b / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// A number in `[0, 1)` that differs from call to call. Jitter needs no
/// cryptographic quality: std's randomly keyed hasher is enough, and saves
/// a dependency.
fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x6a69_7474_6572);
    // The top 53 bits as a fraction, so the result is < 1.
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `attempt` until it succeeds, fails with a non-retryable error, or
/// the retries are used up; the last error is returned.
pub(crate) async fn with_retries<T, F, Fut>(
    provider: &'static str,
    config: &ProviderConfig,
    mut attempt: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut retry = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_retryable() && retry < config.max_retries => {
                let wait = delay(&err, config.retry_base, retry, jitter());
                // The error's text holds no key or URL (see crate::error).
                tracing::warn!(
                    provider,
                    retry = retry + 1,
                    max_retries = config.max_retries,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %err,
                    "model provider call failed; retrying"
                );
                tokio::time::sleep(wait).await;
                retry += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let base = Duration::from_millis(100);
        let rl = |s| ProviderError::RateLimited { retry_after: Some(Duration::from_secs(s)) };
        assert_eq!(delay(&rl(2), base, 0, 0.9), Duration::from_secs(2));
        assert_eq!(delay(&rl(3600), base, 0, 0.9), MAX_RETRY_AFTER);
        let no_hint = ProviderError::RateLimited { retry_after: None };
        assert_eq!(delay(&no_hint, base, 2, 0.0), Duration::from_millis(200));
    }

    #[test]
    fn jitter_is_in_range_and_varies() {
        let samples: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(samples.windows(2).any(|w| w[0] != w[1]));
    }

    proptest! {
        #[test]
        fn backoff_doubles_within_half_open_bounds(base_ms in 1u64..5_000, retry in 0u32..40, j in 0.0f64..1.0) {
            let base = Duration::from_millis(base_ms);
            let b = base.saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX)).min(MAX_BACKOFF);
            let d = backoff(base, retry, j);
            prop_assert!(d >= b / 2, "{d:?} < {b:?}/2");
            prop_assert!(d <= b && d <= MAX_BACKOFF, "{d:?} > {b:?}");
            // Without jitter, each retry waits at least as long as the one before.
            prop_assert!(backoff(base, retry + 1, 0.0) >= backoff(base, retry, 0.0));
        }
    }
}
