//! The `http_request` built-in: a plain GET or POST to a URL the model
//! chooses, under the tenant's egress policy and its caps.
//!
//! Invariants: no credential is added (there is none to add) and none can be
//! passed — `Authorization`, `Cookie` and the other forbidden headers are
//! refused; no destination is reached that the tenant's allow list and the
//! address checks of [`EgressPolicy`] do not admit.

use std::sync::Arc;
use std::time::Instant;

use bulkhead_core::TenantCtx;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use url::Url;

use crate::egress::{EgressPolicy, EgressRequest};
use crate::http_tool::{check_args, checked_header_name, compile_schema, output};
use crate::redact::Redactor;
use crate::{Invocation, ToolError, ToolOutput, ToolSchema, args_digest};

/// Most headers a model may set.
pub const MAX_HEADERS: usize = 32;

/// The generic `http_request` tool of one tenant. Cheap to clone.
#[derive(Clone)]
pub struct HttpRequestTool {
    inner: Arc<Inner>,
}

struct Inner {
    policy: EgressPolicy,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for HttpRequestTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequestTool").field("policy", &self.inner.policy).finish()
    }
}

impl HttpRequestTool {
    pub const NAME: &'static str = "http_request";

    pub fn new(policy: EgressPolicy) -> Self {
        let validator = compile_schema(&Self::parameters()).expect("the built-in schema compiles");
        Self { inner: Arc::new(Inner { policy, validator }) }
    }

    fn parameters() -> Value {
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "An http or https URL on the allowed hosts."},
                "method": {"type": "string", "enum": ["GET", "POST"], "default": "GET"},
                "headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Request headers; no Authorization or Cookie."
                },
                "body": {"type": "string", "description": "The request body, for POST."}
            },
            "required": ["url"],
            "additionalProperties": false
        })
    }

    pub fn schema(&self) -> ToolSchema {
        Self::definition()
    }

    /// The tool as a model sees it; the same for every tenant.
    pub fn definition() -> ToolSchema {
        ToolSchema {
            name: Self::NAME.into(),
            description: "Fetches a URL with GET, or POSTs a body to it, and returns the status, the \
                          content type and the response text (cut at a size limit). Only hosts the \
                          tenant allows are reachable."
                .into(),
            parameters: Self::parameters(),
        }
    }

    /// Runs a request for `ctx` (the policy's tenant) with the model's `args`.
    pub async fn invoke(&self, ctx: &TenantCtx, args: &Value) -> Invocation {
        let started = Instant::now();
        let result = self.run(ctx, args).await;
        Invocation {
            tool: Self::NAME.into(),
            args_digest: args_digest(args),
            duration: started.elapsed(),
            result,
        }
    }

    async fn run(&self, ctx: &TenantCtx, args: &Value) -> Result<ToolOutput, ToolError> {
        let policy = &self.inner.policy;
        policy.check_tenant(ctx)?;
        check_args(&self.inner.validator, args)?;
        let bad = |m: String| ToolError::InvalidArguments(m);
        let url_text = args["url"].as_str().unwrap_or_default();
        let url = Url::parse(url_text).map_err(|e| bad(format!("`url` is not a URL: {e}")))?;
        let method = match args.get("method").and_then(Value::as_str).unwrap_or("GET") {
            "POST" => Method::POST,
            _ => Method::GET,
        };
        let mut headers = HeaderMap::new();
        if let Some(given) = args.get("headers").and_then(Value::as_object) {
            if given.len() > MAX_HEADERS {
                return Err(bad(format!("at most {MAX_HEADERS} headers")));
            }
            for (name, value) in given {
                let name = checked_header_name(name).map_err(|e| match e {
                    ToolError::InvalidSpec(m) => bad(m),
                    other => other,
                })?;
                let value = HeaderValue::from_str(value.as_str().unwrap_or_default())
                    .map_err(|_| bad(format!("the value of header `{name}` is not a valid header value")))?;
                headers.append(name, value);
            }
        }
        let body = match args.get("body").and_then(Value::as_str) {
            Some(_) if method == Method::GET => {
                return Err(bad("a GET request has no body; use POST".into()));
            }
            Some(b) => Some(b.as_bytes().to_vec()),
            None => None,
        };
        let response = policy.send(ctx, EgressRequest { method, url, headers, body }).await?;
        Ok(output(response, &Redactor::default(), policy.max_response_bytes(), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::{EgressConfig, TenantEgress};
    use bulkhead_core::{OperatorCtx, TenantId};

    #[tokio::test]
    async fn bad_arguments_are_refused_before_any_request() {
        let ctx = OperatorCtx::local_cli().act_for(TenantId::new());
        // Allows everything public, so only argument checks can refuse.
        let tenant = TenantEgress { allow: vec!["*:*".parse().unwrap()], ..Default::default() };
        let tool = HttpRequestTool::new(EgressPolicy::new(&ctx, &EgressConfig::default(), &tenant));
        for (args, want) in [
            (json!({}), "required"),
            (json!({"url": "https://a.test/", "method": "DELETE"}), "/method"),
            (json!({"url": "https://a.test/", "headers": {"Authorization": "Bearer x"}}), "vault"),
            (json!({"url": "https://a.test/", "headers": {"Cookie": "s=1"}}), "cannot be set"),
            (
                json!({"url": "https://a.test/", "headers": {"X-A": "line\nbreak"}}),
                "not a valid header value",
            ),
            (json!({"url": "https://a.test/", "body": "x"}), "GET request has no body"),
            (json!({"url": "not a url"}), "not a URL"),
            (json!({"url": "https://a.test/", "extra": 1}), "Additional properties"),
        ] {
            let inv = tool.invoke(&ctx, &args).await;
            assert_eq!(inv.outcome(), "invalid_arguments", "{args}");
            let err = inv.into_model_result().unwrap_err();
            assert!(err.contains(want), "{args}: {err}");
        }
        assert_eq!(tool.schema().name, "http_request");
    }
}
