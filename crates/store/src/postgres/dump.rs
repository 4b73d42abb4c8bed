//! PostgreSQL: tenant dump (`to_jsonb` per row) and restore
//! (`json_populate_recordset` per table, in batches), in platform scope with
//! row-level security on, and the move marker. Steps the application role
//! may not take itself — removing audit entries, dropping the knowledge
//! partition, moving sequences — go through the SECURITY DEFINER functions
//! of migration 0020.

use async_trait::async_trait;
use bulkhead_core::{OperatorCtx, TenantId, Tier};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::{PgStore, TENANT_COLS, decode, tenant_from_row};
use crate::dump::{TableDump, TenantDataStore, TenantDump, TenantRoute, check_dump, ordered};
use crate::error::classify;
use crate::sqlite::now;
use crate::{Result, StoreError};

/// Rows per `json_populate_recordset` statement.
const BATCH: usize = 500;

struct Column {
    name: String,
    /// Generated (e.g. `kb_chunks.tsv`): neither dumped nor restored.
    generated: bool,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Tenant-owned tables (a `tenant_id` column; partitions are reached
/// through their parent), in dump order.
async fn tenant_tables(conn: &mut PgConnection) -> Result<Vec<String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
           AND NOT c.relispartition AND a.attname = 'tenant_id' AND NOT a.attisdropped",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(ordered(tables))
}

async fn columns(conn: &mut PgConnection, table: &str) -> Result<Vec<Column>> {
    let rows = sqlx::query(
        "SELECT attname::text AS name, attgenerated <> '' AS generated FROM pg_attribute
         WHERE attrelid = to_regclass('public.' || quote_ident($1)) AND attnum > 0 AND NOT attisdropped
         ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| Ok(Column { name: r.try_get("name")?, generated: r.try_get("generated")? })).collect()
}

async fn primary_key(conn: &mut PgConnection, table: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = to_regclass('public.' || quote_ident($1)) AND i.indisprimary
         ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?)
}

#[async_trait]
impl TenantDataStore for PgStore {
    async fn export_tenant(&self, _op: &OperatorCtx, id: TenantId) -> Result<TenantDump> {
        let mut tx = self.pool.begin().await?;
        // One snapshot for every table; times rendered in UTC whatever the
        // server's zone, so dumps of the same data compare equal.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        sqlx::query("SELECT set_config('app.platform', 'on', true), set_config('TimeZone', 'UTC', true)")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1")))
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        let tenant = tenant_from_row(&row)?;
        let mut tables = Vec::new();
        for table in tenant_tables(&mut tx).await? {
            let generated: Vec<String> =
                columns(&mut tx, &table).await?.into_iter().filter(|c| c.generated).map(|c| c.name).collect();
            let pk = primary_key(&mut tx, &table).await?;
            let order = if pk.is_empty() {
                "ctid".to_owned()
            } else {
                pk.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
            };
            let sql = format!(
                "SELECT (to_jsonb(t) - $2::text[])::text FROM public.{} t WHERE tenant_id = $1 ORDER BY {order}",
                quote(&table)
            );
            let texts: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(id.as_uuid())
                .bind(&generated)
                .fetch_all(&mut *tx)
                .await?;
            let rows = texts
                .iter()
                .map(|t| {
                    serde_json::from_str(t).map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))
                })
                .collect::<Result<Vec<Value>>>()?;
            tables.push(TableDump { table, rows });
        }
        tx.commit().await?;
        Ok(TenantDump { tenant, tables })
    }

    async fn import_tenant(&self, _op: &OperatorCtx, dump: &TenantDump) -> Result<()> {
        let id = dump.tenant.id;
        let mut tx = self.pool.begin().await?;
        // Platform scope writes any tenant's rows; the tenant's own setting
        // lets bulkhead_kb_partition() make its chunk partition.
        sqlx::query(
            "SELECT set_config('app.platform', 'on', true), set_config('app.tenant_id', $1, true),
                    set_config('TimeZone', 'UTC', true)",
        )
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        let known = tenant_tables(&mut tx).await?;
        check_dump(dump, &known)?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
            .bind(id.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            let t = &dump.tenant;
            sqlx::query(
                "INSERT INTO tenants (id, name, tier, status, metadata, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id.as_uuid())
            .bind(&t.name)
            .bind(t.tier.as_str())
            .bind(t.status.as_str())
            .bind(&t.metadata)
            .bind(t.created_at)
            .bind(t.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, || format!("a tenant named {:?} already exists", t.name), "tenant"))?;
        }
        for t in &dump.tables {
            let sql =
                format!("SELECT EXISTS (SELECT 1 FROM public.{} WHERE tenant_id = $1)", quote(&t.table));
            let taken: bool =
                sqlx::query_scalar(AssertSqlSafe(sql)).bind(id.as_uuid()).fetch_one(&mut *tx).await?;
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
            if t.table == "kb_chunks" {
                sqlx::query("SELECT bulkhead_kb_partition()").execute(&mut *tx).await?;
            }
            if t.table == "knowledge_bases" {
                let mut dims: Vec<i64> = t.rows.iter().filter_map(|r| r.get("dims")?.as_i64()).collect();
                dims.sort_unstable();
                dims.dedup();
                for d in dims {
                    sqlx::query("SELECT bulkhead_kb_vector_index($1)")
                        .bind(d as i32)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let cols = columns(&mut tx, &t.table).await?;
            for row in &t.rows {
                let obj = row
                    .as_object()
                    .ok_or_else(|| StoreError::Invalid("a dump row is not an object".into()))?;
                if let Some(extra) = obj.keys().find(|k| !cols.iter().any(|c| &c.name == *k && !c.generated))
                {
                    return Err(StoreError::Invalid(format!(
                        "{} has no column {extra:?} to restore",
                        t.table
                    )));
                }
            }
            // The ledger's seq is a global sequence: kept when free here,
            // else drawn anew in ledger order.
            let mut skip = None;
            if t.table == "usage_events" {
                let seqs: Vec<i64> = t.rows.iter().filter_map(|r| r.get("seq")?.as_i64()).collect();
                if let (Some(lo), Some(hi)) = (seqs.iter().min(), seqs.iter().max()) {
                    let taken: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM usage_events WHERE seq BETWEEN $1 AND $2)",
                    )
                    .bind(lo)
                    .bind(hi)
                    .fetch_one(&mut *tx)
                    .await?;
                    if taken {
                        skip = Some("seq");
                    }
                }
            }
            let list = cols
                .iter()
                .filter(|c| !c.generated && Some(c.name.as_str()) != skip)
                .map(|c| quote(&c.name))
                .collect::<Vec<_>>()
                .join(", ");
            let order = if skip.is_some() { " ORDER BY r.seq" } else { "" };
            let sql = format!(
                "INSERT INTO public.{table} ({list}) SELECT {list} FROM json_populate_recordset(NULL::public.{table}, $1::json) r{order}",
                table = quote(&t.table)
            );
            for batch in t.rows.chunks(BATCH) {
                let json = Value::Array(batch.to_vec()).to_string();
                sqlx::query(AssertSqlSafe(sql.clone())).bind(json).execute(&mut *tx).await.map_err(|e| {
                    classify(e, || format!("a row of {} is already here", t.table), "parent row")
                })?;
            }
        }
        // In-memory indexes keyed on chunk ids reload after an import.
        sqlx::query("UPDATE knowledge_bases SET generation = generation + 1 WHERE tenant_id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT bulkhead_sync_sequences()").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn purge_tenant_data(&self, _op: &OperatorCtx, id: TenantId) -> Result<()> {
        let mut tx = self.platform_tx().await?;
        sqlx::query("SELECT bulkhead_purge_tenant($1)").bind(id.as_uuid()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_route(&self, _op: &OperatorCtx, id: TenantId) -> Result<Option<TenantRoute>> {
        let mut tx = self.platform_tx().await?;
        let row = sqlx::query("SELECT tier, moving_to FROM tenants WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TenantRoute {
            tier: decode::<Tier>(row.try_get::<&str, _>("tier")?)?,
            moving_to: row.try_get::<Option<&str>, _>("moving_to")?.map(decode::<Tier>).transpose()?,
        }))
    }

    async fn mark_moving(&self, _op: &OperatorCtx, id: TenantId, to: Option<Tier>) -> Result<()> {
        let mut tx = self.platform_tx().await?;
        let done = match to {
            Some(to) => sqlx::query("UPDATE tenants SET moving_to = $1 WHERE id = $2 AND moving_to IS NULL")
                .bind(to.as_str())
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            None => sqlx::query("UPDATE tenants SET moving_to = NULL WHERE id = $1")
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await?
                .rows_affected(),
        };
        if done == 0 {
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
                .bind(id.as_uuid())
                .fetch_one(&mut *tx)
                .await?;
            return Err(if exists {
                StoreError::Conflict("a move of this tenant is already under way".into())
            } else {
                StoreError::NotFound("tenant")
            });
        }
        tx.commit().await?;
        Ok(())
    }

    async fn finish_move(&self, _op: &OperatorCtx, id: TenantId, tier: Tier) -> Result<()> {
        let mut tx = self.platform_tx().await?;
        let done =
            sqlx::query("UPDATE tenants SET tier = $1, moving_to = NULL, updated_at = $2 WHERE id = $3")
                .bind(tier.as_str())
                .bind(now())
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("tenant"));
        }
        tx.commit().await?;
        Ok(())
    }
}
