//! The tool store's behaviour on both backends: tools, MCP servers and tool
//! settings, names per tenant, and nothing visible across tenants.

use bulkhead_core::page::PageReq;
use bulkhead_core::{McpServerId, OperatorCtx, TenantCtx, Tier, ToolId};
use serde_json::{Value, json};

use crate::testing::{backends, fresh_config};
use crate::{DynStore, NewTenant, StoreError};

fn spec(name: &str, url: &str) -> Value {
    json!({"name": name, "description": "looks things up", "url_template": url,
           "parameters": {"type": "object", "properties": {}}})
}

/// A tool, an MCP server and tool settings: called by
/// `tests::plant_everything` so the table walks see these tables.
pub(crate) async fn plant_tools(store: &DynStore, ctx: &TenantCtx) {
    let canary = format!("canary-{}", ctx.tenant_id());
    store
        .create_tool(ctx, "planted", "http", &spec("planted", &format!("https://{canary}.test/")))
        .await
        .unwrap();
    let auth = json!({"secret_name": "api", "placement": {"in": "header", "name": "X-Key"}});
    store
        .create_mcp_server(ctx, "planted", &format!("https://{canary}.test/mcp"), Some(&auth))
        .await
        .unwrap();
    store
        .set_tool_settings(ctx, Some(&["planted".into()]), &json!({"allow": [format!("{canary}.test")]}))
        .await
        .unwrap();
}

async fn each_backend<F, Fut>(test: F)
where
    F: Fn(DynStore) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let config = fresh_config(backend, dir.path()).await.unwrap();
        let store = crate::open(&config).await.unwrap();
        test(store).await;
    }
}

async fn two_tenants(store: &DynStore) -> (TenantCtx, TenantCtx) {
    let op = OperatorCtx::local_cli();
    let mut out = Vec::new();
    for name in ["tools-a", "tools-b"] {
        let new = NewTenant { name: name.into(), tier: Tier::Shared, metadata: json!({}) };
        out.push(op.act_for(store.create_tenant(&op, new).await.unwrap().id));
    }
    let b = out.pop().unwrap();
    (out.pop().unwrap(), b)
}

#[tokio::test]
async fn tools_crud_names_and_pages() {
    each_backend(|store| async move {
        let (a, _) = two_tenants(&store).await;
        let first =
            store.create_tool(&a, "lookup", "http", &spec("lookup", "https://x.test/")).await.unwrap();
        assert_eq!((first.name.as_str(), first.kind.as_str()), ("lookup", "http"));
        assert_eq!(first.spec["url_template"], "https://x.test/");
        assert_eq!(first.created_at, first.updated_at);
        let dup = store.create_tool(&a, "lookup", "http", &spec("lookup", "https://y.test/")).await;
        assert!(matches!(dup, Err(StoreError::Conflict(ref m)) if m.contains("lookup")), "{dup:?}");
        for (name, kind, doc) in [
            ("bad name", "http", spec("x", "https://x.test/")),
            ("ok", "shell", spec("ok", "https://x.test/")),
            ("ok", "http", json!(["not an object"])),
        ] {
            let res = store.create_tool(&a, name, kind, &doc).await;
            assert!(matches!(res, Err(StoreError::Invalid(_))), "{name} {kind}: {res:?}");
        }
        let second = store.create_tool(&a, "other", "http", &spec("other", "https://z.test/")).await.unwrap();

        assert_eq!(store.get_tool(&a, first.id).await.unwrap(), first);
        assert_eq!(store.find_tool(&a, "other").await.unwrap(), Some(second.clone()));
        assert_eq!(store.find_tool(&a, "nope").await.unwrap(), None);
        let page = store.list_tools(&a, PageReq::new(Some(1), None).unwrap()).await.unwrap();
        assert_eq!(page.items, vec![first.clone()]);
        assert!(page.has_more);
        let rest =
            store.list_tools(&a, PageReq::new(Some(10), Some(first.id.as_uuid())).unwrap()).await.unwrap();
        assert_eq!(rest.items, vec![second.clone()]);
        assert!(!rest.has_more);

        let renamed =
            store.update_tool(&a, first.id, "lookup2", &spec("lookup2", "https://x2.test/")).await.unwrap();
        assert_eq!(
            (renamed.id, renamed.name.as_str(), renamed.created_at),
            (first.id, "lookup2", first.created_at)
        );
        assert_eq!(renamed.spec["url_template"], "https://x2.test/");
        let clash = store.update_tool(&a, first.id, "other", &spec("other", "https://x.test/")).await;
        assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
        let ghost = store.update_tool(&a, ToolId::new(), "ghost", &spec("ghost", "https://x.test/")).await;
        assert!(matches!(ghost, Err(StoreError::NotFound("tool"))));

        store.delete_tool(&a, first.id).await.unwrap();
        assert!(matches!(store.get_tool(&a, first.id).await, Err(StoreError::NotFound("tool"))));
        assert!(matches!(store.delete_tool(&a, first.id).await, Err(StoreError::NotFound("tool"))));
        // The name is free again.
        store.create_tool(&a, "lookup2", "http", &spec("lookup2", "https://x.test/")).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn mcp_servers_and_settings() {
    each_backend(|store| async move {
        let (a, _) = two_tenants(&store).await;
        let auth = json!({"secret_name": "tok", "placement": {"in": "header", "name": "Authorization", "prefix": "Bearer "}});
        let gh = store.create_mcp_server(&a, "github", "https://mcp.test/mcp", Some(&auth)).await.unwrap();
        assert_eq!(gh.auth, Some(auth.clone()));
        let plain = store.create_mcp_server(&a, "plain", "https://plain.test/mcp", None).await.unwrap();
        assert_eq!(plain.auth, None);
        let dup = store.create_mcp_server(&a, "github", "https://other.test/", None).await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        let bad = store.create_mcp_server(&a, "a__b", "https://x.test/", None).await;
        assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
        // A tool and an MCP server may share a name.
        store.create_tool(&a, "github", "http", &spec("github", "https://x.test/")).await.unwrap();

        assert_eq!(store.get_mcp_server(&a, gh.id).await.unwrap(), gh);
        assert_eq!(store.find_mcp_server(&a, "plain").await.unwrap(), Some(plain.clone()));
        let all = store.list_mcp_servers(&a, PageReq::default()).await.unwrap();
        assert_eq!(all.items, vec![gh.clone(), plain.clone()]);
        store.delete_mcp_server(&a, gh.id).await.unwrap();
        assert!(matches!(store.get_mcp_server(&a, gh.id).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete_mcp_server(&a, McpServerId::new()).await, Err(StoreError::NotFound(_))));

        // Settings: defaults until set, then replaced as a whole.
        let fresh = store.tool_settings(&a).await.unwrap();
        assert_eq!((fresh.allowed_tools, fresh.egress.clone(), fresh.updated_at), (None, json!({}), None));
        let list = vec!["lookup".to_owned(), "mcp__github__*".to_owned()];
        let egress = json!({"allow": ["api.example.com", "*.svc.test:8443"], "timeout_ms": 500});
        let set = store.set_tool_settings(&a, Some(&list), &egress).await.unwrap();
        let read = store.tool_settings(&a).await.unwrap();
        assert_eq!(read, set);
        assert_eq!((read.allowed_tools, read.egress), (Some(list), egress));
        let cleared = store.set_tool_settings(&a, None, &json!({})).await.unwrap();
        assert_eq!(store.tool_settings(&a).await.unwrap(), cleared);
        assert_eq!(cleared.allowed_tools, None);
        let bad = store.set_tool_settings(&a, Some(&["".into()]), &json!({})).await;
        assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
        assert!(matches!(store.set_tool_settings(&a, None, &json!(1)).await, Err(StoreError::Invalid(_))));
    })
    .await;
}

#[tokio::test]
async fn tools_mcp_servers_and_settings_stay_with_their_tenant() {
    each_backend(|store| async move {
        let (a, b) = two_tenants(&store).await;
        plant_tools(&store, &a).await;
        let tool = store.find_tool(&a, "planted").await.unwrap().unwrap();
        let server = store.find_mcp_server(&a, "planted").await.unwrap().unwrap();

        assert!(store.list_tools(&b, PageReq::default()).await.unwrap().items.is_empty());
        assert!(store.list_mcp_servers(&b, PageReq::default()).await.unwrap().items.is_empty());
        assert_eq!(store.find_tool(&b, "planted").await.unwrap(), None);
        assert_eq!(store.find_mcp_server(&b, "planted").await.unwrap(), None);
        assert!(matches!(store.get_tool(&b, tool.id).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.get_mcp_server(&b, server.id).await, Err(StoreError::NotFound(_))));
        let stolen = store.update_tool(&b, tool.id, "mine", &spec("mine", "https://b.test/")).await;
        assert!(matches!(stolen, Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete_tool(&b, tool.id).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete_mcp_server(&b, server.id).await, Err(StoreError::NotFound(_))));
        assert_eq!(store.tool_settings(&b).await.unwrap().allowed_tools, None);

        // B may use the same names for its own.
        let own =
            store.create_tool(&b, "planted", "http", &spec("planted", "https://b.test/")).await.unwrap();
        store.create_mcp_server(&b, "planted", "https://b.test/mcp", None).await.unwrap();
        store.set_tool_settings(&b, Some(&[]), &json!({})).await.unwrap();
        assert_eq!(store.find_tool(&b, "planted").await.unwrap(), Some(own));

        // A is untouched.
        assert_eq!(store.get_tool(&a, tool.id).await.unwrap(), tool);
        assert_eq!(store.get_mcp_server(&a, server.id).await.unwrap(), server);
        assert_eq!(store.tool_settings(&a).await.unwrap().allowed_tools, Some(vec!["planted".to_owned()]));
    })
    .await;
}
