//! A tenant's data as a portable document — dump, restore, checksums — and
//! the control-row state that tier moves need. Used by live moves between
//! tiers ([`crate::routed`]) and by moves to another deployment.
//!
//! A [`TenantDump`] holds the tenant's control row and, for every
//! tenant-owned table (every table with a `tenant_id` column), the
//! tenant's rows ordered by primary key, parents before children. Rows are
//! JSON objects of the table's columns as the backend stores them:
//! PostgreSQL's `to_jsonb` (uuid and timestamps as strings, `jsonb` as
//! JSON, `bytea` as `"\\x…"` hex, `vector` as its text form); SQLite's
//! declared column types (INTEGER and REAL as numbers, TEXT as strings —
//! JSON documents stay strings — and BLOB as lowercase hex without
//! prefix). So a dump restores into the same backend it came from.
//!
//! Left out, because they are derived and rebuilt on import: PostgreSQL's
//! generated `kb_chunks.tsv` (full-text vector), SQLite's `kb_chunks_fts`
//! index (filled by the insert trigger), and `sqlite_sequence`.
//!
//! Store-local values: `usage_events.seq` and `kb_chunks.id` come from the
//! store's own sequences, so an import keeps them when they are free in the
//! target and otherwise assigns fresh ones in the same order;
//! `knowledge_bases.generation` is a cache token that every import bumps,
//! so in-memory vector indexes keyed on chunk ids reload. Checksums leave
//! these three columns out (and keep the order they give), so the source
//! and the target of a move compare equal.
//!
//! Invariants: everything here is operator-only (`&OperatorCtx`); an import
//! goes into a tenant that has no rows in any table of the dump, in one
//! transaction.

use async_trait::async_trait;
use bulkhead_core::{OperatorCtx, TenantId, Tier};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::audit::canonical_json;
use crate::model::Tenant;
use crate::{Result, StoreError};

/// A tenant's data: its control row and its rows in every tenant-owned table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantDump {
    pub tenant: Tenant,
    /// Parents before children; tables without rows are listed too.
    pub tables: Vec<TableDump>,
}

/// One table's rows of a tenant, ordered by primary key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDump {
    pub table: String,
    pub rows: Vec<Value>,
}

/// Row count and SHA-256 over a table's rows of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSum {
    pub table: String,
    pub rows: u64,
    /// Lowercase hex SHA-256 over each row's canonical JSON (store-local
    /// columns left out) and a newline, in primary-key order.
    pub sha256: String,
}

/// Where a tenant's data lives, as its control row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantRoute {
    pub tier: Tier,
    /// Set while a move towards this tier is under way.
    pub moving_to: Option<Tier>,
}

/// What a live move did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveReport {
    pub tenant_id: TenantId,
    pub from: Tier,
    pub to: Tier,
    /// Per table: the rows and checksum found in the target, equal to the
    /// source's.
    pub tables: Vec<TableSum>,
    /// How long the tenant's calls were held (write gate), in ms.
    pub pause_ms: u64,
    /// The whole move, including the wait for other processes to see it.
    pub total_ms: u64,
    /// Whether the source's copy was removed (a failure there is logged,
    /// the move stands).
    pub source_purged: bool,
}

/// Tenant-owned tables in dependency order: parents before children.
/// Tables a backend has beyond these follow, by name.
pub const TABLE_ORDER: &[&str] = &[
    "api_keys",
    "usage_events",
    "usage_daily",
    "budgets",
    "budget_reservations",
    "budget_alerts",
    "tenant_settings",
    "tenant_data_keys",
    "secrets",
    "agents",
    "agent_versions",
    "threads",
    "messages",
    "runs",
    "run_steps",
    "knowledge_bases",
    "kb_documents",
    "kb_chunks",
    "audit_entries",
    "audit_heads",
    "tools",
    "mcp_servers",
    "tool_settings",
];

/// Tables that stay with the control plane when a tenant changes tier
/// (authentication reads keys before it knows the tenant).
pub const CONTROL_TABLES: &[&str] = &["api_keys"];

/// Columns whose values are the store's own (see the module doc).
const STORE_LOCAL: &[(&str, &str)] =
    &[("usage_events", "seq"), ("kb_chunks", "id"), ("knowledge_bases", "generation")];

/// Sorts tenant-owned table names into dump order.
pub(crate) fn ordered(mut tables: Vec<String>) -> Vec<String> {
    tables.sort_by_key(|t| (TABLE_ORDER.iter().position(|o| o == t).unwrap_or(usize::MAX), t.clone()));
    tables
}

/// The canonical text of a row for checksums.
fn canonical_row(table: &str, row: &Value) -> String {
    let mut row = row.clone();
    if let Value::Object(map) = &mut row {
        for (t, col) in STORE_LOCAL {
            if *t == table {
                map.remove(*col);
            }
        }
    }
    canonical_json(&row)
}

/// Checksums of a table's rows, in the order given.
pub fn table_sum(table: &str, rows: &[Value]) -> TableSum {
    let mut h = Sha256::new();
    for row in rows {
        h.update(canonical_row(table, row).as_bytes());
        h.update(b"\n");
    }
    TableSum { table: table.to_owned(), rows: rows.len() as u64, sha256: crate::audit::hex(&h.finalize()) }
}

/// Checksums of every table of a dump.
pub fn dump_sums(dump: &TenantDump) -> Vec<TableSum> {
    dump.tables.iter().map(|t| table_sum(&t.table, &t.rows)).collect()
}

pub(crate) fn hex_decode(s: &str) -> Result<Vec<u8>> {
    let bad = || StoreError::Invalid(format!("not a hex string: {:.40}", s));
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()).ok_or_else(bad))
        .collect()
}

/// Checks a dump names only tables this store has, each once, and that its
/// rows are objects of the dumped tenant.
pub(crate) fn check_dump(dump: &TenantDump, known: &[String]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let tenant = dump.tenant.id.to_string();
    for t in &dump.tables {
        if !known.contains(&t.table) || !seen.insert(t.table.as_str()) {
            return Err(StoreError::Invalid(format!(
                "the dump's table {:?} is not a tenant table of this store (or is listed twice)",
                t.table
            )));
        }
        for row in &t.rows {
            let owner = row.get("tenant_id").and_then(Value::as_str);
            if owner != Some(tenant.as_str()) {
                return Err(StoreError::Invalid(format!(
                    "a row of {} in the dump belongs to another tenant",
                    t.table
                )));
            }
        }
    }
    Ok(())
}

/// Dump, restore and checksums of one tenant, and the control-row state of
/// tier moves. Operator-only.
#[async_trait]
pub trait TenantDataStore: Send + Sync {
    /// Every tenant-owned table's rows of the tenant, parents first, read
    /// in one snapshot.
    async fn export_tenant(&self, op: &OperatorCtx, id: TenantId) -> Result<TenantDump>;
    /// Restores a dump in one transaction. Inserts the tenant's control row
    /// if this store has none; refuses (`Conflict`, "tenant_not_empty") if
    /// the tenant has rows in any table of the dump.
    async fn import_tenant(&self, op: &OperatorCtx, dump: &TenantDump) -> Result<()>;
    /// Row counts and checksums per tenant-owned table, in dump order.
    async fn tenant_checksums(&self, op: &OperatorCtx, id: TenantId) -> Result<Vec<TableSum>> {
        Ok(dump_sums(&self.export_tenant(op, id).await?))
    }
    /// Removes the tenant's rows from every tenant-owned table but the
    /// control plane's (its row in `tenants`, and `api_keys`).
    async fn purge_tenant_data(&self, op: &OperatorCtx, id: TenantId) -> Result<()>;
    /// The tenant's tier and move marker; `None` if there is no such tenant.
    async fn tenant_route(&self, op: &OperatorCtx, id: TenantId) -> Result<Option<TenantRoute>>;
    /// Sets the move marker (`Conflict` if one is set already), or with
    /// `None` clears it.
    async fn mark_moving(&self, op: &OperatorCtx, id: TenantId, to: Option<Tier>) -> Result<()>;
    /// Sets the tier and clears the move marker, atomically.
    async fn finish_move(&self, op: &OperatorCtx, id: TenantId, tier: Tier) -> Result<()>;
    /// Moves the tenant's data to another tier, live. Only a store that
    /// routes by tier can; the backends themselves refuse.
    async fn move_tenant(&self, _op: &OperatorCtx, _id: TenantId, _to: Tier) -> Result<MoveReport> {
        Err(StoreError::Invalid("this store does not route tenants by tier".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_puts_parents_first_and_unknown_tables_last() {
        let got = ordered(vec!["zeta".into(), "messages".into(), "threads".into(), "alpha".into()]);
        assert_eq!(got, ["threads", "messages", "alpha", "zeta"]);
    }

    #[test]
    fn sums_ignore_store_local_columns_and_key_order() {
        let a = [json!({"seq": 1, "tenant_id": "t", "id": "e1", "cost": 5})];
        let b = [json!({"cost": 5, "id": "e1", "tenant_id": "t", "seq": 900})];
        assert_eq!(table_sum("usage_events", &a), table_sum("usage_events", &b));
        // Elsewhere every column counts.
        assert_ne!(table_sum("messages", &a), table_sum("messages", &b));
        let changed = [json!({"seq": 1, "tenant_id": "t", "id": "e1", "cost": 6})];
        assert_ne!(table_sum("usage_events", &a), table_sum("usage_events", &changed));
        assert_eq!(table_sum("x", &[]).rows, 0);
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex_decode(&crate::audit::hex(&[0, 1, 254, 255])).unwrap(), [0, 1, 254, 255]);
        assert!(hex_decode("abc").is_err());
        assert!(hex_decode("zz").is_err());
    }
}
