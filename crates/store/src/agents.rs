//! Agents, threads, messages, runs and their steps: the records of the agent
//! part, and the durable run queue. The shapes of agent specs and step data
//! belong to `bulkhead-agents`; here they are JSON documents, checked only
//! to be objects of bounded size. What is written is validated here, before
//! either backend touches it.
//!
//! Run states: `queued` → `running` → `completed` | `failed` | `cancelled`
//! | `expired`. A worker claims a queued run with a lease it renews; a run
//! whose lease lapsed (its worker died) is requeued by
//! [`AgentStore::recover_expired_runs`] — or failed with the reason
//! `worker_lost` once it has used up its attempts — never left running.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{AgentId, Error, MessageId, OperatorCtx, RunId, TenantCtx, TenantId, ThreadId};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{Result, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    pub description: String,
    /// The current version; every change of `spec` adds one.
    pub version: i32,
    pub spec: Value,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentVersion {
    pub agent_id: AgentId,
    pub version: i32,
    pub spec: Value,
    pub created_at: OffsetDateTime,
}

/// A partial update; `spec: Some(..)` creates a new version.
#[derive(Debug, Clone, Default)]
pub struct AgentPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub spec: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Thread {
    pub id: ThreadId,
    pub metadata: Value,
    /// Summary of the messages up to and including `summary_upto` (the
    /// summarization memory strategy).
    pub summary: Option<String>,
    pub summary_upto: Option<MessageId>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub thread_id: ThreadId,
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
    /// Tool calls of an assistant message, the tool call id of a tool result, …
    pub data: Value,
    /// The run that produced it, for assistant and tool messages.
    pub run_id: Option<RunId>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Expired => "expired",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "expired" => RunStatus::Expired,
            other => return Err(Error::invalid(format!("unknown run status `{other}`"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: RunId,
    pub tenant_id: TenantId,
    pub thread_id: ThreadId,
    pub agent_id: AgentId,
    /// The agent version the run uses (recorded at creation).
    pub agent_version: i32,
    pub status: RunStatus,
    /// Per-run options: template variables, overrides.
    pub input: Value,
    /// The final answer, usage totals, … once finished.
    pub output: Value,
    /// Why a run failed, was cancelled or expired.
    pub error: Option<String>,
    pub cancel_requested: bool,
    /// Times the run has been claimed by a worker.
    pub attempts: i32,
    pub worker: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunStep {
    /// 1, 2, 3… within the run.
    pub seq: i32,
    pub run_id: RunId,
    /// `model_call` or `tool_call`.
    pub kind: String,
    /// What happened: model and tokens, or tool, arguments digest and result.
    pub data: Value,
    pub created_at: OffsetDateTime,
}

/// A tenant's share of the queue, for the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantQueue {
    pub tenant_id: TenantId,
    pub queued: i64,
    pub running: i64,
}

/// What became of a run whose worker vanished.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub tenant_id: TenantId,
    pub run_id: RunId,
    /// `queued` again, or `failed` (attempts used up), or `cancelled` (a
    /// cancel was requested while it ran: it is not started again).
    pub status: RunStatus,
}

/// Largest message content or thread summary, in bytes.
pub const MAX_CONTENT_BYTES: usize = 1024 * 1024;
/// Largest JSON document (agent spec, message or step data, run input or
/// output), serialized.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Largest agent description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
/// The roles a message can have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];
/// The kinds of run steps.
pub const STEP_KINDS: [&str; 2] = ["model_call", "tool_call"];

/// Agent names are handles (in URLs, configuration, logs): 1–100 ASCII
/// letters, digits, `-`, `_` or `.`, starting with a letter or digit.
/// Case-sensitive.
pub fn validate_agent_name(name: &str) -> Result<()> {
    let ok = (1..=100).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid agent name {name:?}: use 1-100 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

pub fn validate_description(description: &str) -> Result<()> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(StoreError::Invalid(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(())
}

/// A JSON document the store keeps: an object of at most [`MAX_DOCUMENT_BYTES`].
pub fn validate_document(what: &str, doc: &Value) -> Result<()> {
    if !doc.is_object() {
        return Err(StoreError::Invalid(format!("{what} must be a JSON object")));
    }
    if doc.to_string().len() > MAX_DOCUMENT_BYTES {
        return Err(StoreError::Invalid(format!("{what} must be at most {MAX_DOCUMENT_BYTES} bytes")));
    }
    Ok(())
}

pub fn validate_role(role: &str) -> Result<()> {
    if ROLES.contains(&role) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("unknown role {role:?}; use system, user, assistant or tool")))
    }
}

/// Message content and thread summaries: at most [`MAX_CONTENT_BYTES`].
pub fn validate_content(what: &str, content: &str) -> Result<()> {
    if content.len() > MAX_CONTENT_BYTES {
        return Err(StoreError::Invalid(format!("{what} must be at most {MAX_CONTENT_BYTES} bytes")));
    }
    Ok(())
}

pub fn validate_step_kind(kind: &str) -> Result<()> {
    if STEP_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("unknown step kind {kind:?}; use model_call or tool_call")))
    }
}

/// Worker names identify a lease holder: 1–200 printable characters.
pub fn validate_worker(worker: &str) -> Result<()> {
    if worker.is_empty() || worker.len() > 200 || worker.chars().any(char::is_control) {
        return Err(StoreError::Invalid("worker name must be 1-200 printable characters".into()));
    }
    Ok(())
}

impl AgentPatch {
    pub fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            validate_agent_name(name)?;
        }
        if let Some(description) = &self.description {
            validate_description(description)?;
        }
        if let Some(spec) = &self.spec {
            validate_document("spec", spec)?;
        }
        Ok(())
    }
}

/// The agent part of the store. Everything takes the tenant's context but
/// the scheduler's views across tenants, which take the operator's.
#[async_trait]
pub trait AgentStore: Send + Sync {
    // Agents (names are unique per tenant).
    async fn create_agent(
        &self,
        ctx: &TenantCtx,
        name: &str,
        description: &str,
        spec: &Value,
    ) -> Result<Agent>;
    async fn list_agents(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<Agent>>;
    async fn get_agent(&self, ctx: &TenantCtx, id: AgentId) -> Result<Agent>;
    /// Applies the patch; a new `spec` becomes version `version + 1` and the
    /// old versions stay readable.
    async fn update_agent(&self, ctx: &TenantCtx, id: AgentId, patch: AgentPatch) -> Result<Agent>;
    /// Removes the agent and its versions. Its runs stay (they keep the
    /// agent's id as history), so an agent with queued or running runs is
    /// not deleted: `StoreError::Conflict`.
    async fn delete_agent(&self, ctx: &TenantCtx, id: AgentId) -> Result<()>;
    async fn list_agent_versions(&self, ctx: &TenantCtx, id: AgentId) -> Result<Vec<AgentVersion>>;
    async fn get_agent_version(&self, ctx: &TenantCtx, id: AgentId, version: i32) -> Result<AgentVersion>;

    // Threads and messages.
    async fn create_thread(&self, ctx: &TenantCtx, metadata: &Value) -> Result<Thread>;
    async fn get_thread(&self, ctx: &TenantCtx, id: ThreadId) -> Result<Thread>;
    async fn list_threads(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<Thread>>;
    /// Removes the thread, its messages, runs and steps.
    async fn delete_thread(&self, ctx: &TenantCtx, id: ThreadId) -> Result<()>;
    /// `run`, if given, must be a run of this thread.
    async fn add_message(
        &self,
        ctx: &TenantCtx,
        thread: ThreadId,
        role: &str,
        content: &str,
        data: &Value,
        run: Option<RunId>,
    ) -> Result<StoredMessage>;
    /// Messages in creation order.
    async fn list_messages(
        &self,
        ctx: &TenantCtx,
        thread: ThreadId,
        page: PageReq,
    ) -> Result<Page<StoredMessage>>;
    /// The last `n` messages, oldest first.
    async fn recent_messages(&self, ctx: &TenantCtx, thread: ThreadId, n: i64) -> Result<Vec<StoredMessage>>;
    async fn set_thread_summary(
        &self,
        ctx: &TenantCtx,
        thread: ThreadId,
        summary: &str,
        upto: MessageId,
    ) -> Result<()>;

    // Runs: the durable queue.
    /// Queues a run unless the tenant already has `max_queued` runs queued
    /// (then `StoreError::Conflict("queue_full")`), atomically.
    async fn create_run(
        &self,
        ctx: &TenantCtx,
        thread: ThreadId,
        agent: AgentId,
        agent_version: i32,
        input: &Value,
        max_queued: i64,
    ) -> Result<Run>;
    async fn get_run(&self, ctx: &TenantCtx, id: RunId) -> Result<Run>;
    async fn list_runs(&self, ctx: &TenantCtx, thread: ThreadId, page: PageReq) -> Result<Page<Run>>;
    /// Claims the tenant's oldest queued run for `worker` until
    /// `lease_until` (running, attempts + 1). Several processes may claim at
    /// once: each run goes to exactly one (`FOR UPDATE SKIP LOCKED` on
    /// PostgreSQL; SQLite's write lock).
    async fn claim_run(
        &self,
        ctx: &TenantCtx,
        worker: &str,
        lease_until: OffsetDateTime,
    ) -> Result<Option<Run>>;
    /// Extends the lease if `worker` still holds the running run, and tells
    /// whether a cancel was requested (`Some(true)`: stop). `None` when it
    /// no longer holds it (it was recovered, finished or deleted).
    async fn renew_run(
        &self,
        ctx: &TenantCtx,
        id: RunId,
        worker: &str,
        lease_until: OffsetDateTime,
    ) -> Result<Option<bool>>;
    /// Ends a run `worker` holds: status (a terminal one, else
    /// `StoreError::Invalid`), output, error; the lease is cleared, the
    /// worker kept as history. `false` if the worker no longer held it.
    async fn finish_run(
        &self,
        ctx: &TenantCtx,
        id: RunId,
        worker: &str,
        status: RunStatus,
        output: &Value,
        error: Option<&str>,
    ) -> Result<bool>;
    /// Asks a run to stop: a queued run is cancelled at once, a running one
    /// is flagged for its worker. Returns the run as it is now.
    async fn cancel_run(&self, ctx: &TenantCtx, id: RunId) -> Result<Run>;
    /// Appends a step numbered one past the run's last.
    async fn add_step(&self, ctx: &TenantCtx, run: RunId, kind: &str, data: &Value) -> Result<RunStep>;
    async fn list_steps(&self, ctx: &TenantCtx, run: RunId) -> Result<Vec<RunStep>>;

    // The scheduler's views across tenants.
    /// Tenants with queued or running runs, with their counts.
    async fn queue_overview(&self, op: &OperatorCtx) -> Result<Vec<TenantQueue>>;
    /// Runs whose lease lapsed before `now`: requeued while `attempts <
    /// max_attempts`, else failed with `worker_lost`; a run whose cancel was
    /// requested is cancelled instead of requeued.
    async fn recover_expired_runs(
        &self,
        op: &OperatorCtx,
        now: OffsetDateTime,
        max_attempts: i32,
    ) -> Result<Vec<Recovered>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names() {
        for ok in ["a", "support-bot", "Support_Bot.v2", "0x", &"a".repeat(100)] {
            assert!(validate_agent_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", ".a", "a b", "ä", "a/b", &"a".repeat(101)] {
            assert!(validate_agent_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_roles_and_kinds() {
        assert!(validate_document("spec", &serde_json::json!({"a": 1})).is_ok());
        for bad in [serde_json::json!([1]), serde_json::json!("s"), serde_json::json!(null)] {
            assert!(matches!(validate_document("spec", &bad), Err(StoreError::Invalid(_))));
        }
        let big = "x".repeat(MAX_DOCUMENT_BYTES);
        assert!(validate_document("data", &serde_json::json!({ "a": big })).is_err());
        for role in ROLES {
            assert!(validate_role(role).is_ok());
        }
        assert!(validate_role("System").is_err());
        assert!(validate_content("content", &"x".repeat(MAX_CONTENT_BYTES)).is_ok());
        assert!(validate_content("content", &"x".repeat(MAX_CONTENT_BYTES + 1)).is_err());
        assert!(validate_step_kind("model_call").is_ok());
        assert!(validate_step_kind("sleep").is_err());
        assert!(validate_worker("w-1").is_ok());
        assert!(validate_worker("").is_err());
        assert!(validate_worker("a\nb").is_err());
    }
}
