//! Tenant-defined HTTP tools: an [`HttpToolSpec`] (what the tenant stores)
//! and [`HttpTool`] (a validated spec bound to a tenant's egress policy and
//! vault, ready to run).
//!
//! A call validates the model's arguments against the spec's JSON Schema,
//! renders the URL template (placeholders only in the path and query, every
//! value percent-encoded as one component), reveals the credential from the
//! tenant's vault and puts it into the request — header or query — then
//! sends through [`EgressPolicy::send`] and redacts the credential, and its
//! encodings, from the text the model gets.
//!
//! Invariants, as absences:
//! - No argument reaches the scheme, host or port: the template's authority
//!   has no placeholders, and the rendered URL is checked to keep it.
//! - No argument becomes a dot segment (`.`/`..`) or an extra query pair.
//! - No credential sits in a spec, in the model's view (schema, output,
//!   error), or in an error message: it exists only in the outgoing request.
//! - No request is sent for arguments that fail the schema.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bulkhead_core::TenantCtx;
use bulkhead_vault::{SecretKind, Vault};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::egress::{EgressPolicy, EgressRequest, EgressResponse};
use crate::redact::Redactor;
use crate::{Invocation, ToolError, ToolOutput, ToolSchema, args_digest};

/// Largest accepted arguments object, serialized.
pub const MAX_ARGS_BYTES: usize = 64 * 1024;
/// Largest accepted parameters schema, serialized.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Longest tool description.
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
/// Tool names starting with this are the MCP mapping's.
pub const MCP_PREFIX: &str = "mcp__";

/// A tenant-defined HTTP tool, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolSpec {
    /// 1–64 of `A-Z a-z 0-9 _ -`; not starting with `mcp__`.
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments; an object schema (`"type": "object"`).
    pub parameters: Value,
    #[serde(default)]
    pub method: HttpMethod,
    /// `https://api.example.com/v1/items/{id}?q={query}`: placeholders name
    /// properties of `parameters`, in the path (must be required) or in
    /// query values (a pair whose argument is absent is left out).
    pub url_template: String,
    /// Fixed headers. Credentials do not go here but in `auth`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: BodySpec,
    #[serde(default)]
    pub auth: Option<AuthRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    fn to_method(self) -> Method {
        match self {
            HttpMethod::Get => Method::GET,
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Patch => Method::PATCH,
            HttpMethod::Delete => Method::DELETE,
        }
    }
}

/// What the request body is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BodySpec {
    /// No body.
    #[default]
    None,
    /// The arguments object, as JSON.
    ArgsJson,
    /// A JSON value in which a string that is exactly `{name}` becomes the
    /// argument's value (any JSON type; `null` when absent) and `{name}`
    /// inside a longer string becomes its text.
    Json { template: Value },
}

/// A credential from the tenant's vault (kind `credential`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRef {
    pub secret_name: String,
    pub placement: AuthPlacement,
}

/// Where the credential goes in the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "in", rename_all = "snake_case")]
pub enum AuthPlacement {
    /// `name: {prefix}{secret}`, e.g. `Authorization: Bearer …`.
    Header {
        name: String,
        #[serde(default)]
        prefix: String,
    },
    /// `?name=secret`, appended to the query.
    Query { name: String },
}

/// Headers a spec or a model may not set: credentials belong in the vault,
/// and framing belongs to the HTTP client.
pub(crate) const FORBIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Path and query components: everything but unreserved characters escaped.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Tool names models accept: 1–64 of `A-Z a-z 0-9 _ -`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn invalid(msg: impl Into<String>) -> ToolError {
    ToolError::InvalidSpec(msg.into())
}

/// Compiles an object schema: offline (a `$ref` to anything outside the
/// schema fails instead of being fetched) and with the linear-time regex
/// engine (a tenant's `pattern` cannot make validation backtrack for long).
pub(crate) fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, ToolError> {
    if !schema.is_object() || schema.get("type") != Some(&Value::String("object".into())) {
        return Err(invalid("`parameters` must be a JSON Schema object with \"type\": \"object\""));
    }
    if serde_json::to_vec(schema).map_or(usize::MAX, |v| v.len()) > MAX_SCHEMA_BYTES {
        return Err(invalid(format!("`parameters` is larger than {MAX_SCHEMA_BYTES} bytes")));
    }
    jsonschema::options()
        .offline()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map_err(|e| invalid(format!("`parameters` is not a usable JSON Schema: {e}")))
}

/// Checks `args` against a compiled schema; names up to five problems.
pub(crate) fn check_args(validator: &jsonschema::Validator, args: &Value) -> Result<(), ToolError> {
    if !args.is_object() {
        return Err(ToolError::InvalidArguments("the arguments must be a JSON object".into()));
    }
    if serde_json::to_vec(args).map_or(usize::MAX, |v| v.len()) > MAX_ARGS_BYTES {
        return Err(ToolError::InvalidArguments(format!("the arguments exceed {MAX_ARGS_BYTES} bytes")));
    }
    let problems: Vec<String> = validator
        .iter_errors(args)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() { e.to_string() } else { format!("{at}: {e}") }
        })
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(ToolError::InvalidArguments(problems.join("; "))) }
}

// ---------------------------------------------------------------------------
// URL templates.

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    Var(String),
}

fn pieces(text: &str) -> Result<Vec<Piece>, ToolError> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                out.push(Piece::Lit(rest.to_owned()));
                break;
            }
            Some(i) => {
                if i > 0 {
                    out.push(Piece::Lit(rest[..i].to_owned()));
                }
                if rest.as_bytes()[i] == b'}' {
                    return Err(invalid("unbalanced `}` in the URL template"));
                }
                let end = rest[i..].find('}').ok_or_else(|| invalid("unclosed `{` in the URL template"))?;
                let name = &rest[i + 1..i + end];
                if name.is_empty()
                    || name.len() > 64
                    || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(invalid(format!("`{{{name}}}` is not a placeholder (letters, digits, `_`)")));
                }
                out.push(Piece::Var(name.to_owned()));
                rest = &rest[i + end + 1..];
            }
        }
    }
    Ok(out)
}

fn vars(pieces: &[Piece]) -> impl Iterator<Item = &str> {
    pieces.iter().filter_map(|p| match p {
        Piece::Var(v) => Some(v.as_str()),
        Piece::Lit(_) => None,
    })
}

/// A parsed URL template whose scheme, host and port are fixed.
#[derive(Debug, Clone)]
struct UrlTemplate {
    /// `scheme://authority`, literally.
    base: String,
    origin: url::Origin,
    path: Vec<Piece>,
    /// The query's `&`-separated parts.
    query: Vec<Vec<Piece>>,
}

impl UrlTemplate {
    fn parse(template: &str) -> Result<Self, ToolError> {
        let after_scheme = template
            .strip_prefix("https://")
            .or_else(|| template.strip_prefix("http://"))
            .ok_or_else(|| invalid("the URL template must start with https:// or http://"))?;
        let authority_len = after_scheme.find(['/', '?', '#']).unwrap_or(after_scheme.len());
        let authority = &after_scheme[..authority_len];
        if authority.contains(['{', '}']) {
            return Err(invalid("the URL template's host and port must be literal, without placeholders"));
        }
        if authority.contains('@') {
            return Err(invalid("the URL template must not carry a user name or password"));
        }
        let base = template[..template.len() - after_scheme.len() + authority_len].to_owned();
        let base_url =
            Url::parse(&base).map_err(|e| invalid(format!("the URL template is not a URL: {e}")))?;
        if base_url.host().is_none() {
            return Err(invalid("the URL template has no host"));
        }
        let rest = &after_scheme[authority_len..];
        if rest.contains('#') {
            return Err(invalid("the URL template must not have a fragment"));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let t = UrlTemplate {
            base,
            origin: base_url.origin(),
            path: pieces(path)?,
            query: query
                .map(|q| q.split('&').filter(|p| !p.is_empty()).map(pieces).collect::<Result<_, _>>())
                .transpose()?
                .unwrap_or_default(),
        };
        // The template with every placeholder filled must still be a URL of
        // the same origin.
        let probe = t.render_with(|_| Some("x".into()))?;
        if probe.origin() != t.origin {
            return Err(invalid("the URL template's origin is ambiguous"));
        }
        Ok(t)
    }

    fn var_names(&self) -> impl Iterator<Item = &str> {
        vars(&self.path).chain(self.query.iter().flat_map(|p| vars(p)))
    }

    fn query_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.query.iter().filter_map(|part| match part.first() {
            Some(Piece::Lit(l)) => l.split_once('=').map(|(k, _)| k.to_owned()),
            _ => None,
        })
    }

    /// Renders with `value(name)`: `None` is an absent argument.
    fn render_with(&self, value: impl Fn(&str) -> Option<String>) -> Result<Url, ToolError> {
        let mut text = self.base.clone();
        for piece in &self.path {
            match piece {
                Piece::Lit(l) => text.push_str(l),
                Piece::Var(name) => {
                    let v = value(name).ok_or_else(|| {
                        ToolError::InvalidArguments(format!("`{name}` is needed for the URL"))
                    })?;
                    // `%2e` counts as a dot to URL parsers, so escaping
                    // would not stop a dot segment: refuse it.
                    if v.is_empty() || v == "." || v == ".." {
                        return Err(ToolError::InvalidArguments(format!(
                            "`{name}` must not be empty, `.` or `..`"
                        )));
                    }
                    text.extend(utf8_percent_encode(&v, COMPONENT));
                }
            }
        }
        let mut parts = Vec::new();
        'parts: for part in &self.query {
            let mut rendered = String::new();
            for piece in part {
                match piece {
                    Piece::Lit(l) => rendered.push_str(l),
                    Piece::Var(name) => match value(name) {
                        Some(v) => rendered.extend(utf8_percent_encode(&v, COMPONENT)),
                        None => continue 'parts,
                    },
                }
            }
            parts.push(rendered);
        }
        if !parts.is_empty() {
            text.push('?');
            text.push_str(&parts.join("&"));
        }
        let url =
            Url::parse(&text).map_err(|_| ToolError::InvalidArguments("the URL does not render".into()))?;
        if url.origin() != self.origin {
            return Err(ToolError::InvalidArguments("the arguments would change the URL's host".into()));
        }
        Ok(url)
    }
}

/// An argument as URL text: strings as they are, numbers and booleans
/// printed; absent or `null` is `None`.
fn arg_text(args: &Value, name: &str) -> Result<Option<String>, ToolError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(_) => Err(ToolError::InvalidArguments(format!(
            "`{name}` goes into the URL and must be a string, number or boolean"
        ))),
    }
}

fn fill_json(template: &Value, args: &Value) -> Value {
    match template {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}'))
                && !name.contains(['{', '}'])
                && let Ok([Piece::Var(_)]) = pieces(s).as_deref()
            {
                return args.get(name).cloned().unwrap_or(Value::Null);
            }
            match pieces(s) {
                Ok(ps) => Value::String(
                    ps.iter()
                        .map(|p| match p {
                            Piece::Lit(l) => l.clone(),
                            Piece::Var(name) => match args.get(name.as_str()) {
                                None | Some(Value::Null) => String::new(),
                                Some(Value::String(v)) => v.clone(),
                                Some(v) => v.to_string(),
                            },
                        })
                        .collect(),
                ),
                // A string with braces that are not placeholders stays as it is.
                Err(_) => template.clone(),
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| fill_json(i, args)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), fill_json(v, args))).collect())
        }
        other => other.clone(),
    }
}

fn json_vars(template: &Value, out: &mut Vec<String>) {
    match template {
        Value::String(s) => {
            if let Ok(ps) = pieces(s) {
                out.extend(vars(&ps).map(str::to_owned));
            }
        }
        Value::Array(items) => items.iter().for_each(|i| json_vars(i, out)),
        Value::Object(map) => map.values().for_each(|v| json_vars(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Validation.

/// A spec that passed validation, with its compiled parts.
struct Compiled {
    template: UrlTemplate,
    validator: jsonschema::Validator,
    headers: HeaderMap,
}

impl HttpToolSpec {
    /// Checks the spec as a whole; the API calls this before storing one.
    pub fn validate(&self) -> Result<(), ToolError> {
        self.compile().map(|_| ())
    }

    /// The tool as a model sees it.
    pub fn schema(&self) -> ToolSchema {
        ToolSchema {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: self.parameters.clone(),
        }
    }

    fn compile(&self) -> Result<Compiled, ToolError> {
        if !valid_tool_name(&self.name) {
            return Err(invalid("tool names are 1-64 letters, digits, `_` or `-`"));
        }
        if self.name.starts_with(MCP_PREFIX) {
            return Err(invalid(format!(
                "tool names starting with `{MCP_PREFIX}` are reserved for MCP tools"
            )));
        }
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(invalid(format!(
                "the description is longer than {MAX_DESCRIPTION_CHARS} characters"
            )));
        }
        let validator = compile_schema(&self.parameters)?;
        let properties = self.parameters.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = self
            .parameters
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let declared = |name: &str| properties.is_some_and(|p| p.contains_key(name));

        let template = UrlTemplate::parse(&self.url_template)?;
        for name in vars(&template.path) {
            if !declared(name) || !required.contains(&name) {
                return Err(invalid(format!(
                    "the path placeholder `{{{name}}}` must be a required property of `parameters`"
                )));
            }
        }
        for name in template.query.iter().flat_map(|p| vars(p)) {
            if !declared(name) {
                return Err(invalid(format!(
                    "the placeholder `{{{name}}}` is not a property of `parameters`"
                )));
            }
        }

        match &self.body {
            BodySpec::None => {}
            _ if self.method == HttpMethod::Get => return Err(invalid("a GET tool cannot send a body")),
            BodySpec::ArgsJson => {}
            BodySpec::Json { template: body } => {
                let mut names = Vec::new();
                json_vars(body, &mut names);
                if let Some(name) = names.iter().find(|n| !declared(n)) {
                    return Err(invalid(format!(
                        "the body placeholder `{{{name}}}` is not a property of `parameters`"
                    )));
                }
            }
        }

        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = checked_header_name(name)?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("the value of header `{name}` is not a valid header value")))?;
            headers.insert(name, value);
        }

        if let Some(auth) = &self.auth {
            bulkhead_vault::validate_name(&auth.secret_name).map_err(|e| invalid(e.message.into_owned()))?;
            match &auth.placement {
                AuthPlacement::Header { name, prefix } => {
                    let lower = name.to_ascii_lowercase();
                    // `Authorization` is the usual home of a credential; the
                    // other forbidden names stay forbidden.
                    if lower != "authorization" {
                        checked_header_name(name)?;
                    }
                    let parsed = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| invalid(format!("`{name}` is not a header name")))?;
                    if headers.contains_key(&parsed) {
                        return Err(invalid(format!(
                            "header `{name}` is set twice: fixed and for the credential"
                        )));
                    }
                    if HeaderValue::from_str(prefix).is_err() {
                        return Err(invalid("the credential's prefix is not a valid header value"));
                    }
                }
                AuthPlacement::Query { name } => {
                    if name.is_empty() || name.len() > 128 {
                        return Err(invalid("the credential's query parameter needs a name of 1-128 bytes"));
                    }
                    if template.query_keys().any(|k| k == *name) {
                        return Err(invalid(format!(
                            "the query parameter `{name}` is both in the template and the credential's"
                        )));
                    }
                }
            }
        }
        Ok(Compiled { template, validator, headers })
    }
}

pub(crate) fn checked_header_name(name: &str) -> Result<HeaderName, ToolError> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(format!("`{name}` is not a header name")))?;
    if FORBIDDEN_HEADERS.contains(&parsed.as_str()) {
        return Err(invalid(format!(
            "header `{name}` cannot be set here{}",
            if matches!(parsed.as_str(), "authorization" | "proxy-authorization" | "cookie") {
                "; keep credentials in the vault and reference them with `auth`"
            } else {
                ""
            }
        )));
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------
// The executor.

/// A validated HTTP tool bound to one tenant's egress policy and vault.
/// Cheap to clone.
#[derive(Clone)]
pub struct HttpTool {
    inner: Arc<ToolInner>,
}

struct ToolInner {
    spec: HttpToolSpec,
    compiled: Compiled,
    policy: EgressPolicy,
    vault: Vault,
}

impl std::fmt::Debug for HttpTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTool").field("name", &self.inner.spec.name).finish_non_exhaustive()
    }
}

impl HttpTool {
    /// Validates `spec` and binds it to a tenant's policy and the vault.
    pub fn new(spec: HttpToolSpec, policy: EgressPolicy, vault: Vault) -> Result<Self, ToolError> {
        let compiled = spec.compile()?;
        Ok(Self { inner: Arc::new(ToolInner { spec, compiled, policy, vault }) })
    }

    pub fn spec(&self) -> &HttpToolSpec {
        &self.inner.spec
    }

    pub fn schema(&self) -> ToolSchema {
        self.inner.spec.schema()
    }

    /// Runs the tool for `ctx` (the policy's tenant) with the model's `args`.
    pub async fn invoke(&self, ctx: &TenantCtx, args: &Value) -> Invocation {
        let started = Instant::now();
        let result = self.run(ctx, args).await;
        Invocation {
            tool: self.inner.spec.name.clone(),
            args_digest: args_digest(args),
            duration: started.elapsed(),
            result,
        }
    }

    async fn run(&self, ctx: &TenantCtx, args: &Value) -> Result<ToolOutput, ToolError> {
        let ToolInner { spec, compiled, policy, vault } = &*self.inner;
        policy.check_tenant(ctx)?;
        check_args(&compiled.validator, args)?;
        let mut values = std::collections::HashMap::new();
        for name in compiled.template.var_names() {
            values.insert(name, arg_text(args, name)?);
        }
        let mut url = compiled.template.render_with(|name| values.get(name).cloned().flatten())?;
        let mut headers = compiled.headers.clone();
        let body = match &spec.body {
            BodySpec::None => None,
            BodySpec::ArgsJson => Some(serde_json::to_vec(args).expect("a Value serializes")),
            BodySpec::Json { template } => {
                Some(serde_json::to_vec(&fill_json(template, args)).expect("a Value serializes"))
            }
        };
        if body.is_some() && !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }

        let mut redactor = Redactor::default();
        if let Some(auth) = &spec.auth {
            let secret = vault
                .reveal(ctx, SecretKind::Credential, &auth.secret_name)
                .await
                .map_err(ToolError::Vault)?
                .ok_or_else(|| ToolError::MissingCredential(auth.secret_name.clone()))?;
            redactor = Redactor::new([secret.expose()]);
            match &auth.placement {
                AuthPlacement::Header { name, prefix } => {
                    let name = HeaderName::from_bytes(name.as_bytes()).expect("validated");
                    let mut value =
                        HeaderValue::from_str(&format!("{prefix}{}", secret.expose())).map_err(|_| {
                            ToolError::InvalidSpec(format!(
                                "the credential `{}` is not a valid header value",
                                auth.secret_name
                            ))
                        })?;
                    // Kept out of debug output, and off cross-origin redirects.
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                AuthPlacement::Query { name } => {
                    url.query_pairs_mut().append_pair(name, secret.expose());
                }
            }
        }
        let response =
            policy.send(ctx, EgressRequest { method: spec.method.to_method(), url, headers, body }).await?;
        Ok(output(response, &redactor, policy.max_response_bytes(), false))
    }
}

/// The model's view of a response: text, redacted, with a note when cut.
pub(crate) fn output(resp: EgressResponse, redactor: &Redactor, cap: u64, with_status: bool) -> ToolOutput {
    let content_type = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let binary =
        ["image/", "audio/", "video/", "application/octet-stream", "application/zip", "application/pdf"]
            .iter()
            .any(|p| content_type.starts_with(p));
    let mut text = if binary {
        format!("[binary response: {} bytes of {content_type}]", resp.body.len())
    } else {
        let raw = String::from_utf8_lossy(&resp.body);
        if resp.truncated { redactor.redact_cut(&raw) } else { redactor.redact(&raw) }
    };
    if resp.truncated && !binary {
        text.push_str(&format!("\n[response cut at {cap} bytes]"));
    }
    if with_status {
        let ct =
            if content_type.is_empty() { String::new() } else { format!("\ncontent-type: {content_type}") };
        text = format!("HTTP {}{ct}\n\n{text}", resp.status.as_u16());
    }
    ToolOutput {
        text,
        status: Some(resp.status.as_u16()),
        is_error: resp.status.is_client_error() || resp.status.is_server_error(),
        bytes_received: resp.body.len() as u64,
        bytes_sent: resp.bytes_sent,
        truncated: resp.truncated,
        redirects: resp.redirects,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(url: &str) -> HttpToolSpec {
        HttpToolSpec {
            name: "get_item".into(),
            description: "Fetch an item".into(),
            parameters: json!({
                "type": "object",
                "properties": {"id": {"type": "string"}, "q": {"type": "string"}, "n": {"type": "integer"}},
                "required": ["id"]
            }),
            method: HttpMethod::Get,
            url_template: url.into(),
            headers: BTreeMap::new(),
            body: BodySpec::None,
            auth: None,
        }
    }

    fn render(url: &str, args: Value) -> Result<Url, ToolError> {
        let t = UrlTemplate::parse(url)?;
        t.render_with(|n| arg_text(&args, n).unwrap())
    }

    #[test]
    fn templates_render_encoded_components_and_keep_their_host() {
        let t = "https://api.example.com/v1/items/{id}?q={q}&limit=10";
        let u = render(t, json!({"id": "a/b?c#d@evil.com", "q": "x&y=z"})).unwrap();
        assert_eq!(u.host_str(), Some("api.example.com"));
        assert_eq!(u.path(), "/v1/items/a%2Fb%3Fc%23d%40evil.com");
        assert_eq!(u.query(), Some("q=x%26y%3Dz&limit=10"));
        // An absent query argument drops its pair.
        let u = render(t, json!({"id": "7"})).unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/v1/items/7?limit=10");
        for id in ["..", ".", ""] {
            assert!(matches!(render(t, json!({"id": id})), Err(ToolError::InvalidArguments(_))), "{id:?}");
        }
        let u = render("https://api.example.com/{id}", json!({"id": "@127.0.0.1:80"})).unwrap();
        assert_eq!(u.host_str(), Some("api.example.com"));
    }

    #[test]
    fn templates_refuse_placeholders_outside_path_and_query() {
        for t in [
            "https://{host}/x",
            "https://api.example.com:{port}/x",
            "https://api.{zone}.com/x",
            "https://user:pw@api.example.com/x",
            "ftp://api.example.com/x",
            "//api.example.com/x",
            "https://api.example.com/x#{frag}",
            "https://api.example.com/{id",
            "https://api.example.com/id}",
            "https://api.example.com/{a-b}",
        ] {
            assert!(matches!(UrlTemplate::parse(t), Err(ToolError::InvalidSpec(_))), "{t}");
        }
    }

    #[test]
    fn specs_are_validated() {
        assert!(spec("https://api.example.com/items/{id}?q={q}").validate().is_ok());
        let cases: Vec<(HttpToolSpec, &str)> = vec![
            (HttpToolSpec { name: "bad name".into(), ..spec("https://a.test/{id}") }, "tool names"),
            (HttpToolSpec { name: "mcp__x".into(), ..spec("https://a.test/{id}") }, "reserved"),
            (HttpToolSpec { parameters: json!({"type": "array"}), ..spec("https://a.test/") }, "type"),
            (HttpToolSpec { parameters: json!("object"), ..spec("https://a.test/") }, "type"),
            (
                HttpToolSpec {
                    parameters: json!({"type": "object", "properties": {"x": {"$ref": "http://169.254.169.254/s"}}}),
                    ..spec("https://a.test/")
                },
                "not a usable JSON Schema",
            ),
            (spec("https://a.test/{q}"), "required property"),
            (spec("https://a.test/{id}?z={zz}"), "not a property"),
            (HttpToolSpec { body: BodySpec::ArgsJson, ..spec("https://a.test/{id}") }, "GET tool"),
            (
                HttpToolSpec {
                    headers: BTreeMap::from([("Authorization".into(), "Bearer literal".into())]),
                    ..spec("https://a.test/{id}")
                },
                "vault",
            ),
            (
                HttpToolSpec {
                    auth: Some(AuthRef {
                        secret_name: "k".into(),
                        placement: AuthPlacement::Query { name: "q".into() },
                    }),
                    ..spec("https://a.test/{id}?q={q}")
                },
                "both in the template",
            ),
            (
                HttpToolSpec {
                    auth: Some(AuthRef {
                        secret_name: "bad/name".into(),
                        placement: AuthPlacement::Header { name: "X-Key".into(), prefix: String::new() },
                    }),
                    ..spec("https://a.test/{id}")
                },
                "secret names",
            ),
        ];
        for (s, want) in cases {
            let err = s.validate().unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        let ok = HttpToolSpec {
            auth: Some(AuthRef {
                secret_name: "api-key".into(),
                placement: AuthPlacement::Header { name: "Authorization".into(), prefix: "Bearer ".into() },
            }),
            ..spec("https://a.test/{id}")
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn specs_round_trip_through_json() {
        let s = HttpToolSpec {
            method: HttpMethod::Post,
            body: BodySpec::Json { template: json!({"item": "{id}", "note": "n={n}"}) },
            auth: Some(AuthRef {
                secret_name: "k".into(),
                placement: AuthPlacement::Query { name: "api_key".into() },
            }),
            ..spec("https://a.test/{id}")
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["body"]["kind"], "json");
        assert_eq!(v["auth"]["placement"]["in"], "query");
        assert_eq!(serde_json::from_value::<HttpToolSpec>(v).unwrap(), s);
    }

    #[test]
    fn body_templates_keep_types_and_interpolate_text() {
        let t = json!({"id": "{id}", "n": "{n}", "label": "item {id} of {n}", "missing": "{q}", "raw": "{not a var}"});
        let filled = fill_json(&t, &json!({"id": "a\"b", "n": 3}));
        assert_eq!(
            filled,
            json!({"id": "a\"b", "n": 3, "label": "item a\"b of 3", "missing": null, "raw": "{not a var}"})
        );
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let v = compile_schema(&spec("https://a.test/").parameters).unwrap();
        assert!(check_args(&v, &json!({"id": "x", "n": 2})).is_ok());
        for (args, want) in [
            (json!({}), "\"id\" is a required property"),
            (json!({"id": 5}), "/id"),
            (json!({"id": "x", "n": "two"}), "/n"),
            (json!(["id"]), "JSON object"),
        ] {
            let err = check_args(&v, &args).unwrap_err();
            assert!(err.to_string().contains(want), "{args}: {err}");
        }
    }
}
