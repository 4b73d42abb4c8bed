use std::collections::BTreeSet;

use bulkhead_core::OperatorCtx;

use super::*;

fn tenant() -> TenantCtx {
    OperatorCtx::local_cli().act_for(TenantId::new())
}

/// The distinct values of `label` on the samples of `family`.
fn label_values(text: &str, family: &str, label: &str) -> BTreeSet<String> {
    let needle = format!("{label}=\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| {
            let start = l.find(&needle)? + needle.len();
            let end = start + l[start..].find('"')?;
            Some(l[start..end].to_owned())
        })
        .collect()
}

#[test]
fn tenant_labels_stop_growing_at_the_cap_and_the_rest_is_other() {
    let reg = Registry::new(3);
    let tenants: Vec<TenantCtx> = (0..10).map(|_| tenant()).collect();
    for (i, ctx) in tenants.iter().enumerate() {
        reg.tool_call(ctx, "builtin", "ok");
        reg.rate_limit_refused(ctx, "requests_per_minute");
        reg.run_finished(ctx, "completed", Duration::from_millis(10 * i as u64));
        assert!(reg.tenant_labels() <= 3);
    }
    assert_eq!(reg.tenant_labels(), 3);
    // The queue gauges go through the same cap.
    let queue: Vec<QueueDepth> =
        tenants.iter().map(|c| QueueDepth { tenant: c.tenant_id(), queued: 2, running: 1 }).collect();
    let text = reg.render(&queue);
    for family in ["bulkhead_tool_calls_total", "bulkhead_rate_limit_refusals_total", "bulkhead_runs_queued"]
    {
        let values = label_values(&text, family, "tenant");
        let expected: BTreeSet<String> =
            tenants[..3].iter().map(|c| c.tenant_id().to_string()).chain([OTHER.to_owned()]).collect();
        assert_eq!(values, expected, "{family}");
    }
    // Totals stay right: the 7 tenants past the cap are summed into `other`.
    assert!(
        text.contains("bulkhead_tool_calls_total{tenant=\"other\",kind=\"builtin\",outcome=\"ok\"} 7\n"),
        "{text}"
    );
    assert!(text.contains("bulkhead_runs_queued{tenant=\"other\"} 14\n"), "{text}");
    assert!(text.contains("bulkhead_run_duration_seconds_count{tenant=\"other\"} 7\n"), "{text}");
    // A tenant already labelled keeps its label after the cap is reached.
    reg.tool_call(&tenants[0], "builtin", "ok");
    let text = reg.render(&[]);
    let first = format!(
        "bulkhead_tool_calls_total{{tenant=\"{}\",kind=\"builtin\",outcome=\"ok\"}} 2\n",
        tenants[0].tenant_id()
    );
    assert!(text.contains(&first), "{text}");
}

#[test]
fn models_and_routes_are_capped_too() {
    let reg = Registry::new(10);
    let ctx = tenant();
    for i in 0..MAX_MODEL_LABELS + 5 {
        reg.usage(&ctx, "llm", &format!("model-{i}"), 1, 1, Money::from_nanos(1));
    }
    let text = reg.render(&[]);
    assert_eq!(label_values(&text, "bulkhead_model_cost_dollars_total", "model").len(), MAX_MODEL_LABELS + 1);
    for i in 0..MAX_ROUTE_LABELS + 5 {
        reg.http_request("GET", Some(&format!("/r{i}")), 200, Duration::from_millis(1));
    }
    let text = reg.render(&[]);
    let routes = label_values(&text, "bulkhead_http_request_duration_seconds_count", "route");
    assert_eq!(routes.len(), MAX_ROUTE_LABELS + 1);
    assert!(routes.contains(OTHER));
}

#[test]
fn values_render_in_their_units() {
    let reg = Registry::new(10);
    let ctx = tenant();
    let t = ctx.tenant_id();
    reg.usage(&ctx, "llm", "m\"1", 100, 20, Money::from_nanos(1_500_000_000));
    reg.usage(&ctx, "llm", "m\"1", 1, 2, Money::from_nanos(500_000_000));
    reg.usage(&ctx, "sandbox", "sandbox/python", 0, 0, Money::from_nanos(250));
    reg.sandbox_execution(&ctx, "success", Duration::from_millis(1500));
    reg.http_request("BREW", None, 418, Duration::from_millis(30));
    reg.http_request("GET", Some("/v1/agents/{agent_id}"), 200, Duration::from_millis(3));
    reg.http_request("GET", Some("/v1/agents/{agent_id}"), 204, Duration::from_millis(70));
    let text = reg.render(&[]);
    for line in [
        format!("bulkhead_model_tokens_total{{tenant=\"{t}\",model=\"m\\\"1\",direction=\"input\"}} 101"),
        format!("bulkhead_model_tokens_total{{tenant=\"{t}\",model=\"m\\\"1\",direction=\"output\"}} 22"),
        format!("bulkhead_model_cost_dollars_total{{tenant=\"{t}\",model=\"m\\\"1\"}} 2"),
        format!("bulkhead_cost_dollars_total{{tenant=\"{t}\",kind=\"llm\"}} 2"),
        format!("bulkhead_cost_dollars_total{{tenant=\"{t}\",kind=\"sandbox\"}} 0.00000025"),
        format!("bulkhead_sandbox_cpu_seconds_total{{tenant=\"{t}\"}} 1.5"),
        "bulkhead_http_request_duration_seconds_bucket{method=\"other\",route=\"unmatched\",status=\"4xx\",le=\"0.025\"} 0".into(),
        "bulkhead_http_request_duration_seconds_bucket{method=\"other\",route=\"unmatched\",status=\"4xx\",le=\"0.05\"} 1".into(),
        // Two requests, one under 5 ms: buckets are cumulative.
        "bulkhead_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/agents/{agent_id}\",status=\"2xx\",le=\"0.005\"} 1".into(),
        "bulkhead_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/agents/{agent_id}\",status=\"2xx\",le=\"0.1\"} 2".into(),
        "bulkhead_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/agents/{agent_id}\",status=\"2xx\",le=\"+Inf\"} 2".into(),
        "bulkhead_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/agents/{agent_id}\",status=\"2xx\"} 2".into(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
}
