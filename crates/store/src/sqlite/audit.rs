//! The audit log on SQLite. Appends run in a `BEGIN IMMEDIATE` transaction
//! on the one writer connection: SQLite's write lock is taken before the
//! head is read, so appends to a chain — also from other processes sharing
//! the file, such as the console — are serialized and each sees the
//! previous one's hash. Every query binds the chain's key (the tenant id
//! from the context, or `platform`).

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};

use super::SqliteStore;
use crate::Result;
use crate::audit::{
    AuditChain, AuditEntry, AuditHead, AuditQuery, AuditStore, NewAuditEntry, PLATFORM_CHAIN, seal,
};
use crate::usage::{from_micros, to_micros};

/// A chain's tables, key column and key value.
struct Chain {
    entries: &'static str,
    head: &'static str,
    key_col: &'static str,
    key: String,
}

impl Chain {
    fn of(chain: &AuditChain<'_>) -> Self {
        match chain {
            AuditChain::Tenant(ctx) => Chain {
                entries: "audit_entries",
                head: "audit_heads",
                key_col: "tenant_id",
                key: ctx.tenant_id().to_string(),
            },
            AuditChain::Platform(_) => Chain {
                entries: "platform_audit_entries",
                head: "platform_audit_head",
                key_col: "chain",
                key: PLATFORM_CHAIN.to_owned(),
            },
        }
    }
}

const ENTRY_COLS: &str = "seq, at, actor, via_operator, action, target, outcome, details, prev_hash, hash";

fn entry_from_row(chain: String, row: &SqliteRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        chain,
        seq: row.try_get("seq")?,
        at: from_micros(row.try_get("at")?),
        actor: row.try_get("actor")?,
        via_operator: row.try_get("via_operator")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
        details: row.try_get("details")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, chain: AuditChain<'_>, entry: &NewAuditEntry) -> Result<AuditEntry> {
        let details = entry.validate()?;
        let Chain { entries, head, key_col, key } = Chain::of(&chain);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let prior: Option<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT last_seq, last_hash FROM {head} WHERE {key_col} = ?"
        )))
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
        let prior = prior.map(|(last_seq, last_hash)| AuditHead { last_seq, last_hash });
        let sealed = seal(key.clone(), prior.as_ref(), entry, details, super::now());
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {entries} ({key_col}, {ENTRY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )))
        .bind(&key)
        .bind(sealed.seq)
        .bind(to_micros(sealed.at))
        .bind(&sealed.actor)
        .bind(sealed.via_operator)
        .bind(&sealed.action)
        .bind(&sealed.target)
        .bind(&sealed.outcome)
        .bind(&sealed.details)
        .bind(&sealed.prev_hash)
        .bind(&sealed.hash)
        .execute(&mut *tx)
        .await
        .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {head} ({key_col}, last_seq, last_hash) VALUES (?, ?, ?)
             ON CONFLICT ({key_col}) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash"
        )))
        .bind(&key)
        .bind(sealed.seq)
        .bind(&sealed.hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(sealed)
    }

    async fn list_audit(&self, chain: AuditChain<'_>, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let Chain { entries, key_col, key, .. } = Chain::of(&chain);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENTRY_COLS} FROM {entries}
             WHERE {key_col} = ? AND seq > ?
               AND (?3 IS NULL OR substr(action, 1, length(?3)) = ?3)
               AND (?4 IS NULL OR at >= ?4)
             ORDER BY seq LIMIT ?5"
        )))
        .bind(&key)
        .bind(query.after)
        .bind(query.action_prefix.as_deref())
        .bind(query.since.map(to_micros))
        .bind(query.capped_limit())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| entry_from_row(key.clone(), r)).collect()
    }

    async fn audit_head(&self, chain: AuditChain<'_>) -> Result<Option<AuditHead>> {
        let Chain { head, key_col, key, .. } = Chain::of(&chain);
        let row: Option<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT last_seq, last_hash FROM {head} WHERE {key_col} = ?"
        )))
        .bind(&key)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|(last_seq, last_hash)| AuditHead { last_seq, last_hash }))
    }
}
