//! HTML to text, for chunking: the words a reader sees, with the document's
//! structure kept as Markdown-like text so the Markdown splitter can cut
//! along it — headings become `#` lines, paragraphs and other blocks are
//! separated by blank lines, list items start with `- `, table rows are lines.
//!
//! Parsing is html5ever's tokenizer (the WHATWG algorithm: character
//! references, comments, raw-text elements, malformed markup); what to keep
//! is decided here. Never kept: scripts, styles, `<head>` (so `<title>` and
//! metadata too), templates, `<noscript>`, inline SVG and MathML, embedded
//! objects, comments, attributes (so no `href`, `alt` or event handlers).
//! Nothing is executed or fetched. The output is plain text: it contains no
//! markup of the input, only text and the structure markers above.

use std::cell::RefCell;

use html5ever::TokenizerResult;
use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, Tag, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};

/// Converts an HTML document (or fragment) to text; see the module docs for
/// what is kept. The result has no leading or trailing whitespace and is
/// empty when the document has no visible text.
pub fn html_to_text(html: &str) -> String {
    let tokenizer = Tokenizer::new(TextSink::default(), TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    // `Script` results only come from sinks that return `TokenSinkResult::Script`;
    // ours never does, so one feed consumes the whole input.
    while let TokenizerResult::Script(()) = tokenizer.feed(&input) {}
    tokenizer.end();
    let state = tokenizer.sink.state.into_inner();
    let mut out = state.out;
    out.truncate(out.trim_end().len());
    out
}

/// Elements whose whole content is dropped.
fn is_skipped(name: &str) -> bool {
    matches!(
        name,
        "script"
            | "style"
            | "head"
            | "title"
            | "template"
            | "noscript"
            | "svg"
            | "math"
            | "iframe"
            | "object"
            | "embed"
            | "canvas"
            | "noembed"
            | "noframes"
            | "select"
            | "datalist"
    )
}

/// Elements that stand on lines of their own (blank lines around them).
fn is_block(name: &str) -> bool {
    matches!(
        name,
        "p" | "div"
            | "section"
            | "article"
            | "header"
            | "footer"
            | "nav"
            | "aside"
            | "main"
            | "blockquote"
            | "pre"
            | "ul"
            | "ol"
            | "dl"
            | "table"
            | "thead"
            | "tbody"
            | "tfoot"
            | "figure"
            | "figcaption"
            | "form"
            | "fieldset"
            | "legend"
            | "address"
            | "details"
            | "summary"
            | "hr"
            | "body"
            | "html"
            | "caption"
    )
}

/// Elements that start a new line (but not a new paragraph).
fn is_line(name: &str) -> bool {
    matches!(name, "tr" | "dt" | "dd" | "li" | "option")
}

fn heading_level(name: &str) -> Option<usize> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

/// How the tokenizer must read an element's content, as the HTML tree
/// builder would tell it: without this, `<script>if (a<b)…` would be read
/// as markup.
fn raw_kind(name: &str) -> Option<RawKind> {
    match name {
        "script" => Some(RawKind::ScriptData),
        "style" | "xmp" | "iframe" | "noembed" | "noframes" | "noscript" => Some(RawKind::Rawtext),
        "title" | "textarea" => Some(RawKind::Rcdata),
        _ => None,
    }
}

#[derive(Default)]
struct TextSink {
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    out: String,
    /// The skipped element we are inside, and how deeply it nests in itself.
    skip: Option<(String, usize)>,
    /// Inside `<pre>`/`<textarea>`: whitespace is kept as written.
    pre: usize,
    /// Inside a heading: line breaks become spaces, so it stays one line.
    heading: usize,
    /// Line breaks owed before the next text: 1 = new line, 2 = blank line.
    pending_break: usize,
    /// A space owed before the next text (collapsed whitespace).
    pending_space: bool,
    /// A prefix owed at the start of the next text (`## `, `- `).
    pending_prefix: String,
}

impl State {
    fn at_line_start(&self) -> bool {
        self.out.is_empty() || self.out.ends_with('\n')
    }

    fn want_break(&mut self, lines: usize) {
        if self.heading > 0 {
            self.pending_space = true;
            return;
        }
        self.pending_break = self.pending_break.max(lines);
        self.pending_space = false;
        // A prefix owed to an element that had no text is dropped, so an
        // empty `<li>` leaves no stray `- `.
        self.pending_prefix.clear();
    }

    fn text(&mut self, text: &str) {
        for c in text.chars() {
            if c == '\0' {
                continue;
            }
            if self.pre > 0 {
                if c == '\n' {
                    self.flush();
                    self.out.push('\n');
                } else {
                    self.flush();
                    self.out.push(c);
                }
                continue;
            }
            if c.is_whitespace() {
                self.pending_space = true;
                continue;
            }
            self.flush();
            self.out.push(c);
        }
    }

    /// Writes what is owed before the next character of text.
    fn flush(&mut self) {
        if self.pending_break > 0 {
            if !self.out.is_empty() {
                // Trailing spaces before a line break carry nothing.
                self.out.truncate(self.out.trim_end_matches([' ', '\t']).len());
                let have = self.out.len() - self.out.trim_end_matches('\n').len();
                for _ in have..self.pending_break {
                    self.out.push('\n');
                }
            }
            self.pending_break = 0;
            self.pending_space = false;
        }
        if !self.pending_prefix.is_empty() {
            let prefix = std::mem::take(&mut self.pending_prefix);
            self.out.push_str(&prefix);
            self.pending_space = false;
        }
        if self.pending_space {
            if !self.at_line_start() && !self.out.ends_with(' ') {
                self.out.push(' ');
            }
            self.pending_space = false;
        }
    }

    fn tag(&mut self, tag: &Tag) {
        let name: &str = &tag.name;
        let start = tag.kind == TagKind::StartTag;

        if let Some((skipped, depth)) = &mut self.skip {
            if skipped == name {
                if !start {
                    *depth -= 1;
                } else if !tag.self_closing {
                    *depth += 1;
                }
                if *depth == 0 {
                    self.skip = None;
                }
                return;
            }
            // `<head>` is often left open: as in the tree builder, the first
            // start tag that does not belong in it (`<body>`, `<p>`, …) ends it.
            let in_head = matches!(
                name,
                "title" | "meta" | "link" | "style" | "script" | "base" | "noscript" | "template"
            );
            if !(skipped == "head" && start && !in_head) {
                return;
            }
            self.skip = None;
        }
        if start && is_skipped(name) {
            if !tag.self_closing || raw_kind(name).is_some() {
                self.skip = Some((name.to_owned(), 1));
            }
            return;
        }

        if let Some(level) = heading_level(name) {
            if start {
                self.want_break(2);
                self.heading += 1;
                self.pending_prefix = format!("{} ", "#".repeat(level));
            } else if self.heading > 0 {
                self.heading -= 1;
                self.want_break(2);
            }
            return;
        }
        match name {
            "br" => self.want_break(1),
            "pre" | "textarea" => {
                self.want_break(2);
                if start {
                    self.pre += 1;
                } else {
                    self.pre = self.pre.saturating_sub(1);
                }
            }
            "li" if start => {
                self.want_break(1);
                self.pending_prefix = "- ".to_owned();
            }
            "td" | "th" if start => self.pending_space = true,
            _ if is_block(name) => self.want_break(2),
            _ if is_line(name) => self.want_break(1),
            // Inline elements (`a`, `em`, `span`, …) separate nothing.
            _ => {}
        }
    }
}

impl TokenSink for TextSink {
    type Handle = ();

    fn process_token(&self, token: Token, _line_number: u64) -> TokenSinkResult<()> {
        let mut state = self.state.borrow_mut();
        match token {
            Token::CharacterTokens(text) if state.skip.is_none() => state.text(&text),
            Token::TagToken(tag) => {
                state.tag(&tag);
                // As in the tree builder, a `/>` does not close these.
                if tag.kind == TagKind::StartTag {
                    if &*tag.name == "plaintext" {
                        return TokenSinkResult::Plaintext;
                    }
                    if let Some(kind) = raw_kind(&tag.name) {
                        return TokenSinkResult::RawData(kind);
                    }
                }
            }
            // Text inside skipped elements, comments, doctypes, NUL characters
            // and parse errors: nothing to keep.
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_text_and_structure_of_a_page() {
        let html = r#"<!doctype html>
<html><head><title>Page title</title>
<meta charset="utf-8"><style>body { color: red }</style>
<script>var x = "<p>not text</p>"; if (a < b) alert(1);</script>
</head>
<body>
  <h1>Refund   policy</h1>
  <p>Refunds are   issued <em>within</em> 30&nbsp;days &amp; no later.</p>
  <!-- a comment -->
  <h2>How to <a href="/x">ask</a></h2>
  <ul><li>Write to us</li><li>Wait</li><li></li></ul>
  <p>Line one<br>line two</p>
  <table><tr><th>Plan</th><th>Price</th></tr><tr><td>Pro</td><td>$10</td></tr></table>
  <noscript>enable JS</noscript>
  <svg><text>chart label</text></svg>
  <pre>  keep
    this</pre>
</body></html>"#;
        let text = html_to_text(html);
        assert_eq!(
            text,
            "# Refund policy\n\n\
             Refunds are issued within 30 days & no later.\n\n\
             ## How to ask\n\n\
             - Write to us\n\
             - Wait\n\n\
             Line one\nline two\n\n\
             Plan Price\nPro $10\n\n  keep\n    this"
        );
    }

    #[test]
    fn drops_scripts_even_when_they_contain_markup() {
        let text = html_to_text(
            "<p>a</p><script>document.write('</p><p>evil')</script><p>b</p>\
             <style>p::after { content: '<b>x</b>' }</style>",
        );
        assert_eq!(text, "a\n\nb");
    }

    #[test]
    fn head_without_end_tag_ends_at_the_first_body_element() {
        let text = html_to_text("<html><head><title>T</title><body><p>visible</p>");
        assert_eq!(text, "visible");
        let text = html_to_text("<head><meta charset=utf-8><style>p{}</style><h1>Title</h1>text");
        assert_eq!(text, "# Title\n\ntext");
    }

    #[test]
    fn fragments_and_plain_text_pass_through() {
        assert_eq!(html_to_text("just text, no tags"), "just text, no tags");
        assert_eq!(html_to_text("a &lt;b&gt; &#x263A;"), "a <b> \u{263a}");
        assert_eq!(html_to_text("<p>unclosed<p>paragraphs"), "unclosed\n\nparagraphs");
    }

    #[test]
    fn documents_without_visible_text_are_empty() {
        assert_eq!(html_to_text(""), "");
        assert_eq!(html_to_text("<script>x()</script><!-- c --><div> </div>"), "");
    }

    #[test]
    fn nested_skipped_elements_end_at_the_matching_end_tag() {
        let text = html_to_text("<svg><svg><text>x</text></svg><text>y</text></svg><p>after</p>");
        assert_eq!(text, "after");
    }
}
