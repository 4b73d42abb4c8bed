//! The audit log on PostgreSQL. A tenant's chain is read and appended in a
//! tenant transaction (row-level security admits only its rows), the
//! platform chain in a platform transaction. Appends lock the chain's head
//! row `FOR UPDATE`, so concurrent appends to one chain — from any number of
//! replicas — queue up and each sees the previous one's hash; appends to
//! different chains do not wait for each other.

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use uuid::Uuid;

use super::PgStore;
use crate::Result;
use crate::audit::{
    AuditChain, AuditEntry, AuditHead, AuditQuery, AuditStore, NewAuditEntry, PLATFORM_CHAIN, seal,
};
use crate::usage::{from_micros, to_micros};

/// Where a chain lives: its tables and the value of its key column.
enum Chain {
    Tenant(Uuid),
    Platform,
}

impl Chain {
    fn of(chain: &AuditChain<'_>) -> Self {
        match chain {
            AuditChain::Tenant(ctx) => Chain::Tenant(ctx.tenant_id().as_uuid()),
            AuditChain::Platform(_) => Chain::Platform,
        }
    }

    fn entries(&self) -> &'static str {
        match self {
            Chain::Tenant(_) => "audit_entries",
            Chain::Platform => "platform_audit_entries",
        }
    }

    fn head(&self) -> &'static str {
        match self {
            Chain::Tenant(_) => "audit_heads",
            Chain::Platform => "platform_audit_head",
        }
    }

    fn key_col(&self) -> &'static str {
        match self {
            Chain::Tenant(_) => "tenant_id",
            Chain::Platform => "chain",
        }
    }

    /// The chain's name as hashed.
    fn name(&self) -> String {
        match self {
            Chain::Tenant(id) => id.hyphenated().to_string(),
            Chain::Platform => PLATFORM_CHAIN.to_owned(),
        }
    }

    fn bind<'q>(&self, q: Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments> {
        match self {
            Chain::Tenant(id) => q.bind(*id),
            Chain::Platform => q.bind(PLATFORM_CHAIN),
        }
    }
}

const ENTRY_COLS: &str = "seq, at, actor, via_operator, action, target, outcome, details, prev_hash, hash";

fn entry_from_row(chain: String, row: &PgRow) -> Result<AuditEntry> {
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

impl PgStore {
    async fn audit_tx(&self, chain: &AuditChain<'_>) -> Result<Transaction<'_, Postgres>> {
        match chain {
            AuditChain::Tenant(ctx) => self.tenant_tx(ctx).await,
            AuditChain::Platform(_) => self.platform_tx().await,
        }
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, chain: AuditChain<'_>, entry: &NewAuditEntry) -> Result<AuditEntry> {
        let details = entry.validate()?;
        let c = Chain::of(&chain);
        let (entries, head, key) = (c.entries(), c.head(), c.key_col());
        let mut tx = self.audit_tx(&chain).await?;
        // The head row exists from the first append on; creating it races
        // harmlessly (the loser's insert waits for the winner, then does
        // nothing). Locking it serializes this chain's appends.
        c.bind(sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {head} ({key}, last_seq, last_hash) VALUES ($1, 0, '') ON CONFLICT ({key}) DO NOTHING"
        ))))
        .execute(&mut *tx)
        .await
        .map_err(|e| crate::error::classify(e, String::new, "tenant"))?;
        let locked = c
            .bind(sqlx::query(AssertSqlSafe(format!(
                "SELECT last_seq, last_hash FROM {head} WHERE {key} = $1 FOR UPDATE"
            ))))
            .fetch_one(&mut *tx)
            .await?;
        let (last_seq, last_hash): (i64, String) = (locked.try_get(0)?, locked.try_get(1)?);
        let prior = (last_seq > 0).then_some(AuditHead { last_seq, last_hash });
        let sealed = seal(c.name(), prior.as_ref(), entry, details, crate::sqlite::now());
        c.bind(sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {entries} ({key}, {ENTRY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))))
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
        .await?;
        c.bind(sqlx::query(AssertSqlSafe(format!(
            "UPDATE {head} SET last_seq = $2, last_hash = $3 WHERE {key} = $1"
        ))))
        .bind(sealed.seq)
        .bind(&sealed.hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(sealed)
    }

    async fn list_audit(&self, chain: AuditChain<'_>, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let c = Chain::of(&chain);
        let (entries, key) = (c.entries(), c.key_col());
        let mut tx = self.audit_tx(&chain).await?;
        let rows = c
            .bind(sqlx::query(AssertSqlSafe(format!(
                "SELECT {ENTRY_COLS} FROM {entries}
                 WHERE {key} = $1 AND seq > $2
                   AND ($3::text IS NULL OR substr(action, 1, length($3::text)) = $3::text)
                   AND ($4::bigint IS NULL OR at >= $4::bigint)
                 ORDER BY seq LIMIT $5"
            ))))
            .bind(query.after)
            .bind(query.action_prefix.as_deref())
            .bind(query.since.map(to_micros))
            .bind(query.capped_limit())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let name = c.name();
        rows.iter().map(|r| entry_from_row(name.clone(), r)).collect()
    }

    async fn audit_head(&self, chain: AuditChain<'_>) -> Result<Option<AuditHead>> {
        let c = Chain::of(&chain);
        let (head, key) = (c.head(), c.key_col());
        let mut tx = self.audit_tx(&chain).await?;
        let row: Option<(i64, String)> = c
            .bind(sqlx::query(AssertSqlSafe(format!(
                "SELECT last_seq, last_hash FROM {head} WHERE {key} = $1"
            ))))
            .fetch_optional(&mut *tx)
            .await?
            .map(|r: PgRow| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?;
        tx.commit().await?;
        Ok(row.filter(|(seq, _)| *seq > 0).map(|(last_seq, last_hash)| AuditHead { last_seq, last_hash }))
    }
}
