//! The domain core of Bulkhead: identifiers, the tenant context every call
//! below the auth layer carries, isolation tiers, the error type with its
//! stable machine-readable codes, configuration, and the API-key format.
//!
//! Invariants: `core` knows nothing of HTTP, SQL or JSON shapes beyond serde
//! derives; a [`TenantCtx`] is minted only by [`keys::authenticate`] or by an
//! [`OperatorCtx`] naming a tenant explicitly.

pub mod config;
pub mod error;
pub mod ids;
pub mod keys;
pub mod money;
pub mod page;
pub mod tenancy;

pub use error::{Code, Error, Result};
pub use ids::{AgentId, DocId, KbId, KeyId, McpServerId, MessageId, RunId, TenantId, ThreadId, ToolId};
pub use money::Money;
pub use tenancy::{Actor, OperatorCtx, TenantBound, TenantCtx, Tier};
