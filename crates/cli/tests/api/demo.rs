//! `bulkhead demo`, the README's main job: its report, for people and for
//! machines, says what the issue asks — two tenants in different tiers with
//! different models, budgets and limits; answers from their own knowledge,
//! tools and sandbox; a refused sandbox call and a budget stop; audit
//! entries whose chains verify; and neither canary on the other side.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

fn demo(args: &[&str]) -> std::process::Output {
    let model = crate::common::minilm_dir().expect(
        "the demo needs the embedding model: BULKHEAD_MINILM_DIR=$(bash scripts/models.sh | tail -n 1)",
    );
    Command::new(BIN)
        .arg("demo")
        .args(args)
        .env_remove("RUST_LOG")
        .env("BULKHEAD_MINILM_DIR", model)
        .output()
        .expect("run bulkhead demo")
}

#[test]
fn the_demo_reports_two_isolated_tenants_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let out = demo(&["--json", "--data-dir", data.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("--json prints one JSON document");
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["store"], "sqlite");

    let tenants = r["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 2);
    let (a, b) = (&tenants[0], &tenants[1]);
    assert_ne!(a["tier"], b["tier"], "different tiers");
    assert_ne!(a["model_alias"], b["model_alias"], "different model configurations");
    assert_ne!(a["price_in_out_per_mtok_usd"], b["price_in_out_per_mtok_usd"]);
    assert_ne!(a["budget_usd"], b["budget_usd"], "different budgets");
    assert_ne!(a["limits"], b["limits"], "different limits");

    for t in tenants {
        let name = t["name"].as_str().unwrap();
        let canary = t["canary"].as_str().unwrap();
        let convs = t["conversations"].as_array().unwrap();
        assert!(convs.len() >= 5, "{name}: several conversations");
        // Its own knowledge answers, through the agent's knowledge_search.
        assert!(convs[0]["answer"].as_str().unwrap().contains(canary), "{name}: {:#}", convs[0]);
        // The HTTP tool reached the tenant's own account with its own key.
        let stock = convs[1]["answer"].as_str().unwrap();
        assert!(stock.contains(&format!("\"account\":\"{name}\"")), "{name}: {stock}");
        assert!(t["steps"].as_u64().unwrap() > t["runs"].as_u64().unwrap(), "{name}: tool steps counted");
        assert!(t["input_tokens"].as_u64().unwrap() > 0 && t["output_tokens"].as_u64().unwrap() > 0);
        let spent: f64 = t["cost_usd"].as_str().unwrap().parse().unwrap();
        let left: f64 = t["budget_left_usd"].as_str().unwrap().parse().unwrap();
        let budget: f64 = t["budget_usd"].as_str().unwrap().parse().unwrap();
        assert!(spent > 0.0, "{name}: cost recorded");
        assert!(
            (budget - spent - left).abs() < 1e-9,
            "{name}: budget {budget} = spent {spent} + left {left}"
        );
        assert!(t["audit_entries"].as_u64().unwrap() > 5, "{name}: audited");
        assert!(t["audit_chain"].as_str().unwrap().starts_with("verified"), "{name}: {}", t["audit_chain"]);
    }

    // The sandboxed tenant's code ran; the other's was refused by policy.
    let (with_sandbox, without) = if a["sandbox"] == true { (a, b) } else { (b, a) };
    assert!(with_sandbox["conversations"][2]["answer"].as_str().unwrap().contains("59.97"));
    let refused = without["refusals"].as_array().unwrap();
    assert!(refused.iter().any(|f| f["code"] == "sandbox_disabled"), "{refused:?}");
    // The budget stop: a run failed with budget_exceeded, after completed ones.
    let stopped: Vec<&Value> = tenants
        .iter()
        .flat_map(|t| t["conversations"].as_array().unwrap())
        .filter(|c| c["error"] == "budget_exceeded")
        .collect();
    assert_eq!(stopped.len(), 1, "one run stopped by the budget");

    // The isolation checks, and the canaries looked for once more here.
    let checks = r["isolation"].as_array().unwrap();
    assert!(checks.len() >= 6 && checks.iter().all(|c| c["passed"] == true), "{checks:#?}");
    for (t, other) in [(a, b), (b, a)] {
        let own = serde_json::to_string(&t["conversations"]).unwrap();
        assert!(
            !own.contains(other["canary"].as_str().unwrap()),
            "{} holds {}'s canary",
            t["name"],
            other["name"]
        );
    }

    // --data-dir keeps the data: the operator's CLI sees both tenants there.
    let listed = Command::new(BIN)
        .args(["tenant", "list", "--data-dir", data.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for t in tenants {
        assert!(listed.contains(t["name"].as_str().unwrap()), "{listed}");
    }
    // The isolated tenant's data is in its own SQLite file.
    for t in tenants {
        let own = data.join("tenants").join(format!("{}.db", t["id"].as_str().unwrap()));
        assert_eq!(own.exists(), t["tier"] == "isolated", "{}: {}", t["name"], own.display());
    }
    // A second demo on the same directory refuses rather than mixing in.
    let again = demo(&["--json", "--data-dir", data.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("fresh --data-dir"));
}

#[test]
fn the_demo_prints_tables_for_people() {
    let out = demo(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    for heading in
        ["TENANTS", "CONVERSATIONS OF ACME", "CONVERSATIONS OF GLOBEX", "PER TENANT", "REFUSALS", "CHECKS"]
    {
        assert!(stdout.contains(heading), "no {heading} in:\n{stdout}");
    }
    for column in ["tokens in/out", "budget left", "audit entries", "audit chain"] {
        assert!(stdout.contains(column), "no {column} column in:\n{stdout}");
    }
    assert!(stdout.contains("budget_exceeded") && stdout.contains("sandbox_disabled"), "{stdout}");
    assert!(stdout.contains("All checks passed."), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
