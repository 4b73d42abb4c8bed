//! Metering: what usage costs, the ledger it goes into, and admission — the
//! one API every part that spends (models, tools, sandbox, runs) goes
//! through:
//!
//! ```text
//! admit (rate limits, concurrency, budget reservation of the worst case)
//!   → do the work → settle (record the actual usage, release the reservation)
//!                 → or cancel (the work did not happen)
//! ```
//!
//! Invariants: every call takes `&TenantCtx`; a model call is admitted only
//! if its worst-case cost fits what remains of the tenant's budget (spent +
//! reserved + this ≤ limit, decided atomically in the store); every usage
//! event is recorded once per (tenant, id), however often it is written.
//! Every refusal here (rate, concurrency, budget) and every usage event the
//! ledger records as new is counted in `bulkhead_telemetry::metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_core::{Code, Error, Money, TenantCtx, TenantId};
use bulkhead_limits::{ConcurrencyKind, Decision, Limiter, Permit, RateKind, TenantLimits};
use bulkhead_store::{DynStore, ReservationId, Reserve, UsageEvent, UsageKind, UsageWrite};
use bulkhead_telemetry::metrics;
use serde_json::json;
use time::OffsetDateTime;

pub mod export;
pub mod ledger;
pub mod pricing;

pub use ledger::{Ledger, LedgerConfig};
pub use pricing::{Catalog, OtherPrices, Pricing, TenantPricing, TokenUsage};

/// How metering behaves.
#[derive(Debug, Clone)]
pub struct MeteringConfig {
    pub ledger: LedgerConfig,
    /// How long a reservation lives if never settled (crash safety).
    pub reservation_ttl: Duration,
    /// How long a tenant's limits and pricing are cached in this process.
    pub settings_ttl: Duration,
    /// Permit lease for concurrency slots; long work renews.
    pub permit_lease: Duration,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self {
            ledger: LedgerConfig::default(),
            reservation_ttl: Duration::from_secs(15 * 60),
            settings_ttl: Duration::from_secs(2),
            permit_lease: Duration::from_secs(15 * 60),
        }
    }
}

/// What a piece of work asks for before it starts.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// Rate charges: (kind, units), e.g. (Requests, 1), (Tokens, estimate).
    pub rates: Vec<(RateKind, u64)>,
    /// A concurrency slot to hold until settled.
    pub concurrency: Option<ConcurrencyKind>,
    /// The most the work can cost; reserved against the budget.
    pub worst_case: Money,
}

/// Proof of admission; hand it back to [`Metering::settle`] or
/// [`Metering::cancel`]. If it is lost (a crash), the reservation and the
/// permit expire on their own.
#[derive(Debug)]
pub struct Admitted {
    tenant: TenantId,
    reservation: Option<ReservationId>,
    /// Token units charged at admission, corrected at settlement.
    tokens_charged: Option<(u64, u64)>,
    permit: Option<Permit>,
}

impl Admitted {
    pub fn reservation(&self) -> Option<ReservationId> {
        self.reservation
    }
}

/// A tenant's effective limits and pricing, cached briefly.
#[derive(Debug, Clone)]
pub struct TenantTerms {
    pub limits: TenantLimits,
    pub pricing: TenantPricing,
    /// The tenant's model settings document (its shape belongs to `models`).
    pub models: serde_json::Value,
}

/// The metering service. Cheap to clone.
#[derive(Clone)]
pub struct Metering {
    inner: Arc<Inner>,
}

struct Inner {
    store: DynStore,
    ledger: Ledger,
    pricing: Pricing,
    limiter: Arc<dyn Limiter>,
    config: MeteringConfig,
    terms: Mutex<HashMap<TenantId, (Instant, TenantTerms)>>,
}

impl Metering {
    /// Starts the ledger writer; it stops when the last clone is dropped and
    /// its queue is drained.
    pub fn start(
        store: DynStore,
        pricing: Pricing,
        limiter: Arc<dyn Limiter>,
        config: MeteringConfig,
    ) -> Self {
        let usage: Arc<dyn bulkhead_store::UsageStore> = store.clone();
        let (ledger, _task) = Ledger::start(usage, config.ledger);
        Self {
            inner: Arc::new(Inner {
                store,
                ledger,
                pricing,
                limiter,
                config,
                terms: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn pricing(&self) -> &Pricing {
        &self.inner.pricing
    }

    pub fn limiter(&self) -> &Arc<dyn Limiter> {
        &self.inner.limiter
    }

    /// The tenant's limits (operator overrides over its tier's defaults)
    /// and pricing, cached for `settings_ttl`.
    pub async fn terms(&self, ctx: &TenantCtx) -> Result<TenantTerms, Error> {
        let now = Instant::now();
        if let Some((at, terms)) = self.inner.terms.lock().expect("terms cache").get(&ctx.tenant_id())
            && now.duration_since(*at) < self.inner.config.settings_ttl
        {
            return Ok(terms.clone());
        }
        let tenant = self.inner.store.own_tenant(ctx).await?;
        let settings = self.inner.store.tenant_settings(ctx).await?;
        let overrides: TenantLimits = serde_json::from_value(settings.limits)
            .map_err(|e| Error::internal(format!("stored limits do not parse: {e}")))?;
        let terms = TenantTerms {
            limits: overrides.merged_over(&TenantLimits::defaults_for(tenant.tier)),
            pricing: TenantPricing::from_json(&settings.pricing)?,
            models: settings.models,
        };
        self.inner.terms.lock().expect("terms cache").insert(ctx.tenant_id(), (now, terms.clone()));
        Ok(terms)
    }

    /// Forgets cached terms (after the operator changed them here).
    pub fn forget_terms(&self, ctx: &TenantCtx) {
        self.inner.terms.lock().expect("terms cache").remove(&ctx.tenant_id());
    }

    /// Charges one unit (or more) of a rate limit; `rate_limited` (429,
    /// with `retry_after_ms` in the details) when the tenant is over it.
    pub async fn check_rate(&self, ctx: &TenantCtx, kind: RateKind, units: u64) -> Result<(), Error> {
        let terms = self.terms(ctx).await?;
        self.charge(ctx, &terms, kind, units).await
    }

    async fn charge(
        &self,
        ctx: &TenantCtx,
        terms: &TenantTerms,
        kind: RateKind,
        units: u64,
    ) -> Result<(), Error> {
        let Some(per_minute) = terms.limits.per_minute(kind) else { return Ok(()) };
        if units > per_minute {
            metrics::rate_limit_refused(ctx, kind.as_str());
            return Err(Error::new(
                Code::RateLimited,
                format!(
                    "this request needs {units} {}, more than the tenant's whole limit of {per_minute}",
                    kind.as_str()
                ),
            )
            .with_details(json!({ "limit": kind.as_str(), "per_minute": per_minute, "requested": units })));
        }
        match self.inner.limiter.check(ctx, kind, per_minute, units).await? {
            Decision::Allowed { .. } => Ok(()),
            Decision::Limited { retry_after } => {
                metrics::rate_limit_refused(ctx, kind.as_str());
                Err(bulkhead_limits::rate_limited(kind, per_minute, retry_after))
            }
        }
    }

    /// Admits work: rate limits, then a concurrency slot, then the budget
    /// reservation of its worst case. On refusal nothing stays held.
    pub async fn admit(&self, ctx: &TenantCtx, admission: Admission) -> Result<Admitted, Error> {
        let terms = self.terms(ctx).await?;
        let mut tokens_charged = None;
        for (kind, units) in &admission.rates {
            self.charge(ctx, &terms, *kind, *units).await?;
            if *kind == RateKind::Tokens {
                tokens_charged = terms.limits.per_minute(RateKind::Tokens).map(|l| (*units, l));
            }
        }
        let mut permit = None;
        if let Some(kind) = admission.concurrency
            && let Some(max) = terms.limits.max_concurrent(kind)
        {
            match self.inner.limiter.acquire(ctx, kind, max, self.inner.config.permit_lease).await? {
                Some(p) => permit = Some(p),
                None => {
                    metrics::rate_limit_refused(ctx, kind.as_str());
                    return Err(bulkhead_limits::concurrency_limited(kind, max));
                }
            }
        }
        let now = OffsetDateTime::now_utc();
        let reserved =
            self.inner.store.reserve(ctx, admission.worst_case, self.inner.config.reservation_ttl, now).await;
        let reservation = match reserved {
            Ok(Reserve::Unlimited) => None,
            Ok(Reserve::Reserved { id, .. }) => Some(id),
            Ok(Reserve::Exceeded { period, limit, spent, reserved, requested }) => {
                self.release_permit(permit).await;
                metrics::budget_refused(ctx, period.as_str());
                tracing::info!(tenant = %ctx.tenant_id(), period = period.as_str(), %limit, %spent, %reserved, %requested, "budget refused admission");
                return Err(Error::new(
                    Code::BudgetExceeded,
                    format!(
                        "the tenant's {} budget of ${limit} does not cover this request (spent ${spent}, reserved ${reserved}, needs up to ${requested})",
                        period.as_str()
                    ),
                )
                .with_details(json!({
                    "period": period.as_str(), "limit_usd": limit, "spent_usd": spent,
                    "reserved_usd": reserved, "requested_usd": requested,
                })));
            }
            Err(e) => {
                self.release_permit(permit).await;
                return Err(e.into());
            }
        };
        Ok(Admitted { tenant: ctx.tenant_id(), reservation, tokens_charged, permit })
    }

    /// Records the actual usage of admitted work and releases what
    /// admission held. Returns once the event is durable (see [`ledger`]).
    pub async fn settle(
        &self,
        ctx: &TenantCtx,
        admitted: Admitted,
        event: UsageEvent,
    ) -> Result<bool, Error> {
        self.check_owner(ctx, &admitted)?;
        bulkhead_store::usage::validate_event(&event)?;
        let actual_tokens = (event.input_tokens + event.output_tokens).max(0) as u64;
        let tokens = admitted.tokens_charged;
        let observed = Observed::of(&event);
        let result = self
            .inner
            .ledger
            .write(UsageWrite { ctx: ctx.clone(), event, settles: admitted.reservation })
            .await;
        observed.count(ctx, &result);
        if let Some((charged, per_minute)) = tokens {
            let delta = actual_tokens as i64 - charged as i64;
            if delta != 0
                && let Err(e) = self.inner.limiter.adjust(ctx, RateKind::Tokens, per_minute, delta).await
            {
                tracing::warn!(error = %e, "could not correct the token charge");
            }
        }
        self.release_permit(admitted.permit).await;
        result
    }

    /// Gives back what admission held, when the work did not happen.
    pub async fn cancel(&self, ctx: &TenantCtx, admitted: Admitted) -> Result<(), Error> {
        self.check_owner(ctx, &admitted)?;
        if let Some(id) = admitted.reservation {
            self.inner.store.release(ctx, id).await?;
        }
        if let Some((charged, per_minute)) = admitted.tokens_charged {
            let _ = self.inner.limiter.adjust(ctx, RateKind::Tokens, per_minute, -(charged as i64)).await;
        }
        self.release_permit(admitted.permit).await;
        Ok(())
    }

    /// Records usage that needed no admission (e.g. storage, run time).
    pub async fn record(&self, ctx: &TenantCtx, event: UsageEvent) -> Result<bool, Error> {
        bulkhead_store::usage::validate_event(&event)?;
        let observed = Observed::of(&event);
        let result = self.inner.ledger.write(UsageWrite { ctx: ctx.clone(), event, settles: None }).await;
        observed.count(ctx, &result);
        result
    }

    fn check_owner(&self, ctx: &TenantCtx, admitted: &Admitted) -> Result<(), Error> {
        if admitted.tenant == ctx.tenant_id() {
            Ok(())
        } else {
            Err(Error::internal(format!("admission of {} settled for {}", admitted.tenant, ctx.tenant_id())))
        }
    }

    async fn release_permit(&self, permit: Option<Permit>) {
        if let Some(p) = permit
            && let Err(e) = self.inner.limiter.release(p).await
        {
            tracing::warn!(error = %e, "could not release a concurrency permit; its lease will expire");
        }
    }
}

/// What the metrics take from a usage event, kept while the event goes to
/// the ledger; counted once, when the ledger recorded it as new (a replayed
/// id is not counted again).
struct Observed {
    kind: &'static str,
    name: String,
    input_tokens: u64,
    output_tokens: u64,
    cost: Money,
}

impl Observed {
    fn of(event: &UsageEvent) -> Self {
        Self {
            kind: event.kind.as_str(),
            name: if event.kind == UsageKind::Llm { event.name.clone() } else { String::new() },
            input_tokens: event.input_tokens.max(0) as u64,
            output_tokens: event.output_tokens.max(0) as u64,
            cost: event.cost,
        }
    }

    fn count(self, ctx: &TenantCtx, written: &Result<bool, Error>) {
        if matches!(written, Ok(true)) {
            metrics::usage(ctx, self.kind, &self.name, self.input_tokens, self.output_tokens, self.cost);
        }
    }
}

#[cfg(test)]
mod tests;
