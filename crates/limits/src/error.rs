//! The crate's error type, and its explicit conversion into the caller-facing
//! [`bulkhead_core::Error`] (plus the 429 errors for a refused check or a
//! full concurrency cap).

use std::time::Duration;

use bulkhead_core::Code;
use serde_json::json;

use crate::{ConcurrencyKind, RateKind};

/// What can go wrong in a limiter.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// A single charge larger than the whole per-minute limit: it could never
    /// be admitted, however long the caller waits. (Not a `Limited` decision,
    /// whose `retry_after` promises that waiting helps.)
    #[error(
        "this needs {cost} of {kind} at once, more than the tenant's whole limit of {per_minute}; \
         split the work into smaller parts"
    )]
    CostExceedsLimit { kind: RateKind, cost: u64, per_minute: u64 },
    /// An operator's limits are out of range (from [`crate::TenantLimits::validate`]).
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
    /// A limiter was called with arguments outside its range (a zero limit,
    /// a zero lease, …): a bug in the caller, since limits are validated first.
    #[error("invalid limiter argument: {0}")]
    InvalidArgument(String),
    /// Redis failed or could not be reached.
    #[error("limit store (Redis) failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time. A charge or lease may or may not have
    /// been recorded; either way the caller was not admitted, and a lease
    /// expires by itself.
    #[error("limit store (Redis) did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered something the scripts never return.
    #[error("unexpected reply from the limit store (Redis): {0}")]
    UnexpectedReply(String),
}

impl LimitError {
    /// Whether the limit store is unavailable (as opposed to a bad request or
    /// a bug): the failures the rate fallback covers.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LimitError::Redis(_) | LimitError::Timeout(_))
    }
}

impl From<LimitError> for bulkhead_core::Error {
    fn from(err: LimitError) -> Self {
        match err {
            LimitError::CostExceedsLimit { kind, cost, per_minute } => {
                bulkhead_core::Error::new(Code::RateLimited, err.to_string())
                    .with_details(json!({ "limit": kind.as_str(), "per_minute": per_minute, "cost": cost }))
            }
            LimitError::InvalidLimits(message) => bulkhead_core::Error::invalid(message),
            LimitError::Redis(_) | LimitError::Timeout(_) | LimitError::UnexpectedReply(_) => {
                // 503 with a generic message; the cause stays in `source` for the log.
                let mut e = bulkhead_core::Error::new(
                    Code::Unavailable,
                    "rate limiting is temporarily unavailable; retry in a few seconds",
                );
                e.source = Some(Box::new(err));
                e
            }
            LimitError::InvalidArgument(_) => bulkhead_core::Error::internal(err),
        }
    }
}

/// The 429 error for a [`crate::Decision::Limited`]. `retry_after_ms` in the
/// details; the HTTP layer should also send `Retry-After` (whole seconds,
/// rounded up).
pub fn rate_limited(kind: RateKind, per_minute: u64, retry_after: Duration) -> bulkhead_core::Error {
    // Rounded up: retrying a little early would only be refused again.
    let retry_after_ms = u64::try_from(retry_after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1);
    bulkhead_core::Error::new(
        Code::RateLimited,
        format!(
            "the tenant's limit of {per_minute} {} is used up; retry after {} ms",
            kind_unit(kind),
            retry_after_ms
        ),
    )
    .with_details(json!({
        "limit": kind.as_str(),
        "per_minute": per_minute,
        "retry_after_ms": retry_after_ms,
    }))
}

/// The 429 error for a full concurrency cap (`acquire` returned `None`).
pub fn concurrency_limited(kind: ConcurrencyKind, max: u32) -> bulkhead_core::Error {
    let what = match kind {
        ConcurrencyKind::Runs => "agent runs",
        ConcurrencyKind::SandboxExecs => "sandbox executions",
    };
    bulkhead_core::Error::new(
        Code::RateLimited,
        format!("the tenant already has {max} {what} in flight, its limit; retry when one ends"),
    )
    .with_details(json!({ "limit": kind.as_str(), "max": max }))
}

fn kind_unit(kind: RateKind) -> &'static str {
    match kind {
        RateKind::Requests => "requests per minute",
        RateKind::Tokens => "tokens per minute",
        RateKind::ToolCalls => "tool calls per minute",
        RateKind::SandboxExecs => "sandbox executions per minute",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_stable_codes_without_leaking_internals() {
        let e: bulkhead_core::Error = LimitError::Timeout(Duration::from_millis(250)).into();
        assert_eq!(e.code, Code::Unavailable);
        assert!(!e.message.contains("Redis"), "{}", e.message);
        assert!(e.source.is_some());

        let e: bulkhead_core::Error =
            LimitError::CostExceedsLimit { kind: RateKind::Tokens, cost: 9000, per_minute: 1000 }.into();
        assert_eq!(e.code, Code::RateLimited);
        assert_eq!(e.details.unwrap()["limit"], "tokens_per_minute");

        let e = rate_limited(RateKind::Requests, 600, Duration::from_micros(1500));
        assert_eq!(e.status(), 429);
        assert_eq!(e.details.as_ref().unwrap()["retry_after_ms"], 2);
        assert_eq!(e.details.unwrap()["limit"], "requests_per_minute");

        let e = concurrency_limited(ConcurrencyKind::Runs, 10);
        assert_eq!(e.details.unwrap()["limit"], "concurrent_runs");
    }
}
