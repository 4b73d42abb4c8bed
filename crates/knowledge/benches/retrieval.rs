//! Retrieval at platform scale (BLUEPRINT §7), run by hand:
//!
//! ```sh
//! source /tmp/env.sh    # BULKHEAD_TEST_PG_URL and BULKHEAD_MINILM_DIR
//! cargo bench -p bulkhead-knowledge --bench retrieval
//! ```
//!
//! One store per backend holds `BENCH_TENANTS` tenants: all but one have a
//! knowledge base of `BENCH_SMALL_CHUNKS` chunks (so PostgreSQL has that
//! many list partitions of `kb_chunks`, each with its own HNSW index), and
//! one has `BENCH_BIG_CHUNKS` chunks in `BENCH_BIG_DOCS` documents. Vectors
//! are synthetic, as in `benches/index.rs`: `BENCH_CLUSTERS` random unit
//! centres, each point its centre plus Gaussian noise of total length
//! `BENCH_SPREAD`, normalised; queries are held-out points of the same
//! mixture. Everything is written through the store (`upsert_document`,
//! `start_ingestion`, `finish_ingestion`), as ingestion writes it.
//!
//! Then `BENCH_QUERIES` top-`BENCH_K` searches in the big tenant, one at a
//! time after 100 warm-up queries, against the ground truth of a brute-force
//! scan here over the vectors as the store returns them (`kb_vectors`):
//! - PostgreSQL: `KnowledgeStore::vector_search`, timed end to end (pool,
//!   transaction, settings, SQL round trips), after an `ANALYZE` of the
//!   tenant's partition (autovacuum's steady state). Beside it, on a
//!   connection of its own: the same SQL at other `hnsw.ef_search` values,
//!   prepared instead of unprepared, as an exact scan (a distance no index
//!   orders by), and `EXPLAIN ANALYZE` of one query; then the store's search
//!   again with the partition's statistics cleared — a partition autovacuum
//!   has not analyzed yet, where the planner leaves the HNSW index aside.
//! - SQLite: the in-memory `VectorIndex` loaded from `kb_vectors` as the
//!   knowledge service loads it (exact up to `exact_limit`, HNSW beyond);
//!   loading and the graph build are timed apart, and searches start when
//!   the graph is ready. Beside it, the index's exact scan.
//! - One small tenant's searches (on PostgreSQL, before and after the big
//!   tenant arrives), to show a small tenant does not pay for the big one.
//!
//! And ingestion throughput with the embedded model (all-MiniLM-L6-v2,
//! `BULKHEAD_MINILM_DIR`): generated English-like Markdown, chunked at 200
//! tokens with 32 of overlap, through the knowledge service as
//! `bulkhead_server::bootstrap::services` assembles it (`Knowledge::upload_all`,
//! then `ingest_with`: checks, chunking, metered embedding in batches of 32,
//! progress, the store write) — beside the same batches through
//! `Embedding::embed` (metered) alone and through chunker + model alone,
//! the last before and after the service, so a change in the machine's load
//! shows.
//!
//! Sizes and parameters (defaults in brackets): `BENCH_BACKENDS`
//! ("sqlite,postgres"; PostgreSQL only with `BULKHEAD_TEST_PG_URL`),
//! `BENCH_TENANTS` (1000), `BENCH_SMALL_CHUNKS` (20), `BENCH_BIG_CHUNKS`
//! (100000), `BENCH_BIG_DOCS` (100), `BENCH_DIMS` (384), `BENCH_QUERIES`
//! (1000), `BENCH_K` (10), `BENCH_CLUSTERS` (300), `BENCH_SPREAD` (1.0),
//! `BENCH_SEED` (42), `BENCH_LOAD_TASKS` (4: concurrent writers while
//! loading; the big tenant uses half), `BENCH_PG_EF_SWEEP` ("40,64,100,200"),
//! `BENCH_PG_EXACT_QUERIES` (20; also the queries without statistics),
//! `BENCH_EXPLAIN` (0; 1 prints whole plans), `BENCH_INGEST_BACKENDS`
//! ("sqlite,postgres"; "" skips), `BENCH_INGEST_DOCS` (10),
//! `BENCH_INGEST_WORDS` (3000 per document), `BENCH_KEEP_PG` (0; 1 keeps
//! the PostgreSQL databases, which are otherwise dropped).
//!
//! Run time with the defaults on two shared cores: about ten minutes — SQLite
//! retrieval ~2 min (most of it the graph build), PostgreSQL retrieval ~3 min
//! (most of it loading 100k rows into HNSW), ingestion ~2 min per backend.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_core::config::{KnowledgeConfig, ModelsConfig, StoreConfig};
use bulkhead_core::{DocId, KbId, OperatorCtx, TenantCtx, Tier};
use bulkhead_knowledge::embedding::{EmbedTags, Embedding};
use bulkhead_knowledge::{
    Chunker, DocFormat, Embedder, IndexConfig, KbRequest, Knowledge, MiniLm, Upload, VectorIndex,
};
use bulkhead_limits::LocalLimiter;
use bulkhead_metering::{Catalog, Metering, MeteringConfig, OtherPrices, Pricing};
use bulkhead_models::routing::ModelRouter;
use bulkhead_store::{
    DynStore, MetadataFilter, NewChunk, NewDocument, NewKnowledgeBase, NewTenant, Upserted,
};
use bulkhead_vault::{MasterKey, Vault};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row as _};

fn env<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("{name}={value} does not parse")),
        Err(_) => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    env(name, default.to_owned())
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

// ---- synthetic vectors (the generator of benches/index.rs) ---------------

/// SplitMix64 and Box–Muller: seeded data without a dependency.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(f64::MIN_POSITIVE);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of the words of a space-separated list (or of a list
    /// separated by `|`, when its items have spaces).
    fn pick(&mut self, words: &'static str) -> &'static str {
        let sep = if words.contains('|') { '|' } else { ' ' };
        let n = words.split(sep).filter(|w| !w.is_empty()).count();
        words.split(sep).filter(|w| !w.is_empty()).nth(self.below(n)).expect("a word")
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

struct Mixture {
    centres: Vec<Vec<f32>>,
    sigma: f32,
}

impl Mixture {
    fn new(rng: &mut Rng, clusters: usize, dims: usize, spread: f64) -> Self {
        let centres =
            (0..clusters).map(|_| normalised((0..dims).map(|_| rng.normal() as f32).collect())).collect();
        Mixture { centres, sigma: (spread / (dims as f64).sqrt()) as f32 }
    }

    fn sample(&self, rng: &mut Rng) -> Vec<f32> {
        let centre = &self.centres[rng.below(self.centres.len())];
        normalised(centre.iter().map(|c| c + self.sigma * rng.normal() as f32).collect())
    }
}

// ---- exact ground truth --------------------------------------------------

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes, so the compiler vectorises without reassociating a sum.
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    let mut acc = [0f32; 8];
    for (x, y) in ca.iter().zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// Brute-force cosine top-k over a knowledge base's vectors.
struct Exact {
    dims: usize,
    ids: Vec<i64>,
    /// Unit vectors, row-major.
    matrix: Vec<f32>,
}

impl Exact {
    fn new(dims: usize, vectors: &[(i64, DocId, Vec<f32>)]) -> Self {
        let mut matrix = Vec::with_capacity(vectors.len() * dims);
        for (_, _, v) in vectors {
            assert_eq!(v.len(), dims, "a stored vector has the wrong length");
            matrix.extend(normalised(v.clone()));
        }
        Exact { dims, ids: vectors.iter().map(|(id, _, _)| *id).collect(), matrix }
    }

    fn top_k(&self, query: &[f32], k: usize) -> Vec<i64> {
        let query = normalised(query.to_vec());
        let mut best: Vec<(f32, i64)> = Vec::with_capacity(k + 1);
        for (row, id) in self.matrix.chunks_exact(self.dims).zip(&self.ids) {
            let score = dot(row, &query);
            if best.len() < k || score > best[best.len() - 1].0 {
                let at = best.partition_point(|(s, _)| *s >= score);
                best.insert(at, (score, *id));
                best.truncate(k);
            }
        }
        best.into_iter().map(|(_, id)| id).collect()
    }

    /// Every query's top k, on all cores.
    fn top_k_all(&self, queries: &[Vec<f32>], k: usize) -> Vec<Vec<i64>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = queries.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .chunks(per)
                .map(|part| s.spawn(move || part.iter().map(|q| self.top_k(q, k)).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("a ground-truth thread panicked")).collect()
        })
    }
}

fn recall(truth: &[Vec<i64>], got: &[Vec<i64>]) -> f64 {
    let mut found = 0;
    let mut total = 0;
    for (t, g) in truth.iter().zip(got) {
        let t: HashSet<i64> = t.iter().copied().collect();
        found += g.iter().filter(|id| t.contains(id)).count();
        total += t.len();
    }
    found as f64 / total.max(1) as f64
}

// ---- figures -------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Latencies of one way of searching, with what it found.
struct Measured {
    p50: Duration,
    p99: Duration,
    results: Vec<Vec<i64>>,
}

impl Measured {
    fn new(mut times: Vec<Duration>, results: Vec<Vec<i64>>) -> Self {
        times.sort();
        Measured { p50: percentile(&times, 0.5), p99: percentile(&times, 0.99), results }
    }
}

/// One line of the final table.
struct Row {
    backend: &'static str,
    what: String,
    queries: usize,
    p50: Duration,
    p99: Duration,
    recall: f64,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, backend: &'static str, what: impl Into<String>, m: &Measured, truth: &[Vec<i64>]) {
        let row = Row {
            backend,
            what: what.into(),
            queries: m.results.len(),
            p50: m.p50,
            p99: m.p99,
            recall: recall(truth, &m.results),
        };
        println!(
            "  {:<52} p50 {:>10}  p99 {:>10}  recall@k {:.4}  ({} queries)",
            row.what,
            ms(row.p50),
            ms(row.p99),
            row.recall,
            row.queries
        );
        self.rows.push(row);
    }

    fn note(&mut self, line: String) {
        println!("  {line}");
        self.notes.push(line);
    }
}

// ---- parameters ----------------------------------------------------------

struct Params {
    tenants: usize,
    small_chunks: usize,
    big_chunks: usize,
    big_docs: usize,
    dims: usize,
    queries: usize,
    k: usize,
    clusters: usize,
    spread: f64,
    seed: u64,
    load_tasks: usize,
    ef_sweep: Vec<u32>,
    pg_exact_queries: usize,
    explain_all: bool,
    keep_pg: bool,
}

impl Params {
    fn from_env() -> Self {
        Params {
            tenants: env("BENCH_TENANTS", 1000).max(1),
            small_chunks: env("BENCH_SMALL_CHUNKS", 20).max(1),
            big_chunks: env("BENCH_BIG_CHUNKS", 100_000).max(1),
            big_docs: env("BENCH_BIG_DOCS", 100).max(1),
            dims: env("BENCH_DIMS", 384),
            queries: env("BENCH_QUERIES", 1000).max(1),
            k: env("BENCH_K", 10).max(1),
            clusters: env("BENCH_CLUSTERS", 300).max(1),
            spread: env("BENCH_SPREAD", 1.0),
            seed: env("BENCH_SEED", 42),
            load_tasks: env("BENCH_LOAD_TASKS", 4).max(1),
            ef_sweep: env_list("BENCH_PG_EF_SWEEP", "40,64,100,200")
                .iter()
                .map(|s| s.parse().expect("BENCH_PG_EF_SWEEP: comma-separated numbers"))
                .collect(),
            pg_exact_queries: env("BENCH_PG_EXACT_QUERIES", 20),
            explain_all: env("BENCH_EXPLAIN", 0u8) == 1,
            keep_pg: env("BENCH_KEEP_PG", 0u8) == 1,
        }
    }
}

// ---- loading -------------------------------------------------------------

const MODEL: &str = "builtin/all-minilm-l6-v2";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn new_tenant(store: &DynStore, name: String, tier: Tier) -> TenantCtx {
    let op = OperatorCtx::local_cli();
    let tenant = store
        .create_tenant(&op, NewTenant { name, tier, metadata: json!({}) })
        .await
        .expect("create a tenant");
    op.act_for(tenant.id)
}

async fn new_kb(store: &DynStore, ctx: &TenantCtx, dims: usize) -> KbId {
    let new = NewKnowledgeBase {
        name: "bench".into(),
        description: String::new(),
        embedding_model: MODEL.into(),
        dims: dims as i32,
        chunk_tokens: 200,
        chunk_overlap: 32,
    };
    store.create_kb(ctx, &new).await.expect("create a knowledge base").id
}

/// Stores a document with these vectors as its chunks, the way an
/// ingestion job does (upload, start, replace the chunks).
async fn add_document(store: &DynStore, ctx: &TenantCtx, kb: KbId, name: String, vectors: Vec<Vec<f32>>) {
    let content = format!("{name}: a synthetic document of {} chunks", vectors.len()).into_bytes();
    let sha256 = hex(&Sha256::digest(&content));
    let new = NewDocument { name: name.clone(), format: "text".into(), content, sha256, metadata: json!({}) };
    let doc = match store.upsert_document(ctx, kb, &new).await.expect("upload a document") {
        Upserted::Created(d) => d,
        other => panic!("{name} was not new: {other:?}"),
    };
    let chunks: Vec<NewChunk> = vectors
        .into_iter()
        .enumerate()
        .map(|(ord, embedding)| NewChunk {
            ord: ord as i32,
            text: format!("{name}, chunk {ord}: synthetic text about topic {}", ord % 97),
            tokens: 12,
            heading: None,
            embedding,
        })
        .collect();
    assert!(store.start_ingestion(ctx, doc.id, &new.sha256, chunks.len() as i64).await.expect("start"));
    store.finish_ingestion(ctx, doc.id, &new.sha256, &chunks).await.expect("store chunks").expect("replaced");
}

/// A tenant and its knowledge base.
struct Loaded {
    ctx: TenantCtx,
    kb: KbId,
}

/// Loads the small tenants; returns the first.
async fn load_small(store: &DynStore, p: &Params, mixture: &Arc<Mixture>, report: &mut Report) -> Loaded {
    let backend = store.backend();
    let small_tenants = p.tenants - 1;

    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(p.load_tasks));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..small_tenants {
        let (store, mixture, limit) = (store.clone(), mixture.clone(), limit.clone());
        let (chunks, dims, seed) = (p.small_chunks, p.dims, p.seed);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            let ctx = new_tenant(&store, format!("small-{i:05}"), Tier::Shared).await;
            let kb = new_kb(&store, &ctx, dims).await;
            let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            let vectors = (0..chunks).map(|_| mixture.sample(&mut rng)).collect();
            add_document(&store, &ctx, kb, "notes.txt".into(), vectors).await;
            (i, Loaded { ctx, kb })
        });
    }
    let mut first_small = None;
    while let Some(done) = tasks.join_next().await {
        let (i, loaded) = done.expect("a loading task panicked");
        if i == 0 {
            first_small = Some(loaded);
        }
    }
    let small_time = started.elapsed();
    report.note(format!(
        "{backend}: {small_tenants} small tenants × {} chunks loaded in {} ({:.0} tenants/s, {} writers)",
        p.small_chunks,
        secs(small_time),
        small_tenants as f64 / small_time.as_secs_f64(),
        p.load_tasks
    ));

    first_small.expect("at least one small tenant")
}

/// Loads the big tenant.
async fn load_big(store: &DynStore, p: &Params, mixture: &Arc<Mixture>, report: &mut Report) -> Loaded {
    let backend = store.backend();
    let started = Instant::now();
    let ctx = new_tenant(store, "big".into(), Tier::Shared).await;
    let kb = new_kb(store, &ctx, p.dims).await;
    let mut rng = Rng(p.seed.wrapping_add(1));
    let per_doc = p.big_chunks.div_ceil(p.big_docs);
    let writers = (p.load_tasks / 2).max(1);
    let limit = Arc::new(tokio::sync::Semaphore::new(writers));
    let mut tasks = tokio::task::JoinSet::new();
    let mut left = p.big_chunks;
    let mut doc = 0;
    while left > 0 {
        let n = per_doc.min(left);
        left -= n;
        let vectors: Vec<Vec<f32>> = (0..n).map(|_| mixture.sample(&mut rng)).collect();
        let (store, ctx, limit) = (store.clone(), ctx.clone(), limit.clone());
        let name = format!("manual-{doc:04}.txt");
        doc += 1;
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            add_document(&store, &ctx, kb, name, vectors).await;
        });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        result.expect("a loading task panicked");
        done += 1;
        if done % 10 == 0 || done == doc {
            println!("  {backend}: big tenant {done}/{doc} documents after {}", secs(started.elapsed()));
        }
    }
    let big_time = started.elapsed();
    report.note(format!(
        "{backend}: big tenant {} chunks in {doc} documents loaded in {} ({:.0} chunks/s, {writers} writers)",
        p.big_chunks,
        secs(big_time),
        p.big_chunks as f64 / big_time.as_secs_f64()
    ));
    Loaded { ctx, kb }
}

// ---- searching -----------------------------------------------------------

async fn store_search(store: &DynStore, t: &Loaded, queries: &[Vec<f32>], k: usize) -> Measured {
    let filter = MetadataFilter::new();
    let mut times = Vec::with_capacity(queries.len());
    let mut results = Vec::with_capacity(queries.len());
    for q in queries {
        let started = Instant::now();
        let hits = store.vector_search(&t.ctx, &[t.kb], q, k as i64, &filter).await.expect("vector search");
        times.push(started.elapsed());
        results.push(hits.into_iter().map(|(id, _)| id).collect());
    }
    Measured::new(times, results)
}

fn index_search(index: &VectorIndex, queries: &[Vec<f32>], k: usize, exact: bool) -> Measured {
    let mut times = Vec::with_capacity(queries.len());
    let mut results = Vec::with_capacity(queries.len());
    for q in queries {
        let started = Instant::now();
        let hits = if exact { index.search_exact(q, k, None) } else { index.search(q, k, None) };
        times.push(started.elapsed());
        results.push(hits.expect("valid query").into_iter().map(|(id, _)| id).collect());
    }
    Measured::new(times, results)
}

/// The knowledge base's vectors as the store gives them, and the exact
/// answers to `queries` over them.
async fn truth_for(
    store: &DynStore,
    t: &Loaded,
    dims: usize,
    queries: &[Vec<f32>],
    k: usize,
) -> (Vec<(i64, DocId, Vec<f32>)>, Vec<Vec<i64>>, Duration) {
    let started = Instant::now();
    let (_, vectors) = store.kb_vectors(&t.ctx, t.kb).await.expect("kb_vectors");
    let fetched = started.elapsed();
    let exact = Exact::new(dims, &vectors);
    let truth = tokio::task::block_in_place(|| exact.top_k_all(queries, k));
    (vectors, truth, fetched)
}

/// SQLite mode: the knowledge service's in-memory index.
async fn search_sqlite(
    store: &DynStore,
    p: &Params,
    big: &Loaded,
    small: &Loaded,
    queries: &[Vec<f32>],
    report: &mut Report,
) {
    let (vectors, truth, fetched) = truth_for(store, big, p.dims, queries, p.k).await;
    // As `Knowledge::index` configures and fills it.
    let config =
        IndexConfig { exact_limit: KnowledgeConfig::default().exact_limit, ..IndexConfig::default() };
    let items: Vec<(i64, Vec<f32>)> = vectors.into_iter().map(|(id, _, v)| (id, v)).collect();
    let (index, inserted, built) = tokio::task::block_in_place(|| {
        let index = VectorIndex::new(p.dims, config);
        let started = Instant::now();
        index.insert_batch(&items).expect("valid vectors");
        let inserted = started.elapsed();
        assert!(index.wait_for_build(Duration::from_secs(3600)), "the graph build took over an hour");
        (index, inserted, started.elapsed() - inserted)
    });
    drop(items);
    report.note(format!(
        "sqlite: kb_vectors of the big tenant {}, VectorIndex insert_batch {}, graph build {} \
         (approximate: {}; {config:?})",
        secs(fetched),
        secs(inserted),
        secs(built),
        index.is_approximate()
    ));
    let warm = &queries[..queries.len().min(100)];
    tokio::task::block_in_place(|| {
        index_search(&index, warm, p.k, false);
        let graph = index_search(&index, queries, p.k, false);
        report.row(
            "sqlite",
            format!("big: VectorIndex.search (HNSW, ef {})", config.ef_search),
            &graph,
            &truth,
        );
        let exact = index_search(&index, queries, p.k, true);
        report.row("sqlite", "big: VectorIndex.search_exact (scan)", &exact, &truth);
    });
    drop(index);

    let (vectors, truth, _) = truth_for(store, small, p.dims, queries, p.k).await;
    let items: Vec<(i64, Vec<f32>)> = vectors.into_iter().map(|(id, _, v)| (id, v)).collect();
    let index = VectorIndex::new(p.dims, config);
    index.insert_batch(&items).expect("valid vectors");
    index_search(&index, warm, p.k, false);
    let m = index_search(&index, queries, p.k, false);
    report.row("sqlite", format!("small ({} chunks): VectorIndex.search", items.len()), &m, &truth);
}

/// pgvector's text form, as the store writes it.
fn vector_text(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(f32::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// How `sql_search` runs the store's query.
#[derive(Clone, Copy)]
enum Sql {
    /// HNSW at this `hnsw.ef_search`; `prepared` keeps the statement
    /// (the store sends it unprepared: the tenant is a literal in it).
    Hnsw { ef: u32, prepared: bool },
    /// The distance as an expression no index can order by, so a scan of
    /// the tenant's partition and a top-k sort. (`enable_indexscan = off`
    /// is not enough: PostgreSQL 18 still picks the disabled HNSW scan.)
    Exact,
}

/// The SQL of `PgStore::vector_search`, for a connection of our own (the
/// sweep); the headline figures go through the store.
fn search_sql(t: &Loaded, dims: usize, mode: Sql) -> String {
    let tenant = t.ctx.tenant_id().as_uuid();
    let distance = format!("c.embedding::vector({dims}) <=> $1::vector({dims})");
    let distance = if matches!(mode, Sql::Exact) { format!("({distance}) + 0") } else { distance };
    format!(
        "WITH hits AS MATERIALIZED (
             SELECT c.id, {distance} AS distance
             FROM kb_chunks c
             WHERE c.tenant_id = '{tenant}' AND c.dims = {dims} AND c.kb_id = ANY($2)
             ORDER BY distance LIMIT $3)
         SELECT id, (1 - distance)::real AS score FROM hits ORDER BY distance"
    )
}

/// A transaction set up as `PgStore::vector_search` sets up its own (one
/// round trip fewer: both settings in one).
async fn begin_like_store<'c>(
    conn: &'c mut PgConnection,
    t: &Loaded,
    ef: u32,
) -> sqlx::Transaction<'c, sqlx::Postgres> {
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(t.ctx.tenant_id().to_string())
        .execute(&mut *tx)
        .await
        .expect("set tenant");
    let settings = format!("SET LOCAL hnsw.ef_search = {ef}; SET LOCAL hnsw.iterative_scan = relaxed_order");
    sqlx::raw_sql(AssertSqlSafe(settings)).execute(&mut *tx).await.expect("settings");
    tx
}

async fn sql_search(
    conn: &mut PgConnection,
    t: &Loaded,
    queries: &[Vec<f32>],
    k: usize,
    mode: Sql,
) -> Measured {
    let sql = search_sql(t, queries[0].len(), mode);
    let (ef, prepared) = match mode {
        Sql::Hnsw { ef, prepared } => (ef, prepared),
        Sql::Exact => (100, false),
    };
    let mut times = Vec::with_capacity(queries.len());
    let mut results = Vec::with_capacity(queries.len());
    for q in queries {
        let started = Instant::now();
        let mut tx = begin_like_store(conn, t, ef).await;
        let rows = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(vector_text(q))
            .bind(vec![t.kb.as_uuid()])
            .bind(k as i64)
            .persistent(prepared)
            .fetch_all(&mut *tx)
            .await
            .expect("search");
        tx.commit().await.expect("commit");
        times.push(started.elapsed());
        results.push(rows.iter().map(|r| r.get::<i64, _>("id")).collect());
    }
    Measured::new(times, results)
}

async fn explain(conn: &mut PgConnection, t: &Loaded, query: &[f32], k: usize, all: bool) -> Vec<String> {
    let (ef, prepared) = (100, false);
    let sql =
        format!("EXPLAIN (ANALYZE, BUFFERS) {}", search_sql(t, query.len(), Sql::Hnsw { ef, prepared }));
    // Twice, and the second plan shown: the first on a connection pays for
    // loading the partition's catalog entries, as a pool connection's
    // first search does.
    let mut rows = Vec::new();
    for _ in 0..2 {
        let mut tx = begin_like_store(conn, t, ef).await;
        rows = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(vector_text(query))
            .bind(vec![t.kb.as_uuid()])
            .bind(k as i64)
            .persistent(false)
            .fetch_all(&mut *tx)
            .await
            .expect("explain");
        tx.commit().await.expect("commit");
    }
    rows.iter()
        .map(|r| r.get::<String, _>(0))
        .filter(|line| {
            all || line.contains("Planning Time")
                || line.contains("Execution Time")
                || line.contains("Scan on")
                || line.contains("Scan using")
        })
        .map(|line| {
            // The query vector is long and says nothing.
            let line = line.trim();
            match (line.find("'["), line.find("]'")) {
                (Some(a), Some(b)) if b > a => format!("{}'[…]'{}", &line[..a], &line[b + 2..]),
                _ => line.to_owned(),
            }
        })
        .collect()
}

/// Runs SQL with the owner's rights (no RLS): statistics and sizes.
async fn owner_sql(owner: &mut PgConnection, sql: String) {
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(owner).await.expect("owner SQL");
}

/// PostgreSQL: pgvector through the store, and the sweep beside it.
async fn search_postgres(
    store: &DynStore,
    config: &StoreConfig,
    p: &Params,
    big: &Loaded,
    small: &Loaded,
    queries: &[Vec<f32>],
    report: &mut Report,
) {
    let (_, truth, fetched) = truth_for(store, big, p.dims, queries, p.k).await;
    let warm = &queries[..queries.len().min(100)];
    let url = config.database_url.as_deref().expect("a PostgreSQL URL");

    // Facts about the store, with the owner's rights.
    let mut owner = PgConnection::connect(url).await.expect("connect");
    let partitions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'kb_chunks'::regclass")
            .fetch_one(&mut owner)
            .await
            .expect("count partitions");
    let partition = format!("kb_chunks_{}", big.ctx.tenant_id().as_uuid().simple());
    let indexes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index
         WHERE indrelid = $1::regclass ORDER BY 1",
    )
    .bind(&partition)
    .fetch_all(&mut owner)
    .await
    .expect("list indexes");
    let hnsw: Vec<String> = indexes
        .iter()
        .filter(|(name, _)| name.contains("embedding"))
        .map(|(name, bytes)| format!("{name} {:.0} MiB", *bytes as f64 / 1048576.0))
        .collect();
    let (table_bytes, shared_buffers, analyzed): (i64, String, bool) = sqlx::query_as(
        "SELECT pg_table_size($1::regclass), current_setting('shared_buffers'),
                coalesce(last_analyze, last_autoanalyze) IS NOT NULL
         FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(&partition)
    .fetch_one(&mut owner)
    .await
    .expect("sizes");
    report.note(format!(
        "postgres: {partitions} partitions of kb_chunks; the big tenant's partition {:.0} MiB, its HNSW \
         index {} (pgvector defaults m 16, ef_construction 64); shared_buffers {shared_buffers}; \
         kb_vectors of the big tenant {}; autovacuum had analyzed the partition by the end of the load: {analyzed}",
        table_bytes as f64 / 1048576.0,
        hnsw.join(", "),
        secs(fetched)
    ));
    // Autovacuum analyzes a partition within a minute or so of a large
    // change; measure after that state, deterministically.
    let started = Instant::now();
    owner_sql(&mut owner, format!("ANALYZE {partition}")).await;
    report.note(format!("postgres: ANALYZE of the big tenant's partition {}", secs(started.elapsed())));

    // The app role, as the store's pool connections are (RLS applies).
    let mut conn = PgConnection::connect(url).await.expect("connect");
    owner_sql(&mut conn, format!("SET ROLE {}", config.app_role)).await;

    store_search(store, big, warm, p.k).await;
    let m = store_search(store, big, queries, p.k).await;
    report.row("postgres", "big: store.vector_search (HNSW, EF_SEARCH), end to end", &m, &truth);
    for line in explain(&mut conn, big, &queries[0], p.k, p.explain_all).await {
        report.note(format!("postgres: EXPLAIN ANALYZE (big, ef 100): {line}"));
    }
    for &ef in &p.ef_sweep {
        let m = sql_search(&mut conn, big, queries, p.k, Sql::Hnsw { ef, prepared: false }).await;
        report.row("postgres", format!("big: same SQL, own connection, ef {ef}"), &m, &truth);
    }
    let m = sql_search(&mut conn, big, queries, p.k, Sql::Hnsw { ef: 100, prepared: true }).await;
    report.row("postgres", "big: same SQL, prepared statement, ef 100", &m, &truth);
    let n = p.pg_exact_queries.min(queries.len());
    if n > 0 {
        let m = sql_search(&mut conn, big, &queries[..n], p.k, Sql::Exact).await;
        report.row("postgres", "big: same SQL, exact (partition scan + sort)", &m, &truth[..n]);

        // A partition never analyzed (a tenant's first big ingestion, before
        // autovacuum's next round): the planner guesses a handful of rows for
        // the tenant and knowledge base, and prefers the (tenant_id, kb_id)
        // b-tree and a sort of every row to the HNSW index.
        owner_sql(
            &mut owner,
            format!(
                "SELECT pg_clear_relation_stats('public', '{partition}');
                 SELECT pg_clear_attribute_stats('public', '{partition}', a, false)
                 FROM unnest(ARRAY['tenant_id', 'kb_id', 'dims']::name[]) a"
            ),
        )
        .await;
        let m = store_search(store, big, &queries[..n], p.k).await;
        report.row("postgres", "big: store.vector_search, partition statistics cleared", &m, &truth[..n]);
        for line in explain(&mut conn, big, &queries[0], p.k, false).await {
            report.note(format!("postgres: EXPLAIN ANALYZE (big, no statistics): {line}"));
        }
        owner_sql(&mut owner, format!("ANALYZE {partition}")).await;
    }

    let (vectors, small_truth, _) = truth_for(store, small, p.dims, queries, p.k).await;
    store_search(store, small, warm, p.k).await;
    let m = store_search(store, small, queries, p.k).await;
    report.row(
        "postgres",
        format!("small ({} chunks): store.vector_search", vectors.len()),
        &m,
        &small_truth,
    );
    for line in explain(&mut conn, small, &queries[0], p.k, p.explain_all).await {
        report.note(format!("postgres: EXPLAIN ANALYZE (small): {line}"));
    }
    conn.close().await.expect("close");
    owner.close().await.expect("close");
}

// ---- stores --------------------------------------------------------------

/// Drops a database the bench created (unless `BENCH_KEEP_PG=1`).
async fn drop_pg_database(config: &StoreConfig, keep: bool) {
    let Some(url) = &config.database_url else { return };
    let name = url.rsplit('/').next().expect("a database name");
    if keep {
        println!("  kept database {name}");
        return;
    }
    let admin = bulkhead_store::testing::pg_admin_url().expect("an admin URL");
    let mut conn = PgConnection::connect(&admin).await.expect("connect as admin");
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await
        .expect("drop the bench database");
    conn.close().await.expect("close");
}

async fn retrieval(backend: &'static str, p: &Params, report: &mut Report) {
    println!("== {backend}: retrieval ==");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = bulkhead_store::testing::fresh_config(backend, dir.path()).await.expect("a store config");
    let store = bulkhead_store::open(&config).await.expect("open the store");

    let mut rng = Rng(p.seed);
    let mixture = Arc::new(Mixture::new(&mut rng, p.clusters, p.dims, p.spread));
    // Held out: the data comes from other streams of the same mixture.
    let queries: Vec<Vec<f32>> = (0..p.queries).map(|_| mixture.sample(&mut rng)).collect();

    let small = load_small(&store, p, &mixture, report).await;
    if backend == "postgres" {
        // The same small tenant's searches before and after the big one
        // arrives (in SQLite mode its index is its own, in memory).
        let (_, truth, _) = truth_for(&store, &small, p.dims, &queries, p.k).await;
        store_search(&store, &small, &queries[..queries.len().min(100)], p.k).await;
        let m = store_search(&store, &small, &queries, p.k).await;
        report.row(backend, "small: store.vector_search, before the big tenant", &m, &truth);
    }
    let big = load_big(&store, p, &mixture, report).await;
    match backend {
        "sqlite" => search_sqlite(&store, p, &big, &small, &queries, report).await,
        _ => search_postgres(&store, &config, p, &big, &small, &queries, report).await,
    }
    drop(store);
    drop_pg_database(&config, p.keep_pg).await;
}

// ---- ingestion -----------------------------------------------------------

const NOUNS: &str = "tenant ledger budget river garden engine harbor library market forest signal contract \
    village teacher network battery window mountain invoice server museum recipe planet \
    bridge doctor journey storm record policy camera kitchen island lantern machine \
    orchard painter question railway scholar theory customer warehouse protocol harvest \
    committee telescope";
const VERBS: &str = "describes follows measures protects carries changes explains builds reaches collects \
    shapes supports crosses records reveals repairs guides balances answers joins replaces \
    inspects delays approves";
const ADJECTIVES: &str = "quiet ancient careful bright narrow steady hidden generous modern rural fragile \
    patient distant formal sudden gentle complex shared local simple expensive seasonal \
    northern temporary";
const ADVERBS: &str = "slowly often rarely quietly clearly nearly usually gradually barely always";
const PREPOSITIONS: &str = "near under beyond across behind within after before without beside";
const OPENINGS: &str = "However,|Meanwhile,|In practice,|For this reason,|Later,|Even so,|\
    As a rule,|In the end,|According to the report,|By contrast,";

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

fn sentence(rng: &mut Rng) -> String {
    let (n, v, a, d, p) = (NOUNS, VERBS, ADJECTIVES, ADVERBS, PREPOSITIONS);
    match rng.below(5) {
        0 => format!(
            "The {} {} {} {} the {}.",
            rng.pick(a),
            rng.pick(n),
            rng.pick(d),
            rng.pick(v),
            rng.pick(n)
        ),
        1 => format!(
            "{} a {} {} the {} {} every {} {}.",
            rng.pick(OPENINGS),
            rng.pick(n),
            rng.pick(p),
            rng.pick(n),
            rng.pick(v),
            rng.pick(a),
            rng.pick(n)
        ),
        2 => format!(
            "When the {} {} the {} {}, the {} {} {} a {} {} the {}.",
            rng.pick(n),
            rng.pick(v),
            rng.pick(a),
            rng.pick(n),
            rng.pick(n),
            rng.pick(d),
            rng.pick(v),
            rng.pick(n),
            rng.pick(p),
            rng.pick(n)
        ),
        3 => format!(
            "Each {} {} {} {}s {} the {} {}, and nobody {} why.",
            rng.pick(n),
            rng.pick(v),
            2 + rng.below(40),
            rng.pick(n),
            rng.pick(p),
            rng.pick(a),
            rng.pick(n),
            rng.pick("asks remembers explains knows")
        ),
        _ => format!("{} {}s are {} {}.", capitalised(rng.pick(a)), rng.pick(n), rng.pick(d), rng.pick(a)),
    }
}

/// A Markdown document of about `words` words: sections of six to ten
/// paragraphs of three to seven sentences.
fn document(rng: &mut Rng, title: usize, words: usize) -> String {
    let mut out = format!("# Handbook {title}\n\n");
    let mut count = 0;
    while count < words {
        out.push_str(&format!("## The {} {}\n\n", rng.pick(ADJECTIVES), rng.pick(NOUNS)));
        for _ in 0..6 + rng.below(5) {
            let sentences: Vec<String> = (0..3 + rng.below(5)).map(|_| sentence(rng)).collect();
            let paragraph = sentences.join(" ");
            count += paragraph.split_whitespace().count();
            out.push_str(&paragraph);
            out.push_str("\n\n");
        }
    }
    out
}

/// Chunker and model alone over the corpus, batches of 32 as the job.
struct RawPass {
    chunks: usize,
    tokens: usize,
    chunking: Duration,
    embedding: Duration,
}

impl RawPass {
    fn rate(&self) -> f64 {
        self.chunks as f64 / (self.chunking + self.embedding).as_secs_f64()
    }
}

fn raw_pass(model: &MiniLm, chunker: &Chunker, texts: &[String]) -> RawPass {
    let started = Instant::now();
    let mut all = Vec::new();
    for text in texts {
        all.extend(chunker.chunk(text, DocFormat::Markdown).expect("chunk"));
    }
    let chunking = started.elapsed();
    let started = Instant::now();
    for batch in all.chunks(32) {
        let texts: Vec<String> = batch.iter().map(|c| c.text.clone()).collect();
        model.embed(&texts).expect("embed");
    }
    RawPass {
        chunks: all.len(),
        tokens: all.iter().map(|c| c.tokens).sum(),
        chunking,
        embedding: started.elapsed(),
    }
}

async fn ingestion(backend: &'static str, report: &mut Report) {
    println!("== {backend}: ingestion ==");
    let Some(model_dir) = std::env::var_os("BULKHEAD_MINILM_DIR") else {
        report.note(format!("{backend}: ingestion skipped: set BULKHEAD_MINILM_DIR (scripts/models.sh)"));
        return;
    };
    let docs: usize = env("BENCH_INGEST_DOCS", 10).max(1);
    let words: usize = env("BENCH_INGEST_WORDS", 3000).max(1);
    let seed: u64 = env("BENCH_SEED", 42);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let store_config =
        bulkhead_store::testing::fresh_config(backend, dir.path()).await.expect("a store config");
    let store = bulkhead_store::open(&store_config).await.expect("open the store");
    // As `bulkhead_server::bootstrap::services` assembles it, with the
    // default configuration: metering (local limiter) and the model router.
    let metering = Metering::start(
        store.clone(),
        Pricing::new(Catalog::builtin(), OtherPrices::default()),
        Arc::new(LocalLimiter::new()),
        MeteringConfig::default(),
    );
    let vault = Vault::new(store.clone(), MasterKey::generate());
    let models =
        Arc::new(ModelRouter::new(metering.pricing().catalog.clone(), ModelsConfig::default(), vault));
    let config = KnowledgeConfig { model_dir: Some(model_dir.into()), ..KnowledgeConfig::default() };
    let embedding = Embedding::new(models, metering.clone(), config.model_dir.clone());
    let knowledge = Knowledge::new(store.clone(), embedding, metering, config);
    // Dedicated: 5M tokens a minute, so the rate limit never waits here.
    let ctx = new_tenant(&store, "ingest".into(), Tier::Dedicated).await;
    let kb = knowledge.create_kb(&ctx, KbRequest { name: "handbooks".into(), ..Default::default() }).await;
    let kb = kb.expect("create a knowledge base");

    let mut rng = Rng(seed.wrapping_add(7));
    let texts: Vec<String> = (0..docs).map(|d| document(&mut rng, d, words)).collect();

    let started = Instant::now();
    let model = knowledge.embedding().local().await.expect("load all-MiniLM-L6-v2");
    let loaded = started.elapsed();
    let chunker = knowledge
        .embedding()
        .chunker(kb.chunk_tokens as usize, kb.chunk_overlap as usize)
        .await
        .expect("a chunker");
    let warm: Vec<String> = (0..32).map(|_| sentence(&mut rng)).collect();
    tokio::task::block_in_place(|| model.embed(&warm).expect("embed"));

    // The model alone before and after the service, so that a change in the
    // machine's load between the two shows.
    let before = tokio::task::block_in_place(|| raw_pass(&model, &chunker, &texts));
    report.note(format!(
        "{backend}: {docs} documents, {} chunks of {:.0} tokens on average (200 max, overlap 32); \
         model load {}",
        before.chunks,
        before.tokens as f64 / before.chunks as f64,
        secs(loaded)
    ));
    report.note(format!(
        "{backend}: chunker + MiniLM alone (before): {:.1} chunks/s (chunking {}, embedding {})",
        before.rate(),
        secs(before.chunking),
        secs(before.embedding)
    ));

    // The service: upload (checks each document, chunking it), then the job.
    let uploads: Vec<Upload> = texts
        .iter()
        .enumerate()
        .map(|(d, text)| Upload {
            name: format!("handbook-{d:03}.md"),
            format: None,
            content: text.clone().into_bytes(),
            metadata: json!({}),
        })
        .collect();
    let marks = std::sync::Mutex::new(Vec::<Instant>::new());
    let progress = |_: usize, _: usize| marks.lock().expect("marks").push(Instant::now());
    let started = Instant::now();
    let uploaded = knowledge.upload_all(&ctx, kb.id, uploads).await.expect("upload");
    let upload_time = started.elapsed();
    let (mut first_batch, mut batches, mut after_batches) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut stored = 0;
    for u in &uploaded {
        marks.lock().expect("marks").clear();
        let t0 = Instant::now();
        let done = knowledge.ingest_with(&ctx, kb.id, u.document().id, &progress).await.expect("ingest");
        let t1 = Instant::now();
        stored += done.expect("still there").chunks;
        let marks = marks.lock().expect("marks");
        // The first mark comes before the first batch, the last after the last.
        let (first, last) = (marks.first().copied().unwrap_or(t1), marks.last().copied().unwrap_or(t1));
        first_batch += first - t0;
        batches += last - first;
        after_batches += t1 - last;
    }
    let total = started.elapsed();
    let service = stored as f64 / total.as_secs_f64();

    // The metered embedding alone (admission, model, usage event), batched
    // per document as the job batches it.
    let mut metered = Duration::ZERO;
    for (d, text) in texts.iter().enumerate() {
        let chunks = chunker.chunk(text, DocFormat::Markdown).expect("chunk");
        for (b, batch) in chunks.chunks(32).enumerate() {
            let inputs: Vec<String> = batch.iter().map(|c| c.text.clone()).collect();
            let tags = EmbedTags { event_id: format!("bench-{d}-{b}"), ..Default::default() };
            let started = Instant::now();
            knowledge.embedding().embed(&ctx, &kb.embedding_model, &inputs, &tags).await.expect("embed");
            metered += started.elapsed();
        }
    }

    let after = tokio::task::block_in_place(|| raw_pass(&model, &chunker, &texts));
    report.note(format!(
        "{backend}: chunker + MiniLM alone (after): {:.1} chunks/s (chunking {}, embedding {})",
        after.rate(),
        secs(after.chunking),
        secs(after.embedding)
    ));
    let raw = (before.rate() + after.rate()) / 2.0;
    report.note(format!(
        "{backend}: Knowledge upload_all + ingest_with: {service:.1} chunks/s = {:.2}× the model alone \
         ({stored} chunks in {}: upload {}, reading + chunking + start {}, metered embedding batches \
         + progress {}, finish_ingestion + usage {}); the same batches through Embedding::embed \
         (metered) alone {}, through the model alone {}",
        service / raw,
        secs(total),
        secs(upload_time),
        secs(first_batch),
        secs(batches),
        secs(after_batches),
        secs(metered),
        secs((before.embedding + after.embedding) / 2),
    ));
    drop(knowledge);
    drop(store);
    drop_pg_database(&store_config, env("BENCH_KEEP_PG", 0u8) == 1).await;
}

// ---- main ----------------------------------------------------------------

fn main() {
    let p = Params::from_env();
    let pg = std::env::var(bulkhead_store::testing::PG_URL_ENV).is_ok_and(|u| !u.is_empty());
    let wanted = |list: Vec<String>| -> Vec<&'static str> {
        let mut out = Vec::new();
        for b in ["sqlite", "postgres"] {
            if !list.iter().any(|x| x == b) {
                continue;
            }
            if b == "postgres" && !pg {
                println!(
                    "postgres left out: set {} (source /tmp/env.sh)",
                    bulkhead_store::testing::PG_URL_ENV
                );
                continue;
            }
            out.push(b);
        }
        out
    };
    let backends = wanted(env_list("BENCH_BACKENDS", "sqlite,postgres"));
    let ingest_backends = wanted(env_list("BENCH_INGEST_BACKENDS", "sqlite,postgres"));
    println!(
        "retrieval: {} tenants ({} × {} chunks, 1 × {} chunks in {} documents), {} dims, {} clusters, \
         spread {}, {} queries, k = {}, seed {}",
        p.tenants,
        p.tenants - 1,
        p.small_chunks,
        p.big_chunks,
        p.big_docs,
        p.dims,
        p.clusters,
        p.spread,
        p.queries,
        p.k,
        p.seed
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let started = Instant::now();
    let mut report = Report::default();
    runtime.block_on(async {
        for backend in &backends {
            let t = Instant::now();
            retrieval(backend, &p, &mut report).await;
            report.note(format!("{backend}: retrieval part took {}", secs(t.elapsed())));
        }
        for backend in &ingest_backends {
            let t = Instant::now();
            ingestion(backend, &mut report).await;
            report.note(format!("{backend}: ingestion part took {}", secs(t.elapsed())));
        }
    });

    println!("\n== summary (goal: p50 ≤ 5 ms, recall@{} ≥ 0.95) ==", p.k);
    println!(
        "{:<9} {:<56} {:>7} {:>11} {:>11} {:>9}",
        "backend", "search", "queries", "p50", "p99", "recall"
    );
    for r in &report.rows {
        println!(
            "{:<9} {:<56} {:>7} {:>11} {:>11} {:>9.4}",
            r.backend,
            r.what,
            r.queries,
            ms(r.p50),
            ms(r.p99),
            r.recall
        );
    }
    println!();
    for line in &report.notes {
        println!("{line}");
    }
    println!("total run time {}", secs(started.elapsed()));
}
