//! `bulkhead cell add|list|remove`: the operator registers the cells (other
//! Bulkhead deployments) that serve dedicated tenants, working directly on
//! the configured store, audited in the platform chain as the API does.
//!
//! The cell's operator key is read from an environment variable
//! (`--key-env`) or from the first line of standard input — never from the
//! command line, where `ps` and shell history would keep it — and is sealed
//! with the master key before it is stored.

use anyhow::{Context as _, bail};
use bulkhead_audit::{Audit, action};
use bulkhead_core::OperatorCtx;
use bulkhead_core::config::Config;
use bulkhead_server::cells::{Cells, cell_event};
use bulkhead_store::Cell;
use clap::Subcommand;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use crate::admin::{fail, open, table};

#[derive(Debug, Subcommand)]
pub enum CellCmd {
    /// Register a cell; it must answer and accept the operator key.
    Add {
        name: String,
        /// Base URL of the cell's API, e.g. http://10.0.3.7:8080.
        #[arg(long)]
        url: String,
        /// Read the cell's operator key from this environment variable
        /// (default: the first line of standard input).
        #[arg(long, value_name = "VAR")]
        key_env: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List cells with the number of tenants each serves.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a cell that serves no tenant.
    Remove { name: String },
}

fn cell_json(c: &Cell) -> serde_json::Value {
    json!({
        "name": c.name, "base_url": c.base_url, "credential_prefix": c.credential_prefix,
        "tenants": c.tenants, "created_at": c.created_at.format(&Rfc3339).unwrap_or_default(),
    })
}

fn print_cells(cells: &[Cell], as_json: bool) {
    if as_json {
        let list: Vec<_> = cells.iter().map(cell_json).collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return;
    }
    table(
        &["NAME", "URL", "KEY", "TENANTS"],
        cells
            .iter()
            .map(|c| {
                vec![c.name.clone(), c.base_url.clone(), c.credential_prefix.clone(), c.tenants.to_string()]
            })
            .collect(),
    );
}

fn read_key(key_env: Option<&str>) -> anyhow::Result<String> {
    let key = match key_env {
        Some(var) => std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the cell's operator key from stdin")?;
            line
        }
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        bail!("no operator key given: pipe it on stdin or name a variable with --key-env");
    }
    Ok(key)
}

pub async fn cell(config: &Config, cmd: CellCmd) -> anyhow::Result<()> {
    let store = open(config).await?;
    let audit = Audit::new(store.clone());
    let op = OperatorCtx::local_cli();
    match cmd {
        CellCmd::Add { name, url, key_env, json } => {
            let key = read_key(key_env.as_deref())?;
            let cells = Cells::from_config(config, store.clone()).map_err(fail)?;
            let cell = cells.register(&op, &name, &url, &key).await.map_err(fail)?;
            audit.record_platform(&op, cell_event(action::CELL_ADDED, &cell)).await;
            print_cells(&[cell], json);
        }
        CellCmd::List { json } => {
            let all = store.list_cells(&op).await.map_err(fail)?;
            print_cells(&all, json);
        }
        CellCmd::Remove { name } => {
            let cell = store.get_cell(&op, &name).await.map_err(fail)?;
            store.delete_cell(&op, &name).await.map_err(fail)?;
            audit.record_platform(&op, cell_event(action::CELL_REMOVED, &cell)).await;
            println!("removed cell {name}");
        }
    }
    Ok(())
}
