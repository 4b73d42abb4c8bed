//! `bulkhead kb`: a tenant's knowledge bases from the console, working on the
//! configured store directly (like `tenant` and `key`), with the same
//! service the API uses — so ingestion here is metered and checked the same
//! way, and a running server sees the new chunks (its in-memory indexes
//! follow each base's generation).

use std::path::{Path, PathBuf};

use anyhow::Context;
use bulkhead_core::config::Config;
use bulkhead_core::page::PageReq;
use bulkhead_core::{OperatorCtx, TenantCtx};
use bulkhead_knowledge::{KbRequest, Knowledge, SearchMode, SearchRequest, Upload};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::admin::{fail, open, resolve, table};

#[derive(Debug, Subcommand)]
pub enum KbCmd {
    /// Create a knowledge base.
    Create {
        /// The tenant (name or id).
        #[arg(long)]
        tenant: String,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// An embedding model; default: the tenant's `embedding` task model.
        #[arg(long)]
        embedding_model: Option<String>,
    },
    /// List a tenant's knowledge bases.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Ingest every .txt, .md, .markdown, .html and .htm file under DIR,
    /// with a progress bar. Files that are unchanged are skipped; a file
    /// that is refused is reported and the others go on (exit status 1).
    Ingest {
        #[arg(long)]
        tenant: String,
        /// The knowledge base (name or id); created if it does not exist.
        #[arg(long)]
        kb: String,
        dir: PathBuf,
        /// Metadata (a JSON object) for every document.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Search a knowledge base.
    Search {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        kb: String,
        query: String,
        #[arg(long, default_value_t = 5)]
        k: usize,
        /// hybrid, vector or text.
        #[arg(long, default_value = "hybrid")]
        mode: String,
        #[arg(long)]
        json: bool,
    },
}

/// The knowledge service over the configured store, and the tenant's context.
async fn setup(config: &Config, tenant: &str) -> anyhow::Result<(Knowledge, TenantCtx)> {
    let store = open(config).await?;
    let op = OperatorCtx::local_cli();
    let ctx = op.act_for(resolve(&store, &op, tenant).await?.id);
    let services = bulkhead_server::bootstrap::services(config, store).await.map_err(fail)?;
    Ok((services.knowledge, ctx))
}

async fn find_kb(k: &Knowledge, ctx: &TenantCtx, kb: &str) -> anyhow::Result<bulkhead_store::KnowledgeBase> {
    let found = match kb.parse() {
        Ok(id) => k.get_kb(ctx, id).await,
        Err(_) => k.find_kb(ctx, kb).await,
    };
    found.map_err(|_| anyhow::anyhow!("no knowledge base {kb:?}"))
}

fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
                Some("txt" | "md" | "markdown" | "html" | "htm")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub async fn kb(config: &Config, cmd: KbCmd) -> anyhow::Result<()> {
    match cmd {
        KbCmd::Create { tenant, name, description, embedding_model } => {
            let (k, ctx) = setup(config, &tenant).await?;
            let req = KbRequest { name, description, embedding_model, ..Default::default() };
            let kb = k.create_kb(&ctx, req).await.map_err(fail)?;
            println!("created knowledge base {} ({}, {} dimensions)", kb.id, kb.embedding_model, kb.dims);
        }
        KbCmd::List { tenant, json } => {
            let (k, ctx) = setup(config, &tenant).await?;
            let page = k.list_kbs(&ctx, PageReq::new(Some(500), None).map_err(fail)?).await.map_err(fail)?;
            if json {
                let list: Vec<_> = page
                    .items
                    .iter()
                    .map(|b| {
                        json!({"id": b.id, "name": b.name, "embedding_model": b.embedding_model,
                                    "documents": b.documents, "chunks": b.chunks, "bytes": b.bytes})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                table(
                    &["ID", "NAME", "MODEL", "DOCS", "CHUNKS", "BYTES"],
                    page.items
                        .iter()
                        .map(|b| {
                            vec![
                                b.id.to_string(),
                                b.name.clone(),
                                b.embedding_model.clone(),
                                b.documents.to_string(),
                                b.chunks.to_string(),
                                b.bytes.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        KbCmd::Ingest { tenant, kb, dir, metadata } => {
            let metadata: serde_json::Value = match metadata {
                Some(m) => serde_json::from_str(&m).context("--metadata must be a JSON object")?,
                None => json!({}),
            };
            let (k, ctx) = setup(config, &tenant).await?;
            let base = match find_kb(&k, &ctx, &kb).await {
                Ok(b) => b,
                Err(_) => k
                    .create_kb(&ctx, KbRequest { name: kb.clone(), ..Default::default() })
                    .await
                    .map_err(fail)?,
            };
            let files = files_under(&dir)?;
            if files.is_empty() {
                anyhow::bail!("no .txt, .md, .markdown, .html or .htm files under {}", dir.display());
            }
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} chunks · {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            let (mut ingested, mut unchanged, mut refused, mut chunks) = (0, 0, 0, 0i64);
            for (i, path) in files.iter().enumerate() {
                let name = path.strip_prefix(&dir).unwrap_or(path).to_string_lossy().into_owned();
                bar.set_message(format!("{name} ({}/{})", i + 1, files.len()));
                let content = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let upload = Upload { name: name.clone(), format: None, content, metadata: metadata.clone() };
                let done = match k.upload_all(&ctx, base.id, vec![upload]).await {
                    Ok(mut d) => d.remove(0),
                    Err(e) => {
                        bar.suspend(|| eprintln!("refused {}", e.message));
                        refused += 1;
                        continue;
                    }
                };
                if matches!(done, bulkhead_store::Upserted::Unchanged(_)) {
                    unchanged += 1;
                    continue;
                }
                let start = bar.position();
                let progress = |done: usize, total: usize| {
                    if done == 0 {
                        bar.inc_length(total as u64);
                    }
                    bar.set_position(start + done as u64);
                };
                match k.ingest_with(&ctx, base.id, done.document().id, &progress).await {
                    Ok(Some(doc)) => {
                        ingested += 1;
                        chunks += doc.chunks;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        bar.suspend(|| eprintln!("failed {name}: {}", e.message));
                        refused += 1;
                    }
                }
            }
            bar.finish_with_message("done");
            println!(
                "{}: {ingested} ingested ({chunks} chunks), {unchanged} unchanged, {refused} refused",
                base.name
            );
            if refused > 0 {
                std::process::exit(1);
            }
        }
        KbCmd::Search { tenant, kb, query, k: top, mode, json } => {
            let (k, ctx) = setup(config, &tenant).await?;
            let base = find_kb(&k, &ctx, &kb).await?;
            let mode: SearchMode = mode.parse().map_err(fail)?;
            let req = SearchRequest {
                query,
                kbs: vec![base.id],
                k: top,
                mode,
                filter: Default::default(),
                request_id: None,
            };
            let hits = k.search(&ctx, &req).await.map_err(fail)?;
            let hits = hits.iter().map(|h| h.get_for(&ctx)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hits)?);
            } else {
                for (i, h) in hits.iter().enumerate() {
                    println!(
                        "{}. {} #{} (score {:.4})\n   {}\n",
                        i + 1,
                        h.doc_name,
                        h.ord,
                        h.score,
                        h.text.replace('\n', " ")
                    );
                }
            }
        }
    }
    Ok(())
}
