//! `bulkhead tenant …` and `bulkhead key …`: the operator at the console,
//! working directly on the configured store. Tenants are named by name or id.
//! Changes are audited as the HTTP API audits them, with the actor `cli`.

use anyhow::{Context as _, bail};
use bulkhead_audit::{Audit, AuditEvent, action};
use bulkhead_core::config::Config;
use bulkhead_core::keys::{self, KeyKind};
use bulkhead_core::page::{Page, PageReq};
use bulkhead_core::tenancy::{Scope, TenantStatus};
use bulkhead_core::{KeyId, OperatorCtx, TenantId, Tier};
use bulkhead_server::cells::Cells;
use bulkhead_store::{ApiKey, DynStore, NewTenant, Tenant, TenantPatch};
use clap::Subcommand;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        name: String,
        #[arg(long, default_value = "shared")]
        tier: Tier,
        /// A JSON object.
        #[arg(long)]
        metadata: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant.
    Show {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a tenant's name, tier or metadata.
    Update {
        tenant: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tier: Option<Tier>,
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Move a tenant's data to another tier, live: copied, verified (rows
    /// and checksums per table), switched; its calls wait meanwhile.
    Move {
        tenant: String,
        /// `shared` or `isolated`; or `dedicated` with `--cell`.
        #[arg(long)]
        tier: Tier,
        /// With `--tier dedicated`: the registered cell to move into
        /// (needs `--url`: the running control plane moves it).
        #[arg(long, value_name = "NAME")]
        cell: Option<String>,
        /// A running server to ask (its process holds the tenant's calls
        /// during the move); the operator key comes from
        /// BULKHEAD_OPERATOR_KEY. Without it the move runs here, on the
        /// configured store.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Suspend a tenant (its keys are refused).
    Suspend { tenant: String },
    /// Resume a suspended tenant.
    Resume { tenant: String },
    /// Delete a tenant and all of its data (a dedicated tenant's in its
    /// cell too; refused while the cell does not answer).
    Delete {
        tenant: String,
        /// Confirm: deletion cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a key; the secret is printed once.
    Create {
        /// Tenant (name or id); omit with --operator.
        #[arg(long, required_unless_present = "operator")]
        tenant: Option<String>,
        /// Create an operator key instead.
        #[arg(long, conflicts_with_all = ["tenant", "scope"])]
        operator: bool,
        #[arg(long, default_value = "cli")]
        name: String,
        #[arg(long)]
        scope: Option<Scope>,
        /// Expire after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// List keys of a tenant, or operator keys.
    List {
        #[arg(long, required_unless_present = "operator")]
        tenant: Option<String>,
        #[arg(long, conflicts_with = "tenant")]
        operator: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key.
    Revoke {
        key_id: KeyId,
        #[arg(long, required_unless_present = "operator")]
        tenant: Option<String>,
        #[arg(long, conflicts_with = "tenant")]
        operator: bool,
    },
}

pub(crate) fn fail(e: impl Into<bulkhead_core::Error>) -> anyhow::Error {
    let e = e.into();
    anyhow::anyhow!("{}: {}", e.code, e.message)
}

pub(crate) async fn open(config: &Config) -> anyhow::Result<DynStore> {
    bulkhead_store::open(&config.store).await.context("opening the store")
}

pub(crate) async fn resolve(store: &DynStore, op: &OperatorCtx, tenant: &str) -> anyhow::Result<Tenant> {
    let found = match tenant.parse::<TenantId>() {
        Ok(id) => store.get_tenant(op, id).await,
        Err(_) => store.find_tenant_by_name(op, tenant).await,
    };
    found.map_err(|_| anyhow::anyhow!("no tenant {tenant:?}"))
}

fn parse_metadata(raw: Option<&str>) -> anyhow::Result<Option<serde_json::Value>> {
    raw.map(|s| serde_json::from_str(s).context("--metadata must be a JSON object")).transpose()
}

fn ts(at: time::OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn tenant_json(t: &Tenant) -> serde_json::Value {
    json!({
        "id": t.id, "name": t.name, "tier": t.tier, "status": t.status,
        "metadata": t.metadata, "created_at": ts(t.created_at), "updated_at": ts(t.updated_at),
    })
}

fn key_json(k: &ApiKey) -> serde_json::Value {
    json!({
        "id": k.id, "tenant_id": k.tenant_id, "name": k.name, "prefix": k.prefix, "scope": k.scope,
        "created_at": ts(k.created_at), "expires_at": k.expires_at.map(ts),
        "revoked_at": k.revoked_at.map(ts), "last_used_at": k.last_used_at.map(ts),
    })
}

/// Prints rows as an aligned table.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// Every item of a paginated list.
pub(crate) async fn collect_all<T, F, Fut>(
    mut fetch: F,
    id: impl Fn(&T) -> uuid::Uuid,
) -> anyhow::Result<Vec<T>>
where
    F: FnMut(PageReq) -> Fut,
    Fut: std::future::Future<Output = bulkhead_store::Result<Page<T>>>,
{
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = fetch(PageReq::new(Some(500), after).map_err(fail)?).await.map_err(fail)?;
        after = page.items.last().map(&id);
        let more = page.has_more;
        all.extend(page.items);
        if !more {
            return Ok(all);
        }
    }
}

fn print_tenants(tenants: &[Tenant], as_json: bool) {
    if as_json {
        let list: Vec<_> = tenants.iter().map(tenant_json).collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return;
    }
    table(
        &["ID", "NAME", "TIER", "STATUS", "CREATED"],
        tenants
            .iter()
            .map(|t| {
                vec![
                    t.id.to_string(),
                    t.name.clone(),
                    t.tier.to_string(),
                    t.status.as_str().into(),
                    ts(t.created_at),
                ]
            })
            .collect(),
    );
}

/// An audit event about a tenant (its name and tier, never its metadata).
fn tenant_event(name: &str, t: &Tenant) -> AuditEvent {
    AuditEvent::new(name, format!("tenant:{}", t.id))
        .details(json!({"name": t.name, "tier": t.tier.as_str()}))
}

/// An audit event about a key: what identifies it, never its secret.
fn key_event(name: &str, k: &ApiKey) -> AuditEvent {
    AuditEvent::new(name, format!("key:{}", k.id)).details(json!({
        "name": k.name, "prefix": k.prefix, "scope": k.scope.map(|s| s.as_str()),
        "expires_at": k.expires_at.map(ts),
    }))
}

pub async fn tenant(config: &Config, cmd: TenantCmd) -> anyhow::Result<()> {
    if let TenantCmd::Move { tenant, tier, cell, url: Some(url), json } = &cmd {
        let report = move_via_api(config, url, tenant, *tier, cell.as_deref()).await?;
        print_move(&report, *json);
        return Ok(());
    }
    if let TenantCmd::Move { tier, cell, url: None, .. } = &cmd
        && (cell.is_some() || *tier == Tier::Dedicated)
    {
        bail!(
            "a move into a cell needs the running control plane: add --url http://… (and set BULKHEAD_OPERATOR_KEY)"
        );
    }
    let store = open(config).await?;
    let audit = Audit::new(store.clone());
    let op = OperatorCtx::local_cli();
    match cmd {
        TenantCmd::Create { name, tier, metadata, json } => {
            let metadata = parse_metadata(metadata.as_deref())?.unwrap_or_else(|| json!({}));
            let t = store.create_tenant(&op, NewTenant { name, tier, metadata }).await.map_err(fail)?;
            audit.record_tenant_lifecycle(&op, t.id, tenant_event(action::TENANT_CREATED, &t)).await;
            print_tenants(&[t], json);
        }
        TenantCmd::List { json } => {
            let all = collect_all(|p| store.list_tenants(&op, p), |t: &Tenant| t.id.as_uuid()).await?;
            print_tenants(&all, json);
        }
        TenantCmd::Show { tenant, json } => {
            let t = resolve(&store, &op, &tenant).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tenant_json(&t))?);
            } else {
                print_tenants(std::slice::from_ref(&t), false);
                println!("metadata: {}", t.metadata);
            }
        }
        TenantCmd::Update { tenant, name, tier, metadata } => {
            let before = resolve(&store, &op, &tenant).await?;
            let metadata = parse_metadata(metadata.as_deref())?;
            let metadata_changed = metadata.is_some();
            let patch = TenantPatch { name, tier, status: None, metadata };
            let t = store.update_tenant(&op, before.id, patch).await.map_err(fail)?;
            if t.tier != before.tier {
                let event = AuditEvent::new(action::TENANT_TIER_CHANGED, format!("tenant:{}", t.id))
                    .details(json!({"from": before.tier.as_str(), "to": t.tier.as_str()}));
                audit.record_tenant_lifecycle(&op, t.id, event).await;
            }
            if t.name != before.name || metadata_changed {
                let event =
                    AuditEvent::new(action::TENANT_UPDATED, format!("tenant:{}", t.id)).details(json!({
                        "name": t.name, "previous_name": before.name, "metadata_changed": metadata_changed,
                    }));
                audit.record_tenant_lifecycle(&op, t.id, event).await;
            }
            print_tenants(&[t], false);
        }
        TenantCmd::Move { tenant, tier, cell: _, url: _, json } => {
            let t = resolve(&store, &op, &tenant).await?;
            let result = store.move_tenant(&op, t.id, tier).await;
            bulkhead_server::api::tenants::record_move(&audit, &op, t.id, tier, &result).await;
            let report = result.map_err(fail)?;
            print_move(&serde_json::to_value(bulkhead_server::api::tenants::MoveView::from(report))?, json);
        }
        TenantCmd::Suspend { tenant } => {
            let t = resolve(&store, &op, &tenant).await?;
            let patch = TenantPatch { status: Some(TenantStatus::Suspended), ..Default::default() };
            let t = store.update_tenant(&op, t.id, patch).await.map_err(fail)?;
            audit.record_tenant_lifecycle(&op, t.id, tenant_event(action::TENANT_SUSPENDED, &t)).await;
            mirror_status(config, &store, &op, t.id, TenantStatus::Suspended).await;
            print_tenants(&[t], false);
        }
        TenantCmd::Resume { tenant } => {
            let t = resolve(&store, &op, &tenant).await?;
            let patch = TenantPatch { status: Some(TenantStatus::Active), ..Default::default() };
            let t = store.update_tenant(&op, t.id, patch).await.map_err(fail)?;
            audit.record_tenant_lifecycle(&op, t.id, tenant_event(action::TENANT_RESUMED, &t)).await;
            mirror_status(config, &store, &op, t.id, TenantStatus::Active).await;
            print_tenants(&[t], false);
        }
        TenantCmd::Delete { tenant, yes } => {
            let t = resolve(&store, &op, &tenant).await?;
            if !yes {
                bail!("deleting {} removes all of its data; add --yes to confirm", t.name);
            }
            if let Some(cells) = cells_for(config, &store, &op, t.id).await? {
                cells.delete_in_cell(&op, t.id).await.map_err(fail)?;
            }
            store.delete_tenant(&op, t.id).await.map_err(fail)?;
            // The tenant's chain went with it; the platform's keeps the record.
            audit.record_platform(&op, tenant_event(action::TENANT_DELETED, &t)).await;
            println!("deleted tenant {} ({})", t.name, t.id);
        }
    }
    Ok(())
}

/// The client to a tenant's cell when it is placed in one (its data is
/// there); `None` for a local tenant, without touching the master key.
async fn cells_for(
    config: &Config,
    store: &DynStore,
    op: &OperatorCtx,
    id: TenantId,
) -> anyhow::Result<Option<Cells>> {
    if store.tenant_cell(&op.act_for(id)).await.map_err(fail)?.is_none() {
        return Ok(None);
    }
    Ok(Some(Cells::from_config(config, store.clone()).map_err(fail)?))
}

/// Mirrors a status change to the tenant's cell, as the API does: the
/// change here stands if the cell does not answer; the operator is told.
async fn mirror_status(
    config: &Config,
    store: &DynStore,
    op: &OperatorCtx,
    id: TenantId,
    status: TenantStatus,
) {
    let mirrored = match cells_for(config, store, op, id).await {
        Ok(Some(cells)) => cells.mirror_status(op, id, status).await.map_err(fail),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = mirrored {
        eprintln!(
            "warning: status changed here but not in the tenant's cell ({e}); repeat it once the cell answers"
        );
    }
}

/// Asks a running server to move the tenant (`POST /v1/tenants/{id}/move`).
async fn move_via_api(
    config: &Config,
    url: &str,
    tenant: &str,
    tier: Tier,
    cell: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let key = config
        .auth
        .operator_key
        .as_deref()
        .context("set BULKHEAD_OPERATOR_KEY to an operator key of the server at --url")?;
    let base = url.trim_end_matches('/');
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(600)).build()?;
    let id = match tenant.parse::<TenantId>() {
        Ok(id) => id.to_string(),
        Err(_) => {
            // By name: walk the operator's tenant list.
            let mut after: Option<String> = None;
            loop {
                let cursor = after.as_deref().map(|a| format!("&after={a}")).unwrap_or_default();
                let req = http.get(format!("{base}/v1/tenants?limit=500{cursor}")).bearer_auth(key);
                let page: serde_json::Value = api_json(req.send().await?).await?;
                let items = page["data"].as_array().cloned().unwrap_or_default();
                if let Some(t) = items.iter().find(|t| t["name"] == tenant) {
                    break t["id"].as_str().unwrap_or_default().to_owned();
                }
                match page["next_after"].as_str() {
                    Some(next) if page["has_more"] == true => after = Some(next.to_owned()),
                    _ => bail!("no tenant {tenant:?} at {base}"),
                }
            }
        }
    };
    let res = http
        .post(format!("{base}/v1/tenants/{id}/move"))
        .bearer_auth(key)
        .json(&match cell {
            Some(cell) => json!({"tier": tier, "cell": cell}),
            None => json!({"tier": tier}),
        })
        .send()
        .await
        .with_context(|| format!("calling {base}"))?;
    api_json(res).await
}

/// The JSON body of a success, or the API's error as an error.
async fn api_json(res: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{} ({status}): {}",
            body["error"]["code"].as_str().unwrap_or("error"),
            body["error"]["message"].as_str().unwrap_or("")
        );
    }
    Ok(body)
}

fn print_move(report: &serde_json::Value, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(report).unwrap_or_default());
        return;
    }
    let tables = report["tables"].as_array().cloned().unwrap_or_default();
    table(
        &["TABLE", "ROWS", "SHA256"],
        tables
            .iter()
            .map(|t| {
                vec![
                    t["table"].as_str().unwrap_or_default().to_owned(),
                    t["rows"].to_string(),
                    t["sha256"].as_str().unwrap_or_default().to_owned(),
                ]
            })
            .collect(),
    );
    println!(
        "moved {} from {} to {}: verified, calls held {} ms (move took {} ms){}",
        report["tenant_id"].as_str().unwrap_or_default(),
        report["from"].as_str().unwrap_or_default(),
        report["to"].as_str().unwrap_or_default(),
        report["pause_ms"],
        report["total_ms"],
        if report["source_purged"] == false {
            "; the source copy could not be removed, see the log"
        } else {
            ""
        }
    );
}

fn print_keys(keys: &[ApiKey], as_json: bool) {
    if as_json {
        let list: Vec<_> = keys.iter().map(key_json).collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return;
    }
    table(
        &["ID", "PREFIX", "NAME", "SCOPE", "CREATED", "EXPIRES", "REVOKED"],
        keys.iter()
            .map(|k| {
                vec![
                    k.id.to_string(),
                    k.prefix.clone(),
                    k.name.clone(),
                    k.scope.map(|s| s.as_str()).unwrap_or("operator").into(),
                    ts(k.created_at),
                    k.expires_at.map(ts).unwrap_or_else(|| "-".into()),
                    k.revoked_at.map(ts).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    );
}

pub async fn key(config: &Config, cmd: KeyCmd) -> anyhow::Result<()> {
    let store = open(config).await?;
    let audit = Audit::new(store.clone());
    let op = OperatorCtx::local_cli();
    match cmd {
        KeyCmd::Create { tenant, operator, name, scope, expires_in_days, json } => {
            let expires_at =
                expires_in_days.map(|d| time::OffsetDateTime::now_utc() + time::Duration::days(d.into()));
            let (new, key) = if operator {
                let new = keys::generate(KeyKind::Operator);
                let key = store.create_operator_key(&op, &name, &new, expires_at).await.map_err(fail)?;
                audit.record_platform(&op, key_event(action::OPERATOR_KEY_CREATED, &key)).await;
                (new, key)
            } else {
                let t = resolve(&store, &op, tenant.as_deref().unwrap_or_default()).await?;
                let ctx = op.act_for(t.id);
                let new = keys::generate(KeyKind::Tenant);
                let scope = scope.unwrap_or(Scope::TenantApp);
                let key =
                    store.create_tenant_key(&ctx, &name, scope, &new, expires_at).await.map_err(fail)?;
                audit.record(&ctx, key_event(action::KEY_CREATED, &key)).await;
                (new, key)
            };
            if json {
                let mut v = key_json(&key);
                v["secret"] = json!(new.secret);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_keys(&[key], false);
                println!("secret (shown once, store it now): {}", new.secret);
            }
        }
        KeyCmd::List { tenant, operator, json } => {
            let all = if operator {
                collect_all(|p| store.list_operator_keys(&op, p), |k: &ApiKey| k.id.as_uuid()).await?
            } else {
                let t = resolve(&store, &op, tenant.as_deref().unwrap_or_default()).await?;
                let ctx = op.act_for(t.id);
                collect_all(|p| store.list_tenant_keys(&ctx, p), |k: &ApiKey| k.id.as_uuid()).await?
            };
            print_keys(&all, json);
        }
        KeyCmd::Revoke { key_id, tenant, operator } => {
            let key = if operator {
                let key = store.revoke_operator_key(&op, key_id).await.map_err(fail)?;
                audit.record_platform(&op, key_event(action::OPERATOR_KEY_REVOKED, &key)).await;
                key
            } else {
                let t = resolve(&store, &op, tenant.as_deref().unwrap_or_default()).await?;
                let ctx = op.act_for(t.id);
                let key = store.revoke_tenant_key(&ctx, key_id).await.map_err(fail)?;
                audit.record(&ctx, key_event(action::KEY_REVOKED, &key)).await;
                key
            };
            print_keys(&[key], false);
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// One tenant (name or id); all tenants when left out.
    #[arg(long)]
    tenant: Option<String>,
    /// Start: RFC 3339 time or YYYY-MM-DD (UTC).
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive): RFC 3339 time or YYYY-MM-DD (UTC).
    #[arg(long)]
    to: Option<String>,
    /// Comma-separated: tenant, day, kind, model, agent.
    #[arg(long, default_value = "day,model")]
    group_by: String,
    #[arg(long)]
    json: bool,
}

fn parse_when(raw: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(raw, &Rfc3339)
        .ok()
        .or_else(|| bulkhead_store::usage::parse_day(raw).map(|d| d.midnight().assume_utc()))
        .ok_or_else(|| anyhow::anyhow!("{raw:?} is not an RFC 3339 time or a YYYY-MM-DD date"))
}

pub async fn usage(config: &Config, args: UsageArgs) -> anyhow::Result<()> {
    use bulkhead_store::{GroupBy, UsageQuery, UsageScope};
    let store = open(config).await?;
    let op = OperatorCtx::local_cli();
    let mut group_by = Vec::new();
    for part in args.group_by.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        group_by.push(part.parse::<GroupBy>().map_err(fail)?);
    }
    let query = UsageQuery {
        from: args.from.as_deref().map(parse_when).transpose()?,
        to: args.to.as_deref().map(parse_when).transpose()?,
        group_by: group_by.clone(),
        ..Default::default()
    };
    let rows = match &args.tenant {
        Some(t) => {
            let t = resolve(&store, &op, t).await?;
            store.usage_summary(UsageScope::Tenant(&op.act_for(t.id)), &query).await.map_err(fail)?
        }
        None => store.usage_summary(UsageScope::Platform(&op), &query).await.map_err(fail)?,
    };
    let cell = |r: &bulkhead_store::UsageRow, g: GroupBy| match g {
        GroupBy::Tenant => r.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
        GroupBy::Day => r.day.map(|d| d.to_string()).unwrap_or_default(),
        GroupBy::Kind => r.kind.map(|k| k.to_string()).unwrap_or_default(),
        GroupBy::Name => r.name.clone().unwrap_or_default(),
        GroupBy::Agent => r.agent_id.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
    };
    let name = |g: GroupBy| match g {
        GroupBy::Tenant => "TENANT",
        GroupBy::Day => "DAY",
        GroupBy::Kind => "KIND",
        GroupBy::Name => "MODEL",
        GroupBy::Agent => "AGENT",
    };
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                let mut v = json!({
                    "events": r.events, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                    "cached_input_tokens": r.cached_input_tokens, "quantity": r.quantity, "cost_usd": r.cost,
                });
                for g in &group_by {
                    v[name(*g).to_lowercase()] = json!(cell(r, *g));
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut header: Vec<&str> = group_by.iter().map(|g| name(*g)).collect();
    header.extend(["EVENTS", "INPUT TOK", "OUTPUT TOK", "COST USD"]);
    table(
        &header,
        rows.iter()
            .map(|r| {
                let mut row: Vec<String> = group_by.iter().map(|g| cell(r, *g)).collect();
                row.extend([
                    r.events.to_string(),
                    r.input_tokens.to_string(),
                    r.output_tokens.to_string(),
                    r.cost.to_string(),
                ]);
                row
            })
            .collect(),
    );
    Ok(())
}
