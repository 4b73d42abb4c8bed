//! The knowledge service: a tenant's knowledge bases from upload to search.
//!
//! - **Upload** checks the document at once (size, encoding, that it chunks
//!   at all) and answers with a clear 4xx before anything is written; then
//!   the store keeps the bytes and queues the document.
//! - **Ingestion** is a job: chunk → embed in batches (progress in the
//!   document row) → replace the document's chunks in one transaction. A
//!   failure marks the document `failed` and leaves its last good chunks; a
//!   newer upload of the same name makes an older job's result be dropped.
//!   Jobs left over by a stopped process are picked up on start.
//! - **Search** is hybrid: the tenant's vector namespace (pgvector's
//!   per-tenant partition, or in SQLite mode an in-memory [`VectorIndex`] per
//!   (tenant, knowledge base)) and full text, fused by reciprocal rank; with
//!   metadata filters. Results are [`TenantBound`], for context assembly.
//!
//! Invariants, as absences: no method takes a tenant id — every one takes
//! `&TenantCtx`; no index is shared between tenants or knowledge bases, so
//! no search can rank another tenant's chunk; no half-ingested document is
//! ever searchable.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bulkhead_core::config::KnowledgeConfig;
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::{Code, DocId, Error, KbId, Money, OperatorCtx, TenantBound, TenantCtx, TenantId};
use bulkhead_metering::Metering;
use bulkhead_store::knowledge::query_terms;
use bulkhead_store::{
    ChunkText, DocStatus, Document, DynStore, KnowledgeBase, MetadataFilter, NewChunk, NewDocument,
    NewKnowledgeBase, Replaced, Upserted, UsageEvent, UsageKind,
};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::embedding::{EmbedTags, Embedding, LOCAL_DIMS, LOCAL_MODEL};
use crate::index::{IndexConfig, VectorIndex};
use crate::{DocFormat, decode_document, reciprocal_rank_fusion};

/// Chunks embedded per call (and per progress update).
const EMBED_BATCH: usize = 32;
/// Most results a search returns.
pub const MAX_K: usize = 50;
/// Jobs waiting in this process; more wait in the store until a restart
/// or until the queue drains (see `Knowledge::requeue_pending`).
const JOB_QUEUE: usize = 10_000;

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    #[default]
    Hybrid,
    Vector,
    Text,
}

impl std::str::FromStr for SearchMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "hybrid" => Ok(Self::Hybrid),
            "vector" => Ok(Self::Vector),
            "text" => Ok(Self::Text),
            _ => Err(Error::invalid("mode must be `hybrid`, `vector` or `text`")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    pub kbs: Vec<KbId>,
    pub k: usize,
    pub mode: SearchMode,
    pub filter: MetadataFilter,
    pub request_id: Option<String>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub chunk_id: i64,
    pub kb_id: KbId,
    pub doc_id: DocId,
    pub doc_name: String,
    pub ord: i32,
    pub text: String,
    pub metadata: serde_json::Value,
    /// The fused score (reciprocal rank fusion), or the single list's score.
    pub score: f64,
    /// Cosine similarity, when the vector search found it.
    pub vector_score: Option<f32>,
    /// Full-text rank, when the text search found it.
    pub text_score: Option<f32>,
}

/// A new knowledge base, as asked for.
#[derive(Debug, Clone, Default)]
pub struct KbRequest {
    pub name: String,
    pub description: String,
    /// A model name or alias; the tenant's `embedding` task model if absent.
    pub embedding_model: Option<String>,
    pub chunk_tokens: Option<i32>,
    pub chunk_overlap: Option<i32>,
}

/// An upload, as received.
#[derive(Debug, Clone)]
pub struct Upload {
    pub name: String,
    /// `text`, `markdown` or `html`; guessed from the name when absent.
    pub format: Option<String>,
    pub content: Vec<u8>,
    pub metadata: serde_json::Value,
}

struct Job {
    ctx: TenantCtx,
    kb: KbId,
    doc: DocId,
}

/// The format a document name suggests.
pub fn guess_format(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".md") || lower.ends_with(".markdown") {
        "markdown"
    } else if lower.ends_with(".html") || lower.ends_with(".htm") {
        "html"
    } else {
        "text"
    }
}

fn doc_format(format: &str) -> Result<DocFormat, Error> {
    match format {
        "text" => Ok(DocFormat::Text),
        "markdown" => Ok(DocFormat::Markdown),
        "html" => Ok(DocFormat::Html),
        _ => Err(Error::invalid("format must be `text`, `markdown` or `html`")),
    }
}

/// An in-memory index of one (tenant, knowledge base), SQLite mode.
struct KbIndex {
    generation: i64,
    index: VectorIndex,
    docs: HashMap<i64, DocId>,
}

/// In-memory indexes by (tenant, knowledge base), least recently used
/// dropped past a memory budget. Each slot has its own async lock, so a
/// cold base loads once however many searches wait for it.
struct IndexCache {
    slots: Mutex<HashMap<(TenantId, KbId), Slot>>,
    budget_bytes: usize,
    config: IndexConfig,
}

struct Slot {
    cell: Arc<tokio::sync::Mutex<Option<Arc<KbIndex>>>>,
    last_used: std::time::Instant,
    bytes: usize,
}

impl IndexCache {
    fn slot(&self, ctx: &TenantCtx, kb: KbId) -> Arc<tokio::sync::Mutex<Option<Arc<KbIndex>>>> {
        let mut slots = self.slots.lock().expect("index cache");
        let slot = slots.entry((ctx.tenant_id(), kb)).or_insert_with(|| Slot {
            cell: Arc::new(tokio::sync::Mutex::new(None)),
            last_used: std::time::Instant::now(),
            bytes: 0,
        });
        slot.last_used = std::time::Instant::now();
        slot.cell.clone()
    }

    fn forget(&self, ctx: &TenantCtx, kb: KbId) {
        self.slots.lock().expect("index cache").remove(&(ctx.tenant_id(), kb));
    }

    /// Records a slot's size and drops the least recently used slots while
    /// the total is over budget (never the one just used).
    fn account(&self, ctx: &TenantCtx, kb: KbId, bytes: usize) {
        let mut slots = self.slots.lock().expect("index cache");
        let key = (ctx.tenant_id(), kb);
        if let Some(s) = slots.get_mut(&key) {
            s.bytes = bytes;
        }
        let mut total: usize = slots.values().map(|s| s.bytes).sum();
        while total > self.budget_bytes {
            let Some(victim) = slots
                .iter()
                .filter(|(k, s)| **k != key && s.bytes > 0)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            total -= slots.remove(&victim).map_or(0, |s| s.bytes);
        }
    }
}

/// The knowledge service. Cheap to clone.
#[derive(Clone)]
pub struct Knowledge {
    inner: Arc<Inner>,
}

struct Inner {
    store: DynStore,
    embedding: Embedding,
    metering: Metering,
    config: KnowledgeConfig,
    indexes: IndexCache,
    jobs: mpsc::Sender<Job>,
    queue: tokio::sync::Mutex<Option<mpsc::Receiver<Job>>>,
}

impl Knowledge {
    pub fn new(store: DynStore, embedding: Embedding, metering: Metering, config: KnowledgeConfig) -> Self {
        let (tx, rx) = mpsc::channel(JOB_QUEUE);
        let indexes = IndexCache {
            slots: Mutex::new(HashMap::new()),
            budget_bytes: config.index_cache_mb.saturating_mul(1024 * 1024),
            config: IndexConfig { exact_limit: config.exact_limit, ..IndexConfig::default() },
        };
        Self {
            inner: Arc::new(Inner {
                store,
                embedding,
                metering,
                config,
                indexes,
                jobs: tx,
                queue: tokio::sync::Mutex::new(Some(rx)),
            }),
        }
    }

    pub fn embedding(&self) -> &Embedding {
        &self.inner.embedding
    }

    pub fn config(&self) -> &KnowledgeConfig {
        &self.inner.config
    }

    // ---- knowledge bases -------------------------------------------------

    pub async fn create_kb(&self, ctx: &TenantCtx, req: KbRequest) -> Result<KnowledgeBase, Error> {
        let model = self.inner.embedding.resolve(ctx, req.embedding_model.as_deref()).await?;
        let dims = if model == LOCAL_MODEL {
            LOCAL_DIMS as i32
        } else {
            // The provider tells: one probe embedding, metered like any.
            let probe = self
                .inner
                .embedding
                .embed(
                    ctx,
                    &model,
                    &["dimension probe".to_owned()],
                    &EmbedTags {
                        event_id: format!("kb-probe-{}", uuid::Uuid::now_v7()),
                        ..Default::default()
                    },
                )
                .await?;
            probe.vectors.first().map_or(0, Vec::len) as i32
        };
        let new = NewKnowledgeBase {
            name: req.name,
            description: req.description,
            embedding_model: model,
            dims,
            chunk_tokens: req.chunk_tokens.unwrap_or(self.inner.config.chunk_tokens),
            chunk_overlap: req.chunk_overlap.unwrap_or(self.inner.config.chunk_overlap),
        };
        if new.embedding_model == LOCAL_MODEL && new.chunk_tokens > 254 {
            return Err(Error::invalid(
                "chunks for all-MiniLM-L6-v2 can be at most 254 tokens (256 with [CLS] and [SEP])",
            ));
        }
        Ok(self.inner.store.create_kb(ctx, &new).await?)
    }

    pub async fn list_kbs(&self, ctx: &TenantCtx, page: PageReq) -> Result<Page<KnowledgeBase>, Error> {
        Ok(self.inner.store.list_kbs(ctx, page).await?)
    }

    pub async fn get_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<KnowledgeBase, Error> {
        Ok(self.inner.store.get_kb(ctx, id).await?)
    }

    pub async fn find_kb(&self, ctx: &TenantCtx, name: &str) -> Result<KnowledgeBase, Error> {
        Ok(self.inner.store.find_kb(ctx, name).await?)
    }

    pub async fn delete_kb(&self, ctx: &TenantCtx, id: KbId) -> Result<(), Error> {
        self.inner.store.delete_kb(ctx, id).await?;
        self.inner.indexes.forget(ctx, id);
        Ok(())
    }

    // ---- documents -------------------------------------------------------

    /// Checks uploads — all of them before any is stored, so a bad one
    /// among several writes nothing — and queues them; see the module docs.
    pub async fn upload_all(
        &self,
        ctx: &TenantCtx,
        kb: KbId,
        uploads: Vec<Upload>,
    ) -> Result<Vec<Upserted>, Error> {
        let base = self.inner.store.get_kb(ctx, kb).await?;
        let mut names = HashSet::new();
        let mut checked = Vec::with_capacity(uploads.len());
        for upload in uploads {
            if !names.insert(upload.name.clone()) {
                return Err(Error::invalid(format!("the document name {:?} appears twice", upload.name)));
            }
            let name = upload.name.clone();
            let new = self.check_upload(&base, upload).await.map_err(|mut e| {
                e.message = format!("{name}: {}", e.message).into();
                e
            })?;
            checked.push(new);
        }
        let mut done = Vec::with_capacity(checked.len());
        for new in &checked {
            let upserted = self.inner.store.upsert_document(ctx, kb, new).await?;
            if !matches!(upserted, Upserted::Unchanged(_)) && upserted.document().status == DocStatus::Queued
            {
                self.enqueue(ctx, kb, upserted.document().id);
            }
            done.push(upserted);
        }
        Ok(done)
    }

    async fn check_upload(&self, base: &KnowledgeBase, upload: Upload) -> Result<NewDocument, Error> {
        let max = self.inner.config.max_document_bytes;
        if upload.content.len() > max {
            return Err(Error::new(
                Code::PayloadTooLarge,
                format!("the document has {} bytes; at most {max} are accepted", upload.content.len()),
            ));
        }
        let format = upload.format.clone().unwrap_or_else(|| guess_format(&upload.name).to_owned());
        let doc_format = doc_format(&format)?;
        let text = decode_document(&upload.content)?;
        // Chunk now, so that a document that cannot be ingested is refused
        // here rather than failing later in the job.
        let chunker = self.chunker(base).await?;
        let chunks = chunker.chunk(text, doc_format)?;
        if chunks.is_empty() {
            return Err(Error::invalid("the document has no text to index"));
        }
        Ok(NewDocument {
            name: upload.name,
            format,
            sha256: hex(&Sha256::digest(&upload.content)),
            content: upload.content,
            metadata: upload.metadata,
        })
    }

    async fn chunker(&self, base: &KnowledgeBase) -> Result<crate::Chunker, Error> {
        self.inner.embedding.chunker(base.chunk_tokens as usize, base.chunk_overlap as usize).await
    }

    pub async fn list_documents(
        &self,
        ctx: &TenantCtx,
        kb: KbId,
        page: PageReq,
    ) -> Result<Page<Document>, Error> {
        Ok(self.inner.store.list_documents(ctx, kb, page).await?)
    }

    pub async fn get_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<Document, Error> {
        Ok(self.inner.store.get_document(ctx, kb, doc).await?)
    }

    pub async fn delete_document(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<(), Error> {
        let replaced = self.inner.store.delete_document(ctx, kb, doc).await?;
        self.apply(ctx, kb, &replaced, &[], doc).await;
        Ok(())
    }

    // ---- ingestion -------------------------------------------------------

    fn enqueue(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) {
        // A full queue leaves the document queued in the store; the next
        // `requeue_pending` (each start, and whenever the queue drains) takes it.
        if self.inner.jobs.try_send(Job { ctx: ctx.clone(), kb, doc }).is_err() {
            tracing::warn!(tenant = %ctx.tenant_id(), %doc, "ingestion queue full; the document waits in the store");
        }
    }

    /// Queues every document a stopped process left pending.
    pub async fn requeue_pending(&self) -> Result<usize, Error> {
        let op = OperatorCtx::local_cli();
        let pending = self.inner.store.pending_ingestions(&op).await?;
        let n = pending.len();
        for (tenant, kb, doc) in pending {
            self.enqueue(&op.act_for(tenant), kb, doc);
        }
        Ok(n)
    }

    /// Runs ingestion jobs until `shutdown` resolves: `ingest_workers` at a
    /// time. Call once per process.
    pub async fn run_jobs(&self, shutdown: impl std::future::Future<Output = ()>) {
        let Some(mut rx) = self.inner.queue.lock().await.take() else {
            tracing::error!("the ingestion job runner was started twice");
            return;
        };
        if let Err(e) = self.requeue_pending().await {
            tracing::error!(error = %e, "could not requeue pending ingestions");
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(self.inner.config.ingest_workers.max(1)));
        tokio::pin!(shutdown);
        loop {
            let job = tokio::select! {
                _ = &mut shutdown => break,
                job = rx.recv() => match job { Some(j) => j, None => break },
            };
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = this.ingest(&job.ctx, job.kb, job.doc).await {
                    tracing::warn!(tenant = %job.ctx.tenant_id(), doc = %job.doc, error = %e, "ingestion failed");
                }
            });
        }
    }

    /// Ingests one document now (the job's body; the CLI calls it
    /// directly). `progress` hears (done, total) chunks.
    pub async fn ingest_with(
        &self,
        ctx: &TenantCtx,
        kb: KbId,
        doc: DocId,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<Option<Document>, Error> {
        let store = &self.inner.store;
        let document = match store.get_document(ctx, kb, doc).await {
            Ok(d) => d,
            Err(bulkhead_store::StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if !matches!(document.status, DocStatus::Queued | DocStatus::Processing) {
            return Ok(Some(document));
        }
        let base = store.get_kb(ctx, kb).await?;
        let sha = document.sha256.clone();
        let result = self.embed_document(ctx, &base, &document, progress).await;
        match result {
            Ok(Some(chunks)) => {
                let Some(replaced) = store.finish_ingestion(ctx, doc, &sha, &chunks).await? else {
                    return Ok(None); // replaced or deleted meanwhile
                };
                self.apply(ctx, kb, &replaced, &chunks, doc).await;
                self.record_storage(ctx, &document, chunks.len()).await;
                Ok(Some(store.get_document(ctx, kb, doc).await?))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                let message = if e.code == Code::Internal {
                    "internal error".to_owned()
                } else {
                    e.message.to_string()
                };
                store.fail_ingestion(ctx, doc, &sha, &message).await?;
                Err(e)
            }
        }
    }

    async fn ingest(&self, ctx: &TenantCtx, kb: KbId, doc: DocId) -> Result<(), Error> {
        self.ingest_with(ctx, kb, doc, &|_, _| {}).await.map(|_| ())
    }

    /// Chunks and embeds; `None` when the document changed under us.
    async fn embed_document(
        &self,
        ctx: &TenantCtx,
        base: &KnowledgeBase,
        document: &Document,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<Option<Vec<NewChunk>>, Error> {
        let store = &self.inner.store;
        let content = store.document_content(ctx, base.id, document.id).await?;
        let chunker = self.chunker(base).await?;
        let format = doc_format(&document.format)?;
        let chunks = tokio::task::spawn_blocking(move || chunker.chunk_bytes(&content, format))
            .await
            .map_err(|e| Error::internal(format!("chunking: {e}")))??;
        let total = chunks.len();
        if !store.start_ingestion(ctx, document.id, &document.sha256, total as i64).await? {
            return Ok(None);
        }
        progress(0, total);
        let mut out = Vec::with_capacity(total);
        for (batch_no, batch) in chunks.chunks(EMBED_BATCH).enumerate() {
            let texts: Vec<String> = batch.iter().map(|c| c.text.clone()).collect();
            let tags = EmbedTags {
                event_id: format!("ingest-{}-{}-{batch_no}", document.id, &document.sha256[..16]),
                request_id: None,
                attributes: json!({"kb_id": base.id.to_string(), "doc_id": document.id.to_string()}),
            };
            let embedded = self.inner.embedding.embed(ctx, &base.embedding_model, &texts, &tags).await?;
            for (c, v) in batch.iter().zip(embedded.vectors) {
                if v.len() != base.dims as usize {
                    return Err(Error::new(
                        Code::Unavailable,
                        format!("the embedding model returned {} dimensions, not {}", v.len(), base.dims),
                    ));
                }
                out.push(NewChunk {
                    ord: c.index as i32,
                    text: c.text.clone(),
                    tokens: c.tokens as i32,
                    heading: None,
                    embedding: v,
                });
            }
            store.ingestion_progress(ctx, document.id, out.len() as i64).await?;
            progress(out.len(), total);
        }
        Ok(Some(out))
    }

    async fn record_storage(&self, ctx: &TenantCtx, document: &Document, chunks: usize) {
        let event = UsageEvent {
            id: format!("storage-{}-{}", document.id, &document.sha256[..16]),
            ts: OffsetDateTime::now_utc(),
            kind: UsageKind::Storage,
            name: "knowledge".into(),
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            quantity: document.bytes,
            unit: Some("bytes".into()),
            cost: Money::ZERO,
            run_id: None,
            agent_id: None,
            request_id: None,
            attributes: json!({
                "kb_id": document.kb_id.to_string(), "doc_id": document.id.to_string(), "chunks": chunks,
            }),
        };
        if let Err(e) = self.inner.metering.record(ctx, event).await {
            tracing::warn!(error = %e, "could not record knowledge storage usage");
        }
    }

    /// Brings an in-memory index up to a change made by this process, or
    /// drops it when it missed another change (it reloads on next use).
    async fn apply(&self, ctx: &TenantCtx, kb: KbId, replaced: &Replaced, chunks: &[NewChunk], doc: DocId) {
        if self.inner.store.native_vector_search() {
            return;
        }
        let cell = self.inner.indexes.slot(ctx, kb);
        let mut guard = cell.lock().await;
        let Some(current) = guard.take() else { return };
        if current.generation + 1 != replaced.generation {
            return; // stale: leave the slot empty
        }
        let mut next = match Arc::try_unwrap(current) {
            Ok(idx) => idx,
            Err(_) => return, // a search holds it; reload next time
        };
        let items: Vec<(i64, Vec<f32>)> =
            replaced.added.iter().zip(chunks).map(|(id, c)| (*id, c.embedding.clone())).collect();
        let removed = replaced.removed.clone();
        let generation = replaced.generation;
        // Graph inserts cost ~1 ms each: off the async threads.
        let updated = tokio::task::spawn_blocking(move || {
            for id in &removed {
                next.index.remove(*id);
                next.docs.remove(id);
            }
            next.index.insert_batch(&items).ok()?;
            next.docs.extend(items.iter().map(|(id, _)| (*id, doc)));
            next.generation = generation;
            Some(next)
        })
        .await;
        let Ok(Some(next)) = updated else { return };
        let bytes = next.index.memory_bytes();
        *guard = Some(Arc::new(next));
        drop(guard);
        self.inner.indexes.account(ctx, kb, bytes);
    }

    // ---- search ----------------------------------------------------------

    /// The in-memory index of a knowledge base at its current generation.
    async fn index(&self, ctx: &TenantCtx, base: &KnowledgeBase) -> Result<Arc<KbIndex>, Error> {
        let cell = self.inner.indexes.slot(ctx, base.id);
        let mut guard = cell.lock().await;
        if let Some(idx) = guard.as_ref()
            && idx.generation == base.generation
        {
            let idx = idx.clone();
            drop(guard);
            // A graph built in the background since grows the footprint.
            self.inner.indexes.account(ctx, base.id, idx.index.memory_bytes());
            return Ok(idx);
        }
        let (generation, vectors) = self.inner.store.kb_vectors(ctx, base.id).await?;
        let dims = base.dims as usize;
        let config = self.inner.indexes.config;
        let built = tokio::task::spawn_blocking(move || -> Result<KbIndex, Error> {
            let index = VectorIndex::new(dims, config);
            let mut docs = HashMap::with_capacity(vectors.len());
            let mut items = Vec::with_capacity(vectors.len());
            for (id, doc, v) in vectors {
                docs.insert(id, doc);
                items.push((id, v));
            }
            index.insert_batch(&items)?;
            Ok(KbIndex { generation, index, docs })
        })
        .await
        .map_err(|e| Error::internal(format!("loading an index: {e}")))??;
        let built = Arc::new(built);
        let bytes = built.index.memory_bytes();
        *guard = Some(built.clone());
        drop(guard);
        self.inner.indexes.account(ctx, base.id, bytes);
        Ok(built)
    }

    /// Hybrid search over the tenant's knowledge bases; see the module docs.
    pub async fn search(&self, ctx: &TenantCtx, req: &SearchRequest) -> Result<Vec<TenantBound<Hit>>, Error> {
        if req.query.trim().is_empty() {
            return Err(Error::invalid("query must not be empty"));
        }
        if req.query.len() > 4_000 {
            return Err(Error::invalid("query must be at most 4000 bytes"));
        }
        if !(1..=MAX_K).contains(&req.k) {
            return Err(Error::invalid(format!("k must be between 1 and {MAX_K}")));
        }
        if req.kbs.is_empty() {
            return Err(Error::invalid("name at least one knowledge base"));
        }
        bulkhead_store::knowledge::validate_filter(&req.filter)?;
        let store = &self.inner.store;
        let mut bases = Vec::with_capacity(req.kbs.len());
        let mut seen = HashSet::new();
        for id in &req.kbs {
            if seen.insert(*id) {
                bases.push(store.get_kb(ctx, *id).await?);
            }
        }
        let candidates = (req.k * 4).max(40);

        let mut vector_hits: Vec<(i64, f32)> = Vec::new();
        if req.mode != SearchMode::Text {
            // One query embedding per model; bases of one model search together.
            let mut by_model: HashMap<&str, Vec<&KnowledgeBase>> = HashMap::new();
            for b in &bases {
                by_model.entry(b.embedding_model.as_str()).or_default().push(b);
            }
            for (model, group) in by_model {
                let tags = EmbedTags {
                    event_id: format!("search-{}", uuid::Uuid::now_v7()),
                    request_id: req.request_id.clone(),
                    attributes: json!({"purpose": "search"}),
                };
                let q =
                    self.inner.embedding.embed(ctx, model, std::slice::from_ref(&req.query), &tags).await?;
                let q = q.vectors.into_iter().next().unwrap_or_default();
                if store.native_vector_search() {
                    let ids: Vec<KbId> = group.iter().map(|b| b.id).collect();
                    vector_hits
                        .extend(store.vector_search(ctx, &ids, &q, candidates as i64, &req.filter).await?);
                } else {
                    for base in group {
                        vector_hits
                            .extend(self.search_in_memory(ctx, base, &q, candidates, &req.filter).await?);
                    }
                }
            }
            vector_hits.sort_by(|a, b| b.1.total_cmp(&a.1));
            vector_hits.truncate(candidates);
        }
        let mut text_hits: Vec<(i64, f32)> = Vec::new();
        if req.mode != SearchMode::Vector {
            let terms = query_terms(&req.query);
            let ids: Vec<KbId> = bases.iter().map(|b| b.id).collect();
            text_hits = store.text_search(ctx, &ids, &terms, candidates as i64, &req.filter).await?;
        }

        let ranked: Vec<(i64, f64)> = match req.mode {
            SearchMode::Vector => vector_hits.iter().map(|(id, s)| (*id, f64::from(*s))).collect(),
            SearchMode::Text => text_hits.iter().map(|(id, s)| (*id, f64::from(*s))).collect(),
            SearchMode::Hybrid => {
                let v: Vec<i64> = vector_hits.iter().map(|(id, _)| *id).collect();
                let t: Vec<i64> = text_hits.iter().map(|(id, _)| *id).collect();
                reciprocal_rank_fusion(&[&v, &t], 60.0)
            }
        };
        let top: Vec<(i64, f64)> = ranked.into_iter().take(req.k).collect();
        let ids: Vec<i64> = top.iter().map(|(id, _)| *id).collect();
        let texts: HashMap<i64, ChunkText> =
            store.chunks_by_id(ctx, &ids).await?.into_iter().map(|c| (c.id, c)).collect();
        let vscore: HashMap<i64, f32> = vector_hits.into_iter().collect();
        let tscore: HashMap<i64, f32> = text_hits.into_iter().collect();
        Ok(top
            .into_iter()
            .filter_map(|(id, score)| {
                let c = texts.get(&id)?;
                Some(ctx.bind(Hit {
                    chunk_id: id,
                    kb_id: c.kb_id,
                    doc_id: c.doc_id,
                    doc_name: c.doc_name.clone(),
                    ord: c.ord,
                    text: c.text.clone(),
                    metadata: c.doc_metadata.clone(),
                    score,
                    vector_score: vscore.get(&id).copied(),
                    text_score: tscore.get(&id).copied(),
                }))
            })
            .collect())
    }

    async fn search_in_memory(
        &self,
        ctx: &TenantCtx,
        base: &KnowledgeBase,
        query: &[f32],
        k: usize,
        filter: &MetadataFilter,
    ) -> Result<Vec<(i64, f32)>, Error> {
        let idx = self.index(ctx, base).await?;
        let allowed: Option<HashSet<DocId>> = if filter.is_empty() {
            None
        } else {
            Some(self.inner.store.matching_documents(ctx, base.id, filter).await?.into_iter().collect())
        };
        let query = query.to_vec();
        tokio::task::spawn_blocking(move || {
            let pass =
                |id: i64| allowed.as_ref().is_none_or(|a| idx.docs.get(&id).is_some_and(|d| a.contains(d)));
            if allowed.is_some() {
                idx.index.search(&query, k, Some(&pass))
            } else {
                idx.index.search(&query, k, None)
            }
        })
        .await
        .map_err(|e| Error::internal(format!("searching: {e}")))?
    }

    /// The tenant's knowledge storage.
    pub async fn usage(&self, ctx: &TenantCtx) -> Result<bulkhead_store::KnowledgeUsage, Error> {
        Ok(self.inner.store.knowledge_usage(ctx).await?)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
