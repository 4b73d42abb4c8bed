//! The error envelope at the HTTP boundary:
//! `{"error": {"code": "...", "message": "...", "details": {...}}}` with the
//! status from `core`'s code table. 5xx bodies never carry internal text;
//! the cause is logged inside the request's span (which has the request id).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bulkhead_core::{Code, Error};
use serde::Serialize;
use utoipa::ToSchema;

/// An error response.
#[derive(Debug)]
pub struct ApiError(pub Error);

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`.
    pub code: String,
    /// What went wrong and what to do next.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self(Error::new(code, message))
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self(err)
    }
}

impl From<bulkhead_store::StoreError> for ApiError {
    fn from(err: bulkhead_store::StoreError) -> Self {
        Self(err.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let err = self.0;
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            let cause = err.source.as_ref().map(|s| s.to_string()).unwrap_or_default();
            tracing::error!(code = %err.code, %cause, "request failed");
        }
        // A rate-limited caller is told when to come back, in whole seconds.
        let retry_after = matches!(err.code, Code::RateLimited | Code::QueueFull)
            .then(|| err.details.as_ref()?.get("retry_after_ms")?.as_u64())
            .flatten()
            .map(|ms| ms.div_ceil(1000).max(1));
        let body = ErrorBody {
            error: ErrorDetail {
                code: err.code.as_str().to_owned(),
                message: err.message.into_owned(),
                details: err.details,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
