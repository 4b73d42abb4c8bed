//! The credentials vault: per-tenant secrets (provider keys, tool
//! credentials) encrypted at rest with envelope encryption.
//!
//! Each tenant has its own 256-bit data key, generated on its first secret
//! and stored only wrapped (encrypted) by the platform's master key. Each
//! secret is sealed with ChaCha20-Poly1305 under the tenant's data key, with
//! the tenant id, kind and name as associated data — so a sealed secret
//! copied to another tenant or name does not open. Rotating a secret is a
//! `put` of a new value; its old ciphertext is overwritten.
//!
//! Invariants: plaintext exists only in [`Secret`], whose `Debug` and
//! `Display` print a redaction marker, and which is handed out only by
//! [`Vault::reveal`] to code that injects it into an outgoing request; the
//! store below sees ciphertext only; every call takes `&TenantCtx`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use bulkhead_core::{Code, Error, TenantCtx};
use bulkhead_store::{DynStore, SealedSecret};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use time::OffsetDateTime;

const NONCE_LEN: usize = 12;

/// The platform's key-encryption key. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Parses 32 bytes in standard or URL-safe base64.
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .map_err(|_| Error::invalid("the master key must be 32 bytes in base64"))?;
        let key: [u8; 32] =
            bytes.try_into().map_err(|_| Error::invalid("the master key must be exactly 32 bytes"))?;
        Ok(Self(key))
    }

    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source failed");
        Self(key)
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Reads the key file, or creates it (mode 0600) with a fresh key: the
    /// embedded default's way to have a master key with no configuration.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_private(path, &key.to_base64())
                    .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))?;
                tracing::warn!(path = %path.display(), "generated a master key; back it up — secrets cannot be read without it");
                Ok(key)
            }
            Err(e) => Err(Error::internal(format!("cannot read {}: {e}", path.display()))),
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// A revealed secret. Prints as `<redacted>`; read it with
/// [`Secret::expose`] where it goes into a request, and nowhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What kind of secret: provider keys for models, credentials for tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    ProviderKey,
    Credential,
}

impl SecretKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::ProviderKey => "provider_key",
            SecretKind::Credential => "credential",
        }
    }
}

/// A secret's name and dates — everything but its value.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl From<SealedSecret> for SecretInfo {
    fn from(s: SealedSecret) -> Self {
        Self { name: s.name, created_at: s.created_at, updated_at: s.updated_at }
    }
}

/// The vault. Cheap to clone.
#[derive(Clone)]
pub struct Vault {
    store: DynStore,
    master: Arc<MasterKey>,
}

pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// Secret names: 1–100 of letters, digits, `-`, `_`, `.`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = (1..=100).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(()) } else { Err(Error::invalid("secret names are 1-100 letters, digits, '-', '_' or '.'")) }
}

fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the OS random source failed");
    let ct =
        cipher.encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad }).expect("encryption cannot fail");
    (ct, nonce.to_vec())
}

fn open(key: &[u8; 32], ciphertext: &[u8], nonce: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    let nonce: [u8; NONCE_LEN] =
        nonce.try_into().map_err(|_| Error::internal("stored nonce has the wrong length"))?;
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad })
        // Wrong master key, tampering, or a row moved to another tenant or name.
        .map_err(|_| Error::internal("a sealed secret failed authentication"))
}

fn dek_aad(ctx: &TenantCtx) -> Vec<u8> {
    format!("bulkhead-dek:{}", ctx.tenant_id()).into_bytes()
}

fn platform_aad(label: &str) -> Vec<u8> {
    format!("bulkhead-platform:{label}").into_bytes()
}

fn secret_aad(ctx: &TenantCtx, kind: SecretKind, name: &str) -> Vec<u8> {
    format!("bulkhead-secret:{}:{}:{name}", ctx.tenant_id(), kind.as_str()).into_bytes()
}

impl Vault {
    pub fn new(store: DynStore, master: MasterKey) -> Self {
        Self { store, master: Arc::new(master) }
    }

    /// The tenant's data key, created on first use.
    async fn data_key(&self, ctx: &TenantCtx, create: bool) -> Result<Option<[u8; 32]>, Error> {
        let stored = match self.store.data_key(ctx).await? {
            Some(found) => found,
            None if !create => return Ok(None),
            None => {
                let mut dek = [0u8; 32];
                getrandom::fill(&mut dek).expect("the OS random source failed");
                let (wrapped, nonce) = seal(&self.master.0, &dek, &dek_aad(ctx));
                // A concurrent first writer may have won: use whatever is stored.
                self.store.insert_data_key(ctx, &wrapped, &nonce).await?
            }
        };
        let dek = open(&self.master.0, &stored.0, &stored.1, &dek_aad(ctx))?;
        let dek: [u8; 32] =
            dek.try_into().map_err(|_| Error::internal("stored data key has the wrong length"))?;
        Ok(Some(dek))
    }

    /// Creates or replaces (rotates) a secret.
    pub async fn put(
        &self,
        ctx: &TenantCtx,
        kind: SecretKind,
        name: &str,
        value: &str,
    ) -> Result<SecretInfo, Error> {
        validate_name(name)?;
        if value.is_empty() || value.len() > MAX_SECRET_BYTES {
            return Err(Error::new(
                Code::InvalidRequest,
                format!("a secret value must be 1 to {MAX_SECRET_BYTES} bytes"),
            ));
        }
        let dek = self.data_key(ctx, true).await?.expect("created on demand");
        let (ct, nonce) = seal(&dek, value.as_bytes(), &secret_aad(ctx, kind, name));
        Ok(self.store.put_secret(ctx, kind.as_str(), name, &ct, &nonce).await?.into())
    }

    /// The plaintext, for injection into an outgoing request only.
    pub async fn reveal(
        &self,
        ctx: &TenantCtx,
        kind: SecretKind,
        name: &str,
    ) -> Result<Option<Secret>, Error> {
        let Some(sealed) = self.store.get_secret(ctx, kind.as_str(), name).await? else { return Ok(None) };
        let Some(dek) = self.data_key(ctx, false).await? else {
            return Err(Error::internal("a secret exists without its tenant's data key"));
        };
        let plain = open(&dek, &sealed.ciphertext, &sealed.nonce, &secret_aad(ctx, kind, name))?;
        String::from_utf8(plain)
            .map(|s| Some(Secret(s)))
            .map_err(|_| Error::internal("a secret is not UTF-8"))
    }

    pub async fn delete(&self, ctx: &TenantCtx, kind: SecretKind, name: &str) -> Result<bool, Error> {
        Ok(self.store.delete_secret(ctx, kind.as_str(), name).await?)
    }

    /// Seals a platform secret (no tenant: e.g. a cell's operator key)
    /// directly under the master key; `label` names what it is for and
    /// is bound as associated data, so the sealed value opens only under
    /// the same label. Returns (ciphertext, nonce).
    pub fn seal_platform(&self, label: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        seal(&self.master.0, value.as_bytes(), &platform_aad(label))
    }

    /// Opens what [`Vault::seal_platform`] sealed under `label`, for an
    /// outgoing request only.
    pub fn open_platform(&self, label: &str, ciphertext: &[u8], nonce: &[u8]) -> Result<Secret, Error> {
        let plain = open(&self.master.0, ciphertext, nonce, &platform_aad(label))?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| Error::internal("a sealed platform secret is not UTF-8"))
    }

    /// Names and dates of the tenant's secrets of a kind — never values.
    pub async fn list(&self, ctx: &TenantCtx, kind: SecretKind) -> Result<Vec<SecretInfo>, Error> {
        Ok(self.store.list_secrets(ctx, kind.as_str()).await?.into_iter().map(SecretInfo::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_core::{OperatorCtx, Tier};
    use bulkhead_store::NewTenant;
    use serde_json::json;

    async fn setup(
        backend: &str,
    ) -> (Vault, DynStore, TenantCtx, TenantCtx, bulkhead_core::config::StoreConfig, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = bulkhead_store::testing::fresh_config(backend, dir.path()).await.unwrap();
        let store = bulkhead_store::open(&config).await.unwrap();
        let op = OperatorCtx::local_cli();
        let mut ctxs = Vec::new();
        for name in ["vault-a", "vault-b"] {
            let t = store
                .create_tenant(&op, NewTenant { name: name.into(), tier: Tier::Shared, metadata: json!({}) })
                .await
                .unwrap();
            ctxs.push(op.act_for(t.id));
        }
        let vault = Vault::new(store.clone(), MasterKey::generate());
        let b = ctxs.pop().unwrap();
        let a = ctxs.pop().unwrap();
        (vault, store, a, b, config, dir)
    }

    #[tokio::test]
    async fn secrets_round_trip_stay_sealed_and_stay_with_their_tenant() {
        for backend in bulkhead_store::testing::backends() {
            let (vault, store, a, b, config, _dir) = setup(backend).await;
            let canary = format!("sk-canary-{}", uuid::Uuid::now_v7().simple());
            vault.put(&a, SecretKind::ProviderKey, "openai", &canary).await.unwrap();
            assert_eq!(
                vault.reveal(&a, SecretKind::ProviderKey, "openai").await.unwrap().unwrap().expose(),
                canary
            );
            // Another tenant, another kind: nothing.
            assert!(vault.reveal(&b, SecretKind::ProviderKey, "openai").await.unwrap().is_none());
            assert!(vault.reveal(&a, SecretKind::Credential, "openai").await.unwrap().is_none());
            assert!(vault.list(&b, SecretKind::ProviderKey).await.unwrap().is_empty());
            // Nothing stored holds the plaintext.
            let rows = bulkhead_store::testing::dump_all_rows(&config).await.unwrap();
            assert!(rows.iter().any(|(t, _)| t == "secrets"));
            assert!(rows.iter().all(|(_, r)| !r.contains(&canary)), "{backend}: plaintext stored");
            // Rotation replaces the value.
            vault.put(&a, SecretKind::ProviderKey, "openai", "sk-rotated").await.unwrap();
            assert_eq!(
                vault.reveal(&a, SecretKind::ProviderKey, "openai").await.unwrap().unwrap().expose(),
                "sk-rotated"
            );
            let names = vault.list(&a, SecretKind::ProviderKey).await.unwrap();
            assert_eq!(names.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["openai"]);
            assert_eq!(
                format!("{:?}", vault.reveal(&a, SecretKind::ProviderKey, "openai").await.unwrap()),
                "Some(Secret(<redacted>))"
            );
            assert!(vault.delete(&a, SecretKind::ProviderKey, "openai").await.unwrap());
            assert!(vault.reveal(&a, SecretKind::ProviderKey, "openai").await.unwrap().is_none());
            drop(store);
        }
    }

    #[tokio::test]
    async fn platform_secrets_open_only_under_their_label_and_key() {
        let (vault, store, _a, _b, _config, _dir) = setup("sqlite").await;
        let (ct, nonce) = vault.seal_platform("cell:eu-1", "bh_op_secret");
        assert!(!ct.windows(12).any(|w| w == b"bh_op_secret"));
        assert_eq!(vault.open_platform("cell:eu-1", &ct, &nonce).unwrap().expose(), "bh_op_secret");
        assert!(vault.open_platform("cell:eu-2", &ct, &nonce).is_err());
        let other = Vault::new(store, MasterKey::generate());
        assert!(other.open_platform("cell:eu-1", &ct, &nonce).is_err());
    }

    #[tokio::test]
    async fn a_sealed_secret_moved_to_another_tenant_does_not_open() {
        let (vault, store, a, b, _config, _dir) = setup("sqlite").await;
        vault.put(&a, SecretKind::Credential, "api", "value-of-a").await.unwrap();
        vault.put(&b, SecretKind::Credential, "other", "value-of-b").await.unwrap();
        // Copy A's ciphertext into B's row, as a bug or an attacker with DB access might.
        let sealed = store.get_secret(&a, "credential", "api").await.unwrap().unwrap();
        store.put_secret(&b, "credential", "api", &sealed.ciphertext, &sealed.nonce).await.unwrap();
        let err = vault.reveal(&b, SecretKind::Credential, "api").await.unwrap_err();
        assert_eq!(err.code, Code::Internal);
        // And a different master key opens nothing.
        let stranger = Vault::new(store.clone(), MasterKey::generate());
        assert!(stranger.reveal(&a, SecretKind::Credential, "api").await.is_err());
    }

    #[tokio::test]
    async fn bad_names_and_values_are_refused() {
        let (vault, _store, a, _b, _config, _dir) = setup("sqlite").await;
        for name in ["", "has space", "slash/name", &"x".repeat(101)] {
            assert_eq!(
                vault.put(&a, SecretKind::Credential, name, "v").await.unwrap_err().code,
                Code::InvalidRequest
            );
        }
        assert_eq!(
            vault.put(&a, SecretKind::Credential, "ok", "").await.unwrap_err().code,
            Code::InvalidRequest
        );
        let big = "x".repeat(MAX_SECRET_BYTES + 1);
        assert_eq!(
            vault.put(&a, SecretKind::Credential, "ok", &big).await.unwrap_err().code,
            Code::InvalidRequest
        );
    }

    #[test]
    fn master_keys_parse_and_never_print() {
        let k = MasterKey::generate();
        assert_eq!(MasterKey::from_base64(&k.to_base64()).unwrap().0, k.0);
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let made = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(MasterKey::load_or_create(&path).unwrap().0, made.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
