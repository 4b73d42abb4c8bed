//! Concurrency caps: what is counted ([`ConcurrencyKind`]) and the lease a
//! holder gets ([`Permit`]).
//!
//! A slot is a *lease*, not a lock: it expires by itself after the lease
//! duration unless renewed, so a replica that crashes (or a task that forgets
//! to release) frees its slots within one lease. Holders of long work renew
//! well before the lease ends (e.g. every third of it); a failed renewal means
//! the slot was lost and the work should stop or re-acquire.

use std::fmt;
use std::time::Duration;

use bulkhead_core::TenantId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a concurrency cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyKind {
    /// Agent runs in flight.
    Runs,
    /// Sandbox executions in flight.
    SandboxExecs,
}

impl ConcurrencyKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [ConcurrencyKind; 2] = [ConcurrencyKind::Runs, ConcurrencyKind::SandboxExecs];

    /// The stable name of the cap, as in [`crate::TenantLimits`] and in 429
    /// error details. Never rename one: Redis keys contain it too.
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyKind::Runs => "concurrent_runs",
            ConcurrencyKind::SandboxExecs => "concurrent_sandbox_executions",
        }
    }
}

impl fmt::Display for ConcurrencyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One held concurrency slot. Minted only by a [`crate::Limiter`], for the
/// tenant of the context it was given; give it back with
/// [`crate::Limiter::release`]. Dropping it without releasing keeps the slot
/// until the lease expires.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit holds a slot until released or until its lease expires"]
pub struct Permit {
    pub(crate) id: Uuid,
    pub(crate) tenant: TenantId,
    pub(crate) kind: ConcurrencyKind,
    pub(crate) lease: Duration,
}

impl Permit {
    pub(crate) fn new(tenant: TenantId, kind: ConcurrencyKind, lease: Duration) -> Self {
        Self { id: Uuid::new_v4(), tenant, kind, lease }
    }

    /// Unique across replicas (random), e.g. for logs.
    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn tenant_id(&self) -> TenantId {
        self.tenant
    }

    pub fn kind(&self) -> ConcurrencyKind {
        self.kind
    }

    /// The lease it was acquired with.
    pub fn lease(&self) -> Duration {
        self.lease
    }
}
