//! The audit log as a service: who did what to which tenant, recorded in
//! append-only, hash-chained logs — one per tenant, one for the platform —
//! and checked by recomputing every hash ([`Audit::verify`]).
//!
//! The actor of an entry comes from the context the caller already holds
//! (a tenant key, an operator key acting for the tenant, the console), never
//! from a request body. Authentication failures are recorded through a
//! coalescing counter ([`Audit::auth_failed`]) so a flood of bad keys adds a
//! bounded number of entries.
//!
//! Failure policy: [`Audit::record`] and its siblings never fail the
//! caller's operation — an entry that cannot be written is logged at error
//! level (with action, chain and cause) and the operation still answers.
//! Callers that must not proceed without a record (say, running untrusted
//! code) use the `try_` variants and refuse on error.
//!
//! Invariants: no entry holds a secret or key material — callers pass
//! names, ids, prefixes and digests ([`digest`], [`digest_json`]), and as a
//! second line of defence details are scrubbed of values under secret-like
//! names and of anything shaped like a full Bulkhead key. Nothing here
//! updates or deletes an entry.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bulkhead_core::{Actor, Error, KeyId, OperatorCtx, TenantCtx, TenantId};
use bulkhead_store::{DynStore, NewAuditEntry};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub mod action;
mod failures;
mod verify;

pub use bulkhead_store::{AuditChain, AuditEntry, AuditQuery};
pub use failures::{AuthFailReason, AuthFailure, KnownKey};
pub use verify::{Problem, ProblemKind, VerifyReport};

use failures::{Coalescer, Summary};

/// How long auth failures of one key (or of all unknown keys) are coalesced.
pub const DEFAULT_AUTH_WINDOW: Duration = Duration::from_secs(60);

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Attempted and failed.
    Failure,
    /// Refused by policy: authentication, permissions, allow lists.
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// Who acted, as an entry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditActor {
    TenantKey(KeyId),
    OperatorKey(KeyId),
    /// The operator at the console (`bulkhead …` on the store directly).
    Cli,
    /// The platform itself: workers, schedulers, authentication.
    System,
}

impl AuditActor {
    /// `key:<id>`, `operator:<id>`, `cli` or `system`.
    pub fn label(&self) -> String {
        match self {
            AuditActor::TenantKey(id) => format!("key:{id}"),
            AuditActor::OperatorKey(id) => format!("operator:{id}"),
            AuditActor::Cli => "cli".into(),
            AuditActor::System => "system".into(),
        }
    }

    /// The operator behind a platform context.
    pub fn of_operator(op: &OperatorCtx) -> Self {
        op.key_id().map_or(AuditActor::Cli, AuditActor::OperatorKey)
    }

    /// Who acts in a tenant context, and whether it is an operator acting
    /// for the tenant (its key with `X-Tenant-ID` or a tenant path, or the
    /// console).
    pub fn of_tenant_ctx(ctx: &TenantCtx) -> (Self, bool) {
        match ctx.actor() {
            Actor::TenantKey { key_id, .. } => (AuditActor::TenantKey(*key_id), false),
            Actor::Operator { key_id } => (key_id.map_or(AuditActor::Cli, AuditActor::OperatorKey), true),
        }
    }
}

/// What happened: a stable dotted action (see [`action`]), its target, its
/// outcome and details (a JSON object of names, ids, digests — never a
/// secret).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub details: Value,
}

impl AuditEvent {
    /// A successful `action` on `target`, with no details.
    pub fn new(action: &str, target: impl Into<String>) -> Self {
        Self {
            action: action.to_owned(),
            target: target.into(),
            outcome: Outcome::Success,
            details: json!({}),
        }
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Sets the details; anything but an object is wrapped as `{"value": …}`.
    pub fn details(mut self, details: Value) -> Self {
        self.details = if details.is_object() { details } else { json!({ "value": details }) };
        self
    }
}

/// Lowercase hex SHA-256 of `bytes`: how tool arguments, code and outputs
/// appear in entries (the digest shows what ran without storing it).
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// [`digest`] of a JSON value's canonical form, so equal arguments give
/// equal digests whatever their key order.
pub fn digest_json(value: &Value) -> String {
    digest(bulkhead_store::audit::canonical_json(value).as_bytes())
}

/// The audit service. Cheap to clone; clones share the auth-failure counter.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    store: DynStore,
    failures: Mutex<Coalescer>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Audit {
    /// The service over `store`, coalescing auth failures per minute.
    pub fn new(store: DynStore) -> Self {
        Self::with_auth_window(store, DEFAULT_AUTH_WINDOW)
    }

    /// The service with a given coalescing window. Inside a Tokio runtime
    /// this also starts the task that writes the counts of windows that
    /// closed; it ends when the last clone of the service is dropped.
    pub fn with_auth_window(store: DynStore, window: Duration) -> Self {
        let inner = Arc::new(Inner { store, failures: Mutex::new(Coalescer::new(window)) });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&inner), window));
        }
        Self { inner }
    }

    /// Records an event in the tenant's chain, the actor taken from `ctx`.
    /// Never fails the caller: a write error is logged at error level.
    pub async fn record(&self, ctx: &TenantCtx, event: AuditEvent) {
        let (actor, via) = AuditActor::of_tenant_ctx(ctx);
        self.logged(AuditChain::Tenant(ctx), actor, via, event).await;
    }

    /// [`Audit::record`], for callers that must refuse when no record was written.
    pub async fn try_record(&self, ctx: &TenantCtx, event: AuditEvent) -> Result<AuditEntry, Error> {
        let (actor, via) = AuditActor::of_tenant_ctx(ctx);
        self.append(AuditChain::Tenant(ctx), actor, via, event).await
    }

    /// Records an event in the tenant's chain with an explicit actor — for
    /// work the platform does on the tenant's behalf (workers running
    /// tools and sandboxes act as [`AuditActor::System`]).
    pub async fn record_as(&self, ctx: &TenantCtx, actor: AuditActor, event: AuditEvent) {
        let via = matches!(actor, AuditActor::OperatorKey(_) | AuditActor::Cli);
        self.logged(AuditChain::Tenant(ctx), actor, via, event).await;
    }

    /// [`Audit::record_as`], for callers that must refuse when no record was written.
    pub async fn try_record_as(
        &self,
        ctx: &TenantCtx,
        actor: AuditActor,
        event: AuditEvent,
    ) -> Result<AuditEntry, Error> {
        let via = matches!(actor, AuditActor::OperatorKey(_) | AuditActor::Cli);
        self.append(AuditChain::Tenant(ctx), actor, via, event).await
    }

    /// Records an operator's action in the platform chain. Never fails the caller.
    pub async fn record_platform(&self, op: &OperatorCtx, event: AuditEvent) {
        self.logged(AuditChain::Platform(op), AuditActor::of_operator(op), false, event).await;
    }

    /// [`Audit::record_platform`], for callers that must refuse when no record was written.
    pub async fn try_record_platform(
        &self,
        op: &OperatorCtx,
        event: AuditEvent,
    ) -> Result<AuditEntry, Error> {
        self.append(AuditChain::Platform(op), AuditActor::of_operator(op), false, event).await
    }

    /// Records an event in the platform chain with an explicit actor — for
    /// what the platform does by itself (say, installing the first
    /// operator key at start-up). Never fails the caller.
    pub async fn record_platform_as(&self, op: &OperatorCtx, actor: AuditActor, event: AuditEvent) {
        self.logged(AuditChain::Platform(op), actor, false, event).await;
    }

    /// An operator's action on a tenant: recorded in the platform chain and
    /// in the tenant's own (as the operator acting for it). Never fails the caller.
    pub async fn record_tenant_lifecycle(&self, op: &OperatorCtx, tenant: TenantId, event: AuditEvent) {
        self.record_platform(op, event.clone()).await;
        self.record(&op.act_for(tenant), event).await;
    }

    /// Records a refused authentication. The first failure of a key (or,
    /// for unknown and malformed keys, of any such key) in a window is
    /// written at once; the rest of that window only counts, and the count
    /// is written as one more entry when the window closes. A known
    /// tenant's key goes to that tenant's chain, everything else to the
    /// platform chain. Never fails the caller.
    pub async fn auth_failed(&self, failure: AuthFailure) {
        let now = tokio::time::Instant::now();
        let (write_now, due) = {
            let mut c = self.inner.failures.lock().unwrap_or_else(|p| p.into_inner());
            let write_now = c.hit(&failure, now, OffsetDateTime::now_utc());
            // Only what this failure closed; the sweeper closes idle windows,
            // so a flood does not scan every bucket on every failure.
            (write_now, c.take_pending())
        };
        for summary in due {
            write_summary(&self.inner.store, summary).await;
        }
        if write_now {
            let mut details = json!({ "reason": failure.reason.as_str(), "count": 1 });
            if let Some(key) = &failure.key {
                details["key_id"] = json!(key.id.to_string());
            }
            if let Some(prefix) = &failure.prefix {
                details["prefix"] = json!(prefix);
            }
            let event = AuditEvent::new(action::AUTH_FAILED, failure.target())
                .outcome(Outcome::Denied)
                .details(details);
            write_system(&self.inner.store, failure.tenant(), event).await;
        }
    }

    /// Writes the counts of coalescing windows that have closed by `now`.
    /// The background task calls this; tests may too.
    #[doc(hidden)]
    pub async fn flush_auth_failures_at(&self, now: tokio::time::Instant) {
        flush(&self.inner, now).await;
    }

    /// Entries of a chain in seq order (see [`AuditQuery`]).
    pub async fn list(&self, chain: AuditChain<'_>, query: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        Ok(self.inner.store.list_audit(chain, query).await?)
    }

    /// Recomputes every hash of the chain and checks every link and the
    /// head; reports the first problem.
    pub async fn verify(&self, chain: AuditChain<'_>) -> Result<VerifyReport, Error> {
        verify::verify(&self.inner.store, chain).await
    }

    async fn logged(&self, chain: AuditChain<'_>, actor: AuditActor, via: bool, event: AuditEvent) {
        let name = chain.name();
        let action = event.action.clone();
        if let Err(err) = self.append(chain, actor, via, event).await {
            log_failure(&name, &action, &err);
        }
    }

    async fn append(
        &self,
        chain: AuditChain<'_>,
        actor: AuditActor,
        via: bool,
        event: AuditEvent,
    ) -> Result<AuditEntry, Error> {
        append(&self.inner.store, chain, actor, via, event).await
    }
}

fn log_failure(chain: &str, action: &str, err: &Error) {
    let cause = err.source.as_ref().map(|s| s.to_string()).unwrap_or_default();
    tracing::error!(%chain, %action, code = %err.code, message = %err.message, %cause,
        "audit entry not recorded");
}

async fn append(
    store: &DynStore,
    chain: AuditChain<'_>,
    actor: AuditActor,
    via: bool,
    event: AuditEvent,
) -> Result<AuditEntry, Error> {
    let mut details = event.details;
    scrub(&mut details);
    let entry = NewAuditEntry {
        actor: actor.label(),
        via_operator: via,
        action: event.action,
        target: scrub_str(&event.target).unwrap_or(event.target),
        outcome: event.outcome.as_str().to_owned(),
        details,
    };
    Ok(store.append_audit(chain, &entry).await?)
}

/// An entry the platform writes itself, in the tenant's chain or the platform's.
async fn write_system(store: &DynStore, tenant: Option<TenantId>, event: AuditEvent) {
    // The platform acting on its own: authentication has no context yet, so
    // the chain is named by what the store itself returned for the key.
    let op = OperatorCtx::local_cli();
    let ctx;
    let chain = match tenant {
        Some(t) => {
            ctx = op.act_for(t);
            AuditChain::Tenant(&ctx)
        }
        None => AuditChain::Platform(&op),
    };
    let name = chain.name();
    let action = event.action.clone();
    if let Err(err) = append(store, chain, AuditActor::System, false, event).await {
        log_failure(&name, &action, &err);
    }
}

async fn write_summary(store: &DynStore, s: Summary) {
    let mut details = json!({
        "reason": s.reason.as_str(),
        "count": s.count,
        "coalesced": true,
        "window_secs": s.window.as_secs(),
        "since": s.since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    });
    if let Some(id) = s.key_id {
        details["key_id"] = json!(id.to_string());
    }
    if !s.prefixes.is_empty() {
        details["prefixes"] = json!(s.prefixes);
    }
    let event =
        AuditEvent::new(action::AUTH_FAILED, s.target.clone()).outcome(Outcome::Denied).details(details);
    write_system(store, s.tenant, event).await;
}

async fn flush(inner: &Inner, now: tokio::time::Instant) {
    let due = inner.failures.lock().unwrap_or_else(|p| p.into_inner()).due(now);
    for summary in due {
        write_summary(&inner.store, summary).await;
    }
}

/// Writes closed windows' counts until the service is dropped.
async fn sweep(inner: Weak<Inner>, window: Duration) {
    let period = (window / 4).clamp(Duration::from_millis(50), Duration::from_secs(15));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        flush(&inner, tokio::time::Instant::now()).await;
    }
}

/// Names under which a value is never written, whatever the caller passed.
const SECRET_NAMES: [&str; 9] = [
    "secret",
    "password",
    "passphrase",
    "api_key",
    "apikey",
    "authorization",
    "access_token",
    "refresh_token",
    "private_key",
];

const REDACTED: &str = "[redacted]";

/// Replaces values under secret-like names, and full Bulkhead keys
/// anywhere, by a redaction mark.
fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let name = k.to_ascii_lowercase();
                if SECRET_NAMES.iter().any(|s| name == *s || name.ends_with(&format!("_{s}"))) {
                    *v = Value::String(REDACTED.into());
                } else {
                    scrub(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::String(s) => {
            if let Some(clean) = scrub_str(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// A string holding a full Bulkhead key keeps only the key's visible
/// prefix; `None` when there was nothing to scrub.
fn scrub_str(s: &str) -> Option<String> {
    let key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut rest = s;
    while let Some(start) = rest.find("bh_") {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail.find(|c: char| !key_char(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        match bulkhead_core::keys::parse(word) {
            Ok(parsed) => {
                out.push_str(parsed.prefix);
                out.push('_');
                out.push_str(REDACTED);
                changed = true;
            }
            Err(_) => out.push_str(word),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests;
