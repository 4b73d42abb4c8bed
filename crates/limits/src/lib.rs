//! Per-tenant rate limits and concurrency caps (BLUEPRINT §3 "limits",
//! invariant 4: a tenant's limits hold across several server replicas).
//!
//! The [`Limiter`] trait has two implementations:
//!
//! - [`LocalLimiter`]: in-process state, for a single replica (and tests). It
//!   reads [`tokio::time::Instant`], so tests drive it with
//!   `tokio::time::pause()` / `advance()` instead of sleeping.
//! - [`RedisLimiter`]: state in Redis, changed only by atomic Lua scripts
//!   that read Redis' own clock, so every replica sees one bucket and one
//!   clock per tenant.
//!
//! Rates use GCRA with a burst of one minute's quota (see [`rate`] for the
//! algorithm and its bound); concurrency uses leases that expire by
//! themselves, so a crashed replica cannot hold a slot forever (see
//! [`concurrency`]).
//!
//! Invariants: every call takes `&TenantCtx` and keys state by its tenant id
//! only — no method accepts a bare tenant id, and a [`Permit`] carries the
//! tenant it was minted for. Limits themselves are the caller's: this crate
//! enforces the numbers it is given ([`TenantLimits`] says what they are for
//! a tenant) and knows nothing of HTTP.
//!
//! # When Redis is down
//!
//! - **Concurrency fails closed**: `acquire` and `renew` return an error (the
//!   HTTP layer answers 503), because a cap that silently stops holding across
//!   replicas is a cap that does not exist. `release` errors too, but the
//!   lease frees the slot anyway when Redis is back.
//! - **Rates fail closed by default** ([`RateFallback::Deny`]), for the same
//!   reason. An operator who prefers availability can choose
//!   [`RateFallback::Local`]: each replica then enforces the tenant's limits
//!   on its own, so during the outage a tenant can get up to *replicas ×
//!   limit* — never unlimited. The switch to and from the fallback is logged
//!   once each way. Spend stays bounded either way: budgets (metering) do not
//!   depend on Redis.
//!
//! Every Redis call is bounded by [`RedisLimiterConfig::op_timeout`], so an
//! outage shows up as a fast error, not as requests piling up.

pub mod concurrency;
pub mod error;
mod local;
pub mod rate;
mod redis_backed;
mod tenant_limits;

#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use bulkhead_core::TenantCtx;

pub use concurrency::{ConcurrencyKind, Permit};
pub use error::{LimitError, concurrency_limited, rate_limited};
pub use local::LocalLimiter;
pub use rate::{Decision, MAX_PER_MINUTE, RateKind};
pub use redis_backed::{RateFallback, RedisLimiter, RedisLimiterConfig};
pub use tenant_limits::TenantLimits;

/// The longest lease a permit may have: longer work renews.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);

/// Rate limits and concurrency caps for tenants. Object safe: hold it as
/// `Arc<dyn Limiter>` and pick the implementation at start-up.
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Charges `cost` units of `kind` to the tenant if its bucket allows, with
    /// a limit of `per_minute` and a burst of the same size.
    ///
    /// `cost == 0` charges nothing and reports what remains. A `cost` above
    /// `per_minute` can never be admitted and is refused with
    /// [`LimitError::CostExceedsLimit`]. `per_minute` must be in
    /// `1..=MAX_PER_MINUTE`.
    async fn check(
        &self,
        ctx: &TenantCtx,
        kind: RateKind,
        per_minute: u64,
        cost: u64,
    ) -> Result<Decision, LimitError>;

    /// Corrects an earlier charge after the fact: a negative `delta` refunds
    /// (never beyond a full bucket), a positive one charges without refusing
    /// (the debt is capped at an hour of refill). For tokens: charge the
    /// estimate with [`Limiter::check`] at admission, adjust by
    /// `actual − estimate` at settlement.
    async fn adjust(
        &self,
        ctx: &TenantCtx,
        kind: RateKind,
        per_minute: u64,
        delta: i64,
    ) -> Result<(), LimitError>;

    /// Takes one of the tenant's `max` slots of `kind` for `lease`, or
    /// returns `None` if all are held. Expired leases are freed first.
    async fn acquire(
        &self,
        ctx: &TenantCtx,
        kind: ConcurrencyKind,
        max: u32,
        lease: Duration,
    ) -> Result<Option<Permit>, LimitError>;

    /// Extends a held permit to `lease` from now. `false` if it had already
    /// expired (the slot may be someone else's now): stop, or acquire again.
    async fn renew(&self, permit: &Permit, lease: Duration) -> Result<bool, LimitError>;

    /// Gives the slot back. Releasing an expired permit is a no-op.
    async fn release(&self, permit: Permit) -> Result<(), LimitError>;
}

/// The argument checks both limiters share.
pub(crate) fn check_rate_args(kind: RateKind, per_minute: u64, cost: u64) -> Result<(), LimitError> {
    if per_minute == 0 || per_minute > MAX_PER_MINUTE {
        return Err(LimitError::InvalidArgument(format!(
            "{kind} limit {per_minute} is outside 1..={MAX_PER_MINUTE}"
        )));
    }
    if cost > per_minute {
        return Err(LimitError::CostExceedsLimit { kind, cost, per_minute });
    }
    Ok(())
}

pub(crate) fn check_limit_arg(kind: RateKind, per_minute: u64) -> Result<(), LimitError> {
    check_rate_args(kind, per_minute, 0)
}

pub(crate) fn check_lease_args(max: u32, lease: Duration) -> Result<(), LimitError> {
    if max == 0 {
        return Err(LimitError::InvalidArgument("a concurrency cap of 0".to_owned()));
    }
    check_lease(lease)
}

pub(crate) fn check_lease(lease: Duration) -> Result<(), LimitError> {
    if lease < Duration::from_millis(1) || lease > MAX_LEASE {
        return Err(LimitError::InvalidArgument(format!("lease {lease:?} is outside 1 ms..=24 h")));
    }
    Ok(())
}
