//! Cells and the routing table, as stored on the control plane; and the key
//! records a cell mirrors for its dedicated tenants.
//!
//! A cell is another Bulkhead deployment with its own store. The control
//! plane registers it (name, base URL, one of its operator keys) and places
//! `dedicated` tenants in it; requests of a placed tenant are proxied there.
//!
//! Invariants: no method here sees a cell's credential in plaintext — it is
//! sealed above this layer (`bulkhead-vault`) and stored as ciphertext; a
//! tenant's placement and its tier change in one transaction, so a tenant is
//! `dedicated` exactly when it has a cell; key records carry a key's
//! SHA-256, never its secret, and are written only for the tenant in the
//! context.

use async_trait::async_trait;
use bulkhead_core::tenancy::Scope;
use bulkhead_core::{KeyId, OperatorCtx, TenantCtx, TenantId, Tier};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{Tenant, validate_key_name};
use crate::{Result, StoreError};

/// Longest cell base URL.
pub const MAX_CELL_URL_BYTES: usize = 2048;

/// A registered cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub id: Uuid,
    /// Unique; how operators name it (`--cell NAME`).
    pub name: String,
    /// Where its API answers, e.g. `https://cell-eu-1.internal:8080`, no
    /// trailing slash.
    pub base_url: String,
    /// The cell's operator key, sealed with the master key.
    pub credential: SealedCredential,
    /// The key's visible start (`bh_op_…`), for people.
    pub credential_prefix: String,
    pub created_at: OffsetDateTime,
    /// Tenants placed in it.
    pub tenants: i64,
}

/// Ciphertext and nonce; opened only by the vault, for an outgoing request.
#[derive(Clone, PartialEq)]
pub struct SealedCredential {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
}

impl std::fmt::Debug for SealedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedCredential(<sealed>)")
    }
}

/// A cell to register.
#[derive(Debug, Clone)]
pub struct NewCell {
    pub name: String,
    pub base_url: String,
    pub credential: SealedCredential,
    pub credential_prefix: String,
}

/// Where a tenant is served.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Here, with this tier (`shared` or `isolated`).
    Local(Tier),
    /// In the named cell, as a `dedicated` tenant.
    Cell(String),
}

/// What a cell needs to authenticate a tenant's key itself: the control
/// plane's record of it, hash included, secret never.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub prefix: String,
    /// SHA-256 of the whole key.
    pub hash: Vec<u8>,
    pub scope: Scope,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// Cell names: as tenant names (2–63 lowercase letters, digits, `-`).
pub fn validate_cell_name(name: &str) -> Result<()> {
    let ok = (2..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid cell name {name:?}: use 2-63 lowercase letters, digits or '-', not starting with '-'"
        )))
    }
}

/// Base URLs: `http://` or `https://`, a host, no query, fragment or
/// credentials; stored without a trailing slash.
pub fn normalize_base_url(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    let ok = url.len() <= MAX_CELL_URL_BYTES
        && rest.is_some_and(|r| {
            let host = r.split('/').next().unwrap_or("");
            !host.is_empty() && !r.contains(['?', '#', '@', ' ']) && !r.chars().any(char::is_control)
        });
    if ok {
        Ok(url.to_owned())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid cell URL {url:?}: use http(s)://host[:port][/path], without query or credentials"
        )))
    }
}

impl NewCell {
    pub fn validate(&mut self) -> Result<()> {
        validate_cell_name(&self.name)?;
        self.base_url = normalize_base_url(&self.base_url)?;
        if self.credential.ciphertext.is_empty() || self.credential.nonce.is_empty() {
            return Err(StoreError::Invalid("the cell's credential must be sealed".into()));
        }
        Ok(())
    }
}

impl KeyRecord {
    pub fn validate(&self) -> Result<()> {
        validate_key_name(&self.name)?;
        if self.hash.len() != 32 || !self.prefix.starts_with("bh_tk_") || self.prefix.len() > 64 {
            return Err(StoreError::Invalid("a key record needs a tenant key prefix and a SHA-256".into()));
        }
        Ok(())
    }
}

/// The control plane's registry of cells and its routing table, and a
/// cell's mirror of its tenants' key records.
#[async_trait]
pub trait CellStore: Send + Sync {
    async fn create_cell(&self, op: &OperatorCtx, new: NewCell) -> Result<Cell>;
    async fn list_cells(&self, op: &OperatorCtx) -> Result<Vec<Cell>>;
    async fn get_cell(&self, op: &OperatorCtx, name: &str) -> Result<Cell>;
    /// Refuses (`Conflict`) while tenants are placed in it.
    async fn delete_cell(&self, op: &OperatorCtx, name: &str) -> Result<()>;

    /// The cell the tenant is served by, if any: authentication's routing
    /// lookup, on every tenant request (platform data about the tenant,
    /// read in platform scope).
    async fn tenant_cell(&self, ctx: &TenantCtx) -> Result<Option<Cell>>;
    /// Places a tenant: in a cell (tier `dedicated`), or back here with a
    /// local tier. Tier and route change in one transaction.
    async fn place_tenant(&self, op: &OperatorCtx, tenant: TenantId, placement: Placement) -> Result<Tenant>;
    /// Every placed tenant with its cell's name.
    async fn placements(&self, op: &OperatorCtx) -> Result<Vec<(TenantId, String)>>;

    /// The tenant's keys with their hashes, for mirroring to its cell.
    async fn key_records(&self, ctx: &TenantCtx) -> Result<Vec<KeyRecord>>;
    /// Creates or updates the tenant's keys from the control plane's
    /// records (same ids and prefixes); a key id of another tenant is a
    /// conflict.
    async fn put_key_records(&self, ctx: &TenantCtx, records: &[KeyRecord]) -> Result<()>;
}

/// A cell still referenced by placements cannot go.
pub(crate) fn cell_in_use(err: sqlx::Error, name: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &err
        && db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation
    {
        return StoreError::Conflict(format!(
            "cell {name:?} still serves tenants; move them out first (bulkhead tenant move NAME --tier shared)"
        ));
    }
    StoreError::Db(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_normalized() {
        assert_eq!(normalize_base_url("http://127.0.0.1:8080/").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(normalize_base_url("https://cell.example/api").unwrap(), "https://cell.example/api");
        for bad in ["", "ftp://x", "http://", "http://a?b=1", "http://u:p@host", "cell.example"] {
            assert!(normalize_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_credentials_are_checked() {
        let mut cell = NewCell {
            name: "eu-1".into(),
            base_url: "http://x/".into(),
            credential: SealedCredential { ciphertext: vec![1], nonce: vec![2] },
            credential_prefix: "bh_op_000000000000".into(),
        };
        cell.validate().unwrap();
        assert_eq!(cell.base_url, "http://x");
        cell.name = "EU".into();
        assert!(cell.validate().is_err());
        cell.name = "eu".into();
        cell.credential.ciphertext.clear();
        assert!(cell.validate().is_err());
        assert_eq!(format!("{:?}", cell.credential), "SealedCredential(<sealed>)");
    }
}
