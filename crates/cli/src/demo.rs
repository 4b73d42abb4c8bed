//! `bulkhead demo`: the platform's main job in one command, offline.
//!
//! It starts the platform in this process (the real server on a loopback
//! port, over the configured store: a fresh SQLite directory unless
//! `--data-dir` names one), plus a small loopback "inventory" service that
//! stands in for a tenant's own HTTP API. Then, only through the public HTTP
//! API, as an operator and as each tenant:
//!
//! - two tenants in different tiers, with different model configurations
//!   (alias, prices, allow list), budgets and limits;
//! - for each: a knowledge base holding a canary fact, a credential in the
//!   vault, an HTTP tool that uses it, and an agent with knowledge search,
//!   that tool and code execution;
//! - several conversations each (the built-in `builtin/scripted` model: it
//!   calls the tools the user names, see `bulkhead-models`' `scripted.rs`);
//! - a sandbox call refused by policy, and a budget stop;
//! - per tenant: answers, steps, tokens, cost, budget left, audit entries
//!   (and whether the chain verifies), and a check that neither tenant's
//!   canary reached the other — through answers, tool results, searches or
//!   guessed ids.
//!
//! The report is tables for a person, or JSON with `--json`. The exit status
//! is non-zero when a check fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bulkhead_core::config::Config;
use bulkhead_server::AppState;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// What one tenant of the demo is given.
struct Plan {
    name: &'static str,
    tier: &'static str,
    /// The name its apps use for the model, and what it maps to.
    alias: &'static str,
    pricing: Value,
    allowed_models: Option<Value>,
    budget_usd: &'static str,
    limits: Value,
    sandbox: bool,
    canary: String,
}

#[derive(Serialize)]
struct Report {
    store: String,
    data_dir: Option<String>,
    tenants: Vec<TenantReport>,
    isolation: Vec<IsolationCheck>,
    ok: bool,
}

#[derive(Serialize)]
struct TenantReport {
    name: String,
    id: String,
    tier: String,
    model_alias: String,
    model: String,
    price_in_out_per_mtok_usd: String,
    markup_bps: u64,
    budget_usd: String,
    budget_left_usd: String,
    limits: Value,
    sandbox: bool,
    canary: String,
    conversations: Vec<Conversation>,
    runs: usize,
    steps: u64,
    input_tokens: u64,
    output_tokens: u64,
    /// Spend of the month as the ledger has it: models, tools, sandbox,
    /// embeddings.
    cost_usd: String,
    audit_entries: u64,
    audit_chain: String,
    refusals: Vec<Refusal>,
}

#[derive(Serialize)]
struct Conversation {
    asked: String,
    status: String,
    error: Option<String>,
    answer: String,
    steps: u64,
    /// The tools called, in order; refused ones as `NAME (refused)`.
    tools: Vec<String>,
    /// Why each refused tool call was refused, as the model was told.
    refused_tools: Vec<String>,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: String,
}

#[derive(Serialize)]
struct Refusal {
    what: String,
    code: String,
    detail: String,
}

#[derive(Serialize)]
struct IsolationCheck {
    check: String,
    passed: bool,
    detail: String,
}

pub async fn run(
    mut config: Config,
    data_dir: Option<std::path::PathBuf>,
    args: DemoArgs,
) -> anyhow::Result<()> {
    // Without --data-dir the demo is a throwaway: a fresh directory, removed
    // at the end. With it, the data stays for `bulkhead serve` and /console.
    let scratch = match &data_dir {
        Some(_) => None,
        None => {
            let dir = tempfile::Builder::new().prefix("bulkhead-demo.").tempdir()?;
            config.store.data_dir = dir.path().to_owned();
            Some(dir)
        }
    };
    if config.knowledge.model_dir.is_none() {
        bail!(
            "the demo's knowledge bases need the offline embedding model: run `bash scripts/demo.sh` \
             (it fetches the model), or set BULKHEAD_MINILM_DIR to the directory `scripts/models.sh` prints"
        );
    }

    let inventory = Inventory::start().await?;
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // The inventory service is on loopback, which egress refuses by default;
    // the operator excepts exactly its address.
    config.tools.egress_exceptions.push(inventory.addr.to_string());

    let store = bulkhead_store::open(&config.store).await.context("opening the store")?;
    let backend = store.backend();
    let operator_key = bulkhead_server::bootstrap::ensure_operator_key(&store, None)
        .await
        .map_err(|e| anyhow!("installing the operator key: {e}"))?
        .ok_or_else(|| {
            anyhow!(
                "this store already has an operator key, so the demo cannot act as the operator; \
                 give it a fresh --data-dir"
            )
        })?;
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let services = bulkhead_server::bootstrap::services(&config, store)
        .await
        .map_err(|e| anyhow!("starting services: {e}"))?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(bulkhead_server::serve(
        listener,
        AppState::new(services, config.server.clone()),
        shutdown.clone(),
    ));
    let api = Api { base: format!("http://{addr}"), http: reqwest::Client::new(), op: operator_key.clone() };
    if !args.json {
        eprintln!(
            "Bulkhead demo: {backend} store, server on {}, inventory service on {}",
            api.base, inventory.addr
        );
    }

    let result = demo(&api, &inventory, args.json).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let (tenants, isolation) = result?;

    let ok = isolation.iter().all(|c| c.passed);
    let report = Report {
        store: backend.to_owned(),
        data_dir: data_dir.as_ref().map(|d| d.display().to_string()),
        tenants,
        isolation,
        ok,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
        if let Some(dir) = &data_dir {
            println!(
                "\nThe data stays in {}. Browse it: bulkhead serve --data-dir {} and open /console with the \
                 operator key {operator_key}",
                dir.display(),
                dir.display()
            );
        }
    }
    drop(scratch);
    if !ok {
        bail!("an isolation check failed");
    }
    Ok(())
}

async fn demo(
    api: &Api,
    inventory: &Inventory,
    quiet: bool,
) -> anyhow::Result<(Vec<TenantReport>, Vec<IsolationCheck>)> {
    let say = |s: &str| {
        if !quiet {
            eprintln!("  {s}");
        }
    };
    let plans = [
        Plan {
            name: "acme",
            tier: "shared",
            alias: "assistant",
            pricing: json!({"markup_bps": 1500}),
            allowed_models: None,
            budget_usd: "5.00",
            limits: json!({"requests_per_minute": 1200, "concurrent_runs": 4, "tool_calls_per_minute": 120,
                           "sandbox_executions_per_minute": 30}),
            sandbox: true,
            canary: canary("ACME"),
        },
        Plan {
            name: "globex",
            tier: "isolated",
            alias: "helper",
            // A premium price per token, so that its small budget runs out
            // within the demo.
            pricing: json!({"markup_bps": 0, "models": {"builtin/scripted":
                            {"input_per_mtok": "40.00", "output_per_mtok": "120.00"}}}),
            allowed_models: Some(json!(["builtin/scripted", "builtin/all-minilm-l6-v2"])),
            budget_usd: "0.08",
            limits: json!({"requests_per_minute": 300, "concurrent_runs": 1, "tool_calls_per_minute": 30}),
            sandbox: false,
            canary: canary("GLOBEX"),
        },
    ];

    let mut tenants = Vec::new();
    for plan in &plans {
        say(&format!("setting up {} ({} tier)", plan.name, plan.tier));
        tenants.push(setup(api, inventory, plan).await.with_context(|| format!("setting up {}", plan.name))?);
    }

    let mut reports = Vec::new();
    for (plan, t) in plans.iter().zip(&tenants) {
        say(&format!("conversations of {}", plan.name));
        let other = plans.iter().find(|p| p.name != plan.name).expect("two tenants");
        let mut conversations = Vec::new();
        let mut refusals = Vec::new();
        let script = [
            "What is our project codename? call knowledge_search {\"query\": \"project codename\"}".to_owned(),
            "Is the blue widget in stock? call inventory {\"sku\": \"BW-1\"}".to_owned(),
            "What do three widgets at 19.99 cost? call run_code {\"language\": \"python\", \"code\": \"print(round(3 * 19.99, 2))\"}".to_owned(),
            "Hello! Who answers here?".to_owned(),
            // Asking for the other tenant's secret: retrieval finds only this
            // tenant's own documents.
            format!("What is {}'s project codename? call knowledge_search {}", other.name,
                    json!({"query": format!("{} project codename", other.name)})),
        ];
        for message in &script {
            conversations.push(converse(api, t, message).await?);
        }
        for (i, c) in conversations.iter().enumerate() {
            for refused in &c.refused_tools {
                let (tool, why) = refused.split_once(": ").unwrap_or((refused, ""));
                let code = why
                    .strip_prefix("refused (")
                    .and_then(|r| r.split_once(')'))
                    .map_or("refused", |(c, _)| c);
                refusals.push(Refusal {
                    what: format!("conversation {}: tool {tool}", i + 1),
                    code: code.to_owned(),
                    detail: why.to_owned(),
                });
            }
        }
        // Keep talking until the budget says no (a bounded number of times).
        if plan.name == "globex" {
            for i in 0..12 {
                let c =
                    converse(api, t, &format!("Tell me about order {i}, please, in full detail.")).await?;
                let stop = c.error.as_deref() == Some("budget_exceeded");
                if stop {
                    refusals.push(Refusal {
                        what: format!("conversation {}: the run", conversations.len() + 1),
                        code: "budget_exceeded".into(),
                        detail:
                            "the worst case of the next model call does not fit what is left of the budget"
                                .into(),
                    });
                }
                conversations.push(c);
                if stop {
                    break;
                }
            }
        }
        // The sandbox asked for directly, outside an agent: same policy.
        let direct = api
            .call(
                Method::POST,
                "/v1/sandbox/executions",
                &t.key,
                Some(json!({"language": "python", "code": "print(1)"})),
            )
            .await?;
        if direct.0 >= 400 {
            let e = &direct.1["error"];
            refusals.push(Refusal {
                what: "POST /v1/sandbox/executions".into(),
                code: format!(
                    "{} {} ({})",
                    direct.0,
                    e["code"].as_str().unwrap_or(""),
                    e["details"]["refusal"].as_str().unwrap_or("")
                ),
                detail: e["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        reports.push(summarize(api, plan, t, conversations, refusals).await?);
    }

    let isolation = isolation_checks(api, &plans, &tenants, &reports).await?;
    Ok((reports, isolation))
}

/// A tenant as the demo set it up.
struct Tenant {
    id: String,
    key: String,
    agent: String,
    kb: String,
    doc: String,
}

async fn setup(api: &Api, inventory: &Inventory, plan: &Plan) -> anyhow::Result<Tenant> {
    let op = api.op.clone();
    let id =
        api.ok(Method::POST, "/v1/tenants", &op, json!({"name": plan.name, "tier": plan.tier})).await?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    let key = api
        .ok(
            Method::POST,
            &format!("/v1/tenants/{id}/keys"),
            &op,
            json!({"name": "demo", "scope": "tenant_admin"}),
        )
        .await?["secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.ok(
        Method::PUT,
        &format!("/v1/tenants/{id}/budget"),
        &op,
        json!({"monthly_limit_usd": plan.budget_usd}),
    )
    .await?;
    api.ok(Method::PUT, &format!("/v1/tenants/{id}/limits"), &op, plan.limits.clone()).await?;
    api.ok(Method::PUT, &format!("/v1/tenants/{id}/pricing"), &op, plan.pricing.clone()).await?;
    if let Some(allowed) = &plan.allowed_models {
        api.ok(Method::PUT, &format!("/v1/tenants/{id}/models"), &op, json!({"allowed": allowed})).await?;
    }
    if plan.sandbox {
        api.ok(
            Method::PUT,
            &format!("/v1/tenants/{id}/sandbox"),
            &op,
            json!({"enabled": true, "languages": ["python"]}),
        )
        .await?;
    }
    api.ok(Method::PUT, "/v1/model-config", &key, json!({"aliases": {plan.alias: "builtin/scripted"}}))
        .await?;

    // Knowledge: a handbook with the tenant's canary fact.
    let kb = api.ok(Method::POST, "/v1/knowledge-bases", &key, json!({"name": "handbook"})).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let content = format!(
        "# {name} handbook\n\n## Projects\n\nOur project codename is {canary}. Only {name} staff may know it.\n\n\
         ## Shipping\n\nOrders leave the warehouse within two working days.\n",
        name = plan.name,
        canary = plan.canary
    );
    let doc = api
        .ok(
            Method::POST,
            &format!("/v1/knowledge-bases/{kb}/documents"),
            &key,
            json!({"name": "handbook.md", "content": content}),
        )
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let started = Instant::now();
    loop {
        let d = api
            .ok(Method::GET, &format!("/v1/knowledge-bases/{kb}/documents/{doc}"), &key, Value::Null)
            .await?;
        match d["status"].as_str() {
            Some("ready") => break,
            Some("failed") => bail!("ingesting the handbook failed: {}", d["error"]),
            _ if started.elapsed() > Duration::from_secs(120) => {
                bail!("ingesting the handbook took too long")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    // The inventory tool: the tenant's own account at the service, its key
    // kept in the vault and added to requests by the server.
    api.ok(Method::PUT, "/v1/secrets/inventory-key", &key, json!({"value": inventory.key_for(plan.name)}))
        .await?;
    api.ok(
        Method::PUT,
        "/v1/tool-settings",
        &key,
        json!({"egress": {"allow": [inventory.addr.to_string()]}}),
    )
    .await?;
    let tool = json!({
        "name": "inventory",
        "description": "Stock level of a product, by SKU",
        "parameters": {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]},
        "url_template": format!("http://{}/stock/{{sku}}", inventory.addr),
        "auth": {"secret_name": "inventory-key", "placement": {"in": "header", "name": "X-Api-Key"}},
    });
    api.ok(Method::POST, "/v1/tools", &key, tool).await?;

    let spec = json!({
        "system_prompt": format!("You are {}'s support agent.", plan.name),
        "model": plan.alias,
        "tools": ["knowledge_search", "inventory", "run_code"],
        "knowledge_bases": [kb],
        // Bounds each call's worst case, and so what a budget must cover.
        "limits": {"max_output_tokens": 256},
    });
    let agent =
        api.ok(Method::POST, "/v1/agents", &key, json!({"name": "support", "spec": spec})).await?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    Ok(Tenant { id, key, agent, kb, doc })
}

/// One conversation: a fresh thread, one message, a run to its end.
async fn converse(api: &Api, t: &Tenant, message: &str) -> anyhow::Result<Conversation> {
    let thread = api.ok(Method::POST, "/v1/threads", &t.key, json!({})).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let run = api
        .ok(
            Method::POST,
            &format!("/v1/threads/{thread}/runs"),
            &t.key,
            json!({"agent_id": t.agent, "mode": "sync", "message": message}),
        )
        .await?;
    let run_id = run["id"].as_str().unwrap_or_default();
    let steps = api.ok(Method::GET, &format!("/v1/runs/{run_id}/steps"), &t.key, Value::Null).await?;
    // What each tool call returned, by call id (the model saw these).
    let msgs =
        api.ok(Method::GET, &format!("/v1/threads/{thread}/messages?limit=100"), &t.key, Value::Null).await?;
    let results: BTreeMap<&str, &str> = msgs["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| Some((m["tool_call_id"].as_str()?, m["content"].as_str()?)))
        .collect();
    let mut tools = Vec::new();
    let mut refused_tools = Vec::new();
    for step in steps["data"].as_array().into_iter().flatten() {
        if step["kind"] == "tool_call" {
            let d = &step["data"];
            let name = d["tool"].as_str().unwrap_or("?");
            if d["ok"] == true {
                tools.push(name.to_owned());
            } else {
                let why = d["call_id"].as_str().and_then(|id| results.get(id)).copied().unwrap_or("refused");
                tools.push(format!("{name} (refused)"));
                refused_tools.push(format!("{name}: {}", why.trim_start_matches("error: ")));
            }
        }
    }
    let usage = &run["output"]["usage"];
    Ok(Conversation {
        asked: message.to_owned(),
        status: run["status"].as_str().unwrap_or("?").to_owned(),
        error: run["error"].as_str().map(str::to_owned),
        answer: run["output"]["content"].as_str().unwrap_or("").to_owned(),
        steps: usage["steps"].as_u64().unwrap_or(0),
        tools,
        refused_tools,
        input_tokens: usage["input_tokens"].as_u64().unwrap_or(0),
        output_tokens: usage["output_tokens"].as_u64().unwrap_or(0),
        cost_usd: usage["cost_usd"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| usage["cost_usd"].to_string()),
    })
}

async fn summarize(
    api: &Api,
    plan: &Plan,
    t: &Tenant,
    conversations: Vec<Conversation>,
    refusals: Vec<Refusal>,
) -> anyhow::Result<TenantReport> {
    let budget = api.ok(Method::GET, "/v1/budget", &t.key, Value::Null).await?;
    let mut audit_entries = 0u64;
    let mut path = "/v1/audit?limit=500".to_owned();
    loop {
        let page = api.ok(Method::GET, &path, &t.key, Value::Null).await?;
        audit_entries += page["data"].as_array().map_or(0, |d| d.len() as u64);
        match page["next_after"].as_i64() {
            Some(after) => path = format!("/v1/audit?limit=500&after={after}"),
            None => break,
        }
    }
    let verify = api.ok(Method::GET, "/v1/audit/verify", &t.key, Value::Null).await?;
    let chain = if verify["ok"] == true {
        format!("verified ({} entries)", verify["entries_checked"])
    } else {
        format!("BROKEN: {}", verify)
    };
    let markup = plan.pricing["markup_bps"].as_u64().unwrap_or(0);
    let price = match plan.pricing["models"]["builtin/scripted"].as_object() {
        Some(p) => format!(
            "${} / ${}",
            p["input_per_mtok"].as_str().unwrap_or("?"),
            p["output_per_mtok"].as_str().unwrap_or("?")
        ),
        None => "$0.50 / $1.50 (catalog)".into(),
    };
    Ok(TenantReport {
        name: plan.name.into(),
        id: t.id.clone(),
        tier: plan.tier.into(),
        model_alias: plan.alias.into(),
        model: "builtin/scripted".into(),
        price_in_out_per_mtok_usd: price,
        markup_bps: markup,
        budget_usd: plan.budget_usd.into(),
        budget_left_usd: budget["remaining_month_usd"].as_str().unwrap_or("?").to_owned(),
        limits: plan.limits.clone(),
        sandbox: plan.sandbox,
        canary: plan.canary.clone(),
        runs: conversations.len(),
        steps: conversations.iter().map(|c| c.steps).sum(),
        input_tokens: conversations.iter().map(|c| c.input_tokens).sum(),
        output_tokens: conversations.iter().map(|c| c.output_tokens).sum(),
        cost_usd: budget["spent_month_usd"].as_str().unwrap_or("?").to_owned(),
        conversations,
        audit_entries,
        audit_chain: chain,
        refusals,
    })
}

/// Neither tenant's canary reaches the other: not in its answers or tool
/// results, not in what its searches return, not through the other's ids.
async fn isolation_checks(
    api: &Api,
    plans: &[Plan],
    tenants: &[Tenant],
    reports: &[TenantReport],
) -> anyhow::Result<Vec<IsolationCheck>> {
    let mut checks = Vec::new();
    for (i, (plan, t)) in plans.iter().zip(tenants).enumerate() {
        let other = 1 - i;
        let (other_plan, other_t) = (&plans[other], &tenants[other]);
        let mut seen = String::new();
        // Everything the tenant's conversations hold: every message of every
        // thread (tool results included) and every step.
        let threads = api.ok(Method::GET, "/v1/threads?limit=100", &t.key, Value::Null).await?;
        for th in threads["data"].as_array().into_iter().flatten() {
            let id = th["id"].as_str().unwrap_or_default();
            let msgs = api
                .ok(Method::GET, &format!("/v1/threads/{id}/messages?limit=100"), &t.key, Value::Null)
                .await?;
            seen.push_str(&msgs.to_string());
            let runs = api.ok(Method::GET, &format!("/v1/threads/{id}/runs"), &t.key, Value::Null).await?;
            for r in runs["data"].as_array().into_iter().flatten() {
                let rid = r["id"].as_str().unwrap_or_default();
                seen.push_str(&r.to_string());
                seen.push_str(
                    &api.ok(Method::GET, &format!("/v1/runs/{rid}/steps"), &t.key, Value::Null)
                        .await?
                        .to_string(),
                );
            }
        }
        let own = seen.contains(&plan.canary);
        let leaked = seen.contains(&other_plan.canary);
        checks.push(IsolationCheck {
            check: format!(
                "{}'s threads, runs and tool results hold its own canary and not {}'s",
                plan.name, other_plan.name
            ),
            passed: own && !leaked,
            detail: format!("own canary present: {own}; {}'s canary present: {leaked}", other_plan.name),
        });

        // A direct search with the other tenant's canary sentence as the query.
        let hits = api
            .ok(
                Method::POST,
                &format!("/v1/knowledge-bases/{}/search", t.kb),
                &t.key,
                json!({"query": format!("Our project codename is {}", other_plan.canary), "k": 10}),
            )
            .await?;
        let text = hits.to_string();
        let n = hits["data"].as_array().map_or(0, Vec::len);
        checks.push(IsolationCheck {
            check: format!(
                "{} searching for {}'s canary sentence finds only its own handbook",
                plan.name, other_plan.name
            ),
            passed: n > 0 && !text.contains(&other_plan.canary),
            detail: format!(
                "{n} hits, {}'s canary in them: {}",
                other_plan.name,
                text.contains(&other_plan.canary)
            ),
        });

        // Guessed ids: the other tenant's knowledge base, document and agent.
        let probes = [
            format!("/v1/knowledge-bases/{}", other_t.kb),
            format!("/v1/knowledge-bases/{}/documents/{}", other_t.kb, other_t.doc),
            format!("/v1/agents/{}", other_t.agent),
            format!("/v1/tenants/{}", other_t.id),
        ];
        let mut statuses = Vec::new();
        for p in &probes {
            let (status, body) = api.call(Method::GET, p, &t.key, None).await?;
            statuses.push((status, body.to_string().contains(&other_plan.canary)));
        }
        checks.push(IsolationCheck {
            check: format!(
                "{} asking for {}'s knowledge base, document, agent and tenant by id",
                plan.name, other_plan.name
            ),
            passed: statuses.iter().all(|(s, leak)| (*s == 404 || *s == 403) && !leak),
            detail: format!("statuses {:?}", statuses.iter().map(|(s, _)| *s).collect::<Vec<_>>()),
        });
    }
    // The budget stop and the refused sandbox call happened.
    let refused_sandbox = reports.iter().any(|r| {
        r.refusals.iter().any(|f| f.what.ends_with("tool run_code") && f.code == "sandbox_disabled")
    });
    checks.push(IsolationCheck {
        check: "a tenant without the sandbox is refused run_code".into(),
        passed: refused_sandbox,
        detail: format!("refused: {refused_sandbox}"),
    });
    let budget_stop = reports.iter().any(|r| r.refusals.iter().any(|f| f.code == "budget_exceeded"));
    checks.push(IsolationCheck {
        check: "a tenant is stopped at its budget".into(),
        passed: budget_stop,
        detail: format!("stopped: {budget_stop}"),
    });
    Ok(checks)
}

// ---------------------------------------------------------------------------
// The report as tables.

fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nTENANTS ({} store)", r.store);
    let mut rows = vec![vec![
        "tenant".to_owned(),
        "tier".into(),
        "model".into(),
        "price in/out per Mtok".into(),
        "markup".into(),
        "budget".into(),
        "limits".into(),
        "sandbox".into(),
    ]];
    for t in &r.tenants {
        let limits = t
            .limits
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{}={v}", short_limit(k))).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        rows.push(vec![
            t.name.clone(),
            t.tier.clone(),
            format!("{} → {}", t.model_alias, t.model),
            t.price_in_out_per_mtok_usd.clone(),
            format!("{}%", t.markup_bps as f64 / 100.0),
            format!("${}", t.budget_usd),
            limits,
            if t.sandbox { "python".into() } else { "off".into() },
        ]);
    }
    table(&mut out, &rows);

    for t in &r.tenants {
        let _ = writeln!(out, "\nCONVERSATIONS OF {}", t.name.to_uppercase());
        let mut rows = vec![vec![
            "#".to_owned(),
            "asked".into(),
            "status".into(),
            "steps".into(),
            "tools".into(),
            "tokens in/out".into(),
            "cost $".into(),
        ]];
        for (i, c) in t.conversations.iter().enumerate() {
            rows.push(vec![
                (i + 1).to_string(),
                first_line(&c.asked, 60),
                match &c.error {
                    Some(e) => format!("{} ({e})", c.status),
                    None => c.status.clone(),
                },
                c.steps.to_string(),
                c.tools.join(", "),
                format!("{}/{}", c.input_tokens, c.output_tokens),
                c.cost_usd.clone(),
            ]);
        }
        table(&mut out, &rows);
        let _ = writeln!(out, "  answers:");
        for (i, c) in t.conversations.iter().enumerate() {
            let flat = c.answer.split_whitespace().collect::<Vec<_>>().join(" ");
            let _ = writeln!(
                out,
                "  {:>2}. {}",
                i + 1,
                if flat.is_empty() { "—".into() } else { first_line(&flat, 200) }
            );
        }
    }

    let _ = writeln!(out, "\nPER TENANT");
    let mut rows = vec![vec![
        "tenant".to_owned(),
        "runs".into(),
        "steps".into(),
        "tokens in/out".into(),
        "spent".into(),
        "budget left".into(),
        "audit entries".into(),
        "audit chain".into(),
    ]];
    for t in &r.tenants {
        rows.push(vec![
            t.name.clone(),
            t.runs.to_string(),
            t.steps.to_string(),
            format!("{}/{}", t.input_tokens, t.output_tokens),
            format!("${}", t.cost_usd),
            format!("${}", t.budget_left_usd),
            t.audit_entries.to_string(),
            t.audit_chain.clone(),
        ]);
    }
    table(&mut out, &rows);

    let _ = writeln!(out, "\nREFUSALS");
    let mut rows = vec![vec!["tenant".to_owned(), "what".into(), "code".into(), "why".into()]];
    for t in &r.tenants {
        for f in &t.refusals {
            rows.push(vec![t.name.clone(), f.what.clone(), f.code.clone(), first_line(&f.detail, 70)]);
        }
    }
    table(&mut out, &rows);

    let _ = writeln!(out, "\nCHECKS");
    let mut rows = vec![vec!["".to_owned(), "check".into(), "detail".into()]];
    for c in &r.isolation {
        rows.push(vec![if c.passed { "ok" } else { "FAIL" }.into(), c.check.clone(), c.detail.clone()]);
    }
    table(&mut out, &rows);
    let _ = writeln!(out, "\n{}", if r.ok { "All checks passed." } else { "SOME CHECKS FAILED." });
    out
}

fn short_limit(k: &str) -> &str {
    match k {
        "requests_per_minute" => "req/min",
        "concurrent_runs" => "runs",
        "tool_calls_per_minute" => "tools/min",
        "sandbox_executions_per_minute" => "sandbox/min",
        other => other,
    }
}

/// Left-aligned columns separated by two spaces, a rule under the header.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(width[c] - cell.chars().count() + 2));
            }
        }
        let _ = writeln!(out, "  {}", line.trim_end());
        if i == 0 {
            let rule: usize = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            let _ = writeln!(out, "  {}", "─".repeat(rule));
        }
    }
}

/// The first line of `s`, cut to `max` characters.
fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() <= max && !s.contains('\n') {
        return line.to_owned();
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// A fact nobody could guess: the name and 8 random hex digits.
fn canary(who: &str) -> String {
    format!("{who}-CANARY-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

// ---------------------------------------------------------------------------
// The HTTP client side.

struct Api {
    base: String,
    http: reqwest::Client,
    op: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.with_context(|| format!("calling {path}"))?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// A call that must succeed; its JSON body.
    async fn ok(&self, method: Method, path: &str, key: &str, body: Value) -> anyhow::Result<Value> {
        let what = format!("{method} {path}");
        let body = if body.is_null() { None } else { Some(body) };
        let (status, value) = self.call(method, path, key, body).await?;
        if status >= 300 {
            bail!("{what} answered {status}: {value}");
        }
        Ok(value)
    }
}

// ---------------------------------------------------------------------------
// The inventory service: a tenant's own HTTP API, on loopback.

struct Inventory {
    addr: SocketAddr,
    keys: BTreeMap<&'static str, String>,
}

impl Inventory {
    async fn start() -> anyhow::Result<Self> {
        let keys: BTreeMap<&'static str, String> = ["acme", "globex"]
            .into_iter()
            .map(|t| (t, format!("inv-{t}-{}", uuid::Uuid::new_v4().simple())))
            .collect();
        // Each key is one account, with its own stock.
        let accounts: BTreeMap<String, (&'static str, u32)> =
            [(keys["acme"].clone(), ("acme", 42)), (keys["globex"].clone(), ("globex", 7))]
                .into_iter()
                .collect();
        let app = axum::Router::new().route(
            "/stock/{sku}",
            axum::routing::get(
                move |axum::extract::Path(sku): axum::extract::Path<String>,
                      headers: axum::http::HeaderMap| {
                    let accounts = accounts.clone();
                    async move {
                        let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("");
                        match accounts.get(key) {
                            Some((who, stock)) => (
                                axum::http::StatusCode::OK,
                                axum::Json(json!({"account": who, "sku": sku, "in_stock": stock})),
                            ),
                            None => (
                                axum::http::StatusCode::UNAUTHORIZED,
                                axum::Json(json!({"error": "unknown api key"})),
                            ),
                        }
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, keys })
    }

    fn key_for(&self, tenant: &str) -> String {
        self.keys.get(tenant).cloned().unwrap_or_default()
    }
}
