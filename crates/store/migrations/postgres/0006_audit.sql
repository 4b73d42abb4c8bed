-- The audit log: one append-only hash chain per tenant (`audit_entries`,
-- with its head in `audit_heads`) and one platform chain
-- (`platform_audit_entries`, head in `platform_audit_head`) for events with
-- no tenant and operator-only actions. Each entry carries the hash of its
-- predecessor and its own hash (computed by the store, see
-- `bulkhead_store::audit::entry_hash`); the head row holds the last seq and
-- hash and moves in the same transaction as each append, so removing the
-- last entries is detected as well. Times are unix microseconds; details
-- are the exact canonical JSON text that was hashed.
--
-- A tenant's chain goes with the tenant (ON DELETE CASCADE). The platform
-- chain has no tenant_id: it outlives the tenants it mentions, and its
-- policy admits only the platform scope. The application role is granted
-- INSERT and SELECT on the entry tables only (`setup_app_role` revokes
-- UPDATE, DELETE and TRUNCATE after its blanket grant).

CREATE TABLE audit_entries (
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    seq           bigint NOT NULL CHECK (seq > 0),
    at            bigint NOT NULL,
    actor         text NOT NULL,
    via_operator  boolean NOT NULL,
    action        text NOT NULL,
    target        text NOT NULL,
    outcome       text NOT NULL,
    details       text NOT NULL,
    prev_hash     text NOT NULL,
    hash          text NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE audit_heads (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    last_seq   bigint NOT NULL,
    last_hash  text NOT NULL
);

CREATE TABLE platform_audit_entries (
    -- Always 'platform': gives both kinds of chain the same shape.
    chain         text NOT NULL DEFAULT 'platform' CHECK (chain = 'platform'),
    seq           bigint NOT NULL CHECK (seq > 0),
    at            bigint NOT NULL,
    actor         text NOT NULL,
    via_operator  boolean NOT NULL,
    action        text NOT NULL,
    target        text NOT NULL,
    outcome       text NOT NULL,
    details       text NOT NULL,
    prev_hash     text NOT NULL,
    hash          text NOT NULL,
    PRIMARY KEY (chain, seq)
);

-- One row: the platform chain's head.
CREATE TABLE platform_audit_head (
    chain      text PRIMARY KEY CHECK (chain = 'platform'),
    last_seq   bigint NOT NULL,
    last_hash  text NOT NULL
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['audit_entries', 'audit_heads']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I FOR ALL
                 USING (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())
                 WITH CHECK (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())',
            t || '_isolation', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['platform_audit_entries', 'platform_audit_head']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I FOR ALL
                 USING (bulkhead_platform_scope()) WITH CHECK (bulkhead_platform_scope())',
            t || '_platform_only', t);
    END LOOP;
END $$;
