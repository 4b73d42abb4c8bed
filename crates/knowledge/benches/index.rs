//! The vector index at scale: `cargo bench -p bulkhead-knowledge --bench index`.
//!
//! Clustered synthetic data (uniform random vectors in 384 dimensions have
//! no neighbours worth the name, which no real embedding set looks like):
//! `BENCH_CLUSTERS` random unit centres, each point its centre plus
//! Gaussian noise of total length `BENCH_SPREAD`, normalised — with spread
//! 1.0 a point has cosine ~0.7 to its centre and ~0.5 to its cluster mates.
//! Queries are fresh points from the same mixture.
//!
//! Reports: loading time, graph build time, search p50/p99 and recall@10
//! against exact search (for several `ef_search`), exact search p50,
//! searches with tombstones and with a filter, memory (RSS and
//! `memory_bytes`).
//!
//! Sizes and parameters come from the environment, so the same program
//! answers other questions: `BENCH_N` (100000), `BENCH_DIMS` (384),
//! `BENCH_QUERIES` (1000), `BENCH_K` (10), `BENCH_CLUSTERS` (300),
//! `BENCH_SPREAD` (1.0), `BENCH_SEED`, `BENCH_EXACT_LIMIT`, `BENCH_M`,
//! `BENCH_EF_CONSTRUCTION`, `BENCH_EF_SEARCH`, `BENCH_BUILD_THREADS` (the
//! last five default to `IndexConfig::default()`), and `BENCH_EF_SWEEP`
//! (comma-separated `ef_search` values; default "32,64,96,128,192").

use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bulkhead_knowledge::index::{IndexConfig, VectorIndex};

fn env<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("{name}={value} does not parse")),
        Err(_) => default,
    }
}

/// SplitMix64 and Box–Muller: seeded data without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(f64::MIN_POSITIVE);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

struct Mixture {
    centres: Vec<Vec<f32>>,
    sigma: f32,
}

impl Mixture {
    fn new(rng: &mut Rng, clusters: usize, dims: usize, spread: f64) -> Self {
        let centres =
            (0..clusters).map(|_| normalised((0..dims).map(|_| rng.normal() as f32).collect())).collect();
        Mixture { centres, sigma: (spread / (dims as f64).sqrt()) as f32 }
    }

    fn sample(&self, rng: &mut Rng) -> Vec<f32> {
        let centre = &self.centres[(rng.next_u64() % self.centres.len() as u64) as usize];
        normalised(centre.iter().map(|c| c + self.sigma * rng.normal() as f32).collect())
    }
}

/// Resident set size, from /proc (Linux); 0 elsewhere.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Times `search` over every query; returns (p50, p99, results).
fn timed<F>(queries: &[Vec<f32>], mut search: F) -> (Duration, Duration, Vec<Vec<i64>>)
where
    F: FnMut(&[f32]) -> Vec<(i64, f32)>,
{
    let mut times = Vec::with_capacity(queries.len());
    let mut results = Vec::with_capacity(queries.len());
    for query in queries {
        let started = Instant::now();
        let hits = search(query);
        times.push(started.elapsed());
        results.push(hits.into_iter().map(|(id, _)| id).collect());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99), results)
}

fn recall(truth: &[Vec<i64>], got: &[Vec<i64>]) -> f64 {
    let mut found = 0;
    let mut total = 0;
    for (t, g) in truth.iter().zip(got) {
        let t: HashSet<i64> = t.iter().copied().collect();
        found += g.iter().filter(|id| t.contains(id)).count();
        total += t.len();
    }
    found as f64 / total.max(1) as f64
}

fn main() {
    let n: usize = env("BENCH_N", 100_000);
    let dims: usize = env("BENCH_DIMS", 384);
    let n_queries: usize = env("BENCH_QUERIES", 1000);
    let k: usize = env("BENCH_K", 10);
    let clusters: usize = env("BENCH_CLUSTERS", 300);
    let spread: f64 = env("BENCH_SPREAD", 1.0);
    let seed: u64 = env("BENCH_SEED", 42);
    let defaults = IndexConfig::default();
    let config = IndexConfig {
        exact_limit: env("BENCH_EXACT_LIMIT", defaults.exact_limit),
        m: env("BENCH_M", defaults.m),
        ef_construction: env("BENCH_EF_CONSTRUCTION", defaults.ef_construction),
        ef_search: env("BENCH_EF_SEARCH", defaults.ef_search),
        build_threads: env("BENCH_BUILD_THREADS", defaults.build_threads),
    };
    let sweep: Vec<usize> = env("BENCH_EF_SWEEP", "32,64,96,128,192".to_string())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().expect("BENCH_EF_SWEEP: comma-separated numbers"))
        .collect();

    println!(
        "vector index: {n} vectors × {dims} dims, {clusters} clusters, spread {spread}, {n_queries} queries, k={k}"
    );
    println!("config: {config:?}");
    let mut rng = Rng(seed);
    let mixture = Mixture::new(&mut rng, clusters, dims, spread);
    let data: Vec<(i64, Vec<f32>)> = (0..n).map(|i| (i as i64, mixture.sample(&mut rng))).collect();
    let queries: Vec<Vec<f32>> = (0..n_queries).map(|_| mixture.sample(&mut rng)).collect();

    let rss_before = rss_bytes();
    let index = VectorIndex::new(dims, config);
    let started = Instant::now();
    index.insert_batch(&data).expect("valid vectors");
    let loaded = started.elapsed();
    let building = index.is_building();
    let rss_store = rss_bytes();
    let store_bytes = index.memory_bytes();
    println!("load (insert_batch, store only): {}", ms(loaded));

    // Exact search still answers while the graph builds (on a second core;
    // with build_threads = 2 the two compete and these times suffer).
    if building {
        let during: Vec<Vec<f32>> = queries.iter().take(20).cloned().collect();
        let (p50, _, _) = timed(&during, |q| index.search(q, k, None).expect("valid query"));
        println!("search during the build (exact): p50 {}", ms(p50));
    }
    assert!(index.wait_for_build(Duration::from_secs(3600)), "the build did not finish in an hour");
    let built = started.elapsed();
    if building {
        println!(
            "graph build: {:.2} s (from the end of loading: {:.2} s)",
            built.as_secs_f64(),
            (built - loaded).as_secs_f64()
        );
    }
    let rss_graph = rss_bytes();
    println!(
        "memory: store {} (memory_bytes; RSS +{}), with graph {} (memory_bytes; RSS +{})",
        mib(store_bytes),
        mib(rss_store.saturating_sub(rss_before)),
        mib(index.memory_bytes()),
        mib(rss_graph.saturating_sub(rss_before)),
    );
    println!("approximate: {}", index.is_approximate());

    let (exact_p50, exact_p99, truth) =
        timed(&queries, |q| index.search_exact(q, k, None).expect("valid query"));
    println!("exact search: p50 {} p99 {}", ms(exact_p50), ms(exact_p99));

    // Warm the caches once, then measure each ef_search.
    let (_, _, _) =
        timed(&queries[..queries.len().min(100)], |q| index.search(q, k, None).expect("valid query"));
    for &ef in &sweep {
        index.set_ef_search(ef);
        let (p50, p99, got) = timed(&queries, |q| index.search(q, k, None).expect("valid query"));
        println!(
            "graph search ef={ef:>4}: p50 {} p99 {} recall@{k} {:.4}",
            ms(p50),
            ms(p99),
            recall(&truth, &got)
        );
    }
    index.set_ef_search(config.ef_search);
    let (p50, p99, got) = timed(&queries, |q| index.search(q, k, None).expect("valid query"));
    println!(
        "graph search (configured ef={}): p50 {} p99 {} recall@{k} {:.4}",
        config.ef_search,
        ms(p50),
        ms(p99),
        recall(&truth, &got)
    );

    // Half the ids filtered out.
    let even = |id: i64| id % 2 == 0;
    let (_, _, truth_even) = timed(&queries, |q| index.search_exact(q, k, Some(&even)).expect("valid query"));
    let (p50, p99, got) = timed(&queries, |q| index.search(q, k, Some(&even)).expect("valid query"));
    println!(
        "filtered search (1 in 2 pass): p50 {} p99 {} recall@{k} {:.4}",
        ms(p50),
        ms(p99),
        recall(&truth_even, &got)
    );

    // 15% tombstones (below the rebuild share), taken from the queries'
    // own neighbourhoods first: the worst case for over-fetching.
    let target = n * 15 / 100;
    let mut removed = 0;
    'remove: for query in &queries {
        for (id, _) in index.search_exact(query, 50, None).expect("valid query") {
            if removed >= target {
                break 'remove;
            }
            removed += usize::from(index.remove(id));
        }
    }
    let mut id = 0;
    while removed < target && id < n as i64 {
        removed += usize::from(index.remove(id));
        id += 3;
    }
    assert!(!index.is_building(), "15% tombstones should not rebuild");
    let (_, _, truth_dead) = timed(&queries, |q| index.search_exact(q, k, None).expect("valid query"));
    let (p50, p99, got) = timed(&queries, |q| index.search(q, k, None).expect("valid query"));
    println!(
        "search with {removed} tombstones (near the queries): p50 {} p99 {} recall@{k} {:.4}",
        ms(p50),
        ms(p99),
        recall(&truth_dead, &got)
    );
}
