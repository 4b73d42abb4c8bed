//! `bulkhead audit list|verify`: the operator at the console reads and
//! checks the audit log directly on the configured store. A broken chain
//! makes `verify` exit non-zero, naming the chain and its first bad seq.

use anyhow::bail;
use bulkhead_audit::{Audit, VerifyReport};
use bulkhead_core::OperatorCtx;
use bulkhead_core::config::Config;
use bulkhead_store::{AuditChain, AuditEntry, AuditQuery, Tenant};
use clap::Subcommand;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use crate::admin::{collect_all, fail, open, resolve, table};

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Show entries of a tenant's chain, or of the platform chain.
    List {
        /// Tenant (name or id); the platform chain when left out.
        #[arg(long)]
        tenant: Option<String>,
        /// Entries to show (1–1000).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Start after this seq.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Only actions starting with this, e.g. `key.` or `auth.failed`.
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Recompute every hash and check every link; exits non-zero when a
    /// chain is broken. Checks every chain unless one is named.
    Verify {
        /// One tenant's chain (name or id).
        #[arg(long, conflicts_with_all = ["platform", "all"])]
        tenant: Option<String>,
        /// The platform chain only.
        #[arg(long, conflicts_with = "all")]
        platform: bool,
        /// The platform chain and every tenant's (the default).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn audit(config: &Config, cmd: AuditCmd) -> anyhow::Result<()> {
    let store = open(config).await?;
    let audit = Audit::new(store.clone());
    let op = OperatorCtx::local_cli();
    match cmd {
        AuditCmd::List { tenant, limit, after, action, json } => {
            if !(1..=1000).contains(&limit) {
                bail!("--limit must be between 1 and 1000");
            }
            let query = AuditQuery { after, limit, action_prefix: action, since: None };
            let entries = match tenant {
                Some(t) => {
                    let ctx = op.act_for(resolve(&store, &op, &t).await?.id);
                    audit.list(AuditChain::Tenant(&ctx), &query).await.map_err(fail)?
                }
                None => audit.list(AuditChain::Platform(&op), &query).await.map_err(fail)?,
            };
            print_entries(&entries, json);
        }
        AuditCmd::Verify { tenant, platform, all: _, json } => {
            let mut reports: Vec<(String, VerifyReport)> = Vec::new();
            if let Some(t) = tenant {
                let t = resolve(&store, &op, &t).await?;
                let report = audit.verify(AuditChain::Tenant(&op.act_for(t.id))).await.map_err(fail)?;
                reports.push((label(&t), report));
            } else {
                reports
                    .push(("platform".into(), audit.verify(AuditChain::Platform(&op)).await.map_err(fail)?));
                if !platform {
                    let tenants =
                        collect_all(|p| store.list_tenants(&op, p), |t: &Tenant| t.id.as_uuid()).await?;
                    for t in tenants {
                        let report =
                            audit.verify(AuditChain::Tenant(&op.act_for(t.id))).await.map_err(fail)?;
                        reports.push((label(&t), report));
                    }
                }
            }
            print_reports(&reports, json);
            let broken: Vec<String> = reports
                .iter()
                .filter_map(|(name, r)| {
                    let p = r.first_problem?;
                    Some(format!("{name}: first problem at seq {} ({})", p.seq, p.kind.as_str()))
                })
                .collect();
            if !broken.is_empty() {
                bail!("audit chain broken — {}", broken.join("; "));
            }
        }
    }
    Ok(())
}

fn label(t: &Tenant) -> String {
    format!("tenant {} ({})", t.name, t.id)
}

fn print_entries(entries: &[AuditEntry], as_json: bool) {
    let time = |e: &AuditEntry| e.at.format(&Rfc3339).unwrap_or_default();
    if as_json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                let details: serde_json::Value =
                    serde_json::from_str(&e.details).unwrap_or_else(|_| json!(e.details));
                json!({
                    "chain": e.chain, "seq": e.seq, "time": time(e), "actor": e.actor,
                    "via_operator": e.via_operator, "action": e.action, "target": e.target,
                    "outcome": e.outcome, "details": details, "prev_hash": e.prev_hash, "hash": e.hash,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return;
    }
    table(
        &["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAILS"],
        entries
            .iter()
            .map(|e| {
                let actor =
                    if e.via_operator { format!("{} (for tenant)", e.actor) } else { e.actor.clone() };
                vec![
                    e.seq.to_string(),
                    time(e),
                    actor,
                    e.action.clone(),
                    e.target.clone(),
                    e.outcome.clone(),
                    e.details.clone(),
                ]
            })
            .collect(),
    );
}

fn print_reports(reports: &[(String, VerifyReport)], as_json: bool) {
    if as_json {
        let list: Vec<_> = reports
            .iter()
            .map(|(name, r)| {
                json!({
                    "name": name, "chain": r.chain, "ok": r.ok, "entries_checked": r.entries_checked,
                    "head_seq": r.head_seq, "head_hash": r.head_hash,
                    "first_problem": r.first_problem.map(|p| json!({"seq": p.seq, "kind": p.kind.as_str()})),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return;
    }
    for (name, r) in reports {
        match r.first_problem {
            None => println!(
                "{name}: ok, {} entries, head hash {}",
                r.entries_checked,
                r.head_hash.as_deref().unwrap_or("-")
            ),
            Some(p) => println!(
                "{name}: BROKEN at seq {} ({}); {} entries intact before it",
                p.seq,
                p.kind.as_str(),
                r.entries_checked
            ),
        }
    }
}
