//! `bulkhead serve`: open the store, make sure an operator key exists, serve
//! until SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context as _;
use bulkhead_core::config::Config;
use bulkhead_server::AppState;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Redis URL for limits shared by all replicas (default: in-process).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

pub async fn run(config: Config, _args: ServeArgs) -> anyhow::Result<()> {
    let store = bulkhead_store::open(&config.store).await.context("opening the store")?;
    tracing::info!(backend = store.backend(), "store ready");
    let generated =
        bulkhead_server::bootstrap::ensure_operator_key(&store, config.auth.operator_key.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("installing the operator key: {e}"))?;
    if let Some(secret) = generated {
        // Printed once; the store keeps only its hash.
        println!("operator key (shown once, store it now): {secret}");
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    let services = bulkhead_server::bootstrap::services(&config, store)
        .await
        .map_err(|e| anyhow::anyhow!("starting services: {e}"))?;
    bulkhead_server::serve(listener, AppState::new(services, config.server), shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    shutdown.cancel();
}

/// `bulkhead worker`: the run workers alone, until SIGTERM. Several worker
/// processes (and `serve` processes) can share one store.
pub async fn worker(config: Config) -> anyhow::Result<()> {
    if config.agents.workers == 0 {
        anyhow::bail!("agents.workers is 0: a worker needs at least one run slot");
    }
    let store = bulkhead_store::open(&config.store).await.context("opening the store")?;
    let services = bulkhead_server::bootstrap::services(&config, store)
        .await
        .map_err(|e| anyhow::anyhow!("starting services: {e}"))?;
    println!("worker running with {} slots", config.agents.workers);
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    if let Some(addr) = config.telemetry.metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        println!("metrics on http://{}/metrics", listener.local_addr()?);
        let stop = shutdown.clone();
        let token = config.server.metrics_token.clone();
        tokio::spawn(async move {
            if let Err(e) = bulkhead_server::http_metrics::serve_metrics_only(listener, token, stop).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }
    let knowledge = services.knowledge.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { knowledge.run_jobs(stop.cancelled_owned()).await });
    services.scheduler.run(shutdown).await;
    tracing::info!("worker stopped");
    Ok(())
}
