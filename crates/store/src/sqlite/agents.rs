//! Agents, threads, messages and the run queue on SQLite. There is no
//! row-level security here: every query binds `ctx.tenant_id()`, and
//! children reference their parent by (tenant, id), so nothing can hang
//! under another tenant's row. Whatever reads and then writes opens
//! `BEGIN IMMEDIATE`, which takes SQLite's one write lock up front (across
//! processes sharing the file, too): the queue cap, claims, step numbers and
//! recovery are decided under it. Single-statement writes need no more: an
//! UPDATE takes the write lock before it reads.

use async_trait::async_trait;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{AgentId, MessageId, OperatorCtx, RunId, TenantCtx, ThreadId};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::{SqliteStore, after_cursor, decode, now};
use crate::agents::*;
use crate::error::classify;
use crate::model::validate_metadata;
use crate::usage::{from_micros, to_micros};
use crate::{Result, StoreError};

/// An agent with the spec of its current version.
const AGENT_SELECT: &str = "SELECT a.id, a.name, a.description, a.version, v.spec, a.created_at, a.updated_at
     FROM agents a JOIN agent_versions v ON v.agent_id = a.id AND v.version = a.version";
const VERSION_COLS: &str = "agent_id, version, spec, created_at";
const THREAD_COLS: &str = "id, metadata, summary, summary_upto, created_at";
const MESSAGE_COLS: &str = "id, thread_id, role, content, data, run_id, created_at";
const RUN_COLS: &str = "id, tenant_id, thread_id, agent_id, agent_version, status, input, output, error, \
                        cancel_requested, attempts, worker, lease_until, created_at, started_at, finished_at";
const STEP_COLS: &str = "run_id, seq, kind, data, created_at";

fn json(row: &SqliteRow, col: &str) -> Result<Value> {
    serde_json::from_str(row.try_get::<&str, _>(col)?)
        .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))
}

fn opt_micros(row: &SqliteRow, col: &str) -> Result<Option<OffsetDateTime>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(from_micros))
}

fn agent_from_row(row: &SqliteRow) -> Result<Agent> {
    Ok(Agent {
        id: decode(row.try_get::<&str, _>("id")?)?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        version: row.try_get("version")?,
        spec: json(row, "spec")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

fn version_from_row(row: &SqliteRow) -> Result<AgentVersion> {
    Ok(AgentVersion {
        agent_id: decode(row.try_get::<&str, _>("agent_id")?)?,
        version: row.try_get("version")?,
        spec: json(row, "spec")?,
        created_at: from_micros(row.try_get("created_at")?),
    })
}

fn thread_from_row(row: &SqliteRow) -> Result<Thread> {
    Ok(Thread {
        id: decode(row.try_get::<&str, _>("id")?)?,
        metadata: json(row, "metadata")?,
        summary: row.try_get("summary")?,
        summary_upto: row.try_get::<Option<&str>, _>("summary_upto")?.map(decode).transpose()?,
        created_at: from_micros(row.try_get("created_at")?),
    })
}

fn message_from_row(row: &SqliteRow) -> Result<StoredMessage> {
    Ok(StoredMessage {
        id: decode(row.try_get::<&str, _>("id")?)?,
        thread_id: decode(row.try_get::<&str, _>("thread_id")?)?,
        role: row.try_get("role")?,
        content: row.try_get("content")?,
        data: json(row, "data")?,
        run_id: row.try_get::<Option<&str>, _>("run_id")?.map(decode).transpose()?,
        created_at: from_micros(row.try_get("created_at")?),
    })
}

fn run_from_row(row: &SqliteRow) -> Result<Run> {
    Ok(Run {
        id: decode(row.try_get::<&str, _>("id")?)?,
        tenant_id: decode(row.try_get::<&str, _>("tenant_id")?)?,
        thread_id: decode(row.try_get::<&str, _>("thread_id")?)?,
        agent_id: decode(row.try_get::<&str, _>("agent_id")?)?,
        agent_version: row.try_get("agent_version")?,
        status: decode(row.try_get::<&str, _>("status")?)?,
        input: json(row, "input")?,
        output: json(row, "output")?,
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

fn step_from_row(row: &SqliteRow) -> Result<RunStep> {
    Ok(RunStep {
        seq: row.try_get("seq")?,
        run_id: decode(row.try_get::<&str, _>("run_id")?)?,
        kind: row.try_get("kind")?,
        data: json(row, "data")?,
        created_at: from_micros(row.try_get("created_at")?),
    })
}

impl SqliteStore {
    pub(super) async fn immediate(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// `NotFound("thread")` unless the tenant has this thread. Lists call it
    /// when they come back empty, so an unknown thread is not an empty one.
    async fn ensure_thread(&self, ctx: &TenantCtx, thread: ThreadId) -> Result<()> {
        sqlx::query("SELECT 1 FROM threads WHERE tenant_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(thread.to_string())
            .fetch_optional(&self.read)
            .await?
            .map(|_| ())
            .ok_or(StoreError::NotFound("thread"))
    }

    async fn ensure_run(&self, ctx: &TenantCtx, run: RunId) -> Result<()> {
        sqlx::query("SELECT 1 FROM runs WHERE tenant_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(run.to_string())
            .fetch_optional(&self.read)
            .await?
            .map(|_| ())
            .ok_or(StoreError::NotFound("run"))
    }
}

async fn fetch_agent(tx: &mut Transaction<'_, Sqlite>, ctx: &TenantCtx, id: AgentId) -> Result<Agent> {
    let row = sqlx::query(AssertSqlSafe(format!("{AGENT_SELECT} WHERE a.tenant_id = ? AND a.id = ?")))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound("agent"))?;
    agent_from_row(&row)
}

#[async_trait]
impl AgentStore for SqliteStore {
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
        let mut tx = self.immediate().await?;
        sqlx::query(
            "INSERT INTO agents (id, tenant_id, name, description, version, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)",
        )
        .bind(id.to_string())
        .bind(ctx.tenant_id().to_string())
        .bind(name)
        .bind(description)
        .bind(to_micros(at))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, || format!("an agent named {name:?} already exists"), "tenant"))?;
        sqlx::query(
            "INSERT INTO agent_versions (agent_id, version, tenant_id, spec, created_at) VALUES (?, 1, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(ctx.tenant_id().to_string())
        .bind(spec.to_string())
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
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{AGENT_SELECT} WHERE a.tenant_id = ? AND a.id > ? ORDER BY a.id LIMIT ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.read)
        .await?;
        let items = rows.iter().map(agent_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_agent(&self, ctx: &TenantCtx, id: AgentId) -> Result<Agent> {
        let row = sqlx::query(AssertSqlSafe(format!("{AGENT_SELECT} WHERE a.tenant_id = ? AND a.id = ?")))
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound("agent"))?;
        agent_from_row(&row)
    }

    async fn update_agent(&self, ctx: &TenantCtx, id: AgentId, patch: AgentPatch) -> Result<Agent> {
        patch.validate()?;
        let at = to_micros(now());
        let mut tx = self.immediate().await?;
        let current = fetch_agent(&mut tx, ctx, id).await?;
        let mut version = current.version;
        // A spec equal to the current one is no change: retries and
        // name-only edits that resend the spec add no version.
        if let Some(spec) = &patch.spec
            && *spec != current.spec
        {
            version += 1;
            sqlx::query(
                "INSERT INTO agent_versions (agent_id, version, tenant_id, spec, created_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(id.to_string())
            .bind(version)
            .bind(ctx.tenant_id().to_string())
            .bind(spec.to_string())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE agents SET name = coalesce(?, name), description = coalesce(?, description),
                 version = ?, updated_at = ?
             WHERE tenant_id = ? AND id = ?",
        )
        .bind(patch.name.as_deref())
        .bind(patch.description.as_deref())
        .bind(version)
        .bind(at)
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, || format!("an agent named {:?} already exists", patch.name), "agent"))?;
        let agent = fetch_agent(&mut tx, ctx, id).await?;
        tx.commit().await?;
        Ok(agent)
    }

    async fn delete_agent(&self, ctx: &TenantCtx, id: AgentId) -> Result<()> {
        // Under the write lock, so no run of this agent can be queued between
        // the check and the delete.
        let mut tx = self.immediate().await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE tenant_id = ? AND agent_id = ? AND status IN ('queued', 'running')",
        )
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        if active > 0 {
            return Err(StoreError::Conflict(format!(
                "the agent has {active} queued or running runs: cancel them, or wait for them to finish"
            )));
        }
        let done = sqlx::query("DELETE FROM agents WHERE tenant_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("agent"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_agent_versions(&self, ctx: &TenantCtx, id: AgentId) -> Result<Vec<AgentVersion>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLS} FROM agent_versions WHERE tenant_id = ? AND agent_id = ? ORDER BY version"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_all(&self.read)
        .await?;
        // Every agent has its first version: none means no such agent.
        if rows.is_empty() {
            return Err(StoreError::NotFound("agent"));
        }
        rows.iter().map(version_from_row).collect()
    }

    async fn get_agent_version(&self, ctx: &TenantCtx, id: AgentId, version: i32) -> Result<AgentVersion> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLS} FROM agent_versions WHERE tenant_id = ? AND agent_id = ? AND version = ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .bind(version)
        .fetch_optional(&self.read)
        .await?
        .ok_or(StoreError::NotFound("agent version"))?;
        version_from_row(&row)
    }

    async fn create_thread(&self, ctx: &TenantCtx, metadata: &Value) -> Result<Thread> {
        validate_metadata(metadata)?;
        let id = ThreadId::new();
        let at = now();
        sqlx::query("INSERT INTO threads (id, tenant_id, metadata, created_at) VALUES (?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(ctx.tenant_id().to_string())
            .bind(metadata.to_string())
            .bind(to_micros(at))
            .execute(&self.pool)
            .await
            .map_err(|e| classify(e, String::new, "tenant"))?;
        Ok(Thread { id, metadata: metadata.clone(), summary: None, summary_upto: None, created_at: at })
    }

    async fn get_thread(&self, ctx: &TenantCtx, id: ThreadId) -> Result<Thread> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {THREAD_COLS} FROM threads WHERE tenant_id = ? AND id = ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?
        .ok_or(StoreError::NotFound("thread"))?;
        thread_from_row(&row)
    }

    async fn list_threads(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<Thread>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {THREAD_COLS} FROM threads WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.read)
        .await?;
        let items = rows.iter().map(thread_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn delete_thread(&self, ctx: &TenantCtx, id: ThreadId) -> Result<()> {
        // Messages, runs and (through runs) steps reference the thread ON DELETE CASCADE.
        let done = sqlx::query("DELETE FROM threads WHERE tenant_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("thread"));
        }
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
        if let Some(run) = run {
            // The run must be one of this thread's (and so of this tenant's).
            let of_thread: Option<String> =
                sqlx::query_scalar("SELECT thread_id FROM runs WHERE tenant_id = ? AND id = ?")
                    .bind(ctx.tenant_id().to_string())
                    .bind(run.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
            if of_thread != Some(thread.to_string()) {
                return Err(StoreError::NotFound("run"));
            }
        }
        let id = MessageId::new();
        let at = now();
        // The (tenant, thread) foreign key refuses another tenant's thread.
        sqlx::query(
            "INSERT INTO messages (id, tenant_id, thread_id, role, content, data, run_id, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(ctx.tenant_id().to_string())
        .bind(thread.to_string())
        .bind(role)
        .bind(content)
        .bind(data.to_string())
        .bind(run.map(|r| r.to_string()))
        .bind(to_micros(at))
        .execute(&self.pool)
        .await
        .map_err(|e| classify(e, String::new, "thread"))?;
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
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE tenant_id = ? AND thread_id = ? AND id > ?
             ORDER BY id LIMIT ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(thread.to_string())
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.read)
        .await?;
        if rows.is_empty() {
            self.ensure_thread(ctx, thread).await?;
        }
        let items = rows.iter().map(message_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn recent_messages(&self, ctx: &TenantCtx, thread: ThreadId, n: i64) -> Result<Vec<StoredMessage>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM (
                 SELECT {MESSAGE_COLS} FROM messages WHERE tenant_id = ? AND thread_id = ? ORDER BY id DESC LIMIT ?
             ) ORDER BY id"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(thread.to_string())
        .bind(n.max(0))
        .fetch_all(&self.read)
        .await?;
        if rows.is_empty() {
            self.ensure_thread(ctx, thread).await?;
        }
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
        let done = sqlx::query(
            "UPDATE threads SET summary = ?1, summary_upto = ?2 WHERE tenant_id = ?3 AND id = ?4
               AND EXISTS (SELECT 1 FROM messages WHERE tenant_id = ?3 AND thread_id = ?4 AND id = ?2)",
        )
        .bind(summary)
        .bind(upto.to_string())
        .bind(ctx.tenant_id().to_string())
        .bind(thread.to_string())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            self.ensure_thread(ctx, thread).await?;
            return Err(StoreError::NotFound("message"));
        }
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
        let tenant = ctx.tenant_id().to_string();
        // The count and the insert happen under the write lock: concurrent
        // creates (from any process) cannot both see room for one more.
        let mut tx = self.immediate().await?;
        let (has_thread, has_agent, has_version, queued): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT
                EXISTS (SELECT 1 FROM threads WHERE tenant_id = ?1 AND id = ?2),
                EXISTS (SELECT 1 FROM agents WHERE tenant_id = ?1 AND id = ?3),
                EXISTS (SELECT 1 FROM agent_versions WHERE tenant_id = ?1 AND agent_id = ?3 AND version = ?4),
                (SELECT count(*) FROM runs WHERE tenant_id = ?1 AND status = 'queued')",
        )
        .bind(&tenant)
        .bind(thread.to_string())
        .bind(agent.to_string())
        .bind(agent_version)
        .fetch_one(&mut *tx)
        .await?;
        if has_thread == 0 {
            return Err(StoreError::NotFound("thread"));
        }
        if has_agent == 0 {
            return Err(StoreError::NotFound("agent"));
        }
        if has_version == 0 {
            return Err(StoreError::NotFound("agent version"));
        }
        if queued >= max_queued {
            return Err(StoreError::Conflict("queue_full".into()));
        }
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO runs (id, tenant_id, thread_id, agent_id, agent_version, status, input, created_at)
             VALUES (?, ?, ?, ?, ?, 'queued', ?, ?) RETURNING {RUN_COLS}"
        )))
        .bind(RunId::new().to_string())
        .bind(&tenant)
        .bind(thread.to_string())
        .bind(agent.to_string())
        .bind(agent_version)
        .bind(input.to_string())
        .bind(to_micros(now()))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        run_from_row(&row)
    }

    async fn get_run(&self, ctx: &TenantCtx, id: RunId) -> Result<Run> {
        let row =
            sqlx::query(AssertSqlSafe(format!("SELECT {RUN_COLS} FROM runs WHERE tenant_id = ? AND id = ?")))
                .bind(ctx.tenant_id().to_string())
                .bind(id.to_string())
                .fetch_optional(&self.read)
                .await?
                .ok_or(StoreError::NotFound("run"))?;
        run_from_row(&row)
    }

    async fn list_runs(&self, ctx: &TenantCtx, thread: ThreadId, page: PageReq) -> Result<Page<Run>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLS} FROM runs WHERE tenant_id = ? AND thread_id = ? AND id > ? ORDER BY id LIMIT ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(thread.to_string())
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.read)
        .await?;
        if rows.is_empty() {
            self.ensure_thread(ctx, thread).await?;
        }
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
        // The write lock makes pick-and-update one step: two claimers never
        // get the same run.
        let mut tx = self.immediate().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET status = 'running', worker = ?1, lease_until = ?2, attempts = attempts + 1,
                 started_at = coalesce(started_at, ?3)
             WHERE id = (SELECT id FROM runs WHERE tenant_id = ?4 AND status = 'queued' ORDER BY id LIMIT 1)
               AND tenant_id = ?4 AND status = 'queued'
             RETURNING {RUN_COLS}"
        )))
        .bind(worker)
        .bind(to_micros(lease_until))
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().to_string())
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
        Ok(sqlx::query_scalar(
            "UPDATE runs SET lease_until = ? WHERE tenant_id = ? AND id = ? AND worker = ? AND status = 'running'
             RETURNING cancel_requested",
        )
        .bind(to_micros(lease_until))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?)
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
        let done = sqlx::query(
            "UPDATE runs SET status = ?, output = ?, error = ?, finished_at = ?, lease_until = NULL
             WHERE tenant_id = ? AND id = ? AND worker = ? AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(output.to_string())
        .bind(error)
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn cancel_run(&self, ctx: &TenantCtx, id: RunId) -> Result<Run> {
        // One statement: every CASE sees the status as it was.
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET
                 status = CASE status WHEN 'queued' THEN 'cancelled' ELSE status END,
                 error = CASE status WHEN 'queued' THEN 'cancelled before it started' ELSE error END,
                 finished_at = CASE status WHEN 'queued' THEN ?1 ELSE finished_at END,
                 cancel_requested = CASE WHEN status IN ('queued', 'running') THEN 1 ELSE cancel_requested END
             WHERE tenant_id = ?2 AND id = ?3
             RETURNING {RUN_COLS}"
        )))
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("run"))?;
        run_from_row(&row)
    }

    async fn add_step(&self, ctx: &TenantCtx, run: RunId, kind: &str, data: &Value) -> Result<RunStep> {
        validate_step_kind(kind)?;
        validate_document("data", data)?;
        let at = now();
        let mut tx = self.immediate().await?;
        let exists = sqlx::query("SELECT 1 FROM runs WHERE tenant_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(run.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound("run"));
        }
        let seq: i32 = sqlx::query_scalar(
            "INSERT INTO run_steps (run_id, seq, tenant_id, kind, data, created_at)
             SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3, ?4, ?5 FROM run_steps WHERE run_id = ?1
             RETURNING seq",
        )
        .bind(run.to_string())
        .bind(ctx.tenant_id().to_string())
        .bind(kind)
        .bind(data.to_string())
        .bind(to_micros(at))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RunStep { seq, run_id: run, kind: kind.to_owned(), data: data.clone(), created_at: at })
    }

    async fn list_steps(&self, ctx: &TenantCtx, run: RunId) -> Result<Vec<RunStep>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {STEP_COLS} FROM run_steps WHERE tenant_id = ? AND run_id = ? ORDER BY seq"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(run.to_string())
        .fetch_all(&self.read)
        .await?;
        if rows.is_empty() {
            self.ensure_run(ctx, run).await?;
        }
        rows.iter().map(step_from_row).collect()
    }

    async fn queue_overview(&self, _op: &OperatorCtx) -> Result<Vec<TenantQueue>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT tenant_id, sum(status = 'queued'), sum(status = 'running') FROM runs
             WHERE status IN ('queued', 'running') GROUP BY tenant_id ORDER BY tenant_id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(tenant, queued, running)| Ok(TenantQueue { tenant_id: decode(&tenant)?, queued, running }))
            .collect()
    }

    async fn recover_expired_runs(
        &self,
        _op: &OperatorCtx,
        now: OffsetDateTime,
        max_attempts: i32,
    ) -> Result<Vec<Recovered>> {
        let mut tx = self.immediate().await?;
        // Requeue while attempts remain (worker and lease cleared); else fail.
        // A run whose cancel was requested is not started again.
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "UPDATE runs SET
                 status = CASE WHEN cancel_requested THEN 'cancelled'
                               WHEN attempts < ?2 THEN 'queued' ELSE 'failed' END,
                 error = CASE WHEN cancel_requested THEN 'cancelled; its worker was lost'
                              WHEN attempts < ?2 THEN error ELSE 'worker_lost' END,
                 worker = CASE WHEN NOT cancel_requested AND attempts < ?2 THEN NULL ELSE worker END,
                 finished_at = CASE WHEN NOT cancel_requested AND attempts < ?2 THEN NULL ELSE ?1 END,
                 lease_until = NULL
             WHERE status = 'running' AND lease_until < ?1
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
                Ok(Recovered { tenant_id: decode(&tenant)?, run_id: decode(&run)?, status: decode(&status)? })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|r| r.run_id);
        Ok(out)
    }
}
