//! The cross-tenant suite (invariant 1). Tenant A's data carries canaries;
//! tenant B calls every tenant-scoped endpoint — also aimed at A's ids — and
//! no response may carry anything of A's, and A's objects answer 404.
//!
//! To add an endpoint: plant A's data in `plant`, and add a line to `probes`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{TestServer, TestTenant, canary};

/// What B should get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// B's own data (2xx); must hold nothing of A's.
    Own,
    /// A's object, addressed by id: 404 as if it did not exist.
    NotFound,
    /// An operator route: a tenant key is refused.
    Forbidden,
}

struct Probe {
    method: Method,
    /// `{a_tenant}`, `{a_admin_key}`, `{a_app_key}` stand for A's ids.
    path: &'static str,
    body: Option<Value>,
    expect: Expect,
}

fn probe(method: Method, path: &'static str, expect: Expect) -> Probe {
    Probe { method, path, body: None, expect }
}

fn probes() -> Vec<Probe> {
    use Expect::*;
    vec![
        probe(Method::GET, "/v1/tenant", Own),
        probe(Method::GET, "/v1/keys", Own),
        probe(Method::GET, "/v1/keys?limit=500", Own),
        Probe { method: Method::POST, path: "/v1/keys", body: Some(json!({"name": "b's own"})), expect: Own },
        probe(Method::GET, "/v1/keys/{a_admin_key}", NotFound),
        probe(Method::GET, "/v1/keys/{a_app_key}", NotFound),
        probe(Method::DELETE, "/v1/keys/{a_app_key}", NotFound),
        probe(Method::GET, "/v1/tenants", Forbidden),
        probe(Method::GET, "/v1/tenants/{a_tenant}", Forbidden),
        Probe {
            method: Method::PATCH,
            path: "/v1/tenants/{a_tenant}",
            body: Some(json!({"name": "stolen"})),
            expect: Forbidden,
        },
        probe(Method::DELETE, "/v1/tenants/{a_tenant}", Forbidden),
        probe(Method::POST, "/v1/tenants/{a_tenant}/suspend", Forbidden),
        probe(Method::GET, "/v1/tenants/{a_tenant}/keys", Forbidden),
        Probe {
            method: Method::POST,
            path: "/v1/tenants/{a_tenant}/keys",
            body: Some(json!({"name": "x"})),
            expect: Forbidden,
        },
        probe(Method::DELETE, "/v1/tenants/{a_tenant}/keys/{a_app_key}", Forbidden),
        probe(Method::GET, "/v1/operator-keys", Forbidden),
        probe(Method::GET, "/v1/usage", Own),
        probe(Method::GET, "/v1/usage?group_by=day,model,agent,kind", Own),
        probe(Method::GET, "/v1/usage/export", Own),
        probe(Method::GET, "/v1/usage/export?format=cloudevents", Own),
        probe(Method::GET, "/v1/budget", Own),
        probe(Method::GET, "/v1/limits", Own),
        Probe {
            method: Method::POST,
            path: "/v1/usage/events",
            body: Some(json!({"events": []})),
            expect: Forbidden,
        },
        probe(Method::GET, "/v1/tenants/{a_tenant}/budget", Forbidden),
        Probe {
            method: Method::PUT,
            path: "/v1/tenants/{a_tenant}/budget",
            body: Some(json!({})),
            expect: Forbidden,
        },
        probe(Method::DELETE, "/v1/tenants/{a_tenant}/budget", Forbidden),
        probe(Method::GET, "/v1/tenants/{a_tenant}/limits", Forbidden),
        Probe {
            method: Method::PUT,
            path: "/v1/tenants/{a_tenant}/limits",
            body: Some(json!({})),
            expect: Forbidden,
        },
        probe(Method::GET, "/v1/tenants/{a_tenant}/pricing", Forbidden),
        Probe {
            method: Method::PUT,
            path: "/v1/tenants/{a_tenant}/pricing",
            body: Some(json!({})),
            expect: Forbidden,
        },
    ]
}

/// Puts a canary into every piece of A's data that exists.
async fn plant(server: &TestServer) -> (TestTenant, Vec<String>) {
    let tenant_canary = canary("tenant-metadata");
    let a = server
        .tenant(
            &format!("a-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            json!({"note": tenant_canary}),
        )
        .await;
    let key_canary = canary("key-name");
    server.post("/v1/keys", &a.admin_key, json!({"name": key_canary})).await.expect(201);
    // Everything that identifies A is as secret from B as its content.
    let canaries = vec![
        tenant_canary,
        key_canary,
        a.id.clone(),
        a.name.clone(),
        a.admin_key_id.clone(),
        a.app_key_id.clone(),
    ];
    (a, canaries)
}

fn fill(path: &str, a: &TestTenant) -> String {
    path.replace("{a_tenant}", &a.id)
        .replace("{a_admin_key}", &a.admin_key_id)
        .replace("{a_app_key}", &a.app_key_id)
}

async fn tenant_b_sees_nothing_of_a(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let (a, canaries) = plant(&server).await;
    let b = server.tenant("tenant-b", json!({"note": "b"})).await;

    for p in probes() {
        let path = fill(p.path, &a);
        for (who, key) in [("b admin", &b.admin_key), ("b app", &b.app_key)] {
            let res = server.call(p.method.clone(), &path, Some(key), p.body.clone()).await;
            for c in &canaries {
                assert!(
                    !res.text.contains(c.as_str()),
                    "{who} {} {path}: response leaks A's {c:?}: {}",
                    p.method,
                    res.text
                );
            }
            let status = res.status.as_u16();
            match (p.expect, who) {
                (Expect::Own, "b admin") => {
                    assert!(res.status.is_success(), "{who} {} {path}: {}", p.method, res.text)
                }
                (Expect::NotFound, "b admin") => res.expect_error(404, "not_found"),
                (Expect::Forbidden, _) => res.expect_error(403, "forbidden"),
                // An app key may be refused admin routes, but never sees A.
                (_, _) => assert!(
                    res.status.is_success() || [403, 404].contains(&status),
                    "{who} {path}: {}",
                    res.text
                ),
            }
            // Naming A in X-Tenant-ID with a tenant key is refused outright.
            let res = server
                .call_with(p.method.clone(), &path, Some(key), p.body.clone(), &[("x-tenant-id", &a.id)])
                .await;
            res.expect_error(403, "forbidden");
        }
    }

    // A's limits, budget and spend are not B's.
    let limits = server.get("/v1/limits", &b.app_key).await;
    assert_ne!(limits.expect(200)["requests_per_minute"], 4321);
    let budget = server.get("/v1/budget", &b.admin_key).await;
    let budget = budget.expect(200);
    assert!(
        budget["monthly_limit_usd"].is_null() && budget["alerts"].as_array().unwrap().is_empty(),
        "{budget}"
    );
    assert_eq!(budget["spent_month_usd"], "0.00");

    // A is untouched: its keys still work and are not revoked.
    let keys = server.get("/v1/keys", &a.admin_key).await;
    let keys = keys.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k["revoked_at"].is_null()), "{keys:?}");
    let own = server.get("/v1/tenant", &a.app_key).await;
    assert_eq!(own.expect(200)["name"], a.name.as_str());
}
both_backends!(tenant_b_sees_nothing_of_a);

async fn operator_acting_for_a_tenant_sees_only_that_tenant(backend: &'static str) {
    let server = TestServer::start(backend).await;
    let (a, canaries) = plant(&server).await;
    let b = server.tenant("tenant-b", json!({})).await;
    let op = server.operator_key.as_str();
    let res = server.call_with(Method::GET, "/v1/keys", Some(op), None, &[("x-tenant-id", &b.id)]).await;
    let body = res.expect(200);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    for c in &canaries {
        assert!(!res.text.contains(c.as_str()));
    }
    // The operator must name a tenant, and it must exist.
    server.get("/v1/keys", op).await.expect_error(403, "forbidden");
    let ghost = uuid::Uuid::now_v7().to_string();
    server
        .call_with(Method::GET, "/v1/keys", Some(op), None, &[("x-tenant-id", &ghost)])
        .await
        .expect_error(404, "not_found");
    server
        .call_with(Method::GET, "/v1/keys", Some(op), None, &[("x-tenant-id", "nope")])
        .await
        .expect_error(400, "invalid_request");
    // Acting for A works and shows A's keys.
    let res = server.call_with(Method::GET, "/v1/tenant", Some(op), None, &[("x-tenant-id", &a.id)]).await;
    assert_eq!(res.expect(200)["id"], a.id.as_str());
}
both_backends!(operator_acting_for_a_tenant_sees_only_that_tenant);
