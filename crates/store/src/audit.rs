//! The audit log as stored: one append-only hash chain per tenant, and one
//! platform chain (events with no tenant, operator-only actions), with the
//! canonical encoding every entry's hash is computed over.
//!
//! Each chain is a sequence `seq = 1, 2, 3 …` with no gaps; each entry holds
//! the hash of its predecessor (`prev_hash`, 64 zeros for the first) and its
//! own `hash` = SHA-256 over [`entry_hash`]'s encoding of the chain name,
//! seq, time, actor, action, target, outcome, details and `prev_hash`. A
//! head row per chain (last seq and hash) is updated in the same transaction
//! as every append, so removing the *last* entries is detected too.
//!
//! Invariants: nothing here updates or deletes an entry (tenant deletion
//! removes a tenant's chain by cascade; the platform chain outlives the
//! tenants it mentions); appends to one chain are serialized (the head row
//! is locked `FOR UPDATE` on PostgreSQL, SQLite takes its write lock with
//! `BEGIN IMMEDIATE`); on PostgreSQL the application role may only INSERT
//! and SELECT entries. Details are stored as the exact canonical JSON text
//! that was hashed, so verification needs no re-serialization.

use async_trait::async_trait;
use bulkhead_core::{OperatorCtx, TenantCtx};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{Result, StoreError};

/// `prev_hash` of the first entry of every chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The name of the platform chain (tenant chains are named by tenant id).
pub const PLATFORM_CHAIN: &str = "platform";
/// Largest details document, as canonical JSON.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;
/// Largest target.
pub const MAX_TARGET_BYTES: usize = 512;
/// Tag that starts every hashed encoding; a new encoding gets a new tag.
const ENCODING_TAG: &[u8] = b"bulkhead-audit-v1";

/// Which chain a call reads or appends to: a tenant's own, or the
/// platform's (operators only).
#[derive(Debug, Clone, Copy)]
pub enum AuditChain<'a> {
    Tenant(&'a TenantCtx),
    Platform(&'a OperatorCtx),
}

impl AuditChain<'_> {
    /// The chain's name as hashed: the tenant id, or `platform`.
    pub fn name(&self) -> String {
        match self {
            AuditChain::Tenant(ctx) => ctx.tenant_id().to_string(),
            AuditChain::Platform(_) => PLATFORM_CHAIN.to_owned(),
        }
    }
}

/// An entry to append. The store assigns seq, time and the hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    /// `key:<id>`, `operator:<id>`, `cli` or `system`.
    pub actor: String,
    /// Whether an operator acted in a tenant's chain (its key, or the console).
    pub via_operator: bool,
    /// A stable dotted name, e.g. `key.created`.
    pub action: String,
    /// What was acted on, e.g. `key:<id>`; may be empty.
    pub target: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// A JSON object; never a secret.
    pub details: Value,
}

impl NewAuditEntry {
    /// Checks the entry and returns its details as canonical JSON.
    pub fn validate(&self) -> Result<String, StoreError> {
        let invalid = |m: String| Err(StoreError::Invalid(m));
        let name_ok = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
        };
        if !name_ok(&self.action, b"._") || self.action.starts_with('.') || self.action.ends_with('.') {
            return invalid(format!("audit action {:?} must be a dotted lowercase name", self.action));
        }
        if !name_ok(&self.outcome, b"_") {
            return invalid(format!("audit outcome {:?} must be a lowercase word", self.outcome));
        }
        if self.actor.is_empty() || self.actor.len() > 100 || self.actor.chars().any(char::is_control) {
            return invalid("audit actor must be 1–100 printable characters".into());
        }
        if self.target.len() > MAX_TARGET_BYTES || self.target.chars().any(char::is_control) {
            return invalid(format!("audit target must be at most {MAX_TARGET_BYTES} printable bytes"));
        }
        if !self.details.is_object() {
            return invalid("audit details must be a JSON object".into());
        }
        let details = canonical_json(&self.details);
        if details.len() > MAX_DETAILS_BYTES {
            return invalid(format!("audit details must be at most {MAX_DETAILS_BYTES} bytes"));
        }
        Ok(details)
    }
}

/// A stored entry, exactly as hashed.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// The tenant id, or `platform`.
    pub chain: String,
    pub seq: i64,
    /// Whole microseconds (what both backends store).
    pub at: OffsetDateTime,
    pub actor: String,
    pub via_operator: bool,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// Canonical JSON text (see [`canonical_json`]).
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry's fields give, with `seq` in place of its own.
    pub fn hash_at(&self, seq: i64) -> String {
        entry_hash(&HashInput {
            chain: &self.chain,
            seq,
            at_micros: crate::usage::to_micros(self.at),
            actor: &self.actor,
            via_operator: self.via_operator,
            action: &self.action,
            target: &self.target,
            outcome: &self.outcome,
            details: &self.details,
            prev_hash: &self.prev_hash,
        })
    }

    /// The hash this entry's fields give.
    pub fn computed_hash(&self) -> String {
        self.hash_at(self.seq)
    }
}

/// A chain's head: its last seq and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub last_seq: i64,
    pub last_hash: String,
}

/// Which entries to read, in seq order.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries with a seq above this (the cursor; 0 from the start).
    pub after: i64,
    /// At most this many (the store caps it at 1000).
    pub limit: i64,
    /// Only actions starting with this, e.g. `key.` or `auth.failed`.
    pub action_prefix: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<OffsetDateTime>,
}

impl AuditQuery {
    pub(crate) fn capped_limit(&self) -> i64 {
        self.limit.clamp(1, 1000)
    }
}

/// The fields one entry's hash is computed over.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub chain: &'a str,
    pub seq: i64,
    pub at_micros: i64,
    pub actor: &'a str,
    pub via_operator: bool,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub details: &'a str,
    pub prev_hash: &'a str,
}

/// Lowercase hex SHA-256 over the canonical encoding: the tag
/// `bulkhead-audit-v1`, then each field as an 8-byte big-endian length
/// followed by its UTF-8 bytes, in the order chain, seq (decimal), time
/// (unix microseconds, decimal), actor, via_operator (`true`/`false`),
/// action, target, outcome, details (canonical JSON), prev_hash (hex).
/// Length prefixes make the encoding unambiguous: no two different entries
/// encode to the same bytes.
pub fn entry_hash(input: &HashInput<'_>) -> String {
    let mut h = Sha256::new();
    h.update(ENCODING_TAG);
    let seq = input.seq.to_string();
    let at = input.at_micros.to_string();
    let via = if input.via_operator { "true" } else { "false" };
    for field in [
        input.chain,
        &seq,
        &at,
        input.actor,
        via,
        input.action,
        input.target,
        input.outcome,
        input.details,
        input.prev_hash,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex(&h.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// JSON with object keys sorted by their UTF-8 bytes and no insignificant
/// whitespace; strings and numbers as serde_json writes them. Independent
/// of serde_json's map ordering features, and stable under a parse and
/// re-canonicalization.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The audit log's storage. Appends are atomic per chain; nothing updates
/// or deletes an entry.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends to the chain under its head lock: the next seq, the head's
    /// hash as `prev_hash`, the store's clock as time; the head moves in the
    /// same transaction. Returns the entry as stored.
    async fn append_audit(&self, chain: AuditChain<'_>, entry: &NewAuditEntry) -> Result<AuditEntry>;
    /// Entries of the chain in seq order, after `query.after`.
    async fn list_audit(&self, chain: AuditChain<'_>, query: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// The chain's head; `None` before its first entry.
    async fn audit_head(&self, chain: AuditChain<'_>) -> Result<Option<AuditHead>>;
}

/// Fills in seq, time and hashes for an entry appended after `head`.
pub(crate) fn seal(
    chain: String,
    head: Option<&AuditHead>,
    new: &NewAuditEntry,
    details: String,
    at: OffsetDateTime,
) -> AuditEntry {
    let (seq, prev_hash) = match head {
        Some(h) => (h.last_seq + 1, h.last_hash.clone()),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let mut entry = AuditEntry {
        chain,
        seq,
        at,
        actor: new.actor.clone(),
        via_operator: new.via_operator,
        action: new.action.clone(),
        target: new.target.clone(),
        outcome: new.outcome.clone(),
        details,
        prev_hash,
        hash: String::new(),
    };
    entry.hash = entry.computed_hash();
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_is_stable() {
        let v = json!({"b": 1, "a": {"z": [1, 2.5, "x"], "é": null, "A": true}});
        let text = canonical_json(&v);
        assert_eq!(text, r#"{"a":{"A":true,"z":[1,2.5,"x"],"é":null},"b":1}"#);
        let again: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(canonical_json(&again), text);
    }

    #[test]
    fn every_field_changes_the_hash_and_lengths_disambiguate() {
        let base = HashInput {
            chain: "platform",
            seq: 1,
            at_micros: 1_700_000_000_000_000,
            actor: "cli",
            via_operator: false,
            action: "tenant.created",
            target: "tenant:x",
            outcome: "success",
            details: "{}",
            prev_hash: GENESIS_HASH,
        };
        let h = entry_hash(&base);
        assert_eq!(h.len(), 64);
        let variants = [
            HashInput { chain: "platforn", ..base },
            HashInput { seq: 2, ..base },
            HashInput { at_micros: base.at_micros + 1, ..base },
            HashInput { actor: "system", ..base },
            HashInput { via_operator: true, ..base },
            HashInput { action: "tenant.deleted", ..base },
            HashInput { target: "tenant:y", ..base },
            HashInput { outcome: "failure", ..base },
            HashInput { details: r#"{"a":1}"#, ..base },
            HashInput { prev_hash: "1", ..base },
            // Moving bytes between adjacent fields is not the same entry.
            HashInput { action: "tenant.createdt", target: "enant:x", ..base },
        ];
        for v in variants {
            assert_ne!(entry_hash(&v), h, "{v:?}");
        }
        assert_eq!(entry_hash(&base), h, "deterministic");
    }

    #[test]
    fn validation_refuses_bad_entries() {
        let ok = NewAuditEntry {
            actor: "system".into(),
            via_operator: false,
            action: "auth.failed".into(),
            target: "key:bh_tk_0123456789ab".into(),
            outcome: "denied".into(),
            details: json!({"reason": "revoked"}),
        };
        assert_eq!(ok.validate().unwrap(), r#"{"reason":"revoked"}"#);
        for bad in [
            NewAuditEntry { action: "Auth.Failed".into(), ..ok.clone() },
            NewAuditEntry { action: ".x".into(), ..ok.clone() },
            NewAuditEntry { action: String::new(), ..ok.clone() },
            NewAuditEntry { outcome: "ok!".into(), ..ok.clone() },
            NewAuditEntry { actor: String::new(), ..ok.clone() },
            NewAuditEntry { target: "a\nb".into(), ..ok.clone() },
            NewAuditEntry { details: json!([1]), ..ok.clone() },
            NewAuditEntry { details: json!({"x": "y".repeat(MAX_DETAILS_BYTES)}), ..ok.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(StoreError::Invalid(_))), "{bad:?}");
        }
    }
}
