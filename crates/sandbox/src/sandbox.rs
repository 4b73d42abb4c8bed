//! The facade the server calls: the policy check, then a per-tenant and a
//! global concurrency cap, then the configured backend.
//!
//! Invariants: nothing reaches a backend without passing
//! [`SandboxPolicy::check`]; a tenant at its cap is refused at once
//! (`tenant_busy`) rather than queued, so one tenant cannot fill the global
//! queue; waiting for a global slot is bounded by `queue_timeout_ms`
//! (`sandbox_busy`), so the number of waiters is bounded by tenants × their
//! cap. The per-tenant map holds only tenants with a run in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_core::{TenantCtx, TenantId};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{Backend, BackendKind};
use crate::bubblewrap::{BubblewrapBackend, BubblewrapConfig};
use crate::error::SandboxError;
use crate::gvisor::{GvisorBackend, GvisorConfig};
use crate::policy::{Refusal, RefusalCode, SandboxPolicy};
use crate::request::{ExecOutcome, ExecRequest};

/// The operator's sandbox configuration (`sandbox` in the server's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    pub backend: BackendKind,
    /// Executions at once on this server.
    pub max_concurrent: usize,
    /// Executions at once per tenant.
    pub max_concurrent_per_tenant: usize,
    /// How long a request may wait for a global slot before `sandbox_busy`.
    pub queue_timeout_ms: u64,
    pub bubblewrap: BubblewrapConfig,
    pub gvisor: GvisorConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Bubblewrap,
            // Sandboxes are CPU-bound and get one core of quota each; a
            // little over the core count keeps the cores busy while others start.
            max_concurrent: 4,
            max_concurrent_per_tenant: 2,
            queue_timeout_ms: 10_000,
            bubblewrap: BubblewrapConfig::default(),
            gvisor: GvisorConfig::default(),
        }
    }
}

impl SandboxConfig {
    pub fn validate(&self) -> Result<(), SandboxError> {
        if self.max_concurrent == 0 || self.max_concurrent_per_tenant == 0 {
            return Err(SandboxError::Config("sandbox concurrency caps must be at least 1".into()));
        }
        if self.max_concurrent_per_tenant > self.max_concurrent {
            return Err(SandboxError::Config(
                "sandbox.max_concurrent_per_tenant must not exceed sandbox.max_concurrent".into(),
            ));
        }
        Ok(())
    }
}

/// Policy check, concurrency caps, backend.
pub struct Sandbox {
    backend: Arc<dyn Backend>,
    global: Arc<Semaphore>,
    tenants: Arc<Mutex<HashMap<TenantId, Arc<Semaphore>>>>,
    per_tenant: usize,
    queue_timeout: Duration,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("backend", &self.backend.name())
            .field("available", &self.global.available_permits())
            .field("per_tenant", &self.per_tenant)
            .finish()
    }
}

impl Sandbox {
    /// Builds the configured backend; fails if the host cannot run it.
    pub fn from_config(config: &SandboxConfig) -> Result<Self, SandboxError> {
        config.validate()?;
        let backend: Arc<dyn Backend> = match config.backend {
            BackendKind::Bubblewrap => Arc::new(BubblewrapBackend::new(config.bubblewrap.clone())?),
            BackendKind::Gvisor => Arc::new(GvisorBackend::new(config.gvisor.clone())?),
        };
        Ok(Self::with_backend(backend, config))
    }

    /// Uses `backend` with the caps of `config` (its backend choice is ignored).
    pub fn with_backend(backend: Arc<dyn Backend>, config: &SandboxConfig) -> Self {
        Self {
            backend,
            global: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            tenants: Arc::new(Mutex::new(HashMap::new())),
            per_tenant: config.max_concurrent_per_tenant.max(1),
            queue_timeout: Duration::from_millis(config.queue_timeout_ms),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Runs `req` for the tenant of `ctx` under that tenant's `policy`. A
    /// [`SandboxError::Refused`] ran nothing; the code's own failure is an `Ok`.
    pub async fn execute(
        &self,
        ctx: &TenantCtx,
        policy: &SandboxPolicy,
        req: &ExecRequest,
    ) -> Result<ExecOutcome, SandboxError> {
        let limits = policy.check(req)?;
        let _tenant = self.tenant_permit(ctx.tenant_id())?;
        let _global =
            match tokio::time::timeout(self.queue_timeout, self.global.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) | Err(_) => {
                    return Err(Refusal::new(
                        RefusalCode::SandboxBusy,
                        "every sandbox slot on this server is busy; retry shortly",
                    )
                    .into());
                }
            };
        self.backend.execute(ctx, req, &limits).await.map_err(SandboxError::Backend)
    }

    fn tenant_permit(&self, tenant: TenantId) -> Result<TenantPermit, SandboxError> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let sem = tenants.entry(tenant).or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)));
        let permit = sem.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                RefusalCode::TenantBusy,
                format!(
                    "this tenant already runs {} executions at once; retry when one finishes",
                    self.per_tenant
                ),
            )
        })?;
        Ok(TenantPermit { permit: Some(permit), tenant, tenants: self.tenants.clone() })
    }

    /// Tenants with a run in flight (for tests and metrics).
    pub fn tenants_in_flight(&self) -> usize {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A tenant's slot; on drop, forgets the tenant once nothing of it is in flight.
struct TenantPermit {
    permit: Option<OwnedSemaphorePermit>,
    tenant: TenantId,
    tenants: Arc<Mutex<HashMap<TenantId, Arc<Semaphore>>>>,
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        // Permits hold clones of the Arc and are taken under this lock, so a
        // count of one means no permit of this tenant is alive.
        if tenants.get(&self.tenant).is_some_and(|sem| Arc::strong_count(sem) == 1) {
            tenants.remove(&self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Limits;
    use bulkhead_core::OperatorCtx;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backend that counts calls and holds each until the test adds a permit.
    struct Gate {
        calls: AtomicUsize,
        release: Semaphore,
    }

    #[async_trait::async_trait]
    impl Backend for Gate {
        fn name(&self) -> &'static str {
            "gate"
        }
        async fn execute(
            &self,
            _ctx: &TenantCtx,
            _req: &ExecRequest,
            limits: &Limits,
        ) -> Result<ExecOutcome, bulkhead_core::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.release.acquire().await.expect("open").forget();
            Ok(ExecOutcome {
                stdout: Vec::new(),
                stderr: Vec::new(),
                exit_code: Some(0),
                signal: None,
                timed_out: false,
                limit_exceeded: None,
                cpu_time: Duration::ZERO,
                wall_time: limits.wall_time,
                peak_memory_bytes: None,
                stdout_truncated: false,
                stderr_truncated: false,
                backend: "gate",
            })
        }
    }

    fn setup(global: usize, per_tenant: usize) -> (Arc<Sandbox>, Arc<Gate>) {
        let gate = Arc::new(Gate { calls: AtomicUsize::new(0), release: Semaphore::new(0) });
        let config = SandboxConfig {
            max_concurrent: global,
            max_concurrent_per_tenant: per_tenant,
            queue_timeout_ms: 200,
            ..SandboxConfig::default()
        };
        (Arc::new(Sandbox::with_backend(gate.clone(), &config)), gate)
    }

    async fn wait_calls(gate: &Gate, n: usize) {
        while gate.calls.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn refusals_never_reach_the_backend() {
        let (sandbox, gate) = setup(2, 1);
        let ctx = OperatorCtx::local_cli().act_for(TenantId::new());
        let err = sandbox.execute(&ctx, &SandboxPolicy::default(), &ExecRequest::python("print(1)")).await;
        assert_eq!(err.unwrap_err().refusal().unwrap().code, RefusalCode::SandboxDisabled);
        assert_eq!(gate.calls.load(Ordering::SeqCst), 0);
        assert_eq!(sandbox.tenants_in_flight(), 0);
    }

    #[tokio::test]
    async fn a_tenant_at_its_cap_is_refused_while_others_run() {
        let (sandbox, gate) = setup(3, 1);
        let policy = SandboxPolicy::enabled();
        let a = OperatorCtx::local_cli().act_for(TenantId::new());
        let b = OperatorCtx::local_cli().act_for(TenantId::new());
        let req = ExecRequest::python("print(1)");

        let first = tokio::spawn({
            let (s, a, p, r) = (sandbox.clone(), a.clone(), policy.clone(), req.clone());
            async move { s.execute(&a, &p, &r).await }
        });
        wait_calls(&gate, 1).await;
        let refused = sandbox.execute(&a, &policy, &req).await.unwrap_err();
        assert_eq!(refused.refusal().unwrap().code, RefusalCode::TenantBusy);
        let platform: bulkhead_core::Error = refused.into();
        assert_eq!(platform.status(), 429);

        let other = tokio::spawn({
            let (s, b, p, r) = (sandbox.clone(), b.clone(), policy.clone(), req.clone());
            async move { s.execute(&b, &p, &r).await }
        });
        wait_calls(&gate, 2).await;
        assert_eq!(sandbox.tenants_in_flight(), 2);
        gate.release.add_permits(2);
        assert!(first.await.unwrap().unwrap().success());
        assert!(other.await.unwrap().unwrap().success());
        assert_eq!(sandbox.tenants_in_flight(), 0, "idle tenants are forgotten");
    }

    #[tokio::test]
    async fn a_full_server_refuses_after_the_queue_timeout() {
        let (sandbox, gate) = setup(1, 1);
        let policy = SandboxPolicy::enabled();
        let req = ExecRequest::python("print(1)");
        let busy = tokio::spawn({
            let (s, p, r) = (sandbox.clone(), policy.clone(), req.clone());
            async move { s.execute(&OperatorCtx::local_cli().act_for(TenantId::new()), &p, &r).await }
        });
        wait_calls(&gate, 1).await;
        let other = OperatorCtx::local_cli().act_for(TenantId::new());
        let refused = sandbox.execute(&other, &policy, &req).await.unwrap_err();
        assert_eq!(refused.refusal().unwrap().code, RefusalCode::SandboxBusy);
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
        gate.release.add_permits(1);
        busy.await.unwrap().unwrap();
        assert_eq!(sandbox.tenants_in_flight(), 0);
    }

    #[test]
    fn config_reads_from_json_and_validates() {
        let c: SandboxConfig = serde_json::from_str(
            r#"{"backend": "gvisor", "max_concurrent": 8, "bubblewrap": {"user": "1234:1234", "cgroups": "off"}}"#,
        )
        .unwrap();
        assert_eq!(c.backend, BackendKind::Gvisor);
        assert_eq!(c.bubblewrap.user, "1234:1234");
        assert_eq!(c.bubblewrap.cgroups, crate::CgroupMode::Off);
        c.validate().unwrap();
        let bad =
            SandboxConfig { max_concurrent_per_tenant: 9, max_concurrent: 2, ..SandboxConfig::default() };
        assert!(bad.validate().is_err());
        assert!(serde_json::from_str::<SandboxConfig>(r#"{"backnd": "gvisor"}"#).is_err());
    }
}
