//! Redaction of credentials from text a model will read.
//!
//! A server may echo what it was sent — a header, the query string, a Basic
//! credential. [`Redactor`] replaces a secret and its obvious encodings in a
//! response before it leaves this crate: the raw value, percent-encoded
//! (upper- and lower-case hex, `+` or `%20` for spaces), JSON-escaped, hex,
//! and base64 (standard and URL-safe, padded or not) — including base64 of a
//! longer text that contains the secret at any byte alignment, such as
//! `user:secret` in a Basic header, where all but at most two bytes at each
//! edge of the secret are covered.
//!
//! Invariants: no text handed out by [`Redactor::redact`] contains a needle;
//! a text cut at a size cap does not end in the first part of one.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Shortest base64 fragment worth matching on its own: shorter ones would
/// match unrelated text.
const MIN_FRAGMENT: usize = 8;
/// Shortest leading part of a needle removed from the end of a cut text.
const MIN_TAIL: usize = 4;

/// Replaces a set of secrets, and their encodings, in text.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a longer encoding is replaced before a shorter
    /// needle inside it breaks it up.
    needles: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} needles)", self.needles.len())
    }
}

const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

impl Redactor {
    /// A redactor for these secrets (empty ones are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut needles = Vec::new();
        for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
            needles.extend(encodings(secret));
        }
        needles.retain(|n| !n.is_empty());
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Self { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every needle replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), REDACTED);
            }
        }
        out
    }

    /// Like [`Redactor::redact`], for a text that was cut short: a needle's
    /// first part at the very end is removed as well.
    pub fn redact_cut(&self, text: &str) -> String {
        let mut out = self.redact(text);
        let mut cut = 0;
        for needle in &self.needles {
            // The longest proper prefix of the needle that ends the text.
            let longest = (MIN_TAIL.min(needle.len())..needle.len())
                .rev()
                .find(|&n| needle.is_char_boundary(n) && out.ends_with(&needle[..n]));
            if let Some(n) = longest {
                cut = cut.max(n);
            }
        }
        if cut > 0 {
            out.truncate(out.len() - cut);
            out.push_str(REDACTED);
        }
        out
    }
}

/// The secret and the forms a server might echo it in.
fn encodings(secret: &str) -> Vec<String> {
    let bytes = secret.as_bytes();
    let mut out = vec![secret.to_owned()];
    let pct = utf8_percent_encode(secret, QUERY).to_string();
    out.push(lower_hex_escapes(&pct));
    out.push(pct);
    let all = utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string();
    out.push(lower_hex_escapes(&all));
    out.push(all);
    out.push(url::form_urlencoded::byte_serialize(bytes).collect());
    if let Ok(json) = serde_json::to_string(secret) {
        out.push(json[1..json.len() - 1].to_owned());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_ascii_uppercase());
    out.push(hex);
    for engine in [&STANDARD, &URL_SAFE] {
        out.push(engine.encode(bytes));
    }
    // Base64 of a longer text holding the secret: for each alignment, the
    // characters that depend on the secret's bytes alone.
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for lead in 0..3usize {
            let mut buf = vec![0u8; lead];
            buf.extend_from_slice(bytes);
            let encoded = engine.encode(&buf);
            let whole_groups = buf.len() / 3;
            let start = if lead == 0 { 0 } else { 4 };
            let end = whole_groups * 4;
            if end > start && end - start >= MIN_FRAGMENT {
                out.push(encoded[start..end].to_owned());
            }
        }
    }
    out
}

/// `%2F` → `%2f`: servers differ in the case of percent escapes.
fn lower_hex_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(h) = chars.next() {
                    out.push(h.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sk-live/Abc+123 xyz=";

    #[test]
    fn the_secret_and_its_encodings_are_replaced() {
        let r = Redactor::new([SECRET]);
        let echoes = [
            SECRET.to_owned(),
            utf8_percent_encode(SECRET, NON_ALPHANUMERIC).to_string(),
            lower_hex_escapes(&utf8_percent_encode(SECRET, NON_ALPHANUMERIC).to_string()),
            url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect(),
            STANDARD.encode(SECRET),
            URL_SAFE_NO_PAD.encode(SECRET),
            serde_json::to_string(SECRET).unwrap(),
            SECRET.bytes().map(|b| format!("{b:02x}")).collect(),
        ];
        for echo in echoes {
            let text = format!("before {echo} after");
            let out = r.redact(&text);
            assert!(out.contains(REDACTED), "{echo} → {out}");
            assert!(!out.contains("Abc"), "{echo} → {out}");
        }
    }

    #[test]
    fn basic_auth_style_embeddings_are_covered_at_every_alignment() {
        let r = Redactor::new(["s3cr3t-t0ken-value"]);
        for user in ["", "a", "ab", "abc", "user"] {
            let basic = STANDARD.encode(format!("{user}:s3cr3t-t0ken-value"));
            let out = r.redact(&format!("Authorization: Basic {basic}"));
            assert!(out.contains(REDACTED), "{user}: {out}");
            // What is left is the user's part and at most a few edge characters.
            let left = out.trim_start_matches("Authorization: Basic ").replace(REDACTED, "");
            assert!(left.len() <= STANDARD.encode(format!("{user}:")).len() + 8, "{user}: {out}");
        }
    }

    #[test]
    fn a_cut_text_loses_a_trailing_secret_prefix() {
        let r = Redactor::new(["abcdefghijkl"]);
        assert_eq!(r.redact_cut("data: abcdefg"), format!("data: {REDACTED}"));
        assert_eq!(r.redact_cut("data: abc"), "data: abc", "shorter than the minimum tail");
        assert_eq!(r.redact_cut("data: xyz"), "data: xyz");
        assert!(Redactor::new([""]).is_empty());
        assert_eq!(format!("{r:?}"), format!("Redactor({} needles)", r.needles.len()));
    }
}
