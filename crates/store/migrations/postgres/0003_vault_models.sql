-- The vault: one data key per tenant (wrapped by the master key) and the
-- tenant's secrets encrypted under it. And the tenant's model configuration.
CREATE TABLE tenant_data_keys (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    wrapped     bytea NOT NULL,
    nonce       bytea NOT NULL,
    created_at  bigint NOT NULL
);

CREATE TABLE secrets (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    name        text NOT NULL,
    ciphertext  bytea NOT NULL,
    nonce       bytea NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (tenant_id, kind, name)
);

ALTER TABLE tenant_settings ADD COLUMN models jsonb NOT NULL DEFAULT '{}';

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_data_keys', 'secrets']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I FOR ALL
                 USING (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())
                 WITH CHECK (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())',
            t || '_isolation', t);
    END LOOP;
END $$;
