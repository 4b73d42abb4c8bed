//! First start of an empty store: make sure an operator key exists.

use bulkhead_core::OperatorCtx;
use bulkhead_core::keys::{self, KeyKind};
use bulkhead_store::DynStore;

/// If the store has no live operator key, installs `configured` (from
/// `BULKHEAD_OPERATOR_KEY`) or a fresh one. Returns the secret only when it
/// was generated here, so the caller can print it once.
pub async fn ensure_operator_key(
    store: &DynStore,
    configured: Option<&str>,
) -> bulkhead_core::Result<Option<String>> {
    let op = OperatorCtx::local_cli();
    if let Some(secret) = configured {
        let key = keys::import(secret, KeyKind::Operator)?;
        // Installing the configured key is idempotent across restarts.
        if store.lookup_key(&key.prefix).await?.is_none() {
            store
                .create_operator_key(&op, "configured operator key", &key, None)
                .await?;
        }
        return Ok(None);
    }
    if store.has_operator_key(&op).await? {
        return Ok(None);
    }
    let key = keys::generate(KeyKind::Operator);
    store
        .create_operator_key(&op, "initial operator key", &key, None)
        .await?;
    Ok(Some(key.secret))
}
