//! MCP clients: a tenant's registered MCP server ([`McpServerSpec`]) and a
//! live session with it ([`McpConnection`]), over the streamable HTTP
//! transport of the official SDK (`rmcp`).
//!
//! Connecting checks the server's URL with the tenant's [`EgressPolicy`]
//! before anything is sent, and hands the SDK an HTTP client pinned to the
//! checked addresses (its DNS knows only that host; no proxy; no redirects),
//! so every request of the session goes where the check said. The
//! credential, if any, is revealed from the vault once, at connect, and
//! travels as a header the SDK adds to each request.
//!
//! Tools are shown to models as `mcp__{server}__{tool}` ([`exposed_name`]);
//! names that do not fit the model-side rules (`A-Z a-z 0-9 _ -`, 64 at
//! most) are cleaned and suffixed with a short hash, and the connection maps
//! them back.
//!
//! Invariants, as absences:
//! - No session starts to a URL the egress policy refuses, and no request of
//!   a session goes to another host or address.
//! - No credential goes into a URL (query placement is refused for MCP), a
//!   result, or an error text (both are redacted).
//! - No session serves another tenant than the one it was opened for.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bulkhead_core::TenantCtx;
use bulkhead_vault::{SecretKind, Vault};
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock, Implementation,
};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceError, ServiceExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::egress::EgressPolicy;
use crate::http_tool::{
    AuthPlacement, AuthRef, MAX_DESCRIPTION_CHARS, check_args, checked_header_name, compile_schema,
    valid_tool_name,
};
use crate::redact::Redactor;
use crate::{Invocation, ToolError, ToolOutput, ToolSchema, args_digest};

/// What exposed MCP tool names start with.
pub const PREFIX: &str = "mcp__";
/// Longest name a model accepts for a tool.
const MAX_NAME: usize = 64;
/// Longest error text taken from a server.
const MAX_REASON: usize = 500;

/// A tenant's MCP server, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// 1–32 of `A-Z a-z 0-9 _ -` without `__`: the `{server}` in
    /// `mcp__{server}__{tool}`.
    pub name: String,
    /// The streamable HTTP endpoint, e.g. `https://mcp.example.com/mcp`.
    pub url: String,
    /// A vault credential, sent as a header (`Authorization: Bearer …` or a
    /// named header); query placement is refused.
    #[serde(default)]
    pub auth: Option<AuthRef>,
}

impl McpServerSpec {
    /// Checks the registration; the API calls this before storing one.
    pub fn validate(&self) -> Result<(), ToolError> {
        let invalid = |m: &str| ToolError::InvalidSpec(m.to_owned());
        if self.name.is_empty()
            || self.name.len() > 32
            || !valid_tool_name(&self.name)
            || self.name.contains("__")
        {
            return Err(invalid("MCP server names are 1-32 letters, digits, `_` or `-`, without `__`"));
        }
        let url = Url::parse(&self.url).map_err(|_| invalid("the MCP server URL is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the MCP server URL must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("the MCP server URL must not carry a user name or password"));
        }
        if let Some(auth) = &self.auth {
            bulkhead_vault::validate_name(&auth.secret_name)
                .map_err(|e| ToolError::InvalidSpec(e.message.into_owned()))?;
            match &auth.placement {
                AuthPlacement::Header { name, prefix } => {
                    if !name.eq_ignore_ascii_case("authorization") {
                        checked_header_name(name)?;
                    }
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("not a header name"))?;
                    HeaderValue::from_str(prefix)
                        .map_err(|_| invalid("the credential's prefix is not a valid header value"))?;
                }
                AuthPlacement::Query { .. } => {
                    return Err(invalid("an MCP credential goes in a header, not in the URL"));
                }
            }
        }
        Ok(())
    }
}

/// `mcp__{server}__{tool}`, cleaned to `A-Z a-z 0-9 _ -` and at most 64
/// characters; a name that had to change gets a hash of the original, so
/// distinct tools keep distinct names.
pub fn exposed_name(server: &str, tool: &str) -> String {
    let clean: String = tool
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    let plain = format!("{PREFIX}{server}__{clean}");
    if clean == tool && !tool.is_empty() && plain.len() <= MAX_NAME {
        return plain;
    }
    let digest = Sha256::digest(tool.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let keep = plain.len().min(MAX_NAME - hash.len() - 1);
    format!("{}_{hash}", &plain[..keep])
}

/// The server part of an exposed name, to route a model's call to the
/// right connection: `mcp__github__search` → `github`.
pub fn server_of(exposed: &str) -> Option<&str> {
    let rest = exposed.strip_prefix(PREFIX)?;
    let (server, tool) = rest.split_once("__")?;
    (!server.is_empty() && !tool.is_empty()).then_some(server)
}

/// A tool offered by an MCP server.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    /// The name the server knows it by.
    pub name: String,
    /// What the model sees: `schema.name` is the exposed name.
    pub schema: ToolSchema,
}

struct Known {
    name: String,
    validator: Option<jsonschema::Validator>,
}

/// A live session with a tenant's MCP server. Dropping it ends the session.
pub struct McpConnection {
    server: String,
    host: String,
    policy: EgressPolicy,
    redactor: Redactor,
    service: RunningService<RoleClient, ClientConfig>,
    /// Exposed name → the server's name, filled by `list_tools`.
    known: RwLock<HashMap<String, Arc<Known>>>,
}

impl std::fmt::Debug for McpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpConnection").field("server", &self.server).field("host", &self.host).finish()
    }
}

impl McpConnection {
    /// Checks the URL with `policy`, reveals the credential, and opens the
    /// session (MCP `initialize`), all within the policy's deadline.
    pub async fn connect(
        ctx: &TenantCtx,
        spec: &McpServerSpec,
        policy: &EgressPolicy,
        vault: &Vault,
    ) -> Result<Self, ToolError> {
        match tokio::time::timeout(policy.timeout(), Self::open(ctx, spec, policy, vault)).await {
            Ok(result) => result,
            Err(_) => Err(ToolError::Timeout(policy.timeout())),
        }
    }

    async fn open(
        ctx: &TenantCtx,
        spec: &McpServerSpec,
        policy: &EgressPolicy,
        vault: &Vault,
    ) -> Result<Self, ToolError> {
        policy.check_tenant(ctx)?;
        spec.validate()?;
        let url = Url::parse(&spec.url).map_err(|_| ToolError::InvalidSpec("not a URL".into()))?;
        // Refused here, before the SDK is given anything to connect with.
        let target = policy.check(&url).await?;
        let client = policy.pinned_client(&target)?;

        let mut headers = HashMap::new();
        let mut redactor = Redactor::default();
        if let Some(auth) = &spec.auth {
            let secret = vault
                .reveal(ctx, SecretKind::Credential, &auth.secret_name)
                .await
                .map_err(ToolError::Vault)?
                .ok_or_else(|| ToolError::MissingCredential(auth.secret_name.clone()))?;
            redactor = Redactor::new([secret.expose()]);
            if let AuthPlacement::Header { name, prefix } = &auth.placement {
                let name = HeaderName::from_bytes(name.as_bytes()).expect("validated");
                let mut value =
                    HeaderValue::from_str(&format!("{prefix}{}", secret.expose())).map_err(|_| {
                        ToolError::InvalidSpec(format!(
                            "the credential `{}` is not a valid header value",
                            auth.secret_name
                        ))
                    })?;
                value.set_sensitive(true);
                headers.insert(name, value);
            }
        }

        let cap = usize::try_from(policy.max_response_bytes()).unwrap_or(usize::MAX);
        let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
            .custom_headers(headers)
            .max_json_response_size(cap)
            .max_sse_event_size(cap);
        let transport = StreamableHttpClientTransport::with_client(client, config);
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("bulkhead", env!("CARGO_PKG_VERSION")),
        );
        let fail = |reason: String| ToolError::Mcp { server: spec.name.clone(), reason };
        let service = match info.serve(transport).await {
            Err(e) => {
                let reason = if e.auth_challenge().is_some() {
                    "the server refused the credentials".to_owned()
                } else {
                    format!("the session could not start: {}", clip(&redactor.redact(&e.to_string())))
                };
                return Err(fail(reason));
            }
            Ok(service) => service,
        };
        Ok(Self {
            server: spec.name.clone(),
            host: target.host,
            policy: policy.clone(),
            redactor,
            service,
            known: RwLock::new(HashMap::new()),
        })
    }

    /// The server's registered name.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The server's tools, with their exposed names; also what
    /// [`McpConnection::call_tool`] accepts afterwards.
    pub async fn list_tools(&self, ctx: &TenantCtx) -> Result<Vec<McpTool>, ToolError> {
        self.policy.check_tenant(ctx)?;
        let listed = match tokio::time::timeout(self.policy.timeout(), self.service.list_all_tools()).await {
            Err(_) => return Err(ToolError::Timeout(self.policy.timeout())),
            Ok(Err(e)) => return Err(self.failure(&e)),
            Ok(Ok(tools)) => tools,
        };
        let mut tools = Vec::with_capacity(listed.len());
        let mut known = BTreeMap::new();
        for tool in listed {
            let mut exposed = exposed_name(&self.server, &tool.name);
            if known.contains_key(&exposed) {
                // Two names that clean to the same text: tell them apart.
                exposed = exposed_name(&self.server, &format!("{}\u{0}", tool.name));
            }
            let parameters = Value::Object((*tool.input_schema).clone());
            let description: String =
                tool.description.as_deref().unwrap_or_default().chars().take(MAX_DESCRIPTION_CHARS).collect();
            // A schema we cannot compile is left to the server to enforce.
            let validator = compile_schema(&parameters).ok();
            known.insert(exposed.clone(), Arc::new(Known { name: tool.name.to_string(), validator }));
            tools.push(McpTool {
                name: tool.name.to_string(),
                schema: ToolSchema { name: exposed, description, parameters },
            });
        }
        *self.known.write().expect("lock poisoned") = known.into_iter().collect();
        Ok(tools)
    }

    /// Calls the tool the model knows as `exposed` (from
    /// [`McpConnection::list_tools`]) with `args`.
    pub async fn call_tool(&self, ctx: &TenantCtx, exposed: &str, args: &Value) -> Invocation {
        let started = Instant::now();
        let result = self.call(ctx, exposed, args).await;
        Invocation {
            tool: exposed.to_owned(),
            args_digest: args_digest(args),
            duration: started.elapsed(),
            result,
        }
    }

    async fn call(&self, ctx: &TenantCtx, exposed: &str, args: &Value) -> Result<ToolOutput, ToolError> {
        self.policy.check_tenant(ctx)?;
        let known = self.known.read().expect("lock poisoned").get(exposed).cloned().ok_or_else(|| {
            ToolError::InvalidArguments(format!("`{exposed}` is not a tool of MCP server `{}`", self.server))
        })?;
        match &known.validator {
            Some(v) => check_args(v, args)?,
            None if !args.is_object() => {
                return Err(ToolError::InvalidArguments("the arguments must be a JSON object".into()));
            }
            None => {}
        }
        let arguments = args.as_object().cloned().unwrap_or_default();
        let bytes_sent = serde_json::to_vec(args).map_or(0, |v| v.len() as u64);
        let params = CallToolRequestParams::new(known.name.clone()).with_arguments(arguments);
        let result = match tokio::time::timeout(self.policy.timeout(), self.service.call_tool(params)).await {
            Err(_) => return Err(ToolError::Timeout(self.policy.timeout())),
            Ok(Err(e)) => return Err(self.failure(&e)),
            Ok(Ok(result)) => result,
        };
        Ok(self.output(&result, bytes_sent))
    }

    fn output(&self, result: &CallToolResult, bytes_sent: u64) -> ToolOutput {
        let mut parts = Vec::new();
        for block in &result.content {
            parts.push(match block {
                ContentBlock::Text(t) => t.text.clone(),
                ContentBlock::Image(i) => format!("[image: {}]", i.mime_type),
                ContentBlock::Audio(a) => format!("[audio: {}]", a.mime_type),
                other => serde_json::to_string(other).unwrap_or_default(),
            });
        }
        if parts.is_empty()
            && let Some(structured) = &result.structured_content
        {
            parts.push(structured.to_string());
        }
        let text = parts.join("\n");
        let cap = usize::try_from(self.policy.max_response_bytes()).unwrap_or(usize::MAX);
        let truncated = text.len() > cap;
        let text = if truncated {
            let mut end = cap;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}\n[response cut at {cap} bytes]", self.redactor.redact_cut(&text[..end]))
        } else {
            self.redactor.redact(&text)
        };
        ToolOutput {
            text,
            status: None,
            is_error: result.is_error == Some(true),
            bytes_received: serde_json::to_vec(result).map_or(0, |v| v.len() as u64),
            bytes_sent,
            truncated,
            redirects: 0,
        }
    }

    fn failure(&self, e: &ServiceError) -> ToolError {
        let reason = match e {
            ServiceError::McpError(data) => format!("error {}: {}", data.code.0, data.message),
            ServiceError::TransportClosed => "the session was closed".to_owned(),
            ServiceError::Timeout { .. } => "the server did not answer in time".to_owned(),
            other => other.to_string(),
        };
        ToolError::Mcp { server: self.server.clone(), reason: clip(&self.redactor.redact(&reason)) }
    }

    /// Ends the session politely (dropping the connection ends it too).
    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_REASON {
        return text.to_owned();
    }
    let mut end = MAX_REASON;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_are_model_safe_and_distinct() {
        assert_eq!(exposed_name("github", "search_issues"), "mcp__github__search_issues");
        let dotted = exposed_name("fs", "files.read");
        assert!(dotted.starts_with("mcp__fs__files_read_") && valid_tool_name(&dotted), "{dotted}");
        assert_ne!(dotted, exposed_name("fs", "files/read"));
        let long = exposed_name("srv", &"x".repeat(100));
        assert_eq!(long.len(), 64);
        assert!(valid_tool_name(&long));
        assert_ne!(long, exposed_name("srv", &"x".repeat(101)));
        assert_eq!(server_of("mcp__github__search_issues"), Some("github"));
        assert_eq!(server_of(&dotted), Some("fs"));
        assert_eq!(server_of("github__x"), None);
        assert_eq!(server_of("mcp____x"), None);
    }

    #[test]
    fn registrations_are_validated() {
        let spec = |name: &str, url: &str, auth: Option<AuthRef>| McpServerSpec {
            name: name.into(),
            url: url.into(),
            auth,
        };
        let header = AuthRef {
            secret_name: "mcp-token".into(),
            placement: AuthPlacement::Header { name: "Authorization".into(), prefix: "Bearer ".into() },
        };
        assert!(spec("github", "https://mcp.example.com/mcp", Some(header)).validate().is_ok());
        for (s, want) in [
            (spec("a__b", "https://x.test/", None), "without `__`"),
            (spec("", "https://x.test/", None), "1-32"),
            (spec("ok", "ftp://x.test/", None), "http or https"),
            (spec("ok", "https://u:p@x.test/", None), "user name"),
            (
                spec(
                    "ok",
                    "https://x.test/",
                    Some(AuthRef {
                        secret_name: "k".into(),
                        placement: AuthPlacement::Query { name: "key".into() },
                    }),
                ),
                "in a header",
            ),
            (
                spec(
                    "ok",
                    "https://x.test/",
                    Some(AuthRef {
                        secret_name: "k".into(),
                        placement: AuthPlacement::Header { name: "Cookie".into(), prefix: String::new() },
                    }),
                ),
                "cannot be set",
            ),
        ] {
            let err = s.validate().unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }
}
