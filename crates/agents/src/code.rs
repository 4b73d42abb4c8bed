//! Code execution for tenants, shared by the `run_code` tool and
//! `POST /v1/sandbox/executions`: the tenant's sandbox policy (the
//! operator's document in the tenant settings) → the tenant's
//! sandbox-executions-per-minute limit → the sandbox (its own policy check,
//! concurrency caps, no network, limits) → an audit entry for every
//! execution and every refusal → a `sandbox` usage event of the CPU time.
//!
//! Invariants, as absences: nothing runs for a request the policy or the
//! rate limit refused; no execution goes unaudited or unmetered (an audit
//! or ledger failure is logged; the code has already run); no code, stdin
//! or output is kept in the audit log — only a digest of the code.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_audit::{Audit, AuditActor, AuditEvent, Outcome, action};
use bulkhead_core::{Code, Error, Money, TenantBound, TenantCtx};
use bulkhead_limits::{ConcurrencyKind, RateKind};
use bulkhead_metering::Metering;
use bulkhead_models::ToolDef;
use bulkhead_sandbox::{
    ExecOutcome, ExecRequest, Language, RefusalCode, Sandbox, SandboxError, SandboxPolicy,
};
use bulkhead_store::{DynStore, UsageEvent, UsageKind};
use bulkhead_telemetry::metrics;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::tools::{Tool, ToolCtx};

/// Who asked for an execution (for the audit entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A tenant app through the API: the key's own actor.
    Api,
    /// An agent run (a worker).
    Agent,
}

/// The sandbox with its policy, limits, audit and metering around it.
#[derive(Clone)]
pub struct CodeRunner {
    /// `None` when this server has no working sandbox backend.
    sandbox: Option<Arc<Sandbox>>,
    store: DynStore,
    metering: Metering,
    audit: Audit,
}

impl CodeRunner {
    pub fn new(sandbox: Option<Arc<Sandbox>>, store: DynStore, metering: Metering, audit: Audit) -> Self {
        Self { sandbox, store, metering, audit }
    }

    pub fn backend(&self) -> Option<&'static str> {
        self.sandbox.as_ref().map(|s| s.backend_name())
    }

    /// The tenant's policy (the default — execution off — when none is set).
    pub async fn policy(&self, ctx: &TenantCtx) -> Result<SandboxPolicy, Error> {
        let doc = self.store.tenant_settings(ctx).await?.sandbox;
        if doc.as_object().is_none_or(|o| o.is_empty()) {
            return Ok(SandboxPolicy::default());
        }
        Ok(SandboxPolicy::from_json(&doc.to_string())?)
    }

    async fn audit(&self, ctx: &TenantCtx, caller: Caller, event: AuditEvent) {
        match caller {
            Caller::Api => self.audit.record(ctx, event).await,
            Caller::Agent => self.audit.record_as(ctx, AuditActor::System, event).await,
        }
    }

    /// Runs `req` for the tenant; see the module docs. A refusal is an
    /// error with the refusal's code in `details.refusal`.
    #[tracing::instrument(
        name = "sandbox.execute",
        skip_all,
        fields(tenant.id = %ctx.tenant_id(), language = req.language.as_str())
    )]
    pub async fn execute(
        &self,
        ctx: &TenantCtx,
        caller: Caller,
        req: &ExecRequest,
    ) -> Result<ExecOutcome, Error> {
        let code_digest = bulkhead_audit::digest(req.code.as_bytes());
        let target = format!("sandbox:{}", req.language.as_str());
        let refused = |reason: String, refusal: &str| {
            AuditEvent::new(action::SANDBOX_REFUSED, target.clone())
                .outcome(Outcome::Denied)
                .details(json!({"code_sha256": code_digest, "language": req.language.as_str(),
                                "refusal": refusal, "reason": reason}))
        };
        let Some(sandbox) = &self.sandbox else {
            metrics::sandbox_execution(ctx, "unavailable", Duration::ZERO);
            self.audit(ctx, caller, refused("no sandbox backend on this server".into(), "unavailable")).await;
            return Err(Error::new(Code::Unavailable, "code execution is not available on this server"));
        };
        let policy = self.policy(ctx).await?;
        // The policy first (cheap, and a disabled tenant is not charged a rate unit).
        if let Err(refusal) = policy.check(req) {
            count_refusal(ctx, refusal.code);
            self.audit(ctx, caller, refused(refusal.reason.clone(), refusal.code.as_str())).await;
            return Err(refusal.into());
        }
        if let Err(e) = self.metering.check_rate(ctx, RateKind::SandboxExecs, 1).await {
            // Metering counted the rate refusal itself.
            metrics::sandbox_execution(ctx, "refused", Duration::ZERO);
            self.audit(ctx, caller, refused(e.message.to_string(), "rate_limited")).await;
            return Err(e);
        }
        let outcome = match sandbox.execute(ctx, &policy, req).await {
            Ok(o) => o,
            Err(SandboxError::Refused(refusal)) => {
                count_refusal(ctx, refusal.code);
                self.audit(ctx, caller, refused(refusal.reason.clone(), refusal.code.as_str())).await;
                return Err(refusal.into());
            }
            Err(e) => {
                metrics::sandbox_execution(ctx, "error", Duration::ZERO);
                return Err(e.into());
            }
        };
        metrics::sandbox_execution(ctx, outcome_label(&outcome), outcome.cpu_time);
        let cpu_ms = outcome.cpu_time.as_millis() as i64;
        let wall_ms = outcome.wall_time.as_millis() as i64;
        let usage = json!({
            "cpu_ms": cpu_ms, "wall_ms": wall_ms, "peak_memory_bytes": outcome.peak_memory_bytes,
            "exit_code": outcome.exit_code, "signal": outcome.signal, "timed_out": outcome.timed_out,
            "limit_exceeded": outcome.limit_exceeded.map(|l| l.as_str()), "backend": outcome.backend,
        });
        let event = AuditEvent::new(action::SANDBOX_EXECUTED, target)
            .outcome(if outcome.success() { Outcome::Success } else { Outcome::Failure })
            .details(json!({"code_sha256": code_digest, "language": req.language.as_str(),
                            "limits": {"cpu_seconds": policy.cpu_seconds, "memory_bytes": policy.memory_bytes,
                                       "max_processes": policy.max_processes,
                                       "max_output_bytes": policy.max_output_bytes},
                            "usage": usage}));
        self.audit(ctx, caller, event).await;
        self.meter(ctx, req, &outcome, cpu_ms, usage).await;
        Ok(outcome)
    }

    async fn meter(
        &self,
        ctx: &TenantCtx,
        req: &ExecRequest,
        outcome: &ExecOutcome,
        cpu_ms: i64,
        attrs: Value,
    ) {
        let cost = match self.metering.terms(ctx).await {
            Ok(terms) => self.metering.pricing().sandbox_cost(&terms.pricing, cpu_ms),
            Err(_) => Money::ZERO,
        };
        let event = UsageEvent {
            id: format!("sandbox-{}", uuid::Uuid::now_v7()),
            ts: OffsetDateTime::now_utc(),
            kind: UsageKind::Sandbox,
            name: format!("sandbox/{}", req.language.as_str()),
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            quantity: cpu_ms,
            unit: Some("cpu_ms".into()),
            cost,
            run_id: None,
            agent_id: None,
            request_id: None,
            attributes: attrs,
        };
        if let Err(e) = self.metering.record(ctx, event).await {
            tracing::error!(error = %e, backend = outcome.backend, "could not meter a sandbox execution");
        }
    }
}

/// Counts a refused execution: a tenant at its concurrency cap as a limit,
/// anything else as the sandbox policy's refusal.
fn count_refusal(ctx: &TenantCtx, code: RefusalCode) {
    match code {
        RefusalCode::TenantBusy => metrics::rate_limit_refused(ctx, ConcurrencyKind::SandboxExecs.as_str()),
        code => metrics::policy_refused(ctx, "sandbox", code.as_str()),
    }
    metrics::sandbox_execution(ctx, "refused", Duration::ZERO);
}

/// The `outcome` label of an execution that ran.
fn outcome_label(o: &ExecOutcome) -> &'static str {
    if o.timed_out {
        "timeout"
    } else if o.limit_exceeded.is_some() {
        "limit_exceeded"
    } else if o.success() {
        "success"
    } else {
        "failure"
    }
}

/// The model's view of an outcome: output, and how the program ended.
pub fn outcome_text(o: &ExecOutcome) -> String {
    let mut out = String::new();
    let ended = match (o.exit_code, o.signal, o.limit_exceeded) {
        (_, _, Some(limit)) => format!("stopped: the {} limit was exceeded", limit.as_str()),
        (Some(code), _, None) => format!("exit code {code}"),
        (None, Some(sig), None) => format!("killed by signal {sig}"),
        (None, None, None) => "ended".to_owned(),
    };
    out.push_str(&ended);
    if o.timed_out {
        out.push_str(" (timed out)");
    }
    out.push('\n');
    if !o.stdout.is_empty() {
        out.push_str("stdout:\n");
        out.push_str(&o.stdout_lossy());
        if o.stdout_truncated {
            out.push_str("\n[stdout truncated]");
        }
        out.push('\n');
    }
    if !o.stderr.is_empty() {
        out.push_str("stderr:\n");
        out.push_str(&o.stderr_lossy());
        if o.stderr_truncated {
            out.push_str("\n[stderr truncated]");
        }
    }
    out.trim_end().to_owned()
}

/// `run_code`: runs a snippet in the tenant's sandbox.
pub struct RunCode {
    pub runner: CodeRunner,
}

#[async_trait]
impl Tool for RunCode {
    fn def(&self) -> ToolDef {
        ToolDef {
            name: "run_code".into(),
            description: "Runs a short program in an isolated sandbox with no network and returns its \
                          output. Languages: python, bash."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "language": {"type": "string", "enum": ["python", "bash"]},
                    "code": {"type": "string"},
                    "stdin": {"type": "string"}
                },
                "required": ["language", "code"]
            }),
        }
    }

    async fn call(&self, call: &ToolCtx<'_>, args: &Value) -> Result<TenantBound<String>, String> {
        let language: Language = args
            .get("language")
            .and_then(Value::as_str)
            .unwrap_or("python")
            .parse()
            .map_err(|_| "language must be python or bash".to_owned())?;
        let code = args.get("code").and_then(Value::as_str).ok_or("expected {\"language\", \"code\"}")?;
        let mut req = ExecRequest::new(language, code);
        if let Some(stdin) = args.get("stdin").and_then(Value::as_str) {
            req = req.with_stdin(stdin.as_bytes().to_vec());
        }
        match self.runner.execute(call.tenant, Caller::Agent, &req).await {
            Ok(outcome) => Ok(call.tenant.bind(outcome_text(&outcome))),
            Err(e) => Err(match e.details.as_ref().and_then(|d| d.get("refusal")).and_then(Value::as_str) {
                Some(code) => format!("refused ({code}): {}", e.message),
                None => e.message.to_string(),
            }),
        }
    }
}
