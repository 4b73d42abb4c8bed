//! Knowledge: turning a tenant's documents into pieces that can be found
//! again. This first part owns the two steps that need no storage:
//!
//! - [`chunk`]: splitting plain text, Markdown and HTML (through
//!   [`html_to_text`]) into chunks of at most N tokens of the embedding
//!   model's tokenizer, with overlap, along headings, paragraphs, sentences
//!   and words — in that order of preference;
//! - [`embed`]: the [`Embedder`] trait, and `MiniLm` (feature `minilm`,
//!   on by default): all-MiniLM-L6-v2 on candle, which reproduces
//!   sentence-transformers' 384-dimensional, unit-length embeddings.
//!
//! Invariants, as absences:
//! - Nothing here touches the network. The model and its tokenizer are read
//!   from a local directory (`scripts/models.sh` installs one); no code path
//!   downloads weights, tokenizers or anything else.
//! - Nothing here keeps state between calls: chunking and embedding are pure
//!   functions of (document, model), so one tenant's text cannot reach
//!   another's results. Tenancy is the caller's: these APIs take no tenant.
//! - No document that is empty, binary or not UTF-8 is chunked; it is an
//!   [`Error`](bulkhead_core::Error) with `Code::InvalidRequest` instead.

pub mod chunk;
pub mod embed;
pub mod html;

pub use chunk::{Chunk, Chunker, DocFormat, decode_document};
#[cfg(feature = "minilm")]
pub use embed::MiniLm;
pub use embed::{Embedder, cosine};
pub use html::html_to_text;
