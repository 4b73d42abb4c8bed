//! Knowledge: a tenant's documents turned into pieces that can be found
//! again, and found.
//!
//! - [`chunk`]: splitting plain text, Markdown and HTML (through
//!   [`html_to_text`]) into chunks of at most N tokens of the embedding
//!   model's tokenizer, with overlap, along headings, paragraphs, sentences
//!   and words — in that order of preference;
//! - [`embed`]: the [`Embedder`] trait, and `MiniLm` (feature `minilm`,
//!   on by default): all-MiniLM-L6-v2 on candle, which reproduces
//!   sentence-transformers' 384-dimensional, unit-length embeddings;
//! - [`embedding`]: embedding for a tenant — its model resolved through its
//!   model settings, metered (tokens, budget, usage events); the built-in
//!   model in process, others through their provider;
//! - [`index`]: the in-memory vector index of one (tenant, knowledge base)
//!   in the embedded mode — exact up to a size, HNSW beyond;
//!   [`fusion`]: reciprocal rank fusion;
//! - [`service`]: [`Knowledge`] — knowledge bases, uploads checked at once,
//!   ingestion jobs, hybrid search returning `TenantBound` hits.
//!
//! Invariants, as absences:
//! - Nothing here touches the network but a tenant's own embedding provider.
//!   The built-in model and its tokenizer are read from a local directory
//!   (`scripts/models.sh` installs one); no code path downloads weights.
//! - No service method takes a bare tenant id; no index or cache entry is
//!   shared between tenants or knowledge bases.
//! - No document that is empty, binary, not UTF-8, too large or without
//!   text is stored; it is an [`Error`](bulkhead_core::Error) with a 4xx
//!   code instead.

pub mod chunk;
pub mod embed;
pub mod embedding;
pub mod fusion;
pub mod html;
pub mod index;
pub mod service;

pub use chunk::{Chunk, Chunker, DocFormat, decode_document};
#[cfg(feature = "minilm")]
pub use embed::MiniLm;
pub use embed::{Embedder, cosine};
pub use fusion::{DEFAULT_RRF_K, reciprocal_rank_fusion};
pub use html::html_to_text;
pub use index::{IndexConfig, VectorIndex};
pub use service::{Hit, KbRequest, Knowledge, SearchMode, SearchRequest, Upload};
