//! [`LocalLimiter`]: the limiter for one process. State lives in one mutex'd
//! map (held only for a few arithmetic operations, never across an `.await`),
//! keyed by `(tenant, kind)`.
//!
//! Time is [`tokio::time::Instant`], measured in nanoseconds since the
//! limiter's creation, so paused-time tests are exact. Buckets that have
//! refilled completely and caps with no live lease are swept out every few
//! thousand calls, so memory follows the active tenants, not all tenants ever
//! seen.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_core::{TenantCtx, TenantId};
use tokio::time::Instant;
use uuid::Uuid;

use crate::rate::{self, Gcra};
use crate::{
    ConcurrencyKind, Decision, LimitError, Limiter, Permit, RateKind, check_lease, check_lease_args,
    check_limit_arg, check_rate_args,
};

/// Calls between two sweeps of idle state.
const SWEEP_EVERY: u64 = 4096;

/// In-process limiter. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct LocalLimiter {
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<(TenantId, RateKind), Gcra>,
    /// Live leases per cap: id and expiry (ns since epoch).
    leases: HashMap<(TenantId, ConcurrencyKind), Vec<(Uuid, u128)>>,
    calls: u64,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLimiter {
    pub fn new() -> Self {
        Self { epoch: Instant::now(), state: Mutex::new(State::default()) }
    }

    fn now_ns(&self) -> u128 {
        Instant::now().duration_since(self.epoch).as_nanos()
    }

    /// Locks the state, sweeping it now and then. A panic while holding the
    /// lock cannot leave the map half-updated (every update is one insert or
    /// remove), so a poisoned lock is simply taken over.
    fn lock(&self, now_ns: u128) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.calls += 1;
        if state.calls.is_multiple_of(SWEEP_EVERY) {
            state.buckets.retain(|_, b| !b.is_idle(now_ns));
            state.leases.retain(|_, leases| {
                leases.retain(|&(_, exp)| exp > now_ns);
                !leases.is_empty()
            });
        }
        state
    }

    /// The number of tenants × kinds with state in memory (for tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.buckets.len() + state.leases.len()
    }

    pub(crate) fn check_sync(
        &self,
        ctx: &TenantCtx,
        kind: RateKind,
        per_minute: u64,
        cost: u64,
    ) -> Result<Decision, LimitError> {
        check_rate_args(kind, per_minute, cost)?;
        let now = self.now_ns();
        let key = (ctx.tenant_id(), kind);
        let mut state = self.lock(now);
        let (decision, new) = rate::check(state.buckets.get(&key), now, per_minute, cost);
        if let Some(new) = new {
            state.buckets.insert(key, new);
        }
        Ok(decision)
    }

    pub(crate) fn adjust_sync(
        &self,
        ctx: &TenantCtx,
        kind: RateKind,
        per_minute: u64,
        delta: i64,
    ) -> Result<(), LimitError> {
        check_limit_arg(kind, per_minute)?;
        let now = self.now_ns();
        let key = (ctx.tenant_id(), kind);
        let mut state = self.lock(now);
        let new = rate::adjust(state.buckets.get(&key), now, per_minute, delta);
        if new.debt == 0 {
            state.buckets.remove(&key);
        } else {
            state.buckets.insert(key, new);
        }
        Ok(())
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn check(
        &self,
        ctx: &TenantCtx,
        kind: RateKind,
        per_minute: u64,
        cost: u64,
    ) -> Result<Decision, LimitError> {
        self.check_sync(ctx, kind, per_minute, cost)
    }

    async fn adjust(
        &self,
        ctx: &TenantCtx,
        kind: RateKind,
        per_minute: u64,
        delta: i64,
    ) -> Result<(), LimitError> {
        self.adjust_sync(ctx, kind, per_minute, delta)
    }

    async fn acquire(
        &self,
        ctx: &TenantCtx,
        kind: ConcurrencyKind,
        max: u32,
        lease: Duration,
    ) -> Result<Option<Permit>, LimitError> {
        check_lease_args(max, lease)?;
        let now = self.now_ns();
        let mut state = self.lock(now);
        let leases = state.leases.entry((ctx.tenant_id(), kind)).or_default();
        // An expiry equal to now counts as expired, as in the Redis script.
        leases.retain(|&(_, exp)| exp > now);
        if leases.len() >= max as usize {
            return Ok(None);
        }
        let permit = Permit::new(ctx.tenant_id(), kind, lease);
        leases.push((permit.id, now + lease.as_nanos()));
        Ok(Some(permit))
    }

    async fn renew(&self, permit: &Permit, lease: Duration) -> Result<bool, LimitError> {
        check_lease(lease)?;
        let now = self.now_ns();
        let mut state = self.lock(now);
        let Some(leases) = state.leases.get_mut(&(permit.tenant, permit.kind)) else {
            return Ok(false);
        };
        match leases.iter_mut().find(|(id, _)| *id == permit.id) {
            Some((_, exp)) if *exp > now => {
                *exp = now + lease.as_nanos();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, permit: Permit) -> Result<(), LimitError> {
        let now = self.now_ns();
        let mut state = self.lock(now);
        if let Some(leases) = state.leases.get_mut(&(permit.tenant, permit.kind)) {
            leases.retain(|(id, _)| *id != permit.id);
        }
        Ok(())
    }
}
