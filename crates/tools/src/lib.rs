//! Tools that reach the network on a tenant's behalf: the egress policy all
//! of them go through, tenant-defined HTTP tools, the `http_request`
//! built-in, and MCP clients.
//!
//! - [`egress`]: [`EgressPolicy`] — per-tenant allow list, the operator's
//!   exceptions for private destinations, caps; resolve, check every
//!   address, connect only to checked addresses, redirects by hand.
//! - [`http_tool`]: [`HttpToolSpec`] (stored by the tenant) and [`HttpTool`]
//!   (validated, bound to a policy and the vault, runnable).
//! - [`builtin`]: [`HttpRequestTool`], the generic GET/POST.
//! - [`mcp`]: [`McpServerSpec`] and [`McpConnection`] (list and call tools
//!   on a tenant's MCP server).
//! - [`redact`]: removes credentials, and their encodings, from model text.
//! - Every call returns an [`Invocation`]: text for the model, and what the
//!   audit trail and metering need.
//!
//! Wiring, in outline (the agent loop's `Tool` trait wraps any of these):
//!
//! ```text
//! let policy = EgressPolicy::new(&ctx, &config.egress, &tenant_settings.egress);
//! let tool = HttpTool::new(spec_from_db, policy.clone(), vault.clone())?;
//! // Tool::def  → tool.schema() (name, description, parameters)
//! // Tool::call → let inv = tool.invoke(ctx, args).await;
//! //              audit(inv.tool, inv.args_digest, inv.outcome(), inv.duration);
//! //              meter(inv.result.as_ref().map(|o| o.bytes_received));
//! //              inv.into_model_result()
//! let mcp = McpConnection::connect(&ctx, &server_spec, &policy, &vault).await?;
//! for t in mcp.list_tools(&ctx).await? { /* register t.schema */ }
//! mcp.call_tool(&ctx, "mcp__github__search", &args).await  // an Invocation too
//! ```
//!
//! Invariants, as absences: no tool sends a request except through
//! [`EgressPolicy`]; no credential leaves the vault except into an outgoing
//! request (never into a spec, a result, an error or a log); no tool or
//! policy built for one tenant runs for another (each call takes
//! `&TenantCtx` and checks it). This crate knows nothing of the agent loop,
//! the HTTP API or storage of tool definitions.

pub mod builtin;
pub mod egress;
mod error;
pub mod http_tool;
mod invocation;
pub mod mcp;
pub mod redact;

pub use builtin::HttpRequestTool;
pub use egress::{
    AddrClass, AddrException, Denied, EgressConfig, EgressPolicy, EgressRequest, EgressResponse, HostRule,
    Resolver, SystemResolver, TenantEgress,
};
pub use error::ToolError;
pub use http_tool::{AuthPlacement, AuthRef, BodySpec, HttpMethod, HttpTool, HttpToolSpec};
pub use invocation::{Invocation, ToolOutput, ToolSchema, args_digest};
pub use mcp::{McpConnection, McpServerSpec, McpTool};
