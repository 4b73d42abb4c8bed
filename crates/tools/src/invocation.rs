//! What every tool call hands back: [`Invocation`] — the tool, a digest of
//! its arguments, how long it took, and either a [`ToolOutput`] or a
//! [`ToolError`]. One record serves the model (its text), the audit trail
//! (tool, digest, outcome, duration) and metering (bytes, duration).
//!
//! Invariants: no invocation holds the arguments themselves (only their
//! digest) nor a credential (outputs are redacted before they are built).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::ToolError;

/// A tool as a model sees it: the shape of `bulkhead_models::ToolDef`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSchema {
    pub name: String,
    pub description: String,
    /// A JSON Schema object for the arguments.
    pub parameters: Value,
}

/// A completed exchange with the far side (which may itself report an error).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    /// What the model reads: redacted, cut at the size cap (with a note).
    pub text: String,
    /// The HTTP status, for HTTP tools.
    pub status: Option<u16>,
    /// The far side reported failure (HTTP status ≥ 400, MCP `isError`).
    pub is_error: bool,
    /// Response body bytes read (at most the cap; for MCP, the result's
    /// serialized size).
    pub bytes_received: u64,
    /// Request body bytes sent over all hops (for MCP, the arguments'
    /// serialized size).
    pub bytes_sent: u64,
    /// The response was longer than the cap and was cut.
    pub truncated: bool,
    /// Redirects followed.
    pub redirects: u32,
}

/// One call of a tool, for the model, the audit trail and metering.
#[derive(Debug)]
pub struct Invocation {
    /// The tool's name as the model called it.
    pub tool: String,
    /// `sha256:` and the hex digest of the arguments in canonical JSON.
    pub args_digest: String,
    pub duration: Duration,
    pub result: Result<ToolOutput, ToolError>,
}

impl Invocation {
    /// `ok`, `upstream_error` (the far side answered with an error), or the
    /// [`ToolError::code`] of the failure.
    pub fn outcome(&self) -> &'static str {
        match &self.result {
            Ok(out) if out.is_error => "upstream_error",
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    /// The shape the agent loop's `Tool::call` returns: the text, or an
    /// error text for the model.
    pub fn into_model_result(self) -> Result<String, String> {
        match self.result {
            Ok(out) if out.is_error => Err(match out.status {
                Some(status) => format!("HTTP {status}: {}", out.text),
                None => out.text,
            }),
            Ok(out) => Ok(out.text),
            Err(e) => Err(e.model_message()),
        }
    }
}

/// `sha256:<hex>` of `args` in canonical JSON (object keys sorted), so the
/// same arguments always give the same digest.
pub fn args_digest(args: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(args, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digests_ignore_key_order_and_see_values() {
        let a = args_digest(&json!({"b": 1, "a": {"y": [1, 2], "x": "s"}}));
        let b = args_digest(&json!({"a": {"x": "s", "y": [1, 2]}, "b": 1}));
        assert_eq!(a, b);
        assert!(a.starts_with("sha256:") && a.len() == 71);
        assert_ne!(a, args_digest(&json!({"a": {"x": "s", "y": [2, 1]}, "b": 1})));
    }

    #[test]
    fn model_results_carry_status_and_hide_internals() {
        let out = |is_error| ToolOutput {
            text: "body".into(),
            status: Some(404),
            is_error,
            bytes_received: 4,
            bytes_sent: 0,
            truncated: false,
            redirects: 0,
        };
        let inv = |result| Invocation {
            tool: "t".into(),
            args_digest: args_digest(&json!({})),
            duration: Duration::ZERO,
            result,
        };
        assert_eq!(inv(Ok(out(false))).outcome(), "ok");
        assert_eq!(inv(Ok(out(false))).into_model_result(), Ok("body".into()));
        assert_eq!(inv(Ok(out(true))).outcome(), "upstream_error");
        assert_eq!(inv(Ok(out(true))).into_model_result(), Err("HTTP 404: body".into()));
        let failed = inv(Err(ToolError::TenantMismatch));
        assert_eq!(failed.outcome(), "tenant_mismatch");
        assert_eq!(failed.into_model_result(), Err("the tool failed internally".into()));
    }
}
