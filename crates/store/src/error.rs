//! Store errors, and their one conversion into the caller-facing error.

use bulkhead_core::{Code, Error};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("setup: {0}")]
    Setup(String),
    /// The tenant's data is moving between tiers; the call may be retried.
    #[error("the tenant's data is moving between tiers; retry shortly")]
    Moving,
    /// The tenant is `dedicated`: its data lives in its cell, not here.
    #[error("the tenant is served by its own cell, not by this store")]
    WrongCell,
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => Error::not_found(what),
            StoreError::Conflict(msg) => Error::new(Code::Conflict, msg),
            StoreError::Invalid(msg) => Error::new(Code::InvalidRequest, msg),
            StoreError::Moving => Error::new(Code::TenantMoving, StoreError::Moving.to_string()),
            StoreError::WrongCell => Error::new(Code::WrongCell, StoreError::WrongCell.to_string()),
            other => Error::internal(other),
        }
    }
}

/// Maps a unique violation to `Conflict` with `message`, a foreign-key
/// violation to `NotFound(parent)`, and passes anything else through.
pub(crate) fn classify(
    err: sqlx::Error,
    conflict: impl FnOnce() -> String,
    parent: &'static str,
) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => return StoreError::Conflict(conflict()),
            sqlx::error::ErrorKind::ForeignKeyViolation => return StoreError::NotFound(parent),
            _ => {}
        }
    }
    StoreError::Db(err)
}
