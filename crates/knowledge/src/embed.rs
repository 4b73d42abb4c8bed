//! Text embeddings: the [`Embedder`] trait, and `MiniLm` (feature
//! `minilm`), all-MiniLM-L6-v2 run on the CPU with candle.
//!
//! `MiniLm` reproduces sentence-transformers' pipeline for this model:
//! WordPiece tokens with `[CLS]`/`[SEP]`, truncated to 256 tokens; the BERT
//! encoder; the mean of the token vectors over the attention mask; L2
//! normalisation. So its vectors have 384 dimensions, unit length, and match
//! the published ones (cosine similarity is a dot product).
//!
//! Invariants: the model is read from a local directory and nothing is ever
//! downloaded; the vector of a text does not depend on what else is in the
//! batch (padding is masked out of attention and of the mean), so a text
//! gets the same vector alone, in any batch, on any call.

use bulkhead_core::Error;

/// Turns texts into vectors of a fixed number of dimensions.
///
/// Embedding is CPU-bound and blocks: async code calls it from a blocking
/// thread (`tokio::task::spawn_blocking`).
pub trait Embedder: Send + Sync {
    /// The length of every vector `embed` returns.
    fn dimensions(&self) -> usize;

    /// One vector per text, in the order of `texts`.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, Error>;
}

/// Cosine similarity of two vectors of the same length (0 when either is
/// zero). For unit vectors, as `MiniLm` returns, this is their dot product.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut dot, mut aa, mut bb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    let norms = (aa * bb).sqrt();
    if norms == 0.0 { 0.0 } else { dot / norms }
}

#[cfg(feature = "minilm")]
pub use minilm::MiniLm;

#[cfg(feature = "minilm")]
mod minilm {
    use std::fmt;
    use std::path::{Path, PathBuf};

    use bulkhead_core::{Code, Error};
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::{BertModel, Config, DTYPE};
    use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

    use super::Embedder;
    use crate::chunk::Chunker;

    /// all-MiniLM-L6-v2 (sentence-transformers), on the CPU.
    ///
    /// Load it from the directory `scripts/models.sh` prints, which holds
    /// `config.json`, `tokenizer.json` and `model.safetensors`. It takes
    /// about 90 MB of memory; `embed` takes `&self`, so share one instance.
    pub struct MiniLm {
        model: BertModel,
        /// Truncates to `MAX_SEQUENCE_TOKENS`; pads nothing (we pad per batch).
        pub(super) tokenizer: Tokenizer,
        pad_id: u32,
        dir: PathBuf,
    }

    impl fmt::Debug for MiniLm {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("MiniLm").field("dir", &self.dir).finish_non_exhaustive()
        }
    }

    impl MiniLm {
        /// The length of its vectors.
        pub const DIMENSIONS: usize = 384;
        /// The longest input, in tokens, counting `[CLS]` and `[SEP]`
        /// (sentence-transformers' `max_seq_length`); longer texts are cut.
        pub const MAX_SEQUENCE_TOKENS: usize = 256;
        /// The most tokens of text that fit in one input: chunks for this
        /// model should be at most this long.
        pub const MAX_CHUNK_TOKENS: usize = Self::MAX_SEQUENCE_TOKENS - 2;
        /// Texts run through the model this many at a time, which bounds the
        /// memory of attention (batch × 12 heads × 256² floats, 50 MB).
        pub(super) const BATCH: usize = 16;

        /// Loads the model from a directory; never downloads anything.
        pub fn load(dir: impl AsRef<Path>) -> Result<Self, Error> {
            let dir = dir.as_ref();
            let read = |name: &str| {
                std::fs::read(dir.join(name))
                    .map_err(|e| load_error(dir, format!("cannot read {name}"), e.into()))
            };

            let config: Config = serde_json::from_slice(&read("config.json")?)
                .map_err(|e| load_error(dir, "config.json is not a BERT configuration".into(), e.into()))?;
            if config.hidden_size != Self::DIMENSIONS {
                return Err(load_error(
                    dir,
                    format!(
                        "config.json describes a model with {} dimensions, not all-MiniLM-L6-v2 \
                         (384)",
                        config.hidden_size
                    ),
                    "unexpected hidden_size".into(),
                ));
            }

            let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
                .map_err(|e| load_error(dir, "tokenizer.json is not a tokenizer".into(), e))?;
            // The file pads and truncates to 128; sentence-transformers uses
            // 256 for this model, and pads per batch.
            tokenizer.with_padding(None);
            tokenizer
                .with_truncation(Some(TruncationParams {
                    max_length: Self::MAX_SEQUENCE_TOKENS,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                    direction: TruncationDirection::Right,
                }))
                .map_err(|e| load_error(dir, "cannot set the tokenizer's truncation".into(), e))?;

            // Read into memory rather than mmap: mmap needs `unsafe` (the file
            // could change under us). The tensors are copied out of `weights`,
            // which is freed when `load` returns.
            let weights = read("model.safetensors")?;
            let model = VarBuilder::from_slice_safetensors(&weights, DTYPE, &Device::Cpu)
                .and_then(|vb| BertModel::load(vb, &config))
                .map_err(|e| load_error(dir, "model.safetensors does not hold the model".into(), e.into()))?;

            let pad_id = u32::try_from(config.pad_token_id)
                .map_err(|e| load_error(dir, "config.json has an invalid pad_token_id".into(), e.into()))?;
            Ok(Self { model, tokenizer, pad_id, dir: dir.to_owned() })
        }

        /// A chunker counting tokens with this model's tokenizer.
        /// `max_tokens` may be at most [`Self::MAX_CHUNK_TOKENS`], so that no
        /// chunk is cut when it is embedded.
        pub fn chunker(&self, max_tokens: usize, overlap: usize) -> Result<Chunker, Error> {
            if max_tokens > Self::MAX_CHUNK_TOKENS {
                return Err(Error::invalid(format!(
                    "chunks for all-MiniLM-L6-v2 can be at most {} tokens ({} with [CLS] and \
                     [SEP]); {max_tokens} asked",
                    Self::MAX_CHUNK_TOKENS,
                    Self::MAX_SEQUENCE_TOKENS
                )));
            }
            Chunker::new(&self.tokenizer, max_tokens, overlap)
        }

        /// Tokens the model reads for `text` ([CLS] and [SEP] included,
        /// truncation applied): what an embedding of it is metered by.
        pub fn count_tokens(&self, text: &str) -> usize {
            self.tokenizer.encode(text, true).map(|e| e.len()).unwrap_or(0)
        }

        /// Runs one batch: pads to its longest input, masks the padding, and
        /// returns the mean-pooled, normalised vectors.
        fn forward(&self, inputs: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
            let rows = inputs.len();
            let len = inputs.iter().map(|ids| ids.len()).max().unwrap_or(0);
            let mut ids = Vec::with_capacity(rows * len);
            let mut mask = Vec::with_capacity(rows * len);
            for input in inputs {
                ids.extend_from_slice(input);
                ids.resize(ids.len() + len - input.len(), self.pad_id);
                mask.resize(mask.len() + input.len(), 1u32);
                mask.resize(mask.len() + len - input.len(), 0u32);
            }
            let ids = Tensor::from_vec(ids, (rows, len), &Device::Cpu)?;
            let mask = Tensor::from_vec(mask, (rows, len), &Device::Cpu)?;
            let token_types = ids.zeros_like()?;
            let hidden = self.model.forward(&ids, &token_types, Some(&mask))?; // (rows, len, 384)

            // Mean over the real tokens only, as sentence-transformers' Pooling.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, len, 1)
            let sums = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, 384)
            let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (rows, 1)
            let means = sums.broadcast_div(&counts)?;
            // L2 normalisation, as torch.nn.functional.normalize (eps 1e-12).
            let norms = means.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            means.broadcast_div(&norms)?.to_vec2::<f32>()
        }
    }

    impl Embedder for MiniLm {
        fn dimensions(&self) -> usize {
            Self::DIMENSIONS
        }

        fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, Error> {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let encodings = self.tokenizer.encode_batch(inputs, true).map_err(Error::internal)?;
            // Batches of similar lengths waste little on padding; the order
            // of `texts` is restored below.
            let mut order: Vec<usize> = (0..texts.len()).collect();
            order.sort_by_key(|&i| encodings[i].len());
            let mut vectors = vec![Vec::new(); texts.len()];
            for batch in order.chunks(Self::BATCH) {
                let inputs: Vec<&[u32]> = batch.iter().map(|&i| encodings[i].get_ids()).collect();
                let batch_vectors = self.forward(&inputs).map_err(Error::internal)?;
                for (&i, vector) in batch.iter().zip(batch_vectors) {
                    vectors[i] = vector;
                }
            }
            Ok(vectors)
        }
    }

    /// A failure to load the model: it is the operator's to fix, so the
    /// message says what is wrong and how to get the files.
    fn load_error(dir: &Path, what: String, source: Box<dyn std::error::Error + Send + Sync>) -> Error {
        Error {
            code: Code::Internal,
            message: format!(
                "cannot load all-MiniLM-L6-v2 from {}: {what} ({source}); install the model with \
                 `bash scripts/models.sh` and use the directory it prints",
                dir.display()
            )
            .into(),
            details: None,
            source: Some(source),
        }
    }
}

#[cfg(all(test, feature = "minilm"))]
mod tests;
