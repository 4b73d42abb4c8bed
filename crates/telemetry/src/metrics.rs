//! The process's Prometheus metrics: a small registry of fixed families,
//! recorded through one-line calls at the points where work happens and
//! rendered in Prometheus' text format (version 0.0.4) by the server's
//! `GET /metrics`.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `bulkhead_runs_queued`, `bulkhead_runs_active` | gauge | tenant |
//! | `bulkhead_runs_finished_total` | counter | tenant, status |
//! | `bulkhead_run_duration_seconds` | histogram | tenant |
//! | `bulkhead_model_tokens_total` | counter | tenant, model, direction |
//! | `bulkhead_model_cost_dollars_total` | counter | tenant, model |
//! | `bulkhead_cost_dollars_total` | counter | tenant, kind (`llm`, `tool_call`, `sandbox`, …) |
//! | `bulkhead_rate_limit_refusals_total` | counter | tenant, limit |
//! | `bulkhead_budget_refusals_total` | counter | tenant, period |
//! | `bulkhead_policy_refusals_total` | counter | tenant, scope (`tool`, `egress`, `sandbox`), reason |
//! | `bulkhead_sandbox_executions_total` | counter | tenant, outcome |
//! | `bulkhead_sandbox_cpu_seconds_total` | counter | tenant |
//! | `bulkhead_tool_calls_total` | counter | tenant, kind, outcome |
//! | `bulkhead_http_request_duration_seconds` | histogram | method, route, status (class: `2xx`…) |
//! | `bulkhead_build_info`, `bulkhead_start_time_seconds` | gauge | version |
//!
//! The queue gauges come from the store (the caller passes them in), so
//! every process reports the whole queue; everything else counts what this
//! process did since it started, as Prometheus counters do.
//!
//! **Cardinality is capped.** Label values that callers could multiply are
//! interned on first use, first come first served, up to a cap per
//! dimension: [`MAX_TENANT_LABELS`] tenants, [`MAX_MODEL_LABELS`] models,
//! [`MAX_ROUTE_LABELS`] routes; past a cap the value is recorded as
//! `other` (so totals stay right). `route` is the matched route template
//! (`/v1/agents/{agent_id}`), never the raw path; requests no route matched
//! are `unmatched`. Every other label is a `&'static str` from our code, a
//! small closed set. HTTP latency carries no tenant label.
//!
//! Cost per call: one uncontended mutex and a hash-map lookup keyed by small
//! copyable ids (tenant and model ids are interned; the rest are static
//! strings); a model or route name is allocated only the first time it is
//! seen. Tenant-keyed families share one lock, HTTP latency has its own.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt::{Display, Write as _};
use std::hash::Hash;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_core::{Money, TenantCtx, TenantId};

/// Distinct tenant label values; further tenants are `tenant="other"`.
pub const MAX_TENANT_LABELS: usize = 1_000;
/// Distinct model label values; further models are `model="other"`.
pub const MAX_MODEL_LABELS: usize = 100;
/// Distinct route label values (the router has far fewer).
pub const MAX_ROUTE_LABELS: usize = 300;
/// The label value of everything past a cap.
pub const OTHER: &str = "other";

/// Upper bounds of the run-duration histogram, in seconds.
const RUN_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0];
/// Upper bounds of the HTTP latency histogram, in seconds.
const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const MAX_BUCKETS: usize = 12;

/// An interned label value: an index into its interner, or [`OTHER_ID`].
type Id = u32;
const OTHER_ID: Id = Id::MAX;

/// Label values of one dimension, first come first served up to `cap`.
struct Interner<K> {
    ids: HashMap<K, Id>,
    names: Vec<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone + Display> Interner<K> {
    fn new(cap: usize) -> Self {
        Self { ids: HashMap::new(), names: Vec::new(), cap }
    }

    fn id<Q>(&mut self, key: &Q) -> Id
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        if self.names.len() >= self.cap {
            return OTHER_ID;
        }
        let id = self.names.len() as Id;
        let owned = key.to_owned();
        self.names.push(owned.clone());
        self.ids.insert(owned, id);
        id
    }

    fn name(&self, id: Id) -> String {
        match self.names.get(id as usize) {
            Some(k) => escape(&k.to_string()),
            None => OTHER.to_owned(),
        }
    }
}

#[derive(Clone, Copy)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last slot past `bounds` is `+Inf`.
    counts: [u64; MAX_BUCKETS + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.len() <= MAX_BUCKETS);
        Self { bounds, counts: [0; MAX_BUCKETS + 1], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, secs: f64) {
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Families labelled by tenant, under one lock.
struct Tenanted {
    tenants: Interner<TenantId>,
    models: Interner<String>,
    runs_finished: HashMap<(Id, &'static str), u64>,
    run_duration: HashMap<Id, Histogram>,
    model_tokens: HashMap<(Id, Id, &'static str), u64>,
    /// Nano-dollars.
    model_cost: HashMap<(Id, Id), u64>,
    /// Nano-dollars, by usage kind.
    cost: HashMap<(Id, &'static str), u64>,
    rate_refusals: HashMap<(Id, &'static str), u64>,
    budget_refusals: HashMap<(Id, &'static str), u64>,
    policy_refusals: HashMap<(Id, &'static str, &'static str), u64>,
    sandbox_executions: HashMap<(Id, &'static str), u64>,
    sandbox_cpu_nanos: HashMap<Id, u64>,
    tool_calls: HashMap<(Id, &'static str, &'static str), u64>,
}

struct Http {
    routes: Interner<String>,
    requests: HashMap<(&'static str, Id, &'static str), Histogram>,
}

/// A registry. The process uses one ([`global`]); tests make their own.
pub struct Registry {
    tenanted: Mutex<Tenanted>,
    http: Mutex<Http>,
    started: f64,
}

/// Queue depth of one tenant, as the store reports it.
#[derive(Debug, Clone, Copy)]
pub struct QueueDepth {
    pub tenant: TenantId,
    pub queued: i64,
    pub running: i64,
}

static GLOBAL: LazyLock<Registry> = LazyLock::new(|| Registry::new(MAX_TENANT_LABELS));

/// The process's registry.
pub fn global() -> &'static Registry {
    &GLOBAL
}

impl Registry {
    /// An empty registry that labels at most `max_tenants` tenants.
    pub fn new(max_tenants: usize) -> Self {
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Self {
            tenanted: Mutex::new(Tenanted {
                tenants: Interner::new(max_tenants),
                models: Interner::new(MAX_MODEL_LABELS),
                runs_finished: HashMap::new(),
                run_duration: HashMap::new(),
                model_tokens: HashMap::new(),
                model_cost: HashMap::new(),
                cost: HashMap::new(),
                rate_refusals: HashMap::new(),
                budget_refusals: HashMap::new(),
                policy_refusals: HashMap::new(),
                sandbox_executions: HashMap::new(),
                sandbox_cpu_nanos: HashMap::new(),
                tool_calls: HashMap::new(),
            }),
            http: Mutex::new(Http { routes: Interner::new(MAX_ROUTE_LABELS), requests: HashMap::new() }),
            started,
        }
    }

    fn tenanted<T>(&self, ctx: &TenantCtx, f: impl FnOnce(&mut Tenanted, Id) -> T) -> T {
        // A panic elsewhere while holding the lock leaves counts that are
        // still counts: keep going rather than poison every later call.
        let mut guard = self.tenanted.lock().unwrap_or_else(|e| e.into_inner());
        let tenant = guard.tenants.id(&ctx.tenant_id());
        f(&mut guard, tenant)
    }

    /// A run ended with `status` after `took`.
    pub fn run_finished(&self, ctx: &TenantCtx, status: &'static str, took: Duration) {
        self.tenanted(ctx, |m, t| {
            *m.runs_finished.entry((t, status)).or_default() += 1;
            m.run_duration
                .entry(t)
                .or_insert_with(|| Histogram::new(RUN_BUCKETS))
                .observe(took.as_secs_f64());
        });
    }

    /// A usage event entered the ledger (once per event): its cost by kind
    /// and, for a model call (`kind == "llm"`), tokens and cost by model.
    pub fn usage(
        &self,
        ctx: &TenantCtx,
        kind: &'static str,
        name: &str,
        input_tokens: u64,
        output_tokens: u64,
        cost: Money,
    ) {
        let nanos = u64::try_from(cost.nanos()).unwrap_or(0);
        self.tenanted(ctx, |m, t| {
            *m.cost.entry((t, kind)).or_default() += nanos;
            if kind == "llm" {
                let model = m.models.id(name);
                *m.model_tokens.entry((t, model, "input")).or_default() += input_tokens;
                *m.model_tokens.entry((t, model, "output")).or_default() += output_tokens;
                *m.model_cost.entry((t, model)).or_default() += nanos;
            }
        });
    }

    /// A rate or concurrency limit refused work (`limit` is the limit's
    /// name, e.g. `requests_per_minute`, `concurrent_runs`).
    pub fn rate_limit_refused(&self, ctx: &TenantCtx, limit: &'static str) {
        self.tenanted(ctx, |m, t| *m.rate_refusals.entry((t, limit)).or_default() += 1);
    }

    /// The budget of `period` did not cover work.
    pub fn budget_refused(&self, ctx: &TenantCtx, period: &'static str) {
        self.tenanted(ctx, |m, t| *m.budget_refusals.entry((t, period)).or_default() += 1);
    }

    /// A policy refused work: `scope` is what refused (`tool`, `egress`,
    /// `sandbox`), `reason` its stable code.
    pub fn policy_refused(&self, ctx: &TenantCtx, scope: &'static str, reason: &'static str) {
        self.tenanted(ctx, |m, t| *m.policy_refusals.entry((t, scope, reason)).or_default() += 1);
    }

    /// A sandbox execution ended (`outcome`: `success`, `failure`,
    /// `timeout`, `limit_exceeded`, `refused`, `error`) having used `cpu`.
    pub fn sandbox_execution(&self, ctx: &TenantCtx, outcome: &'static str, cpu: Duration) {
        let nanos = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
        self.tenanted(ctx, |m, t| {
            *m.sandbox_executions.entry((t, outcome)).or_default() += 1;
            let total = m.sandbox_cpu_nanos.entry(t).or_default();
            *total = total.saturating_add(nanos);
        });
    }

    /// A tool call passed the gate and ran: `kind` is the tool's kind
    /// (`builtin`, `http`, `mcp`), `outcome` its result code.
    pub fn tool_call(&self, ctx: &TenantCtx, kind: &'static str, outcome: &'static str) {
        self.tenanted(ctx, |m, t| *m.tool_calls.entry((t, kind, outcome)).or_default() += 1);
    }

    /// An HTTP request was answered. `route` is the matched route template
    /// (`None`: no route matched); `took` runs to the response head.
    pub fn http_request(&self, method: &str, route: Option<&str>, status: u16, took: Duration) {
        let method = method_label(method);
        let class = status_class(status);
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        let route = http.routes.id(route.unwrap_or("unmatched"));
        http.requests
            .entry((method, route, class))
            .or_insert_with(|| Histogram::new(HTTP_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// The exposition text: `queue` (from the store) as the queue gauges,
    /// then what this process counted.
    pub fn render(&self, queue: &[QueueDepth]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let version = env!("CARGO_PKG_VERSION");
        family(&mut out, "bulkhead_build_info", "gauge", "Always 1; the version of this process.");
        let _ = writeln!(out, "bulkhead_build_info{{version=\"{version}\"}} 1");
        family(&mut out, "bulkhead_start_time_seconds", "gauge", "When this process started (Unix time).");
        let _ = writeln!(out, "bulkhead_start_time_seconds {}", self.started);

        {
            let mut m = self.tenanted.lock().unwrap_or_else(|e| e.into_inner());
            let mut depth: HashMap<Id, (i64, i64)> = HashMap::new();
            for q in queue {
                let t = m.tenants.id(&q.tenant);
                let d = depth.entry(t).or_default();
                d.0 += q.queued;
                d.1 += q.running;
            }
            let m = &*m;
            let tenant = |t: &Id| format!("tenant=\"{}\"", m.tenants.name(*t));
            gauge(
                &mut out,
                "bulkhead_runs_queued",
                "Runs waiting in the queue (whole store).",
                depth.iter().map(|(t, d)| (tenant(t), d.0)),
            );
            gauge(
                &mut out,
                "bulkhead_runs_active",
                "Runs being executed (whole store).",
                depth.iter().map(|(t, d)| (tenant(t), d.1)),
            );
            counter(
                &mut out,
                "bulkhead_runs_finished_total",
                "Runs finished by this process, by status.",
                m.runs_finished.iter().map(|((t, s), n)| (format!("{},status=\"{s}\"", tenant(t)), *n)),
            );
            family(
                &mut out,
                "bulkhead_run_duration_seconds",
                "histogram",
                "Wall time of runs finished by this process.",
            );
            let mut runs: Vec<_> = m.run_duration.iter().map(|(t, h)| (tenant(t), h)).collect();
            runs.sort_by(|a, b| a.0.cmp(&b.0));
            for (labels, h) in runs {
                h.render(&mut out, "bulkhead_run_duration_seconds", &labels);
            }
            counter(
                &mut out,
                "bulkhead_model_tokens_total",
                "Model tokens, by tenant, model and direction.",
                m.model_tokens.iter().map(|((t, model, dir), n)| {
                    (format!("{},model=\"{}\",direction=\"{dir}\"", tenant(t), m.models.name(*model)), *n)
                }),
            );
            dollars(
                &mut out,
                "bulkhead_model_cost_dollars_total",
                "Cost of model calls in US dollars, by tenant and model.",
                m.model_cost.iter().map(|((t, model), n)| {
                    (format!("{},model=\"{}\"", tenant(t), m.models.name(*model)), *n)
                }),
            );
            dollars(
                &mut out,
                "bulkhead_cost_dollars_total",
                "Cost of all metered usage in US dollars, by tenant and usage kind.",
                m.cost.iter().map(|((t, kind), n)| (format!("{},kind=\"{kind}\"", tenant(t)), *n)),
            );
            counter(
                &mut out,
                "bulkhead_rate_limit_refusals_total",
                "Work refused by a rate or concurrency limit, by tenant and limit.",
                m.rate_refusals.iter().map(|((t, l), n)| (format!("{},limit=\"{l}\"", tenant(t)), *n)),
            );
            counter(
                &mut out,
                "bulkhead_budget_refusals_total",
                "Work refused because the budget did not cover it, by tenant and budget period.",
                m.budget_refusals.iter().map(|((t, p), n)| (format!("{},period=\"{p}\"", tenant(t)), *n)),
            );
            counter(
                &mut out,
                "bulkhead_policy_refusals_total",
                "Work refused by a policy (tool gate, egress, sandbox), by tenant, scope and reason.",
                m.policy_refusals
                    .iter()
                    .map(|((t, s, r), n)| (format!("{},scope=\"{s}\",reason=\"{r}\"", tenant(t)), *n)),
            );
            counter(
                &mut out,
                "bulkhead_sandbox_executions_total",
                "Sandbox executions, by tenant and outcome.",
                m.sandbox_executions.iter().map(|((t, o), n)| (format!("{},outcome=\"{o}\"", tenant(t)), *n)),
            );
            family(
                &mut out,
                "bulkhead_sandbox_cpu_seconds_total",
                "counter",
                "CPU time used in the sandbox, by tenant.",
            );
            let mut cpu: Vec<_> =
                m.sandbox_cpu_nanos.iter().map(|(t, n)| (tenant(t), *n as f64 / 1e9)).collect();
            cpu.sort_by(|a, b| a.0.cmp(&b.0));
            for (labels, secs) in cpu {
                let _ = writeln!(out, "bulkhead_sandbox_cpu_seconds_total{{{labels}}} {secs}");
            }
            counter(
                &mut out,
                "bulkhead_tool_calls_total",
                "Tool calls that passed the gate, by tenant, tool kind and outcome.",
                m.tool_calls
                    .iter()
                    .map(|((t, k, o), n)| (format!("{},kind=\"{k}\",outcome=\"{o}\"", tenant(t)), *n)),
            );
        }

        let http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        family(
            &mut out,
            "bulkhead_http_request_duration_seconds",
            "histogram",
            "HTTP request latency to the response head, by method, route template and status class.",
        );
        let mut requests: Vec<_> = http
            .requests
            .iter()
            .map(|((method, route, class), h)| {
                (format!("method=\"{method}\",route=\"{}\",status=\"{class}\"", http.routes.name(*route)), h)
            })
            .collect();
        requests.sort_by(|a, b| a.0.cmp(&b.0));
        for (labels, h) in requests {
            h.render(&mut out, "bulkhead_http_request_duration_seconds", &labels);
        }
        out
    }

    /// Tenant label values in use (at most the cap; `other` not counted).
    pub fn tenant_labels(&self) -> usize {
        self.tenanted.lock().unwrap_or_else(|e| e.into_inner()).tenants.names.len()
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes a family's samples sorted by their labels (stable scrapes).
fn samples<V: Display>(out: &mut String, name: &str, rows: impl Iterator<Item = (String, V)>) {
    let mut rows: Vec<_> = rows.collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

fn counter(out: &mut String, name: &str, help: &str, rows: impl Iterator<Item = (String, u64)>) {
    family(out, name, "counter", help);
    samples(out, name, rows);
}

fn gauge(out: &mut String, name: &str, help: &str, rows: impl Iterator<Item = (String, i64)>) {
    family(out, name, "gauge", help);
    samples(out, name, rows);
}

/// A counter kept in nano-dollars, shown in dollars.
fn dollars(out: &mut String, name: &str, help: &str, rows: impl Iterator<Item = (String, u64)>) {
    family(out, name, "counter", help);
    samples(out, name, rows.map(|(l, nanos)| (l, nanos as f64 / 1e9)));
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => OTHER,
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

// The process-wide recording calls, one line at each record point.

/// See [`Registry::run_finished`].
pub fn run_finished(ctx: &TenantCtx, status: &'static str, took: Duration) {
    GLOBAL.run_finished(ctx, status, took);
}

/// See [`Registry::usage`].
pub fn usage(
    ctx: &TenantCtx,
    kind: &'static str,
    name: &str,
    input_tokens: u64,
    output_tokens: u64,
    cost: Money,
) {
    GLOBAL.usage(ctx, kind, name, input_tokens, output_tokens, cost);
}

/// See [`Registry::rate_limit_refused`].
pub fn rate_limit_refused(ctx: &TenantCtx, limit: &'static str) {
    GLOBAL.rate_limit_refused(ctx, limit);
}

/// See [`Registry::budget_refused`].
pub fn budget_refused(ctx: &TenantCtx, period: &'static str) {
    GLOBAL.budget_refused(ctx, period);
}

/// See [`Registry::policy_refused`].
pub fn policy_refused(ctx: &TenantCtx, scope: &'static str, reason: &'static str) {
    GLOBAL.policy_refused(ctx, scope, reason);
}

/// See [`Registry::sandbox_execution`].
pub fn sandbox_execution(ctx: &TenantCtx, outcome: &'static str, cpu: Duration) {
    GLOBAL.sandbox_execution(ctx, outcome, cpu);
}

/// See [`Registry::tool_call`].
pub fn tool_call(ctx: &TenantCtx, kind: &'static str, outcome: &'static str) {
    GLOBAL.tool_call(ctx, kind, outcome);
}

/// See [`Registry::http_request`].
pub fn http_request(method: &str, route: Option<&str>, status: u16, took: Duration) {
    GLOBAL.http_request(method, route, status, took);
}

/// See [`Registry::render`].
pub fn render(queue: &[QueueDepth]) -> String {
    GLOBAL.render(queue)
}

#[cfg(test)]
mod tests;
