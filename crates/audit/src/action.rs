//! The stable action names entries carry, `<noun>.<past participle>`.
//! Tools that read the log filter on them (`?action=key.`), so a name is
//! never changed once released; new events get new names.

/// A presented API key was refused (any reason; see the entry's details).
pub const AUTH_FAILED: &str = "auth.failed";

/// A tenant key was created or revoked (tenant chain).
pub const KEY_CREATED: &str = "key.created";
pub const KEY_REVOKED: &str = "key.revoked";

/// An operator key was created or revoked (platform chain).
pub const OPERATOR_KEY_CREATED: &str = "operator_key.created";
pub const OPERATOR_KEY_REVOKED: &str = "operator_key.revoked";

/// Tenant lifecycle (platform chain, and the tenant's own while it exists).
pub const TENANT_CREATED: &str = "tenant.created";
pub const TENANT_UPDATED: &str = "tenant.updated";
pub const TENANT_TIER_CHANGED: &str = "tenant.tier_changed";
pub const TENANT_SUSPENDED: &str = "tenant.suspended";
pub const TENANT_RESUMED: &str = "tenant.resumed";
pub const TENANT_DELETED: &str = "tenant.deleted";

/// A cell (a deployment serving dedicated tenants) was registered or
/// removed (platform chain; names, URL and key prefix only).
pub const CELL_ADDED: &str = "cell.added";
pub const CELL_REMOVED: &str = "cell.removed";
/// A tenant's data moved between tiers (live move) or into or out of a
/// cell (platform chain and, for tier moves, the tenant's: from, to, the
/// pause, per-table row counts and checksums; never data).
pub const TENANT_MOVED: &str = "tenant.moved";
/// On a cell: a tenant's data arrived from its control plane, or left
/// for it (platform chain: name, direction, row count).
pub const TENANT_IMPORTED: &str = "tenant.imported";

/// A secret in the vault was stored or deleted (names only, never values).
pub const SECRET_PUT: &str = "secret.put";
pub const SECRET_DELETED: &str = "secret.deleted";

/// A tenant's configuration changed; the target names which part:
/// `budget`, `limits`, `pricing`, `allowed_models`, `model_config`.
pub const CONFIG_UPDATED: &str = "config.updated";

/// A mutating request an operator made for a tenant with `X-Tenant-ID`.
pub const OPERATOR_REQUEST: &str = "operator.request";

/// A tool call: run, or refused by the tenant's allow list or policy.
/// Details carry the tool name and a digest of the arguments.
pub const TOOL_CALLED: &str = "tool.called";
pub const TOOL_REFUSED: &str = "tool.refused";

/// Untrusted code: run in the sandbox, or refused by policy. Details carry
/// digests of the code and its output, and the limits that applied.
pub const SANDBOX_EXECUTED: &str = "sandbox.executed";
pub const SANDBOX_REFUSED: &str = "sandbox.refused";
