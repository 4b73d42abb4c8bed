//! The `bulkhead` binary itself: first start, graceful stop, configuration
//! from the environment, the admin commands and their `--help`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

fn bulkhead(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run bulkhead")
}

struct Served {
    child: Child,
    base: String,
    stdout_lines: Vec<String>,
}

/// Starts `bulkhead serve` and reads stdout up to its `listening on` line.
/// The child is reaped by `terminate`.
#[allow(clippy::zombie_processes)]
fn serve(args: &[&str], envs: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn serve");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "serve exited early; stdout: {lines:?}"
        );
        let line = line.trim_end().to_owned();
        if let Some(base) = line.strip_prefix("listening on ") {
            let base = base.to_owned();
            lines.push(line);
            return Served {
                child,
                base,
                stdout_lines: lines,
            };
        }
        lines.push(line);
    }
}

fn terminate(mut served: Served) -> std::process::ExitStatus {
    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    for _ in 0..200 {
        if let Some(status) = served.child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    served.child.kill().ok();
    panic!("serve did not stop within 5 s of SIGTERM");
}

fn operator_key(served: &Served) -> Option<String> {
    served.stdout_lines.iter().find_map(|l| {
        l.split_whitespace()
            .find(|w| w.starts_with("bh_op_"))
            .map(str::to_owned)
    })
}

#[tokio::test]
async fn first_start_prints_an_operator_key_once_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let served = serve(&["--data-dir", data], &[]);
    let key = operator_key(&served).expect("first start prints the operator key");
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{}/v1/tenants", served.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(terminate(served).success(), "SIGTERM is a clean exit");

    // A second start on the same store prints no new key, and the old one works.
    let served = serve(&["--data-dir", data], &[]);
    assert_eq!(operator_key(&served), None, "{:?}", served.stdout_lines);
    let res = http
        .get(format!("{}/v1/tenants", served.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(terminate(served).success());
}

#[tokio::test]
async fn operator_key_and_data_dir_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("bh_op_0123456789ab_{}", "k".repeat(43));
    let served = serve(
        &[],
        &[
            ("BULKHEAD_OPERATOR_KEY", &key),
            ("BULKHEAD_DATA_DIR", dir.path().to_str().unwrap()),
        ],
    );
    assert_eq!(
        operator_key(&served),
        None,
        "a configured key is not printed"
    );
    let res = reqwest::Client::new()
        .get(format!("{}/v1/tenants", served.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(terminate(served).success());
    assert!(
        dir.path().join("bulkhead.db").exists(),
        "the store went where BULKHEAD_DATA_DIR said"
    );

    let bad = serve_fails(&[
        ("BULKHEAD_OPERATOR_KEY", "not-a-key"),
        ("BULKHEAD_DATA_DIR", dir.path().to_str().unwrap()),
    ]);
    assert!(bad.contains("bh_op_"), "{bad}");
}

fn serve_fails(envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn admin_commands_manage_tenants_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let ok = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", data]);
        let out = bulkhead(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let created = ok(&[
        "tenant",
        "create",
        "acme",
        "--tier",
        "isolated",
        "--metadata",
        r#"{"plan":"gold"}"#,
        "--json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created[0]["tier"], "isolated");
    assert!(ok(&["tenant", "list"]).contains("acme"));
    let key = ok(&[
        "key",
        "create",
        "--tenant",
        "acme",
        "--scope",
        "tenant_admin",
        "--json",
    ]);
    let key: serde_json::Value = serde_json::from_str(&key).unwrap();
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("bh_tk_"));
    assert!(
        !ok(&["key", "list", "--tenant", "acme"]).contains(&secret),
        "listing never shows secrets"
    );

    let failed = bulkhead(&["tenant", "create", "Bad Name", "--data-dir", data]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("invalid_request"));

    // The key made at the console works against the server on the same store.
    let served = serve(&["--data-dir", data], &[]);
    let res = reqwest::Client::new()
        .get(format!("{}/v1/keys", served.base))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    ok(&["tenant", "suspend", "acme"]);
    let res = reqwest::Client::new()
        .get(format!("{}/v1/keys", served.base))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(terminate(served).success());

    let refused = bulkhead(&["tenant", "delete", "acme", "--data-dir", data]);
    assert!(!refused.status.success(), "delete needs --yes");
    ok(&["tenant", "delete", "acme", "--yes"]);
    assert!(!ok(&["tenant", "list"]).contains("acme"));
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["tenant", "--help"],
        &["tenant", "create", "--help"],
        &["tenant", "list", "--help"],
        &["tenant", "show", "--help"],
        &["tenant", "update", "--help"],
        &["tenant", "suspend", "--help"],
        &["tenant", "resume", "--help"],
        &["tenant", "delete", "--help"],
        &["key", "--help"],
        &["key", "create", "--help"],
        &["key", "list", "--help"],
        &["key", "revoke", "--help"],
    ] {
        let out = bulkhead(args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn migrate_works_on_postgres() {
    if bulkhead_store::testing::pg_admin_url().is_none() {
        return;
    }
    let url = bulkhead_store::testing::fresh_pg_database().await.unwrap();
    for _ in 0..2 {
        let out = bulkhead(&["migrate", "--database-url", &url]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("postgres"));
    }
}
