//! Agents, threads, messages and the run queue on PostgreSQL, under
//! row-level security: tenant work runs in `tenant_tx`, the scheduler's two
//! views across tenants in `platform_tx`. Queries still bind the tenant.
//!
//! Concurrency: a tenant's queue admissions (and agent deletions, which must
//! not race a new run) serialize on a transaction-scoped advisory lock keyed
//! by the tenant — a row lock on `tenants` is not available, as its policy
//! lets tenants read but not lock their row. Claims take the oldest queued
//! run with `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait for or
//! share a run; recovery skips rows a worker is renewing at that moment and
//! picks them up next round.

use async_trait::async_trait;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{AgentId, MessageId, OperatorCtx, RunId, TenantCtx, TenantId, ThreadId};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PgStore, decode};
use crate::agents::*;
use crate::error::classify;
use crate::model::validate_metadata;
use crate::sqlite::now;
use crate::usage::{from_micros, to_micros};
use crate::{Result, StoreError};

/// First key of the per-tenant run-queue advisory lock (`BHRQ`); the second
/// is `hashtext(tenant_id)`. A hash collision only makes two tenants wait
/// for each other briefly.
const RUN_QUEUE_LOCK: i32 = 0x4248_5251;

/// An agent with the spec of its current version.
const AGENT_SELECT: &str = "SELECT a.id, a.name, a.description, a.version, v.spec, a.created_at, a.updated_at
     FROM agents a JOIN agent_versions v ON v.agent_id = a.id AND v.version = a.version";
const VERSION_COLS: &str = "agent_id, version, spec, created_at";
const THREAD_COLS: &str = "id, metadata, summary, summary_upto, created_at";
const MESSAGE_COLS: &str = "id, thread_id, role, content, data, run_id, created_at";
const RUN_COLS: &str = "id, tenant_id, thread_id, agent_id, agent_version, status, input, output, error, \
                        cancel_requested, attempts, worker, lease_until, created_at, started_at, finished_at";
const STEP_COLS: &str = "run_id, seq, kind, data, created_at";

fn opt_micros(row: &PgRow, col: &str) -> Result<Option<OffsetDateTime>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(from_micros))
}

fn agent_from_row(row: &PgRow) -> Result<Agent> {
    Ok(Agent {
        id: AgentId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        version: row.try_get("version")?,
        spec: row.try_get("spec")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

fn version_from_row(row: &PgRow) -> Result<AgentVersion> {
    Ok(AgentVersion {
        agent_id: AgentId::from_uuid(row.try_get("agent_id")?),
        version: row.try_get("version")?,
        spec: row.try_get("spec")?,
        created_at: from_micros(row.try_get("created_at")?),
    })
}

fn thread_from_row(row: &PgRow) -> Result<Thread> {
    Ok(Thread {
        id: ThreadId::from_uuid(row.try_get("id")?),
        metadata: row.try_get("metadata")?,
        summary: row.try_get("summary")?,
        summary_upto: row.try_get::<Option<Uuid>, _>("summary_upto")?.map(MessageId::from_uuid),
        created_at: from_micros(row.try_get("created_at")?),
    })
}

fn message_from_row(row: &PgRow) -> Result<StoredMessage> {
    Ok(StoredMessage {
        id: MessageId::from_uuid(row.try_get("id")?),
        thread_id: ThreadId::from_uuid(row.try_get("thread_id")?),
        role: row.try_get("role")?,
        content: row.try_get("content")?,
        data: row.try_get("data")?,
        run_id: row.try_get::<Option<Uuid>, _>("run_id")?.map(RunId::from_uuid),
        created_at: from_micros(row.try_get("created_at")?),
    })
}

fn run_from_row(row: &PgRow) -> Result<Run> {
    Ok(Run {
        id: RunId::from_uuid(row.try_get("id")?),
        tenant_id: TenantId::from_uuid(row.try_get("tenant_id")?),
        thread_id: ThreadId::from_uuid(row.try_get("thread_id")?),
        agent_id: AgentId::from_uuid(row.try_get("agent_id")?),
        agent_version: row.try_get("agent_version")?,
        status: decode(row.try_get::<&str, _>("status")?)?,
        input: row.try_get("input")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        cancel_requested: row.try_get("cancel_requested")?,
        attempts: row.try_get("attempts")?,
        worker: row.try_get("worker")?,
        lease_until: opt_micros(row, "lease_until")?,
        created_at: from_micros(row.try_get("created_at")?),
        started_at: opt_micros(row, "started_at")?,
        finished_at: opt_micros(row, "finished_at")?,
    })
}

fn step_from_row(row: &PgRow) -> Result<RunStep> {
    Ok(RunStep {
        seq: row.try_get("seq")?,
        run_id: RunId::from_uuid(row.try_get("run_id")?),
        kind: row.try_get("kind")?,
        data: row.try_get("data")?,
        created_at: from_micros(row.try_get("created_at")?),
    })
}

/// Serializes the tenant's queue admissions until the transaction ends.
async fn lock_queue(tx: &mut Transaction<'_, Postgres>, ctx: &TenantCtx) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(RUN_QUEUE_LOCK)
        .bind(ctx.tenant_id().to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn fetch_agent(tx: &mut Transaction<'_, Postgres>, ctx: &TenantCtx, id: AgentId) -> Result<Agent> {
    let row = sqlx::query(AssertSqlSafe(format!("{AGENT_SELECT} WHERE a.tenant_id = $1 AND a.id = $2")))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound("agent"))?;
    agent_from_row(&row)
}

/// `NotFound("thread")` unless the tenant has this thread. Lists call it
/// when they come back empty, so an unknown thread is not an empty one.
async fn ensure_thread(tx: &mut Transaction<'_, Postgres>, ctx: &TenantCtx, thread: ThreadId) -> Result<()> {
    sqlx::query("SELECT 1 FROM threads WHERE tenant_id = $1 AND id = $2")
        .bind(ctx.tenant_id().as_uuid())
        .bind(thread.as_uuid())
        .fetch_optional(&mut **tx)
        .await?
        .map(|_| ())
        .ok_or(StoreError::NotFound("thread"))
}

#[async_trait]
impl AgentStore for PgStore {
    async fn create_agent(
        &self,
        ctx: &TenantCtx,
        name: &str,
        description: &str,
        spec: &Value,
    ) -> Result<Agent> {
        validate_agent_name(name)?;
        validate_description(description)?;
        validate_document("spec", spec)?;
        let id = AgentId::new();
        let at = now();
        let mut tx = self.tenant_tx(ctx).await?;
        sqlx::query(
            "INSERT INTO agents (id, tenant_id, name, description, version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 1, $5, $5)",
        )
        .bind(id.as_uuid())
        .bind(ctx.tenant_id().as_uuid())
        .bind(name)
        .bind(description)
        .bind(to_micros(at))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, || format!("an agent named {name:?} already exists"), "tenant"))?;
        sqlx::query(
            "INSERT INTO agent_versions (agent_id, version, tenant_id, spec, created_at) VALUES ($1, 1, $2, $3, $4)",
        )
        .bind(id.as_uuid())
        .bind(ctx.tenant_id().as_uuid())
        .bind(spec)
        .bind(to_micros(at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Agent {
            id,
            name: name.to_owned(),
            description: description.to_owned(),
            version: 1,
            spec: spec.clone(),
            created_at: at,
            updated_at: at,
        })
    }

    async fn list_agents(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<Agent>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{AGENT_SELECT} WHERE a.tenant_id = $1 AND a.id > $2 ORDER BY a.id LIMIT $3"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let items = rows.iter().map(agent_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_agent(&self, ctx: &TenantCtx, id: AgentId) -> Result<Agent> {
        let mut tx = self.tenant_tx(ctx).await?;
        let agent = fetch_agent(&mut tx, ctx, id).await?;
        tx.commit().await?;
        Ok(agent)
    }

    async fn update_agent(&self, ctx: &TenantCtx, id: AgentId, patch: AgentPatch) -> Result<Agent> {
        patch.validate()?;
        let at = to_micros(now());
        let mut tx = self.tenant_tx(ctx).await?;
        // Locks the agent: concurrent spec changes get consecutive versions.
        let current: Option<(i32, Value)> = sqlx::query_as(
            "SELECT a.version, v.spec FROM agents a
             JOIN agent_versions v ON v.agent_id = a.id AND v.version = a.version
             WHERE a.tenant_id = $1 AND a.id = $2 FOR UPDATE OF a",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let (mut version, current_spec) = current.ok_or(StoreError::NotFound("agent"))?;
        // A spec equal to the current one is no change: retries and
        // name-only edits that resend the spec add no version.
        if let Some(spec) = &patch.spec
            && *spec != current_spec
        {
            version += 1;
            sqlx::query(
                "INSERT INTO agent_versions (agent_id, version, tenant_id, spec, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id.as_uuid())
            .bind(version)
            .bind(ctx.tenant_id().as_uuid())
            .bind(spec)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE agents SET name = coalesce($1, name), description = coalesce($2, description),
                 version = $3, updated_at = $4
             WHERE tenant_id = $5 AND id = $6",
        )
        .bind(patch.name.as_deref())
        .bind(patch.description.as_deref())
        .bind(version)
        .bind(at)
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, || format!("an agent named {:?} already exists", patch.name), "agent"))?;
        let agent = fetch_agent(&mut tx, ctx, id).await?;
        tx.commit().await?;
        Ok(agent)
    }

    async fn delete_agent(&self, ctx: &TenantCtx, id: AgentId) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        // The queue lock: no run of this agent is queued between the check
        // and the delete.
        lock_queue(&mut tx, ctx).await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE tenant_id = $1 AND agent_id = $2 AND status IN ('queued', 'running')",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        if active > 0 {
            return Err(StoreError::Conflict(format!(
                "the agent has {active} queued or running runs: cancel them, or wait for them to finish"
            )));
        }
        let done = sqlx::query("DELETE FROM agents WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id().as_uuid())
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("agent"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_agent_versions(&self, ctx: &TenantCtx, id: AgentId) -> Result<Vec<AgentVersion>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLS} FROM agent_versions WHERE tenant_id = $1 AND agent_id = $2 ORDER BY version"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        // Every agent has its first version: none means no such agent.
        if rows.is_empty() {
            return Err(StoreError::NotFound("agent"));
        }
        rows.iter().map(version_from_row).collect()
    }

    async fn get_agent_version(&self, ctx: &TenantCtx, id: AgentId, version: i32) -> Result<AgentVersion> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLS} FROM agent_versions WHERE tenant_id = $1 AND agent_id = $2 AND version = $3"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("agent version"))?;
        tx.commit().await?;
        version_from_row(&row)
    }

    async fn create_thread(&self, ctx: &TenantCtx, metadata: &Value) -> Result<Thread> {
        validate_metadata(metadata)?;
        let id = ThreadId::new();
        let at = now();
        let mut tx = self.tenant_tx(ctx).await?;
        sqlx::query("INSERT INTO threads (id, tenant_id, metadata, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id.as_uuid())
            .bind(ctx.tenant_id().as_uuid())
            .bind(metadata)
            .bind(to_micros(at))
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, String::new, "tenant"))?;
        tx.commit().await?;
        Ok(Thread { id, metadata: metadata.clone(), summary: None, summary_upto: None, created_at: at })
    }

    async fn get_thread(&self, ctx: &TenantCtx, id: ThreadId) -> Result<Thread> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {THREAD_COLS} FROM threads WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("thread"))?;
        tx.commit().await?;
        thread_from_row(&row)
    }

    async fn list_threads(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<Thread>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {THREAD_COLS} FROM threads WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let items = rows.iter().map(thread_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn delete_thread(&self, ctx: &TenantCtx, id: ThreadId) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        // Messages, runs and (through runs) steps reference the thread ON DELETE CASCADE.
        let done = sqlx::query("DELETE FROM threads WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id().as_uuid())
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("thread"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn add_message(
        &self,
        ctx: &TenantCtx,
        thread: ThreadId,
        role: &str,
        content: &str,
        data: &Value,
        run: Option<RunId>,
    ) -> Result<StoredMessage> {
        validate_role(role)?;
        validate_content("content", content)?;
        validate_document("data", data)?;
        let mut tx = self.tenant_tx(ctx).await?;
        if let Some(run) = run {
            // The run must be one of this thread's (and so of this tenant's).
            let of_thread: Option<Uuid> =
                sqlx::query_scalar("SELECT thread_id FROM runs WHERE tenant_id = $1 AND id = $2")
                    .bind(ctx.tenant_id().as_uuid())
                    .bind(run.as_uuid())
                    .fetch_optional(&mut *tx)
                    .await?;
            if of_thread != Some(thread.as_uuid()) {
                return Err(StoreError::NotFound("run"));
            }
        }
        let id = MessageId::new();
        let at = now();
        // The (tenant, thread) foreign key refuses another tenant's thread.
        sqlx::query(
            "INSERT INTO messages (id, tenant_id, thread_id, role, content, data, run_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.as_uuid())
        .bind(ctx.tenant_id().as_uuid())
        .bind(thread.as_uuid())
        .bind(role)
        .bind(content)
        .bind(data)
        .bind(run.map(|r| r.as_uuid()))
        .bind(to_micros(at))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, String::new, "thread"))?;
        tx.commit().await?;
        Ok(StoredMessage {
            id,
            thread_id: thread,
            role: role.to_owned(),
            content: content.to_owned(),
            data: data.clone(),
            run_id: run,
            created_at: at,
        })
    }

    async fn list_messages(
        &self,
        ctx: &TenantCtx,
        thread: ThreadId,
        page: PageReq,
    ) -> Result<Page<StoredMessage>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE tenant_id = $1 AND thread_id = $2 AND id > $3
             ORDER BY id LIMIT $4"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(thread.as_uuid())
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            ensure_thread(&mut tx, ctx, thread).await?;
        }
        tx.commit().await?;
        let items = rows.iter().map(message_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn recent_messages(&self, ctx: &TenantCtx, thread: ThreadId, n: i64) -> Result<Vec<StoredMessage>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM (
                 SELECT {MESSAGE_COLS} FROM messages WHERE tenant_id = $1 AND thread_id = $2 ORDER BY id DESC LIMIT $3
             ) recent ORDER BY id"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(thread.as_uuid())
        .bind(n.max(0))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            ensure_thread(&mut tx, ctx, thread).await?;
        }
        tx.commit().await?;
        rows.iter().map(message_from_row).collect()
    }

    async fn set_thread_summary(
        &self,
        ctx: &TenantCtx,
        thread: ThreadId,
        summary: &str,
        upto: MessageId,
    ) -> Result<()> {
        validate_content("summary", summary)?;
        let mut tx = self.tenant_tx(ctx).await?;
        let done = sqlx::query(
            "UPDATE threads SET summary = $1, summary_upto = $2 WHERE tenant_id = $3 AND id = $4
               AND EXISTS (SELECT 1 FROM messages WHERE tenant_id = $3 AND thread_id = $4 AND id = $2)",
        )
        .bind(summary)
        .bind(upto.as_uuid())
        .bind(ctx.tenant_id().as_uuid())
        .bind(thread.as_uuid())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            ensure_thread(&mut tx, ctx, thread).await?;
            return Err(StoreError::NotFound("message"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_run(
        &self,
        ctx: &TenantCtx,
        thread: ThreadId,
        agent: AgentId,
        agent_version: i32,
        input: &Value,
        max_queued: i64,
    ) -> Result<Run> {
        validate_document("input", input)?;
        let tenant = ctx.tenant_id().as_uuid();
        let mut tx = self.tenant_tx(ctx).await?;
        // Count and insert under the tenant's queue lock: concurrent creates
        // (from any process) cannot both see room for one more. Each
        // statement in READ COMMITTED sees what committed before the lock
        // was granted.
        lock_queue(&mut tx, ctx).await?;
        let (has_thread, has_agent, has_version, queued): (bool, bool, bool, i64) = sqlx::query_as(
            "SELECT
                EXISTS (SELECT 1 FROM threads WHERE tenant_id = $1 AND id = $2),
                EXISTS (SELECT 1 FROM agents WHERE tenant_id = $1 AND id = $3),
                EXISTS (SELECT 1 FROM agent_versions WHERE tenant_id = $1 AND agent_id = $3 AND version = $4),
                (SELECT count(*) FROM runs WHERE tenant_id = $1 AND status = 'queued')",
        )
        .bind(tenant)
        .bind(thread.as_uuid())
        .bind(agent.as_uuid())
        .bind(agent_version)
        .fetch_one(&mut *tx)
        .await?;
        if !has_thread {
            return Err(StoreError::NotFound("thread"));
        }
        if !has_agent {
            return Err(StoreError::NotFound("agent"));
        }
        if !has_version {
            return Err(StoreError::NotFound("agent version"));
        }
        if queued >= max_queued {
            return Err(StoreError::Conflict("queue_full".into()));
        }
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO runs (id, tenant_id, thread_id, agent_id, agent_version, status, input, created_at)
             VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7) RETURNING {RUN_COLS}"
        )))
        .bind(RunId::new().as_uuid())
        .bind(tenant)
        .bind(thread.as_uuid())
        .bind(agent.as_uuid())
        .bind(agent_version)
        .bind(input)
        .bind(to_micros(now()))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        run_from_row(&row)
    }

    async fn get_run(&self, ctx: &TenantCtx, id: RunId) -> Result<Run> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLS} FROM runs WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("run"))?;
        tx.commit().await?;
        run_from_row(&row)
    }

    async fn list_runs(&self, ctx: &TenantCtx, thread: ThreadId, page: PageReq) -> Result<Page<Run>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLS} FROM runs WHERE tenant_id = $1 AND thread_id = $2 AND id > $3 ORDER BY id LIMIT $4"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(thread.as_uuid())
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            ensure_thread(&mut tx, ctx, thread).await?;
        }
        tx.commit().await?;
        let items = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn claim_run(
        &self,
        ctx: &TenantCtx,
        worker: &str,
        lease_until: OffsetDateTime,
    ) -> Result<Option<Run>> {
        validate_worker(worker)?;
        let mut tx = self.tenant_tx(ctx).await?;
        // SKIP LOCKED: a run another claimer is taking right now is passed
        // over, not waited for; the outer conditions re-check the row.
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET status = 'running', worker = $1, lease_until = $2, attempts = attempts + 1,
                 started_at = coalesce(started_at, $3)
             WHERE id = (SELECT id FROM runs WHERE tenant_id = $4 AND status = 'queued'
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
               AND tenant_id = $4 AND status = 'queued'
             RETURNING {RUN_COLS}"
        )))
        .bind(worker)
        .bind(to_micros(lease_until))
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn renew_run(
        &self,
        ctx: &TenantCtx,
        id: RunId,
        worker: &str,
        lease_until: OffsetDateTime,
    ) -> Result<Option<bool>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let cancel: Option<bool> = sqlx::query_scalar(
            "UPDATE runs SET lease_until = $1
             WHERE tenant_id = $2 AND id = $3 AND worker = $4 AND status = 'running'
             RETURNING cancel_requested",
        )
        .bind(to_micros(lease_until))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(cancel)
    }

    async fn finish_run(
        &self,
        ctx: &TenantCtx,
        id: RunId,
        worker: &str,
        status: RunStatus,
        output: &Value,
        error: Option<&str>,
    ) -> Result<bool> {
        if !status.is_terminal() {
            return Err(StoreError::Invalid(format!("a run cannot finish as {status}")));
        }
        validate_document("output", output)?;
        if let Some(error) = error {
            validate_content("error", error)?;
        }
        let mut tx = self.tenant_tx(ctx).await?;
        let done = sqlx::query(
            "UPDATE runs SET status = $1, output = $2, error = $3, finished_at = $4, lease_until = NULL
             WHERE tenant_id = $5 AND id = $6 AND worker = $7 AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(output)
        .bind(error)
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn cancel_run(&self, ctx: &TenantCtx, id: RunId) -> Result<Run> {
        let mut tx = self.tenant_tx(ctx).await?;
        // One statement: every CASE sees the status as it was.
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET
                 status = CASE status WHEN 'queued' THEN 'cancelled' ELSE status END,
                 error = CASE status WHEN 'queued' THEN 'cancelled before it started' ELSE error END,
                 finished_at = CASE status WHEN 'queued' THEN $1 ELSE finished_at END,
                 cancel_requested = CASE WHEN status IN ('queued', 'running') THEN true ELSE cancel_requested END
             WHERE tenant_id = $2 AND id = $3
             RETURNING {RUN_COLS}"
        )))
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("run"))?;
        tx.commit().await?;
        run_from_row(&row)
    }

    async fn add_step(&self, ctx: &TenantCtx, run: RunId, kind: &str, data: &Value) -> Result<RunStep> {
        validate_step_kind(kind)?;
        validate_document("data", data)?;
        let at = now();
        let mut tx = self.tenant_tx(ctx).await?;
        // Locking the run serializes its steps, so max(seq) + 1 is unique.
        // (NO KEY UPDATE: the steps' foreign-key checks are not blocked.)
        let exists = sqlx::query("SELECT 1 FROM runs WHERE tenant_id = $1 AND id = $2 FOR NO KEY UPDATE")
            .bind(ctx.tenant_id().as_uuid())
            .bind(run.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound("run"));
        }
        let seq: i32 = sqlx::query_scalar(
            "INSERT INTO run_steps (run_id, seq, tenant_id, kind, data, created_at)
             SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5 FROM run_steps WHERE run_id = $1
             RETURNING seq",
        )
        .bind(run.as_uuid())
        .bind(ctx.tenant_id().as_uuid())
        .bind(kind)
        .bind(data)
        .bind(to_micros(at))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RunStep { seq, run_id: run, kind: kind.to_owned(), data: data.clone(), created_at: at })
    }

    async fn list_steps(&self, ctx: &TenantCtx, run: RunId) -> Result<Vec<RunStep>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {STEP_COLS} FROM run_steps WHERE tenant_id = $1 AND run_id = $2 ORDER BY seq"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(run.as_uuid())
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            sqlx::query("SELECT 1 FROM runs WHERE tenant_id = $1 AND id = $2")
                .bind(ctx.tenant_id().as_uuid())
                .bind(run.as_uuid())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound("run"))?;
        }
        tx.commit().await?;
        rows.iter().map(step_from_row).collect()
    }

    async fn queue_overview(&self, _op: &OperatorCtx) -> Result<Vec<TenantQueue>> {
        let mut tx = self.platform_tx().await?;
        let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
            "SELECT tenant_id, count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'running')
             FROM runs WHERE status IN ('queued', 'running') GROUP BY tenant_id ORDER BY tenant_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(tenant, queued, running)| TenantQueue {
                tenant_id: TenantId::from_uuid(tenant),
                queued,
                running,
            })
            .collect())
    }

    async fn recover_expired_runs(
        &self,
        _op: &OperatorCtx,
        now: OffsetDateTime,
        max_attempts: i32,
    ) -> Result<Vec<Recovered>> {
        let mut tx = self.platform_tx().await?;
        // Requeue while attempts remain (worker and lease cleared); else fail.
        // A run whose cancel was requested is not started again. Rows locked
        // at this moment (a renewal in flight) are left for the next round,
        // and locking in one pass keeps concurrent recoverers from deadlocking.
        let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "UPDATE runs SET
                 status = CASE WHEN cancel_requested THEN 'cancelled'
                               WHEN attempts < $2 THEN 'queued' ELSE 'failed' END,
                 error = CASE WHEN cancel_requested THEN 'cancelled; its worker was lost'
                              WHEN attempts < $2 THEN error ELSE 'worker_lost' END,
                 worker = CASE WHEN NOT cancel_requested AND attempts < $2 THEN NULL ELSE worker END,
                 finished_at = CASE WHEN NOT cancel_requested AND attempts < $2 THEN NULL ELSE $1 END,
                 lease_until = NULL
             WHERE id IN (SELECT id FROM runs WHERE status = 'running' AND lease_until < $1
                          FOR UPDATE SKIP LOCKED)
               AND status = 'running' AND lease_until < $1
             RETURNING tenant_id, id, status",
        )
        .bind(to_micros(now))
        .bind(max_attempts)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = rows
            .into_iter()
            .map(|(tenant, run, status)| {
                Ok(Recovered {
                    tenant_id: TenantId::from_uuid(tenant),
                    run_id: RunId::from_uuid(run),
                    status: decode(&status)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|r| r.run_id);
        Ok(out)
    }
}
