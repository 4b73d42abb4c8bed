//! SQLite: tenant dump and restore by generic column reading (see
//! `crate::dump` for the format: blobs as lowercase hex), the move marker,
//! and opening a store on a file of its own (an isolated tenant's).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_core::{OperatorCtx, TenantId, Tier};
use serde_json::{Map, Number, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row, SqliteConnection, TypeInfo, ValueRef};

use super::{SqliteStore, TENANT_COLS, decode, now, tenant_from_row, ts};
use crate::dump::{
    CONTROL_TABLES, TableDump, TenantDataStore, TenantDump, TenantRoute, check_dump, hex_decode, ordered,
};
use crate::error::classify;
use crate::{Result, StoreError};

/// Sequence columns an import renumbers when their values are taken.
const SEQUENCES: &[(&str, &str)] = &[("usage_events", "seq"), ("kb_chunks", "id")];

struct Column {
    name: String,
    /// Declared type, upper case (tables are STRICT: INTEGER, REAL, TEXT, BLOB, ANY).
    ty: String,
    /// Position in the primary key, 0 if not part of it.
    pk: i64,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in one file and migrates it:
    /// what an isolated tenant's database is.
    pub async fn open_file(path: &Path, max_connections: u32) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        super::MIGRATOR.run(&pool).await?;
        let read =
            SqlitePoolOptions::new().max_connections(max_connections.max(1)).connect_with(options).await?;
        Ok(Self { pool, read })
    }

    /// Closes both pools (before the file is removed).
    pub async fn close(&self) {
        self.read.close().await;
        self.pool.close().await;
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Tenant-owned tables (those with a `tenant_id` column), in dump order.
async fn tenant_tables(conn: &mut SqliteConnection) -> Result<Vec<String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) c
         WHERE m.type = 'table' AND c.name = 'tenant_id'",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(ordered(tables))
}

async fn columns(conn: &mut SqliteConnection, table: &str) -> Result<Vec<Column>> {
    let rows = sqlx::query("SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid")
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Column {
                name: r.try_get("name")?,
                ty: r.try_get::<String, _>("type")?.to_ascii_uppercase(),
                pk: r.try_get("pk")?,
            })
        })
        .collect()
}

fn read_value(row: &sqlx::sqlite::SqliteRow, i: usize, ty: &str) -> Result<Value> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let ty = if matches!(ty, "INTEGER" | "INT" | "REAL" | "TEXT" | "BLOB") {
        ty.to_owned()
    } else {
        raw.type_info().name().to_ascii_uppercase()
    };
    Ok(match ty.as_str() {
        "INTEGER" | "INT" => Value::from(row.try_get::<i64, _>(i)?),
        "REAL" => Number::from_f64(row.try_get::<f64, _>(i)?).map(Value::Number).unwrap_or(Value::Null),
        "BLOB" => Value::String(crate::audit::hex(&row.try_get::<Vec<u8>, _>(i)?)),
        _ => Value::String(row.try_get::<String, _>(i)?),
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

fn bind_value<'q>(q: Query<'q>, table: &str, col: &Column, v: &Value) -> Result<Query<'q>> {
    let bad =
        || StoreError::Invalid(format!("the dump's {table}.{} has a value of the wrong type", col.name));
    Ok(match (v, col.ty.as_str()) {
        (Value::Null, _) => q.bind(None::<String>),
        (Value::String(s), "BLOB") => q.bind(hex_decode(s)?),
        (Value::Bool(b), _) => q.bind(i64::from(*b)),
        (Value::Number(n), "REAL") => q.bind(n.as_f64().ok_or_else(bad)?),
        (Value::Number(n), _) => match n.as_i64() {
            Some(i) => q.bind(i),
            None => q.bind(n.as_f64().ok_or_else(bad)?),
        },
        (Value::String(s), _) => q.bind(s.clone()),
        (other, _) => q.bind(other.to_string()),
    })
}

#[async_trait]
impl TenantDataStore for SqliteStore {
    async fn export_tenant(&self, _op: &OperatorCtx, id: TenantId) -> Result<TenantDump> {
        // One read transaction: WAL gives it one snapshot from its first read.
        let mut tx = self.read.begin().await?;
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?")))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        let tenant = tenant_from_row(&row)?;
        let mut tables = Vec::new();
        for table in tenant_tables(&mut tx).await? {
            let cols = columns(&mut tx, &table).await?;
            let mut pk: Vec<&Column> = cols.iter().filter(|c| c.pk > 0).collect();
            pk.sort_by_key(|c| c.pk);
            let order = if pk.is_empty() {
                "rowid".to_owned()
            } else {
                pk.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", ")
            };
            let list = cols.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", ");
            let sql = format!("SELECT {list} FROM {} WHERE tenant_id = ? ORDER BY {order}", quote(&table));
            let fetched = sqlx::query(AssertSqlSafe(sql)).bind(id.to_string()).fetch_all(&mut *tx).await?;
            let mut rows = Vec::with_capacity(fetched.len());
            for r in &fetched {
                let mut obj = Map::new();
                for (i, c) in cols.iter().enumerate() {
                    obj.insert(c.name.clone(), read_value(r, i, &c.ty)?);
                }
                rows.push(Value::Object(obj));
            }
            tables.push(TableDump { table, rows });
        }
        tx.commit().await?;
        Ok(TenantDump { tenant, tables })
    }

    async fn import_tenant(&self, _op: &OperatorCtx, dump: &TenantDump) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let known = tenant_tables(&mut tx).await?;
        check_dump(dump, &known)?;
        let id = dump.tenant.id.to_string();
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = ?)")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            let t = &dump.tenant;
            sqlx::query(
                "INSERT INTO tenants (id, name, tier, status, metadata, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(&t.name)
            .bind(t.tier.as_str())
            .bind(t.status.as_str())
            .bind(t.metadata.to_string())
            .bind(ts(t.created_at))
            .bind(ts(t.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, || format!("a tenant named {:?} already exists", t.name), "tenant"))?;
        }
        for t in &dump.tables {
            let sql = format!("SELECT EXISTS (SELECT 1 FROM {} WHERE tenant_id = ?)", quote(&t.table));
            let taken: bool = sqlx::query_scalar(AssertSqlSafe(sql)).bind(&id).fetch_one(&mut *tx).await?;
            if taken {
                return Err(StoreError::Conflict(format!(
                    "tenant_not_empty: tenant {id} already has rows in {}; a dump restores into an empty tenant",
                    t.table
                )));
            }
        }
        for name in ordered(dump.tables.iter().map(|t| t.table.clone()).collect()) {
            let Some(t) = dump.tables.iter().find(|t| t.table == name) else { continue };
            if t.rows.is_empty() {
                continue;
            }
            let cols = columns(&mut tx, &t.table).await?;
            // A sequence column keeps its values when none is taken here.
            let mut skip: Option<&str> = None;
            if let Some((_, col)) = SEQUENCES.iter().find(|(table, _)| *table == t.table) {
                let values: Vec<i64> = t.rows.iter().filter_map(|r| r.get(*col)?.as_i64()).collect();
                if let (Some(lo), Some(hi)) = (values.iter().min(), values.iter().max()) {
                    let sql =
                        format!("SELECT EXISTS (SELECT 1 FROM {} WHERE {col} BETWEEN ? AND ?)", t.table);
                    let taken: bool =
                        sqlx::query_scalar(AssertSqlSafe(sql)).bind(lo).bind(hi).fetch_one(&mut *tx).await?;
                    if taken {
                        skip = Some(col);
                    }
                }
            }
            for row in &t.rows {
                let obj = row
                    .as_object()
                    .ok_or_else(|| StoreError::Invalid("a dump row is not an object".into()))?;
                if let Some(extra) = obj.keys().find(|k| !cols.iter().any(|c| &c.name == *k)) {
                    return Err(StoreError::Invalid(format!("{} has no column {extra:?}", t.table)));
                }
                let used: Vec<&Column> = cols
                    .iter()
                    .filter(|c| obj.contains_key(&c.name) && Some(c.name.as_str()) != skip)
                    .collect();
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    quote(&t.table),
                    used.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", "),
                    vec!["?"; used.len()].join(", ")
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for c in &used {
                    q = bind_value(q, &t.table, c, &obj[&c.name])?;
                }
                q.execute(&mut *tx).await.map_err(|e| {
                    classify(e, || format!("a row of {} is already here", t.table), "parent row")
                })?;
            }
        }
        // Chunk ids may have changed: in-memory indexes must reload.
        if known.iter().any(|t| t == "knowledge_bases") {
            sqlx::query("UPDATE knowledge_bases SET generation = generation + 1 WHERE tenant_id = ?")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn purge_tenant_data(&self, _op: &OperatorCtx, id: TenantId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let tables = tenant_tables(&mut tx).await?;
        // Children first (the cascades would do it too).
        for table in tables.iter().rev().filter(|t| !CONTROL_TABLES.contains(&t.as_str())) {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {} WHERE tenant_id = ?", quote(table))))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_route(&self, _op: &OperatorCtx, id: TenantId) -> Result<Option<TenantRoute>> {
        let row = sqlx::query("SELECT tier, moving_to FROM tenants WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TenantRoute {
            tier: decode::<Tier>(row.try_get::<&str, _>("tier")?)?,
            moving_to: row.try_get::<Option<&str>, _>("moving_to")?.map(decode::<Tier>).transpose()?,
        }))
    }

    async fn mark_moving(&self, _op: &OperatorCtx, id: TenantId, to: Option<Tier>) -> Result<()> {
        let done = match to {
            Some(to) => sqlx::query("UPDATE tenants SET moving_to = ? WHERE id = ? AND moving_to IS NULL")
                .bind(to.as_str())
                .bind(id.to_string())
                .execute(&self.pool)
                .await?
                .rows_affected(),
            None => sqlx::query("UPDATE tenants SET moving_to = NULL WHERE id = ?")
                .bind(id.to_string())
                .execute(&self.pool)
                .await?
                .rows_affected(),
        };
        if done == 0 {
            self.fetch_tenant(id).await?;
            return Err(StoreError::Conflict("a move of this tenant is already under way".into()));
        }
        Ok(())
    }

    async fn finish_move(&self, _op: &OperatorCtx, id: TenantId, tier: Tier) -> Result<()> {
        let done = sqlx::query("UPDATE tenants SET tier = ?, moving_to = NULL, updated_at = ? WHERE id = ?")
            .bind(tier.as_str())
            .bind(ts(now()))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("tenant"));
        }
        Ok(())
    }
}
