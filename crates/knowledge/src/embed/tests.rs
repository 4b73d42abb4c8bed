//! Tests of the embedders. Those of [`MiniLm`] run the real model, from the
//! directory in `BULKHEAD_MINILM_DIR` (`bash scripts/test.sh` sets it; by
//! hand: `BULKHEAD_MINILM_DIR=$(bash scripts/models.sh | tail -n 1)`); they
//! fail without it, unless `BULKHEAD_TEST_SKIP_MINILM=1` says the run leaves
//! the model out deliberately.
//!
//! The expected similarities are the ones sentence-transformers publishes
//! for all-MiniLM-L6-v2 in its documentation (quickstart and "Semantic
//! Textual Similarity"), printed there to four decimals.

use super::*;

#[test]
fn cosine_is_scale_free_and_bounded() {
    assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]), 0.0);
    assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
    assert!((cosine(&[1.0, 2.0], &[-3.0, -6.0]) + 1.0).abs() < 1e-6);
    assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
}

#[cfg(feature = "minilm")]
mod minilm {
    use std::sync::OnceLock;

    use bulkhead_core::Code;

    use super::super::*;
    use crate::chunk::DocFormat;

    const DIR_ENV: &str = "BULKHEAD_MINILM_DIR";
    const SKIP_ENV: &str = "BULKHEAD_TEST_SKIP_MINILM";

    /// The model, loaded once per test binary; `None` only when skipped.
    fn model() -> Option<&'static MiniLm> {
        static MODEL: OnceLock<MiniLm> = OnceLock::new();
        match std::env::var(DIR_ENV) {
            Ok(dir) if !dir.is_empty() => Some(MODEL.get_or_init(|| {
                MiniLm::load(&dir).unwrap_or_else(|e| panic!("{DIR_ENV}={dir}: {}", e.message))
            })),
            _ if std::env::var(SKIP_ENV).as_deref() == Ok("1") => {
                eprintln!("skipped: {SKIP_ENV}=1, the MiniLM tests deliberately left out");
                None
            }
            _ => panic!(
                "the MiniLM tests need the model directory in {DIR_ENV}: run the suite with \
                 `bash scripts/test.sh`, or `export {DIR_ENV}=$(bash scripts/models.sh | tail -n \
                 1)`, or set {SKIP_ENV}=1 to leave the model out deliberately"
            ),
        }
    }

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    fn embed(model: &MiniLm, texts: &[&str]) -> Vec<Vec<f32>> {
        let vectors = model.embed(&strings(texts)).unwrap();
        assert_eq!(vectors.len(), texts.len());
        vectors
    }

    fn assert_close(got: f32, want: f32, what: &str) {
        // Published to four decimals (±5e-5); candle and torch differ by ~1e-6.
        assert!((got - want).abs() < 1e-4, "{what}: {got:.5}, sentence-transformers {want:.4}");
    }

    #[test]
    fn vectors_have_384_dimensions_and_unit_length() {
        let Some(model) = model() else { return };
        assert_eq!(model.dimensions(), 384);
        let long = "tenant isolation ".repeat(300); // well over 256 tokens
        let vectors = embed(model, &["A man is eating food.", "", "数据 ünïcödé 😀", &long]);
        for (i, v) in vectors.iter().enumerate() {
            assert_eq!(v.len(), 384, "text {i}");
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "text {i}: norm {norm}");
            assert!(v.iter().all(|x| x.is_finite()), "text {i}");
        }
        assert!(model.embed(&[]).unwrap().is_empty());
    }

    #[test]
    fn similarities_match_the_published_ones() {
        let Some(model) = model() else { return };
        // sbert.net quickstart.
        let v = embed(
            model,
            &["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
        );
        assert_close(cosine(&v[0], &v[1]), 0.6660, "weather/sunny");
        assert_close(cosine(&v[0], &v[2]), 0.1046, "weather/stadium");
        assert_close(cosine(&v[1], &v[2]), 0.1411, "sunny/stadium");

        // sbert.net "Semantic Textual Similarity".
        let a = embed(model, &["The new movie is awesome", "The cat sits outside"]);
        let b = embed(model, &["The dog plays in the garden", "The new movie is so great"]);
        assert_close(cosine(&a[0], &b[1]), 0.8939, "movie/movie");
        assert_close(cosine(&a[0], &b[0]), 0.0543, "movie/dog");
        assert_close(cosine(&a[1], &b[0]), 0.2838, "cat/dog");
        assert_close(cosine(&a[1], &b[1]), -0.0029, "cat/movie");
    }

    #[test]
    fn closer_meanings_are_more_similar() {
        let Some(model) = model() else { return };
        let v = embed(
            model,
            &[
                "A man is eating food.",
                "A man is eating a piece of bread.",
                "A man is riding a horse.",
                "A man is eating pasta.",
            ],
        );
        let (food, bread, horse, pasta) = (&v[0], &v[1], &v[2], &v[3]);
        assert!(cosine(food, bread) > cosine(food, horse) + 0.2);
        // sentence-transformers' semantic search example ranks, for the
        // query "A man is eating pasta.": food, bread, …, horse.
        assert!(cosine(pasta, food) > cosine(pasta, bread));
        assert!(cosine(pasta, bread) > cosine(pasta, horse) + 0.2);
    }

    #[test]
    fn a_text_gets_the_same_vector_alone_and_in_any_batch() {
        let Some(model) = model() else { return };
        let target = "Tenants' documents are split into chunks before they are embedded.";
        let alone = &embed(model, &[target])[0];
        // Shorter and longer neighbours (padding on both sides of the sort),
        // and enough texts to span two batches.
        let mut batch = vec![
            "Hi.",
            "A much longer sentence, which forces the short ones in its batch to be padded \
             with many padding tokens that the mean must ignore.",
        ];
        batch.extend(std::iter::repeat_n("A man is eating food.", MiniLm::BATCH));
        batch.push(target);
        let in_batch = embed(model, &batch);
        let max_diff =
            |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max_diff(alone, in_batch.last().unwrap()) < 1e-4);
        // The short text, padded in the batch, against itself alone.
        assert!(max_diff(&embed(model, &["Hi."])[0], &in_batch[0]) < 1e-4);
    }

    #[test]
    fn embedding_is_deterministic() {
        let Some(model) = model() else { return };
        let texts = ["The refund policy.", "A man is riding a horse."];
        assert_eq!(embed(model, &texts), embed(model, &texts));
    }

    #[test]
    fn texts_are_cut_at_256_tokens() {
        let Some(model) = model() else { return };
        let chunker = model.chunker(MiniLm::MAX_CHUNK_TOKENS, 0).unwrap();
        let long = "tenant isolation matters. ".repeat(80);
        assert!(chunker.count_tokens(&long) > MiniLm::MAX_CHUNK_TOKENS);
        let v = embed(model, &[&long, &format!("{long} Something else entirely: horses.")]);
        // Both inputs are cut before the point where they differ.
        assert!(cosine(&v[0], &v[1]) > 0.9999);
    }

    #[test]
    fn chunks_of_the_minilm_chunker_fit_the_model() {
        let Some(model) = model() else { return };
        let err = model.chunker(MiniLm::MAX_CHUNK_TOKENS + 1, 0).unwrap_err();
        assert_eq!(err.code, Code::InvalidRequest);

        let section = "Bulkhead keeps tenants apart: every query runs in the tenant's own \
                       context, and row-level security checks it again in the database. ";
        let doc = format!(
            "# Isolation\n\n{}\n\n## Budgets\n\n{}\n\n- one\n- two\n",
            section.repeat(12),
            section.repeat(3)
        );
        let chunker = model.chunker(MiniLm::MAX_CHUNK_TOKENS, 32).unwrap();
        let chunks = chunker.chunk(&doc, DocFormat::Markdown).unwrap();
        assert!(chunks.len() >= 2, "{chunks:?}");
        let with_specials = |text: &str| model.tokenizer.encode(text, true).unwrap().len();
        for c in &chunks {
            assert!(c.tokens <= MiniLm::MAX_CHUNK_TOKENS, "{}", c.tokens);
            // Not cut when embedded: [CLS] + text + [SEP] fits in 256.
            assert_eq!(with_specials(&c.text), c.tokens + 2);
        }
        assert!(chunks.iter().any(|c| c.text.starts_with("## Budgets")), "{chunks:?}");
        let vectors = model.embed(&chunks.iter().map(|c| c.text.clone()).collect::<Vec<_>>());
        assert_eq!(vectors.unwrap().len(), chunks.len());
    }

    #[test]
    fn loading_from_a_wrong_directory_says_how_to_get_the_model() {
        let err = MiniLm::load("/nonexistent/minilm").unwrap_err();
        assert_eq!(err.code, Code::Internal);
        assert!(err.message.contains("cannot read config.json"), "{}", err.message);
        assert!(err.message.contains("scripts/models.sh"), "{}", err.message);
    }
}
