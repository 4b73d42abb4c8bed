//! Extractors whose rejections speak the error envelope, so malformed JSON,
//! wrong types, oversized bodies and bad query strings all get a stable code.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use bulkhead_core::Code;

use crate::ApiError;

/// `axum::Json` with our rejection.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` with our rejection.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` with our rejection.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match rejection.status().as_u16() {
            413 => Code::PayloadTooLarge,
            415 => Code::UnsupportedMediaType,
            _ => Code::MalformedJson,
        };
        let message = match code {
            Code::PayloadTooLarge => "request body is larger than the server's limit".to_owned(),
            Code::UnsupportedMediaType => {
                "send the body as JSON with `Content-Type: application/json`".to_owned()
            }
            _ => rejection.body_text(),
        };
        ApiError::new(code, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(Code::InvalidRequest, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(Code::InvalidRequest, rejection.body_text())
    }
}
