//! Knowledge bases, documents and chunks on PostgreSQL, under row-level
//! security, with pgvector.
//!
//! Each tenant's chunks live in a list partition of `kb_chunks` of their own
//! (made by `bulkhead_kb_partition()` on the tenant's first knowledge base).
//! Searches name the tenant as a literal (from the typed `TenantCtx`, never
//! from a caller's text), so the planner prunes to that one partition at
//! plan time and uses its own HNSW index — partial on `dims`, which is also
//! a literal for the same reason. Filtered vector searches use pgvector's
//! iterative index scans, so a selective filter still returns k rows.

use async_trait::async_trait;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{DocId, KbId, OperatorCtx, TenantCtx, TenantId};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use super::PgStore;
use crate::error::classify;
use crate::knowledge::*;
use crate::model::validate_metadata;
use crate::sqlite::now;
use crate::usage::{from_micros, to_micros};
use crate::{Result, StoreError};

const KB_SELECT: &str = "SELECT k.id, k.name, k.description, k.embedding_model, k.dims, k.chunk_tokens,
        k.chunk_overlap, k.generation, k.created_at, k.updated_at,
        coalesce(s.documents, 0) AS documents, coalesce(s.chunks, 0) AS chunks, coalesce(s.bytes, 0) AS bytes
     FROM knowledge_bases k
     LEFT JOIN LATERAL (SELECT count(*)::bigint AS documents, sum(d.chunks)::bigint AS chunks,
                               sum(d.bytes)::bigint AS bytes
                        FROM kb_documents d WHERE d.tenant_id = k.tenant_id AND d.kb_id = k.id) s ON true";
const DOC_COLS: &str = "id, kb_id, name, format, sha256, bytes, status, error, chunks, progress_done, \
                        progress_total, metadata, created_at, updated_at, ingested_at";

/// HNSW candidates examined per search (pgvector's default is 40).
const EF_SEARCH: u32 = 100;

fn kb_from_row(row: &PgRow) -> Result<KnowledgeBase> {
    Ok(KnowledgeBase {
        id: KbId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        embedding_model: row.try_get("embedding_model")?,
        dims: row.try_get("dims")?,
        chunk_tokens: row.try_get("chunk_tokens")?,
        chunk_overlap: row.try_get("chunk_overlap")?,
        generation: row.try_get("generation")?,
        documents: row.try_get("documents")?,
        chunks: row.try_get("chunks")?,
        bytes: row.try_get("bytes")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

fn doc_from_row(row: &PgRow) -> Result<Document> {
    Ok(Document {
        id: DocId::from_uuid(row.try_get("id")?),
        kb_id: KbId::from_uuid(row.try_get("kb_id")?),
        name: row.try_get("name")?,
        format: row.try_get("format")?,
        sha256: row.try_get("sha256")?,
        bytes: row.try_get("bytes")?,
        status: super::decode(row.try_get::<&str, _>("status")?)?,
        error: row.try_get("error")?,
        chunks: row.try_get("chunks")?,
        progress_done: row.try_get("progress_done")?,
        progress_total: row.try_get("progress_total")?,
        metadata: row.try_get("metadata")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
        ingested_at: row.try_get::<Option<i64>, _>("ingested_at")?.map(from_micros),
    })
}

/// pgvector's text form, `[1,2,3]`.
fn vector_text(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 12 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

fn parse_vector(text: &str) -> Result<Vec<f32>> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))
}

/// `AND d.metadata @> {filter}`: jsonb containment is exactly key = value.
fn push_filter(q: &mut QueryBuilder<Postgres>, alias: &str, filter: &MetadataFilter) {
    if !filter.is_empty() {
        q.push(format!(" AND {alias}.metadata @> "));
        q.push_bind(serde_json::Value::Object(filter.clone()));
    }
}

fn kb_uuids(kbs: &[KbId]) -> Vec<Uuid> {
    kbs.iter().map(|k| k.as_uuid()).collect()
}

impl PgStore {
    async fn kb_in(tx: &mut Transaction<'_, Postgres>, ctx: &TenantCtx, id: KbId) -> Result<KnowledgeBase> {
        let row = sqlx::query(AssertSqlSafe(format!("{KB_SELECT} WHERE k.tenant_id = $1 AND k.id = $2")))
            .bind(ctx.tenant_id().as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound("knowledge base"))?;
        kb_from_row(&row)
    }

    async fn bump_generation(tx: &mut Transaction<'_, Postgres>, ctx: &TenantCtx, kb: Uuid) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "UPDATE knowledge_bases SET generation = generation + 1, updated_at = $1
             WHERE tenant_id = $2 AND id = $3 RETURNING generation",
        )
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().as_uuid())
        .bind(kb)
        .fetch_one(&mut **tx)
        .await?)
    }

    async fn doc_chunk_ids(
        tx: &mut Transaction<'_, Postgres>,
        ctx: &TenantCtx,
        doc: Uuid,
    ) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT id FROM kb_chunks WHERE tenant_id = $1 AND doc_id = $2 ORDER BY id")
            .bind(ctx.tenant_id().as_uuid())
            .bind(doc)
            .fetch_all(&mut **tx)
            .await?)
    }

    async fn fetch_doc(tx: &mut Transaction<'_, Postgres>, ctx: &TenantCtx, doc: Uuid) -> Result<Document> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM kb_documents WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(doc)
        .fetch_one(&mut **tx)
        .await?;
        doc_from_row(&row)
    }
}

#[async_trait]
impl KnowledgeStore for PgStore {
    async fn create_kb(&self, ctx: &TenantCtx, new: &NewKnowledgeBase) -> Result<KnowledgeBase> {
        new.validate()?;
        let id = KbId::new();
        let at = now();
        let mut tx = self.tenant_tx(ctx).await?;
        sqlx::query("SELECT bulkhead_kb_partition()").execute(&mut *tx).await?;
        if new.dims != 384 {
            sqlx::query("SELECT bulkhead_kb_vector_index($1)").bind(new.dims).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO knowledge_bases (id, tenant_id, name, description, embedding_model, dims,
                 chunk_tokens, chunk_overlap, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(id.as_uuid())
        .bind(ctx.tenant_id().as_uuid())
        .bind(&new.name)
        .bind(&new.description)
        .bind(&new.embedding_model)
        .bind(new.dims)
        .bind(new.chunk_tokens)
        .bind(new.chunk_overlap)
        .bind(to_micros(at))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            classify(e, || format!("a knowledge base named {:?} already exists", new.name), "tenant")
        })?;
        tx.commit().await?;
        Ok(KnowledgeBase {
            id,
            name: new.name.clone(),
            description: new.description.clone(),
            embedding_model: new.embedding_model.clone(),
            dims: new.dims,
            chunk_tokens: new.chunk_tokens,
            chunk_overlap: new.chunk_overlap,
            generation: 0,
            documents: 0,
            chunks: 0,
            bytes: 0,
            created_at: at,
            updated_at: at,
        })
    }

    async fn list_kbs(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<KnowledgeBase>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{KB_SELECT} WHERE k.tenant_id = $1 AND k.id > $2 ORDER BY k.id LIMIT $3"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let items = rows.iter().map(kb_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<KnowledgeBase> {
        let mut tx = self.tenant_tx(ctx).await?;
        let kb = Self::kb_in(&mut tx, ctx, id).await?;
        tx.commit().await?;
        Ok(kb)
    }

    async fn find_kb(&self, ctx: &TenantCtx, name: &str) -> Result<KnowledgeBase> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!("{KB_SELECT} WHERE k.tenant_id = $1 AND k.name = $2")))
            .bind(ctx.tenant_id().as_uuid())
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("knowledge base"))?;
        tx.commit().await?;
        kb_from_row(&row)
    }

    async fn delete_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        let done = sqlx::query("DELETE FROM knowledge_bases WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id().as_uuid())
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("knowledge base"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn upsert_document(&self, ctx: &TenantCtx, kb: KbId, new: &NewDocument) -> Result<Upserted> {
        validate_name("document name", &new.name)?;
        validate_format(&new.format)?;
        validate_metadata(&new.metadata)?;
        let tenant = ctx.tenant_id().as_uuid();
        let at = to_micros(now());
        let mut tx = self.tenant_tx(ctx).await?;
        Self::kb_in(&mut tx, ctx, kb).await?;
        // Concurrent uploads of one name: the second waits on the first's row.
        let existing = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM kb_documents WHERE tenant_id = $1 AND kb_id = $2 AND name = $3 FOR UPDATE"
        )))
        .bind(tenant)
        .bind(kb.as_uuid())
        .bind(&new.name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| doc_from_row(&r))
        .transpose()?;
        let (id, created) = match existing {
            Some(doc) if doc.sha256 == new.sha256 && doc.metadata == new.metadata => {
                tx.commit().await?;
                return Ok(Upserted::Unchanged(doc));
            }
            Some(doc) if doc.sha256 == new.sha256 => {
                sqlx::query(
                    "UPDATE kb_documents SET metadata = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
                )
                .bind(&new.metadata)
                .bind(at)
                .bind(tenant)
                .bind(doc.id.as_uuid())
                .execute(&mut *tx)
                .await?;
                let doc = Self::fetch_doc(&mut tx, ctx, doc.id.as_uuid()).await?;
                tx.commit().await?;
                return Ok(Upserted::Replaced(doc));
            }
            Some(doc) => {
                sqlx::query(
                    "UPDATE kb_documents SET format = $1, content = $2, sha256 = $3, bytes = $4, status = 'queued',
                         error = NULL, progress_done = 0, progress_total = 0, metadata = $5, updated_at = $6
                     WHERE tenant_id = $7 AND id = $8",
                )
                .bind(&new.format)
                .bind(&new.content)
                .bind(&new.sha256)
                .bind(new.content.len() as i64)
                .bind(&new.metadata)
                .bind(at)
                .bind(tenant)
                .bind(doc.id.as_uuid())
                .execute(&mut *tx)
                .await?;
                (doc.id, false)
            }
            None => {
                let id = DocId::new();
                sqlx::query(
                    "INSERT INTO kb_documents (id, tenant_id, kb_id, name, format, content, sha256, bytes, status,
                         metadata, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10, $10)",
                )
                .bind(id.as_uuid())
                .bind(tenant)
                .bind(kb.as_uuid())
                .bind(&new.name)
                .bind(&new.format)
                .bind(&new.content)
                .bind(&new.sha256)
                .bind(new.content.len() as i64)
                .bind(&new.metadata)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(e, || format!("a document named {:?} already exists", new.name), "knowledge base"))?;
                (id, true)
            }
        };
        let doc = Self::fetch_doc(&mut tx, ctx, id.as_uuid()).await?;
        tx.commit().await?;
        Ok(if created { Upserted::Created(doc) } else { Upserted::Replaced(doc) })
    }

    async fn list_documents(&self, ctx: &TenantCtx, kb: KbId, page: PageReq) -> Result<Page<Document>> {
        let mut tx = self.tenant_tx(ctx).await?;
        Self::kb_in(&mut tx, ctx, kb).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM kb_documents WHERE tenant_id = $1 AND kb_id = $2 AND id > $3
             ORDER BY id LIMIT $4"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(kb.as_uuid())
        .bind(page.after.unwrap_or_default())
        .bind(page.fetch())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let items = rows.iter().map(doc_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Document> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM kb_documents WHERE tenant_id = $1 AND kb_id = $2 AND id = $3"
        )))
        .bind(ctx.tenant_id().as_uuid())
        .bind(kb.as_uuid())
        .bind(doc.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("document"))?;
        tx.commit().await?;
        doc_from_row(&row)
    }

    async fn document_content(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Vec<u8>> {
        let mut tx = self.tenant_tx(ctx).await?;
        let content = sqlx::query_scalar(
            "SELECT content FROM kb_documents WHERE tenant_id = $1 AND kb_id = $2 AND id = $3",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(kb.as_uuid())
        .bind(doc.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("document"))?;
        tx.commit().await?;
        Ok(content)
    }

    async fn delete_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Replaced> {
        let mut tx = self.tenant_tx(ctx).await?;
        let removed = Self::doc_chunk_ids(&mut tx, ctx, doc.as_uuid()).await?;
        let done = sqlx::query("DELETE FROM kb_documents WHERE tenant_id = $1 AND kb_id = $2 AND id = $3")
            .bind(ctx.tenant_id().as_uuid())
            .bind(kb.as_uuid())
            .bind(doc.as_uuid())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("document"));
        }
        let generation = Self::bump_generation(&mut tx, ctx, kb.as_uuid()).await?;
        tx.commit().await?;
        Ok(Replaced { generation, removed, added: Vec::new() })
    }

    async fn start_ingestion(&self, ctx: &TenantCtx, doc: DocId, sha256: &str, total: i64) -> Result<bool> {
        let mut tx = self.tenant_tx(ctx).await?;
        let done = sqlx::query(
            "UPDATE kb_documents SET status = 'processing', progress_done = 0, progress_total = $1, updated_at = $2
             WHERE tenant_id = $3 AND id = $4 AND sha256 = $5 AND status IN ('queued', 'processing')",
        )
        .bind(total)
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().as_uuid())
        .bind(doc.as_uuid())
        .bind(sha256)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn ingestion_progress(&self, ctx: &TenantCtx, doc: DocId, done: i64) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        sqlx::query(
            "UPDATE kb_documents SET progress_done = $1 WHERE tenant_id = $2 AND id = $3 AND status = 'processing'",
        )
        .bind(done)
        .bind(ctx.tenant_id().as_uuid())
        .bind(doc.as_uuid())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish_ingestion(
        &self,
        ctx: &TenantCtx,
        doc: DocId,
        sha256: &str,
        chunks: &[NewChunk],
    ) -> Result<Option<Replaced>> {
        let tenant = ctx.tenant_id().as_uuid();
        let mut tx = self.tenant_tx(ctx).await?;
        // The row lock orders this against a concurrent re-upload or delete.
        let kb: Option<Uuid> = sqlx::query_scalar(
            "SELECT kb_id FROM kb_documents WHERE tenant_id = $1 AND id = $2 AND sha256 = $3 FOR UPDATE",
        )
        .bind(tenant)
        .bind(doc.as_uuid())
        .bind(sha256)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(kb) = kb else {
            return Ok(None);
        };
        let base = Self::kb_in(&mut tx, ctx, KbId::from_uuid(kb)).await?;
        check_chunks(&base, chunks)?;
        sqlx::query("SELECT bulkhead_kb_partition()").execute(&mut *tx).await?;
        let removed: Vec<i64> =
            sqlx::query_scalar("DELETE FROM kb_chunks WHERE tenant_id = $1 AND doc_id = $2 RETURNING id")
                .bind(tenant)
                .bind(doc.as_uuid())
                .fetch_all(&mut *tx)
                .await?;
        let mut added = Vec::with_capacity(chunks.len());
        // Batches of rows per statement: one round trip per 200 chunks.
        for batch in chunks.chunks(200) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO kb_chunks (tenant_id, kb_id, doc_id, ord, text, tokens, heading, dims, embedding) ",
            );
            q.push_values(batch, |mut row, c| {
                row.push_bind(tenant)
                    .push_bind(kb)
                    .push_bind(doc.as_uuid())
                    .push_bind(c.ord)
                    .push_bind(&c.text)
                    .push_bind(c.tokens)
                    .push_bind(&c.heading)
                    .push_bind(base.dims)
                    .push_bind(vector_text(&c.embedding))
                    .push_unseparated("::vector");
            });
            q.push(" RETURNING id");
            let ids: Vec<i64> = q.build_query_scalar().fetch_all(&mut *tx).await?;
            added.extend(ids);
        }
        let at = to_micros(now());
        sqlx::query(
            "UPDATE kb_documents SET status = 'ready', error = NULL, chunks = $1, progress_done = $1,
                 progress_total = $1, updated_at = $2, ingested_at = $2
             WHERE tenant_id = $3 AND id = $4",
        )
        .bind(chunks.len() as i64)
        .bind(at)
        .bind(tenant)
        .bind(doc.as_uuid())
        .execute(&mut *tx)
        .await?;
        let generation = Self::bump_generation(&mut tx, ctx, kb).await?;
        // Fresh statistics after a large ingestion, so the planner uses HNSW.
        sqlx::query("SELECT bulkhead_kb_analyze($1)").bind(added.len() as i64).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(Replaced { generation, removed, added }))
    }

    async fn fail_ingestion(&self, ctx: &TenantCtx, doc: DocId, sha256: &str, error: &str) -> Result<()> {
        let mut tx = self.tenant_tx(ctx).await?;
        sqlx::query(
            "UPDATE kb_documents SET status = 'failed', error = $1, updated_at = $2
             WHERE tenant_id = $3 AND id = $4 AND sha256 = $5",
        )
        .bind(error.chars().take(1_000).collect::<String>())
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().as_uuid())
        .bind(doc.as_uuid())
        .bind(sha256)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn pending_ingestions(&self, _op: &OperatorCtx) -> Result<Vec<(TenantId, KbId, DocId)>> {
        let mut tx = self.platform_tx().await?;
        let rows = sqlx::query(
            "SELECT tenant_id, kb_id, id FROM kb_documents WHERE status IN ('queued', 'processing') ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok((
                    TenantId::from_uuid(r.try_get("tenant_id")?),
                    KbId::from_uuid(r.try_get("kb_id")?),
                    DocId::from_uuid(r.try_get("id")?),
                ))
            })
            .collect()
    }

    fn native_vector_search(&self) -> bool {
        true
    }

    async fn kb_vectors(&self, ctx: &TenantCtx, kb: KbId) -> Result<(i64, Vec<(i64, DocId, Vec<f32>)>)> {
        let mut tx = self.tenant_tx(ctx).await?;
        let generation: i64 =
            sqlx::query_scalar("SELECT generation FROM knowledge_bases WHERE tenant_id = $1 AND id = $2")
                .bind(ctx.tenant_id().as_uuid())
                .bind(kb.as_uuid())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound("knowledge base"))?;
        let rows = sqlx::query(
            "SELECT id, doc_id, embedding::text AS embedding FROM kb_chunks WHERE tenant_id = $1 AND kb_id = $2",
        )
        .bind(ctx.tenant_id().as_uuid())
        .bind(kb.as_uuid())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let vectors = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("id")?,
                    DocId::from_uuid(r.try_get("doc_id")?),
                    parse_vector(r.try_get::<&str, _>("embedding")?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((generation, vectors))
    }

    async fn vector_search(
        &self,
        ctx: &TenantCtx,
        kbs: &[KbId],
        query: &[f32],
        k: i64,
        filter: &MetadataFilter,
    ) -> Result<Vec<(i64, f32)>> {
        if kbs.is_empty() || query.is_empty() {
            return Ok(Vec::new());
        }
        validate_filter(filter)?;
        let dims = query.len();
        if dims > MAX_DIMS as usize {
            return Err(StoreError::Invalid(format!("a query vector has at most {MAX_DIMS} dimensions")));
        }
        let mut tx = self.tenant_tx(ctx).await?;
        sqlx::query(AssertSqlSafe(format!("SET LOCAL hnsw.ef_search = {EF_SEARCH}")))
            .execute(&mut *tx)
            .await?;
        sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order").execute(&mut *tx).await?;
        // Literals: the tenant (a typed id) and the dimension (a number), so
        // the plan is pruned to the tenant's partition and the partial index.
        let tenant = ctx.tenant_id().as_uuid();
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "WITH hits AS MATERIALIZED (
                 SELECT c.id, c.embedding::vector({dims}) <=> "
        ));
        q.push_bind(vector_text(query));
        q.push(format!(
            "::vector({dims}) AS distance FROM kb_chunks c
             WHERE c.tenant_id = '{tenant}' AND c.dims = {dims} AND c.kb_id = ANY("
        ));
        q.push_bind(kb_uuids(kbs));
        q.push(")");
        if !filter.is_empty() {
            q.push(" AND c.doc_id IN (SELECT d.id FROM kb_documents d WHERE d.tenant_id = ");
            q.push_bind(tenant);
            push_filter(&mut q, "d", filter);
            q.push(")");
        }
        q.push(" ORDER BY distance LIMIT ");
        q.push_bind(k);
        q.push(") SELECT id, (1 - distance)::real AS score FROM hits ORDER BY distance");
        let rows = q.build().persistent(false).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get::<f32, _>("score")?))).collect()
    }

    async fn text_search(
        &self,
        ctx: &TenantCtx,
        kbs: &[KbId],
        terms: &[String],
        k: i64,
        filter: &MetadataFilter,
    ) -> Result<Vec<(i64, f32)>> {
        if terms.is_empty() || kbs.is_empty() {
            return Ok(Vec::new());
        }
        validate_filter(filter)?;
        let tenant = ctx.tenant_id().as_uuid();
        // Each term through plainto_tsquery (which takes any text), OR-ed.
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT c.id, ts_rank_cd(c.tsv, q.query)::real AS score
             FROM (SELECT ",
        );
        let mut first = true;
        for t in terms {
            if !first {
                q.push(" || ");
            }
            first = false;
            q.push("plainto_tsquery('english', ");
            q.push_bind(t.clone());
            q.push(")");
        }
        q.push(format!(
            " AS query) q, kb_chunks c
             JOIN kb_documents d ON d.tenant_id = c.tenant_id AND d.id = c.doc_id
             WHERE c.tenant_id = '{tenant}' AND c.tsv @@ q.query AND c.kb_id = ANY("
        ));
        q.push_bind(kb_uuids(kbs));
        q.push(")");
        push_filter(&mut q, "d", filter);
        q.push(" ORDER BY score DESC, c.id LIMIT ");
        q.push_bind(k);
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = q.build().persistent(false).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get::<f32, _>("score")?))).collect()
    }

    async fn matching_documents(
        &self,
        ctx: &TenantCtx,
        kb: KbId,
        filter: &MetadataFilter,
    ) -> Result<Vec<DocId>> {
        validate_filter(filter)?;
        let mut q = QueryBuilder::<Postgres>::new("SELECT d.id FROM kb_documents d WHERE d.tenant_id = ");
        q.push_bind(ctx.tenant_id().as_uuid());
        q.push(" AND d.kb_id = ");
        q.push_bind(kb.as_uuid());
        push_filter(&mut q, "d", filter);
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = q.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok(DocId::from_uuid(r.try_get("id")?))).collect()
    }

    async fn chunks_by_id(&self, ctx: &TenantCtx, ids: &[i64]) -> Result<Vec<ChunkText>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = ctx.tenant_id().as_uuid();
        let mut tx = self.tenant_tx(ctx).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT c.id, c.kb_id, c.doc_id, d.name AS doc_name, c.ord, c.text, c.heading, d.metadata
             FROM kb_chunks c JOIN kb_documents d ON d.tenant_id = c.tenant_id AND d.id = c.doc_id
             WHERE c.tenant_id = '{tenant}' AND c.id = ANY($1)"
        )))
        .bind(ids)
        .persistent(false)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(ChunkText {
                    id: r.try_get("id")?,
                    kb_id: KbId::from_uuid(r.try_get("kb_id")?),
                    doc_id: DocId::from_uuid(r.try_get("doc_id")?),
                    doc_name: r.try_get("doc_name")?,
                    ord: r.try_get("ord")?,
                    text: r.try_get("text")?,
                    heading: r.try_get("heading")?,
                    doc_metadata: r.try_get("metadata")?,
                })
            })
            .collect()
    }

    async fn knowledge_usage(&self, ctx: &TenantCtx) -> Result<KnowledgeUsage> {
        let mut tx = self.tenant_tx(ctx).await?;
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM knowledge_bases WHERE tenant_id = $1)::bigint AS kbs,
                    count(*)::bigint AS documents, coalesce(sum(chunks), 0)::bigint AS chunks,
                    coalesce(sum(bytes), 0)::bigint AS bytes
             FROM kb_documents WHERE tenant_id = $1",
        )
        .bind(ctx.tenant_id().as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(KnowledgeUsage {
            knowledge_bases: row.try_get("kbs")?,
            documents: row.try_get("documents")?,
            chunks: row.try_get("chunks")?,
            bytes: row.try_get("bytes")?,
        })
    }
}
