//! The one error type that crosses crate boundaries towards the caller, and
//! the table of stable codes. Each code maps to exactly one HTTP status here,
//! so the status is decided in one place (the HTTP layer only reads it).
//! Codes are part of the public API: never rename one.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;

/// Stable machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Missing, unknown, revoked or expired credentials.
    Unauthorized,
    /// Authenticated, but the key's scope does not allow this.
    Forbidden,
    /// The tenant is suspended; nothing runs for it until resumed.
    TenantSuspended,
    /// No such resource for this caller (also: it belongs to another tenant).
    NotFound,
    /// The request is malformed or a field is invalid.
    InvalidRequest,
    /// The body is not valid JSON or does not match the schema.
    MalformedJson,
    /// The request names a model the catalog does not know.
    UnknownModel,
    /// The model exists but is not on the tenant's allow list.
    ModelNotAllowed,
    /// An outgoing request (a tool's) was refused by the egress policy: the
    /// host is not on the tenant's allow list, or it is a private, loopback,
    /// link-local or metadata address the operator has not excepted.
    EgressDenied,
    /// The request conflicts with existing state (e.g. a duplicate name).
    Conflict,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The content type is not one this endpoint accepts.
    UnsupportedMediaType,
    /// A rate or concurrency limit was hit; retry later.
    RateLimited,
    /// The tenant has as many runs waiting as it may; retry when some finish.
    QueueFull,
    /// The tenant's budget does not cover this request.
    BudgetExceeded,
    /// The method is not allowed on this path.
    MethodNotAllowed,
    /// The server is not ready (e.g. the store is unreachable).
    Unavailable,
    /// The tenant lives in a cell (its own deployment) that did not answer:
    /// down, unreachable or too slow to connect. Nothing was served from
    /// elsewhere; retry later.
    CellUnavailable,
    /// The tenant's data is being moved between tiers right now; retry in
    /// a moment.
    TenantMoving,
    /// The tenant is served by another cell (its own deployment), not by
    /// this store.
    WrongCell,
    /// An unexpected failure; details are in the server log under the request id.
    Internal,
}

impl Code {
    /// Every code, for documentation and tests.
    pub const ALL: &'static [Code] = &[
        Code::Unauthorized,
        Code::Forbidden,
        Code::TenantSuspended,
        Code::NotFound,
        Code::InvalidRequest,
        Code::MalformedJson,
        Code::UnknownModel,
        Code::ModelNotAllowed,
        Code::EgressDenied,
        Code::Conflict,
        Code::PayloadTooLarge,
        Code::UnsupportedMediaType,
        Code::RateLimited,
        Code::QueueFull,
        Code::BudgetExceeded,
        Code::MethodNotAllowed,
        Code::Unavailable,
        Code::CellUnavailable,
        Code::TenantMoving,
        Code::WrongCell,
        Code::Internal,
    ];

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            Code::Unauthorized => 401,
            Code::Forbidden | Code::TenantSuspended | Code::ModelNotAllowed | Code::EgressDenied => 403,
            Code::NotFound => 404,
            Code::MethodNotAllowed => 405,
            Code::Conflict => 409,
            Code::PayloadTooLarge => 413,
            Code::UnsupportedMediaType => 415,
            Code::InvalidRequest | Code::MalformedJson | Code::UnknownModel => 400,
            Code::RateLimited | Code::QueueFull => 429,
            Code::BudgetExceeded => 402,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::CellUnavailable => 502,
            Code::TenantMoving => 503,
            Code::WrongCell => 421,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::TenantSuspended => "tenant_suspended",
            Code::NotFound => "not_found",
            Code::InvalidRequest => "invalid_request",
            Code::MalformedJson => "malformed_json",
            Code::UnknownModel => "unknown_model",
            Code::ModelNotAllowed => "model_not_allowed",
            Code::EgressDenied => "egress_denied",
            Code::Conflict => "conflict",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::RateLimited => "rate_limited",
            Code::QueueFull => "queue_full",
            Code::BudgetExceeded => "budget_exceeded",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Unavailable => "unavailable",
            Code::CellUnavailable => "cell_unavailable",
            Code::TenantMoving => "tenant_moving",
            Code::WrongCell => "wrong_cell",
            Code::Internal => "internal",
        }
    }

    /// One line on what the code means, for the documentation.
    pub fn describe(self) -> &'static str {
        match self {
            Code::Unauthorized => "missing, unknown, revoked or expired API key",
            Code::Forbidden => "the key's scope does not allow this operation",
            Code::TenantSuspended => "the tenant is suspended",
            Code::NotFound => "no such resource for this caller",
            Code::InvalidRequest => "a parameter or field is invalid",
            Code::MalformedJson => "the body is not valid JSON for this endpoint",
            Code::UnknownModel => "the model is not in the catalog",
            Code::ModelNotAllowed => "the model is not on the tenant's allow list",
            Code::EgressDenied => "the egress policy refused the destination of an outgoing request",
            Code::Conflict => "conflicts with existing state, e.g. a duplicate name",
            Code::PayloadTooLarge => "the body exceeds the configured size limit",
            Code::UnsupportedMediaType => "the content type is not accepted here",
            Code::RateLimited => "a rate or concurrency limit was hit",
            Code::QueueFull => "the tenant has as many runs waiting as it may",
            Code::BudgetExceeded => "the tenant's budget does not cover the request",
            Code::MethodNotAllowed => "the method is not allowed on this path",
            Code::Unavailable => "the service is not ready",
            Code::CellUnavailable => "the tenant's cell (its dedicated deployment) did not answer",
            Code::TenantMoving => "the tenant's data is moving between tiers; retry shortly",
            Code::WrongCell => "the tenant is served by another cell, not this deployment's store",
            Code::Internal => "unexpected failure; see the server log for the request id",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error meant for the caller: a stable code, a message that says what to
/// do next, and optional structured details. `Internal` errors keep their
/// cause in `source` for the log and show the caller only a generic message.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: Code,
    pub message: Cow<'static, str>,
    pub details: Option<serde_json::Value>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: message.into(), details: None, source: None }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} not found"))
    }

    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Code::InvalidRequest, message)
    }

    /// An internal failure: the cause is kept for the log, never shown.
    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            code: Code::Internal,
            message: "internal error".into(),
            details: None,
            source: Some(source.into()),
        }
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_status_and_a_distinct_name() {
        let mut names = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!((400..600).contains(&code.status()), "{code}");
            assert!(names.insert(code.as_str()), "duplicate {code}");
            // serde and as_str agree, so the JSON code is the documented one.
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let err = Error::internal(std::io::Error::other("disk on fire at /var/secret"));
        assert_eq!(err.message, "internal error");
        assert!(err.source.is_some());
    }
}
