//! Cells: other Bulkhead deployments that serve this control plane's
//! `dedicated` tenants. The registry (`/v1/cells`, operator only), the
//! client the control plane talks to its cells with, and the endpoints a
//! cell offers its control plane: mirroring key records
//! (`PUT /v1/tenants/{id}/key-records`), the master key check at
//! registration (`POST /v1/master-key/check`), and moves (below).
//!
//! A dedicated tenant's lifecycle follows it: deleting it deletes it in its
//! cell first (a cell that does not answer refuses the delete, so the
//! control plane never forgets data that still exists); suspending or
//! resuming it is mirrored to the cell afterwards (a cell that does not
//! answer is logged: the control plane refuses a suspended tenant's keys
//! anyway, and repeating the call mirrors it again; so does the proxy when
//! the cell refuses the tenant as suspended). The operator's platform views
//! ask the cells for their placed tenants' rows
//! ([`Cells::ask_placed_cells`]).
//!
//! How a forwarded request is authenticated: keys stay authoritative on the
//! control plane. It mirrors each dedicated tenant's key records — id,
//! name, prefix, SHA-256, scope, expiry, revocation; never a secret — to
//! the cell, after every key change and when the tenant is moved there. A
//! tenant's own request is checked here, then forwarded with its
//! `Authorization` header verbatim, and the cell checks the key again
//! against its mirror and enforces the scope itself. An operator's request
//! for a dedicated tenant is forwarded with the cell's operator key (the
//! credential registered with the cell) instead of the operator's own.
//!
//! Invariants: a cell's credential is sealed with the master key (bound to
//! the cell's name) before it is stored, is opened only to be put into an
//! outgoing request, and is in no response, log line or row in plaintext.
//! Registration, removal and key mirroring are audited (platform chain, and
//! the tenant's chain on the cell).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bulkhead_audit::{AuditEvent, action};
use bulkhead_core::keys::{self, KeyKind};
use bulkhead_core::tenancy::{Scope, TenantStatus};
use bulkhead_core::{Code, Error, KeyId, OperatorCtx, TenantCtx};
use bulkhead_store::{Cell, DynStore, KeyRecord, NewCell, SealedCredential};
use bulkhead_vault::{Secret, Vault};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use crate::AppState;
use crate::api::{Created, List};
use crate::auth::Operator;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};

/// How long an operator call to a cell (registration probe, key mirror,
/// checksums) may take in all.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The control plane's side of its cells: one HTTP client (pooled
/// connections, connect timeout, no redirects, no proxies from the
/// environment, no decompression: bytes pass through as the cell sent them).
#[derive(Clone)]
pub struct Cells {
    http: reqwest::Client,
    store: DynStore,
    vault: Vault,
}

impl Cells {
    pub fn new(store: DynStore, vault: Vault, connect_timeout: Duration, read_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .build()
            .expect("the TLS backend initializes");
        Self { http, store, vault }
    }

    /// As `bulkhead cell …` needs it: over `store`, with the configured
    /// master key and timeouts.
    pub fn from_config(config: &bulkhead_core::config::Config, store: DynStore) -> Result<Self, Error> {
        let vault = Vault::new(store.clone(), crate::bootstrap::master_key(config)?);
        let s = &config.server;
        Ok(Self::new(
            store,
            vault,
            Duration::from_millis(s.cell_connect_timeout_ms),
            Duration::from_secs(s.cell_read_timeout_secs),
        ))
    }

    /// The client that forwards tenants' requests.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The cell's operator key, for an outgoing request's header only.
    pub(crate) fn credential(&self, cell: &Cell) -> Result<Secret, Error> {
        self.vault.open_platform(&seal_label(&cell.name), &cell.credential.ciphertext, &cell.credential.nonce)
    }

    /// Registers a cell after checking that it answers, accepts the
    /// operator key and runs with this master key; the key is sealed
    /// before it is stored.
    pub async fn register(
        &self,
        op: &OperatorCtx,
        name: &str,
        base_url: &str,
        operator_key: &str,
    ) -> Result<Cell, Error> {
        let parsed = keys::parse(operator_key.trim())
            .ok()
            .filter(|p| p.kind == KeyKind::Operator)
            .ok_or_else(|| Error::invalid("operator_key must be an operator key of the cell (bh_op_…)"))?;
        let prefix = parsed.prefix.to_owned();
        let base_url = bulkhead_store::cells::normalize_base_url(base_url)?;
        bulkhead_store::cells::validate_cell_name(name)?;
        let (ciphertext, nonce) = self.vault.seal_platform(&seal_label(name), operator_key.trim());
        let new = NewCell {
            name: name.to_owned(),
            base_url,
            credential: SealedCredential { ciphertext, nonce },
            credential_prefix: prefix,
        };
        // Probe before storing: a cell that does not take the key is refused.
        let probe = Cell {
            id: uuid::Uuid::nil(),
            name: new.name.clone(),
            base_url: new.base_url.clone(),
            credential: new.credential.clone(),
            credential_prefix: new.credential_prefix.clone(),
            created_at: OffsetDateTime::now_utc(),
            tenants: 0,
        };
        let (status, _) = self.call(&probe, reqwest::Method::GET, "/v1/operator-keys?limit=1", None).await?;
        if status == 401 || status == 403 {
            return Err(Error::invalid(format!(
                "cell {name:?} refused the operator key (HTTP {status}); give an operator key of that cell"
            )));
        }
        if status != 200 {
            return Err(unavailable(name, format!("the probe answered HTTP {status}")));
        }
        self.check_master_key(&probe).await?;
        Ok(self.store.create_cell(op, new).await?)
    }

    /// Checks that the cell runs with this master key (sealed secrets must
    /// open there): a random challenge sealed here must open there. The
    /// cell answers the challenge's SHA-256; the key never travels.
    async fn check_master_key(&self, cell: &Cell) -> Result<(), Error> {
        let challenge = uuid::Uuid::new_v4().simple().to_string();
        let (ciphertext, nonce) = self.vault.seal_platform(MASTER_KEY_CHECK_LABEL, &challenge);
        let body = serde_json::json!({"ciphertext": B64.encode(ciphertext), "nonce": B64.encode(nonce)});
        let (status, answer) =
            self.call(cell, reqwest::Method::POST, "/v1/master-key/check", Some(&body)).await?;
        let expected = hex(&keys::hash_key(&challenge));
        match status {
            200 if answer["sha256"].as_str() == Some(expected.as_str()) => Ok(()),
            200 | 400 => Err(Error::invalid(format!(
                "cell {:?} runs with another master key; start it with the control plane's \
                 BULKHEAD_MASTER_KEY (sealed secrets must open there)",
                cell.name
            ))),
            _ => Err(unavailable(&cell.name, format!("the master key check answered HTTP {status}"))),
        }
    }

    /// On a cell: opens its control plane's challenge (see
    /// [`Cells::check_master_key`]) and gives its SHA-256, hex.
    fn answer_master_key_check(&self, ciphertext: &str, nonce: &str) -> Result<String, Error> {
        let mismatch = || {
            Error::invalid(
                "this deployment's master key does not open the challenge: it runs with another master key",
            )
        };
        let ciphertext = B64.decode(ciphertext).map_err(|_| mismatch())?;
        let nonce = B64.decode(nonce).map_err(|_| mismatch())?;
        let challenge =
            self.vault.open_platform(MASTER_KEY_CHECK_LABEL, &ciphertext, &nonce).map_err(|_| mismatch())?;
        Ok(hex(&keys::hash_key(challenge.expose())))
    }

    /// Deletes a tenant in its cell, if it is placed in one; `Some(cell)`
    /// when it was. A tenant the cell no longer has counts as deleted there
    /// (a delete whose local half failed may be repeated). A cell that does
    /// not answer is `cell_unavailable`: the caller then keeps its record.
    pub async fn delete_in_cell(&self, op: &OperatorCtx, id: TenantId) -> Result<Option<String>, Error> {
        let Some(cell) = self.store.tenant_cell(&op.act_for(id)).await? else { return Ok(None) };
        let path = format!("/v1/tenants/{id}");
        let (status, body) = self.bulk_call(&cell, reqwest::Method::DELETE, &path, None).await?;
        if status != 204 && status != 404 {
            let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let code = answer["error"]["code"].as_str().unwrap_or("-");
            return Err(unavailable(&cell.name, format!("the delete answered HTTP {status} ({code})")));
        }
        tracing::info!(tenant = %id, cell = %cell.name, "tenant deleted in its cell");
        Ok(Some(cell.name))
    }

    /// Gives a tenant placed in a cell the same status there, so the
    /// cell's own operator sees it (the control plane refuses a suspended
    /// tenant's keys whatever the cell says). Nothing for a local tenant.
    pub async fn mirror_status(
        &self,
        op: &OperatorCtx,
        id: TenantId,
        status: TenantStatus,
    ) -> Result<(), Error> {
        let Some(cell) = self.store.tenant_cell(&op.act_for(id)).await? else { return Ok(()) };
        let verb = match status {
            TenantStatus::Suspended => "suspend",
            TenantStatus::Active => "resume",
        };
        let (answered, answer) =
            self.call(&cell, reqwest::Method::POST, &format!("/v1/tenants/{id}/{verb}"), None).await?;
        if answered != 200 {
            let code = answer["error"]["code"].as_str().unwrap_or("-");
            return Err(unavailable(&cell.name, format!("the {verb} answered HTTP {answered} ({code})")));
        }
        tracing::info!(tenant = %id, cell = %cell.name, status = status.as_str(), "tenant status mirrored");
        Ok(())
    }

    /// An operator `GET path_and_query` to every cell that holds placed
    /// tenants, for the platform views (`/v1/usage`, `/v1/overview`): each
    /// answer with the tenants placed in that cell (the only rows of it a
    /// view may show: a cell can serve other tenants too), and the names of
    /// the cells that did not answer 200 — a view shows what answered and
    /// names the rest, rather than failing whole.
    pub(crate) async fn ask_placed_cells(
        &self,
        op: &OperatorCtx,
        path_and_query: &str,
    ) -> Result<CellAnswers, Error> {
        let mut placed: std::collections::BTreeMap<String, std::collections::HashSet<TenantId>> =
            std::collections::BTreeMap::new();
        for (tenant, cell) in self.store.placements(op).await? {
            placed.entry(cell).or_default().insert(tenant);
        }
        let mut out = CellAnswers::default();
        if placed.is_empty() {
            return Ok(out);
        }
        let cells = self.store.list_cells(op).await?;
        let calls = cells.into_iter().filter_map(|cell| {
            let tenants = placed.remove(&cell.name)?;
            Some(async move {
                let answer = self.call(&cell, reqwest::Method::GET, path_and_query, None).await;
                (cell.name, tenants, answer)
            })
        });
        for (name, tenants, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok((200, body)) => out.answers.push((tenants, body)),
                Ok((status, _)) => {
                    tracing::warn!(cell = %name, status, path = path_and_query, "cell left out of a platform view");
                    out.missing.push(name);
                }
                // `unavailable` has logged it.
                Err(_) => out.missing.push(name),
            }
        }
        out.missing.sort();
        Ok(out)
    }

    /// An operator call to a cell, JSON both ways, with the cell's key.
    pub async fn call(
        &self,
        cell: &Cell,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Error> {
        let credential = self.credential(cell)?;
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", cell.base_url))
            .bearer_auth(credential.expose())
            .timeout(CALL_TIMEOUT);
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.map_err(|e| unavailable(&cell.name, e))?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.map_err(|e| unavailable(&cell.name, e))?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Sends the tenant's key records (hashes, never secrets) to its cell,
    /// which then authenticates the tenant's keys itself.
    pub async fn mirror_keys(&self, ctx: &TenantCtx, cell: &Cell) -> Result<(), Error> {
        let records = self.store.key_records(ctx).await?;
        let body = serde_json::json!({
            "keys": records.iter().map(KeyRecordBody::from).collect::<Vec<_>>(),
        });
        let path = format!("/v1/tenants/{}/key-records", ctx.tenant_id());
        let (status, answer) = self.call(cell, reqwest::Method::PUT, &path, Some(&body)).await?;
        if status != 204 {
            let code = answer["error"]["code"].as_str().unwrap_or("-");
            return Err(unavailable(&cell.name, format!("key mirror answered HTTP {status} ({code})")));
        }
        tracing::info!(cell = %cell.name, tenant = %ctx.tenant_id(), keys = records.len(), "key records mirrored");
        Ok(())
    }
}

/// What the cells holding placed tenants answered (see
/// [`Cells::ask_placed_cells`]).
#[derive(Debug, Default)]
pub(crate) struct CellAnswers {
    /// Per cell that answered: its placed tenants and its answer.
    pub answers: Vec<(std::collections::HashSet<TenantId>, Value)>,
    /// Cells that did not answer, by name.
    pub missing: Vec<String>,
}

/// Associated data the credential is sealed under.
fn seal_label(cell: &str) -> String {
    format!("cell:{cell}")
}

/// Associated data of the master key check's challenge. Nothing else is
/// sealed under it, so a cell's answer opens nothing but challenges.
const MASTER_KEY_CHECK_LABEL: &str = "master-key-check";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `cell_unavailable`: the message names the cell, the cause goes to the log.
pub(crate) fn unavailable(cell: &str, cause: impl std::fmt::Display) -> Error {
    tracing::warn!(cell, %cause, "cell did not answer");
    Error::new(
        Code::CellUnavailable,
        format!("the tenant's cell {cell:?} did not answer; its data is served only there — retry later"),
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CellView {
    pub name: String,
    pub base_url: String,
    /// The visible start of the cell's operator key the control plane uses;
    /// the key itself is sealed and never shown.
    pub credential_prefix: String,
    /// Tenants placed in this cell.
    pub tenants: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<Cell> for CellView {
    fn from(c: Cell) -> Self {
        Self {
            name: c.name,
            base_url: c.base_url,
            credential_prefix: c.credential_prefix,
            tenants: c.tenants,
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCell {
    /// 2–63 lowercase letters, digits or `-`; unique.
    pub name: String,
    /// Where the cell's API answers, e.g. `http://10.0.3.7:8080`.
    pub base_url: String,
    /// An operator key of the cell. Sealed at once; never shown again.
    pub operator_key: String,
}

/// A tenant key as a cell mirrors it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRecordBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: KeyId,
    pub name: String,
    pub prefix: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    pub scope: Scope,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

impl From<&KeyRecord> for KeyRecordBody {
    fn from(r: &KeyRecord) -> Self {
        Self {
            id: r.id,
            name: r.name.clone(),
            prefix: r.prefix.clone(),
            sha256: r.hash.iter().map(|b| format!("{b:02x}")).collect(),
            scope: r.scope,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        }
    }
}

impl KeyRecordBody {
    fn into_record(self) -> ApiResult<KeyRecord> {
        let hash = (self.sha256.len() == 64)
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(&self.sha256[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
            .ok_or_else(|| ApiError::new(Code::InvalidRequest, "sha256 must be 64 hex digits"))?;
        Ok(KeyRecord {
            id: self.id,
            name: self.name,
            prefix: self.prefix,
            hash,
            scope: self.scope,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRecords {
    /// Every key of the tenant (revoked ones included): created or updated.
    pub keys: Vec<KeyRecordBody>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_cell, list_cells))
        .routes(routes!(get_cell, delete_cell))
        .routes(routes!(put_key_records))
        .routes(routes!(check_master_key))
        .routes(routes!(import_tenant).layer(axum::extract::DefaultBodyLimit::max(MAX_IMPORT_BYTES)))
        .routes(routes!(tenant_checksums))
        .routes(routes!(export_tenant, release_export))
}

/// Register a cell (operator): another Bulkhead deployment that will serve
/// dedicated tenants. The cell must answer and accept the operator key.
#[utoipa::path(post, path = "/v1/cells", tag = "cells", security(("bearer" = [])),
    request_body = CreateCell,
    responses((status = 201, body = CellView), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
async fn create_cell(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(body): ApiJson<CreateCell>,
) -> ApiResult<Created<CellView>> {
    let cell = state.cells.register(&op, &body.name, &body.base_url, &body.operator_key).await?;
    tracing::info!(cell = %cell.name, url = %cell.base_url, "cell registered");
    state.audit.record_platform(&op, cell_event(action::CELL_ADDED, &cell)).await;
    Ok((StatusCode::CREATED, Json(cell.into())))
}

/// List cells.
#[utoipa::path(get, path = "/v1/cells", tag = "cells", security(("bearer" = [])),
    responses((status = 200, body = List<CellView>), (status = 403, body = ErrorBody)))]
async fn list_cells(
    State(state): State<AppState>,
    Operator(op): Operator,
) -> ApiResult<Json<List<CellView>>> {
    let cells = state.store.list_cells(&op).await?;
    Ok(Json(List {
        data: cells.into_iter().map(CellView::from).collect(),
        has_more: false,
        next_after: None,
    }))
}

/// Show a cell.
#[utoipa::path(get, path = "/v1/cells/{name}", tag = "cells", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = CellView), (status = 404, body = ErrorBody)))]
async fn get_cell(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<CellView>> {
    Ok(Json(state.store.get_cell(&op, &name).await?.into()))
}

/// Remove a cell; refused while tenants are placed in it.
#[utoipa::path(delete, path = "/v1/cells/{name}", tag = "cells", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_cell(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let cell = state.store.get_cell(&op, &name).await?;
    state.store.delete_cell(&op, &name).await?;
    tracing::info!(cell = %name, "cell removed");
    state.audit.record_platform(&op, cell_event(action::CELL_REMOVED, &cell)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// On a cell: take the control plane's key records of a tenant it serves
/// (operator). The tenant's keys then authenticate here too; revocations
/// and expiries follow the control plane's.
#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/key-records", tag = "cells", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)), request_body = KeyRecords,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn put_key_records(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<KeyRecords>,
) -> ApiResult<StatusCode> {
    let ctx = crate::api::keys::act_for(&state, &op, &tenant).await?;
    let records = body.keys.into_iter().map(KeyRecordBody::into_record).collect::<ApiResult<Vec<_>>>()?;
    let before: std::collections::HashMap<KeyId, bool> =
        state.store.key_records(&ctx).await?.into_iter().map(|r| (r.id, r.revoked_at.is_some())).collect();
    state.store.put_key_records(&ctx, &records).await?;
    // The tenant's chain here records each change as if made here, marked
    // as mirrored (the control plane's copy of its chain does not travel).
    for r in &records {
        let name = match before.get(&r.id) {
            None => action::KEY_CREATED,
            Some(false) if r.revoked_at.is_some() => action::KEY_REVOKED,
            _ => continue,
        };
        let event = AuditEvent::new(name, format!("key:{}", r.id)).details(serde_json::json!({
            "name": r.name, "prefix": r.prefix, "scope": r.scope.as_str(), "mirrored": true,
        }));
        state.audit.record(&ctx, event).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MasterKeyChallenge {
    /// A random challenge sealed with the control plane's master key, base64.
    pub ciphertext: String,
    /// Its nonce, base64.
    pub nonce: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MasterKeyProof {
    /// SHA-256 (hex) of the opened challenge.
    pub sha256: String,
}

/// On a cell: prove to a registering control plane that this deployment
/// runs with its master key, by opening a challenge it sealed (operator).
/// 400 `invalid_request` when the challenge does not open here.
#[utoipa::path(post, path = "/v1/master-key/check", tag = "cells", security(("bearer" = [])),
    request_body = MasterKeyChallenge,
    responses((status = 200, body = MasterKeyProof), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn check_master_key(
    State(state): State<AppState>,
    Operator(_op): Operator,
    ApiJson(body): ApiJson<MasterKeyChallenge>,
) -> ApiResult<Json<MasterKeyProof>> {
    let sha256 = state.cells.answer_master_key_check(&body.ciphertext, &body.nonce)?;
    Ok(Json(MasterKeyProof { sha256 }))
}

/// The audit event of a registry change: names, URL and key prefix, never the key.
pub fn cell_event(name: &str, cell: &Cell) -> AuditEvent {
    AuditEvent::new(name, format!("cell:{}", cell.name)).details(serde_json::json!({
        "name": cell.name, "base_url": cell.base_url, "credential_prefix": cell.credential_prefix,
    }))
}

// ---------------------------------------------------------------------------
// Moves into a cell and back.
//
// Into a cell (`shared`/`isolated` → `dedicated`): mark the tenant moving
// here (every process holds its calls, see `bulkhead_store::routed`), wait
// two route TTLs (in-flight calls finish), export, import into the cell
// (`POST /v1/tenants/import` there), compare the cell's counts and
// checksums per table with the dump's, checksum the source again (a late
// write aborts), place the tenant in the cell (tier and route in one
// transaction), clear the marker, purge the local copy (the control row and
// keys stay), mirror the keys. The pause — the tenant's calls held — lasts
// from the marker to the switch; held calls then fail with `wrong_cell`
// (421) and a retry is proxied.
//
// Back (`dedicated` → `shared`): mark the tenant moving here (the proxy holds
// its requests too), have the cell hold and export it (`POST
// /v1/tenants/{id}/export` there: the cell marks it moving, waits, dumps),
// purge what the control store still holds of it, import the dump (keys
// left out: the control plane's are authoritative), place it here, verify
// the local checksums against the dump's, clear the marker, and delete the
// tenant from the cell. Any failure before the switch puts everything back:
// the local copy is purged, the cell's hold released, the marker cleared.
// ---------------------------------------------------------------------------

use bulkhead_core::{TenantId, Tier};
use bulkhead_store::{MoveReport, Placement, TableSum, TenantDump};

/// How long the import or export of a whole tenant may take.
const BULK_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest dump a cell accepts on import.
pub const MAX_IMPORT_BYTES: usize = 1024 * 1024 * 1024;

impl Cells {
    /// An operator call whose body may be a whole tenant.
    async fn bulk_call(
        &self,
        cell: &Cell,
        method: reqwest::Method,
        path: &str,
        body: Option<&TenantDump>,
    ) -> Result<(u16, axum::body::Bytes), Error> {
        let credential = self.credential(cell)?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", cell.base_url))
            .bearer_auth(credential.expose())
            .timeout(BULK_TIMEOUT);
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.map_err(|e| unavailable(&cell.name, e))?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.map_err(|e| unavailable(&cell.name, e))?;
        Ok((status, bytes))
    }
}

fn cell_refused(cell: &Cell, what: &str, status: u16, body: &[u8]) -> Error {
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = answer["error"]["code"].as_str().unwrap_or("-");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    Error::new(
        Code::Conflict,
        format!("cell {:?} refused {what} (HTTP {status}, {code}): {message}", cell.name),
    )
}

fn verify(expected: &[TableSum], got: &[TableSum], place: &str) -> Result<(), Error> {
    if got == expected {
        return Ok(());
    }
    let bad = expected
        .iter()
        .find(|s| !got.contains(s))
        .map(|s| s.table.clone())
        .unwrap_or_else(|| "the table list".into());
    Err(Error::new(
        Code::Conflict,
        format!("move verification failed ({bad} differs in {place}); the tenant stays where it was"),
    ))
}

fn without_keys(sums: Vec<TableSum>) -> Vec<TableSum> {
    sums.into_iter().filter(|s| !bulkhead_store::dump::CONTROL_TABLES.contains(&s.table.as_str())).collect()
}

/// The dedicated arm of `POST /v1/tenants/{id}/move`: into a cell (tier
/// `dedicated` with a cell), or back out of one; `None` when neither (a
/// move between local tiers, for the routing store).
pub async fn move_dispatch(
    cells: &Cells,
    audit: &bulkhead_audit::Audit,
    op: &OperatorCtx,
    id: TenantId,
    tier: Tier,
    cell: Option<&str>,
) -> Result<Option<MoveReport>, Error> {
    match (tier, cell) {
        (Tier::Dedicated, Some(cell)) => Ok(Some(move_to_cell(cells, audit, op, id, cell).await?)),
        (Tier::Dedicated, None) => Err(Error::invalid("a move to `dedicated` names the cell (`cell`)")),
        (_, Some(_)) => Err(Error::invalid("`cell` goes with tier `dedicated` only")),
        (to, None) => {
            if cells.store.tenant_cell(&op.act_for(id)).await?.is_none() {
                return Ok(None);
            }
            Ok(Some(move_from_cell(cells, audit, op, id, to).await?))
        }
    }
}

/// Moves a tenant's data into a registered cell and routes it there.
pub async fn move_to_cell(
    cells: &Cells,
    audit: &bulkhead_audit::Audit,
    op: &OperatorCtx,
    id: TenantId,
    cell_name: &str,
) -> Result<MoveReport, Error> {
    let started = std::time::Instant::now();
    let tenant = cells.store.get_tenant(op, id).await?;
    let cell = cells.store.get_cell(op, cell_name).await?;
    if let Some(current) = cells.store.tenant_cell(&op.act_for(id)).await? {
        if current.name == cell.name {
            return Ok(MoveReport {
                tenant_id: id,
                from: Tier::Dedicated,
                to: Tier::Dedicated,
                tables: Vec::new(),
                pause_ms: 0,
                total_ms: 0,
                source_purged: true,
            });
        }
        return Err(Error::new(
            Code::Conflict,
            format!("the tenant is in cell {:?}; move it back (--tier shared) first", current.name),
        ));
    }
    if tenant.tier != Tier::Shared {
        // The copy reads the source while the tenant's calls are held,
        // which only the control store allows.
        return Err(Error::invalid(format!(
            "a tenant moves into a cell from shared; it is {} (move it to shared first)",
            tenant.tier
        )));
    }
    cells.store.mark_moving(op, id, Some(Tier::Dedicated)).await?;
    let result = copy_to_cell(cells, op, id, &cell).await;
    let tables = match result {
        Ok((tables, pause)) => (tables, pause),
        Err(e) => {
            if let Err(clear) = cells.store.mark_moving(op, id, None).await {
                tracing::error!(tenant = %id, error = %clear, "could not clear the move marker");
            }
            tracing::warn!(tenant = %id, cell = %cell.name, error = %e, "move to cell aborted; the source is unchanged");
            return Err(e);
        }
    };
    // Switched: the local copy goes (control row and keys stay).
    let purged = cells.store.purge_tenant_data(op, id).await;
    if let Err(e) = &purged {
        tracing::error!(tenant = %id, error = %e, "moved to the cell, but the local copy could not be removed");
    }
    // Keys made during the move (keys never wait for a move).
    if let Err(e) = cells.mirror_keys(&op.act_for(id), &cell).await {
        tracing::warn!(tenant = %id, error = %e, "moved, but the key records could not be mirrored");
    }
    let report = MoveReport {
        tenant_id: id,
        from: tenant.tier,
        to: Tier::Dedicated,
        tables: tables.0,
        pause_ms: tables.1,
        total_ms: started.elapsed().as_millis() as u64,
        source_purged: purged.is_ok(),
    };
    audit_move(audit, op, &report, &cell).await;
    tracing::info!(tenant = %id, cell = %cell.name, pause_ms = report.pause_ms, total_ms = report.total_ms,
        "tenant moved into its cell");
    Ok(report)
}

/// The copy into the cell, its verification and the switch. On error the
/// cell's copy is removed; the caller clears the marker.
async fn copy_to_cell(
    cells: &Cells,
    op: &OperatorCtx,
    id: TenantId,
    cell: &Cell,
) -> Result<(Vec<TableSum>, u64), Error> {
    // Every process re-reads the route within a TTL; a call that read it
    // just before the marker has had another TTL to finish.
    tokio::time::sleep(bulkhead_store::routed::ROUTE_TTL * 2).await;
    let paused = std::time::Instant::now();
    let dump = cells.store.export_tenant(op, id).await?;
    let expected = bulkhead_store::dump::dump_sums(&dump);
    let (status, body) =
        cells.bulk_call(cell, reqwest::Method::POST, "/v1/tenants/import", Some(&dump)).await?;
    if status != 201 {
        return Err(cell_refused(cell, "the import", status, &body));
    }
    let checked = async {
        let path = format!("/v1/tenants/{id}/checksums");
        let (status, body) = cells.bulk_call(cell, reqwest::Method::GET, &path, None).await?;
        if status != 200 {
            return Err(cell_refused(cell, "the checksums", status, &body));
        }
        let got: Checksums = serde_json::from_slice(&body).map_err(Error::internal)?;
        verify(&expected, &got.tables, "the cell")?;
        let again = cells.store.tenant_checksums(op, id).await?;
        if again != expected {
            return Err(Error::new(
                Code::Conflict,
                "the source changed during the copy (a write from another process); the tenant stays where it was",
            ));
        }
        cells.store.place_tenant(op, id, Placement::Cell(cell.name.clone())).await?;
        cells.store.mark_moving(op, id, None).await?;
        Ok(())
    }
    .await;
    if let Err(e) = checked {
        let path = format!("/v1/tenants/{id}");
        if let Err(undo) = cells.bulk_call(cell, reqwest::Method::DELETE, &path, None).await {
            tracing::error!(tenant = %id, error = %undo, "could not remove the cell's copy of an aborted move");
        }
        return Err(e);
    }
    Ok((expected, paused.elapsed().as_millis() as u64))
}

/// Brings a tenant back from its cell as a `shared` tenant.
pub async fn move_from_cell(
    cells: &Cells,
    audit: &bulkhead_audit::Audit,
    op: &OperatorCtx,
    id: TenantId,
    to: Tier,
) -> Result<MoveReport, Error> {
    let started = std::time::Instant::now();
    if to != Tier::Shared {
        return Err(Error::invalid(
            "a tenant comes back from its cell as shared; move it to isolated from there",
        ));
    }
    cells.store.get_tenant(op, id).await?;
    let cell = cells
        .store
        .tenant_cell(&op.act_for(id))
        .await?
        .ok_or_else(|| Error::invalid("the tenant is not in a cell"))?;
    cells.store.mark_moving(op, id, Some(to)).await?;
    // Requests already forwarded finish at the cell, which holds the tenant
    // from the export on.
    tokio::time::sleep(bulkhead_store::routed::ROUTE_TTL * 2).await;
    let paused = std::time::Instant::now();
    let copied = copy_from_cell(cells, op, id, &cell, to).await;
    let tables = match copied {
        Ok(tables) => tables,
        Err(e) => {
            // Undo: the tenant stays in its cell.
            let _ = cells.store.place_tenant(op, id, Placement::Cell(cell.name.clone())).await;
            if let Err(purge) = cells.store.purge_tenant_data(op, id).await {
                tracing::error!(tenant = %id, error = %purge, "could not remove the partial local copy");
            }
            let path = format!("/v1/tenants/{id}/export");
            let _ = cells.bulk_call(&cell, reqwest::Method::DELETE, &path, None).await;
            if let Err(clear) = cells.store.mark_moving(op, id, None).await {
                tracing::error!(tenant = %id, error = %clear, "could not clear the move marker");
            }
            tracing::warn!(tenant = %id, cell = %cell.name, error = %e, "move from cell aborted; the tenant stays in its cell");
            return Err(e);
        }
    };
    cells.store.mark_moving(op, id, None).await?;
    let pause_ms = paused.elapsed().as_millis() as u64;
    let path = format!("/v1/tenants/{id}");
    let removed = match cells.bulk_call(&cell, reqwest::Method::DELETE, &path, None).await {
        Ok((204, _)) => true,
        Ok((status, _)) => {
            tracing::error!(tenant = %id, cell = %cell.name, status, "moved back, but the cell kept its copy");
            false
        }
        Err(e) => {
            tracing::error!(tenant = %id, cell = %cell.name, error = %e, "moved back, but the cell kept its copy");
            false
        }
    };
    let report = MoveReport {
        tenant_id: id,
        from: Tier::Dedicated,
        to,
        tables,
        pause_ms,
        total_ms: started.elapsed().as_millis() as u64,
        source_purged: removed,
    };
    audit_move(audit, op, &report, &cell).await;
    tracing::info!(tenant = %id, cell = %cell.name, pause_ms, total_ms = report.total_ms, "tenant moved back from its cell");
    Ok(report)
}

async fn copy_from_cell(
    cells: &Cells,
    op: &OperatorCtx,
    id: TenantId,
    cell: &Cell,
    to: Tier,
) -> Result<Vec<TableSum>, Error> {
    let path = format!("/v1/tenants/{id}/export");
    let (status, body) = cells.bulk_call(cell, reqwest::Method::POST, &path, None).await?;
    if status != 200 {
        return Err(cell_refused(cell, "the export", status, &body));
    }
    let mut dump: TenantDump = serde_json::from_slice(&body).map_err(Error::internal)?;
    if dump.tenant.id != id {
        return Err(Error::internal("the cell exported another tenant"));
    }
    // Keys are the control plane's; what the control store still holds of
    // the tenant besides (its chain's entries from while it was away, all
    // recorded in the cell's chain as well) makes way for the cell's copy.
    dump.tables.retain(|t| !bulkhead_store::dump::CONTROL_TABLES.contains(&t.table.as_str()));
    dump.tenant.tier = to;
    let expected = bulkhead_store::dump::dump_sums(&dump);
    cells.store.purge_tenant_data(op, id).await?;
    cells.store.import_tenant(op, &dump).await?;
    cells.store.place_tenant(op, id, Placement::Local(to)).await?;
    let got = without_keys(cells.store.tenant_checksums(op, id).await?);
    verify(&expected, &got, "the control plane")?;
    Ok(expected)
}

async fn audit_move(audit: &bulkhead_audit::Audit, op: &OperatorCtx, report: &MoveReport, cell: &Cell) {
    let tables: serde_json::Map<String, Value> =
        report.tables.iter().map(|t| (t.table.clone(), Value::from(t.rows))).collect();
    let event = AuditEvent::new(action::TENANT_MOVED, format!("tenant:{}", report.tenant_id)).details(
        serde_json::json!({
            "from": report.from.as_str(), "to": report.to.as_str(), "cell": cell.name,
            "rows": tables, "pause_ms": report.pause_ms,
        }),
    );
    audit.record_platform(op, event).await;
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Checksums {
    /// Per tenant-owned table: rows and SHA-256, in dump order.
    #[schema(value_type = Vec<Object>)]
    pub tables: Vec<TableSum>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    #[schema(value_type = Vec<Object>)]
    pub tables: Vec<TableSum>,
}

/// On a cell: create a tenant from its control plane's dump, same id, in
/// one transaction (operator). Refused if the tenant exists here.
#[utoipa::path(post, path = "/v1/tenants/import", tag = "cells", security(("bearer" = [])),
    request_body = Object,
    responses((status = 201, body = Imported), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn import_tenant(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(mut dump): ApiJson<TenantDump>,
) -> ApiResult<Created<Imported>> {
    let id = dump.tenant.id;
    if state.store.get_tenant(&op, id).await.is_ok() {
        return Err(ApiError::new(Code::Conflict, "this tenant exists here already"));
    }
    // Here it is local: a dedicated tenant of the control plane is shared
    // (or isolated) in its cell.
    if dump.tenant.tier == Tier::Dedicated {
        dump.tenant.tier = Tier::Shared;
    }
    state.store.import_tenant(&op, &dump).await?;
    let tables = state.store.tenant_checksums(&op, id).await?;
    let rows: u64 = tables.iter().map(|t| t.rows).sum();
    tracing::info!(tenant = %id, rows, "tenant imported from its control plane");
    let event = AuditEvent::new(action::TENANT_IMPORTED, format!("tenant:{id}"))
        .details(serde_json::json!({"name": dump.tenant.name, "direction": "in", "rows": rows}));
    // The platform chain only: an entry in the tenant's chain now would
    // make its checksums differ from the source's the mover compares with.
    state.audit.record_platform(&op, event).await;
    Ok((StatusCode::CREATED, Json(Imported { tenant_id: id, tables })))
}

/// On a cell: row counts and checksums of a tenant's tables (operator).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/checksums", tag = "cells", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)),
    responses((status = 200, body = Checksums), (status = 404, body = ErrorBody)))]
async fn tenant_checksums(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<Checksums>> {
    let id: TenantId = crate::api::parse_id(&tenant, "tenant")?;
    state.store.get_tenant(&op, id).await?;
    Ok(Json(Checksums { tables: state.store.tenant_checksums(&op, id).await? }))
}

/// On a cell: hold a tenant (its calls wait) and export it, for its
/// control plane to take it back (operator). The hold lasts until the
/// tenant is deleted here or `DELETE` on this path releases it.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/export", tag = "cells", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn export_tenant(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<Json<TenantDump>> {
    let id: TenantId = crate::api::parse_id(&tenant, "tenant")?;
    state.store.get_tenant(&op, id).await?;
    state.store.mark_moving(&op, id, Some(Tier::Dedicated)).await?;
    tokio::time::sleep(bulkhead_store::routed::ROUTE_TTL * 2).await;
    match state.store.export_tenant(&op, id).await {
        Ok(dump) => {
            let rows: usize = dump.tables.iter().map(|t| t.rows.len()).sum();
            let event = AuditEvent::new(action::TENANT_IMPORTED, format!("tenant:{id}"))
                .details(serde_json::json!({"name": dump.tenant.name, "direction": "out", "rows": rows}));
            state.audit.record_platform(&op, event).await;
            Ok(Json(dump))
        }
        Err(e) => {
            let _ = state.store.mark_moving(&op, id, None).await;
            Err(e.into())
        }
    }
}

/// On a cell: release the hold of an export whose move was abandoned.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/export", tag = "cells", security(("bearer" = [])),
    params(("tenant_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn release_export(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(tenant): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: TenantId = crate::api::parse_id(&tenant, "tenant")?;
    state.store.mark_moving(&op, id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// A placed tenant's keys and control row, served by the control plane.
//
// Keys are the control plane's records, but the usual handlers charge the
// tenant's request rate and write its audit chain — both of which live in
// its cell now. These handlers do neither here: the tenant's own calls are
// rate-limited where its data is, and each key change is mirrored to the
// cell, whose `key-records` endpoint writes `key.created`/`key.revoked` into
// the tenant's chain there.
// ---------------------------------------------------------------------------

use std::collections::HashMap;

use axum::extract::{Path, Request};
use axum::response::{IntoResponse as _, Response};
use bulkhead_store::ApiKey;
use tower::ServiceExt as _;

use crate::api::keys::{CreateKey, CreatedKey, KeyView};
use crate::api::tenants::TenantView;

#[derive(Clone)]
struct Placed {
    state: AppState,
    ctx: TenantCtx,
    cell: Cell,
}

/// Serves `/v1/keys…`, `/v1/tenants/{id}/keys…` and `/v1/tenant` for a
/// tenant placed in `cell`.
pub(crate) async fn serve_control_plane(
    state: &AppState,
    ctx: TenantCtx,
    cell: Cell,
    req: Request,
) -> Response {
    use axum::routing::{delete, get};
    let placed = Placed { state: state.clone(), ctx, cell };
    let router = axum::Router::new()
        .route("/v1/keys", get(placed_list_keys).post(placed_create_key))
        .route("/v1/keys/{key_id}", get(placed_get_key).delete(placed_revoke_key))
        .route("/v1/tenants/{tenant_id}/keys", get(placed_list_keys).post(placed_create_key))
        .route("/v1/tenants/{tenant_id}/keys/{key_id}", delete(placed_revoke_key))
        .route("/v1/tenant", get(placed_own_tenant))
        .fallback(crate::api::not_found)
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        .with_state(placed);
    match router.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn key_id(params: &HashMap<String, String>) -> ApiResult<KeyId> {
    crate::api::parse_id(params.get("key_id").map(String::as_str).unwrap_or(""), "key")
}

async fn placed_own_tenant(State(p): State<Placed>) -> ApiResult<Json<TenantView>> {
    let mut view = TenantView::from(p.state.store.own_tenant(&p.ctx).await?);
    view.cell = Some(p.cell.name);
    Ok(Json(view))
}

async fn placed_list_keys(State(p): State<Placed>) -> ApiResult<Json<List<KeyView>>> {
    p.ctx.require(Scope::TenantAdmin)?;
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = p
            .state
            .store
            .list_tenant_keys(&p.ctx, bulkhead_core::page::PageReq::new(Some(500), after)?)
            .await?;
        after = page.items.last().map(|k: &ApiKey| k.id.as_uuid());
        let more = page.has_more;
        all.extend(page.items.into_iter().map(KeyView::from));
        if !more {
            break;
        }
    }
    Ok(Json(List { data: all, has_more: false, next_after: None }))
}

async fn placed_get_key(
    State(p): State<Placed>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<KeyView>> {
    p.ctx.require(Scope::TenantAdmin)?;
    Ok(Json(p.state.store.get_tenant_key(&p.ctx, key_id(&params)?).await?.into()))
}

async fn placed_create_key(
    State(p): State<Placed>,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<Response> {
    p.ctx.require(Scope::TenantAdmin)?;
    if body.expires_at.is_some_and(|at| at <= OffsetDateTime::now_utc()) {
        return Err(ApiError::new(Code::InvalidRequest, "expires_at must be in the future"));
    }
    let scope = body.scope.unwrap_or(Scope::TenantApp);
    let new = keys::generate(KeyKind::Tenant);
    let key = p.state.store.create_tenant_key(&p.ctx, &body.name, scope, &new, body.expires_at).await?;
    tracing::info!(key = %key.id, prefix = %key.prefix, cell = %p.cell.name, "tenant key created");
    // Mirrored before answering, so the key works at once.
    if let Err(e) = p.state.cells.mirror_keys(&p.ctx, &p.cell).await {
        tracing::warn!(cell = %p.cell.name, error = %e, "key created, but not mirrored yet");
    }
    Ok((StatusCode::CREATED, Json(CreatedKey { key: key.into(), secret: new.secret })).into_response())
}

async fn placed_revoke_key(
    State(p): State<Placed>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<KeyView>> {
    p.ctx.require(Scope::TenantAdmin)?;
    let key = p.state.store.revoke_tenant_key(&p.ctx, key_id(&params)?).await?;
    tracing::info!(key = %key.id, cell = %p.cell.name, "tenant key revoked");
    // The control plane refuses the key already; the cell learns it now.
    if let Err(e) = p.state.cells.mirror_keys(&p.ctx, &p.cell).await {
        tracing::warn!(cell = %p.cell.name, error = %e, "key revoked here, but not mirrored yet");
    }
    Ok(Json(key.into()))
}
