//! Knowledge bases, documents and chunks on SQLite. Every query binds
//! `ctx.tenant_id()`; children reference their parent by (tenant, id).
//! Vectors are BLOBs of little-endian f32: SQLite has no vector index, so
//! the knowledge service searches an in-memory index per (tenant, base)
//! loaded from [`KnowledgeStore::kb_vectors`]. Full text goes through the
//! FTS5 table `kb_chunks_fts`, joined back to the tenant's chunks.

use async_trait::async_trait;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{DocId, KbId, OperatorCtx, TenantCtx, TenantId};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite, Transaction};

use super::{SqliteStore, after_cursor, decode, now};
use crate::error::classify;
use crate::knowledge::*;
use crate::model::validate_metadata;
use crate::usage::{from_micros, to_micros};
use crate::{Result, StoreError};

const KB_SELECT: &str = "SELECT k.id, k.name, k.description, k.embedding_model, k.dims, k.chunk_tokens,
        k.chunk_overlap, k.generation, k.created_at, k.updated_at,
        (SELECT count(*) FROM kb_documents d WHERE d.tenant_id = k.tenant_id AND d.kb_id = k.id) AS documents,
        (SELECT coalesce(sum(d.chunks), 0) FROM kb_documents d WHERE d.tenant_id = k.tenant_id AND d.kb_id = k.id) AS chunks,
        (SELECT coalesce(sum(d.bytes), 0) FROM kb_documents d WHERE d.tenant_id = k.tenant_id AND d.kb_id = k.id) AS bytes
     FROM knowledge_bases k";
const DOC_COLS: &str = "id, kb_id, name, format, sha256, bytes, status, error, chunks, progress_done, \
                        progress_total, metadata, created_at, updated_at, ingested_at";

fn kb_from_row(row: &SqliteRow) -> Result<KnowledgeBase> {
    Ok(KnowledgeBase {
        id: decode(row.try_get::<&str, _>("id")?)?,
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

fn doc_from_row(row: &SqliteRow) -> Result<Document> {
    Ok(Document {
        id: decode(row.try_get::<&str, _>("id")?)?,
        kb_id: decode(row.try_get::<&str, _>("kb_id")?)?,
        name: row.try_get("name")?,
        format: row.try_get("format")?,
        sha256: row.try_get("sha256")?,
        bytes: row.try_get("bytes")?,
        status: decode(row.try_get::<&str, _>("status")?)?,
        error: row.try_get("error")?,
        chunks: row.try_get("chunks")?,
        progress_done: row.try_get("progress_done")?,
        progress_total: row.try_get("progress_total")?,
        metadata: serde_json::from_str(row.try_get::<&str, _>("metadata")?)
            .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
        ingested_at: row.try_get::<Option<i64>, _>("ingested_at")?.map(from_micros),
    })
}

/// `AND d.metadata` passes every equality of `filter` (keys are validated:
/// letters, digits, `_`, `-` — safe inside a quoted JSON path).
fn push_filter(q: &mut QueryBuilder<Sqlite>, alias: &str, filter: &MetadataFilter) {
    for (key, value) in filter {
        q.push(format!(" AND json_extract({alias}.metadata, '$.\"{key}\"') = "));
        match value {
            Value::String(s) => q.push_bind(s.clone()),
            Value::Bool(b) => q.push_bind(i64::from(*b)),
            Value::Number(n) if n.is_i64() => q.push_bind(n.as_i64()),
            Value::Number(n) => q.push_bind(n.as_f64()),
            _ => q.push("NULL"),
        };
    }
}

fn push_kbs(q: &mut QueryBuilder<Sqlite>, col: &str, kbs: &[KbId]) {
    q.push(format!(" AND {col} IN ("));
    let mut list = q.separated(", ");
    for kb in kbs {
        list.push_bind(kb.to_string());
    }
    list.push_unseparated(")");
}

impl SqliteStore {
    async fn kb_in(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        ctx: &TenantCtx,
        id: KbId,
    ) -> Result<KnowledgeBase> {
        let row = sqlx::query(AssertSqlSafe(format!("{KB_SELECT} WHERE k.tenant_id = ? AND k.id = ?")))
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound("knowledge base"))?;
        kb_from_row(&row)
    }

    /// Bumps and returns the generation of a document's knowledge base.
    async fn bump_generation(tx: &mut Transaction<'_, Sqlite>, ctx: &TenantCtx, kb: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "UPDATE knowledge_bases SET generation = generation + 1, updated_at = ?
             WHERE tenant_id = ? AND id = ? RETURNING generation",
        )
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().to_string())
        .bind(kb)
        .fetch_one(&mut **tx)
        .await?)
    }

    async fn doc_chunk_ids(tx: &mut Transaction<'_, Sqlite>, ctx: &TenantCtx, doc: &str) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT id FROM kb_chunks WHERE tenant_id = ? AND doc_id = ? ORDER BY id")
            .bind(ctx.tenant_id().to_string())
            .bind(doc)
            .fetch_all(&mut **tx)
            .await?)
    }
}

#[async_trait]
impl KnowledgeStore for SqliteStore {
    async fn create_kb(&self, ctx: &TenantCtx, new: &NewKnowledgeBase) -> Result<KnowledgeBase> {
        new.validate()?;
        let id = KbId::new();
        let at = now();
        sqlx::query(
            "INSERT INTO knowledge_bases (id, tenant_id, name, description, embedding_model, dims,
                 chunk_tokens, chunk_overlap, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(ctx.tenant_id().to_string())
        .bind(&new.name)
        .bind(&new.description)
        .bind(&new.embedding_model)
        .bind(new.dims)
        .bind(new.chunk_tokens)
        .bind(new.chunk_overlap)
        .bind(to_micros(at))
        .bind(to_micros(at))
        .execute(&self.pool)
        .await
        .map_err(|e| {
            classify(e, || format!("a knowledge base named {:?} already exists", new.name), "tenant")
        })?;
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
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{KB_SELECT} WHERE k.tenant_id = ? AND k.id > ? ORDER BY k.id LIMIT ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.read)
        .await?;
        let items = rows.iter().map(kb_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<KnowledgeBase> {
        let row = sqlx::query(AssertSqlSafe(format!("{KB_SELECT} WHERE k.tenant_id = ? AND k.id = ?")))
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound("knowledge base"))?;
        kb_from_row(&row)
    }

    async fn find_kb(&self, ctx: &TenantCtx, name: &str) -> Result<KnowledgeBase> {
        let row = sqlx::query(AssertSqlSafe(format!("{KB_SELECT} WHERE k.tenant_id = ? AND k.name = ?")))
            .bind(ctx.tenant_id().to_string())
            .bind(name)
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound("knowledge base"))?;
        kb_from_row(&row)
    }

    async fn delete_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<()> {
        let done = sqlx::query("DELETE FROM knowledge_bases WHERE tenant_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("knowledge base"));
        }
        Ok(())
    }

    async fn upsert_document(&self, ctx: &TenantCtx, kb: KbId, new: &NewDocument) -> Result<Upserted> {
        validate_name("document name", &new.name)?;
        validate_format(&new.format)?;
        validate_metadata(&new.metadata)?;
        let tenant = ctx.tenant_id().to_string();
        let at = to_micros(now());
        let mut tx = self.immediate().await?;
        self.kb_in(&mut tx, ctx, kb).await?;
        let existing = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM kb_documents WHERE tenant_id = ? AND kb_id = ? AND name = ?"
        )))
        .bind(&tenant)
        .bind(kb.to_string())
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
                // Only the metadata changed: no new chunks needed.
                let row = sqlx::query(AssertSqlSafe(format!(
                    "UPDATE kb_documents SET metadata = ?, updated_at = ? WHERE tenant_id = ? AND id = ?
                     RETURNING {DOC_COLS}"
                )))
                .bind(new.metadata.to_string())
                .bind(at)
                .bind(&tenant)
                .bind(doc.id.to_string())
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(Upserted::Replaced(doc_from_row(&row)?));
            }
            Some(doc) => {
                sqlx::query(
                    "UPDATE kb_documents SET format = ?, content = ?, sha256 = ?, bytes = ?, status = 'queued',
                         error = NULL, progress_done = 0, progress_total = 0, metadata = ?, updated_at = ?
                     WHERE tenant_id = ? AND id = ?",
                )
                .bind(&new.format)
                .bind(&new.content)
                .bind(&new.sha256)
                .bind(new.content.len() as i64)
                .bind(new.metadata.to_string())
                .bind(at)
                .bind(&tenant)
                .bind(doc.id.to_string())
                .execute(&mut *tx)
                .await?;
                (doc.id, false)
            }
            None => {
                let id = DocId::new();
                sqlx::query(
                    "INSERT INTO kb_documents (id, tenant_id, kb_id, name, format, content, sha256, bytes, status,
                         metadata, created_at, updated_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                )
                .bind(id.to_string())
                .bind(&tenant)
                .bind(kb.to_string())
                .bind(&new.name)
                .bind(&new.format)
                .bind(&new.content)
                .bind(&new.sha256)
                .bind(new.content.len() as i64)
                .bind(new.metadata.to_string())
                .bind(at)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                (id, true)
            }
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM kb_documents WHERE tenant_id = ? AND id = ?"
        )))
        .bind(&tenant)
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let doc = doc_from_row(&row)?;
        Ok(if created { Upserted::Created(doc) } else { Upserted::Replaced(doc) })
    }

    async fn list_documents(&self, ctx: &TenantCtx, kb: KbId, page: PageReq) -> Result<Page<Document>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM kb_documents WHERE tenant_id = ? AND kb_id = ? AND id > ? ORDER BY id LIMIT ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(kb.to_string())
        .bind(after_cursor(&page))
        .bind(page.fetch())
        .fetch_all(&self.read)
        .await?;
        if rows.is_empty() {
            self.get_kb(ctx, kb).await?;
        }
        let items = rows.iter().map(doc_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_fetched(items, page))
    }

    async fn get_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Document> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DOC_COLS} FROM kb_documents WHERE tenant_id = ? AND kb_id = ? AND id = ?"
        )))
        .bind(ctx.tenant_id().to_string())
        .bind(kb.to_string())
        .bind(doc.to_string())
        .fetch_optional(&self.read)
        .await?
        .ok_or(StoreError::NotFound("document"))?;
        doc_from_row(&row)
    }

    async fn document_content(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Vec<u8>> {
        sqlx::query_scalar("SELECT content FROM kb_documents WHERE tenant_id = ? AND kb_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(kb.to_string())
            .bind(doc.to_string())
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound("document"))
    }

    async fn delete_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Replaced> {
        let mut tx = self.immediate().await?;
        let removed = Self::doc_chunk_ids(&mut tx, ctx, &doc.to_string()).await?;
        let done = sqlx::query("DELETE FROM kb_documents WHERE tenant_id = ? AND kb_id = ? AND id = ?")
            .bind(ctx.tenant_id().to_string())
            .bind(kb.to_string())
            .bind(doc.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("document"));
        }
        let generation = Self::bump_generation(&mut tx, ctx, &kb.to_string()).await?;
        tx.commit().await?;
        Ok(Replaced { generation, removed, added: Vec::new() })
    }

    async fn start_ingestion(&self, ctx: &TenantCtx, doc: DocId, sha256: &str, total: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE kb_documents SET status = 'processing', progress_done = 0, progress_total = ?, updated_at = ?
             WHERE tenant_id = ? AND id = ? AND sha256 = ? AND status IN ('queued', 'processing')",
        )
        .bind(total)
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().to_string())
        .bind(doc.to_string())
        .bind(sha256)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn ingestion_progress(&self, ctx: &TenantCtx, doc: DocId, done: i64) -> Result<()> {
        sqlx::query(
            "UPDATE kb_documents SET progress_done = ? WHERE tenant_id = ? AND id = ? AND status = 'processing'",
        )
        .bind(done)
        .bind(ctx.tenant_id().to_string())
        .bind(doc.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn finish_ingestion(
        &self,
        ctx: &TenantCtx,
        doc: DocId,
        sha256: &str,
        chunks: &[NewChunk],
    ) -> Result<Option<Replaced>> {
        let tenant = ctx.tenant_id().to_string();
        let doc_id = doc.to_string();
        let mut tx = self.immediate().await?;
        let kb: Option<String> = sqlx::query_scalar(
            "SELECT kb_id FROM kb_documents WHERE tenant_id = ? AND id = ? AND sha256 = ?",
        )
        .bind(&tenant)
        .bind(&doc_id)
        .bind(sha256)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(kb) = kb else {
            return Ok(None);
        };
        let base = self.kb_in(&mut tx, ctx, decode(&kb)?).await?;
        check_chunks(&base, chunks)?;
        let removed = Self::doc_chunk_ids(&mut tx, ctx, &doc_id).await?;
        sqlx::query("DELETE FROM kb_chunks WHERE tenant_id = ? AND doc_id = ?")
            .bind(&tenant)
            .bind(&doc_id)
            .execute(&mut *tx)
            .await?;
        let mut added = Vec::with_capacity(chunks.len());
        for c in chunks {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO kb_chunks (tenant_id, kb_id, doc_id, ord, text, tokens, heading, embedding)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(&tenant)
            .bind(&kb)
            .bind(&doc_id)
            .bind(c.ord)
            .bind(&c.text)
            .bind(c.tokens)
            .bind(&c.heading)
            .bind(vector_to_bytes(&c.embedding))
            .fetch_one(&mut *tx)
            .await?;
            added.push(id);
        }
        let at = to_micros(now());
        sqlx::query(
            "UPDATE kb_documents SET status = 'ready', error = NULL, chunks = ?, progress_done = ?,
                 progress_total = ?, updated_at = ?, ingested_at = ?
             WHERE tenant_id = ? AND id = ?",
        )
        .bind(chunks.len() as i64)
        .bind(chunks.len() as i64)
        .bind(chunks.len() as i64)
        .bind(at)
        .bind(at)
        .bind(&tenant)
        .bind(&doc_id)
        .execute(&mut *tx)
        .await?;
        let generation = Self::bump_generation(&mut tx, ctx, &kb).await?;
        tx.commit().await?;
        Ok(Some(Replaced { generation, removed, added }))
    }

    async fn fail_ingestion(&self, ctx: &TenantCtx, doc: DocId, sha256: &str, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE kb_documents SET status = 'failed', error = ?, updated_at = ?
             WHERE tenant_id = ? AND id = ? AND sha256 = ?",
        )
        .bind(error.chars().take(1_000).collect::<String>())
        .bind(to_micros(now()))
        .bind(ctx.tenant_id().to_string())
        .bind(doc.to_string())
        .bind(sha256)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending_ingestions(&self, _op: &OperatorCtx) -> Result<Vec<(TenantId, KbId, DocId)>> {
        let rows = sqlx::query(
            "SELECT tenant_id, kb_id, id FROM kb_documents WHERE status IN ('queued', 'processing') ORDER BY id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    decode(r.try_get::<&str, _>("tenant_id")?)?,
                    decode(r.try_get::<&str, _>("kb_id")?)?,
                    decode(r.try_get::<&str, _>("id")?)?,
                ))
            })
            .collect()
    }

    fn native_vector_search(&self) -> bool {
        false
    }

    async fn kb_vectors(&self, ctx: &TenantCtx, kb: KbId) -> Result<(i64, Vec<(i64, DocId, Vec<f32>)>)> {
        // One read transaction: the generation and the rows agree.
        let mut tx = self.read.begin().await?;
        let generation: i64 =
            sqlx::query_scalar("SELECT generation FROM knowledge_bases WHERE tenant_id = ? AND id = ?")
                .bind(ctx.tenant_id().to_string())
                .bind(kb.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound("knowledge base"))?;
        let rows =
            sqlx::query("SELECT id, doc_id, embedding FROM kb_chunks WHERE tenant_id = ? AND kb_id = ?")
                .bind(ctx.tenant_id().to_string())
                .bind(kb.to_string())
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let vectors = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("id")?,
                    decode(r.try_get::<&str, _>("doc_id")?)?,
                    vector_from_bytes(r.try_get::<&[u8], _>("embedding")?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((generation, vectors))
    }

    async fn vector_search(
        &self,
        _ctx: &TenantCtx,
        _kbs: &[KbId],
        _query: &[f32],
        _k: i64,
        _filter: &MetadataFilter,
    ) -> Result<Vec<(i64, f32)>> {
        Err(StoreError::Invalid(
            "SQLite has no vector index; the knowledge service searches in memory".into(),
        ))
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
        // Each term quoted: FTS5 sees words, never operators.
        let expr = terms.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(" OR ");
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT c.id, bm25(kb_chunks_fts) AS rank FROM kb_chunks_fts
             JOIN kb_chunks c ON c.id = kb_chunks_fts.rowid
             JOIN kb_documents d ON d.tenant_id = c.tenant_id AND d.id = c.doc_id
             WHERE kb_chunks_fts MATCH ",
        );
        q.push_bind(expr);
        q.push(" AND c.tenant_id = ");
        q.push_bind(ctx.tenant_id().to_string());
        push_kbs(&mut q, "c.kb_id", kbs);
        push_filter(&mut q, "d", filter);
        q.push(" ORDER BY rank LIMIT ");
        q.push_bind(k);
        let rows = q.build().fetch_all(&self.read).await?;
        // bm25() is lower-is-better; flip it so higher is better like cosine.
        rows.iter().map(|r| Ok((r.try_get("id")?, -(r.try_get::<f64, _>("rank")? as f32)))).collect()
    }

    async fn matching_documents(
        &self,
        ctx: &TenantCtx,
        kb: KbId,
        filter: &MetadataFilter,
    ) -> Result<Vec<DocId>> {
        validate_filter(filter)?;
        let mut q = QueryBuilder::<Sqlite>::new("SELECT d.id FROM kb_documents d WHERE d.tenant_id = ");
        q.push_bind(ctx.tenant_id().to_string());
        q.push(" AND d.kb_id = ");
        q.push_bind(kb.to_string());
        push_filter(&mut q, "d", filter);
        let rows = q.build().fetch_all(&self.read).await?;
        rows.iter().map(|r| decode(r.try_get::<&str, _>("id")?)).collect()
    }

    async fn chunks_by_id(&self, ctx: &TenantCtx, ids: &[i64]) -> Result<Vec<ChunkText>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT c.id, c.kb_id, c.doc_id, d.name AS doc_name, c.ord, c.text, c.heading, d.metadata
             FROM kb_chunks c JOIN kb_documents d ON d.tenant_id = c.tenant_id AND d.id = c.doc_id
             WHERE c.tenant_id = ",
        );
        q.push_bind(ctx.tenant_id().to_string());
        q.push(" AND c.id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        list.push_unseparated(")");
        let rows = q.build().fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| {
                Ok(ChunkText {
                    id: r.try_get("id")?,
                    kb_id: decode(r.try_get::<&str, _>("kb_id")?)?,
                    doc_id: decode(r.try_get::<&str, _>("doc_id")?)?,
                    doc_name: r.try_get("doc_name")?,
                    ord: r.try_get("ord")?,
                    text: r.try_get("text")?,
                    heading: r.try_get("heading")?,
                    doc_metadata: serde_json::from_str(r.try_get::<&str, _>("metadata")?)
                        .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))?,
                })
            })
            .collect()
    }

    async fn knowledge_usage(&self, ctx: &TenantCtx) -> Result<KnowledgeUsage> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM knowledge_bases WHERE tenant_id = ?1) AS kbs,
                    count(*) AS documents, coalesce(sum(chunks), 0) AS chunks, coalesce(sum(bytes), 0) AS bytes
             FROM kb_documents WHERE tenant_id = ?1",
        )
        .bind(ctx.tenant_id().to_string())
        .fetch_one(&self.read)
        .await?;
        Ok(KnowledgeUsage {
            knowledge_bases: row.try_get("kbs")?,
            documents: row.try_get("documents")?,
            chunks: row.try_get("chunks")?,
            bytes: row.try_get("bytes")?,
        })
    }
}
