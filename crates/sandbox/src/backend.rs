//! The seam between the facade and the ways of isolating code.
//!
//! A backend runs one already-checked request under the given limits and
//! reports what happened; it never decides policy. Every backend enforces
//! every field of [`Limits`], each in its own way (see the implementations).

use bulkhead_core::{Error, TenantCtx};
use serde::{Deserialize, Serialize};

use crate::policy::Limits;
use crate::request::{ExecOutcome, ExecRequest};

/// Runs one request in a fresh sandbox.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `bubblewrap`, `gvisor`, … (also in every [`ExecOutcome`]).
    fn name(&self) -> &'static str;

    /// Runs `req` under `limits`. The code's failure is an `Ok` outcome; an
    /// `Err` means the platform could not run it (and nothing of it is left).
    async fn execute(
        &self,
        ctx: &TenantCtx,
        req: &ExecRequest,
        limits: &Limits,
    ) -> Result<ExecOutcome, Error>;
}

/// Which backend the server uses (configuration `sandbox.backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Linux namespaces with bubblewrap; the default on Linux.
    #[default]
    Bubblewrap,
    /// gVisor's `runsc`: a user-space kernel between the code and the host.
    Gvisor,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Bubblewrap => "bubblewrap",
            BackendKind::Gvisor => "gvisor",
        }
    }
}
