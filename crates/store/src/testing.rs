//! Test support shared by the crates' test suites: a fresh store of either
//! backend. PostgreSQL tests need `BULKHEAD_TEST_PG_URL` (a superuser URL of
//! a throwaway cluster, which `scripts/test.sh` starts); they never skip
//! silently — without it they fail, unless `BULKHEAD_TEST_SKIP_PG=1` says
//! the run deliberately leaves PostgreSQL out.

use std::path::Path;

use bulkhead_core::config::StoreConfig;

use crate::{DynStore, Result, StoreError};

pub const PG_URL_ENV: &str = "BULKHEAD_TEST_PG_URL";
pub const SKIP_PG_ENV: &str = "BULKHEAD_TEST_SKIP_PG";

/// The backends a test should run on: always `sqlite`, and `postgres`
/// unless explicitly skipped. Panics with instructions when PostgreSQL is
/// expected but not configured.
pub fn backends() -> Vec<&'static str> {
    if pg_admin_url().is_some() { vec!["sqlite", "postgres"] } else { vec!["sqlite"] }
}

/// The admin URL of the test cluster, `None` only when deliberately skipped.
pub fn pg_admin_url() -> Option<String> {
    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(SKIP_PG_ENV).as_deref() == Ok("1") => None,
        _ => panic!(
            "PostgreSQL tests need {PG_URL_ENV}: run the suite with `bash scripts/test.sh`, which \
             installs and starts a throwaway PostgreSQL with pgvector, or set {SKIP_PG_ENV}=1 to \
             leave PostgreSQL out deliberately"
        ),
    }
}

/// Creates an empty database on the test cluster and returns its URL.
pub async fn fresh_pg_database() -> Result<String> {
    use sqlx::Connection;
    let admin = pg_admin_url().ok_or_else(|| StoreError::Setup("PostgreSQL tests skipped".into()))?;
    let name = format!("bh_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    conn.close().await?;
    let (base, _) = admin.rsplit_once('/').ok_or_else(|| StoreError::Setup("bad admin URL".into()))?;
    Ok(format!("{base}/{name}"))
}

/// Configuration of a fresh store of the given backend: SQLite lives in
/// `dir`; PostgreSQL gets a new database on the test cluster.
pub async fn fresh_config(backend: &str, dir: &Path) -> Result<StoreConfig> {
    let mut config = StoreConfig { data_dir: dir.to_path_buf(), ..Default::default() };
    if backend == "postgres" {
        config.database_url = Some(fresh_pg_database().await?);
        config.max_connections = 8;
    }
    Ok(config)
}

/// A fresh, migrated store of the given backend.
pub async fn fresh_store(backend: &str, dir: &Path) -> Result<DynStore> {
    crate::open(&fresh_config(backend, dir).await?).await
}

/// Every row of every table as text, read with the owner's rights (no RLS):
/// for tests that look for secrets or leftovers in what is stored.
pub async fn dump_all_rows(config: &StoreConfig) -> Result<Vec<(String, String)>> {
    use sqlx::{Connection, Row};
    let mut out = Vec::new();
    match &config.database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await?;
            for table in tables {
                let sql = format!("SELECT row_to_json(t)::text FROM {table} t");
                for row in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await? {
                    out.push((table.clone(), row.try_get::<String, _>(0)?));
                }
            }
        }
        None => out = sqlite_file_rows(&config.data_dir.join("bulkhead.db")).await?,
    }
    Ok(out)
}

/// Every row of every table of one SQLite file, as text.
pub async fn sqlite_file_rows(path: &Path) -> Result<Vec<(String, String)>> {
    use sqlx::{Connection, Row};
    let mut out = Vec::new();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")
            .fetch_all(&mut conn)
            .await?;
    for table in tables {
        let cols: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{table}')")))
                .fetch_all(&mut conn)
                .await?;
        // quote() renders every value, blobs as X'..', as SQL text.
        let expr = cols.iter().map(|c| format!("quote(\"{c}\")")).collect::<Vec<_>>().join(" || ',' || ");
        let sql = format!("SELECT {expr} FROM \"{table}\"");
        for row in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await? {
            out.push((table.clone(), row.try_get::<String, _>(0)?));
        }
    }
    Ok(out)
}

/// Every row of an isolated tenant's own store (its SQLite file, or its
/// PostgreSQL database), read with the owner's rights; empty if it has none.
pub async fn isolated_rows(
    config: &StoreConfig,
    tenant: bulkhead_core::TenantId,
) -> Result<Vec<(String, String)>> {
    use sqlx::Connection;
    match &config.database_url {
        Some(url) => {
            let name = crate::routed::isolated_database(tenant);
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut conn)
                    .await?;
            conn.close().await?;
            if !exists {
                return Ok(Vec::new());
            }
            let own = StoreConfig {
                database_url: Some(crate::routed::database_url(url, &name)?),
                ..config.clone()
            };
            dump_all_rows(&own).await
        }
        None => {
            let path = config.data_dir.join("tenants").join(format!("{tenant}.db"));
            if !path.exists() {
                return Ok(Vec::new());
            }
            sqlite_file_rows(&path).await
        }
    }
}

/// Tables that hold a `tenant_id` column: the tenant-owned tables.
pub async fn tenant_owned_tables(config: &StoreConfig) -> Result<Vec<String>> {
    use sqlx::Connection;
    match &config.database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            Ok(sqlx::query_scalar(
                // Partitions (one per tenant, of kb_chunks) are reached through
                // their parent; the partition's own policy has a test of its own.
                "SELECT c.table_name::text FROM information_schema.columns c
                 JOIN pg_class r ON r.relname = c.table_name AND r.relnamespace = 'public'::regnamespace
                 WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' AND NOT r.relispartition
                 ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await?)
        }
        None => {
            let path = config.data_dir.join("bulkhead.db");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
            Ok(sqlx::query_scalar(
                "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) c
                 WHERE m.type = 'table' AND c.name = 'tenant_id' ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await?)
        }
    }
}

/// Runs SQL (one or more statements) with the owner's rights — no
/// row-level security, no application role: for tests that tamper with
/// stored rows as someone with database access would. Returns the rows
/// changed.
pub async fn execute_as_owner(config: &StoreConfig, sql: &str) -> Result<u64> {
    use sqlx::Connection;
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    let done = match &config.database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            sqlx::raw_sql(sql).execute(&mut conn).await?.rows_affected()
        }
        None => {
            let path = config.data_dir.join("bulkhead.db");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
            sqlx::raw_sql(sql).execute(&mut conn).await?.rows_affected()
        }
    };
    Ok(done)
}
