//! Rate limits: what is counted ([`RateKind`]), what a check answers
//! ([`Decision`]), and the GCRA arithmetic that both limiters share.
//!
//! # The algorithm
//!
//! GCRA (the generic cell rate algorithm) with a limit of `L` per minute and a
//! burst of `L`: one unit of cost "costs" `T = 60 s / L` of time; the bucket
//! keeps a *debt* (how far the theoretical arrival time lies ahead of now),
//! which drains at one second per second. A charge of `n` is admitted when
//! `debt + n·T ≤ 60 s`, and then the debt grows by `n·T`. So a fresh tenant can
//! spend a whole minute's quota at once, after which the quota refills
//! smoothly at `L` per minute.
//!
//! **Bound.** For any admissions at times `s_i ≤ … ≤ s_j` (with no refunds in
//! between), `cost_i + … + cost_j ≤ L + L·(s_j − s_i) / 60 s`: the debt after
//! the last one is at most 60 s, and it is at least `Σ cost·T − (s_j − s_i)`.
//! Hence any window of 60 s admits at most `2·L`. The property test in
//! `crate::tests` checks the exact form.
//!
//! # Exact integer arithmetic
//!
//! `60 s / L` is rarely a whole number of nanoseconds, and rounding it would
//! either refuse the last request of a burst or drift generously. So the debt
//! is kept in units of `1/L` ns (`1/L` µs in Redis): one unit of cost is
//! then exactly 6·10¹⁰ units (6·10⁷ in Redis), and the capacity `L·60 s` is
//! exact too. The debt remembers the `L` it was measured with, so a changed
//! limit rescales it (rounding up, towards the conservative side).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a rate limit counts, each per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKind {
    /// API requests.
    Requests,
    /// Model tokens (charged with an estimate at admission, corrected at
    /// settlement with [`crate::Limiter::adjust`]).
    Tokens,
    /// Tool invocations by agents.
    ToolCalls,
    /// Sandbox executions of untrusted code.
    SandboxExecs,
}

impl RateKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [RateKind; 4] =
        [RateKind::Requests, RateKind::Tokens, RateKind::ToolCalls, RateKind::SandboxExecs];

    /// The stable name of the limit, as in [`crate::TenantLimits`] and in
    /// 429 error details. Never rename one: Redis keys contain it too.
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Requests => "requests_per_minute",
            RateKind::Tokens => "tokens_per_minute",
            RateKind::ToolCalls => "tool_calls_per_minute",
            RateKind::SandboxExecs => "sandbox_executions_per_minute",
        }
    }
}

impl fmt::Display for RateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to a rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// The cost was charged. `remaining` is how many more units could be
    /// admitted right now (not counting refill).
    Allowed { remaining: u64 },
    /// Nothing was charged. The same cost would be admitted after
    /// `retry_after`, if nothing else is charged meanwhile.
    Limited { retry_after: Duration },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// Nanoseconds in a minute: the cost of one unit, in units of `1/L` ns.
pub(crate) const NANOS_PER_MINUTE: u128 = 60_000_000_000;

/// The largest per-minute limit a limiter accepts. It keeps the Redis
/// script's double-precision arithmetic exact to well below a microsecond.
pub const MAX_PER_MINUTE: u64 = 1_000_000_000;

/// How far a positive [`crate::Limiter::adjust`] may push the debt, in
/// minutes of refill: an overshoot blocks a tenant for at most about an hour.
pub(crate) const MAX_DEBT_MINUTES: u128 = 60;

/// The state of one `(tenant, kind)` bucket in the local limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// When `debt` was measured, in ns since the limiter's epoch.
    pub at_ns: u128,
    /// How far the theoretical arrival time lay ahead of `at_ns`, in units
    /// of `1/per_minute` ns.
    pub debt: u128,
    /// The limit `debt` is measured with.
    pub per_minute: u64,
}

impl Gcra {
    /// The debt at `now_ns`, in units of `1/per_minute` ns.
    pub fn debt_at(&self, now_ns: u128, per_minute: u64) -> u128 {
        let l = u128::from(per_minute);
        let debt = if self.per_minute == per_minute {
            self.debt
        } else {
            self.debt.saturating_mul(l).div_ceil(u128::from(self.per_minute))
        };
        // A clock never runs backwards here (monotonic Instant), but be safe.
        let elapsed = now_ns.saturating_sub(self.at_ns);
        debt.saturating_sub(elapsed.saturating_mul(l))
    }

    /// Whether the bucket is full again at `now_ns` (the state can be dropped).
    pub fn is_idle(&self, now_ns: u128) -> bool {
        self.debt_at(now_ns, self.per_minute) == 0
    }
}

/// One GCRA check: the decision, and the state to store when it changed.
/// `per_minute` is in `1..=MAX_PER_MINUTE` and `cost <= per_minute`.
pub(crate) fn check(
    state: Option<&Gcra>,
    now_ns: u128,
    per_minute: u64,
    cost: u64,
) -> (Decision, Option<Gcra>) {
    let l = u128::from(per_minute);
    let debt = state.map_or(0, |s| s.debt_at(now_ns, per_minute));
    let capacity = l * NANOS_PER_MINUTE;
    let new_debt = debt + u128::from(cost) * NANOS_PER_MINUTE;
    if new_debt <= capacity {
        let remaining = (capacity - new_debt) / NANOS_PER_MINUTE;
        let state = Gcra { at_ns: now_ns, debt: new_debt, per_minute };
        (Decision::Allowed { remaining: u64::try_from(remaining).unwrap_or(u64::MAX) }, Some(state))
    } else {
        // Time until the debt has drained enough for this cost: the excess,
        // converted from units of 1/L ns to ns, rounded up.
        let wait_ns = (new_debt - capacity).div_ceil(l);
        let retry_after = Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX));
        (Decision::Limited { retry_after }, None)
    }
}

/// Corrects an earlier charge by `delta` units: a refund when negative, an
/// extra charge (never refused, capped at [`MAX_DEBT_MINUTES`]) when positive.
pub(crate) fn adjust(state: Option<&Gcra>, now_ns: u128, per_minute: u64, delta: i64) -> Gcra {
    let l = u128::from(per_minute);
    let debt = state.map_or(0, |s| s.debt_at(now_ns, per_minute));
    let change = u128::from(delta.unsigned_abs()) * NANOS_PER_MINUTE;
    let debt = if delta < 0 {
        debt.saturating_sub(change)
    } else {
        debt.saturating_add(change).min(MAX_DEBT_MINUTES * l * NANOS_PER_MINUTE)
    };
    Gcra { at_ns: now_ns, debt, per_minute }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u128 = 1_000_000_000;

    fn allowed(d: Decision) -> u64 {
        match d {
            Decision::Allowed { remaining } => remaining,
            Decision::Limited { retry_after } => panic!("limited, retry after {retry_after:?}"),
        }
    }

    #[test]
    fn a_burst_of_exactly_the_limit_even_when_60s_over_l_is_not_whole() {
        // 60 s / 7 is not a whole number of nanoseconds: rounding the
        // interval either way would refuse the 7th request or drift.
        let mut s = None;
        for i in 0..7 {
            let (d, new) = check(s.as_ref(), 0, 7, 1);
            assert_eq!(allowed(d), 6 - i);
            s = new;
        }
        let (d, new) = check(s.as_ref(), 0, 7, 1);
        assert_eq!(new, None);
        // Exactly 60/7 s until one unit has refilled.
        assert_eq!(d, Decision::Limited { retry_after: Duration::from_nanos((60 * SEC).div_ceil(7) as u64) });
        let (d, _) = check(s.as_ref(), (60 * SEC).div_ceil(7), 7, 1);
        assert!(d.is_allowed());
        let (d, _) = check(s.as_ref(), (60 * SEC).div_ceil(7) - 1, 7, 1);
        assert!(!d.is_allowed());
    }

    #[test]
    fn a_changed_limit_rescales_the_debt() {
        // The debt is time: half of 100/min spent is 30 s of debt, which is
        // still half of the bucket when the limit doubles to 200/min.
        let (_, s) = check(None, 0, 100, 50);
        let s = s.unwrap();
        let (d, _) = check(Some(&s), 0, 200, 0);
        assert_eq!(allowed(d), 100);
        let (d, _) = check(Some(&s), 0, 7, 0);
        assert_eq!(allowed(d), 3, "3.5 of 7 left, rounded towards the tenant's side of caution");
    }

    #[test]
    fn adjust_refunds_without_credit_and_caps_overcharges() {
        let (_, s) = check(None, 0, 10, 4);
        let s = adjust(s.as_ref(), 0, 10, -100);
        assert_eq!(s.debt, 0, "a refund never makes the bucket more than full");
        let s = adjust(Some(&s), 0, 10, i64::MAX);
        assert_eq!(s.debt, MAX_DEBT_MINUTES * 10 * NANOS_PER_MINUTE);
        assert!(!s.is_idle(59 * 60 * SEC));
        assert!(s.is_idle(60 * 60 * SEC));
    }
}
