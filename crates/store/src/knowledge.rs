//! Knowledge bases, their documents and chunks: the records of the
//! knowledge part. Chunking and embedding happen above (`bulkhead-knowledge`);
//! here documents are bytes with a status, and chunks are text with a vector.
//!
//! Document states: `queued` (uploaded, waiting for the ingestion job) →
//! `processing` → `ready` | `failed`. A document's chunks are replaced in one
//! transaction when its ingestion finishes, so a search sees the old set or
//! the new one, never half of either, and a failed ingestion leaves the last
//! good set (or none) — no orphans. Re-uploading a document under the same
//! name replaces it; identical bytes change nothing.
//!
//! Vector search lives in the tenant's own namespace: PostgreSQL keeps each
//! tenant's chunks in a list partition of its own (with the HNSW index as a
//! partition of the parent's), so a search neither scans nor ranks another
//! tenant's rows; SQLite has no vector index of its own, and the knowledge
//! service keeps one in memory per (tenant, knowledge base), loaded through
//! [`KnowledgeStore::kb_vectors`]. Every knowledge base has a `generation`
//! that changes whenever its chunks do, so such a copy knows when it is stale.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{DocId, Error, KbId, OperatorCtx, TenantCtx, TenantId};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{Result, StoreError};

/// Dimensions a knowledge base's vectors may have (pgvector's HNSW indexes
/// `vector` up to 2,000).
pub const MAX_DIMS: i32 = 2_000;
/// Names of documents and knowledge bases: at most this many characters.
pub const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub struct KnowledgeBase {
    pub id: KbId,
    pub name: String,
    pub description: String,
    /// The catalog model that embeds its chunks and its queries.
    pub embedding_model: String,
    pub dims: i32,
    pub chunk_tokens: i32,
    pub chunk_overlap: i32,
    /// Changes whenever the set of chunks does.
    pub generation: i64,
    pub documents: i64,
    pub chunks: i64,
    /// Bytes of the documents as uploaded.
    pub bytes: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct NewKnowledgeBase {
    pub name: String,
    pub description: String,
    pub embedding_model: String,
    pub dims: i32,
    pub chunk_tokens: i32,
    pub chunk_overlap: i32,
}

impl NewKnowledgeBase {
    pub fn validate(&self) -> Result<()> {
        validate_name("knowledge base name", &self.name)?;
        if self.description.chars().count() > 2_000 {
            return Err(StoreError::Invalid("description must be at most 2000 characters".into()));
        }
        if self.embedding_model.is_empty() || self.embedding_model.len() > 200 {
            return Err(StoreError::Invalid("embedding_model must be 1-200 characters".into()));
        }
        if !(1..=MAX_DIMS).contains(&self.dims) {
            return Err(StoreError::Invalid(format!("dims must be between 1 and {MAX_DIMS}")));
        }
        if !(16..=8_192).contains(&self.chunk_tokens) {
            return Err(StoreError::Invalid("chunk_tokens must be between 16 and 8192".into()));
        }
        if self.chunk_overlap < 0 || self.chunk_overlap >= self.chunk_tokens {
            return Err(StoreError::Invalid(
                "chunk_overlap must be at least 0 and below chunk_tokens".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocStatus {
    Queued,
    Processing,
    Ready,
    Failed,
}

impl DocStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DocStatus::Queued => "queued",
            DocStatus::Processing => "processing",
            DocStatus::Ready => "ready",
            DocStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for DocStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DocStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "queued" => DocStatus::Queued,
            "processing" => DocStatus::Processing,
            "ready" => DocStatus::Ready,
            "failed" => DocStatus::Failed,
            other => return Err(Error::invalid(format!("unknown document status `{other}`"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: DocId,
    pub kb_id: KbId,
    pub name: String,
    /// `text`, `markdown` or `html`.
    pub format: String,
    /// SHA-256 (hex) of the bytes.
    pub sha256: String,
    pub bytes: i64,
    pub status: DocStatus,
    pub error: Option<String>,
    /// Chunks searchable now (the last good ingestion's).
    pub chunks: i64,
    /// Ingestion progress: chunks embedded of the chunks to embed.
    pub progress_done: i64,
    pub progress_total: i64,
    pub metadata: Value,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub ingested_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct NewDocument {
    pub name: String,
    pub format: String,
    pub content: Vec<u8>,
    pub sha256: String,
    pub metadata: Value,
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Upserted {
    Created(Document),
    /// Same name, other bytes: queued again; its old chunks stay searchable
    /// until the new ones replace them.
    Replaced(Document),
    /// Same name and bytes: nothing to do.
    Unchanged(Document),
}

impl Upserted {
    pub fn document(&self) -> &Document {
        match self {
            Upserted::Created(d) | Upserted::Replaced(d) | Upserted::Unchanged(d) => d,
        }
    }
}

/// A chunk to store.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub ord: i32,
    pub text: String,
    pub tokens: i32,
    pub heading: Option<String>,
    pub embedding: Vec<f32>,
}

/// A stored chunk, for showing and for context.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkText {
    pub id: i64,
    pub kb_id: KbId,
    pub doc_id: DocId,
    pub doc_name: String,
    pub ord: i32,
    pub text: String,
    pub heading: Option<String>,
    pub doc_metadata: Value,
}

/// The outcome of replacing a document's chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct Replaced {
    pub generation: i64,
    pub removed: Vec<i64>,
    pub added: Vec<i64>,
}

/// A tenant's knowledge storage, for usage and limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KnowledgeUsage {
    pub knowledge_bases: i64,
    pub documents: i64,
    pub chunks: i64,
    pub bytes: i64,
}

/// Equality filters on document metadata: key → string, number or boolean.
pub type MetadataFilter = serde_json::Map<String, Value>;

pub fn validate_filter(filter: &MetadataFilter) -> Result<()> {
    if filter.len() > 16 {
        return Err(StoreError::Invalid("at most 16 metadata filters".into()));
    }
    for (key, value) in filter {
        if key.is_empty()
            || key.len() > 64
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(StoreError::Invalid(format!(
                "filter key {key:?} must be 1-64 characters of letters, digits, `_` and `-`"
            )));
        }
        if !(value.is_string() || value.is_number() || value.is_boolean()) {
            return Err(StoreError::Invalid(format!(
                "filter value of {key:?} must be a string, number or boolean"
            )));
        }
    }
    Ok(())
}

pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!("{what} must be 1-{MAX_NAME_CHARS} printable characters")));
    }
    Ok(())
}

pub fn validate_format(format: &str) -> Result<()> {
    match format {
        "text" | "markdown" | "html" => Ok(()),
        _ => Err(StoreError::Invalid("format must be `text`, `markdown` or `html`".into())),
    }
}

/// The words of a free-text query, for full-text search: letters and digits
/// only (so no query syntax of either backend gets through), at most 32.
pub fn query_terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    terms.dedup();
    terms.truncate(32);
    terms
}

/// Vectors as little-endian f32 bytes (SQLite's BLOB form).
pub fn vector_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn vector_from_bytes(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(StoreError::Db(sqlx::Error::Decode("a vector blob is not a whole number of f32".into())));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

pub(crate) fn check_chunks(kb: &KnowledgeBase, chunks: &[NewChunk]) -> Result<()> {
    for c in chunks {
        if c.embedding.len() != kb.dims as usize {
            return Err(StoreError::Invalid(format!(
                "a chunk's vector has {} dimensions; the knowledge base has {}",
                c.embedding.len(),
                kb.dims
            )));
        }
        if c.embedding.iter().any(|x| !x.is_finite()) {
            return Err(StoreError::Invalid("a chunk's vector is not finite".into()));
        }
    }
    Ok(())
}

#[async_trait]
pub trait KnowledgeStore: Send + Sync {
    async fn create_kb(&self, ctx: &TenantCtx, new: &NewKnowledgeBase) -> Result<KnowledgeBase>;
    async fn list_kbs(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<KnowledgeBase>>;
    async fn get_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<KnowledgeBase>;
    async fn find_kb(&self, ctx: &TenantCtx, name: &str) -> Result<KnowledgeBase>;
    /// Removes the knowledge base with its documents, chunks and vectors.
    async fn delete_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<()>;

    /// Stores an upload and queues it for ingestion (see [`Upserted`]).
    async fn upsert_document(&self, ctx: &TenantCtx, kb: KbId, new: &NewDocument) -> Result<Upserted>;
    async fn list_documents(&self, ctx: &TenantCtx, kb: KbId, page: PageReq) -> Result<Page<Document>>;
    async fn get_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Document>;
    async fn document_content(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Vec<u8>>;
    /// Removes the document and its chunks; returns the chunk ids removed
    /// and the knowledge base's new generation.
    async fn delete_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Replaced>;

    /// Marks a queued (or interrupted) document as being processed, unless
    /// its bytes changed since (`sha256`) or it is gone; whether to go on.
    async fn start_ingestion(&self, ctx: &TenantCtx, doc: DocId, sha256: &str, total: i64) -> Result<bool>;
    async fn ingestion_progress(&self, ctx: &TenantCtx, doc: DocId, done: i64) -> Result<()>;
    /// Replaces the document's chunks by `chunks` and marks it ready — in one
    /// transaction, and only if its bytes are still `sha256` (else `None`:
    /// a newer upload will be ingested instead).
    async fn finish_ingestion(
        &self,
        ctx: &TenantCtx,
        doc: DocId,
        sha256: &str,
        chunks: &[NewChunk],
    ) -> Result<Option<Replaced>>;
    /// Marks the document failed; its last good chunks stay.
    async fn fail_ingestion(&self, ctx: &TenantCtx, doc: DocId, sha256: &str, error: &str) -> Result<()>;
    /// Documents whose ingestion is pending (queued, or interrupted while
    /// processing), for the job runner to pick up after a restart.
    async fn pending_ingestions(&self, op: &OperatorCtx) -> Result<Vec<(TenantId, KbId, DocId)>>;

    /// Whether this backend searches vectors itself ([`Self::vector_search`]).
    fn native_vector_search(&self) -> bool;
    /// Every vector of a knowledge base with its document, and the
    /// generation they belong to (for an in-memory index).
    async fn kb_vectors(&self, ctx: &TenantCtx, kb: KbId) -> Result<(i64, Vec<(i64, DocId, Vec<f32>)>)>;
    /// Nearest chunks by cosine similarity (best first), within the given
    /// knowledge bases of one dimension, optionally only documents passing
    /// the filter. Backends without `native_vector_search` refuse.
    async fn vector_search(
        &self,
        ctx: &TenantCtx,
        kbs: &[KbId],
        query: &[f32],
        k: i64,
        filter: &MetadataFilter,
    ) -> Result<Vec<(i64, f32)>>;
    /// Full-text matches of any of `terms` (best first).
    async fn text_search(
        &self,
        ctx: &TenantCtx,
        kbs: &[KbId],
        terms: &[String],
        k: i64,
        filter: &MetadataFilter,
    ) -> Result<Vec<(i64, f32)>>;
    /// Documents of a knowledge base whose metadata passes the filter.
    async fn matching_documents(
        &self,
        ctx: &TenantCtx,
        kb: KbId,
        filter: &MetadataFilter,
    ) -> Result<Vec<DocId>>;
    /// The chunks with these ids that belong to the tenant (others are
    /// silently absent: ids come from the tenant's own indexes).
    async fn chunks_by_id(&self, ctx: &TenantCtx, ids: &[i64]) -> Result<Vec<ChunkText>>;
    async fn knowledge_usage(&self, ctx: &TenantCtx) -> Result<KnowledgeUsage>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_strip_query_syntax() {
        assert_eq!(query_terms("\"a\" OR b* NEAR(c) -d"), ["a", "or", "b", "near", "c", "d"]);
        assert!(query_terms("  ''  ").is_empty());
    }

    #[test]
    fn vectors_round_trip() {
        let v = vec![0.5f32, -1.25, 3.0];
        assert_eq!(vector_from_bytes(&vector_to_bytes(&v)).unwrap(), v);
        assert!(vector_from_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn filters_are_checked() {
        let ok: MetadataFilter =
            serde_json::from_str(r#"{"lang": "en", "year": 2024, "draft": false}"#).unwrap();
        assert!(validate_filter(&ok).is_ok());
        let bad: MetadataFilter = serde_json::from_str(r#"{"a') OR 1=1 --": "x"}"#).unwrap();
        assert!(validate_filter(&bad).is_err());
        let nested: MetadataFilter = serde_json::from_str(r#"{"a": {"b": 1}}"#).unwrap();
        assert!(validate_filter(&nested).is_err());
    }
}
