//! Workers and fair scheduling over the durable run queue.
//!
//! The queue lives in the store, so queued runs survive a restart and
//! several processes can work it (each claim goes to one worker). Each
//! process runs one scheduler with `slots` concurrent runs. When a slot is
//! free it takes the next tenant in **weighted round robin** among the
//! tenants with queued runs — each tenant gets as many turns per round as its
//! tier's weight (shared 1, isolated 2, dedicated 4) — and claims that
//! tenant's oldest run, so a tenant that floods the queue gets its share of
//! turns per round like everyone else instead of the whole worker pool. A
//! tenant at its concurrent-runs limit (a lease in the shared limiter) is
//! skipped.
//!
//! A claimed run holds a lease that its worker renews; the renewal also
//! carries cancel requests. A run whose worker died is requeued by
//! `recover_expired_runs` when its lease lapses (or failed with
//! `worker_lost` after `max_attempts`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bulkhead_core::{OperatorCtx, RunId, TenantCtx, TenantId};
use bulkhead_limits::{ConcurrencyKind, Permit};
use bulkhead_store::{Run, RunStatus, UsageEvent, UsageKind};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::events::RunEvent;
use crate::runner::Runner;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// This process's name in run leases.
    pub worker_id: String,
    /// Runs executed at once by this process.
    pub slots: usize,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// Claims before a run whose workers keep vanishing is failed.
    pub max_attempts: i32,
    /// How often to look for queued runs without being notified.
    pub poll: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            worker_id: format!("worker-{}", uuid::Uuid::now_v7().simple()),
            slots: 16,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            poll: Duration::from_millis(250),
        }
    }
}

/// The scheduler of one process. `notify()` after queueing a run wakes it.
#[derive(Clone)]
pub struct Scheduler {
    runner: Runner,
    config: SchedulerConfig,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    /// Cancel flags of the runs this process executes, so a cancel asked
    /// here takes effect at once (other processes learn it at their next
    /// lease renewal).
    cancels: Arc<std::sync::Mutex<HashMap<RunId, Arc<AtomicBool>>>>,
    /// Scheduling weight per tenant (from its tier), cached for a while.
    weights: Arc<std::sync::Mutex<HashMap<TenantId, (Instant, usize)>>>,
}

/// Turns per round, by isolation tier.
pub fn tier_weight(tier: bulkhead_core::Tier) -> usize {
    match tier {
        bulkhead_core::Tier::Shared => 1,
        bulkhead_core::Tier::Isolated => 2,
        bulkhead_core::Tier::Dedicated => 4,
    }
}

impl Scheduler {
    pub fn new(runner: Runner, config: SchedulerConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.slots.max(1)));
        Self {
            runner,
            config,
            wake: Arc::new(Notify::new()),
            slots,
            cancels: Arc::default(),
            weights: Arc::default(),
        }
    }

    /// Whether this process executes runs at all (`agents.workers` > 0); an
    /// API-only `serve` queues runs for `bulkhead worker` processes.
    pub fn executes_runs(&self) -> bool {
        self.config.slots > 0
    }

    /// Tells a run executing in this process to stop (after the store
    /// recorded the cancel request).
    pub fn cancel_local(&self, run: RunId) {
        if let Some(flag) = self.cancels.lock().expect("cancels").get(&run) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    pub fn notify(&self) {
        self.wake.notify_one();
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Runs until `shutdown`; runs in flight finish on their own tasks.
    pub async fn run(self, shutdown: CancellationToken) {
        let op = OperatorCtx::local_cli();
        let mut turn: usize = 0;
        let mut last_recovery = Instant::now() - Duration::from_secs(60);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll) => {}
            }
            if last_recovery.elapsed() >= Duration::from_secs(2) {
                last_recovery = Instant::now();
                match self
                    .runner
                    .store
                    .recover_expired_runs(&op, OffsetDateTime::now_utc(), self.config.max_attempts)
                    .await
                {
                    Ok(recovered) => {
                        for r in recovered {
                            tracing::warn!(tenant = %r.tenant_id, run = %r.run_id, status = %r.status, "run recovered from a lost worker");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "run recovery failed"),
                }
            }
            if let Err(e) = self.dispatch(&op, &mut turn).await {
                tracing::warn!(error = %e, "scheduling failed");
            }
        }
    }

    /// Hands free slots to tenants in round robin until slots or work run out.
    async fn dispatch(&self, op: &OperatorCtx, turn: &mut usize) -> Result<(), bulkhead_store::StoreError> {
        let mut tenants: Vec<TenantId> = self
            .runner
            .store
            .queue_overview(op)
            .await?
            .into_iter()
            .filter(|q| q.queued > 0)
            .map(|q| q.tenant_id)
            .collect();
        if tenants.is_empty() {
            return Ok(());
        }
        tenants.sort();
        // Weighted round robin: each tenant appears in the ring as many
        // times in a row as its weight.
        let mut ring = Vec::with_capacity(tenants.len());
        for t in &tenants {
            let w = self.weight(op, *t).await;
            ring.extend(std::iter::repeat_n(*t, w));
        }
        let tenants = ring;
        let mut distinct = tenants.clone();
        distinct.dedup();
        let mut exhausted: HashMap<TenantId, bool> = HashMap::new();
        while exhausted.len() < distinct.len() {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else { return Ok(()) };
            // The next tenant in the ring that may still have work.
            let mut picked = None;
            for _ in 0..tenants.len() {
                let t = tenants[*turn % tenants.len()];
                *turn = turn.wrapping_add(1);
                if !exhausted.contains_key(&t) {
                    picked = Some(t);
                    break;
                }
            }
            let Some(tenant) = picked else { return Ok(()) };
            let ctx = op.act_for(tenant);
            // The tenant's concurrent-runs limit, shared across processes
            // (the budget is checked by each model call, not here).
            let permit = match self.run_permit(&ctx).await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    exhausted.insert(tenant, true);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%tenant, error = %e.message, "cannot admit a run");
                    exhausted.insert(tenant, true);
                    continue;
                }
            };
            let lease_until = OffsetDateTime::now_utc() + self.config.lease;
            match self.runner.store.claim_run(&ctx, &self.config.worker_id, lease_until).await? {
                Some(run) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.work(ctx.clone(), run).await;
                        this.release(permit).await;
                        drop(slot);
                        this.wake.notify_one();
                    });
                }
                None => {
                    self.release(permit).await;
                    exhausted.insert(tenant, true);
                }
            }
        }
        Ok(())
    }

    async fn weight(&self, op: &OperatorCtx, tenant: TenantId) -> usize {
        if let Some((at, w)) = self.weights.lock().expect("weights").get(&tenant)
            && at.elapsed() < Duration::from_secs(30)
        {
            return *w;
        }
        let w = match self.runner.store.get_tenant(op, tenant).await {
            Ok(t) => tier_weight(t.tier),
            Err(_) => 1,
        };
        self.weights.lock().expect("weights").insert(tenant, (Instant::now(), w));
        w
    }

    /// A slot of the tenant's concurrent-runs limit: `Ok(None)` when all are
    /// taken; `Some(None)` inside when the tenant has no such limit.
    async fn run_permit(&self, ctx: &TenantCtx) -> Result<Option<Option<Permit>>, bulkhead_core::Error> {
        let terms = self.runner.metering.terms(ctx).await?;
        let Some(max) = terms.limits.max_concurrent(ConcurrencyKind::Runs) else { return Ok(Some(None)) };
        // The lease outlives the longest run; it is released when the run ends.
        let lease = Duration::from_secs(24 * 60 * 60);
        match self.runner.metering.limiter().acquire(ctx, ConcurrencyKind::Runs, max, lease).await {
            Ok(Some(p)) => Ok(Some(Some(p))),
            Ok(None) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn release(&self, permit: Option<Permit>) {
        if let Some(p) = permit
            && let Err(e) = self.runner.metering.limiter().release(p).await
        {
            tracing::warn!(error = %e, "could not release a run slot; its lease will expire");
        }
    }

    /// Executes one claimed run, renewing its lease, and records the outcome.
    #[tracing::instrument(
        name = "run",
        skip_all,
        fields(tenant.id = %ctx.tenant_id(), run.id = %run.id)
    )]
    async fn work(&self, ctx: TenantCtx, run: Run) {
        let started = Instant::now();
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels.lock().expect("cancels").insert(run.id, cancel.clone());
        let lost = Arc::new(AtomicBool::new(false));
        let stop_heartbeat = CancellationToken::new();
        let heartbeat = {
            let (store, ctx, cancel, lost, stop) = (
                self.runner.store.clone(),
                ctx.clone(),
                cancel.clone(),
                lost.clone(),
                stop_heartbeat.clone(),
            );
            let (worker, lease, id) = (self.config.worker_id.clone(), self.config.lease, run.id);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        // Often enough to notice cancels asked elsewhere within seconds.
                        () = tokio::time::sleep((lease / 3).min(Duration::from_secs(2))) => {}
                    }
                    match store.renew_run(&ctx, id, &worker, OffsetDateTime::now_utc() + lease).await {
                        Ok(Some(cancel_requested)) => {
                            if cancel_requested {
                                cancel.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(None) => {
                            lost.store(true, Ordering::Relaxed);
                            cancel.store(true, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                    }
                }
            })
        };
        self.runner.events.publish(run.id, RunEvent { name: "run.started", data: json!({"run_id": run.id}) });
        let outcome = self.runner.execute(&ctx, &run, cancel.clone()).await;
        stop_heartbeat.cancel();
        let _ = heartbeat.await;
        self.cancels.lock().expect("cancels").remove(&run.id);
        if lost.load(Ordering::Relaxed) {
            tracing::warn!(run = %run.id, "lost the run's lease; another worker owns it now");
            return;
        }
        let finished = self
            .runner
            .store
            .finish_run(
                &ctx,
                run.id,
                &self.config.worker_id,
                outcome.status,
                &outcome.output,
                outcome.error.as_deref(),
            )
            .await;
        if let Err(e) = &finished {
            tracing::error!(run = %run.id, error = %e, "could not record the end of a run");
        }
        let wall_ms = started.elapsed().as_millis() as i64;
        let event = UsageEvent {
            id: format!("{}-run-time-{}", run.id, run.attempts),
            ts: OffsetDateTime::now_utc(),
            kind: UsageKind::RunTime,
            name: "agent_run".into(),
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            quantity: wall_ms,
            unit: Some("ms".into()),
            cost: bulkhead_core::Money::ZERO,
            run_id: Some(run.id.as_uuid()),
            agent_id: Some(run.agent_id.as_uuid()),
            request_id: None,
            attributes: json!({"status": outcome.status.as_str()}),
        };
        if let Err(e) = self.runner.metering.record(&ctx, event).await {
            tracing::warn!(error = %e.message, "could not record run time");
        }
        bulkhead_telemetry::metrics::run_finished(&ctx, outcome.status.as_str(), started.elapsed());
        let name = match outcome.status {
            RunStatus::Completed => "run.completed",
            RunStatus::Cancelled => "run.cancelled",
            RunStatus::Expired => "run.expired",
            _ => "run.failed",
        };
        self.runner.events.publish(
            run.id,
            RunEvent { name, data: json!({"run_id": run.id, "status": outcome.status.as_str(), "output": outcome.output, "error": outcome.error}) },
        );
    }
}
