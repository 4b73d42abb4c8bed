//! The tools of a run's tenant, and the gate every tool call of the agent
//! loop passes.
//!
//! A run's tools are the built-ins (the [`ToolRegistry`]), `http_request`,
//! the tenant's own HTTP tools and its MCP servers' tools
//! (`mcp__{server}__{tool}`), resolved per run for the run's tenant — only
//! the names its agent lists, so a run connects only to the MCP servers it
//! may use. Network tools are bound to the tenant's [`EgressPolicy`] (the
//! operator's [`EgressConfig`] with the tenant's egress allow list) and to
//! the vault, which injects credentials server-side.
//!
//! The gate ([`TenantTools::call`]), in order: the agent's spec must list
//! the tool, and the tenant's allow list must admit it — else the model
//! gets a tool error and the refusal is audited (`tool.refused`); then
//! admission through metering (one unit of the tenant's
//! `tool_calls_per_minute`, a budget reservation of the tool's price) —
//! a refusal is a tool error, audited too; then the call, under a
//! deadline; then a `tool_call` usage event (idempotent id per run step)
//! and a `tool.called` audit entry (tool, digest of the arguments,
//! outcome, duration), recorded as `system`.
//!
//! Invariants, as absences: nothing here is shared between tenants (tools,
//! policies and MCP sessions are built per run from the run's `TenantCtx`,
//! and each checks the context it is called with); no tool runs without a
//! `tool.called` entry and a usage event; no refused call reaches a tool;
//! no argument or result text enters an audit entry (digests, codes and
//! sizes only).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bulkhead_audit::{Audit, AuditActor, AuditEvent, Outcome as AuditOutcome, action};
use bulkhead_core::{Code, Error, TenantBound, TenantCtx};
use bulkhead_limits::RateKind;
use bulkhead_metering::{Admission, Metering};
use bulkhead_models::{ToolCall, ToolDef};
use bulkhead_store::{DynStore, McpServerRecord, Run, UsageEvent, UsageKind};
use bulkhead_tools::mcp::{self, McpConnection};
use bulkhead_tools::{
    EgressConfig, EgressPolicy, HttpRequestTool, HttpTool, HttpToolSpec, Invocation, McpServerSpec,
    TenantEgress, ToolError, ToolSchema,
};
use bulkhead_vault::Vault;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::tools::{Tool, ToolCtx, ToolOutcome, ToolRegistry};

/// The built-in that needs a tenant (its egress policy).
pub const HTTP_REQUEST: &str = HttpRequestTool::NAME;
/// The least time a tool call gets; network tools get their egress
/// deadline and a little more.
const MIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A tenant's tool settings, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantToolSettings {
    /// Tools the tenant's agents may call at all (names, or `prefix*`);
    /// `None`: any.
    pub allowed_tools: Option<Vec<String>>,
    pub egress: TenantEgress,
}

/// Whether a tenant allow list admits `name`: `None` admits everything;
/// an entry is a name, or a prefix ending in `*` (`mcp__github__*`).
pub fn allow_list_admits(list: Option<&[String]>, name: &str) -> bool {
    list.is_none_or(|l| {
        l.iter().any(|entry| match entry.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => entry == name,
        })
    })
}

/// Resolves tenants' tools and gates their calls. Cheap to clone.
#[derive(Clone)]
pub struct TenantTools {
    inner: Arc<Inner>,
}

struct Inner {
    store: DynStore,
    vault: Vault,
    audit: Audit,
    metering: Metering,
    egress: EgressConfig,
}

impl std::fmt::Debug for TenantTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTools").field("egress", &self.inner.egress).finish_non_exhaustive()
    }
}

fn def_of(schema: ToolSchema) -> ToolDef {
    ToolDef { name: schema.name, description: schema.description, parameters: schema.parameters }
}

/// How a tool is reached, for audit entries and usage attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    Builtin,
    Http,
    Mcp,
}

impl ToolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolKind::Builtin => "builtin",
            ToolKind::Http => "http",
            ToolKind::Mcp => "mcp",
        }
    }
}

/// The tools one run may reach, resolved for its tenant.
pub struct RunTools {
    tools: BTreeMap<String, (Arc<dyn Tool>, ToolKind)>,
    /// Names that could not be resolved now, with a code and the reason
    /// (an MCP server refused by the egress policy or that did not answer,
    /// a missing server or tool).
    unavailable: BTreeMap<String, (&'static str, String)>,
    allowed: Option<Vec<String>>,
    timeout: Duration,
}

impl std::fmt::Debug for RunTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTools")
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .field("unavailable", &self.unavailable)
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl RunTools {
    /// What the model is offered: the agent's tools that resolved and that
    /// the tenant's allow list admits, in the agent's order.
    pub fn offered(&self, agent_tools: &[String]) -> Vec<ToolDef> {
        agent_tools
            .iter()
            .filter(|name| allow_list_admits(self.allowed.as_deref(), name))
            .filter_map(|name| self.tools.get(name))
            .map(|(tool, _)| tool.def())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name).map(|(t, _)| t)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }
}

/// A network tool of one tenant, as the agent loop sees it.
struct NetTool {
    def: ToolDef,
    via: Via,
}

enum Via {
    Request(HttpRequestTool),
    Http(HttpTool),
    Mcp(Arc<McpConnection>),
}

#[async_trait]
impl Tool for NetTool {
    fn def(&self) -> ToolDef {
        self.def.clone()
    }

    async fn call(&self, call: &ToolCtx<'_>, args: &Value) -> Result<TenantBound<String>, String> {
        self.invoke(call, args).await.output
    }

    async fn invoke(&self, call: &ToolCtx<'_>, args: &Value) -> ToolOutcome {
        let invocation = match &self.via {
            Via::Request(t) => t.invoke(call.tenant, args).await,
            Via::Http(t) => t.invoke(call.tenant, args).await,
            Via::Mcp(c) => c.call_tool(call.tenant, &self.def.name, args).await,
        };
        outcome_of(call.tenant, invocation)
    }
}

fn outcome_of(ctx: &TenantCtx, inv: Invocation) -> ToolOutcome {
    let code = inv.outcome();
    let denied = matches!(&inv.result, Err(e) if e.is_egress_denied());
    let details = match &inv.result {
        Ok(out) => json!({
            "status": out.status, "bytes_received": out.bytes_received, "bytes_sent": out.bytes_sent,
            "truncated": out.truncated, "redirects": out.redirects,
        }),
        Err(_) => json!({}),
    };
    ToolOutcome { output: inv.into_model_result().map(|text| ctx.bind(text)), code, denied, details }
}

/// Why a call did not run, for the model and the audit entry.
struct Refusal {
    reason: &'static str,
    message: String,
}

impl TenantTools {
    pub fn new(
        store: DynStore,
        vault: Vault,
        audit: Audit,
        metering: Metering,
        egress: EgressConfig,
    ) -> Self {
        Self { inner: Arc::new(Inner { store, vault, audit, metering, egress }) }
    }

    /// The operator's egress configuration.
    pub fn egress_config(&self) -> &EgressConfig {
        &self.inner.egress
    }

    /// The tenant's tool settings (defaults if never set).
    pub async fn settings(&self, ctx: &TenantCtx) -> Result<TenantToolSettings, Error> {
        let stored = self.inner.store.tool_settings(ctx).await?;
        let egress = serde_json::from_value(stored.egress)
            .map_err(|e| Error::internal(format!("stored egress settings do not parse: {e}")))?;
        Ok(TenantToolSettings { allowed_tools: stored.allowed_tools, egress })
    }

    /// The tenant's egress policy: the operator's configuration with the
    /// tenant's allow list.
    pub async fn policy(&self, ctx: &TenantCtx) -> Result<EgressPolicy, Error> {
        let settings = self.settings(ctx).await?;
        Ok(EgressPolicy::new(ctx, &self.inner.egress, &settings.egress))
    }

    /// The tools every tenant has: the registry's and `http_request`.
    pub fn builtin_defs(&self, builtins: &ToolRegistry) -> Vec<ToolDef> {
        let mut defs: Vec<ToolDef> =
            builtins.names().filter_map(|n| builtins.get(n)).map(|t| t.def()).collect();
        if builtins.get(HTTP_REQUEST).is_none() {
            defs.push(def_of(HttpRequestTool::definition()));
        }
        defs.sort_by(|a, b| a.name.cmp(&b.name));
        defs
    }

    /// Whether `name` names a built-in (one of `builtins`, or `http_request`).
    pub fn is_builtin(builtins: &ToolRegistry, name: &str) -> bool {
        builtins.get(name).is_some() || name == HTTP_REQUEST
    }

    /// Whether an agent of this tenant may list `name`: a built-in, one of
    /// the tenant's HTTP tools, or `mcp__{server}__{tool}` of one of its
    /// MCP servers (the server's tools are listed at run time, so the tool
    /// part is not checked here).
    pub async fn exists(&self, ctx: &TenantCtx, builtins: &ToolRegistry, name: &str) -> Result<bool, Error> {
        if Self::is_builtin(builtins, name) {
            return Ok(true);
        }
        if let Some(server) = mcp::server_of(name) {
            return Ok(self.inner.store.find_mcp_server(ctx, server).await?.is_some());
        }
        Ok(self.inner.store.find_tool(ctx, name).await?.is_some())
    }

    /// Opens a session with one of the tenant's MCP servers under `policy`.
    pub async fn connect_mcp(
        &self,
        ctx: &TenantCtx,
        server: &McpServerRecord,
        policy: &EgressPolicy,
    ) -> Result<McpConnection, ToolError> {
        let auth = server.auth.clone().map(serde_json::from_value).transpose().map_err(|e| {
            ToolError::InvalidSpec(format!("the stored credential reference does not parse: {e}"))
        })?;
        let spec = McpServerSpec { name: server.name.clone(), url: server.url.clone(), auth };
        McpConnection::connect(ctx, &spec, policy, &self.inner.vault).await
    }

    /// The tools named in `wanted` (an agent's list), resolved for `ctx`'s
    /// tenant. Names that cannot be resolved now are kept with a reason;
    /// only a store failure is an error.
    pub async fn resolve(
        &self,
        ctx: &TenantCtx,
        builtins: &ToolRegistry,
        wanted: &[String],
    ) -> Result<RunTools, Error> {
        let settings = self.settings(ctx).await?;
        let policy = EgressPolicy::new(ctx, &self.inner.egress, &settings.egress);
        let timeout = MIN_CALL_TIMEOUT.max(policy.timeout() + Duration::from_secs(5));
        let mut tools: BTreeMap<String, (Arc<dyn Tool>, ToolKind)> = BTreeMap::new();
        let mut unavailable = BTreeMap::new();
        let mut servers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for name in wanted {
            if let Some(tool) = builtins.get(name) {
                tools.insert(name.clone(), (tool.clone(), ToolKind::Builtin));
            } else if name == HTTP_REQUEST {
                let tool = HttpRequestTool::new(policy.clone());
                let def = def_of(tool.schema());
                tools.insert(
                    name.clone(),
                    (Arc::new(NetTool { def, via: Via::Request(tool) }), ToolKind::Builtin),
                );
            } else if let Some(server) = mcp::server_of(name) {
                servers.entry(server).or_default().insert(name.as_str());
            } else {
                match self.inner.store.find_tool(ctx, name).await? {
                    None => {
                        let reason = format!("this tenant has no tool named `{name}`");
                        unavailable.insert(name.clone(), ("unavailable", reason));
                    }
                    Some(record) => {
                        let built = serde_json::from_value::<HttpToolSpec>(record.spec)
                            .map_err(|e| ToolError::InvalidSpec(e.to_string()))
                            .and_then(|spec| HttpTool::new(spec, policy.clone(), self.inner.vault.clone()));
                        match built {
                            Ok(tool) => {
                                // The stored name is the one agents list.
                                let def = ToolDef { name: name.clone(), ..def_of(tool.schema()) };
                                tools.insert(
                                    name.clone(),
                                    (Arc::new(NetTool { def, via: Via::Http(tool) }), ToolKind::Http),
                                );
                            }
                            Err(e) => {
                                tracing::warn!(tenant = %ctx.tenant_id(), tool = %name, error = %e, "a stored tool does not build");
                                unavailable.insert(name.clone(), (e.code(), e.model_message()));
                            }
                        }
                    }
                }
            }
        }
        for (server, names) in servers {
            let reason = match self.inner.store.find_mcp_server(ctx, server).await? {
                None => ("unavailable", format!("this tenant has no MCP server named `{server}`")),
                Some(record) => match self.mcp_tools(ctx, &record, &policy, &names).await {
                    Ok(found) => {
                        for (name, tool) in found {
                            tools.insert(name, (tool, ToolKind::Mcp));
                        }
                        ("unavailable", format!("MCP server `{server}` has no such tool"))
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %ctx.tenant_id(), %server, code = e.code(), "MCP server unavailable for a run");
                        (e.code(), e.model_message())
                    }
                },
            };
            for name in names.into_iter().filter(|n| !tools.contains_key(*n)) {
                unavailable.insert(name.to_owned(), reason.clone());
            }
        }
        Ok(RunTools { tools, unavailable, allowed: settings.allowed_tools, timeout })
    }

    /// Connects to an MCP server and keeps the tools among `wanted`.
    async fn mcp_tools(
        &self,
        ctx: &TenantCtx,
        record: &McpServerRecord,
        policy: &EgressPolicy,
        wanted: &BTreeSet<&str>,
    ) -> Result<Vec<(String, Arc<dyn Tool>)>, ToolError> {
        let conn = Arc::new(self.connect_mcp(ctx, record, policy).await?);
        let listed = conn.list_tools(ctx).await?;
        Ok(listed
            .into_iter()
            .filter(|t| wanted.contains(t.schema.name.as_str()))
            .map(|t| {
                let tool: Arc<dyn Tool> =
                    Arc::new(NetTool { def: def_of(t.schema), via: Via::Mcp(conn.clone()) });
                (tool.def().name, tool)
            })
            .collect())
    }

    /// Audits a refused call; the model gets the reason as a tool error.
    async fn refuse(
        &self,
        ctx: &TenantCtx,
        run: &Run,
        base: &Value,
        r: Refusal,
    ) -> Result<(String, bool), Error> {
        let name = base["tool"].as_str().unwrap_or_default();
        tracing::warn!(tenant = %ctx.tenant_id(), run = %run.id, tool = %name, reason = r.reason, "tool call refused");
        // Rate and budget refusals were counted by metering already.
        if !matches!(r.reason, "rate_limited" | "budget_exceeded") {
            let scope = if r.reason == "egress_denied" { "egress" } else { "tool" };
            bulkhead_telemetry::metrics::policy_refused(ctx, scope, r.reason);
        }
        let mut details = base.clone();
        details["reason"] = json!(r.reason);
        let event = AuditEvent::new(action::TOOL_REFUSED, format!("tool:{name}"))
            .outcome(AuditOutcome::Denied)
            .details(details);
        self.inner.audit.record_as(ctx, AuditActor::System, event).await;
        Ok((format!("error: {}: {}", r.reason, r.message), false))
    }

    /// Runs one tool call of a run through the gate (see the module doc).
    /// Returns the text for the model and whether the call succeeded; an
    /// error only for a failure of the platform (the store), or a result
    /// bound to another tenant.
    #[tracing::instrument(
        name = "tool.call",
        skip_all,
        fields(tenant.id = %tool_ctx.tenant.tenant_id(), tool.name = %call.name)
    )]
    pub async fn call(
        &self,
        tool_ctx: &ToolCtx<'_>,
        run: &Run,
        agent_tools: &[String],
        tools: &RunTools,
        call: &ToolCall,
        event_id: &str,
    ) -> Result<(String, bool), Error> {
        let ctx = tool_ctx.tenant;
        let name = call.name.as_str();
        let raw = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
        let parsed: Result<Value, _> = serde_json::from_str(raw);
        let args_digest = match &parsed {
            Ok(v) => bulkhead_audit::digest_json(v),
            Err(_) => bulkhead_audit::digest(raw.as_bytes()),
        };
        let base = json!({"tool": name, "args_digest": args_digest, "run_id": run.id, "call_id": call.id});
        let refuse = |r: Refusal| self.refuse(ctx, run, &base, r);

        if !agent_tools.iter().any(|t| t == name) {
            let message = format!("the tool `{name}` is not allowed for this agent");
            return refuse(Refusal { reason: "not_in_agent_tools", message }).await;
        }
        if !allow_list_admits(tools.allowed.as_deref(), name) {
            let message = format!("the tool `{name}` is not on this tenant's tool allow list");
            return refuse(Refusal { reason: "not_in_tenant_allow_list", message }).await;
        }
        let Some((tool, kind)) = tools.tools.get(name) else {
            let (reason, message) = tools
                .unavailable
                .get(name)
                .cloned()
                .unwrap_or(("unavailable", format!("no tool named `{name}`")));
            return refuse(Refusal { reason, message }).await;
        };
        let args = match parsed {
            Ok(v) if v.is_object() => v,
            Ok(_) => {
                let message = "the arguments must be a JSON object".to_owned();
                return refuse(Refusal { reason: "invalid_arguments", message }).await;
            }
            Err(e) => {
                let message = format!("the arguments are not JSON: {e}");
                return refuse(Refusal { reason: "invalid_arguments", message }).await;
            }
        };

        // Admission: a unit of the tool-call rate, and the price reserved.
        let metering = &self.inner.metering;
        let terms = metering.terms(ctx).await?;
        let price = metering.pricing().tool_cost(&terms.pricing, name, 1);
        let admission =
            Admission { rates: vec![(RateKind::ToolCalls, 1)], concurrency: None, worst_case: price };
        let admitted = match metering.admit(ctx, admission).await {
            Ok(admitted) => admitted,
            Err(e) if matches!(e.code, Code::RateLimited | Code::BudgetExceeded) => {
                let reason = e.code.as_str();
                return refuse(Refusal { reason, message: e.message.to_string() }).await;
            }
            Err(e) => return Err(e),
        };

        let started = Instant::now();
        let outcome = match tokio::time::timeout(tools.timeout, tool.invoke(tool_ctx, &args)).await {
            Ok(outcome) => outcome,
            Err(_) => ToolOutcome {
                output: Err(format!("no result within {} s", tools.timeout.as_secs())),
                code: "timeout",
                denied: false,
                details: json!({}),
            },
        };
        let duration = started.elapsed();
        // A result of another tenant is a hard error of the run, recorded first.
        let (text, mismatch) = match outcome.output {
            Ok(bound) => match bound.into_inner_for(ctx) {
                Ok(text) => (Ok(text), None),
                Err(e) => (Err("the tool failed internally".to_owned()), Some(e)),
            },
            Err(e) => (Err(e), None),
        };
        let code = if mismatch.is_some() { "tenant_mismatch" } else { outcome.code };
        bulkhead_telemetry::metrics::tool_call(ctx, kind.as_str(), code);
        if outcome.denied {
            bulkhead_telemetry::metrics::policy_refused(ctx, "egress", code);
        }

        let event = UsageEvent {
            id: event_id.to_owned(),
            ts: OffsetDateTime::now_utc(),
            kind: UsageKind::ToolCall,
            name: name.to_owned(),
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            quantity: 1,
            unit: Some("calls".into()),
            cost: price,
            run_id: Some(run.id.as_uuid()),
            agent_id: Some(run.agent_id.as_uuid()),
            request_id: None,
            attributes: json!({"outcome": code, "tool_kind": kind.as_str()}),
        };
        metering.settle(ctx, admitted, event).await?;

        let mut details = base;
        details["kind"] = json!(kind.as_str());
        details["outcome"] = json!(code);
        details["duration_ms"] = json!(duration.as_millis() as u64);
        if let (Some(extra), Some(map)) = (outcome.details.as_object(), details.as_object_mut()) {
            for (k, v) in extra {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let audit_outcome = match (&text, outcome.denied) {
            (Ok(_), _) => AuditOutcome::Success,
            (Err(_), true) => AuditOutcome::Denied,
            (Err(_), false) => AuditOutcome::Failure,
        };
        let event = AuditEvent::new(action::TOOL_CALLED, format!("tool:{name}"))
            .outcome(audit_outcome)
            .details(details);
        self.inner.audit.record_as(ctx, AuditActor::System, event).await;
        tracing::info!(tenant = %ctx.tenant_id(), run = %run.id, tool = %name, outcome = code, duration_ms = duration.as_millis() as u64, "tool called");

        if let Some(e) = mismatch {
            return Err(e);
        }
        Ok(match text {
            Ok(text) => (text, true),
            Err(e) if code == "error" => (format!("error: {e}"), false),
            Err(e) => (format!("error: {code}: {e}"), false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_take_names_and_prefixes() {
        assert!(allow_list_admits(None, "anything"));
        let list = vec!["lookup".to_owned(), "mcp__github__*".to_owned()];
        let l = Some(list.as_slice());
        assert!(allow_list_admits(l, "lookup"));
        assert!(!allow_list_admits(l, "lookup2"));
        assert!(allow_list_admits(l, "mcp__github__search"));
        assert!(!allow_list_admits(l, "mcp__gitlab__search"));
        assert!(!allow_list_admits(Some(&[]), "lookup"), "an empty list admits nothing");
        assert!(allow_list_admits(Some(&["*".to_owned()]), "x"));
    }
}
