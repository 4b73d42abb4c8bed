//! A tenant's limits as an operator sets them: per-tier defaults, partial
//! overrides that fall back to them, and validation.
//!
//! `None` means "no limit" in the effective limits. In an *override*, `None`
//! means "use the tier default" (see [`TenantLimits::merged_over`]); an
//! override cannot lift a limit entirely, only raise it (up to the maxima
//! that [`TenantLimits::validate`] enforces).

use bulkhead_core::Tier;
use serde::{Deserialize, Serialize};

use crate::{ConcurrencyKind, LimitError, RateKind};

/// Per-tenant limits. Every field is optional; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantLimits {
    /// API requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Model tokens (prompt + completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Tool calls per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls_per_minute: Option<u32>,
    /// Sandbox executions per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_executions_per_minute: Option<u32>,
    /// Agent runs in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_runs: Option<u32>,
    /// Sandbox executions in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_sandbox_executions: Option<u32>,
}

/// Upper bounds [`TenantLimits::validate`] accepts: far above any real
/// tenant, low enough to catch a typo (an extra zero or three) and to keep the
/// limiters' arithmetic exact.
const MAX_REQUESTS_PER_MINUTE: u64 = 10_000_000;
const MAX_TOKENS_PER_MINUTE: u64 = crate::MAX_PER_MINUTE;
const MAX_TOOL_CALLS_PER_MINUTE: u64 = 10_000_000;
const MAX_SANDBOX_EXECUTIONS_PER_MINUTE: u64 = 1_000_000;
const MAX_CONCURRENT_RUNS: u64 = 100_000;
const MAX_CONCURRENT_SANDBOX_EXECUTIONS: u64 = 10_000;

impl TenantLimits {
    /// No limits at all.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// The built-in limits of a tier. Shared-tier tenants share compute with
    /// many others and get the smallest; dedicated tenants run in their own
    /// cell and get the largest.
    ///
    /// | limit                           | shared  | isolated  | dedicated |
    /// |---------------------------------|--------:|----------:|----------:|
    /// | `requests_per_minute`           |     600 |     3,000 |    12,000 |
    /// | `tokens_per_minute`             | 200,000 | 1,000,000 | 5,000,000 |
    /// | `tool_calls_per_minute`         |     300 |     1,500 |     6,000 |
    /// | `sandbox_executions_per_minute` |      60 |       300 |     1,200 |
    /// | `concurrent_runs`               |      10 |        50 |       200 |
    /// | `concurrent_sandbox_executions` |       2 |         8 |        32 |
    pub fn defaults_for(tier: Tier) -> Self {
        match tier {
            Tier::Shared => Self {
                requests_per_minute: Some(600),
                tokens_per_minute: Some(200_000),
                tool_calls_per_minute: Some(300),
                sandbox_executions_per_minute: Some(60),
                concurrent_runs: Some(10),
                concurrent_sandbox_executions: Some(2),
            },
            Tier::Isolated => Self {
                requests_per_minute: Some(3_000),
                tokens_per_minute: Some(1_000_000),
                tool_calls_per_minute: Some(1_500),
                sandbox_executions_per_minute: Some(300),
                concurrent_runs: Some(50),
                concurrent_sandbox_executions: Some(8),
            },
            Tier::Dedicated => Self {
                requests_per_minute: Some(12_000),
                tokens_per_minute: Some(5_000_000),
                tool_calls_per_minute: Some(6_000),
                sandbox_executions_per_minute: Some(1_200),
                concurrent_runs: Some(200),
                concurrent_sandbox_executions: Some(32),
            },
        }
    }

    /// This override, with every field it leaves out taken from `defaults`.
    pub fn merged_over(&self, defaults: &TenantLimits) -> TenantLimits {
        TenantLimits {
            requests_per_minute: self.requests_per_minute.or(defaults.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(defaults.tokens_per_minute),
            tool_calls_per_minute: self.tool_calls_per_minute.or(defaults.tool_calls_per_minute),
            sandbox_executions_per_minute: self
                .sandbox_executions_per_minute
                .or(defaults.sandbox_executions_per_minute),
            concurrent_runs: self.concurrent_runs.or(defaults.concurrent_runs),
            concurrent_sandbox_executions: self
                .concurrent_sandbox_executions
                .or(defaults.concurrent_sandbox_executions),
        }
    }

    /// Refuses zero (which would block the tenant entirely: suspend it
    /// instead) and absurdly large values. The error names the field.
    pub fn validate(&self) -> Result<(), LimitError> {
        let fields = [
            ("requests_per_minute", self.requests_per_minute.map(u64::from), MAX_REQUESTS_PER_MINUTE),
            ("tokens_per_minute", self.tokens_per_minute, MAX_TOKENS_PER_MINUTE),
            ("tool_calls_per_minute", self.tool_calls_per_minute.map(u64::from), MAX_TOOL_CALLS_PER_MINUTE),
            (
                "sandbox_executions_per_minute",
                self.sandbox_executions_per_minute.map(u64::from),
                MAX_SANDBOX_EXECUTIONS_PER_MINUTE,
            ),
            ("concurrent_runs", self.concurrent_runs.map(u64::from), MAX_CONCURRENT_RUNS),
            (
                "concurrent_sandbox_executions",
                self.concurrent_sandbox_executions.map(u64::from),
                MAX_CONCURRENT_SANDBOX_EXECUTIONS,
            ),
        ];
        for (field, value, max) in fields {
            match value {
                Some(0) => {
                    return Err(LimitError::InvalidLimits(format!(
                        "`{field}` must be at least 1; leave it out to use the tier default, \
                         or suspend the tenant to stop it entirely"
                    )));
                }
                Some(v) if v > max => {
                    return Err(LimitError::InvalidLimits(format!(
                        "`{field}` is {v}, above the maximum of {max}; check for a typo"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The per-minute limit for `kind`, `None` if unlimited.
    pub fn per_minute(&self, kind: RateKind) -> Option<u64> {
        match kind {
            RateKind::Requests => self.requests_per_minute.map(u64::from),
            RateKind::Tokens => self.tokens_per_minute,
            RateKind::ToolCalls => self.tool_calls_per_minute.map(u64::from),
            RateKind::SandboxExecs => self.sandbox_executions_per_minute.map(u64::from),
        }
    }

    /// The concurrency cap for `kind`, `None` if unlimited.
    pub fn max_concurrent(&self, kind: ConcurrencyKind) -> Option<u32> {
        match kind {
            ConcurrencyKind::Runs => self.concurrent_runs,
            ConcurrencyKind::SandboxExecs => self.concurrent_sandbox_executions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_defaults_are_valid_complete_and_ordered() {
        let tiers = [Tier::Shared, Tier::Isolated, Tier::Dedicated];
        for tier in tiers {
            TenantLimits::defaults_for(tier).validate().unwrap();
        }
        for pair in tiers.windows(2) {
            let (small, large) = (TenantLimits::defaults_for(pair[0]), TenantLimits::defaults_for(pair[1]));
            for kind in RateKind::ALL {
                assert!(small.per_minute(kind).unwrap() < large.per_minute(kind).unwrap());
            }
            for kind in ConcurrencyKind::ALL {
                assert!(small.max_concurrent(kind).unwrap() < large.max_concurrent(kind).unwrap());
            }
        }
    }

    #[test]
    fn a_partial_override_falls_back_to_the_tier() {
        let shared = TenantLimits::defaults_for(Tier::Shared);
        let over: TenantLimits =
            serde_json::from_str(r#"{"tokens_per_minute": 1000000, "concurrent_runs": 3}"#).unwrap();
        let eff = over.merged_over(&shared);
        assert_eq!(eff.tokens_per_minute, Some(1_000_000));
        assert_eq!(eff.concurrent_runs, Some(3));
        assert_eq!(eff.requests_per_minute, shared.requests_per_minute);
        assert_eq!(eff.concurrent_sandbox_executions, shared.concurrent_sandbox_executions);
        assert_eq!(TenantLimits::unlimited().merged_over(&shared), shared);
        // Serialises back without the fields left out.
        assert_eq!(
            serde_json::to_string(&over).unwrap(),
            r#"{"tokens_per_minute":1000000,"concurrent_runs":3}"#
        );
    }

    #[test]
    fn validation_names_the_field() {
        let zero = TenantLimits { concurrent_runs: Some(0), ..Default::default() };
        let msg = zero.validate().unwrap_err().to_string();
        assert!(msg.contains("`concurrent_runs` must be at least 1"), "{msg}");
        let huge = TenantLimits { tokens_per_minute: Some(10_000_000_000), ..Default::default() };
        let msg = huge.validate().unwrap_err().to_string();
        assert!(msg.contains("`tokens_per_minute` is 10000000000"), "{msg}");
        // A typo in a field name is refused rather than ignored.
        assert!(serde_json::from_str::<TenantLimits>(r#"{"request_per_minute": 5}"#).is_err());
    }
}
