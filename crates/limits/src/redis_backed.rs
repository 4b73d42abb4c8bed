//! [`RedisLimiter`]: limits shared by every replica pointed at one Redis.
//!
//! Each operation is one atomic Lua script (`src/scripts/*.lua`, sent with
//! EVALSHA, loaded on NOSCRIPT) on one key, and takes the time from Redis'
//! `TIME` inside the script, so replicas with skewed clocks still share one
//! bucket and one clock.
//!
//! Keys (the `{…}` hash tag puts all of a tenant's keys in one Redis Cluster
//! slot; every script touches exactly one key):
//!
//! - `<prefix>:{<tenant_id>}:rate:<rate kind>`, e.g.
//!   `bh:{0190…}:rate:requests_per_minute`: a string
//!   `"<at_us> <debt> <per_minute>"` with a TTL that ends when the bucket has
//!   refilled (see `gcra.lua`);
//! - `<prefix>:{<tenant_id>}:conc:<concurrency kind>`, e.g.
//!   `bh:{0190…}:conc:concurrent_runs`: a sorted set of lease ids scored by
//!   expiry in ms, purged of expired leases on every acquire.
//!
//! The connection is a [`ConnectionManager`]: one multiplexed connection
//! shared by all tasks, reconnecting in the background after a failure.
//! Every call is bounded by `op_timeout`. The failure policy is in the crate
//! docs.

use std::fmt;
use std::future::Future;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_core::{TenantCtx, TenantId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

use crate::{
    ConcurrencyKind, Decision, LimitError, Limiter, LocalLimiter, Permit, RateKind, check_lease,
    check_lease_args, check_limit_arg, check_rate_args,
};

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/gcra.lua")));
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/renew.lua")));

/// What rate checks do when Redis cannot be reached. Concurrency always
/// fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateFallback {
    /// Return the error (the HTTP layer answers 503): limits hold exactly
    /// across replicas, at the cost of availability during an outage.
    #[default]
    Deny,
    /// Enforce each tenant's limits in this replica only until Redis is back:
    /// a tenant may get up to replicas × its limit meanwhile.
    Local,
}

/// How to reach Redis, and the failure policy.
#[derive(Clone)]
pub struct RedisLimiterConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` with TLS,
    /// which needs a TLS feature of the `redis` crate that is not enabled).
    pub url: String,
    /// First part of every key, so several deployments can share a Redis.
    pub key_prefix: String,
    /// Upper bound on each Redis call, including (re)connecting.
    pub op_timeout: Duration,
    pub rate_fallback: RateFallback,
}

impl RedisLimiterConfig {
    /// Defaults: prefix `bh`, 250 ms per call, rates fail closed.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "bh".to_owned(),
            op_timeout: Duration::from_millis(250),
            rate_fallback: RateFallback::Deny,
        }
    }
}

impl fmt::Debug for RedisLimiterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisLimiterConfig")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout", &self.op_timeout)
            .field("rate_fallback", &self.rate_fallback)
            .finish()
    }
}

/// Limiter whose state lives in Redis, shared by every replica. Cheap to
/// share behind an `Arc`; clones of the connection are multiplexed.
pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: String,
    op_timeout: Duration,
    /// `Some` with [`RateFallback::Local`].
    fallback: Option<LocalLimiter>,
    /// Whether rate checks currently run on the fallback (to log the switch
    /// once each way, not once per request).
    degraded: AtomicBool,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .field("fallback", &self.fallback.is_some())
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisLimiter {
    /// Connects, checks that Redis answers and loads the scripts: an error
    /// here means the configuration or the server is wrong. Call it inside a
    /// Tokio runtime.
    pub async fn connect(config: RedisLimiterConfig) -> Result<Self, LimitError> {
        let this = Self::new_lazy(config)?;
        this.ping().await?;
        let mut conn = this.conn.clone();
        this.bounded(async move {
            for script in [&*GCRA, &*ACQUIRE, &*RENEW] {
                script.prepare_invoke().load_async(&mut conn).await?;
            }
            Ok(())
        })
        .await?;
        Ok(this)
    }

    /// Builds the limiter without contacting Redis (the connection is made by
    /// the first call), e.g. to start a replica while Redis is still down.
    /// Fails only on a malformed URL. Call it inside a Tokio runtime.
    pub fn new_lazy(config: RedisLimiterConfig) -> Result<Self, LimitError> {
        if config.op_timeout.is_zero() {
            return Err(LimitError::InvalidArgument("op_timeout must be above zero".to_owned()));
        }
        let client = redis::Client::open(config.url.as_str())?;
        // Few, quick reconnection attempts: a call never waits longer than
        // op_timeout anyway, and the next call after a failure reconnects.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.op_timeout))
            .set_response_timeout(Some(config.op_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Self {
            conn,
            prefix: config.key_prefix,
            op_timeout: config.op_timeout,
            fallback: match config.rate_fallback {
                RateFallback::Deny => None,
                RateFallback::Local => Some(LocalLimiter::new()),
            },
            degraded: AtomicBool::new(false),
        })
    }

    /// Whether Redis answers, e.g. for a readiness probe.
    pub async fn ping(&self) -> Result<(), LimitError> {
        let mut conn = self.conn.clone();
        let pong: String =
            self.bounded(async move { redis::cmd("PING").query_async(&mut conn).await }).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(LimitError::UnexpectedReply(format!("PING answered {pong:?}")))
        }
    }

    /// Whether rate checks currently run on the local fallback.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Redis' clock, in µs (the clock the scripts use).
    #[cfg(test)]
    pub(crate) async fn redis_time_us(&self) -> u64 {
        let mut conn = self.conn.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        secs * 1_000_000 + micros
    }

    /// A key's time to live in ms (-2: no such key, -1: no TTL).
    #[cfg(test)]
    pub(crate) async fn pttl(&self, key: &str) -> i64 {
        let mut conn = self.conn.clone();
        redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap()
    }

    fn rate_key(&self, tenant: TenantId, kind: RateKind) -> String {
        format!("{}:{{{tenant}}}:rate:{}", self.prefix, kind.as_str())
    }

    fn cap_key(&self, tenant: TenantId, kind: ConcurrencyKind) -> String {
        format!("{}:{{{tenant}}}:conc:{}", self.prefix, kind.as_str())
    }

    async fn bounded<T>(&self, op: impl Future<Output = RedisResult<T>>) -> Result<T, LimitError> {
        match tokio::time::timeout(self.op_timeout, op).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LimitError::Timeout(self.op_timeout)),
        }
    }

    async fn gcra(
        &self,
        ctx: &TenantCtx,
        kind: RateKind,
        per_minute: u64,
        amount: i64,
        mode: &'static str,
    ) -> Result<Decision, LimitError> {
        let key = self.rate_key(ctx.tenant_id(), kind);
        let mut conn = self.conn.clone();
        let (admitted, remaining, retry_after_us): (u8, u64, u64) = self
            .bounded(async move {
                GCRA.key(key).arg(per_minute).arg(amount).arg(mode).invoke_async(&mut conn).await
            })
            .await?;
        Ok(match admitted {
            1 => Decision::Allowed { remaining },
            0 => Decision::Limited { retry_after: Duration::from_micros(retry_after_us) },
            other => {
                return Err(LimitError::UnexpectedReply(format!(
                    "gcra.lua returned {other} as its first element"
                )));
            }
        })
    }

    /// The fallback for a failed rate operation, if there is one.
    fn fallback_for(&self, err: &LimitError) -> Option<&LocalLimiter> {
        let local = self.fallback.as_ref()?;
        if !err.is_unavailable() {
            return None;
        }
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %err,
                "Redis is unavailable: rate limits now hold per replica, not across replicas"
            );
        }
        Some(local)
    }

    fn note_reachable(&self) {
        if self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis is reachable again: rate limits hold across replicas again");
        }
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn check(
        &self,
        ctx: &TenantCtx,
        kind: RateKind,
        per_minute: u64,
        cost: u64,
    ) -> Result<Decision, LimitError> {
        check_rate_args(kind, per_minute, cost)?;
        // cost <= per_minute <= MAX_PER_MINUTE, so it fits an i64.
        let amount = i64::try_from(cost).unwrap_or(i64::MAX);
        match self.gcra(ctx, kind, per_minute, amount, "check").await {
            Ok(decision) => {
                self.note_reachable();
                Ok(decision)
            }
            Err(err) => match self.fallback_for(&err) {
                Some(local) => local.check_sync(ctx, kind, per_minute, cost),
                None => Err(err),
            },
        }
    }

    async fn adjust(
        &self,
        ctx: &TenantCtx,
        kind: RateKind,
        per_minute: u64,
        delta: i64,
    ) -> Result<(), LimitError> {
        check_limit_arg(kind, per_minute)?;
        match self.gcra(ctx, kind, per_minute, delta, "adjust").await {
            Ok(_) => {
                self.note_reachable();
                Ok(())
            }
            Err(err) => match self.fallback_for(&err) {
                Some(local) => local.adjust_sync(ctx, kind, per_minute, delta),
                None => Err(err),
            },
        }
    }

    async fn acquire(
        &self,
        ctx: &TenantCtx,
        kind: ConcurrencyKind,
        max: u32,
        lease: Duration,
    ) -> Result<Option<Permit>, LimitError> {
        check_lease_args(max, lease)?;
        let permit = Permit::new(ctx.tenant_id(), kind, lease);
        let key = self.cap_key(permit.tenant, kind);
        let id = permit.id.to_string();
        let lease_ms = lease_ms(lease);
        let mut conn = self.conn.clone();
        let (acquired, _held): (u8, u64) = self
            .bounded(
                async move { ACQUIRE.key(key).arg(max).arg(lease_ms).arg(id).invoke_async(&mut conn).await },
            )
            .await?;
        Ok((acquired == 1).then_some(permit))
    }

    async fn renew(&self, permit: &Permit, lease: Duration) -> Result<bool, LimitError> {
        check_lease(lease)?;
        let key = self.cap_key(permit.tenant, permit.kind);
        let id = permit.id.to_string();
        let lease_ms = lease_ms(lease);
        let mut conn = self.conn.clone();
        let renewed: u8 = self
            .bounded(async move { RENEW.key(key).arg(id).arg(lease_ms).invoke_async(&mut conn).await })
            .await?;
        Ok(renewed == 1)
    }

    async fn release(&self, permit: Permit) -> Result<(), LimitError> {
        let key = self.cap_key(permit.tenant, permit.kind);
        let id = permit.id.to_string();
        let mut conn = self.conn.clone();
        let _removed: u64 = self
            .bounded(async move { redis::cmd("ZREM").arg(key).arg(id).query_async(&mut conn).await })
            .await?;
        Ok(())
    }
}

/// A lease in whole milliseconds, rounded up (at least 1).
fn lease_ms(lease: Duration) -> u64 {
    u64::try_from(lease.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1)
}
