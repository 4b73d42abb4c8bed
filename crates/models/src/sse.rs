//! A parser for server-sent events (the `text/event-stream` format both
//! providers stream in), fed with the body's chunks as they arrive.
//!
//! It follows the WHATWG rules that matter here: lines end in `\n`, `\r\n`
//! or `\r`; `data:` lines of one event are joined with `\n`; one space after
//! the colon is dropped; lines starting with `:` are comments; a blank line
//! ends an event, and an event without data is not dispatched. At the end of
//! the body a last event without its blank line is dispatched rather than
//! dropped, because some servers omit it. Chunks may split lines and UTF-8
//! sequences anywhere: bytes are decoded only once their line is complete.
//!
//! Invariant: the buffered, unfinished line never exceeds [`MAX_LINE`]; a
//! server that sends more without a line break is refused, so a broken or
//! hostile upstream cannot make us buffer without bound.

use std::collections::VecDeque;

use crate::ProviderError;

/// The longest line we buffer (a `data:` line carries one JSON chunk).
pub const MAX_LINE: usize = 4 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field; empty when absent (the spec's "message").
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    ready: VecDeque<SseEvent>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ProviderError> {
        self.buf.extend_from_slice(chunk);
        self.drain_lines(false);
        if self.buf.len() > MAX_LINE {
            return Err(ProviderError::InvalidResponse(format!(
                "an event-stream line longer than {MAX_LINE} bytes"
            )));
        }
        Ok(())
    }

    /// The body ended: whatever is left completes a last event.
    pub fn finish(&mut self) {
        self.drain_lines(true);
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.line(&String::from_utf8_lossy(&rest));
        }
        self.dispatch();
    }

    /// The next complete event, if any.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    fn drain_lines(&mut self, eof: bool) {
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = start + pos;
            let terminator = if self.buf[end] == b'\n' {
                1
            } else if end + 1 < self.buf.len() {
                if self.buf[end + 1] == b'\n' { 2 } else { 1 }
            } else if eof {
                1
            } else {
                // A `\r` at the end of the chunk: a `\n` may follow in the next one.
                break;
            };
            // A complete line holds complete UTF-8 sequences (a line break
            // byte never occurs inside one), so decoding here is safe.
            let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
            self.line(&line);
            start = end + terminator;
        }
        self.buf.drain(..start);
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // `id` and `retry` only matter to reconnecting browsers.
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let event = std::mem::take(&mut self.event);
        if std::mem::take(&mut self.has_data) {
            self.ready.push_back(SseEvent { event, data: std::mem::take(&mut self.data) });
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        for c in chunks {
            p.push(c).unwrap();
        }
        p.finish();
        std::iter::from_fn(|| p.next_event()).collect()
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent { event: event.into(), data: data.into() }
    }

    #[test]
    fn parses_fields_comments_and_line_endings() {
        let body = b": keep-alive\n\nevent: ping\ndata: {\"a\":1}\n\ndata:x\r\ndata:  y\r\n\r\nevent: empty\n\ndata: last";
        assert_eq!(parse(&[body]), vec![ev("ping", "{\"a\":1}"), ev("", "x\n y"), ev("", "last")]);
        // A lone `\r` ends a line too.
        assert_eq!(parse(&[b"data: a\r\rdata: b\r\r"]), vec![ev("", "a"), ev("", "b")]);
    }

    #[test]
    fn a_line_without_end_is_refused_beyond_the_limit() {
        let mut p = SseParser::new();
        let chunk = vec![b'a'; 1024 * 1024];
        let results: Vec<_> = (0..5).map(|_| p.push(&chunk)).collect();
        assert!(results.iter().any(Result::is_err));
    }

    proptest! {
        // However the body is cut into chunks — inside `\r\n`, inside a
        // multi-byte character — the events are the same.
        #[test]
        fn chunking_does_not_change_the_events(
            events in proptest::collection::vec(("[a-z_]{0,8}", "[^\r\n]{0,20}"), 1..6),
            crlf in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut body = String::new();
            for (name, data) in &events {
                if !name.is_empty() {
                    body.push_str(&format!("event: {name}{nl}"));
                }
                body.push_str(&format!(": comment{nl}data: {data}{nl}{nl}"));
            }
            let bytes = body.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&bytes[last..p]);
                last = p;
            }
            chunks.push(&bytes[last..]);
            let expected: Vec<SseEvent> = events.iter().map(|(n, d)| ev(n, d)).collect();
            prop_assert_eq!(parse(&chunks), expected.clone());
            prop_assert_eq!(parse(&[bytes]), expected);
        }
    }
}
