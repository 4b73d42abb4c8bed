//! The crate's one error type, [`ToolError`], with a stable short code per
//! variant (for audit records) and its conversion to `bulkhead_core::Error`
//! at the crate boundary.
//!
//! Invariants: no message holds a credential, a full request URL (its query
//! may carry one) or a transport library's own error text (which names the
//! URL); errors name hosts, statuses and reasons only.

use std::time::Duration;

use bulkhead_core::{Code, Error};

use crate::egress::Denied;

/// Why a tool call, an egress request or a tool definition failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The egress policy refused the destination; nothing was sent to it.
    #[error("egress denied: {0}")]
    Egress(#[from] Denied),
    /// A tool definition (or MCP server registration) is not acceptable.
    #[error("invalid tool definition: {0}")]
    InvalidSpec(String),
    /// The model's arguments do not fit the tool; nothing was sent.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The tool names a credential the tenant's vault does not hold.
    #[error("the credential `{0}` is not in this tenant's vault; store it as a tool credential first")]
    MissingCredential(String),
    /// The whole exchange (all hops, body included) took longer than allowed.
    #[error("no complete response within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The destination could not be resolved or reached, or broke the protocol.
    #[error("request to `{host}` failed: {reason}")]
    Upstream { host: String, reason: String },
    /// An MCP server failed or answered with an error.
    #[error("MCP server `{server}`: {reason}")]
    Mcp { server: String, reason: String },
    /// A tool or policy built for one tenant was called with another's context.
    #[error("this tool belongs to another tenant")]
    TenantMismatch,
    /// The vault failed (not a missing secret: that is `MissingCredential`).
    #[error("the vault failed: {0}")]
    Vault(Error),
}

impl ToolError {
    /// A stable short code for audit records and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            ToolError::Egress(_) => "egress_denied",
            ToolError::InvalidSpec(_) => "invalid_tool",
            ToolError::InvalidArguments(_) => "invalid_arguments",
            ToolError::MissingCredential(_) => "credential_missing",
            ToolError::Timeout(_) => "timeout",
            ToolError::Upstream { .. } => "upstream_failed",
            ToolError::Mcp { .. } => "mcp_failed",
            ToolError::TenantMismatch => "tenant_mismatch",
            ToolError::Vault(_) => "vault_failed",
        }
    }

    /// Whether the egress policy refused the request before anything was sent.
    pub fn is_egress_denied(&self) -> bool {
        matches!(self, ToolError::Egress(_))
    }

    /// The text given to the model as the tool's error: the message, which
    /// never holds a credential; internal failures stay generic.
    pub fn model_message(&self) -> String {
        match self {
            ToolError::TenantMismatch | ToolError::Vault(_) => "the tool failed internally".to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<ToolError> for Error {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::Egress(_) => Error::new(Code::EgressDenied, e.to_string()),
            ToolError::InvalidSpec(_) | ToolError::InvalidArguments(_) | ToolError::MissingCredential(_) => {
                Error::new(Code::InvalidRequest, e.to_string())
            }
            // The far side failed, not the caller nor us: the message names
            // only the host and the reason, so it may be shown.
            ToolError::Timeout(_) | ToolError::Upstream { .. } | ToolError::Mcp { .. } => {
                Error::new(Code::Unavailable, e.to_string())
            }
            ToolError::TenantMismatch => Error::internal(e.to_string()),
            ToolError::Vault(inner) => inner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::Denied;

    #[test]
    fn codes_map_to_the_core_table() {
        let denied = ToolError::from(Denied::HostNotAllowed { host: "example.org".into() });
        assert_eq!(denied.code(), "egress_denied");
        let core: Error = denied.into();
        assert_eq!(core.code, Code::EgressDenied);
        assert_eq!(core.status(), 403);
        assert!(core.message.contains("example.org"), "{}", core.message);
        let core: Error = ToolError::TenantMismatch.into();
        assert_eq!(core.code, Code::Internal);
        assert_eq!(ToolError::TenantMismatch.model_message(), "the tool failed internally");
    }
}
