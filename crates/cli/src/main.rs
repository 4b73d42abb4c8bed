//! The `bulkhead` binary: `serve` runs the platform; `tenant`, `key` and
//! `migrate` administer a store directly (the operator at the console).

use std::path::PathBuf;

use anyhow::Context as _;
use bulkhead_core::config::Config;
use clap::{Parser, Subcommand};
use figment::Figment;
use figment::providers::Serialized;

mod admin;
mod audit;
mod cell;
mod demo;
mod kb;
mod serve;

#[derive(Debug, Parser)]
#[command(name = "bulkhead", version, about = "Multi-tenant AI agent platform")]
struct Cli {
    /// TOML configuration file (default: ./bulkhead.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the embedded (SQLite) store.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL; when given, PostgreSQL is the store.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API.
    Serve(serve::ServeArgs),
    /// Create or update the store's schema, then exit.
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(admin::TenantCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(admin::KeyCmd),
    /// Usage and cost, as a table.
    Usage(admin::UsageArgs),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Knowledge bases: create, list, ingest a directory, search.
    #[command(subcommand)]
    Kb(kb::KbCmd),
    /// Run agent workers only (no HTTP API), on the configured store.
    Worker,
    /// Cells: the deployments that serve dedicated tenants.
    #[command(subcommand)]
    Cell(cell::CellCmd),
    /// The main job in one command: two tenants, their agents, knowledge,
    /// tools, sandbox and budgets, and the isolation checks, offline.
    Demo(demo::DemoArgs),
}

impl Cli {
    /// Only the flags actually given, as the top configuration layer.
    fn flags(&self) -> Figment {
        let mut fig = Figment::new();
        if let Some(dir) = &self.data_dir {
            fig = fig.merge(Serialized::default("store.data_dir", dir));
        }
        if let Some(url) = &self.database_url {
            fig = fig.merge(Serialized::default("store.database_url", url));
        }
        if let Command::Serve(args) = &self.command {
            if let Some(listen) = &args.listen {
                fig = fig.merge(Serialized::default("server.listen", listen));
            }
            if let Some(url) = &args.redis_url {
                fig = fig.merge(Serialized::default("limits.redis_url", url));
            }
        }
        fig
    }
}

/// Logs to stderr (text or JSON) and, when `export_traces` and an OTLP
/// endpoint is configured, spans to it; the returned exporter is shut down
/// (flushed) at exit.
fn init_logging(
    config: &Config,
    default_level: &str,
    export_traces: bool,
) -> anyhow::Result<Option<bulkhead_telemetry::otlp::Exporter>> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(if default_level.is_empty() { &config.log.filter } else { default_level })
    });
    let json = config.log.format == "json";
    let text = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json = json.then(|| tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr));
    let traces = if export_traces {
        bulkhead_telemetry::otlp::layer(&config.telemetry).map_err(anyhow::Error::msg)?
    } else {
        None
    };
    let (traces, exporter) = traces.map_or((None, None), |(layer, exporter)| (Some(layer), Some(exporter)));
    tracing_subscriber::registry().with(filter).with(text).with(json).with(traces).init();
    Ok(exporter)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let data_dir = cli.data_dir.clone();
    let config = Config::load(cli.config.as_deref(), &cli.flags()).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Admin commands print results on stdout; keep their logs to warnings.
    // Only the long-running processes export traces.
    let long_running = matches!(cli.command, Command::Serve(_) | Command::Worker);
    let exporter = init_logging(&config, if long_running { "" } else { "warn" }, long_running)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(config, args).await,
            Command::Migrate => {
                let store = bulkhead_store::open(&config.store).await?;
                println!("store ({}) is up to date", store.backend());
                Ok(())
            }
            Command::Tenant(cmd) => admin::tenant(&config, cmd).await,
            Command::Key(cmd) => admin::key(&config, cmd).await,
            Command::Usage(args) => admin::usage(&config, args).await,
            Command::Audit(cmd) => audit::audit(&config, cmd).await,
            Command::Kb(cmd) => kb::kb(&config, cmd).await,
            Command::Worker => serve::worker(config).await,
            Command::Cell(cmd) => cell::cell(&config, cmd).await,
            Command::Demo(args) => demo::run(config, data_dir, args).await,
        }
    });
    // The runtime first (its tasks end), then the last spans out.
    drop(runtime);
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    result
}
