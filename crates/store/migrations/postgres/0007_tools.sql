-- Tools: the tenant's own HTTP tools (`tools`, the spec as a JSON document
-- whose shape belongs to `bulkhead-tools`), its MCP servers (`mcp_servers`,
-- URL and a credential reference — a vault secret's name, never a value),
-- and its tool settings (`tool_settings`: the tenant-level tool allow list,
-- NULL for any of its tools, and the egress allow list). Times are unix
-- microseconds; ids are UUIDv7, so ORDER BY id is creation order. Names are
-- unique per tenant; everything goes with the tenant, and every table has
-- an RLS policy.

CREATE TABLE tools (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('http')),
    spec        jsonb NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE mcp_servers (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL,
    url         text NOT NULL,
    -- {"secret_name": …, "placement": …} or NULL.
    auth        jsonb,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE tool_settings (
    tenant_id      uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    -- A JSON array of tool names (or `prefix*` patterns); NULL: any.
    allowed_tools  jsonb,
    egress         jsonb NOT NULL DEFAULT '{}',
    updated_at     bigint NOT NULL
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tools', 'mcp_servers', 'tool_settings']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I FOR ALL
                 USING (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())
                 WITH CHECK (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())',
            t || '_isolation', t);
    END LOOP;
END $$;
