//! Token-aware chunking: a document becomes a list of [`Chunk`]s of at most
//! `max_tokens` tokens each, counted by the embedding model's tokenizer, so
//! no chunk is cut short when it is embedded.
//!
//! Where to cut, in order of preference:
//! - Markdown (and HTML, which [`html_to_text`] turns into Markdown-like
//!   text first): at headings. A section that fits is one piece; one that
//!   does not is cut at its highest-level sub-headings, recursively.
//!   Neighbouring pieces are merged while they fit. A section that does not
//!   fit and has no sub-headings is cut as plain text.
//! - Plain text (text-splitter's `TextSplitter`): at runs of blank lines
//!   (longer runs first), then line breaks, sentences, words, graphemes,
//!   merging neighbours while they fit. Chunks cut this way share up to
//!   `overlap` tokens with their neighbours, so a sentence cut at a boundary
//!   is whole in one of them. Sections cut at headings share nothing: a
//!   heading is a clean break.
//!
//! (text-splitter's own Markdown splitter is not used: it ranks inline
//! elements above sentences, and its parser splits text at every quote, so a
//! long paragraph was cut inside words such as "tenant's".)
//!
//! Invariants: every chunk is non-empty, has no leading or trailing
//! whitespace, is at most `max_tokens` tokens (unless a single grapheme is
//! longer, which takes `max_tokens` below ~4), and is the exact slice
//! `start_byte..end_byte` of the text that was split; chunks come in text
//! order, and together they cover every non-whitespace character. For HTML,
//! "the text that was split" is `html_to_text(document)`.
//!
//! Documents that are empty, binary (NUL bytes, many control characters)
//! or — from bytes — not UTF-8 are refused with `Code::InvalidRequest`.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use bulkhead_core::{Code, Error};
use pulldown_cmark::{Event, Options, Parser, Tag};
use text_splitter::{ChunkConfig, ChunkSizer, TextSplitter};
use tokenizers::Tokenizer;

use crate::html::html_to_text;

/// The format of a document, which decides how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocFormat {
    /// Plain text: split at blank lines, lines, sentences, words.
    Text,
    /// CommonMark: split at headings, then as plain text.
    Markdown,
    /// HTML: converted with [`html_to_text`], then split as Markdown.
    Html,
}

/// One piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the document's chunk list, from 0.
    pub index: usize,
    /// The chunk's text: `start_byte..end_byte` of the text that was split.
    pub text: String,
    /// Byte offset of the chunk in the text that was split (for HTML, in
    /// `html_to_text(document)`).
    pub start_byte: usize,
    /// Byte offset just past the chunk's end.
    pub end_byte: usize,
    /// Tokens in `text`, without the model's special tokens.
    pub tokens: usize,
}

/// Splits documents into chunks of at most `max_tokens` tokens of one
/// tokenizer, with `overlap` tokens shared between neighbours. Cheap to
/// share: `chunk` takes `&self`.
pub struct Chunker {
    counter: TokenCounter,
    max_tokens: usize,
    overlap: usize,
}

impl fmt::Debug for Chunker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunker")
            .field("max_tokens", &self.max_tokens)
            .field("overlap", &self.overlap)
            .finish_non_exhaustive()
    }
}

impl Chunker {
    /// A chunker counting tokens with `tokenizer` (its truncation and
    /// padding settings are ignored: tokens are counted in full, without
    /// special tokens). `max_tokens` must be at least 1 and `overlap`
    /// smaller than it.
    pub fn new(tokenizer: &Tokenizer, max_tokens: usize, overlap: usize) -> Result<Self, Error> {
        if max_tokens == 0 {
            return Err(Error::invalid("the chunk size must be at least 1 token"));
        }
        if overlap >= max_tokens {
            return Err(Error::invalid(format!(
                "the chunk overlap ({overlap} tokens) must be smaller than the chunk size \
                 ({max_tokens} tokens)"
            )));
        }
        Ok(Self { counter: TokenCounter::new(tokenizer)?, max_tokens, overlap })
    }

    /// A chunker whose tokenizer is read from a `tokenizer.json` file.
    pub fn from_file(
        tokenizer_json: impl AsRef<Path>,
        max_tokens: usize,
        overlap: usize,
    ) -> Result<Self, Error> {
        let path = tokenizer_json.as_ref();
        let tokenizer = Tokenizer::from_file(path).map_err(|e| Error {
            code: Code::Internal,
            message: format!("cannot read the tokenizer {}: {e}", path.display()).into(),
            details: None,
            source: Some(e),
        })?;
        Self::new(&tokenizer, max_tokens, overlap)
    }

    /// The most tokens a chunk may have.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The most tokens two neighbouring chunks share.
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    /// Tokens in `text` as chunks count them (no special tokens).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.counter.count(text)
    }

    /// Splits a document; see the module docs for the guarantees.
    pub fn chunk(&self, document: &str, format: DocFormat) -> Result<Vec<Chunk>, Error> {
        check_text(document)?;
        let text: Cow<'_, str> = match format {
            DocFormat::Html => {
                let text = html_to_text(document);
                if text.is_empty() {
                    return Err(Error::invalid(
                        "the HTML document has no visible text (only markup, scripts or styles)",
                    ));
                }
                Cow::Owned(text)
            }
            DocFormat::Text | DocFormat::Markdown => Cow::Borrowed(document),
        };
        let pieces = match format {
            DocFormat::Text => self.split_text(&text, 0..text.len(), self.max_tokens)?,
            DocFormat::Markdown | DocFormat::Html => self.split_markdown(&text)?,
        };
        Ok(pieces
            .into_iter()
            .enumerate()
            .map(|(index, (start, piece))| Chunk {
                index,
                text: piece.to_owned(),
                start_byte: start,
                end_byte: start + piece.len(),
                tokens: self.counter.count(piece),
            })
            .collect())
    }

    /// Splits a document given as bytes, which must be UTF-8 (a byte-order
    /// mark is skipped; offsets count from after it).
    pub fn chunk_bytes(&self, document: &[u8], format: DocFormat) -> Result<Vec<Chunk>, Error> {
        self.chunk(decode_document(document)?, format)
    }
}

impl Chunker {
    fn fits(&self, text: &str) -> bool {
        self.counter.count(text) <= self.max_tokens
    }

    /// `text[range]` cut by text-splitter into chunks of at most `capacity`
    /// tokens, with overlap; offsets in `text`.
    fn split_text<'t>(
        &self,
        text: &'t str,
        range: Range<usize>,
        capacity: usize,
    ) -> Result<Vec<(usize, &'t str)>, Error> {
        let config = ChunkConfig::new(capacity)
            .with_sizer(&self.counter)
            .with_overlap(self.overlap)
            // Callers keep `overlap < capacity`; this cannot fail.
            .map_err(Error::internal)?;
        Ok(TextSplitter::new(config)
            .chunk_indices(&text[range.clone()])
            .filter(|(_, piece)| !piece.is_empty())
            .map(|(at, piece)| (range.start + at, piece))
            .collect())
    }

    fn split_markdown<'t>(&self, text: &'t str) -> Result<Vec<(usize, &'t str)>, Error> {
        let headings = headings(text);
        let mut pieces = Vec::new();
        self.sections(text, 0..text.len(), &headings, &mut pieces)?;

        // Merge neighbouring whole sections while they fit; a heading with
        // no text of its own goes with what follows it, not what precedes.
        let mut chunks = Vec::new();
        let mut pending: Option<Range<usize>> = None;
        for piece in pieces {
            match piece {
                Piece::Section { range, bare_heading } => {
                    pending = match pending {
                        Some(p) if !bare_heading && self.fits(&text[p.start..range.end]) => {
                            Some(p.start..range.end)
                        }
                        Some(p) => {
                            chunks.extend(trimmed(text, p));
                            Some(range)
                        }
                        None => Some(range),
                    };
                }
                Piece::Cut(cut) => {
                    chunks.extend(pending.take().and_then(|p| trimmed(text, p)));
                    chunks.extend(cut);
                }
            }
        }
        chunks.extend(pending.and_then(|p| trimmed(text, p)));
        Ok(chunks)
    }

    /// Appends the pieces of `text[range]`: the whole range if it fits, else
    /// its sections under its highest-level headings, recursively, and as a
    /// last resort the range cut as plain text.
    fn sections<'t>(
        &self,
        text: &'t str,
        range: Range<usize>,
        headings: &[Heading],
        out: &mut Vec<Piece<'t>>,
    ) -> Result<(), Error> {
        if self.fits(&text[range.clone()]) {
            let bare_heading = headings
                .iter()
                .any(|h| h.start == range.start && text[h.end.min(range.end)..range.end].trim().is_empty());
            out.push(Piece::Section { range, bare_heading });
            return Ok(());
        }
        // Headings strictly inside: one at `range.start` heads this section.
        let inside: Vec<&Heading> =
            headings.iter().filter(|h| range.start < h.start && h.start < range.end).collect();
        let Some(top) = inside.iter().map(|h| h.level).min() else {
            out.push(Piece::Cut(self.cut_section(text, range, headings)?));
            return Ok(());
        };
        let mut start = range.start;
        for heading in inside.into_iter().filter(|h| h.level == top) {
            self.sections(text, start..heading.start, headings, out)?;
            start = heading.start;
        }
        self.sections(text, start..range.end, headings, out)
    }

    /// Cuts a section without sub-headings that does not fit, as plain text.
    /// Its heading goes with the first chunk of its text, so that chunk says
    /// what it is about and no chunk is a heading alone — when it fits.
    fn cut_section<'t>(
        &self,
        text: &'t str,
        range: Range<usize>,
        headings: &[Heading],
    ) -> Result<Vec<(usize, &'t str)>, Error> {
        let plain = || self.split_text(text, range.clone(), self.max_tokens);
        let Some(heading) = headings.iter().find(|h| h.start == range.start && h.end < range.end) else {
            return plain();
        };
        // Room for the heading in the body's chunks (all of them, so that the
        // first, with the heading, fits too); not worth halving them for.
        let room = self.max_tokens.saturating_sub(self.counter.count(&text[heading.start..heading.end]));
        if room <= self.overlap || room < self.max_tokens / 2 {
            return plain();
        }
        let mut chunks = self.split_text(text, heading.end..range.end, room)?;
        let glued = chunks.first().and_then(|&(at, first)| trimmed(text, range.start..at + first.len()));
        match glued {
            Some(glued) if self.fits(glued.1) => {
                chunks[0] = glued;
                Ok(chunks)
            }
            _ => plain(),
        }
    }
}

/// A piece of a Markdown document on its way to becoming chunks.
enum Piece<'t> {
    /// A whole section (or run of text between headings) that fits;
    /// `bare_heading` when it is a heading without text of its own.
    Section { range: Range<usize>, bare_heading: bool },
    /// A section that did not fit, already cut into chunks.
    Cut(Vec<(usize, &'t str)>),
}

/// A top-level Markdown heading: its byte range and level, 1 to 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heading {
    start: usize,
    end: usize,
    level: usize,
}

/// `text[range]` without surrounding whitespace, unless nothing is left.
fn trimmed(text: &str, range: Range<usize>) -> Option<(usize, &str)> {
    let piece = &text[range.clone()];
    let start = range.start + (piece.len() - piece.trim_start().len());
    let piece = piece.trim();
    (!piece.is_empty()).then_some((start, piece))
}

/// The top-level headings of a Markdown document, in order; not those
/// inside quotes, lists or other containers.
fn headings(text: &str) -> Vec<Heading> {
    // Front matter (`---` … `---`) is metadata, not a setext heading.
    let options =
        Options::ENABLE_YAML_STYLE_METADATA_BLOCKS | Options::ENABLE_TABLES | Options::ENABLE_FOOTNOTES;
    let mut depth = 0usize;
    let mut headings = Vec::new();
    for (event, range) in Parser::new_ext(text, options).into_offset_iter() {
        match event {
            Event::Start(tag) => {
                if let Tag::Heading { level, .. } = tag
                    && depth == 0
                {
                    headings.push(Heading { start: range.start, end: range.end, level: level as usize });
                }
                depth += 1;
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    headings
}

/// The text of a document given as bytes: UTF-8 without its byte-order
/// mark. Binary content (NUL bytes) and invalid UTF-8 are refused with
/// `Code::InvalidRequest`; emptiness is checked when chunking.
pub fn decode_document(bytes: &[u8]) -> Result<&str, Error> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.contains(&0) {
        return Err(binary());
    }
    std::str::from_utf8(bytes).map_err(|e| {
        Error::invalid(format!(
            "the document is not valid UTF-8 (first invalid byte at offset {}); convert it to \
             UTF-8 and send it again",
            e.valid_up_to()
        ))
    })
}

fn binary() -> Error {
    Error::invalid(
        "the document looks binary (it contains NUL bytes or many control characters); send \
         plain text, Markdown or HTML encoded as UTF-8",
    )
}

/// Refuses text with nothing to index, or that is not text at all.
fn check_text(text: &str) -> Result<(), Error> {
    if text.trim().is_empty() {
        return Err(Error::invalid("the document is empty: it has no text to chunk"));
    }
    if text.contains('\0') {
        return Err(binary());
    }
    // Text has few control characters besides tab, newlines and form feed;
    // decoded binary (or a wrong encoding) has many.
    let mut chars = 0usize;
    let mut controls = 0usize;
    for c in text.chars() {
        chars += 1;
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c') {
            controls += 1;
        }
    }
    if controls * 10 > chars {
        return Err(binary());
    }
    Ok(())
}

/// Counts tokens with a tokenizer whose truncation and padding are off, so
/// the count is the text's full length in tokens.
struct TokenCounter(Tokenizer);

impl TokenCounter {
    fn new(tokenizer: &Tokenizer) -> Result<Self, Error> {
        let mut tokenizer = tokenizer.clone();
        tokenizer.with_truncation(None).map_err(Error::internal)?;
        tokenizer.with_padding(None);
        Ok(Self(tokenizer))
    }

    fn count(&self, text: &str) -> usize {
        // A text the tokenizer refuses counts as its length in bytes: with
        // the tokenizers we use every token covers at least one byte, so this
        // can only overestimate, and an overestimate only makes chunks smaller.
        self.0.encode_fast(text, false).map_or(text.len(), |encoding| encoding.len())
    }
}

impl ChunkSizer for TokenCounter {
    fn size(&self, chunk: &str) -> usize {
        self.count(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small BERT-like WordPiece tokenizer (lower-casing normaliser, BERT
    /// pre-tokeniser), so chunking is tested without the model files: whole
    /// words for a few common words, letters and `##` pieces for the rest,
    /// `[UNK]` for what it does not know.
    pub(crate) fn test_tokenizer() -> Tokenizer {
        let mut vocab = serde_json::Map::new();
        let mut add = |token: &str| {
            let id = vocab.len();
            vocab.entry(token.to_owned()).or_insert(id.into());
        };
        for special in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] {
            add(special);
        }
        for c in ('a'..='z').chain('0'..='9') {
            add(&c.to_string());
            add(&format!("##{c}"));
        }
        for c in ".,!?;:'\"()-#*`[]/&$%<>=_+".chars() {
            add(&c.to_string());
        }
        for word in ["the", "refund", "policy", "tenant", "chunk", "heading", "para", "##graph"] {
            add(word);
        }
        for suffix in ["##s", "##ing", "##ed"] {
            add(suffix);
        }
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": {
                "type": "BertNormalizer",
                "clean_text": true,
                "handle_chinese_chars": true,
                "strip_accents": null,
                "lowercase": true
            },
            "pre_tokenizer": { "type": "BertPreTokenizer" },
            "post_processor": null,
            "decoder": null,
            "model": {
                "type": "WordPiece",
                "unk_token": "[UNK]",
                "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100,
                "vocab": vocab
            }
        });
        Tokenizer::from_bytes(json.to_string()).expect("test tokenizer")
    }

    fn chunker(max_tokens: usize, overlap: usize) -> Chunker {
        Chunker::new(&test_tokenizer(), max_tokens, overlap).unwrap()
    }

    fn texts(chunks: &[Chunk]) -> Vec<&str> {
        chunks.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn the_test_tokenizer_counts_word_pieces() {
        let c = chunker(10, 0);
        assert_eq!(c.count_tokens("The refund policy"), 3);
        assert_eq!(c.count_tokens("tenants"), 2); // tenant ##s
        assert_eq!(c.count_tokens("ab"), 2); // a ##b
        assert_eq!(c.count_tokens("Hi!"), 3); // h ##i !
        assert_eq!(c.count_tokens(""), 0);
    }

    #[test]
    fn bad_settings_are_invalid_requests() {
        let tok = test_tokenizer();
        for (max, overlap) in [(0, 0), (10, 10), (10, 11)] {
            let err = Chunker::new(&tok, max, overlap).unwrap_err();
            assert_eq!(err.code, Code::InvalidRequest, "{max}/{overlap}");
        }
        assert!(Chunker::new(&tok, 10, 9).is_ok());
    }

    #[test]
    fn bad_documents_are_invalid_requests_that_say_why() {
        let c = chunker(32, 4);
        let cases: [(&[u8], &str); 6] = [
            (b"", "empty"),
            (b" \n\t \r\n", "empty"),
            (b"\xEF\xBB\xBF", "empty"),
            (b"text\0with a NUL", "binary"),
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "binary"),
            (b"caf\xE9 au lait", "not valid UTF-8 (first invalid byte at offset 3)"),
        ];
        for (bytes, why) in cases {
            let err = c.chunk_bytes(bytes, DocFormat::Text).unwrap_err();
            assert_eq!(err.code, Code::InvalidRequest, "{bytes:?}");
            assert!(err.message.contains(why), "{bytes:?}: {}", err.message);
        }
        // Decoded binary without NULs: mostly control characters.
        let err = c.chunk("\x01\x02\x03\x04ab\x05\x06", DocFormat::Text).unwrap_err();
        assert!(err.message.contains("binary"), "{}", err.message);
        // HTML with nothing visible.
        let err = c.chunk("<script>x()</script><style>p{}</style>", DocFormat::Html).unwrap_err();
        assert_eq!(err.code, Code::InvalidRequest);
        assert!(err.message.contains("no visible text"), "{}", err.message);
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let c = chunker(32, 0);
        let chunks = c.chunk_bytes(b"\xEF\xBB\xBFthe refund policy", DocFormat::Text).unwrap();
        assert_eq!(texts(&chunks), ["the refund policy"]);
        assert_eq!((chunks[0].start_byte, chunks[0].end_byte), (0, 17));
    }

    #[test]
    fn markdown_is_split_at_headings_before_paragraphs() {
        // Each section is 9 tokens; two do not fit in 12, so the cut falls
        // between sections, not inside one.
        let doc = "# Refund\n\nThe refund policy: the refund.\n\n\
                   # Tenant\n\nThe tenant policy: the tenant.\n";
        let chunks = chunker(12, 0).chunk(doc, DocFormat::Markdown).unwrap();
        assert_eq!(
            texts(&chunks),
            ["# Refund\n\nThe refund policy: the refund.", "# Tenant\n\nThe tenant policy: the tenant."]
        );
        // Both fit in 18: neighbours are merged.
        let chunks = chunker(18, 0).chunk(doc, DocFormat::Markdown).unwrap();
        assert_eq!(chunks.len(), 1);
        // The cut is at the highest level: the `##` sections stay with
        // their `#` section while it fits.
        let doc = "# Refund\n\nThe refund.\n\n## Policy\n\nThe policy.\n\n\
                   # Tenant\n\nThe tenant.\n\n## Policy\n\nThe policy.";
        let chunks = chunker(16, 0).chunk(doc, DocFormat::Markdown).unwrap();
        assert_eq!(
            texts(&chunks),
            [
                "# Refund\n\nThe refund.\n\n## Policy\n\nThe policy.",
                "# Tenant\n\nThe tenant.\n\n## Policy\n\nThe policy."
            ]
        );
        // A heading without text of its own starts the next chunk.
        let doc = "# Refund\n\nThe refund policy.\n\n# Tenant\n\n## Policy\n\nThe tenant policy.";
        let chunks = chunker(10, 0).chunk(doc, DocFormat::Markdown).unwrap();
        assert_eq!(
            texts(&chunks),
            ["# Refund\n\nThe refund policy.", "# Tenant\n\n## Policy\n\nThe tenant policy."]
        );
    }

    #[test]
    fn long_markdown_paragraphs_are_cut_at_sentences_not_inside_words() {
        // Quotes and emphasis must not become cut points ahead of sentences.
        let sentence = "The tenant's *refund* \"policy\" is the policy. ";
        let doc = format!("# Refund\n\n{}", sentence.repeat(6));
        let chunks = chunker(24, 0).chunk(&doc, DocFormat::Markdown).unwrap();
        assert!(chunks.len() > 2, "{chunks:?}");
        for c in &chunks {
            assert!(c.text.ends_with("policy."), "{:?}", c.text);
        }
        for c in &chunks[1..] {
            assert!(c.text.starts_with("The tenant's"), "{:?}", c.text);
        }
        // The heading goes with the first chunk of its text.
        assert!(chunks[0].text.starts_with("# Refund\n\nThe tenant's"), "{:?}", chunks[0].text);
    }

    #[test]
    fn markdown_headings_are_found_by_a_parser() {
        // Not headings: `#` in code, in a quote, front matter.
        let doc = "---\ntitle: x\n---\n\n```\n# not a heading\n```\n\n> # quoted\n\n\
                   Setext\n======\n\n## Two\n";
        let found: Vec<(&str, usize)> =
            headings(doc).into_iter().map(|h| (&doc[h.start..h.start + 6], h.level)).collect();
        assert_eq!(found, [("Setext", 1), ("## Two", 2)]);
    }

    #[test]
    fn plain_text_is_split_at_paragraphs_before_sentences() {
        let doc = "The refund policy. The tenant policy.\n\nThe chunk policy. The heading policy.";
        let chunks = chunker(10, 0).chunk(doc, DocFormat::Text).unwrap();
        assert_eq!(
            texts(&chunks),
            ["The refund policy. The tenant policy.", "The chunk policy. The heading policy."]
        );
        let chunks = chunker(6, 0).chunk(doc, DocFormat::Text).unwrap();
        assert_eq!(
            texts(&chunks),
            ["The refund policy.", "The tenant policy.", "The chunk policy.", "The heading policy."]
        );
    }

    #[test]
    fn neighbours_overlap() {
        let doc = "the refund policy the tenant policy the chunk policy the heading policy";
        let chunks = chunker(6, 3).chunk(doc, DocFormat::Text).unwrap();
        assert!(chunks.len() > 2, "{chunks:?}");
        for pair in chunks.windows(2) {
            assert!(pair[1].start_byte < pair[0].end_byte, "no overlap: {pair:?}");
        }
        let plain = chunker(6, 0).chunk(doc, DocFormat::Text).unwrap();
        assert!(plain.windows(2).all(|p| p[1].start_byte >= p[0].end_byte));
        assert!(plain.len() < chunks.len());
    }

    #[test]
    fn html_is_chunked_as_its_visible_text() {
        let html = "<html><head><title>x</title><script>var secret = 1;</script></head><body>\
                    <h1>Refund</h1><p>The refund policy.</p><h1>Tenant</h1><p>The tenant \
                    policy.</p></body></html>";
        let chunks = chunker(8, 0).chunk(html, DocFormat::Html).unwrap();
        assert_eq!(texts(&chunks), ["# Refund\n\nThe refund policy.", "# Tenant\n\nThe tenant policy."]);
        let text = html_to_text(html);
        for c in &chunks {
            assert_eq!(&text[c.start_byte..c.end_byte], c.text);
        }
    }

    /// A document made of words the tokenizer knows and does not know,
    /// Markdown structure, whitespace runs and arbitrary printable Unicode.
    fn document() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            6 => prop::sample::select(vec![
                "the ", "refund ", "policy ", "tenant ", "chunk", "heading ", "paragraph ",
                "zebra ", "Ünïcödé ", "数据 ", "😀 ",
            ])
            .prop_map(String::from),
            3 => "[a-zA-Z]{1,14}[ .,]",
            2 => prop::sample::select(vec![
                " ", "  ", "\n", "\n\n", "\n\n\n", ". ", "! ", "\n# ", "\n## ", "\n   # ", "\nSetext\n---\n", "\n- ", "\n1. ",
                "\n```\n", "\n> ", "\t", "<p>", "</p>", "<h2>", "</h2>", "<li>", "<br>",
            ])
            .prop_map(String::from),
            1 => "\\PC{1,8}",
        ];
        prop::collection::vec(piece, 1..160).prop_map(|pieces| pieces.concat())
    }

    fn format() -> impl Strategy<Value = DocFormat> {
        prop_oneof![Just(DocFormat::Text), Just(DocFormat::Markdown), Just(DocFormat::Html)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn chunks_are_small_non_empty_and_cover_the_text_in_order(
            doc in document(),
            format in format(),
            max_tokens in 4usize..48,
            overlap_pct in 0usize..60,
        ) {
            let overlap = max_tokens * overlap_pct / 100;
            let chunker = chunker(max_tokens, overlap);
            let text = match format {
                DocFormat::Html => html_to_text(&doc),
                DocFormat::Text | DocFormat::Markdown => doc.clone(),
            };
            let result = chunker.chunk(&doc, format);
            if text.trim().is_empty() || doc.trim().is_empty() {
                prop_assert_eq!(result.unwrap_err().code, Code::InvalidRequest);
                return Ok(());
            }
            let chunks = result.unwrap();
            prop_assert!(!chunks.is_empty());
            for (i, c) in chunks.iter().enumerate() {
                prop_assert_eq!(c.index, i);
                prop_assert!(!c.text.is_empty());
                prop_assert_eq!(c.text.trim(), c.text.as_str(), "not trimmed");
                prop_assert_eq!(&text[c.start_byte..c.end_byte], c.text.as_str());
                prop_assert_eq!(c.tokens, chunker.count_tokens(&c.text));
                prop_assert!(c.tokens <= max_tokens, "{} tokens > {}: {:?}", c.tokens, max_tokens, c.text);
            }
            for pair in chunks.windows(2) {
                prop_assert!(pair[0].start_byte < pair[1].start_byte, "out of order: {:?}", pair);
                prop_assert!(pair[0].end_byte < pair[1].end_byte, "out of order: {:?}", pair);
                if overlap == 0 {
                    prop_assert!(pair[0].end_byte <= pair[1].start_byte, "overlap: {:?}", pair);
                }
            }
            // Every non-whitespace character is in some chunk.
            let mut next = 0;
            for (at, ch) in text.char_indices().filter(|(_, ch)| !ch.is_whitespace()) {
                while next < chunks.len() && chunks[next].end_byte <= at {
                    next += 1;
                }
                prop_assert!(
                    next < chunks.len() && chunks[next].start_byte <= at,
                    "{:?} at byte {} is in no chunk", ch, at
                );
            }
        }
    }
}
