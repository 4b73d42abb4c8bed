//! The knowledge store's behaviour on both backends, and PostgreSQL's
//! per-tenant partitions.

use bulkhead_core::page::PageReq;
use bulkhead_core::{OperatorCtx, TenantCtx};
use serde_json::json;

use crate::knowledge::*;
use crate::testing::{backends, fresh_config};
use crate::{DynStore, NewTenant, StoreError};

fn unit(seed: usize, dims: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dims).map(|i| (((i * 31 + seed * 17) % 97) as f32) - 48.0).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn new_kb(name: &str) -> NewKnowledgeBase {
    NewKnowledgeBase {
        name: name.into(),
        description: String::new(),
        embedding_model: "builtin/all-minilm-l6-v2".into(),
        dims: 384,
        chunk_tokens: 200,
        chunk_overlap: 20,
    }
}

fn new_doc(name: &str, text: &str) -> NewDocument {
    NewDocument {
        name: name.into(),
        format: "text".into(),
        content: text.as_bytes().to_vec(),
        sha256: format!("{:0>64}", text.len()),
        metadata: json!({"lang": "en"}),
    }
}

fn chunk(ord: i32, text: &str, v: Vec<f32>) -> NewChunk {
    NewChunk { ord, text: text.into(), tokens: 3, heading: None, embedding: v }
}

/// A knowledge base with one ingested document and its chunk: called by
/// `tests::plant_everything` so the table walks see these tables.
pub(crate) async fn plant_knowledge(store: &DynStore, ctx: &TenantCtx) {
    let kb = store.create_kb(ctx, &new_kb("planted")).await.unwrap();
    let text = format!("canary-{} knowledge", ctx.tenant_id());
    let doc = store.upsert_document(ctx, kb.id, &new_doc("planted.txt", &text)).await.unwrap();
    let doc = doc.document().clone();
    assert!(store.start_ingestion(ctx, doc.id, &doc.sha256, 1).await.unwrap());
    let chunks = [chunk(0, &text, unit(1, 384))];
    store.finish_ingestion(ctx, doc.id, &doc.sha256, &chunks).await.unwrap().expect("finished");
}

async fn each_backend<F, Fut>(test: F)
where
    F: Fn(DynStore, bulkhead_core::config::StoreConfig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let config = fresh_config(backend, dir.path()).await.unwrap();
        let store = crate::open(&config).await.unwrap();
        test(store, config).await;
    }
}

async fn tenant(store: &DynStore, name: &str) -> TenantCtx {
    let op = OperatorCtx::local_cli();
    let t = store
        .create_tenant(
            &op,
            NewTenant { name: name.into(), tier: bulkhead_core::Tier::Shared, metadata: json!({}) },
        )
        .await
        .unwrap();
    op.act_for(t.id)
}

#[tokio::test]
async fn knowledge_bases_documents_and_ingestion() {
    each_backend(|store, _| async move {
        let ctx = tenant(&store, "kb-a").await;
        let kb = store.create_kb(&ctx, &new_kb("docs")).await.unwrap();
        assert!(matches!(store.create_kb(&ctx, &new_kb("docs")).await, Err(StoreError::Conflict(_))));
        for bad in [
            NewKnowledgeBase { name: " ".into(), ..new_kb("x") },
            NewKnowledgeBase { dims: 0, ..new_kb("x") },
            NewKnowledgeBase { chunk_overlap: 300, ..new_kb("x") },
        ] {
            assert!(matches!(store.create_kb(&ctx, &bad).await, Err(StoreError::Invalid(_))));
        }
        assert_eq!(store.find_kb(&ctx, "docs").await.unwrap().id, kb.id);

        // Upload → queued; same bytes → unchanged; other bytes → replaced.
        let up = store.upsert_document(&ctx, kb.id, &new_doc("a.txt", "alpha beta")).await.unwrap();
        let Upserted::Created(doc) = up else { panic!("{up:?}") };
        assert_eq!(doc.status, DocStatus::Queued);
        let again = store.upsert_document(&ctx, kb.id, &new_doc("a.txt", "alpha beta")).await.unwrap();
        assert!(matches!(again, Upserted::Unchanged(_)));
        let pending = store.pending_ingestions(&OperatorCtx::local_cli()).await.unwrap();
        assert_eq!(pending, vec![(ctx.tenant_id(), kb.id, doc.id)]);

        // Ingest: chunks appear at once, with a new generation.
        assert!(store.start_ingestion(&ctx, doc.id, &doc.sha256, 2).await.unwrap());
        store.ingestion_progress(&ctx, doc.id, 1).await.unwrap();
        let d = store.get_document(&ctx, kb.id, doc.id).await.unwrap();
        assert_eq!((d.status, d.progress_done, d.progress_total), (DocStatus::Processing, 1, 2));
        let wrong_dims = [chunk(0, "x", vec![1.0; 3])];
        assert!(matches!(
            store.finish_ingestion(&ctx, doc.id, &doc.sha256, &wrong_dims).await,
            Err(StoreError::Invalid(_))
        ));
        let chunks = [chunk(0, "alpha", unit(1, 384)), chunk(1, "beta gamma", unit(2, 384))];
        let r = store.finish_ingestion(&ctx, doc.id, &doc.sha256, &chunks).await.unwrap().unwrap();
        assert_eq!((r.added.len(), r.removed.len(), r.generation), (2, 0, 1));
        let d = store.get_document(&ctx, kb.id, doc.id).await.unwrap();
        assert_eq!((d.status, d.chunks), (DocStatus::Ready, 2));
        let base = store.get_kb(&ctx, kb.id).await.unwrap();
        assert_eq!((base.documents, base.chunks, base.bytes, base.generation), (1, 2, 10, 1));

        // A newer upload wins over an older job's result.
        let up = store.upsert_document(&ctx, kb.id, &new_doc("a.txt", "alpha beta delta")).await.unwrap();
        let Upserted::Replaced(newer) = up else { panic!("{up:?}") };
        assert!(store.finish_ingestion(&ctx, doc.id, &doc.sha256, &chunks).await.unwrap().is_none());
        assert!(!store.start_ingestion(&ctx, doc.id, &doc.sha256, 1).await.unwrap());
        // The old chunks stay searchable until the new ones replace them.
        let (_, vectors) = store.kb_vectors(&ctx, kb.id).await.unwrap();
        assert_eq!(vectors.len(), 2);
        // A failure leaves them too.
        store.fail_ingestion(&ctx, newer.id, &newer.sha256, "embedding provider down").await.unwrap();
        let d = store.get_document(&ctx, kb.id, doc.id).await.unwrap();
        assert_eq!(
            (d.status, d.error.as_deref(), d.chunks),
            (DocStatus::Failed, Some("embedding provider down"), 2)
        );
        let replacement = [chunk(0, "delta", unit(3, 384))];
        store.upsert_document(&ctx, kb.id, &new_doc("a.txt", "alpha beta delta!")).await.unwrap();
        let d = store.get_document(&ctx, kb.id, doc.id).await.unwrap();
        let r = store.finish_ingestion(&ctx, doc.id, &d.sha256, &replacement).await.unwrap().unwrap();
        assert_eq!(r.removed.len(), 2, "both old chunks replaced");
        let (generation, vectors) = store.kb_vectors(&ctx, kb.id).await.unwrap();
        assert_eq!((generation, vectors.len()), (r.generation, 1));
        assert_eq!(vectors[0].2, unit(3, 384));

        // Full text and chunk lookup.
        let hits =
            store.text_search(&ctx, &[kb.id], &["delta".into()], 10, &Default::default()).await.unwrap();
        assert_eq!(hits.len(), 1);
        let texts = store.chunks_by_id(&ctx, &[hits[0].0]).await.unwrap();
        assert_eq!((texts[0].text.as_str(), texts[0].doc_name.as_str()), ("delta", "a.txt"));
        let en: MetadataFilter = serde_json::from_value(json!({"lang": "en"})).unwrap();
        let fr: MetadataFilter = serde_json::from_value(json!({"lang": "fr"})).unwrap();
        assert_eq!(store.text_search(&ctx, &[kb.id], &["delta".into()], 10, &en).await.unwrap().len(), 1);
        assert!(store.text_search(&ctx, &[kb.id], &["delta".into()], 10, &fr).await.unwrap().is_empty());
        assert_eq!(store.matching_documents(&ctx, kb.id, &en).await.unwrap(), vec![doc.id]);
        assert!(store.matching_documents(&ctx, kb.id, &fr).await.unwrap().is_empty());
        if store.native_vector_search() {
            let hits = store.vector_search(&ctx, &[kb.id], &unit(3, 384), 5, &en).await.unwrap();
            assert_eq!(hits.len(), 1);
            assert!((hits[0].1 - 1.0).abs() < 1e-4, "{hits:?}");
            assert!(store.vector_search(&ctx, &[kb.id], &unit(3, 384), 5, &fr).await.unwrap().is_empty());
        }

        // Deleting the document removes its chunks and its text index entries.
        let gone = store.delete_document(&ctx, kb.id, doc.id).await.unwrap();
        assert_eq!(gone.removed.len(), 1);
        assert!(store.kb_vectors(&ctx, kb.id).await.unwrap().1.is_empty());
        assert!(
            store
                .text_search(&ctx, &[kb.id], &["delta".into()], 10, &Default::default())
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(store.delete_document(&ctx, kb.id, doc.id).await, Err(StoreError::NotFound(_))));
        let usage = store.knowledge_usage(&ctx).await.unwrap();
        assert_eq!((usage.knowledge_bases, usage.documents, usage.chunks), (1, 0, 0));

        // Deleting the base takes documents and chunks along.
        let doc = store.upsert_document(&ctx, kb.id, &new_doc("b.txt", "epsilon")).await.unwrap();
        let doc = doc.document().clone();
        store
            .finish_ingestion(&ctx, doc.id, &doc.sha256, &[chunk(0, "epsilon", unit(4, 384))])
            .await
            .unwrap();
        store.delete_kb(&ctx, kb.id).await.unwrap();
        assert!(matches!(store.get_kb(&ctx, kb.id).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.kb_vectors(&ctx, kb.id).await, Err(StoreError::NotFound(_))));
        assert_eq!(store.knowledge_usage(&ctx).await.unwrap(), KnowledgeUsage::default());
        assert!(
            store
                .text_search(&ctx, &[kb.id], &["epsilon".into()], 10, &Default::default())
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn knowledge_is_invisible_across_tenants_even_with_identical_vectors() {
    each_backend(|store, _| async move {
        let a = tenant(&store, "kb-cross-a").await;
        let b = tenant(&store, "kb-cross-b").await;
        let mut kbs = Vec::new();
        for (ctx, text) in [(&a, "canary zebra alpha"), (&b, "ordinary zebra beta")] {
            let kb = store.create_kb(ctx, &new_kb("shared-name")).await.unwrap();
            let doc = store.upsert_document(ctx, kb.id, &new_doc("d.txt", text)).await.unwrap();
            let doc = doc.document().clone();
            // The same vector for both tenants' chunks.
            store.finish_ingestion(ctx, doc.id, &doc.sha256, &[chunk(0, text, unit(9, 384))]).await.unwrap();
            kbs.push(kb);
        }
        let (a_kb, b_kb) = (kbs[0].id, kbs[1].id);
        let all = Default::default();
        // B naming A's knowledge base: nothing (and no error that tells it exists).
        assert!(matches!(store.get_kb(&b, a_kb).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.kb_vectors(&b, a_kb).await, Err(StoreError::NotFound(_))));
        assert!(store.text_search(&b, &[a_kb], &["canary".into()], 10, &all).await.unwrap().is_empty());
        // B searching its own base with A's exact text finds only its own chunk.
        let terms: Vec<String> = query_terms("canary zebra alpha");
        let hits = store.text_search(&b, &[b_kb, a_kb], &terms, 10, &all).await.unwrap();
        let texts = store.chunks_by_id(&b, &hits.iter().map(|h| h.0).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(texts.len(), 1);
        assert_eq!(texts[0].text, "ordinary zebra beta");
        if store.native_vector_search() {
            let hits = store.vector_search(&b, &[b_kb, a_kb], &unit(9, 384), 10, &all).await.unwrap();
            assert_eq!(hits.len(), 1, "{hits:?}");
            let texts = store.chunks_by_id(&b, &[hits[0].0]).await.unwrap();
            assert_eq!(texts[0].text, "ordinary zebra beta");
        }
        // A's chunk ids, guessed by B: nothing.
        let (_, a_vectors) = store.kb_vectors(&a, a_kb).await.unwrap();
        assert!(store.chunks_by_id(&b, &[a_vectors[0].0]).await.unwrap().is_empty());
        // Documents of A under B: not found.
        let a_doc = store.list_documents(&a, a_kb, PageReq::default()).await.unwrap().items[0].id;
        assert!(matches!(store.get_document(&b, a_kb, a_doc).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete_document(&b, a_kb, a_doc).await, Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.list_documents(&b, a_kb, PageReq::default()).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(!store.start_ingestion(&b, a_doc, "x", 1).await.unwrap());
        assert!(store.finish_ingestion(&b, a_doc, &"0".repeat(64), &[]).await.unwrap().is_none());
        let a_sha = store.get_document(&a, a_kb, a_doc).await.unwrap().sha256;
        assert!(store.finish_ingestion(&b, a_doc, &a_sha, &[]).await.unwrap().is_none());
        assert_eq!(store.get_document(&a, a_kb, a_doc).await.unwrap().chunks, 1);
    })
    .await;
}

/// PostgreSQL: each tenant's chunks are in a partition of their own, a
/// search plans onto that partition only, and the partition filters rows
/// when reached directly.
#[tokio::test]
async fn postgres_knowledge_partitions_per_tenant() {
    let Some(_) = crate::testing::pg_admin_url() else {
        eprintln!("PostgreSQL deliberately skipped ({})", crate::testing::SKIP_PG_ENV);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = fresh_config("postgres", dir.path()).await.unwrap();
    let url = config.database_url.clone().unwrap();
    let pg = crate::postgres::PgStore::connect(&url, &config.app_role, 4).await.unwrap();
    let store: DynStore = std::sync::Arc::new(pg.clone());
    let a = tenant(&store, "part-a").await;
    let b = tenant(&store, "part-b").await;
    plant_knowledge(&store, &a).await;
    plant_knowledge(&store, &b).await;
    let part = |ctx: &TenantCtx| format!("kb_chunks_{}", ctx.tenant_id().as_uuid().simple());

    use sqlx::Connection;
    let mut owner = sqlx::PgConnection::connect(&url).await.unwrap();
    for ctx in [&a, &b] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}", part(ctx))))
            .fetch_one(&mut owner)
            .await
            .unwrap();
        assert_eq!(n, 1, "the tenant's chunk is in its own partition");
    }
    // The plan of B's search touches B's partition and its HNSW index only.
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN SELECT id FROM kb_chunks WHERE tenant_id = '{}' AND dims = 384
         ORDER BY embedding::vector(384) <=> '{}'::vector(384) LIMIT 10",
        b.tenant_id(),
        serde_json::to_string(&unit(1, 384)).unwrap()
    )))
    .fetch_all(&mut owner)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains(&part(&b)), "{plan}");
    assert!(!plan.contains(&part(&a)), "B's search must not touch A's partition:\n{plan}");

    // Reached directly with A's setting, B's partition shows nothing.
    let mut tx = pg.pool().begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(a.tenant_id().to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen =
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}", part(&b))))
            .fetch_one(&mut *tx)
            .await;
    // Either no privilege on the partition itself, or its policy hides B's rows.
    if let Ok(n) = seen {
        assert_eq!(n, 0);
    }
    tx.rollback().await.unwrap();

    // The first ingestion left statistics, so the planner walks HNSW from the start.
    let analyzed: f32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT reltuples FROM pg_class WHERE relname = '{}'",
        part(&b)
    )))
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert!(analyzed >= 0.0, "the partition was analyzed after ingestion");

    // Deleting a tenant drops its partition.
    let op = OperatorCtx::local_cli();
    store.delete_tenant(&op, a.tenant_id()).await.unwrap();
    let exists: Option<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT to_regclass('{}')::text", part(&a))))
            .fetch_one(&mut owner)
            .await
            .unwrap();
    assert_eq!(exists, None);
}
