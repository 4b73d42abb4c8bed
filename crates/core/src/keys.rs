//! The API-key format and its verification.
//!
//! A key reads `bh_<kind>_<prefix>_<secret>`: `kind` is `op` (operator) or
//! `tk` (tenant), `prefix` is 12 random hex digits that identify the key and
//! may be shown, and `secret` is 256 random bits in base64url. The store keeps
//! the prefix and the SHA-256 of the whole key, never the key; verification
//! looks the key up by prefix and compares hashes in constant time.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::tenancy::{Scope, TenantStatus};
use crate::{Code, Error, KeyId, OperatorCtx, TenantCtx, TenantId};

const PREFIX_HEX_LEN: usize = 12;
const SECRET_BYTES: usize = 32;

/// Operator keys manage the platform; tenant keys act for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Operator,
    Tenant,
}

impl KeyKind {
    fn tag(self) -> &'static str {
        match self {
            KeyKind::Operator => "op",
            KeyKind::Tenant => "tk",
        }
    }
}

/// A freshly generated key. `secret` is shown once and then dropped.
#[derive(Debug)]
pub struct NewKey {
    /// The whole key, for the caller only.
    pub secret: String,
    /// The visible identifier, e.g. `bh_tk_3f9a1c2b7d4e`.
    pub prefix: String,
    /// SHA-256 of `secret`: all the store keeps.
    pub hash: [u8; 32],
}

pub fn generate(kind: KeyKind) -> NewKey {
    let mut raw = [0u8; PREFIX_HEX_LEN / 2 + SECRET_BYTES];
    getrandom::fill(&mut raw).expect("the OS random source failed");
    let (id_bytes, secret_bytes) = raw.split_at(PREFIX_HEX_LEN / 2);
    let prefix = format!("bh_{}_{}", kind.tag(), hex(id_bytes));
    let secret =
        format!("{prefix}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes));
    let hash = hash_key(&secret);
    NewKey { secret, prefix, hash }
}

/// Builds a key from an operator-supplied string (e.g. `BULKHEAD_OPERATOR_KEY`):
/// it must have the key format, so its prefix can be looked up.
pub fn import(secret: &str, kind: KeyKind) -> Result<NewKey, Error> {
    let malformed = || {
        let tag = kind.tag();
        Error::invalid(format!(
            "a configured key must look like bh_{tag}_<12 hex digits>_<43+ base64url characters>"
        ))
    };
    let parsed = parse(secret).map_err(|_| malformed())?;
    if parsed.kind != kind || secret.len() < parsed.prefix.len() + 1 + 43 {
        return Err(malformed());
    }
    Ok(NewKey { secret: secret.to_owned(), prefix: parsed.prefix.to_owned(), hash: hash_key(secret) })
}

pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A presented key, split into its parts.
#[derive(Debug, Clone, Copy)]
pub struct ParsedKey<'a> {
    pub kind: KeyKind,
    pub prefix: &'a str,
    secret: &'a str,
}

fn unauthorized() -> Error {
    Error::new(Code::Unauthorized, "missing or invalid API key; send `Authorization: Bearer <key>`")
}

/// Splits a presented key; anything that is not a key is `unauthorized`.
pub fn parse(presented: &str) -> Result<ParsedKey<'_>, Error> {
    let mut parts = presented.splitn(4, '_');
    let (Some("bh"), Some(tag), Some(id), Some(rest)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unauthorized());
    };
    let kind = match tag {
        "op" => KeyKind::Operator,
        "tk" => KeyKind::Tenant,
        _ => return Err(unauthorized()),
    };
    if id.len() != PREFIX_HEX_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) || rest.is_empty() {
        return Err(unauthorized());
    }
    let prefix = &presented[..3 + tag.len() + 1 + id.len()];
    Ok(ParsedKey { kind, prefix, secret: presented })
}

/// What the store knows about a key, looked up by prefix.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: KeyId,
    /// `None` for operator keys.
    pub tenant_id: Option<TenantId>,
    pub scope: Option<Scope>,
    pub hash: Vec<u8>,
    pub revoked: bool,
    pub expires_at: Option<OffsetDateTime>,
    pub tenant_status: Option<TenantStatus>,
    pub last_used_at: Option<OffsetDateTime>,
}

/// The outcome of authentication.
#[derive(Debug, Clone)]
pub enum Principal {
    Operator(OperatorCtx),
    Tenant(TenantCtx),
}

impl Principal {
    pub fn key_id(&self) -> Option<KeyId> {
        match self {
            Principal::Operator(op) => op.key_id(),
            Principal::Tenant(ctx) => match ctx.actor() {
                crate::Actor::TenantKey { key_id, .. } => Some(*key_id),
                crate::Actor::Operator { key_id } => *key_id,
            },
        }
    }
}

/// Verifies a presented key against what the store holds for its prefix.
/// Every failure is the same `unauthorized`, so callers learn nothing about
/// which part was wrong; a suspended tenant is `tenant_suspended` (403).
pub fn authenticate(
    presented: &ParsedKey<'_>,
    stored: Option<StoredKey>,
    now: OffsetDateTime,
) -> Result<Principal, Error> {
    let computed = hash_key(presented.secret);
    let Some(stored) = stored else {
        return Err(unauthorized());
    };
    let hash_ok: bool = computed.as_slice().ct_eq(stored.hash.as_slice()).into();
    if !hash_ok || stored.revoked || stored.expires_at.is_some_and(|at| at <= now) {
        return Err(unauthorized());
    }
    match (presented.kind, stored.tenant_id, stored.scope) {
        (KeyKind::Operator, None, _) => Ok(Principal::Operator(OperatorCtx::from_key(stored.id))),
        (KeyKind::Tenant, Some(tenant), Some(scope)) => {
            if stored.tenant_status != Some(TenantStatus::Active) {
                return Err(Error::new(
                    Code::TenantSuspended,
                    "this tenant is suspended; ask the platform operator to resume it",
                ));
            }
            Ok(Principal::Tenant(TenantCtx::from_tenant_key(tenant, stored.id, scope)))
        }
        _ => Err(unauthorized()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_for(key: &NewKey, tenant: Option<TenantId>) -> StoredKey {
        StoredKey {
            id: KeyId::new(),
            tenant_id: tenant,
            scope: tenant.map(|_| Scope::TenantApp),
            hash: key.hash.to_vec(),
            revoked: false,
            expires_at: None,
            tenant_status: tenant.map(|_| TenantStatus::Active),
            last_used_at: None,
        }
    }

    #[test]
    fn generated_keys_parse_and_verify() {
        let key = generate(KeyKind::Tenant);
        assert!(key.secret.starts_with(&key.prefix));
        assert_eq!(key.prefix.len(), "bh_tk_".len() + 12);
        let parsed = parse(&key.secret).unwrap();
        assert_eq!(parsed.prefix, key.prefix);
        let tenant = TenantId::new();
        let p = authenticate(&parsed, Some(stored_for(&key, Some(tenant))), OffsetDateTime::now_utc());
        match p.unwrap() {
            Principal::Tenant(ctx) => assert_eq!(ctx.tenant_id(), tenant),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_secret_revoked_expired_suspended_are_refused() {
        let key = generate(KeyKind::Tenant);
        let now = OffsetDateTime::now_utc();
        let tenant = Some(TenantId::new());
        let mut tampered = key.secret.clone();
        tampered.pop();
        tampered.push(if key.secret.ends_with('A') { 'B' } else { 'A' });
        let parsed = parse(&tampered).unwrap();
        let err = authenticate(&parsed, Some(stored_for(&key, tenant)), now).unwrap_err();
        assert_eq!(err.code, Code::Unauthorized);

        let parsed = parse(&key.secret).unwrap();
        let mut revoked = stored_for(&key, tenant);
        revoked.revoked = true;
        assert_eq!(authenticate(&parsed, Some(revoked), now).unwrap_err().code, Code::Unauthorized);
        let mut expired = stored_for(&key, tenant);
        expired.expires_at = Some(now - time::Duration::seconds(1));
        assert_eq!(authenticate(&parsed, Some(expired), now).unwrap_err().code, Code::Unauthorized);
        let mut suspended = stored_for(&key, tenant);
        suspended.tenant_status = Some(TenantStatus::Suspended);
        assert_eq!(authenticate(&parsed, Some(suspended), now).unwrap_err().code, Code::TenantSuspended);
        assert_eq!(authenticate(&parsed, None, now).unwrap_err().code, Code::Unauthorized);
    }

    #[test]
    fn a_tenant_key_cannot_pass_as_operator() {
        let key = generate(KeyKind::Tenant);
        // Same hash stored as an operator key row: the kind in the key disagrees.
        let parsed = parse(&key.secret).unwrap();
        let stored = stored_for(&key, None);
        assert!(authenticate(&parsed, Some(stored), OffsetDateTime::now_utc()).is_err());
    }

    #[test]
    fn garbage_is_unauthorized() {
        for s in ["", "bh", "bh_tk_", "bh_xx_0123456789ab_abc", "bh_tk_0123_abc", "Bearer x"] {
            assert_eq!(parse(s).unwrap_err().code, Code::Unauthorized, "{s}");
        }
    }

    #[test]
    fn import_checks_the_format() {
        let key = generate(KeyKind::Operator);
        assert_eq!(import(&key.secret, KeyKind::Operator).unwrap().hash, key.hash);
        assert!(import(&key.secret, KeyKind::Tenant).is_err());
        assert!(import("bh_op_0123456789ab_short", KeyKind::Operator).is_err());
        assert_eq!(import("not-a-key", KeyKind::Operator).unwrap_err().code, Code::InvalidRequest);
    }
}
