//! The crate's error type and its one conversion into `bulkhead_core::Error`.
//!
//! A [`Refusal`] is not a failure of the platform: it is the policy saying no,
//! with a stable code the HTTP layer and the audit log can rely on. Everything
//! else is either the operator's set-up (`Unavailable`, `Config`) or an
//! internal failure whose text is kept for the log and never shown to a tenant.

use bulkhead_core::{Code, Error};

use crate::policy::Refusal;

/// Why an execution did not produce an [`crate::ExecOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The policy (or a concurrency cap) refused the request; nothing ran.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The host cannot run sandboxes as configured (missing `bwrap`, user, …).
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    /// A policy or configuration document is invalid.
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    /// The backend failed before or around the sandboxed code (not the code's
    /// own failure, which is an outcome).
    #[error("sandbox failure: {0}")]
    Internal(String),
    /// An I/O error on the host side (staging files, pipes, cgroups).
    #[error("sandbox I/O while {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A backend returned an error already in the platform's form.
    #[error(transparent)]
    Backend(Error),
}

impl SandboxError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SandboxError {
        move |source| SandboxError::Io { what, source }
    }

    /// The refusal, when the request was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            SandboxError::Refused(r) => Some(r),
            _ => None,
        }
    }
}

impl From<Refusal> for SandboxError {
    fn from(r: Refusal) -> Self {
        SandboxError::Refused(r)
    }
}

impl From<SandboxError> for Error {
    fn from(err: SandboxError) -> Self {
        match err {
            SandboxError::Refused(refusal) => refusal.into(),
            SandboxError::Unavailable(message) => {
                // The operator's problem, not the tenant's: say so without host details.
                tracing::error!(%message, "sandbox unavailable");
                Error::new(Code::Unavailable, "code execution is not available on this server right now")
            }
            SandboxError::Config(message) => Error::invalid(message),
            SandboxError::Backend(e) => e,
            other @ (SandboxError::Internal(_) | SandboxError::Io { .. }) => Error::internal(other),
        }
    }
}
