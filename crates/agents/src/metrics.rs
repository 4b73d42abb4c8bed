//! Run and token metrics, kept in process and rendered in Prometheus' text
//! format by the server's `/metrics`. Tenant labels are capped: past
//! `MAX_TENANT_LABELS` distinct tenants, further ones are counted as
//! `tenant="other"`, so a platform with many tenants cannot blow up the
//! scrape.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use bulkhead_core::TenantCtx;
use bulkhead_store::{RunStatus, TenantQueue};

pub const MAX_TENANT_LABELS: usize = 1_000;

/// Upper bounds of the run-duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

#[derive(Default)]
struct Registry {
    tenants: BTreeSet<String>,
    runs_finished: BTreeMap<(String, &'static str), u64>,
    duration_buckets: BTreeMap<String, [u64; BUCKETS.len()]>,
    duration_sum: BTreeMap<String, f64>,
    duration_count: BTreeMap<String, u64>,
    tokens: BTreeMap<(String, String, &'static str), u64>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut guard = REGISTRY.lock().expect("metrics");
    f(guard.get_or_insert_with(Registry::default))
}

fn label(reg: &mut Registry, tenant: String) -> String {
    if reg.tenants.contains(&tenant) || reg.tenants.len() < MAX_TENANT_LABELS {
        reg.tenants.insert(tenant.clone());
        tenant
    } else {
        "other".into()
    }
}

pub fn run_finished(ctx: &TenantCtx, status: RunStatus, took: Duration) {
    with(|reg| {
        let t = label(reg, ctx.tenant_id().to_string());
        *reg.runs_finished.entry((t.clone(), status.as_str())).or_default() += 1;
        let secs = took.as_secs_f64();
        let buckets = reg.duration_buckets.entry(t.clone()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                buckets[i] += 1;
            }
        }
        *reg.duration_sum.entry(t.clone()).or_default() += secs;
        *reg.duration_count.entry(t).or_default() += 1;
    });
}

pub fn tokens(ctx: &TenantCtx, model: &str, input: u64, output: u64) {
    with(|reg| {
        let t = label(reg, ctx.tenant_id().to_string());
        *reg.tokens.entry((t.clone(), model.to_owned(), "input")).or_default() += input;
        *reg.tokens.entry((t, model.to_owned(), "output")).or_default() += output;
    });
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The exposition text: queue gauges from the store's overview, the rest
/// from this process.
pub fn render(queue: &[TenantQueue]) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP bulkhead_runs_queued Runs waiting in the queue.\n# TYPE bulkhead_runs_queued gauge\n",
    );
    for q in queue {
        let _ = writeln!(out, "bulkhead_runs_queued{{tenant=\"{}\"}} {}", q.tenant_id, q.queued);
    }
    out.push_str("# HELP bulkhead_runs_active Runs being executed.\n# TYPE bulkhead_runs_active gauge\n");
    for q in queue {
        let _ = writeln!(out, "bulkhead_runs_active{{tenant=\"{}\"}} {}", q.tenant_id, q.running);
    }
    with(|reg| {
        out.push_str("# HELP bulkhead_runs_finished_total Runs finished, by status.\n# TYPE bulkhead_runs_finished_total counter\n");
        for ((t, status), n) in &reg.runs_finished {
            let _ = writeln!(
                out,
                "bulkhead_runs_finished_total{{tenant=\"{}\",status=\"{status}\"}} {n}",
                escape(t)
            );
        }
        out.push_str("# HELP bulkhead_run_duration_seconds Wall time of runs.\n# TYPE bulkhead_run_duration_seconds histogram\n");
        for (t, buckets) in &reg.duration_buckets {
            for (bound, n) in BUCKETS.iter().zip(buckets) {
                let _ = writeln!(
                    out,
                    "bulkhead_run_duration_seconds_bucket{{tenant=\"{}\",le=\"{bound}\"}} {n}",
                    escape(t)
                );
            }
            let count = reg.duration_count.get(t).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "bulkhead_run_duration_seconds_bucket{{tenant=\"{}\",le=\"+Inf\"}} {count}",
                escape(t)
            );
            let _ = writeln!(
                out,
                "bulkhead_run_duration_seconds_sum{{tenant=\"{}\"}} {}",
                escape(t),
                reg.duration_sum.get(t).copied().unwrap_or(0.0)
            );
            let _ = writeln!(out, "bulkhead_run_duration_seconds_count{{tenant=\"{}\"}} {count}", escape(t));
        }
        out.push_str("# HELP bulkhead_model_tokens_total Model tokens, by tenant, model and direction.\n# TYPE bulkhead_model_tokens_total counter\n");
        for ((t, model, dir), n) in &reg.tokens {
            let _ = writeln!(
                out,
                "bulkhead_model_tokens_total{{tenant=\"{}\",model=\"{}\",direction=\"{dir}\"}} {n}",
                escape(t),
                escape(model)
            );
        }
    });
    out
}
