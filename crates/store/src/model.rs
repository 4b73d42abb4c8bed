//! The records the store holds, and the validation of what comes in, done
//! before anything is written so both backends and all callers share it.

use bulkhead_core::tenancy::{Scope, TenantStatus};
use bulkhead_core::{KeyId, TenantId, Tier};
use serde_json::Value;
use time::OffsetDateTime;

use crate::StoreError;

/// Largest metadata object, serialized.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// A tenant's control row. Serializable so a tenant dump can carry it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub tier: Tier,
    pub status: TenantStatus,
    pub metadata: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct NewTenant {
    pub name: String,
    pub tier: Tier,
    pub metadata: Value,
}

/// A partial update; `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub tier: Option<Tier>,
    pub status: Option<TenantStatus>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: KeyId,
    /// `None` for an operator key.
    pub tenant_id: Option<TenantId>,
    pub name: String,
    pub prefix: String,
    pub scope: Option<Scope>,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
}

/// Tenant names: 2–63 characters of lowercase letters, digits and `-`,
/// starting with a letter or digit — safe in URLs, file names and DNS labels.
pub fn validate_tenant_name(name: &str) -> Result<(), StoreError> {
    let ok = (2..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid tenant name {name:?}: use 2-63 lowercase letters, digits or '-', not starting with '-'"
        )))
    }
}

pub fn validate_metadata(metadata: &Value) -> Result<(), StoreError> {
    if !metadata.is_object() {
        return Err(StoreError::Invalid("metadata must be a JSON object".into()));
    }
    if metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(StoreError::Invalid(format!("metadata must be at most {MAX_METADATA_BYTES} bytes")));
    }
    Ok(())
}

/// Key names are labels for people: 1–100 printable characters.
pub fn validate_key_name(name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid("key name must be 1-100 printable characters".into()));
    }
    Ok(())
}

impl NewTenant {
    pub fn validate(&self) -> Result<(), StoreError> {
        validate_tenant_name(&self.name)?;
        validate_metadata(&self.metadata)
    }
}

impl TenantPatch {
    pub fn validate(&self) -> Result<(), StoreError> {
        if let Some(name) = &self.name {
            validate_tenant_name(name)?;
        }
        if let Some(metadata) = &self.metadata {
            validate_metadata(metadata)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        for ok in ["ab", "acme", "acme-corp-2", "0x"] {
            assert!(validate_tenant_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "a", "-ab", "Acme", "a b", "a_b", "ä1", long.as_str(), "a/b"] {
            assert!(validate_tenant_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert!(validate_metadata(&serde_json::json!({"a": 1})).is_ok());
        assert!(validate_metadata(&serde_json::json!([1])).is_err());
        let big = "x".repeat(MAX_METADATA_BYTES);
        assert!(validate_metadata(&serde_json::json!({ "a": big })).is_err());
    }
}
