-- Tools: the tenant's own HTTP tools (`tools`, the spec as a JSON document
-- whose shape belongs to `bulkhead-tools`), its MCP servers (`mcp_servers`,
-- URL and a credential reference — a vault secret's name, never a value),
-- and its tool settings (`tool_settings`: the tenant-level tool allow list,
-- NULL for any of its tools, and the egress allow list). Times are unix
-- microseconds; ids are UUIDv7 text, so ORDER BY id is creation order.
-- Names are unique per tenant; everything goes with the tenant.

CREATE TABLE tools (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('http')),
    spec        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
) STRICT;

CREATE TABLE mcp_servers (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    url         TEXT NOT NULL,
    -- {"secret_name": …, "placement": …} or NULL.
    auth        TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
) STRICT;

CREATE TABLE tool_settings (
    tenant_id      TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    -- A JSON array of tool names (or `prefix*` patterns); NULL: any.
    allowed_tools  TEXT,
    egress         TEXT NOT NULL DEFAULT '{}',
    updated_at     INTEGER NOT NULL
) STRICT;
