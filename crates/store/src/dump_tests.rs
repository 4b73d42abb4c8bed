//! Tenant dumps, restores and checksums on both backends, the routing of
//! isolated tenants to stores of their own, and live moves between tiers.

use bulkhead_core::page::PageReq;
use bulkhead_core::{OperatorCtx, TenantCtx, TenantId, Tier};
use serde_json::json;

use crate::testing::{backends, dump_all_rows, fresh_config, isolated_rows};
use crate::tests::plant_everything;
use crate::{DynStore, NewTenant, StoreError, TenantDump, TenantPatch};

fn new_tenant(name: &str, tier: Tier) -> NewTenant {
    NewTenant { name: name.into(), tier, metadata: json!({"canary": format!("canary-{name}")}) }
}

async fn planted(store: &DynStore, name: &str, tier: Tier) -> TenantCtx {
    let op = OperatorCtx::local_cli();
    let ctx = op.act_for(store.create_tenant(&op, new_tenant(name, tier)).await.unwrap().id);
    plant_everything(store, &ctx).await;
    ctx
}

/// Every table of the dump has rows (plant_everything writes one into each).
fn assert_complete(dump: &TenantDump) {
    assert!(dump.tables.len() >= 22, "{:?}", dump.tables.iter().map(|t| &t.table).collect::<Vec<_>>());
    for t in &dump.tables {
        assert!(!t.rows.is_empty(), "the dump has no rows of {}", t.table);
    }
    let names: Vec<&str> = dump.tables.iter().map(|t| t.table.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("threads") < pos("messages") && pos("kb_documents") < pos("kb_chunks"), "{names:?}");
}

/// The tenant's data works after a restore: reads, full text, vectors.
async fn assert_usable(store: &DynStore, ctx: &TenantCtx) {
    let threads = store.list_threads(ctx, PageReq::default()).await.unwrap();
    assert_eq!(threads.items.len(), 1);
    let kbs = store.list_kbs(ctx, PageReq::default()).await.unwrap();
    let kb = kbs.items[0].id;
    let term = format!("canary-{}", ctx.tenant_id());
    let terms = crate::knowledge::query_terms(&term);
    let hits = store.text_search(ctx, &[kb], &terms, 5, &Default::default()).await.unwrap();
    assert_eq!(hits.len(), 1, "full-text index rebuilt on restore");
    let found = store.chunks_by_id(ctx, &[hits[0].0]).await.unwrap();
    assert!(found[0].text.contains(&term));
    let (_, vectors) = store.kb_vectors(ctx, kb).await.unwrap();
    assert_eq!(vectors.len(), 1);
    let secrets = store.list_secrets(ctx, "credential").await.unwrap();
    assert_eq!(secrets[0].ciphertext, b"sealed");
    assert!(store.audit_head(crate::AuditChain::Tenant(ctx)).await.unwrap().is_some());
    // New rows after a restore get fresh ids (sequences moved past the
    // restored ones).
    let thread = threads.items[0].id;
    store.add_message(ctx, thread, "user", "after", &json!({}), None).await.unwrap();
}

#[tokio::test]
async fn export_import_round_trips_with_equal_checksums() {
    for backend in backends() {
        let op = OperatorCtx::local_cli();
        let dir = tempfile::tempdir().unwrap();
        let source = crate::open(&fresh_config(backend, dir.path()).await.unwrap()).await.unwrap();
        let a = planted(&source, "dumped", Tier::Shared).await;
        let dump = source.export_tenant(&op, a.tenant_id()).await.unwrap();
        assert_complete(&dump);
        let sums = source.tenant_checksums(&op, a.tenant_id()).await.unwrap();
        assert_eq!(sums, crate::dump::dump_sums(&dump));
        // The dump survives JSON, as it travels between deployments.
        let dump: TenantDump = serde_json::from_str(&serde_json::to_string(&dump).unwrap()).unwrap();

        // Into another store where another tenant took the same sequence
        // values: ids are drawn anew, checksums still agree.
        let dir2 = tempfile::tempdir().unwrap();
        let target = crate::open(&fresh_config(backend, dir2.path()).await.unwrap()).await.unwrap();
        let other = planted(&target, "already-here", Tier::Shared).await;
        let other_sums = target.tenant_checksums(&op, other.tenant_id()).await.unwrap();
        target.import_tenant(&op, &dump).await.unwrap();
        assert_eq!(target.tenant_checksums(&op, a.tenant_id()).await.unwrap(), sums, "{backend}");
        assert_eq!(target.get_tenant(&op, a.tenant_id()).await.unwrap(), dump.tenant);
        assert_usable(&target, &a).await;
        assert_eq!(target.tenant_checksums(&op, other.tenant_id()).await.unwrap(), other_sums);

        // A tenant that has rows is not restored over.
        let again = target.import_tenant(&op, &dump).await;
        assert!(
            matches!(&again, Err(StoreError::Conflict(m)) if m.starts_with("tenant_not_empty")),
            "{again:?}"
        );
        // A purge keeps the control row and keys; then the restore goes in.
        target.purge_tenant_data(&op, a.tenant_id()).await.unwrap();
        let left = target.tenant_checksums(&op, a.tenant_id()).await.unwrap();
        assert!(left.iter().all(|s| s.rows == 0 || s.table == "api_keys"), "{left:?}");
        assert!(target.get_tenant(&op, a.tenant_id()).await.is_ok());
        let mut no_keys = dump.clone();
        no_keys.tables.retain(|t| t.table != "api_keys");
        target.import_tenant(&op, &no_keys).await.unwrap();
        assert_eq!(target.tenant_checksums(&op, a.tenant_id()).await.unwrap(), sums);

        // A dump with a row of another tenant is refused.
        let mut forged = dump.clone();
        forged.tenant.id = TenantId::new();
        forged.tenant.name = "forged".into();
        assert!(matches!(target.import_tenant(&op, &forged).await, Err(StoreError::Invalid(_))));
    }
}

#[tokio::test]
async fn isolated_tenants_live_in_stores_of_their_own() {
    for backend in backends() {
        let op = OperatorCtx::local_cli();
        let dir = tempfile::tempdir().unwrap();
        let config = fresh_config(backend, dir.path()).await.unwrap();
        let store = crate::open(&config).await.unwrap();
        let iso = planted(&store, "iso", Tier::Isolated).await;
        let shared = planted(&store, "shared-one", Tier::Shared).await;
        let (iso_id, shared_id) = (iso.tenant_id().to_string(), shared.tenant_id().to_string());

        // The control store holds the isolated tenant's control row and
        // keys, nothing else of it.
        let control = dump_all_rows(&config).await.unwrap();
        let leaked: Vec<_> = control
            .iter()
            .filter(|(t, r)| r.contains(&iso_id) && !["tenants", "api_keys"].contains(&t.as_str()))
            .collect();
        assert!(leaked.is_empty(), "{backend}: isolated rows in the shared store: {leaked:?}");
        assert!(control.iter().any(|(t, r)| t == "messages" && r.contains(&shared_id)));

        // Its own store has its rows in every tenant table but the keys,
        // and nothing of the shared tenant.
        let own = isolated_rows(&config, iso.tenant_id()).await.unwrap();
        assert!(
            own.iter().all(|(_, r)| !r.contains(&shared_id)),
            "{backend}: shared rows in the isolated store"
        );
        let dump = store.export_tenant(&op, iso.tenant_id()).await.unwrap();
        assert_complete(&dump);
        for t in dump.tables.iter().filter(|t| t.table != "api_keys") {
            assert!(
                own.iter().any(|(table, r)| *table == t.table && r.contains(&iso_id)),
                "{backend}: {} has no row of the isolated tenant in its store",
                t.table
            );
        }
        // Reads through the router see each tenant's own data.
        assert_usable(&store, &iso).await;
        assert_usable(&store, &shared).await;
        // Platform views fan out over both stores.
        let usage = store
            .usage_summary(
                crate::UsageScope::Platform(&op),
                &crate::UsageQuery { group_by: vec![crate::GroupBy::Tenant], ..Default::default() },
            )
            .await
            .unwrap();
        assert_eq!(usage.len(), 2, "{usage:?}");
        let queue = store.queue_overview(&op).await.unwrap();
        assert_eq!(queue.len(), 2, "{queue:?}");

        // Deleting the tenant removes its store.
        store.delete_tenant(&op, iso.tenant_id()).await.unwrap();
        assert!(isolated_rows(&config, iso.tenant_id()).await.unwrap().is_empty());
        assert!(
            !dump_all_rows(&config)
                .await
                .unwrap()
                .iter()
                .any(|(t, r)| r.contains(&iso_id) && t != "platform_audit_entries")
        );
    }
}

#[tokio::test]
async fn moves_between_tiers_keep_every_row() {
    for backend in backends() {
        let op = OperatorCtx::local_cli();
        let dir = tempfile::tempdir().unwrap();
        let config = fresh_config(backend, dir.path()).await.unwrap();
        let store = crate::open(&config).await.unwrap();
        let mover = planted(&store, "mover", Tier::Shared).await;
        let bystander = planted(&store, "bystander", Tier::Shared).await;
        let id = mover.tenant_id();
        let before = store.tenant_checksums(&op, id).await.unwrap();
        let bystander_sums = store.tenant_checksums(&op, bystander.tenant_id()).await.unwrap();

        let report = store.move_tenant(&op, id, Tier::Isolated).await.unwrap();
        assert_eq!((report.from, report.to), (Tier::Shared, Tier::Isolated));
        assert!(report.source_purged);
        assert_eq!(report.tables.len(), before.len() - 1, "every table but the keys moves");
        assert_eq!(store.get_tenant(&op, id).await.unwrap().tier, Tier::Isolated);
        assert_eq!(store.tenant_checksums(&op, id).await.unwrap(), before, "{backend}");
        let control = dump_all_rows(&config).await.unwrap();
        let idt = id.to_string();
        assert!(
            !control.iter().any(|(t, r)| r.contains(&idt) && !["tenants", "api_keys"].contains(&t.as_str())),
            "{backend}: rows left in the shared store"
        );
        assert_usable(&store, &mover).await;

        // And back: the isolated store goes away.
        let before = store.tenant_checksums(&op, id).await.unwrap();
        store.move_tenant(&op, id, Tier::Shared).await.unwrap();
        assert_eq!(store.tenant_checksums(&op, id).await.unwrap(), before);
        assert!(isolated_rows(&config, id).await.unwrap().is_empty());
        assert_eq!(store.tenant_checksums(&op, bystander.tenant_id()).await.unwrap(), bystander_sums);

        // A tier change by update moves too; dedicated only reroutes.
        let patch = TenantPatch { tier: Some(Tier::Isolated), ..Default::default() };
        store.update_tenant(&op, id, patch).await.unwrap();
        assert!(!isolated_rows(&config, id).await.unwrap().is_empty());
        let patch = TenantPatch { tier: Some(Tier::Dedicated), ..Default::default() };
        store.update_tenant(&op, id, patch).await.unwrap();
        let refused = store.list_threads(&mover, PageReq::default()).await;
        assert!(matches!(refused, Err(StoreError::WrongCell)), "{refused:?}");
        assert!(store.move_tenant(&op, id, Tier::Shared).await.is_err());
    }
}
