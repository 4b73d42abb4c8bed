//! Knowledge bases end to end, with the real all-MiniLM-L6-v2 model: upload
//! (JSON and multipart), ingestion jobs, hybrid search, replacement and
//! deletion (counted in the stored rows), bad input, cross-tenant search
//! with identical text, the `knowledge_search` tool in an agent run, and the
//! OpenAI-compatible `/v1/embeddings`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{TestServer, TestTenant, canary};

const EIFFEL: &str = "# Landmarks\n\nThe Eiffel Tower is a wrought-iron lattice tower in Paris, France. \
                      It was completed in 1889 for the World's Fair.";
const PHOTO: &str = "Photosynthesis is the process by which green plants use sunlight, water and carbon \
                     dioxide to make glucose and oxygen.";
const HTML: &str = "<html><head><style>p{color:red}</style><script>alert(1)</script></head><body>\
                    <h1>Espresso</h1><p>Espresso is coffee brewed by forcing hot water through finely \
                    ground beans under pressure.</p></body></html>";

async fn create_kb(server: &TestServer, t: &TestTenant, name: &str) -> String {
    let kb = server.post("/v1/knowledge-bases", &t.admin_key, json!({"name": name})).await;
    let kb = kb.expect(201);
    assert_eq!(
        (kb["dimensions"].as_i64(), kb["embedding_model"].as_str()),
        (Some(384), Some("builtin/all-minilm-l6-v2"))
    );
    kb["id"].as_str().unwrap().to_owned()
}

async fn upload(server: &TestServer, t: &TestTenant, kb: &str, body: Value) -> Value {
    let res = server.post(&format!("/v1/knowledge-bases/{kb}/documents"), &t.admin_key, body).await;
    let doc = res.expect(202).clone();
    server.wait_document(&t.admin_key, kb, doc["id"].as_str().unwrap()).await
}

async fn search(server: &TestServer, key: &str, kb: &str, body: Value) -> Vec<Value> {
    let res = server.post(&format!("/v1/knowledge-bases/{kb}/search"), key, body).await;
    res.expect(200)["data"].as_array().unwrap().clone()
}

/// Chunk rows of a document, counted in the store with owner rights.
async fn chunk_rows(server: &TestServer, doc: &str) -> usize {
    server.stored_rows().await.iter().filter(|(table, row)| table == "kb_chunks" && row.contains(doc)).count()
}

async fn upload_ingest_search_replace_delete(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("kb-owner", json!({})).await;
    let kb = create_kb(&server, &t, "handbook").await;

    let eiffel = upload(
        &server,
        &t,
        &kb,
        json!({"name": "eiffel.md", "content": EIFFEL, "metadata": {"topic": "travel"}}),
    )
    .await;
    assert_eq!(eiffel["format"], "markdown");
    assert!(eiffel["chunks"].as_i64().unwrap() >= 1);
    assert_eq!(eiffel["progress"]["done"], eiffel["progress"]["total"]);

    // Multipart: two files at once, with shared metadata.
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(PHOTO.as_bytes().to_vec()).file_name("plants.txt"))
        .part("file", reqwest::multipart::Part::bytes(HTML.as_bytes().to_vec()).file_name("coffee.html"))
        .text("metadata", r#"{"topic": "science"}"#);
    let res = server
        .http
        .post(format!("{}/v1/knowledge-bases/{kb}/documents", server.base))
        .bearer_auth(&t.admin_key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let docs = body["data"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    for d in docs {
        server.wait_document(&t.admin_key, &kb, d["id"].as_str().unwrap()).await;
    }
    let coffee = docs.iter().find(|d| d["name"] == "coffee.html").unwrap();
    assert_eq!(coffee["format"], "html");

    // Hybrid search puts the right document first; so do vector and text alone.
    for mode in ["hybrid", "vector", "text"] {
        let hits =
            search(&server, &t.app_key, &kb, json!({"query": "Where is the Eiffel Tower?", "mode": mode}))
                .await;
        assert_eq!(hits[0]["document"], "eiffel.md", "{mode}: {hits:?}");
    }
    let hits = search(
        &server,
        &t.app_key,
        &kb,
        json!({"query": "how do plants make sugar from light", "mode": "vector"}),
    )
    .await;
    assert_eq!(hits[0]["document"], "plants.txt", "{hits:?}");
    assert!(hits[0]["vector_score"].as_f64().unwrap() > 0.3, "{hits:?}");
    // HTML: scripts and styles are not indexed.
    let hits = search(&server, &t.app_key, &kb, json!({"query": "alert color red", "mode": "text"})).await;
    assert!(hits.iter().all(|h| !h["text"].as_str().unwrap().contains("alert")), "{hits:?}");
    // Metadata filters.
    let hits =
        search(&server, &t.app_key, &kb, json!({"query": "Eiffel Tower", "filter": {"topic": "science"}}))
            .await;
    assert!(hits.iter().all(|h| h["metadata"]["topic"] == "science"), "{hits:?}");
    assert!(!hits.is_empty());

    // Re-uploading the same bytes changes nothing; other bytes replace the chunks.
    let same = server
        .post(
            &format!("/v1/knowledge-bases/{kb}/documents"),
            &t.admin_key,
            json!({"name": "eiffel.md", "content": EIFFEL, "metadata": {"topic": "travel"}}),
        )
        .await;
    assert_eq!(same.expect(200)["upload"], "unchanged");
    let eiffel_id = eiffel["id"].as_str().unwrap();
    let before = chunk_rows(&server, eiffel_id).await;
    assert!(before >= 1);
    let changed = format!("{EIFFEL}\n\nIt is {} metres tall.", 330);
    let replaced = upload(
        &server,
        &t,
        &kb,
        json!({"name": "eiffel.md", "content": changed, "metadata": {"topic": "travel"}}),
    )
    .await;
    assert_eq!(replaced["id"], eiffel["id"]);
    let hits = search(
        &server,
        &t.app_key,
        &kb,
        json!({"query": "how tall is the Eiffel Tower metres", "mode": "text"}),
    )
    .await;
    assert!(hits[0]["text"].as_str().unwrap().contains("330 metres"), "{hits:?}");
    assert_eq!(chunk_rows(&server, eiffel_id).await, replaced["chunks"].as_u64().unwrap() as usize);

    // Deleting a document removes its chunks and vectors; search stops finding it.
    server
        .call(
            Method::DELETE,
            &format!("/v1/knowledge-bases/{kb}/documents/{eiffel_id}"),
            Some(&t.admin_key),
            None,
        )
        .await
        .expect(204);
    assert_eq!(chunk_rows(&server, eiffel_id).await, 0);
    let hits = search(&server, &t.app_key, &kb, json!({"query": "Eiffel Tower Paris", "k": 10})).await;
    assert!(hits.iter().all(|h| h["document"] != "eiffel.md"), "{hits:?}");

    // Storage and embedding usage were metered.
    let usage = server.get("/v1/usage?group_by=kind", &t.admin_key).await;
    let rows = usage.expect(200)["data"].as_array().unwrap().clone();
    let kinds: Vec<&str> = rows.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert!(kinds.contains(&"storage") && kinds.contains(&"embedding"), "{rows:?}");
    let listed = server.get("/v1/knowledge-bases", &t.app_key).await;
    let listed = listed.expect(200)["data"][0].clone();
    assert_eq!(listed["documents"], 2);
    assert!(listed["bytes"].as_i64().unwrap() > 0);

    // Deleting the knowledge base removes every chunk of it.
    server
        .call(Method::DELETE, &format!("/v1/knowledge-bases/{kb}"), Some(&t.admin_key), None)
        .await
        .expect(204);
    let left = server.stored_rows().await;
    assert!(!left.iter().any(|(table, row)| table.starts_with("kb_") && row.contains(&kb)), "rows remain");
    server
        .post(&format!("/v1/knowledge-bases/{kb}/search"), &t.app_key, json!({"query": "x"}))
        .await
        .expect_error(404, "not_found");
}
both_backends!(upload_ingest_search_replace_delete);

async fn bad_documents_are_refused_and_leave_nothing(backend: &'static str) {
    let mut config = bulkhead_core::config::Config::default();
    config.knowledge.max_document_bytes = 4_096;
    let server = TestServer::start_full(backend, config).await;
    let t = server.tenant("kb-bad", json!({})).await;
    let kb = create_kb(&server, &t, "strict").await;
    let docs = format!("/v1/knowledge-bases/{kb}/documents");

    let json_cases = [
        (json!({"name": "empty.txt", "content": ""}), 400, "invalid_request"),
        (json!({"name": "blank.txt", "content": "   \n\t "}), 400, "invalid_request"),
        (json!({"name": "big.txt", "content": "word ".repeat(2_000)}), 413, "payload_too_large"),
        (
            json!({"name": "tags.html", "content": "<html><script>x()</script><div></div></html>"}),
            400,
            "invalid_request",
        ),
        (json!({"name": "nul.txt", "content": "abc\u{0}def"}), 400, "invalid_request"),
        (json!({"name": "x.txt", "content": "fine", "format": "pdf"}), 400, "invalid_request"),
        (json!({"name": "", "content": "fine"}), 400, "invalid_request"),
        (json!({"name": "m.txt", "content": "fine", "metadata": [1]}), 400, "invalid_request"),
    ];
    for (body, status, code) in json_cases {
        server.post(&docs, &t.admin_key, body.clone()).await.expect_error(status, code);
    }
    // Binary and wrongly encoded files, by multipart — one bad file among
    // good ones stores nothing.
    for (name, bytes) in [
        ("image.png", vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]),
        ("latin1.txt", b"caf\xe9 cr\xe8me br\xfbl\xe9e".to_vec()),
    ] {
        let form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(b"a good one".to_vec()).file_name("good.txt"))
            .part("file", reqwest::multipart::Part::bytes(bytes).file_name(name));
        let res = server
            .http
            .post(format!("{}{docs}", server.base))
            .bearer_auth(&t.admin_key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{name}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(body["error"]["message"].as_str().unwrap().contains(name), "{body}");
    }
    let res = server
        .http
        .post(format!("{}{docs}", server.base))
        .bearer_auth(&t.admin_key)
        .multipart(reqwest::multipart::Form::new().text("format", "text"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Nothing was stored.
    let listed = server.get(&docs, &t.admin_key).await;
    assert!(listed.expect(200)["data"].as_array().unwrap().is_empty());
    let rows = server.stored_rows().await;
    assert!(
        !rows.iter().any(|(table, _)| table == "kb_documents" || table == "kb_chunks"),
        "orphans: {rows:?}"
    );

    // Bad searches and knowledge bases.
    let search = format!("/v1/knowledge-bases/{kb}/search");
    for body in [
        json!({"query": ""}),
        json!({"query": "x", "k": 0}),
        json!({"query": "x", "k": 51}),
        json!({"query": "x", "mode": "psychic"}),
        json!({"query": "x", "filter": {"a": {"nested": 1}}}),
        json!({"query": "x", "filter": {"bad key!": 1}}),
    ] {
        server.post(&search, &t.app_key, body).await.expect_error(400, "invalid_request");
    }
    server.post(&search, &t.app_key, json!({"q": "x"})).await.expect_error(400, "malformed_json");
    for body in [
        json!({"name": "handbook", "chunk_tokens": 5000}),
        json!({"name": "handbook", "chunk_overlap": 999}),
        json!({"name": "handbook", "embedding_model": "builtin/scripted"}),
        json!({"name": " "}),
    ] {
        server.post("/v1/knowledge-bases", &t.admin_key, body).await.expect_error(400, "invalid_request");
    }
    server
        .post("/v1/knowledge-bases", &t.admin_key, json!({"name": "strict"}))
        .await
        .expect_error(409, "conflict");
    server
        .post("/v1/knowledge-bases", &t.admin_key, json!({"name": "x", "embedding_model": "nope"}))
        .await
        .expect_error(400, "unknown_model");
    server
        .post("/v1/knowledge-bases", &t.app_key, json!({"name": "apps-cannot"}))
        .await
        .expect_error(403, "forbidden");
    server.get("/v1/knowledge-bases/not-an-id", &t.app_key).await.expect_error(404, "not_found");
}
both_backends!(bad_documents_are_refused_and_leave_nothing);

/// A's canary never reaches B — not when B searches with A's exact text,
/// and not when B holds a chunk with exactly the embedding of A's (B
/// uploads the very same bytes): B gets its own copy, never A's.
async fn search_never_crosses_tenants(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let a = server.tenant("kb-a", json!({})).await;
    let b = server.tenant("kb-b", json!({})).await;
    let secret = canary("kb-secret");
    let a_text = format!("The launch code for project Nightjar is {secret}.");
    let a_kb = create_kb(&server, &a, "shared-name").await;
    let b_kb = create_kb(&server, &b, "shared-name").await;
    let a_doc = upload(&server, &a, &a_kb, json!({"name": "codes.txt", "content": a_text})).await;
    let b_doc = upload(
        &server,
        &b,
        &b_kb,
        json!({"name": "codes.txt", "content": "The launch code for project Nightjar is unknown."}),
    )
    .await;

    // 1. B searches its own base with A's exact text: nothing of A's.
    for mode in ["hybrid", "vector", "text"] {
        let hits = search(&server, &b.app_key, &b_kb, json!({"query": a_text, "mode": mode, "k": 50})).await;
        assert!(!hits.is_empty(), "{mode}: B finds its own document");
        for h in &hits {
            assert_eq!(h["document_id"], b_doc["id"], "{mode}: a hit that is not B's: {h}");
            assert!(!h.to_string().contains(&secret), "{mode}: A's canary reached B: {h}");
        }
        // Naming A's knowledge base as well: 404, nothing more.
        let res = server
            .post(
                &format!("/v1/knowledge-bases/{b_kb}/search"),
                &b.app_key,
                json!({"query": a_text, "mode": mode, "also": [a_kb]}),
            )
            .await;
        res.expect_error(404, "not_found");
        assert!(!res.text.contains(&secret));
    }

    // 2. B holds the identical bytes (so identical chunks and vectors): every
    //    hit is one of B's documents, and the text appears once — B's copy.
    let clone = upload(&server, &b, &b_kb, json!({"name": "clone.txt", "content": a_text})).await;
    assert_ne!(clone["id"], a_doc["id"]);
    for mode in ["hybrid", "vector", "text"] {
        let hits = search(&server, &b.app_key, &b_kb, json!({"query": a_text, "mode": mode, "k": 50})).await;
        for h in &hits {
            assert!([&b_doc["id"], &clone["id"]].contains(&&h["document_id"]), "{mode}: not B's: {h}");
        }
        let copies: Vec<&Value> =
            hits.iter().filter(|h| h["text"].as_str().unwrap().contains(&secret)).collect();
        assert_eq!(copies.len(), 1, "{mode}: {hits:?}");
        assert_eq!(copies[0]["document_id"], clone["id"]);
        if mode != "text" {
            assert!(copies[0]["vector_score"].as_f64().unwrap() > 0.999, "{mode}: the same vector: {hits:?}");
        }
    }
    // A still finds its own.
    let hits = search(&server, &a.app_key, &a_kb, json!({"query": "launch code Nightjar"})).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["document_id"], a_doc["id"]);
}
both_backends!(search_never_crosses_tenants);

/// An agent searches its knowledge base through `knowledge_search`; an
/// agent cannot be given another tenant's knowledge base.
async fn agents_search_their_knowledge(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("kb-agent", json!({})).await;
    let other = server.tenant("kb-other", json!({})).await;
    let kb = create_kb(&server, &t, "facts").await;
    let fact = canary("fact");
    upload(
        &server,
        &t,
        &kb,
        json!({"name": "fact.txt", "content": format!("The office wifi password is {fact}.")}),
    )
    .await;
    let other_kb = create_kb(&server, &other, "theirs").await;

    let spec = json!({"model": "builtin/scripted", "tools": ["knowledge_search"], "knowledge_bases": [kb]});
    let agent = server.post("/v1/agents", &t.admin_key, json!({"name": "librarian", "spec": spec})).await;
    let agent = agent.expect(201)["id"].as_str().unwrap().to_owned();
    let stolen =
        json!({"model": "builtin/scripted", "tools": ["knowledge_search"], "knowledge_bases": [other_kb]});
    server
        .post("/v1/agents", &t.admin_key, json!({"name": "thief", "spec": stolen}))
        .await
        .expect_error(400, "invalid_request");

    let thread = server.post("/v1/threads", &t.app_key, json!({})).await;
    let thread = thread.expect(201)["id"].as_str().unwrap().to_owned();
    let run = server
        .post(
            &format!("/v1/threads/{thread}/runs"),
            &t.app_key,
            json!({"agent_id": agent, "mode": "sync", "message": "call knowledge_search {\"query\": \"wifi password\"}"}),
        )
        .await;
    let run = run.expect(200).clone();
    assert_eq!(run["status"], "completed", "{run}");
    let messages = server.get(&format!("/v1/threads/{thread}/messages"), &t.app_key).await;
    let messages = messages.expect(200)["data"].as_array().unwrap().clone();
    let tool = messages.iter().find(|m| m["role"] == "tool").expect("a tool message");
    assert!(tool["content"].as_str().unwrap().contains(&fact), "{tool}");
    let steps = server.get(&format!("/v1/runs/{}/steps", run["id"].as_str().unwrap()), &t.app_key).await;
    let steps = steps.expect(200)["data"].as_array().unwrap().clone();
    assert!(steps.iter().any(|s| s["kind"] == "tool_call" && s["data"]["ok"] == true), "{steps:?}");
}
both_backends!(agents_search_their_knowledge);

async fn openai_compatible_embeddings(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let t = server.tenant("emb", json!({})).await;
    let res = server
        .post(
            "/v1/embeddings",
            &t.app_key,
            json!({"model": "task:embedding", "input": ["a cat sat", "a kitten sat", "stock markets fell"]}),
        )
        .await;
    let body = res.expect(200).clone();
    let v: Vec<Vec<f64>> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    assert_eq!((v.len(), v[0].len(), body["model"].as_str()), (3, 384, Some("builtin/all-minilm-l6-v2")));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2, "cat~kitten closer than cat~markets");
    assert!(body["usage"]["prompt_tokens"].as_i64().unwrap() > 0);
    for bad in [
        json!({"model": "task:embedding", "input": []}),
        json!({"model": "task:embedding", "input": [1]}),
        json!({"model": "builtin/scripted", "input": "x"}),
        json!({"model": "task:embedding", "input": "x", "encoding_format": "base64"}),
    ] {
        server.post("/v1/embeddings", &t.app_key, bad).await.expect_error(400, "invalid_request");
    }
}
both_backends!(openai_compatible_embeddings);
